"""Real servers for tests: a PostgreSQL instance and a one-node Slurm cluster, in temp dirs.

Both listen on 127.0.0.1 only, live entirely in a fresh directory under the system temp dir and
are torn down (daemons killed by pid, directory removed) when the context exits. Each also starts
a small watchdog that tears the server down if the test process dies without cleaning up
(SIGKILL, a crashed interpreter), so no daemon outlives its pytest run.

    with postgres_server() as url:      # postgresql+psycopg2://lrwd:<pw>@127.0.0.1:<port>/lrwd
        ...
    with slurm_cluster() as cluster:    # cluster.env has SLURM_CONF for sbatch/squeue/scancel
        job = cluster.sbatch("--array=0-2", "--wrap", "hostname")

Requirements (``.ci/run`` installs them): Debian's ``postgresql`` (initdb/pg_ctl under
/usr/lib/postgresql/<v>/bin) and ``slurm-wlm`` + ``munge``; root for the Slurm cluster and for
running PostgreSQL as the ``postgres`` OS user (as non-root it runs as the current user).
:func:`postgres_missing` / :func:`slurm_missing` return why a server cannot start (or ``""``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTCLUSTER = ROOT / "slurm" / "testcluster.sh"


REQUIRE_ENV = "LRWD_REQUIRE_SERVERS"


def unavailable(what: str, why: str) -> None:
    """Skip the test because ``what`` cannot run here (``why``), or fail it when
    ``LRWD_REQUIRE_SERVERS=1`` (CI, which installs every server and tool the tests use)."""
    import pytest

    message = f"{what} unavailable: {why}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Runs detached from the test process: when the owner pid is gone and the server directory still
# exists, kill the server's processes (by pid) and remove the directory. Exits as soon as the
# directory disappears (normal teardown).
_WATCHDOG = r"""
import os, shutil, signal, sys, time
owner, path, pids = int(sys.argv[1]), sys.argv[2], [int(p) for p in sys.argv[3:]]
def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
while os.path.isdir(path) and alive(owner):
    time.sleep(1)
if os.path.isdir(path):
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(1)
    shutil.rmtree(path, ignore_errors=True)
"""


def _watchdog(path: str, pids: list[int]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), path, *map(str, pids)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# --------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_bindir() -> Path | None:
    """The newest Debian PostgreSQL server bin dir (/usr/lib/postgresql/<v>/bin), if any."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    if not found:
        initdb = shutil.which("initdb")
        return Path(initdb).resolve().parent if initdb else None
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)


def postgres_missing() -> str:
    """Why :func:`postgres_server` cannot run here, or ``""`` if it can."""
    bindir = postgres_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    if not shutil.which("psql") and not (bindir / "psql").exists():
        return "psql not found (apt-get install postgresql-client)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' OS user to run initdb as"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    return ""


@contextlib.contextmanager
def postgres_server(
    user: str = "lrwd", database: str = "lrwd", password: str | None = None
) -> Iterator[str]:
    """Start a throwaway PostgreSQL on 127.0.0.1; yield its SQLAlchemy URL.

    ``initdb`` (C locale, no fsync) into a temp dir owned by the ``postgres`` OS user (initdb
    refuses root), ``pg_ctl start`` on a free port with the unix socket in the temp dir and
    durability off (fsync, synchronous_commit, full_page_writes), then a role with a password
    (scram-sha-256 over TCP) owning a database. Yields
    ``postgresql+psycopg2://<user>:<password>@127.0.0.1:<port>/<database>``. Stops the server
    (``pg_ctl stop -m immediate``, then SIGKILL by postmaster pid) and removes the directory.
    """
    why = postgres_missing()
    if why:
        raise RuntimeError(why)
    bindir = postgres_bindir()
    assert bindir is not None
    password = password or secrets.token_hex(12)
    base = tempfile.mkdtemp(prefix="lrwd-pg-")
    data, sock, logfile = f"{base}/data", f"{base}/sock", f"{base}/postgres.log"
    os.makedirs(sock)
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    psql = str(bindir / "psql") if (bindir / "psql").exists() else "psql"
    pid = 0
    watchdog = None

    def run(cmd: list[str], what: str) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = Path(logfile).read_text()[-2000:] if os.path.exists(logfile) else ""
            raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr[-2000:]}{log}")

    try:
        run(
            [
                *as_postgres,
                str(bindir / "initdb"),
                "-D",
                data,
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        for attempt in range(5):
            port = free_port()
            opts = (
                f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                "-c shared_buffers=32MB"
            )
            cmd = [*as_postgres, str(bindir / "pg_ctl"), "-D", data, "-l", logfile, "-w"]
            proc = subprocess.run(
                [*cmd, "-t", "60", "-o", opts, "start"], capture_output=True, text=True
            )
            if proc.returncode == 0:
                break
            if attempt == 4 or "could not bind" not in Path(logfile).read_text():
                raise RuntimeError(
                    f"pg_ctl start failed: {proc.stderr[-1000:]}{Path(logfile).read_text()[-2000:]}"
                )
        pid = int(Path(data, "postmaster.pid").read_text().split()[0])
        watchdog = _watchdog(base, [pid])
        sql = [
            psql,
            "-h",
            sock,
            "-p",
            str(port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            f"CREATE ROLE {user} LOGIN PASSWORD '{password}'",
            "-c",
            f"CREATE DATABASE {database} OWNER {user}",
        ]
        run(sql, "creating the role and database")
        yield f"postgresql+psycopg2://{user}:{password}@127.0.0.1:{port}/{database}"
    finally:
        if pid:
            subprocess.run(
                [*as_postgres, str(bindir / "pg_ctl"), "-D", data, "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
            _kill_wait(pid)
        shutil.rmtree(base, ignore_errors=True)
        if watchdog is not None:
            watchdog.kill()
            watchdog.wait(timeout=10)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _kill_wait(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL ``pid`` if it is still alive after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# Slurm


TERMINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def slurm_missing() -> str:
    """Why :func:`slurm_cluster` cannot run here, or ``""`` if it can."""
    missing = [
        b
        for b in ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged", "mungekey")
        if not shutil.which(b)
    ]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the one-node Slurm test cluster needs root (slurmd runs the jobs)"
    return ""


@dataclass
class SlurmCluster:
    """A running one-node cluster. ``env`` is ``os.environ`` plus ``SLURM_CONF``."""

    dir: Path
    conf: Path
    env: dict[str, str] = field(repr=False)
    start_s: float = 0.0

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        """Run a Slurm client command against this cluster; return its stdout."""
        proc = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def sbatch(self, *args: str) -> str:
        """``sbatch --parsable ARGS``; returns the job id (the array's id for an array)."""
        return self.run("sbatch", "--parsable", *args).strip().split(";")[0]

    def states(self, job_id: str) -> dict[str, str]:
        """``{job id: state}`` of a job or of every task of an array (scontrol; no sacct)."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id), check=False)
        states = {}
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "ArrayTaskId" in fields and "ArrayJobId" in fields:
                key = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
            else:
                key = fields.get("JobId", "?")
            states[key] = fields.get("JobState", "?")
        return states

    def wait(
        self, job_id: str, timeout: float = 60, until: set[str] | None = None
    ) -> dict[str, str]:
        """Poll until every task of ``job_id`` is in ``until`` (default: a terminal state)."""
        until = until or TERMINAL_STATES
        deadline = time.monotonic() + timeout
        while True:
            states = self.states(job_id)
            if states and all(s in until for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} not in {sorted(until)} after {timeout} s: {states}"
                )
            time.sleep(0.2)

    def logs(self) -> str:
        """The tail of the daemons' logs (for failure messages)."""
        parts = []
        for f in sorted((self.dir / "log").glob("*.log")):
            parts.append(f"--- {f.name}\n" + "\n".join(f.read_text().splitlines()[-30:]))
        return "\n".join(parts)


@contextlib.contextmanager
def slurm_cluster(cpus: int | None = None) -> Iterator[SlurmCluster]:
    """Start ``slurm/testcluster.sh`` in a temp dir; yield the cluster; stop it and clean up.

    ``cpus``: CPUs the node advertises (default: at least 4, so a few light array tasks run at
    once even on a 2-core machine). The cluster's watchdog is tied to this process.
    """
    why = slurm_missing()
    if why:
        raise RuntimeError(why)
    base = Path(tempfile.mkdtemp(prefix="lrwd-slurm-"))
    env = dict(os.environ)
    env.update(
        TESTCLUSTER_OWNER=str(os.getpid()),
        TESTCLUSTER_CPUS=str(cpus or max(os.cpu_count() or 1, 4)),
    )
    env.pop("SLURM_CONF", None)
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(TESTCLUSTER), "start", str(base)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"slurm/testcluster.sh start failed: {proc.stderr[-3000:]}")
        conf = base / "slurm.conf"
        client_env = {
            k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))
        }
        client_env["SLURM_CONF"] = str(conf)
        yield SlurmCluster(base, conf, client_env, start_s=time.monotonic() - t0)
    finally:
        subprocess.run(
            ["bash", str(TESTCLUSTER), "stop", str(base)], capture_output=True, timeout=120
        )
        shutil.rmtree(base, ignore_errors=True)
