"""The OpenAI-compatible HTTP API and the web chat page, as a FastAPI app.

:func:`create_app` wraps one :class:`openqwen.infer.engine.Engine`. The engine owns batching: every
request (every choice of an ``n > 1`` request) is submitted to it and joins the running batch between
decode steps, so concurrent clients share forward passes. This module holds the routes, the API key
check and the error handlers; the translation lives beside it:

- :mod:`openqwen.serve.adapter`: OpenAI request -> prompt ids + sampling parameters, logprobs, usage;
- :mod:`openqwen.serve.choices`: the engine's events (delivered through its sink) on the event loop;
- :mod:`openqwen.serve.stream`: the server-sent-event stream of a streamed response;
- :mod:`openqwen.serve.errors`: OpenAI's error shape (400 bad input, 401 key, 404 model/route).

A client that goes away frees its batch slot at once: streaming responses are closed by the ASGI
server when the client disconnects, non-streaming ones watch for the disconnect themselves; both
cancel the engine requests.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import protocol as P
from .adapter import EngineJob, RequestAdapter, usage
from .choices import ChoiceEvent, Choices, ServerStats
from .errors import CLIENT_CLOSED, APIError, validation_error
from .stream import StreamWriter
from .tool_requests import ChoiceTools, ToolPlan

log = logging.getLogger("openqwen.serve")

STATIC_DIR = Path(__file__).parent / "static"


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
    chat_template: Any = None
    """The model's own :class:`~openqwen.tokenizer.template.ChatTemplate` (from
    ``ChatTemplate.from_checkpoint``); None renders ChatML, and tools in the ReAct format."""


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
    stats: ServerStats = field(default_factory=ServerStats)
    created: int = field(default_factory=P.now)
    fingerprint: str = field(default_factory=lambda: "openqwen-" + secrets.token_hex(4))

    @property
    def context(self) -> int:
        return self.adapter.context

    def check_auth(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.config.api_key):
            raise APIError(401, "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
                           code="invalid_api_key")

    def check_model(self, name: str) -> None:
        if name != self.config.model_name:
            raise APIError(404, f"The model '{name}' does not exist. This server serves "
                           f"'{self.config.model_name}'.", param="model", code="model_not_found")

    def submit(self, job: EngineJob) -> Choices:
        try:
            return Choices(self.engine, job.prompt_ids, job.params, self.stats)
        except ValueError as e:  # the engine's own input checks (the adapter's ran first, so this is rare)
            raise APIError(400, str(e)) from None

    def writer(self, rid: str, created: int, chat: bool, stream_options: Any, prompt_tokens: int,
               tools: ToolPlan | None = None) -> StreamWriter:
        """The SSE writer of one streamed response (a usage chunk when ``stream_options.include_usage``)."""
        include_usage = bool(stream_options and stream_options.include_usage)
        return StreamWriter(self.adapter, rid, created, self.config.model_name, self.fingerprint, chat,
                            include_usage, prompt_tokens, tools)


def _server(request: Request) -> Server:
    server = request.app.state.server
    server.check_auth(request)
    return server


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
                        final[i].token_ids, final[i].logprobs) for i in sorted(final)]


async def run_to_end(server: Server, request: Request, jobs: list[EngineJob]) -> list[list[ChoiceEvent]] | None:
    """Generate every choice of every job; cancel all of them and return None if the client
    disconnects first."""
    groups: list[Choices] = []
    try:
        for job in jobs:
            groups.append(server.submit(job))
    except BaseException:
        for g in groups:
            g.cancel()
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


def stream_response(server: Server, job: EngineJob, writer: StreamWriter) -> StreamingResponse:
    async def body():
        # Submitted only once the response streams (every check has passed by then), so a
        # client that is gone before the first byte never holds a slot.
        choices = server.submit(job)
        server.stats.active += len(choices)
        events = writer.write(choices)
        try:
            async for piece in events:
                yield piece
        finally:  # also when the ASGI server closes us because the client went away
            await events.aclose()  # the writer cancels the choices
            server.stats.active -= len(choices)

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -------------------------------------------------------------------------------------- routes
router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict:
    # active_requests: choices this server is generating; engine_*: slots held and queue length
    s: Server = request.app.state.server
    return {"status": "ok", "model": s.config.model_name, "active_requests": s.stats.active,
            "engine_active": getattr(s.engine, "num_active", None),
            "engine_waiting": getattr(s.engine, "num_waiting", None), "max_model_len": s.context,
            "finished": dict(s.stats.finished), "generated_tokens": s.stats.tokens}


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
    if req.stream:
        return stream_response(s, job, s.writer(rid, ts, True, req.stream_options, len(job.prompt_ids), job.tools))
    results = await run_to_end(s, request, [job])
    if results is None:
        return Response(status_code=CLIENT_CLOSED)
    (events,) = results
    choices = []
    for e in events:
        message, reason = P.ResponseMessage(content=e.text), e.finish_reason
        if job.tools is not None and job.tools.parses:  # the reply read for tool calls
            reader = ChoiceTools(job.tools)
            reader.feed(e.text)
            _, reason = reader.finish(e.finish_reason)
            message = reader.message()
        choices.append(P.ChatChoice(index=e.index, message=message, finish_reason=reason,
                                    logprobs=s.adapter.chat_logprobs(e.token_ids or [], e.logprobs, e.finish_reason)))
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
    if req.stream:
        if len(jobs) > 1:
            raise APIError(400, "streaming takes one prompt; send one request per prompt.", param="prompt")
        return stream_response(s, jobs[0], s.writer(rid, ts, False, req.stream_options, len(jobs[0].prompt_ids)))
    results = await run_to_end(s, request, jobs)
    if results is None:
        return Response(status_code=CLIENT_CLOSED)
    choices, completion_tokens = [], 0
    for p, events in enumerate(results):  # OpenAI numbers choices prompt-major: index = p * n + i
        for e in events:
            choices.append(P.CompletionChoice(
                index=p * req.n + e.index, text=e.text, finish_reason=e.finish_reason,
                logprobs=s.adapter.completion_logprobs(e.token_ids or [], e.logprobs, e.finish_reason)))
            completion_tokens += e.completion_tokens
    return P.Completion(
        id=rid, created=ts, model=s.config.model_name, system_fingerprint=s.fingerprint, choices=choices,
        usage=usage(sum(len(j.prompt_ids) for j in jobs), completion_tokens),
    ).model_dump()


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
    adapter = RequestAdapter(engine.tokenizer, context_length(engine, cfg.max_model_len), cfg.default_max_tokens,
                             cfg.chat_template)
    app = FastAPI(title="openqwen", description="OpenAI-compatible API for openqwen models",
                  docs_url=None, redoc_url=None)
    app.state.server = Server(engine, cfg, adapter)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)
    app.include_router(router)
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
