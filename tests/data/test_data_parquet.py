"""Parquet in and out (pyarrow): documents round-trip with their metadata, bad rows are errors with
their row, and a stage streams a big file in bounded memory (peak RSS flat as the input grows 10x)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from openqwen.data.io import read_documents
from openqwen.data.pipeline import PipelineConfig, run_pipeline, run_stage


def quiet(*_):
    pass


def test_parquet_in_and_out_keeps_metadata_and_counts_bad_rows(tmp_path):
    rows = {"text": ["first document about rivers", None, "third document about stones", "second copy"],
            "url": ["https://a.example/1", "https://a.example/2", None, "https://a.example/4"],
            "year": [2021, 2022, 2023, 2024]}
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table(rows), src, row_group_size=2)
    docs = list(read_documents(src))
    assert docs[1].file == str(src) and docs[1].line == 2 and "null" in docs[1].error
    assert docs[0] == {"text": "first document about rivers", "url": "https://a.example/1", "year": 2021}
    assert docs[2] == {"text": "third document about stones", "year": 2023}  # a null field is left out
    cfg = PipelineConfig(stages=["normalize", "mix"], output_format="parquet")
    summary = run_pipeline(src, tmp_path / "out", cfg, log=quiet)
    assert summary["stages"][0]["errors"] == 1 and summary["docs_out"] == 3
    out = sorted((tmp_path / "out" / "02-mix").glob("shard-*.parquet"))
    assert len(out) == 1 and pq.read_schema(out[0]).names == ["text", "id", "metadata"]
    back = [d for d in read_documents(out[0])]
    assert back == [d for d in docs if isinstance(d, dict)]
    # a JSONL stage reads the Parquet output and the other way round: the same documents
    m = run_stage("normalize", out[0], tmp_path / "j", log=quiet)
    assert m["kept"] == 3
    assert [d for f in sorted((tmp_path / "j").glob("shard-*.jsonl.gz")) for d in read_documents(f)] == back


def test_not_parquet_or_no_text_column(tmp_path):
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"not parquet at all")
    (err,) = list(read_documents(bad))
    assert err.line == 0 and "Parquet" in err.error
    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "y.parquet")
    (err,) = list(read_documents(tmp_path / "y.parquet"))
    assert "no 'text' column" in err.error and "content" in err.error


# VmHWM (the peak RSS of this address space) rather than getrusage's ru_maxrss, which a child
# inherits from its parent at fork and keeps across exec: it would report pytest's own peak
PEAK = """
import json, sys
from openqwen.data.pipeline import PipelineConfig, run_stage
src, out, fmt = sys.argv[1:4]
run_stage("mix", src, out, PipelineConfig(output_format=fmt), log=lambda *_: None)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_kb": int(hwm.split()[1])}))
"""


def _peak_rss_kb(src: Path, out: Path, fmt: str) -> int:
    """Peak RSS of a fresh interpreter that runs one stage (fresh, not forked: a forked child
    starts with this process's memory and allocator state)."""
    res = subprocess.run([sys.executable, "-c", PEAK, str(src), str(out), fmt], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_kb"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc (Linux)")
def test_peak_memory_stays_flat_as_the_input_grows_10x(tmp_path):
    """One file is one task: before streaming, a task held its whole shard (and its whole output) in
    memory. 1 MB and 10 MB of text in one file each: the peak RSS of a subprocess running a stage
    may grow by far less than the 9 MB of extra text (which held in Python strings and dicts would
    add several times that)."""
    doc = "the river ran past the mill and the stones lay in the water " * 16  # ~1 KB
    peaks = {}
    for fmt in ("jsonl", "parquet"):
        for mb in (1, 10):
            n = mb * 1000
            if fmt == "jsonl":
                src = tmp_path / f"in-{mb}.jsonl"
                with open(src, "w") as f:
                    for i in range(n):
                        f.write(json.dumps({"text": f"{i} {doc}", "source": "web"}) + "\n")
            else:
                src = tmp_path / f"in-{mb}.parquet"
                pq.write_table(pa.table({"text": [f"{i} {doc}" for i in range(n)], "source": ["web"] * n}), src,
                               row_group_size=1000)
            peaks[fmt, mb] = _peak_rss_kb(src, tmp_path / f"out-{fmt}-{mb}", fmt)
    for fmt in ("jsonl", "parquet"):
        growth_mb = (peaks[fmt, 10] - peaks[fmt, 1]) / 1024
        assert growth_mb < 4, (fmt, peaks)
