"""The CIFAR ResNet of ``harness.models`` as a population: P members in one batched forward.

Layout: activations are ``[B, P*C, H, W]``, member ``m`` owning channels ``m*C .. (m+1)*C``.

- ``Conv2d``: one grouped convolution, ``groups=P``, with the members' weights ``[P, Cout, Cin,
  k, k]`` as ``[P*Cout, Cin, k, k]``; the stem reads the shared image batch with ``groups=1``.
- ``BatchNorm2d``: one batch norm over ``P*C`` channels; each member's statistics are its own
  channels' (per-member running mean / var live in ``Stacked.buffers``).
- Residual add, ReLU and the global average pool act on the batched layout unchanged; the last
  ``Linear`` is a ``baddbmm`` over ``[P, B, C]``.

Each member computes exactly what ``ResNet.forward`` computes for its own weights (checked in
float64 by ``tests/test_population.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.models import BasicBlock, ResNet
from harness.population_kernels import member_batch_norm


def _conv(pop: Any, name: str, module: nn.Conv2d, h: torch.Tensor, shared: bool) -> torch.Tensor:
    """P members' convolutions as one: weights ``[P, Cout, ...]`` become ``[P*Cout, ...]``; a
    shared input ``[B, Cin, H, W]`` is read by all (``groups=1``), a batched one
    ``[B, P*Cin, H, W]`` member by member (``groups=P``)."""
    w = pop._by_name[f"{name}.weight"]
    p, cout = w.shape[0], w.shape[1]
    return F.conv2d(
        h,
        w.reshape(p * cout, *w.shape[2:]),
        None,  # the ResNet's convolutions have no bias (BatchNorm follows)
        stride=module.stride,
        padding=module.padding,
        groups=1 if shared else p,
    )


def _bn(pop: Any, name: str, module: nn.BatchNorm2d, h: torch.Tensor) -> torch.Tensor:
    return member_batch_norm(
        h, pop._by_name, pop.buffers, name, module.momentum, module.eps, pop.training
    )


def _block(pop: Any, name: str, block: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    out = torch.relu(
        _bn(pop, f"{name}.bn1", block.bn1, _conv(pop, f"{name}.conv1", block.conv1, x, False))
    )
    out = _bn(pop, f"{name}.bn2", block.bn2, _conv(pop, f"{name}.conv2", block.conv2, out, False))
    if isinstance(block.shortcut, nn.Sequential):
        conv, bn = block.shortcut[0], block.shortcut[1]
        short = _bn(pop, f"{name}.shortcut.1", bn, _conv(pop, f"{name}.shortcut.0", conv, x, False))
    else:
        short = x
    return torch.relu(out + short)


def resnet_forward(pop: Any, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[P, B, classes]`` of the ``Stacked`` population ``pop`` of a :class:`ResNet`."""
    model: ResNet = pop.model
    p = pop.p
    conv, bn = model.stem[0], model.stem[1]
    h = torch.relu(_bn(pop, "stem.1", bn, _conv(pop, "stem.0", conv, x, shared=True)))
    for j, block in enumerate(model.stages):
        h = _block(pop, f"stages.{j}", block, h)
    h = h.mean(dim=(2, 3))  # [B, P*C]
    h = h.reshape(h.shape[0], p, -1).transpose(0, 1)  # [P, B, C]
    w, b = pop._by_name["fc.weight"], pop._by_name["fc.bias"]
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
