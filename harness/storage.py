"""Optuna storages, one place per kind: where it lives, how to open it, who can share it.

| kind | where | shared by |
| --- | --- | --- |
| ``sqlite`` (default) | ``<output dir>/study.db`` or ``storage.path`` (WAL, ``synchronous=NORMAL``) | one worker process |
| ``journal`` | ``<output dir>/study.journal`` or ``storage.path``, a file (lock file beside it) | processes and hosts on one filesystem |
| ``url`` | ``storage.url``: any SQLAlchemy URL, e.g. ``postgresql://user:pw@host/db`` | processes and hosts that reach the server |
| ``memory`` | this process | nothing: one in-process worker |

Each kind is a backend class here (:class:`SQLite`, :class:`Journal`, :class:`URL`,
:class:`Memory`) named by its :class:`harness.registry.StorageSpec` entry, which opens it,
describes it, says whether it exists and opens a source read-only for the analysis
(:func:`open_read_only`). Errors opening a storage are one :class:`~harness.errors.ConfigError`
line with the password masked. Two processes creating a fresh database's tables at once is
retried, not an error.

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
    """Whether the configured storage already exists (opening it would create nothing)."""
    return registry.storage(cfg.storage.kind).exists(cfg, output_dir)


def describe(cfg: DictConfig) -> str:
    """The storage as ``optuna-dashboard`` takes it (file path or URL), password masked."""
    return registry.storage(cfg.storage.kind).describe(cfg)


def storage_url(cfg: DictConfig, output_dir: str | Path) -> str:
    """The storage's URL or file path as a string (for messages, after masking)."""
    return registry.storage(cfg.storage.kind).url(cfg, output_dir)


def open_storage(cfg: DictConfig, output_dir: str | Path, *, create: bool = True):
    """Open (and with ``create`` make) the configured storage. Errors are one ``ConfigError`` line."""
    return registry.storage(cfg.storage.kind).open(cfg, output_dir, create=create)


def open_read_only(source: str):
    """The storage ``source`` names (an SQLAlchemy URL, an SQLite or journal file path), opened
    for reading by the first kind of :data:`harness.registry.STORAGES` that reads it: creates
    nothing. Errors are one :class:`ConfigError` line, password masked."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for spec in registry.STORAGES.values():
        if spec.reads(source):
            return spec.open_read_only(source)
    raise ConfigError(
        f"{mask_secrets(source)}: not an Optuna storage URL, SQLite database or journal file"
    )


# --------------------------------------------------------------------------------------------
# Backends: one class per kind, named by its harness.registry.StorageSpec entry


class Backend:
    """What a kind of storage does. A new kind subclasses it (``url``, ``open``; ``exists``,
    ``reads`` and ``open_read_only`` where it can) and names the class in its entry."""

    def url(self, cfg: DictConfig, output_dir: str | Path) -> str:
        raise NotImplementedError

    def open(self, cfg: DictConfig, output_dir: str | Path, *, create: bool = True):
        raise NotImplementedError

    def exists(self, cfg: DictConfig, output_dir: str | Path) -> bool:
        """Opening it would create nothing (default: never)."""
        return False

    def describe(self, cfg: DictConfig) -> str:
        """The URL or path, password masked; a URL naming an unset ``env:NAME`` as given."""
        out = cfg.get("output_dir") or "."
        try:
            return mask_secrets(self.url(real_url(cfg), out))
        except ConfigError:  # env:NAME not set here: say so by name
            return str(cfg.storage.url)

    def reads(self, source: str) -> bool:
        """``source`` is a storage of this kind (default: none is)."""
        return False

    def open_read_only(self, source: str):
        raise ConfigError(f"{mask_secrets(source)}: cannot be opened read-only")


class _File(Backend):
    """A storage in one file: ``storage.path``, else ``<output dir>/<filename>``."""

    filename = ""

    def path(self, cfg: DictConfig, output_dir: str | Path) -> Path:
        return Path(cfg.storage.path or Path(output_dir) / self.filename).expanduser().resolve()

    def exists(self, cfg: DictConfig, output_dir: str | Path) -> bool:
        return self.path(cfg, output_dir).is_file()


def _rdb_read_only(url: str):
    """An RDB storage opened without creating its tables (the analysis's reader)."""
    url = with_driver(url)  # postgresql://: the PostgreSQL driver installed here
    try:
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except Exception as exc:  # noqa: BLE001 - any driver error becomes one line
        raise ConfigError(
            f"{mask_secrets(url)}: cannot open the Optuna storage ({type(exc).__name__}); "
            "check the URL, the server and the driver"
        ) from None


SQLITE_MAGIC = b"SQLite format 3\x00"


def _head(path: Path, n: int = 16) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


class SQLite(_File):
    """``storage=sqlite``: ``<output dir>/study.db`` (WAL, ``synchronous=NORMAL``)."""

    filename = "study.db"

    def url(self, cfg: DictConfig, output_dir: str | Path) -> str:
        return f"sqlite:///{self.path(cfg, output_dir)}"

    def open(self, cfg: DictConfig, output_dir: str | Path, *, create: bool = True):
        self.path(cfg, output_dir).parent.mkdir(parents=True, exist_ok=True)
        return _rdb(self.url(cfg, output_dir), cfg)

    def reads(self, source: str) -> bool:
        if source.startswith("sqlite:"):
            return True
        path = Path(source)
        return "://" not in source and path.is_file() and _head(path) == SQLITE_MAGIC

    def open_read_only(self, source: str):
        if "://" not in source:
            source = f"sqlite:///{Path(source).resolve()}"
        path = source.removeprefix("sqlite:///")
        if source.startswith("sqlite:///") and path and path != ":memory:":
            if not Path(path).is_file():
                raise ConfigError(f"{source}: no such SQLite file; check the path after sqlite:///")
        return _rdb_read_only(source)


class Journal(_File):
    """``storage=journal``: an Optuna journal file, ``<output dir>/study.journal`` (a lock file
    beside it), shared by processes and hosts on one filesystem."""

    filename = "study.journal"

    def url(self, cfg: DictConfig, output_dir: str | Path) -> str:
        return str(self.path(cfg, output_dir))

    def open(self, cfg: DictConfig, output_dir: str | Path, *, create: bool = True):
        path = self.path(cfg, output_dir)
        if not path.parent.exists():
            if not create:
                raise ConfigError(f"storage.path: {path.parent} does not exist")
            path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
        return optuna.storages.JournalStorage(backend)

    def reads(self, source: str) -> bool:
        return "://" not in source  # any other file path: checked when opened

    def open_read_only(self, source: str):
        import json

        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"{source}: no such journal file")
        with path.open("rb") as fh:
            first = fh.readline().strip()
        try:
            is_journal = not first or "op_code" in json.loads(first)
        except (ValueError, TypeError):
            is_journal = False
        if not is_journal:
            raise ConfigError(
                f"{source}: not a results.csv, an SQLite database or an Optuna journal file"
            )
        from optuna.storages.journal import JournalFileBackend

        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"{source}: not an Optuna journal file ({type(exc).__name__})"
            ) from None


class URL(Backend):
    """``storage=url``: any SQLAlchemy URL (``storage.url``); a server is taken to exist."""

    def url(self, cfg: DictConfig, output_dir: str | Path) -> str:
        return with_driver(cfg.storage.url, strict=False)

    def open(self, cfg: DictConfig, output_dir: str | Path, *, create: bool = True):
        return _rdb(self.url(cfg, output_dir), cfg)

    def exists(self, cfg: DictConfig, output_dir: str | Path) -> bool:
        return True

    def reads(self, source: str) -> bool:
        return "://" in source

    def open_read_only(self, source: str):
        return _rdb_read_only(source)


_MEMORY: dict[str, optuna.storages.BaseStorage] = {}


class Memory(Backend):
    """``storage=memory``: this process's, one per output folder; nothing is saved."""

    def url(self, cfg: DictConfig, output_dir: str | Path) -> str:
        return "memory"

    def open(self, cfg: DictConfig, output_dir: str | Path, *, create: bool = True):
        return _MEMORY.setdefault(str(output_dir), optuna.storages.InMemoryStorage())


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
