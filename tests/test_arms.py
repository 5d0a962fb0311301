"""sweep.arms (named settings crossed with the variants), the param_groups rules that decay the
classifier and the norm layers too, and the timescale and scope-ladder presets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.config import ConfigError, compose_config, validate
from harness.models import mlp
from harness.optim.groups import head_names, norm_names, param_groups
from harness.sweep import plan

ROOT = Path(__file__).resolve().parent.parent


def _decayed(model: torch.nn.Module, rule: str) -> set[str]:
    sample = torch.randn(16, 40)
    _, report = param_groups(model, 1e-3, rule=rule, sample=sample)
    return set(report["decay"]["names"])


def test_rules_add_the_head_and_the_norm_layers_to_the_invariant_tensors():
    torch.manual_seed(0)
    net = mlp(40, 10, 16, 2, bn=True, bn_affine=True)
    # Flatten, Linear, BN, ReLU, Linear, BN, ReLU, head
    assert head_names(net) == ["7.weight", "7.bias"]
    assert norm_names(net) == ["2.weight", "2.bias", "5.weight", "5.bias"]
    si = _decayed(net, "scale_invariant")
    assert si == {"1.weight", "1.bias", "4.weight", "4.bias"}  # feed BatchNorm: invariant
    assert _decayed(net, "scale_invariant_head") == si | {"7.weight", "7.bias"}
    everything = {n for n, _ in net.named_parameters()}
    assert _decayed(net, "scale_invariant_head_norm") == everything == _decayed(net, "all")
    # a frozen classifier is no head to decay; the last trainable non-norm module is not taken
    frozen = mlp(40, 10, 16, 2, bn=True, bn_affine=False, frozen_head=True)
    assert head_names(frozen) == [] and norm_names(frozen) == []
    assert _decayed(frozen, "scale_invariant_head") == _decayed(frozen, "scale_invariant")


def test_arms_cross_the_variants_with_their_own_studies_and_experiments():
    cfg = compose_config(
        [
            "experiment=quick",
            "sweep.variants=[adam/l2,adam/independent]",
            "+sweep.arms.n500.data.n_train=500",
            "+sweep.arms.e2.train.epochs=2",
        ]
    )
    validate(cfg)
    vs = plan.variants(cfg)
    assert [v.label for v in vs] == [
        "n500:adam/l2", "n500:adam/independent", "e2:adam/l2", "e2:adam/independent",
    ]  # fmt: skip
    assert [plan.study_name(cfg, v) for v in vs][:2] == ["quick-n500-adam-l2",
                                                         "quick-n500-adam-independent"]  # fmt: skip
    assert plan.experiment_name(cfg, vs[0]) == "quick-n500"
    n500, e2 = plan.variant_config(cfg, vs[0]), plan.variant_config(cfg, vs[2])
    assert (n500.data.n_train, n500.train.epochs) == (500, 80)
    assert (e2.data.n_train, e2.train.epochs) == (1000, 2)
    assert n500.optimizer.decay == "l2" and e2.optimizer.decay == "l2"
    # without arms nothing changes
    plain = compose_config(["experiment=quick"])
    assert all(not v.arm for v in plan.variants(plain))
    assert plan.study_name(plain, plan.variants(plain)[0]) == "quick-adam-l2"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("+sweep.arms.x.sweep.seeds=3", "sweep.arms.x.sweep: an arm sets optimizer, model"),
        ("+sweep.arms.x.optimizer.decay=l2", "sweep.arms.x.optimizer.decay: the variants set it"),
        ("+sweep.arms.x.data.batch_size=0", "sweep.arms.x: data.batch_size: 0 must be > 0"),
        ("+sweep.arms.x.optimizer.param_groups=some", "sweep.arms.x: optimizer.param_groups:"),
    ],
)
def test_a_bad_arm_is_one_line_naming_it(override, needle):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(["experiment=quick", override]))
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["timescale_mnist1d", "scope_ladder_mnist1d"])
def test_presets_compose_and_every_arm_validates(name):
    from harness.population import supports

    cfg = compose_config([f"experiment={name}"])
    validate(cfg)
    assert cfg.sweep.seeds >= 5 and cfg.sweep.sampler == "valley"
    vs = plan.variants(cfg)
    assert len(vs) == 18 and {v.key for v in vs} == {"adam/l2", "adam/decoupled",
                                                      "adam/independent"}  # fmt: skip
    for v in vs:
        vcfg = plan.variant_config(cfg, v)
        validate(vcfg)
        assert supports(vcfg), f"{name} {v.label} would not run as a population"
        # the same 10,000-sample test set in every arm
        assert round(vcfg.data.num_samples * (1 - vcfg.data.train_fraction)) == 10_000
    if name == "timescale_mnist1d":
        arms = {v.arm: plan.variant_config(cfg, v) for v in vs}
        assert [arms[f"n{n}"].data.n_train for n in (1000, 2000, 4000, 8000)] == [
            1000, 2000, 4000, 8000,
        ]  # fmt: skip
        assert {arms[f"n{n}"].train.epochs for n in (1000, 2000, 4000, 8000)} == {20}
        assert (arms["e40"].train.epochs, arms["e80"].train.epochs) == (40, 80)
        assert arms["e40"].data.n_train == arms["e80"].data.n_train == 1000
        # N = 8000 fits the generated training split after the validation split
        assert 8000 <= arms["n8000"].data.num_samples * 0.5 - arms["n8000"].data.val_size
    else:
        rung = {v.arm: plan.variant_config(cfg, v) for v in vs}
        steps = [
            (r.model.bn_affine, r.model.frozen_head, r.optimizer.param_groups, r.schedule.name)
            for r in (rung[k] for k in "abcdef")
        ]
        assert steps == [
            (False, True, "scale_invariant", "constant"),
            (False, False, "scale_invariant", "constant"),
            (True, False, "scale_invariant", "constant"),
            (True, False, "scale_invariant_head", "constant"),
            (True, False, "scale_invariant_head_norm", "constant"),
            (True, False, "all", "cosine"),
        ]
        # one change per rung
        for before, after in zip(steps, steps[1:]):
            assert sum(a != b for a, b in zip(before, after)) == 1 or after[3] == "cosine"


TINY = [
    "sweep.variants=[adam/independent]",
    "sweep.seeds=1",
    "sweep.lr.num=2",
    "sweep.weight_decay.num=2",
    "sweep.rounds=0",
    "model.width=16",
    "train.epochs=1",
    "tracking=disabled",
]


@pytest.mark.slow
@pytest.mark.parametrize("name,arms", [("timescale_mnist1d", 6), ("scope_ladder_mnist1d", 6)])
def test_a_tiny_version_of_each_preset_runs_end_to_end(tmp_path, name, arms):
    out = tmp_path / name
    extra = ["train.instruments=false"] if name == "scope_ladder_mnist1d" else []
    if name == "timescale_mnist1d":  # an arm's own keys win over the command line's train.epochs
        extra = ["sweep.arms.e40.train.epochs=2", "sweep.arms.e80.train.epochs=4"]
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", f"experiment={name}", f"hydra.run.dir={out}",
         *TINY, *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = pd.read_csv(out / "results.csv")
    assert res["experiment"].nunique() == arms and (res["state"] == "COMPLETE").all()
    assert len(res) == arms * 4  # 2 lrs x 2 wds per arm
    m = pd.read_csv(out / "figures" / "metrics.csv")
    assert m["experiment"].nunique() == arms
    assert {"collapse_r2_1d", "collapse_r2_2d"} <= set(m.columns)
    folders = [d for d in (out / "figures").iterdir() if d.is_dir()]
    assert len(folders) == arms and all((d / "decay_rule.csv").is_file() for d in folders)
    if name == "scope_ladder_mnist1d":
        # the instruments are off: rung f (param_groups=all) runs no detector, its share is unknown
        share = (res["decayed_si_numel"] / res["decayed_numel"]).groupby(res["experiment"]).first()
        share.index = [e.rpartition("-")[2] for e in share.index]
        assert share[["a", "b", "c"]].tolist() == [1.0, 1.0, 1.0]
        assert 0 < share["d"] < share["c"] and 0 < share["e"] < share["d"]
        assert np.isnan(share["f"])
        ladder = pd.read_csv(out / "figures" / "ladder.csv")
        assert list(ladder["rung"]) == list("abcdef")
        assert (out / "figures" / "ladder.png").is_file()
    if name == "timescale_mnist1d":
        steps = res.groupby("experiment")["steps"].first()
        assert steps["timescale_mnist1d-n8000"] == 8 * steps["timescale_mnist1d-n1000"]
        assert steps["timescale_mnist1d-e80"] == 4 * steps["timescale_mnist1d-n1000"]
