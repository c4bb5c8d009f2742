"""The KV cache's layouts against independent references.

Ring buffers (windowed layers keep only sinks + window slots) against the dense layout that keeps every
position and applies the windows by the mask alone, and against a full forward; slot bookkeeping against a
replay of the writes; int8 storage against its formula and the fp32 cache."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from openqwen import Qwen, QwenConfig
from openqwen.kv_cache import EMPTY, KVCache, dequantize_int8, quantize_int8

from hf_reference import randomise


def tiny(**kw) -> QwenConfig:
    base = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, seq_length=8, max_position_embeddings=128)
    base.update(kw)
    return QwenConfig(**base)


def model_with(seed: int = 0, **kw) -> Qwen:
    torch.manual_seed(seed)
    return randomise(Qwen(tiny(**kw)), seed=seed).eval()


@pytest.mark.parametrize("window,sinks", [(3, 0), (4, 2), (7, 1)])
def test_slot_positions_equal_a_replay_of_the_writes(window, sinks):
    """Write positions 0, 1, 2 ... one by one into slot p (p < sinks) or sinks + (p - sinks) mod w, as a
    list; at every length the cache's slot_positions names what each slot holds."""
    cache = KVCache(tiny(window_sizes=[window, None, None], attention_sinks=sinks), 1, 64)
    held = [EMPTY] * (sinks + window)
    for n in range(0, 40):
        got = cache.slot_positions(window, torch.tensor([n]))[0].tolist()
        assert got == held, n
        slot = n if n < sinks else sinks + (n - sinks) % window
        held[slot] = n
        assert cache.slot_of(0, torch.tensor(n)).item() == slot


STEPS = [7, 1, 1, 6, 1, 1, 1, 9, 1, 1]  # prefills longer than the windows, single steps, chunks over a full ring


@pytest.mark.parametrize("windows,sinks", [([3, None, 5], 0), ([4, 4, 6], 2), ([None, 2, None], 1)])
def test_ring_cache_equals_the_dense_masked_cache_and_the_full_forward(windows, sinks):
    model = model_with(1, window_sizes=windows, attention_sinks=sinks)
    ids = torch.randint(0, 97, (2, sum(STEPS)), generator=torch.Generator().manual_seed(0))
    ring, dense = model.new_cache(2, 64), model.new_cache(2, 64, ring=False)
    assert ring.has_rings and not dense.has_rings
    got_ring, got_dense, t = [], [], 0
    with torch.no_grad():
        for n in STEPS:
            got_ring.append(model(ids[:, t : t + n], cache=ring))
            got_dense.append(model(ids[:, t : t + n], cache=dense))
            t += n
        full = model(ids)
    torch.testing.assert_close(torch.cat(got_ring, 1), torch.cat(got_dense, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.cat(got_ring, 1), full, atol=1e-4, rtol=0)


def test_right_padded_rows_write_only_their_real_tokens_into_the_ring():
    """Rows of 3, 11 and 8 tokens prefilled as one right-padded batch (the padding would overwrite ring
    slots of the short rows), then decoded together: each row equals itself run alone."""
    model = model_with(2, window_sizes=[4, 4, None], attention_sinks=1)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 97, (n,), generator=gen) for n in (3, 11, 8)]
    tail = torch.randint(0, 97, (3, 9), generator=gen)
    ids = torch.zeros(3, 11, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, : len(p)] = p
    with torch.no_grad():
        cache = model.new_cache(3, 32)
        model(ids, cache=cache, num_tokens=torch.tensor([3, 11, 8]))
        batched = torch.cat([model(tail[:, t : t + 1], cache=cache) for t in range(9)], 1)
        for i, p in enumerate(prompts):
            alone = model(torch.cat((p, tail[i]))[None])[0, len(p):]
            torch.testing.assert_close(batched[i], alone, atol=1e-4, rtol=0)
    assert cache.lengths.tolist() == [12, 20, 17]


def test_windowed_layers_stop_growing_past_their_window():
    cfg = tiny(window_sizes=[16, 16, None], attention_sinks=4)
    per_position = 2 * cfg.num_key_value_heads * cfg.head_dim * 4  # keys + values, fp32
    for max_length in (64, 1024, 4096):
        cache = KVCache(cfg, 1, max_length)
        assert [k.shape[2] for k in cache.keys] == [20, 20, max_length]
        assert cache.nbytes() == per_position * (20 + 20 + max_length)
    windowed = KVCache(tiny(window_sizes=[16, 32, 16]), 2, 100_000)  # every layer windowed: no max_length term
    assert windowed.nbytes() == 2 * per_position * (16 + 32 + 16)
    assert [k.shape[2] for k in KVCache(cfg, 1, 12).keys] == [12, 12, 12]  # a window as wide as the cache: dense


def test_a_ring_row_is_continued_only_from_its_end():
    model = model_with(3, window_sizes=[4, None, None])
    cache = model.new_cache(1, 32)
    with torch.no_grad():
        model(torch.arange(10)[None], cache=cache)
    assert cache.can_continue(0, 10) and cache.can_continue(0, 9) and not cache.can_continue(0, 8)
    assert model.new_cache(1, 32, ring=False).can_continue(0, 0)
    small = model.new_cache(1, 32)
    with pytest.raises(ValueError, match="no longer has"):
        small.copy_row(cache, 0, 0, 6)  # positions 2..5 were overwritten by 6..9
    small.copy_row(cache, 0, 0, 10)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(small.keys, cache.keys))


def test_a_cache_laid_out_for_other_windows_is_refused():
    model = model_with(4, window_sizes=[4, None, None])
    cache = model.new_cache(1, 32)
    model.config = model.config.replace(window_sizes=[6, None, None])
    with pytest.raises(ValueError, match="allocate a new cache"):
        model(torch.arange(3)[None], cache=cache)
    model(torch.arange(3)[None], cache=model.new_cache(1, 32, ring=False))  # dense serves any windows


# ------------------------------------------------------------------------------ int8
def test_int8_rounding_is_max_abs_over_127_per_head_and_token():
    x = torch.randn(2, 3, 5, 16) * torch.rand(2, 3, 5, 1) * 10
    x[0, 0, 0] = 0  # an all-zero vector keeps scale 0
    q, scale = quantize_int8(x)
    assert q.dtype == torch.int8 and scale.shape == (2, 3, 5)
    torch.testing.assert_close(scale, x.abs().amax(-1) / 127)
    assert int(q.abs().max()) == 127 and int(q[0, 0, 0].abs().max()) == 0
    err = (dequantize_int8(q, scale, torch.float32) - x).abs()
    assert bool((err <= scale[..., None] / 2 + 1e-6).all())  # round to nearest: at most half a step


@pytest.mark.parametrize("windows", [None, [4, None, 6]])
def test_int8_cache_decodes_close_to_the_fp32_cache_in_a_quarter_of_the_memory(windows):
    model = model_with(5, window_sizes=windows)
    ids = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(2))
    caches = {}
    out = {}
    with torch.no_grad():
        for kind in ("auto", "int8"):
            model.config = model.config.replace(kv_cache_dtype=kind)
            caches[kind] = cache = model.new_cache(2, 40)
            out[kind] = torch.cat([model(ids[:, :10], cache=cache)] + [model(ids[:, t : t + 1], cache=cache)
                                                                      for t in range(10, 30)], 1)
    full = torch.log_softmax(out["auto"], -1)
    err = (torch.log_softmax(out["int8"], -1) - full).abs().max()
    assert 0 < err < 0.02, float(err)  # rounding shows, and stays below 0.02 in log-probability
    d = model.config.head_dim
    assert caches["int8"].nbytes() * 4 * d == caches["auto"].nbytes() * (d + 4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
def test_cache_pages_become_resident_only_as_positions_are_written():
    def resident_mb() -> float:
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    config = QwenConfig(vocab_size=64, hidden_size=256, intermediate_size=64, num_hidden_layers=4,
                        num_attention_heads=4, num_key_value_heads=4)
    before = resident_mb()
    cache = KVCache(config, batch_size=2, max_length=8192)  # 4 layers x 2 x 2 rows x 4 heads x 8192 x 64 x fp32
    assert cache.nbytes() == 128 * 2**20
    assert resident_mb() - before < 16, "an empty cache must not be resident"
    assert all(float(t.abs().sum()) == 0 for t in cache.keys + cache.values)  # zeros all the same
    before = resident_mb()
    for t in cache.keys + cache.values:
        t[:, :, :4096] = 1.0  # half the positions of every row
    grown = resident_mb() - before
    assert 56 < grown < 72, grown  # the written half: 64 MB
    # the views do not overlap: each holds exactly what was written into it
    assert all(float(t.sum()) == t.numel() / 2 for t in cache.keys + cache.values)
