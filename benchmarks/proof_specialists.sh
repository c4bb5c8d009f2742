#!/usr/bin/env bash
# The specialist nano proofs of docs/specialists.md, end to end, from nothing:
#   bash benchmarks/proof_specialists.sh base   # corpus, cleaning, tokenizer, base model, chat model
#   bash benchmarks/proof_specialists.sh math   # Math-Qwen-Chat: math SFT, held-out accuracy before/after
#   bash benchmarks/proof_specialists.sh code   # Code-Qwen, Code-Qwen-Chat: pass@1 and code/text losses
# math and code both start from base's models and can run side by side. Every step is an openqwen
# command or a benchmark script; OUT (default runs/spec) holds everything; a rerun resumes or skips.
# One torch thread per process: on a 2-core machine shared with other jobs, two threads spin-wait on
# each other: measured here at load ~12, 1,350 tokens/s at one thread against 300 at two (nano pretraining).
set -euo pipefail
OUT=${OUT:-runs/spec}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.venv/bin/python"
OQ="$ROOT/.venv/bin/openqwen"
mkdir -p "$OUT" && cd "$OUT"

base() {
  # the demo's corpus sizes plus the function tasks' train split (only the code mix uses those)
  "$PY" -c "
from openqwen.data.demo_corpus import DemoCorpusConfig, build_demo_corpus
build_demo_corpus('corpus', config=DemoCorpusConfig(shakespeare_bytes=1_500_000, chinese_bytes=600_000,
                  code_bytes=900_000, arithmetic_bytes=1_500_000, code_tasks_bytes=400_000))"
  # every cleaning stage (decontamination included) once; 09-mix is the code-heavy mix
  [ -f code-data/pipeline.json ] || "$OQ" data run --in corpus --out code-data --weight python_stdlib=0.5 \
      --weight code_tasks=8 --weight shakespeare=0.25 --weight chinese_poetry=0.25 --weight arithmetic=0.1
  # the base model's data: the cleaned corpus without the function tasks; held-out code and text
  "$PY" - <<'EOF'
from pathlib import Path
from openqwen.data.demo_corpus import code_documents, shakespeare_documents
from openqwen.data.io import BadLine, read_documents, write_jsonl_gz
from openqwen.data.packing import pack_documents
from openqwen.data.synthetic_code import code_tasks
from openqwen.data.synthetic_math import math_items
from openqwen.tokenizer import QwenTokenizer
from openqwen.tokenizer.train import train_tokenizer
from openqwen.train.sft_data import builtin_chat_set, write_chat_jsonl

if not Path("packed/index.json").exists():
    docs = [d for f in sorted(Path("code-data/08-decontam").glob("*.jsonl*")) for d in read_documents(f)
            if not isinstance(d, BadLine) and d.get("source") != "code_tasks"]
    Path("base-data").mkdir(exist_ok=True)
    write_jsonl_gz(Path("base-data/base.jsonl.gz"), docs)
    tok = train_tokenizer([Path("base-data")], vocab_size=4096, show_progress=False)
    tok.save_pretrained("tokenizer")
    pack_documents(Path("base-data"), tok, Path("packed"), seq_len=256, progress=False)
    pack_documents(Path("code-data/09-mix"), tok, Path("code-packed"), seq_len=1024, progress=False)
# held out of every training set: Shakespeare scenes past the corpus's 1.5 MB, stdlib modules past
# its 0.9 MB, and the test split of the function tasks written as the corpus writes the train split
Path("val").mkdir(exist_ok=True)
seen = {d["text"] for d in shakespeare_documents(1_500_000)[0]}
write_jsonl_gz(Path("val/text.jsonl.gz"), [d for d in shakespeare_documents(2_000_000)[0] if d["text"] not in seen][:40])
used = {d["id"] for d in code_documents(900_000, 100_000)[0]}
write_jsonl_gz(Path("val/stdlib.jsonl.gz"), [d for d in code_documents(1_400_000, 100_000)[0] if d["id"] not in used])
rows = code_tasks("test", 1000, 0)
write_jsonl_gz(Path("val/code_tasks.jsonl.gz"), [{"text": "\n\n".join(
    f"# {r['text']}\n{r['code']}\n" + "\n".join(r["test_list"]) + "\n" for r in rows[k: k + 8])}
    for k in range(0, len(rows), 8)])
# the general chat set minus every held-out add/sub/mul question (the set asks "What is a + b?" too)
held = {i.question.strip() for i in math_items("test", 10_000, seed=0, categories=("add", "sub", "mul"))}
chats = [c for c in builtin_chat_set(3000, 0) if not any(m["role"] == "user" and m["content"].strip() in held for m in c)]
Path("data").mkdir(exist_ok=True)
write_chat_jsonl(chats, "data/sft_chats.jsonl")
EOF
  "$OQ" pretrain --config nano-pretrain.yaml --data.path packed --data.tokenizer tokenizer --train.out_dir base \
      --train.max_steps 200 --train.batch_size 8 --optim.warmup_steps 10 --train.threads 1 --train.eval_every 100 \
      --train.save_every 50 --data.val_sequences 16
  "$OQ" sft --config nano-sft.yaml --model.init_from base --sft.train_files '[data/sft_chats.jsonl]' \
      --train.out_dir sft --train.max_steps 80 --train.batch_size 8 --optim.warmup_steps 4 --train.eval_every 0 \
      --train.save_every 40 --train.threads 1 --model.seq_length 256
}

math() {
  local steps=${MATH_STEPS:-600}
  "$OQ" sft --config math-sft-nano.yaml --model.init_from sft --train.out_dir "math-$steps" \
      --train.max_steps "$steps" --train.save_every $((steps / 6)) --train.keep_last 10 --train.threads 1
  "$PY" "$ROOT/benchmarks/eval_checkpoints.py" --base sft --run "math-$steps" --task synthetic-math \
      --data add,sub,mul --mode chat --limit 180 --out "eval/math-$steps-curve.json"
  "$OQ" eval --model "math-$steps" --task synthetic-math --data add,sub,mul --mode chat --limit 180 --threads 1 \
      --output "eval/math-$steps.json" --no-progress
  "$OQ" eval --model sft --task synthetic-math --data add,sub,mul --mode chat --limit 180 --threads 1 \
      --output eval/math-before.json --no-progress
}

code() {
  "$OQ" pretrain --config code-continue-nano.yaml --model.init_from base --data.path code-packed \
      --train.out_dir code-continue --train.threads 1
  "$PY" "$ROOT/benchmarks/proof_code.py" --base base --run code-continue --val code_tasks=val/code_tasks.jsonl.gz \
      --val stdlib=val/stdlib.jsonl.gz --val text=val/text.jsonl.gz --out eval/code-losses.json
  "$PY" "$ROOT/benchmarks/eval_checkpoints.py" --base base --run code-continue --task humaneval --data builtin \
      --mode base --max-new-tokens 32 --out eval/he-code-continue-curve.json
  "$OQ" sft --config code-chat-nano.yaml --model.init_from code-continue --train.out_dir code-chat --train.threads 1 \
      --train.save_every 50 --train.keep_last 10
  "$PY" "$ROOT/benchmarks/eval_checkpoints.py" --base code-chat/general --run code-chat --task mbpp --data builtin \
      --mode chat --max-new-tokens 64 --out eval/mbpp-code-chat-curve.json
  for m in base code-continue code-chat; do
    # base protocol (a commented def, 0-shot), chat protocol, and MBPP's 3-shot prompt
    "$OQ" eval --model "$m" --task humaneval --data builtin --mode base --max-new-tokens 32 --threads 1 \
        --output "eval/he-$m-base.json" --no-progress
    for mode in base chat; do
      "$OQ" eval --model "$m" --task mbpp --data builtin --mode "$mode" --max-new-tokens 64 --threads 1 \
          --output "eval/mbpp-$m-$mode.json" --no-progress
    done
  done
}

"$@"
