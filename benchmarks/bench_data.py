"""Data pipeline benchmark: MinHash signatures against datasketch, LSH clustering at 1M
signatures, and the whole pipeline end to end; writes docs/benchmarks/data.md.

    .venv/bin/python -m benchmarks.bench_data [--mb 1.0] [--repeat 3] [--lsh 1000000] [--no-e2e]

MinHash: the same documents (the built-in demo corpus: English, Chinese, code), the same
normalisation and shingles (5-unit n-grams of ``match_key``), 128 permutations, one thread each.
datasketch gets the shingle strings it needs built the usual way (join the units); that time is
counted, as it is part of getting a signature with datasketch. Each figure is the best of
``--repeat`` runs, the peers interleaved, so a burst of load from other jobs hits both.
"""

from __future__ import annotations

import os

for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import argparse  # noqa: E402
import gzip  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def demo_documents(megabytes: float) -> tuple[list[str], Path]:
    """About ``megabytes`` MB of demo-corpus documents, a third from each of English, Chinese, code."""
    from openqwen.data.demo_corpus import build_demo_corpus, cache_dir

    folder = cache_dir() / "bench-demo-corpus"
    build_demo_corpus(folder, log=lambda *_: None)
    docs: list[str] = []
    for source in ("shakespeare", "chinese_poetry", "python_stdlib"):
        path = folder / f"{source}.jsonl.gz"
        if not path.exists():
            continue
        used = 0
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                docs.append(text)
                used += len(text.encode())
                if used >= megabytes * 1e6 / 3:
                    break
    return docs, folder


def best(times: list[float]) -> float:
    return min(times)


def bench_minhash(docs: list[str], repeat: int) -> dict:
    from datasketch import MinHash

    from openqwen.data.dedup import MinHashConfig, MinHasher
    from openqwen.data.normalize import units

    cfg = MinHashConfig(num_perm=128, ngram=5)
    hasher = MinHasher(cfg)

    def ours():
        return hasher.signatures(docs)

    def theirs():
        out = []
        for text in docs:
            u = units(text)
            n = min(cfg.ngram, len(u))
            m = MinHash(num_perm=cfg.num_perm)
            m.update_batch([" ".join(u[i : i + n]).encode("utf-8") for i in range(len(u) - n + 1)])
            out.append(m.hashvalues)
        return out

    t_ours, t_theirs = [], []
    for _ in range(repeat):
        for fn, acc in ((ours, t_ours), (theirs, t_theirs)):
            start = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - start)
    mb = sum(len(d.encode()) for d in docs) / 1e6
    return {"mb": mb, "docs": len(docs), "ours_s": best(t_ours), "theirs_s": best(t_theirs)}


def planted_signatures(n: int, num_perm: int = 128, dup_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Random signatures where ``dup_fraction`` of rows copy another row with 5 % of values changed."""
    rng = np.random.default_rng(seed)
    sig = rng.integers(0, 2**32, size=(n, num_perm), dtype=np.uint32)
    k = int(n * dup_fraction)
    dst = rng.choice(n, size=k, replace=False)
    src = rng.integers(0, n, size=k)
    sig[dst] = sig[src]
    noise = rng.random((k, num_perm)) < 0.05
    sig[dst] = np.where(noise, rng.integers(0, 2**32, size=(k, num_perm), dtype=np.uint32), sig[dst])
    return sig


def bench_lsh(n: int, peer_n: int) -> dict:
    from datasketch import MinHash, MinHashLSH

    from openqwen.data.dedup import MinHashConfig, cluster_signatures

    cfg = MinHashConfig()
    sig = planted_signatures(n)
    start, cpu = time.perf_counter(), time.process_time()
    result = cluster_signatures(sig, cfg)
    ours_s, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
    # datasketch: insert + query per signature (its LSH API), on fewer signatures (it is per-key Python)
    small = sig[:peer_n]
    bands, rows = cfg.lsh_shape()
    start = time.perf_counter()
    lsh = MinHashLSH(num_perm=128, params=(bands, rows))
    objs = [MinHash(num_perm=128, hashvalues=row.astype(np.uint64), scheme="legacy") for row in small]
    for i, m in enumerate(objs):
        lsh.query(m)
        lsh.insert(i, m)
    theirs_s = time.perf_counter() - start
    start = time.perf_counter()
    cluster_signatures(small, cfg)
    ours_small_s = time.perf_counter() - start
    return {"n": n, "ours_s": ours_s, "ours_cpu": ours_cpu, "removed": int((~result.keep).sum()), "clusters": result.num_clusters,
            "peer_n": peer_n, "theirs_small_s": theirs_s, "ours_small_s": ours_small_s,
            "bands": bands, "rows": rows}


def bench_e2e(corpus_dir: Path) -> dict:
    from openqwen.data.executors import LocalExecutor
    from openqwen.data.packing import pack_documents
    from openqwen.data.pipeline import run_pipeline

    out = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        start, cpu = time.perf_counter(), time.process_time()
        # one inline worker: all the work happens in this process, so process_time is its CPU time
        summary = run_pipeline(corpus_dir, out / "clean", executor=LocalExecutor(1), log=lambda *_: None)
        clean_s, clean_cpu = time.perf_counter() - start, time.process_time() - cpu
        pack = None
        try:
            from openqwen import QwenTokenizer
            from openqwen.artifacts import artifact_path

            tok_path = artifact_path("qwen-tiktoken")
            if tok_path is not None:
                tok = QwenTokenizer.from_pretrained(tok_path)
                start = time.perf_counter()
                index = pack_documents(Path(summary["output"]), tok, out / "packed", seq_len=512, progress=False)
                pack = {"seconds": time.perf_counter() - start, "tokens": index["num_tokens"],
                        "sequences": index["num_sequences"]}
        except ImportError:
            pass
        return {"summary": summary, "clean_s": clean_s, "clean_cpu": clean_cpu, "pack": pack}
    finally:
        shutil.rmtree(out, ignore_errors=True)


# ------------------------------------------------------------------ against datatrove (the peer)


def peer_corpus(prose_docs: list[str], copies: int, seed: int = 0) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The same input for both: the web sample's pages ``copies`` times (other URLs, so the copies
    are exact duplicates after extraction), and English prose (Shakespeare scenes) with 10 % planted
    near-duplicates (two words changed)."""
    import random

    from openqwen.data.websample import SAMPLE_DIR, sample_pages

    pages = [(f"{p['url']}?copy={k}", (SAMPLE_DIR / p["file"]).read_bytes()) for k in range(copies) for p in sample_pages()]
    rng = random.Random(seed)
    prose = list(prose_docs)
    for text in rng.sample(prose_docs, len(prose_docs) // 10):
        w = text.split(" ")
        for _ in range(2):
            w[rng.randrange(len(w))] = "changed"
        prose.append(" ".join(w))
    return pages, prose


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def bench_peer(prose_docs: list[str], copies: int, repeat: int) -> dict:
    """Extraction, Gopher + C4 filters, exact and MinHash dedup: openqwen against datatrove on the same
    documents, one process each, best of ``repeat``; MB/s per core and the Jaccard of the removed sets."""
    import datatrove
    from datatrove.data import Document
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

    from openqwen.data.dedup import MinHashConfig, MinHasher, cluster_signatures, exact_hash
    from openqwen.data.extract import ExtractConfig, extract_page
    from openqwen.data.filters import FilterConfig, prose_failures

    pages, prose = peer_corpus(prose_docs, copies)
    from importlib.metadata import version

    out: dict = {"version": version("datatrove"), "pages": len(pages), "prose": len(prose)}

    def timed(fn):
        times, result = [], None
        for _ in range(repeat):
            start = time.process_time()
            result = fn()
            times.append(time.process_time() - start)
        return min(times), result

    # extraction: both call trafilatura; datatrove's extractor runs it in its sandbox process with a timeout
    html_mb = sum(len(h) for _, h in pages) / 1e6
    cfg = ExtractConfig()
    dt_ext = Trafilatura(favour_precision=True, timeout=10.0, deduplicate=False)

    def dt_extract():
        docs = [Document(text=h.decode("utf-8"), id=u) for u, h in pages]
        return {d.id: d.text for d in dt_ext.run(iter(docs))}  # drops pages it extracts nothing from

    # wall clock for both: datatrove extracts in a sandbox process (its timeout guard), whose CPU time
    # this process does not see; the peers alternate, so load bursts hit both
    t_ours, t_dt = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        ours_text = [extract_page(h, u, cfg) for u, h in pages]
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        dt_kept = dt_extract()
        t_dt.append(time.perf_counter() - start)
    ours_empty = {u for (u, _), d in zip(pages, ours_text) if d is None}
    dt_empty = {u for u, _ in pages if u not in dt_kept}
    out["extract"] = {"mb": html_mb, "ours_s": min(t_ours), "theirs_s": min(t_dt), "ours_removed": len(ours_empty),
                      "theirs_removed": len(dt_empty), "jaccard": _jaccard(ours_empty, dt_empty),
                      "same_texts": sum(d is not None and dt_kept.get(u) == d["text"]
                                        for (u, _), d in zip(pages, ours_text)),
                      "kept": len(pages) - len(ours_empty)}
    texts = [d["text"] for d in ours_text if d is not None] + prose
    mb = sum(len(t.encode()) for t in texts) / 1e6
    out["mb"], out["docs"] = mb, len(texts)

    # Gopher quality + repetition and C4's document rules (lorem ipsum, curly bracket) on both sides;
    # C4's line rules (terminal punctuation, sentence counts) are datatrove's alone: switched off
    fc = FilterConfig()
    gq, gr = GopherQualityFilter(), GopherRepetitionFilter()
    c4 = C4QualityFilter(filter_no_terminal_punct=False, min_num_sentences=-1, min_words_per_line=-1,
                         max_word_length=-1, filter_javascript=False, filter_policy=False, remove_citations=False)
    ours_s, ours_fail = timed(lambda: [prose_failures(t, fc)[:1] for t in texts])

    def dt_filter():
        res = []
        for i, t in enumerate(texts):
            d = Document(text=t, id=str(i))
            why = ""
            for f in (gq, gr, c4):
                r = f.filter(d)
                if r is not True and not (isinstance(r, tuple) and r[0]):
                    why = r[1] if isinstance(r, tuple) else type(f).__name__
                    break
            res.append(why)
        return res

    gq.filter(Document(text="warm up the word tokenizer", id="w"))  # its spaCy load is not the filter's cost
    dt_s, dt_fail = timed(dt_filter)
    a = {i for i, f in enumerate(ours_fail) if f}
    b = {i for i, f in enumerate(dt_fail) if f}
    from collections import Counter

    out["filters"] = {"ours_s": ours_s, "theirs_s": dt_s, "ours_removed": len(a), "theirs_removed": len(b),
                      "jaccard": _jaccard(a, b),
                      "ours_only": dict(Counter(ours_fail[i][0] for i in a - b).most_common(5)),
                      "theirs_only": dict(Counter(dt_fail[i] for i in b - a).most_common(5))}

    # exact dedup: openqwen hashes the match key; datatrove's exact dedup hashes the text as is
    def ours_exact():
        seen, removed = set(), set()
        for i, t in enumerate(texts):
            h = exact_hash(t)
            (removed.add(i) if h in seen else seen.add(h))
        return removed

    ours_s, ours_dup = timed(ours_exact)
    dt_dup = _datatrove_exact(texts)
    out["exact"] = {"ours_s": ours_s, "theirs_s": dt_dup[0], "ours_removed": len(ours_dup),
                    "theirs_removed": len(dt_dup[1]), "jaccard": _jaccard(ours_dup, dt_dup[1])}

    # MinHash dedup with the same shape: 5-grams, 14 bands x 9 rows (threshold 0.8)
    mcfg = MinHashConfig(ngram=5, num_perm=126, bands=14, rows=9)

    def ours_minhash():
        res = cluster_signatures(MinHasher(mcfg).signatures(texts), mcfg)
        return set(np.flatnonzero(~res.keep).tolist())

    ours_s, ours_near = timed(ours_minhash)
    dt_near = _datatrove_minhash(texts)
    out["minhash"] = {"ours_s": ours_s, "theirs_s": dt_near[0], "ours_removed": len(ours_near),
                      "theirs_removed": len(dt_near[1]), "jaccard": _jaccard(ours_near, dt_near[1])}
    return out


def _doc_text(doc) -> bytes:
    return doc.text.encode("utf-8")


# datatrove picks its hash from the getter's return annotation, which must be the type itself (this
# module's annotations are strings: `from __future__ import annotations`)
_doc_text.__annotations__["return"] = bytes


def _drain(result) -> None:
    if result is not None:
        for _ in result:
            pass


def _datatrove_exact(texts: list[str]) -> tuple[float, set]:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature,
                                                      ExactFindDedups)

    work = Path(tempfile.mkdtemp(prefix="bench-dt-exact-"))
    cfg = ExactDedupConfig(content_getter=_doc_text)
    try:
        start = time.process_time()
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        _drain(ExactDedupSignature(output_folder=str(work / "sigs"), config=cfg).run(iter(docs), rank=0, world_size=1))
        _drain(ExactFindDedups(data_folder=str(work / "sigs"), output_folder=str(work / "dups"), config=cfg).run(
            rank=0, world_size=1))
        kept = {d.id for d in ExactDedupFilter(data_folder=str(work / "dups"), config=cfg).run(
            iter([Document(text=t, id=str(i)) for i, t in enumerate(texts)]), rank=0, world_size=1)}
        seconds = time.process_time() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return seconds, {i for i in range(len(texts)) if str(i) not in kept}


def _datatrove_minhash(texts: list[str]) -> tuple[float, set]:
    from datatrove.data import Document
    from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                                  MinhashDedupFilter, MinhashDedupSignature)

    work = Path(tempfile.mkdtemp(prefix="bench-dt-minhash-"))
    from datatrove.utils.hashing import HashConfig

    # sha1 shingle hashes: datatrove's xxhash path takes bytes, which its shingler does not give it
    cfg = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=9, hash_config=HashConfig(hash_fc="sha1",
                                                                                               precision=64))
    try:
        start = time.process_time()
        docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
        _drain(MinhashDedupSignature(output_folder=str(work / "sigs"), config=cfg).run(iter(docs), rank=0,
                                                                                       world_size=1))
        buckets = MinhashDedupBuckets(input_folder=str(work / "sigs"), output_folder=str(work / "buckets"), config=cfg)
        for b in range(cfg.num_buckets):
            _drain(buckets.run(rank=b, world_size=cfg.num_buckets))
        _drain(MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove"),
                                   config=cfg).run())
        kept = {d.id for d in MinhashDedupFilter(input_folder=str(work / "remove")).run(
            iter([Document(text=t, id=str(i)) for i, t in enumerate(texts)]), rank=0, world_size=1)}
        seconds = time.process_time() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return seconds, {i for i in range(len(texts)) if str(i) not in kept}


def bench_ray(corpus_dir: Path) -> dict:
    """The same pipeline on the local executor (one worker) and on Ray with 2 local workers: the
    output files compared byte for byte, and the wall-time ratio."""
    from openqwen.data.executors import LocalExecutor, RayExecutor
    from openqwen.data.pipeline import PipelineConfig, reshard, run_pipeline

    out = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        reshard(corpus_dir, out / "shards", docs_per_shard=400, log=lambda *_: None)
        cfg = PipelineConfig(stages=["normalize", "dedup-exact", "dedup-fuzzy", "langid", "filter", "safety", "mix"])
        start = time.perf_counter()
        local = run_pipeline(out / "shards", out / "local", cfg, LocalExecutor(1), log=lambda *_: None)
        local_s = time.perf_counter() - start
        ex = RayExecutor(num_cpus=2)
        try:
            ex.map(abs, [{}] * 2)  # workers up before the clock starts (abs is a cheap remote function)
        except Exception:  # noqa: BLE001 - abs({}) fails remotely; only the start-up matters here
            pass
        try:
            start = time.perf_counter()
            ray_run = run_pipeline(out / "shards", out / "ray", cfg, ex, log=lambda *_: None)
            ray_s = time.perf_counter() - start
        finally:
            ex.ray.shutdown()
        a = sorted(p.relative_to(out / "local") for p in (out / "local").rglob("shard-*"))
        b = sorted(p.relative_to(out / "ray") for p in (out / "ray").rglob("shard-*"))
        same = a == b and all((out / "local" / p).read_bytes() == (out / "ray" / p).read_bytes() for p in a)
        return {"local_s": local_s, "ray_s": ray_s, "files": len(a), "identical": same,
                "mb": local["bytes_in"] / 1e6, "shards": len(list((out / "shards").glob("shard-*")))}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def peer_section(p: dict, args: argparse.Namespace) -> list[str]:
    ex, fl, exact, mh = p["extract"], p["filters"], p["exact"], p["minhash"]

    def row(name: str, r: dict, mb: float, ours: str, theirs: str) -> str:
        return (f"| {name} | {ours} {mb / r['ours_s']:.2f} | {theirs} {mb / r['theirs_s']:.2f} | "
                f"**{r['theirs_s'] / r['ours_s']:.2f}x** | {r['ours_removed']} / {r['theirs_removed']} | "
                f"{r['jaccard']:.3f} |")

    lines = ["", f"## Against datatrove {p['version']} (same input, same stages, one process each)", "",
             f"Input: the built-in web sample {args.peer_copies} times over ({p['pages']} pages under distinct "
             f"URLs, {ex['mb']:.2f} MB of HTML), then the {ex['kept']} extracted pages plus {p['prose']} Shakespeare "
             f"scenes (10 % of them planted near-copies with two words changed): {p['docs']} documents, "
             f"{p['mb']:.2f} MB for the filters and dedup. Best of {args.repeat}; MB/s per core is CPU time of "
             "this process, except extraction, which is wall time for both (datatrove extracts in a sandbox "
             "subprocess).", "",
             "| stage | openqwen MB/s | datatrove MB/s | ratio | removed (ours / theirs) | Jaccard of removed sets |",
             "|---|---:|---:|---:|---:|---:|",
             row("extraction (trafilatura, both)", ex, ex["mb"], "`extract_page`", "`Trafilatura`"),
             row("Gopher quality + repetition, C4 document rules", fl, p["mb"], "`prose_failures`",
                 "`GopherQuality` + `GopherRepetition` + `C4Quality`"),
             row("exact dedup", exact, p["mb"], "`exact_hash`", "`ExactDedup*` (3 steps)"),
             row("MinHash dedup (5-grams, 14 x 9)", mh, p["mb"], "`MinHasher` + `cluster_signatures`",
                 "`MinhashDedup*` (4 steps)"),
             "",
             f"Extraction: the same main text for {ex['same_texts']} of {ex['kept']} pages (both run trafilatura "
             "with precision favoured and comments off; ours also reads title, date and URL metadata).",
             f"Filters, removed by one side only: ours {fl['ours_only'] or '-'}; datatrove's {fl['theirs_only'] or '-'}. "
             "datatrove's Gopher rules count words with a spaCy tokenizer (punctuation marks are words, so verse "
             "with much punctuation falls below the 80 % alphabetic-words line); ours split on whitespace, as "
             "the Gopher paper describes. C4's line rules (terminal punctuation, sentence counts, javascript, "
             "policy lines) exist only in datatrove and are off here.",
             "Exact dedup: ours compares the normalised match key (case, punctuation, spacing folded), datatrove "
             "the text as it is; on this input both remove the same copies. MinHash: ours verifies LSH "
             "candidates against the signatures (estimated Jaccard >= 0.8), datatrove removes any bucket match."]
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=1.0, help="MB of text for the MinHash comparison")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--lsh", type=int, default=1_000_000, help="signatures to cluster")
    ap.add_argument("--lsh-peer", type=int, default=5_000, help="signatures for the datasketch LSH peer")
    ap.add_argument("--no-e2e", action="store_true", help="skip the end-to-end pipeline run")
    ap.add_argument("--peer-copies", type=int, default=10, help="copies of the web sample for the datatrove peer")
    ap.add_argument("--peer-prose", type=int, default=300, help="Shakespeare scenes for the datatrove peer")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray executor comparison")
    ap.add_argument("--out", default="docs/benchmarks/data.md")
    args = ap.parse_args()

    import datasketch

    docs, corpus_dir = demo_documents(args.mb)
    mh = bench_minhash(docs, args.repeat)
    print(f"minhash: ours {mh['mb'] / mh['ours_s']:.2f} MB/s, datasketch {mh['mb'] / mh['theirs_s']:.2f} MB/s "
          f"-> {mh['theirs_s'] / mh['ours_s']:.2f}x", flush=True)
    lsh = bench_lsh(args.lsh, args.lsh_peer)
    print(f"lsh: {lsh['n']} signatures clustered in {lsh['ours_s']:.1f} s (CPU {lsh['ours_cpu']:.1f} s)", flush=True)
    e2e = None if args.no_e2e else bench_e2e(corpus_dir)
    with gzip.open(corpus_dir / "shakespeare.jsonl.gz", "rt", encoding="utf-8") as f:
        scenes = [json.loads(line)["text"] for line, _ in zip(f, range(args.peer_prose))]
    peer = bench_peer(scenes, args.peer_copies, args.repeat)
    print(json.dumps(peer, default=float), flush=True)
    ray = None
    if not args.no_ray:
        try:
            ray = bench_ray(corpus_dir)
        except Exception as e:  # noqa: BLE001 - a Ray start-up failure is reported, not fatal
            ray = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(ray), flush=True)

    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Data pipeline benchmark",
        "",
        f"Command: `.venv/bin/python -m benchmarks.bench_data --mb {args.mb} --repeat {args.repeat} "
        f"--lsh {args.lsh}`",
        "",
        f"Machine: {os.cpu_count()} shared CPU cores ({platform.machine()}), load average {load:.1f} at the end "
        f"(other jobs were running: absolute numbers are low and noisy, the ratios measured in the same run "
        f"are what count). Date: {now}. Python {platform.python_version()}, numpy {np.__version__}, "
        f"datasketch {datasketch.__version__}. Everything runs on one thread.",
        "",
        "## MinHash signatures (per core)",
        "",
        f"{mh['docs']} documents, {mh['mb']:.2f} MB (demo corpus: Shakespeare, Tang poems, Python stdlib), "
        f"5-unit shingles of the normalised text, 128 permutations; best of {args.repeat}, peers interleaved.",
        "",
        "| | MB/s | documents/s |",
        "|---|---:|---:|",
        f"| openqwen `MinHasher.signatures` | {mh['mb'] / mh['ours_s']:.2f} | {mh['docs'] / mh['ours_s']:.0f} |",
        f"| datasketch `MinHash.update_batch` | {mh['mb'] / mh['theirs_s']:.2f} | {mh['docs'] / mh['theirs_s']:.0f} |",
        f"| **ratio** | **{mh['theirs_s'] / mh['ours_s']:.2f}x** | |",
        "",
        "Target: at least 3x datasketch per core.",
        "",
        "## LSH clustering",
        "",
        f"{lsh['n']:,} random 128-value signatures, 10 % of them planted near-copies of another row (5 % of "
        f"values changed); threshold 0.8 -> {lsh['bands']} bands x {lsh['rows']} rows; candidates verified "
        "on the signatures, connected components by array union-find.",
        "",
        "| | signatures | seconds (wall) | signatures/s |",
        "|---|---:|---:|---:|",
        f"| openqwen `cluster_signatures` | {lsh['n']:,} | {lsh['ours_s']:.1f} (CPU {lsh['ours_cpu']:.1f}) | "
        f"{lsh['n'] / lsh['ours_s']:,.0f} |",
        f"| openqwen `cluster_signatures` | {lsh['peer_n']:,} | {lsh['ours_small_s']:.2f} | "
        f"{lsh['peer_n'] / lsh['ours_small_s']:,.0f} |",
        f"| datasketch `MinHashLSH` query + insert | {lsh['peer_n']:,} | {lsh['theirs_small_s']:.2f} | "
        f"{lsh['peer_n'] / lsh['theirs_small_s']:,.0f} |",
        "",
        f"At {lsh['n']:,} signatures: {lsh['removed']:,} documents removed in {lsh['clusters']:,} clusters. "
        "(datasketch's LSH finds candidates only; it does not cluster.)",
    ]
    if e2e:
        s = e2e["summary"]
        mb = s["bytes_in"] / 1e6
        lines += [
            "",
            "## End to end",
            "",
            f"`run_pipeline` on the built-in demo corpus ({s['docs_in']} documents, {mb:.2f} MB), local executor, "
            f"one worker: {e2e['clean_s']:.1f} s wall, **{mb / e2e['clean_s']:.2f} MB/s** for all {len(s['stages'])} "
            "default stages; "
            f"{e2e['clean_cpu']:.1f} s of CPU, i.e. **{mb / e2e['clean_cpu']:.2f} MB/s per free core**.",
            "",
            "| stage | docs in | kept | removed | MB/s (wall) |",
            "|---|---:|---:|---:|---:|",
        ]
        for st in s["stages"]:
            rate = st["bytes_in"] / 1e6 / max(st["seconds"], 1e-9)
            removed = ", ".join(f"{k} {v}" for k, v in st["removed"].items()) or "-"
            lines.append(f"| {st['stage']} | {st['docs_in']} | {st['kept'] + st['added']} | {removed} | {rate:.2f} |")
        if e2e["pack"]:
            p = e2e["pack"]
            lines += ["", f"Packing the result with the Qwen tokenizer (seq_len 512): {p['tokens']:,} tokens, "
                      f"{p['sequences']:,} sequences in {p['seconds']:.1f} s ({p['tokens'] / p['seconds']:,.0f} tokens/s)."]
        lines += [
            "",
            "## Reading the numbers",
            "",
            "- MinHash: the time goes into the `num_perm x shingles` uint32 product and its minimum; shingle "
            "hashing is byte-level numpy. datasketch pays a Python call and a SHA-1 per shingle plus a 64-bit "
            "modular product per permutation.",
            "- LSH: wall time on a machine shared with other jobs is several times the CPU time; the CPU column "
            "is what one free core needs. Most of it is hashing the bands (one polynomial pass per row) and one "
            "sort per band; verification and union-find take well under a second.",
            "- End to end: every stage runs on one worker here; the slow ones (langid, filters, decontamination) "
            "are per-document Python around C/numpy kernels and scale with `--workers` or the Ray executor, "
            "over shards (the demo corpus has 4 files, so at most 4 workers help).",
        ]
    lines += peer_section(peer, args)
    if ray is not None:
        lines += ["", "## Ray executor: 2 local workers against the local executor", ""]
        if "error" in ray:
            lines.append(f"Not measured in this run: Ray did not start ({ray['error']}).")
        else:
            lines += [f"{ray['mb']:.2f} MB of the demo corpus resharded into {ray['shards']} shards, stages normalize, "
                      "dedup-exact, dedup-fuzzy, langid, filter, safety, mix.", "",
                      "| executor | seconds (wall) |", "|---|---:|",
                      f"| local, 1 worker | {ray['local_s']:.1f} |", f"| Ray, 2 local workers | {ray['ray_s']:.1f} |",
                      f"| **speed-up** | **{ray['local_s'] / ray['ray_s']:.2f}x** |", "",
                      f"Output: {ray['files']} shard files, "
                      f"{'identical byte for byte' if ray['identical'] else 'NOT identical'} between the two executors."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
