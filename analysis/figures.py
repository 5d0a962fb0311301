"""Every figure and table of an lr x weight-decay sweep, regenerated from data alone.

``python -m analysis.figures SOURCE... --out DIR`` where a SOURCE is a results.csv, a directory
(searched for results.csv files), an Optuna storage (``sqlite:///x.db``, ``postgresql://...``,
an ``.db`` or journal file; ``#study1,study2`` or ``--study`` picks studies) or a W&B export
(``wandb:entity/project[/group]``, a runs ``.json``). Writes into DIR:

- ``heatmaps.png/.pdf``: the paper's Figure 2 (:func:`analysis.plots.heatmap_figure`), for grid
  sweeps; ``scatter.png/.pdf`` instead for scattered (random / TPE) trials: the trials over
  log lr x log wd with a fitted surface as contours (:func:`analysis.plots.scatter_figure`);
- ``regret.png/.pdf``: random-search regret (points and normalized, seeds as bands) and
  P(near-optimal) against k;
- ``valley.png/.pdf``: best wd against lr with the coupling slopes;
- ``budget.png/.pdf``: the tuning cost per trial budget (``budget.csv``) with seed bands;
- ``angles.png/.pdf`` and ``theory.csv`` when the trials carry measured angles (``si_angle``,
  ``eq_eta``): measured against predicted angle per step (:mod:`analysis.theory`);
  ``collapse.png/.pdf`` then puts every variant's equilibrated cells against the measured
  angle per step on one axis (:mod:`analysis.collapse`);
- ``decay_rule.csv`` (grid sweeps): the fitted rule ``wd = C * lr^s`` per variant with its
  intervals, validity range and timescale (:mod:`analysis.rule`); when the sweep's config holds
  lrs out (``analysis.heldout.lr`` in the ``config.yaml`` beside results.csv) the rule is fitted
  without them and ``decay_rule_heldout.csv`` gives their predicted against found best wd, as a
  factor with its interval; metrics.csv gains
  ``collapse_r2_1d``, ``collapse_r2_2d`` and ``collapse_cells`` (:mod:`analysis.collapse`);
- ``layers.png/.pdf`` and ``layers.csv`` when the trials carry per-layer summaries (an Optuna
  storage, or the ``layers.csv`` beside a results.csv): each layer's angle per step against
  lr x wd, one facet per layer, with the predicted angle (:func:`analysis.plots.layers_figure`);
- ``metrics.csv`` (one row per variant, definitions in :mod:`analysis.metrics`), ``regret.csv``
  (variant, k), ``regret_seeds.csv`` (variant, seed, k), ``valley.csv`` (best wd per lr),
  ``identity.csv`` (equivalent decoupled / independent cells and their difference) and
  ``cells.csv`` (mean/std/count per grid cell);
- ``ladder.csv`` and ``ladder.png/.pdf`` in ``DIR`` itself when the results hold the arms
  ``<name>-<rung>`` of one experiment (``sweep.arms``): each variant's slope, transfer regret
  and wd gain across the rungs, with the share of decayed parameters that are scale-invariant
  (:mod:`analysis.ladder`);

and prints the metrics as a table. Results of several experiments (or models, or data sets) are
never mixed: each gets a subdirectory ``DIR/<experiment>[-<model>-<data>]/``, and ``DIR/metrics.csv``
lists them all. Files appear only when everything was computed (nothing half-written).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.collapse import collapse_figure, collapse_table
from analysis.ladder import ladder_table, write_ladder
from analysis.load import (
    SourceError,
    aggregate,
    coarse,
    is_grid,
    is_valley,
    load_layers,
    load_results,
    snap_to_grid,
    split_groups,
    variants_in_order,
)
from analysis.metrics import (
    BOOTSTRAP_REPS,
    MIN_SURFACE_TRIALS,
    NEAR_OPTIMAL_TOL,
    Options,
    Surface,
    identity_table,
    options,
    regret_seed_table,
    regret_table,
    surface_valley_table,
    tables,
    variant_surface,
)
from analysis.rule import configured_heldout, decay_rule_table, heldout_table, settings
from analysis.theory import cell_equilibrium, has_angles, study_hyperparameters, trial_theory

METRICS = ("test_error", "val_error", "final_val_error")


@dataclass
class Analysis:
    """Everything computed for one experiment: the tables the figures are drawn from.

    ``mode`` is ``grid`` (a filled lr x wd grid) or ``surface`` (scattered trials: ``surfaces``
    holds the fitted surface of each variant with enough trials)."""

    label: str
    trials: pd.DataFrame
    cells: pd.DataFrame
    metrics: pd.DataFrame
    regret: pd.DataFrame
    valleys: pd.DataFrame
    metric: str
    tol: float
    mode: str = "grid"
    regret_seeds: pd.DataFrame = field(default_factory=pd.DataFrame)
    identity: pd.DataFrame = field(default_factory=pd.DataFrame)
    surfaces: dict[str, Surface] = field(default_factory=dict)
    theory: pd.DataFrame = field(default_factory=pd.DataFrame)
    # sweep=valley: every cell, the refinement rounds' too (``cells`` is the coarse grid)
    refined: pd.DataFrame | None = None
    # per-layer summaries (analysis.load.load_layers) with the theory's predicted angle
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)
    # budget.csv: the expected test error at the validation-best of k cells of a search box
    budget: pd.DataFrame = field(default_factory=pd.DataFrame)
    options: Options = field(default_factory=Options)
    # decay_rule.csv: the fitted wd = C * lr^s per variant (analysis.rule), for grid sweeps
    rule: pd.DataFrame = field(default_factory=pd.DataFrame)
    # decay_rule_heldout.csv: the held-out lrs' predicted against found best wd
    heldout: pd.DataFrame = field(default_factory=pd.DataFrame)


def analyze(
    frame: pd.DataFrame,
    metric: str | None = None,
    opts: Options | None = None,
    *,
    label: str = "",
    surface: bool | None = None,
    layers: pd.DataFrame | None = None,
    holdout_lrs: tuple[float, ...] | list[float] = (),
    **overrides,
) -> Analysis:
    """Cells, metrics, regret, valley, budget and identity tables of one experiment's tidy frame.

    ``opts`` (:class:`analysis.metrics.Options`) holds every choice of the analysis; ``metric``
    and ``overrides`` (Options fields) change some of them. ``surface=None`` fits surfaces when
    the trials do not fill a grid (:func:`is_grid`). ``holdout_lrs``: lr rows the decay rule
    is not fitted on; the held-out table compares its prediction there with the found best wd
    (:func:`analysis.rule.heldout_table`)."""
    if frame.empty:
        raise ValueError("frame: no COMPLETE trials to analyze")
    o = options(opts, **overrides)
    if metric is not None:
        o = o.with_(metric=metric)
    metric = o.metric
    traced = is_valley(frame)  # sweep=valley: the grid is the coarse one, the valley uses all
    all_cells = aggregate(frame, metric)
    cells = aggregate(coarse(frame), metric) if traced else all_cells
    variants = variants_in_order(frame)
    surface = (not is_grid(frame)) if surface is None else surface
    surfaces: dict[str, Surface] = {}
    if surface:
        for v in variants:
            n = int((frame["variant"] == v).sum())
            if n >= MIN_SURFACE_TRIALS:
                surfaces[v] = variant_surface(frame, v, metric)
    t = tables(frame, o, variants, surfaces=surfaces if surface else None)
    metrics = t.metrics
    for col in ("experiment", "model", "data"):
        metrics.insert(0, col, "/".join(sorted(set(frame[col].astype(str)))))
    if surface:
        regret = pd.concat(
            [regret_table(_surface_cells(v, s), [v], o.tol) for v, s in surfaces.items()]
            or [regret_table(cells.iloc[:0], [], o.tol)],
            ignore_index=True,
        )
        valleys = surface_valley_table(surfaces, o.refine)
        seeds = regret_seed_table(frame.iloc[:0], [], metric)
    else:
        regret = regret_table(cells, variants, o.tol)
        valleys = t.valleys
        seeds = regret_seed_table(coarse(frame), variants, metric)
        # how much of each variant's surface its invariant explains (analysis.collapse)
        metrics = metrics.merge(collapse_table(frame, metric), on="variant", how="left")
    sel = o.selection if o.selection in frame and frame[o.selection].notna().any() else metric
    held = list(holdout_lrs)
    rule = (
        pd.DataFrame()
        if surface
        else decay_rule_table(frame, metric=sel, valleys=valleys, holdout_lrs=held)
    )
    heldout = heldout_table(frame, held, metric=sel) if held and not surface else pd.DataFrame()
    return Analysis(
        label,
        frame,
        cells,
        metrics,
        regret,
        valleys,
        metric,
        o.tol,
        "surface" if surface else "grid",
        seeds,
        identity_table(frame, metric),
        surfaces,
        trial_theory(frame),
        all_cells if traced else None,
        layer_theory(layers, frame) if layers is not None else pd.DataFrame(),
        t.budget,
        o,
        rule,
        heldout,
    )


def config_boxes(sources) -> dict[str, dict]:
    """``{experiment: boxes}``: the search boxes (``analysis.boxes``) of the ``config.yaml`` the
    sweep writes next to each results.csv among ``sources`` (files or directories)."""
    import yaml

    found: dict[str, dict] = {}
    for src in sources:
        if not isinstance(src, str | Path) or "://" in str(src):
            continue
        path = Path(str(src).partition("#")[0])
        configs = (
            sorted(path.rglob("config.yaml")) if path.is_dir() else [path.parent / "config.yaml"]
        )
        for cfg_path in configs:
            try:
                cfg = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else None
            except (OSError, yaml.YAMLError):
                cfg = None
            if isinstance(cfg, dict) and cfg.get("name") is not None:
                boxes = (cfg.get("analysis") or {}).get("boxes") or {}
                found.setdefault(str(cfg["name"]), dict(boxes))
    return found


def _part_heldout(part: pd.DataFrame, held: dict[str, dict]) -> list[float]:
    """The lrs the sweep of ``part``'s experiment holds out (``analysis.heldout.lr``)."""
    exps = set(part["experiment"].astype(str))
    return sorted({x for e in exps for x in held.get(e, {}).get("lr", [])})


def _part_boxes(part: pd.DataFrame, boxes: dict[str, dict]) -> dict:
    names = sorted(set(part["experiment"].astype(str))) if "experiment" in part else []
    return dict(boxes.get(names[0], {})) if len(names) == 1 else {}


def layer_theory(layers: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The per-layer rows of ``frame``'s trials (matched on study and trial) with the theory's
    ``predicted_angle`` of each trial (:func:`analysis.theory.trial_theory`, at the trial's lr,
    weight decay and equilibrium-window multiplier) and ``angle_ratio`` = the layer's angle over
    it."""
    if layers.empty or frame.empty:
        return pd.DataFrame()
    key = ["study", "trial"]
    trials = frame.drop(columns=[c for c in frame if c in layers and c not in key])
    trials = trials.drop(columns=[c for c in ("si_angle", "si_tensors") if c in trials])
    merged = layers.merge(trials, on=key, how="inner")
    if merged.empty:
        return pd.DataFrame()
    theory = trial_theory(merged.assign(si_angle=merged["angle"]))
    return theory[[*layers.columns, "predicted_angle", "angle_ratio"]]


def _surface_cells(variant: str, s: Surface) -> pd.DataFrame:
    """A fitted surface's evaluation grid as cells (what :func:`regret_table` reads)."""
    L, W = np.meshgrid(s.lrs, s.wds, indexing="ij")
    ok = np.isfinite(s.E)
    return pd.DataFrame({"variant": variant, "lr": L[ok], "weight_decay": W[ok], "mean": s.E[ok]})


def render(a: Analysis, annotate: bool = False, n_best: int = 10, cmap: str = "viridis") -> dict:
    """``{"heatmaps" or "scatter": Figure, "regret": Figure, "valley": Figure}`` for one
    analysis, and ``"angles"`` when its trials carry measured angles."""
    from analysis.plots import (
        angle_figure,
        budget_figure,
        heatmap_figure,
        layers_figure,
        regret_figure,
        scatter_figure,
        valley_figure,
    )

    angles = len(a.theory) > 0 and has_angles(a.theory)

    label = a.metric.replace("_", " ")
    if a.mode == "surface":
        main = {
            "scatter": scatter_figure(
                a.trials, a.surfaces, a.metrics, variants_in_order(a.trials), metric=a.metric,
                cmap=cmap,
            )
        }  # fmt: skip
    else:
        main = {
            "heatmaps": heatmap_figure(
                a.cells,
                a.metrics,
                variants_in_order(a.cells),
                metric_label=label,
                n_best=n_best,
                annotate=annotate,
                cmap=cmap,
                equilibrium=cell_equilibrium(a.theory) if angles else None,
                refined=a.refined,
                valleys=a.valleys if "in_fit" in a.valleys else None,
            )
        }
    out = {
        **main,
        "regret": regret_figure(a.regret, a.tol, metric_label=label, seeds=a.regret_seeds),
    }
    if len(a.valleys):
        out["valley"] = valley_figure(a.valleys, a.metrics)
    budget = pd.to_numeric(a.budget.get("expected_error", pd.Series(dtype=float)), errors="coerce")
    if np.isfinite(budget.to_numpy(float)).any():
        out["budget"] = budget_figure(a.budget, metric_label=label, metrics=a.metrics)
    if angles and np.isfinite(a.theory["angle_ratio"].to_numpy(float)).any():
        out["angles"] = angle_figure(a.theory)
    collapse = collapse_figure(a.trials, a.metric) if angles else None
    if collapse is not None:
        out["collapse"] = collapse
    if len(a.layers) and np.isfinite(a.layers["angle"].to_numpy(float)).any():
        out["layers"] = layers_figure(a.layers)
    return out


def write(
    analyses: list[Analysis],
    out: str | Path,
    formats: tuple[str, ...] = ("png", "pdf"),
    annotate: bool = False,
    n_best: int = 10,
    cmap: str = "viridis",
    dpi: int = 200,
) -> list[Path]:
    """Write every table and figure of ``analyses`` under ``out`` (see the module docstring).

    Everything is first written to ``out/.partial-<pid>/`` and moved into place at the end, so
    a failure leaves ``out`` as it was.
    """
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for a in analyses:
            d = tmp / a.label if a.label else tmp
            d.mkdir(parents=True, exist_ok=True)
            a.cells.to_csv(d / "cells.csv", index=False)
            a.metrics.to_csv(d / "metrics.csv", index=False)
            a.regret.to_csv(d / "regret.csv", index=False)
            a.regret_seeds.to_csv(d / "regret_seeds.csv", index=False)
            a.valleys.to_csv(d / "valley.csv", index=False)
            a.identity.to_csv(d / "identity.csv", index=False)
            if len(a.budget):
                a.budget.to_csv(d / "budget.csv", index=False)
            if len(a.rule):
                a.rule.to_csv(d / "decay_rule.csv", index=False)
            if len(a.heldout):
                a.heldout.to_csv(d / "decay_rule_heldout.csv", index=False)
            if len(a.theory) and has_angles(a.theory):
                a.theory.to_csv(d / "theory.csv", index=False)
            if len(a.layers):
                a.layers.to_csv(d / "layers.csv", index=False)
            for name, fig in render(a, annotate, n_best, cmap).items():
                for fmt in formats:
                    fig.savefig(d / f"{name}.{fmt}", dpi=dpi)
                plt.close(fig)
        if len(analyses) > 1 or analyses[0].label:
            every = pd.concat([a.metrics for a in analyses], ignore_index=True)
            every.to_csv(tmp / "metrics.csv", index=False)
            # the arms <name>-<rung> of one experiment: the ladder across them
            trials = pd.concat([a.trials for a in analyses], ignore_index=True)
            write_ladder(ladder_table(every, trials), tmp, formats, dpi)
        written = []
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            dest = out / f.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
            written.append(dest)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def heldout_lines(heldout: pd.DataFrame) -> list[str]:
    """The held-out check in plain words, one line per (variant, held-out lr): the found best
    wd over the rule's prediction, with its interval."""
    lines = []
    for _, r in heldout.iterrows():
        interval = (
            f" [{r['factor_lo']:.2g}, {r['factor_hi']:.2g}]"
            if np.isfinite(r["factor_lo"]) and np.isfinite(r["factor_hi"])
            else ""
        )
        lines.append(
            f"  held out {r['variant']} at lr {r['lr']:.3g}: predicted wd {r['predicted_wd']:.2g}, "
            f"found {r['found_wd']:.2g}, found/predicted {r['factor']:.2g}{interval}"
        )
    return (["held-out check (lrs left out of the decay rule's fit):", *lines]) if lines else []


def _slope_cell(m: pd.Series) -> str:
    if not np.isfinite(m.coupling_slope):
        return "n/a"
    text = f"{m.coupling_slope:+.2f}"
    if np.isfinite(m.coupling_slope_lo):
        return text + f" [{m.coupling_slope_lo:+.2f}, {m.coupling_slope_hi:+.2f}]"
    if m.get("coupling_slope_seed_n", 0) >= 2:
        lo, hi = m.coupling_slope_seed_min, m.coupling_slope_seed_max
        return text + f" ({lo:+.2f}..{hi:+.2f}, n={int(m.coupling_slope_seed_n)})"
    return text


def _theory_cell(m: pd.Series) -> str:
    """The slope the scale-invariance theory predicts (analysis.theory)."""
    p = m.get("predicted_slope", np.nan)
    return "n/a" if not np.isfinite(p) else ("0" if p == 0 else f"{p:+.0f}")


def _angle_line(metrics: pd.DataFrame) -> str:
    """``angles ...``: measured/predicted angle and equilibrated share per variant, when the
    trials carry measured angles; "" otherwise."""
    if "equilibrated_fraction" not in metrics:
        return ""
    parts = []
    for _, m in metrics.iterrows():
        frac = m.get("equilibrated_fraction", np.nan)
        if not np.isfinite(frac):
            continue
        ratio = m.get("angle_ratio_median", np.nan)
        angle = f"x{ratio:.2f}" if np.isfinite(ratio) else "n/a"
        parts.append(f"{m.variant} {angle} ({100 * frac:.0f}% equilibrated)")
    if not parts:
        return ""
    return (
        "angle per step of the scale-invariant weights, measured / predicted (median over "
        "equilibrated trials): " + ", ".join(parts)
    )


def _pct(x: float, digits: int = 0) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.{digits}f}%"


def _pts(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{100 * x:.1f}"


def _with_interval(x: float, lo: float, hi: float, digits: int = 1, scale: float = 100) -> str:
    if not np.isfinite(x):
        return "n/a"
    text = f"{scale * x:+.{digits}f}" if scale == 100 else f"{x:+.2f}"
    if np.isfinite(lo) and np.isfinite(hi):
        text += (
            f" [{scale * lo:+.{digits}f}, {scale * hi:+.{digits}f}]"
            if scale == 100
            else f" [{lo:+.2f}, {hi:+.2f}]"
        )
    return text


def _gain_cell(m: pd.Series) -> str:
    text = _with_interval(m.wd_gain, m.get("wd_gain_lo", np.nan), m.get("wd_gain_hi", np.nan))
    if text == "n/a":
        return text
    if not np.isfinite(m.get("wd_gain_lo", np.nan)) and np.isfinite(m.get("noise_floor", np.nan)):
        text += f" ±{100 * m.noise_floor:.1f}"
    return text + ("" if m.get("wd_gain_resolved", False) else " ~0")


def _predicts(metrics: pd.DataFrame, trials: pd.DataFrame | None) -> bool:
    """Whether the scale-invariance prediction applies: the detector found scale-invariant
    tensors in the trials (``si_tensors`` > 0); unknown (no such column): True."""
    if trials is None or "si_tensors" not in trials:
        return True
    n = pd.to_numeric(trials["si_tensors"], errors="coerce")
    return bool(n.notna().any() and (n.fillna(0) > 0).any())


def print_metrics(
    metrics: pd.DataFrame, title: str = "", trials: pd.DataFrame | None = None
) -> None:
    """The numbers a newcomer reads, one row per variant: the test error at the cell chosen on
    validation (with its seed interval), that cell's lr and wd, the wd gain with its interval
    or noise floor, the slope next to the prediction, the transfer regret and the trials to
    within one point; the full set is in metrics.csv. The identity check of each decoupled /
    independent pair goes below."""
    from rich.console import Console
    from rich.table import Table

    predicts = _predicts(metrics, trials)
    table = Table(title=title or "easier to tune? one row per variant", title_justify="left")
    for col in ("variant", "best (%)", "lr", "wd", "wd gain (pts)", "slope",
                "pred.", "transfer (pts)", "k<=1pt", "cells x seeds"):  # fmt: skip
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for _, m in metrics.iterrows():
        grid_mode = m.get("analysis_grid", "grid") == "grid"
        best = f"{100 * m.best_error:.2f}"
        if np.isfinite(m.get("best_error_lo", np.nan)):
            best += f" [{100 * m.best_error_lo:.1f}, {100 * m.best_error_hi:.1f}]"
        k = m.get("trials_to_within_1pt", np.nan)
        table.add_row(
            m.variant + ("" if grid_mode else f" ({m.analysis_grid})"),
            best,
            f"{m.best_lr:.3g}",
            f"{m.best_weight_decay:.3g}",
            _gain_cell(m),
            _slope_cell(m),
            _theory_cell(m) if predicts else "n/a",
            _with_interval(
                m.transfer_regret_1,
                m.get("transfer_regret_1_lo", np.nan),
                m.get("transfer_regret_1_hi", np.nan),
            ),  # fmt: skip
            "never" if not np.isfinite(k) else str(int(k)),
            f"{m.n_cells} x {m.n_seeds}",
        )
    console = Console(width=160)
    console.print(table)
    if not len(metrics):
        return
    first = metrics.iloc[0]
    chosen = "validation" if str(first.get("selection", "")).startswith("val") else "test"
    held_out = "crossfit" in str(first.get("selection", ""))
    console.print(
        f"best: test error at the cell chosen on {chosen} error; wd gain and transfer (one lr "
        + ("step) held out by seed; [..]: " if held_out else "step) on the one seed; [..]: ")
        + (
            f"95% seed-bootstrap intervals ({first.get('interval', '')}); ~0: not resolved"
            if np.isfinite(first.get("wd_gain_lo", np.nan))
            else "no intervals below 3 seeds; ±: 2 SE of a difference of two cells; ~0: not "
            "above it"
        )
        + "; k<=1pt: random cells of the search box to come within 1 point of the best"
    )
    one_seed = int(first.n_seeds) < 2
    if one_seed:
        floor = float(metrics["noise_floor"].max())
        close = [
            f"{a.variant} vs {b.variant} ({100 * abs(a.best_error - b.best_error):.1f})"
            for i, (_, a) in enumerate(metrics.iterrows())
            for _, b in list(metrics.iterrows())[i + 1 :]
            if abs(a.best_error - b.best_error) < floor
        ]
        console.print(
            f"1 seed: no training-noise estimate; differences below {100 * floor:.1f} points (2 "
            f"SE of a difference of two cells from the evaluation noise alone, {first.n_eval} "
            "samples) are noise" + (": best errors " + ", ".join(close) if close else "")
        )
    if predicts and metrics["predicted_slope"].notna().any():
        console.print(
            "pred.: the slope scale invariance predicts; it holds for the scale-invariant "
            "tensors the detector found, the parameters that are not scale-invariant see decay "
            "as a plain penalty (docs/analysis.md, Theory overlays)"
        )
    angles = _angle_line(metrics)
    if angles:
        console.print(angles)
    seen = set()
    for _, m in metrics.iterrows():
        if not np.isfinite(m.get("identity_cells", np.nan)) or m.optimizer in seen:
            continue
        seen.add(m.optimizer)
        pair = metrics[(metrics.optimizer == m.optimizer) & metrics.identity_cells.notna()]
        names = " = ".join(pair.variant)
        if m.identity_pairs == 0:
            console.print(f"identity {names}: no equivalent cells in these grids")
            continue
        seed_range = (
            f", seeds {m.identity_slope_diff_seed_min:+.2f}..{m.identity_slope_diff_seed_max:+.2f}"
            if np.isfinite(m.get("identity_slope_diff_seed_min", np.nan))
            else ""
        )
        console.print(
            f"identity {names} (at (a, lam) vs (a, a*lam)): {int(m.identity_cells)} cells x "
            f"seeds = {int(m.identity_pairs)} pairs, per-seed difference max {_pts(m.identity_max_abs_diff)} "
            f"rms {_pts(m.identity_rms_diff)} points; slope difference "
            f"{m.identity_slope_diff:+.2f}{seed_range} (expected +1)"
        )  # fmt: skip


def parse_bins(text: str) -> tuple[int, int] | None:
    """``auto`` -> None, ``0`` -> (0, 0) (never), ``8`` -> (8, 8), ``6x9`` -> (6, 9)."""
    text = text.strip().lower()
    if text == "auto":
        return None
    try:
        parts = [int(p) for p in text.split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 0 or (0 in parts and parts != [0, 0]):
        raise ValueError(f"--bins {text}: use auto, 0, N or NxM (e.g. 8 or 6x9)")
    return (parts[0], parts[1])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        self.exit(2, f"error: {message} (see python -m analysis.figures --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="python -m analysis.figures",
        description="Regenerate the lr x weight-decay heatmaps (the paper's Figure 2), the regret "
        "and valley figures, metrics.csv, regret.csv, valley.csv and cells.csv from sweep results.",
        epilog="examples:\n"
        "  python -m analysis.figures outputs/quick --out figures/\n"
        "  python -m analysis.figures sqlite:///outputs/quick/study.db --out figures/\n"
        "  python -m analysis.figures runs.journal --study quick-adam-l2 --out figures/\n"
        "  python -m analysis.figures 'postgresql://user@host/db#fig2-sgd-l2,fig2-sgd-independent' "
        "--out figures/\n"
        "  python -m analysis.figures wandb:my-team/lrwd/quick-adam-l2 --out figures/\n"
        "metrics are defined in docs/analysis.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="results.csv, a directory holding results.csv files, an Optuna storage "
        "(sqlite:///x.db, postgresql://..., a .db or journal file; append #study1,study2 to pick "
        "studies), or a W&B export (wandb:entity/project[/group], a runs .json file)",
    )
    ap.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    ap.add_argument(
        "--study",
        action="append",
        default=[],
        metavar="NAME",
        help="only this Optuna study (repeatable; default: every study)",
    )
    ap.add_argument("--experiment", metavar="NAME", help="only rows of this experiment")
    ap.add_argument(
        "--metric",
        default="test_error",
        choices=METRICS,
        help="error to analyze (default: test_error)",
    )
    ap.add_argument(
        "--selection",
        default="final_val_error",
        choices=METRICS,
        help="error every choice (best cell, best wd per lr, transfer source) is made on; the "
        "reported error is --metric (default: final_val_error, the validation error of the "
        "tested weights; val_error, then test_error, when the trials lack it)",
    )
    ap.add_argument(
        "--tol",
        type=float,
        default=NEAR_OPTIMAL_TOL,
        help="near-optimal: normalized regret (E - best) / (E at smallest wd - best) at most "
        f"this (default: {NEAR_OPTIMAL_TOL})",
    )
    ap.add_argument(
        "--rel-tol",
        type=float,
        default=None,
        metavar="R",
        help="also report the share of cells within R (relative) of the best error, "
        "near_optimal_fraction_rel (default: not reported)",
    )
    ap.add_argument(
        "--abs-tol",
        type=float,
        default=0.0,
        metavar="T",
        help="absolute near-optimal threshold in error units, raised to 2 standard errors of a "
        "cell mean when smaller (default: 0, i.e. 2 SE)",
    )
    ap.add_argument(
        "--n-eval",
        type=int,
        default=None,
        metavar="N",
        help="evaluation-set size for the standard errors (default: inferred from the error "
        "values, else the MNIST-1D default test set of 1000)",
    )
    ap.add_argument(
        "--chance",
        type=float,
        default=None,
        help="chance-level error for separability's dead rows and columns (default: "
        "1 - 1/classes of the data set)",
    )
    ap.add_argument(
        "--bins",
        default="auto",
        metavar="auto|0|N|NxM",
        help="sampled (random/TPE) trials: auto or 0 fits a surface (scatter figure, metrics on "
        "the surface); N or NxM bins them onto a log grid instead (default: auto)",
    )
    ap.add_argument("--n-best", type=int, default=10, help="cells to circle (default: 10)")
    ap.add_argument("--annotate", action="store_true", help="print each cell's error in %%")
    ap.add_argument(
        "--bootstrap",
        type=int,
        default=BOOTSTRAP_REPS,
        metavar="B",
        help="seed resamples of every 95%% interval (default: %(default)s; 0 = none)",
    )
    ap.add_argument(
        "--no-refine",
        action="store_true",
        help="valley at grid cells only (default: parabolic refinement in log wd)",
    )
    ap.add_argument(
        "--separability-log",
        action="store_true",
        help="fit the additive model to log error (default: error)",
    )
    ap.add_argument("--formats", default="png,pdf", help="figure formats (default: png,pdf)")
    ap.add_argument("--cmap", default="viridis", help="matplotlib colormap (default: viridis)")
    ap.add_argument("--dpi", type=int, default=200, help="PNG resolution (default: 200)")
    ap.add_argument("--quiet", action="store_true", help="no table on stdout")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    formats = tuple(f.strip().lstrip(".") for f in args.formats.split(",") if f.strip())
    bad = [f for f in formats if f not in ("png", "pdf", "svg")]
    if bad or not formats:
        print(f"error: --formats {args.formats}: use png, pdf and/or svg", file=sys.stderr)
        return 2
    if not 0 <= args.tol < 10:
        print(f"error: --tol {args.tol}: give a normalized regret like 0.25", file=sys.stderr)
        return 2
    if args.rel_tol is not None and not 0 <= args.rel_tol < 10:
        print(
            f"error: --rel-tol {args.rel_tol}: give a relative tolerance like 0.1", file=sys.stderr
        )
        return 2
    if args.n_eval is not None and args.n_eval < 1:
        print(f"error: --n-eval {args.n_eval}: give the evaluation-set size", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            frame = load_results(args.sources, args.study, args.experiment)
        for w in caught:
            if issubclass(w.category, UserWarning):
                print(f"warning: {w.message}", file=sys.stderr)
        if frame.empty:
            raise SourceError(
                f"{' '.join(args.sources)}: no COMPLETE trials (is the sweep still running?)"
            )
        frame = study_hyperparameters(args.sources, frame)
        frame = settings(frame, args.sources)  # n_train, epochs, batch size: the rule's timescale
        layers = load_layers(args.sources, args.study)
        bins = parse_bins(args.bins)
        if bins and bins != (0, 0):
            frame = snap_to_grid(frame, *bins)
            print(f"trials binned onto a {bins[0]} x {bins[1]} log grid (--bins)")
        elif not is_grid(frame):
            print("trials do not fill a grid: metrics on a fitted surface (--bins N to bin them)")
        base = Options(
            metric=args.metric,
            selection=args.selection,
            tol=args.tol,
            reps=args.bootstrap,
            refine=not args.no_refine,
            separability_log=args.separability_log,
            rel_tol=args.rel_tol,
            abs_tol=args.abs_tol,
            n_eval=args.n_eval,
            chance=args.chance,
        )
        boxes = config_boxes(args.sources)
        held = configured_heldout(args.sources)
        analyses = [
            analyze(
                part,
                opts=base.with_(boxes=_part_boxes(part, boxes)),
                label=label,
                surface=False if bins and bins != (0, 0) else None,
                layers=layers if len(layers) else None,
                holdout_lrs=_part_heldout(part, held),
            )
            for label, part in split_groups(frame)
        ]
        written = write(
            analyses, args.out, formats, args.annotate, args.n_best, args.cmap, args.dpi
        )
    except (SourceError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        for a in analyses:
            print_metrics(
                a.metrics,
                f"{a.label or 'results'}: {len(a.trials)} trials, {args.metric}",
                a.trials,
            )
            for line in heldout_lines(a.heldout):
                print(line)
    print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
