"""Generation through any OpenAI-compatible server (``openqwen eval --api URL --model NAME``).

Evaluation then scales past one machine: the same tasks, prompts and scoring as in-process, with the
completions made by a server (openqwen's own ``openqwen serve``, or vLLM serving a large model on a
cluster). The harness builds every prompt as token ids, as in-process, and sends them to
``/v1/completions`` (OpenAI's token-id prompt form, which both servers take), so the server sees
exactly the tokens the in-process engine would: the chat template is applied here, not by the server.
Chat prompts stop at the chat stop tokens: they are named as stop strings with
``skip_special_tokens: false`` (the text then carries them, so the stop string can match) and as
``stop_token_ids`` (vLLM's field; servers that do not know it ignore it); other special tokens are
then dropped from the text, as in-process decoding drops them. Requests run concurrently
(``--batch-size`` at a time) so the server can batch them.

Generation tasks only (code, math): multiple choice and perplexity need the log-probabilities of given
tokens, which the completions API does not return for arbitrary continuations.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Sequence

API_TASKS = ("humaneval", "mbpp", "gsm8k", "math401", "synthetic-math")


@dataclass
class ApiCompletion:
    """What the scorers read of a completion."""

    text: str
    finish_reason: str
    completion_tokens: int
    prompt_tokens: int


def api_model(context: int = 1 << 20) -> Any:
    """A stand-in for the model where the harness only reads its context (the server trims nothing;
    it refuses prompts longer than its own context with a clear error)."""
    return SimpleNamespace(config=SimpleNamespace(max_position_embeddings=context))


def _post(url: str, body: dict[str, Any], api_key: str | None, timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {api_key}"} if api_key else {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - the user's own server URL
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        raise ValueError(f"--api {url}: the server answered {e.code}: {detail}") from None
    except urllib.error.URLError as e:
        raise ValueError(f"--api {url}: cannot reach the server ({e.reason}); is it running?") from None


def api_generate(base_url: str, model_name: str, tokenizer: Any, prompts: Sequence[Sequence[int]], *, chat: bool,
                 stop: Sequence[str], max_new_tokens: int, temperature: float, top_p: float, seed: int,
                 concurrency: int = 8, api_key: str | None = None, timeout: float = 600.0) -> list[ApiCompletion]:
    """Completions of token-id ``prompts`` from the server at ``base_url`` (``.../v1`` or the root)."""
    root = base_url.rstrip("/")
    url = (root if root.endswith("/v1") else root + "/v1") + "/completions"
    stop_ids = list(tokenizer.stop_ids) if chat else [tokenizer.eos_id]
    names = [tokenizer.decode([t]) for t in stop_ids]
    stops = list(dict.fromkeys(list(stop) + (names if chat else [])))
    specials = sorted(tokenizer.special_tokens, key=len, reverse=True)

    def one(i: int) -> ApiCompletion:
        body: dict[str, Any] = {"model": model_name, "prompt": list(prompts[i]), "max_tokens": max_new_tokens,
                                "temperature": temperature, "repetition_penalty": 1.0, "stop_token_ids": stop_ids,
                                "skip_special_tokens": not chat}
        if stops:
            body["stop"] = stops[:16]
        if temperature > 0:
            body.update(top_p=top_p, seed=seed + i)
        r = _post(url, body, api_key, timeout)
        choice = r["choices"][0]
        text = choice.get("text") or ""
        if chat:  # cut at a stop token's text, then drop other special tokens, as in-process decoding does
            for s in names:
                text = text.split(s)[0]
            for s in specials:
                text = text.replace(s, "")
        usage = r.get("usage") or {}
        return ApiCompletion(text, choice.get("finish_reason") or "stop", int(usage.get("completion_tokens", 0)),
                             int(usage.get("prompt_tokens", len(prompts[i]))))

    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return list(pool.map(one, range(len(prompts))))
