"""One study, three Slurm workers, on a real one-node Slurm cluster.

Every sweep here runs with ``LRWD_TRAINING_LOG`` set (sbatch exports it to the tasks), so each
worker writes a line per training it starts and the tests count trainings per cell: trial states
alone cannot show a cell trained twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from harness.sweep import queue as wq
from tests.test_sweep import ROOT, TINY, _owners, assert_exactly_once, load, run_sweep

pytestmark = pytest.mark.slurm
# trials of ~1 s, so that the three workers really share the grid
SLOW = ["train.epochs=4", "data.num_samples=3000"]
SLURM = [*TINY, *SLOW, "launcher=slurm", "sweep.workers=3", "sweep.heartbeat_s=2"]
# training a victim must have left when scancel is sent: KillWait (2 s) plus polling slack
KILL_MARGIN_S = 4.0


def _squeue(ids: str = "") -> list[str]:
    cmd = ["squeue", "-h", "-o", "%i"] + (["-j", ids] if ids else [])
    return subprocess.run(cmd, capture_output=True, text=True).stdout.split()


def _logged(logs: Path) -> dict[str, str]:
    """The environment of a sweep whose workers write the training log to ``logs``."""
    return {**os.environ, wq.TRAINING_LOG_ENV: str(logs)}


def _trained_once(logs: Path, study_name: str, cells: set[str]) -> None:
    counts = {c: n for (s, c), n in wq.read_training_log(logs).items() if s == study_name}
    assert set(counts) == cells, f"trained {len(counts)} cells, expected {len(cells)}"
    twice = {c: n for c, n in counts.items() if n > 1}
    assert not twice, f"cells trained twice: {twice}"


def _cells(trials) -> set[str]:
    return {t.user_attrs["cell"] for t in trials}


def _wait_idle(timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while _squeue() and time.time() < deadline:
        time.sleep(1)
    assert not _squeue(), "Slurm jobs still running"


def test_three_slurm_workers_journal(tmp_path, slurm_cluster):
    out, logs = tmp_path / "j", tmp_path / "trainings"
    proc = run_sweep(
        out, *SLURM, "storage=journal", "launcher.wait=true", timeout=600, env=_logged(logs)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted" in proc.stdout and "3 tasks" in proc.stdout
    study = load(out, "journal", [*TINY, *SLOW])
    complete = assert_exactly_once(study, 9)
    _trained_once(logs, study.study_name, _cells(complete))
    assert len(_owners(complete)) >= 2
    assert (out / "results.csv").exists()


def test_three_slurm_workers_postgres(tmp_path, slurm_cluster, postgres_url):
    out, logs = tmp_path / "pg", tmp_path / "trainings"
    args = ["storage=url", f"storage.url={postgres_url}", "sweep.study_name=slurmpg"]
    proc = run_sweep(out, *SLURM, *args, "launcher.wait=true", timeout=600, env=_logged(logs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(out, "url", [*TINY, *SLOW, "sweep.study_name=slurmpg"], url=postgres_url)
    complete = assert_exactly_once(study, 9)
    _trained_once(logs, study.study_name, _cells(complete))
    assert len(_owners(complete)) >= 2


def test_multirun_across_variants_on_slurm(tmp_path, slurm_cluster):
    """`-m optimizer.decay=l2,independent launcher=slurm`: one array (and study) per variant."""
    base = [o for o in SLURM if not o.startswith(("optimizer.decay=", "sweep.workers="))]
    sweep_dir, logs = tmp_path / "mr", tmp_path / "trainings"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", "-m", f"hydra.sweep.dir={sweep_dir}", *base,
         "sweep.workers=2", "storage=journal", "launcher.wait=true",
         "optimizer.decay=l2,independent"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=_logged(logs),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("submitted") == 2, proc.stdout[-3000:]
    base_cfg = [o for o in TINY if not o.startswith("optimizer.decay=")] + SLOW
    jobs = sorted(p.parent for p in sweep_dir.glob("*/config.yaml"))
    assert len(jobs) == 2, jobs
    decays: set[str] = set()
    for out in jobs:
        decay = OmegaConf.load(out / "config.yaml").optimizer.decay
        study = load(out, "journal", [*base_cfg, f"optimizer.decay={decay}"])
        assert study.study_name == f"quick-adam-{decay}"
        _trained_once(logs, study.study_name, _cells(assert_exactly_once(study, 9)))
        decays.add(decay)
        assert (out / "results.csv").exists()
    assert decays == {"l2", "independent"}
    _wait_idle()


def _job_of(pid: int) -> str | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    found = dict(e.split(b"=", 1) for e in env if b"=" in e)
    job, task = found.get(b"SLURM_ARRAY_JOB_ID"), found.get(b"SLURM_ARRAY_TASK_ID")
    return f"{job.decode()}_{task.decode()}" if job and task else None


@pytest.mark.parametrize("population", [1, 2])
def test_scancel_one_worker_mid_trial_loses_nothing(tmp_path, slurm_cluster, population):
    """A worker cancelled with ``scancel`` mid-trial (mid-population) costs only the cells it had
    in flight. ``scancel`` alone ends the task (submitit ignores the SIGTERM; Slurm's SIGKILL
    follows after KillWait): the test fails if the worker process outlives it."""
    out, logs = tmp_path / "cancel", tmp_path / "trainings"
    pop = f"sweep.population={population}"
    long = ["train.epochs=400", "model.width=256", pop]
    slow = [*SLURM, "storage=journal", *long]
    proc = run_sweep(out, *slow, "launcher.wait=false", timeout=300, env=_logged(logs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    overrides = [*TINY, *SLOW, *long]
    # The victim is a trial with at least KILL_MARGIN_S of training left, judged by the shortest
    # trial completed so far on this machine under this load: scancel's SIGTERM is ignored and
    # the SIGKILL follows KillWait (2 s) later, so a trial closer to its end could finish first.
    deadline, victim, trial_no, victim_pid, shortest = time.time() + 400, None, None, 0, None
    while victim is None and time.time() < deadline:
        trials = load(out, "journal", overrides).get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if done:
            shortest = min((t.datetime_complete - t.datetime_start).total_seconds() for t in done)
            for t in trials:
                if t.state != TrialState.RUNNING or "lrwd:lease" not in t.system_attrs:
                    continue
                elapsed = (datetime.now(t.datetime_start.tzinfo) - t.datetime_start).total_seconds()
                if elapsed < shortest - KILL_MARGIN_S:
                    pid = int(t.system_attrs["lrwd:lease"][0].rsplit(":", 1)[1])
                    victim, trial_no, victim_pid = _job_of(pid), t.number, pid
                    if victim:
                        break
        time.sleep(0.3)
    assert victim, (
        f"no worker caught mid-trial (shortest trial {shortest} s, margin {KILL_MARGIN_S} s)"
    )
    owner = f"{victim_pid}"
    in_flight = {
        t.user_attrs["cell"]
        for t in load(out, "journal", overrides).get_trials(deepcopy=False)
        if t.state == TrialState.RUNNING
        and t.system_attrs.get("lrwd:lease", [""])[0].rsplit(":", 1)[-1] == owner
    }
    subprocess.run(["scancel", victim], check=True)
    deadline = time.time() + 60  # KillWait is 2 s; slurmstepd's SIGKILL ends the worker
    while Path(f"/proc/{victim_pid}").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{victim_pid}").exists(), f"scancel {victim}: its worker is alive"
    _wait_idle()
    study = load(out, "journal", overrides)
    assert_exactly_once(study, 9)
    lost = study.trials[trial_no]
    # reclaimed as stale after the SIGKILL (or handed back, if scancel's SIGTERM won the race)
    assert lost.state == TrialState.FAIL, lost.state
    assert lost.user_attrs.get("fail_reason") in ("stale", "preempted"), lost.user_attrs
    trained = {cell: n for (_, cell), n in wq.read_training_log(logs).items()}
    assert len(trained) == 9
    again = {cell for cell, n in trained.items() if n > 1}
    assert again <= in_flight and max(trained.values()) <= 2, (trained, in_flight)
