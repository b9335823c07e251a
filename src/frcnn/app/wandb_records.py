"""Read a W&B run file (``run-<id>.wandb``): the records an offline run stages for ``wandb sync``.

The file is a LevelDB-style log (the format of W&B's own ``datastore``): a 7-byte header
(``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC32, length, type: 1 full, 2 first, 3 middle, 4 last) and a piece of one serialised
``wandb_internal_pb2.Record``. A file cut short by a killed process ends in a partial chunk: it is
ignored, the records before it are returned.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

HEADER = b":W&B"
BLOCK = 32768
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> Iterator:
    """Every complete ``Record`` of a ``.wandb`` file, in order."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(HEADER):
        raise ValueError(f"{path}: not a W&B run file (no {HEADER!r} header)")
    position, pending = CHUNK_HEADER, b""
    while position + CHUNK_HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < CHUNK_HEADER:  # block tail too short for a chunk header: zero padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + CHUNK_HEADER])
        if kind == 0 and length == 0:  # padding up to the block end
            position += left
            continue
        chunk = data[position + CHUNK_HEADER:position + CHUNK_HEADER + length]
        if len(chunk) < length:
            return  # cut short: the writer was killed mid-record
        position += CHUNK_HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(pending)
            except DecodeError:
                return  # a torn last record
            pending = b""
            yield record


def history(path: str | Path) -> list[dict]:
    """The history rows of a run file: {key: value} (values decoded from W&B's JSON), with ``_step``."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def last_step(run_dir: str | Path) -> int | None:
    """The largest ``_step`` in an offline run folder's run file; None when there is no readable row."""
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    steps = [row["_step"] for file in files for row in history(file) if "_step" in row]
    return max(steps) if steps else None
