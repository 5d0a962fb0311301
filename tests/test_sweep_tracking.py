"""W&B tracking through the real sweep: offline runs read back; secrets never written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest

from tests.test_sweep import TINY, load, run_sweep
from tests.wandb_reader import read_offline_runs

ROOT = Path(__file__).resolve().parent.parent
TRACKED = [o for o in TINY if not o.startswith("tracking=")] + [
    "tracking.mode=offline",
    "schedule=cosine",
]


@pytest.mark.slow
@pytest.mark.parametrize("population", ["1", "4"])
def test_offline_runs_match_trials(tmp_path, population):
    """One offline run per trial, sequential or trained as one population of four."""
    out = tmp_path / "wb"
    proc = run_sweep(
        out,
        *TRACKED,
        "sweep.lr.num=2",
        "sweep.weight_decay.num=2",
        "train.epochs=2",
        f"sweep.population={population}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    overrides = TRACKED + ["sweep.lr.num=2", "sweep.weight_decay.num=2"]
    study = load(out, "sqlite", overrides)
    trials = study.get_trials(deepcopy=False)
    everything = read_offline_runs(out / "wandb")
    runs = [r for r in everything if r["job_type"] != "analysis"]
    assert len(runs) == len(trials) == 4
    # the sweep's analysis: one more run, with the figures as images and the metrics as a table
    (analysis,) = [r for r in everything if r["job_type"] == "analysis"]
    assert analysis["group"] == "quick" and analysis["exit_code"] == 0
    assert analysis["config"]["studies"] == [study.study_name]
    row = analysis["history"][-1]  # W&B stores media as nested keys: figures/<name>/_type, ...
    files = Path(analysis["dir"]) / "files"
    for key in ("figures/heatmaps", "figures/regret", "figures/valley"):
        assert row[f"{key}/_type"] == "image-file"
        assert (files / row[f"{key}/path"]).stat().st_size > 1000
    assert row["tables/metrics/_type"] == "table-file" and row["tables/metrics/nrows"] == 1
    table = json.loads((files / row["tables/metrics/path"]).read_text())
    assert table["data"][0][table["columns"].index("variant")] == "adam/independent"
    # the decay rule travels as a table too: one row per variant with its fit and validity range
    assert row["tables/decay_rule/_type"] == "table-file" and row["tables/decay_rule/nrows"] == 1
    rule = json.loads((files / row["tables/decay_rule/path"]).read_text())
    assert {"variant", "C", "s", "lr_min", "lr_max", "tau_epoch"} <= set(rule["columns"])
    assert rule["data"][0][rule["columns"].index("variant")] == "adam/independent"
    # what to run next: the dashboard on the study, the upload of the offline runs
    assert f"optuna-dashboard sqlite:///{out.resolve()}/study.db" in proc.stdout
    assert f"wandb sync {(out / 'wandb').resolve()}/offline-run-*" in proc.stdout
    by_id = {r["id"]: r for r in runs}
    for t in trials:
        run = by_id[t.user_attrs["wandb_run_id"]]
        assert run["group"] == study.study_name
        assert run["job_type"] == "adam/independent"
        assert run["name"].startswith("adam/independent lr=")
        assert run["config"]["trial"] == t.number
        assert run["config"]["study"] == study.study_name
        assert run["config"]["lr"] == t.params["lr"]
        assert run["config"]["optimizer.decay"] == "independent"
        assert len(run["history"]) == 2  # one report per epoch
        for key in ("train_loss", "val_error", "lr_t", "eta", "shrink", "weight_norm"):
            assert key in run["history"][-1]
        # the scheduled rate is history's lr_t; the summary keeps no scheduled "lr"
        assert run["summary"]["lr_t"] == run["history"][-1]["lr_t"] < t.params["lr"]
        assert "lr" not in run["summary"]
        assert run["summary"]["test_error"] == t.user_attrs["test_error"]
        assert run["summary"]["diverged"] is False
        assert run["exit_code"] == 0


@pytest.mark.slow
def test_secrets_never_written(tmp_path):
    out = tmp_path / "sec"
    key = "0123456789abcdef0123456789abcdef01234567"
    journal = tmp_path / "shared" / "study.journal"
    env = {**os.environ, "WANDB_API_KEY": key, "WANDB_MODE": "offline"}
    url_pw = "s3cr3t-pw"
    # the URL is unreachable on purpose for its password check; the journal holds the study
    proc = run_sweep(
        out,
        *TRACKED,
        "sweep.lr.num=2",
        "sweep.weight_decay.num=1",
        "storage=journal",
        f"storage.path={journal}",
        f"tracking.tags=[postgresql://u:{url_pw}@db/x]",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert key not in proc.stdout + proc.stderr and url_pw not in proc.stdout + proc.stderr
    files = [p for p in [*out.rglob("*"), journal] if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)
    for path in files:
        data = path.read_bytes()
        assert key.encode() not in data, path
        assert url_pw.encode() not in data, path


@pytest.mark.postgres
def test_postgres_password_and_api_key_never_written(tmp_path, postgres_url):
    out = tmp_path / "pgsec"
    key = "fedcba9876543210fedcba9876543210fedcba98"
    password = postgres_url.split(":")[2].split("@")[0]
    env = {**os.environ, "WANDB_API_KEY": key}
    proc = run_sweep(
        out,
        *TRACKED,
        "sweep.lr.num=2",
        "sweep.weight_decay.num=1",
        "storage=url",
        f"storage.url={postgres_url}",
        "sweep.study_name=secrets",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert password not in proc.stdout + proc.stderr and key not in proc.stdout + proc.stderr
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files) and (out / "config.yaml").exists()
    for path in files:
        data = path.read_bytes()
        assert key.encode() not in data and password.encode() not in data, path
    # nor in the study (trial attrs, study attrs) stored in PostgreSQL
    storage = optuna.storages.RDBStorage(postgres_url)
    for s in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        blob = repr(study.user_attrs) + repr([t.user_attrs for t in study.trials])
        blob += repr([t.system_attrs for t in study.trials])
        assert password not in blob and key not in blob
