"""Results -> one tidy pandas frame (the results.csv schema), from any source the sweep writes.

Sources (mix freely):
- a ``results.csv`` file, or a directory searched recursively for ``results.csv`` files;
- an Optuna storage: an SQLAlchemy URL (``sqlite:///path/study.db``, ``postgresql://...``) or a
  journal file (``*.journal``); all studies, or those named with ``URL#study1,study2``;
- a W&B project or group: ``wandb:entity/project`` or ``wandb:entity/project/group``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from harness.study import RESULTS_COLUMNS

DECAY_ORDER = ("l2", "loss", "decoupled", "independent")
FAMILY_ORDER = ("sgd", "adam")


class SourceError(ValueError):
    """A source that cannot be read: one line naming it and what to pass instead."""


def _from_storage(spec: str) -> pd.DataFrame:
    import optuna

    from harness.study import results_rows

    url, _, names = spec.partition("#")
    if url.endswith(".journal") or (
        Path(url).is_file() and not url.startswith(("sqlite", "postgres"))
    ):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        if not Path(url).is_file():
            raise SourceError(f"{url}: no such journal file")
        storage = optuna.storages.JournalStorage(
            JournalFileBackend(url, lock_obj=JournalFileOpenLock(url))
        )
    else:
        if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).is_file():
            raise SourceError(f"{url}: no such SQLite file")
        try:
            storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        except Exception as exc:  # noqa: BLE001 - one line for any driver error
            from harness.tracking import mask_secrets

            raise SourceError(f"{mask_secrets(url)}: cannot open ({type(exc).__name__})") from None
    wanted = [n for n in names.split(",") if n]
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    rows = []
    for s in summaries:
        if wanted and s.study_name not in wanted:
            continue
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        rows.extend(results_rows(study))
    return pd.DataFrame(rows, columns=list(RESULTS_COLUMNS))


def _from_wandb(spec: str) -> pd.DataFrame:
    import wandb

    from harness.tracking import runs_to_frame

    parts = spec[len("wandb:") :].split("/")
    if len(parts) not in (2, 3):
        raise SourceError(f"{spec}: write wandb:entity/project or wandb:entity/project/group")
    filters = {"group": parts[2]} if len(parts) == 3 else None
    runs = wandb.Api().runs(f"{parts[0]}/{parts[1]}", filters=filters)
    return runs_to_frame(runs)


def read_source(spec: str) -> pd.DataFrame:
    spec = str(spec)
    if spec.startswith("wandb:"):
        return _from_wandb(spec)
    if "://" in spec or spec.endswith(".journal") or spec.split("#")[0].endswith(".journal"):
        return _from_storage(spec)
    path = Path(spec)
    if path.is_dir():
        files = sorted(path.rglob("results.csv"))
        if not files:
            raise SourceError(f"{path}: no results.csv below this directory")
        return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)
    if path.suffix == ".db" and path.is_file():
        return _from_storage(f"sqlite:///{path.resolve()}")
    if path.is_file():
        frame = pd.read_csv(path)
        missing = {"lr", "weight_decay", "test_error", "optimizer", "decay"} - set(frame.columns)
        if missing:
            raise SourceError(f"{path}: not a results.csv (missing {', '.join(sorted(missing))})")
        return frame
    raise SourceError(
        f"{spec}: not a results.csv, a directory, an Optuna storage URL, a .journal or wandb:..."
    )


def load_results(sources: Iterable[str]) -> pd.DataFrame:
    """The union of all sources, COMPLETE trials only, with a ``variant`` column."""
    frames = [read_source(s) for s in sources]
    frame = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RESULTS_COLUMNS)
    )
    frame = frame[frame["state"].fillna("COMPLETE") == "COMPLETE"].copy()
    frame["diverged"] = frame["diverged"].astype(str).str.lower().isin(("true", "1", "1.0"))
    frame.loc[frame["diverged"], "test_error"] = frame.loc[frame["diverged"], "test_error"].fillna(
        1.0
    )
    for col in ("lr", "weight_decay", "test_error", "val_error"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").fillna(0).astype(int)
    frame["variant"] = frame["optimizer"].astype(str) + "/" + frame["decay"].astype(str)
    return frame.reset_index(drop=True)


def aggregate(frame: pd.DataFrame, metric: str = "test_error") -> pd.DataFrame:
    """One row per (variant, lr, weight_decay): mean, std and count over seeds, diverged share."""
    g = frame.groupby(["variant", "optimizer", "decay", "lr", "weight_decay"], sort=True)
    out = g[metric].agg(["mean", "std", "count"]).reset_index()
    out["diverged"] = g["diverged"].mean().values
    out["std"] = out["std"].fillna(0.0)
    return out


def grid(
    cells: pd.DataFrame, variant: str, value: str = "mean"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lrs, wds, E) with ``E[i, j]`` = value at lr i, wd j (nan where missing)."""
    sub = cells[cells["variant"] == variant]
    table = sub.pivot_table(index="lr", columns="weight_decay", values=value, aggfunc="mean")
    return table.index.to_numpy(float), table.columns.to_numpy(float), table.to_numpy(float)


def variants_in_order(frame: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(frame["variant"]))

    def key(v: str) -> tuple[int, int, str]:
        fam, _, dec = v.partition("/")
        return (
            FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else 99,
            DECAY_ORDER.index(dec) if dec in DECAY_ORDER else 99,
            v,
        )

    return sorted(present, key=key)
