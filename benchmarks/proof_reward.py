"""The nano reward-model proof: PMP then fine-tuning against fine-tuning alone, at equal fine-tuning steps.

Trains the ``reward-nano.yaml`` recipe twice from the same starting model: with its PMP stage
(20k noisy pairs, 25 % of labels swapped) and without it (``reward.pmp_files []``), the fine-tuning
stage identical (500 clean pairs, the same steps, LR and seed). Both are scored on the same
held-out questions (never asked in training), overall and by kind of rejected reply, so it is
visible what a model has learnt: the format alone, or the number too.

    .venv/bin/python -m benchmarks.proof_reward --model runs/demo/sft [--out runs/reward/proof]
    .venv/bin/python -m benchmarks.proof_reward --evaluate runs/reward/pmp runs/reward/ft   # score existing models

Quality numbers: no quiet machine needed. Writes ``OUT/proof.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from openqwen.align import synthetic
from openqwen.align.pairs import encode_pairs
from openqwen.align.reward import load_reward_model, pair_metrics, score_pairs
from openqwen.train.pretrain import load_tokenizer

KINDS = {0.25: "wrong number, right format", 0.5: "right number, wrong format", 0.0: "wrong number, wrong format"}


def heldout_by_kind(model_dir: str | Path, n: int = 400, seed: int = 0) -> dict:
    """Held-out pair metrics of a reward model, overall and per kind of rejected reply."""
    rm = load_reward_model(model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    pairs = synthetic.preference_pairs("heldout", n, seed)
    encoded, dropped = encode_pairs(pairs, tokenizer, rm.config.max_position_embeddings)
    if dropped:
        raise ValueError(f"{dropped} held-out pairs do not fit the model")
    chosen, rejected = score_pairs(rm, encoded, 32, tokenizer.eos_id)
    out = {"all": pair_metrics(chosen, rejected)}
    for value, name in KINDS.items():
        idx = [i for i, p in enumerate(pairs) if synthetic.score_response(p.messages, p.rejected) == value]
        out[name] = pair_metrics([chosen[i] for i in idx], [rejected[i] for i in idx])
    # the mistakes a policy makes are near misses (8 + 9 -> 16), not guesses: the same held-out
    # questions with the wrong number off by 1..2, in the format (what PPO needs the model to rank)
    near = [p for p in synthetic.preference_pairs("heldout", n, seed, near_miss=1.0)
            if synthetic.score_response(p.messages, p.rejected) == 0.25]
    encoded, _ = encode_pairs(near, tokenizer, rm.config.max_position_embeddings)
    out["near miss (off by 1-2), right format"] = pair_metrics(*score_pairs(rm, encoded, 32, tokenizer.eos_id))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/demo/sft", help="starting model folder with its tokenizer")
    ap.add_argument("--out", default="runs/reward/proof")
    ap.add_argument("--evaluate", nargs="*", help="only score these reward-model folders")
    ap.add_argument("overrides", nargs="*", help="--section.key value pairs for both runs (after --)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.evaluate:
        result = {d: heldout_by_kind(d) for d in args.evaluate}
    else:
        from openqwen.align import reward_train

        result = {}
        for name, extra in (("pmp_then_finetune", []), ("finetune_only", ["--reward.pmp_files", "[]"])):
            cfg = reward_train.RewardConfig.load("reward-nano.yaml", ["--model.init_from", args.model,
                                                                      "--train.out_dir", str(out / name),
                                                                      "--train.progress", "false", *extra,
                                                                      *args.overrides])
            summary = reward_train.run(cfg)
            result[name] = {"finetune_steps": summary["finetune"]["steps"], **heldout_by_kind(out / name)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "proof.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, r in result.items():
        print(name, {k: round(v["accuracy"], 4) for k, v in r.items() if isinstance(v, dict)})


if __name__ == "__main__":
    main()
