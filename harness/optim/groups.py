"""Which parameters decay (timm's rule, names, scale invariance, or all), and the paper's
normalized weight decay."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Iterable
from typing import Any

import torch

RULES = (
    "timm",
    "names",
    "scale_invariant",
    "scale_invariant_head",
    "scale_invariant_head_norm",
    "all",
)
# the rules that decay the scale-invariant tensors (and the probe must find them)
INVARIANT_RULES = ("scale_invariant", "scale_invariant_head", "scale_invariant_head_norm")
# normalization layers: their gains and shifts are the "norm" tensors
NORM_TYPES = (
    torch.nn.modules.batchnorm._NormBase,
    torch.nn.LayerNorm,
    torch.nn.GroupNorm,
    *((torch.nn.RMSNorm,) if hasattr(torch.nn, "RMSNorm") else ()),
)
NO_DECAY_NAMES = ("bias", "norm", "bn")  # config default: optimizer.no_decay_names
SCALE = 2.0  # the factor each tensor is scaled by to test its scale invariance
INVARIANCE_RTOL = 1e-2  # scaling may change the outputs by this share of a same-size random move


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


def _owner_types(model: torch.nn.Module) -> dict[str, str]:
    """Each parameter's name -> the class name of the module holding it (``"1.weight"`` of an
    ``nn.Sequential`` -> ``"BatchNorm1d"``)."""
    out = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            out[f"{mod_name}.{p_name}" if mod_name else p_name] = type(module).__name__
    return out


def norm_names(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters held by normalization layers (BatchNorm, LayerNorm,
    GroupNorm, RMSNorm): their gains and shifts."""
    out = []
    for mod_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            for p_name, p in module.named_parameters(recurse=False):
                if p.requires_grad:
                    out.append(f"{mod_name}.{p_name}" if mod_name else p_name)
    return out


def head_names(model: torch.nn.Module) -> list[str]:
    """Names of the trainable parameters of the model's head: the last module (in registration
    order, which is the order of the forward pass in the built-in models) that holds trainable
    parameters of its own and is not a normalization layer, e.g. the classifier ``Linear``.
    Empty when that module is frozen."""
    last: list[str] = []
    for mod_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            continue
        own = list(module.named_parameters(recurse=False))
        if own:
            last = [
                f"{mod_name}.{p_name}" if mod_name else p_name
                for p_name, p in own
                if p.requires_grad
            ]
    return last


def _outputs(out: Any) -> torch.Tensor:
    """A model's output as one flat float64 vector (tensors found in tuples, lists, dicts)."""
    if isinstance(out, torch.Tensor):
        return out.detach().reshape(-1).to(torch.float64)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        parts = [_outputs(o) for o in out]
        parts = [q for q in parts if q.numel()]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
    return torch.zeros(0, dtype=torch.float64)


@torch.no_grad()
def scale_invariant_names(
    model: torch.nn.Module,
    sample: Any,
    scale: float = SCALE,
    rtol: float = INVARIANCE_RTOL,
) -> list[str]:
    """Names of the trainable parameter tensors ``w`` of ``model`` with ``f(c*w) = f(w)``: the
    outputs for the input batch ``sample`` do not change when ``w`` alone is scaled by ``c``
    (a weight feeding a BatchNorm or LayerNorm; a bias feeding a BatchNorm, which the norm
    removes; not the classifier head).

    Measured on a copy of ``model`` in training mode (batch statistics) whose parameters are
    moved to a random nearby point first (each tensor ``w`` plus noise of norm ``|w| / 2``, a
    zero tensor to noise of std 1/2): an invariance that holds only at the initial values, such
    as a BatchNorm gain whose shift starts at zero, is not reported. Then one tensor at a time:
    ``d_scale = |f(c*w) - f(w)|`` against ``d_move = |f(w + r) - f(w)|`` for a random ``r`` of
    the size of ``(c-1)*w``. A tensor is invariant when ``d_scale <= rtol * d_move`` plus the
    rounding of the outputs (``100 * eps * |f(w)|`` in the parameters' dtype): the tolerance
    absorbs what a BatchNorm's ``eps`` adds to the variance (a relative change of about
    ``eps / var``). ``model`` and the global random state are left unchanged; dropout draws the
    same mask in every forward.
    """
    if isinstance(sample, torch.Tensor):
        sample = (sample,)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        return []
    probe = copy.deepcopy(model).train()
    params = [(n, p) for n, p in probe.named_parameters() if n in trainable]
    device, dtype = params[0][1].device, params[0][1].dtype
    gen = torch.Generator(device=device).manual_seed(0)

    def noise_like(p: torch.Tensor, norm: float) -> torch.Tensor:
        r = torch.randn(p.shape, generator=gen, device=device, dtype=p.dtype)
        return r * (norm / float(r.norm()) if r.numel() and float(r.norm()) > 0 else 0.0)

    def forward() -> torch.Tensor:
        torch.manual_seed(0)  # the same dropout masks in every forward
        return _outputs(probe(*sample))

    found = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for p in probe.parameters():
            size = float(p.norm())
            p.add_(noise_like(p, size / 2) if size > 0 else noise_like(p, 0.5 * p.numel() ** 0.5))
        base = forward()
        rounding = 100 * torch.finfo(dtype).eps * float(base.norm())
        for name, p in params:
            w = p.detach().clone()
            p.mul_(scale)
            d_scale = float((forward() - base).norm())
            p.copy_(w + noise_like(p, (scale - 1) * float(w.norm())))
            d_move = float((forward() - base).norm())
            p.copy_(w)
            if d_scale <= rtol * d_move + rounding:
                found.append(name)
    return found


def param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    rule: str = "timm",
    no_decay_names: Iterable[str] = NO_DECAY_NAMES,
    sample: Any = None,
    invariant: Iterable[str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Split ``model``'s trainable parameters into ``(groups, report)``.

    ``groups[0]`` = ``{"params": [...], "weight_decay": weight_decay}`` (decays),
    ``groups[1]`` = ``{"params": [...], "weight_decay": 0.0}`` (always present, maybe empty).
    A parameter is exempt from decay when

    - ``rule="timm"``: ``p.ndim <= 1`` (biases, norm scales and shifts) or its name ends in
      ``.bias`` or is listed by ``model.no_weight_decay()`` (timm's rule);
    - ``rule="names"``: its name, or the class name of the module holding it, matches one of
      ``no_decay_names`` (case-insensitive substring, or a glob on the full name if the pattern
      has ``*?[``; HF Trainer style: biases and norm layers, so ``"norm"`` also finds the
      ``BatchNorm1d`` of an ``nn.Sequential`` whose parameters are named ``"1.weight"``), or it
      is listed by ``model.no_weight_decay()``;
    - ``rule="scale_invariant"``: it is not scale-invariant (:func:`scale_invariant_names` on
      the input batch ``sample``, or the names ``invariant`` when already known): exactly the
      invariant tensors decay;
    - ``rule="scale_invariant_head"``: it is neither scale-invariant nor in the head
      (:func:`head_names`): the invariant tensors and the classifier decay;
    - ``rule="scale_invariant_head_norm"``: it is neither scale-invariant, nor in the head, nor
      a normalization layer's gain or shift (:func:`norm_names`);
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
    skips = _explicit_skips(model) if rule in ("timm", "names") else []
    owners = _owner_types(model) if rule == "names" else {}
    si: set[str] = set()
    if rule in INVARIANT_RULES:
        if invariant is None and sample is None:
            raise ValueError(f"rule={rule!r} needs sample=<an input batch of the model>")
        found = scale_invariant_names(model, sample) if invariant is None else invariant
        si = set(found)
        if rule != "scale_invariant":
            si |= set(head_names(model))
        if rule == "scale_invariant_head_norm":
            si |= set(norm_names(model))
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
            exempt = _matches(name, patterns) or _matches(owners[name], patterns) or explicit
        elif rule in INVARIANT_RULES:
            exempt = name not in si
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
