"""The decoupled / independent identity: with one schedule, weight-decoupled decay with
``lr_t * wd`` (torch's ``decoupled``) at ``(a, lam)`` is the same algorithm as the ``eta_t * wd``
form (``independent``, ``eta_t = lr_t / lr_0``) at ``(a, a * lam)``. Where both studies ran such
a pair of cells, their per-seed differences measure the noise floor that float rounding alone
gives, and the slopes must differ by exactly +1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from harness import registry


def identity_pairs() -> list[tuple[str, str]]:
    """``[(lr_form, eta_form)]``: the weight-decay forms (registry) that shrink by ``lr_t * wd``
    and by ``eta_t * wd``; the first at ``(a, lam)`` equals the second at ``(a, a * lam)``."""
    forms = registry.decay_forms()
    lr_forms = [n for n, f in forms.items() if f.decoupled and f.shrink == "lr" and not f.penalty]
    eta_forms = [n for n, f in forms.items() if f.decoupled and f.shrink == "eta"]
    return [(a, b) for a in lr_forms for b in eta_forms]


IDENTITY_COLUMNS = [
    "optimizer", "lr", "weight_decay_lr_form", "weight_decay_eta_form", "seed",
    "error_lr_form", "error_eta_form", "difference",
]  # fmt: skip


def identity_table(frame: pd.DataFrame, metric: str = "test_error") -> pd.DataFrame:
    """Every equivalent (lr form, eta form) cell x seed of one experiment's tidy frame:
    ``difference`` = eta form minus lr form (the two are the same algorithm)."""
    rows = []
    for opt in dict.fromkeys(frame["optimizer"]):
        for lr_form, eta_form in identity_pairs():
            a = frame[(frame["variant"] == f"{opt}/{lr_form}") & frame[metric].notna()]
            b = frame[(frame["variant"] == f"{opt}/{eta_form}") & frame[metric].notna()]
            if a.empty or b.empty:
                continue
            a = a.groupby(["lr", "weight_decay", "seed"], as_index=False)[metric].mean()
            b = b.groupby(["lr", "weight_decay", "seed"], as_index=False)[metric].mean()
            for r in a.itertuples(index=False):
                hit = b[np.isclose(b["lr"], r.lr, rtol=1e-6, atol=0)
                        & np.isclose(b["weight_decay"], r.lr * r.weight_decay, rtol=1e-4, atol=0)
                        & (b["seed"] == r.seed)]  # fmt: skip
                for h in hit.itertuples(index=False):
                    ea, eb = getattr(r, metric), getattr(h, metric)
                    rows.append(
                        [opt, r.lr, r.weight_decay, h.weight_decay, r.seed, ea, eb, eb - ea]
                    )
    return pd.DataFrame(rows, columns=IDENTITY_COLUMNS)
