"""``openqwen ppo``: the verb's parser. It imports no torch, so ``openqwen --help`` stays fast; the work
is :func:`openqwen.align.ppo_run.run`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from openqwen.train.cli import _OverrideParser

EXAMPLES = """what it does:
  Four roles: the policy (--model.init_from, an SFT model folder), a value model copied from the reward
  model (--ppo.reward_model), and frozen copies of the starting policy (the KL reference) and of the
  reward model. Each PPO iteration samples ppo.responses_per_prompt (2) answers to
  ppo.prompts_per_rollout prompts from the engine over the current policy with top-p 0.9, normalises
  the rewards by a running mean/variance, subtracts the per-token KL to the reference (0.04), runs GAE
  (gamma 1, lambda 0.95) and trains ppo.epochs passes of ppo.minibatches steps: clipped policy loss
  (0.2), clipped value loss (0.15), and optionally the pretraining gradient (ppo.ptx_coef on
  ppo.ptx_data). The first ppo.value_warmup_steps (50) steps train the value model only.
  One step = one minibatch; train.max_steps counts them. A run resumes exactly after a kill.

defaults: the report's where it gives them (KL 0.04, value clip 0.15, top-p 0.9, 2 responses, 50
  warm-up steps, LR policy 1e-6 / value 5e-6 in ppo.yaml); gamma 1, lambda 0.95, clip 0.2 and 2
  epochs where it does not. --print-config shows every field.

examples:
  openqwen ppo --config ppo-nano.yaml --model.init_from runs/sft --ppo.reward_model runs/reward
  openqwen ppo --config ppo-nano.yaml --model.init_from runs/sft --ppo.reward synthetic --ppo.value_init policy
  openqwen ppo --config ppo.yaml --model.init_from Qwen-7B-Chat-SFT --ppo.reward_model rm-7b --lora.rank 16
  openqwen ppo --config ppo-nano.yaml ... --ppo.kl_coef 0 --ppo.ptx_coef 1 --ppo.ptx_data runs/data/packed

Any field is --SECTION.KEY VALUE (sections: model, data, optim, train, lora, ppo); data.seed seeds the
rollouts; optim.lr is the policy's LR, ppo.value_lr the value model's."""


def add_parser(subparsers: Any) -> None:
    helptext = "PPO of a chat model against a reward model (the report's RLHF recipe)"
    p = subparsers.add_parser("ppo", help=helptext, description=helptext, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _OverrideParser
    p.add_argument("--config", help="recipe YAML (a path, or a bundled recipe: ppo-nano.yaml, ppo.yaml)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=_ppo)


def _ppo(args: argparse.Namespace) -> int:
    from .ppo import PPOConfig  # noqa: PLC0415  (torch and the trainer load only when the verb runs)
    from .ppo_run import run  # noqa: PLC0415

    cfg = PPOConfig.load(args.config, args.overrides)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    summary = run(cfg)
    print(json.dumps(summary, indent=2))
    print(f"policy written to {summary['model_dir']}")
    return 0
