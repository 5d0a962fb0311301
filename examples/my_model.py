"""Sweep your own model: a model and a dataset defined outside the harness.

Run from the folder that holds this file's package (the repository root here)::

    python -m harness.sweep experiment=byo \
        model._target_=examples.my_model.TinyNet +model.hidden=32 \
        data._target_=examples.my_model.make_blobs +data.n_samples=1200 \
        model.name=tinynet data.name=blobs sweep.population=auto tracking=disabled

``TinyNet`` is any ``nn.Module``: the harness passes ``input_shape`` and ``num_classes`` because
its constructor names them, and ``hidden`` from the model group. ``make_blobs`` returns its
splits as ``(inputs, labels)`` tensors; the harness carves the validation split from the end of
the training set (``data.val_size``). ``smoothed_ce`` is an optional loss
(``train.loss=examples.my_model.smoothed_ce``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TinyNet(nn.Module):
    """Linear -> LayerNorm -> ReLU, a residual block, then the classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(math.prod(input_shape), hidden)
        self.norm = nn.LayerNorm(hidden)
        self.block = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.out = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.inp(x.flatten(1))))
        return self.out(h + self.block(h))


def make_blobs(
    n_samples: int = 1200, dim: int = 8, classes: int = 4, noise: float = 1.5, data_seed: int = 42
) -> dict:
    """Gaussian blobs around random class centres: ``n_samples`` training and ``n_samples // 4``
    test samples of ``dim`` features. ``data_seed`` (a field of the data group the harness passes
    because this signature names it) fixes the task."""
    gen = torch.Generator().manual_seed(data_seed)
    centres = 2.0 * torch.randn(classes, dim, generator=gen)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=gen)
        return centres[y] + noise * torch.randn(n, dim, generator=gen), y

    return {"train": draw(n_samples), "test": draw(n_samples // 4), "num_classes": classes}


def smoothed_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with label smoothing 0.1: a loss is ``f(logits, targets) -> batch mean``."""
    return F.cross_entropy(logits, targets, label_smoothing=0.1)
