"""CLI verbs ``openqwen reward train``, ``openqwen reward score`` and ``openqwen dpo``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from openqwen.train.cli import _OverrideParser

DATA_FORMAT = """Preference data: JSONL, one pair per line, e.g.
  {"prompt": "What is 2 + 3?", "chosen": "The answer is 5.", "rejected": "The answer is 6."}
  {"messages": [{"role": "user", "content": "..."}], "chosen": "...", "rejected": "...", "margin": 1.0}
  {"conversations": [{"from": "human", "value": "..."}], "chosen": {"from": "gpt", "value": "..."}, "rejected": ...}
or 'builtin' for the synthetic arithmetic task (held-out questions for validation). A bad row stops
the run with FILE:LINE and the reason; --reward.skip_bad true counts and skips bad rows instead."""

EXAMPLES_TRAIN = f"""what it does:
  Trains a reward model as the Qwen report did: a Qwen with a scalar head read at the last real token
  (the <|im_end|> of the reply), pairwise Bradley-Terry loss; first preference-model pretraining (PMP)
  on a large noisy set (reward.pmp_files), then fine-tuning on a small clean set (reward.train_files),
  constant LR after warm-up. Writes a Hugging Face Qwen2ForSequenceClassification folder (num_labels 1)
  to train.out_dir, with held-out accuracy, margin and calibration in openqwen_reward.json.

examples:
  openqwen reward train --config reward-nano.yaml                       # the nano proof (needs runs/demo/sft)
  openqwen reward train --config reward-nano.yaml --model.init_from runs/demo/sft --reward.pmp_files []
  openqwen reward train --config reward.yaml --model.init_from Qwen-7B-Chat-SFT \\
      --reward.pmp_files [stackexchange.jsonl] --reward.train_files [clean.jsonl] --reward.val_files [val.jsonl]

Bundled recipes: reward-nano.yaml (CPU minutes), reward.yaml (the report's 7B settings: LR 3e-6
constant, batch 64, sequence 2048, one epoch). Any field can be overridden as --SECTION.KEY VALUE
(sections: model, data, optim, train, lora, reward); --print-config shows the resolved config.

{DATA_FORMAT}"""

EXAMPLES_SCORE = """what it does:
  Scores a JSONL file with a reward model. Preference rows (chosen/rejected) get both rewards and the
  file's pairwise accuracy, margin and calibration; rows {"prompt" or "messages", "response"} get one
  reward each. Rewards go to --out (JSONL, one line per input row) or stdout.

examples:
  openqwen reward score --model runs/reward --data heldout.jsonl
  openqwen reward score --model runs/reward --data replies.jsonl --out rewards.jsonl --batch-size 32"""

EXAMPLES_DPO = f"""what it does:
  Direct preference optimisation on the same preference data as the reward model, with the one
  trainer: the policy's log-likelihood margin between chosen and rejected, against the frozen
  reference (the starting model, its log-probs computed once before training), scaled by dpo.beta.
  A cheap baseline beside PPO. Writes the tuned model (Hugging Face Qwen2 layout) to train.out_dir.

examples:
  openqwen dpo --config dpo-nano.yaml                                   # needs runs/demo/sft
  openqwen dpo --config dpo.yaml --model.init_from SFT_MODEL --dpo.train_files [prefs.jsonl]

{DATA_FORMAT.replace('reward.skip_bad', 'dpo.skip_bad')}"""


def _override_parser(sub: Any, verb: str, helptext: str, epilog: str) -> argparse.ArgumentParser:
    p = sub.add_parser(verb, help=helptext, description=helptext, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _OverrideParser
    p.add_argument("--config", help="recipe YAML: a path, or a bundled recipe's name")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return p


def add_parser(subparsers: Any) -> None:
    reward = subparsers.add_parser(
        "reward", help="train a reward model (PMP then fine-tuning) or score files with one",
        description="The reward model of the Qwen report: `openqwen reward train` and `openqwen reward score`.",
        epilog="examples:\n  openqwen reward train --config reward-nano.yaml\n"
               "  openqwen reward score --model runs/reward --data pairs.jsonl\n"
               "Run `openqwen reward train --help` for the data format and the recipes.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = reward.add_subparsers(dest="reward_command", metavar="ACTION")
    reward.set_defaults(func=lambda args: (reward.print_help(), 2)[1])
    train = _override_parser(verbs, "train", "train a reward model: PMP on noisy pairs, then fine-tuning",
                             EXAMPLES_TRAIN)
    train.set_defaults(func=_train)
    score = verbs.add_parser("score", help="reward of every row of a JSONL file (and pair metrics)",
                             description="Score a JSONL file with a reward model.", epilog=EXAMPLES_SCORE,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    score.add_argument("--model", required=True, help="reward model folder (openqwen reward train's output, or "
                       "any Qwen2ForSequenceClassification folder with num_labels 1)")
    score.add_argument("--data", required=True, help="JSONL of preference pairs or of prompt/response rows")
    score.add_argument("--out", help="write one JSON line of rewards per input row here (default: stdout)")
    score.add_argument("--batch-size", type=int, default=16, help="rows per forward pass (default 16)")
    score.add_argument("--skip-bad", action="store_true", help="count and skip unusable rows instead of stopping")
    score.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    score.add_argument("--dtype", default="fp32", help="fp32 or bf16 (default fp32)")
    score.set_defaults(func=_score)
    dpo = _override_parser(subparsers, "dpo", "direct preference optimisation (DPO) on preference pairs",
                           EXAMPLES_DPO)
    dpo.set_defaults(func=_dpo)


def _run(args: Any, config_cls: Any, module: Any) -> int:
    cfg = config_cls.load(args.config, args.overrides)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    summary = module.run(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
        print(f"model written to {summary['model_dir']}")
    return 0


def _train(args: Any) -> int:
    from . import reward_train

    return _run(args, reward_train.RewardConfig, reward_train)


def _dpo(args: Any) -> int:
    from . import dpo

    return _run(args, dpo.DPOConfig, dpo)


def _score(args: Any) -> int:
    from .scoring import score_file

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    result = score_file(args.model, args.data, batch_size=args.batch_size, skip_bad=args.skip_bad,
                        device=args.device, dtype=args.dtype)
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
    try:
        for row in result["rows"]:
            out.write(json.dumps(row) + "\n")
    finally:
        if args.out:
            out.close()
    summary = {k: v for k, v in result.items() if k != "rows"}
    print(json.dumps(summary, indent=2), file=sys.stderr if not args.out else sys.stdout)
    return 0
