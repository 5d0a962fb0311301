"""Optuna storages, one place per kind: where it lives, how to open it, who can share it.

| kind | where | shared by |
| --- | --- | --- |
| ``sqlite`` (default) | ``<output dir>/study.db`` or ``storage.path`` (WAL, ``synchronous=NORMAL``) | one worker process |
| ``journal`` | ``<output dir>/study.journal`` or ``storage.path``, a file (lock file beside it) | processes and hosts on one filesystem |
| ``url`` | ``storage.url``: any SQLAlchemy URL, e.g. ``postgresql://user:pw@host/db`` | processes and hosts that reach the server |
| ``memory`` | this process | nothing: one in-process worker |

Errors opening a storage are one :class:`~harness.config.ConfigError` line with the password
masked. Two processes creating a fresh database's tables at once is retried, not an error.

A URL without a driver (``postgresql://``) means SQLAlchemy's default driver for the database,
which depends on the SQLAlchemy version (psycopg2 up to 2.0, psycopg 3 from 2.1). The storage
opens it with whichever PostgreSQL driver is installed (:func:`with_driver`; the ``postgres``
extra installs psycopg2), and a URL whose driver is not installed fails in one line naming the
package to install.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig

from harness import registry
from harness.errors import ConfigError
from harness.secrets import mask_secrets, real_url


def shared_by_hosts(kind: str) -> bool:
    """Workers on other hosts (a Slurm array) may use this kind of storage."""
    return registry.storage(kind).cluster


def exists(cfg: DictConfig, output_dir: str | Path) -> bool:
    """Whether the configured storage already exists (opening it would create nothing): its
    file for ``sqlite`` / ``journal``; a server (``url``) is taken to exist; ``memory`` never."""
    kind = cfg.storage.kind
    if kind in ("sqlite", "journal"):
        url = storage_url(cfg, output_dir)
        return Path(url.removeprefix("sqlite:///")).is_file()
    return kind == "url"


def describe(cfg: DictConfig) -> str:
    """The storage as ``optuna-dashboard`` takes it (file path or URL), password masked."""
    out = cfg.get("output_dir") or "."
    try:
        return mask_secrets(storage_url(real_url(cfg), out))
    except ConfigError:  # env:NAME not set here: say so by name
        return str(cfg.storage.url)


def storage_url(cfg: DictConfig, output_dir: str | Path) -> str:
    """The storage's URL or file path as a string (for messages, after masking)."""
    kind = cfg.storage.kind
    if kind == "sqlite":
        path = Path(cfg.storage.path or Path(output_dir) / "study.db").expanduser().resolve()
        return f"sqlite:///{path}"
    if kind == "journal":
        return str(
            Path(cfg.storage.path or Path(output_dir) / "study.journal").expanduser().resolve()
        )
    if kind == "url":
        return with_driver(cfg.storage.url, strict=False)
    return "memory"


# The package to install for each driver module SQLAlchemy imports (SQLAlchemy's driver names).
DRIVER_PACKAGES = {
    "psycopg2": "'lrwd[postgres]' (psycopg2-binary)",
    "psycopg": "'psycopg[binary]'",
    "pg8000": "pg8000",
    "mysqldb": "mysqlclient",
    "pymysql": "PyMySQL",
}
# The drivers a bare postgresql:// URL may use, in order, when SQLAlchemy's default is missing.
POSTGRES_DRIVERS = ("psycopg2", "psycopg", "pg8000")


def _dialect(url: str) -> Any:
    from sqlalchemy.engine import make_url

    return make_url(url).get_dialect()


def _installed(dialect: Any) -> bool:
    try:
        dialect.import_dbapi()
    except ImportError:
        return False
    return True


def with_driver(url: str, *, strict: bool = True) -> str:
    """``url`` as the storage opens it: a bare ``postgresql://`` names an installed driver.

    SQLAlchemy's default PostgreSQL driver is kept when it is installed; otherwise the first
    installed one of :data:`POSTGRES_DRIVERS` is written into the URL
    (``postgresql://u@h/db`` -> ``postgresql+psycopg2://u@h/db``). A URL whose driver is not
    installed raises :class:`ConfigError` naming the package (with ``strict``; else it is
    returned unchanged). A URL SQLAlchemy cannot parse is returned unchanged: opening it says why.
    """
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = _dialect(url)
    except (ArgumentError, NoSuchModuleError, ValueError):
        return url
    if _installed(dialect):
        return url
    scheme = url.split("://", 1)[0]
    if scheme == "postgresql":
        for driver in POSTGRES_DRIVERS:
            candidate = f"postgresql+{driver}://" + url.split("://", 1)[1]
            if _installed(_dialect(candidate)):
                return candidate
        if strict:
            raise ConfigError(
                f"{mask_secrets(url)} needs a PostgreSQL driver and none is installed; "
                f"pip install {DRIVER_PACKAGES['psycopg2']}"
            )
        return url
    if strict:
        driver = str(dialect.driver)
        package = DRIVER_PACKAGES.get(driver, driver)
        raise ConfigError(
            f"{mask_secrets(url)} needs the {driver} driver, which is not installed; "
            f"pip install {package}"
        )
    return url


_MEMORY: dict[str, optuna.storages.BaseStorage] = {}


def open_storage(cfg: DictConfig, output_dir: str | Path, *, create: bool = True):
    """Open (and with ``create`` make) the configured storage. Errors are one ``ConfigError`` line."""
    kind = cfg.storage.kind
    url = storage_url(cfg, output_dir)
    if kind == "memory":
        return _MEMORY.setdefault(str(output_dir), optuna.storages.InMemoryStorage())
    if kind == "journal":
        path = Path(url)
        if not path.parent.exists():
            if not create:
                raise ConfigError(f"storage.path: {path.parent} does not exist")
            path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return optuna.storages.JournalStorage(backend)
    if kind == "sqlite":
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return _rdb(url, cfg)
    return _rdb(url, cfg)


def _rdb(url: str, cfg: DictConfig) -> optuna.storages.RDBStorage:
    try:
        url = with_driver(url)
    except ConfigError as exc:
        raise ConfigError(f"storage.url: {exc}") from None
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:  # a server: each process keeps at most POOL_SIZE connections to it
        engine_kwargs.update(pool_size=POOL_SIZE, max_overflow=0, pool_pre_ping=True)
        if url.startswith("postgresql") and _dialect(url).driver in ("psycopg2", "psycopg"):
            engine_kwargs["connect_args"] = {"connect_timeout": 10}  # libpq's
    try:
        storage = _rdb_retrying(url, engine_kwargs)
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one config line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"storage.url: cannot open {mask_secrets(url)} ({mask_secrets(reason)[:200]}); "
            "check the host, port, credentials and that the database exists"
        ) from None
    if url.startswith("sqlite"):
        _sqlite_wal(storage)
    return storage


# Connections one process keeps to a database server: the worker loop's and its heartbeat
# thread's (a third user, a signal's hand-back, waits for one of them). The driver, which
# watches the workers' progress, keeps as many.
POOL_SIZE = 2


def check_connections(storage: Any, workers: int, field: str = "sweep.workers") -> None:
    """Raise :class:`ConfigError` (one line) when a PostgreSQL server cannot take ``workers``
    more processes of :data:`POOL_SIZE` connections each besides this one's.

    Free is ``max_connections`` less the reserved connections (``superuser_reserved_connections``
    and, from PostgreSQL 16, ``reserved_connections``) and the client connections open now other
    than this process's. Other storages are not checked.
    """
    backend = getattr(storage, "_backend", storage)
    engine = getattr(backend, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        return
    from sqlalchemy import text

    sql = text(
        "SELECT current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int, "
        "coalesce(current_setting('reserved_connections', true), '0')::int, "
        "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
    )
    with engine.connect() as conn:
        limit, reserved_su, reserved, in_use = conn.execute(sql).one()
        ours = engine.pool.checkedin() + engine.pool.checkedout()
    others = max(int(in_use) - ours, 0)
    free = int(limit) - int(reserved_su) - int(reserved) - others
    need = POOL_SIZE * (int(workers) + 1)
    if need <= free:
        return
    fit = max(free // POOL_SIZE - 1, 0)
    fix = f"pass {field}={fit} or fewer, or " if fit else "stop other clients or "
    raise ConfigError(
        f"{field}: {workers} workers need up to {need} PostgreSQL connections ({POOL_SIZE} per "
        f"worker and {POOL_SIZE} for the driver), but {engine.url.render_as_string(hide_password=True)} "
        f"has {free} free (max_connections={limit}, {int(reserved_su) + int(reserved)} reserved, "
        f"{others} in use); {fix}raise max_connections on the server"
    )


def _schema_race(exc: BaseException) -> bool:
    """Another process (a worker, optuna-dashboard, a status query) created the schema first."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    text = str(exc).lower()
    return isinstance(exc, IntegrityError) or (
        isinstance(exc, (OperationalError, ProgrammingError)) and "already exists" in text
    )


def _rdb_retrying(url: str, engine_kwargs: dict[str, Any]) -> optuna.storages.RDBStorage:
    """``RDBStorage(url)``, retried when two processes create a fresh database's tables at once
    (SQLite raises ``UNIQUE constraint failed: alembic_version``; PostgreSQL ``already exists``)."""
    for attempt in range(8):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised unless it is the race
            if attempt == 7 or not _schema_race(exc):
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    """WAL journal + NORMAL sync: one fsync per checkpoint instead of per commit."""
    from sqlalchemy import event

    @event.listens_for(storage.engine, "connect")
    def _pragma(dbapi_conn, _record):  # pragma: no cover - exercised through sqlite
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    storage.engine.dispose()
