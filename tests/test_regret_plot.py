"""The regret figure (seaborn): one line per variant, the seeds' range as a band."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from analysis.plots import regret_figure  # noqa: E402

VARIANTS = ["adam/l2", "adam/independent"]
K = np.arange(1, 6)


def tables(n_seeds: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, seed_rows = [], []
    for i, v in enumerate(VARIANTS):
        base = (0.1 + 0.05 * i) / K
        for k, r in zip(K, base):
            rows.append(
                {"variant": v, "k": k, "regret": r, "regret_normalized": 2 * r,
                 "expected_best_error": 0.3 + r, "p_near_optimal": 1 - 0.5 / k}
            )  # fmt: skip
        for s in range(n_seeds):
            for k, r in zip(K, base * (1 + 0.2 * s)):
                seed_rows.append(
                    {"variant": v, "seed": s, "k": k, "regret": r, "regret_normalized": 2 * r}
                )
    return pd.DataFrame(rows), pd.DataFrame(seed_rows)


def _lines(ax):
    return [ln for ln in ax.get_lines() if len(ln.get_xdata()) == len(K)]


def test_seed_bands_and_mean_lines():
    regret, seeds = tables(n_seeds=3)
    fig = regret_figure(regret, seeds=seeds)
    ax_pts, ax_norm, ax_p = fig.axes[:3]
    # one band per variant on both regret panels: the range of the three seeds
    for ax in (ax_pts, ax_norm):
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == len(VARIANTS)
    lines = _lines(ax_pts)
    assert len(lines) == len(VARIANTS)
    for i, line in enumerate(lines):  # the mean of the seeds, in points
        want = 100 * (0.1 + 0.05 * i) / K * np.mean([1.0, 1.2, 1.4])
        np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-12)
    # the band of the first variant reaches the worst seed at k = 1: points, and normalized (x2)
    for ax, scale in ((ax_pts, 100), (ax_norm, 2)):
        band = [c for c in ax.collections if isinstance(c, PolyCollection)][0]
        assert band.get_paths()[0].vertices[:, 1].max() == pytest.approx(scale * 0.1 * 1.4)
    # P(near-optimal): one line per variant, no band
    assert not [c for c in ax_p.collections if isinstance(c, PolyCollection)]
    for line in _lines(ax_p):
        np.testing.assert_allclose(line.get_ydata(), 1 - 0.5 / K)
    assert ax_p.get_ylabel() == "probability"
    # the variants' styles differ (decay form: colour)
    assert lines[0].get_color() != lines[1].get_color()


def test_one_seed_draws_the_grid_curve_without_bands():
    regret, seeds = tables(n_seeds=1)
    fig = regret_figure(regret, seeds=seeds)
    ax_pts = fig.axes[0]
    assert not [c for c in ax_pts.collections if isinstance(c, PolyCollection)]
    for i, line in enumerate(_lines(ax_pts)):
        np.testing.assert_allclose(line.get_ydata(), 100 * (0.1 + 0.05 * i) / K)
