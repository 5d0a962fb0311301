"""analysis.load: results.csv, real Optuna storages (SQLite, journal, PostgreSQL) built with the
trial attributes the sweep stores (docs/sweep.md), and a W&B export all give the same tidy frame."""

from __future__ import annotations

import json
import math

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from analysis.load import (
    RESULTS_COLUMNS,
    SourceError,
    aggregate,
    grid,
    load_results,
    read_optuna,
    seed_grids,
    split_groups,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

VARIANTS = ("sgd/l2", "adam/independent")
LRS = (1e-3, 1e-2, 1e-1)
WDS = (1e-5, 1e-4, 1e-3)
COMPARE = ["variant", "lr", "weight_decay", "seed", "test_error", "val_error", "diverged"]


def _trials() -> list[dict]:
    """Per-trial truth: 2 variants x 3 lr x 3 wd x 2 seeds COMPLETE (one diverged), one FAIL."""
    rows, rng = [], np.random.default_rng(0)
    for v in VARIANTS:
        opt, dec = v.split("/")
        n = 0
        for seed in (0, 1):
            for lr in LRS:
                for wd in WDS:
                    err = round(float(rng.uniform(0.05, 0.5)), 6)
                    div = v == "sgd/l2" and lr == 1e-1 and wd == 1e-3 and seed == 1
                    rows.append(
                        dict(
                            study=f"exp-{opt}-{dec}",
                            experiment="exp",
                            optimizer=opt,
                            decay=dec,
                            model="mlp",
                            data="mnist1d",
                            trial=n,
                            lr=lr,
                            weight_decay=wd,
                            seed=seed,
                            state="COMPLETE",
                            test_error=1.0 if div else err,
                            val_error=1.0 if div else round(err + 0.01, 6),
                            final_val_error=1.0 if div else round(err + 0.02, 6),
                            train_loss=math.nan if div else 0.3,
                            weight_norm=5.0 + n,
                            diverged=div,
                            steps=7 if div else 100,
                            wall_s=1.5,
                            wandb_run_id=f"r{v[0]}{n}",
                        )
                    )
                    n += 1
        rows.append(
            {
                **rows[-1],
                "trial": n,
                "state": "FAIL",
                "test_error": None,
                "val_error": None,
                "diverged": None,
                "seed": 2,
            }
        )
    return rows


TRUTH = _trials()


def _expected() -> pd.DataFrame:
    done = pd.DataFrame([r for r in TRUTH if r["state"] == "COMPLETE"])
    done["variant"] = done["optimizer"] + "/" + done["decay"]
    return done[COMPARE].sort_values(COMPARE[:4]).reset_index(drop=True)


def _norm(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[COMPARE].sort_values(COMPARE[:4]).reset_index(drop=True)


def _fill(storage) -> None:
    """Write TRUTH into ``storage`` the way the sweep does: one study per variant."""
    dists = {
        "lr": FloatDistribution(1e-5, 1.0, log=True),
        "weight_decay": FloatDistribution(1e-6, 1.0, log=True),
        "seed": IntDistribution(0, 10),
    }
    for v in VARIANTS:
        opt, dec = v.split("/")
        study = optuna.create_study(study_name=f"exp-{opt}-{dec}", storage=storage)
        for key, val in dict(
            experiment="exp",
            optimizer=opt,
            decay=dec,
            grid=json.dumps({"lr": LRS, "weight_decay": WDS}),
        ).items():
            study.set_user_attr(key, val)
        for r in TRUTH:
            if r["study"] != study.study_name:
                continue
            attrs = {
                k: r[k]
                for k in (
                    "test_error",
                    "val_error",
                    "final_val_error",
                    "train_loss",
                    "weight_norm",
                    "diverged",
                    "steps",
                    "wall_s",
                    "wandb_run_id",
                )
            }
            attrs.update(
                optimizer=opt,
                decay=dec,
                cell=f"{r['lr']}|{r['weight_decay']}|{r['seed']}",
                config=json.dumps(
                    {"name": "exp", "model": {"name": "mlp"}, "data": {"name": "mnist1d"}}
                ),
                git_rev="abc",
                versions="{}",
            )
            params = {"lr": r["lr"], "weight_decay": r["weight_decay"], "seed": r["seed"]}
            done = r["state"] == "COMPLETE"
            study.add_trial(
                create_trial(
                    state=TrialState.COMPLETE if done else TrialState.FAIL,
                    value=r["val_error"] if done else None,
                    params=params,
                    distributions=dists,
                    user_attrs=attrs if done else {"optimizer": opt, "decay": dec},
                )
            )
        study.enqueue_trial({"lr": 1e-3, "weight_decay": 1e-5, "seed": 5})  # WAITING: not a row


def _wandb_runs() -> list[dict]:
    """The same trials as W&B runs (flattened config, metrics in the summary)."""
    runs = []
    for r in TRUTH:
        done = r["state"] == "COMPLETE"
        runs.append(
            {
                "id": r["wandb_run_id"],
                "group": r["study"],
                "state": "finished" if done else "failed",
                "config": {
                    "study": r["study"],
                    "name": r["experiment"],
                    "optimizer.name": r["optimizer"],
                    "optimizer.decay": r["decay"],
                    "model.name": r["model"],
                    "data.name": r["data"],
                    "trial": r["trial"],
                    "lr": r["lr"],
                    "weight_decay": r["weight_decay"],
                    "seed": r["seed"],
                },
                "summary": {
                    k: r[k]
                    for k in (
                        "test_error",
                        "val_error",
                        "final_val_error",
                        "train_loss",
                        "weight_norm",
                        "diverged",
                        "steps",
                        "wall_s",
                    )
                }
                if done
                else {},
            }
        )
    return runs


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("csv") / "nested" / "results.csv"
    path.parent.mkdir()
    pd.DataFrame(TRUTH, columns=list(RESULTS_COLUMNS)).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "study.db"
    _fill(optuna.storages.RDBStorage(f"sqlite:///{path}"))
    return path


@pytest.fixture(scope="module")
def journal_path(tmp_path_factory):
    from optuna.storages.journal import JournalFileBackend

    path = tmp_path_factory.mktemp("journal") / "study.journal"
    _fill(optuna.storages.JournalStorage(JournalFileBackend(str(path))))
    return path


def test_every_source_gives_the_same_tidy_frame(csv_path, sqlite_path, journal_path, tmp_path):
    want = _expected()
    export = tmp_path / "runs.json"
    export.write_text(json.dumps(_wandb_runs()))
    sources = {
        "csv": csv_path,
        "dir": csv_path.parent.parent,
        "sqlite url": f"sqlite:///{sqlite_path}",
        "sqlite file": sqlite_path,
        "journal": journal_path,
        "wandb runs": [_wandb_runs()],  # e.g. wandb.Api().runs(...) as dicts
        "wandb json": export,
        "frame": pd.read_csv(csv_path),
    }
    for name, src in sources.items():
        frame = load_results(src)
        assert list(frame.columns[: len(RESULTS_COLUMNS)]) == list(RESULTS_COLUMNS), name
        assert (frame["state"] == "COMPLETE").all(), name
        assert frame["diverged"].dtype == bool and frame["seed"].dtype.kind == "i", name
        pd.testing.assert_frame_equal(_norm(frame), want, check_dtype=False, obj=name)
        assert set(frame["study"]) == {"exp-sgd-l2", "exp-adam-independent"}, name
        assert set(frame["model"]) == {"mlp"} and set(frame["experiment"]) == {"exp"}, name


def test_optuna_reader_follows_the_attribute_schema(sqlite_path, journal_path):
    raw = read_optuna(f"sqlite:///{sqlite_path}")
    assert sorted(raw["state"].value_counts().items()) == [("COMPLETE", 36), ("FAIL", 2)]
    row = raw[(raw.state == "COMPLETE") & (raw.study == "exp-sgd-l2")].iloc[0]
    assert (row.model, row.data, row.experiment, row.wandb_run_id) == (
        "mlp",
        "mnist1d",
        "exp",
        "rs0",
    )
    # the journal holds the same trials
    pd.testing.assert_frame_equal(
        raw.sort_values(["study", "trial"]).reset_index(drop=True),
        read_optuna(str(journal_path)).sort_values(["study", "trial"]).reset_index(drop=True),
    )


def test_named_studies(sqlite_path, journal_path):
    one = load_results(f"sqlite:///{sqlite_path}#exp-sgd-l2")
    assert set(one["variant"]) == {"sgd/l2"} and len(one) == 18
    assert set(load_results(journal_path, studies=["exp-adam-independent"])["variant"]) == {
        "adam/independent"
    }
    with pytest.raises(SourceError, match="study nope: no study named so .*exp-sgd-l2"):
        load_results(sqlite_path, studies=["nope"])
    with pytest.raises(SourceError, match="study.journal: no study named nope .studies: exp-"):
        load_results(f"{journal_path}#nope")
    # --study names may live in different storages
    both = load_results([sqlite_path, journal_path], studies=["exp-sgd-l2"])
    assert set(both["variant"]) == {"sgd/l2"} and len(both) == 18


def test_agrees_with_the_sweep_writer(sqlite_path, tmp_path):
    import dataclasses

    from harness import results

    storage = optuna.storages.RDBStorage(f"sqlite:///{sqlite_path}")
    studies = [
        optuna.load_study(study_name=s.study_name, storage=storage)
        for s in storage.get_all_studies()
    ]
    written = results.write_results(studies, tmp_path / "results.csv")
    pd.testing.assert_frame_equal(_norm(load_results(written)), _expected(), check_dtype=False)
    # the file the sweep writes starts with the columns the analysis reads, and every field of
    # a trial's result is one of them
    header = tuple(pd.read_csv(written, nrows=0).columns)
    assert header[: len(RESULTS_COLUMNS)] == RESULTS_COLUMNS, header
    assert {f.name for f in dataclasses.fields(results.TrialResult)} <= set(header), header


def test_aggregate_cells_and_seed_grids(csv_path):
    frame = load_results(csv_path)
    cells = aggregate(frame)
    assert len(cells) == 18 and (cells["count"] == 2).all()
    c = cells[(cells.variant == "sgd/l2") & (cells.lr == 1e-1) & (cells.weight_decay == 1e-3)]
    errs = frame[(frame.variant == "sgd/l2") & (frame.lr == 1e-1) & (frame.weight_decay == 1e-3)]
    assert c["mean"].item() == pytest.approx(errs["test_error"].mean())
    assert c["std"].item() == pytest.approx(errs["test_error"].std())
    assert c["n_diverged"].item() == 1 and c["diverged"].item() == 0.5
    lrs, wds, E = grid(cells, "sgd/l2")
    assert list(lrs) == list(LRS) and list(wds) == list(WDS) and E.shape == (3, 3)
    seeds, _, _, S = seed_grids(frame, "sgd/l2")
    assert list(seeds) == [0, 1] and np.allclose(np.nanmean(S, 0), E)
    with pytest.raises(ValueError, match="metric=nope"):
        aggregate(frame, "nope")


def test_same_trial_twice_counts_once_and_experiments_split(csv_path, sqlite_path):
    both = load_results([csv_path, sqlite_path])
    assert len(both) == 36
    other = pd.read_csv(csv_path).assign(experiment="other", study=lambda f: "other-" + f.study)
    frame = load_results([csv_path, other])
    assert len(frame) == 72
    parts = dict(split_groups(frame))
    assert sorted(parts) == ["exp", "other"] and all(len(p) == 36 for p in parts.values())
    assert len(load_results([csv_path, other], experiment="other")) == 36
    with pytest.raises(SourceError, match="experiment=nope"):
        load_results(csv_path, experiment="nope")


def test_diverged_rows_get_error_one_and_incomplete_rows_are_dropped(tmp_path):
    rows = [
        dict(
            optimizer="adam",
            decay="l2",
            lr=1e-3,
            weight_decay=1e-4,
            seed=0,
            state="COMPLETE",
            test_error="",
            val_error="",
            diverged="True",
        ),
        dict(
            optimizer="adam",
            decay="l2",
            lr=1e-3,
            weight_decay=1e-3,
            seed=0,
            state="COMPLETE",
            test_error=0.2,
            val_error=0.25,
            diverged="False",
        ),
        dict(
            optimizer="adam",
            decay="l2",
            lr=1e-2,
            weight_decay=1e-3,
            seed=0,
            state="RUNNING",
            test_error="",
            val_error="",
            diverged="",
        ),
        dict(
            optimizer="adam",
            decay="l2",
            lr=1e-2,
            weight_decay=1e-4,
            seed=0,
            state="COMPLETE",
            test_error="",
            val_error="",
            diverged="False",
        ),
    ]
    path = tmp_path / "results.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with pytest.warns(UserWarning, match="1 COMPLETE rows without any error"):
        frame = load_results(path)
    assert len(frame) == 2
    div = frame[frame.diverged]
    assert div["test_error"].item() == 1.0 and div["val_error"].item() == 1.0


def test_bad_sources_are_one_clear_line(tmp_path):
    missing_db = tmp_path / "nope.db"
    cases = {
        str(tmp_path / "nope.csv"): "no such file or directory",
        f"sqlite:///{missing_db}": "no such SQLite file",
        str(tmp_path): "no results.csv below this directory",
        "postgresql+psycopg2://me:secret@127.0.0.1:9/db": "cannot open the Optuna storage",
        "wandb:just-one-part": "wandb:entity/project",
    }
    bad_csv = tmp_path / "other.csv"
    pd.DataFrame({"a": [1]}).to_csv(bad_csv, index=False)
    cases[str(bad_csv)] = "not a results.csv .missing column decay, lr"
    garbage = tmp_path / "x.journal"
    garbage.write_text("not json\n")
    cases[str(garbage)] = "x.journal"
    for src, msg in cases.items():
        with pytest.raises(SourceError, match=msg) as err:
            load_results(src)
        assert "\n" not in str(err.value) and "secret" not in str(err.value)
    assert not missing_db.exists()  # reading never creates a storage


def test_postgres_storage(postgres_url):
    storage = optuna.storages.RDBStorage(postgres_url)
    for s in storage.get_all_studies():  # the server is shared by the session
        if s.study_name.startswith("exp-"):
            optuna.delete_study(study_name=s.study_name, storage=storage)
    _fill(storage)
    frame = load_results(f"{postgres_url}#exp-sgd-l2,exp-adam-independent")
    pd.testing.assert_frame_equal(_norm(frame), _expected(), check_dtype=False)
