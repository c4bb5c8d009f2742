"""Training throughput: openqwen's training step vs transformers' Qwen2ForCausalLM in one run, same
shapes, batch, weights, data and optimiser (fused AdamW 0.9/0.95, wd 0.1 on matrices, clip 1.0), on
two configs: the benchmark's fixed one and the demo's nano pretraining (nano-1m, vocabulary 4096,
sequence 256, batch 16). Writes docs/benchmarks/train.md.

    .venv/bin/python -m benchmarks.bench_train [--steps 6] [--threads 1] [--configs fixed,demo]
        [--precisions fp32,bf16]

Variants per precision: transformers eager and transformers + ``torch.compile`` (the whole model,
its usual way); openqwen "before" (fp32 only: the loss over full fp32 logits, as the loop computed it
until issue 19, on MKL); openqwen eager (the chunked loss fused with the head,
openqwen/train/chunked_loss.py, on the fp32 matmul library ``train.cpu_matmul: auto`` picks here; where
that is oneDNN, also "eager, MKL" to show what the library buys); openqwen + regional ``torch.compile`` (each block, as ``--train.compile true``). bf16 = autocast, fp32
weights and AdamW state, loss in fp32, for both projects alike. The default precisions are fp32, plus
bf16 where ``train.precision: auto`` picks it on this machine. Each variant trains from the same
weights on the same batches, the variants taking turns step by step, so the loss curves must agree
and load from other processes hits all alike; compilation is paid in the first step and reported
end to end.

Two clocks per step: wall time and CPU time (this process's and its finished children's: the C++
compiler inductor runs). On a shared machine the wall clock measures the other jobs as much as the
step; with one torch thread the CPU time is the step's own work. Ratios are reported on both.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

# compile in this process, so that its CPU time counts compilation (inductor's worker pool would hide it)
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F

from openqwen import Qwen, QwenConfig
from openqwen.checkpoint import hf_state_from_model
from openqwen.config import get_preset
from openqwen.train.config import OptimSection
from openqwen.train.cpu_matmul import apply_cpu_matmul, resolve_cpu_matmul
from openqwen.train.loop import compile_blocks
from openqwen.train.optim import build_optimizer, param_groups
from openqwen.train.precision import resolve_precision, step_flops
from openqwen.train.tasks import NextTokenTask

CONFIGS = {
    "fixed": (QwenConfig(vocab_size=8192, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, tie_word_embeddings=True, seq_length=256,
                         max_position_embeddings=1024), 8),
    "demo": (get_preset("nano-1m", vocab_size=4096, seq_length=256), 16),
}
WARM = 2  # untimed steps (a compiled variant's first one is its compilation, reported apart)
DEMO_STEPS = 406  # the demo's pretraining steps in its time budget on a 2-core machine (issue 19)
Step = Callable[[torch.Tensor], float]
AUTO_MATMUL, AUTO_MATMUL_WHY = resolve_cpu_matmul("auto", torch.device("cpu"), "fp32", False, "none")

NOTES = """## Notes

- **Where the step's time goes.** The fixed config, fp32 eager, MKL, torch.profiler on the 2-core
  AMD EPYC (2026-12-03): matrix products ~70 % of the step (the 8192-row tied head's three products
  alone ~28 %), SDPA forward and backward ~12 %, the loss's log-sum-exp, subtract and exp passes
  ~10 % before they became one softmax, the rest RoPE, RMSNorm, SiLU x up, residual adds and AdamW (~1 %). On the demo's nano
  config (d 128, before the chunked loss) the matmuls were ~25 % of the step and RoPE ~16 %, the
  full-logits cross-entropy ~14 %.
- **The chunked loss** (`openqwen/train/chunked_loss.py`, every next-token loss of the loop:
  pretraining, SFT, PPO's ptx term): per chunk of 1024 positions the logits, their softmax (one fused
  pass; the loss is -log p of the target, log-sum-exp where p underflows) and, while the chunk is in
  cache, the gradients for the hidden states and the head weight; the backward pass scales them.
  Masked positions (SFT prompts, padding) are dropped before the head. Peak memory of the loss falls
  from several [N, vocab] fp32 buffers to one [1024, vocab] chunk (at a 152K vocabulary, sequence
  2048 x batch 8: ~5 GiB of fp32 logits alone against 0.6 GiB).
- **The fp32 matmul library** (`train.cpu_matmul`, `openqwen/train/cpu_matmul.py`): torch sends fp32
  products to MKL, which does not run its AVX-512 kernels on AMD CPUs; oneDNN, inside torch too,
  picks kernels by instruction set. `auto` takes oneDNN for the linears' forward products and input
  gradients and for the loss's head products on non-Intel CPUs (the weight gradients stay on MKL,
  faster there), in eager fp32 training; Intel CPUs keep MKL. The "eager, MKL" rows show what it
  buys where auto picks oneDNN.
- **Loss curves.** The float64 column is transformers' model run in float64 (weights, activations,
  loss) on the same weights and batches: the curve every fp32 variant approximates. The fixed config
  at LR 1e-3 turns sensitive after a few steps (its loss rises at steps 6 and 10), and from there fp32
  rounding differences grow in every implementation alike, transformers' own compiled and eager runs
  included; the comparison that says whether two fp32 implementations compute the same step is the
  steps before that, and the distance of each to float64.
- **Regional compilation** (`--train.compile true`, `train.compile_scope: blocks`): each block is
  compiled in place; the blocks share one graph, so compile time is one block's, and the model stays
  a plain module (checkpoint names, `hidden_states` and the chunked loss unchanged). transformers is
  compiled the way its docs show, `torch.compile(model)` on the whole model. Inductor's CPU products
  are MKL's, so where eager runs on oneDNN a compiled fp32 step can be the slower one.
- **bf16 on CPU.** bf16 autocast pays only where the CPU multiplies bf16 natively (AVX512-BF16, AMX):
  on the AVX2 EPYC and the AVX-512 Xeon without the BF16 extension of earlier sessions oneDNN emulated
  it and a step ran at 0.14x fp32 (2026-11-30). `train.precision: auto` (the default) reads the CPU
  flags at start and prints its choice; the bf16 rows above say what it buys on this machine. The
  bf16 loss curves are compared with transformers under the same autocast: rounding, not a bug,
  separates either from the fp32 curve by ~1e-3 after a few steps.
- **Clocks.** Variants take turns step by step, so load from other processes hits all alike; with one
  torch thread the CPU-time columns are the steps' own work (and the compiler's, in the first step).
  The header gives the machine's load.
- **GPU.** `benchmarks/gpu_check.sh` on one H200 (torch 2.11 + CUDA 13, 2026-11-30, before this
  work): FSDP2 through torchrun (1 process, NCCL), bf16 autocast, a Qwen2.5-0.5B-shaped model (494M
  parameters with the 151,936-row tied embedding), sequence 2048, batch 8, random tokens: 64,757
  tokens/s, 32.2 % MFU against the measured bf16 matmul peak. No GPU was lent in the sessions that
  built the chunked loss, regional compilation and the matmul choice: not measured with them."""


def cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (inductor's C++ compiler runs as one)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def batches(steps: int, cfg: QwenConfig, batch: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # a learnable stream (repeating random 16-token motifs) so the loss curve has a shape to compare
    motifs = torch.randint(0, cfg.vocab_size, (64, 16), generator=g)
    return [motifs[torch.randint(0, 64, (batch, cfg.seq_length // 16), generator=g)].reshape(batch, cfg.seq_length)
            for _ in range(steps)]


def ours(cfg: QwenConfig, init: dict, precision: str = "fp32", compiled: bool = False,
         plain_loss: bool = False, matmul: str = "auto") -> Step:
    """One training step of openqwen's loop body (the task's loss, AdamW, clipping) as a closure, with
    the fp32 matmul library the trainer would pick (``train.cpu_matmul``: ``matmul``)."""
    model = Qwen(cfg)
    model.load_state_dict(init)
    if compiled:
        compile_blocks(model)
    apply_cpu_matmul(model, matmul, torch.device("cpu"), precision, compiled, "none")
    opt = build_optimizer(model, OptimSection(lr=1e-3))
    task = NextTokenTask()

    def step(ids: torch.Tensor) -> float:
        batch = {"input_ids": ids, "labels": ids}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if plain_loss:
                logits = model(ids)
                loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum")
            else:
                loss, _ = task.loss(model, batch)
        n = task.count(batch)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item() / n

    return step


def hf_step(cfg: QwenConfig, model_ref: Qwen, precision: str = "fp32", compiled: bool = False) -> Step:
    """transformers' step on the same weights: its model's logits, fp32 cross-entropy, the same AdamW."""
    import transformers

    hf_cfg = transformers.Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=True, max_position_embeddings=cfg.max_position_embeddings, attn_implementation="sdpa")
    hf = transformers.Qwen2ForCausalLM(hf_cfg)
    if precision == "fp64":  # the reference curve: weights, activations and loss in float64
        hf.double()
    hf.load_state_dict(hf_state_from_model(model_ref), strict=False)
    hf.tie_weights()
    hf.train()
    opt = torch.optim.AdamW(param_groups(hf, 0.1), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=True)
    fwd = torch.compile(hf) if compiled else hf

    def step(ids: torch.Tensor) -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = fwd(input_ids=ids).logits
            loss_dtype = torch.float64 if precision == "fp64" else torch.float32
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).to(loss_dtype), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def variants(cfg: QwenConfig, ref: Qwen, init: dict, precisions: list[str],
             compiled: bool) -> dict[str, tuple[str, Step]]:
    """label -> (precision, step). ``transformers <p> eager`` is precision p's loss peer."""
    out: dict[str, tuple[str, Step]] = {}
    for p in precisions:
        out[f"transformers {p} eager"] = (p, hf_step(cfg, ref, p))
        if compiled:
            out[f"transformers {p} + torch.compile"] = (p, hf_step(cfg, ref, p, compiled=True))
        if p == "fp32":
            out["openqwen fp32 before (full-logits loss, MKL)"] = (p, ours(cfg, init, plain_loss=True, matmul="mkl"))
            if AUTO_MATMUL == "onednn":
                out["openqwen fp32 eager, MKL"] = (p, ours(cfg, init, p, matmul="mkl"))
        out[f"openqwen {p} eager"] = (p, ours(cfg, init, p))
        if compiled:
            out[f"openqwen {p} + torch.compile (blocks)"] = (p, ours(cfg, init, p, compiled=True))
    return out


def run_config(name: str, steps_n: int, precisions: list[str], compiled: bool = True) -> list[str]:
    cfg, batch = CONFIGS[name]
    torch.manual_seed(0)
    ref = Qwen(cfg)
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    data = batches(WARM + steps_n, cfg, batch)
    tokens = batch * cfg.seq_length
    steps = variants(cfg, ref, init, precisions, compiled)
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    losses: dict[str, list[float]] = {k: [] for k in steps}
    for k, ids in enumerate(data):
        for v, (_, step) in steps.items():
            w0, c0 = time.perf_counter(), cpu_seconds()
            losses[v].append(step(ids))
            cpu[v].append(cpu_seconds() - c0)
            wall[v].append(time.perf_counter() - w0)
        print(f"[{name}] step {k + 1}/{len(data)}, load {os.getloadavg()[0]:.1f}", flush=True)
    exact = None
    if "fp32" in precisions:  # untimed: transformers in float64 on the same weights and batches
        fp64 = hf_step(cfg, ref, "fp64")
        exact = [fp64(ids) for ids in data]
    med = {v: (statistics.median(wall[v][WARM:]), statistics.median(cpu[v][WARM:])) for v in steps}
    peer = "transformers fp32 eager" if "fp32" in precisions else f"transformers {precisions[0]} eager"
    peer_wall, peer_cpu = med[peer]
    rows = []
    for v, (p, _) in steps.items():
        w, c = med[v]
        same = f"transformers {p} eager"
        dloss = max(abs(a - b) for a, b in zip(losses[v], losses[same]))
        d64 = f"{max(abs(a - b) for a, b in zip(losses[v], exact)):.1e}" if exact and p == "fp32" else "-"
        rows.append(f"| {v} | {tokens / w:,.0f} | {peer_wall / w:.2f}x | {tokens / c:,.0f} | {peer_cpu / c:.2f}x | "
                    f"{dloss:.1e} | {d64} | {losses[v][-1]:.4f} | {wall[v][0]:.1f} / {cpu[v][0]:.1f} |")
        print(f"[{name}] {v:42s} wall {tokens / w:7.0f} tok/s x{peer_wall / w:4.2f}  cpu {tokens / c:7.0f} tok/cpu-s "
              f"x{peer_cpu / c:4.2f}  max|dloss| vs {same}: {dloss:.1e}  first step {wall[v][0]:.1f} s", flush=True)
    auto, why = resolve_precision("auto", torch.device("cpu"), step_flops(cfg, batch))
    lines = [f"`train.precision: auto` on this config here: {auto} ({why})."]
    if exact:
        gaps = {v: [abs(a - b) for a, b in zip(losses[v], exact)] for v in steps if steps[v][0] == "fp32"}
        # steps before the first one at which some fp32 variant is more than 1e-5 off the float64 curve
        agree = min(next((i for i, g in enumerate(gap) if g > 1e-5), len(exact)) for gap in gaps.values())
        lines.append(f"fp32 loss curves against the float64 one (transformers in float64): every fp32 variant "
                     f"within 1e-5 for the first {agree} of {len(exact)} steps; over all steps transformers eager "
                     f"departs by {max(gaps['transformers fp32 eager']):.1e}, openqwen eager by "
                     f"{max(gaps['openqwen fp32 eager']):.1e}.")
    for p in precisions if compiled else []:
        eager, comp = med[f"openqwen {p} eager"][1], med[f"openqwen {p} + torch.compile (blocks)"][1]
        first = cpu[f"openqwen {p} + torch.compile (blocks)"][0]
        extra, saving = first - comp, eager - comp
        even = f"{extra / saving:.0f} steps" if saving > 0 else "never (no per-step saving)"
        e2e = (eager * DEMO_STEPS) / (extra + comp * DEMO_STEPS)
        lines.append(f"{p}: regional compilation costs {extra:.1f} CPU-s once (first step {first:.1f} CPU-s, "
                     f"{comp:.2f} per step after it) and saves {saving:.2f} CPU-s a step over eager: it pays back "
                     f"after {even}; over {DEMO_STEPS} steps (the demo's pretraining), compilation included, "
                     f"compiled vs eager {e2e:.2f}x.")
    if "fp32" in precisions:
        before = med["openqwen fp32 before (full-logits loss, MKL)"][1]
        mkl = med["openqwen fp32 eager, MKL" if AUTO_MATMUL == "onednn" else "openqwen fp32 eager"][1]
        lines.append(f"The chunked loss alone (openqwen fp32 eager on MKL vs before): {before / mkl:.2f}x per step.")
        if AUTO_MATMUL == "onednn":
            lines.append(f"oneDNN for the fp32 linears and the loss's products (train.cpu_matmul auto here: "
                         f"{AUTO_MATMUL_WHY}) vs MKL: {mkl / med['openqwen fp32 eager'][1]:.2f}x per step.")
    if {"fp32", "bf16"} <= set(precisions):
        r = med["openqwen fp32 eager"][1] / med["openqwen bf16 eager"][1]
        cc = "+ torch.compile (blocks)"
        rc = f", compiled {med[f'openqwen fp32 {cc}'][1] / med[f'openqwen bf16 {cc}'][1]:.2f}x" if compiled else ""
        lines.append(f"bf16 autocast vs fp32 (openqwen): eager {r:.2f}x{rc} per step "
                     f"({'bf16' if r > 1 else 'fp32'} is the faster eager step).")
    if "fp32" in precisions and auto in precisions:
        best = min(med[v][1] for v in steps if v.startswith("openqwen"))
        lines.append(f"openqwen as a recipe runs it now (precision auto = {auto} here, eager) vs before issue 19 "
                     f"(fp32, full-logits loss): {before / med[f'openqwen {auto} eager'][1]:.2f}x per step; the best "
                     f"openqwen variant vs before: {before / best:.2f}x.")
    for line in lines:
        print(f"[{name}] {line}", flush=True)
    head = (f"### {name}: {cfg.num_hidden_layers} layers, d {cfg.hidden_size}, {cfg.num_attention_heads} heads / "
            f"{cfg.num_key_value_heads} KV heads, FFN {cfg.intermediate_size}, vocabulary {cfg.vocab_size} (tied), "
            f"sequence {cfg.seq_length}, batch {batch} ({tokens} tokens per step)")
    return [head, "",
            f"| variant | tokens/s (wall) | vs {peer} (wall) | tokens per CPU-s | vs {peer} (CPU) | "
            "max abs loss difference vs transformers eager, same precision | max abs loss difference vs float64 | "
            "final loss | first step s (wall / CPU) |",
            "|---|---|---|---|---|---|---|---|---|", *rows, "", *[f"- {line}" for line in lines], ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help=f"timed steps per variant (after {WARM} untimed ones)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine its CPU time is the step's own work)")
    ap.add_argument("--configs", default="fixed,demo", help="comma-separated: fixed, demo")
    auto, why = resolve_precision("auto", torch.device("cpu"))
    ap.add_argument("--precisions", default="fp32,bf16" if auto == "bf16" else "fp32",
                    help="comma-separated: fp32, bf16 (default: fp32, and bf16 where precision auto picks it here)")
    ap.add_argument("--no-compile", action="store_true", help="eager variants only (no compilation to wait for)")
    ap.add_argument("--out", default="docs/benchmarks/train.md")
    args = ap.parse_args()
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    precs = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not names or any(c not in CONFIGS for c in names):
        ap.error(f"--configs: choose from {', '.join(CONFIGS)} (got {args.configs!r})")
    if not precs or any(p not in ("fp32", "bf16") for p in precs):
        ap.error(f"--precisions: choose from fp32, bf16 (got {args.precisions!r})")
    if args.steps < 1 or args.threads < 1:
        ap.error("--steps and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    start = datetime.now(timezone.utc)
    tables = [run_config(n, args.steps, precs, not args.no_compile) for n in names]
    load1 = os.getloadavg()[0]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "cpu") if Path("/proc/cpuinfo").exists() else "cpu"
    md = ["# Training throughput", "",
          f"Machine: {cpu}, {os.cpu_count()} cores, {args.threads} torch thread(s), torch {torch.__version__}; "
          f"{start:%Y-%m-%d %H:%M} UTC; 1-minute load average {load0:.1f} at start, {load1:.1f} at the end. "
          f"`train.precision: auto` here: {auto} ({why}).",
          f"Command: `.venv/bin/python -m benchmarks.bench_train --steps {args.steps} --threads {args.threads} "
          f"--configs {','.join(names)} --precisions {','.join(precs)}{' --no-compile' if args.no_compile else ''}` "
          "(writes this file; inductor compiles in-process, TORCHINDUCTOR_COMPILE_THREADS=1, so the CPU time, "
          "the process's and its C++ compiler children's, counts compilation).", "",
          "Same initial weights and batches for every variant, AdamW (0.9, 0.95) fused, wd 0.1 on matrices, clip 1.0; "
          f"median of {args.steps} steps after {WARM} untimed ones, the variants taking turns step by step. Peer: "
          "transformers `Qwen2ForCausalLM` (sdpa) in the same process.", ""]
    for t in tables:
        md += t
    md += NOTES.splitlines()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(md) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
