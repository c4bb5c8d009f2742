"""Two sets of HumanEval chat completions of one model, compared problem by problem (docs/results.md).

Each side is an ``openqwen eval --output`` JSON (its details) or a completions JSON-lines file. Both
are cut at EvalPlus' chat stop strings (what a greedy decode with those stops would have produced, so
a run made without them compares with one made with them) and scored by the same sandboxed program
``openqwen eval`` builds (sanitized). Printed and written to ``--out``: the pass count of each, the
problems only one side passes, and how many completions are the same text.

    .venv/bin/python benchmarks/humaneval_diff.py --a docs/results/humaneval-coder0.5b-chat.completions.jsonl \\
        --b runs/eval/humaneval-evalplus.json --out runs/eval/humaneval-diff.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.humaneval_peer import cut_at_stops, read_ours  # noqa: E402
from openqwen.artifacts import artifact_path  # noqa: E402
from openqwen.eval.sandbox import run_many  # noqa: E402
from openqwen.eval.tasks import code  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="the first completions (eval JSON or JSON lines)")
    ap.add_argument("--b", required=True, help="the second completions")
    ap.add_argument("--humaneval", default=None, help="HumanEval.jsonl(.gz); default: the fetched artifact")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    problems = code.load_humaneval(args.humaneval or artifact_path("humaneval"))
    sides = {name: read_ours(Path(path)) for name, path in (("a", args.a), ("b", args.b))}
    for name, got in sides.items():
        if sorted(got) != list(range(len(problems))):
            sys.exit(f"humaneval_diff: --{name} has {len(got)} of the {len(problems)} problems; give a complete run")
    cut = {name: [cut_at_stops(got[i]) for i in range(len(problems))] for name, got in sides.items()}
    passed = {name: [r.passed for r in run_many([code.build_program(p, c, "chat") for p, c in zip(problems, texts)],
                                                10.0, 1024, progress=False)]
              for name, texts in cut.items()}
    ids = [p.task_id for p in problems]
    summary = {
        "problems": len(problems),
        "a_pass": sum(passed["a"]), "b_pass": sum(passed["b"]),
        "same_text": sum(x == y for x, y in zip(cut["a"], cut["b"])),
        "same_text_and_result": sum(x == y and pa == pb for x, y, pa, pb in zip(cut["a"], cut["b"], passed["a"], passed["b"])),
        "only_a": [t for t, pa, pb in zip(ids, passed["a"], passed["b"]) if pa and not pb],
        "only_b": [t for t, pa, pb in zip(ids, passed["a"], passed["b"]) if pb and not pa],
    }
    print(json.dumps(summary))
    rows = [{"task_id": t, "a_passed": pa, "b_passed": pb, "same_text": x == y, "a": x, "b": y}
            for t, pa, pb, x, y in zip(ids, passed["a"], passed["b"], cut["a"], cut["b"])]
    Path(args.out).write_text(json.dumps({"a": args.a, "b": args.b, "summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
