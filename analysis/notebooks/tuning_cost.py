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
# # How much easier is a decoupled optimizer to tune?
#
# The numbers per variant (definitions in docs/analysis.md):
#
# - **near-optimal fraction**: the share of grid cells whose normalized regret
#   (E - best) / (E at the smallest wd - best) is at most `tol` (0.25), and the share within two
#   binomial standard errors of a cell mean of the best;
# - **transfer regret**: the points lost by reusing one lr's best wd at the next lr (and two
#   steps away): what retuning costs when the lr changes;
# - **separability**: R^2 of the additive model f(lr) + g(wd) over the informative rows and
#   columns (1 = tune lr and wd one at a time);
# - **random-search regret**: the expected best error of k random grid cells minus the best,
#   exact from the grid, in points and normalized by what decay buys, one band over the seeds.
#
# Parameters as in `fig2_heatmaps.py`: `LRWD_RESULTS`, `LRWD_FIGURES`.

# %% tags=["parameters"]
import os

RESULTS = os.environ.get("LRWD_RESULTS", "outputs/quick")
FIGURES = os.environ.get("LRWD_FIGURES", "figures/notebook")
METRIC = os.environ.get("LRWD_METRIC", "test_error")
TOL = 0.25  # normalized regret

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis import aggregate, grid, load_results, near_optimal_fraction, split_groups
from analysis.figures import analyze, print_metrics
from analysis.plots import regret_figure, variant_title

trials = load_results([s for s in RESULTS.split(";") if s])
out = Path(FIGURES)
out.mkdir(parents=True, exist_ok=True)
analyses = [
    analyze(part, METRIC, tol=TOL, reps=100, label=label) for label, part in split_groups(trials)
]
for a in analyses:
    print_metrics(a.metrics, a.label or "all results")

# %% [markdown]
# ## Random search on the grid

# %%
for a in analyses:
    fig = regret_figure(a.regret, TOL, metric_label=METRIC.replace("_", " "), title=a.label or None,
                        seeds=a.regret_seeds)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"regret{'-' + a.label if a.label else ''}.{ext}", dpi=200)
    plt.show()

# %% [markdown]
# ## How the near-optimal fraction depends on the tolerance
#
# A wider basin keeps more cells near the best as the normalized-regret tolerance grows; the
# curve shows whether the conclusion hinges on the 0.25 default. The transfer regret and the
# identity check (equivalent decoupled / independent cells) follow.

# %%
tols = np.linspace(0.0, 1.0, 51)
for a in analyses:
    cells = aggregate(a.trials, METRIC)
    fig, ax = plt.subplots(figsize=(4.2, 2.8), layout="constrained")
    rows = []
    for v in a.metrics["variant"]:
        _, _, E = grid(cells, v)
        frac = [near_optimal_fraction(E, t) for t in tols]
        ax.plot(100 * tols, frac, label=variant_title(v))
        rows.append({"variant": v, **{f"tol={t:.2f}": near_optimal_fraction(E, t)
                                      for t in (0.1, 0.25, 0.5, 1.0)}})
    ax.set_xlabel("tolerance (normalized regret, % of what decay buys)")
    ax.set_ylabel("near-optimal fraction of the grid")
    ax.legend(fontsize=7, frameon=False)
    fig.savefig(out / f"near_optimal{'-' + a.label if a.label else ''}.png", dpi=200)
    plt.show()
    print(pd.DataFrame(rows).round(3).to_string(index=False))

    cols = ["variant", "wd_gain", "transfer_regret_1", "transfer_regret_2",
            "transfer_regret_1_norm", "separability", "separability_all"]
    print(a.metrics[cols].round(4).to_string(index=False))
    if len(a.identity):
        print(a.identity.groupby("optimizer")["difference"].describe().round(4).to_string())
