"""Which parameters decay: split a model's parameters into decay / no-decay groups (seed Example 4)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

RULES = ("timm", "names", "all")
HF_NO_DECAY = ("bias", "norm", "bn", "LayerNorm.weight")


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    rule: str = "timm",
    no_decay_names: Sequence[str] = HF_NO_DECAY,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, int]]]:
    """``(groups, report)``: ``groups[0]`` decays with ``weight_decay``, ``groups[1]`` has 0.

    Rules:
    - ``"timm"``: no decay for tensors with ``ndim <= 1`` (biases, norm scales), names ending in
      ``.bias``, and names listed by ``model.no_weight_decay()`` if the model defines it.
    - ``"names"``: no decay for names containing any of ``no_decay_names`` (case-insensitive
      substrings; HF Trainer style: biases and norm layers by name).
    - ``"all"``: everything decays (Loshchilov & Hutter's code).

    ``report`` = ``{"decay": {"tensors": n, "elements": m}, "no_decay": {...}}``.
    Frozen parameters (``requires_grad=False``) are left out.
    """
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is not one of {', '.join(RULES)}")
    skip: set[str] = set()
    if rule == "timm" and hasattr(model, "no_weight_decay"):
        skip = set(model.no_weight_decay())
    patterns = [re.compile(re.escape(n), re.IGNORECASE) for n in no_decay_names]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if rule == "all":
            exempt = False
        elif rule == "timm":
            exempt = p.ndim <= 1 or name.endswith(".bias") or name in skip
        else:
            exempt = any(pat.search(name) for pat in patterns)
        (no_decay if exempt else decay).append(p)
    report = {
        "decay": {"tensors": len(decay), "elements": sum(p.numel() for p in decay)},
        "no_decay": {"tensors": len(no_decay), "elements": sum(p.numel() for p in no_decay)},
    }
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups, report


def normalized_weight_decay(lam_norm: float, batch_size: int, n_train: int, epochs: float) -> float:
    """The paper's normalized decay (Appendix B.1): ``lam = lam_norm * sqrt(b / (B * T))``.

    ``b`` = batch size, ``B`` = training points per epoch, ``T`` = total epochs.
    """
    if batch_size <= 0 or n_train <= 0 or epochs <= 0:
        raise ValueError(
            f"batch_size={batch_size}, n_train={n_train}, epochs={epochs} must all be > 0"
        )
    return float(lam_norm) * (batch_size / (n_train * epochs)) ** 0.5
