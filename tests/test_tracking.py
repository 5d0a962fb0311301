"""W&B tracking: real offline runs written by Tracker and read back from the .wandb
files, secrets never written, mode resolution, and W&B Api runs (hand-written run nodes) -> the
results.csv table."""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from analysis.wandb_runs import optuna_state, runs_to_frame
from harness.config import ConfigError
from harness.results import RESULTS_COLUMNS
from harness.secrets import mask_config, mask_secrets, register_secret
from harness.tracking import (
    OUTCOMES,
    Tracker,
    TrackingError,
    flatten_config,
    resolve_mode,
    run_name,
)
from tests.wandb_reader import CorruptRunFile, read_offline_runs, read_records

ROOT = Path(__file__).resolve().parent.parent
# wandb.Api() run nodes written by hand in the server's GraphQL shape (no real account behind them)
HANDWRITTEN_API_RUNS = Path(__file__).parent / "fixtures" / "handwritten_wandb_api_runs.json"
STUDY = "quick-adam-independent"
KEY40 = "0123456789abcdef0123456789abcdef01234567"
AUTH_ENV = (
    "WANDB_API_KEY",
    "WANDB_MODE",
    "WANDB_DISABLED",
    "WANDB_IDENTITY_TOKEN_FILE",
    "WANDB_BASE_URL",
    "LRWD_STORAGE_URL",
    "PGPASSWORD",
)


def tracking_cfg(mode="offline", tags=(), dir=""):
    return SimpleNamespace(mode=mode, project="lrwd-test", entity="", tags=list(tags), dir=dir)


def trial_config(lr, wd, seed, trial):
    """What the driver passes: the resolved trial config (nested here) + the trial's params."""
    return {
        "name": "quick",
        "optimizer": {"name": "adam", "decay": "independent", "lr": lr, "weight_decay": wd},
        "model": {"name": "mlp", "width": 32, "depth": 2},
        "data": {"name": "mnist1d", "batch_size": 100},
        "train": {"seed": seed, "epochs": 5},
        "lr": lr,
        "weight_decay": wd,
        "seed": seed,
        "trial": trial,
    }


def report(k: int, step: int) -> dict:
    """A report row as harness.train sends it; values distinct per run k and step."""
    return {
        "train_loss": 2.0 / (1 + step) + k,
        "val_error": 0.5 - 0.001 * step + 0.1 * k,
        "lr_t": 1e-3 * (k + 1) * (1 - step / 100),
        "eta": 1 - step / 100,
        "shrink": 1e-4 * (1 - step / 100),
        "weight_norm": 10.0 + k + step / 10,
        "epoch": step // 10,
    }


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No W&B login, mode or secrets from the machine; an empty netrc."""
    for var in AUTH_ENV:
        monkeypatch.delenv(var, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("")
    monkeypatch.setenv("NETRC", str(netrc))
    return netrc


@pytest.fixture
def fresh_wandb(clean_env):
    """wandb reads its environment once per process (wandb.setup); start from a fresh one."""
    import wandb

    wandb.teardown()
    yield clean_env
    wandb.teardown()


# ------------------------------------------------------------------------------------------------
# Secrets, modes, names


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://lrwd:pw123@db:5432/lrwd", "postgresql://lrwd:***@db:5432/lrwd"),
        (
            "open postgresql+psycopg2://u:p@ss@10.0.0.1/x failed",
            "open postgresql+psycopg2://u:***@10.0.0.1/x failed",
        ),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("mysql://root:pw@h/db?password=second&ssl=1", "mysql://root:***@h/db?password=***&ssl=1"),
        ("host=db user=lrwd password=libpq-pw dbname=x", "host=db user=lrwd password=*** dbname=x"),
        (f"key {KEY40}.", "key ***."),
        (f"local-{KEY40}", "***"),
        ("wandb_v1_" + "Ab3_" * 19 + "x", "***"),
        # not secrets
        ("sqlite:////tmp/out/study.db", "sqlite:////tmp/out/study.db"),
        ("postgresql://lrwd@db/lrwd", "postgresql://lrwd@db/lrwd"),
        ("http://127.0.0.1:8080/graphql", "http://127.0.0.1:8080/graphql"),
        ("adam/independent lr=1e-3 wd=1e-4 s0", "adam/independent lr=1e-3 wd=1e-4 s0"),
        ("0123456789abcdef", "0123456789abcdef"),
    ],
)
def test_mask_secrets_patterns(clean_env, text, expected):
    assert mask_secrets(text) == expected


def test_mask_secrets_known_values(clean_env, monkeypatch):
    odd_key = "odd-format-key_not-hex-at-all"
    monkeypatch.setenv("WANDB_API_KEY", odd_key)
    monkeypatch.setenv("PGPASSWORD", "pg-env-pw")
    monkeypatch.setenv("LRWD_STORAGE_URL", "postgresql://u:url-env-pw@h/db")
    clean_env.write_text("machine api.wandb.ai\n  login user\n  password netrc-key-value\n")
    register_secret("registered-pw")
    text = (
        f"a={odd_key} b=pg-env-pw c=url-env-pw d=netrc-key-value e=registered-pw f=short "
        "wrong password for url-env-pw"
    )
    assert mask_secrets(text) == "a=*** b=*** c=*** d=*** e=*** f=short wrong password for ***"
    assert mask_secrets(3.5) == 3.5


def test_mask_config(clean_env):
    sha = "89a5319d0c4c3f0f0e8e8a6d0e8e8a6d0e8e8a6d"
    cfg = {
        "storage": {"kind": "url", "url": "postgresql://u:pw-in-url@h/db", "password": "x1y2z3"},
        "tracking": {"api_key": "abc", "tags": ["ok", f"k={KEY40}"], "project": "lrwd"},
        "data": {"tokenizer": "bpe", "secret_sauce": 1, "db_password": None},
        "git_rev": sha,
        "note": f"sha {sha}",
        "pair": ("postgresql://a:b-pw@h/d", 2),
    }
    out = mask_config(cfg)
    assert out == {
        "storage": {"kind": "url", "url": "postgresql://u:***@h/db", "password": "***"},
        "tracking": {"api_key": "***", "tags": ["ok", "k=***"], "project": "lrwd"},
        "data": {"tokenizer": "bpe", "secret_sauce": "***", "db_password": None},
        "git_rev": sha,  # a commit hash under a git key is kept
        "note": "sha ***",  # anywhere else a 40-hex string may be a W&B key
        "pair": ("postgresql://a:***@h/d", 2),
    }
    assert cfg["storage"]["password"] == "x1y2z3"  # a copy: the input is untouched


def test_resolve_mode(clean_env, monkeypatch, tmp_path):
    assert resolve_mode("auto") == "offline"  # no key, empty netrc: never a prompt
    for mode in ("online", "offline", "disabled"):
        assert resolve_mode(mode) == mode
    monkeypatch.setenv("WANDB_API_KEY", KEY40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_DISABLED", "true")
    assert resolve_mode("auto") == "disabled"
    monkeypatch.delenv("WANDB_DISABLED")
    monkeypatch.delenv("WANDB_API_KEY")
    # a `wandb login` (netrc entry for the host in use) counts; other hosts do not
    clean_env.write_text(f"machine wandb.example.org\n  login user\n  password local-{KEY40}\n")
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert resolve_mode("auto") == "online"
    with pytest.raises(ValueError, match="tracking.mode: 'cloud' is not one of"):
        resolve_mode("cloud")


def test_online_without_login_is_refused_up_front(clean_env, tmp_path):
    with pytest.raises(ConfigError) as err:
        Tracker(tracking_cfg("online"), tmp_path, STUDY)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("tracking.mode: online")
    assert "wandb login" in msg and "tracking.mode=offline" in msg


def test_run_name():
    assert run_name("adam/independent", 1e-3, 1e-4, 0) == "adam/independent lr=1e-3 wd=1e-4 s0"
    assert run_name("sgd/l2", 0.1, 10**-3.5, 2) == "sgd/l2 lr=0.1 wd=3.16e-4 s2"
    assert run_name("sgd/l2", 0.05, 0.0, 1) == "sgd/l2 lr=5e-2 wd=0 s1"
    assert run_name("adam/l2", 2.5e-5, 1e-1, 3) == "adam/l2 lr=2.5e-5 wd=0.1 s3"
    assert run_name("adam/l2", 10**-0.5, 1.0, 0) == "adam/l2 lr=0.316 wd=1 s0"


def test_flatten_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"a": {"b": 1, "c": [1, 2], "d": {"e": "x"}}, "f": (1, 2)})
    assert flatten_config(cfg) == {"a.b": 1, "a.c": [1, 2], "a.d.e": "x", "f": [1, 2]}


def test_disabled_never_imports_wandb(tmp_path):
    out = tmp_path / "never"
    code = (
        "import sys\n"
        "from types import SimpleNamespace\n"
        "from harness.tracking import Tracker\n"
        "cfg = SimpleNamespace(mode='disabled', project='p', entity='', tags=[], dir='')\n"
        "t = Tracker(cfg, sys.argv[1], 's')\n"
        "with t.start('n', 'adam/l2', {'a': {'b': 1}}) as run:\n"
        "    run.log(0, {'x': 1.0})\n"
        "run.finish({'y': 2}, 'diverged')\n"
        "assert run.id is None and not t.enabled\n"
        "assert 'wandb' not in sys.modules, 'wandb was imported'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# Real offline runs, read back from the .wandb files


def test_offline_runs_population_failure_divergence(clean_env, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # nothing may land in the working directory
    tracker = Tracker(tracking_cfg("offline", tags=["ci"]), work / "sweep", STUDY)
    assert tracker.mode == "offline" and tracker.wandb_dir == work / "sweep" / "wandb"
    # A population of three trials trained together: three runs open at once, rows interleaved.
    cells = [(0, 1e-3, 1e-4, 0), (1, 1e-2, 1e-4, 0), (2, 10**-0.5, 1e-4, 0)]
    runs = [
        tracker.start(
            run_name("adam/independent", lr, wd, s), "adam/independent", trial_config(lr, wd, s, n)
        )
        for n, lr, wd, s in cells
    ]
    assert len({r.id for r in runs}) == 3 and all(r.mode == "offline" for r in runs)
    logged: dict[int, list[dict]] = {0: [], 1: [], 2: []}
    for step in range(0, 50, 10):
        for k, run in enumerate(runs):
            if k == 2 and step > 20:
                continue  # member 2 diverged at step 20: no more reports
            row = report(k, step)
            if k == 2 and step == 20:
                row["train_loss"] = float("nan")
            run.log(step, row)
            logged[k].append({**row, "_step": step})
    final = {
        k: {
            "test_error": 0.3 + 0.01 * k,
            "val_error": 0.28 + 0.01 * k,
            "final_val_error": 0.29 + 0.01 * k,
            "train_loss": 0.05 * (k + 1),
            "weight_norm": 12.5 + k,
            "diverged": False,
            "steps": 50,
            "wall_s": 1.5,
        }
        for k in (0, 1)
    }
    diverged = {
        "test_error": 1.0,
        "val_error": 1.0,
        "final_val_error": 1.0,
        "train_loss": float("nan"),
        "weight_norm": float("inf"),
        "diverged": True,
        "steps": 21,
        "wall_s": 0.7,
    }
    runs[2].finish(diverged, state="diverged")  # finished out of order, on purpose
    runs[0].finish(final[0])
    runs[1].finish(final[1], state="finished")
    # A trial that raises: the context manager closes its run as failed and re-raises.
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.start(
            run_name("adam/independent", 1e-4, 1e-2, 0),
            "adam/independent",
            trial_config(1e-4, 1e-2, 0, 3),
        ) as failing:
            failing.log(0, report(3, 0))
            raise RuntimeError("boom in the data loader")
    # A pruned trial.
    pruned = tracker.start(
        run_name("adam/independent", 1e-4, 1e-4, 0),
        "adam/independent",
        trial_config(1e-4, 1e-4, 0, 4),
    )
    pruned.log(0, report(4, 0))
    pruned.finish({"pruned": True}, state="pruned")
    assert tracker.finish_all() == 0  # everything was closed
    with pytest.raises(ValueError, match="state: 'done'"):
        pruned.finish({}, state="done")

    assert [p.name for p in work.iterdir()] == ["sweep"]
    back = read_offline_runs(work / "sweep")
    assert [r["id"] for r in back] == [r.id for r in runs] + [failing.id, pruned.id]
    trials = [0, 1, 2, 3, 4]
    states = ["finished", "finished", "finished", "failed", "finished"]
    outcomes = ["finished", "finished", "diverged", "failed", "pruned"]
    names = [
        "adam/independent lr=1e-3 wd=1e-4 s0",
        "adam/independent lr=1e-2 wd=1e-4 s0",
        "adam/independent lr=0.316 wd=1e-4 s0",
        "adam/independent lr=1e-4 wd=1e-2 s0",
        "adam/independent lr=1e-4 wd=1e-4 s0",
    ]
    for k, run in enumerate(back):
        assert run["project"] == "lrwd-test"
        assert run["group"] == STUDY and run["job_type"] == "adam/independent"
        assert run["name"] == names[k]
        extra = [] if outcomes[k] == "finished" else [outcomes[k]]
        assert run["tags"] == ["ci", "adam/independent", *extra]
        assert run["state"] == states[k] and run["exit_code"] == (1 if k == 3 else 0)
        cfg = run["config"]
        assert cfg["trial"] == trials[k] and cfg["study"] == STUDY and cfg["name"] == "quick"
        assert cfg["optimizer.decay"] == "independent" and cfg["model.width"] == 32
        assert "optimizer" not in cfg  # flattened
        assert run["summary"]["outcome"] == outcomes[k]
        assert run["summary"]["diverged"] is (k == 2)
    # History: each run holds exactly its own rows, in order (no mixing between open runs).
    for k in (0, 1, 2):
        rows = [{key: v for key, v in r.items() if key in logged[k][0]} for r in back[k]["history"]]
        assert len(rows) == len(logged[k])
        for got, want in zip(rows, logged[k]):
            assert got.keys() == want.keys()
            for key in want:
                assert got[key] == want[key] or (math.isnan(got[key]) and math.isnan(want[key]))
    assert [r["_step"] for r in back[3]["history"]] == [0]
    # Summary: the final metrics.
    for k in (0, 1):
        for key, value in final[k].items():
            assert back[k]["summary"][key] == value
    s2 = back[2]["summary"]
    assert s2["test_error"] == 1.0 and s2["steps"] == 21 and s2["weight_norm"] == math.inf
    assert s2["train_loss"] is None  # W&B stores a NaN summary value as null
    assert back[3]["summary"]["error"] == "RuntimeError: boom in the data loader"
    assert back[4]["summary"]["pruned"] is True

    # The same runs as the results.csv table.
    frame = runs_to_frame(back)
    assert list(frame.columns) == list(RESULTS_COLUMNS)
    assert frame["state"].tolist() == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
    assert frame["trial"].tolist() == trials
    assert frame["lr"].tolist() == [c[1] for c in cells] + [1e-4, 1e-4]
    assert frame["wandb_run_id"].tolist() == [r["id"] for r in back]
    assert set(frame["study"]) == {STUDY} and set(frame["experiment"]) == {"quick"}
    assert set(frame["optimizer"] + "/" + frame["decay"]) == {"adam/independent"}
    assert frame.loc[:2, "diverged"].tolist() == [False, False, True]
    assert frame.loc[0, "test_error"] == 0.3 and frame.loc[1, "steps"] == 50
    assert math.isnan(frame.loc[2, "train_loss"]) and math.isnan(frame.loc[3, "test_error"])


def test_secrets_never_written(fresh_wandb, tmp_path, monkeypatch, capfd):
    password = "pg-S3cret-pw"
    url = f"postgresql+psycopg2://lrwd:{password}@127.0.0.1:5432/lrwd"
    plain_pw = "plain-field-pw-42"
    monkeypatch.setenv("WANDB_API_KEY", KEY40)
    # wandb copies sys.argv into its metadata record unless that is off: the sweep's command
    # line can hold storage.url=... with the password.
    monkeypatch.setattr(sys, "argv", ["harness.sweep", f"storage.url={url}", f"key={KEY40}"])
    tracker = Tracker(tracking_cfg("offline", tags=[f"db={url}"]), tmp_path / "out", STUDY)
    config = trial_config(1e-3, 1e-4, 0, 0)
    config["storage"] = {"kind": "url", "url": url, "password": plain_pw}
    config["tracking"] = {"note": f"WANDB_API_KEY={KEY40}"}
    run = tracker.start(f"trial at {url}", "adam/independent", config, tags=[KEY40])
    run.log(0, report(0, 0))
    run.finish({"note": f"stored in {url}", "test_error": 0.5})
    with pytest.raises(ConnectionError):
        with tracker.start("second", "adam/independent", config):
            raise ConnectionError(f"cannot reach {url} with key {KEY40}")

    captured = capfd.readouterr()
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert sum(p.suffix == ".wandb" for p in files) == 2
    assert any(p.name == "debug.log" for p in files)
    for secret in (KEY40, password, plain_pw):
        assert secret not in captured.out + captured.err
        for path in files:
            assert secret.encode() not in path.read_bytes(), (secret, path)
    first, second = read_offline_runs(tmp_path / "out")
    assert first["config"]["storage.url"] == "postgresql+psycopg2://lrwd:***@127.0.0.1:5432/lrwd"
    assert first["config"]["storage.password"] == "***"
    assert first["tags"] == [
        "db=postgresql+psycopg2://lrwd:***@127.0.0.1:5432/lrwd",
        "adam/independent",
        "***",
    ]
    assert first["name"] == "trial at postgresql+psycopg2://lrwd:***@127.0.0.1:5432/lrwd"
    assert (
        first["summary"]["note"] == "stored in postgresql+psycopg2://lrwd:***@127.0.0.1:5432/lrwd"
    )
    assert second["state"] == "failed"
    assert second["summary"]["error"].endswith("with key ***")


def test_reader_multi_block_records_and_checksums(clean_env, tmp_path):
    tracker = Tracker(tracking_cfg("offline"), tmp_path, STUDY)
    run = tracker.start("big", "adam/l2", {"blob": "x" * 100_000, "trial": 0})
    for step in range(300):
        run.log(step, {"train_loss": step * 0.5, "val_error": 1 / (step + 1)})
    run.finish({"note": "y" * 40_000})
    (back,) = read_offline_runs(tmp_path)
    assert back["config"]["blob"] == "x" * 100_000 and back["summary"]["note"] == "y" * 40_000
    assert [r["_step"] for r in back["history"]] == list(range(300))
    assert [r["train_loss"] for r in back["history"]] == [s * 0.5 for s in range(300)]
    path = next(Path(back["dir"]).glob("run-*.wandb"))
    chunks: Counter = Counter()
    read_records(path, chunks)
    assert chunks["FIRST"] >= 2 and chunks["MIDDLE"] >= 2 and chunks["LAST"] >= 2
    data = bytearray(path.read_bytes())
    bad = tmp_path / "bad" / "run-bad.wandb"
    bad.parent.mkdir()
    data[40_000] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptRunFile, match="checksum"):
        read_records(bad)
    bad.write_bytes(path.read_bytes()[:50_000])
    with pytest.raises(CorruptRunFile):
        read_records(bad)
    bad.write_bytes(b"not a wandb file")
    with pytest.raises(CorruptRunFile, match="not a W&B run file"):
        read_records(bad)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_auto_mode_falls_back_to_offline_when_wandb_is_unreachable(tmp_path):
    """With a key, auto means online; a W&B server that cannot be reached (a closed loopback
    port here) must not stop the sweep: the tracker warns once and goes on offline."""
    code = (
        "import sys\n"
        "from types import SimpleNamespace\n"
        "from harness.tracking import Tracker\n"
        "cfg = SimpleNamespace(mode='auto', project='p', entity='', tags=[], dir='')\n"
        "t = Tracker(cfg, sys.argv[1], 'study')\n"
        "assert t.mode == 'online', t.mode\n"
        "for i in range(2):\n"
        "    r = t.start(f'n{i}', 'adam/l2', {'trial': i})\n"
        "    r.log(0, {'train_loss': 1.0})\n"
        "    r.finish({'test_error': 0.5})\n"
        "print(t.mode, r.mode)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in AUTH_ENV}
    env.update(
        WANDB_API_KEY=KEY40,
        WANDB_BASE_URL=f"http://127.0.0.1:{_closed_port()}",
        WANDB_INIT_TIMEOUT="3",
        NETRC=str(tmp_path / "no-netrc"),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["offline", "offline"]
    assert proc.stderr.count("W&B unreachable") == 1 and "wandb sync" in proc.stderr
    assert KEY40 not in proc.stdout + proc.stderr
    back = read_offline_runs(tmp_path / "out", patterns=("offline-run-*",))
    assert [r["config"]["trial"] for r in back] == [0, 1]
    assert all(r["state"] == "finished" for r in back)


def test_offline_init_failure_is_one_line(clean_env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")  # the tracking dir cannot be created below a file
    tracker = Tracker(tracking_cfg("offline", dir=str(blocker / "sub")), tmp_path, STUDY)
    with pytest.raises(TrackingError, match=r"^tracking.dir: cannot create .*; pass tracking.dir="):
        tracker.start("n", "adam/l2", {})


# ------------------------------------------------------------------------------------------------
# W&B Api runs -> results.csv table (hand-written run nodes in the shape the server sends)


def _expected_handwritten_frame() -> pd.DataFrame:
    nan = float("nan")
    rows = [
        # study-suffix, trial, lr, wd, seed, state, test, val, final, loss, norm, div, steps, wall, id
        ("independent", 0, 1e-3, 1e-4, 0, "COMPLETE", 0.284, 0.262, 0.27, 0.0412, 31.7, False, 800, 6.9, "k3v9x2ab"),
        ("independent", 1, 1e-2, 1e-4, 0, "COMPLETE", 0.311, 0.298, 0.304, 0.0197, 58.2, False, 800, 7.1, "p0q7w4cd"),
        ("independent", 2, 1.0, 1e-4, 0, "COMPLETE", 1.0, 1.0, 1.0, nan, math.inf, True, 37, 0.4, "z8m1n5ef"),
        ("independent", 3, 1e-3, 1e-2, 0, "FAIL", nan, nan, nan, nan, nan, None, nan, nan, "r2t6y3gh"),
        ("independent", 4, 1e-4, 1e-2, 0, "PRUNED", nan, nan, nan, nan, nan, None, nan, nan, "u4i8o1jk"),
        ("independent", 5, 1e-4, 1e-4, 0, "FAIL", nan, nan, nan, nan, nan, None, nan, nan, "a5s9d2lm"),
        ("l2", 0, 1e-3, 1e-4, 1, "COMPLETE", 0.301, 0.287, 0.29, 0.0522, 40.05, False, 800, 7.4, "f6g3h7np"),
        ("l2", 1, 1e-2, 1e-4, 1, "RUNNING", nan, nan, nan, nan, nan, None, nan, nan, "j1k5l9qr"),
    ]  # fmt: skip
    out = []
    for decay, trial, lr, wd, seed, state, te, ve, fve, tl, wn, div, steps, wall, rid in rows:
        out.append(
            {
                "study": f"quick-adam-{decay}",
                "experiment": "quick",
                "optimizer": "adam",
                "decay": decay,
                "model": "mlp",
                "data": "mnist1d",
                "trial": trial,
                "lr": lr,
                "weight_decay": wd,
                "seed": seed,
                "state": state,
                "test_error": te,
                "val_error": ve,
                "final_val_error": fve,
                "train_loss": tl,
                "weight_norm": wn,
                "diverged": div,
                "steps": steps,
                "wall_s": wall,
                "wandb_run_id": rid,
            }
        )
    frame = pd.DataFrame(out, columns=list(RESULTS_COLUMNS))
    for col in ("test_error", "val_error", "final_val_error", "train_loss", "weight_norm"):
        frame[col] = frame[col].astype("float64")
    frame["wall_s"] = frame["wall_s"].astype("float64")
    return frame


def test_runs_to_frame_from_handwritten_api_runs(tmp_path, monkeypatch):
    from wandb.apis.public import Run

    monkeypatch.setenv("WANDB_DIR", str(tmp_path))  # Run() makes a cache folder there
    doc = json.loads(HANDWRITTEN_API_RUNS.read_text())
    nodes = doc["runs"]
    # Real wandb.apis.public.Run objects, built from the hand-written GraphQL nodes (no network).
    api_runs = [
        Run(None, doc["entity"], doc["project"], n["name"], attrs=copy.deepcopy(n), lazy=False)
        for n in nodes
    ]
    assert api_runs[0].id == "k3v9x2ab" and api_runs[0].group == STUDY
    expected = _expected_handwritten_frame()
    frame = runs_to_frame(api_runs)
    pd.testing.assert_frame_equal(frame, expected)
    # The raw nodes themselves (a JSON export of run._attrs) give the same table.
    pd.testing.assert_frame_equal(runs_to_frame(copy.deepcopy(nodes)), expected)
    # So do plain export dicts, with the config nested instead of flat.
    exported = []
    for r in api_runs:
        nested: dict = {}
        for key, value in r.config.items():
            head, _, tail = key.partition(".")
            if tail:
                nested.setdefault(head, {})[tail] = value
            else:
                nested[key] = value
        exported.append(
            {
                "id": r.id,
                "name": r.name,
                "group": r.group,
                "job_type": r.job_type,
                "state": r.state,
                "config": nested,
                "summary": dict(r.summary),
            }
        )
    pd.testing.assert_frame_equal(runs_to_frame(exported), expected)
    # Without the config's study/name, the group and job type still give study and variant.
    bare = [{**e, "config": {"lr": e["config"]["lr"]}} for e in exported[:1]]
    row = runs_to_frame(bare).iloc[0]
    assert (row["study"], row["experiment"], row["optimizer"], row["decay"]) == (
        STUDY,
        "quick",
        "adam",
        "independent",
    )


def test_optuna_state_mapping():
    assert optuna_state("finished", {"outcome": "finished"}) == "COMPLETE"
    assert optuna_state("finished", {"outcome": "diverged"}) == "COMPLETE"
    assert optuna_state("finished", {"val_error": 0.2}) == "COMPLETE"  # written by other code
    assert optuna_state("finished", {}) == "FAIL"
    assert optuna_state("finished", {"outcome": "pruned"}) == "PRUNED"
    for state in ("failed", "crashed", "killed"):
        assert optuna_state(state, {"outcome": "finished"}) == "FAIL"
    assert optuna_state("running", {}) == "RUNNING"
    assert set(OUTCOMES) == {"finished", "diverged", "pruned", "failed", "preempted"}


@pytest.mark.parametrize(
    ("configured", "env", "expected"),
    [
        (("", ""), {}, ("lrwd", "")),
        (
            ("", ""),
            {"WANDB_PROJECT": "env-proj", "WANDB_ENTITY": "env-team"},
            ("env-proj", "env-team"),
        ),
        (
            ("cfg-proj", "cfg-team"),
            {"WANDB_PROJECT": "env-proj", "WANDB_ENTITY": "env-team"},
            ("cfg-proj", "cfg-team"),
        ),
    ],
)
def test_project_and_entity_follow_the_environment_unless_configured(
    fresh_wandb, tmp_path, monkeypatch, configured, env, expected
):
    for var in ("WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    project, entity = configured
    cfg = SimpleNamespace(mode="offline", project=project, entity=entity, tags=[], dir="")
    tracker = Tracker(cfg, tmp_path, STUDY)
    run = tracker.start("n", "adam/l2", trial_config(1e-3, 1e-4, 0, 0))
    run.finish({"test_error": 0.5})
    (back,) = read_offline_runs(tmp_path)
    assert (back["project"], back["entity"]) == expected


def test_scheduled_lr_is_lr_t_and_the_base_lr_stays_lr(clean_env, tmp_path):
    tracker = Tracker(tracking_cfg("offline"), tmp_path, STUDY)
    run = tracker.start("n", "adam/independent", trial_config(1e-2, 1e-4, 0, 0))
    for step in range(0, 40, 10):
        run.log(step, {**report(9, step), "lr_t": 1e-2 * (1 - step / 30)})
    run.finish({"test_error": 0.3, "diverged": False})
    (back,) = read_offline_runs(tmp_path)
    assert back["config"]["lr"] == 1e-2
    assert back["history"][-1]["lr_t"] == 0.0
    assert back["summary"]["lr_t"] == 0.0 and "lr" not in back["summary"]


def test_analysis_run_holds_images_and_tables_and_is_not_a_trial(clean_env, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    png = tmp_path / "regret.png"
    fig.savefig(png)
    plt.close(fig)
    metrics = pd.DataFrame({"variant": ["adam/l2", "adam/independent"], "best": [0.3, 0.28]})
    tracker = Tracker(tracking_cfg("offline"), tmp_path / "out", "quick")
    trial = tracker.start("t", "adam/l2", trial_config(1e-3, 1e-4, 0, 0))
    trial.finish({"test_error": 0.3, "val_error": 0.29, "diverged": False})
    run = tracker.log_analysis("analysis", {"regret": png}, {"metrics": metrics}, {"name": "q"})
    assert run.finished and run.outcome == "finished"

    back = read_offline_runs(tmp_path / "out")
    (analysis,) = [r for r in back if r["id"] == run.id]
    assert analysis["job_type"] == "analysis" and analysis["group"] == "quick"
    assert analysis["tags"] == ["analysis"] and analysis["state"] == "finished"
    row = analysis["history"][0]
    files = Path(analysis["dir"]) / "files"
    assert row["figures/regret/_type"] == "image-file"
    assert (files / row["figures/regret/path"]).read_bytes() == png.read_bytes()
    assert row["tables/metrics/_type"] == "table-file"
    table = json.loads((files / row["tables/metrics/path"]).read_text())
    assert table["columns"] == ["variant", "best"]
    assert table["data"] == [["adam/l2", 0.3], ["adam/independent", 0.28]]
    # the results table holds the trial only
    frame = runs_to_frame(back)
    assert frame["wandb_run_id"].tolist() == [trial.id]

    disabled = Tracker(tracking_cfg("disabled"), tmp_path / "off", "quick")
    assert disabled.log_analysis("analysis", {"regret": png}, {}).id is None
    assert not (tmp_path / "off").exists()
