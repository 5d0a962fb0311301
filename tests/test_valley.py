"""The valley tracer (``sweep=valley``): the refinement arithmetic, exactly-once rounds with
several workers on a real storage, resume, and the CLI end to end."""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from harness.config import ConfigError, compose_config
from harness.loop import training_starts
from harness.results import TrialResult
from harness.storage import open_storage
from harness.sweep import plan, valley
from harness.sweep import queue as wq
from harness.sweep import worker as sweep_worker
from tests.test_sweep import TINY, load, run_sweep

# --------------------------------------------------------------------------------------------
# A synthetic valley: per lr row a parabola in log wd with its minimum at wd*(lr) = C / lr


C = 3.7e-6


def true_best(lr: float) -> float:
    return C / lr


def objective(lr: float, wd: float) -> float:
    return 0.1 + 0.05 * (math.log(wd) - math.log(true_best(lr))) ** 2


LRS = [1e-3, 3e-3, 1e-2, 3e-2]
WDS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]  # a 10x step: 1.29x after two rounds at refine=3


def test_round_points_fall_between_the_grid_and_each_other():
    q0 = valley.coarse_step([1e-5, 5e-5, 2.5e-4])
    assert q0 == pytest.approx(5.0)
    assert valley.resolution(q0, 3, 2) == pytest.approx(5 ** (1 / 9))
    assert valley.resolution(q0, 3, 2) <= 1.5
    r1 = valley.round_points(5e-5, q0, 3, 1, 1e-5, 2.5e-4)
    assert r1 == pytest.approx([5e-5 / 5 ** (2 / 3), 5e-5 / 5 ** (1 / 3),
                                5e-5 * 5 ** (1 / 3), 5e-5 * 5 ** (2 / 3)], rel=1e-5)  # fmt: skip
    r2 = valley.round_points(r1[2], q0, 3, 2, 1e-5, 2.5e-4)
    assert len(r2) == 4 and not set(r2) & (set(r1) | {1e-5, 5e-5, 2.5e-4})
    # clipped at the range: nothing below the smallest wd of the grid
    assert valley.round_points(1e-5, q0, 3, 1, 1e-5, 2.5e-4) == pytest.approx(
        [1e-5 * 5 ** (1 / 3), 1e-5 * 5 ** (2 / 3)], rel=1e-5
    )
    assert valley.round_points(0.0, q0, 3, 1, 1e-5, 2.5e-4) == []


def test_best_wd_skips_dead_rows_and_breaks_ties_low():
    assert valley.best_wd({1e-3: 0.2, 1e-4: 0.2, 1e-2: 0.3}) == 1e-4
    assert valley.best_wd({1e-3: 1.0, 1e-4: 1.0}) is None  # all diverged: no valley
    assert valley.best_wd({1e-3: float("nan"), 1e-4: 0.4}) == 1e-4
    assert valley.best_wd({}) is None


@pytest.mark.parametrize("rounds, refine", [(2, 3), (1, 5), (3, 2)])
def test_trace_resolves_each_rows_best_wd(rounds, refine):
    traced = valley.trace(objective, LRS, WDS, rounds, refine)
    step = valley.resolution(10.0, refine, rounds)
    for lr, (best, tried) in traced.items():
        # the best point found is within one final step of the true optimum, and the grid
        # alone would have been off by up to half a coarse step (sqrt 10 = 3.2x)
        assert abs(math.log(best / true_best(lr))) <= math.log(step) + 1e-9, (lr, best)
        assert len(tried) == len(WDS) + rounds * 2 * (refine - 1)
    grid_only = valley.trace(objective, LRS, WDS, 0, refine)
    worst = max(abs(math.log(b / true_best(lr))) for lr, (b, _) in grid_only.items())
    assert worst > math.log(1.5)  # the test objective needs the refinement


def test_two_rounds_at_refine_3_resolve_a_5x_grid_to_1_5x():
    wds = list(np.geomspace(1e-5, 1e-5 * 5**5, 6))
    for lr in np.geomspace(1e-4, 1e-1, 17):
        best, _ = valley.trace(objective, [lr], wds, 2, 3)[lr]
        assert abs(math.log(best / true_best(lr))) <= math.log(1.5)


# --------------------------------------------------------------------------------------------
# A row's values over several seeds, and when a row is settled

DISTS = {
    "lr": optuna.distributions.FloatDistribution(1e-6, 1.0, log=True),
    "weight_decay": optuna.distributions.FloatDistribution(1e-8, 1.0, log=True),
    "seed": optuna.distributions.IntDistribution(0, 9),
}


def _row(*trials: tuple) -> list:
    """FrozenTrials of one lr row, numbered in order: ``(wd, seed, state, value, fail_reason)``."""
    study = optuna.create_study()
    for wd, seed, state, value, reason in trials:
        attrs = {"cell": wq.cell_key(1e-3, wd, seed)}
        if reason:
            attrs["fail_reason"] = reason
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params={"lr": 1e-3, "weight_decay": wd, "seed": seed},
                distributions=DISTS,
                value=value if state == TrialState.COMPLETE else None,
                user_attrs=attrs,
            )
        )
    return study.get_trials(deepcopy=False)


def test_row_values_are_seed_means_and_failed_cells_count_one():
    done, fail, pruned = TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED
    trials = _row(
        (1e-4, 0, done, 0.30, None),
        (1e-4, 1, done, 0.10, None),
        (1e-4, 2, done, 0.20, None),
        (1e-3, 0, fail, None, "RuntimeError: boom"),  # failed, then retried and done
        (1e-3, 0, done, 0.40, None),
        (1e-3, 1, done, 0.20, None),
        (1e-2, 0, pruned, None, None),  # a pruned cell counts like a failed one
        (1e-2, 1, done, 0.50, None),
        (1e-1, 0, fail, None, "RuntimeError: boom"),
        (1.0000004e-5, 0, done, 0.70, None),  # rounded to 6 digits like the grid
        (1e-5, 1, done, 0.90, None),
    )
    values = valley.row_values(trials)
    assert values == pytest.approx({1e-4: 0.20, 1e-3: 0.30, 1e-2: 0.75, 1e-1: 1.0, 1e-5: 0.80})
    assert set(values) == {1e-4, 1e-3, 1e-2, 1e-1, 1e-5}


def test_settled_rows():
    done, fail = TrialState.COMPLETE, TrialState.FAIL
    assert not valley._settled([])
    assert valley._settled(_row((1e-4, 0, done, 0.3, None), (1e-3, 0, done, 0.2, None)))
    for live in (TrialState.WAITING, TrialState.RUNNING):
        assert not valley._settled(_row((1e-4, 0, done, 0.3, None), (1e-3, 0, live, None, None)))
    for lost in wq.LOST_REASONS:  # its cell is about to be enqueued again
        assert not valley._settled(_row((1e-4, 0, done, 0.3, None), (1e-3, 0, fail, None, lost)))
        # ... unless a later trial of the cell finished
        assert valley._settled(_row((1e-3, 0, fail, None, lost), (1e-3, 0, done, 0.2, None)))
        # a cell whose later trial was lost is not settled, whatever ran before
        assert not valley._settled(_row((1e-3, 0, done, 0.2, None), (1e-3, 0, fail, None, lost)))
    # a cell that failed in training is a result (1.0) until a rerun retries it
    assert valley._settled(_row((1e-4, 0, done, 0.3, None), (1e-3, 0, fail, None, "Error: x")))


def test_rounds_center_on_the_seed_mean_with_several_seeds(tmp_path):
    """Two seeds. Seed 1 has a deep dip next to each row's best coarse wd and seed 0 a bump of
    the same size there, so the seed mean keeps the true best; the best single seed would not.
    Each row's round 1 is centred on the seed mean's best wd, its points for both seeds."""
    cfg = _cfg(tmp_path / "out", "journal", "sweep.rounds=1", "sweep.seeds=2")
    spec = plan.valley_spec(cfg)
    assert spec.seeds == [0, 1]
    study = plan.create_study(cfg, open_storage(cfg, cfg.output_dir), plan.variants(cfg)[0])
    tracer, _ = valley.Tracer.prepare(study, spec)
    lrs, wds = spec.lrs, spec.wds
    coarse_best = {lr: min(wds, key=lambda w: objective(lr, w)) for lr in lrs}
    dip = {lr: wds[wds.index(coarse_best[lr]) + (1 if coarse_best[lr] != wds[-1] else -1)]
           for lr in lrs}  # fmt: skip

    def value(lr, wd, seed):
        row = min(lrs, key=lambda r: abs(math.log(r / lr)))
        shift = 1.0 if math.isclose(wd, dip[row], rel_tol=1e-6) else 0.0
        return objective(lr, wd) + (shift if seed == 0 else -shift)

    for t in study.get_trials(deepcopy=False):
        p = t.params
        assert wq.claim_trial(study._storage, t._trial_id)
        study.tell(t.number, value(p["lr"], p["weight_decay"], p["seed"]))
    for lr in lrs:  # the data really separate the two choices
        best_seed = min(wds, key=lambda w: min(value(lr, w, s) for s in (0, 1)))
        assert best_seed == pytest.approx(dip[lr]) and dip[lr] != coarse_best[lr]
    assert tracer.advance() > 0
    gates = valley.gates_study(study).get_trials(deepcopy=False)
    centers = {g.user_attrs["lr"]: g.user_attrs["center"] for g in gates}
    assert centers == {valley.row_key(lr): pytest.approx(coarse_best[lr]) for lr in lrs}
    fresh = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.WAITING]
    for lr in lrs:
        mine = [t for t in fresh if math.isclose(t.params["lr"], lr, rel_tol=1e-6)]
        wds = sorted({t.params["weight_decay"] for t in mine})
        lo, hi = spec.bounds
        want = valley.round_points(coarse_best[lr], spec.q0, spec.refine, 1, lo, hi)
        assert wds == pytest.approx(want)
        assert Counter(t.params["seed"] for t in mine) == {0: len(want), 1: len(want)}


# --------------------------------------------------------------------------------------------
# On a real storage, with a synthetic trainer

SYN = [
    "sweep=valley",
    "sweep.variants=[]",
    "optimizer=adam",
    "optimizer.decay=independent",
    "sweep.lr.min=1e-3",
    "sweep.lr.max=3e-2",
    "sweep.lr.num=4",
    "sweep.weight_decay.min=1e-6",
    "sweep.weight_decay.max=1e-1",
    "sweep.weight_decay.num=6",
    "sweep.population=4",
    "sweep.heartbeat_s=5",
    "tracking=disabled",
]
N_SYN = 4 * 6 + 4 * 2 * 4  # coarse + 2 rounds x 4 points per row


def synthetic_train(cfgs, reports):
    training_starts(reports)  # the training log, as the real trainers write it
    time.sleep(0.02 * len(cfgs))  # long enough for two workers to interleave
    out = []
    for c in cfgs:
        lr, wd = float(c.optimizer.lr), float(c.optimizer.weight_decay)
        if wd >= 0.09:
            out.append(RuntimeError("boom"))  # a failed cell is a result, not a crash
            continue
        err = objective(lr, wd)
        out.append(TrialResult(err, err, err, err, 1.0, False, 1, 0.0))
    return out


def synthetic_worker(cfg_dict: dict) -> int:
    """A worker process's target: the real worker loop with the synthetic trainer."""
    from omegaconf import OmegaConf

    return sweep_worker.run_worker(OmegaConf.create(cfg_dict), train=synthetic_train)


def _cfg(tmp_path: Path, storage: str, *extra: str):
    from harness.sweep.cli import resolve

    overrides = [*SYN, f"storage={storage}", *extra]
    return resolve(compose_config(overrides), overrides, str(tmp_path))


def _assert_valley_done(study: optuna.Study, log_dir: Path) -> list:
    """Every cell finished; each trained once, but the failing ones (wd 0.1), which a rerun
    retries; the rounds' sizes; each gate opened once; each row's best within the final step."""
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    done = Counter(t.user_attrs["cell"] for t in trials if t.state == TrialState.COMPLETE)
    failing = {t.user_attrs["cell"] for t in trials if t.params["weight_decay"] >= 0.09}
    assert len(done) + len(failing) == N_SYN and set(done.values()) == {1}, done.most_common(3)
    counts = wq.read_training_log(log_dir)
    mine = {c: n for (s, c), n in counts.items() if s == study.study_name}
    assert set(mine) == set(done) | failing
    twice = {c: n for c, n in mine.items() if n > 1 and c not in failing}
    assert not twice, f"cells trained twice: {twice}"
    cells = {t.user_attrs["cell"]: t.user_attrs.get(wq.ROUND_KEY, 0) for t in trials}
    assert Counter(cells.values()) == {0: 24, 1: 16, 2: 16}
    # each gate was opened once and every row's best is within the final step of the truth
    gates = valley.gates_study(study).get_trials(deepcopy=False)
    assert Counter(g.state for g in gates) == {TrialState.COMPLETE: 8}
    frame = pd.DataFrame(
        [{"lr": t.params["lr"], "wd": t.params["weight_decay"], "v": t.value} for t in trials
         if t.state == TrialState.COMPLETE]
    )  # fmt: skip
    for lr, row in frame.groupby("lr"):
        best = row.loc[row.v.idxmin(), "wd"]
        assert abs(math.log(best / true_best(lr))) <= math.log(10 ** (1 / 9)) + 1e-6
    return trials


@pytest.mark.slow
def test_two_workers_trace_each_cell_once_on_a_journal(tmp_path, monkeypatch):
    from harness.sweep import launch

    logs = tmp_path / "log"
    monkeypatch.setenv(wq.TRAINING_LOG_ENV, str(logs))
    cfg = _cfg(tmp_path / "out", "journal", "sweep.workers=2")
    _, (study,) = plan.prepare(cfg)
    assert launch.run_local_workers(cfg, target=synthetic_worker) == [0, 0]
    trials = _assert_valley_done(study, logs)
    assert len({t.system_attrs[wq.LEASE_KEY][0] for t in trials}) == 2  # both worked
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["weight_decay"] >= 0.09 for t in failed)


@pytest.mark.slow
def test_resume_adds_only_missing_cells(tmp_path, monkeypatch):
    logs = tmp_path / "log"
    monkeypatch.setenv(wq.TRAINING_LOG_ENV, str(logs))
    cfg = _cfg(tmp_path / "out", "sqlite")
    _, (study,) = plan.prepare(cfg)
    batches = []

    def stop_after_three(cfgs, reports):
        batches.append(len(cfgs))
        if len(batches) == 3:
            sweep_worker.request_stop()  # the worker stops taking cells after this batch
        return synthetic_train(cfgs, reports)

    sweep_worker.run_worker(cfg, train=stop_after_three)
    partial = study.get_trials(deepcopy=False)
    assert 0 < len([t for t in partial if t.state.is_finished()]) < N_SYN
    failed_first = {t.user_attrs["cell"] for t in partial if t.state == TrialState.FAIL}
    # the rerun: the driver opens what is due, the worker finishes; nothing runs twice
    _, (study,) = plan.prepare(cfg)
    sweep_worker.run_worker(cfg, train=synthetic_train)
    _assert_valley_done(study, logs)
    # the analysis reads the study, not the tracer's gates
    import warnings

    from analysis.load import load_results

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = load_results(str(Path(cfg.output_dir) / "study.db"))
    assert set(frame["study"]) == {study.study_name}
    assert len(frame) == len(study.get_trials(states=(TrialState.COMPLETE,)))
    # the cells that had failed were retried once on the rerun, nothing else ran again
    failed = Counter(t.user_attrs["cell"] for t in study.get_trials() if t.state.name == "FAIL")
    assert len(failed) == 4
    assert {c for c, n in failed.items() if n == 2} == failed_first and failed_first


@pytest.mark.slow
def test_a_grid_study_rerun_as_a_valley_is_refined(tmp_path, monkeypatch):
    logs = tmp_path / "log"
    monkeypatch.setenv(wq.TRAINING_LOG_ENV, str(logs))
    grid_cfg = _cfg(tmp_path / "out", "sqlite", "sweep.sampler=grid")
    _, (study,) = plan.prepare(grid_cfg)
    sweep_worker.run_worker(grid_cfg, train=synthetic_train)
    assert len(study.get_trials()) == 24
    cfg = _cfg(tmp_path / "out", "sqlite")
    _, (study,) = plan.prepare(cfg)
    sweep_worker.run_worker(cfg, train=synthetic_train)
    _assert_valley_done(study, logs)


def test_a_lost_gate_is_reopened_once(tmp_path):
    """A gate claimed by a worker that died before enqueueing its round is failed as stale
    and replaced; the round is enqueued once."""
    cfg = _cfg(tmp_path / "out", "journal", "sweep.rounds=1")
    storage = open_storage(cfg, cfg.output_dir)
    study = plan.create_study(cfg, storage, plan.variants(cfg)[0])
    tracer, _ = valley.Tracer.prepare(study, plan.valley_spec(cfg))
    gates = valley.gates_study(study)
    first = gates.get_trials(deepcopy=False)[0]
    assert wq.claim_trial(gates._storage, first._trial_id)  # a worker that then died
    gates._storage.set_trial_system_attr(first._trial_id, wq.LEASE_KEY, ["h:1", 0.0])
    for t in study.get_trials(deepcopy=False):  # the coarse grid, trained
        wd = t.params["weight_decay"]
        assert wq.claim_trial(study._storage, t._trial_id)
        study.tell(t.number, objective(t.params["lr"], wd))
    assert tracer.advance() == 4 * 4  # four points in each of four rows
    assert tracer.advance() == 0
    states = Counter(g.state for g in gates.get_trials(deepcopy=False))
    assert states == {TrialState.COMPLETE: 4, TrialState.FAIL: 1}
    assert Counter(t.user_attrs["cell"] for t in study.get_trials()).most_common(1)[0][1] == 1
    # a refined cell that failed in training is retried by the next driver run, as round 1
    victim = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))[0]
    assert wq.claim_trial(study._storage, victim._trial_id)
    assert wq.fail_trial(study._storage, victim._trial_id, "RuntimeError: boom")
    _, status = valley.Tracer.prepare(study, plan.valley_spec(cfg))
    assert status.requeued == 1
    again = [t for t in study.get_trials() if t.user_attrs["cell"] == victim.user_attrs["cell"]]
    assert [(t.state, t.user_attrs[wq.ROUND_KEY]) for t in again] == [
        (TrialState.FAIL, 1),
        (TrialState.WAITING, 1),
    ]


def test_refine_cannot_change_on_a_traced_study(tmp_path):
    cfg = _cfg(tmp_path / "out", "sqlite")
    plan.prepare(cfg)
    with pytest.raises(ConfigError, match=r"^sweep.refine: .*sweep.refine=3"):
        plan.prepare(_cfg(tmp_path / "out", "sqlite", "sweep.refine=2"))


# --------------------------------------------------------------------------------------------
# The CLI end to end


@pytest.mark.slow
def test_cli_valley_runs_and_draws(tmp_path):
    out = tmp_path / "run"
    args = ["sweep=valley", *TINY, "sweep.population=8", "sweep.rounds=1"]
    proc = run_sweep(out, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(out, "sqlite", args)
    trials = study.get_trials(deepcopy=False)
    rounds = Counter(t.user_attrs[wq.ROUND_KEY] for t in trials)
    assert rounds[0] == 9 and 0 < rounds[1] <= 3 * 4, rounds
    assert (out / "figures" / "heatmaps.png").stat().st_size > 10_000
    frame = pd.read_csv(out / "results.csv")
    assert set(frame["round"]) == {0, 1}
    # the grid numbers are on the coarse grid; the valley has a row per lr
    metrics = pd.read_csv(out / "figures" / "metrics.csv")
    assert set(metrics["n_wd"]) == {3} and set(metrics["n_lr"]) == {3}
    assert len(pd.read_csv(out / "figures" / "valley.csv")) >= 1


def test_bad_valley_settings_are_one_line(tmp_path):
    for override, field in (
        ("sweep.refine=1", "sweep.refine"),
        ("sweep.rounds=-1", "sweep.rounds"),
    ):
        proc = run_sweep(tmp_path / "o", "sweep=valley", *TINY, override, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), proc.stderr


# --------------------------------------------------------------------------------------------
# Analysis of a traced study


def _traced_frame(rounds: int, seeds: int = 1) -> pd.DataFrame:
    from harness.results import RESULTS_COLUMNS

    rows = []
    for lr, (_, tried) in valley.trace(objective, LRS, WDS, rounds, 3).items():
        for wd in tried:
            for seed in range(seeds):
                err = objective(lr, wd) + 0.001 * seed
                row = dict.fromkeys(RESULTS_COLUMNS)
                row.update(study="s", experiment="e", optimizer="adam", decay="independent",
                           model="mlp", data="mnist1d", trial=len(rows), lr=lr, weight_decay=wd,
                           seed=seed, state="COMPLETE", test_error=err, val_error=err,
                           diverged=False, round=0 if wd in WDS else 1)  # fmt: skip
                rows.append(row)
    from analysis.load import tidy

    return tidy(pd.DataFrame(rows))


def test_analysis_draws_the_coarse_grid_and_fits_the_refined_valley(tmp_path):
    from analysis.figures import analyze, render, write
    from analysis.load import coarse, is_grid, is_valley

    frame = _traced_frame(rounds=2)
    assert is_valley(frame) and is_grid(frame)
    assert len(coarse(frame)) == len(LRS) * len(WDS)
    a = analyze(frame, "val_error", refine=False, reps=0)
    assert a.mode == "grid" and a.refined is not None
    m = a.metrics.iloc[0]
    assert (m.n_lr, m.n_wd) == (len(LRS), len(WDS))  # grid numbers on the coarse grid
    # the valley: each row's best measured point, refined ones included
    traced = valley.trace(objective, LRS, WDS, 2, 3)
    got = dict(zip(a.valleys["lr"], a.valleys["best_wd"]))
    for lr, (best, _) in traced.items():
        assert got[lr] == pytest.approx(best, rel=1e-9)
    grid_only = analyze(coarse(frame), "val_error", refine=False, reps=0).metrics.iloc[0]
    assert abs(m.coupling_slope + 1) < abs(grid_only.coupling_slope + 1)  # truth: -1
    assert abs(m.coupling_slope + 1) < 0.1
    figs = render(a)
    assert "heatmaps" in figs and "valley" in figs
    write([a], tmp_path, ("png",))
    assert (tmp_path / "heatmaps.png").stat().st_size > 10_000


def test_wandb_runs_keep_the_round():
    from analysis.wandb_runs import runs_to_frame

    run = {
        "id": "r1",
        "name": "n",
        "group": "quick-adam-independent",
        "job_type": "adam/independent",
        "state": "finished",
        "config": {"study": "quick-adam-independent", "lr": 1e-3, "weight_decay": 2e-4,
                   "seed": 0, "trial": 7, "round": 2},
        "summary": {"test_error": 0.2, "val_error": 0.2, "diverged": False},
    }  # fmt: skip
    grid_run = {
        **run,
        "id": "r2",
        "config": {k: v for k, v in run["config"].items() if k != "round"},
    }
    frame = runs_to_frame([run, grid_run])
    assert frame["round"].tolist()[0] == 2 and pd.isna(frame["round"].tolist()[1])
