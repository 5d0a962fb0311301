"""``python -m analysis.figures`` end to end: sources in, figures and tables out, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib.image
import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from analysis.figures import main
from analysis.synthetic import synthetic_results

FILES = ("heatmaps", "regret", "valley", "budget")
TABLES = (
    "metrics.csv",
    "regret.csv",
    "regret_seeds.csv",
    "valley.csv",
    "identity.csv",
    "cells.csv",
    "budget.csv",
)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    for v in ("sgd/l2", "sgd/independent", "adam/l2", "adam/independent"):  # one csv per run
        sub = d / v.replace("/", "-")
        sub.mkdir()
        synthetic_results([v], n_lr=6, n_wd=7, seeds=3).to_csv(sub / "results.csv", index=False)
    return d


def test_cli_from_a_directory_of_results(results_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main([str(results_dir), "--out", str(out), "--bootstrap", "30"]) == 0
    printed = capsys.readouterr().out
    assert "slope" in printed and "adam/independent" in printed
    for name in FILES:
        png = matplotlib.image.imread(out / f"{name}.png")
        assert png.shape[0] > 300 and png.shape[1] > 600  # rendered, paper-sized
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    for name in TABLES:
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".partial-*"))
    m = pd.read_csv(out / "metrics.csv").set_index("variant")
    assert list(m.index) == ["sgd/l2", "sgd/independent", "adam/l2", "adam/independent"]
    # 3 seeds: seed-bootstrap intervals around each estimate, and the per-seed range
    assert (m["coupling_slope_lo"] <= m["coupling_slope"]).all()
    assert (m["coupling_slope"] <= m["coupling_slope_hi"]).all()
    assert m["coupling_slope_interval"].str.startswith("seed bootstrap").all()
    assert (m["coupling_slope_seed_n"] == 3).all() and (m["selection"] == "val+crossfit").all()
    assert (m["wd_gain_lo"] <= m["wd_gain_hi"]).all() and m["noise_floor"].gt(0).all()
    for col in (
        "coupling_slope",
        "coupling_slope_seed_min",
        "coupling_slope_seed_max",
        "near_optimal_fraction",
        "near_optimal_fraction_abs",
        "transfer_regret_1",
        "transfer_regret_2",
        "separability_all",
        "separability",
        "best_error",
        "best_lr",
        "best_weight_decay",
        "trials_to_near_optimal",
        "trials_to_within_1pt",
        "noise_floor",
        "best_error_lo",
    ):
        assert m[col].notna().all(), col
    assert m.loc["adam/l2", "coupling_slope"] == pytest.approx(-1, abs=0.2)
    assert m.loc["adam/independent", "coupling_slope"] == pytest.approx(0, abs=0.15)
    assert m["near_optimal_fraction_rel"].isna().all()  # only when asked for (--rel-tol)
    reg = pd.read_csv(out / "regret.csv")
    assert reg.groupby("variant")["k"].max().eq(42).all()
    assert reg.groupby("variant")["regret"].apply(lambda r: r.is_monotonic_decreasing).all()
    seeds = pd.read_csv(out / "regret_seeds.csv")
    assert seeds.groupby("variant")["seed"].nunique().eq(3).all()
    assert "chosen on validation" in printed and "seed-bootstrap intervals" in printed
    budget = pd.read_csv(out / "budget.csv")
    assert set(budget["box"]) == {"box", "half"}
    full = budget[budget["box"] == "box"]
    assert full.groupby("variant")["k"].max().eq(42).all()  # the whole grid without a box
    # all 42 cells drawn: the choice is the grid's best on validation, reported on test
    last = full.sort_values("k").groupby("variant").last()
    assert np.allclose(last["expected_error"], m.loc[last.index, "best_error"])
    assert (full.groupby("variant")["expected_error"].first() > last["expected_error"]).all()


@pytest.mark.slow
def test_cli_process_from_an_optuna_storage(tmp_path):
    """The real command on a real SQLite study, as a subprocess."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    dists = {
        "lr": FloatDistribution(1e-5, 1, log=True),
        "weight_decay": FloatDistribution(1e-7, 1, log=True),
        "seed": IntDistribution(0, 9),
    }
    for v in ("adam/l2", "adam/independent"):
        opt, dec = v.split("/")
        study = optuna.create_study(study_name=f"tiny-{opt}-{dec}", storage=url)
        for k, val in dict(experiment="tiny", optimizer=opt, decay=dec).items():
            study.set_user_attr(k, val)
        for r in synthetic_results([v], n_lr=4, n_wd=4, seeds=1).itertuples():
            study.add_trial(
                create_trial(
                    state=TrialState.COMPLETE,
                    value=r.val_error,
                    distributions=dists,
                    params={"lr": r.lr, "weight_decay": r.weight_decay, "seed": r.seed},
                    user_attrs={
                        "test_error": r.test_error,
                        "val_error": r.val_error,
                        "diverged": r.diverged,
                        "optimizer": opt,
                        "decay": dec,
                    },
                )
            )
    out = tmp_path / "figs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis.figures",
            f"{url}#tiny-adam-l2",
            "--out",
            str(out),
            "--annotate",
            "--formats",
            "png",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote 12 files" in proc.stdout  # 4 figures (png only) + 8 tables (decay_rule.csv)
    m = pd.read_csv(out / "metrics.csv")
    assert list(m["variant"]) == ["adam/l2"] and m["n_cells"].item() == 16
    assert not (out / "heatmaps.pdf").exists()


def test_cli_from_one_results_csv(tmp_path):
    """A single results.csv with a diagonal valley (l2) and an axis-aligned basin (independent)."""
    lrs, wds = np.geomspace(1e-4, 1e-1, 9), np.geomspace(1e-6, 1e-1, 11)
    rows = []
    L, W = np.meshgrid(lrs, wds, indexing="ij")
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
    # errors that are no counts: a large evaluation set, so that the 0.1-point seed offsets and
    # the valley's gains stand above the noise
    assert main([str(tmp_path), "--out", str(out), "--bootstrap", "20", "--n-eval", "1000000"]) == 0
    for name in ("heatmaps.png", "heatmaps.pdf", "regret.png", "metrics.csv", "regret.csv"):
        assert (out / name).stat().st_size > 0
    m = pd.read_csv(out / "metrics.csv").set_index("variant")
    assert m.loc["adam/independent", "coupling_slope"] == pytest.approx(0.0, abs=0.01)
    assert m.loc["adam/l2", "coupling_slope"] < -0.5
    assert main([str(tmp_path / "nope.csv"), "--out", str(out)]) == 2


def test_experiments_are_never_mixed(results_dir, tmp_path):
    other = synthetic_results(["sgd/l2"], n_lr=4, n_wd=4, seeds=1, experiment="other")
    csv = tmp_path / "other.csv"
    other.to_csv(csv, index=False)
    out = tmp_path / "figs"
    assert (
        main(
            [
                str(results_dir),
                str(csv),
                "--out",
                str(out),
                "--quiet",
                "--formats",
                "png",
                "--bootstrap",
                "0",
            ]
        )
        == 0
    )
    assert (out / "synthetic" / "heatmaps.png").exists() and (
        out / "other" / "heatmaps.png"
    ).exists()
    both = pd.read_csv(out / "metrics.csv")
    assert sorted(set(both["experiment"])) == ["other", "synthetic"] and len(both) == 5
    out2 = tmp_path / "one"
    assert (
        main(
            [
                str(results_dir),
                str(csv),
                "--experiment",
                "other",
                "--out",
                str(out2),
                "--quiet",
                "--formats",
                "png",
            ]
        )
        == 0
    )
    assert (out2 / "heatmaps.png").exists() and not (out2 / "other").exists()


def test_help_and_bad_input(tmp_path, results_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.figures", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "--out" in proc.stdout and "sqlite:///" in proc.stdout
    out = tmp_path / "figs"
    out.mkdir()
    (out / "metrics.csv").write_text("old\n")
    empty = tmp_path / "empty.csv"
    pd.DataFrame(columns=list(synthetic_results(n_lr=1, n_wd=1, seeds=1).columns)).to_csv(empty)
    runs = tmp_path / "runs.json"
    runs.write_text(json.dumps({"not": "runs"}))
    cases = [
        ([str(tmp_path / "nope.csv"), "--out", str(out)], "nope.csv: no such file"),
        ([f"sqlite:///{tmp_path / 'nope.db'}", "--out", str(out)], "no such SQLite file"),
        ([str(empty), "--out", str(out)], "no COMPLETE trials"),
        ([str(results_dir)], "required: --out"),
        ([str(results_dir), "--out", str(out), "--metric", "loss"], "--metric"),
        ([str(results_dir), "--out", str(out), "--formats", "gif"], "--formats gif"),
        ([str(results_dir), "--out", str(out), "--bins", "3x"], "--bins 3x"),
        ([str(results_dir), "--out", str(out), "--study", "x"], "study x: no study named so"),
    ]
    for argv, msg in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "analysis.figures", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2, (argv, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and msg in lines[0] and lines[0].startswith("error: "), proc.stderr
    assert [p.name for p in out.iterdir()] == ["metrics.csv"]  # nothing (half-)written
    assert (out / "metrics.csv").read_text() == "old\n"


def test_cli_scattered_trials_get_a_surface_not_a_grid(tmp_path, capsys):
    """Random search: a scatter with the fitted surface instead of heatmaps, metrics on the
    surface, and a variant with too few trials reported as not applicable."""
    from analysis.synthetic import surface

    rng = np.random.default_rng(0)
    rows = []
    for v, n in (("adam/l2", 120), ("adam/independent", 12)):
        opt, dec = v.split("/")
        lr = np.exp(rng.uniform(np.log(10**-4.5), np.log(10**-1.3), n))
        wd = np.exp(rng.uniform(np.log(10**-5.5), np.log(10**-1.5), n))
        err, div = surface(opt, dec, lr, wd)
        rows.append(pd.DataFrame(dict(study=v, optimizer=opt, decay=dec, lr=lr, weight_decay=wd,
                                      seed=0, state="COMPLETE", test_error=err, diverged=div)))  # fmt: skip
    pd.concat(rows).to_csv(tmp_path / "results.csv", index=False)
    out = tmp_path / "figs"
    assert main([str(tmp_path / "results.csv"), "--out", str(out), "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "fitted surface" in printed and "(surface)" in printed
    assert (out / "scatter.png").exists() and not (out / "heatmaps.png").exists()
    m = pd.read_csv(out / "metrics.csv").set_index("variant")
    assert m.loc["adam/l2", "analysis_grid"] == "surface"
    assert m.loc["adam/l2", "coupling_slope"] == pytest.approx(-1, abs=0.3)
    assert m.loc["adam/independent", "analysis_grid"] == "none"
    assert m.loc["adam/independent", ["coupling_slope", "separability"]].isna().all()
    import matplotlib.pyplot as plt

    from analysis.figures import analyze, render
    from analysis.load import load_results

    for name, fig in render(analyze(load_results(tmp_path / "results.csv"), reps=0)).items():
        assert _legends_inside(fig), name
        plt.close(fig)
    # --bins N still bins them onto a grid when asked
    out2 = tmp_path / "binned"
    assert main([str(tmp_path / "results.csv"), "--out", str(out2), "--bins", "6", "--quiet",
                 "--formats", "png", "--bootstrap", "0"]) == 0  # fmt: skip
    assert (out2 / "heatmaps.png").exists()


def _legends_inside(fig) -> bool:
    fig.canvas.draw()
    box = fig.bbox
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends, "no legend"
    for lg in legends:
        e = lg.get_window_extent()
        if e.x0 < box.x0 - 1 or e.x1 > box.x1 + 1 or e.y0 < box.y0 - 1 or e.y1 > box.y1 + 1:
            return False
    return True


@pytest.mark.parametrize("variants", [["adam/l2"], ["sgd/l2", "adam/independent"], None])
def test_no_legend_is_cut_off(variants):
    import matplotlib.pyplot as plt

    from analysis.figures import analyze, render
    from analysis.load import load_results

    frame = load_results(synthetic_results(variants or ["sgd/l2", "sgd/independent", "adam/l2",
                                                        "adam/independent"],
                                           n_lr=5, n_wd=5, seeds=2))  # fmt: skip
    figs = render(analyze(frame, reps=0))
    assert set(figs) == {"heatmaps", "regret", "valley", "budget"}
    for name, fig in figs.items():
        assert _legends_inside(fig), name
        plt.close(fig)
