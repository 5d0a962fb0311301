"""Surfaces for sampled studies: random or TPE trials are not a grid, so a local-linear
Gaussian-kernel smoother in (log lr, log wd), bandwidth by leave-one-out cross-validation, is fit
to them and evaluated on a 25 x 25 grid (points farther than two bandwidths from every trial are
left out). With at least MIN_SURFACE_TRIALS (20) trials the slope (interval: bootstrap over
trials), near-optimal fractions and separability are computed on that surface; with fewer, every
number that needs a grid or a surface is nan: never a fit through two cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.metrics.valley import _quiet, coupling_slope

MIN_SURFACE_TRIALS = 20  # a fitted surface for scattered samples


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
