"""The sweep's time-left estimate (harness.sweep.progress.CompletionRate) on synthetic completion
times: populations that record their cells in bursts, steady streams, staggered workers, a
resumed sweep."""

from __future__ import annotations

import re
import time

import pytest

from harness.sweep.cli import _LogProgress
from harness.sweep.progress import CompletionRate, clock

POLL_S = 0.5  # how often the driver counts finished cells


def completions(bursts: list[tuple[float, int]], spread_s: float = 0.6) -> list[float]:
    """Completion times: ``(t, n)`` = n cells recorded one after another from t over spread_s."""
    times = []
    for t, n in bursts:
        times += [t + spread_s * i / max(n - 1, 1) for i in range(n)]
    return sorted(times)


def replay(rate: CompletionRate, times: list[float], done0: int, end: float):
    """Poll every POLL_S seconds up to ``end``; yield (now, done, estimate)."""
    now = 0.0
    while now <= end:
        done = done0 + sum(t <= now for t in times)
        rate.update(done, now)
        yield now, done, rate.left_s(now)
        now = round(now + POLL_S, 6)


def test_resumed_sweep_of_population_bursts():
    """Resume at 69/144: three populations of 25 cells, ~38 s each, each recorded within 0.6 s.
    Elapsed x cells left / cells new would say ~47 min after the first cell of the first burst;
    the estimate waits for the burst and then stays within 15% of the truth."""
    times = completions([(38.0, 25), (76.0, 25), (114.0, 25)])
    end = times[-1]
    rate = CompletionRate(144, 69, start=0.0)
    seen = []
    for now, done, left in replay(rate, times, 69, end + 3):
        if now < 41.0:  # the first burst is being recorded (last seen at 39.0), or settling
            assert left is None, (now, done, left)
            continue
        if done < 144:
            seen.append(now)
            assert left is not None
            assert left == pytest.approx(end - now, rel=0.15, abs=3.0), (now, done, left)
        else:
            assert left == 0.0 and rate.text(now) == ""
    assert len(seen) > 100


def test_partial_burst_does_not_count_as_the_rate():
    """One cell of a population of 32 recorded: no estimate until the rest is in."""
    rate = CompletionRate(64, 0, start=0.0)
    rate.update(1, 38.0)
    assert rate.left_s(38.5) is None and rate.text(38.5) == ""
    rate.update(20, 38.6)
    rate.update(32, 39.0)
    assert rate.left_s(40.0) is None  # still within the gap: the burst may go on
    # settled at 39.0 with 32 cells: 32/39 cells/s, 32 cells left -> 39 s after 39.0
    assert rate.left_s(41.0) == pytest.approx(39.0 + 39.0 - 41.0)
    assert rate.rate(41.0) == pytest.approx(32 / 39.0)
    assert rate.text(41.0) == "~0:37 left"


def test_steady_stream_of_short_trials():
    """A cell every 0.3 s (closer than the gap): the stream is read every max_burst_s."""
    times = [0.3 * (i + 1) for i in range(400)]
    rate = CompletionRate(400, 0, start=0.0)
    for now, done, left in replay(rate, times, 0, times[-1]):
        if now >= 12.0 and done < 400:
            assert left == pytest.approx(times[-1] - now, rel=0.05, abs=1.0), (now, left)


def test_staggered_workers():
    """Two workers, populations of 8 cells every 20 s, the second 10 s behind the first. Until
    both have reported, the rate since the start sees one worker's cells (about 2x off); from
    half-way on the estimate is within 30% of the truth, or one population period near the end."""
    bursts = [(20.0 * k + 20.0, 8) for k in range(6)] + [(20.0 * k + 30.0, 8) for k in range(6)]
    times = completions(bursts, spread_s=0.3)
    rate = CompletionRate(96, 0, start=0.0)
    for now, done, left in replay(rate, times, 0, times[-1]):
        truth = times[-1] - now
        if now >= 25.0 and done < 96:
            assert abs(left - truth) <= max(1.2 * truth, 20.0), (now, done, left)
        if 48 <= done < 96:
            assert abs(left - truth) <= max(0.3 * truth, 20.0), (now, done, left)


def test_time_left_never_negative_and_clock_format():
    rate = CompletionRate(10, 0, start=0.0)
    rate.update(5, 10.0)
    assert rate.left_s(13.0) == pytest.approx(7.0)
    assert rate.left_s(100.0) == 0.0  # overdue: 0, not negative
    assert rate.text(100.0) == "~0:00 left"
    assert clock(65) == "1:05" and clock(3725) == "1:02:05" and clock(0.4) == "0:00"


def test_plain_progress_line_shows_the_estimate(capsys):
    """Without a terminal the driver prints progress lines; they carry the same estimate."""
    progress = _LogProgress(total=10, done0=0, every_s=0.0)
    progress.enabled = True
    # 5 of 10 cells done 1000 s into the run, the burst settled (gap 0): ~1000 s left
    progress.rate = CompletionRate(10, 0, start=time.monotonic() - 1000.0, gap_s=0.0)
    progress(5, last="adam/l2 lr=0.01 wd=0.001: test err 0.300", force=True)
    line = capsys.readouterr().out.strip()
    assert line.startswith("progress: 5/10 cells (50%)")
    assert re.search(r", ~16:[4-5]\d left; last: adam/l2", line), line
