"""Per-trial overhead of the sweep driver, per storage: ``python -m harness.bench driver``.

The driver's work for one trial, without the training itself: claim a WAITING cell, record its
config / environment / W&B id, tell the result, heartbeat bookkeeping; plus the one-off cost of
enqueuing the grid and writing ``results.csv``. The training step is replaced by a function that
returns a fixed result at once, so everything measured is overhead. The table shows the mean
per-trial overhead over the first and last 10% of a grid (constant if it does not grow with the
study) and, for contrast, Optuna's GridSampler ask/tell on the same grid. A typical trial time
(a real MNIST-1D trial) is measured in the same run to put the overhead in proportion.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
from omegaconf import OmegaConf

from harness.bench.queue import StandInResult
from harness.config import compose_config
from harness.results import write_results
from harness.storage import open_storage
from harness.sweep.plan import create_study, enqueue_grid, variants
from harness.sweep.worker import run_worker


def _cfg(kind: str, out: Path, n_lr: int, n_wd: int):
    cfg = compose_config(
        [
            f"storage={kind}",
            "tracking=disabled",
            "sweep.variants=[]",
            f"sweep.lr.num={n_lr}",
            f"sweep.weight_decay.num={n_wd}",
            "sweep.population=1",
        ]
    )
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    cfg.output_dir = str(out)
    return cfg


def bench_storage(kind: str, n_lr: int, n_wd: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg(kind, Path(tmp), n_lr, n_wd)
        t0 = time.perf_counter()
        storage = open_storage(cfg, cfg.output_dir)
        variant = variants(cfg)[0]
        study = create_study(cfg, storage, variant)
        enqueue_grid(study, cfg)
        t_enqueue = time.perf_counter() - t0
        stamps: list[float] = []

        def train(cfgs, reports):
            stamps.append(time.perf_counter())
            return [StandInResult() for _ in cfgs]

        t0 = time.perf_counter()
        run_worker(cfg, train=train)
        t_total = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_results([study], Path(tmp) / "results.csv")
        t_results = time.perf_counter() - t0
        n = len(stamps)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        k = max(n // 10, 1)
        return {
            "storage": kind,
            "trials": n,
            "enqueue_s": t_enqueue,
            "per_trial_ms": 1e3 * t_total / n,
            "first10_ms": 1e3 * sum(gaps[:k]) / k,
            "last10_ms": 1e3 * sum(gaps[-k:]) / k,
            "results_s": t_results,
        }


def bench_gridsampler(n_lr: int, n_wd: int) -> dict:
    import numpy as np

    space = {"lr": list(np.geomspace(1e-4, 1e-1, n_lr)), "wd": list(np.geomspace(1e-5, 1e-1, n_wd))}
    study = optuna.create_study(sampler=optuna.samplers.GridSampler(space, seed=0))
    n = n_lr * n_wd
    stamps: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_float("wd", 1e-5, 1e-1, log=True)
        stamps.append(time.perf_counter())
        return 0.5

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    k = max(n // 10, 1)
    return {
        "storage": "memory+GridSampler",
        "trials": n,
        "enqueue_s": 0.0,
        "per_trial_ms": 1e3 * (stamps[-1] - t0) / n,
        "first10_ms": 1e3 * sum(gaps[:k]) / k,
        "last10_ms": 1e3 * sum(gaps[-k:]) / k,
        "results_s": 0.0,
    }


def typical_trial_s() -> float:
    from harness.train import run_trial

    cfg = compose_config(["tracking=disabled"])
    t0 = time.perf_counter()
    run_trial(cfg)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench driver", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--lr", type=int, default=40, help="lr grid size (default 40)")
    ap.add_argument("--wd", type=int, default=25, help="wd grid size (default 25: 1,000 cells)")
    ap.add_argument(
        "--storages", default="memory,sqlite,journal", help="comma list of memory,sqlite,journal"
    )
    ap.add_argument("--no-gridsampler", action="store_true", help="skip the GridSampler contrast")
    ap.add_argument("--no-trial", action="store_true", help="skip timing a real trial")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    rows = [bench_storage(kind, args.lr, args.wd) for kind in args.storages.split(",")]
    if not args.no_gridsampler:
        rows.append(bench_gridsampler(args.lr, args.wd))
    trial_s = None if args.no_trial else typical_trial_s()
    table = Table(title=f"driver overhead per trial, {args.lr}x{args.wd} grid")
    for col in (
        "storage",
        "trials",
        "enqueue s",
        "ms/trial",
        "first 10%",
        "last 10%",
        "results.csv s",
        "overhead / trial",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        share = f"{r['per_trial_ms'] / 1e3 / trial_s:.1%}" if trial_s else "-"
        table.add_row(
            r["storage"],
            str(r["trials"]),
            f"{r['enqueue_s']:.2f}",
            f"{r['per_trial_ms']:.2f}",
            f"{r['first10_ms']:.2f}",
            f"{r['last10_ms']:.2f}",
            f"{r['results_s']:.2f}",
            share,
        )
    console = Console()
    console.print(table)
    if trial_s:
        console.print(f"a default MNIST-1D trial (sequential) takes {trial_s:.2f} s here")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
