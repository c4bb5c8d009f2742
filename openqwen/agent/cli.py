"""``openqwen agent``: answer a question with tools (calculator, a confined file reader, a sandboxed
Python interpreter), streaming the model's thoughts and the tools' observations to the terminal."""

from __future__ import annotations

import argparse
import json
import sys

EXAMPLES = """\
The model decides which tool to call; the loop runs it and feeds the result back, until the model
answers (or --max-steps / --max-tokens is reached). Tools:
  calculator   exact arithmetic, no Python evaluated
  read_file    text files inside --files DIR only (off without --files)
  python       a stateful Jupyter kernel in a sandbox: no network, uid nobody, its own work folder,
               memory/process/CPU/disk limits, a wall-clock timeout per call (off with --no-python)

Formats: --format fncall uses the model's own chat template (Qwen2.5's <tool_call> JSON; the default
when the template knows tools); --format react uses the first generation's ReAct prompt
(Thought / Action / Action Input / Observation), for any model.

examples:
  openqwen agent --model ~/.cache/openqwen-artifacts/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
      "What is 123456789 * 987654321?"
  openqwen agent --model runs/demo/sft --format react --no-python "What is 17 * 23?"
  openqwen agent --model MODEL --files ./notes --transcript run.jsonl "Summarise notes/todo.txt"
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..infer.loading import add_model_arguments, positive_int  # noqa: PLC0415 - light: no torch

    p = subparsers.add_parser("agent", help="answer a question with tools (calculator, file reader, sandboxed Python)",
                              description="Run a tool-using agent (ReAct or the model's own function calling) over "
                                          "the inference engine.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("question", help="the question (a quoted string)")
    p.add_argument("--format", choices=["auto", "fncall", "react"], default="auto",
                   help="tool format (default auto: fncall when the model's template knows tools, else react)")
    p.add_argument("--files", default=None, metavar="DIR", help="enable read_file, confined to DIR (default: off)")
    p.add_argument("--no-python", action="store_true", help="disable the sandboxed Python interpreter")
    p.add_argument("--python-timeout", type=float, default=30.0,
                   help="seconds per interpreter call before its kernel is killed (default 30)")
    p.add_argument("--python-memory-mb", type=positive_int, default=1024,
                   help="memory of the interpreter's sandbox in MB (default 1024)")
    p.add_argument("--require-cgroups", action="store_true",
                   help="refuse to run the interpreter unless pids/memory/cpu cgroups can be enforced here (default: "
                        "fall back to rlimits, as the sandbox's 'enforced' report says)")
    p.add_argument("--max-steps", type=positive_int, default=8, help="model generations at most (default 8)")
    p.add_argument("--max-tokens", type=positive_int, default=4096, help="tokens generated in all (default 4096)")
    p.add_argument("--max-new-tokens", type=positive_int, default=512, help="tokens per generation (default 512)")
    p.add_argument("--system", default=None, help="a system message (default: the template's own, if any)")
    p.add_argument("--transcript", default=None, metavar="FILE",
                   help="append every step as a JSON line to FILE (calls, observations, the answer)")
    p.add_argument("--quiet", action="store_true", help="print only the final answer")
    p.set_defaults(func=run)


def _printer(quiet: bool):
    def on_event(kind: str, data: dict) -> None:
        if quiet:
            return
        out = sys.stderr
        if kind == "model":
            out.write(data["text"])
        elif kind == "generation":
            out.write("\n")
        elif kind == "call":
            out.write(f"\033[36m-> {data['name']}({data['arguments']})\033[0m\n")
        elif kind == "observation":
            colour = "32" if data["ok"] else "31"
            text = data["content"] if len(data["content"]) < 2000 else data["content"][:2000] + " ..."
            out.write(f"\033[{colour}m<- {text}\033[0m\n")
        elif kind == "stop" and data["reason"] != "answer":
            out.write(f"[stopped: {data['reason']} after {data['steps']} steps, {data['tokens']} tokens]\n")
        out.flush()

    return on_event


def run(args: argparse.Namespace) -> int:
    from ..infer.engine import Engine  # noqa: PLC0415
    from ..infer.loading import load_model_and_tokenizer, set_threads  # noqa: PLC0415
    from ..tokenizer.template import ChatTemplate  # noqa: PLC0415
    from .fncall import FunctionCallFormat  # noqa: PLC0415
    from .interpreter import CodeInterpreter, interpreter_policy  # noqa: PLC0415
    from .loop import Agent, AgentLimits  # noqa: PLC0415
    from .react import ReactFormat  # noqa: PLC0415
    from .tools import ToolRegistry, calculator_tool, file_reader_tool, interpreter_tool  # noqa: PLC0415

    if args.python_timeout <= 0:
        raise ValueError(f"--python-timeout must be > 0, got {args.python_timeout}")
    if args.require_cgroups and not args.no_python:
        from .isolation import sandbox_support  # noqa: PLC0415

        problem = sandbox_support().cgroup_problem
        if problem:  # before the model loads: one line that says what to change
            raise ValueError(f"--require-cgroups: {problem}")
    limits = AgentLimits(args.max_steps, args.max_tokens, args.max_new_tokens).validate()
    template = ChatTemplate.from_checkpoint(args.model)
    fmt_name = args.format
    if fmt_name == "auto":
        fmt_name = "fncall" if template is not None and template.knows_tools else "react"
    fmt = FunctionCallFormat() if fmt_name == "fncall" else ReactFormat()
    fmt.template_for(template)  # fails early, with a clear line, before the model loads
    tools = ToolRegistry([calculator_tool()])
    if args.files:
        tools.register(file_reader_tool(args.files))
    interp = None
    if not args.no_python:
        interp = CodeInterpreter(interpreter_policy(memory_mb=args.python_memory_mb, wall_timeout_s=args.python_timeout,
                                                    require_cgroups=args.require_cgroups))
        tools.register(interpreter_tool(interp))
    set_threads(args.threads)
    model, tok = load_model_and_tokenizer(args.model, args.dtype, args.tokenizer)
    engine = Engine(model, tok, max_batch_size=1, max_seq_len=min(model.config.max_position_embeddings, 8192))
    try:
        if interp is not None:
            interp.start()
        agent = Agent(engine, tools, fmt, template=template, limits=limits, system=args.system,
                      on_event=_printer(args.quiet), transcript=args.transcript)
        result = agent.run(args.question)
    finally:
        engine.close()
        if interp is not None:
            interp.close()
    print(result.answer if result.answer is not None else json.dumps({"stopped": result.stop_reason}))
    return 0 if result.stop_reason == "answer" else 1
