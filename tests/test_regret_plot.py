"""The regret and budget figures (seaborn): one line per variant, seeds as bands; and the
heatmaps' regret colours, equal decade spans, and fit / theory lines over the fitted rows only."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from analysis.plots import (  # noqa: E402
    REGRET_CLIP,
    THEORY_COLOR,
    VALLEY_COLOR,
    budget_figure,
    heatmap_figure,
    log_step,
    regret_figure,
)

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


# --------------------------------------------------------------------------------------------
# heatmaps


def cell_table(variant: str, lrs, wds, E) -> pd.DataFrame:
    fam, _, dec = variant.partition("/")
    rows = [
        {"variant": variant, "optimizer": fam, "decay": dec, "lr": lr, "weight_decay": wd,
         "mean": E[i, j], "std": 0.0, "count": 3, "n_diverged": 0, "diverged": 0.0}
        for i, lr in enumerate(lrs)
        for j, wd in enumerate(wds)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def valley_grid(lrs, wds, depth: float, slope: float = -1.0, base: float = 0.5) -> np.ndarray:
    """``base`` + a valley ``depth`` deep along ``log wd = slope * log lr`` (+ a constant), and a
    cliff of 40 points at the largest wd: a shallow valley next to a large range of errors."""
    x, y = np.meshgrid(np.log10(lrs), np.log10(wds), indexing="ij")
    centre = slope * (x - x.mean()) + y.mean()
    E = base + depth * np.minimum(1.0, ((y - centre) / 2.0) ** 2)
    E[:, -1] = base + 0.40
    return E


def metrics_row(variant: str, **extra) -> dict:
    return {"variant": variant, "coupling_slope": -1.0, "n_cells": 30, "best_error": 0.5,
            "near_optimal_cells": 1, "near_optimal_fraction": 0.03, "separability": 0.8,
            "predicted_slope": -1.0, **extra}  # fmt: skip


def _panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_images()]


def test_regret_colour_shows_a_shallow_valley():
    lrs, wds = np.geomspace(1e-3, 1, 7), np.geomspace(1e-6, 1e2, 9)
    E = valley_grid(lrs, wds, depth=0.015)
    cells = cell_table("sgd/l2", lrs, wds, E)
    fig = heatmap_figure(cells)
    (ax,) = _panels(fig)
    im = ax.get_images()[0]
    shown = np.ma.filled(im.get_array(), np.nan).T
    np.testing.assert_allclose(shown, 100 * (E - E.min()))  # regret from the best, in points
    assert (im.norm.vmin, im.norm.vmax) == (0.0, REGRET_CLIP)
    cbar = next(a for a in fig.axes if "clipped at" in a.get_ylabel())
    assert f"clipped at {REGRET_CLIP:g}" in cbar.get_ylabel()
    # the valley (1.5 points deep) spans half the colours, twice what the error scale gives it
    valley = im.norm(shown[shown < 100 * 0.015 + 1e-9])
    assert np.ptp(valley) >= 0.45
    plain = heatmap_figure(cells, colour="error")
    im = _panels(plain)[0].get_images()[0]
    assert np.ptp(im.norm(E[E < E.min() + 0.015 + 1e-9])) <= 0.55 * np.ptp(valley)
    with pytest.raises(ValueError, match="regret_clip"):
        heatmap_figure(cells, regret_clip=0.0)


def test_every_panel_spans_the_same_decades():
    lrs = np.geomspace(1e-3, 1, 7)
    wide, narrow = np.geomspace(1e-6, 1e2, 10), np.geomspace(1e-6, 1e-1, 6)
    cells = pd.concat([
        cell_table("sgd/l2", lrs, wide, valley_grid(lrs, wide, 0.02)),
        cell_table("sgd/independent", lrs, narrow, valley_grid(lrs, narrow, 0.02, slope=0.0)),
    ])  # fmt: skip
    fig = heatmap_figure(cells)
    panels = _panels(fig)
    assert len(panels) == 2
    spans = []
    for ax, wds in zip(panels, (wide, narrow)):
        y0, y1 = ax.get_ylim()
        x0, x1 = ax.get_xlim()
        spans.append(((x1 - x0) * log_step(lrs), (y1 - y0) * log_step(wds)))
    assert spans[0] == pytest.approx(spans[1])
    assert spans[0][1] == pytest.approx(len(wide) * log_step(wide))  # the wider grid's span
    assert panels[0].get_box_aspect() == panels[1].get_box_aspect()
    same = heatmap_figure(cells, same_span=False)
    assert _panels(same)[1].get_ylim() == pytest.approx((-0.5, len(narrow) - 0.5))


def _theory_lines(ax) -> list:
    return [ln for ln in ax.get_lines() if ln.get_color() == THEORY_COLOR]


def test_fit_and_theory_lines_only_over_the_fitted_rows():
    lrs, wds = np.geomspace(1e-3, 1, 7), np.geomspace(1e-6, 1e2, 9)
    E = valley_grid(lrs, wds, depth=0.03)
    cells = cell_table("sgd/l2", lrs, wds, E)
    best_wd = wds[np.argmin(E, axis=1)]
    in_fit = np.array([False, False, True, True, True, False, False])
    valleys = pd.DataFrame({
        "variant": "sgd/l2", "lr": lrs, "best_wd": best_wd, "best_error": E.min(axis=1),
        "interior": True, "informative": True, "resolved": in_fit, "weight": 1.0,
        "in_fit": in_fit,
    })  # fmt: skip
    resolved = pd.DataFrame([metrics_row("sgd/l2", wd_gain=0.03, wd_gain_lo=0.01)])
    fig = heatmap_figure(cells, resolved, valleys=valleys)
    (ax,) = _panels(fig)
    (theory,) = _theory_lines(ax)
    x = np.asarray(theory.get_xdata(), float)[np.isfinite(np.asarray(theory.get_ydata(), float))]
    assert x.min() >= 2 - 0.5 - 1e-9 and x.max() <= 4 + 0.5 + 1e-9
    # the rows left out of the fit are hollow circles, at their lr index
    hollow = [ln for ln in ax.get_lines()
              if ln.get_marker() == "o" and ln.get_markerfacecolor() == "none"
              and ln.get_markeredgecolor() == VALLEY_COLOR]  # fmt: skip
    assert len(hollow) == 1
    np.testing.assert_allclose(hollow[0].get_xdata(), [0, 1, 5, 6])
    # the dashed fit runs over the fitted rows only
    dashed = [
        ln for ln in ax.get_lines() if ln.get_color() == "white" and ln.get_linestyle() != "None"
    ]
    (fit,) = dashed
    fx = np.asarray(fit.get_xdata(), float)
    assert fx.min() >= 2 - 1e-9 and fx.max() <= 4 + 1e-9
    # a gain that is not resolved: no theory line at all
    flat = pd.DataFrame([metrics_row("sgd/l2", wd_gain=0.001, wd_gain_lo=-0.004)])
    assert not _theory_lines(_panels(heatmap_figure(cells, flat, valleys=valleys))[0])
    old = pd.DataFrame([metrics_row("sgd/l2", wd_gain_resolved=False)])
    assert not _theory_lines(_panels(heatmap_figure(cells, old, valleys=valleys))[0])


# --------------------------------------------------------------------------------------------
# budget


def budget_table() -> pd.DataFrame:
    rows = []
    k = np.arange(1, 9)
    for i, v in enumerate(["sgd/l2", "sgd/independent", "adam/l2"]):
        for box, scale in (("box", 1.0), ("half", 0.6)):
            e = 0.5 + scale * (0.1 + 0.02 * i) / k
            for kk, ee in zip(k, e):
                rows.append({"variant": v, "box": box, "k": kk, "cells": 8, "expected_error": ee,
                             "expected_error_lo": ee - 0.01, "expected_error_hi": ee + 0.01,
                             "best_error": 0.5})  # fmt: skip
    return pd.DataFrame(rows)


def test_budget_figure_lines_bands_and_boxes():
    budget = budget_table()
    metrics = pd.DataFrame(
        [{"variant": "sgd/l2", "best_error": 0.5, "trials_to_within_1pt": 4.0},
         {"variant": "sgd/independent", "best_error": 0.5, "trials_to_within_1pt": np.nan},
         {"variant": "adam/l2", "best_error": 0.5, "trials_to_within_1pt": 6.0}]
    )  # fmt: skip
    fig = budget_figure(budget, metrics=metrics)
    sgd, adam = fig.axes[:2]
    assert sgd.get_title().startswith("SGD") and adam.get_title().startswith("Adam")
    lines = [ln for ln in sgd.get_lines() if len(ln.get_xdata()) == 8]
    assert len(lines) == 4  # two variants x (box, half)
    ys = sorted(tuple(np.round(ln.get_ydata(), 9)) for ln in lines)
    want = sorted(
        tuple(np.round(100 * (0.5 + s * (0.1 + 0.02 * i) / np.arange(1, 9)), 9))
        for i in (0, 1) for s in (1.0, 0.6)
    )  # fmt: skip
    assert ys == want
    assert sum(ln.get_linestyle() == "--" for ln in lines) == 2  # the halved box, dashed
    bands = [c for c in sgd.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 4
    top = max(b.get_paths()[0].vertices[:, 1].max() for b in bands)
    assert top == pytest.approx(100 * (0.5 + 0.12 + 0.01))
    labels = [t.get_text() for ax in (sgd, adam) for t in ax.get_legend().get_texts()]
    assert any("within 1 pt at k = 4" in t for t in labels)
    assert any("never within 1 pt" in t for t in labels)
    with pytest.raises(ValueError, match="expected_error"):
        budget_figure(budget.drop(columns=["expected_error"]))


def test_the_red_circle_is_the_analysis_choice():
    from matplotlib.patches import Ellipse

    lrs, wds = np.geomspace(1e-3, 1, 5), np.geomspace(1e-6, 1e2, 5)
    E = valley_grid(lrs, wds, depth=0.03)
    cells = cell_table("sgd/l2", lrs, wds, E)
    i, j = np.unravel_index(np.argsort(E, axis=None)[2], E.shape)  # the third-best cell
    m = pd.DataFrame([metrics_row("sgd/l2", best_lr=lrs[i], best_weight_decay=wds[j])])
    (ax,) = _panels(heatmap_figure(cells, m))
    red = [p for p in ax.patches if isinstance(p, Ellipse) and p.get_edgecolor()[:3] != (1, 1, 1)]
    assert len(red) == 1 and red[0].center == pytest.approx((i, j))
    (ax,) = _panels(heatmap_figure(cells))  # no metrics: the least error
    red = [p for p in ax.patches if isinstance(p, Ellipse) and p.get_edgecolor()[:3] != (1, 1, 1)]
    assert red[0].center == pytest.approx(np.unravel_index(np.argmin(E), E.shape))
