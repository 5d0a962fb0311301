"""One step of population training, and the members that run it in :func:`harness.loop.train`.

The step is written as functions of tensors only (:func:`_population_loss`, the update rules
:func:`_sgd_update` / :func:`_adam_update`, which run ``harness.optim.functional``'s
``sgd_step`` / ``adam_step`` with per-member lr and wd tensors: no second copy of the math), so
``train.compile=true`` can hand them to ``torch.compile`` once per process and shape
(:class:`_Step`; eager fallback if compilation fails; each population logs which step ran on
the ``lrwd.population`` logger), and glibc is told to keep freed blocks
(:func:`keep_freed_memory`) so a step's multi-MB activations and gradients are not
page-faulted in afresh every step.

:class:`BatchedMembers` are P members stacked by :class:`harness.population_kernels.Stacked`
(hand-written layers) or :class:`harness.population_generic.GenericStacked` (``vmap``). Each
member's loss is the mean cross-entropy over the batch; the population loss is their sum, so
each member's gradient is exactly its own. A member that diverged or was pruned is frozen (lr
and wd set to 0). The optimizer family's registry entry names its update (``batched``):
:class:`SGDUpdate`, :class:`AdamUpdate`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from harness import registry
from harness.instruments import Instruments
from harness.loop import (
    Run,
    configured_groups,
    decay_scope,
    effective_weight_decay,
    instruments_on,
    invariant_names,
)
from harness.models import loss_function, model_spec
from harness.optim.functional import adam_step, sgd_step
from harness.population_generic import GenericStacked
from harness.population_kernels import Stacked, batched_forward

log = logging.getLogger("lrwd.population")


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.ndim - 1))


def _population_loss(
    layers: tuple[tuple[Any, ...], ...],
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    p: int,
    penalty_wd: list[torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(each member's mean cross-entropy ``[P]``, the population loss: their sum, plus
    ``wd/2 * ||w||^2`` per member for ``decay="loss"``)."""
    logits = batched_forward(layers, params, buffers, x, p, True)
    return _loss_of(logits, y, p, params, penalty_wd)


def _loss_of(
    logits: torch.Tensor,
    y: torch.Tensor,
    p: int,
    params: dict[str, torch.Tensor],
    penalty_wd: list[torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    losses = (
        F.cross_entropy(logits.reshape(p * y.shape[0], -1), y.repeat(p), reduction="none")
        .view(p, -1)
        .mean(1)
    )
    total = losses.sum()
    if penalty_wd is not None:
        total = total + 0.5 * sum(
            (w_ * q.square()).sum() for w_, q in zip(penalty_wd, params.values())
        )
    return losses, total


def _sgd_update(
    params, grads, bufs, lr_views, eta, wd, momentum, dampening, nesterov, decay, first
):
    """``harness.optim.functional.sgd_step`` with per-member lr ``lr_views * eta``; momentum
    buffers are preallocated and filled from the gradients at the first step. ``eta``: a float,
    or a 0-d tensor (compiled: a float would be a constant of the graph, recompiled per step)."""
    sgd_step(
        params,
        grads,
        bufs,
        lr=[v * eta for v in lr_views],
        weight_decay=wd,
        eta=eta if isinstance(eta, float) else [eta] * len(params),
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        decay=decay,
        init_buffers=first,
    )


def _adam_update(
    params, grads, exp_avgs, exp_avg_sqs, max_sqs, step, lr_views, eta, wd, b1, b2, eps, decay, ams
):
    """``harness.optim.functional.adam_step`` with per-member lr ``lr_views * eta``; ``step`` and
    ``eta``: numbers, or 0-d tensors (compiled)."""
    tensors = not isinstance(eta, float)
    adam_step(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_sqs,
        step=[step] * len(params) if tensors else step,
        lr=[v * eta for v in lr_views],
        weight_decay=wd,
        eta=[eta] * len(params) if tensors else eta,
        beta1=b1,
        beta2=b2,
        eps=eps,
        decay=decay,
        amsgrad=ams,
    )


_MALLOC_TUNED = False


def keep_freed_memory() -> bool:
    """Linux / glibc only: let ``free`` keep large blocks for reuse (``mallopt``: mmap threshold
    32 MiB, the maximum; trim threshold 1 GiB) instead of unmapping them and page-faulting fresh
    zeroed pages in at the next allocation. A population step allocates and frees the same
    multi-MB activations and gradients every step, which glibc's adaptive defaults would return
    to the system and fault in again (measured: docs/population.md). Process-wide and
    idempotent; the cost is that the process keeps up to its peak heap mapped. True when
    applied."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1
        ok = ok and libc.mallopt(m_trim_threshold, 2**30) == 1
    except (OSError, AttributeError):  # not glibc
        return False
    _MALLOC_TUNED = ok
    return ok


_COMPILED: dict[Callable[..., Any], Callable[..., Any] | None] = {}
_COMPILE_FAILED: dict[Callable[..., Any], str] = {}  # why a function runs eagerly from now on


class _Step:
    """``fn``, or with ``compiled`` its ``torch.compile`` (inductor; built once per process and
    shared by every population, so same-shaped populations compile once). If compilation fails
    (no C++ compiler, an unsupported op), a warning is issued and ``fn`` runs eagerly from then
    on; the step that failed is rerun eagerly (compilation fails before the graph runs).

    Records how its calls ran: ``compiled_calls``, ``eager_calls`` and ``failure`` (why a
    requested compilation is not running, else None); :attr:`mode` sums them up."""

    def __init__(self, fn: Callable[..., Any], compiled: bool) -> None:
        self.fn = fn
        self.compiled = compiled
        self.compiled_calls = 0
        self.eager_calls = 0
        self.failure: str | None = None
        if compiled and fn not in _COMPILED:
            # static shapes: one graph per (model, optimizer variant, P); Dynamo's default limit
            # of 8 graphs per function would silently send the 9th shape to eager
            dynamo = torch._dynamo.config
            dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
            _COMPILED[fn] = torch.compile(fn, dynamic=False)

    @property
    def mode(self) -> str:
        """``"compiled"`` when every call ran the compiled function, else ``"eager"``."""
        return "compiled" if self.compiled_calls and not self.eager_calls else "eager"

    def __call__(self, *args: Any) -> Any:
        c = _COMPILED.get(self.fn) if self.compiled else None
        if c is not None:
            try:
                out = c(*args)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly
                reason = f"{type(exc).__name__}: {str(exc)[:200]}"
                warnings.warn(
                    f"population training: torch.compile of {self.fn.__name__} failed, running "
                    f"eagerly ({reason})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _COMPILED[self.fn] = None
                _COMPILE_FAILED[self.fn] = reason
            else:
                self.compiled_calls += 1
                return out
        if self.compiled:
            self.failure = _COMPILE_FAILED.get(self.fn, "torch.compile failed")
        self.eager_calls += 1
        return self.fn(*args)


def _log_step(
    p: int, cfg: Any, requested: bool, resnet: bool, loss_step: _Step, update_step: _Step
) -> None:
    """One line on the ``lrwd.population`` logger saying how the population's step ran; the
    record carries it as ``step_mode`` (``"compiled"`` or ``"eager"``)."""
    what = f"population of {p} {cfg.model.name} members"
    if not requested:
        log.debug("%s: eager step", what, extra={"step_mode": "eager"})
        return
    if resnet:
        log.info(
            "%s: eager step (train.compile covers the hand-batched sequential models only)",
            what,
            extra={"step_mode": "eager"},
        )
        return
    modes = {loss_step.mode, update_step.mode}
    if modes == {"compiled"}:
        log.info("%s: compiled step (torch.compile)", what, extra={"step_mode": "compiled"})
        return
    reason = loss_step.failure or update_step.failure or "no step ran compiled"
    log.warning(
        "%s: eager step, train.compile=true not in effect (%s)",
        what,
        reason,
        extra={"step_mode": "eager"},
    )


class SGDUpdate:
    """The SGD family's batched update: momentum buffers (preallocated, filled from the
    gradients at the first step) and :func:`_sgd_update`'s fixed arguments."""

    fn = staticmethod(_sgd_update)

    def __init__(self, o: Any, params: list[torch.Tensor], decay: str) -> None:
        self.bufs = [torch.zeros_like(q) for q in params] if float(o.momentum) != 0.0 else None
        self.hyper = (float(o.momentum), float(o.dampening), bool(o.nesterov), decay)

    def args(self, params, grads, lr_views, eta, wd, step: int, step_arg) -> tuple:  # noqa: ARG002
        return (params, grads, self.bufs, lr_views, eta, wd, *self.hyper, step == 0)


class AdamUpdate:
    """The Adam family's batched update: its moments and :func:`_adam_update`'s fixed
    arguments."""

    fn = staticmethod(_adam_update)

    def __init__(self, o: Any, params: list[torch.Tensor], decay: str) -> None:
        self.exp_avgs = [torch.zeros_like(q) for q in params]
        self.exp_avg_sqs = [torch.zeros_like(q) for q in params]
        self.max_sqs = [torch.zeros_like(q) for q in params] if o.amsgrad else None
        self.hyper = (float(o.betas[0]), float(o.betas[1]), float(o.eps), decay, bool(o.amsgrad))

    def args(self, params, grads, lr_views, eta, wd, step: int, step_arg) -> tuple:
        moments = (self.exp_avgs, self.exp_avg_sqs, self.max_sqs)
        return (params, grads, *moments, step_arg(step + 1), lr_views, eta, wd, *self.hyper)


class BatchedMembers:
    """P members that share everything but lr / weight decay, stacked, for
    :func:`harness.loop.train`. ``loss``: the population's loss function (the hand-walked
    layers' :func:`_population_loss`)."""

    def __init__(
        self, cfgs: Sequence[Any], run: Run, loss: Callable[..., Any] = _population_loss
    ) -> None:
        base = cfgs[0]
        p = self.p = len(cfgs)
        device, dtype, data, model = run.device, run.dtype, run.data, run.model
        spec = model_spec(base.model)
        user_loss = loss_function(base)
        if spec.population and user_loss is None:
            forward = registry.resolve(spec.batched_forward) if spec.batched_forward else None
            pop: Stacked | GenericStacked = Stacked(model, p, forward)
        else:  # no hand-written batched path: vmap (raises NotBatchable before any step)
            pop = GenericStacked(model, p, user_loss)
            pop.probe(data.x_train[: run.batch], data.y_train[: run.batch])
        o = base.optimizer
        self.form = registry.decay(o.decay)
        # reported as given (a float32 tensor would round them)
        self.lrs = [float(c.optimizer.lr) for c in cfgs]
        self.wds = [effective_weight_decay(c, data) for c in cfgs]  # normalized: see harness.loop
        self.lr = torch.tensor(self.lrs, device=device, dtype=dtype)
        self.wd = torch.tensor(self.wds, device=device, dtype=dtype)
        invariant = invariant_names(base, run)
        groups, report = configured_groups(base, model, 0.0, invariant=invariant)
        self.scope = decay_scope(base, model, invariant, report)
        decayed = {id(q) for q in groups[0]["params"]}
        decays = [id(q) in decayed for q in model.parameters()]
        zero = torch.zeros_like(self.wd)
        # the tensors the optimizer updates: all but frozen ones (requires_grad=False)
        trained = [q.requires_grad for q in pop.params]
        self.tparams = [q for q, t in zip(pop.params, trained) if t]
        self.lr_views = [_view(self.lr, q) for q in self.tparams]
        self.wd_views = [_view(self.wd if d else zero, q) for q, d in zip(pop.params, decays)]
        self.penalty = self.form.penalty
        # a model with its own batched forward (the ResNet) runs eagerly: it walks the module
        self.compile_requested = bool(base.train.get("compile", False))
        self.compiled = self.compile_requested and pop.layers is not None
        self.loss_step = _Step(loss, self.compiled)
        self.loss_fn: Callable[..., Any] = self.loss_step
        if pop.layers is None:

            def loss_fn(layers, params, buffers, x, y, p, penalty_wd):  # noqa: ARG001
                if isinstance(pop, GenericStacked):
                    return pop.loss_of(x, y, penalty_wd)
                return _loss_of(pop.forward(x), y, p, params, penalty_wd)

            self.loss_fn = loss_fn
        family = registry.optimizer(o.name)
        self.rule = registry.resolve(family.batched)(o, self.tparams, self.form.mode)
        self.update_fn = _Step(self.rule.fn, self.compiled)
        # the update's fixed arguments, read from the config once (OmegaConf access is slow)
        self.step_wd = 0.0 if self.penalty else [v for v, t in zip(self.wd_views, trained) if t]
        self.instruments = None
        if instruments_on(base):
            tnames = [n for n, t in zip(pop.names, trained) if t]
            self.instruments = Instruments(
                tnames, [q.detach() for q in self.tparams], invariant or [], run.total
            )
        self.pop, self.base = pop, base
        self.grads: list[torch.Tensor] = []

    def _step_arg(self, v: float) -> float | torch.Tensor:  # compiled: per-step numbers as inputs
        return torch.tensor(v, dtype=torch.float64) if self.compiled else v

    def backward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pop = self.pop
        losses, total_loss = self.loss_fn(
            pop.layers,
            pop._by_name,
            pop.buffers,
            x,
            y,
            self.p,
            self.wd_views if self.penalty else None,
        )
        for q in pop.params:
            q.grad = None
        total_loss.backward()
        self.grads = [q.grad for q in self.tparams]
        return losses.detach()

    def update(self, step: int, eta: float) -> None:
        args = self.rule.args(
            self.tparams,
            self.grads,
            self.lr_views,
            self._step_arg(eta),
            self.step_wd,
            step,
            self._step_arg,
        )
        with torch.no_grad():
            self.update_fn(*args)

    def errors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.pop.errors(x, y)

    def weight_norms(self) -> torch.Tensor:
        return self.pop.weight_norms()

    def train_losses(self, loss_sum: torch.Tensor, count: int) -> list[float]:
        return (loss_sum / count).tolist()

    def shrink(self, m: int, eta: float) -> float:
        """As ``harness.optim`` records it (the decay form's per-step shrink)."""
        return self.form.step_shrink(self.lrs[m] * eta, eta, self.wds[m])

    def freeze(self, m: int) -> None:
        self.lr[m] = 0.0
        self.wd[m] = 0.0
        with torch.no_grad():
            for q in self.pop.params:
                q[m].nan_to_num_(0.0, 0.0, 0.0)

    def finish(self) -> None:
        generic = self.pop.layers is None
        _log_step(
            self.p, self.base, self.compile_requested, generic, self.loss_step, self.update_fn
        )

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        return self.pop.member_state(m)
