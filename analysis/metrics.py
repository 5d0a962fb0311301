"""How coupled is an optimizer's (lr, weight decay) pair? Numbers on an lr x wd grid ``E[i, j]``.

``E[i, j]`` is the error (mean over seeds) at lr ``lr_i`` and weight decay ``wd_j``; nan marks a
cell that was not run. A diverged cell counts with error 1.0. Definitions (docs/analysis.md):

- valley: for each lr row i with a defined minimum (two or more measured cells, not all
  diverged, not all equal), ``j*(i) = argmin_j E[i, j]`` and ``wd*(i) = wd[j*]``. With
  ``refine=True`` an interior minimum is moved to the vertex of the parabola through
  ``(log wd, E)`` at ``j*-1, j*, j*+1`` (clamped to half a cell either side). A row is
  *informative* when its minimum is at most the median of the grid's non-diverged cells (rows
  where the network barely trains say nothing about the best decay).
- ``coupling_slope``: least-squares slope ``s`` of ``log wd*(i) = c + s * log lr_i`` over the
  informative rows whose minimum is interior (``0 < j* < n-1`` and ``wd[j*] > 0``) when two or
  more lrs have one, else over every informative row with ``wd* > 0`` (then the valley runs
  along the grid's edge and ``valley_interior`` is False: widen the wd range). ``s ~ -1``: the
  best wd moves like 1/lr (the product lr*wd is what matters); ``s ~ 0``: lr and wd decoupled.
  ``coupling_slope_lo/hi``: the 2.5/97.5 percentiles of ``s`` over B bootstrap resamples of
  seeds (seeds drawn with replacement, grid = nan-mean of their per-seed grids; three or more
  seeds needed).
- ``near_optimal_fraction``: ``#{cells: E <= E_best * (1 + tol)} / #{measured cells}``.
- ``separability``: R^2 of the additive model ``E[i, j] ~ mu + a_i + b_j`` (least squares over
  the measured cells): ``1 - sum (E - fit)^2 / sum (E - mean E)^2``; 1 = tune lr and wd one at a
  time. ``log=True`` fits ``log E`` instead. The per-variant table leaves cells whose every
  seed diverged out of this fit (their 1.0 is a blow-up, not a point of the error surface, and
  whole diverged lr rows would otherwise look "additive" and dominate the variance).
- ``random_search_regret(k)``: with the N measured cell values sorted ``v_1 <= ... <= v_N`` and k
  cells drawn uniformly without replacement, ``P(min > v_i) = C(N-i, k) / C(N, k)``, so
  ``E[min_k] - v_1 = sum_{i=1}^{N-1} (v_{i+1} - v_i) C(N-i, k) / C(N, k)``: exact, decreasing
  in k, 0 at k = N.
- ``trials_to_near_optimal``: the least k with ``P(a near-optimal cell among k draws) =
  1 - C(N-m, k) / C(N, k) >= p`` (m near-optimal cells, p = 0.9).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import aggregate, grid, group_columns, seed_grids, variants_in_order

# --------------------------------------------------------------------------------------------
# The valley of the best weight decay per lr


def valley(lrs: np.ndarray, wds: np.ndarray, E: np.ndarray, refine: bool = True) -> pd.DataFrame:
    """The best weight decay of each lr row, and which rows the coupling slope is fit over.

    Columns: ``lr, best_wd, best_error, j, interior, informative, in_fit``. ``best_wd`` is the
    refined position (module docstring) when ``refine``; ``j`` the grid column of the minimum.
    Rows that are empty, all diverged or flat are left out.
    """
    lrs, wds, E = np.asarray(lrs, float), np.asarray(wds, float), np.asarray(E, float)
    if E.shape != (len(lrs), len(wds)):
        raise ValueError(f"E: shape {E.shape} does not match (len(lrs), len(wds))")
    logw = np.log(np.where(wds > 0, wds, np.nan))
    alive = E[np.isfinite(E) & (E < 1.0)]
    median = float(np.median(alive)) if alive.size else np.inf
    rows = []
    for i, lr in enumerate(lrs):
        row = E[i]
        ok = np.isfinite(row)
        if ok.sum() < 2 or np.all(row[ok] >= 1.0) or np.ptp(row[ok]) <= 0:
            continue
        j = int(np.nanargmin(row))
        interior = bool(0 < j < len(wds) - 1 and wds[j] > 0)
        best = wds[j]
        if refine and interior and np.all(np.isfinite(row[j - 1 : j + 2])) and wds[j - 1] > 0:
            x, y = logw[j - 1 : j + 2], row[j - 1 : j + 2]
            # vertex of the parabola through three points (x may be unevenly spaced)
            d1 = (y[1] - y[0]) / (x[1] - x[0])
            d2 = (y[2] - y[1]) / (x[2] - x[1])
            curv = (d2 - d1) / (x[2] - x[0])
            if curv > 0:
                xv = 0.5 * (x[0] + x[1]) - d1 / (2 * curv)
                lo, hi = 0.5 * (x[0] + x[1]), 0.5 * (x[1] + x[2])
                best = float(np.exp(np.clip(xv, lo, hi)))
        rows.append(
            {
                "lr": lr,
                "best_wd": best,
                "best_error": row[j],
                "j": j,
                "interior": interior,
                "informative": bool(row[j] <= median),
            }
        )
    v = pd.DataFrame(
        rows, columns=["lr", "best_wd", "best_error", "j", "interior", "informative"]
    ).astype({"interior": bool, "informative": bool})
    inner = v["informative"] & v["interior"]
    if v.loc[inner, "lr"].nunique() >= 2:
        v["in_fit"] = inner
    else:
        v["in_fit"] = v["informative"] & (v["best_wd"] > 0)
    return v


def valley_fit_rows(v: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`valley` the coupling slope is fit over (``in_fit``)."""
    return v[v["in_fit"]]


def _slope(v: pd.DataFrame) -> tuple[float, float]:
    rows = valley_fit_rows(v)
    if rows["lr"].nunique() < 2:
        return float("nan"), float("nan")
    s, c = np.polyfit(np.log(rows["lr"].to_numpy()), np.log(rows["best_wd"].to_numpy()), 1)
    return float(s), float(c)


def coupling_slope(lrs: np.ndarray, wds: np.ndarray, E: np.ndarray, refine: bool = True) -> float:
    """Slope of log(best wd) against log(lr) along the valley (module docstring); nan if < 2 lrs."""
    return _slope(valley(lrs, wds, E, refine))[0]


def coupling_fit(
    lrs: np.ndarray, wds: np.ndarray, E: np.ndarray, refine: bool = True
) -> tuple[float, float]:
    """``(slope, intercept)`` of ``log wd* = intercept + slope * log lr`` (for drawing the fit)."""
    return _slope(valley(lrs, wds, E, refine))


def bootstrap_coupling_slope(
    lrs: np.ndarray,
    wds: np.ndarray,
    S: np.ndarray,
    reps: int = 200,
    seed: int = 0,
    level: float = 0.95,
    refine: bool = True,
    min_seeds: int = 3,
) -> tuple[float, float]:
    """Percentile interval of the coupling slope over seed resamples.

    ``S[s, i, j]`` holds seed s's grid. Each replicate draws ``len(S)`` seeds with replacement
    and takes the nan-mean of their grids. ``(nan, nan)`` with fewer than ``min_seeds`` seeds
    (two seeds give only three distinct resamples: no interval worth the name).
    """
    S = np.asarray(S, float)
    if S.ndim != 3 or S.shape[0] < max(2, min_seeds) or reps < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, S.shape[0], size=(reps, S.shape[0]))
    slopes = []
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for pick in picks:
                slopes.append(coupling_slope(lrs, wds, np.nanmean(S[pick], axis=0), refine))
    slopes = np.array([s for s in slopes if np.isfinite(s)])
    if slopes.size == 0:
        return float("nan"), float("nan")
    a = 100 * (1 - level) / 2
    return float(np.percentile(slopes, a)), float(np.percentile(slopes, 100 - a))


# --------------------------------------------------------------------------------------------
# Flatness and separability


def near_optimal_fraction(E: np.ndarray, tol: float = 0.10) -> float:
    """Share of measured cells with ``E <= E_best * (1 + tol)``."""
    vals = np.asarray(E, float)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan")
    return float(np.mean(vals <= vals.min() * (1 + tol)))


def additive_fit(E: np.ndarray, iters: int = 500) -> np.ndarray:
    """Least-squares ``mu + a_i + b_j`` over the measured cells (alternating means; exact for a
    complete grid after one pass). Returns the fitted grid (nan where E is nan)."""
    E = np.asarray(E, float)
    m = np.isfinite(E)
    Y = np.where(m, E, 0.0)
    a = np.zeros(E.shape[0])
    b = np.zeros(E.shape[1])
    mu = Y.sum() / m.sum()
    for _ in range(iters):
        rc = np.maximum(m.sum(1), 1)
        a_new = (np.where(m, Y - mu - b[None, :], 0.0)).sum(1) / rc
        cc = np.maximum(m.sum(0), 1)
        b_new = (np.where(m, Y - mu - a_new[:, None], 0.0)).sum(0) / cc
        done = np.allclose(a_new, a, atol=1e-13) and np.allclose(b_new, b, atol=1e-13)
        a, b = a_new, b_new
        if done or m.all():
            break
    return np.where(m, mu + a[:, None] + b[None, :], np.nan)


def separability(E: np.ndarray, log: bool = False) -> float:
    """R^2 of the additive model ``mu + a_i + b_j`` on E (or log E): 1 = axis-aligned basin."""
    E = np.asarray(E, float)
    Y = np.log(np.clip(E, 1e-12, None)) if log else E.copy()
    m = np.isfinite(Y)
    if m.sum() < 3 or (m.sum(1) > 0).sum() < 2 or (m.sum(0) > 0).sum() < 2:
        return float("nan")
    ss_tot = float(((Y[m] - Y[m].mean()) ** 2).sum())
    if ss_tot == 0:
        return 1.0
    fit = additive_fit(Y)
    return float(1 - ((Y[m] - fit[m]) ** 2).sum() / ss_tot)


# --------------------------------------------------------------------------------------------
# Random search on the grid


def _log_factorials(n: int) -> np.ndarray:
    """``lf[m] = log(m!)`` for m = 0..n."""
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=float)))])


def _survival(n: int, m: np.ndarray, k_max: int) -> np.ndarray:
    """``P[k-1, r] = C(m_r, k) / C(n, k)`` (all k draws land among m_r given cells), k = 1..k_max."""
    lf = _log_factorials(n)
    m = np.asarray(m, int)
    ks = np.arange(1, k_max + 1)[:, None]
    ok = m[None, :] >= ks
    mk = np.where(ok, m[None, :] - ks, 0)
    logp = lf[m][None, :] - lf[mk] - (lf[n] - lf[n - ks])
    return np.where(ok, np.exp(np.minimum(logp, 0.0)), 0.0)


def random_search_regret(E: np.ndarray, k_max: int | None = None) -> np.ndarray:
    """Expected best error of k cells drawn without replacement minus the best, k = 1..k_max.

    Exact (module docstring); ``k_max`` defaults to the number N of measured cells, where the
    regret is 0.
    """
    v = np.sort(np.asarray(E, float)[np.isfinite(E)])
    n = v.size
    if n == 0:
        return np.array([])
    k_max = n if k_max is None else min(int(k_max), n)
    gaps = np.diff(v)  # v_{i+1} - v_i, i = 1..N-1
    surv = _survival(n, n - np.arange(1, n), k_max)  # P(min > v_i) = C(N-i, k) / C(N, k)
    return surv @ gaps


def hit_probability(E: np.ndarray, tol: float = 0.10, k_max: int | None = None) -> np.ndarray:
    """``P(at least one near-optimal cell among k random cells)``, k = 1..k_max (exact)."""
    vals = np.asarray(E, float)
    vals = vals[np.isfinite(vals)]
    n = vals.size
    if n == 0:
        return np.array([])
    m = int((vals <= vals.min() * (1 + tol)).sum())
    k_max = n if k_max is None else min(int(k_max), n)
    return 1.0 - _survival(n, np.array([n - m]), k_max)[:, 0]


def trials_to_near_optimal(E: np.ndarray, tol: float = 0.10, p: float = 0.9) -> int:
    """Least k with ``P(a near-optimal cell among k random grid cells) >= p``."""
    hp = hit_probability(E, tol)
    if hp.size == 0:
        return 0
    return int(np.argmax(hp >= p - 1e-12) + 1)


# --------------------------------------------------------------------------------------------
# Per-variant tables


def variant_metrics(
    frame: pd.DataFrame,
    variant: str,
    metric: str = "test_error",
    tol: float = 0.10,
    reps: int = 200,
    seed: int = 0,
    refine: bool = True,
    separability_log: bool = False,
    cells: pd.DataFrame | None = None,
) -> dict:
    """Every number for one variant of a tidy frame (one experiment), as a dict."""
    cells = aggregate(frame, metric) if cells is None else cells
    lrs, wds, E = grid(cells, variant)
    _, _, D = grid(cells, variant, value="diverged")
    _, _, N = grid(cells, variant, value="count")
    _, _, SD = grid(cells, variant, value="std")
    i, j = np.unravel_index(np.nanargmin(E), E.shape)
    v = valley(lrs, wds, E, refine)
    slope, _ = _slope(v)
    seeds, slrs, swds, S = seed_grids(frame, variant, metric)
    lo, hi = bootstrap_coupling_slope(slrs, swds, S, reps, seed, refine=refine)
    measured = np.isfinite(E)
    return {
        "variant": variant,
        "optimizer": variant.split("/")[0],
        "decay": variant.split("/")[-1],
        "best_error": float(E[i, j]),
        "best_error_std": float(SD[i, j]),
        "best_lr": float(lrs[i]),
        "best_weight_decay": float(wds[j]),
        # does weight decay matter here? the best error with the smallest wd of the grid (best
        # lr for it) and how much the best wd gains over it (> 0: decay helps)
        "best_error_smallest_wd": float(np.nanmin(E[:, 0])),
        "wd_gain": float(np.nanmin(E[:, 0]) - E[i, j]),
        "coupling_slope": slope,
        "coupling_slope_lo": lo,
        "coupling_slope_hi": hi,
        "valley_rows": int(v["in_fit"].sum()),
        "valley_interior": bool(v.loc[v["in_fit"], "interior"].all() and v["in_fit"].sum() >= 2),
        "near_optimal_fraction": near_optimal_fraction(E, tol),
        "separability": separability(np.where(D >= 1, np.nan, E), log=separability_log),
        "trials_to_near_optimal": trials_to_near_optimal(E, tol),
        "diverged_fraction": float(np.nansum(D * N) / np.nansum(N)),
        "n_lr": int(len(lrs)),
        "n_wd": int(len(wds)),
        "n_cells": int(measured.sum()),
        "n_seeds": int(len(seeds)),
        "n_trials": int(np.nansum(N)),
        "tol": tol,
        "metric": metric,
    }


def metrics_table(
    frame: pd.DataFrame, metric: str = "test_error", variants: list[str] | None = None, **kw
) -> pd.DataFrame:
    """:func:`variant_metrics` for each variant (paper order) of one experiment's tidy frame."""
    mixed = group_columns(frame)
    if mixed:
        raise ValueError(
            f"frame: mixes several {'/'.join(mixed)} values; analyze each part of "
            "analysis.load.split_groups(frame) on its own"
        )
    cells = aggregate(frame, metric)
    variants = variants or variants_in_order(frame)
    return pd.DataFrame([variant_metrics(frame, v, metric, cells=cells, **kw) for v in variants])


def regret_table(
    cells: pd.DataFrame, variants: list[str] | None = None, tol: float = 0.10
) -> pd.DataFrame:
    """Long table ``variant, k, regret, p_near_optimal`` for k = 1..N cells of each variant."""
    rows = []
    for v in variants or variants_in_order(cells):
        _, _, E = grid(cells, v)
        regret = random_search_regret(E)
        hit = hit_probability(E, tol)
        best = float(np.nanmin(E))
        for k, (r, p) in enumerate(zip(regret, hit), start=1):
            rows.append(
                {
                    "variant": v,
                    "k": k,
                    "regret": r,
                    "expected_best_error": best + r,
                    "p_near_optimal": p,
                }
            )
    return pd.DataFrame(
        rows, columns=["variant", "k", "regret", "expected_best_error", "p_near_optimal"]
    )


def valley_table(
    cells: pd.DataFrame, variants: list[str] | None = None, refine: bool = True
) -> pd.DataFrame:
    """Long table of the valley (best wd per lr) of each variant, with ``in_fit`` marked."""
    parts = []
    for v in variants or variants_in_order(cells):
        lrs, wds, E = grid(cells, v)
        val = valley(lrs, wds, E, refine)
        val.insert(0, "variant", v)
        parts.append(val)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
