"""`openqwen generate` and `openqwen chat` as a user runs them: real subprocesses, a model folder on disk."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from infer_helpers import tiny_model

from openqwen.checkpoint import save_model
from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from openqwen.artifacts import artifact_path
    from openqwen.tokenizer import QwenTokenizer

    path = artifact_path("qwen-tiktoken")
    if path is None:
        pytest.skip("artifact 'qwen-tiktoken' not fetched")
    out = tmp_path_factory.mktemp("tiny-chat-model")
    save_model(tiny_model(seed=11, vocab=151936, tie_word_embeddings=True), out)
    QwenTokenizer.from_pretrained(path).save_pretrained(out)
    return out


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "openqwen.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=300, env=env)


def reference_chat(model_dir, messages, **kw) -> str:
    eng = Engine.from_pretrained(model_dir, max_batch_size=1, max_seq_len=1024)
    try:
        return eng.chat([messages], SamplingParams.chat_defaults(**kw))[0].text
    finally:
        eng.close()


def test_generate_chat_prints_the_engines_reply(model_dir):
    res = run_cli("generate", "--model", str(model_dir), "--chat", "--prompt", "Hello there", "--greedy",
                  "--max-new-tokens", "12", "--threads", "1", "--show-stats")
    assert res.returncode == 0, res.stderr
    expected = reference_chat(model_dir, [{"role": "user", "content": "Hello there"}], greedy=True, max_new_tokens=12)
    assert res.stdout == expected + "\n"
    assert "generated tokens" in res.stderr
    streamed = run_cli("generate", "--model", str(model_dir), "--chat", "--prompt", "Hello there", "--greedy",
                       "--max-new-tokens", "12", "--stream")
    assert streamed.stdout == expected + "\n"


def test_generate_rejects_bad_settings(model_dir):
    res = run_cli("generate", "--model", str(model_dir), "--prompt", "x", "--top-p", "0")
    assert res.returncode == 2 and "top_p" in res.stderr


def test_a_bad_prefill_products_setting_is_one_line_and_exit_2(model_dir, monkeypatch):
    monkeypatch.setenv("OPENQWEN_PREFILL_PRODUCTS", "fp16")
    res = run_cli("generate", "--model", str(model_dir), "--prompt", "x", "--dtype", "int8")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "OPENQWEN_PREFILL_PRODUCTS must be one of auto, fp32, bf16, got 'fp16'" in res.stderr


def test_chat_session_with_commands(model_dir):
    script = "\n".join([
        "/help",
        "/set temperature=0",
        "/set max_new_tokens=10",
        "/set bogus=1",
        "/set top_k=notanumber",
        "__import__('os').system('echo PWNED')",  # user text is text: never evaluated
        "/system You are terse.",
        "Hi!",
        "/reset",
        "/quit",
        "never read",
    ]) + "\n"
    res = run_cli("chat", "--model", str(model_dir), "--threads", "1", stdin=script)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "/reset" in out and "[temperature = 0.0]" in out and "[max_new_tokens = 10]" in out
    assert "usage: /set NAME=VALUE" in out and "[not changed" in out
    assert "PWNED" not in out.replace("__import__('os').system('echo PWNED')", "")
    assert "[system prompt set: You are terse." in out and "[conversation reset]" in out
    # the reply to "Hi!" is exactly the engine's greedy chat answer with that system prompt (history reset)
    expected = reference_chat(model_dir, [{"role": "system", "content": "You are terse."},
                                          {"role": "user", "content": "Hi!"}], temperature=0, max_new_tokens=10)
    assert "\n" + expected + "\n[conversation reset]" in out


def test_help_has_examples():
    for verb in ("generate", "chat"):
        res = run_cli(verb, "--help")
        assert res.returncode == 0 and "examples:" in res.stdout and "--dtype" in res.stdout
