"""W&B runs -> a results frame with the ``results.csv`` columns (for W&B exports).

``runs_to_frame`` reads the runs that the harness's W&B tracker writes: their config
(flattened, dotted keys), job type, group, state and summary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from harness.results import ANALYSIS_JOB_TYPE, RESULT_KEYS, RESULTS_COLUMNS, flatten_config

_INTERNAL = ("_wandb", "wandb_version")


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    try:
        return getattr(obj, key, default)
    except Exception:  # noqa: BLE001 - a lazy Api attribute that failed to load
        return default


def _as_dict(value: Any) -> dict[str, Any]:
    """A config/summary in any of its shapes -> a plain dict."""
    import json

    if value is None:
        return {}
    if isinstance(value, (str, bytes, bytearray)):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    inner = getattr(value, "_json_dict", None)  # wandb.apis.public HTTPSummary
    if isinstance(inner, Mapping):
        value = inner
    return dict(value) if isinstance(value, Mapping) else {}


def _unwrap_config(raw: Mapping[str, Any]) -> dict[str, Any]:
    """``{"k": {"value": v, "desc": ...}}`` (server JSON) or ``{"k": v}`` -> flat ``{"k": v}``."""
    plain = {}
    for key, value in raw.items():
        if key in _INTERNAL or str(key).startswith("_"):
            continue
        if isinstance(value, Mapping) and "value" in value and set(value) <= {"value", "desc"}:
            value = value["value"]
        plain[key] = value
    return flatten_config(plain)


def _normalize_run(run: Any) -> dict[str, Any]:
    """An Api run, its raw GraphQL node (``displayName``, ``summaryMetrics``...), an export dict
    (``id, name, group, job_type, state, config, summary``) or a tests/wandb_reader dict."""
    raw_node = isinstance(run, Mapping) and ("summaryMetrics" in run or "displayName" in run)
    if raw_node:
        return {
            "id": run.get("name", ""),  # GraphQL: name = run id, id = storage id
            "name": run.get("displayName", ""),
            "group": run.get("group") or "",
            "job_type": run.get("jobType") or "",
            "state": run.get("state") or "",
            "config": _unwrap_config(_as_dict(run.get("config"))),
            "summary": _as_dict(run.get("summaryMetrics")),
        }
    summary = _get(run, "summary_metrics", None) if not isinstance(run, Mapping) else None
    if not isinstance(summary, Mapping):
        summary = _get(run, "summary", {})
    return {
        "id": _get(run, "id", "") or "",
        "name": _get(run, "name", "") or "",
        "group": _get(run, "group", "") or "",
        "job_type": _get(run, "job_type", "") or "",
        "state": _get(run, "state", "") or "",
        "config": _unwrap_config(_as_dict(_get(run, "config", {}))),
        "summary": _as_dict(summary),
    }


def optuna_state(state: str, summary: Mapping[str, Any]) -> str:
    """A W&B run state + our summary -> Optuna's trial state name (results.csv ``state``).

    running/pending -> RUNNING; outcome ``pruned`` -> PRUNED; exit 0 with outcome
    finished/diverged (or, for runs written by other code, a ``val_error``) -> COMPLETE;
    anything else (failed, crashed, killed, preempted) -> FAIL.
    """
    state = str(state or "").lower()
    outcome = summary.get("outcome")
    if state in ("running", "pending", "preempting"):
        return "RUNNING"
    if outcome == "pruned" or summary.get("pruned") is True:
        return "PRUNED"
    if state == "finished" and (
        outcome in ("finished", "diverged") or (outcome is None and "val_error" in summary)
    ):
        return "COMPLETE"
    return "FAIL"


def runs_to_frame(runs: Iterable[Any]):
    """W&B runs -> a DataFrame with exactly the results.csv columns, one row per run.

    ``runs``: ``wandb.Api().runs("entity/project", filters={"group": study})`` objects, their raw
    GraphQL nodes (a JSON export of ``run._attrs``), dicts with ``id, name, group, job_type, state,
    config, summary`` (as ``tests/wandb_reader.read_offline_runs`` returns), in any mix. Columns
    come from the run config written by :class:`Tracker` (``study``, ``name`` = experiment,
    ``optimizer.name``, ``optimizer.decay``, ``model.name``, ``data.name``, ``trial``, ``lr``,
    ``weight_decay``, ``seed``) with the job type (``<optimizer>/<decay>``) and group as fallbacks
    (runs with job type ``analysis``, a sweep's figures, are skipped);
    metrics from the summary of COMPLETE runs (empty for the others, as in results.csv: a failed
    run's summary holds its last report, not a result); ``state`` from :func:`optuna_state`. A
    diverged run's ``train_loss`` is NaN (W&B stores a NaN summary value as null).
    """
    import pandas as pd

    rows = []
    for run in runs:
        r = _normalize_run(run)
        if r["job_type"] == ANALYSIS_JOB_TYPE:  # a sweep's figures and tables, not a trial
            continue
        config, summary = r["config"], r["summary"]
        variant = str(r["job_type"] or "").split("/")
        optimizer = config.get("optimizer.name") or (variant[0] if len(variant) == 2 else "")
        decay = config.get("optimizer.decay") or (variant[1] if len(variant) == 2 else "")
        study = config.get("study") or r["group"] or ""
        experiment = config.get("name") or ""
        if not experiment and optimizer and decay and study.endswith(f"-{optimizer}-{decay}"):
            experiment = study[: -len(f"-{optimizer}-{decay}")]
        state = optuna_state(r["state"], summary)
        row = {
            "study": study,
            "experiment": experiment,
            "optimizer": optimizer,
            "decay": decay,
            "model": config.get("model.name", ""),
            "data": config.get("data.name", ""),
            "trial": config.get("trial"),
            "lr": config.get("lr", config.get("optimizer.lr")),
            "weight_decay": config.get("weight_decay", config.get("optimizer.weight_decay")),
            "seed": config.get("seed", config.get("train.seed")),
            "state": state,
            "round": config.get("round"),  # sweep=valley
            "wandb_run_id": r["id"],
        }
        for key in RESULT_KEYS:  # as in results.csv: only complete trials have results
            row[key] = summary.get(key) if state == "COMPLETE" else None
        if state == "COMPLETE" and row["diverged"] is None:
            row["diverged"] = False
        if row["diverged"] is True and row["train_loss"] is None:
            row["train_loss"] = float("nan")
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(RESULTS_COLUMNS))
    for col in ("lr", "weight_decay", *[k for k in RESULT_KEYS if k != "diverged"]):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    # ints as in results.csv; float where one is missing
    for col in ("trial", "seed", "steps", "round"):
        values = pd.to_numeric(frame[col], errors="coerce")
        frame[col] = values.astype("int64") if values.notna().all() else values
    if frame["diverged"].notna().all():
        frame["diverged"] = frame["diverged"].astype(bool)
    return frame
