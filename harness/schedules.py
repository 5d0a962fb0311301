"""Learning-rate schedules as multipliers ``eta_t`` of the base lr (``lr_t = lr * eta_t``).

``t`` counts completed optimizer steps (0 for the first step), ``T`` is the total step count.

- ``constant``:        ``eta_t = 1``
- ``cosine``:          ``eta_t = m + (1 - m) * (1 + cos(pi * t / T)) / 2``, ``m = min_factor``
  (the paper's default, without restarts)
- ``step``:            ``eta_t = gamma ** (number of milestones <= t / T)``
- ``warmup_cosine``:   linear warmup ``(t + 1) / W`` for ``t < W = round(warmup_fraction * T)``,
  then cosine over the remaining ``T - W`` steps
- ``warmup_constant``: the same warmup, then 1

``decay="independent"`` multiplies the weight decay by this same ``eta_t``.
"""

from __future__ import annotations

import math
from typing import Any


def lr_multiplier(cfg: Any, t: int, total: int) -> float:
    name = cfg.name
    total = max(int(total), 1)
    warm = int(round(float(cfg.warmup_fraction) * total)) if name.startswith("warmup") else 0
    if t < warm:
        return (t + 1) / warm
    if name in ("constant", "warmup_constant"):
        return 1.0
    if name in ("cosine", "warmup_cosine"):
        frac = min((t - warm) / max(total - warm, 1), 1.0)
        m = float(cfg.min_factor)
        return m + (1.0 - m) * (1.0 + math.cos(math.pi * frac)) / 2.0
    if name == "step":
        frac = t / total
        return float(cfg.gamma) ** sum(1 for m in cfg.milestones if frac >= float(m))
    raise ValueError(
        f"schedule.name={name!r} is not one of constant, cosine, step, warmup_cosine, warmup_constant"
    )
