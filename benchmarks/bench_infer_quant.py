"""openqwen on a quantised GGUF against llama.cpp on the same file, side by side in one run.

    .venv/bin/python -m benchmarks.bench_infer_quant --llama-python /tmp/llamavenv/bin/python \\
        [--threads 2] [--rounds 5] [--prefill 512] [--decode-context 2048] [--precisions int4,int8] [--batch-sizes 4,16]

Every contender is a worker process holding one model (openqwen at each precision, llama.cpp through
llama-cpp-python), all alive at once and measured in turn, a little in every round: the machine is
shared and its load drifts, so only measurements taken side by side compare. Reported per contender:
load time and resident memory (the worker's peak RSS after loading, the mapped file included), batch-1
decode tokens/s (prefill excluded; ``--decode-samples`` per round, each between two readings of the read
bandwidth, whose per-sample ratio is the roofline share), prompt processing tokens/s of a
``--prefill``-token prompt (a real text: CPython's ``textwrap.py``; the whole prompt every time, no
cached prefix reused), batch-1 decode after a ``--decode-context``-token prompt of the same text (each
step attends over that many cached tokens), openqwen's aggregate decode at ``--batch-sizes``, and the greedy
tokens of three chat prompts (how many of the first 24 equal llama.cpp's). Ratios against llama.cpp
(medians of the per-round ratios) are the headline. Writes docs/benchmarks/inference_quant.json and
prints a markdown table for docs/benchmarks/inference.md.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
PROMPTS = ["Write a Python function that checks whether a number is prime.",
           "Explain what a hash map is in two sentences.",
           "def fibonacci(n):"]
GREEDY_TOKENS = 24

# Both workers read commands on stdin and answer one JSON line each:
#   decode N         -> seconds per decoded token over N steps after a warm-up (batch B when given)
#   prefill P        -> seconds to process the first P tokens of the text
#   greedy           -> the greedy token ids of each prompt (GREEDY_TOKENS of them)
OPENQWEN_WORKER = r"""
import json, resource, sys, time
import torch
from openqwen.infer.engine import Engine
from openqwen.infer.loading import load_for_inference
from openqwen.infer.sampling import SamplingParams
from openqwen.tokenizer import QwenTokenizer
path, precision, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
from openqwen.infer.kernels import load_kernels
load_kernels()  # compiled once per machine and source (cached): not a cost of loading a model
t = time.perf_counter()
model = load_for_inference(path, precision)
load_s = time.perf_counter() - t
tok = QwenTokenizer.from_pretrained(path)
from benchmarks.bench_infer import weight_bytes_per_token
import gc; gc.collect()
print(json.dumps({"load_s": load_s, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_now_mb": int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20,
                  "precision": model.precision, "bytes_per_token": weight_bytes_per_token(model)}), flush=True)
engines = {}
def engine(batch):
    if batch not in engines:
        engines[batch] = Engine(model, tok, max_batch_size=batch, background=False, max_seq_len=4096)
    return engines[batch]
for line in sys.stdin:
    cmd, *rest = line.split(maxsplit=1)
    if cmd == "decode":
        n, batch, ids = json.loads(rest[0])
        eng = engine(batch)
        for _ in range(batch):
            eng.submit(ids, SamplingParams(max_new_tokens=n + 2, ignore_eos=True, temperature=0))
        eng.step(); eng.step()  # prefill + first token, a warm-up step
        t = time.perf_counter()
        for _ in range(n):
            eng.step()
        out = (time.perf_counter() - t) / n
        while eng.num_active:
            eng.step()
    elif cmd == "prefill":
        ids = json.loads(rest[0])
        eng = engine(1)
        eng.reset_prefix_cache()  # the whole prompt, as llama.cpp after reset() (the 2,048-token prompt
        reused = eng.reused_tokens  # starts with the 512-token one, which the slot still holds)
        eng.submit(ids, SamplingParams(max_new_tokens=1, ignore_eos=True, temperature=0))
        t = time.perf_counter()
        eng.step()
        out = time.perf_counter() - t
        assert eng.reused_tokens == reused, "the prefill reused a cached prefix"
        while eng.num_active:
            eng.step()
    elif cmd == "rss":
        out = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    elif cmd == "greedy":
        prompts = json.loads(rest[0])
        out = [c.token_ids for c in engine(1).generate(prompts, SamplingParams(max_new_tokens=%d, temperature=0,
                                                                               ignore_eos=True))]
    print(json.dumps(out), flush=True)
""" % GREEDY_TOKENS

LLAMA_WORKER = r"""
import json, resource, sys, time
from llama_cpp import Llama
path, threads, label = sys.argv[1], int(sys.argv[2]), sys.argv[3]
t = time.perf_counter()
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=4096, n_batch=512, verbose=False)
load_s = time.perf_counter() - t
print(json.dumps({"load_s": load_s, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_now_mb": int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20,
                  "precision": label}), flush=True)
def greedy(ids, n):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        t = llm.sample(temp=0.0)
        out.append(int(t))
        llm.eval([t])
    return out
for line in sys.stdin:
    cmd, *rest = line.split(maxsplit=1)
    if cmd == "decode":
        n, batch, ids = json.loads(rest[0])
        llm.reset()
        llm.eval(ids)
        t0 = llm.sample(temp=0.0)
        llm.eval([t0])  # warm-up step
        t = time.perf_counter()
        for _ in range(n):
            llm.eval([llm.sample(temp=0.0)])
        out = (time.perf_counter() - t) / n
    elif cmd == "prefill":
        ids = json.loads(rest[0])
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        out = time.perf_counter() - t
    elif cmd == "rss":
        out = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
    elif cmd == "greedy":
        out = [greedy(ids, %d) for ids in json.loads(rest[0])]
    print(json.dumps(out), flush=True)
""" % GREEDY_TOKENS


class Worker:
    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} exited (rc {self.proc.wait()})")
        return json.loads(line)

    def ask(self, cmd: str, arg) -> object:
        self.proc.stdin.write(f"{cmd} {json.dumps(arg)}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file (default: the fetched q4_k_m artifact)")
    ap.add_argument("--llama-python", default=None,
                    help="a Python with llama-cpp-python installed (without it: openqwen only, no ratios)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every contender [2]")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of measurements [5]")
    ap.add_argument("--tokens", type=int, default=16, help="decode steps timed per sample [16]")
    ap.add_argument("--decode-samples", type=int, default=3,
                    help="batch-1 decode samples per contender and round, each between two bandwidth readings [3]")
    ap.add_argument("--prefill", default="512", help="prompt lengths to time, comma-separated ['512']")
    ap.add_argument("--decode-context", default="",
                    help="also time batch-1 decode after prompts of these many tokens (attention over a long cache), "
                         "comma-separated, e.g. 2048 [off]")
    ap.add_argument("--precisions", default="int4,int8", help="openqwen precisions (auto is int8 for the q4_k_m 0.5B) [int4,int8]")
    ap.add_argument("--batch-sizes", default="4,16", help="openqwen aggregate decode at these batches ['4,16']")
    ap.add_argument("--json", default="inference_quant.json", help="file name under docs/benchmarks/ [inference_quant.json]")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()

    from openqwen.artifacts import artifact_path
    from openqwen.tokenizer import QwenTokenizer

    gguf = Path(args.model) if args.model else artifact_path("qwen25-coder-0.5b-instruct-gguf")
    tok = QwenTokenizer.from_pretrained(gguf)
    text_ids = tok.encode(open(inspect.getsourcefile(textwrap)).read() * 3)
    prompt_ids = [tok.apply_chat_template([{"role": "user", "content": p}]) for p in PROMPTS]
    lengths = [int(p) for p in args.prefill.split(",") if p]
    contexts = [int(c) for c in args.decode_context.split(",") if c]
    if any(c + args.tokens + 4 > 4096 for c in contexts):
        ap.error("--decode-context: the workers' caches hold 4,096 tokens; use prompts of at most "
                 f"{4096 - args.tokens - 4}")
    batches = [int(b) for b in args.batch_sizes.split(",") if b]

    label, llama_bytes = gguf_kind(gguf)
    workers = [Worker("llama.cpp", [args.llama_python, "-c", LLAMA_WORKER, str(gguf), str(args.threads), label])] \
        if args.llama_python else []
    if workers:
        workers[0].info["bytes_per_token"] = llama_bytes
    from benchmarks.bench_infer import BandwidthProbe  # after the workers load: its 512 MiB is not in their RSS

    probe = BandwidthProbe()
    for p in args.precisions.split(","):
        workers.append(Worker(f"openqwen {p}", [sys.executable, "-c", OPENQWEN_WORKER, str(gguf), p, str(args.threads)]))
    for w in workers:
        print(f"{w.name}: loaded in {w.info['load_s']:.2f} s, peak RSS {w.info['rss_mb']:.0f} MB "
              f"({w.info['precision']})", flush=True)
    times: dict[tuple[str, str], list[float]] = {}
    serving_rss: dict[str, float] = {}
    for r in range(args.rounds):
        for w in workers:
            for _ in range(args.decode_samples):
                # the read bandwidth just before and just after each decode sample: that sample's roofline
                # (the host's bandwidth drifts by half within minutes, so one reading per round misleads)
                before = min(probe.seconds_per_byte() for _ in range(3))
                times.setdefault((w.name, "decode"), []).append(w.ask("decode", [args.tokens, 1, prompt_ids[0]]))
                after = min(probe.seconds_per_byte() for _ in range(3))
                times.setdefault((w.name, "read"), []).append((before + after) / 2)
            for n in lengths:
                times.setdefault((w.name, f"prefill {n}"), []).append(w.ask("prefill", text_ids[:n]))
            for c in contexts:
                times.setdefault((w.name, f"decode at {c}"), []).append(w.ask("decode", [args.tokens, 1, text_ids[:c]]))
            if r == 0:  # resident while serving one stream (before the batch engines add their KV caches)
                serving_rss[w.name] = w.ask("rss", None)
            if w.name != "llama.cpp":
                for b in batches:
                    times.setdefault((w.name, f"batch {b}"), []).append(w.ask("decode", [args.tokens // 2, b, prompt_ids[0]]))
        print(f"round {r + 1}: " + ", ".join(f"{w.name} {1 / times[(w.name, 'decode')][-1]:.1f} tok/s" for w in workers),
              flush=True)
    greedy = {w.name: w.ask("greedy", prompt_ids) for w in workers}
    for w in workers:
        w.close()

    med = statistics.median
    llama = "llama.cpp" if args.llama_python else workers[0].name  # the peer every ratio is against
    rows = []
    for w in workers:
        row = {"engine": w.name, "precision": w.info["precision"], "load_s": w.info["load_s"], "rss_mb": w.info["rss_mb"],
               "decode_tok_s": 1 / med(times[(w.name, "decode")])}
        row["decode_vs_llama"] = med([a / b for a, b in zip(times[(llama, "decode")], times[(w.name, "decode")])])
        row["bytes_per_token_mb"] = w.info["bytes_per_token"] / 1e6
        row["bandwidth_gb_s"] = 1 / med(times[(w.name, "read")]) / 1e9
        # per sample: (time the bytes take at the read bandwidth around it) / (the decode step's time)
        shares = [w.info["bytes_per_token"] * spb / step for spb, step in zip(times[(w.name, "read")], times[(w.name, "decode")])]
        row["roofline_fraction"] = med(shares)
        row["roofline_fraction_samples"] = [round(x, 3) for x in shares]
        for n in lengths:
            key = f"prefill {n}"
            row[f"prefill_{n}_tok_s"] = n / med(times[(w.name, key)])
            row[f"prefill_{n}_vs_llama"] = med([a / b for a, b in zip(times[(llama, key)], times[(w.name, key)])])
        for c in contexts:
            key = f"decode at {c}"
            row[f"decode_ctx_{c}_tok_s"] = 1 / med(times[(w.name, key)])
            row[f"decode_ctx_{c}_vs_llama"] = med([a / b for a, b in zip(times[(llama, key)], times[(w.name, key)])])
        for b in batches if w.name != llama else []:
            row[f"batch_{b}_tok_s"] = b / med(times[(w.name, f"batch {b}")])
        row["peer"] = llama
        row["rss_vs_llama"] = w.info["rss_mb"] / workers[0].info["rss_mb"]
        row["serving_rss_mb"] = serving_rss[w.name]
        row["serving_rss_vs_llama"] = serving_rss[w.name] / serving_rss[workers[0].name]
        row["greedy_equal_prefix"] = [next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
                                      for ours, theirs in zip(greedy[w.name], greedy[llama])]
        rows.append(row)
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "model": gguf.name,
            "threads": args.threads, "rounds": args.rounds, "tokens": args.tokens, "cpu": _cpu(),
            "loadavg_end": open("/proc/loadavg").read().split()[:3],
            "decode_context": contexts, "command": "python -m benchmarks.bench_infer_quant " + " ".join(sys.argv[1:])}
    print(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(markdown(rows, lengths, batches, contexts))
    if not args.no_write:
        (OUT / args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


def gguf_kind(path: Path) -> tuple[str, int]:
    """The file's kind for the table (q4_k_m-like: its linears' block types by size) and the bytes a decode
    step reads from it: every tensor but the embedding table, plus one embedding row."""
    from openqwen.checkpoint.gguf_file import GGUFFile

    with GGUFFile(path) as f:
        sizes: dict[str, int] = {}
        total = 0
        for name, info in f.tensors.items():
            nbytes = f.raw(name).nbytes
            if name == "token_embd.weight":
                total += nbytes // info.shape[0]
                continue
            total += nbytes
            if len(info.shape) == 2:
                sizes[info.type_name] = sizes.get(info.type_name, 0) + nbytes
    return "/".join(sorted(sizes, key=sizes.get, reverse=True)), total


def _cpu() -> str:
    import re

    info = open("/proc/cpuinfo").read()
    name = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split())
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name.group(1) if name else 'unknown'} ({' '.join(simd)})"


def markdown(rows: list[dict], lengths: list[int], batches: list[int], contexts: list[int] = ()) -> str:
    peer = rows[0]["peer"]
    head = ["engine", "precision", "decode tok/s", f"vs {peer}", "MB/token", "% of roofline"]
    for n in lengths:
        head += [f"prefill {n} tok/s", f"vs {peer}"]
    for c in contexts:
        head += [f"decode at {c} tok/s", f"vs {peer}"]
    head += [f"batch {b} tok/s" for b in batches] + ["load s", "peak RSS MB", f"vs {peer}", "serving RSS MB", f"vs {peer}", f"greedy = {peer} (of 24)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["engine"], r["precision"], f"{r['decode_tok_s']:.1f}", f"{r['decode_vs_llama']:.2f}x",
                 f"{r['bytes_per_token_mb']:.0f}", f"{100 * r['roofline_fraction']:.0f} %"]
        for n in lengths:
            cells += [f"{r[f'prefill_{n}_tok_s']:.0f}", f"{r[f'prefill_{n}_vs_llama']:.2f}x"]
        for c in contexts:
            cells += [f"{r[f'decode_ctx_{c}_tok_s']:.1f}", f"{r[f'decode_ctx_{c}_vs_llama']:.2f}x"]
        cells += [f"{r[f'batch_{b}_tok_s']:.1f}" if f"batch_{b}_tok_s" in r else "" for b in batches]
        cells += [f"{r['load_s']:.1f}", f"{r['rss_mb']:.0f}", f"{r['rss_vs_llama']:.2f}x", f"{r['serving_rss_mb']:.0f}",
                  f"{r['serving_rss_vs_llama']:.2f}x",
                  ", ".join(map(str, r["greedy_equal_prefix"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
