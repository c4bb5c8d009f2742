"""The tool-use benchmark (the report's Table 6 metrics) through ``openqwen serve`` and the official
``openai`` SDK: the bundled 210 cases (or a JSONL file of the same shape), each sent as a chat
completion with its ``tools``, read back from the response's ``tool_calls``, scored by
``openqwen/eval/tasks/tools.py``'s rule (``score_calls``), and compared case by case with an
engine-direct run of ``openqwen eval --task tools`` (``--engine-results``: its ``--output`` JSON).

    .venv/bin/python -m benchmarks.bench_tools_serve \\
        --model ~/.cache/openqwen-artifacts/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \\
        --results runs/tools/serve-full.jsonl --engine-results runs/agent/tools-coder05-14.json

Resumable: every answered case is appended to ``--results`` at once (a line of JSON), and a rerun
skips the cases already there, so a long run on a shared machine can be stopped and continued. The
cases are sent in an order that interleaves the categories, so a partial run is a fair sample.
``--url`` uses a server already running instead of starting one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from benchmarks.servers import free_port, wait_until_up
from openqwen.eval.tasks.tools import load_tool_cases, score_calls, tool_metrics
from openqwen.serve.tools import TOOL_CALL_START

ROOT = Path(__file__).resolve().parent.parent


def interleaved(cases: list) -> list:
    """Cases ordered so that every prefix holds the categories in their overall proportions."""
    by_cat: dict[str, list] = {}
    for c in cases:
        by_cat.setdefault(c.category, []).append(c)
    keyed = [((i + 0.5) / len(group), cat, c) for cat, group in by_cat.items() for i, c in enumerate(group)]
    return [c for _, _, c in sorted(keyed, key=lambda k: (k[0], k[1]))]


def start_server(model: str, dtype: str, max_batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(Path(sys.executable).with_name("openqwen")), "serve", "--model", model, "--dtype", dtype, "--port", str(port),
           "--max-batch-size", str(max_batch), "--served-model-name", "bench", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url, "/health", timeout_s=900, poll_s=2, what="openqwen serve")
    except RuntimeError as e:
        raise SystemExit(f"{e}; see {log}") from None
    return proc, url


def ask(client, case, max_tokens: int) -> dict:
    t0 = time.time()
    r = client.chat.completions.create(model="bench", messages=case.messages, tools=case.tools,
                                       temperature=0, max_tokens=max_tokens)
    msg = r.choices[0].message
    calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in (msg.tool_calls or [])]
    return {"id": case.id, "category": case.category, "content": msg.content or "", "calls": calls,
            "finish_reason": r.choices[0].finish_reason, "completion_tokens": r.usage.completion_tokens,
            "prompt_tokens": r.usage.prompt_tokens, "seconds": round(time.time() - t0, 2)}


def score(rows: dict[str, dict], cases: list) -> tuple[dict, dict, list]:
    scores = []
    for c in cases:
        row = rows.get(c.id)
        if row is None:
            continue
        content = row["content"]
        # a call the server could not read stays in the content: attempted, and a parse failure
        unread = TOOL_CALL_START in content
        scores.append(score_calls(row["calls"], bool(row["calls"]) or unread, unread, c, content))
    metrics, counts = tool_metrics(scores)
    counts.pop("bare_calls", None)  # the server reads bare call objects into tool_calls: not visible here
    return metrics, counts, scores


def compare_engine(scores: list, engine_json: Path) -> dict:
    """Per case: do the served calls (names and arguments as objects) equal the engine-direct ones?"""
    from openqwen.serve.tools import arguments_object

    data = json.loads(engine_json.read_text())
    engine = {d["id"]: d for d in data["details"] if "needs_tool" in d}
    same, differ = [], []
    for s in scores:
        e = engine.get(s.id)
        if e is None:
            continue
        a = [(c["name"], arguments_object(c["arguments"])) for c in s.calls]
        b = [(c["name"], arguments_object(c["arguments"])) for c in e["calls"]]
        (same if a == b else differ).append(s.id)
    from openqwen.eval.tasks.tools import CaseScore

    sub = [s for s in scores if s.id in engine]
    m, c = tool_metrics(sub)
    em, ec = tool_metrics([CaseScore(**engine[s.id]) for s in sub])  # the engine run on the same cases
    return {"cases": len(sub), "same_calls": len(same), "differ": differ, "served_metrics_on_subset": m,
            "served_counts_on_subset": c, "engine_metrics_on_subset": em, "engine_counts_on_subset": ec}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(Path("~/.cache/openqwen-artifacts/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf").expanduser()))
    p.add_argument("--data", default=None, help="a JSONL file of cases (default: the bundled 210)")
    p.add_argument("--dtype", default="fp32", help="the server's --dtype (default fp32, as the engine-direct run)")
    p.add_argument("--max-tokens", type=int, default=96, help="per reply (default 96, as the engine-direct run)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight (the server batches them)")
    p.add_argument("--limit", type=int, default=0, help="only the first N cases of the interleaved order")
    p.add_argument("--results", default="runs/tools/serve-full.jsonl", help="answers, one JSON line per case")
    p.add_argument("--engine-results", default=None, help="an `openqwen eval --task tools --output` JSON to compare with")
    p.add_argument("--url", default=None, help="a running server's base URL (default: start one)")
    p.add_argument("--score-only", action="store_true", help="score --results without asking anything")
    args = p.parse_args(argv)

    cases = interleaved(load_tool_cases(args.data))
    if args.limit:
        cases = cases[: args.limit]
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    if out.exists():
        for line in out.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["id"]] = row
    todo = [c for c in cases if c.id not in rows]
    proc = None
    if todo and not args.score_only:
        from openai import OpenAI

        if args.url:
            url = args.url
        else:
            proc, url = start_server(args.model, args.dtype, max(args.concurrency, 1), out.with_suffix(".server.log"))
        client = OpenAI(base_url=url + "/v1", api_key="none", timeout=3600, max_retries=0)
        t0 = time.time()
        print(f"{len(rows)} cases answered before, {len(todo)} to go; server {url}", flush=True)
        try:
            with ThreadPoolExecutor(args.concurrency) as pool, out.open("a") as f:
                futures = [pool.submit(ask, client, c, args.max_tokens) for c in todo]
                for n, fut in enumerate(as_completed(futures), 1):
                    row = fut.result()
                    rows[row["id"]] = row
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()
                    rate = (time.time() - t0) / n
                    print(f"[{n}/{len(todo)}] {row['id']}: {len(row['calls'])} call(s), {row['completion_tokens']} tokens, "
                          f"{row['seconds']} s; ~{rate * (len(todo) - n) / 60:.0f} min left", flush=True)
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    metrics, counts, scores = score(rows, cases)
    report = {"model": args.model, "dtype": args.dtype, "max_tokens": args.max_tokens, "answered": len(scores),
              "of": len(cases), "metrics": metrics, "counts": counts,
              "prompt_tokens_mean": sum(rows[s.id]["prompt_tokens"] for s in scores) / max(len(scores), 1),
              "finish_reasons": {r: sum(rows[s.id]["finish_reason"] == r for s in scores)
                                 for r in sorted({rows[s.id]["finish_reason"] for s in scores})}}
    if args.engine_results:
        report["engine_direct"] = compare_engine(scores, Path(args.engine_results))
    print(json.dumps(report, indent=1))
    out.with_suffix(".summary.json").write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    sys.exit(main())
