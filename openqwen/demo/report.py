"""The demo's report: ``report.md`` and ``report.html`` with every model x metric, the gain of each
stage over the model it started from, the goals of the demo (met or not, never hidden), the loss and
reward curves, the long-context plot, before/after samples and the command to chat with each model.

Everything here is computed from the run's records (``stages.json``), so a resumed demo writes the
same report as one that ran straight through.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

PARENT = {"sft": "base", "ppo": "sft", "code-continue": "base", "code-sft": "code-continue", "math": "sft",
          "agent": "sft"}
"""The model each stage starts from: its gain is measured against that model."""

STAGE_METRIC = {"sft": "instructions", "ppo": "ppo_task", "code-continue": "pass@1", "code-sft": "pass@1",
                "math": "math", "agent": "tool_selection"}
"""The held-out metric that shows each model stage's gain."""

METRIC_LABELS = {"instructions": "instructions", "arithmetic": "arithmetic", "ppo_task": "PPO task (preferred)",
                 "ppo_correct": "PPO task (right number)", "ppo_reward": "RM reward", "math": "math", "pass@1": "code pass@1",
                 "tool_selection": "tool selection", "tool_false_pos": "tool false positives",
                 "agent_answers": "agent answers"}

GOALS = (("instructions", "sft", 0.50, "held-out instruction accuracy after SFT >= 50 %"),
         ("arithmetic", "math", 0.50, "held-out arithmetic after the math stage >= 50 %"))
"""Absolute goals of the 15-minute demo: (metric, model, threshold, text)."""


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _fmt(metric: str, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:+.3f}" if metric == "ppo_reward" else _pct(v)


def goal_rows(evals: dict[str, dict[str, Any]], reward: dict[str, Any] | None,
              curves: dict[str, dict[int, float]] | None) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, met) for every goal of the demo; met None when the stage did not run."""
    m = {name: e["metrics"] for name, e in evals.items()}
    rows: list[tuple[str, str, bool | None]] = []
    for metric, model, threshold, text in GOALS:
        v = m.get(model, {}).get(metric)
        rows.append((text, _pct(v), None if v is None else v >= threshold))
    sft, ppo = m.get("sft", {}).get("ppo_task"), m.get("ppo", {}).get("ppo_task")
    rows.append(("PPO >= +5 points over SFT on its reward-checked task (preferred replies)",
                 "-" if sft is None or ppo is None else f"{_pct(sft)} -> {_pct(ppo)}",
                 None if sft is None or ppo is None else ppo - sft >= 0.05))
    for stage, parent in PARENT.items():
        if stage in ("sft", "ppo", "math"):
            continue  # covered by the goals above
        metric = STAGE_METRIC[stage]
        a, b = m.get(parent, {}).get(metric), m.get(stage, {}).get(metric)
        rows.append((f"{stage} better than {parent} on {METRIC_LABELS[metric]}",
                     "-" if a is None or b is None else f"{_pct(a)} -> {_pct(b)}",
                     None if a is None or b is None else b > a))
    a, b = m.get("sft", {}).get("tool_false_pos"), m.get("agent", {}).get("tool_false_pos")
    rows.append(("agent calls no more tools than sft where none is needed (false positives)",
                 "-" if a is None or b is None else f"{_pct(a)} -> {_pct(b)}", None if a is None or b is None else b <= a))
    acc = (reward or {}).get("heldout_accuracy")
    rows.append(("reward model better than chance on held-out pairs", _pct(acc), None if acc is None else acc > 0.5))
    if curves and "plain RoPE" in curves and "dynamic NTK + LogN" in curves:
        longest = max(curves["plain RoPE"])
        plain, ntk = curves["plain RoPE"][longest], curves["dynamic NTK + LogN"][longest]
        rows.append((f"NTK + LogN below plain RoPE at {longest} tokens (4x training)",
                     f"{plain:.1f} -> {ntk:.1f}", ntk < plain))
    return rows


def model_table(evals: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the model x metric table (``-`` where a metric does not fit a model);
    the stage's own metric carries its gain over the parent in brackets."""
    metrics = [k for k in METRIC_LABELS if any(k in e["metrics"] for e in evals.values())]
    header = ["model", "starts from"] + [METRIC_LABELS[k] for k in metrics]
    rows = []
    for name, e in evals.items():
        row = [name, PARENT.get(name, "-")]
        for k in metrics:
            v = e["metrics"].get(k)
            cell = _fmt(k, v)
            parent = PARENT.get(name)
            pv = evals.get(parent, {}).get("metrics", {}).get(k) if parent else None
            if v is not None and pv is not None and k != "ppo_reward":
                cell += f" ({(v - pv) * 100:+.1f})"
            row.append(cell)
        rows.append(row)
    return header, rows


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", "⏎")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def sections(out: Path, records: dict[str, Any], quick: bool) -> list[tuple[str, list[str], list[list[str]]]]:
    """The report's tables as (title, header, rows): stages and times, models x metrics, goals,
    long-context perplexity, samples. Shared by the markdown and the HTML page."""
    evals = {k.split(":", 1)[1]: v for k, v in records.items() if k.startswith("eval:")}
    stage_rows = [[name, f"{r.get('seconds', 0):.0f}", r.get("info", "")] for name, r in records.items()]
    total = sum(r.get("seconds", 0) for r in records.values())
    stage_rows.append(["total", f"{total:.0f}", f"{total / 60:.1f} minutes{' (quick size)' if quick else ''}"])
    out_sections = [("Stages", ["stage", "seconds", "result"], stage_rows)]
    header, rows = model_table(evals)
    out_sections.append(("Every model on every held-out task that fits it (gain over the model it started "
                         "from, in points)", header, rows))
    curves = records.get("long-context", {}).get("curves")
    curves = {k: {int(L): v for L, v in c.items()} for k, c in curves.items()} if curves else None
    goals = [[g, measured, {True: "met", False: "NOT met", None: "not run"}[met]]
             for g, measured, met in goal_rows(evals, records.get("reward"), curves)]
    out_sections.append(("Goals", ["goal", "measured", "status"], goals))
    if curves:
        lengths = sorted(next(iter(curves.values())))
        out_sections.append(("Long context: perplexity of held-out text past the training length",
                             ["variant"] + [f"{L} tokens" for L in lengths],
                             [[k] + [f"{c[L]:.1f}" for L in lengths] for k, c in curves.items()]))
    for name, e in evals.items():
        parent = PARENT.get(name)
        for kind, rows_ in e.get("samples", {}).items():
            before = evals.get(parent, {}).get("samples", {}).get(kind) if parent else None
            if kind == "raw":
                out_sections.append((f"{name}: raw-text continuations", ["prompt", "continuation"],
                                     [[p, c] for p, c in rows_]))
            elif kind == "chat":
                head = ["prompt", f"{parent}" if before else "", name] if before else ["prompt", name]
                data = [[p, b[1], c] for (p, c), b in zip(rows_, before)] if before else [[p, c] for p, c in rows_]
                out_sections.append((f"{name}: chat samples (greedy)", [h for h in head if h], data))
            else:
                data = [[q, a, r] for q, r, a in rows_[:5]]
                out_sections.append((f"{name}: {kind}, first held-out questions", ["question", "answer", "reply"],
                                     data))
    folders = {name: out / ("pretrain" if name == "base" else name) for name in evals}
    chat = [[name, f"openqwen chat --model {f}", f"openqwen serve --model {f}"] for name, f in folders.items()]
    out_sections.append(("Chat with each model, or serve it (OpenAI API)", ["model", "chat", "serve"], chat))
    return out_sections


def write_report(out: Path, records: dict[str, Any], quick: bool, plots: list[str]) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out``; ``plots`` are image files in ``out``."""
    parts = sections(out, records, quick)
    md = ["# openqwen demo report", "", "The Qwen recipe at nano scale, every stage measured on held-out data.", ""]
    page = ["<!doctype html><html><head><meta charset='utf-8'><title>openqwen demo report</title><style>"
            "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
            "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;"
            "text-align:left;vertical-align:top;white-space:pre-wrap}th{background:#f3f3f3}"
            "img{max-width:100%;border:1px solid #ddd}</style></head><body>",
            "<h1>openqwen demo report</h1><p>The Qwen recipe at nano scale, every stage measured on held-out "
            "data.</p>"]
    for k, (title, header, rows) in enumerate(parts):
        md += [f"## {title}", ""] + _md_table(header, rows) + [""]
        page.append(f"<h2>{html.escape(title)}</h2>{_html_table(header, rows)}")
        if k == 2:  # the plots after the goals
            for p in plots:
                md += [f"![{p}]({p})", ""]
                page.append(f"<p><img src='{html.escape(p)}' alt='{html.escape(p)}'></p>")
    page.append("</body></html>")
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md))
    html_path.write_text("\n".join(page))
    (out / "demo.json").write_text(json.dumps(records, indent=1, default=str) + "\n")
    return md_path, html_path
