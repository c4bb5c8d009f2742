"""The OpenAI-compatible HTTP API and the web chat page, as a FastAPI app.

:func:`create_app` wraps one :class:`openqwen.infer.engine.Engine`. The engine owns batching: every
request (every choice of an ``n > 1`` request) is submitted to it with ``engine.submit`` and joins
the running batch between decode steps, so concurrent clients share forward passes. The HTTP layer
only translates: OpenAI request -> prompt ids + :class:`SamplingParams`, engine events -> OpenAI
responses or server-sent events.

Errors always have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for bad
input (FastAPI's 422 is replaced), 401 for a wrong key, 404 for an unknown model or route.

A client that goes away frees its batch slot at once: streaming responses are cancelled by the
ASGI server when the client disconnects, non-streaming ones watch for the disconnect themselves;
both call the engine handle's ``cancel()``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol as P

log = logging.getLogger("openqwen.serve")

STATIC_DIR = Path(__file__).parent / "static"
CHAT_ROLES = {"system", "user", "assistant"}
CLIENT_CLOSED = 499  # nginx's "client closed request": logged, never seen by the (gone) client


# ---------------------------------------------------------------------------------------- errors
class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = P.ErrorResponse(error=P.ErrorBody(message=self.message, type=self.type, param=self.param,
                                                 code=self.code))
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(body.model_dump(), status_code=self.status, headers=headers)


def _validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's validation error (422) as OpenAI's 400, naming the first offending field."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request body")
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request. Send valid JSON.")
    if not loc:
        return APIError(400, f"The request body must be a JSON object ({err.get('msg')}).")
    # pydantic names the union branch it tried (e.g. messages.0.content.str); keep the field path
    param = ".".join(p for p in loc if not p.startswith(("str", "list[", "int", "float", "bool")) or p.isdigit())
    if err.get("type") == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    msg = err.get("msg", "invalid value")
    return APIError(400, f"Invalid value for '{param}': {msg}.", param=param, code="invalid_value")


# ------------------------------------------------------------------------------ engine adapter
@dataclass
class _Event:
    """One step of one choice: new text, the running count of generated tokens, and the finish
    reason on the last event (``"stop"`` / ``"length"``; ``None`` before)."""

    index: int
    text: str
    completion_tokens: int
    finish_reason: str | None
    token_ids: list[int] | None = None  # on the last event: every generated id (stop token included)
    logprobs: list[float] | None = None  # on the last event, when the request asked for them
    new_ids: list[int] | None = None  # the ids this event adds (streamed logprobs)
    new_logprobs: list[float] | None = None  # their log-probabilities, when the request asked for them


_DONE = object()


class _Run:
    """One submitted choice. A pump thread drains the engine handle's (blocking) event iterator and
    hands each event to the event loop; ``cancel()`` frees the engine slot."""

    def __init__(self, engine: Any, prompt_ids: list[int], params: Any, index: int,
                 queue: asyncio.Queue, loop: asyncio.AbstractEventLoop, stats: "_Stats") -> None:
        self.index = index
        self._stats = stats
        self.handle = engine.submit(prompt_ids, params)
        self._queue, self._loop = queue, loop
        self._thread = threading.Thread(target=self._pump, name=f"serve-pump-{index}", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass

    def _pump(self) -> None:
        tokens = 0
        try:
            for ev in self.handle:  # engine StreamEvents: text delta, new token ids, finish on the last
                tokens += len(ev.token_ids)
                if ev.completion is not None:
                    tokens = ev.completion.completion_tokens
                done = ev.completion
                self._put(_Event(self.index, ev.text, tokens, ev.finish_reason,
                                 None if done is None else list(done.token_ids),
                                 None if done is None else done.logprobs, list(ev.token_ids), ev.logprobs))
                if ev.finish_reason is not None:
                    self._stats.count(ev.finish_reason, tokens)
        except BaseException as e:  # surfaced to the request as a 500 / stream error
            self._put(e)
        finally:
            self._put((_DONE, self.index))

    def cancel(self) -> None:
        self.handle.cancel()


class _Stats:
    """Counters for /health: finished choices by finish reason ("cancelled" = freed early because the
    client went away) and generated tokens."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finished: dict[str, int] = {}
        self.tokens = 0

    def count(self, reason: str, tokens: int) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1
            self.tokens += tokens


class _Choices:
    """The ``n`` choices of one request, submitted together; events arrive interleaved."""

    def __init__(self, engine: Any, prompt_ids: list[int], params_list: list[Any], stats: _Stats) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        self.runs: list[_Run] = []
        try:
            for i, params in enumerate(params_list):
                self.runs.append(_Run(engine, prompt_ids, params, i, self.queue, loop, stats))
        except BaseException:
            self.cancel()
            raise

    async def events(self) -> AsyncIterator[_Event]:
        live = len(self.runs)
        while live:
            item = await self.queue.get()
            if isinstance(item, tuple) and item and item[0] is _DONE:
                live -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    def cancel(self) -> None:
        for run in self.runs:
            run.cancel()


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so only disconnects arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# ----------------------------------------------------------------------------------- the server
@dataclass
class ServerConfig:
    """What the app serves and how.

    model_name: the id clients pass as ``model`` (and ``/v1/models`` lists).
    api_key: when set, every /v1 request must carry ``Authorization: Bearer <api_key>``.
    max_model_len: context window (prompt + completion); None takes the engine's ``max_seq_len``.
    default_max_tokens: completion budget when a request gives none (the release's chat default 512),
        always capped by what is left of the context.
    """

    model_name: str = "openqwen"
    api_key: str | None = None
    max_model_len: int | None = None
    default_max_tokens: int = 512


def _context_length(engine: Any, configured: int | None) -> int:
    if configured:
        return configured
    for attr in ("max_seq_len", "max_model_len"):
        value = getattr(engine, attr, None)
        if value:
            return int(value)
    return int(engine.model.config.max_position_embeddings)


def create_app(engine: Any, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (an :class:`openqwen.infer.engine.Engine`).

    Run it with uvicorn (``openqwen serve`` does), or mount it in a larger app.
    """
    cfg = config or ServerConfig()
    tokenizer = engine.tokenizer
    context = _context_length(engine, cfg.max_model_len)
    created = P.now()
    fingerprint = "openqwen-" + secrets.token_hex(4)

    app = FastAPI(title="openqwen", description="OpenAI-compatible API for openqwen models",
                  docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.config = cfg
    app.state.active = 0  # choices being generated right now (health shows it)
    app.state.stats = stats = _Stats()

    # ------------------------------------------------------------------ error shapes
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return APIError(404, f"Unknown route {request.method} {request.url.path}.", code="unknown_url").response()
        if exc.status_code == 405:
            return APIError(405, f"Method {request.method} not allowed on {request.url.path}.",
                            code="method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return APIError(500, f"internal server error: {type(exc).__name__}: {exc}", type="server_error").response()

    # ------------------------------------------------------------------ helpers
    def check_auth(request: Request) -> None:
        if cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), cfg.api_key):
            raise APIError(401, "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    def check_model(name: str) -> None:
        if name != cfg.model_name:
            raise APIError(404, f"The model '{name}' does not exist. This server serves '{cfg.model_name}'.",
                           param="model", code="model_not_found")

    def sampling(req: P._Sampling, chat: bool, prompt_len: int, max_tokens: int | None) -> list[Any]:
        from ..infer.sampling import SamplingParams

        want_logprobs = bool(req.logprobs) if chat else req.logprobs is not None
        top = req.top_logprobs if chat else req.logprobs
        if top:
            raise APIError(400, "top alternatives (top_logprobs / logprobs > 0) are not supported; the log-"
                           "probabilities of the chosen tokens are (logprobs true / 0).",
                           param="top_logprobs" if chat else "logprobs")
        if prompt_len >= context:
            raise APIError(
                400, f"This model's maximum context length is {context} tokens. However, your "
                f"{'messages' if chat else 'prompt'} resulted in {prompt_len} tokens. Please reduce the length "
                f"of the {'messages' if chat else 'prompt'}.",
                param="messages" if chat else "prompt", code="context_length_exceeded")
        if max_tokens is not None and prompt_len + max_tokens > context:
            raise APIError(
                400, f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_len + max_tokens} tokens ({prompt_len} in the {'messages' if chat else 'prompt'}, "
                f"{max_tokens} in the completion). Please reduce the length of the "
                f"{'messages' if chat else 'prompt'} or completion.",
                param="max_tokens", code="context_length_exceeded")
        budget = max_tokens if max_tokens is not None else min(cfg.default_max_tokens, context - prompt_len)
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
            fields["stop_token_ids"] = [] if req.ignore_eos else list(tokenizer.stop_ids)
            base = SamplingParams.chat_defaults(**fields)
        else:
            fields["stop_token_ids"] = [] if req.ignore_eos else [tokenizer.eos_id]
            base = SamplingParams(**fields)
        # each choice gets its own seed so that n > 1 gives n different samples, reproducibly
        return [base.replace(seed=None if req.seed is None else req.seed + i) for i in range(req.n)]

    def chat_prompt(req: P.ChatCompletionRequest) -> list[int]:
        messages = []
        for i, m in enumerate(req.messages):
            role = "system" if m.role == "developer" else m.role
            if role not in CHAT_ROLES:
                raise APIError(400, f"messages[{i}].role {m.role!r} is not supported; use system, user or assistant.",
                               param=f"messages.{i}.role", code="invalid_value")
            try:
                text = m.text()
            except ValueError as e:
                raise APIError(400, f"messages[{i}].content: {e}.", param=f"messages.{i}.content") from None
            messages.append({"role": role, "content": text})
        if req.tools:
            raise APIError(400, "tools / function calling are not supported by this server yet.", param="tools")
        # user text is encoded as plain text: '<|im_end|>' typed by a user cannot forge a turn boundary
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))

    def completion_prompts(req: P.CompletionRequest) -> list[list[int]]:
        if req.echo:
            raise APIError(400, "echo is not supported by this server.", param="echo")
        if req.suffix:
            raise APIError(400, "suffix (fill-in-the-middle) is not supported by this server.", param="suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of other than n is not supported by this server.", param="best_of")
        p = req.prompt
        if isinstance(p, str):
            prompts = [tokenizer.encode(p)]
        elif not p:
            raise APIError(400, "prompt must not be empty.", param="prompt")
        elif all(isinstance(x, str) for x in p):
            prompts = [tokenizer.encode(x) for x in p]
        elif all(isinstance(x, int) for x in p):
            prompts = [list(p)]
        else:
            prompts = [list(x) for x in p]
        vocab = tokenizer.vocab_size
        for i, ids in enumerate(prompts):
            if not ids:
                raise APIError(400, f"prompt {i} is empty; give at least one token.", param="prompt")
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise APIError(400, f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab}).",
                               param="prompt")
        return prompts

    stop_ids_all = set(tokenizer.stop_ids) | {tokenizer.eos_id}

    def token_pieces(ids: list[int], lps: list[float], finish_reason: str | None
                     ) -> tuple[list[float], list[bytes]]:
        """Log-probabilities and bytes of generated ids, without a final stop token (which the text
        does not contain either)."""
        if ids and finish_reason == "stop" and ids[-1] in stop_ids_all:
            ids, lps = ids[:-1], lps[:-1]
        return list(lps), [tokenizer.id_to_bytes(t) for t in ids]

    def chat_logprobs(ids: list[int], lps: list[float] | None, finish_reason: str | None) -> P.ChatLogprobs | None:
        if lps is None:
            return None
        lps, raw = token_pieces(ids, lps, finish_reason)
        return P.ChatLogprobs(content=[P.TokenLogprob(token=b.decode("utf-8", errors="replace"), logprob=lp,
                                                      bytes=list(b)) for b, lp in zip(raw, lps)])

    def completion_logprobs(ids: list[int], lps: list[float] | None, finish_reason: str | None,
                            offset: int = 0) -> P.CompletionLogprobs | None:
        """``offset``: characters of this choice's text before these tokens (streamed chunks)."""
        if lps is None:
            return None
        lps, raw = token_pieces(ids, lps, finish_reason)
        tokens = [b.decode("utf-8", errors="replace") for b in raw]
        offsets, at = [], offset
        for t in tokens:  # character offsets into the returned text (approximate inside split characters)
            offsets.append(at)
            at += len(t)
        return P.CompletionLogprobs(tokens=tokens, token_logprobs=lps, text_offset=offsets)

    def usage(prompt_tokens: int, completion_tokens: int) -> P.Usage:
        return P.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                       total_tokens=prompt_tokens + completion_tokens)

    def sse(obj: P.BaseModel | dict) -> str:
        data = obj if isinstance(obj, dict) else obj.model_dump()
        return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"

    async def run_to_end(request: Request, jobs: list[tuple[list[int], list[Any]]]) -> list[list[_Event]] | None:
        """Generate every choice of every prompt; cancel all of them and return None if the client
        disconnects first."""
        groups: list[_Choices] = []
        try:
            for ids, params in jobs:
                groups.append(_Choices(engine, ids, params, stats))
        except ValueError as e:  # the engine's own input checks (ours ran first, so this is rare)
            for g in groups:
                g.cancel()
            raise APIError(400, str(e)) from None
        app.state.active += sum(len(g.runs) for g in groups)

        async def collect(g: _Choices) -> list[_Event]:
            final: dict[int, _Event] = {}
            texts: dict[int, list[str]] = {}
            async for ev in g.events():
                texts.setdefault(ev.index, []).append(ev.text)
                final[ev.index] = ev
            return [_Event(i, "".join(texts.get(i, [])), final[i].completion_tokens, final[i].finish_reason or "stop",
                           final[i].token_ids, final[i].logprobs) for i in sorted(final)]

        work = asyncio.ensure_future(asyncio.gather(*(collect(g) for g in groups)))
        gone = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():  # the client left: free the slots now (finally), answer no one
                work.cancel()
                return None
            return work.result()
        finally:
            gone.cancel()
            for g in groups:
                g.cancel()
            app.state.active -= sum(len(g.runs) for g in groups)

    # ------------------------------------------------------------------ routes
    @app.get("/health")
    async def health() -> dict:
        # active_requests: choices this server is generating; engine_*: slots held and queue length
        return {"status": "ok", "model": cfg.model_name, "active_requests": app.state.active,
                "engine_active": getattr(engine, "num_active", None),
                "engine_waiting": getattr(engine, "num_waiting", None), "max_model_len": context,
                "finished": dict(stats.finished), "generated_tokens": stats.tokens}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict:
        check_auth(request)
        return P.ModelList(data=[P.ModelCard(id=cfg.model_name, created=created)]).model_dump()

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> dict:
        check_auth(request)
        check_model(model_id)
        return P.ModelCard(id=cfg.model_name, created=created).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(req: P.ChatCompletionRequest, request: Request):
        check_auth(request)
        check_model(req.model)
        ids = chat_prompt(req)
        max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        params = sampling(req, True, len(ids), max_tokens)
        rid, ts = P.new_id("chatcmpl"), P.now()
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream(request, ids, params, rid, ts, chat=True, include_usage=include_usage)
        results = await run_to_end(request, [(ids, params)])
        if results is None:
            return Response(status_code=CLIENT_CLOSED)
        (events,) = results
        return P.ChatCompletion(
            id=rid, created=ts, model=cfg.model_name, system_fingerprint=fingerprint,
            choices=[P.ChatChoice(index=e.index, message=P.ResponseMessage(content=e.text), logprobs=chat_logprobs(e.token_ids or [], e.logprobs, e.finish_reason),
                                  finish_reason=e.finish_reason) for e in events],
            usage=usage(len(ids), sum(e.completion_tokens for e in events)),
        ).model_dump()

    @app.post("/v1/completions")
    async def completions(req: P.CompletionRequest, request: Request):
        check_auth(request)
        check_model(req.model)
        prompts = completion_prompts(req)
        jobs = [(ids, sampling(req, False, len(ids), req.max_tokens)) for ids in prompts]
        rid, ts = P.new_id("cmpl"), P.now()
        if req.stream:
            if len(prompts) > 1:
                raise APIError(400, "streaming takes one prompt; send one request per prompt.", param="prompt")
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return _stream(request, prompts[0], jobs[0][1], rid, ts, chat=False, include_usage=include_usage)
        results = await run_to_end(request, jobs)
        if results is None:
            return Response(status_code=CLIENT_CLOSED)
        choices, completion_tokens = [], 0
        for p, events in enumerate(results):  # OpenAI numbers choices prompt-major: index = p * n + i
            for e in events:
                choices.append(P.CompletionChoice(index=p * req.n + e.index, text=e.text, finish_reason=e.finish_reason,
                                                  logprobs=completion_logprobs(e.token_ids or [], e.logprobs, e.finish_reason)))
                completion_tokens += e.completion_tokens
        return P.Completion(
            id=rid, created=ts, model=cfg.model_name, system_fingerprint=fingerprint, choices=choices,
            usage=usage(sum(len(ids) for ids in prompts), completion_tokens),
        ).model_dump()

    def _stream(request: Request, ids: list[int], params: list[Any], rid: str, ts: int, chat: bool,
                include_usage: bool) -> StreamingResponse:
        def chunk(index: int, text: str | None, finish: str | None, role: bool = False, logprobs: Any = None) -> dict:
            if chat:
                delta = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
                body = P.ChatCompletionChunk(id=rid, created=ts, model=cfg.model_name, system_fingerprint=fingerprint,
                                             choices=[P.ChatChunkChoice(index=index, delta=P.Delta(), finish_reason=finish,
                                                                        logprobs=logprobs)])
                data = body.model_dump()
                data["choices"][0]["delta"] = delta
            else:
                data = P.Completion(id=rid, created=ts, model=cfg.model_name, system_fingerprint=fingerprint,
                                    choices=[P.CompletionChoice(index=index, text=text or "", finish_reason=finish,
                                                                logprobs=logprobs)]).model_dump()
            if not include_usage:
                data.pop("usage", None)
            return data

        def streamed_logprobs(ev: _Event, offset: int) -> Any:
            """The log-probabilities of the tokens this event adds (None when not asked for or none)."""
            if ev.new_logprobs is None or not ev.new_ids:
                return None
            if chat:
                lp = chat_logprobs(ev.new_ids, ev.new_logprobs, ev.finish_reason)
                return lp if lp.content else None
            lp = completion_logprobs(ev.new_ids, ev.new_logprobs, ev.finish_reason, offset)
            return lp if lp.tokens else None

        async def body() -> AsyncIterator[str]:
            # Submitted only once the response streams (every check has passed by then), so a
            # client that is gone before the first byte never holds a slot.
            choices = _Choices(engine, ids, params, stats)
            app.state.active += len(choices.runs)
            tokens = [0] * len(choices.runs)
            chars = [0] * len(choices.runs)  # characters of token strings so far (completions' text_offset)
            try:
                if chat:
                    for i in range(len(choices.runs)):
                        yield sse(chunk(i, None, None, role=True))
                async for ev in choices.events():
                    tokens[ev.index] = ev.completion_tokens
                    logprobs = streamed_logprobs(ev, chars[ev.index])
                    if ev.text or logprobs is not None:
                        yield sse(chunk(ev.index, ev.text, None, logprobs=logprobs))
                    if not chat and logprobs is not None:  # offsets count token strings, as unstreamed
                        chars[ev.index] = logprobs.text_offset[-1] + len(logprobs.tokens[-1])
                    if ev.finish_reason is not None:
                        yield sse(chunk(ev.index, None, ev.finish_reason))
                if include_usage:
                    cls = P.ChatCompletionChunk if chat else P.Completion
                    final = cls(id=rid, created=ts, model=cfg.model_name, system_fingerprint=fingerprint, choices=[],
                                usage=usage(len(ids), sum(tokens)))
                    yield sse(final)
                yield "data: [DONE]\n\n"
            except Exception as e:  # headers are gone already: report in-band, as OpenAI does
                log.exception("stream failed")
                yield sse(P.ErrorResponse(error=P.ErrorBody(message=f"{type(e).__name__}: {e}", type="server_error")))
            finally:
                # normal end, client disconnect (the ASGI server cancels this generator) or error:
                # in every case the engine slots are released now
                choices.cancel()
                app.state.active -= len(choices.runs)

        return StreamingResponse(body(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------------ the web chat page
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


class BackgroundServer:
    """Serve ``app`` with uvicorn from a daemon thread (notebooks, tests, benchmarks).

    ``port=0`` picks a free port; :attr:`url` is the base URL (the OpenAI base URL is ``url + "/v1"``).
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 start_timeout: float = 60.0) -> None:
        import socket
        import time

        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.port = sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                       name="openqwen-serve")
        self.thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> "BackgroundServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
