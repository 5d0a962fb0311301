"""One study, three Slurm workers, on a real one-node Slurm cluster."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from tests.test_sweep import ROOT, TINY, _owners, assert_exactly_once, load, run_sweep

pytestmark = pytest.mark.slurm
# trials of ~1 s, so that the three workers really share the grid
SLOW = ["train.epochs=4", "data.num_samples=3000"]
SLURM = [*TINY, *SLOW, "launcher=slurm", "sweep.workers=3", "sweep.heartbeat_s=2"]


def _squeue(ids: str = "") -> list[str]:
    cmd = ["squeue", "-h", "-o", "%i"] + (["-j", ids] if ids else [])
    return subprocess.run(cmd, capture_output=True, text=True).stdout.split()


def _wait_idle(timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while _squeue() and time.time() < deadline:
        time.sleep(1)
    assert not _squeue(), "Slurm jobs still running"


def test_three_slurm_workers_journal(tmp_path, slurm_cluster):
    out = tmp_path / "j"
    proc = run_sweep(out, *SLURM, "storage=journal", "launcher.wait=true", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted" in proc.stdout and "3 tasks" in proc.stdout
    complete = assert_exactly_once(load(out, "journal", [*TINY, *SLOW]), 9)
    assert len(_owners(complete)) >= 2
    assert (out / "results.csv").exists()


def test_three_slurm_workers_postgres(tmp_path, slurm_cluster, postgres_url):
    out = tmp_path / "pg"
    args = ["storage=url", f"storage.url={postgres_url}", "sweep.study_name=slurmpg"]
    proc = run_sweep(out, *SLURM, *args, "launcher.wait=true", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(out, "url", [*TINY, *SLOW, "sweep.study_name=slurmpg"], url=postgres_url)
    assert len(_owners(assert_exactly_once(study, 9))) >= 2


def test_multirun_across_variants_on_slurm(tmp_path, slurm_cluster):
    """`-m optimizer.decay=l2,independent launcher=slurm`: one array (and study) per variant."""
    base = [o for o in SLURM if not o.startswith(("optimizer.decay=", "sweep.workers="))]
    sweep_dir = tmp_path / "mr"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", "-m", f"hydra.sweep.dir={sweep_dir}", *base,
         "sweep.workers=2", "storage=journal", "launcher.wait=true",
         "optimizer.decay=l2,independent"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
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
        assert_exactly_once(study, 9)
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
    """A worker killed mid-trial (mid-population) costs only the cells it had in flight."""
    from harness.sweep import queue as wq

    out, logs = tmp_path / "cancel", tmp_path / "trainings"
    # ~4 s trials: long enough to be caught (and killed) mid-trial
    pop = f"sweep.population={population}"
    slow = [*SLURM, "storage=journal", "train.epochs=60", "model.width=256", pop]
    env = {**os.environ, wq.TRAINING_LOG_ENV: str(logs)}  # sbatch exports it to the tasks
    proc = run_sweep(out, *slow, "launcher.wait=false", timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    overrides = [*TINY, *SLOW, "train.epochs=60", "model.width=256", pop]
    deadline, victim, trial_no, victim_pid = time.time() + 240, None, None, 0
    while victim is None and time.time() < deadline:
        trials = load(out, "journal", overrides).get_trials(deepcopy=False)
        if any(t.state == TrialState.COMPLETE for t in trials):
            for t in trials:
                # a trial that started under 1.5 s ago has ~2 s of training left: killed mid-trial
                # for sure, not as it finishes (which made this test flaky under load)
                fresh = t.datetime_start is not None and (
                    datetime.now(t.datetime_start.tzinfo) - t.datetime_start
                ) < timedelta(seconds=1.5)
                if t.state == TrialState.RUNNING and fresh and "lrwd:lease" in t.system_attrs:
                    pid = int(t.system_attrs["lrwd:lease"][0].rsplit(":", 1)[1])
                    victim, trial_no, victim_pid = _job_of(pid), t.number, pid
                    if victim:
                        break
        time.sleep(0.3)
    assert victim, "no worker caught mid-trial"
    owner = f"{victim_pid}"
    in_flight = {
        t.user_attrs["cell"]
        for t in load(out, "journal", overrides).get_trials(deepcopy=False)
        if t.state == TrialState.RUNNING
        and t.system_attrs.get("lrwd:lease", [""])[0].rsplit(":", 1)[-1] == owner
    }
    subprocess.run(["scancel", victim], check=True)
    # On a real cluster scancel's SIGTERM + SIGKILL (after KillWait) ends the task. In this
    # sandbox (proctrack/linuxproc, no cgroups) slurmd marks the task done but can miss the
    # step's python process, so the test delivers the SIGKILL itself, at once, mid-trial.
    try:
        os.kill(victim_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
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
