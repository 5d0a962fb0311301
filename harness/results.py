"""What a trial produces, and ``results.csv``: :class:`TrialResult` is the schema.

The result keys stored on every finished trial, the CSV's columns and its rows all derive from
:class:`TrialResult`'s fields; a new result column is a new field here plus the code that
computes it. ``analysis.load`` and the W&B reader use the same :data:`RESULTS_COLUMNS`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


@dataclass
class TrialResult:
    """One finished trial. A diverged trial has errors 1.0 and NaN loss and norm."""

    test_error: float
    val_error: float  # best over evaluations
    final_val_error: float
    train_loss: float  # mean over the last epoch (or the last report interval); nan if diverged
    weight_norm: float  # global L2 norm of all parameters at the end
    diverged: bool
    steps: int
    wall_s: float
    # the first report step whose test accuracy reached train.target_accuracy; NaN if it never
    # did or no target was set (resolution: train.eval_every)
    steps_to_target: float = math.nan
    # instruments (train.instruments; docs/trial.md): the mean angle (radians) a group of
    # tensors turns per step over the equilibrium window, the last quarter of the steps, for the
    # scale-invariant tensors and for the rest; the groups' final norms; the mean lr-schedule
    # multiplier eta_t over the window; how many tensors are scale-invariant (a count). NaN for an
    # empty group, a trial that diverged, or instruments off
    si_angle: float = math.nan
    rest_angle: float = math.nan
    si_norm: float = math.nan
    rest_norm: float = math.nan
    eq_eta: float = math.nan
    si_tensors: float = math.nan
    # how far the scale-invariance theory reaches in this trial: the elements of the tensors the
    # decay rule (optimizer.param_groups) decays, whatever the wd, and of those the elements of
    # the tensors the detector finds scale-invariant; counted once at set-up. decayed_si_numel
    # is NaN when the detector did not run (train.instruments=false and a rule that does not
    # decay the invariant tensors: the probe is not run for this count alone)
    decayed_numel: float = math.nan
    decayed_si_numel: float = math.nan
    # the per-layer summary (Instruments.layer_summary: {name: {"angle", "norm",
    # "scale_invariant"}}), set by the trainers when the instruments are on; a plain attribute,
    # not a field, so it is no result key nor a results.csv column (stored as the trial's
    # user attr "layers")
    layers = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_divergence(cls, steps: int, wall_s: float) -> TrialResult:
        """The result recorded for a run whose loss or weights went non-finite."""
        return cls(
            test_error=1.0,
            val_error=1.0,
            final_val_error=1.0,
            train_loss=math.nan,
            weight_norm=math.nan,
            diverged=True,
            steps=int(steps),
            wall_s=float(wall_s),
        )


class Preempted(Exception):
    """Raised from a trial's report hook when its worker was asked to stop (Slurm's warning
    signal, Ctrl-C); trainers let it through, and the worker hands the trial back."""


RESULT_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrialResult))

# Who the trial was: the study, its variant and cell, and its Optuna state.
TRIAL_COLUMNS: tuple[str, ...] = (
    "study",
    "experiment",
    "optimizer",
    "decay",
    "model",
    "data",
    "trial",
    "lr",
    "weight_decay",
    "seed",
    "state",
    "round",  # sweep=valley: 0 for the coarse grid, r for refinement round r; empty otherwise
)
RESULTS_COLUMNS: tuple[str, ...] = (*TRIAL_COLUMNS, *RESULT_KEYS, "wandb_run_id")


def result_attrs(rec: dict[str, Any]) -> dict[str, Any]:
    """The result keys of ``rec`` as stored on a trial: JSON has no NaN, so a non-finite float
    is stored as None ("not defined", e.g. a diverged run's loss)."""
    out = {}
    for key in RESULT_KEYS:
        value = rec.get(key)
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


LAYERS_ATTR = "layers"


def layer_attrs(result: Any) -> dict[str, Any]:
    """``{"layers": ...}``: the per-layer summary a trainer set on ``result``, JSON-ready
    (non-finite numbers as None); nothing when it has none."""
    layers = getattr(result, "layers", None)
    if not layers:
        return {}

    def finite(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return {
        LAYERS_ATTR: {
            name: {key: finite(value) for key, value in entry.items()}
            for name, entry in layers.items()
        }
    }


# --------------------------------------------------------------------------------------------
# How a trial's config is stored beside its result (W&B run configs, read back by the analysis)

ANALYSIS_JOB_TYPE = "analysis"  # the W&B job type of a sweep's analysis run (figures, tables)


def plain_value(value: Any) -> Any:
    """JSON-friendly: OmegaConf containers -> dict/list, tensors/numpy scalars -> Python."""
    if hasattr(value, "_metadata") and hasattr(value, "_get_node"):  # DictConfig / ListConfig
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    if hasattr(value, "item") and tuple(getattr(value, "shape", (0,))) == ():
        return value.item()  # 0-d tensor / numpy scalar
    if isinstance(value, Path):
        return str(value)
    return value


def flatten_config(config: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> one level with dotted keys (``{"optimizer": {"lr": 1}}`` ->
    ``{"optimizer.lr": 1}``); lists and tuples become lists; DictConfigs are resolved first."""
    config = plain_value(config)
    out: dict[str, Any] = {}
    for key, value in config.items():
        value = plain_value(value)
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, name + "."))
        elif isinstance(value, tuple):
            out[name] = list(value)
        else:
            out[name] = value
    return out


def with_layers(result: TrialResult, layers: dict[str, Any] | None, diverged: bool) -> TrialResult:
    """``result`` carrying the per-layer summary ``layers`` (angles and norms NaN for a trial
    that diverged)."""
    if layers is not None:
        if diverged:
            layers = {
                name: {**entry, "angle": math.nan, "norm": math.nan}
                for name, entry in layers.items()
            }
        result.layers = layers
    return result


def results_rows(study) -> Iterable[dict[str, Any]]:
    """One ``results.csv`` row per trial of an Optuna study that is not WAITING."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False):
        if t.state != TrialState.WAITING:
            yield _row(study, t)


def _row(study, t) -> dict[str, Any]:
    """The results.csv row of trial ``t`` of ``study``."""
    row = trial_row(study.study_name, study.user_attrs, t)
    if row["train_loss"] is None and t.user_attrs.get("diverged"):
        row["train_loss"] = float("nan")
    return row


def trial_row(
    study_name: str,
    study_attrs: dict[str, Any],
    t: Any,
    fallback: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """The results row of trial ``t``: who it was (from the study's attrs and the trial's
    params) and its stored result keys. ``fallback(key)`` names the experiment, model or data
    when the study's attrs do not (e.g. from the trial's stored config)."""
    ua = t.user_attrs

    def who(key: str, missing: Callable[[Any], bool]) -> str:
        value = study_attrs.get(key)
        if missing(value) and fallback is not None:
            value = fallback(key)
        return value or ""

    row = {
        "study": study_name,
        "experiment": who("experiment", lambda v: v is None),
        "optimizer": study_attrs.get("optimizer", ua.get("optimizer", "")),
        "decay": study_attrs.get("decay", ua.get("decay", "")),
        "model": who("model", lambda v: not v),
        "data": who("data", lambda v: not v),
        "trial": t.number,
        "lr": t.params.get("lr"),
        "weight_decay": t.params.get("weight_decay"),
        "seed": t.params.get("seed"),
        "state": t.state.name,
        "round": ua.get("round"),
    }
    for key in RESULT_KEYS:
        row[key] = ua.get(key)
    row["wandb_run_id"] = ua.get("wandb_run_id") or ""
    return row


# The per-layer summary in long format: one row per (COMPLETE trial, layer)
LAYER_COLUMNS: tuple[str, ...] = (
    *TRIAL_COLUMNS[:10],
    "layer",
    "scale_invariant",
    "angle",
    "norm",
)


def layer_rows(study) -> Iterable[dict[str, Any]]:
    """One :data:`LAYER_COLUMNS` row per layer of each COMPLETE trial of an Optuna study that
    stored a per-layer summary (its user attr ``layers``)."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        layers = t.user_attrs.get(LAYERS_ATTR)
        if not layers:
            continue
        row = _row(study, t)
        ident = {key: row[key] for key in LAYER_COLUMNS[:10]}
        for name, entry in layers.items():
            angle, norm = entry.get("angle"), entry.get("norm")
            yield {
                **ident,
                "layer": name,
                "scale_invariant": bool(entry.get("scale_invariant")),
                "angle": math.nan if angle is None else float(angle),
                "norm": math.nan if norm is None else float(norm),
            }


def write_layers(studies: Sequence[Any], path: str | Path) -> Path | None:
    """Write ``layers.csv`` (:func:`layer_rows` of ``studies``) atomically; None (and nothing
    written) when no trial stored a per-layer summary."""
    import pandas as pd

    rows = [row for s in studies for row in layer_rows(s)]
    if not rows:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pd.DataFrame(rows, columns=list(LAYER_COLUMNS)).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def write_results(studies: Sequence[Any], path: str | Path) -> Path:
    """Write ``results.csv`` (one row per non-waiting trial of ``studies``), atomically."""
    import pandas as pd

    rows = [row for s in studies for row in results_rows(s)]
    frame = pd.DataFrame(rows, columns=list(RESULTS_COLUMNS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path
