"""The ``openqwen`` command line: one verb per stage of the pipeline.

Each verb lives next to the code it drives, in a module that exposes ``add_parser(subparsers)``;
that function builds the verb's parser and sets ``func`` (called with the parsed namespace; an int
return value is the exit status). Heavy imports stay inside ``func`` so ``--help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# verb modules, in pipeline order (data -> tokenizer -> train -> infer/serve -> agent -> eval)
COMMAND_MODULES = [
    "openqwen.data.cli",
    "openqwen.tokenizer.cli",
    "openqwen.train.cli",
    "openqwen.infer.cli",
    "openqwen.serve.cli",
    "openqwen.eval.cli",
    "openqwen.demo",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openqwen",
        description="The Qwen recipe end to end: data, tokenizer, pretraining, SFT, inference, serving, "
        "evaluation. Run `openqwen VERB --help` for each verb.",
        epilog="Start with `make demo` (the nano recipe on the built-in corpus), then e.g.\n"
        "  openqwen generate --model runs/demo/sft --chat --prompt 'What is 12+7?'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="VERB")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a stage not built yet
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
