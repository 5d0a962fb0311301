"""harness.launch and the Slurm templates against real workers: local processes and the test cluster.

Slurm tests run on the one-node cluster of ``slurm/testcluster.sh`` (fixture ``slurm_cluster``).
Stand-in targets check what submit_slurm itself does (array, sbatch options, secrets); the
preemption tests run the real worker (harness.study.run_worker) on a tiny grid and send the
warning signal while a trial is running.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from harness.config import compose_config
from harness.secrets import STORAGE_URL_ENV
from harness.storage import open_storage
from harness.sweep import launch

ROOT = Path(__file__).resolve().parent.parent

# A 2-cell grid of small trials that each take a few seconds (long enough to be interrupted).
SLOW2 = [
    "sweep.variants=[]",
    "optimizer=adam",
    "optimizer.decay=independent",
    "sweep.lr.min=1e-3",
    "sweep.lr.max=1e-2",
    "sweep.lr.num=2",
    "sweep.weight_decay.min=1e-4",
    "sweep.weight_decay.max=1e-4",
    "sweep.weight_decay.num=1",
    "sweep.population=1",
    "model.width=32",
    "data.num_samples=1000",
    "data.val_size=200",
    "train.epochs=600",
    "train.threads=1",
    "tracking=disabled",
    "storage=journal",
]
SLURM_SMALL = [
    "launcher=slurm",
    "launcher.cpus_per_task=1",
    "launcher.mem_gb=1",
    "launcher.time_min=10",
]


# ---- stand-in targets (module level: the nodes import them via PYTHONPATH) -----------------


def write_marker(cfg_dict: dict) -> str:
    task = os.environ.get("SLURM_ARRAY_TASK_ID", "-")
    Path(cfg_dict["output_dir"], f"task-{task}").write_text(os.environ.get("SLURM_JOB_ID", ""))
    return task


def storage_url_digest(cfg_dict: dict) -> str:
    """sha256 of the storage URL the worker sees (the URL itself must not reach the result)."""
    import hashlib

    from omegaconf import OmegaConf

    from harness.secrets import real_url

    url = str(real_url(OmegaConf.create(cfg_dict)).storage.url)
    return hashlib.sha256(url.encode()).hexdigest()


def write_pid(cfg_dict: dict) -> int:
    Path(cfg_dict["output_dir"], f"pid-{os.getpid()}").write_text("")
    return 0


def fail(cfg_dict: dict) -> int:
    raise RuntimeError("stand-in worker failure")


def sleep_long(cfg_dict: dict) -> int:
    time.sleep(300)
    return 0


# ---- helpers --------------------------------------------------------------------------------


@pytest.fixture
def on_nodes(monkeypatch):
    """Jobs inherit the environment: make this checkout (and tests/) importable there."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv(STORAGE_URL_ENV, "")  # restored after the test (hide_url sets it)


def resolved(overrides: list[str], out: Path):
    from harness.sweep.cli import resolve

    return resolve(compose_config(overrides), overrides, str(out))


def journal_study(out: Path) -> optuna.Study:
    return optuna.load_study(
        study_name="quick-adam-independent",
        storage=open_storage(compose_config(["storage=journal"]), out, create=False),
    )


def wait_running(study: optuna.Study, timeout: float = 120, age_s: float = 0.5) -> None:
    """Until a trial has been RUNNING for ``age_s`` (the worker is inside a trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.datetime_start and time.time() - t.datetime_start.timestamp() > age_s:
                return
        time.sleep(0.2)
    raise TimeoutError("no trial started running")


def assert_preempted_once_and_done(study: optuna.Study, preempted: int = 1) -> None:
    trials = study.get_trials(deepcopy=False)
    done = Counter(t.user_attrs.get("cell") for t in trials if t.state == TrialState.COMPLETE)
    assert len(done) == 2 and set(done.values()) == {1}, [(t.state, t.params) for t in trials]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs.get("fail_reason") for t in failed] == ["preempted"] * preempted
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


# ---- local workers --------------------------------------------------------------------------


@pytest.mark.slow
def test_run_local_workers_exit_codes(tmp_path):
    cfg = compose_config(["storage=journal", f"output_dir={tmp_path}"])
    assert launch.run_local_workers(cfg, 3, target=write_pid) == [0, 0, 0]
    assert len(list(tmp_path.glob("pid-*"))) == 3  # three distinct processes
    assert launch.run_local_workers(cfg, 2, target=fail) == [1, 1]
    t0 = time.monotonic()
    codes = launch.run_local_workers(cfg, 1, target=sleep_long, timeout_s=3)
    assert codes == [-signal.SIGTERM] and time.monotonic() - t0 < 60


@pytest.mark.slow
def test_run_local_workers_real_grid_exactly_once(tmp_path):
    out = tmp_path / "local"
    overrides = [*SLOW2, "train.epochs=1", "sweep.workers=2"]
    cfg = resolved(overrides, out)
    from harness.sweep.cli import prepare

    prepare(cfg)
    assert launch.run_local_workers(cfg) == [0, 0]
    trials = journal_study(out).get_trials(deepcopy=False)
    assert sorted(t.state.name for t in trials) == ["COMPLETE", "COMPLETE"]
    assert len({t.user_attrs["cell"] for t in trials}) == 2


# ---- Slurm through submitit -----------------------------------------------------------------


def test_submit_slurm_array_with_stand_in(slurm_cluster, on_nodes, tmp_path, capsys):
    cfg = compose_config([*SLURM_SMALL, "storage=journal", f"output_dir={tmp_path}"])
    cfg.launcher.wait = True
    sub = launch.submit_slurm(cfg, 3, ["storage=journal"], target=write_marker)
    assert sub.states == {f"{sub.array_id}_{i}": "success" for i in range(3)}, slurm_cluster.logs()
    assert sorted(j.result() for j in sub.jobs) == ["0", "1", "2"]
    assert sorted(p.name for p in tmp_path.glob("task-*")) == ["task-0", "task-1", "task-2"]
    assert sub.folder == tmp_path / "slurm"
    script = (sub.folder / f"{sub.array_id}_submission.sh").read_text()
    for flag in (
        "--array=0-2%3",
        "--cpus-per-task=1",
        "--mem=1GB",
        "--time=10",
        "--signal=USR2@120",
        "--job-name=lrwd-quick",
    ):
        assert f"#SBATCH {flag}\n" in script, flag
    printed = capsys.readouterr().out
    assert f"submitted array job {sub.array_id} (3 tasks)" in printed
    assert f"optuna-dashboard {tmp_path}/study.journal" in printed
    assert "sweep.action=status" in printed and f"output_dir={tmp_path}" in printed


def test_submit_slurm_keeps_the_password_off_disk(slurm_cluster, on_nodes, tmp_path, capsys):
    url = "postgresql://lrwd:hunter2-very-secret@127.0.0.1:9/nope"
    cfg = compose_config(
        [*SLURM_SMALL, "storage=url", f"storage.url={url}", f"output_dir={tmp_path}"]
    )
    sub = launch.submit_slurm(cfg, 1, [], target=storage_url_digest)
    assert sub.wait(poll_s=0.5, timeout_s=120) == {sub.array_id: "success"}
    # The worker got the real URL, from its environment.
    assert sub.jobs[0].result() == hashlib.sha256(url.encode()).hexdigest()
    for path in sub.folder.rglob("*"):
        if path.is_file():
            assert b"hunter2-very-secret" not in path.read_bytes(), path
    printed = capsys.readouterr().out
    assert "hunter2-very-secret" not in printed and "lrwd:***@" in printed


@pytest.mark.slow
@pytest.mark.parametrize("population", [1, 2])
def test_warning_signal_hands_back_and_requeues(
    slurm_cluster, on_nodes, tmp_path, monkeypatch, population
):
    """submitit path: SIGUSR2 mid-trial -> checkpoint() hands the trials back -> requeue -> done.

    With a population of 2 both cells are in flight: both are handed back and trained again,
    and nothing else is (the training log counts trainings per cell).
    """
    from harness.sweep import queue as wq

    out, logs = tmp_path / "sweep", tmp_path / "trainings"
    monkeypatch.setenv(wq.TRAINING_LOG_ENV, str(logs))  # sbatch exports it to the job
    overrides = [o for o in SLOW2 if not o.startswith("sweep.population=")]
    cfg = resolved(
        [*overrides, f"sweep.population={population}", *SLURM_SMALL, "sweep.workers=1"], out
    )
    from harness.sweep.cli import prepare

    _, (study,) = prepare(cfg)
    sub = launch.submit_slurm(cfg, overrides=[])
    wait_running(study)
    in_flight = {t.user_attrs["cell"] for t in study.get_trials(states=(TrialState.RUNNING,))}
    # a claimed cell is logged when its training starts: signal once every claimed cell trains
    deadline = time.monotonic() + 240
    while {cell for (_, cell) in wq.read_training_log(logs)} < in_flight:
        assert time.monotonic() < deadline, slurm_cluster.logs()
        time.sleep(0.2)
    slurm_cluster.run("scancel", f"--signal={launch_signal()}", sub.job_ids[0])
    assert sub.wait(poll_s=0.5, timeout_s=240) == {sub.array_id: "success"}, slurm_cluster.logs()
    assert_preempted_once_and_done(study, preempted=population)
    trained = {cell: n for (_, cell), n in wq.read_training_log(logs).items()}
    assert len(trained) == 2
    assert {c for c, n in trained.items() if n == 2} == in_flight, (trained, in_flight)
    assert max(trained.values()) <= 2
    info = slurm_cluster.run("scontrol", "show", "job", sub.array_id)
    assert "Restarts=1" in info
    log = (sub.folder / f"{sub.array_id}_0_log.err").read_text()
    assert f"checkpoint: handed {population} trial(s) back to the study" in log
    assert "checkpointed 1 times" in log  # the requeued task ran the checkpointed callable


def launch_signal() -> str:
    from submitit.slurm.slurm import SlurmJobEnvironment

    return SlurmJobEnvironment.USR_SIG  # what submitit asks Slurm for (--signal=USR2@...)
