"""``SGD`` and ``Adam`` with an explicit decay form, as ``torch.optim.Optimizer`` subclasses.

The math lives in :mod:`harness.optim.functional`; these classes keep the state, pick the
hyperparameters of each param group and record the shrink (``group["shrink"]``).

Per group: ``lr_t = group["lr"]``, ``eta_t = lr_t / group["initial_lr"]`` (``initial_lr`` = the
group's lr at construction; torch's lr schedulers use the same key and keep it), so
``decay="independent"`` follows any scheduler that changes ``group["lr"]``.

Speed: per param group and (device, dtype), the parameter list and the state are gathered once
and cached. The state tensors of a group are views into one flat buffer per kind
(:class:`~harness.optim.functional.FlatList`), so ops on state alone run on a few contiguous
chunks instead of once per tensor; the per-step Python work is one list comprehension
(``p.grad``) per group. The state dict still holds one tensor per parameter and key, in
torch.optim's layout (``momentum_buffer``; ``step``, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``). The cache is rebuilt after ``load_state_dict``, ``add_param_group`` or a
change of ``amsgrad`` / ``momentum``; do not assign ``optimizer.state`` entries by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from harness.optim.functional import DECAY_MODES, FlatList, adam_step, sgd_step, step_shrink

_ALLOWED_DECAY = ", ".join(DECAY_MODES)


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{name}={value!r} is invalid; allowed: {allowed}")


def _check_number(name: str, value: Any, allowed: str, ok: Callable[[float], bool]) -> None:
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        _fail(name, value, allowed)


def check_decay(decay: Any) -> None:
    """ValueError naming ``decay`` and the allowed values (``"loss"`` says where it goes)."""
    if decay == "loss":
        raise ValueError(
            f"decay='loss' is not an optimizer mode; allowed: {_ALLOWED_DECAY}. For the loss-side "
            "penalty add harness.optim.l2_penalty(params, wd) to the loss and pass weight_decay=0"
        )
    if decay not in DECAY_MODES:
        _fail("decay", decay, _ALLOWED_DECAY)


def _check_group(group: dict[str, Any]) -> None:
    _check_number("lr", group["lr"], "a float >= 0", lambda x: x >= 0.0)
    _check_number("weight_decay", group["weight_decay"], "a float >= 0", lambda x: x >= 0.0)
    check_decay(group["decay"])
    if not isinstance(group["relative"], bool):
        _fail("relative", group["relative"], "True or False")
    if "momentum" in group:  # SGD
        m, d = group["momentum"], group["dampening"]
        _check_number("momentum", m, "a float in [0, 1)", lambda x: 0.0 <= x < 1.0)
        _check_number("dampening", d, "a float in [0, 1]", lambda x: 0.0 <= x <= 1.0)
        if group["nesterov"] not in (True, False):
            _fail("nesterov", group["nesterov"], "True or False")
        if group["nesterov"] and (m <= 0.0 or d != 0.0):
            raise ValueError(
                f"nesterov=True is invalid with momentum={m!r}, dampening={d!r}; allowed: "
                "nesterov=False, or nesterov=True with momentum > 0 and dampening=0"
            )
    if "betas" in group:  # Adam
        b = group["betas"]
        if (
            not isinstance(b, (tuple, list))
            or len(b) != 2
            or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and 0.0 <= x < 1.0
                for x in b
            )
        ):
            _fail("betas", b, "two floats in [0, 1), e.g. (0.9, 0.999)")
        _check_number("eps", group["eps"], "a float >= 0", lambda x: x >= 0.0)
        if group["amsgrad"] not in (True, False):
            _fail("amsgrad", group["amsgrad"], "True or False")
    lr0 = group["initial_lr"]
    _check_number("initial_lr", lr0, "a float >= 0", lambda x: x >= 0.0)
    if group["decay"] == "independent" and float(lr0) == 0.0 and float(group["weight_decay"]):
        raise ValueError(
            "lr=0 is invalid with decay='independent'; allowed: lr > 0 (the base lr lr_0 of "
            "eta_t = lr_t / lr_0; let an lr scheduler scale it)"
        )


class _Bucket:
    """One param group's tensors on one (device, dtype), with their state as FlatLists."""

    __slots__ = ("params", "ready", "n_ready", "bufs", "steps", "uniform", "denom")

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        self.ready: list[bool] = []  # state registered (the param has had a gradient)
        self.n_ready = 0
        self.bufs: dict[str, FlatList] = {}
        self.steps: Tensor | None = None  # Adam: per-param step counts (float64, CPU)
        self.uniform: int | None = None  # Adam: the common step count, if all are equal
        self.denom: FlatList | None = None  # Adam: scratch for g + wd*w, then the denominator


class _DecayOptimizer(torch.optim.Optimizer):
    _counts_steps = False  # Adam: per-param "step" in the state

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        self._cache: dict[int, tuple[Any, ...]] = {}
        _check_group({**defaults, "initial_lr": defaults["lr"]})
        super().__init__(params, defaults)

    # -- groups and state ------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])
        group.setdefault("shrink", 0.0)
        try:
            _check_group(group)
            if any(p.is_complex() or p.is_sparse for p in group["params"]):
                _fail("params", "complex or sparse tensor", "dense real floating-point tensors")
        except ValueError:
            self.param_groups.pop()
            raise
        self._cache = {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch.optim's, plus: keys a saved group lacks (a torch.optim checkpoint has no
        ``decay``, ``relative``, ``initial_lr``) keep this optimizer's values for that group."""
        before = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        super().load_state_dict(state_dict)
        for old, group in zip(before, self.param_groups, strict=True):
            for key, value in old.items():
                group.setdefault(key, value)
            _check_group(group)
        self._cache = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._cache = {}

    def _keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ()

    def _buckets(self, index: int, group: dict[str, Any]) -> list[_Bucket]:
        keys = self._keys(group)
        params = group["params"]
        entry = self._cache.get(index)
        if (
            entry is not None
            and entry[0] is group
            and entry[1] is params
            and entry[2] == len(params)
            and entry[3] == keys
        ):
            return entry[4]
        by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
        for p in params:
            by_kind.setdefault((p.device, p.dtype), []).append(p)
        buckets = [self._build(ps, keys) for ps in by_kind.values()]
        self._cache[index] = (group, params, len(params), keys, buckets)
        return buckets

    def _build(self, params: list[Tensor], keys: tuple[str, ...]) -> _Bucket:
        """Flat state for ``params``; state that exists (loaded, or from an earlier cache) is
        copied in and its entries replaced by views."""
        b = _Bucket(params)
        b.bufs = {k: FlatList(params) for k in keys}
        if self._counts_steps:
            b.steps = torch.zeros(len(params), dtype=torch.float64)
            b.denom = FlatList(params)
        for i, p in enumerate(params):
            st = self.state[p] if p in self.state else None
            ready = bool(keys) and st is not None and st.get(keys[0]) is not None
            if ready:
                for k in keys:  # a key added later (amsgrad switched on) starts at zero
                    if st.get(k) is not None:
                        b.bufs[k][i].copy_(st[k])
                    st[k] = b.bufs[k][i]
                if b.steps is not None:
                    b.steps[i] = float(st.get("step", 0.0))
                    st["step"] = b.steps[i]
            b.ready.append(ready)
        b.n_ready = sum(b.ready)
        self._refresh_uniform(b)
        return b

    def _register(self, b: _Bucket, indices: Iterable[int]) -> None:
        """First gradient of these params: their state entries become views of the buffers."""
        for i in indices:
            if b.ready[i]:
                continue
            st = self.state[b.params[i]]
            for k, buf in b.bufs.items():
                st[k] = buf[i]
            if b.steps is not None:
                st["step"] = b.steps[i]
            b.ready[i] = True
            b.n_ready += 1

    @staticmethod
    def _refresh_uniform(b: _Bucket) -> None:
        if b.steps is None:
            return
        s = b.steps
        b.uniform = int(s[0]) if len(s) and bool((s == s[0]).all()) else None

    # -- the step --------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every param group; params with ``grad=None`` are skipped (as torch)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            decay = group["decay"]
            if decay not in DECAY_MODES:
                check_decay(decay)
            lr = float(group["lr"])
            wd = float(group["weight_decay"])
            lr0 = float(group["initial_lr"])
            eta = lr / lr0 if lr0 else 0.0
            hyper = dict(lr=lr, weight_decay=wd, eta=eta, decay=decay, relative=group["relative"])
            for b in self._buckets(index, group):
                grads = [p.grad for p in b.params]
                if any(g is None for g in grads):
                    present = [i for i, g in enumerate(grads) if g is not None]
                else:
                    present = None
                self._update(group, b, grads, present, hyper)
            group["shrink"] = step_shrink(lr, wd, eta, decay)
        return loss

    def _update(self, group, b, grads, present, hyper) -> None:
        raise NotImplementedError


class SGD(_DecayOptimizer):
    """SGD with momentum, dampening, nesterov and an explicit decay form.

    Per step, with ``lr_t = group["lr"]``, ``eta_t = lr_t / initial_lr``, ``r = 1`` (or
    ``max(rms(w), 1e-3)`` per tensor with ``relative=True``)::

        decay="l2":           g <- g + wd*r*w           (== torch.optim.SGD(weight_decay=wd))
        decay="decoupled":    w <- w * (1 - lr_t*wd*r)
        decay="independent":  w <- w * (1 - eta_t*wd*r) (Loshchilov & Hutter's SGDW)
        buf <- g at the first step, else momentum*buf + (1 - dampening)*g
        u <- g + momentum*buf if nesterov else buf       (u = g when momentum == 0)
        w <- w - lr_t*u

    ``group["shrink"]`` after a step: ``lr_t*wd`` (l2, decoupled) or ``eta_t*wd`` (independent).
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

    def _keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _update(self, group, b, grads, present, hyper) -> None:
        kw = dict(
            momentum=float(group["momentum"]),
            dampening=float(group["dampening"]),
            nesterov=bool(group["nesterov"]),
            **hyper,
        )
        n = len(b.params)
        bufs = b.bufs.get("momentum_buffer")
        if present is None and (bufs is None or b.n_ready in (0, n)):  # the common case
            init = bufs is not None and b.n_ready == 0
            if init:
                self._register(b, range(n))
            sgd_step(b.params, grads, bufs, init_buffers=init, **kw)
            return
        # some params have no grad, or got their first grad late: calls on sublists
        idx = range(n) if present is None else present
        if bufs is None:
            sgd_step([b.params[i] for i in idx], [grads[i] for i in idx], None, **kw)
            return
        for init in (False, True):
            sub = [i for i in idx if b.ready[i] != init]
            if sub:
                sgd_step(
                    [b.params[i] for i in sub],
                    [grads[i] for i in sub],
                    [bufs[i] for i in sub],
                    init_buffers=init,
                    **kw,
                )
        self._register(b, idx)


class Adam(_DecayOptimizer):
    """Adam with bias correction, optional AMSGrad and an explicit decay form.

    Per step ``t`` (from 1), with ``lr_t = group["lr"]``, ``eta_t = lr_t / initial_lr``,
    ``r = 1`` (or ``max(rms(w), 1e-3)`` per tensor with ``relative=True``)::

        decay="l2":           g <- g + wd*r*w           (== torch.optim.Adam(weight_decay=wd))
        decay="decoupled":    w <- w * (1 - lr_t*wd*r)  (== torch.optim.AdamW)
        decay="independent":  w <- w * (1 - eta_t*wd*r) (Loshchilov & Hutter's AdamW, Alg. 2)
        m <- beta1*m + (1 - beta1)*g;   v <- beta2*v + (1 - beta2)*g^2
        vhat = max over steps of v if amsgrad else v
        w <- w - lr_t/(1 - beta1^t) * m / (sqrt(vhat)/sqrt(1 - beta2^t) + eps)

    ``group["shrink"]`` after a step: ``lr_t*wd`` (l2, decoupled) or ``eta_t*wd`` (independent).
    """

    _counts_steps = True

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
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, (tuple, list)) else betas,
            eps=eps,
            weight_decay=weight_decay,
            decay=decay,
            amsgrad=amsgrad,
            relative=relative,
        )
        super().__init__(params, defaults)

    def _keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")[: 3 if group["amsgrad"] else 2]

    def _update(self, group, b, grads, present, hyper) -> None:
        beta1, beta2 = (float(x) for x in group["betas"])
        amsgrad = bool(group["amsgrad"])
        kw = dict(beta1=beta1, beta2=beta2, eps=float(group["eps"]), amsgrad=amsgrad, **hyper)
        m, v = b.bufs["exp_avg"], b.bufs["exp_avg_sq"]
        vmax = b.bufs["max_exp_avg_sq"] if amsgrad else None
        n = len(b.params)
        if present is None:
            if b.n_ready < n:
                self._register(b, range(n))
            b.steps.add_(1.0)
            if b.uniform is not None:
                b.uniform += 1
                step: Any = b.uniform
            else:
                step = b.steps.tolist()
            adam_step(b.params, grads, m, v, vmax, step=step, denom_out=b.denom, **kw)
            return
        self._register(b, present)
        idx = torch.tensor(present, dtype=torch.long)
        b.steps.index_add_(0, idx, torch.ones(len(present), dtype=torch.float64))
        self._refresh_uniform(b)

        def sub(xs):
            return [xs[i] for i in present]

        adam_step(
            sub(b.params),
            sub(grads),
            sub(m),
            sub(v),
            sub(vmax) if amsgrad else None,
            step=b.steps[idx].tolist(),
            **kw,
        )


class SGDW(SGD):
    """:class:`SGD` with ``decay="decoupled"`` by default (``w *= 1 - lr_t*wd``)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, **kwargs: Any) -> None:
        kwargs.setdefault("decay", "decoupled")
        super().__init__(params, lr=lr, **kwargs)


class AdamW(Adam):
    """:class:`Adam` with ``decay="decoupled"`` by default (== torch.optim.AdamW)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, **kwargs: Any) -> None:
        kwargs.setdefault("decay", "decoupled")
        super().__init__(params, lr=lr, **kwargs)
