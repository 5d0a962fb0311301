"""The recipes of docs/ARCHITECTURE.md ("How to add ..."), each followed for real: a results
column, a decay form and a metric are added by editing the files their recipe names in a copy of
the package; a storage, a model and a sampler (with a planner of its own) are added by
registration. Each then runs a tiny sweep whose output shows the new thing."""

from __future__ import annotations

import copy
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from harness import registry
from harness.storage import SQLite
from harness.sweep import plan
from harness.sweep.queue import enqueue_cells
from tests.test_architecture import _recipe_files
from tests.test_sweep import TINY

ROOT = Path(__file__).resolve().parent.parent
SMALL = [*TINY, "sweep.lr.num=2", "sweep.weight_decay.num=2"]  # 2 x 2 cells

pytestmark = pytest.mark.slow


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: the recipe's anchor {old!r} is gone"
    path.write_text(text.replace(old, new))


# --------------------------------------------------------------------------------------------
# Recipes that edit files: in a copy of the package


EDITS = {
    "A results column": [
        (
            "harness/results.py",
            "    steps_to_target: float = math.nan\n",
            "    steps_to_target: float = math.nan\n    error_gap: float = math.nan\n",
        ),
        (
            "harness/loop.py",
            "                steps_to_target=reached[m],\n",
            "                steps_to_target=reached[m],\n"
            "                error_gap=float(test[m]) - float(last_val[m]),\n",
        ),
    ],
    "A decay form": [
        (
            "harness/optim/functional.py",
            'DECAY_MODES = ("l2", "decoupled", "independent")',
            'DECAY_MODES = ("l2", "decoupled", "independent", "recipe")',
        ),
        (
            "harness/optim/functional.py",
            'SHRINK_BY = {"l2": "lr", "decoupled": "lr", "independent": "eta"}',
            'SHRINK_BY = {"l2": "lr", "decoupled": "lr", "independent": "eta", "recipe": "lr"}',
        ),
        (
            "harness/registry.py",
            "_DECAY_FORMS = (\n",
            "_DECAY_FORMS = (\n"
            '    DecayForm("recipe", "recipe", "weights", "w *= 1 - lr_t*wd", mode="recipe",'
            " valleys=_SLOPE_LR),\n",
        ),
    ],
    "A metric": [
        (
            "analysis/metrics/columns.py",
            '    "n_trials": "trials",\n',
            '    "n_trials": "trials",\n    "n_rows": "rows of the variant\'s tidy frame",\n',
        ),
        (
            "analysis/metrics/table.py",
            '    m = {\n        "variant": variant,\n',
            '    m = {\n        "variant": variant,\n        "n_rows": int(len(vframe)),\n',
        ),
    ],
}


@pytest.fixture(scope="module")
def edited_sweep(tmp_path_factory) -> Path:
    """A copy of the package with the three recipes' edits, and a tiny grid sweep of the new
    decay form run from it; returns the sweep's output folder."""
    copy = tmp_path_factory.mktemp("repo")
    for folder in ("harness", "analysis", "conf"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for title, edits in EDITS.items():
        named = _recipe_files(title)
        for rel, old, new in edits:
            assert rel in named, f"{title}: the recipe does not name {rel}"
            _edit(copy / rel, old, new)
    out = copy / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness.sweep",
            f"hydra.run.dir={out}",
            *SMALL,
            "optimizer.decay=recipe",
        ],
        cwd=copy,  # `python -m` imports the copy's harness
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_results_column(edited_sweep):
    frame = pd.read_csv(edited_sweep / "results.csv")
    assert "error_gap" in frame.columns
    assert len(frame) == 4
    gap = frame["test_error"] - frame["final_val_error"]
    assert (frame["error_gap"] - gap).abs().max() < 1e-12


def test_a_decay_form(edited_sweep):
    frame = pd.read_csv(edited_sweep / "results.csv")
    assert set(frame["decay"]) == {"recipe"}
    assert frame["test_error"].between(0.0, 1.0).all()


def test_a_metric(edited_sweep):
    files = sorted((edited_sweep / "figures").rglob("metrics.csv"))
    assert files, "the sweep wrote no metrics.csv"
    metrics = pd.read_csv(files[0])
    assert "n_rows" in metrics.columns
    assert metrics.loc[metrics["variant"] == "adam/recipe", "n_rows"].tolist() == [4]


# --------------------------------------------------------------------------------------------
# Recipes that register: in this process, one in-process sweep


class RecipeDB(SQLite):
    """A storage kind: an SQLite file named recipe.db."""

    filename = "recipe.db"


def recipe_mlp(input_shape, num_classes, width, depth, **switches):
    """A model: the built-in MLP one layer deeper."""
    from harness.models import build_mlp

    return build_mlp(input_shape, num_classes, width, depth + 1, **switches)


class DiagonalPlanner(plan.GridPlanner):
    """A sampler that enqueues its own cells: the grid's diagonal (i-th lr with i-th wd)."""

    def cells(self, cfg) -> list[dict]:
        lrs, wds, _ = plan.grid_axes(cfg.sweep)
        keep = set(zip(lrs, wds, strict=False))
        return [c for c in plan.grid_cells(cfg.sweep) if (c["lr"], c["weight_decay"]) in keep]

    def budget(self, cfg) -> int:
        return len(self.cells(cfg))

    def enqueue(self, study, cfg):
        dists = plan.distributions(cfg.sweep)
        return enqueue_cells(study, self.cells(cfg), dists, float(cfg.sweep.heartbeat_s))


HERE = __name__
ENTRIES = {
    "A storage": (
        registry.STORAGES,
        registry.StorageSpec(
            "recipe_db", "recipe DB", "recipe.db", True, False, False, f"{HERE}:RecipeDB"
        ),
    ),
    "A model": (
        registry.MODELS,
        registry.ModelSpec(
            "recipe_mlp",
            "the MLP, one layer deeper",
            f"{HERE}:recipe_mlp",
            registry.VECTOR,
            reads=registry.MODEL_SWITCHES,
        ),
    ),
    "A sampler": (
        registry.SAMPLERS,
        registry.SamplerSpec(
            "diagonal",
            "the grid's diagonal",
            "optuna.samplers:QMCSampler",
            f"{HERE}:DiagonalPlanner",
        ),
    ),
}


@pytest.fixture(scope="module")
def registered_sweep(tmp_path_factory):
    """The three entries registered, and a tiny sweep using all three, in this process."""
    from harness.config import compose_config
    from harness.sweep import cli

    out = tmp_path_factory.mktemp("registered")
    overrides = [
        *SMALL,
        "storage.kind=recipe_db",
        "model.name=recipe_mlp",
        "sweep.sampler=diagonal",
        "model.depth=1",
    ]
    with pytest.MonkeyPatch.context() as mp:
        for table, entry in ENTRIES.values():
            mp.setitem(table, entry.name, entry)
        cfg = compose_config(overrides)
        assert cli.sweep(cfg, overrides, str(out)) == 0
        yield out, cli.resolve(compose_config(overrides), overrides, str(out))


def test_a_storage(registered_sweep):
    from analysis.load import load_results

    out, _ = registered_sweep
    assert (out / "recipe.db").is_file() and not (out / "study.db").exists()
    assert len(load_results(str(out / "recipe.db"))) == 2  # the analysis reads it read-only


def test_a_model(registered_sweep):
    out, cfg = registered_sweep
    frame = pd.read_csv(out / "results.csv")
    assert set(frame["model"]) == {"recipe_mlp"}
    import torch.nn as nn

    from harness.models import build_model

    def linears(name: str) -> int:
        c = copy.deepcopy(cfg)
        c.model.name = name
        return sum(isinstance(m, nn.Linear) for m in build_model(c.model, (40,), 10).modules())

    assert linears("recipe_mlp") == linears("mlp") + 1  # its builder's extra layer


def test_a_sampler(registered_sweep):
    out, cfg = registered_sweep
    frame = pd.read_csv(out / "results.csv")
    lrs, wds, _ = plan.grid_axes(cfg.sweep)
    pairs = sorted(zip(frame["lr"], frame["weight_decay"], strict=True))
    assert len(pairs) == 2
    for (lr, wd), (want_lr, want_wd) in zip(pairs, zip(lrs, wds, strict=False), strict=True):
        assert math.isclose(lr, want_lr, rel_tol=1e-9) and math.isclose(wd, want_wd, rel_tol=1e-9)
    assert isinstance(plan.make_sampler(cfg), optuna.samplers.QMCSampler)


@pytest.mark.parametrize("title", ["A storage", "A model", "A sampler"])
def test_registered_recipes_name_the_registry(title):
    assert "harness/registry.py" in _recipe_files(title)
    assert re.search(r"conf/\w+/<name>\.yaml", ", ".join(_recipe_files(title)))
