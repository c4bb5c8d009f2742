"""The int8 KV cache (``--kv-cache int8``) on the engine's paths: the fused C step reads and writes it as
the torch model does, generation through the engine equals the torch model's cached decoding on the
same int8 cache, and the flag sets it (tests/test_kv_cache.py holds the rounding and the memory)."""

from __future__ import annotations

import argparse

import pytest
import torch
from infer_helpers import ByteTokenizer, assert_fused_step_equals_torch, tiny_model

from openqwen.infer import kernels
from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams

needs_kernels = pytest.mark.skipif(kernels.load_kernels() is None, reason=f"C kernels: {kernels.kernel_status()}")


@needs_kernels
@pytest.mark.parametrize("windows", [None, [5, None]], ids=["full", "ring"])
def test_fused_step_on_an_int8_cache_equals_the_torch_step(windows):
    model = tiny_model(seed=7, seq_length=8, max_position_embeddings=64, window_sizes=windows,
                       kv_cache_dtype="int8").eval()
    lengths = [3, 9, 17]
    caches = model.new_cache(3, 40), model.new_cache(3, 40)
    assert caches[0].keys[0].dtype == torch.int8
    assert_fused_step_equals_torch(model, caches, lengths)
    # the C step rounds keys and values exactly as kv_cache.quantize_int8 does
    for a, b in zip(caches[0].keys + caches[0].values, caches[1].keys + caches[1].values):
        assert (a.int() - b.int()).abs().max() <= 1
    for a, b in zip(caches[0].key_scales, caches[1].key_scales):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
def test_engine_generation_on_an_int8_cache_equals_the_models_cached_decoding(fused):
    if fused and kernels.load_kernels() is None:
        pytest.skip(kernels.kernel_status())
    model = tiny_model(seed=8, seq_length=8, max_position_embeddings=64, window_sizes=[6, None],
                       kv_cache_dtype="int8").eval()
    prompt = list(range(30, 42))
    engine = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=48, fused=fused, background=False)
    got = engine.generate([prompt], SamplingParams(max_new_tokens=20, temperature=0, ignore_eos=True))[0].token_ids
    assert ("fused C" in engine.fused_status) == fused, engine.fused_status
    cache, want = model.new_cache(1, 48), []
    with torch.no_grad():
        logits = model(torch.tensor([prompt]), cache=cache)[0, -1, :259]
        for _ in range(20):
            want.append(int(logits.argmax()))
            logits = model(torch.tensor([[want[-1]]]), cache=cache)[0, -1, :259]
    assert got == want


def test_the_kv_cache_flag_sets_int8_storage():
    from openqwen.infer.loading import add_model_arguments, apply_long_context, long_context_from_args

    p = argparse.ArgumentParser()
    add_model_arguments(p)
    model = tiny_model(seed=1)
    apply_long_context(model, long_context_from_args(p.parse_args(["--model", "m", "--kv-cache", "int8"])))
    assert model.config.kv_cache_dtype == "int8"
    assert model.new_cache(1, 8).keys[0].dtype == torch.int8
    with pytest.raises(SystemExit):
        p.parse_args(["--model", "m", "--kv-cache", "fp8"])
    with pytest.raises(ValueError, match="kv_cache_dtype must be one of auto, int8"):
        model.config.replace(kv_cache_dtype="int4")
