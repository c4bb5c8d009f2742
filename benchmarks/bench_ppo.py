"""The nano PPO proof (docs/alignment.md, PPO section): PPO of a nano SFT model on the built-in arithmetic
task against a nano reward model, in variants that differ in one setting each.

    python benchmarks/bench_ppo.py --sft runs/ppo/sft --reward runs/ppo/reward --ptx runs/demo/packed \
        --out runs/ppo/proof --steps 160

For each variant a fresh policy starts from the SFT folder and trains ``--steps`` PPO steps (rollouts from
the engine, the one Trainer). Before and after, on held-out questions the training never asks (the
task's ``heldout`` split), it measures: the reward model's reward of sampled answers (top-p 0.9, as the
rollouts; mean and std), the ground-truth score, accuracy (the right number) and the preferred share
(the right number in the preferred wording, the ground truth's top score), the mean per-token KL of the policy to the
starting model on those samples (full distributions, k1), greedy accuracy, and the next-token loss on
held-out pretraining rows (the last ``--ptx-heldout`` packed sequences, which the ptx term never sees).
Results go to OUT/results-VARIANTS.json and a comparison plot (``--plot-only`` once they are done) to OUT/ppo_proof.png; each run's own log, loss.png
and ppo.png page go to OUT/<variant>/.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from openqwen.align import synthetic  # noqa: E402
from openqwen.align.ppo import PPO_PANELS, PPOConfig  # noqa: E402
from openqwen.align.ppo_run import build_ppo_trainer  # noqa: E402
from openqwen.align.reward import load_reward_model  # noqa: E402
from openqwen.align.rollout import full_logprobs, generate_rollouts, rollout_params  # noqa: E402
from openqwen.checkpoint import load_model  # noqa: E402
from openqwen.infer.engine import Engine  # noqa: E402
from openqwen.infer.sampling import SamplingParams  # noqa: E402
from openqwen.train.batches import PackedRows, collate  # noqa: E402
from openqwen.train.metrics import plot_metric_page, read_metrics  # noqa: E402
from openqwen.train.pretrain import load_tokenizer  # noqa: E402

VARIANTS = {
    "kl0.04+ptx": {"ppo.kl_coef": 0.04},
    "kl0+ptx": {"ppo.kl_coef": 0.0},
    "kl0.04-no-ptx": {"ppo.kl_coef": 0.04, "ppo.ptx_coef": 0.0, "ppo.ptx_data": None},
    "kl0.04+ptx0.05": {"ppo.kl_coef": 0.04, "ppo.ptx_coef": 0.05},
    "kl0-no-ptx": {"ppo.kl_coef": 0.0, "ppo.ptx_coef": 0.0, "ppo.ptx_data": None},
    "kl0+ptx0.05": {"ppo.kl_coef": 0.0, "ppo.ptx_coef": 0.05},
    "demo": {"ppo.kl_coef": 0.2, "ppo.ptx_coef": 0.05},  # the demo's PPO (DemoConfig.ppo_kl_coef, ppo_ptx_coef)
}
"""Each variant's defining settings; they win over ``--set`` (which sets what all variants share)."""


@torch.no_grad()
def evaluate(policy, reference, rm, tokenizer, heldout, ptx_rows, seed: int = 123) -> dict[str, float]:
    engine = Engine(policy, tokenizer, max_batch_size=64, max_seq_len=96, background=False)
    ro = generate_rollouts(engine, heldout, rollout_params(12, 1.0, 0.9), 1, torch.Generator().manual_seed(seed),
                           int(tokenizer.eos_id))
    mask = ro.action_mask
    rewards = rm(ro.input_ids, ro.attention_mask)
    tokens = ro.input_ids[:, 1:]
    limit = tokenizer.vocab_size
    kl = (full_logprobs(policy(ro.input_ids)[:, :-1], tokens, 1.0, limit)
          - full_logprobs(reference(ro.input_ids)[:, :-1], tokens, 1.0, limit)) * mask
    greedy = engine.chat(heldout, SamplingParams(max_new_tokens=12, temperature=0))
    engine.close()
    correct = [synthetic.is_correct(m, r) for m, r in zip(ro.messages, ro.responses)]
    preferred = [synthetic.is_preferred(m, r) for m, r in zip(ro.messages, ro.responses)]
    batch = collate([ptx_rows[i] for i in range(len(ptx_rows))])
    logits = policy(batch["input_ids"])[:, :-1]
    ptx_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                                                 ignore_index=-100)
    return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            "score": sum(synthetic.score_response(m, r) for m, r in zip(ro.messages, ro.responses)) / len(ro),
            "accuracy": sum(correct) / len(ro), "preferred": sum(preferred) / len(ro),
            "greedy_preferred": sum(synthetic.is_preferred(m, o.text) for m, o in zip(heldout, greedy)) / len(heldout),
            "rm_accuracy_on_samples": ranked_right(ro.messages, rewards.tolist(), correct),
            "greedy_accuracy": sum(synthetic.is_correct(m, o.text) for m, o in zip(heldout, greedy)) / len(heldout),
            "kl_per_token": float(kl.sum() / mask.sum()), "response_length": float(mask.sum(-1).mean()),
            "heldout_pretrain_loss": float(ptx_loss)}


def ranked_right(messages: list, rewards: list[float], correct: list[bool]) -> float | None:
    """The reward model's pairwise accuracy on the policy's own samples: over every (right, wrong) pair
    of answers to the same question, the fraction it rewards the right one higher (ties count half).
    This, not held-out accuracy on a fixed pair set, is what PPO can climb (None: no such pair)."""
    by_question: dict[str, tuple[list[float], list[float]]] = {}
    for m, r, ok in zip(messages, rewards, correct):
        by_question.setdefault(m[-1]["content"], ([], []))[0 if ok else 1].append(r)
    wins = total = 0.0
    for right, wrong in by_question.values():
        for a in right:
            for b in wrong:
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
                total += 1
    return wins / total if total else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft")
    ap.add_argument("--reward")
    ap.add_argument("--ptx", help="packed pretraining shards")
    ap.add_argument("--ptx-heldout", type=int, default=64)
    ap.add_argument("--out", default="runs/ppo/proof")
    ap.add_argument("--steps", type=int, default=160)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--set", nargs="*", default=[], help="extra overrides KEY=VALUE for every variant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--real-gguf", help="instead: one PPO step with LoRA on this GGUF (time, peak memory)")
    ap.add_argument("--plot-only", action="store_true", help="only draw OUT/ppo_proof.png from the variants' logs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.real_gguf:
        result = real_lora_step(args.real_gguf, out)
        print(json.dumps(result))
        (out / "real-lora.json").write_text(json.dumps(result, indent=2) + "\n")
        return
    if args.plot_only:  # variants run as separate processes (one per core) write their own results files
        plot_comparison(out, [v for v in args.variants.split(",") if (out / v / "metrics.jsonl").exists()])
        return
    tokenizer = load_tokenizer(args.sft)
    rm = load_reward_model(args.reward).eval()
    packed = PackedRows(args.ptx)
    n = len(packed)
    ptx_train, ptx_heldout = PackedRows(packed.ds, 0, n - args.ptx_heldout), PackedRows(packed.ds, n - args.ptx_heldout)
    heldout = synthetic.prompts("heldout", args.heldout, seed=0)
    start = load_model(args.sft, dtype=torch.float32)
    results = {"settings": {"steps": args.steps, "heldout_prompts": args.heldout, "extra": args.set},
               "before": evaluate(start, start, rm, tokenizer, heldout, ptx_heldout)}
    print("before", json.dumps(results["before"]))
    for name in args.variants.split(","):
        settings = {"train.out_dir": str(out / name), "train.max_steps": args.steps, "train.resume": False,
                    "train.progress": False, "train.tensorboard": False, "train.save_every": 0,
                    "ppo.ptx_data": args.ptx, "ppo.ptx_coef": 0.5}
        settings.update({k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)})
        settings.update(VARIANTS[name])
        cfg = PPOConfig.load("ppo-nano.yaml", settings)
        policy = copy.deepcopy(start).train()
        trainer = build_ppo_trainer(cfg, policy, tokenizer, rm, synthetic.prompts("train", cfg.ppo.prompt_pool,
                                                                                   cfg.data.seed),
                                    builtin_task=True, ptx_rows=ptx_train if cfg.ppo.ptx_coef else None)
        t0 = time.perf_counter()
        summary = trainer.fit()
        seconds = time.perf_counter() - t0
        policy.eval()
        results[name] = {"after": evaluate(policy, start, rm, tokenizer, heldout, ptx_heldout),
                         "seconds": seconds, "steps": summary["steps"]}
        plot_metric_page(read_metrics(out / name), PPO_PANELS, out / name / "ppo.png", f"PPO {name}")
        print(name, json.dumps(results[name]))
        (out / f"results-{args.variants}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot_comparison(out, [v for v in args.variants.split(",")])


def real_lora_step(gguf: str, out: Path, rank: int = 8) -> dict[str, float]:
    """One PPO step with LoRA (policy and value) on real weights; returns its time and peak memory."""
    import resource

    from openqwen.infer.loading import load_model_and_tokenizer

    policy, tokenizer = load_model_and_tokenizer(gguf, "fp32")
    policy.train()
    cfg = PPOConfig.load("ppo-nano.yaml", {
        "train.out_dir": str(out / "real-lora"), "train.max_steps": 1, "train.resume": False, "train.progress": False,
        "train.tensorboard": False, "train.plot": False, "train.save_every": 0, "train.peak_flops": 1e12,
        "lora.rank": rank, "optim.lr": 1e-6, "ppo.value_lr": 5e-6, "ppo.reward": "synthetic", "ppo.value_init": "policy",
        "ppo.prompts_per_rollout": 2, "ppo.responses_per_prompt": 2, "ppo.epochs": 1, "ppo.minibatches": 1,
        "ppo.value_warmup_steps": 0, "ppo.max_new_tokens": 16, "ppo.ptx_coef": 0.0, "ppo.ptx_data": None})
    trainer = build_ppo_trainer(cfg, policy, tokenizer, None, synthetic.prompts("train", 50, 0), builtin_task=True)
    t0 = time.perf_counter()
    stats = trainer.train_step()
    seconds = time.perf_counter() - t0
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    trainable = sum(p.numel() for m in (trainer.model, trainer.modules["value"]) for p in m.parameters()
                    if p.requires_grad)
    return {"seconds": seconds, "peak_rss_gib": peak_gib, "trainable_params": trainable,
            **{k: stats[k] for k in ("ratio", "kl", "reward_raw", "entropy", "value_loss", "response_length")}}


def plot_comparison(out: Path, names: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("reward_raw", "reward (rollouts, raw)"), ("accuracy", "rollouts: right number"), ("kl", "KL per token"),
            ("ptx_loss", "ptx loss (pretraining rows)")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4))
    for ax, (key, title) in zip(axes, keys):
        for name in names:
            recs = [r for r in read_metrics(out / name) if r.get("kind") == "train" and key in r]
            if not recs:
                continue
            steps, vals = [r["step"] for r in recs], [r[key] for r in recs]
            w = 8  # a running mean over 8 steps (2 rollouts): single minibatches are noisy
            smooth = [sum(vals[max(0, i - w + 1):i + 1]) / len(vals[max(0, i - w + 1):i + 1]) for i in range(len(vals))]
            ax.plot(steps, smooth, label=name, lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ppo_proof.png", dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    main()
