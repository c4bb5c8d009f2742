"""Running PPO (the work behind ``openqwen ppo``, whose parser is :mod:`.ppo_cli`; see :mod:`.ppo`).

:func:`build_ppo_trainer` wires the four roles, the batch source and the one Trainer; :func:`run` loads
them from folders, trains, and exports the policy (Hugging Face layout, the tokenizer beside it) and the
value model (``modules/value.safetensors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from openqwen.data.io import read_json_lines
from openqwen.train.distributed import DistInfo, init_distributed
from openqwen.train.lora import apply_lora
from openqwen.train.loop import Trainer
from openqwen.train.metrics import plot_metric_page, read_metrics
from openqwen.train.precision import resolve_precision, step_flops

from . import synthetic
from .ppo import PPO_PANELS, PPOConfig, PPOTask, build_value_model, check_ppo_section, frozen_copy
from .ppo_batches import PPOBatches
from .reward import RewardModel

def read_prompt_file(path: str) -> list[list[dict]]:
    """Chat prompts from JSONL: a ``messages`` list (a trailing assistant turn is dropped) or a ``prompt``."""
    out = []
    for n, row in read_json_lines(path):
        if isinstance(row.get("messages"), list) and row["messages"]:
            msgs = [m for m in row["messages"]]
            if msgs[-1].get("role") == "assistant":
                msgs = msgs[:-1]
            out.append(msgs)
        elif isinstance(row.get("prompt"), str):
            out.append([{"role": "user", "content": row["prompt"]}])
        else:
            raise ValueError(f"{path}:{n}: a prompt row needs 'messages' (a list) or 'prompt' (a string)")
    if not out:
        raise ValueError(f"{path} holds no prompts")
    return out


def load_prompts(cfg: PPOConfig) -> tuple[list[list[dict]], bool]:
    """The prompt pool, and whether it is the built-in task's (then its ground truth is logged too)."""
    if cfg.ppo.prompts == "synthetic":
        return synthetic.prompts("train", cfg.ppo.prompt_pool, cfg.data.seed), True
    return read_prompt_file(cfg.ppo.prompts), False


def rollout_step_flops(p: Any, config: Any, tokenizer: Any, prompts: Sequence[list[dict]]) -> float:
    """Training FLOPs of one PPO micro-batch, for precision auto: a minibatch of the rollout's rows, each
    the longest of the first prompts (their text, plus room for the chat template) and the response."""
    rows = max(1, p.prompts_per_rollout * p.responses_per_prompt // max(1, p.minibatches))
    try:
        prompt = max(len(tokenizer.encode(" ".join(str(m.get("content", "")) for m in msgs))) for msgs in prompts[:32])
        seq = min(config.seq_length, prompt + 16 + p.max_new_tokens)
    except (AttributeError, TypeError, ValueError):  # a tokenizer without encode: judge by the full length
        seq = config.seq_length
    return step_flops(config, rows, seq)


def build_ppo_trainer(cfg: PPOConfig, policy: nn.Module, tokenizer: Any, reward_model: RewardModel | None,
                      prompts: Sequence[list[dict]], builtin_task: bool = False, ptx_rows: Any = None,
                      info: DistInfo | None = None,
                      reward_fn: Callable[[list[dict], str], float] | None = None) -> Trainer:
    """The Trainer of a PPO run: ``policy`` (trained in place), value model, reference, reward, source."""
    p = cfg.ppo
    check_ppo_section(p)
    info = info or init_distributed(cfg.train.device)
    if info.world_size > 1:
        raise ValueError("openqwen ppo runs in one process for now (rollouts need the whole policy in the "
                         "engine); run it without torchrun")
    if cfg.model.dropout:
        raise ValueError("PPO needs model.dropout 0: rollouts and the ratio must see the same deterministic policy")
    cfg.model.dropout = 0.0
    reference = frozen_copy(policy).to(info.device)
    value = build_value_model(p, policy, reward_model)
    if (p.reward == "model" or p.value_init == "reward") and reward_model is None:
        raise ValueError("ppo.reward=model and ppo.value_init=reward need a reward model")
    if reward_model is not None:
        reward_model = frozen_copy(reward_model).to(info.device)
    if cfg.lora.rank:
        apply_lora(policy, cfg.lora)
        apply_lora(value.backbone, cfg.lora)
        for w in value.head.parameters():
            w.requires_grad_(True)
    if p.reward == "synthetic" and reward_fn is None:
        reward_fn = synthetic.score_response
    flops = rollout_step_flops(p, policy.config, tokenizer, prompts)  # rollouts and the loop: one precision
    task = PPOTask(p, value, cfg.optim.lr,
                   min(policy.config.vocab_size, int(getattr(tokenizer, "vocab_size", policy.config.vocab_size))))
    source = PPOBatches(p, policy, task, reference, tokenizer, prompts, cfg.data.seed,
                        reward_model=None if p.reward == "synthetic" else reward_model, reward_fn=reward_fn,
                        score_fn=synthetic.score_response if builtin_task else None,
                        correct_fn=synthetic.is_correct if builtin_task else None, ptx_rows=ptx_rows,
                        grad_accum=cfg.train.grad_accum,
                        precision=resolve_precision(cfg.train.precision, info.device, flops)[0])
    return Trainer(cfg, policy, source, task=task, info=info, name="ppo", flops=flops)


def run(cfg: PPOConfig, info: DistInfo | None = None) -> dict[str, Any]:
    """Load the policy, the reward model and the data as ``cfg`` says; train; export; return the summary."""
    from openqwen.checkpoint import load_model
    from openqwen.train.batches import PackedRows
    from openqwen.train.pretrain import load_tokenizer

    from .reward import load_reward_model

    if not cfg.model.init_from:
        raise ValueError("model.init_from is not set: PPO starts from a chat model folder, e.g. "
                         "--model.init_from runs/demo/sft")
    check_ppo_section(cfg.ppo)
    tokenizer = load_tokenizer(cfg.data.tokenizer or cfg.model.init_from)
    policy = load_model(cfg.model.init_from, dtype=torch.float32).train()
    needs_rm = cfg.ppo.reward == "model" or cfg.ppo.value_init == "reward"
    if needs_rm and not cfg.ppo.reward_model:
        raise ValueError("ppo.reward_model is not set: give a reward model folder (openqwen reward train), or "
                         "--ppo.reward synthetic --ppo.value_init policy")
    reward_model = load_reward_model(cfg.ppo.reward_model) if needs_rm else None
    prompts, builtin = load_prompts(cfg)
    ptx_rows = PackedRows(cfg.ppo.ptx_data) if cfg.ppo.ptx_data else None
    trainer = build_ppo_trainer(cfg, policy, tokenizer, reward_model, prompts, builtin, ptx_rows, info)
    summary = trainer.fit()
    trainer.export(cfg.train.out_dir, tokenizer)
    if cfg.train.plot and trainer.info.is_main:
        plot_metric_page(read_metrics(cfg.train.out_dir), PPO_PANELS, Path(cfg.train.out_dir) / "ppo.png", "PPO")
    summary["model_dir"] = str(Path(cfg.train.out_dir))
    return summary


