"""The worker loop: join a sweep's studies, claim cells, train them, record the results.

Every worker (the in-process one of ``python -m harness.sweep``, the local pool, a Slurm array
task, ``python -m harness.worker``) runs :func:`run_worker` on the same resolved config. A claim
of P cells is trained as one population (``sweep.population``); results, failures, pruning and
preemption are written back through :mod:`harness.sweep.queue`; each trial is one W&B run.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from harness.errors import ConfigError
from harness.phases import flush as flush_phases
from harness.phases import phase
from harness.results import Preempted, layer_attrs, result_attrs
from harness.storage import open_storage
from harness.sweep.plan import (
    create_study,
    distributions,
    make_sampler,
    planner,
    sampler_seed,
    variant_config,
    variants,
)
from harness.sweep.queue import (
    Claim,
    Heartbeat,
    WaitingQueue,
    fail_claim,
    finish_claim,
    log_training,
    owner_id,
    pending,
    prune_claim,
    reclaim_stale,
    start_claim,
    trial_id,
)

log = logging.getLogger("lrwd.worker")


# --------------------------------------------------------------------------------------------
# Environment recorded on every trial


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """Git revision of the harness checkout and the versions of the packages that matter."""
    import importlib.metadata as md

    root = Path(__file__).resolve().parents[2]
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
    preempted: int = 0  # trials handed back


TrainBatch = Callable[[list[DictConfig], list[Callable[[int, dict], None]]], list[Any]]


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
    """``sweep.population`` as an int; ``auto`` asks the population trainer."""
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
            from harness.population import auto_population_size

            return int(auto_population_size(cfg))
    return max(int(value), 1)


def _train_fn(p: int):
    """How claimed cells train: as populations (``p > 1``) or one trial at a time; each
    returns one result or exception per cell."""
    from harness.population import run_population, run_sequential

    return run_population if p > 1 else run_sequential


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
    with phase("study"):
        storage = open_storage(cfg, output_dir)
    heartbeat_s = float(cfg.sweep.heartbeat_s)
    beat = Heartbeat(storage, heartbeat_s)
    state = _WorkerState()
    _CURRENT = state
    stats = WorkerStats()
    with phase("imports"):
        p = population_size(cfg)
        train = train or _train_fn(p)
    pruning = cfg.sweep.pruner != "none"
    with phase("claims"):
        env = environment()
    try:
        for variant in variants(cfg):
            vcfg = variant_config(cfg, variant)
            with phase("study"):
                study = create_study(vcfg, storage, variant, load_only=True)
            plan = planner(vcfg)
            sampled = plan is None
            # sweep=valley: this worker also opens the refinement rounds that become due
            tracer = None if plan is None else plan.tracer(study, vcfg)
            if sampled:
                n_before = len(study.get_trials(deepcopy=False))
                study.sampler = make_sampler(vcfg, sampler_seed(vcfg, n_before))
            tracker = Tracker(vcfg.tracking, output_dir, study.study_name)
            queue = WaitingQueue(study, distributions(vcfg.sweep))
            vplain = trial_plain(vcfg)
            while not state.stop.is_set():
                # A sampled study draws one point at a time, so that TPE sees every result so far.
                with phase("claims"):
                    claims = queue.claim(1 if sampled else p)
                    stale = not claims and reclaim_stale(study, heartbeat_s)
                if not claims:
                    if stale:
                        continue
                    if tracer is not None and tracer.advance():
                        continue
                    with phase("claims"):
                        waiting, running = pending(study, heartbeat_s)
                    if waiting == 0 and running == 0 and not (tracer and tracer.held):
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
                if tracer is not None:
                    tracer.advance()
    except KeyboardInterrupt:
        handback()
        raise
    finally:
        beat.close()
        _CURRENT = None
        flush_phases()
    log.info(
        "worker %s done: %d complete, %d failed, %d pruned, %d lost, %d handed back",
        owner_id(),
        stats.completed,
        stats.failed,
        stats.pruned,
        stats.lost,
        stats.preempted,
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
        beat.add(trial_id(claim.trial))
        state.held.append((study, claim))
        with phase("claims"):
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
            beat.discard(trial_id(claim.trial))
            state.held.remove((study, claim))
            stats.lost += 1
            log.warning("trial %d was taken from this worker before it started", claim.number)
            continue
        name = run_name(
            variant.label, claim.params["lr"], claim.params["weight_decay"], claim.params["seed"]
        )
        with phase("wandb"):
            run = tracker.start(
                name,
                job_type=variant.key,
                config={
                    **record_cfg,  # flattened to dotted keys by the tracker
                    **claim.params,
                    "trial": claim.number,
                    "study": study.study_name,
                    **_round(claim),
                },
            )
        if run.id:
            with phase("claims"):
                start_claim(claim, {"wandb_run_id": run.id})
        started.append(claim)
        cfgs.append(tcfg)
        runs.append(run)
        reports.append(_report_hook(study.study_name, claim, run, state, pruning))
    if not started:
        return
    try:
        with phase("training"):
            results = train(cfgs, reports)
    except Preempted:
        results = [Preempted()] * len(started)
    for claim, run, result in zip(started, runs, results):
        beat.discard(trial_id(claim.trial))
        if (study, claim) in state.held:
            state.held.remove((study, claim))
        if isinstance(result, optuna.TrialPruned):
            summary, outcome = {"pruned": True}, "pruned"
            with phase("results"):
                prune_claim(study, claim)
            stats.pruned += 1
        elif isinstance(result, Preempted):
            summary, outcome = {"preempted": True}, "preempted"
            with phase("results"):
                fail_claim(study, claim, "preempted", requeue_cell=True)
            stats.preempted += 1
        elif isinstance(result, BaseException):
            reason = f"{type(result).__name__}: {result}"
            log.error("trial %d failed: %s", claim.number, reason)
            summary, outcome = {"error": reason[:500]}, "failed"
            with phase("results"):
                fail_claim(study, claim, reason, requeue_cell=False)
            stats.failed += 1
        else:
            rec = result.to_dict()
            summary, outcome = rec, "diverged" if rec.get("diverged") else "finished"
            with phase("results"):
                done = finish_claim(study, claim, result_attrs(rec) | layer_attrs(result))
            if done:
                stats.completed += 1
            else:
                stats.lost += 1
        with phase("wandb"):
            run.finish(summary, state=outcome)
        if on_result is not None:
            on_result(study.study_name, claim, result)


def _round(claim: Claim) -> dict[str, int]:
    """``{"round": r}`` for a valley tracer's cell (its W&B run records it), else nothing."""
    r = claim.trial.user_attrs.get("round")
    return {} if r is None else {"round": int(r)}


def _report_hook(study_name: str, claim: Claim, run, state: _WorkerState, pruning: bool):
    """The trial's report hook; the trainer calls its ``started()`` where training starts, each
    time it does (the training log, :func:`harness.sweep.queue.log_training`)."""

    def report(step: int, metrics: dict) -> None:
        if state.stop.is_set():
            raise Preempted()
        with phase("wandb"):
            run.log(step, metrics)
        if pruning and "val_error" in metrics:
            claim.trial.report(float(metrics["val_error"]), step)
            if claim.trial.should_prune():
                raise optuna.TrialPruned()

    report.started = lambda: log_training(study_name, [claim])  # type: ignore[attr-defined]
    return report
