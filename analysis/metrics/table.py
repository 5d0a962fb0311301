"""Per-variant tables: every number of one variant in one pass (metrics.csv's row, its valley,
its tuning-cost curve), and the tables of a whole experiment."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.load import aggregate, coarse, grid, group_columns, is_valley, variants_in_order
from analysis.metrics.columns import (
    BUDGET_COLUMNS,
    IDENTITY_METRICS,
    METRICS_COLUMNS,
    REGRET_COLUMNS,
    REGRET_SEED_COLUMNS,
    VARIANT_COLUMNS,
)
from analysis.metrics.identity import identity_table
from analysis.metrics.options import Options, options
from analysis.metrics.regret import (
    best_and_smallest_wd,
    box_for,
    box_grid,
    box_mask,
    describe_box,
    expected_at_selection,
    halve_box,
    hit_probability,
    near_optimal_fraction,
    near_optimal_fraction_absolute,
    near_optimal_fraction_relative,
    near_optimal_fractions,
    near_optimal_mask,
    random_search_regret,
    transfer_pairs,
    transfer_regret,
    trials_to_near_optimal,
    trials_to_within,
)
from analysis.metrics.selection import (
    Grids,
    argmin_cells,
    best_statistic,
    cell_standard_error,
    crossfit,
    eval_size,
    evaluation_noise,
    evaluation_variance,
    first_measured,
    gain_statistic,
    noise_model,
    percentile_interval,
    resample_counts,
    row_argmin,
    row_gain_statistic,
    smallest_wd_column,
    take,
    transfer_statistic,
    valley_cells,
    variant_grids,
    weighted_means,
)
from analysis.metrics.surface import (
    MIN_SURFACE_TRIALS,
    Surface,
    surface_slope_interval,
    variant_surface,
)
from analysis.metrics.valley import (
    CHANCE_MARGIN,
    _quiet,
    chance_level,
    informative_lines,
    measured_columns,
    resample_positions,
    row_positions,
    seed_slopes,
    separability,
    slope_of,
    valley,
    weighted_slope,
)

NAN = float("nan")


@dataclass
class VariantResult:
    """One variant's numbers: ``metrics`` (its metrics.csv row as a dict), ``valley`` (best wd
    per lr with the fit's rows and weights) and ``budget`` (budget.csv's rows)."""

    metrics: dict
    valley: pd.DataFrame = field(default_factory=pd.DataFrame)
    budget: pd.DataFrame = field(default_factory=pd.DataFrame)


def _interval_text(n_seeds: int, o: Options) -> str:
    if n_seeds >= max(2, o.min_seeds) and o.reps > 0:
        return f"seed bootstrap, {o.reps} resamples of {n_seeds} seeds, {100 * o.level:g}%"
    return f"none ({n_seeds} seed{'s' if n_seeds != 1 else ''}: per-seed ranges only)"


def _fmt_slopes(slopes: np.ndarray) -> str:
    return ";".join("nan" if not np.isfinite(s) else f"{s:.4g}" for s in slopes)


def _budget(
    variant: str, lrs, wds, T, V, best: float, o: Options, Tb=None, Vb=None
) -> tuple[list[dict], dict]:
    """budget.csv's rows for the variant's box and its half, and the metrics they give."""
    configured = box_for(variant, o.boxes)
    full = configured if configured is not None else box_grid(lrs, wds)
    rows, out = [], {}
    for name, box in (("box", configured), ("half", halve_box(full))):
        mask = box_mask(lrs, wds, box) & np.isfinite(T) & np.isfinite(V)
        curve = expected_at_selection(V[mask], T[mask])
        lo = hi = np.full(len(curve), np.nan)
        if Tb is not None and len(curve):
            band = expected_at_selection(Vb[:, mask][:, None], Tb[:, mask][:, None])
            a = 100 * (1 - o.level) / 2
            lo, hi = _quiet(np.nanpercentile, band, [a, 100 - a], axis=0)
        shown = box if box is not None else full
        for k, e in enumerate(curve, start=1):
            rows.append({
                "variant": variant, "box": name, "k": k, "cells": int(mask.sum()),
                "expected_error": float(e), "expected_error_lo": float(lo[k - 1]),
                "expected_error_hi": float(hi[k - 1]), "best_error": best,
                "box_lr_min": shown["lr"][0], "box_lr_max": shown["lr"][1],
                "box_wd_min": shown["weight_decay"][0], "box_wd_max": shown["weight_decay"][1],
            })  # fmt: skip
        k1 = trials_to_within(curve, best, o.within)
        if name == "box":
            out["trials_to_within_1pt"] = k1
            out["budget_cells"] = int(mask.sum())
            out["budget_box"] = "grid" if box is None else describe_box(box)
        else:
            out["trials_to_within_1pt_half"] = k1
    return rows, out


def variant_result(
    frame: pd.DataFrame,
    variant: str,
    opts: Options | None = None,
    cells: pd.DataFrame | None = None,
) -> VariantResult:
    """Every number of one variant of a tidy frame (one experiment) on its grid.

    A valley tracer's variant (``sweep=valley``): the valley and its slope use every measured
    point of each row; the other numbers, the coarse grid."""
    o = opts or Options()
    metric = o.metric
    vframe = frame[frame["variant"] == variant]
    traced = is_valley(vframe)
    gframe = coarse(frame) if traced else frame
    g = variant_grids(gframe, variant, metric, o.selection)
    cells = aggregate(gframe, metric) if cells is None or traced else cells
    if o.n_eval_source is not None and o.n_eval:
        n_eval, n_source = int(o.n_eval), o.n_eval_source
    else:
        n_eval, n_source = eval_size(frame, metric, o.n_eval)
    n_sel = eval_size(frame, g.selection)[0] if g.on_selection else n_eval
    chance = o.chance
    if chance is None:
        chance = chance_level(frame["data"].iloc[0]) if "data" in frame and len(frame) else NAN
    lrs, wds, S = g.lrs, g.wds, g.n_seeds
    T, V = g.means()
    measured = np.isfinite(T)
    _, _, D = grid(cells, variant, value="diverged")
    _, _, N = grid(cells, variant, value="count")
    if D.shape != T.shape:  # the aggregate's axes differ only when cells lack this metric
        D, N = np.zeros(T.shape), np.isfinite(g.test).sum(0).astype(float)
    ones = np.ones((1, S))
    can_interval = S >= max(2, o.min_seeds) and o.reps > 0
    C = resample_counts(S, o.reps, o.seed) if can_interval else None
    # noise from the data: pooled seed variance near the valley, and the evaluation sets'
    near = valley_cells(V)
    b0 = int(argmin_cells(V[None])[0])
    live = np.isfinite(T) & (T < 1.0)  # not chosen by their errors: no selection bias
    var_t, var_s, source = evaluation_variance(
        g, live, float(T.flat[b0]), n_eval, float(V.flat[b0]), n_sel
    )
    noise = noise_model(g.test, float(T.flat[b0]), n_eval, near, var_t, source)
    noise_sel = (
        noise_model(g.select, float(V.flat[b0]), n_sel, near, var_s, source)
        if g.on_selection
        else noise
    )
    addT = addV = Tb = Vb = None
    if can_interval:  # each resample also draws the evaluation sets afresh
        addT = evaluation_noise(T, n_eval, o.reps, o.seed + 1, sd=math.sqrt(var_t))
        addV = (
            evaluation_noise(V, n_sel, o.reps, o.seed + 2, sd=math.sqrt(var_s))
            if g.on_selection
            else addT
        )
        Tb = weighted_means(g.test, C) + addT
        Vb = weighted_means(g.select, C) + addV

    # the best cell, chosen on the selection metric
    b = int(argmin_cells(V[None])[0])
    i, j = np.unravel_index(b, V.shape)
    # cells tied on the selection metric are equally likely choices: their mean test error
    tied = np.isfinite(V) & np.isfinite(T) & (V <= V[i, j] + 1e-12)
    best, best_val = float(T[tied].mean()), float(V[i, j])
    seeds_at = g.test[:, i, j][np.isfinite(g.test[:, i, j])]
    best_std = float(np.std(seeds_at, ddof=1)) if seeds_at.size > 1 else 0.0
    col0 = smallest_wd_column(measured)
    m0 = np.zeros(V.shape, bool)
    m0[:, col0] = True
    e0 = float(take(T, argmin_cells(V[None], m0))[0])
    gain_in = e0 - best
    cross = S >= 2
    gain = float(crossfit(g, ones, gain_statistic(col0))[0]) if cross else gain_in
    token = ("val" if g.on_selection else "test") + ("+crossfit" if cross else "")

    def iv(values):
        return percentile_interval(values, o.level) if values is not None else None

    best_iv = iv(take(Tb, argmin_cells(Vb))) if can_interval else None
    gain_iv = iv(crossfit(g, C, gain_statistic(col0), addV, addT)) if can_interval else None
    near_iv = iv(near_optimal_fractions(Vb, o.tol)) if can_interval else None

    # noise from the data

    # each row's wd gain, cross-fit, and whether it is resolved
    j0 = first_measured(measured)
    if cross:
        row_gain = crossfit(g, ones, row_gain_statistic(j0))[0]
    else:
        jv = row_argmin(V[None])[0]
        rr = np.arange(len(lrs))
        row_gain = np.where((j0 >= 0) & (jv >= 0),
                            T[rr, np.maximum(j0, 0)] - T[rr, np.maximum(jv, 0)], np.nan)  # fmt: skip
    if can_interval:
        rg = crossfit(g, C, row_gain_statistic(j0), addV, addT)
        a = 100 * (1 - o.level) / 2
        row_lo = _quiet(np.nanpercentile, rg, a, axis=0)
        resolved = np.nan_to_num(row_lo, nan=-np.inf) > 0
    else:
        resolved = np.nan_to_num(row_gain, nan=-np.inf) > noise.floor

    # the valley and its slope (a valley tracer's: on every measured point of each row)
    ga = variant_grids(frame, variant, metric, o.selection) if traced else g
    Va = ga.means()[1]
    res_a = np.isin(ga.lrs, lrs[resolved])
    cols = measured_columns(Va) if traced else None
    weights = np.ones(len(ga.lrs))
    pos_b = None
    if can_interval:
        Ca = resample_counts(ga.n_seeds, o.reps, o.seed)
        addVa = (
            addV if ga is g else evaluation_noise(Va, n_sel, o.reps, o.seed + 2, math.sqrt(var_s))
        )
        pos_b = resample_positions(ga.wds, ga.select, Ca, o.refine, cols, add=addVa)
        var = _quiet(np.nanvar, pos_b, axis=0)
        step = np.array(
            [_row_step(ga.wds, c) for c in (cols or [np.arange(len(ga.wds))] * len(ga.lrs))]
        )
        weights = 1.0 / np.maximum(np.nan_to_num(var, nan=np.inf), (step / 2) ** 2 / 3)
        weights = np.where(np.isfinite(weights), weights, 0.0)
    v = valley(ga.lrs, ga.wds, Va, o.refine, measured=traced, resolved=res_a, weights=weights)
    slope, intercept = slope_of(v)
    in_fit = np.isin(ga.lrs, v.loc[v["in_fit"], "lr"])
    lo = hi = NAN
    if pos_b is not None:
        s_b = weighted_slope(np.log(ga.lrs), np.where(in_fit[None, :], pos_b, np.nan), weights)[0]
        s_iv = percentile_interval(s_b, o.level)
        lo, hi = (s_iv.lo, s_iv.hi) if np.isfinite(slope) else (NAN, NAN)
    per_seed = seed_slopes(ga.lrs, ga.wds, ga.select, o.refine, traced, in_fit, weights)
    ok_seed = per_seed[np.isfinite(per_seed)]
    v["weight"] = v["weight"] / v.loc[v["in_fit"], "weight"].max() if v["in_fit"].any() else 1.0

    # near-optimal cells, on the selection metric
    threshold = max(float(o.abs_tol), noise_sel.floor)
    vb = best_and_smallest_wd(V)[0]

    # transfer regret, cross-fit
    informative = row_positions(V[None], wds, refine=False)["informative"][0]
    transfer = {}
    for d in (1, 2):
        pairs = transfer_pairs(informative, d)
        if not pairs:
            transfer[d] = (NAN, 0, None)
            continue
        if cross:
            t = float(crossfit(g, ones, transfer_statistic(pairs))[0])
        else:
            t = transfer_regret(lrs, wds, T, d, select=V)[0]
        t_iv = iv(crossfit(g, C, transfer_statistic(pairs), addV, addT)) if can_interval else None
        transfer[d] = (t, len(pairs), t_iv)
    norm = gain if gain > 0 else NAN

    # separability on the reported metric (cells whose every seed diverged left out)
    margin = CHANCE_MARGIN
    if chance is not None and np.isfinite(chance):
        margin = max(CHANCE_MARGIN, 2 * cell_standard_error(chance, n_eval, 1))
    Esep = np.where(D >= 1, np.nan, T)
    srows, scols = informative_lines(Esep, chance, margin)

    budget_rows, budget = _budget(variant, lrs, wds, T, V, best, o, Tb, Vb)
    if gain_iv is not None:
        gain_resolved = bool(gain_iv.lo > 0)
    else:
        gain_resolved = bool(gain > noise.floor)
    left_out = int((v["informative"] & ~v["resolved"]).sum())

    def lo_hi(x):
        return (x.lo, x.hi) if x is not None else (NAN, NAN)

    m = {
        "variant": variant,
        "optimizer": variant.split("/")[0],
        "decay": variant.split("/")[-1],
        "best_error": best,
        "best_error_std": best_std,
        "best_lr": float(lrs[i]),
        "best_weight_decay": float(wds[j]),
        "best_error_smallest_wd": e0,
        "wd_gain": gain,
        "coupling_slope": slope,
        "coupling_slope_lo": lo,
        "coupling_slope_hi": hi,
        "valley_rows": int(v["in_fit"].sum()),
        "valley_interior": bool(v.loc[v["in_fit"], "interior"].all() and v["in_fit"].sum() >= 2),
        "near_optimal_fraction": near_optimal_fraction(V, o.tol),
        "separability": separability(Esep, o.separability_log, chance, margin),
        "trials_to_near_optimal": trials_to_near_optimal(V, o.tol),
        "diverged_fraction": float(np.nansum(D * N) / np.nansum(N)),
        "n_lr": int(len(lrs)),
        "n_wd": int(len(wds)),
        "n_cells": int(measured.sum()),
        "n_seeds": int(S),
        "n_trials": int(np.nansum(N)),
        "tol": o.tol,
        "metric": metric,
        "analysis_grid": "grid",
        "coupling_slope_interval": (
            f"seed bootstrap ({o.reps} resamples)" if np.isfinite(lo) else "none"
        ),
        "coupling_slope_seeds": _fmt_slopes(per_seed),
        "coupling_slope_seed_min": float(ok_seed.min()) if ok_seed.size else NAN,
        "coupling_slope_seed_max": float(ok_seed.max()) if ok_seed.size else NAN,
        "coupling_slope_seed_n": int(ok_seed.size),
        "near_optimal_cells": int(near_optimal_mask(V, o.tol).sum()),
        "near_optimal_fraction_abs": near_optimal_fraction_absolute(V, threshold),
        "near_optimal_cells_abs": int((np.isfinite(V) & (V - vb <= threshold + 1e-12)).sum()),
        "near_optimal_threshold": threshold,
        "near_optimal_fraction_rel": (
            near_optimal_fraction_relative(V, o.rel_tol) if o.rel_tol is not None else NAN
        ),
        "rel_tol": NAN if o.rel_tol is None else float(o.rel_tol),
        "wd_gain_resolved": gain_resolved,
        "n_eval": int(n_eval),
        "n_eval_source": n_source,
        "transfer_regret_1": transfer[1][0],
        "transfer_regret_1_norm": transfer[1][0] / norm,
        "transfer_pairs_1": transfer[1][1],
        "transfer_regret_2": transfer[2][0],
        "transfer_regret_2_norm": transfer[2][0] / norm,
        "transfer_pairs_2": transfer[2][1],
        "separability_all": separability(Esep, o.separability_log),
        "separability_rows": int(srows.sum()),
        "separability_cols": int(scols.sum()),
        "chance": float(chance) if chance is not None else NAN,
        "selection": token,
        "best_val_error": best_val,
        "best_error_lo": lo_hi(best_iv)[0],
        "best_error_hi": lo_hi(best_iv)[1],
        "noise_floor": noise.floor,
        "noise_seed_sd": noise.seed_sd,
        "noise_eval_se": noise.eval_se,
        "noise_cells": noise.cells,
        "noise_model": noise.model,
        "noise_floor_selection": noise_sel.floor,
        "n_eval_selection": int(n_sel),
        "wd_gain_lo": lo_hi(gain_iv)[0],
        "wd_gain_hi": lo_hi(gain_iv)[1],
        "wd_gain_in_sample": gain_in,
        "interval": _interval_text(S, o),
        "transfer_regret_1_lo": lo_hi(transfer[1][2])[0],
        "transfer_regret_1_hi": lo_hi(transfer[1][2])[1],
        "transfer_regret_2_lo": lo_hi(transfer[2][2])[0],
        "transfer_regret_2_hi": lo_hi(transfer[2][2])[1],
        "near_optimal_fraction_lo": lo_hi(near_iv)[0],
        "near_optimal_fraction_hi": lo_hi(near_iv)[1],
        "coupling_intercept": intercept,
        "valley_weights": "bootstrap precision" if pos_b is not None else "equal",
        "valley_rows_left_out": left_out,
        **budget,
    }
    v.insert(0, "variant", variant)
    return VariantResult(m, v, pd.DataFrame(budget_rows, columns=list(BUDGET_COLUMNS)))


def _row_step(wds: np.ndarray, cols: np.ndarray) -> float:
    w = np.asarray(wds, float)[np.asarray(cols, int)]
    lw = np.log(w[w > 0])
    return float(np.median(np.diff(lw))) if lw.size >= 2 else 1.0


def variant_metrics(
    frame: pd.DataFrame,
    variant: str,
    metric: str | None = None,
    opts: Options | None = None,
    cells: pd.DataFrame | None = None,
    **overrides,
) -> dict:
    """Every number for one variant of a tidy frame (one experiment) on its grid, as a dict
    (metrics.csv's row; ``overrides`` are :class:`Options` fields)."""
    o = options(opts, **overrides)
    if metric is not None:
        o = o.with_(metric=metric)
    return variant_result(frame, variant, o, cells).metrics


def surface_metrics(
    frame: pd.DataFrame,
    variant: str,
    metric: str | None = None,
    opts: Options | None = None,
    surface: Surface | None = None,
    **overrides,
) -> dict:
    """The numbers of :func:`variant_metrics` for scattered trials: the best trial chosen on the
    selection metric, the rest on the fitted surface, or nan below :data:`MIN_SURFACE_TRIALS`
    trials. Same keys, ``analysis_grid`` = ``surface`` (or ``none``)."""
    o = options(opts, **overrides)
    metric = metric or o.metric
    sub = frame[(frame["variant"] == variant) & frame[metric].notna()]
    if o.n_eval_source is not None and o.n_eval:
        n_eval, n_source = int(o.n_eval), o.n_eval_source
    else:
        n_eval, n_source = eval_size(frame, metric, o.n_eval)
    chance = o.chance
    if chance is None:
        chance = chance_level(frame["data"].iloc[0]) if "data" in frame and len(frame) else NAN
    sel = o.selection if o.selection in sub and sub[o.selection].notna().all() else metric
    b = sub.loc[sub[sel].idxmin()]
    out = dict.fromkeys(VARIANT_COLUMNS, NAN)
    out.update(
        variant=variant,
        optimizer=variant.split("/")[0],
        decay=variant.split("/")[-1],
        best_error=float(b[metric]),
        best_val_error=float(b[sel]),
        best_lr=float(b["lr"]),
        best_weight_decay=float(b["weight_decay"]),
        valley_rows=0,
        valley_interior=False,
        diverged_fraction=float(sub["diverged"].mean()),
        n_lr=int(sub["lr"].nunique()),
        n_wd=int(sub["weight_decay"].nunique()),
        n_cells=int(len(sub[["lr", "weight_decay"]].drop_duplicates())),
        n_seeds=int(sub["seed"].nunique()),
        n_trials=int(len(sub)),
        tol=o.tol,
        metric=metric,
        analysis_grid="none",
        coupling_slope_interval="none",
        coupling_slope_seeds="",
        coupling_slope_seed_n=0,
        near_optimal_cells=0,
        near_optimal_cells_abs=0,
        rel_tol=NAN if o.rel_tol is None else float(o.rel_tol),
        wd_gain_resolved=False,
        n_eval=int(n_eval),
        n_eval_source=n_source,
        transfer_pairs_1=0,
        transfer_pairs_2=0,
        separability_rows=0,
        separability_cols=0,
        chance=float(chance),
        selection="val" if sel != metric else "test",
        interval="none (scattered trials)",
        valley_weights="equal",
        valley_rows_left_out=0,
        budget_box="none",
        budget_cells=0,
        n_eval_selection=int(n_eval),
        noise_model="none (scattered trials)",
    )
    if len(sub) < MIN_SURFACE_TRIALS:
        return out
    s = surface if surface is not None else variant_surface(frame, variant, metric)
    E = s.E
    v = valley(s.lrs, s.wds, E, o.refine)
    slope, intercept = slope_of(v)
    lo, hi = surface_slope_interval(s, min(o.reps, SURFACE_REPS), o.seed, refine=o.refine)
    best, e0 = best_and_smallest_wd(E)
    floor = 2 * np.sqrt(2) * cell_standard_error(best, n_eval, 1)
    threshold = max(float(o.abs_tol), floor)
    margin = max(CHANCE_MARGIN, 2 * cell_standard_error(chance, n_eval, 1))
    rows, cols = informative_lines(E, chance, margin)
    out.update(
        best_error_smallest_wd=e0,
        wd_gain=e0 - best,
        wd_gain_in_sample=e0 - best,
        coupling_slope=slope,
        coupling_intercept=intercept,
        coupling_slope_lo=lo,
        coupling_slope_hi=hi,
        valley_rows=int(v["in_fit"].sum()),
        valley_interior=bool(v.loc[v["in_fit"], "interior"].all() and v["in_fit"].sum() >= 2),
        separability=separability(E, o.separability_log, chance, margin),
        analysis_grid="surface",
        coupling_slope_interval="bootstrap over trials" if np.isfinite(lo) else "none",
        near_optimal_fraction=near_optimal_fraction(E, o.tol),
        near_optimal_cells=int(near_optimal_mask(E, o.tol).sum()),
        near_optimal_fraction_abs=near_optimal_fraction_absolute(E, threshold),
        near_optimal_cells_abs=int((np.isfinite(E) & (E - best <= threshold + 1e-12)).sum()),
        near_optimal_threshold=threshold,
        near_optimal_fraction_rel=(
            near_optimal_fraction_relative(E, o.rel_tol) if o.rel_tol is not None else NAN
        ),
        noise_floor=floor,
        noise_floor_selection=floor,
        noise_eval_se=floor / (2 * np.sqrt(2)),
        noise_model="evaluation binomial only (one trial per point)",
        wd_gain_resolved=bool(e0 - best > threshold),
        separability_all=separability(E, o.separability_log),
        separability_rows=int(rows.sum()),
        separability_cols=int(cols.sum()),
    )
    return out


SURFACE_REPS = 200  # bootstrap over trials: each resample refits the surface


def _identity_columns(
    frame: pd.DataFrame, table: pd.DataFrame, metrics: pd.DataFrame, o: Options
) -> pd.DataFrame:
    """The identity-check columns of metrics.csv, filled on both variants of each pair."""
    from analysis.load import seed_grids
    from analysis.metrics.identity import identity_pairs

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
                sa = seed_grids(frame, va, o.metric)
                sb = seed_grids(frame, vb, o.metric)
                common = np.intersect1d(sa[0], sb[0])
                d = (seed_slopes(*sb[1:3], sb[3][np.searchsorted(sb[0], common)], o.refine)
                     - seed_slopes(*sa[1:3], sa[3][np.searchsorted(sa[0], common)], o.refine))  # fmt: skip
                d = d[np.isfinite(d)]
                if d.size:
                    vals["identity_slope_diff_seed_min"] = float(d.min())
                    vals["identity_slope_diff_seed_max"] = float(d.max())
            for col, val in vals.items():
                out.loc[[ia[0], ib[0]], col] = val
    return out


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
    return out[list(METRICS_COLUMNS)]


@dataclass
class Tables:
    """What :func:`tables` computes for one experiment: ``metrics`` (metrics.csv), ``valleys``
    (valley.csv) and ``budget`` (budget.csv)."""

    metrics: pd.DataFrame
    valleys: pd.DataFrame
    budget: pd.DataFrame


def _settle(frame: pd.DataFrame, o: Options) -> Options:
    mixed = group_columns(frame)
    if mixed:
        raise ValueError(
            f"frame: mixes several {'/'.join(mixed)} values; analyze each part of "
            "analysis.load.split_groups(frame) on its own"
        )
    n, source = eval_size(frame, o.metric, o.n_eval)
    return o.with_(n_eval=n, n_eval_source=source)


def tables(
    frame: pd.DataFrame,
    opts: Options | None = None,
    variants: list[str] | None = None,
    surfaces: dict[str, Surface] | None = None,
) -> Tables:
    """metrics.csv, valley.csv and budget.csv of one experiment's tidy frame in one pass: one
    metrics row per variant (paper order), on the grid or, with ``surfaces`` (scattered trials),
    on the fitted surfaces; plus the identity and theory columns."""
    o = _settle(frame, opts or Options())
    variants = variants or variants_in_order(frame)
    rows, valleys, budgets = [], [], []
    if surfaces is None:
        cells = aggregate(frame, o.metric)
        for v in variants:
            r = variant_result(frame, v, o, cells)
            rows.append(r.metrics)
            valleys.append(r.valley)
            budgets.append(r.budget)
    else:
        rows = [surface_metrics(frame, v, opts=o, surface=surfaces.get(v)) for v in variants]
    table = pd.DataFrame(rows, columns=list(VARIANT_COLUMNS))
    table = _identity_columns(frame, identity_table(frame, o.metric), table, o)
    valleys = [x for x in valleys if len(x)]
    return Tables(
        _theory_columns(frame, table),
        pd.concat(valleys, ignore_index=True) if valleys else pd.DataFrame(),
        pd.concat(budgets, ignore_index=True) if budgets else pd.DataFrame(columns=list(BUDGET_COLUMNS)),
    )  # fmt: skip


def metrics_table(
    frame: pd.DataFrame,
    metric: str | None = None,
    variants: list[str] | None = None,
    surfaces: dict[str, Surface] | None = None,
    opts: Options | None = None,
    **overrides,
) -> pd.DataFrame:
    """One row per variant (paper order) of one experiment's tidy frame (metrics.csv, columns
    :data:`~analysis.metrics.columns.METRICS_COLUMNS`); ``overrides`` are :class:`Options`
    fields."""
    o = options(opts, **overrides)
    if metric is not None:
        o = o.with_(metric=metric)
    return tables(frame, o, variants, surfaces).metrics


def regret_table(
    cells: pd.DataFrame, variants: list[str] | None = None, tol: float = 0.25
) -> pd.DataFrame:
    """Long table ``variant, k, regret, regret_normalized, expected_best_error, p_near_optimal``
    for k = 1..N cells of each variant's seed-mean grid (``regret_normalized`` = regret /
    ``wd_gain`` of that grid, nan when decay gains nothing)."""
    rows = []
    for v in variants or variants_in_order(cells):
        _, _, E = grid(cells, v)
        rows += _regret_rows(v, E, tol)
    return pd.DataFrame(rows, columns=list(REGRET_COLUMNS))


def _regret_rows(variant: str, E: np.ndarray, tol: float) -> list[dict]:
    regret = random_search_regret(E)
    hit = hit_probability(E, tol)
    best, e0 = best_and_smallest_wd(E)
    gain = e0 - best if e0 - best > 0 else NAN
    return [
        {"variant": variant, "k": k, "regret": r, "regret_normalized": r / gain,
         "expected_best_error": best + r, "p_near_optimal": p}
        for k, (r, p) in enumerate(zip(regret, hit), start=1)
    ]  # fmt: skip


def regret_seed_table(
    frame: pd.DataFrame, variants: list[str] | None = None, metric: str = "test_error"
) -> pd.DataFrame:
    """Long table ``variant, seed, k, regret, regret_normalized``: the random-search regret of
    each seed's own grid; normalized by the seed-mean grid's ``wd_gain`` (one scale per
    variant, so the seeds' band is the same shape in both units)."""
    from analysis.load import seed_grids

    cells = aggregate(frame, metric)
    rows = []
    for v in variants or variants_in_order(frame):
        _, _, E = grid(cells, v)
        best, e0 = best_and_smallest_wd(E)
        gain = e0 - best if e0 - best > 0 else NAN
        seeds, _, _, S = seed_grids(frame, v, metric)
        for s, G in zip(seeds, S):
            for k, r in enumerate(random_search_regret(G), start=1):
                rows.append({"variant": v, "seed": int(s), "k": k, "regret": r,
                             "regret_normalized": r / gain})  # fmt: skip
    return pd.DataFrame(rows, columns=list(REGRET_SEED_COLUMNS))


def valley_table(
    cells: pd.DataFrame,
    variants: list[str] | None = None,
    refine: bool = True,
    measured: bool = False,
) -> pd.DataFrame:
    """Long table of the valley (best wd per lr) of each variant's seed-mean grid, rows resolved
    when decay gains anything on that grid (:func:`tables` gives the valley with seed-resolved
    rows and precision weights)."""
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


__all__ = [
    "Grids",
    "Tables",
    "VariantResult",
    "best_statistic",
    "metrics_table",
    "regret_seed_table",
    "regret_table",
    "surface_metrics",
    "surface_valley_table",
    "tables",
    "valley_table",
    "variant_metrics",
    "variant_result",
]
