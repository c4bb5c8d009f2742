"""Evaluation speed, each number against a peer measured in the same run.

1. Multiple-choice scoring (5-shot MMLU prompts, real tokenizer, a random nano model): Engine.score's
   shared-prefix KV reuse against plain right-padded batches of the full prompts,
   and against transformers' Qwen2ForCausalLM scoring the full prompts (last-position logits).
2. The sandbox: HumanEval canonical solutions through ``run_many`` (limits, namespaces, cgroup)
   against a bare ``subprocess.run([python, file])`` per program with the same parallelism.

Run: ``.venv/bin/python -m benchmarks.bench_eval [--questions 24] [--programs 64]``; writes
``docs/benchmarks/eval.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from openqwen import Qwen, QwenConfig, QwenTokenizer
from openqwen.artifacts import artifact_path
from openqwen.eval import sandbox
from openqwen.eval.tasks import code, multiple_choice as mc
from openqwen.infer.engine import Engine


def bench_mc(n_questions: int, batch: int) -> list[str]:
    tok = QwenTokenizer.from_pretrained(artifact_path("qwen-tiktoken"))
    items, _ = mc.load_mc(artifact_path("mmlu-test"))
    examples, rest = mc.split_shots(items, 5)
    subject = rest[0].subject
    qs = [it for it in rest if it.subject == subject][:n_questions]
    prompts = []
    for it in qs:
        shared, question = mc.base_prompt_parts(it, examples[subject], False)
        prompts.append(tok.encode(shared) + tok.encode(question))
    torch.manual_seed(0)
    cfg = QwenConfig(vocab_size=151936, hidden_size=256, intermediate_size=688, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=8, tie_word_embeddings=True,
                     seq_length=2048, max_position_embeddings=4096)
    model = Qwen(cfg).eval()
    letters = mc.letter_token_ids(tok, True)

    def ours() -> torch.Tensor:  # a fresh engine: no prefix cached by the warm-up call
        return mc.letter_logprobs(Engine(model, tok, max_batch_size=1, background=False), prompts, letters, batch)

    @torch.no_grad()
    def no_reuse() -> torch.Tensor:  # plain right-padded batches of the full prompts
        out = []
        for s in range(0, len(prompts), batch):
            rows = prompts[s : s + batch]
            ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r)
            h = model.hidden_states(ids)[torch.arange(len(rows)), torch.tensor([len(r) - 1 for r in rows])]
            out.append(torch.log_softmax(model.lm_head(h).float(), -1)[:, letters])
        return torch.cat(out)

    import transformers  # noqa: PLC0415

    from openqwen.checkpoint import hf_state_from_model  # noqa: PLC0415

    hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, tie_word_embeddings=True,
        max_position_embeddings=cfg.max_position_embeddings, attn_implementation="sdpa")).eval()
    hf.load_state_dict(hf_state_from_model(model), strict=False)
    hf.tie_weights()

    @torch.no_grad()
    def transformers_full() -> torch.Tensor:
        out = []
        for p in prompts:  # one prompt per call: no padding subtleties, what a simple harness does
            out.append(torch.log_softmax(hf(input_ids=torch.tensor([p]), logits_to_keep=1).logits[0, -1], -1)[letters])
        return torch.stack(out)

    rows, ref = [], None
    times = {}
    for name, fn in [("ours (shared-prefix KV reuse)", ours), ("plain right-padded batches", no_reuse),
                     ("transformers, full prompts", transformers_full)]:
        fn()  # warm-up
        t0 = time.perf_counter()
        got = fn()
        times[name] = time.perf_counter() - t0
        ref = got if ref is None else ref
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3)  # same scores, or the speed is moot
    base = times["ours (shared-prefix KV reuse)"]
    tokens = sum(len(p) for p in prompts)
    for name, t in times.items():
        rows.append(f"| {name} | {t:.2f} s | {tokens / t:,.0f} | {t / base:.2f}x |")
    return [f"{len(prompts)} five-shot MMLU prompts ({subject}), mean {tokens // len(prompts)} tokens, "
            f"batch {batch}; random model d=256, 8 layers, vocab 151,936; all three give equal scores.", "",
            "| scorer | time | prompt tokens/s | time vs ours |", "|---|---:|---:|---:|", *rows]


def bench_sandbox(n_programs: int, workers: int) -> list[str]:
    problems = code.load_humaneval(artifact_path("humaneval"))[:n_programs]
    programs = [code.build_program(p, p.canonical_solution, "base") for p in problems]

    def bare(prog: str) -> bool:
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "main.py"
            f.write_text(prog)
            return subprocess.run([sys.executable, str(f)], cwd=d, capture_output=True, timeout=20).returncode == 0

    t0 = time.perf_counter()
    res = sandbox.run_many(programs, timeout_s=20, workers=workers)
    t_ours = time.perf_counter() - t0
    assert all(r.passed for r in res)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        ok = list(pool.map(bare, programs))
    t_bare = time.perf_counter() - t0
    assert all(ok)
    return [f"{len(programs)} HumanEval canonical solutions, {workers} at a time; enforced: "
            f"{res[0].enforced}.", "",
            "| runner | time | programs/s | time vs bare |", "|---|---:|---:|---:|",
            f"| sandbox.run_many | {t_ours:.2f} s | {len(programs) / t_ours:.1f} | {t_ours / t_bare:.2f}x |",
            f"| bare subprocess.run | {t_bare:.2f} s | {len(programs) / t_bare:.1f} | 1.00x |"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--programs", type=int, default=64)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs/benchmarks/eval.md")
    args = ap.parse_args()
    if artifact_path("mmlu-test") is None or artifact_path("humaneval") is None:
        print("needs the mmlu-test, humaneval and qwen-tiktoken artifacts", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    mc_rows = bench_mc(args.questions, args.batch)
    sb_rows = bench_sandbox(args.programs, args.workers)
    text = "\n".join([
        "# Evaluation benchmarks", "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs shared with other jobs (ratios matter, not "
        f"absolute times), torch {torch.__version__}, {args.threads} threads. Date: "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"Command: `.venv/bin/python -m benchmarks.bench_eval --questions {args.questions} --batch {args.batch} "
        f"--programs {args.programs} --workers {args.workers}`", "",
        "## Multiple-choice scoring", "", *mc_rows, "",
        "## Sandboxed execution", "", *sb_rows, "",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
