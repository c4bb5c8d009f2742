"""One evaluation task on every saved checkpoint of a training run, and on the model it started from.

The specialist proofs (docs/specialists.md) ask how a held-out score moves with the steps, not only
where it ends: that is what tells the demo the fewest steps that still show the gain. A run keeps its
checkpoints with ``train.save_every`` (and ``train.keep_last`` large enough); step 0 is ``--base``.
Every point is scored by ``openqwen eval``'s own harness (:func:`openqwen.eval.harness.run_eval`)
with the same settings, greedy.

    .venv/bin/python benchmarks/eval_checkpoints.py --base runs/spec/sft --run runs/spec/math \\
        --task synthetic-math --data add,sub,mul --mode chat --limit 180 --out runs/spec/eval/math-curve.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from openqwen.eval.harness import EvalConfig, run_eval
from openqwen.infer.loading import load_model_and_tokenizer
from openqwen.train.checkpointing import list_checkpoints


def headline(res: dict) -> dict:
    """The numbers of a result worth a table: accuracy or pass@1, and per-category accuracies."""
    m = res.get("metrics", res)
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the model the run started from (step 0)")
    ap.add_argument("--run", required=True, help="the run's out_dir: its exported model and checkpoints/")
    ap.add_argument("--task", required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--mode", default="base", choices=["base", "chat"])
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    checkpoints = list_checkpoints(args.run)
    if not checkpoints:
        raise SystemExit(f"{args.run}: no checkpoints/ (train with train.save_every and a large train.keep_last)")
    points = {0: args.base} | {int(p.name.split("_")[-1]): p for p in checkpoints}
    rows = {}
    model, tok = load_model_and_tokenizer(args.base)
    for step, path in sorted(points.items()):
        if step and rows and max(rows) == 0:  # first checkpoint: the run's architecture and tokenizer
            model, tok = load_model_and_tokenizer(args.run)
        if step:
            model.load_state_dict(torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)["model"])
        model.eval()
        t0 = time.perf_counter()
        cfg = EvalConfig(model=args.run if step else args.base, task=args.task, mode=args.mode, data=args.data, limit=args.limit,
                         max_new_tokens=args.max_new_tokens, progress=False)
        rows[step] = headline(run_eval(cfg, model=model, tokenizer=tok))
        print(f"step {step} ({time.perf_counter() - t0:.0f} s): {json.dumps(rows[step])}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"base": args.base, "run": args.run, "task": args.task, "data": args.data,
                                          "mode": args.mode, "limit": args.limit, "points": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
