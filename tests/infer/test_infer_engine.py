"""The engine against references: transformers' generate, solo runs, and the stop-string contract."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from infer_helpers import IM_END, IM_START, ByteTokenizer, hf_twin, solo, tiny_model

from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams
from openqwen.tokenizer.chat import chat_prompt_ids

GREEDY = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True)
PROMPTS = ["Hello", "The quick brown fox jumps over", "a", "Once upon a time, in a land far away, there was",
           "12+7=", "ünïcødé ✓"]


@pytest.fixture(scope="module")
def engine():
    eng = Engine(tiny_model(), ByteTokenizer(), max_batch_size=4, max_seq_len=128)
    yield eng
    eng.close()


def test_greedy_equals_transformers_generate(engine):
    hf = hf_twin(engine.model)
    for prompt in PROMPTS[:3]:
        ids = ByteTokenizer().encode(prompt)
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[0, len(ids):].tolist()
        ours = engine.generate([ids], GREEDY)[0]
        assert ours.token_ids == ref
        assert ours.finish_reason == "length" and ours.completion_tokens == 24


def test_repetition_penalty_greedy_equals_transformers(engine):
    hf = hf_twin(engine.model)
    ids = ByteTokenizer().encode("abcabcabc")
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False, repetition_penalty=1.7,
                      eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()
    plain = engine.generate([ids], GREEDY.replace(max_new_tokens=30))[0].token_ids
    ours = engine.generate([ids], GREEDY.replace(max_new_tokens=30, repetition_penalty=1.7))[0].token_ids
    assert ours == ref
    assert ours != plain  # the penalty changed something, so the comparison is not vacuous


def test_batched_greedy_equals_single_sequence(engine):
    # six prompts of very different lengths through 4 slots: batched prefill, queueing, slot reuse
    batched = engine.generate(PROMPTS, GREEDY)
    for prompt, out in zip(PROMPTS, batched):
        assert out.token_ids == solo(engine.model, prompt, GREEDY).token_ids, prompt
        assert out.prompt_tokens == len(prompt.encode())


def test_requests_joining_mid_flight_match_solo(engine):
    params = [GREEDY.replace(max_new_tokens=n) for n in (40, 10, 25, 5, 30)]
    handles = []
    for p, sp in zip(PROMPTS, params):
        handles.append(engine.submit(p, sp))
        time.sleep(0.01)  # let the loop run some decode steps before the next one arrives
    results = [h.result() for h in handles]
    for p, sp, out in zip(PROMPTS, params, results):
        assert out.token_ids == solo(engine.model, p, sp).token_ids
        assert len(out.token_ids) == sp.max_new_tokens


def test_manual_joins_between_steps_match_solo():
    """Drive step() by hand so that joins happen at known steps, with slot holes in the decode span."""
    model = tiny_model(seed=3)
    eng = Engine(model, ByteTokenizer(), max_batch_size=3, max_seq_len=128, background=False)
    a = eng.submit("first prompt", GREEDY.replace(max_new_tokens=6))
    b = eng.submit("second, longer prompt here", GREEDY.replace(max_new_tokens=20))
    for _ in range(3):
        eng.step()
    c = eng.submit("third", GREEDY.replace(max_new_tokens=12))
    for _ in range(10):  # a finishes and leaves a hole in slot 0 while b and c decode
        eng.step()
    d = eng.submit("fourth one joins late", GREEDY.replace(max_new_tokens=8))
    while eng.num_active or eng.num_waiting:
        eng.step()
    for h, p, n in [(a, "first prompt", 6), (b, "second, longer prompt here", 20), (c, "third", 12),
                    (d, "fourth one joins late", 8)]:
        assert h.result().token_ids == solo(model, p, GREEDY.replace(max_new_tokens=n)).token_ids


def test_seeded_sampling_is_reproducible_and_batch_independent(engine):
    sp = SamplingParams(max_new_tokens=20, temperature=0.9, top_p=0.9, top_k=50, seed=1234, ignore_eos=True)
    first = engine.generate(PROMPTS[:4], [sp.replace(seed=s) for s in range(4)])
    again = engine.generate(PROMPTS[:4], [sp.replace(seed=s) for s in range(4)])
    assert [c.token_ids for c in first] == [c.token_ids for c in again]
    alone = solo(engine.model, PROMPTS[2], sp.replace(seed=2))
    assert alone.token_ids == first[2].token_ids
    other = engine.generate([PROMPTS[2]], sp.replace(seed=99))[0]
    assert other.token_ids != first[2].token_ids


def test_stop_token_ids_end_the_request(engine):
    out = engine.generate(["Hello"], GREEDY)[0]
    stop_tok = out.token_ids[5]
    first = out.token_ids.index(stop_tok)
    stopped = engine.generate(["Hello"], GREEDY.replace(stop_token_ids=[stop_tok]))[0]
    assert stopped.finish_reason == "stop"
    assert stopped.token_ids == out.token_ids[: first + 1]  # the stop id is returned, its text is not


def test_stop_string_never_leaks_into_stream(engine):
    full = engine.generate(["Once upon a time"], GREEDY.replace(max_new_tokens=60))[0].text
    assert len(full) > 20
    # a stop string taken from the middle of the real output; also a decoy sharing its first characters
    stop = full[12:16]
    decoy = stop[:2] + "\x00never"
    sp = GREEDY.replace(max_new_tokens=60, stop=[decoy, stop])
    pieces = list(engine.stream("Once upon a time", sp))
    streamed = "".join(pieces)
    expected = full[: full.index(stop)]
    assert streamed == expected
    for i in range(len(pieces)):  # no prefix of the stream ever ended with a partial stop string
        so_far = "".join(pieces[: i + 1])
        assert stop not in so_far
        assert so_far == expected[: len(so_far)]
    out = engine.generate(["Once upon a time"], sp)[0]
    assert out.text == expected and out.finish_reason == "stop"


def test_streaming_joins_to_the_completion_text(engine):
    sp = SamplingParams(max_new_tokens=40, temperature=1.0, seed=7, ignore_eos=True)
    pieces = list(engine.stream("ünïcødé", sp))
    out = engine.generate(["ünïcødé"], sp)[0]
    assert "".join(pieces) == out.text == ByteTokenizer().decode(out.token_ids, skip_special_tokens=True)


def test_cancel_frees_the_slot_at_once():
    eng = Engine(tiny_model(), ByteTokenizer(), max_batch_size=1, max_seq_len=512)
    try:
        long = eng.submit("x", GREEDY.replace(max_new_tokens=400))
        next(iter(long))  # it is running
        long.cancel()
        short = eng.submit("y", GREEDY.replace(max_new_tokens=3))
        assert short.result().completion_tokens == 3
        assert long.result().finish_reason == "cancelled"
        assert len(long.result().token_ids) < 400
    finally:
        eng.close()


def test_logprobs_match_the_model(engine):
    sp = GREEDY.replace(max_new_tokens=5, logprobs=True)
    ids = ByteTokenizer().encode("Hello")
    out = engine.generate([ids], sp)[0]
    full = torch.tensor([ids + out.token_ids])
    with torch.no_grad():
        lp = torch.log_softmax(engine.model(full)[0].float(), -1)
    ref = [float(lp[len(ids) - 1 + i, t]) for i, t in enumerate(out.token_ids)]
    assert out.logprobs == pytest.approx(ref, abs=1e-4)


def test_chat_uses_chatml(engine):
    out = engine.chat([[{"role": "user", "content": "hi"}]], SamplingParams.chat_defaults(max_new_tokens=8, seed=0))[0]
    assert out.prompt_tokens == len(ByteTokenizer().apply_chat_template([{"role": "user", "content": "hi"}]))


def test_chat_requests_stop_at_the_chat_stop_ids():
    # the model is forced to answer "ok<|im_end|>" and then more: a chat request ends at <|im_end|>,
    # a plain one (no chat stop ids) runs on to max_new_tokens
    model = tiny_model(seed=4)
    forced = [ord("o"), ord("k"), IM_END, ord("x"), ord("y"), ord("z")]
    steps = []

    def force(_module, _inputs, logits):
        logits = torch.zeros_like(logits)
        logits[..., forced[min(len(steps), len(forced) - 1)]] = 1.0
        steps.append(1)
        return logits

    model.lm_head.register_forward_hook(force)
    engine = Engine(model, ByteTokenizer(), max_batch_size=1, max_seq_len=64, background=False)
    chat = engine.submit_chat([{"role": "user", "content": "hi"}], GREEDY.replace(max_new_tokens=6)).result()
    assert chat.finish_reason == "stop" and chat.token_ids == forced[:3] and chat.text == "ok"
    steps.clear()
    plain = engine.submit("hi", GREEDY.replace(max_new_tokens=6)).result()
    assert plain.finish_reason == "length" and plain.token_ids == forced


def test_history_is_trimmed_oldest_first():
    tok = ByteTokenizer()
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": f"answer {i} " * 5}]
    msgs.append({"role": "user", "content": "last"})
    full = tok.apply_chat_template(msgs)
    ids = chat_prompt_ids(tok, msgs, window=len(full) - 1)
    text = tok.decode(ids)
    assert "question 0" not in text and "answer 0" not in text and "question 1" in text
    assert text.startswith("<|im_start|>system\nsys") and "last" in text
    with pytest.raises(ValueError, match="window"):
        chat_prompt_ids(tok, [{"role": "user", "content": "x" * 100}], window=50)


def test_bad_input_gets_clear_errors(engine):
    with pytest.raises(ValueError, match="empty"):
        engine.submit("", GREEDY)
    with pytest.raises(ValueError, match="context holds 128"):
        engine.submit("x" * 200, GREEDY)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="vocabulary"):
        engine.submit([1, 2, 10_000], GREEDY)


def test_context_full_finishes_with_length():
    eng = Engine(tiny_model(), ByteTokenizer(), max_batch_size=2, max_seq_len=32)
    try:
        out = eng.generate(["0123456789"], GREEDY.replace(max_new_tokens=100))[0]
        assert out.finish_reason == "length" and out.prompt_tokens + out.completion_tokens == 32
    finally:
        eng.close()


def test_concurrent_submitters_from_threads(engine):
    prompts = PROMPTS * 2
    results: dict[int, list[int]] = {}

    def worker(i):
        results[i] = engine.submit(prompts[i], GREEDY.replace(max_new_tokens=12)).result().token_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ref = engine.generate(prompts, GREEDY.replace(max_new_tokens=12))
    assert [results[i] for i in range(len(prompts))] == [c.token_ids for c in ref]


def test_eos_stops_plain_generation_unless_ignored():
    model = tiny_model(seed=5)
    free = Engine(model, ByteTokenizer(), max_batch_size=1, max_seq_len=64)
    out = free.generate(["Z"], GREEDY)[0]
    free.close()
    tok = ByteTokenizer()
    tok.eos_id = out.token_ids[4]  # pretend that byte is <|endoftext|>
    eng = Engine(model, tok, max_batch_size=1, max_seq_len=64)
    try:
        stopped = eng.generate(["Z"], GREEDY.replace(ignore_eos=False))[0]
        assert stopped.finish_reason == "stop"
        assert stopped.token_ids == out.token_ids[: out.token_ids.index(tok.eos_id) + 1]
        assert eng.generate(["Z"], GREEDY)[0].token_ids == out.token_ids  # ignore_eos=True
    finally:
        eng.close()


def test_prefix_reuse_gives_the_same_tokens_as_a_fresh_prefill():
    """A chat's next turn starts with the previous prompt + reply: the cached keys/values are reused."""
    model = tiny_model(seed=4)
    first_prompt = "The history of a long conversation, turn one: " * 2
    eng = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=256)
    try:
        first = eng.generate([first_prompt], GREEDY.replace(max_new_tokens=20))[0]
        nxt = ByteTokenizer().encode(first_prompt) + first.token_ids + ByteTokenizer().encode(" and then?")
        second = eng.generate([nxt], GREEDY)[0]
        # everything but the last generated token (never fed) came from the cache
        assert eng.reused_tokens == len(ByteTokenizer().encode(first_prompt)) + 19
        assert second.token_ids == solo(model, nxt, GREEDY, max_seq_len=256).token_ids
        # an unrelated prompt does not reuse anything
        eng.generate(["something else entirely, long enough to matter here"], GREEDY)
        assert eng.reused_tokens == len(ByteTokenizer().encode(first_prompt)) + 19
        # after reset_prefix_cache the same follow-up is prefilled in full, to the same tokens
        eng.reset_prefix_cache()
        assert eng.generate([nxt], GREEDY)[0].token_ids == second.token_ids
        assert eng.reused_tokens == len(ByteTokenizer().encode(first_prompt)) + 19
    finally:
        eng.close()


def test_a_failing_step_reaches_every_waiting_caller():
    model = tiny_model(seed=6)
    eng = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=64)
    try:
        def broken(*a, **k):
            raise MemoryError("simulated")

        model.hidden_states = broken
        handles = [eng.submit("abc", GREEDY), eng.submit("def", GREEDY)]
        for h in handles:
            with pytest.raises(RuntimeError, match="simulated"):
                h.result()
        del model.hidden_states  # healthy again: the engine keeps serving
        assert eng.generate(["abc"], GREEDY.replace(max_new_tokens=3))[0].completion_tokens == 3
    finally:
        eng.close()


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens_that_do_not_stop_stay_out_of_the_text(skip):
    # force the next tokens: <|im_start|>, "h", "i" (a raw completion may emit special tokens)
    model = tiny_model(seed=4)
    forced = iter([IM_START, ord("h"), ord("i")])

    def force(_module, _inputs, logits):
        logits = torch.zeros_like(logits)
        logits[..., next(forced)] = 1.0
        return logits

    model.lm_head.register_forward_hook(force)
    engine = Engine(model, ByteTokenizer(), max_batch_size=1, max_seq_len=32, background=False)
    params = SamplingParams(max_new_tokens=3, temperature=0, skip_special_tokens=skip)
    streamed = []
    handle = engine.submit("x", params)
    for ev in handle:
        streamed.append(ev.text)
    done = handle.result()
    assert done.token_ids == [IM_START, ord("h"), ord("i")]
    assert done.text == "".join(streamed) == ("hi" if skip else "<|im_start|>hi")


def test_background_thread_runs_with_the_callers_thread_count():
    # a fresh thread starts from the OpenMP default, not from the caller's torch.set_num_threads
    seen = []
    model = tiny_model(seed=6)
    model.lm_head.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        engine = Engine(model, ByteTokenizer(), max_batch_size=1, max_seq_len=32)
    finally:
        torch.set_num_threads(before)
    try:
        engine.generate(["hi"], SamplingParams(max_new_tokens=2, temperature=0))
    finally:
        engine.close()
    assert seen and set(seen) == {3}


def test_sink_receives_every_event_on_the_stepping_thread():
    model = tiny_model(seed=7)
    eng = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=64)
    try:
        ref = eng.generate(["sink me"], GREEDY)[0]
        events, threads = [], []

        def sink(ev):
            events.append(ev)
            threads.append(threading.current_thread().name)

        handle = eng.submit("sink me", GREEDY, sink=sink)
        done = handle.result()  # result() works without iterating
        assert done.token_ids == ref.token_ids and done.text == ref.text
        assert [t for ev in events for t in ev.token_ids] == ref.token_ids
        assert "".join(ev.text for ev in events) == ref.text
        assert [ev.finish_reason for ev in events] == [None] * (len(events) - 1) + ["length"]
        assert events[-1].completion == done
        assert set(threads) == {"openqwen-engine"}  # no thread of ours delivered anything
        assert handle.events.empty()
        with pytest.raises(RuntimeError, match="sink"):
            next(iter(handle))
    finally:
        eng.close()


def test_sink_gets_errors_and_a_raising_sink_cancels_only_its_request():
    model = tiny_model(seed=6)
    eng = Engine(model, ByteTokenizer(), max_batch_size=2, max_seq_len=64)
    try:
        def broken(*a, **k):
            raise MemoryError("simulated")

        model.hidden_states = broken
        got = []
        handle = eng.submit("abc", GREEDY, sink=got.append)
        with pytest.raises(RuntimeError, match="simulated"):
            handle.result()
        assert [ev.finish_reason for ev in got] == ["error"] and isinstance(got[0].error, MemoryError)
        del model.hidden_states

        def angry(ev):
            raise KeyError("consumer gone")

        bad = eng.submit("abc", GREEDY.replace(max_new_tokens=40), sink=angry)
        good = eng.submit("abc", GREEDY.replace(max_new_tokens=40))
        assert bad.result().finish_reason == "cancelled"
        assert good.result().finish_reason == "length" and good.result().completion_tokens == 40
    finally:
        eng.close()


def test_sink_without_a_background_thread():
    eng = Engine(tiny_model(seed=7), ByteTokenizer(), max_batch_size=1, max_seq_len=64, background=False)
    got = []
    done = eng.submit("x", GREEDY.replace(max_new_tokens=5), sink=got.append).result()
    assert len(done.token_ids) == 5 and got[-1].completion == done


def test_long_prefills_hand_freed_memory_back(monkeypatch):
    from openqwen.infer import engine as engine_module

    calls = []
    monkeypatch.setattr(engine_module, "release_freed_memory", lambda: calls.append(1))
    eng = Engine(tiny_model(seed=1), ByteTokenizer(), max_batch_size=2, max_seq_len=1024, background=False)
    params = SamplingParams(max_new_tokens=2, temperature=0, ignore_eos=True)
    eng.generate(["short prompt"], params)
    assert calls == []  # a short prompt leaves little behind: no trim on the hot path
    long_prompt = [3 + i % 250 for i in range(engine_module.TRIM_AFTER_PREFILL_TOKENS)]
    eng.generate([long_prompt], params)
    assert calls == [1]
    eng.close()
