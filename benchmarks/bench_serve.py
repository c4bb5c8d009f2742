"""Serving throughput: aggregate tokens/s at 1, 4 and 16 concurrent streaming requests through the
OpenAI-compatible server, against the same engine called in process (the peer) in the same run.

    .venv/bin/python -m benchmarks.bench_serve                      # the real Qwen2.5-Coder-0.5B GGUF, int8 + fp32
    .venv/bin/python -m benchmarks.bench_serve --model nano --levels 1 4 16   # a random nano model, quick

Every request is a streaming ``/v1/completions`` call (``ignore_eos`` so each yields exactly
``--max-tokens`` tokens), sent by its own client thread over loopback HTTP; all requests of a level
start together. Aggregate tokens/s = all completion tokens / wall time of the level (first request
sent to last ``[DONE]``, prefill included). Writes ``docs/benchmarks/serving.md`` and ``serving.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from openqwen.infer.loading import DTYPE_CHOICES

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    "def fibonacci(n):", "import os\n\ndef list_files(path):", "class Stack:\n    def __init__(self):",
    "# quicksort in Python\ndef quicksort(xs):", "def is_prime(n):", "def read_json(path):",
    "def binary_search(xs, target):", "def merge(a, b):", "# sum of squares\ndef sum_squares(n):",
    "def reverse_words(s):", "def gcd(a, b):", "def flatten(nested):", "def count_vowels(text):",
    "def transpose(matrix):", "def celsius_to_fahrenheit(c):", "def unique(items):",
]


def load_engine(model: str, dtype: str, max_batch: int, max_seq_len: int):
    from openqwen.infer.engine import Engine

    if model != "nano":
        return Engine.from_pretrained(model, dtype=dtype, max_batch_size=max_batch, max_seq_len=max_seq_len), model
    from openqwen import Qwen, QwenTokenizer, get_preset
    from openqwen.artifacts import artifact_path

    # nano-10m shape over the real Qwen vocabulary (random weights: throughput does not care)
    torch.manual_seed(0)
    net = Qwen(get_preset("nano-10m", vocab_size=151936, max_position_embeddings=max_seq_len)).eval()
    tok = QwenTokenizer.from_pretrained(artifact_path("qwen-tiktoken"))
    return Engine(net, tok, max_batch_size=max_batch, max_seq_len=max_seq_len), "random nano-10m (152k vocab)"


def stream_one(url: str, name: str, prompt: str, max_tokens: int, out: dict, start: threading.Barrier) -> None:
    import httpx

    body = {"model": name, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    start.wait()
    t0 = time.perf_counter()
    first = None
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter()
            if chunk.get("usage"):
                out["tokens"] = chunk["usage"]["completion_tokens"]
    out["ttft"] = (first or time.perf_counter()) - t0
    out["latency"] = time.perf_counter() - t0


def run_server_level(url: str, name: str, n: int, max_tokens: int) -> dict:
    results = [dict() for _ in range(n)]
    barrier = threading.Barrier(n + 1)
    threads = [threading.Thread(target=stream_one, args=(url, name, PROMPTS[i % len(PROMPTS)], max_tokens,
                                                          results[i], barrier)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(r["tokens"] for r in results)
    assert tokens == n * max_tokens, f"expected {n * max_tokens} tokens, got {tokens}"
    return {"concurrency": n, "tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall,
            "cpu_s": cpu, "tok_per_cpu_s": tokens / cpu,
            "ttft_s": statistics.median(r["ttft"] for r in results),
            "per_request_tok_s": statistics.median(max_tokens / r["latency"] for r in results)}


def run_engine_level(engine, n: int, max_tokens: int) -> dict:
    from openqwen.infer.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=max_tokens, temperature=0, ignore_eos=True)
    t0, c0 = time.perf_counter(), time.process_time()
    out = engine.generate([PROMPTS[i % len(PROMPTS)] for i in range(n)], params)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(c.completion_tokens for c in out)
    return {"concurrency": n, "tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall,
            "cpu_s": cpu, "tok_per_cpu_s": tokens / cpu}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_report(args, label: str, runs: dict[str, dict], cmd: str) -> None:
    """runs: dtype -> {"server": rows, "peer": rows, "load_s": seconds}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    sections, summary = [], []
    for k, (dtype, run) in enumerate(runs.items()):
        server, peer = run["server"], run["peer"]
        base = server[0]["tok_per_s"]
        levels = [r["concurrency"] for r in server]
        color = f"C{k}"
        ax.plot(levels, [r["tok_per_s"] for r in server], "o-", color=color, label=f"{dtype}: through the server")
        ax.plot(levels, [r["tok_per_s"] for r in peer], "s--", color=color, alpha=0.6,
                label=f"{dtype}: engine.generate in process (peer)")
        peer_by = {r["concurrency"]: r for r in peer}
        cpu_base = server[0]["tok_per_cpu_s"]
        rows = "\n".join(
            f"| {dtype} | {r['concurrency']} | {r['tokens']} | {r['wall_s']:.1f} | {r['tok_per_s']:.2f} | "
            f"**{r['tok_per_s'] / base:.2f}x** | {r['tok_per_cpu_s']:.2f} | **{r['tok_per_cpu_s'] / cpu_base:.2f}x** | "
            f"{r['ttft_s']:.2f} | {peer_by[r['concurrency']]['tok_per_s']:.2f} | "
            f"{r['tok_per_s'] / peer_by[r['concurrency']]['tok_per_s']:.2f} |"
            for r in server)
        sections.append(rows)
        top = server[-1]
        summary.append(f"- {dtype}: {top['concurrency']} concurrent requests reach **{top['tok_per_s'] / base:.1f}x** "
                       f"the single-stream aggregate in wall-clock tokens/s ({top['tok_per_s']:.1f} vs {base:.1f}; "
                       f"target 6x: {'met' if top['tok_per_s'] / base >= 6 else 'not met'}) and "
                       f"**{top['tok_per_cpu_s'] / cpu_base:.1f}x** in tokens per CPU-second; model load "
                       f"{run['load_s']:.0f} s")
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_title(f"openqwen serve: {label}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "serving.png", dpi=120)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    table = "\n".join(sections)
    text = f"""# Serving benchmark

Aggregate throughput of `openqwen serve` at {', '.join(str(c) for c in args.levels)} concurrent streaming
requests, and the same engine called in process (`engine.generate`, no HTTP) as the peer, in one run.

- model: {label}; {args.max_tokens} new tokens per request (`ignore_eos`), greedy; short code prompts;
  engine `max_batch_size` {args.max_batch}
- machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {args.threads} threads;
  load average {load:.1f} at the end of the run (the machine is shared with other jobs: absolute numbers
  are noisy; the ratios, measured minutes apart in the same run, are the result)
- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}
- command: `{cmd}`

Aggregate tok/s = all completion tokens of a level / wall time from the first request sent to the
last `[DONE]` (prefill included); TTFT = time to the first streamed text. Tokens per CPU-second
divides by the CPU time of the whole benchmark process instead (server, engine and the client
threads; torch runs {args.threads} thread(s)): on a machine shared with other jobs, wall time depends on
what else runs, CPU time much less, so that ratio is the steadier measure of what batching buys.

| precision | concurrent | tokens | wall s | aggregate tok/s | vs 1 stream | tok per CPU-s | vs 1 stream | median TTFT s | peer tok/s | server / peer |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{table}

{chr(10).join(summary)}

The server / peer column is the cost of HTTP, JSON and SSE on top of the engine (1.00 = none).

![aggregate tokens/s](serving.png)

{NOTES}"""
    path = out_dir / "serving.md"
    old = path.read_text() if path.exists() else ""
    if "<!-- load-test -->" in old:  # bench_serve_load.py's section: keep it when this table is rewritten
        text = text.rstrip("\n") + "\n\n<!-- load-test -->" + old.split("<!-- load-test -->", 1)[1]
    path.write_text(text)
    (out_dir / "serving.json").write_text(json.dumps({"model": label, "runs": runs}, indent=2) + "\n")


NOTES = """## Reading the numbers

One decode step serves every running request, so batching pays while a step costs about the same for
16 rows as for one. At batch 1 an int8 step is bound by memory bandwidth (it reads the 496 MB of
weights once, at 79 % of the machine's read bandwidth: see [inference.md](inference.md)); at batch 16
the same bytes feed 16 rows and the step is bound by arithmetic instead: 16 x 494M multiply-adds, which
the two AVX2 cores of this machine do at 34-40 G/s (38-45 % of their measured 90 G/s fp32 FMA peak),
197-241 ms per step, 66-81 tokens/s at most. Even at the arithmetic peak, 16 rows could not reach 6x
one stream here (at most 5.5-6.3x a 30-35 ms single step), so the 6x target needs more cores or wider
vectors than this machine has. The faster the single stream got (26-33 tok/s, from 3 under load
before the fused decode step and the kernel work), the smaller the ratio became.

Prefill is the other cost: 16 short prompts of 4-11 tokens are prefilled in right-padded batches
through the int8 kernel, 2-3 s before the first token on this CPU, during which no one decodes.

The server adds little on top of the engine (the server / peer column; where it is below 1, HTTP, JSON
and SSE for every token of every stream, run in the same Python process, compete for the GIL and the
two cores with the engine thread).
"""


def main(argv: list[str] | None = None) -> int:
    from openqwen.artifacts import artifact_path

    gguf = artifact_path("qwen25-coder-0.5b-instruct-gguf")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(gguf) if gguf else "nano",
                   help="model folder or .gguf (default: the Qwen2.5-Coder-0.5B GGUF artifact), or 'nano'")
    p.add_argument("--dtypes", nargs="+", default=["int8", "fp32"], choices=DTYPE_CHOICES,
                   help="precisions to measure, one model load each (default: int8 fp32)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared, oversubscribed machine more threads spin and lose)")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from openqwen.serve.app import BackgroundServer, ServerConfig, create_app

    label = "random nano-10m (152k vocab)" if args.model == "nano" else Path(args.model).name
    runs: dict[str, dict] = {}
    for dtype in args.dtypes:
        t0 = time.perf_counter()
        engine, _ = load_engine(args.model, dtype, args.max_batch, 512)
        load_s = time.perf_counter() - t0
        print(f"loaded {label} ({dtype}) in {load_s:.0f} s", flush=True)
        name = "bench"
        server_rows, peer_rows = [], []
        with BackgroundServer(create_app(engine, ServerConfig(model_name=name))) as srv:
            run_server_level(srv.url, name, 1, 4)  # warm-up: first-call allocations, kernel build
            for n in args.levels:
                r = run_server_level(srv.url, name, n, args.max_tokens)
                server_rows.append(r)
                print(f"{dtype} server c={n:>2}: {r['tok_per_s']:7.2f} tok/s  ({r['tokens']} tokens in "
                      f"{r['wall_s']:.1f} s, TTFT {r['ttft_s']:.2f} s)", flush=True)
                q = run_engine_level(engine, n, args.max_tokens)
                peer_rows.append(q)
                print(f"{dtype} engine c={n:>2}: {q['tok_per_s']:7.2f} tok/s", flush=True)
        engine.close()
        del engine
        runs[dtype] = {"server": server_rows, "peer": peer_rows, "load_s": load_s}
    cmd = ".venv/bin/python -m benchmarks.bench_serve " + " ".join(argv if argv is not None else sys.argv[1:])
    write_report(args, label, runs, cmd.strip())
    print(f"wrote {Path(args.out) / 'serving.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
