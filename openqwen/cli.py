"""The ``openqwen`` command line: one verb per stage of the pipeline.

Each verb lives next to the code it drives, in a module that exposes ``add_parser(subparsers)``;
that function builds the verb's parser and sets ``func`` (called with the parsed namespace; an int
return value is the exit status). Heavy imports stay inside ``func`` so ``--help`` is fast.

Bad input gets one line, never a traceback: a verb raises an exception of the user-error family
(:data:`USER_ERRORS`: ``ValueError`` and its subclasses such as ``CheckpointError``, missing or
unreadable files, a non-finite loss, undecodable JSON/YAML/text) with a message that says what to
fix, and :func:`main` prints ``openqwen VERB: error: MESSAGE`` on stderr and exits with 2, as argparse
does for a bad flag. Any other exception is a bug and keeps its traceback. ``OPENQWEN_DEBUG=1``
re-raises user errors too, for developers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

# verb modules, in pipeline order (data -> tokenizer -> train -> infer/serve -> agent -> eval)
COMMAND_MODULES = [
    "openqwen.data.cli",
    "openqwen.tokenizer.cli",
    "openqwen.train.cli",
    "openqwen.infer.cli",
    "openqwen.infer.quantize_cli",  # quantize (GPTQ / round-to-nearest)
    "openqwen.serve.cli",
    "openqwen.align.reward_cli",  # reward, dpo
    "openqwen.align.ppo_cli",     # ppo
    "openqwen.agent.cli",         # agent
    "openqwen.eval.cli",
    "openqwen.demo",
]


USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # CheckpointError, TokenizerError, json.JSONDecodeError, UnicodeDecodeError are ValueErrors
    FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError,
    FloatingPointError,  # a loss that went NaN/inf
)
"""Exceptions that mean "the input is wrong" (``yaml.YAMLError`` too, when a verb loaded yaml)."""


def _user_errors() -> tuple[type[BaseException], ...]:
    yaml = sys.modules.get("yaml")  # not imported here: only a verb that read YAML can raise its errors
    return USER_ERRORS + ((yaml.YAMLError,) if yaml is not None else ())


DEBUG_ENV = "OPENQWEN_DEBUG"


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's parser with a bad flag answered in one line that points at ``--help`` (argparse
    prints the whole usage block first); exit status 2 as argparse's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="openqwen",
        description="The Qwen recipe end to end: data, tokenizer, pretraining, SFT, inference, serving, "
        "evaluation. Run `openqwen VERB --help` for each verb.",
        epilog="Start with `make demo` (the nano recipe on the built-in corpus), then e.g.\n"
        "  openqwen generate --model runs/demo/sft --chat --prompt 'What is 12+7?'\n\n"
        "Bad input (a missing file, a bad value, a corrupt model, a NaN loss) is one line on stderr,\n"
        f"'openqwen VERB: error: ...', and exit status 2. Set {DEBUG_ENV}=1 for the traceback.",
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
    except _user_errors() as e:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(f"openqwen {args.command}: error: {error_line(e)}", file=sys.stderr)
        return 2
    return int(rc or 0)


def error_line(e: BaseException) -> str:
    """The exception's message on one line; an OSError from the system reads ``PATH: reason``."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
