"""Results -> one tidy pandas frame (the results.csv schema), from any source the sweep writes.

Sources, mixed freely in one call to :func:`load_results`:

- a ``results.csv`` file, or a directory searched recursively for ``results.csv`` files;
- an Optuna storage: an SQLAlchemy URL (``sqlite:///path/study.db``, ``postgresql://...``), an
  SQLite file path, or a journal file path (read with
  ``optuna.storages.JournalStorage(JournalFileBackend(path))``); all studies, or the ones named
  with ``studies=[...]`` or a ``#name1,name2`` suffix on the source;
- a W&B export: ``wandb:entity/project`` or ``wandb:entity/project/group`` (``wandb.Api()``), a
  JSON file holding a list of runs (``{"id", "state", "group", "config", "summary"}``), or an
  iterable of runs; rows come from ``analysis.wandb_runs.runs_to_frame``;
- a pandas DataFrame already in the results.csv schema.

The tidy frame has one row per COMPLETE trial with the results.csv columns (typed: floats,
``seed`` int, ``diverged`` bool) plus ``variant`` = ``<optimizer>/<decay>``. A diverged trial
is COMPLETE with ``diverged=True`` and error 1.0 (filled in when a source left it empty).
:func:`aggregate` turns it into one row per grid cell: mean, std and count over seeds.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import registry
from harness.results import LAYER_COLUMNS, RESULTS_COLUMNS, layer_rows, trial_row
from harness.secrets import mask_secrets

# The results.csv schema: harness.results defines it, the sweep writes it.
ERROR_COLUMNS = ("test_error", "val_error", "final_val_error")
FLOAT_COLUMNS = ("lr", "weight_decay", *ERROR_COLUMNS, "train_loss", "weight_norm", "wall_s")
STRING_COLUMNS = ("study", "experiment", "optimizer", "decay", "model", "data", "state")
SQLITE_MAGIC = b"SQLite format 3\x00"


class SourceError(ValueError):
    """A source that cannot be read: one line naming it and what to pass instead."""


# --------------------------------------------------------------------------------------------
# Readers: each returns a raw frame with the RESULTS_COLUMNS (all states, untyped)


def read_csv(path: str | Path) -> pd.DataFrame:
    """One ``results.csv``; refuses a CSV that lacks the columns the analysis needs."""
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not a readable CSV ({type(exc).__name__})") from None
    need = {"optimizer", "decay", "lr", "weight_decay"}
    missing = sorted(need - set(frame.columns))
    if missing or not ({"test_error", "val_error"} & set(frame.columns)):
        missing = missing or ["test_error"]
        raise SourceError(
            f"{path}: not a results.csv (missing column {', '.join(missing)}); "
            "pass the results.csv the sweep writes"
        )
    return frame.reindex(
        columns=[*RESULTS_COLUMNS, *(c for c in frame if c not in RESULTS_COLUMNS)]
    )


def _open_storage(spec: str):
    """The Optuna storage ``spec`` names, read-only (``harness.storage.open_read_only``)."""
    from harness.errors import ConfigError
    from harness.storage import open_read_only

    try:
        return open_read_only(spec)
    except ConfigError as exc:
        raise SourceError(str(exc)) from None


def _config_name(cfg: Any, group: str) -> str:
    if isinstance(cfg, str):
        try:
            cfg = json.loads(cfg)
        except ValueError:
            return ""
    if isinstance(cfg, dict):
        sub = cfg.get(group)
        if isinstance(sub, dict):
            return str(sub.get("name", ""))
        return str(cfg.get(f"{group}.name", ""))
    return ""


def _trial_row(study_name: str, study_attrs: dict, t: Any) -> dict:
    cfg = t.user_attrs.get("config")

    def from_config(key: str) -> str:  # the trial's stored config names what the study does not
        if key != "experiment":
            return _config_name(cfg, key)
        if not isinstance(cfg, str):
            return ""
        try:
            return json.loads(cfg).get("name", "")
        except (ValueError, AttributeError):
            return ""

    return trial_row(study_name, study_attrs, t, from_config)


def read_optuna(storage: str | Any, studies: Sequence[str] | None = None) -> pd.DataFrame:
    """Every trial (but WAITING ones) of the named studies (default: all) in one storage.

    ``storage`` is an SQLAlchemy URL, an SQLite or journal file path, or an Optuna storage
    object. Rows follow the trial attribute schema of docs/sweep.md: params ``lr``,
    ``weight_decay``, ``seed``; user_attrs ``test_error``, ``val_error``, ``diverged``, ...;
    study user_attrs ``experiment``, ``optimizer``, ``decay``.
    """
    import optuna
    from optuna.trial import TrialState

    label = mask_secrets(storage) if isinstance(storage, str) else type(storage).__name__
    if isinstance(storage, str | Path):
        storage = _open_storage(str(storage))
    try:
        names = [s.study_name for s in storage.get_all_studies()]
    except Exception as exc:  # noqa: BLE001 - e.g. an SQLite file that is not an Optuna DB
        raise SourceError(f"{label}: not an Optuna storage ({type(exc).__name__})") from None
    wanted = list(studies or [])
    unknown = [n for n in wanted if n not in names]
    if unknown:
        have = ", ".join(sorted(names)) or "none"
        raise SourceError(f"{label}: no study named {', '.join(unknown)} (studies: {have})")
    rows = []
    for name in wanted or names:
        study = optuna.load_study(study_name=name, storage=storage)
        attrs = study.user_attrs
        if attrs.get("valley_gates_of") and not wanted:
            continue  # a valley tracer's bookkeeping (harness.sweep.valley), not trials
        for t in study.get_trials(deepcopy=False):
            if t.state != TrialState.WAITING:
                rows.append(_trial_row(name, attrs, t))
    return pd.DataFrame(rows, columns=list(RESULTS_COLUMNS))


def read_wandb(source: str | Path | Iterable[Any]) -> pd.DataFrame:
    """W&B runs -> results frame, through ``analysis.wandb_runs.runs_to_frame``.

    ``source``: ``entity/project`` or ``entity/project/group`` (optionally prefixed
    ``wandb:``; queried with ``wandb.Api()``), a JSON export file (a list of run dicts), or an
    iterable of runs (``wandb.Api().runs(...)`` objects or dicts).
    """
    from analysis.wandb_runs import runs_to_frame

    if isinstance(source, Path) or (isinstance(source, str) and source.endswith(".json")):
        try:
            runs = json.loads(Path(source).read_text())
        except (OSError, ValueError) as exc:
            raise SourceError(f"{source}: not a W&B JSON export ({type(exc).__name__})") from None
        if isinstance(runs, dict):
            runs = runs.get("runs", [runs])
        return runs_to_frame(runs)
    if isinstance(source, str):
        spec = source.removeprefix("wandb:")
        parts = [p for p in spec.split("/") if p]
        if len(parts) not in (2, 3):
            raise SourceError(f"{source}: write wandb:entity/project or wandb:entity/project/group")
        import wandb

        filters = {"group": parts[2]} if len(parts) == 3 else None
        try:
            runs = list(wandb.Api().runs(f"{parts[0]}/{parts[1]}", filters=filters))
        except Exception as exc:  # noqa: BLE001 - network/auth errors become one line
            raise SourceError(
                f"{source}: cannot list W&B runs ({type(exc).__name__}); "
                "check WANDB_API_KEY and the entity/project"
            ) from None
        return runs_to_frame(runs)
    return runs_to_frame(source)


def _looks_like_csv(path: Path) -> bool:
    if path.suffix.lower() == ".csv":
        return True
    with path.open("rb") as fh:
        head = fh.read(4096)
    return b"weight_decay" in head.split(b"\n", 1)[0]


def read_source(
    source: Any, studies: Sequence[str] | None = None, strict: bool = True
) -> pd.DataFrame:
    """One source (see the module docstring) -> raw results frame.

    ``studies`` (and a ``#name1,name2`` suffix) pick Optuna studies; a name given in the suffix
    must exist in that storage, one in ``studies`` only when ``strict``.
    """
    if isinstance(source, pd.DataFrame):
        return source.copy()
    if not isinstance(source, str | Path):
        return read_wandb(source)
    spec, _, names = str(source).partition("#")
    named = [n for n in names.split(",") if n]
    if spec.startswith("wandb:"):
        return read_wandb(spec)
    if "://" in spec or spec.startswith(":memory:"):
        return _read_storage(spec, named, studies, strict)
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.rglob("results.csv"))
        if not files:
            raise SourceError(
                f"{path}: no results.csv below this directory; pass the study's storage "
                "(sqlite:///.../study.db or a .journal file) instead"
            )
        return pd.concat([read_csv(f) for f in files], ignore_index=True)
    if not path.exists():
        raise SourceError(
            f"{spec}: no such file or directory (expected results.csv, a directory, an Optuna "
            "storage URL, a .db/.journal file or wandb:entity/project[/group])"
        )
    with path.open("rb") as fh:
        head = fh.read(16)
    if head == SQLITE_MAGIC:
        return _read_storage(f"sqlite:///{path.resolve()}", named, studies, strict)
    if path.suffix.lower() == ".json":
        return read_wandb(path)
    if _looks_like_csv(path):
        return read_csv(path)
    return _read_storage(spec, named, studies, strict)


def _read_storage(
    spec: str, named: list[str], studies: Sequence[str] | None, strict: bool
) -> pd.DataFrame:
    if named or strict:
        return read_optuna(spec, named + [n for n in studies or () if n not in named])
    if not studies:
        return read_optuna(spec)
    storage = _open_storage(spec)
    have = {s.study_name for s in storage.get_all_studies()}
    present = [n for n in studies if n in have]
    out = read_optuna(storage, present) if present else pd.DataFrame(columns=list(RESULTS_COLUMNS))
    out.attrs["studies"] = sorted(have)  # for the error message when a name is nowhere
    return out


# --------------------------------------------------------------------------------------------
# Tidy frame and cells


def _strings(col: pd.Series) -> pd.Series:
    return col.astype(object).where(col.notna(), "").astype(str)


def tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """Raw rows -> the tidy frame: COMPLETE trials, typed columns, ``variant``, duplicates dropped.

    A diverged trial with an empty error gets error 1.0. A COMPLETE trial with no error at all
    (and not diverged) cannot be placed on the heatmap: it is dropped with a warning.
    """
    frame = raw.reindex(columns=[*RESULTS_COLUMNS, *(c for c in raw if c not in RESULTS_COLUMNS)])
    frame = frame.copy()
    for col in STRING_COLUMNS:
        frame[col] = _strings(frame[col])
    frame.loc[frame["state"] == "", "state"] = "COMPLETE"  # a hand-made CSV without states
    frame["state"] = frame["state"].str.upper().str.replace("TRIALSTATE.", "", regex=False)
    frame = frame[frame["state"] == "COMPLETE"].copy()
    div = frame["diverged"]
    frame["diverged"] = div.map(
        lambda v: str(v).strip().lower() in ("true", "1", "1.0", "yes")
    ).astype(bool)
    for col in FLOAT_COLUMNS:
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    for col in ("lr", "weight_decay"):  # one cell, whatever float round trip a source took
        frame[col] = frame[col].map(lambda x: float(f"{x:.10g}"))
    for col in ERROR_COLUMNS:
        frame.loc[frame["diverged"] & frame[col].isna(), col] = 1.0
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").fillna(0).astype(int)
    frame["trial"] = pd.to_numeric(frame["trial"], errors="coerce").astype("Int64")
    frame["steps"] = pd.to_numeric(frame["steps"], errors="coerce").astype("Int64")
    frame["round"] = pd.to_numeric(frame["round"], errors="coerce").astype(float)
    frame["wandb_run_id"] = _strings(frame["wandb_run_id"])
    bad = frame["lr"].isna() | frame["weight_decay"].isna() | (frame["optimizer"] == "")
    if bad.any():
        warnings.warn(
            f"{int(bad.sum())} COMPLETE rows without lr/weight_decay/optimizer dropped",
            stacklevel=2,
        )
        frame = frame[~bad]
    no_err = frame["test_error"].isna() & frame["val_error"].isna()
    if no_err.any():
        warnings.warn(
            f"{int(no_err.sum())} COMPLETE rows without any error value dropped", stacklevel=2
        )
        frame = frame[~no_err]
    key = ["study", "experiment", "optimizer", "decay", "trial", "lr", "weight_decay", "seed"]
    frame = frame.drop_duplicates(subset=key, keep="first")
    frame["variant"] = frame["optimizer"] + "/" + frame["decay"]
    return frame.reset_index(drop=True)


def load_results(
    sources: Any, studies: Sequence[str] | None = None, experiment: str | None = None
) -> pd.DataFrame:
    """The tidy frame (COMPLETE trials, typed, ``variant``) from one or more sources.

    ``sources``: one source or a list (paths, URLs, ``wandb:...``, DataFrames, run lists).
    ``studies`` restricts Optuna storages to the named studies; ``experiment`` keeps only rows
    of that experiment. The same trial read twice (e.g. from results.csv and from the study it
    was written from) is kept once.
    """
    if isinstance(sources, str | Path | pd.DataFrame):
        sources = [sources]
    frames = [read_source(s, studies, strict=False) for s in sources]
    if not frames:
        raise SourceError("sources: give at least one results.csv, directory or storage URL")
    raw = (
        pd.concat([f for f in frames if len(f)], ignore_index=True)
        if any(len(f) for f in frames)
        else pd.DataFrame(columns=list(RESULTS_COLUMNS))
    )
    frame = tidy(raw)
    if studies:
        have = sorted(
            set().union(*(f.attrs.get("studies", set(f.get("study", ()))) for f in frames))
        )
        unknown = [n for n in studies if n not in have]
        if unknown:
            raise SourceError(
                f"study {', '.join(unknown)}: no study named so in the results "
                f"(studies: {', '.join(have) or 'none'})"
            )
        frame = frame[frame["study"].isin(list(studies))].reset_index(drop=True)
    if experiment is not None:
        have = sorted(set(frame["experiment"]))
        frame = frame[frame["experiment"] == experiment].reset_index(drop=True)
        if frame.empty:
            raise SourceError(f"experiment={experiment}: not in the results (have: {have})")
    return frame


# --------------------------------------------------------------------------------------------
# Per-layer summaries


def _layer_source(source: Any, studies: Sequence[str] | None) -> pd.DataFrame:
    """One source's per-layer rows: an Optuna storage's trials (user attr ``layers``), the
    ``layers.csv`` beside a ``results.csv`` (or beside each one below a directory); nothing for
    W&B sources and DataFrames."""
    empty = pd.DataFrame(columns=list(LAYER_COLUMNS))
    if not isinstance(source, str | Path):
        return empty
    spec, _, names = str(source).partition("#")
    if spec.startswith("wandb:"):
        return empty
    named = [n for n in names.split(",") if n]
    path = Path(spec)
    storage_url = "://" in spec or spec.startswith(":memory:")
    if not storage_url:
        if path.is_dir():
            files = [f.parent / "layers.csv" for f in sorted(path.rglob("results.csv"))]
            return _layer_csvs([f for f in files if f.is_file()])
        if not path.is_file() or path.suffix.lower() == ".json":
            return empty
        with path.open("rb") as fh:
            head = fh.read(16)
        if head != SQLITE_MAGIC and _looks_like_csv(path):
            beside = path.parent / "layers.csv"
            return _layer_csvs([beside] if beside.is_file() and beside != path else [])
        spec = f"sqlite:///{path.resolve()}" if head == SQLITE_MAGIC else spec
    import optuna

    storage = _open_storage(spec)
    have = [s.study_name for s in storage.get_all_studies()]
    wanted = [n for n in named + list(studies or ()) if n in have] or (
        [] if named or studies else have
    )
    rows = [
        row
        for name in wanted
        for row in layer_rows(optuna.load_study(study_name=name, storage=storage))
    ]
    return pd.DataFrame(rows, columns=list(LAYER_COLUMNS))


def _layer_csvs(files: list[Path]) -> pd.DataFrame:
    frames = [pd.read_csv(f) for f in files]
    for f, frame in zip(files, frames):
        missing = [c for c in ("layer", "angle", "norm", "lr", "weight_decay") if c not in frame]
        if missing:
            raise SourceError(
                f"{f}: not a layers.csv (missing column {', '.join(missing)}); pass the "
                "layers.csv the sweep writes beside results.csv"
            )
    if not frames:
        return pd.DataFrame(columns=list(LAYER_COLUMNS))
    return pd.concat(frames, ignore_index=True)


def load_layers(sources: Any, studies: Sequence[str] | None = None) -> pd.DataFrame:
    """The per-layer summaries of the trials of ``sources`` (as :func:`load_results` takes
    them) in long format: one row per (COMPLETE trial, layer) with :data:`LAYER_COLUMNS`
    (``study``, ``experiment``, ``optimizer``, ``decay``, ``model``, ``data``, ``trial``,
    ``lr``, ``weight_decay``, ``seed``, ``layer``, ``scale_invariant``, ``angle``: mean angle
    per step over the equilibrium window, ``norm``: final norm) plus ``variant``. Empty when no
    source holds per-layer data (instruments off, a results.csv without a layers.csv beside it,
    W&B runs)."""
    if isinstance(sources, str | Path | pd.DataFrame):
        sources = [sources]
    frames = [f for f in (_layer_source(s, studies) for s in sources) if len(f)]
    frame = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=list(LAYER_COLUMNS))
    )
    frame = frame.reindex(columns=[*LAYER_COLUMNS, *(c for c in frame if c not in LAYER_COLUMNS)])
    for col in ("study", "experiment", "optimizer", "decay", "model", "data", "layer"):
        frame[col] = _strings(frame[col])
    for col in ("lr", "weight_decay", "angle", "norm"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype(float)
    for col in ("lr", "weight_decay"):  # the same cell keys as tidy()
        frame[col] = frame[col].map(lambda x: float(f"{x:.10g}"))
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").fillna(0).astype(int)
    frame["trial"] = pd.to_numeric(frame["trial"], errors="coerce").astype("Int64")
    frame["scale_invariant"] = (
        frame["scale_invariant"]
        .map(lambda v: str(v).strip().lower() in ("true", "1", "1.0", "yes"))
        .astype(bool)
    )
    if studies:
        frame = frame[frame["study"].isin(list(studies))]
    key = ["study", "optimizer", "decay", "trial", "lr", "weight_decay", "seed", "layer"]
    frame = frame.drop_duplicates(subset=key, keep="first").copy()
    frame["variant"] = frame["optimizer"] + "/" + frame["decay"]
    return frame.reset_index(drop=True)


def aggregate(frame: pd.DataFrame, metric: str = "test_error") -> pd.DataFrame:
    """One row per (experiment, model, data, variant, lr, weight_decay) cell.

    Columns: ``mean``, ``std`` (ddof=1; 0 for one seed), ``count`` (seeds) of ``metric``,
    ``n_diverged`` and ``diverged`` (share of the cell's trials that diverged).
    """
    if metric not in frame:
        raise ValueError(f"metric={metric}: not a column (use test_error or val_error)")
    data = frame[frame[metric].notna()]
    keys = [*group_columns(data), "variant", "optimizer", "decay", "lr", "weight_decay"]
    g = data.groupby(keys, sort=True)
    out = g[metric].agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    out["n_diverged"] = g["diverged"].sum().to_numpy().astype(int)
    out["diverged"] = out["n_diverged"] / out["count"]
    return out


def group_columns(frame: pd.DataFrame) -> list[str]:
    """The columns among experiment/model/data that vary: results to draw as separate figures."""
    return [c for c in ("experiment", "model", "data") if c in frame and frame[c].nunique() > 1]


def split_groups(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """``[(label, part)]``: one part per experiment/model/data combination ("" when only one)."""
    cols = group_columns(frame)
    if not cols:
        return [("", frame)]
    parts = []
    for key, part in frame.groupby(cols, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        label = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", str(k)) or "none" for k in key)
        parts.append((label, part))
    return parts


def grid(
    cells: pd.DataFrame, variant: str, value: str = "mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lrs, wds, E)``, axes sorted ascending, ``E[i, j]`` = value at lr i, wd j (nan: missing)."""
    sub = cells[cells["variant"] == variant]
    if sub.empty:
        raise ValueError(f"variant={variant}: no cells (have: {sorted(set(cells['variant']))})")
    table = sub.pivot_table(index="lr", columns="weight_decay", values=value, aggfunc="mean")
    table = table.sort_index().sort_index(axis=1)
    return table.index.to_numpy(float), table.columns.to_numpy(float), table.to_numpy(float)


def seed_grids(
    frame: pd.DataFrame, variant: str, metric: str = "test_error"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(seeds, lrs, wds, S)`` with ``S[s, i, j]`` = ``metric`` of seed s at cell (i, j)
    (the mean when a seed has several trials in a cell, e.g. after :func:`snap_to_grid`)."""
    sub = frame[(frame["variant"] == variant) & frame[metric].notna()]
    sub = sub.groupby(["seed", "lr", "weight_decay"], as_index=False)[metric].mean()
    lrs = np.sort(sub["lr"].unique())
    wds = np.sort(sub["weight_decay"].unique())
    seeds = np.sort(sub["seed"].unique())
    S = np.full((len(seeds), len(lrs), len(wds)), np.nan)
    si = np.searchsorted(seeds, sub["seed"].to_numpy())
    li = np.searchsorted(lrs, sub["lr"].to_numpy())
    wi = np.searchsorted(wds, sub["weight_decay"].to_numpy())
    S[si, li, wi] = sub[metric].to_numpy(float)
    return seeds, lrs, wds, S


def refined(frame: pd.DataFrame) -> pd.Series:
    """Which trials a valley tracer (``sweep=valley``) added in a refinement round (``round``
    >= 1); False for the coarse grid and for every other sweep."""
    if "round" not in frame:
        return pd.Series(False, index=frame.index)
    return pd.to_numeric(frame["round"], errors="coerce").fillna(0) >= 1


def is_valley(frame: pd.DataFrame) -> bool:
    """Whether ``frame`` holds valley-tracer refinements (the valley then uses them)."""
    return bool(refined(frame).any())


def coarse(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the refinement trials of a valley tracer: its lr x wd grid."""
    return frame[~refined(frame)]


def is_grid(frame: pd.DataFrame, min_fill: float = 0.5) -> bool:
    """Whether every variant's trials sit on an lr x wd grid: at least ``min_fill`` of the
    cells spanned by its distinct lrs and wds were run (a random/TPE sampler gives ~1/n). A
    valley tracer's trials do: its coarse grid is a grid, its refinements lie on the rows."""
    frame = coarse(frame)
    for _, sub in frame.groupby("variant"):
        n_lr, n_wd = sub["lr"].nunique(), sub["weight_decay"].nunique()
        cells = len(sub[["lr", "weight_decay"]].drop_duplicates())
        if cells < min_fill * n_lr * n_wd:
            return False
    return True


def snap_to_grid(frame: pd.DataFrame, n_lr: int = 8, n_wd: int = 8) -> pd.DataFrame:
    """Put sampled (non-grid) trials on a grid: per variant, ``lr`` and ``weight_decay`` are
    replaced by the geometric centre of the one of ``n`` log-spaced bins between their min and
    max that holds them (a zero weight decay stays 0, its own column). For random or TPE
    sweeps; every metric then works on the binned grid (a cell = the mean of its trials)."""
    if n_lr < 1 or n_wd < 1:
        raise ValueError(f"bins: need at least one bin per axis, got ({n_lr}, {n_wd})")
    out = frame.copy()
    for _, idx in frame.groupby("variant").groups.items():
        for col, n in (("lr", n_lr), ("weight_decay", n_wd)):
            vals = frame.loc[idx, col].to_numpy(float)
            pos = vals > 0
            if not pos.any():
                continue
            lo, hi = np.log(vals[pos].min()), np.log(vals[pos].max())
            if hi - lo < 1e-12:
                continue
            edges = np.linspace(lo, hi, n + 1)
            k = np.clip(np.searchsorted(edges, np.log(vals[pos]), side="right") - 1, 0, n - 1)
            centres = np.exp(0.5 * (edges[:-1] + edges[1:]))
            snapped = vals.copy()
            snapped[pos] = [float(f"{c:.10g}") for c in centres[k]]
            out.loc[idx, col] = snapped
    return out


def variants_in_order(frame: pd.DataFrame) -> list[str]:
    """Variants sorted like the paper (the registry's order): SGD before Adam, coupled before
    decoupled; unknown names last."""
    present = list(dict.fromkeys(frame["variant"]))
    families, decays = registry.names("optimizer"), registry.names("decay")

    def key(v: str) -> tuple[int, int, str]:
        fam, _, dec = v.partition("/")
        return (
            families.index(fam) if fam in families else 99,
            decays.index(dec) if dec in decays else 99,
            v,
        )

    return sorted(present, key=key)
