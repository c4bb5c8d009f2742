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


def test_report_and_decontamination_agree_on_documents_they_used_to_split_differently(tmp_path):
    """The two 13-gram tools once cut words differently (the report kept ``snake_case`` and full-width
    ``ＡＢＣ`` as they were; decontamination folds them), so a training copy of an item with its
    identifiers spelt apart was removed by one and missed by the other. Now they share one
    tokenisation: for every document, "the report flags the item" == "decontamination removes it",
    and both equal a plain reference over the shared units."""
    from openqwen.data.decontam import build_index, contamination_matches

    item = ("def sum_of_squares(values): return the total of every value squared in the list given "
            "to it as its only argument")
    docs = [
        "notes: def sum of squares values return the total of every value squared in the list given to it",
        "ＤＥＦ ＳＵＭ_ＯＦ_ＳＱＵＡＲＥＳ(VALUES) - return the total of every value squared in the list given",
        "Intro. " + item.upper() + " and then a quite different ending follows here.",
        "def sum_of_squares(values): return the total of every value squared somewhere else entirely now",
        "a document about something else entirely with no shared window of thirteen words at all here",
    ]
    eval_index, _ = build_index([item], 13)
    removed = [contamination_matches(d, eval_index, 13) > 0 for d in docs]
    flagged = []
    for d in docs:
        rep_index = c.NgramIndex().add_all([d])
        flagged.append(c.check_task(rep_index, "t", [("0", item)]).contaminated == 1)
    assert removed == flagged == reference_flags([item], docs) == reference_flags(docs[:0] + [item], docs)
    assert removed == [True, True, True, False, False]
    # the old report split on \W only: it kept 'sum_of_squares' whole, so documents 0 and 1 were missed
    assert c.words("sum_of_squares ＡＢＣ") == ["sum", "of", "squares", "abc"]


def test_task_items_for_every_text_task(tmp_path):
    (tmp_path / "mbpp.jsonl").write_text(json.dumps({"task_id": 11, "text": "Write a function to add two numbers.",
                                                     "code": "def add(a, b):\n    return a + b",
                                                     "test_list": ["assert add(1, 2) == 3"]}) + "\n")
    (tmp_path / "gsm8k.jsonl").write_text(json.dumps({"question": "Tom has 3 apples and buys 4.",
                                                      "answer": "3 + 4 = 7\n#### 7"}) + "\n")
    (tmp_path / "ceval").mkdir()
    (tmp_path / "ceval" / "law_val.csv").write_text("id,question,A,B,C,D,answer\n0,中国的首都是哪里,北京,上海,广州,深圳,A\n",
                                                    encoding="utf-8")
    assert c.task_items("mbpp", str(tmp_path / "mbpp.jsonl")) == [
        ("11", "Write a function to add two numbers.\ndef add(a, b):\n    return a + b\nassert add(1, 2) == 3")]
    assert c.task_items("gsm8k", str(tmp_path / "gsm8k.jsonl")) == [("0", "Tom has 3 apples and buys 4.\n3 + 4 = 7\n#### 7")]
    assert c.task_items("ceval", str(tmp_path / "ceval")) == [("0", "中国的首都是哪里\n北京\n上海\n广州\n深圳")]
