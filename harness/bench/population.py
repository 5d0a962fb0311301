"""Population training vs the sequential trial runner: ``python -m harness.bench population``.

For each model (the model group's own sizes: ``cnn`` 32 wide, ``mlp`` 256 x 2, on the 1,000
training samples of the sweeps' presets) and population size P: train P grid cells (distinct lr,
wd) as one population, and a few cells with the sequential runner, in the same run. Prints trials
per hour, the speedup over sequential and the peak memory (CPU: max RSS growth; CUDA: peak
allocated).

Timing: each population runs once as a warm-up, then ``--repeats`` times (median). Each row's
speedup is against sequential trials timed right around it (``--sequential`` trials before the
repeats and as many after, median; shown in brackets), so a shared machine whose speed drifts
during the run affects both sides of a ratio alike; the ``seq`` row is the median of all of them.

``--variants`` picks how the population runs: ``eager`` and/or ``compiled`` (``train.compile``:
torch.compile of the loss and the optimizer update). For a compiled variant the warm-up run's
extra time over the median is reported as compile time (``compile s``; it is paid once per
process and shape, then cached); ``speedup @E ep`` charges one compile to every population of
an ``--amortize-epochs`` (default 80) trial, the pessimistic case of one population per process.
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import time

import torch

from harness import registry
from harness.config import compose_config
from harness.loop import resolve_device
from harness.population import train_population
from harness.sweep.plan import model_group
from harness.train import run_trial


def model_overrides(model: str) -> list[str]:
    """The model group's own sizes (``conf/model/<model>.yaml``: the CNN 32 channels wide, the
    MLP 256 x 2). The default experiment (``quick``) would set width 128 for any model."""
    return [f"model.{k}={v}" for k, v in model_group(model).items() if k != "name"]


def _cfgs(
    model: str, p: int, epochs: int, device: str, compiled: bool = False, threads: int = 0
) -> list:
    base = compose_config(
        [
            f"model={model}",
            *model_overrides(model),
            "optimizer=adam",
            "tracking=disabled",
            f"train.epochs={epochs}",
            f"train.device={device}",
            f"train.threads={threads}",
            *(["train.compile=true"] if compiled else []),
        ]
    )
    return spread(base, p)


def spread(base, p: int) -> list:
    """``p`` copies of the config ``base`` on an 8 x 8 log grid (lr 1e-4..1e-1, wd 1e-5..1e-1,
    member ``i`` at row ``i // 8 % 8``, column ``i % 8``): a population's members."""
    out = []
    for i in range(p):
        c = copy.deepcopy(base)
        c.optimizer.lr = 1e-4 * (1e3 ** ((i % 8) / 7))
        c.optimizer.weight_decay = 1e-5 * (1e4 ** ((i // 8 % 8) / 7))
        out.append(c)
    return out


def _time_sequential(cfgs: list) -> list[float]:
    times = []
    for c in cfgs:
        t0 = time.perf_counter()
        run_trial(c)
        times.append(time.perf_counter() - t0)
    return times


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


BENCH_DATA = "mnist1d"  # generated here, no download
# the registry's models that fit it and train in populations
BENCH_MODELS = tuple(m for m in registry.models_for(BENCH_DATA) if registry.model(m).population)
VARIANTS = ("eager", "compiled")


def _check_args(
    ap: argparse.ArgumentParser, args: argparse.Namespace
) -> tuple[list[str], list[int], list[str]]:
    """The comma lists, or one line naming the option and what it takes (exit 2)."""
    models = args.models.split(",")
    bad = [m for m in models if m not in BENCH_MODELS]
    if bad:
        ap.error(f"--models: {','.join(bad)} is not one of {', '.join(BENCH_MODELS)}")
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        ap.error(f"--sizes: {args.sizes!r} is not a comma list of positive integers (1,8,32)")
    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: {','.join(bad)} is not one of {', '.join(VARIANTS)}")
    for name in ("epochs", "repeats", "sequential"):
        if getattr(args, name) < 1:
            ap.error(f"--{name}: must be at least 1")
    return models, sizes, variants


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m harness.bench population", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument(
        "--models",
        default="cnn,mlp",
        help=f"comma list of MNIST-1D model groups ({', '.join(BENCH_MODELS)}), at their own sizes",
    )
    ap.add_argument("--sizes", default="1,8,32,64,128", help="comma list of population sizes P")
    ap.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs per trial (1,000 training samples, batch 100: 10 steps an epoch)",
    )
    ap.add_argument(
        "--sequential",
        type=int,
        default=4,
        help="sequential trials timed before each population size's repeats and again after "
        "(median: that row's baseline)",
    )
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument(
        "--variants",
        default="eager,compiled",
        help="comma list of eager, compiled",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed populations per P after a warm-up one (median)",
    )
    ap.add_argument(
        "--amortize-epochs",
        type=int,
        default=80,
        help="trial length for the column that charges one compile to each population",
    )
    ap.add_argument("--threads", type=int, default=0, help="train.threads (0: all cores)")
    args = ap.parse_args(argv)
    models, sizes, variants = _check_args(ap, args)
    from rich.console import Console
    from rich.table import Table

    device = resolve_device(args.device)
    table = Table(
        title=f"population training, {args.epochs} epochs of MNIST-1D (1,000 training samples, "
        f"as experiment=quick and fig2_mnist1d) per trial, {device}, "
        f"threads={args.threads or torch.get_num_threads()}"
    )
    scale = args.amortize_epochs / args.epochs
    for col in (
        "model",
        "variant",
        "P",
        "s / population",
        "trials / hour",
        "speedup vs sequential (its s / trial)",
        "compile s",
        f"speedup @{args.amortize_epochs} ep",
        "peak MB",
    ):
        table.add_column(col, justify="right")
    for model in models:
        seq = _cfgs(model, args.sequential, args.epochs, str(device), threads=args.threads)
        run_trial(seq[0])  # warm-up: data generation and caches
        size = model_group(model)
        depth = f"x{size['depth']}" if model.startswith("mlp") else ""  # only the MLP has depth
        label = f"{model} {size['width']}{depth}"
        rows, all_seq = [], []
        for variant in variants:
            compiled = variant == "compiled"
            for p in sizes:
                cfgs = _cfgs(model, p, args.epochs, str(device), compiled, args.threads)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                rss0 = _rss_mb()
                t0 = time.perf_counter()
                train_population(cfgs, [None] * p)  # warm-up (compiled: the compile)
                cold = time.perf_counter() - t0
                times, seq_times = [], _time_sequential(seq)
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    train_population(cfgs, [None] * p)
                    times.append(time.perf_counter() - t0)
                seq_times += _time_sequential(seq)
                dt = statistics.median(times)
                peak = (
                    torch.cuda.max_memory_allocated() / 2**20
                    if device.type == "cuda"
                    else _rss_mb() - rss0
                )
                seq_s = statistics.median(seq_times)
                all_seq += seq_times
                rows.append(
                    (variant, p, dt, max(cold - dt, 0.0) if compiled else None, peak, seq_s)
                )
        seq_all = statistics.median(all_seq)
        table.add_row(
            label, "seq", "1", f"{seq_all:.3f}", f"{3600 / seq_all:,.0f}", "1.0x", "-", "1.0x", "-"
        )
        for variant, p, dt, compile_s, peak, seq_s in rows:
            per_trial = dt / p
            amortized = ((compile_s or 0.0) + dt * scale) / p
            table.add_row(
                label,
                variant,
                str(p),
                f"{dt:.2f}",
                f"{3600 / per_trial:,.0f}",
                f"{seq_s / per_trial:.1f}x ({seq_s:.3f})",
                f"{compile_s:.1f}" if compile_s is not None else "-",
                f"{seq_s * scale / amortized:.1f}x",
                f"{peak:.0f}",
            )
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
