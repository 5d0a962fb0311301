"""The jupytext notebooks in analysis/notebooks run top to bottom on a tiny results set."""

from __future__ import annotations

import pytest

from analysis.run_notebooks import notebooks, run_notebook
from analysis.synthetic import synthetic_results

FIGURES = {
    "fig2_heatmaps": ["heatmaps.pdf", "heatmaps.png", "valley.png"],
    "tuning_cost": ["near_optimal.png", "regret.pdf", "regret.png"],
}


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    synthetic_results(["sgd/l2", "sgd/independent"], n_lr=4, n_wd=4, seeds=2).to_csv(
        d / "results.csv", index=False
    )
    return d


def test_every_notebook_is_tested():
    assert sorted(p.stem for p in notebooks()) == sorted(FIGURES)


@pytest.mark.slow
@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_runs(path, tiny_results, tmp_path, monkeypatch):
    import jupytext

    assert any("parameters" in c.metadata.get("tags", []) for c in jupytext.read(path).cells)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    out = tmp_path / "figures"
    nb = run_notebook(path, [str(tiny_results)], out, timeout=120)
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert "sgd/independent" in "".join(o.get("text", "") for o in outputs)
    made = sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".pdf"))
    assert made == FIGURES[path.stem]
    assert all((out / p).stat().st_size > 5_000 for p in made)
    assert (out / f"{path.stem}.ipynb").exists()
