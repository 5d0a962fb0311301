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

:func:`landscape` builds grids whose every number is known by construction (basin width, valley
slope including -2, dead rows, the cost of not tuning the decay), for the metric tests;
:func:`grid_trials` turns seed grids of it into trials.
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


def landscape(
    n_lr: int = 6,
    slope: int = -1,
    width: float = 2.5,
    e_best: float = 0.46,
    gain: float = 0.05,
    lr_cost: float = 0.0,
    dead_rows: Sequence[int] = (),
    chance: float = 0.9,
    step: float = 10**0.5,
    margin: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lrs, wds, E)``: a grid with a known valley and basin, noise-free.

    Both axes step by the same factor ``step`` (``lr_i = 1e-3 * step^i``, ``wd_j = 1e-6 *
    step^j``), so the valley ``j*(i) = j0 + slope * i`` (a whole number of cells per row) has
    log-log slope ``slope`` exactly. With ``d = j - j*(i)``::

        E[i, j] = e_best + lr_cost * (i - i_mid)^2 + gain * min(1, d^2 / width^2)

    ``i_mid`` = the middle row (rounded down). Every live row's valley sits at least ``margin``
    (> ``width``) cells from the wd edges, so the smallest-wd column costs exactly ``gain`` on
    the best row (normalized regret ``min(1, d^2 / width^2) + lr_cost (i - i_mid)^2 / gain``), the
    best wd of row i reused at row i + k costs ``gain * min(1, (slope k)^2 / width^2)``
    (``lr_cost = 0``) and ``slope = 0`` is additive. ``dead_rows`` are at ``chance`` in every
    cell (a learning rate at which the network does not train).
    """
    if margin <= width:
        raise ValueError(f"margin {margin} must exceed width {width}")
    j0 = margin - slope * (n_lr - 1) if slope < 0 else margin
    n_wd = j0 + slope * (n_lr - 1) + margin + 1 if slope > 0 else j0 + margin + 1
    lrs = 1e-3 * step ** np.arange(n_lr)
    wds = 1e-6 * step ** np.arange(n_wd)
    i, j = np.meshgrid(np.arange(n_lr), np.arange(n_wd), indexing="ij")
    d = j - (j0 + slope * i)
    E = e_best + lr_cost * (i - (n_lr - 1) // 2) ** 2 + gain * np.minimum(1.0, d**2 / width**2)
    E[list(dead_rows)] = chance
    return lrs, wds, E


def grid_trials(
    lrs: np.ndarray,
    wds: np.ndarray,
    S: np.ndarray,
    variant: str = "adam/l2",
    n_eval: int | None = 2000,
    data: str = "mnist1d",
) -> pd.DataFrame:
    """A tidy-frame-shaped set of trials from seed grids ``S[s, i, j]`` (errors rounded to
    multiples of ``1/n_eval``, as a test set of that size gives them)."""
    opt, _, decay = variant.partition("/")
    S = np.asarray(S, float)
    if n_eval:
        S = np.round(S * n_eval) / n_eval
    s, i, j = np.meshgrid(*(np.arange(n) for n in S.shape), indexing="ij")
    return pd.DataFrame(
        {
            "study": f"landscape-{opt}-{decay}",
            "experiment": "landscape",
            "optimizer": opt,
            "decay": decay,
            "model": "surface",
            "data": data,
            "lr": lrs[i.ravel()],
            "weight_decay": wds[j.ravel()],
            "seed": s.ravel(),
            "state": "COMPLETE",
            "test_error": S.ravel(),
            "val_error": S.ravel(),
            "diverged": False,
            "variant": variant,
        }
    )


def simulate(
    lrs: np.ndarray,
    wds: np.ndarray,
    E: np.ndarray,
    seeds: int = 10,
    train_noise: float = 0.01,
    n_test: int = 2000,
    n_val: int = 1000,
    val: np.ndarray | None = None,
    variant: str = "adam/l2",
    data: str = "mnist1d",
    rng_seed: int = 0,
) -> pd.DataFrame:
    """Trials of a known landscape with a known noise: tidy-frame rows of every (cell, seed).

    ``E[i, j]`` is the cell's true test error (the population error of its training runs on
    average) and ``val`` its true validation error (default ``E``). A trial's model has the
    population error ``E + tau`` with ``tau ~ N(0, train_noise)`` drawn per (cell, seed) and
    shared by its validation and test errors (one trained model). Each cell is scored on one
    test set of ``n_test`` and one validation set of ``n_val`` samples shared by all its seeds:
    the set's sampling error ``Binomial(n, E) / n - E`` is drawn once per cell and added to
    every seed's error, which is then rounded to a multiple of ``1/n``. So a seed-mean over
    ``S`` seeds has variance ``train_noise^2 / S + E (1 - E) / n`` and the difference of two
    cell means twice that."""
    rng = np.random.default_rng(rng_seed)
    E = np.asarray(E, float)
    Vt = E if val is None else np.asarray(val, float)
    tau = rng.normal(0.0, train_noise, (seeds, *E.shape))

    def scored(mu: np.ndarray, n: int) -> np.ndarray:
        p = np.clip(mu, 0.0, 1.0)
        eps = rng.binomial(n, p) / n - p
        return np.clip(np.round((mu[None] + tau + eps[None]) * n) / n, 0.0, 1.0)

    T, V = scored(E, n_test), scored(Vt, n_val)
    opt, _, decay = variant.partition("/")
    s, i, j = np.meshgrid(*(np.arange(n) for n in T.shape), indexing="ij")
    return pd.DataFrame(
        {
            "study": f"simulated-{opt}-{decay}",
            "experiment": "simulated",
            "optimizer": opt,
            "decay": decay,
            "model": "surface",
            "data": data,
            "trial": np.arange(T.size),
            "lr": np.asarray(lrs, float)[i.ravel()],
            "weight_decay": np.asarray(wds, float)[j.ravel()],
            "seed": s.ravel(),
            "state": "COMPLETE",
            "test_error": T.ravel(),
            "val_error": V.ravel(),
            "diverged": False,
            "variant": variant,
        }
    )


def difference_se(E: float, seeds: int, train_noise: float, n_test: int) -> float:
    """The standard error of the difference of two cell means under :func:`simulate`'s noise:
    ``sqrt(2 (train_noise^2 / seeds + E (1 - E) / n_test))``."""
    return float(np.sqrt(2 * (train_noise**2 / seeds + E * (1 - E) / n_test)))


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
