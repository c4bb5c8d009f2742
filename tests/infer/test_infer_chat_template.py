"""``Engine.chat`` / ``openqwen generate --chat`` / ``openqwen chat`` render with the model's own chat
template (tools included), checked id for id against transformers' ``apply_chat_template`` with the
real Qwen2.5 template; ChatML stays the rendering of models without one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from infer_helpers import tiny_model

from openqwen.checkpoint import save_model
from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams
from openqwen.tokenizer import QwenTokenizer, chat_prompt_ids
from openqwen.tokenizer.template import ChatTemplate, chat_template_from_flag

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CHAT = [{"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 4}'}]
GREEDY = SamplingParams(max_new_tokens=5, greedy=True)


@pytest.fixture(scope="module")
def parts(artifact):
    """(Qwen2.5's template from the GGUF, our tokenizer of the Qwen2 vocabulary, transformers' twin)."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    template = ChatTemplate.from_checkpoint(artifact("qwen25-coder-0.5b-instruct-gguf"))
    path = artifact("qwen2-tokenizer-json")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(path)))
    return template, QwenTokenizer.from_pretrained(path), hf


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5, vocab=151936, tie_word_embeddings=True)


def _hf_ids(hf, template, messages, tools) -> list[int]:
    out = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True,
                                 chat_template=template.source)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_engine_chat_renders_the_models_template_with_tools_equal_to_transformers(parts, model):
    template, tok, hf = parts
    hf_messages = [dict(m) for m in CHAT]  # transformers' template reads arguments as an object
    hf_messages[1] = {**CHAT[1], "tool_calls": [{**CHAT[1]["tool_calls"][0], "function": {
        "name": "get_weather", "arguments": {"city": "Oslo"}}}]}
    want = _hf_ids(hf, template, hf_messages, TOOLS)
    engine = Engine(model, tok, max_batch_size=2, max_seq_len=1024, chat_template=template)
    try:
        got = engine.chat([CHAT], GREEDY, tools=TOOLS)[0]
        direct = engine.submit(want, GREEDY, extra_stop_ids=tok.stop_ids).result()
        plain = engine.chat([CHAT[:1]], GREEDY)[0]  # no tools: the template's own default system prompt
    finally:
        engine.close()
    assert got.prompt_tokens == len(want) and got.token_ids == direct.token_ids
    assert plain.prompt_tokens == len(_hf_ids(hf, template, CHAT[:1], None))
    assert "You are Qwen" in tok.decode(_hf_ids(hf, template, CHAT[:1], None))


def test_engine_without_a_template_keeps_chatml_and_react(parts, model):
    _, tok, _ = parts
    engine = Engine(model, tok, max_batch_size=2, max_seq_len=1024)
    try:
        assert engine.chat_template is None
        plain = engine.chat([CHAT[:1]], GREEDY)[0]
        react = engine.chat([CHAT[:1]], GREEDY, tools=TOOLS)[0]
    finally:
        engine.close()
    assert plain.prompt_tokens == len(tok.apply_chat_template(CHAT[:1]))  # ChatML, default system
    react_ids = chat_prompt_ids(tok, CHAT[:1], tools=TOOLS)
    assert react.prompt_tokens == len(react_ids) and "Action:" in tok.decode(react_ids)


@pytest.fixture(scope="module")
def model_dir(parts, model, tmp_path_factory):
    """A model folder whose tokenizer_config.json carries Qwen2.5's template (as a HF checkpoint does)."""
    template, tok, _ = parts
    out = tmp_path_factory.mktemp("templated-model")
    save_model(model, out)
    tok.save_pretrained(out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template.source
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


def test_from_pretrained_reads_the_checkpoints_template_and_the_flag(model_dir, parts, tmp_path):
    template = parts[0]
    engine = Engine.from_pretrained(model_dir, max_batch_size=1, max_seq_len=512)
    assert engine.chat_template is not None and engine.chat_template.source == template.source
    engine.close()
    assert chat_template_from_flag("chatml", model_dir) is None
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    assert chat_template_from_flag(str(jinja), model_dir).render([{"role": "user", "content": "hi"}]) == "[user] hi\n"
    with pytest.raises(ValueError, match="not auto, chatml or an existing .jinja file"):
        chat_template_from_flag("nope.jinja", model_dir)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "openqwen.cli", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_generate_chat_uses_the_models_template(model_dir, parts):
    template, _, _ = parts
    tok = QwenTokenizer.from_pretrained(model_dir)
    want = template.encode(tok, [{"role": "user", "content": "hi"}])
    r = _cli("generate", "--model", str(model_dir), "--chat", "--prompt", "hi", "--greedy", "--max-new-tokens", "2",
             "--show-stats")
    assert r.returncode == 0, r.stderr
    assert int(re.search(r"\[(\d+) prompt", r.stderr).group(1)) == len(want)


def test_a_bad_chat_template_flag_is_one_line_before_the_model_loads(model_dir, capsys):
    from openqwen.cli import main

    assert main(["generate", "--model", str(model_dir), "--chat", "--prompt", "hi", "--chat-template", "missing.jinja"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--chat-template 'missing.jinja' is not auto, chatml or an existing .jinja file" in err
