"""The report's Table 3 in shape: a nano model trained at a short context, evaluated far past it.

The report (Table 3, Qwen-7B trained at 2048, arXiv perplexity) shows the plain model exploding past
its training length while dynamic NTK + LogN + window attention keep perplexity flat or falling to
4x-8x that length. Here the same experiment runs on a CPU in a few minutes:

1. corpus: the Shakespeare plays of the artifacts and the long files (> 60 KB) of this Python's
   standard library, read as **bytes** (token = byte, vocabulary 256: no tokenizer to train, and
   every document is a long file, not packed fragments). A fixed set of plays and files is held out.
2. train a nano Qwen (3 layers, hidden 96, 0.3M parameters) at S = 128 with the one Trainer, on random
   S-byte crops of the training documents (``--steps`` of 16 rows, default 400).
3. perplexity (:func:`openqwen.eval.tasks.perplexity.perplexity`: non-overlapping windows of L
   tokens scored through the engine) at L = 1x .. 16x S on the held-out text, the same tokens at every
   L, for: plain; + dynamic NTK; + LogN; + windows (all three); windows alone; all three + sinks.
4. writes ``docs/long-context-table3.json`` and the plot ``docs/long-context-table3.png``, prints the
   markdown table, and asserts the report's shape: plain degrades at every doubling past S, all three
   stay within 15 % of their S value to 16x S, and plain at 4x S is ``--min-ratio`` times all three.

    .venv/bin/python benchmarks/bench_long_context.py --out runs/longctx/s64 --seq-length 64 --steps 2000
    .venv/bin/python benchmarks/bench_long_context.py --timing 8192    # re-rotation and window costs
    .venv/bin/python benchmarks/bench_long_context.py --memory 1024,2048,4096,8192,16384,32768
    .venv/bin/python benchmarks/bench_long_context.py --control 2048,4096,8192   # the real GGUF

The docs' run (S = 64, 2000 steps) trained in 17 minutes and evaluated in 7 on two cores shared with
twenty other processes (load 20-25); a quiet machine needs a few.
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
S = 128
BATCH = 16
ROWS = 16_000
"""Training crops drawn once (the trainer walks epochs over them)."""
EVAL_PLAYS = ("comedies/as-you-like-it.md", "histories/henry-v.md", "tragedies/hamlet.md", "tragedies/othello.md")
EVAL_CODE = ("argparse.py", "difflib.py", "tarfile.py")


def corpus() -> tuple[list[bytes], list[bytes]]:
    """(training documents, held-out documents), each a whole file as bytes."""
    from openqwen.artifacts import artifact_path

    train, held = [], []
    plays = artifact_path("shakespeare")
    if plays is None:
        raise SystemExit("the shakespeare artifact is not fetched: run ../shared/tools/fetch-artifacts shakespeare")
    with zipfile.ZipFile(plays) as z:
        for name in sorted(n for n in z.namelist() if n.endswith(".md") and "/" in n):
            (held if name in EVAL_PLAYS else train).append(z.read(name))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 60_000):
        (held if f.name in EVAL_CODE else train).append(f.read_bytes())
    return train, held


class Crops:
    """Training rows: S-byte crops at random offsets of random documents (length-weighted),
    drawn once from a seed so the run is reproducible."""

    def __init__(self, docs: list[bytes], n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        sizes = np.array([len(d) for d in docs], dtype=np.float64)
        which = rng.choice(len(docs), size=n, p=sizes / sizes.sum())
        self.rows = []
        for i in which:
            d = docs[i]
            start = int(rng.integers(0, len(d) - S))
            self.rows.append(np.frombuffer(d[start : start + S], dtype=np.uint8).astype(np.int64))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def train_model(docs: list[bytes], steps: int, out: Path, hidden: int = 96, layers: int = 3, heads: int = 3,
                lr: float = 3e-3, rope_theta: float = 10000.0):
    from openqwen import Qwen, QwenConfig
    from openqwen.train.config import TrainConfig
    from openqwen.train.loop import Trainer

    config = QwenConfig(vocab_size=256, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                        num_hidden_layers=layers, num_attention_heads=heads, tie_word_embeddings=True, seq_length=S,
                        max_position_embeddings=16 * S, rope_theta=rope_theta)
    torch.manual_seed(0)
    model = Qwen(config)
    cfg = TrainConfig()
    for key, value in {"optim.lr": lr, "optim.warmup_steps": 50, "train.max_steps": steps, "train.batch_size": BATCH,
                       "train.out_dir": str(out / "train"), "train.save_every": 0, "train.resume": True,
                       "train.tensorboard": False, "train.progress": False, "train.log_every": 50,
                       "train.peak_flops": 1e11}.items():
        cfg.set(key, value)
    Trainer(cfg, model, Crops(docs, ROWS)).fit()  # a fixed set, so a longer run can resume
    return model.eval()


OPTIONS = {
    "plain": {},
    "+ dynamic NTK": {"use_dynamic_ntk": True},
    "+ LogN": {"use_dynamic_ntk": True, "use_logn_attn": True},
    "+ windows (all three)": {"use_dynamic_ntk": True, "use_logn_attn": True, "window_sizes": "scheme"},
    "windows alone": {"window_sizes": "scheme"},
    "all three + 4 sinks": {"use_dynamic_ntk": True, "use_logn_attn": True, "window_sizes": "scheme",
                            "attention_sinks": 4},
}
WINDOWS = [S, S, 2 * S]
"""The report's scheme scaled to S: the low layers see the training length, the high ones twice it."""
FACTORS = (1, 2, 4, 8, 16)


def set_seq_length(n: int) -> None:
    global S, WINDOWS
    S, WINDOWS = n, [n, n, 2 * n]


def evaluate(model, held: list[bytes], budget: int, sliding_budget: int = 0
             ) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]]]:
    """(chunked table, sliding table) of perplexity per option set and length. Chunked: the first
    ``budget`` held-out bytes in non-overlapping windows of L (the mean over positions 0..L-1, as the
    report's Table 3). Sliding: bytes 16S .. 16S + ``sliding_budget``, each predicted with 3L/4 .. L - 1
    bytes before it (windows sliding by L/4, each scoring its last L/4 bytes): the model *at* length L."""
    from openqwen.eval.tasks.perplexity import perplexity, sliding_perplexity
    from openqwen.infer.engine import Engine

    stream: list[int] = []
    for d in held:
        stream += list(d)
    top = max(FACTORS) * S
    table: dict[str, dict[int, float]] = {}
    sliding: dict[str, dict[int, float]] = {}
    base = model.config
    tok = SimpleNamespace(vocab_size=256, eos_id=None)
    for name, opts in OPTIONS.items():
        fields = {k: (WINDOWS if v == "scheme" else v) for k, v in opts.items()}
        model.config = base.replace(**fields)
        engine = Engine(model, tok, max_batch_size=1, max_seq_len=top, background=False)
        table[name], sliding[name] = {}, {}
        for f in FACTORS:
            L = f * S
            table[name][L] = perplexity(engine, stream[:budget], L, max_windows=budget // L)["perplexity"]
            if sliding_budget:
                sliding[name][L] = sliding_perplexity(engine, stream, L, L // 4, start=top,
                                                      stop=top + sliding_budget)["perplexity"]
        print(f"{name:24s}" + "".join(f"{table[name][f * S]:9.3f}" for f in FACTORS)
              + ("   sliding" + "".join(f"{sliding[name][f * S]:9.3f}" for f in FACTORS) if sliding_budget else ""),
              flush=True)
    model.config = base
    return table, sliding


def markdown(table: dict[str, dict[int, float]]) -> str:
    from openqwen.eval.tasks.perplexity import markdown_table

    return markdown_table(table)


def plot(table: dict[str, dict[int, float]], path: Path) -> None:
    from openqwen.eval.tasks.perplexity import plot_curves

    plot_curves(table, path, training_length=S,
                title=f"Table 3 in shape: a nano Qwen trained at S={S} (bytes), to 16x S")


def time_decoding(context: int, threads: int) -> dict[str, float]:
    """Costs at long context, measured against a peer in the same run (a random model of the
    Qwen2.5-0.5B attention shape, 24 layers x 2 KV heads x 64, hidden 256 so the weights stay small):
    one re-rotation of a row's cached keys (rope_update="rotate" at an alpha boundary) against one plain
    decode step, and fused decode steps with windows of 512 in every layer against full attention."""
    from openqwen import Qwen, QwenConfig
    from openqwen.infer.kernels import FusedDecoder

    torch.set_num_threads(threads)
    shape = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=24, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, seq_length=context // 2, max_position_embeddings=2 * context)
    out: dict[str, float] = {"context": context}

    def best(fn, n=5) -> float:
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.no_grad():
        for name, extra in (("full", {}), ("window512", {"window_sizes": [512] * 24}),
                            ("ntk-rotate", {"use_dynamic_ntk": True, "rope_update": "rotate"})):
            torch.manual_seed(0)
            model = Qwen(QwenConfig(**shape, **extra)).eval()
            cache = model.new_cache(1, context + 16)
            cache.keys = [torch.randn_like(k) for k in cache.keys]  # as if `context` tokens were prefilled
            cache.lengths.fill_(context)
            cache.rope_bases.fill_(float(model.config.rope_theta))
            fused = FusedDecoder.build(model, cache)
            ids = torch.zeros(1, 1, dtype=torch.long)

            def step():
                cache.lengths.fill_(context)
                (fused.hidden_states(ids) if fused is not None else model.hidden_states(ids, cache=cache))

            if name == "ntk-rotate":  # the row just crossed from alpha 1 to 3: each step re-rotates it
                def crossing():
                    cache.rope_bases.fill_(float(model.config.rope_theta))
                    step()
                out["step_at_boundary_s"] = best(crossing)
                out["step_after_s"] = best(step)
            else:
                out[f"step_{name}_s"] = best(step)
    return out


def measure_memory(contexts: list[int], threads: int) -> dict:
    """Memory of the KV cache as the context grows, measured: the process's resident memory before and
    after the engine's cache for one row of ``context`` positions is allocated, filled and read by one
    fused decode step at its last position (a random model of Qwen2.5-0.5B's attention shape, 24 layers
    x 2 KV heads x 64, hidden 256). Every cache stays alive until the end, so no allocation reuses memory
    freed by an earlier one and each delta is that cache's own pages."""
    from openqwen import Qwen, QwenConfig
    from openqwen.infer.kernels import FusedDecoder

    torch.set_num_threads(threads)
    page = __import__("os").sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * page

    layers = 24
    shape = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=layers,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, seq_length=32768,
                 max_position_embeddings=2 * max(contexts))
    options = {"full attention": {}, "windows 1024 (every layer)": {"window_sizes": [1024] * layers},
               "windows 8x1024,8x2048,8x4096": {"window_sizes": [1024] * 8 + [2048] * 8 + [4096] * 8},
               "full attention, int8 KV": {"kv_cache_dtype": "int8"},
               "windows 1024 + int8 KV": {"window_sizes": [1024] * layers, "kv_cache_dtype": "int8"}}
    torch.manual_seed(0)
    model = Qwen(QwenConfig(**shape)).eval()
    base, kept, out = model.config, [], {"contexts": contexts, "rss_mib": {}, "nbytes_mib": {}}
    ids = torch.zeros(1, 1, dtype=torch.long)
    with torch.inference_mode():
        for name, fields in options.items():
            model.config = base.replace(**fields)
            out["rss_mib"][name], out["nbytes_mib"][name] = {}, {}
            for n in contexts:
                before = rss()
                cache = model.new_cache(1, n)
                for t in cache.keys + cache.values + cache.key_scales + cache.value_scales:
                    t.fill_(1)  # touch every page (zeros may be mapped lazily)
                cache.lengths.fill_(n - 1)
                cache.rope_bases.fill_(float(base.rope_theta))
                fused = FusedDecoder.build(model, cache)
                fused.hidden_states(ids) if fused is not None else model.hidden_states(ids, cache=cache)
                out["rss_mib"][name][n] = (rss() - before) / 2**20
                out["nbytes_mib"][name][n] = cache.nbytes() / 2**20
                kept.append(cache)
            print(f"{name:30s}" + "".join(f"{out['rss_mib'][name][n]:9.1f}" for n in contexts), flush=True)
    model.config = base
    return out


def real_model_control(lengths: list[int], threads: int, timing_context: int) -> dict:
    """The real Qwen2.5-Coder-0.5B-Instruct GGUF (trained at 32K) as a control.

    1. perplexity of the first L tokens of a long stdlib file (difflib.py, then tarfile.py) for each L,
       plain and with NTK + LogN + windows of L: below the training length
       every option is a no-op, so the two must be equal bit for bit (fp32 weights, so the comparison is
       about the options, not the precision);
    2. fused decode at ``timing_context`` cached tokens (the checkpoint's own precision): full attention
       against windowed layers (ring buffers), KV-cache bytes and time per step, best of 5, in one run;
       and the int8 KV cache beside them. The cache is filled with random keys, as the attention cost
       does not depend on their values.
    """
    import sysconfig

    from openqwen.artifacts import artifact_path
    from openqwen.eval.tasks.perplexity import perplexity
    from openqwen.infer.engine import Engine
    from openqwen.infer.loading import apply_long_context, load_for_inference
    from openqwen.tokenizer import QwenTokenizer

    torch.set_num_threads(threads)
    path = artifact_path("qwen25-coder-0.5b-instruct-gguf")
    if path is None:
        raise SystemExit("artifact 'qwen25-coder-0.5b-instruct-gguf' not fetched (../shared/tools/fetch-artifacts)")
    tok = QwenTokenizer.from_pretrained(path)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    ids: list[int] = []
    for name in ("difflib.py", "tarfile.py"):
        ids += tok.encode((stdlib / name).read_text())
    top = max(lengths, default=0)
    ids = ids[:top]
    out: dict = {"model": path.name, "tokens": len(ids), "perplexity": {}}
    if lengths:
        model = load_for_inference(path, "fp32")
        base = model.config
        for L in lengths:
            row = {}
            for name, settings in (("plain", {}), ("ntk+logn+windows", {"rope_scaling": "ntk", "logn": True,
                                                                          "window_sizes": str(L)})):
                model.config = base
                apply_long_context(model, settings)
                engine = Engine(model, tok, max_batch_size=1, max_seq_len=L, background=False)
                t = time.perf_counter()
                row[name] = perplexity(engine, ids, L, max_windows=1)["perplexity"]  # the first L tokens
                print(f"L={L} {name}: perplexity {row[name]!r} ({time.perf_counter() - t:.0f} s)", flush=True)
            row["bit_exact"] = row["plain"] == row["ntk+logn+windows"]
            out["perplexity"][L] = row
        # the int8 KV cache's quality cost on the shortest long prompt (scoring reads the rounded cache)
        L = min(lengths)
        model.config = base.replace(kv_cache_dtype="int8")
        engine = Engine(model, tok, max_batch_size=1, max_seq_len=L, background=False)
        out["int8_kv"] = {"length": L, "perplexity": perplexity(engine, ids, L, max_windows=1)["perplexity"],
                          "fp32_kv_perplexity": out["perplexity"][L]["plain"]}
        print("int8 KV:", out["int8_kv"], flush=True)
        model.config = base
        del model, engine
    if timing_context:
        out["decode"] = time_real_decoding(path, timing_context, threads)
    return out


def time_real_decoding(path: Path, context: int, threads: int) -> dict:
    from openqwen.infer.kernels import FusedDecoder
    from openqwen.infer.loading import load_for_inference

    model = load_for_inference(path)
    layers = model.config.num_hidden_layers
    third = layers // 3
    options = {"full attention": {},
               "windows 1024 (every layer)": {"window_sizes": [1024] * layers},
               f"windows {third}x1024,{third}x2048,{layers - 2 * third}x4096": {
                   "window_sizes": [1024] * third + [2048] * third + [4096] * (layers - 2 * third)},
               "full attention, int8 KV": {"kv_cache_dtype": "int8"},
               "windows 1024 + int8 KV": {"window_sizes": [1024] * layers, "kv_cache_dtype": "int8"}}
    base = model.config
    result = {"context": context, "threads": threads}
    ids = torch.zeros(1, 1, dtype=torch.long)
    for name, fields in options.items():
        model.config = base.replace(**fields)
        cache = model.new_cache(1, context + 8)
        gen = torch.Generator().manual_seed(0)
        for bufs in (cache.keys, cache.values):
            for b in bufs:
                b.copy_(torch.randint(-100, 100, b.shape, generator=gen).to(b.dtype) if b.dtype == torch.int8
                        else torch.randn(b.shape, generator=gen).to(b.dtype))
        for sc in cache.key_scales + cache.value_scales:
            sc.fill_(0.02)
        fused = FusedDecoder.build(model, cache)
        times = []
        with torch.inference_mode():
            for _ in range(6):
                cache.lengths.fill_(context)
                t = time.perf_counter()
                fused.hidden_states(ids) if fused is not None else model.hidden_states(ids, cache=cache)
                times.append(time.perf_counter() - t)
        result[name] = {"kv_cache_mib": cache.nbytes() / 2**20, "step_s": min(times[1:]),
                        "path": "fused C" if fused is not None else FusedDecoder.why_not}
        print(name, result[name], flush=True)
        del cache, fused
    model.config = base
    full = result["full attention"]
    for name in options:
        result[name]["memory_vs_full"] = result[name]["kv_cache_mib"] / full["kv_cache_mib"]
        result[name]["time_vs_full"] = result[name]["step_s"] / full["step_s"]
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/longctx", help="working folder (the trained model goes here)")
    p.add_argument("--steps", type=int, default=400, help="training steps at S=128, batch 16 (default 400)")
    p.add_argument("--budget", type=int, default=16 * 1024, help="held-out tokens scored at every length")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="where the table json and plot go")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seq-length", type=int, default=S, help=f"training length S (default {S})")
    p.add_argument("--min-ratio", type=float, default=2.0,
                   help="asserted plain / all-three perplexity at 4x S (default 2: what the nano model reaches; "
                        "the issue's 5x is the report's 7B magnitude, see docs/long-context.md)")
    p.add_argument("--sliding-budget", type=int, default=4096,
                   help="tokens scored at every length by the sliding evaluation (stride L/4; 0: skip; default 4096)")
    p.add_argument("--min-sliding-ratio", type=float, default=5.0,
                   help="asserted plain / all-three perplexity at 4x S, sliding (default 5: the issue's shape)")
    p.add_argument("--rope-theta", type=float, default=10000.0, help="RoPE base of the nano model (default 10000)")
    p.add_argument("--timing", type=int, default=0, metavar="CONTEXT",
                   help="only time decoding at this context (re-rotation, windows vs full) and exit")
    p.add_argument("--memory", default="", metavar="N1,N2,...",
                   help="only measure the KV cache's resident memory at these contexts (full vs ring buffers vs "
                        "int8) and exit; writes docs/long-context-memory.json")
    p.add_argument("--control", default="", metavar="L1,L2,...",
                   help="only the real-GGUF control: perplexity at these lengths plain and with the options "
                        "(bit-exact below 32K), then --control-timing; writes docs/long-context-control.json")
    p.add_argument("--control-timing", type=int, default=8192, metavar="CONTEXT",
                   help="with --control: fused decode at this context, full vs windows vs int8 KV (0: skip)")
    args = p.parse_args()
    if args.memory:
        result = measure_memory([int(x) for x in args.memory.split(",")], args.threads)
        (Path(args.docs) / "long-context-memory.json").write_text(json.dumps(result, indent=2) + "\n")
        for name, row in result["rss_mib"].items():  # the rings' memory stops growing at their windows
            if "windows 1024" in name:
                grown = [row[n] for n in result["contexts"] if n >= 2048]
                assert max(grown) - min(grown) < 2.0, f"{name}: resident memory grew with the context: {row}"
        return 0
    if args.control:
        lengths = [int(x) for x in args.control.split(",") if x.strip() and x.strip() != "0"]
        result = real_model_control(lengths, args.threads, args.control_timing)
        (Path(args.docs) / "long-context-control.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        assert all(row["bit_exact"] for row in result["perplexity"].values()), "the options changed perplexity below 32K"
        return 0
    if args.timing:
        print(json.dumps(time_decoding(args.timing, args.threads), indent=2))
        return 0
    set_seq_length(args.seq_length)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, held = corpus()
    saved = out / "model"
    t0 = time.perf_counter()
    steps_file = saved / "steps.txt"
    if steps_file.exists() and int(steps_file.read_text()) == args.steps:
        from openqwen.checkpoint import load_model

        model = load_model(saved).eval()
        print(f"loaded {saved}")
    else:  # a fresh run, or more steps on top of the last checkpoint (the trainer resumes from it)
        model = train_model(train, args.steps, out, rope_theta=args.rope_theta)
        from openqwen.checkpoint import save_model

        save_model(model, saved)
        steps_file.write_text(f"{args.steps}\n")
        print(f"trained in {time.perf_counter() - t0:.0f} s; saved {saved}")
    t1 = time.perf_counter()
    table, sliding = evaluate(model, held, args.budget, args.sliding_budget)
    print(f"evaluated in {time.perf_counter() - t1:.0f} s")
    docs = Path(args.docs)
    result = {"S": S, "windows": WINDOWS, "steps": args.steps, "budget_tokens": args.budget,
              "rope_theta": model.config.rope_theta, "sliding_budget_tokens": args.sliding_budget,
              "perplexity": {k: {str(L): v for L, v in row.items()} for k, row in table.items()},
              "sliding_perplexity": {k: {str(L): v for L, v in row.items()} for k, row in sliding.items()}}
    (docs / "long-context-table3.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(table, docs / "long-context-table3.png")
    print(markdown(table))
    if args.sliding_budget:
        from openqwen.eval.tasks.perplexity import plot_curves

        plot_curves(sliding, docs / "long-context-table3-sliding.png", training_length=S,
                    title=f"at context L (sliding, stride L/4): nano Qwen trained at S={S}")
        print(markdown(sliding))
    plain, best = table["plain"], table["+ windows (all three)"]
    ratio = plain[4 * S] / best[4 * S]
    print(f"chunked: plain / all three at 4x S: {ratio:.1f}x (the report's Qwen-7B: 469.81 / 3.49 = 135x)")
    # the shape: plain degrades past S and keeps degrading; all three stay near the S value to 16x S
    assert all(plain[f * S] < plain[2 * f * S] for f in FACTORS[:-1]), "plain should degrade with length past S"
    assert ratio >= args.min_ratio, f"plain at 4x S is only {ratio:.2f}x all three (wanted >= {args.min_ratio})"
    assert max(best[f * S] for f in FACTORS) <= 1.15 * best[S], "all three should stay within 15 % of their S value"
    if args.sliding_budget:
        at = sliding["plain"][4 * S] / sliding["+ windows (all three)"][4 * S]
        print(f"at 4x S (sliding): plain / all three = {at:.1f}x")
        assert at >= args.min_sliding_ratio, f"at 4x S plain is only {at:.2f}x all three (wanted >= {args.min_sliding_ratio})"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
