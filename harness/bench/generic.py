"""The generic (``torch.func.vmap``) population path against the hand-written one and the
sequential runner: ``python -m harness.bench generic``.

The same network is trained three ways, on the 1,000 MNIST-1D training samples of the sweeps'
presets, Adam, ``--epochs`` epochs per trial:

- ``seq``: one trial at a time (:func:`harness.train.run_trial`);
- ``hand``: a population through the hand-written batched layers (``model=mlp``);
- ``generic``: a population through :mod:`harness.population_generic`, the path every model
  without hand-written layers takes (the same builder named as a user's target:
  ``model._target_=harness.models.build_mlp``).

Each population runs once as a warm-up, then ``--repeats`` times (median); the sequential
baseline is the median of ``--sequential`` trials timed before and after each size's repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.bench.population import spread
from harness.config import compose_config
from harness.population import train_population
from harness.train import run_trial

MODELS = ("mlp", "mlp_bn")
PATHS = {"hand": [], "generic": ["model._target_=harness.models.build_mlp"]}


def _cfgs(model: str, p: int, epochs: int, threads: int, path: str) -> list:
    bn = ["+model.bn=true"] if model == "mlp_bn" and path == "generic" else []
    base = compose_config(
        [
            f"model={model}",
            "model.width=256",
            "model.depth=2",
            "optimizer=adam",
            "tracking=disabled",
            f"train.epochs={epochs}",
            "train.device=cpu",
            f"train.threads={threads}",
            *PATHS[path],
            *bn,
        ]
    )
    return spread(base, p)


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench generic", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--models", default="mlp", help=f"comma list of {', '.join(MODELS)}")
    ap.add_argument("--sizes", default="8,32", help="comma list of population sizes P")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per trial (10 steps each)")
    ap.add_argument("--repeats", type=int, default=3, help="timed populations per P (median)")
    ap.add_argument("--sequential", type=int, default=3, help="sequential trials per baseline")
    ap.add_argument("--threads", type=int, default=0, help="train.threads (0: all cores)")
    args = ap.parse_args(argv)
    models = args.models.split(",")
    if any(m not in MODELS for m in models):
        ap.error(f"--models: {args.models!r} is not a comma list of {', '.join(MODELS)}")
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        ap.error(f"--sizes: {args.sizes!r} is not a comma list of positive integers (8,32)")
    for name in ("epochs", "repeats", "sequential"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: must be at least 1")
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"generic (vmap) vs hand-written population vs sequential, {args.epochs} epochs of "
        f"MNIST-1D (1,000 training samples) per trial, Adam, cpu, "
        f"threads={args.threads or torch.get_num_threads()}"
    )
    for col in ("model", "path", "P", "s / population", "trials / hour", "vs seq", "vs hand"):
        table.add_column(col, justify="right")
    for model in models:
        seq = _cfgs(model, args.sequential, args.epochs, args.threads, "hand")
        run_trial(seq[0])  # warm-up: data generation and caches
        seq_times: list[float] = []
        rows = []
        for p in sizes:
            seq_times += [_median_time(lambda c=c: run_trial(c), 1) for c in seq]
            per_path = {}
            for path in PATHS:
                cfgs = _cfgs(model, p, args.epochs, args.threads, path)
                train_population(cfgs, [None] * p)  # warm-up
                per_path[path] = _median_time(
                    lambda cfgs=cfgs: train_population(cfgs, [None] * len(cfgs)), args.repeats
                )
            seq_times += [_median_time(lambda c=c: run_trial(c), 1) for c in seq]
            rows.append((p, per_path))
        seq_s = statistics.median(seq_times)
        table.add_row(model, "seq", "1", f"{seq_s:.3f}", f"{3600 / seq_s:,.0f}", "1.0x", "-")
        for p, per_path in rows:
            for path, dt in per_path.items():
                table.add_row(
                    model,
                    path,
                    str(p),
                    f"{dt:.2f}",
                    f"{3600 * p / dt:,.0f}",
                    f"{seq_s * p / dt:.1f}x",
                    f"{per_path['hand'] / dt:.2f}x",
                )
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
