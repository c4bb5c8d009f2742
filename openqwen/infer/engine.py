"""The generation engine: one preallocated KV cache, batched prefill and decode, continuous batching.

Every caller (the CLI, the server, evaluation, RL rollouts) goes through :class:`Engine`:

* ``engine.generate(prompts, params)`` -> ``list[Completion]`` (blocking, batched inside);
* ``engine.chat(messages_list, params)`` -> ``list[Completion]`` (ChatML, chat stop ids, history trimmed);
* ``engine.stream(prompt, params)`` -> iterator of text deltas;
* ``engine.submit(prompt, params)`` -> :class:`RequestHandle` (thread-safe; the server's entry point):
  iterate it for :class:`StreamEvent` s, ``cancel()`` it to free its slot at the next step.

How it works. The KV cache has ``max_batch_size`` rows ("slots") of ``max_seq_len`` positions, each row
with its own length (see :class:`openqwen.model.KVCache`), so sequences of different lengths decode
together without left padding. A background thread runs :meth:`Engine.step` while there is work: each
step first admits waiting requests into free slots (prefilling them, batched and right-padded when
their lengths are similar), then runs one decode step over the span of occupied slots. Requests join
and leave between steps; a finished or cancelled request frees its slot at once.

Text is produced with the tokenizer's incremental UTF-8 decoder, and stop strings are matched on the
text: text that could still be the start of a stop string is held back, so a stop string never leaks
into streamed output, not even partly.
"""

from __future__ import annotations

import itertools
import queue
import random
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..model import KVCache, Qwen
from ..tokenizer.chat import DEFAULT_CHAT_WINDOW, chat_prompt_ids
from .kernels import FusedDecoder
from .loading import load_for_inference
from .sampling import SamplingParams, sample_token



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


@dataclass
class StreamEvent:
    """What one engine step produced for a request: new text, new token ids, and on the last event the
    finish reason and the full :class:`Completion`."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    completion: Completion | None = None
    error: BaseException | None = None
    logprobs: list[float] | None = None
    """Log-probabilities of ``token_ids`` (when the request asked for them)."""


class RequestHandle:
    """A submitted request. Iterate it for :class:`StreamEvent` s (ends after the final event);
    :meth:`result` waits for the :class:`Completion`; :meth:`cancel` frees its slot at the next step."""

    def __init__(self, request_id: int, prompt_tokens: int, pump: Callable[[], None] | None = None) -> None:
        self.id = request_id
        self._pump = pump  # without a background thread, waiting means stepping the engine
        self.prompt_tokens = prompt_tokens
        self.events: "queue.Queue[StreamEvent]" = queue.Queue()
        self.cancelled = threading.Event()
        self._completion: Completion | None = None

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the slot is freed at the next engine step."""
        self.cancelled.set()

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._completion is not None:
            return
        while True:
            if self._pump is not None:
                while self.events.empty():
                    self._pump()
            ev = self.events.get()
            if ev.error is not None:
                raise RuntimeError(f"generation failed: {ev.error}") from ev.error
            if ev.completion is not None:
                self._completion = ev.completion
            yield ev
            if ev.finish_reason is not None:
                return

    def result(self) -> Completion:
        """Block until the request finishes; return its Completion."""
        for _ in self:
            pass
        assert self._completion is not None
        return self._completion


class _Request:
    """Engine-side state of one request (only touched by the stepping thread)."""

    def __init__(self, handle: RequestHandle, prompt: list[int], params: SamplingParams, stop_ids: set[int],
                 tokenizer: Any, vocab_size: int) -> None:
        self.handle = handle
        self.prompt = prompt
        self.params = params
        self.stop_ids = stop_ids
        self.slot = -1
        self.output: list[int] = []
        self.logprobs: list[float] | None = [] if params.logprobs else None
        self.text_parts: list[str] = []
        self.pending = ""  # decoded text held back because it could begin a stop string
        self.decoder = tokenizer.stream_decoder(skip_special_tokens=params.skip_special_tokens)
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator = None if params.is_greedy else torch.Generator().manual_seed(seed)
        self.seen: torch.Tensor | None = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool)
            self.seen[torch.tensor(prompt, dtype=torch.long)] = True
        self.next_input = -1
        self.reuse = 0  # prompt tokens whose keys/values are already in the slot (prefix reuse)
        self.finish_reason: str | None = None
        self._last: tuple[str, list[int]] = ("", [])  # text/tokens that ride on the final event


MIN_PREFIX_REUSE = 32
"""Shortest cached prefix worth reusing (shorter ones are cheaper to prefill in a batch)."""


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


class Engine:
    """Batched, continuously batching generation over one model and tokenizer.

    max_batch_size: slots in the KV cache (concurrent requests); more requests wait in a queue.
    max_seq_len: positions per slot (prompt + output); default min(max_position_embeddings, 8192).
    The cache costs ``2 * layers * kv_heads * head_dim * bytes * max_batch_size * max_seq_len``.
    background: run :meth:`step` in a background thread whenever there is work (the default); with
    False the caller drives :meth:`step` itself (deterministic tests, benchmarks, custom schedulers).
    fused: run decode steps in one C call (:class:`openqwen.infer.kernels.FusedDecoder`) when the model
    allows it (fp32 activations on the CPU); prefill always runs the torch model. ``fused_status``
    says which path decodes.
    """

    def __init__(self, model: Qwen, tokenizer: Any, max_batch_size: int = 16, max_seq_len: int | None = None,
                 name: str = "openqwen", background: bool = True, fused: bool = True) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.config = model.config
        self.max_batch_size = max_batch_size
        self.max_seq_len = int(max_seq_len or min(self.config.max_position_embeddings, 8192))
        # ids the model can emit but the tokenizer cannot decode (embedding rows padded past the vocabulary)
        self._vocab_limit = min(self.config.vocab_size, int(getattr(tokenizer, "vocab_size", self.config.vocab_size)))
        self._eos = getattr(tokenizer, "eos_id", None)
        self._cache: KVCache | None = None
        self._slots: list[_Request | None] = [None] * max_batch_size
        # token ids whose keys/values sit at the start of each cache row: a new request whose prompt
        # starts with them (the next turn of a chat) reuses them instead of prefilling them again
        self._slot_tokens: list[list[int]] = [[] for _ in range(max_batch_size)]
        self.reused_tokens = 0
        """Prompt tokens served from the KV cache instead of being prefilled (prefix reuse)."""
        self._waiting: deque[_Request] = deque()
        self._lock = threading.Lock()  # guards _waiting and the wake-up condition
        self._work = threading.Condition(self._lock)
        self._step_lock = threading.Lock()  # one stepping thread at a time
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._background = background
        self._closed = False
        self._use_fused = fused
        # CPU threads for the stepping thread: a new thread starts from the OpenMP default (1 here, not
        # what the caller chose with torch.set_num_threads), so the background loop sets this first
        self.threads = torch.get_num_threads()
        self._fused: FusedDecoder | None = None
        self._fused_why = ""

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "fp32", tokenizer_path: str | Path | None = None,
                        **kwargs: Any) -> "Engine":
        """Load model + tokenizer from a model folder or .gguf file. dtype: fp32 | bf16 | int8
        (int8: weight-only int8 linears for fast CPU decode, see :mod:`openqwen.infer.quant`)."""
        from ..tokenizer import QwenTokenizer  # noqa: PLC0415

        model = load_for_inference(path, dtype)
        tokenizer = QwenTokenizer.from_pretrained(tokenizer_path or path)
        kwargs.setdefault("name", Path(path).name)
        return cls(model, tokenizer, **kwargs)

    # ------------------------------------------------------------------------------ public API
    def encode_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        else:
            ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("the prompt is empty; give at least one token")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are outside the model's vocabulary [0, {self.config.vocab_size})")
        if len(ids) >= self.max_seq_len:
            raise ValueError(
                f"the prompt has {len(ids)} tokens; this engine's context holds {self.max_seq_len} "
                "(prompt + output): shorten the prompt or raise max_seq_len"
            )
        return ids

    def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
               extra_stop_ids: Sequence[int] = ()) -> RequestHandle:
        """Queue one request (thread-safe) and return its handle. Raises ValueError on bad input."""
        params = params or SamplingParams()
        params.validate()
        ids = self.encode_prompt(prompt)
        stop_ids = set(params.stop_token_ids) | set(extra_stop_ids)
        if self._eos is not None and not params.ignore_eos:
            stop_ids.add(self._eos)
        handle = RequestHandle(next(self._ids), len(ids), None if self._background else self.step)
        req = _Request(handle, ids, params, stop_ids, self.tokenizer, self.config.vocab_size)
        with self._work:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._waiting.append(req)
            self._ensure_thread()
            self._work.notify()
        return handle

    def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]] | str,
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 progress: bool = False) -> list[Completion]:
        """Generate for every prompt (text or token ids); returns Completions in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        plist = self._params_list(params, len(prompts))
        return self._run_all([self.submit(p, sp) for p, sp in zip(prompts, plist)], progress)

    def chat(self, messages_list: Sequence[Sequence[dict]] | Sequence[dict],
             params: SamplingParams | Sequence[SamplingParams] | None = None,
             window: int = DEFAULT_CHAT_WINDOW, progress: bool = False) -> list[Completion]:
        """Answer each conversation (OpenAI-style messages) as the assistant. Uses the chat defaults
        when params is None; stops at the chat stop ids; history trimmed oldest-first to ``window``."""
        if messages_list and isinstance(messages_list[0], dict):
            messages_list = [messages_list]  # type: ignore[list-item]
        plist = self._params_list(params if params is not None else SamplingParams.chat_defaults(), len(messages_list))
        handles = [self.submit_chat(m, sp, window) for m, sp in zip(messages_list, plist)]
        return self._run_all(handles, progress)

    def submit_chat(self, messages: Sequence[dict], params: SamplingParams | None = None,
                    window: int = DEFAULT_CHAT_WINDOW) -> RequestHandle:
        """Queue one chat request (ChatML prompt, chat stop ids); returns its handle."""
        ids = chat_prompt_ids(self.tokenizer, messages, min(window, self.max_seq_len - 1))
        return self.submit(ids, params or SamplingParams.chat_defaults(),
                           extra_stop_ids=getattr(self.tokenizer, "stop_ids", ()))

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the text of one completion piece by piece (complete UTF-8, stop strings held back)."""
        handle = self.submit(prompt, params)
        try:
            for ev in handle:
                if ev.text:
                    yield ev.text
        finally:
            handle.cancel()  # no-op when finished; frees the slot when the consumer stops early

    def close(self) -> None:
        """Stop the background thread (pending requests are cancelled)."""
        with self._work:
            self._closed = True
            self._work.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------------------ helpers
    @staticmethod
    def _params_list(params, n: int) -> list[SamplingParams]:
        if params is None:
            return [SamplingParams()] * n
        if isinstance(params, SamplingParams):
            return [params] * n
        params = list(params)
        if len(params) != n:
            raise ValueError(f"got {len(params)} SamplingParams for {n} prompts")
        return params

    def _run_all(self, handles: list[RequestHandle], progress: bool) -> list[Completion]:
        if not progress:
            return [h.result() for h in handles]
        from tqdm import tqdm  # noqa: PLC0415

        out = []
        for h in tqdm(handles, desc="generating", unit="req"):
            out.append(h.result())
        return out

    def _ensure_thread(self) -> None:
        if not self._background:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="openqwen-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            with self._work:
                while not self._closed and not self._waiting and not any(self._slots):
                    self._work.wait()
                if self._closed:
                    break
            try:
                self.step()
            except BaseException as e:  # noqa: BLE001 - every waiting caller must hear about it
                self._fail_all(e)
        self._fail_all(None)

    def _fail_all(self, error: BaseException | None) -> None:
        with self._lock:
            reqs = [r for r in self._slots if r is not None] + list(self._waiting)
            self._waiting.clear()
        self._slots = [None] * self.max_batch_size
        self._slot_tokens = [[] for _ in range(self.max_batch_size)]  # after a failure, trust no cached row
        for r in reqs:
            if error is None:
                self._finish(r, "cancelled", free=False)
            else:
                r.handle.events.put(StreamEvent("", [], "error", error=error))

    @property
    def fused_status(self) -> str:
        """Which code decodes: the fused C step, or the torch model and why."""
        if not self._use_fused:
            return "torch model (fused=False)"
        if self._cache is None:
            return "not decided yet (the first step builds the cache)"
        return "fused C decode step" if self._fused is not None else f"torch model ({self._fused_why})"

    @property
    def num_active(self) -> int:
        """Requests holding a slot right now."""
        return sum(r is not None for r in self._slots)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    # ------------------------------------------------------------------------------ the step
    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting requests into free slots (prefill), then decode one token for every active one."""
        with self._step_lock:
            if self._cache is None:
                self._cache = self.model.new_cache(self.max_batch_size, self.max_seq_len)
                if self._use_fused and not self.model.training:
                    self._fused = FusedDecoder.build(self.model, self._cache)
                    self._fused_why = "" if self._fused is not None else FusedDecoder.why_not
            for slot, r in enumerate(self._slots):  # a disconnected client frees its slot at once
                if r is not None and r.handle.cancelled.is_set():
                    self._finish(r, "cancelled")
            admitted = self._admit()
            if admitted:
                self._prefill(admitted)
            if any(r is not None and r.next_input >= 0 for r in self._slots):
                self._decode()

    def _admit(self) -> list[_Request]:
        admitted: list[_Request] = []
        with self._lock:
            while self._waiting and None in self._slots:
                r = self._waiting.popleft()
                if r.handle.cancelled.is_set():
                    self._finish(r, "cancelled", free=False)
                    continue
                free = [i for i, occupant in enumerate(self._slots) if occupant is None]
                common = [_common_prefix(self._slot_tokens[i], r.prompt) for i in free]
                best = max(range(len(free)), key=lambda j: (common[j], -free[j]))
                r.slot = free[best]
                # reuse only when it pays for giving up batched prefill; keep >= 1 token to compute logits
                r.reuse = min(common[best], len(r.prompt) - 1) if common[best] >= MIN_PREFIX_REUSE else 0
                self._slots[r.slot] = r
                admitted.append(r)
        return admitted

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = (self._fused.logits(hidden) if self._fused is not None else self.model.lm_head(hidden)).float()
        if self._vocab_limit < logits.shape[-1]:
            logits[..., self._vocab_limit:] = float("-inf")
        return logits

    def _prefill(self, reqs: list[_Request]) -> None:
        for r in [r for r in reqs if r.reuse]:  # prefix reuse: prefill only the new tail, alone
            cache = self._cache.rows(r.slot, r.slot + 1)
            cache.lengths.fill_(r.reuse)
            hidden = self.model.hidden_states(torch.tensor([r.prompt[r.reuse:]]), cache=cache)
            self.reused_tokens += r.reuse
            self._slot_tokens[r.slot] = list(r.prompt)
            self._accept(r, self._logits(hidden[:, -1])[0])
        reqs = [r for r in reqs if not r.reuse]
        # Group requests in consecutive slots with similar lengths into one right-padded batch; a group
        # costs (rows x longest prompt), so very uneven prompts are prefilled separately.
        reqs = sorted(reqs, key=lambda r: r.slot)
        groups: list[list[_Request]] = []
        for r in reqs:
            g = groups[-1] if groups else None
            if g and g[-1].slot + 1 == r.slot:
                lens = [len(x.prompt) for x in g] + [len(r.prompt)]
                if max(lens) * len(lens) <= 1.25 * sum(lens) + 16 * len(lens):
                    g.append(r)
                    continue
            groups.append([r])
        for g in groups:
            start, stop = g[0].slot, g[-1].slot + 1
            cache = self._cache.rows(start, stop)
            cache.lengths.zero_()
            T = max(len(r.prompt) for r in g)
            ids = torch.zeros(len(g), T, dtype=torch.long)
            for i, r in enumerate(g):
                ids[i, : len(r.prompt)] = torch.tensor(r.prompt)
            hidden = self.model.hidden_states(ids, cache=cache)
            lengths = torch.tensor([len(r.prompt) for r in g])
            cache.lengths.copy_(lengths)  # undo the right padding
            last = hidden[torch.arange(len(g)), lengths - 1]  # only the last position needs logits
            logits = self._logits(last)
            for i, r in enumerate(g):
                self._slot_tokens[r.slot] = list(r.prompt)
                self._accept(r, logits[i])

    def _decode(self) -> None:
        active = [r for r in self._slots if r is not None and r.next_input >= 0]
        start, stop = min(r.slot for r in active), max(r.slot for r in active) + 1
        cache = self._cache.rows(start, stop)
        rows = [self._slots[s] for s in range(start, stop)]
        idle = [i for i, r in enumerate(rows) if r is None or r.next_input < 0]
        ids = torch.tensor([[r.next_input if r is not None and r.next_input >= 0 else 0] for r in rows])
        if idle:  # holes in the span: compute a throwaway token at position 0 of the free row
            cache.lengths[idle] = 0
        if self._fused is not None:
            hidden = self._fused.hidden_states(ids, row0=start)
        else:
            hidden = self.model.hidden_states(ids, cache=cache)
        if idle:
            cache.lengths[idle] = 0
        for i, r in enumerate(rows):
            if i in idle:
                self._slot_tokens[start + i] = []  # its position 0 was just overwritten
            else:
                self._slot_tokens[start + i].append(r.next_input)
        logits = self._logits(hidden[:, 0])
        greedy_rows = [i for i, r in enumerate(rows) if r is not None and r.next_input >= 0
                       and r.params.is_greedy and r.seen is None and r.logprobs is None]
        fast = torch.argmax(logits, -1).tolist() if greedy_rows else None
        for i, r in enumerate(rows):
            if r is None or r.next_input < 0:
                continue
            self._accept(r, logits[i], fast[i] if fast is not None and i in greedy_rows else None)

    def _accept(self, r: _Request, logits: torch.Tensor, token: int | None = None) -> None:
        """Sample (unless given) the next token of ``r``, emit its text, and finish it when done."""
        if token is None:
            token = sample_token(logits, r.params, r.seen, r.generator)
        r.output.append(token)
        if r.logprobs is not None:
            r.logprobs.append(float(torch.log_softmax(logits, -1)[token]))
        if r.seen is not None:
            r.seen[token] = True
        params = r.params
        if token in r.stop_ids:
            self._emit(r, [token], r.decoder.flush(), final=True)
            self._finish(r, "stop")
            return
        text = r.decoder.push(token)
        full_at_length = len(r.output) >= params.max_new_tokens or len(r.prompt) + len(r.output) >= self.max_seq_len
        if full_at_length:
            text += r.decoder.flush()
        if self._emit(r, [token], text, final=full_at_length):
            self._finish(r, "stop")
        elif full_at_length:
            self._finish(r, "length")
        else:
            r.next_input = token

    def _emit(self, r: _Request, tokens: list[int], text: str, final: bool) -> bool:
        """Add decoded text, holding back a possible stop-string start; True when a stop string matched."""
        stops = r.params.stop
        if not stops:
            out = r.pending + text
            r.pending = ""
            hit = False
        else:
            buf = r.pending + text
            cut = min((i for i in (buf.find(s) for s in stops) if i >= 0), default=-1)
            if cut >= 0:
                out, r.pending, hit = buf[:cut], "", True
            else:
                keep = 0 if final else _holdback(buf, stops)
                out, r.pending, hit = buf[: len(buf) - keep], buf[len(buf) - keep:], False
        if out:
            r.text_parts.append(out)
        if out or tokens:
            if not hit and not final:
                r.handle.events.put(StreamEvent(out, tokens, logprobs=_tail(r.logprobs, len(tokens))))
            else:
                r._last = (out, tokens)  # delivered with the final event by _finish
        return hit

    def _finish(self, r: _Request, reason: str, free: bool = True) -> None:
        r.finish_reason = reason
        r.next_input = -1
        if free and r.slot >= 0 and self._slots[r.slot] is r:
            self._slots[r.slot] = None
        out, tokens = r._last
        if reason == "cancelled":
            out, tokens = "", []
        completion = Completion(
            text="".join(r.text_parts), token_ids=list(r.output), finish_reason=reason,
            prompt_tokens=len(r.prompt), completion_tokens=len(r.output), logprobs=r.logprobs,
        )
        r.handle.events.put(StreamEvent(out, tokens, reason, completion, logprobs=_tail(r.logprobs, len(tokens))))


def _tail(values: list[float] | None, n: int) -> list[float] | None:
    return None if values is None else values[len(values) - n:]
