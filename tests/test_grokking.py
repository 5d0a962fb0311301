"""The grokking workload: modular addition data, the transformer, steps_to_target, the presets."""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf
from torch.func import functional_call, stack_module_state, vmap

from harness import registry
from harness.config import ConfigError, compose_config, validate
from harness.data import DataError, load_data
from harness.loop import first_at_target
from harness.models import build_model
from harness.optim import param_groups
from harness.sweep import plan
from harness.train import build_optimizer, error_rate, run_trial
from harness.workloads.modular import load_modular, pairs
from harness.workloads.transformer import build_transformer


def _data_cfg(**kw):
    base = {
        "name": "modular",
        "modulus": 11,
        "train_fraction": 0.4,
        "val_size": 10,
        "n_train": 0,
        "data_seed": 42,
    }
    return OmegaConf.create({**base, **kw})


def _rows(x: torch.Tensor) -> list[tuple[int, ...]]:
    return [tuple(int(v) for v in r) for r in x]


# --------------------------------------------------------------------------------------------
# Data


@pytest.mark.parametrize("p, frac", [(11, 0.4), (7, 0.3), (13, 0.5)])
def test_every_pair_is_in_exactly_one_split_with_its_sum(p, frac):
    d = load_modular(_data_cfg(modulus=p, train_fraction=frac, val_size=5))
    splits = [(d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)]
    seen = [r for x, _ in splits for r in _rows(x)]
    assert len(seen) == p * p and len(set(seen)) == p * p  # every pair exactly once
    assert {(a, b) for a, b, _ in seen} == {(a, b) for a in range(p) for b in range(p)}
    for x, y in splits:
        a, b, eq = x.long().unbind(1)
        assert torch.equal(y, (a + b) % p)
        assert bool((eq == p).all())  # the "=" token
        assert y.dtype == torch.long and x.dtype == torch.float32
    assert d.n_train == round(frac * p * p) and d.x_val.shape[0] == 5
    assert d.num_classes == p and d.input_shape == (3,)


def test_the_split_is_fixed_by_the_data_seed():
    a, b = load_modular(_data_cfg()), load_modular(_data_cfg())
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    c = load_modular(_data_cfg(data_seed=43))
    assert not torch.equal(a.x_train, c.x_train)
    assert sorted(_rows(a.x_train) + _rows(a.x_val) + _rows(a.x_test)) == sorted(
        _rows(c.x_train) + _rows(c.x_val) + _rows(c.x_test)
    )


def test_pairs_enumerates_the_table():
    x, y = pairs(5)
    assert x.shape == (25, 3) and _rows(x)[7] == (1, 2, 5) and int(y[7]) == 3
    assert int(y[24]) == (4 + 4) % 5


def test_n_train_keeps_a_prefix_of_the_training_pairs():
    full, cut = load_modular(_data_cfg()), load_modular(_data_cfg(n_train=20))
    assert torch.equal(cut.x_train, full.x_train[:20])
    assert torch.equal(cut.x_test, full.x_test) and torch.equal(cut.x_val, full.x_val)


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"val_size": 1000}, "data.val_size"),
        ({"val_size": 0}, "data.val_size"),
        ({"train_fraction": 1.0}, "data.train_fraction"),
        ({"train_fraction": 0.0}, "data.train_fraction"),
        ({"modulus": 1}, "data.modulus"),
    ],
)
def test_bad_data_settings_name_the_field(kw, field):
    with pytest.raises(DataError, match=f"^{field}: "):
        load_modular(_data_cfg(**kw))


def test_the_harness_loads_it_through_the_registry():
    cfg = compose_config(["experiment=grokking"])
    validate(cfg)
    d = load_data(cfg.data)
    p = int(cfg.data.modulus)
    assert d.name == "modular" and d.num_classes == p
    assert d.n_train + d.x_val.shape[0] + d.x_test.shape[0] == p * p
    assert registry.dataset("modular").input == registry.TOKENS


def test_bad_input_exits_with_one_line(capsys):
    from harness.train import main

    assert main(["experiment=grokking", "data.val_size=100000", "tracking=disabled"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.val_size: ") and "\n" not in err


# --------------------------------------------------------------------------------------------
# Model


@pytest.mark.parametrize("depth, heads", [(1, 4), (2, 2)])
def test_transformer_maps_token_ids_to_class_logits(depth, heads):
    cfg = OmegaConf.create({"name": "transformer", "width": 16, "depth": depth, "heads": heads})
    model = build_model(cfg, (3,), 11)
    x = torch.randint(0, 12, (7, 3)).float()
    assert model(x).shape == (7, 11)
    assert model.embed.weight.shape == (12, 16) and model.pos.shape == (3, 16)
    assert len(model.blocks) == depth and model.blocks[0].attn.heads == heads


def test_last_position_shortcut_is_the_full_computation():
    torch.manual_seed(0)
    model = build_transformer((4,), 9, 16, 2, 4)
    x = torch.randint(0, 10, (5, 4)).float()
    h = model.embed(x.long()) + model.pos
    for block in model.blocks:
        h = block(h)  # every position, in every block
    full = model.unembed(model.norm_out(h[:, -1]))
    torch.testing.assert_close(model(x), full)


def test_the_output_depends_on_both_operands():
    torch.manual_seed(0)
    model = build_transformer((3,), 11, 16, 1, 4)
    x = torch.tensor([[1.0, 2.0, 11.0], [3.0, 2.0, 11.0], [1.0, 5.0, 11.0]])
    out = model(x)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[0], out[2])


def test_heads_must_divide_the_width():
    with pytest.raises(ConfigError, match="^model.heads: 3 heads do not divide model.width=32"):
        validate(compose_config(["experiment=grokking", "model.heads=3"]))
    with pytest.raises(ValueError, match="model.heads"):
        build_transformer((3,), 11, 32, 1, 3)


def test_transformer_needs_token_data():
    with pytest.raises(ConfigError, match="^model.name: 'transformer' needs sequences of token"):
        validate(compose_config(["model=transformer", "data=mnist1d"]))


@pytest.mark.parametrize("rule", ["names", "timm"])
def test_param_groups_exempt_layernorms_and_biases(rule):
    model = build_transformer((3,), 11, 16, 2, 4)
    _, report = param_groups(model, 1.0, rule=rule)
    exempt = set(report["no_decay"]["names"])
    expected = {n for n, _ in model.named_parameters() if n.endswith(".bias") or ".norm" in f".{n}"}
    assert exempt == expected and any("norm_out" in n for n in exempt)
    assert {"embed.weight", "pos", "unembed.weight", "blocks.1.attn.qkv.weight"} <= set(
        report["decay"]["names"]
    )


def test_vmap_batches_the_transformer_over_stacked_parameters():
    torch.manual_seed(0)
    members = [build_transformer((3,), 11, 16, 2, 2) for _ in range(3)]
    params, buffers = stack_module_state(members)
    base = build_transformer((3,), 11, 16, 2, 2).to("meta")
    x = torch.randint(0, 12, (5, 3)).float()

    def forward(p, b):
        return functional_call(base, (p, b), (x,))

    out = vmap(forward)(params, buffers)
    torch.testing.assert_close(out, torch.stack([m(x) for m in members]))
    grads = torch.func.grad(lambda p: vmap(forward)(p, buffers).square().sum())(params)
    assert grads["embed.weight"].shape == (3, 12, 16)


# --------------------------------------------------------------------------------------------
# Training and steps_to_target


def _tiny(*extra: str):
    cfg = compose_config(
        [
            "experiment=grokking",
            "tracking=disabled",
            "train.threads=1",
            "data.modulus=11",
            "data.train_fraction=0.5",
            "data.val_size=10",
            "model.width=32",
            "optimizer.decay=decoupled",
            "optimizer.lr=3e-3",
            "optimizer.weight_decay=0.1",
            "train.max_steps=60",
            "train.eval_every=10",
            *extra,
        ]
    )
    validate(cfg)
    return cfg


def test_training_fits_the_training_pairs():
    cfg = _tiny()
    data = load_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.input_shape, data.num_classes)
    before = error_rate(model, data.x_train, data.y_train)
    opt, _, _ = build_optimizer(cfg, model, float(cfg.optimizer.weight_decay))
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(data.x_train), data.y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = error_rate(model, data.x_train, data.y_train)
    assert before > 0.7 and after < 0.1, (before, after)


def test_steps_to_target_is_the_first_report_at_the_target():
    history: list[tuple[int, float]] = []
    result = run_trial(_tiny("train.target_accuracy=0.95"), lambda s, m: history.append((s, m)))
    steps = [s for s, _ in history]
    assert steps == list(range(10, 61, 10))
    accuracy = [1 - m["test_error"] for _, m in history]
    assert all(0.0 <= a <= 1.0 for a in accuracy)
    assert history[-1][1]["train_loss"] < history[0][1]["train_loss"]
    # a target the run reaches, first at the step of its best accuracy: that step
    best = max(accuracy)
    first = steps[accuracy.index(best)]
    again = run_trial(_tiny(f"train.target_accuracy={best}"))
    assert again.steps_to_target == first
    assert again.test_error == pytest.approx(result.test_error)  # the same run
    # a target above everything it reached: NaN
    if best < 1.0:
        higher = run_trial(_tiny(f"train.target_accuracy={min(1.0, best + 1e-3)}"))
        assert math.isnan(higher.steps_to_target)


def test_without_a_target_nothing_is_recorded():
    history: list[dict] = []
    result = run_trial(
        _tiny("train.target_accuracy=0", "train.max_steps=10"), lambda s, m: history.append(m)
    )
    assert math.isnan(result.steps_to_target) and "test_error" not in history[0]


def test_first_at_target_keeps_the_first_step():
    s = math.nan
    s = first_at_target(s, 50, 0.10, 0.95)  # 90%: not yet
    assert math.isnan(s)
    s = first_at_target(s, 100, 0.05, 0.95)  # exactly 95%
    assert s == 100
    s = first_at_target(s, 150, 0.50, 0.95)  # dropping back keeps the first time
    assert s == 100
    assert first_at_target(math.nan, 10, 0.0, 1.0) == 10


def test_target_accuracy_is_a_fraction():
    with pytest.raises(ConfigError, match="^train.target_accuracy: 95.0 is outside"):
        validate(compose_config(["experiment=grokking", "train.target_accuracy=95"]))


# --------------------------------------------------------------------------------------------
# The presets


@pytest.mark.parametrize("name", ["grokking", "grokking_gpu"])
def test_presets_are_6x6_grids_of_three_adam_variants(name):
    cfg = compose_config([f"experiment={name}"])
    validate(cfg)
    assert cfg.model.name == "transformer" and cfg.data.name == "modular"
    assert [str(v) for v in cfg.sweep.variants] == [
        "adam/l2",
        "adam/decoupled",
        "adam/independent",
    ]
    assert float(cfg.train.target_accuracy) == 0.95
    assert plan.total_cells(cfg) == 3 * 36


def test_population_members_record_the_sequential_steps_to_target():
    from harness.population import run_population, supports

    base = [
        "data=modular",
        "data.modulus=11",
        "data.train_fraction=0.5",
        "data.val_size=10",
        "data.batch_size=1024",
        "model=mlp",
        "model.width=32",
        "optimizer.decay=decoupled",
        "train.dtype=float64",
        "train.max_steps=40",
        "train.eval_every=5",
        "train.threads=1",
        "tracking=disabled",
    ]
    grid = [(1e-2, 1e-2), (3e-2, 1e-1)]

    def cells(target: float):
        out = []
        for lr, wd in grid:
            cfg = compose_config([*base, f"train.target_accuracy={target}"])
            cfg.optimizer.lr, cfg.optimizer.weight_decay = lr, wd
            out.append(cfg)
        return out

    first: list[tuple[int, dict]] = []
    run_trial(cells(0.95)[0], lambda s, m: first.append((s, m)))
    best = max(1 - m["test_error"] for _, m in first)
    assert best > 0
    cfgs = cells(best)  # member 0 reaches it (at its best report)
    assert supports(cfgs[0])  # trained as one population
    seq = [run_trial(c) for c in cfgs]
    histories: list[list] = [[], []]
    pop = run_population(cfgs, [lambda s, m, h=h: h.append((s, m)) for h in histories])
    assert seq[0].steps_to_target == [s for s, m in first if 1 - m["test_error"] >= best][0]
    for p_, s_, history in zip(pop, seq, histories):
        assert p_.test_error == s_.test_error
        assert p_.steps_to_target == s_.steps_to_target or (
            math.isnan(p_.steps_to_target) and math.isnan(s_.steps_to_target)
        )
        assert [s for s, _ in history] == list(range(5, 41, 5))
        assert all("test_error" in m for _, m in history)
