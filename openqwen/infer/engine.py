"""The generation engine: continuous batching over one preallocated KV cache, and scoring.

Every caller (the CLI, the server, evaluation, RL rollouts) goes through :class:`Engine`:

* ``engine.generate(prompts, params)`` -> ``list[Completion]`` (blocking, batched inside);
* ``engine.chat(messages_list, params, tools=None)`` -> ``list[Completion]`` (the model's own chat
  template when the engine has one, else ChatML; chat stop ids; history trimmed);
* ``engine.stream(prompt, params)`` -> iterator of text deltas;
* ``engine.submit(prompt, params, sink=None)`` -> :class:`RequestHandle` (thread-safe; the server's
  entry point): iterate it for :class:`StreamEvent` s, or pass ``sink`` to have every event handed to
  ``sink(event)`` on the stepping thread; ``cancel()`` frees its slot at the next step;
* ``engine.score(prompts, continuations)`` -> ``list[ScoreResult]``: log-probabilities of given
  tokens (multiple choice, perplexity, reward and PPO log-probs), see :mod:`openqwen.infer.score`.

Constrained decoding: ``SamplingParams(constraint=factory)`` gives each request its own
``process(generated_ids, logits) -> logits``, called on the raw logits of every step before sampling
(:mod:`openqwen.infer.constrain` builds one that forces a tool call whose arguments follow a schema).

The life of a request. ``submit`` checks it and queues it. A background thread runs :meth:`Engine.step`
while there is work: the :class:`~openqwen.infer.scheduler.Scheduler` admits waiting requests into free
KV-cache rows (reusing a row that already holds the start of the prompt), the
:class:`~openqwen.infer.runner.ModelRunner` prefills them and then runs one decode step over every
active row, and each :class:`~openqwen.infer.requests.Request` turns its logits into a token, text
and events (sampling, incremental UTF-8, stop strings). Requests join and leave between steps.

Models under training. The engine never changes its model's mode (no ``eval()``/``train()``): a model
in training mode without dropout generates exactly as in eval mode; one with dropout is refused with a
ValueError unless the engine was built with ``allow_dropout=True``, so dropout never leaks into
rollouts by accident. Weights updated in place between calls (an optimizer step) are what the next
step computes with; the engine notices the change (see :mod:`openqwen.infer.runner`) before it admits
requests or scores, and then forgets every cached prefix and rebuilds the fused decode step. Call
:meth:`Engine.weights_changed` after changes it cannot see (writes through ``param.data``). Requests
already running when the weights change finish on their cached keys/values.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..model import Qwen
from ..tokenizer.chat import DEFAULT_CHAT_WINDOW, chat_prompt_ids
from ..tokenizer.template import chat_template_from_flag
from .embed import pool_hidden
from .kernels import argmax_rows
from .loading import load_model_and_tokenizer, release_freed_memory
from .requests import Completion, EventSink, Request, RequestHandle, StreamEvent, params_list, wait_all
from .runner import ModelRunner
from .sampling import SamplingParams
from .scheduler import Scheduler
from .score import Scorer, ScoreResult

__all__ = ["Completion", "Engine", "EventSink", "RequestHandle", "ScoreResult", "StreamEvent"]


TRIM_AFTER_PREFILL_TOKENS = 512
"""After a prefill of at least this many tokens the engine hands the C heap's free pages back to the OS.
A long prompt's activations and dequantised weight blocks are freed when it ends, but glibc keeps them
mapped: a 2,048-token prompt left about 100 MB more resident in a server (q4_k_m Qwen2.5-0.5B, int4).
The trim took about 30 ms there, against 2.5 s for a 512-token prefill and 11 s for 2,048."""


class Engine:
    """Batched, continuously batching generation and scoring over one model and tokenizer.

    max_batch_size: slots in the KV cache (concurrent requests); more requests wait in a queue.
    max_seq_len: positions per slot (prompt + output); default min(max_position_embeddings, 8192).
    The cache's buffers take ``2 * layers * kv_heads * head_dim * bytes * max_batch_size * max_seq_len``
    of address space, resident only as positions are written (:func:`openqwen.kv_cache.zeroed_buffers`).
    background: run :meth:`step` in a background thread whenever there is work (the default); with
    False the caller drives :meth:`step` itself (deterministic tests, benchmarks, custom schedulers).
    fused: decode with one C call per step (:class:`openqwen.infer.kernels.FusedDecoder`) when the model
    allows it (fp32 activations on the CPU); ``fused_status`` says which path decodes.
    allow_dropout: generate and score from a model in training mode with dropout (random outputs).
    chat_template: the model's own :class:`~openqwen.tokenizer.template.ChatTemplate` that
    :meth:`chat` renders with (``from_pretrained`` reads it from the checkpoint); None: ChatML.
    """

    def __init__(self, model: Qwen, tokenizer: Any, max_batch_size: int = 16, max_seq_len: int | None = None,
                 name: str = "openqwen", background: bool = True, fused: bool = True,
                 allow_dropout: bool = False, chat_template: Any = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.name = name
        self.config = model.config
        self.max_batch_size = max_batch_size
        self.max_seq_len = int(max_seq_len or min(self.config.max_position_embeddings, 8192))
        # ids the model can emit but the tokenizer cannot decode (embedding rows padded past the vocabulary)
        vocab_limit = min(self.config.vocab_size, int(getattr(tokenizer, "vocab_size", self.config.vocab_size)))
        self._runner = ModelRunner(model, max_batch_size, self.max_seq_len, vocab_limit, fused, allow_dropout)
        self._scheduler = Scheduler(max_batch_size)
        self._scorer = Scorer(model)
        self._eos = getattr(tokenizer, "eos_id", None)
        self._work = threading.Condition(self._scheduler.lock)  # wakes the loop when work arrives
        self._step_lock = threading.Lock()  # one stepping (or scoring) thread at a time
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._background = background
        self._closed = False
        # CPU threads for the stepping thread: a new thread starts from the OpenMP default (1 here, not
        # what the caller chose with torch.set_num_threads), so the background loop sets this first
        self.threads = torch.get_num_threads()

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "auto", tokenizer_path: str | Path | None = None,
                        chat_template: Any = "auto", **kwargs: Any) -> "Engine":
        """Load model + tokenizer from a model folder or .gguf file. dtype: auto (the checkpoint's own
        precision) | fp32 | bf16 | int8 | int4 (see :mod:`openqwen.infer.loading`).
        chat_template: ``auto`` (the checkpoint's own template, if any), ``chatml``, a ``.jinja`` file
        or a ChatTemplate (see :func:`~openqwen.tokenizer.template.chat_template_from_flag`)."""
        template = chat_template_from_flag(chat_template, path)
        model, tokenizer = load_model_and_tokenizer(path, dtype, tokenizer_path)
        kwargs.setdefault("name", Path(path).name)
        return cls(model, tokenizer, chat_template=template, **kwargs)

    # ------------------------------------------------------------------------------ generation
    def encode_prompt(self, prompt: str | Sequence[int], what: str = "prompt") -> list[int]:
        """Token ids of a text or id-list prompt; ValueError when empty, out of vocabulary or too long."""
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise ValueError(f"the {what} is empty; give at least one token")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise ValueError(f"{what} token ids {bad[:5]} are outside the model's vocabulary [0, {self.config.vocab_size})")
        if len(ids) >= self.max_seq_len:
            raise ValueError(f"the {what} has {len(ids)} tokens; this engine's context holds {self.max_seq_len} "
                             "(prompt + output): shorten the prompt or raise max_seq_len")
        return ids

    def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None,
               extra_stop_ids: Sequence[int] = (), sink: EventSink | None = None) -> RequestHandle:
        """Queue one request (thread-safe) and return its handle. With ``sink``, every event of the
        request (the final one and errors included) is passed to ``sink(event)`` on the stepping thread
        instead of queueing in the handle. Raises ValueError on bad input."""
        params = params or SamplingParams()
        params.validate()
        ids = self.encode_prompt(prompt)
        self._runner.check_mode()
        stop_ids = set(params.stop_token_ids) | set(extra_stop_ids)
        if self._eos is not None and not params.ignore_eos:
            stop_ids.add(self._eos)
        handle = RequestHandle(next(self._ids), len(ids), None if self._background else self.step, sink)
        req = Request(handle, ids, params, stop_ids, self.tokenizer, self.config.vocab_size, self.max_seq_len)
        with self._work:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._scheduler.waiting.append(req)
            self._ensure_thread()
            self._work.notify()
        return handle

    def generate(self, prompts: Sequence[str] | Sequence[Sequence[int]] | str,
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 progress: bool = False) -> list[Completion]:
        """Generate for every prompt (text or token ids); returns Completions in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # type: ignore[list-item]
        plist = params_list(params, len(prompts))
        return wait_all([self.submit(p, sp) for p, sp in zip(prompts, plist)], progress)

    def chat(self, messages_list: Sequence[Sequence[dict]] | Sequence[dict],
             params: SamplingParams | Sequence[SamplingParams] | None = None,
             window: int = DEFAULT_CHAT_WINDOW, progress: bool = False,
             tools: Sequence[dict] | None = None) -> list[Completion]:
        """Answer each conversation (OpenAI-style messages) as the assistant. Uses the chat defaults
        when params is None; stops at the chat stop ids; history trimmed oldest-first to ``window``;
        ``tools`` (OpenAI function schemas) offered to every conversation."""
        if messages_list and isinstance(messages_list[0], dict):
            messages_list = [messages_list]  # type: ignore[list-item]
        plist = params_list(params if params is not None else SamplingParams.chat_defaults(), len(messages_list))
        return wait_all([self.submit_chat(m, sp, window, tools=tools) for m, sp in zip(messages_list, plist)],
                        progress)

    def submit_chat(self, messages: Sequence[dict], params: SamplingParams | None = None,
                    window: int = DEFAULT_CHAT_WINDOW, sink: EventSink | None = None,
                    tools: Sequence[dict] | None = None) -> RequestHandle:
        """Queue one chat request; returns its handle. The prompt is the engine's ``chat_template``
        (the model's own) when it has one, else ChatML; ``tools`` go where that template puts them
        (the first generation's ReAct prompt for a template that knows none), see
        :func:`~openqwen.tokenizer.chat.chat_prompt_ids`. Stops at the tokenizer's chat stop ids."""
        ids = chat_prompt_ids(self.tokenizer, messages, min(window, self.max_seq_len - 1), tools=tools,
                              template=self.chat_template)
        return self.submit(ids, params or SamplingParams.chat_defaults(),
                           extra_stop_ids=getattr(self.tokenizer, "stop_ids", ()), sink=sink)

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the text of one completion piece by piece (complete UTF-8, stop strings held back)."""
        handle = self.submit(prompt, params)
        try:
            for ev in handle:
                if ev.text:
                    yield ev.text
        finally:
            handle.cancel()  # no-op when finished; frees the slot when the consumer stops early

    # ------------------------------------------------------------------------------ scoring
    def score(self, prompts: Sequence[str | Sequence[int]], continuations: Sequence[str | Sequence[int]],
              batch_size: int | None = None, top_n: int = 0) -> list[ScoreResult]:
        """Log-probabilities of each continuation's tokens after its prompt (text or ids), under the
        model's full output distribution; rows per forward: ``batch_size`` (default max_batch_size);
        ``top_n``: also the most likely ``top_n`` tokens at each position (``ScoreResult.top_logprobs``).
        Safe while the engine generates (it waits for the current step)."""
        if len(prompts) != len(continuations):
            raise ValueError(f"got {len(prompts)} prompts for {len(continuations)} continuations")
        rows = []
        for p, c in zip(prompts, continuations):
            p_ids, c_ids = self.encode_prompt(p), self.encode_prompt(c, "continuation")
            if len(p_ids) + len(c_ids) > self.max_seq_len:
                raise ValueError(f"a prompt and continuation have {len(p_ids) + len(c_ids)} tokens; this engine's "
                                 f"context holds {self.max_seq_len}: shorten them or raise max_seq_len")
            rows.append((p_ids, c_ids))
        with self._step_lock:
            self._runner.check_mode()
            self._check_weights()
            return self._scorer.score(rows, batch_size or self.max_batch_size, top_n)

    def embed(self, inputs: Sequence[str | Sequence[int]], pooling: str = "mean",
              batch_size: int | None = None) -> list[list[float]]:
        """A unit-length embedding of each input (text or ids) from the model's final hidden states,
        ``mean`` or ``last``-token pooled (see :mod:`openqwen.infer.embed`). Safe while generating."""
        rows = [self.encode_prompt(x, "input") for x in inputs]
        with self._step_lock:
            self._runner.check_mode()
            return pool_hidden(self.model, rows, pooling, batch_size or self.max_batch_size)

    def weights_changed(self) -> None:
        """Tell the engine the weights changed in a way it cannot see (e.g. written through ``.data``)."""
        self._runner.mark_weights_changed()

    def reset_prefix_cache(self) -> None:
        """Forget every cached prompt prefix: the next prompts are prefilled in full (what a prefill
        benchmark must measure; prompts that share a prefix with a finished request otherwise prefill
        only their new tail)."""
        with self._step_lock:  # not between a step's admission and its prefill
            self._scheduler.forget_prefixes()

    def _check_weights(self) -> None:
        if self._runner.weights_changed():
            self._scheduler.forget_prefixes()
            self._scorer.forget()

    # ------------------------------------------------------------------------------ state
    @property
    def fused_status(self) -> str:
        """Which code decodes: the fused C step, or the torch model and why."""
        return self._runner.fused_status

    @property
    def num_active(self) -> int:
        """Requests holding a slot right now."""
        return self._scheduler.num_active

    @property
    def num_waiting(self) -> int:
        return len(self._scheduler.waiting)

    @property
    def cache_tokens(self) -> int:
        """Positions of the KV cache held by active requests (prompt + output so far); the cache holds
        ``max_batch_size * max_seq_len``."""
        return sum(len(r.prompt) + len(r.output) for r in list(self._scheduler.slots) if r is not None)

    @property
    def reused_tokens(self) -> int:
        """Prompt tokens served from the KV cache instead of being prefilled (prefix reuse)."""
        return self._scheduler.reused_tokens

    def close(self) -> None:
        """Stop the background thread (pending requests are cancelled)."""
        with self._work:
            self._closed = True
            self._work.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------------------ the loop
    def _ensure_thread(self) -> None:
        if self._background and (self._thread is None or not self._thread.is_alive()):
            self._thread = threading.Thread(target=self._loop, name="openqwen-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        torch.set_num_threads(self.threads)
        while True:
            with self._work:
                while not self._closed and self._scheduler.idle():
                    self._work.wait()
                if self._closed:
                    break
            try:
                self.step()
            except BaseException as e:  # noqa: BLE001 - every waiting caller must hear about it
                for r in self._scheduler.drain():
                    r.fail(e)
        for r in self._scheduler.drain():
            r.finish("cancelled")

    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting requests into free slots (prefill), then decode one token for every active one."""
        with self._step_lock:
            runner, scheduler = self._runner, self._scheduler
            runner.check_mode()  # two attribute reads: dropout must not start mid-request either
            runner.prepare()
            for r in scheduler.cancelled():  # a disconnected client frees its slot at once
                r.finish("cancelled")
            if scheduler.waiting:
                self._check_weights()  # before admission: prefix reuse must not cross a weight change
                admitted, dropped = scheduler.admit(runner.can_continue)
                for r in dropped:
                    r.finish("cancelled")
                if admitted:
                    self._prefill(admitted)
            span = scheduler.decode_span()
            if span is not None:
                self._decode(*span)

    def _prefill(self, admitted: list[Request]) -> None:
        reusing, groups = self._scheduler.prefill_plan(admitted)
        tokens = 0
        for r in reusing:  # prefix reuse: prefill only the new tail, alone
            logits = self._runner.prefill_tail(r.slot, r.reuse, r.prompt[r.reuse:])
            tokens += len(r.prompt) - r.reuse
            self._scheduler.prefilled(r)
            self._accept(r, logits)
        for g in groups:
            logits = self._runner.prefill(g[0].slot, [r.prompt for r in g])
            tokens += sum(len(r.prompt) for r in g)
            for r, row in zip(g, logits):
                self._scheduler.prefilled(r)
                self._accept(r, row)
        if tokens >= TRIM_AFTER_PREFILL_TOKENS:
            release_freed_memory()

    def _decode(self, start: int, rows: list[Request | None]) -> None:
        idle = [i for i, r in enumerate(rows) if r is None or r.next_input < 0]
        fed = [r.next_input if r is not None and r.next_input >= 0 else 0 for r in rows]
        logits = self._runner.decode(start, fed, idle)
        self._scheduler.decoded(start, rows, fed, idle)
        live = [(i, r) for i, r in enumerate(rows) if r is not None and r.next_input >= 0]
        # one argmax for every plain greedy row instead of one per row
        argmax = argmax_rows(logits) if any(r.plain_greedy for _, r in live) else None
        for i, r in live:
            self._accept(r, logits[i], argmax[i] if argmax is not None and r.plain_greedy else None)

    def _accept(self, r: Request, logits: torch.Tensor, token: int | None = None) -> None:
        try:
            done = r.accept(logits, token) is not None
        except Exception as e:  # noqa: BLE001 - this request's own sampling or constraint failed: end it
            # alone; its batch-mates' rows and the shared step are untouched (their logits are computed)
            r.fail(e)
            done = True
        if done:
            self._scheduler.release(r)

