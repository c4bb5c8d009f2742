"""Decode speed at batch 1 on the real Qwen2.5-Coder-0.5B-Instruct GGUF, against peers, in one run.

    .venv/bin/python -m benchmarks.bench_infer [--threads 1] [--tokens 48] [--llama-python PATH]

Measures, on the same weights and the same number of threads:
  * the machine's memory bandwidth (best of several full passes over a 512 MiB tensor) and from it
    the roofline of each precision: bandwidth / bytes of weights read per decoded token;
  * openqwen's engine in fp32, bf16 and int8 (decode tokens/s, prefill excluded);
  * transformers' ``generate`` (fp32 and bf16; decode rate = extra tokens / extra time);
  * llama.cpp (llama-cpp-python) on the q4_k_m file itself, when ``--llama-python`` names a Python
    that has it installed.
Writes docs/benchmarks/inference.md (table), inference.json and inference.png (plot).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

PROMPT = "Write a Python function that checks whether a number is prime, with a docstring and tests."
OUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


class BandwidthProbe:
    """Times full reads of a 512 MiB fp32 tensor (far larger than the caches). A decode step streams the
    weights once, so ``bytes / read bandwidth`` is the fastest a step can be: the roofline. The tensor
    sits on transparent huge pages where the OS gives them, as the engine's weights do
    (openqwen.infer.arena): on the 2-core Zen 4 VM that reads 12-18 % faster than 4 KB pages, so the
    roofline is the best read this machine does, not the one the weights used to get."""

    def __init__(self, mib: int = 512) -> None:
        from openqwen.infer.arena import advise_huge_pages, anonymous_block  # noqa: PLC0415

        self.a = anonymous_block(mib << 20).view(torch.float32).uniform_()
        advise_huge_pages(self.a)
        self.a.sum()

    def seconds_per_byte(self) -> float:
        t = time.perf_counter()
        self.a.sum()
        return (time.perf_counter() - t) / (self.a.numel() * 4)


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes a batch-1 decode step must read: every linear layer's weight (+scales, bias), the norms,
    and one embedding row (the lookup touches a single row)."""
    total = 0
    for name, mod in model.named_modules():
        if name == "embed_tokens":
            total += mod.weight.shape[1] * mod.weight.element_size()
            continue
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def hf_decode_seconds(hf, ids: list[int], n: int) -> float:
    """Seconds per decoded token of transformers' ``generate``: (time for n+1 tokens - time for 1) / n,
    which removes the prefill."""
    x = torch.tensor([ids])

    def run(k):
        t = time.perf_counter()
        hf.generate(x, max_new_tokens=k, min_new_tokens=k, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t

    t1 = run(1)
    return (run(n + 1) - t1) / n


def hf_from_model(model, dtype):
    import transformers

    from openqwen.checkpoint import hf_state_from_model, transformers_config

    c = model.config
    cfg = transformers_config(c)
    with torch.device("meta"):
        hf = transformers.Qwen2ForCausalLM(cfg)
    state = {k: v.to(dtype) for k, v in hf_state_from_model(model).items()}
    hf.load_state_dict(state, strict=False, assign=True)
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config=cfg)  # its buffers are not in the state dict
    if c.tie_word_embeddings:
        hf.tie_weights()
    return hf.eval()


LLAMA_SCRIPT = r"""
import sys, time, json
from llama_cpp import Llama
path, threads, n, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512, verbose=False)
toks = llm.tokenize(prompt.encode(), add_bos=False)
def run(k):
    llm.reset()
    t = time.perf_counter()
    llm.create_completion(prompt, max_tokens=k, temperature=0, logit_bias={llm.token_eos(): -1e9})
    return time.perf_counter() - t
run(2)
rates = []
for _ in range(3):
    t1 = run(1); tn = run(n + 1)
    rates.append(n / (tn - t1))
rates.sort()
print(json.dumps({"tok_s": rates[1], "runs": rates}))
"""


def llama_decode_rate(python: str, gguf: Path, threads: int, n: int) -> float | None:
    try:
        res = subprocess.run([python, "-c", LLAMA_SCRIPT, str(gguf), str(threads), str(n), PROMPT],
                             capture_output=True, text=True, timeout=1200)
        return float(json.loads(res.stdout.strip().splitlines()[-1])["tok_s"])
    except Exception as e:  # noqa: BLE001 - an optional peer
        print(f"llama.cpp peer failed: {e}", file=sys.stderr)
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for every engine and peer [2]")
    ap.add_argument("--rounds", type=int, default=8, help="rounds; each runs 4 decode steps of every contender [8]")
    ap.add_argument("--tokens", type=int, default=48, help="decoded tokens for llama.cpp [48]")
    ap.add_argument("--batch-sizes", default="4,16", help="int8 aggregate decode at these batch sizes ['4,16']")
    ap.add_argument("--llama-python", default=None, help="a Python with llama-cpp-python installed")
    ap.add_argument("--model", default=None, help="GGUF file (default: the fetched artifact)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write docs/benchmarks")
    args = ap.parse_args()

    from openqwen import load_model
    from openqwen.artifacts import artifact_path
    from openqwen.infer import quant
    from openqwen.infer.engine import Engine
    from openqwen.infer.sampling import SamplingParams
    from openqwen.tokenizer import QwenTokenizer

    torch.set_num_threads(args.threads)
    gguf = Path(args.model) if args.model else artifact_path("qwen25-coder-0.5b-instruct-gguf")
    if gguf is None:
        print("the GGUF artifact is not fetched (../shared/tools/fetch-artifacts)", file=sys.stderr)
        return 1
    tok = QwenTokenizer.from_pretrained(gguf)
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}])
    base = load_model(gguf, dtype="fp32")
    print(f"model: {gguf.name}, {sum(p.numel() for p in base.parameters()) / 1e6:.0f}M parameters; "
          f"kernels: {quant.kernel_status()}; threads: {args.threads}", flush=True)

    rows = []
    probe = BandwidthProbe()
    per_round = 4

    # Every contender is measured a little in every round, in turn, next to a bandwidth read: this
    # machine is shared, its load drifts over minutes, and only measurements taken side by side compare.
    contenders: dict[str, dict] = {}
    ref_model = None
    for precision in ("fp32", "bf16", "int8"):
        model = base if precision == "fp32" else copy.deepcopy(base)
        if precision == "bf16":
            model = quant.optimise_for_decode(model.to(torch.bfloat16))
        elif precision == "int8":
            model = quant.quantize_int8(model)
        variants = [(1, True)] + ([(1, False)] + [(int(b), True) for b in args.batch_sizes.split(",") if b]
                                  if precision == "int8" else [])
        for batch, fused in variants:
            engine = Engine(model, tok, max_batch_size=batch, background=False, fused=fused,
                            max_seq_len=len(ids) + args.rounds * per_round + 16)
            for i in range(batch):
                engine.submit(ids, SamplingParams(max_new_tokens=args.rounds * per_round + 4, ignore_eos=True,
                                                  temperature=0))
            engine.step()  # prefill + first token
            engine.step()  # warm-up decode step
            name = precision if batch == 1 else f"{precision} batch {batch}"
            if not fused:
                name = f"{precision} torch step"  # the same weights, decoded by the torch model (no fused step)
            contenders[name] = dict(kind="ours", engine=engine, batch=batch, bytes=weight_bytes_per_token(model),
                                    step_s=[], read_s=[])
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        hf = hf_from_model(base, dtype)
        hf_decode_seconds(hf, ids, 1)  # warm-up
        contenders[f"transformers {precision}"] = dict(kind="hf", hf=hf, step_s=[])
        if precision == "fp32":
            ref_model = hf

    for r in range(args.rounds):
        for name, c in contenders.items():
            if c["kind"] == "ours":
                t = time.perf_counter()
                for _ in range(per_round):
                    c["engine"].step()
                c["step_s"].append((time.perf_counter() - t) / per_round)
                c["read_s"].append(probe.seconds_per_byte() * c["bytes"])
            else:
                c["step_s"].append(hf_decode_seconds(c["hf"], ids, per_round))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{n} {c['batch'] if c['kind'] == 'ours' else 1} x {1 / c['step_s'][-1]:.2f}"
            for n, c in contenders.items()), flush=True)

    med = statistics.median
    hf32 = contenders["transformers fp32"]["step_s"]
    for name, c in contenders.items():
        step = c["step_s"]
        if c["kind"] == "ours":
            while c["engine"].num_active:
                c["engine"].step()
            if c["batch"] > 1:
                rows.append(dict(engine="openqwen", precision=name, tok_s=c["batch"] / med(step), aggregate=True,
                                 step_ms=1000 * med(step),
                                 vs_batch1=med([c["batch"] * b / s for s, b in zip(step, contenders["int8"]["step_s"])])))
                print(f"      openqwen {name}: {rows[-1]['tok_s']:.2f} tok/s aggregate, "
                      f"{rows[-1]['vs_batch1']:.1f}x batch 1", flush=True)
                continue
            row = dict(engine="openqwen", precision=name, tok_s=1 / med(step), bytes_per_token=c["bytes"],
                       roofline_tok_s=1 / med(c["read_s"]), bandwidth_gb_s=c["bytes"] / med(c["read_s"]) / 1e9,
                       of_roofline=med([rd / st for rd, st in zip(c["read_s"], step)]),
                       vs_transformers_fp32=med([h / st for h, st in zip(hf32, step)]))
        else:
            row = dict(engine="transformers", precision=name.split()[-1], tok_s=1 / med(step),
                       vs_transformers_fp32=med([h / st for h, st in zip(hf32, step)]))
        rows.append(row)
        extra = (f", {row['of_roofline']:.0%} of its roofline {row['roofline_tok_s']:.2f}"
                 if row.get("of_roofline") else "")
        print(f"{row['engine']:>14} {row['precision']:>6}: {row['tok_s']:6.2f} tok/s{extra}, "
              f"{row['vs_transformers_fp32']:.1f}x transformers fp32", flush=True)

    # the same greedy tokens: openqwen fp32 / int8 against transformers' generate on the same weights
    from openqwen.infer.sampling import SamplingParams as SP

    ref = ref_model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, pad_token_id=0)[0, len(ids):]
    for precision in ("fp32", "int8"):
        eng = contenders[precision]["engine"]
        got = eng.generate([ids], SP(max_new_tokens=12, temperature=0))[0].token_ids
        same = got == ref.tolist()[: len(got)]
        print(f"  greedy tokens, openqwen {precision} == transformers fp32 generate: {same}")
        for row in rows:
            if row["engine"] == "openqwen" and row["precision"] == precision:
                row["greedy_equals_transformers"] = same

    def record(name, precision, rate):
        rows.append(dict(engine=name, precision=precision, tok_s=rate))
        print(f"{name:>14} {precision:>6}: {rate:6.2f} tok/s", flush=True)

    if args.llama_python:
        rate = llama_decode_rate(args.llama_python, gguf, args.threads, args.tokens)
        if rate is not None:
            record("llama.cpp", "q4_k_m", rate)

    meta = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), machine=platform.processor() or
                platform.machine(), cpu=_cpu_name(), threads=args.threads, tokens=args.tokens,
                torch=torch.__version__, command="python -m benchmarks.bench_infer " + " ".join(sys.argv[1:]),
                kernels=quant.kernel_status())
    if not args.no_write:
        write_report(rows, meta)
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({len(Path('/proc/cpuinfo').read_text().split('processor')) - 1} cores)"
    except OSError:
        pass
    return platform.processor()


def write_report(rows: list[dict], meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "inference.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=2) + "\n")
    rows = [r for r in rows if not r.get("aggregate")]
    labels = [f"{r['engine']}\n{r['precision']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(labels, [r["tok_s"] for r in rows], color=["C0" if r["engine"] == "openqwen" else "C7" for r in rows])
    for i, r in enumerate(rows):
        if r.get("roofline_tok_s"):
            ax.plot([i - 0.4, i + 0.4], [r["roofline_tok_s"]] * 2, "r--", lw=1.5,
                    label="memory-bandwidth roofline" if i == 0 else None)
    ax.set_ylabel("decode tokens/s, batch 1")
    ax.set_title(f"Qwen2.5-Coder-0.5B decode, {meta['threads']} thread(s), {meta['cpu']}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "inference.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
