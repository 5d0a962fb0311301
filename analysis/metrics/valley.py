"""The valley and its slope: each lr row's best weight decay, and how it moves with the lr; and
separability, the additive (lr + wd) share of the landscape.

For each lr row ``i`` with a defined minimum (two or more measured cells, not all diverged, not
all equal): ``j*(i) = argmin_j E[i, j]`` and ``wd*(i) = wd[j*]``; with ``refine`` an interior
minimum moves to the vertex of the parabola through ``(log wd, E)`` at ``j*-1, j*, j*+1``
(clamped to half a cell either side). The slope ``d log wd* / d log lr`` is a weighted
least-squares fit over the rows that carry information: a row enters only when its **wd gain is
resolved** (what the row's best wd buys over its smallest wd, cross-fit over seeds, has a seed
interval above 0; below three seeds: it exceeds the noise floor) and its minimum is at most the
median of the grid's live cells (the network trains there); rows with an interior minimum are
preferred when two or more lrs have one. Rows are weighted by their precision, 1 / the seed
bootstrap variance of their ``log wd*`` (at least a cell's quantization); with fewer than three
seeds, equally.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from analysis.metrics.options import BOOTSTRAP_REPS, MIN_SEEDS_FOR_INTERVAL
from analysis.metrics.selection import percentile_interval, resample_counts, weighted_means
from harness import registry

CHANCE_MARGIN = 0.02

VALLEY_COLUMNS = (
    "lr", "best_wd", "best_error", "j", "interior", "informative", "gain", "resolved",
    "weight", "in_fit",
)  # fmt: skip


def _quiet(fn, *args, **kw):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kw)


def measured_columns(E: np.ndarray) -> list[np.ndarray]:
    """Each row's measured columns (a valley tracer's rows each have their own wds)."""
    return [np.nonzero(np.isfinite(row))[0] for row in np.asarray(E, float)]


def row_positions(
    M: np.ndarray, wds: np.ndarray, refine: bool = True, cols: list[np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Each row's minimum on a batch of grids ``M[b, i, j]``: ``j`` (grid column, -1 when the
    row has no defined minimum), ``pos`` (log wd*, refined; nan when undefined or wd* = 0),
    ``interior``, ``best`` (the row's least value) and ``informative`` (best <= the median of
    the grid's live cells). ``cols``: each row's own columns (measured rows)."""
    M = np.asarray(M, float)
    B, L, W = M.shape
    wds = np.asarray(wds, float)
    logw = np.log(np.where(wds > 0, wds, np.nan))
    out = {
        "j": np.full((B, L), -1),
        "pos": np.full((B, L), np.nan),
        "interior": np.zeros((B, L), bool),
        "best": np.full((B, L), np.nan),
    }
    ar = np.arange(B)
    for i in range(L):
        c = np.arange(W) if cols is None else np.asarray(cols[i], int)
        n = len(c)
        if n == 0:
            continue
        R = M[:, i, c]
        fin = np.isfinite(R)
        Rinf = np.where(fin, R, np.inf)
        jr = Rinf.argmin(1)
        mn = Rinf[ar, jr]
        mx = np.where(fin, R, -np.inf).max(1)
        ok = (fin.sum(1) >= 2) & (np.where(fin, R, 1.0) < 1.0).any(1) & (mx > mn)
        rw, rl = wds[c], logw[c]
        inter = (jr > 0) & (jr < n - 1) & (rw[jr] > 0)
        p = rl[jr]
        if refine and n >= 3:
            jm, jp = np.clip(jr - 1, 0, n - 1), np.clip(jr + 1, 0, n - 1)
            y0, y1, y2 = R[ar, jm], R[ar, jr], R[ar, jp]
            x0, x1, x2 = rl[jm], rl[jr], rl[jp]
            can = inter & np.isfinite(y0) & np.isfinite(y2) & (rw[jm] > 0)
            with np.errstate(all="ignore"):
                d1 = (y1 - y0) / (x1 - x0)
                d2 = (y2 - y1) / (x2 - x1)
                curv = (d2 - d1) / (x2 - x0)
                xv = 0.5 * (x0 + x1) - d1 / (2 * curv)
            xv = np.clip(xv, 0.5 * (x0 + x1), 0.5 * (x1 + x2))
            p = np.where(can & (curv > 0), xv, p)
        out["j"][:, i] = np.where(ok, c[jr], -1)
        out["pos"][:, i] = np.where(ok, p, np.nan)
        out["interior"][:, i] = ok & inter
        out["best"][:, i] = np.where(ok, mn, np.nan)
    alive = np.where(np.isfinite(M) & (M < 1.0), M, np.nan).reshape(B, -1)
    median = _quiet(np.nanmedian, alive, axis=1)
    median = np.where(np.isfinite(median), median, np.inf)
    out["informative"] = np.isfinite(out["best"]) & (out["best"] <= median[:, None])
    return out


def fit_rows(
    lrs: np.ndarray,
    wd_star: np.ndarray,
    interior: np.ndarray,
    informative: np.ndarray,
    resolved: np.ndarray,
) -> np.ndarray:
    """Which rows enter the slope fit: informative, resolved, ``wd* > 0``; only the interior
    ones when two or more lrs have an interior minimum."""
    base = informative & resolved & (np.asarray(wd_star) > 0)
    inner = base & interior
    return inner if len(np.unique(np.asarray(lrs)[inner])) >= 2 else base


def weighted_slope(
    x: np.ndarray, Y: np.ndarray, w: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(slope[B], intercept[B])`` of the weighted least-squares line through ``(x, Y[b])``
    (nan entries of Y left out; nan with fewer than two distinct x)."""
    x = np.asarray(x, float)
    Y = np.atleast_2d(np.asarray(Y, float))
    w = np.ones_like(x) if w is None else np.asarray(w, float)
    ok = np.isfinite(Y) & (w > 0)[None, :] & np.isfinite(x)[None, :]
    Wt = np.where(ok, w[None, :], 0.0)
    Y0 = np.where(ok, Y, 0.0)
    sw = Wt.sum(1)
    with np.errstate(all="ignore"):
        xm = (Wt * x).sum(1) / sw
        ym = (Wt * Y0).sum(1) / sw
        dx = np.where(ok, x[None, :] - xm[:, None], 0.0)
        sxx = (Wt * dx**2).sum(1)
        s = (Wt * dx * (Y0 - ym[:, None])).sum(1) / sxx
    distinct = np.array([len(np.unique(x[r])) >= 2 for r in ok])
    good = distinct & (sxx > 1e-300)
    s = np.where(good, s, np.nan)
    return s, np.where(good, ym - s * xm, np.nan)


def valley(
    lrs: np.ndarray,
    wds: np.ndarray,
    E: np.ndarray,
    refine: bool = True,
    measured: bool = False,
    resolved: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    floor: float = 0.0,
) -> pd.DataFrame:
    """The best weight decay of each lr row, and which rows the slope is fit over.

    Columns: ``lr, best_wd, best_error, j, interior, informative, gain, resolved, weight,
    in_fit`` (rows without a defined minimum left out). ``gain`` is the row's value at its
    smallest measured wd minus its best; ``resolved`` is given per lr row (aligned with
    ``lrs``) or, without it, ``gain > floor``. ``weights`` (per lr row) weight the fit (default
    equal). ``measured``: each row on its own measured cells (a valley tracer's rows).
    """
    lrs, wds, E = np.asarray(lrs, float), np.asarray(wds, float), np.asarray(E, float)
    if E.shape != (len(lrs), len(wds)):
        raise ValueError(f"E: shape {E.shape} does not match (len(lrs), len(wds))")
    cols = measured_columns(E) if measured else None
    r = row_positions(E[None], wds, refine, cols)
    j, pos = r["j"][0], r["pos"][0]
    has = j >= 0
    first = np.array([c[0] if len(c) else -1 for c in measured_columns(E)])
    base = np.where(first >= 0, E[np.arange(len(lrs)), np.maximum(first, 0)], np.nan)
    gain = base - r["best"][0]
    res = gain > floor if resolved is None else np.asarray(resolved, bool)
    w = np.ones(len(lrs)) if weights is None else np.asarray(weights, float)
    best_wd = np.where(np.isfinite(pos), np.exp(pos), 0.0)
    v = pd.DataFrame(
        {
            "lr": lrs,
            "best_wd": best_wd,
            "best_error": r["best"][0],
            "j": j,
            "interior": r["interior"][0],
            "informative": r["informative"][0],
            "gain": gain,
            "resolved": res,
            "weight": w,
        }
    )[has].reset_index(drop=True)
    v["in_fit"] = fit_rows(v["lr"], v["best_wd"], v["interior"].to_numpy(),
                           v["informative"].to_numpy(), v["resolved"].to_numpy())  # fmt: skip
    return v.astype({"interior": bool, "informative": bool, "resolved": bool, "in_fit": bool})


def valley_fit_rows(v: pd.DataFrame) -> pd.DataFrame:
    """The rows of :func:`valley` the coupling slope is fit over (``in_fit``)."""
    return v[v["in_fit"]]


def slope_of(v: pd.DataFrame) -> tuple[float, float]:
    """``(slope, intercept)`` of the weighted fit over a :func:`valley` table's ``in_fit``
    rows."""
    rows = valley_fit_rows(v)
    if rows["lr"].nunique() < 2:
        return float("nan"), float("nan")
    w = rows["weight"].to_numpy(float) if "weight" in rows else None
    s, c = weighted_slope(np.log(rows["lr"].to_numpy(float)),
                          np.log(rows["best_wd"].to_numpy(float)), w)  # fmt: skip
    return float(s[0]), float(c[0])


def coupling_slope(
    lrs: np.ndarray, wds: np.ndarray, E: np.ndarray, refine: bool = True, measured: bool = False
) -> float:
    """Slope of log(best wd) against log(lr) along the valley of one grid, rows resolved when
    decay gains anything on it (module docstring); nan with fewer than two rows."""
    return slope_of(valley(lrs, wds, E, refine, measured))[0]


def coupling_fit(
    lrs: np.ndarray, wds: np.ndarray, E: np.ndarray, refine: bool = True, measured: bool = False
) -> tuple[float, float]:
    """``(slope, intercept)`` of ``log wd* = intercept + slope * log lr`` (for drawing the fit)."""
    return slope_of(valley(lrs, wds, E, refine, measured))


def _batch_slopes(
    lrs: np.ndarray,
    wds: np.ndarray,
    M: np.ndarray,
    in_fit: np.ndarray,
    weights: np.ndarray | None,
    refine: bool,
    cols: list[np.ndarray] | None,
) -> np.ndarray:
    pos = row_positions(M, wds, refine, cols)["pos"]
    pos = np.where(np.asarray(in_fit, bool)[None, :], pos, np.nan)
    return weighted_slope(np.log(lrs), pos, weights)[0]


def resample_positions(
    wds: np.ndarray, S: np.ndarray, counts: np.ndarray, refine: bool = True, cols=None,
    chunk: int = 250, add: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """``[B, L]`` each row's log wd* on the seed-weighted mean grid of every resample (plus
    ``add[b]``, a draw of the evaluation noise, when given)."""
    parts = []
    for k in range(0, len(counts), chunk):
        M = weighted_means(S, counts[k : k + chunk])
        if add is not None:
            M = M + add[k : k + chunk]
        parts.append(row_positions(M, wds, refine, cols)["pos"])
    return np.concatenate(parts) if parts else np.zeros((0, S.shape[1]))


def bootstrap_coupling_slope(
    lrs: np.ndarray,
    wds: np.ndarray,
    S: np.ndarray,
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
    level: float = 0.95,
    refine: bool = True,
    min_seeds: int = MIN_SEEDS_FOR_INTERVAL,
    measured: bool = False,
    in_fit: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile interval of the coupling slope over seed resamples.

    ``S[s, i, j]`` holds seed s's grid. Each resample draws ``len(S)`` seeds with replacement
    and takes the nan-mean of their grids; the slope is fit over the rows ``in_fit`` (per lr
    row; default: those of the seed-mean grid's valley) with ``weights``. ``(nan, nan)`` with
    fewer than ``min_seeds`` seeds."""
    S = np.asarray(S, float)
    lrs, wds = np.asarray(lrs, float), np.asarray(wds, float)
    if S.ndim != 3 or S.shape[0] < max(2, min_seeds) or reps < 1:
        return float("nan"), float("nan")
    mean = _quiet(np.nanmean, S, axis=0)
    cols = measured_columns(mean) if measured else None
    if in_fit is None:
        v = valley(lrs, wds, mean, refine, measured)
        in_fit = np.isin(lrs, v.loc[v["in_fit"], "lr"])
    counts = resample_counts(S.shape[0], reps, seed)
    pos = resample_positions(wds, S, counts, refine, cols)
    pos = np.where(np.asarray(in_fit, bool)[None, :], pos, np.nan)
    slopes = weighted_slope(np.log(lrs), pos, weights)[0]
    iv = percentile_interval(slopes, level)
    return iv.lo, iv.hi


def seed_slopes(
    lrs: np.ndarray,
    wds: np.ndarray,
    S: np.ndarray,
    refine: bool = True,
    measured: bool = False,
    in_fit: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """The coupling slope of each seed's own grid ``S[s]`` (nan where a seed has none): over
    the rows ``in_fit`` with ``weights`` when given, else each seed's own valley rule."""
    S = np.asarray(S, float)
    if in_fit is None:
        return np.array([_quiet(coupling_slope, lrs, wds, s, refine, measured) for s in S])
    cols = measured_columns(_quiet(np.nanmean, S, axis=0)) if measured else None
    return _quiet(_batch_slopes, np.asarray(lrs, float), wds, S, in_fit, weights, refine, cols)


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
