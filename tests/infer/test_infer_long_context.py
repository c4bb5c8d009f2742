"""Long-context options on every path of the engine: the fused C step, batched rows of different lengths,
prefix reuse and scoring, each against the torch model run alone (tests/test_long_context.py holds the
model against independent references)."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import ByteTokenizer, assert_fused_step_equals_torch, tiny_model

from openqwen.infer import kernels
from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams

S = 8
OPTIONS = {
    "ntk-logn": dict(use_dynamic_ntk=True, use_logn_attn=True),
    "ntk-rotate": dict(use_dynamic_ntk=True, rope_update="rotate"),
    "windows-sinks": dict(window_sizes=[5, None], attention_sinks=2),
    "all-rotate": dict(use_dynamic_ntk=True, use_logn_attn=True, window_sizes=[6, 11], attention_sinks=1,
                       rope_update="rotate"),
    "yarn": dict(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": S}),
}


def model_with(name: str, seed: int = 3):
    return tiny_model(seed=seed, seq_length=S, max_position_embeddings=64, **OPTIONS[name]).eval()


def check_greedy(model, prompt: list[int], got: list[int]) -> None:
    """Each token the engine chose is the argmax of a full forward over the text so far (a tie within
    1e-3 of logits ~20 is fp32 noise, not a choice), with the RoPE base the engine must use: rope_update
    "rotate" re-decides it at each length, "prefill" keeps the prompt's. Lengths that share a base share
    one forward (attention is causal, LogN and windows depend on positions only)."""
    from openqwen.long_context import is_dynamic, rope_base

    cfg = model.config
    by_base: dict[float, list[int]] = {}
    for i in range(len(got)):
        n = len(prompt) + i  # tokens before the i-th choice
        decided = n if cfg.rope_update == "rotate" else len(prompt)
        by_base.setdefault(rope_base(cfg, decided) if is_dynamic(cfg) else cfg.rope_theta, []).append(i)
    for base, steps in by_base.items():
        pinned = model
        if is_dynamic(cfg):  # the same model with its base fixed
            pinned = type(model)(cfg.replace(use_dynamic_ntk=False, rope_scaling=None, rope_theta=base)).eval()
            pinned.load_state_dict(model.state_dict())
        with torch.no_grad():
            logits = pinned(torch.tensor([prompt + got[: max(steps)]]))[0, :, :259]
        for i in steps:
            row = logits[len(prompt) + i - 1]
            assert row.max() - row[got[i]] < 1e-3, (i, got[i], int(row.argmax()))


ENGINE_PATHS = [(name, False) for name in OPTIONS] + [("all-rotate", True), ("yarn", True)]


@pytest.mark.parametrize("name,fused", ENGINE_PATHS, ids=[f"{n}-{'fused' if f else 'torch'}" for n, f in ENGINE_PATHS])
def test_engine_greedy_equals_the_full_forward_reference(name, fused):
    """Three prompts of 3, 7 and 12 tokens (alpha 1, 1, 3) decode together past 4 S (alpha 7), in one
    batch: each equals its own full-forward greedy continuation."""
    if fused and kernels.load_kernels() is None:
        pytest.skip(kernels.kernel_status())
    model = model_with(name)
    prompts = [[1, 2, 3], [9, 8, 7, 6, 5, 4, 3], list(range(40, 52))]
    params = SamplingParams(max_new_tokens=26, temperature=0, ignore_eos=True)
    engine = Engine(model, ByteTokenizer(), max_batch_size=4, max_seq_len=48, fused=fused, background=False)
    got = [c.token_ids for c in engine.generate(prompts, params)]
    assert ("fused C" in engine.fused_status) == fused, engine.fused_status
    for p, g in zip(prompts, got):
        check_greedy(model, p, g)


@pytest.mark.skipif(kernels.load_kernels() is None, reason=f"C kernels: {kernels.kernel_status()}")
@pytest.mark.parametrize("name", OPTIONS)
def test_fused_step_equals_the_torch_step_with_every_option(name):
    model = model_with(name, seed=4)
    lengths = [3, 9, 17]  # alpha 1, 3, 7 (dynamic NTK): every row its own base
    caches = model.new_cache(3, 40, ring=False), model.new_cache(3, 40)  # torch on every position, fused on rings
    assert_fused_step_equals_torch(model, caches, lengths)  # 9 steps: row 0 crosses S (3 -> 12), row 1 2S (9 -> 18)
    assert torch.equal(caches[0].rope_bases, caches[1].rope_bases)


def test_prefix_reuse_and_scoring_carry_the_options():
    """A second turn that reuses the first turn's cached keys across an alpha boundary, and Engine.score
    of rows of different lengths in one batch, equal the model run on the whole text."""
    model = model_with("all-rotate", seed=5)
    engine = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=96, background=False)
    first = list(range(60, 100))  # 40 tokens: past the 32-token prefix-reuse threshold
    params = SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True)
    a = engine.generate([first], params)[0].token_ids
    second = first + a + [5, 6, 7]
    b = engine.generate([second], params)[0].token_ids
    assert engine.reused_tokens > 0
    check_greedy(model, second, b)
    prompts, conts = [[1, 2], [3, 4, 5, 6, 7, 8, 9, 10, 11]], [list(range(10, 40)), [12, 13, 14]]
    scores = engine.score(prompts, conts)
    with torch.no_grad():
        for p, c, got in zip(prompts, conts, scores):
            logp = torch.log_softmax(model(torch.tensor([p + c]))[0, len(p) - 1 : -1].float(), -1)
            want = logp[torch.arange(len(c)), torch.tensor(c)]
            torch.testing.assert_close(torch.tensor(got.token_logprobs), want, atol=1e-4, rtol=0)


def test_ring_buffer_rows_are_reused_only_from_their_end():
    """A windowed model's rows keep ring buffers: the next turn of a chat reuses its row (from the end);
    a prompt that shares only the row's start is prefilled afresh (the ring lost what it would need),
    and both still equal the full forward. Changing the windows between requests lays the cache out anew."""
    model = model_with("windows-sinks", seed=6)
    engine = Engine(model, ByteTokenizer(), max_batch_size=1, max_seq_len=96, background=False)
    params = SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True)
    first = list(range(60, 100))
    a = engine.generate([first], params)[0].token_ids
    assert engine._runner.cache.keys[0].shape[2] == 2 + 5  # sinks + window, not 96
    second = first + a + [5, 6, 7]
    b = engine.generate([second], params)[0].token_ids
    reused = engine.reused_tokens
    assert reused == len(first) + len(a) - 1  # the row's end: all it holds (the last token was never fed)
    check_greedy(model, second, b)
    third = first[:36] + [1, 2, 3]  # shares 36 tokens (past the reuse threshold) of a row that holds ~55
    c = engine.generate([third], params)[0].token_ids
    assert engine.reused_tokens == reused  # refused: prefilled afresh
    check_greedy(model, third, c)
    model.config = model.config.replace(window_sizes=[3, None])
    d = engine.generate([third], params)[0].token_ids
    assert engine._runner.cache.keys[0].shape[2] == 2 + 3
    check_greedy(model, third, d)


# ------------------------------------------------------------------------------ the command-line flags
def test_long_context_flags_set_the_model_options():
    import argparse

    from openqwen.infer.loading import add_model_arguments, apply_long_context, long_context_from_args

    p = argparse.ArgumentParser()
    add_model_arguments(p)
    model = tiny_model(seed=1, layers=4, seq_length=S)
    args = p.parse_args(["--model", "m", "--rope-scaling", "ntk", "--logn", "--window-sizes", "2x16,null,32",
                         "--attention-sinks", "4", "--rope-update", "rotate", "--seq-length", "64"])
    apply_long_context(model, long_context_from_args(args))
    c = model.config
    assert (c.use_dynamic_ntk, c.use_logn_attn, c.window_sizes, c.attention_sinks, c.rope_update, c.seq_length) == (
        True, True, [16, 16, None, 32], 4, "rotate", 64)
    apply_long_context(model, long_context_from_args(p.parse_args(["--model", "m", "--rope-scaling", "yarn:4",
                                                                   "--no-logn", "--window-sizes", "none",
                                                                   "--attention-sinks", "0"])))
    c = model.config
    assert (c.use_dynamic_ntk, c.rope_scaling, c.use_logn_attn, c.window_sizes) == (
        False, {"rope_type": "yarn", "factor": 4.0}, False, None)
    assert long_context_from_args(p.parse_args(["--model", "m"])) == {}  # nothing given: the checkpoint's own
    for flags, message in ((["--rope-scaling", "yarn"], "--rope-scaling takes"),
                           (["--window-sizes", "3x16"], "names 3 layers; the model has 4"),
                           (["--window-sizes", "16,abc"], "expected W"),
                           (["--attention-sinks", "2"], "only acts beside windows")):
        with pytest.raises(ValueError, match=message):
            apply_long_context(tiny_model(seed=1, layers=4), long_context_from_args(p.parse_args(["--model", "m", *flags])))


# ------------------------------------------------------------------------------ the real model (slow)
@pytest.mark.slow
@pytest.mark.artifacts
def test_real_gguf_perplexity_is_bit_exact_under_the_options_below_its_training_length():
    """The control of docs/long-context.md: Qwen2.5-Coder-0.5B (trained at 32K) scored on 1024 tokens of a
    long stdlib file gives the same perplexity, bit for bit, with NTK + LogN + windows of 1024, because
    every option is a no-op below the training length."""
    import sysconfig
    from pathlib import Path

    from openqwen.artifacts import artifact_path
    from openqwen.eval.tasks.perplexity import perplexity
    from openqwen.infer.loading import apply_long_context, load_for_inference
    from openqwen.tokenizer import QwenTokenizer

    path = artifact_path("qwen25-coder-0.5b-instruct-gguf")
    if path is None:
        pytest.skip("artifact 'qwen25-coder-0.5b-instruct-gguf' not fetched")
    model, tok = load_for_inference(path, "fp32"), QwenTokenizer.from_pretrained(path)
    ids = tok.encode((Path(sysconfig.get_paths()["stdlib"]) / "difflib.py").read_text())[:1024]
    plain = perplexity(Engine(model, tok, max_batch_size=1, max_seq_len=1024, background=False), ids, 1024)
    apply_long_context(model, {"rope_scaling": "ntk", "logn": True, "window_sizes": "1024"})
    assert model.config.seq_length == 32768
    scaled = perplexity(Engine(model, tok, max_batch_size=1, max_seq_len=1024, background=False), ids, 1024)
    assert scaled == plain, (scaled, plain)
    print(f"Qwen2.5-Coder-0.5B, difflib.py, 1024 tokens: perplexity {plain['perplexity']:.4f} with and without")
    assert 1.0 < plain["perplexity"] < 20.0  # a code model on Python source (measured: 9.64)
