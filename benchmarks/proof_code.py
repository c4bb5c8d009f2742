"""Code-Qwen nano proof, the loss half: code and text loss of the base model and of every saved
checkpoint of a continued-pretraining run, on held-out code and held-out text.

The report's Code-Qwen continues pretraining on a code-heavy mix; the claim checked here is that the
loss on held-out code falls while the loss on held-out text rises by a bounded amount. Checkpoints
are the run's own (``train.save_every`` with ``train.keep_last`` large enough to keep them all);
step 0 is the base model. Each held-out file's documents are joined by ``<|endoftext|>`` and cut
into non-overlapping windows of ``--seq-len`` tokens; the loss is the mean next-token NLL.

    .venv/bin/python benchmarks/proof_code.py --base runs/demo/pretrain --run runs/code-continue-nano \\
        --val code=code-val.jsonl.gz --val text=text-val.jsonl.gz --out runs/code-continue-nano/losses.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from openqwen.data.io import BadLine, read_documents
from openqwen.eval.tasks.perplexity import read_texts
from openqwen.infer.loading import load_model_and_tokenizer
from openqwen.train.checkpointing import list_checkpoints


def texts(path: str) -> list[str]:
    """The documents of a held-out file: JSONL, gzipped or not, through the data pipeline's reader
    (the perplexity task's reader takes plain .jsonl/.txt/.zip and would read a .gz as bytes)."""
    if path.endswith((".jsonl", ".jsonl.gz")):
        return [d["text"] for d in read_documents(Path(path)) if not isinstance(d, BadLine)]
    return read_texts(path)


def windows(tok, path: str, seq_len: int, max_windows: int) -> torch.Tensor:
    ids: list[int] = []
    for t in texts(path):
        ids += tok.encode(t) + [tok.eos_id]
    n = min(len(ids) // seq_len, max_windows)
    if n == 0:
        raise ValueError(f"{path}: {len(ids)} tokens, fewer than one window of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.no_grad()
def mean_nll(model, rows: torch.Tensor, batch: int = 4) -> float:
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        x = rows[i: i + batch]
        logits = model(x[:, :-1]).float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
        count += x[:, 1:].numel()
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the model the run started from (step 0)")
    ap.add_argument("--run", required=True, help="the continued-pretraining out_dir (its checkpoints/)")
    ap.add_argument("--val", action="append", required=True, metavar="NAME=FILE",
                    help="held-out texts (.jsonl[.gz] with 'text', .txt); repeat: --val code=... --val text=...")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model_and_tokenizer(args.base)
    model.eval()
    sets = {}
    for spec in args.val:
        name, _, path = spec.partition("=")
        if not path:
            raise SystemExit(f"--val {spec!r}: give NAME=FILE, e.g. --val code=code-val.jsonl.gz")
        sets[name] = windows(tok, path, args.seq_len, args.max_windows)
    points = [(0, None)] + [(int(p.name.split("_")[-1]), p) for p in list_checkpoints(args.run)]
    curves: dict[str, dict[int, float]] = {name: {} for name in sets}
    for step, path in points:
        if path is not None:
            model.load_state_dict(torch.load(path / "state.pt", map_location="cpu", weights_only=False)["model"])
        for name, rows in sets.items():
            curves[name][step] = mean_nll(model, rows)
        print(f"step {step}: " + ", ".join(f"{n} loss {c[step]:.4f}" for n, c in curves.items()), flush=True)
    result = {"base": args.base, "run": args.run, "seq_len": args.seq_len,
              "windows": {n: len(r) for n, r in sets.items()}, "loss": curves,
              "change": {n: c[max(c)] - c[0] for n, c in curves.items()},
              "perplexity": {n: {s: math.exp(v) for s, v in c.items()} for n, c in curves.items()}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415

        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, c in curves.items():
            ax.plot(list(c), list(c.values()), marker="o", label=f"held-out {name}")
        ax.set_xlabel("continued-pretraining step (0 = base)")
        ax.set_ylabel("mean next-token loss")
        ax.set_title("Code-Qwen nano: code vs text loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(Path(args.out).with_suffix(".png"), dpi=110)
    except ImportError:
        pass
    print(json.dumps(result["change"]))


if __name__ == "__main__":
    main()
