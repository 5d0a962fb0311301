"""The training loop, written once: set-up, epochs, evaluation, reporting, pruning, divergence,
preemption and instruments.

:func:`train` runs P *members* that share one config but lr and weight decay: the same seed, so
the same initial weights and the same batches (common random numbers). What differs between a
single module and a batched population is the :class:`Members` it is given, built on the shared
:func:`set_up`:

- :class:`harness.train.ModuleMembers`: one ``nn.Module`` and its ``torch.optim`` optimizer (a
  single trial is a population of one);
- :class:`harness.population_step.BatchedMembers` over :class:`harness.population_kernels.Stacked`
  (hand-written batched layers) or :class:`harness.population_generic.GenericStacked`
  (``torch.func.vmap``), updated by :mod:`harness.optim.functional`'s rules.

Per step the loop takes the next batch (a fresh permutation from the seeded generator each
epoch, augmentation drawn from it too), has the members compute their losses and gradients,
updates them at the schedule's multiplier ``eta_t``, and lets the instruments see the update.
Every ``train.eval_every`` steps (default: one epoch) and after the last it evaluates, reports
each member's metrics to its hook, and stops members whose hook raised (pruning) or whose loss
turned non-finite (divergence, also checked every 25 steps); a stopped member is frozen and the
others carry on. :class:`harness.results.Preempted` from a hook stops the whole loop.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from harness.data import Dataset, load_data
from harness.instruments import Instruments
from harness.models import build_model
from harness.optim import normalized_weight_decay, param_groups
from harness.optim.groups import INVARIANT_RULES, scale_invariant_names
from harness.results import Preempted, TrialResult, with_layers
from harness.schedules import lr_multiplier

Report = Callable[[int, dict[str, float]], None]
EVAL_BATCH = 2000
DIVERGENCE_EVERY = 25  # steps between divergence checks between evaluations


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_threads(threads: int) -> None:
    n = int(threads) or cpu_count()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def total_steps(cfg: Any, data: Dataset) -> tuple[int, int]:
    """(total steps, steps per epoch); the last partial batch of an epoch is dropped."""
    per_epoch = max(data.n_train // int(cfg.data.batch_size), 1)
    if int(cfg.train.max_steps) > 0:
        return int(cfg.train.max_steps), per_epoch
    return int(cfg.train.epochs) * per_epoch, per_epoch


def effective_weight_decay(cfg: Any, data: Dataset) -> float:
    wd = float(cfg.optimizer.weight_decay)
    if cfg.optimizer.normalized:
        total, per_epoch = total_steps(cfg, data)
        wd = normalized_weight_decay(wd, int(cfg.data.batch_size), data.n_train, total / per_epoch)
    return wd


@dataclass
class Run:
    """What every training loop sets up the same way (a single trial, or a population sharing
    one config but lr and wd): threads, device, dtype, data, the seeded model, the step counts
    and the seeded data-order generator."""

    device: torch.device
    dtype: torch.dtype
    data: Dataset
    model: nn.Module
    seed: int
    total: int  # optimizer steps
    per_epoch: int
    eval_every: int  # steps between reports
    batch: int
    gen: torch.Generator

    def reports_at(self, step: int) -> bool:
        """Whether the loop evaluates and reports after ``step`` steps."""
        return step % self.eval_every == 0 or step == self.total


def set_up(cfg: Any, data: Dataset | None = None, *, before_data: Callable | None = None) -> Run:
    """The shared set-up of every training loop, in this order: threads, device, dtype, data,
    ``torch.manual_seed(train.seed)``, the model. ``before_data(device)`` runs before the data is
    loaded (the population's allocator set-up)."""
    setup_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    if before_data is not None:
        before_data(device)
    dtype = torch.float64 if cfg.train.dtype == "float64" else torch.float32
    if data is None:
        data = load_data(cfg.data, device, dtype)
    seed = int(cfg.train.seed)
    torch.manual_seed(seed)
    model = build_model(cfg.model, data.input_shape, data.num_classes).to(device, dtype)
    total, per_epoch = total_steps(cfg, data)
    return Run(
        device=device,
        dtype=dtype,
        data=data,
        model=model,
        seed=seed,
        total=total,
        per_epoch=per_epoch,
        eval_every=int(cfg.train.eval_every) or per_epoch,
        batch=int(cfg.data.batch_size),
        gen=torch.Generator().manual_seed(seed),
    )


PROBE_BATCH = 256  # training samples the scale-invariance detector runs on, at most


def probe_batch(run: Run) -> torch.Tensor:
    """The input batch the scale-invariance detector runs on: the first training samples (the
    same for a trial and its population, whatever the seed)."""
    return run.data.x_train[: min(run.batch, PROBE_BATCH)]


def instruments_on(cfg: Any) -> bool:
    return bool(cfg.train.get("instruments", True))


def invariant_names(cfg: Any, run: Run) -> list[str] | None:
    """The scale-invariant trainable tensors of ``run.model`` when the instruments or
    ``optimizer.param_groups=scale_invariant`` (or ``scale_invariant_head[_norm]``) need them
    (else None): detected once, on :func:`probe_batch`."""
    if not instruments_on(cfg) and cfg.optimizer.param_groups not in INVARIANT_RULES:
        return None
    return scale_invariant_names(run.model, probe_batch(run))


def configured_groups(cfg, model: nn.Module, wd: float, *, invariant=None, sample=None):
    """:func:`harness.optim.param_groups` with the run's ``optimizer.param_groups`` rule and
    ``optimizer.no_decay_names``: ``(groups, report)``."""
    o = cfg.optimizer
    return param_groups(
        model,
        wd,
        rule=str(o.param_groups),
        no_decay_names=list(o.no_decay_names),
        sample=sample,
        invariant=invariant,
    )


def decay_scope(
    cfg: Any, model: nn.Module, invariant: list[str] | None, report: dict | None = None
) -> dict[str, Any]:
    """The ``decayed_numel`` and ``decayed_si_numel`` fields of every member's
    :class:`TrialResult`: the elements of the tensors ``optimizer.param_groups`` decays and, of
    those, the elements of the scale-invariant tensors ``invariant`` (the names
    :func:`invariant_names` found; None when it did not run: NaN, unless nothing decays).
    ``report`` is :func:`param_groups`' report when the caller already has it. Counts are ints,
    NaN a float."""
    if report is None:
        _, report = configured_groups(cfg, model, 0.0, invariant=invariant)
    decayed, total = report["decay"]["names"], report["decay"]["elements"]
    if invariant is None:
        return {"decayed_numel": total, "decayed_si_numel": 0 if not total else math.nan}
    si = set(invariant)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    return {
        "decayed_numel": total,
        "decayed_si_numel": sum(sizes[n] for n in decayed if n in si),
    }


def instrument_fields(summary: dict[str, float] | None, diverged: bool) -> dict[str, float]:
    """The instrument fields of a :class:`TrialResult`: NaN but the tensor count for a trial
    that diverged, nothing when the instruments are off."""
    if summary is None:
        return {}
    if diverged:
        return {"si_tensors": summary["si_tensors"]}
    return dict(summary)


def report_metrics(
    train_loss: float,
    val_error: float,
    lr_t: float,
    eta: float,
    shrink: float,
    norm: float,
    step: int,
    per_epoch: int,
) -> dict[str, float]:
    """The metrics a trial reports at each evaluation (W&B history, Optuna's pruner)."""
    return {
        "train_loss": train_loss,
        "val_error": val_error,
        "lr_t": lr_t,
        "eta": eta,
        "shrink": shrink,
        "weight_norm": norm,
        "epoch": step / per_epoch,
    }


def first_at_target(reached: float, step: int, test_error: float, target: float) -> float:
    """``steps_to_target`` after a report at ``step``: ``reached`` if it is already set, else
    ``step`` when the test accuracy ``1 - test_error`` is at least ``target``, else NaN."""
    if not math.isnan(reached):
        return reached
    return float(step) if 1.0 - test_error >= target else math.nan


def training_starts(reports: Iterable[Report | None]) -> None:
    """Tell each report hook with a ``started`` method that its training starts now (the sweep's
    worker writes its training log there; a population split after running out of memory starts
    its members again)."""
    for report in reports:
        started = getattr(report, "started", None)
        if started is not None:
            started()


class Members(Protocol):
    """P models trained together: what :func:`train` needs of them."""

    p: int
    lrs: list[float]  # each member's base lr, as configured
    instruments: Instruments | None
    scope: dict[str, Any]  # decay_scope of the members' shared config and model

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's loss on the batch ``[P]`` (detached), gradients computed."""

    def update(self, step: int, eta: float) -> None:
        """Step ``step`` (0-based) of the optimizer at the schedule's multiplier ``eta``."""

    def errors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's error rate on ``(x, y)``, ``[P]`` float64."""

    def weight_norms(self) -> Sequence[float] | torch.Tensor:
        """Each member's weight norm."""

    def train_losses(self, loss_sum: torch.Tensor, count: int) -> list[float]:
        """Each member's mean training loss from the summed losses of ``count`` steps."""

    def shrink(self, m: int, eta: float) -> float:
        """Member ``m``'s per-step shrink of the step just taken (reported)."""

    def freeze(self, m: int) -> None:
        """Stop member ``m``: its lr and wd become 0 (the others carry on untouched)."""

    def finish(self) -> None:
        """After the last step (e.g. say how the step ran)."""

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member ``m``'s parameters (equivalence tests)."""


def train(
    cfg: Any,
    run: Run,
    members: Members,
    reports: Sequence[Report | None],
    t0: float,
    return_states: bool = False,
) -> list[Any]:
    """Train ``members`` (set up on ``run`` for ``cfg``, the config they share but lr and wd)
    and evaluate them. One ``TrialResult`` or exception (``optuna.TrialPruned``) per member;
    with ``return_states`` also each member's final parameters. ``t0``: when the set-up began
    (the members share the wall time)."""
    p = members.p
    data, device, dtype = run.data, run.device, run.dtype
    total, per_epoch, batch, gen = run.total, run.per_epoch, run.batch, run.gen
    inst = members.instruments
    schedule = cfg.schedule
    active = torch.ones(p, dtype=torch.bool, device=device)
    outcome: list[Any] = [None] * p
    best_val = torch.full((p,), math.inf, device=device, dtype=torch.float64)
    last_val = torch.full((p,), math.inf, device=device, dtype=torch.float64)
    target = float(cfg.train.target_accuracy)
    reached = [math.nan] * p  # steps_to_target per member
    test_now = [math.nan] * p
    train_loss = [math.nan] * p
    loss_sum = torch.zeros(p, device=device, dtype=dtype)
    loss_count = 0
    steps = [0] * p
    live = list(range(p))  # the active members, as a list (no tensor reads per step)

    def freeze(m: int) -> None:
        active[m] = False
        live.remove(m)
        members.freeze(m)

    step = 0
    training_starts(reports)
    while step < total and live:
        perm = torch.randperm(data.n_train, generator=gen).to(device)
        for i in range(per_epoch):
            if step >= total or not live:
                break
            idx = perm[i * batch : (i + 1) * batch]
            x = data.augment(data.x_train[idx], gen)
            losses = members.backward(x, data.y_train[idx])
            eta = lr_multiplier(schedule, step, total)
            if inst is not None:
                inst.before()
            members.update(step, eta)
            if inst is not None:
                inst.after(step, eta)
            step += 1
            loss_sum += losses
            loss_count += 1
            for m in live:
                steps[m] = step
            at_eval = run.reports_at(step)
            if at_eval or step % DIVERGENCE_EVERY == 0:
                bad = active & ~torch.isfinite(loss_sum)
                for m in torch.nonzero(bad).flatten().tolist():
                    outcome[m] = "diverged"
                    freeze(m)
            if at_eval and live:
                train_loss = members.train_losses(loss_sum, loss_count)
                last_val = torch.where(active, members.errors(data.x_val, data.y_val), last_val)
                best_val = torch.minimum(best_val, last_val)
                if target > 0:
                    test_now = members.errors(data.x_test, data.y_test).tolist()
                    for m in live:
                        reached[m] = first_at_target(reached[m], step, test_now[m], target)
                measured = inst.report() if inst is not None else [{}] * p
                listening = [m for m in live if reports[m] is not None]
                norms = members.weight_norms() if listening else None
                for m in listening:
                    lr_t = members.lrs[m] * eta
                    metrics = report_metrics(
                        train_loss[m],
                        float(last_val[m]),
                        lr_t,
                        eta,
                        members.shrink(m, eta),
                        float(norms[m]),
                        step,
                        per_epoch,
                    )
                    metrics.update(measured[m])
                    if target > 0:
                        metrics["test_error"] = test_now[m]
                    try:
                        reports[m](step, metrics)
                    except Exception as exc:  # noqa: BLE001 - pruned members stop, others go on
                        if isinstance(exc, Preempted):
                            raise
                        outcome[m] = exc
                        freeze(m)
                loss_sum.zero_()
                loss_count = 0
    share = (time.perf_counter() - t0) / p  # the wall time, shared among the members
    members.finish()
    results = _results(
        members, data, outcome, best_val, last_val, train_loss, steps, reached, share
    )
    if return_states:
        return [(r, members.member_state(m)) for m, r in enumerate(results)]
    return results


def _results(
    members: Members,
    data: Dataset,
    outcome: list[Any],
    best_val: torch.Tensor,
    last_val: torch.Tensor,
    train_loss: list[float],
    steps: list[int],
    reached: list[float],
    wall_s: float,
) -> list[Any]:
    """Each member's ``TrialResult`` (or the exception its hook raised)."""
    p = members.p
    if all(isinstance(o, BaseException) for o in outcome):
        return list(outcome)
    inst = members.instruments
    test = members.errors(data.x_test, data.y_test)
    norms = members.weight_norms()
    summaries = inst.summary() if inst is not None else [None] * p
    layers = inst.layer_summary() if inst is not None else [None] * p
    out: list[Any] = []
    for m in range(p):
        if isinstance(outcome[m], BaseException):
            out.append(outcome[m])
        elif outcome[m] == "diverged" or not math.isfinite(float(norms[m])):
            result = TrialResult.of_divergence(steps[m], wall_s)
            result = dataclasses.replace(
                result, **instrument_fields(summaries[m], True), **members.scope
            )
            out.append(with_layers(result, layers[m], True))
        else:
            result = TrialResult(
                test_error=float(test[m]),
                val_error=float(best_val[m]),
                final_val_error=float(last_val[m]),
                train_loss=float(train_loss[m]),
                weight_norm=float(norms[m]),
                steps=steps[m],
                wall_s=wall_s,
                diverged=False,
                steps_to_target=reached[m],
                **instrument_fields(summaries[m], False),
                **members.scope,
            )
            out.append(with_layers(result, layers[m], False))
    return out
