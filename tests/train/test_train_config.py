"""Recipes, overrides and schedules."""

from __future__ import annotations

import math

import pytest
import torch

from openqwen.train.config import TrainConfig, list_recipes, parse_override_args
from openqwen.train.optim import build_optimizer, lr_at, param_groups
from openqwen.train.config import OptimSection
from openqwen import Qwen

from train_helpers import nano_config


def test_yaml_and_cli_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim: {lr: 1.0e-3, betas: [0.9, 0.99]}\ntrain: {max_steps: 7}\n")
    cfg = TrainConfig.load(recipe, ["--optim.lr", "2e-3", "--train.precision=bf16", "--sft.train_files", "a.jsonl,b.jsonl",
                                    "--model.overrides", "{num_hidden_layers: 2}"])
    assert cfg.optim.lr == 2e-3 and cfg.optim.betas == (0.9, 0.99) and cfg.train.max_steps == 7
    assert cfg.train.precision == "bf16" and cfg.sft.train_files == ["a.jsonl", "b.jsonl"]
    assert cfg.model.overrides == {"num_hidden_layers": 2}
    # the saved YAML reads back to the same config
    cfg.save(tmp_path / "out.yaml")
    assert TrainConfig.load(tmp_path / "out.yaml").to_dict() == cfg.to_dict()


def test_bad_keys_and_values_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'"):
        TrainConfig.load(None, {"optim.lrr": 1})
    with pytest.raises(ValueError, match="train.max_steps expects an integer"):
        TrainConfig.load(None, ["--train.max_steps", "ten"])
    with pytest.raises(ValueError, match="unknown config section"):
        TrainConfig.from_dict({"optimizer": {"lr": 1}})
    with pytest.raises(ValueError, match="needs a value"):
        parse_override_args(["--optim.lr"])


ALIGNMENT_RECIPES = ("reward", "dpo", "ppo")


def test_bundled_recipes_load():
    names = list_recipes()
    assert {"nano-pretrain.yaml", "nano-sft.yaml", "pretrain.yaml", "sft.yaml"} <= set(names)
    # the alignment recipes carry their stage's own section; tests/align/test_align_recipes.py loads them
    for name in names:
        if not name.startswith(ALIGNMENT_RECIPES):
            TrainConfig.load(name)
    sft = TrainConfig.load("sft.yaml")  # the report's SFT settings
    assert (sft.optim.lr, sft.optim.warmup_steps, sft.model.dropout, sft.optim.weight_decay) == (2e-6, 1430, 0.1, 0.1)


def test_warmup_cosine_and_constant_schedules():
    peak, warm, total = 1e-3, 10, 110
    assert lr_at(0, peak, warm, total) == pytest.approx(peak / 10)
    assert lr_at(9, peak, warm, total) == pytest.approx(peak)
    assert lr_at(60, peak, warm, total) == pytest.approx(0.1 * peak + 0.9 * peak * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(110, peak, warm, total) == pytest.approx(0.1 * peak)  # floor: 10 % of peak
    assert lr_at(500, peak, warm, total) == pytest.approx(0.1 * peak)
    assert lr_at(100, peak, warm, total, schedule="constant") == peak
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(20, peak, warm, total, schedule="linear")


def test_weight_decay_only_on_matrices():
    model = Qwen(nano_config(tie_word_embeddings=True))
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.ndim == 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    # the tied embedding/head is one parameter, listed once
    total = len(decay["params"]) + len(no_decay["params"])
    assert total == len(list(model.parameters()))
    opt = build_optimizer(model, OptimSection())
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8


def test_adamw_step_matches_the_textbook_update():
    torch.manual_seed(0)
    model = Qwen(nano_config(num_hidden_layers=1))
    w = model.layers[0].mlp.down_proj.weight
    b = model.layers[0].self_attn.qkv_proj.bias
    w0, b0 = w.detach().clone(), b.detach().clone()
    opt = build_optimizer(model, OptimSection(lr=0.01))
    g = torch.randn_like(w)
    gb = torch.randn_like(b)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    w.grad, b.grad = g.clone(), gb.clone()
    opt.step()
    lr, (b1, b2), eps = 0.01, (0.9, 0.95), 1e-8

    def adam(p0, grad, wd):
        m, v = (1 - b1) * grad, (1 - b2) * grad**2
        return p0 * (1 - lr * wd) - lr * (m / (1 - b1)) / ((v / (1 - b2)).sqrt() + eps)

    torch.testing.assert_close(w.detach(), adam(w0, g, 0.1), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(b.detach(), adam(b0, gb, 0.0), atol=1e-7, rtol=1e-6)
