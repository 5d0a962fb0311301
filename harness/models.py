"""Small networks for the workloads. Each is plain ``nn`` layers, readable top to bottom.

- ``mlp``: ``Linear(40, w) -> ReLU`` x depth, ``Linear(w, 10)``  (MNIST-1D)
- ``mlp_bn``: the same with ``BatchNorm1d(w)`` after each hidden Linear (before ReLU)
- ``cnn``: ``Conv1d(1, w, 5, stride 2, pad 2) -> ReLU -> Conv1d(w, w, 3, stride 2, pad 1) -> ReLU
  -> Conv1d(w, w, 3, stride 2, pad 1) -> ReLU -> flatten (w*5) -> Linear(w*5, 10)``  (MNIST-1D)
- ``cnn_bn``: the same with ``BatchNorm1d(w)`` after each convolution
- ``resnet20`` / ``resnet_tiny``: CIFAR ResNets (He et al. 2016, 3 stages, BasicBlocks with
  BatchNorm, 1x1-conv projection shortcuts), 3 / 1 blocks per stage, base width ``w``.

Each entry of :data:`harness.registry.MODELS` names its builder in this module (``build_*``:
input shape, classes, width, depth and the entry's options); :func:`build_model` looks the
configured name up there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from harness import registry


def mlp(in_features: int, num_classes: int, width: int, depth: int, bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_features
    for _ in range(depth):
        layers.append(nn.Linear(d, width))
        if bn:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        d = width
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def cnn1d(length: int, num_classes: int, width: int, bn: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    specs = [(1, 5, 2), (width, 3, 1), (width, 3, 1)]
    n = length
    for cin, k, pad in specs:
        layers.append(nn.Conv1d(cin, width, k, stride=2, padding=pad))
        if bn:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU())
        n = (n + 2 * pad - k) // 2 + 1
    layers += [nn.Flatten(), nn.Linear(width * n, num_classes)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: int, width: int, num_classes: int, in_ch: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                stages.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


def build_mlp(
    input_shape: tuple[int, ...], num_classes: int, width: int, depth: int, bn: bool = False
) -> nn.Sequential:
    return mlp(math.prod(input_shape), num_classes, width, depth, bn)


def build_cnn1d(
    input_shape: tuple[int, ...], num_classes: int, width: int, depth: int, bn: bool = False
) -> nn.Sequential:
    return cnn1d(input_shape[-1], num_classes, width, bn)


def build_resnet(
    input_shape: tuple[int, ...], num_classes: int, width: int, depth: int, blocks: int = 3
) -> ResNet:
    return ResNet(blocks, width, num_classes, input_shape[0])


def build_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The configured model (``cfg.name``'s entry of :data:`harness.registry.MODELS`) for inputs
    of ``input_shape`` (without the batch dimension)."""
    name = cfg.name
    if name not in registry.MODELS:
        raise ValueError(f"model.name={name!r} is not one of {', '.join(registry.MODELS)}")
    spec = registry.model(name)
    if not registry.accepts(spec.input, tuple(input_shape)):
        kind = registry.INPUT_KINDS[spec.input]
        raise ValueError(f"model.name={name} needs {kind.description}, got inputs {input_shape}")
    return spec.build(tuple(input_shape), num_classes, int(cfg.width), int(cfg.depth))
