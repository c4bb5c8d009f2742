"""The OpenAI-compatible HTTP API and the web chat page, as a FastAPI app.

:func:`create_app` wraps one :class:`openqwen.infer.engine.Engine`. The engine owns batching: every
request (every choice of an ``n > 1`` request) is submitted to it and joins the running batch between
decode steps, so concurrent clients share forward passes. This module holds the routes, the API key
check and the error handlers; the translation lives beside it:

- :mod:`openqwen.serve.adapter`: OpenAI request -> prompt ids + sampling parameters, logprobs, usage;
- :mod:`openqwen.serve.choices`: the engine's events (delivered through its sink) on the event loop;
- :mod:`openqwen.serve.stream`: the server-sent-event stream of a streamed response;
- :mod:`openqwen.serve.errors`: OpenAI's error shape (400 bad input, 401 key, 404 model/route, ...);
- :mod:`openqwen.serve.limits`: the API key before the body, body size, the bounded queue, drain, access logs;
- :mod:`openqwen.serve.metrics`: ``/metrics`` for Prometheus;
- :mod:`openqwen.serve.tokens`: ``/tokenize``, ``/detokenize``, ``/tokenizer_info``, ``/v1/embeddings``.

A client that goes away frees its batch slot at once: streaming responses are closed by the ASGI
server when the client disconnects, non-streaming ones watch for the disconnect themselves; both
cancel the engine requests. Everything a request can get wrong is checked before a response starts
(a streamed answer never begins with 200 and then breaks on a bad parameter).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from . import protocol as P
from .adapter import EngineJob, RequestAdapter, join_logprobs, usage
from .choices import ChoiceEvent, Choices, ServerStats
from .errors import CLIENT_CLOSED, APIError, validation_error
from .limits import Admission, Guard, Ticket
from .metrics import CONTENT_TYPE, ServerMetrics
from .stream import StreamWriter
from .tokens import router as tokens_router
from .tool_requests import ChoiceTools, ToolPlan

log = logging.getLogger("openqwen.serve")

STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class ServerConfig:
    """What the app serves and how.

    model_name: the id clients pass as ``model`` (and ``/v1/models`` lists).
    api_key: when set, every /v1 (and /tokenize ...) request must carry ``Authorization: Bearer
        <api_key>``, checked before the body is read.
    max_model_len: context window (prompt + completion); None takes the engine's ``max_seq_len``.
    default_max_tokens: completion budget when a request gives none (the release's chat default 512),
        always capped by what is left of the context.
    """

    model_name: str = "openqwen"
    api_key: str | None = None
    max_model_len: int | None = None
    default_max_tokens: int = 512
    chat_template: Any = None
    """The model's own :class:`~openqwen.tokenizer.template.ChatTemplate` (from
    ``ChatTemplate.from_checkpoint``); None renders ChatML, and tools in the ReAct format."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body (413 past it); 4 MiB holds a full 32K-token context as JSON ids."""
    max_queue: int = 256
    """Choices that may wait for a KV-cache slot beyond those running; past it: 429 + Retry-After."""
    request_timeout: float | None = None
    """Seconds a request may take from admission to its last token; past it the engine stops it and
    the client gets 504 (in-band for a stream). None: no deadline."""
    max_prompts: int = 64
    """Most prompts in one /v1/completions request (and inputs in one /v1/embeddings request)."""
    max_n: int = 16
    """Most choices (``n``) per prompt."""
    cors_origins: tuple[str, ...] = ()
    """Origins a browser may call the API from (``*`` for any); empty: no CORS headers (the default)."""
    access_log: bool = False
    """One JSON line per request on the ``openqwen.serve.access`` logger."""
    embedding_pooling: str = "mean"
    """How /v1/embeddings pools the last hidden states: ``mean`` or ``last`` (a request's ``pooling``
    overrides it)."""


def context_length(engine: Any, configured: int | None) -> int:
    """The served context: ``configured``, else the engine's ``max_seq_len``, else the model's."""
    if configured:
        return configured
    for attr in ("max_seq_len", "max_model_len"):
        value = getattr(engine, attr, None)
        if value:
            return int(value)
    return int(engine.model.config.max_position_embeddings)


@dataclass
class Server:
    """Everything the routes share (``app.state.server``)."""

    engine: Any
    config: ServerConfig
    adapter: RequestAdapter
    admission: Admission
    metrics: ServerMetrics
    stats: ServerStats = field(default_factory=ServerStats)
    created: int = field(default_factory=P.now)
    fingerprint: str = field(default_factory=lambda: "openqwen-" + secrets.token_hex(4))
    draining: bool = False
    """Set on SIGTERM: new requests get 503 while the admitted ones finish."""

    @property
    def context(self) -> int:
        return self.adapter.context

    def check_model(self, name: str) -> None:
        if name != self.config.model_name:
            raise APIError(404, f"The model '{name}' does not exist. This server serves "
                           f"'{self.config.model_name}'.", param="model", code="model_not_found")

    def check(self, job: EngineJob) -> None:
        """The engine's own input checks, run before any response starts."""
        try:
            if job.params:
                self.engine.encode_prompt(job.prompt_ids)
            for params in job.params:
                params.validate()
        except ValueError as e:
            raise APIError(400, f"{e}.") from None

    def admit(self, jobs: list[EngineJob], request: Request) -> Ticket:
        """Check every job, then take their choices in (429 when the queue is full)."""
        for job in jobs:
            self.check(job)
        ticket = self.admission.take(sum(len(j.params) for j in jobs))
        self.metrics.prompt_tokens.inc(sum(len(j.prompt_ids) for j in jobs))
        request.state.log["prompt_tokens"] = sum(len(j.prompt_ids) for j in jobs)
        return ticket

    def deadline(self) -> float | None:
        timeout = self.config.request_timeout
        return None if timeout is None else time.monotonic() + timeout

    def submit(self, job: EngineJob, deadline: float | None = None) -> Choices:
        try:
            return Choices(self.engine, job.prompt_ids, job.params, self.stats, self.metrics, deadline)
        except ValueError as e:  # the engine's own input checks (checked before, so this is rare)
            raise APIError(400, str(e)) from None

    def writer(self, rid: str, created: int, chat: bool, stream_options: Any, prompt_tokens: int,
               tools: ToolPlan | None = None) -> StreamWriter:
        """The SSE writer of one streamed response (a usage chunk when ``stream_options.include_usage``)."""
        include_usage = bool(stream_options and stream_options.include_usage)
        return StreamWriter(self.adapter, rid, created, self.config.model_name, self.fingerprint, chat,
                            include_usage, prompt_tokens, tools)


def _server(request: Request) -> Server:
    return request.app.state.server  # the API key was checked by the Guard, before the body was read


# ------------------------------------------------------------------------------ running requests
async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body is already read, so only disconnects arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _collect(choices: Choices) -> list[ChoiceEvent]:
    """The final event of each choice, carrying the whole text."""
    final: dict[int, ChoiceEvent] = {}
    texts: dict[int, list[str]] = {}
    async for ev in choices.events():
        texts.setdefault(ev.index, []).append(ev.text)
        final[ev.index] = ev
    return [ChoiceEvent(i, "".join(texts.get(i, [])), final[i].completion_tokens, final[i].finish_reason or "stop",
                        final[i].token_ids, final[i].logprobs, top_logprobs=final[i].top_logprobs)
            for i in sorted(final)]


def _log_choices(request: Request, groups: list[Choices]) -> None:
    ttfts = [s.ttft for g in groups for s in g.sinks if s.ttft is not None]
    if ttfts:
        request.state.log["ttft_s"] = round(min(ttfts), 4)


async def run_to_end(server: Server, request: Request, jobs: list[EngineJob]) -> list[list[ChoiceEvent]] | None:
    """Generate every choice of every job; cancel all of them and return None if the client
    disconnects first."""
    ticket = server.admit(jobs, request)
    deadline = server.deadline()
    groups: list[Choices] = []
    try:
        for job in jobs:
            groups.append(server.submit(job, deadline))
    except BaseException:
        for g in groups:
            g.cancel()
        ticket.release()
        raise
    active = sum(len(g) for g in groups)
    server.stats.active += active
    work = asyncio.ensure_future(asyncio.gather(*(_collect(g) for g in groups)))
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
        server.stats.active -= active
        ticket.release()
        _log_choices(request, groups)


def stream_response(server: Server, request: Request, job: EngineJob, writer: StreamWriter) -> StreamingResponse:
    ticket = server.admit([job], request)  # every check, and the queue's room, before the 200 goes out
    deadline = server.deadline()

    async def body():
        # Submitted only once the response streams, so a client that is gone before the first byte
        # never holds a slot.
        choices = server.submit(job, deadline)
        server.stats.active += len(choices)
        events = writer.write(choices)
        try:
            async for piece in events:
                yield piece
        finally:  # also when the ASGI server closes us because the client went away
            await events.aclose()  # the writer cancels the choices
            server.stats.active -= len(choices)
            ticket.release()
            _log_choices(request, [choices])
            request.state.log["completion_tokens"] = writer.completion_tokens

    stream = body()
    weakref.finalize(stream, ticket.release)  # a body never started (client gone at once) still gives back
    return StreamingResponse(stream, media_type="text/event-stream", background=BackgroundTask(ticket.release),
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -------------------------------------------------------------------------------------- routes
router = APIRouter()


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 with status ``ok`` when the engine can take work; 503 with ``draining`` (SIGTERM) or ``full``
    (queue at its limit). active_requests: choices generating for a client; engine_*: slots and queue."""
    s: Server = request.app.state.server
    closed = bool(getattr(s.engine, "_closed", False))
    status = "draining" if s.draining else "closed" if closed else "full" if s.admission.full else "ok"
    body = {"status": status, "model": s.config.model_name, "active_requests": s.stats.active,
            "admitted": s.admission.admitted, "capacity": s.admission.capacity,
            "engine_active": getattr(s.engine, "num_active", None),
            "engine_waiting": getattr(s.engine, "num_waiting", None), "max_model_len": s.context,
            "finished": dict(s.stats.finished), "generated_tokens": s.stats.tokens}
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.server.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    s = _server(request)
    return P.ModelList(data=[P.ModelCard(id=s.config.model_name, created=s.created)]).model_dump()


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    s = _server(request)
    s.check_model(model_id)
    return P.ModelCard(id=s.config.model_name, created=s.created).model_dump()


@router.post("/v1/chat/completions")
async def chat_completions(req: P.ChatCompletionRequest, request: Request):
    s = _server(request)
    s.check_model(req.model)
    job = s.adapter.chat_job(req)
    rid, ts = P.new_id("chatcmpl"), P.now()
    request.state.log["id"] = rid
    if req.stream:
        return stream_response(s, request, job, s.writer(rid, ts, True, req.stream_options, len(job.prompt_ids),
                                                          job.tools))
    results = await run_to_end(s, request, [job])
    if results is None:
        return Response(status_code=CLIENT_CLOSED)
    (events,) = results
    request.state.log["completion_tokens"] = sum(e.completion_tokens for e in events)
    choices = []
    for e in events:
        message, reason = P.ResponseMessage(content=e.text), e.finish_reason
        if job.tools is not None and job.tools.parses:  # the reply read for tool calls
            reader = ChoiceTools(job.tools)
            reader.feed(e.text)
            _, reason = reader.finish(e.finish_reason)
            message = reader.message()
        choices.append(P.ChatChoice(index=e.index, message=message, finish_reason=reason,
                                    logprobs=s.adapter.chat_logprobs(e.token_ids or [], e.logprobs, e.finish_reason,
                                                                     e.top_logprobs)))
    return P.ChatCompletion(
        id=rid, created=ts, model=s.config.model_name, system_fingerprint=s.fingerprint, choices=choices,
        usage=usage(len(job.prompt_ids), sum(e.completion_tokens for e in events)),
    ).model_dump()


@router.post("/v1/completions")
async def completions(req: P.CompletionRequest, request: Request):
    s = _server(request)
    s.check_model(req.model)
    jobs = s.adapter.completion_jobs(req)
    rid, ts = P.new_id("cmpl"), P.now()
    request.state.log["id"] = rid
    if req.stream and len(jobs) > 1:
        raise APIError(400, "streaming takes one prompt; send one request per prompt.", param="prompt")
    if req.stream and not jobs[0].params:
        raise APIError(400, "max_tokens 0 (echo alone) streams nothing; send it without stream.", param="max_tokens")
    for job in jobs:  # before the prompt is scored for echo: a bad request costs nothing
        s.check(job)
    echoes = await echo_logprobs(s, jobs, req) if req.echo else None
    if req.stream:
        writer = s.writer(rid, ts, False, req.stream_options, len(jobs[0].prompt_ids))
        if echoes is not None:
            writer.echo = (jobs[0].prompt_text, echoes[0])
        return stream_response(s, request, jobs[0], writer)
    if any(j.params for j in jobs):
        results = await run_to_end(s, request, jobs)
        if results is None:
            return Response(status_code=CLIENT_CLOSED)
    else:  # max_tokens 0 with echo: the prompts alone, nothing generated
        results = [[ChoiceEvent(i, "", 0, "length", [], [] if req.logprobs is not None else None,
                                top_logprobs=[] if req.logprobs else None) for i in range(req.n)] for _ in jobs]
    choices, completion_tokens = [], 0
    for p, events in enumerate(results):  # OpenAI numbers choices prompt-major: index = p * n + i
        head_text, head = ("", None) if echoes is None else (jobs[p].prompt_text, echoes[p])
        offset = 0 if head is None else head.text_offset[-1] + len(head.tokens[-1])
        for e in events:
            tail = s.adapter.completion_logprobs(e.token_ids or [], e.logprobs, e.finish_reason, offset,
                                                 e.top_logprobs, keep_stop=req.echo)
            choices.append(P.CompletionChoice(index=p * req.n + e.index, text=head_text + e.text,
                                              finish_reason=e.finish_reason, logprobs=join_logprobs(head, tail)))
            completion_tokens += e.completion_tokens
    request.state.log["completion_tokens"] = completion_tokens
    return P.Completion(
        id=rid, created=ts, model=s.config.model_name, system_fingerprint=s.fingerprint, choices=choices,
        usage=usage(sum(len(j.prompt_ids) for j in jobs), completion_tokens),
    ).model_dump()


async def echo_logprobs(server: Server, jobs: list[EngineJob], req: P.CompletionRequest
                        ) -> list[P.CompletionLogprobs | None]:
    """The log-probabilities of each echoed prompt's tokens (None per prompt when the request asks for
    none), scored by the engine off the event loop."""
    if req.logprobs is None:
        return [None] * len(jobs)
    top = req.logprobs
    scored_rows = [j.prompt_ids for j in jobs if len(j.prompt_ids) > 1]
    if scored_rows:
        try:
            results = await asyncio.to_thread(server.engine.score, [r[:1] for r in scored_rows],
                                              [r[1:] for r in scored_rows], None, top)
        except ValueError as e:
            raise APIError(400, f"{e}.", param="prompt") from None
    it = iter(results if scored_rows else [])
    return [server.adapter.echo_logprobs(j.prompt_ids, next(it) if len(j.prompt_ids) > 1 else None, top)
            for j in jobs]


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


# ------------------------------------------------------------------------------ error handlers
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_error(exc).response()


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        return APIError(404, f"Unknown route {request.method} {request.url.path}.", code="unknown_url").response()
    if exc.status_code == 405:
        return APIError(405, f"Method {request.method} not allowed on {request.url.path}.",
                        code="method_not_allowed").response()
    return APIError(exc.status_code, str(exc.detail)).response()


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error")
    return APIError(500, f"internal server error: {type(exc).__name__}: {exc}", type="server_error").response()


def create_app(engine: Any, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (an :class:`openqwen.infer.engine.Engine`).

    Run it with uvicorn (``openqwen serve`` does, and :class:`BackgroundServer`), or mount it in a larger app.
    """
    cfg = config or ServerConfig()
    for name in ("max_body_bytes", "max_prompts", "max_n"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_queue < 0 or (cfg.request_timeout is not None and cfg.request_timeout <= 0):
        raise ValueError("max_queue must be >= 0 and request_timeout > 0 (or None)")
    if cfg.embedding_pooling not in ("mean", "last"):
        raise ValueError(f"embedding_pooling must be mean or last, got {cfg.embedding_pooling!r}")
    adapter = RequestAdapter(engine.tokenizer, context_length(engine, cfg.max_model_len), cfg.default_max_tokens,
                             cfg.chat_template, cfg.max_prompts, cfg.max_n)
    app = FastAPI(title="openqwen", description="OpenAI-compatible API for openqwen models",
                  docs_url=None, redoc_url=None)
    app.include_router(router)
    app.include_router(tokens_router)
    admission = Admission(int(getattr(engine, "max_batch_size", 1)), cfg.max_queue)
    routes = {r.path for r in router.routes + tokens_router.routes if "{" not in r.path}
    app.state.server = Server(engine, cfg, adapter, admission, ServerMetrics(engine, lambda: admission.admitted, routes))
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(Guard)
    if cfg.cors_origins:  # outermost: a browser's preflight (no API key) is answered here
        app.add_middleware(CORSMiddleware, allow_origins=list(cfg.cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
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
