"""The default path (population training) under faults, with trainings counted.

Trial states alone cannot show a cell trained twice: Optuna keeps one COMPLETE trial per trial,
and a duplicate claimant's work can vanish without a trace. Every sweep here runs with
``LRWD_TRAINING_LOG`` set, so each worker writes a line per training it starts, and the tests
count trainings per cell from those lines.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from harness.config import compose_config
from harness.storage import open_storage
from harness.sweep import plan
from harness.sweep import queue as wq
from harness.sweep import worker as sweep_worker
from tests.test_sweep import ROOT, TINY, load, run_sweep, sweep_cmd

# TINY without its population=1: populations of 4, a 3 x 4 grid (12 cells).
POP = [o for o in TINY if not o.startswith("sweep.population=")] + [
    "sweep.population=4",
    "sweep.weight_decay.num=4",
    "sweep.weight_decay.min=1e-5",
]
N_POP = 12


def run_logged(out: Path, log_dir: Path, *overrides: str, timeout: float = 600):
    """The sweep CLI with the training log written to ``log_dir``."""
    env = {**os.environ, wq.TRAINING_LOG_ENV: str(log_dir)}
    return run_sweep(out, *overrides, timeout=timeout, env=env)


def assert_complete_once(study: optuna.Study, n_cells: int) -> set[str]:
    trials = study.get_trials(deepcopy=False)
    complete = Counter(t.user_attrs["cell"] for t in trials if t.state in wq.DONE_STATES)
    assert len(complete) == n_cells, f"{n_cells - len(complete)} cells never finished"
    assert set(complete.values()) == {1}, f"cells finished twice: {complete.most_common(3)}"
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    return set(complete)


def assert_trained_once(log_dir: Path, study_name: str, cells: set[str]) -> None:
    counts = wq.read_training_log(log_dir)
    mine = {cell: n for (s, cell), n in counts.items() if s == study_name}
    twice = {cell: n for cell, n in mine.items() if n > 1}
    assert not twice, f"duplicate training: {twice}"
    assert set(mine) == cells, f"trained {len(mine)} cells, expected {len(cells)}"


def owners(study: optuna.Study) -> set[str]:
    return {
        t.system_attrs[wq.LEASE_KEY][0]
        for t in study.get_trials(deepcopy=False)
        if t.state in wq.DONE_STATES
    }


# --------------------------------------------------------------------------------------------
# The compare-and-set itself

_CLAIMER = """
import sys, time
import optuna
from optuna.trial import TrialState
from harness.sweep.queue import claim_trial
url, start = sys.argv[1], float(sys.argv[2])
storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
study = optuna.load_study(study_name="race", storage=storage)
ids = [t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
while time.time() < start:
    pass
print(" ".join(str(i) for i in ids if claim_trial(study._storage, i)))
"""


@pytest.mark.slow
def test_sqlite_claim_has_one_winner_under_a_race(tmp_path):
    """Three processes claim the same 300 waiting trials at the same instant on one SQLite file.

    Optuna's own set_trial_state_values reads then writes, and on SQLite (no SELECT ... FOR
    UPDATE) two processes could both see WAITING and both win.
    """
    url = f"sqlite:///{tmp_path / 'race.db'}"
    study = optuna.create_study(study_name="race", storage=url)
    study.add_trials(
        [optuna.trial.create_trial(state=TrialState.WAITING, params={}, distributions={})] * 300
    )
    start = time.time() + 4
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, url, str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    won = Counter()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        won.update(int(i) for i in out.split())
    assert sum(won.values()) == 300 and set(won.values()) == {1}, won.most_common(3)


@pytest.mark.parametrize("kind", ["sqlite", "journal", "memory"])
def test_claim_trial_refuses_running_and_finished_trials(tmp_path, kind):
    cfg = compose_config([f"storage={kind}"])
    storage = open_storage(cfg, tmp_path)
    study = optuna.create_study(study_name=f"cas-{kind}", storage=storage)
    study.add_trials(
        [optuna.trial.create_trial(state=TrialState.WAITING, params={}, distributions={})] * 2
    )
    a, b = (t._trial_id for t in study.get_trials(deepcopy=False))
    assert wq.claim_trial(study._storage, a) is True
    assert wq.claim_trial(study._storage, a) is False  # already RUNNING
    assert study._storage.get_trial(a).state == TrialState.RUNNING
    assert wq.fail_trial(study._storage, a, "test") is True
    assert wq.fail_trial(study._storage, a, "test") is False  # the second caller loses
    assert wq.claim_trial(study._storage, a) is False  # finished
    assert wq.claim_trial(study._storage, b) is True


@pytest.mark.slow
def test_trial_failed_under_a_worker_is_not_trained_by_it(tmp_path):
    """Another worker declares a claimed trial stale (fails and re-enqueues it) before its
    owner starts it: the owner drops it untrained, and the cell is trained once, later."""
    cfg = plan.variant_config(
        compose_config([*TINY, "storage=journal"]), plan.Variant("adam", "independent")
    )
    cfg.output_dir = str(tmp_path)
    storage = open_storage(cfg, tmp_path)
    variant = plan.variants(cfg)[0]
    study = plan.create_study(cfg, storage, variant)
    plan.enqueue_grid(study, cfg)

    real_claim = wq.WaitingQueue.claim
    taken: list[str] = []

    def claim_then_lose_first(self, n):
        claims = real_claim(self, n)
        if claims and not taken:
            victim = claims[0]
            assert wq.fail_trial(self.study._storage, victim.trial._trial_id, "stale")
            wq.requeue(self.study, self.study._storage.get_trial(victim.trial._trial_id))
            taken.append(victim.cell)
        return claims

    trained: Counter = Counter()

    def train(cfgs, reports):
        out = []
        for c in cfgs:
            cell = wq.cell_key(c.optimizer.lr, c.optimizer.weight_decay, c.train.seed)
            trained[cell] += 1
            out.append(_Result())
        return out

    wq.WaitingQueue.claim = claim_then_lose_first
    try:
        sweep_worker.run_worker(cfg, train=train)
    finally:
        wq.WaitingQueue.claim = real_claim
    assert taken and trained[taken[0]] == 1, (taken, trained)
    assert len(trained) == 9 and set(trained.values()) == {1}, f"duplicate training: {trained}"
    assert_complete_once(study, 9)
    lost = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert [t.user_attrs["fail_reason"] for t in lost] == ["stale"]


class _Result:
    def to_dict(self):
        return {"test_error": 0.5, "val_error": 0.5, "diverged": False, "steps": 1}


@pytest.mark.slow
def test_training_log_records_each_start_of_an_out_of_memory_split(tmp_path, monkeypatch):
    """A population of 4 that runs out of memory at its first step is trained again as two
    halves: the training log shows every cell started twice, each finished once."""
    import torch

    from harness import population

    monkeypatch.setenv(wq.TRAINING_LOG_ENV, str(tmp_path / "log"))
    cfg = plan.variant_config(
        compose_config(
            [*POP, "sweep.lr.num=1", "sweep.lr.min=3e-3", "sweep.lr.max=3e-3", "storage=journal"]
        ),
        plan.Variant("adam", "independent"),
    )
    cfg.output_dir = str(tmp_path)
    study = plan.create_study(cfg, open_storage(cfg, tmp_path), plan.variants(cfg)[0])
    plan.enqueue_grid(study, cfg)
    real_loss, real_train = population._population_loss, population.train_population
    sizes: list[int] = []

    def loss_out_of_memory_above_two(layers, params, buffers, x, y, p, penalty_wd):
        if p > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (planted)")
        return real_loss(layers, params, buffers, x, y, p, penalty_wd)

    def train_population(cfgs, reports, *args, **kwargs):
        sizes.append(len(cfgs))
        return real_train(cfgs, reports, *args, **kwargs)

    monkeypatch.setattr(population, "_population_loss", loss_out_of_memory_above_two)
    monkeypatch.setattr(population, "train_population", train_population)
    sweep_worker.run_worker(cfg)
    assert sizes == [4, 2, 2]
    cells = assert_complete_once(study, 4)
    counts = {cell: n for (s, cell), n in wq.read_training_log(tmp_path / "log").items()}
    assert counts == dict.fromkeys(cells, 2)


# --------------------------------------------------------------------------------------------
# Several workers, populations


@pytest.mark.slow
def test_population_workers_journal_train_each_cell_once(tmp_path):
    out, logs = tmp_path / "j", tmp_path / "log"
    proc = run_logged(out, logs, *POP, "storage=journal", "sweep.workers=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(out, "journal", POP)
    cells = assert_complete_once(study, N_POP)
    assert_trained_once(logs, study.study_name, cells)
    assert len(owners(study)) >= 2  # the populations really were shared


@pytest.mark.postgres
def test_population_workers_postgres_train_each_cell_once(tmp_path, postgres_url):
    out, logs = tmp_path / "pg", tmp_path / "log"
    args = ["storage=url", f"storage.url={postgres_url}", "sweep.study_name=popfault"]
    proc = run_logged(out, logs, *POP, *args, "sweep.workers=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(out, "url", [*POP, "sweep.study_name=popfault"], url=postgres_url)
    cells = assert_complete_once(study, N_POP)
    assert_trained_once(logs, study.study_name, cells)
    assert len(owners(study)) >= 2


@pytest.mark.slow
def test_sigkill_mid_population_then_resume(tmp_path):
    """Populations of 2 in a 16-cell grid, two workers; the whole sweep is SIGKILLed once both
    workers have trained and some cells have finished, with populations in flight. The rerun
    finishes the grid; only cells in flight are trained again, nothing finished is."""
    out, logs = tmp_path / "kill", tmp_path / "log"
    slow = [o for o in POP if not o.startswith("sweep.population=")]
    # populations of a few seconds: long enough to be killed mid-training, even on a fast machine
    slow += ["sweep.population=2", "sweep.lr.num=4", "train.epochs=60", "data.num_samples=3000"]
    slow += ["storage=journal", "sweep.workers=2", "sweep.heartbeat_s=2"]
    n_cells = 16
    env = {**os.environ, wq.TRAINING_LOG_ENV: str(logs)}
    proc = subprocess.Popen(
        sweep_cmd(out, *slow),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    cfg = compose_config(slow)
    name = plan.study_name(cfg, plan.Variant("adam", "independent"))
    storage = str(out / "study.journal")
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert proc.poll() is None, "the sweep ended before it was killed"
            workers = list(logs.glob("*.jsonl")) if logs.exists() else []
            if len(workers) == 2 and Path(storage).exists():
                trials = load(out, "journal", slow).get_trials(deepcopy=False)
                done = {t.user_attrs["cell"] for t in trials if t.state in wq.DONE_STATES}
                live = {t.user_attrs["cell"] for t in trials if t.state == TrialState.RUNNING}
                training = live & {cell for (_, cell) in wq.read_training_log(logs)}
                if done and training and len(done) + len(live) < n_cells:
                    break  # both workers trained, cells finished, populations in flight: kill
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the states at the kill (the workers are dead: nothing moves any more)
    trials = load(out, "journal", slow).get_trials(deepcopy=False)
    done_before = {t.user_attrs["cell"] for t in trials if t.state in wq.DONE_STATES}
    running = {t.user_attrs["cell"] for t in trials if t.state == TrialState.RUNNING}
    assert done_before, "no cell finished before the kill"
    assert running, "nothing was in flight at the kill"
    before = {cell: n for (s, cell), n in wq.read_training_log(logs).items() if s == name}
    assert len(list(logs.glob("*.jsonl"))) == 2, "both workers trained before the kill"
    assert done_before <= set(before) <= done_before | running, (before, done_before, running)
    assert set(before.values()) == {1}, before
    mid_training = running & set(before)  # claimed cells whose training had started
    assert mid_training, "no population was training at the kill"
    rerun = run_logged(out, logs, *slow)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = load(out, "journal", slow)
    cells = assert_complete_once(study, n_cells)
    counts = {cell: n for (s, cell), n in wq.read_training_log(logs).items() if s == name}
    assert set(counts) == cells
    again = {cell for cell, n in counts.items() if n > 1}
    # the fault cost at most the populations in flight: nothing finished is trained again
    assert not (again & done_before), (again, done_before)
    assert again == mid_training and max(counts.values()) == 2, (again, mid_training)
    stale = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert {t.user_attrs["cell"] for t in stale} == running
    assert {t.user_attrs.get("fail_reason") for t in stale} == {"stale"}


# --------------------------------------------------------------------------------------------
# Sampled studies: budgets, distinct points


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_sampled_sweep_with_two_workers_keeps_its_budget(tmp_path, sampler):
    out, logs = tmp_path / sampler, tmp_path / "log"
    args = [*TINY, f"sweep={sampler}", "sweep.n_trials=8", "storage=journal", "sweep.workers=2"]
    proc = run_logged(out, logs, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(out, "journal", args)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 8 and all(t.state in wq.DONE_STATES for t in trials), trials
    points = [(t.params["lr"], t.params["weight_decay"]) for t in trials]
    assert len(set(points)) == 8, f"workers drew the same points: {points}"
    for t in trials:
        assert 1e-3 <= t.params["lr"] <= 1e-2 and 1e-4 <= t.params["weight_decay"] <= 1e-2
        assert t.user_attrs["cell"] == wq.cell_key(
            t.params["lr"], t.params["weight_decay"], t.params["seed"]
        )
    assert_trained_once(logs, study.study_name, {t.user_attrs["cell"] for t in trials})
    assert len(owners(study)) == 2
    # a resume with a larger budget adds exactly the difference
    more = run_logged(out, logs, *[a for a in args if a != "sweep.n_trials=8"], "sweep.n_trials=10")
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(load(out, "journal", args).get_trials(states=wq.DONE_STATES)) == 10


def test_sampler_seed_differs_per_worker_and_per_resume(monkeypatch):
    cfg = compose_config(["sweep=random"])
    monkeypatch.setenv("LRWD_WORKER_INDEX", "0")
    a = plan.sampler_seed(cfg, 0)
    assert plan.sampler_seed(cfg, 0) == a  # reproducible for the same worker and study size
    assert plan.sampler_seed(cfg, 5) != a  # a resume draws a new stream
    monkeypatch.setenv("LRWD_WORKER_INDEX", "1")
    assert plan.sampler_seed(cfg, 0) != a


# --------------------------------------------------------------------------------------------
# Pruning and the in-memory storage


PRUNE = [
    o for o in TINY if not o.startswith(("sweep.lr.", "sweep.population=", "train.epochs="))
] + [
    "sweep.lr.min=1e-5",
    "sweep.lr.max=1e-1",
    "sweep.lr.num=3",
    "train.epochs=4",
    "sweep.seeds=2",
    "sweep.pruner=median",
]


@pytest.mark.slow
@pytest.mark.parametrize("population", ["1", "3"])
def test_median_pruner_prunes_through_optuna(tmp_path, population):
    """Optuna's MedianPruner on the real training loop, sequential and in populations: the
    second seed's lr=1e-5 cells trail the median of the first seed's nine finished trials."""
    out = tmp_path / f"prune{population}"
    args = [*PRUNE, f"sweep.population={population}"]
    proc = subprocess.run(
        sweep_cmd(out, *args), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(out, "sqlite", args)
    trials = study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.state.name, t.params["lr"]) for t in trials]
    assert_complete_once(study, 18)  # a pruned cell counts as done: a rerun does not redo it
    last_step = max(max(t.intermediate_values) for t in trials if t.state == TrialState.COMPLETE)
    for t in pruned:
        assert t.number >= 5 or population != "1"  # the pruner waits for 5 finished trials
        assert t.intermediate_values  # it was pruned on a reported value
        assert max(t.intermediate_values) < last_step  # before its last epoch
    import pandas as pd

    frame = pd.read_csv(out / "results.csv")
    assert sorted(frame.state[frame.state == "PRUNED"].index) == sorted(
        frame.index[frame.trial.isin([t.number for t in pruned])]
    )
    again = subprocess.run(
        sweep_cmd(out, *args), cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0 and len(load(out, "sqlite", args).get_trials()) == 18


@pytest.mark.slow
def test_memory_storage_runs_a_sweep_in_one_process(tmp_path):
    out = tmp_path / "mem"
    proc = subprocess.run(
        sweep_cmd(out, *TINY, "storage=memory"), cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pandas as pd

    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 9 and set(frame.state) == {"COMPLETE"}
    assert frame[["lr", "weight_decay", "seed"]].drop_duplicates().shape[0] == 9
    assert not list(out.glob("study.*"))  # nothing persisted: memory means memory
