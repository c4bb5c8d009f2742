"""`openqwen serve` as a user runs it: a subprocess serving a saved model folder on a free port."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import openai
import pytest
from serve_helpers import greedy_reference, tiny_model

from openqwen.checkpoint import save_model
from openqwen.cli import main


def test_serve_cli_end_to_end(tokenizer, tmp_path):
    folder = tmp_path / "tiny-chat"
    model = tiny_model()
    save_model(model, folder)
    tokenizer.save_pretrained(folder, hf_tokenizer_json=False)  # qwen.tiktoken is enough here
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "openqwen.cli", "serve", "--model", str(folder), "--port", "0", "--api-key", "k3y",
         "--max-model-len", "256", "--threads", "1", "--log-level", "warning"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        port = None
        for line in proc.stderr:  # "serving 'tiny-chat' on http://127.0.0.1:PORT/ ..."
            m = re.search(r"serving '([^']+)' on http://127\.0\.0\.1:(\d+)/", line)
            if m:
                assert m.group(1) == "tiny-chat"  # the folder name is the default model id
                port = int(m.group(2))
                break
        assert port, "the server did not report its address"
        # keep draining stderr so the server never blocks on a full pipe
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k3y", max_retries=5, timeout=60)
        assert [m.id for m in client.models.list().data] == ["tiny-chat"]
        stream = client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "hi"}],
                                                max_tokens=5, temperature=0, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"repetition_penalty": 1.0})
        chunks = list(stream)
        assert chunks[-1].usage.completion_tokens == 5
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
        ref = greedy_reference(model, prompt, 5, set(tokenizer.stop_ids))
        assert len(ref) == 5 and text == tokenizer.decode(ref, skip_special_tokens=True)  # the saved model's answer
        with pytest.raises(openai.BadRequestError) as e:  # --max-model-len is enforced
            client.completions.create(model="tiny-chat", prompt="hi", max_tokens=300)
        assert e.value.body["code"] == "context_length_exceeded"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_cli_bad_model_path(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
