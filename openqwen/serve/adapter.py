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

from ..infer.constrain import tool_call_constraint
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
    """

    def __init__(self, tokenizer: Any, context: int, default_max_tokens: int = 512, template: Any = None) -> None:
        self.tokenizer = tokenizer
        self.context = int(context)
        self.default_max_tokens = default_max_tokens
        self.template = template  # the model's own ChatTemplate; None: ChatML (and ReAct for tools)
        self._stop_ids = set(tokenizer.stop_ids) | {tokenizer.eos_id}

    # ------------------------------------------------------------------------------ requests
    def chat_job(self, req: P.ChatCompletionRequest) -> EngineJob:
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        plan = plan_tools(req, self.template is not None and self.template.knows_tools)
        ids = self.chat_prompt(req, max_tokens, plan)
        params = self.sampling_params(req, True, len(ids), max_tokens)
        if plan is not None:
            params = [self.tool_params(p, plan) for p in params]
        return EngineJob(ids, params, plan)

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
        return [EngineJob(ids, self.sampling_params(req, False, len(ids), req.max_tokens))
                for ids in self.completion_prompts(req)]

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
        if req.echo:
            raise APIError(400, "echo is not supported by this server.", param="echo")
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
        top = req.top_logprobs if chat else req.logprobs
        if top:
            raise APIError(400, "top alternatives (top_logprobs / logprobs > 0) are not supported; the log-"
                           "probabilities of the chosen tokens are (logprobs true / 0).",
                           param="top_logprobs" if chat else "logprobs")
        what = "messages" if chat else "prompt"
        if prompt_len >= self.context:
            raise _context_exceeded(self.context, what, prompt_len, None)
        if max_tokens is not None and prompt_len + max_tokens > self.context:
            raise _context_exceeded(self.context, what, prompt_len, max_tokens)
        budget = max_tokens if max_tokens is not None else min(self.default_max_tokens, self.context - prompt_len)
        fields: dict[str, Any] = {"max_new_tokens": budget, "stop": list(req.stop), "ignore_eos": req.ignore_eos,
                                  "logprobs": want_logprobs, "skip_special_tokens": req.skip_special_tokens}
        if req.temperature is not None:
            fields["temperature"] = req.temperature
        if req.top_p is not None:
            fields["top_p"] = req.top_p
        if req.top_k is not None:
            fields["top_k"] = max(req.top_k, 0)
        if req.repetition_penalty is not None:
            fields["repetition_penalty"] = req.repetition_penalty
        if chat:
            fields["stop_token_ids"] = [] if req.ignore_eos else list(self.tokenizer.stop_ids)
            base = SamplingParams.chat_defaults(**fields)
        else:
            fields["stop_token_ids"] = [] if req.ignore_eos else [self.tokenizer.eos_id]
            base = SamplingParams(**fields)
        return [base.replace(seed=None if req.seed is None else req.seed + i) for i in range(req.n)]

    # ------------------------------------------------------------------------------ responses
    def _token_pieces(self, ids: list[int], lps: list[float], finish_reason: str | None
                      ) -> tuple[list[float], list[bytes]]:
        """Log-probabilities and bytes of generated ids, without a final stop token (which the text
        does not contain either)."""
        if ids and finish_reason == "stop" and ids[-1] in self._stop_ids:
            ids, lps = ids[:-1], lps[:-1]
        return list(lps), [self.tokenizer.id_to_bytes(t) for t in ids]

    def chat_logprobs(self, ids: list[int], lps: list[float] | None,
                      finish_reason: str | None) -> P.ChatLogprobs | None:
        if lps is None:
            return None
        lps, raw = self._token_pieces(ids, lps, finish_reason)
        return P.ChatLogprobs(content=[P.TokenLogprob(token=b.decode("utf-8", errors="replace"), logprob=lp,
                                                      bytes=list(b)) for b, lp in zip(raw, lps)])

    def completion_logprobs(self, ids: list[int], lps: list[float] | None, finish_reason: str | None,
                            offset: int = 0) -> P.CompletionLogprobs | None:
        """``offset``: characters of this choice's text before these tokens (streamed chunks)."""
        if lps is None:
            return None
        lps, raw = self._token_pieces(ids, lps, finish_reason)
        tokens = [b.decode("utf-8", errors="replace") for b in raw]
        offsets, at = [], offset
        for t in tokens:  # character offsets into the returned text (approximate inside split characters)
            offsets.append(at)
            at += len(t)
        return P.CompletionLogprobs(tokens=tokens, token_logprobs=lps, text_offset=offsets)
