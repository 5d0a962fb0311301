"""Read W&B offline run files (``offline-run-*/run-*.wandb``) back into Python dicts.

wandb >= 0.19 ships no reader. The file is W&B's own header (``":W&B"``, magic 0xBEE1, version
0: 7 bytes) followed by a LevelDB-style log: 32 KiB blocks of records, each with a 7-byte header
(crc32c, little-endian u16 length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4); a block tail
shorter than a header is padding. Each assembled payload is a serialized
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file (header {ident!r} {magic:#x})")
    records, pending = [], b""
    pos = 7
    while pos + HEADER <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:
            pos += left  # zero padding to the end of the block
            continue
        payload = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        elif kind == LAST:
            pending += payload
        else:
            raise ValueError(f"{path}: bad record type {kind} at {pos}")
        rec = pb.Record()
        rec.ParseFromString(pending)
        records.append(rec)
        pending = b""
    return records


def _items(items) -> dict[str, Any]:
    out = {}
    for it in items:
        key = it.key or "/".join(it.nested_key)
        try:
            out[key] = json.loads(it.value_json)
        except ValueError:
            out[key] = it.value_json
    return out


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """One offline run: id, name, group, job_type, tags, config, history rows, summary, exit code."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    out: dict[str, Any] = {
        "dir": str(run_dir),
        "config": {},
        "history": [],
        "summary": {},
        "exit_code": None,
        "tags": [],
    }
    for rec in read_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.update(
                id=r.run_id,
                name=r.display_name,
                group=r.run_group,
                job_type=r.job_type,
                project=r.project,
                tags=list(r.tags),
            )
            out["config"].update(_config(r.config.update))
        elif kind == "config":
            out["config"].update(_config(rec.config.update))
        elif kind == "history":
            out["history"].append(_items(rec.history.item))
        elif kind == "summary":
            out["summary"].update(_items(rec.summary.update))
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def _config(items) -> dict[str, Any]:
    raw = _items(items)
    return {
        k: (v.get("value") if isinstance(v, dict) and "value" in v else v)
        for k, v in raw.items()
        if not k.startswith("_wandb")
    }


def read_offline_runs(wandb_dir: str | Path) -> list[dict[str, Any]]:
    """Every offline run under ``wandb_dir`` (the folder holding ``offline-run-*``)."""
    root = Path(wandb_dir)
    if (root / "wandb").is_dir():
        root = root / "wandb"
    return [read_run(d) for d in sorted(root.glob("offline-run-*"))]
