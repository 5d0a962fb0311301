"""Run the documented one-trial commands and compare their test accuracy with the docs.

``python scripts/check_documented.py [--only 1,5] [--tol 0.5]`` reads docs/trial.md: the command
above "What it printed" with its bold "Test accuracy N%", and every row of the "Settings tried"
table (overrides and test accuracy). It runs each with ``python -m harness.train`` from a
temporary folder, prints a table of documented against measured accuracy and exits 1 when one
differs by more than ``--tol`` percentage points (default 0.5: a trial is deterministic on one
machine and torch build; other CPUs and BLAS builds round differently). A run takes seconds to
a minute on a 2-core CPU; the whole check a few minutes. tests/test_documented.py checks the
first command in CI.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIAL_DOC = ROOT / "docs" / "trial.md"


def documented(doc: Path = TRIAL_DOC) -> list[tuple[str, list[str], float]]:
    """``(label, harness.train arguments, documented test accuracy in %)`` from the doc."""
    text = doc.read_text()
    rows: list[tuple[str, list[str], float]] = []
    command = re.search(r"```bash\n(python -m harness\.train [^\n]+)\n```", text)
    accuracy = re.search(r"\*\*Test accuracy ([\d.]+)% on MNIST-1D", text)
    if command and accuracy:
        rows.append(("doc", shlex.split(command.group(1))[3:], float(accuracy.group(1))))
    header = re.search(r"overrides \(with `python -m harness\.train ([^`]+)`\)", text)
    base = shlex.split(header.group(1)) if header else []
    for match in re.finditer(r"^\| (\d+) \| `([^`]+)`[^|]*\| \**([\d.]+)%", text, re.M):
        number, overrides, acc = match.groups()
        rows.append((number, [*base, *shlex.split(overrides)], float(acc)))
    return rows


def measure(args: list[str], cwd: str) -> tuple[float, float]:
    """(test accuracy in %, seconds) of ``python -m harness.train args``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"harness.train {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    match = re.search(r"^\s+test_accuracy\s+(\S+)$", proc.stdout, re.M)
    if not match:
        raise RuntimeError(f"no test_accuracy in the output of harness.train {' '.join(args)}")
    return 100 * float(match.group(1)), seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated row labels (doc,1,2,...)")
    ap.add_argument("--tol", type=float, default=0.5, help="percentage points (default 0.5)")
    args = ap.parse_args(argv)
    rows = documented()
    if args.only:
        keep = set(args.only.split(","))
        rows = [r for r in rows if r[0] in keep]
    if not rows:
        print("error: no documented commands found in docs/trial.md", file=sys.stderr)
        return 2
    bad = 0
    print("| row | command | documented | measured | process s | ok |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as cwd:
        for label, cmd, want in rows:
            got, seconds = measure(cmd, cwd)
            ok = abs(got - want) <= args.tol
            bad += not ok
            print(
                f"| {label} | `{' '.join(cmd)}` | {want:.2f}% | {got:.2f}% | {seconds:.1f} | "
                f"{'yes' if ok else 'NO'} |",
                flush=True,
            )
    if bad:
        print(f"{bad} of {len(rows)} documented accuracies are off by more than {args.tol} points")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
