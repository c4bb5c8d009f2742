"""Perplexity equals exp of the mean token loss computed independently (transformers' Qwen2 on the
same weights), and reading texts handles the artifact's zip."""

from __future__ import annotations

import math

import pytest
import torch

from openqwen import Qwen, QwenConfig, save_model
from openqwen.eval.tasks.perplexity import perplexity, read_texts, sliding_perplexity
from openqwen.infer import score
from openqwen.infer.engine import Engine

transformers = pytest.importorskip("transformers")


class _Vocab:
    def __init__(self, n: int) -> None:
        self.vocab_size = n


def test_perplexity_matches_transformers_loss(tmp_path):
    torch.manual_seed(0)
    model = Qwen(QwenConfig(vocab_size=211, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, seq_length=128,
                            max_position_embeddings=512)).eval()
    save_model(model, tmp_path / "m")
    hf = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path / "m", torch_dtype=torch.float32).eval()
    ids = torch.randint(0, 211, (1000,), generator=torch.Generator().manual_seed(1)).tolist()
    for L in (16, 100):
        got = perplexity(Engine(model, _Vocab(211), background=False), ids, L, max_windows=5)
        losses = []
        with torch.no_grad():
            for w in range(5):
                x = torch.tensor([ids[w * L : (w + 1) * L]])
                losses.append(hf(input_ids=x, labels=x).loss.item())  # mean over the L-1 predictions
        assert got["windows"] == 5 and got["tokens"] == 5 * (L - 1)
        assert got["perplexity"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-4)


def test_perplexity_chunked_head_and_errors(monkeypatch):
    torch.manual_seed(0)
    model = Qwen(QwenConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, seq_length=64, max_position_embeddings=256)).eval()
    engine = Engine(model, _Vocab(50), max_seq_len=128, background=False)
    w = torch.randint(0, 50, (140,)).tolist()
    whole = perplexity(engine, w, 70)
    monkeypatch.setattr(score, "HEAD_CHUNK", 7)  # the output head in chunks of 7 positions
    chunked = perplexity(engine, w, 70)
    assert chunked["tokens"] == whole["tokens"] == 2 * 69
    assert chunked["mean_nll"] == pytest.approx(whole["mean_nll"], rel=1e-6)
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(engine, list(range(10)), 64)
    with pytest.raises(ValueError, match="context holds 128"):
        perplexity(engine, w, 140)


def test_sliding_perplexity_scores_the_same_tokens_with_at_least_l_minus_stride_context():
    """Reference: for every scored token t, -log p(ids[t] | ids[t - c .. t-1]) from a plain forward over
    the window that ends at the stride's end (c between L - stride and L - 1)."""
    torch.manual_seed(0)
    model = Qwen(QwenConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, seq_length=64, max_position_embeddings=256)).eval()
    engine = Engine(model, _Vocab(50), max_seq_len=64, background=False)
    ids = torch.randint(0, 50, (200,), generator=torch.Generator().manual_seed(3)).tolist()
    for L, stride in ((24, 8), (40, 8), (17, 1)):
        got = sliding_perplexity(engine, ids, L, stride, start=40, stop=88)
        nll = 0.0
        with torch.no_grad():
            for end in range(40 + stride, 89, stride):
                logp = torch.log_softmax(model(torch.tensor([ids[end - L : end]]))[0].float(), -1)
                nll -= sum(logp[L - stride - 1 + k, ids[end - stride + k]].item() for k in range(stride))
        assert got["tokens"] == 48
        assert got["mean_nll"] == pytest.approx(nll / 48, rel=1e-5)
    with pytest.raises(ValueError, match="start >= 32"):
        sliding_perplexity(engine, ids, 40, 8, start=20)


def test_read_texts_zip_and_jsonl(tmp_path, artifact):
    plays = read_texts(artifact("shakespeare"))
    assert len(plays) == 38 and all(len(p) > 10_000 for p in plays)
    (tmp_path / "t.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert read_texts(tmp_path / "t.jsonl") == ["one", "two"]
