"""Which parameters decay (timm's rule, names, or all), and the paper's normalized weight decay."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

import torch

RULES = ("timm", "names", "all")
NO_DECAY_NAMES = ("bias", "norm", "bn")  # config default: optimizer.no_decay_names


def _explicit_skips(model: torch.nn.Module) -> list[str]:
    """Names (or glob patterns) from ``model.no_weight_decay()``, timm's hook, if defined."""
    fn = getattr(model, "no_weight_decay", None)
    return [str(n) for n in fn()] if callable(fn) else []


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """Case-insensitive: a pattern with ``*?[`` is a glob on the full name, else a substring."""
    low = name.lower()
    for pat in patterns:
        p = pat.lower()
        if any(c in p for c in "*?["):
            if fnmatch.fnmatchcase(low, p):
                return True
        elif p in low:
            return True
    return False


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    rule: str = "timm",
    no_decay_names: Iterable[str] = NO_DECAY_NAMES,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Split ``model``'s trainable parameters into ``(groups, report)``.

    ``groups[0]`` = ``{"params": [...], "weight_decay": weight_decay}`` (decays),
    ``groups[1]`` = ``{"params": [...], "weight_decay": 0.0}`` (always present, maybe empty).
    A parameter is exempt from decay when

    - ``rule="timm"``: ``p.ndim <= 1`` (biases, norm scales and shifts) or its name ends in
      ``.bias`` or is listed by ``model.no_weight_decay()`` (timm's rule);
    - ``rule="names"``: its name matches one of ``no_decay_names`` (case-insensitive substring,
      or a glob on the full name if the pattern has ``*?[``; HF Trainer style: biases and norm
      layers by name) or is listed by ``model.no_weight_decay()``;
    - ``rule="all"``: never (everything decays, as in Loshchilov & Hutter's code).

    Frozen parameters (``requires_grad=False``) are left out. ``report`` =
    ``{"rule": rule, "decay": {"tensors": n, "elements": m, "names": [...]},
    "no_decay": {...}}``.
    """
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} is invalid; allowed: {', '.join(RULES)}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)):
        raise ValueError(f"weight_decay={weight_decay!r} is invalid; allowed: a float >= 0")
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay!r} is invalid; allowed: a float >= 0")
    patterns = [no_decay_names] if isinstance(no_decay_names, str) else list(no_decay_names)
    skips = _explicit_skips(model) if rule != "all" else []
    split: dict[str, tuple[list[torch.nn.Parameter], list[str]]] = {
        "decay": ([], []),
        "no_decay": ([], []),
    }
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        explicit = name in skips or any(fnmatch.fnmatchcase(name, s) for s in skips)
        if rule == "timm":
            exempt = p.ndim <= 1 or name.endswith(".bias") or explicit
        elif rule == "names":
            exempt = _matches(name, patterns) or explicit
        else:
            exempt = False
        params, names = split["no_decay" if exempt else "decay"]
        params.append(p)
        names.append(name)
    report: dict[str, Any] = {"rule": rule}
    for key, (params, names) in split.items():
        report[key] = {
            "tensors": len(params),
            "elements": sum(p.numel() for p in params),
            "names": names,
        }
    groups = [
        {"params": split["decay"][0], "weight_decay": float(weight_decay)},
        {"params": split["no_decay"][0], "weight_decay": 0.0},
    ]
    return groups, report


def normalized_weight_decay(lam_norm: float, batch_size: int, n_train: int, epochs: float) -> float:
    """The paper's normalized decay (Appendix B.1): ``lam = lam_norm * sqrt(b / (B * T))``.

    ``b`` = batch size, ``B`` = training points per epoch, ``T`` = number of epochs.
    """
    for name, value in (("batch_size", batch_size), ("n_train", n_train), ("epochs", epochs)):
        if not value > 0:
            raise ValueError(f"{name}={value!r} is invalid; allowed: a number > 0")
    if not lam_norm >= 0:
        raise ValueError(f"lam_norm={lam_norm!r} is invalid; allowed: a float >= 0")
    return float(lam_norm) * (batch_size / (n_train * epochs)) ** 0.5
