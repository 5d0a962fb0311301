"""The work queue under many workers: ``python -m harness.bench queue``.

N worker processes join one study on one storage (PostgreSQL, a journal file, SQLite) and run
the real worker loop (:func:`harness.sweep.worker.run_worker`: claims, leases and heartbeats,
stale reclaim, results, the training log), with the training replaced by a stand-in that sleeps
``--train-s`` seconds and returns a fixed result. The workers are forked from the bench after it
has imported the worker loop's modules (which import no torch), so 64 of them start in seconds
and share their pages. They start together: each opens the storage, says it is ready and waits
for the others, so the first claims of all N land at once.

Per storage and N it prints claims per second, claim latency p50 / p99 (a worker's call for its
next cell, from asking to holding it), how often a claim lost the compare-and-set, cells
completed, duplicates (trainings beyond one per cell in the training log, ``LRWD_TRAINING_LOG``,
not counting those of killed workers), lost cells (no COMPLETE trial at the end), worker errors
and, on PostgreSQL, the peak number of connections to the database. ``--kill 0.25`` kills a
quarter of the workers with SIGKILL once a third of the cells have started and starts as many
new ones. ``--driver 1000,5000,20000`` times the driver's side on studies of that many cells:
enqueueing the grid, re-reading it on a resume, the status counts, and one worker's claims.

A benchmark and a load test, not a product mode: the stand-in training lives here only.
PostgreSQL needs ``--url`` (or ``$LRWD_STORAGE_URL``) naming a database the bench may fill with
studies called ``qbench-*``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STORAGE_KINDS = {"postgres": "url", "journal": "journal", "sqlite": "sqlite"}
READY_WAIT_S = 300.0


@dataclass
class StandInResult:
    """What the stand-in training returns for a cell (the fields a trial result records)."""

    test_error: float = 0.5
    val_error: float = 0.5
    final_val_error: float = 0.5
    train_loss: float = 1.0
    weight_norm: float = 10.0
    steps: int = 100
    wall_s: float = 0.0
    diverged: bool = False

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# --------------------------------------------------------------------------------------------
# One worker process (forked from the bench: nothing to import, its pages shared)


def _worker(spec: dict) -> int:
    """Run the real worker loop with a stand-in training; write claim timings when done."""
    from omegaconf import OmegaConf

    from harness.secrets import real_url
    from harness.storage import open_storage
    from harness.sweep import queue as q
    from harness.sweep.worker import run_worker

    cfg = real_url(OmegaConf.create(spec["cfg"]))
    # import the storage's driver and connect once before the start line, then let go
    _close(open_storage(cfg, cfg.output_dir))
    claims: list[tuple[float, float, int, float]] = []  # (start time, seconds, cells, CPU s)
    empty: list[float] = []
    cas = Counter()
    claim, cas_fn = q.WaitingQueue.claim, q.claim_trial

    def timed_claim(self, n: int):
        t0, p0, c0 = time.time(), time.perf_counter(), time.thread_time()
        got = claim(self, n)
        dt, cpu = time.perf_counter() - p0, time.thread_time() - c0
        (claims.append((t0, dt, len(got), cpu)) if got else empty.append(dt))
        return got

    def counted_cas(storage, trial_id: int, **kwargs) -> bool:
        won = cas_fn(storage, trial_id, **kwargs)
        cas["won" if won else "lost"] += 1
        return won

    q.WaitingQueue.claim = timed_claim
    q.claim_trial = counted_cas
    train_s = float(spec["train_s"])

    def stand_in(cfgs, reports):
        for report in reports:
            started = getattr(report, "started", None)
            if started is not None:
                started()
        time.sleep(train_s)
        return [StandInResult(wall_s=train_s) for _ in cfgs]

    folder = Path(spec["dir"])
    me = f"{socket.gethostname()}-{os.getpid()}"
    (folder / "ready" / me).write_text("")
    deadline = time.monotonic() + READY_WAIT_S
    while not (folder / "go").exists():
        if time.monotonic() > deadline:
            return 2
        time.sleep(0.01)
    rc = run_worker(cfg, train=stand_in)
    stats = {"claims": claims, "empty": empty, "cas": dict(cas), "end": time.time()}
    (folder / "stats" / f"{me}.json").write_text(json.dumps(stats))
    return rc


# --------------------------------------------------------------------------------------------
# The bench (driver side)


def _config(
    kind: str,
    out: Path,
    cells: int,
    name: str,
    heartbeat_s: float,
    url: str | None,
    extra: tuple[str, ...] = (),
):
    from omegaconf import OmegaConf

    from harness.config import compose_config

    wd = 8 if cells < 1000 else 50
    overrides = [
        f"storage={kind}",
        "tracking=disabled",
        "sweep.variants=[]",
        "optimizer=adam",
        "optimizer.decay=independent",
        f"sweep.lr.num={max(math.ceil(cells / wd), 1)}",
        f"sweep.weight_decay.num={wd}",
        "sweep.seeds=1",
        "sweep.population=1",
        f"sweep.heartbeat_s={int(heartbeat_s)}",
        f"name={name}",
    ]
    if kind == "url":
        overrides.append(f"storage.url={url}")
    cfg = compose_config([*overrides, *extra])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.output_dir = str(out)
    return cfg


def _prepare(cfg):
    """Create the study and enqueue its grid, as the driver does; (study, storage, seconds)."""
    from harness.storage import open_storage
    from harness.sweep.plan import create_study, enqueue_study, variants

    t0 = time.perf_counter()
    storage = open_storage(cfg, cfg.output_dir)
    study = create_study(cfg, storage, variants(cfg)[0])
    enqueue_study(study, cfg)
    return study, storage, time.perf_counter() - t0


def _close(storage) -> None:
    """Close a database storage's pooled connections (they would count as a worker's)."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


class _Connections(threading.Thread):
    """The peak number of other sessions on the bench's PostgreSQL database (polled)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        from sqlalchemy import create_engine, text

        from harness.storage import with_driver

        self.engine = create_engine(with_driver(url), poolclass=None)
        self.sql = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        )
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                n = int(conn.execute(self.sql).scalar() or 0)
                self.peak = max(self.peak, n)
                conn.rollback()
                self.stop.wait(0.1)

    def close(self) -> int:
        self.stop.set()
        self.join(5)
        self.engine.dispose()
        return self.peak


class _Forked:
    """A forked worker process: ``poll()``, ``wait()`` and ``returncode`` as for a Popen."""

    def __init__(self, spec: dict, folder: Path) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:  # the worker
            rc = 1
            try:
                err = os.open(folder / "err" / f"{os.getpid()}.log", os.O_WRONLY | os.O_CREAT)
                os.dup2(err, 1)
                os.dup2(err, 2)
                os.environ[spec["log_env"]] = str(folder / "log")
                rc = _worker(spec)
            except BaseException:  # noqa: BLE001 - reported in the worker's err file
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


def _started(log_dir: Path) -> int:
    n = 0
    for path in log_dir.glob("*.jsonl"):
        n += path.read_text(encoding="utf-8").count("\n")
    return n


@dataclass
class Run:
    storage: str
    workers: int
    cells: int
    train_s: float
    wall_s: float = 0.0
    claims: int = 0
    claims_per_s: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    cpu_p50_ms: float = 0.0  # the claiming thread's CPU time per claim (not waiting for a core)
    cas_lost_per_claim: float = 0.0
    completed: int = 0
    duplicates: int = 0
    retrained_after_kill: int = 0
    stale_alive: int = 0  # trials failed as stale whose owner was alive (a late heartbeat)
    lost: int = 0
    killed: int = 0
    errors: int = 0
    error_lines: list[str] = field(default_factory=list)
    peak_connections: int | None = None
    loadavg: str = ""
    study: str = ""


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(int(q * len(s)), len(s) - 1)]


def bench_run(
    storage: str,
    workers: int,
    *,
    cells_per_worker: int,
    train_s: float,
    heartbeat_s: float,
    kill: float,
    url: str | None,
    timeout_s: float,
    folder: Path | None = None,
) -> Run:
    """N workers on one fresh study of ``workers * cells_per_worker`` cells (named in ``study``).

    Everything the run writes (training log ``log/``, the workers' stderr ``err/``, their claim
    timings ``stats/``, the journal or SQLite file under ``out/``) goes to ``folder`` (kept), or
    to a temporary folder (removed)."""
    from harness.sweep.queue import TRAINING_LOG_ENV

    kind = STORAGE_KINDS[storage]
    cells = workers * cells_per_worker
    run = Run(storage, workers, 0, train_s)
    keep = folder
    with tempfile.TemporaryDirectory(prefix="lrwd-qbench-") as tmp:
        folder = Path(keep or tmp)
        for sub in ("ready", "stats", "err", "log"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        name = f"qbench-{storage}-{workers}-{time.time_ns()}"
        cfg = _config(kind, folder / "out", cells, name, heartbeat_s, url)
        study, storage, _ = _prepare(cfg)
        run.cells, run.study = len(study.get_trials(deepcopy=False)), study.study_name
        _close(storage)
        from omegaconf import OmegaConf

        import harness.sweep.worker  # noqa: F401 - imported once, before the workers fork

        spec = {
            "cfg": OmegaConf.to_container(cfg),
            "train_s": train_s,
            "dir": str(folder),
            "log_env": TRAINING_LOG_ENV,
        }
        procs = [_Forked(spec, folder) for _ in range(workers)]
        monitor = _Connections(url) if kind == "url" and url else None
        deadline = time.monotonic() + READY_WAIT_S
        while len(list((folder / "ready").iterdir())) < workers:
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
        if monitor is not None:
            monitor.start()
        t_go = time.time()
        (folder / "go").write_text("")
        killed: set[str] = set()
        end = time.monotonic() + timeout_s
        host = socket.gethostname()
        while any(p.poll() is None for p in procs) and time.monotonic() < end:
            if kill and not killed and _started(folder / "log") >= run.cells / 3:
                victims = [p for p in procs if p.poll() is None][: max(round(kill * workers), 1)]
                for p in victims:
                    os.kill(p.pid, signal.SIGKILL)
                    killed.add(f"{host}:{p.pid}")
                for p in victims:
                    p.wait()
                procs += [_Forked(spec, folder) for _ in victims]
            time.sleep(0.05)
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        t_end = time.time()
        if monitor is not None:
            run.peak_connections = monitor.close()
        run.loadavg = Path("/proc/loadavg").read_text().split(" ")[0]
        run.killed = len(killed)
        run.wall_s = t_end - t_go
        _stats(run, folder, t_go)
        run.errors = sum(1 for p in procs if p.returncode not in (0, -signal.SIGKILL))
        for path in (folder / "err").glob("*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if "Error" in line or "error" in line.split(":", 1)[0]:
                    run.error_lines.append(line.strip()[:200])
        _account(run, cfg, folder / "log", killed)
    return run


def _stats(run: Run, folder: Path, t_go: float) -> None:
    """Claims, claims per second, latency percentiles and lost compare-and-sets from the
    workers' ``stats/`` files (a killed worker writes none)."""
    lats: list[float] = []
    cpus: list[float] = []
    lost_cas = won_cas = 0
    last = t_go
    for path in (folder / "stats").glob("*.json"):
        st = json.loads(path.read_text())
        lats += [c[1] for c in st["claims"]]
        cpus += [c[3] for c in st["claims"]]
        run.claims += sum(c[2] for c in st["claims"])
        lost_cas += st["cas"].get("lost", 0)
        won_cas += st["cas"].get("won", 0)
        if st["claims"]:
            last = max(last, max(c[0] + c[1] for c in st["claims"]))
    run.cpu_p50_ms = 1e3 * _percentile(cpus, 0.5)
    run.claims_per_s = run.claims / max(last - t_go, 1e-9)
    run.p50_ms, run.p99_ms = 1e3 * _percentile(lats, 0.5), 1e3 * _percentile(lats, 0.99)
    run.max_ms = 1e3 * max(lats, default=float("nan"))
    run.cas_lost_per_claim = lost_cas / max(won_cas, 1)


def _account(run: Run, cfg: Any, log_dir: Path, killed: set[str] | None) -> None:
    """Cells completed and lost (trial states), duplicates and retrainings (training log).

    A training is explained by a kill when its owner is one of ``killed`` (None: any owner
    whose trial of that cell was failed as ``stale`` or handed back as ``preempted``) and that
    owner did not complete the cell; every other training beyond one per cell is a duplicate, as
    is a second COMPLETE trial of a cell."""
    import optuna
    from optuna.trial import TrialState

    from harness.storage import open_storage
    from harness.sweep.queue import CELL_KEY, LEASE_KEY, LOST_REASONS

    storage = open_storage(cfg, cfg.output_dir)
    trials = optuna.load_study(study_name=run.study, storage=storage).get_trials(deepcopy=False)
    _close(storage)
    complete: dict[str, list[str]] = defaultdict(list)
    interrupted: dict[str, set[str]] = defaultdict(set)
    for t in trials:
        owner = (t.system_attrs.get(LEASE_KEY) or ["?"])[0]
        if t.state == TrialState.COMPLETE:
            complete[t.user_attrs[CELL_KEY]].append(owner)
        elif t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") in LOST_REASONS:
            interrupted[t.user_attrs[CELL_KEY]].add(owner)
            if killed is not None and owner not in killed:
                run.stale_alive += 1
    run.completed = len(complete)
    run.lost = len({t.user_attrs.get(CELL_KEY) for t in trials} - set(complete))
    owners: dict[str, list[str]] = defaultdict(list)
    for path in sorted(log_dir.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                if rec["study"] == run.study:
                    owners[rec["cell"]].append(rec["owner"])
    for cell, who in owners.items():
        done_by = complete.get(cell, [])
        gone = killed if killed is not None else interrupted.get(cell, set())
        by_killed = sum(1 for o in who if o in gone and o not in done_by)
        run.retrained_after_kill += by_killed
        run.duplicates += max(len(who) - 1 - by_killed, 0) + max(len(done_by) - 1, 0)


BENCH_DIR_ENV = "LRWD_QBENCH_DIR"  # the bench folder, for Slurm tasks (sbatch exports it)
TRAIN_S_ENV = "LRWD_QBENCH_TRAIN_S"


def slurm_stand_in(cfg_dict: dict) -> int:
    """What each Slurm array task of ``--slurm`` runs: the worker loop with the stand-in."""
    spec = {
        "cfg": cfg_dict,
        "train_s": float(os.environ[TRAIN_S_ENV]),
        "dir": os.environ[BENCH_DIR_ENV],
    }
    return _worker(spec)


def bench_slurm(
    storage: str,
    tasks: int,
    *,
    cells_per_worker: int,
    train_s: float,
    heartbeat_s: float,
    cancel: int,
    requeue: int,
    url: str | None,
    timeout_s: float,
    folder: Path,
) -> Run:
    """A Slurm array of ``tasks`` workers on one study (submitit, as ``launcher=slurm`` submits
    it); once a third of the cells have started, ``scancel`` ``cancel`` tasks and
    ``scontrol requeue`` ``requeue`` others."""
    from harness.sweep.launch import submit_slurm
    from harness.sweep.queue import TRAINING_LOG_ENV

    kind = STORAGE_KINDS[storage]
    run = Run(f"{storage} (slurm)", tasks, 0, train_s)
    for sub in ("ready", "stats", "err", "log", "slurm"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    extra = (
        "launcher=slurm",
        "launcher.wait=false",
        "launcher.time_min=60",
        "launcher.cpus_per_task=1",
        "launcher.mem_gb=0",
        "+launcher.additional_parameters.mem=256M",  # a stand-in worker needs ~60 MB
        f"launcher.array_parallelism={tasks}",
        f"launcher.folder={folder / 'slurm'}",
        f"sweep.workers={tasks}",
    )
    name = f"qbench-slurm-{storage}-{tasks}-{time.time_ns()}"
    cfg = _config(kind, folder / "out", tasks * cells_per_worker, name, heartbeat_s, url, extra)
    study, store, _ = _prepare(cfg)
    run.cells, run.study = len(study.get_trials(deepcopy=False)), study.study_name
    _close(store)
    os.environ.update(
        {
            TRAINING_LOG_ENV: str(folder / "log"),
            BENCH_DIR_ENV: str(folder),
            TRAIN_S_ENV: str(train_s),
        }
    )
    (folder / "go").write_text("")
    t_go = time.time()
    sub = submit_slurm(cfg, tasks, overrides=[], target=slurm_stand_in)
    hit: list[str] = []
    end = time.monotonic() + timeout_s
    while not hit and time.monotonic() < end and (cancel or requeue):
        up = len(list((folder / "ready").iterdir()))
        if _started(folder / "log") >= run.cells / 3 and up >= min(tasks, cancel + requeue):
            running = [j for j, st in _task_states(sub.array_id).items() if st == "RUNNING"]
            victims = running[: cancel + requeue]
            for job in victims[:cancel]:
                subprocess.run(["scancel", job], check=False, capture_output=True)
            for job in victims[cancel:]:
                subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True)
            hit = victims
        time.sleep(0.2)
    run.killed = len(hit)
    states = sub.wait(poll_s=2, timeout_s=max(end - time.monotonic(), 1))
    run.wall_s = time.time() - t_go
    run.loadavg = Path("/proc/loadavg").read_text().split(" ")[0]
    run.errors = sum(1 for v in states.values() if v not in ("success", "CANCELLED"))
    run.error_lines = [f"{k}: {v}" for k, v in states.items() if v != "success"]
    _stats(run, folder, t_go)
    _account(run, cfg, folder / "log", None)
    return run


def _task_states(array_id: str) -> dict[str, str]:
    proc = subprocess.run(
        ["squeue", "-h", "-r", "-j", array_id, "-o", "%i %T"], capture_output=True, text=True
    )
    return dict(line.split() for line in proc.stdout.splitlines() if len(line.split()) == 2)


@dataclass
class DriverRow:
    storage: str
    cells: int
    enqueue_s: float
    resume_s: float
    status_s: float
    first_claim_ms: float
    claim_p50_ms: float
    claim_cpu_ms: float
    loadavg: str


def bench_driver(storage: str, cells: int, url: str | None) -> DriverRow:
    """Enqueue a study of ``cells`` cells, re-enqueue it (a resume), count it (status), and
    time 30 claims of one worker."""
    from harness.sweep.plan import enqueue_study
    from harness.sweep.queue import WaitingQueue, cell_counts

    with tempfile.TemporaryDirectory(prefix="lrwd-qbench-") as tmp:
        name = f"qbench-driver-{storage}-{cells}-{time.time_ns()}"
        cfg = _config(STORAGE_KINDS[storage], Path(tmp), cells, name, 30, url)
        study, storage, t_enqueue = _prepare(cfg)
        t0 = time.perf_counter()
        enqueue_study(study, cfg)
        t_resume = time.perf_counter() - t0
        t0 = time.perf_counter()
        cell_counts(study)
        t_status = time.perf_counter() - t0
        queue = WaitingQueue(study)
        lats, cpus = [], []
        for _ in range(30):
            t0, c0 = time.perf_counter(), time.thread_time()
            queue.claim(1)
            lats.append(time.perf_counter() - t0)
            cpus.append(time.thread_time() - c0)
        _close(storage)
    return DriverRow(
        storage,
        cells,
        t_enqueue,
        t_resume,
        t_status,
        1e3 * lats[0],
        1e3 * _percentile(lats[1:], 0.5),
        1e3 * _percentile(cpus[1:], 0.5),
        Path("/proc/loadavg").read_text().split(" ")[0],
    )


# --------------------------------------------------------------------------------------------
# Output


def _print_runs(runs: list[Run]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="the queue under N workers (stand-in training)")
    cols = [
        "storage",
        "workers",
        "cells",
        "train s",
        "wall s",
        "claims/s",
        "ideal/s",
        "claim p50 ms",
        "p99 ms",
        "CPU ms",
        "CAS lost/claim",
        "completed",
        "dup",
        "stale alive",
        "lost",
        "killed",
        "errors",
        "peak conns",
        "load",
    ]
    for c in cols:
        table.add_column(c, justify="right")
    for r in runs:
        table.add_row(
            r.storage,
            str(r.workers),
            str(r.cells),
            f"{r.train_s:g}",
            f"{r.wall_s:.1f}",
            f"{r.claims_per_s:.1f}",
            f"{r.workers / r.train_s:.0f}",
            f"{r.p50_ms:.1f}",
            f"{r.p99_ms:.1f}",
            f"{r.cpu_p50_ms:.1f}",
            f"{r.cas_lost_per_claim:.2f}",
            str(r.completed),
            str(r.duplicates),
            str(r.stale_alive),
            str(r.lost),
            str(r.killed),
            str(r.errors),
            "-" if r.peak_connections is None else str(r.peak_connections),
            r.loadavg,
        )
    Console(width=220).print(table)
    for r in runs:
        for line in sorted(set(r.error_lines))[:5]:
            print(f"  {r.storage} x{r.workers}: {line}")


def _print_driver(rows: list[DriverRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="the driver on one study (enqueue, resume, status) and one worker's claims")
    for c in (
        "storage",
        "cells",
        "enqueue s",
        "resume s",
        "status s",
        "1st claim ms",
        "claim p50 ms",
        "claim CPU ms",
        "load",
    ):
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(
            r.storage,
            str(r.cells),
            f"{r.enqueue_s:.2f}",
            f"{r.resume_s:.2f}",
            f"{r.status_s:.2f}",
            f"{r.first_claim_ms:.1f}",
            f"{r.claim_p50_ms:.1f}",
            f"{r.claim_cpu_ms:.1f}",
            r.loadavg,
        )
    Console(width=220).print(table)


def plot(rows_path: Path, out: Path) -> None:
    """Claims per second and claim latency p99 against workers, one line per storage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    from matplotlib.ticker import NullLocator

    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    runs = pd.DataFrame([r for r in rows if r.get("kind") == "run" and not r.get("killed")])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.lineplot(runs, x="workers", y="claims_per_s", hue="storage", marker="o", ax=axes[0])
    axes[0].set(ylabel="claims per second", title="throughput")
    sns.lineplot(runs, x="workers", y="p99_ms", hue="storage", marker="o", ax=axes[1])
    sns.lineplot(
        runs,
        x="workers",
        y="p50_ms",
        hue="storage",
        marker="s",
        ax=axes[1],
        linestyle="--",
        legend=False,
    )
    axes[1].set(
        yscale="log",
        ylabel="claim latency ms (p99 solid, p50 dashed)",
        title="claim latency",
    )
    ticks = sorted(int(w) for w in runs.workers.unique())
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticks(ticks, labels=[str(w) for w in ticks])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench queue", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--storages",
        default="postgres,journal,sqlite",
        help="comma list of postgres,journal,sqlite (postgres needs --url)",
    )
    ap.add_argument(
        "--url",
        default=os.environ.get("LRWD_STORAGE_URL", ""),
        help="PostgreSQL URL (default $LRWD_STORAGE_URL)",
    )
    ap.add_argument("--workers", default="8,16,32,64", help="worker counts (default 8,16,32,64)")
    ap.add_argument("--cells-per-worker", type=int, default=8, help="cells per worker (default 8)")
    ap.add_argument("--train-s", type=float, default=1.0, help="stand-in training time (1.0)")
    ap.add_argument(
        "--heartbeat-s", type=float, default=60, help="sweep.heartbeat_s (60, the default)"
    )
    ap.add_argument(
        "--kill",
        type=float,
        default=0.0,
        help="share of the workers killed (SIGKILL) and restarted mid-run (e.g. 0.25)",
    )
    ap.add_argument(
        "--driver", default="", help="study sizes for the driver table, e.g. 1000,5000,20000"
    )
    ap.add_argument(
        "--slurm",
        type=int,
        default=0,
        help="instead: an array of this many Slurm tasks (submitit; the cluster sinfo answers)",
    )
    ap.add_argument("--scancel", type=int, default=0, help="--slurm: tasks cancelled mid-run")
    ap.add_argument("--requeue", type=int, default=0, help="--slurm: tasks requeued mid-run")
    ap.add_argument("--timeout-s", type=float, default=600, help="per run (600)")
    ap.add_argument("--json", type=Path, help="append every row to this JSON-lines file")
    ap.add_argument("--plot", type=Path, help="draw the plot from --json's rows into this file")
    args = ap.parse_args(argv)
    storages = [s.strip() for s in args.storages.split(",") if s.strip()]
    bad = [s for s in storages if s not in STORAGE_KINDS]
    if bad:
        print(
            f"error: --storages: {bad[0]} is not one of {', '.join(STORAGE_KINDS)}", file=sys.stderr
        )
        return 2
    if "postgres" in storages and not args.url:
        print(
            "error: --storages postgres needs --url postgresql://user:pw@host/db "
            "(or $LRWD_STORAGE_URL); pass --storages journal,sqlite without one",
            file=sys.stderr,
        )
        return 2
    if args.plot and not args.json:
        print("error: --plot draws the rows of --json FILE; pass both", file=sys.stderr)
        return 2
    url = args.url or None

    def save(kind: str, row: Any) -> None:
        if args.json:
            with open(args.json, "a", encoding="utf-8") as f:
                rec = {"kind": kind, **row.__dict__}
                rec.pop("error_lines", None)
                f.write(json.dumps(rec) + "\n")

    if args.driver:
        rows = []
        for storage in storages:
            for n in _ints(args.driver):
                rows.append(bench_driver(storage, n, url))
                save("driver", rows[-1])
                _print_driver(rows[-1:])
        _print_driver(rows)
    runs = []
    if args.slurm:
        bad = [s for s in storages if s == "sqlite"]
        if bad:
            print(
                "error: --slurm: SQLite is local only; pass --storages postgres or journal",
                file=sys.stderr,
            )
            return 2
        for storage in storages:
            with tempfile.TemporaryDirectory(prefix="lrwd-qbench-") as tmp:
                runs.append(
                    bench_slurm(
                        storage,
                        args.slurm,
                        cells_per_worker=args.cells_per_worker,
                        train_s=args.train_s,
                        heartbeat_s=args.heartbeat_s,
                        cancel=args.scancel,
                        requeue=args.requeue,
                        url=url,
                        timeout_s=args.timeout_s,
                        folder=Path(tmp),
                    )
                )
            save("run", runs[-1])
            _print_runs(runs[-1:])
    for storage in storages if not args.slurm else []:
        for n in _ints(args.workers):
            runs.append(
                bench_run(
                    storage,
                    n,
                    cells_per_worker=args.cells_per_worker,
                    train_s=args.train_s,
                    heartbeat_s=args.heartbeat_s,
                    kill=args.kill,
                    url=url,
                    timeout_s=args.timeout_s,
                )
            )
            save("run", runs[-1])
            _print_runs(runs[-1:])
    if len(runs) > 1:
        _print_runs(runs)
    if args.plot:
        plot(args.json, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
