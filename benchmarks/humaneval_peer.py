"""HumanEval through transformers' GGUF loading, with EvalPlus' prompts, beside openqwen's completions.

The peer for the HumanEval gap study (docs/results.md): the same GGUF file dequantised by
transformers (``from_pretrained(..., gguf_file=...)``), the prompt built the way EvalPlus builds it
(the model's own chat template through ``apply_chat_template`` on a user turn and an assistant turn
cut at a marker), greedy decoding with EvalPlus' chat stop strings, and the same scoring program
(openqwen's sandbox). For each problem it reports whether openqwen's prompt ids equal transformers'
and whether the two completions are the same text.

    .venv/bin/python benchmarks/humaneval_peer.py --ours runs/specialist/he-evalplus.json.partial.jsonl \\
        --start 0 --count 8 --out runs/specialist/peer.json
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
    ap.add_argument("--ours", required=True, help="openqwen's completions (a run's .partial.jsonl or completions file)")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=8)
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
    t0 = time.perf_counter()
    hf_tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    load_s = time.perf_counter() - t0
    oq_tok = QwenTokenizer.from_pretrained(gguf)
    system = model_system_prompt(gguf)
    rows, programs = [], []
    gen_s = 0.0
    for k, p in enumerate(problems):
        i = args.start + k
        text = evalplus_prompt(hf_tok, p.prompt)
        hf_ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        oq_ids = chat_prompt_ids(oq_tok, [{"role": "system", "content": system},
                                          {"role": "user", "content": p.instruction}]) \
            + oq_tok.encode(code.CHAT_RESPONSE_PREFIX)
        t1 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(torch.tensor([hf_ids]), max_new_tokens=args.max_new_tokens, do_sample=False,
                                 stop_strings=code.CHAT_STOP, tokenizer=hf_tok,
                                 eos_token_id=[hf_tok.convert_tokens_to_ids(t) for t in
                                               ("<|im_end|>", "<|endoftext|>", "<|im_start|>")])
        gen_s += time.perf_counter() - t1
        hf_text = hf_tok.decode(out[0, len(hf_ids):], skip_special_tokens=True)
        for s in code.CHAT_STOP:  # transformers keeps the stop string; openqwen's engine drops it
            j = hf_text.find(s)
            if j != -1:
                hf_text = hf_text[:j]
        programs.append(code.build_program(p, hf_text, "chat"))
        rows.append({"index": i, "task_id": p.task_id, "prompt_ids_equal": hf_ids == oq_ids,
                     "prompt_tokens": len(hf_ids), "transformers": hf_text})
        print(f"{p.task_id}: prompt ids equal {hf_ids == oq_ids}", flush=True)
    ours = read_ours(Path(args.ours))  # read now: openqwen's run may have been running beside this one
    for r in rows:
        r["ours"] = ours.get(r["index"])
        r["completion_equal"] = r["ours"] == r["transformers"]
    runs = run_many(programs, 10.0, 1024, progress=False)
    ours_prog = [code.build_program(p, ours[args.start + k], "chat") for k, p in enumerate(problems)
                 if args.start + k in ours]
    ours_runs = run_many(ours_prog, 10.0, 1024, progress=False) if len(ours_prog) == len(problems) else []
    for r, run in zip(rows, runs):
        r["transformers_passed"] = run.passed
    for r, run in zip(rows, ours_runs):
        r["ours_passed"] = run.passed
    summary = {"problems": len(rows), "prompt_ids_equal": sum(r["prompt_ids_equal"] for r in rows),
               "completions_equal": sum(r["completion_equal"] for r in rows),
               "transformers_pass": sum(r["transformers_passed"] for r in rows),
               "ours_pass": sum(r.get("ours_passed", False) for r in rows),
               "transformers_load_s": round(load_s, 1), "transformers_generate_s": round(gen_s, 1)}
    print(json.dumps(summary))
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
