"""The update rules, written once on lists of tensors with ``torch._foreach_*``.

Notation for one step: base learning rate ``a``, schedule multiplier ``eta_t`` (the group's lr is
``lr_t = a * eta_t``), weight decay ``wd``, parameter ``w``, gradient ``g``.

- ``decay="l2"``:          ``g <- g + wd * w`` before momentum / moments (coupled L2).
- ``decay="decoupled"``:   ``w <- w * (1 - lr_t * wd)`` then the plain update (torch AdamW).
- ``decay="independent"``: ``w <- w * (1 - eta_t * wd)`` then the plain update (Loshchilov &
  Hutter, Algorithms 1-2: the decay follows the schedule, not the base lr).
- ``relative=True`` multiplies the decoupled / independent shrink of each tensor by
  ``max(rms(w), 1e-3)``, ``rms(w) = ||w||_2 / sqrt(numel(w))`` (Adafactor-style, seed Example 6);
  with ``decay="l2"`` it scales the added ``wd * w`` term the same way.

Hyperparameters ``lr``, ``weight_decay`` and ``eta`` are each a Python float or a list of tensors,
one per parameter, broadcastable to it. Population training stacks P members' parameters as
``[P, ...]`` and passes per-member values shaped ``[P, 1, ..., 1]``: the same rule then trains P
models with P different (lr, wd) in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

Scalar = float | Sequence[Tensor]

DECAY_MODES = ("l2", "decoupled", "independent")
RELATIVE_FLOOR = 1e-3


def _is_scalar(x: Scalar) -> bool:
    return isinstance(x, (int, float))


def _mul(tensors: list[Tensor], s: Scalar) -> list[Tensor]:
    """New list: ``t * s`` for each tensor (s a float or a per-tensor list)."""
    return torch._foreach_mul(tensors, s if _is_scalar(s) else list(s))


def _rms_floor(params: list[Tensor]) -> list[Tensor]:
    norms = torch._foreach_norm(params)
    inv_sqrt_n = [p.numel() ** -0.5 for p in params]
    rms = torch._foreach_mul(norms, inv_sqrt_n)
    return torch._foreach_clamp_min(rms, RELATIVE_FLOOR)


def decay_factor(lr: Scalar, weight_decay: Scalar, eta: Scalar, decay: str) -> Scalar | None:
    """The shrink ``s`` of ``w <- w * (1 - s)`` for decoupled / independent decay, else None."""
    if decay == "decoupled":
        base = lr
    elif decay == "independent":
        base = eta
    else:
        return None
    if _is_scalar(base) and _is_scalar(weight_decay):
        return float(base) * float(weight_decay)
    if _is_scalar(base):
        return [float(base) * w for w in weight_decay]
    if _is_scalar(weight_decay):
        return [b * float(weight_decay) for b in base]
    return [b * w for b, w in zip(base, weight_decay)]


def apply_decay(
    params: list[Tensor],
    lr: Scalar,
    weight_decay: Scalar,
    eta: Scalar,
    decay: str,
    relative: bool = False,
) -> None:
    """``w <- w * (1 - s)`` in place for decoupled / independent decay (no-op for l2)."""
    shrink = decay_factor(lr, weight_decay, eta, decay)
    if shrink is None or (_is_scalar(shrink) and shrink == 0.0):
        return
    if relative:
        scale = _rms_floor(params)
        s = [r * shrink for r in scale] if _is_scalar(shrink) else torch._foreach_mul(scale, shrink)
        torch._foreach_mul_(params, torch._foreach_neg(torch._foreach_sub(s, 1.0)))
    elif _is_scalar(shrink):
        torch._foreach_mul_(params, 1.0 - shrink)
    else:
        torch._foreach_mul_(params, [1.0 - s for s in shrink])


def _l2_grads(
    grads: list[Tensor], params: list[Tensor], weight_decay: Scalar, relative: bool
) -> list[Tensor]:
    """``g + wd * w`` as a new list (the caller's grads are never modified)."""
    if relative:
        scale = _rms_floor(params)
        wd = torch._foreach_mul(
            scale, weight_decay if _is_scalar(weight_decay) else list(weight_decay)
        )
        return torch._foreach_add(grads, torch._foreach_mul(params, wd))
    if _is_scalar(weight_decay):
        return torch._foreach_add(grads, params, alpha=float(weight_decay))
    return torch._foreach_add(grads, _mul(params, weight_decay))


def _nonzero(x: Scalar) -> bool:
    return not _is_scalar(x) or float(x) != 0.0


def sgd_step(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor] | None,
    *,
    lr: Scalar,
    weight_decay: Scalar,
    eta: Scalar,
    momentum: float,
    dampening: float,
    nesterov: bool,
    decay: str,
    relative: bool = False,
) -> list[Tensor] | None:
    """One SGD step in place (torch.optim.SGD semantics). Returns the momentum buffers.

    ``momentum_buffers`` is None on the first step: the buffers start as a copy of the
    (decayed) gradient, without dampening, as in torch.
    """
    if decay == "l2":
        d_p = _l2_grads(grads, params, weight_decay, relative) if _nonzero(weight_decay) else grads
    else:
        apply_decay(params, lr, weight_decay, eta, decay, relative)
        d_p = grads
    if momentum != 0.0:
        if momentum_buffers is None:
            momentum_buffers = [torch.clone(d).detach() for d in d_p]
        else:
            torch._foreach_mul_(momentum_buffers, momentum)
            torch._foreach_add_(momentum_buffers, d_p, alpha=1.0 - dampening)
        if nesterov:
            d_p = torch._foreach_add(d_p, momentum_buffers, alpha=momentum)
        else:
            d_p = momentum_buffers
    if _is_scalar(lr):
        torch._foreach_add_(params, d_p, alpha=-float(lr))
    else:
        torch._foreach_sub_(params, _mul(d_p, lr))
    return momentum_buffers


def adam_step(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    *,
    step: int,
    lr: Scalar,
    weight_decay: Scalar,
    eta: Scalar,
    beta1: float,
    beta2: float,
    eps: float,
    decay: str,
    amsgrad: bool = False,
    relative: bool = False,
) -> None:
    """One Adam step in place (torch.optim.Adam / AdamW semantics); ``step`` counts from 1."""
    if decay == "l2":
        if _nonzero(weight_decay):
            grads = _l2_grads(grads, params, weight_decay, relative)
    else:
        apply_decay(params, lr, weight_decay, eta, decay, relative)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = (1.0 - beta2**step) ** 0.5
    if amsgrad:
        assert max_exp_avg_sqs is not None
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
        denom = torch._foreach_sqrt(max_exp_avg_sqs)
    else:
        denom = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denom, bias_correction2_sqrt)
    torch._foreach_add_(denom, eps)
    if _is_scalar(lr):
        torch._foreach_addcdiv_(params, exp_avgs, denom, -float(lr) / bias_correction1)
    else:
        update = torch._foreach_div(exp_avgs, denom)
        torch._foreach_sub_(params, _mul(update, [x / bias_correction1 for x in lr]))
