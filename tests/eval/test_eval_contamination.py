"""13-gram contamination: flagged items are exactly those sharing a 13-word window with the training
text (checked against a plain set-of-tuples reference)."""

from __future__ import annotations

import json
import random

from openqwen.eval import contamination as c


def reference_flags(train: list[str], items: list[str], n: int = 13) -> list[bool]:
    grams = set()
    for t in train:
        w = c.words(t)
        grams |= {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}
    out = []
    for t in items:
        w = c.words(t)
        out.append(any(tuple(w[i : i + n]) in grams for i in range(len(w) - n + 1)))
    return out


def test_overlap_matches_reference():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(40)]
    train = [" ".join(rng.choice(vocab) for _ in range(300)) for _ in range(20)]
    items = [" ".join(rng.choice(vocab) for _ in range(30)) for _ in range(50)]
    # plant copies of training windows (with different case and punctuation) into some items
    for k in range(0, 50, 7):
        src = train[k % 20].split()
        items[k] = "Intro: " + " ".join(src[k : k + 13]).upper() + ", then more words."
    index = c.NgramIndex().add_all(train)
    got = [index.overlap(t) > 0 for t in items]
    assert got == reference_flags(train, items)
    assert sum(got) >= len(range(0, 50, 7))


def test_cjk_characters_count_as_words():
    assert c.words("深度学习 model 很好") == ["深", "度", "学", "习", "model", "很", "好"]


def test_report_on_a_task_file(tmp_path, monkeypatch):
    rows = [{"question": f"In the year {i} the quick brown fox jumped over the lazy dog near river number {i}",
             "answer_a": "a", "answer_b": "b", "answer_c": "c", "answer_d": "d", "correct_answer": "A",
             "topic": "t"} for i in range(10)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "doc.txt").write_text("Some unrelated text. " + rows[3]["question"] + " And more.")
    rep = c.report([tmp_path / "train"], ["mc"], {"mc": str(tmp_path / "q.jsonl")})
    r = rep["tasks"]["mc"]
    assert (r["total"], r["checked"], r["contaminated"]) == (10, 10, 1)
    assert "| mc | 10 | 10 | 1 | 10.00% |" in c.markdown(rep)
