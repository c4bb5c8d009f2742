"""Normalisation, match keys, readers (bad lines with file and line) and language id."""

from __future__ import annotations

import gzip
import json

import pytest

from openqwen.data.io import BadLine, list_input_files, read_documents
from openqwen.data.langid import LangIdConfig, detect_language, langid_documents
from openqwen.data.normalize import match_key, normalize_text, unit_hashes


def test_normalize_text():
    raw = "Cafe\u0301 menu\r\n\r\n\r\n\r\n    indented line   \r\nzero\u200bwidth\x07bell\n\n"
    out = normalize_text(raw)
    assert out == "Café menu\n\n    indented line\nzerowidthbell"
    assert normalize_text(out) == out  # idempotent


def test_match_key_folds_case_width_punctuation_and_splits_cjk():
    assert match_key("Hello,  WORLD!!  snake_case") == "hello world snake case"
    assert match_key("ＡＢＣ１２３") == "abc123"  # full-width forms
    assert match_key("床前明月光，疑是地上霜。") == "床 前 明 月 光 疑 是 地 上 霜"
    assert match_key("GPT-4是模型") == "gpt 4 是 模 型"
    # equal units hash equally wherever they are; different units differently
    h = unit_hashes(match_key("the cat saw the dog the"))
    assert h[0] == h[3] == h[5] and len(set(h.tolist())) == 4


def test_readers_report_bad_lines_with_file_and_line(tmp_path):
    p = tmp_path / "d.jsonl.gz"
    raw = b'{"text": "ok"}\n\n[1, 2]\n{"text": 5}\n{"text": "bad \xff byte"}\n{"text": "fine", "meta": 1}\n'
    with gzip.open(p, "wb") as f:
        f.write(raw)
    got = list(read_documents(p))
    bad = [(g.line, g.error) for g in got if isinstance(g, BadLine)]
    assert bad == [(3, "not a JSON object"), (4, "no string field 'text'"), (5, "invalid UTF-8")]
    assert [g["text"] for g in got if isinstance(g, dict)] == ["ok", "fine"]
    (tmp_path / "notes.txt").write_text("a plain text document")
    (tmp_path / "_done").mkdir()
    (tmp_path / "_done" / "00000.json").write_text("{}")
    (tmp_path / "manifest.json").write_text("{}")
    assert [f.name for f in list_input_files(tmp_path)] == ["d.jsonl.gz", "notes.txt"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_input_files(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no document files"):
        list_input_files(empty)


def test_language_id():
    assert detect_language("The quick brown fox jumps over the lazy dog while the farmer sleeps.")[0] == "en"
    assert detect_language("白日依山盡，黃河入海流。欲窮千里目，更上一層樓。")[0] == "zh"
    assert detect_language("Der schnelle braune Fuchs springt über den faulen Hund.")[0] == "de"
    assert detect_language("12345 !!! 67890")[0] == "und"
    docs = [{"text": "The weather today is pleasant and the children are playing in the park."},
            {"text": "今天天气很好，孩子们在公园里玩耍。"},
            {"text": "def f(x):\n    return x\n", "domain": "code"}]
    out = langid_documents(docs, LangIdConfig(keep=["en", "code"]))
    assert out[0] == [docs[0]] and out[1] == "lang_not_kept" and out[2] == [docs[2]]
    assert [d["lang"] for d in docs] == ["en", "zh", "code"] and docs[0]["lang_score"] > 0.9
    assert langid_documents([dict(docs[0])], LangIdConfig(min_score=1.01)) == ["lang_low_confidence"]
    assert json.dumps(docs)  # labels are plain JSON values
