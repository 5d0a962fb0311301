"""Each trial records how many elements decay and how many of those are scale-invariant
(``decayed_numel``, ``decayed_si_numel``), for single trials and populations alike."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from harness.config import compose_config
from harness.loop import set_up
from harness.population import train_population
from harness.results import RESULTS_COLUMNS, result_attrs
from harness.train import run_trial

BASE = [
    "model=mlp_bn",
    "model.width=16",
    "model.depth=2",
    "model.bn_affine=true",
    "model.frozen_head=false",
    "optimizer=adam",
    "optimizer.decay=independent",
    "optimizer.lr=1e-2",
    "optimizer.weight_decay=1e-3",
    "train.max_steps=4",
    "train.eval_every=2",
    "train.threads=1",
    "data.num_samples=1000",
    "data.train_fraction=0.8",
    "data.n_train=0",
    "data.val_size=200",
    "data.batch_size=100",
    "tracking=disabled",
]


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def config(*extra: str):
    return compose_config([*BASE, *extra])


def expected(cfg) -> tuple[int, int, int]:
    """(all trained elements, the elements of the hidden Linear layers that feed a BatchNorm,
    the head's elements), read off the built model's layer order: a Linear's weight and bias
    feeding a BatchNorm are scale-invariant, nothing else in this MLP is."""
    model = set_up(cfg).model
    mods = list(model.children())
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    si = 0
    for mod, nxt in zip(mods, mods[1:]):
        if isinstance(mod, nn.Linear) and isinstance(nxt, nn.BatchNorm1d):
            si += sum(p.numel() for p in mod.parameters())
    head = [m for m in mods if isinstance(m, nn.Linear)][-1]
    return total, si, sum(p.numel() for p in head.parameters())


def test_scale_invariant_rule_decays_only_invariant_elements():
    cfg = config("optimizer.param_groups=scale_invariant")
    total, si, _ = expected(cfg)
    result = run_trial(cfg)
    assert 0 < si < total
    assert result.decayed_numel == si
    assert result.decayed_si_numel == si


def test_all_rule_decays_every_element_and_counts_the_invariant_share():
    cfg = config("optimizer.param_groups=all")
    total, si, _ = expected(cfg)
    result = run_trial(cfg)
    assert result.decayed_numel == total
    assert result.decayed_si_numel == si
    assert result.decayed_si_numel / result.decayed_numel < 1


def test_population_members_record_the_same_counts_as_a_single_trial():
    base = config("optimizer.param_groups=scale_invariant_head")
    total, si, head = expected(base)
    cfgs = []
    for lr, wd in [(1e-2, 1e-4), (1e-3, 1e-2)]:
        c = copy.deepcopy(base)
        c.optimizer.lr, c.optimizer.weight_decay = lr, wd
        cfgs.append(c)
    pops = train_population(cfgs, [None, None])
    single = run_trial(cfgs[0])
    for r in [*pops, single]:
        assert r.decayed_numel == si + head
        assert r.decayed_si_numel == si
    assert si + head < total  # the BatchNorm gains and shifts do not decay


def test_detector_off_leaves_the_invariant_count_unknown_but_counts_what_decays():
    cfg = config("optimizer.param_groups=all", "train.instruments=false")
    total, _, _ = expected(cfg)
    result = run_trial(cfg)
    assert result.decayed_numel == total
    assert math.isnan(result.decayed_si_numel)
    # an invariant rule runs the detector anyway: the count is known
    cfg = config("optimizer.param_groups=scale_invariant", "train.instruments=false")
    _, si, _ = expected(cfg)
    result = run_trial(cfg)
    assert result.decayed_numel == result.decayed_si_numel == si


def test_counts_are_results_columns_and_stored_result_keys():
    assert {"decayed_numel", "decayed_si_numel"} <= set(RESULTS_COLUMNS)
    result = run_trial(config("optimizer.param_groups=all", "train.instruments=false"))
    attrs = result_attrs(result.to_dict())
    assert attrs["decayed_numel"] == result.decayed_numel
    assert attrs["decayed_si_numel"] is None  # NaN is stored as None (JSON has no NaN)
