"""Request and response models of the OpenAI HTTP API, in OpenAI's exact shapes.

Requests are pydantic models that *ignore* unknown fields (clients send many we do not use) but
check the ones we use: a wrong type or an out-of-range value becomes an OpenAI-style 400 whose
``param`` names the field (see :func:`openqwen.serve.app.create_app`). Responses are pydantic models
too, so every field OpenAI's clients read is always present (``null`` where OpenAI sends ``null``).

Beyond OpenAI's parameters we accept ``top_k`` and ``repetition_penalty`` (the release's sampling
knobs), as vLLM and most local servers do.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


def new_id(prefix: str) -> str:
    """A fresh response id such as ``chatcmpl-3f2a...`` (OpenAI's prefixes)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


# ------------------------------------------------------------------------------------ requests
class _Request(BaseModel):
    # Unknown fields are ignored: clients (and SDK versions) send many fields we have no use for.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Request):
    """One part of a multi-part message ``content``; only text parts are accepted."""

    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: str
    content: Union[str, list[TextPart], None] = None
    name: str | None = None
    tool_calls: list[Any] | None = None  # assistant: the calls it made (checked by the adapter)
    tool_call_id: str | None = None  # tool: the call this message answers
    id: str | None = None  # tool: qwen-agent's name for tool_call_id (its raw-API mode sends this)
    function_call: Any | None = None  # assistant, legacy functions API: the one call it made

    def text(self) -> str:
        """The message text; list contents are joined, non-text parts are a clear error."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content parts of type {part.type!r} are not supported; send text parts")
            pieces.append(part.text)
        return "".join(pieces)


class StreamOptions(_Request):
    include_usage: bool = False


class _Sampling(_Request):
    """Parameters shared by chat and text completions."""

    model: str
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Union[str, list[str], None] = Field(None, validate_default=True)
    max_tokens: int | None = Field(None, ge=0)  # 0 only with echo (the prompt's log-probs alone)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # int64, as OpenAI; choice i draws from seed + i
    # Extensions (the release's sampling knobs); top_k 0 or -1 means "off".
    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    ignore_eos: bool = False  # generate max_tokens regardless of end-of-text (benchmarks; as vLLM)
    skip_special_tokens: bool = True  # special tokens that do not stop generation stay out of the text (as vLLM)
    user: str | None = None
    # {"type": "text" | "json_object" | "json_schema", "json_schema": {"name", "schema", "strict"}}
    response_format: Any | None = None

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, v: Union[str, list[str], None]) -> list[str]:
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else list(v)
        if any(s == "" for s in stops):
            raise ValueError("stop strings must be non-empty")
        if len(stops) > 16:
            raise ValueError(f"at most 16 stop strings, got {len(stops)}")
        return stops


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Function calling (checked by the adapter, which names the field of any error)
    tools: list[Any] | None = None
    tool_choice: Any | None = None  # "none" | "auto" | "required" | {"type": "function", "function": {"name"}}
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None  # the legacy form of tools
    function_call: Any | None = None  # the legacy form of tool_choice: "none" | "auto" | {"name"}


class CompletionRequest(_Sampling):
    # A string, a list of strings, a list of token ids, or a list of token-id lists (OpenAI's four forms).
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


# ----------------------------------------------------------------------------------- responses
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]
    refusal: None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]  # None for an echoed prompt's first token (nothing precedes it)
    top_logprobs: list[dict[str, float] | None] | None = None  # with logprobs > 0: token -> log-probability
    text_offset: list[int]


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None
    function_call: FunctionCall | None = None  # the legacy functions API (instead of tool_calls)


class ChatChoice(BaseModel):
    index: int
    message: ResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[dict] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class Completion(BaseModel):
    """A text completion, or one chunk of a streamed one (the same object type in OpenAI's API)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "openqwen"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ------------------------------------------------------------------- tokens and embeddings
class TokenizeRequest(_Request):
    """vLLM's /tokenize: a text ``prompt``, or chat ``messages`` rendered as the chat endpoint does."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True  # accepted for vLLM's clients; a Qwen tokenizer adds none either way
    special_tokens: bool = True  # special-token text in ``prompt`` becomes its id (as vLLM's HF tokenizers do)


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str]


class DetokenizeRequest(_Request):
    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


class DetokenizeResponse(BaseModel):
    prompt: str


class EmbeddingRequest(_Request):
    model: str
    input: Union[str, list[str], list[int], list[list[int]]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    pooling: Literal["mean", "last"] | None = None  # extension; None: the server's --embedding-pooling
    user: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str]


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
