"""The scope ladder: ladder.csv (one row per rung and variant) and ladder.png from the arms of
one experiment."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.ladder import (
    LADDER_COLUMNS,
    ladder_arms,
    ladder_metrics,
    ladder_table,
    main,
    write_ladder,
)
from analysis.load import load_results
from analysis.metrics import Options
from analysis.synthetic import synthetic_results

VARIANTS = ("adam/l2", "adam/independent")
# rung -> (decayed elements, of which scale-invariant) per trial
SCOPE = {"a": (1000, 1000), "b": (1000, 1000), "c": (1300, 1000)}


def arms(scope=SCOPE, columns=True) -> pd.DataFrame:
    parts = []
    for k, (rung, (total, si)) in enumerate(scope.items()):
        part = synthetic_results(
            VARIANTS, n_lr=5, n_wd=6, seeds=3, experiment=f"ladder-{rung}", rng_seed=k
        )
        if columns:
            part["decayed_numel"] = total
            part["decayed_si_numel"] = si
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return load_results(arms())


@pytest.fixture(scope="module")
def metrics(frame) -> pd.DataFrame:
    return ladder_metrics(frame, Options(reps=60))


def test_arms_of_one_experiment_are_a_ladder_in_natural_order():
    assert ladder_arms(["x-b", "x-a", "x-c"]) == ("x", {"a": "x-a", "b": "x-b", "c": "x-c"})
    assert list(ladder_arms(["t-e160", "t-e80"])[1]) == ["e80", "e160"]
    assert ladder_arms(["x-a"]) is None  # one rung
    assert ladder_arms(["x-a", "y-b"]) is None  # two experiments
    assert ladder_arms(["fig2_mnist1d", "x-a"]) is None  # not an arm


def test_ladder_table_has_one_row_per_rung_and_variant(frame, metrics):
    table = ladder_table(metrics, frame)
    assert list(table.columns) == list(LADDER_COLUMNS)
    assert list(zip(table["rung"], table["variant"])) == [(r, v) for r in SCOPE for v in VARIANTS]
    assert set(table["ladder"]) == {"ladder"}
    # the numbers are the metrics package's, taken over unchanged
    for _, row in table.iterrows():
        m = metrics[
            (metrics["experiment"] == row["experiment"]) & (metrics["variant"] == row["variant"])
        ]
        assert row["slope"] == pytest.approx(float(m["coupling_slope"].iloc[0]), nan_ok=True)
        assert row["transfer_regret_hi"] == pytest.approx(
            float(m["transfer_regret_1_hi"].iloc[0]), nan_ok=True
        )
        assert row["wd_gain_lo"] == pytest.approx(float(m["wd_gain_lo"].iloc[0]), nan_ok=True)
        assert row["trials"] == 5 * 6 * 3
    # the synthetic coupled form has slope -1, the independent one 0 (analysis.synthetic)
    coupled = table[table["variant"] == "adam/l2"]["slope"].to_numpy(float)
    independent = table[table["variant"] == "adam/independent"]["slope"].to_numpy(float)
    assert np.all(np.abs(coupled + 1) < 0.35) and np.all(np.abs(independent) < 0.35)
    assert np.all(table["slope_lo"] <= table["slope"]) and np.all(
        table["slope"] <= table["slope_hi"]
    )
    share = table.groupby("rung")["si_share"].first()
    assert share.to_dict() == pytest.approx({"a": 1.0, "b": 1.0, "c": 1000 / 1300})


def test_share_is_nan_without_the_columns(metrics):
    old = load_results(arms(columns=False))
    table = ladder_table(metrics, old)
    assert len(table) == len(SCOPE) * len(VARIANTS)
    assert table["si_share"].isna().all()
    assert ladder_table(metrics, None)["si_share"].isna().all()


def test_figure_and_table_are_written(tmp_path, frame, metrics):
    written = write_ladder(ladder_table(metrics, frame), tmp_path, ("png",))
    assert sorted(p.name for p in written) == ["ladder.csv", "ladder.png"]
    assert (tmp_path / "ladder.png").stat().st_size > 10_000
    back = pd.read_csv(tmp_path / "ladder.csv")
    assert len(back) == len(SCOPE) * len(VARIANTS)
    assert math.isclose(back.loc[back["rung"] == "c", "si_share"].iloc[0], 1000 / 1300)
    # not a ladder: nothing written
    assert write_ladder(ladder_table(metrics.assign(experiment="one"), frame), tmp_path / "x") == []
    assert not (tmp_path / "x").exists()


def test_cli_writes_the_ladder_and_refuses_results_that_are_not_one(tmp_path, capsys):
    src = tmp_path / "results.csv"
    arms({"a": (10, 5), "b": (10, 10)}).to_csv(src, index=False)
    assert main([str(src), "--out", str(tmp_path / "out"), "--bootstrap", "20"]) == 0
    assert "ladder: rungs a, b; 4 rows" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "out" / "ladder.csv")
    assert table["si_share"].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert (tmp_path / "out" / "ladder.png").exists()
    one = tmp_path / "one.csv"
    synthetic_results(VARIANTS, n_lr=4, n_wd=4, seeds=2, experiment="solo").to_csv(one, index=False)
    assert main([str(one), "--out", str(tmp_path / "no")]) == 2
    assert "not the arms <name>-<rung> of one experiment" in capsys.readouterr().err


@pytest.mark.slow
def test_figures_write_the_ladder_beside_metrics_for_arms_only(tmp_path):
    from analysis.figures import analyze, write
    from analysis.load import split_groups

    def analyses(frame):
        return [analyze(part, label=label, reps=20) for label, part in split_groups(frame)]

    small = {"a": (10, 10), "b": (20, 10)}
    frame = load_results(arms(small).query("lr < 0.01"))
    written = write(analyses(frame), tmp_path / "arms", ("png",))
    names = {p.relative_to(tmp_path / "arms").as_posix() for p in written}
    assert {"ladder.csv", "ladder.png", "metrics.csv", "ladder_a/metrics.csv"} <= names
    table = pd.read_csv(tmp_path / "arms" / "ladder.csv")
    assert list(zip(table["rung"], table["si_share"])) == [
        ("a", 1.0), ("a", 1.0), ("b", 0.5), ("b", 0.5)
    ]  # fmt: skip
    solo = load_results(arms(small).query("lr < 0.01").assign(experiment="solo"))
    written = write(analyses(solo), tmp_path / "solo", ("png",))
    assert not any(p.name.startswith("ladder") for p in written)
