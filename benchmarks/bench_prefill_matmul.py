"""Prefill time of a quantised model with its long-prompt products on MKL or on oneDNN, side by side.

    .venv/bin/python -m benchmarks.bench_prefill_matmul [--model GGUF] [--precisions int8,int4]
        [--tokens 256,512,2048] [--threads 2] [--rounds 3]

Prompts longer than a layer type's ``kernel_rows`` (none for int8 and int4 layers since 2026-12-04) multiply each
layer's dequantised fp32 weight by the prompt's activations (compute-bound);
:func:`openqwen.train.cpu_matmul.onednn_preferred` decides whether that product runs on oneDNN or on
torch's default (MKL). The variants force one path for every layer, whatever the prompt's length. This benchmark prefills the same prompt (the
first N tokens of CPython's ``textwrap.py``, as ``bench_infer_quant``) into a fresh KV cache with each
library in turn and with the C kernel (the engine's path for int8 and int4 layers), ``--rounds``
times, and prints a markdown row of tokens/s per variant and the oneDNN/MKL ratio; the two libraries give
the same logits up to fp32 summation order (printed: the largest difference of the last position's
logits).
"""

from __future__ import annotations

import argparse
import os
import statistics
import textwrap
import time
from pathlib import Path
from unittest import mock

import torch

from openqwen.infer import quant
from openqwen.infer.loading import load_for_inference
from openqwen.tokenizer import QwenTokenizer

DEFAULT_MODEL = "~/.cache/openqwen-artifacts/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


VARIANTS = {"C kernel": None, "MKL": False, "oneDNN": True, "oneDNN bf16": "bf16"}
"""How the long-prompt products run: the C kernel (every length, as the engine runs int8 and int4 layers), or every prompt through torch's matmul on MKL or on oneDNN in fp32, or in
bf16 on oneDNN (``OPENQWEN_PREFILL_PRODUCTS=bf16``; fp32 for the others)."""


def prefill_seconds(model, ids: torch.Tensor, onednn: bool | str | None) -> tuple[float, torch.Tensor]:
    rows = quant.NO_ROW_LIMIT if onednn is None else 0
    os.environ["OPENQWEN_PREFILL_PRODUCTS"] = "bf16" if onednn == "bf16" else "fp32"
    with mock.patch.object(quant, "onednn_preferred", lambda: bool(onednn)), \
            mock.patch.object(quant._KernelLinear, "max_kernel_rows", lambda self, onednn: rows), \
            mock.patch.object(quant.Int8Linear, "bf16_kernel_rows", rows), \
            mock.patch.object(quant.Int4Linear, "bf16_kernel_rows", rows), torch.no_grad():
        cache = model.new_cache(1, ids.shape[1] + 8)
        t0 = time.perf_counter()
        hidden = model.hidden_states(ids, cache=cache)
        seconds = time.perf_counter() - t0
        return seconds, model.lm_head(hidden[:, -1]).float()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--precisions", default="int8,int4")
    ap.add_argument("--tokens", default="256,512,2048")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = Path(args.model).expanduser()
    if not path.exists():
        ap.error(f"{path} does not exist (fetch it with ../shared/tools/fetch-artifacts)")
    tok = QwenTokenizer.from_pretrained(path)
    text = Path(textwrap.__file__).read_text() * 4
    print(f"load {os.getloadavg()[0]:.2f}; {args.threads} threads; model {path.name}")
    print("| precision | prompt tokens | " + " | ".join(f"{v} tok/s" for v in VARIANTS)
          + " | oneDNN vs MKL | max logit difference oneDNN vs MKL | bf16 vs fp32 (oneDNN) | max logit difference bf16 vs fp32 |")
    print("|---|---|" + "---|" * (len(VARIANTS) + 4))
    for precision in args.precisions.split(","):
        model = load_for_inference(path, precision, announce=False)
        for n in (int(t) for t in args.tokens.split(",")):
            ids = torch.tensor([tok.encode(text)[:n]])
            names = list(VARIANTS)
            times: dict[str, list[float]] = {v: [] for v in names}
            logits = {}
            for v in names:  # warm-up
                prefill_seconds(model, ids[:, :64], VARIANTS[v])
            for _ in range(args.rounds):
                for v in names:
                    s, logits[v] = prefill_seconds(model, ids, VARIANTS[v])
                    times[v].append(s)
            med = {v: statistics.median(times[v]) for v in names}
            diff = (logits["oneDNN"] - logits["MKL"]).abs().max().item()
            diff_bf16 = (logits["oneDNN bf16"] - logits["oneDNN"]).abs().max().item()
            cells = " | ".join(f"{n / med[v]:.1f}" if v in med else "-" for v in VARIANTS)
            print(f"| {precision} | {n} | {cells} | {med['MKL'] / med['oneDNN']:.2f}x | {diff:.1e} "
                  f"| {med['oneDNN'] / med['oneDNN bf16']:.2f}x | {diff_bf16:.1e} |", flush=True)
    print(f"load {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
