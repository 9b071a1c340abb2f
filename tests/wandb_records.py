"""Read an offline W&B run back from its ``.wandb`` file, to test what a run really holds.

The file is a LevelDB-style log (wandb's own format: a 7-byte ``:W&B`` header, then 32 KiB
blocks of records, each with a 7-byte header of CRC, length and type; a record split across
blocks comes in FIRST / MIDDLE / LAST pieces) whose payloads are ``wandb_internal_pb2.Record``
messages. wandb 0.31 ships no Python reader for it, so the tests carry this small one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7  # crc32 (4) + length (2) + type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    """Every ``Record`` message of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a .wandb file (header {data[:4]!r})")
    position, pending, found = 7, b"", []
    while position + HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < HEADER:  # the block's tail is padding
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        payload = data[position + HEADER : position + HEADER + length]
        position += HEADER + length
        if kind == 0 and length == 0:
            break
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
    return found


def run_contents(run_dir: Path) -> dict[str, Any]:
    """An offline run folder's config, summary and history rows as plain values."""
    (file,) = Path(run_dir).glob("*.wandb")
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    group = job_type = None
    for record in records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            group, job_type = record.run.run_group, record.run.job_type
            items = record.run.config.update
        elif kind == "config":
            items = record.config.update
        else:
            items = []
        for item in items:
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        if kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                row[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
            history.append(row)
    return {
        "group": group,
        "job_type": job_type,
        "config": config,
        "summary": summary,
        "history": history,
    }
