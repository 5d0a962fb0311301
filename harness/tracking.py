"""Weights & Biases runs for trials: online, offline or off.

One W&B run per trial::

    tracker = Tracker(cfg.tracking, output_dir, study_name)
    run = tracker.start(run_name("adam/independent", 1e-3, 1e-4, 0), job_type="adam/independent",
                        config={**flat_trial_config, "lr": 1e-3, "weight_decay": 1e-4,
                                "seed": 0, "trial": 7})
    run.log(step, {"train_loss": ..., "val_error": ..., "lr_t": lr_t, "eta": eta_t,
                   "shrink": per_step_decay, "weight_norm": ||w||_2})   # every report
    run.finish(result.to_dict(), state="diverged" if result.diverged else "finished")

- ``project`` = ``tracking.project``, else ``WANDB_PROJECT``, else ``lrwd``; ``entity`` =
  ``tracking.entity``, else ``WANDB_ENTITY``, else the login's default (:func:`project_and_entity`),
  ``group`` = the study name, ``job_type`` = the variant (``<optimizer>/<decay>``), ``name`` =
  :func:`run_name` (``adam/independent lr=1e-3 wd=1e-4 s0``), tags = ``tracking.tags`` + the
  variant (+ the outcome when it is not ``finished``), ``config`` = the config flattened to
  dotted keys (:func:`flatten_config`) plus ``study``, secrets masked (:func:`mask_config`).
- History rows are whatever the trainer reports, at its report interval, with ``step`` = the
  optimizer step; the scheduled learning rate is ``lr_t`` (``lr`` is the cell's base rate, in the
  config). Summary = the final metrics, ``diverged`` (always a bool) and ``outcome``.
- Outcomes (:data:`OUTCOMES`): ``finished``, ``diverged`` and ``pruned`` close the run with exit
  code 0; ``failed`` and ``preempted`` with exit code 1 (W&B shows them as failed). Every outcome
  but ``finished`` is also added as a tag. ``with tracker.start(...) as run:`` closes the run as
  ``failed`` with the exception in ``summary["error"]`` when the block raises.

``tracking.mode`` (:func:`resolve_mode`): ``auto`` honours ``WANDB_MODE`` / ``WANDB_DISABLED``
when set, else is ``online`` with a login (``WANDB_API_KEY``, ``WANDB_IDENTITY_TOKEN_FILE`` or a
netrc entry for the W&B host) and ``offline`` without one, and falls back to offline for the rest
of the sweep if W&B cannot be reached; ``online`` without a login is refused up front (W&B would
otherwise prompt for a key); ``offline``; ``disabled`` (``wandb`` is never imported). Files go to
``<tracking.dir or output_dir>/wandb/{offline-,}run-<time>-<id>/``.

Several runs may be open at once in one process (population training): each is created with
``reinit="create_new"`` and only ever used through its own handle, never ``wandb.run``.

After a sweep, :meth:`Tracker.log_analysis` adds one run with ``job_type="analysis"`` holding
the sweep's figures (``wandb.Image``) and metrics (``wandb.Table``); its group is the sweep's
name (``sweep.study_name`` or ``name``), the prefix of its studies' names.

Secrets: W&B's metadata record (it copies ``sys.argv``, where ``storage.url=...`` may carry a
password), console capture (``output.log``), system stats, git and code saving are all switched
off; config values, tags and summary strings are masked with
:func:`harness.secrets.mask_secrets`. Reading runs back into a results frame:
:mod:`analysis.wandb_runs`.

Start-up cost: ``python -m harness.bench tracking`` (figures in docs/tracking.md).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from harness import registry
from harness.phases import phase
from harness.results import (  # noqa: F401 - flatten_config is part of this module's API
    ANALYSIS_JOB_TYPE,
    flatten_config,
)
from harness.results import plain_value as _plain
from harness.secrets import (  # noqa: F401 - wandb_host is part of this module's API
    _netrc_password,
    mask_config,
    mask_secrets,
    wandb_host,
)

log = logging.getLogger(__name__)

MODES = tuple(registry.TRACKING_MODES)
OUTCOMES = ("finished", "diverged", "pruned", "failed", "preempted")
_EXIT_CODE = {"finished": 0, "diverged": 0, "pruned": 0, "failed": 1, "preempted": 1}
# ------------------------------------------------------------------------------------------------
# Mode


def has_login() -> bool:
    """Whether W&B can authenticate without a prompt: an API key, an identity token, or netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    token = os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
    if token and Path(token).is_file():
        return True
    return _netrc_password(wandb_host()) is not None


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def resolve_mode(mode: str) -> str:
    """``tracking.mode`` -> ``online`` | ``offline`` | ``disabled``.

    ``auto``: ``WANDB_DISABLED=true`` or ``WANDB_MODE=disabled`` -> disabled;
    ``WANDB_MODE=offline`` (or ``dryrun``) -> offline; otherwise online when :func:`has_login`,
    else offline. Never prompts. Other modes are returned as they are.
    """
    if mode not in MODES:
        raise ValueError(
            f"tracking.mode: '{mode}' is not one of {', '.join(MODES)}; "
            "pass tracking.mode=auto|online|offline|disabled"
        )
    if mode != "auto":
        return mode
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if _truthy(os.environ.get("WANDB_DISABLED")) or env_mode == "disabled":
        return "disabled"
    if env_mode in ("offline", "dryrun"):
        return "offline"
    return "online" if has_login() else "offline"


# ------------------------------------------------------------------------------------------------
# Names and configs


def _short(x: float) -> str:
    """1e-3 -> '1e-3', 3.162e-4 -> '3.16e-4', 0.05 -> '5e-2', 0.5 -> '0.5', 0 -> '0'."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if 0.1 <= abs(x) < 1e3:
        return f"{x:.3g}"
    mantissa, exponent = f"{x:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def run_name(variant: str, lr: float, weight_decay: float, seed: int) -> str:
    """``adam/independent lr=1e-3 wd=1e-4 s0``: 3 significant digits, values below 0.1 as
    short exponents (``3.16e-4``, ``5e-2``), others plain (``0.316``, ``1``)."""
    return f"{variant} lr={_short(lr)} wd={_short(weight_decay)} s{int(seed)}"


# ------------------------------------------------------------------------------------------------
# Runs


class TrackingError(RuntimeError):
    """W&B could not start a run; the message is one line naming the field and the fix."""


class TrackedRun:
    """A trial's W&B run, or a no-op stand-in (``id is None``) when tracking is disabled."""

    def __init__(self, run: Any = None, mode: str = "disabled", tracker: Tracker | None = None):
        self._run = run
        self._tracker = tracker
        self.mode = mode if run is not None else "disabled"
        self.id: str | None = run.id if run is not None else None
        self.name: str | None = run.name if run is not None else None
        self.dir: Path | None = Path(run.dir).parent if run is not None else None
        self.finished = run is None
        self.outcome: str | None = None
        self._warned = False
        self._last_step: int | None = None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One history row at optimizer step ``step`` (steps must not decrease within a run)."""
        if self.finished:
            return
        row = {str(k): _plain(v) for k, v in metrics.items()}
        try:
            self._run.log(row, step=int(step))
            self._last_step = int(step)
        except Exception as exc:  # noqa: BLE001 - tracking never stops training
            if not self._warned:
                log.warning("W&B run %s: log failed: %s", self.id, mask_secrets(str(exc)))
                self._warned = True

    def finish(self, summary: Mapping[str, Any] | None = None, state: str = "finished") -> None:
        """Write ``summary`` (+ ``diverged``, ``outcome``) and close the run.

        ``state`` in :data:`OUTCOMES`: exit code 0 for finished/diverged/pruned, 1 for
        failed/preempted; every state but ``finished`` is added as a tag. Idempotent.
        """
        if state not in OUTCOMES:
            raise ValueError(f"state: '{state}' is not one of {', '.join(OUTCOMES)}")
        if self.finished:
            return
        self.finished = True
        self.outcome = state
        if self._tracker is not None:
            self._tracker._open.discard(self)
        values = {str(k): _summary_value(v) for k, v in (summary or {}).items()}
        values["diverged"] = bool(values.get("diverged")) or state == "diverged"
        values["outcome"] = state
        try:
            if self._last_step is not None:
                # W&B holds the last row until the step moves on or the run ends, and then
                # copies its values into the summary: commit it first, so that the final
                # metrics below (best val_error, ...) are not overwritten by the last report.
                self._run.log({}, step=self._last_step, commit=True)
            self._run.summary.update(values)
            if state != "finished":
                tags = tuple(self._run.tags or ())
                if state not in tags:
                    self._run.tags = (*tags, state)
            self._run.finish(exit_code=_EXIT_CODE[state])
        except Exception as exc:  # noqa: BLE001 - a tracking failure must not lose the trial
            log.warning("W&B run %s: finish failed: %s", self.id, mask_secrets(str(exc)))

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.finish({}, "finished")
        else:
            reason = mask_secrets(f"{type(exc).__name__}: {exc}")[:500]
            self.finish({"error": reason}, "failed")
        return False

    def __repr__(self) -> str:
        return f"TrackedRun(id={self.id!r}, name={self.name!r}, mode={self.mode!r})"


def _summary_value(value: Any) -> Any:
    value = _plain(value)
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, Mapping):
        return mask_config(dict(value))
    return value


def _wandb_settings(wandb: Any) -> Any:
    return wandb.Settings(
        silent=True,  # no banners, no "wandb sync" hints, no progress output
        quiet=True,
        console="off",  # no output.log (it would copy whatever the trainer prints)
        x_disable_meta=True,  # no metadata record: it holds sys.argv (storage.url=...)
        x_disable_stats=True,  # no system-metrics sampler per run
        x_save_requirements=False,  # no pip freeze per run
        disable_git=True,
        save_code=False,
    )


DEFAULT_PROJECT = "lrwd"


def project_and_entity(cfg: Any) -> tuple[str, str | None]:
    """``(project, entity)`` of the runs: ``tracking.project`` / ``tracking.entity`` when set,
    else ``WANDB_PROJECT`` / ``WANDB_ENTITY`` from the environment, else ``lrwd`` / the login's
    default entity (``None``)."""
    project = str(getattr(cfg, "project", "") or "").strip()
    entity = str(getattr(cfg, "entity", "") or "").strip()
    project = project or os.environ.get("WANDB_PROJECT", "").strip() or DEFAULT_PROJECT
    entity = entity or os.environ.get("WANDB_ENTITY", "").strip()
    return project, entity or None


class Tracker:
    """Opens one W&B run per trial of one study. ``cfg`` is a ``TrackingConfig`` (or any object
    with ``mode, project, entity, tags, dir``)."""

    def __init__(self, cfg: Any, output_dir: str | Path, study_name: str) -> None:
        from harness.errors import ConfigError

        self.requested = str(cfg.mode)
        self.mode = resolve_mode(self.requested)
        if self.mode == "online" and self.requested == "online" and not has_login():
            raise ConfigError(
                "tracking.mode: online, but no W&B login (no WANDB_API_KEY, identity token or "
                f"netrc entry for {urlsplit(wandb_host()).netloc}); run `wandb login` or set "
                "WANDB_API_KEY, or pass tracking.mode=offline and `wandb sync` later"
            )
        self.project, self.entity = project_and_entity(cfg)
        self.tags = [str(t) for t in (getattr(cfg, "tags", None) or [])]
        self.dir = Path(getattr(cfg, "dir", "") or output_dir).expanduser().resolve()
        self.study_name = study_name
        self._open: set[TrackedRun] = set()

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    @property
    def wandb_dir(self) -> Path:
        """The folder W&B writes into: ``<tracking.dir or output_dir>/wandb``."""
        return self.dir / "wandb"

    def sync_command(self) -> str:
        """The command that uploads this tracker's offline runs (to print at the end)."""
        return f"wandb sync {self.wandb_dir}/offline-run-*"

    def start(
        self,
        name: str,
        job_type: str,
        config: Mapping[str, Any],
        tags: Iterable[str] = (),
    ) -> TrackedRun:
        """Open a run: group = the study, ``config`` flattened + ``study``, secrets masked."""
        if not self.enabled:
            return TrackedRun(None)
        os.environ.setdefault("WANDB_SILENT", "true")
        if self.mode == "offline":
            # no W&B usage telemetry from runs that stay on this machine: it costs each history
            # row most of its CPU time (an explicit WANDB_ERROR_REPORTING wins)
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        with phase("imports"):
            import wandb

        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(
                f"tracking.dir: cannot create {self.dir} ({exc.strerror or exc}); "
                "pass tracking.dir=<a writable folder>"
            ) from None
        all_tags: list[str] = []
        for tag in (*self.tags, job_type, *tags):
            tag = mask_secrets(str(tag))[:64]
            if tag and tag not in all_tags:
                all_tags.append(tag)
        kwargs = dict(
            project=self.project,
            entity=self.entity,
            group=self.study_name,
            job_type=job_type,
            name=mask_secrets(name),
            tags=all_tags,
            config=mask_config({**flatten_config(config), "study": self.study_name}),
            dir=str(self.dir),
            reinit="create_new",
        )
        try:
            run = wandb.init(mode=self.mode, settings=_wandb_settings(wandb), **kwargs)
        except Exception as exc:  # noqa: BLE001 - wandb raises CommError, UsageError, ...
            reason = mask_secrets(str(exc)).splitlines()[0][:300] if str(exc) else ""
            if self.mode == "online" and self.requested == "auto":
                log.warning(
                    "W&B unreachable (%s: %s); logging offline for the rest of this sweep, "
                    "upload later with: %s",
                    type(exc).__name__,
                    reason,
                    self.sync_command(),
                )
                self.mode = "offline"
                run = wandb.init(mode="offline", settings=_wandb_settings(wandb), **kwargs)
            else:
                raise TrackingError(
                    f"tracking.mode: wandb.init ({self.mode}) failed: {type(exc).__name__}: "
                    f"{reason}; pass tracking.mode=offline (and `wandb sync` later) or "
                    "tracking.mode=disabled"
                ) from None
        tracked = TrackedRun(run, self.mode, self)
        self._open.add(tracked)
        return tracked

    def log_analysis(
        self,
        name: str,
        images: Mapping[str, str | Path],
        tables: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
    ) -> TrackedRun:
        """One run with ``job_type="analysis"`` in this tracker's group: each of ``images``
        (``{key: png path}``) as a ``wandb.Image`` under ``figures/<key>`` and each of ``tables``
        (``{key: DataFrame}``) as a ``wandb.Table`` under ``tables/<key>``, in one history row
        (so also in the summary). A no-op stand-in when tracking is disabled."""
        run = self.start(name, ANALYSIS_JOB_TYPE, dict(config or {}))
        if run.id is None:
            return run
        import wandb

        row: dict[str, Any] = {}
        for key, path in images.items():
            row[f"figures/{key}"] = wandb.Image(str(path), caption=str(key))
        for key, frame in tables.items():
            row[f"tables/{key}"] = wandb.Table(dataframe=frame)
        run.log(0, row)
        run.finish({}, "finished")
        return run

    def finish_all(self, state: str = "failed", summary: Mapping[str, Any] | None = None) -> int:
        """Close every run still open (e.g. on an interrupt). Returns how many were closed."""
        runs = list(self._open)
        for run in runs:
            run.finish(summary or {}, state)
        return len(runs)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.finish_all("failed", {"error": "run left open by the driver"})
        else:
            self.finish_all("failed", {"error": mask_secrets(f"{exc_type.__name__}: {exc}")[:500]})
        return False
