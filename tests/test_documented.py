"""The quick commands the docs quote with a number print that number.

Each test reads the command and the number from the doc itself, runs the command through the
real CLI and compares. The long ones (docs/trial.md's table of settings) are checked by
``python scripts/check_documented.py``.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config import compose_config

ROOT = Path(__file__).resolve().parent.parent
TRIAL_DOC = ROOT / "docs" / "trial.md"


def accuracy_tol(accuracy: float, n_test: int) -> float:
    """How far (percentage points) a rerun's test accuracy may be from the documented one.

    A trial is deterministic on one machine and torch build, but other CPUs and BLAS builds round
    differently, and over a trial's ~1,400 steps the rounding can grow into another end point
    (the initialization and the batches stay the same). The documented number is then one draw
    and the rerun another, on the same ``n_test`` test samples. The bound is the analysis's
    "within noise" (docs/analysis.md, ``noise_floor``): 2 standard errors of the difference of
    two binomial accuracies, ``2 * sqrt(2 p (1 - p) / n_test)`` (1.9 points at 95.5% on 1,000
    samples). A documented number off by more than that is wrong on any CPU."""
    p = accuracy / 100
    return 200 * math.sqrt(2 * p * (1 - p) / n_test)


def run_train(tmp_path: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def printed(stdout: str, key: str) -> str:
    match = re.search(rf"^\s+{key}\s+(\S+)$", stdout, re.M)
    assert match, stdout
    return match.group(1)


def test_train_without_a_preset_uses_the_standard_split(tmp_path):
    out = run_train(tmp_path, "train.epochs=1", "train.threads=1", "model.width=32")
    assert out.startswith("preset: none"), out
    # MNIST-1D's 4,000 training samples less the 500 held out: 35 batches of 100
    assert printed(out, "steps") == "35"


def test_train_with_a_preset_says_so(tmp_path):
    out = run_train(tmp_path, "experiment=quick", "train.epochs=1", "train.threads=1")
    assert out.startswith("preset: experiment=quick"), out
    assert printed(out, "steps") == "10"  # quick keeps 1,000 training samples


@pytest.mark.slow
def test_trial_md_command_prints_its_documented_accuracy(tmp_path):
    text = TRIAL_DOC.read_text()
    command = re.search(r"```bash\n(python -m harness\.train [^\n]+)\n```", text).group(1)
    documented = float(re.search(r"\*\*Test accuracy ([\d.]+)% on MNIST-1D", text).group(1))
    block = re.search(r"What it printed:\n\n```\n(.*?)```", text, re.S).group(1)
    args = shlex.split(command)[3:]
    out = run_train(tmp_path, *args)
    accuracy = 100 * float(printed(out, "test_accuracy"))
    preset = [] if any(a.startswith("experiment=") for a in args) else ["~experiment"]
    data = compose_config([*args, *preset]).data  # as harness.train composes it
    n_test = round(int(data.num_samples) * (1 - float(data.train_fraction)))
    tol = accuracy_tol(documented, n_test)
    assert abs(accuracy - documented) <= tol, (accuracy, documented, tol)
    # the printed block in the doc is this command's output: same steps, same accuracy line
    assert printed(out, "steps") == printed(block, "steps")
    assert abs(100 * float(printed(block, "test_accuracy")) - documented) < 0.05
