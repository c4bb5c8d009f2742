"""Malformed records are counted as errors with their file and line, never dropped silently and never
a crash: a lone surrogate escape (valid JSON, invalid Unicode) in the text or in metadata, broken
JSON, a missing text field; and every stage balances (in = kept + removed + errors)."""

from __future__ import annotations

import json
from pathlib import Path

from openqwen.data.io import BadLine, lone_surrogate, read_documents
from openqwen.data.pipeline import PipelineConfig, run_pipeline
from openqwen.data.decontam import DecontamConfig

GOOD = ("The river ran past the old mill and the children of the village would go down to the water "
        "with their baskets in the morning to gather the stones that the current had left on the banks; "
        "the miller watched them from his window and thought of the years when he had done the same, "
        "long before the bridge was built and the road came through the valley to the market town. ")


def _lines(tag: str) -> list[str]:
    # raw JSON text: json.dumps would turn "\ud800" into the same escape, written here by hand
    return [
        json.dumps({"text": GOOD + tag + " one", "source": "web"}),
        '{"text": "broken \\ud800 text", "source": "web"}',  # lone high surrogate in the text
        json.dumps({"text": GOOD + tag + " two", "source": "web"}),
        '{"text": "fine text", "title": "bad \\udfff title"}',  # lone low surrogate in metadata
        json.dumps({"text": GOOD + tag + " smile \U0001F600", "source": "web"}),  # a valid pair: fine
        '{"text": "an escaped backslash \\\\ud800 is just text: ' + GOOD + tag + '", "source": "web"}',
        "{not json",
        json.dumps({"no_text": 1}),
    ]


def test_reader_reports_lone_surrogates_with_place(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(_lines("a")) + "\n")
    out = list(read_documents(path))
    bad = [(b.line, b.error) for b in out if isinstance(b, BadLine)]
    assert [line for line, _ in bad] == [2, 4, 7, 8]
    assert "lone surrogate" in bad[0][1] and "in text" in bad[0][1]
    assert "lone surrogate" in bad[1][1] and "in title" in bad[1][1]
    docs = [d for d in out if isinstance(d, dict)]
    assert len(docs) == 4
    assert docs[2]["text"].endswith("\U0001F600")  # the valid surrogate pair decoded to one character
    assert "\\ud800" in docs[3]["text"]  # an escaped backslash is literal text, not a surrogate
    for d in docs:  # everything that passes can be written as UTF-8
        json.dumps(d, ensure_ascii=False).encode("utf-8")


def test_lone_surrogate_finds_nested_places():
    assert lone_surrogate({"a": [1, {"b": "x\ud800"}]}) == "a[1].b"
    assert lone_surrogate({"a": "ok", "b": ["fine", "\U0001F600"]}) is None
    assert lone_surrogate({"\udc80": 1}) is not None


def data_cli(argv: list[str]) -> int:
    """``openqwen data ...`` through the data package's own parser (the verb as the CLI registers it)."""
    import argparse

    from openqwen.data import cli

    parser = argparse.ArgumentParser(prog="openqwen")
    cli.add_parser(parser.add_subparsers())
    args = parser.parse_args(["data", *argv])
    return args.func(args)


def test_data_run_counts_surrogates_and_prints_where(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jsonl").write_text("\n".join(_lines("a")) + "\n")
    (src / "b.jsonl").write_text("\n".join(_lines("b")) + "\n")
    evals = tmp_path / "e.jsonl"
    evals.write_text(json.dumps({"text": "unrelated astronomy question on the orbits of the outer planets "
                                         "of the solar system and their moons"}) + "\n")
    rc = data_cli(["run", "--in", str(src), "--out", str(tmp_path / "o"), "--eval-sets", "",
               "--eval-file", str(evals)])
    assert rc == 0  # the run finishes: bad records are counted, not fatal
    err = capsys.readouterr().err
    for name in ("a.jsonl", "b.jsonl"):
        for line in (2, 4, 7, 8):
            assert f"{src / name}:{line}:" in err
    summary = json.loads((tmp_path / "o" / "pipeline.json").read_text())
    first = summary["stages"][0]
    assert first["errors"] == 8 and first["docs_in"] == 16
    for s in summary["stages"]:
        assert s["docs_in"] == s["kept"] + sum(s["removed"].values()) + s["errors"], s
    assert first["kept"] == 8  # the 4 good records of each file go on (later stages dedup them)


def test_every_stage_balances_on_planted_input(tmp_path):
    from openqwen.data import STAGES

    src = tmp_path / "in.jsonl"
    docs = [GOOD + f"variant {i}" for i in range(6)] + [GOOD + "variant 0", "short one", "   "]
    src.write_text("\n".join([json.dumps({"text": t, "source": "web"}) for t in docs] + _lines("c")) + "\n")
    evals = tmp_path / "e.jsonl"
    evals.write_text(json.dumps({"text": GOOD}) + "\n")  # contaminates every long document
    cfg = PipelineConfig(decontam=DecontamConfig(eval_sets=[], extra=[str(evals)]))
    summary = run_pipeline(src, tmp_path / "o", cfg, log=lambda *_: None)
    assert [s["stage"] for s in summary["stages"]] == list(STAGES)
    for k, s in enumerate(summary["stages"], 1):
        m = json.loads((tmp_path / "o" / f"{k:02d}-{s['stage']}" / "manifest.json").read_text())
        assert m["docs_in"] == m["kept"] + sum(m["removed"].values()) + m["errors"], m
        assert m["balanced"]
    stages = {s["stage"]: s for s in summary["stages"]}
    assert stages["extract"]["errors"] == 4 and stages["normalize"]["removed"] == {"empty": 1}
    assert stages["decontam"]["kept"] == 0 and stages["decontam"]["removed"]["contaminated"] > 0
    assert Path(summary["output"]).exists()
