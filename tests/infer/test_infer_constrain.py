"""Constrained decoding (openqwen/infer/constrain.py) and the engine's per-request logits hook:
a random nano model, forced into a tool call, always writes arguments that parse as JSON and
validate against the tool's schema (checked with jsonschema, an independent validator)."""

from __future__ import annotations

import json

import pytest
import torch

from openqwen import Qwen, QwenConfig, QwenTokenizer
from openqwen.infer.constrain import Choice, SchemaConstraint, tool_call_constraint, vocabulary_index
from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams
from openqwen.serve.tools import parse_tool_calls
from openqwen.tokenizer.react import parse_react

jsonschema = pytest.importorskip("jsonschema")

FUNCTIONS = [
    {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"}, "hourly": {"type": "boolean"}}, "required": ["city", "unit"]}},
    {"name": "stats", "parameters": {"type": "dict", "properties": {  # BFCL's "dict"
        "xs": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        "opts": {"type": "object", "properties": {"mode": {"type": ["string", "null"], "maxLength": 4},
                                                  "level": {"enum": [1, 2, 3, None]},
                                                  "w": {"type": "number"}}, "required": ["w"]}},
        "required": ["xs", "opts"]}},
    {"name": "ping", "parameters": {"type": "object", "properties": {}}},
]


def _validator_schema(schema: dict) -> dict:
    """The schema as jsonschema reads it (BFCL's 'dict' is JSON Schema's 'object')."""
    return json.loads(json.dumps(schema).replace('"dict"', '"object"'))


@pytest.fixture(scope="module")
def tok() -> QwenTokenizer:
    """Bytes as tokens plus two multi-character tokens (so literals are written by one or several
    tokens) and Qwen2.5's tool-call markers as special tokens."""
    ranks = {bytes([b]): b for b in range(256)}
    ranks[b'": '] = 256
    ranks[b"get_"] = 257
    return QwenTokenizer(ranks, {"<|endoftext|>": 258, "<|im_start|>": 259, "<|im_end|>": 260,
                                 "<tool_call>": 261, "</tool_call>": 262})


@pytest.fixture(scope="module")
def engine(tok):
    torch.manual_seed(0)
    config = QwenConfig(vocab_size=263, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512, seq_length=512)
    model = Qwen(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 2.0)  # peaked, varied next-token distributions
    eng = Engine(model, tok, max_batch_size=8, max_seq_len=512, background=False)
    yield eng
    eng.close()


@pytest.mark.parametrize("style", ["hermes", "react"])
@pytest.mark.parametrize("forced", ["get_weather", "stats", None])  # a named function, or "required"
def test_forced_call_always_parses_and_validates(engine, tok, style, forced):
    functions = [f for f in FUNCTIONS if forced in (None, f["name"])]
    factory = tool_call_constraint(tok, functions, [tok.im_end_id], style=style)
    prompts = [tok.encode(f"prompt {i}") for i in range(6)]
    params = [SamplingParams(max_new_tokens=300, temperature=1.0, seed=i, constraint=factory,
                             stop_token_ids=[tok.im_end_id], skip_special_tokens=False) for i in range(6)]
    for out in engine.generate(prompts, params):
        assert out.finish_reason == "stop" and out.token_ids[-1] == tok.im_end_id
        if style == "hermes":
            assert out.token_ids[0] == 261 and out.token_ids[-2] == 262  # the special markers, as ids
            content, calls = parse_tool_calls(out.text)
            assert content == "" and len(calls) == 1
            name, arguments = calls[0].name, calls[0].arguments
        else:
            step = parse_react(out.text)
            name, arguments = step.action, step.action_input
        assert forced in (None, name)
        schema = next(f["parameters"] for f in FUNCTIONS if f["name"] == name)
        jsonschema.validate(json.loads(arguments), _validator_schema(schema))


def test_named_function_and_greedy(engine, tok):
    factory = tool_call_constraint(tok, FUNCTIONS[:1], [tok.im_end_id])
    outs = engine.generate([tok.encode(f"q{i}") for i in range(4)],
                           SamplingParams(max_new_tokens=200, temperature=0, constraint=factory,
                                          skip_special_tokens=False))
    for out in outs:
        (call,) = parse_tool_calls(out.text)[1]
        assert call.name == "get_weather"
        jsonschema.validate(json.loads(call.arguments), FUNCTIONS[0]["parameters"])


def test_choice_mask_is_every_token_that_prefixes_the_rest(tok):
    """The mask of a literal choice against a brute-force scan of the vocabulary."""
    index = vocabulary_index(tok)

    def walk():
        yield Choice(['"get_weather": ', '"get_other": ', "}"], so_far='"')

    constraint = SchemaConstraint(index, walk(), [tok.im_end_id])
    allowed = set(constraint.allowed())
    rests = ['get_weather": ', 'get_other": ']
    brute = {i for i in range(256 + 2) if (t := tok.decode([i])) and any(r.startswith(t) for r in rests)}
    assert allowed == brute == {ord("g"), 257}


def test_engine_hook_sees_generated_ids_and_masks(engine, tok):
    """A plain logits hook: ban the token the unconstrained greedy run picks second; the hook is
    shown the ids generated so far, fresh per request."""
    prompt = tok.encode("hook test")
    free = engine.generate([prompt], SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))[0].token_ids
    seen: list[list[int]] = []

    def factory():
        def process(generated, logits):
            seen.append(list(generated))
            if len(generated) == 1:
                logits = logits.clone()
                logits[free[1]] = float("-inf")
            return logits
        return process

    out = engine.generate([prompt], SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True,
                                                   constraint=factory))[0].token_ids
    assert out[0] == free[0] and out[1] != free[1]
    assert seen == [out[:k] for k in range(4)]
    with pytest.raises(ValueError, match="constraint must be a factory"):
        SamplingParams(constraint=42)
