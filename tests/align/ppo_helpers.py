"""Shared pieces of the PPO tests: the inference tests' byte-level tokenizer and tiny random model
(imported from tests/infer, not written twice), and nano PPO settings."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infer"))

from infer_helpers import ByteTokenizer, tiny_model  # noqa: E402,F401


def nano_ppo(out_dir, overrides=None, policy_seed: int = 0, reward: str = "model", ptx_rows=None, info=None):
    """A PPO Trainer on the tiny byte-level model: 2 prompts x 2 responses per rollout, 2 epochs of 2
    minibatches (4 steps per rollout), the built-in arithmetic prompts, a random reward model."""
    from openqwen.align import synthetic
    from openqwen.align.ppo import PPOConfig
    from openqwen.align.ppo_cli import build_ppo_trainer
    from openqwen.align.reward import RewardModel

    settings = {"train.out_dir": str(out_dir), "train.max_steps": 8, "train.progress": False,
                "train.tensorboard": False, "train.plot": False, "train.peak_flops": 1e9, "train.device": "cpu",
                "optim.lr": 1e-3, "optim.warmup_steps": 0, "optim.schedule": "constant",
                "ppo.prompts_per_rollout": 2, "ppo.responses_per_prompt": 2, "ppo.max_new_tokens": 6,
                "ppo.epochs": 2, "ppo.minibatches": 2, "ppo.value_warmup_steps": 0, "ppo.temperature": 2.0,
                "ppo.value_lr": 2e-3, "ppo.reward": reward}
    settings.update(overrides or {})
    cfg = PPOConfig.load(None, settings)
    policy = tiny_model(seed=policy_seed).train()
    rm = RewardModel.from_backbone(tiny_model(seed=policy_seed + 5), seed=1) if reward == "model" else None
    prompts = synthetic.prompts("train", 50, 0)
    return build_ppo_trainer(cfg, policy, ByteTokenizer(), rm, prompts, builtin_task=True, ptx_rows=ptx_rows,
                             info=info)
