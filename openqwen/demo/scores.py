"""The demo's evaluation: every model on every held-out task that fits it, through the one engine.

=====================  =========================================================  ==================
metric                 what                                                       models
=====================  =========================================================  ==================
``instructions``       held-out instruction questions answered exactly            chat models
``arithmetic``         held-out 2-digit +/- questions (``#### N``, else last number) all
``ppo_task``           held-out PPO-task prompts: the preferred reply (right N,    sft, ppo
                       in the format ``The answer is N.``; ground truth)
``ppo_correct``        the same prompts: the right number in any wording          sft, ppo
``ppo_reward``         the reward model's mean score of those greedy answers      sft, ppo
``math``               the built-in held-out math set, greedy chat (harness)      sft, math
``pass@1``             the 55 held-out built-in function tasks, tests run: base   base, code models
                       models write the commented def's body, chat models answer in chat
``val_loss``           the run's own validation loss                              trained models
``pair_accuracy``      held-out preference pairs ranked right                     reward
``tool_selection``     held-out questions that need a tool: the right tool called  sft, agent
``tool_false_pos``     held-out questions that need none: a tool called anyway     sft, agent
``agent_answers``      the agent loop on held-out arithmetic: right final answer  sft, agent
=====================  =========================================================  ==================

Questions are greedy-decoded, so a metric is a fixed function of the model. The held-out sets are
disjoint from every training set by construction (each generator's ``split_of``), and the
decontamination stage of the data pipeline checks the corpus against them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

SAMPLE_PROMPTS = ["What is 23 + 45?", "Repeat the word stone 3 times.", "Count from 12 to 16.",
                  "Which is larger, 41 or 14?", "Say these words in reverse order: moon king river",
                  "Who wrote Hamlet?"]
BASE_PROMPTS = ["ROMEO.\n", "def main(", "Q: Compute 12 + 30.\nA:"]

CHAT_METRICS = ("instructions", "arithmetic")
TOOL_METRICS = ("tool_selection", "tool_false_pos", "agent_answers")

MODEL_METRICS: dict[str, tuple[str, ...]] = {
    "base": ("arithmetic", "pass@1"),
    "sft": CHAT_METRICS + ("ppo_task", "ppo_correct", "ppo_reward", "math") + TOOL_METRICS,
    "ppo": CHAT_METRICS + ("ppo_task", "ppo_correct", "ppo_reward"),
    "code-continue": ("pass@1",),
    "code-sft": CHAT_METRICS + ("pass@1",),
    "math": CHAT_METRICS + ("math",),
    "agent": CHAT_METRICS + TOOL_METRICS,
}
"""Which metrics each model of the demo is measured on (the report's table)."""


def heldout_questions(n: int, seed: int = 0) -> dict[str, list[str]]:
    """The questions of every held-out set the evaluation asks (``n`` of each; code: all its tasks)."""
    from openqwen.agent.calculator_sft import heldout_cases
    from openqwen.align import synthetic
    from openqwen.data.synthetic_code import code_tasks
    from openqwen.data.synthetic_instructions import instructions
    from openqwen.data.synthetic_math import math_items
    from openqwen.train.sft_data import heldout_arithmetic

    from .stages import MATH_CATEGORIES

    return {"instructions": [i.question for i in instructions("heldout", n, distinct=True)],
            "arithmetic": [q for q, _ in heldout_arithmetic(n)],
            "PPO task": [m[-1]["content"] for m in synthetic.prompts("heldout", n, seed=PPO_EVAL_SEED)],
            "math": [it.question for it in math_items("test", n, seed, MATH_CATEGORIES)],
            "code": [r["text"] for r in code_tasks("test", 1000, seed)],
            "agent": [c["messages"][-1]["content"] for c in heldout_cases()]}


PPO_EVAL_SEED = 1


def _greedy_chat(engine: Any, questions: Sequence[str], max_new_tokens: int) -> list[str]:
    from openqwen.infer.sampling import SamplingParams

    outs = engine.chat([[{"role": "user", "content": q}] for q in questions],
                       SamplingParams(greedy=True, max_new_tokens=max_new_tokens))
    return [o.text for o in outs]


def instruction_accuracy(engine: Any, n: int) -> tuple[float, list[tuple[str, str, str]]]:
    """Share of ``n`` held-out instruction questions answered exactly; rows (question, reply, answer)."""
    from openqwen.data.synthetic_instructions import instructions, is_correct

    items = instructions("heldout", n, distinct=True)
    replies = _greedy_chat(engine, [i.question for i in items], 32)
    return (sum(is_correct(i, r) for i, r in zip(items, replies)) / len(items),
            [(i.question, r, i.answer) for i, r in zip(items, replies)])


def arithmetic_accuracy(engine: Any, n: int) -> tuple[float, list[tuple[str, str, str]]]:
    """Share of ``n`` held-out 2-digit +/- questions answered with the right number, read as the math
    harness reads answers (:func:`openqwen.eval.tasks.math.extract_answer`: a ``#### N`` line first, else
    the last number), with room for the math model's worked column-method solution (48 tokens)."""
    from openqwen.eval.tasks.math import extract_answer
    from openqwen.train.sft_data import heldout_arithmetic

    questions = heldout_arithmetic(n)
    replies = _greedy_chat(engine, [q for q, _ in questions], 48)
    return (sum(extract_answer(r) == v for (_, v), r in zip(questions, replies)) / len(questions),
            [(q, r, str(v)) for (q, v), r in zip(questions, replies)])


def ppo_task(engine: Any, n: int, reward_model_dir: Path | None) -> dict[str, Any]:
    """Greedy answers to ``n`` held-out prompts of the PPO task: the share of preferred replies (the
    right number in the asked format, the ground truth's top score), the share with the right number
    in any wording and, when a reward model is given, its mean score of the answers (what PPO
    maximises)."""
    from openqwen.align import synthetic

    prompts = synthetic.prompts("heldout", n, seed=PPO_EVAL_SEED)
    from openqwen.infer.sampling import SamplingParams

    replies = [o.text for o in engine.chat(prompts, SamplingParams(greedy=True, max_new_tokens=16))]
    out: dict[str, Any] = {"ppo_task": sum(synthetic.is_preferred(m, r) for m, r in zip(prompts, replies)) / n,
                           "ppo_correct": sum(synthetic.is_correct(m, r) for m, r in zip(prompts, replies)) / n,
                           "rows": [(m[-1]["content"], r, synthetic.formatted_answer(m)) for m, r in zip(prompts, replies)]}
    if reward_model_dir is not None and Path(reward_model_dir).exists():
        from openqwen.align.pairs import prompt_ids, reply_ids
        from openqwen.align.reward import load_reward_model
        from openqwen.train.pretrain import load_tokenizer

        rm = load_reward_model(reward_model_dir)
        tok = load_tokenizer(str(reward_model_dir))
        rewards = rm.score_sequences([prompt_ids(tok, m) + reply_ids(tok, r) for m, r in zip(prompts, replies)],
                                     16, tok.eos_id)
        out["ppo_reward"] = sum(rewards) / len(rewards)
    return out


def tool_use(engine: Any, cases_path: Path) -> dict[str, Any]:
    """The report's tool metrics on the held-out cases and the agent loop end to end (the real
    calculator runs; the final answer must hold the right number), scored as the tool-use proof
    scores them (:func:`openqwen.agent.calculator_sft.score_tool_use`), with rows for the report."""
    from openqwen.agent.calculator_sft import score_tool_use

    res = score_tool_use(engine, cases_path)
    cases = [json.loads(line) for line in Path(cases_path).read_text().splitlines() if line.strip()]
    by_id = {c["id"]: c for c in cases}
    asked = [r for r in res["agent"] if "right" in r]
    return {"tool_selection": res["metrics"]["tool_selection_accuracy"],
            "tool_false_pos": res["metrics"]["false_positive_rate"],
            "agent_answers": res["metrics"]["agent_answer_accuracy_calculator"],
            "rows": [(c["messages"][-1]["content"], res["outputs"][c["id"]],
                      ", ".join(g["name"] for g in c["gold"]) or "none") for c in cases[::10]],
            "agent_rows": [(by_id[r["id"]]["messages"][-1]["content"],
                            " -> ".join([f"{n}({a})" for n, a in zip(r["calls"], r["arguments"])]
                                        + [r["answer"] or r["stop"]]), str(r["expected"])) for r in asked[:5]]}


def harness_metric(model_dir: Path, task: str, mode: str, limit: int | None, **kw: Any) -> float:
    """One metric of ``openqwen eval`` (the harness) on the model in ``model_dir``."""
    from openqwen.eval.harness import EvalConfig, run_eval

    cfg = EvalConfig(model=str(model_dir), task=task, mode=mode, limit=limit, progress=False, **kw)
    metrics = run_eval(cfg)["metrics"]
    return metrics["pass@1"] if "pass@1" in metrics else metrics["accuracy"]


def evaluate_model(name: str, model_dir: Path, n: int, reward_dir: Path | None,
                   log: Callable[[str], None], agent_cases: Path | None = None) -> dict[str, Any]:
    """Every metric of :data:`MODEL_METRICS` for model ``name``, plus chat and raw-text samples."""
    from openqwen.infer.engine import Engine
    from openqwen.infer.sampling import SamplingParams

    wanted = MODEL_METRICS[name]
    res: dict[str, Any] = {"metrics": {}, "samples": {}}
    engine = Engine.from_pretrained(model_dir, max_batch_size=32, max_seq_len=1024)
    try:
        if "instructions" in wanted:
            res["metrics"]["instructions"], res["samples"]["instructions"] = instruction_accuracy(engine, n)
        if "arithmetic" in wanted:
            res["metrics"]["arithmetic"], res["samples"]["arithmetic"] = arithmetic_accuracy(engine, n)
        if "ppo_task" in wanted:
            task = ppo_task(engine, n, reward_dir)
            res["samples"]["ppo_task"] = task.pop("rows")
            res["metrics"].update(task)
        if "tool_selection" in wanted and agent_cases is not None:
            tools = tool_use(engine, agent_cases)
            res["samples"]["tool calls"] = tools.pop("rows")
            res["samples"]["agent runs"] = tools.pop("agent_rows")
            res["metrics"].update(tools)
        if name == "base" or name == "code-continue":
            res["samples"]["raw"] = [(p, o.text) for p, o in zip(BASE_PROMPTS, engine.generate(
                BASE_PROMPTS, SamplingParams(greedy=True, max_new_tokens=32)))]
        else:
            res["samples"]["chat"] = list(zip(SAMPLE_PROMPTS, _greedy_chat(engine, SAMPLE_PROMPTS, 24)))
    finally:
        engine.close()
    if "math" in wanted:
        from .stages import MATH_CATEGORIES

        res["metrics"]["math"] = harness_metric(model_dir, "synthetic-math", "chat", n, data=",".join(MATH_CATEGORIES))
    if "pass@1" in wanted:
        # the same 55 held-out function tasks in the shape each kind of model can take: a base model
        # writes the body of the commented def (HumanEval's shape, 0-shot; MBPP's 3-shot [BEGIN]/[DONE]
        # protocol asks for in-context learning a nano model does not have), a chat model is asked in chat
        if name in ("base", "code-continue"):
            res["metrics"]["pass@1"] = harness_metric(model_dir, "humaneval", "base", None, data="builtin",
                                                      max_new_tokens=64)
        else:
            res["metrics"]["pass@1"] = harness_metric(model_dir, "mbpp", "chat", None, data="builtin",
                                                      max_new_tokens=128)
    res["info"] = ", ".join(f"{k} {v:.1%}" if k != "ppo_reward" else f"{k} {v:+.3f}"
                            for k, v in res["metrics"].items())
    return res


LONG_CONTEXT_VARIANTS: dict[str, dict[str, Any]] = {
    "plain RoPE": {"rope_scaling": "none", "logn": False},
    "dynamic NTK + LogN": {"rope_scaling": "ntk", "logn": True},
    "NTK + LogN + windows": {"rope_scaling": "ntk", "logn": True, "window_sizes": "WINDOWS"},
}
"""The report's Table 3 at nano scale: the base model past its training length with plain RoPE,
with the release's dynamic NTK and LogN, and with layer-wise windows added (short low, full high)."""


def heldout_text(packed: Path, val_sequences: int, tokenizer: Any, out: Path) -> Path:
    """The pretraining run's validation rows (the last ``val_sequences`` packed rows, never trained
    on) decoded back to text, for the perplexity task."""
    from openqwen.data.packing import PackedDataset

    ds = PackedDataset(packed)
    docs = [tokenizer.decode([int(t) for t in ds[i]]) for i in range(len(ds) - val_sequences, len(ds))]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(d.replace("<|endoftext|>", "\n") for d in docs))
    return out


def long_context_shape(model_dir: Path, text: Path, seq_len: int, layers: int) -> dict[str, dict[int, float]]:
    """Perplexity of the held-out text at 1x, 2x and 4x the training length under each of
    :data:`LONG_CONTEXT_VARIANTS` (windows: the lower half of the layers see ``seq_len // 2``)."""
    from openqwen.eval.harness import EvalConfig, run_eval

    lengths = [seq_len, 2 * seq_len, 4 * seq_len]
    half = layers // 2
    windows = f"{half}x{seq_len // 2},{layers - half}x{4 * seq_len}"
    curves = {}
    for label, settings in LONG_CONTEXT_VARIANTS.items():
        settings = {k: (windows if v == "WINDOWS" else v) for k, v in settings.items()}
        res = run_eval(EvalConfig(model=str(model_dir), task="perplexity", data=str(text), context_lengths=lengths,
                                  max_windows=8, long_context=settings, progress=False))
        curves[label] = {L: res["metrics"][f"perplexity@{L}"] for L in lengths}
    return curves
