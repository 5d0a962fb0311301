"""Optimizers whose weight-decay form is an explicit choice (see docs/optim.md).

``decay="l2"`` (coupled, in the gradient), ``"decoupled"`` (``w *= 1 - lr_t*wd``),
``"independent"`` (``w *= 1 - eta_t*wd``); ``"loss"`` is :func:`l2_penalty` added to the loss.
"""

from harness.optim.functional import DECAY_MODES, adam_step, apply_decay, sgd_step
from harness.optim.groups import normalized_weight_decay, param_groups
from harness.optim.optimizers import SGD, SGDW, Adam, AdamW
from harness.optim.penalty import l2_penalty
from harness.optim.wd_schedule import WeightDecayScheduler

__all__ = [
    "DECAY_MODES",
    "SGD",
    "SGDW",
    "Adam",
    "AdamW",
    "WeightDecayScheduler",
    "adam_step",
    "apply_decay",
    "l2_penalty",
    "normalized_weight_decay",
    "param_groups",
    "sgd_step",
]
