"""Optuna studies for lr x weight-decay sweeps: variants, the grid, storages, the worker loop.

The queue protocol (enqueue, claim, lease, reclaim, hand back) lives in :mod:`harness.workqueue`.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import FloatDistribution, IntDistribution

from harness.config import ConfigError
from harness.results import (  # noqa: F401 - re-exported for callers
    RESULT_KEYS,
    RESULTS_COLUMNS,
    Preempted,
    result_attrs,
    write_results,
)
from harness.storage import open_storage, storage_url  # noqa: F401 - re-exported
from harness.workqueue import (  # noqa: F401 - the queue's names, re-exported for callers
    CELL_KEY,
    DONE_STATES,
    LEASE_KEY,
    CellStatus,
    Claim,
    Heartbeat,
    WaitingQueue,
    cell_counts,
    cell_key,
    enqueue_cells,
    enqueue_slots,
    fail_claim,
    finish_claim,
    is_stale,
    log_training,
    owner_id,
    pending,
    prune_claim,
    reclaim_stale,
    start_claim,
)

log = logging.getLogger("lrwd.study")


optuna.logging.set_verbosity(optuna.logging.WARNING)


# --------------------------------------------------------------------------------------------
# Variants and names


@dataclass(frozen=True)
class Variant:
    """One optimizer variant: a family and a decay form, e.g. ``adam/independent``."""

    optimizer: str
    decay: str
    model: str = ""  # set when the run crosses sweep.models with the variants

    @property
    def key(self) -> str:
        return f"{self.optimizer}/{self.decay}"

    @property
    def label(self) -> str:
        """``mlp_bn:adam/l2`` when a model is part of the variant, else ``adam/l2``."""
        return f"{self.model}:{self.key}" if self.model else self.key

    @classmethod
    def parse(cls, text: str) -> Variant:
        parts = str(text).split("/")
        if len(parts) != 2 or not all(parts):
            raise ConfigError(
                f"sweep.variants: '{text}' is not 'optimizer/decay'; write e.g. adam/independent"
            )
        return cls(parts[0], parts[1])


def variants(cfg: DictConfig) -> list[Variant]:
    """The variants a run covers: ``sweep.variants`` or the single configured optimizer."""
    listed = list(cfg.sweep.get("variants") or [])
    base = [Variant.parse(v) for v in listed] or [Variant(cfg.optimizer.name, cfg.optimizer.decay)]
    models = list(cfg.sweep.get("models") or [])
    if not models:
        return base
    return [Variant(v.optimizer, v.decay, str(m)) for m in models for v in base]


def study_name(cfg: DictConfig, variant: Variant) -> str:
    base = cfg.sweep.study_name or cfg.name
    if variant.model:
        return f"{base}-{variant.model}-{variant.optimizer}-{variant.decay}"
    return f"{base}-{variant.optimizer}-{variant.decay}"


def model_group(name: str) -> dict[str, Any]:
    """The ``conf/model/<name>.yaml`` option merged over the schema defaults."""
    from harness.config import CONF_DIR, ModelConfig

    path = Path(CONF_DIR) / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"sweep.models: no model option '{name}' ({path} does not exist)")
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
    return OmegaConf.to_container(merged, resolve=True)


def _twins(a: str, b: str) -> bool:
    return a.removesuffix("_bn") == b.removesuffix("_bn")


def variant_config(cfg: DictConfig, variant: Variant) -> DictConfig:
    """A copy of ``cfg`` for one variant: its optimizer family and decay (family defaults kept
    from cfg); when the variant names a model, that option of ``conf/model/`` (width and depth
    kept from cfg for the model's BatchNorm twin); ``sweep.ranges`` applied to the grid."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.optimizer.name = variant.optimizer
    out.optimizer.decay = variant.decay
    if variant.model and variant.model != out.model.name:
        current = dict(out.model)
        out.model = model_group(variant.model)
        if _twins(current["name"], variant.model):
            # mlp <-> mlp_bn, cnn <-> cnn_bn: the same network with and without BatchNorm, so
            # the configured width/depth carry over (model.width=128 applies to both).
            out.model.width, out.model.depth = current["width"], current["depth"]
    ranges = out.sweep.get("ranges") or {}
    specific = f"{variant.optimizer}-{variant.decay}"
    for key in (variant.decay, variant.optimizer, variant.key, specific):  # most specific wins
        for axis, r in (ranges.get(key) or {}).items():
            out.sweep[axis] = {"min": float(r["min"]), "max": float(r["max"]), "num": int(r["num"])}
    return out


# --------------------------------------------------------------------------------------------
# The grid


def log_range(lo: float, hi: float, num: int) -> list[float]:
    """``num`` log-spaced values from ``lo`` to ``hi`` inclusive, rounded to 6 significant digits."""
    if num == 1:
        return [float(f"{lo:.6g}")]
    values = np.geomspace(lo, hi, num)
    return [float(f"{v:.6g}") for v in values]


def grid_axes(sweep: DictConfig) -> tuple[list[float], list[float], list[int]]:
    lrs = log_range(sweep.lr.min, sweep.lr.max, sweep.lr.num)
    wds = log_range(sweep.weight_decay.min, sweep.weight_decay.max, sweep.weight_decay.num)
    if sweep.include_zero_wd:
        wds = [0.0] + wds
    seeds = list(range(sweep.seeds))
    return lrs, wds, seeds


def grid_cells(sweep: DictConfig) -> list[dict[str, Any]]:
    """Every (lr, weight_decay, seed) cell, seed-major so early results cover the whole grid."""
    lrs, wds, seeds = grid_axes(sweep)
    return [{"lr": lr, "weight_decay": wd, "seed": s} for s in seeds for lr in lrs for wd in wds]


def distributions(sweep: DictConfig) -> dict[str, Any]:
    lr = FloatDistribution(sweep.lr.min, sweep.lr.max, log=True)
    if sweep.include_zero_wd:
        wd = FloatDistribution(0.0, sweep.weight_decay.max)
    else:
        wd = FloatDistribution(sweep.weight_decay.min, sweep.weight_decay.max, log=True)
    return {"lr": lr, "weight_decay": wd, "seed": IntDistribution(0, max(sweep.seeds - 1, 0))}


# --------------------------------------------------------------------------------------------
# Environment recorded on every trial


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Git revision of the harness checkout and the versions of the packages that matter."""
    import importlib.metadata as md

    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        if rev and dirty:
            rev += "-dirty"
    except (OSError, subprocess.SubprocessError):
        rev = ""
    versions = {}
    for pkg in ("lrwd", "torch", "optuna", "hydra-core", "wandb", "numpy", "mnist1d"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"git_rev": rev or "unknown", "versions": versions}


# --------------------------------------------------------------------------------------------
# Preparing studies (driver side, one process)


def create_study(
    cfg: DictConfig, storage, variant: Variant, *, load_only: bool = False
) -> optuna.Study:
    name = study_name(cfg, variant)
    sampler = make_sampler(cfg)
    pruner = make_pruner(cfg)
    if load_only:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="minimize",
        load_if_exists=True,
    )
    lrs, wds, seeds = grid_axes(cfg.sweep)
    attrs = {
        "experiment": cfg.name,
        "optimizer": variant.optimizer,
        "decay": variant.decay,
        "grid": {"lr": lrs, "weight_decay": wds, "seed": seeds},
        "model": cfg.model.name,
        "data": cfg.data.name,
        "sampler": cfg.sweep.sampler,
    }
    existing = study.user_attrs
    for key, value in attrs.items():
        if existing.get(key) != value:
            study.set_user_attr(key, value)
    return study


def sampler_seed(cfg: DictConfig, n_trials: int = 0) -> int:
    """The sampler seed of this worker: ``train.seed`` mixed with who draws and when.

    Two workers (or a worker and its own resumed run) seeded alike would draw the same points
    from one storage. The seed mixes ``train.seed``, the number of trials the study had when
    the worker joined it, and the worker: ``$LRWD_WORKER_INDEX`` (set by the local pool),
    else the Slurm array task and restart count, else this process's host and pid.
    """
    import zlib

    index = os.environ.get("LRWD_WORKER_INDEX")
    if index is None and os.environ.get("SLURM_ARRAY_TASK_ID") is not None:
        index = (
            f"slurm{os.environ['SLURM_ARRAY_TASK_ID']}."
            f"{os.environ.get('SLURM_RESTART_COUNT', '0')}"
        )
    if index is None:
        index = owner_id()
    text = f"{int(cfg.train.seed)}|{int(n_trials)}|{index}"
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def make_sampler(cfg: DictConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    kind = cfg.sweep.sampler
    seed = int(cfg.train.seed) if seed is None else int(seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def enqueue_grid(study: optuna.Study, cfg: DictConfig) -> CellStatus:
    """Enqueue every grid cell that has no finished, waiting or live trial. Driver only."""
    return enqueue_cells(
        study, grid_cells(cfg.sweep), distributions(cfg.sweep), float(cfg.sweep.heartbeat_s)
    )


def enqueue_study(study: optuna.Study, cfg: DictConfig) -> CellStatus:
    """The grid's cells, or a sampled study's budget as slots. Driver only."""
    if cfg.sweep.sampler == "grid":
        return enqueue_grid(study, cfg)
    return enqueue_slots(study, sampled_budget(cfg), float(cfg.sweep.heartbeat_s))


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    kind = cfg.sweep.pruner
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


TRIAL_GROUPS = ("name", "optimizer", "model", "data", "schedule", "train")


def trial_plain(cfg: DictConfig) -> dict[str, Any]:
    """The groups that define a trial, as plain resolved containers (computed once a variant)."""
    full = OmegaConf.to_container(cfg, resolve=True)
    return {k: full[k] for k in TRIAL_GROUPS if k in full}


def trial_config(
    cfg: DictConfig | dict[str, Any], params: dict[str, Any]
) -> tuple[DictConfig, dict[str, Any]]:
    """(trial config, plain record of it) for one cell: lr, weight decay and seed set."""
    import copy

    plain = copy.deepcopy(cfg if isinstance(cfg, dict) else trial_plain(cfg))
    plain["optimizer"]["lr"] = float(params["lr"])
    plain["optimizer"]["weight_decay"] = float(params["weight_decay"])
    plain["train"]["seed"] = int(params["seed"])
    return OmegaConf.create(plain), plain


def trial_record_config(plain: dict[str, Any]) -> dict[str, Any]:
    """The trial's resolved config as stored on the trial and the W&B run (secrets masked)."""
    from harness.secrets import mask_config

    return mask_config(plain)


@dataclass
class WorkerStats:
    completed: int = 0
    failed: int = 0
    pruned: int = 0
    lost: int = 0  # trials failed under us (stale) whose results were discarded
    preempted: bool = False
    per_variant: dict[str, int] = field(default_factory=dict)


TrainBatch = Callable[[list[DictConfig], list[Callable[[int, dict], None]]], list[Any]]


def sampled_budget(cfg: DictConfig) -> int:
    n = int(cfg.sweep.n_trials)
    if n > 0:
        return n
    lrs, wds, seeds = grid_axes(cfg.sweep)
    return len(lrs) * len(wds) * len(seeds)


# --------------------------------------------------------------------------------------------
# The worker loop


class _WorkerState:
    """What a running worker holds, so a signal handler can hand it back."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.held: list[tuple[optuna.Study, Claim]] = []


_CURRENT: _WorkerState | None = None


def request_stop() -> None:
    """Ask the running worker to stop taking cells; its current trials end at the next report."""
    if _CURRENT is not None:
        _CURRENT.stop.set()


def handback() -> int:
    """Fail and re-enqueue every trial the running worker holds (preemption, time limit)."""
    if _CURRENT is None:
        return 0
    _CURRENT.stop.set()
    n = 0
    for study, claim in list(_CURRENT.held):
        fail_claim(study, claim, "preempted", requeue_cell=True)
        n += 1
    _CURRENT.held.clear()
    return n


def population_size(cfg: DictConfig) -> int:
    """``sweep.population`` as an int; ``auto`` asks the population trainer (1 if it is absent)."""
    value = cfg.sweep.population
    if isinstance(value, str):
        if value != "auto":
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(
                    f"sweep.population: '{value}' is not an int or 'auto'; use e.g. 1, 16 or auto"
                ) from None
        else:
            try:
                from harness.population import auto_population_size
            except ImportError:
                return 1
            return int(auto_population_size(cfg))
    return max(int(value), 1)


def _train_fn(p: int):
    if p > 1:
        from harness.population import run_population

        def population(cfgs, reports):
            return run_population(cfgs, reports)

        return population
    from harness.train import run_trial

    def sequential(cfgs, reports):
        out = []
        for c, r in zip(cfgs, reports):
            try:
                out.append(run_trial(c, report=r))
            except (Preempted, KeyboardInterrupt):
                raise
            except Exception as exc:  # noqa: BLE001 - recorded on the trial
                out.append(exc)
        return out

    return sequential


def run_worker(
    cfg: DictConfig,
    *,
    on_result: Callable[[str, Claim, Any], None] | None = None,
    train: TrainBatch | None = None,
) -> int:
    """Join the studies named by ``cfg`` and train cells until none are left. Returns 0.

    ``cfg`` is fully resolved (the driver has set ``output_dir`` and ``sweep.variants``).
    Studies must exist (the driver creates and enqueues them); a worker never enqueues a new
    cell except to hand back one it holds or one whose stale trial it failed.
    """
    global _CURRENT
    from harness.tracking import Tracker

    output_dir = cfg.output_dir
    storage = open_storage(cfg, output_dir)
    heartbeat_s = float(cfg.sweep.heartbeat_s)
    beat = Heartbeat(storage, heartbeat_s)
    state = _WorkerState()
    _CURRENT = state
    stats = WorkerStats()
    p = population_size(cfg)
    train = train or _train_fn(p)
    pruning = cfg.sweep.pruner != "none"
    env = environment()
    try:
        for variant in variants(cfg):
            vcfg = variant_config(cfg, variant)
            study = create_study(vcfg, storage, variant, load_only=True)
            sampled = vcfg.sweep.sampler != "grid"
            if sampled:
                n_before = len(study.get_trials(deepcopy=False))
                study.sampler = make_sampler(vcfg, sampler_seed(vcfg, n_before))
            tracker = Tracker(vcfg.tracking, output_dir, study.study_name)
            queue = WaitingQueue(study, distributions(vcfg.sweep))
            vplain = trial_plain(vcfg)
            while not state.stop.is_set():
                # A sampled study draws one point at a time, so that TPE sees every result so far.
                claims = queue.claim(1 if sampled else p)
                if not claims:
                    if reclaim_stale(study, heartbeat_s):
                        continue
                    waiting, running = pending(study, heartbeat_s)
                    if waiting == 0 and running == 0:
                        break
                    time.sleep(min(1.0, heartbeat_s / 4))
                    continue
                _run_claims(
                    study,
                    vplain,
                    variant,
                    claims,
                    train,
                    tracker,
                    beat,
                    state,
                    stats,
                    pruning,
                    env,
                    on_result,
                )
    except KeyboardInterrupt:
        handback()
        raise
    finally:
        beat.close()
        _CURRENT = None
    log.info(
        "worker %s done: %d complete, %d failed, %d pruned, %d lost",
        owner_id(),
        stats.completed,
        stats.failed,
        stats.pruned,
        stats.lost,
    )
    return 0


def _run_claims(
    study, vplain, variant, claims, train, tracker, beat, state, stats, pruning, env, on_result
) -> None:
    from harness.tracking import run_name

    started: list[Claim] = []
    cfgs, reports, runs = [], [], []
    for claim in claims:
        tcfg, plain = trial_config(vplain, claim.params)
        record_cfg = trial_record_config(plain)
        beat.add(claim.trial._trial_id)
        state.held.append((study, claim))
        ok = start_claim(
            claim,
            {
                "optimizer": variant.optimizer,
                "decay": variant.decay,
                "config": record_cfg,
                "git_rev": env["git_rev"],
                "versions": env["versions"],
            },
        )
        if not ok:  # failed under us (stale) before it started: another worker has the cell
            beat.discard(claim.trial._trial_id)
            state.held.remove((study, claim))
            stats.lost += 1
            log.warning("trial %d was taken from this worker before it started", claim.number)
            continue
        name = run_name(
            variant.label, claim.params["lr"], claim.params["weight_decay"], claim.params["seed"]
        )
        run = tracker.start(
            name,
            job_type=variant.key,
            config={
                **_flatten(record_cfg),
                **claim.params,
                "trial": claim.number,
                "study": study.study_name,
            },
        )
        if run.id:
            start_claim(claim, {"wandb_run_id": run.id})
        started.append(claim)
        cfgs.append(tcfg)
        runs.append(run)
        reports.append(_report_hook(claim, run, state, pruning))
    if not started:
        return
    log_training(study.study_name, started)
    try:
        results = train(cfgs, reports)
    except Preempted:
        results = [Preempted()] * len(started)
    for claim, run, result in zip(started, runs, results):
        beat.discard(claim.trial._trial_id)
        if (study, claim) in state.held:
            state.held.remove((study, claim))
        if isinstance(result, optuna.TrialPruned):
            prune_claim(study, claim)
            run.finish({"pruned": True}, state="pruned")
            stats.pruned += 1
        elif isinstance(result, Preempted):
            fail_claim(study, claim, "preempted", requeue_cell=True)
            run.finish({"preempted": True}, state="preempted")
            stats.preempted = True
        elif isinstance(result, BaseException):
            reason = f"{type(result).__name__}: {result}"
            log.error("trial %d failed: %s", claim.number, reason)
            fail_claim(study, claim, reason, requeue_cell=False)
            run.finish({"error": reason[:500]}, state="failed")
            stats.failed += 1
        else:
            rec = result.to_dict()
            if finish_claim(study, claim, result_attrs(rec)):
                stats.completed += 1
            else:
                stats.lost += 1
            run.finish(rec, state="diverged" if rec.get("diverged") else "finished")
        if on_result is not None:
            on_result(study.study_name, claim, result)


def _report_hook(claim: Claim, run, state: _WorkerState, pruning: bool):
    def report(step: int, metrics: dict) -> None:
        if state.stop.is_set():
            raise Preempted()
        run.log(step, metrics)
        if pruning and "val_error" in metrics:
            claim.trial.report(float(metrics["val_error"]), step)
            if claim.trial.should_prune():
                raise optuna.TrialPruned()

    return report


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out
