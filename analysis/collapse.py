"""The collapse test: how much of a variant's error surface one variable, its invariant, explains.

Scale invariance says that once a scale-invariant network has forgotten its initial norm the
error depends on ``(lr, wd)`` through one combination only, the variant's invariant
(:func:`analysis.theory.prediction`): ``lr*wd`` (SGD with any form, Adam + ``decoupled``),
``lr^2*wd`` (Adam + ``l2``) or ``wd`` (``independent``). Rotational equilibrium (Kosson et al.
2024) says the same through the angle a weight turns per step, which the invariant sets.

Two smooth fits of the cell means of the error (mean over seeds of the trials that did not
diverge), each scored out of sample:

- ``collapse_r2_1d``: a local-linear Gaussian-kernel fit of the error against
  ``x = log10(invariant)`` alone;
- ``collapse_r2_2d``: the same smoother in ``(log10 lr, log10 wd)``.

Both are leave-one-cell-out R^2, ``1 - sum (E - E_hat_-i)^2 / sum (E - mean E)^2`` with
``E_hat_-i`` the fit at cell i from every other cell, and each fit's bandwidth chosen from the
same candidate list (:data:`BANDWIDTHS`, in decades) by that leave-one-out error. So the 2-D fit,
which can follow any surface, cannot win by fitting noise: a cell it has not seen scores it.
``r2_1d`` close to ``r2_2d`` means the invariant explains what a full 2-D surface explains;
``r2_2d`` is the ceiling the noise and the grid allow. Fewer than :data:`MIN_CELLS` cells: nan.

``collapse.png``: every variant's equilibrated cells (:func:`analysis.theory.trial_theory`: the
norm has relaxed before the measurement window; Adam + ``l2`` has no predicted relaxation time,
so none of its cells counts) as test error against the measured angle per step (``si_angle``,
the cell median) on one logarithmic axis. Where the angle sets the error, the variants' points
fall on one curve.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import theory
from analysis.load import variants_in_order

BANDWIDTHS = tuple(float(h) for h in np.geomspace(0.08, 4.0, 14))  # decades
MIN_CELLS = 8
LR_POWER = {"lam": 0, "a*lam": 1, "a^2*lam": 2}  # the power of lr in each invariant
COLLAPSE_COLUMNS = ("collapse_r2_1d", "collapse_r2_2d", "collapse_cells")

__all__ = [
    "BANDWIDTHS",
    "COLLAPSE_COLUMNS",
    "cell_means",
    "collapse_figure",
    "collapse_r2",
    "collapse_r2_1d",
    "collapse_r2_2d",
    "collapse_table",
    "invariant_value",
    "loo_r2",
    "write_collapse",
]


def invariant_value(variant: str, lr: np.ndarray, wd: np.ndarray) -> np.ndarray:
    """``log10`` of the variant's invariant at ``(lr, wd)``; nan when the theory names none."""
    opt, _, dec = variant.partition("/")
    k = LR_POWER.get(theory.prediction(opt, dec).invariant)
    lr, wd = np.asarray(lr, float), np.asarray(wd, float)
    if k is None:
        return np.full(np.broadcast(lr, wd).shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        return k * np.log10(lr) + np.log10(wd)


def _loo_predictions(X: np.ndarray, y: np.ndarray, h: float) -> np.ndarray:
    """Leave-one-out local-linear predictions with a Gaussian kernel of bandwidth ``h``."""
    n, d = X.shape
    D = X[:, None, :] - X[None, :, :]  # [i, j, d]: X_j - X_i seen from i
    W = np.exp(-0.5 * (D**2).sum(-1) / h**2)
    np.fill_diagonal(W, 0.0)
    out = np.full(n, np.nan)
    ridge = 1e-8 * np.eye(d + 1)
    for i in range(n):
        w = W[i]
        if w.sum() <= 1e-300:
            continue
        A = np.concatenate([np.ones((n, 1)), -D[i]], axis=1)  # local design around X_i
        Aw = A * w[:, None]
        try:
            beta = np.linalg.solve(A.T @ Aw + ridge * w.sum(), Aw.T @ y)
        except np.linalg.LinAlgError:
            continue
        out[i] = beta[0]
    return out


def loo_r2(X: np.ndarray, y: np.ndarray, bandwidths=BANDWIDTHS) -> tuple[float, float]:
    """``(R^2, bandwidth)``: the best leave-one-out R^2 of a local-linear Gaussian-kernel fit of
    ``y`` on ``X`` ([n, d]) over ``bandwidths``; nan with fewer than :data:`MIN_CELLS` points or
    a constant ``y``."""
    X = np.asarray(X, float).reshape(len(y), -1)
    y = np.asarray(y, float)
    ok = np.isfinite(y) & np.isfinite(X).all(axis=1)
    X, y = X[ok], y[ok]
    sst = float(((y - y.mean()) ** 2).sum()) if y.size else 0.0
    if y.size < MIN_CELLS or sst <= 0:
        return float("nan"), float("nan")
    best = (-np.inf, float("nan"))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for h in bandwidths:
            pred = _loo_predictions(X, y, h)
            if not np.isfinite(pred).all():
                continue
            r2 = 1.0 - float(((y - pred) ** 2).sum()) / sst
            if r2 > best[0]:
                best = (r2, float(h))
    return (float(best[0]), best[1]) if np.isfinite(best[0]) else (float("nan"), float("nan"))


def cell_means(frame: pd.DataFrame, variant: str, metric: str = "test_error") -> pd.DataFrame:
    """One row per (lr, weight_decay) cell of ``variant``: ``mean`` of ``metric`` over the
    trials that did not diverge, ``count``; cells whose every trial diverged are left out."""
    sub = frame[(frame["variant"] == variant) & frame[metric].notna()]
    if "diverged" in sub:
        sub = sub[~sub["diverged"].astype(bool)]
    sub = sub[(sub["lr"] > 0) & (sub["weight_decay"] > 0)]
    g = sub.groupby(["lr", "weight_decay"], sort=True)[metric]
    return g.agg(["mean", "count"]).reset_index()


def collapse_r2_1d(frame: pd.DataFrame, variant: str, metric: str = "test_error") -> float:
    """Leave-one-cell-out R^2 of the smooth fit of the error against the invariant alone."""
    c = cell_means(frame, variant, metric)
    x = invariant_value(variant, c["lr"].to_numpy(float), c["weight_decay"].to_numpy(float))
    return loo_r2(x[:, None], c["mean"].to_numpy(float))[0]


def collapse_r2_2d(frame: pd.DataFrame, variant: str, metric: str = "test_error") -> float:
    """Leave-one-cell-out R^2 of the smooth fit of the error in ``(log10 lr, log10 wd)``."""
    c = cell_means(frame, variant, metric)
    X = np.log10(c[["lr", "weight_decay"]].to_numpy(float))
    return loo_r2(X, c["mean"].to_numpy(float))[0]


def collapse_r2(frame: pd.DataFrame, variant: str, metric: str = "test_error") -> dict:
    """``{"collapse_r2_1d", "collapse_r2_2d", "collapse_cells"}`` of one variant."""
    return {
        "collapse_r2_1d": collapse_r2_1d(frame, variant, metric),
        "collapse_r2_2d": collapse_r2_2d(frame, variant, metric),
        "collapse_cells": int(len(cell_means(frame, variant, metric))),
    }


def collapse_table(frame: pd.DataFrame, metric: str = "test_error") -> pd.DataFrame:
    """One row per variant: ``variant`` and :data:`COLLAPSE_COLUMNS` (one experiment's trials)."""
    rows = [{"variant": v, **collapse_r2(frame, v, metric)} for v in variants_in_order(frame)]
    return pd.DataFrame(rows, columns=["variant", *COLLAPSE_COLUMNS])


def equilibrated_cells(frame: pd.DataFrame, metric: str = "test_error") -> pd.DataFrame:
    """The cells (variant, lr, weight_decay) at least half of whose decided trials equilibrated,
    with ``error`` (mean ``metric``) and ``angle`` (median measured ``si_angle``)."""
    cols = ["variant", "lr", "weight_decay", "error", "angle", "count"]
    if not theory.has_angles(frame):
        return pd.DataFrame(columns=cols)
    th = theory.trial_theory(frame)
    eq = th["equilibrated"].astype("Float64").astype(float)
    th = th.assign(_eq=eq, _angle=pd.to_numeric(th["si_angle"], errors="coerce"))
    th = th[th["_eq"].notna()]
    g = th.groupby(["variant", "lr", "weight_decay"], sort=True)
    out = pd.DataFrame(
        {
            "share": g["_eq"].mean(),
            "error": g[metric].mean(),
            "angle": g["_angle"].median(),
            "count": g["_eq"].size(),
        }
    ).reset_index()
    out = out[(out["share"] >= 0.5) & np.isfinite(out["angle"]) & (out["angle"] > 0)]
    return out[cols].reset_index(drop=True)


def collapse_figure(frame: pd.DataFrame, metric: str = "test_error", title: str | None = None):
    """Every variant's equilibrated cells: ``metric`` against the measured angle per step, one
    axis (seaborn); None when no trial has a measured angle or none equilibrated."""
    cells = equilibrated_cells(frame, metric)
    if cells.empty:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    order = [v for v in variants_in_order(frame) if v in set(cells["variant"])]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    sns.scatterplot(
        data=cells,
        x="angle",
        y="error",
        hue="variant",
        style="variant",
        hue_order=order,
        style_order=order,
        s=36,
        alpha=0.8,
        ax=ax,
    )
    ax.set_xscale("log")
    ax.set_xlabel("measured angle per step of the scale-invariant weights (rad, cell median)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (cell mean)")
    ax.set_title(title or "Equilibrated cells against the angle per step")
    ax.legend(title=None, fontsize=8)
    return fig


def write_collapse(
    frame: pd.DataFrame,
    out: str | Path,
    metric: str = "test_error",
    formats: tuple[str, ...] = ("png",),
    dpi: int = 150,
    title: str | None = None,
) -> list[Path]:
    """Draw :func:`collapse_figure` into ``out/collapse.<fmt>``; the paths written (none when
    there is nothing to draw)."""
    fig = collapse_figure(frame, metric, title)
    if fig is None:
        return []
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"collapse.{fmt}"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    plt.close(fig)
    return paths
