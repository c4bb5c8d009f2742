"""The built-in web sample: a dozen pages written for openqwen (``openqwen/data/web_sample/``), each
planting one case the pipeline must handle (boilerplate around an article, a near-duplicate copy
site, an exact AMP copy, Chinese and French pages, a forum post that pastes a HumanEval problem,
a thread of insults, a login wall, a link index, keyword spam, lorem ipsum, a code tutorial).
``pages.json`` lists each page's URL and the stage and reason expected to remove it.

:func:`build_web_sample` writes them as a WARC archive, the way a crawl delivers pages (one
``response`` record per page with its HTTP headers, plus a ``warcinfo`` record, the ``request``
records a crawler writes, and one PNG image response, which ``extract`` removes as ``not_html``),
or as plain ``.html`` files.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

SAMPLE_DIR = Path(__file__).resolve().parent / "web_sample"
# 1x1 transparent PNG: a non-HTML response, as crawls are full of
_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                     "1f15c4890000000d4944415478da63f8ffff3f0005fe02fea7d6a4ab0000000049454e44ae426082")


def sample_pages() -> list[dict[str, Any]]:
    """``pages.json``'s entries: ``file``, ``url``, ``expect`` (``stage:reason``, ``kept`` or
    ``removed``) and what the page ``plants``."""
    return json.loads((SAMPLE_DIR / "pages.json").read_text(encoding="utf-8"))["pages"]


def build_web_sample(out_dir: str | Path, warc: bool = True, copies: int = 1) -> Path:
    """Write the sample into ``out_dir`` as ``pages.warc.gz`` (``warc=True``) or as ``.html`` files;
    returns the written path. ``copies > 1`` repeats the pages under new URLs (for size tests)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pages = sample_pages()
    # the sources table the data card reads licences from
    (out / "manifest.json").write_text(json.dumps({"stage": "web-sample", "sources": {"web": {
        "licence": "Apache-2.0 (pages written for openqwen; one quotes HumanEval/2, MIT)",
        "origin": "openqwen/data/web_sample", "documents": len(pages) * copies}}}, indent=1) + "\n")
    if not warc:
        for k in range(copies):
            for p in pages:
                name = p["file"] if k == 0 else p["file"].replace(".html", f"-{k}.html")
                shutil.copyfile(SAMPLE_DIR / p["file"], out / name)
        return out
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    path = out / "pages.warc.gz"
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        writer.write_record(writer.create_warcinfo_record(path.name, {"software": "openqwen web sample",
                                                                      "format": "WARC File Format 1.1"}))
        date = "2024-06-01T12:00:00Z"
        for k in range(copies):
            entries = [(p["url"], (SAMPLE_DIR / p["file"]).read_bytes(), "text/html; charset=utf-8") for p in pages]
            entries.append(("https://gardennotes.example/static/pixel.png", _PNG, "image/png"))
            for url, body, ctype in entries:
                if k:
                    url = f"{url}?copy={k}"
                req = writer.create_warc_record(url, "request", payload=io.BytesIO(
                    f"GET {url} HTTP/1.1\r\n\r\n".encode()), warc_headers_dict={"WARC-Date": date})
                writer.write_record(req)
                http = StatusAndHeaders("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))],
                                        protocol="HTTP/1.1")
                writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                              http_headers=http, warc_headers_dict={"WARC-Date": date}))
    return path
