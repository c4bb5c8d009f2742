"""The Kneser-Ney n-gram model against a plain-Python reference of the same formulas (dicts of
string n-grams), normalisation over the vocabulary, and the CCNet bucket stage: gibberish and
spam land in the tail, the clean documents in head/middle, exempt domains pass, counts balance."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict

import numpy as np
import pytest

from openqwen.data.normalize import units
from openqwen.data.perplexity import DISCOUNT, NgramLM, PerplexityConfig
from openqwen.data.pipeline import PipelineConfig, run_stage

D = DISCOUNT


def reference_kn(train: list[str], order: int):
    """Interpolated Kneser-Ney, written out with dicts (same discount, same unseen share)."""
    seqs = [["<s>"] * (order - 1) + units(t) + ["</s>"] for t in train]
    counts = [defaultdict(float) for _ in range(order + 1)]  # counts[k][(ctx..., w)]
    for s in seqs:
        for t in range(order - 1, len(s)):
            counts[order][tuple(s[t - order + 1 : t + 1])] += 1
            for k in range(1, order):  # continuation counts: distinct left extensions
                counts[k][tuple(s[t - k + 1 : t + 1])]  # touch
    for k in range(1, order):
        ext = {g for s in seqs for g in (tuple(s[t - k : t + 1]) for t in range(order - 1, len(s)))}
        cont = defaultdict(float)
        for g in ext:
            cont[g[1:]] += 1
        counts[k] = cont
    ctx_tot = [defaultdict(float) for _ in range(order + 1)]
    ctx_typ = [defaultdict(float) for _ in range(order + 1)]
    for k in range(1, order + 1):
        for g, c in counts[k].items():
            ctx_tot[k][g[:-1]] += c
            ctx_typ[k][g[:-1]] += 1

    def prob(hist: tuple, w: str, k: int) -> float:
        if k == 1:
            total, types = ctx_tot[1][()], ctx_typ[1][()]
            return max(counts[1].get((w,), 0) - D, 0) / total + D * types / total / (types + 1)
        h = hist[len(hist) - (k - 1):]
        lower = prob(hist, w, k - 1)
        tot = ctx_tot[k].get(h, 0)
        if not tot:
            return lower
        return max(counts[k].get(h + (w,), 0) - D, 0) / tot + D * ctx_typ[k][h] / tot * lower

    def logprobs(text: str) -> list[float]:
        s = ["<s>"] * (order - 1) + units(text) + ["</s>"]
        return [math.log(prob(tuple(s[t - order + 1 : t]), s[t], order)) for t in range(order - 1, len(s))]

    return logprobs


def test_matches_reference_and_normalises():
    rng = random.Random(0)
    vocab = "the river stone mill water light ran past old green".split()
    train = [" ".join(rng.choice(vocab) for _ in range(rng.randint(5, 40))) for _ in range(30)]
    lm = NgramLM(3).fit(train)
    ref = reference_kn(train, 3)
    for text in ["the river ran past the old mill", "green green water", "unseen words here the river", ""]:
        np.testing.assert_allclose(lm.log_probs(text), ref(text), rtol=1e-9, atol=1e-12)
    # P(. | context) sums to 1 over the vocabulary, the end marker and the unseen share
    for ctx in ["the river", "old", "zzz qqq"]:
        total = sum(math.exp(lm.log_probs(f"{ctx} {w}")[-2]) for w in vocab)
        end = math.exp(lm.log_probs(ctx)[-1])
        # the unseen share: one unit standing for every unseen one
        unseen = math.exp(lm.log_probs(f"{ctx} neverseen")[-2])
        assert total + end + unseen == pytest.approx(1.0, abs=1e-9)


def test_bucket_stage_keeps_head_and_middle(tmp_path):
    rng = random.Random(1)
    words = ("the river ran past the old mill and the children went down to the water in the morning to "
             "gather the stones that the current had left on the banks").split()
    reference = [" ".join(words[i:] + words[:i]) for i in range(len(words))]
    lm = NgramLM(3).fit(reference)
    lm.save(tmp_path / "lm.npz")
    clean = [" ".join(words[i : i + 12]) for i in range(0, 12)]
    junk = [" ".join(rng.sample(["qx", "zv", "buy", "now", "cheap", "klm", "wq", "pp"], 8)) for _ in range(8)]
    docs = [{"text": t, "lang": "en"} for t in clean + junk] + [{"text": "x = 1\nprint(x)", "domain": "code"}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in docs) + "{bad\n")
    cfg = PipelineConfig(perplexity=PerplexityConfig(model=str(tmp_path / "lm.npz")))
    m = run_stage("perplexity", src, tmp_path / "p", cfg, log=lambda *_: None)
    assert m["balanced"] and m["errors"] == 1
    assert m["removed"] == {"perplexity_tail": 8}  # 40 % of 20 scored documents: the junk
    assert set(m["removed_examples"]["perplexity_tail"]) <= {d[:80] for d in junk}
    out = [json.loads(x) for x in __import__("gzip").open(tmp_path / "p" / "shard-00000.jsonl.gz", "rt")]
    assert {d["ppl_bucket"] for d in out} == {"head", "middle", "exempt"}
    assert m["perplexity_cutoffs"]["en"]["head_max"] < m["perplexity_cutoffs"]["en"]["middle_max"]
    with pytest.raises(ValueError, match="needs a model"):
        run_stage("perplexity", src, tmp_path / "q", PipelineConfig(), log=lambda *_: None)
