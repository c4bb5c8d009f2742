"""Decode speed of this checkout against another revision, side by side in one run (a refactor check).

    .venv/bin/python -m benchmarks.bench_ab --baseline REV [--dtypes int8 fp32] [--rounds 3] [--tokens 64]

REV is a git revision (checked out into a temporary worktree) or the path of another checkout. Each
round runs the baseline and this tree in turn, each in a fresh process with 2 threads, on the real
Qwen2.5-Coder-0.5B GGUF: batch-1 decode through ``Engine.submit`` (prefill and the first token
excluded), so both sides pay the same prompt and the same loading. Taking turns cancels the drift of
a shared machine's memory bandwidth better than two separate runs would. Prints a table of tokens/s
and the new/baseline ratio per precision; run it under ``../shared/tools/quiet``. Without
``--baseline`` it says so and exits 0 (``make bench`` runs every module).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Write a Python function that checks whether a number is prime, with a docstring and tests."


def worker(dtype: str, tokens: int, model_path: str) -> None:
    """Runs inside the checkout under test (its ``openqwen`` comes first on PYTHONPATH)."""
    import torch

    torch.set_num_threads(2)
    try:  # where the loader lives moved in the engine/trainer redesign; accept both layouts
        from openqwen.infer.loading import load_for_inference
    except ImportError:
        from openqwen.infer.engine import load_for_inference
    from openqwen.infer.engine import Engine
    from openqwen.infer.sampling import SamplingParams
    from openqwen.tokenizer import QwenTokenizer

    engine = Engine(load_for_inference(model_path, dtype), QwenTokenizer.from_pretrained(model_path),
                    max_batch_size=1, max_seq_len=512, background=False)
    prompt = engine.tokenizer.encode(PROMPT)
    engine.generate([prompt], SamplingParams(max_new_tokens=4))  # warm-up: kernels, caches
    events = iter(engine.submit(prompt, SamplingParams(max_new_tokens=tokens, ignore_eos=True)))
    next(events)  # the first token comes with the prefill
    start, n = time.perf_counter(), 0
    for ev in events:
        n += len(ev.token_ids)
    print(json.dumps({"tokens": n, "tok_s": n / (time.perf_counter() - start), "path": engine.fused_status}))


def run_side(checkout: Path, dtype: str, tokens: int, model_path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", dtype, str(tokens), model_path],
                         env=env, cwd=checkout, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline_checkout(rev_or_path: str, tmp: Path) -> Path:
    if Path(rev_or_path).is_dir():
        return Path(rev_or_path).resolve()
    target = tmp / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(target), rev_or_path], cwd=ROOT, check=True,
                   capture_output=True)
    return target


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="git revision or path of the checkout to compare against")
    ap.add_argument("--dtypes", nargs="+", default=["int8", "fp32"], choices=["fp32", "bf16", "int8", "int4"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    if not args.baseline:
        print("bench_ab: no --baseline given; nothing to compare (e.g. --baseline HEAD~10)")
        return 0
    from openqwen.artifacts import artifact_path

    model = artifact_path("qwen25-coder-0.5b-instruct-gguf")
    if model is None:
        print("bench_ab: the Qwen2.5-Coder GGUF artifact is not fetched (../shared/tools/fetch-artifacts)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        base = baseline_checkout(args.baseline, Path(tmp))
        try:
            rates: dict[tuple[str, str], list[float]] = {}
            for r in range(args.rounds):
                for dtype in args.dtypes:
                    for side, checkout in (("baseline", base), ("this tree", ROOT)):
                        res = run_side(checkout, dtype, args.tokens, str(model))
                        rates.setdefault((side, dtype), []).append(res["tok_s"])
                        print(f"round {r + 1} {dtype:5s} {side:9s} {res['tok_s']:6.2f} tok/s ({res['path']})", flush=True)
        finally:
            if not Path(args.baseline).is_dir():
                subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    print(f"\n| precision | baseline {args.baseline} tok/s | this tree tok/s | ratio |\n|---|---|---|---|")
    for dtype in args.dtypes:
        old, new = statistics.mean(rates[("baseline", dtype)]), statistics.mean(rates[("this tree", dtype)])
        print(f"| {dtype} | {old:.2f} | {new:.2f} | {new / old:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
