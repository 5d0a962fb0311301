"""The results page's sections on the experiments with arms, and on the collapse test.

- **Timescale** (``experiment=timescale_mnist1d``, gallery ``timescale``): each arm's decay rule
  ``wd* = C * lr^s`` against the predicted lr slope, the measured exponents of the best wd
  against the training-set size N and the training length (``timescale_exponents.csv``, written
  by ``python -m analysis.rule --tables``) against the timescale argument's prediction, and the
  held-out checks (lrs left out of each arm's rule, one N left out of the N exponent).
- **The scope ladder** (``experiment=scope_ladder_mnist1d``, gallery ``scope_ladder``): per rung,
  each variant's slope, transfer regret and wd gain with their intervals (``ladder.csv``), the
  share of the decayed parameters that are scale-invariant, and the rungs where the independent
  form's place in transfer regret changes.
- **Collapse**: for every gallery, how much of each variant's error surface its invariant alone
  explains (``collapse_r2_1d``) against a 2-D fit in (lr, wd) (``collapse_r2_2d``).

A verdict is *supports* / *contradicts* only where an interval decides it; the rest is *open*.
The collapse R^2 are leave-one-cell-out scores without a seed interval; the page compares them
with a stated tolerance (:data:`COLLAPSE_TOL`) and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.ladder import ladder_arms
from analysis.page_text import (
    INDEPENDENT,
    NA,
    Findings,
    Regime,
    _facts,
    _read,
    _yaml,
    finite,
    num,
    pts,
    sci,
    signed,
)

# the 1-D (invariant) fit "explains the surface" when its R^2 is within this of the 2-D fit's
COLLAPSE_TOL = 0.05

TIMESCALE = Regime("timescale", "timescale_mnist1d", "Timescale: the best wd against N and length")
LADDER = Regime(
    "scope_ladder", "scope_ladder_mnist1d", "The scope ladder: from scale-invariant to the control"
)
AXIS_WORDS = {"n_train": "training-set size N", "epochs": "training length (epochs)"}

__all__ = [
    "COLLAPSE_TOL",
    "LADDER",
    "TIMESCALE",
    "ArmSection",
    "CollapseSection",
    "load_collapse",
    "load_ladder",
    "load_timescale",
]


@dataclass
class ArmSection:
    """One gallery of an experiment with arms: its run, tables (header row first) and
    findings."""

    regime: Regime
    present: bool
    path: str = ""
    command: str = ""
    facts: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    seeds_text: str = ""
    tables: dict[str, list[list[str]]] = field(default_factory=dict)
    findings: Findings = field(default_factory=Findings)
    extra_commands: list[str] = field(default_factory=list)


def _iv(row: Any, col: str, fmt) -> str:
    """``value [lo, hi]`` from ``col``, ``col_lo``, ``col_hi``; the value alone without them."""
    v, lo, hi = num(row, col), num(row, f"{col}_lo"), num(row, f"{col}_hi")
    if not finite(v):
        return NA
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]" if finite(lo, hi) else fmt(v)


def _inside(value: float, lo: float, hi: float) -> bool | None:
    if not finite(value, lo, hi):
        return None
    return bool(lo <= value <= hi)


def _arm_of(experiment: str) -> str:
    return str(experiment).rpartition("-")[2]


def _arm_order(experiments) -> list[str]:
    found = ladder_arms(experiments)
    return list(found[1].values()) if found else sorted({str(e) for e in experiments})


def _base(gallery: Path, regime: Regime) -> tuple[ArmSection, pd.DataFrame | None]:
    root = gallery / regime.key
    metrics = _read(root / "metrics.csv")
    if metrics is None or metrics.empty:
        return ArmSection(regime, False), None
    sec = ArmSection(regime, True, path=f"gallery/{regime.key}")
    results = _read(root / "results.csv")
    cfg = _yaml(root / "config.yaml")
    sec.facts = _facts(sec, root, results, cfg)  # type: ignore[arg-type]
    arms = (cfg or {}).get("sweep", {}).get("arms") or {}
    if arms:
        sec.facts.append(
            "Arms (each its own studies, analysed on its own): "
            + "; ".join(f"`{k}`: {_flat(v)}" for k, v in arms.items())
            + " (on top of the base settings above)."
        )
    run = _yaml(root / "run.yaml") or {}
    sec.command = str(
        run.get("command") or f"python -m harness.sweep experiment={regime.experiment}"
    )
    seeds = pd.to_numeric(metrics.get("n_seeds"), errors="coerce")
    n = int(seeds.max()) if seeds is not None and seeds.notna().any() else 0
    sec.seeds_text = f"{n} seed" if n == 1 else f"{n} seeds"
    for name in ("ladder", "collapse"):
        if (root / f"{name}.png").is_file():
            sec.figures.append(f"{sec.path}/{name}.png")
    return sec, metrics


def _flat(d: Any) -> str:
    """``{model: {bn_affine: true}}`` -> ``model.bn_affine=true``."""
    return ", ".join(f"{k}={_scalar(v)}" for k, v in _overrides(d).items())


def _scalar(x: Any) -> str:
    if isinstance(x, bool):
        return str(x).lower()
    return str(x)


def _overrides(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_overrides(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# --------------------------------------------------------------------------------------------
# Timescale


def _arm_rules(root: Path, name: str) -> pd.DataFrame | None:
    """Every arm's ``decay_rule.csv`` (the root's, written by ``analysis.rule --tables``, else
    the arms' folders', written by ``analysis.figures``)."""
    rules = _read(root / f"{name}.csv")
    if rules is not None:
        return rules
    parts = [_read(p) for p in sorted(root.glob(f"*/{name}.csv"))]
    parts = [p for p in parts if p is not None and len(p)]
    return pd.concat(parts, ignore_index=True) if parts else None


def _rule_text(r: Any) -> str:
    if not finite(num(r, "s")):
        return NA
    c = _iv(r, "C", sci)
    s = _iv(r, "s", signed)
    return f"C = {c}, s = {s}"


def rule_table(rules: pd.DataFrame, order: list[str]) -> list[list[str]]:
    rows = [
        [
            "arm",
            "variant",
            "rule wd* = C lr^s",
            "predicted s",
            "s agrees",
            "lrs covered",
            "tau at the optimum (epochs)",
        ]
    ]
    rank = {e: i for i, e in enumerate(order)}
    rules = rules.assign(_k=rules["experiment"].map(rank)).sort_values("_k", kind="stable")
    for _, r in rules.iterrows():
        agree = _inside(num(r, "predicted_slope"), num(r, "s_lo"), num(r, "s_hi"))
        tau = num(r, "tau_epoch")
        tau_text = NA
        if finite(tau):
            tau_text = f"{tau:.3g}"
            if finite(num(r, "tau_epoch_min"), num(r, "tau_epoch_max")):
                tau_text += f" ({num(r, 'tau_epoch_min'):.3g}..{num(r, 'tau_epoch_max'):.3g})"
        rows.append(
            [
                _arm_of(r["experiment"]),
                str(r["variant"]),
                _rule_text(r),
                signed(num(r, "predicted_slope")) if finite(num(r, "predicted_slope")) else NA,
                {True: "yes", False: "no", None: NA}[agree],
                f"{sci(num(r, 'lr_min'))}..{sci(num(r, 'lr_max'))}"
                if finite(num(r, "lr_min"))
                else NA,
                tau_text,
            ]
        )
    return rows


def exponent_findings(exps: pd.DataFrame) -> Findings:
    """The measured exponents against the timescale argument's prediction."""
    out = Findings()
    for _, r in exps.iterrows():
        v, axis = str(r["variant"]), AXIS_WORDS.get(str(r["axis"]), str(r["axis"]))
        text = (
            f"{v}: the best wd against the {axis} ({r['values']}) has exponent "
            f"{_iv(r, 'exponent', signed)}"
        )
        pred = num(r, "predicted")
        if not finite(pred):
            out.open.append(f"{text}; the timescale argument predicts none for this form.")
            continue
        agree = _inside(pred, num(r, "exponent_lo"), num(r, "exponent_hi"))
        if agree is None:
            out.open.append(f"{text}, without an interval (predicted {signed(pred)}).")
        elif agree and num(r, "exponent_lo") <= 0 <= num(r, "exponent_hi"):
            out.open.append(
                f"{text}: the interval holds the predicted {signed(pred)} and also 0 (no "
                "dependence), so it decides nothing."
            )
        elif agree:
            out.supports.append(f"{text}: the predicted {signed(pred)} lies inside.")
        else:
            lo, hi = num(r, "exponent_lo"), num(r, "exponent_hi")
            if lo > 0:
                how = "the best wd grows with it instead of falling"
            else:
                how = f"the measured dependence is {'steeper' if hi < pred else 'flatter'} than predicted"
            out.contradicts.append(f"{text}: the predicted {signed(pred)} lies outside ({how}).")
    return out


def exponent_table(exps: pd.DataFrame) -> list[list[str]]:
    rows = [["variant", "axis", "values", "exponent [95%]", "predicted", "at lr", "held out"]]
    for _, r in exps.iterrows():
        rows.append(
            [
                str(r["variant"]),
                AXIS_WORDS.get(str(r["axis"]), str(r["axis"])),
                str(r["values"]),
                _iv(r, "exponent", signed),
                signed(num(r, "predicted")) if finite(num(r, "predicted")) else "none",
                sci(num(r, "lr_ref")),
                str(r["heldout"]) if isinstance(r["heldout"], str) and r["heldout"] else "",
            ]
        )
    return rows


def heldout_rows(held: pd.DataFrame, order: list[str]) -> list[list[str]]:
    rows = [
        ["arm", "variant", "held-out lr", "predicted wd", "found wd", "found / predicted [95%]"]
    ]
    rank = {e: i for i, e in enumerate(order)}
    held = held.assign(_k=held["experiment"].map(rank)).sort_values(["_k", "lr"], kind="stable")
    for _, r in held.iterrows():
        rows.append(
            [
                _arm_of(r["experiment"]),
                str(r["variant"]),
                sci(num(r, "lr")),
                sci(num(r, "predicted_wd")),
                sci(num(r, "found_wd")),
                _iv(r, "factor", lambda x: f"{x:.2f}"),
            ]
        )
    return rows


def heldout_findings(held: pd.DataFrame) -> Findings:
    """How often the rule fitted without an lr row predicts that row's best wd."""
    out = Findings()
    if held is None or held.empty:
        return out
    f = pd.to_numeric(held["factor"], errors="coerce").to_numpy(float)
    lo = pd.to_numeric(held["factor_lo"], errors="coerce").to_numpy(float)
    hi = pd.to_numeric(held["factor_hi"], errors="coerce").to_numpy(float)
    ok = np.isfinite(f) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        out.open.append("the held-out lrs have no interval on the found best wd.")
        return out
    hit = ok & (lo <= 1) & (hi >= 1)
    miss = ok & ~hit
    spread = np.exp(np.median(np.abs(np.log(f[ok]))))
    text = (
        f"the decay rule fitted without them predicts the best wd of {int(hit.sum())} of "
        f"{int(ok.sum())} held-out (arm, variant, lr) rows inside the found wd's interval; found "
        f"and predicted differ by a median factor of {spread:.2f}"
    )
    if miss.any():
        worst = held.loc[miss].iloc[np.argmax(np.abs(np.log(f[miss])))]
        text += (
            f", the worst {num(worst, 'factor'):.2f} [{num(worst, 'factor_lo'):.2f}, "
            f"{num(worst, 'factor_hi'):.2f}] ({_arm_of(worst['experiment'])} "
            f"{worst['variant']} at lr {sci(num(worst, 'lr'))})"
        )
    n = int(ok.sum())
    if 3 * int(miss.sum()) <= n:
        out.supports.append(text + ".")
    elif 2 * int(miss.sum()) >= n:
        out.contradicts.append(text + f": the rule misses {int(miss.sum())} of {n}.")
    else:
        out.open.append(text + ".")
    return out


def _add_heldout(sec: ArmSection, root: Path, order: list[str]) -> None:
    """The held-out lrs' table and verdict, from the arms' ``decay_rule_heldout.csv``."""
    held = _arm_rules(root, "decay_rule_heldout")
    if held is not None and len(held):
        sec.tables["heldout"] = heldout_rows(held, order)
        sec.findings.extend(heldout_findings(held))


def load_timescale(gallery: Path) -> ArmSection:
    sec, metrics = _base(gallery, TIMESCALE)
    if not sec.present or metrics is None:
        return sec
    root = gallery / TIMESCALE.key
    order = _arm_order(metrics["experiment"].unique())
    sec.extra_commands.append(
        f"python -m analysis.rule analysis/{sec.path}/results.csv --tables analysis/{sec.path}"
    )
    if "wd_gain_lo" in metrics:
        rank = {e: i for i, e in enumerate(order)}
        ordered = metrics.assign(_k=metrics["experiment"].map(rank)).sort_values(
            "_k", kind="stable"
        )
        sec.findings.extend(
            gain_findings(
                resolved_gains(ordered, "experiment"),
                "arm",
                "the best wd, and so every rule and exponent built on it,",
            )
        )
    rules = _arm_rules(root, "decay_rule")
    if rules is not None and len(rules):
        sec.tables["rules"] = rule_table(rules, order)
        fitted = rules[np.isfinite(pd.to_numeric(rules["s"], errors="coerce"))]
        agree = [
            _inside(num(r, "predicted_slope"), num(r, "s_lo"), num(r, "s_hi"))
            for _, r in fitted.iterrows()
        ]
        judged = [a for a in agree if a is not None]
        if judged:
            text = (
                f"the lr slope s of the decay rule: the prediction lies inside the interval in "
                f"{sum(judged)} of {len(judged)} (arm, variant) rules"
            )
            (
                sec.findings.supports
                if 2 * sum(judged) >= len(judged)
                else sec.findings.contradicts
            ).append(text + ".")
    exps = _read(root / "timescale_exponents.csv")
    if exps is not None and len(exps):
        sec.tables["exponents"] = exponent_table(exps)
        sec.findings.extend(exponent_findings(exps))
    elif exps is not None:
        sec.findings.open.append(
            "no exponent measured: fewer than two arms along N or length have a decay rule."
        )
    else:
        sec.findings.open.append(
            "no timescale_exponents.csv: run the analysis.rule --tables command of this section."
        )
    _add_heldout(sec, root, order)
    return sec


# --------------------------------------------------------------------------------------------
# The scope ladder


@dataclass
class Rung:
    rung: str
    change: str
    share: float
    order: list[tuple[str, float, float, float]]  # (variant, regret, lo, hi), lowest first


def _rung_changes(cfg: dict | None, rungs: list[str]) -> dict[str, str]:
    """Each rung's overrides that differ from the previous rung's, as ``key=value``."""
    arms = (cfg or {}).get("sweep", {}).get("arms") or {}
    out, prev = {}, None
    for r in rungs:
        cur = _overrides(arms.get(r, {}))
        if prev is None:
            out[r] = "the start: " + (", ".join(f"{k}={_scalar(v)}" for k, v in cur.items()) or "")
        else:
            diff = [f"{k}={_scalar(v)}" for k, v in cur.items() if prev.get(k) != v]
            diff += [f"{k} unset" for k in prev if k not in cur]
            out[r] = ", ".join(diff) or "no change"
        prev = cur
    return out


def ladder_rungs(lad: pd.DataFrame, changes: dict[str, str]) -> list[Rung]:
    rungs = []
    for rung, g in lad.groupby("rung", sort=False):
        g = g[np.isfinite(pd.to_numeric(g["transfer_regret"], errors="coerce"))]
        g = g.sort_values("transfer_regret", kind="stable")
        order = [
            (
                str(r["variant"]),
                num(r, "transfer_regret"),
                num(r, "transfer_regret_lo"),
                num(r, "transfer_regret_hi"),
            )
            for _, r in g.iterrows()
        ]
        share = pd.to_numeric(lad.loc[lad["rung"] == rung, "si_share"], errors="coerce").mean()
        rungs.append(Rung(str(rung), changes.get(str(rung), ""), float(share), order))
    return rungs


def _status(r: Rung) -> str:
    """The independent form's standing in the rung's transfer regret: ``best`` (lowest, its
    interval disjoint from every other form's), ``worse`` (some form's interval lies wholly
    below its own), ``unresolved`` (neither), or ``""`` without the numbers."""
    mine = [o for o in r.order if o[0].endswith(f"/{INDEPENDENT}")]
    others = [o for o in r.order if not o[0].endswith(f"/{INDEPENDENT}")]
    if not mine or not others or not all(finite(*o[2:]) for o in r.order):
        return ""
    _, _, lo, hi = mine[0]
    if any(o[3] < lo for o in others):
        return "worse"
    if all(o[2] > hi for o in others):
        return "best"
    return "unresolved"


def ladder_findings(rungs: list[Rung], gains: dict[str, list[str]] | None = None) -> Findings:
    """Per rung, the independent form against the others in transfer regret (judged by the
    intervals), the changes after which its standing turns, and where tuning wd buys anything
    resolved (``gains``: rung -> the variants whose wd gain is resolved above 0)."""
    out = Findings()
    if not rungs:
        return out
    text = {
        r.rung: f"rung {r.rung}: "
        + ", ".join(
            f"{v.rpartition('/')[2]} {pts(x)} [{pts(lo)}, {pts(hi)}]" for v, x, lo, hi in r.order
        )
        for r in rungs
    }
    status = {r.rung: _status(r) for r in rungs}
    best = [k for k, st in status.items() if st == "best"]
    worse = [k for k, st in status.items() if st == "worse"]
    rest = [k for k, st in status.items() if st not in ("best", "worse")]
    if best:
        out.supports.append(
            "easier to tune: the independent form has the lowest transfer regret, its interval "
            "disjoint from the others', at " + "; ".join(text[k] for k in best) + "."
        )
    if worse:
        out.contradicts.append(
            "easier to tune: another form loses less than the independent form when lr moves, "
            "with disjoint intervals, at " + "; ".join(text[k] for k in worse) + "."
        )
    if rest:
        out.open.append(
            "transfer regret does not separate the independent form from the others at "
            + "; ".join(text[k] for k in rest)
            + "."
        )
    turns = []
    for a, b in zip(rungs, rungs[1:]):
        sa, sb = status[a.rung], status[b.rung]
        if sa != sb and "worse" in (sa, sb) and "" not in (sa, sb):
            turns.append(
                f"from rung {a.rung} to rung {b.rung} ({b.change}; scale-invariant share of the "
                f"decayed parameters {_share(a.share)} -> {_share(b.share)}) it goes from "
                f"{sa} to {sb}"
            )
    if turns:
        out.open.append(
            "where the independent form's standing turns (best: lowest with disjoint intervals; "
            "worse: another form resolved below it): " + "; ".join(turns) + "."
        )
    if gains is not None:
        out.extend(gain_findings(gains, "rung", "the best wd, and so the transfer regret,"))
    return out


def resolved_gains(frame: pd.DataFrame, by: str) -> dict[str, list[str]]:
    """``{arm: [decay forms whose wd gain is resolved above 0]}``, arms in ``frame``'s order;
    ``by`` names the arm column (``rung`` in ladder.csv, ``experiment`` in metrics.csv)."""
    return {
        _arm_of(arm): [
            str(r["variant"]).rpartition("/")[2]
            for _, r in g.iterrows()
            if finite(num(r, "wd_gain_lo")) and num(r, "wd_gain_lo") > 0
        ]
        for arm, g in frame.groupby(by, sort=False)
    }


def gain_findings(gains: dict[str, list[str]], word: str, what: str) -> Findings:
    """Open: the arms where tuning the decay buys nothing resolved for any form, so that what
    is read off the best wd there (``what``) rests on cells that noise separates."""
    out = Findings()
    with_gain = [f"{word} {k} ({', '.join(v)})" for k, v in gains.items() if v]
    without = [k for k, v in gains.items() if not v]
    if without:
        out.open.append(
            f"tuning the decay buys nothing resolved above 0 for any form at {word}(s) "
            + ", ".join(without)
            + f": there {what} is mostly chosen among cells that noise separates"
            + (f"; the wd gain is resolved at {'; '.join(with_gain)}." if with_gain else ".")
        )
    return out


def _share(x: float) -> str:
    return f"{x:.2f}" if finite(x) else NA


def ladder_table_rows(lad: pd.DataFrame, changes: dict[str, str]) -> list[list[str]]:
    rows = [
        [
            "rung",
            "change",
            "scale-invariant share",
            "variant",
            "slope [95%]",
            "transfer, 1 lr step (points)",
            "wd gain (points)",
        ]
    ]
    last = None
    for _, r in lad.iterrows():
        first = r["rung"] != last
        last = r["rung"]
        rows.append(
            [
                str(r["rung"]) if first else "",
                changes.get(str(r["rung"]), "") if first else "",
                _share(num(r, "si_share")) if first else "",
                str(r["variant"]),
                _iv(r, "slope", signed),
                _iv(r, "transfer_regret", pts),
                _iv(r, "wd_gain", lambda x: pts(x, sign=True)),
            ]
        )
    return rows


def load_ladder(gallery: Path) -> ArmSection:
    sec, metrics = _base(gallery, LADDER)
    if not sec.present or metrics is None:
        return sec
    root = gallery / LADDER.key
    lad = _read(root / "ladder.csv")
    if lad is None or lad.empty:
        sec.findings.open.append("no ladder.csv: run the analysis.figures command of this section.")
        return sec
    rungs = list(dict.fromkeys(lad["rung"].astype(str)))
    lad["rung"] = lad["rung"].astype(str)
    changes = _rung_changes(_yaml(root / "config.yaml"), rungs)
    sec.tables["ladder"] = ladder_table_rows(lad, changes)
    gains = resolved_gains(lad, "rung")
    sec.findings.extend(ladder_findings(ladder_rungs(lad, changes), gains))
    order = _arm_order(metrics["experiment"].unique())
    _add_heldout(sec, root, order)
    return sec


# --------------------------------------------------------------------------------------------
# Collapse


@dataclass
class CollapseSection:
    present: bool
    table: list[list[str]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    findings: Findings = field(default_factory=Findings)


def _collapse_rows(label: str, m: pd.DataFrame) -> list[tuple[str, str, str, float, float, int]]:
    from analysis.theory import prediction

    out = []
    for _, r in m.iterrows():
        r1, r2 = num(r, "collapse_r2_1d"), num(r, "collapse_r2_2d")
        if not finite(r2):
            continue
        opt, _, dec = str(r["variant"]).partition("/")
        inv = prediction(opt, dec).invariant
        cells = int(num(r, "collapse_cells")) if finite(num(r, "collapse_cells")) else 0
        out.append((label, str(r["variant"]), inv, r1, r2, cells))
    return out


def load_collapse(gallery: Path, regimes: list[tuple[Regime, str]]) -> CollapseSection:
    """``regimes``: ``(regime, how the page names it)`` for every gallery to read."""
    rows = []
    figures = []
    for regime, title in regimes:
        root = gallery / regime.key
        m = _read(root / "metrics.csv")
        if m is None or m.empty or "collapse_r2_2d" not in m:
            continue
        keys = [k for k in ("experiment", "model") if k in m and m[k].nunique() > 1]
        if keys:
            for key, g in m.groupby(keys, sort=False):
                key = key if isinstance(key, tuple) else (key,)
                parts = [_arm_of(k) if c == "experiment" else str(k) for c, k in zip(keys, key)]
                rows += _collapse_rows(f"{title} ({' '.join(parts)})", g)
        else:
            rows += _collapse_rows(title, m)
        for p in [root / "collapse.png", *sorted(root.glob("*/collapse.png"))]:
            if (
                p.is_file()
                and len(figures) < 2
                and regime.key in ("scale_invariant", "hidden_decay")
            ):
                figures.append(f"gallery/{p.relative_to(gallery).as_posix()}")
    sec = CollapseSection(bool(rows), figures=figures)
    if not rows:
        return sec
    sec.table = [
        ["gallery", "variant", "invariant", "R^2 1-D (invariant)", "R^2 2-D (lr, wd)", "cells"]
    ]
    for label, v, inv, r1, r2, cells in rows:
        sec.table.append(
            [label, v, f"`{inv}`", f"{r1:.2f}" if finite(r1) else NA, f"{r2:.2f}", str(cells)]
        )
    sec.findings = collapse_findings(rows)
    return sec


def collapse_findings(rows) -> Findings:
    out = Findings()
    by: dict[str, tuple[list[str], list[str]]] = {}
    for label, v, _inv, r1, r2, _ in rows:
        if not finite(r1, r2):
            continue
        yes, no = by.setdefault(label, ([], []))
        item = f"{v} {r1:.2f} vs {r2:.2f}"
        (yes if r1 >= r2 - COLLAPSE_TOL else no).append(item)
    for label, (yes, no) in by.items():
        if yes:
            out.supports.append(
                f"{label}: the invariant alone explains the error surface as well as the 2-D fit "
                f"(leave-one-cell-out R^2 within {COLLAPSE_TOL}) for " + "; ".join(yes) + "."
            )
        if no:
            out.contradicts.append(
                f"{label}: the invariant alone explains clearly less than the 2-D fit for "
                + "; ".join(no)
                + ": the error depends on (lr, wd) through more than the invariant."
            )
    return out
