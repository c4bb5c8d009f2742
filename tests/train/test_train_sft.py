"""SFT: chat formats, the assistant-only loss mask, packing with attention kept inside each
conversation, a short SFT run (full and LoRA) with export."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from openqwen import Qwen, load_model, save_model
from openqwen.train.batches import IGNORE_INDEX, collate
from openqwen.train.config import TrainConfig
from openqwen.train.metrics import read_metrics
from openqwen.train.sft_data import (ChatDataError, ChatRows, EncodedChat, builtin_chat_set, encode_chats,
                                     heldout_arithmetic, normalise_sample, read_chat_jsonl)
from openqwen.train.tasks import NextTokenTask

from train_helpers import nano_config, real_texts

CONV = [{"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5"},
        {"role": "user", "content": "And <|im_end|> 10 - 4?"}, {"role": "assistant", "content": "10 - 4 = 6, 你好"}]


def test_both_formats_and_per_sample_system_prompts(tmp_path):
    path = tmp_path / "chats.jsonl"
    release = {"system": "You answer in one line.", "conversations": [
        {"from": "user", "value": m["content"]} if m["role"] == "user" else {"from": "assistant", "value": m["content"]}
        for m in CONV[1:]]}
    path.write_text(json.dumps({"messages": CONV}) + "\n\n" + json.dumps(release, ensure_ascii=False) + "\n")
    a, b = read_chat_jsonl(path)
    assert a == CONV and b == CONV
    with pytest.raises(ChatDataError, match="no assistant turn"):
        normalise_sample({"messages": [{"role": "user", "content": "hi"}]})
    with pytest.raises(ChatDataError, match="unknown role 'robot'"):
        normalise_sample({"messages": [{"role": "robot", "content": "hi"}]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": CONV}) + "\n{oops\n")
    with pytest.raises(ChatDataError, match="bad.jsonl:2: not valid JSON"):
        read_chat_jsonl(bad)


def test_loss_mask_covers_exactly_the_assistant_tokens(artifact):
    from openqwen import QwenTokenizer

    tok = QwenTokenizer.from_pretrained(artifact("qwen-tiktoken"))
    no_system = CONV[1:3]
    chats, dropped = encode_chats([CONV, no_system], tok, "You are a helpful assistant.", max_len=512)
    assert dropped == 0
    rows = ChatRows(chats, seq_len=256, pad_id=tok.eos_id, pack=True)
    assert len(rows) == 1  # both conversations packed into one row
    row = rows[0]
    ids, labels = row["input_ids"].tolist(), row["labels"].tolist()
    # independent expectation: each assistant reply's tokens followed by <|im_end|>, in order
    expected = []
    for conv in (CONV, no_system):
        for m in conv:
            if m["role"] == "assistant":
                expected.append(tok.encode(m["content"]) + [tok.im_end_id])
    runs, cur = [], []
    for t, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    assert sorted(map(tuple, runs)) == sorted(map(tuple, expected))
    header = tok.encode("<|im_start|>assistant\n", allowed_special="all")
    starts = [i for i in range(1, len(ids)) if labels[i] != IGNORE_INDEX and labels[i - 1] == IGNORE_INDEX]
    assert all(ids[s - len(header):s] == header for s in starts)
    # the default system prompt was added where the sample had none; the user's "<|im_end|>" stayed text
    text = tok.decode(ids)
    assert text.count("You are a helpful assistant.") == 1 and text.count("You answer in one line.") == 1
    assert ids.count(tok.im_end_id) == 5 + 3  # one per turn: the typed "<|im_end|>" stayed plain text


def test_packed_rows_give_each_conversation_exactly_its_own_loss():
    rng = np.random.default_rng(0)
    chats = [EncodedChat(rng.integers(0, 300, n).tolist(), (rng.random(n) < 0.5).tolist()) for n in (9, 14, 6, 20)]
    torch.manual_seed(0)
    model = Qwen(nano_config()).eval()
    task = NextTokenTask()
    packed = ChatRows(chats, seq_len=32, pad_id=0, pack=True, seed=1)
    assert len(packed) < len(chats)
    with torch.no_grad():
        total = sum(float(task.loss(model, collate([r]))[0]) for r in packed.rows)
        alone = 0.0
        for c in chats:
            ids = torch.tensor([c.ids])
            labels = torch.where(torch.tensor([c.mask]), ids, torch.full_like(ids, IGNORE_INDEX))
            alone += float(task.loss(model, {"input_ids": ids, "labels": labels})[0])
    assert total == pytest.approx(alone, rel=1e-5)
    assert sum(task.count(collate([r])) for r in packed.rows) == sum(sum(c.mask[1:]) for c in chats)


def test_builtin_set_keeps_heldout_questions_out():
    chats = builtin_chat_set(3000, seed=3)
    users = {m["content"] for c in chats for m in c if m["role"] == "user"}
    assert not users & {q for q, _ in heldout_arithmetic()}
    assert sum(c[0]["role"] == "system" for c in chats) > 500  # per-sample system prompts


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    from openqwen.tokenizer.train import train_tokenizer

    out = tmp_path_factory.mktemp("base")
    tok = train_tokenizer(real_texts(60_000) + [json.dumps(c) for c in builtin_chat_set(300)], vocab_size=512,
                          show_progress=False)
    torch.manual_seed(0)
    model = Qwen(nano_config(vocab_size=512, seq_length=128, max_position_embeddings=256))
    save_model(model, out)
    tok.save_pretrained(out)
    return out


def _sft_cfg(out, base, **over) -> TrainConfig:
    cfg = {"model.init_from": str(base), "train.out_dir": str(out), "sft.train_files": ["builtin"],
           "sft.builtin_size": 400, "train.max_steps": 25, "train.batch_size": 4, "optim.lr": 3e-3,
           "optim.warmup_steps": 3, "train.progress": False, "train.tensorboard": False, "train.peak_flops": 1e10}
    cfg.update(over)
    return TrainConfig.load(None, cfg)


def test_sft_run_learns_and_exports(tmp_path, base_model_dir):
    from openqwen import QwenTokenizer
    from openqwen.train import sft

    summary = sft.run(_sft_cfg(tmp_path, base_model_dir))
    losses = [r["loss"] for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:3])  # from random init: 6.1 -> ~4.6 nats
    assert summary["conversations"] == 400 and summary["dropped"] == 0
    model = load_model(tmp_path)
    tok = QwenTokenizer.from_pretrained(tmp_path)
    assert tok.vocab_size == 512 and model.config.vocab_size == 512


def test_lora_trains_only_adapters_and_merges_on_export(tmp_path, base_model_dir):
    from openqwen.train import sft

    sft.run(_sft_cfg(tmp_path, base_model_dir, **{"lora.rank": 4, "train.max_steps": 8, "optim.lr": 1e-2}))
    base, tuned = load_model(base_model_dir), load_model(tmp_path)
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all(any(t in n for t in ("qkv_proj.weight", "o_proj", "gate_up_proj", "down_proj"))
                           for n in changed)
    # the merged export equals base + adapters applied at run time
    from openqwen.train.lora import apply_lora
    from openqwen.train.config import LoRASection
    from openqwen.train.checkpointing import latest_checkpoint

    state = torch.load(latest_checkpoint(tmp_path) / "state.pt", weights_only=False)["model"]
    live = load_model(base_model_dir)
    apply_lora(live, LoRASection(rank=4))
    live.load_state_dict(state)
    ids = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(tuned.eval()(ids), live.eval()(ids), atol=1e-4, rtol=1e-4)
