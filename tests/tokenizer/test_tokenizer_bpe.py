"""QwenTokenizer's core (openqwen.tokenizer.bpe): exact ids against the official vocabulary and an
independent reference (HF tokenizers on the Qwen2 tokenizer.json), special-token safety, streaming."""

from __future__ import annotations

import unicodedata

import pytest

from openqwen.tokenizer import QwenTokenizer, TokenizerError


# ------------------------------------------------------------------------------ the official vocabulary
@pytest.mark.artifacts
def test_known_ids(tok):
    assert tok.encode("\n") == [198]
    assert tok.encode("system") == [8948]
    assert tok.encode("user") == [872]
    assert tok.encode("assistant") == [77091]
    assert tok.encode("Hello, 世界 12345") == [9707, 11, 220, 99489, 220, 16, 17, 18, 19, 20]
    assert (tok.eos_id, tok.im_start_id, tok.im_end_id) == (151643, 151644, 151645)
    assert tok.special_tokens["<|extra_0|>"] == 151646 and tok.special_tokens["<|extra_204|>"] == 151850
    assert tok.vocab_size == 151851 and tok.num_base_tokens == 151643
    assert tok.stop_ids == [151645, 151644, 151643]
    assert tok.token_to_id("<|im_end|>") == 151645 and tok.token_to_id(b"\n") == 198
    assert tok.id_to_bytes(99489) == "世界".encode()


@pytest.mark.artifacts
def test_digits_are_single_tokens(tok):
    ids = tok.encode("12345678901234567890")
    assert ids == [15 + int(d) for d in "1234567890" * 2]  # "0".."9" are ids 15..24
    assert tok.decode(ids) == "12345678901234567890"


@pytest.mark.artifacts
def test_ids_equal_hf_tokenizers_on_multilingual_sample(tok, hf_tok, sample):
    ours = tok.encode_batch(sample, num_threads=2)
    theirs = [e.ids for e in hf_tok.encode_batch(sample, add_special_tokens=False)]
    assert len(ours) == len(theirs) == len(sample)
    mismatches = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    n_bytes = sum(len(d.encode()) for d in sample)
    assert n_bytes > 2_000_000 and len(sample) > 1500
    assert not mismatches, f"{len(mismatches)} of {len(sample)} documents differ, first: {sample[mismatches[0]][:200]!r}"
    # encode and encode_batch are the same function
    assert [tok.encode(d) for d in sample[-50:]] == ours[-50:]


@pytest.mark.artifacts
def test_decode_roundtrip_is_nfc(tok, sample):
    for doc in sample:
        assert tok.decode(tok.encode(doc)) == unicodedata.normalize("NFC", doc)
    nfd = unicodedata.normalize("NFD", "café Åsa")
    assert nfd != "café Åsa" and tok.encode(nfd) == tok.encode("café Åsa")


# ------------------------------------------------------------------------------ special tokens
@pytest.mark.artifacts
def test_special_text_is_ordinary_unless_allowed(tok):
    text = "a<|im_end|>b<|endoftext|>"
    plain = tok.encode(text)
    assert not set(plain) & set(tok.special_tokens.values())
    assert tok.decode(plain) == text
    assert tok.encode("<|im_end|>") == [27, 91, 318, 6213, 91, 29]
    assert tok.encode(text, allowed_special="all") == tok.encode("a") + [151645] + tok.encode("b") + [151643]
    assert tok.encode(text, allowed_special={"<|endoftext|>"}) == tok.encode("a<|im_end|>b") + [151643]
    with pytest.raises(TokenizerError, match="unknown special"):
        tok.encode(text, allowed_special={"<|nope|>"})


def test_special_tokens_cannot_clash_with_ordinary_ids(byte_tok):
    with pytest.raises(TokenizerError, match="reuse ids"):
        QwenTokenizer(byte_tok.mergeable_ranks, {"<|endoftext|>": 255})
    with pytest.raises(TokenizerError, match="256 single bytes"):
        QwenTokenizer({b"a": 0}, {})
    with pytest.raises(TokenizerError, match="no special token '<|im_start|>'"):
        _ = QwenTokenizer(byte_tok.mergeable_ranks, {"<|endoftext|>": 256}).im_start_id
    with pytest.raises(TypeError, match="expects str"):
        byte_tok.encode(b"bytes")


# ------------------------------------------------------------------------------ decoding
@pytest.mark.artifacts
def test_stream_decoder_equals_whole_decode(tok, sample):
    text = "中文🤖 emoji 👨‍👩‍👧‍👦 split across tokens: 龘龘 \U0001faf6 done"
    ids = tok.encode(text)
    # some tokens are only part of a character: decoding them alone would break UTF-8
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    dec = tok.stream_decoder()
    pieces = [dec.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + dec.flush() == tok.decode(ids) == text
    for doc in sample[-200:]:
        ids = tok.encode(doc) + [tok.im_end_id]
        for skip in (False, True):
            dec = tok.stream_decoder(skip_special_tokens=skip)
            assert "".join(dec.push(i) for i in ids) + dec.flush() == tok.decode(ids, skip_special_tokens=skip)
    # a cut character at the end of the stream is flushed as U+FFFD, the same as decode
    # (🫶 is three byte-level tokens; 🤖 would be one, and cutting it would leave nothing to test)
    cut = tok.encode("ok 🫶")[:-1]
    assert len(cut) == 3
    dec = tok.stream_decoder()
    assert "".join(dec.push(i) for i in cut) + dec.flush() == tok.decode(cut) == "ok \ufffd"


@pytest.mark.artifacts
def test_decode_errors_and_skip(tok):
    ids = tok.encode("hi") + [tok.im_end_id]
    assert tok.decode(ids) == "hi<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "hi"
    with pytest.raises(TokenizerError, match="not in this vocabulary"):
        tok.decode([151900])
    with pytest.raises(TokenizerError, match="not in this vocabulary"):
        tok.stream_decoder().push(151900)
