"""experiment=fig2_mnist1d scaled down, end to end: config -> studies -> trials -> analysis.

The preset is 12 studies x 7 x 9 cells x 5 seeds; here every grid is
3 x 3 x 2 seeds of a 16-wide net trained for 2 epochs, through the real CLI and the real
analysis CLI, so that the experiment's config, its per-variant ranges, its two models and the
figures it feeds are exercised together.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent

SMALL = [
    "experiment=fig2_mnist1d",
    "sweep.seeds=2",
    "sweep.lr.num=3",
    "sweep.weight_decay.num=3",
    "sweep.ranges.sgd.lr.num=3",
    "sweep.ranges.sgd-decoupled.weight_decay.num=3",
    "sweep.ranges.adam-decoupled.weight_decay.num=3",
    "model.width=16",
    "data.num_samples=1500",
    "data.val_size=200",
    "data.n_train=300",
    "train.epochs=2",
    "tracking=disabled",
]
VARIANTS = ["sgd/l2", "sgd/decoupled", "sgd/independent", "adam/l2", "adam/decoupled",
            "adam/independent"]  # fmt: skip


@pytest.mark.slow
def test_fig2_mnist1d_scaled_down_end_to_end(tmp_path):
    out = tmp_path / "fig2"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", f"hydra.run.dir={out}", *SMALL],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "12 studies, 216 cells in all" in proc.stdout

    # the studies: one per model x variant, every cell COMPLETE exactly once
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == sorted(
        f"fig2_mnist1d-{m}-{v.replace('/', '-')}" for m in ("mlp", "mlp_bn") for v in VARIANTS
    )
    for name in names:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials()
        cells = [t.user_attrs["cell"] for t in trials if t.state.name == "COMPLETE"]
        assert len(cells) == len(set(cells)) == 18, name
        cfg = trials[0].user_attrs["config"]
        assert cfg["model"]["width"] == 16 and cfg["data"]["n_train"] == 300
        assert cfg["model"]["name"] == ("mlp_bn" if "-mlp_bn-" in name else "mlp")

    # results.csv: each variant on its own grid (SGD's lr range, AdamW's wd range)
    res = pd.read_csv(out / "results.csv")
    assert len(res) == 216 and set(res.model) == {"mlp", "mlp_bn"}
    lrs = res.groupby("optimizer").lr.agg(["min", "max"])
    assert lrs.loc["sgd"].tolist() == pytest.approx([1e-3, 1.0])
    assert lrs.loc["adam"].tolist() == pytest.approx([1e-4, 1e-1])
    wd = res[res.decay == "decoupled"].groupby("optimizer").weight_decay.max()
    assert wd["adam"] == pytest.approx(10.0) and wd["sgd"] == pytest.approx(1.0)

    # the analysis the sweep ran: one figure set per model, metrics for all 12 (model, variant)
    figs = out / "figures"
    m = pd.read_csv(figs / "metrics.csv")
    assert len(m) == 12 and set(m.model) == {"mlp", "mlp_bn"}
    assert set(m.variant) == set(VARIANTS)
    assert (m.n_seeds == 2).all() and (m.n_cells == 9).all()
    assert m[["best_error", "wd_gain", "near_optimal_fraction"]].notna().all().all()
    subdirs = sorted(p.name for p in figs.iterdir() if p.is_dir())
    assert subdirs == ["mlp", "mlp_bn"], subdirs
    for d in subdirs:
        assert (figs / d / "heatmaps.png").stat().st_size > 10_000
        assert (figs / d / "heatmaps.pdf").stat().st_size > 1_000

    # and the analysis CLI regenerates the same metrics from the data alone
    again = subprocess.run(
        [sys.executable, "-m", "analysis.figures", str(out), "--out", str(tmp_path / "again")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    m2 = pd.read_csv(tmp_path / "again" / "metrics.csv")
    key = ["model", "variant"]
    pd.testing.assert_frame_equal(
        m.sort_values(key).reset_index(drop=True)[key + ["best_error", "wd_gain"]],
        m2.sort_values(key).reset_index(drop=True)[key + ["best_error", "wd_gain"]],
    )


@pytest.mark.slow
def test_committed_figures_come_from_the_committed_run(tmp_path):
    """analysis/gallery/mnist1d (quoted in analysis/RESULTS.md) regenerates from its results.csv."""
    gallery = ROOT / "analysis" / "gallery" / "mnist1d"
    res = pd.read_csv(gallery / "results.csv")
    assert len(res) == 3780 and (res.state == "COMPLETE").all()
    assert res.groupby(["model", "optimizer", "decay"]).size().eq(7 * 9 * 5).all()
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.figures", str(gallery / "results.csv"),
         "--out", str(tmp_path), "--formats", "png", "--dpi", "40", "--quiet"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    committed = pd.read_csv(gallery / "metrics.csv")
    again = pd.read_csv(tmp_path / "metrics.csv")
    pd.testing.assert_frame_equal(committed, again)


@pytest.mark.parametrize("name", ["quick", "fig2_mnist1d", "fig2_cifar10"])
def test_experiment_presets_compose_and_validate(name):
    from harness.config import compose_config, validate
    from harness.population import supports
    from harness.sweep import plan

    cfg = compose_config([f"experiment={name}"])
    validate(cfg)
    assert cfg.name == name
    for v in plan.variants(cfg):
        vcfg = plan.variant_config(cfg, v)
        validate(vcfg)
        lrs, wds, _ = plan.grid_axes(vcfg.sweep)
        assert len(lrs) >= 6 and len(wds) >= 6, v
        assert supports(vcfg), f"{name} {v.label} would not run as a population"
