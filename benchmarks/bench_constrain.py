"""The cost of constrained decoding: a forced tool call (``openqwen.infer.constrain``) against the
same engine generating the same number of tokens unconstrained, in the same run.

    .venv/bin/python -m benchmarks.bench_constrain                    # nano random model, real vocabulary
    /work/shared/tools/quiet --max-wait 300 -- .venv/bin/python -m benchmarks.bench_constrain

Both runs decode greedily with no repetition penalty, batch 4, over the real 152K-id ``qwen.tiktoken``
vocabulary (the mask's size is what costs): the constrained run writes Qwen2.5's ``<tool_call>`` JSON
for a schema with a string, an enum, an integer and a number array; the peer generates exactly as
many tokens (``ignore_eos``). Reported: ms per generated token of each and their ratio; the one-off
vocabulary index (built once per tokenizer) separately. Prints one markdown table row.
"""

from __future__ import annotations

import argparse
import time

import torch

from openqwen import Qwen, QwenConfig, QwenTokenizer
from openqwen.artifacts import artifact_path
from openqwen.infer.constrain import tool_call_constraint, vocabulary_index
from openqwen.infer.engine import Engine
from openqwen.infer.sampling import SamplingParams

FUNCTION = {"name": "lookup", "parameters": {"type": "object", "properties": {
    "query": {"type": "string", "maxLength": 24}, "mode": {"enum": ["fast", "exact"]},
    "limit": {"type": "integer"}, "weights": {"type": "array", "items": {"type": "number"}, "maxItems": 3}},
    "required": ["query", "mode", "limit", "weights"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4, help="requests decoded together (default 4)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    path = artifact_path("qwen-tiktoken")
    if path is None:
        raise SystemExit("needs the qwen.tiktoken artifact (../shared/tools/fetch-artifacts)")
    tok = QwenTokenizer.from_pretrained(path)
    t0 = time.perf_counter()
    vocabulary_index(tok)
    index_s = time.perf_counter() - t0
    torch.manual_seed(0)
    config = QwenConfig(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, seq_length=512)
    engine = Engine(Qwen(config).eval(), tok, max_batch_size=args.batch, max_seq_len=512, background=False)
    prompts = [tok.encode(f"request {i}: look something up") for i in range(args.batch)]
    factory = tool_call_constraint(tok, [FUNCTION], tok.stop_ids)
    forced = SamplingParams(temperature=0, max_new_tokens=200, constraint=factory, stop_token_ids=tok.stop_ids,
                            skip_special_tokens=False)
    engine.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=4))  # warm-up
    t0 = time.perf_counter()
    outs = engine.generate(prompts, forced)
    constrained_s = time.perf_counter() - t0
    lengths = [len(o.token_ids) for o in outs]
    peer = [SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True, stop_token_ids=[]) for n in lengths]
    t0 = time.perf_counter()
    engine.generate(prompts, peer)
    plain_s = time.perf_counter() - t0
    tokens = sum(lengths)
    c_ms, p_ms = 1000 * constrained_s / tokens, 1000 * plain_s / tokens
    print("| batch | tokens | unconstrained ms/token | constrained ms/token | ratio | vocabulary index (once) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.batch} | {tokens} | {p_ms:.2f} | {c_ms:.2f} | {c_ms / p_ms:.2f}x | {index_s:.2f} s |")
    engine.close()


if __name__ == "__main__":
    main()
