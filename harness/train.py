"""One trial: build, train, evaluate, report. Returns a :class:`TrialResult`; never raises on NaN.

``python -m harness.train [overrides...]`` trains one trial from the Hydra config and prints the
result, e.g. ``python -m harness.train model=cnn optimizer.lr=3e-3 train.epochs=30``.

What varies across seeds (``train.seed``): the initialization (``torch.manual_seed(seed)``
before the model is built) and the data order (a generator seeded with ``seed``; augmentation
draws from it too). Nothing else does: all cells of a grid with the same seed see the same
initial weights and the same batches (common random numbers). The task itself (MNIST-1D's
samples, the validation split) depends on ``data.*`` only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.data import Dataset, load_data
from harness.instruments import Instruments
from harness.models import build_model, loss_function
from harness.optim import (
    SGD,
    Adam,
    WeightDecayScheduler,
    l2_penalty,
    normalized_weight_decay,
    param_groups,
)
from harness.optim.groups import scale_invariant_names
from harness.results import TrialResult, with_layers
from harness.schedules import lr_multiplier

Report = Callable[[int, dict[str, float]], None]
EVAL_BATCH = 2000


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


def build_optimizer(
    cfg: Any,
    model: nn.Module,
    wd: float,
    sample: Any = None,
    invariant: list[str] | None = None,
) -> tuple[torch.optim.Optimizer, list[nn.Parameter], float]:
    """(optimizer, parameters of the loss penalty, penalty wd) for ``cfg.optimizer``.

    ``optimizer.param_groups=scale_invariant`` finds the scale-invariant tensors on the input
    batch ``sample`` (or takes their names, ``invariant``, when already known).

    ``decay="loss"``: the optimizer runs with no decay and the trainer adds
    ``l2_penalty(decayed params, wd)`` (= wd/2 * ||w||^2) to the loss.
    """
    o = cfg.optimizer
    groups, _ = param_groups(
        model,
        wd,
        rule=o.param_groups,
        no_decay_names=list(o.no_decay_names),
        sample=sample,
        invariant=invariant,
    )
    penalty_params: list[nn.Parameter] = []
    penalty_wd = 0.0
    decay = o.decay
    if decay == "loss":
        penalty_params, penalty_wd = list(groups[0]["params"]), wd
        for g in groups:
            g["weight_decay"] = 0.0
        decay = "l2"
    if o.name == "sgd":
        opt = SGD(
            groups,
            lr=float(o.lr),
            momentum=float(o.momentum),
            dampening=float(o.dampening),
            nesterov=bool(o.nesterov),
            decay=decay,
            relative=bool(o.relative),
        )
    elif o.name == "adam":
        opt = Adam(
            groups,
            lr=float(o.lr),
            betas=tuple(float(b) for b in o.betas),
            eps=float(o.eps),
            decay=decay,
            amsgrad=bool(o.amsgrad),
            relative=bool(o.relative),
        )
    else:
        raise ValueError(f"optimizer.name={o.name!r} is not one of sgd, adam")
    return opt, penalty_params, penalty_wd


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
    """The shared set-up of :func:`run_trial` and the population trainer, in this order:
    threads, device, dtype, data, ``torch.manual_seed(train.seed)``, the model.
    ``before_data(device)`` runs before the data is loaded (the population's allocator set-up)."""
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
    ``optimizer.param_groups=scale_invariant`` need them (else None): detected once, on
    :func:`probe_batch`."""
    if not instruments_on(cfg) and cfg.optimizer.param_groups != "scale_invariant":
        return None
    return scale_invariant_names(run.model, probe_batch(run))


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


def run_trial(cfg: Any, report: Report | None = None, data: Dataset | None = None) -> TrialResult:
    """Train one (optimizer, decay, lr, wd, seed) cell and evaluate it.

    Non-finite loss stops the trial and returns ``diverged=True`` with errors 1.0 and train loss
    nan. Exceptions raised by ``report`` (e.g. ``optuna.TrialPruned``) propagate.
    """
    t0 = time.perf_counter()
    run = set_up(cfg, data)
    device, dtype, data, model = run.device, run.dtype, run.data, run.model
    total, per_epoch, batch, gen = run.total, run.per_epoch, run.batch, run.gen
    wd = effective_weight_decay(cfg, data)
    invariant = invariant_names(cfg, run)
    opt, penalty_params, penalty_wd = build_optimizer(cfg, model, wd, invariant=invariant)
    inst = None
    if instruments_on(cfg):
        inst = Instruments.of_module(model, invariant or [], total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_multiplier(cfg.schedule, t, total))
    wd_sched = None
    if cfg.optimizer.wd_schedule != "constant":
        wd_sched = WeightDecayScheduler(opt, cfg.optimizer.wd_schedule, total)
    loss_fn = loss_function(cfg) or nn.CrossEntropyLoss()  # train.loss: the user's loss

    best_val = math.inf
    last_val = math.inf
    target = float(cfg.train.target_accuracy)
    steps_to_target = math.nan
    loss_sum = torch.zeros((), device=device, dtype=dtype)
    loss_count = 0
    train_loss = math.nan
    diverged = False
    step = 0
    model.train()
    training_starts([report])
    while step < total and not diverged:
        perm = torch.randperm(data.n_train, generator=gen).to(device)
        for i in range(per_epoch):
            if step >= total:
                break
            idx = perm[i * batch : (i + 1) * batch]
            x = data.augment(data.x_train[idx], gen)
            loss = loss_fn(model(x), data.y_train[idx])
            full = loss + l2_penalty(penalty_params, penalty_wd) if penalty_wd else loss
            opt.zero_grad(set_to_none=True)
            full.backward()
            if inst is not None:
                inst.before()
            opt.step()
            if inst is not None:
                inst.after(step, lr_multiplier(cfg.schedule, step, total))
            sched.step()
            if wd_sched is not None:
                wd_sched.step()
            step += 1
            loss_sum += loss.detach()
            loss_count += 1
            if run.reports_at(step):
                train_loss = float(loss_sum) / loss_count
                if not math.isfinite(train_loss):
                    diverged = True
                    break
                last_val = error_rate(model, data.x_val, data.y_val)
                best_val = min(best_val, last_val)
                test_now = math.nan
                if target > 0:
                    test_now = error_rate(model, data.x_test, data.y_test)
                    steps_to_target = first_at_target(steps_to_target, step, test_now, target)
                if report is not None:
                    group = opt.param_groups[0]
                    eta = lr_multiplier(cfg.schedule, step - 1, total)  # of the step just taken
                    shrink = group["shrink"]
                    if penalty_wd:  # decay=loss: the penalty's gradient wd*w, as l2's
                        shrink = group["initial_lr"] * eta * penalty_wd
                    lr_t = group["initial_lr"] * eta
                    norm = weight_norm(model)
                    metrics = report_metrics(
                        train_loss, last_val, lr_t, eta, shrink, norm, step, per_epoch
                    )
                    if target > 0:
                        metrics["test_error"] = test_now
                    if inst is not None:
                        metrics.update(inst.report()[0])
                    report(step, metrics)
                loss_sum.zero_()
                loss_count = 0
            elif step % 25 == 0 and not math.isfinite(float(loss.detach())):
                diverged = True
                break
    norm = weight_norm(model)
    if diverged or not math.isfinite(norm):
        result = TrialResult.of_divergence(step, time.perf_counter() - t0)
        summary = inst.summary()[0] if inst is not None else None
        result = dataclasses.replace(result, **instrument_fields(summary, True))
        return with_layers(result, inst.layer_summary()[0] if inst is not None else None, True)
    test = error_rate(model, data.x_test, data.y_test)
    result = TrialResult(
        test_error=test,
        val_error=best_val,
        final_val_error=last_val,
        train_loss=train_loss,
        weight_norm=norm,
        steps=step,
        wall_s=time.perf_counter() - t0,
        diverged=False,
        steps_to_target=steps_to_target,
        **instrument_fields(inst.summary()[0] if inst is not None else None, False),
    )
    return with_layers(result, inst.layer_summary()[0] if inst is not None else None, False)


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
    from harness.config import ConfigError, compose_config, validate
    from harness.errors import error_line, fail

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
