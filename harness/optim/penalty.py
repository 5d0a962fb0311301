"""The loss-side L2 penalty, ``decay="loss"``: ``wd / 2 * sum ||w||^2`` added to the loss."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def l2_penalty(params: Iterable[Any], weight_decay: float = 0.0) -> torch.Tensor:
    """``weight_decay / 2 * sum_i ||w_i||^2``, to add to the loss; its gradient is
    ``weight_decay * w``, exactly what ``decay="l2"`` adds to the gradient.

    So plain SGD on ``loss + l2_penalty(params, wd)`` equals ``SGD(decay="l2",
    weight_decay=wd)``; with momentum or Adam the two also agree, since either way the same
    ``g + wd*w`` enters the optimizer. A penalty written ``lambda * sum ||w||^2`` (without the
    half) is this one with ``wd = 2 * lambda``.

    ``params``: tensors, or param-group dicts (a group's own ``"weight_decay"`` replaces
    ``weight_decay``, so ``l2_penalty(param_groups(model, wd)[0], wd)`` skips the exempt group).
    """
    items = list(params)
    if items and isinstance(items[0], dict):
        groups = [(list(g["params"]), float(g.get("weight_decay", weight_decay))) for g in items]
        terms = [l2_penalty(ps, wd) for ps, wd in groups if ps and wd != 0.0]
        if terms:
            return sum(terms[1:], terms[0])
        items = [p for ps, _ in groups for p in ps][:1]
        weight_decay = 0.0
    if not items or weight_decay == 0.0:
        ref = items[0] if items else torch.zeros(())
        return torch.zeros((), dtype=ref.dtype, device=ref.device)
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} is invalid; allowed: a float >= 0")
    # sum(w*w) per tensor as an L1 norm of w*w: d/dw = 2w, so the gradient is exactly wd*w
    squares = torch._foreach_mul(items, items)
    return (weight_decay / 2) * torch.stack(torch._foreach_norm(squares, 1)).sum()
