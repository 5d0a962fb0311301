"""Several processes opening one fresh SQLite study database at once all succeed.

Optuna's RDBStorage creates its tables on first open; two processes doing that together get
``UNIQUE constraint failed: alembic_version`` or ``table ... already exists``. A sweep starting
while ``optuna-dashboard`` or ``sweep.action=status`` looks at the same file hit exactly that.
"""

from __future__ import annotations

import multiprocessing as mp
import time

import optuna
import pytest

from harness.config import compose_config
from harness.storage import open_storage


def _open(cfg_overrides: list[str], out: str, start_at: float, queue) -> None:
    cfg = compose_config(cfg_overrides)
    while time.time() < start_at:
        pass
    try:
        open_storage(cfg, out)
        queue.put("ok")
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        queue.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_concurrent_first_open_of_sqlite(tmp_path):
    ctx = mp.get_context("fork")
    for attempt in range(3):
        out = tmp_path / f"run{attempt}"
        queue = ctx.Queue()
        start_at = time.time() + 1.5
        procs = [
            ctx.Process(target=_open, args=(["storage=sqlite"], str(out), start_at, queue))
            for _ in range(4)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        results = [queue.get(timeout=5) for _ in procs]
        assert results == ["ok"] * 4, results
        # the schema is whole: a study can be created and read back
        storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
        optuna.create_study(storage=storage, study_name="s")
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["s"]
