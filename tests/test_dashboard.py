"""optuna-dashboard on a real sweep: the command the sweep prints starts a dashboard whose HTTP
API lists the study, with its objective named."""

from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from tests.servers import unavailable
from tests.test_sweep import TINY, load, run_sweep

SMALL = [*TINY, "sweep.lr.num=2", "sweep.weight_decay.num=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, proc: subprocess.Popen, wait_s: float = 60.0) -> dict:
    """GET a JSON answer, waiting for the server to come up (or fail)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return json.loads(answer.read())
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None:
                raise AssertionError(f"optuna-dashboard exited {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_summary_says_how_to_get_the_dashboard_when_it_is_missing(tmp_path, monkeypatch):
    from harness.config import compose_config
    from harness.sweep.report import next_commands

    cfg = compose_config([*TINY, "storage=sqlite"])
    cfg.output_dir = str(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no optuna-dashboard command here
    line = next_commands(cfg)["dashboard"]
    assert line.startswith(f"optuna-dashboard sqlite:///{tmp_path.resolve()}/study.db"), line
    assert "not installed: pip install optuna-dashboard, or the dashboard extra" in line, line
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "optuna-dashboard").write_text("#!/bin/sh\n")
    (bindir / "optuna-dashboard").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    assert (
        next_commands(cfg)["dashboard"]
        == f"optuna-dashboard sqlite:///{tmp_path.resolve()}/study.db"
    )


@pytest.mark.slow
def test_printed_dashboard_command_serves_the_study(tmp_path):
    if importlib.util.find_spec("optuna_dashboard") is None:
        unavailable("optuna-dashboard", "not installed (pip install -e '.[dashboard]')")
    if shutil.which("optuna-dashboard") is None:
        unavailable("optuna-dashboard", "the optuna-dashboard command is not on PATH")
    out = tmp_path / "dash"
    proc = run_sweep(out, *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [
        ln.split(None, 1)[1]
        for ln in proc.stdout.splitlines()
        if ln.strip().startswith("dashboard ")
    ]
    assert lines == [f"optuna-dashboard sqlite:///{out.resolve()}/study.db"], proc.stdout[-2000:]
    study = load(out, "sqlite", SMALL)
    assert study.metric_names == ["val_error"]

    port = _free_port()
    command = [*shlex.split(lines[0]), "--host", "127.0.0.1", "--port", str(port), "--quiet"]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        listed = _get(f"http://127.0.0.1:{port}/api/studies", server)
        (summary,) = listed["study_summaries"]
        assert summary["study_name"] == study.study_name == "quick-adam-independent"
        assert summary["directions"] == ["minimize"]
        assert summary["user_attrs"]  # the study's grid, experiment, ... are shown
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", server)
        assert detail["objective_names"] == ["val_error"]
        assert len(detail["trials"]) == 2
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
    finally:
        server.terminate()
        server.wait(10)
