"""HumanEval through transformers' GGUF loading, with EvalPlus' prompts, beside openqwen's completions.

The peer for the HumanEval gap study (docs/results.md): the same GGUF file dequantised by
transformers (``from_pretrained(..., gguf_file=...)``), the prompt built the way EvalPlus builds it
(the model's own chat template through ``apply_chat_template`` on a user turn and an assistant turn
cut at a marker), greedy decoding with EvalPlus' chat stop strings, and the same scoring program
(openqwen's sandbox, sanitized as ``openqwen eval`` scores chat replies). For each problem it
reports whether openqwen's prompt ids equal transformers', and, given ``--ours``, whether the two
completions are the same text (openqwen's cut at the same stop strings, which is what a greedy
decode with those stops would have produced) and which of the two pass.

Completions are appended to ``OUT.partial.jsonl`` as each batch finishes, so an interrupted run
resumes where it stopped. Batches are formed from problems of similar prompt length (left padding,
as transformers requires for batched decoder-only generation).

    .venv/bin/python benchmarks/humaneval_peer.py --ours docs/results/humaneval-coder0.5b-chat.completions.jsonl \\
        --count 164 --batch-size 8 --threads 1 --out runs/specialist/he-peer164.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from openqwen.artifacts import artifact_path
from openqwen.eval.sandbox import run_many
from openqwen.eval.tasks import code

_SPLIT = "-[[]]-openqwen-split-[[]]-"


def evalplus_prompt(hf_tok, problem_prompt: str) -> str:
    """The prompt text EvalPlus gives an instruct model (its codegen's chat branch)."""
    user = code.CHAT_INSTRUCTION.format(prompt=problem_prompt.strip())
    reply = f"{code.CHAT_RESPONSE_PREFIX}{_SPLIT}\n```\n"
    text = hf_tok.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
                                      tokenize=False)
    return text.split(_SPLIT)[0]


def cut_at_stops(text: str) -> str:
    """``text`` up to the first of EvalPlus' chat stop strings (the stop itself dropped, as
    openqwen's engine drops it)."""
    return code.truncate_base(text, code.CHAT_STOP)


def read_partial(path: Path) -> dict[int, dict]:
    """The rows an interrupted run already wrote to its ``OUT.partial.jsonl``, by problem index (none
    when the file does not exist): the run resumes after them."""
    if not path.exists():
        return {}
    return {int(r["index"]): r for r in map(json.loads, path.read_text().splitlines()) if r}


def read_ours(path: Path) -> dict[int, str]:
    """openqwen's completions by problem index: an ``openqwen eval --output`` JSON (its details) or the
    JSON lines of a partial / completions file."""
    text = path.read_text()
    if text.lstrip().startswith("{") and '"details"' in text[:100_000]:
        return {i: d["completion"] for i, d in enumerate(json.loads(text)["details"])}
    return {int(r["index"]): r["text"] for r in map(json.loads, text.splitlines()) if r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None, help="default: the qwen25-coder-0.5b-instruct-gguf artifact")
    ap.add_argument("--ours", default=None, help="openqwen's completions (an eval --output JSON, a run's "
                    ".partial.jsonl or a completions file) to compare with")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8, help="sequences generated together (default 8)")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers  # noqa: PLC0415

    from openqwen.eval.prompts import model_system_prompt  # noqa: PLC0415
    from openqwen.tokenizer import QwenTokenizer  # noqa: PLC0415
    from openqwen.tokenizer.chat import chat_prompt_ids  # noqa: PLC0415

    gguf = Path(args.gguf or artifact_path("qwen25-coder-0.5b-instruct-gguf"))
    problems = code.load_humaneval(artifact_path("humaneval"))[args.start: args.start + args.count]
    partial = Path(args.out + ".partial.jsonl")
    done = read_partial(partial)
    t0 = time.perf_counter()
    hf_tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_tok.padding_side = "left"
    oq_tok = QwenTokenizer.from_pretrained(gguf)
    system = model_system_prompt(gguf)
    todo = []
    for k, p in enumerate(problems):
        i = args.start + k
        if i in done:
            continue
        text = evalplus_prompt(hf_tok, p.prompt)
        hf_ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        oq_ids = chat_prompt_ids(oq_tok, [{"role": "system", "content": system},
                                          {"role": "user", "content": p.instruction}]) \
            + oq_tok.encode(code.CHAT_RESPONSE_PREFIX)
        todo.append((i, p, hf_ids, hf_ids == oq_ids))
    gen_s = 0.0
    if todo:
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                  dtype=torch.float32)
        model.generation_config.pad_token_id = hf_tok.pad_token_id
        print(f"transformers loaded in {time.perf_counter() - t0:.0f} s; {len(todo)} problems to generate",
              flush=True)
        eos = [hf_tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>", "<|im_start|>")]
        todo.sort(key=lambda t: len(t[2]))
        for b in range(0, len(todo), args.batch_size):
            batch = todo[b: b + args.batch_size]
            width = max(len(t[2]) for t in batch)
            pad = hf_tok.pad_token_id
            ids = torch.tensor([[pad] * (width - len(t[2])) + t[2] for t in batch])
            mask = torch.tensor([[0] * (width - len(t[2])) + [1] * len(t[2]) for t in batch])
            t1 = time.perf_counter()
            with torch.no_grad():
                out = model.generate(ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                     do_sample=False, stop_strings=code.CHAT_STOP, tokenizer=hf_tok,
                                     eos_token_id=eos)
            gen_s += time.perf_counter() - t1
            with partial.open("a") as f:
                for row, (i, p, hf_ids, equal) in zip(out, batch):
                    new = [t for t in row[width:].tolist() if t != pad]
                    text = cut_at_stops(hf_tok.decode(new, skip_special_tokens=True))
                    done[i] = {"index": i, "task_id": p.task_id, "prompt_ids_equal": equal,
                               "prompt_tokens": len(hf_ids), "new_tokens": len(new), "transformers": text}
                    f.write(json.dumps(done[i]) + "\n")
            print(f"batch {b // args.batch_size + 1}: {len(done)}/{len(problems)} done, "
                  f"{gen_s:.0f} s generating", flush=True)
    rows = [done[args.start + k] for k in range(len(problems))]
    ours = read_ours(Path(args.ours)) if args.ours else {}
    runs = run_many([code.build_program(p, r["transformers"], "chat") for p, r in zip(problems, rows)],
                    10.0, 1024, progress=False)
    for r, run in zip(rows, runs):
        r["transformers_passed"] = run.passed
    if ours and all(r["index"] in ours for r in rows):
        cut = [cut_at_stops(ours[r["index"]]) for r in rows]
        ours_runs = run_many([code.build_program(p, c, "chat") for p, c in zip(problems, cut)],
                             10.0, 1024, progress=False)
        for r, c, run in zip(rows, cut, ours_runs):
            r["ours"] = c
            r["completion_equal"] = c == r["transformers"]
            r["ours_passed"] = run.passed
    summary = {"problems": len(rows), "prompt_ids_equal": sum(r["prompt_ids_equal"] for r in rows),
               "transformers_pass": sum(r["transformers_passed"] for r in rows),
               "transformers_generate_s": round(gen_s, 1)}
    if rows and "ours" in rows[0]:
        summary.update(completions_equal=sum(r["completion_equal"] for r in rows),
                       ours_pass=sum(r["ours_passed"] for r in rows),
                       both_pass=sum(r["ours_passed"] and r["transformers_passed"] for r in rows),
                       only_transformers=[r["task_id"] for r in rows if r["transformers_passed"] and not r["ours_passed"]],
                       only_ours=[r["task_id"] for r in rows if r["ours_passed"] and not r["transformers_passed"]])
    print(json.dumps(summary))
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
