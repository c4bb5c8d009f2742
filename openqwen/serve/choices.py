"""The engine's events on the event loop: the ``n`` choices of one request, and the server's counters.

Each choice is submitted with ``engine.submit(..., sink=...)``: the engine's stepping thread calls the
sink with every :class:`~openqwen.infer.engine.StreamEvent`, and the sink hands it to the event loop
with ``loop.call_soon_threadsafe``. No thread per choice: the engine's one thread feeds every request.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from .errors import APIError


@dataclass
class ChoiceEvent:
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
    top_logprobs: list[list[tuple[int, float]]] | None = None  # on the last event: every token's alternatives
    new_top: list[list[tuple[int, float]]] | None = None  # the alternatives of ``new_ids``


class ServerStats:
    """Counters for /health: finished choices by finish reason ("cancelled" = freed early because the
    client went away) and generated tokens. Written from the engine thread, read by the routes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.finished: dict[str, int] = {}
        self.tokens = 0
        self.active = 0  # choices being generated for a connected client (touched on the event loop only)

    def count(self, reason: str, tokens: int) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1
            self.tokens += tokens


class _Sink:
    """The callback the engine calls for one choice (on its stepping thread)."""

    def __init__(self, index: int, queue: asyncio.Queue, loop: asyncio.AbstractEventLoop,
                 stats: ServerStats, metrics: Any = None) -> None:
        self.index, self._queue, self._loop, self._stats, self._metrics = index, queue, loop, stats, metrics
        self._tokens = 0
        self._start = self._last = time.monotonic()
        self.ttft: float | None = None

    def _put(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass

    def __call__(self, ev: Any) -> None:
        if ev.error is not None:
            self._put(RuntimeError(f"generation failed: {ev.error}"))
            return
        if ev.token_ids:
            now = time.monotonic()
            if self.ttft is None:
                self.ttft = now - self._start
                if self._metrics is not None:
                    self._metrics.ttft.observe(self.ttft)
            elif self._metrics is not None:
                self._metrics.itl.observe((now - self._last) / len(ev.token_ids))
            self._last = now
            if self._metrics is not None:
                self._metrics.generation_tokens.inc(len(ev.token_ids))
        self._tokens += len(ev.token_ids)
        done = ev.completion
        if done is not None:
            self._tokens = done.completion_tokens
        if ev.finish_reason is not None:  # counted before the last event is handed over: whoever reads
            self._stats.count(ev.finish_reason, self._tokens)  # the stats after it sees this choice
        self._put(ChoiceEvent(self.index, ev.text, self._tokens, ev.finish_reason,
                              None if done is None else list(done.token_ids),
                              None if done is None else done.logprobs, list(ev.token_ids), ev.logprobs,
                              getattr(done, "top_logprobs", None), getattr(ev, "top_logprobs", None)))


class Choices:
    """The ``n`` choices of one prompt, submitted together (call on the event loop); their events
    arrive interleaved through :meth:`events`. :meth:`cancel` frees every engine slot they hold."""

    def __init__(self, engine: Any, prompt_ids: list[int], params_list: Sequence[Any], stats: ServerStats,
                 metrics: Any = None, deadline: float | None = None) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.deadline = deadline  # time.monotonic() past which events() gives up (504)
        loop = asyncio.get_running_loop()
        self.handles: list[Any] = []
        self.sinks: list[_Sink] = []
        try:
            for i, params in enumerate(params_list):
                sink = _Sink(i, self.queue, loop, stats, metrics)
                self.sinks.append(sink)
                self.handles.append(engine.submit(prompt_ids, params, sink=sink))
        except BaseException:
            self.cancel()
            raise

    def __len__(self) -> int:
        return len(self.handles)

    async def events(self) -> AsyncIterator[ChoiceEvent]:
        """Every choice's events until each has sent its final one (the one with a finish reason);
        raises the first engine error, or a 504 :class:`APIError` once ``deadline`` has passed."""
        live = len(self.handles)
        while live:
            if self.deadline is None:
                item = await self.queue.get()
            else:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, self.deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    self.cancel()
                    raise APIError(504, "The request ran past this server's deadline (--request-timeout) and was "
                                   "stopped; ask for fewer tokens or retry.", type="server_error",
                                   code="deadline_exceeded") from None
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.finish_reason is not None:
                live -= 1

    def cancel(self) -> None:
        """No-op for finished choices; the others stop at the engine's next step."""
        for handle in self.handles:
            handle.cancel()
