"""The safety filter: planted abusive lines and threats are found, ordinary uses of the same words
are not, and the document decision follows the toxic-line share."""

from __future__ import annotations

import numpy as np

from openqwen.data.safety import SafetyConfig, safety_documents, toxic_line, toxic_line_count

TOXIC = [
    "You are a complete idiot, shut up.",
    "What a pathetic loser you are",
    "I will kill you if I see you again",
    "Somebody should find out where he lives and make him pay",
    "ＹＯＵ　ＭＯＲＯＮ",  # full-width forms do not hide the word
    "go to hell, all of you",
    "你这个傻逼",
    "Get out of here, you bastard",
]
CLEAN = [
    "The garbage collector frees objects nobody refers to.",
    "Put the trash out on Tuesday morning.",
    "The process was killed by the operating system after the timeout.",
    "This stupidly simple trick saves an hour a week.",  # 'stupidly' is not the listed word
    "The play's villain hides in the garden until the third act.",
    "He lives near the river and walks to the market.",
    "她每天早上喝一杯绿茶。",
    "_Enter the BASTARD and HUBERT, severally_",  # King John's Philip the Bastard, a speaker label
    "**BASTARD**",
]


def test_lines():
    assert [toxic_line(t) for t in TOXIC] == [True] * len(TOXIC)
    assert [toxic_line(t) for t in CLEAN] == [False] * len(CLEAN)


def test_documents_by_toxic_share():
    long_article = "\n".join(CLEAN * 3 + [TOXIC[0]])  # one rude line in 22: kept
    thread = "\n".join(CLEAN[:3] + TOXIC[:3])  # half the lines: removed
    docs = [{"text": long_article}, {"text": thread}, {"text": "\n".join(CLEAN)}]
    out = safety_documents(docs, SafetyConfig())
    assert out[1] == "toxic"
    assert out[0] == [docs[0]] and docs[0]["toxic_lines"] == 1 and out[2][0]["toxic_lines"] == 0
    assert toxic_line_count(thread) == (3, 6)
    # many toxic lines remove a document however long it is
    huge = "\n".join(CLEAN * 40 + TOXIC * 2)
    assert safety_documents([{"text": huge}], SafetyConfig(max_toxic_lines=10)) == ["toxic"]


class KeywordScorer:  # a stand-in classifier: P(toxic) from one feature, to check the wiring
    def score(self, texts):
        return np.array([0.9 if "rude" in t else 0.1 for t in texts])


def test_classifier_layer(monkeypatch):
    import openqwen.data.filters as filters

    monkeypatch.setattr(filters, "load_scorer", lambda spec: KeywordScorer())
    docs = [{"text": "a rude but list-free remark"}, {"text": "a kind remark"}]
    out = safety_documents(docs, SafetyConfig(scorer="x:y"))
    assert out[0] == "toxic_classifier" and out[1][0]["toxicity"] == 0.1
