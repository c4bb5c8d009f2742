"""Reward-model training, openqwen against TRL's ``RewardTrainer``, in one run on the same data.

Both start from the same weights (the given model folder with the same fresh head, handed to TRL as a
``Qwen2ForSequenceClassification`` folder), see the same tokenised pairs of the built-in arithmetic
task (clean fine-tuning pairs; TRL gets them pre-tokenised as ``chosen_ids``/``rejected_ids``), and
use the same optimiser (AdamW 0.9/0.95, eps 1e-8, no weight decay, clip 1.0), batch, steps and
constant LR after warm-up. Held-out accuracy is measured the same way for both: the trained model
is loaded with :func:`openqwen.align.reward.load_reward_model` (TRL's saved folder included) and
scored on the held-out pairs. Step time: the median over the steps after the first few (openqwen:
the loop's own ``step_time_s``; TRL: a callback around each optimiser step).

    .venv/bin/python -m benchmarks.bench_reward --model runs/demo/sft [--steps 60] [--batch 32] [--threads 2]

Run timings under ``/work/shared/tools/quiet --max-wait 300 --`` and state the load it prints.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from openqwen.align import synthetic
from openqwen.align.pairs import PairRows, encode_pairs
from openqwen.align.reward import (RewardModel, RewardTask, load_reward_model, pair_metrics, save_reward_model,
                                   score_pairs)
from openqwen.checkpoint import load_model
from openqwen.train.config import TrainConfig
from openqwen.train.loop import Trainer
from openqwen.train.pretrain import load_tokenizer

SKIP = 3
"""Steps left out of the median (start-up: allocations, first-call overheads)."""


def run_openqwen(init: Path, tokenizer, train, held, args, out: Path) -> dict:
    rm = load_reward_model(init)
    rm.backbone.train()
    cfg = TrainConfig.load(None, {
        "train.out_dir": str(out), "train.max_steps": args.steps, "train.batch_size": args.batch,
        "optim.lr": args.lr, "optim.warmup_steps": args.warmup, "optim.schedule": "constant",
        "optim.weight_decay": 0.0, "optim.grad_clip": 1.0, "train.progress": False, "train.tensorboard": False,
        "train.peak_flops": 1e12, "train.threads": args.threads, "train.resume": False, "train.seed": 0,
        "data.seed": 0})
    rows = PairRows(train, args.seq_len, tokenizer.eos_id)
    start = time.perf_counter()
    trainer = Trainer(cfg, rm.backbone, rows, task=RewardTask(rm.head), name="bench-reward")
    trainer.fit()
    total = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["step_time_s"] for r in records if r.get("kind") == "train"][SKIP:]
    trainer.export(out / "model")
    trained = load_reward_model(out / "model")
    return {"step_time_s": statistics.median(times), "total_s": total,
            **pair_metrics(*score_pairs(trained, held, 32, tokenizer.eos_id))}


def run_trl(init: Path, base: Path, train, held, args, out: Path, eos_id: int) -> dict:
    import datasets
    import transformers
    import trl

    model = transformers.Qwen2ForSequenceClassification.from_pretrained(init, attn_implementation="sdpa")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(base / "tokenizer.json"),
                                               eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if tok.pad_token_id != eos_id:
        raise ValueError(f"the HF tokenizer's <|endoftext|> is {tok.pad_token_id}, ours {eos_id}")
    data = datasets.Dataset.from_list([{"chosen_ids": p.prompt + p.chosen, "rejected_ids": p.prompt + p.rejected}
                                       for p in train])
    times: list[float] = []

    class StepTimer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    config = trl.RewardConfig(
        output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=args.lr,
        lr_scheduler_type="constant_with_warmup", warmup_steps=args.warmup, adam_beta1=0.9, adam_beta2=0.95,
        adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0, logging_steps=10, report_to=[], save_strategy="no",
        use_cpu=True, seed=0, dataloader_num_workers=0, disable_dropout=True, bf16=False, fp16=False)
    trainer = trl.RewardTrainer(model=model, args=config, train_dataset=data, processing_class=tok,
                                callbacks=[StepTimer()])
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    trainer.model.save_pretrained(out / "model")
    trained = load_reward_model(out / "model")  # TRL's folder, read by our loader
    return {"step_time_s": statistics.median(times[SKIP:]), "total_s": total,
            **pair_metrics(*score_pairs(trained, held, 32, eos_id))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/demo/sft", help="starting model folder with its tokenizer")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--train-pairs", type=int, default=2000)
    ap.add_argument("--heldout-pairs", type=int, default=400)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/reward/bench.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = Path(args.model)
    tokenizer = load_tokenizer(str(base))
    train, _ = encode_pairs(synthetic.preference_pairs("train", args.train_pairs, 0), tokenizer, args.seq_len)
    held, _ = encode_pairs(synthetic.preference_pairs("heldout", args.heldout_pairs, 0), tokenizer, args.seq_len)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        save_reward_model(RewardModel.from_backbone(load_model(base), seed=0), tmp / "init", tokenizer)
        ours = run_openqwen(tmp / "init", tokenizer, train, held, args, tmp / "ours")
        theirs = run_trl(tmp / "init", base, train, held, args, tmp / "trl", tokenizer.eos_id)
    result = {"steps": args.steps, "batch": args.batch, "threads": args.threads, "train_pairs": len(train),
              "heldout_pairs": len(held), "openqwen": ours, "trl": theirs,
              "step_time_ratio_openqwen_over_trl": ours["step_time_s"] / theirs["step_time_s"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
