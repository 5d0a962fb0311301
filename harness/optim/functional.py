"""Update rules, written once on lists of tensors with ``torch._foreach_*`` ops.

The optimizer classes (:mod:`harness.optim.optimizers`) and population training both call
:func:`sgd_step` and :func:`adam_step`. Notation for one step (``w`` a parameter, ``g`` its gradient)::

    lr   = lr_t = a * eta_t        learning rate this step (a = base lr, lr_0)
    eta  = eta_t = lr_t / lr_0     schedule multiplier (only decay="independent" reads it)
    wd   = lambda                  weight decay
    r    = max(rms(w), 1e-3)       if relative=True (Adafactor style), else r = 1

    decay="l2":          g <- g + wd * r * w        before momentum / moments
    decay="decoupled":   w <- w * (1 - lr  * wd * r) before the update (torch.optim.AdamW)
    decay="independent": w <- w * (1 - eta * wd * r) before the update (Loshchilov & Hutter)

``lr``, ``weight_decay`` and ``eta`` are each a Python float or a sequence of tensors, one per
parameter, broadcastable to it (population training stacks P members as ``[P, ...]`` and passes
``[P, 1, ..., 1]`` hyperparameters). With ``stacked=True`` the RMS of relative decay is taken
per member (over all dims but the first) instead of per tensor.

State lists may be :class:`FlatList` objects (views into one contiguous buffer): ops that touch
only that state then run on a few contiguous chunks instead of once per tensor. Call the rules
under ``torch.no_grad()``. With float params, the op sequence is torch.optim's foreach one, so
results are bit-identical to ``torch.optim.SGD`` / ``Adam`` / ``AdamW(foreach=True)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor

DECAY_MODES = ("l2", "decoupled", "independent")
RELATIVE_EPS = 1e-3  # r = max(rms(w), RELATIVE_EPS), Adafactor's eps2

Hyper = Union[float, Sequence[Tensor]]  # noqa: UP007 (a runtime alias; py3.10 has no `type`)
Step = Union[int, float, Sequence[float]]  # noqa: UP007

__all__ = [
    "DECAY_MODES",
    "RELATIVE_EPS",
    "SHRINK_BY",
    "FlatList",
    "Hyper",
    "adam_step",
    "apply_decay",
    "decay_factor",
    "relative_scale",
    "sgd_step",
    "step_shrink",
]


CHUNK = 2048  # CPU: ATen runs sqrt on more than ~2048 elements (others: 32768) in parallel


class FlatList(list):
    """A list of tensors shaped like ``like`` that are views into one zeroed buffer ``.flat``.

    It is an ordinary list for every ``torch._foreach_*`` op; :func:`sgd_step` and
    :func:`adam_step` run the ops that touch only this state on ``.chunks`` instead of once per
    tensor. ``.chunks`` covers ``.flat``: on a GPU ``[flat]``; on a CPU every tensor of more than
    ``CHUNK`` elements is its own chunk and runs of smaller tensors are cut into pieces of at most
    ``CHUNK``, so an op parallelizes exactly where torch's per-tensor op would (an OpenMP region
    on a busy shared CPU can wait a whole scheduler tick). Slicing returns a plain list.
    """

    def __init__(
        self,
        like: Sequence[Tensor],
        dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ) -> None:
        numels = [t.numel() for t in like]
        ref = like[0] if like else torch.empty(0)
        flat = torch.zeros(sum(numels), dtype=dtype or ref.dtype, device=device or ref.device)
        offsets = [0]
        for n in numels:
            offsets.append(offsets[-1] + n)
        # narrow, not split (views of a multi-output op may not be modified in grad mode), and
        # in grad mode (views made under no_grad may not be modified in grad mode later)
        with torch.enable_grad():
            super().__init__(flat[o : o + t.numel()].view(t.shape) for o, t in zip(offsets, like))
        self.flat = flat
        if flat.device.type != "cpu":
            self.chunks = [flat]
            return
        self.chunks = []
        start = offset = 0  # [start, offset): the current run of small tensors
        for n in numels:
            if n > CHUNK:
                self._cut(start, offset)
                self.chunks.append(flat[offset : offset + n])
                start = offset + n
            offset += n
        self._cut(start, offset)

    def _cut(self, start: int, stop: int) -> None:
        self.chunks += [self.flat[i : min(i + CHUNK, stop)] for i in range(start, stop, CHUNK)]


def _whole(*lists: Sequence[Tensor]) -> tuple[Sequence[Tensor], ...]:
    """The ``.chunks`` when every list is a FlatList (same layout), else the lists."""
    if all(isinstance(x, FlatList) for x in lists):
        return tuple(x.chunks for x in lists)
    return lists


def _is_float(x: object) -> bool:
    return isinstance(x, (int, float))


def _scalar(value: float, like: Tensor) -> float | Tensor:
    """``value`` as a CPU 0-d tensor for CPU params (the Tensor overloads of foreach ops are ~3x
    cheaper per tensor on CPU than the Python-scalar ones; same kernel, same result)."""
    if like.device.type != "cpu" or torch.compiler.is_compiling():
        return value
    return torch.tensor(
        value, dtype=torch.float64 if like.dtype == torch.float64 else torch.float32
    )


def _mul(a: Hyper, b: Hyper) -> Hyper:
    if _is_float(a) and _is_float(b):
        return float(a) * float(b)
    if _is_float(a):
        a, b = b, a
    return torch._foreach_mul(a, b)


# per decay mode, what its per-step shrink scales with: "lr" (lr_t * wd) or "eta" (eta_t * wd)
SHRINK_BY = {"l2": "lr", "decoupled": "lr", "independent": "eta"}


def step_shrink(lr: Hyper, weight_decay: Hyper, eta: Hyper, decay: str) -> Hyper:
    """The per-step shrink a mode records (``group["shrink"]``): ``eta * wd`` for
    ``"independent"``, ``lr * wd`` for the others (``"l2"``: the size of the gradient term
    ``lr * wd * w`` before the optimizer's own scaling)."""
    _check_decay(decay)
    return _mul(eta if SHRINK_BY[decay] == "eta" else lr, weight_decay)


def decay_factor(lr: Hyper, weight_decay: Hyper, eta: Hyper, decay: str) -> Hyper | None:
    """The base shrink ``s`` of ``w <- w * (1 - s)``: :func:`step_shrink` for ``"decoupled"``
    and ``"independent"``; None for ``"l2"`` (it acts on the gradient).

    With relative decay each tensor's shrink is ``s * max(rms(w), 1e-3)``.
    """
    _check_decay(decay)
    if decay == "l2":
        return None
    return step_shrink(lr, weight_decay, eta, decay)


def _check_decay(decay: str) -> None:
    if decay not in DECAY_MODES:
        raise ValueError(f"decay={decay!r} is invalid; allowed: {', '.join(DECAY_MODES)}")


def relative_scale(
    params: Sequence[Tensor], stacked: bool = False, eps: float = RELATIVE_EPS
) -> list[Tensor]:
    """``r = max(rms(w), eps)`` with ``rms(w) = ||w||_2 / sqrt(numel(w))``, one 0-d tensor per
    parameter; with ``stacked=True`` one value per member (dims 1.. reduced), ``[P, 1, ..., 1]``.
    """
    if stacked:  # no foreach op reduces over some dims: one reduction per tensor here
        out = [
            torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim)), keepdim=True)
            / math.sqrt(w[0].numel())
            if w.ndim > 1
            else w.abs()
            for w in params
        ]
    else:
        out = list(torch._foreach_norm(params))
        torch._foreach_div_(out, [math.sqrt(w.numel()) for w in params])
    torch._foreach_clamp_min_(out, eps)
    return out


def _nonzero(wd: Hyper) -> bool:
    return not _is_float(wd) or wd != 0.0


def _decay_params(params: Sequence[Tensor], shrink: Hyper, rel: list[Tensor] | None) -> None:
    """``w <- w * (1 - shrink * r)`` in place."""
    if rel is None and _is_float(shrink):
        if shrink != 0.0:
            torch._foreach_mul_(params, _scalar(1.0 - shrink, params[0]))
        return
    if rel is None:
        factor = torch._foreach_neg(shrink)
    else:
        factor = _mul(rel, shrink)
        torch._foreach_neg_(factor)
    torch._foreach_add_(factor, 1.0)
    torch._foreach_mul_(params, factor)


def apply_decay(
    params: Sequence[Tensor],
    lr: Hyper,
    weight_decay: Hyper,
    eta: Hyper,
    decay: str,
    relative: bool = False,
    stacked: bool = False,
) -> None:
    """``w <- w * (1 - s * r)`` in place for decoupled / independent decay; no-op for ``"l2"``.

    ``s`` is :func:`decay_factor`; ``r = max(rms(w), 1e-3)`` if ``relative`` else 1.
    """
    shrink = decay_factor(lr, weight_decay, eta, decay)
    if shrink is None or not params or not _nonzero(weight_decay):
        return
    _decay_params(params, shrink, relative_scale(params, stacked) if relative else None)


def _decayed_grads(params, grads, lr, weight_decay, eta, decay, relative, stacked, out=None):
    """The decay stage shared by both rules: ``"l2"`` returns ``g + wd*r*w`` as new tensors, or
    in ``out`` (preallocated, same op, no allocation per step); the caller's grads are never
    modified. The other modes shrink ``params`` and return ``grads``."""
    _check_decay(decay)
    if not _nonzero(weight_decay):
        return grads
    rel = relative_scale(params, stacked) if relative else None
    if decay != "l2":
        _decay_params(params, decay_factor(lr, weight_decay, eta, decay), rel)
        return grads
    coef = weight_decay if rel is None else _mul(rel, weight_decay)
    if out is None:
        if _is_float(coef):
            return torch._foreach_add(grads, params, alpha=coef)
        return torch._foreach_addcmul(grads, params, coef)
    torch._foreach_copy_(out, grads)
    if _is_float(coef):
        torch._foreach_add_(out, params, alpha=coef)
    else:
        torch._foreach_addcmul_(out, params, coef)
    return out


def sgd_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor] | None,
    *,
    lr: Hyper,
    weight_decay: Hyper = 0.0,
    eta: Hyper = 1.0,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    decay: str = "l2",
    relative: bool = False,
    stacked: bool = False,
    init_buffers: bool = False,
) -> Sequence[Tensor] | None:
    """One SGD step in place on ``params`` and the momentum buffers (torch.optim.SGD's rule)::

        decay                       l2: g <- g + wd*r*w;  else  w <- w * (1 - s*r)
        b <- g                      first step (torch clones g; no dampening)
        b <- momentum*b + (1 - dampening)*g                 later steps
        u <- g + momentum*b  if nesterov  else  b           (u = g when momentum == 0)
        w <- w - lr*u

    The lr multiplies after the momentum (torch's convention; Loshchilov & Hutter's Algorithm 1
    puts ``eta_t*alpha`` inside ``m_t``; the two agree for a constant lr). First step:
    ``momentum_buffers=None`` (new buffers are returned) or preallocated buffers with
    ``init_buffers=True``. Returns the buffers (None when momentum == 0).
    """
    if not params:
        return momentum_buffers
    grads = _decayed_grads(params, grads, lr, weight_decay, eta, decay, relative, stacked)
    bufs = momentum_buffers
    if momentum != 0.0:
        if bufs is None:
            bufs = [g.detach().clone() for g in grads]
        elif init_buffers:
            torch._foreach_copy_(bufs, grads)
        else:
            torch._foreach_mul_(*_whole(bufs), _scalar(momentum, params[0]))
            torch._foreach_add_(bufs, grads, alpha=1.0 - dampening)
        grads = torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs
    if _is_float(lr):
        torch._foreach_add_(params, grads, alpha=-lr)
    else:
        torch._foreach_addcmul_(params, grads, torch._foreach_neg(lr))
    return bufs


def adam_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    max_exp_avg_sqs: Sequence[Tensor] | None = None,
    *,
    step: Step,
    lr: Hyper,
    weight_decay: Hyper = 0.0,
    eta: Hyper = 1.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
    decay: str = "l2",
    amsgrad: bool = False,
    relative: bool = False,
    stacked: bool = False,
    denom_out: FlatList | None = None,
) -> None:
    """One Adam step in place (torch.optim.Adam / AdamW's rule, same op order)::

        decay                       l2: g <- g + wd*r*w;  else  w <- w * (1 - s*r)
        m <- m + (1 - beta1)*(g - m)
        v <- beta2*v + (1 - beta2)*g*g
        vhat <- max(vhat, v) if amsgrad (kept in max_exp_avg_sqs), else vhat = v
        w <- w - lr/(1 - beta1**t) * m / (sqrt(vhat)/sqrt(1 - beta2**t) + eps)

    ``step`` is t after this step's increment (>= 1), one number or one per parameter.
    ``denom_out``: optional scratch FlatList shaped like the params; it holds ``g + wd*w``
    (decay="l2") and then the denominator, instead of new tensors each step.
    """
    if not params:
        return
    grads = _decayed_grads(
        params, grads, lr, weight_decay, eta, decay, relative, stacked, out=denom_out
    )
    like = params[0]
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(*_whole(exp_avg_sqs), _scalar(beta2, like))
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    del grads

    if _is_float(step):
        bc1: float | list[float] = 1.0 - beta1**step
        bc2_sqrt: float | list[float] = (1.0 - beta2**step) ** 0.5
    else:
        bc1 = [1.0 - beta1**s for s in step]
        bc2_sqrt = [(1.0 - beta2**s) ** 0.5 for s in step]

    second = exp_avg_sqs
    if amsgrad:
        if max_exp_avg_sqs is None:
            raise ValueError("max_exp_avg_sqs: required when amsgrad=True; pass zeroed buffers")
        torch._foreach_maximum_(*_whole(max_exp_avg_sqs, exp_avg_sqs))
        second = max_exp_avg_sqs
    if denom_out is not None and isinstance(second, FlatList):
        for src, dst in zip(second.chunks, denom_out.chunks):  # no foreach sqrt with out=
            torch.sqrt(src, out=dst)
        denom: Sequence[Tensor] = denom_out
    else:
        denom = torch._foreach_sqrt(second)
    if _is_float(bc2_sqrt):
        torch._foreach_div_(*_whole(denom), _scalar(bc2_sqrt, like))
    else:
        torch._foreach_div_(denom, bc2_sqrt)
    torch._foreach_add_(*_whole(denom), _scalar(eps, like))

    if _is_float(lr):
        if _is_float(bc1):
            torch._foreach_addcdiv_(params, exp_avgs, denom, (lr / bc1) * -1)
        else:
            torch._foreach_addcdiv_(params, exp_avgs, denom, [(lr / b) * -1 for b in bc1])
        return
    step_size = torch._foreach_div(lr, bc1)  # per-member lr: step size -lr/bc1 as tensors
    torch._foreach_neg_(step_size)
    torch._foreach_addcdiv_(params, torch._foreach_mul(exp_avgs, step_size), denom)
