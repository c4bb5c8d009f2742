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
    from openqwen.align.ppo_run import build_ppo_trainer
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


class TextRows:
    """Pretraining rows for the ptx term: byte ids of a few real sentences, every token labelled."""

    def __init__(self, seq_len: int = 24) -> None:
        text = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age "
                "of foolishness, it was the epoch of belief, it was the epoch of incredulity. ") * 3
        ids = list(text.encode())
        self.rows = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len, seq_len)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        import numpy as np

        row = np.array(self.rows[i], dtype=np.int64)
        return {"input_ids": row, "labels": row.copy()}
