"""Read an offline W&B run file into history rows without a network (current wandb reads it only in Go)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte)
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> Iterator[bytes]:
    offset, pending = _HEADER, b""
    while offset + 7 <= len(data):
        left_in_block = _BLOCK - offset % _BLOCK
        if left_in_block < 7:  # block trailer padding
            offset += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[offset : offset + 7])
        if kind == 0 and length == 0:
            offset += left_in_block
            continue
        if offset + 7 + length > len(data):  # a record W&B is still writing
            return
        chunk = data[offset + 7 : offset + 7 + length]
        offset += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk


def _decode(value_json: str) -> Any:
    try:
        return json.loads(value_json)
    except ValueError:
        return value_json


def read_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(record type, record) pairs: "history", "config", "summary", "run", "exit", ..."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B run file")
    for payload in _payloads(data):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        yield kind, getattr(record, kind) if kind else None


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """Every ``run.log`` row, keys as logged (plus W&B's own ``_step``, ``_runtime``, ``_timestamp``)."""
    rows = []
    for kind, record in read_records(path):
        if kind == "history":
            rows.append(_items(record.item))
    return rows


def _items(update: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): _decode(item.value_json) for item in update}


def _metric(record: Any) -> dict[str, Any]:
    """A ``define_metric`` as recorded: its x-axis and which summaries W&B keeps (min, last, ...)."""
    kept = [name for name in ("min", "max", "mean", "best", "last", "first") if getattr(record.summary, name)]
    return {"step_metric": record.step_metric, "summary": kept}


def read_run_info(path: str | Path) -> dict[str, Any]:
    """The run's group, job type, name, config, summary and metric definitions as W&B recorded them."""
    info: dict[str, Any] = {"config": {}, "summary": {}, "metrics": {}}
    for kind, record in read_records(path):
        if kind == "run":
            info.update(group=record.run_group, job_type=record.job_type, name=record.display_name, id=record.run_id)
            info["notes"] = record.notes or info.get("notes", "")
            info["config"].update(_items(record.config.update))
        elif kind == "config":
            info["config"].update(_items(record.update))
        elif kind == "summary":
            info["summary"].update(_items(record.update))
        elif kind == "metric" and record.name:
            info["metrics"][record.name] = _metric(record)
        elif kind == "exit":
            info["exit_code"] = record.exit_code
    return info


def has_exit_record(path: str | Path) -> bool:
    """Whether the run file is complete: W&B writes the exit record last."""
    try:
        return any(kind == "exit" for kind, _ in read_records(path))
    except (OSError, ValueError):  # not there yet, or not yet past its header
        return False


def find_run_file(folder: str | Path) -> Path | None:
    """The ``.wandb`` file under a run record folder (W&B writes it under ``wandb/offline-run-*``)."""
    found = sorted(Path(folder).glob("wandb/*run-*/run-*.wandb"))
    return found[-1] if found else None
