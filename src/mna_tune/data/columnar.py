"""Parquet for the big interim tables (extracted rows, filter's kept and dropped rows).

At AI Hub scale these hold a million rows; Parquet (zstd) stores them in a fraction of
the JSON Lines size, is written one row group per chunk as the stage streams, and is read
back in record batches, so no stage ever holds the table. Workers build Arrow tables from
column lists and hand them back whole (Arrow pickles as buffers, not as Python objects).
The schemas are fixed, so a chunk whose values happen to be all null keeps its types.
Readers accept JSON Lines too (small hand-written inputs in tests and by users).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..workspace import commit_temp, read_jsonl, temp_beside

_TEXT = pa.string()
EXTRACTED = pa.schema(
    [
        (name, _TEXT)
        for name in (
            "question",
            "answer",
            "category",
            "category_main",
            "subset",
            "kind",
            "file",
            "entry",
            "record",
            "data_id",
        )
    ]
)
SCORED = EXTRACTED.append(pa.field("score", pa.int32())).append(pa.field("score_reason", _TEXT))
DROPPED = SCORED.append(pa.field("drop_reason", _TEXT))


def table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts with at least the schema's keys) as a table of exactly that schema."""
    return pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in schema.names}, schema=schema)


class ParquetOut:
    """Append tables as row groups; the file appears (atomically) only when the stage ends
    without error, and holds a valid empty table if nothing was written."""

    def __init__(self, path: Path | str, schema: pa.Schema):
        self.path, self.schema = Path(path), schema

    def __enter__(self) -> ParquetOut:
        self.tmp = temp_beside(self.path)  # named after this process; a killed run's leftovers go first
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        return self

    def write(self, chunk: pa.Table) -> None:
        if chunk.num_rows:
            self.writer.write_table(chunk)

    def __exit__(self, kind, value, traceback) -> None:
        self.writer.close()
        if kind is None:
            commit_temp(self.tmp, self.path)  # the mode a plain open() gives, not mkstemp's 0600
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)


def read_batches(path: Path | str, rows_per_batch: int) -> Iterator[pa.RecordBatch]:
    # pre_buffer off: with it, pyarrow keeps every column chunk it read until the file is
    # closed (~300 MB over a million rows); without it, memory stays flat
    yield from pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=rows_per_batch)


def read_rows(path: Path | str) -> Iterator[dict]:
    """Every row of a Parquet or JSON Lines file, streamed."""
    path = Path(path)
    if path.suffix != ".parquet":
        yield from read_jsonl(path)
        return
    for batch in read_batches(path, 4096):
        yield from batch.to_pylist()
