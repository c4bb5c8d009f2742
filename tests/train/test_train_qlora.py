"""Q-LoRA: LoRA adapters trained by the Trainer on a frozen int4 / int8 base, exported merged and in the
PEFT layout, which ``peft`` loads onto transformers' Qwen2 model with the same logits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from openqwen.infer import quant
from openqwen.infer.quant import Int4Linear, Int8Linear
from openqwen.train.batches import PackedRows
from openqwen.train.config import LoRASection, TrainConfig
from openqwen.train.loop import Trainer
from openqwen.train.lora import LoRALinear, apply_lora
from openqwen.train.metrics import read_metrics
from openqwen.train.pretrain import build_model

NANO = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2}


def make_cfg(out: Path, data: Path, **over) -> TrainConfig:
    base = {"train.out_dir": str(out), "data.path": str(data), "train.batch_size": 4, "train.max_steps": 24,
            "optim.lr": 1e-2, "optim.warmup_steps": 2, "train.progress": False, "train.peak_flops": 1e10,
            "train.tensorboard": False, "model.overrides": NANO, "train.eval_every": 0}
    base.update(over)
    return TrainConfig.load(None, base)


@pytest.fixture(scope="module")
def float_base(tmp_path_factory, packed_text) -> Path:
    """A nano model pretrained in float for a few steps (the base Q-LoRA starts from)."""
    out = tmp_path_factory.mktemp("qlora-base")
    cfg = make_cfg(out, packed_text, **{"train.max_steps": 12, "optim.lr": 3e-3})
    rows = PackedRows(packed_text)
    trainer = Trainer(cfg, build_model(cfg, rows.ds.vocab_size, rows.seq_len), rows)
    trainer.fit()
    trainer.export(out / "model")
    return out / "model"


def next_token_loss(model: nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model.eval()(ids[:, :-1])
    return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten()))


def transformers_logits(folder: Path, ids: torch.Tensor, adapter: Path | None = None,
                        round_base_inputs=None) -> torch.Tensor:
    """Logits of transformers (+ peft); ``round_base_inputs``: applied to the inputs of the adapted
    layers' base linears, as our int4 layers round their activations (the adapters see them unrounded)."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if round_base_inputs is not None:
            bases = [m.base_layer for m in model.modules() if hasattr(m, "base_layer")]
            assert bases
            for b in bases:
                b.register_forward_pre_hook(lambda mod, args: (round_base_inputs(args[0]),))
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.mark.parametrize("base", ["int4", "int8"])
def test_qlora_trains_on_frozen_quantised_base_and_peft_loads_it(tmp_path, packed_text, float_base, base):
    cfg = make_cfg(tmp_path, packed_text, **{"model.init_from": str(float_base), "lora.rank": 8, "lora.alpha": 16,
                                             "lora.base": base, "lora.base_group_size": 32})
    rows = PackedRows(packed_text)
    model = build_model(cfg, rows.ds.vocab_size, rows.seq_len)
    apply_lora(model, cfg.lora)
    kind = Int4Linear if base == "int4" else Int8Linear
    layers = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == 8 and all(isinstance(m.base, kind) for m in layers)
    frozen = {n: b.clone() for n, b in model.named_buffers() if ".base." in n}
    # trained on 8 rows (3 epochs at batch 4 in 24 steps): a nano base learns slowly through rank-8
    # adapters (float LoRA moves the same rows by the same ~0.045 nats), but it does learn them
    rows = PackedRows(rows.ds, 0, 8)
    probe = torch.stack([torch.as_tensor(rows[i]["input_ids"]).long() for i in range(8)])
    before = next_token_loss(model, probe)
    trainer = Trainer(cfg, model, rows)
    trainer.fit()
    assert len([r for r in read_metrics(tmp_path) if r["kind"] == "train"]) == cfg.train.max_steps
    after = next_token_loss(model, probe)
    assert after < before - 0.02, (before, after)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(n.endswith((".lora_a", ".lora_b")) for n in trained)
    assert all(torch.equal(b, frozen[n]) for n, b in model.named_buffers() if n in frozen)  # the base never moved

    trainer.export(tmp_path / "export")
    adapter = tmp_path / "export" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and set(config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    ids = torch.randint(0, rows.ds.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.eval()(ids)
    # transformers + peft on the dequantised base the adapters were trained on == our Q-LoRA model
    # (int8 layers round activations to int16 blocks: ~1e-5 relative; int4 layers to int8 blocks of 32,
    # which the peft model's base layers are given too)
    rounding = quant.round_activations_int8 if base == "int4" else None
    with_peft = transformers_logits(adapter / "base", ids, adapter, rounding)
    torch.testing.assert_close(with_peft, ours, atol=2e-3, rtol=1e-3)
    # merged into the weights == base + adapters, both in float
    plain_peft = with_peft if rounding is None else transformers_logits(adapter / "base", ids, adapter)
    merged = transformers_logits(tmp_path / "export", ids)
    torch.testing.assert_close(merged, plain_peft, atol=1e-4, rtol=1e-4)
    # and the adapters matter: the base alone gives other logits
    assert (transformers_logits(adapter / "base", ids) - plain_peft).abs().max() > 1e-2


def test_qlora_gradients_equal_those_of_the_dequantised_float_layer():
    torch.manual_seed(0)
    float_layer = nn.Linear(64, 48, bias=True)
    quantized = LoRALinear(Int4Linear.from_float(float_layer.weight, float_layer.bias, group_size=32), 4, 8.0)
    reference = nn.Linear(64, 48, bias=True)
    with torch.no_grad():
        reference.weight.copy_(quantized.base.dequantize())
        reference.bias.copy_(float_layer.bias)
    # the int4 layer rounds its input to int8 blocks; its backward passes the gradient straight through
    reference.register_forward_pre_hook(
        lambda mod, args: (args[0] + (quant.round_activations_int8(args[0]) - args[0]).detach(),))
    reference = LoRALinear(reference, 4, 8.0)
    with torch.no_grad():
        reference.lora_a.copy_(quantized.lora_a)
        reference.lora_b.normal_()
        quantized.lora_b.copy_(reference.lora_b)
    x1 = torch.randn(5, 64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    (quantized(x1) ** 2).sum().backward()
    (reference(x2) ** 2).sum().backward()
    for a, b in ((x1.grad, x2.grad), (quantized.lora_a.grad, reference.lora_a.grad),
                 (quantized.lora_b.grad, reference.lora_b.grad)):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
    assert quantized.base.weight.grad is None and not quantized.base.weight.is_floating_point()


def test_bad_qlora_settings_are_refused():
    from openqwen import Qwen, QwenConfig

    model = Qwen(QwenConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                            num_attention_heads=4))
    with pytest.raises(ValueError, match="lora.base must be one of"):
        apply_lora(copy.deepcopy(model), LoRASection(rank=4, base="nf4"))
    with pytest.raises(ValueError, match="base_group_size"):
        apply_lora(copy.deepcopy(model), LoRASection(rank=4, base="int4", base_group_size=48))
