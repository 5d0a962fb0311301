"""W&B run start-up cost: ``python -m harness.bench tracking [--runs N] [--rows R] [--mode M]``.

Times ``import wandb``, the first run (it starts W&B's service process) and then, per run, the
start, each history row and the finish of ``runs`` further runs, through
:class:`harness.tracking.Tracker` as a sweep's worker uses it. Figures: docs/tracking.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from harness.tracking import Tracker, run_name


def bench(runs: int = 20, rows: int = 20, mode: str = "offline", out: str | Path = "") -> dict:
    """Time ``import wandb``, the first run, and start/log/finish of the next ``runs`` runs."""
    tmp = tempfile.TemporaryDirectory(prefix="lrwd-track-bench-")
    out = Path(out or tmp.name)
    cfg = SimpleNamespace(mode=mode, project="lrwd-bench", entity="", tags=[], dir=str(out))
    t0 = time.perf_counter()
    if mode != "disabled":
        import wandb  # noqa: F401

    t_import = time.perf_counter() - t0
    tracker = Tracker(cfg, out, "bench")
    config = {"optimizer": {"name": "adam", "lr": 1e-3}, "trial": 0}

    def one(i: int) -> tuple[float, float, float]:
        a = time.perf_counter()
        run = tracker.start(run_name("adam/independent", 1e-3, 1e-4, i), "adam/independent", config)
        b = time.perf_counter()
        for step in range(rows):
            run.log(step, {"train_loss": 1.0 / (step + 1), "val_error": 0.5, "lr_t": 1e-3})
        c = time.perf_counter()
        run.finish({"test_error": 0.5}, "finished")
        return b - a, c - b, time.perf_counter() - c

    first = sum(one(-1))
    cpu0 = time.process_time()
    times = [one(i) for i in range(runs)]
    cpu = (time.process_time() - cpu0) / runs
    res = {
        "mode": mode,
        "runs": runs,
        "rows": rows,
        "import_s": t_import,
        "first_run_s": first,
        "start_s": sum(t[0] for t in times) / runs,
        "log_row_s": sum(t[1] for t in times) / (runs * max(rows, 1)),
        "finish_s": sum(t[2] for t in times) / runs,
    }
    res["per_run_s"] = res["start_s"] + res["finish_s"] + res["log_row_s"] * rows
    res["cpu_per_run_s"] = cpu  # this process's CPU (W&B's service process not counted)
    tmp.cleanup()
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench tracking",
        description="Time W&B run start, history rows and finish through lrwd's tracker "
        "(offline by default; nothing leaves the machine).",
    )
    ap.add_argument("--runs", type=int, default=20, help="runs timed after 1 warm-up run (20)")
    ap.add_argument("--rows", type=int, default=20, help="history rows logged per run (20)")
    ap.add_argument("--mode", default="offline", choices=("offline", "disabled"))
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs: {args.runs}; pass 1 or more")
    res = bench(args.runs, args.rows, args.mode)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"W&B {args.mode}: {args.runs} runs x {args.rows} history rows (after 1 warm-up run)")
    print(f"{'what':<28}{'seconds':>12}")
    for key, label in (
        ("import_s", "import wandb (once)"),
        ("first_run_s", "first run (service start)"),
        ("start_s", "start, per run"),
        ("log_row_s", "log, per row"),
        ("finish_s", "finish, per run"),
        ("per_run_s", "total, per run"),
        ("cpu_per_run_s", "CPU of this process, per run"),
    ):
        print(f"{label:<28}{res[key]:>12.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
