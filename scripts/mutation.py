"""Mutation testing of one module with mutmut 3.8.1, reproducible from a checkout.

``python scripts/mutation.py selection`` copies the repository to a temporary folder, writes the
target's ``[tool.mutmut]`` settings into that copy's pyproject.toml, runs
``mutmut run --max-children 1`` and ``mutmut results --all true`` there, and prints the score
(killed / all mutants) and every mutant that was not killed. The checkout itself is not touched:
mutmut writes its ``mutants/`` folder and cache into the copy only. See docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The package folders mutmut copies into mutants/: both, so that every `import harness` or
# `import analysis` inside the run finds the copy there ahead of the editable install.
SOURCE_PATHS = ["harness", "analysis"]

# target -> (module to mutate, tests that target it)
TARGETS: dict[str, tuple[str, list[str]]] = {
    "functional": (
        "harness/optim/functional.py",
        ["tests/test_optim.py", "tests/test_optim_api.py"],
    ),
    "queue": (
        "harness/sweep/queue.py",
        [
            "tests/test_workqueue.py",
            "tests/test_faults.py::test_sqlite_claim_has_one_winner_under_a_race",
            "tests/test_faults.py::test_claim_trial_refuses_running_and_finished_trials",
            "tests/test_faults.py::test_trial_failed_under_a_worker_is_not_trained_by_it",
        ],
    ),
    "selection": (
        "analysis/metrics/selection.py",
        [
            "tests/test_stats_pinned.py",
            "tests/test_stats_known_truth.py",
            "tests/test_analysis_metrics.py",
        ],
    ),
}

# what the copy leaves out: version control, earlier mutmut runs, caches, run outputs
IGNORE = shutil.ignore_patterns(
    ".git", "mutants", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", "outputs", "runs"
)


def mutmut_block(target: str) -> str:
    """The ``[tool.mutmut]`` table for ``target`` (TOML)."""
    module, tests = TARGETS[target]

    def toml_list(xs: list[str]) -> str:
        return "[" + ", ".join(f'"{x}"' for x in xs) + "]"

    return (
        "[tool.mutmut]\n"
        f"source_paths = {toml_list(SOURCE_PATHS)}\n"
        f"only_mutate = {toml_list([module])}\n"
        'also_copy = ["conf"]\n'
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}\n"
        'process_isolation = "forkserver"\n'
    )


def with_block(pyproject: str, block: str) -> str:
    """``pyproject`` with its ``[tool.mutmut]`` table (if any) replaced by ``block``."""
    table = re.compile(r"^\[tool\.mutmut\]\n(?:(?!\[).*\n?)*", re.MULTILINE)
    if table.search(pyproject):
        return table.sub(block + "\n", pyproject, count=1)
    return pyproject.rstrip("\n") + "\n\n" + block


def copy_repo(dest: Path) -> None:
    shutil.copytree(ROOT, dest, ignore=IGNORE, symlinks=True)


def parse_results(text: str) -> dict[str, str]:
    """``mutmut results --all true`` lines (``    name: status``) -> {mutant: status}."""
    out = {}
    for line in text.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name and "__mutmut_" in name:
            out[name] = status
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="targets: "
        + "; ".join(f"{k} -> {m} (tests: {' '.join(t)})" for k, (m, t) in TARGETS.items()),
    )
    ap.add_argument("target", choices=sorted(TARGETS), help="the module to mutate")
    ap.add_argument(
        "--workdir",
        type=Path,
        help="copy the repository here (must not exist) and keep it afterwards, e.g. to "
        "`mutmut show` a survivor; default: a temporary folder, removed at the end",
    )
    ap.add_argument(
        "--show", action="store_true", help="print the diff of every mutant that was not killed"
    )
    args = ap.parse_args(argv)

    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix=f"lrwd-mutation-{args.target}-")
        work = Path(tmp) / "repo"
    else:
        work = args.workdir.resolve()
        if work.exists():
            ap.error(f"--workdir {work} exists; give a new folder")
    try:
        copy_repo(work)
        pyproject = work / "pyproject.toml"
        pyproject.write_text(with_block(pyproject.read_text(), mutmut_block(args.target)))
        env = dict(os.environ)
        # processes the tests start (sweep workers) import the mutated copy too
        env["PYTHONPATH"] = os.pathsep.join(
            [str(work / "mutants"), *filter(None, [env.get("PYTHONPATH")])]
        )
        module, tests = TARGETS[args.target]
        print(f"mutating {module} against {' '.join(tests)} in {work}", flush=True)
        t0 = time.monotonic()
        run = subprocess.run(["mutmut", "run", "--max-children", "1"], cwd=work, env=env)
        wall = time.monotonic() - t0
        if run.returncode != 0:
            print(f"mutmut run exited {run.returncode}: no score (see its output above)")
            return run.returncode
        res = subprocess.run(
            ["mutmut", "results", "--all", "true"],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        statuses = parse_results(res.stdout)
        if not statuses:
            print(res.stdout + res.stderr, file=sys.stderr)
            print(f"no mutant results (mutmut run exited {run.returncode})", file=sys.stderr)
            return 1
        counts = Counter(statuses.values())
        killed, total = counts.get("killed", 0), len(statuses)
        print(f"\n{module}: {total} mutants, " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        print(f"score: {killed}/{total} killed = {100 * killed / total:.1f}% ({wall / 60:.0f} min)")
        others = sorted(k for k, v in statuses.items() if v != "killed")
        for name in others:
            print(f"  {name}: {statuses[name]}")
            if args.show:
                diff = subprocess.run(
                    ["mutmut", "show", name], cwd=work, env=env, capture_output=True, text=True
                )
                print(diff.stdout)
        return 0
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
