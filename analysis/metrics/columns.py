"""The columns of ``metrics.csv`` (one row per variant) and ``budget.csv``, declared once.

:data:`METRICS_COLUMNS` maps each column to one line of meaning, in the order of the file;
docs/analysis.md has the definitions with the reasons. The analysis fills every column of a
variant's row (nan where a number does not apply) and writes them in this order.
"""

from __future__ import annotations

# name -> meaning. Errors and gains are fractions (0.01 = 1 point).
_PER_VARIANT = {
    "variant": "optimizer/decay",
    "optimizer": "optimizer family",
    "decay": "decay form",
    "best_error": "test error (seed mean) at the cell chosen on the selection metric (the mean "
    "over cells tied on it)",
    "best_error_std": "seed standard deviation of the test error at that cell",
    "best_lr": "lr of the chosen cell",
    "best_weight_decay": "weight decay of the chosen cell",
    "best_error_smallest_wd": "test error at the cell chosen in the smallest-wd column (E_0)",
    "wd_gain": "what tuning the decay buys: E_0 minus the best, cross-fit over held-out seeds",
    "coupling_slope": "slope of log wd* against log lr over the rows whose wd gain is resolved",
    "coupling_slope_lo": "seed-bootstrap percentile interval of the slope, low end",
    "coupling_slope_hi": "seed-bootstrap percentile interval of the slope, high end",
    "valley_rows": "lr rows in the slope fit",
    "valley_interior": "every fitted row has its best wd inside the grid",
    "near_optimal_fraction": "share of cells with normalized regret <= tol (selection metric)",
    "separability": "R^2 of the additive lr + wd model over the live rows and columns",
    "trials_to_near_optimal": "least k random cells with P(a near-optimal one) >= 0.9",
    "diverged_fraction": "share of the variant's trials that diverged",
    "n_lr": "lr rows",
    "n_wd": "wd columns",
    "n_cells": "measured cells",
    "n_seeds": "seeds",
    "n_trials": "trials",
    "tol": "normalized-regret tolerance of near_optimal_fraction",
    "metric": "the reported error",
    "analysis_grid": "grid, surface (scattered trials) or none",
    "coupling_slope_interval": "how coupling_slope_lo/hi were obtained",
    "coupling_slope_seeds": "each seed's own slope, ';'-separated",
    "coupling_slope_seed_min": "least per-seed slope",
    "coupling_slope_seed_max": "largest per-seed slope",
    "coupling_slope_seed_n": "seeds with a slope",
    "near_optimal_cells": "cells with normalized regret <= tol",
    "near_optimal_fraction_abs": "share of cells within near_optimal_threshold of the best",
    "near_optimal_cells_abs": "cells within near_optimal_threshold of the best",
    "near_optimal_threshold": "max(abs_tol, noise floor of the selection metric)",
    "near_optimal_fraction_rel": "share of cells within rel_tol (relative) of the best",
    "rel_tol": "relative tolerance (nan unless asked for)",
    "wd_gain_resolved": "the wd gain's interval excludes 0 (below 3 seeds: gain > noise_floor)",
    "n_eval": "evaluation-set size behind the reported error",
    "n_eval_source": "given, inferred or default",
    "transfer_regret_1": "test error lost reusing one lr's best wd one lr step away (cross-fit)",
    "transfer_regret_1_norm": "transfer_regret_1 / wd_gain",
    "transfer_pairs_1": "ordered row pairs behind transfer_regret_1",
    "transfer_regret_2": "the same two lr steps away",
    "transfer_regret_2_norm": "transfer_regret_2 / wd_gain",
    "transfer_pairs_2": "ordered row pairs behind transfer_regret_2",
    "separability_all": "separability over every row and column",
    "separability_rows": "rows in the separability fit",
    "separability_cols": "columns in the separability fit",
    "chance": "chance-level error of the data set",
    # choose on validation, noise from the data, seed-bootstrap intervals
    "selection": "val (choose on the validation error, final_val_error or else val_error), "
    "val+crossfit (gains held out by seed), test",
    "best_val_error": "selection-metric error (seed mean) at the chosen cell",
    "best_error_lo": "seed-bootstrap interval of best_error, low end",
    "best_error_hi": "seed-bootstrap interval of best_error, high end",
    "noise_floor": "2 SE of the difference of two cell means of the reported error",
    "noise_seed_sd": "seed-to-seed standard deviation of one trial, pooled near the valley",
    "noise_eval_se": "binomial standard error of the evaluation set at the best error",
    "noise_cells": "cells the seed variance is pooled over",
    "noise_model": "what noise_floor contains",
    "noise_floor_selection": "noise_floor of the selection metric",
    "n_eval_selection": "evaluation-set size behind the selection metric",
    "wd_gain_lo": "seed-bootstrap interval of wd_gain, low end",
    "wd_gain_hi": "seed-bootstrap interval of wd_gain, high end",
    "wd_gain_in_sample": "E_0 minus the best on all seeds at once (selection-biased upward)",
    "interval": "how every _lo/_hi column was obtained",
    "transfer_regret_1_lo": "seed-bootstrap interval of transfer_regret_1, low end",
    "transfer_regret_1_hi": "seed-bootstrap interval of transfer_regret_1, high end",
    "transfer_regret_2_lo": "seed-bootstrap interval of transfer_regret_2, low end",
    "transfer_regret_2_hi": "seed-bootstrap interval of transfer_regret_2, high end",
    "near_optimal_fraction_lo": "seed-bootstrap interval of near_optimal_fraction, low end",
    "near_optimal_fraction_hi": "seed-bootstrap interval of near_optimal_fraction, high end",
    "coupling_intercept": "intercept c of log wd* = c + slope * log lr",
    "valley_weights": "how the rows of the slope fit are weighted",
    "valley_rows_left_out": "lr rows with a minimum left out of the fit (gain not resolved)",
    "trials_to_within_1pt": "least k random cells of the search box whose expected test error "
    "at the validation choice is within 1 point of best_error (nan: never)",
    "trials_to_within_1pt_half": "the same in the box halved (each axis's log-range around its "
    "centre)",
    "budget_cells": "cells in the search box",
    "budget_box": "the search box (lr and wd ranges), or 'grid' for the whole grid",
}

IDENTITY_METRICS = (
    "identity_cells", "identity_pairs", "identity_max_abs_diff", "identity_rms_diff",
    "identity_slope_diff", "identity_slope_diff_seed_min", "identity_slope_diff_seed_max",
)  # fmt: skip

THEORY_METRICS = (
    "predicted_slope", "slope_vs_predicted", "angle_ratio_median", "equilibrated_fraction",
)  # fmt: skip

#: Every column a variant's own numbers fill (before the identity and theory columns).
VARIANT_COLUMNS: tuple[str, ...] = tuple(_PER_VARIANT)

#: Every column of metrics.csv after ``experiment, model, data``, in order.
METRICS_COLUMNS: tuple[str, ...] = (*VARIANT_COLUMNS, *IDENTITY_METRICS, *THEORY_METRICS)

_MEANING = {
    **_PER_VARIANT,
    "identity_cells": "equivalent decoupled / independent cells",
    "identity_pairs": "equivalent cells x seeds",
    "identity_max_abs_diff": "largest per-seed difference between equivalent trials",
    "identity_rms_diff": "rms per-seed difference between equivalent trials",
    "identity_slope_diff": "slope(independent) - slope(decoupled), expected +1",
    "identity_slope_diff_seed_min": "least per-seed slope difference",
    "identity_slope_diff_seed_max": "largest per-seed slope difference",
    "predicted_slope": "the slope scale invariance predicts",
    "slope_vs_predicted": "coupling_slope - predicted_slope",
    "angle_ratio_median": "median measured / predicted angle per step (equilibrated trials)",
    "equilibrated_fraction": "share of trials whose norm equilibrated",
}

#: budget.csv: the expected test error at the validation-best of k random cells of a box.
BUDGET_COLUMNS: tuple[str, ...] = (
    "variant", "box", "k", "cells", "expected_error", "expected_error_lo", "expected_error_hi",
    "best_error", "box_lr_min", "box_lr_max", "box_wd_min", "box_wd_max",
)  # fmt: skip

REGRET_COLUMNS: tuple[str, ...] = (
    "variant", "k", "regret", "regret_normalized", "expected_best_error", "p_near_optimal",
)  # fmt: skip

REGRET_SEED_COLUMNS: tuple[str, ...] = ("variant", "seed", "k", "regret", "regret_normalized")


def meaning(column: str) -> str:
    """One line saying what a metrics.csv column holds (KeyError for an unknown column)."""
    return _MEANING[column]
