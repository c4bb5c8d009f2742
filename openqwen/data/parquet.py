"""Parquet in and out (pyarrow), streamed: row groups are read in batches, and written one batch at a
time, so a file of any size passes through a stage in bounded memory.

Reading: a ``text`` column (string) is required; every other column becomes a document field, and
a string column named ``metadata`` holding JSON objects (what this module writes, and a common
layout of web corpora) is unpacked into fields. A row whose text is null or not a string is a bad
line (its row number, 1-based, stands for the line).

Writing: columns ``text``, ``id`` (when documents have one) and ``metadata`` (the other fields as one
JSON object per row, since documents of one corpus rarely share one schema). Files are written
under a temporary name and renamed when complete, like the JSONL shards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

PARQUET_SUFFIXES = (".parquet", ".pq")
READ_BATCH_ROWS = 1024


def is_parquet(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(PARQUET_SUFFIXES)


def read_parquet_documents(path: str | Path, text_key: str = "text") -> Iterator[dict[str, Any] | tuple[int, str]]:
    """Documents of a Parquet file, batch by batch; ``(row, error)`` for a row without string text
    (and ``(0, error)`` for a file that is not Parquet or has no text column)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        yield 0, f"not a readable Parquet file: {e}"
        return
    names = f.schema_arrow.names
    if text_key not in names:
        yield 0, f"no {text_key!r} column (columns: {', '.join(names)})"
        return
    row = 0
    for batch in f.iter_batches(batch_size=READ_BATCH_ROWS, use_threads=False):
        for record in batch.to_pylist():
            row += 1
            text = record.pop(text_key)
            if not isinstance(text, str):
                yield row, f"{text_key!r} is {'null' if text is None else type(text).__name__}, not a string"
                continue
            meta = record.pop("metadata", None)
            doc: dict[str, Any] = {"text": text}
            if isinstance(meta, str):
                try:
                    unpacked = json.loads(meta)
                except json.JSONDecodeError:
                    unpacked = None
                if isinstance(unpacked, dict):
                    doc.update(unpacked)
                else:
                    doc["metadata"] = meta
            elif meta is not None:
                doc["metadata"] = meta
            doc.update({k: v for k, v in record.items() if v is not None})
            yield doc


class ParquetWriter:
    """Append batches of documents to one Parquet file; ``close()`` makes it visible atomically."""

    def __init__(self, path: str | Path, compression: str = "zstd"):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self.compression = compression
        self._writer = None
        self.count = 0

    def write(self, docs: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not docs:
            return
        cols = {"text": [d["text"] for d in docs],
                "id": [None if d.get("id") is None else str(d["id"]) for d in docs],
                "metadata": [json.dumps({k: v for k, v in d.items() if k not in ("text", "id")}, ensure_ascii=False)
                             for d in docs]}
        schema = pa.schema([("text", pa.string()), ("id", pa.string()), ("metadata", pa.string())])
        table = pa.table(cols, schema=schema)
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self.tmp, schema, compression=self.compression)
        self._writer.write_table(table)
        self.count += len(docs)

    def close(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:  # no documents: still a valid, empty file
            schema = pa.schema([("text", pa.string()), ("id", pa.string()), ("metadata", pa.string())])
            self._writer = pq.ParquetWriter(self.tmp, schema, compression=self.compression)
        self._writer.close()
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
