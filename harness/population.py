"""Population training: P grid cells trained at once as one batched model on one device.

Small models leave a CPU (and far more a GPU) idle: a sweep's cost is launch and framework
overhead, not arithmetic. Here the P members' parameters are stacked along a leading dimension
``[P, ...]`` and trained together:

- **Same model, batched.** The sequential model of ``harness.models`` is built once for the seed
  and walked layer by layer: ``Linear`` becomes one ``baddbmm`` over the P members, ``Conv1d`` one
  grouped convolution (``groups=P``; the first layer's shared input needs no copy),
  ``BatchNorm1d`` one batch norm over P*C channels, ``ReLU`` and ``Flatten`` act on the batched
  layout. Every member starts from the sequential model's initial
  weights for its seed and sees the same batches (common random numbers).
- **Same update rules.** Members differ in lr and weight decay, which are per-member tensors
  (``[P, 1, ..., 1]`` views) fed to ``harness.optim.functional.sgd_step`` / ``adam_step``, the
  rules the optimizer classes run: no second copy of the math.
- **Independent members.** Each member's loss is the mean cross-entropy over the batch; the
  population loss is their sum, so each member's gradient is exactly its own. A member whose loss
  turns non-finite is frozen (lr and wd set to 0) and recorded as diverged; a pruned member is
  frozen the same way; the others carry on untouched.

Supported: ``mlp``, ``mlp_bn``, ``cnn``, ``cnn_bn`` (BatchNorm of P members x C channels is one
batch norm over P*C channels, with per-member running statistics), the CIFAR ResNets
``resnet20`` / ``resnet_tiny`` (grouped 2-D convolutions, ``harness/population_resnet.py``); SGD
and Adam with any decay form (``l2``, ``loss``, ``decoupled``, ``independent``), any
parameter-group rule, normalized weight decay, constant weight decay. Anything else (relative or
scheduled decay) runs through the sequential trial runner, so every config still gets a correct
result.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.data import Dataset, load_data
from harness.models import build_model
from harness.optim.functional import adam_step, sgd_step
from harness.optim.groups import param_groups
from harness.schedules import lr_multiplier
from harness.train import (
    EVAL_BATCH,
    TrialResult,
    effective_weight_decay,
    resolve_device,
    run_trial,
    setup_threads,
    total_steps,
)

SUPPORTED_MODELS = ("mlp", "mlp_bn", "cnn", "cnn_bn", "resnet20", "resnet_tiny")
Report = Callable[[int, dict[str, float]], None]


def supports(cfg: Any) -> bool:
    """True when ``cfg`` can run in a population (else the sequential runner is used)."""
    o = cfg.optimizer
    return (
        cfg.model.name in SUPPORTED_MODELS
        and o.name in ("sgd", "adam")
        and not o.relative
        and o.wd_schedule == "constant"
    )


def auto_population_size(cfg: Any) -> int:
    """A population size that is fast here: 1 for unsupported configs, else by device."""
    if not supports(cfg):
        return 1
    device = resolve_device(cfg.train.device)
    return 128 if device.type == "cuda" else 32


# --------------------------------------------------------------------------------------------
# The batched model


class Stacked:
    """P copies of a sequential model, stacked ``[P, ...]``, with a batched forward."""

    def __init__(self, model: nn.Sequential, p: int) -> None:
        self.model = model
        self.p = p
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [
            q.detach().unsqueeze(0).repeat(p, *[1] * q.ndim).clone().requires_grad_(True)
            for q in model.parameters()
        ]
        self._by_name = dict(zip(self.names, self.params))
        # BatchNorm running statistics, per member: [P, C] (F.batch_norm updates them in place)
        self.buffers = {
            n: b.detach().unsqueeze(0).repeat(p, *[1] * b.ndim).clone()
            for n, b in model.named_buffers()
            if not n.endswith("num_batches_tracked")
        }
        self.training = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, B, C]`` for a shared input batch ``x`` of shape ``[B, ...]``."""
        if not isinstance(self.model, nn.Sequential):  # the CIFAR ResNet
            from harness.population_resnet import resnet_forward

            return resnet_forward(self, x)
        p = self.p
        h = x
        layout = (
            "shared"  # shared input | conv: [B, P*C, L] | flat: [B, F] shared | dense: [P, B, F]
        )
        for name, module in self.model.named_children():
            if isinstance(module, nn.Conv1d):
                w = self._by_name[f"{name}.weight"]
                b = self._by_name.get(f"{name}.bias")
                cout = w.shape[1]
                h = F.conv1d(
                    h,
                    w.reshape(p * cout, *w.shape[2:]),
                    b.reshape(p * cout) if b is not None else None,
                    stride=module.stride,
                    padding=module.padding,
                    groups=1 if layout == "shared" else p,
                )
                layout = "conv"
            elif isinstance(module, nn.Flatten):
                if layout == "conv":
                    h = h.reshape(h.shape[0], p, -1).transpose(0, 1)
                    layout = "dense"
                else:
                    h = h.flatten(1)
                    layout = "flat"
            elif isinstance(module, nn.Linear):
                w = self._by_name[f"{name}.weight"]
                b = self._by_name[f"{name}.bias"]
                if layout == "flat":
                    h = h.unsqueeze(0).expand(p, *h.shape)
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
                layout = "dense"
            elif isinstance(module, nn.BatchNorm1d):
                # P members x C channels are P*C independent channels of one batch norm
                dense = layout == "dense"
                if dense:  # [P, B, F] -> [B, P*F]
                    h = h.transpose(0, 1).reshape(h.shape[1], -1)
                h = F.batch_norm(
                    h,
                    self.buffers[f"{name}.running_mean"].view(-1),
                    self.buffers[f"{name}.running_var"].view(-1),
                    self._by_name[f"{name}.weight"].reshape(-1),
                    self._by_name[f"{name}.bias"].reshape(-1),
                    training=self.training,
                    momentum=module.momentum,
                    eps=module.eps,
                )
                if dense:
                    h = h.reshape(h.shape[0], p, -1).transpose(0, 1)
            elif isinstance(module, nn.ReLU):
                h = torch.relu(h)
            else:
                raise TypeError(f"population training cannot batch {type(module).__name__}")
        return h

    @torch.no_grad()
    def errors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wrong = torch.zeros(self.p, device=x.device, dtype=torch.long)
        self.training = False
        try:
            for i in range(0, x.shape[0], EVAL_BATCH):
                logits = self.forward(x[i : i + EVAL_BATCH])
                wrong += (logits.argmax(-1) != y[i : i + EVAL_BATCH].unsqueeze(0)).sum(1)
        finally:
            self.training = True
        return wrong.to(torch.float64) / max(int(x.shape[0]), 1)

    @torch.no_grad()
    def weight_norms(self) -> torch.Tensor:
        sq = sum(q.detach().flatten(1).square().sum(1) for q in self.params)
        return sq.sqrt()

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        return {n: q.detach()[m].clone() for n, q in zip(self.names, self.params)}


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.ndim - 1))


# --------------------------------------------------------------------------------------------
# Training


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
    base = cfgs[0]
    p = len(cfgs)
    setup_threads(base.train.threads)
    device = resolve_device(base.train.device)
    dtype = torch.float64 if base.train.dtype == "float64" else torch.float32
    if data is None:
        data = load_data(base.data, device, dtype)
    seed = int(base.train.seed)
    torch.manual_seed(seed)
    model = build_model(base.model, data.input_shape, data.num_classes).to(device, dtype)
    pop = Stacked(model, p)
    o = base.optimizer
    decay = o.decay
    lr = torch.tensor([float(c.optimizer.lr) for c in cfgs], device=device, dtype=dtype)
    wd = torch.tensor(  # lam = lam_norm*sqrt(b/(B*T)) per member when optimizer.normalized
        [effective_weight_decay(c, data) for c in cfgs], device=device, dtype=dtype
    )
    groups, _ = param_groups(model, 0.0, rule=o.param_groups, no_decay_names=list(o.no_decay_names))
    decayed = {id(q) for q in groups[0]["params"]}
    decays = [id(q) in decayed for q in model.parameters()]
    zero = torch.zeros_like(wd)
    lr_views = [_view(lr, q) for q in pop.params]
    wd_views = [_view(wd if d else zero, q) for q, d in zip(pop.params, decays)]
    penalty = decay == "loss"
    total, per_epoch = total_steps(base, data)
    eval_every = int(base.train.eval_every) or per_epoch
    batch = int(base.data.batch_size)
    gen = torch.Generator().manual_seed(seed)

    bufs = None
    exp_avgs = exp_avg_sqs = max_sqs = None
    if o.name == "adam":
        exp_avgs = [torch.zeros_like(q) for q in pop.params]
        exp_avg_sqs = [torch.zeros_like(q) for q in pop.params]
        max_sqs = [torch.zeros_like(q) for q in pop.params] if o.amsgrad else None
    active = torch.ones(p, dtype=torch.bool, device=device)
    outcome: list[Any] = [None] * p
    best_val = torch.full((p,), math.inf, device=device, dtype=torch.float64)
    last_val = torch.full((p,), math.inf, device=device, dtype=torch.float64)
    train_loss = torch.full((p,), math.nan, device=device, dtype=dtype)
    loss_sum = torch.zeros(p, device=device, dtype=dtype)
    loss_count = 0
    steps = [0] * p

    def freeze(m: int) -> None:
        active[m] = False
        lr[m] = 0.0
        wd[m] = 0.0
        with torch.no_grad():
            for q in pop.params:
                q[m].nan_to_num_(0.0, 0.0, 0.0)

    step = 0
    while step < total and bool(active.any()):
        perm = torch.randperm(data.n_train, generator=gen).to(device)
        for i in range(per_epoch):
            if step >= total or not bool(active.any()):
                break
            idx = perm[i * batch : (i + 1) * batch]
            x = data.augment(data.x_train[idx], gen)
            y = data.y_train[idx]
            logits = pop.forward(x)
            losses = (
                F.cross_entropy(logits.reshape(p * x.shape[0], -1), y.repeat(p), reduction="none")
                .view(p, -1)
                .mean(1)
            )
            total_loss = losses.sum()
            if penalty:
                total_loss = total_loss + 0.5 * sum(
                    (w_ * q.square()).sum() for w_, q in zip(wd_views, pop.params)
                )
            for q in pop.params:
                q.grad = None
            total_loss.backward()
            grads = [q.grad for q in pop.params]
            eta = lr_multiplier(base.schedule, step, total)
            lr_t = [v * eta for v in lr_views]
            with torch.no_grad():
                if o.name == "sgd":
                    bufs = sgd_step(
                        pop.params,
                        grads,
                        bufs,
                        lr=lr_t,
                        weight_decay=0.0 if penalty else wd_views,
                        eta=eta,
                        momentum=float(o.momentum),
                        dampening=float(o.dampening),
                        nesterov=bool(o.nesterov),
                        decay="l2" if penalty else decay,
                    )
                else:
                    adam_step(
                        pop.params,
                        grads,
                        exp_avgs,
                        exp_avg_sqs,
                        max_sqs,
                        step=step + 1,
                        lr=lr_t,
                        weight_decay=0.0 if penalty else wd_views,
                        eta=eta,
                        beta1=float(o.betas[0]),
                        beta2=float(o.betas[1]),
                        eps=float(o.eps),
                        decay="l2" if penalty else decay,
                        amsgrad=bool(o.amsgrad),
                    )
            step += 1
            loss_sum += losses.detach()
            loss_count += 1
            for m in range(p):
                if active[m]:
                    steps[m] = step
            at_eval = step % eval_every == 0 or step == total
            if at_eval or step % 25 == 0:
                bad = active & ~torch.isfinite(loss_sum)
                for m in torch.nonzero(bad).flatten().tolist():
                    outcome[m] = "diverged"
                    freeze(m)
            if at_eval:
                train_loss = loss_sum / loss_count
                last_val = torch.where(active, pop.errors(data.x_val, data.y_val), last_val)
                best_val = torch.minimum(best_val, last_val)
                norms = pop.weight_norms()
                for m in torch.nonzero(active).flatten().tolist():
                    if reports[m] is None:
                        continue
                    metrics = {
                        "train_loss": float(train_loss[m]),
                        "val_error": float(last_val[m]),
                        "lr": float(lr_t[0].flatten()[m]),
                        "eta": eta,
                        "shrink": float(
                            (eta if decay == "independent" else float(lr_t[0].flatten()[m]))
                            * float(wd[m])
                        ),
                        "weight_norm": float(norms[m]),
                        "epoch": step / per_epoch,
                    }
                    try:
                        reports[m](step, metrics)
                    except Exception as exc:  # noqa: BLE001 - pruned members stop, others go on
                        if type(exc).__name__ == "Preempted":
                            raise
                        outcome[m] = exc
                        freeze(m)
                loss_sum.zero_()
                loss_count = 0
    elapsed = time.perf_counter() - t0
    test = pop.errors(data.x_test, data.y_test)
    norms = pop.weight_norms()
    results: list[Any] = []
    for m in range(p):
        if isinstance(outcome[m], BaseException):
            results.append(outcome[m])
        elif outcome[m] == "diverged" or not math.isfinite(float(norms[m])):
            results.append(
                TrialResult(1.0, 1.0, 1.0, math.nan, math.nan, steps[m], elapsed / p, True)
            )
        else:
            results.append(
                TrialResult(
                    test_error=float(test[m]),
                    val_error=float(best_val[m]),
                    final_val_error=float(last_val[m]),
                    train_loss=float(train_loss[m]),
                    weight_norm=float(norms[m]),
                    steps=steps[m],
                    wall_s=elapsed / p,  # the population's wall time, shared among members
                    diverged=False,
                )
            )
    if return_states:
        return [(r, pop.member_state(m)) for m, r in enumerate(results)]
    return results


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
                try:
                    out[i] = run_trial(cfgs[i], report=reports[i])
                except Exception as exc:  # noqa: BLE001 - recorded on the trial
                    if type(exc).__name__ == "Preempted":
                        raise
                    out[i] = exc
            continue
        for i, r in zip(idx, _train_split([cfgs[i] for i in idx], [reports[i] for i in idx])):
            out[i] = r
    return out


def _train_split(cfgs: list[Any], reports: list[Any]) -> list[Any]:
    try:
        return train_population(cfgs, reports)
    except torch.OutOfMemoryError:
        if len(cfgs) == 1:
            raise
        half = len(cfgs) // 2
        return _train_split(cfgs[:half], reports[:half]) + _train_split(cfgs[half:], reports[half:])
