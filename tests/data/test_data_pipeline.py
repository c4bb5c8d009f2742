"""The stages end to end: manifests balance, bad lines are reported, reruns and resumes do no extra
work, planted contamination goes, mixing weights hold, executors agree."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest

from openqwen.data.decontam import DecontamConfig, build_index, contamination_matches, eval_set_texts
from openqwen.data.io import read_documents
from openqwen.data.mix import MixConfig, mix_documents
from openqwen.data.pipeline import PipelineConfig, run_pipeline, run_stage

rng = random.Random(0)
VOCAB = ["river", "stone", "light", "garden", "window", "letter", "morning", "music", "market", "winter",
         "bridge", "silver", "forest", "harbor", "candle", "mirror", "valley", "thunder", "paper", "orchard"]
FUNCTION_WORDS = ["the", "of", "and", "to", "with", "that", "a", "in", "was", "have", "be"]


def prose(n_words: int = 120) -> str:
    words = [rng.choice(VOCAB) if i % 2 else rng.choice(FUNCTION_WORDS) for i in range(n_words)]
    words += [f"w{rng.randrange(10**6)}" for _ in range(30)]  # makes every document distinct
    rng.shuffle(words)
    return " ".join(words).capitalize() + "."


def read_out(folder: Path) -> list[dict]:
    return [d for f in sorted(folder.glob("shard-*.jsonl.gz")) for d in read_documents(f)]


@pytest.fixture
def corpus(tmp_path):
    base = [prose() for _ in range(30)]
    docs = [{"text": t, "source": "web"} for t in base]
    docs.append({"text": base[0].upper().replace(" ", "  "), "source": "web"})  # exact after normalisation
    w = base[1].split(" ")
    w[5] = "changed"
    docs.append({"text": " ".join(w), "source": "web"})  # near duplicate
    docs.append({"text": "Too short.", "source": "web"})  # gopher_word_count
    docs.append({"text": "   \n\n  ", "source": "web"})  # empty after normalisation
    docs.append({"text": "def f(x):\n    return x + 1\n\n\nprint(f(2))\n", "source": "code", "domain": "code"})
    src = tmp_path / "in"
    src.mkdir()
    lines = [json.dumps(d) for d in docs]
    half = len(lines) // 2
    (src / "a.jsonl").write_text("\n".join(lines[:half] + ["{broken json"]) + "\n")
    with gzip.open(src / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(lines[half:] + [json.dumps({"no_text": 1})]) + "\n")
    return src, docs


def _config(tmp_path, **mix) -> PipelineConfig:
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"text": "completely unrelated evaluation question about astronomy and "
                                 "the orbits of the outer planets of the solar system"}) + "\n")
    return PipelineConfig(decontam=DecontamConfig(eval_sets=[], extra=[str(evals)]),
                          mix=MixConfig(weights=mix or {}))


def test_pipeline_manifests_balance_and_report_bad_lines(tmp_path, corpus):
    src, docs = corpus
    summary = run_pipeline(src, tmp_path / "out", _config(tmp_path, code=3.0), log=lambda *_: None)
    stages = {s["stage"]: s for s in summary["stages"]}
    for s in summary["stages"]:
        assert s["docs_in"] == s["kept"] + sum(s["removed"].values()) + s["errors"], s
    first = json.loads((tmp_path / "out" / "01-extract" / "manifest.json").read_text())
    assert first["docs_in"] == len(docs) + 2 and first["errors"] == 2
    where = {(Path(e["file"]).name, e["line"]) for e in first["error_lines"]}
    assert where == {("a.jsonl", len(docs) // 2 + 1), ("b.jsonl.gz", len(docs) - len(docs) // 2 + 1)}
    assert stages["normalize"]["removed"] == {"empty": 1}
    assert stages["dedup-exact"]["removed"] == {"exact_duplicate": 1}
    assert stages["dedup-fuzzy"]["removed"] == {"near_duplicate": 1}
    assert stages["filter"]["removed"] == {"gopher_word_count": 1}
    assert stages["mix"]["added"] == 2  # the code document written three times
    out = read_out(Path(summary["output"]))
    assert len(out) == summary["docs_out"] == 30 + 3
    assert {d["lang"] for d in out} == {"en", "code"}
    # each stage's input count is the previous stage's output
    seq = summary["stages"]
    for a, b in zip(seq, seq[1:]):
        assert b["docs_in"] == a["kept"] + a["added"]


def test_rerun_is_noop_and_killed_stage_resumes(tmp_path, corpus):
    src, _ = corpus
    cfg = PipelineConfig(stages=["normalize", "dedup-fuzzy"])
    run_pipeline(src, tmp_path / "out", cfg, log=lambda *_: None)
    fuzzy = tmp_path / "out" / "02-dedup-fuzzy"
    stamp = {p.name: p.stat().st_mtime_ns for p in fuzzy.rglob("*") if p.is_file()}
    logs: list[str] = []
    run_pipeline(src, tmp_path / "out", cfg, log=logs.append)
    assert all("nothing to do" in line for line in logs)
    assert {p.name: p.stat().st_mtime_ns for p in fuzzy.rglob("*") if p.is_file()} == stamp
    # simulate a kill after shard 0 was written: no manifest, shard 1 missing its marker and output
    before = json.loads((fuzzy / "manifest.json").read_text())
    (fuzzy / "manifest.json").unlink()
    (fuzzy / "_done" / "00001.json").unlink()
    (fuzzy / "shard-00001.jsonl.gz").unlink()
    logs.clear()
    after = run_stage("dedup-fuzzy", tmp_path / "out" / "01-normalize", fuzzy, cfg, log=logs.append)
    assert any("resuming, 1 of 2 shards already done" in line for line in logs)
    assert (fuzzy / "shard-00000.jsonl.gz").stat().st_mtime_ns == stamp["shard-00000.jsonl.gz"]
    for key in ("docs_in", "kept", "removed", "errors", "bytes_kept"):
        assert after[key] == before[key]
    with pytest.raises(FileExistsError, match="other inputs or settings"):
        run_stage("dedup-fuzzy", tmp_path / "out" / "01-normalize", fuzzy,
                  PipelineConfig(stages=["dedup-fuzzy"], dedup=cfg.dedup.__class__(threshold=0.5)),
                  log=lambda *_: None)


def test_planted_humaneval_prompt_is_found(tmp_path, artifact):
    artifact("humaneval")
    problems = eval_set_texts("humaneval")
    index, stats = build_index(problems, 13)
    assert stats["items"] == 164 and stats["ngrams"] > 10_000
    prompt = problems[7].split('"""')[0] + '"""' + problems[7].split('"""')[1] + '"""'
    clean = prose(300)
    planted = clean[:700] + "\nHere is a snippet I found:\n" + prompt + "\n" + clean[700:]
    assert contamination_matches(clean, index) == 0
    assert contamination_matches(planted, index) >= 5
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": clean}) + "\n" + json.dumps({"text": planted}) + "\n")
    m = run_stage("decontam", src, tmp_path / "dc", PipelineConfig(decontam=DecontamConfig(eval_sets=["humaneval"])),
                  log=lambda *_: None)
    assert m["removed"] == {"contaminated": 1} and m["kept"] == 1
    assert read_out(tmp_path / "dc")[0]["text"] == clean


def test_mix_weights_up_and_down_sample():
    docs = [{"text": f"doc {i}", "source": "a" if i < 2000 else "b"} for i in range(4000)]
    cfg = MixConfig(weights={"a": 2.5, "b": 0.25}, seed=3)
    out = mix_documents([dict(d) for d in docs], cfg)
    copies_a = [len(o) if isinstance(o, list) else 0 for o in out[:2000]]
    copies_b = [len(o) if isinstance(o, list) else 0 for o in out[2000:]]
    assert set(copies_a) == {2, 3} and set(copies_b) <= {0, 1}
    assert abs(np.mean(copies_a) - 2.5) < 0.05 and abs(np.mean(copies_b) - 0.25) < 0.04
    assert sum(o == "downsampled" for o in out[2000:]) == copies_b.count(0)
    # the same document gets the same number of copies whatever else is in its shard
    again = mix_documents([dict(d) for d in docs[::-1]], cfg)[::-1]
    assert [len(o) if isinstance(o, list) else 0 for o in again] == copies_a + copies_b
    with pytest.raises(ValueError, match="finite number >= 0"):
        MixConfig(weights={"a": -1})


def test_config_from_dict_rejects_typos():
    cfg = PipelineConfig.from_dict({"dedup": {"threshold": 0.7}, "stages": ["normalize", "mix"]})
    assert cfg.dedup.threshold == 0.7 and cfg.stages == ["normalize", "mix"]
    with pytest.raises(ValueError, match="unknown option"):
        PipelineConfig.from_dict({"dedup": {"treshold": 0.7}})
    with pytest.raises(ValueError, match="unknown stage"):
        PipelineConfig.from_dict({"stages": ["normalise"]})


def test_process_pool_matches_inline(tmp_path, corpus):
    from openqwen.data.executors import LocalExecutor

    src, _ = corpus
    cfg = PipelineConfig(stages=["normalize", "dedup-exact"])
    a = run_pipeline(src, tmp_path / "one", cfg, LocalExecutor(1), log=lambda *_: None)
    with LocalExecutor(2) as ex:
        b = run_pipeline(src, tmp_path / "two", cfg, ex, log=lambda *_: None)
    assert read_out(Path(a["output"])) == read_out(Path(b["output"]))


def test_cli_run_and_pack(tmp_path, corpus):
    from openqwen.cli import main
    from openqwen.data.packing import PackedDataset

    src, _ = corpus
    evals = tmp_path / "e.txt"
    evals.write_text("nothing in common with the corpus at all, just some words to make thirteen or more")
    rc = main(["data", "run", "--in", str(src), "--out", str(tmp_path / "o"), "--stages", "normalize,dedup-exact,mix",
               "--weight", "web=0.5"])
    assert rc == 0
    summary = json.loads((tmp_path / "o" / "pipeline.json").read_text())
    assert summary["stages"][-1]["removed"].get("downsampled", 0) > 0

    class Tok:  # packing takes any encoder; the pack verb loads the real one
        eos_id, vocab_size = 0, 256

        def encode(self, text):
            return [b or 1 for b in text.encode()]

    from openqwen.data.packing import pack_documents

    index = pack_documents(Path(summary["output"]), Tok(), tmp_path / "p", seq_len=64, progress=False)
    assert len(PackedDataset(tmp_path / "p")) == index["num_sequences"] > 0


@pytest.mark.ray
@pytest.mark.slow  # a Ray start-up takes tens of seconds on two busy cores
def test_ray_executor_matches_local(tmp_path, corpus):
    pytest.importorskip("ray")
    from openqwen.data.executors import LocalExecutor, RayExecutor

    src, _ = corpus
    cfg = PipelineConfig(stages=["normalize", "dedup-fuzzy", "filter"])
    local = run_pipeline(src, tmp_path / "local", cfg, LocalExecutor(1), log=lambda *_: None)
    ex = RayExecutor(num_cpus=2)
    try:
        ray_run = run_pipeline(src, tmp_path / "ray", cfg, ex, log=lambda *_: None)
    finally:
        ex.ray.shutdown()
    assert read_out(Path(local["output"])) == read_out(Path(ray_run["output"]))
    assert [s["removed"] for s in local["stages"]] == [s["removed"] for s in ray_run["stages"]]


def test_contamination_from_an_extra_eval_file(tmp_path):
    # no artifacts needed: the evaluation set is a user file; the copy differs in case and punctuation
    question = ("A train leaves the station at nine in the morning travelling at sixty miles per hour "
                "towards a city two hundred miles away; when does it arrive?")
    evals = tmp_path / "my_eval.jsonl"
    evals.write_text(json.dumps({"text": question}) + "\n")
    clean = prose(200)
    leaked = clean[:400] + " " + question.upper().replace(";", " --") + " " + clean[400:]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"text": t}) for t in (clean, leaked)) + "\n")
    cfg = PipelineConfig(decontam=DecontamConfig(eval_sets=[], extra=[str(evals)]))
    m = run_stage("decontam", src, tmp_path / "dc", cfg, log=lambda *_: None)
    assert m["removed"] == {"contaminated": 1} and m["eval_index"]["items"] == 1
    assert [d["text"] for d in read_out(tmp_path / "dc")] == [clean]


def test_reshard_spreads_documents_and_counts_bad_lines(tmp_path, corpus):
    from openqwen.data.pipeline import reshard

    src, docs = corpus
    m = reshard(src, tmp_path / "s", docs_per_shard=10, log=lambda *_: None)
    assert m["kept"] == len(docs) and m["errors"] == 2 and m["balanced"]
    assert len(m["outputs"]) == -(-len(docs) // 10)
    assert [d["text"] for d in read_out(tmp_path / "s")] == [d["text"] for d in docs]
    assert reshard(src, tmp_path / "s", docs_per_shard=10, log=lambda *_: None) == m  # finished: no-op


def test_cli_train_quality_and_filter_with_it(tmp_path, corpus):
    from openqwen.cli import main
    from openqwen.data.quality import QualityClassifier

    src, docs = corpus
    assert main(["data", "train-quality", "--good", str(src), "--out", str(tmp_path / "q.npz"), "--limit", "20"]) == 0
    clf = QualityClassifier.load(tmp_path / "q.npz")
    s = clf.score([docs[3]["text"], "buy now click here " * 30])
    assert s[0] > 0.5 > s[1]


def test_rerun_of_every_default_stage_is_noop(tmp_path, corpus):
    # settings with tuples (the filter's n-gram thresholds) must compare equal to their JSON manifest
    src, _ = corpus
    run_pipeline(src, tmp_path / "out", _config(tmp_path), log=lambda *_: None)
    logs: list[str] = []
    run_pipeline(src, tmp_path / "out", _config(tmp_path), log=logs.append)
    assert logs and all("nothing to do" in line for line in logs), logs
