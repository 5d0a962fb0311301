"""The results page's timescale, ladder and collapse sections: every verdict follows the
intervals (or, for the collapse R^2, the stated tolerance), and the sections render from a
gallery's tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import results_arms as arms
from analysis.results_page import GALLERY, render


def _exps(rows):
    base = {"axis": "n_train", "lr_ref": 3e-3, "values": "1000 2000 8000", "seeds": 5,
            "interval": "bootstrap", "heldout": ""}  # fmt: skip
    return pd.DataFrame([{**base, **r} for r in rows])


def test_exponent_verdicts_follow_the_interval():
    f = arms.exponent_findings(
        _exps(
            [
                {"variant": "adam/independent", "exponent": -0.9, "exponent_lo": -1.2,
                 "exponent_hi": -0.6, "predicted": -1.0},
                {"variant": "adam/decoupled", "exponent": -0.4, "exponent_lo": -0.6,
                 "exponent_hi": -0.2, "predicted": -1.0},
                {"variant": "adam/l2", "exponent": -0.5, "exponent_lo": -0.7,
                 "exponent_hi": -0.3, "predicted": float("nan")},
                {"variant": "adam/decoupled", "axis": "epochs", "exponent": -2.0,
                 "exponent_lo": -2.5, "exponent_hi": -1.5, "predicted": -1.0},
            ]
        )
    )  # fmt: skip
    assert len(f.supports) == 1 and f.supports[0].startswith("adam/independent")
    assert "-0.90 [-1.20, -0.60]" in f.supports[0] and "training-set size N" in f.supports[0]
    assert len(f.contradicts) == 2
    assert "flatter than predicted" in f.contradicts[0]
    grows = arms.exponent_findings(
        _exps([{"variant": "adam/independent", "axis": "epochs", "exponent": 1.0,
                "exponent_lo": 0.2, "exponent_hi": 1.9, "predicted": -1.0}])
    )  # fmt: skip
    assert "grows with it instead of falling" in grows.contradicts[0]
    assert "steeper than predicted" in f.contradicts[1] and "training length" in f.contradicts[1]
    assert len(f.open) == 1 and "predicts none" in f.open[0]
    # an interval that holds the prediction and 0 as well decides nothing
    wide = arms.exponent_findings(
        _exps([{"variant": "adam/decoupled", "exponent": -0.4, "exponent_lo": -1.1,
                "exponent_hi": 1.2, "predicted": -1.0}])
    )  # fmt: skip
    assert not wide.supports and not wide.contradicts and "decides nothing" in wide.open[0]
    # the same numbers without an interval decide nothing
    no_iv = arms.exponent_findings(
        _exps([{"variant": "adam/decoupled", "exponent": -0.4, "exponent_lo": float("nan"),
                "exponent_hi": float("nan"), "predicted": -1.0}])
    )  # fmt: skip
    assert not no_iv.supports and not no_iv.contradicts and "without an interval" in no_iv.open[0]


def _ladder(regrets: dict[str, dict[str, tuple[float, float, float]]]) -> pd.DataFrame:
    rows = []
    for rung, by in regrets.items():
        for v, (x, lo, hi) in by.items():
            rows.append({"ladder": "L", "rung": rung, "experiment": f"L-{rung}", "variant": v,
                         "slope": 0.0, "slope_lo": -0.1, "slope_hi": 0.1,
                         "transfer_regret": x, "transfer_regret_lo": lo,
                         "transfer_regret_hi": hi, "wd_gain": 0.01, "wd_gain_lo": 0.005,
                         "wd_gain_hi": 0.02, "si_share": {"a": 1.0, "b": 0.9, "c": 0.5}[rung],
                         "decayed_numel": 10, "decayed_si_numel": 5, "trials": 30})  # fmt: skip
    return pd.DataFrame(rows)


LADDER = {
    "a": {"adam/l2": (0.02, 0.015, 0.025), "adam/decoupled": (0.01, 0.008, 0.012),
          "adam/independent": (0.001, 0.0005, 0.0015)},
    "b": {"adam/l2": (0.02, 0.015, 0.025), "adam/decoupled": (0.01, 0.008, 0.012),
          "adam/independent": (0.011, 0.0005, 0.015)},
    "c": {"adam/l2": (0.02, 0.015, 0.025), "adam/decoupled": (0.01, 0.008, 0.012),
          "adam/independent": (0.05, 0.045, 0.055)},
}  # fmt: skip
CFG = {"sweep": {"arms": {"a": {"model": {"frozen_head": True}},
                          "b": {"model": {"frozen_head": False}},
                          "c": {"model": {"frozen_head": False},
                                "optimizer": {"param_groups": "all"}}}}}  # fmt: skip


def test_the_ladder_names_where_the_independent_form_stops_transferring_best():
    lad = _ladder(LADDER)
    changes = arms._rung_changes(CFG, ["a", "b", "c"])
    assert changes["b"] == "model.frozen_head=false"
    assert changes["c"] == "optimizer.param_groups=all"
    rungs = arms.ladder_rungs(lad, changes)
    assert [arms._status(r) for r in rungs] == ["best", "unresolved", "worse"]
    f = arms.ladder_findings(rungs, {"a": ["l2"], "b": [], "c": []})
    assert len(f.supports) == 1 and "rung a:" in f.supports[0] and "rung b" not in f.supports[0]
    assert "independent 0.10 [0.05, 0.15]" in f.supports[0]
    assert len(f.contradicts) == 1 and "rung c:" in f.contradicts[0]
    assert any("rung b:" in t and "does not separate" in t for t in f.open)
    turn = [t for t in f.open if "standing turns" in t]
    assert len(turn) == 1 and "from rung b to rung c" in turn[0] and "rung a to" not in turn[0]
    assert "optimizer.param_groups=all" in turn[0] and "0.90 -> 0.50" in turn[0]
    assert "from unresolved to worse" in turn[0]
    gain = [t for t in f.open if "buys nothing" in t]
    assert len(gain) == 1 and "rung(s) b, c" in gain[0] and "rung a (l2)" in gain[0]
    # an interval of another form wholly below the independent form's makes the rung "worse"
    # even when the independent form is not the highest
    mixed = _ladder({"a": {"adam/l2": (0.05, 0.04, 0.06), "adam/decoupled": (0.01, 0.005, 0.015),
                           "adam/independent": (0.03, 0.02, 0.035)}})  # fmt: skip
    assert arms._status(arms.ladder_rungs(mixed, {})[0]) == "worse"


def test_heldout_checks_count_the_rows_whose_interval_holds_one():
    held = pd.DataFrame(
        [
            {"experiment": "T-n1000", "variant": "adam/independent", "lr": 1e-3,
             "predicted_wd": 1e-2, "found_wd": 1.1e-2, "factor": 1.1, "factor_lo": 0.8,
             "factor_hi": 1.4, "interval": "bootstrap"},
            {"experiment": "T-n1000", "variant": "adam/decoupled", "lr": 1e-3,
             "predicted_wd": 1.0, "found_wd": 0.9, "factor": 0.9, "factor_lo": 0.7,
             "factor_hi": 1.05, "interval": "bootstrap"},
            {"experiment": "T-n2000", "variant": "adam/l2", "lr": 3.16e-2,
             "predicted_wd": 1e-3, "found_wd": 4e-3, "factor": 4.0, "factor_lo": 3.0,
             "factor_hi": 5.0, "interval": "bootstrap"},
        ]
    )  # fmt: skip
    f = arms.heldout_findings(held)
    assert len(f.supports) == 1 and "2 of 3" in f.supports[0]
    assert "the worst 4.00 [3.00, 5.00] (n2000 adam/l2 at lr 0.0316)" in f.supports[0]
    held.loc[1, ["factor_lo", "factor_hi"]] = [0.6, 0.95]  # now 1 of 3: a contradiction
    f = arms.heldout_findings(held)
    assert not f.supports and "1 of 3" in f.contradicts[0]


def test_collapse_verdicts_use_the_stated_tolerance():
    tol = arms.COLLAPSE_TOL
    rows = [("G", "adam/decoupled", "a*lam", 0.93 - tol / 2, 0.93, 40),
            ("G", "adam/independent", "lam", 0.93 - 2 * tol, 0.93, 40)]  # fmt: skip
    f = arms.collapse_findings(rows)
    assert len(f.supports) == 1 and "adam/decoupled" in f.supports[0]
    assert len(f.contradicts) == 1 and "adam/independent" in f.contradicts[0]
    assert "adam/decoupled" not in f.contradicts[0]


@pytest.fixture
def gallery(tmp_path: Path) -> Path:
    dest = tmp_path / "gallery"
    shutil.copytree(GALLERY, dest, ignore=shutil.ignore_patterns("*.png", "*.pdf"))
    # a ladder gallery: metrics.csv (one row per arm and variant), ladder.csv, config.yaml
    lad = _ladder(LADDER)
    root = dest / "scope_ladder"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    lad.to_csv(root / "ladder.csv", index=False)
    pd.DataFrame(
        {"experiment": lad["experiment"], "variant": lad["variant"], "n_seeds": 5,
         "collapse_r2_1d": 0.5, "collapse_r2_2d": 0.9, "collapse_cells": 30}
    ).to_csv(root / "metrics.csv", index=False)  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(CFG))
    # a timescale gallery: metrics.csv and timescale_exponents.csv
    root = dest / "timescale"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    pd.DataFrame(
        {"experiment": ["T-n1000", "T-n2000"], "variant": "adam/independent", "n_seeds": 5}
    ).to_csv(root / "metrics.csv", index=False)  # fmt: skip
    _exps(
        [{"variant": "adam/independent", "exponent": -0.9, "exponent_lo": -1.2,
          "exponent_hi": -0.6, "predicted": -1.0, "heldout": "4000: predicted/found 1.1 [0.9, 1.3]"}]
    ).to_csv(root / "timescale_exponents.csv", index=False)  # fmt: skip
    return dest


def test_the_sections_render_from_the_gallery_tables(gallery: Path):
    page = render(gallery)
    assert "## Timescale: the best wd against N and length" in page
    assert "## The scope ladder: from scale-invariant to the control" in page
    assert (
        "| adam/independent | training-set size N | 1000 2000 8000 | -0.90 [-1.20, -0.60] |" in page
    )
    assert "4000: predicted/found 1.1 [0.9, 1.3]" in page
    assert "| c | optimizer.param_groups=all | 0.50 | adam/l2 |" in page
    short = page.split("## In short", 1)[1].split("## How the numbers", 1)[0]
    assert "from rung b to rung c" in short
    assert "Ladder (c)" in page.split("## Collapse", 1)[1]
    # a missing exponent table is said, not skipped silently
    (gallery / "timescale" / "timescale_exponents.csv").unlink()
    assert "no timescale_exponents.csv" in render(gallery)
    # without the galleries the page says where they would be
    shutil.rmtree(gallery / "timescale")
    shutil.rmtree(gallery / "scope_ladder")
    page = render(gallery)
    assert "no gallery under `analysis/gallery/timescale/`" in page
    assert "## The scope ladder" not in page
