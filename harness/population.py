"""Population training: P grid cells trained at once as one batched model on one device.

Small models leave a CPU (and far more a GPU) idle: a sweep's cost is launch and framework
overhead, not arithmetic. Here the P members' parameters are stacked along a leading dimension
``[P, ...]`` and trained together by the one training loop (:func:`harness.loop.train`), by
concern:

- :mod:`harness.population_plan`: which configs populations support, and how many members fit
  the device's memory (``sweep.population=auto``);
- :mod:`harness.population_kernels`: the batched model (the sequential model walked layer by
  layer as batched GEMMs and batch norms);
- :mod:`harness.population_step`: the step (loss and the ``harness.optim.functional`` update
  rules with per-member lr and wd tensors, ``torch.compile`` once per process and shape) and
  the members the loop trains.

Every member starts from the sequential model's initial weights for its seed and sees the same
batches (common random numbers), so a member's result is the sequential trial's. A member whose
loss turns non-finite, or that is pruned, is frozen; the others carry on untouched.

Supported: the models and optimizer families whose :mod:`harness.registry` entry says
``population=True``: today the MLPs and 1-D CNNs, the CIFAR ResNets (grouped 2-D convolutions,
``harness/population_resnet.py``); SGD and Adam with any decay form, any parameter-group rule,
normalized weight decay, constant weight decay. Anything else (relative or scheduled decay) runs
through the sequential trial runner, so every config still gets a correct result. Every other
model (a user's ``model._target_``, an entry with ``population=False``) trains its populations
through ``torch.func.vmap`` (:mod:`harness.population_generic`), or sequentially, said in one
line, when ``vmap`` cannot run it. Speed: docs/population.md.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch

from harness.data import Dataset
from harness.loop import Report, set_up, train
from harness.models import model_spec
from harness.population_generic import NotBatchable
from harness.population_kernels import (  # noqa: F401 - the batched model's public names
    Stacked,
    batch_norm_members,
    batched_forward,
    conv1d_members,
    conv1d_shared,
    member_batch_norm,
)
from harness.population_plan import (  # noqa: F401 - the planner's public names
    MEMORY_FRACTION,
    auto_population_size,
    free_memory_bytes,
    member_bytes,
    supports,
)
from harness.population_step import BatchedMembers, _population_loss, keep_freed_memory
from harness.results import Preempted
from harness.train import run_trial

log = logging.getLogger("lrwd.population")


def train_population(
    cfgs: Sequence[Any],
    reports: Sequence[Report | None],
    data: Dataset | None = None,
    return_states: bool = False,
) -> list[Any]:
    """Train members that share everything but lr / weight decay (same seed, same config).

    Returns one ``TrialResult`` or exception (``optuna.TrialPruned``) per member; with
    ``return_states`` also each member's final parameters (for equivalence tests).
    """
    t0 = time.perf_counter()

    def allocator(device: torch.device) -> None:
        if device.type == "cpu":
            keep_freed_memory()

    run = set_up(cfgs[0], data, before_data=allocator)
    members = BatchedMembers(cfgs, run, _population_loss)
    return train(cfgs[0], run, members, reports, t0, return_states)


def _key(cfg: Any) -> str:
    """Members may share a population when everything but lr and weight decay is equal."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else dict(cfg)
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    d["optimizer"] = {k: v for k, v in d["optimizer"].items() if k not in ("lr", "weight_decay")}
    return repr(sorted((k, repr(v)) for k, v in d.items()))


def run_population(cfgs: Sequence[Any], reports: Sequence[Report | None]) -> list[Any]:
    """Train ``cfgs`` (grid cells) as populations; results in input order.

    Cells are grouped by everything but lr and weight decay (in practice: by seed); unsupported
    configs and groups of one run through :func:`harness.train.run_trial`. A population that runs
    out of memory is split in halves.
    """
    out: list[Any] = [None] * len(cfgs)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cfgs):
        groups[_key(c) if supports(c) else f"seq-{i}"].append(i)
    for idx in groups.values():
        if len(idx) == 1 or not supports(cfgs[idx[0]]):
            for i in idx:
                out[i] = _run_one(cfgs[i], reports[i])
            continue
        for i, r in zip(idx, _train_split([cfgs[i] for i in idx], [reports[i] for i in idx])):
            out[i] = r
    return out


def _run_one(cfg: Any, report: Report | None) -> Any:
    """One cell through the sequential runner: its result, or the exception it raised."""
    try:
        return run_trial(cfg, report=report)
    except Exception as exc:  # noqa: BLE001 - recorded on the trial
        if isinstance(exc, Preempted):
            raise
        return exc


def run_sequential(cfgs: Sequence[Any], reports: Sequence[Report | None]) -> list[Any]:
    """Train ``cfgs`` one trial at a time; one result or exception per cell, in input order."""
    return [_run_one(c, r) for c, r in zip(cfgs, reports)]


_SEQUENTIAL_SAID: set[str] = set()  # models already reported as not batchable


def _train_split(cfgs: list[Any], reports: list[Any]) -> list[Any]:
    try:
        return train_population(cfgs, reports)
    except NotBatchable as exc:
        what = model_spec(cfgs[0].model).builder if cfgs[0].model.get("_target_") else None
        what = what or cfgs[0].model.name
        if what not in _SEQUENTIAL_SAID:
            _SEQUENTIAL_SAID.add(what)
            log.warning(
                "population training: model %s cannot run under torch.func.vmap (%s); "
                "training its members sequentially",
                what,
                exc,
            )
        return [_run_one(c, r) for c, r in zip(cfgs, reports)]
    except torch.OutOfMemoryError:
        if len(cfgs) == 1:
            raise
        half = len(cfgs) // 2
        return _train_split(cfgs[:half], reports[:half]) + _train_split(cfgs[half:], reports[half:])
