"""Numbers as text and the shared pieces of the results page's sections: formatting (points,
slopes, grid values, durations), the findings lists, reading a gallery's tables, and the run's
facts (command, time, machine, task) from ``run.yaml``, ``results.csv`` and ``config.yaml``.
Used by :mod:`analysis.results_page` and :mod:`analysis.results_arms`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

NA = "n/a"


INDEPENDENT = "independent"  # the paper's form, whose claims the page tests


@dataclass(frozen=True)
class Regime:
    """One gallery folder and how the page names it."""

    key: str  # folder under the gallery
    experiment: str  # the preset that produced it
    title: str


def num(row: Any, col: str) -> float:
    """``row[col]`` as a float; nan when the column is missing or not a number."""
    try:
        value = row[col] if col in row else np.nan
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def finite(*xs: float) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def pct(x: float, digits: int = 2) -> str:
    """An error rate as a percentage: ``52.08%``."""
    return f"{100 * x:.{digits}f}%" if finite(x) else NA


def pts(x: float, digits: int = 2, sign: bool = False) -> str:
    """A difference of error rates in points: ``1.49`` (``+1.49`` with ``sign``)."""
    if not finite(x):
        return NA
    text = f"{100 * x:+.{digits}f}"
    if float(text) == 0:
        text = "+" + text[1:]  # no -0.00
    return text if sign else text.lstrip("+")


def signed(x: float, digits: int = 2) -> str:
    """A slope: ``-1.01``, ``+0.44``; ``0`` stays ``0`` for whole numbers."""
    if not finite(x):
        return NA
    if x == int(x) and abs(x) < 100:
        return f"{int(x):+d}" if x else "0"
    text = f"{x:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


def sci(x: float) -> str:
    """A grid value: ``0.1``, ``3.6e-3``, ``1e5``."""
    if not finite(x):
        return NA
    if x == 0:
        return "0"
    if 1e-2 <= abs(x) < 1e3:
        return f"{x:.3g}"
    mant, exp = f"{x:.1e}".split("e")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{int(exp)}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def duration(seconds: float) -> str:
    if not finite(seconds):
        return NA
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


@dataclass
class Findings:
    supports: list[str] = field(default_factory=list)
    contradicts: list[str] = field(default_factory=list)
    open: list[str] = field(default_factory=list)

    def extend(self, other: Findings) -> None:
        self.supports += other.supports
        self.contradicts += other.contradicts
        self.open += other.open


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def _yaml(path: Path) -> dict | None:
    if not path.is_file():
        return None
    import yaml

    return yaml.safe_load(path.read_text())


def _dig(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _range_text(values: pd.Series, fmt) -> str:
    v = values.dropna().unique()
    if len(v) == 0:
        return NA
    lo, hi = float(np.min(v)), float(np.max(v))
    return fmt(lo) if lo == hi else f"{fmt(lo)}..{fmt(hi)}"


def _facts(sec: Any, root: Path, results: pd.DataFrame | None, cfg: dict | None) -> list[str]:
    """The run: command, time, machine (run.yaml), task and grid (results.csv, config.yaml)."""
    facts = []
    run = _yaml(root / "run.yaml")
    if run:
        when = " ".join(str(run[k]) for k in ("date",) if run.get(k))
        wall = duration(float(run["wall_s"])) if finite(_float(run.get("wall_s"))) else NA
        text = f"Wall time {wall}"
        if finite(_float(run.get("cpu_s"))):
            text += f" ({duration(float(run['cpu_s']))} CPU)"
        text += f" on {run.get('machine', 'an unrecorded machine')}"
        facts.append(text + (f", {when}" if when else "") + ".")
        if run.get("note"):
            facts.append(str(run["note"]))
    else:
        facts.append("Wall time and machine: not recorded (no run.yaml in the gallery folder).")
    if results is not None and len(results):
        n_trials = len(results)
        seeds = results["seed"].nunique() if "seed" in results else 0
        steps = NA
        if "steps" in results:
            alive = results
            if "diverged" in results:
                alive = results[results["diverged"].astype(str).str.lower() != "true"]
            steps = _range_text(alive["steps"], lambda x: f"{int(x):,}")
        facts.append(
            f"{n_trials:,} trials, {plural(seeds, 'seed')} per cell, {steps} steps per trial "
            "(diverged trials stop early)."
        )
        grids = []
        for (fam, dec), g in results.groupby(["optimizer", "decay"], sort=False):
            grids.append(
                f"{fam}/{dec}: lr {sci(g['lr'].min())}..{sci(g['lr'].max())} "
                f"({g['lr'].nunique()} values), wd {sci(g['weight_decay'].min())}.."
                f"{sci(g['weight_decay'].max())} ({g['weight_decay'].nunique()} values)"
            )
        facts.append("Grids: " + "; ".join(grids) + ".")
    if cfg:
        d, t, mdl = cfg.get("data", {}), cfg.get("train", {}), cfg.get("model", {})
        sched = _dig(cfg, "schedule", "name")
        groups = _dig(cfg, "optimizer", "param_groups")
        train = (
            f"{d.get('n_train')} training samples"
            if d.get("n_train")
            else f"a {d.get('train_fraction')} share of the samples for training"
        )
        task = (
            f"Task `{d.get('name')}`: {train}, "
            f"{d.get('val_size')} for validation, batch {d.get('batch_size')}, "
            f"{t.get('epochs')} epochs"
            + (f" (at most {t.get('max_steps')} steps)" if t.get("max_steps") else "")
            + f", `{sched}` schedule. Model `{mdl.get('name')}` (width {mdl.get('width')}, "
            f"depth {mdl.get('depth')}"
            + (", BatchNorm without gain and shift" if mdl.get("bn_affine") is False else "")
            + (", frozen classifier" if mdl.get("frozen_head") else "")
            + f"); decayed parameters: `param_groups={groups}`."
        )
        facts.append(task)
    return facts
