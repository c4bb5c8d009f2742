"""``openqwen quantize``: the verb's parser. It imports no torch (``openqwen --help`` stays fast); the work
is :func:`openqwen.infer.quantize_run.run`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .loading import positive_int

EXAMPLES = """what it does:
  Loads a float checkpoint (a Qwen2 / first-generation folder, or a .gguf file, dequantised), rounds
  every linear layer of every block to int4 (groups of --group-size inputs, one fp16 scale and zero
  point each) or int8 (one scale per row), and writes a model folder that loads back quantised:
  `openqwen generate/chat/serve/eval --model OUT`. The output head stays float in the file.
  --method gptq (default) calibrates: it runs --samples windows of --seq-len tokens of calibration
  text through the model block by block and rounds each layer so that its outputs on that text change
  least (GPTQ); --method rtn rounds each weight to nearest on the same grid (no calibration).

formats:
  gptq  (default) a Qwen2 folder in the GPTQ layout (qweight / qzeros / scales / g_idx, config.json's
        quantization_config), which transformers' GPTQ integration also reads
  gguf  OUT/model.gguf with Q4_0 (int4: groups of 32, symmetric) or Q8_0 (int8) blocks, the embedding
        and norms in F32, for llama.cpp and every other GGUF reader (openqwen reads it back exactly)

calibration text (--calibration):
  builtin  Python standard-library source and half of the Shakespeare plays (the shakespeare artifact,
           when fetched): code and prose, on any machine without a download
  FILE     a .txt / .md file, a .jsonl file with a "text" field per line, or a folder of them

examples:
  openqwen quantize --model runs/demo/sft --out runs/demo/sft-int4
  openqwen quantize --model qwen2.5-0.5b/ --out q-int4-g128 --bits 4 --group-size 128 --samples 128
  openqwen quantize --model qwen2.5-0.5b/ --out q-int8 --bits 8 --calibration my_texts.jsonl
  openqwen quantize --model qwen2.5-0.5b/ --out q4_0 --format gguf
  openqwen quantize --model qwen2.5-0.5b/ --out q-rtn --method rtn"""


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1, got {value}")
    return value


def add_parser(subparsers: Any) -> None:
    helptext = "quantise a float model to int4 / int8 (GPTQ calibration or round-to-nearest)"
    p = subparsers.add_parser("quantize", help=helptext, description=helptext, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="float checkpoint: model folder or .gguf file")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path when it is not stored with the model")
    p.add_argument("--bits", type=int, choices=(4, 8), default=4, help="4 (default) or 8")
    p.add_argument("--group-size", type=positive_int, default=None,
                   help="int4: inputs per scale, a power of two >= 32 dividing every layer's inputs "
                        "(default 128; 32 with --format gguf, Q4_0's block)")
    p.add_argument("--asym", action="store_true",
                   help="int4 with a zero point per group (default: symmetric, zero 8, as Qwen's GPTQ-Int4)")
    p.add_argument("--method", choices=("gptq", "rtn"), default="gptq", help="gptq (default) or rtn")
    p.add_argument("--format", choices=("gptq", "gguf"), default="gptq", help="output format (default gptq)")
    p.add_argument("--calibration", default="builtin", help="builtin (default) or a text file / folder")
    p.add_argument("--samples", type=positive_int, default=64,
                   help="calibration windows (default 64; on Qwen2.5-0.5B 16 windows of 512 tokens made int4 worse "
                        "than round-to-nearest and 64 made it better: docs/quantization.md)")
    p.add_argument("--seq-len", type=positive_int, default=512, help="tokens per calibration window (default 512)")
    p.add_argument("--damp", type=_fraction, default=0.01,
                   help="GPTQ damping, a fraction of the Hessian's mean diagonal (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows' choice (default 0)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from .quantize_run import run  # noqa: PLC0415 (torch loads only when the verb runs)

    summary = run(args)
    print(json.dumps(summary, indent=2))
    return 0
