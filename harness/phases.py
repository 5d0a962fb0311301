"""A timing record of where a sweep's wall time goes, off unless ``LRWD_PHASES`` names a file.

With ``LRWD_PHASES=<file>`` the driver and every worker add up the seconds of each phase in
memory and, when they finish (:func:`flush`, also at interpreter exit), append one JSON line per
phase to that file::

    {"phase": "training", "s": 81.23, "cpu": 150.2, "n": 5, "pid": 4242}

(``s``: wall seconds; ``cpu``: this process's CPU seconds, all its threads; ``n``: how many
times the phase ran). On a machine shared with other jobs the wall seconds stretch with the
load and the CPU seconds much less.
Phases are exclusive: a phase opened inside another pauses the outer one, so the seconds of
all lines of one process add up to no more than its wall time (``imports`` inside ``wandb``
counts as imports, not W&B). ``python -m harness.bench overhead`` reads the file and prints
the breakdown. Without the variable :func:`phase` costs one dictionary lookup.

The phases: ``imports`` (interpreter start-up and module imports), ``config`` (composing and
checking the config), ``data`` (generating or loading the data set), ``study`` (creating the
studies and enqueuing the grid), ``claims`` (claiming cells and writing their start records),
``training``, ``results`` (a trial's result in the storage, ``results.csv``), ``report``
(summary and figures), ``wandb`` (W&B runs: start, history, finish, the analysis run).
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

ENV = "LRWD_PHASES"
PHASES = (
    "imports",
    "config",
    "data",
    "study",
    "claims",
    "training",
    "results",
    "report",
    "wandb",
)

_stack: list[list] = []  # [name, wall so far, cpu so far, wall since, cpu since] of open phases
_totals: dict[str, list] = {}  # name -> [wall seconds, cpu seconds, count] not yet written
_registered = False


def path() -> str:
    """The file phases go to, or ``""`` when the record is off."""
    return os.environ.get(ENV, "")


def add(name: str, seconds: float, cpu: float = 0.0) -> None:
    """Count ``seconds`` (wall) and ``cpu`` of ``name`` (written by :func:`flush`), if the
    record is on."""
    global _registered
    if not path() or seconds <= 0:
        return
    total = _totals.setdefault(name, [0.0, 0.0, 0])
    total[0] += float(seconds)
    total[1] += float(cpu)
    total[2] += 1
    if not _registered:
        atexit.register(flush)
        _registered = True


def flush() -> None:
    """Append one line per phase counted since the last flush to the record."""
    target = path()
    if not target or not _totals:
        _totals.clear()
        return
    pid = os.getpid()
    text = "".join(
        json.dumps({"phase": k, "s": round(s, 6), "cpu": round(c, 6), "n": n, "pid": pid}) + "\n"
        for k, (s, c, n) in _totals.items()
    )
    _totals.clear()
    # one O_APPEND write: the lines of concurrent processes never interleave
    fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as ``name``; an enclosing phase is paused meanwhile."""
    if not path():
        yield
        return
    now, cpu = time.perf_counter(), time.process_time()
    if _stack:
        outer = _stack[-1]
        outer[1] += now - outer[3]
        outer[2] += cpu - outer[4]
    entry = [name, 0.0, 0.0, now, cpu]
    _stack.append(entry)
    try:
        yield
    finally:
        now, cpu = time.perf_counter(), time.process_time()
        _stack.pop()
        add(name, entry[1] + now - entry[3], entry[2] + cpu - entry[4])
        if _stack:
            _stack[-1][3], _stack[-1][4] = now, cpu


def since_start() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where that is unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            stat = f.read()
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
    except OSError:
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
    return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)


def started() -> None:
    """Record the interpreter's start-up and the imports so far as ``imports`` (call once, at
    the top of a main function)."""
    if not path():
        return
    seconds = since_start()
    if seconds is not None:
        add("imports", seconds, time.process_time())


def read(file: str | os.PathLike, key: str = "s") -> dict[str, float]:
    """``{phase: seconds}`` summed over every line (every process) of a record: wall seconds,
    or CPU seconds with ``key="cpu"``."""
    totals: dict[str, float] = {}
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return totals
    for line in text.splitlines():
        if line.strip():
            rec = json.loads(line)
            totals[rec["phase"]] = totals.get(rec["phase"], 0.0) + float(rec.get(key, 0.0))
    return totals
