"""The results page (analysis/RESULTS.md), rendered from the galleries' CSVs.

``python -m analysis.results_page [--gallery analysis/gallery] [--out analysis/RESULTS.md]
[--check]`` reads every regime's folder under the gallery (``metrics.csv``, ``cells.csv``,
``identity.csv``, ``theory.csv``, ``results.csv``, ``config.yaml`` and an optional ``run.yaml``
with the run's command, wall time and machine) and fills the template
``results_page.md.j2`` beside this file. Every number on the page comes from those files; the
verdicts ("resolved", "inside the prediction's interval", which form has the highest transfer
regret) are computed here from the intervals in ``metrics.csv``. A column that a ``metrics.csv``
lacks (an older analysis) is reported as not available, never guessed. ``--check`` renders the
page and exits 1 when it differs from the file, without writing it.

Rules the verdicts follow (docs/analysis.md has the definitions of the columns):

- a quantity is *resolved* when its interval (``<name>_lo`` .. ``<name>_hi``) excludes 0;
- a slope agrees with the theory when the prediction lies inside the slope's interval
  (``coupling_slope_lo/hi``), or, without one, inside the range of the single-seed slopes (said
  so: a range is not an interval); a slope whose wd gain is not resolved is no evidence either
  way, since the best wd of a row where decay buys nothing is chosen by noise;
- two values differ when their intervals are disjoint;
- "easier to tune" (the paper's claim for its independent form) is supported where that form has
  the lowest transfer regret of its (model, optimizer) group and contradicted where it has the
  highest.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.page_text import (
    INDEPENDENT,
    NA,
    Findings,
    Regime,
    _dig,
    _facts,
    _float,
    _read,
    _yaml,
    finite,
    num,
    pct,
    plural,
    pts,
    sci,
    signed,
)
from harness import registry

HERE = Path(__file__).resolve().parent
GALLERY = HERE / "gallery"
OUT = HERE / "RESULTS.md"
TEMPLATE = "results_page.md.j2"
SELECTION = {  # metrics.csv's `selection` in words
    "val": "chosen on validation error, reported on test error",
    "val+crossfit": "chosen on validation error, reported on test error; the wd gain and "
    "transfer regret cross-fit (chosen on all seeds but one, scored on the held-out seed)",
    "test": "chosen and reported on test error",
}


REGIMES = (
    Regime("scale_invariant", "scale_invariant_mnist1d", "Scale-invariant regime"),
    Regime("hidden_decay", "hidden_decay_mnist1d", "Hidden-decay regime"),
    Regime("mnist1d", "fig2_mnist1d", "Control: every parameter decays"),
    Regime("grokking", "grokking", "Grokking: a transformer on modular addition"),
)


# --------------------------------------------------------------------------------------------
# Numbers as text


def interval(lo: float, hi: float, fmt) -> str:
    """``[lo, hi]`` in ``fmt``; "" when either end is missing."""
    return f"[{fmt(lo)}, {fmt(hi)}]" if finite(lo, hi) else ""


def resolved(lo: float, hi: float) -> str | None:
    """``resolved`` when ``[lo, hi]`` excludes 0, ``not resolved`` when it holds 0, None when
    there is no interval."""
    if not finite(lo, hi):
        return None
    return "resolved" if lo > 0 or hi < 0 else "not resolved"


def with_interval(row: Any, col: str, fmt) -> str:
    """``value [lo, hi]`` of ``col`` and ``col_lo/hi``; the value alone when there is no
    interval."""
    v = num(row, col)
    text = fmt(v)
    iv = interval(num(row, f"{col}_lo"), num(row, f"{col}_hi"), fmt)
    return f"{text} {iv}" if iv and text != NA else text


def family_label(fam: str) -> str:
    """The optimizer family's label in the registry (``SGD``, ``Adam``)."""
    family = registry.OPTIMIZERS.get(fam)
    return family.label if family else fam


# --------------------------------------------------------------------------------------------
# The slope, the gain, transfer regret: one variant's numbers and verdicts


@dataclass
class Slope:
    text: str  # "-1.01 [-1.08, -0.70]" or "-1.01 (seeds -1.08..-0.70, n=3)"
    predicted: float
    agrees: bool | None  # None: no interval or range to judge by, or no prediction
    basis: str  # "interval", "range of n single-seed slopes", ""


def slope_of(row: Any) -> Slope:
    s, pred = num(row, "coupling_slope"), num(row, "predicted_slope")
    lo, hi = num(row, "coupling_slope_lo"), num(row, "coupling_slope_hi")
    if not finite(s):
        return Slope(NA, pred, None, "")
    if finite(lo, hi):
        agrees = bool(lo <= pred <= hi) if finite(pred) else None
        return Slope(f"{signed(s)} [{signed(lo)}, {signed(hi)}]", pred, agrees, "interval")
    n = num(row, "coupling_slope_seed_n")
    smin, smax = num(row, "coupling_slope_seed_min"), num(row, "coupling_slope_seed_max")
    if finite(n, smin, smax) and n >= 2:
        agrees = bool(smin <= pred <= smax) if finite(pred) else None
        basis = f"range of {int(n)} single-seed slopes"
        return Slope(f"{signed(s)} (seeds {signed(smin)}..{signed(smax)})", pred, agrees, basis)
    return Slope(f"{signed(s)} (one seed: no interval)", pred, None, "")


def gain_state(row: Any) -> str | None:
    """From the wd gain's interval: ``resolved`` (above 0: decay helps), ``resolved below 0``
    (the decay chosen on validation does worse on held-out seeds than the smallest decay), ``not
    resolved``; None without an interval."""
    lo, hi = num(row, "wd_gain_lo"), num(row, "wd_gain_hi")
    state = resolved(lo, hi)
    return "resolved below 0" if state == "resolved" and hi < 0 else state


def gain_text(row: Any) -> str:
    return with_interval(row, "wd_gain", lambda x: pts(x, sign=True))


def regret_text(row: Any) -> str:
    return with_interval(row, "transfer_regret_1", pts)


def disjoint(a: tuple[float, float], b: tuple[float, float]) -> bool | None:
    """Whether two intervals do not overlap; None when either is missing."""
    if not finite(*a, *b):
        return None
    return a[1] < b[0] or b[1] < a[0]


# --------------------------------------------------------------------------------------------
# Findings: what the data support, contradict, and leave open


def _variant(row: Any, models: int) -> str:
    v = str(row["variant"])
    return f"{row['model']} {v}" if models > 1 else v


def slope_findings(m: pd.DataFrame) -> Findings:
    """The valley slopes against the theory's predictions (module docstring for the rules)."""
    out = Findings()
    models = m["model"].nunique() if "model" in m else 1
    inside, outside, no_gain, no_gain_iv, unjudged, no_slope = [], [], [], [], [], []
    for _, r in m.iterrows():
        sl = slope_of(r)
        if finite(sl.predicted) and sl.text == NA and "valley_rows_left_out" in r:
            no_slope.append(_variant(r, models))
        if not finite(sl.predicted) or sl.text == NA:
            continue
        item = f"{_variant(r, models)} {sl.text} (predicted {signed(sl.predicted)})"
        state = gain_state(r)
        if state in ("not resolved", "resolved below 0"):
            no_gain.append(f"{_variant(r, models)} {sl.text}")
        elif state is None:
            no_gain_iv.append(item)
        elif sl.agrees is None:
            unjudged.append(item)
        elif sl.agrees:
            inside.append((item, sl.basis))
        else:
            outside.append((item, sl.basis))

    def joined(items: list[tuple[str, str]]) -> tuple[str, str]:
        bases = sorted({b for _, b in items})
        return "; ".join(i for i, _ in items), " or ".join(bases)

    if inside:
        text, basis = joined(inside)
        out.supports.append(f"valley slopes with the prediction inside the {basis}: {text}.")
    if outside:
        text, basis = joined(outside)
        out.contradicts.append(f"valley slopes with the prediction outside the {basis}: {text}.")
    if no_gain:
        out.open.append(
            "slopes that are no evidence either way, because the wd gain is not resolved above "
            "0: " + "; ".join(no_gain) + "."
        )
    if no_gain_iv:
        out.open.append(
            "slopes not judged, because the wd gain has no interval here (whether decay buys "
            "more than noise is not known): " + "; ".join(no_gain_iv) + "."
        )
    if no_slope:
        out.open.append(
            "no slope (fewer than two lr rows whose wd gain is resolved): "
            + ", ".join(no_slope)
            + "."
        )
    if unjudged:
        out.open.append("slopes without an interval or a seed range: " + "; ".join(unjudged) + ".")
    return out


def gain_findings(m: pd.DataFrame) -> Findings:
    out = Findings()
    models = m["model"].nunique() if "model" in m else 1
    res, unres, neg, na = [], [], [], []
    for _, r in m.iterrows():
        state = gain_state(r)
        item = f"{_variant(r, models)} {gain_text(r)}"
        {"resolved": res, "not resolved": unres, "resolved below 0": neg}.get(state, na).append(
            item
        )
    if res:
        out.supports.append(
            "weight decay matters (wd gain resolved, points): " + "; ".join(res) + "."
        )
    if neg:
        out.open.append(
            "wd gain resolved below 0 (the decay chosen on validation loses to the smallest decay "
            "on held-out seeds: no valley to read, points): " + "; ".join(neg) + "."
        )
    if unres:
        out.open.append("wd gain not resolved (points): " + "; ".join(unres) + ".")
    if na and not res and not unres:
        gains = [num(r, "wd_gain") for _, r in m.iterrows()]
        gains = [g for g in gains if finite(g)]
        if gains:
            out.open.append(
                f"wd gains {pts(min(gains))}-{pts(max(gains))} points; no interval is available "
                "in this metrics.csv, so none is called resolved."
            )
    return out


def _groups(m: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``(label, rows)`` per (model, optimizer family)."""
    keys = [k for k in ("model", "optimizer") if k in m]
    out = []
    for key, g in m.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        parts = dict(zip(keys, key))
        label = family_label(parts.get("optimizer", ""))
        if "model" in parts and m["model"].nunique() > 1:
            label = f"{parts['model']} {label}"
        out.append((label, g))
    return out


@dataclass
class Ranking:
    label: str
    order: list[tuple[str, str]]  # (decay, text), lowest first
    lowest: str
    highest: str
    separated: bool | None  # the extreme form's interval is disjoint from every other's


def transfer_rankings(m: pd.DataFrame) -> list[Ranking]:
    """Per (model, optimizer) group: the decay forms ordered by transfer regret (one lr step)."""
    out: list[Ranking] = []
    if "transfer_regret_1" not in m:
        return out
    for label, g in _groups(m):
        g = g[np.isfinite(pd.to_numeric(g["transfer_regret_1"], errors="coerce").to_numpy(float))]
        if len(g) < 2 or INDEPENDENT not in set(g["decay"]):
            continue
        g = g.sort_values("transfer_regret_1", kind="stable")
        order = [(r["decay"], regret_text(r)) for _, r in g.iterrows()]
        ind = g[g["decay"] == INDEPENDENT].iloc[0]
        others = g[g["decay"] != INDEPENDENT]
        mine = (num(ind, "transfer_regret_1_lo"), num(ind, "transfer_regret_1_hi"))
        seps = [
            disjoint(mine, (num(r, "transfer_regret_1_lo"), num(r, "transfer_regret_1_hi")))
            for _, r in others.iterrows()
        ]
        separated = None if any(s is None for s in seps) else all(seps)
        out.append(Ranking(label, order, g.iloc[0]["decay"], g.iloc[-1]["decay"], separated))
    return out


def _ranking_text(r: Ranking) -> str:
    body = ", ".join(f"{d} {t}" for d, t in r.order)
    sep = {
        True: "the independent form's interval is disjoint from the others'",
        False: "the intervals overlap",
        None: "no intervals",
    }[r.separated]
    return f"{r.label}: {body} ({sep})"


def transfer_findings(m: pd.DataFrame) -> Findings:
    """ "Easier to tune" by transfer regret, per (model, optimizer) pair: judged only where the
    independent form's interval is disjoint from every other form's; without intervals (fewer
    seeds, or an older metrics.csv) the ranking is reported as open."""
    out = Findings()
    ranks = transfer_rankings(m)
    if not ranks:
        return out
    n = len(ranks)
    judged = [r for r in ranks if r.separated is True]
    lowest = [r for r in judged if r.lowest == INDEPENDENT]
    highest = [r for r in judged if r.highest == INDEPENDENT]
    if lowest:
        out.supports.append(
            f"easier to tune: the paper's independent form has the lowest transfer regret "
            f"(points lost one lr step away) in {len(lowest)} of {n} (model, optimizer) "
            "pairs: " + "; ".join(_ranking_text(r) for r in lowest) + "."
        )
    if highest:
        out.contradicts.append(
            f"easier to tune: the paper's independent form has the highest transfer regret "
            f"(points lost one lr step away) in {len(highest)} of {n} (model, optimizer) "
            "pairs: " + "; ".join(_ranking_text(r) for r in highest) + "."
        )
    bare = [r for r in ranks if r.separated is None]
    if bare:
        hi = sum(r.highest == INDEPENDENT for r in bare)
        lo = sum(r.lowest == INDEPENDENT for r in bare)
        out.open.append(
            f"transfer regret without intervals: the paper's independent form has the highest "
            f"in {hi} and the lowest in {lo} of {len(bare)} (model, optimizer) pairs, a ranking "
            "that no interval resolves: " + "; ".join(_ranking_text(r) for r in bare) + "."
        )
    rest = [r for r in ranks if r not in lowest and r not in highest and r not in bare]
    if rest:
        out.open.append(
            "transfer regret does not single out the independent form (between the others, or "
            "its interval overlaps theirs): " + "; ".join(_ranking_text(r) for r in rest) + "."
        )
    return out


def budget_findings(m: pd.DataFrame) -> Findings:
    """Trials to within one point of the best, per (model, optimizer): a reading without an
    interval, so it is reported, not judged."""
    out = Findings()
    if "trials_to_within_1pt" not in m:
        return out
    parts = []
    for label, g in _groups(m):
        items = []
        for _, r in g.iterrows():
            k = num(r, "trials_to_within_1pt")
            items.append(f"{r['decay']} {int(k) if finite(k) else 'never'}")
        parts.append(f"{label}: " + ", ".join(items))
    if parts:
        out.open.append(
            "random cells of the search box needed to expect the validation choice within one "
            "point of the best (no interval, so not ranked): " + "; ".join(parts) + "."
        )
    return out


def best_error_findings(m: pd.DataFrame) -> Findings:
    """The paper's other claim: its independent form reaches a lower best error than coupled
    L2, per (model, optimizer)."""
    out = Findings()
    for label, g in _groups(m):
        ind, l2 = g[g["decay"] == INDEPENDENT], g[g["decay"] == "l2"]
        if ind.empty or l2.empty:
            continue
        a, b = ind.iloc[0], l2.iloc[0]
        ea, eb = num(a, "best_error"), num(b, "best_error")
        ia = (num(a, "best_error_lo"), num(a, "best_error_hi"))
        ib = (num(b, "best_error_lo"), num(b, "best_error_hi"))
        sep = disjoint(ia, ib)
        text = (
            f"{label}: best error {with_interval(a, 'best_error', pct)} (independent) vs "
            f"{with_interval(b, 'best_error', pct)} (L2)"
        )
        if sep is None:
            sa, sb = num(a, "best_error_std"), num(b, "best_error_std")
            spread = (
                "one seed" if num(a, "n_seeds") == 1 else f"seed std {pts(sa)} and {pts(sb)} points"
            )
            out.open.append(
                f"{text}; no interval on the best error ({spread}): no difference established."
            )
        elif not sep:
            out.open.append(f"{text}: the intervals overlap, no difference established.")
        elif ea < eb:
            out.supports.append(f"generalizes better: {text}, intervals disjoint.")
        else:
            out.contradicts.append(f"generalizes better: {text}, intervals disjoint.")
    return out


def noise_findings(m: pd.DataFrame) -> Findings:
    out = Findings()
    n = int(num(m.iloc[0], "n_seeds")) if len(m) and finite(num(m.iloc[0], "n_seeds")) else 0
    if n == 1:
        out.open.append("1 seed: no training-noise estimate; every difference is a single draw.")
    elif 1 < n < 3:
        out.open.append(f"{n} seeds: ranges only, no intervals.")
    return out


# --------------------------------------------------------------------------------------------
# Angles, identity, grokking's band


@dataclass
class AngleRow:
    variant: str
    n: int
    median: str
    within: str


def angle_rows(theory: pd.DataFrame | None, band: float) -> list[AngleRow]:
    """Per variant with a predicted angle: equilibrated trials, the median measured/predicted
    ratio, and the share within ``band`` of 1."""
    if theory is None or theory.empty or "angle_ratio" not in theory:
        return []
    out = []
    for v, g in theory.groupby("variant", sort=False):
        eq = g["equilibrated"].astype(str).str.lower() == "true"
        ratio = pd.to_numeric(g.loc[eq, "angle_ratio"], errors="coerce")
        ratio = ratio[np.isfinite(ratio.to_numpy(float))]
        if ratio.empty:
            continue
        within = float((np.abs(ratio - 1) <= band).mean())
        out.append(AngleRow(v, int(len(ratio)), f"{ratio.median():.2f}", f"{100 * within:.0f}%"))
    return out


def angle_findings(rows: list[AngleRow], band: float) -> Findings:
    out = Findings()
    if not rows:
        return out
    good = [r for r in rows if abs(float(r.median) - 1) <= band]
    bad = [r for r in rows if r not in good]
    if good:
        meds = sorted(float(r.median) for r in good)
        out.supports.append(
            f"the scale-invariant weights turn at the predicted equilibrium angle: median "
            f"measured/predicted ratio {meds[0]:.2f}-{meds[-1]:.2f} over the equilibrated trials "
            f"of {len(good)} of {len(rows)} variants with a prediction."
        )
    if bad:
        out.contradicts.append(
            "median angle ratio off the prediction by more than "
            f"{100 * band:.0f}%: " + "; ".join(f"{r.variant} {r.median}" for r in bad) + "."
        )
    return out


@dataclass
class IdentityRow:
    label: str
    pairs: str
    max_diff: str
    rms_diff: str
    slope_diff: str


def identity_rows(ident: pd.DataFrame | None, m: pd.DataFrame, label: str) -> list[IdentityRow]:
    """The decoupled / independent identity per optimizer family: equivalent pairs of cells,
    their per-seed differences, and slope(independent) - slope(decoupled) (expected +1)."""
    out, seen = [], set()
    for _, r in m.iterrows():
        if not finite(num(r, "identity_slope_diff")) and not finite(num(r, "identity_pairs")):
            continue
        fam = r["optimizer"]
        if fam in seen:  # both forms of a family carry the same check
            continue
        seen.add(fam)
        part = pd.DataFrame()
        if ident is not None and len(ident):
            part = ident[ident["optimizer"] == fam]
        diff = pd.to_numeric(part.get("difference", pd.Series(dtype=float)), errors="coerce")
        diff = diff[np.isfinite(diff.to_numpy(float))] if len(diff) else diff
        cells = num(r, "identity_cells")
        pairs = f"{int(cells)} cells, {len(diff)} pairs" if finite(cells) else f"{len(diff)} pairs"
        lo, hi = num(r, "identity_slope_diff_seed_min"), num(r, "identity_slope_diff_seed_max")
        sd = signed(num(r, "identity_slope_diff"))
        if finite(lo, hi) and lo != hi:
            sd += f" (seeds {signed(lo)}..{signed(hi)})"
        out.append(
            IdentityRow(
                f"{label}{family_label(fam)}",
                pairs,
                pts(float(np.abs(diff).max())) if len(diff) else NA,
                pts(float(np.sqrt(np.mean(np.square(diff))))) if len(diff) else NA,
                sd,
            )
        )
    return out


@dataclass
class BandEdge:
    variant: str
    reached: int
    cells: int
    edge: str  # the lowest grokking wd per lr
    slope: float
    rows: int
    predicted: float


def band_edges(cells: pd.DataFrame, m: pd.DataFrame, target: float) -> list[BandEdge]:
    """Grokking: per variant, the cells whose test accuracy reaches ``target``, the smallest wd
    that reaches it at each lr, and the log-log slope of that edge over every lr where it lies
    inside the grid (a row whose smallest wd already reaches it is left out: its edge is below
    the grid)."""
    out = []
    pred = {r["variant"]: num(r, "predicted_slope") for _, r in m.iterrows()}
    for v, g in cells.groupby("variant", sort=False):
        acc = 1 - g["mean"].astype(float)
        ok = g[acc >= target - 1e-12]
        wmin = float(g["weight_decay"].min())
        edges = []
        for lr, row in ok.groupby("lr"):
            w = float(row["weight_decay"].min())
            edges.append((float(lr), w, w > wmin))
        inside = [(lr, w) for lr, w, ins in edges if ins]
        slope = float("nan")
        if len(inside) >= 2:
            x, y = np.log([e[0] for e in inside]), np.log([e[1] for e in inside])
            slope = float(np.polyfit(x, y, 1)[0])
        text = ", ".join(
            f"{sci(lr)}: {sci(w)}" + ("" if ins else " (grid edge)") for lr, w, ins in edges
        )
        out.append(
            BandEdge(v, len(ok), len(g), text or "none", slope, len(inside), pred.get(v, np.nan))
        )
    return out


def accuracy_table(cells: pd.DataFrame, variant: str) -> list[list[str]]:
    """Test accuracy by cell: a header row of lrs, then one row per wd (largest first)."""
    g = cells[cells["variant"] == variant]
    piv = g.pivot_table(index="weight_decay", columns="lr", values="mean").sort_index(
        ascending=False
    )
    rows = [["wd \\ lr", *[sci(c) for c in piv.columns]]]
    for wd, r in piv.iterrows():
        rows.append([sci(wd), *[f"{1 - e:.2f}" if finite(e) else NA for e in r.to_numpy(float)]])
    return rows


# --------------------------------------------------------------------------------------------
# A gallery folder


@dataclass
class Part:
    """One (experiment, model) of a regime: its tables and figures."""

    model: str
    metrics: pd.DataFrame
    rows: list[dict]
    figures: list[str]
    angles: list[AngleRow]
    identity: list[IdentityRow]
    cells: pd.DataFrame | None


@dataclass
class Section:
    regime: Regime
    present: bool
    path: str = ""
    facts: list[str] = field(default_factory=list)  # the run, in bullets
    parts: list[Part] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)
    notes: list[str] = field(default_factory=list)
    band: list[BandEdge] = field(default_factory=list)
    grok_tables: list[tuple[str, list[list[str]]]] = field(default_factory=list)
    target: float = float("nan")
    selection: str = ""
    seeds: int = 0
    seeds_text: str = ""
    command: str = ""
    si_tensors: str = ""  # scale-invariant tensors the detector found per trial
    steps_to_target: str = ""
    ratio: str = ""  # Adam-L2 slope / Adam-decoupled slope, against the prediction


def _metric_row(r: Any) -> dict:
    sl = slope_of(r)
    state = gain_state(r)
    return {
        "variant": r["variant"],
        "best": with_interval(r, "best_error", pct)
        + (
            f" ± {pts(num(r, 'best_error_std'))}"
            if not finite(num(r, "best_error_lo")) and finite(num(r, "best_error_std"))
            else ""
        ),
        "lr": sci(num(r, "best_lr")),
        "wd": sci(num(r, "best_weight_decay")),
        "gain": gain_text(r) + ("" if state is None else f", {state}"),
        "noise": pts(num(r, "noise_floor")),
        "slope": sl.text,
        "predicted": signed(sl.predicted),
        "transfer": regret_text(r),
        "within": _trials(r),
    }  # fmt: skip


def _trials(r: Any) -> str:
    """``trials_to_within_1pt`` (``never`` when nan), and ``/ half box`` when known."""
    if "trials_to_within_1pt" not in r:
        return NA
    k, h = num(r, "trials_to_within_1pt"), num(r, "trials_to_within_1pt_half")
    text = f"{int(k)}" if finite(k) else "never"
    if "trials_to_within_1pt_half" in r:
        text += f" / {int(h) if finite(h) else 'never'}"
    return text


def _selection(m: pd.DataFrame) -> str:
    if "selection" in m and m["selection"].notna().any():
        values = sorted(set(m["selection"].dropna().astype(str)))
        return "; ".join(SELECTION.get(v, f"`selection` = {v}") for v in values)
    metric = sorted(set(m["metric"].astype(str))) if "metric" in m else []
    return (
        f"chosen and reported on {', '.join(metric) or 'one metric'} "
        "(this metrics.csv has no `selection` column)"
    )


def _part_dir(root: Path, model: str, models: int) -> Path:
    sub = root / model
    return sub if models > 1 and sub.is_dir() else root


def load_section(gallery: Path, regime: Regime, band: float) -> Section:
    root = gallery / regime.key
    metrics = _read(root / "metrics.csv")
    if metrics is None or metrics.empty:
        return Section(regime, False)
    sec = Section(regime, True, path=f"gallery/{regime.key}")
    results = _read(root / "results.csv")
    cfg = _yaml(root / "config.yaml")
    sec.facts = _facts(sec, root, results, cfg)
    run = _yaml(root / "run.yaml") or {}
    sec.command = str(
        run.get("command") or f"python -m harness.sweep experiment={regime.experiment}"
    )
    sec.selection = _selection(metrics)
    for col, what in (
        ("noise_model", "Noise floor"),
        ("interval", "Intervals"),
        ("budget_box", "Search box of the tuning cost"),
    ):
        if col in metrics and metrics[col].notna().any():
            values = list(dict.fromkeys(metrics[col].dropna().astype(str)))
            if col == "budget_box" and len(values) > 1:
                pairs = zip(metrics["variant"], metrics[col], strict=True)
                values = list(dict.fromkeys(f"{v}: {b}" for v, b in pairs))
            sec.facts.append(f"{what}: {'; '.join(values)}.")
    seeds = pd.to_numeric(metrics.get("n_seeds"), errors="coerce")
    sec.seeds = int(seeds.max()) if seeds is not None and seeds.notna().any() else 0
    sec.seeds_text = plural(sec.seeds, "seed")
    models = list(dict.fromkeys(metrics["model"])) if "model" in metrics else [""]
    for model in models:
        m = metrics[metrics["model"] == model] if model else metrics
        d = _part_dir(root, model, len(models))
        theory = _read(d / "theory.csv")
        figs = [
            f"{sec.path}/{d.relative_to(root).as_posix() + '/' if d != root else ''}{name}.png"
            for name in ("heatmaps", "regret", "budget", "valley", "angles")
            if (d / f"{name}.png").is_file()
        ]
        label = f"{model} " if len(models) > 1 else ""
        sec.parts.append(
            Part(
                model,
                m,
                [_metric_row(r) for _, r in m.iterrows()],
                figs,
                angle_rows(theory, band),
                identity_rows(_read(d / "identity.csv"), m, label),
                _read(d / "cells.csv"),
            )
        )
    findings = Findings()
    for part_findings in (
        slope_findings(metrics),
        gain_findings(metrics),
        transfer_findings(metrics),
        budget_findings(metrics),
        best_error_findings(metrics),
    ):
        findings.extend(part_findings)
    for p in sec.parts:
        findings.extend(angle_findings(p.angles, band))
    findings.extend(noise_findings(metrics))
    sec.findings = findings
    sec.ratio = _slope_ratio(metrics)
    return sec


def _slope_ratio(m: pd.DataFrame) -> str:
    """Adam-L2's slope over torch-style decoupled Adam's, measured and predicted."""
    if "model" in m and m["model"].nunique() > 1:
        return ""
    a = m[m["variant"] == "adam/l2"]
    b = m[m["variant"] == "adam/decoupled"]
    if a.empty or b.empty:
        return ""
    sa, sb = num(a.iloc[0], "coupling_slope"), num(b.iloc[0], "coupling_slope")
    pa, pb = num(a.iloc[0], "predicted_slope"), num(b.iloc[0], "predicted_slope")
    if not finite(sa, sb, pa, pb) or sb == 0 or pb == 0:
        return ""
    return (
        f"Adam-L2's valley slope is {sa / sb:.2f} times torch-style decoupled Adam's "
        f"({signed(sa)} / {signed(sb)}); the invariants predict {pa / pb:.2f}."
    )


def load_grokking(gallery: Path, sec: Section) -> None:
    """Grokking's own numbers: cells reaching the target accuracy, the band's lower edge."""
    root = gallery / sec.regime.key
    cfg = _yaml(root / "config.yaml")
    target = _float(_dig(cfg, "train", "target_accuracy"))
    sec.target = target
    part = sec.parts[0] if sec.parts else None
    if part is None or part.cells is None or not finite(target):
        sec.notes.append("the target accuracy or the cells are not in the gallery.")
        return
    sec.band = band_edges(part.cells, part.metrics, target)
    sec.grok_tables = [
        (v, accuracy_table(part.cells, v)) for v in dict.fromkeys(part.cells["variant"])
    ]
    results = _read(root / "results.csv")
    if results is not None and "si_tensors" in results:
        si = pd.to_numeric(results["si_tensors"], errors="coerce").dropna()
        if len(si):
            sec.si_tensors = f"{int(si.min())}" if si.min() == si.max() else (
                f"{int(si.min())}-{int(si.max())}"
            )  # fmt: skip
    if results is not None and "steps_to_target" in results:
        st = pd.to_numeric(results["steps_to_target"], errors="coerce").dropna()
        if len(st):
            sec.steps_to_target = f"{int(st.min()):,}-{int(st.max()):,}"
    f = Findings()
    small = part.cells.loc[
        part.cells.groupby("variant")["weight_decay"].transform("min") == part.cells["weight_decay"]
    ]
    acc_small = 1 - small["mean"].astype(float)
    reached = [b for b in sec.band if b.reached]
    n_eval = num(part.metrics.iloc[0], "n_eval")
    if reached and (acc_small < target).all():
        se = 0.5 / math.sqrt(n_eval) if finite(n_eval) and n_eval > 0 else float("nan")
        f.supports.append(
            f"weight decay decides whether it generalizes: at each variant's smallest wd no cell "
            f"reaches {100 * target:.0f}% test accuracy ({100 * acc_small.min():.0f}-"
            f"{100 * acc_small.max():.0f}%), while "
            + ", ".join(f"{b.variant} reaches it in {b.reached} of {b.cells} cells" for b in reached)
            + (f" (binomial SE at most {100 * se:.1f} points on {int(n_eval)} test samples)" if finite(se) else "")
            + "."
        )  # fmt: skip
    for b in sec.band:
        if finite(b.slope):
            f.open.append(
                f"{b.variant}: the lower edge of the grokking band has slope {signed(b.slope)} "
                f"over the {b.rows} lrs where it lies inside the grid (the invariant predicts "
                f"{signed(b.predicted)} by analogy); one seed gives no interval."
            )
    sec.findings.extend(f)


def true_slope(variant: str, lrs: np.ndarray, wd_range: tuple[float, float]) -> float:
    """The valley slope of :mod:`analysis.synthetic`'s noise-free surface over ``lrs`` and
    ``wd_range``: the best wd of each lr on a fine log grid, fitted log-log over the rows whose
    best lies inside the range and did not diverge."""
    from analysis.synthetic import surface

    opt, _, dec = variant.partition("/")
    wds = np.geomspace(wd_range[0], wd_range[1], 4001)
    pts_ = []
    for lr in lrs:
        err, div = surface(opt, dec, np.full_like(wds, lr), wds)
        err = np.where(div, np.inf, err)
        j = int(np.argmin(err))
        if np.isfinite(err[j]) and 0 < j < len(wds) - 1:
            pts_.append((np.log(lr), np.log(wds[j])))
    if len(pts_) < 2:
        return float("nan")
    x, y = np.array(pts_).T
    return float(np.polyfit(x, y, 1)[0])


@dataclass
class SyntheticRow:
    variant: str
    slope: str
    true: str
    verdict: str
    inside: bool


def load_synthetic(gallery: Path) -> list[SyntheticRow]:
    """The synthetic gallery: each variant's measured slope against the generator's."""
    root = gallery / "synthetic"
    m, cells = _read(root / "metrics.csv"), _read(root / "cells.csv")
    if m is None or cells is None:
        return []
    out = []
    for _, r in m.iterrows():
        g = cells[cells["variant"] == r["variant"]]
        if g.empty:
            continue
        truth = true_slope(
            str(r["variant"]),
            np.sort(g["lr"].unique()),
            (float(g["weight_decay"].min()), float(g["weight_decay"].max())),
        )
        sl = slope_of({**r.to_dict(), "predicted_slope": truth})
        if sl.agrees is None:
            verdict = "no interval"
        else:
            where = "inside" if sl.agrees else "outside"
            verdict = f"{where} the {sl.basis}"
        out.append(
            SyntheticRow(str(r["variant"]), sl.text, signed(truth), verdict, sl.agrees is True)
        )
    return out


# --------------------------------------------------------------------------------------------
# The page


def theory_table(variants: list[str]) -> list[dict]:
    """The prediction of each variant the galleries run (analysis.theory), families and decay
    forms in the registry's order."""
    from analysis.theory import prediction

    fams = [f for f in registry.names("optimizer") if any(v.startswith(f"{f}/") for v in variants)]
    decs = [d for d in registry.names("decay") if any(v.endswith(f"/{d}") for v in variants)]
    rows = []
    for fam in fams:
        for dec in decs:
            if f"{fam}/{dec}" not in variants:
                continue
            p = prediction(fam, dec)
            rows.append(
                {
                    "variant": f"{family_label(fam)} + `{dec}`",
                    "invariant": p.invariant,
                    "slope": signed(p.slope),
                    "angle": "predicted" if p.predicts_angle else f"not predicted: {p.reason}",
                }
            )
    return rows


def build(gallery: Path = GALLERY) -> dict:
    """Everything the template reads."""
    from analysis.theory import ANGLE_BAND

    sections = []
    for regime in REGIMES:
        sec = load_section(gallery, regime, ANGLE_BAND)
        if sec.present and regime.key == "grokking":
            load_grokking(gallery, sec)
        sections.append(sec)
    variants = list(
        dict.fromkeys(v for s in sections for p in s.parts for v in p.metrics["variant"])
    )
    from analysis import results_arms as arms

    timescale = arms.load_timescale(gallery)
    ladder = arms.load_ladder(gallery)
    collapse = arms.load_collapse(
        gallery,
        [(r, r.title) for r in REGIMES] + [(arms.LADDER, "Ladder"), (arms.TIMESCALE, "Timescale")],
    )
    return {
        "timescale": timescale,
        "ladder": ladder,
        "collapse": collapse,
        "collapse_tol": arms.COLLAPSE_TOL,
        "synthetic": load_synthetic(gallery),
        "sections": sections,
        "by_key": {s.regime.key: s for s in sections},
        "theory": theory_table(variants),
        "band": f"{100 * ANGLE_BAND:.0f}%",
    }


def render(gallery: Path = GALLERY) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["table"] = md_table
    env.filters["signed"] = signed
    text = env.get_template(TEMPLATE).render(**build(gallery))
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


def md_table(rows: list[list[str]]) -> str:
    """A markdown table from a header row and body rows."""
    if not rows:
        return ""
    head, body = rows[0], rows[1:]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.results_page", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--gallery", type=Path, default=GALLERY, help="the galleries' folder")
    ap.add_argument("--out", type=Path, default=OUT, help="the page to write")
    ap.add_argument("--check", action="store_true", help="exit 1 if the page is out of date")
    args = ap.parse_args(argv)
    if not args.gallery.is_dir():
        print(
            f"--gallery: {args.gallery} is not a folder; pass the galleries' folder",
            file=sys.stderr,
        )
        return 2
    try:
        text = render(args.gallery)
    except (OSError, ValueError, KeyError) as exc:
        print(f"--gallery {args.gallery}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        old = args.out.read_text() if args.out.is_file() else ""
        if old != text:
            print(
                f"{args.out} is out of date: run python -m analysis.results_page", file=sys.stderr
            )
            return 1
        print(f"{args.out} is up to date")
        return 0
    tmp = args.out.with_name(f".{args.out.name}.partial")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
