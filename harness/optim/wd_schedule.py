"""Weight-decay schedules (constant, linear ramp, cosine, step), independent of the lr schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

KINDS = ("constant", "linear", "cosine", "step")


class WeightDecayScheduler:
    """Sets each group's ``weight_decay = initial_weight_decay * m(t)``, like an lr scheduler.

    Call :meth:`step` once after each ``optimizer.step()``. ``t`` counts those calls (0 at
    construction, which already applies ``m(0)``); ``T = total_steps``; ``f = min(t / T, 1)``:

    - ``constant``: ``m = 1``
    - ``linear``:   ``m = start + (end - start) * f``   (default 0 -> 1: the decay ramps from 0
      to its value)
    - ``cosine``:   ``m = end + (start - end) * (1 + cos(pi * f)) / 2``   (default 0 -> 1)
    - ``step``:     ``m = gamma ** (number of milestones <= f)``  (milestones are fractions of T)

    ``initial_weight_decay`` is set in each group from its ``weight_decay`` at construction (the
    way lr schedulers set ``initial_lr``), so groups with decay 0 stay at 0. The schedule does
    not read the lr: decay and lr schedules compose freely. ``state_dict()`` /
    ``load_state_dict()`` restore ``t`` and re-apply ``m(t)``.
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
            raise ValueError(f"kind={kind!r} is invalid; allowed: {', '.join(KINDS)}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps={total_steps!r} is invalid; allowed: an int >= 1")
        for name, value in (("start", start), ("end", end), ("gamma", gamma)):
            if not float(value) >= 0.0:
                raise ValueError(f"{name}={value!r} is invalid; allowed: a float >= 0")
        ms = [float(m) for m in milestones]
        if any(not 0.0 <= m <= 1.0 for m in ms):
            raise ValueError(
                f"milestones={list(milestones)!r} is invalid; allowed: fractions of total_steps "
                "in [0, 1], e.g. (0.5, 0.75)"
            )
        self.optimizer = optimizer
        self.kind = kind
        self.total_steps = total_steps
        self.start, self.end = float(start), float(end)
        self.milestones = sorted(ms)
        self.gamma = float(gamma)
        self.t = 0
        for group in optimizer.param_groups:
            group.setdefault("initial_weight_decay", group["weight_decay"])
        self._apply()

    def multiplier(self, t: int | None = None) -> float:
        """``m(t)`` (default: the current ``t``)."""
        f = min((self.t if t is None else t) / self.total_steps, 1.0)
        if self.kind == "constant":
            return 1.0
        if self.kind == "linear":
            return self.start + (self.end - self.start) * f
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * (1.0 + math.cos(math.pi * f)) / 2.0
        return self.gamma ** sum(1 for m in self.milestones if f >= m)

    def get_last_wd(self) -> list[float]:
        """The weight decay of each group now."""
        return [float(g["weight_decay"]) for g in self.optimizer.param_groups]

    def _apply(self) -> None:
        m = self.multiplier()
        for group in self.optimizer.param_groups:
            group.setdefault("initial_weight_decay", group["weight_decay"])
            group["weight_decay"] = group["initial_weight_decay"] * m

    def step(self) -> None:
        self.t += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "total_steps": self.total_steps,
            "start": self.start,
            "end": self.end,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "t": self.t,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("kind", "total_steps", "start", "end", "milestones", "gamma", "t"):
            setattr(self, key, state[key])
        self.milestones = list(self.milestones)
        self._apply()
