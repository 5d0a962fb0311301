"""Regret and budget: what a cell gives up against the best, how likely k random cells are to
find a good one, what reusing one lr's best wd costs at another lr, and the tuning cost per
trial budget.

- normalized regret ``r = (E - E_best) / (E_0 - E_best)`` (0 at the best cell, 1 at the cost of
  not tuning the decay; ``E_0`` the best cell of the smallest-wd column). With ``wd_gain <= 0``
  only cells tied with the best have ``r = 0``, every other cell ``r = inf``.
- ``random_search_regret(k)``: with the N cell values sorted ``v_1 <= ... <= v_N``,
  ``E[min_k] - v_1 = sum_{i<N} (v_{i+1} - v_i) C(N-i, k) / C(N, k)``: exact, k = 1..N.
- ``expected_at_selection(V, T)``: the expected ``T`` at the cell with the least ``V`` among k
  cells drawn uniformly without replacement: with the cells ranked by ``V``, the rank-r cell is
  the choice with probability ``C(N-r, k-1) / C(N, k)`` (ties in ``V`` share their ``T``
  equally). On validation (``V``) and test (``T``) errors it is Dodge et al.'s expected best
  validation performance per budget, scored on test.
- a search box is ``{"lr": [min, max], "weight_decay": [min, max]}`` (inclusive); its half
  keeps each axis's log-centre and halves its log-range.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from analysis.metrics.options import NEAR_OPTIMAL_TOL

# --------------------------------------------------------------------------------------------
# Near-optimal cells


def best_and_smallest_wd(E: np.ndarray) -> tuple[float, float]:
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
    best, e0 = best_and_smallest_wd(E)
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
    if n == 0 or not np.isfinite(best_and_smallest_wd(E)[1]):
        return float("nan")
    return float(near_optimal_mask(E, tol).sum() / n)


def near_optimal_fractions(M: np.ndarray, tol: float = NEAR_OPTIMAL_TOL) -> np.ndarray:
    """:func:`near_optimal_fraction` of each grid ``M[b]`` of a batch (vectorized)."""
    B = M.shape[0]
    flat = M.reshape(B, -1)
    fin = np.isfinite(flat)
    best = np.where(fin, flat, np.inf).min(1)
    measured = np.isfinite(M).any(axis=(0, 1))
    col = int(np.argmax(measured)) if measured.any() else 0
    e0 = np.where(np.isfinite(M[:, :, col]), M[:, :, col], np.inf).min(1)
    gain = e0 - best
    with np.errstate(all="ignore"):
        r = np.where(gain[:, None] > 0, (flat - best[:, None]) / gain[:, None],
                     np.where(flat <= best[:, None], 0.0, np.inf))  # fmt: skip
    hit = fin & (r <= tol + 1e-12)
    n = fin.sum(1)
    with np.errstate(all="ignore"):
        return np.where(n > 0, hit.sum(1) / np.maximum(n, 1), np.nan)


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


def trials_to_near_optimal(E: np.ndarray, tol: float = NEAR_OPTIMAL_TOL, p: float = 0.9) -> float:
    """Least k with ``P(a near-optimal cell among k random grid cells) >= p``; nan when no k
    reaches it."""
    hp = hit_probability(E, tol)
    if hp.size == 0 or hp[-1] < p - 1e-12:
        return float("nan")
    return int(np.argmax(hp >= p - 1e-12) + 1)


def selection_weights(n: int, k_max: int | None = None) -> np.ndarray:
    """``P[k-1, r-1] = C(N-r, k-1) / C(N, k)``: the probability that the rank-r cell (of N,
    ranked by the selection metric) is the choice among k cells drawn without replacement."""
    k_max = n if k_max is None else min(int(k_max), n)
    if n == 0 or k_max < 1:
        return np.zeros((0, n))
    lf = _log_factorials(n)
    ks = np.arange(1, k_max + 1)[:, None]
    r = np.arange(1, n + 1)[None, :]
    ok = n - r >= ks - 1
    a = np.where(ok, n - r, 0)
    b = np.where(ok, n - r - ks + 1, 0)
    logp = lf[a] - lf[ks - 1] - lf[b] - (lf[n] - lf[ks] - lf[n - ks])
    return np.where(ok, np.exp(np.minimum(logp, 0.0)), 0.0)


def _tie_means(Vs: np.ndarray, Ts: np.ndarray) -> np.ndarray:
    """``Ts`` with each run of equal ``Vs`` (rows sorted by V) replaced by its mean."""
    B, n = Vs.shape
    new = np.ones((B, n), bool)
    new[:, 1:] = Vs[:, 1:] != Vs[:, :-1]
    gid = np.cumsum(new, axis=1) - 1 + (np.arange(B) * n)[:, None]
    sums = np.bincount(gid.ravel(), Ts.ravel(), minlength=B * n)
    cnt = np.bincount(gid.ravel(), minlength=B * n)
    return (sums / np.maximum(cnt, 1))[gid]


def expected_at_selection(V: np.ndarray, T: np.ndarray, k_max: int | None = None) -> np.ndarray:
    """``[k_max]`` (or ``[B, k_max]`` for batches ``V[b], T[b]``): the expected ``T`` at the
    cell with the least ``V`` among k random cells, k = 1..k_max, over the cells where both are
    finite (exact; module docstring)."""
    V, T = np.asarray(V, float), np.asarray(T, float)
    batch = V.ndim == 3
    Vb = V.reshape(V.shape[0], -1) if batch else V.reshape(1, -1)
    Tb = T.reshape(T.shape[0], -1) if batch else T.reshape(1, -1)
    ok = (np.isfinite(Vb) & np.isfinite(Tb)).all(0)
    Vb, Tb = Vb[:, ok], Tb[:, ok]
    n = Vb.shape[1]
    if n == 0:
        return np.zeros((Vb.shape[0], 0)) if batch else np.array([])
    order = np.argsort(Vb, axis=1, kind="stable")
    Vs = np.take_along_axis(Vb, order, 1)
    Ts = _tie_means(Vs, np.take_along_axis(Tb, order, 1))
    out = Ts @ selection_weights(n, k_max).T
    return out if batch else out[0]


def trials_to_within(curve: np.ndarray, target: float, within: float = 0.01) -> float:
    """Least k with ``curve[k-1] <= target + within``; nan when no k reaches it."""
    c = np.asarray(curve, float)
    hit = np.nonzero(c <= target + within + 1e-12)[0]
    return float(hit[0] + 1) if hit.size and np.isfinite(target) else float("nan")


# --------------------------------------------------------------------------------------------
# Search boxes


def box_for(variant: str, boxes: Mapping[str, Any] | None) -> dict | None:
    """The box of ``optimizer/decay`` among ``boxes`` keyed by optimizer, decay or
    optimizer/decay (``optimizer-decay`` too): each axis from the most specific key that sets
    it; None: no box."""
    if not boxes:
        return None
    opt, _, decay = variant.partition("/")
    out: dict = {}
    for key in (opt, decay, f"{opt}-{decay}", variant):  # least specific first
        if key in boxes and boxes[key] is not None:
            out.update({k: [float(x) for x in v] for k, v in dict(boxes[key]).items()})
    return out or None


def halve_box(box: Mapping[str, Any]) -> dict:
    """Each axis's log-range halved around its log-centre."""
    out = {}
    for axis, (lo, hi) in box.items():
        a, b = math.log(float(lo)), math.log(float(hi))
        c, h = (a + b) / 2, (b - a) / 4
        out[axis] = [math.exp(c - h), math.exp(c + h)]
    return out


def box_mask(lrs: np.ndarray, wds: np.ndarray, box: Mapping[str, Any] | None) -> np.ndarray:
    """``[L, W]`` cells inside ``box`` (every cell when None); bounds inclusive to 1e-6."""
    lrs, wds = np.asarray(lrs, float), np.asarray(wds, float)
    if box is None:
        return np.ones((len(lrs), len(wds)), bool)

    def inside(x: np.ndarray, r) -> np.ndarray:
        if r is None:
            return np.ones(len(x), bool)
        lo, hi = float(r[0]), float(r[1])
        return (x >= lo * (1 - 1e-6)) & (x <= hi * (1 + 1e-6))

    return inside(lrs, box.get("lr"))[:, None] & inside(wds, box.get("weight_decay"))[None, :]


def box_grid(lrs: np.ndarray, wds: np.ndarray) -> dict:
    """The box spanned by a grid's measured axes."""
    pos = np.asarray(wds, float)
    pos = pos[pos > 0] if (pos > 0).any() else pos
    return {"lr": [float(np.min(lrs)), float(np.max(lrs))],
            "weight_decay": [float(np.min(pos)), float(np.max(pos))]}  # fmt: skip


def describe_box(box: Mapping[str, Any]) -> str:
    """``lr 1e-04..1e-01, wd 1e-06..1e-02``."""
    lr, wd = box.get("lr"), box.get("weight_decay")
    parts = []
    if lr is not None:
        parts.append(f"lr {lr[0]:.3g}..{lr[1]:.3g}")
    if wd is not None:
        parts.append(f"wd {wd[0]:.3g}..{wd[1]:.3g}")
    return ", ".join(parts)


# --------------------------------------------------------------------------------------------
# Transfer regret on one grid


def transfer_regret(
    lrs: np.ndarray,
    wds: np.ndarray,
    E: np.ndarray,
    steps: int = 1,
    select: np.ndarray | None = None,
) -> tuple[float, int]:
    """``(mean, pairs)``: the error lost by reusing row i's best wd column at row i +- steps,
    ``E[t, j*(i)] - E[t, j*(t)]``, over the ordered pairs of informative rows; the columns
    ``j*`` are chosen on ``select`` (default ``E``). ``(nan, 0)`` without pairs."""
    from analysis.metrics.valley import row_positions

    E = np.asarray(E, float)
    S = E if select is None else np.asarray(select, float)
    r = row_positions(S[None], wds, refine=False)
    j, informative = r["j"][0], r["informative"][0]
    lost = []
    for i in np.nonzero(informative)[0]:
        for t in (i - steps, i + steps):
            if 0 <= t < len(lrs) and informative[t] and j[t] >= 0:
                val = E[t, j[i]] - E[t, j[t]]
                if np.isfinite(val):
                    lost.append(val)
    if not lost:
        return float("nan"), 0
    return float(np.mean(lost)), len(lost)


def transfer_pairs(informative: np.ndarray, steps: int) -> list[tuple[int, int]]:
    """Ordered pairs ``(i, i +- steps)`` of informative rows."""
    rows = np.nonzero(np.asarray(informative, bool))[0]
    have = set(rows.tolist())
    return [(int(i), int(t)) for i in rows for t in (i - steps, i + steps) if t in have]
