"""Where the default job's wall time goes: ``python -m harness.bench overhead [OVERRIDES...]``.

Runs ``python -m harness.sweep`` (the default job, or the job the overrides name) twice, each as
a fresh process in a fresh temporary output folder: once with ``sweep.population=auto`` and
once with ``sweep.population=1`` (the sequential runner). Each run writes the phase record
(:mod:`harness.phases`, ``LRWD_PHASES``); the table gives each phase's seconds per run, ``other``
(the wall time no phase claims) and the wall time, then the end-to-end ratio
sequential / population. The data set comes from the user's data cache (``data.root``) like any
sweep's; a cold cache puts the generation into the first run's ``data``.

The phases (seconds summed over the sweep's processes; with ``sweep.workers=1``, the default,
one process): imports (interpreter start-up and imports: torch, wandb, pandas, the plotting
stack), config (composing and checking the Hydra config), data, study (creating the studies
and enqueuing the grid), claims (claiming cells and writing their start records), training,
results (each trial's result in the storage, ``results.csv``), report (summary table and
figures), wandb (the W&B runs: start, history, finish, the analysis run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.phases import ENV, PHASES, read

MODES = {"population": "sweep.population=auto", "sequential": "sweep.population=1"}
LABELS = {
    "imports": "imports (start-up)",
    "config": "config",
    "data": "data",
    "study": "study + enqueue",
    "claims": "claims",
    "training": "training",
    "results": "result writes",
    "report": "figures / report",
    "wandb": "W&B runs",
    "other": "other",
    "wall": "wall time",
}


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - not Unix
        return None


def run_once(mode: str, overrides: list[str], keep: Path | None = None, timeout_s: float = 3600):
    """One sweep as a subprocess; ``{"mode", "wall", "phases": {...}, "load_start", ...}``."""
    with tempfile.TemporaryDirectory(prefix=f"lrwd-overhead-{mode}-") as tmp:
        folder = keep / mode if keep is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        record = folder / "phases.jsonl"
        record.unlink(missing_ok=True)
        env = dict(os.environ, **{ENV: str(record)})
        cmd = [
            sys.executable,
            "-m",
            "harness.sweep",
            *overrides,
            MODES[mode],
            f"hydra.run.dir={folder / 'out'}",
        ]
        load0 = _loadavg()
        cpu0 = os.times()
        t0 = time.perf_counter()
        with open(folder / "sweep.log", "w") as log:
            proc = subprocess.run(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s
            )
        wall = time.perf_counter() - t0
        cpu1 = os.times()
        if proc.returncode:
            tail = (folder / "sweep.log").read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n" + "\n".join(tail))
        phases, cpu_phases = read(record), read(record, "cpu")
    cpu = (cpu1.children_user + cpu1.children_system) - (cpu0.children_user + cpu0.children_system)
    named = {k: phases.get(k, 0.0) for k in PHASES}
    named.update({k: v for k, v in phases.items() if k not in named})
    named["other"] = max(wall - sum(phases.values()), 0.0)
    named_cpu = {k: cpu_phases.get(k, 0.0) for k in named}
    named_cpu["other"] = max(cpu - sum(cpu_phases.values()), 0.0)
    result = {
        "mode": mode,
        "command": cmd[1:],
        "wall": wall,
        "cpu": cpu,
        "phases": named,
        "cpu_phases": named_cpu,
        "load_start": load0,
        "load_end": _loadavg(),
    }
    if keep is not None:
        (keep / mode / "result.json").write_text(json.dumps(result, indent=2))
    return result


def bench(overrides: list[str], modes: list[str], keep: Path | None = None) -> dict:
    runs = [run_once(m, overrides, keep) for m in modes]
    out: dict = {"overrides": overrides, "runs": runs}
    by = {r["mode"]: r for r in runs}
    if "population" in by and "sequential" in by:
        out["ratio"] = by["sequential"]["wall"] / by["population"]["wall"]
        out["cpu_ratio"] = by["sequential"]["cpu"] / by["population"]["cpu"]
    return out


def print_table(res: dict) -> None:
    runs = res["runs"]
    keys = [*PHASES, *sorted({k for r in runs for k in r["phases"]} - {*PHASES, "other"})]
    head = f"{'phase':<20}" + "".join(f"{r['mode'] + ' wall':>18}{'CPU':>9}" for r in runs)
    print(head)
    print("-" * len(head))
    for key in [*keys, "other"]:
        cells = "".join(
            f"{r['phases'].get(key, 0.0):>17.2f}s{r['cpu_phases'].get(key, 0.0):>8.2f}s"
            for r in runs
        )
        print(f"{LABELS.get(key, key):<20}{cells}")
    print("-" * len(head))
    print(f"{'total':<20}" + "".join(f"{r['wall']:>17.2f}s{r['cpu']:>8.2f}s" for r in runs))
    print(
        f"{'load avg start/end':<20}"
        + "".join(f"{r['load_start'] or 0:>12.1f} / {r['load_end'] or 0:<11.1f}" for r in runs)
    )
    if "ratio" in res:
        print(
            f"\nsequential / population, end to end: {res['ratio']:.2f}x wall, "
            f"{res['cpu_ratio']:.2f}x CPU"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench overhead",
        description="Where the default job's wall time goes: each phase's seconds with "
        "sweep.population=auto and with sweep.population=1, and the ratio sequential / population.",
        epilog=(
            "Each run is a fresh `python -m harness.sweep` process with LRWD_PHASES set. "
            "Examples: python -m harness.bench overhead; python -m harness.bench overhead "
            "tracking=disabled; python -m harness.bench overhead --only population --json"
        ),
    )
    ap.add_argument(
        "overrides",
        nargs="*",
        help="Hydra overrides for the sweep (default: none, the default job)",
    )
    ap.add_argument(
        "--only",
        choices=tuple(MODES),
        help="run one mode only (default: population, then sequential)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument(
        "--keep",
        type=Path,
        help="keep each run's output folder, phase record, log and result.json under this folder",
    )
    args = ap.parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        ap.error(f"{bad[0]}: not a key=value override")
    modes = [args.only] if args.only else list(MODES)
    res = bench(args.overrides, modes, args.keep)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
