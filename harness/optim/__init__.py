"""Optimizers whose weight-decay form is an explicit choice (formulas: docs/optim.md).

``decay="l2"`` (coupled: ``g += wd*w``), ``"decoupled"`` (``w *= 1 - lr_t*wd``, torch AdamW),
``"independent"`` (``w *= 1 - eta_t*wd``, Loshchilov & Hutter); ``"loss"`` is not an optimizer
mode: add :func:`l2_penalty` (``wd/2*||w||^2``) to the loss.
"""

from harness.optim.functional import (
    DECAY_MODES,
    RELATIVE_EPS,
    FlatList,
    adam_step,
    apply_decay,
    decay_factor,
    relative_scale,
    sgd_step,
)
from harness.optim.groups import normalized_weight_decay, param_groups
from harness.optim.optimizers import SGD, SGDW, Adam, AdamW
from harness.optim.penalty import l2_penalty
from harness.optim.wd_schedule import WeightDecayScheduler

__all__ = [
    "DECAY_MODES",
    "RELATIVE_EPS",
    "SGD",
    "SGDW",
    "Adam",
    "AdamW",
    "FlatList",
    "WeightDecayScheduler",
    "adam_step",
    "apply_decay",
    "decay_factor",
    "l2_penalty",
    "normalized_weight_decay",
    "param_groups",
    "relative_scale",
    "sgd_step",
]
