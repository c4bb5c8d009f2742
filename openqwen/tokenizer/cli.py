"""``openqwen tokenizer train|stats|encode``: learn a vocabulary, compare compression, inspect ids."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load_tokenizer_arg(path: str | None):
    """The tokenizer a ``--tokenizer`` flag names, or the official qwen.tiktoken artifact when it names none
    (shared by the tokenizer and data verbs)."""
    from .bpe import QwenTokenizer

    if path is None:
        from ..artifacts import artifact_path

        found = artifact_path("qwen-tiktoken")
        if found is None:
            raise FileNotFoundError("no --tokenizer given and the qwen.tiktoken artifact is not fetched; "
                                    "pass --tokenizer PATH (a tokenizer folder, .tiktoken, tokenizer.json or .gguf)")
        path = str(found)
    return QwenTokenizer.from_pretrained(path)


def _check_paths(inputs: list[Path], out: str) -> None:
    """Refuse missing inputs and an --out that cannot be written before training starts (the
    trainer reads inputs lazily, after its progress output has begun)."""
    from ..data.io import list_input_files

    list_input_files(inputs)
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder to write the tokenizer into")


def _train(args: argparse.Namespace) -> int:
    from .train import DEFAULT_NUM_EXTRA, default_special_tokens, extend_tokenizer, train_tokenizer

    inputs = [Path(p) for p in args.input]
    if args.extend:
        # the extended vocabulary keeps its base's specials and grows by --new-tokens: the flags of
        # training from bytes would be ignored, so they are refused
        if args.new_tokens is None:
            raise ValueError("--extend needs --new-tokens N (how many tokens to add)")
        if args.vocab_size is not None:
            raise ValueError("--vocab-size is for training from bytes; with --extend give --new-tokens N instead")
        if args.num_extra is not None:
            raise ValueError("--num-extra is for training from bytes; --extend keeps the base vocabulary's special tokens")
        _check_paths(inputs, args.out)
        base = load_tokenizer_arg(args.extend)
        tok = extend_tokenizer(base, inputs, args.new_tokens, min_frequency=args.min_frequency,
                               show_progress=not args.quiet, max_token_bytes=args.max_token_bytes)
    else:
        if args.new_tokens is not None:
            raise ValueError("--new-tokens is for --extend; to train from bytes give --vocab-size N")
        if args.vocab_size is None:
            raise ValueError("--vocab-size N is required (total ids including the special tokens)")
        specials = default_special_tokens(DEFAULT_NUM_EXTRA if args.num_extra is None else args.num_extra)
        _check_paths(inputs, args.out)
        tok = train_tokenizer(inputs, args.vocab_size, special_tokens=specials, min_frequency=args.min_frequency,
                              max_token_bytes=args.max_token_bytes, show_progress=not args.quiet)
    out = tok.save_pretrained(Path(args.out).expanduser())
    print(f"wrote {out}: {tok.num_base_tokens} ordinary tokens + {len(tok.special_tokens)} special = "
          f"vocab_size {tok.vocab_size} (<|endoftext|> {tok.eos_id}, <|im_start|> {tok.im_start_id}, "
          f"<|im_end|> {tok.im_end_id})")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from .train import compression_stats, format_table, group_documents, plot_compression

    tokenizers = {}
    for spec in args.tokenizer or [None]:
        name, sep, path = spec.partition("=") if spec else ("", "", None)
        if not sep:
            name, path = "", spec
        if path == "":
            raise ValueError(f"--tokenizer {spec!r} names no path; give [NAME=]PATH")
        name = name or (Path(path).stem if path else "qwen")
        if name in tokenizers:
            raise ValueError(f"two tokenizers are named {name!r}; name them apart with --tokenizer NAME=PATH")
        tokenizers[name] = load_tokenizer_arg(path)
    groups = group_documents(args.input, group_by=args.group_by)
    if not any(doc for docs in groups.values() for doc in docs):
        raise ValueError(f"--input {' '.join(args.input)}: no text in these files; give files with documents in them")
    rows = compression_stats(tokenizers, groups)
    print(format_table(rows))
    if args.plot:
        print(f"wrote {plot_compression(rows, args.plot)}")
    if args.json:
        data = [dict(vars(r), bytes_per_token=r.bytes_per_token, tokens_per_char=r.tokens_per_char) for r in rows]
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


def _read_text_file(path: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"--file {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"--file {path} is a folder; give a text file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def _encode(args: argparse.Namespace) -> int:
    if args.file and args.text is not None:
        raise ValueError("give the text as an argument or --file, not both")
    if args.chat and args.allow_special:
        raise ValueError("--allow-special does not apply to --chat: chat content is always plain text")
    tok = load_tokenizer_arg(args.tokenizer)
    if args.file:
        text = _read_text_file(args.file)
    elif args.text is not None:
        text = args.text
    else:
        text = sys.stdin.read()
    if args.chat:
        ids = tok.apply_chat_template([{"role": "user", "content": text}])
    else:
        ids = tok.encode(text, allowed_special="all" if args.allow_special else frozenset())
    if args.show:
        for i in ids:
            print(f"{i}\t{tok.id_to_bytes(i)!r}")
    else:
        print(" ".join(map(str, ids)))
    n_bytes = len(text.encode("utf-8"))
    print(f"{len(ids)} tokens, {n_bytes} bytes, {n_bytes / max(len(ids), 1):.2f} bytes/token", file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "tokenizer", help="train a BPE vocabulary, compare compression, encode text",
        description="Qwen's byte-level BPE: learn a vocabulary with the same pre-tokenisation "
        "(digits split), compare compression of several tokenizers, look at ids.",
        formatter_class=fmt,
    )
    sub = p.add_subparsers(dest="tokenizer_command", metavar="COMMAND")

    t = sub.add_parser(
        "train", help="learn a vocabulary from text files", formatter_class=fmt,
        description="Learn a byte-level BPE (the `tokenizers` BPE trainer behind Qwen's split regex and NFC),\n"
        "add the Qwen special tokens right after the ordinary tokens, and write a folder that\n"
        "QwenTokenizer.from_pretrained reads (qwen.tiktoken, tokenizer_config.json, tokenizer.json).",
        epilog="examples:\n"
        "  openqwen tokenizer train --input runs/corpus --vocab-size 8192 --out runs/tok8k\n"
        "  openqwen tokenizer train --input notes.txt code/ --vocab-size 4096 --out runs/tok4k --num-extra 5\n"
        "  openqwen tokenizer train --extend ~/.cache/openqwen-artifacts/qwen.tiktoken \\\n"
        "      --input chinese.jsonl.gz --new-tokens 1000 --out runs/qwen-plus",
    )
    t.add_argument("--input", nargs="+", required=True, help="files or folders (.jsonl[.gz] with a 'text' field, .txt/.md/.py)")
    t.add_argument("--vocab-size", type=int, default=None, help="total ids including the special tokens")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument("--min-frequency", type=int, default=2, help="a pair must occur this often to be merged (default 2)")
    t.add_argument("--num-extra", type=int, default=None,
                   help="spare <|extra_N|> specials after <|endoftext|> <|im_start|> <|im_end|> (default 13: 16 specials; "
                   "not with --extend, which keeps the base's specials)")
    t.add_argument("--max-token-bytes", type=int, default=32, help="longest token in bytes (default 32)")
    t.add_argument("--extend", default=None, metavar="TOKENIZER",
                   help="grow this vocabulary instead of starting from bytes: its ranks are kept")
    t.add_argument("--new-tokens", type=int, default=None, help="with --extend: how many tokens to add")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.set_defaults(func=_train)

    s = sub.add_parser(
        "stats", help="compression per source or language (bytes per token), table and bar chart", formatter_class=fmt,
        description="Bytes per token and tokens per character of one or more tokenizers on each group of\n"
        "documents (JSONL 'lang' or 'source' field, or the file name), as the report's Figure 3.",
        epilog="examples:\n"
        "  openqwen tokenizer stats --input runs/corpus --plot runs/compression.png\n"
        "  openqwen tokenizer stats --tokenizer qwen=~/.cache/openqwen-artifacts/qwen.tiktoken \\\n"
        "      --tokenizer nano=runs/tok8k --input runs/corpus --group-by source --plot fig3.png",
    )
    s.add_argument("--tokenizer", action="append", default=None, metavar="[NAME=]PATH",
                   help="a tokenizer to compare (repeatable; default: the official qwen.tiktoken)")
    s.add_argument("--input", nargs="+", required=True, help="files or folders of documents")
    s.add_argument("--group-by", default="auto", help="auto (lang, else source, else file), source, lang, file, "
                   "or any JSONL field (default auto)")
    s.add_argument("--plot", default=None, help="write a PNG bar chart here")
    s.add_argument("--json", default=None, help="write the rows as JSON here")
    s.set_defaults(func=_stats)

    e = sub.add_parser(
        "encode", help="print the ids of a text", formatter_class=fmt,
        description="Encode text (argument, --file or stdin) and print its ids; token counts go to stderr.",
        epilog="examples:\n"
        "  openqwen tokenizer encode 'Hello, 世界 12345'\n"
        "  openqwen tokenizer encode --show --tokenizer runs/tok8k 'def f(x): return x'\n"
        "  openqwen tokenizer encode --chat 'What is 12+7?'",
    )
    e.add_argument("text", nargs="?", default=None, help="text to encode (default: stdin)")
    e.add_argument("--tokenizer", default=None, help="tokenizer path (default: the official qwen.tiktoken)")
    e.add_argument("--file", default=None, help="encode this file instead")
    e.add_argument("--allow-special", action="store_true", help="turn special-token text into special ids")
    e.add_argument("--chat", action="store_true", help="wrap the text as a user turn in ChatML")
    e.add_argument("--show", action="store_true", help="one line per token: id and bytes")
    e.set_defaults(func=_encode)

    def _help(args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(func=_help)
