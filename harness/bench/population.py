"""Population training vs the sequential trial runner: ``python -m harness.bench population``.

For each model and population size P: train P grid cells (distinct lr, wd) as one population,
and (once per model) a few cells with the sequential runner, in the same run. Prints trials per
hour, the speedup over sequential and the peak memory (CPU: max RSS growth; CUDA: peak
allocated).
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

import torch

from harness.config import compose_config
from harness.population import train_population
from harness.train import resolve_device, run_trial


def _cfgs(model: str, p: int, epochs: int, device: str) -> list:
    base = compose_config(
        [
            f"model={model}",
            "optimizer=adam",
            "tracking=disabled",
            f"train.epochs={epochs}",
            f"train.device={device}",
        ]
    )
    out = []
    for i in range(p):
        c = copy.deepcopy(base)
        c.optimizer.lr = 1e-4 * (1e3 ** ((i % 8) / 7))
        c.optimizer.weight_decay = 1e-5 * (1e4 ** ((i // 8 % 8) / 7))
        out.append(c)
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench population", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--models", default="cnn,mlp")
    ap.add_argument("--sizes", default="1,8,32,64,128")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--sequential", type=int, default=4, help="sequential trials timed per model")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    device = resolve_device(args.device)
    table = Table(
        title=f"population training, {args.epochs} epochs of MNIST-1D per trial, {device}"
    )
    for col in (
        "model",
        "P",
        "s / population",
        "trials / hour",
        "speedup vs sequential",
        "peak MB",
    ):
        table.add_column(col, justify="right")
    for model in args.models.split(","):
        seq = _cfgs(model, args.sequential, args.epochs, str(device))
        run_trial(seq[0])  # warm-up: data generation and caches
        t0 = time.perf_counter()
        for c in seq:
            run_trial(c)
        seq_s = (time.perf_counter() - t0) / len(seq)
        table.add_row(model, "seq", f"{seq_s:.2f}", f"{3600 / seq_s:,.0f}", "1.0x", "-")
        for p in [int(x) for x in args.sizes.split(",")]:
            cfgs = _cfgs(model, p, args.epochs, str(device))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            rss0 = _rss_mb()
            t0 = time.perf_counter()
            train_population(cfgs, [None] * p)
            dt = time.perf_counter() - t0
            peak = (
                torch.cuda.max_memory_allocated() / 2**20
                if device.type == "cuda"
                else _rss_mb() - rss0
            )
            per_trial = dt / p
            table.add_row(
                model,
                str(p),
                f"{dt:.2f}",
                f"{3600 / per_trial:,.0f}",
                f"{seq_s / per_trial:.1f}x",
                f"{peak:.0f}",
            )
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
