"""lrwd analysis: sweep results -> tidy frame -> coupling metrics -> the paper's Figure 2.

    from analysis import load_results, aggregate, metrics_table
    trials = load_results(["outputs/quick", "sqlite:///outputs/quick/study.db"])
    metrics = metrics_table(trials)          # one row per variant (docs/analysis.md)

Figures: :mod:`analysis.plots` (matplotlib Figures) and ``python -m analysis.figures``.
"""

from analysis.load import (
    RESULTS_COLUMNS,
    SourceError,
    aggregate,
    grid,
    is_grid,
    load_results,
    read_csv,
    read_optuna,
    read_wandb,
    seed_grids,
    snap_to_grid,
    split_groups,
    tidy,
    variants_in_order,
)
from analysis.metrics import (
    bootstrap_coupling_slope,
    coupling_slope,
    fit_surface,
    hit_probability,
    identity_table,
    metrics_table,
    near_optimal_fraction,
    near_optimal_fraction_absolute,
    near_optimal_fraction_relative,
    normalized_regret,
    random_search_regret,
    regret_seed_table,
    regret_table,
    seed_slopes,
    separability,
    transfer_regret,
    trials_to_near_optimal,
    valley,
    valley_table,
)

__all__ = [
    "RESULTS_COLUMNS",
    "SourceError",
    "aggregate",
    "bootstrap_coupling_slope",
    "coupling_slope",
    "fit_surface",
    "grid",
    "hit_probability",
    "identity_table",
    "is_grid",
    "load_results",
    "metrics_table",
    "near_optimal_fraction",
    "near_optimal_fraction_absolute",
    "near_optimal_fraction_relative",
    "normalized_regret",
    "random_search_regret",
    "read_csv",
    "read_optuna",
    "read_wandb",
    "regret_seed_table",
    "regret_table",
    "seed_grids",
    "seed_slopes",
    "separability",
    "snap_to_grid",
    "split_groups",
    "tidy",
    "transfer_regret",
    "trials_to_near_optimal",
    "valley",
    "valley_table",
    "variants_in_order",
]
