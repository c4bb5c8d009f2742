"""Reading and writing documents between stages, manifests, and done markers.

Between stages documents travel as sharded, gzip-compressed JSON Lines: one object per line with a
``text`` field plus any metadata (``source``, ``lang``, ``domain``, ``id`` ...). Readers also take
plain ``.jsonl``, ``.txt``/``.md``/``.py`` files and folders of them.

A bad line (invalid JSON, no ``text`` string, undecodable bytes) is never dropped silently: readers
yield it as a :class:`BadLine` with its file and line number, and every stage counts it in its
manifest under ``errors``, so that ``docs_in == kept + sum(removed) + errors`` always holds.

Writes are atomic (temporary file + ``os.replace``) so that a killed run never leaves a half
shard that a resumed run would take for a finished one.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")
# web pages: read by the extract stage (openqwen.data.extract), which turns them into documents
PAGE_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz", ".warc", ".warc.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")  # read and written by openqwen.data.parquet (pyarrow)
OUTPUT_FORMATS = {"jsonl": ".jsonl.gz", "parquet": ".parquet"}
MANIFEST = "manifest.json"
DONE_DIR = "_done"
# only the first errors are listed in full; all are counted
MAX_LISTED_ERRORS = 200
# removed documents named per reason in the manifest (all are counted)
MAX_EXAMPLES = 5


def doc_label(doc: dict[str, Any]) -> str:
    """How a manifest names a document: its URL, id or file, else the start of its text."""
    for key in ("url", "id", "source_file"):
        if doc.get(key):
            return str(doc[key])
    text = " ".join(str(doc.get("text", "")).split())
    return text[:80] + ("..." if len(text) > 80 else "")


@dataclass
class BadLine:
    """A line that could not be read as a document: where it is and why."""

    file: str
    line: int
    error: str


def _is_jsonl(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in JSONL_SUFFIXES)


def _is_text(path: Path) -> bool:
    return path.name.lower().endswith(TEXT_SUFFIXES)


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def is_page_file(path: str | Path) -> bool:
    """An HTML file or WARC archive: input of the extract stage, not yet documents."""
    return Path(path).name.lower().endswith(PAGE_SUFFIXES)


def list_input_files(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of readable document files.

    Files that start with ``_`` or ``.`` (markers, manifests) and ``manifest.json`` are skipped.
    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` when nothing readable is found,
    so a typo never turns into an empty corpus.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"input {p} does not exist")
        if p.is_dir():
            for q in sorted(p.rglob("*")):
                rel = q.relative_to(p).parts
                if any(part.startswith(("_", ".")) for part in rel) or q.name == MANIFEST:
                    continue
                if q.is_file() and (_is_jsonl(q) or _is_text(q) or is_page_file(q) or _is_parquet(q)):
                    out.append(q)
        else:
            out.append(p)
    if not out:
        raise ValueError(
            f"no document files found in {[str(p) for p in paths]} "
            f"(expected {', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES + PAGE_SUFFIXES)})"
        )
    return out


def _open_text(path: Path) -> io.TextIOBase:
    # errors="surrogateescape" lets a line with bad UTF-8 be reported instead of crashing the read
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="surrogateescape")
    return open(path, encoding="utf-8", errors="surrogateescape")


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


# a JSON escape of a UTF-16 surrogate (\ud800-\udfff): a pair of them is one valid character, a
# lone one is valid JSON that decodes to a str no UTF-8 writer accepts
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def lone_surrogate(value: Any) -> str | None:
    """The place (``text``, ``meta.title``, ``tags[2]``...) of the first string in a decoded JSON
    value that holds a lone surrogate, or None when every string is valid Unicode."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, v = stack.pop()
        if isinstance(v, str):
            if _has_surrogates(v):
                return where or "value"
        elif isinstance(v, dict):
            for k, x in v.items():
                if _has_surrogates(k):
                    return f"{where}.{k!r}" if where else f"key {k!r}"
                stack.append((f"{where}.{k}" if where else k, x))
        elif isinstance(v, list):
            stack.extend((f"{where}[{i}]", x) for i, x in enumerate(v))
    return None


def read_documents(path: str | Path, text_key: str = "text") -> Iterator[dict[str, Any] | BadLine]:
    """Yield the documents of one file: dicts with ``text`` (JSONL) or one dict per text file.

    JSONL lines that are not objects with a string ``text_key`` come out as :class:`BadLine`.
    A text file becomes one document ``{"text": ..., "source_file": path}``.
    """
    path = Path(path)
    if _is_jsonl(path):
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue  # blank lines are not documents (and not errors)
                if _has_surrogates(line):
                    yield BadLine(str(path), lineno, "invalid UTF-8")
                    continue
                try:
                    doc = json.loads(line)
                except json.JSONDecodeError as e:
                    yield BadLine(str(path), lineno, f"invalid JSON: {e.msg}")
                    continue
                if not isinstance(doc, dict):
                    yield BadLine(str(path), lineno, "not a JSON object")
                    continue
                if _SURROGATE_ESCAPE.search(line):  # rare: only then walk the decoded object
                    where = lone_surrogate(doc)
                    if where is not None:
                        yield BadLine(str(path), lineno, f"invalid Unicode: a lone surrogate escape (\\ud800-\\udfff) "
                                      f"in {where}; write the character itself or a valid surrogate pair")
                        continue
                if not isinstance(doc.get(text_key), str):
                    yield BadLine(str(path), lineno, f"no string field {text_key!r}")
                    continue
                if text_key != "text":
                    doc["text"] = doc.pop(text_key)
                yield doc
    elif _is_text(path):
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield BadLine(str(path), 1, f"invalid UTF-8 at byte {e.start}")
            return
        yield {"text": text, "source_file": str(path)}
    elif _is_parquet(path):
        from .parquet import read_parquet_documents

        for item in read_parquet_documents(path, text_key):
            if isinstance(item, tuple):
                yield BadLine(str(path), item[0], item[1])
            else:
                yield item
    elif is_page_file(path):
        yield BadLine(str(path), 0, "an HTML/WARC file is a web page, not yet a document: run the extract stage "
                      "first (openqwen data extract, the first stage of openqwen data run)")
    else:
        yield BadLine(str(path), 0, "unsupported file type (use .jsonl, .jsonl.gz, a text file, or HTML/WARC "
                      "through the extract stage)")


def read_json_lines(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line of a small JSONL file (prompts, benchmark cases).
    A line that is not a JSON object is a ``ValueError`` naming ``FILE:LINE``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: each line must be a JSON object")
            rows.append((n, row))
    return rows


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


class ShardWriter:
    """Write documents as ``{prefix}-00000.jsonl.gz`` shards, each made visible atomically on close."""

    def __init__(self, out_dir: str | Path, prefix: str = "shard", docs_per_shard: int = 10_000,
                 compresslevel: int = 3):
        if docs_per_shard < 1:
            raise ValueError("docs_per_shard must be >= 1")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.docs_per_shard = docs_per_shard
        self.compresslevel = compresslevel
        self.paths: list[Path] = []
        self._buf: list[str] = []

    def write(self, doc: dict[str, Any]) -> None:
        self._buf.append(json.dumps(doc, ensure_ascii=False))
        if len(self._buf) >= self.docs_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        path = self.out_dir / f"{self.prefix}-{len(self.paths):05d}.jsonl.gz"
        data = gzip.compress(("\n".join(self._buf) + "\n").encode("utf-8"), self.compresslevel, mtime=0)
        atomic_write_bytes(path, data)
        self.paths.append(path)
        self._buf = []

    def close(self) -> list[Path]:
        self._flush()
        return self.paths

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


class JsonlWriter:
    """Append batches of documents to one gzip JSONL file; ``close()`` makes it visible atomically
    (a temporary name until then), so a stage streams its output in bounded memory."""

    def __init__(self, path: str | Path, compresslevel: int = 3):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        self._raw = open(self.tmp, "wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=compresslevel, mtime=0, filename="")
        self.count = 0

    def write(self, docs: list[dict[str, Any]]) -> None:
        if docs:
            self._gz.write(("\n".join(json.dumps(d, ensure_ascii=False) for d in docs) + "\n").encode("utf-8"))
            self.count += len(docs)

    def close(self) -> None:
        self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self.tmp, self.path)


def open_writer(path: str | Path):
    """A streaming writer for ``path``: Parquet for ``.parquet``, else gzip JSONL."""
    if str(path).endswith(PARQUET_SUFFIXES):
        from .parquet import ParquetWriter

        return ParquetWriter(path)
    return JsonlWriter(path)


def write_jsonl_gz(path: str | Path, docs: Iterable[dict[str, Any]]) -> int:
    """Write all ``docs`` to one gzip JSONL file atomically; returns the number written."""
    lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    data = ("\n".join(lines) + "\n").encode("utf-8") if lines else b""
    atomic_write_bytes(path, gzip.compress(data, 3, mtime=0))
    return len(lines)


@dataclass
class StageStats:
    """Counts of one stage (or one shard of it). ``docs_in == kept + sum(removed) + errors``."""

    docs_in: int = 0
    bytes_in: int = 0
    kept: int = 0
    bytes_kept: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    error_lines: list[dict[str, Any]] = field(default_factory=list)
    # documents written in addition to the kept ones (copies made by up-sampling in `mix`)
    added: int = 0
    # reason -> the first few removed documents (doc_label), so every removal can be looked up
    removed_examples: dict[str, list[str]] = field(default_factory=dict)
    # source -> [documents, bytes] read and written (copies from mix included), language -> written
    # documents: what the data card reports per source and language
    sources_in: dict[str, list[int]] = field(default_factory=dict)
    sources_out: dict[str, list[int]] = field(default_factory=dict)
    langs_out: dict[str, int] = field(default_factory=dict)

    def tally_in(self, doc: dict[str, Any], nbytes: int) -> None:
        row = self.sources_in.setdefault(str(doc.get("source", "unknown")), [0, 0])
        row[0] += 1
        row[1] += nbytes

    def tally_out(self, doc: dict[str, Any]) -> None:
        row = self.sources_out.setdefault(str(doc.get("source", "unknown")), [0, 0])
        row[0] += 1
        row[1] += len(doc["text"].encode("utf-8", "surrogatepass"))
        if "lang" in doc:
            self.langs_out[doc["lang"]] = self.langs_out.get(doc["lang"], 0) + 1

    def add_in(self, text: str) -> None:
        self.docs_in += 1
        self.bytes_in += len(text.encode("utf-8", "surrogatepass"))

    def keep(self, text: str) -> None:
        self.kept += 1
        self.bytes_kept += len(text.encode("utf-8", "surrogatepass"))

    def remove(self, reason: str, doc: dict[str, Any] | None = None) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + 1
        if doc is not None:
            examples = self.removed_examples.setdefault(reason, [])
            if len(examples) < MAX_EXAMPLES:
                examples.append(doc_label(doc))

    def error(self, bad: BadLine) -> None:
        # a bad line is an input document that could not be read: it counts in docs_in too
        self.docs_in += 1
        self.errors += 1
        if len(self.error_lines) < MAX_LISTED_ERRORS:
            self.error_lines.append(asdict(bad))

    def merge(self, other: "StageStats") -> None:
        self.docs_in += other.docs_in
        self.bytes_in += other.bytes_in
        self.kept += other.kept
        self.bytes_kept += other.bytes_kept
        self.added += other.added
        for k, v in other.removed.items():
            self.removed[k] = self.removed.get(k, 0) + v
        self.errors += other.errors
        room = MAX_LISTED_ERRORS - len(self.error_lines)
        self.error_lines.extend(other.error_lines[: max(room, 0)])
        for reason, labels in other.removed_examples.items():
            mine = self.removed_examples.setdefault(reason, [])
            mine.extend(labels[: max(MAX_EXAMPLES - len(mine), 0)])
        for name in ("sources_in", "sources_out"):
            table = getattr(self, name)
            for src, (docs, nbytes) in getattr(other, name).items():
                row = table.setdefault(src, [0, 0])
                row[0] += docs
                row[1] += nbytes
        for lang, n in other.langs_out.items():
            self.langs_out[lang] = self.langs_out.get(lang, 0) + n

    @property
    def balanced(self) -> bool:
        return self.docs_in == self.kept + sum(self.removed.values()) + self.errors

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["removed_total"] = sum(self.removed.values())
        d["balanced"] = self.balanced
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StageStats":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


def write_manifest(out_dir: str | Path, stage: str, stats: StageStats, inputs: list[str],
                   outputs: list[str], config: dict[str, Any] | None = None,
                   seconds: float | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out_dir/manifest.json``: the stage's counts, inputs, outputs and config.

    Its presence marks the stage as finished; re-running the stage then does nothing.
    Raises ``RuntimeError`` when the counts do not balance (that is a bug in a stage, not bad input).
    """
    if not stats.balanced:
        raise RuntimeError(f"stage {stage}: counts do not balance: {stats.to_dict()}")
    manifest = {
        "stage": stage,
        **stats.to_dict(),
        "inputs": inputs,
        "outputs": outputs,
        "config": config or {},
        "seconds": None if seconds is None else round(seconds, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        manifest.update(extra)
    atomic_write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def read_manifest(out_dir: str | Path) -> dict[str, Any] | None:
    """The finished stage's manifest, or None when the stage has not finished there."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def iter_texts(paths: str | Path | Iterable[str | Path]) -> Iterator[str]:
    """Just the texts of the readable documents under ``paths`` (bad lines are skipped here:
    callers that must account for them use :func:`read_documents`)."""
    for f in list_input_files(paths):
        for doc in read_documents(f):
            if isinstance(doc, dict):
                yield doc["text"]
