"""Population training: each member equals its sequential trial; divergence stays contained."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.config import compose_config
from harness.population import run_population, supports, train_population
from harness.train import run_trial

RTOL = 1e-10  # float64; op order differs from torch.optim by rounding only (BatchNorm+Adam: ~2e-12)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def cells(model: str, opt: str, decay: str, grid, extra=()):
    base = compose_config(
        [
            f"model={model}",
            f"optimizer={opt}",
            f"optimizer.decay={decay}",
            "train.dtype=float64",
            "train.epochs=2",
            "data.num_samples=1000",
            "data.val_size=200",
            "model.width=16",
            "tracking=disabled",
            "optimizer.param_groups=timm",
            *extra,
        ]
    )
    out = []
    for lr, wd in grid:
        c = copy.deepcopy(base)
        c.optimizer.lr, c.optimizer.weight_decay = lr, wd
        out.append(c)
    return out


def assert_same(pop, seq):
    assert pop.diverged == seq.diverged
    assert pop.steps == seq.steps
    for key in ("test_error", "val_error", "final_val_error"):
        assert getattr(pop, key) == getattr(seq, key), key
    for key in ("train_loss", "weight_norm"):
        assert getattr(pop, key) == pytest.approx(getattr(seq, key), rel=RTOL, abs=0), key


@pytest.mark.parametrize("model", ["mlp", "cnn", "mlp_bn", "cnn_bn"])
@pytest.mark.parametrize(
    "opt,decay",
    [
        ("adam", "l2"),
        ("adam", "independent"),
        ("adam", "loss"),
        ("sgd", "decoupled"),
        ("sgd", "independent"),
    ],
)
def test_members_equal_sequential_trials(model, opt, decay):
    grid = (
        [(1e-3, 1e-4), (3e-3, 1e-2), (1e-2, 1e-1)]
        if opt == "adam"
        else [(1e-2, 1e-4), (1e-1, 1e-2)]
    )
    cfgs = cells(model, opt, decay, grid)
    for cfg, pop in zip(cfgs, train_population(cfgs, [None] * len(cfgs))):
        assert_same(pop, run_trial(cfg))


def test_diverging_member_is_frozen_and_others_unaffected():
    cfgs = cells("mlp", "sgd", "l2", [(1e-2, 1e-4), (1e150, 0.0), (3e-2, 1e-3)])
    results = train_population(cfgs, [None] * 3)
    assert results[1].diverged and results[1].test_error == 1.0
    for i in (0, 2):
        assert_same(results[i], run_trial(cfgs[i]))


def test_reports_and_pruning_per_member():
    cfgs = cells("mlp", "adam", "independent", [(1e-3, 1e-4), (3e-3, 1e-3)])
    seen = {0: [], 1: []}

    class Pruned(Exception):
        pass

    def hook(m):
        def report(step, metrics):
            seen[m].append((step, metrics["val_error"]))
            if m == 1:
                raise Pruned()

        return report

    results = run_population(cfgs, [hook(0), hook(1)])
    assert isinstance(results[1], Pruned) and len(seen[1]) == 1
    assert len(seen[0]) == 2 and not isinstance(results[0], Exception)


def test_unsupported_configs_fall_back_to_sequential():
    cfgs = cells(
        "mlp", "adam", "l2", [(1e-3, 1e-4), (3e-3, 1e-3)], extra=["optimizer.relative=true"]
    )
    assert not supports(cfgs[0])
    for cfg, r in zip(cfgs, run_population(cfgs, [None, None])):
        assert_same(r, run_trial(cfg))


def test_resnet_members_equal_sequential_trials_on_fake_cifar(tmp_path):
    """The CIFAR ResNet population (grouped 2-D convs, BatchNorm over P*C channels, projection
    shortcuts, augmentation shared by the members) equals its sequential trials."""
    from tests.test_workloads import _fake_cifar

    _fake_cifar(tmp_path, n=24)
    base = compose_config(
        [
            "data=cifar10",
            "model=resnet_tiny",
            "model.width=4",
            f"data.root={tmp_path}",
            "data.val_size=20",
            "data.batch_size=25",
            "train.dtype=float64",
            "train.epochs=2",
            "tracking=disabled",
            "optimizer=sgd",
            "optimizer.decay=independent",
            "optimizer.param_groups=timm",
        ]
    )
    assert supports(base)
    cfgs = []
    for lr, wd in [(1e-2, 1e-4), (1e-1, 1e-2), (3e-2, 0.0)]:
        c = copy.deepcopy(base)
        c.optimizer.lr, c.optimizer.weight_decay = lr, wd
        cfgs.append(c)
    for cfg, pop in zip(cfgs, train_population(cfgs, [None] * len(cfgs))):
        assert_same(pop, run_trial(cfg))


def test_normalized_weight_decay_members_equal_sequential_trials():
    cfgs = cells(
        "mlp", "adam", "independent", [(1e-3, 0.05), (3e-3, 0.5)], ["optimizer.normalized=true"]
    )
    assert supports(cfgs[0])
    for cfg, pop in zip(cfgs, train_population(cfgs, [None] * len(cfgs))):
        assert_same(pop, run_trial(cfg))
    plain = cells("mlp", "adam", "independent", [(3e-3, 0.5)])
    assert train_population(plain, [None])[0].weight_norm != pytest.approx(
        train_population(cfgs[1:], [None])[0].weight_norm, rel=1e-6
    )  # normalization really changed the decay


def test_compiled_step_equals_sequential_trials():
    """train.compile=true (torch.compile of the loss and the update; eager if it fails)."""
    cfgs = cells(
        "cnn_bn", "adam", "independent", [(1e-3, 1e-4), (3e-3, 1e-2)], extra=["train.compile=true"]
    )
    for cfg, pop in zip(cfgs, train_population(cfgs, [None] * len(cfgs))):
        assert_same(pop, run_trial(cfg))
