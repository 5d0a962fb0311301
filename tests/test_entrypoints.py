"""Every entry point reports a bad command line in one line on stderr, exit code 2, nothing written.

Each case runs the real CLI in a subprocess from an empty folder and checks that stderr is one
``error: ...`` line naming the key, that the exit code is 2 and that the folder stays empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TINY = [
    "sweep.variants=[]",
    "optimizer=adam",
    "sweep.lr.num=2",
    "sweep.weight_decay.num=2",
    "sweep.population=1",
    "model.width=16",
    "data.num_samples=600",
    "data.val_size=100",
    "train.epochs=1",
    "train.threads=1",
    "tracking=disabled",
]


def run(cwd: Path, module: str, *args: str, path: str | None = None, timeout: float = 120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("HYDRA_FULL_ERROR", None)
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line(proc, *words: str, code: int = 2) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, line
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    return line


CASES = [
    # (module, args, words the line must contain)
    ("harness.train", ["optimizer.lrr=1"], ["optimizer.lrr", "optimizer.lr=1"]),
    ("harness.worker", ["optimizer.lrr=1"], ["optimizer.lrr", "optimizer.lr=1"]),
    ("harness.train", ["--cfg", "job"], ["--cfg", "python -m harness.sweep"]),
    ("harness.train", ["optimizer=nope"], ["optimizer", "'nope'", "adamw"]),
    ("harness.train", ["optimizer.lr=abc"], ["optimizer.lr", "float"]),
    ("harness.train", ["train.epochs=1.5"], ["train.epochs", "an int"]),
    ("harness.train", ["optimizer.lr=1e-3,1e-2"], ["optimizer.lr", "--multirun"]),
    ("harness.train", ["optimizer.name=adamw"], ["optimizer.name", "optimizer=adamw"]),
    ("harness.sweep", ["optimizer.decay=decopled", "--cfg", "job"], ["optimizer.decay=decoupled"]),
    ("harness.sweep", ["sweep.variants=[adamw/l2]"], ["sweep.variants", "[adam/l2]"]),
    ("harness.sweep", ["sweep.variants=[sgdw]"], ["sweep.variants", "[sgd/decoupled]"]),
    ("harness.sweep", ["sweep.lr.mn=3"], ["sweep.lr.mn", "sweep.lr.min=3"]),
    ("harness.sweep", ["experiment=nope"], ["experiment", "quick"]),
    ("harness.sweep", ["--frobnicate"], ["--frobnicate"]),
    ("harness.sweep", ["-m", "optimizer.decay=l2,decopled"], ["optimizer.decay=decoupled"]),
    ("harness.sweep", ["-m", "--cfg", "job"], ["--cfg", "--multirun"]),
    ("harness.worker", ["--prepare", "storage=nope"], ["storage", "journal"]),
    ("harness.bench", ["foo"], ["foo", "optim", "population", "driver"]),
    ("analysis.figures", ["missing-folder", "--out", "figs"], ["missing-folder"]),
]


@pytest.mark.parametrize(("module", "args", "words"), CASES, ids=[" ".join(c[1]) for c in CASES])
def test_one_line_error(tmp_path, module, args, words):
    proc = run(tmp_path, module, *args)
    assert_one_line(proc, *words)
    assert not list(tmp_path.iterdir()), "a failed command wrote files"


def test_a_valid_cfg_job_prints_the_config(tmp_path):
    proc = run(tmp_path, "harness.sweep", "optimizer=sgdw", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    assert "decay: decoupled" in proc.stdout and "name: sgd" in proc.stdout
    assert not list(tmp_path.iterdir())


def test_full_error_still_gives_hydras_traceback(tmp_path):
    env_proc = subprocess.run(
        [sys.executable, "-m", "harness.train", "optimizer.lrr=1"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert env_proc.returncode == 2
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", "optimizer=nope", "--cfg", "job"],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(ROOT), HYDRA_FULL_ERROR="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the pre-check is one line either way; HYDRA_FULL_ERROR only changes Hydra's own reports
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------------------------
# Slurm failures, injected with failing client commands on PATH


def _fake_slurm(folder: Path, *, sinfo_rc: int, sbatch_rc: int) -> str:
    folder.mkdir()
    scripts = {
        "sinfo": (sinfo_rc, "sinfo: error: Unable to contact slurm controller (connect failure)"),
        "sbatch": (sbatch_rc, "sbatch: error: Batch job submission failed: Invalid partition"),
        "srun": (0, ""),
        "squeue": (sinfo_rc, "squeue: error: Unable to contact slurm controller"),
    }
    for name, (rc, message) in scripts.items():
        script = folder / name
        script.write_text(f"#!/bin/sh\necho '{message}' >&2\nexit {rc}\n")
        script.chmod(0o755)
    return str(folder)


def test_unreachable_slurm_controller_is_one_line_before_any_cell(tmp_path):
    fake = _fake_slurm(tmp_path / "bin", sinfo_rc=1, sbatch_rc=1)
    work = tmp_path / "work"
    work.mkdir()
    proc = run(work, "harness.sweep", *TINY, "storage=journal", "launcher=slurm", path=fake)
    line = assert_one_line(proc, "launcher.name", "Unable to contact", "launcher=local")
    assert "sinfo" in line
    assert not list(work.iterdir()), "nothing may be enqueued or written"


def test_failing_sbatch_is_one_line(tmp_path):
    fake = _fake_slurm(tmp_path / "bin", sinfo_rc=0, sbatch_rc=1)
    work = tmp_path / "work"
    work.mkdir()
    proc = run(work, "harness.sweep", *TINY, "storage=journal", "launcher=slurm", path=fake)
    assert_one_line(proc, "sbatch failed", "Invalid partition", code=1)
    # the cells stay queued for a rerun
    assert list(work.rglob("study.journal"))


def test_no_slurm_client_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), PATH=str(empty))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", *TINY, "storage=journal", "launcher=slurm"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line(proc, "launcher.name", "no Slurm client", "launcher=local")
    assert not list(work.iterdir())
