"""The jupytext notebooks in analysis/notebooks run top to bottom on a tiny results set."""

from __future__ import annotations

from pathlib import Path

import jupytext
import pytest
from nbclient import NotebookClient

from analysis.synthetic import synthetic_results

NOTEBOOKS = sorted((Path(__file__).parents[1] / "analysis" / "notebooks").glob("*.py"))


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    synthetic_results(["sgd/l2", "sgd/independent"], n_lr=4, n_wd=4, seeds=2).to_csv(
        d / "results.csv", index=False
    )
    return d


def test_there_are_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"fig2_heatmaps.py", "tuning_cost.py"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tiny_results, tmp_path, monkeypatch):
    out = tmp_path / "figures"
    monkeypatch.setenv("LRWD_RESULTS", str(tiny_results))
    monkeypatch.setenv("LRWD_FIGURES", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = jupytext.read(path)
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    pngs = sorted(p.name for p in out.glob("*.png"))
    want = {
        "fig2_heatmaps": ["heatmaps.png", "valley.png"],
        "tuning_cost": ["near_optimal.png", "regret.png"],
    }[path.stem]
    assert pngs == want and all((out / p).stat().st_size > 10_000 for p in pngs)
