"""One study, many workers: PostgreSQL's connection limit is refused in one line before the
sweep, and workers killed with SIGKILL mid-run leave every cell trained once.

The kill test runs the real worker loop (claims, leases, heartbeats, stale reclaim, results, the
training log ``LRWD_TRAINING_LOG``) in 8 processes with the training replaced by the queue
bench's stand-in (``python -m harness.bench queue``), kills two of them while they hold cells
and starts two new ones. Trainings are counted from the training log, not from trial states.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import optuna
import psycopg2
import pytest
from optuna.trial import TrialState

from harness.bench.queue import bench_run
from harness.config import compose_config, validate
from harness.errors import ConfigError
from harness.storage import POOL_SIZE, check_connections, open_storage
from harness.sweep import queue as wq
from tests.test_sweep import run_sweep


def _url_storage(url: str, tmp_path: Path):
    cfg = compose_config(["storage=url", f"storage.url={url}", "tracking=disabled"])
    return open_storage(cfg, tmp_path)


def _refusal(storage, workers: int) -> str:
    with pytest.raises(ConfigError) as info:
        check_connections(storage, workers)
    return str(info.value)


def test_workers_beyond_max_connections_are_refused_in_one_line(tmp_path, postgres_url):
    storage = _url_storage(postgres_url, tmp_path)
    line = _refusal(storage, 10_000)
    assert "\n" not in line and line.startswith("sweep.workers: 10000 workers need up to 20002")
    assert "max_connections=200" in line  # the suite's server (tests/servers.py)
    password = postgres_url.split(":")[2].split("@")[0]
    assert password not in line
    fit = int(line.split("pass sweep.workers=")[1].split(" ")[0])
    assert 0 < fit <= (200 - 3) // POOL_SIZE - 1
    check_connections(storage, fit)  # the number it names fits
    assert f"sweep.workers={fit} or fewer" in _refusal(storage, fit + 1)

    # connections other clients hold count against the workers
    held = [psycopg2.connect(postgres_url.replace("+psycopg2", "")) for _ in range(POOL_SIZE)]
    try:
        assert f"sweep.workers={fit - 1} or fewer" in _refusal(storage, fit)
        check_connections(storage, fit - 1)
    finally:
        for conn in held:
            conn.close()


def test_the_sweep_refuses_too_many_workers_before_any_study_exists(tmp_path, postgres_url):
    proc = run_sweep(
        tmp_path / "out",
        "storage=url",
        f"storage.url={postgres_url}",
        "sweep.workers=150",
        "name=toomany",
        "tracking=disabled",
        timeout=600,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: sweep.workers: 150 workers need up to 302 PostgreSQL")
    assert "max_connections=200" in lines[0]
    names = optuna.get_all_study_names(_url_storage(postgres_url, tmp_path))
    assert not [n for n in names if n.startswith("toomany")]
    assert not (tmp_path / "out" / "config.yaml").exists()


def test_other_storages_are_not_checked(tmp_path):
    cfg = compose_config(["storage=sqlite", "tracking=disabled"])
    check_connections(open_storage(cfg, tmp_path), 10_000)


@pytest.mark.slow
def test_eight_workers_two_killed_mid_run_train_every_cell_once(tmp_path, postgres_url):
    workers, per_worker = 8, 5
    run = bench_run(
        "postgres",
        workers,
        cells_per_worker=per_worker,
        train_s=1.0,
        heartbeat_s=5,
        kill=0.25,
        url=postgres_url,
        timeout_s=600,
        folder=tmp_path,
    )
    assert run.killed == 2 and run.errors == 0, run.error_lines
    study = optuna.load_study(study_name=run.study, storage=_url_storage(postgres_url, tmp_path))
    trials = study.get_trials(deepcopy=False)
    cells = {t.user_attrs[wq.CELL_KEY] for t in trials}
    assert len(cells) == run.cells >= workers * per_worker

    # every cell COMPLETE exactly once; the only other trials are the killed workers' (stale)
    complete = Counter(t.user_attrs[wq.CELL_KEY] for t in trials if t.state == TrialState.COMPLETE)
    assert set(complete) == cells and set(complete.values()) == {1}
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    assert others and {t.state for t in others} == {TrialState.FAIL}
    assert {t.user_attrs["fail_reason"] for t in others} == {"stale"}
    stale_owners: dict[str, list[str]] = defaultdict(list)
    for t in others:
        stale_owners[t.user_attrs[wq.CELL_KEY]].append(t.system_attrs[wq.LEASE_KEY][0])
    killed = {o for owners in stale_owners.values() for o in owners}
    assert 1 <= len(killed) <= run.killed == 2
    # the killed workers' processes, not a live worker whose lease was taken
    assert not [o for o in killed if Path(f"/proc/{o.rsplit(':', 1)[1]}").exists()]
    done_by = {
        t.user_attrs[wq.CELL_KEY]: t.system_attrs[wq.LEASE_KEY][0]
        for t in trials
        if t.state == TrialState.COMPLETE
    }

    # the training log: one training per cell by the worker that completed it, plus one by each
    # killed worker that held the cell when it died
    trainings: dict[str, list[str]] = defaultdict(list)
    for path in (tmp_path / "log").glob("*.jsonl"):
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            assert rec["study"] == run.study
            trainings[rec["cell"]].append(rec["owner"])
    assert set(trainings) == cells
    for cell, owners in trainings.items():
        assert owners.count(done_by[cell]) == 1, (cell, owners)
        rest = sorted(o for o in owners if o != done_by[cell])
        assert rest == sorted(stale_owners.get(cell, [])), (cell, owners)

    # nothing to repair: the driver's enqueue on a resume finds every cell done
    status = wq.enqueue_cells(study, _cells(trials), {}, heartbeat_s=5)
    assert (status.done, status.queued, status.running, status.requeued) == (len(cells), 0, 0, 0)
    # connections: at most POOL_SIZE per live worker (killed ones' close with their process)
    assert run.peak_connections is not None
    assert run.peak_connections <= POOL_SIZE * (workers + run.killed)


def _cells(trials) -> list[dict]:
    seen, out = set(), []
    for t in trials:
        key = t.user_attrs[wq.CELL_KEY]
        if key not in seen:
            seen.add(key)
            out.append(wq.cell_params(t))
    return out


def test_sqlite_serves_one_local_worker_and_refuses_more_before_writing(tmp_path):
    validate(compose_config(["storage=sqlite", "sweep.workers=1"]))
    proc = run_sweep(
        tmp_path / "out", "storage=sqlite", "sweep.workers=4", "tracking=disabled", timeout=600
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "error: storage.kind: SQLite cannot be shared by 4 workers; use storage=journal (a file "
        "on a shared filesystem) or storage=url storage.url=postgresql://..."
    ]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("study.db"))
