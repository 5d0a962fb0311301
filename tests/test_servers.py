"""The test servers themselves: PostgreSQL as a shared Optuna storage, the one-node Slurm cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from tests.servers import (
    postgres_missing,
    postgres_server,
    slurm_cluster,
    slurm_missing,
    unavailable,
)

# One worker process: load the study and optimize a trivial objective.
_OPTUNA_WORKER = """
import os, optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=os.environ["STUDY"], storage=os.environ["URL"])
study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.5) ** 2, n_trials=int(os.environ["N"]))
"""


@pytest.mark.postgres
def test_postgres_is_password_protected_and_loopback_only(postgres_url):
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SHOW listen_addresses")).scalar() == "127.0.0.1"
        assert conn.execute(sa.text("SELECT current_user")).scalar() == "lrwd"
    engine.dispose()
    wrong = sa.make_url(postgres_url).set(password="not-the-password")
    with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
        sa.create_engine(wrong).connect()


@pytest.mark.postgres
def test_optuna_rdb_storage_three_concurrent_processes(postgres_url):
    storage = optuna.storages.RDBStorage(postgres_url)
    study = optuna.create_study(study_name="servers-3proc", storage=storage)
    env = {**os.environ, "URL": postgres_url, "STUDY": study.study_name, "N": "8"}
    procs = [subprocess.Popen([sys.executable, "-c", _OPTUNA_WORKER], env=env) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    trials = optuna.load_study(study_name=study.study_name, storage=storage).get_trials()
    assert len(trials) == 24
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(24))  # numbers are unique
    assert len({t._trial_id for t in trials}) == 24
    assert study.best_value < 0.25  # (x - 0.5)^2 at some x in [-1, 1] sampled 24 times


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_server_cleans_up():
    why = postgres_missing()
    if why:
        unavailable("PostgreSQL", why)
    with postgres_server(user="u2", database="d2") as url:
        port = str(sa.make_url(url).port)
        # postmaster.pid: pid, data dir, start time, port, ...
        mine = [
            f
            for f in Path(tempfile.gettempdir()).glob("lrwd-pg-*/data/postmaster.pid")
            if f.read_text().splitlines()[3] == port
        ]
        assert len(mine) == 1
        base, pid = mine[0].parent.parent, int(mine[0].read_text().split()[0])
        engine = sa.create_engine(url)
        with engine.connect() as conn:  # its pooled connection stays open during the stop
            assert conn.execute(sa.text("SELECT current_database()")).scalar() == "d2"
            t0 = time.monotonic()
    assert not base.exists()
    assert not _running(pid)
    assert time.monotonic() - t0 < 10


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# --------------------------------------------------------------------------------------------
# Slurm


@pytest.mark.slurm
def test_job_array_completes_with_outputs(slurm_cluster, tmp_path):
    out = tmp_path / "array"
    out.mkdir()
    code = (
        "import os, socket; "
        "print('task', os.environ['SLURM_ARRAY_TASK_ID'], 'of', os.environ['SLURM_ARRAY_JOB_ID'])"
    )
    job = slurm_cluster.sbatch(
        "--array=0-2",
        "--cpus-per-task=1",
        "--mem=100M",
        "--time=2",
        f"--output={out}/%A_%a.out",
        "--wrap",
        f'{sys.executable} -c "{code}"',
    )
    states = slurm_cluster.wait(job, timeout=90)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(3)}, slurm_cluster.logs()
    for i in range(3):
        text = (out / f"{job}_{i}.out").read_text()
        assert text.strip() == f"task {i} of {job}"


@pytest.mark.slurm
def test_scancel_stops_a_running_job(slurm_cluster, tmp_path):
    pidfile = tmp_path / "pid"
    job = slurm_cluster.sbatch(
        "--time=5",
        "--mem=100M",
        f"--output={tmp_path}/%j.out",
        "--wrap",
        f"echo $$ > {pidfile}; exec sleep 300",
    )
    slurm_cluster.wait(job, timeout=60, until={"RUNNING"})
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline, "the job never wrote its pid"
        time.sleep(0.1)
    pid = int(pidfile.read_text())
    assert _running(pid)
    slurm_cluster.run("scancel", job)
    assert slurm_cluster.wait(job, timeout=30) == {job: "CANCELLED"}
    deadline = time.monotonic() + 10
    while _running(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived scancel"
        time.sleep(0.1)


@pytest.mark.slurm
@pytest.mark.slow
def test_testcluster_stop_leaves_no_daemons(tmp_path):
    why = slurm_missing()
    if why:
        unavailable("Slurm", why)
    with slurm_cluster(cpus=2) as cluster:
        pids = {
            name: int((cluster.dir / "run" / f"{name}.pid").read_text())
            for name in ("munged", "slurmctld", "slurmd")
        }
        assert all(_running(p) for p in pids.values())
        job = cluster.sbatch("--mem=50M", f"--output={tmp_path}/%j.out", "--wrap", "sleep 300")
        cluster.wait(job, timeout=60, until={"RUNNING"})
        assert cluster.start_s < 30
        base = cluster.dir
    assert not base.exists()
    assert not [n for n, p in pids.items() if _running(p)]
    sleepers = subprocess.run(["pgrep", "-f", "^sleep 300$"], capture_output=True, text=True)
    mine = [p for p in sleepers.stdout.split() if str(base) in _environ(int(p))]
    assert not mine


def _environ(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""
