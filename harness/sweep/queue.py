"""A sweep's work queue, kept in the Optuna storage: enqueue, claim, lease, reclaim, hand back.

How a cell runs exactly once
----------------------------
Optuna's ``GridSampler`` samples inside ``ask()``; two workers can draw the same point, and its
cost grows with the number of finished trials. lrwd instead *enqueues* every grid cell as a
``WAITING`` trial (one process, the driver, before any worker starts). Random and TPE sweeps
enqueue their budget the same way, as ``WAITING`` trials without parameters ("slots") that the
claiming worker's sampler fills in, so a budget can never be overrun by workers that check it
at the same moment.

Workers *claim* a waiting trial with one compare-and-set, WAITING -> RUNNING, that succeeds for
exactly one claimant (:func:`claim_trial`): a conditional ``UPDATE ... WHERE state = WAITING`` on
RDB storages (SQLite and PostgreSQL alike), log order on a journal file, a lock in memory. A
worker trains only what it won.

A claimed trial carries a lease (system attr ``lrwd:lease`` = owner ``host:pid`` and the time of
its last heartbeat, refreshed by a thread every ``sweep.heartbeat_s``). A running trial is *stale*
when its owner is a dead process on this host, or its heartbeat is older than
``2 * sweep.heartbeat_s``. Whoever moves a stale trial RUNNING -> FAIL first (the same kind of
compare-and-set; every later attempt raises ``UpdateFinishedTrialError``) re-enqueues its cell,
so a cell is never queued twice. A worker whose trial was failed under it cannot write to it or
``tell`` COMPLETE (the storage refuses): it drops the trial, untrained if it had not started, so
no cell is COMPLETE twice.

Resume: re-running the same command re-opens the study; cells with a COMPLETE (or PRUNED) trial
are skipped, WAITING and live RUNNING ones are left alone, FAILed and stale ones are enqueued again.

This is the only module that uses Optuna's private storage API.

Training log
------------
With ``LRWD_TRAINING_LOG=<folder>`` set, every worker process appends one JSON line per trial it
starts to train to ``<folder>/<host>-<pid>.jsonl`` (study, trial number, cell, owner, time, and
the torch thread count the worker trains with).
:func:`read_training_log` counts trainings per cell: the evidence that a cell was trained once,
independent of the trial states the storage keeps.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

LEASE_KEY = "lrwd:lease"  # [owner "host:pid", unix time of the last heartbeat]
CELL_KEY = "cell"
SLOT_KEY = "lrwd:slot"  # system attr of a sampled study's budget slot (no params yet)
TRAINING_LOG_ENV = "LRWD_TRAINING_LOG"
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)
ROUND_KEY = "round"  # user attr: the valley tracer's round of a cell (0 = the coarse grid)
CARRIED_ATTRS = (ROUND_KEY,)  # user attrs a re-enqueued cell keeps


def cell_key(lr: float, wd: float, seed: int) -> str:
    return f"lr={lr:.6g}|wd={wd:.6g}|seed={int(seed)}"


# --------------------------------------------------------------------------------------------
# Owners and leases


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_dead(owner: str) -> bool:
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_stale(trial: FrozenTrial, heartbeat_s: float, now: float | None = None) -> bool:
    """A RUNNING trial whose owner died on this host, or whose heartbeat is too old."""
    if trial.state != TrialState.RUNNING:
        return False
    owner, beat = trial.system_attrs.get(LEASE_KEY) or (None, None)
    if owner and owner != owner_id() and _pid_dead(owner):
        return True
    if beat is None:
        start = trial.datetime_start
        beat = start.timestamp() if start is not None else None
    if beat is None:
        return False
    return (now if now is not None else time.time()) - float(beat) > 2 * heartbeat_s


class Heartbeat:
    """Refreshes ``lrwd:lease`` on the trials a worker holds, from a daemon thread."""

    def __init__(self, storage, interval: float) -> None:
        self.storage = storage
        self.interval = max(float(interval), 0.2)
        self.trial_ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lrwd-heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.add(trial_id)

    def discard(self, trial_id: int) -> None:
        with self._lock:
            self.trial_ids.discard(trial_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self.trial_ids)
            for tid in ids:
                try:
                    self.storage.set_trial_system_attr(tid, LEASE_KEY, [owner_id(), time.time()])
                except Exception:  # noqa: BLE001 - a finished or lost trial needs no beat
                    self.discard(tid)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# What the rest of the sweep reads of a trial and a study (Optuna's private API stays here)

FIXED_KEY = "fixed_params"  # system attr: the params a WAITING trial was enqueued with


def trial_id(trial: FrozenTrial | optuna.Trial) -> int:
    """The storage's id of a trial (what the heartbeat and the compare-and-set take)."""
    return trial._trial_id


def cell_params(trial: FrozenTrial) -> dict[str, Any]:
    """A cell's ``lr``, ``weight_decay`` and ``seed``: the trial's params, or the params it was
    enqueued with (empty for a sampled study's slot that no worker has drawn yet)."""
    return trial.params or trial.system_attrs.get(FIXED_KEY) or {}


def companion_study(study: optuna.Study, name: str, *, create: bool = False) -> optuna.Study:
    """The study ``name`` in ``study``'s storage (created with ``create``)."""
    if create:
        return optuna.create_study(study_name=name, storage=study._storage, load_if_exists=True)
    return optuna.load_study(study_name=name, storage=study._storage)


def fresh_trials(study: optuna.Study, states: tuple[TrialState, ...]) -> list[FrozenTrial]:
    """The study's trials in ``states``, read from the storage now (not this thread's cache)."""
    study._thread_local.cached_all_trials = None
    return study.get_trials(deepcopy=False, states=states)


def fail_stale(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Fail a stale RUNNING trial (reason ``stale``); True for the one caller that won."""
    return fail_trial(study._storage, trial._trial_id, reason="stale")


def claim_leased(study: optuna.Study, trial: FrozenTrial) -> bool:
    """Claim a WAITING trial (the compare-and-set) and take its lease; True if ours."""
    try:
        return claim_trial(study._storage, trial._trial_id, lease=True)
    except UpdateFinishedTrialError:
        return False


def complete_held(
    study: optuna.Study, trial: FrozenTrial, attrs: dict[str, Any], value: float
) -> bool:
    """Write ``attrs`` (user attrs) on a trial this process holds and tell it COMPLETE with
    ``value``. False when it was failed under us (declared stale): nothing more is written."""
    storage = study._storage
    tid = trial._trial_id
    try:
        for key, v in attrs.items():
            storage.set_trial_user_attr(tid, key, v)
        storage.set_trial_state_values(tid, state=TrialState.COMPLETE, values=[float(value)])
        return True
    except UpdateFinishedTrialError:
        return False


# --------------------------------------------------------------------------------------------
# The compare-and-set


def _backend(storage):
    return getattr(storage, "_backend", storage)


def claim_trial(storage, trial_id: int, *, lease: bool = False) -> bool:
    """Move a trial WAITING -> RUNNING. True for exactly one caller, however many try at once.

    On RDB storages this is one conditional ``UPDATE ... WHERE state = 'WAITING'`` whose row
    count decides: Optuna's own ``set_trial_state_values`` reads the state and then writes it,
    and on SQLite (which has no ``SELECT ... FOR UPDATE``) two processes can both read WAITING
    and both win. Journal and in-memory storages decide in Optuna (log order; a lock).

    With ``lease`` the winner also takes the trial's lease (``lrwd:lease`` = this process, now):
    on RDB storages in the same transaction as the update, so a claimed trial never exists
    without its owner. A trial failed under the winner before its lease is written raises
    ``UpdateFinishedTrialError`` (not ours after all).
    """
    backend = _backend(storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        won = _claim_rdb(backend, trial_id, lease)
        if won is not None:
            return won
    try:
        won = bool(storage.set_trial_state_values(trial_id, state=TrialState.RUNNING))
    except UpdateFinishedTrialError:
        return False
    if won and lease:
        storage.set_trial_system_attr(trial_id, LEASE_KEY, [owner_id(), time.time()])
    return won


def _claim_rdb(backend: optuna.storages.RDBStorage, trial_id: int, lease: bool) -> bool | None:
    """The conditional update (and the lease); None if this Optuna's RDB layout is not the one
    known here."""
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    try:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy import update
    except ImportError:  # pragma: no cover - a future Optuna layout
        return None
    if lease and write is None:  # pragma: no cover - a future Optuna layout
        return None
    table = models.TrialModel
    stmt = (
        update(table)
        .where(table.trial_id == trial_id, table.state == TrialState.WAITING)
        .values(state=TrialState.RUNNING, datetime_start=datetime.now())
        .execution_options(synchronize_session=False)
    )
    with _create_scoped_session(backend.scoped_session) as session:  # errors propagate
        won = session.execute(stmt).rowcount == 1
        if won and lease:
            value = [owner_id(), time.time()]
            write(session, models.TrialSystemAttributeModel, trial_id, LEASE_KEY, value)
        return won


def fail_trial(storage, trial_id: int, reason: str) -> bool:
    """Move a trial to FAIL. True only for the one caller whose transition took effect.

    The reason is written first: a finished trial's attributes can no longer change.
    """
    try:
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        return bool(storage.set_trial_state_values(trial_id, state=TrialState.FAIL))
    except UpdateFinishedTrialError:
        return False


# --------------------------------------------------------------------------------------------
# Enqueueing (driver side, one process)


@dataclass
class CellStatus:
    done: int = 0
    queued: int = 0
    running: int = 0
    requeued: int = 0
    failed: int = 0  # failed more than max_retries times: left FAILED
    total: int = 0


# Fail reasons of a trial lost through no fault of its cell: they never count as a retry.
LOST_REASONS = ("stale", "preempted")


def failures(trials: Iterable[FrozenTrial]) -> int:
    """How often a cell's trials failed in training (lost workers and hand-backs not counted)."""
    return sum(
        1
        for t in trials
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") not in LOST_REASONS
    )


def _waiting_trial(
    cell: dict[str, Any],
    key: str,
    dists: dict[str, Any],
    *,
    slot: bool = False,
    attrs: dict[str, Any] | None = None,
) -> FrozenTrial:
    """A WAITING trial that already carries its params, so claiming it writes no params.

    A slot (``slot=True``, ``cell`` empty) carries none: the claiming worker's sampler draws them.
    ``attrs`` are further user attrs (e.g. the valley tracer's ``round``).
    """
    return optuna.trial.create_trial(
        state=TrialState.WAITING,
        params=dict(cell),
        distributions={k: dists[k] for k in cell} if cell else {},
        system_attrs={FIXED_KEY: dict(cell), **({SLOT_KEY: True} if slot else {})},
        user_attrs={**({CELL_KEY: key} if key else {}), **(attrs or {})},
    )


def enqueue_cells(
    study: optuna.Study,
    cells: list[dict[str, Any]],
    dists: dict[str, Any],
    heartbeat_s: float,
    max_retries: int | None = None,
    attrs: dict[str, Any] | None = None,
) -> CellStatus:
    """Enqueue every cell that has no finished, waiting or live trial. Driver only (and the
    valley tracer's holder of a round's gate, see :mod:`harness.sweep.valley`).

    A cell whose trials failed in training more than ``max_retries`` times (None: no limit) is
    left FAILED and counted in ``failed``. ``attrs``: user attrs every enqueued trial carries.
    """
    status = CellStatus(total=len(cells))
    by_cell: dict[str, list[FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False):
        by_cell.setdefault(t.user_attrs.get(CELL_KEY, ""), []).append(t)
    storage = study._storage
    to_add = []
    for cell in cells:
        key = cell_key(cell["lr"], cell["weight_decay"], cell["seed"])
        states = by_cell.get(key, [])
        if any(t.state in DONE_STATES for t in states):
            status.done += 1
            continue
        if any(t.state == TrialState.WAITING for t in states):
            status.queued += 1
            continue
        live = [t for t in states if t.state == TrialState.RUNNING]
        stale = [t for t in live if is_stale(t, heartbeat_s)]
        for t in stale:
            fail_trial(storage, t._trial_id, reason="stale")
        if len(live) > len(stale):
            status.running += 1
            continue
        if max_retries is not None and failures(states) > max_retries:
            status.failed += 1
            continue
        if states:
            status.requeued += 1
        to_add.append(_waiting_trial(cell, key, dists, attrs=attrs))
    if to_add:
        study.add_trials(to_add)
        status.queued += len(to_add) - status.requeued
    return status


def enqueue_slots(study: optuna.Study, budget: int, heartbeat_s: float) -> CellStatus:
    """Top a sampled study up to ``budget`` trials that are done, waiting or live. Driver only.

    Failed and stale trials do not count, so a resume re-issues their slots (a handed-back
    trial comes back with its own sampled point, see :func:`requeue`).
    """
    status = CellStatus(total=budget)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(t, heartbeat_s):
            fail_trial(study._storage, t._trial_id, reason="stale")
    for t in study.get_trials(deepcopy=False):
        if t.state in DONE_STATES:
            status.done += 1
        elif t.state == TrialState.WAITING:
            status.queued += 1
        elif t.state == TrialState.RUNNING:
            status.running += 1
    missing = budget - status.done - status.queued - status.running
    if missing > 0:
        study.add_trials([_waiting_trial({}, "", {}, slot=True) for _ in range(missing)])
        status.queued += missing
    return status


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue the cell of a failed trial again (a slot keeps the point it had been given)."""
    cell = trial.system_attrs.get(FIXED_KEY) or dict(trial.params)
    study.add_trial(
        _waiting_trial(
            cell,
            trial.user_attrs.get(CELL_KEY, ""),
            dict(trial.distributions),
            slot=bool(trial.system_attrs.get(SLOT_KEY)) and not cell,
            attrs={k: trial.user_attrs[k] for k in CARRIED_ATTRS if k in trial.user_attrs},
        )
    )


def reclaim_stale(study: optuna.Study, heartbeat_s: float) -> int:
    """Fail stale RUNNING trials and re-enqueue the cells whose transition this caller won."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(t, heartbeat_s) and fail_trial(study._storage, t._trial_id, reason="stale"):
            if t.user_attrs.get(CELL_KEY) or t.system_attrs.get(SLOT_KEY):
                requeue(study, t)
            n += 1
    return n


def cell_counts(study: optuna.Study) -> dict[str, int]:
    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] += 1
    return counts


def pending(study: optuna.Study, heartbeat_s: float) -> tuple[int, int]:
    """(waiting, live running) trial counts."""
    waiting = running = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)):
        if t.state == TrialState.WAITING:
            waiting += 1
        elif not is_stale(t, heartbeat_s):
            running += 1
    return waiting, running


def waiting_ids(study: optuna.Study) -> list[int]:
    """The ids of the study's WAITING trials, oldest first (on an RDB storage, ids only)."""
    backend = _backend(study._storage)
    if isinstance(backend, optuna.storages.RDBStorage):
        try:
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session
        except ImportError:  # pragma: no cover - a future Optuna layout
            models = None
        if models is not None:
            table = models.TrialModel
            with _create_scoped_session(backend.scoped_session) as session:
                rows = (
                    session.query(table.trial_id)
                    .filter(table.study_id == study._study_id, table.state == TrialState.WAITING)
                    .order_by(table.trial_id)
                    .all()
                )
            return [int(r[0]) for r in rows]
    waiting = study._storage.get_all_trials(
        study._study_id, deepcopy=False, states=(TrialState.WAITING,)
    )
    return [t._trial_id for t in waiting]


# --------------------------------------------------------------------------------------------
# Claiming (worker side)


@dataclass
class Claim:
    trial: optuna.Trial
    params: dict[str, Any]

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def cell(self) -> str:
        p = self.params
        return cell_key(p["lr"], p["weight_decay"], p["seed"])


class WaitingQueue:
    """A worker's cached list of WAITING trial ids for one study.

    A worker lists the waiting ids once (on an RDB storage one ``SELECT`` of ids, no trial
    bodies) and walks the list: ids that another worker claimed meanwhile fail the
    compare-and-set cheaply. It takes the oldest first; after losing a compare-and-set it jumps
    to a random place in its list and walks on from there, so N workers that start together
    spread over the queue instead of all trying the same next id (which costs every claim N - 1
    lost attempts), and a claim of P cells still takes neighbouring cells. The list is
    refreshed when it runs dry or after ``MAX_LOST`` lost attempts in a row (it has gone stale).

    ``dists`` (lr, weight_decay and seed distributions) is needed for sampled studies: a claimed
    slot has its point drawn by the study's sampler.
    """

    MAX_LOST = 4

    def __init__(self, study: optuna.Study, dists: dict[str, Any] | None = None) -> None:
        self.study = study
        self.dists = dists
        self.ids: list[int] = []  # oldest first
        self.pos = 0  # where the walk takes the next id
        self._rng = random.Random(f"{owner_id()}:{time.time_ns()}")

    def refresh(self) -> int:
        self.ids = waiting_ids(self.study)
        self.pos = 0
        return len(self.ids)

    def claim(self, n: int) -> list[Claim]:
        """Claim up to ``n`` cells; the compare-and-set makes each claim unique."""
        claims: list[Claim] = []
        storage = self.study._storage
        refreshed = False
        lost = 0
        while len(claims) < n:
            if not self.ids or (lost >= self.MAX_LOST and not refreshed):
                if refreshed or not self.refresh():
                    break
                refreshed, lost = True, 0
            if self.pos >= len(self.ids):
                self.pos = 0
            tid = self.ids.pop(self.pos)
            if not claim_trial(storage, tid, lease=True):
                lost += 1
                self.pos = self._rng.randrange(len(self.ids)) if self.ids else 0
                continue
            lost = 0
            try:
                claims.append(self._claimed(tid))
            except UpdateFinishedTrialError:
                continue  # failed under us right after the claim: not ours
        return claims

    def _claimed(self, tid: int) -> Claim:
        self.study._thread_local.cached_all_trials = None  # as Study.ask does
        trial = optuna.Trial(self.study, tid)
        params = dict(trial.params)
        if not params:  # a slot: the sampler draws the point now
            params = sample_point(trial, self.dists)
        params["seed"] = int(params["seed"])
        return Claim(trial, params)


def sample_point(trial: optuna.Trial, dists: dict[str, Any] | None) -> dict[str, Any]:
    """Draw lr, weight decay and seed for a claimed slot with the study's sampler."""
    if not dists:
        raise ValueError("a sampled study's slot was claimed without its distributions")
    lr, wd, seed = dists["lr"], dists["weight_decay"], dists["seed"]
    params = {
        "lr": trial.suggest_float("lr", lr.low, lr.high, log=lr.log),
        "weight_decay": trial.suggest_float("weight_decay", wd.low, wd.high, log=wd.log),
        "seed": trial.suggest_int("seed", seed.low, seed.high),
    }
    trial.set_user_attr(CELL_KEY, cell_key(params["lr"], params["weight_decay"], params["seed"]))
    return params


# --------------------------------------------------------------------------------------------
# Writing to a claimed trial


def set_user_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """``trial.set_user_attr`` for every item, in one transaction on RDB storages.

    Optuna commits each user attr on its own (a lookup, an upsert and a commit each); a trial
    records ~15 of them. On an RDBStorage they are written here through the
    storage's own per-attr upsert inside one session, so they land together or not at all, with
    the same checks (a finished trial raises ``UpdateFinishedTrialError``). Other storages, or
    an Optuna whose internals differ, take the per-key path.
    """
    storage = trial.storage
    backend = _backend(storage)
    write = getattr(backend, "_set_trial_attr_without_commit", None)
    if isinstance(backend, optuna.storages.RDBStorage) and write is not None:
        try:
            from optuna.storages._rdb import models
            from optuna.storages._rdb.storage import _create_scoped_session
        except ImportError:  # pragma: no cover - a future Optuna layout
            models = None
        if models is not None:
            with _create_scoped_session(backend.scoped_session, True) as session:
                for key, value in attrs.items():
                    write(session, models.TrialUserAttributeModel, trial._trial_id, key, value)
            trial._cached_frozen_trial.user_attrs.update(attrs)
            return
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


def start_claim(claim: Claim, attrs: dict[str, Any]) -> bool:
    """Write a claimed trial's start attributes. False if it was failed under us (not ours)."""
    try:
        set_user_attrs(claim.trial, attrs)
        return True
    except UpdateFinishedTrialError:
        return False


def finish_claim(study: optuna.Study, claim: Claim, attrs: dict[str, Any]) -> bool:
    """Write the result ``attrs`` and tell COMPLETE with ``attrs["val_error"]`` as the objective
    (1.0 if it is not a finite number). False if the trial was failed under us."""
    try:
        set_user_attrs(claim.trial, attrs)
        objective = attrs.get("val_error")
        if objective is None or not math.isfinite(float(objective)):
            objective = 1.0
        return _tell(study, claim, values=float(objective))
    except UpdateFinishedTrialError:
        return False


def prune_claim(study: optuna.Study, claim: Claim) -> bool:
    """Tell PRUNED. False if the trial was failed under us."""
    return _tell(study, claim, state=TrialState.PRUNED)


def _tell(study: optuna.Study, claim: Claim, **kwargs: Any) -> bool:
    """``study.tell``; False when the trial is already finished (Optuna raises
    ``UpdateFinishedTrialError`` for some finished states and ``ValueError`` for FAIL)."""
    try:
        study.tell(claim.trial, **kwargs)
        return True
    except UpdateFinishedTrialError:
        return False
    except ValueError:
        if study._storage.get_trial(claim.trial._trial_id).state.is_finished():
            return False
        raise


def fail_claim(study: optuna.Study, claim: Claim, reason: str, *, requeue_cell: bool) -> None:
    storage = study._storage
    tid = claim.trial._trial_id
    if fail_trial(storage, tid, reason=reason[:500]) and requeue_cell:
        requeue(study, storage.get_trial(tid))


# --------------------------------------------------------------------------------------------
# The training log


def log_training(study_name: str, claims: Iterable[Claim]) -> None:
    """One line per claim about to be trained, if ``$LRWD_TRAINING_LOG`` names a folder."""
    folder = os.environ.get(TRAINING_LOG_ENV)
    if not folder:
        return
    torch = sys.modules.get("torch")  # a worker that trains has it; the queue never imports it
    threads = torch.get_num_threads() if torch is not None else None
    path = Path(folder) / f"{socket.gethostname()}-{os.getpid()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "study": study_name,
                "trial": c.number,
                "cell": c.cell,
                "owner": owner_id(),
                "time": time.time(),
                "threads": threads,
            }
        )
        for c in claims
    ]
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def read_training_log(folder: str | Path) -> Counter:
    """How often each ``(study, cell)`` was trained, from every worker's log in ``folder``."""
    counts: Counter = Counter()
    for path in sorted(Path(folder).glob("*.jsonl")):
        # complete lines only: a worker may be writing its last one right now
        for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
            if line.strip():
                rec = json.loads(line)
                counts[(rec["study"], rec["cell"])] += 1
    return counts
