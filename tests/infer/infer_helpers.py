"""Shared pieces of the inference tests: a tiny random model and a byte-level tokenizer with the
QwenTokenizer interface (ids 0..255 are bytes, then <|endoftext|>, <|im_start|>, <|im_end|>), so engine
tests run in milliseconds and do not depend on the real vocabulary."""

from __future__ import annotations

import codecs

import torch

from hf_reference import hf_twin, randomise  # noqa: F401  (hf_twin re-exported for the engine tests)
from openqwen import Qwen, QwenConfig
from openqwen.infer.engine import Engine

EOT, IM_START, IM_END = 256, 257, 258


class ByteStreamDecoder:
    def __init__(self, skip_special_tokens: bool = False) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._skip = skip_special_tokens

    def push(self, token_id: int) -> str:
        if token_id >= 256:
            names = {v: k for k, v in ByteTokenizer.special_tokens.items()}
            return "" if self._skip else self._dec.decode(b"", final=True) + names[token_id]
        return self._dec.decode(bytes([token_id]))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


class ByteTokenizer:
    vocab_size = 259
    eos_id = EOT
    im_start_id = IM_START
    im_end_id = IM_END
    stop_ids = [IM_END, IM_START, EOT]
    special_tokens = {"<|endoftext|>": EOT, "<|im_start|>": IM_START, "<|im_end|>": IM_END}

    def encode(self, text: str, allowed_special=frozenset()) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        names = {v: k for k, v in self.special_tokens.items()}
        out, buf = [], bytearray()
        for t in ids:
            if t < 256:
                buf.append(t)
                continue
            out.append(buf.decode("utf-8", errors="replace"))
            buf = bytearray()
            if not skip_special_tokens:
                out.append(names[t])
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def stream_decoder(self, skip_special_tokens: bool = False) -> ByteStreamDecoder:
        return ByteStreamDecoder(skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt=True, return_assistant_mask=False):
        if not messages or messages[0]["role"] != "system":
            messages = [{"role": "system", "content": "You are a helpful assistant."}] + list(messages)
        ids: list[int] = []
        for m in messages:
            ids += [IM_START] + self.encode(f"{m['role']}\n{m['content']}") + [IM_END] + self.encode("\n")
        if add_generation_prompt:
            ids += [IM_START] + self.encode("assistant\n")
        return ids


def tiny_model(seed: int = 0, vocab: int = 259, layers: int = 2, kv_heads: int = 2, **kw) -> Qwen:
    """A random tiny Qwen with non-trivial biases and norms (peaked enough to give varied text)."""
    cfg = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
               num_attention_heads=4, num_key_value_heads=kv_heads, seq_length=256, max_position_embeddings=512,
               tie_word_embeddings=False)
    cfg.update(kw)
    torch.manual_seed(seed)
    model = randomise(Qwen(QwenConfig(**cfg)), seed)
    with torch.no_grad():
        if not model.config.tie_word_embeddings:
            model.lm_head.weight.mul_(40)  # sharper distributions: fewer near-ties, text that is not pure noise
    return model


def solo(model: Qwen, prompt, params, max_seq_len: int = 128):
    """The Completion of ``prompt`` alone on a fresh one-slot engine: the reference that batched,
    joined, reused or retrained runs must equal."""
    eng = Engine(model, ByteTokenizer(), max_batch_size=1, max_seq_len=max_seq_len)
    try:
        return eng.generate([prompt], params)[0]
    finally:
        eng.close()


def assert_fused_step_equals_torch(model: Qwen, caches: tuple, lengths: list[int], steps: int = 9) -> None:
    """Prefill row i of both caches with ``lengths[i]`` random tokens, then decode ``steps`` random
    tokens per row: the fused C step on ``caches[1]`` must equal the torch step on ``caches[0]``."""
    from openqwen.infer.kernels import FusedDecoder  # noqa: PLC0415

    with torch.no_grad():
        for cache in caches:
            for i, n in enumerate(lengths):
                model.hidden_states(torch.randint(0, 259, (1, n), generator=torch.Generator().manual_seed(i)),
                                    cache=cache.rows(i, i + 1))
        fused = FusedDecoder.build(model, caches[1])
        assert fused is not None, FusedDecoder.why_not
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            ids = torch.randint(0, 259, (len(lengths), 1), generator=gen)
            ref = model.hidden_states(ids, cache=caches[0])
            torch.testing.assert_close(fused.hidden_states(ids), ref, atol=2e-4, rtol=2e-4)


def with_and_without_vnni(fn):
    """(fn() with the C kernels' AVX512-VNNI dot products, fn() with their AVX2 ones), VNNI restored
    after; skips the test where the kernels or VNNI are unavailable."""
    import pytest  # noqa: PLC0415

    from openqwen.infer import kernels  # noqa: PLC0415

    if kernels.load_kernels() is None:
        pytest.skip(f"C kernels unavailable: {kernels.kernel_status()}")
    if not kernels.use_vnni(True):
        pytest.skip("this CPU has no AVX512-VNNI")
    try:
        with_vnni = fn()
        kernels.use_vnni(False)
        return with_vnni, fn()
    finally:
        kernels.use_vnni(True)
