"""``python -m harness.worker [--prepare] OVERRIDES...``: one sweep worker, for plain sbatch scripts.

The Slurm path without submitit (``slurm/sweep_array.sbatch``). It composes the config exactly
like ``python -m harness.sweep`` (``conf/config.yaml`` + the same Hydra overrides; the output dir
is ``hydra.run.dir``, default ``outputs/<name>``, or ``output_dir=...``), then:

``--prepare``  creates the studies and enqueues the grid, prints what is queued and exits. Run it
               once, on the login node, before ``sbatch`` (workers never enqueue new cells).
(default)      :func:`harness.sweep.worker.run_worker`: join the studies and train cells until none
               are left; exit 0.

Signals (Slurm): on ``SIGUSR1`` (``#SBATCH --signal=B:USR1@120``: the warning before the time
limit, or preemption) the worker hands the trials it holds back to the study (FAIL with
``fail_reason=preempted``, cell re-enqueued), requeues its own array task with
``scontrol requeue`` (at most ``launcher.max_requeue`` times, counted by
``SLURM_RESTART_COUNT``) and exits 3. On ``SIGTERM`` (``scancel``, the hard limit) it hands the
trials back and exits 143 without requeueing. Ctrl-C: the same, through ``KeyboardInterrupt``.

Threads: ``train.threads=0`` (the default) runs on the cores this process may use, capped by
``SLURM_CPUS_PER_TASK`` when set, so array tasks that share a node divide it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger("lrwd.worker")

EXIT_REQUEUED = 3
EXIT_TERMINATED = 143


def resolved(overrides: list[str]) -> DictConfig:
    """Validated, resolved config as the sweep driver resolves it (variants, output dir, secrets)."""
    from harness.config import compose_config
    from harness.sweep.cli import resolve

    cfg, run_dir = compose_config(overrides, run_dir=True)
    return resolve(cfg, [o for o in overrides if not o.startswith("hydra.")], run_dir)


def prepare(cfg: DictConfig) -> list[Any]:
    """Create the studies and enqueue their grids (idempotent); return the studies."""
    from harness.storage import describe
    from harness.sweep.plan import prepare as prepare_studies
    from harness.sweep.queue import cell_counts

    _, studies = prepare_studies(cfg)
    for study in studies:
        counts = {k: v for k, v in cell_counts(study).items() if v}
        print(f"{study.study_name}: {counts}")
    print(f"storage: {describe(cfg)}; output dir: {cfg.output_dir}")
    return studies


class _Signals:
    """USR1: hand back + requeue + exit 3; TERM: hand back + exit 143 (handled off the handler)."""

    def __init__(self, max_requeue: int) -> None:
        self.max_requeue = max_requeue
        self.fired = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGUSR1, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.fired.is_set():
            return
        self.fired.set()
        from harness.sweep import worker

        worker.request_stop()  # no new cells; the running ones stop at their next report
        threading.Thread(target=self._leave, args=(signum,), daemon=True).start()

    def _leave(self, signum: int) -> None:
        from harness.sweep.launch import handback

        name = signal.Signals(signum).name
        n = handback()
        log.warning("%s: handed %s trial(s) back to the study", name, "?" if n is None else n)
        code = EXIT_TERMINATED
        if signum == signal.SIGUSR1:
            code = EXIT_REQUEUED if self._requeue() else 0
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def _requeue(self) -> bool:
        job = os.environ.get("SLURM_JOB_ID")
        if not job:
            log.warning("SIGUSR1 outside Slurm: not requeueing")
            return False
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
        if restarts >= self.max_requeue:
            log.warning(
                "job %s was requeued %d times (launcher.max_requeue=%d): not again",
                job,
                restarts,
                self.max_requeue,
            )
            return False
        proc = subprocess.run(
            ["scontrol", "requeue", job], capture_output=True, text=True, timeout=60
        )
        if proc.returncode != 0:
            log.error("scontrol requeue %s failed: %s", job, proc.stderr.strip())
            return False
        log.warning(
            "requeued job %s (restart %d of at most %d)", job, restarts + 1, self.max_requeue
        )
        return True


def main(argv: list[str] | None = None) -> int:
    from harness.errors import ConfigError
    from harness.storage import shared_by_hosts
    from harness.usage import error_line, fail

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    do_prepare = "--prepare" in args
    overrides = [a for a in args if a != "--prepare"]
    bad = [a for a in overrides if a.startswith("-")]
    if bad:
        return fail(
            f"{bad[0]}: not an option of python -m harness.worker; usage: python -m harness.worker "
            "[--prepare] key=value ..."
        )
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = resolved(overrides)
        if not shared_by_hosts(cfg.storage.kind) and (do_prepare or os.environ.get("SLURM_JOB_ID")):
            raise ConfigError(
                f"storage.kind: {cfg.storage.kind} cannot be shared by Slurm array tasks; use "
                "storage=journal (a file on a shared filesystem) or storage=url "
                "(LRWD_STORAGE_URL=postgresql://...)"
            )
        if do_prepare:
            prepare(cfg)
            return 0
        from harness.secrets import real_url
        from harness.sweep.launch import set_worker_threads
        from harness.sweep.worker import run_worker

        real = real_url(cfg)
        threads = set_worker_threads(real, 1)
        _Signals(int(cfg.launcher.max_requeue)).install()
        log.info(
            "lrwd worker: job %s, array task %s, restart %s, output %s, %d thread(s)",
            os.environ.get("SLURM_JOB_ID", "-"),
            os.environ.get("SLURM_ARRAY_TASK_ID", "-"),
            os.environ.get("SLURM_RESTART_COUNT", "0"),
            cfg.output_dir,
            threads,
        )
        return int(run_worker(real) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - a config error is one line, anything else raises
        line = error_line(exc)
        if line is None:
            raise
        return fail(line)


if __name__ == "__main__":
    sys.exit(main())
