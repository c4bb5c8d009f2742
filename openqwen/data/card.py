"""The data card of a pipeline run: ``data_card.md`` and ``data_card.png`` in the run folder.

What went in and what came out, from the stage manifests alone (no second pass over the data):
sources with their licences and sizes before and after, documents and bytes after every stage,
removals by stage and reason (with example documents), and the language mix of the output.
Licences come from a ``manifest.json`` with a ``sources`` table beside the inputs (the demo
corpus and the web sample write one); a source without one is listed as ``not recorded``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .io import MANIFEST, list_input_files


def input_licences(inputs: Any) -> dict[str, str]:
    """source -> licence, from the ``sources`` tables of manifests next to the input files."""
    out: dict[str, str] = {}
    seen: set[Path] = set()
    try:
        files = list_input_files(inputs)
    except (ValueError, FileNotFoundError):
        return out
    for f in files:
        for folder in (f.parent, f.parent.parent):
            m = folder / MANIFEST
            if m in seen or not m.exists():
                continue
            seen.add(m)
            try:
                sources = json.loads(m.read_text(encoding="utf-8")).get("sources", {})
            except (OSError, ValueError):
                continue
            for name, info in sources.items():
                if isinstance(info, dict) and info.get("licence"):
                    out.setdefault(name, info["licence"])
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:.3g}"


def data_card_markdown(summary: dict[str, Any], licences: dict[str, str], plot_name: str | None) -> str:
    stages = summary["stages"]
    first, last = stages[0], stages[-1]
    lines = ["# Data card", "",
             f"Run folder `{Path(summary['output']).parent}`: {summary['docs_in']} input documents "
             f"({_mb(summary['bytes_in'])} MB) -> {summary['docs_out']} documents "
             f"({_mb(sum(v[1] for v in (last.get('sources_out') or {}).values()))} MB) in "
             f"{summary['seconds']:.1f} s; stages {', '.join(s['stage'] for s in stages)}.", ""]
    if plot_name:
        lines += [f"![sizes, removals and languages]({plot_name})", ""]
    lines += ["## Sources", "", "| source | licence | documents in | MB in | documents out | MB out |",
              "|---|---|---:|---:|---:|---:|"]
    s_in, s_out = first.get("sources_in") or {}, last.get("sources_out") or {}
    for src in sorted(set(s_in) | set(s_out)):
        a, b = s_in.get(src, [0, 0]), s_out.get(src, [0, 0])
        lines.append(f"| {src} | {licences.get(src, 'not recorded')} | {a[0]} | {_mb(a[1])} | {b[0]} | {_mb(b[1])} |")
    lines += ["", "## Stages", "", "| stage | documents in | MB in | kept | MB kept | removed | errors | added |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in stages:
        lines.append(f"| {s['stage']} | {s['docs_in']} | {_mb(s['bytes_in'])} | {s['kept']} | {_mb(s['bytes_kept'])} | "
                     f"{sum((s['removed'] or {}).values())} | {s['errors']} | {s.get('added') or 0} |")
    lines += ["", "## Removals by reason", "", "| stage | reason | documents | e.g. |", "|---|---|---:|---|"]
    for s in stages:
        examples = s.get("removed_examples") or {}
        for reason, n in sorted((s["removed"] or {}).items(), key=lambda kv: -kv[1]):
            eg = "; ".join(f"`{e}`" for e in examples.get(reason, [])[:2]).replace("|", "\\|")
            lines.append(f"| {s['stage']} | {reason} | {n} | {eg} |")
    errors = sum(s["errors"] for s in stages)
    if errors:
        lines += ["", f"{errors} unreadable records in all (file and line in each stage's manifest)."]
    langs = last.get("langs_out") or {}
    if langs:
        total = sum(langs.values())
        lines += ["", "## Language mix of the output", "", "| language | documents | share |", "|---|---:|---:|"]
        for lang, n in sorted(langs.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {lang} | {n} | {n / total:.1%} |")
    return "\n".join(lines) + "\n"


def plot_data_card(summary: dict[str, Any], out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = summary["stages"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    names = [s["stage"] for s in stages]
    mb_in = [s["bytes_in"] / 1e6 for s in stages]
    mb_kept = [s["bytes_kept"] / 1e6 for s in stages]
    x = range(len(names))
    axes[0].bar([i - 0.2 for i in x], mb_in, 0.4, label="in")
    axes[0].bar([i + 0.2 for i in x], mb_kept, 0.4, label="kept")
    axes[0].set_xticks(list(x), names, rotation=45, ha="right")
    axes[0].set_ylabel("MB")
    axes[0].set_title("size before / after each stage")
    axes[0].legend()
    reasons = [(f"{s['stage']}: {r}", n) for s in stages for r, n in (s["removed"] or {}).items()]
    reasons.sort(key=lambda kv: kv[1])
    if reasons:
        axes[1].barh([r for r, _ in reasons], [n for _, n in reasons])
    axes[1].set_xlabel("documents")
    axes[1].set_title("removals by reason")
    langs = sorted((stages[-1].get("langs_out") or {}).items(), key=lambda kv: -kv[1])
    if langs:
        axes[2].bar([k for k, _ in langs], [v for _, v in langs])
    axes[2].set_ylabel("documents")
    axes[2].set_title("language mix of the output")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png


def write_data_card(run_dir: str | Path, summary: dict[str, Any], inputs: Any, plot: bool = True) -> Path:
    """Write ``data_card.md`` (and ``data_card.png`` when ``plot``) into ``run_dir``; returns the card."""
    run_dir = Path(run_dir)
    png = plot_data_card(summary, run_dir / "data_card.png").name if plot else None
    card = run_dir / "data_card.md"
    card.write_text(data_card_markdown(summary, input_licences(inputs), png), encoding="utf-8")
    return card
