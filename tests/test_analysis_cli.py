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

FILES = ("heatmaps", "regret", "valley")
TABLES = ("metrics.csv", "regret.csv", "valley.csv", "cells.csv")


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
    assert "coupling slope" in printed and "adam/independent" in printed
    for name in FILES:
        png = matplotlib.image.imread(out / f"{name}.png")
        assert png.shape[0] > 300 and png.shape[1] > 600  # rendered, paper-sized
        assert (out / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
    for name in TABLES:
        assert (out / name).stat().st_size > 0
    assert not list(out.glob(".partial-*"))
    m = pd.read_csv(out / "metrics.csv").set_index("variant")
    assert list(m.index) == ["sgd/l2", "sgd/independent", "adam/l2", "adam/independent"]
    for col in (
        "coupling_slope",
        "coupling_slope_lo",
        "coupling_slope_hi",
        "near_optimal_fraction",
        "separability",
        "best_error",
        "best_lr",
        "best_weight_decay",
        "trials_to_near_optimal",
    ):
        assert m[col].notna().all(), col
    assert m.loc["adam/l2", "coupling_slope"] == pytest.approx(-1, abs=0.2)
    assert m.loc["adam/independent", "coupling_slope"] == pytest.approx(0, abs=0.15)
    reg = pd.read_csv(out / "regret.csv")
    assert reg.groupby("variant")["k"].max().eq(42).all()
    assert reg.groupby("variant")["regret"].apply(lambda r: r.is_monotonic_decreasing).all()


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
    assert "wrote 7 files" in proc.stdout  # 3 figures (png only) + 4 tables
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
    assert main([str(tmp_path), "--out", str(out), "--bootstrap", "20"]) == 0
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
