"""The decay rule (analysis.rule) on synthetic sweeps whose best wd is known: wd* = C * lr^s.

Each sweep's validation and test errors are ``e0 + a (log10 lr + 2.5)^2 + b d^2`` plus seed
noise, with ``d = ln wd - ln(C lr^s)`` (a quadratic basin in log wd, so the refined valley is
unbiased) and a known N exponent where a test needs one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis import rule

ROOT = Path(__file__).resolve().parent.parent
LRS = np.logspace(-4, -1, 7)
WDS = np.logspace(-8, 2, 16)


def sweep(
    C: float,
    s: float,
    variant: str = "adam/independent",
    seeds: int = 6,
    noise: float = 0.004,
    experiment: str = "synth",
    rng: int = 0,
    n_train: float | None = None,
    epochs: float | None = None,
) -> pd.DataFrame:
    """A tidy frame of one variant's lr x wd grid with the best wd at ``C * lr^s``."""
    r = np.random.default_rng(rng)
    opt, _, dec = variant.partition("/")
    L, W = np.meshgrid(LRS, WDS, indexing="ij")
    d = np.log(W) - np.log(C * L**s)
    truth = 0.2 + 0.01 * (np.log10(L) + 2.5) ** 2 + 0.004 * d**2
    rows = []
    for seed in range(seeds):
        val = truth + r.normal(0, noise, truth.shape)
        test = truth + r.normal(0, noise, truth.shape)
        for (i, j), e in np.ndenumerate(val):
            rows.append(
                {
                    "study": f"{experiment}-{opt}-{dec}",
                    "experiment": experiment,
                    "optimizer": opt,
                    "decay": dec,
                    "model": "surface",
                    "data": "synthetic",
                    "trial": len(rows),
                    "lr": float(L[i, j]),
                    "weight_decay": float(W[i, j]),
                    "seed": seed,
                    "state": "COMPLETE",
                    "val_error": float(e),
                    "test_error": float(test[i, j]),
                    "diverged": False,
                    "variant": variant,
                }
            )
    frame = pd.DataFrame(rows)
    if n_train is not None:
        frame["n_train"] = float(n_train)
    if epochs is not None:
        frame["epochs"] = float(epochs)
    return frame


@pytest.mark.parametrize(
    "variant,C,s",
    [("adam/independent", 2e-3, 0.0), ("adam/decoupled", 1e-5, -1.0), ("adam/l2", 3e-9, -2.0)],
)
def test_fit_recovers_C_and_s_with_intervals_that_cover_them(variant, C, s):
    # 10 seeds: with 5-6 the percentile seed bootstrap of this fit is narrower than the spread
    # of the estimate between noise draws (docs/analysis.md)
    fits = [
        rule.fit_rule(sweep(C, s, variant, seeds=10, rng=k), variant, reps=100) for k in range(4)
    ]
    for r in fits:
        assert r.interval == "bootstrap" and r.seeds == 10 and r.rows == len(LRS)
        assert r.s == pytest.approx(s, abs=0.06)
        assert r.C == pytest.approx(C, rel=0.3)
        # the intervals are informative: well inside a decade, and they exclude a wrong slope
        assert r.C_hi / r.C_lo < 2 and r.s_hi - r.s_lo < 0.2
        assert not (r.s_lo <= s + 0.5 <= r.s_hi)
        assert (r.lr_min, r.lr_max) == pytest.approx((LRS[0], LRS[-1]))
    # 95% intervals over four noise draws: one miss at most
    covered = [r.s_lo <= s <= r.s_hi and r.C_lo <= C <= r.C_hi for r in fits]
    assert sum(covered) >= 3, [(r.s_lo, r.s_hi, r.C_lo, r.C_hi) for r in fits]


def test_few_seeds_say_what_their_interval_is():
    two = rule.fit_rule(sweep(2e-3, 0.0, seeds=2), "adam/independent")
    assert two.interval == "seed range" and two.C_lo <= two.C <= two.C_hi
    one = rule.fit_rule(sweep(2e-3, 0.0, seeds=1), "adam/independent")
    assert one.interval == "none" and np.isnan(one.C_lo) and np.isfinite(one.C)


def test_held_out_lrs_are_predicted_by_the_rule_fitted_without_them():
    held = [LRS[2], LRS[4]]
    frame = sweep(1e-5, -1.0, "adam/decoupled")
    r = rule.fit_rule(frame, "adam/decoupled", holdout_lrs=held)
    assert r.heldout == tuple(held) and r.rows == len(LRS) - 2
    table = rule.heldout_table(frame, held)
    assert list(table["lr"]) == pytest.approx(held)
    assert (table["factor_lo"] <= 1.0).all() and (table["factor_hi"] >= 1.0).all()
    assert table["factor"].to_numpy() == pytest.approx([1.0, 1.0], rel=0.1)
    # a rule with the wrong slope is caught by the held-out check
    row = np.isclose(frame["lr"], held[0])
    higher = sweep(1e-4, -1.0, "adam/decoupled")  # that row's basin sits 10x higher
    shifted = pd.concat([frame[~row], higher[np.isclose(higher["lr"], held[0])]])
    bad = rule.heldout_table(shifted, held)
    assert bad["factor"].iloc[0] == pytest.approx(10.0, rel=0.15)
    assert bad["factor_lo"].iloc[0] > 1.0


def test_timescale_exponents_recover_the_N_exponent():
    # wd* = C(N) * lr^0 with C = 0.02 * (N / 1000)^-1: the best wd halves when N doubles
    arms = [
        sweep(2e-3 * 1000 / n, 0.0, experiment=f"ts-n{n}", n_train=n, epochs=40, rng=n)
        for n in (1000, 2000, 4000, 8000)
    ]
    arms += [sweep(1e-3 * (40 / e) ** 0.5, 0.0, experiment=f"ts-e{e}", n_train=2000, epochs=e,
                   rng=e) for e in (80, 160)]  # fmt: skip
    frame = pd.concat(arms, ignore_index=True)
    table = rule.timescale_exponents(frame, holdout_n_train=[4000], reps=150)
    n = table[table["axis"] == "n_train"].iloc[0]
    assert n["exponent"] == pytest.approx(-1.0, abs=0.05)
    assert n["exponent_lo"] <= -1.0 <= n["exponent_hi"] and n["predicted"] == -1.0
    assert n["values"] == "1000 2000 4000 8000" and "4000: predicted/found" in n["heldout"]
    e = table[table["axis"] == "epochs"].iloc[0]
    assert e["exponent"] == pytest.approx(-0.5, abs=0.1)  # the data, not the prediction
    assert e["exponent_lo"] <= -0.5 <= e["exponent_hi"] and e["exponent_hi"] < -0.2
    assert e["values"] == "40 80 160"


def _write(tmp_path: Path, frame: pd.DataFrame, cfg: dict | None = None) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    frame.drop(columns=["variant"]).to_csv(folder / "results.csv", index=False)
    if cfg is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return folder


def _wd(stdout: str) -> float:
    return float(stdout.split("wd = ")[1].split()[0])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "analysis.rule", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_recommends_inside_the_data_and_refuses_outside(tmp_path):
    folder = _write(tmp_path, sweep(2e-3, 0.0))
    ok = _cli(folder, "--variant", "adam/independent", "--lr", "3e-3", "--reps", "100")
    assert ok.returncode == 0, ok.stderr
    first = ok.stdout.splitlines()[0]
    assert first.startswith("adam/independent at lr 0.003: wd = ")
    assert "95% seed-bootstrap interval" in first
    assert _wd(ok.stdout) == pytest.approx(2e-3, rel=0.1)
    assert "EXTRAPOLATION" not in ok.stdout

    out = _cli(folder, "--variant", "adam/independent", "--lr", "1", "--reps", "50")
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "outside the lrs the data cover" in lines[0] and "--extrapolate" in lines[0]

    forced = _cli(folder, "--variant", "adam/independent", "--lr", "1", "--extrapolate")
    assert forced.returncode == 0, forced.stderr
    assert "EXTRAPOLATION: lr 1 is outside the lrs the data cover" in forced.stdout


@pytest.mark.slow
def test_cli_other_N_needs_a_measured_exponent_or_says_it_extrapolates(tmp_path):
    cfg = {"name": "synth", "data": {"n_train": 1000, "batch_size": 100}, "train": {"epochs": 40}}
    folder = _write(tmp_path, sweep(2e-3, 0.0), cfg)
    refused = _cli(folder, "--variant", "adam/independent", "--lr", "3e-3", "--n-train", "2000")
    assert refused.returncode == 2
    assert "no sweep over n_train" in refused.stderr and "--extrapolate" in refused.stderr
    forced = _cli(
        folder, "--variant", "adam/independent", "--lr", "3e-3", "--n-train", "2000",
        "--extrapolate", "--reps", "50",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr
    assert _wd(forced.stdout) == pytest.approx(1e-3, rel=0.1)  # the predicted exponent halves it
    assert "timescale argument's exponent -1 (not measured here)" in forced.stdout


@pytest.mark.slow
def test_cli_uses_measured_exponents_across_results_files(tmp_path):
    sources = []
    for n in (1000, 2000, 4000):
        folder = tmp_path / f"n{n}"
        folder.mkdir()
        frame = sweep(2e-3 * (1000 / n) ** 0.5, 0.0, experiment=f"ts-n{n}", rng=n)
        frame.drop(columns=["variant"]).to_csv(folder / "results.csv", index=False)
        cfg = {
            "name": f"ts-n{n}",
            "data": {"n_train": n, "batch_size": 100},
            "train": {"epochs": 40},
        }
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        sources.append(folder)
    got = _cli(*sources, "--variant", "adam/independent", "--lr", "1e-3", "--n-train", "3000",
               "--reps", "60")  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert _wd(got.stdout) == pytest.approx(2e-3 * (1 / 3) ** 0.5, rel=0.15)
    p, lo, hi = (
        float(t)
        for t in re.findall(r"measured exponent ([-+.\d]+) \[([-+.\d]+), ([-+.\d]+)\]", got.stdout)[
            0
        ]
    )
    assert lo <= -0.5 <= hi and p == pytest.approx(-0.5, abs=0.15)
    outside = _cli(*sources, "--variant", "adam/independent", "--lr", "1e-3", "--n-train", "9000")
    assert outside.returncode == 2 and "outside the measured n_train" in outside.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--variant", "sgd/l2", "--lr", "1e-3"], "--variant: sgd/l2 is not in the results"),
        (["--variant", "adam/independent", "--lr", "-1"], "--lr: -1.0 is not a positive"),
        (["--variant", "adam", "--lr", "1e-3"], "--variant: adam is not optimizer/decay"),
        (["--lr", "1e-3"], "--variant and --lr: both needed"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    folder = _write(tmp_path, sweep(2e-3, 0.0, seeds=2))
    got = _cli(folder, *args)
    assert got.returncode == 2 and got.stdout == ""
    assert got.stderr.count("\n") == 1 and needle in got.stderr, got.stderr


def test_cli_missing_source_is_one_line(tmp_path):
    got = _cli(tmp_path / "nope.csv", "--variant", "adam/l2", "--lr", "1e-3")
    assert got.returncode == 2 and got.stderr.count("\n") == 1 and "nope.csv" in got.stderr


def test_tables_write_the_rule_with_its_timescale(tmp_path):
    cfg = {"name": "synth", "data": {"n_train": 1000, "batch_size": 50}, "train": {"epochs": 40}}
    frame = pd.concat([sweep(2e-3, 0.0), sweep(1e-5, -1.0, "adam/decoupled")], ignore_index=True)
    folder = _write(tmp_path, frame, cfg)
    got = _cli(folder, "--tables", tmp_path / "tables", "--holdout-lr", LRS[3], "--reps", "60")
    assert got.returncode == 0, got.stderr
    line = re.search(r"adam/independent: wd ~ (\S+) at any lr in \[1e-04, 1e-01\]", got.stdout)
    assert line and float(line.group(1)) == pytest.approx(2e-3, rel=0.1), got.stdout
    table = pd.read_csv(tmp_path / "tables" / "decay_rule.csv")
    assert list(table.columns) == list(rule.RULE_COLUMNS)
    table = table.set_index("variant")
    ind, dec = table.loc["adam/independent"], table.loc["adam/decoupled"]
    # independent: shrink = wd per step; tau_epoch = (1 / wd*) * B / N at the range's middle
    mid = (ind["lr_min"] * ind["lr_max"]) ** 0.5
    assert ind["tau_epoch"] == pytest.approx(1 / (ind["C"] * mid ** ind["s"]) * 50 / 1000)
    assert ind["tau_epoch"] == pytest.approx(1 / 2e-3 * 50 / 1000, rel=0.15)
    # decoupled: shrink = lr * wd = C lr^0 along the valley: the same timescale at every lr
    assert dec["tau_epoch_min"] == pytest.approx(dec["tau_epoch_max"], rel=0.25)
    assert dec["n_train"] == 1000 and dec["batch_size"] == 50 and dec["epochs"] == 40
    held = pd.read_csv(tmp_path / "tables" / "decay_rule_heldout.csv")
    assert len(held) == 2 and (held["factor_lo"] <= 1).all() and (held["factor_hi"] >= 1).all()


def test_summary_line_in_plain_words():
    flat = {"variant": "adam/independent", "C": 1.6e-3, "s": 0.01, "s_lo": -0.05, "s_hi": 0.06,
            "lr_min": 1e-4, "lr_max": 1e-1}  # fmt: skip
    # the flat rule's wd at the lr range's geometric middle: 1.6e-3 * (10^-2.5)^0.01 = 1.5e-3
    assert rule.summary_line(flat).startswith("adam/independent: wd ~ 1.5e-03 at any lr in "
                                              "[1e-04, 1e-01]")  # fmt: skip
    sloped = {**flat, "variant": "adam/decoupled", "C": 1e-5, "s": -1.0, "s_lo": -1.1, "s_hi": -0.9}
    assert "wd ~ 1e-05 * lr^-1.00 for lr in [1e-04, 1e-01]" in rule.summary_line(sloped)
    none = {"variant": "adam/l2", "s": float("nan"), "interval": "fewer than two lr rows"}
    assert rule.summary_line(none) == "adam/l2: no decay rule (fewer than two lr rows)"
