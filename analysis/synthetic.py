"""Synthetic sweep results with a known structure, in the results.csv schema.

For tests, the notebooks and a look at the figures before a real sweep has finished. Each variant's
error surface over ``x = log lr`` and the decay strength ``u`` is

    err = e0 + a * (x - x*)^2 + gap * sigmoid(-u) + b * softplus(u)^2,   clipped to <= chance

with ``u = log(lr * wd / c)`` for the coupled forms (``l2``, ``loss``, ``decoupled``: the product
sets the decay, so the best wd is ``c / lr`` and the coupling slope is -1) and
``u = log(wd / c)`` for ``independent`` (an axis-aligned basin, slope 0, additive in x and u).
Too little decay costs up to ``gap`` (no regularization), too much climbs to chance (underfit).
A trial diverges (``diverged=True``, errors 1.0) when ``lr > lr_max`` or, for the coupled
forms, when ``lr * wd > 1`` (``w *= 1 - lr*wd`` overshoots); every trial gets Gaussian seed noise.

``python -m analysis.synthetic OUT.csv [--seeds 3] [--lrs 9] [--wds 9]`` writes one.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import RESULTS_COLUMNS

VARIANTS = ("sgd/l2", "sgd/independent", "adam/l2", "adam/independent")
# family: (lr grid lo, hi exponent and base, best log lr, lr_max); Adam's lrs are ~100x smaller
FAMILIES = {
    "sgd": {"lr_lo": 2.0**-9, "lr_hi": 2.0**-1, "lr_best": 2.0**-4.5, "lr_max": 2.0**-1.5},
    "adam": {"lr_lo": 10**-4.5, "lr_hi": 10**-0.5, "lr_best": 10**-2.6, "lr_max": 10**-1.2},
}


def surface(
    optimizer: str, decay: str, lr: np.ndarray, wd: np.ndarray, chance: float = 0.9
) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free ``(error, diverged)`` of one variant at arrays of lr and wd (module docstring)."""
    fam = FAMILIES.get(optimizer, FAMILIES["adam"])
    lr, wd = np.asarray(lr, float), np.asarray(wd, float)
    x = np.log(lr / fam["lr_best"])
    coupled = decay != "independent"
    mid_wd = 10**-3.5
    c = fam["lr_best"] * mid_wd if coupled else mid_wd
    u = np.log(np.maximum(lr * wd if coupled else wd, 1e-300) / c)
    e0 = 0.06 + (0.012 if (optimizer == "adam" and decay in ("l2", "loss")) else 0.0)
    err = (
        e0
        + 0.004 * x**2
        + 0.05 / (1 + np.exp(u))  # too little decay: no regularization
        + 0.012 * np.log1p(np.exp(u - 1.0)) ** 2  # too much decay: underfit
    )
    err = np.minimum(err, chance)
    diverged = lr > fam["lr_max"]
    if coupled:
        diverged |= lr * wd > 1.0
    return np.where(diverged, 1.0, err), diverged


def synthetic_results(
    variants: Sequence[str] = VARIANTS,
    n_lr: int = 9,
    n_wd: int = 9,
    seeds: int = 3,
    noise: float = 0.003,
    experiment: str = "synthetic",
    rng_seed: int = 0,
) -> pd.DataFrame:
    """A results.csv frame: every (variant, lr, wd, seed) cell once, all COMPLETE."""
    rng = np.random.default_rng(rng_seed)
    wds = np.logspace(-5.5, -1.5, n_wd)
    rows = []
    for variant in variants:
        opt, _, decay = variant.partition("/")
        fam = FAMILIES.get(opt, FAMILIES["adam"])
        lrs = np.geomspace(fam["lr_lo"], fam["lr_hi"], n_lr)
        L, W = np.meshgrid(lrs, wds, indexing="ij")
        trial = 0
        for seed in range(seeds):
            err, div = surface(opt, decay, L, W)
            err = np.where(div, 1.0, np.clip(err + rng.normal(0, noise, err.shape), 0.0, 0.9))
            for (i, j), e in np.ndenumerate(err):
                d = bool(div[i, j])
                rows.append(
                    {
                        "study": f"{experiment}-{opt}-{decay}",
                        "experiment": experiment,
                        "optimizer": opt,
                        "decay": decay,
                        "model": "surface",
                        "data": "synthetic",
                        "trial": trial,
                        "lr": float(L[i, j]),
                        "weight_decay": float(W[i, j]),
                        "seed": seed,
                        "state": "COMPLETE",
                        "test_error": float(e),
                        "val_error": 1.0 if d else float(e + rng.normal(0, noise)),
                        "final_val_error": 1.0 if d else float(e + rng.normal(0, noise)),
                        "train_loss": float("nan") if d else float(e / 2),
                        "weight_norm": float("nan") if d else float(10 / (1 + W[i, j] * 1e3)),
                        "diverged": d,
                        "steps": 37 if d else 500,
                        "wall_s": float(rng.uniform(1, 2)),
                        "wandb_run_id": "",
                    }
                )
                trial += 1
    return pd.DataFrame(rows, columns=list(RESULTS_COLUMNS))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.synthetic",
        description="Write a synthetic results.csv with known lr x wd structure "
        "(coupled variants: slope -1; independent: slope 0).",
    )
    ap.add_argument("out", help="path of the results.csv to write")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--lrs", type=int, default=9, help="lr grid points")
    ap.add_argument("--wds", type=int, default=9, help="weight-decay grid points")
    ap.add_argument("--noise", type=float, default=0.003, help="seed noise (error std)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    args = ap.parse_args(argv)
    frame = synthetic_results(
        [v for v in args.variants.split(",") if v], args.lrs, args.wds, args.seeds, args.noise
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False)
    print(f"{len(frame)} trials -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
