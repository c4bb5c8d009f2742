"""The request side of the engine: what a caller holds, and what the engine keeps per request.

* :class:`Completion` - the result of one request;
* :class:`StreamEvent` - what one engine step produced for a request (new text, new ids, and on the
  last event the finish reason and the Completion);
* :class:`RequestHandle` - what :meth:`openqwen.infer.engine.Engine.submit` returns: iterate it for
  events, :meth:`~RequestHandle.result` for the Completion, :meth:`~RequestHandle.cancel` to stop.
  Events either queue in the handle, or, when the request was submitted with a ``sink``, are handed
  to ``sink(event)`` on the engine's stepping thread (no thread of the caller's waits on a queue);
* :class:`Request` - the engine-side state of one request, touched only by the stepping thread: its
  sampling state (own random generator, tokens seen for the repetition penalty), the tokenizer's
  incremental UTF-8 decoder, and the stop-string holdback.

Stop strings are matched on the text. Text that could still be the start of a stop string is held
back until it either completes one (then it is dropped and the request stops) or cannot any more, so
a stop string never reaches the caller, not even partly.
"""

from __future__ import annotations

import queue
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from .sampling import SamplingParams, sample_token, sampled_logprob, sampling_logits

EventSink = Callable[["StreamEvent"], None]
"""Receives every event of one request, called from the engine's stepping thread; it must be quick
(e.g. ``lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev)``). If it raises, its request is
cancelled."""


@dataclass
class Completion:
    """The result of one request.

    ``token_ids`` are the generated ids, including the stop token when one ended the request (the
    text never contains it, nor a stop string). ``finish_reason`` is "stop" (stop id or string),
    "length" (max_new_tokens or the context is full) or "cancelled".
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    """With ``SamplingParams.top_logprobs``: per generated token, the most likely (id, log-probability)."""


@dataclass
class StreamEvent:
    """What one engine step produced for a request: new text, new token ids, and on the last event the
    finish reason and the full :class:`Completion` (or ``finish_reason == "error"`` and ``error``)."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    completion: Completion | None = None
    error: BaseException | None = None
    logprobs: list[float] | None = None
    """Log-probabilities of ``token_ids`` (when the request asked for them)."""
    top_logprobs: list[list[tuple[int, float]]] | None = None
    """The most likely alternatives at each of ``token_ids`` (when the request asked for them)."""


class RequestHandle:
    """A submitted request. Iterate it for :class:`StreamEvent` s (ends after the final event);
    :meth:`result` waits for the :class:`Completion`; :meth:`cancel` frees its slot at the next step.

    With a ``sink`` the events go to the sink instead; the handle cannot be iterated then, but
    :meth:`result` and :meth:`cancel` still work."""

    def __init__(self, request_id: int, prompt_tokens: int, pump: Callable[[], None] | None = None,
                 sink: EventSink | None = None) -> None:
        self.id = request_id
        self._pump = pump  # without a background thread, waiting means stepping the engine
        self.prompt_tokens = prompt_tokens
        self.sink = sink
        self.events: "queue.Queue[StreamEvent]" = queue.Queue()
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self._completion: Completion | None = None
        self._error: BaseException | None = None
        self._drained = False  # the iterator has passed the final event

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the slot is freed at the next engine step."""
        self.cancelled.set()

    def deliver(self, event: StreamEvent) -> None:
        """Hand one event to the caller (stepping thread only): to the sink, or into the queue."""
        if event.completion is not None:
            self._completion = event.completion
        if event.error is not None:
            self._error = event.error
        if self.sink is None:
            self.events.put(event)
        else:
            try:
                self.sink(event)
            except Exception:  # noqa: BLE001 - a broken consumer must not stop the other requests
                self.cancel()
        if event.finish_reason is not None:
            self.finished.set()

    def __iter__(self) -> Iterator[StreamEvent]:
        if self.sink is not None:
            raise RuntimeError("this request's events go to its sink; use result() to wait for it")
        if self._drained:
            return
        while True:
            if self._pump is not None:
                while self.events.empty():
                    self._pump()
            ev = self.events.get()
            if ev.error is not None:
                raise RuntimeError(f"generation failed: {ev.error}") from ev.error
            if ev.finish_reason is not None:
                self._drained = True
            yield ev
            if ev.finish_reason is not None:
                return

    def result(self) -> Completion:
        """Block until the request finishes; return its Completion."""
        if self.sink is None:
            for _ in self:
                pass
        else:
            while not self.finished.is_set():
                if self._pump is not None:
                    self._pump()
                else:
                    self.finished.wait()
            if self._error is not None:
                raise RuntimeError(f"generation failed: {self._error}") from self._error
        assert self._completion is not None
        return self._completion


class Request:
    """Engine-side state of one request (only touched by the stepping thread).

    ``slot`` is its KV-cache row once admitted, ``reuse`` how many prompt tokens that row already
    holds, ``next_input`` the token to feed at the next decode step (-1 when it is not decoding).
    """

    def __init__(self, handle: RequestHandle, prompt: list[int], params: SamplingParams, stop_ids: set[int],
                 tokenizer: Any, vocab_size: int, max_seq_len: int) -> None:
        self.handle = handle
        self.prompt = prompt
        self.params = params
        self.stop_ids = stop_ids
        self.max_seq_len = max_seq_len
        self.slot = -1
        self.reuse = 0
        self.next_input = -1
        self.finish_reason: str | None = None
        self.output: list[int] = []
        self.logprobs: list[float] | None = [] if params.logprobs else None
        self.top_logprobs: list[list[tuple[int, float]]] | None = [] if params.top_logprobs else None
        self.text_parts: list[str] = []
        self._pending = ""  # decoded text held back because it could begin a stop string
        self._last: tuple[str, list[int]] = ("", [])  # text/tokens that ride on the final event
        self._decoder = tokenizer.stream_decoder(skip_special_tokens=params.skip_special_tokens)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self._generator = None if params.is_greedy else torch.Generator().manual_seed(seed)
        self._constraint = params.constraint() if params.constraint is not None else None
        self._seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self._seen = torch.zeros(vocab_size, dtype=torch.bool)
            self._seen[torch.tensor(prompt, dtype=torch.long)] = True

    @property
    def plain_greedy(self) -> bool:
        """Its next token is the argmax of the raw logits (the engine takes one argmax for all such rows)."""
        return self.params.is_greedy and self._seen is None and self.logprobs is None and self._constraint is None

    def accept(self, logits: torch.Tensor, token: int | None = None) -> str | None:
        """Sample (unless given) the next token from ``logits`` [vocab], emit its text; when that ends
        the request, send the final event and return the finish reason."""
        if self._constraint is not None:  # the per-request logits hook (SamplingParams.constraint)
            logits = self._constraint(self.output, logits)
        sampled = self.logprobs is not None and self.params.logprobs_mode == "sampled"
        filtered = sampling_logits(logits, self.params, self._seen) if sampled else None
        if token is None:
            token = sample_token(logits, self.params, self._seen, self._generator, filtered)
        self.output.append(token)
        if self.logprobs is not None:
            self._record_logprobs(token, logits, filtered)
        if self._seen is not None:
            self._seen[token] = True
        if token in self.stop_ids:
            self._emit([token], self._decoder.flush(), final=True)
            return self.finish("stop")
        text = self._decoder.push(token)
        full = (len(self.output) >= self.params.max_new_tokens
                or len(self.prompt) + len(self.output) >= self.max_seq_len)
        if full:
            text += self._decoder.flush()
        if self._emit([token], text, final=full):
            return self.finish("stop")
        if full:
            return self.finish("length")
        self.next_input = token
        return None

    def _record_logprobs(self, token: int, logits: torch.Tensor, filtered: torch.Tensor | None) -> None:
        """The chosen token's log-probability (and the top alternatives) under the raw distribution,
        or the sampled one (``filtered``; greedy: a point mass on the token)."""
        if filtered is not None and self.params.is_greedy:
            dist, value = None, sampled_logprob(filtered, token, self.params)
        else:
            dist = torch.log_softmax(filtered if filtered is not None else logits, -1)
            value = float(dist[token])
        self.logprobs.append(value)
        if self.top_logprobs is not None:
            if dist is None:
                self.top_logprobs.append([(token, value)])
            else:
                top = torch.topk(dist, min(self.params.top_logprobs, dist.shape[-1]))
                self.top_logprobs.append(list(zip(top.indices.tolist(), top.values.tolist())))

    def _emit(self, tokens: list[int], text: str, final: bool) -> bool:
        """Add decoded text, holding back a possible stop-string start; True when a stop string matched."""
        stops = self.params.stop
        buf = self._pending + text
        hit = False
        if not stops:
            out, self._pending = buf, ""
        else:
            cut = min((i for i in (buf.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                out, self._pending, hit = buf[:cut], "", True
            else:
                keep = 0 if final else holdback(buf, stops)
                out, self._pending = buf[: len(buf) - keep], buf[len(buf) - keep:]
        if out:
            self.text_parts.append(out)
        if out or tokens:
            if not hit and not final:
                self.handle.deliver(StreamEvent(out, tokens, logprobs=_tail(self.logprobs, len(tokens)),
                                                top_logprobs=_tail(self.top_logprobs, len(tokens))))
            else:
                self._last = (out, tokens)  # delivered with the final event by finish()
        return hit

    def finish(self, reason: str) -> str:
        """Send the final event (with the Completion); returns ``reason``."""
        self.finish_reason = reason
        self.next_input = -1
        out, tokens = ("", []) if reason == "cancelled" else self._last
        completion = Completion(
            text="".join(self.text_parts), token_ids=list(self.output), finish_reason=reason,
            prompt_tokens=len(self.prompt), completion_tokens=len(self.output), logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
        )
        self.handle.deliver(StreamEvent(out, tokens, reason, completion, logprobs=_tail(self.logprobs, len(tokens)),
                                        top_logprobs=_tail(self.top_logprobs, len(tokens))))
        return reason

    def fail(self, error: BaseException) -> None:
        """End the request with an error event (a step failed)."""
        self.next_input = -1
        self.handle.deliver(StreamEvent("", [], "error", error=error))


def holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


def _tail(values: list | None, n: int) -> list | None:
    return None if values is None else values[len(values) - n:]


def params_list(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
    """One SamplingParams per request (one given for all, or one each)."""
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise ValueError(f"got {len(params)} SamplingParams for {n} prompts")
    return params


def wait_all(handles: list[RequestHandle], progress: bool) -> list[Completion]:
    """The Completions of ``handles`` in order (with a progress bar when asked)."""
    if not progress:
        return [h.result() for h in handles]
    from tqdm import tqdm  # noqa: PLC0415

    return [h.result() for h in tqdm(handles, desc="generating", unit="req")]
