"""Workers for one sweep: N local processes, or a Slurm job array through submitit.

Every worker runs the same function, :func:`harness.sweep.worker.run_worker`, on the same resolved
config: it joins the study (or studies) and pulls grid cells until none are left. Workers never
talk to each other; the storage (a journal file on a shared filesystem, or PostgreSQL) is the
only thing they share, so any number of them, started at any time, finish the grid exactly once.

Slurm (``launcher=slurm``): :func:`submit_slurm` submits ``sweep.workers`` array tasks with
submitit. Each task receives the resolved config as a plain dict (no Hydra on the compute node)
and runs :class:`SlurmWorker`. Slurm sends submitit's signal (``SIGUSR2``; ``--signal=USR2@S``
with S = ``launcher.signal_delay_s``) S seconds before the time limit, and on preemption;
submitit then calls :meth:`SlurmWorker.checkpoint`, which hands the trials this worker holds
back to the study (FAIL with ``fail_reason=preempted``, the cell re-enqueued) and returns the
same call as a ``DelayedSubmission``: submitit requeues the task (``scontrol requeue``) and, when
it starts again, it joins the study anew. Time-limit requeues are capped by
``launcher.max_requeue``; preemption requeues are not. A task killed outright (``scancel``, node
failure) leaves RUNNING trials without a heartbeat; any worker re-runs them after
``2 x sweep.heartbeat_s``.

Passwords in ``storage.url`` never reach the submitted pickle or the sbatch script: the URL
travels in the ``LRWD_STORAGE_URL`` environment variable (sbatch exports the submitting
environment to the job) and the config holds ``env:LRWD_STORAGE_URL``.

Threads: with ``train.threads=0`` (the default) the workers divide the cores they run on. Each of
N local workers gets ``max(1, cores // N)`` torch threads, cores being the driver's CPU affinity;
a Slurm task (submitit or ``python -m harness.worker``) takes the cores of its task
(``SLURM_CPUS_PER_TASK`` when set). :func:`worker_threads` computes it, :func:`threads_note` says
it in the sweep's start-up line and warns when the workers outnumber the cores.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing as mp
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.secrets import hide_url, real_url
from harness.storage import describe

log = logging.getLogger("lrwd.launch")

HANDBACK_TIMEOUT_S = 30.0

Target = Callable[[dict], Any]


# --------------------------------------------------------------------------------------------
# The function every worker runs


def run_worker_from_dict(cfg_dict: dict) -> int:
    """The default worker target: ``harness.sweep.worker.run_worker(cfg)`` on a plain config dict.

    ``train.threads=0`` becomes this process's cores (:func:`available_cores`: on a Slurm node,
    the task's CPUs); the local pool has already set each worker's share."""
    from harness.sweep.worker import run_worker  # lazily: submitting needs no torch

    cfg = real_url(OmegaConf.create(cfg_dict))
    set_worker_threads(cfg, 1)
    return int(run_worker(cfg) or 0)


# --------------------------------------------------------------------------------------------
# Cores and threads


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity (``os.sched_getaffinity``), capped by
    Slurm's ``SLURM_CPUS_PER_TASK`` when that is set (tasks that share a node without binding)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        cores = min(cores, int(slurm))
    return max(cores, 1)


def worker_threads(threads: int, workers: int, cores: int | None = None) -> int:
    """Torch threads of each of ``workers`` processes sharing ``cores`` (default: this process's):
    ``threads`` when the user set it (not 0), else ``max(1, cores // workers)``."""
    if int(threads) > 0:
        return int(threads)
    cores = available_cores() if cores is None else int(cores)
    return max(1, cores // max(int(workers), 1))


def set_worker_threads(cfg: DictConfig, workers: int) -> int:
    """Resolve ``cfg.train.threads`` for one of ``workers`` processes on this machine, in place,
    and set torch's thread count to it (before the first training, so the worker's first record
    already runs with it). Returns the thread count."""
    from harness.train import setup_threads

    threads = worker_threads(int(cfg.train.threads), workers)
    cfg.train.threads = threads
    setup_threads(threads)
    return threads


def threads_note(cfg: DictConfig, workers: int, cores: int | None = None) -> tuple[str, str]:
    """(what the start-up line says about workers and threads, a warning line or ``""``) for
    ``workers`` local processes on ``cores`` (default: this process's) cores."""
    cores = available_cores() if cores is None else int(cores)
    asked = int(cfg.train.threads)
    threads = worker_threads(asked, workers, cores)
    note = (
        f"{workers} local worker{'s' if workers != 1 else ''} x {threads} "
        f"thread{'s' if threads != 1 else ''} on {cores} core{'s' if cores != 1 else ''}"
    )
    warning = ""
    if asked > 0 and workers * asked > cores:
        share = worker_threads(0, workers, cores)
        warning = (
            f"sweep.workers={workers} x train.threads={asked} = {workers * asked} threads on "
            f"{cores} cores: threads wait for each other and cells can take many times longer; "
            f"pass train.threads=0 to divide the cores ({share} per worker)"
        )
    elif workers > cores:
        warning = (
            f"sweep.workers={workers} is more than the {cores} cores here: the workers take turns "
            f"on the cores (1 thread each), so the sweep is no faster than with "
            f"sweep.workers={cores} and holds {workers} workers' memory; pass "
            f"sweep.workers={cores} or fewer"
        )
    return note, warning


def handback(timeout_s: float = HANDBACK_TIMEOUT_S) -> int | None:
    """Hand the running worker's trials back to the study; ``None`` if that did not finish.

    Runs :func:`harness.sweep.worker.handback` in a helper thread: the caller is usually a signal
    handler that interrupted the worker, possibly while it held a storage lock (journal file
    lock, database row lock) that the helper then has to wait for. Trials that could not be
    handed back within ``timeout_s`` stay RUNNING and are re-run by any worker once their
    heartbeat is stale (2 x ``sweep.heartbeat_s``).
    """
    from harness.sweep import worker

    result: list[int] = []

    def run() -> None:
        try:
            result.append(int(worker.handback() or 0))
        except Exception as exc:  # noqa: BLE001 - best effort; stale reclaim is the fallback
            log.warning("handing trials back failed: %s", exc)

    t = threading.Thread(target=run, name="lrwd-handback", daemon=True)
    t.start()
    t.join(timeout_s)
    return result[0] if result else None


def _log_to_stderr() -> None:
    """INFO lines of lrwd's loggers on stderr (submitit's own logger has its handler)."""
    root = logging.getLogger("lrwd")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


class SlurmWorker:
    """The callable each Slurm array task runs; checkpointable the submitit way.

    ``target(cfg_dict)`` does the work (default :func:`run_worker_from_dict`). On Slurm's warning
    signal submitit calls :meth:`checkpoint`, pickles the ``DelayedSubmission`` it returns over
    the task's submitted pickle and requeues the task.
    """

    def __init__(self, target: Target | None = None) -> None:
        self.target = target
        self.checkpoints = 0  # how often this task was checkpointed (travels in the pickle)

    def __call__(self, cfg_dict: dict) -> Any:
        _log_to_stderr()
        log.info(
            "lrwd worker: job %s, array task %s, restart %s (checkpointed %d times), node %s",
            os.environ.get("SLURM_JOB_ID", "?"),
            os.environ.get("SLURM_ARRAY_TASK_ID", "-"),
            os.environ.get("SLURM_RESTART_COUNT", "0"),
            self.checkpoints,
            os.uname().nodename,
        )
        return (self.target or run_worker_from_dict)(cfg_dict)

    def checkpoint(self, cfg_dict: dict) -> Any:
        """Hand held trials back to the study, then resubmit the same call (requeue)."""
        import submitit

        n = handback()
        if n is None:
            log.warning(
                "checkpoint: could not hand trials back within %.0f s; they are re-run once "
                "their heartbeat is stale",
                HANDBACK_TIMEOUT_S,
            )
        else:
            log.info("checkpoint: handed %d trial(s) back to the study; requeueing", n)
        self.checkpoints += 1
        return submitit.helpers.DelayedSubmission(self, cfg_dict)


# --------------------------------------------------------------------------------------------
# Slurm


@dataclass
class SlurmSubmission:
    """What :func:`submit_slurm` submitted (and, after :meth:`wait`, how each task ended)."""

    array_id: str
    job_ids: list[str]
    folder: Path
    jobs: list[Any] = field(repr=False, default_factory=list)
    states: dict[str, str] = field(default_factory=dict)

    def wait(self, poll_s: float = 5.0, timeout_s: float | None = None) -> dict[str, str]:
        """Block until every task has finished; return ``{job id: outcome}``.

        Works without Slurm accounting (no sacct): a task is finished when submitit's result
        pickle exists, or when ``squeue`` reports a terminal state or no longer knows the task.
        Outcomes: ``success``, ``error`` (the worker raised; see its log) or the Slurm state
        (``CANCELLED``, ``TIMEOUT``, ``FAILED``, ...; ``GONE`` if it left the queue silently).
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pending = list(zip(self.job_ids, self.jobs))
        while pending:
            queue = _squeue_states(self.array_id)
            still = []
            for job_id, job in pending:
                state = "UNKNOWN" if queue is None else queue.get(job_id, "GONE")
                outcome = _outcome(job, state)
                if outcome is None:
                    still.append((job_id, job))
                else:
                    self.states[job_id] = outcome
            pending = still
            if pending:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{len(pending)} of {len(self.job_ids)} Slurm tasks still running after "
                        f"{timeout_s} s: {[j for j, _ in pending]}"
                    )
                time.sleep(poll_s)
        return dict(self.states)


_ACTIVE = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "CONFIGURING",
    "COMPLETING",
    "STAGE_OUT",
    "SIGNALING",
    "RESV_DEL_HOLD",
    "PREEMPTED",  # requeued jobs come back
    "UNKNOWN",
}


def _squeue_states(array_id: str) -> dict[str, str] | None:
    """``{task job id: state}`` from squeue (all states, one line per array task); None on error.

    A task missing from a successful answer has left the queue (finished longer ago than the
    cluster's MinJobAge).
    """
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-t", "all", "-j", array_id, "-o", "%i %T"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        # squeue exits 1 with "Invalid job id specified" once the whole job has been purged.
        return {} if "Invalid job id" in proc.stderr else None
    states = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _pickled_outcome(job: Any) -> str | None:
    if not job.paths.result_pickle.exists():
        return None
    try:
        outcome, _ = job._get_outcome_and_result()
    except Exception:  # noqa: BLE001 - a half-written pickle: look again next poll
        return None
    return str(outcome)


def _outcome(job: Any, state: str) -> str | None:
    """A finished task's outcome (``success``/``error``/a Slurm state), or None while active."""
    outcome = _pickled_outcome(job)
    if outcome is not None:
        return outcome
    if state in _ACTIVE:
        return None
    # Terminal (or gone) without a result: the pickle is written just before the process
    # exits, so look once more after a moment before calling it a Slurm-side end.
    time.sleep(1.0)
    return _pickled_outcome(job) or state


class LaunchError(RuntimeError):
    """Slurm refused the job (``sbatch`` failed). The message is one line; the cells stay queued."""


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def check_slurm(timeout_s: float = 30.0) -> None:
    """Raise :class:`ConfigError` (one line) unless a Slurm client is installed and its controller
    answers (``sinfo``). Run before anything is enqueued."""
    try:
        proc = subprocess.run(
            ["sinfo", "--noheader", "--format=%P"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except FileNotFoundError:
        raise ConfigError(
            "launcher.name: slurm, but this machine has no Slurm client (no sinfo); submit from "
            "a login node, or pass launcher=local"
        ) from None
    except subprocess.TimeoutExpired:
        proc = None
    if proc is None or proc.returncode != 0:
        why = f"no answer in {timeout_s:g} s" if proc is None else _first_line(proc.stderr)
        raise ConfigError(
            f"launcher.name: slurm, but the Slurm controller does not answer "
            f"(sinfo: {why.removeprefix('sinfo: ')}); "
            "check that `sinfo` works here, or pass launcher=local"
        )


def slurm_folder(cfg: DictConfig) -> Path:
    """``launcher.folder`` or ``<output dir>/slurm``, absolute (it must be on a shared FS)."""
    folder = cfg.launcher.folder or Path(cfg.output_dir or ".") / "slurm"
    return Path(folder).expanduser().resolve()


def make_executor(cfg: DictConfig, folder: Path | None = None):
    """A ``submitit.SlurmExecutor`` configured from ``cfg.launcher`` (one task per array item)."""
    import submitit

    lc = cfg.launcher
    folder = folder or slurm_folder(cfg)
    try:
        executor = submitit.SlurmExecutor(
            folder=folder, max_num_timeout=int(lc.max_requeue), python=lc.python or None
        )
    except RuntimeError as exc:  # submitit found no srun
        raise ConfigError(
            f"launcher.name: slurm, but this machine has no Slurm client ({exc}); submit from "
            "a login node, or pass launcher=local"
        ) from None
    params: dict[str, Any] = {
        "job_name": f"lrwd-{cfg.name}",
        "time": int(lc.time_min),
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": int(lc.cpus_per_task),
        "array_parallelism": int(lc.array_parallelism),
        "signal_delay_s": int(lc.signal_delay_s),
    }
    if int(lc.mem_gb) > 0:
        params["mem"] = f"{int(lc.mem_gb)}GB"
    if int(lc.gpus_per_task) > 0:
        params["gpus_per_task"] = int(lc.gpus_per_task)
    for key in ("partition", "account", "qos"):
        if lc[key]:
            params[key] = str(lc[key])
    if lc.setup:
        params["setup"] = [str(line) for line in lc.setup]
    if lc.additional_parameters:
        params["additional_parameters"] = dict(
            OmegaConf.to_container(lc.additional_parameters, resolve=True)
        )
    executor.update_parameters(**params)
    return executor


def submit_slurm(
    cfg: DictConfig,
    n_workers: int | None = None,
    overrides: Sequence[str] | None = None,
    *,
    target: Target | None = None,
) -> SlurmSubmission:
    """Submit ``n_workers`` (default ``sweep.workers``) Slurm array tasks running the sweep.

    ``cfg`` is the resolved sweep config (the driver has created the studies and enqueued the
    grid). Each task runs ``SlurmWorker(target)(cfg_dict)``; ``target`` defaults to
    :func:`run_worker_from_dict` (tests inject a stand-in; it must be importable on the nodes).
    ``overrides`` are the user's command-line overrides (default: Hydra's, else ``sys.argv``),
    used only to print the exact status / report commands. Prints the job ids, the log folder
    and how to watch progress; waits for the tasks only if ``launcher.wait`` (the returned
    submission's ``states`` then holds each task's outcome).
    """
    n = int(n_workers if n_workers is not None else cfg.sweep.workers)
    if n < 1:
        raise ConfigError(f"sweep.workers: {n}; pass sweep.workers=<1 or more>")
    cfg = hide_url(cfg)
    folder = slurm_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    executor = make_executor(cfg, folder)
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    echoed = io.StringIO()  # submitit echoes sbatch's stderr; on failure it is in the one line
    try:
        with contextlib.redirect_stderr(echoed):
            jobs = executor.map_array(SlurmWorker(target), [cfg_dict] * n)
    except Exception as exc:  # noqa: BLE001 - submitit raises its own error types for sbatch
        why = _first_line(echoed.getvalue() or str(exc)).removeprefix("sbatch: error: ")
        raise LaunchError(
            f"sbatch failed: {why}; the cells stay queued: run the same command again once "
            "Slurm accepts jobs (sweep.action=status lists them)"
        ) from exc
    sys.stderr.write(echoed.getvalue())
    job_ids = [str(j.job_id) for j in jobs]
    sub = SlurmSubmission(job_ids[0].split("_")[0], job_ids, folder, jobs)
    print_submitted(cfg, sub, _user_overrides(overrides))
    if cfg.launcher.wait:
        print(f"waiting for {n} task(s) of job {sub.array_id} (launcher.wait=true) ...", flush=True)
        states = sub.wait()
        bad = {k: v for k, v in states.items() if v != "success"}
        if bad:
            log.error("%d of %d Slurm tasks did not succeed: %s", len(bad), n, bad)
            print(f"{len(bad)} of {n} task(s) did not succeed: {bad}; logs in {folder}")
        else:
            print(f"all {n} task(s) of job {sub.array_id} finished")
    return sub


def _user_overrides(overrides: Sequence[str] | None) -> list[str]:
    if overrides is not None:
        return list(overrides)
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:  # noqa: BLE001 - outside a Hydra run
        return [a for a in sys.argv[1:] if "=" in a and not a.startswith("-")]


def print_submitted(cfg: DictConfig, sub: SlurmSubmission, overrides: list[str]) -> None:
    """Job ids, where the logs are and the commands to watch, report and cancel."""
    from harness.secrets import mask_secrets

    n = len(sub.job_ids)
    what = f"array job {sub.array_id} ({n} tasks)" if n > 1 else f"job {sub.array_id}"
    ids = ", ".join(sub.job_ids[:8]) + (" ..." if n > 8 else "")
    keep = [mask_secrets(o) for o in overrides if not o.lstrip("+~").startswith("launcher")]
    if cfg.output_dir and not any(o.startswith(("output_dir=", "hydra.run.dir=")) for o in keep):
        keep.append(f"output_dir={cfg.output_dir}")  # the storage path derives from it
    sweep = " ".join(["python -m harness.sweep", *(shlex.quote(o) for o in keep)])
    print(
        "\n".join(
            [
                f"submitted {what}: {ids}",
                f"  logs       {sub.folder}/{sub.job_ids[0]}_0_log.out (.err)",
                f"  queue      squeue -j {sub.array_id}",
                f"  cells      {sweep} sweep.action=status",
                f"  dashboard  optuna-dashboard {shlex.quote(describe(cfg))}",
                f"  results    {sweep} sweep.action=report",
                f"  cancel     scancel {sub.array_id}",
            ]
        ),
        flush=True,
    )


# --------------------------------------------------------------------------------------------
# Local worker processes


WORKER_INDEX_ENV = "LRWD_WORKER_INDEX"


def _local_entry(cfg_dict: dict, target: Target | None, index: int = 0) -> None:
    logging.basicConfig(level=logging.WARNING)
    os.environ[WORKER_INDEX_ENV] = str(index)
    rc = (target or run_worker_from_dict)(cfg_dict)
    if isinstance(rc, int) and rc:
        sys.exit(rc)


def run_local_workers(
    cfg: DictConfig,
    n: int | None = None,
    *,
    target: Target | None = None,
    timeout_s: float | None = None,
    poll: Callable[[], None] | None = None,
    poll_s: float = 0.5,
) -> list[int]:
    """Start ``n`` (default ``sweep.workers``) worker processes on one study; wait; exit codes.

    Processes are spawned (a fresh interpreter each, no forked torch state) and inherit the
    environment (``LRWD_STORAGE_URL`` included); each gets ``LRWD_WORKER_INDEX`` = its index and,
    unless ``train.threads`` is set, ``max(1, cores // n)`` threads (:func:`worker_threads`).
    ``poll()`` (progress) is called every ``poll_s`` seconds while they run. Ctrl-C reaches the
    workers too (same process group): each hands its trials back and exits, and this waits for
    them. After ``timeout_s`` the remaining workers are terminated (SIGTERM; exit code -15).
    """
    n = int(n if n is not None else cfg.sweep.workers)
    if n < 1:
        raise ConfigError(f"sweep.workers: {n}; pass sweep.workers=<1 or more>")
    cfg_dict = OmegaConf.to_container(hide_url(cfg), resolve=True)
    cfg_dict["train"]["threads"] = worker_threads(int(cfg.train.threads), n)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(target=_local_entry, args=(cfg_dict, target, i), name=f"lrwd-worker-{i}")
        for i in range(n)
    ]
    for p in procs:
        p.start()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        while any(p.is_alive() for p in procs):
            if deadline is not None and time.monotonic() > deadline:
                break
            if poll is not None:
                poll()
            for p in procs:
                p.join(poll_s / n)
    except KeyboardInterrupt:
        for p in procs:
            p.join(30)
        raise
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(10)
    return [int(p.exitcode if p.exitcode is not None else -1) for p in procs]
