# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Figure 2 of Loshchilov & Hutter (ICLR 2019), from our sweep
#
# Test error over the initial learning rate x weight decay grid, one panel per optimizer
# variant: SGD above, Adam below; coupled L2 on the left, decoupled decay on the right. The ten
# best settings are circled (the best in red), hatched cells diverged, the red line is the best
# weight decay of each learning rate (the *valley*) and the dashed line its log-log fit, whose
# slope is the **coupling slope**: about -1 when the product lr x wd is what matters (coupled),
# about 0 when lr and wd can be tuned separately.
#
# Run it on any results: set `LRWD_RESULTS` (a results.csv, a sweep output directory, an Optuna
# storage URL or journal file; several separated by `;`) and `LRWD_FIGURES` (where to save), or
# edit the cell below. `jupytext --to ipynb analysis/notebooks/fig2_heatmaps.py` makes a notebook.

# %% tags=["parameters"]
import os

RESULTS = os.environ.get("LRWD_RESULTS", "outputs/quick")
FIGURES = os.environ.get("LRWD_FIGURES", "figures/notebook")
METRIC = os.environ.get("LRWD_METRIC", "test_error")  # or val_error
ANNOTATE = False  # print each cell's error (%) on the heatmap

# %%
from pathlib import Path

import matplotlib.pyplot as plt

from analysis import load_results, split_groups
from analysis.figures import analyze
from analysis.plots import heatmap_figure, valley_figure

trials = load_results([s for s in RESULTS.split(";") if s])
print(f"{len(trials)} COMPLETE trials, variants: {sorted(set(trials['variant']))}")
out = Path(FIGURES)
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# One figure per experiment (results of different experiments, models or data sets are never
# mixed on one colour scale).

# %%
analyses = [
    analyze(part, METRIC, reps=100, label=label) for label, part in split_groups(trials)
]
for a in analyses:
    fig = heatmap_figure(
        a.cells, a.metrics, metric_label=METRIC.replace("_", " "), annotate=ANNOTATE,
        title=a.label or None,
    )
    for ext in ("png", "pdf"):
        fig.savefig(out / f"heatmaps{'-' + a.label if a.label else ''}.{ext}", dpi=200)
    plt.show()

# %% [markdown]
# ## The valley: best weight decay against learning rate
#
# Filled markers are the learning rates the slope is fit over (rows whose best weight decay is
# inside the grid and whose best error beats the grid's median cell). The slope's 95% interval
# is a bootstrap over seeds with at least 5 seeds; with fewer, the per-seed slopes are listed.

# %%
for a in analyses:
    fig = valley_figure(a.valleys, a.metrics, title=a.label or None)
    fig.savefig(out / f"valley{'-' + a.label if a.label else ''}.png", dpi=200)
    plt.show()
    display_cols = ["variant", "best_error", "best_lr", "best_weight_decay", "coupling_slope",
                    "coupling_slope_lo", "coupling_slope_hi", "coupling_slope_seeds",
                    "valley_rows", "valley_interior"]
    print(a.metrics[display_cols].round(4).to_string(index=False))
