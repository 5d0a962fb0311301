"""Modular addition: ``(a + b) mod p`` for every pair ``a, b`` in ``0..p-1`` (``data=modular``).

Each sample is the token sequence ``[a, b, =]``, with ``=`` the token id ``p`` (a vocabulary of
``p + 1`` tokens), and its label is ``(a + b) mod p`` (``p`` classes). All ``p^2`` pairs are
split once, by a permutation drawn from ``data.data_seed`` (the task, not the trial seed):

- the first ``round(train_fraction * p^2)`` pairs are the training set (``data.n_train > 0``
  keeps only its first ``n_train``);
- the next ``data.val_size`` pairs are the validation split;
- all the other pairs are the test set.

Every pair lies in exactly one split, and the training share is exactly ``train_fraction``
(the validation pairs come out of the held-out ones, so that the fraction seen in training, the
quantity grokking depends on, is the one configured). Nothing is downloaded or cached: the
whole task is a few thousand integers.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.data import DataError, Dataset


def pairs(p: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``p^2`` samples in order ``(a, b)`` = ``(0, 0), (0, 1), ...``: token ids ``[p^2, 3]``
    (``a``, ``b`` and the ``=`` token ``p``) and labels ``(a + b) mod p``."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    x = torch.stack([a, b, torch.full_like(a, p)], dim=1)
    return x, (a + b) % p


def split_sizes(cfg: Any) -> tuple[int, int, int]:
    """(train, validation, test) pair counts for the ``data`` config, or one DataError."""
    p = int(cfg.modulus)
    if p < 2:
        raise DataError(f"data.modulus: {p} must be >= 2; e.g. data.modulus=97")
    total = p * p
    frac = float(cfg.train_fraction)
    n_train = round(frac * total)
    if not 0.0 < frac < 1.0 or n_train < 1:
        raise DataError(
            f"data.train_fraction: {frac} leaves no training pairs of the {total}; "
            "pass a fraction in (0, 1), e.g. data.train_fraction=0.4"
        )
    val = int(cfg.val_size)
    held_out = total - n_train
    if val < 1 or val >= held_out:
        raise DataError(
            f"data.val_size: {val} must be between 1 and {held_out - 1} (the held-out pairs "
            f"of p={p} at train_fraction={frac} less one test pair); e.g. data.val_size=200"
        )
    if int(cfg.n_train) > 0:
        n_train = min(n_train, int(cfg.n_train))
    return n_train, val, held_out - val


def load_modular(cfg: Any) -> Dataset:
    """The split task for the ``data`` config (``modulus``, ``train_fraction``, ``val_size``,
    ``n_train``, ``data_seed``); token ids are stored as floats like every other input (the
    harness casts inputs to the training dtype) and are exact."""
    n_train, val, _ = split_sizes(cfg)
    p = int(cfg.modulus)
    x, y = pairs(p)
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(int(cfg.data_seed)))
    full_train = round(float(cfg.train_fraction) * p * p)
    tr, va, te = order[:n_train], order[full_train : full_train + val], order[full_train + val :]
    f = lambda i: x[i].to(torch.float32)  # noqa: E731
    return Dataset(f(tr), y[tr], f(va), y[va], f(te), y[te], num_classes=p, name="modular")
