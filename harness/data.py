"""Workloads, resident on the device: MNIST-1D (generated locally) and CIFAR-10/100 from disk.

- MNIST-1D (Greydanus & Kobak): generated with ``mnist1d.data.make_dataset`` from its
  generation args (``num_samples``, ``train_split``, ``seed``), never downloaded, and cached as
  ``<root>/mnist1d-<hash of the args>.npz``. Published test accuracies: logistic regression 32%,
  MLP 68%, CNN 94%, GRU 91%.
- CIFAR-10 / CIFAR-100 in torchvision's on-disk format (``cifar-10-batches-py/`` with
  ``data_batch_1..5`` and ``test_batch``; ``cifar-100-python/`` with ``train`` and ``test``),
  parsed directly (no torchvision), normalized with training statistics, held on the device,
  augmented in whole batches on the device (random crop with 4-pixel zero padding, horizontal
  flip), as airbench does.

Each entry of :data:`harness.registry.DATASETS` names its loader in this module (and, for
CIFAR, the archive's layout and address). The validation split (``val_size`` samples) is carved from the
end of the training set, the same for every seed; the test set is only read for the final
report.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import registry
from harness.errors import ConfigError
from harness.phases import phase


class DataError(ConfigError):
    """Missing or unreadable data: one line with the path and how to get the data."""


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str
    augment_images: bool = False

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Random crop (pad 4) + horizontal flip for images; identity otherwise."""
        if not self.augment_images or x.ndim != 4:
            return x
        return crop_flip(x, gen)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Dataset:
        conv = {k: getattr(self, k) for k in ("x_train", "x_val", "x_test")}
        labels = {k: getattr(self, k) for k in ("y_train", "y_val", "y_test")}
        return Dataset(
            **{k: v.to(device=device, dtype=dtype) for k, v in conv.items()},
            **{k: v.to(device=device) for k, v in labels.items()},
            num_classes=self.num_classes,
            name=self.name,
            augment_images=self.augment_images,
        )


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Batched random crop with zero padding and random horizontal flip, on x's device."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)[None, :]  # [n, h]
    cols = dx[:, None] + torch.arange(w, device=x.device)[None, :]  # [n, w]
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # [n,h,w,c]
    return out.permute(0, 3, 1, 2).contiguous()


def _root(cfg: Any) -> Path:
    return Path(os.path.expanduser(str(cfg.root)))


def _split(x: np.ndarray, y: np.ndarray, cfg: Any) -> tuple[np.ndarray, ...]:
    val = int(cfg.val_size)
    if val <= 0 or val >= len(y):
        raise DataError(
            f"data.val_size: {val} must be between 1 and the training set size {len(y) - 1}"
        )
    x_tr, y_tr, x_val, y_val = x[:-val], y[:-val], x[-val:], y[-val:]
    if int(cfg.n_train) > 0:
        x_tr, y_tr = x_tr[: int(cfg.n_train)], y_tr[: int(cfg.n_train)]
    return x_tr, y_tr, x_val, y_val


def mnist1d_args(cfg: Any) -> dict[str, Any]:
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.update(
        num_samples=int(cfg.num_samples),
        train_split=float(cfg.train_fraction),
        seed=int(cfg.data_seed),
    )
    args.pop("url", None)
    return args


def load_mnist1d(cfg: Any) -> Dataset:
    """Generate (or read from the cache) MNIST-1D with the configured generation args."""
    args = mnist1d_args(cfg)
    key = hashlib.sha1(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    root = _root(cfg)
    path = root / f"mnist1d-{key}.npz"
    if path.exists():
        z = np.load(path)
        x, y, x_test, y_test = z["x"], z["y"], z["x_test"], z["y_test"]
    else:
        from mnist1d.data import make_dataset
        from mnist1d.utils import ObjectView

        state = np.random.get_state()
        try:
            d = make_dataset(ObjectView(dict(args)))
        finally:
            np.random.set_state(state)  # make_dataset seeds numpy's global RNG
        x, y, x_test, y_test = d["x"], d["y"], d["x_test"], d["y_test"]
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
            np.savez(tmp, x=x, y=y, x_test=x_test, y_test=y_test, args=json.dumps(args))
            os.replace(tmp, path)
        except OSError:
            pass  # an unwritable cache only costs regeneration
    x_tr, y_tr, x_val, y_val = _split(x, y, cfg)
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32).unsqueeze(1)  # noqa: E731
    lab = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long)  # noqa: E731
    return Dataset(
        t(x_tr),
        lab(y_tr),
        t(x_val),
        lab(y_val),
        t(x_test),
        lab(y_test),
        num_classes=registry.dataset("mnist1d").classes,
        name="mnist1d",
    )


def _source(cfg: Any) -> Any:
    """The on-disk format of the configured dataset (its registry entry's ``source``)."""
    return registry.dataset(cfg.name).source


def cifar_dir(cfg: Any) -> Path:
    return _root(cfg) / _source(cfg)["dir"]


def check_cifar(cfg: Any) -> Path:
    """The dataset directory, or one DataError naming the path and how to get the data."""
    spec = _source(cfg)
    folder = cifar_dir(cfg)
    missing = [f for f in (*spec["train"], *spec["test"]) if not (folder / f).is_file()]
    if missing:
        what = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
        raise DataError(
            f"data.root: {folder} {what}; download {spec['url']} and extract it into "
            f"{_root(cfg)} (or set data.root / LRWD_DATA_DIR to where it is)"
        )
    return folder


def _read_batches(
    folder: Path, files: Sequence[str], label_key: bytes
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in files:
        try:
            with open(folder / name, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(d[label_key], dtype=np.int64))
        except (OSError, KeyError, pickle.UnpicklingError, ValueError, EOFError) as exc:
            raise DataError(
                f"data.root: {folder / name} is not a CIFAR batch in torchvision's format ({exc}); "
                "re-extract the archive"
            ) from None
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar(cfg: Any) -> Dataset:
    spec = _source(cfg)
    folder = check_cifar(cfg)
    x, y = _read_batches(folder, spec["train"], spec["label"])
    x_test, y_test = _read_batches(folder, spec["test"], spec["label"])
    x_tr, y_tr, x_val, y_val = _split(x, y, cfg)
    x_tr = torch.as_tensor(x_tr, dtype=torch.float32) / 255.0
    mean = x_tr.mean(dim=(0, 2, 3), keepdim=True)
    std = x_tr.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    norm = lambda a: (torch.as_tensor(a, dtype=torch.float32) / 255.0 - mean) / std  # noqa: E731
    lab = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    return Dataset(
        (x_tr - mean) / std,
        lab(y_tr),
        norm(x_val),
        lab(y_val),
        norm(x_test),
        lab(y_test),
        num_classes=registry.dataset(cfg.name).classes,
        name=cfg.name,
        augment_images=bool(cfg.augment),
    )


def check_data(cfg: Any) -> None:
    """Cheap check, before any study exists, that the configured data can be had."""
    spec = registry.DATASETS.get(cfg.name)
    if spec is not None and spec.check:
        registry.resolve(spec.check)(cfg)


# --------------------------------------------------------------------------------------------
# A user's data: ``data._target_=mypkg.data.load``

_RETURNS = (
    "return a harness.data.Dataset, or a dict with 'train' and 'test' (and optionally 'val' and "
    "'num_classes'), each an (inputs, labels) pair of tensors or a torch Dataset of such pairs"
)


def load_target(cfg: Any) -> Dataset:
    """``data._target_``: the user's loader called with the data group's own keys (those that are
    no field of :class:`harness.config.DataConfig`) plus whichever of the group's fields its
    signature names (``root``, ``val_size``, ``data_seed`` ...), its return value made a
    :class:`Dataset`: see :func:`as_dataset`."""
    from harness.config import user_keys

    target = str(cfg._target_)
    try:
        fn = registry.resolve(target)
    except LookupError as exc:
        raise DataError(
            f"data._target_: {exc}; put its module in the working folder you run from (or install "
            "its package) and spell it as package.module.Name"
        ) from None
    extra = user_keys(cfg, "data")
    own = {k: cfg[k] for k in cfg if k not in extra and k not in ("_target_", "name")}
    given = registry.signature_arguments(fn, own)
    try:
        out = fn(**given, **extra)
    except TypeError as exc:
        raise DataError(
            f"data._target_: {target}(...) rejects its arguments ({exc}); set its arguments as "
            "data.<name>=<value> (new keys: +data.<name>=<value>)"
        ) from None
    return as_dataset(out, cfg, f"data._target_: {target}")


def _empty(where: str) -> str:
    return (
        f"{where} is empty (0 samples); return at least one sample per split (a harness field "
        "the loader's signature names, such as n_train, receives data.<field>: n_train=0 by "
        "default)"
    )


def _tensors(part: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of an (x, y) pair or a torch Dataset of (x, y) samples."""
    from torch.utils.data import Dataset as TorchDataset
    from torch.utils.data import TensorDataset

    if isinstance(part, TensorDataset) and len(part.tensors) == 2:
        x, y = part.tensors
    elif isinstance(part, tuple | list) and len(part) == 2:
        x, y = part
    elif isinstance(part, TorchDataset) and hasattr(part, "__len__"):
        samples = [part[i] for i in range(len(part))]
        if not samples:
            raise DataError(_empty(where))
        if not all(isinstance(s, tuple | list) and len(s) == 2 for s in samples):
            raise DataError(f"{where} has samples that are not (input, label) pairs; {_RETURNS}")
        x = torch.stack([torch.as_tensor(s[0]) for s in samples])
        y = torch.as_tensor([int(s[1]) for s in samples])
    else:
        raise DataError(f"{where} is a {type(part).__name__}; {_RETURNS}")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.ndim >= 1 and x.shape[0] == 0 and y.numel() == 0:
        raise DataError(_empty(where))
    if y.ndim != 1 or x.shape[0] != y.shape[0] or y.is_floating_point():
        raise DataError(
            f"{where}: inputs {tuple(x.shape)} and labels {tuple(y.shape)} {y.dtype} are not N "
            "samples with N integer class ids; return labels of shape [N] (torch.long)"
        )
    return (x if x.is_floating_point() else x.float()), y.long()  # ids as floats, exact


def as_dataset(out: Any, cfg: Any, where: str) -> Dataset:
    """A user loader's return value as a :class:`Dataset`: a Dataset is kept; a mapping (or a
    (train, test) / (train, val, test) tuple) of splits is converted, the validation split carved
    from the end of the training set (``data.val_size``) when there is none, ``data.n_train``
    applied, ``num_classes`` taken from the mapping or counted from the labels."""
    name = str(cfg.get("name") or "data")
    if isinstance(out, Dataset):
        return out
    if isinstance(out, tuple | list) and len(out) in (2, 3) and not torch.is_tensor(out[0]):
        out = dict(zip(("train", "val", "test") if len(out) == 3 else ("train", "test"), out))
    if not isinstance(out, dict) or "train" not in out or "test" not in out:
        raise DataError(f"{where} returned a {type(out).__name__}; {_RETURNS}")
    x_tr, y_tr = _tensors(out["train"], f"{where} 'train'")
    x_te, y_te = _tensors(out["test"], f"{where} 'test'")
    if out.get("val") is not None:
        x_val, y_val = _tensors(out["val"], f"{where} 'val'")
        if int(cfg.n_train) > 0:
            x_tr, y_tr = x_tr[: int(cfg.n_train)], y_tr[: int(cfg.n_train)]
    else:
        x_tr, y_tr, x_val, y_val = _split(x_tr, y_tr, cfg)
    if not (x_tr.shape[1:] == x_val.shape[1:] == x_te.shape[1:]):
        raise DataError(
            f"{where}: the splits' samples differ in shape (train {tuple(x_tr.shape[1:])}, "
            f"val {tuple(x_val.shape[1:])}, test {tuple(x_te.shape[1:])}); give every split the "
            "same sample shape"
        )
    labels = torch.cat([y_tr, y_val, y_te])
    classes = int(out.get("num_classes") or int(labels.max()) + 1)
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise DataError(
            f"{where}: labels span {int(labels.min())}..{int(labels.max())}, outside 0.."
            f"{classes - 1} for num_classes={classes}; return labels in 0..num_classes-1"
        )
    return Dataset(x_tr, y_tr, x_val, y_val, x_te, y_te, num_classes=classes, name=name)


_CACHE: dict[tuple, Dataset] = {}


def load_data(
    cfg: Any, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Dataset:
    """The configured dataset on ``device`` (memoized per process: a worker loads it once)."""
    key = (json.dumps({k: cfg[k] for k in cfg}, sort_keys=True, default=str), str(device), dtype)
    if key not in _CACHE:
        with phase("data"):
            if cfg.get("_target_"):
                data = load_target(cfg)
            elif cfg.name not in registry.DATASETS:
                raise DataError(
                    f"data.name: '{cfg.name}' is not one of {', '.join(registry.DATASETS)}; pass "
                    "data=<one of those> or data._target_=<your loader>"
                )
            else:
                data = registry.resolve(registry.dataset(cfg.name).loader)(cfg)
            if len(_CACHE) > 4:
                _CACHE.clear()
            _CACHE[key] = data.to(device, dtype)
    return _CACHE[key]
