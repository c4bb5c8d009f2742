"""The serving load test (64 concurrent streams, then 4x the queue limit) and, in the same run,
``openqwen serve`` against llama-cpp-python's OpenAI server on the same GGUF under the same load.

    .venv/bin/python -m benchmarks.bench_serve_load --peer-python /tmp/llamaserve/bin/python   # both, writes docs
    .venv/bin/python -m benchmarks.bench_serve_load --model tiny --max-batch 4 --max-queue 4 --no-peer --no-write

**Load test.** ``openqwen serve`` runs in its own process on a saved random model (loopback HTTP,
``--max-batch`` slots, a queue of ``--max-queue`` choices). First each of the ``slots + queue`` prompts is
sent alone, greedy (the reference texts). Wave 1 sends ``slots + queue`` (64 by default) streaming
requests at once: the queue holds them all, so every one must complete with its solo text. Wave 2 sends
4x the queue limit at once (the same prompts, cycled): each request either completes with its solo text
or gets 429 with ``Retry-After``; none may hang (a client timeout counts as a failure). Then wave 1 once
more. The server process's resident memory is read after one warm-up wave of slots + queue (the
allocator's working set of every slot decoding and the queue full: the starting level) and after each
wave, the engine idle each time.

**Peer.** Both servers hold the real Qwen2.5-Coder-0.5B q4_k_m GGUF, alive side by side with the same
threads, and are measured in turn (the order alternates every round, so a change in the machine's load
falls on both): ``c`` concurrent streaming ``/v1/completions`` of ``--peer-tokens`` greedy tokens, the
end-of-text tokens kept out (``ignore_eos`` for openqwen; a -100 ``logit_bias`` on every end-of-generation
token for llama-cpp-python, whose server has no ``ignore_eos``), so every request yields the same count.
llama-cpp-python's server runs one request at a time (``interrupt_requests`` off, else a waiting request
cuts the running stream short); openqwen batches them. Figures: aggregate tokens/s (all completion
tokens / wall time of the wave), TTFT and inter-token latency (ITL: the gap between consecutive streamed
chunks that carry text) percentiles over every stream of every round.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.bench_serve import PROMPTS as PEER_PROMPTS  # the serving benchmark's code prompts
from benchmarks.servers import free_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
MARK_START, MARK_END = "<!-- load-test -->", "<!-- /load-test -->"
# Qwen2.5's end-of-generation tokens in the GGUF (<|endoftext|>, <|im_end|>, <|fim_pad|>, <|repo_name|>,
# <|file_sep|>): llama.cpp stops at any of them, so the peer's requests bias all of them away.
QWEN_EOG_IDS = (151643, 151645, 151662, 151663, 151664)


def prompt_of(i: int) -> str:
    return f"Request {i}: tell me about the number {i * 7919 % 1000}."


def stream_one(url: str, body: dict, out: dict, barrier: threading.Barrier, timeout: float) -> None:
    """One streaming /v1/completions call; fills ``out`` with status, text, finish reason, chunk times."""
    import httpx

    barrier.wait()
    t0 = time.perf_counter()
    try:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=timeout) as r:
            out["status"] = r.status_code
            if r.status_code != 200:
                out["retry_after"] = r.headers.get("retry-after")
                r.read()
                return
            parts, times = [], []
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    out["error"] = chunk["error"]["message"]
                    return
                if not chunk.get("choices"):
                    continue
                choice = chunk["choices"][0]
                if choice.get("text"):
                    times.append(time.perf_counter() - t0)
                    parts.append(choice["text"])
                if choice.get("finish_reason"):
                    out["finish_reason"] = choice["finish_reason"]
            out["text"] = "".join(parts)
            out["chunk_times"] = times
            if times:
                out["ttft"] = times[0]
    except Exception as e:  # noqa: BLE001 - a hang (timeout) or a broken connection is a failure to report
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        out["latency"] = time.perf_counter() - t0


def wave(url: str, bodies: list[dict], timeout: float) -> tuple[list[dict], float]:
    """All ``bodies`` sent at once, each from its own thread; (results, wall seconds)."""
    results: list[dict] = [dict() for _ in bodies]
    barrier = threading.Barrier(len(bodies) + 1)
    threads = [threading.Thread(target=stream_one, args=(url, b, results[i], barrier, timeout), daemon=True)
               for i, b in enumerate(bodies)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(timeout + 30)
    return results, time.perf_counter() - t0


def percentile(values: list[float], p: float) -> float | None:
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else None


def latency_figures(results: list[dict]) -> dict:
    """TTFT and ITL percentiles over the completed streams of ``results``."""
    ttfts = [r["ttft"] for r in results if "ttft" in r]
    itls = [b - a for r in results for a, b in zip(r.get("chunk_times", []), r.get("chunk_times", [])[1:])]
    out = {}
    for name, xs in (("ttft", ttfts), ("itl", itls)):
        for p in (50, 90, 99):
            out[f"{name}_p{p}_s"] = percentile(xs, p)
    return out


def summarise(results: list[dict], solo: list[str], wall: float, max_tokens: int) -> dict:
    done = [i for i, r in enumerate(results) if r.get("status") == 200 and "text" in r]
    rejected = [i for i, r in enumerate(results) if r.get("status") == 429]
    wrong = [i for i in done if results[i]["text"] != solo[i % len(solo)]]
    failed = [i for i, r in enumerate(results) if i not in done and i not in rejected]
    return {"clients": len(results), "completed": len(done), "rejected_429": len(rejected), "wrong_text": len(wrong),
            "failed": len(failed), "failures": [results[i] for i in failed][:3],
            "retry_after": sorted({str(results[i].get("retry_after")) for i in rejected}),
            "wall_s": wall, "tokens": len(done) * max_tokens, "tok_per_s": len(done) * max_tokens / wall,
            **latency_figures([results[i] for i in done]),
            "latency_p50_s": statistics.median(results[i]["latency"] for i in done) if done else None}


def nano_model(model: str):
    from openqwen import Qwen, get_preset

    torch.manual_seed(0)
    if model == "tiny":  # the serving tests' model: hidden 64, 2 layers (fast, for the test)
        sys.path.insert(0, str(ROOT / "tests" / "serve"))
        from serve_helpers import tiny_model  # noqa: PLC0415

        return tiny_model()
    return Qwen(get_preset("nano-10m", vocab_size=151936, max_position_embeddings=256)).eval()


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * 4096 / 2**20


def drain_stderr(proc: subprocess.Popen) -> None:
    """Keep reading a server's stderr so that it never blocks on a full pipe; its last 40 lines are kept
    (the server's own account of a failed request goes into the summary)."""
    tail: collections.deque = collections.deque(maxlen=40)
    threading.Thread(target=lambda: [tail.append(line.rstrip()) for line in proc.stderr], daemon=True).start()
    proc.stderr_tail = tail


def start_openqwen(model: Path | str, max_batch: int, max_queue: int, threads: int, max_len: int):
    """``openqwen serve`` in its own process (its memory is then the server's alone); (process, url)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "openqwen.cli", "serve", "--model", str(model), "--port", "0", "--threads",
         str(threads), "--max-batch-size", str(max_batch), "--max-queue", str(max_queue), "--max-model-len",
         str(max_len), "--log-level", "warning"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    for line in proc.stderr:
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/", line)
        if m:
            drain_stderr(proc)
            return proc, m.group(1)
    proc.wait()
    raise RuntimeError("openqwen serve did not start")


def start_llama(python: str, gguf: Path, threads: int, max_len: int):
    """llama-cpp-python's OpenAI server (``python -m llama_cpp.server``) on a free port; (process, url)."""
    port = free_port()
    proc = subprocess.Popen(
        [python, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "peer", "--host", "127.0.0.1",
         "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx",
         str(max_len), "--interrupt_requests", "False", "--verbose", "False"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    drain_stderr(proc)
    url = f"http://127.0.0.1:{port}"
    wait_until_up(proc, url, "/v1/models", timeout_s=300, poll_s=0.5,
                  what=f"llama_cpp.server (is llama-cpp-python[server] installed in {python}?)")
    return proc, url


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_idle(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = httpx.get(url + "/health", timeout=30).json()
        if not h["admitted"] and not h["engine_active"]:
            return
        time.sleep(0.1)


def run(model: str = "nano", max_batch: int = 16, max_queue: int = 48, max_tokens: int = 32,
        timeout: float = 600.0, threads: int = 1) -> dict:
    """The load test against a served model folder; returns the summary (the test asserts on it)."""
    import httpx

    from openqwen import QwenTokenizer
    from openqwen.artifacts import artifact_path
    from openqwen.checkpoint import save_model

    name = "load"
    phase1, phase2 = max_batch + max_queue, 4 * max_queue

    def bodies(n: int) -> list[dict]:  # prompts cycle over the phase-1 set: each has its solo text
        return [{"model": name, "prompt": prompt_of(i % phase1), "max_tokens": max_tokens, "temperature": 0,
                 "stream": True, "ignore_eos": True} for i in range(n)]

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        save_model(nano_model(model), folder)
        QwenTokenizer.from_pretrained(artifact_path("qwen-tiktoken")).save_pretrained(folder, hf_tokenizer_json=False)
        proc, url = start_openqwen(folder, max_batch, max_queue, threads, 256)
        try:
            solo, solo_failures = [], []
            for body in bodies(phase1):  # every prompt alone: the reference texts
                out: dict = {}
                stream_one(url, body, out, threading.Barrier(1), timeout)
                solo.append(out.get("text"))
                if out.get("text") is None:
                    solo_failures.append({**{k: v for k, v in out.items() if k != "chunk_times"},
                                          "server_log": list(proc.stderr_tail)[-10:]})
            wait_idle(url)
            rss = {"cold": rss_mb(proc.pid)}
            # one warm-up wave of slots + queue first: the allocator then holds the working set of all slots
            # decoding with the queue full, the level the load must come back to (growth past it, wave over
            # wave, would be a leak). A baseline of one batch of slots alone sat up to 22 MB under that set.
            wave(url, bodies(phase1), timeout)
            wait_idle(url)
            rss["before"] = rss_mb(proc.pid)
            r1, w1 = wave(url, bodies(phase1), timeout)
            wait_idle(url)
            rss["after_64"] = rss_mb(proc.pid)
            r2, w2 = wave(url, bodies(phase2), timeout)
            wait_idle(url)
            rss["after_4x"] = rss_mb(proc.pid)
            r3, w3 = wave(url, bodies(phase1), timeout)  # again: memory must not keep growing
            wait_idle(url)
            rss["after_again"] = rss_mb(proc.pid)
            admitted_after = httpx.get(url + "/health", timeout=30).json()["admitted"]
        finally:
            exit_code = stop(proc)
    return {"model": model, "max_batch": max_batch, "max_queue": max_queue, "max_tokens": max_tokens,
            "solo_missing": sum(t is None for t in solo), "solo_failures": solo_failures,
            "phase1": summarise(r1, solo, w1, max_tokens), "phase2": summarise(r2, solo, w2, max_tokens),
            "phase1_again": summarise(r3, solo, w3, max_tokens), "rss_mb": rss, "admitted_after": admitted_after,
            "exit_code": exit_code}


def run_peer(python: str, gguf: Path, levels: list[int], rounds: int, max_tokens: int, threads: int,
             timeout: float = 1800.0) -> dict:
    """openqwen serve and llama-cpp-python's server on ``gguf``, the same waves in alternating order."""
    bias = {str(t): -100 for t in QWEN_EOG_IDS}
    servers = {}
    try:
        t0 = time.perf_counter()
        servers["openqwen"] = (*start_openqwen(gguf, max(levels), max(levels), threads, 512), time.perf_counter() - t0)
        t0 = time.perf_counter()
        servers["llama.cpp"] = (*start_llama(python, gguf, threads, 512), time.perf_counter() - t0)
        extra = {"openqwen": {"ignore_eos": True}, "llama.cpp": {"logit_bias": bias}}

        def bodies(who: str, n: int, tokens: int) -> list[dict]:
            return [{"model": "peer" if who == "llama.cpp" else Path(gguf).stem, "prompt": PEER_PROMPTS[i % len(
                PEER_PROMPTS)], "max_tokens": tokens, "temperature": 0, "stream": True, **extra[who]}
                    for i in range(n)]

        for who, (_, url, _) in servers.items():  # warm-up: first-call allocations, kernels, caches
            wave(url, bodies(who, 1, 4), timeout)
        raw: dict = {(who, c): [] for who in servers for c in levels}
        walls: dict = {(who, c): [] for who in servers for c in levels}
        for k in range(rounds):
            for c in levels:
                for who in (list(servers) if k % 2 == 0 else list(servers)[::-1]):
                    res, wall = wave(servers[who][1], bodies(who, c, max_tokens), timeout)
                    bad = [r for r in res if r.get("status") != 200 or r.get("finish_reason") != "length"]
                    if bad:
                        raise RuntimeError(f"{who} c={c}: {len(bad)} streams did not run to max_tokens: {bad[0]}")
                    raw[(who, c)] += res
                    walls[(who, c)].append(wall)
                    print(f"round {k + 1} {who:9s} c={c:>2}: {c * max_tokens / wall:6.1f} tok/s", flush=True)
        texts = {who: [r["text"] for r in raw[(who, levels[-1])][:levels[-1]]] for who in servers}
        rows = []
        for c in levels:
            for who in servers:
                rates = [c * max_tokens / w for w in walls[(who, c)]]
                row = {"server": who, "concurrent": c, "tok_per_s": statistics.median(rates),
                       **latency_figures(raw[(who, c)])}
                if who == "openqwen":
                    row["vs_llama"] = statistics.median(
                        [b / a for a, b in zip(walls[("openqwen", c)], walls[("llama.cpp", c)])])
                rows.append(row)
        rss = {who: rss_mb(p.pid) for who, (p, _, _) in servers.items()}
        load_s = {who: s for who, (_, _, s) in servers.items()}
    finally:
        for p, _, _ in servers.values():
            stop(p)
    llama_version = subprocess.run([python, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
    return {"gguf": Path(gguf).name, "levels": levels, "rounds": rounds, "max_tokens": max_tokens, "threads": threads,
            "rows": rows, "rss_mb": rss, "load_s": load_s, "llama_cpp_version": llama_version,
            "same_first_text": sum(a == b for a, b in zip(texts["openqwen"], texts["llama.cpp"]))}


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def report(s: dict, peer: dict | None, load: str, cmd: str) -> str:
    rows = []
    for key, label in (("phase1", f"{s['phase1']['clients']} clients (slots + queue)"),
                       ("phase2", "4x the queue limit"), ("phase1_again", "the first wave again")):
        p = s[key]
        rows.append(f"| {label} | {p['clients']} | {p['completed']} | {p['rejected_429']} | {p['wrong_text']} | "
                    f"{p['failed']} | {p['wall_s']:.1f} | {p['tok_per_s']:.0f} | {fmt(p['ttft_p50_s'])} | "
                    f"{fmt(p['ttft_p90_s'])} | {fmt(p['ttft_p99_s'])} | {fmt(1000 * (p['itl_p50_s'] or 0), '.0f')} | "
                    f"{fmt(1000 * (p['itl_p99_s'] or 0), '.0f')} |")
    retry = ", ".join(s["phase2"]["retry_after"]) or "-"
    text = f"""{MARK_START}
## Load test: {s['phase1']['clients']} streaming clients, then 4x the queue limit

`benchmarks/bench_serve_load.py`: `openqwen serve` in its own process on a random {s['model']} model
(152K vocabulary), {s['max_batch']} slots (`--max-batch-size`) and a queue of {s['max_queue']} choices
(`--max-queue`), {s['max_tokens']} greedy tokens per streaming request (`ignore_eos`), every client on its own
thread over loopback HTTP, all of a wave sent at once. Each completed text is compared with the same
prompt generated alone before the load; a 429 must carry `Retry-After` (it said: {retry} s).

| wave | clients | completed | 429 | text differs from solo | failed / hung | wall s | aggregate tok/s | TTFT p50 s | p90 | p99 | ITL p50 ms | ITL p99 ms |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Resident memory of the server process (the clients are not in it), engine idle each time:
{s['rss_mb']['cold']:.0f} MB after the solo requests, {s['rss_mb']['before']:.0f} MB after a warm-up wave of
{s['max_batch']} slots + {s['max_queue']} queued (the working set of every slot decoding with the queue full: the
starting level), then
{s['rss_mb']['after_64']:.0f} MB after the first wave, {s['rss_mb']['after_4x']:.0f} MB after the 4x wave,
{s['rss_mb']['after_again']:.0f} MB after the first wave again ({s['admitted_after']} choices still admitted;
SIGTERM then exited {s['exit_code']}). TTFT includes the
time a request waits in the queue for one of the {s['max_batch']} slots, so its tail grows with the queue;
the 429s of the 4x wave are answered at once, before any model work. `tests/serve/test_serve_load.py`
(slow) runs the same driver on the tests' tiny model and asserts all of the above.
"""
    if peer:
        rows = []
        for r in peer["rows"]:
            ratio = f"**{r['vs_llama']:.2f}x**" if "vs_llama" in r else ""
            rows.append(f"| {r['server']} | {r['concurrent']} | {r['tok_per_s']:.1f} | {ratio} | "
                        f"{fmt(r['ttft_p50_s'])} | {fmt(r['ttft_p90_s'])} | {fmt(r['ttft_p99_s'])} | "
                        f"{1000 * r['itl_p50_s']:.0f} | {1000 * r['itl_p90_s']:.0f} | {1000 * r['itl_p99_s']:.0f} |")
        text += f"""
## Against llama-cpp-python's server, same GGUF, same load

Both servers hold `{peer['gguf']}` ({peer['threads']} threads each), alive side by side, measured in turn
over {peer['rounds']} rounds (order alternating). Each wave: `c` streaming `/v1/completions` of
{peer['max_tokens']} greedy tokens on short code prompts, end-of-text kept out (openqwen: `ignore_eos`;
llama-cpp-python {peer['llama_cpp_version']}: a -100 `logit_bias` on Qwen's end-of-generation tokens), every
stream checked to end on `length`. llama-cpp-python's server answers one request at a time
(`--interrupt_requests False`, otherwise a waiting request ends the running stream early); `openqwen serve`
batches them (its engine picks int8 for this file: see [inference.md](inference.md)). Aggregate tok/s is the
median over rounds; the ratio is the median of per-round ratios; TTFT and ITL pool every stream of every round.

| server | concurrent | aggregate tok/s | vs llama.cpp | TTFT p50 s | p90 | p99 | ITL p50 ms | p90 | p99 |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{chr(10).join(rows)}

Resident memory after the load: openqwen {peer['rss_mb']['openqwen']:.0f} MB, llama-cpp-python
{peer['rss_mb']['llama.cpp']:.0f} MB (a context of 512 for both; openqwen holds a KV cache for each of its
{peer['levels'][-1]} slots, llama-cpp-python one sequence's); start-up (load to first answer) {peer['load_s']['openqwen']:.0f} s and
{peer['load_s']['llama.cpp']:.0f} s. Greedy texts identical between the two at c={peer['levels'][-1]}:
{peer['same_first_text']} of {peer['levels'][-1]} (different arithmetic: int8 rows against q4_k_m blocks).
"""
    return text + f"""
- {load}; {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; command: `{cmd}`
{MARK_END}
"""


def write_section(section: str, path: Path) -> None:
    """Put the section between its markers in ``path`` (bench_serve.py keeps it when it rewrites the file)."""
    text = path.read_text() if path.exists() else "# Serving benchmark\n"
    if MARK_START in text:
        head, rest = text.split(MARK_START, 1)
        text = head + section + rest.split(MARK_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    from openqwen.artifacts import artifact_path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["nano", "tiny"], default="nano",
                   help="load test model: nano: nano-10m shape (default); tiny: the serving tests' 2-layer model")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-queue", type=int, default=48)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="load test: torch threads of the server")
    p.add_argument("--peer-python", default="/tmp/llamaserve/bin/python",
                   help="a Python with llama-cpp-python[server] (default /tmp/llamaserve/bin/python)")
    p.add_argument("--no-peer", action="store_true", help="the load test only")
    p.add_argument("--peer-levels", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--peer-rounds", type=int, default=2)
    p.add_argument("--peer-tokens", type=int, default=32)
    p.add_argument("--peer-threads", type=int, default=2)
    p.add_argument("--load", default="", help="a note on the load (the run reads the load average itself)")
    p.add_argument("--no-write", action="store_true", help="print the summary, do not touch the docs")
    args = p.parse_args(argv)
    gguf = artifact_path("qwen25-coder-0.5b-instruct-gguf")
    if not args.no_peer and not (Path(args.peer_python).exists() and gguf):
        print(f"error: the peer needs {args.peer_python} (llama-cpp-python[server]) and the GGUF artifact; "
              "--no-peer runs the load test alone", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    s = run(args.model, args.max_batch, args.max_queue, args.max_tokens, threads=args.threads)
    print(json.dumps(s, indent=2, default=str), flush=True)
    peer = None if args.no_peer else run_peer(args.peer_python, gguf, args.peer_levels, args.peer_rounds,
                                              args.peer_tokens, args.peer_threads)
    if peer:
        print(json.dumps(peer, indent=2), flush=True)
    if not args.no_write:
        cmd = ".venv/bin/python -m benchmarks.bench_serve_load " + " ".join(argv if argv is not None else sys.argv[1:])
        load = (f"{args.load + '; ' if args.load else ''}machine load average (1/5/15 min) {' / '.join(load_start)} "
                f"at the start, {' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end; {os.cpu_count()} cores "
                f"shared with other jobs")
        path = ROOT / "docs" / "benchmarks" / "serving.md"
        write_section(report(s, peer, load, cmd.strip()), path)
        (ROOT / "docs" / "benchmarks" / "serving-load.json").write_text(
            json.dumps({"load_test": s, "peer": peer}, indent=2, default=str) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
