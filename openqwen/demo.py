"""``openqwen demo``: the nano recipe end to end, the project's main job (``make demo``).

demo corpus -> data pipeline (normalise, dedup, language id, filters, decontamination, mixing) ->
train a tokenizer -> pack -> pretrain a nano Qwen -> SFT on the built-in synthetic chat set ->
report (loss curves, samples and held-out arithmetic accuracy before and after SFT) and the command
to chat with the result.

Every stage writes into ``--out`` and is skipped when its output is already there (the trainer
resumes from its checkpoints), so an interrupted demo continues where it stopped. ``--quick`` runs
every stage at a size that takes about a minute or two (used by the tests).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SAMPLE_PROMPTS = ["What is 23 + 45?", "What is 71 - 38?", "Spell the word apple backwards.",
                  "Write green in capital letters.", "Who wrote Hamlet?", "Count from 12 to 16."]
BASE_PROMPTS = ["ROMEO.\n", "def main(", "Question: What is 12 plus 30?\nAnswer:"]


@dataclass
class DemoConfig:
    """Sizes of every stage. ``full()`` fits 15 minutes on 2 CPU cores (the step counts shrink to fit
    ``time_budget_s`` on a slower machine); ``quick()`` takes ~1-2 minutes."""

    quick: bool = False
    corpus_bytes: tuple[int, int, int, int] = (1_500_000, 600_000, 900_000, 1_500_000)
    """Bytes of Shakespeare, Chinese poetry, Python code, arithmetic taken from the demo corpus."""
    vocab_size: int = 4096
    seq_len: int = 256
    preset: str = "nano-1m"
    pretrain_steps: int = 1000
    pretrain_batch: int = 16
    pretrain_lr: float = 3e-3
    sft_steps: int = 500
    sft_batch: int = 16
    sft_lr: float = 1e-3
    sft_conversations: int = 6000
    eval_questions: int = 100
    threads: int = 2
    pipeline: bool = True
    """Run the cleaning pipeline (False packs the raw demo corpus; for machines without its extras)."""
    time_budget_s: float | None = 14 * 60
    """Whole-demo budget: after packing, a few timed training steps decide how many of the configured
    pretraining and SFT steps fit (both shrink by the same factor on a slow machine). None: no limit."""

    @classmethod
    def full(cls) -> "DemoConfig":
        return cls()

    @classmethod
    def make_quick(cls) -> "DemoConfig":
        return cls(quick=True, corpus_bytes=(60_000, 30_000, 40_000, 60_000), vocab_size=512, seq_len=128,
                   pretrain_steps=40, pretrain_batch=8, sft_steps=40, sft_batch=8, sft_conversations=600,
                   eval_questions=20, time_budget_s=None)


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def extract_int(text: str) -> int | None:
    """The last integer in ``text`` (the answer in "23 + 45 = 68"); None when there is none."""
    found = re.findall(r"-?\d+", text)
    return int(found[-1]) if found else None


def arithmetic_accuracy(engine: Any, n: int) -> tuple[float, list[tuple[str, str, int]]]:
    """Greedy chat answers to ``n`` held-out questions; correct when the last integer is the answer."""
    from openqwen.infer.sampling import SamplingParams
    from openqwen.train.sft_data import heldout_arithmetic

    questions = heldout_arithmetic(n)
    outs = engine.chat([[{"role": "user", "content": q}] for q, _ in questions],
                       SamplingParams(greedy=True, max_new_tokens=20))
    rows = [(q, o.text, v) for (q, v), o in zip(questions, outs)]
    return sum(extract_int(text) == v for _, text, v in rows) / len(rows), rows


def evaluate(model_dir: Path, label: str, questions: int) -> dict[str, Any]:
    """Samples (chat and raw text) and the accuracy on ``questions`` held-out arithmetic questions of
    the model in ``model_dir``."""
    from openqwen.infer.engine import Engine
    from openqwen.infer.sampling import SamplingParams

    engine = Engine.from_pretrained(model_dir, max_batch_size=32, max_seq_len=256)
    try:
        acc, rows = arithmetic_accuracy(engine, questions)
        chat = engine.chat([[{"role": "user", "content": p}] for p in SAMPLE_PROMPTS],
                           SamplingParams(greedy=True, max_new_tokens=24))
        raw = engine.generate(BASE_PROMPTS, SamplingParams(greedy=True, max_new_tokens=32))
    finally:
        engine.close()
    _log(f"{label}: held-out arithmetic accuracy {acc:.0%}")
    return {"accuracy": acc, "arithmetic": rows,
            "chat": [(p, c.text) for p, c in zip(SAMPLE_PROMPTS, chat)],
            "raw": [(p, c.text) for p, c in zip(BASE_PROMPTS, raw)]}


def pretrain_config(dc: DemoConfig, out: Path, num_sequences: int) -> Any:
    """The demo's pretraining run: the nano recipe at the demo's sizes."""
    from openqwen.train.config import TrainConfig

    return TrainConfig.load("nano-pretrain.yaml", {
        "model.preset": dc.preset, "data.path": str(out / "packed"), "data.tokenizer": str(out / "tokenizer"),
        "data.val_sequences": min(16, num_sequences // 10 or 1),
        "train.out_dir": str(out / "pretrain"), "train.max_steps": dc.pretrain_steps,
        "train.batch_size": dc.pretrain_batch, "optim.lr": dc.pretrain_lr,
        "optim.warmup_steps": max(1, dc.pretrain_steps // 20),
        "train.eval_every": max(1, dc.pretrain_steps // 5), "train.save_every": max(1, dc.pretrain_steps // 5),
        "train.threads": dc.threads})


def seconds_per_step(cfg: Any, steps: int = 4) -> float:
    """Seconds of one ``Trainer.train_step`` of the pretraining run ``cfg`` describes, on its data and
    with the model ``pretrain.run`` builds (the median of the steps after a warm-up one), in a trainer
    made for the measurement and dropped."""
    import statistics

    import torch

    from openqwen.train.batches import PackedRows
    from openqwen.train.loop import Trainer
    from openqwen.train.pretrain import load_tokenizer, pretrain_model

    rows = PackedRows(cfg.data.path)
    trainer = Trainer(cfg, pretrain_model(cfg, rows, load_tokenizer(cfg.data.tokenizer)), rows, name="timing")
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step()
        if trainer.info.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def fit_budget(dc: DemoConfig, elapsed: float, step_s: float, reserve_s: float = 90.0) -> tuple[int, int]:
    """Pretraining and SFT steps that fit the remaining budget (never more than configured)."""
    wanted = dc.pretrain_steps + dc.sft_steps * dc.sft_batch / dc.pretrain_batch
    if dc.time_budget_s is None:
        return dc.pretrain_steps, dc.sft_steps
    affordable = max(0.0, dc.time_budget_s - elapsed - reserve_s) / step_s
    scale = min(1.0, affordable / wanted)
    return max(10, int(dc.pretrain_steps * scale)), max(10, int(dc.sft_steps * scale))


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "⏎")


def write_report(out: Path, dc: DemoConfig, timings: dict[str, float], info: dict[str, Any],
                 before: dict[str, Any], after: dict[str, Any]) -> Path:
    from openqwen.train.metrics import plot_loss_curves, read_metrics

    plot_loss_curves({"pretrain": read_metrics(out / "pretrain"), "sft": read_metrics(out / "sft")},
                     out / "loss_curves.png", title="nano Qwen: pretraining and SFT")
    lines = [
        "# openqwen demo report", "",
        f"Nano recipe {'(quick size)' if dc.quick else ''} end to end in {sum(timings.values()) / 60:.1f} minutes.", "",
        "| stage | seconds | result |", "|---|---|---|",
    ]
    for stage, seconds in timings.items():
        lines.append(f"| {stage} | {seconds:.0f} | {info.get(stage, '')} |")
    lines += ["", "![loss curves](loss_curves.png)", "",
              "## Held-out arithmetic (greedy, chat prompt, 2-digit + and -)", "",
              f"- before SFT (pretrained model): **{before['accuracy']:.0%}**",
              f"- after SFT: **{after['accuracy']:.0%}**", "",
              "| question | before SFT | after SFT |", "|---|---|---|"]
    for (q, b, v), (_, a, _) in zip(before["arithmetic"][:5], after["arithmetic"][:5]):
        lines.append(f"| {q} (= {v}) | {_md_escape(b)} | {_md_escape(a)} |")
    lines += ["", "## Chat samples (greedy)", "", "| prompt | before SFT | after SFT |", "|---|---|---|"]
    for (p, b), (_, a) in zip(before["chat"], after["chat"]):
        lines.append(f"| {_md_escape(p)} | {_md_escape(b)} | {_md_escape(a)} |")
    lines += ["", "## Raw-text continuations of the pretrained model (greedy)", "", "| prompt | continuation |",
              "|---|---|"]
    for p, c in before["raw"]:
        lines.append(f"| {_md_escape(p)} | {_md_escape(c)} |")
    lines += ["", "## Chat with the result", "", "```", f"openqwen chat --model {out / 'sft'}", "```", "",
              f"Config: `{json.dumps(asdict(dc))}`", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def run(out: str | Path, dc: DemoConfig) -> dict[str, Any]:
    import torch

    from openqwen.data.demo_corpus import DemoCorpusConfig, build_demo_corpus
    from openqwen.data.packing import pack_documents
    from openqwen.data.pipeline import run_pipeline
    from openqwen.data.recipe import prepare_demo_data
    from openqwen.tokenizer import QwenTokenizer
    from openqwen.tokenizer.train import train_tokenizer
    from openqwen.train import pretrain, sft
    from openqwen.train.config import TrainConfig

    torch.set_num_threads(dc.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    info: dict[str, Any] = {}

    def stage(name: str):
        class _Timer:
            def __enter__(self):
                _log(f"stage {name}")
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                timings[name] = time.perf_counter() - self.t0

        return _Timer()

    with stage("corpus"):
        sh, zh, code, arith = dc.corpus_bytes
        manifest = build_demo_corpus(out / "corpus", config=DemoCorpusConfig(
            shakespeare_bytes=sh, chinese_bytes=zh, code_bytes=code, arithmetic_bytes=arith), log=_log)
        info["corpus"] = f"{manifest['kept']} documents, {manifest.get('bytes_kept', 0) / 1e6:.1f} MB"
    with stage("data pipeline"):
        if dc.pipeline:
            done = out / "pipeline" / "pipeline.json"  # written last by run_pipeline: the folder is complete
            # every stage on, the web sample added, the quality and n-gram models trained first
            summary = (json.loads(done.read_text()) if done.exists()
                       else run_pipeline(out / "corpus", out / "pipeline", prepare_demo_data(
                           out / "corpus", out / "data-models", log=_log), log=_log, card_plot=True))
            clean = Path(summary["output"])
            quality = json.loads((out / "data-models" / "quality_report.json").read_text())
            info["data pipeline"] = (f"{summary['docs_in']} -> {summary['docs_out']} documents (card: "
                                     f"{summary.get('card')}; quality filter held-out precision "
                                     f"{quality['precision']:.2f}, recall {quality['recall']:.2f})")
        else:
            clean = out / "corpus"
            info["data pipeline"] = "skipped (pipeline=false)"
    with stage("tokenizer"):
        tok_dir = out / "tokenizer"
        if (tok_dir / "tokenizer_config.json").exists() or any(tok_dir.glob("*.tiktoken")):
            tokenizer = QwenTokenizer.from_pretrained(tok_dir)
        else:
            tokenizer = train_tokenizer([clean], vocab_size=dc.vocab_size, show_progress=False)
            tokenizer.save_pretrained(tok_dir)
        info["tokenizer"] = f"byte-level BPE, {tokenizer.vocab_size} ids"
    with stage("pack"):
        index = pack_documents(clean, tokenizer, out / "packed", seq_len=dc.seq_len, progress=False)
        info["pack"] = f"{index['num_tokens']:,} tokens in {index['num_sequences']} sequences of {dc.seq_len}"
    if dc.time_budget_s is not None:
        step_s = seconds_per_step(pretrain_config(dc, out, index["num_sequences"]))
        steps = fit_budget(dc, sum(timings.values()), step_s)
        if steps != (dc.pretrain_steps, dc.sft_steps):
            _log(f"{step_s:.2f} s per step here: {steps[0]} pretraining and {steps[1]} SFT steps fit the "
                 f"{dc.time_budget_s / 60:.0f}-minute budget (configured {dc.pretrain_steps} and {dc.sft_steps})")
        dc.pretrain_steps, dc.sft_steps = steps
    with stage("pretrain"):
        cfg = pretrain_config(dc, out, index["num_sequences"])
        res = pretrain.run(cfg)
        info["pretrain"] = (f"{dc.pretrain_steps} steps, loss {res['final_loss']:.2f}, val {res['val_loss']:.2f}, "
                            f"{res['tokens_per_s'] or 0:.0f} tok/s")
    with stage("eval before SFT"):
        before = evaluate(out / "pretrain", "before SFT", dc.eval_questions)
    with stage("sft"):
        cfg = TrainConfig.load("nano-sft.yaml", {
            "model.init_from": str(out / "pretrain"), "train.out_dir": str(out / "sft"),
            "train.max_steps": dc.sft_steps, "train.batch_size": dc.sft_batch, "optim.lr": dc.sft_lr,
            "optim.warmup_steps": max(1, dc.sft_steps // 20), "sft.builtin_size": dc.sft_conversations,
            "train.eval_every": 0, "train.save_every": max(1, dc.sft_steps // 4), "train.threads": dc.threads,
            "model.seq_length": dc.seq_len})
        res = sft.run(cfg)
        info["sft"] = f"{dc.sft_steps} steps on {res['conversations']} chats, loss {res['final_loss']:.2f}"
    with stage("eval after SFT"):
        after = evaluate(out / "sft", "after SFT", dc.eval_questions)
    report = write_report(out, dc, timings, info, before, after)
    result = {"report": str(report), "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
              "arithmetic_before": before["arithmetic"], "arithmetic_after": after["arithmetic"],
              "seconds": sum(timings.values()), "timings": timings, "chat_command": f"openqwen chat --model {out / 'sft'}"}
    (out / "demo.json").write_text(json.dumps(result, indent=2) + "\n")
    _log(f"report: {report}")
    _log(f"held-out arithmetic accuracy: {before['accuracy']:.0%} before SFT -> {after['accuracy']:.0%} after")
    _log(f"chat with the result:  openqwen chat --model {out / 'sft'}")
    return result


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="the nano recipe end to end: corpus -> data -> tokenizer -> pretrain -> SFT -> report",
        description="Build the demo corpus, clean it, train a tokenizer, pretrain a nano Qwen, fine-tune it on "
                    "synthetic chats and write a report with loss curves, samples and arithmetic accuracy before "
                    "and after SFT. About 15 minutes on 2 CPU cores (--quick: 1-2 minutes). Finished stages are "
                    "skipped when run again with the same --out.",
        epilog="examples:\n  openqwen demo                 # full size, into runs/demo\n"
               "  openqwen demo --quick --out runs/demo-quick\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (~1-2 minutes)")
    p.add_argument("--out", default=None, help="output folder (default runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one size of the demo, e.g. --set pretrain_steps=300 (fields: "
                        "see DemoConfig in openqwen/demo.py)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    dc = DemoConfig.make_quick() if args.quick else DemoConfig.full()
    dc.threads = args.threads
    import dataclasses

    import yaml

    names = {f.name for f in dataclasses.fields(DemoConfig)}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in names:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(names))}")
        parsed, current = yaml.safe_load(value), getattr(dc, key)
        for kind in (bool, int, float, str):  # a value of the field's kind (an int is a fine float)
            if isinstance(current, kind):
                if not isinstance(parsed, kind) and not (kind is float and isinstance(parsed, int)) \
                        or (kind is not bool and isinstance(parsed, bool)):
                    what = {bool: "true or false", int: "a whole number", float: "a number", str: "a text"}[kind]
                    raise ValueError(f"--set {key}={value}: {key} takes {what}, e.g. {key}={current}")
                break
        setattr(dc, key, parsed)
    if dc.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {dc.threads}")
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder (it is created when missing)")
    run(out, dc)
    return 0
