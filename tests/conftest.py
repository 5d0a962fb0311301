"""Shared fixtures: real servers (PostgreSQL, a one-node Slurm cluster), started once a session.

``postgres_url``  SQLAlchemy URL of a throwaway PostgreSQL on 127.0.0.1 (password auth).
``slurm_cluster`` a :class:`tests.servers.SlurmCluster`; ``SLURM_CONF`` points at it in
                  ``os.environ`` for the session, so sbatch/squeue/scancel and submitit use it.

A test that uses one of them gets the ``postgres`` / ``slurm`` marker automatically (so
``pytest -m "not slurm"`` deselects it), and ``slow`` too: starting a server takes seconds, so
the fast tier (``pytest -m "not slow"``) leaves these tests to the full suite. When the
binaries are missing the test is skipped with the reason; with ``LRWD_REQUIRE_SERVERS=1`` (for
CI, which installs them) it fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import servers

_MARKED_FIXTURES = {"postgres_url": "postgres", "slurm_cluster": "slurm"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, marker in _MARKED_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(getattr(pytest.mark, marker))
                item.add_marker(pytest.mark.slow)


def _unavailable(what: str, why: str) -> None:
    servers.unavailable(what, why)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://lrwd:<pw>@127.0.0.1:<port>/lrwd`` of a fresh server."""
    why = servers.postgres_missing()
    if why:
        _unavailable("PostgreSQL", why)
    with servers.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[servers.SlurmCluster]:
    """A running one-node Slurm cluster (slurm/testcluster.sh); SLURM_CONF set for the session."""
    why = servers.slurm_missing()
    if why:
        _unavailable("Slurm", why)
    with servers.slurm_cluster() as cluster:
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            yield cluster
        finally:
            if old is None:
                os.environ.pop("SLURM_CONF", None)
            else:
                os.environ["SLURM_CONF"] = old
