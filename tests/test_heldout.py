"""The held-out check from the sweep's config: ``analysis.heldout`` lists lrs (and training-set
sizes) the decay rule is not fitted on; the rule's tables and the figures report the predicted
against the found best wd there."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import figures, rule
from harness.config import ConfigError, compose_config, validate
from tests.test_rule import LRS, _cli, _write, sweep

HELD = [float(LRS[2]), float(LRS[4])]


def test_config_key_is_validated_and_the_presets_hold_lrs_out():
    cfg = compose_config(["analysis.heldout.lr=[1e-3,3e-2]", "analysis.heldout.n_train=[4000]"])
    validate(cfg)
    assert list(cfg.analysis.heldout.lr) == [1e-3, 3e-2]
    assert list(cfg.analysis.heldout.n_train) == [4000]
    with pytest.raises(ConfigError, match=r"analysis.heldout.lr: -0.001 must be > 0"):
        validate(compose_config(["analysis.heldout.lr=[-1e-3]"]))
    assert list(compose_config([]).analysis.heldout.lr) == []
    for preset, n in (("timescale_mnist1d", [4000]), ("scope_ladder_mnist1d", [])):
        cfg = compose_config([f"experiment={preset}"])
        validate(cfg)
        grid = np.geomspace(cfg.sweep.lr.min, cfg.sweep.lr.max, cfg.sweep.lr.num)
        lrs = [float(x) for x in cfg.analysis.heldout.lr]
        # rows of the preset's lr grid, inside it (the rule still spans them)
        assert len(lrs) == 2 and all(np.isclose(grid[1:-1], x, rtol=1e-5).any() for x in lrs)
        assert list(cfg.analysis.heldout.n_train) == n, preset


def test_configured_heldout_covers_the_sweep_and_its_arms(tmp_path):
    cfg = {
        "name": "ts",
        "analysis": {"heldout": {"lr": HELD, "n_train": [4000]}},
        "sweep": {"arms": {"n1000": {"data": {"n_train": 1000}}, "e80": {"train": {"epochs": 80}}}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "results.csv").write_text("")
    held = rule.configured_heldout(tmp_path / "results.csv")
    assert set(held) == {"ts", "ts-n1000", "ts-e80"}
    assert held["ts-e80"] == {"lr": HELD, "n_train": [4000.0]}
    assert rule.heldout_values(held, "lr") == sorted(HELD)
    none = tmp_path / "none"
    none.mkdir()
    (none / "config.yaml").write_text(yaml.safe_dump({"name": "plain"}))
    assert rule.configured_heldout(none) == {}


def test_rule_tables_hold_out_the_configured_lrs(tmp_path):
    cfg = {"name": "synth", "analysis": {"heldout": {"lr": HELD}}}
    folder = _write(tmp_path, sweep(1e-5, -1.0, "adam/decoupled"), cfg)
    got = _cli(folder, "--tables", tmp_path / "tables", "--reps", "60")
    assert got.returncode == 0, got.stderr
    assert "held out (analysis.heldout; --holdout-lr overrides): " in got.stdout
    table = pd.read_csv(tmp_path / "tables" / "decay_rule.csv")
    assert table["rows"].iloc[0] == len(LRS) - 2
    held = pd.read_csv(tmp_path / "tables" / "decay_rule_heldout.csv")
    assert held["lr"].to_numpy() == pytest.approx(HELD)
    assert (held["factor_lo"] <= 1).all() and (held["factor_hi"] >= 1).all()
    assert held["factor"].to_numpy() == pytest.approx([1.0, 1.0], rel=0.1)
    # a flag overrides the config
    got = _cli(folder, "--tables", tmp_path / "flag", "--reps", "20", "--holdout-lr", LRS[3])
    assert got.returncode == 0, got.stderr
    held = pd.read_csv(tmp_path / "flag" / "decay_rule_heldout.csv")
    assert held["lr"].to_numpy() == pytest.approx([LRS[3]])


def test_figures_report_the_held_out_check_from_the_config(tmp_path, capsys):
    frame = sweep(1e-5, -1.0, "adam/decoupled")
    # a row whose basin sits 10x above the rule: the check finds it
    higher = sweep(1e-4, -1.0, "adam/decoupled")
    row = frame["lr"].sub(HELD[1]).abs() < 1e-12
    frame = pd.concat([frame[~row], higher[higher["lr"].sub(HELD[1]).abs() < 1e-12]])
    cfg = {"name": "synth", "analysis": {"heldout": {"lr": HELD}}}
    folder = _write(tmp_path, frame, cfg)
    out = tmp_path / "figs"
    argv = [str(folder / "results.csv"), "--out", str(out), "--bootstrap", "40", "--formats", "png"]
    assert figures.main(argv) == 0
    printed = capsys.readouterr().out
    assert "held-out check (lrs left out of the decay rule's fit):" in printed
    held = pd.read_csv(out / "decay_rule_heldout.csv")
    assert held["lr"].to_numpy() == pytest.approx(HELD)
    good, bad = held.iloc[0], held.iloc[1]
    assert good["factor"] == pytest.approx(1.0, rel=0.25)
    assert bad["factor"] == pytest.approx(10.0, rel=0.3) and bad["factor_lo"] > 2.0
    ruled = pd.read_csv(out / "decay_rule.csv")
    assert ruled["heldout_lrs"].iloc[0] == " ".join(f"{h:.3g}" for h in HELD)
