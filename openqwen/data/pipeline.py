"""The stages as resumable jobs over shards, and the whole pipeline in one call.

A stage reads a folder (or files) of documents and writes ``shard-NNNNN.jsonl.gz`` files plus
``manifest.json`` into its own folder. Per-shard work is one task for an executor
(:mod:`~openqwen.data.executors`); when a shard is finished its done marker
(``_done/NNNNN.json``, written atomically after the shard) holds its counts. So:

* re-running a finished stage (its ``manifest.json`` exists, same config) does nothing;
* a killed stage resumes: shards with a done marker are skipped, the others are redone;
* the manifest sums the markers: documents and bytes in, kept, removed by reason, errors (bad
  lines with file and line), and checks ``docs_in == kept + removed + errors``.

Global stages (exact and fuzzy dedup) run in three steps: per-shard hashes or MinHash signatures
(parallel, each saved as ``_work/NNNNN.npy``), one global decision in the driver (which documents
to keep), then the per-shard writes (parallel).

Default order (``run_pipeline``): extract -> normalize -> dedup-exact -> dedup-fuzzy -> langid -> filter ->
safety -> decontam -> mix; the output of ``mix`` is what :func:`~openqwen.data.packing.pack_documents` packs.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import ALL_STAGES, STAGES  # the default order lives in the package, where the CLI reads it cheaply
from .decontam import DecontamConfig, build_eval_index, decontaminate_documents
from .dedup import MinHashConfig, MinHasher, cluster_signatures, exact_hash
from .executors import Executor, LocalExecutor
from .extract import ExtractConfig, extract_documents, read_pages
from .filters import FilterConfig, filter_documents
from .io import (
    DONE_DIR,
    BadLine,
    StageStats,
    atomic_write_bytes,
    atomic_write_json,
    is_page_file,
    list_input_files,
    read_documents,
    OUTPUT_FORMATS,
    open_writer,
    read_manifest,
    write_manifest,
)
from .langid import LangIdConfig, langid_documents
from .mix import MixConfig, mix_documents
from .normalize import normalize_text
from .perplexity import PerplexityConfig, apply_buckets, bucket_cutoffs, score_documents
from .safety import SafetyConfig, safety_documents

TEXT_FILES_PER_TASK = 256  # plain text inputs (one document per file) are grouped into tasks


@dataclass
class PipelineConfig:
    """Settings of every stage; each section is the dataclass of its module (documented there)."""

    stages: list[str] = field(default_factory=lambda: list(STAGES))
    # format of every stage's shards: "jsonl" (gzip JSON Lines) or "parquet" (text, id, metadata)
    output_format: str = "jsonl"
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    dedup: MinHashConfig = field(default_factory=MinHashConfig)
    langid: LangIdConfig = field(default_factory=LangIdConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    mix: MixConfig = field(default_factory=MixConfig)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in ALL_STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {ALL_STAGES}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format {self.output_format!r}: use one of {', '.join(OUTPUT_FORMATS)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PipelineConfig":
        """From a dict such as a parsed YAML file: ``{"stages": [...], "dedup": {"threshold": 0.7}, ...}``."""
        sections = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in (d or {}).items():
            if key not in sections:
                raise ValueError(f"unknown config section {key!r}; sections: {', '.join(sections)}")
            if key in ("stages", "output_format"):
                kwargs[key] = list(value) if key == "stages" else value
                continue
            section_cls = type(getattr(cls(), key))
            allowed = {f.name for f in fields(section_cls)}
            bad = set(value) - allowed
            if bad:
                raise ValueError(f"unknown option(s) {sorted(bad)} in section {key!r}; allowed: {sorted(allowed)}")
            kwargs[key] = section_cls(**value)
        return cls(**kwargs)


# ---------------------------------------------------------------- per-shard work (runs in workers)


# a task streams its shard in batches of at most this many documents / text bytes: memory stays
# bounded by the batch, not by the size of the shard
BATCH_DOCS = 1000
BATCH_BYTES = 16 << 20


def _iter_shard(paths: list[str], stats: StageStats | None, pages: bool = False) -> Iterator[dict[str, Any]]:
    """The documents of a task's files, one at a time; with ``pages`` also the raw pages of HTML/WARC
    files (the extract stage's input). Bad lines and unreadable records go to ``stats``."""
    for p in paths:
        if pages and is_page_file(p):
            for page in read_pages(p):
                if isinstance(page, tuple):
                    if stats is not None:
                        stats.error(BadLine(str(p), page[0], page[1]))
                else:
                    yield page
            continue
        for doc in read_documents(p):
            if isinstance(doc, BadLine):
                if stats is not None:
                    stats.error(doc)
            else:
                yield doc


def _batches(docs: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for d in docs:
        batch.append(d)
        size += len(d["html"]) if "html" in d else len(d["text"])
        if len(batch) >= BATCH_DOCS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _save_npy(path: str | Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


def _normalize(docs: list[dict[str, Any]], params: dict[str, Any]) -> list[list[dict[str, Any]] | str]:
    out: list[list[dict[str, Any]] | str] = []
    for d in docs:
        d["text"] = normalize_text(d["text"])
        out.append([d] if d["text"].strip() else "empty")
    return out


def _apply_mask(docs: list[dict[str, Any]], params: dict[str, Any], mask: np.ndarray) -> list[Any]:
    if mask.size != len(docs):
        raise RuntimeError("keep mask does not match the shard (the input changed during the stage?)")
    return [[d] if k else params["reason"] for d, k in zip(docs, mask)]


OPS: dict[str, Callable[..., list[Any]]] = {
    "extract": lambda docs, p: extract_documents(docs, ExtractConfig(**p)),
    "normalize": _normalize,
    "langid": lambda docs, p: langid_documents(docs, LangIdConfig(**p)),
    "filter": lambda docs, p: filter_documents(docs, FilterConfig(**p)),
    "safety": lambda docs, p: safety_documents(docs, SafetyConfig(**p)),
    "decontam": lambda docs, p: decontaminate_documents(docs, p["index"], p["ngram"], p["min_matches"]),
    "mix": lambda docs, p: mix_documents(docs, MixConfig(**p)),
}


def run_shard(task: dict[str, Any]) -> dict[str, Any]:
    """Process one task (module-level so process pools and Ray can ship it). Returns its stats.

    The task's documents stream through in batches (:data:`BATCH_DOCS`, :data:`BATCH_BYTES`): read,
    processed and appended to the output file batch by batch, so a task's memory does not grow with
    its shard."""
    op, params = task["op"], task["params"]
    if op in ("exact_hash", "minhash"):
        parts, count = [], 0
        hasher = MinHasher(MinHashConfig(**params)) if op == "minhash" else None
        for batch in _batches(_iter_shard(task["in"], None)):
            count += len(batch)
            if hasher is None:
                digests = b"".join(exact_hash(d["text"]) for d in batch)
                parts.append(np.frombuffer(digests, dtype=np.uint64).reshape(-1, 2))
            else:
                parts.append(hasher.signatures([d["text"] for d in batch]))
        width = 2 if hasher is None else hasher.config.num_perm
        empty = np.zeros((0, width), np.uint64 if hasher is None else np.uint32)
        _save_npy(task["out"], np.concatenate(parts) if parts else empty)
        return {"documents": count}
    if op == "perplexity_score":
        scores, langs = [], []
        for batch in _batches(_iter_shard(task["in"], None)):
            ppl, lang = score_documents(batch, PerplexityConfig(**params))
            scores.append(ppl)
            langs += lang
        _save_npy(task["out"], np.concatenate(scores) if scores else np.zeros(0))
        atomic_write_json(task["out"] + ".langs.json", langs)
        return {"documents": len(langs)}
    stats = StageStats()
    mask = np.load(task["mask"]) if op in ("apply_mask", "perplexity_apply") else None
    offset = 0
    writer = open_writer(task["out"])
    for docs in _batches(_iter_shard(task["in"], stats, pages=op == "extract")):
        for d in docs:
            if "html" in d and op == "extract":  # a raw page: its size is the HTML read
                stats.docs_in += 1
                stats.bytes_in += len(d["html"])
                stats.tally_in({"source": d.get("source", params.get("source", "web"))}, len(d["html"]))
            else:
                stats.add_in(d["text"])
                stats.tally_in(d, len(d["text"].encode("utf-8", "surrogatepass")))
        if op == "perplexity_apply":
            results = apply_buckets(docs, mask[offset : offset + len(docs)], params["cutoffs"], params["keep"])
        elif mask is not None:
            results = _apply_mask(docs, params, mask[offset : offset + len(docs)])
        else:
            results = OPS[op](docs, params)
        offset += len(docs)
        if len(results) != len(docs):
            raise RuntimeError(f"stage op {op} returned {len(results)} results for {len(docs)} documents")
        kept: list[dict[str, Any]] = []
        for doc, r in zip(docs, results):
            if isinstance(r, str):
                stats.remove(r, doc)
            else:
                stats.keep(r[0]["text"])
                stats.added += len(r) - 1
                kept.extend(r)
                for copy in r:
                    stats.tally_out(copy)
        writer.write(kept)
    if mask is not None and offset != mask.size:
        raise RuntimeError("keep mask does not match the shard (the input changed during the stage?)")
    writer.close()
    atomic_write_json(task["done"], stats.to_dict())  # after the shard: marker => shard complete
    return stats.to_dict()


# ---------------------------------------------------------------- stage driver


def _input_groups(inputs: Any) -> list[list[str]]:
    files = list_input_files(inputs)
    groups: list[list[str]] = []
    text_run: list[str] = []
    for f in files:
        if f.name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson", ".warc", ".warc.gz", ".parquet", ".pq")):
            if text_run:
                groups.append(text_run)
                text_run = []
            groups.append([str(f)])
        else:
            text_run.append(str(f))
            if len(text_run) >= TEXT_FILES_PER_TASK:
                groups.append(text_run)
                text_run = []
    if text_run:
        groups.append(text_run)
    return groups


def _map_tasks(op: str, params: dict[str, Any], groups: list[list[str]], out: Path,
               mask_dir: Path | None = None, suffix: str = ".jsonl.gz") -> list[dict[str, Any]]:
    tasks = []
    for i, g in enumerate(groups):
        t = {"op": op, "params": params, "in": g, "out": str(out / f"shard-{i:05d}{suffix}"),
             "done": str(out / DONE_DIR / f"{i:05d}.json"), "shard": i}
        if mask_dir is not None:
            t["mask"] = str(mask_dir / f"keep-{i:05d}.npy")
        tasks.append(t)
    return tasks


def run_stage(stage: str, inputs: Any, out_dir: str | Path, config: PipelineConfig | None = None,
              executor: Executor | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one stage (a name from :data:`STAGES`) from ``inputs`` into ``out_dir``; returns the manifest."""
    if stage not in ALL_STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {ALL_STAGES}")
    config = config or PipelineConfig()
    executor = executor or LocalExecutor()
    out = Path(out_dir)
    groups = _input_groups(inputs)
    section = {"extract": config.extract, "normalize": None, "dedup-exact": None, "dedup-fuzzy": config.dedup, "langid": config.langid,
               "filter": config.filter, "perplexity": config.perplexity, "safety": config.safety, "decontam": config.decontam, "mix": config.mix}[stage]
    params = asdict(section) if section is not None else {}
    # compare as stored: the manifest is JSON, where tuples come back as lists
    suffix = OUTPUT_FORMATS[config.output_format]
    stage_config = json.loads(json.dumps({"params": params, "inputs": groups, "format": config.output_format},
                                         default=str))
    done = read_manifest(out)
    if done is not None:
        if done.get("config") == stage_config:
            log(f"{stage}: already finished in {out} ({done['kept']} kept); nothing to do")
            return done
        raise FileExistsError(f"{out} holds a finished {done.get('stage')} stage with other inputs or "
                              "settings; use a new output folder or delete that one")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / DONE_DIR).mkdir(exist_ok=True)
    work = out / "_work"
    extra: dict[str, Any] = {}
    mask_dir = None
    if stage in ("dedup-exact", "dedup-fuzzy"):
        work.mkdir(exist_ok=True)
        op = "exact_hash" if stage == "dedup-exact" else "minhash"
        phase1 = [{"op": op, "params": params, "in": g, "out": str(work / f"{i:05d}.npy")}
                  for i, g in enumerate(groups)]
        executor.map(run_shard, [t for t in phase1 if not Path(t["out"]).exists()], desc=f"{stage} hash")
        arrays = [np.load(t["out"]) for t in phase1]
        sizes = [a.shape[0] for a in arrays]
        allv = np.concatenate(arrays) if arrays else np.zeros((0, 2), np.uint64)
        if stage == "dedup-exact":
            keep = np.zeros(allv.shape[0], dtype=bool)
            if allv.shape[0]:
                _, first = np.unique(allv, axis=0, return_index=True)
                keep[first] = True  # the first occurrence in input order survives
            reason = "exact_duplicate"
        else:
            result = cluster_signatures(allv, config.dedup)
            keep = result.keep
            reason = "near_duplicate"
            bands, rows = config.dedup.lsh_shape()
            extra = {"lsh": {"bands": bands, "rows": rows, "candidate_pairs": result.candidate_pairs,
                             "verified_pairs": result.verified_pairs, "clusters": result.num_clusters}}
        for i, part in enumerate(np.split(keep, np.cumsum(sizes)[:-1]) if sizes else []):
            _save_npy(work / f"keep-{i:05d}.npy", part)
        tasks = _map_tasks("apply_mask", {"reason": reason}, groups, out, work, suffix)
    elif stage == "perplexity":
        if not config.perplexity.model:
            raise ValueError("the perplexity stage needs a model: set perplexity.model (or --lm) to an n-gram model "
                             "from openqwen data train-lm --text REFERENCE --out lm.npz")
        work.mkdir(exist_ok=True)
        phase1 = [{"op": "perplexity_score", "params": params, "in": g, "out": str(work / f"ppl-{i:05d}.npy")}
                  for i, g in enumerate(groups)]
        executor.map(run_shard, [t for t in phase1 if not Path(t["out"] + ".langs.json").exists()],
                     desc="perplexity score")
        ppl = [np.load(t["out"]) for t in phase1]
        langs = [json.loads(Path(t["out"] + ".langs.json").read_text()) for t in phase1]
        cutoffs = bucket_cutoffs(np.concatenate(ppl) if ppl else np.zeros(0), [x for ls in langs for x in ls],
                                 config.perplexity)
        extra = {"perplexity_cutoffs": {lang: {"head_max": round(a, 2), "middle_max": round(b, 2)}
                                        for lang, (a, b) in cutoffs.items()}}
        tasks = _map_tasks("perplexity_apply", {"cutoffs": cutoffs, "keep": list(config.perplexity.keep)},
                           groups, out, None, suffix)
        for i, t in enumerate(tasks):
            t["mask"] = phase1[i]["out"]
    elif stage == "decontam":
        work.mkdir(exist_ok=True)
        index_path = work / "eval-ngrams.npy"
        extra = {"eval_index": build_eval_index(config.decontam, index_path, log=log)}
        tasks = _map_tasks("decontam", {"index": str(index_path), "ngram": config.decontam.ngram,
                                        "min_matches": config.decontam.min_matches}, groups, out, suffix=suffix)
    else:
        tasks = _map_tasks(stage.replace("-", "_"), params, groups, out, mask_dir, suffix)
    pending = [t for t in tasks if not Path(t["done"]).exists()]
    if len(pending) < len(tasks):
        log(f"{stage}: resuming, {len(tasks) - len(pending)} of {len(tasks)} shards already done")
    executor.map(run_shard, pending, desc=stage)
    stats = StageStats()
    for t in tasks:
        stats.merge(StageStats.from_dict(json.loads(Path(t["done"]).read_text())))
    manifest = write_manifest(out, stage, stats, inputs=[p for g in groups for p in g],
                              outputs=[Path(t["out"]).name for t in tasks], config=stage_config,
                              seconds=time.perf_counter() - t0, extra=extra)
    log(f"{stage}: {stats.docs_in} in, {stats.kept} kept, removed {stats.removed or 0}, "
        f"{stats.errors} errors ({manifest['seconds']:.1f} s)")
    return manifest


def reshard(inputs: Any, out_dir: str | Path, docs_per_shard: int = 1000,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Rewrite documents as ``shard-NNNNN.jsonl.gz`` files of ``docs_per_shard`` documents each.

    Stages parallelise over shards, so a corpus in a few big files uses few workers; resharding
    first spreads it. Bad lines are counted and listed in the manifest like in every stage. Runs
    in the driver (it is I/O bound) and, like the stages, does nothing when already finished.
    """
    from .io import ShardWriter

    out = Path(out_dir)
    files = [str(f) for f in list_input_files(inputs)]
    stage_config = {"params": {"docs_per_shard": docs_per_shard}, "inputs": [[f] for f in files]}
    done = read_manifest(out)
    if done is not None:
        if done.get("config") == stage_config:
            log(f"shard: already finished in {out}; nothing to do")
            return done
        raise FileExistsError(f"{out} holds finished shards of other inputs; use a new output folder")
    t0 = time.perf_counter()
    stats = StageStats()
    with ShardWriter(out, docs_per_shard=docs_per_shard) as writer:
        for f in files:
            for doc in read_documents(f):
                if isinstance(doc, BadLine):
                    stats.error(doc)
                    continue
                stats.add_in(doc["text"])
                stats.keep(doc["text"])
                writer.write(doc)
    manifest = write_manifest(out, "shard", stats, inputs=files, outputs=[p.name for p in writer.paths],
                              config=stage_config, seconds=time.perf_counter() - t0)
    log(f"shard: {stats.kept} documents in {len(writer.paths)} shards, {stats.errors} errors")
    return manifest


def run_pipeline(inputs: Any, out_dir: str | Path, config: PipelineConfig | None = None,
                 executor: Executor | None = None, log: Callable[[str], None] = print,
                 card_plot: bool = False) -> dict[str, Any]:
    """Run ``config.stages`` in order, each into ``out_dir/NN-stage``; returns a summary dict
    (also written to ``out_dir/pipeline.json``) whose ``output`` is the last stage's folder.
    ``out_dir/data_card.md`` sums the run up (:mod:`~openqwen.data.card`), with
    ``data_card.png`` when ``card_plot`` (matplotlib)."""
    config = config or PipelineConfig()
    executor = executor or LocalExecutor()
    out = Path(out_dir)
    t0 = time.perf_counter()
    current: Any = inputs
    manifests = []
    for k, stage in enumerate(config.stages, 1):
        stage_dir = out / f"{k:02d}-{stage}"
        manifests.append(run_stage(stage, current, stage_dir, config, executor, log))
        current = stage_dir
    seconds = time.perf_counter() - t0
    first, last = manifests[0], manifests[-1]
    summary = {
        "output": str(current),
        "stages": [{k: m.get(k) for k in ("stage", "docs_in", "bytes_in", "kept", "bytes_kept", "removed",
                                           "errors", "error_lines", "added", "seconds", "removed_examples",
                                           "sources_in", "sources_out", "langs_out")} for m in manifests],
        "docs_in": first["docs_in"],
        "bytes_in": first["bytes_in"],
        "docs_out": last["kept"] + last.get("added", 0),
        "seconds": round(seconds, 3),
        "config": asdict(config),
    }
    from .card import write_data_card

    summary["card"] = str(write_data_card(out, summary, inputs, plot=card_plot))
    atomic_write_json(out / "pipeline.json", summary)
    return summary
