"""Scale invariance and the angular update: the detector, the scale_invariant and names rules,
the model switches on both training paths, and the per-step angles and norms."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from harness.config import ConfigError, compose_config, validate
from harness.instruments import Instruments, equilibrium_start
from harness.models import build_cnn1d, build_mlp
from harness.optim.groups import param_groups, scale_invariant_names
from harness.population import run_population, train_population
from harness.results import RESULT_KEYS, TrialResult
from harness.train import run_trial
from tests.test_population import grid_cells

INSTRUMENT_FIELDS = ("si_angle", "rest_angle", "si_norm", "rest_norm", "eq_eta", "si_tensors")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def batch(n: int = 64, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, 1, 40, generator=torch.Generator().manual_seed(1), dtype=dtype)


def mlp_bn(**switches) -> nn.Sequential:
    torch.manual_seed(0)
    return build_mlp((1, 40), 10, 32, 2, bn=True, **switches)


# --------------------------------------------------------------------------------------------
# The detector


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_detector_finds_the_rows_feeding_batchnorm_not_the_head_nor_the_gains(dtype):
    """Linear -> BatchNorm: the Linear's weight (and its bias, which the norm removes) are
    invariant; the BatchNorm gains and shifts and the classifier head are not."""
    model = mlp_bn().to(dtype)
    assert scale_invariant_names(model, batch(dtype=dtype)) == [
        "1.weight",
        "1.bias",
        "4.weight",
        "4.bias",
    ]


def test_detector_on_batchnorm_without_affine_a_cnn_and_a_plain_mlp():
    x = batch()
    plain = mlp_bn(bn_affine=False)
    assert [n for n, _ in plain.named_parameters()] == [
        "1.weight",
        "1.bias",
        "4.weight",
        "4.bias",
        "7.weight",
        "7.bias",
    ]
    assert scale_invariant_names(plain, x) == ["1.weight", "1.bias", "4.weight", "4.bias"]
    torch.manual_seed(0)
    cnn = build_cnn1d((1, 40), 10, 8, 0, bn=True)
    assert scale_invariant_names(cnn, x) == [
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
        "6.weight",
        "6.bias",
    ]
    torch.manual_seed(0)
    assert scale_invariant_names(build_mlp((1, 40), 10, 32, 2), x) == []


def test_detector_on_layernorm_and_a_frozen_head():
    """LayerNorm normalizes each sample over its features: a bias-free weight feeding it is
    invariant; with a bias, neither alone is (the bias is no common shift, and scaling the
    weight alone changes its ratio to the bias). A frozen tensor is not reported."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(40, 16, bias=False), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 10)
    )
    assert scale_invariant_names(model, batch()) == ["1.weight"]
    model[1].weight.requires_grad_(False)
    assert scale_invariant_names(model, batch()) == []
    torch.manual_seed(0)
    biased = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.LayerNorm(16), nn.Linear(16, 10))
    assert scale_invariant_names(biased, batch()) == []


def test_detector_leaves_model_buffers_mode_and_random_state_unchanged():
    model = mlp_bn()
    model.train(False)
    params = {n: q.detach().clone() for n, q in model.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    state = torch.get_rng_state()
    scale_invariant_names(model, batch())
    assert not model.training
    assert all(torch.equal(q, params[n]) for n, q in model.named_parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert torch.equal(torch.get_rng_state(), state)


def test_detector_sees_through_dropout_and_zero_initialized_tensors():
    """Dropout draws the same mask in every probe; an all-zero head bias is tested at a random
    value (scaling zeros by c changes nothing, yet the bias is not invariant)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(40, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(32, 10),
    )
    nn.init.zeros_(model[5].bias)
    assert scale_invariant_names(model, batch()) == ["1.weight", "1.bias"]


# --------------------------------------------------------------------------------------------
# Param-group rules


def test_names_rule_finds_batchnorm_inside_a_sequential_by_its_type():
    """``"1.weight"`` names no norm, but the module holding it is a ``BatchNorm1d``: the default
    patterns (bias, norm, bn) exempt it; patterns that match neither name nor type do not."""
    model = mlp_bn()
    _, report = param_groups(model, 0.1, rule="names")
    assert report["decay"]["names"] == ["1.weight", "4.weight", "7.weight"]
    assert {"2.weight", "2.bias", "5.weight", "5.bias"} <= set(report["no_decay"]["names"])
    _, report = param_groups(model, 0.1, rule="names", no_decay_names=["*.bias"])
    assert "2.weight" in report["decay"]["names"] and "2.bias" in report["no_decay"]["names"]
    _, report = param_groups(model, 0.1, rule="names", no_decay_names=["batchnorm1d"])
    assert report["no_decay"]["names"] == ["2.weight", "2.bias", "5.weight", "5.bias"]


def test_scale_invariant_rule_decays_exactly_the_invariant_tensors():
    model = mlp_bn()
    groups, report = param_groups(model, 0.1, rule="scale_invariant", sample=batch())
    assert report["rule"] == "scale_invariant"
    assert report["decay"]["names"] == ["1.weight", "1.bias", "4.weight", "4.bias"]
    assert report["no_decay"]["tensors"] == 6
    assert groups[0]["params"][0] is model[1].weight
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    _, known = param_groups(model, 0.1, rule="scale_invariant", invariant=["7.weight"])
    assert known["decay"]["names"] == ["7.weight"]
    with pytest.raises(ValueError, match="rule='scale_invariant' needs sample="):
        param_groups(model, 0.1, rule="scale_invariant")


# --------------------------------------------------------------------------------------------
# The angle


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between two float64 vectors, by atan2 of the cross and dot parts."""
    a, b = a.double().flatten(), b.double().flatten()
    dot = float(a @ b)
    cross = math.sqrt(max(float(a @ a) * float(b @ b) - dot * dot, 0.0))
    return math.atan2(cross, dot)


def test_angle_of_a_two_step_update_equals_the_hand_computed_one():
    torch.manual_seed(0)
    w1 = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    w2 = nn.Parameter(torch.randn(5, dtype=torch.float64))
    model = nn.Module()
    model.w1, model.w2 = w1, w2
    inst = Instruments.of_module(model, ["w1"], total=2)
    steps = [
        (torch.randn(4, 3, dtype=torch.float64) * 0.1, torch.randn(5, dtype=torch.float64) * 0.2),
        (torch.randn(4, 3, dtype=torch.float64) * 0.05 - 0.3 * w1.detach(), torch.ones(5)),
    ]
    angles = {"w1": [], "rest": []}
    for i, (d1, d2) in enumerate(steps):
        before = torch.cat([w1.detach().flatten(), w2.detach().flatten()])
        a1 = w1.detach().clone()
        inst.before()
        with torch.no_grad():
            w1 += d1
            w2 += d2
        inst.after(i, eta=0.5 + i)
        angles["w1"].append(_angle(a1, w1.detach()))
        angles["rest"].append(_angle(before[12:], w2.detach()))
    metrics = inst.report()[0]
    assert metrics["angle/si"] == pytest.approx(sum(angles["w1"]) / 2, rel=1e-12)
    assert metrics["angle/w1"] == pytest.approx(sum(angles["w1"]) / 2, rel=1e-12)
    assert metrics["angle/rest"] == pytest.approx(sum(angles["rest"]) / 2, rel=1e-12)
    assert "angle/w2" not in metrics  # per layer: tensors of two or more dimensions
    assert metrics["norm/si"] == pytest.approx(float(w1.detach().norm()), rel=1e-14)
    assert metrics["norm/rest"] == pytest.approx(float(w2.detach().norm()), rel=1e-14)
    # the equilibrium window of 2 steps is the last one
    summary = inst.summary()[0]
    assert equilibrium_start(2) == 1
    assert summary["si_angle"] == pytest.approx(angles["w1"][1], rel=1e-12)
    assert summary["rest_angle"] == pytest.approx(angles["rest"][1], rel=1e-12)
    assert summary["eq_eta"] == 1.5 and summary["si_tensors"] == 1
    assert inst.report()[0]["angle/si"] != inst.report()[0]["angle/si"]  # NaN: no step since


def test_group_angle_is_the_angle_of_the_concatenated_vector():
    torch.manual_seed(1)
    ws = [torch.randn(3, 2, 6, dtype=torch.float64) for _ in range(3)]
    names = ["a", "b", "c"]
    inst = Instruments(names, ws, ["a", "c"], total=8)
    before = [w.clone() for w in ws]
    inst.before()
    for w in ws:
        w.add_(0.3 * torch.randn_like(w))
    inst.after(0, 1.0)
    metrics = inst.report()
    for m in range(3):
        si = _angle(torch.cat([before[0][m], before[2][m]]), torch.cat([ws[0][m], ws[2][m]]))
        assert metrics[m]["angle/si"] == pytest.approx(si, rel=1e-12)
        assert metrics[m]["angle/rest"] == pytest.approx(_angle(before[1][m], ws[1][m]), rel=1e-12)
        assert metrics[m]["angle/b"] == pytest.approx(_angle(before[1][m], ws[1][m]), rel=1e-12)


def test_tiny_angles_stay_accurate_in_float32():
    """A rotation by 1e-6 rad of a float32 vector: a cosine would round to 1 (angle 0)."""
    n = 1000
    theta = 1e-6
    u = torch.zeros(1, n)
    u[0, 0] = 1.0
    w = u.clone() * 3.0
    inst = Instruments(["w"], [w], ["w"], total=4)
    inst.before()
    w[0, 1] = 3.0 * theta  # cos(theta) rounds to 1 in float32
    inst.after(0, 1.0)
    # two nonzero entries: |u - v| is a handful of roundings from 1e-6 (sums of zeros are exact
    # in any order, so on any CPU), i.e. ~1e-7 relative; 1e-3 only asks for the method that
    # keeps it (a cosine would give 0)
    assert inst.report()[0]["angle/si"] == pytest.approx(theta, rel=1e-3)


def test_a_tensor_starting_at_zero_takes_no_direction_into_its_group():
    """A BatchNorm shift starts at 0: its own angle is undefined, the group's stays finite and
    equals the angle of the concatenated vector."""
    w = torch.randn(1, 6, 3, dtype=torch.float64)
    z = torch.zeros(1, 5, dtype=torch.float64)
    inst = Instruments(["w", "z"], [w, z], [], total=4)
    before = torch.cat([w[0].flatten(), z[0]])
    inst.before()
    w.add_(0.1 * torch.randn_like(w))
    z.add_(0.01)
    inst.after(0, 1.0)
    angle = inst.report()[0]["angle/rest"]
    assert angle == pytest.approx(_angle(before, torch.cat([w[0].flatten(), z[0]])), rel=1e-12)


def test_empty_group_is_nan():
    w = torch.randn(1, 4, 4, dtype=torch.float64)
    inst = Instruments(["w"], [w], [], total=4)
    for i in range(4):
        inst.before()
        w.mul_(1.1)
        inst.after(i, 1.0)
    m = inst.report()[0]
    assert math.isnan(m["angle/si"]) and math.isnan(m["norm/si"])
    assert m["angle/rest"] == pytest.approx(0.0, abs=1e-7)  # a pure scaling turns nothing
    s = inst.summary()[0]
    assert math.isnan(s["si_angle"]) and math.isnan(s["si_norm"]) and s["si_tensors"] == 0


# --------------------------------------------------------------------------------------------
# Trials and populations


# every setting the tests rely on, whatever the default experiment sets
PINNED = {
    "optimizer": "sgd",
    "optimizer.decay": "decoupled",
    "optimizer.param_groups": "all",
    "schedule": "cosine",
    "train.epochs": "2",
    "train.max_steps": "0",
    "train.eval_every": "3",
    "data.num_samples": "1000",
    "data.train_fraction": "0.8",
    "data.n_train": "0",
    "data.val_size": "200",
    "data.batch_size": "100",
    "model.width": "16",
    "model.depth": "2",
    "model.bn_affine": "true",
    "model.bn_eps": "1e-5",
    "model.frozen_head": "false",
    "model.head_scale": "1.0",
    "tracking": "disabled",
    "train.threads": "1",
}


def cells(model: str, grid, extra=(), dtype="float64"):
    given = dict(e.split("=", 1) for e in extra)
    pinned = [f"{k}={v}" for k, v in PINNED.items() if k not in given]
    base = compose_config([f"model={model}", f"train.dtype={dtype}", *pinned, *extra])
    return grid_cells(base, grid)


GRID = [(1e-2, 1e-4), (1e-1, 1e-2)]


def recorder(history: list):
    return lambda step, metrics: history.append((step, dict(metrics)))


def assert_instruments_equal(cfgs, rtol=1e-9):
    """``run_population`` against ``run_trial`` per cell: every reported instrument metric and
    every result field (float64)."""
    histories: list[list] = [[] for _ in cfgs]
    pops = run_population(cfgs, [recorder(h) for h in histories])
    for cfg, pop, history in zip(cfgs, pops, histories):
        seq_history: list = []
        seq = run_trial(cfg, report=recorder(seq_history))
        assert pop.steps == seq.steps and not seq.diverged
        for key in ("train_loss", "weight_norm", *INSTRUMENT_FIELDS):
            assert getattr(pop, key) == pytest.approx(getattr(seq, key), rel=rtol, nan_ok=True), key
        assert [s for s, _ in history] == [s for s, _ in seq_history]
        for (step, a), (_, b) in zip(history, seq_history):
            keys = [k for k in b if k.startswith(("angle/", "norm/"))]
            assert keys and keys == [k for k in a if k.startswith(("angle/", "norm/"))]
            for k in keys:
                assert a[k] == pytest.approx(b[k], rel=rtol, nan_ok=True), (step, k)
    return pops


@pytest.mark.parametrize(
    "model,extra",
    [
        ("mlp_bn", ["optimizer.param_groups=scale_invariant"]),
        ("cnn_bn", ["model.bn_affine=false", "model.frozen_head=true", "model.head_scale=0.5"]),
        ("mlp_bn", ["model.bn_affine=false", "model.bn_eps=1e-3", "optimizer=adam"]),
        ("mlp", ["model.frozen_head=true"]),
    ],
)
def test_population_members_equal_sequential_trials_with_switches_and_instruments(model, extra):
    pops = assert_instruments_equal(cells(model, GRID, extra))
    bn = model.endswith("_bn")
    assert all((p.si_tensors > 0) == bn for p in pops)
    assert all(0 < p.eq_eta < 1 for p in pops)  # cosine: the last quarter's multiplier
    assert all(p.si_angle > 0 for p in pops if bn)
    assert all(p.si_norm > 0 for p in pops if bn)
    # without BatchNorm gains and with a frozen head, every trained tensor is scale-invariant
    everything_invariant = "model.bn_affine=false" in extra and "model.frozen_head=true" in extra
    assert all(math.isnan(p.rest_angle) == everything_invariant for p in pops)
    assert all(p.rest_angle > 0 and p.rest_norm > 0 for p in pops if not everything_invariant)


@pytest.mark.slow
def test_resnet_population_with_switches_equals_sequential_trials(tmp_path):
    """The CIFAR ResNet without BatchNorm gains, with a frozen head, on fake CIFAR: every
    trained tensor is a convolution feeding a BatchNorm, so all are invariant."""
    from tests.test_workloads import _fake_cifar

    _fake_cifar(tmp_path, n=24)
    base = compose_config(
        [
            "data=cifar10",
            "model=resnet_tiny",
            "model.width=4",
            "model.bn_affine=false",
            "model.frozen_head=true",
            f"data.root={tmp_path}",
            "data.val_size=20",
            "data.batch_size=25",
            "train.dtype=float64",
            "train.epochs=2",
            "train.eval_every=1",
            "train.threads=1",
            "tracking=disabled",
            "optimizer=sgd",
            "optimizer.decay=independent",
            "optimizer.param_groups=scale_invariant",
        ]
    )
    cfgs = []
    for lr, wd in GRID:
        c = copy.deepcopy(base)
        c.optimizer.lr, c.optimizer.weight_decay = lr, wd
        cfgs.append(c)
    pops = assert_instruments_equal(cfgs)
    convs = 1 + 3 * 2 + 2  # stem, 3 blocks x 2 convs, 2 projection shortcuts
    assert all(p.si_tensors == convs and math.isnan(p.rest_angle) for p in pops)


def test_frozen_head_is_not_trained_on_either_path():
    cfgs = cells("cnn_bn", GRID, ["model.frozen_head=true", "model.head_scale=0.1"])
    states = train_population(cfgs, [None, None], return_states=True)
    torch.manual_seed(0)  # the trial's seed, as harness.train.set_up
    init = build_cnn1d((1, 40), 10, 16, 0, bn=True, frozen_head=True, head_scale=0.1).double()
    torch.manual_seed(0)
    unscaled = build_cnn1d((1, 40), 10, 16, 0, bn=True).double()
    assert torch.allclose(init[10].weight, 0.1 * unscaled[10].weight, rtol=1e-6)
    assert not init[10].weight.requires_grad and init[0].weight.requires_grad
    head = "10"  # conv, bn, relu x 3, flatten, linear
    for _, state in states:
        assert torch.equal(state[f"{head}.weight"], init[10].weight.detach())
        assert torch.equal(state[f"{head}.bias"], init[10].bias.detach())
        assert not torch.equal(state["0.weight"], init[0].weight.detach())


def test_instruments_off_measure_nothing_on_change_nothing_and_divergence_is_nan():
    (cfg,) = cells("mlp_bn", [(1e-2, 1e-4)], ["train.instruments=false"])
    history: list = []
    result = run_trial(cfg, report=recorder(history))
    assert not any(k.startswith(("angle/", "norm/")) for _, m in history for k in m)
    assert all(math.isnan(getattr(result, k)) for k in INSTRUMENT_FIELDS)
    cfg.train.instruments = True
    measured = run_trial(cfg)  # measuring changes nothing in the training
    for key in ("test_error", "val_error", "train_loss", "weight_norm", "steps"):
        assert getattr(measured, key) == getattr(result, key), key
    (bad,) = cells("mlp_bn", [(1e150, 0.0)], ["optimizer.decay=l2"])
    result = run_trial(bad)
    assert result.diverged
    assert all(math.isnan(getattr(result, k)) for k in INSTRUMENT_FIELDS if k != "si_tensors")
    assert result.si_tensors == 4


def test_instrument_fields_are_appended_to_the_result_columns():
    start = RESULT_KEYS.index("steps_to_target") + 1  # right after the trial's own fields
    assert RESULT_KEYS[start : start + len(INSTRUMENT_FIELDS)] == INSTRUMENT_FIELDS
    r = TrialResult.of_divergence(3, 1.0)
    assert all(math.isnan(getattr(r, k)) for k in INSTRUMENT_FIELDS)


@pytest.mark.parametrize(
    "override,field",
    [("model.bn_eps=0", "model.bn_eps"), ("model.head_scale=-1", "model.head_scale")],
)
def test_bad_model_switches_are_refused_in_one_line(override, field):
    cfg = compose_config(["model=mlp_bn", override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_bench_instruments_tiny_run(capsys):
    from harness.bench.__main__ import main

    argv = ["instruments", "--models", "mlp_bn", "--steps", "4", "--repeats", "1"]
    assert main([*argv, "--population", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["model", "path", "ms/step"]
    rows = [line.split() for line in lines[1:]]
    assert [r[:2] for r in rows] == [["mlp_bn", "sequential"], ["mlp_bn", "P=2"]]
    assert all(float(r[5]) > 0 and r[6].endswith("%") for r in rows)  # alone ms, share
