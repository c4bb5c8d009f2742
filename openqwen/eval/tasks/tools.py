"""The report's tool-use metrics (its Table 6) and the code interpreter's (executable rate, math
correctness), on the bundled benchmark or a JSONL file of the same shape.

Metrics, as the release's evaluation script defines them, with its known flaw fixed:

* **tool selection accuracy**: on cases that need tools, the called names (lower-cased, as a
  multiset: parallel cases need every call) equal the gold ones;
* **tool input Rouge-L**: the F1 of the longest common subsequence between the generated and the
  gold arguments, both written as JSON with sorted keys, over word and punctuation tokens; per case
  the mean over its gold calls, each paired with the first unused generated call of the same name
  (a missing call scores 0); averaged over every case that needs tools;
* **false-positive rate**: on cases that need no tool, the share of outputs that call one;
* **parse failures** are counted apart from **abstentions**: an output that tries to call (a
  ``<tool_call>`` or an ``Action:``) but cannot be read (arguments that are not a JSON object
  included) is a parse failure, not a "no call", and scores 0 on selection and input (the
  release's script misread outputs with several actions; its own note says so).

Outputs are read in the model's format: Qwen2.5's ``<tool_call>`` JSON when its chat template knows
tools (``style="hermes"``; a reply made only of call objects without the tags counts too, and
``counts["bare_calls"]`` says how many outputs were read that way), else the first generation's
ReAct (``style="react"``, one call per step, so parallel cases can only score their first call).

Code interpreter: each bundled math question is asked with the ``python`` tool offered; the code of
the model's call (or of its first fenced code block) runs in the evaluation sandbox. **Executable
rate**: the share of answers whose code runs without error; **correctness**: the share whose
execution output contains the gold number (the report also asks the final answer to; that second
turn is not generated here).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from ...agent.fncall import read_calls
from ...data.io import read_json_lines
from ...serve.tools import TOOL_CALL_START, arguments_object, bare_json_calls
from ...tokenizer.react import parse_react

__all__ = ["CodeCase", "ToolCase", "CaseScore", "bundled_path", "load_code_cases", "load_tool_cases",
           "normalise_arguments", "rouge_l_f1", "score_calls", "score_output", "tool_metrics", "code_metrics", "extract_code",
           "run_tools"]

STYLES = ("hermes", "react")


@dataclass
class ToolCase:
    id: str
    category: str
    messages: list[dict]
    tools: list[dict]
    gold: list[dict]
    """Expected calls: ``{"name": ..., "arguments": {...}}``; empty when no tool should be called."""


@dataclass
class CodeCase:
    id: str
    question: str
    answer: float


@dataclass
class CaseScore:
    id: str
    category: str
    needs_tool: bool
    calls: list[dict] = field(default_factory=list)
    attempted: bool = False
    """The output tried to call a tool (readable or not)."""
    parse_failed: bool = False
    selection_correct: bool = False
    rouge_l: float = 0.0
    output: str = ""


def bundled_path(name: str = "tool_bench.jsonl") -> Path:
    """A file of the bundled benchmark (package data of openqwen.agent)."""
    return Path(str(resources.files("openqwen.agent").joinpath("data", name)))


def load_tool_cases(path: str | Path | None = None) -> list[ToolCase]:
    """Cases from a JSONL file (default: the bundled benchmark). Each line: ``messages`` (OpenAI
    form), ``tools`` (OpenAI function schemas), ``gold`` (list of ``{"name", "arguments"}``), and
    optionally ``id`` and ``category``."""
    p = Path(path).expanduser() if path else bundled_path()
    if not p.exists():
        raise FileNotFoundError(f"tool benchmark {p} does not exist")
    cases = []
    for n, row in read_json_lines(p):
        missing = [k for k in ("messages", "tools", "gold") if not isinstance(row.get(k), list)]
        if missing:
            raise ValueError(f"{p}:{n}: needs the lists {', '.join(missing)} (messages, tools, gold)")
        for g in row["gold"]:
            if not isinstance(g, dict) or not isinstance(g.get("name"), str) or not isinstance(g.get("arguments", {}), dict):
                raise ValueError(f"{p}:{n}: each gold call is {{'name': str, 'arguments': object}}, got {g!r:.80}")
        names = offered_names(row["tools"])
        unknown = [g["name"] for g in row["gold"] if g["name"] not in names]
        if unknown:
            raise ValueError(f"{p}:{n}: gold calls {unknown} name tools the case does not offer")
        category = row.get("category") or ("no_tool" if not row["gold"] else "parallel" if len(row["gold"]) > 1 else "single")
        cases.append(ToolCase(str(row.get("id", f"line-{n}")), category, row["messages"], row["tools"], row["gold"]))
    if not cases:
        raise ValueError(f"{p} holds no cases")
    return cases


def load_code_cases(path: str | Path | None = None) -> list[CodeCase]:
    """Math questions for the code interpreter: ``question`` and a numeric ``answer`` per line."""
    p = Path(path).expanduser() if path else bundled_path("code_bench.jsonl")
    cases = []
    for n, row in read_json_lines(p):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), (int, float)):
            raise ValueError(f"{p}:{n}: needs 'question' (text) and a numeric 'answer'")
        cases.append(CodeCase(str(row.get("id", f"line-{n}")), row["question"], float(row["answer"])))
    return cases


# ------------------------------------------------------------------------------ the metrics
_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalise_arguments(arguments: Any) -> str | None:
    """Arguments (an object or its JSON text) as JSON with sorted keys; None when not a JSON object."""
    arguments = arguments_object(arguments)
    return None if arguments is None else json.dumps(arguments, sort_keys=True, ensure_ascii=False)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """Rouge-L F1 (beta 1) over word/punctuation tokens."""
    p, r = _TOKEN.findall(prediction), _TOKEN.findall(reference)
    if not p or not r:
        return float(p == r)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def offered_names(tools: Sequence[dict]) -> set[str]:
    """The names of the tools a case offers (OpenAI function schemas, or bare ``{"name": ...}``)."""
    return {t.get("function", t).get("name") for t in tools if isinstance(t, dict)}


def _read_calls(text: str, style: str, names: set[str] | None = None) -> tuple[list[dict], bool, bool]:
    """(calls as {"name", "arguments": JSON text}, attempted, parse_failed) of one output. A reply of
    bare call objects counts as calls only when they name tools in ``names`` (as the server reads it)."""
    if style == "hermes":
        _, calls, _ = read_calls(text, names)
        attempted = TOOL_CALL_START in text or bool(calls)
        out = [{"name": c.name, "arguments": c.arguments} for c in calls]
        failed = attempted and (not out or any(normalise_arguments(c["arguments"]) is None for c in out)
                                or text.count(TOOL_CALL_START) > len(out))
        return out, attempted, failed
    step = parse_react(text)
    attempted = step.action is not None or bool(re.search(r"^\s*Action\s*:", text, re.M))
    if step.action is None:
        return [], attempted, attempted
    args = step.action_input or ""
    failed = normalise_arguments(args) is None
    return [{"name": step.action.strip(), "arguments": args}], True, failed


def score_output(text: str, case: ToolCase, style: str) -> CaseScore:
    """Score one generated output against its case."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    calls, attempted, failed = _read_calls(text, style, offered_names(case.tools))
    return score_calls(calls, attempted, failed, case, text)


def score_calls(calls: list[dict], attempted: bool, parse_failed: bool, case: ToolCase, output: str = "") -> CaseScore:
    """Score calls already read (``{"name", "arguments"}``, e.g. an API response's ``tool_calls``)
    against their case: the one scoring rule of :func:`score_output` and of the served benchmark."""
    s = CaseScore(case.id, case.category, bool(case.gold), calls, attempted, parse_failed, output=output)
    failed = parse_failed or any(normalise_arguments(c["arguments"]) is None for c in calls)
    s.parse_failed = failed
    if not case.gold or failed:  # an output that cannot be read scores nothing
        return s
    names = Counter(c["name"].strip().lower() for c in calls)
    s.selection_correct = names == Counter(g["name"].lower() for g in case.gold)
    used: set[int] = set()
    total = 0.0
    for g in case.gold:
        ref = normalise_arguments(g.get("arguments", {})) or "{}"
        k = next((i for i, c in enumerate(calls) if i not in used and c["name"].strip().lower() == g["name"].lower()), None)
        if k is None:
            continue
        used.add(k)
        got = normalise_arguments(calls[k]["arguments"])
        total += rouge_l_f1(got if got is not None else str(calls[k]["arguments"]), ref)
    s.rouge_l = total / len(case.gold)
    return s


def tool_metrics(scores: Sequence[CaseScore]) -> tuple[dict[str, float], dict[str, int]]:
    """(metrics, counts) over scored cases."""
    tool = [s for s in scores if s.needs_tool]
    free = [s for s in scores if not s.needs_tool]
    counts = {"total": len(scores), "tool_cases": len(tool), "no_tool_cases": len(free),
              "selection_correct": sum(s.selection_correct for s in tool),
              "false_positives": sum(s.attempted for s in free),
              "parse_failures": sum(s.parse_failed for s in scores),
              "abstentions": sum(not s.attempted for s in tool),
              "bare_calls": sum(bool(s.calls) and TOOL_CALL_START not in s.output and "Action" not in s.output
                                and bare_json_calls(s.output, None) is not None for s in scores)}
    metrics = {
        "tool_selection_accuracy": counts["selection_correct"] / len(tool) if tool else float("nan"),
        "tool_input_rouge_l": sum(s.rouge_l for s in tool) / len(tool) if tool else float("nan"),
        "false_positive_rate": counts["false_positives"] / len(free) if free else float("nan"),
        "parse_failure_rate": counts["parse_failures"] / len(scores) if scores else float("nan"),
    }
    for cat in sorted({s.category for s in tool}):
        sub = [s for s in tool if s.category == cat]
        metrics[f"tool_selection_accuracy_{cat}"] = sum(s.selection_correct for s in sub) / len(sub)
    return metrics, counts


# ------------------------------------------------------------------------------ code interpreter
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def extract_code(text: str, style: str) -> str | None:
    """The code of the model's ``python`` call, else of its first fenced block; None when neither."""
    calls, _, _ = _read_calls(text, style)
    for c in calls:
        if c["name"].strip().lower() in ("python", "code_interpreter"):
            try:
                args = json.loads(c["arguments"])
            except (json.JSONDecodeError, TypeError):
                continue
            code = args.get("code") if isinstance(args, dict) else None
            if isinstance(code, str) and code.strip():
                return code
    m = _FENCE.search(text)
    return m.group(1) if m else None


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _contains_number(text: str, want: float) -> bool:
    for tok in _NUMBER.findall(text):
        try:
            v = float(tok.replace(",", ""))
        except ValueError:
            continue
        if abs(v - want) <= 1e-6 * max(1.0, abs(want)):
            return True
    return False


def code_metrics(cases: Sequence[CodeCase], outputs: Sequence[str], style: str, timeout_s: float = 10.0,
                 memory_mb: int = 512) -> tuple[dict[str, float], list[dict]]:
    """Run each output's code in the sandbox; (metrics, details). A last bare expression is printed,
    as a notebook would show it."""
    from ..sandbox import run_many  # noqa: PLC0415

    codes = [extract_code(o, style) for o in outputs]
    runnable = [(i, _show_last_expression(c)) for i, c in enumerate(codes) if c is not None]
    results = dict(zip([i for i, _ in runnable], run_many([c for _, c in runnable], timeout_s, memory_mb)))
    details = []
    for i, (case, code) in enumerate(zip(cases, codes)):
        r = results.get(i)
        executable = r is not None and r.passed
        details.append({"id": case.id, "has_code": code is not None, "executable": executable,
                        "correct": executable and _contains_number(r.stdout, case.answer),
                        "reason": "" if r is None else r.reason, "stdout": "" if r is None else r.stdout[-500:]})
    n = len(cases)
    return ({"code_executable_rate": sum(d["executable"] for d in details) / n if n else float("nan"),
             "code_correctness": sum(d["correct"] for d in details) / n if n else float("nan")}, details)


def _show_last_expression(code: str) -> str:
    import ast  # noqa: PLC0415

    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code  # runs, fails, and is counted as not executable
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        lines = code.splitlines()
        head = "\n".join(lines[: last.lineno - 1])
        expr = "\n".join(lines[last.lineno - 1:])
        return f"{head}\n__value = ({expr})\nif __value is not None:\n    print(__value)\n"
    return code


# ------------------------------------------------------------------------------ the task
def run_tools(model: Any, tok: Any, cfg: Any) -> dict[str, Any]:
    """``openqwen eval --task tools``: the tool metrics on ``cfg.data`` (default: bundled) and the
    code-interpreter metrics on the bundled math questions, generated greedily through the Engine."""
    from ...infer.engine import Engine  # noqa: PLC0415
    from ...infer.sampling import SamplingParams  # noqa: PLC0415
    from ...tokenizer.chat import chat_prompt_ids  # noqa: PLC0415
    from ...tokenizer.react import REACT_STOP  # noqa: PLC0415
    from ...tokenizer.template import ChatTemplate  # noqa: PLC0415

    cases = load_tool_cases(cfg.data)
    code_cases = load_code_cases()
    if cfg.limit:
        cases, code_cases = cases[: cfg.limit], code_cases[: cfg.limit]
    template = ChatTemplate.from_checkpoint(cfg.model)
    style = "hermes" if template is not None and template.knows_tools else "react"
    use_template = template if style == "hermes" else None
    max_new = cfg.max_new_tokens or 256
    window = model.config.max_position_embeddings - max_new - 1
    python_tool = {"type": "function", "function": {
        "name": "python", "description": "Run Python code in a sandboxed Jupyter kernel and return what it prints.",
        "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}}
    prompts = [chat_prompt_ids(tok, c.messages, window, tools=c.tools, template=use_template) for c in cases]
    prompts += [chat_prompt_ids(tok, [{"role": "user", "content": c.question + " Use the python tool to compute it."}],
                                window, tools=[python_tool], template=use_template) for c in code_cases]
    params = SamplingParams(max_new_tokens=max_new, greedy=True, temperature=0.0,
                            stop=[REACT_STOP] if style == "react" else [],
                            stop_token_ids=list(tok.stop_ids), skip_special_tokens=style == "react")
    longest = max(len(p) for p in prompts) + max_new + 1
    engine = Engine(model, tok, max_batch_size=cfg.batch_size,
                    max_seq_len=min(longest, model.config.max_position_embeddings))
    try:
        completions = engine.generate(prompts, params, progress=cfg.progress)
    finally:
        engine.close()
    texts = [c.text for c in completions]
    scores = [score_output(t, c, style) for t, c in zip(texts, cases)]
    metrics, counts = tool_metrics(scores)
    cmetrics, cdetails = code_metrics(code_cases, texts[len(cases):], style, cfg.timeout_s, cfg.memory_mb)
    metrics.update(cmetrics)
    counts["code_cases"] = len(code_cases)
    return {"metrics": metrics, "counts": counts, "settings": {"style": style, "max_new_tokens": max_new},
            "details": [vars(s) for s in scores] + cdetails}
