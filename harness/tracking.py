"""Weights & Biases runs for trials, online or offline, and secret masking.

One W&B run per trial: ``group`` = the study, ``job_type`` = the variant (``adam/independent``),
``name`` = ``adam/independent lr=1e-3 wd=1e-4 s0``, ``config`` = the flattened trial config plus
the trial's params, Optuna trial number and study name. History at the trial's report interval:
``train_loss, val_error, lr, eta, shrink, weight_norm, epoch``; summary: the final metrics and
``diverged``.

``tracking.mode``: ``auto`` (online when ``WANDB_API_KEY`` is set or ``~/.netrc`` has a login for
api.wandb.ai, otherwise offline; never prompts), ``online``, ``offline``, ``disabled``. Files go
under ``<tracking.dir or output dir>/wandb``. Several runs may be open at once in one process
(``reinit="create_new"``), as population training needs; each is finished explicitly.
"""

from __future__ import annotations

import netrc
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_URL_PW = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@"
)
_KEY = re.compile(r"\b[0-9a-f]{40}\b|\b[a-z0-9]+-[0-9a-f]{40}\b")
SECRET_WORDS = ("password", "passwd", "api_key", "apikey", "secret", "token")


def mask_secrets(text: str) -> str:
    """Passwords inside URLs, W&B-style 40-hex keys and the value of WANDB_API_KEY -> ``***``."""
    if not isinstance(text, str):
        return text
    out = _URL_PW.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    key = os.environ.get("WANDB_API_KEY")
    if key:
        out = out.replace(key, "***")
    return _KEY.sub("***", out)


def mask_config(obj: Any) -> Any:
    """A copy of a nested config with every secret masked (strings, and keys named like secrets)."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if isinstance(k, str) and any(w in k.lower() for w in SECRET_WORDS) and v:
                out[k] = "***"
            else:
                out[k] = mask_config(v)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(mask_config(v) for v in obj)
    if isinstance(obj, str):
        return mask_secrets(obj)
    return obj


def has_login() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def resolve_mode(mode: str) -> str:
    """``auto`` -> ``online`` with a key or login, else ``offline``; others unchanged."""
    if mode == "auto":
        return "online" if has_login() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"tracking.mode={mode!r} is not one of auto, online, offline, disabled")
    return mode


class TrackedRun:
    """A trial's W&B run (or a no-op when tracking is disabled)."""

    def __init__(self, run: Any = None) -> None:
        self._run = run
        self.id: str | None = run.id if run is not None else None
        self.finished = run is None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self._run is not None and not self.finished:
            self._run.log(dict(metrics), step=int(step))

    def finish(self, summary: Mapping[str, Any], state: str = "finished") -> None:
        """Write the summary and close the run: ``finished`` / ``diverged`` exit 0, ``failed`` 1."""
        if self._run is None or self.finished:
            return
        for key, value in summary.items():
            self._run.summary[key] = value
        self._run.summary["state"] = state
        if state == "diverged":
            self._run.summary["diverged"] = True
        self._run.finish(exit_code=0 if state in ("finished", "diverged") else 1)
        self.finished = True


class Tracker:
    """Opens one W&B run per trial of a study."""

    def __init__(self, cfg: Any, output_dir: str | Path, study_name: str) -> None:
        self.mode = resolve_mode(cfg.mode)
        self.project = cfg.project
        self.entity = cfg.entity or None
        self.tags = list(cfg.tags or [])
        self.dir = Path(cfg.dir or output_dir)
        self.study_name = study_name

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    def start(
        self,
        name: str,
        job_type: str,
        config: Mapping[str, Any],
        tags: Iterable[str] = (),
    ) -> TrackedRun:
        if not self.enabled:
            return TrackedRun(None)
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(
            project=self.project,
            entity=self.entity,
            group=self.study_name,
            job_type=job_type,
            name=name,
            tags=[mask_secrets(str(t))[:64] for t in (*self.tags, *tags, job_type)],
            config=mask_config({**dict(config), "study": self.study_name}),
            dir=str(self.dir),
            mode=self.mode,
            reinit="create_new",
            settings=wandb.Settings(
                silent=True,
                console="off",
                x_disable_stats=True,
                x_disable_meta=True,
                disable_git=True,
                save_code=False,
            ),
        )
        return TrackedRun(run)


RESULT_COLUMNS = (
    "test_error",
    "val_error",
    "final_val_error",
    "train_loss",
    "weight_norm",
    "diverged",
    "steps",
    "wall_s",
)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def runs_to_frame(runs: Iterable[Any]):
    """W&B runs (``wandb.Api().runs(...)`` objects or their dict export) -> the results.csv frame."""
    import pandas as pd

    rows = []
    for run in runs:
        config = dict(_get(run, "config", {}) or {})
        summary = dict(_get(run, "summary", {}) or {})
        summary = getattr(summary, "_json_dict", summary)
        state = str(_get(run, "state", "finished"))
        row = {
            "study": config.get("study") or _get(run, "group", ""),
            "experiment": config.get("name", ""),
            "optimizer": config.get("optimizer.name", ""),
            "decay": config.get("optimizer.decay", ""),
            "model": config.get("model.name", ""),
            "data": config.get("data.name", ""),
            "trial": config.get("trial"),
            "lr": config.get("lr", config.get("optimizer.lr")),
            "weight_decay": config.get("weight_decay", config.get("optimizer.weight_decay")),
            "seed": config.get("seed", config.get("train.seed")),
            "state": "COMPLETE" if state == "finished" and "test_error" in summary else "FAIL",
            "wandb_run_id": _get(run, "id", ""),
        }
        for key in RESULT_COLUMNS:
            row[key] = summary.get(key)
        rows.append(row)
    from harness.study import RESULTS_COLUMNS

    return pd.DataFrame(rows, columns=list(RESULTS_COLUMNS))
