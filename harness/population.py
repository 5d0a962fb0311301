"""Population training: P grid cells trained at once as one batched model on one device.

Small models leave a CPU (and far more a GPU) idle: a sweep's cost is launch and framework
overhead, not arithmetic. Here the P members' parameters are stacked along a leading dimension
``[P, ...]`` and trained together:

- **Same model, batched.** The sequential model of ``harness.models`` is built once for the seed
  and walked layer by layer: ``Linear`` becomes one ``baddbmm`` over the P members, ``Conv1d``
  batched GEMMs on channels-last activations ``[P, B, L, C]`` (:func:`conv1d_members`; the first
  layer's shared input is unfolded once, :func:`conv1d_shared`), ``BatchNorm1d`` per member and
  channel, ``ReLU`` and ``Flatten`` act on the batched layout. Every member starts from the
  sequential model's initial weights for its seed and sees the same batches (common random
  numbers).
- **Same update rules.** Members differ in lr and weight decay, which are per-member tensors
  (``[P, 1, ..., 1]`` views) fed to ``harness.optim.functional.sgd_step`` / ``adam_step``, the
  rules the optimizer classes run: no second copy of the math.
- **Independent members.** Each member's loss is the mean cross-entropy over the batch; the
  population loss is their sum, so each member's gradient is exactly its own. A member whose loss
  turns non-finite is frozen (lr and wd set to 0) and recorded as diverged; a pruned member is
  frozen the same way; the others carry on untouched.

Speed (CPU; see docs/population.md): the step is written as functions of tensors only
(``_population_loss``, ``_sgd_update`` / ``_adam_update``), so ``train.compile=true`` can hand them
to ``torch.compile`` once per process and shape (eager fallback if compilation fails; each
population logs which step ran on the ``lrwd.population`` logger), and glibc is told to keep
freed blocks (:func:`keep_freed_memory`) so a step's multi-MB activations and gradients are not
page-faulted in afresh every step.

Supported: the models and optimizer families whose :mod:`harness.registry` entry says
``population=True``: today the MLPs and 1-D CNNs (BatchNorm of P members x C channels is one
batch norm over P*C channels, with per-member running statistics), the CIFAR ResNets (grouped
2-D convolutions, ``harness/population_resnet.py``); SGD and Adam with any decay form, any
parameter-group rule, normalized weight decay, constant weight decay. Anything else (relative or
scheduled decay) runs through the sequential trial runner, so every config still gets a correct
result. Every other model (a user's ``model._target_``, an entry with ``population=False``)
trains its populations through ``torch.func.vmap`` (:mod:`harness.population_generic`), or
sequentially, said in one line, when ``vmap`` cannot run it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness import registry
from harness.data import Dataset
from harness.instruments import Instruments
from harness.models import build_model, loss_function, model_spec
from harness.optim.functional import adam_step, sgd_step
from harness.optim.groups import param_groups
from harness.population_generic import GenericStacked, Members, NotBatchable
from harness.results import Preempted, TrialResult, with_layers
from harness.schedules import lr_multiplier
from harness.train import (
    EVAL_BATCH,
    effective_weight_decay,
    first_at_target,
    instrument_fields,
    instruments_on,
    invariant_names,
    report_metrics,
    resolve_device,
    run_trial,
    set_up,
    training_starts,
)

EVAL_CHUNK = 4096  # member-samples per evaluation batch on a CPU (see Stacked.errors)
Report = Callable[[int, dict[str, float]], None]
log = logging.getLogger("lrwd.population")


def supports(cfg: Any) -> bool:
    """True when ``cfg`` can run in a population (else the sequential runner is used)."""
    o = cfg.optimizer
    family = registry.OPTIMIZERS.get(o.name)
    # every model: the hand-written layers where its entry has them (``population=True``),
    # else harness.population_generic (vmap), which falls back to sequential trials itself
    return (
        family is not None and family.population and not o.relative and o.wd_schedule == "constant"
    )


MEMORY_FRACTION = 0.5  # of the free device memory that sweep.population=auto may plan to use


def member_bytes(cfg: Any) -> int:
    """Estimated memory of one population member for ``cfg``: parameters with their gradient and
    optimizer state (x5), the training batch's activations x3 (outputs, saved for backward, their
    gradients), the evaluation batch's two largest layer outputs. From the model built on the
    ``meta`` device (shapes only, no compute, no data loaded)."""
    if cfg.data.get("_target_"):  # a user's data: its shapes are known once it is loaded
        from harness.data import load_data

        loaded = load_data(cfg.data)
        shape, classes = loaded.input_shape, loaded.num_classes
    else:
        data = registry.dataset(cfg.data.name)
        shape, classes = data.shape, data.classes
    with torch.device("meta"):
        model = build_model(cfg.model, shape, classes)
        outputs: list[int] = []

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor) -> None:
            outputs.append(out.numel())

        leaves = [m for m in model.modules() if not list(m.children())]
        handles = [m.register_forward_hook(hook) for m in leaves]
        batch = int(cfg.data.batch_size)
        model(torch.empty(batch, *shape))
        for h in handles:
            h.remove()
    n_params = sum(q.numel() for q in model.parameters())
    per_sample = [n / batch for n in outputs]
    eval_batch = EVAL_BATCH if resolve_device(cfg.train.device).type == "cuda" else 128
    largest = sorted(per_sample)[-2:]
    elems = 5 * n_params + 3 * sum(outputs) + eval_batch * sum(largest)
    return int(elems * (8 if cfg.train.dtype == "float64" else 4))


def free_memory_bytes(device: torch.device) -> int | None:
    """Free memory of ``device`` (CUDA: ``mem_get_info``; CPU: Linux ``MemAvailable``), or None
    when it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def auto_population_size(cfg: Any) -> int:
    """``sweep.population=auto``: 1 for unsupported configs; else 32 on a CPU and 128 on a GPU
    (the measured sweet spots, docs/population.md), capped so that P members' estimated memory
    (:func:`member_bytes`) stays within ``MEMORY_FRACTION`` of the device's free memory. A
    population that still runs out of memory is split in halves (:func:`run_population`)."""
    if not supports(cfg):
        return 1
    device = resolve_device(cfg.train.device)
    p = 128 if device.type == "cuda" else 32
    free = free_memory_bytes(device)
    if free is not None:
        try:
            p = min(p, int(MEMORY_FRACTION * free // max(member_bytes(cfg), 1)))
        except Exception:  # noqa: BLE001 - a user's model that cannot be built on "meta"
            if not cfg.model.get("_target_"):
                raise
    return max(p, 1)


# --------------------------------------------------------------------------------------------
# The batched model


class Stacked(Members):
    """P copies of a sequential model, stacked ``[P, ...]``, with a batched forward."""

    def __init__(
        self, model: nn.Module, p: int, forward: Callable[[Any, torch.Tensor], Any] | None = None
    ) -> None:
        self._stack(model, p)
        self._by_name = dict(zip(self.names, self.params))
        # BatchNorm running statistics, per member: [P, C] (F.batch_norm updates them in place)
        self.buffers = {
            n: b.detach().unsqueeze(0).repeat(p, *[1] * b.ndim).clone()
            for n, b in model.named_buffers()
            if not n.endswith("num_batches_tracked")
        }
        # the sequential nets as plain tuples; None for a model with its own batched forward
        # (its registry entry's ``batched_forward``, e.g. the ResNet's in harness.population_resnet)
        self._forward = forward
        self.layers = layer_spec(model) if forward is None else None
        self.training = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, B, C]`` for a shared input batch ``x`` of shape ``[B, ...]``."""
        if self._forward is not None:
            return self._forward(self, x)
        return batched_forward(self.layers, self._by_name, self.buffers, x, self.p, self.training)

    @torch.no_grad()
    def errors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        wrong = torch.zeros(self.p, device=x.device, dtype=torch.long)
        self.training = False
        # P members x chunk samples of activations at once: ~4k member-samples keep a CPU's
        # activations in cache (2.5x faster than 2,000 samples at P=16); the sequential runner's
        # batch on a GPU
        chunk = EVAL_BATCH if x.device.type == "cuda" else max(32, EVAL_CHUNK // self.p)
        try:
            for i in range(0, x.shape[0], chunk):
                logits = self.forward(x[i : i + chunk])
                wrong += (logits.argmax(-1) != y[i : i + chunk].unsqueeze(0)).sum(1)
        finally:
            self.training = True
        return wrong.to(torch.float64) / max(int(x.shape[0]), 1)


def layer_spec(model: nn.Sequential) -> tuple[tuple[Any, ...], ...]:
    """The layers of ``model`` as plain tuples (kind, name, hyperparameters): what
    :func:`batched_forward` needs, free of module objects (a compiled step guards on these
    values only, so populations of the same shapes share one compiled graph)."""
    out: list[tuple[Any, ...]] = []
    for name, m in model.named_children():
        if isinstance(m, nn.Conv1d):
            if m.groups != 1 or m.dilation != (1,) or m.padding_mode != "zeros":
                raise TypeError("population training batches Conv1d with groups=1, dilation=1")
            out.append(("conv", name, m.bias is not None, m.stride[0], m.padding[0]))
        elif isinstance(m, nn.Flatten):
            out.append(("flatten", name))
        elif isinstance(m, nn.Linear):
            out.append(("linear", name))
        elif isinstance(m, nn.BatchNorm1d):
            if m.momentum is None or not m.track_running_stats:
                raise TypeError(
                    "population training batches BatchNorm1d with a float momentum and running "
                    "statistics"
                )
            out.append(("bn", name, m.momentum, float(m.eps)))
        elif isinstance(m, nn.ReLU):
            out.append(("relu", name))
        else:
            raise TypeError(f"population training cannot batch {type(m).__name__}")
    return tuple(out)


def member_batch_norm(
    h: torch.Tensor,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    name: str,
    momentum: float | None,
    eps: float,
    training: bool,
) -> torch.Tensor:
    """P members x C channels as P*C independent channels of one batch norm (``h`` is
    ``[B, P*C, ...]``; the running statistics ``[P, C]`` stay per member). A BatchNorm without
    gain and shift (``affine=False``) has no ``weight`` / ``bias`` in ``params``."""
    weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
    return F.batch_norm(
        h,
        buffers[f"{name}.running_mean"].view(-1),
        buffers[f"{name}.running_var"].view(-1),
        None if weight is None else weight.reshape(-1),
        None if bias is None else bias.reshape(-1),
        training=training,
        momentum=momentum,
        eps=eps,
    )


def _members_gemm(
    a: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, bsz: int, lout: int
) -> torch.Tensor:
    """``a`` ``[P, B*Lout, K]`` times each member's weights ``w`` ``[P, Cout, ...]`` (flattened
    to ``K`` columns), plus its bias ``[P, Cout]``: ``[P, B, Lout, Cout]``."""
    p, cout = w.shape[0], w.shape[1]
    # contiguous: a strided slice such as ``w[..., 0]`` is no BLAS operand, and ``bmm`` would
    # fall back to copying it member by member, forward and backward (~2x slower here)
    wt = w.reshape(p, cout, -1).contiguous().transpose(1, 2)
    out = torch.bmm(a, wt) if b is None else torch.baddbmm(b.unsqueeze(1), a, wt)
    return out.view(p, bsz, lout, cout)


def conv1d_shared(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """P members' ``Conv1d`` of one shared input ``x`` ``[B, Cin, L]`` -> ``[P, B, Lout, Cout]``
    (members' activations channels-last). The input is shared, so its im2col ``[B*Lout, Cin*k]``
    is built once (no gradient flows to it) and every member is one GEMM of it with its weights
    ``[Cin*k, Cout]``."""
    p, _, cin, k = w.shape
    cols = F.pad(x, (padding, padding)).unfold(2, k, stride)  # [B, Cin, Lout, k]
    bsz, lout = cols.shape[0], cols.shape[2]
    cols = cols.permute(0, 2, 1, 3).reshape(1, bsz * lout, cin * k).expand(p, -1, -1)
    return _members_gemm(cols, w, b, bsz, lout)


class _PairConv(torch.autograd.Function):
    """P members' ``Conv1d`` with kernel 3, stride 2, padding 1 on an even length, forward and
    backward written out (see ``conv1d_members``). Against autograd over the same GEMMs it
    saves the backward's zero-filled slice gradient and the sum of the two input-gradient
    contributions (the odd tap's gradient is added in place into the pair GEMM's), and the
    forward's padded copy of the shifted product."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        p, bsz, length, cin = h.shape
        cout, lout = w.shape[1], length // 2
        pair = h.reshape(p, bsz * lout, 2 * cin)  # rows (x[2l], x[2l+1])
        w12 = w[..., 1:].transpose(2, 3).reshape(p, cout, 2 * cin)  # taps 1, 2 (a copy)
        w0 = w[..., 0].contiguous()  # tap 0, applied to x[2l-1]
        wt = w12.transpose(1, 2)
        # written through a view into a 4-D base, so the output is no view: ops may run on it in
        # place (autograd forbids in-place ops on a view made inside a custom Function)
        out = h.new_empty(p, bsz, lout, cout)
        flat = out.view(p, bsz * lout, cout)
        if b is None:
            torch.bmm(pair, wt, out=flat)
        else:
            torch.baddbmm(b.unsqueeze(1), pair, wt, out=flat)
        prev = torch.bmm(pair[:, :, cin:], w0.transpose(1, 2))
        out[:, :, 1:] += prev.view(p, bsz, lout, cout)[:, :, :-1]
        ctx.save_for_backward(pair, w12, w0)
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        pair, w12, w0 = ctx.saved_tensors
        p, n, cin2 = pair.shape
        cin = cin2 // 2
        _, bsz, lout, cout = g.shape
        g = g.contiguous()
        gf = g.view(p, n, cout)
        dh = dw = db = None
        if ctx.needs_input_grad[0]:
            dpair = torch.bmm(gf, w12)  # [P, N, 2Cin]
            dprev = torch.bmm(gf, w0).view(p, bsz, lout, cin)  # row l: g[l] @ W0, for x[2l-1]
            dpair.view(p, bsz, lout, 2 * cin)[:, :, :-1, cin:] += dprev[:, :, 1:]
            dh = dpair.view(p, bsz, 2 * lout, cin)
        if ctx.needs_input_grad[1]:
            shifted = g.new_zeros(p, bsz, lout, cout)  # row l: g[l+1] (x[2l+1] feeds out[l+1])
            shifted[:, :, :-1] = g[:, :, 1:]
            dw12 = torch.bmm(gf.transpose(1, 2), pair)  # [P, Cout, 2Cin]
            dw0 = torch.bmm(shifted.view(p, n, cout).transpose(1, 2), pair[:, :, cin:])
            dw = g.new_empty(p, cout, cin, 3)
            dw[..., 0] = dw0
            dw[..., 1:] = dw12.view(p, cout, 2, cin).transpose(2, 3)
        if ctx.needs_input_grad[2]:  # False when b is None
            db = gf.sum(1)
        return dh, dw, db


def conv1d_members(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, stride: int, padding: int
) -> torch.Tensor:
    """P members' ``Conv1d``, each on its own input: ``h`` ``[P, B, L, Cin]`` (channels-last)
    -> ``[P, B, Lout, Cout]``, as batched GEMMs over the members (``bmm``: one BLAS GEMM per
    member; oneDNN's grouped convolution, ``groups=P``, was 2-10x slower on CPU).

    The CNNs' ``kernel 3, stride 2, padding 1`` on an even length needs no im2col copy: the
    input viewed as ``[P, B*L/2, 2*Cin]`` holds the pairs ``(x[2l], x[2l+1])``, so
    ``out[l] = pair[l] @ [W1; W2] + x[2l-1] @ W0`` is one GEMM on that view plus one on its odd
    half (a strided view) shifted by one position (``_PairConv``, whose backward is written
    out too). Other shapes take an im2col (unfold) copy."""
    p, bsz, length, cin = h.shape
    k = w.shape[3]
    if (k, stride, padding) == (3, 2, 1) and length % 2 == 0:
        return _PairConv.apply(h, w, b)
    cols = F.pad(h, (0, 0, padding, padding)).unfold(2, k, stride)  # [P, B, Lout, Cin, k]
    lout = cols.shape[2]
    return _members_gemm(cols.reshape(p, bsz * lout, cin * k), w, b, bsz, lout)


def batch_norm_members(
    h: torch.Tensor,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    name: str,
    momentum: float,
    eps: float,
    training: bool,
) -> torch.Tensor:
    """``BatchNorm1d`` of P members' channels-last activations ``[P, B, L, C]``: statistics per
    member and channel over (B, L), running statistics ``[P, C]`` updated as ``nn.BatchNorm1d``
    does (momentum, unbiased running variance)."""
    rm, rv = buffers[f"{name}.running_mean"], buffers[f"{name}.running_var"]
    if training:
        var, mean = torch.var_mean(h, dim=(1, 2), correction=0)
        n = h.shape[1] * h.shape[2]
        with torch.no_grad():
            rm.lerp_(mean, momentum)
            rv.lerp_(var * (n / max(n - 1, 1)), momentum)
    else:
        var, mean = rv, rm
    scale = torch.rsqrt(var + eps)  # [P, C]
    weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
    if weight is not None:
        scale = weight * scale
    shift = -mean * scale if bias is None else bias - mean * scale
    return torch.addcmul(shift[:, None, None], h, scale[:, None, None])


def batched_forward(
    layers: tuple[tuple[Any, ...], ...],
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    p: int,
    training: bool,
) -> torch.Tensor:
    """Logits ``[P, B, C]`` of P stacked members for a shared input batch ``x`` ``[B, ...]``."""
    h = x
    # shared input | seq: [P, B, L, C] (conv activations, channels-last) | flat: [B, F] shared
    # | dense: [P, B, F]
    layout = "shared"
    for kind, name, *hyper in layers:
        if kind == "conv":
            has_bias, stride, padding = hyper
            b = params[f"{name}.bias"] if has_bias else None
            w = params[f"{name}.weight"]
            if layout == "shared":
                h = conv1d_shared(h, w, b, stride, padding)
            else:
                h = conv1d_members(h, w, b, stride, padding)
            layout = "seq"
        elif kind == "flatten":
            if layout == "seq":  # [P, B, L, C] -> [P, B, C*L], nn.Flatten's (channel, position)
                h = h.transpose(2, 3).reshape(p, h.shape[1], -1)
                layout = "dense"
            else:
                h = h.flatten(1)
                layout = "flat"
        elif kind == "linear":
            w = params[f"{name}.weight"]
            b = params[f"{name}.bias"]
            if layout == "flat":
                h = h.unsqueeze(0).expand(p, *h.shape)
            h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            layout = "dense"
        elif kind == "bn":
            momentum, eps = hyper
            if layout == "seq":
                h = batch_norm_members(h, params, buffers, name, momentum, eps, training)
            else:  # [P, B, F] -> [B, P*F]: one batch norm over P*F channels
                h = h.transpose(0, 1).reshape(h.shape[1], -1)
                h = member_batch_norm(h, params, buffers, name, momentum, eps, training)
                h = h.reshape(h.shape[0], p, -1).transpose(0, 1)
        else:  # relu; in place when nothing is recorded for backward (evaluation): in place on
            # a view (the layouts above) would make autograd copy slices back in the backward
            h = torch.relu(h) if h.requires_grad else torch.relu_(h)
    return h


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.ndim - 1))


# --------------------------------------------------------------------------------------------
# One training step, as functions of tensors only (one compiled graph serves every population
# of the same shapes; nothing here closes over a population's tensors)


def _population_loss(
    layers: tuple[tuple[Any, ...], ...],
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    p: int,
    penalty_wd: list[torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(each member's mean cross-entropy ``[P]``, the population loss: their sum, plus
    ``wd/2 * ||w||^2`` per member for ``decay="loss"``)."""
    logits = batched_forward(layers, params, buffers, x, p, True)
    return _loss_of(logits, y, p, params, penalty_wd)


def _loss_of(
    logits: torch.Tensor,
    y: torch.Tensor,
    p: int,
    params: dict[str, torch.Tensor],
    penalty_wd: list[torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    losses = (
        F.cross_entropy(logits.reshape(p * y.shape[0], -1), y.repeat(p), reduction="none")
        .view(p, -1)
        .mean(1)
    )
    total = losses.sum()
    if penalty_wd is not None:
        total = total + 0.5 * sum(
            (w_ * q.square()).sum() for w_, q in zip(penalty_wd, params.values())
        )
    return losses, total


def _sgd_update(
    params, grads, bufs, lr_views, eta, wd, momentum, dampening, nesterov, decay, first
):
    """``harness.optim.functional.sgd_step`` with per-member lr ``lr_views * eta``; momentum
    buffers are preallocated and filled from the gradients at the first step. ``eta``: a float,
    or a 0-d tensor (compiled: a float would be a constant of the graph, recompiled per step)."""
    sgd_step(
        params,
        grads,
        bufs,
        lr=[v * eta for v in lr_views],
        weight_decay=wd,
        eta=eta if isinstance(eta, float) else [eta] * len(params),
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        decay=decay,
        init_buffers=first,
    )


def _adam_update(
    params, grads, exp_avgs, exp_avg_sqs, max_sqs, step, lr_views, eta, wd, b1, b2, eps, decay, ams
):
    """``harness.optim.functional.adam_step`` with per-member lr ``lr_views * eta``; ``step`` and
    ``eta``: numbers, or 0-d tensors (compiled)."""
    tensors = not isinstance(eta, float)
    adam_step(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_sqs,
        step=[step] * len(params) if tensors else step,
        lr=[v * eta for v in lr_views],
        weight_decay=wd,
        eta=[eta] * len(params) if tensors else eta,
        beta1=b1,
        beta2=b2,
        eps=eps,
        decay=decay,
        amsgrad=ams,
    )


_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """Linux / glibc only: let ``free`` keep large blocks for reuse (``mallopt``: mmap threshold
    32 MiB, the maximum; trim threshold 1 GiB) instead of unmapping them and page-faulting fresh
    zeroed pages in at the next allocation. A population step allocates and frees the same
    multi-MB activations and gradients every step; with glibc's adaptive defaults a CPU CNN
    population (P=32) took ~4,000-12,000 page faults per step. Process-wide and idempotent; the
    cost is that the process keeps up to its peak heap mapped. True when applied."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1
        ok = ok and libc.mallopt(m_trim_threshold, 2**30) == 1
    except (OSError, AttributeError):  # not glibc
        return False
    _MALLOC_TUNED = ok
    return ok


_COMPILED: dict[Callable[..., Any], Callable[..., Any] | None] = {}
_COMPILE_FAILED: dict[Callable[..., Any], str] = {}  # why a function runs eagerly from now on


class _Step:
    """``fn``, or with ``compiled`` its ``torch.compile`` (inductor; built once per process and
    shared by every population, so same-shaped populations compile once). If compilation fails
    (no C++ compiler, an unsupported op), a warning is issued and ``fn`` runs eagerly from then
    on; the step that failed is rerun eagerly (compilation fails before the graph runs).

    Records how its calls ran: ``compiled_calls``, ``eager_calls`` and ``failure`` (why a
    requested compilation is not running, else None); :attr:`mode` sums them up."""

    def __init__(self, fn: Callable[..., Any], compiled: bool) -> None:
        self.fn = fn
        self.compiled = compiled
        self.compiled_calls = 0
        self.eager_calls = 0
        self.failure: str | None = None
        if compiled and fn not in _COMPILED:
            # static shapes: one graph per (model, optimizer variant, P); Dynamo's default limit
            # of 8 graphs per function would silently send the 9th shape to eager
            dynamo = torch._dynamo.config
            dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
            _COMPILED[fn] = torch.compile(fn, dynamic=False)

    @property
    def mode(self) -> str:
        """``"compiled"`` when every call ran the compiled function, else ``"eager"``."""
        return "compiled" if self.compiled_calls and not self.eager_calls else "eager"

    def __call__(self, *args: Any) -> Any:
        c = _COMPILED.get(self.fn) if self.compiled else None
        if c is not None:
            try:
                out = c(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                warnings.warn(
                    f"population training: torch.compile of {self.fn.__name__} failed, running "
                    f"eagerly ({reason})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _COMPILED[self.fn] = None
                _COMPILE_FAILED[self.fn] = reason
            else:
                self.compiled_calls += 1
                return out
        if self.compiled:
            self.failure = _COMPILE_FAILED.get(self.fn, "torch.compile failed")
        self.eager_calls += 1
        return self.fn(*args)


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

    def allocator(device: torch.device) -> None:
        if device.type == "cpu":
            keep_freed_memory()

    run = set_up(base, data, before_data=allocator)
    device, dtype, data, model = run.device, run.dtype, run.data, run.model
    spec = model_spec(base.model)
    user_loss = loss_function(base)
    if spec.population and user_loss is None:
        pop = Stacked(
            model, p, registry.resolve(spec.batched_forward) if spec.batched_forward else None
        )
    else:  # no hand-written batched path: vmap (raises NotBatchable before any step)
        pop = GenericStacked(model, p, user_loss)
        pop.probe(data.x_train[: run.batch], data.y_train[: run.batch])
    o = base.optimizer
    form = registry.decay(o.decay)
    # reported as given (a float32 tensor would round them)
    lrs = [float(c.optimizer.lr) for c in cfgs]
    wds = [effective_weight_decay(c, data) for c in cfgs]  # normalized: lam_norm*sqrt(b/(B*T))
    lr = torch.tensor(lrs, device=device, dtype=dtype)
    wd = torch.tensor(wds, device=device, dtype=dtype)
    invariant = invariant_names(base, run)
    groups, _ = param_groups(
        model,
        0.0,
        rule=o.param_groups,
        no_decay_names=list(o.no_decay_names),
        invariant=invariant,
    )
    decayed = {id(q) for q in groups[0]["params"]}
    decays = [id(q) in decayed for q in model.parameters()]
    zero = torch.zeros_like(wd)
    # the tensors the optimizer updates: all but frozen ones (requires_grad=False)
    trained = [q.requires_grad for q in pop.params]
    tparams = [q for q, t in zip(pop.params, trained) if t]
    lr_views = [_view(lr, q) for q in tparams]
    wd_views = [_view(wd if d else zero, q) for q, d in zip(pop.params, decays)]
    penalty = form.penalty
    total, per_epoch, batch, gen = run.total, run.per_epoch, run.batch, run.gen

    bufs = None
    if o.name == "sgd" and float(o.momentum) != 0.0:
        bufs = [torch.zeros_like(q) for q in tparams]  # filled from the grads at step 0
    # a model with its own batched forward (the ResNet) runs eagerly: that forward walks the module
    compile_requested = bool(base.train.get("compile", False))
    compiled = compile_requested and pop.layers is not None
    loss_step = _Step(_population_loss, compiled)
    loss_fn: Callable[..., Any] = loss_step
    if pop.layers is None:

        def loss_fn(layers, params, buffers, x, y, p, penalty_wd):  # noqa: ARG001
            if isinstance(pop, GenericStacked):
                return pop.loss_of(x, y, penalty_wd)
            return _loss_of(pop.forward(x), y, p, params, penalty_wd)

    sgd = o.name == "sgd"
    update_fn = _Step(_sgd_update if sgd else _adam_update, compiled)
    # the update's fixed arguments, read from the config once (OmegaConf access is slow per step)
    step_wd = 0.0 if penalty else [v for v, t in zip(wd_views, trained) if t]
    step_decay = form.mode
    if sgd:
        hyper = (float(o.momentum), float(o.dampening), bool(o.nesterov), step_decay)
    else:
        hyper = (float(o.betas[0]), float(o.betas[1]), float(o.eps), step_decay, bool(o.amsgrad))

    def step_arg(v: float) -> float | torch.Tensor:  # compiled: per-step numbers as inputs
        return torch.tensor(v, dtype=torch.float64) if compiled else v

    exp_avgs = exp_avg_sqs = max_sqs = None
    if o.name == "adam":
        exp_avgs = [torch.zeros_like(q) for q in tparams]
        exp_avg_sqs = [torch.zeros_like(q) for q in tparams]
        max_sqs = [torch.zeros_like(q) for q in tparams] if o.amsgrad else None
    inst = None
    if instruments_on(base):
        tnames = [n for n, t in zip(pop.names, trained) if t]
        inst = Instruments(tnames, [q.detach() for q in tparams], invariant or [], run.total)
    active = torch.ones(p, dtype=torch.bool, device=device)
    outcome: list[Any] = [None] * p
    best_val = torch.full((p,), math.inf, device=device, dtype=torch.float64)
    last_val = torch.full((p,), math.inf, device=device, dtype=torch.float64)
    target = float(base.train.target_accuracy)
    reached = [math.nan] * p  # steps_to_target per member
    test_now = [math.nan] * p
    train_loss = torch.full((p,), math.nan, device=device, dtype=dtype)
    loss_sum = torch.zeros(p, device=device, dtype=dtype)
    loss_count = 0
    steps = [0] * p
    live = list(range(p))  # the active members, as a list (no tensor reads per step)

    def freeze(m: int) -> None:
        active[m] = False
        live.remove(m)
        lr[m] = 0.0
        wd[m] = 0.0
        with torch.no_grad():
            for q in pop.params:
                q[m].nan_to_num_(0.0, 0.0, 0.0)

    step = 0
    training_starts(reports)
    while step < total and live:
        perm = torch.randperm(data.n_train, generator=gen).to(device)
        for i in range(per_epoch):
            if step >= total or not live:
                break
            idx = perm[i * batch : (i + 1) * batch]
            x = data.augment(data.x_train[idx], gen)
            y = data.y_train[idx]
            losses, total_loss = loss_fn(
                pop.layers,
                pop._by_name,
                pop.buffers,
                x,
                y,
                p,
                wd_views if penalty else None,
            )
            for q in pop.params:
                q.grad = None
            total_loss.backward()
            grads = [q.grad for q in tparams]
            eta = lr_multiplier(base.schedule, step, total)
            eta_arg = step_arg(eta)
            if inst is not None:
                inst.before()
            with torch.no_grad():
                if sgd:
                    update_fn(tparams, grads, bufs, lr_views, eta_arg, step_wd, *hyper, step == 0)
                else:
                    update_fn(
                        tparams,
                        grads,
                        exp_avgs,
                        exp_avg_sqs,
                        max_sqs,
                        step_arg(step + 1),
                        lr_views,
                        eta_arg,
                        step_wd,
                        *hyper,
                    )
            if inst is not None:
                inst.after(step, eta)
            step += 1
            loss_sum += losses.detach()
            loss_count += 1
            for m in live:
                steps[m] = step
            at_eval = run.reports_at(step)
            if at_eval or step % 25 == 0:
                bad = active & ~torch.isfinite(loss_sum)
                for m in torch.nonzero(bad).flatten().tolist():
                    outcome[m] = "diverged"
                    freeze(m)
            if at_eval:
                train_loss = loss_sum / loss_count
                last_val = torch.where(active, pop.errors(data.x_val, data.y_val), last_val)
                best_val = torch.minimum(best_val, last_val)
                if target > 0:
                    test_now = pop.errors(data.x_test, data.y_test).tolist()
                    for m in live:
                        reached[m] = first_at_target(reached[m], step, test_now[m], target)
                norms = pop.weight_norms()
                measured = inst.report() if inst is not None else [{}] * p
                for m in torch.nonzero(active).flatten().tolist():
                    if reports[m] is None:
                        continue
                    # shrink as harness.optim records it: the form's eta_t*wd or lr_t*wd (a loss
                    # penalty's gradient wd*w shrinks like the mode it runs)
                    lr_t = lrs[m] * eta
                    shrink = (eta if form.shrink == "eta" else lr_t) * wds[m]
                    metrics = report_metrics(
                        float(train_loss[m]),
                        float(last_val[m]),
                        lr_t,
                        eta,
                        shrink,
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
    elapsed = time.perf_counter() - t0
    _log_step(p, base, compile_requested, pop.layers is None, loss_step, update_fn)
    test = pop.errors(data.x_test, data.y_test)
    norms = pop.weight_norms()
    summaries = inst.summary() if inst is not None else [None] * p
    layers = inst.layer_summary() if inst is not None else [None] * p
    results: list[Any] = []
    for m in range(p):
        if isinstance(outcome[m], BaseException):
            results.append(outcome[m])
        elif outcome[m] == "diverged" or not math.isfinite(float(norms[m])):
            result = TrialResult.of_divergence(steps[m], elapsed / p)
            result = dataclasses.replace(result, **instrument_fields(summaries[m], True))
            results.append(with_layers(result, layers[m], True))
        else:
            results.append(
                with_layers(
                    TrialResult(
                        test_error=float(test[m]),
                        val_error=float(best_val[m]),
                        final_val_error=float(last_val[m]),
                        train_loss=float(train_loss[m]),
                        weight_norm=float(norms[m]),
                        steps=steps[m],
                        wall_s=elapsed / p,  # the population's wall time, shared among members
                        diverged=False,
                        steps_to_target=reached[m],
                        **instrument_fields(summaries[m], False),
                    ),
                    layers[m],
                    False,
                )
            )
    if return_states:
        return [(r, pop.member_state(m)) for m, r in enumerate(results)]
    return results


def _log_step(
    p: int, cfg: Any, requested: bool, resnet: bool, loss_step: _Step, update_step: _Step
) -> None:
    """One line on the ``lrwd.population`` logger saying how the population's step ran; the
    record carries it as ``step_mode`` (``"compiled"`` or ``"eager"``)."""
    what = f"population of {p} {cfg.model.name} members"
    if not requested:
        log.debug("%s: eager step", what, extra={"step_mode": "eager"})
        return
    if resnet:
        log.info(
            "%s: eager step (train.compile covers the hand-batched sequential models only)",
            what,
            extra={"step_mode": "eager"},
        )
        return
    modes = {loss_step.mode, update_step.mode}
    if modes == {"compiled"}:
        log.info("%s: compiled step (torch.compile)", what, extra={"step_mode": "compiled"})
        return
    reason = loss_step.failure or update_step.failure or "no step ran compiled"
    log.warning(
        "%s: eager step, train.compile=true not in effect (%s)",
        what,
        reason,
        extra={"step_mode": "eager"},
    )


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
