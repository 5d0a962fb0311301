"""Weight-decay schedules independent of the lr schedule (seed Example 7)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

KINDS = ("constant", "linear", "cosine", "step")


class WeightDecayScheduler:
    """Multiplies each group's base weight decay by ``m(t)``; call :meth:`step` once per step.

    ``t`` counts completed steps (0 before the first ``step()``), ``T = total_steps``:

    - ``constant``: ``m = 1``
    - ``linear``:   ``m = start + (end - start) * min(t/T, 1)``  (a ramp; seed Example 7 is 0 -> 1)
    - ``cosine``:   ``m = end + (start - end) * (1 + cos(pi * min(t/T, 1))) / 2``
    - ``step``:     ``m = gamma ** (number of milestones <= t/T)`` (milestones as fractions)

    The base decay is read from each group's ``initial_weight_decay`` (set on first use).
    ``state_dict()`` / ``load_state_dict()`` round-trip the step count.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str = "constant",
        total_steps: int = 1,
        *,
        start: float = 0.0,
        end: float = 1.0,
        milestones: Sequence[float] = (0.5, 0.75),
        gamma: float = 0.1,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps} must be >= 1")
        self.optimizer = optimizer
        self.kind = kind
        self.total_steps = int(total_steps)
        self.start, self.end = float(start), float(end)
        self.milestones = [float(m) for m in milestones]
        self.gamma = float(gamma)
        self.t = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_weight_decay", group["weight_decay"])
        self._apply()

    def multiplier(self, t: int | None = None) -> float:
        t = self.t if t is None else t
        frac = min(t / self.total_steps, 1.0)
        if self.kind == "constant":
            return 1.0
        if self.kind == "linear":
            return self.start + (self.end - self.start) * frac
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * (1 + math.cos(math.pi * frac)) / 2
        return self.gamma ** sum(1 for m in self.milestones if frac >= m)

    def _apply(self) -> None:
        m = self.multiplier()
        for group in self.optimizer.param_groups:
            group["weight_decay"] = group["initial_weight_decay"] * m

    def step(self) -> None:
        self.t += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._apply()
