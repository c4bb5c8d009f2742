"""Routes around the model's vocabulary: ``/tokenize``, ``/detokenize``, ``/tokenizer_info`` (vLLM's
shapes, which lm-eval's ``remote`` tokenizer backend reads) and ``/v1/embeddings`` (OpenAI's shape).

``/tokenize`` takes a text ``prompt`` (special-token text such as ``<|endoftext|>`` becomes its id
unless ``special_tokens`` is false, as vLLM's tokenizers do; ``/v1/completions`` never parses special
tokens in a text prompt, so send ids to use them) or chat ``messages`` (the prompt the chat endpoint
would build, template and all). ``/v1/embeddings`` pools the model's final hidden states (see
:mod:`openqwen.infer.embed`): ``mean`` by default (``--embedding-pooling``), ``last`` on request.
"""

from __future__ import annotations

import asyncio
import base64
import struct

from fastapi import APIRouter, Request

from . import protocol as P
from .errors import APIError

router = APIRouter()


@router.post("/tokenize")
async def tokenize(req: P.TokenizeRequest, request: Request) -> dict:
    s = request.app.state.server
    tok = s.adapter.tokenizer
    if (req.prompt is None) == (req.messages is None):
        raise APIError(400, "give either 'prompt' (text) or 'messages' (a chat), not both or neither.", param="prompt")
    if req.prompt is not None:
        ids = tok.encode(req.prompt, allowed_special="all" if req.special_tokens else frozenset())
    elif not req.messages:
        raise APIError(400, "messages must hold at least one message.", param="messages")
    else:
        chat = P.ChatCompletionRequest(model=s.config.model_name, messages=req.messages)
        ids = s.adapter.chat_prompt(chat, None)
    return P.TokenizeResponse(count=len(ids), max_model_len=s.context, tokens=ids,
                              token_strs=[s.adapter.token_str(t) for t in ids]).model_dump()


@router.post("/detokenize")
async def detokenize(req: P.DetokenizeRequest, request: Request) -> dict:
    tok = request.app.state.server.adapter.tokenizer
    bad = [t for t in req.tokens if not 0 <= t < tok.vocab_size]
    if bad:
        raise APIError(400, f"token id {bad[0]} is outside the vocabulary [0, {tok.vocab_size}).", param="tokens")
    return P.DetokenizeResponse(prompt=tok.decode(req.tokens)).model_dump()


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> dict:
    s = request.app.state.server
    tok = s.adapter.tokenizer
    template = getattr(s.config.chat_template, "source", None)
    return {"tokenizer_class": type(tok).__name__, "eos_token": tok.decode([tok.eos_id]), "bos_token": None,
            "pad_token": None, "model_max_length": s.context, "vocab_size": tok.vocab_size,
            "chat_template": template}


@router.post("/v1/embeddings")
async def embeddings(req: P.EmbeddingRequest, request: Request) -> dict:
    s = request.app.state.server
    s.check_model(req.model)
    if req.dimensions is not None:
        raise APIError(400, "dimensions (shortened embeddings) is not supported: this model's vectors have "
                       f"{s.engine.model.config.hidden_size} dimensions.", param="dimensions")
    tok, x = s.adapter.tokenizer, req.input
    if isinstance(x, str):
        rows = [tok.encode(x)]
    elif not x:
        raise APIError(400, "input must not be empty.", param="input")
    elif all(isinstance(v, str) for v in x):
        rows = [tok.encode(v) for v in x]
    elif all(isinstance(v, int) for v in x):
        rows = [list(x)]
    else:
        rows = [list(v) for v in x]
    if len(rows) > s.config.max_prompts:
        raise APIError(400, f"{len(rows)} inputs; this server embeds at most {s.config.max_prompts} per request "
                       "(--max-prompts).", param="input")
    for i, ids in enumerate(rows):
        if not ids:
            raise APIError(400, f"input {i} is empty.", param="input")
        if len(ids) > s.context:
            raise APIError(400, f"input {i} has {len(ids)} tokens; this model's context is {s.context}.",
                           param="input", code="context_length_exceeded")
        if any(not 0 <= t < tok.vocab_size for t in ids):
            raise APIError(400, f"input {i} has a token id outside the vocabulary [0, {tok.vocab_size}).",
                           param="input")
    ticket = s.admission.take(len(rows))  # embedding work shares the queue's bound
    try:
        vectors = await asyncio.to_thread(s.engine.embed, rows, req.pooling or s.config.embedding_pooling)
    except ValueError as e:
        raise APIError(400, f"{e}.", param="input") from None
    finally:
        ticket.release()
    data = []
    for i, v in enumerate(vectors):
        value = base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if req.encoding_format == "base64" else v
        data.append(P.EmbeddingData(index=i, embedding=value))
    n = sum(len(r) for r in rows)
    request.state.log["prompt_tokens"] = n
    return P.EmbeddingList(data=data, model=s.config.model_name,
                           usage=P.EmbeddingUsage(prompt_tokens=n, total_tokens=n)).model_dump()
