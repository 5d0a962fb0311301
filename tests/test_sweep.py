"""The sweep driver end to end through the real CLI: studies, workers, resume, bad input."""

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

from harness import results
from harness.config import compose_config
from harness.storage import open_storage
from harness.sweep import plan
from harness.sweep import queue as wq

ROOT = Path(__file__).resolve().parent.parent

# A grid of tiny trials: 3 x 3 cells, a 32-wide MLP, 1 epoch on 1,000 MNIST-1D samples.
TINY = [
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
    "train.threads=1",
    "tracking=disabled",
]


def sweep_cmd(out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "harness.sweep", f"hydra.run.dir={out}", *overrides]


def run_sweep(out: Path, *overrides: str, timeout: float = 300, env=None):
    return subprocess.run(
        sweep_cmd(out, *overrides),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def load(out: Path, storage: str, overrides: list[str], url: str = "") -> optuna.Study:
    cfg = compose_config(
        [*overrides, f"storage={storage}"] + ([f"storage.url={url}"] if url else [])
    )
    cfg.output_dir = str(out)
    variant = plan.variants(cfg)[0]
    return optuna.load_study(
        study_name=plan.study_name(cfg, variant), storage=open_storage(cfg, out)
    )


def assert_exactly_once(study: optuna.Study, n_cells: int) -> list[optuna.trial.FrozenTrial]:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    per_cell = Counter(t.user_attrs["cell"] for t in complete)
    assert len(per_cell) == n_cells, f"missing cells: {n_cells - len(per_cell)}"
    assert set(per_cell.values()) == {1}, f"duplicated cells: {per_cell.most_common(3)}"
    assert not [t for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]
    return complete


# --------------------------------------------------------------------------------------------
# Config and grid


def test_grid_is_log_spaced_and_seed_major():
    cfg = compose_config(TINY + ["sweep.seeds=2", "sweep.include_zero_wd=true"])
    cells = plan.grid_cells(cfg.sweep)
    assert len(cells) == 3 * 4 * 2
    lrs = sorted({c["lr"] for c in cells})
    assert lrs == pytest.approx([1e-3, 10**-2.5, 1e-2], rel=1e-5)
    assert sorted({c["weight_decay"] for c in cells})[0] == 0.0
    assert [c["seed"] for c in cells[:12]] == [0] * 12


@pytest.mark.parametrize(
    "override, field",
    [
        (["sweep.lr.min=0.1", "sweep.lr.max=0.01"], "sweep.lr"),
        (["sweep.lr.min=-1"], "sweep.lr.min"),
        (["optimizer.name=rmsprop"], "optimizer.name"),
        (["optimizer.decay=l3"], "optimizer.decay"),
        (["sweep.weight_decay.num=0"], "sweep.weight_decay.num"),
        (["sweep.workers=3"], "storage.kind"),  # SQLite with 3 workers
        (["storage=url", "storage.url=postgresql://lrwd:hunter2@127.0.0.1:9/nope"], "storage.url"),
        (["model=resnet20"], "model.name"),  # an image net on 1-D signals
        (["sweep.models=[mlp,resnet_tiny]"], "sweep.models"),
        (["data=cifar10", "model=resnet_tiny", "data.root=/nonexistent/lrwd"], "data.root"),
    ],
)
def test_bad_input_is_one_line_and_creates_nothing(tmp_path, override, field):
    out = tmp_path / "out"
    proc = run_sweep(out, *TINY, *override, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {field}"), lines[0]
    assert "hunter2" not in proc.stderr + proc.stdout
    made = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert made == [], made


def test_schema_rejects_typo_and_wrong_type(tmp_path):
    proc = run_sweep(tmp_path / "o", "optimizer.lrr=0.1", timeout=120)
    assert proc.returncode != 0 and "lrr" in proc.stderr
    proc = run_sweep(tmp_path / "o", "optimizer.lr=fast", timeout=120)
    assert proc.returncode != 0 and "optimizer.lr" in proc.stderr


# --------------------------------------------------------------------------------------------
# One worker, resume, SIGKILL


@pytest.mark.slow
def test_sweep_runs_and_resumes(tmp_path):
    out = tmp_path / "run"
    proc = run_sweep(out, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "study.db").exists() and (out / "results.csv").exists()
    assert (out / "figures" / "heatmaps.png").stat().st_size > 10_000
    assert "results.csv" in proc.stdout and "study.db" in proc.stdout
    assert "progress: 9/9 cells (100%)" in proc.stdout  # plain progress lines off a terminal
    study = load(out, "sqlite", TINY)
    complete = assert_exactly_once(study, 9)
    t = complete[0]
    for key in ("test_error", "val_error", "train_loss", "weight_norm", "steps", "wall_s"):
        assert key in t.user_attrs
    assert t.user_attrs["config"]["optimizer"]["decay"] == "independent"
    assert t.user_attrs["git_rev"] and t.user_attrs["versions"]["torch"]
    import pandas as pd

    frame = pd.read_csv(out / "results.csv")
    assert len(frame) == 9 and set(frame.state) == {"COMPLETE"}
    assert set(results.RESULTS_COLUMNS) <= set(frame.columns)
    # resume: a second run trains nothing new
    again = run_sweep(out, *TINY)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(load(out, "sqlite", TINY).get_trials()) == 9


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_completes_grid(tmp_path):
    out = tmp_path / "kill"
    slow = [*TINY, "train.epochs=40", "data.num_samples=3000"]  # ~0.5 s trials: caught mid-trial
    log = open(tmp_path / "first-run.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        sweep_cmd(out, *slow),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    name = plan.study_name(compose_config(slow), plan.Variant("adam", "independent"))
    try:

        def one_done_one_running() -> bool:
            if proc.poll() is not None:
                log.flush()
                text = (tmp_path / "first-run.log").read_text()[-2000:]
                raise AssertionError(f"the sweep ended before it was killed:\n{text}")
            if not (out / "study.db").exists():
                return False
            try:
                storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
                trials = optuna.load_study(study_name=name, storage=storage).get_trials()
            except Exception:  # noqa: BLE001 - the study is still being created
                return False
            states = Counter(t.state for t in trials)
            return states[TrialState.COMPLETE] >= 1 and states[TrialState.RUNNING] == 1

        _wait_for(one_done_one_running, 240, "a finished and a running trial")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    killed = [t for t in load(out, "sqlite", slow).get_trials() if t.state == TrialState.RUNNING]
    assert len(killed) == 1
    rerun = run_sweep(out, *slow)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = load(out, "sqlite", slow)
    assert_exactly_once(study, 9)
    stale = study.trials[killed[0].number]
    assert stale.state == TrialState.FAIL and stale.user_attrs.get("fail_reason") == "stale"


# --------------------------------------------------------------------------------------------
# Several workers on one study


def _three_workers(out: Path, storage_args: list[str], env=None) -> None:
    proc = run_sweep(out, *TINY, *storage_args, "sweep.workers=3", timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _owners(trials) -> set[str]:
    return {t.system_attrs[wq.LEASE_KEY][0] for t in trials}


@pytest.mark.slow
def test_three_workers_journal_exactly_once(tmp_path):
    out = tmp_path / "journal"
    _three_workers(out, ["storage=journal"])
    complete = assert_exactly_once(load(out, "journal", TINY), 9)
    assert len(_owners(complete)) >= 2  # the cells really were shared


@pytest.mark.postgres
def test_three_workers_postgres_exactly_once(tmp_path, postgres_url):
    out = tmp_path / "pg"
    _three_workers(out, ["storage=url", f"storage.url={postgres_url}", "sweep.study_name=pg3"])
    study = load(out, "url", TINY + ["sweep.study_name=pg3"], url=postgres_url)
    complete = assert_exactly_once(study, 9)
    assert len(_owners(complete)) >= 2
    # the password never reached the files the sweep wrote
    password = postgres_url.split(":")[2].split("@")[0]
    for path in out.rglob("*"):
        if path.is_file():
            assert password.encode() not in path.read_bytes(), path


# --------------------------------------------------------------------------------------------
# Models crossed with variants (sweep.models)


def test_models_cross_variants_with_their_own_model_group():
    cfg = compose_config(["sweep.models=[mlp,cnn_bn]", "sweep.variants=[adam/l2,sgd/independent]"])
    vs = plan.variants(cfg)
    assert [v.label for v in vs] == [
        "mlp:adam/l2",
        "mlp:sgd/independent",
        "cnn_bn:adam/l2",
        "cnn_bn:sgd/independent",
    ]
    names = [plan.study_name(cfg, v) for v in vs]
    assert names[2] == "quick-cnn_bn-adam-l2" and len(set(names)) == 4
    cnn = plan.variant_config(cfg, vs[2])
    assert (cnn.model.name, cnn.model.width) == ("cnn_bn", 32)  # conf/model/cnn_bn.yaml
    assert (cnn.optimizer.name, cnn.optimizer.decay) == ("adam", "l2")
    assert plan.variant_config(cfg, vs[0]).model.width == 128  # quick.yaml's mlp


def test_model_on_the_command_line_runs_just_that_model(tmp_path):
    from harness.sweep.cli import resolve

    cfg = compose_config(["sweep.models=[mlp,mlp_bn]", "model=mlp_bn"])
    out = resolve(cfg, ["model=mlp_bn"], str(tmp_path))
    assert list(out.sweep.models) == []
    assert [v.label for v in plan.variants(out)] == [v for v in cfg.sweep.variants]


def test_worker_refuses_sqlite_for_an_array(tmp_path):
    out = tmp_path / "w"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.worker", "--prepare", *TINY, f"hydra.run.dir={out}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: storage.kind: sqlite"), proc.stderr
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


def test_bn_twin_keeps_width_and_ranges_apply_per_variant():
    cfg = compose_config(
        [
            "sweep.models=[mlp,mlp_bn,cnn]",
            "model.width=64",
            "sweep.variants=[adam/l2,sgd/l2,sgd/independent]",
            "++sweep.ranges.sgd.lr={min: 1e-3, max: 1, num: 4}",
            "+sweep.ranges.sgd-independent.weight_decay={min: 1e-6, max: 1e-3, num: 2}",
        ]
    )
    by = {v.label: plan.variant_config(cfg, v) for v in plan.variants(cfg)}
    assert by["mlp_bn:adam/l2"].model.width == 64  # the BatchNorm twin of the configured mlp
    assert by["cnn:adam/l2"].model.width == 32  # another model: its own conf/model defaults
    lrs, wds, _ = plan.grid_axes(by["mlp:adam/l2"].sweep)
    assert (len(lrs), len(wds)) == (6, 6)  # quick's ranges
    lrs, wds, _ = plan.grid_axes(by["mlp:sgd/l2"].sweep)
    assert lrs == [1e-3, 1e-2, 1e-1, 1.0] and len(wds) == 6
    lrs, wds, _ = plan.grid_axes(by["mlp:sgd/independent"].sweep)
    assert lrs == [1e-3, 1e-2, 1e-1, 1.0] and wds == [1e-6, 1e-3]


def test_a_range_takes_the_parts_it_leaves_out_from_the_sweep_axis():
    cfg = compose_config(
        [
            "sweep.variants=[adam/independent,adam/decoupled]",
            "sweep.lr.num=3",
            "sweep.weight_decay.num=2",
            "++sweep.ranges.adam-independent.lr={min: 1e-3, max: 1e-1}",
            "++sweep.ranges.adam-independent.weight_decay={max: 1e-2}",
        ]
    )
    by = {v.key: plan.variant_config(cfg, v) for v in plan.variants(cfg)}
    lrs, wds, _ = plan.grid_axes(by["adam/independent"].sweep)
    assert lrs == [1e-3, 1e-2, 1e-1]  # the range's min and max, sweep.lr's num
    assert wds == [cfg.sweep.weight_decay.min, 1e-2]  # sweep.weight_decay's min and num
    lrs, wds, _ = plan.grid_axes(by["adam/decoupled"].sweep)
    assert len(lrs) == 3 and lrs[0] == cfg.sweep.lr.min and len(wds) == 2  # no range: the axes


@pytest.mark.parametrize(
    "override, message",
    [
        ("+sweep.ranges.rmsprop.lr={min: 1e-3, max: 1, num: 4}", "sweep.ranges: key 'rmsprop'"),
        ("+sweep.ranges.sgd.momentum={min: 0.1, max: 0.9, num: 3}", "sweep.ranges.sgd: only"),
        ("++sweep.ranges.sgd.lr={min: 1, max: 1e-3, num: 4}", "sweep.ranges.sgd.lr: the range"),
        ("++sweep.ranges.sgd.lr={min: 1, max: 1e-3}", "sweep.ranges.sgd.lr: the range"),
        (
            "++sweep.ranges.sgd.lr={min: 1e-3, max: 1, nm: 4}",
            "sweep.ranges.sgd.lr: unknown part 'nm'",
        ),
    ],
)
def test_bad_ranges_are_one_line(override, message):
    from harness.config import ConfigError, validate

    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        validate(compose_config([override]))


@pytest.mark.slow
def test_multirun_over_decay_runs_one_sweep_per_variant(tmp_path):
    import pandas as pd

    base = [o for o in TINY if not o.startswith("optimizer.decay=")]
    sweep_dir = tmp_path / "mr"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.sweep", "-m", f"hydra.sweep.dir={sweep_dir}", *base,
         "optimizer.decay=l2,independent"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the many overrides make a too long directory name: job<N>-<hash> instead of an OSError
    jobs = sorted(p.parent for p in sweep_dir.glob("*/results.csv"))
    assert [j.name.split("-")[0] for j in jobs] == ["job0", "job1"], jobs
    for out in jobs:
        res = pd.read_csv(out / "results.csv")
        decay = res.decay.iloc[0]
        assert len(res) == 9 and set(res.decay) == {decay} and set(res.state) == {"COMPLETE"}
        assert set(res.study) == {f"quick-adam-{decay}"}
        assert_exactly_once(load(out, "sqlite", [*base, f"optimizer.decay={decay}"]), 9)
    assert {pd.read_csv(j / "results.csv").decay.iloc[0] for j in jobs} == {"l2", "independent"}
    # a short override list keeps the readable name
    from harness.config import multirun_subdir

    assert multirun_subdir("optimizer.decay=l2", 0) == "optimizer.decay=l2"


# --------------------------------------------------------------------------------------------
# Reading a study writes nothing; a study keeps its grid


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_status_and_report_on_an_empty_folder_write_nothing(tmp_path):
    for action in ("status", "report"):
        out = tmp_path / action
        proc = run_sweep(out, *TINY, f"sweep.action={action}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "nothing has run here yet" in proc.stdout
        files = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
        assert files == [], files


@pytest.mark.slow
def test_status_and_report_are_read_only_and_a_changed_grid_is_refused(tmp_path):
    out = tmp_path / "grid"
    assert run_sweep(out, *TINY).returncode == 0
    before = _files(out)
    n = len(load(out, "sqlite", TINY).get_trials())
    wider = [*TINY, "sweep.lr.num=4"]
    status = run_sweep(out, *wider, "sweep.action=status")
    assert status.returncode == 0 and "COMPLETE" in status.stdout
    rep = run_sweep(out, *wider, "sweep.action=report")
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert len(load(out, "sqlite", TINY).get_trials()) == n  # report added no trial
    after = _files(out)
    assert after["config.yaml"] == before["config.yaml"]  # and left the run's config alone
    # a run with another grid under the same name: one line naming the key and the ways out
    refused = run_sweep(out, *wider)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sweep.lr: the study"), lines
    assert "sweep.action=extend" in lines[0] and "sweep.study_name=" in lines[0]
    assert len(load(out, "sqlite", TINY).get_trials()) == n
    # extend: the new grid's missing cells are added and trained; the study records the union
    ext = run_sweep(out, *wider, "sweep.action=extend")
    assert ext.returncode == 0, ext.stderr[-2000:]
    study = load(out, "sqlite", TINY)
    lrs = plan.log_range(1e-3, 1e-2, 4)
    assert len(study.get_trials()) == n + 2 * 3  # two new lr values x three wds
    assert study.user_attrs["grid"]["lr"] == sorted(set(lrs) | set(plan.log_range(1e-3, 1e-2, 3)))
    assert_exactly_once(study, 15)
