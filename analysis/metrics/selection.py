"""Selection and noise: choose on validation, score on test; how noisy a cell mean is; seed
bootstrap intervals.

Every "best" is chosen on the selection metric (``final_val_error``, the validation error of the
weights that are tested) and reported on the metric (``test_error``). With two or more seeds the numbers that compare a choice with another (the wd
gain, the transfer regret, each row's gain) are also **cross-fit**: for each seed ``h``, choose
on the other seeds' validation errors and score on seed ``h``'s test error, then average over
``h``. A seed's validation and test errors share its training noise, so choosing and scoring on
the same seeds rewards the cell whose seeds were lucky; holding the scored seed out removes that.

Seed-bootstrap intervals resample whole seeds (every cell of a drawn seed together) with
replacement, ``reps`` times from a fixed RNG, and take percentiles. :func:`seed_bootstrap` gives
the interval of **any** statistic of the seeds (call it with a function of the drawn seed
indices); :func:`resample_counts` the same resamples as counts, for vectorized statistics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from analysis.metrics.options import BOOTSTRAP_REPS, MIN_SEEDS_FOR_INTERVAL

MNIST1D_TEST_SIZE = 1000  # the data config's default: 5,000 samples, 80% for training


# --------------------------------------------------------------------------------------------
# Seed grids of the reported and the selection metric


@dataclass
class Grids:
    """One variant's trials as seed grids on shared axes: ``test[s, i, j]`` the reported metric
    and ``select[s, i, j]`` the selection metric of seed ``s`` at lr ``i``, wd ``j`` (nan: not
    run; a diverged trial counts 1.0)."""

    variant: str
    lrs: np.ndarray
    wds: np.ndarray
    seeds: np.ndarray
    test: np.ndarray
    select: np.ndarray
    metric: str
    selection: str  # the metric choices are made on

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def on_selection(self) -> bool:
        """Whether choices are made on another metric than the reported one."""
        return self.selection != self.metric

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """``(T, V)``: seed-mean grids of the reported and the selection metric."""
        return _nanmean0(self.test), _nanmean0(self.select)

    def measured(self) -> np.ndarray:
        """Cells with at least one trial."""
        return np.isfinite(self.test).any(0)


def _nanmean0(X: np.ndarray) -> np.ndarray:
    fin = np.isfinite(X)
    n = fin.sum(0)
    with np.errstate(all="ignore"):
        return np.where(n > 0, np.where(fin, X, 0.0).sum(0) / np.maximum(n, 1), np.nan)


# The validation error of the weights that are tested (``final_val_error``) is what choices are
# made on; ``val_error`` (the lowest over the evaluations, an early-stopping optimum of a noisy
# curve) stands in for results that lack it, e.g. runs written by other code.
SELECTION_FALLBACKS = ("final_val_error", "val_error")


def selection_column(frame: pd.DataFrame, metric: str, selection: str) -> str:
    """The column choices are made on: ``selection`` where every trial has it, else the next of
    :data:`SELECTION_FALLBACKS`, else ``metric`` itself."""
    order = [selection] + [c for c in SELECTION_FALLBACKS if c != selection]
    for col in order:
        if col == metric:
            return metric
        if col in frame and not frame[col].isna().any():
            return col
    return metric


def variant_grids(
    frame: pd.DataFrame,
    variant: str,
    metric: str = "test_error",
    selection: str = "final_val_error",
) -> Grids:
    """The seed grids of one variant (its trials in ``frame``). Choices fall back as
    :func:`selection_column` says when ``selection`` is missing for some trial that has
    ``metric``."""
    sub = frame[(frame["variant"] == variant) & frame[metric].notna()]
    if sub.empty:
        raise ValueError(f"variant={variant}: no trials with {metric}")
    use = selection_column(sub, metric, selection)
    cols = list(dict.fromkeys([metric, use]))
    g = sub.groupby(["seed", "lr", "weight_decay"], as_index=False)[cols].mean()
    lrs = np.sort(g["lr"].unique())
    wds = np.sort(g["weight_decay"].unique())
    seeds = np.sort(g["seed"].unique())
    shape = (len(seeds), len(lrs), len(wds))
    si = np.searchsorted(seeds, g["seed"].to_numpy())
    li = np.searchsorted(lrs, g["lr"].to_numpy())
    wi = np.searchsorted(wds, g["weight_decay"].to_numpy())
    T = np.full(shape, np.nan)
    T[si, li, wi] = g[metric].to_numpy(float)
    V = np.full(shape, np.nan)
    V[si, li, wi] = g[use].to_numpy(float)
    if use != metric and np.array_equal(V, T, equal_nan=True):
        use = metric  # the same numbers twice: one evaluation set, not two
    return Grids(variant, lrs.astype(float), wds.astype(float), seeds, T, V, metric, use)


# --------------------------------------------------------------------------------------------
# Seed bootstrap


class Interval(NamedTuple):
    """A percentile interval; ``values`` holds the statistic on each resample (finite ones)."""

    lo: float
    hi: float
    values: np.ndarray


NO_INTERVAL = Interval(float("nan"), float("nan"), np.array([]))


def resample_picks(n_seeds: int, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> np.ndarray:
    """``[reps, n_seeds]`` seed indices drawn with replacement from ``default_rng(seed)``."""
    return np.random.default_rng(seed).integers(0, n_seeds, size=(max(int(reps), 0), n_seeds))


def resample_counts(n_seeds: int, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> np.ndarray:
    """The resamples of :func:`resample_picks` as ``[reps, n_seeds]`` counts (how often each
    seed was drawn): what vectorized statistics weight the seeds with."""
    picks = resample_picks(n_seeds, reps, seed)
    counts = np.zeros((len(picks), n_seeds))
    np.add.at(counts, (np.arange(len(picks))[:, None], picks), 1.0)
    return counts


def percentile_interval(values: np.ndarray, level: float = 0.95) -> Interval:
    """The central ``level`` percentile interval of the finite ``values``."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return NO_INTERVAL
    a = 100 * (1 - level) / 2
    return Interval(float(np.percentile(v, a)), float(np.percentile(v, 100 - a)), v)


def seed_bootstrap(
    statistic: Callable[[np.ndarray], float],
    n_seeds: int,
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
    level: float = 0.95,
    min_seeds: int = MIN_SEEDS_FOR_INTERVAL,
) -> Interval:
    """The seed-bootstrap percentile interval of an arbitrary statistic.

    ``statistic(idx)`` gets the drawn seed indices (an int array of length ``n_seeds``, with
    repeats; index into your own per-seed data) and returns a float (nan: undefined on that
    resample, left out). ``reps`` resamples from ``default_rng(seed)``, the same draws as
    :func:`resample_counts`. Below ``min_seeds`` seeds there is no interval (nan, nan): n seeds
    have only C(2n-1, n) distinct resamples."""
    if n_seeds < max(2, min_seeds) or reps < 1:
        return NO_INTERVAL
    vals = []
    with np.errstate(all="ignore"):
        for idx in resample_picks(n_seeds, reps, seed):
            try:
                vals.append(float(statistic(idx)))
            except (ValueError, FloatingPointError, ZeroDivisionError):
                vals.append(float("nan"))
    return percentile_interval(np.array(vals), level)


def weighted_means(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """``[B, ...]``: the mean over seeds of ``X[s, ...]`` weighted by ``W[b, s]``, ignoring nan
    (nan where no weighted seed has a value)."""
    fin = np.isfinite(X)
    num = np.tensordot(W, np.where(fin, X, 0.0), axes=(1, 0))
    den = np.tensordot(W, fin.astype(float), axes=(1, 0))
    with np.errstate(all="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


# --------------------------------------------------------------------------------------------
# Choices on a grid (vectorized over a leading batch axis)


def argmin_cells(M: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``[B]`` flat index of the least finite cell of each ``M[b]`` (inside ``mask``); -1 when
    there is none."""
    B = M.shape[0]
    flat = M.reshape(B, -1)
    ok = np.isfinite(flat)
    if mask is not None:
        ok &= np.asarray(mask, bool).reshape(1, -1)
    idx = np.where(ok, flat, np.inf).argmin(1)
    return np.where(ok.any(1), idx, -1)


def take(X: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``X`` (one grid, or ``[B, ...]`` grids) at flat indices ``idx[b]`` (nan where -1)."""
    flat = X.reshape(-1) if X.ndim == 2 else np.reshape(X, (X.shape[0], -1))
    safe = np.maximum(idx, 0)
    vals = flat[safe] if X.ndim == 2 else flat[np.arange(len(idx)), safe]
    return np.where(idx >= 0, vals, np.nan)


def row_argmin(M: np.ndarray) -> np.ndarray:
    """``[B, L]`` column of each row's least finite cell (-1 for a row without one)."""
    ok = np.isfinite(M)
    j = np.where(ok, M, np.inf).argmin(-1)
    return np.where(ok.any(-1), j, -1)


def smallest_wd_column(measured: np.ndarray) -> int:
    """The first wd column with a measured cell (E_0's column)."""
    return int(np.argmax(measured.any(axis=0)))


def first_measured(measured: np.ndarray) -> np.ndarray:
    """``[L]`` each row's smallest measured wd column (-1 for an empty row)."""
    return np.where(measured.any(1), np.argmax(measured, axis=1), -1)


# --------------------------------------------------------------------------------------------
# Cross-fitting


def crossfit(
    g: Grids,
    W: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
    add_select: np.ndarray | None = None,
    add_test: np.ndarray | None = None,
) -> np.ndarray:
    """Hold out each seed in turn: ``statistic(M, T)`` gets ``M[b]`` = the selection-metric
    mean over the other seeds (weighted by ``W[b]``, every copy of seed ``h`` left out) and
    ``T[b]`` = seed ``h``'s reported grid, and returns ``[B, ...]``; the results are averaged
    over the held-out seeds, weighted by how often each was drawn. ``add_select`` /
    ``add_test`` (``[B, L, W]``) are added to every seed's grids of resample ``b`` (a fresh
    draw of the evaluation sets' sampling error, see :func:`evaluation_noise`). Needs two
    distinct seeds per resample (nan otherwise)."""
    S = g.n_seeds
    B = W.shape[0]
    fin = np.isfinite(g.select)
    Vz = np.where(fin, g.select, 0.0)
    num = np.tensordot(W, Vz, axes=(1, 0))
    den = np.tensordot(W, fin.astype(float), axes=(1, 0))
    acc = wsum = None
    for h in range(S):
        wh = W[:, h]
        if not (wh > 0).any():
            continue
        d = den - wh[:, None, None] * fin[h]
        ok_d = d > 1e-12
        with np.errstate(all="ignore"):
            M = np.where(ok_d, (num - wh[:, None, None] * Vz[h]) / np.where(ok_d, d, 1), np.nan)
        if add_select is not None:
            M = M + add_select
        Th = np.broadcast_to(g.test[h], (B, *g.test.shape[1:]))
        if add_test is not None:
            Th = Th + add_test
        val = np.asarray(statistic(M, Th), float)
        wb = wh.reshape((-1,) + (1,) * (val.ndim - 1))
        ok = np.isfinite(val) & (wb > 0)
        part, wpart = np.where(ok, wb * val, 0.0), np.where(ok, wb, 0.0)
        acc = part if acc is None else acc + part
        wsum = wpart if wsum is None else wsum + wpart
    if acc is None:
        return np.full(B, np.nan)
    with np.errstate(all="ignore"):
        return np.where(wsum > 0, acc / np.where(wsum > 0, wsum, 1), np.nan)


def evaluation_noise(
    mean: np.ndarray, n_eval: int, reps: int, seed: int = 0, sd: float | None = None
) -> np.ndarray:
    """``[reps, L, W]``: fresh draws of an evaluation set's sampling error per cell,
    ``N(0, p (1 - p) / n_eval)`` at the cell's mean error ``p`` (0 for diverged or unmeasured
    cells), or ``N(0, sd^2)`` when ``sd`` is given (:func:`evaluation_variance`). Every seed of
    a cell is scored on the same evaluation set, so resampling seeds does not see this noise;
    bootstrap resamples add one draw each."""
    n = max(int(n_eval), 1)
    live = np.isfinite(mean) & (mean < 1.0)
    if sd is None:
        p = np.clip(np.nan_to_num(mean, nan=1.0), 0.5 / n, 1 - 0.5 / n)
        scale = np.where(live, np.sqrt(p * (1 - p) / n), 0.0)
    else:
        scale = np.where(live, float(sd), 0.0)
    return np.random.default_rng(seed).normal(0.0, 1.0, (max(int(reps), 0), *mean.shape)) * scale


def _at(T: np.ndarray, rows: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``T[b, rows[k], j[b, k]]`` (nan where j < 0)."""
    sub = T[:, rows, :]
    vals = np.take_along_axis(sub, np.maximum(j, 0)[:, :, None], axis=2)[..., 0]
    return np.where(j >= 0, vals, np.nan)


def gain_statistic(col0: int):
    """``statistic(M, T)`` for :func:`crossfit`: T at the cell chosen in column ``col0`` minus T
    at the cell chosen over the grid (both chosen on M)."""

    def stat(M: np.ndarray, T: np.ndarray) -> np.ndarray:
        mask = np.zeros(M.shape[1:], bool)
        mask[:, col0] = True
        return take(T, argmin_cells(M, mask)) - take(T, argmin_cells(M))

    return stat


def best_statistic(M: np.ndarray, T: np.ndarray) -> np.ndarray:
    """T at the cell chosen on M."""
    return take(T, argmin_cells(M))


def row_gain_statistic(j0: np.ndarray):
    """``statistic(M, T)``: each row's T at its smallest measured wd ``j0[i]`` minus T at the
    row's cell chosen on M (``[B, L]``)."""
    rows = np.arange(len(j0))

    def stat(M: np.ndarray, T: np.ndarray) -> np.ndarray:
        j = row_argmin(M)
        base = _at(T, rows, np.broadcast_to(j0, j.shape))
        return base - _at(T, rows, j)

    return stat


def transfer_statistic(pairs: list[tuple[int, int]]):
    """``statistic(M, T)``: mean over ordered row pairs ``(i, t)`` of T at row t in row i's
    chosen column minus T at row t's own chosen column (``[B]``)."""
    src = np.array([p[0] for p in pairs], int)
    dst = np.array([p[1] for p in pairs], int)

    def stat(M: np.ndarray, T: np.ndarray) -> np.ndarray:
        j = row_argmin(M)
        js, jt = j[:, src], j[:, dst]
        lost = _at(T, dst, np.where(jt >= 0, js, -1)) - _at(T, dst, jt)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(lost, axis=1)

    return stat


# --------------------------------------------------------------------------------------------
# The noise model


class Noise(NamedTuple):
    """``floor`` = 2 SE of the difference of two cell means; ``seed_sd`` the pooled seed-to-seed
    standard deviation of one trial (nan with one seed); ``eval_se`` the evaluation binomial's
    standard error; ``cells`` how many cells the seed variance is pooled over; ``model`` says
    what the floor contains."""

    floor: float
    seed_sd: float
    eval_se: float
    cells: int
    model: str


def cell_standard_error(p: float, n_eval: int, n_seeds: int = 1) -> float:
    """Binomial standard error ``sqrt(p (1 - p) / (n_eval * n_seeds))`` (of independent
    evaluation sets; one shared evaluation set: ``n_seeds=1``)."""
    p = min(max(float(p), 0.0), 1.0)
    return math.sqrt(p * (1 - p) / (max(int(n_eval), 1) * max(int(n_seeds), 1)))


def chi2_median_ratio(df: float) -> float:
    """median(chi2_df) / df (Wilson-Hilferty): turns a median of sample variances into a
    variance."""
    df = max(float(df), 1.0)
    return (1 - 2 / (9 * df)) ** 3


def valley_cells(V: np.ndarray) -> np.ndarray:
    """Cells next to each row's best (on the seed-mean grid ``V``): the row's best cell and its
    two wd neighbours."""
    near = np.zeros(V.shape, bool)
    j = row_argmin(V[None])[0]
    for i, jj in enumerate(j):
        if jj >= 0:
            near[i, max(jj - 1, 0) : jj + 2] = True
    return near & np.isfinite(V)


def pooled_seed_variance(X: np.ndarray, cells: np.ndarray) -> tuple[float, int]:
    """``(variance, cells used)``: the seed variance of one trial pooled robustly over
    ``cells`` (the median of the cells' sample variances, scaled to a variance), leaving out
    cells with a diverged trial (error 1.0) or fewer than two seeds."""
    fin = np.isfinite(X)
    n = fin.sum(0)
    use = cells & (n >= 2) & ~(np.where(fin, X, 0.0) >= 1.0).any(0)
    if not use.any():
        return float("nan"), 0
    with np.errstate(all="ignore"):
        var = np.nanvar(np.where(fin, X, np.nan), axis=0, ddof=1)
    v = var[use]
    df = float(np.median(n[use])) - 1
    return float(np.median(v) / chi2_median_ratio(df)), int(use.sum())


def noise_model(
    X: np.ndarray, p: float, n_eval: int, cells: np.ndarray, eval_var: float | None = None,
    eval_source: str = "evaluation binomial",
) -> Noise:  # fmt: skip
    """The noise of a cell mean of seed grids ``X[s, i, j]``: pooled seed variance over
    ``cells`` divided by the seeds, plus the evaluation binomial at error ``p`` on ``n_eval``
    samples (one evaluation set shared by every seed, so not divided), or ``eval_var`` when
    given (:func:`evaluation_variance`). ``floor`` = 2 SE of the difference of two such means.
    One seed: the evaluation noise only (never 0: ``p`` is kept at least half a sample from 0
    and 1)."""
    S = int(np.isfinite(X).any(axis=(1, 2)).sum())
    n = max(int(n_eval), 1)
    p = min(max(float(p), 0.5 / n), 1 - 0.5 / n) if np.isfinite(p) else 0.5
    eval_se = math.sqrt(p * (1 - p) / n)
    if eval_var is not None and np.isfinite(eval_var):
        eval_se = max(math.sqrt(eval_var), math.sqrt(0.25 / n**2))
    var, used = pooled_seed_variance(X, cells) if S >= 2 else (float("nan"), 0)
    if np.isfinite(var):
        se = math.sqrt(var / S + eval_se**2)
        model = f"seeds ({S}) + {eval_source}"
    else:
        se = eval_se
        model = f"{S} seed: no training-noise estimate, {eval_source} only"
    return Noise(2 * math.sqrt(2) * se, math.sqrt(var) if np.isfinite(var) else float("nan"),
                 eval_se, used, model)  # fmt: skip


def evaluation_variance(
    g: Grids, cells: np.ndarray, p_test: float, n_test: int, p_sel: float, n_sel: int
) -> tuple[float, float, str]:
    """``(var_test, var_selection, source)``: the variance of the evaluation sets' sampling
    error that every seed of a cell shares and neighbouring cells do not.

    The evaluation binomial ``p (1 - p) / n`` bounds it from above: two models scored on one set
    share the errors on its hard samples. With a validation and a test error per trial, it is
    measured: ``D = V - T`` of one trial cancels the training noise, so the spread of ``D``
    between neighbouring cells (robust: the median of squared differences of the seed-mean
    ``D`` of adjacent ``cells``) less its seed part (the pooled within-cell seed variance of
    ``D`` over the seeds) is the shared part of both sets, split between them in the ratio of
    their binomials and capped by them."""
    n_t, n_s = max(int(n_test), 1), max(int(n_sel), 1)
    pt = min(max(float(p_test), 0.5 / n_t), 1 - 0.5 / n_t) if np.isfinite(p_test) else 0.5
    ps = min(max(float(p_sel), 0.5 / n_s), 1 - 0.5 / n_s) if np.isfinite(p_sel) else 0.5
    bt, bs = pt * (1 - pt) / n_t, ps * (1 - ps) / n_s
    if not g.on_selection:
        return bt, bt, "evaluation binomial"
    Ds = g.select - g.test
    D = _nanmean0(Ds)
    use = cells & np.isfinite(D)
    diffs = []
    for a, b in ((use[:, :-1] & use[:, 1:], (slice(None), slice(None, -1), slice(None), slice(1, None))),
                 (use[:-1, :] & use[1:, :], (slice(None, -1), slice(None), slice(1, None), slice(None)))):  # fmt: skip
        d = D[b[0], b[1]] - D[b[2], b[3]]
        diffs.append(d[a])
    diffs = np.concatenate(diffs) if diffs else np.array([])
    if diffs.size < 4:
        return bt, bs, "evaluation binomial"
    q = float(np.median(diffs**2) / chi2_median_ratio(1)) / 2
    S = g.n_seeds
    s2 = pooled_seed_variance(Ds, use)[0] if S >= 2 else float("nan")
    shared = max(q - (s2 / S if np.isfinite(s2) else 0.0), 0.0)
    vt, vs = shared * bt / (bt + bs), shared * bs / (bt + bs)
    return min(vt, bt), min(vs, bs), "evaluation sets (measured from val - test)"


# --------------------------------------------------------------------------------------------
# Evaluation-set size


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


def eval_size(
    frame: pd.DataFrame, metric: str = "test_error", n_eval: int | None = None
) -> tuple[int, str]:
    """``(n, source)``: the evaluation-set size for the standard errors: ``given``, ``inferred``
    from the error values (:func:`infer_eval_size`) or the MNIST-1D ``default``."""
    if n_eval:
        return int(n_eval), "given"
    if metric not in frame:
        return MNIST1D_TEST_SIZE, "default"
    vals = (
        frame.loc[~frame["diverged"].astype(bool), metric] if "diverged" in frame else frame[metric]
    )
    n = infer_eval_size(vals)
    return (n, "inferred") if n else (MNIST1D_TEST_SIZE, "default")
