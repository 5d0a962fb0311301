"""A sweep's progress: the time left from the rate its cells complete
(:class:`CompletionRate`), and durations as a clock (:func:`clock`), for the live bar and the
plain progress lines of ``python -m harness.sweep``."""

from __future__ import annotations

import time


class CompletionRate:
    """Time left in a sweep from the rate at which its cells complete.

    ``update(done)`` at every poll; ``left_s()`` is the estimate. The rate is cells completed
    per second since the run started (``start``; ``done0`` cells were already done then, e.g. on
    a resume), read at the end of the last settled burst, and the time left counts from that
    moment::

        rate = (done_b - done0) / (t_b - start)
        left = t_b + (total - done_b) / rate - now        (never below 0)

    Populations complete cells in bursts: a population of P cells is recorded within a second or
    two, after minutes of nothing, and the first cells of a burst alone would give a rate P
    times too low. Completions less than ``gap_s`` apart are one burst; a burst settles once
    ``gap_s`` passes without a completion, or once it has run for ``max_burst_s`` (a steady
    stream of short trials). Until the first burst settles there is no estimate (``None``).
    """

    def __init__(
        self,
        total: int,
        done0: int = 0,
        start: float | None = None,
        *,
        gap_s: float = 2.0,
        max_burst_s: float = 10.0,
    ) -> None:
        self.total, self.done0 = int(total), int(done0)
        self.start = time.monotonic() if start is None else float(start)
        self.gap_s, self.max_burst_s = float(gap_s), float(max_burst_s)
        self.done = self.done0
        self.settled: tuple[float, int] | None = None  # (time, done) at the last settled burst
        self._burst: list[float] | None = None  # [first, last] completion time of the open one

    def update(self, done: int, now: float | None = None) -> None:
        """Record the number of cells done so far (completions are timed at ``now``)."""
        now = time.monotonic() if now is None else float(now)
        done = int(done)
        if done <= self.done:  # nothing new (a count never goes down)
            return
        burst = self._burst
        if burst is not None and (
            now - burst[1] >= self.gap_s or now - burst[0] >= self.max_burst_s
        ):
            self.settled = (burst[1], self.done)
            burst = None
        self._burst = [now, now] if burst is None else [burst[0], now]
        self.done = done

    def _settled(self, now: float) -> tuple[float, int] | None:
        """The last settled burst's ``(time, done)`` as of ``now`` (reads, never writes)."""
        burst = self._burst
        if burst is not None and now - burst[1] >= self.gap_s:
            return burst[1], self.done
        return self.settled

    def rate(self, now: float | None = None) -> float | None:
        """Cells per second up to the last settled burst; ``None`` before the first one."""
        settled = self._settled(time.monotonic() if now is None else float(now))
        if settled is None:
            return None
        t_b, done_b = settled
        if t_b <= self.start or done_b <= self.done0:
            return None
        return (done_b - self.done0) / (t_b - self.start)

    def left_s(self, now: float | None = None) -> float | None:
        """Seconds left (0 once every cell is done); ``None`` while there is no estimate."""
        now = time.monotonic() if now is None else float(now)
        if self.done >= self.total:
            return 0.0
        rate = self.rate(now)
        if rate is None:
            return None
        t_b, done_b = self._settled(now)
        return max(t_b + (self.total - done_b) / rate - now, 0.0)

    def text(self, now: float | None = None) -> str:
        """``~1:05 left``, or ``""`` without an estimate or when every cell is done."""
        left = self.left_s(now)
        if left is None or self.done >= self.total:
            return ""
        return f"~{clock(left)} left"


def clock(seconds: float) -> str:
    """``65`` -> ``1:05``, ``3725`` -> ``1:02:05``."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
