"""The paper-style figures (matplotlib/seaborn), each returned as a Figure; nothing is written here.

- :func:`heatmap_figure`: Loshchilov & Hutter (ICLR 2019) Figure 2. One panel per variant, rows =
  optimizer family (SGD, Adam), columns = decay form (l2, loss, decoupled, independent); x =
  initial lr, y = weight decay, both on their (log-spaced) grid labelled in powers of 2 or 10,
  every panel showing the same number of lr and of wd decades. The colour is each cell's regret
  from its variant's best in points, clipped at a stated number of points (or the error on one
  shared scale). The ten best cells circled (the best in red); cells where every seed diverged
  hatched grey, cells where some seed diverged marked with a small x; the valley (best wd per lr)
  with its least-squares fit over the rows of the fit (rows left out hollow); the numbers of
  :mod:`analysis.metrics` above each panel; the theory's valley through the best cell over the
  fitted rows and the predicted slope in the title, cells that never equilibrated hatched
  (:mod:`analysis.theory`); optional per-cell error annotations.
- :func:`regret_figure`: expected random-search regret against k trials, in error points and
  normalized by what decay buys, with the seeds as bands (seaborn), and P(near-optimal).
- :func:`budget_figure`: tuning cost per trial budget (budget.csv), the expected test error at
  the validation-best of k random cells of each variant's search box, with seed bands (seaborn).
- :func:`valley_figure`: best wd against lr on log-log axes, one line per variant, with slopes.
- :func:`angle_figure`: measured against predicted angle per step of the scale-invariant weights
  (:mod:`analysis.theory`), one point per trial.
- :func:`layers_figure`: per-layer angle per step against lr x wd, one facet per layer, with the
  theory's predicted angle on the scale-invariant layers.
- :func:`scatter_figure`: scattered (random / TPE) trials over log lr x log wd, the fitted
  surface as filled contours, its valley and slope; the non-grid counterpart of the heatmaps.

Legends go below the panels with as many columns as the figure's width holds, so none is cut.
"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Ellipse, Patch, Rectangle

from analysis.load import grid
from analysis.metrics import MIN_SURFACE_TRIALS, Surface, coupling_fit, valley, valley_fit_rows
from harness import registry

# line colours of the decay forms and line styles of the families, in the registry's order
DECAY_PALETTE = ("#c0392b", "#8e44ad", "#e67e22", "#2471a3", "#16a085", "#7f8c8d")
FAMILY_LINESTYLES = ("-", "--", "-.")
VALLEY_COLOR = "#ff3b30"
THEORY_COLOR = "#00e5ff"  # the predicted valley through the best cell
UNEQUILIBRATED_COLOR = (1.0, 1.0, 1.0, 0.55)  # hatch lines: light, the colour stays readable
UNEQUILIBRATED_HATCH = "\\"
REGRET_CLIP = 3.0  # points: the top of the regret colour scale
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.dpi": 100,
    "savefig.dpi": 170,
    "pdf.fonttype": 42,
    "axes.linewidth": 0.6,
    "hatch.linewidth": 0.6,
}


def variant_title(variant: str) -> str:
    """``sgd/l2`` -> ``SGD, coupled L2``; ``adam/independent`` -> ``AdamW, independent, η·wd``
    (labels from the registry; unknown names as they are)."""
    fam, _, dec = variant.partition("/")
    name = _family_label(fam)
    form = registry.decay_forms().get(dec)
    if form is not None and form.decoupled:
        name += "W"
    return f"{name}, {form.label if form else dec}"


def _family_label(fam: str) -> str:
    family = registry.OPTIMIZERS.get(fam)
    return family.label if family else fam


def _by_order(name: str, order: tuple[str, ...], values: tuple[str, ...], default: str) -> str:
    return values[order.index(name) % len(values)] if name in order else default


def tick_labels(values: np.ndarray) -> list[str]:
    """Labels for a log-spaced axis: ``2^k`` when every value is a power of two, ``10^x`` when
    the exponents are multiples of 1/4, else ``m·10^e``; 0 stays 0."""
    values = np.asarray(values, float)
    pos = values[values > 0]

    def is_int(x: np.ndarray, step: float = 1.0) -> bool:
        return bool(np.all(np.abs(x / step - np.round(x / step)) < 1e-6))

    out = []
    if pos.size and is_int(np.log2(pos)) and not is_int(np.log10(pos)):
        for v in values:
            out.append("0" if v == 0 else f"$2^{{{int(round(np.log2(v)))}}}$")
        return out
    e10 = np.log10(pos) if pos.size else pos
    quarter = pos.size and is_int(e10, 0.25)
    for v in values:
        if v == 0:
            out.append("0")
            continue
        e = np.log10(v)
        if quarter:
            r = round(e * 4) / 4
            text = f"{int(r)}" if r == int(r) else f"{r:g}"
            out.append(f"$10^{{{text}}}$")
        else:
            exp = int(np.floor(e))
            mant = v / 10**exp
            out.append(
                f"${mant:.2g}\\cdot10^{{{exp}}}$" if round(mant, 2) != 1 else f"$10^{{{exp}}}$"
            )
    return out


def axis_ticks(values: np.ndarray, max_labels: int = 5) -> tuple[list[float], list[str]]:
    """``(positions, labels)`` of the labelled ticks of one heatmap axis (cell k sits at k).

    Clean grids (every value ``2^k``, or ``10^x`` with x a multiple of 1/4) label every
    ``step``-th cell; other log-uniform grids get ticks at the powers of ten between their cells
    (fractional positions); anything else labels every ``step``-th cell as ``m·10^e``. A zero
    (no decay) is labelled ``0``; at most ``max_labels`` labels in all.
    """
    values = np.asarray(values, float)
    labels = tick_labels(values)
    zero = [k for k, v in enumerate(values) if v == 0]
    pos_idx = [k for k, v in enumerate(values) if v > 0]
    out_pos, out_lab = [float(k) for k in zero], ["0" for _ in zero]
    if not pos_idx:
        return out_pos, out_lab
    logs = np.log10(values[pos_idx])
    budget = max(2, max_labels - len(zero))
    clean = all("cdot" not in labels[k] for k in pos_idx)
    diffs = np.diff(logs)
    uniform = len(logs) > 2 and np.ptp(diffs) < 1e-3 * abs(diffs.mean())
    decades = np.arange(np.ceil(logs[0] - 1e-9), np.floor(logs[-1] + 1e-9) + 1)
    if not clean and uniform and len(decades) >= 2:
        step = int(np.ceil(len(decades) / budget))
        for d in decades[::step]:
            out_pos.append(pos_idx[0] + (d - logs[0]) / diffs.mean())
            out_lab.append(f"$10^{{{int(d)}}}$")
        return out_pos, out_lab
    step = int(np.ceil(len(pos_idx) / budget))
    start = 0
    # thinning a half-decade axis: keep the labels on whole decades
    if step == 2 and len(pos_idx) > 1 and "." in labels[pos_idx[0]]:
        start = 1
    for k in pos_idx[start::step]:
        out_pos.append(float(k))
        out_lab.append(labels[k])
    return out_pos, out_lab


def n_circled(n_cells: int, n_best: int = 10) -> int:
    """Cells circled on a panel: ``n_best`` (the paper's ten), but at most one in eight of the
    cells, so that a small grid does not turn into circles (6x6 -> 5, 9x9 -> 10)."""
    return int(min(n_best, max(1, np.ceil(n_cells / 8)), n_cells))


def _layout(variants: list[str]) -> tuple[list[str], list[str]]:
    fams = [f for f in registry.names("optimizer") if any(v.split("/")[0] == f for v in variants)]
    fams += sorted({v.split("/")[0] for v in variants} - set(fams))
    decs = [d for d in registry.names("decay") if any(v.split("/")[-1] == d for v in variants)]
    decs += sorted({v.split("/")[-1] for v in variants} - set(decs))
    return fams, decs


def color_range(cells: pd.DataFrame) -> tuple[float, float, bool]:
    """Shared ``(vmin, vmax, clipped)`` of the colour scale over the cells that did not all
    diverge. ``vmax`` is capped at ``best + 4 * (median - best)`` so that the good region keeps
    most of the colours (the paper does the same); clipped cells show the top colour."""
    vals = cells.loc[cells["diverged"] < 1, "mean"].to_numpy(float)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return 0.0, 1.0, False
    vmin, vmax, med = float(vals.min()), float(vals.max()), float(np.median(vals))
    cap = vmin + 4 * (med - vmin)
    clipped = cap < vmax
    vmax = min(vmax, cap) if clipped else vmax
    if vmax - vmin < 1e-9:
        vmax = vmin + 1e-3
    return vmin, vmax, clipped


def regret_colors(E: np.ndarray, all_diverged: np.ndarray) -> np.ndarray:
    """``100 * (E - best)``: each cell's regret from the panel's best cell in points of error
    (nan where E is nan or every seed diverged)."""
    alive = np.where(all_diverged, np.nan, np.asarray(E, float))
    if not np.isfinite(alive).any():
        return alive
    return 100 * (alive - np.nanmin(alive))


def log_step(values: np.ndarray) -> float:
    """Decades per cell of a log-spaced axis (the mean step over its positive values; 1 when
    fewer than two)."""
    pos = np.log10(np.asarray(values, float)[np.asarray(values, float) > 0])
    return float((pos[-1] - pos[0]) / (len(pos) - 1)) if len(pos) >= 2 and pos[-1] > pos[0] else 1.0


def axis_decades(values: np.ndarray) -> float:
    """Decades an axis of cells spans, edge to edge (cells times the step)."""
    return len(values) * log_step(values)


def panel_box(span: tuple[float, float]) -> float:
    """Height over width of a heatmap panel showing ``span`` = (lr decades, wd decades): their
    ratio, kept within 0.75..1.6 so that no panel turns into a strip."""
    return float(np.clip(span[1] / span[0], 0.75, 1.6)) if span[0] > 0 else 1.0


def _span_limits(values: np.ndarray, decades: float) -> tuple[float, float]:
    """Index limits that show ``decades`` of a log axis (at least the whole grid), centred on
    the grid."""
    n = len(values)
    half = max(decades / log_step(values), n) / 2
    centre = (n - 1) / 2
    return centre - half, centre + half


def draw_panel(
    ax: plt.Axes,
    cells: pd.DataFrame,
    variant: str,
    norm: Normalize,
    cmap: str = "viridis",
    n_best: int = 10,
    annotate: bool = False,
    show_valley: bool = True,
    refine: bool = True,
    theory_slope: float = float("nan"),
    unequilibrated: np.ndarray | None = None,
    refined: pd.DataFrame | None = None,
    *,
    regret: bool = False,
    span: tuple[float, float] | None = None,
    valley_rows: pd.DataFrame | None = None,
    gain_resolved: bool | None = None,
    chosen: tuple[float, float] | None = None,
) -> matplotlib.image.AxesImage:
    """One heatmap panel: x = lr index, y = wd index, see the module docstring.

    ``theory_slope``: the predicted valley slope (:mod:`analysis.theory`), drawn as a line
    through the best cell over the lr rows of the slope fit (none when ``gain_resolved`` is
    False or no row is in the fit); ``unequilibrated``: a mask like the grid of the cells to
    hatch (none of their trials reached the equilibrium angle). ``refined``: every cell of a
    valley tracer (``sweep=valley``; ``cells`` is its coarse grid): the points off the grid are
    drawn as small squares in the colour of their error, and the valley runs through all of
    them. ``regret``: the colour is each cell's regret from the panel's best cell in points
    (:func:`regret_colors`; ``norm`` in points), else the error itself. ``span``: ``(lr
    decades, wd decades)`` the axes show, so that every panel of a figure has the same scale
    per decade (the grid centred in it). ``valley_rows``: the variant's rows of valley.csv
    (:func:`analysis.metrics.valley` with ``in_fit``); without it the valley is computed here.
    Rows of the valley left out of the fit are drawn as hollow circles. ``chosen``: the ``(lr,
    wd)`` of the cell the analysis chose as best (metrics' ``best_lr``, ``best_weight_decay``,
    chosen on its selection metric), circled red; without it the least error is."""
    lrs, wds, E = grid(cells, variant)
    _, _, D = grid(cells, variant, value="diverged")
    D = np.nan_to_num(D)
    all_div = D >= 1
    C = regret_colors(E, all_div) if regret else np.where(all_div, np.nan, E)
    shown = np.ma.masked_invalid(C)
    im = ax.imshow(
        shown.T, origin="lower", cmap=cmap, norm=norm, interpolation="nearest", aspect="equal"
    )
    nl, nw = E.shape
    ax.set_xlim(-0.5, nl - 0.5)
    ax.set_ylim(-0.5, nw - 0.5)
    q = 1.0  # display length of one y cell over one x cell
    if span is not None:
        ax.set_aspect("auto")
        xlim, ylim = _span_limits(lrs, span[0]), _span_limits(wds, span[1])
        ax.set_xlim(*xlim)
        ax.set_ylim(*ylim)
        box = panel_box(span)
        ax.set_box_aspect(box)
        q = box * (xlim[1] - xlim[0]) / (ylim[1] - ylim[0])
    for i, j in zip(*np.nonzero(all_div)):
        ax.add_patch(
            Rectangle(
                (i - 0.5, j - 0.5),
                1,
                1,
                facecolor="#e3e3e3",
                edgecolor="#8a8a8a",
                hatch="////",
                linewidth=0,
            )
        )
    for i, j in zip(*np.nonzero((D > 0) & ~all_div)):
        ax.plot(i + 0.3, j + 0.3, marker="x", color="black", ms=3, mew=0.8)
    if unequilibrated is not None:
        for i, j in zip(*np.nonzero(unequilibrated & ~all_div)):
            ax.add_patch(
                Rectangle(
                    (i - 0.5, j - 0.5), 1, 1, fill=False, edgecolor=UNEQUILIBRATED_COLOR,
                    hatch=UNEQUILIBRATED_HATCH, linewidth=0, zorder=2,
                )
            )  # fmt: skip
    # the n best cells (missing and all-diverged cells never count)
    flat = np.where(np.isfinite(E) & ~all_div, E, np.inf).ravel()
    n_ok = int(np.isfinite(flat).sum())
    order = np.argsort(flat, kind="stable")[: n_circled(n_ok, n_best)]
    best_idx = int(order[0]) if len(order) else -1
    if chosen is not None and len(order):  # the cell the analysis chose (on validation)
        ci = np.nonzero(np.isclose(lrs, chosen[0], rtol=1e-6))[0]
        cj = np.nonzero(np.isclose(wds, chosen[1], rtol=1e-6, atol=0.0))[0]
        if len(ci) and len(cj) and np.isfinite(flat[np.ravel_multi_index((ci[0], cj[0]), E.shape)]):
            best_idx = int(np.ravel_multi_index((ci[0], cj[0]), E.shape))
    rx = 0.36 * min(1.0, q)  # a circle on screen, inside the cell
    for idx in [int(k) for k in order if k != best_idx] + ([best_idx] if best_idx >= 0 else []):
        i, j = np.unravel_index(idx, E.shape)
        ax.add_patch(
            Ellipse(
                (i, j),
                2 * rx,
                2 * rx / q,
                fill=False,
                lw=1.5 if idx == best_idx else 0.9,
                edgecolor=VALLEY_COLOR if idx == best_idx else "white",
                zorder=4.1 if idx == best_idx else 4,
            )
        )
    need_valley = show_valley or np.isfinite(theory_slope)
    v = fit = None
    if need_valley:
        if refined is not None:  # the valley through every measured point of each row
            fit_args: tuple = (*grid(refined, variant), refine, True)
        else:
            fit_args = (lrs, wds, E, refine)
        if valley_rows is not None:
            v = valley_rows[valley_rows["variant"] == variant] if "variant" in valley_rows else (
                valley_rows
            )  # fmt: skip
        else:
            v = valley(*fit_args)
        fit = valley_fit_rows(v) if len(v) else v
    if len(order) and np.isfinite(theory_slope) and gain_resolved is not False and len(fit):
        i, j = np.unravel_index(best_idx, E.shape)
        fit_lrs = fit["lr"].to_numpy(float)
        if not np.any(np.isclose(fit_lrs, lrs[i])):  # anchor on the fit's best row instead
            k = int(np.argmin(fit["best_error"].to_numpy(float)))
            i = int(np.argmin(np.abs(np.log(lrs) - np.log(fit_lrs[k]))))
            j = int(
                np.argmin(np.abs(np.log(np.maximum(wds, 1e-300)) - np.log(fit["best_wd"].iloc[k])))
            )
        _theory_line(ax, lrs, wds, i, j, theory_slope, lr_range=(fit_lrs.min(), fit_lrs.max()))
    if show_valley and v is not None:
        pos = wds > 0
        if len(v) and pos.any():
            lw_pos, idx_pos = np.log(wds[pos]), np.nonzero(pos)[0].astype(float)

            def wd_index(w: np.ndarray) -> np.ndarray:
                w = np.asarray(w, float)
                out = np.interp(np.log(np.maximum(w, 1e-300)), lw_pos, idx_pos)
                return np.where(w > 0, out, 0.0)

            def lr_index(x: np.ndarray) -> np.ndarray:
                return np.interp(
                    np.log(np.asarray(x, float)), np.log(lrs), np.arange(nl, dtype=float)
                )

            if refined is not None:
                mine = refined[refined["variant"] == variant]
                extra = mine[~mine["weight_decay"].isin(wds)]
                colours = extra["mean"].to_numpy(float)
                if regret and len(extra):
                    alive = np.where(all_div, np.nan, E)
                    base = np.nanmin(alive) if np.isfinite(alive).any() else 0.0
                    colours = 100 * (colours - base)
                ax.scatter(
                    lr_index(extra["lr"]), wd_index(extra["weight_decay"]),
                    c=colours, cmap=cmap, norm=norm, marker="s", s=7,
                    edgecolors="white", linewidths=0.4, zorder=4.5,
                )  # fmt: skip
            v = v[v["informative"]]
            ax.plot(lr_index(v["lr"]), wd_index(v["best_wd"]), color=VALLEY_COLOR, lw=1.0,
                    alpha=0.9, zorder=5)  # fmt: skip
            fit = valley_fit_rows(v)
            ax.plot(lr_index(fit["lr"]), wd_index(fit["best_wd"]), ls="none", marker="o", ms=2.2,
                    color=VALLEY_COLOR, zorder=5)  # fmt: skip
            out_rows = v[~v["in_fit"].astype(bool)] if "in_fit" in v else v.iloc[:0]
            if len(out_rows):  # rows left out of the fit: hollow
                ax.plot(lr_index(out_rows["lr"]), wd_index(out_rows["best_wd"]), ls="none",
                        marker="o", ms=3.2, mfc="none", mec=VALLEY_COLOR, mew=0.8,
                        zorder=5)  # fmt: skip
            slope, icpt = _fit_line(fit) if valley_rows is not None else coupling_fit(*fit_args)
            if np.isfinite(slope) and len(fit) >= 2:
                xs = np.linspace(fit["lr"].min(), fit["lr"].max(), 50)
                ws = np.exp(icpt + slope * np.log(xs))
                keep = (ws >= wds[pos].min()) & (ws <= wds[pos].max())
                ax.plot(
                    lr_index(xs)[keep],
                    wd_index(ws[keep]),
                    color="white",
                    lw=0.9,
                    ls=(0, (3, 2)),
                    zorder=5,
                )
    if annotate:
        size = max(3.5, min(6.5, 60 / max(nl, nw)))
        for (i, j), e in np.ndenumerate(E):
            if np.isfinite(e) and not all_div[i, j]:
                r, g, b, _ = plt.get_cmap(cmap)(norm(C[i, j]))
                light = 0.299 * r + 0.587 * g + 0.114 * b > 0.5
                ax.text(
                    i,
                    j,
                    f"{100 * e:.1f}",
                    ha="center",
                    va="center",
                    fontsize=size,
                    color="black" if light else "white",
                    zorder=3,
                )
    ax.set_xticks(*axis_ticks(lrs, 5))
    ax.set_yticks(*axis_ticks(wds, 9 if nw <= 9 else 6))
    ax.set_xticks(range(nl), minor=True)
    ax.set_yticks(range(nw), minor=True)
    ax.tick_params(which="major", length=3, pad=1.5)
    ax.tick_params(which="minor", length=1.5)
    for spine in ax.spines.values():
        spine.set_linewidth(0.5)
    return im


def _fit_line(fit: pd.DataFrame) -> tuple[float, float]:
    """``(slope, intercept)`` of log best wd on log lr over a valley table's fit rows,
    weighted by their ``weight`` column when there is one."""
    fit = fit[fit["best_wd"] > 0]
    if fit["lr"].nunique() < 2:
        return float("nan"), float("nan")
    w = fit["weight"].to_numpy(float) if "weight" in fit else None
    if w is not None and not (np.isfinite(w).all() and (w > 0).any()):
        w = None
    s, c = np.polyfit(np.log(fit["lr"].to_numpy(float)), np.log(fit["best_wd"].to_numpy(float)),
                      1, w=None if w is None else np.sqrt(w))  # fmt: skip
    return float(s), float(c)


def _log_index(values: np.ndarray):
    """``log value -> fractional cell index`` of a log-spaced axis (positive values only),
    extrapolated linearly beyond its ends; None when fewer than two positive values."""
    idx = np.nonzero(values > 0)[0].astype(float)
    logs = np.log(values[values > 0])
    if len(logs) < 2:
        return None
    lo = (idx[1] - idx[0]) / (logs[1] - logs[0])
    hi = (idx[-1] - idx[-2]) / (logs[-1] - logs[-2])

    def to_index(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, float)
        out = np.interp(x, logs, idx)
        out = np.where(x < logs[0], idx[0] + (x - logs[0]) * lo, out)
        return np.where(x > logs[-1], idx[-1] + (x - logs[-1]) * hi, out)

    return to_index


def _theory_line(
    ax: plt.Axes,
    lrs: np.ndarray,
    wds: np.ndarray,
    i: int,
    j: int,
    slope: float,
    lr_range: tuple[float, float] | None = None,
) -> None:
    """The theory's valley ``log wd = log wd* + slope (log lr - log lr*)`` through cell (i, j)
    across the panel, or over ``lr_range`` (the fitted rows) and half a cell beyond (clipped to
    the panel; never into a zero-wd column)."""
    x_of, y_of = _log_index(lrs), _log_index(wds)
    if x_of is None or y_of is None or wds[j] <= 0:
        return
    lo, hi = np.log(lrs[0]) - 1.0, np.log(lrs[-1]) + 1.0
    if lr_range is not None:
        half = 0.5 * np.log(10) * log_step(lrs)
        lo, hi = np.log(lr_range[0]) - half, np.log(lr_range[1]) + half
    logs = np.linspace(lo, hi, 200)
    x = x_of(logs)
    y = y_of(np.log(wds[j]) + slope * (logs - np.log(lrs[i])))
    first = np.nonzero(wds > 0)[0][0] - 0.5
    y = np.where(y >= first, y, np.nan)
    ax.plot(x, y, color=THEORY_COLOR, lw=1.0, ls=(0, (1, 1.2)), zorder=5)


def _slope_text(m: pd.Series) -> str:
    """``slope −0.94 [−1.06, −0.51]`` with an interval, else the per-seed range and its n."""
    if not np.isfinite(m.get("coupling_slope", np.nan)):
        return "slope n/a"
    text = f"slope {m.coupling_slope:+.2f}"
    if np.isfinite(m.get("coupling_slope_lo", np.nan)):
        text += f" [{m.coupling_slope_lo:+.2f}, {m.coupling_slope_hi:+.2f}]"
    elif m.get("coupling_slope_seed_n", 0) >= 2:
        lo, hi = m.coupling_slope_seed_min, m.coupling_slope_seed_max
        text += f", seeds {lo:+.2f}..{hi:+.2f} (n={int(m.coupling_slope_seed_n)})"
    return text.replace("-", "−")


def _variant_panels(axes, fams, decs, variants):
    """``(axis, variant, leftmost)`` for each panel of a family x decay grid of axes, row by
    row; panels with no variant are switched off. ``leftmost``: no panel to its left is drawn."""
    for r, fam in enumerate(fams):
        for c, dec in enumerate(decs):
            ax = axes[r][c]
            v = f"{fam}/{dec}"
            if v not in variants:
                ax.set_axis_off()
                continue
            yield ax, v, c == 0 or f"{fam}/{decs[c - 1]}" not in variants


def _theory_text(m: pd.Series | None) -> str:
    """`` · theory −1``: the valley slope scale invariance predicts (metrics'
    ``predicted_slope``), for the panel title next to the measured slope; "" when unknown."""
    p = np.nan if m is None else m.get("predicted_slope", np.nan)
    if not np.isfinite(p):
        return ""
    return f" · theory {'0' if p == 0 else f'{p:+.0f}'}".replace("-", "−")


def _panel_numbers(m: pd.Series | None) -> str:
    if m is None:
        return ""
    slope = _slope_text(m)
    if not m.get("valley_interior", True) and np.isfinite(m.coupling_slope):
        slope += " (edge)"
    near = (
        f"near-opt {int(m.near_optimal_cells)}/{int(m.n_cells)}"
        if m.get("analysis_grid", "grid") == "grid"
        else f"near-opt {100 * m.near_optimal_fraction:.0f}%"
    )
    if not np.isfinite(m.get("near_optimal_fraction", np.nan)):
        near = "near-opt n/a"
    sep = f"sep {m.separability:.2f}" if np.isfinite(m.separability) else "sep n/a"
    lines = [slope, f"best {100 * m.best_error:.2f}% · {near} · {sep}"]
    if np.isfinite(m.get("transfer_regret_1", np.nan)):
        lines.append(f"transfer ±1 lr step: {round(100 * m.transfer_regret_1, 1) + 0.0:.1f} pts")
    return "\n".join(lines)


def legend_columns(fig_width: float, labels: list[str], fontsize: float = 7.0) -> int:
    """Legend columns that fit ``fig_width`` inches: the longest label (about 0.55 fontsize
    points per character) plus the handle and spacing per column."""
    longest = max((len(lb) for lb in labels), default=10)
    col = (longest * 0.55 * fontsize + 3.6 * fontsize) / 72
    return max(1, min(len(labels), int((fig_width - 0.2) // col)))


def _legend_below(fig: plt.Figure, handles: list, labels: list[str] | None = None, **kw) -> None:
    labels = labels if labels is not None else [h.get_label() for h in handles]
    ncol = legend_columns(fig.get_figwidth(), labels, kw.get("fontsize", 7))
    ncol = math.ceil(len(labels) / math.ceil(len(labels) / ncol))  # balanced rows
    if ncol < len(labels) and ncol > 1:  # fill rows first (matplotlib fills columns)
        rows = math.ceil(len(labels) / ncol)
        grid_ = [list(range(len(labels)))[r * ncol : (r + 1) * ncol] for r in range(rows)]
        order = [g[c] for c in range(ncol) for g in grid_ if c < len(g)]
        handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncol=ncol,
        frameon=False,
        handlelength=kw.pop("handlelength", 1.8),
        columnspacing=1.2,
        **kw,
    )


def heatmap_figure(
    cells: pd.DataFrame,
    metrics: pd.DataFrame | None = None,
    variants: list[str] | None = None,
    *,
    metric_label: str = "test error",
    n_best: int = 10,
    annotate: bool = False,
    cmap: str = "viridis",
    title: str | None = None,
    refine: bool = True,
    equilibrium: pd.DataFrame | None = None,
    refined: pd.DataFrame | None = None,
    colour: str = "regret",
    regret_clip: float = REGRET_CLIP,
    valleys: pd.DataFrame | None = None,
    same_span: bool = True,
) -> plt.Figure:
    """The Figure-2 grid of heatmaps for every variant in ``cells`` (see the module docstring).

    ``colour="regret"`` colours each cell by its regret from its variant's best cell, in points
    of error, clipped at ``regret_clip`` points (the colour bar says so), so that a valley one or
    two points deep is visible; ``colour="error"`` colours by the error on one scale shared by
    all panels. ``same_span``: every panel shows the same number of lr decades and of wd decades
    (the widest grid's), so slopes read by eye compare across panels. ``valleys`` (valley.csv:
    the best wd per lr row with ``in_fit``) draws each panel's valley and fit from the analysis'
    own rows; without it they are recomputed from the cells. The fit and the theory's line run
    over the rows of the fit only, the theory's line not at all when the variant's wd gain is
    not resolved (``wd_gain_lo`` <= 0, else ``wd_gain_resolved`` false in ``metrics``).

    ``metrics`` (from :func:`analysis.metrics.metrics_table`) adds the numbers above each panel
    and, with its ``predicted_slope`` column, the theory's valley through the best cell.
    ``equilibrium`` (:func:`analysis.theory.cell_equilibrium`) hatches the cells none of whose
    trials reached the equilibrium angle; without it (no measured angles) nothing is hatched.
    ``refined`` (a valley tracer's cells, :func:`draw_panel`) adds its refined points.
    """
    mixed = [c for c in ("experiment", "model", "data") if c in cells]
    if mixed:
        raise ValueError(
            f"cells: mix several {'/'.join(mixed)} values; draw each part of "
            "analysis.load.split_groups(trials) on its own"
        )
    if colour not in ("regret", "error"):
        raise ValueError(f"colour: {colour!r} is not one of regret, error")
    if colour == "regret" and not (np.isfinite(regret_clip) and regret_clip > 0):
        raise ValueError(f"regret_clip: {regret_clip} must be a positive number of points")
    variants = variants or list(dict.fromkeys(cells["variant"]))
    fams, decs = _layout(variants)
    regret = colour == "regret"
    if regret:
        worst = 0.0
        for v in variants:
            _, _, E = grid(cells, v)
            _, _, D = grid(cells, v, value="diverged")
            R = regret_colors(E, np.nan_to_num(D) >= 1)
            worst = max(worst, float(np.nanmax(R)) if np.isfinite(R).any() else 0.0)
        norm = Normalize(vmin=0.0, vmax=regret_clip)
        clipped = worst > regret_clip
    else:
        vmin, vmax, clipped = color_range(cells[cells["variant"].isin(variants)])
        norm = Normalize(vmin=vmin, vmax=vmax)
    mrows = {} if metrics is None else {r.variant: r for _, r in metrics.iterrows()}
    counts = set(cells.loc[cells["variant"].isin(variants), "count"])
    grids = [grid(cells, v) for v in variants]
    nl = max(E.shape[0] for _, _, E in grids)
    nw = max(E.shape[1] for _, _, E in grids)
    span = None
    box = nw / nl
    if same_span:
        span = (max(axis_decades(lr) for lr, _, _ in grids),
                max(axis_decades(wd) for _, wd, _ in grids))  # fmt: skip
        box = panel_box(span)
    panel_w = 2.3
    panel_h = (panel_w - 0.45) * box + 1.0
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            len(fams),
            len(decs),
            squeeze=False,
            layout="constrained",
            figsize=(panel_w * len(decs) + 1.0, (panel_h + 0.3) * len(fams) + 0.55),  # + titles
        )
        im = None
        any_theory = any_hatched = False
        for ax, v, leftmost in _variant_panels(axes, fams, decs, variants):
            m = mrows.get(v)
            predicted = float(m.get("predicted_slope", np.nan)) if m is not None else np.nan
            mask = _unequilibrated_mask(cells, equilibrium, v)
            any_theory |= bool(np.isfinite(predicted))
            any_hatched |= bool(mask is not None and mask.any())
            im = draw_panel(
                ax, cells, v, norm, cmap, n_best, annotate, refine=refine,
                theory_slope=predicted, unequilibrated=mask, refined=refined, regret=regret,
                span=span, valley_rows=valleys, gain_resolved=_gain_resolved(m),
                chosen=_chosen(m),
            )  # fmt: skip
            numbers = _panel_numbers(mrows.get(v))
            head = variant_title(v) + _theory_text(m) + (f"\n{numbers}" if numbers else "")
            ax.set_title(head, fontsize=7.2, linespacing=1.25, pad=3)
            ax.set_xlabel("initial learning rate")
            if leftmost:
                ax.set_ylabel("weight decay")
        if im is not None:
            cb = fig.colorbar(
                im,
                ax=axes,
                shrink=min(0.9, 0.45 + 0.25 * len(fams)),
                pad=0.02,
                aspect=25,
                extend="max" if clipped else "neither",
            )
            cb.ax.yaxis.set_major_locator(
                matplotlib.ticker.MaxNLocator(nbins=7, steps=[1, 2, 5, 10])
            )
            if len(counts) == 1:
                n = counts.pop()
                seeds = f"mean of {n} seeds" if n > 1 else "one seed"
            else:
                seeds = "mean of each cell's trials"
            if regret:
                cb.set_label(
                    f"{metric_label} − the variant's best, points\n"
                    f"({seeds}; clipped at {regret_clip:g})"
                )
            else:
                cb.ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
                cb.set_label(f"{metric_label} ({seeds})")
            cb.ax.tick_params(labelsize=7, length=2)
        counts = {n_circled(int(np.isfinite(grid(cells, v)[2]).sum()), n_best) for v in variants}
        best_label = (
            f"{counts.pop()} best" if len(counts) == 1 else f"{n_best} best (fewer on small grids)"
        )
        handles = [
            Line2D(
                [],
                [],
                ls="none",
                marker="o",
                mfc="none",
                mec=VALLEY_COLOR,
                mew=1.4,
                ms=7,
                label="best setting (the analysis' choice)",
            ),
            Line2D(
                [],
                [],
                ls="none",
                marker="o",
                mfc="#555555",
                mec="white",
                mew=1.0,
                ms=7,
                label=best_label,
            ),
            Line2D(
                [],
                [],
                color=VALLEY_COLOR,
                marker="o",
                ms=2.5,
                lw=1.0,
                label="best wd per lr (valley)",
            ),
            Line2D(
                [],
                [],
                ls="none",
                marker="o",
                mfc="none",
                mec=VALLEY_COLOR,
                mew=0.8,
                ms=3.2,
                label="row left out of the fit",
            ),
            Line2D(
                [],
                [],
                color="#555555",
                lw=1.0,
                ls=(0, (3, 2)),
                label="log-log fit (slope), over the fitted rows",
            ),
            Patch(facecolor="#e3e3e3", edgecolor="#8a8a8a", hatch="////", lw=0, label="diverged"),
            Line2D([], [], ls="none", marker="x", color="black", ms=4, label="some seeds diverged"),
        ]
        if any_theory:
            handles.append(
                Line2D([], [], color=THEORY_COLOR, lw=1.2, ls=(0, (1, 1.2)),
                       label="theory valley (predicted slope) through the best, fitted rows")
            )  # fmt: skip
        if any_hatched:
            handles.append(
                Patch(facecolor="#777777", edgecolor=UNEQUILIBRATED_COLOR,
                      hatch=UNEQUILIBRATED_HATCH, lw=0, label="not equilibrated")
            )  # fmt: skip
        if refined is not None:
            handles.append(
                Line2D([], [], ls="none", marker="s", mfc="#555555", mec="white", mew=0.6, ms=4,
                       label="refined wd (valley tracer)")
            )  # fmt: skip
        _legend_below(fig, handles, fontsize=7)
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


def _chosen(m: pd.Series | None) -> tuple[float, float] | None:
    """``(best_lr, best_weight_decay)`` of a metrics row, None when it has none."""
    if m is None:
        return None
    lr = pd.to_numeric(pd.Series([m.get("best_lr", np.nan)]), errors="coerce").iloc[0]
    wd = pd.to_numeric(pd.Series([m.get("best_weight_decay", np.nan)]), errors="coerce").iloc[0]
    return (float(lr), float(wd)) if np.isfinite(lr) and np.isfinite(wd) else None


def _gain_resolved(m: pd.Series | None) -> bool | None:
    """Whether the variant's wd gain is resolved: its interval's low end above 0
    (``wd_gain_lo``), else ``wd_gain_resolved``; None when ``metrics`` says neither."""
    if m is None:
        return None
    lo = pd.to_numeric(pd.Series([m.get("wd_gain_lo", np.nan)]), errors="coerce").iloc[0]
    if np.isfinite(lo):
        return bool(lo > 0)
    flag = m.get("wd_gain_resolved", None)
    if flag is None or (isinstance(flag, float) and not np.isfinite(flag)):
        return None
    return str(flag).strip().lower() in ("true", "1", "1.0")


def _unequilibrated_mask(
    cells: pd.DataFrame, equilibrium: pd.DataFrame | None, variant: str
) -> np.ndarray | None:
    """``True`` where none of the cell's decided trials equilibrated, on the panel's grid;
    None when there is nothing to hatch (no theory frame, or no decided cell)."""
    if equilibrium is None or equilibrium.empty:
        return None
    part = equilibrium[equilibrium["variant"] == variant]
    part = part[np.isfinite(part["equilibrated"].to_numpy(float))]
    if part.empty:
        return None
    lrs, wds, _ = grid(cells, variant)
    mask = np.zeros((len(lrs), len(wds)), bool)
    for lr, wd, frac in part[["lr", "weight_decay", "equilibrated"]].itertuples(index=False):
        i, j = np.searchsorted(lrs, lr), np.searchsorted(wds, wd)
        if i < len(lrs) and j < len(wds) and lrs[i] == lr and wds[j] == wd:
            mask[i, j] = frac == 0
    return mask


def _variant_style(variant: str) -> dict:
    fam, _, dec = variant.partition("/")
    return {
        "color": _by_order(dec, registry.names("decay"), DECAY_PALETTE, "#555555"),
        "ls": _by_order(fam, registry.names("optimizer"), FAMILY_LINESTYLES, ":"),
        "label": variant_title(variant),
    }


def regret_figure(
    regret: pd.DataFrame,
    tol: float = 0.25,
    metric_label: str = "test error",
    title: str | None = None,
    seeds: pd.DataFrame | None = None,
) -> plt.Figure:
    """Random search on the grid: expected regret (best of k random cells minus the grid's best)
    against k in error points, the same divided by ``wd_gain`` (what tuning the decay buys), and
    P(one of k cells has normalized regret <= ``tol``).

    Every panel is a seaborn line plot, one line per variant (colour: decay form, dashes:
    optimizer family). With ``seeds`` (:func:`analysis.metrics.regret_seed_table`, more than one
    seed) a regret panel's line is the mean of the seeds' own curves and its band their range;
    otherwise the line is the seed-mean grid's curve (``regret``)."""
    variants = list(dict.fromkeys(regret["variant"]))
    use_seeds = (
        seeds is not None and len(seeds) and seeds.groupby("variant")["seed"].nunique().max() > 1
    )
    data = seeds if use_seeds else regret
    palette = {v: _variant_style(v)["color"] for v in variants}
    dashes = {v: _dash(_variant_style(v)["ls"]) for v in variants}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(9.0, 3.0), layout="constrained")
        for ax, col, ylabel in (
            (axes[0], "regret", f"expected regret ({metric_label}, points)"),
            (axes[1], "regret_normalized", "expected regret / wd gain"),
        ):
            d = data.assign(y=data[col] * (100 if col == "regret" else 1))
            d = d[np.isfinite(d["y"])]
            if len(d):
                sns.lineplot(
                    data=d, x="k", y="y", hue="variant", style="variant", hue_order=variants,
                    style_order=variants, palette=palette, dashes=dashes, lw=1.3, ax=ax,
                    errorbar=("pi", 100) if use_seeds else None, estimator="mean", legend=False,
                )  # fmt: skip
            ax.set_ylabel(ylabel)
            ax.set_ylim(bottom=0)
        axes[0].set_title(
            "E[best of k] − best" + (" (band: range of the seeds)" if use_seeds else "")
        )
        axes[1].set_title("normalized by what decay buys")
        axes[1].axhline(tol, color="#888888", lw=0.6, ls=":")
        near = regret[np.isfinite(regret["p_near_optimal"])]
        if len(near):
            sns.lineplot(
                data=near, x="k", y="p_near_optimal", hue="variant", style="variant",
                hue_order=variants, style_order=variants, palette=palette, dashes=dashes, lw=1.3,
                ax=axes[2], errorbar=None, legend=False,
            )  # fmt: skip
        axes[2].set_ylabel("probability")
        axes[2].set_ylim(0, 1.02)
        axes[2].set_title(f"P(normalized regret ≤ {tol:g} within k)")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_xlabel("random grid trials k")
            ax.grid(alpha=0.25, lw=0.5)
            ax.spines[["top", "right"]].set_visible(False)
        handles = [
            Line2D([], [], color=palette[v], ls=_variant_style(v)["ls"], lw=1.4,
                   label=variant_title(v))
            for v in variants
        ]  # fmt: skip
        _legend_below(fig, handles, handlelength=2.2)
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


BOX_LABELS = {"box": "search box", "half": "box halved"}


def budget_figure(
    budget: pd.DataFrame,
    metric_label: str = "test error",
    title: str | None = None,
    metrics: pd.DataFrame | None = None,
) -> plt.Figure:
    """Tuning cost per trial budget (``budget.csv``): the expected test error at the
    validation-best of k cells drawn at random from each variant's search box, against k; one
    panel per optimizer family, one seaborn line per variant (colour: decay form), the search
    box solid and the box halved dashed, the seed-bootstrap interval (``expected_error_lo/hi``)
    as a band. With ``metrics``, each variant's best error is a thin dotted line and
    ``trials_to_within_1pt`` is in the legend."""
    need = {"variant", "box", "k", "expected_error"}
    if not need <= set(budget.columns):
        missing = ", ".join(sorted(need - set(budget.columns)))
        raise ValueError(f"budget: missing column(s) {missing}; pass analysis' budget.csv")
    data = budget[np.isfinite(pd.to_numeric(budget["expected_error"], errors="coerce"))].copy()
    if data.empty:
        raise ValueError("budget: no finite expected_error to draw")
    data["y"] = 100 * data["expected_error"].astype(float)
    boxes = list(dict.fromkeys(data["box"].astype(str)))
    data["box"] = data["box"].astype(str)
    variants = list(dict.fromkeys(data["variant"]))
    fams, _ = _layout(variants)
    palette = {v: _variant_style(v)["color"] for v in variants}
    dashes = {b: "" if i == 0 else (4, 2) for i, b in enumerate(boxes)}
    mrows = {} if metrics is None else {r.variant: r for _, r in metrics.iterrows()}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, len(fams), figsize=(3.4 * len(fams), 3.2), squeeze=False, layout="constrained",
            sharey=True,
        )  # fmt: skip
        for ax, fam in zip(axes[0], fams):
            part = data[data["variant"].str.split("/").str[0] == fam]
            mine = [v for v in variants if v in set(part["variant"])]
            sns.lineplot(
                data=part, x="k", y="y", hue="variant", hue_order=mine, palette=palette,
                style="box", style_order=boxes, dashes=dashes, lw=1.3, errorbar=None, ax=ax,
                legend=False,
            )  # fmt: skip
            if {"expected_error_lo", "expected_error_hi"} <= set(part.columns):
                for (v, _box), g in part.groupby(["variant", "box"], sort=False):
                    lo = 100 * pd.to_numeric(g["expected_error_lo"], errors="coerce")
                    hi = 100 * pd.to_numeric(g["expected_error_hi"], errors="coerce")
                    ok = np.isfinite(lo.to_numpy(float)) & np.isfinite(hi.to_numpy(float))
                    if ok.any():
                        ax.fill_between(
                            g["k"].to_numpy(float)[ok], lo.to_numpy(float)[ok],
                            hi.to_numpy(float)[ok], color=palette[v], alpha=0.15, lw=0,
                        )  # fmt: skip
            for v in mine:
                m = mrows.get(v)
                best = np.nan if m is None else float(m.get("best_error", np.nan))
                if np.isfinite(best):
                    ax.axhline(100 * best, color=palette[v], lw=0.6, ls=":", alpha=0.8)
            ax.set_xscale("log")
            ax.set_xlabel("random cells tried (k)")
            ax.set_ylabel(f"expected {metric_label} (%)")
            ax.set_title(f"{_family_label(fam)}: the validation-best of k cells")
            ax.grid(alpha=0.25, lw=0.5)
            ax.spines[["top", "right"]].set_visible(False)
            own = []  # this panel's variants, with the budget that gets within a point
            for v in mine:
                label = variant_title(v)
                m = mrows.get(v)
                if m is not None and "trials_to_within_1pt" in m:
                    k1 = float(m.get("trials_to_within_1pt", np.nan))
                    label += (
                        f": within 1 pt at k = {int(k1)}"
                        if np.isfinite(k1)
                        else ": never within 1 pt"
                    )
                own.append(Line2D([], [], color=palette[v], lw=1.4, label=label))
            ax.legend(handles=own, loc="upper right", fontsize=6, frameon=False)
        handles = [
            Line2D([], [], color="#555555", lw=1.2, ls=_dash_style(dashes[b]),
                   label=BOX_LABELS.get(b, b))
            for b in boxes
        ]  # fmt: skip
        if {"expected_error_lo", "expected_error_hi"} <= set(data.columns):
            handles.append(Patch(facecolor="#999999", alpha=0.3, label="seed-bootstrap interval"))
        if mrows:
            handles.append(Line2D([], [], color="#555555", lw=0.6, ls=":", label="best error"))
        _legend_below(fig, handles, handlelength=2.2)
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


def _dash_style(dash: tuple | str) -> tuple | str:
    """A seaborn dash spec as a matplotlib line style."""
    return "-" if dash == "" else (0, dash)


def _dash(ls: str) -> tuple | str:
    """A matplotlib line style as a seaborn dash spec."""
    return {"-": "", "--": (4, 2), "-.": (4, 1.5, 1, 1.5), ":": (1, 1.5)}.get(ls, "")


def valley_figure(
    valleys: pd.DataFrame, metrics: pd.DataFrame | None = None, title: str | None = None
) -> plt.Figure:
    """Best weight decay against lr (log-log), one panel per optimizer family; filled markers are
    the rows the coupling slope is fit over, the lines the fits, the slopes in the legend."""
    fams, _ = _layout(list(dict.fromkeys(valleys["variant"])))
    mrows = {} if metrics is None else {r.variant: r for _, r in metrics.iterrows()}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, len(fams), figsize=(3.3 * len(fams), 3.2), squeeze=False, layout="constrained"
        )
        for ax, fam in zip(axes[0], fams):
            part = valleys[valleys["variant"].str.split("/").str[0] == fam]
            for v, g in part.groupby("variant", sort=False):
                st = _variant_style(v)
                g = g[g["best_wd"] > 0]
                label = st["label"]
                m = mrows.get(v)
                if m is not None and np.isfinite(m.coupling_slope):
                    label += f": slope {m.coupling_slope:+.2f}".replace("-", "−")
                ax.plot(g["lr"], g["best_wd"], color=st["color"], lw=0.6, alpha=0.5)
                fit = g[g["in_fit"]]
                ax.plot(fit["lr"], fit["best_wd"], ls="none", marker="o", ms=3.5, color=st["color"])
                rest = g[~g["in_fit"]]
                ax.plot(
                    rest["lr"],
                    rest["best_wd"],
                    ls="none",
                    marker="o",
                    ms=3.5,
                    mfc="none",
                    color=st["color"],
                )
                if len(fit) >= 2:
                    s, c = np.polyfit(np.log(fit["lr"]), np.log(fit["best_wd"]), 1)
                    xs = np.geomspace(fit["lr"].min(), fit["lr"].max(), 20)
                    ax.plot(
                        xs,
                        np.exp(c + s * np.log(xs)),
                        color=st["color"],
                        ls=st["ls"],
                        lw=1.3,
                        label=label,
                    )
                else:
                    ax.plot([], [], color=st["color"], ls=st["ls"], label=label)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("initial learning rate")
            ax.set_ylabel("best weight decay")
            ax.set_title(_family_label(fam))
            ax.grid(alpha=0.25, lw=0.5, which="major")
            ax.spines[["top", "right"]].set_visible(False)
        handles = {}
        for ax in axes[0]:
            for h, lb in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lb, h)
        _legend_below(fig, list(handles.values()), list(handles), handlelength=2.2)
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


def scatter_figure(
    trials: pd.DataFrame,
    surfaces: dict[str, Surface],
    metrics: pd.DataFrame | None = None,
    variants: list[str] | None = None,
    *,
    metric: str = "test_error",
    cmap: str = "viridis",
    title: str | None = None,
    refine: bool = True,
) -> plt.Figure:
    """Scattered trials (random / TPE search) of each variant over log lr x log wd, coloured by
    ``metric``; the fitted surface (:func:`analysis.metrics.fit_surface`) as filled contours
    where there are trials nearby; its valley (red) and fitted slope (dashed); the best trial
    circled red. Panels laid out as in :func:`heatmap_figure`. A variant with fewer than
    ``MIN_SURFACE_TRIALS`` trials gets points only."""
    variants = variants or list(dict.fromkeys(trials["variant"]))
    fams, decs = _layout(variants)
    sub = trials[trials["variant"].isin(variants) & trials[metric].notna()]
    alive = sub.loc[~sub["diverged"].astype(bool), metric].to_numpy(float)
    vmin = float(alive.min()) if alive.size else 0.0
    vmax = float(np.percentile(alive, 90)) if alive.size else 1.0
    norm = Normalize(vmin=vmin, vmax=max(vmax, vmin + 1e-3))
    mrows = {} if metrics is None else {r.variant: r for _, r in metrics.iterrows()}
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            len(fams), len(decs), squeeze=False, layout="constrained",
            figsize=(2.6 * len(decs) + 1.0, 2.75 * len(fams) + 0.6),
        )  # fmt: skip
        sc = None
        for ax, v, _ in _variant_panels(axes, fams, decs, variants):
            pts = sub[sub["variant"] == v]
            s = surfaces.get(v)
            if s is not None:
                X, Y = np.meshgrid(s.lrs, s.wds, indexing="ij")
                Z = np.ma.masked_invalid(s.E)
                if Z.count() > 3:
                    ax.contourf(X, Y, Z, levels=np.linspace(norm.vmin, norm.vmax, 12),
                                cmap=cmap, norm=norm, extend="both", alpha=0.85)  # fmt: skip
                    ax.contour(X, Y, Z, levels=np.linspace(norm.vmin, norm.vmax, 12),
                               colors="white", linewidths=0.3, alpha=0.6)  # fmt: skip
                val = valley(s.lrs, s.wds, s.E, refine)
                val = val[val["informative"]]
                ax.plot(val["lr"], val["best_wd"], color=VALLEY_COLOR, lw=1.0, zorder=5)
                fit = valley_fit_rows(val)
                slope, icpt = coupling_fit(s.lrs, s.wds, s.E, refine)
                if np.isfinite(slope) and len(fit) >= 2:
                    xs = np.geomspace(fit["lr"].min(), fit["lr"].max(), 30)
                    ax.plot(xs, np.exp(icpt + slope * np.log(xs)), color="white", lw=0.9,
                            ls=(0, (3, 2)), zorder=5)  # fmt: skip
            ok = ~pts["diverged"].astype(bool)
            sc = ax.scatter(pts.loc[ok, "lr"], pts.loc[ok, "weight_decay"],
                            c=pts.loc[ok, metric], cmap=cmap, norm=norm, s=14,
                            edgecolors="black", linewidths=0.4, zorder=6)  # fmt: skip
            ax.scatter(pts.loc[~ok, "lr"], pts.loc[~ok, "weight_decay"], marker="x",
                       color="#555555", s=14, lw=0.8, zorder=6)  # fmt: skip
            if len(pts):
                b = pts.loc[pts[metric].idxmin()]
                ax.scatter([b["lr"]], [b["weight_decay"]], s=60, facecolors="none",
                           edgecolors=VALLEY_COLOR, linewidths=1.4, zorder=7)  # fmt: skip
            ax.set_xscale("log")
            ax.set_yscale("log")
            m = mrows.get(v)
            if m is not None and m.get("analysis_grid") == "surface":
                numbers = _panel_numbers(m)
            else:
                numbers = f"{len(pts)} trials < {MIN_SURFACE_TRIALS}: no surface, no slope"
            ax.set_title(f"{variant_title(v)}{_theory_text(m)}\n{numbers}", fontsize=7.2,
                         linespacing=1.25, pad=3)  # fmt: skip
            ax.set_xlabel("initial learning rate")
            ax.set_ylabel("weight decay")
            ax.tick_params(which="major", length=3, pad=1.5)
        if sc is not None:
            cb = fig.colorbar(sc, ax=axes, shrink=0.8, pad=0.02, aspect=25, extend="max")
            cb.ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
            cb.set_label(f"{metric.replace('_', ' ')} (one trial per point)")
            cb.ax.tick_params(labelsize=7, length=2)
        handles = [
            Line2D([], [], ls="none", marker="o", mfc="#777777", mec="black", mew=0.4, ms=4.5,
                   label="trial"),
            Line2D([], [], ls="none", marker="o", mfc="none", mec=VALLEY_COLOR, mew=1.4, ms=7,
                   label="best trial"),
            Line2D([], [], ls="none", marker="x", color="#555555", ms=4, label="diverged"),
            Patch(facecolor="#7fbf9f", label="fitted surface (kernel smoother)"),
            Line2D([], [], color=VALLEY_COLOR, lw=1.0, label="surface valley"),
            Line2D([], [], color="#555555", lw=1.0, ls=(0, (3, 2)), label="log-log fit (slope)"),
        ]  # fmt: skip
        _legend_below(fig, handles, fontsize=7)
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


def angle_figure(theory: pd.DataFrame, title: str | None = None) -> plt.Figure:
    """Measured against predicted angular update per step of the scale-invariant weights, one
    point per trial (log-log; :func:`analysis.theory.trial_theory`'s ``si_angle`` and
    ``predicted_angle``), coloured by variant; filled circles: equilibrated trials, hollow
    squares: not equilibrated. The identity line and a +-15% band around it."""
    from analysis.theory import ANGLE_BAND

    data = theory[
        np.isfinite(pd.to_numeric(theory["si_angle"], errors="coerce").to_numpy(float))
        & np.isfinite(theory["predicted_angle"].to_numpy(float))
        & (theory["predicted_angle"] > 0)
        & (pd.to_numeric(theory["si_angle"], errors="coerce") > 0)
    ].copy()
    if data.empty:
        raise ValueError("theory: no trial with both a measured (si_angle) and a predicted angle")
    data["si_angle"] = data["si_angle"].astype(float)
    eq = data["equilibrated"].astype("boolean")
    data["state"] = np.where(eq.fillna(False), "equilibrated", "not equilibrated")
    variants = list(dict.fromkeys(data["variant"]))
    palette = {v: _variant_style(v)["color"] for v in variants}
    if len(set(palette.values())) < len(palette):  # same decay form in two families
        palette = dict(zip(variants, sns.color_palette("tab10", len(variants))))
    lo = float(min(data["si_angle"].min(), data["predicted_angle"].min())) / 1.5
    hi = float(max(data["si_angle"].max(), data["predicted_angle"].max())) * 1.5
    xs = np.geomspace(lo, hi, 50)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.6, 4.2), layout="constrained")
        ax.fill_between(xs, xs * (1 - ANGLE_BAND), xs * (1 + ANGLE_BAND), color="#dddddd",
                        lw=0, zorder=0)  # fmt: skip
        ax.plot(xs, xs, color="#555555", lw=0.8, zorder=1)
        sns.scatterplot(
            data=data, x="predicted_angle", y="si_angle", hue="variant", hue_order=variants,
            palette=palette, style="state", style_order=["equilibrated", "not equilibrated"],
            markers={"equilibrated": "o", "not equilibrated": "s"}, s=22, linewidth=0.4,
            edgecolor="black", ax=ax, legend=False, zorder=3,
        )  # fmt: skip
        hollow = data[data["state"] == "not equilibrated"]
        if len(hollow):  # redraw them hollow: the colour on the edge only
            for v, g in hollow.groupby("variant", sort=False):
                ax.scatter(g["predicted_angle"], g["si_angle"], marker="s", s=22,
                           facecolors="white", edgecolors=[palette[v]], linewidths=1.0,
                           zorder=4)  # fmt: skip
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("predicted angle per step (rad)")
        ax.set_ylabel("measured angle per step (rad), last quarter")
        n_eq = int((data["state"] == "equilibrated").sum())
        ax.set_title(f"scale-invariant weights: {n_eq}/{len(data)} trials equilibrated")
        ax.grid(alpha=0.25, lw=0.5, which="major")
        handles = [
            Line2D([], [], ls="none", marker="o", mfc=palette[v], mec="black", mew=0.4, ms=5,
                   label=variant_title(v))
            for v in variants
        ]  # fmt: skip
        handles += [
            Line2D([], [], ls="none", marker="o", mfc="#777777", mec="black", mew=0.4, ms=5,
                   label="equilibrated"),
            Line2D([], [], ls="none", marker="s", mfc="white", mec="#555555", mew=1.0, ms=5,
                   label="not equilibrated"),
            Line2D([], [], color="#555555", lw=0.8, label="measured = predicted"),
            Patch(facecolor="#dddddd", label=f"±{100 * ANGLE_BAND:.0f}%"),
        ]  # fmt: skip
        _legend_below(fig, handles, fontsize=7)
        if title:
            fig.suptitle(title, fontsize=9)
    return fig


def layers_figure(layers: pd.DataFrame, title: str | None = None, wrap: int = 4) -> plt.Figure:
    """Per-layer angles: one facet per layer (its name, and whether it is scale-invariant, in
    the title), shared log axes; x = lr x weight decay, y = the layer's measured angle per step
    over the equilibrium window (``angle`` of :func:`analysis.load.load_layers`), one point per
    trial coloured by variant; on scale-invariant layers a dashed line per variant: the theory's
    predicted angle (``predicted_angle``, :func:`analysis.theory.trial_theory`), when known."""
    lr_wd = layers["lr"].to_numpy(float) * layers["weight_decay"].to_numpy(float)
    angle = pd.to_numeric(layers["angle"], errors="coerce").to_numpy(float)
    data = layers[np.isfinite(angle) & (angle > 0) & np.isfinite(lr_wd) & (lr_wd > 0)].copy()
    if data.empty:
        raise ValueError("layers: no trial with a measured per-layer angle and lr x wd > 0")
    data["lr_wd"] = data["lr"].astype(float) * data["weight_decay"].astype(float)
    data["angle"] = data["angle"].astype(float)
    order = list(dict.fromkeys(data["layer"]))
    invariant = data.groupby("layer", sort=False)["scale_invariant"].agg(lambda s: bool(s.any()))
    variants = list(dict.fromkeys(data["variant"]))
    palette = {v: _variant_style(v)["color"] for v in variants}
    if len(set(palette.values())) < len(palette):
        palette = dict(zip(variants, sns.color_palette("tab10", len(variants))))
    has_pred = "predicted_angle" in data
    ncol = min(len(order), wrap)
    nrow = math.ceil(len(order) / ncol)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            nrow, ncol, figsize=(2.6 * ncol + 0.4, 2.4 * nrow + 0.7), sharex=True, sharey=True,
            squeeze=False, layout="constrained",
        )  # fmt: skip
        for ax, layer in zip(axes.flat, order):
            part = data[data["layer"] == layer]
            sns.scatterplot(
                data=part, x="lr_wd", y="angle", hue="variant", hue_order=variants,
                palette=palette, s=18, linewidth=0.3, edgecolor="black", ax=ax, legend=False,
                zorder=3,
            )  # fmt: skip
            if has_pred and invariant[layer]:
                for v in variants:
                    pred = part[part["variant"] == v]
                    pred = pred[np.isfinite(pred["predicted_angle"].to_numpy(float))]
                    line = pred.groupby("lr_wd")["predicted_angle"].median()
                    if len(line):
                        ax.plot(line.index, line.to_numpy(float), color=palette[v], ls="--",
                                lw=1.0, zorder=2)  # fmt: skip
            kind = "scale-invariant" if invariant[layer] else "not scale-invariant"
            ax.set_title(f"{layer}\n{kind}", fontsize=8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.grid(alpha=0.25, lw=0.5)
            ax.set_xlabel("")
            ax.set_ylabel("")
        for i, ax in enumerate(axes.flat):
            if i >= len(order):
                ax.set_visible(False)
            elif i + ncol >= len(order):  # nothing visible below: the x axis is labelled here
                ax.set_xlabel("lr × weight decay", fontsize=8)
                ax.xaxis.set_tick_params(labelbottom=True)
        fig.supylabel("angle per step (rad), last quarter", fontsize=8)
        handles = [
            Line2D([], [], ls="none", marker="o", mfc=palette[v], mec="black", mew=0.3, ms=5,
                   label=variant_title(v))
            for v in variants
        ]  # fmt: skip
        if has_pred and bool(invariant.any()):
            handles.append(Line2D([], [], color="#555555", ls="--", lw=1.0, label="predicted"))
        _legend_below(fig, handles, fontsize=7)
        if title:
            fig.suptitle(title, fontsize=9)
    return fig
