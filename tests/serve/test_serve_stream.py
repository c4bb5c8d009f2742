"""The SSE stream writer and the engine-event bridge alone (no server, no model): chunks, streamed
logprobs, usage, [DONE], errors in-band, and cancellation however the stream ends."""

from __future__ import annotations

import asyncio
import json
import threading
from types import SimpleNamespace

import pytest

from openqwen.serve.adapter import RequestAdapter
from openqwen.serve.choices import ChoiceEvent, Choices, ServerStats
from openqwen.serve.stream import DONE, StreamWriter


class ScriptedChoices:
    """A fixed list of events (or an exception to raise after them); records cancel()."""

    def __init__(self, n: int, events: list, error: Exception | None = None) -> None:
        self.n, self._events, self._error, self.cancelled = n, events, error, 0

    def __len__(self) -> int:
        return self.n

    async def events(self):
        for ev in self._events:
            yield ev
        if self._error is not None:
            raise self._error

    def cancel(self) -> None:
        self.cancelled += 1


@pytest.fixture(scope="module")
def adapter(tokenizer):
    return RequestAdapter(tokenizer, 256)


def writer(adapter, chat: bool, include_usage: bool = False) -> StreamWriter:
    return StreamWriter(adapter, "id-1", 1700000000, "tiny", "fp-1", chat, include_usage, prompt_tokens=9)


def run(agen, stop_after: int | None = None) -> list[str]:
    async def go():
        out = []
        async for piece in agen:
            out.append(piece)
            if stop_after is not None and len(out) == stop_after:
                await agen.aclose()  # what the ASGI server does when the client goes away
                break
        return out
    return asyncio.run(go())


def payloads(pieces: list[str]) -> list:
    assert all(p.startswith("data: ") and p.endswith("\n\n") for p in pieces)
    return [p[6:-2] if p == DONE else json.loads(p[6:-2]) for p in pieces]


def test_chat_stream_chunks(adapter):
    events = [ChoiceEvent(0, "Hel", 1, None), ChoiceEvent(1, "A", 1, None), ChoiceEvent(0, "lo", 2, "stop"),
              ChoiceEvent(1, "", 3, "length")]
    choices = ScriptedChoices(2, events)
    out = payloads(run(writer(adapter, chat=True, include_usage=True).write(choices)))
    head = {"id": "id-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "tiny",
            "system_fingerprint": "fp-1", "usage": None}
    choice = lambda i, delta, finish=None: {**head, "choices": [  # noqa: E731
        {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    assert out == [
        choice(0, {"role": "assistant", "content": ""}), choice(1, {"role": "assistant", "content": ""}),
        choice(0, {"content": "Hel"}), choice(1, {"content": "A"}), choice(0, {"content": "lo"}),
        choice(0, {}, "stop"), choice(1, {}, "length"),  # the empty final text of choice 1 sends no delta
        {**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}},
        "[DONE]",
    ]
    assert choices.cancelled == 1  # released at the normal end too (a no-op on finished requests)


def test_completion_stream_without_usage(adapter):
    out = payloads(run(writer(adapter, chat=False).write(ScriptedChoices(1, [ChoiceEvent(0, "abc", 2, "length")]))))
    assert [c["choices"][0]["text"] for c in out[:-1]] == ["abc", ""]
    assert [c["choices"][0]["finish_reason"] for c in out[:-1]] == [None, "length"]
    assert all("usage" not in c and c["object"] == "text_completion" for c in out[:-1]) and out[-1] == "[DONE]"


def test_streamed_completion_logprobs_continue_offsets(adapter, tokenizer):
    a, b = tokenizer.encode("Hello"), tokenizer.encode(" world")
    events = [ChoiceEvent(0, "Hello", len(a), None, new_ids=a, new_logprobs=[-1.0] * len(a)),
              ChoiceEvent(0, " world", len(a) + len(b) + 1, "stop", new_ids=b + [tokenizer.eos_id],
                          new_logprobs=[-2.0] * len(b) + [-0.5])]
    out = payloads(run(writer(adapter, chat=False).write(ScriptedChoices(1, events))))
    lps = [c["choices"][0]["logprobs"] for c in out[:2]]
    tokens = [t for lp in lps for t in lp["tokens"]]
    assert "".join(tokens) == "Hello world"  # the final end-of-text token is not in the text
    assert [x for lp in lps for x in lp["token_logprobs"]] == [-1.0] * len(a) + [-2.0] * len(b)
    assert [x for lp in lps for x in lp["text_offset"]] == [len("".join(tokens[:i])) for i in range(len(tokens))]


def test_error_is_reported_in_band_and_cancels(adapter):
    choices = ScriptedChoices(1, [ChoiceEvent(0, "x", 1, None)], error=RuntimeError("generation failed: boom"))
    out = payloads(run(writer(adapter, chat=True).write(choices)))
    assert out[-1] == {"error": {"message": "RuntimeError: generation failed: boom", "type": "server_error",
                                 "param": None, "code": None}}
    assert "[DONE]" not in out and choices.cancelled == 1


def test_disconnect_cancels_at_once(adapter):
    choices = ScriptedChoices(1, [ChoiceEvent(0, "x", i + 1, None) for i in range(100)])
    out = run(writer(adapter, chat=True).write(choices), stop_after=3)
    assert len(out) == 3 and choices.cancelled == 1


# ------------------------------------------------------------------------- the engine-event bridge
class ThreadedEngine:
    """Delivers scripted StreamEvents to the sink from its own thread, as the engine's stepping thread does."""

    def __init__(self, script) -> None:
        self.script, self.threads, self.cancelled = script, [], []

    def submit(self, prompt, params=None, extra_stop_ids=(), sink=None):
        handle = SimpleNamespace(cancel=lambda: self.cancelled.append(params))
        t = threading.Thread(target=lambda: [sink(ev) for ev in self.script(params)])
        self.threads.append(t)
        t.start()
        return handle


def stream_event(text, ids, finish=None, completion=None, error=None, logprobs=None):
    return SimpleNamespace(text=text, token_ids=ids, finish_reason=finish, completion=completion, error=error,
                           logprobs=logprobs)


def test_choices_bridge_sink_events_to_the_loop():
    def script(p):
        done = SimpleNamespace(completion_tokens=3, token_ids=[p, p + 1, 0], logprobs=None)
        return [stream_event(f"a{p}", [p]), stream_event(f"b{p}", [p + 1]), stream_event("", [0], "stop", done)]

    engine, stats = ThreadedEngine(script), ServerStats()

    async def go():
        choices = Choices(engine, [1, 2], [10, 20], stats)
        got = [ev async for ev in choices.events()]
        choices.cancel()
        return got

    got = asyncio.run(go())
    for index, p in enumerate([10, 20]):
        mine = [e for e in got if e.index == index]
        assert [(e.text, e.completion_tokens, e.finish_reason, e.new_ids) for e in mine] == [
            (f"a{p}", 1, None, [p]), (f"b{p}", 2, None, [p + 1]), ("", 3, "stop", [0])]
        assert mine[-1].token_ids == [p, p + 1, 0]
    assert stats.finished == {"stop": 2} and stats.tokens == 6
    assert len(engine.threads) == 2 and engine.cancelled == [10, 20]


def test_choices_bridge_raises_engine_errors():
    engine = ThreadedEngine(lambda p: [stream_event("a", [1]), stream_event("", [], error=ValueError("bad"))])

    async def go():
        choices = Choices(engine, [1], [0], ServerStats())
        return [ev.text async for ev in choices.events()]

    with pytest.raises(RuntimeError, match="generation failed: bad"):
        asyncio.run(go())
