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
from harness.config import ConfigError


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


_CACHE: dict[tuple, Dataset] = {}


def load_data(
    cfg: Any, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> Dataset:
    """The configured dataset on ``device`` (memoized per process: a worker loads it once)."""
    key = (json.dumps({k: cfg[k] for k in cfg}, sort_keys=True, default=str), str(device), dtype)
    if key not in _CACHE:
        if cfg.name not in registry.DATASETS:
            raise DataError(f"data.name: '{cfg.name}' is not one of {', '.join(registry.DATASETS)}")
        data = registry.resolve(registry.dataset(cfg.name).loader)(cfg)
        if len(_CACHE) > 4:
            _CACHE.clear()
        _CACHE[key] = data.to(device, dtype)
    return _CACHE[key]
