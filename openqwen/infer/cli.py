"""``openqwen generate`` (one prompt, plain or chat) and ``openqwen chat`` (interactive terminal chat)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from .loading import add_model_arguments, positive_int

EXAMPLES_GENERATE = """examples:
  openqwen generate --model runs/demo/sft --chat --prompt 'What is 12+7?'
  openqwen generate --model ~/.cache/openqwen-artifacts/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
      --chat --dtype int8 --stream --prompt 'Write a Python function that reverses a string.'
  openqwen generate --model runs/demo/pretrain --prompt 'Once upon a time' --temperature 0 --max-new-tokens 40
  # fill in the middle of a function (prefix-suffix-middle prompt; prints the middle only)
  openqwen generate --model qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --temperature 0 \
      --fim-prefix $'def area(w, h):\n    ' --fim-suffix $'\n    return result\n' --stop $'\n\n'
"""

EXAMPLES_CHAT = """examples:
  openqwen chat --model runs/demo/sft
  openqwen chat --model qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --dtype int8 --system 'You are terse.'

commands inside the chat:
  /reset              forget the conversation (keeps the system prompt)
  /system TEXT        set the system prompt (and reset the conversation)
  /set NAME=VALUE     change a sampling setting, e.g. /set temperature=0.7  /set max_new_tokens=128
                      /set stop=END,STOP  /set seed=none   (see /set with no argument for the list)
  /help               this help
  /quit               leave (Ctrl-D works too)
"""


def _add_model_args(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--max-seq-len", type=positive_int, default=None,
                   help="positions per request, prompt + output (default: min(model max, 8192))")
    p.add_argument("--chat-template", default="auto",
                   help="how chats are rendered: auto (default) the model's own jinja template when it has one "
                        "(a GGUF's tokenizer.chat_template, tokenizer_config.json; Qwen2.5's adds its own default "
                        "system prompt), else the built-in ChatML; chatml: always ChatML; or a .jinja file")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the release's chat settings)")
    g.add_argument("--max-new-tokens", type=int, default=512, help="most tokens to generate [512]")
    g.add_argument("--temperature", type=float, default=1.0, help="0 = greedy [1.0]")
    g.add_argument("--top-p", type=float, default=0.8, help="nucleus sampling mass, 1 = off [0.8]")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens, 0 = off [0]")
    g.add_argument("--repetition-penalty", type=float, default=1.1, help="1 = off [1.1]")
    g.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling")
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--greedy", action="store_true", help="argmax decoding (same as --temperature 0)")


def add_parser(subparsers: Any) -> None:
    gen = subparsers.add_parser(
        "generate", help="generate text for one prompt (plain or chat)",
        description="Generate a completion for one prompt with the openqwen engine.",
        epilog=EXAMPLES_GENERATE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(gen)
    src = gen.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="the prompt text")
    src.add_argument("--prompt-file", help="read the prompt from this file ('-' for stdin)")
    src.add_argument("--fim-prefix", default=None,
                     help="fill in the middle: the code before the gap (Qwen2.5-Coder's <|fim_prefix|> format; "
                          "the output is the middle; use --temperature 0)")
    gen.add_argument("--fim-suffix", default=None, help="fill in the middle: the code after the gap [empty]")
    gen.add_argument("--chat", action="store_true",
                     help="wrap the prompt as a user turn in the chat template (see --chat-template)")
    gen.add_argument("--system", default=None, help="system prompt with --chat")
    gen.add_argument("--stream", action="store_true", help="print text as it is generated")
    gen.add_argument("--show-stats", action="store_true", help="print token counts and speed to stderr")
    _add_sampling_args(gen)
    gen.set_defaults(func=run_generate)

    chat = subparsers.add_parser(
        "chat", help="interactive terminal chat with streaming and history",
        description="Chat with a model in the terminal. Replies stream as they are generated; history is "
        "kept and trimmed oldest-first to the window.",
        epilog=EXAMPLES_CHAT, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_args(chat)
    chat.add_argument("--system", default=None,
                      help="system prompt [the template's default; ChatML's: You are a helpful assistant.]")
    chat.add_argument("--window", type=positive_int, default=6144, help="history window in tokens [6144]")
    _add_sampling_args(chat)
    chat.set_defaults(func=run_chat)


def _params_from_args(args: argparse.Namespace):
    from .sampling import SamplingParams  # noqa: PLC0415

    return SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        repetition_penalty=args.repetition_penalty, seed=args.seed, stop=list(args.stop), greedy=args.greedy,
    )


def load_engine_from_args(args: argparse.Namespace, **engine_kwargs: Any):
    """The engine for the flags of :func:`openqwen.infer.loading.add_model_arguments` (``generate``,
    ``chat`` and ``serve`` load through this)."""
    from ..tokenizer.template import chat_template_from_flag  # noqa: PLC0415
    from .loading import load_model_and_tokenizer, long_context_from_args, set_threads  # noqa: PLC0415

    set_threads(args.threads)
    # a bad --chat-template answers before the model loads; the engine's chat() renders with it
    engine_kwargs.setdefault("chat_template", chat_template_from_flag(getattr(args, "chat_template", "auto"),
                                                                      args.model))
    # what Engine.from_pretrained does, with the engine (torch) imported only once the model is
    # known to exist: a mistyped path answers at once
    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype, args.tokenizer, long_context_from_args(args))
    from .engine import Engine  # noqa: PLC0415

    engine_kwargs.setdefault("name", Path(args.model).name)
    return Engine(model, tokenizer, **engine_kwargs)


def _read_prompt(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"--prompt-file {path} {'is a folder' if p.is_dir() else 'does not exist'}; "
                                "pass a text file ('-' reads stdin)")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"--prompt-file {path} is not UTF-8 text; pass a text file") from None


def run_generate(args: argparse.Namespace) -> int:
    import time  # noqa: PLC0415

    if args.fim_suffix is not None and args.fim_prefix is None:
        raise ValueError("--fim-suffix needs --fim-prefix (the code before the gap; it may be '')")
    if args.fim_prefix is not None and args.chat:
        raise ValueError("--fim-prefix is a plain-completion prompt; drop --chat")
    params = _params_from_args(args)  # a bad value: ValueError, one line from the dispatcher
    prompt = _read_prompt(args.prompt_file) if args.prompt_file else args.prompt
    engine = load_engine_from_args(args, max_batch_size=1, max_seq_len=args.max_seq_len)
    start = time.perf_counter()
    try:
        if args.fim_prefix is not None:
            from ..train.fim import fim_prompt_ids, fim_stop_ids  # noqa: PLC0415

            ids = fim_prompt_ids(engine.tokenizer, args.fim_prefix, args.fim_suffix or "")
            handle = engine.submit(ids, params, extra_stop_ids=fim_stop_ids(engine.tokenizer))
        elif args.chat:
            messages = ([{"role": "system", "content": args.system}] if args.system else [])
            messages.append({"role": "user", "content": prompt})
            handle = engine.submit_chat(messages, params)
        else:
            handle = engine.submit(prompt, params)
    except BaseException:
        engine.close()
        raise
    for ev in handle:
        if args.stream and ev.text:
            print(ev.text, end="", flush=True)
    done = handle.result()
    print(done.text if not args.stream else "")
    if args.show_stats:
        dt = time.perf_counter() - start
        print(f"[{done.prompt_tokens} prompt + {done.completion_tokens} generated tokens in {dt:.2f} s, "
              f"finish: {done.finish_reason}]", file=sys.stderr)
    engine.close()
    return 0


def _coerce(field: dataclasses.Field, text: str) -> Any:
    """Parse a /set value by the field's declared type (never eval)."""
    t = str(field.type)
    low = text.strip().lower()
    if "list[str]" in t:
        return [s for s in text.split(",") if s] if text else []
    if "list[int]" in t:
        return [int(s) for s in text.split(",") if s.strip()]
    if "None" in t and low in ("none", "null", ""):
        return None
    if t.startswith("bool"):
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected true/false, got {text!r}")
    if t.startswith("int"):
        return int(text)
    if t.startswith("float"):
        return float(text)
    raise ValueError(f"cannot set {field.name}")


def run_chat(args: argparse.Namespace) -> int:
    from .sampling import SamplingParams  # noqa: PLC0415

    params = _params_from_args(args)
    engine = load_engine_from_args(args, max_batch_size=1, max_seq_len=args.max_seq_len)
    fields = {f.name: f for f in dataclasses.fields(SamplingParams)}
    system = args.system
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    if interactive:
        rendering = "the model's own chat template" if engine.chat_template is not None else "ChatML"
        print(f"openqwen chat with {args.model} ({args.dtype}, {rendering}). /help for commands, /quit to leave.")
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            rest = rest.strip()
            if cmd in ("/quit", "/exit"):
                break
            if cmd == "/help":
                print(EXAMPLES_CHAT.split("commands inside the chat:\n", 1)[1], end="")
            elif cmd == "/reset":
                history.clear()
                print("[conversation reset]")
            elif cmd == "/system":
                system = rest or None
                history.clear()
                print(f"[system prompt set: {system or 'default'}; conversation reset]")
            elif cmd == "/set":
                name, eq, value = rest.partition("=")
                name = name.strip()
                if not eq or name not in fields:
                    print("usage: /set NAME=VALUE with NAME one of: " + ", ".join(fields))
                    continue
                try:
                    params = params.replace(**{name: _coerce(fields[name], value.strip())})
                except (ValueError, TypeError) as e:
                    print(f"[not changed: {e}]")
                    continue
                print(f"[{name} = {getattr(params, name)!r}]")
            else:
                print(f"[unknown command {cmd}; /help lists them]")
            continue
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        try:
            handle = engine.submit_chat(messages, params, window=args.window)
        except ValueError as e:
            history.pop()
            print(f"[error: {e}]")
            continue
        try:
            for ev in handle:
                if ev.text:
                    print(ev.text, end="", flush=True)
        except KeyboardInterrupt:
            handle.cancel()
            print("\n[interrupted]")
        done = handle.result()
        print()
        history.append({"role": "assistant", "content": done.text})
    engine.close()
    return 0
