"""Web pages in: main-text extraction from HTML files and WARC archives (the report's first step).

Extraction is trafilatura's (Barbaresi 2021: the main text of a page without its navigation,
footers, cookie banners and link lists); WARC archives are read with warcio. Nothing here parses
HTML itself. Each page becomes one document::

    {"text": main text, "url": ..., "title": ..., "html_lang": "en" (the page's own <html lang>),
     "hostname": ..., "date": ..., "source": "web", "warc_record_id": ..., "warc_date": ...}

(fields the page does not have are left out; ``url`` is where the page was fetched, a different
``<link rel=canonical>`` goes to ``canonical_url``; ``date`` is trafilatura's reading of the page,
which can be a guess from a copyright line). ``langid`` later adds the detected ``lang``; the
declared ``html_lang`` stays beside it, so a page that declares one language and is written in
another can be found.

Removal reasons of the ``extract`` stage: ``no_main_text`` (trafilatura finds no main text: a
login wall, an index of links, an empty template) and ``not_html`` (a WARC response that is an
image, a PDF, JSON...). WARC records that are not responses (requests, ``warcinfo``, metadata) are
not documents and are not counted, like blank lines in JSONL. A file that cannot be read (a broken
gzip member, a truncated record) is an error with the file and record number.

Documents from JSONL and text files pass through ``extract`` unchanged, so the stage can head
every pipeline whatever the input.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz")
WARC_SUFFIXES = (".warc", ".warc.gz")
_HTML_LANG = re.compile(rb"<html[^>]*?\slang\s*=\s*[\"']?([A-Za-z]{2,3}(?:[-_][A-Za-z0-9]+)*)", re.I)
_CHARSET = re.compile(r"charset=([\w-]+)", re.I)


@dataclass
class ExtractConfig:
    """favor_precision: trafilatura keeps only text it is sure is main content (less boilerplate,
    sometimes a lost paragraph); False balances precision and recall. include_comments: keep a
    page's comment section (off: comments are where spam and abuse gather). include_tables: keep
    table text. source: the ``source`` of page documents (what ``mix`` weights)."""

    favor_precision: bool = True
    include_comments: bool = False
    include_tables: bool = True
    source: str = "web"


def is_html(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(HTML_SUFFIXES)


def is_warc(path: str | Path) -> bool:
    return Path(path).name.lower().endswith(WARC_SUFFIXES)


def html_lang(html: bytes) -> str | None:
    """The language a page declares on its ``<html lang=...>`` tag, lower case (``en``, ``zh-cn``)."""
    m = _HTML_LANG.search(html[:4096])
    return m.group(1).decode("ascii").lower().replace("_", "-") if m else None


def extract_page(html: bytes | str, url: str | None = None, config: ExtractConfig | None = None) -> dict[str, Any] | None:
    """The main text and metadata of one HTML page, or None when it has no main text."""
    import trafilatura

    c = config or ExtractConfig()
    raw = html.encode("utf-8") if isinstance(html, str) else html
    doc = trafilatura.bare_extraction(raw, url=url, with_metadata=True, favor_precision=c.favor_precision,
                                      include_comments=c.include_comments, include_tables=c.include_tables)
    if doc is None or not (doc.text or "").strip():
        return None
    out: dict[str, Any] = {"text": doc.text}
    if url:
        out["url"] = url  # where the page was fetched; a <link rel=canonical> elsewhere is kept apart
    for key in ("url", "title", "hostname", "date"):
        value = getattr(doc, key, None)
        if value and key == "url" and url and value != url:
            out["canonical_url"] = value
        elif value and key not in out:
            out[key] = value
    lang = html_lang(raw)
    if lang:
        out["html_lang"] = lang
    return out


def read_pages(path: str | Path) -> Iterator[dict[str, Any] | tuple[int, str]]:
    """Pages of an HTML file (one) or a WARC archive (every response record), as
    ``{"html": bytes, "url": ..., "content_type": ..., ...}``; a record that cannot be read comes out
    as ``(record number, error)`` and ends the file (the rest of a broken archive is unreadable)."""
    path = Path(path)
    if is_html(path):
        raw = path.read_bytes()
        if path.name.lower().endswith(".gz"):
            raw = gzip.decompress(raw)
        yield {"html": raw, "content_type": "text/html", "source_file": str(path)}
        return
    from warcio.archiveiterator import ArchiveIterator

    number = 0
    try:
        with open(path, "rb") as f:
            # digests (WARC-Block/Payload-Digest, written by crawlers and by warcio) catch a record
            # cut short, which would otherwise come out as a shorter page
            for record in ArchiveIterator(f, check_digests="raise"):
                number += 1
                if record.rec_type != "response":
                    continue
                headers = record.http_headers
                ctype = (headers.get_header("Content-Type") if headers else None) or record.rec_headers.get_header(
                    "Content-Type") or ""
                body = record.content_stream().read()
                missing = getattr(record.raw_stream, "limit", 0)  # bytes the record declared but never came
                if missing:
                    yield number, (f"WARC record cut short ({missing} of its {record.length} bytes missing); the "
                                   "archive is truncated")
                    return
                page: dict[str, Any] = {"html": body, "content_type": ctype.lower(),
                                        "url": record.rec_headers.get_header("WARC-Target-URI"),
                                        "warc_record_id": record.rec_headers.get_header("WARC-Record-ID"),
                                        "warc_date": record.rec_headers.get_header("WARC-Date")}
                yield {k: v for k, v in page.items() if v is not None}
    except Exception as e:  # noqa: BLE001 - warcio raises many kinds on a malformed archive; all mean the same
        yield number + (0 if number and "digest" in str(e).lower() else 1), \
            f"unreadable WARC record ({type(e).__name__}: {e}); the archive is cut short or corrupt"


def _decoded_html(page: dict[str, Any]) -> bytes:
    # trafilatura guesses the encoding of bytes; a charset the server declared is surer
    m = _CHARSET.search(page.get("content_type", ""))
    if m:
        try:
            return page["html"].decode(m.group(1), errors="replace").encode("utf-8")
        except LookupError:  # a charset Python does not know: leave the guess to trafilatura
            pass
    return page["html"]


def extract_documents(docs: list[dict[str, Any]], config: ExtractConfig) -> list[list[dict[str, Any]] | str]:
    """``[document]`` for every page with main text (documents without ``html`` pass through), else
    the removal reason (``not_html``, ``no_main_text``)."""
    out: list[list[dict[str, Any]] | str] = []
    for d in docs:
        if "html" not in d:
            out.append([d])
            continue
        ctype = d.get("content_type", "text/html")
        if "html" not in ctype and "xml" not in ctype:
            out.append("not_html")
            continue
        doc = extract_page(_decoded_html(d), d.get("url"), config)
        if doc is None:
            out.append("no_main_text")
            continue
        for key in ("warc_record_id", "warc_date", "source_file"):
            if key in d:
                doc[key] = d[key]
        doc["source"] = d.get("source", config.source)
        out.append([doc])
    return out
