"""How coupled is an optimizer's (lr, weight decay) pair, and how hard is it to tune? Numbers on
an lr x wd grid ``E[i, j]``, or on a surface fitted to scattered trials.

``E[i, j]`` is the error (mean over seeds) at lr ``lr_i`` and weight decay ``wd_j``, both
ascending; nan marks a cell that was not run. A diverged cell counts with error 1.0. ``E_best``
is the grid's best cell and ``E_0`` the best cell of the smallest-wd column (the least decay the
grid tried, best lr for it); ``wd_gain = E_0 - E_best`` is what tuning the decay buys.
Definitions (docs/analysis.md has the same, with the reasons):

- valley: for each lr row i with a defined minimum (two or more measured cells, not all
  diverged, not all equal), ``j*(i) = argmin_j E[i, j]`` and ``wd*(i) = wd[j*]``. With
  ``refine=True`` an interior minimum is moved to the vertex of the parabola through
  ``(log wd, E)`` at ``j*-1, j*, j*+1`` (clamped to half a cell either side). A row is
  *informative* when its minimum is at most the median of the grid's non-diverged cells.
- ``coupling_slope``: least-squares slope ``s`` of ``log wd*(i) = c + s * log lr_i`` over the
  informative rows whose minimum is interior when two or more lrs have one, else over every
  informative row with ``wd* > 0`` (``valley_interior`` False). ``s ~ -1``: the best wd moves
  like 1/lr; ``s ~ 0``: lr and wd decoupled.
- per-seed slopes: the same slope on each seed's own grid (``coupling_slope_seeds``, their
  min / max and count), always reported. ``coupling_slope_lo/hi``: the 2.5/97.5 percentiles of
  the slope over B bootstrap resamples of seeds, **only with at least MIN_SEEDS_FOR_INTERVAL
  (5) seeds** (126 distinct resamples; 3 seeds give 10, which is the spread of single-seed
  slopes, not an interval); with fewer they are nan and the per-seed range with its n stands
  in for an interval.
- normalized regret of a cell: ``r = (E - E_best) / (E_0 - E_best)`` (0 at the best cell, 1 at
  the cost of not tuning the decay). When ``wd_gain <= 0`` only cells tied with the best have
  ``r = 0`` and every other cell ``r = inf``.
- ``near_optimal_fraction``: share of measured cells with ``r <= tol`` (``tol`` = 0.25): cells
  that keep at least three quarters of what decay buys. ``trials_to_near_optimal``: least k with
  ``P(one of k random cells is near-optimal) = 1 - C(N-m, k) / C(N, k) >= 0.9``.
- ``near_optimal_fraction_abs``: share of measured cells with ``E - E_best <= T``, ``T =
  max(abs_tol, 2 * SE)`` (``near_optimal_threshold``), ``SE = sqrt(E_best (1 - E_best) / (n_eval
  * n_seeds))``: the binomial standard error of a cell mean over ``n_seeds`` seeds of an
  evaluation set of ``n_eval`` samples. ``n_eval`` is given, or inferred from the data (the
  least n with every measured error a multiple of 1/n, see :func:`infer_eval_size`), or the
  MNIST-1D default test set (1,000 samples); ``n_eval_source`` says which.
  ``wd_gain_resolved``: ``wd_gain > T``.
- ``near_optimal_fraction_rel``: share of cells with ``E <= E_best * (1 + rel_tol)``, only when a
  ``rel_tol`` is given (nan otherwise): at 50% error a 10% tolerance is 5 points, more than
  decay is worth in many settings, so it counts cells where decay does nothing.
- ``transfer_regret_d`` (d = 1, 2): the error lost by reusing the best wd column of one lr row at
  the lr row d grid steps away, ``E[i+-d, j*(i)] - min_j E[i+-d, j]``, averaged over the ordered
  pairs of informative rows (both directions); ``_norm`` divides by ``wd_gain``;
  ``transfer_pairs_d`` counts the pairs. The practical "how hard is it to retune wd when lr
  changes" number; 0 for an axis-aligned basin.
- ``separability``: R^2 of the additive model ``E[i, j] ~ mu + a_i + b_j`` (least squares over the
  measured cells): ``1 - sum (E - fit)^2 / sum (E - mean E)^2``, over the **informative rows and
  columns** only: cells whose every seed diverged are left out, and so are lr rows and wd
  columns whose every remaining cell is at chance level (``E >= chance - margin``, ``chance =
  1 - 1/classes`` of the data set, ``margin = max(0.02, 2 SE at chance)``), removed repeatedly
  until none is left. Dead rows are flat, so they look additive and dominate the variance.
  ``separability_all``: the same fit over every row and column. ``log=True`` fits ``log E``.
- ``random_search_regret(k)``: with the N measured cell values sorted ``v_1 <= ... <= v_N`` and k
  cells drawn uniformly without replacement, ``E[min_k] - v_1 = sum_{i=1}^{N-1} (v_{i+1} - v_i)
  C(N-i, k) / C(N, k)``: exact, decreasing in k, 0 at k = N. The regret table has it on the
  seed-mean grid and on each seed's grid, in error units and normalized by ``wd_gain``.
- identity check: with one schedule, weight-decoupled decay with ``lr_t * wd`` (torch's
  ``decoupled``) at ``(a, lam)`` is the same algorithm as the ``eta_t * wd`` form
  (``independent``, ``eta_t = lr_t / lr_0``) at ``(a, a * lam)``. Where both studies ran such a
  pair of cells, ``identity_max_abs_diff`` / ``identity_rms_diff`` are the per-seed differences
  between them (the measured noise floor: only float rounding separates them), and
  ``identity_slope_diff`` = slope(independent) - slope(decoupled), expected exactly +1 (per
  seed: ``identity_slope_diff_seed_min/max``).

Scattered samples (random or TPE search) are not a grid: :func:`fit_surface` fits a local-linear
Gaussian-kernel smoother in (log lr, log wd), bandwidth by leave-one-out cross-validation, and
evaluates it on a 25 x 25 grid (points farther than two bandwidths from every trial are left
out). With at least MIN_SURFACE_TRIALS (20) trials the slope (interval: bootstrap over trials),
near-optimal fractions and separability are computed on that surface (``analysis_grid`` =
``surface``); transfer regret and ``trials_to_near_optimal`` are not applicable (nan). With
fewer trials every metric that needs a grid or a surface is nan: never a fit through two cells.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.load import (
    aggregate,
    coarse,
    grid,
    group_columns,
    is_valley,
    seed_grids,
    variants_in_order,
)
from harness import registry

NEAR_OPTIMAL_TOL = 0.25  # normalized regret
MIN_SEEDS_FOR_INTERVAL = 5  # bootstrap interval of the slope
MIN_SURFACE_TRIALS = 20  # a fitted surface for scattered samples
MNIST1D_TEST_SIZE = 1000  # the data config's default: 5,000 samples, 80% for training
CHANCE_MARGIN = 0.02

# --------------------------------------------------------------------------------------------
# The valley of the best weight decay per lr


def valley(
    lrs: np.ndarray, wds: np.ndarray, E: np.ndarray, refine: bool = True, measured: bool = False
) -> pd.DataFrame:
    """The best weight decay of each lr row, and which rows the coupling slope is fit over.

    Columns: ``lr, best_wd, best_error, j, interior, informative, in_fit``. ``best_wd`` is the
    refined position (module docstring) when ``refine``; ``j`` the grid column of the minimum.
    Rows that are empty, all diverged or flat are left out. ``measured``: each row on its own
    measured cells (a valley tracer's rows each have their own wds): the neighbours of the
    minimum are the row's nearest measured wds, and interior means inside the row's range.
    """
    lrs, wds, E = np.asarray(lrs, float), np.asarray(wds, float), np.asarray(E, float)
    if E.shape != (len(lrs), len(wds)):
        raise ValueError(f"E: shape {E.shape} does not match (len(lrs), len(wds))")
    logw = np.log(np.where(wds > 0, wds, np.nan))
    alive = E[np.isfinite(E) & (E < 1.0)]
    median = float(np.median(alive)) if alive.size else np.inf
    rows = []
    for i, lr in enumerate(lrs):
        ok = np.isfinite(E[i])
        if ok.sum() < 2 or np.all(E[i][ok] >= 1.0) or np.ptp(E[i][ok]) <= 0:
            continue
        cols = np.nonzero(ok)[0] if measured else np.arange(len(wds))
        row, rw, rlogw = E[i][cols], wds[cols], logw[cols]
        jr = int(np.nanargmin(row))
        j = int(cols[jr])
        interior = bool(0 < jr < len(cols) - 1 and rw[jr] > 0)
        best = rw[jr]
        if refine and interior and np.all(np.isfinite(row[jr - 1 : jr + 2])) and rw[jr - 1] > 0:
            x, y = rlogw[jr - 1 : jr + 2], row[jr - 1 : jr + 2]
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
                "best_error": row[jr],
                "j": j,
                "interior": interior,
                "informative": bool(row[jr] <= median),
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


def coupling_slope(
    lrs: np.ndarray, wds: np.ndarray, E: np.ndarray, refine: bool = True, measured: bool = False
) -> float:
    """Slope of log(best wd) against log(lr) along the valley (module docstring); nan if < 2 lrs."""
    return _slope(valley(lrs, wds, E, refine, measured))[0]


def coupling_fit(
    lrs: np.ndarray, wds: np.ndarray, E: np.ndarray, refine: bool = True, measured: bool = False
) -> tuple[float, float]:
    """``(slope, intercept)`` of ``log wd* = intercept + slope * log lr`` (for drawing the fit)."""
    return _slope(valley(lrs, wds, E, refine, measured))


def _quiet(fn, *args, **kw):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kw)


def bootstrap_coupling_slope(
    lrs: np.ndarray,
    wds: np.ndarray,
    S: np.ndarray,
    reps: int = 200,
    seed: int = 0,
    level: float = 0.95,
    refine: bool = True,
    min_seeds: int = MIN_SEEDS_FOR_INTERVAL,
    measured: bool = False,
) -> tuple[float, float]:
    """Percentile interval of the coupling slope over seed resamples.

    ``S[s, i, j]`` holds seed s's grid. Each replicate draws ``len(S)`` seeds with replacement
    and takes the nan-mean of their grids. ``(nan, nan)`` with fewer than ``min_seeds`` seeds
    (n seeds have only C(2n-1, n) distinct resamples: 10 for 3 seeds).
    """
    S = np.asarray(S, float)
    if S.ndim != 3 or S.shape[0] < max(2, min_seeds) or reps < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, S.shape[0], size=(reps, S.shape[0]))
    slopes = np.array(
        [_quiet(lambda p: coupling_slope(lrs, wds, np.nanmean(S[p], axis=0), refine, measured), p)
         for p in picks]
    )  # fmt: skip
    slopes = slopes[np.isfinite(slopes)]
    if slopes.size == 0:
        return float("nan"), float("nan")
    a = 100 * (1 - level) / 2
    return float(np.percentile(slopes, a)), float(np.percentile(slopes, 100 - a))


def seed_slopes(
    lrs: np.ndarray, wds: np.ndarray, S: np.ndarray, refine: bool = True, measured: bool = False
) -> np.ndarray:
    """The coupling slope of each seed's own grid ``S[s]`` (nan where a seed has none)."""
    return np.array(
        [_quiet(coupling_slope, lrs, wds, s, refine, measured) for s in np.asarray(S, float)]
    )


# --------------------------------------------------------------------------------------------
# Near-optimal cells


def _best_and_smallest_wd(E: np.ndarray) -> tuple[float, float]:
    """``(E_best, E_0)``: the best measured cell and the best cell of the smallest-wd column that
    has a measured cell."""
    E = np.asarray(E, float)
    ok = np.isfinite(E)
    if not ok.any():
        return float("nan"), float("nan")
    col = int(np.argmax(ok.any(axis=0)))
    return float(np.nanmin(E)), float(np.nanmin(E[:, col]))


def normalized_regret(E: np.ndarray) -> np.ndarray:
    """``(E - E_best) / (E_0 - E_best)`` per cell (module docstring; nan where E is nan)."""
    E = np.asarray(E, float)
    best, e0 = _best_and_smallest_wd(E)
    gain = e0 - best
    with np.errstate(all="ignore"):
        if not np.isfinite(gain):
            return np.full(E.shape, np.nan)
        if gain <= 0:
            r = np.where(E <= best, 0.0, np.inf)
        else:
            r = (E - best) / gain
    return np.where(np.isfinite(E), r, np.nan)


def near_optimal_mask(E: np.ndarray, tol: float = NEAR_OPTIMAL_TOL) -> np.ndarray:
    """Cells with normalized regret ``<= tol`` (False where E is nan)."""
    r = normalized_regret(E)
    return np.isfinite(E) & (np.nan_to_num(r, nan=np.inf) <= tol + 1e-12)


def near_optimal_fraction(E: np.ndarray, tol: float = NEAR_OPTIMAL_TOL) -> float:
    """Share of measured cells whose normalized regret is at most ``tol`` (default 0.25)."""
    E = np.asarray(E, float)
    n = int(np.isfinite(E).sum())
    if n == 0 or not np.isfinite(_best_and_smallest_wd(E)[1]):
        return float("nan")
    return float(near_optimal_mask(E, tol).sum() / n)


def near_optimal_fraction_absolute(E: np.ndarray, threshold: float) -> float:
    """Share of measured cells with ``E - E_best <= threshold`` (error units)."""
    vals = np.asarray(E, float)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0 or not np.isfinite(threshold):
        return float("nan")
    return float(np.mean(vals - vals.min() <= threshold + 1e-12))


def near_optimal_fraction_relative(E: np.ndarray, tol: float = 0.10) -> float:
    """Share of measured cells with ``E <= E_best * (1 + tol)`` (relative to the best error)."""
    vals = np.asarray(E, float)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan")
    return float(np.mean(vals <= vals.min() * (1 + tol)))


def cell_standard_error(p: float, n_eval: int, n_seeds: int = 1) -> float:
    """Binomial standard error of a cell mean: ``sqrt(p (1 - p) / (n_eval * n_seeds))``."""
    p = min(max(float(p), 0.0), 1.0)
    return math.sqrt(p * (1 - p) / (max(int(n_eval), 1) * max(int(n_seeds), 1)))


def infer_eval_size(values, max_n: int = 100_000, min_distinct: int = 10) -> int | None:
    """The evaluation-set size behind error values: the least n with every value a multiple of
    1/n (to float32 rounding). ``None`` with fewer than ``min_distinct`` distinct values in
    (0, 1) or when no n up to ``max_n`` fits (e.g. errors averaged or smoothed before saving)."""
    v = np.unique(np.asarray(values, float))
    v = v[np.isfinite(v) & (v > 0) & (v < 1)]
    if v.size < min_distinct:
        return None
    ns = np.arange(1, max_n + 1, dtype=float)
    for x in v:
        k = x * ns
        ns = ns[np.abs(k - np.round(k)) <= np.maximum(1e-6, 4e-7 * ns)]
        if ns.size == 0:
            return None
    return int(ns[0])


# --------------------------------------------------------------------------------------------
# Transfer regret


def transfer_regret(
    lrs: np.ndarray, wds: np.ndarray, E: np.ndarray, steps: int = 1
) -> tuple[float, int]:
    """``(mean, pairs)``: the error lost by reusing row i's best wd column at row i +- steps,
    over the ordered pairs of informative rows (module docstring); ``(nan, 0)`` without pairs."""
    E = np.asarray(E, float)
    v = _quiet(valley, lrs, wds, E, False)
    rows = {int(np.searchsorted(lrs, lr)): int(j) for lr, j in zip(v["lr"], v["j"])}
    informative = set(np.searchsorted(lrs, v.loc[v["informative"], "lr"]).tolist())
    lost = []
    for i in sorted(informative):
        for t in (i - steps, i + steps):
            if t not in informative or t not in rows:
                continue
            val = E[t, rows[i]]
            if np.isfinite(val):
                lost.append(val - np.nanmin(E[t]))
    if not lost:
        return float("nan"), 0
    return float(np.mean(lost)), len(lost)


# --------------------------------------------------------------------------------------------
# Separability


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


def chance_level(data: str | None) -> float:
    """``1 - 1/classes`` of a registered data set; nan for an unknown one."""
    try:
        return 1.0 - 1.0 / registry.dataset(str(data)).classes
    except (KeyError, ValueError, AttributeError):
        return float("nan")


def informative_lines(
    E: np.ndarray, chance: float | None, margin: float = CHANCE_MARGIN
) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)`` masks of the lr rows and wd columns with a measured cell below the chance
    band ``E >= chance - margin``, found by removing dead rows and columns until none is left."""
    E = np.asarray(E, float)
    m = np.isfinite(E)
    rows, cols = m.any(1), m.any(0)
    if chance is None or not np.isfinite(chance):
        return rows, cols
    alive = m & (E < chance - margin)
    while True:
        sub = alive & rows[:, None] & cols[None, :]
        new_rows, new_cols = rows & sub.any(1), cols & sub.any(0)
        if (new_rows == rows).all() and (new_cols == cols).all():
            return rows, cols
        rows, cols = new_rows, new_cols


def separability(
    E: np.ndarray, log: bool = False, chance: float | None = None, margin: float = CHANCE_MARGIN
) -> float:
    """R^2 of the additive model ``mu + a_i + b_j`` on E (or log E): 1 = axis-aligned basin.

    With ``chance``, over the informative rows and columns only (:func:`informative_lines`)."""
    E = np.asarray(E, float)
    rows, cols = informative_lines(E, chance, margin)
    E = E[rows][:, cols]
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


def hit_probability(
    E: np.ndarray, tol: float = NEAR_OPTIMAL_TOL, k_max: int | None = None
) -> np.ndarray:
    """``P(at least one near-optimal cell among k random cells)``, k = 1..k_max (exact);
    near-optimal = normalized regret ``<= tol``."""
    E = np.asarray(E, float)
    n = int(np.isfinite(E).sum())
    if n == 0:
        return np.array([])
    m = int(near_optimal_mask(E, tol).sum())
    k_max = n if k_max is None else min(int(k_max), n)
    return 1.0 - _survival(n, np.array([n - m]), k_max)[:, 0]


def trials_to_near_optimal(E: np.ndarray, tol: float = NEAR_OPTIMAL_TOL, p: float = 0.9) -> int:
    """Least k with ``P(a near-optimal cell among k random grid cells) >= p``."""
    hp = hit_probability(E, tol)
    if hp.size == 0 or hp[-1] < p - 1e-12:
        return 0
    return int(np.argmax(hp >= p - 1e-12) + 1)


# --------------------------------------------------------------------------------------------
# Scattered samples: a fitted surface


@dataclass
class Surface:
    """A smoothed error surface over (log lr, log wd) fitted to scattered trials.

    ``E[i, j]`` is the fit at ``lrs[i]``, ``wds[j]`` (nan farther than two bandwidths from every
    trial); ``bandwidth`` is in units of the sampled log-range of each axis; ``points`` holds
    the trials (``lr, weight_decay, error``) it was fitted to."""

    lrs: np.ndarray
    wds: np.ndarray
    E: np.ndarray
    bandwidth: float
    points: pd.DataFrame

    @property
    def n(self) -> int:
        return len(self.points)


BANDWIDTHS = (0.06, 0.09, 0.12, 0.18, 0.25, 0.35, 0.5)


def _local_linear(
    xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, xe: np.ndarray, ye: np.ndarray, h: float,
    leave_one_out: bool = False,
) -> np.ndarray:  # fmt: skip
    """Local-linear Gaussian-kernel regression of z on (x, y), evaluated at (xe, ye)."""
    dx = xs[None, :] - xe[:, None]
    dy = ys[None, :] - ye[:, None]
    w = np.exp(-0.5 * (dx**2 + dy**2) / h**2)
    if leave_one_out:
        np.fill_diagonal(w, 0.0)
    s0 = w.sum(1)
    sx, sy = (w * dx).sum(1), (w * dy).sum(1)
    sxx, sxy, syy = (w * dx * dx).sum(1), (w * dx * dy).sum(1), (w * dy * dy).sum(1)
    A = np.stack(
        [np.stack([s0, sx, sy], -1), np.stack([sx, sxx, sxy], -1), np.stack([sy, sxy, syy], -1)],
        -2,
    )
    ridge = 1e-6 * np.maximum(s0, 1e-300)
    A[:, 1, 1] += ridge
    A[:, 2, 2] += ridge
    b = np.stack([(w * zs).sum(1), (w * dx * zs).sum(1), (w * dy * zs).sum(1)], -1)
    out = np.full(len(xe), np.nan)
    ok = s0 > 1e-8
    if ok.any():
        out[ok] = np.linalg.solve(A[ok] + 1e-12 * np.eye(3), b[ok][..., None])[:, 0, 0]
    return out


def fit_surface(
    lr: np.ndarray,
    wd: np.ndarray,
    error: np.ndarray,
    n_eval: int = 25,
    bandwidth: float | None = None,
) -> Surface:
    """The smoothed surface of scattered trials (module docstring); trials with ``wd <= 0`` are
    left out (no log). ``bandwidth=None`` picks one of :data:`BANDWIDTHS` by leave-one-out
    cross-validation."""
    lr, wd, z = (np.asarray(a, float) for a in (lr, wd, error))
    ok = (lr > 0) & (wd > 0) & np.isfinite(z)
    lr, wd, z = lr[ok], wd[ok], z[ok]
    if len(z) < 3:
        raise ValueError(f"fit_surface: {len(z)} usable trials, need at least 3")
    lx, ly = np.log(lr), np.log(wd)
    x0, xr = lx.min(), max(np.ptp(lx), 1e-12)
    y0, yr = ly.min(), max(np.ptp(ly), 1e-12)
    xs, ys = (lx - x0) / xr, (ly - y0) / yr
    if bandwidth is None:
        scores = []
        for h in BANDWIDTHS:
            pred = _quiet(_local_linear, xs, ys, z, xs, ys, h, True)
            scores.append(np.nanmean((pred - z) ** 2) if np.isfinite(pred).all() else np.inf)
        bandwidth = BANDWIDTHS[int(np.argmin(scores))]
    gx, gy = np.linspace(0, 1, n_eval), np.linspace(0, 1, n_eval)
    X, Y = np.meshgrid(gx, gy, indexing="ij")
    E = _quiet(_local_linear, xs, ys, z, X.ravel(), Y.ravel(), bandwidth).reshape(X.shape)
    near = np.sqrt(
        ((xs[None, :] - X.ravel()[:, None]) ** 2 + (ys[None, :] - Y.ravel()[:, None]) ** 2).min(1)
    ).reshape(X.shape)
    E = np.where(near <= 2 * bandwidth, np.clip(E, 0.0, 1.0), np.nan)
    lrs = np.exp(x0 + gx * xr) if np.ptp(lx) > 0 else np.exp(np.full(n_eval, x0))
    wds = np.exp(y0 + gy * yr) if np.ptp(ly) > 0 else np.exp(np.full(n_eval, y0))
    points = pd.DataFrame({"lr": lr, "weight_decay": wd, "error": z})
    return Surface(lrs, wds, E, float(bandwidth), points)


def surface_slope_interval(
    s: Surface, reps: int = 200, seed: int = 0, level: float = 0.95, refine: bool = True
) -> tuple[float, float]:
    """Percentile interval of the surface's coupling slope over bootstrap resamples of its trials
    (same bandwidth); ``(nan, nan)`` below :data:`MIN_SURFACE_TRIALS` trials."""
    if s.n < MIN_SURFACE_TRIALS or reps < 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    p = s.points
    slopes = []
    for _ in range(reps):
        idx = rng.integers(0, s.n, s.n)
        try:
            b = fit_surface(p.lr.values[idx], p.weight_decay.values[idx], p.error.values[idx],
                            len(s.lrs), s.bandwidth)  # fmt: skip
        except ValueError:
            continue
        slopes.append(_quiet(coupling_slope, b.lrs, b.wds, b.E, refine))
    slopes = np.array([x for x in slopes if np.isfinite(x)])
    if slopes.size == 0:
        return float("nan"), float("nan")
    a = 100 * (1 - level) / 2
    return float(np.percentile(slopes, a)), float(np.percentile(slopes, 100 - a))


def variant_surface(frame: pd.DataFrame, variant: str, metric: str = "test_error") -> Surface:
    """:func:`fit_surface` on one variant's trials of a tidy frame."""
    sub = frame[(frame["variant"] == variant) & frame[metric].notna()]
    return fit_surface(sub["lr"], sub["weight_decay"], sub[metric])


# --------------------------------------------------------------------------------------------
# The decoupled / independent identity


def identity_pairs() -> list[tuple[str, str]]:
    """``[(lr_form, eta_form)]``: the weight-decay forms (registry) that shrink by ``lr_t * wd``
    and by ``eta_t * wd``; the first at ``(a, lam)`` equals the second at ``(a, a * lam)``."""
    forms = registry.decay_forms()
    lr_forms = [n for n, f in forms.items() if f.decoupled and f.shrink == "lr" and not f.penalty]
    eta_forms = [n for n, f in forms.items() if f.decoupled and f.shrink == "eta"]
    return [(a, b) for a in lr_forms for b in eta_forms]


IDENTITY_COLUMNS = [
    "optimizer", "lr", "weight_decay_lr_form", "weight_decay_eta_form", "seed",
    "error_lr_form", "error_eta_form", "difference",
]  # fmt: skip


def identity_table(frame: pd.DataFrame, metric: str = "test_error") -> pd.DataFrame:
    """Every equivalent (lr form, eta form) cell x seed of one experiment's tidy frame:
    ``difference`` = eta form minus lr form (the two are the same algorithm)."""
    rows = []
    for opt in dict.fromkeys(frame["optimizer"]):
        for lr_form, eta_form in identity_pairs():
            a = frame[(frame["variant"] == f"{opt}/{lr_form}") & frame[metric].notna()]
            b = frame[(frame["variant"] == f"{opt}/{eta_form}") & frame[metric].notna()]
            if a.empty or b.empty:
                continue
            a = a.groupby(["lr", "weight_decay", "seed"], as_index=False)[metric].mean()
            b = b.groupby(["lr", "weight_decay", "seed"], as_index=False)[metric].mean()
            for r in a.itertuples(index=False):
                hit = b[np.isclose(b["lr"], r.lr, rtol=1e-6, atol=0)
                        & np.isclose(b["weight_decay"], r.lr * r.weight_decay, rtol=1e-4, atol=0)
                        & (b["seed"] == r.seed)]  # fmt: skip
                for h in hit.itertuples(index=False):
                    ea, eb = getattr(r, metric), getattr(h, metric)
                    rows.append(
                        [opt, r.lr, r.weight_decay, h.weight_decay, r.seed, ea, eb, eb - ea]
                    )
    return pd.DataFrame(rows, columns=IDENTITY_COLUMNS)


# --------------------------------------------------------------------------------------------
# Per-variant tables


def eval_size(
    frame: pd.DataFrame, metric: str = "test_error", n_eval: int | None = None
) -> tuple[int, str]:
    """``(n, source)``: the evaluation-set size for the standard errors: ``given``, ``inferred``
    from the error values (:func:`infer_eval_size`) or the MNIST-1D ``default``."""
    if n_eval:
        return int(n_eval), "given"
    vals = (
        frame.loc[~frame["diverged"].astype(bool), metric] if "diverged" in frame else frame[metric]
    )
    n = infer_eval_size(vals)
    return (n, "inferred") if n else (MNIST1D_TEST_SIZE, "default")


def _fmt_slopes(slopes: np.ndarray) -> str:
    return ";".join("nan" if not np.isfinite(s) else f"{s:.4g}" for s in slopes)


def _near_optimal_numbers(
    E: np.ndarray, tol: float, rel_tol: float | None, threshold: float
) -> dict:
    best, e0 = _best_and_smallest_wd(E)
    return {
        "near_optimal_fraction": near_optimal_fraction(E, tol),
        "near_optimal_cells": int(near_optimal_mask(E, tol).sum()),
        "near_optimal_fraction_abs": near_optimal_fraction_absolute(E, threshold),
        "near_optimal_cells_abs": int((np.isfinite(E) & (E - best <= threshold + 1e-12)).sum()),
        "near_optimal_threshold": threshold,
        "near_optimal_fraction_rel": (
            near_optimal_fraction_relative(E, rel_tol) if rel_tol is not None else float("nan")
        ),
        "rel_tol": float("nan") if rel_tol is None else float(rel_tol),
        "wd_gain_resolved": bool(e0 - best > threshold),
    }


def variant_metrics(
    frame: pd.DataFrame,
    variant: str,
    metric: str = "test_error",
    tol: float = NEAR_OPTIMAL_TOL,
    reps: int = 200,
    seed: int = 0,
    refine: bool = True,
    separability_log: bool = False,
    cells: pd.DataFrame | None = None,
    rel_tol: float | None = None,
    abs_tol: float = 0.0,
    n_eval: int | None = None,
    chance: float | None = None,
    n_eval_source: str | None = None,
) -> dict:
    """Every number for one variant of a tidy frame (one experiment) on its grid, as a dict.

    A valley tracer's variant (``sweep=valley``): the valley and its slope use every measured
    point of each row (:func:`valley` with ``measured``); the other numbers, the coarse grid."""
    cells = aggregate(frame, metric) if cells is None else cells
    traced = is_valley(frame[frame["variant"] == variant])
    all_cells = cells
    if traced:
        cells = aggregate(coarse(frame), metric)
    n_source = n_eval_source
    if n_source is None:
        n_eval, n_source = eval_size(frame, metric, n_eval)
    if chance is None:
        chance = chance_level(frame["data"].iloc[0]) if "data" in frame and len(frame) else np.nan
    lrs, wds, E = grid(cells, variant)
    _, _, D = grid(cells, variant, value="diverged")
    _, _, N = grid(cells, variant, value="count")
    _, _, SD = grid(cells, variant, value="std")
    i, j = np.unravel_index(np.nanargmin(E), E.shape)
    v = (
        valley(*grid(all_cells, variant), refine, measured=traced)
        if traced
        else valley(lrs, wds, E, refine)
    )
    slope, _ = _slope(v)
    seeds, slrs, swds, S = seed_grids(frame, variant, metric)
    lo, hi = bootstrap_coupling_slope(slrs, swds, S, reps, seed, refine=refine, measured=traced)
    per_seed = seed_slopes(slrs, swds, S, refine, measured=traced)
    ok_seed = per_seed[np.isfinite(per_seed)]
    measured = np.isfinite(E)
    n_seeds = len(seeds)
    best, e0 = _best_and_smallest_wd(E)
    gain = e0 - best
    threshold = max(float(abs_tol), 2 * cell_standard_error(best, n_eval, n_seeds))
    margin = max(CHANCE_MARGIN, 2 * cell_standard_error(chance, n_eval, n_seeds))
    Esep = np.where(D >= 1, np.nan, E)
    rows, cols = informative_lines(Esep, chance, margin)
    t1, p1 = transfer_regret(lrs, wds, E, 1)
    t2, p2 = transfer_regret(lrs, wds, E, 2)
    norm = gain if gain > 0 else float("nan")
    return {
        "variant": variant,
        "optimizer": variant.split("/")[0],
        "decay": variant.split("/")[-1],
        "best_error": float(E[i, j]),
        "best_error_std": float(SD[i, j]),
        "best_lr": float(lrs[i]),
        "best_weight_decay": float(wds[j]),
        "best_error_smallest_wd": e0,
        "wd_gain": float(gain),
        "coupling_slope": slope,
        "coupling_slope_lo": lo,
        "coupling_slope_hi": hi,
        "valley_rows": int(v["in_fit"].sum()),
        "valley_interior": bool(v.loc[v["in_fit"], "interior"].all() and v["in_fit"].sum() >= 2),
        "near_optimal_fraction": near_optimal_fraction(E, tol),
        "separability": separability(Esep, separability_log, chance, margin),
        "trials_to_near_optimal": trials_to_near_optimal(E, tol),
        "diverged_fraction": float(np.nansum(D * N) / np.nansum(N)),
        "n_lr": int(len(lrs)),
        "n_wd": int(len(wds)),
        "n_cells": int(measured.sum()),
        "n_seeds": int(n_seeds),
        "n_trials": int(np.nansum(N)),
        "tol": tol,
        "metric": metric,
        # added: how each number above is read, and the numbers that resolve a basin
        "analysis_grid": "grid",
        "coupling_slope_interval": "bootstrap" if np.isfinite(lo) else "none",
        "coupling_slope_seeds": _fmt_slopes(per_seed),
        "coupling_slope_seed_min": float(ok_seed.min()) if ok_seed.size else float("nan"),
        "coupling_slope_seed_max": float(ok_seed.max()) if ok_seed.size else float("nan"),
        "coupling_slope_seed_n": int(ok_seed.size),
        **_near_optimal_numbers(E, tol, rel_tol, threshold),
        "n_eval": int(n_eval),
        "n_eval_source": n_source,
        "transfer_regret_1": t1,
        "transfer_regret_1_norm": t1 / norm,
        "transfer_pairs_1": p1,
        "transfer_regret_2": t2,
        "transfer_regret_2_norm": t2 / norm,
        "transfer_pairs_2": p2,
        "separability_all": separability(Esep, separability_log),
        "separability_rows": int(rows.sum()),
        "separability_cols": int(cols.sum()),
        "chance": float(chance) if chance is not None else float("nan"),
    }


def surface_metrics(
    frame: pd.DataFrame,
    variant: str,
    metric: str = "test_error",
    tol: float = NEAR_OPTIMAL_TOL,
    reps: int = 200,
    seed: int = 0,
    refine: bool = True,
    separability_log: bool = False,
    rel_tol: float | None = None,
    abs_tol: float = 0.0,
    n_eval: int | None = None,
    chance: float | None = None,
    surface: Surface | None = None,
    n_eval_source: str | None = None,
) -> dict:
    """The numbers of :func:`variant_metrics` for scattered trials: best trial as measured, the
    rest on the fitted surface, or nan below :data:`MIN_SURFACE_TRIALS` trials (module
    docstring). Same keys, ``analysis_grid`` = ``surface`` (or ``none``)."""
    sub = frame[(frame["variant"] == variant) & frame[metric].notna()]
    n_source = n_eval_source
    if n_source is None:
        n_eval, n_source = eval_size(frame, metric, n_eval)
    if chance is None:
        chance = chance_level(frame["data"].iloc[0]) if "data" in frame and len(frame) else np.nan
    b = sub.loc[sub[metric].idxmin()]
    nan = float("nan")
    out = dict.fromkeys(_KEYS, nan)
    out.update(
        variant=variant,
        optimizer=variant.split("/")[0],
        decay=variant.split("/")[-1],
        best_error=float(b[metric]),
        best_error_std=nan,
        best_lr=float(b["lr"]),
        best_weight_decay=float(b["weight_decay"]),
        valley_rows=0,
        valley_interior=False,
        trials_to_near_optimal=nan,
        diverged_fraction=float(sub["diverged"].mean()),
        n_lr=int(sub["lr"].nunique()),
        n_wd=int(sub["weight_decay"].nunique()),
        n_cells=int(len(sub[["lr", "weight_decay"]].drop_duplicates())),
        n_seeds=int(sub["seed"].nunique()),
        n_trials=int(len(sub)),
        tol=tol,
        metric=metric,
        analysis_grid="none",
        coupling_slope_interval="none",
        coupling_slope_seeds="",
        coupling_slope_seed_n=0,
        near_optimal_cells=0,
        near_optimal_cells_abs=0,
        rel_tol=nan if rel_tol is None else float(rel_tol),
        wd_gain_resolved=False,
        n_eval=int(n_eval),
        n_eval_source=n_source,
        transfer_pairs_1=0,
        transfer_pairs_2=0,
        separability_rows=0,
        separability_cols=0,
        chance=float(chance),
    )
    if len(sub) < MIN_SURFACE_TRIALS:
        return out
    s = surface if surface is not None else variant_surface(frame, variant, metric)
    E = s.E
    v = valley(s.lrs, s.wds, E, refine)
    slope, _ = _slope(v)
    lo, hi = surface_slope_interval(s, reps, seed, refine=refine)
    best, e0 = _best_and_smallest_wd(E)
    threshold = max(float(abs_tol), 2 * cell_standard_error(best, n_eval, 1))
    margin = max(CHANCE_MARGIN, 2 * cell_standard_error(chance, n_eval, 1))
    rows, cols = informative_lines(E, chance, margin)
    out.update(
        best_error_smallest_wd=e0,
        wd_gain=e0 - best,
        coupling_slope=slope,
        coupling_slope_lo=lo,
        coupling_slope_hi=hi,
        valley_rows=int(v["in_fit"].sum()),
        valley_interior=bool(v.loc[v["in_fit"], "interior"].all() and v["in_fit"].sum() >= 2),
        separability=separability(E, separability_log, chance, margin),
        analysis_grid="surface",
        coupling_slope_interval="bootstrap over trials" if np.isfinite(lo) else "none",
        **_near_optimal_numbers(E, tol, rel_tol, threshold),
        separability_all=separability(E, separability_log),
        separability_rows=int(rows.sum()),
        separability_cols=int(cols.sum()),
    )
    return out


def variant_metrics_keys() -> list[str]:
    """The columns of metrics.csv that :func:`variant_metrics` fills, in order."""
    return list(_KEYS)


_KEYS = (
    "variant", "optimizer", "decay", "best_error", "best_error_std", "best_lr",
    "best_weight_decay", "best_error_smallest_wd", "wd_gain", "coupling_slope",
    "coupling_slope_lo", "coupling_slope_hi", "valley_rows", "valley_interior",
    "near_optimal_fraction", "separability", "trials_to_near_optimal", "diverged_fraction",
    "n_lr", "n_wd", "n_cells", "n_seeds", "n_trials", "tol", "metric", "analysis_grid",
    "coupling_slope_interval", "coupling_slope_seeds", "coupling_slope_seed_min",
    "coupling_slope_seed_max", "coupling_slope_seed_n", "near_optimal_cells", "near_optimal_fraction_abs", "near_optimal_cells_abs",
    "near_optimal_threshold", "near_optimal_fraction_rel", "rel_tol", "wd_gain_resolved",
    "n_eval", "n_eval_source", "transfer_regret_1", "transfer_regret_1_norm",
    "transfer_pairs_1", "transfer_regret_2", "transfer_regret_2_norm", "transfer_pairs_2",
    "separability_all", "separability_rows", "separability_cols", "chance",
)  # fmt: skip

IDENTITY_METRICS = (
    "identity_cells", "identity_pairs", "identity_max_abs_diff", "identity_rms_diff",
    "identity_slope_diff", "identity_slope_diff_seed_min", "identity_slope_diff_seed_max",
)  # fmt: skip


def _identity_columns(
    frame: pd.DataFrame, table: pd.DataFrame, metrics: pd.DataFrame, metric: str, refine: bool
) -> pd.DataFrame:
    """The identity-check columns of metrics.csv, filled on both variants of each pair."""
    out = metrics.copy()
    for col in IDENTITY_METRICS:
        out[col] = np.nan
    grid_mode = (metrics["analysis_grid"] == "grid").all() if len(metrics) else False
    for opt in dict.fromkeys(frame["optimizer"]):
        for lr_form, eta_form in identity_pairs():
            va, vb = f"{opt}/{lr_form}", f"{opt}/{eta_form}"
            ia, ib = out.index[out["variant"] == va], out.index[out["variant"] == vb]
            if not len(ia) or not len(ib):
                continue
            part = table[table["optimizer"] == opt]
            vals = {
                "identity_cells": float(len(part[["lr", "weight_decay_lr_form"]].drop_duplicates())),
                "identity_pairs": float(len(part)),
                "identity_max_abs_diff": float(part["difference"].abs().max()) if len(part) else np.nan,
                "identity_rms_diff": (
                    float(np.sqrt((part["difference"] ** 2).mean())) if len(part) else np.nan
                ),
                "identity_slope_diff": float(out.loc[ib[0], "coupling_slope"] - out.loc[ia[0], "coupling_slope"]),
            }  # fmt: skip
            if grid_mode:
                sa = seed_grids(frame, va, metric)
                sb = seed_grids(frame, vb, metric)
                common = np.intersect1d(sa[0], sb[0])
                d = (seed_slopes(*sb[1:3], sb[3][np.searchsorted(sb[0], common)], refine)
                     - seed_slopes(*sa[1:3], sa[3][np.searchsorted(sa[0], common)], refine))  # fmt: skip
                d = d[np.isfinite(d)]
                if d.size:
                    vals["identity_slope_diff_seed_min"] = float(d.min())
                    vals["identity_slope_diff_seed_max"] = float(d.max())
            for col, val in vals.items():
                out.loc[[ia[0], ib[0]], col] = val
    return out


def metrics_table(
    frame: pd.DataFrame,
    metric: str = "test_error",
    variants: list[str] | None = None,
    surfaces: dict[str, Surface] | None = None,
    **kw,
) -> pd.DataFrame:
    """One row per variant (paper order) of one experiment's tidy frame: :func:`variant_metrics`
    on a grid, :func:`surface_metrics` when ``surfaces`` is given (scattered trials), plus the
    identity-check columns."""
    mixed = group_columns(frame)
    if mixed:
        raise ValueError(
            f"frame: mixes several {'/'.join(mixed)} values; analyze each part of "
            "analysis.load.split_groups(frame) on its own"
        )
    variants = variants or variants_in_order(frame)
    kw["n_eval"], kw["n_eval_source"] = eval_size(frame, metric, kw.get("n_eval"))
    if surfaces is None:
        cells = aggregate(frame, metric)
        rows = [variant_metrics(frame, v, metric, cells=cells, **kw) for v in variants]
    else:
        rows = [surface_metrics(frame, v, metric, surface=surfaces.get(v), **kw) for v in variants]
    table = pd.DataFrame(rows, columns=list(_KEYS))
    table = _identity_columns(
        frame, identity_table(frame, metric), table, metric, kw.get("refine", True)
    )
    return _theory_columns(frame, table)


THEORY_METRICS = (
    "predicted_slope", "slope_vs_predicted", "angle_ratio_median", "equilibrated_fraction",
)  # fmt: skip


def _theory_columns(frame: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """The scale-invariance columns of metrics.csv (:mod:`analysis.theory`): the predicted
    slope, measured minus predicted, and, when the trials carry the measured angles, the
    median measured/predicted angle over equilibrated trials and the equilibrated share."""
    from analysis.theory import theory_metrics, trial_theory

    th = theory_metrics(trial_theory(frame), list(metrics["variant"])).set_index("variant")
    out = metrics.copy()
    for col in ("predicted_slope", "angle_ratio_median", "equilibrated_fraction"):
        out[col] = out["variant"].map(th[col]).astype(float)
    out["slope_vs_predicted"] = out["coupling_slope"].astype(float) - out["predicted_slope"]
    cols = [c for c in out if c not in THEORY_METRICS] + list(THEORY_METRICS)
    return out[cols]


def regret_table(
    cells: pd.DataFrame, variants: list[str] | None = None, tol: float = NEAR_OPTIMAL_TOL
) -> pd.DataFrame:
    """Long table ``variant, k, regret, regret_normalized, expected_best_error, p_near_optimal``
    for k = 1..N cells of each variant's seed-mean grid (``regret_normalized`` = regret /
    ``wd_gain``, nan when decay gains nothing)."""
    rows = []
    for v in variants or variants_in_order(cells):
        _, _, E = grid(cells, v)
        rows += _regret_rows(v, E, tol)
    return pd.DataFrame(rows, columns=REGRET_COLUMNS)


REGRET_COLUMNS = [
    "variant", "k", "regret", "regret_normalized", "expected_best_error", "p_near_optimal",
]  # fmt: skip


def _regret_rows(variant: str, E: np.ndarray, tol: float) -> list[dict]:
    regret = random_search_regret(E)
    hit = hit_probability(E, tol)
    best, e0 = _best_and_smallest_wd(E)
    gain = e0 - best if e0 - best > 0 else float("nan")
    return [
        {
            "variant": variant,
            "k": k,
            "regret": r,
            "regret_normalized": r / gain,
            "expected_best_error": best + r,
            "p_near_optimal": p,
        }
        for k, (r, p) in enumerate(zip(regret, hit), start=1)
    ]


def regret_seed_table(
    frame: pd.DataFrame, variants: list[str] | None = None, metric: str = "test_error"
) -> pd.DataFrame:
    """Long table ``variant, seed, k, regret, regret_normalized``: the random-search regret of
    each seed's own grid; normalized by the seed-mean grid's ``wd_gain`` (one scale per
    variant, so the seeds' band is the same shape in both units)."""
    cells = aggregate(frame, metric)
    rows = []
    for v in variants or variants_in_order(frame):
        _, _, E = grid(cells, v)
        best, e0 = _best_and_smallest_wd(E)
        gain = e0 - best if e0 - best > 0 else float("nan")
        seeds, _, _, S = seed_grids(frame, v, metric)
        for s, G in zip(seeds, S):
            for k, r in enumerate(random_search_regret(G), start=1):
                rows.append(
                    {"variant": v, "seed": int(s), "k": k, "regret": r,
                     "regret_normalized": r / gain}
                )  # fmt: skip
    return pd.DataFrame(rows, columns=["variant", "seed", "k", "regret", "regret_normalized"])


def valley_table(
    cells: pd.DataFrame,
    variants: list[str] | None = None,
    refine: bool = True,
    measured: bool = False,
) -> pd.DataFrame:
    """Long table of the valley (best wd per lr) of each variant, with ``in_fit`` marked
    (``measured``: each row on its own measured cells, see :func:`valley`)."""
    parts = []
    for v in variants or variants_in_order(cells):
        lrs, wds, E = grid(cells, v)
        val = valley(lrs, wds, E, refine, measured)
        val.insert(0, "variant", v)
        parts.append(val)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def surface_valley_table(surfaces: dict[str, Surface], refine: bool = True) -> pd.DataFrame:
    """:func:`valley_table` on fitted surfaces."""
    parts = []
    for v, s in surfaces.items():
        val = valley(s.lrs, s.wds, s.E, refine)
        val.insert(0, "variant", v)
        parts.append(val)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
