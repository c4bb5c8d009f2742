"""Web pages in: trafilatura extraction drops boilerplate and keeps URL/title/language; WARC archives
(warcio) give one document per HTML response; broken archives are errors with file and record;
the built-in sample's planted pages end where pages.json says."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from openqwen.data.decontam import DecontamConfig
from openqwen.data.extract import ExtractConfig, extract_page, html_lang, read_pages
from openqwen.data.io import BadLine, read_documents
from openqwen.data.pipeline import PipelineConfig, run_pipeline, run_stage
from openqwen.data.websample import _PNG, SAMPLE_DIR, build_web_sample, sample_pages


def quiet(*_):
    pass


def read_out(folder: Path) -> list[dict]:
    return [d for f in sorted(folder.glob("shard-*.jsonl.gz")) for d in read_documents(f)]


def test_extraction_drops_boilerplate_and_keeps_metadata():
    html = (SAMPLE_DIR / "garden-tomatoes.html").read_bytes()
    doc = extract_page(html, "https://gardennotes.example/2024/03/balcony-tomatoes")
    text = doc["text"]
    for sentence in ("You do not need a garden to grow good tomatoes.",
                     "A single healthy plant on a sunny balcony can give you several kilos of tomatoes in one summer."):
        assert sentence in text
    for boilerplate in ("We use cookies", "Accept all", "Popular posts", "Subscribe", "All rights reserved",
                        "Log in", "Ten herbs for a window box"):
        assert boilerplate not in text, boilerplate
    assert doc["url"] == "https://gardennotes.example/2024/03/balcony-tomatoes"
    assert doc["title"] == "How to grow tomatoes on a small balcony"
    assert doc["html_lang"] == "en" and doc["hostname"] == "gardennotes.example"
    # the AMP copy names its canonical page: kept apart from the URL it was fetched from
    amp = extract_page((SAMPLE_DIR / "bridge-news-amp.html").read_bytes(), "https://x.example/amp/1")
    assert amp["url"] == "https://x.example/amp/1"
    assert amp["canonical_url"] == "https://rivertown-herald.example/news/old-mill-bridge-reopens"
    assert extract_page((SAMPLE_DIR / "login-wall.html").read_bytes()) is None
    assert html_lang(b'<!DOCTYPE html><html amp lang="zh_CN">') == "zh-cn"
    assert html_lang(b"<html><body>no lang</body></html>") is None


def test_warc_extract_stage_counts_every_record(tmp_path):
    warc = build_web_sample(tmp_path / "in")
    records = list(read_pages(warc))
    pages = sample_pages()
    assert len(records) == len(pages) + 1  # response records only: + the PNG; requests and warcinfo skipped
    m = run_stage("extract", warc, tmp_path / "x", log=quiet)
    assert m["docs_in"] == len(pages) + 1 and m["errors"] == 0 and m["balanced"]
    assert m["removed"] == {"no_main_text": 2, "not_html": 1}
    assert set(m["removed_examples"]["no_main_text"]) == {"https://memberzone.example/login",
                                                          "https://gardennotes.example/tag/gardening"}
    docs = read_out(tmp_path / "x")
    assert {d["url"] for d in docs} == {p["url"] for p in pages} - set(m["removed_examples"]["no_main_text"])
    assert all(d["source"] == "web" and d["warc_record_id"].startswith("<urn:uuid:") for d in docs)
    assert m["bytes_in"] == sum((SAMPLE_DIR / p["file"]).stat().st_size for p in pages) + len(_PNG)
    zh = next(d for d in docs if d["url"].endswith("spring-tea"))
    assert zh["html_lang"] == "zh-cn" and "绿茶不经过发酵" in zh["text"]


def test_broken_warc_is_an_error_with_file_and_record(tmp_path):
    warc = build_web_sample(tmp_path / "in")
    data = warc.read_bytes()
    broken = tmp_path / "broken.warc.gz"
    # keep the first records whole, then cut the 7th (the third page's response) in half: a truncated
    # download (one gzip member per record: warcinfo, then request + response per page)
    members = data.split(b"\x1f\x8b\x08")
    broken.write_bytes(b"\x1f\x8b\x08".join(members[:7]) + b"\x1f\x8b\x08" + members[7][: len(members[7]) // 2])
    m = run_stage("extract", broken, tmp_path / "x", log=quiet)
    assert m["errors"] == 1 and m["balanced"]
    err = m["error_lines"][0]
    assert err["file"] == str(broken) and err["line"] == 7 and "cut short" in err["error"]
    assert m["kept"] == 2 and not m["removed"]  # the two whole pages before it
    garbage = tmp_path / "garbage.warc.gz"
    garbage.write_bytes(data[:2000] + b"not a warc record" * 50)
    m = run_stage("extract", garbage, tmp_path / "g", log=quiet)
    assert m["errors"] == 1 and m["balanced"] and "WARC record" in m["error_lines"][0]["error"]
    # a later stage given HTML directly says to extract first, as one bad line
    (tmp_path / "p.html").write_bytes((SAMPLE_DIR / "bridge-news.html").read_bytes())
    out = list(read_documents(tmp_path / "p.html"))
    assert isinstance(out[0], BadLine) and "extract stage" in out[0].error


def test_html_files_and_jsonl_pass_through_together(tmp_path):
    folder = build_web_sample(tmp_path / "in", warc=False)
    (folder / "notes.jsonl").write_text(json.dumps({"text": "plain document", "source": "notes"}) + "\n")
    m = run_stage("extract", folder, tmp_path / "x", PipelineConfig(extract=ExtractConfig(source="crawl")), log=quiet)
    docs = read_out(tmp_path / "x")
    assert m["kept"] == len(sample_pages()) - 2 + 1 and m["removed"] == {"no_main_text": 2}
    assert {"text": "plain document", "source": "notes"} in docs
    assert {d["source"] for d in docs} == {"crawl", "notes"}


def test_sample_pages_end_where_pages_json_says(tmp_path, artifact):
    artifact("humaneval")  # the forum page leaks a HumanEval problem
    warc = build_web_sample(tmp_path / "in")
    summary = run_pipeline(warc, tmp_path / "out", PipelineConfig(decontam=DecontamConfig(eval_sets=["humaneval"])),
                           log=quiet, card_plot=True)
    removed_by: dict[str, str] = {}
    for k, s in enumerate(summary["stages"], 1):
        m = json.loads((tmp_path / "out" / f"{k:02d}-{s['stage']}" / "manifest.json").read_text())
        assert m["balanced"]
        for reason, labels in m["removed_examples"].items():
            for label in labels:
                removed_by[label] = f"{s['stage']}:{reason}"
    kept = {d["url"] for d in read_out(Path(summary["output"]))}
    for p in sample_pages():
        where = "kept" if p["url"] in kept else removed_by.get(p["url"])
        expect = p["expect"]
        if expect == "removed":
            assert where != "kept", p
        elif ":" in expect or expect == "kept":
            assert where == expect, (p["file"], where)
        else:
            assert where.startswith(expect + ":"), (p["file"], where)
    _check_data_card(tmp_path / "out", summary)


def _check_data_card(run: Path, summary: dict) -> None:
    """The run's data card holds every removal reason with its count, the licence, the language mix."""
    card = (run / "data_card.md").read_text()
    assert (run / "data_card.png").stat().st_size > 10_000
    for s in summary["stages"]:
        for reason, n in s["removed"].items():
            assert f"| {s['stage']} | {reason} | {n} |" in card
    out_docs = read_out(Path(summary["output"]))
    for lang in {d["lang"] for d in out_docs}:
        n = sum(d["lang"] == lang for d in out_docs)
        assert f"| {lang} | {n} | {n / len(out_docs):.1%} |" in card
    # the licence from the sample's manifest, and the documents in / out of the source
    assert (f"| web | Apache-2.0 (pages written for openqwen; one quotes HumanEval/2, MIT) | {len(sample_pages()) + 1} | "
            in card)
    assert f"| {len(out_docs)} |" in card.split("| web |")[1].split("\n")[0]
