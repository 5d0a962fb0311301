"""Per-layer summaries: what the trainers return, what a sweep stores on its trials and beside
results.csv, and the per-layer facet figure of analysis.figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from analysis.figures import layer_theory
from analysis.load import load_layers, load_results
from analysis.plots import layers_figure
from harness.population import run_population
from harness.results import RESULTS_COLUMNS, TrialResult
from harness.train import run_trial
from tests.test_instruments import GRID, cells

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def layer_names(model: torch.nn.Module) -> list[str]:
    return [n for n, q in model.named_parameters() if q.requires_grad and q.ndim >= 2]


def test_population_members_per_layer_summaries_equal_sequential_trials():
    cfgs = cells("mlp_bn", GRID)
    pops = run_population(cfgs, [None] * len(cfgs))
    for cfg, pop in zip(cfgs, pops):
        seq = run_trial(cfg)
        assert pop.layers is not None and seq.layers is not None
        assert list(pop.layers) == list(seq.layers)
        assert len(seq.layers) == 3  # two hidden layers' weights and the head
        for name, entry in seq.layers.items():
            other = pop.layers[name]
            assert other["scale_invariant"] == entry["scale_invariant"]
            assert other["angle"] == pytest.approx(entry["angle"], rel=1e-8)
            assert other["norm"] == pytest.approx(entry["norm"], rel=1e-8)
            assert entry["angle"] > 0 and entry["norm"] > 0
        # the hidden weights feed BatchNorm, the head does not
        assert [e["scale_invariant"] for e in seq.layers.values()] == [True, True, False]
        # one scale-invariant layer's window angle is within the group's (the group mixes them)
        si = [e["angle"] for e in seq.layers.values() if e["scale_invariant"]]
        assert min(si) * 0.5 <= seq.si_angle <= max(si) * 1.5
        # not a result field: the CSV schema is unchanged
        assert "layers" not in seq.to_dict() and "layers" not in RESULTS_COLUMNS


def test_instruments_off_give_no_per_layer_summary():
    cfg = cells("mlp_bn", GRID[:1], ["train.instruments=false"])[0]
    assert run_trial(cfg).layers is None
    assert run_population([cfg], [None])[0].layers is None
    assert TrialResult.of_divergence(1, 0.0).layers is None


# A 2 x 2 grid of tiny trials of a BatchNorm MLP
TINY = [
    "sweep.variants=[]",
    "optimizer=sgd",
    "optimizer.decay=decoupled",
    "model=mlp_bn",
    "model.frozen_head=false",
    "sweep.ranges.sgd.lr={min: 1e-2, max: 1e-1, num: 2}",
    "sweep.weight_decay={min: 1e-4, max: 1e-3, num: 2}",
    "model.width=16",
    "data.num_samples=600",
    "data.val_size=100",
    "train.epochs=2",
    "train.threads=1",
    "tracking=disabled",
]


@pytest.fixture(scope="module", params=[1, 4], ids=["sequential", "population"])
def swept(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(f"sweep-p{request.param}")
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", f"hydra.run.dir={out}", *TINY,
         f"sweep.population={request.param}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _storage(out: Path) -> str:
    dbs = sorted(out.rglob("*.db"))
    assert dbs, sorted(p.name for p in out.rglob("*"))
    return f"sqlite:///{dbs[0]}"


@pytest.mark.slow
def test_every_trial_stores_its_layers_and_the_sweep_writes_layers_csv(swept):
    storage = _storage(swept)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 4
    for t in trials:
        layers = t.user_attrs["layers"]
        json.dumps(layers)  # JSON as stored
        assert len(layers) == 3
        assert [e["scale_invariant"] for e in layers.values()] == [True, True, False]
        assert all(e["angle"] > 0 and e["norm"] > 0 for e in layers.values())
    # results.csv keeps its columns; layers.csv beside it holds the same numbers
    assert list(pd.read_csv(swept / "results.csv").columns) == list(RESULTS_COLUMNS)
    from_db = load_layers(storage)
    from_csv = load_layers(swept / "results.csv")
    assert len(from_db) == len(from_csv) == 12
    key = ["trial", "layer"]
    a, b = from_db.sort_values(key), from_csv.sort_values(key)
    np.testing.assert_allclose(a["angle"], b["angle"], rtol=1e-12)
    assert set(from_db["variant"]) == {"sgd/decoupled"}
    assert (swept / "figures" / "layers.png").is_file()


@pytest.mark.slow
def test_figures_cli_from_the_storage_writes_one_facet_per_layer(swept, tmp_path):
    out = tmp_path / "figs"
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.figures", _storage(swept), "--out", str(out),
         "--formats", "png", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "layers.png").is_file()
    written = pd.read_csv(out / "layers.csv")
    assert written["layer"].nunique() == 3 and len(written) == 12
    si = written[written["scale_invariant"]]
    assert np.isfinite(si["predicted_angle"]).all() and (si["predicted_angle"] > 0).all()
    # the figure itself: one facet per layer, named and marked
    layers = layer_theory(load_layers(_storage(swept)), load_results(_storage(swept)))
    fig = layers_figure(layers)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert len(titles) == 3
    assert sum(t.endswith("\nscale-invariant") for t in titles) == 2
    assert sum(t.endswith("not scale-invariant") for t in titles) == 1
    assert {t.split("\n")[0] for t in titles} == set(written["layer"])


@pytest.mark.slow
def test_a_results_csv_without_layers_gets_no_layer_figure(swept, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "results.csv").write_bytes((swept / "results.csv").read_bytes())
    assert load_layers(alone / "results.csv").empty
    out = tmp_path / "figs"
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.figures", str(alone / "results.csv"), "--out",
         str(out), "--formats", "png", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (out / "heatmaps.png").is_file() and not (out / "layers.png").exists()
