"""The engine on the real Qwen2.5-Coder-0.5B-Instruct GGUF (slow: loads 630M parameters)."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import hf_twin

pytestmark = [pytest.mark.slow, pytest.mark.artifacts]


@pytest.fixture(scope="module")
def real(request):
    from openqwen.artifacts import artifact_path
    from openqwen.infer.loading import load_for_inference
    from openqwen.tokenizer import QwenTokenizer

    path = artifact_path("qwen25-coder-0.5b-instruct-gguf")
    if path is None:
        pytest.skip("artifact 'qwen25-coder-0.5b-instruct-gguf' not fetched")
    return load_for_inference(path, "fp32"), QwenTokenizer.from_pretrained(path)


def test_real_model_greedy_chat_equals_transformers_and_int8_stays_close(real):
    import copy

    from openqwen.infer.engine import Engine
    from openqwen.infer.quant import quantize_int8
    from openqwen.infer.sampling import SamplingParams

    model, tok = real
    messages = [{"role": "user", "content": "Write a Python function that returns the square of a number."}]
    ids = tok.apply_chat_template(messages)
    engine = Engine(model, tok, max_batch_size=2, max_seq_len=256)
    ours = engine.chat([messages], SamplingParams(max_new_tokens=12, temperature=0))[0]
    engine.close()
    hf = hf_twin(model)
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
    # a 12-token budget ends mid-answer: all 12 tokens are compared, none skipped by an early stop
    assert ours.finish_reason == "length" and ours.token_ids == ref and len(ref) == 12
    assert "def" in ours.text or "square" in ours.text.lower()  # the real model answers the question

    q = quantize_int8(copy.deepcopy(model))
    x = torch.tensor([ids + ref])
    with torch.no_grad():
        a, b = model(x)[0], q(x)[0]
    assert (b - a).norm() / a.norm() < 0.1
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.85


def test_real_model_int8_fused_batch_equals_solo(real):
    # the fused int8 decode step on real weights: 3 chats decoded together give each one's solo tokens
    import copy

    from openqwen.infer.engine import Engine
    from openqwen.infer.quant import quantize_int8
    from openqwen.infer.sampling import SamplingParams

    model, tok = real
    q = quantize_int8(copy.deepcopy(model))
    chats = [[{"role": "user", "content": c}] for c in
             ("Reverse a string in Python.", "What is 17 * 23?", "Name three sorting algorithms.")]
    params = SamplingParams(max_new_tokens=16, temperature=0)
    together = Engine(q, tok, max_batch_size=4, max_seq_len=256)
    batched = [c.token_ids for c in together.chat(chats, params)]
    assert together.fused_status == "fused C decode step"
    together.close()
    for chat, tokens in zip(chats, batched):
        alone = Engine(q, tok, max_batch_size=1, max_seq_len=256)
        assert alone.chat([chat], params)[0].token_ids == tokens
        alone.close()
