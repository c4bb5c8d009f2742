"""Nano proof: the demo's chat model learns to call the calculator (SFT on the built-in tool-use set).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.proof_calculator_sft \\
        --base runs/demo/sft --out runs/tools/calc-proof --steps 150

1. writes the built-in calculator dialogues (``openqwen/agent/calculator_sft.py``, ReAct format) as
   SFT chats and the held-out cases in the tool benchmark's shape;
2. scores the base model on the held-out cases (the report's tool metrics: selection accuracy,
   Rouge-L of the arguments, false-positive rate; ``eval/tasks/tools.py``'s scoring, greedy, one
   ReAct step, stopped at ``Observation:``) and runs the ``openqwen/agent`` loop end to end on every
   case (the real calculator, a made-up weather tool): answer accuracy on the arithmetic questions;
3. fine-tunes it with ``openqwen sft`` (the nano SFT recipe, ``--sft.train_files`` the dialogues);
4. scores the fine-tuned model the same way. Writes ``OUT/proof.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from openqwen.agent.calculator_sft import evaluate_tool_use, write_sets
from openqwen.eval.tasks.tools import load_tool_cases

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="runs/demo/sft", help="the chat model to teach (default: the demo's)")
    p.add_argument("--out", default="runs/tools/calc-proof")
    p.add_argument("--train-size", type=int, default=1500)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seq-length", type=int, default=640, help="SFT rows (the ReAct dialogues are 470-570 tokens)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    base, out = Path(args.base), Path(args.out)
    if not (base / "config.json").exists():
        raise SystemExit(f"--base {base} is not a model folder (run `openqwen demo` first, or pass one)")
    train, held = write_sets(out, args.train_size, args.seed)
    t0 = time.time()
    before = evaluate_tool_use(base, held)
    print("before:", json.dumps(before["metrics"]), flush=True)
    sft_dir = out / "sft"
    cmd = [str(Path(sys.executable).with_name("openqwen")), "sft", "--config", "nano-sft.yaml",
           "--model.init_from", str(base), "--sft.train_files", str(train), "--train.out_dir", str(sft_dir),
           "--train.max_steps", str(args.steps), "--train.batch_size", str(args.batch_size),
           "--optim.lr", str(args.lr), "--model.seq_length", str(args.seq_length), "--train.eval_every", "0",
           "--train.save_every", str(args.steps), "--train.seed", str(args.seed), "--train.resume", "false",
           "--train.tensorboard", "false", "--train.progress", "false", "--train.threads", "1"]
    t1 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    sft_s = time.time() - t1
    after = evaluate_tool_use(sft_dir, held)
    print("after:", json.dumps(after["metrics"]), flush=True)
    summary = json.loads((sft_dir / "summary.json").read_text())
    report = {"base": str(base), "settings": vars(args), "sft_seconds": round(sft_s, 1),
              "sft_final_loss": summary.get("final_loss"), "wall_seconds": round(time.time() - t0, 1),
              "heldout_cases": len(load_tool_cases(held)), "before": before, "after": after}
    (out / "proof.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    for name in ("tool_selection_accuracy", "tool_input_rouge_l", "false_positive_rate", "parse_failure_rate",
                 "agent_answer_accuracy_calculator"):
        print(f"{name:34s} {before['metrics'][name]:.3f} -> {after['metrics'][name]:.3f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
