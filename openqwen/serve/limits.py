"""What stands between a client and the engine: the API key, the body size, the queue, drain, logs.

:class:`Guard` is an ASGI middleware in front of every route. For each HTTP request, in this order:

1. while the server drains (SIGTERM), anything but ``/health`` and ``/metrics`` gets 503;
2. the API key is checked *before the body is read* (a client without the key cannot make the
   server buffer or parse anything);
3. the body is read up to ``max_body_bytes`` (413 past it, whether ``Content-Length`` says so up
   front or a chunked body grows too long) and replayed to the route; later ``receive`` calls still
   deliver the client's disconnect, which frees its slots;
4. when it is answered: the metrics count it by route and status, and with ``access_log`` one JSON
   line is logged (id, method, path, status, prompt/completion tokens, time to first token, seconds).

:class:`Admission` bounds the work taken in: choices running plus queued may not pass the engine's
slots plus ``max_queue``; past that a request gets 429 with ``Retry-After``. Every error is in
OpenAI's shape.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from typing import Any

from .errors import APIError

access_log = logging.getLogger("openqwen.serve.access")

OPEN_PATHS = ("/health", "/metrics")
"""Answered while draining and without the API key (probes and scrapers)."""
PROTECTED = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")
"""Paths that need the API key when one is set (the web page and its static files do not)."""


class Admission:
    """Counts the choices taken in and not finished; refuses past ``capacity`` (slots + queue)."""

    def __init__(self, slots: int, max_queue: int, retry_after: int = 1) -> None:
        self.capacity = slots + max_queue
        self.max_queue = max_queue
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self.admitted = 0

    def take(self, choices: int) -> "Ticket":
        with self._lock:
            if choices and self.admitted + choices > self.capacity:
                raise APIError(429, f"The server is at capacity ({self.admitted} choices running or queued, queue "
                               f"limit {self.max_queue}); retry after {self.retry_after} s.", type="rate_limit_error",
                               code="queue_full", headers={"Retry-After": str(self.retry_after)})
            self.admitted += choices
        return Ticket(self, choices)

    @property
    def full(self) -> bool:
        return self.admitted >= self.capacity


class Ticket:
    """Admitted choices; :meth:`release` (idempotent) gives them back."""

    def __init__(self, admission: Admission, choices: int) -> None:
        self._admission, self.choices, self._done = admission, choices, False

    def release(self) -> None:
        with self._admission._lock:
            if not self._done:
                self._done = True
                self._admission.admitted -= self.choices


class Guard:
    """The ASGI middleware described in the module docstring; reads ``scope["app"].state.server``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = scope["app"].state.server
        cfg = server.config
        start = time.monotonic()
        path = scope.get("path", "")
        log = scope.setdefault("state", {}).setdefault("log", {})
        status = {"code": 499, "sent": False}  # 499: the client left before an answer started

        async def tracked_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                status["sent"] = True
            await send(message)

        try:
            error = self._refusal(server, scope, path)
            if error is None and scope.get("method") in ("POST", "PUT", "PATCH"):
                body, error = await self._read_body(scope, receive, cfg.max_body_bytes)
                if error is None:
                    receive = _replay(body, receive)
            if error is not None:
                await error.response()(scope, receive, tracked_send)
            else:
                await self.app(scope, receive, tracked_send)
        finally:
            seconds = time.monotonic() - start
            server.metrics.answered(path, status["code"], seconds)
            if cfg.access_log:
                record = {"time": round(time.time(), 3), "id": log.get("id") or "req-" + uuid.uuid4().hex[:12],
                          "method": scope.get("method"), "path": path, "status": status["code"],
                          "prompt_tokens": log.get("prompt_tokens"), "completion_tokens": log.get("completion_tokens"),
                          "ttft_s": log.get("ttft_s"), "seconds": round(seconds, 4),
                          "client": (scope.get("client") or [None])[0]}
                access_log.info(json.dumps(record, separators=(",", ":")))

    @staticmethod
    def _refusal(server: Any, scope: dict, path: str) -> APIError | None:
        if server.draining and path not in OPEN_PATHS:
            return APIError(503, "The server is shutting down; retry on another replica or later.",
                            type="server_error", code="draining", headers={"Retry-After": "5"})
        key = server.config.api_key
        if key is not None and path.startswith(PROTECTED) and scope.get("method") != "OPTIONS":
            auth = ""
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    auth = value.decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), key.encode()):
                return APIError(401, "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.",
                                code="invalid_api_key")
        return None

    @staticmethod
    async def _read_body(scope: dict, receive: Any, limit: int) -> tuple[bytes, APIError | None]:
        too_big = APIError(413, f"The request body is larger than this server takes ({limit} bytes, "
                           "--max-body-bytes); send less.", code="request_too_large")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return b"", too_big
                except ValueError:
                    return b"", APIError(400, "The Content-Length header is not a number.")
        parts, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"", APIError(400, "The client went away while sending the body.")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", too_big
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts), None


def _replay(body: bytes, receive: Any) -> Any:
    """A ``receive`` that hands the route the body already read, then the client's later messages."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
