"""OpenAI requests -> engine requests, and engine output -> OpenAI's logprobs and usage.

:class:`RequestAdapter` knows the tokenizer and the served context and nothing of HTTP: it turns a
validated :mod:`~openqwen.serve.protocol` request into :class:`EngineJob` s (prompt ids plus one
:class:`~openqwen.infer.sampling.SamplingParams` per choice) or raises
:class:`~openqwen.serve.errors.APIError` naming the parameter to fix.

Chat prompts go through :func:`openqwen.tokenizer.chat.chat_prompt_ids`, the one chat-prompt path of
the package: a conversation longer than the context loses its oldest turns (system prompt and last
message kept) until it fits with room for ``max_tokens`` (one token when the request sets none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..infer.constrain import json_constraint, tool_call_constraint
from ..infer.sampling import SamplingParams
from ..tokenizer.chat import ChatWindowError, chat_prompt_ids
from ..tokenizer.react import REACT_STOP
from . import protocol as P
from .errors import APIError
from .tool_requests import ToolPlan, plan_tools, request_messages


@dataclass
class EngineJob:
    """One prompt and the sampling parameters of each of its ``n`` choices (and, for a chat with
    tools, what the request asks of function calling)."""

    prompt_ids: list[int]
    params: list[SamplingParams]
    tools: ToolPlan | None = None
    n: int = 1  # choices (params is empty when max_tokens is 0: an echo of the prompt alone)
    prompt_text: str | None = None  # the prompt as the client wrote it (echo)


def usage(prompt_tokens: int, completion_tokens: int) -> P.Usage:
    return P.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


def _context_exceeded(context: int, what: str, prompt_len: int, max_tokens: int | None) -> APIError:
    if max_tokens is None or prompt_len >= context:
        return APIError(
            400, f"This model's maximum context length is {context} tokens. However, your {what} resulted in "
            f"{prompt_len} tokens. Please reduce the length of the {what}.",
            param="messages" if what == "messages" else "prompt", code="context_length_exceeded")
    return APIError(
        400, f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt_len + max_tokens} tokens ({prompt_len} in the {what}, {max_tokens} in the completion). "
        f"Please reduce the length of the {what} or completion.",
        param="max_tokens", code="context_length_exceeded")


class RequestAdapter:
    """Translates between OpenAI's API and the engine for one tokenizer and context length.

    context: positions per request (prompt + completion).
    default_max_tokens: completion budget when a request sets none, capped by what the prompt leaves.
    max_prompts / max_n: most prompts in one /v1/completions request, most choices (``n``) per prompt.
    """

    def __init__(self, tokenizer: Any, context: int, default_max_tokens: int = 512, template: Any = None,
                 max_prompts: int = 64, max_n: int = 16) -> None:
        self.tokenizer = tokenizer
        self.context = int(context)
        self.default_max_tokens = default_max_tokens
        self.max_prompts, self.max_n = max_prompts, max_n
        self.template = template  # the model's own ChatTemplate; None: ChatML (and ReAct for tools)
        self._stop_ids = set(tokenizer.stop_ids) | {tokenizer.eos_id}

    # ------------------------------------------------------------------------------ requests
    def chat_job(self, req: P.ChatCompletionRequest) -> EngineJob:
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        plan = plan_tools(req, self.template is not None and self.template.knows_tools)
        ids = self.chat_prompt(req, max_tokens, plan)
        params = self.sampling_params(req, True, len(ids), max_tokens)
        if plan is not None:
            if plan.forced and self.response_constraint(req, []) is not None:
                raise APIError(400, "response_format json_object/json_schema cannot be combined with a forced "
                               "tool call (tool_choice required or a named function); drop one.",
                               param="response_format")
            params = [self.tool_params(p, plan) for p in params]
        return EngineJob(ids, params, plan, req.n)

    def tool_params(self, params: SamplingParams, plan: ToolPlan) -> SamplingParams:
        """A choice's sampling with function calling: Qwen2.5's ``<tool_call>`` markers kept in the
        text (they are special tokens) for the parser, ReAct's ``Observation:`` stop, and for
        ``required`` / a named function the constraint that forces a valid call."""
        changes: dict[str, Any] = {}
        if plan.parses and plan.style == "hermes":
            changes["skip_special_tokens"] = False
        if plan.parses and plan.style == "react":
            changes["stop"] = list(params.stop) + [REACT_STOP]
        if plan.forced:
            stop_ids = list(self.tokenizer.stop_ids)
            changes["constraint"] = tool_call_constraint(self.tokenizer, plan.forced, stop_ids, plan.style)
            changes["stop_token_ids"] = sorted(set(params.stop_token_ids) | set(stop_ids))
        return params.replace(**changes)

    def completion_jobs(self, req: P.CompletionRequest) -> list[EngineJob]:
        prompts = self.completion_prompts(req)
        texts: list[str | None] = [req.prompt] if isinstance(req.prompt, str) else (
            list(req.prompt) if all(isinstance(x, str) for x in req.prompt) else [None] * len(prompts))
        return [EngineJob(ids, self.sampling_params(req, False, len(ids), req.max_tokens), n=req.n,
                          prompt_text=text if text is not None else self.tokenizer.decode(ids))
                for ids, text in zip(prompts, texts)]

    def chat_prompt(self, req: P.ChatCompletionRequest, max_tokens: int | None, plan: ToolPlan | None = None
                    ) -> list[int]:
        """Prompt ids (the model's template, else ChatML; tools rendered as the plan says), the oldest
        turns dropped until ``max_tokens`` (or one token) fits after them.

        Message text is encoded as plain text: '<|im_end|>' typed by a user cannot forge a turn boundary.
        """
        messages = request_messages(req)
        tools = plan.tools if plan is not None and (plan.style == "hermes" or plan.parses) else None
        window = self.context - (max_tokens if max_tokens is not None else 1)

        def ids(limit: int) -> list[int]:
            return chat_prompt_ids(self.tokenizer, messages, limit, tools=tools, template=self.template)

        try:
            if window >= 1:
                return ids(window)
            # max_tokens alone fills the context: say how long the (trimmed) messages are
            shortest = len(ids(self.context - 1))
        except ChatWindowError as e:  # even the system prompt and the last message alone leave no room
            shortest = e.needed
        except ValueError as e:  # TokenizerError: a message the chat template cannot render
            raise APIError(400, f"messages: {e}.", param="messages") from None
        raise _context_exceeded(self.context, "messages", shortest, max_tokens)

    def completion_prompts(self, req: P.CompletionRequest) -> list[list[int]]:
        """The token ids of each prompt (OpenAI's four forms: text, texts, ids, lists of ids)."""
        if req.suffix:
            raise APIError(400, "suffix (fill-in-the-middle) is not supported by this server.", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of other than n is not supported by this server.", param="best_of")
        p = req.prompt
        if isinstance(p, str):
            prompts = [self.tokenizer.encode(p)]
        elif not p:
            raise APIError(400, "prompt must not be empty.", param="prompt")
        elif all(isinstance(x, str) for x in p):
            prompts = [self.tokenizer.encode(x) for x in p]
        elif all(isinstance(x, int) for x in p):
            prompts = [list(p)]
        else:
            prompts = [list(x) for x in p]
        if len(prompts) > self.max_prompts:
            raise APIError(400, f"this request has {len(prompts)} prompts; this server takes at most "
                           f"{self.max_prompts} per request (--max-prompts): split it.", param="prompt")
        vocab = self.tokenizer.vocab_size
        for i, ids in enumerate(prompts):
            if not ids:
                raise APIError(400, f"prompt {i} is empty; give at least one token.", param="prompt")
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise APIError(400, f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab}).",
                               param="prompt")
        return prompts

    def sampling_params(self, req: P._Sampling, chat: bool, prompt_len: int,
                        max_tokens: int | None) -> list[SamplingParams]:
        """One SamplingParams per choice; choice ``i`` is seeded ``seed + i`` so that ``n > 1`` gives
        ``n`` different samples, reproducibly."""
        want_logprobs = bool(req.logprobs) if chat else req.logprobs is not None
        top = (req.top_logprobs or 0) if chat else (req.logprobs or 0)
        if chat and top and not want_logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
        if req.n > self.max_n:
            raise APIError(400, f"n is {req.n}; this server generates at most {self.max_n} choices per prompt "
                           "(--max-n).", param="n")
        what = "messages" if chat else "prompt"
        if max_tokens == 0:
            if chat or not req.echo:
                raise APIError(400, "max_tokens 0 is only meaningful with echo (the prompt's log-probabilities "
                               "alone); give max_tokens >= 1.", param="max_tokens")
            if prompt_len > self.context:
                raise _context_exceeded(self.context, what, prompt_len, None)
            return []
        if prompt_len >= self.context:
            raise _context_exceeded(self.context, what, prompt_len, None)
        if max_tokens is not None and prompt_len + max_tokens > self.context:
            raise _context_exceeded(self.context, what, prompt_len, max_tokens)
        budget = max_tokens if max_tokens is not None else min(self.default_max_tokens, self.context - prompt_len)
        fields: dict[str, Any] = {"max_new_tokens": budget, "stop": list(req.stop), "ignore_eos": req.ignore_eos,
                                  "logprobs": want_logprobs, "top_logprobs": top,
                                  "skip_special_tokens": req.skip_special_tokens}
        if req.temperature is not None:
            fields["temperature"] = req.temperature
        if req.top_p is not None:
            fields["top_p"] = req.top_p
        if req.top_k is not None:
            fields["top_k"] = max(req.top_k, 0)
        if req.repetition_penalty is not None:
            fields["repetition_penalty"] = req.repetition_penalty
        stop_ids = list(self.tokenizer.stop_ids) if chat else [self.tokenizer.eos_id]
        fields["stop_token_ids"] = [] if req.ignore_eos else stop_ids
        constraint = self.response_constraint(req, stop_ids)
        if constraint is not None:
            fields["constraint"] = constraint
        try:  # SamplingParams checks every field again: a value it refuses is the client's to fix
            base = SamplingParams.chat_defaults(**fields) if chat else SamplingParams(**fields)
            return [base.replace(seed=None if req.seed is None else req.seed + i) for i in range(req.n)]
        except ValueError as e:
            raise APIError(400, f"{e}.") from None

    def response_constraint(self, req: P._Sampling, stop_ids: list[int]) -> Any:
        """The constraint factory ``response_format`` asks for (None for text): the reply is one JSON
        object, following the given schema for ``json_schema``."""
        fmt = req.response_format
        if fmt is None:
            return None
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return None
        if kind == "json_object":
            schema = None
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if not isinstance(schema, dict):
                raise APIError(400, "response_format json_schema needs json_schema.schema, a JSON schema object.",
                               param="response_format.json_schema.schema")
        else:
            raise APIError(400, "response_format.type must be 'text', 'json_object' or 'json_schema'.",
                           param="response_format.type")
        try:
            return json_constraint(self.tokenizer, schema, stop_ids or [self.tokenizer.eos_id])
        except ValueError as e:
            raise APIError(400, f"response_format: {e}.", param="response_format") from None

    # ------------------------------------------------------------------------------ responses
    def token_str(self, token: int) -> str:
        return self.tokenizer.id_to_bytes(token).decode("utf-8", errors="replace")

    def _top_dict(self, pairs: list[tuple[int, float]]) -> dict[str, float]:
        """A completion's top alternatives as OpenAI's {token: logprob} (two ids with the same text keep
        the likelier, which comes first)."""
        out: dict[str, float] = {}
        for t, lp in pairs:
            out.setdefault(self.token_str(t), lp)
        return out

    def _without_stop(self, ids: list[int], finish_reason: str | None, keep_stop: bool) -> int:
        """How many generated ids the logprobs cover: all but a final stop token (which the text does not
        contain either), unless ``keep_stop`` (echo: lm-eval reads one entry per generated token)."""
        if not keep_stop and ids and finish_reason == "stop" and ids[-1] in self._stop_ids:
            return len(ids) - 1
        return len(ids)

    def chat_logprobs(self, ids: list[int], lps: list[float] | None, finish_reason: str | None,
                      top: list[list[tuple[int, float]]] | None = None) -> P.ChatLogprobs | None:
        if lps is None:
            return None
        k = self._without_stop(ids, finish_reason, False)
        content = []
        for j, (t, lp) in enumerate(zip(ids[:k], lps[:k])):
            raw = self.tokenizer.id_to_bytes(t)
            alts = [] if top is None else [
                P.TopLogprob(token=self.token_str(a), logprob=v, bytes=list(self.tokenizer.id_to_bytes(a)))
                for a, v in top[j]]
            content.append(P.TokenLogprob(token=raw.decode("utf-8", errors="replace"), logprob=lp, bytes=list(raw),
                                          top_logprobs=alts))
        return P.ChatLogprobs(content=content)

    def completion_logprobs(self, ids: list[int], lps: list[float] | None, finish_reason: str | None,
                            offset: int = 0, top: list[list[tuple[int, float]]] | None = None,
                            keep_stop: bool = False) -> P.CompletionLogprobs | None:
        """``offset``: characters of this choice's text before these tokens (streamed chunks, echo)."""
        if lps is None:
            return None
        k = self._without_stop(ids, finish_reason, keep_stop)
        tokens = [self.token_str(t) for t in ids[:k]]
        offsets, at = [], offset
        for t in tokens:  # character offsets into the returned text (approximate inside split characters)
            offsets.append(at)
            at += len(t)
        return P.CompletionLogprobs(tokens=tokens, token_logprobs=list(lps[:k]), text_offset=offsets,
                                    top_logprobs=None if top is None else [self._top_dict(x) for x in top[:k]])

    def echo_logprobs(self, ids: list[int], scored: Any, top_n: int) -> P.CompletionLogprobs:
        """An echoed prompt's tokens: the first has no log-probability (nothing precedes it), the others
        come from the engine's scoring (``scored``: the ScoreResult of ``ids[1:]`` after ``ids[:1]``)."""
        lps: list[float | None] = [None] + (list(scored.token_logprobs) if scored is not None else [])
        out = self.completion_logprobs(ids, lps, None)
        if top_n:
            rest = scored.top_logprobs if scored is not None else []
            out.top_logprobs = [None] + [self._top_dict(x) for x in rest]
        return out


def join_logprobs(head: P.CompletionLogprobs | None, tail: P.CompletionLogprobs | None) -> P.CompletionLogprobs | None:
    """An echoed prompt's logprobs followed by its completion's (offsets already continue)."""
    if head is None or tail is None:
        return head or tail
    tops = None
    if head.top_logprobs is not None or tail.top_logprobs is not None:
        tops = (head.top_logprobs or [None] * len(head.tokens)) + (tail.top_logprobs or [None] * len(tail.tokens))
    return P.CompletionLogprobs(tokens=head.tokens + tail.tokens, token_logprobs=head.token_logprobs + tail.token_logprobs,
                                top_logprobs=tops, text_offset=head.text_offset + tail.text_offset)
