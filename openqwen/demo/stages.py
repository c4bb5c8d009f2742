"""The demo's stages: each one call into the package's own entry points, at the demo's sizes.

Data: the built-in corpus, the cleaning pipeline, a tokenizer, packed rows. Models, each trained by
the one Trainer from the recipe in ``openqwen/recipes/`` that documents it, with the demo's sizes
as overrides:

==================  =================================  ===========================================
stage               starts from                        trains on
==================  =================================  ===========================================
``pretrain``        nothing (preset of the dial)       the packed clean corpus
``sft``             ``pretrain``                       the built-in chats (arithmetic, instructions)
``reward``          ``sft``                            PMP on noisy pairs, then clean pairs
``ppo``             ``sft`` + ``reward``               rollouts on the built-in arithmetic prompts
``code-continue``   ``pretrain``                       a code-heavy mix at 4x the context
``code-sft``        ``code-continue``                  chats, then code chats (two SFT stages)
``math``            ``sft``                            worked solutions of the built-in math set
``agent``           ``sft``                            ReAct dialogues with a calculator and a
                                                       distractor tool, and chats that need none
==================  =================================  ===========================================

Every function takes the run (:class:`DemoRun`) and the steps the budget gave it, and returns the
stage's summary (``model_dir`` where it made a model, and ``info``: one line for the report).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .config import DemoConfig


MATH_CATEGORIES = ("add", "sub", "mul")
"""The math set's categories the demo trains and scores: the column-method ones a nano model learns
in minutes (one single-digit fact and a carry per written line); the others need a bigger model."""


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class DemoRun:
    """One demo run: its folder and sizes; the stages read and write paths under ``out``."""

    out: Path
    dc: DemoConfig

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    @property
    def tokenizer_dir(self) -> Path:
        return self.path("tokenizer")

    def model(self, name: str) -> Path:
        """Where the model of stage ``name`` lives (``base`` is the pretrained model)."""
        return self.path("pretrain" if name == "base" else name)


# ------------------------------------------------------------------------------------------ data
def corpus(run: DemoRun) -> dict[str, Any]:
    from openqwen.data.demo_corpus import DemoCorpusConfig, build_demo_corpus

    sh, zh, code, arith = run.dc.corpus_bytes
    manifest = build_demo_corpus(run.path("corpus"), config=DemoCorpusConfig(
        shakespeare_bytes=sh, chinese_bytes=zh, code_bytes=code, arithmetic_bytes=arith), log=log)
    return {"info": f"{manifest['kept']} documents, {manifest.get('bytes_kept', 0) / 1e6:.1f} MB",
            "documents": manifest["kept"]}


def pipeline(run: DemoRun) -> dict[str, Any]:
    from openqwen.data.pipeline import run_pipeline
    from openqwen.data.recipe import prepare_demo_data

    if not run.dc.pipeline:
        return {"info": "skipped (pipeline=false)", "output": str(run.path("corpus"))}
    done = run.path("pipeline", "pipeline.json")  # written last by run_pipeline: the folder is complete
    summary = (json.loads(done.read_text()) if done.exists() else run_pipeline(
        run.path("corpus"), run.path("pipeline"), prepare_demo_data(run.path("corpus"), run.path("data-models"),
                                                                    log=log), log=log, card_plot=True))
    quality = json.loads(run.path("data-models", "quality_report.json").read_text())
    return {"info": f"{summary['docs_in']} -> {summary['docs_out']} documents (data card: {summary.get('card')}; "
                    f"quality filter held-out precision {quality['precision']:.2f}, recall {quality['recall']:.2f})",
            "output": summary["output"], "docs_in": summary["docs_in"], "docs_out": summary["docs_out"]}


def clean_corpus(run: DemoRun) -> Path:
    """The data pipeline's output folder (its last stage, as ``pipeline.json`` records it), or the raw
    corpus when the pipeline is off."""
    if not run.dc.pipeline:
        return run.path("corpus")
    return Path(json.loads(run.path("pipeline", "pipeline.json").read_text())["output"])


def tokenizer(run: DemoRun, clean: Path) -> dict[str, Any]:
    from openqwen.tokenizer.train import train_tokenizer

    tok = train_tokenizer([clean], vocab_size=run.dc.vocab_size, show_progress=False)
    tok.save_pretrained(run.tokenizer_dir)
    return {"info": f"byte-level BPE with Qwen's split rules (single digits), {tok.vocab_size} ids",
            "vocab_size": tok.vocab_size}


def load_demo_tokenizer(run: DemoRun) -> Any:
    from openqwen.tokenizer import QwenTokenizer

    return QwenTokenizer.from_pretrained(run.tokenizer_dir)


def pack(run: DemoRun, clean: Path) -> dict[str, Any]:
    from openqwen.data.packing import pack_documents

    index = pack_documents(clean, load_demo_tokenizer(run), run.path("packed"), seq_len=run.dc.seq_len,
                           progress=False)
    return {"info": f"{index['num_tokens']:,} tokens in {index['num_sequences']} sequences of {run.dc.seq_len}",
            "num_tokens": index["num_tokens"], "num_sequences": index["num_sequences"]}


def code_mix(clean: Path, other_share: float = 0.25, seed: int = 0, code_tasks_bytes: int = 0) -> list[str]:
    """The code-heavy mix of continued pretraining (Code-Qwen: code with a little text kept so the
    model does not forget it): every code document, ``other_share`` of the rest, and files of the
    built-in function tasks' train split up to ``code_tasks_bytes`` (each task as a comment, its
    solution and its asserts; the hash split keeps every evaluated task out, and the held-out check
    checks these files too). Without them the stdlib alone left base-mode pass@1 at 0 %."""
    import random

    from openqwen.data.demo_corpus import code_task_documents
    from openqwen.data.io import BadLine, read_documents

    rng = random.Random(seed)
    texts = []
    for f in sorted(Path(clean).rglob("*.jsonl*")) if Path(clean).is_dir() else [Path(clean)]:
        for doc in read_documents(f):
            if isinstance(doc, BadLine):
                continue
            if doc.get("domain") == "code" or rng.random() < other_share:
                texts.append(doc["text"])
    if not texts:
        raise ValueError(f"{clean}: no documents for the code mix")
    tasks = [d["text"] for d in code_task_documents(code_tasks_bytes)] if code_tasks_bytes > 0 else []
    mixed = texts + tasks
    rng.shuffle(mixed)
    return mixed


def code_task_comments(code_tasks_bytes: int) -> set[str]:
    """The task texts (the ``# ...`` comment lines) of the function-task files :func:`code_mix` adds."""
    from openqwen.data.demo_corpus import code_task_documents

    return {line[2:].strip() for d in code_task_documents(code_tasks_bytes) for line in d["text"].splitlines()
            if line.startswith("# ")} if code_tasks_bytes > 0 else set()


# ------------------------------------------------------------------------------------- training
def _common(run: DemoRun, name: str, steps: int) -> dict[str, Any]:
    """Overrides every next-token stage shares: its folder, steps, warm-up, batch, threads."""
    return {"train.out_dir": str(run.path(name)), "train.max_steps": steps, "train.batch_size": run.dc.batch,
            "optim.warmup_steps": max(1, steps // 20), "train.save_every": max(1, steps // 4),
            "train.threads": run.dc.threads, "data.seed": run.dc.seed}


def pretrain_config(run: DemoRun, steps: int, num_sequences: int) -> Any:
    from openqwen.train.config import TrainConfig

    return TrainConfig.load("nano-pretrain.yaml", {
        **_common(run, "pretrain", steps), "model.preset": run.dc.model_preset(),
        "data.path": str(run.path("packed")), "data.tokenizer": str(run.tokenizer_dir),
        "data.val_sequences": max(1, min(32, num_sequences // 10)), "optim.lr": run.dc.pretrain_lr,
        "train.eval_every": max(1, steps // 5)})


def pretrain(run: DemoRun, steps: int, num_sequences: int) -> dict[str, Any]:
    from openqwen.train import pretrain as pretraining

    res = pretraining.run(pretrain_config(run, steps, num_sequences))
    return {**res, "info": f"{res['steps']} steps, loss {res['final_loss']:.2f}, validation {res['val_loss']:.2f}, "
                           f"{res['tokens_per_s'] or 0:,.0f} tokens/s"}


def _sft(run: DemoRun, name: str, init: str, steps: int, files: list[str], extra: dict[str, Any]) -> dict[str, Any]:
    from openqwen.train import sft
    from openqwen.train.config import TrainConfig

    cfg = TrainConfig.load("nano-sft.yaml", {
        **_common(run, name, steps), "model.init_from": str(run.model(init)), "optim.lr": run.dc.sft_lr,
        "sft.train_files": files, "sft.builtin_size": run.dc.sft_conversations, "train.eval_every": 0,
        "model.seq_length": run.dc.seq_len, **extra})
    return sft.run(cfg)


def _chats(run: DemoRun, name: str) -> str:
    return str(run.path("data", f"{name}_chats.jsonl"))


def sft(run: DemoRun, steps: int) -> dict[str, Any]:
    res = _sft(run, "sft", "base", steps, [_chats(run, "sft")], {})
    return {**res, "info": f"{res['steps']} steps on {res['conversations']} chats, loss {res['final_loss']:.2f}"}


def math(run: DemoRun, steps: int) -> dict[str, Any]:
    """Math-Qwen-Chat at nano scale: the chat model fine-tuned on the built-in worked solutions
    (system and user turns masked, as the report)."""
    res = _sft(run, "math", "sft", steps, [_chats(run, "math")], {"sft.mask_prompt": True})
    return {**res, "info": f"{res['steps']} steps on {res['conversations']} worked solutions, "
                           f"loss {res['final_loss']:.2f}"}


def code_continue(run: DemoRun, steps: int) -> dict[str, Any]:
    """Code-Qwen's continued pretraining: the base model on a code-heavy mix at 4x its context
    (the report: 2048 -> 8192), at ``code_continue_lr``, constant after a 3 % warm-up."""
    from openqwen.data.packing import pack_documents
    from openqwen.train import pretrain as pretraining
    from openqwen.train.config import TrainConfig

    seq = run.dc.seq_len * 4
    packed = run.path("code-packed")
    if not (packed / "index.json").exists():
        pack_documents(code_mix(clean_corpus(run), seed=run.dc.seed, code_tasks_bytes=run.dc.code_tasks_bytes),
                       load_demo_tokenizer(run), packed, seq_len=seq, progress=False)
    batch = max(1, run.dc.batch // 4)  # the same tokens per step as pretraining
    cfg = TrainConfig.load("code-continue-nano.yaml", {
        **_common(run, "code-continue", steps), "train.batch_size": batch, "model.init_from": str(run.model("base")),
        "model.seq_length": seq, "data.path": str(packed), "data.tokenizer": str(run.tokenizer_dir),
        "optim.lr": run.dc.code_continue_lr, "optim.warmup_steps": max(1, round(steps * 0.03)),
        "train.eval_every": max(1, steps // 4)})
    res = pretraining.run(cfg)
    return {**res, "info": f"{res['steps']} steps at {seq} tokens on the code mix, loss {res['final_loss']:.2f}, "
                           f"validation {res['val_loss']:.2f}"}


def code_sft(run: DemoRun, steps: int) -> dict[str, Any]:
    """Code-Qwen-Chat: two SFT stages from the code-continued model, general chats then code chats at
    half the learning rate (``sft.stages``)."""
    first = max(1, steps // 3)
    stages = [{"name": "general", "train_files": [_chats(run, "sft")], "lr": run.dc.sft_lr, "max_steps": first},
              {"name": "code", "train_files": [_chats(run, "code")], "lr": run.dc.sft_lr / 2,
               "max_steps": max(1, steps - first)}]
    seq = chat_seq_len(run, "code", 4 * run.dc.seq_len)  # the code-continued model's context
    res = _sft(run, "code-sft", "code-continue", steps, [_chats(run, "sft")],
               {"sft.stages": stages, "model.seq_length": seq,
                "train.batch_size": max(1, run.dc.batch * run.dc.seq_len // seq)})
    return {**res, "info": f"{first} general + {steps - first} code SFT steps ({seq}-token rows), "
                           f"loss {res['final_loss']:.2f}"}


def reward(run: DemoRun, steps: int) -> dict[str, Any]:
    """The reward model from the chat model: PMP on noisy pairs (a third of the steps), then clean pairs."""
    from openqwen.align.reward_train import RewardConfig, run as train_reward

    pmp = max(1, steps // 3)
    cfg = RewardConfig.load("reward-nano.yaml", {
        "model.init_from": str(run.model("sft")), "train.out_dir": str(run.path("reward")),
        "train.max_steps": steps - pmp, "reward.pmp_steps": pmp, "train.threads": run.dc.threads,
        # as many pairs as the steps read (twice for PMP): encoding the recipe's 20,000 costs minutes
        "reward.builtin_pmp_size": min(20_000, 2 * 32 * pmp), "reward.builtin_train_size": min(2000, 32 * steps),
        "train.eval_every": max(1, (steps - pmp) // 4), "data.seed": run.dc.seed})
    res = train_reward(cfg)
    acc = res.get("heldout_accuracy")
    held = f"held-out pair accuracy {acc:.1%}" if acc is not None else "no held-out pairs"
    return {**res, "info": f"{pmp} PMP + {steps - pmp} fine-tuning steps; {held}"}


def ppo(run: DemoRun, steps: int) -> dict[str, Any]:
    """PPO of the chat model against the reward model, the pretraining gradient mixed in."""
    from openqwen.align.ppo import PPOConfig
    from openqwen.align.ppo_run import run as train_ppo

    per_rollout = 4  # the recipe's 2 epochs x 2 minibatches
    steps = max(per_rollout, steps - steps % per_rollout)
    cfg = PPOConfig.load("ppo-nano.yaml", {
        "model.init_from": str(run.model("sft")), "train.out_dir": str(run.path("ppo")),
        "train.max_steps": steps, "train.save_every": per_rollout * max(1, steps // (4 * per_rollout)),
        "ppo.reward_model": str(run.path("reward")), "ppo.ptx_data": str(run.path("packed")),
        "ppo.value_warmup_steps": max(per_rollout, steps // 8), "train.threads": run.dc.threads,
        "optim.lr": run.dc.ppo_lr, "ppo.value_lr": 5 * run.dc.ppo_lr, "ppo.ptx_coef": run.dc.ppo_ptx_coef,
        "ppo.kl_coef": run.dc.ppo_kl_coef,
        "data.seed": run.dc.seed})
    res = train_ppo(cfg)
    return {**res, "info": f"{res['steps']} steps ({res['steps'] // per_rollout} rollouts)"}


def chat_seq_len(run: DemoRun, name: str, most: int = 1024) -> int:
    """Rows for the chat set ``name``: its longest conversation in the demo's tokens, rounded up to 64,
    at least the pretraining length and at most ``most`` (longer ones are dropped and counted by SFT).
    The agent's ReAct prompts list two tools and code chats hold whole functions: both run 2-4x the
    pretraining length."""
    from openqwen.train.sft_data import encode_chats, read_chat_jsonl

    chats, _ = encode_chats(read_chat_jsonl(_chats(run, name)), load_demo_tokenizer(run), "", 1 << 30)
    return max(run.dc.seq_len, min(most, -(-max(len(c.ids) for c in chats) // 64) * 64))


def agent(run: DemoRun, steps: int) -> dict[str, Any]:
    """The tool-using chat model: the chat model fine-tuned on the built-in ReAct dialogues
    (:mod:`openqwen.agent.calculator_sft`: call the calculator for arithmetic, the weather tool for
    weather, nothing for small talk), at the same tokens per step as the other stages."""
    seq = chat_seq_len(run, "agent")
    batch = max(1, run.dc.batch * run.dc.seq_len // seq)
    res = _sft(run, "agent", "sft", steps, [_chats(run, "agent")],
               {"model.seq_length": seq, "train.batch_size": batch})
    return {**res, "info": f"{res['steps']} steps on {res['conversations']} tool dialogues ({seq}-token rows), "
                           f"loss {res['final_loss']:.2f}"}


TRAINING_STAGES: dict[str, Callable[[DemoRun, int], dict[str, Any]]] = {
    "sft": sft, "reward": reward, "ppo": ppo, "code-continue": code_continue, "code-sft": code_sft, "math": math,
    "agent": agent,
}
"""Training stages after pretraining, in the order they run (each needs the ones before it)."""



def user_questions(chat: list[dict[str, str]]) -> set[str]:
    """The user turns of a chat, stripped, and for a ReAct turn (the tool instruction, a blank line,
    the question) its question alone: what a held-out question is compared with."""
    turns = [m["content"] for m in chat if m["role"] == "user" and m.get("content")]
    return {t.strip() for t in turns} | {t.rsplit("\n\n", 1)[-1].strip() for t in turns}


PPO_PREFERRED_SHARE = 0.1
"""Share of the SFT set's PPO-task answers in the preferred format (the rest in eight other wordings,
about as common each): SFT teaches the task and leaves the preference to the reward model and PPO."""


def agent_plain_questions(n: int, seed: int) -> list[tuple[str, str]]:
    """Questions the agent must answer without a tool: ``n`` of the SFT set's instructions (train split;
    counting, comparing, copying words, numbers in most of them) and the corpus facts, so the agent
    learns that numbers in a question do not call for the calculator, only arithmetic does."""
    from openqwen.data.synthetic_instructions import instructions
    from openqwen.train.sft_data import CORPUS_FACTS

    return [(i.question, i.answer) for i in instructions("train", n, seed)] + list(CORPUS_FACTS)


def training_chats(run: DemoRun, heldout: set[str]) -> dict[str, Path]:
    """The chat sets the SFT stages train on, written to ``OUT/data/``: the built-in generators'
    output minus every conversation whose user turn is a held-out question of the evaluation (the
    generators share the "What is a + b?" format, and each keeps only its own held-out split out).
    The chat set is instructions (55 %: the SFT goal's task), 2-digit arithmetic (35 %), corpus
    facts, and a sixth more of the PPO task's train questions in many wordings."""
    from openqwen.agent.calculator_sft import heldout_cases, training_dialogues
    from openqwen.align import synthetic
    from openqwen.data.synthetic_code import code_chats
    from openqwen.data.synthetic_math import math_chats
    from openqwen.train.sft_data import builtin_chat_set, write_chat_jsonl

    n, seed = run.dc.sft_conversations, run.dc.seed
    sets = {"sft": builtin_chat_set(n, seed, arithmetic=0.35, instructions_share=0.55)
            + synthetic.styled_conversations("train", n // 6, seed, preferred=PPO_PREFERRED_SHARE),
            "math": math_chats(n, seed, MATH_CATEGORIES), "code": code_chats(max(200, n // 3), seed),
            "agent": training_dialogues(max(300, n // 4), seed, plain_extra=agent_plain_questions(n // 4, seed))}
    paths, dropped = {}, {}
    for name, chats in sets.items():
        kept = [c for c in chats if not user_questions(c) & heldout]
        dropped[name] = len(chats) - len(kept)
        paths[name] = write_chat_jsonl(kept, run.path("data", f"{name}_chats.jsonl"))
    cases = run.path("data", "agent_heldout.jsonl")  # the tool benchmark's shape (eval --task tools --data)
    cases.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in heldout_cases()))
    return {"paths": {k: str(v) for k, v in paths.items()}, "agent_cases": str(cases), "dropped": dropped,
            "info": "built-in chats minus held-out questions: dropped " +
                    ", ".join(f"{v} of {k}" for k, v in dropped.items())}


SCORED_AFTER: dict[str, tuple[str, ...]] = {
    "instructions": ("sft", "math", "code", "agent", "ppo"), "arithmetic": ("sft", "math", "code", "agent", "ppo"),
    "PPO task": ("sft", "ppo"), "math": ("sft", "math"), "code": ("sft", "code", "code-continue"),
    "agent": ("sft", "agent")}
"""For each held-out set, the training sets behind the models scored on it (``ppo``: the reward and
PPO task's train prompts; ``code-continue``: the function tasks of the code mix). The PPO task's
single-digit sums may coincide with a math test question, and no model scored on math ever trains on
them; every other pair is checked."""


def heldout_check(run: DemoRun, heldout: dict[str, list[str]], files: dict[str, str]) -> dict[str, Any]:
    """No held-out question of the evaluation is a user turn of a training file (or a prompt of the
    reward/PPO task's train split) behind a model scored on it (:data:`SCORED_AFTER`; exact match
    on the text). The data pipeline's 13-gram decontamination covers the pretraining corpus; these
    questions are shorter than 13 units, so they are checked here, on the very files the stages
    train on."""
    from openqwen.align import synthetic
    from openqwen.train.sft_data import read_chat_jsonl

    seen = {name: {q for c in read_chat_jsonl(f) for q in user_questions(c)} for name, f in files.items()}
    seen["ppo"] = {m[-1]["content"].strip() for m in synthetic.prompts("train", 2000, run.dc.seed)}
    seen["code-continue"] = code_task_comments(run.dc.code_tasks_bytes)
    overlap = {name: sum(q.strip() in set().union(*(seen[s] for s in SCORED_AFTER[name])) for q in qs)
               for name, qs in heldout.items()}
    if any(overlap.values()):
        raise ValueError(f"held-out questions found in the demo's training data: {overlap}")
    total = len(set().union(*seen.values()))
    return {"info": "0 of " + ", ".join(f"{len(qs)} {k}" for k, qs in heldout.items()) +
                    f" held-out questions among the {total:,} training questions of the models scored on them",
            "overlap": overlap}
