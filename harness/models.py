"""Small networks for the workloads. Each is plain ``nn`` layers, readable top to bottom.

- ``mlp``: ``Linear(40, w) -> ReLU`` x depth, ``Linear(w, 10)``  (MNIST-1D)
- ``mlp_bn``: the same with ``BatchNorm1d(w)`` after each hidden Linear (before ReLU)
- ``cnn``: ``Conv1d(1, w, 5, stride 2, pad 2) -> ReLU -> Conv1d(w, w, 3, stride 2, pad 1) -> ReLU
  -> Conv1d(w, w, 3, stride 2, pad 1) -> ReLU -> flatten (w*5) -> Linear(w*5, 10)``  (MNIST-1D)
- ``cnn_bn``: the same with ``BatchNorm1d(w)`` after each convolution
- ``resnet20`` / ``resnet_tiny``: CIFAR ResNets (He et al. 2016, 3 stages, BasicBlocks with
  BatchNorm, 1x1-conv projection shortcuts), 3 / 1 blocks per stage, base width ``w``.

Switches every built-in model takes (``conf/model/*.yaml``): ``bn_affine`` (BatchNorm with a
learned gain and shift; ``false``: a plain normalization, so every weight feeding it is
scale-invariant and nothing of the norm decays), ``bn_eps`` (BatchNorm's ``eps``),
``frozen_head`` (the classifier ``Linear`` keeps its random initialization: not trained, not
decayed) and ``head_scale`` (the classifier's initial weights and bias times this).

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


def head(cin: int, num_classes: int, frozen: bool = False, scale: float = 1.0) -> nn.Linear:
    """The classifier ``Linear``: its initial weights and bias times ``scale``; ``frozen``: not
    trained (``requires_grad=False``; optimizers and decay leave it out)."""
    fc = nn.Linear(cin, num_classes)
    if scale != 1.0:
        with torch.no_grad():
            fc.weight.mul_(scale)
            fc.bias.mul_(scale)
    fc.requires_grad_(not frozen)
    return fc


def mlp(
    in_features: int,
    num_classes: int,
    width: int,
    depth: int,
    bn: bool,
    bn_affine: bool = True,
    bn_eps: float = 1e-5,
    frozen_head: bool = False,
    head_scale: float = 1.0,
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    d = in_features
    for _ in range(depth):
        layers.append(nn.Linear(d, width))
        if bn:
            layers.append(nn.BatchNorm1d(width, eps=bn_eps, affine=bn_affine))
        layers.append(nn.ReLU())
        d = width
    layers.append(head(d, num_classes, frozen_head, head_scale))
    return nn.Sequential(*layers)


def cnn1d(
    length: int,
    num_classes: int,
    width: int,
    bn: bool,
    bn_affine: bool = True,
    bn_eps: float = 1e-5,
    frozen_head: bool = False,
    head_scale: float = 1.0,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    specs = [(1, 5, 2), (width, 3, 1), (width, 3, 1)]
    n = length
    for cin, k, pad in specs:
        layers.append(nn.Conv1d(cin, width, k, stride=2, padding=pad))
        if bn:
            layers.append(nn.BatchNorm1d(width, eps=bn_eps, affine=bn_affine))
        layers.append(nn.ReLU())
        n = (n + 2 * pad - k) // 2 + 1
    layers += [nn.Flatten(), head(width * n, num_classes, frozen_head, head_scale)]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    def __init__(
        self, cin: int, cout: int, stride: int, bn_affine: bool = True, bn_eps: float = 1e-5
    ) -> None:
        super().__init__()
        norm = dict(eps=bn_eps, affine=bn_affine)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout, **norm)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, **norm)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, **norm)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        blocks: int,
        width: int,
        num_classes: int,
        in_ch: int = 3,
        bn_affine: bool = True,
        bn_eps: float = 1e-5,
        frozen_head: bool = False,
        head_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width, eps=bn_eps, affine=bn_affine),
            nn.ReLU(),
        )
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(BasicBlock(cin, cout, stride, bn_affine, bn_eps))
                cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = head(cin, num_classes, frozen_head, head_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))


def build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int,
    depth: int,
    bn: bool = False,
    **switches: Any,
) -> nn.Sequential:
    return mlp(math.prod(input_shape), num_classes, width, depth, bn, **switches)


def build_cnn1d(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int,
    depth: int,
    bn: bool = False,
    **switches: Any,
) -> nn.Sequential:
    return cnn1d(input_shape[-1], num_classes, width, bn, **switches)


def build_resnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int,
    depth: int,
    blocks: int = 3,
    **switches: Any,
) -> ResNet:
    return ResNet(blocks, width, num_classes, input_shape[0], **switches)


def model_spec(cfg: Any) -> registry.ModelSpec:
    """The registry entry of the configured model: ``model.name``'s entry of
    :data:`harness.registry.MODELS`, or for ``model._target_=mypkg.nets.Net`` an entry made from
    the target, whose constructor arguments are the model group's own keys (those that are no
    field of :class:`harness.config.ModelConfig`). Raises ConfigError naming the key."""
    from harness.config import user_keys
    from harness.errors import ConfigError

    target = str(cfg.get("_target_") or "")
    if not target:
        if cfg.name not in registry.MODELS:
            raise ConfigError(
                f"model.name: '{cfg.name}' is not one of {', '.join(registry.MODELS)}; "
                "pass model=<one of those> or model._target_=<your nn.Module class>"
            )
        return registry.model(cfg.name)
    return registry.ModelSpec(
        name=str(cfg.name),
        summary=f"the user's model {target}",
        builder=target,
        input=registry.VECTOR,  # any shape: the first batch checks it (check_workload)
        options=user_keys(cfg, "model"),
        population=False,  # no hand-written batched forward: harness.population_generic
        target=True,
    )


def build_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The configured model (:func:`model_spec`: a name of :data:`harness.registry.MODELS` or a
    ``model._target_``) for inputs of ``input_shape`` (without the batch dimension)."""
    from harness.errors import ConfigError

    spec = model_spec(cfg)
    name = spec.name
    if not registry.accepts(spec.input, tuple(input_shape)):
        kind = registry.INPUT_KINDS[spec.input]
        raise ValueError(f"model.name={name} needs {kind.description}, got inputs {input_shape}")
    fields = {k: cfg[k] for k in spec.reads if k in cfg}
    if not spec.target:
        return spec.build(tuple(input_shape), num_classes, int(cfg.width), int(cfg.depth), **fields)
    try:
        skip = ("name", "_target_", "width", "depth")
        fields.update({k: cfg[k] for k in _harness_fields(cfg) if k not in skip})
        model = spec.build(
            tuple(input_shape), num_classes, int(cfg.width), int(cfg.depth), **fields
        )
    except LookupError as exc:
        raise ConfigError(f"model._target_: {exc}; {_IMPORT_FIX}") from None
    except TypeError as exc:
        raise ConfigError(
            f"model._target_: {spec.builder}(...) rejects its arguments ({exc}); set its "
            "constructor arguments as model.<name>=<value> (new keys: +model.<name>=<value>)"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model._target_: {spec.builder} returned {type(model).__name__}, not a "
            "torch.nn.Module; name an nn.Module class or a function that returns one"
        )
    return model


_IMPORT_FIX = (
    "put its module in the working folder you run from (or install its package) and spell "
    "it as package.module.Name"
)


def _harness_fields(cfg: Any) -> list[str]:
    from harness.config import user_keys

    extra = user_keys(cfg, "model")
    return [k for k in cfg if k not in extra]


def loss_function(cfg: Any) -> Any:
    """``train.loss``: a user's ``loss(logits, targets) -> scalar`` (the batch mean) named by
    its dotted path, or None for the default cross-entropy. Raises ConfigError naming the key."""
    from harness.errors import ConfigError

    path = str(cfg.train.get("loss", "") or "")
    if not path:
        return None
    try:
        fn = registry.resolve(path)
    except LookupError as exc:
        raise ConfigError(f"train.loss: {exc}; {_IMPORT_FIX}") from None
    if not callable(fn):
        raise ConfigError(
            f"train.loss: {path} is a {type(fn).__name__}, not a callable loss(logits, targets)"
        )
    return fn


def check_workload(cfg: Any) -> None:
    """Before any study exists: the configured data can be had and, for a user's ``_target_``
    (model or data) or ``train.loss``, the model builds from the data's input shape and class
    count, maps the first training batch to ``[batch, classes]`` logits and the loss takes them.
    Raises ConfigError (one line naming the key and the fix)."""
    from harness.data import check_data, load_data
    from harness.errors import ConfigError

    check_data(cfg.data)
    user = bool(cfg.model.get("_target_") or cfg.data.get("_target_") or cfg.train.get("loss"))
    if not user:
        return
    data = load_data(cfg.data)
    torch.manual_seed(int(cfg.train.seed))
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    key = "model._target_" if cfg.model.get("_target_") else "data._target_"
    n = min(int(cfg.data.batch_size), data.n_train, 8)
    x, y = data.x_train[:n], data.y_train[:n]
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the user's forward on the data's first batch
        raise ConfigError(
            f"{key}: the model fails on the first batch of {tuple(x.shape)} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); make the "
            f"model read inputs of shape [batch, {', '.join(map(str, data.input_shape))}]"
        ) from None
    want = (n, data.num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"{key}: the model maps the first batch {tuple(x.shape)} to {got}, not logits "
            f"[batch, classes] = {list(want)}; return one logit per class "
            f"({data.num_classes} classes in the data)"
        )
    loss = loss_function(cfg)
    if loss is not None:
        try:
            value = loss(out, y)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"train.loss: {cfg.train.loss}(logits, targets) fails "
                f"({type(exc).__name__}: {exc}); take logits [batch, classes] and class ids"
            ) from None
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            raise ConfigError(
                f"train.loss: {cfg.train.loss} returned "
                f"{tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__}"
                ", not a scalar tensor; return the batch mean"
            )
