"""The scope ladder: each variant's numbers across the arms of one sweep, rung by rung.

A sweep with ``sweep.arms`` writes each arm as its own experiment ``<name>-<rung>`` (for
example ``scope_ladder_mnist1d-a`` .. ``-f``, from the scale-invariant regime to the control
where every parameter decays). :func:`ladder_table` collects, per (rung, variant), the numbers
the metrics package already computes for each experiment (:func:`analysis.metrics.tables`):

- ``slope`` = ``coupling_slope`` with its seed-bootstrap interval;
- ``transfer_regret`` = ``transfer_regret_1`` (test error lost reusing one lr's best wd one lr
  step away, cross-fit) with its interval;
- ``wd_gain`` (what tuning the decay buys) with its interval;

and ``si_share``: the share of the decayed parameters that are scale-invariant, the mean over
the rung's trials of ``decayed_si_numel / decayed_numel`` (NaN when the results have no such
columns, or the detector did not run). :func:`ladder_figure` draws the three numbers against
the rung, one line per variant with interval bars, the share printed under each rung.

``python -m analysis.figures`` writes ``ladder.csv`` and ``ladder.png/.pdf`` beside its
``metrics.csv`` when the results hold the arms of one experiment; ``python -m analysis.ladder
SOURCE... --out DIR`` writes only these.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.load import SourceError, load_results, variants_in_order
from analysis.metrics import BOOTSTRAP_REPS, Options, tables

# ladder.csv's column -> the metrics.csv column it takes (with its _lo / _hi)
QUANTITIES = {
    "slope": "coupling_slope",
    "transfer_regret": "transfer_regret_1",
    "wd_gain": "wd_gain",
}
LABELS = {
    "slope": "coupling slope  d log wd* / d log lr",
    "transfer_regret": "transfer regret, one lr step (points)",
    "wd_gain": "wd gain (points)",
}
POINTS = ("transfer_regret", "wd_gain")  # errors: drawn in points (x 100)
LADDER_COLUMNS: tuple[str, ...] = (
    "ladder",
    "rung",
    "experiment",
    "variant",
    *(f"{q}{end}" for q in QUANTITIES for end in ("", "_lo", "_hi")),
    "si_share",
    "decayed_numel",
    "decayed_si_numel",
    "trials",
)
_ARM = re.compile(r"^(?P<name>.+)-(?P<rung>[^-]+)$")

__all__ = [
    "LADDER_COLUMNS",
    "ladder_arms",
    "ladder_figure",
    "ladder_metrics",
    "ladder_table",
    "main",
    "si_share",
    "write_ladder",
]


def _natural(text: str) -> list:
    """Sort key: ``e80`` before ``e160``, ``a`` before ``b``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def ladder_arms(experiments: Iterable[str]) -> tuple[str, dict[str, str]] | None:
    """``(name, {rung: experiment})`` when every experiment is an arm ``<name>-<rung>`` of one
    experiment ``name`` and there are two rungs or more (rungs in natural order: ``a`` .. ``f``,
    ``e80`` before ``e160``); else None."""
    exps = sorted({str(e) for e in experiments}, key=lambda e: _natural(e.rpartition("-")[2]))
    found = [_ARM.match(e) for e in exps]
    if len(exps) < 2 or not all(found):
        return None
    names = {m.group("name") for m in found if m}
    if len(names) != 1:
        return None
    return names.pop(), {m.group("rung"): m.string for m in found if m}


def si_share(trials: pd.DataFrame) -> tuple[float, float, float]:
    """``(share, decayed_numel, decayed_si_numel)``: the mean over ``trials`` of
    ``decayed_si_numel / decayed_numel`` and the mean counts; NaN where the columns are
    missing or hold no number."""
    if not {"decayed_numel", "decayed_si_numel"} <= set(trials.columns) or trials.empty:
        return np.nan, np.nan, np.nan
    total = pd.to_numeric(trials["decayed_numel"], errors="coerce").to_numpy(float)
    si = pd.to_numeric(trials["decayed_si_numel"], errors="coerce").to_numpy(float)
    ok = np.isfinite(total) & np.isfinite(si) & (total > 0)
    if not ok.any():
        return np.nan, float(np.nanmean(total)) if np.isfinite(total).any() else np.nan, np.nan
    return float(np.mean(si[ok] / total[ok])), float(np.mean(total[ok])), float(np.mean(si[ok]))


def ladder_table(metrics: pd.DataFrame, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """``ladder.csv``: one row per (rung, variant) of the arms of one experiment
    (:data:`LADDER_COLUMNS`). ``metrics``: metrics.csv rows of every arm (an ``experiment``
    column and the metrics package's columns); ``trials``: the tidy results of the arms, for
    the scale-invariant share (None: NaN). Empty when the experiments are not the arms of one
    experiment."""
    arms = ladder_arms(metrics["experiment"]) if "experiment" in metrics else None
    if arms is None:
        return pd.DataFrame(columns=list(LADDER_COLUMNS))
    name, rungs = arms
    rows = []
    for rung, exp in rungs.items():
        part = metrics[metrics["experiment"] == exp]
        mine = trials[trials["experiment"] == exp] if trials is not None else pd.DataFrame()
        share, total, si = si_share(mine)
        for _, m in part.iterrows():
            row = {"ladder": name, "rung": rung, "experiment": exp, "variant": m["variant"]}
            for q, col in QUANTITIES.items():
                for end in ("", "_lo", "_hi"):
                    row[f"{q}{end}"] = float(pd.to_numeric(m.get(f"{col}{end}"), errors="coerce"))
            n = pd.to_numeric(m.get("n_trials"), errors="coerce")
            row.update(si_share=share, decayed_numel=total, decayed_si_numel=si, trials=n)
            rows.append(row)
    return pd.DataFrame(rows, columns=list(LADDER_COLUMNS))


def ladder_metrics(frame: pd.DataFrame, opts: Options | None = None) -> pd.DataFrame:
    """metrics.csv rows (with ``experiment``) of each experiment of a tidy frame, computed by
    :func:`analysis.metrics.tables` one experiment at a time."""
    parts = []
    for exp, part in frame.groupby("experiment", sort=True):
        m = tables(part, opts, variants_in_order(part)).metrics
        m.insert(0, "experiment", exp)
        parts.append(m)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def ladder_figure(table: pd.DataFrame):
    """Slope, transfer regret and wd gain against the rung (three panels), one line per variant
    with its interval as bars; under each rung the share of decayed parameters that are
    scale-invariant."""
    import matplotlib.pyplot as plt

    from analysis.plots import STYLE, _legend_below, _variant_style

    rungs = list(dict.fromkeys(table["rung"]))  # ladder_table's order
    x = np.arange(len(rungs))
    share = table.groupby("rung")["si_share"].first().reindex(rungs).to_numpy(float)
    ticks = [
        f"{r}\n{'n/a' if not np.isfinite(s) else f'{100 * s:.0f}%'}" for r, s in zip(rungs, share)
    ]
    variants = list(dict.fromkeys(table["variant"]))
    offsets = np.linspace(-0.12, 0.12, len(variants)) if len(variants) > 1 else [0.0]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 3, figsize=(9.5, 3.4), layout="constrained")
        handles = []
        for k, (ax, q) in enumerate(zip(axes, QUANTITIES)):
            scale = 100.0 if q in POINTS else 1.0
            for v, dx in zip(variants, offsets):
                sub = table[table["variant"] == v].set_index("rung").reindex(rungs)
                y = sub[q].to_numpy(float) * scale
                lo = sub[f"{q}_lo"].to_numpy(float) * scale
                hi = sub[f"{q}_hi"].to_numpy(float) * scale
                err = np.vstack([np.where(np.isfinite(lo), y - lo, 0.0)])
                err = np.vstack([err, np.where(np.isfinite(hi), hi - y, 0.0)])
                style = _variant_style(v)
                h = ax.errorbar(
                    x + dx, y, yerr=np.clip(err, 0.0, None), marker="o", ms=3.5, lw=1.2,
                    capsize=2, color=style["color"], ls=style["ls"], label=style["label"],
                )  # fmt: skip
                if k == 0:
                    handles.append(h)
            if q != "slope":
                ax.axhline(0.0, color="#999999", lw=0.6, zorder=0)
            ax.set_xticks(x, ticks)
            ax.set_xlim(-0.5, len(rungs) - 0.5)
            ax.set_title(LABELS[q])
            ax.grid(axis="y", lw=0.3, alpha=0.5)
        axes[0].set_xlabel("rung\nscale-invariant share of decayed elements", fontsize=7)
        name = table["ladder"].iloc[0] if len(table) else ""
        fig.suptitle(f"{name}: the ladder of rungs {', '.join(rungs)}")
        _legend_below(fig, handles)
    return fig


def write_ladder(
    table: pd.DataFrame, out: str | Path, formats: tuple[str, ...] = ("png",), dpi: int = 170
) -> list[Path]:
    """Write ``ladder.csv`` and ``ladder.<fmt>`` for each of ``formats`` into ``out`` (each
    file written whole and then moved into place); nothing for an empty table."""
    import matplotlib.pyplot as plt

    if table.empty:
        return []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "ladder.csv"
    tmp = out / f".ladder-{os.getpid()}.csv"
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
    written.append(path)
    fig = ladder_figure(table)
    try:
        for fmt in formats:
            path = out / f"ladder.{fmt}"
            tmp = out / f".ladder-{os.getpid()}.{fmt}"
            fig.savefig(tmp, dpi=dpi, format=fmt)
            os.replace(tmp, path)
            written.append(path)
    finally:
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.ladder",
        description="ladder.csv and ladder.png: each variant's slope, transfer regret and wd gain "
        "across the arms <name>-<rung> of one experiment, and the share of decayed parameters "
        "that are scale-invariant per rung.",
    )
    ap.add_argument("sources", nargs="+", help="results.csv files, directories or storages")
    ap.add_argument("--out", required=True, help="directory for ladder.csv and ladder.png")
    ap.add_argument("--formats", default="png", help="png, pdf and/or svg, comma-separated")
    ap.add_argument("--bootstrap", type=int, default=BOOTSTRAP_REPS, help="seed resamples")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    formats = tuple(f.strip().lstrip(".") for f in args.formats.split(",") if f.strip())
    try:
        if not formats or any(f not in ("png", "pdf", "svg") for f in formats):
            raise ValueError(f"--formats {args.formats}: use png, pdf and/or svg")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            frame = load_results(args.sources)
        arms = ladder_arms(frame["experiment"])
        if arms is None:
            have = ", ".join(sorted(set(frame["experiment"]))) or "none"
            raise ValueError(
                f"{' '.join(args.sources)}: not the arms <name>-<rung> of one experiment "
                f"(experiments: {have})"
            )
        table = ladder_table(ladder_metrics(frame, Options(reps=args.bootstrap)), frame)
        written = write_ladder(table, args.out, formats)
    except (SourceError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    name, rungs = arms
    print(f"{name}: rungs {', '.join(rungs)}; {len(table)} rows")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
