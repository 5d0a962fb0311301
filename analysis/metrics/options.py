"""How an analysis is run: every choice in one dataclass, passed through unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

NEAR_OPTIMAL_TOL = 0.25  # normalized regret
BOOTSTRAP_REPS = 2000  # seed resamples of every interval
MIN_SEEDS_FOR_INTERVAL = 3  # below: per-seed ranges only
WITHIN = 0.01  # trials_to_within_1pt: one point of error


@dataclass(frozen=True)
class Options:
    """The choices behind one analysis (docs/analysis.md says what each changes).

    ``metric`` is the reported error, ``selection`` the error every choice is made on (the best
    cell, each row's best wd, transfer sources, near-optimal sets); when ``selection`` is not in
    the data (or equals ``metric``) choices fall back to ``metric`` and the ``selection`` column
    says so. ``reps`` seed resamples (fixed RNG ``seed``) give every interval at ``level``.
    ``boxes`` maps a variant key (optimizer, decay or optimizer/decay, the most specific wins)
    to its search box ``{"lr": [min, max], "weight_decay": [min, max]}`` for the tuning-cost
    curve; a variant without one uses its whole grid.
    """

    metric: str = "test_error"
    selection: str = "final_val_error"
    tol: float = NEAR_OPTIMAL_TOL
    reps: int = BOOTSTRAP_REPS
    seed: int = 0
    level: float = 0.95
    refine: bool = True
    separability_log: bool = False
    rel_tol: float | None = None
    abs_tol: float = 0.0
    n_eval: int | None = None
    chance: float | None = None
    boxes: dict[str, Any] = field(default_factory=dict)
    within: float = WITHIN
    min_seeds: int = MIN_SEEDS_FOR_INTERVAL
    # the evaluation-set size's source when n_eval was settled for a whole table
    n_eval_source: str | None = None

    def with_(self, **changes: Any) -> Options:
        """A copy with some fields changed (unknown names raise TypeError naming them)."""
        return replace(self, **changes) if changes else self


OPTION_NAMES = tuple(f.name for f in fields(Options))


def options(opts: Options | None = None, **overrides: Any) -> Options:
    """``opts`` (or the defaults) with ``overrides`` applied; a keyword that is not an option
    raises TypeError naming it and the options there are."""
    bad = sorted(set(overrides) - set(OPTION_NAMES))
    if bad:
        raise TypeError(f"unknown analysis option {bad[0]!r}; options: {', '.join(OPTION_NAMES)}")
    return (opts or Options()).with_(**overrides)
