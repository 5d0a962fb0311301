"""The loss-side L2 penalty (``decay="loss"``, seed Example 5)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def l2_penalty(params: Iterable[torch.Tensor], weight_decay: float) -> torch.Tensor:
    """``weight_decay / 2 * sum_i ||w_i||^2``: its gradient is ``weight_decay * w``.

    With the half, adding this to the loss gives exactly the gradient of ``decay="l2"``
    (``g += wd * w``), so plain SGD on ``loss + l2_penalty(params, wd)`` equals
    ``SGD(decay="l2", weight_decay=wd)``. (seed Example 5 omits the half: its ``lambda`` is
    ``wd / 2`` here.)
    """
    params = [p for p in params]
    if not params or weight_decay == 0.0:
        return torch.zeros((), device=params[0].device if params else None)
    sq = torch._foreach_norm(params)
    total = torch.stack(sq).square().sum()
    return 0.5 * weight_decay * total
