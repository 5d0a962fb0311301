"""slurm/sweep_array.sbatch + python -m harness.worker on the one-node test cluster."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_launch import (
    ROOT,
    SLOW2,
    assert_preempted_once_and_done,
    journal_study,
    wait_running,
)


@pytest.mark.slow
def test_sbatch_template_worker_usr1_requeues(slurm_cluster, tmp_path):
    out = tmp_path / "sbatch"
    overrides = [*SLOW2, f"hydra.run.dir={out}"]
    env = slurm_cluster.env | {"PYTHONPATH": str(ROOT)}
    prep = subprocess.run(
        [sys.executable, "-m", "harness.worker", "--prepare", *overrides],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert prep.returncode == 0, prep.stderr
    assert "quick-adam-independent: {'WAITING': 2}" in prep.stdout
    job = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=0",
            "--time=10",
            "--mem=1G",
            "--cpus-per-task=1",
            f"--output={out}/slurm-%A_%a.out",
            f"--export=ALL,LRWD_PYTHON={sys.executable}",
            str(ROOT / "slurm" / "sweep_array.sbatch"),
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert job.returncode == 0, job.stderr
    array_id = job.stdout.strip()
    study = journal_study(out)
    wait_running(study)
    # What Slurm does at --signal=B:USR1@120: signal the batch shell (python, via exec).
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", f"{array_id}_0")
    states = slurm_cluster.wait(array_id, timeout=240)
    assert states == {f"{array_id}_0": "COMPLETED"}, slurm_cluster.logs()
    assert_preempted_once_and_done(study)
    assert "Restarts=1" in slurm_cluster.run("scontrol", "show", "job", array_id)
    log = Path(out, f"slurm-{array_id}_0.out").read_text()
    assert re.search(r"SIGUSR1: handed 1 trial\(s\) back", log), log
    assert "requeued job" in log and "restart 1 on" in log
