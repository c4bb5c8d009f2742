"""Chat prompts of the evaluation equal the model's own template: the default system prompt is read
from the real GGUF's template, and the HumanEval prompt ids equal EvalPlus' construction through
transformers' apply_chat_template on that template (an independent renderer and tokenizer)."""

from __future__ import annotations

import json

import pytest

from openqwen.eval import prompts
from openqwen.eval.tasks import code
from openqwen.tokenizer.chat import DEFAULT_SYSTEM, chat_prompt_ids

QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


@pytest.fixture(scope="module")
def gguf_template():
    from openqwen.artifacts import artifact_path

    path = artifact_path("qwen25-coder-0.5b-instruct-gguf")
    if path is None:
        pytest.skip("artifact 'qwen25-coder-0.5b-instruct-gguf' not fetched")
    return path, prompts.chat_template_text(path)


def test_system_prompt_is_read_from_the_models_template(gguf_template, tmp_path):
    path, template = gguf_template
    assert prompts.model_system_prompt(path) == QWEN25_SYSTEM
    # a folder's tokenizer_config.json works the same; a template without a default system turn, or no
    # template at all, falls back to the first generation's default
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    assert prompts.model_system_prompt(tmp_path) == QWEN25_SYSTEM
    bare = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": bare}))
    assert prompts.system_prompt_of_template(bare) is None
    assert prompts.model_system_prompt(tmp_path) == DEFAULT_SYSTEM
    assert prompts.model_system_prompt(tmp_path / "missing") == DEFAULT_SYSTEM


@pytest.mark.slow  # importing transformers and loading tokenizer.json: ~10 s on a quiet 2-core machine
def test_humaneval_chat_prompt_equals_evalplus_through_transformers(gguf_template, artifact):
    transformers = pytest.importorskip("transformers")
    from openqwen.tokenizer import QwenTokenizer

    path, template = gguf_template
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(artifact("qwen2-tokenizer-json")))
    hf.chat_template = template
    # the official vocabulary is Qwen2.5's base vocabulary byte for byte, and <|im_start|>/<|im_end|>
    # keep their ids (151644/151645): the tiktoken file loads in a fraction of the GGUF's time
    ours = QwenTokenizer.from_pretrained(artifact("qwen-tiktoken"))
    problems = code.load_humaneval(artifact("humaneval"))
    split = "-[[]]-split-[[]]-"
    for p in (problems[0], problems[163]):
        # EvalPlus: render user + assistant turns with the template, keep the text before the marker
        user = ("Please provide a self-contained Python script that solves the following problem in a markdown "
                f"code block:\n```\n{p.prompt.strip()}\n```\n")
        reply = ("Below is a Python script with a self-contained function that solves the problem and passes "
                 f"corresponding tests:\n```python\n{split}\n```\n")
        text = hf.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": reply}],
                                      tokenize=False).split(split)[0]
        want = hf(text, add_special_tokens=False)["input_ids"]
        got = chat_prompt_ids(ours, prompts.with_system([{"role": "user", "content": p.instruction}],
                                                        prompts.model_system_prompt(path)))
        assert got + ours.encode(code.CHAT_RESPONSE_PREFIX) == want
