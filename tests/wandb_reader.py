"""Read W&B run files (``<dir>/wandb/{offline-,}run-*/run-<id>.wandb``) back into plain dicts.

wandb 0.31 ships no Python reader (``wandb/sdk/internal/datastore.py`` is gone; wandb-core, in
Go, writes the files). The format, checked against files written by wandb 0.31:

- a 7-byte W&B header: ``b":W&B"``, magic ``0xBEE1`` (u16 little-endian), version ``0`` (u8);
- then a LevelDB-style log in 32 KiB blocks counted from the start of the file (the header sits
  in the first block). Each chunk has a 7-byte header: checksum (u32 LE), payload length
  (u16 LE), type (u8: FULL=1, FIRST=2, MIDDLE=3, LAST=4), then the payload. The checksum is
  plain ``zlib.crc32(type_byte + payload)`` (not LevelDB's masked CRC-32C). A block tail too
  short for a chunk header is zero padding;
- each reassembled payload is a serialized ``wandb.proto.wandb_internal_pb2.Record``.

Usage (this module is a test helper, also used by the sweep-level tests)::

    from tests.wandb_reader import read_offline_runs
    for run in read_offline_runs(output_dir):       # <dir> or <dir>/wandb
        run["id"], run["name"], run["group"], run["job_type"], run["tags"], run["state"]
        run["config"]     # {key: value}, W&B-internal keys dropped
        run["history"]    # [{"_step": 0, "train_loss": ..., ...}, ...] in logging order
        run["summary"]    # final summary (history's last values + explicit summary updates)
        run["exit_code"]  # None if the run never finished (killed process)
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
W_AND_B_HEADER = 7  # ":W&B", 0xBEE1, version
CHUNK_HEADER = 7  # crc32 u32, length u16, type u8
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4
_KIND_NAMES = {FULL: "FULL", FIRST: "FIRST", MIDDLE: "MIDDLE", LAST: "LAST"}


class CorruptRunFile(ValueError):
    """A .wandb file that does not parse (bad header, checksum, chunk order or protobuf)."""


def read_records(path: str | Path, chunks: Counter | None = None) -> list[Any]:
    """Every ``Record`` protobuf in a ``.wandb`` file, in order; checksums verified.

    ``chunks``, if given, counts the chunk types seen (``"FULL"``, ``"FIRST"``, ...).
    """
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    data = path.read_bytes()
    if len(data) < W_AND_B_HEADER:
        raise CorruptRunFile(f"{path}: {len(data)} bytes, shorter than the W&B header")
    ident, magic, version = struct.unpack("<4sHB", data[:W_AND_B_HEADER])
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise CorruptRunFile(f"{path}: not a W&B run file (header {ident!r} {magic:#x} v{version})")
    records: list[Any] = []
    pending: bytes | None = None
    pos = W_AND_B_HEADER
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block trailer
            pos += left
            continue
        if pos + CHUNK_HEADER > len(data):
            raise CorruptRunFile(f"{path}: truncated chunk header at byte {pos}")
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        if crc == 0 and length == 0 and kind == 0:  # zero padding (preallocated tail)
            pos += left
            continue
        start = pos + CHUNK_HEADER
        payload = data[start : start + length]
        if len(payload) != length or length > left - CHUNK_HEADER:
            raise CorruptRunFile(f"{path}: chunk at byte {pos} runs past its block or the file")
        if zlib.crc32(bytes([kind]) + payload) != crc:
            raise CorruptRunFile(f"{path}: checksum mismatch in the chunk at byte {pos}")
        pos = start + length
        if chunks is not None:
            chunks[_KIND_NAMES.get(kind, str(kind))] += 1
        if kind == FULL and pending is None:
            whole = payload
        elif kind == FIRST and pending is None:
            pending = payload
            continue
        elif kind == MIDDLE and pending is not None:
            pending += payload
            continue
        elif kind == LAST and pending is not None:
            whole, pending = pending + payload, None
        else:
            raise CorruptRunFile(f"{path}: chunk type {kind} out of order at byte {pos}")
        record = pb.Record()
        try:
            record.ParseFromString(whole)
        except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
            raise CorruptRunFile(f"{path}: record ending at byte {pos} does not parse") from exc
        records.append(record)
    if pending is not None:
        raise CorruptRunFile(f"{path}: the last record is incomplete")
    return records


def _value(text: str) -> Any:
    try:
        return json.loads(text)  # accepts NaN / Infinity, as W&B writes them
    except ValueError:
        return text


def _items(items) -> dict[str, Any]:
    return {(it.key or "/".join(it.nested_key)): _value(it.value_json) for it in items}


def _config(items) -> dict[str, Any]:
    out = {}
    for key, value in _items(items).items():
        if key.startswith("_wandb") or key == "wandb_version":
            continue
        out[key] = value.get("value") if isinstance(value, dict) and "value" in value else value
    return out


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """One run folder -> ``{id, name, group, job_type, project, entity, tags, config, history,
    summary, exit_code, state, start_time, dir}``.

    ``state``: ``finished`` (exit code 0), ``failed`` (non-zero), ``crashed`` (no exit record:
    the process died, or is still running).
    """
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(f"{run_dir}: expected one run-*.wandb file, found {len(files)}")
    out: dict[str, Any] = {
        "dir": str(run_dir),
        "id": None,
        "name": None,
        "group": "",
        "job_type": "",
        "project": "",
        "entity": "",
        "tags": [],
        "config": {},
        "history": [],
        "summary": {},
        "exit_code": None,
        "start_time": None,
    }
    for rec in read_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":  # the first one starts the run; later ones update it (e.g. tags)
            r = rec.run
            out.update(
                id=r.run_id,
                name=r.display_name,
                group=r.run_group,
                job_type=r.job_type,
                project=r.project,
                entity=r.entity,
                tags=list(r.tags),
            )
            if out["start_time"] is None and r.HasField("start_time"):
                out["start_time"] = r.start_time.ToDatetime().timestamp()
            out["config"].update(_config(r.config.update))
            out["summary"].update(_items(r.summary.update))
        elif kind == "config":
            out["config"].update(_config(rec.config.update))
            for it in rec.config.remove:
                out["config"].pop(it.key or "/".join(it.nested_key), None)
        elif kind == "history":
            out["history"].append(_items(rec.history.item))
        elif kind == "summary":
            out["summary"].update(_items(rec.summary.update))
            for it in rec.summary.remove:
                out["summary"].pop(it.key or "/".join(it.nested_key), None)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    if out["exit_code"] is None:
        out["state"] = "crashed"
    else:
        out["state"] = "finished" if out["exit_code"] == 0 else "failed"
    return out


def read_offline_runs(
    wandb_dir: str | Path,
    wait_s: float = 5.0,
    patterns: tuple[str, ...] = ("offline-run-*", "run-*"),
) -> list[dict[str, Any]]:
    """Every run under ``wandb_dir`` (the folder holding ``offline-run-*`` / ``run-*``, or its
    parent, the tracker's dir), in start order. See :func:`read_run` for the dict.
    ``patterns``: the run folders to read (online runs keep a ``run-*`` folder too).

    ``run.finish()`` returns before wandb-core has written the run's last records (they are
    flushed asynchronously; at the latest when the process exits). Reading in the process that
    wrote the runs, re-read for up to ``wait_s`` seconds until every run has its exit record; a
    run still without one after that is returned as ``crashed``.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            runs = _read_all(wandb_dir, patterns)
        except CorruptRunFile:
            if time.monotonic() >= deadline:  # a half-written chunk at the end of a file
                raise
            runs = None
        if runs is not None and (
            all(r["exit_code"] is not None for r in runs) or time.monotonic() >= deadline
        ):
            return runs
        time.sleep(0.05)


def _read_all(wandb_dir: str | Path, patterns: tuple[str, ...]) -> list[dict[str, Any]]:
    root = Path(wandb_dir)
    if (root / "wandb").is_dir():
        root = root / "wandb"
    dirs = [
        d for pattern in patterns for d in root.glob(pattern) if d.is_dir() and not d.is_symlink()
    ]
    runs = [read_run(d) for d in sorted(dirs)]
    runs.sort(key=lambda r: (r["start_time"] or 0.0, r["dir"]))
    return runs
