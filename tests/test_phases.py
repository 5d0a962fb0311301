"""The phase record (``LRWD_PHASES``) and ``python -m harness.bench overhead``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import phases
from tests.test_sweep import TINY as SWEEP_TINY

ROOT = Path(__file__).resolve().parent.parent

# the test suite's tiny grid, trained as populations with W&B offline runs
TINY = [
    *(o for o in SWEEP_TINY if not o.startswith(("sweep.population=", "tracking"))),
    "sweep.population=auto",
    "tracking.mode=offline",
]


def test_nested_phases_are_exclusive_and_written_once_per_phase(tmp_path, monkeypatch):
    record = tmp_path / "phases.jsonl"
    monkeypatch.setenv(phases.ENV, str(record))
    with phases.phase("outer"):
        time.sleep(0.05)
        with phases.phase("inner"):
            time.sleep(0.2)
    with phases.phase("inner"):
        time.sleep(0.01)
    phases.flush()
    lines = [json.loads(x) for x in record.read_text().splitlines()]
    assert sorted(x["phase"] for x in lines) == ["inner", "outer"]
    got = phases.read(record)
    assert 0.05 <= got["outer"] < 0.2  # the inner phase's time is not the outer's
    assert got["inner"] >= 0.21
    assert {x["n"] for x in lines if x["phase"] == "inner"} == {2}


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(phases.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with phases.phase("training"):
        pass
    phases.add("imports", 1.0)
    phases.flush()
    assert phases.path() == ""
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_sweep_writes_every_phase_within_its_wall_time(tmp_path):
    record = tmp_path / "phases.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT), **{phases.ENV: str(record)})
    env.pop("WANDB_MODE", None)
    cmd = [sys.executable, "-m", "harness.sweep", f"hydra.run.dir={tmp_path / 'out'}", *TINY]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = phases.read(record)
    for name in ("imports", "config", "data", "study", "claims", "training", "results", "report"):
        assert got.get(name, 0.0) > 0, (name, got)
    assert got.get("wandb", 0.0) > 0, got
    assert set(got) <= set(phases.PHASES), got
    assert sum(got.values()) <= wall, (got, wall)
    assert sum(phases.read(record, "cpu").values()) > 0


def test_overhead_bench_help():
    proc = subprocess.run(
        [sys.executable, "-m", "harness.bench", "overhead", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "sweep.population=auto" in proc.stdout and "--json" in proc.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "harness.bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "overhead" in listing.stdout and "tracking" in listing.stdout


TELEMETRY_PROBE = """
import os, sys
from types import SimpleNamespace
from harness.tracking import Tracker
out = sys.argv[1]
cfg = SimpleNamespace(mode="offline", project="lrwd-test", entity="", tags=[], dir=out)
run = Tracker(cfg, out, "study").start("one", "adam/l2", {"lr": 1e-3})
run.log(0, {"train_loss": 1.0})
run.finish({"test_error": 0.5}, "finished")
print(os.environ.get("WANDB_ERROR_REPORTING"))
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "false"), ("true", "true")])
def test_offline_runs_send_no_telemetry_unless_asked(tmp_path, given, expected):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for key in ("WANDB_ERROR_REPORTING", "WANDB_MODE", "WANDB_DISABLED"):
        env.pop(key, None)
    if given is not None:
        env["WANDB_ERROR_REPORTING"] = given
    proc = subprocess.run(
        [sys.executable, "-c", TELEMETRY_PROBE, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == expected
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
