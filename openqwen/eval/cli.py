"""``openqwen eval`` (benchmarks) and ``openqwen contamination`` (13-gram overlap report)."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  # MMLU 5-shot (the report's base-model protocol) on 5 questions per subject
  openqwen eval --model runs/demo/pretrain --task mmlu --per-subject 5 --output results/mmlu.json
  # a chat model: 0-shot ChatML, letters scored at the assistant's first token
  openqwen eval --model qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --task mmlu --mode chat --limit 200
  # HumanEval, greedy pass@1, completions run in the sandbox
  openqwen eval --model qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --task humaneval --mode chat \\
      --output results/humaneval.json
  # pass@1/pass@10 from 20 samples at temperature 0.8
  openqwen eval --model MODEL --task humaneval --samples 20 --temperature 0.8
  # the same task through an OpenAI-compatible server (openqwen serve, or vLLM on a cluster)
  openqwen eval --api http://localhost:8000/v1 --model qwen2.5-coder --tokenizer MODEL_DIR \
      --task humaneval --mode chat --batch-size 32
  # Math401-style arithmetic (generated from --seed), GSM8K-shaped file 8-shot
  openqwen eval --model MODEL --task math401 --mode chat
  openqwen eval --model MODEL --task gsm8k --data gsm8k_test.jsonl
  # perplexity at several context lengths (default text: the Shakespeare artifact)
  openqwen eval --model MODEL --task perplexity --context-lengths 256 512 1024 --data book.txt

  # the built-in held-out math set (worked solutions, per-category accuracy), e.g. after math-sft.yaml
  openqwen eval --model runs/math-sft --task synthetic-math --mode chat --limit 180

tasks: mmlu, ceval, cmmlu, mc (any file in the MMLU shape), humaneval, mbpp, gsm8k, math401,
synthetic-math, perplexity.
The JSON result goes to --output, a markdown table next to it (.md) and to stdout."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..infer.loading import add_model_arguments  # noqa: PLC0415 - light: no torch
    from .harness import TASKS  # light: no torch

    p = subparsers.add_parser(
        "eval", help="evaluate a model on a benchmark (MMLU, C-Eval, HumanEval, GSM8K, Math401, perplexity)",
        description="Evaluate a model on one benchmark task and write a JSON result + markdown table.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--api", default=None, metavar="URL",
                   help="generate through an OpenAI-compatible server (openqwen serve, vLLM) at URL, e.g. "
                        "http://localhost:8000/v1; --model is then the served model's name and --tokenizer its "
                        "tokenizer (generation tasks only)")
    p.add_argument("--api-key", default=None, help="key for --api (default: $OPENAI_API_KEY)")
    p.add_argument("--mode", choices=["base", "chat"], default="base",
                   help="base: raw k-shot prompts; chat: ChatML 0-shot (default: base)")
    p.add_argument("--shots", type=int, default=None,
                   help="few-shot examples (default: the report's protocol: MMLU/C-Eval 5, GSM8K 8, MBPP 3, "
                        "HumanEval 0 for base models; 0 in chat mode)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items")
    p.add_argument("--system-prompt", default=None,
                   help="chat mode: the system message (default: the model's own, read from the chat template "
                        "stored with it; Qwen2.5: 'You are Qwen, created by Alibaba Cloud. ...')")
    p.add_argument("--per-subject", type=int, default=None,
                   help="multiple choice: first N questions of every subject")
    p.add_argument("--data", default=None, help="task file (default: the fetched artifact for mmlu, humaneval, "
                   "perplexity; required for ceval, cmmlu, mc, mbpp, gsm8k)")
    p.add_argument("--output", default=None, help="JSON result file (the markdown table goes next to it, .md)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass / engine batch (default 8)")
    p.add_argument("--samples", type=int, default=1, help="code: completions per problem for pass@k (default 1)")
    p.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling when temperature > 0 (default 0.95)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default 512; 48 for math401, 128 for synthetic-math)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed and Math401 generation seed (default 0)")
    p.add_argument("--lengths", dest="context_lengths", type=_comma_ints, default=argparse.SUPPRESS,
                   metavar="L1,L2,...", help="perplexity: the same as --context-lengths, comma-separated "
                   "(e.g. 1024,2048,4096,8192; docs/long-context.md)")
    p.add_argument("--context-lengths", type=int, nargs="+", default=[256, 512, 1024],
                   help="perplexity: window lengths in tokens (default 256 512 1024)")
    p.add_argument("--max-windows", type=int, default=16, help="perplexity: windows per length (default 16)")
    p.add_argument("--timeout", type=float, default=10.0, help="code: seconds per sandboxed test run (default 10)")
    p.add_argument("--workers", type=int, default=None, help="code: sandboxed runs in parallel")
    p.add_argument("--no-sanitize", action="store_true",
                   help="code, chat mode: run the reply's code block as it is, demo prints/asserts included "
                        "(default: keep only imports, definitions and plain assignments, as evalplus does)")
    p.add_argument("--resume", action="store_true",
                   help="generation tasks: keep the completions in OUTPUT.partial.jsonl from an interrupted "
                        "run with the same settings and generate only the rest")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_eval)

    c = subparsers.add_parser(
        "contamination", help="13-gram overlap between training data and evaluation tasks",
        description="Report, per task, the share of items that share a 13-word window with the training data.",
        epilog="example:\n  openqwen contamination --train runs/demo/data/corpus --tasks mmlu humaneval "
               "--output results/contamination.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("--train", nargs="+", required=True,
                   help="training data: files/folders of .jsonl(.gz) with a text field, text files, .zip, "
                   "or @LIST (one path per line)")
    c.add_argument("--tasks", nargs="+", default=["mmlu", "humaneval"],
                   choices=["mmlu", "ceval", "cmmlu", "mc", "humaneval", "mbpp", "gsm8k"])
    c.add_argument("--data", nargs="*", default=[], metavar="TASK=PATH", help="task files, e.g. gsm8k=test.jsonl")
    c.add_argument("--n", type=int, default=13, help="n-gram length in words (default 13)")
    c.add_argument("--output", default=None, help="JSON report file")
    c.set_defaults(func=_run_contamination)


def _comma_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"expected lengths like 1024,2048,4096 (each >= 2), got {text!r}")
    return values


def _run_eval(args: argparse.Namespace) -> int:
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from ..infer.loading import long_context_from_args, set_threads  # noqa: PLC0415
    from .harness import EvalConfig, markdown_table, run_eval, write_result  # noqa: PLC0415

    set_threads(args.threads)
    cfg = EvalConfig(
        model=args.model, task=args.task, mode=args.mode, shots=args.shots, limit=args.limit,
        per_subject=args.per_subject, data=args.data, tokenizer=args.tokenizer, dtype=args.dtype,
        system_prompt=args.system_prompt, api_url=args.api,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
        batch_size=args.batch_size, samples=args.samples, temperature=args.temperature, top_p=args.top_p,
        max_new_tokens=args.max_new_tokens, seed=args.seed, context_lengths=args.context_lengths,
        long_context=long_context_from_args(args),
        max_windows=args.max_windows, timeout_s=args.timeout, workers=args.workers, sanitize=not args.no_sanitize,
        progress=not args.no_progress,
        partial_path=str(args.output) + ".partial.jsonl" if args.output else None,
        resume=args.resume,
    )
    if args.resume and not args.output:
        raise ValueError("--resume needs --output (the partial file is OUTPUT.partial.jsonl)")
    if cfg.partial_path and not cfg.resume:
        Path(cfg.partial_path).unlink(missing_ok=True)  # a fresh run, not appended to an old one
    result = run_eval(cfg)  # bad input raises ValueError / FileNotFoundError: one line from the dispatcher
    if args.output:
        js, md = write_result(result, args.output)
        print(f"wrote {js} and {md}", file=sys.stderr)
        if cfg.task == "perplexity":  # the curve beside the table (docs/long-context.md)
            from .tasks.perplexity import plot_curves  # noqa: PLC0415

            curve = {int(L): r["perplexity"] for L, r in result["breakdown"].items()}
            png = plot_curves({Path(cfg.model).name: curve}, Path(js).with_suffix(".png"))
            print(f"wrote {png}", file=sys.stderr)
        Path(cfg.partial_path).unlink(missing_ok=True)
    print(markdown_table(result), end="")
    return 0


def _run_contamination(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from .contamination import markdown, report  # noqa: PLC0415

    for path in args.train:  # before the evaluation sets are read: a typo answers at once
        if not path.startswith("@") and not Path(path).expanduser().exists():
            raise FileNotFoundError(f"--train {path} does not exist; pass training data files or folders")
    data = {}
    for kv in args.data:
        if "=" not in kv:
            raise ValueError(f"--data takes TASK=PATH, got {kv!r}")
        k, v = kv.split("=", 1)
        data[k] = v
    rep = report(args.train, args.tasks, data, n=args.n, progress=True)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(rep, indent=2) + "\n")
    print(markdown(rep), end="")
    return 0
