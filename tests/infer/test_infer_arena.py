"""openqwen.infer.arena: the decode weights moved into one block keep every output, lie in the order a
decode step reads them, leave no second copy behind, and sit on huge pages where the OS offers them."""

from __future__ import annotations

import re
import weakref
from pathlib import Path

import pytest
import torch
from infer_helpers import ByteTokenizer, tiny_model

from openqwen.checkpoint import save_model
from openqwen.infer.arena import (ALIGN, HUGE_PAGE, HugePageAdvice, advise_huge_pages, anonymous_block, decode_order,
                                  pack_decode_weights)
from openqwen.infer.engine import Engine
from openqwen.infer.loading import load_for_inference
from openqwen.infer.quant import Int8Embedding, quantize_embedding, quantize_int4, quantize_int8
from openqwen.infer.sampling import SamplingParams

PROMPT = torch.tensor([[3, 70, 101, 9, 250, 44, 17]])


def _model(kind: str):
    model = tiny_model(seed=5, tie_word_embeddings=kind == "fp32-tied").eval()
    if kind == "int8":
        quantize_embedding(quantize_int8(model))
    elif kind == "int4":
        quantize_embedding(quantize_int4(model, group_size=32))
    return model


def _greedy(model) -> list[int]:
    eng = Engine(model, ByteTokenizer(), max_batch_size=1, max_seq_len=64)
    try:
        return eng.generate([[1, 2, 3, 4]], SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True))[0].token_ids
    finally:
        eng.close()


@pytest.mark.parametrize("kind", ["fp32", "fp32-tied", "int8", "int4"])
def test_packing_keeps_every_output(kind):
    model = _model(kind)
    with torch.no_grad():
        logits, tokens = model(PROMPT), _greedy(model)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        packed = pack_decode_weights(model)
        assert packed.tensors == len(decode_order(model)) > 0
        torch.testing.assert_close(model(PROMPT), logits, atol=0, rtol=0)  # the same bits, not close ones
    assert _greedy(model) == tokens  # through the fused C step where the kernels build
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k, v in state.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k


def test_weights_lie_in_read_order_in_one_aligned_block():
    model = _model("int4")
    # buffers are replaced (their old tensors must die); parameters keep their identity, new data
    old = [weakref.ref(t) for _, _, t in decode_order(model) if not isinstance(t, torch.nn.Parameter)]
    assert old
    packed = pack_decode_weights(model)
    start, end = packed.buffer.data_ptr(), packed.buffer.data_ptr() + packed.nbytes
    assert start % HUGE_PAGE == 0
    ptrs = [t.data_ptr() for _, _, t in decode_order(model)]
    assert ptrs == sorted(ptrs) and len(set(ptrs)) == len(ptrs)  # the step's order is the memory's order
    assert all(start <= p < end and p % ALIGN == 0 for p in ptrs)
    names = [name for _, name, _ in decode_order(model)]
    assert names[:2] == ["weight", "weight"]  # layer 0's input norm, then its qkv codes
    assert decode_order(model)[-1][0] is model.lm_head
    assert all(r() is None for r in old)  # the old allocations are gone: nothing is held twice


def test_tied_head_and_embedding_still_share_one_copy():
    model = tiny_model(seed=2, tie_word_embeddings=True).eval()
    quantize_embedding(quantize_int8(model))
    assert isinstance(model.embed_tokens, Int8Embedding)
    pack_decode_weights(model)
    assert model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert model.embed_tokens.scale.data_ptr() == model.lm_head.scale.data_ptr()
    fp32 = tiny_model(seed=2, tie_word_embeddings=True).eval()
    pack_decode_weights(fp32)
    assert fp32.embed_tokens.weight is fp32.lm_head.weight  # one Parameter, moved once


@pytest.mark.parametrize("dtype", ["fp32", "int8", "int4"])
def test_load_for_inference_packs_and_saves_back(tmp_path, dtype):
    src = tiny_model(seed=3, vocab=512)
    save_model(src, tmp_path / "m")
    model = load_for_inference(tmp_path / "m", dtype, announce=False)
    storages = {t.untyped_storage().data_ptr() for _, _, t in decode_order(model)}
    assert len(storages) == 1
    with torch.no_grad():
        if dtype == "fp32":
            torch.testing.assert_close(model(PROMPT), src.eval()(PROMPT), atol=1e-5, rtol=1e-5)
    save_model(model, tmp_path / "again")  # views of one block save as separate tensors
    if dtype == "fp32":  # and read back as the same model
        again = load_for_inference(tmp_path / "again", "fp32", announce=False)
        with torch.no_grad():
            torch.testing.assert_close(again(PROMPT), model(PROMPT), atol=0, rtol=0)


def _huge_kb(block: torch.Tensor) -> int:
    """AnonHugePages (kB) of the mapping that holds ``block``, from /proc/self/smaps."""
    addr, kb, inside = block.data_ptr(), 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            inside = int(m.group(1), 16) <= addr < int(m.group(2), 16)
        elif inside and line.startswith("AnonHugePages:"):
            kb = int(line.split()[1])
    return kb


def test_block_gets_huge_pages_where_the_os_offers_them():
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.exists() or "[never]" in thp.read_text():
        pytest.skip("no transparent huge pages on this machine")
    block = anonymous_block(16 << 20)
    assert block.data_ptr() % HUGE_PAGE == 0 and block.numel() == 16 << 20
    block.fill_(7)  # written in 4 KB pages first, as pack_decode_weights writes it
    floats = block.view(torch.float32)  # as the bandwidth probe advises it: the length is in bytes
    assert advise_huge_pages(floats)
    assert _huge_kb(block) >= 16 << 10  # all of it, now (MADV_HUGEPAGE alone would leave it to khugepaged)
    assert bool((block == 7).all())  # collapsing kept the contents
    later = anonymous_block(8 << 20)
    later.fill_(3)
    thread = HugePageAdvice(later)  # as a load does it
    thread.start()
    thread.join()
    assert thread.result and _huge_kb(later) >= 2048 and bool((later == 3).all())
