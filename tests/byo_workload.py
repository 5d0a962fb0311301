"""A user's workload, defined outside ``harness``: models and loaders for tests/test_byo.py.

The sweep tests copy this file into a scratch folder and run the sweep from there, so that it
is found the way a user's module is (the working folder), not as part of the test package.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import TensorDataset


class BNNet(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear -> LayerNorm -> ReLU -> Linear, not an
    nn.Sequential: no hand-written batched path exists for it."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(math.prod(input_shape), hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.ln = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.fc1(x.flatten(1))))
        return self.head(torch.relu(self.ln(self.fc2(h))))


class AttnNet(nn.Module):
    """Token ids (as floats) -> Embedding -> MultiheadAttention + LayerNorm -> last position."""

    def __init__(self, num_classes: int, vocab: int = 8, width: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(0.02 * torch.randn(4, width))
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x.long()) + self.pos[: x.shape[1]]
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a)[:, -1])


class Branchy(nn.Module):
    """Python control flow on a tensor's value: torch.func.vmap cannot run it."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        return out if out.mean() > -1e9 else -out


class WrongWidth(nn.Module):
    """Reads 7 features, whatever the data has."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class OneLogitTooMany(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(input_shape), num_classes + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def not_a_module(input_shape: tuple[int, ...], num_classes: int) -> list:
    return [input_shape, num_classes]


NOT_CALLABLE = 3


def _blobs(n: int, dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(classes, dim, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, classes, (n,), generator=gen)
    return centres[y] + torch.randn(n, dim, generator=gen), y


def blobs(n_samples: int = 400, dim: int = 6, classes: int = 3) -> dict:
    """Splits as torch TensorDatasets; the harness carves the validation split."""
    train = TensorDataset(*_blobs(n_samples, dim, classes, 1))
    test = TensorDataset(*_blobs(200, dim, classes, 2))
    return {"train": train, "test": test}


class _Pairs(TorchDataset):
    """A map-style torch Dataset of (token ids, label) samples: label = (a + b) mod classes."""

    def __init__(self, n: int, classes: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randint(0, classes, (n, 2), generator=gen)
        self.classes = classes

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        a, b = self.x[i].tolist()
        return torch.tensor([a, b, self.classes, self.classes]), (a + b) % self.classes


def token_pairs(classes: int = 5) -> tuple:
    """(train, val, test) torch Datasets of 4-token sequences over a vocabulary of classes + 1."""
    return _Pairs(300, classes, 1), _Pairs(100, classes, 2), _Pairs(100, classes, 3)


def not_a_dataset() -> int:
    return 42


def smoothed(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets, label_smoothing=0.1)
