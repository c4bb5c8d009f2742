"""Helpers of the serving tests: a tiny random model, an independent greedy decoder, and a live
uvicorn server on a free loopback port (in a thread), which the official ``openai`` SDK talks to."""

from __future__ import annotations

import torch

from openqwen import Qwen, QwenConfig

API_KEY = "sk-test-openqwen"
MODEL_NAME = "tiny-qwen"
CONTEXT = 384


def tiny_model() -> Qwen:
    """Random weights over the full Qwen vocabulary. The output head is untied and scaled up so that
    logits spread widely: greedy choices then have clear margins (they never flip on float rounding
    between a batched and a single-sequence forward pass) and differ from prompt to prompt."""
    torch.manual_seed(0)
    config = QwenConfig(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                        max_position_embeddings=CONTEXT, seq_length=CONTEXT)
    model = Qwen(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
        for name, p in model.named_parameters():
            if name.startswith("layers.") and p.dim() == 2:
                p.mul_(25.0)  # strong attention/MLP branches: the context, not just the last token, matters
    return model.eval()


@torch.no_grad()
def greedy_reference(model: Qwen, prompt: list[int], max_new: int, stop_ids: set[int]) -> list[int]:
    """Independent greedy decoding: a full forward pass per token, no cache, no batching."""
    ids, out = list(prompt), []
    for _ in range(max_new):
        token = int(model(torch.tensor([ids]))[0, -1].argmax())
        if token in stop_ids:
            break
        out.append(token)
        ids.append(token)
    return out


def LiveServer(app):
    """A live uvicorn server on a free loopback port, in a thread (the package's own helper)."""
    from openqwen.serve.app import BackgroundServer

    return BackgroundServer(app)


def make_engine(model, tokenizer, max_batch_size: int = 16):
    from openqwen.infer.engine import Engine

    return Engine(model, tokenizer, max_batch_size=max_batch_size, max_seq_len=CONTEXT)


def close_engine(engine) -> None:
    engine.close()  # stops the engine's stepping thread
