"""The reward model: a Qwen and a scalar head that reads the reward at the last real token.

The report's reward model is a same-size pretrained Qwen with a pooling layer that reads the reward
at an end token. Here that token is the last position whose ``attention_mask`` is 1 (for a reply,
the ``<|im_end|>`` that closes the assistant turn; see :mod:`.pairs`). Padding never changes a
reward: positions count real tokens only (``cumsum(mask) - 1``) and attention stays among real tokens
(the mask is passed as segment ids), so a row gives the same reward left- or right-padded, alone or
in any batch; reward-bench and TRL users have met each of these bugs.

Training is a :class:`RewardTask` of the one :class:`~openqwen.train.loop.Trainer`: the backbone is
the trainer's model and the head its task module ``score``. The loss is Bradley-Terry,
``-log sigmoid(r_chosen - r_rejected - m)`` per pair, with ``m`` a constant margin plus the pair's own
(the data's ``margin`` field); metrics are pairwise accuracy, the reward margin and the mean
rewards of each side. :func:`pair_metrics` adds calibration (expected calibration error of
``sigmoid(r_c - r_r)`` as the probability that chosen wins) for the final evaluation.

Files: :func:`save_reward_model` writes a Hugging Face folder that transformers loads as
``Qwen2ForSequenceClassification`` (``num_labels=1``, the head as ``score.weight``, ``pad_token_id``
set so its last-token rule finds the same token); :func:`load_reward_model` reads that folder (ours
or one trained elsewhere) or a trainer export (causal-LM folder + ``modules/score.safetensors``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from openqwen.checkpoint import load_model
from openqwen.checkpoint.common import (CheckpointError, atomic_write_text, build_model, read_safetensors,
                                        resolve_dtype, safetensor_files, write_safetensors)
from openqwen.checkpoint.hf import ARCHITECTURE, QWEN2_NAMES, config_from_hf, config_to_hf, hf_state_from_model
from openqwen.model import Qwen
from openqwen.train.export import MODULES_DIR, load_module
from openqwen.train.tasks import Metrics, final_hidden_states

from .pairs import EncodedPair, PairTask, both_sides, pad_rows, trim

SEQ_CLS_ARCHITECTURE = "Qwen2ForSequenceClassification"
HEAD_MODULE = "score"
"""The head's name as a task module and in the Hugging Face layout (``score.weight``)."""


# ------------------------------------------------------------------ reading at the last real token
def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only: the first real token is 0 however much left padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_real_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index [B] of each row's last position whose mask is 1 (left or right padding alike)."""
    if not bool(attention_mask.any(-1).all()):
        raise ValueError("a row of the batch has no real token (its attention_mask is all 0)")
    T = attention_mask.shape[-1]
    return T - 1 - attention_mask.long().flip(-1).argmax(-1)


def masked_hidden_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model inputs that make padding invisible: positions of real tokens, the mask as segment ids."""
    mask = attention_mask.long()
    return {"input_ids": input_ids, "positions": mask_positions(mask), "segment_ids": mask}


def rewards_at_last_token(model: nn.Module, head: nn.Module, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor) -> torch.Tensor:
    """Rewards [B] (fp32): ``head`` on the final hidden state of each row's last real token, through
    whatever wraps ``model`` (see :func:`~openqwen.train.tasks.final_hidden_states`)."""
    hidden = final_hidden_states(model, masked_hidden_batch(input_ids, attention_mask))
    last = last_real_index(attention_mask)
    picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    return head(picked).squeeze(-1).float()


class RewardModel(nn.Module):
    """A :class:`Qwen` backbone and a scalar ``head`` (``nn.Linear(hidden, 1, bias=False)``)."""

    def __init__(self, backbone: Qwen, head: nn.Linear) -> None:
        super().__init__()
        if head.in_features != backbone.config.hidden_size or head.out_features != 1:
            raise ValueError(f"the head maps {head.in_features} -> {head.out_features}; a reward head maps the "
                             f"backbone's hidden size {backbone.config.hidden_size} -> 1")
        self.backbone, self.head = backbone, head

    @staticmethod
    def new_head(hidden_size: int, seed: int = 0) -> nn.Linear:
        """A fresh head, N(0, 1/(hidden+1)): rewards start near unit scale on final-norm states."""
        head = nn.Linear(hidden_size, 1, bias=False)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            head.weight.copy_(torch.randn(1, hidden_size, generator=generator) / math.sqrt(hidden_size + 1))
        return head

    @classmethod
    def from_backbone(cls, backbone: Qwen, seed: int = 0) -> "RewardModel":
        """A reward model on ``backbone`` (shared, not copied) with a fresh head on its device and dtype."""
        p = backbone.embed_tokens.weight
        return cls(backbone, cls.new_head(backbone.config.hidden_size, seed).to(device=p.device, dtype=p.dtype))

    @property
    def config(self):
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Rewards [B] in fp32, read at each row's last real token."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return rewards_at_last_token(self.backbone, self.head, input_ids, attention_mask)

    @torch.no_grad()
    def score_sequences(self, sequences: Sequence[Sequence[int]], batch_size: int = 16, pad_id: int = 0) -> list[float]:
        """Rewards of token lists, batched by similar length (each row's reward does not depend on it)."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = [0.0] * len(sequences)
        device = self.head.weight.device
        for k in range(0, len(order), batch_size):
            chunk = order[k : k + batch_size]
            ids, mask = pad_rows([sequences[i] for i in chunk], pad_id)
            for i, r in zip(chunk, self(ids.to(device), mask.to(device)).tolist()):
                out[i] = r
        return out


# ------------------------------------------------------------------ the training task
class RewardTask(PairTask):
    """Pairwise Bradley-Terry loss on :class:`~openqwen.align.pairs.PairRows` batches; one unit per pair.

    ``margin`` is added to each pair's own margin (the data's ``margin`` field): the loss asks
    chosen to beat rejected by at least that much (Llama 2's margin loss).
    """

    def __init__(self, head: nn.Linear, margin: float = 0.0) -> None:
        self.head, self.margin = head, float(margin)

    def modules(self) -> dict[str, nn.Module]:
        return {HEAD_MODULE: self.head}

    def pair_rewards(self, model: nn.Module, batch: dict[str, torch.Tensor],
                     modules: Mapping[str, nn.Module] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen rewards [B], rejected rewards [B]) of a pair batch, one forward for both sides."""
        head = (modules or {}).get(HEAD_MODULE, self.head)
        batch = trim(batch)
        ids, mask = both_sides(batch)
        rewards = rewards_at_last_token(model, head, ids, mask)
        return rewards.chunk(2)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor],
             modules: Mapping[str, nn.Module] | None = None) -> tuple[torch.Tensor, Metrics]:
        chosen, rejected = self.pair_rewards(model, batch, modules)
        delta = chosen - rejected
        margin = batch["margin"].float() + self.margin if "margin" in batch else torch.full_like(delta, self.margin)
        loss = -F.logsigmoid(delta - margin).sum()
        d = delta.detach()
        return loss, {"accuracy": (d > 0).float().sum(), "reward_margin": d.sum(),
                      "chosen_reward": chosen.detach().sum(), "rejected_reward": rejected.detach().sum()}


# ------------------------------------------------------------------ evaluation
def expected_calibration_error(delta: np.ndarray, bins: int = 10) -> float:
    """ECE of ``p = sigmoid(delta)`` as the probability that chosen wins, both orientations of every
    pair counted (``p`` with outcome 1, ``1 - p`` with outcome 0), ``bins`` equal-width bins."""
    p = 1.0 / (1.0 + np.exp(-np.asarray(delta, np.float64)))
    probs, outcome = np.concatenate([p, 1 - p]), np.concatenate([np.ones_like(p), np.zeros_like(p)])
    which = np.minimum((probs * bins).astype(np.int64), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(probs[sel].mean() - outcome[sel].mean())
    return float(ece)


def pair_metrics(chosen: Sequence[float], rejected: Sequence[float]) -> dict[str, float]:
    """Held-out metrics of pair rewards: pairwise accuracy (ties count half), mean margin and its
    spread, the Bradley-Terry loss, and calibration (:func:`expected_calibration_error`)."""
    c, r = np.asarray(chosen, np.float64), np.asarray(rejected, np.float64)
    if c.size == 0 or c.shape != r.shape:
        raise ValueError("pair_metrics needs as many chosen as rejected rewards, at least one")
    delta = c - r
    return {"pairs": int(c.size), "accuracy": float(((delta > 0) + 0.5 * (delta == 0)).mean()),
            "margin": float(delta.mean()), "margin_std": float(delta.std()),
            "bt_loss": float(np.logaddexp(0.0, -delta).mean()), "ece": expected_calibration_error(delta),
            "chosen_reward": float(c.mean()), "rejected_reward": float(r.mean())}


def score_pairs(rm: RewardModel, pairs: Sequence[EncodedPair], batch_size: int = 16,
                pad_id: int = 0) -> tuple[list[float], list[float]]:
    """(chosen rewards, rejected rewards) of encoded pairs."""
    chosen = rm.score_sequences([p.prompt + p.chosen for p in pairs], batch_size, pad_id)
    rejected = rm.score_sequences([p.prompt + p.rejected for p in pairs], batch_size, pad_id)
    return chosen, rejected


# ------------------------------------------------------------------ files
OURS_FILE = "openqwen_reward.json"
"""Our notes next to the Hugging Face files: how the reward is read (transformers ignores the file)."""
LM_HEAD_FILE = "lm_head.safetensors"
"""An untied model's LM head, which the sequence-classification layout has no place for."""


def save_reward_model(rm: RewardModel, out_dir: str | Path, tokenizer: Any = None, pad_token_id: int | None = None,
                      metrics: Mapping[str, Any] | None = None) -> Path:
    """Write ``rm`` as a Hugging Face ``Qwen2ForSequenceClassification`` folder (+ the tokenizer).

    ``pad_token_id`` (default: the tokenizer's ``<|endoftext|>``) is what transformers' last-token
    rule skips; it must not occur inside the scored sequences (ours end with ``<|im_end|>``).
    ``metrics`` (held-out accuracy ...) are recorded in ``openqwen_reward.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = rm.backbone
    state = dict(hf_state_from_model(backbone))
    lm_head = state.pop("lm_head.weight", None)
    state["score.weight"] = rm.head.weight
    dtype = backbone.embed_tokens.weight.dtype
    write_safetensors(state, out, 4 << 30)
    if lm_head is not None:  # untied: keep the LM head beside, so the backbone is whole again on load
        save_file({"lm_head.weight": lm_head.detach().cpu().clone().contiguous()}, str(out / LM_HEAD_FILE))
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "eos_id", None)
    config = config_to_hf(backbone.config, dtype)
    config.update(architectures=[SEQ_CLS_ARCHITECTURE], num_labels=1, id2label={"0": "LABEL_0"},
                  label2id={"LABEL_0": 0}, pad_token_id=pad_token_id)
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    notes = {"reward": "score.weight applied to the final-norm hidden state of the last real token "
                       "(the last position whose attention_mask is 1)", "pad_token_id": pad_token_id,
             "metrics": dict(metrics or {})}
    atomic_write_text(out / OURS_FILE, json.dumps(notes, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def load_reward_model(path: str | Path, dtype: str | torch.dtype = "fp32", device: str | torch.device = "cpu") -> RewardModel:
    """A reward model from a sequence-classification folder (:func:`save_reward_model`'s, or one
    written by transformers/TRL) or from a trainer export with ``modules/score.safetensors``."""
    folder = Path(path).expanduser()
    torch_dtype = resolve_dtype(dtype) or torch.float32
    config_file = folder / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"no reward model at {folder} (no config.json)")
    hf = json.loads(config_file.read_text())
    archs = hf.get("architectures") or []
    if SEQ_CLS_ARCHITECTURE not in archs:
        if (folder / MODULES_DIR / f"{HEAD_MODULE}.safetensors").exists():
            backbone = load_model(folder, dtype=torch_dtype, device=device)
            head = nn.Linear(backbone.config.hidden_size, 1, bias=False)
            load_module(folder, HEAD_MODULE, head)
            return RewardModel(backbone, head.to(device=device, dtype=torch_dtype)).eval()
        raise CheckpointError(f"{folder} is not a reward model: its config.json names {archs}, not "
                              f"{SEQ_CLS_ARCHITECTURE}, and it has no {MODULES_DIR}/{HEAD_MODULE}.safetensors")
    if hf.get("num_labels", len(hf.get("id2label") or {0: 0})) != 1:
        raise CheckpointError(f"{config_file}: a reward model has num_labels 1, this one {hf.get('num_labels')}")
    config = config_from_hf({**hf, "architectures": [ARCHITECTURE]}, str(config_file))
    theirs = read_safetensors([f for f in safetensor_files(folder) if f.name != LM_HEAD_FILE])
    if "score.weight" not in theirs:
        raise CheckpointError(f"{folder} has no score.weight (the reward head)")
    score = theirs.pop("score.weight")
    if not config.tie_word_embeddings:
        if (folder / LM_HEAD_FILE).exists():
            theirs.update(read_safetensors([folder / LM_HEAD_FILE]))
        else:  # written elsewhere: the reward never uses the LM head; keep the backbone whole with zeros
            theirs["lm_head.weight"] = torch.zeros(config.vocab_size, config.hidden_size)
    backbone = build_model(config, QWEN2_NAMES.to_ours(theirs, config, str(folder)), torch_dtype, device)
    head = nn.Linear(config.hidden_size, 1, bias=False)
    if tuple(score.shape) != (1, config.hidden_size):
        raise CheckpointError(f"{folder}: score.weight is {tuple(score.shape)}, expected (1, {config.hidden_size})")
    with torch.no_grad():
        head.weight.copy_(score)
    return RewardModel(backbone, head.to(device=device, dtype=torch_dtype)).eval()


def reward_notes(path: str | Path) -> dict[str, Any]:
    """The ``openqwen_reward.json`` of a saved reward model ({} when absent)."""
    f = Path(path) / OURS_FILE
    return json.loads(f.read_text()) if f.exists() else {}
