"""Numbers for "easier to tune", computed on an lr x wd grid ``E[i, j]`` (lr i, weight decay j).

- ``coupling_slope``: least-squares slope of ``log(best wd)`` against ``log(lr)``, where
  ``best wd(lr_i) = wd[argmin_j E[i, j]]``, over the lr rows whose best wd is interior (not on
  the grid's edge) when at least two are, else over all rows whose minimum is defined (a row that
  is all diverged or all equal has none). About -1: the best wd moves like 1/lr (coupled);
  about 0: decoupled. Zero-wd columns are left out of the fit. With seeds, a bootstrap over seeds
  (resampling seeds with replacement, B = 200) gives a 95% interval ``coupling_slope_lo/hi``.
- ``near_optimal_fraction``: share of cells with ``E <= best * (1 + tol)`` (tol 10% relative).
- ``separability``: R^2 of the additive fit ``log E[i, j] ~ a_i + b_j`` (two-way main effects):
  1 means lr and wd can be tuned one at a time.
- ``random_search_regret(k)``: exact expected best error of k cells drawn without replacement
  minus the best: ``E[min] = sum_i v_(i) C(N-i, k-1) / C(N, k)`` over the sorted values
  ``v_(1) <= ... <= v_(N)``; decreasing in k and 0 at ``k = N``.
- ``best_error``, ``best_lr``, ``best_weight_decay``.
"""

from __future__ import annotations

from math import comb

import numpy as np
import pandas as pd

from analysis.load import grid


def best_wd_per_lr(
    lrs: np.ndarray, wds: np.ndarray, E: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lr, best wd, interior?) for rows with a defined minimum (positive wds only)."""
    keep = wds > 0
    wds, E = wds[keep], E[:, keep]
    rows_lr, rows_wd, interior = [], [], []
    for i, lr in enumerate(lrs):
        row = E[i]
        if np.all(np.isnan(row)) or np.nanmax(row) - np.nanmin(row) <= 0:
            continue
        j = int(np.nanargmin(row))
        rows_lr.append(lr)
        rows_wd.append(wds[j])
        interior.append(0 < j < len(wds) - 1)
    return np.array(rows_lr), np.array(rows_wd), np.array(interior, dtype=bool)


def coupling_slope(lrs: np.ndarray, wds: np.ndarray, E: np.ndarray) -> float:
    x, y, interior = best_wd_per_lr(lrs, wds, E)
    if interior.sum() >= 2:
        x, y = x[interior], y[interior]
    if len(x) < 2 or np.ptp(np.log(x)) == 0:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def near_optimal_fraction(E: np.ndarray, tol: float = 0.10) -> float:
    vals = E[~np.isnan(E)]
    if vals.size == 0:
        return float("nan")
    return float(np.mean(vals <= vals.min() * (1 + tol)))


def separability(E: np.ndarray, log: bool = True) -> float:
    """R^2 of the additive model a_i + b_j on (log) errors; needs a complete grid."""
    if np.isnan(E).any() or E.shape[0] < 2 or E.shape[1] < 2:
        return float("nan")
    Y = np.log(np.clip(E, 1e-12, None)) if log else E
    fit = Y.mean(1, keepdims=True) + Y.mean(0, keepdims=True) - Y.mean()
    ss_tot = ((Y - Y.mean()) ** 2).sum()
    if ss_tot == 0:
        return 1.0
    return float(1 - ((Y - fit) ** 2).sum() / ss_tot)


def random_search_regret(E: np.ndarray) -> np.ndarray:
    """Regret for k = 1..N (exact, without replacement)."""
    v = np.sort(E[~np.isnan(E)])
    n = v.size
    out = np.empty(n)
    for k in range(1, n + 1):
        total = comb(n, k)
        weights = np.array([comb(n - i, k - 1) for i in range(1, n + 1)], dtype=float) / total
        out[k - 1] = float((weights * v).sum() - v[0])
    return np.maximum(out, 0.0)


def _bootstrap_slope(
    frame: pd.DataFrame, variant: str, metric: str, reps: int, rng
) -> tuple[float, float]:
    sub = frame[frame["variant"] == variant]
    seeds = np.array(sorted(sub["seed"].unique()))
    if seeds.size < 2:
        return float("nan"), float("nan")
    by_seed = {
        s: sub[sub["seed"] == s].pivot_table(index="lr", columns="weight_decay", values=metric)
        for s in seeds
    }
    ref = next(iter(by_seed.values()))
    slopes = []
    for _ in range(reps):
        pick = rng.choice(seeds, size=seeds.size, replace=True)
        mean = sum(by_seed[s].reindex_like(ref) for s in pick) / len(pick)
        slopes.append(
            coupling_slope(
                ref.index.to_numpy(float), ref.columns.to_numpy(float), mean.to_numpy(float)
            )
        )
    slopes = np.array([s for s in slopes if np.isfinite(s)])
    if slopes.size == 0:
        return float("nan"), float("nan")
    return float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5))


def variant_metrics(
    frame: pd.DataFrame,
    cells: pd.DataFrame,
    variant: str,
    metric: str = "test_error",
    tol: float = 0.10,
    reps: int = 200,
    seed: int = 0,
) -> dict:
    lrs, wds, E = grid(cells, variant)
    i, j = np.unravel_index(np.nanargmin(E), E.shape)
    lo, hi = _bootstrap_slope(frame, variant, metric, reps, np.random.default_rng(seed))
    smallest_wd = float(np.nanmin(E[:, 0]))
    return {
        "variant": variant,
        "best_error": float(E[i, j]),
        "best_lr": float(lrs[i]),
        "best_weight_decay": float(wds[j]),
        "best_error_smallest_wd": smallest_wd,
        "coupling_slope": coupling_slope(lrs, wds, E),
        "coupling_slope_lo": lo,
        "coupling_slope_hi": hi,
        "near_optimal_fraction": near_optimal_fraction(E, tol),
        "separability": separability(E),
        "cells": int(np.sum(~np.isnan(E))),
        "seeds": int(frame[frame["variant"] == variant]["seed"].nunique()),
    }


def all_metrics(
    frame: pd.DataFrame, cells: pd.DataFrame, variants: list[str], **kw
) -> pd.DataFrame:
    return pd.DataFrame([variant_metrics(frame, cells, v, **kw) for v in variants])


def regret_table(cells: pd.DataFrame, variants: list[str]) -> pd.DataFrame:
    rows = []
    for v in variants:
        _, _, E = grid(cells, v)
        for k, r in enumerate(random_search_regret(E), start=1):
            rows.append({"variant": v, "k": k, "regret": r})
    return pd.DataFrame(rows)
