"""Would transformers' greedy decode write openqwen's HumanEval completions? One forward pass each.

The HumanEval gap study (docs/results.md) asks whether openqwen's stack equals transformers on the
same file and prompts. Generating 164 completions with transformers on a shared CPU takes hours; a
teacher-forced check answers the same question in one forward pass per problem: transformers'
model (the same GGUF file, dequantised by transformers' own loader) reads the prompt followed by
openqwen's completion, and at every completion position its greedy choice (the argmax) is compared
with the token openqwen wrote. Where all positions agree, transformers' greedy decode produces
exactly openqwen's completion (greedy decoding is a function of those argmaxes alone); where one
differs, the first differing position, both tokens and transformers' logit margin are reported
(a near-tie, i.e. a margin of a few 1e-3, is a float rounding difference, not a bug).

Prompts: ``--prompt evalplus`` (the current ``openqwen eval --task humaneval --mode chat`` prompt,
EvalPlus' own) or ``--prompt v1`` (the prompt of the 2026-11-30 run whose 164 completions are in
docs/results/: the first generation's system prompt, the problem in a ```python fence, the same
response prefix, stop at "\\n```"). The prompt ids are built by transformers' ``apply_chat_template``
on the GGUF's own template and compared with openqwen's ids for the same text. Completions are
re-tokenised from their text (the generated ids were not kept); a re-tokenisation that differs from
what the model wrote shows as a mismatch whose two tokens spell the same text, and is reported so.

    .venv/bin/python benchmarks/humaneval_forced.py --ours docs/results/humaneval-coder0.5b-chat.completions.jsonl \\
        --prompt v1 --out runs/specialist/he-forced.json      # resumable: rows go to OUT.partial.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from openqwen.artifacts import artifact_path
from openqwen.eval.tasks import code

V1_INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem in a "
                  "markdown code block:\n```python\n{prompt}\n```")
V1_SYSTEM = "You are a helpful assistant."
_SPLIT = "-[[]]-openqwen-split-[[]]-"
STOPS = ["\n```", *code.CHAT_STOP]


def prompt_text(hf_tok, problem: code.CodeProblem, kind: str) -> tuple[str, list[dict[str, str]]]:
    """The prompt text through the model's own template, and the messages openqwen renders."""
    if kind == "v1":
        messages = [{"role": "system", "content": V1_SYSTEM},
                    {"role": "user", "content": V1_INSTRUCTION.format(prompt=problem.prompt.strip())}]
    else:
        messages = [{"role": "user", "content": code.CHAT_INSTRUCTION.format(prompt=problem.prompt.strip())}]
    reply = {"role": "assistant", "content": f"{code.CHAT_RESPONSE_PREFIX}{_SPLIT}\n```\n"}
    text = hf_tok.apply_chat_template(messages + [reply], tokenize=False).split(_SPLIT)[0]
    return text, messages


def cut_inside_token(row: dict) -> bool:
    """The one mismatch that is no disagreement: at the completion's last token, transformers' token is
    openqwen's followed by the start of the stop string. The model wrote e.g. ``']\n`` then
    ````````; the run cut its text before ``\n```````, inside that token, so re-tokenising the kept
    text ends in ``']`` where the model's token was ``']\n``."""
    if row["agree"] or row["first_mismatch"] != row["completion_tokens"] - 1:
        return False
    ours, theirs = row["ours_token"], row["transformers_token"]
    rest = theirs[len(ours):]
    return theirs.startswith(ours) and bool(rest) and any(s.startswith(rest) for s in STOPS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=None, help="default: the qwen25-coder-0.5b-instruct-gguf artifact")
    ap.add_argument("--ours", required=True, help="openqwen's completions: a completions/partial .jsonl "
                    "(index, text) or an eval --output JSON")
    ap.add_argument("--prompt", choices=["v1", "evalplus"], default="v1")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, default=164)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers  # noqa: PLC0415

    from humaneval_peer import read_ours, read_partial  # noqa: PLC0415 - the sibling benchmark's readers

    from openqwen.eval.prompts import model_system_prompt  # noqa: PLC0415
    from openqwen.tokenizer import QwenTokenizer  # noqa: PLC0415
    from openqwen.tokenizer.chat import chat_prompt_ids  # noqa: PLC0415

    gguf = Path(args.gguf or artifact_path("qwen25-coder-0.5b-instruct-gguf"))
    problems = code.load_humaneval(artifact_path("humaneval"))
    ours = read_ours(Path(args.ours))
    partial = Path(args.out + ".partial.jsonl")
    done = read_partial(partial)
    hf_tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    oq_tok = QwenTokenizer.from_pretrained(gguf)
    system = model_system_prompt(gguf)
    todo = [i for i in range(args.start, min(args.start + args.count, len(problems))) if i not in done and i in ours]
    t0 = time.perf_counter()
    model = None
    if todo:
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                                  dtype=torch.float32).eval()
        print(f"transformers loaded the GGUF in {time.perf_counter() - t0:.0f} s; {len(todo)} problems", flush=True)
    for i in todo:
        p = problems[i]
        text, messages = prompt_text(hf_tok, p, args.prompt)
        hf_ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        if args.prompt == "evalplus":
            messages = [{"role": "system", "content": system}] + messages
        oq_ids = chat_prompt_ids(oq_tok, messages) + oq_tok.encode(code.CHAT_RESPONSE_PREFIX)
        comp = hf_tok(ours[i], add_special_tokens=False)["input_ids"]
        t1 = time.perf_counter()
        with torch.no_grad():
            ids = torch.tensor([hf_ids + comp])
            hidden = model.model(input_ids=ids).last_hidden_state[0, len(hf_ids) - 1:]
            logits = model.lm_head(hidden).float()  # positions predicting comp[0..] and the token after
        top2 = logits.topk(2, dim=-1)
        argmax = top2.indices[:, 0].tolist()
        row = {"index": i, "task_id": p.task_id, "prompt_ids_equal": hf_ids == oq_ids, "prompt_tokens": len(hf_ids),
               "completion_tokens": len(comp), "forward_s": round(time.perf_counter() - t1, 1)}
        first = next((k for k, t in enumerate(comp) if argmax[k] != t), None)
        row["agree"] = first is None
        if first is not None:
            k = first
            row.update(first_mismatch=k, ours_token=hf_tok.decode([comp[k]]), transformers_token=hf_tok.decode([argmax[k]]),
                       margin=round(float(top2.values[k, 0] - logits[k, comp[k]]), 5),
                       context=hf_tok.decode(comp[max(0, k - 8): k]),
                       same_text=hf_tok.decode(comp[k:]).startswith(hf_tok.decode([argmax[k]])))
        # after the completion: a stop ("\n```" starts with "\n"), the end of turn, or the budget
        row["next_token"] = hf_tok.decode([argmax[len(comp)]])
        done[i] = row
        with partial.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{p.task_id}: prompt ids equal {row['prompt_ids_equal']}, agree {row['agree']}"
              + ("" if row["agree"] else f" (first mismatch at {row['first_mismatch']}: ours {row['ours_token']!r}, "
                 f"transformers {row['transformers_token']!r}, margin {row['margin']})"), flush=True)
    rows = [done[i] for i in sorted(done) if args.start <= i < args.start + args.count]
    for r in rows:
        r["agree_to_stop"] = r["agree"] or cut_inside_token(r)
    summary = {"prompt": args.prompt, "problems": len(rows),
               "prompt_ids_equal": sum(r["prompt_ids_equal"] for r in rows),
               "completions_agree": sum(r["agree"] for r in rows),
               "completions_agree_to_stop": sum(r["agree_to_stop"] for r in rows),
               "completion_tokens_checked": sum(r["completion_tokens"] if r["agree"] else r["first_mismatch"]
                                                for r in rows),
               "mismatches": [{k: r[k] for k in ("task_id", "first_mismatch", "ours_token", "transformers_token",
                                                 "margin", "same_text")} for r in rows if not r["agree_to_stop"]]}
    print(json.dumps(summary))
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
