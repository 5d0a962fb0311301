"""``SGD`` and ``Adam`` with an explicit decay form, as ``torch.optim.Optimizer`` subclasses.

The math lives in :mod:`harness.optim.functional`; these classes gather each param group's
tensors, keep the state, and record the shrink actually applied (``group["shrink"]``).

``eta_t = group["lr"] / group["initial_lr"]``: ``initial_lr`` is the group's lr at construction
(torch's lr schedulers set the same key), so ``decay="independent"`` follows any scheduler that
changes ``group["lr"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from harness.optim.functional import DECAY_MODES, adam_step, sgd_step


def _check_decay(decay: str) -> None:
    if decay == "loss":
        raise ValueError(
            "decay='loss' is not an optimizer mode: add harness.optim.l2_penalty(params, wd) to "
            f"the loss and pass weight_decay=0; allowed decay values: {', '.join(DECAY_MODES)}"
        )
    if decay not in DECAY_MODES:
        raise ValueError(f"decay={decay!r} is not one of {', '.join(DECAY_MODES)}")


def _check_nonneg(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or value < 0.0:
        raise ValueError(f"{name}={value!r} must be a number >= 0")


def _eta(group: dict[str, Any]) -> float:
    lr0 = group.get("initial_lr") or group["lr"]
    return group["lr"] / lr0 if lr0 else 1.0


def _shrink(group: dict[str, Any]) -> float:
    """The per-step multiplicative decay this group's settings amount to (for logging).

    decoupled: lr_t*wd; independent: eta_t*wd; l2: lr_t*wd (its plain-SGD equivalent).
    """
    wd = group["weight_decay"]
    if group["decay"] == "independent":
        return _eta(group) * wd
    return group["lr"] * wd


class _DecayOptimizer(torch.optim.Optimizer):
    def _prepare_groups(self) -> None:
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group.setdefault("shrink", 0.0)
            _check_decay(group["decay"])
            _check_nonneg("lr", group["lr"])
            _check_nonneg("weight_decay", group["weight_decay"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])
        group.setdefault("shrink", 0.0)
        _check_decay(group["decay"])
        _check_nonneg("lr", group["lr"])
        _check_nonneg("weight_decay", group["weight_decay"])

    @staticmethod
    def _params_with_grad(group: dict[str, Any]) -> tuple[list, list]:
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("harness.optim does not support sparse gradients")
        return params, [p.grad for p in params]


class SGD(_DecayOptimizer):
    """SGD with momentum / dampening / nesterov and an explicit decay form.

    Per step, with ``lr_t = group["lr"]``, ``eta_t = lr_t / initial_lr``:

    - ``decay="l2"``: ``d = g + wd*w``; ``buf = momentum*buf + (1-dampening)*d`` (``buf = d`` at
      the first step); ``d = d + momentum*buf`` if nesterov else ``buf``; ``w -= lr_t*d``.
      Equals ``torch.optim.SGD(weight_decay=wd)``.
    - ``decay="decoupled"``: ``w *= 1 - lr_t*wd``, then the same with ``d = g``.
    - ``decay="independent"``: ``w *= 1 - eta_t*wd``, then the same with ``d = g`` (the paper's
      SGDW, Algorithm 1).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decay: str = "l2",
        relative: bool = False,
    ) -> None:
        _check_nonneg("lr", lr)
        _check_nonneg("weight_decay", weight_decay)
        if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum!r} must be in [0, 1)")
        _check_nonneg("dampening", dampening)
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
        _check_decay(decay)
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
            decay=decay,
            relative=relative,
        )
        super().__init__(params, defaults)
        self._prepare_groups()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = self._params_with_grad(group)
            if not params:
                continue
            momentum = group["momentum"]
            bufs = None
            if momentum != 0.0:
                states = [self.state[p] for p in params]
                if all("momentum_buffer" in s for s in states):
                    bufs = [s["momentum_buffer"] for s in states]
            new_bufs = sgd_step(
                params,
                grads,
                bufs,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eta=_eta(group),
                momentum=momentum,
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                decay=group["decay"],
                relative=group["relative"],
            )
            if momentum != 0.0 and bufs is None:
                for p, b in zip(params, new_bufs):
                    self.state[p]["momentum_buffer"] = b
            group["shrink"] = _shrink(group)
        return loss


class Adam(_DecayOptimizer):
    """Adam with bias correction, optional AMSGrad, and an explicit decay form.

    Per step ``k`` (from 1), with ``lr_t = group["lr"]``, ``eta_t = lr_t / initial_lr``:
    ``m = beta1*m + (1-beta1)*g``; ``v = beta2*v + (1-beta2)*g^2``;
    ``w -= lr_t/(1-beta1^k) * m / (sqrt(v)/sqrt(1-beta2^k) + eps)``, where

    - ``decay="l2"``: ``g = grad + wd*w`` (``torch.optim.Adam(weight_decay=wd)``);
    - ``decay="decoupled"``: ``w *= 1 - lr_t*wd`` first (``torch.optim.AdamW``);
    - ``decay="independent"``: ``w *= 1 - eta_t*wd`` first (the paper's AdamW, Algorithm 2).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay: str = "l2",
        amsgrad: bool = False,
        relative: bool = False,
    ) -> None:
        _check_nonneg("lr", lr)
        _check_nonneg("eps", eps)
        _check_nonneg("weight_decay", weight_decay)
        betas = tuple(betas)
        if len(betas) != 2 or not all(
            isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in betas
        ):
            raise ValueError(f"betas={betas!r} must be two numbers in [0, 1)")
        _check_decay(decay)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decay=decay,
            amsgrad=amsgrad,
            relative=relative,
            step=0,
        )
        super().__init__(params, defaults)
        self._prepare_groups()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads = self._params_with_grad(group)
            if not params:
                continue
            states = [self.state[p] for p in params]
            if group["step"] == 0 or not all("exp_avg" in s for s in states):
                for p, s in zip(params, states):
                    if "exp_avg" not in s:
                        s["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        s["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                        if group["amsgrad"]:
                            s["max_exp_avg_sq"] = torch.zeros_like(p)
            group["step"] += 1
            beta1, beta2 = group["betas"]
            adam_step(
                params,
                grads,
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [s["max_exp_avg_sq"] for s in states] if group["amsgrad"] else None,
                step=group["step"],
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eta=_eta(group),
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                decay=group["decay"],
                amsgrad=group["amsgrad"],
                relative=group["relative"],
            )
            group["shrink"] = _shrink(group)
        return loss


class SGDW(SGD):
    """:class:`SGD` with ``decay="decoupled"`` by default."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, **kwargs: Any) -> None:
        kwargs.setdefault("decay", "decoupled")
        super().__init__(params, lr=lr, **kwargs)


class AdamW(Adam):
    """:class:`Adam` with ``decay="decoupled"`` by default (== torch.optim.AdamW)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, **kwargs: Any) -> None:
        kwargs.setdefault("decay", "decoupled")
        super().__init__(params, lr=lr, **kwargs)
