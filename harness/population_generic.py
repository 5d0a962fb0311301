"""Population training for any ``nn.Module``: P members through ``torch.func.vmap``.

The hand-written batched layers of :mod:`harness.population` (MLP, 1-D CNN, ResNet) are the fast
path for the built-in models. Every other model, a user's ``model._target_`` included, trains
its population here:

- the model is built once for the seed (every member starts from its weights, as in the
  hand-written path); its parameters and buffers are stacked along a leading member dimension
  ``[P, ...]`` (``torch.func.stack_module_state``'s layout, built from one module);
- one member's forward is ``torch.func.functional_call(model, (params, buffers), x)`` and the
  population's is that under ``torch.func.vmap`` over the member dimension of the parameters and
  buffers, the batch shared. BatchNorm running statistics (and ``num_batches_tracked``) are
  per-member buffers, updated in place under ``vmap`` as ``nn.BatchNorm`` updates its own;
  random layers (dropout) draw different numbers per member;
- each member's loss (``train.loss`` or cross-entropy) is computed inside the ``vmap``; the
  population loss is their sum, so each member's gradient is exactly its own, and the update is
  :mod:`harness.population`'s: ``harness.optim.functional.sgd_step`` / ``adam_step`` on the
  stacked tensors with per-member lr and weight decay views.

A model ``vmap`` cannot run (Python control flow on tensor values, ``.item()``, in-place tricks
on buffers) fails :meth:`GenericStacked.probe` on the first batch with :class:`NotBatchable`;
:func:`harness.population.run_population` then says so in one line and trains the members
sequentially.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

EVAL_CHUNK = 4096  # member-samples per evaluation batch on a CPU (as harness.population)


class NotBatchable(RuntimeError):
    """The model cannot run under ``torch.func.vmap``; the message says why (one line)."""


@contextlib.contextmanager
def _vmappable_attention() -> Iterator[None]:
    """``nn.MultiheadAttention``'s fused inference path has no batching rule and no derivative,
    and CPU's fused attention kernels have no batching rule (``vmap`` would loop over members):
    inside, attention runs as plain matmuls (the math backend)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


class Members:
    """What every stacked population (hand-batched or generic) reads off its ``[P, ...]``
    parameters ``params`` (named ``names``)."""

    names: list[str]
    params: list[torch.Tensor]

    def _stack(self, model: nn.Module, p: int) -> None:
        """``model``'s parameters repeated ``p`` times along a new leading dimension; a frozen
        parameter (``requires_grad=False``, e.g. a frozen head) is stacked, not trained."""
        self.model = model
        self.p = p
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [
            q.detach().unsqueeze(0).repeat(p, *[1] * q.ndim).clone().requires_grad_(q.requires_grad)
            for q in model.parameters()
        ]

    @torch.no_grad()
    def weight_norms(self) -> torch.Tensor:
        """``[P]``: each member's global L2 norm of all parameters."""
        sq = sum(q.detach().flatten(1).square().sum(1) for q in self.params)
        return sq.sqrt()

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member ``m``'s parameters, by name (copies)."""
        return {n: q.detach()[m].clone() for n, q in zip(self.names, self.params)}


class GenericStacked(Members):
    """P copies of any module, stacked ``[P, ...]``, with a ``vmap``-ed forward and loss: the
    interface of :class:`harness.population.Stacked` (``params``, ``buffers``, ``forward``,
    ``errors``, ``weight_norms``, ``member_state``)."""

    def __init__(
        self, model: nn.Module, p: int, loss: Callable[..., torch.Tensor] | None = None
    ) -> None:
        self._stack(model, p)
        self._by_name = dict(zip(self.names, self.params))
        self.buffers = {
            n: b.detach().unsqueeze(0).repeat(p, *[1] * b.ndim).clone()
            for n, b in model.named_buffers()
        }
        self.layers = None  # no hand-written layer walk
        self.loss = loss
        self.training = True

        def member_logits(params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(model, (params, buffers), (x,))

        def member_loss(params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> Any:
            logits = functional_call(model, (params, buffers), (x,))
            return loss(logits, y) if loss is not None else F.cross_entropy(logits, y)

        self._logits = vmap(member_logits, in_dims=(0, 0, None), randomness="different")
        self._losses = vmap(member_loss, in_dims=(0, 0, None, None), randomness="different")

    def _mode(self, training: bool) -> None:
        self.model.train(training)
        self.training = training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, B, C]`` for a shared input batch ``x`` ``[B, ...]``."""
        self.model.train(self.training)
        with _vmappable_attention():
            return self._logits(self._by_name, self.buffers, x)

    def loss_of(
        self, x: torch.Tensor, y: torch.Tensor, penalty_wd: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(each member's loss ``[P]``, the population loss: their sum, plus ``wd/2 * ||w||^2``
        per member for ``decay="loss"``)."""
        self._mode(True)
        with _vmappable_attention():
            losses = self._losses(self._by_name, self.buffers, x, y)
        total = losses.sum()
        if penalty_wd is not None:
            total = total + 0.5 * sum(
                (w_ * q.square()).sum() for w_, q in zip(penalty_wd, self.params)
            )
        return losses, total

    def probe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Run the population's training step (forward, loss, backward) and evaluation forward
        on a batch, on copies of the buffers and with the RNG state restored: raises
        :class:`NotBatchable` (one line) when ``vmap`` cannot run the model."""
        saved = self.buffers
        self.buffers = {n: b.clone() for n, b in saved.items()}
        try:
            with torch.random.fork_rng(devices=[]):
                _, total = self.loss_of(x, y, None)
                trained = [(n, q) for n, q in zip(self.names, self.params) if q.requires_grad]
                grads = torch.autograd.grad(total, [q for _, q in trained], allow_unused=True)
                missing = [n for (n, _), g in zip(trained, grads) if g is None]
                if missing:
                    raise NotBatchable(f"parameters the loss does not use: {', '.join(missing)}")
                self._mode(False)
                with torch.no_grad():
                    self.forward(x)
        except NotBatchable:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever vmap refuses
            first = (str(exc).strip().splitlines() or [""])[0]
            raise NotBatchable(f"{type(exc).__name__}: {first[:200]}") from None
        finally:
            self.buffers = saved
            self._mode(True)

    @torch.no_grad()
    def errors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's error rate ``[P]`` on ``(x, y)`` (evaluation mode)."""
        wrong = torch.zeros(self.p, device=x.device, dtype=torch.long)
        chunk = 2000 if x.device.type == "cuda" else max(32, EVAL_CHUNK // self.p)
        self._mode(False)
        try:
            for i in range(0, x.shape[0], chunk):
                logits = self.forward(x[i : i + chunk])
                wrong += (logits.argmax(-1) != y[i : i + chunk].unsqueeze(0)).sum(1)
        finally:
            self._mode(True)
        return wrong.to(torch.float64) / max(int(x.shape[0]), 1)
