"""A real PostgreSQL server for tests: Debian's initdb / pg_ctl in a temp dir, loopback only.

Runs as the ``postgres`` OS user when started by root (initdb refuses root). The superuser
``lrwd`` has a password (md5 auth on 127.0.0.1), so tests can check that it never leaks.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120, **kw)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh server; stop and delete it afterwards."""
    bindir = pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    tmp = Path(tempfile.mkdtemp(prefix="lrwd-pg-"))
    password = "pw-" + secrets.token_hex(8)
    port = _free_port()
    try:
        os.chmod(tmp, 0o755)
        (tmp / "pw").write_text(password + "\n")
        if os.geteuid() == 0:
            shutil.chown(tmp, "postgres")
            shutil.chown(tmp / "pw", "postgres")
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(tmp / "data"),
                "-U",
                "lrwd",
                "--pwfile",
                str(tmp / "pw"),
                "-A",
                "md5",
            ]
        )
        (tmp / "pw").unlink()
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(tmp / "data"),
                "-w",
                "-t",
                "60",
                "-l",
                str(tmp / "log"),
                "-o",
                f"-k {tmp} -p {port} -c listen_addresses=127.0.0.1 -c max_connections=100",
                "start",
            ]
        )
        yield f"postgresql+psycopg2://lrwd:{password}@127.0.0.1:{port}/postgres"
    finally:
        if (tmp / "data" / "postmaster.pid").exists():
            try:
                _as_postgres(
                    [
                        str(bindir / "pg_ctl"),
                        "-D",
                        str(tmp / "data"),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]
                )
            except subprocess.CalledProcessError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url
