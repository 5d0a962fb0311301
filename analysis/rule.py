"""The decay rule: which weight decay to use at a given learning rate, fitted from a sweep.

For each variant the best weight decay of each lr row (chosen on validation error, the mean over
seeds; :func:`analysis.metrics.valley` on the seed-mean grid, refined to the vertex of the
parabola through the minimum and its neighbours) is fitted over the rows that carry information
(the valley's ``in_fit`` rows: informative, with an interior minimum) by

    log wd* = log C + s * log lr,        i.e.  wd* = C * lr^s.

``C`` and ``s`` get seed-bootstrap intervals (seeds resampled with replacement, the whole fit
redone per replicate; :data:`MIN_BOOTSTRAP_SEEDS` or more seeds; with two seeds the range of the
two single-seed fits, with one none). The rule holds on the lrs it was fitted over, its
*validity range*; outside it, it is an extrapolation, and ``python -m analysis.rule`` says so.

Timescale (Wang & Aitchison 2025): decay shrinks the weights by a fraction ``s_r`` per step
(:func:`analysis.theory.radial_shrink`: ``eta * wd`` for ``independent``, ``lr * eta * wd`` for
``decoupled``, ``lr * eta * wd / (1 - momentum)`` for SGD + ``l2``; not predicted for Adam +
``l2``), so the weights average over ``tau_iter = 1 / s_r`` steps, ``tau_epoch = tau_iter * B /
N`` epochs (batch size ``B``, training samples ``N``). ``tau_epoch`` is given at the fitted
optimum with the schedule's peak (``eta = 1``).

Several sweeps that differ in the training-set size ``n_train`` or in the training length
``epochs`` (several results files, the arms of one sweep, or columns ``n_train`` / ``epochs``)
measure how the best wd moves with them: :func:`timescale_exponents` fits ``log wd*(lr_ref) =
a + p log N`` (resp. ``log epochs``) at a learning rate inside every arm's validity range, with
a seed-bootstrap interval on ``p``, next to what the timescale argument predicts
(:data:`PREDICTED_EXPONENTS`; docs/analysis.md derives them).

Where ``n_train``, ``epochs`` and ``batch_size`` come from: columns of those names when the
results have them, else the ``config.yaml`` the sweep writes beside each ``results.csv``
(``data.n_train``, ``train.epochs``, ``data.batch_size``; for the arms of ``sweep.arms`` the
arm's overrides on top).

``python -m analysis.rule RESULTS... --variant adam/independent --lr 3e-3 [--n-train N]
[--epochs E] [--extrapolate]`` prints the recommended wd with its interval.

The held-out check: the lrs (and training-set sizes) a sweep's config lists under
``analysis.heldout`` (or ``--holdout-lr`` / ``--holdout-n-train``) are left out of the fit, and
:func:`heldout_table` reports the found best wd over the prediction there, with its interval.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import theory
from analysis.load import SourceError, is_valley, load_results, seed_grids, variants_in_order
from analysis.metrics import valley
from analysis.metrics.options import MIN_SEEDS_FOR_INTERVAL
from analysis.metrics.selection import percentile_interval, resample_picks
from analysis.metrics.valley import measured_columns, row_positions, weighted_slope

# fewer seeds: the range of the single-seed fits (2 seeds) or no interval (1)
MIN_BOOTSTRAP_SEEDS = MIN_SEEDS_FOR_INTERVAL
BOOTSTRAP_REPS = 200  # each resample refits every row's valley: fewer than the metrics' default
LEVEL = 0.95
SETTINGS = ("n_train", "epochs", "batch_size")
AXES = ("n_train", "epochs")  # the settings whose exponent a sweep over several values measures

# d log wd* / d log N (fixed epochs) and d log wd* / d log epochs (fixed N) at a fixed lr, if the
# best timescale tau_epoch = B / (N s_r) stays constant (N) and grows like the run (epochs);
# nan: the shrink is not proportional to wd (Adam + l2: lam * w is divided by sqrt(v)).
PREDICTED_EXPONENTS = {"independent": -1.0, "decoupled": -1.0, "l2": -1.0, "loss": -1.0}

RULE_COLUMNS = (
    "experiment",
    "variant",
    "C",
    "C_lo",
    "C_hi",
    "s",
    "s_lo",
    "s_hi",
    "predicted_slope",
    "lr_min",
    "lr_max",
    "rows",
    "seeds",
    "interval",
    "tau_iter",
    "tau_epoch",
    "tau_epoch_min",
    "tau_epoch_max",
    "n_train",
    "epochs",
    "batch_size",
    "heldout_lrs",
)

__all__ = [
    "BOOTSTRAP_REPS",
    "PREDICTED_EXPONENTS",
    "RULE_COLUMNS",
    "Bootstrap",
    "RuleError",
    "configured_heldout",
    "decay_rule_table",
    "fit_rule",
    "heldout_table",
    "heldout_values",
    "main",
    "predicted_exponent",
    "recommend",
    "seed_bootstrap",
    "settings",
    "summary_line",
    "timescale_exponents",
    "write_tables",
]


class RuleError(ValueError):
    """A request the data cannot answer: one line naming what and how to ask instead."""


# --------------------------------------------------------------------------------------------
# The seed bootstrap (one injected function)

# bootstrap(n_seeds, statistic, reps, seed, level) -> (lo, hi, kind): ``statistic(idx)`` maps an
# array of seed indices (positions 0..n_seeds-1, drawn with replacement) to a vector of numbers;
# lo / hi are its interval per element, kind says what the interval is.
Bootstrap = Callable[..., tuple[np.ndarray, np.ndarray, str]]


def seed_bootstrap(
    n_seeds: int,
    statistic: Callable[[np.ndarray], np.ndarray],
    reps: int = BOOTSTRAP_REPS,
    seed: int = 0,
    level: float = LEVEL,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Percentile interval of a vector statistic over seed resamples: the resamples of
    :func:`analysis.metrics.selection.resample_picks` and the percentiles of
    :func:`analysis.metrics.selection.percentile_interval` (the project's seed bootstrap),
    element by element, so that one refit per resample serves every number of the rule.

    ``statistic(idx)`` gets ``n_seeds`` seed positions drawn with replacement and returns a
    vector; non-finite replicates are left out per element (an element finite on fewer than a
    quarter of the resamples gets no interval). ``kind``: ``"bootstrap"`` with
    :data:`MIN_BOOTSTRAP_SEEDS` or more seeds; ``"seed range"`` with two (min and max of the two
    single-seed statistics, no coverage claimed); ``"none"`` with one (nan).
    """
    full = np.atleast_1d(np.asarray(_quiet(statistic, np.arange(n_seeds)), float))
    nan = np.full(full.shape, np.nan)
    if n_seeds < 2:
        return nan, nan.copy(), "none"
    if n_seeds < MIN_BOOTSTRAP_SEEDS:
        reps_ = np.array([_quiet(statistic, np.array([k])) for k in range(n_seeds)], float)
        return np.nanmin(reps_, axis=0), np.nanmax(reps_, axis=0), "seed range"
    picks = resample_picks(n_seeds, reps, seed)
    values = np.array([np.atleast_1d(_quiet(statistic, p)) for p in picks], float)
    lo, hi = nan.copy(), nan.copy()
    for k in range(values.shape[1]):
        col = values[:, k]
        if np.isfinite(col).sum() >= max(10, reps // 4):  # most resamples must have a fit
            lo[k], hi[k], _ = percentile_interval(col, level)
    return lo, hi, "bootstrap"


def _quiet(fn, *args):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args)


# --------------------------------------------------------------------------------------------
# Settings per experiment (n_train, epochs, batch size)


def _read_yaml(path: Path) -> dict | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def _config_settings(cfg: dict) -> dict[str, float]:
    data, train = cfg.get("data") or {}, cfg.get("train") or {}
    n = float(data.get("n_train") or 0)
    if n <= 0 and data.get("name") == "mnist1d" and data.get("num_samples"):
        # the whole training split: generated train share minus the validation split
        n = int(float(data["num_samples"]) * float(data.get("train_fraction", 0.8))) - int(
            data.get("val_size", 500)
        )
    epochs = float(train.get("epochs") or 0)
    if float(train.get("max_steps") or 0) > 0:
        epochs = float("nan")  # a step budget: the length in epochs depends on N
    return {
        "n_train": n if n > 0 else float("nan"),
        "epochs": epochs if epochs > 0 else float("nan"),
        "batch_size": float(data.get("batch_size") or "nan"),
    }


def _configs(sources: Any):
    """The sweep configs (dicts with a ``name``) of the ``config.yaml`` beside each
    ``results.csv`` among ``sources`` (files or directories; storages have none)."""
    for src in sources if isinstance(sources, list | tuple) else [sources]:
        if not isinstance(src, str | Path) or "://" in str(src):
            continue
        path = Path(str(src).partition("#")[0])
        files = (
            sorted(path.rglob("config.yaml")) if path.is_dir() else [path.parent / "config.yaml"]
        )
        for cfg_path in files:
            cfg = _read_yaml(cfg_path) if cfg_path.is_file() else None
            if cfg and cfg.get("name") is not None:
                yield cfg


def experiment_settings(sources: Any) -> dict[str, dict[str, float]]:
    """``{experiment: {"n_train", "epochs", "batch_size"}}`` from the ``config.yaml`` beside each
    ``results.csv`` among ``sources`` (files or directories); an arm of ``sweep.arms`` is the
    experiment ``<name>-<arm>`` with the arm's overrides applied."""
    found: dict[str, dict[str, float]] = {}
    for cfg in _configs(sources):
        name = str(cfg["name"])
        found.setdefault(name, _config_settings(cfg))
        arms = (cfg.get("sweep") or {}).get("arms") or {}
        for arm, over in arms.items():
            found.setdefault(f"{name}-{arm}", _config_settings(_merge(cfg, over or {})))
    return found


def configured_heldout(sources: Any) -> dict[str, dict[str, list[float]]]:
    """``{experiment: {"lr": [...], "n_train": [...]}}``: the held-out lrs and training-set sizes
    (``analysis.heldout``) of the ``config.yaml`` beside each ``results.csv`` among ``sources``;
    every arm ``<name>-<arm>`` of ``sweep.arms`` holds out its sweep's. Experiments whose config
    holds out nothing are left out."""
    found: dict[str, dict[str, list[float]]] = {}
    for cfg in _configs(sources):
        held = (cfg.get("analysis") or {}).get("heldout") or {}
        values = {axis: [float(x) for x in held.get(axis) or []] for axis in ("lr", "n_train")}
        if not any(values.values()):
            continue
        name = str(cfg["name"])
        found.setdefault(name, values)
        for arm in (cfg.get("sweep") or {}).get("arms") or {}:
            found.setdefault(f"{name}-{arm}", values)
    return found


def heldout_values(held: dict[str, dict[str, list[float]]], axis: str) -> list[float]:
    """Every value of ``axis`` (``lr`` or ``n_train``) that :func:`configured_heldout` found,
    sorted, each once."""
    return sorted({x for h in held.values() for x in h.get(axis, [])})


def settings(frame: pd.DataFrame, sources: Any = None) -> pd.DataFrame:
    """``frame`` with the columns ``n_train``, ``epochs``, ``batch_size``: kept where the frame
    has them, else from :func:`experiment_settings` of ``sources``, else nan."""
    out = frame.copy()
    table = experiment_settings(sources) if sources is not None else {}
    exp = out["experiment"].astype(str) if "experiment" in out else pd.Series("", index=out.index)
    for col in SETTINGS:
        mapped = exp.map(lambda e, c=col: table.get(e, {}).get(c, np.nan)).astype(float)
        if col in out:
            have = pd.to_numeric(out[col], errors="coerce")
            mapped = have.where(have.notna(), mapped)
        out[col] = mapped.astype(float)
    return out


# --------------------------------------------------------------------------------------------
# The fit


def _isin(values: np.ndarray, targets: Sequence[float], rtol: float = 1e-6) -> np.ndarray:
    t = np.asarray(list(targets), float)
    if t.size == 0:
        return np.zeros(len(values), bool)
    return np.any(np.abs(values[:, None] - t[None, :]) <= rtol * np.abs(t[None, :]), axis=1)


@dataclass
class Rule:
    """One variant's rule ``wd* = C * lr^s`` with intervals, and what it rests on."""

    variant: str
    C: float
    C_lo: float
    C_hi: float
    s: float
    s_lo: float
    s_hi: float
    lr_min: float
    lr_max: float
    rows: int
    seeds: int
    interval: str  # "bootstrap", "seed range" or "none"
    at: dict[float, tuple[float, float, float]]  # lr -> (wd*, lo, hi) for the asked lrs
    found: dict[float, tuple[float, float, float]]  # held-out lr -> found best wd (wd, lo, hi)
    heldout: tuple[float, ...] = ()

    def wd(self, lr: float) -> float:
        return self.C * float(lr) ** self.s

    def covers(self, lr: float) -> bool:
        return bool(self.lr_min * (1 - 1e-9) <= float(lr) <= self.lr_max * (1 + 1e-9))


def _grids(frame: pd.DataFrame, variant: str, metric: str):
    seeds, lrs, wds, S = seed_grids(frame, variant, metric)
    if len(seeds) == 0:
        raise RuleError(f"variant {variant}: no trials with {metric}")
    # a diverged trial counts with error 1.0 (load.tidy), so it is never a row's best
    return seeds, lrs, wds, S


def fit_rule(
    frame: pd.DataFrame,
    variant: str,
    *,
    at_lrs: Sequence[float] = (),
    holdout_lrs: Sequence[float] = (),
    metric: str = "val_error",
    bootstrap: Bootstrap = seed_bootstrap,
    reps: int = BOOTSTRAP_REPS,
    rows: pd.DataFrame | None = None,
) -> Rule:
    """Fit ``wd* = C * lr^s`` for ``variant`` on the trials of one experiment (module docstring).

    ``at_lrs``: learning rates at which the rule's wd and its interval are wanted (``Rule.at``);
    ``holdout_lrs``: lr rows left out of the fit, whose found best wd (with its interval) is
    returned in ``Rule.found`` for the held-out check. ``rows``: the variant's rows of the
    metrics' ``valley.csv`` (``lr``, ``in_fit``, ``weight``): fit over those rows with those
    weights, as the valley slope of metrics.csv is (default: the valley's rows of the seed mean,
    equally weighted). Raises :class:`RuleError` when fewer than two rows carry information.
    """
    if "experiment" in frame and frame.loc[frame["variant"] == variant, "experiment"].nunique() > 1:
        raise RuleError(
            f"variant {variant}: trials of several experiments; fit each experiment on its own"
        )
    seeds, lrs, wds, S = _grids(frame, variant, metric)
    measured = is_valley(frame[frame["variant"] == variant])
    at = np.asarray(list(at_lrs), float)
    held = [float(x) for x in holdout_lrs if _isin(lrs, [x]).any()]
    # the rows the rule rests on: chosen once, on the seed mean (as the valley slope's are)
    v = _quiet(valley, lrs, wds, np.nanmean(S, axis=0), True, measured) if rows is None else rows
    fit = _isin(lrs, v.loc[v["in_fit"].astype(bool), "lr"].to_numpy(float)) & ~_isin(lrs, held)
    weight = np.ones(len(lrs))
    if rows is not None and "weight" in rows:
        by_lr = dict(zip(rows["lr"].astype(float), pd.to_numeric(rows["weight"], errors="coerce")))
        weight = np.array([by_lr.get(lr, np.nan) for lr in lrs], float)
        weight = np.where(np.isfinite(weight) & (weight > 0), weight, 0.0)
    hold = [int(np.nonzero(_isin(lrs, [h]))[0][0]) for h in held]
    cols = measured_columns(np.nanmean(S, axis=0)) if measured else None
    used = lrs[fit]
    x = np.log(lrs)

    def stat(idx: np.ndarray) -> np.ndarray:
        pos = row_positions(np.nanmean(S[idx], axis=0)[None], wds, True, cols)["pos"][0]
        sl, ic = weighted_slope(x, np.where(fit, pos, np.nan), weight)
        s, logc = float(sl[0]), float(ic[0])
        return np.array([logc, s, *(logc + s * np.log(at)), *pos[hold]], float)

    full = _quiet(stat, np.arange(len(seeds)))
    logc, s = full[0], full[1]
    lr_span = (float(used.min()), float(used.max())) if used.size else (np.nan, np.nan)
    if not np.isfinite(s):
        raise RuleError(
            f"variant {variant}: fewer than two lr rows with an interior best wd on "
            f"{metric}; widen the wd range or add lrs"
        )
    lo, hi, kind = bootstrap(len(seeds), stat, reps=reps)
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    n_at = len(at)
    at_out = {
        float(x): (math.exp(full[2 + k]), math.exp(lo[2 + k]), math.exp(hi[2 + k]))
        for k, x in enumerate(at)
    }
    base = 2 + n_at
    found = {
        h: (math.exp(full[base + k]), math.exp(lo[base + k]), math.exp(hi[base + k]))
        for k, h in enumerate(held)
    }
    return Rule(
        variant=variant,
        C=math.exp(logc),
        C_lo=math.exp(lo[0]),
        C_hi=math.exp(hi[0]),
        s=float(s),
        s_lo=float(lo[1]),
        s_hi=float(hi[1]),
        lr_min=lr_span[0],
        lr_max=lr_span[1],
        rows=int(used.size),
        seeds=len(seeds),
        interval=kind,
        at=at_out,
        found=found,
        heldout=tuple(held),
    )


def timescale(
    variant: str, lr: Any, wd: Any, n_train: float, batch_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(tau_iter, tau_epoch)`` at ``(lr, wd)``: ``1 / s_r`` steps (the per-step shrink of
    :func:`analysis.theory.radial_shrink` at the schedule's peak) and ``tau_iter * B / N``
    epochs; nan where the shrink is not predicted."""
    opt, _, dec = variant.partition("/")
    s_r = theory.radial_shrink(opt, dec, lr, wd, eta=1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(s_r > 0, 1.0 / s_r, np.nan)
    return tau, tau * float(batch_size) / float(n_train)


def _one_value(frame: pd.DataFrame, col: str) -> float:
    if col not in frame:
        return float("nan")
    vals = pd.to_numeric(frame[col], errors="coerce").dropna().unique()
    return float(vals[0]) if len(vals) == 1 else float("nan")


def decay_rule_table(
    frame: pd.DataFrame,
    sources: Any = None,
    *,
    valleys: pd.DataFrame | None = None,
    holdout_lrs: Sequence[float] = (),
    metric: str = "val_error",
    bootstrap: Bootstrap = seed_bootstrap,
    reps: int = BOOTSTRAP_REPS,
) -> pd.DataFrame:
    """``decay_rule.csv``: one row per (experiment, variant) with the rule, its intervals, the
    validity range, and the timescale at the optimum (:data:`RULE_COLUMNS`). ``valleys``: the
    metrics' ``valley.csv`` of this experiment (its fit rows and weights, :func:`fit_rule`'s
    ``rows``). A variant whose rule cannot be fitted has nan numbers and ``interval`` = why."""
    frame = settings(frame, sources)
    rows = []
    for exp, part in frame.groupby("experiment", sort=True) if len(frame) else []:
        for v in variants_in_order(part):
            sub = part[part["variant"] == v]
            n, e, b = (_one_value(sub, c) for c in SETTINGS)
            opt, _, dec = v.partition("/")
            row = {
                "experiment": exp,
                "variant": v,
                "predicted_slope": theory.prediction(opt, dec).slope,
                "n_train": n,
                "epochs": e,
                "batch_size": b,
                "heldout_lrs": "",
            }
            try:
                given = None
                if valleys is not None and len(valleys) and "variant" in valleys:
                    given = valleys[valleys["variant"] == v]
                    given = given if len(given) and "in_fit" in given else None
                r = fit_rule(
                    sub, v, holdout_lrs=holdout_lrs, metric=metric, bootstrap=bootstrap,
                    reps=reps, rows=given,
                )  # fmt: skip
            except RuleError as exc:
                rows.append({**row, "interval": str(exc).split(": ", 1)[-1]})
                continue
            used = np.geomspace(r.lr_min, r.lr_max, 9)
            _, tau_e = timescale(v, used, r.C * used**r.s, n, b)
            mid = math.sqrt(r.lr_min * r.lr_max)
            tau_mid_i, tau_mid_e = timescale(v, mid, r.wd(mid), n, b)
            rows.append(
                {
                    **row,
                    **{k: getattr(r, k) for k in ("C", "C_lo", "C_hi", "s", "s_lo", "s_hi")},
                    "lr_min": r.lr_min,
                    "lr_max": r.lr_max,
                    "rows": r.rows,
                    "seeds": r.seeds,
                    "interval": r.interval,
                    "tau_iter": float(tau_mid_i),
                    "tau_epoch": float(tau_mid_e),
                    "tau_epoch_min": float(np.nanmin(tau_e))
                    if np.isfinite(tau_e).any()
                    else np.nan,
                    "tau_epoch_max": float(np.nanmax(tau_e))
                    if np.isfinite(tau_e).any()
                    else np.nan,
                    "heldout_lrs": " ".join(f"{h:.3g}" for h in r.heldout),
                }
            )
    return pd.DataFrame(rows, columns=list(RULE_COLUMNS))


def heldout_table(
    frame: pd.DataFrame,
    holdout_lrs: Sequence[float],
    *,
    metric: str = "val_error",
    bootstrap: Bootstrap = seed_bootstrap,
    reps: int = BOOTSTRAP_REPS,
) -> pd.DataFrame:
    """The held-out check: per (experiment, variant, held-out lr) the rule fitted without those
    lrs predicts a wd; ``factor`` = found best wd / predicted, with the seed-bootstrap interval
    of the found wd divided by the prediction (``factor_lo``, ``factor_hi``)."""
    cols = ["experiment", "variant", "lr", "predicted_wd", "found_wd", "factor"]
    cols += ["factor_lo", "factor_hi", "interval"]
    rows = []
    for exp, part in frame.groupby("experiment", sort=True) if len(frame) else []:
        for v in variants_in_order(part):
            try:
                r = fit_rule(
                    part[part["variant"] == v],
                    v,
                    at_lrs=holdout_lrs,
                    holdout_lrs=holdout_lrs,
                    metric=metric,
                    bootstrap=bootstrap,
                    reps=reps,
                )
            except RuleError:
                continue
            for h, (found, lo, hi) in r.found.items():
                pred = r.wd(h)
                rows.append(
                    {
                        "experiment": exp,
                        "variant": v,
                        "lr": h,
                        "predicted_wd": pred,
                        "found_wd": found,
                        "factor": found / pred,
                        "factor_lo": lo / pred,
                        "factor_hi": hi / pred,
                        "interval": r.interval,
                    }
                )
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------------------------
# Exponents against N and training length


def predicted_exponent(variant: str, axis: str) -> float:
    """What the timescale argument predicts for ``d log wd* / d log <axis>`` at a fixed lr
    (docs/analysis.md): -1 for a shrink proportional to wd (the best tau_epoch constant in N;
    the best timescale a fixed share of the run in epochs); nan for Adam + ``l2``."""
    opt, _, dec = variant.partition("/")
    p = theory.prediction(opt, dec)
    if not p.predicts_angle:
        return float("nan")
    return PREDICTED_EXPONENTS.get(p.mode, float("nan"))


def _arms(frame: pd.DataFrame, variant: str, axis: str) -> list[tuple[float, pd.DataFrame]]:
    """``[(value, trials)]``: the experiments of ``variant`` over which only ``axis`` varies,
    the largest such family (the other setting fixed)."""
    other = "epochs" if axis == "n_train" else "n_train"
    sub = frame[frame["variant"] == variant]
    best: list[tuple[float, pd.DataFrame]] = []
    for _, fam in sub.groupby(other, dropna=True):
        arms = [
            (float(val), part)
            for val, part in fam.groupby(axis, dropna=True)
            if part["experiment"].nunique() == 1
        ]
        if len(arms) > len(best):
            best = arms
    return best


def timescale_exponents(
    frame: pd.DataFrame,
    sources: Any = None,
    *,
    holdout_n_train: Sequence[float] = (),
    metric: str = "val_error",
    bootstrap: Bootstrap = seed_bootstrap,
    reps: int = BOOTSTRAP_REPS,
) -> pd.DataFrame:
    """One row per (variant, axis) with two or more values of ``axis`` (``n_train`` at fixed
    epochs, ``epochs`` at fixed ``n_train``): ``exponent`` = least-squares slope of log wd*
    at ``lr_ref`` (the geometric middle of the lrs every arm's rule covers) against log axis,
    its seed-bootstrap interval, the prediction, and the values used. ``holdout_n_train``: N
    values left out of the exponent fit; for each, ``heldout`` holds the predicted over the
    found best wd at ``lr_ref``."""
    frame = settings(frame, sources)
    cols = ["variant", "axis", "exponent", "exponent_lo", "exponent_hi", "predicted", "lr_ref"]
    cols += ["values", "seeds", "interval", "heldout"]
    rows = []
    for v in variants_in_order(frame) if len(frame) else []:
        for axis in AXES:
            arms = _arms(frame, v, axis)
            skip = holdout_n_train if axis == "n_train" else ()
            fit_arms = [(x, p) for x, p in arms if not _isin(np.array([x]), skip).any()]
            if len(fit_arms) < 2:
                continue
            try:
                rules = [
                    fit_rule(p, v, metric=metric, reps=1, bootstrap=_no_interval) for _, p in arms
                ]
            except RuleError:
                continue
            lo = max(r.lr_min for r in rules)
            hi = min(r.lr_max for r in rules)
            lr_ref = (
                math.sqrt(lo * hi) if lo <= hi else math.sqrt(rules[0].lr_min * rules[0].lr_max)
            )
            grids = [(x, *_grids(p, v, metric), is_valley(p)) for x, p in arms]
            n_seeds = min(len(g[1]) for g in grids)
            fit_mask = ~_isin(np.array([x for x, _ in arms]), skip)

            arm_rows = [_rows_of(g[2], g[3], g[4], g[5]) for g in grids]

            def stat(idx, grids=grids, lr_ref=lr_ref, fit_mask=fit_mask, arm_rows=arm_rows):
                logw = []
                for (_, _, lrs, wds, S, _), (fit, cols) in zip(grids, arm_rows):
                    pos = row_positions(np.nanmean(S[idx], axis=0)[None], wds, True, cols)["pos"]
                    ok = fit & np.isfinite(pos[0])
                    if ok.sum() < 2:
                        logw.append(np.nan)
                        continue
                    s, logc = np.polyfit(np.log(lrs[ok]), pos[0][ok], 1)
                    logw.append(logc + s * math.log(lr_ref))
                logw = np.array(logw)
                x = np.log([g[0] for g in grids])
                ok = fit_mask & np.isfinite(logw)
                if ok.sum() < 2:
                    return np.full(1 + (~fit_mask).sum(), np.nan)
                p, a = np.polyfit(x[ok], logw[ok], 1)
                pred = [np.exp(a + p * x[k] - logw[k]) for k in np.nonzero(~fit_mask)[0]]
                return np.array([p, *pred], float)

            full = _quiet(stat, np.arange(n_seeds))
            lo_, hi_, kind = bootstrap(n_seeds, stat, reps=reps)
            held = [
                f"{x:g}: predicted/found {full[1 + k]:.3g} [{lo_[1 + k]:.3g}, {hi_[1 + k]:.3g}]"
                for k, x in enumerate(x for (x, _), m in zip(arms, fit_mask) if not m)
            ]
            rows.append(
                {
                    "variant": v,
                    "axis": axis,
                    "exponent": full[0],
                    "exponent_lo": lo_[0],
                    "exponent_hi": hi_[0],
                    "predicted": predicted_exponent(v, axis),
                    "lr_ref": lr_ref,
                    "values": " ".join(f"{x:g}" for x, _ in arms),
                    "seeds": n_seeds,
                    "interval": kind,
                    "heldout": "; ".join(held),
                }
            )
    return pd.DataFrame(rows, columns=cols)


def _rows_of(lrs, wds, S, measured) -> tuple[np.ndarray, list | None]:
    """``(fit, cols)``: which lr rows the fit uses (chosen on the seed mean) and, for a valley
    tracer, each row's measured columns."""
    E = np.nanmean(S, axis=0)
    v = _quiet(valley, lrs, wds, E, True, measured)
    return _isin(lrs, v.loc[v["in_fit"], "lr"].to_numpy(float)), (
        measured_columns(E) if measured else None
    )


def _no_interval(n_seeds, statistic, reps=0, **_):
    full = np.atleast_1d(np.asarray(_quiet(statistic, np.arange(n_seeds)), float))
    return np.full(full.shape, np.nan), np.full(full.shape, np.nan), "none"


# --------------------------------------------------------------------------------------------
# Plain words


def _g(x: float) -> str:
    return f"{x:.2g}" if np.isfinite(x) else "nan"


def summary_line(row: dict | pd.Series) -> str:
    """One line per variant in plain words, from a :func:`decay_rule_table` row, e.g.
    ``adam/independent: wd ~ 1.6e-03 at any lr in [1e-04, 1e-01]``."""
    v = row["variant"]
    if not np.isfinite(float(row.get("s", np.nan))):
        return f"{v}: no decay rule ({row.get('interval') or 'no fit'})"
    C, s = float(row["C"]), float(row["s"])
    lo, hi = float(row["lr_min"]), float(row["lr_max"])
    rng = f"[{lo:.0e}, {hi:.0e}]"
    s_lo, s_hi = float(row.get("s_lo", np.nan)), float(row.get("s_hi", np.nan))
    flat = np.isfinite(s_lo) and s_lo <= 0 <= s_hi
    if flat or (not np.isfinite(s_lo) and abs(s) < 0.15):
        wd_mid = C * math.sqrt(lo * hi) ** s
        return f"{v}: wd ~ {wd_mid:.1e} at any lr in {rng} (wd = {_g(C)} * lr^{s:+.2f})"
    ci = f", s in [{s_lo:+.2f}, {s_hi:+.2f}]" if np.isfinite(s_lo) else ""
    return f"{v}: wd ~ {_g(C)} * lr^{s:+.2f} for lr in {rng}{ci}"


# --------------------------------------------------------------------------------------------
# The command


@dataclass
class Recommendation:
    wd: float
    lo: float
    hi: float
    interval: str
    notes: list[str]
    experiment: str


def _pick_experiment(frame: pd.DataFrame, n_train: float | None, epochs: float | None) -> str:
    exps = sorted(set(frame["experiment"]))
    if len(exps) == 1:
        return exps[0]
    if n_train is None and epochs is None:
        raise RuleError(
            f"the results hold several experiments ({', '.join(exps)}); pass --experiment NAME, "
            "or --n-train / --epochs for the setting you want"
        )
    cand = frame.groupby("experiment")[["n_train", "epochs"]].first()

    def dist(e: str) -> float:
        d = 0.0
        for col, want in (("n_train", n_train), ("epochs", epochs)):
            have = cand.loc[e, col]
            if want is not None:
                d += abs(math.log(want / have)) if np.isfinite(have) else 1e9
        return d

    return min(exps, key=dist)


def recommend(
    frame: pd.DataFrame,
    variant: str,
    lr: float,
    *,
    n_train: float | None = None,
    epochs: float | None = None,
    experiment: str | None = None,
    extrapolate: bool = False,
    metric: str = "val_error",
    bootstrap: Bootstrap = seed_bootstrap,
    reps: int = BOOTSTRAP_REPS,
) -> Recommendation:
    """The wd for ``variant`` at ``lr`` (and another ``n_train`` / ``epochs`` when given), from
    a frame with :func:`settings` columns. Outside the data (an lr outside the rule's range, an
    N or length outside the measured ones, or no sweep over them) it raises :class:`RuleError`
    unless ``extrapolate``, and then says so in ``notes``."""
    if not (lr > 0 and math.isfinite(lr)):
        raise RuleError(f"--lr: {lr} is not a positive learning rate; pass e.g. --lr 3e-3")
    have = variants_in_order(frame)
    if variant not in have:
        raise RuleError(
            f"--variant: {variant} is not in the results; pass one of {', '.join(have)}"
        )
    frame = frame[frame["variant"] == variant]
    if experiment is not None:
        if experiment not in set(frame["experiment"]):
            exps = ", ".join(sorted(set(frame["experiment"])))
            raise RuleError(f"--experiment: {experiment} is not in the results ({exps})")
    else:
        experiment = _pick_experiment(frame, n_train, epochs)
    part = frame[frame["experiment"] == experiment]
    rule = fit_rule(part, variant, at_lrs=[lr], metric=metric, bootstrap=bootstrap, reps=reps)
    wd, lo, hi = rule.at[float(lr)]
    notes: list[str] = []
    if not rule.covers(lr):
        where = (
            f"lr {lr:g} is outside the lrs the data cover [{rule.lr_min:.3g}, {rule.lr_max:.3g}]"
        )
        if not extrapolate:
            raise RuleError(
                f"--lr: {where} ({variant}, {experiment}); pass an lr inside it, or "
                "--extrapolate to extend the fitted rule beyond the data"
            )
        notes.append(f"EXTRAPOLATION: {where}; the rule is extended beyond the data")
    base = {c: _one_value(part, c) for c in SETTINGS}
    factor, f_lo, f_hi = 1.0, 1.0, 1.0
    for axis, want in (("n_train", n_train), ("epochs", epochs)):
        if want is None or (np.isfinite(base[axis]) and math.isclose(want, base[axis])):
            continue
        if not (want > 0):
            raise RuleError(f"--{axis.replace('_', '-')}: {want} must be > 0")
        if not np.isfinite(base[axis]):
            raise RuleError(
                f"--{axis.replace('_', '-')}: the results do not say their {axis} (no column, no "
                "config.yaml beside results.csv); leave the flag out"
            )
        exps = timescale_exponents(frame, metric=metric, bootstrap=bootstrap, reps=reps)
        got = exps[exps["axis"] == axis]
        ratio = want / base[axis]
        if len(got) and np.isfinite(got["exponent"].iloc[0]):
            p, p_lo, p_hi = (
                float(got[c].iloc[0]) for c in ("exponent", "exponent_lo", "exponent_hi")
            )
            values = [float(x) for x in str(got["values"].iloc[0]).split()]
            if not (min(values) * (1 - 1e-9) <= want <= max(values) * (1 + 1e-9)):
                where = f"{axis} {want:g} is outside the measured {axis} [{min(values):g}, {max(values):g}]"
                if not extrapolate:
                    raise RuleError(
                        f"--{axis.replace('_', '-')}: {where}; pass a value inside it, or "
                        "--extrapolate to extend the measured exponent"
                    )
                notes.append(f"EXTRAPOLATION: {where}")
            notes.append(
                f"{axis} {base[axis]:g} -> {want:g} with the measured exponent {p:+.2f}"
                + (f" [{p_lo:+.2f}, {p_hi:+.2f}]" if np.isfinite(p_lo) else "")
            )
        else:
            p = predicted_exponent(variant, axis)
            if not extrapolate or not np.isfinite(p):
                why = "no sweep over " + axis + " in the results"
                fix = (
                    "pass --extrapolate to use the timescale argument's exponent"
                    if np.isfinite(p)
                    else "the timescale argument predicts no exponent for this variant"
                )
                raise RuleError(f"--{axis.replace('_', '-')}: {why}; {fix}")
            p_lo = p_hi = float("nan")
            notes.append(
                f"EXTRAPOLATION: {axis} {base[axis]:g} -> {want:g} with the timescale argument's "
                f"exponent {p:+.0f} (not measured here)"
            )
        factor *= ratio**p
        if np.isfinite(p_lo):
            f_lo *= min(ratio**p_lo, ratio**p_hi)
            f_hi *= max(ratio**p_lo, ratio**p_hi)
        else:
            f_lo, f_hi = f_lo * ratio**p, f_hi * ratio**p
    return Recommendation(wd * factor, lo * f_lo, hi * f_hi, rule.interval, notes, str(experiment))


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.rule",
        description="The weight decay to use at a learning rate, from the decay rule wd = C * "
        "lr^s fitted on a sweep (best wd per lr row on validation error, seed-bootstrap "
        "intervals). Refuses to answer outside the data unless --extrapolate.",
    )
    ap.add_argument("sources", nargs="+", help="results.csv files, directories or storages")
    ap.add_argument("--variant", help="optimizer/decay, e.g. adam/independent")
    ap.add_argument("--lr", type=float, help="the learning rate you will use")
    ap.add_argument("--n-train", type=float, default=None, help="your training-set size")
    ap.add_argument("--epochs", type=float, default=None, help="your training length (epochs)")
    ap.add_argument("--experiment", default=None, help="which experiment of the results")
    ap.add_argument("--extrapolate", action="store_true", help="answer outside the data too")
    ap.add_argument("--metric", default="val_error", help="the error the best wd is chosen on")
    ap.add_argument("--reps", type=int, default=BOOTSTRAP_REPS, help="bootstrap replicates")
    ap.add_argument(
        "--tables",
        metavar="DIR",
        help="instead of one answer: write decay_rule.csv, decay_rule_heldout.csv and "
        "timescale_exponents.csv into DIR and print one line per variant",
    )
    ap.add_argument(
        "--holdout-lr",
        type=float,
        action="append",
        default=[],
        help="an lr row left out of "
        "the fit, whose best wd the rule then predicts (repeat the flag for several; default: "
        "the sweep's analysis.heldout.lr)",
    )
    ap.add_argument(
        "--holdout-n-train",
        type=float,
        action="append",
        default=[],
        help="an N left out of the exponent fit, whose best wd the exponent then predicts "
        "(default: the sweep's analysis.heldout.n_train)",
    )
    return ap


def write_tables(
    frame: pd.DataFrame,
    out: str | Path,
    *,
    holdout_lrs: Sequence[float] = (),
    holdout_n_train: Sequence[float] = (),
    metric: str = "val_error",
    bootstrap: Bootstrap = seed_bootstrap,
    reps: int = BOOTSTRAP_REPS,
) -> dict[str, Path]:
    """Compute and write ``decay_rule.csv`` (:func:`decay_rule_table`), with held-out lrs
    ``decay_rule_heldout.csv`` (:func:`heldout_table`), and with sweeps over N or epochs
    ``timescale_exponents.csv`` (:func:`timescale_exponents`) into ``out``; every table is
    computed before the first file is written."""
    kw = {"metric": metric, "bootstrap": bootstrap, "reps": reps}
    tables = {"decay_rule": decay_rule_table(frame, holdout_lrs=holdout_lrs, **kw)}
    if holdout_lrs:
        tables["decay_rule_heldout"] = heldout_table(frame, holdout_lrs, **kw)
    exps = timescale_exponents(frame, holdout_n_train=holdout_n_train, **kw)
    if len(exps):
        tables["timescale_exponents"] = exps
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in tables.items():
        path = out / f"{name}.csv"
        tmp = path.with_suffix(".csv.tmp")
        table.to_csv(tmp, index=False)
        tmp.replace(path)
        paths[name] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.reps < 1:
            raise RuleError(f"--reps: {args.reps}; pass --reps 1 or more")
        if args.tables:
            return _tables(args)
        if args.variant is None or args.lr is None:
            raise RuleError(
                "--variant and --lr: both needed for a recommendation (or --tables DIR)"
            )
        if "/" not in args.variant:
            raise RuleError(
                f"--variant: {args.variant} is not optimizer/decay; e.g. adam/independent"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = settings(load_results(args.sources), args.sources)
        if args.metric not in frame or not frame[args.metric].notna().any():
            raise RuleError(f"--metric: no {args.metric} in the results; pass --metric test_error")
        rec = recommend(
            frame,
            args.variant,
            args.lr,
            n_train=args.n_train,
            epochs=args.epochs,
            experiment=args.experiment,
            extrapolate=args.extrapolate,
            metric=args.metric,
            reps=args.reps,
        )
    except (RuleError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    part = frame[(frame["experiment"] == rec.experiment) & (frame["variant"] == args.variant)]
    rule = fit_rule(part, args.variant, metric=args.metric, bootstrap=_no_interval)
    n, e, b = (_one_value(part, c) for c in SETTINGS)
    tau_i, tau_e = timescale(args.variant, args.lr, rec.wd, args.n_train or n, b)
    pct = int(round(100 * LEVEL))
    if rec.interval == "bootstrap":
        ci = f"{pct}% seed-bootstrap interval [{rec.lo:.2g}, {rec.hi:.2g}]"
    elif rec.interval == "seed range":
        ci = f"range over 2 single-seed fits [{rec.lo:.2g}, {rec.hi:.2g}] (too few seeds for an interval)"
    else:
        ci = "one seed: no interval"
    print(f"{args.variant} at lr {args.lr:g}: wd = {rec.wd:.2g} ({ci})")
    print(
        f"  rule: wd = {rule.C:.3g} * lr^{rule.s:+.3f}, fitted on {rule.rows} lr rows in "
        f"[{rule.lr_min:.3g}, {rule.lr_max:.3g}] of {rec.experiment} "
        f"({rule.seeds} seed{'s' if rule.seeds != 1 else ''}; N={n:g}, {e:g} epochs)"
    )
    if np.isfinite(tau_e):
        print(f"  timescale at this wd: {float(tau_i):.3g} steps = {float(tau_e):.3g} epochs")
    for note in rec.notes:
        print(f"  {note}")
    return 0


def _tables(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = settings(load_results(args.sources), args.sources)
    if args.variant is not None:
        if args.variant not in set(frame["variant"]):
            have = ", ".join(variants_in_order(frame))
            raise RuleError(f"--variant: {args.variant} is not in the results; pass one of {have}")
        frame = frame[frame["variant"] == args.variant]
    # held out: the flags, else the sweep's analysis.heldout (config.yaml beside the results)
    held = configured_heldout(args.sources)
    holdout_lrs = args.holdout_lr or heldout_values(held, "lr")
    holdout_n = args.holdout_n_train or heldout_values(held, "n_train")
    for flag, given, values in (
        ("--holdout-lr", args.holdout_lr, holdout_lrs),
        ("--holdout-n-train", args.holdout_n_train, holdout_n),
    ):
        if values and not given:
            shown = ", ".join(f"{x:g}" for x in values)
            print(f"held out (analysis.heldout; {flag} overrides): {shown}")
    paths = write_tables(
        frame,
        args.tables,
        holdout_lrs=holdout_lrs,
        holdout_n_train=holdout_n,
        metric=args.metric,
        reps=args.reps,
    )
    rules = pd.read_csv(paths["decay_rule"])
    for exp, part in rules.groupby("experiment", sort=False):
        print(f"{exp}:")
        for _, row in part.iterrows():
            print(f"  {summary_line(row)}")
    for path in paths.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
