"""Scaling out on one machine and onto PostgreSQL: local workers divide the cores, and the
storage URL of the docs (``postgresql://user:pw@host/db``) opens with the ``postgres`` extra.

The thread counts are read from inside the workers (each writes ``torch.get_num_threads()`` to its
training log, ``LRWD_TRAINING_LOG``), not from the config they were given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from harness.config import ConfigError, compose_config
from harness.storage import open_storage, with_driver
from harness.sweep import launch
from harness.sweep import queue as wq
from harness.sweep.plan import study_name, variants

ROOT = Path(__file__).resolve().parent.parent

# 3 x 3 cells of tiny trials; train.threads left at its default (0: divide the cores)
GRID = [
    "sweep.variants=[]",
    "optimizer=adam",
    "optimizer.decay=independent",
    "sweep.lr.min=1e-3",
    "sweep.lr.max=1e-2",
    "sweep.lr.num=3",
    "sweep.weight_decay.min=1e-4",
    "sweep.weight_decay.max=1e-2",
    "sweep.weight_decay.num=3",
    "sweep.population=1",
    "model.width=32",
    "data.num_samples=1000",
    "data.val_size=200",
    "train.epochs=1",
    "tracking=disabled",
]
N_CELLS = 9
NO_DRIVERS = ("psycopg2", "psycopg", "pg8000")


def two_cores() -> set[int]:
    """Two of the CPUs this process may use (one on a one-CPU machine)."""
    return set(sorted(os.sched_getaffinity(0))[:2])


def run(args: list[str], cpus: set[int] | None = None, env=None, timeout: float = 600):
    """``python <args>`` from the checkout, pinned to ``cpus`` (its CPU affinity) when given."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        preexec_fn=pin,
    )


def training_log(folder: Path) -> list[dict]:
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        records += [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    return records


def finished_once(study: optuna.Study, n_cells: int) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    per_cell = Counter(t.user_attrs["cell"] for t in complete)
    assert len(per_cell) == n_cells and set(per_cell.values()) == {1}, per_cell
    return complete


def load_study(out: Path, overrides: list[str]) -> optuna.Study:
    cfg = compose_config(overrides)
    return optuna.load_study(
        study_name=study_name(cfg, variants(cfg)[0]), storage=open_storage(cfg, out, create=False)
    )


# --------------------------------------------------------------------------------------------
# Threads


def test_worker_threads_divide_the_cores():
    assert [launch.worker_threads(0, n, cores=2) for n in (1, 2, 3, 8)] == [2, 1, 1, 1]
    assert [launch.worker_threads(0, n, cores=16) for n in (1, 2, 4, 16, 32)] == [16, 8, 4, 1, 1]
    assert launch.worker_threads(3, 8, cores=2) == 3  # the user's train.threads is kept


def test_slurm_cpus_per_task_caps_the_cores(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert launch.available_cores() == affinity
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert launch.available_cores() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", str(affinity + 8))
    assert launch.available_cores() == affinity


def test_threads_note_and_warnings():
    cfg = compose_config([])
    assert launch.threads_note(cfg, 1, cores=2) == ("1 local worker x 2 threads on 2 cores", "")
    assert launch.threads_note(cfg, 2, cores=2) == ("2 local workers x 1 thread on 2 cores", "")
    note, warning = launch.threads_note(cfg, 16, cores=2)
    assert note == "16 local workers x 1 thread on 2 cores"
    assert warning.startswith("sweep.workers=16 is more than the 2 cores here")
    assert "sweep.workers=2 or fewer" in warning
    cfg.train.threads = 2
    note, warning = launch.threads_note(cfg, 4, cores=2)
    assert note == "4 local workers x 2 threads on 2 cores"
    assert warning.startswith("sweep.workers=4 x train.threads=2 = 8 threads on 2 cores")
    assert "train.threads=0" in warning
    assert launch.threads_note(cfg, 1, cores=2)[1] == ""


@pytest.mark.slow
def test_eight_local_workers_on_two_cores_run_one_thread_each(tmp_path):
    cpus = two_cores()
    out, logs = tmp_path / "out", tmp_path / "log"
    env = {**os.environ, wq.TRAINING_LOG_ENV: str(logs)}
    args = [*GRID, "storage=journal", "sweep.workers=8"]
    proc = run(["-m", "harness.sweep", f"hydra.run.dir={out}", *args], cpus=cpus, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(cpus)
    assert f"8 local workers x 1 thread on {n} core{'s' if n > 1 else ''}" in proc.stdout
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and f"sweep.workers=8 is more than the {n} cores" in warnings[0]
    records = training_log(logs)
    # every training ran with one thread, as each worker process itself reported it
    assert {r["threads"] for r in records} == {1}, Counter(r["threads"] for r in records)
    counts = wq.read_training_log(logs)
    assert len(counts) == N_CELLS and set(counts.values()) == {1}, counts
    finished_once(load_study(out, args), N_CELLS)


@pytest.mark.slow
def test_worker_entry_point_takes_slurm_cpus_per_task(tmp_path):
    cpus = two_cores()
    if len(cpus) < 2:
        pytest.skip("needs two CPUs to tell a share of the node from the whole")
    threads = {}
    for share in ("", "1"):
        logs = tmp_path / f"log{share}"
        args = [*GRID, "storage=journal", f"output_dir={tmp_path}", f"sweep.study_name=s{share}"]
        prep = run(["-m", "harness.worker", "--prepare", *args])
        assert prep.returncode == 0, prep.stderr[-3000:]
        env = {**os.environ, wq.TRAINING_LOG_ENV: str(logs), "SLURM_CPUS_PER_TASK": share}
        proc = run(["-m", "harness.worker", *args], cpus=cpus, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        threads[share] = {r["threads"] for r in training_log(logs)}
        assert len(wq.read_training_log(logs)) == N_CELLS
    # the whole (pinned) machine without Slurm; the task's one CPU with SLURM_CPUS_PER_TASK=1
    assert threads == {"": {2}, "1": {1}}


# --------------------------------------------------------------------------------------------
# PostgreSQL through the URL the docs show


def docs_form(postgres_url: str) -> str:
    """``postgresql://user:pw@host:port/db``: the fixture's URL without a driver in the scheme."""
    url = postgres_url.replace("postgresql+psycopg2://", "postgresql://", 1)
    assert url != postgres_url and url.startswith("postgresql://")
    return url


def test_bare_postgresql_url_names_an_installed_driver():
    url = with_driver("postgresql://me:pw@db-host/lrwd")
    scheme, rest = url.split("://", 1)
    assert rest == "me:pw@db-host/lrwd"
    import sqlalchemy

    sqlalchemy.engine.make_url(url).get_dialect().import_dbapi()  # installed: imports
    assert with_driver("sqlite:///x.db") == "sqlite:///x.db"
    assert with_driver("postgresql+psycopg2://u@h/d") == "postgresql+psycopg2://u@h/d"


def test_sweep_and_analysis_open_the_documented_url(tmp_path, postgres_url):
    url = docs_form(postgres_url)
    password = url.split(":")[2].split("@")[0]
    out = tmp_path / "pg"
    args = [*GRID, "storage=url", "sweep.workers=2", "sweep.study_name=docsurl"]
    env = {**os.environ, "LRWD_STORAGE_URL": url}
    proc = run(["-m", "harness.sweep", f"hydra.run.dir={out}", *args], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert password not in proc.stdout + proc.stderr
    # the dashboard command names the driver the storage was opened with
    dashboard = next(ln for ln in proc.stdout.splitlines() if "optuna-dashboard" in ln)
    assert with_driver(url).replace(password, "***") in dashboard
    cfg = compose_config([*args, f"storage.url={url}"])
    study = optuna.load_study(
        study_name=study_name(cfg, variants(cfg)[0]), storage=open_storage(cfg, out)
    )
    finished_once(study, N_CELLS)
    from analysis.load import load_results

    frame = load_results(f"{url}#{study.study_name}")
    assert len(frame) == N_CELLS


_NO_DRIVER_CLI = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None  # this interpreter has no such package
from harness.sweep.cli import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize(
    "url, blocked, message",
    [
        (
            "postgresql://lrwd:hunter2@127.0.0.1:9/lrwd",
            NO_DRIVERS,
            "storage.url: postgresql://lrwd:***@127.0.0.1:9/lrwd needs a PostgreSQL driver and "
            "none is installed; pip install 'lrwd[postgres]' (psycopg2-binary)",
        ),
        (
            "postgresql+psycopg://lrwd:hunter2@127.0.0.1:9/lrwd",
            ("psycopg",),
            "storage.url: postgresql+psycopg://lrwd:***@127.0.0.1:9/lrwd needs the psycopg "
            "driver, which is not installed; pip install 'psycopg[binary]'",
        ),
    ],
    ids=["bare-url-no-driver", "psycopg-missing"],
)
def test_missing_driver_is_one_line_naming_the_package(tmp_path, url, blocked, message):
    out = tmp_path / "out"
    args = [*GRID, "storage=url", f"storage.url={url}", f"hydra.run.dir={out}"]
    proc = run(["-c", _NO_DRIVER_CLI, ",".join(blocked), *args], timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: {message}"], proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
    made = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert made == []


def test_missing_driver_in_process(monkeypatch):
    for name in NO_DRIVERS:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=r"needs a PostgreSQL driver .* pip install 'lrwd"):
        with_driver("postgresql://u:pw@h/db")
    assert with_driver("postgresql://u:pw@h/db", strict=False) == "postgresql://u:pw@h/db"
