"""Paper-style lr x weight-decay heatmaps and the "easier to tune" metrics, from data alone.

``python -m analysis.figures <results.csv | dir | storage URL | x.journal | wandb:e/p[/g]> ...
--out DIR`` writes ``heatmaps.png/.pdf`` (rows = optimizer family, columns = decay form, shared
colour scale, the ten best cells circled, diverged cells crossed, the valley of the best wd per
lr drawn), ``regret.png/.pdf``, ``metrics.csv``, ``regret.csv`` and ``cells.csv``, and prints the
metrics table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.load import (  # noqa: E402
    DECAY_ORDER,
    FAMILY_ORDER,
    SourceError,
    aggregate,
    grid,
    load_results,
    variants_in_order,
)
from analysis.metrics import all_metrics, best_wd_per_lr, regret_table  # noqa: E402

DECAY_TITLES = {
    "l2": "coupled L2: g += wd*w",
    "loss": "L2 in the loss",
    "decoupled": "decoupled: w *= 1 - lr_t*wd",
    "independent": "independent: w *= 1 - eta_t*wd",
}


def _tick(v: float) -> str:
    if v == 0:
        return "0"
    e = np.log10(v)
    if abs(e - round(e)) < 1e-6:
        return f"$10^{{{int(round(e))}}}$"
    e2 = np.log2(v)
    if abs(e2 - round(e2)) < 1e-6:
        return f"$2^{{{int(round(e2))}}}$"
    return f"{v:.1e}".replace("e-0", "e-")


def heatmaps(
    cells: pd.DataFrame,
    variants: list[str],
    out: Path,
    annotate: bool = False,
    n_best: int = 10,
    metric_label: str = "test error",
) -> list[Path]:
    families = [f for f in FAMILY_ORDER if any(v.startswith(f + "/") for v in variants)]
    families += sorted({v.split("/")[0] for v in variants} - set(families))
    decays = [d for d in DECAY_ORDER if any(v.endswith("/" + d) for v in variants)]
    decays += sorted({v.split("/")[1] for v in variants} - set(decays))
    nr, nc = len(families), len(decays)
    vals = cells["mean"].to_numpy(float)
    vmin = float(np.nanmin(vals))
    vmax = float(min(np.nanmax(vals), max(np.nanpercentile(vals, 90), vmin + 1e-3)))
    plt.rcParams.update({"font.size": 9, "axes.titlesize": 9})
    fig, axes = plt.subplots(
        nr, nc, figsize=(3.1 * nc + 0.9, 2.8 * nr + 0.4), squeeze=False, constrained_layout=True
    )
    im = None
    for r, fam in enumerate(families):
        for c, dec in enumerate(decays):
            ax = axes[r][c]
            v = f"{fam}/{dec}"
            if v not in variants:
                ax.set_axis_off()
                continue
            lrs, wds, E = grid(cells, v)
            _, _, D = grid(cells, v, value="diverged")
            # rows of the image = weight decay (y), columns = lr (x), like the paper
            im = ax.imshow(
                E.T,
                origin="lower",
                cmap="viridis_r",
                vmin=vmin,
                vmax=vmax,
                aspect="auto",
                interpolation="nearest",
            )
            ax.set_xticks(range(len(lrs)), [_tick(x) for x in lrs], rotation=45)
            ax.set_yticks(range(len(wds)), [_tick(x) for x in wds])
            ax.set_xlabel("initial learning rate")
            if c == 0:
                ax.set_ylabel(f"{fam.upper()}\nweight decay")
            ax.set_title(f"{fam.upper()}, {DECAY_TITLES.get(dec, dec)}")
            flat = np.where(np.isnan(E), np.inf, E).ravel()
            # the paper circles 10 of ~100 cells; on small grids circle at most a fifth
            k_best = min(n_best, max(1, int(np.isfinite(flat).sum()) // 5))
            order = np.argsort(flat)[:k_best]
            for k, idx in enumerate(order):
                i, j = np.unravel_index(idx, E.shape)
                ax.scatter(
                    i,
                    j,
                    s=150 if k == 0 else 90,
                    facecolors="none",
                    edgecolors="white" if k else "red",
                    linewidths=1.6 if k == 0 else 1.0,
                )
            di, dj = np.nonzero(np.nan_to_num(D) >= 0.5)
            ax.scatter(di, dj, marker="x", color="black", s=28, linewidths=1.0)
            xs, ys, _ = best_wd_per_lr(lrs, wds, E)
            if len(xs) >= 2:
                ix = [int(np.argmin(np.abs(lrs - x))) for x in xs]
                jy = [int(np.argmin(np.abs(wds - y))) for y in ys]
                ax.plot(ix, jy, color="red", lw=1.2, alpha=0.8)
            if annotate:
                for i in range(E.shape[0]):
                    for j in range(E.shape[1]):
                        if np.isfinite(E[i, j]):
                            ax.text(
                                i,
                                j,
                                f"{100 * E[i, j]:.0f}",
                                ha="center",
                                va="center",
                                fontsize=6,
                                color="white" if E[i, j] > (vmin + vmax) / 2 else "black",
                            )
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.8)
        cb.set_label(f"{metric_label} (mean over seeds)")
    fig.suptitle(
        "circles: 10 best settings (red: best); x: diverged; red line: best wd per lr", fontsize=8
    )
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "heatmaps.png", out / "heatmaps.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def regret_figure(regret: pd.DataFrame, out: Path) -> list[Path]:
    fig, ax = plt.subplots(figsize=(4.5, 3.2), constrained_layout=True)
    for v, g in regret.groupby("variant", sort=False):
        ax.plot(g["k"], g["regret"], label=v, lw=1.5)
    ax.set_xscale("log")
    ax.set_xlabel("random grid trials k")
    ax.set_ylabel("expected regret (test error)")
    ax.set_title("random-search regret on the grid")
    ax.legend(fontsize=7)
    paths = [out / "regret.png", out / "regret.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def print_metrics(metrics: pd.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="easier to tune? (per variant)")
    cols = [
        "variant",
        "best err",
        "best lr",
        "best wd",
        "err @ min wd",
        "coupling slope [95% CI]",
        "near-opt frac",
        "separability",
    ]
    for col in cols:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for _, m in metrics.iterrows():
        ci = (
            ""
            if np.isnan(m.coupling_slope_lo)
            else f" [{m.coupling_slope_lo:.2f}, {m.coupling_slope_hi:.2f}]"
        )
        table.add_row(
            m.variant,
            f"{m.best_error:.4f}",
            f"{m.best_lr:.3g}",
            f"{m.best_weight_decay:.3g}",
            f"{m.best_error_smallest_wd:.4f}",
            f"{m.coupling_slope:.2f}{ci}",
            f"{m.near_optimal_fraction:.2f}",
            f"{m.separability:.2f}",
        )
    Console(width=140).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m analysis.figures",
        description="Heatmaps (PNG+PDF), regret curves and metrics.csv from sweep results.",
    )
    ap.add_argument(
        "sources",
        nargs="+",
        help="results.csv, a directory, an Optuna storage URL "
        "(sqlite:///..., postgresql://...#study), a .journal file or wandb:entity/project[/group]",
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--metric", default="test_error", choices=["test_error", "val_error"])
    ap.add_argument("--tol", type=float, default=0.10, help="near-optimal tolerance (relative)")
    ap.add_argument("--annotate", action="store_true", help="print each cell's error (%%)")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples over seeds")
    args = ap.parse_args(argv)
    try:
        frame = load_results(args.sources)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if frame.empty:
        print("error: no COMPLETE trials in the given sources", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = aggregate(frame, args.metric)
    variants = variants_in_order(frame)
    metrics = all_metrics(
        frame, cells, variants, metric=args.metric, tol=args.tol, reps=args.bootstrap
    )
    regret = regret_table(cells, variants)
    cells.to_csv(out / "cells.csv", index=False)
    metrics.to_csv(out / "metrics.csv", index=False)
    regret.to_csv(out / "regret.csv", index=False)
    label = args.metric.replace("_", " ")
    heatmaps(cells, variants, out, annotate=args.annotate, metric_label=label)
    regret_figure(regret, out)
    print_metrics(metrics)
    print(f"figures and metrics in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
