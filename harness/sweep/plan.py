"""What a sweep runs: its variants, their grids, one Optuna study each, samplers and pruners.

A *variant* is an optimizer family with a decay form (``adam/independent``), optionally crossed
with a model (``mlp_bn:adam/l2``) and with an arm of ``sweep.arms`` (``n2000:adam/l2``: named
overrides such as another training-set size). Each variant gets a study named
``<name>-<optimizer>-<decay>`` (``<name>[-<arm>][-<model>]-<optimizer>-<decay>`` with arms and
``sweep.models``); an arm's studies record the experiment ``<name>-<arm>``. Grid sweeps enqueue every
(lr, weight decay, seed) cell; random and TPE sweeps enqueue their budget as slots
(:mod:`harness.sweep.queue`); the valley tracer enqueues its coarse grid, and its workers the
refinement rounds (:mod:`harness.sweep.valley`). Each ``sweep.sampler`` is a
``harness.registry.SamplerSpec`` entry: its Optuna sampler and, for the grid and the valley
tracer, its planner (:class:`GridPlanner`, :class:`ValleyPlanner`).
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import FloatDistribution, IntDistribution

from harness import registry
from harness.errors import ConfigError
from harness.secrets import real_url
from harness.storage import check_connections, open_storage
from harness.sweep import valley
from harness.sweep.queue import (
    CellStatus,
    enqueue_cells,
    enqueue_slots,
    owner_id,
)

log = logging.getLogger("lrwd.sweep")

optuna.logging.set_verbosity(optuna.logging.WARNING)

# The value workers tell Optuna for a finished cell (queue.finish_claim): the best validation
# error. Each study names it, so optuna-dashboard and study.trials_dataframe() show the name.
OBJECTIVE = "val_error"


# --------------------------------------------------------------------------------------------
# Variants and names


@dataclass(frozen=True)
class Variant:
    """One optimizer variant: a family and a decay form, e.g. ``adam/independent``."""

    optimizer: str
    decay: str
    model: str = ""  # set when the run crosses sweep.models with the variants
    arm: str = ""  # set when the run crosses sweep.arms with the variants

    @property
    def key(self) -> str:
        return f"{self.optimizer}/{self.decay}"

    @property
    def label(self) -> str:
        """``mlp_bn:adam/l2`` when a model is part of the variant, else ``adam/l2``; an arm
        comes first (``n2000:mlp_bn:adam/l2``)."""
        label = f"{self.model}:{self.key}" if self.model else self.key
        return f"{self.arm}:{label}" if self.arm else label

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
    if models:
        base = [Variant(v.optimizer, v.decay, str(m)) for m in models for v in base]
    arms = [str(a) for a in (cfg.sweep.get("arms") or {})]
    if not arms:
        return base
    return [Variant(v.optimizer, v.decay, v.model, a) for a in arms for v in base]


def study_name(cfg: DictConfig, variant: Variant) -> str:
    base = cfg.sweep.study_name or cfg.name
    if variant.arm:
        base = f"{base}-{variant.arm}"
    if variant.model:
        return f"{base}-{variant.model}-{variant.optimizer}-{variant.decay}"
    return f"{base}-{variant.optimizer}-{variant.decay}"


def experiment_name(cfg: DictConfig, variant: Variant) -> str:
    """The experiment a variant's study records: ``name``, or ``<name>-<arm>`` for an arm."""
    return f"{cfg.name}-{variant.arm}" if variant.arm else str(cfg.name)


def model_group(name: str) -> dict[str, Any]:
    """The ``conf/model/<name>.yaml`` option merged over the schema defaults."""
    from harness.config import CONF_DIR, ModelConfig

    path = Path(CONF_DIR) / "model" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"sweep.models: no model option '{name}' ({path} does not exist)")
    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))
    return OmegaConf.to_container(merged, resolve=True)


def variant_config(cfg: DictConfig, variant: Variant) -> DictConfig:
    """A copy of ``cfg`` for one variant: its optimizer family and decay (family defaults kept
    from cfg); when the variant names a model, that option of ``conf/model/`` (width and depth
    kept from cfg for the model's BatchNorm twin); the variant's arm of ``sweep.arms`` merged
    over it; ``sweep.ranges`` applied to the grid."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.optimizer.name = variant.optimizer
    out.optimizer.decay = variant.decay
    if variant.model and variant.model != out.model.name:
        current = dict(out.model)
        out.model = model_group(variant.model)
        if registry.twins(current["name"], variant.model):
            # mlp <-> mlp_bn, cnn <-> cnn_bn: the same network with and without BatchNorm, so
            # the configured width/depth carry over (model.width=128 applies to both).
            out.model.width, out.model.depth = current["width"], current["depth"]
    if variant.arm:
        out = OmegaConf.merge(out, OmegaConf.to_container(out.sweep.arms[variant.arm]))
    ranges = out.sweep.get("ranges") or {}
    specific = f"{variant.optimizer}-{variant.decay}"
    for key in (variant.decay, variant.optimizer, variant.key, specific):  # most specific wins
        for axis, r in (ranges.get(key) or {}).items():
            # a part the range leaves out keeps sweep.<axis>'s (sweep.lr.num=9 applies to all)
            base = out.sweep[axis]
            out.sweep[axis] = {
                "min": float(r.get("min", base["min"])),
                "max": float(r.get("max", base["max"])),
                "num": int(r.get("num", base["num"])),
            }
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
# Studies (created by the driver, one process)


GRID_FIELDS = {"lr": "sweep.lr", "weight_decay": "sweep.weight_decay", "seed": "sweep.seeds"}


def _axis(values: list[float]) -> str:
    if not values:
        return "none"
    return f"{len(values)} from {values[0]:.3g} to {values[-1]:.3g}"


def grid_record(sweep: DictConfig) -> dict[str, list]:
    """The grid a study records: its lr, weight-decay and seed values."""
    lrs, wds, seeds = grid_axes(sweep)
    return {"lr": lrs, "weight_decay": wds, "seed": seeds}


def recorded_grid(study: optuna.Study) -> dict[str, list] | None:
    """The grid a study with trials holds; None for a study without trials (anything goes)."""
    return study.user_attrs.get("grid") if study.get_trials(deepcopy=False) else None


def merge_grid(
    name: str, old: dict[str, list] | None, new: dict[str, list], *, extend: bool, url: str = ""
) -> dict[str, list]:
    """The grid a study records after this run: ``new`` for a new study or the same grid;
    with ``extend``, the union of both. A different grid without ``extend`` is refused with one
    line naming the first key that differs and the two ways forward."""
    if not old or old == new:
        return new
    if extend:
        return {k: sorted(set(old.get(k, [])) | set(new[k])) for k in new}
    key = next(k for k in new if old.get(k) != new[k])
    where = f" in {url}" if url else ""
    raise ConfigError(
        f"{GRID_FIELDS[key]}: the study '{name}'{where} already holds another grid "
        f"({key}: {_axis(old.get(key, []))}; now {_axis(new[key])}); add the new cells to it "
        "with sweep.action=extend, or start a new study with sweep.study_name=<a new name>"
    )


def create_study(
    cfg: DictConfig, storage, variant: Variant, *, load_only: bool = False, extend: bool = False
) -> optuna.Study:
    """Create (or open) the variant's study and record what it is. A study that has trials of
    another grid is refused unless ``extend`` (:func:`merge_grid`)."""
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
    if study.metric_names != [OBJECTIVE]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE])
    grid = merge_grid(name, recorded_grid(study), grid_record(cfg.sweep), extend=extend)
    attrs = {
        "experiment": experiment_name(cfg, variant),
        "optimizer": variant.optimizer,
        "decay": variant.decay,
        "grid": grid,
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
            f"slurm{os.environ['SLURM_ARRAY_TASK_ID']}.{os.environ.get('SLURM_RESTART_COUNT', '0')}"
        )
    if index is None:
        index = owner_id()
    text = f"{int(cfg.train.seed)}|{int(n_trials)}|{index}"
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def make_sampler(cfg: DictConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The ``sweep.sampler`` entry's Optuna sampler, seeded with ``seed`` (default
    ``train.seed``)."""
    seed = int(cfg.train.seed) if seed is None else int(seed)
    return registry.sampler(cfg.sweep.sampler).make(seed)


def planner(cfg: DictConfig) -> Any:
    """The ``sweep.sampler`` entry's planner (:class:`GridPlanner`, :class:`ValleyPlanner`), or
    None for a sampler that draws its points from enqueued slots."""
    return registry.sampler(cfg.sweep.sampler).make_planner()


def enqueue_grid(study: optuna.Study, cfg: DictConfig) -> CellStatus:
    """Enqueue every grid cell that has no finished, waiting or live trial. Driver only."""
    return enqueue_cells(
        study,
        grid_cells(cfg.sweep),
        distributions(cfg.sweep),
        float(cfg.sweep.heartbeat_s),
        max_retries=int(cfg.sweep.get("max_retries", 2)),
    )


def valley_spec(cfg: DictConfig) -> valley.ValleySpec:
    """What ``sweep=valley`` traces for this (variant) config."""
    lrs, wds, seeds = grid_axes(cfg.sweep)
    return valley.ValleySpec(
        lrs=lrs,
        wds=wds,
        seeds=seeds,
        rounds=int(cfg.sweep.get("rounds", 2)),
        refine=int(cfg.sweep.get("refine", 3)),
        dists=distributions(cfg.sweep),
        heartbeat_s=float(cfg.sweep.heartbeat_s),
        max_retries=int(cfg.sweep.get("max_retries", 2)),
    )


def valley_tracer(study: optuna.Study, cfg: DictConfig) -> valley.Tracer:
    """A worker's tracer on a valley study (the driver has created its gates)."""
    return valley.Tracer(study, valley_spec(cfg), valley.gates_study(study))


class GridPlanner:
    """``sweep=grid``: the driver enqueues every (lr, weight decay, seed) cell once.

    A planner is what a sampler that enqueues its own cells supplies (named by its
    ``harness.registry.SamplerSpec`` entry): the number of cells, the driver's enqueueing, the
    check of a study recorded by an earlier run, and a worker's tracer (``advance()`` enqueues
    what has become due; ``held`` keeps the worker waiting for it), or None."""

    def budget(self, cfg: DictConfig) -> int:
        return len(grid_cells(cfg.sweep))

    def enqueue(self, study: optuna.Study, cfg: DictConfig) -> CellStatus:
        return enqueue_grid(study, cfg)

    def check(self, study: optuna.Study, cfg: DictConfig) -> None:
        """Raise ``ConfigError`` (writing nothing) when the study cannot take this run."""

    def tracer(self, study: optuna.Study, cfg: DictConfig) -> Any:
        return None


class ValleyPlanner(GridPlanner):
    """``sweep=valley``: the driver enqueues the coarse grid and the rounds that are due; each
    worker's :class:`harness.sweep.valley.Tracer` opens the further rounds."""

    def budget(self, cfg: DictConfig) -> int:
        return valley_spec(cfg).budget()  # at most: rounds clipped at the wd range add fewer

    def enqueue(self, study: optuna.Study, cfg: DictConfig) -> CellStatus:
        return valley.Tracer.prepare(study, valley_spec(cfg))[1]

    def check(self, study: optuna.Study, cfg: DictConfig) -> None:
        valley.check_recorded(study, valley_spec(cfg))

    def tracer(self, study: optuna.Study, cfg: DictConfig) -> valley.Tracer:
        return valley_tracer(study, cfg)


def enqueue_study(study: optuna.Study, cfg: DictConfig) -> CellStatus:
    """The planner's cells (the grid's; a valley's coarse grid and due rounds), or a sampled
    study's budget as slots. Driver only."""
    plan = planner(cfg)
    if plan is not None:
        return plan.enqueue(study, cfg)
    return enqueue_slots(study, sampled_budget(cfg), float(cfg.sweep.heartbeat_s))


def make_pruner(cfg: DictConfig) -> optuna.pruners.BasePruner:
    kind = cfg.sweep.pruner
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def sampled_budget(cfg: DictConfig) -> int:
    n = int(cfg.sweep.n_trials)
    if n > 0:
        return n
    lrs, wds, seeds = grid_axes(cfg.sweep)
    return len(lrs) * len(wds) * len(seeds)


def cells(cfg: DictConfig, variant: Variant) -> int:
    vcfg = variant_config(cfg, variant)
    plan = planner(vcfg)
    return sampled_budget(vcfg) if plan is None else plan.budget(vcfg)


def total_cells(cfg: DictConfig) -> int:
    return sum(cells(cfg, v) for v in variants(cfg))


def existing_studies(cfg: DictConfig, storage) -> list[tuple[Variant, optuna.Study | None]]:
    """Each variant with its study in ``storage``, or None where it has none. Writes nothing."""
    found = []
    for variant in variants(cfg):
        try:
            study = create_study(variant_config(cfg, variant), storage, variant, load_only=True)
        except KeyError:
            study = None
        found.append((variant, study))
    return found


def concurrent_workers(cfg: DictConfig) -> int:
    """How many workers run at once: ``sweep.workers``, capped on Slurm by the array's
    ``launcher.array_parallelism``."""
    n = int(cfg.sweep.workers)
    if cfg.launcher.name == "slurm" and int(cfg.launcher.get("array_parallelism") or 0) > 0:
        n = min(n, int(cfg.launcher.array_parallelism))
    return n


def prepare(cfg: DictConfig) -> tuple[Any, list[Any]]:
    """Open the storage, create each variant's study and enqueue its missing grid cells.

    Every existing study's grid is checked first, so a refused grid change writes nothing.
    """
    storage = open_storage(real_url(cfg), cfg.output_dir)
    check_connections(storage, concurrent_workers(cfg))  # before anything is written
    extend = cfg.sweep.get("action") == "extend"
    for variant, study in existing_studies(cfg, storage):
        if study is not None:
            vcfg = variant_config(cfg, variant)
            new = grid_record(vcfg.sweep)
            merge_grid(study.study_name, recorded_grid(study), new, extend=extend)
            plan = planner(vcfg)
            if plan is not None:
                plan.check(study, vcfg)
    studies = []
    for variant in variants(cfg):
        vcfg = variant_config(cfg, variant)
        study = create_study(vcfg, storage, variant, extend=extend)
        status = enqueue_study(study, vcfg)
        log.info(
            "%s: %d cells, %d done, %d queued, %d running, %d re-queued, %d failed for good",
            study.study_name,
            status.total,
            status.done,
            status.queued,
            status.running,
            status.requeued,
            status.failed,
        )
        if status.failed:
            print(
                f"{study.study_name}: {status.failed} cell(s) failed more than "
                f"sweep.max_retries={vcfg.sweep.get('max_retries', 2)} times and stay FAILED "
                "(see fail_reason in results.csv; raise sweep.max_retries to try again)"
            )
        studies.append(study)
    return storage, studies
