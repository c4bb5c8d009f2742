"""SIGTERM drains a real `openqwen serve` process: the running stream finishes, new requests get 503,
then the process exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from serve_helpers import tiny_model

from openqwen.checkpoint import save_model


@pytest.mark.slow
def test_sigterm_drains_then_exits_0(tokenizer, tmp_path):
    folder = tmp_path / "tiny"
    save_model(tiny_model(), folder)
    tokenizer.save_pretrained(folder, hf_tokenizer_json=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "openqwen.cli", "serve", "--model", str(folder), "--port", "0", "--threads", "1",
         "--max-model-len", "384", "--drain-timeout", "60", "--log-level", "warning"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        port = None
        for line in proc.stderr:
            m = re.search(r"on http://127\.0\.0\.1:(\d+)/", line)
            if m:
                port = int(m.group(1))
                break
        assert port
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        url = f"http://127.0.0.1:{port}"
        body = {"model": "tiny", "prompt": "drain me", "max_tokens": 120, "ignore_eos": True, "stream": True,
                "temperature": 0}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=120) as r:
            lines = r.iter_lines()
            first = next(lines)
            assert first.startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            late = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 1},
                              timeout=30)
            assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
            assert httpx.get(url + "/health", timeout=30).json()["status"] == "draining"
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        finish = [json.loads(x[6:])["choices"][0]["finish_reason"] for x in [first] + rest[:-1]]
        assert finish[-1] == "length" and finish.count(None) == len(finish) - 1  # the whole stream, to its end
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
