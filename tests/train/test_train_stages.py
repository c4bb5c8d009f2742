"""Multi-stage SFT: stages run in turn, each from the previous stage's exported model, with its own
data and LR (Code-Qwen-Chat's recipe shape)."""

from __future__ import annotations

import json

import pytest
import torch

from openqwen import Qwen, load_model, save_model
from openqwen.train.config import TrainConfig
from openqwen.train.metrics import read_metrics
from openqwen.train.sft import stage_configs

from train_helpers import nano_config


@pytest.fixture(scope="module")
def base(tmp_path_factory, artifact):
    from openqwen import QwenTokenizer
    from openqwen.data.synthetic_math import math_chats
    from openqwen.tokenizer.train import train_tokenizer

    out = tmp_path_factory.mktemp("stages-base")
    tok = train_tokenizer([json.dumps(c) for c in math_chats(400)], vocab_size=300, show_progress=False)
    torch.manual_seed(0)
    save_model(Qwen(nano_config(vocab_size=320, seq_length=128)), out)
    tok.save_pretrained(out)
    assert QwenTokenizer.from_pretrained(out).vocab_size <= 320
    return out


def _cfg(out, base, stages) -> TrainConfig:
    return TrainConfig.load(None, {
        "model.init_from": str(base), "train.out_dir": str(out), "sft.stages": stages, "sft.builtin_size": 40,
        "train.batch_size": 4, "optim.warmup_steps": 1, "train.progress": False, "train.tensorboard": False,
        "train.peak_flops": 1e10})


def test_stages_chain_models_with_their_own_data_and_lr(tmp_path, base):
    from openqwen.train import sft

    stages = [{"name": "chat", "train_files": ["builtin"], "lr": 3e-3, "max_steps": 2},
              {"name": "math", "train_files": ["builtin-math"], "lr": 0.0, "max_steps": 1}]
    cfgs = stage_configs(_cfg(tmp_path, base, stages))
    assert [c.model.init_from for _, c in cfgs] == [str(base), str(tmp_path / "chat")]
    assert [c.train.out_dir for _, c in cfgs] == [str(tmp_path / "chat"), str(tmp_path)]
    assert [c.optim.lr for _, c in cfgs] == [3e-3, 0.0] and cfgs[1][1].sft.train_files == ["builtin-math"]
    summary = sft.run(_cfg(tmp_path, base, stages))
    assert set(summary["stages"]) == {"chat", "math"}
    first, last, start = load_model(tmp_path / "chat"), load_model(tmp_path), load_model(base)
    # stage 1 trained (its weights moved); stage 2 at LR 0 kept exactly the weights it started from,
    # which are stage 1's: the chain passed the model on
    assert any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), start.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict().values(), first.state_dict().values()))
    lrs = [max(r["lr"] for r in read_metrics(d) if r["kind"] == "train") for d in (tmp_path / "chat", tmp_path)]
    assert lrs == [pytest.approx(3e-3), 0.0]


def test_bad_stages_say_what_to_fix(tmp_path, base):
    with pytest.raises(ValueError, match=r"sft.stages\[0\] needs a name and train_files"):
        stage_configs(_cfg(tmp_path, base, [{"lr": 1e-3}]))
    with pytest.raises(ValueError, match="repeated"):
        stage_configs(_cfg(tmp_path, base, [{"name": "a", "train_files": ["builtin"]}] * 2))
    with pytest.raises(ValueError, match="unknown config key 'sft.learning_rate'"):
        stage_configs(_cfg(tmp_path, base, [{"name": "a", "train_files": ["builtin"], "learning_rate": 1}]))


def test_specialist_recipes_hold_the_reports_values():
    code = TrainConfig.load("code-continue.yaml")
    assert (code.optim.lr, code.optim.schedule, code.model.seq_length) == (3e-5, "constant", 8192)
    assert code.optim.warmup_steps == round(0.03 * code.train.max_steps)
    assert code.train.batch_size * code.train.grad_accum * 8 * 8192 == 4 * 2**20  # 4M tokens on 8 GPUs
    nano = TrainConfig.load("code-continue-nano.yaml")
    assert nano.optim.schedule == "constant" and nano.optim.warmup_steps == round(0.03 * nano.train.max_steps)
    chat = stage_configs(TrainConfig.load("code-chat.yaml", {"model.init_from": "BASE"}))
    assert [n for n, _ in chat] == ["general", "code"] and chat[1][1].model.init_from == "runs/code-chat-7b/general"
    math = TrainConfig.load("math-sft.yaml")
    assert (math.optim.lr, math.model.seq_length, math.train.max_steps, math.sft.mask_prompt) == (2e-5, 1024, 50000, True)
