"""analysis metrics on synthetic grids with known structure, and the figures CLI (issue 8)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.figures import main as figures_main
from analysis.metrics import coupling_slope, random_search_regret, separability

LRS = np.geomspace(1e-4, 1e-1, 9)
WDS = np.geomspace(1e-6, 1e-1, 11)


def test_error_of_lr_times_wd_gives_slope_minus_one():
    L, W = np.meshgrid(np.log(LRS), np.log(WDS), indexing="ij")
    E = 0.1 + 0.01 * (L + W - np.log(1e-6)) ** 2
    assert coupling_slope(LRS, WDS, E) == pytest.approx(-1.0, abs=0.15)


def test_additive_error_gives_slope_zero_and_separability_one():
    L, W = np.meshgrid(np.log(LRS), np.log(WDS), indexing="ij")
    E = 0.1 + 0.01 * (L - np.log(1e-2)) ** 2 + 0.02 * (W - np.log(1e-4)) ** 2
    assert coupling_slope(LRS, WDS, E) == pytest.approx(0.0, abs=1e-9)
    assert separability(E, log=False) == pytest.approx(1.0)
    coupled = 0.1 + 0.01 * (L + W - np.log(1e-6)) ** 2
    assert separability(coupled, log=False) < 0.9


def test_regret_decreases_to_zero_at_grid_size():
    rng = np.random.default_rng(0)
    E = rng.uniform(0.05, 0.9, (5, 6))
    r = random_search_regret(E)
    assert len(r) == 30 and r[-1] == pytest.approx(0.0)
    assert np.all(np.diff(r) <= 1e-12) and r[0] == pytest.approx(E.mean() - E.min())


def test_figures_cli_from_results_csv(tmp_path):
    rows = []
    L, W = np.meshgrid(LRS, WDS, indexing="ij")
    for variant, coupled in (("adam/l2", True), ("adam/independent", False)):
        for seed in (0, 1):
            for lr, wd in zip(L.ravel(), W.ravel()):
                if coupled:  # best wd = 1e-6 / lr: a diagonal valley
                    err = 0.1 + 0.001 * (np.log(lr * wd) - np.log(1e-6)) ** 2
                else:  # best wd = 1e-4 whatever the lr
                    err = 0.1 + 0.001 * (np.log(wd / 1e-4) ** 2 + np.log(lr / 1e-2) ** 2)
                err += 0.001 * seed
                rows.append(
                    dict(
                        study=variant,
                        optimizer="adam",
                        decay=variant.split("/")[1],
                        lr=lr,
                        weight_decay=wd,
                        seed=seed,
                        state="COMPLETE",
                        test_error=min(err, 0.9),
                        val_error=err,
                        diverged=False,
                    )
                )
    rows[0].update(diverged=True, test_error=1.0)
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    out = tmp_path / "figs"
    assert figures_main([str(tmp_path), "--out", str(out), "--bootstrap", "20"]) == 0
    for name in ("heatmaps.png", "heatmaps.pdf", "regret.png", "metrics.csv", "regret.csv"):
        assert (out / name).stat().st_size > 0
    m = pd.read_csv(out / "metrics.csv").set_index("variant")
    assert m.loc["adam/independent", "coupling_slope"] == pytest.approx(0.0, abs=0.01)
    assert m.loc["adam/l2", "coupling_slope"] < -0.5
    assert figures_main([str(tmp_path / "nope.csv"), "--out", str(out)]) == 2


def test_wd_gain_is_the_best_error_at_the_smallest_wd_minus_the_best():
    from analysis.metrics import variant_metrics

    rows = []
    for lr in (1e-3, 1e-2, 1e-1):
        for wd in (1e-5, 1e-4, 1e-3):
            # wd helps: the smallest wd costs 0.05 at every lr; lr 1e-2 is best
            err = 0.2 + (0.05 if wd == 1e-5 else 0.0) + (0.0 if lr == 1e-2 else 0.03)
            flat = 0.2 + (0.0 if lr == 1e-2 else 0.03)  # wd makes no difference
            for variant, e in (("sgd/l2", err), ("sgd/independent", flat)):
                rows.append(
                    dict(study=variant, variant=variant, optimizer="sgd", decay=variant[4:], lr=lr,
                         weight_decay=wd, seed=0, state="COMPLETE", test_error=e,
                         val_error=e, diverged=False)
                )  # fmt: skip
    frame = pd.DataFrame(rows)
    helps = variant_metrics(frame, "sgd/l2", reps=5)
    assert helps["best_error_smallest_wd"] == pytest.approx(0.25)
    assert helps["wd_gain"] == pytest.approx(0.05)
    assert variant_metrics(frame, "sgd/independent", reps=5)["wd_gain"] == pytest.approx(0.0)
