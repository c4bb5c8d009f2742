"""Perplexity of one GGUF at several openqwen precisions on a held-out text (a quality number: the
machine's load does not matter), one process per precision so each holds one model.

    .venv/bin/python -m benchmarks.quant_perplexity [--model FILE.gguf] [--precisions fp32,int8,int4] [--tokens 1024] \
        [--llama-python /tmp/llamavenv/bin/python]

The text is CPython's ``textwrap.py`` (not in the model card's training mix as far as one can tell, and
code, which the Coder model predicts well). Prints one JSON line per precision: perplexity, the share of
the first 200 positions whose argmax equals fp32's, load seconds and peak RSS.
"""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
import textwrap

WORKER = r"""
import inspect, json, resource, sys, textwrap, time
import torch
from openqwen.infer.loading import load_for_inference
from openqwen.tokenizer import QwenTokenizer
path, precision, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(2)
tok = QwenTokenizer.from_pretrained(path)
ids = torch.tensor([tok.encode(open(inspect.getsourcefile(textwrap)).read())[:n]])
t = time.perf_counter()
model = load_for_inference(path, precision)
load_s = time.perf_counter() - t
with torch.no_grad():
    logits = model(ids)[0].float()
nll = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])
print(json.dumps({"precision": model.precision, "tokens": ids.shape[1], "perplexity": float(nll.exp()), "load_s": load_s,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "argmax": logits.argmax(-1)[:200].tolist()}))
"""

LLAMA_WORKER = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
path, n, ids = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
llm = Llama(model_path=path, n_ctx=n + 8, n_batch=512, n_threads=2, logits_all=True, verbose=False)
llm.eval(ids)
logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)  # row i: the distribution after token i
logits -= logits.max(-1, keepdims=True)
logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
nll = -logp[np.arange(len(ids) - 1), ids[1:]].mean()
print(json.dumps({"precision": "llama.cpp", "tokens": len(ids), "perplexity": float(np.exp(nll)),
                  "argmax": logits.argmax(-1)[:200].tolist()}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF file (default: the fetched q4_k_m artifact)")
    ap.add_argument("--precisions", default="fp32,int8,int4", help="precisions, fp32 first [fp32,int8,int4]")
    ap.add_argument("--tokens", type=int, default=1024, help="tokens of the text [1024]")
    ap.add_argument("--llama-python", default=None,
                    help="a Python with llama-cpp-python: llama.cpp's perplexity of the same tokens, last")
    args = ap.parse_args()

    from openqwen.artifacts import artifact_path
    from openqwen.tokenizer import QwenTokenizer

    path = args.model or str(artifact_path("qwen25-coder-0.5b-instruct-gguf"))
    ids = QwenTokenizer.from_pretrained(path).encode(open(inspect.getsourcefile(textwrap)).read())[: args.tokens]
    runs = [[sys.executable, "-c", WORKER, path, p, str(args.tokens)] for p in args.precisions.split(",")]
    if args.llama_python:
        runs.append([args.llama_python, "-c", LLAMA_WORKER, path, str(args.tokens), json.dumps(ids)])
    reference = None
    for argv in runs:
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        row = json.loads(out)
        reference = reference or row["argmax"]
        row["top1_equal_first"] = sum(a == b for a, b in zip(row.pop("argmax"), reference)) / len(reference)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
