"""The queue protocol in one process: enqueue, claim, lease, reclaim, hand back, the training log.

Fast and storage-parametrized; the multi-process behaviour is in test_faults.py.
"""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from harness.config import compose_config
from harness.results import result_attrs
from harness.storage import open_storage
from harness.sweep import queue as wq

DISTS = {
    "lr": FloatDistribution(1e-3, 1e-1, log=True),
    "weight_decay": FloatDistribution(1e-5, 1e-2, log=True),
    "seed": IntDistribution(0, 1),
}
CELLS = [
    {"lr": lr, "weight_decay": wd, "seed": s}
    for s in (0, 1)
    for lr in (1e-3, 1e-2)
    for wd in (1e-5, 1e-3)
]


@pytest.fixture(params=["sqlite", "journal", "memory"])
def study(request, tmp_path):
    cfg = compose_config([f"storage={request.param}"])
    storage = open_storage(cfg, tmp_path / request.param)
    return optuna.create_study(study_name=f"q-{request.param}-{time.time_ns()}", storage=storage)


def states(study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def test_cell_key_is_six_significant_digits():
    assert wq.cell_key(0.00123456789, 1e-4, 2) == "lr=0.00123457|wd=0.0001|seed=2"
    assert wq.cell_key(0.1, 0.0, 0.0) == "lr=0.1|wd=0|seed=0"


def test_enqueue_cells_once_then_counts(study):
    first = wq.enqueue_cells(study, CELLS, DISTS, heartbeat_s=30)
    assert (first.total, first.queued, first.done, first.running, first.requeued) == (8, 8, 0, 0, 0)
    trials = study.get_trials(deepcopy=False)
    assert [t.params for t in trials] == CELLS
    assert [t.user_attrs[wq.CELL_KEY] for t in trials] == [
        wq.cell_key(c["lr"], c["weight_decay"], c["seed"]) for c in CELLS
    ]
    again = wq.enqueue_cells(study, CELLS, DISTS, heartbeat_s=30)
    assert (again.queued, len(study.trials)) == (8, 8)  # nothing added twice

    queue = wq.WaitingQueue(study)
    (done,) = queue.claim(1)
    assert done.params == CELLS[0]  # oldest first
    assert wq.finish_claim(study, done, {"val_error": 0.25, "test_error": 0.5})
    (failed,) = queue.claim(1)
    wq.fail_claim(study, failed, "boom", requeue_cell=False)
    (live,) = queue.claim(1)
    status = wq.enqueue_cells(study, CELLS, DISTS, heartbeat_s=30)
    assert (status.done, status.running, status.requeued, status.queued) == (1, 1, 1, 5)
    assert len(study.trials) == 9  # the failed cell came back once
    assert study.trials[-1].params == failed.params
    assert study.trials[-1].state == TrialState.WAITING
    assert live.trial._trial_id in {
        t._trial_id for t in study.get_trials(states=(TrialState.RUNNING,))
    }
    # the finished trial carries its result and objective
    t = study.trials[done.number]
    assert t.state == TrialState.COMPLETE and t.value == 0.25 and t.user_attrs["test_error"] == 0.5


def test_claims_are_unique_and_carry_a_lease(study):
    wq.enqueue_cells(study, CELLS, DISTS, heartbeat_s=30)
    a, b = wq.WaitingQueue(study), wq.WaitingQueue(study)
    assert a.refresh() == 8 and b.refresh() == 8  # both list the same waiting trials
    got = a.claim(3) + b.claim(3) + a.claim(5) + b.claim(5)
    assert len(got) == 8 and len({c.number for c in got}) == 8
    assert a.claim(1) == [] and b.claim(1) == []
    for c in got:
        owner, beat = study._storage.get_trial(c.trial._trial_id).system_attrs[wq.LEASE_KEY]
        assert owner == wq.owner_id() and abs(beat - time.time()) < 60
        assert c.cell == wq.cell_key(c.params["lr"], c.params["weight_decay"], c.params["seed"])
        assert isinstance(c.params["seed"], int)
    assert set(states(study)) == {"RUNNING"}


def test_finish_after_failed_under_us_is_refused(study):
    wq.enqueue_cells(study, CELLS[:1], DISTS, heartbeat_s=30)
    (claim,) = wq.WaitingQueue(study).claim(1)
    assert wq.fail_trial(study._storage, claim.trial._trial_id, "stale")
    assert wq.start_claim(claim, {"x": 1}) is False
    assert wq.finish_claim(study, claim, {"val_error": 0.1}) is False
    assert wq.prune_claim(study, claim) is False
    assert states(study) == ["FAIL"]
    assert study.trials[0].user_attrs["fail_reason"] == "stale"


def test_non_finite_results_are_stored_as_none_and_objective_one(study):
    wq.enqueue_cells(study, CELLS[:1], DISTS, heartbeat_s=30)
    (claim,) = wq.WaitingQueue(study).claim(1)
    rec = {"val_error": float("nan"), "train_loss": float("inf"), "diverged": True}
    assert wq.finish_claim(study, claim, result_attrs(rec))
    t = study.trials[0]
    assert t.value == 1.0 and t.user_attrs["train_loss"] is None and t.user_attrs["diverged"]


def test_start_claim_writes_every_attr(study):
    wq.enqueue_cells(study, CELLS[:1], DISTS, heartbeat_s=30)
    (claim,) = wq.WaitingQueue(study).claim(1)
    attrs = {"a": 1, "b": {"c": [1, 2]}, "d": "x"}
    assert wq.start_claim(claim, attrs) is True
    assert {k: study.trials[0].user_attrs[k] for k in attrs} == attrs


def test_stale_by_dead_owner_and_by_old_heartbeat(study):
    wq.enqueue_cells(study, CELLS[:3], DISTS, heartbeat_s=30)
    c_dead, c_old, c_live = wq.WaitingQueue(study).claim(3)
    st_ = study._storage
    host = socket.gethostname()
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    st_.set_trial_system_attr(
        c_dead.trial._trial_id, wq.LEASE_KEY, [f"{host}:{dead_pid}", time.time()]
    )
    st_.set_trial_system_attr(
        c_old.trial._trial_id, wq.LEASE_KEY, ["elsewhere:1", time.time() - 61]
    )
    st_.set_trial_system_attr(
        c_live.trial._trial_id, wq.LEASE_KEY, ["elsewhere:1", time.time() - 59]
    )
    by_id = {t._trial_id: t for t in study.get_trials()}
    assert wq.is_stale(by_id[c_dead.trial._trial_id], 30)
    assert wq.is_stale(by_id[c_old.trial._trial_id], 30)
    assert not wq.is_stale(by_id[c_live.trial._trial_id], 30)
    assert not wq.is_stale(by_id[c_live.trial._trial_id], 30, now=time.time() - 100)
    assert wq.is_stale(by_id[c_live.trial._trial_id], 30, now=time.time() + 10)
    # a live process on this host (us) is never stale by pid, only by heartbeat
    st_.set_trial_system_attr(
        c_live.trial._trial_id, wq.LEASE_KEY, [f"{host}:{os.getpid()}", time.time()]
    )
    assert not wq.is_stale(study._storage.get_trial(c_live.trial._trial_id), 30)
    assert wq.pending(study, 30) == (0, 1)

    assert wq.reclaim_stale(study, 30) == 2
    assert wq.reclaim_stale(study, 30) == 0  # already failed: nobody re-enqueues twice
    assert sorted(states(study)) == ["FAIL", "FAIL", "RUNNING", "WAITING", "WAITING"]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs[wq.CELL_KEY] for t in waiting) == sorted([c_dead.cell, c_old.cell])
    assert {t.user_attrs["fail_reason"] for t in study.get_trials(states=(TrialState.FAIL,))} == {
        "stale"
    }
    assert wq.pending(study, 30) == (2, 1)


def test_waiting_without_lease_is_judged_by_its_start_time(study):
    wq.enqueue_cells(study, CELLS[:1], DISTS, heartbeat_s=30)
    tid = study.trials[0]._trial_id
    assert wq.claim_trial(study._storage, tid)
    t = study._storage.get_trial(tid)
    assert wq.LEASE_KEY not in t.system_attrs
    assert not wq.is_stale(t, 30)
    assert wq.is_stale(t, 30, now=t.datetime_start.timestamp() + 61)


def test_enqueue_cells_fails_and_requeues_stale_running(study):
    wq.enqueue_cells(study, CELLS[:2], DISTS, heartbeat_s=30)
    c1, c2 = wq.WaitingQueue(study).claim(2)
    study._storage.set_trial_system_attr(
        c1.trial._trial_id, wq.LEASE_KEY, ["x:1", time.time() - 100]
    )
    status = wq.enqueue_cells(study, CELLS[:2], DISTS, heartbeat_s=30)
    assert (status.running, status.requeued, status.queued) == (1, 1, 0)
    assert sorted(states(study)) == ["FAIL", "RUNNING", "WAITING"]
    # a lost worker is not the cell's fault: the reason keeps it out of sweep.max_retries
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert [t.user_attrs["fail_reason"] for t in failed] == ["stale"]


def test_slots_keep_a_sampled_budget(study):
    first = wq.enqueue_slots(study, 5, heartbeat_s=30)
    assert (first.queued, len(study.trials)) == (5, 5)
    assert all(t.params == {} and t.system_attrs[wq.SLOT_KEY] for t in study.trials)
    assert wq.enqueue_slots(study, 5, heartbeat_s=30).queued == 5  # idempotent
    queue = wq.WaitingQueue(study, DISTS)
    a, b = queue.claim(2)
    for c in (a, b):
        assert set(c.params) == {"lr", "weight_decay", "seed"}
        assert 1e-3 <= c.params["lr"] <= 1e-1 and 1e-5 <= c.params["weight_decay"] <= 1e-2
        assert study._storage.get_trial(c.trial._trial_id).user_attrs[wq.CELL_KEY] == c.cell
    assert wq.finish_claim(study, a, {"val_error": 0.5})
    wq.fail_claim(study, b, "preempted", requeue_cell=True)  # handed back with its point
    assert len(study.trials) == 6
    back = study.trials[-1]
    assert back.state == TrialState.WAITING and back.params == b.params
    (c,) = queue.claim(1)  # the next cached slot, sampled on claim
    assert set(c.params) == {"lr", "weight_decay", "seed"} and c.number not in (a.number, b.number)
    status = wq.enqueue_slots(study, 7, heartbeat_s=30)  # a larger budget adds the difference
    assert (status.done, status.running) == (1, 1)
    assert status.queued == 5 and len(study.trials) == 8
    with pytest.raises(ValueError, match="distributions"):
        wq.WaitingQueue(study).claim(1)


def test_requeue_of_a_sampled_trial_keeps_its_point_and_a_claimed_slot_stays_a_slot(study):
    wq.enqueue_slots(study, 1, heartbeat_s=30)
    tid = study.trials[0]._trial_id
    assert wq.claim_trial(study._storage, tid)  # claimed, never sampled (died at once)
    assert wq.fail_trial(study._storage, tid, "stale")
    wq.requeue(study, study._storage.get_trial(tid))
    again = study.trials[-1]
    assert again.state == TrialState.WAITING and again.params == {}
    assert again.system_attrs.get(wq.SLOT_KEY) is True


def test_heartbeat_refreshes_and_forgets_finished_trials(study):
    wq.enqueue_cells(study, CELLS[:2], DISTS, heartbeat_s=30)
    c1, c2 = wq.WaitingQueue(study).claim(2)
    for c in (c1, c2):
        study._storage.set_trial_system_attr(c.trial._trial_id, wq.LEASE_KEY, ["x:1", 0.0])
    beat = wq.Heartbeat(study._storage, 0.2)
    try:
        beat.add(c1.trial._trial_id)
        beat.add(c2.trial._trial_id)
        wq.fail_trial(study._storage, c2.trial._trial_id, "gone")
        time.sleep(1.0)
        owner, t = study._storage.get_trial(c1.trial._trial_id).system_attrs[wq.LEASE_KEY]
        assert owner == wq.owner_id() and time.time() - t < 5
        assert c2.trial._trial_id not in beat.trial_ids  # a finished trial is dropped
        beat.discard(c1.trial._trial_id)
        assert beat.trial_ids == set()
    finally:
        beat.close()


def test_training_log_counts_per_study_and_cell(tmp_path, monkeypatch, study):
    wq.enqueue_cells(study, CELLS[:3], DISTS, heartbeat_s=30)
    claims = wq.WaitingQueue(study).claim(3)
    wq.log_training("s", claims)  # not set: writes nothing anywhere
    monkeypatch.setenv(wq.TRAINING_LOG_ENV, str(tmp_path / "log"))
    wq.log_training("s", claims)
    wq.log_training("s", claims[:1])
    wq.log_training("other", claims[:1])
    counts = wq.read_training_log(tmp_path / "log")
    assert counts[("s", claims[0].cell)] == 2 and counts[("s", claims[1].cell)] == 1
    assert counts[("other", claims[0].cell)] == 1 and sum(counts.values()) == 5
    (path,) = (tmp_path / "log").glob("*.jsonl")
    assert path.name == f"{socket.gethostname()}-{os.getpid()}.jsonl"
    first = json.loads(path.read_text().splitlines()[0])
    assert first["trial"] == claims[0].number and first["owner"] == wq.owner_id()


def test_cell_counts(study):
    wq.enqueue_cells(study, CELLS[:3], DISTS, heartbeat_s=30)
    (c,) = wq.WaitingQueue(study).claim(1)
    counts = wq.cell_counts(study)
    assert counts["WAITING"] == 2 and counts["RUNNING"] == 1 and counts["COMPLETE"] == 0


def test_failed_cells_are_retried_at_most_max_retries_times(study):
    wq.enqueue_cells(study, CELLS[:1], DISTS, heartbeat_s=30, max_retries=2)
    for attempt in range(3):
        (claim,) = wq.WaitingQueue(study).claim(1)
        wq.fail_claim(study, claim, "RuntimeError: boom", requeue_cell=False)
        status = wq.enqueue_cells(study, CELLS[:1], DISTS, heartbeat_s=30, max_retries=2)
        if attempt < 2:
            assert (status.requeued, status.failed) == (1, 0), attempt
    assert (status.requeued, status.failed, status.queued) == (0, 1, 0)
    assert states(study) == ["FAIL"] * 3
    # lost workers and hand-backs are not the cell's fault: they never use up a retry
    wq.enqueue_cells(study, CELLS[1:2], DISTS, heartbeat_s=30, max_retries=0)
    for reason in ("stale", "preempted", "stale"):
        (claim,) = wq.WaitingQueue(study).claim(1)
        wq.fail_claim(study, claim, reason, requeue_cell=False)
        status = wq.enqueue_cells(study, CELLS[1:2], DISTS, heartbeat_s=30, max_retries=0)
        assert (status.requeued, status.failed) == (1, 0), reason
    # no limit
    status = wq.enqueue_cells(study, CELLS[:1], DISTS, heartbeat_s=30)
    assert status.requeued == 1


def test_stale_cell_behind_a_cell_failed_for_good_is_queued_again(study):
    """A cell out of retries does not stop the pass: the cells after it are still judged."""
    wq.enqueue_cells(study, CELLS[:2], DISTS, heartbeat_s=30, max_retries=0)
    failed, lost = wq.WaitingQueue(study).claim(2)
    assert failed.params == CELLS[0] and lost.params == CELLS[1]
    wq.fail_claim(study, failed, "RuntimeError: boom", requeue_cell=False)
    study._storage.set_trial_system_attr(
        lost.trial._trial_id, wq.LEASE_KEY, ["elsewhere:1", time.time() - 100]
    )
    for run, counts in enumerate([(1, 1, 0), (1, 0, 1)]):  # (failed, requeued, queued)
        status = wq.enqueue_cells(study, CELLS[:2], DISTS, heartbeat_s=30, max_retries=0)
        assert (status.failed, status.requeued, status.queued) == counts, run
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        assert [t.user_attrs[wq.CELL_KEY] for t in waiting] == [lost.cell], run
    assert sorted(states(study)) == ["FAIL", "FAIL", "WAITING"]


def test_pid_dead_only_for_a_dead_process_on_this_host():
    import subprocess
    import sys

    host = socket.gethostname()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert wq._pid_dead(f"{host}:{child.pid}") is False
        assert child.poll() is None  # asking sends no signal that ends it
    finally:
        child.kill()
        child.wait()
    assert wq._pid_dead(f"{host}:{child.pid}") is True  # reaped: no such process
    assert wq._pid_dead(f"elsewhere:{child.pid}") is False  # another host: cannot tell
    assert wq._pid_dead(f"{host}:x1") is False and wq._pid_dead("") is False
    assert wq._pid_dead(f"a:b:{host}:{child.pid}") is False  # the host is all but the pid


def test_staleness_boundary_and_finished_trials(study):
    wq.enqueue_cells(study, CELLS[:2], DISTS, heartbeat_s=30)
    c1, c2 = wq.WaitingQueue(study).claim(2)
    beat = 1_000_000.0
    study._storage.set_trial_system_attr(c1.trial._trial_id, wq.LEASE_KEY, ["x:1", beat])
    t = study._storage.get_trial(c1.trial._trial_id)
    assert not wq.is_stale(t, 30, now=beat + 60)  # exactly 2 x heartbeat: still live
    assert wq.is_stale(t, 30, now=beat + 60.001)
    assert wq.finish_claim(study, c2, {"val_error": 0.5})
    done = study._storage.get_trial(c2.trial._trial_id)
    assert not wq.is_stale(done, 30, now=time.time() + 1e6)  # only RUNNING trials go stale


def test_enqueue_slots_counts_and_reclaims(study):
    wq.enqueue_slots(study, 4, heartbeat_s=30)
    queue = wq.WaitingQueue(study, DISTS)
    a, b, c = queue.claim(3)
    assert wq.finish_claim(study, a, {"val_error": 0.5})
    assert wq.finish_claim(study, b, {"val_error": 0.4})
    # c's worker died: its lease is old
    study._storage.set_trial_system_attr(
        c.trial._trial_id, wq.LEASE_KEY, ["x:1", time.time() - 100]
    )
    status = wq.enqueue_slots(study, 4, heartbeat_s=30)
    assert (status.total, status.done, status.running, status.queued) == (4, 2, 0, 2)
    lost = study._storage.get_trial(c.trial._trial_id)
    assert lost.state == TrialState.FAIL and lost.user_attrs["fail_reason"] == "stale"
    assert len(study.trials) == 5  # one slot added for the lost one
    (d,) = queue.claim(1)
    status = wq.enqueue_slots(study, 4, heartbeat_s=30)  # budget reached: nothing added
    assert (status.done, status.running, status.queued) == (2, 1, 1) and len(study.trials) == 5
    assert d.number not in (a.number, b.number, c.number)


def test_reclaimed_slot_that_never_drew_its_point_stays_a_slot(study):
    wq.enqueue_slots(study, 1, heartbeat_s=30)
    tid = study.trials[0]._trial_id
    assert wq.claim_trial(study._storage, tid)
    study._storage.set_trial_system_attr(tid, wq.LEASE_KEY, ["x:1", time.time() - 100])
    assert wq.reclaim_stale(study, 30) == 1
    back = study.trials[-1]
    assert back.state == TrialState.WAITING and back.params == {}
    assert back.system_attrs.get(wq.SLOT_KEY) is True


def test_requeued_grid_cell_is_not_a_slot(study):
    wq.enqueue_cells(study, CELLS[:1], DISTS, heartbeat_s=30)
    (claim,) = wq.WaitingQueue(study).claim(1)
    wq.fail_claim(study, claim, "preempted", requeue_cell=True)
    back = study.trials[-1]
    assert back.state == TrialState.WAITING and back.params == CELLS[0]
    assert wq.SLOT_KEY not in back.system_attrs
    assert back.user_attrs[wq.CELL_KEY] == claim.cell


def test_pending_counts_every_live_trial(study):
    wq.enqueue_cells(study, CELLS[:4], DISTS, heartbeat_s=30)
    wq.WaitingQueue(study).claim(3)
    assert wq.pending(study, 30) == (1, 3)


def test_prune_and_fail_claims_record_what_happened(study):
    wq.enqueue_cells(study, CELLS[:3], DISTS, heartbeat_s=30)
    a, b, c = wq.WaitingQueue(study).claim(3)
    assert wq.prune_claim(study, a) is True
    assert study._storage.get_trial(a.trial._trial_id).state == TrialState.PRUNED
    assert wq.prune_claim(study, a) is False  # already finished
    long = "E" * 600
    wq.fail_claim(study, b, long, requeue_cell=False)
    assert study._storage.get_trial(b.trial._trial_id).user_attrs["fail_reason"] == "E" * 500
    assert len(study.trials) == 3  # not requeued
    assert wq.finish_claim(study, c, {"val_error": 0.3})
    assert wq.prune_claim(study, c) is False


def test_sampled_points_are_log_uniform(tmp_path):
    storage = open_storage(compose_config(["storage=memory"]), tmp_path)
    study = optuna.create_study(
        study_name="draws", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    wq.enqueue_slots(study, 200, heartbeat_s=30)
    claims = wq.WaitingQueue(study, DISTS).claim(200)
    lrs = np.array([c.params["lr"] for c in claims])
    wds = np.array([c.params["weight_decay"] for c in claims])
    # log-uniform on [1e-3, 1e-1]: half below 1e-2 (uniform would put 9% there)
    assert 0.38 < np.mean(lrs < 1e-2) < 0.62
    assert 0.38 < np.mean(wds < np.sqrt(1e-5 * 1e-2)) < 0.62
    assert set(c.params["seed"] for c in claims) == {0, 1}


def test_training_log_makes_its_folder_and_stamps_the_time(tmp_path, monkeypatch, study):
    wq.enqueue_cells(study, CELLS[:1], DISTS, heartbeat_s=30)
    claims = wq.WaitingQueue(study).claim(1)
    folder = tmp_path / "a" / "b"
    monkeypatch.setenv(wq.TRAINING_LOG_ENV, str(folder))
    t0 = time.time()
    wq.log_training("s", claims)
    (path,) = folder.glob("*.jsonl")
    rec = json.loads(path.read_text())
    assert (
        t0 <= rec["time"] <= time.time() and rec["study"] == "s" and rec["cell"] == claims[0].cell
    )


def test_heartbeat_thread_never_keeps_a_worker_alive(study):
    beat = wq.Heartbeat(study._storage, 0.2)
    try:
        assert beat._thread.daemon and beat._thread.is_alive()
    finally:
        beat.close()
    assert not beat._thread.is_alive()
