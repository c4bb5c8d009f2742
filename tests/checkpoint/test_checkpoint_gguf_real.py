"""Real weights: the official Qwen2.5-Coder-0.5B-Instruct q4_k_m GGUF (fetch-artifacts).

openqwen's loader against transformers' own GGUF loading of the same file, and a greedy chat answer
that must be working Python. Slow (transformers' GGUF path alone takes about a minute here).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from openqwen.checkpoint import load_model

transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.slow, pytest.mark.artifacts]

PROMPTS = [
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The capital of France is",
    "通义千问是一个大语言模型，它可以",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nSort a list in Python."
    "<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def gguf_path(artifact):
    return artifact("qwen25-coder-0.5b-instruct-gguf")


@pytest.fixture(scope="module")
def ours(gguf_path):
    return load_model(gguf_path)


@pytest.fixture(scope="module")
def tokenizer(gguf_path):
    from openqwen.tokenizer import QwenTokenizer

    return QwenTokenizer.from_pretrained(gguf_path)


def test_next_token_logits_match_transformers_gguf_loading(gguf_path, ours, tokenizer):
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    assert ref.config.tie_word_embeddings is False  # this file stores output.weight (Q8_0) apart
    diffs, agree = [], 0
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt, allowed_special="all")])
        with torch.no_grad():
            a = ours(ids)[0, -1]
            b = ref(ids).logits[0, -1]
        diffs.append((a - b).abs().max().item())
        agree += int(a.argmax() == b.argmax())
    print(f"\nnext-token logits vs transformers GGUF loading on {len(PROMPTS)} prompts: "
          f"max abs diff {max(diffs):.2e} (per prompt {', '.join(f'{d:.1e}' for d in diffs)}), "
          f"top-1 agreement {agree}/{len(PROMPTS)}")
    assert agree == len(PROMPTS)
    assert max(diffs) < 1e-3  # same dequantised weights, fp32: only summation order differs


def greedy(model, prompt_ids: list[int], stop_ids: set[int], max_new_tokens: int) -> list[int]:
    """A minimal greedy loop on the KV cache (independent of openqwen.infer)."""
    cache = model.new_cache(1, len(prompt_ids) + max_new_tokens)
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids]), cache=cache)
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits[0, -1].argmax())
            if token in stop_ids:
                break
            out.append(token)
            logits = model(torch.tensor([[token]]), cache=cache)
    return out


def test_greedy_chat_answer_is_a_working_python_function(ours, tokenizer, tmp_path):
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a Python function that returns the factorial of n"}]
    )
    answer = tokenizer.decode(greedy(ours, ids, set(tokenizer.stop_ids), max_new_tokens=128))
    print("\n--- greedy answer ---\n" + answer)
    assert "def " in answer
    blocks = re.findall(r"```(?:python)?\n(.*?)```", answer, flags=re.S)
    code = blocks[0] if blocks else answer
    script = tmp_path / "answer.py"
    script.write_text(code + "\n\nprint(factorial(5))\n")
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "120"
