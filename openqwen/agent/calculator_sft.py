"""A built-in tool-use set: dialogues that teach a nano chat model to call the calculator.

The demo's chat model knows no tool format; this set teaches it the first generation's ReAct format
(:mod:`openqwen.tokenizer.react`), the one openqwen's nano models are given tools in. Each sample
offers two tools, the built-in ``calculator`` and a ``get_weather`` distractor, in a random order,
and is one of three kinds:

* an arithmetic question: the assistant calls ``calculator`` with the expression, reads the
  observation (computed by the real calculator) and answers with the number;
* a weather question: the assistant calls ``get_weather`` with the city (a made-up observation);
* a question that needs no tool (small talk, facts, numbers that need no computing): the assistant
  answers directly with ``Final Answer:``, so calling nothing is learnt too.

:func:`training_dialogues` gives SFT conversations (plain ChatML turns, the ReAct text inside the
assistant turn, exactly what ``chat_prompt_ids(..., tools=...)`` renders at inference) and
:func:`heldout_cases` cases in the tool benchmark's shape (``messages``, ``tools``, ``gold``) that
``openqwen eval --task tools --data`` and ``eval.tasks.tools`` score. The held-out cases use
operand pairs, cities and no-tool questions the training set never holds (the phrasings are shared).
:func:`write_sets` writes both as JSONL; :func:`evaluate_tool_use` scores a model on the held-out
cases (the report's tool metrics of one greedy ReAct step, and the agent loop's answers end to end),
the before/after measurement of ``benchmarks/proof_calculator_sft.py`` and the demo's agent stage.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any, Sequence

from ..tokenizer.chat import chat_messages
from ..tokenizer.react import react_conversation
from .tools import Tool, calculate, calculator_tool

__all__ = ["TOOLS", "evaluate_tool_use", "heldout_cases", "score_tool_use", "training_dialogues", "weather_tool", "write_sets"]

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS = [calculator_tool().schema(), WEATHER]

_ARITHMETIC = ["What is {e}?", "Compute {e}.", "Calculate {e} for me.", "How much is {e}?", "Please work out {e}.",
               "What do you get for {e}?"]
_WEATHER = ["What's the weather in {c}?", "Is it cold in {c} right now?", "Weather report for {c}, please.",
            "How warm is it in {c} today?"]
_CITIES = ["Paris", "Tokyo", "Berlin", "Lima", "Cairo", "Oslo", "Madrid", "Dublin", "Seoul", "Rome", "Vienna",
           "Lisbon", "Nairobi", "Quito", "Prague", "Hanoi"]
_HELDOUT_CITIES = ["Sydney", "Toronto", "Athens", "Warsaw", "Delhi"]
# questions that need no tool, some with numbers in them (a model must not call on every digit)
_PLAIN = [
    ("Hello!", "Hello! How can I help you today?"), ("Who are you?", "I am a helpful assistant."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("Tell me a short joke.", "Why did the scarecrow win an award? He was outstanding in his field."),
    ("What colour is the sky on a clear day?", "It is blue."), ("Thank you!", "You are welcome!"),
    ("How many days are in a week?", "There are seven days in a week."),
    ("What does a Python list hold?", "A Python list holds an ordered sequence of values."),
    ("Name a primary colour.", "Red is a primary colour."), ("Good morning.", "Good morning! What can I do for you?"),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("In which year did the Second World War end?", "It ended in 1945."),
    ("What language is spoken in Brazil?", "Portuguese is spoken in Brazil."),
    ("Write a greeting for a birthday card.", "Happy birthday! Wishing you a wonderful year ahead."),
    ("How many continents are there?", "There are seven continents."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."), ("Can you help me?", "Of course. What do you need?"),
    ("What is 7 in Roman numerals?", "7 is VII in Roman numerals."),
    ("What does CPU stand for?", "CPU stands for central processing unit."),
    ("Which planet is the largest?", "Jupiter is the largest planet."), ("Say something nice.", "You are doing great!"),
    ("What is the boiling point of water in Celsius?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("What is a haiku?", "A haiku is a short poem of three lines."), ("Goodbye!", "Goodbye! Have a nice day."),
    ("What does the keyword def do in Python?", "def defines a function in Python."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ("What is your favourite colour?", "I do not have one, but many people like blue."),
    ("How do I say hello in Spanish?", "You say hola."), ("What is a noun?", "A noun is a word that names a thing."),
    ("Recommend a book.", "Try The Hobbit by J. R. R. Tolkien."), ("What do bees make?", "Bees make honey."),
    ("How many players are in a football team?", "Eleven players are on the field for each team."),
    ("Where is the Eiffel Tower?", "The Eiffel Tower is in Paris."), ("Are you a robot?", "I am a computer program."),
    ("What is 3 in binary?", "3 is 11 in binary."), ("Name an animal that can fly.", "A bird can fly."),
    ("What season comes after winter?", "Spring comes after winter."), ("Nice to meet you.", "Nice to meet you too!"),
    ("What is the plural of mouse?", "The plural of mouse is mice."), ("Who discovered gravity?", "Isaac Newton described it."),
    ("What is the chemical symbol for gold?", "The symbol for gold is Au."), ("I am bored.", "Try reading or a walk."),
]
_HELDOUT_PLAIN = [
    ("Hi there!", "Hi! How can I help?"), ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."), ("What colour is grass?", "Grass is green."),
    ("How many hours are in a day?", "There are 24 hours in a day."), ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("What does RAM stand for?", "RAM stands for random-access memory."), ("Thanks a lot!", "You are welcome!"),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest."), ("Tell me a fun fact.", "Honey never spoils."),
    ("How many months have 31 days?", "Seven months have 31 days."), ("Good night.", "Good night! Sleep well."),
]
_OPS = ["+", "-", "*"]


def _expression(rng: random.Random) -> str:
    op = rng.choice(_OPS)
    hi = 99 if op == "*" else 999
    return f"{rng.randint(2, hi)} {op} {rng.randint(2, hi)}"


def _tools(rng: random.Random) -> list[dict]:
    tools = list(TOOLS)
    rng.shuffle(tools)
    return tools


def _weather_result(city: str, rng: random.Random) -> str:
    return json.dumps({"city": city, "temp_c": rng.randint(-5, 32), "sky": rng.choice(["clear", "cloudy", "rainy"])})


def weather_tool() -> Tool:
    """``get_weather`` for the agent loop: a made-up, deterministic report (the set's distractor)."""
    f = WEATHER["function"]
    return Tool(f["name"], f["description"], f["parameters"],
                lambda city: _weather_result(city, random.Random(sum(map(ord, city)))))


def _call_dialogue(question: str, name: str, arguments: dict, result: str, answer: str) -> list[dict]:
    call = {"id": "call_0", "type": "function", "function": {"name": name, "arguments": arguments}}
    return [{"role": "user", "content": question}, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": result}, {"role": "assistant", "content": answer}]


def _kinds(n: int, rng: random.Random, calc: float, weather: float) -> list[str]:
    k_calc, k_weather = round(n * calc), round(n * weather)
    kinds = ["calc"] * k_calc + ["weather"] * k_weather + ["plain"] * (n - k_calc - k_weather)
    rng.shuffle(kinds)
    return kinds


def training_dialogues(n: int = 1500, seed: int = 0,
                       plain_extra: Sequence[tuple[str, str]] = ()) -> list[list[dict[str, str]]]:
    """``n`` SFT conversations (40 % arithmetic, 15 % weather, 45 % no tool) as plain
    ``{"role", "content"}`` turns in the ReAct format, for ``openqwen sft`` (``sft.train_files``).

    ``plain_extra``: more (question, answer) pairs that need no tool (a chat model's own training
    questions, say); half of the no-tool dialogues then come from them. The built-in list alone is 45
    questions: a model fine-tuned on it learns to answer those without a tool, not that most questions
    need none (the demo's agent called the calculator on 1 of 12 held-out small-talk questions)."""
    rng = random.Random(seed)
    plain_extra = list(plain_extra)
    held = {c["gold"][0]["arguments"]["expression"] for c in heldout_cases() if c["category"] == "calculator"}
    out = []
    for kind in _kinds(n, rng, 0.4, 0.15):
        if kind == "calc":
            expr = _expression(rng)
            while expr in held:
                expr = _expression(rng)
            value = calculate(expr)
            msgs = _call_dialogue(rng.choice(_ARITHMETIC).format(e=expr), "calculator", {"expression": expr},
                                  str(value), f"The answer is {value}.")
        elif kind == "weather":
            city = rng.choice(_CITIES)
            result = _weather_result(city, rng)
            r = json.loads(result)
            msgs = _call_dialogue(rng.choice(_WEATHER).format(c=city), "get_weather", {"city": city}, result,
                                  f"It is {r['sky']} and {r['temp_c']} degrees Celsius in {city}.")
        else:
            q, a = rng.choice(plain_extra if plain_extra and rng.random() < 0.5 else _PLAIN)
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        turns, tail = react_conversation(chat_messages(msgs), _tools(rng))
        assert not tail  # every dialogue ends with the assistant's answer
        out.append(turns)
    return out


def heldout_cases(n_calc: int = 40, n_weather: int = 10, seed: int = 10_007) -> list[dict[str, Any]]:
    """Held-out cases in the tool benchmark's JSONL shape: ``n_calc`` arithmetic questions (gold: the
    calculator with the expression), ``n_weather`` weather questions on cities training never
    names, and every held-out no-tool question (gold: no call)."""
    rng = random.Random(seed)
    cases = []
    seen: set[str] = set()
    while len(seen) < n_calc:
        expr = _expression(rng)
        if expr in seen:
            continue
        seen.add(expr)
        cases.append({"id": f"calc-{len(seen) - 1:03d}", "category": "calculator",
                      "messages": [{"role": "user", "content": rng.choice(_ARITHMETIC).format(e=expr)}],
                      "tools": _tools(rng), "gold": [{"name": "calculator", "arguments": {"expression": expr}}],
                      "answer": calculate(expr)})
    for i in range(n_weather):
        city = _HELDOUT_CITIES[i % len(_HELDOUT_CITIES)]
        cases.append({"id": f"weather-{i:03d}", "category": "weather",
                      "messages": [{"role": "user", "content": rng.choice(_WEATHER).format(c=city)}],
                      "tools": _tools(rng), "gold": [{"name": "get_weather", "arguments": {"city": city}}]})
    for i, (q, _) in enumerate(_HELDOUT_PLAIN):
        cases.append({"id": f"no-tool-{i:03d}", "category": "no_tool", "messages": [{"role": "user", "content": q}],
                      "tools": _tools(rng), "gold": []})
    return cases


def write_sets(out: str | Path, n_train: int = 1500, seed: int = 0) -> tuple[Path, Path]:
    """``OUT/calculator-train.jsonl`` (:func:`training_dialogues`, one ``{"messages": ...}`` per line,
    what ``sft.train_files`` reads) and ``OUT/calculator-heldout.jsonl`` (:func:`heldout_cases`, what
    ``--data`` of ``openqwen eval --task tools`` and :func:`evaluate_tool_use` read)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, held = out / "calculator-train.jsonl", out / "calculator-heldout.jsonl"
    train.write_text("".join(json.dumps({"messages": t}, ensure_ascii=False) + "\n"
                             for t in training_dialogues(n_train, seed)))
    held.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in heldout_cases()))
    return train, held


def evaluate_tool_use(model_dir: str | Path, held: str | Path | None = None, max_new_tokens: int = 48,
                      agent: bool = True) -> dict[str, Any]:
    """:func:`score_tool_use` of the model folder ``model_dir`` (an engine made for it, then closed)."""
    from ..infer.engine import Engine

    engine = Engine.from_pretrained(model_dir, max_batch_size=16, max_seq_len=1024)
    try:
        return score_tool_use(engine, held, max_new_tokens, agent)
    finally:
        engine.close()


def states_number(text: str, number: int | float | str) -> bool:
    """Whether ``text`` states ``number`` itself: not inside a longer number (``1485``, ``485.5``) nor
    with another sign (``-485``), a sentence's closing full stop allowed (``The answer is 485.``)."""
    return bool(re.search(rf"(?<![\d.\-]){re.escape(str(number))}(?!\.?\d)", text))


def score_tool_use(engine: Any, held: str | Path | None = None, max_new_tokens: int = 48,
                   agent: bool = True) -> dict[str, Any]:
    """Score the model behind ``engine`` on the held-out cases (``held``: a JSONL of :func:`write_sets`;
    default :func:`heldout_cases`). The report's tool metrics (``eval.tasks.tools``: selection accuracy,
    Rouge-L of the arguments, false-positive rate, parse failures) of one greedy ReAct step per case,
    stopped at ``Observation:``; with ``agent``, the agent loop (the real calculator, the made-up
    weather tool, 3 steps) run on every case, and ``agent_answer_accuracy_calculator``: the share of
    arithmetic questions whose final answer holds the right number. Returns ``metrics``, ``counts``,
    the step's ``outputs`` by case id and the ``agent`` runs (each with ``right`` where the case has
    an answer)."""
    from ..eval.tasks.tools import ToolCase, load_tool_cases, score_output, tool_metrics
    from ..infer.sampling import SamplingParams
    from ..tokenizer.chat import chat_prompt_ids
    from ..tokenizer.react import REACT_STOP
    from .loop import Agent, AgentLimits
    from .react import ReactFormat
    from .tools import ToolRegistry

    if held is not None:  # read (and checked) as the benchmark reads a --data file
        cases = load_tool_cases(held)
        answers = {json.loads(line).get("id"): json.loads(line).get("answer")
                   for line in Path(held).read_text().splitlines() if line.strip()}
    else:
        raw = heldout_cases()
        cases = [ToolCase(r["id"], r["category"], r["messages"], r["tools"], r["gold"]) for r in raw]
        answers = {r["id"]: r.get("answer") for r in raw}
    tok = engine.tokenizer
    prompts = [chat_prompt_ids(tok, c.messages, tools=c.tools) for c in cases]
    params = SamplingParams(max_new_tokens=max_new_tokens, greedy=True, temperature=0.0, stop=[REACT_STOP],
                            stop_token_ids=list(tok.stop_ids))
    texts = [c.text for c in engine.generate(prompts, params)]
    metrics, counts = tool_metrics([score_output(t, c, "react") for t, c in zip(texts, cases)])
    runs = []
    if agent:
        loop = Agent(engine, ToolRegistry([calculator_tool(), weather_tool()]), ReactFormat(),
                     limits=AgentLimits(max_steps=3, max_new_tokens=max_new_tokens, max_tokens=3 * max_new_tokens))
        right = asked = 0
        for c in cases:
            r = loop.run(c.messages)
            run = {"id": c.id, "answer": r.answer, "calls": [k["name"] for k in r.calls], "stop": r.stop_reason,
                   "arguments": [k["arguments"] for k in r.calls]}
            if answers.get(c.id) is not None:  # the number itself, not a longer one that contains it
                asked += 1
                run["right"] = states_number(r.answer or "", answers[c.id])
                run["expected"] = answers[c.id]
                right += run["right"]
            runs.append(run)
        metrics["agent_answer_accuracy_calculator"] = right / asked if asked else float("nan")
        counts["agent_answers_right"] = right
    return {"metrics": metrics, "counts": counts, "outputs": {c.id: t for c, t in zip(cases, texts)}, "agent": runs}
