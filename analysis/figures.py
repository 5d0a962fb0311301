"""Every figure and table of an lr x weight-decay sweep, regenerated from data alone.

``python -m analysis.figures SOURCE... --out DIR`` where a SOURCE is a results.csv, a directory
(searched for results.csv files), an Optuna storage (``sqlite:///x.db``, ``postgresql://...``,
an ``.db`` or journal file; ``#study1,study2`` or ``--study`` picks studies) or a W&B export
(``wandb:entity/project[/group]``, a runs ``.json``). Writes into DIR:

- ``heatmaps.png/.pdf``: the paper's Figure 2 (:func:`analysis.plots.heatmap_figure`);
- ``regret.png/.pdf``: random-search regret and P(near-optimal) against k;
- ``valley.png/.pdf``: best wd against lr with the coupling slopes;
- ``metrics.csv`` (one row per variant), ``regret.csv`` (variant, k), ``valley.csv`` (best wd per
  lr) and ``cells.csv`` (mean/std/count per grid cell);

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
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.load import (
    SourceError,
    aggregate,
    is_grid,
    load_results,
    snap_to_grid,
    split_groups,
    variants_in_order,
)
from analysis.metrics import metrics_table, regret_table, valley_table

METRICS = ("test_error", "val_error", "final_val_error")


@dataclass
class Analysis:
    """Everything computed for one experiment: the tables the figures are drawn from."""

    label: str
    trials: pd.DataFrame
    cells: pd.DataFrame
    metrics: pd.DataFrame
    regret: pd.DataFrame
    valleys: pd.DataFrame
    metric: str
    tol: float


def analyze(
    frame: pd.DataFrame,
    metric: str = "test_error",
    tol: float = 0.10,
    reps: int = 200,
    seed: int = 0,
    refine: bool = True,
    separability_log: bool = False,
    label: str = "",
) -> Analysis:
    """Cells, metrics, regret and valley tables of one experiment's tidy frame."""
    if frame.empty:
        raise ValueError("frame: no COMPLETE trials to analyze")
    cells = aggregate(frame, metric)
    variants = variants_in_order(frame)
    metrics = metrics_table(
        frame,
        metric,
        variants,
        tol=tol,
        reps=reps,
        seed=seed,
        refine=refine,
        separability_log=separability_log,
    )
    for col in ("experiment", "model", "data"):
        metrics.insert(0, col, "/".join(sorted(set(frame[col].astype(str)))))
    return Analysis(
        label,
        frame,
        cells,
        metrics,
        regret_table(cells, variants, tol),
        valley_table(cells, variants, refine),
        metric,
        tol,
    )


def render(a: Analysis, annotate: bool = False, n_best: int = 10, cmap: str = "viridis") -> dict:
    """``{"heatmaps": Figure, "regret": Figure, "valley": Figure}`` for one analysis."""
    from analysis.plots import heatmap_figure, regret_figure, valley_figure

    label = a.metric.replace("_", " ")
    return {
        "heatmaps": heatmap_figure(
            a.cells,
            a.metrics,
            variants_in_order(a.cells),
            metric_label=label,
            n_best=n_best,
            annotate=annotate,
            cmap=cmap,
        ),
        "regret": regret_figure(a.regret, a.tol, metric_label=label),
        "valley": valley_figure(a.valleys, a.metrics),
    }


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
            a.valleys.to_csv(d / "valley.csv", index=False)
            for name, fig in render(a, annotate, n_best, cmap).items():
                for fmt in formats:
                    fig.savefig(d / f"{name}.{fmt}", dpi=dpi)
                plt.close(fig)
        if len(analyses) > 1 or analyses[0].label:
            pd.concat([a.metrics for a in analyses], ignore_index=True).to_csv(
                tmp / "metrics.csv", index=False
            )
        written = []
        for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
            dest = out / f.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
            written.append(dest)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_metrics(metrics: pd.DataFrame, title: str = "") -> None:
    """The metrics as a rich table (what ``metrics.csv`` holds, rounded)."""
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title or "easier to tune? one row per variant", title_justify="left")
    for col in (
        "variant",
        "best err",
        "best lr",
        "best wd",
        "wd gain",
        "coupling slope [95% CI]",
        "near-opt",
        "separab.",
        "k (90%)",
        "diverged",
        "cells x seeds",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for _, m in metrics.iterrows():
        ci = (
            ""
            if np.isnan(m.coupling_slope_lo)
            else (f" [{m.coupling_slope_lo:+.2f}, {m.coupling_slope_hi:+.2f}]")
        )
        err = f"{m.best_error:.4f}" + (f" ± {m.best_error_std:.4f}" if m.n_seeds > 1 else "")
        table.add_row(
            m.variant,
            err,
            f"{m.best_lr:.3g}",
            f"{m.best_weight_decay:.3g}",
            f"{m.wd_gain:+.4f}" if "wd_gain" in m else "-",
            f"{m.coupling_slope:+.2f}{ci}",
            f"{100 * m.near_optimal_fraction:.0f}%",
            f"{m.separability:.2f}",
            str(m.trials_to_near_optimal),
            f"{100 * m.diverged_fraction:.0f}%",
            f"{m.n_cells} x {m.n_seeds}",
        )
    Console(width=150).print(table)


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
        "--tol",
        type=float,
        default=0.10,
        help="near-optimal tolerance, relative to the best error (default: 0.10)",
    )
    ap.add_argument(
        "--bins",
        default="auto",
        metavar="auto|0|N|NxM",
        help="put sampled (random/TPE) trials on an N x M log grid; auto: 8x8 when the trials "
        "do not fill a grid, 0: never (default: auto)",
    )
    ap.add_argument("--n-best", type=int, default=10, help="cells to circle (default: 10)")
    ap.add_argument("--annotate", action="store_true", help="print each cell's error in %%")
    ap.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        metavar="B",
        help="seed resamples for the slope's 95%% CI (default: 200; 0 = none)",
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
        print(f"error: --tol {args.tol}: give a relative tolerance like 0.1", file=sys.stderr)
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
        bins = parse_bins(args.bins)
        if bins is None and not is_grid(frame):
            bins = (8, 8)
        if bins and bins != (0, 0):
            frame = snap_to_grid(frame, *bins)
            print(f"trials binned onto a {bins[0]} x {bins[1]} log grid (--bins)")
        analyses = [
            analyze(
                part,
                args.metric,
                args.tol,
                args.bootstrap,
                refine=not args.no_refine,
                separability_log=args.separability_log,
                label=label,
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
                f"{a.label or 'results'}: {len(a.trials)} trials, "
                f"{args.metric}, near-opt = within {100 * args.tol:.0f}% of the best",
            )
    print(f"wrote {len(written)} files to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
