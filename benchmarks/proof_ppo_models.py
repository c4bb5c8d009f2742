"""The three models the nano PPO proof starts from (docs/alignment.md, PPO nano proof), into OUT:

    python benchmarks/proof_ppo_models.py --out runs/alignproof        # about 25 minutes on 2 loaded cores

1. ``OUT/base``: the demo's corpus, tokenizer and packing stages (``openqwen.demo.stages``; the cleaning
   pipeline skipped, so the packed rows are the raw corpus) and 300 steps of ``nano-pretrain.yaml``;
   ``OUT/base/packed`` is also the ptx data.
2. ``OUT/sft``: the policy, 100 SFT steps of ``nano-sft.yaml`` on 4,000 ``synthetic.sft_conversations``
   of the train split (the preferred format with the right number).
3. ``OUT/reward``: ``reward-nano.yaml`` (150 PMP + 150 fine-tuning steps) from the SFT policy (as
   InstructGPT: the reward model starts from the SFT model), with half of the wrong numbers near misses
   (``reward.builtin_near_miss 0.5``: the SFT policy's mistakes are near misses) and 9,600 PMP pairs
   (as many as 150 steps read twice; encoding the recipe's 20,000 costs minutes).

Every step is skipped when its folder already holds a model (``config.json``). One torch thread per
process: on a shared 2-core machine two threads wait on each other and ran 5x slower.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_base(out: Path, steps: int) -> None:
    import torch

    from openqwen.demo import stages
    from openqwen.demo.config import DemoConfig

    torch.set_num_threads(1)
    dc = DemoConfig.for_minutes(15)
    dc.pipeline, dc.threads = False, 1
    run = stages.DemoRun(out, dc)
    out.mkdir(parents=True, exist_ok=True)
    stages.corpus(run)
    stages.tokenizer(run, run.path("corpus"))
    packed = stages.pack(run, run.path("corpus"))
    print(json.dumps(stages.pretrain(run, steps, packed["num_sequences"]), default=str))


def openqwen(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "openqwen.cli", *args], cwd=ROOT, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/alignproof")
    ap.add_argument("--pretrain-steps", type=int, default=300)
    args = ap.parse_args()
    out = Path(args.out)
    base = out / "base" / "pretrain"
    if not (base / "config.json").exists():
        build_base(out / "base", args.pretrain_steps)
    if not (out / "sft" / "config.json").exists():
        from openqwen.align import synthetic

        chats = out / "sft_chats.jsonl"
        chats.write_text("".join(json.dumps({"messages": c}) + "\n"
                                 for c in synthetic.sft_conversations("train", 4000, 0)))
        openqwen("sft", "--config", "nano-sft.yaml", "--model.init_from", str(base), "--sft.train_files",
                 f"[{chats}]", "--train.max_steps", "100", "--optim.warmup_steps", "5", "--train.out_dir",
                 str(out / "sft"), "--train.threads", "1", "--train.eval_every", "0", "--train.save_every", "50",
                 "--train.progress", "false")
    if not (out / "reward" / "config.json").exists():
        openqwen("reward", "train", "--config", "reward-nano.yaml", "--model.init_from", str(out / "sft"),
                 "--train.out_dir", str(out / "reward"), "--train.threads", "1", "--reward.builtin_near_miss",
                 "0.5", "--reward.builtin_pmp_size", "9600", "--train.eval_every", "50", "--train.progress", "false")


if __name__ == "__main__":
    main()
