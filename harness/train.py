"""One trial: build, train, evaluate, report. Returns a :class:`TrialResult`; never raises on NaN.

``python -m harness.train [overrides...]`` trains one trial from the Hydra config and prints the
result, e.g. ``python -m harness.train model=cnn optimizer.lr=3e-3 train.epochs=30``.

A trial is a population of one: :class:`ModuleMembers` (the model and its ``torch.optim``
optimizer, built by the optimizer family's registry entry) run by :func:`harness.loop.train`.

What varies across seeds (``train.seed``): the initialization (``torch.manual_seed(seed)``
before the model is built) and the data order (a generator seeded with ``seed``; augmentation
draws from it too). Nothing else does: all cells of a grid with the same seed see the same
initial weights and the same batches (common random numbers). The task itself (MNIST-1D's
samples, the validation split) depends on ``data.*`` only.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch import nn

from harness import registry
from harness.data import Dataset
from harness.instruments import Instruments
from harness.loop import (  # noqa: F401 - the set-up helpers, importable from here too
    EVAL_BATCH,
    Report,
    Run,
    configured_groups,
    decay_scope,
    effective_weight_decay,
    first_at_target,
    instruments_on,
    invariant_names,
    probe_batch,
    resolve_device,
    set_up,
    setup_threads,
    total_steps,
    train,
    training_starts,
)
from harness.models import loss_function
from harness.optim import WeightDecayScheduler, l2_penalty
from harness.results import TrialResult
from harness.schedules import lr_multiplier


def build_optimizer(
    cfg: Any,
    model: nn.Module,
    wd: float,
    sample: Any = None,
    invariant: list[str] | None = None,
) -> tuple[torch.optim.Optimizer, list[nn.Parameter], float]:
    """(optimizer, parameters of the loss penalty, penalty wd) for ``cfg.optimizer``: the
    family's registry entry builds the optimizer.

    ``optimizer.param_groups=scale_invariant`` finds the scale-invariant tensors on the input
    batch ``sample`` (or takes their names, ``invariant``, when already known).

    A penalty form (``decay="loss"``): the optimizer runs with no decay and the trainer adds
    ``l2_penalty(decayed params, wd)`` (= wd/2 * ||w||^2) to the loss.
    """
    o = cfg.optimizer
    groups, _ = configured_groups(cfg, model, wd, sample=sample, invariant=invariant)
    penalty_params: list[nn.Parameter] = []
    penalty_wd = 0.0
    form = registry.decay(o.decay)
    if form.penalty:
        penalty_params, penalty_wd = list(groups[0]["params"]), wd
        for g in groups:
            g["weight_decay"] = 0.0
    try:
        family = registry.optimizer(o.name)
    except KeyError as exc:
        raise ValueError(f"optimizer.name: {exc.args[0]}") from None
    return family.build(groups, o, form.mode), penalty_params, penalty_wd


@torch.no_grad()
def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    wrong = 0
    for i in range(0, x.shape[0], EVAL_BATCH):
        logits = model(x[i : i + EVAL_BATCH])
        wrong += int((logits.argmax(1) != y[i : i + EVAL_BATCH]).sum())
    model.train(was_training)
    return wrong / max(int(x.shape[0]), 1)


def weight_norm(model: nn.Module) -> float:
    norms = torch._foreach_norm([p.detach() for p in model.parameters()])
    return float(torch.stack(norms).square().sum().sqrt())


class ModuleMembers:
    """One ``nn.Module`` and its ``torch.optim`` optimizer as members of
    :func:`harness.loop.train` (P = 1): the lr schedule (``LambdaLR``), a weight-decay schedule,
    a loss penalty and a user's loss included."""

    p = 1

    def __init__(self, cfg: Any, run: Run) -> None:
        model = run.model
        total = run.total
        wd = effective_weight_decay(cfg, run.data)
        invariant = invariant_names(cfg, run)
        opt, penalty_params, penalty_wd = build_optimizer(cfg, model, wd, invariant=invariant)
        self.scope = decay_scope(cfg, model, invariant)
        self.instruments = None
        if instruments_on(cfg):
            self.instruments = Instruments.of_module(model, invariant or [], total)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: lr_multiplier(cfg.schedule, t, total)
        )
        self.wd_sched = None
        if cfg.optimizer.wd_schedule != "constant":
            self.wd_sched = WeightDecayScheduler(opt, cfg.optimizer.wd_schedule, total)
        self.loss_fn = loss_function(cfg) or nn.CrossEntropyLoss()  # train.loss: the user's loss
        self.model, self.opt = model, opt
        self.penalty_params, self.penalty_wd = penalty_params, penalty_wd
        self.form = registry.decay(cfg.optimizer.decay)
        self.lrs = [float(opt.param_groups[0]["initial_lr"])]
        model.train()

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fn(self.model(x), y)
        full = loss + l2_penalty(self.penalty_params, self.penalty_wd) if self.penalty_wd else loss
        self.opt.zero_grad(set_to_none=True)
        full.backward()
        return loss.detach().view(1)

    def update(self, step: int, eta: float) -> None:  # noqa: ARG002 - LambdaLR keeps the step
        self.opt.step()
        self.sched.step()
        if self.wd_sched is not None:
            self.wd_sched.step()

    def errors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tensor([error_rate(self.model, x, y)], dtype=torch.float64)

    def weight_norms(self) -> list[float]:
        return [weight_norm(self.model)]

    def train_losses(self, loss_sum: torch.Tensor, count: int) -> list[float]:
        return [float(loss_sum[0]) / count]

    def shrink(self, m: int, eta: float) -> float:  # noqa: ARG002 - one member
        """The optimizer's recorded shrink (a scheduled wd included); for a loss penalty the
        form's, at the penalty's wd."""
        if self.penalty_wd:
            lr_t = self.opt.param_groups[0]["initial_lr"] * eta
            return self.form.step_shrink(lr_t, eta, self.penalty_wd)
        return self.opt.param_groups[0]["shrink"]

    def freeze(self, m: int) -> None:
        pass  # the only member: the loop stops

    def finish(self) -> None:
        pass

    def member_state(self, m: int) -> dict[str, torch.Tensor]:  # noqa: ARG002 - one member
        return {n: q.detach().clone() for n, q in self.model.named_parameters()}


def run_trial(cfg: Any, report: Report | None = None, data: Dataset | None = None) -> TrialResult:
    """Train one (optimizer, decay, lr, wd, seed) cell and evaluate it.

    Non-finite loss stops the trial and returns ``diverged=True`` with errors 1.0 and train loss
    nan. Exceptions raised by ``report`` (e.g. ``optuna.TrialPruned``) propagate.
    """
    t0 = time.perf_counter()
    run = set_up(cfg, data)
    [result] = train(cfg, run, ModuleMembers(cfg, run), [report], t0)
    if isinstance(result, BaseException):
        raise result
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(
            "usage: python -m harness.train [GROUP=OPTION | KEY=VALUE ...]\n"
            "Train one trial with the sweep's Hydra config and print its result.\n"
            "Without experiment=<preset> it trains with conf/config.yaml's defaults (MNIST-1D's\n"
            "standard split), not the sweep's default preset experiment=quick.\n"
            "example: python -m harness.train model=cnn_bn optimizer=adam optimizer.lr=1e-2 "
            "optimizer.weight_decay=1e-4 train.epochs=40 train.threads=1"
        )
        return 0
    from harness.config import compose_config, validate
    from harness.errors import ConfigError
    from harness.usage import error_line, fail

    flags = [a for a in argv if a.startswith("-")]
    if flags:
        return fail(
            f"{flags[0]}: python -m harness.train takes key=value overrides only; "
            "to print the config: python -m harness.sweep <overrides> --cfg job"
        )
    presets = [a.split("=", 1)[1] for a in argv if a.lstrip("+~").startswith("experiment=")]
    chosen = any(a.lstrip("+~").split("=", 1)[0] == "experiment" for a in argv)
    try:
        # one trial defaults to the standard task, not the sweep's default preset (quick)
        cfg = compose_config(argv if chosen else [*argv, "~experiment"])
        validate(cfg)
    except Exception as exc:  # noqa: BLE001 - a config error is one line, anything else raises
        line = error_line(exc)
        if line is None:
            raise
        return fail(line)
    if presets:
        print(f"preset: experiment={presets[-1]}", flush=True)
    elif not chosen:
        print(
            "preset: none (conf/config.yaml's defaults; experiment=<preset> picks one, e.g. "
            "experiment=quick, the sweep's default)",
            flush=True,
        )
    try:
        result = run_trial(cfg)
    except ConfigError as exc:
        return fail(str(exc))
    o = cfg.optimizer
    print(
        f"{o.name}/{o.decay} lr={o.lr:g} wd={o.weight_decay:g} model={cfg.model.name} "
        f"seed={cfg.train.seed}"
    )
    for key, value in result.to_dict().items():
        print(f"  {key:<16} {value:.4f}" if isinstance(value, float) else f"  {key:<16} {value}")
    print(f"  test_accuracy    {1 - result.test_error:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
