"""Fill-in-the-middle: the PSM transform keeps every document's tokens (prefix + middle + suffix is the
document), is a fixed function of (seed, row), and the real Qwen2.5-Coder GGUF fills the middle of a
function through openqwen's FIM prompt (slow)."""

from __future__ import annotations

import numpy as np
import pytest

from openqwen.train.batches import IGNORE_INDEX
from openqwen.train.fim import FimRows, fim_prompt_ids, psm, transform_row

P, S, M, EOS = 900, 901, 902, 999


def _undo(piece: list[int]) -> list[int]:
    """The document of a PSM piece, read back independently of the transform's code."""
    assert piece[0] == P and piece.count(S) == 1 and piece.count(M) == 1
    s, m = piece.index(S), piece.index(M)
    return piece[1:s] + piece[m + 1:] + piece[s + 1:m]


class _Rows:
    seq_len = 40

    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        ids = np.asarray(self.rows[i], np.int64)
        labels = ids.copy()
        labels[36:] = IGNORE_INDEX  # the corpus-end padding of the last row
        return {"input_ids": ids, "labels": labels}


def test_psm_keeps_each_document_and_its_separator():
    docs = [list(range(1, 12)), list(range(20, 27)), list(range(40, 55))]
    row = np.asarray([t for d in docs for t in d + [EOS]][:40], np.int64)
    out = transform_row(row, len(row), EOS, 1.0, (P, S, M), np.random.default_rng(3)).tolist()
    pieces, cur = [], []
    for t in out:
        if t == EOS:
            pieces.append(cur)
            cur = []
        else:
            cur.append(t)
    assert len(out) == len(row)
    assert [_undo(p) for p in pieces[:2]] == docs[:2]  # whole documents come back exactly
    # the cut-off last piece: what is left of it is a PSM arrangement of a prefix of the document
    assert cur[0] == P and out.count(EOS) == 2
    assert transform_row(row, len(row), EOS, 0.0, (P, S, M), np.random.default_rng(3)).tolist() == row.tolist()
    assert psm([1], [2, 3], [4], (P, S, M)) == [P, 1, S, 4, M, 2, 3]


def test_fim_rows_are_reproducible_and_leave_padding_alone():
    rng = np.random.default_rng(0)
    rows = _Rows([np.where(rng.random(40) < 0.1, EOS, rng.integers(1, 800, 40)).tolist() for _ in range(6)])
    a, b = FimRows(rows, 0.5, (P, S, M), EOS, seed=7), FimRows(rows, 0.5, (P, S, M), EOS, seed=7)
    assert all((a[i]["input_ids"] == b[i]["input_ids"]).all() for i in range(6))
    assert any((a[i]["input_ids"] != rows[i]["input_ids"]).any() for i in range(6))
    for i in range(6):
        r = a[i]
        assert (r["input_ids"][36:] == rows[i]["input_ids"][36:]).all() and (r["labels"][36:] == IGNORE_INDEX).all()
        assert (r["labels"][:36] == r["input_ids"][:36]).all()
    with pytest.raises(ValueError, match="between 0 and 1"):
        FimRows(rows, 1.5, (P, S, M), EOS)


def test_fim_needs_the_sentinel_tokens(artifact):
    from openqwen import QwenTokenizer

    first_gen = QwenTokenizer.from_pretrained(artifact("qwen-tiktoken"))
    with pytest.raises(ValueError, match="no <|fim_prefix|>"):
        fim_prompt_ids(first_gen, "def f():", "")
    ids = fim_prompt_ids(first_gen, "a", "b", names=("<|extra_0|>", "<|extra_1|>", "<|extra_2|>"))
    assert ids == [151646, *first_gen.encode("a"), 151647, *first_gen.encode("b"), 151648]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_real_coder_gguf_fills_the_middle_of_a_function(artifact):
    from openqwen.eval.sandbox import run_code
    from openqwen.infer.engine import Engine
    from openqwen.infer.loading import load_model_and_tokenizer
    from openqwen.infer.sampling import SamplingParams
    from openqwen.train.fim import fim_stop_ids

    model, tok = load_model_and_tokenizer(artifact("qwen25-coder-0.5b-instruct-gguf"), "fp32")
    prefix = "def is_palindrome(text: str) -> bool:\n    \"\"\"True when text reads the same backwards.\"\"\"\n"
    suffix = "\n\n\nassert is_palindrome('level')\nassert not is_palindrome('levels')\nassert is_palindrome('')\n"
    ids = fim_prompt_ids(tok, prefix, suffix)
    assert ids[0] == 151659 and 151661 in ids and ids[-1] == 151660  # Qwen2.5-Coder's sentinel ids
    engine = Engine(model, tok, max_batch_size=1, max_seq_len=512)
    try:
        # the instruct model writes the body, then runs on with more example asserts of its own instead
        # of <|endoftext|>; a blank line ends a function body, so it is the stop for a body-sized gap
        done = engine.generate([ids], [SamplingParams(max_new_tokens=64, greedy=True, stop=["\n\n"],
                                                      stop_token_ids=fim_stop_ids(tok))])[0]
    finally:
        engine.close()
    assert done.finish_reason == "stop" and "return" in done.text
    result = run_code(prefix + done.text + suffix, timeout_s=10, memory_mb=512)
    assert result.passed, (done.text, result.stderr)
