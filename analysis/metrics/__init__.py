"""How coupled is an optimizer's (lr, weight decay) pair, and how hard is it to tune? Numbers on
an lr x wd grid of seed trials, or on a surface fitted to scattered trials; docs/analysis.md has
every definition with its reasons. The package, by concern:

- :mod:`~analysis.metrics.selection`: choose on validation, score on test (cross-fit over
  held-out seeds where there are two or more); the noise model (pooled seed variance plus the
  evaluation binomial; ``noise_floor`` = 2 SE of the difference of two cell means); seed
  bootstrap intervals, :func:`seed_bootstrap` for any statistic;
- :mod:`~analysis.metrics.valley`: each lr row's best wd, the coupling slope over the rows whose
  wd gain is resolved, weighted by their precision; separability;
- :mod:`~analysis.metrics.regret`: normalized regret and near-optimal cells, random-search
  regret, transfer regret, the tuning cost per trial budget in a search box;
- :mod:`~analysis.metrics.surface`: scattered (random / TPE) trials, on a fitted surface;
- :mod:`~analysis.metrics.identity`: the decoupled / independent identity check;
- :mod:`~analysis.metrics.table`: every number of a variant in one pass, and the tables
  (metrics.csv, valley.csv, budget.csv, regret.csv);
- :mod:`~analysis.metrics.columns`: metrics.csv's and budget.csv's columns, declared once;
- :mod:`~analysis.metrics.options`: :class:`Options`, every choice of an analysis.
"""

from analysis.metrics.columns import (
    BUDGET_COLUMNS,
    IDENTITY_METRICS,
    METRICS_COLUMNS,
    REGRET_COLUMNS,
    THEORY_METRICS,
    VARIANT_COLUMNS,
    meaning,
)
from analysis.metrics.identity import IDENTITY_COLUMNS, identity_pairs, identity_table
from analysis.metrics.options import (
    BOOTSTRAP_REPS,
    MIN_SEEDS_FOR_INTERVAL,
    NEAR_OPTIMAL_TOL,
    Options,
    options,
)
from analysis.metrics.regret import (
    box_for,
    box_mask,
    expected_at_selection,
    halve_box,
    hit_probability,
    near_optimal_fraction,
    near_optimal_fraction_absolute,
    near_optimal_fraction_relative,
    near_optimal_mask,
    normalized_regret,
    random_search_regret,
    selection_weights,
    transfer_regret,
    trials_to_near_optimal,
    trials_to_within,
)
from analysis.metrics.selection import (
    MNIST1D_TEST_SIZE,
    Grids,
    Interval,
    Noise,
    cell_standard_error,
    crossfit,
    eval_size,
    infer_eval_size,
    noise_model,
    percentile_interval,
    resample_counts,
    resample_picks,
    seed_bootstrap,
    variant_grids,
)
from analysis.metrics.surface import (
    BANDWIDTHS,
    MIN_SURFACE_TRIALS,
    Surface,
    fit_surface,
    surface_slope_interval,
    variant_surface,
)
from analysis.metrics.table import (
    Tables,
    VariantResult,
    metrics_table,
    regret_seed_table,
    regret_table,
    surface_metrics,
    surface_valley_table,
    tables,
    valley_table,
    variant_metrics,
    variant_result,
)
from analysis.metrics.valley import (
    CHANCE_MARGIN,
    additive_fit,
    bootstrap_coupling_slope,
    chance_level,
    coupling_fit,
    coupling_slope,
    informative_lines,
    seed_slopes,
    separability,
    valley,
    valley_fit_rows,
    weighted_slope,
)

__all__ = [
    "BANDWIDTHS",
    "BOOTSTRAP_REPS",
    "BUDGET_COLUMNS",
    "CHANCE_MARGIN",
    "IDENTITY_COLUMNS",
    "IDENTITY_METRICS",
    "METRICS_COLUMNS",
    "MIN_SEEDS_FOR_INTERVAL",
    "MIN_SURFACE_TRIALS",
    "MNIST1D_TEST_SIZE",
    "NEAR_OPTIMAL_TOL",
    "REGRET_COLUMNS",
    "THEORY_METRICS",
    "VARIANT_COLUMNS",
    "Grids",
    "Interval",
    "Noise",
    "Options",
    "Surface",
    "Tables",
    "VariantResult",
    "additive_fit",
    "bootstrap_coupling_slope",
    "box_for",
    "box_mask",
    "cell_standard_error",
    "chance_level",
    "coupling_fit",
    "coupling_slope",
    "crossfit",
    "eval_size",
    "expected_at_selection",
    "fit_surface",
    "halve_box",
    "hit_probability",
    "identity_pairs",
    "identity_table",
    "infer_eval_size",
    "informative_lines",
    "meaning",
    "metrics_table",
    "near_optimal_fraction",
    "near_optimal_fraction_absolute",
    "near_optimal_fraction_relative",
    "near_optimal_mask",
    "noise_model",
    "normalized_regret",
    "options",
    "percentile_interval",
    "random_search_regret",
    "regret_seed_table",
    "regret_table",
    "resample_counts",
    "resample_picks",
    "seed_bootstrap",
    "seed_slopes",
    "selection_weights",
    "separability",
    "surface_metrics",
    "surface_slope_interval",
    "surface_valley_table",
    "tables",
    "transfer_regret",
    "trials_to_near_optimal",
    "trials_to_within",
    "valley",
    "valley_fit_rows",
    "valley_table",
    "variant_grids",
    "variant_metrics",
    "variant_result",
    "variant_surface",
    "weighted_slope",
]
