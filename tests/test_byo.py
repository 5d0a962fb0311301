"""A user's own model and data through ``_target_``: built, checked, trained in populations
(``torch.func.vmap``) exactly as sequential trials, swept end to end from the user's folder.

The workload lives in ``tests/byo_workload.py``, outside ``harness``; the sweep tests copy it
into a scratch folder and run from there, as a user runs from their project.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import ConfigError, compose_config, name_targets, validate
from harness.data import DataError, load_data
from harness.models import build_model, check_workload
from harness.population import run_population, supports
from harness.train import run_trial
from tests.test_population import grid_cells, population_log, recorder

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = Path(__file__).with_name("byo_workload.py")
W = "tests.byo_workload"
RTOL = 1e-10  # float64: the vmapped members and the sequential model differ by rounding only


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def byo(*extra: str, model: str = "BNNet", data: str = "blobs") -> object:
    return compose_config(
        [
            f"model._target_={W}.{model}",
            f"data._target_={W}.{data}",
            "data.val_size=100",
            "data.batch_size=50",
            "tracking=disabled",
            *extra,
        ]
    )


def assert_same(pop, seq, rtol=RTOL):
    """A member's result equals its sequential trial's: counts and error rates exactly, the
    measured floats within ``rtol``."""
    a, b = pop.to_dict(), seq.to_dict()
    assert a.keys() == b.keys()
    for key, value in a.items():
        if key == "wall_s":
            continue
        if isinstance(value, float) and not key.endswith("error"):
            assert value == pytest.approx(b[key], rel=rtol, abs=1e-300, nan_ok=True), key
        else:
            assert value == b[key], key


def assert_same_history(pop, seq, rtol=RTOL):
    """Every report of a member equals its sequential trial's (error rates exactly)."""
    assert pop and [s for s, _ in pop] == [s for s, _ in seq]
    for (step, a), (_, b) in zip(pop, seq):
        assert a.keys() == b.keys(), step
        for key, value in a.items():
            tol = 0.0 if key.endswith("error") else rtol
            assert value == pytest.approx(b[key], rel=tol, abs=0, nan_ok=True), (step, key)


def assert_members_equal_sequential(cfgs, rtol=RTOL):
    histories: list[list] = [[] for _ in cfgs]
    with population_log() as records:
        pops = run_population(cfgs, [recorder(h) for h in histories])
    assert len([r for r in records if hasattr(r, "step_mode")]) == 1  # one population ran
    for cfg, pop, history in zip(cfgs, pops, histories):
        seq_history: list = []
        seq = run_trial(cfg, report=recorder(seq_history))
        assert_same(pop, seq, rtol)
        assert_same_history(history, seq_history, rtol)


# --------------------------------------------------------------------------------------------
# Building a user's model and data


def test_the_model_gets_its_own_keys_and_the_shapes_it_names():
    cfg = byo("+model.hidden=5")
    validate(cfg)
    data = load_data(cfg.data)
    assert data.input_shape == (6,) and data.num_classes == 3
    assert (data.n_train, data.x_val.shape[0], data.x_test.shape[0]) == (300, 100, 200)
    net = build_model(cfg.model, data.input_shape, data.num_classes)
    assert type(net).__name__ == "BNNet" and net.fc1.weight.shape == (5, 6)
    assert net.head.out_features == 3


def test_a_built_in_model_is_the_same_entry_through_its_target():
    """``model._target_=harness.models.build_mlp`` builds what the ``mlp`` entry builds (its
    builder with the configured width and depth)."""
    from harness import registry

    target = compose_config(["model.width=12", "model._target_=harness.models.build_mlp"])
    torch.manual_seed(0)
    a = registry.model("mlp").build((1, 40), 10, 12, int(target.model.depth))
    torch.manual_seed(0)
    b = build_model(target.model, (1, 40), 10)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_torch_datasets_and_a_val_split_of_the_users_own():
    cfg = byo(model="AttnNet", data="token_pairs")
    data = load_data(cfg.data)
    assert data.input_shape == (4,) and data.num_classes == 5
    assert (data.n_train, data.x_val.shape[0], data.x_test.shape[0]) == (300, 100, 100)
    assert torch.equal(data.y_train, (data.x_train[:, 0] + data.x_train[:, 1]).long() % 5)


def test_a_targets_name_is_its_own_in_results():
    cfg = byo()
    name_targets(cfg)
    assert (cfg.model.name, cfg.data.name) == ("BNNet", "blobs")
    cfg = byo("model.name=mine")
    name_targets(cfg)
    assert cfg.model.name == "mine"


# --------------------------------------------------------------------------------------------
# Bad targets: one line naming the key


@pytest.mark.parametrize(
    "overrides,key,fix",
    [
        ([f"model._target_={W}.Nope"], "model._target_", "has no attribute 'Nope'"),
        (["model._target_=no_such_pkg.Net"], "model._target_", "working folder"),
        ([f"model._target_={W}.NOT_CALLABLE"], "model._target_", "not a class or function"),
        ([f"data._target_={W}.nope"], "data._target_", "has no attribute"),
        (["train.loss=no_such_pkg.loss"], "train.loss", "cannot be imported"),
        (["model._target_=", "+model.hidden=3"], "model.hidden", "model._target_"),
        (["experiment=fig2_mnist1d", f"model._target_={W}.BNNet"], "sweep.models", "models=[]"),
    ],
)
def test_unimportable_targets_fail_validation_in_one_line(overrides, key, fix):
    cfg = compose_config([f"data._target_={W}.blobs", *overrides])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert msg.startswith(f"{key}:") and fix in msg and "\n" not in msg


@pytest.mark.parametrize(
    "model,data,key,words",
    [
        ("not_a_module", "blobs", "model._target_", "not a torch.nn.Module"),
        ("WrongWidth", "blobs", "model._target_", "fails on the first batch of (8, 6)"),
        ("OneLogitTooMany", "blobs", "model._target_", "to (8, 4), not logits"),
        ("BNNet", "not_a_dataset", "data._target_", "returned a int"),
    ],
)
def test_a_model_that_does_not_fit_its_data_fails_before_any_study(model, data, key, words):
    cfg = byo(model=model, data=data)
    validate(cfg)
    with pytest.raises(ConfigError) as e:
        check_workload(cfg)
    msg = str(e.value)
    assert msg.startswith(f"{key}:") and words in msg and "\n" not in msg


def test_a_loss_that_returns_no_scalar_is_refused():
    cfg = byo("train.loss=torch.nn.functional.softmax")
    with pytest.raises(ConfigError, match=r"^train.loss: .*(fails|not a scalar)"):
        check_workload(cfg)


def test_labels_outside_the_class_count_are_refused():
    from harness.data import as_dataset

    x, y = torch.randn(200, 3), torch.arange(200) % 4
    with pytest.raises(DataError, match=r"labels span 0..3, outside 0..2"):
        as_dataset({"train": (x, y), "test": (x, y), "num_classes": 3}, byo().data, "data._target_")


@pytest.mark.parametrize("empty", ["pair", "tensor_dataset", "dataset"])
def test_an_empty_split_is_named_empty(empty):
    from torch.utils.data import Dataset as TorchDataset
    from torch.utils.data import TensorDataset

    from harness.data import as_dataset

    class Nothing(TorchDataset):
        def __len__(self):
            return 0

        def __getitem__(self, i):
            raise IndexError(i)

    x, y = torch.randn(200, 3), torch.arange(200) % 3
    none = (x[:0], y[:0])
    split = {"pair": none, "tensor_dataset": TensorDataset(*none), "dataset": Nothing()}[empty]
    with pytest.raises(DataError) as e:
        as_dataset({"train": (x, y), "test": split}, byo().data, "data._target_")
    msg = str(e.value)
    assert msg.startswith("data._target_ 'test' is empty (0 samples)") and "n_train" in msg, msg
    assert "\n" not in msg and "not (input, label)" not in msg


# --------------------------------------------------------------------------------------------
# Populations of any module (torch.func.vmap) equal sequential trials


@pytest.mark.parametrize("variant", ["adam/l2", "adam/loss", "sgd/decoupled", "sgd/independent"])
def test_vmapped_members_equal_sequential_trials(variant):
    """BatchNorm (per-member running statistics) and LayerNorm, float64, every report."""
    opt, decay = variant.split("/")
    base = byo(
        "+model.hidden=8",
        f"optimizer={opt}",
        f"optimizer.decay={decay}",
        "optimizer.param_groups=timm",
        "train.dtype=float64",
        "train.max_steps=12",
        "train.eval_every=4",
    )
    grid = [(1e-3, 1e-4), (1e-2, 1e-1)] if opt == "adam" else [(1e-2, 1e-4), (1e-1, 1e-2)]
    assert supports(base)
    assert_members_equal_sequential(grid_cells(base, grid))


def test_vmapped_attention_and_a_users_loss_equal_sequential_trials():
    """Embedding, nn.MultiheadAttention, LayerNorm and ``train.loss`` under vmap."""
    base = byo(
        "optimizer=adam",
        "optimizer.decay=independent",
        "train.dtype=float64",
        "train.max_steps=6",
        "train.eval_every=3",
        f"train.loss={W}.smoothed",
        model="AttnNet",
        data="token_pairs",
    )
    assert_members_equal_sequential(grid_cells(base, [(1e-3, 1e-3), (1e-2, 1e-1)]))


def test_the_built_in_transformer_trains_in_vmapped_populations():
    """A registry entry without hand-written batched layers (``population=False``) takes the
    generic path too: embedding, attention, LayerNorm on modular addition."""
    base = compose_config(
        [
            "data=modular",
            "data.modulus=7",
            "data.train_fraction=0.5",
            "data.val_size=5",
            "data.batch_size=64",
            "model=transformer",
            "model.width=16",
            "model.heads=2",
            "optimizer=adam",
            "optimizer.decay=independent",
            "train.dtype=float64",
            "train.max_steps=6",
            "train.eval_every=3",
            "tracking=disabled",
        ]
    )
    assert_members_equal_sequential(grid_cells(base, [(1e-3, 1e-2), (1e-2, 1e-1)]))


def test_a_model_vmap_cannot_run_trains_sequentially_and_says_so(caplog):
    base = byo("train.dtype=float64", "train.max_steps=6", model="Branchy")
    cfgs = grid_cells(base, [(1e-3, 1e-4), (1e-2, 1e-2)])
    with caplog.at_level(logging.WARNING, logger="lrwd.population"):
        pops = run_population(cfgs, [None, None])
    lines = [r.getMessage() for r in caplog.records if r.name == "lrwd.population"]
    assert len(lines) == 1 and "cannot run under torch.func.vmap" in lines[0]
    assert "training its members sequentially" in lines[0] and "\n" not in lines[0]
    for cfg, pop in zip(cfgs, pops):
        assert_same(pop, run_trial(cfg))


# --------------------------------------------------------------------------------------------
# End to end: python -m harness.sweep from the user's folder


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), WANDB_MODE="disabled")
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's folder holding their workload as a top-level module (not importable otherwise)."""
    shutil.copy(WORKLOAD, tmp_path / "my_workload.py")
    return tmp_path


SWEEP = [
    "experiment=byo",
    "model._target_=my_workload.BNNet",
    "+model.hidden=8",
    "data._target_=my_workload.blobs",
    "data.val_size=100",
    "data.batch_size=50",
    "train.epochs=2",
    "sweep.variants=[adam/l2,sgd/independent]",
    "sweep.lr.num=2",
    "sweep.weight_decay.num=2",
    "sweep.ranges.sgd.lr.num=2",
    "sweep.population=auto",
    "tracking=disabled",
]


@pytest.mark.slow
def test_sweep_of_a_users_model_from_their_folder(project):
    """Two local workers (spawned processes: they import the user's module too), populations
    on, results and heatmaps of the user's model."""
    out = project / "out"
    r = _run(
        ["-m", "harness.sweep", *SWEEP, "sweep.workers=2", "storage=journal", f"output_dir={out}"],
        project,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cannot run under torch.func.vmap" not in r.stdout + r.stderr

    from analysis.load import aggregate, grid, load_results
    from analysis.plots import heatmap_figure

    cells_in_all = int(re.search(r"(\d+) cells in all", r.stdout).group(1))
    frame = load_results(out / "results.csv")
    assert len(frame) == cells_in_all and set(frame["variant"]) == {"adam/l2", "sgd/independent"}
    assert set(frame["model"]) == {"BNNet"} and set(frame["data"]) == {"blobs"}
    assert not frame["diverged"].any() and (frame["test_error"] < 0.5).any()
    cells = aggregate(frame)
    lrs, wds, errors = grid(cells, "adam/l2")
    assert len(lrs) == 2 and not np.isnan(errors).any()
    fig = heatmap_figure(cells)
    fig.savefig(project / "heatmaps.png")
    assert (project / "heatmaps.png").stat().st_size > 0
    assert (out / "figures" / "heatmaps.png").is_file()


@pytest.mark.slow
def test_plain_workers_import_the_users_model(project):
    """``python -m harness.worker`` (the sbatch path) composes the same overrides and trains
    the user's model from the same folder."""
    args = [*SWEEP, "storage=journal", f"output_dir={project / 'out'}"]
    prep = _run(["-m", "harness.worker", "--prepare", *args], project)
    assert prep.returncode == 0, prep.stderr[-3000:]
    work = _run(["-m", "harness.worker", *args], project)
    assert work.returncode == 0, work.stderr[-3000:]
    status = _run(["-m", "harness.sweep", *args, "sweep.action=status"], project)
    assert status.returncode == 0, status.stderr[-3000:]
    queued = re.findall(r"'WAITING': (\d+)", prep.stdout)
    assert len(queued) == 2, prep.stdout
    assert re.findall(r"'COMPLETE': (\d+)", status.stdout) == queued, status.stdout


def test_a_bad_target_exits_2_with_one_line(project):
    r = _run(["-m", "harness.sweep", *SWEEP, "model._target_=my_workload.OneLogitTooMany"], project)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model._target_:"), r.stderr


# --------------------------------------------------------------------------------------------
# The documented example (docs/byo.md runs examples/my_model.py)


def _documented_command() -> list[str]:
    text = (ROOT / "docs" / "byo.md").read_text()
    block = re.search(r"```bash\n(python -m harness.sweep .*?)```", text, re.S)
    assert block, "docs/byo.md: no python -m harness.sweep example"
    words = shlex.split(block.group(1).replace("\\\n", " "))
    return [w for w in words[1:] if not w.startswith("output_dir=")]  # drop "python"


def test_the_example_module_imports_and_fits():
    spec = importlib.util.spec_from_file_location("my_model", ROOT / "examples" / "my_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    splits = mod.make_blobs(n_samples=100)
    net = mod.TinyNet((8,), splits["num_classes"], hidden=4)
    x, y = splits["train"]
    assert net(x).shape == (100, 4) and mod.smoothed_ce(net(x), y).ndim == 0


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path):
    args = _documented_command()
    assert "model._target_=examples.my_model.TinyNet" in args and "experiment=byo" in args
    small = ["train.epochs=1", "sweep.lr.num=2", "sweep.weight_decay.num=2"]
    r = _run([*args, *small, f"output_dir={tmp_path}"], ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = (tmp_path / "results.csv").read_text().splitlines()
    assert len(rows) > 1 and ",tinynet,blobs," in rows[1]
