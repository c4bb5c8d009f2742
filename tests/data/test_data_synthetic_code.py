"""The built-in code tasks as corpus documents for continued pretraining: only train-split tasks,
clean under the pipeline's own 13-gram decontamination against the held-out tasks, solutions that
pass their tests; and the per-document licence records of the code corpus."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from openqwen.data.decontam import build_index, text_ngrams
from openqwen.data.demo_corpus import STDLIB_LICENCE, code_documents as stdlib_documents, code_task_documents, \
    copyright_line
from openqwen.data.evalsets import eval_items
from openqwen.data.synthetic_code import LICENCE, code_documents, code_tasks


def test_documents_hold_only_train_tasks_and_pass_decontamination():
    docs = code_task_documents(60_000)
    assert sum(len(d["text"].encode()) for d in docs) >= 60_000 and len({d["text"] for d in docs}) == len(docs)
    test = code_tasks("test", 10_000)
    text = "\n".join(d["text"] for d in docs)
    assert not any(f"# {r['text']}\n" in text for r in test)
    # the pipeline's decontamination index of the `code` evaluation set finds no 13-gram of any document
    index, counts = build_index([t for _, t in eval_items("code")])
    assert counts["items"] == len(test)
    assert not any(np.isin(text_ngrams(d["text"]), index).any() for d in docs)
    # ... while a document quoting a test task is caught (the check can fail)
    leak = f"# {test[0]['text']}\n{test[0]['code']}\n" + "\n".join(test[0]["test_list"])
    assert np.isin(text_ngrams(leak), index).any()
    assert {d["licence"] for d in docs} == {LICENCE} and {d["source"] for d in docs} == {"code_tasks"}


def test_documents_are_runnable_python_whose_tests_pass(tmp_path):
    doc = code_documents(40, seed=3)[0]["text"]
    assert len(re.findall(r"^def ", doc, re.M)) == 8 and doc.count("assert ") == 24
    path = tmp_path / "doc.py"
    path.write_text(doc)
    assert subprocess.run([sys.executable, str(path)], capture_output=True, timeout=30).returncode == 0


def test_stdlib_documents_carry_per_file_licence_records():
    docs, origin = stdlib_documents(300_000, 100_000)
    assert docs and "Python" in origin
    for d in docs:
        raw = Path(d["path"]).read_bytes()
        assert d["licence"] == STDLIB_LICENCE and d["sha256"] == hashlib.sha256(raw).hexdigest()
        assert d["id"].endswith(Path(d["path"]).name)
    assert copyright_line('"""Doc."""\n# Copyright (C) 2001-2006 Python Software Foundation\n# Author: B\n') == \
        "Copyright (C) 2001-2006 Python Software Foundation"
    assert copyright_line("import os\n") is None
