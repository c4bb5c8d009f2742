"""Perplexity cost of int4 / int8 quantisation: GPTQ against round-to-nearest and against float.

The real Qwen2.5-Coder-0.5B-Instruct (the q4_k_m GGUF artifact, dequantised to fp32: the float
reference, itself once rounded by llama.cpp) is quantised in each way and scored on held-out text the
calibration never saw: Shakespeare plays of the other half (calibration takes every other play) and
standard-library source past the calibration budget. Every variant keeps the output head in float,
so the rows differ only in the block linears.

    OMP_NUM_THREADS=2 nice -n 10 .venv/bin/python benchmarks/bench_gptq.py --windows 6 --samples 64

Prints a markdown table (perplexity per text, the change against fp32) and writes it as JSON with
--out. Quality numbers need no quiet machine.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from openqwen.artifacts import artifact_path
from openqwen.checkpoint import load_model
from openqwen.data.demo_corpus import code_documents
from openqwen.infer.gptq import QuantFormat, bits_per_weight, calibrate
from openqwen.infer.gptq_format import pack_model
from openqwen.infer.quant import quantize_int4
from openqwen.infer.quantize_run import BUILTIN_CODE_BYTES, builtin_calibration_texts, calibration_windows, shakespeare_plays
from openqwen.tokenizer import QwenTokenizer


def held_out_windows(tokenizer, windows: int, length: int) -> dict[str, torch.Tensor]:
    prose = shakespeare_plays(1)
    code_docs, _ = code_documents(BUILTIN_CODE_BYTES * 3, 100_000)
    seen = {d["text"] for d in code_documents(BUILTIN_CODE_BYTES, 100_000)[0]}
    code = [d["text"] for d in code_docs if d["text"] not in seen]
    out = {}
    for name, texts in (("shakespeare", prose), ("python", code)):
        ids: list[int] = []
        for t in texts:
            ids += tokenizer.encode(t) + [tokenizer.eos_id]
            if len(ids) >= windows * length:
                break
        out[name] = torch.tensor(ids[: windows * length]).view(windows, length)
    return out


@torch.no_grad()
def perplexity(model, rows: torch.Tensor) -> float:
    nll, count = 0.0, 0
    for row in rows:
        logits = model(row[None, :-1]).float()
        nll += float(torch.nn.functional.cross_entropy(logits[0], row[1:], reduction="sum"))
        count += row.numel() - 1
    return math.exp(nll / count)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=6, help="held-out windows per text (default 6)")
    ap.add_argument("--length", type=int, default=512, help="tokens per window (default 512)")
    ap.add_argument("--samples", type=int, default=64, help="GPTQ calibration windows (default 64, as openqwen quantize)")
    ap.add_argument("--group-size", type=int, default=128)
    ap.add_argument("--variants", default="fp32,bf16,rtn4,gptq4,rtn4asym,gptq4asym,rtn8,gptq8")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    path = artifact_path("qwen25-coder-0.5b-instruct-gguf")
    if path is None:
        raise SystemExit("the qwen25-coder-0.5b-instruct-gguf artifact is missing (shared/tools/fetch-artifacts)")
    tokenizer = QwenTokenizer.from_pretrained(path)
    base = load_model(path, dtype="fp32")
    held = held_out_windows(tokenizer, args.windows, args.length)
    calib = calibration_windows(builtin_calibration_texts(), tokenizer, args.samples, args.length, seed=0)
    g = args.group_size
    variants = {
        "fp32": None, "bf16": "bf16",
        "rtn4": ("rtn", QuantFormat(4, g)), "gptq4": ("gptq", QuantFormat(4, g)),
        "rtn4asym": ("rtn", QuantFormat(4, g, symmetric=False)), "gptq4asym": ("gptq", QuantFormat(4, g, symmetric=False)),
        "rtn8": ("rtn", QuantFormat(8)), "gptq8": ("gptq", QuantFormat(8)),
        "quant_int4": "quant_int4",  # openqwen.infer.quant.quantize_int4's own round-to-nearest (asymmetric)
    }
    rows = {}
    first = args.variants.split(",")[0]
    for name in args.variants.split(","):
        spec = variants[name]
        model = base if name == first else load_model(path, dtype="fp32")  # one model in memory at a time
        started = time.perf_counter()
        bpw = 16.0 if spec == "bf16" else 32.0
        if spec == "bf16":
            for p in model.parameters():
                p.data = p.data.to(torch.bfloat16).float()
        elif spec == "quant_int4":
            quantize_int4(model, group_size=g, skip=("lm_head", "embed_tokens"))  # the head stays float, as in the other rows
            bpw = 4 + 32 / g
        elif spec is not None:
            method, fmt = spec
            results = calibrate(model, calib, fmt, method=method, log=None)
            pack_model(model, results, head_int8=False)
            bpw = bits_per_weight(fmt)
        quant_s = time.perf_counter() - started
        ppl = {text: perplexity(model, ids) for text, ids in held.items()}
        rows[name] = {"bits_per_weight": bpw, "quantise_s": round(quant_s, 1), **ppl}
        print(json.dumps({name: rows[name]}), flush=True)
        del model
        base = None
    ref = rows.get("fp32")
    print(f"\n| variant | bits/weight (block linears) | Shakespeare ppl | Python ppl | quantise s |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        def cell(text: str) -> str:
            delta = f" ({100 * (r[text] / ref[text] - 1):+.1f} %)" if ref and name != "fp32" else ""
            return f"{r[text]:.3f}{delta}"
        print(f"| {name} | {r['bits_per_weight']:.3g} | {cell('shakespeare')} | {cell('python')} | {r['quantise_s']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "held_out_tokens": {k: v.numel() for k, v in held.items()},
                       "calibration": list(calib.shape)}, f, indent=2)


if __name__ == "__main__":
    main()
