"""Encode throughput of QwenTokenizer (tiktoken core) against Hugging Face ``tokenizers``.

Same vocabulary (the official qwen.tiktoken vs the Qwen2 tokenizer.json: identical base ranks),
same text, same process, same thread counts. Each measurement is the best of ``--repeat`` runs.

    .venv/bin/python -m benchmarks.bench_tokenizer [--mb 4] [--repeat 3]

Prints a markdown table of MB/s and the ratio openqwen / tokenizers; the ids of both are also
checked to be identical, so the comparison is between equal outputs.
"""

from __future__ import annotations

# Rayon (tokenizers' thread pool) reads this once, at first use: cap it at the thread counts we compare.
import os

os.environ.setdefault("RAYON_NUM_THREADS", "2")

import argparse  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402


def corpus(megabytes: float, seed: int = 0) -> list[str]:
    """Python standard library sources plus English (MMLU questions, when fetched) and Chinese text,
    cut into documents of a few KB, about ``megabytes`` MB of UTF-8 in all."""
    from openqwen.artifacts import artifact_path

    rng = random.Random(seed)
    docs: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
        docs.append(path.read_text(encoding="utf-8", errors="replace"))
        if sum(map(len, docs)) > megabytes * 0.6e6:
            break
    mmlu = artifact_path("mmlu-test")
    if mmlu is not None:
        import json

        with open(mmlu, encoding="utf-8") as f:
            lines = [json.loads(line) for _, line in zip(range(4000), f)]
        text = "\n".join(str(d.get("question", "")) + " " + " ".join(map(str, d.get("choices", []))) for d in lines)
        docs += [text[i:i + 4000] for i in range(0, min(len(text), int(megabytes * 0.25e6)), 4000)]
    zh = ("通义千问是阿里云研发的大语言模型，在三万亿个词元上进行了预训练。床前明月光，疑是地上霜。举头望明月，低头思故乡。"
          "今天天气很好，我们去公园散步吧！数学题：一百二十三加四百五十六等于五百七十九。")
    while sum(len(d.encode()) for d in docs) < megabytes * 1e6:
        docs.append("".join(rng.sample(zh, len(zh))) * 20)
    return docs


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=4.0, help="megabytes of text (default 4)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best counts (default 3)")
    args = parser.parse_args(argv)

    from tokenizers import Tokenizer

    from openqwen.artifacts import artifact_path
    from openqwen.tokenizer import QwenTokenizer

    tk_path, json_path = artifact_path("qwen-tiktoken"), artifact_path("qwen2-tokenizer-json")
    if tk_path is None or json_path is None:
        print("needs the qwen-tiktoken and qwen2-tokenizer-json artifacts (../shared/tools/fetch-artifacts)")
        return 1
    load_ours = best_of(1, lambda: QwenTokenizer.from_pretrained(tk_path))
    load_hf = best_of(1, lambda: Tokenizer.from_file(str(json_path)))
    ours = QwenTokenizer.from_pretrained(tk_path)
    hf = Tokenizer.from_file(str(json_path))
    docs = corpus(args.mb)
    mb = sum(len(d.encode()) for d in docs) / 1e6

    # equal outputs first: a fast wrong tokenizer is not faster
    a = ours.encode_batch(docs, num_threads=2)
    b = [e.ids for e in hf.encode_batch(docs, add_special_tokens=False)]
    assert a == b, "ids differ between openqwen and tokenizers"
    n_tokens = sum(map(len, a))

    def hf_threads(n: int) -> None:
        # tokenizers reads this on every batch call: "false" runs the batch on the calling thread only
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if n > 1 else "false"

    rows = []

    def measure(name: str, ours_fn, hf_fn, threads: int) -> None:
        hf_threads(threads)
        t_ours = best_of(args.repeat, ours_fn)
        t_hf = best_of(args.repeat, hf_fn)
        rows.append((name, threads, mb / t_ours, mb / t_hf, t_hf / t_ours))

    measure("one document at a time", lambda: [ours.encode(d) for d in docs],
            lambda: [hf.encode(d, add_special_tokens=False) for d in docs], 1)
    measure("batch", lambda: ours.encode_batch(docs, num_threads=1),
            lambda: hf.encode_batch(docs, add_special_tokens=False), 1)
    measure("batch", lambda: ours.encode_batch(docs, num_threads=2),
            lambda: hf.encode_batch(docs, add_special_tokens=False), 2)
    measure("decode, batch of documents", lambda: [ours.decode(ids) for ids in a],
            lambda: hf.decode_batch(a, skip_special_tokens=False), 1)

    print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; python {sys.version.split()[0]}")
    print(f"text: {len(docs)} documents, {mb:.2f} MB, {n_tokens} tokens ({mb * 1e6 / n_tokens:.2f} bytes/token); "
          f"identical ids: yes; best of {args.repeat}")
    print(f"load: openqwen {load_ours:.2f} s (qwen.tiktoken), tokenizers {load_hf:.2f} s (tokenizer.json)\n")
    print("| operation | threads | openqwen MB/s | tokenizers MB/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, threads, ours_mbs, hf_mbs, ratio in rows:
        print(f"| {name} | {threads} | {ours_mbs:.2f} | {hf_mbs:.2f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
