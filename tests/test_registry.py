"""The registry of names: conf/ options, builders, decay forms and the modules that read it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness import registry
from harness.config import (
    CONF_DIR,
    ConfigError,
    ModelConfig,
    OptimizerConfig,
    compose_config,
    validate,
)
from harness.models import build_model

ROOT = Path(__file__).resolve().parent.parent

# conf group -> (the key naming the option, the registry group); options == registry names
EXACT = {
    "model": ("name", "model"),
    "storage": ("kind", "storage"),
    "data": ("name", "data"),
    "launcher": ("name", "launcher"),
    "sweep": ("sampler", "sampler"),
}
# conf groups whose options are a subset of the registry group (the rest set by a key)
SUBSET = {"schedule": ("name", "schedule"), "tracking": ("mode", "tracking")}


def _options(group: str, key: str) -> dict[str, str]:
    """``{file stem: value of key}`` over ``conf/<group>/*.yaml``."""
    return {
        p.stem: str(OmegaConf.load(p)[key])
        for p in sorted((Path(CONF_DIR) / group).glob("*.yaml"))
        if key in OmegaConf.load(p)  # an alias takes its key from the option it extends
    }


@pytest.mark.parametrize("group", sorted(EXACT))
def test_conf_options_are_the_registry_names(group):
    key, reg_group = EXACT[group]
    options = _options(group, key)
    assert all(stem == value for stem, value in options.items()), options
    assert sorted(options) == sorted(registry.names(reg_group))


def test_optimizer_options_are_the_families_and_their_aliases():
    stems = sorted(p.stem for p in (Path(CONF_DIR) / "optimizer").glob("*.yaml"))
    assert stems == sorted([*registry.names("optimizer"), *registry.OPTIMIZER_ALIASES])
    for family in registry.names("optimizer"):
        assert _options("optimizer", "name")[family] == family
    for alias, (family, decay) in registry.OPTIMIZER_ALIASES.items():
        cfg = compose_config([f"optimizer={alias}"]).optimizer
        base = compose_config([f"optimizer={family}"]).optimizer
        assert (cfg.name, cfg.decay) == (family, decay)
        assert base.decay != decay  # the family's default is another form
        same = {k: v for k, v in cfg.items() if k != "decay"}
        assert same == {k: v for k, v in base.items() if k != "decay"}


@pytest.mark.parametrize("group", sorted(SUBSET))
def test_conf_options_are_registry_names(group):
    key, reg_group = SUBSET[group]
    assert set(_options(group, key).values()) <= set(registry.names(reg_group))


def test_decay_forms_follow_harness_optim():
    from harness.optim import DECAY_MODES

    forms = registry.decay_forms()
    # figures order columns this way: coupled before decoupled, the loss penalty beside l2
    assert tuple(forms) == ("l2", "loss", "decoupled", "independent")
    assert [f.name for f in forms.values() if not f.penalty] == list(DECAY_MODES)
    assert all(f.mode in DECAY_MODES for f in forms.values())
    assert {n for n, f in forms.items() if f.decoupled} == {"decoupled", "independent"}
    assert {n for n, f in forms.items() if f.shrink == "eta"} == {"independent"}
    assert len({f.label for f in forms.values()}) == len(forms)


def test_optimizer_families_name_their_classes_and_options():
    fields = set(OptimizerConfig.__dataclass_fields__)
    for family in registry.OPTIMIZERS.values():
        assert issubclass(registry.resolve(family.optimizer), torch.optim.Optimizer)
        assert set(family.options) <= fields, family


def _model_cfg(name: str):
    path = Path(CONF_DIR) / "model" / f"{name}.yaml"
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path))


@pytest.mark.parametrize("name", list(registry.MODELS))
def test_every_model_builds_and_runs_on_its_datasets(name):
    datasets = registry.datasets_for(name)
    assert datasets, f"{name} fits no dataset"
    for data in datasets:
        d = registry.dataset(data)
        torch.manual_seed(0)
        model = build_model(_model_cfg(name), d.shape, d.classes)
        assert model(torch.zeros(2, *d.shape)).shape == (2, d.classes)
    for data in set(registry.DATASETS) - set(datasets):
        with pytest.raises(ValueError, match=f"model.name={name} needs"):
            build_model(_model_cfg(name), registry.dataset(data).shape, 10)


def test_twins_are_the_same_network_with_and_without_batchnorm():
    for name, spec in registry.MODELS.items():
        if spec.twin is None:
            continue
        other = registry.model(spec.twin)
        assert other.twin == name and other.batchnorm != spec.batchnorm
        assert (other.builder, other.input) == (spec.builder, spec.input)
        assert registry.twins(name, spec.twin) and registry.twin(spec.twin) == name
    assert not registry.twins("resnet20", "resnet_tiny") and not registry.twins("mlp", "cnn")
    assert registry.twin("nonexistent") is None


def test_datasets_name_their_loaders():
    for spec in registry.DATASETS.values():
        assert callable(registry.resolve(spec.loader))
        assert spec.check is None or callable(registry.resolve(spec.check))
        assert spec.input in registry.INPUT_KINDS and registry.accepts(spec.input, spec.shape)


def test_unknown_names_list_the_registry():
    with pytest.raises(ValueError, match="not one of mlp, mlp_bn, cnn"):
        build_model(OmegaConf.create({"name": "vit", "width": 8, "depth": 1}), (1, 40), 10)
    with pytest.raises(KeyError, match="storage 'redis' is not one of sqlite, journal"):
        registry.storage("redis")
    with pytest.raises(ConfigError, match="optimizer.decay: 'l3' is not one of l2, loss,"):
        validate(compose_config(["optimizer.decay=l3"]))


@pytest.mark.parametrize(
    "overrides, start",
    [
        (
            ["model=resnet20"],
            "model.name: 'resnet20' needs images (cifar10, cifar100), not mnist1d",
        ),
        (["data=cifar10", "model=cnn"], "model.name: 'cnn' needs 1-D signals (mnist1d)"),
        (["data=cifar10", "sweep.models=[mlp,cnn_bn]"], "sweep.models ('cnn_bn'): 'cnn_bn'"),
    ],
)
def test_a_model_off_its_data_is_one_line(overrides, start):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(overrides))
    assert str(err.value).startswith(start) and "\n" not in str(err.value)


def test_importing_the_registry_imports_no_torch():
    code = "import sys, harness.registry; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# modules that read their names from the registry, so spell no list of them
READERS = [
    "harness/config.py",
    "harness/models.py",
    "harness/data.py",
    "harness/population.py",
    "harness/population_resnet.py",
    "harness/bench/population.py",
    "analysis/load.py",
    "analysis/plots.py",
    *(
        f"analysis/metrics/{m}.py"
        for m in (
            "selection",
            "valley",
            "regret",
            "surface",
            "identity",
            "table",
            "columns",
            "options",
        )
    ),
]


@pytest.mark.parametrize("path", READERS)
def test_readers_spell_no_list_of_names(path):
    groups = {g: set(registry.names(g)) for g in registry.GROUPS}
    found = []
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        else:
            continue
        words = {e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        found += [(node.lineno, g) for g, ns in groups.items() if len(words & ns) >= 2]
    assert found == [], f"{path} spells names of the registry: {found}"
