"""The batched model of population training: P members of one sequential model, stacked.

The members' parameters are stacked along a leading dimension ``[P, ...]`` and the sequential
model of ``harness.models`` is walked layer by layer: ``Linear`` becomes one ``baddbmm`` over the
P members, ``Conv1d`` batched GEMMs on channels-last activations ``[P, B, L, C]``
(:func:`conv1d_members`; the first layer's shared input is unfolded once, :func:`conv1d_shared`),
``BatchNorm1d`` per member and channel (BatchNorm of P members x C channels is one batch norm
over P*C channels, with per-member running statistics), ``ReLU`` and ``Flatten`` act on the
batched layout. Every member starts from the sequential model's initial weights for its seed.
A model with its own batched forward (its registry entry's ``batched_forward``, e.g. the CIFAR
ResNets' in :mod:`harness.population_resnet`) plugs into :class:`Stacked` instead of the walk.
Relative speeds of the kernels (CPU): docs/population.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.loop import EVAL_BATCH
from harness.population_generic import Members

EVAL_CHUNK = 4096  # member-samples per evaluation batch on a CPU (see Stacked.errors)


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
        # activations in cache (docs/population.md); the sequential runner's batch on a GPU
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
    # fall back to copying it member by member, forward and backward
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
    member; on a CPU oneDNN's grouped convolution, ``groups=P``, is slower: docs/population.md).

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
