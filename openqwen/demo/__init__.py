"""``openqwen demo``: the whole Qwen family at nano scale in one command (``make demo``).

built-in corpus -> data pipeline (normalise, dedup, language id, filters, decontamination, mixing) ->
tokenizer -> pretrained base model -> long-context check (Table 3's shape) -> SFT chat model ->
reward model -> PPO chat model -> Code-Qwen (continued pretraining, then code chat SFT) -> Math-Qwen ->
evaluation of every model on every held-out task that fits it -> ``report.html`` / ``report.md``.

One dial, ``--minutes`` (default 15), sizes everything: the demo times the pretraining step on this
machine, gives each training stage its share of the budget (:mod:`.config`) and prints the plan and
its estimate before it trains. Finished stages are recorded in ``OUT/stages.json`` and skipped when
the demo is run again with the same ``--out``; a stage cut off mid-way resumes from its checkpoint.

Modules: :mod:`.config` (sizes, the dial), :mod:`.stages` (each stage: one call into the package),
:mod:`.scores` (the held-out metrics), :mod:`.report` (the report), :mod:`.runner` (order, budget,
resume).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .config import DemoConfig

__all__ = ["DemoConfig", "run", "add_parser"]


def run(out: str | Path, dc: DemoConfig) -> dict[str, Any]:
    """Run the demo into ``out`` (see :func:`openqwen.demo.runner.run`)."""
    from .runner import run as _run

    return _run(out, dc)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "demo", help="the whole Qwen family at nano scale: data -> base -> chat -> RM -> PPO -> code -> math -> report",
        description="Build the demo corpus, clean it, train a tokenizer, pretrain a nano Qwen, check its long-context "
                    "perplexity, fine-tune chat, reward, PPO, Code-Qwen and Math-Qwen models from it, evaluate every "
                    "model on held-out tasks and write OUT/report.html. The budget (--minutes, default 15 on 2 CPU "
                    "cores) sets the steps of every stage after a timing of this machine; the plan and its estimate "
                    "are printed first. Finished stages are skipped when run again with the same --out.",
        epilog="examples:\n"
               "  openqwen demo                          # 15 minutes, into runs/demo\n"
               "  openqwen demo --minutes 60 --out runs/demo60   # 4x the steps of every stage\n"
               "  openqwen demo --quick --out runs/demo-quick    # every stage at a tiny size (smoke run)\n"
               "  openqwen demo --set max_steps.ppo=40          # cap one stage\n"
               "  openqwen chat --model runs/demo/sft           # talk to a result\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=15.0,
                   help="the budget of the whole demo in minutes, install excluded (default 15); bigger budgets "
                        "train every stage for more steps, and past 2 hours a bigger model (nano-10m; nano-50m past 8)")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run (every stage, none learns much)")
    p.add_argument("--out", default=None, help="output folder (default runs/demo, or runs/demo-quick with --quick)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="change one size, e.g. --set eval_items=70 or --set max_steps.sft=300 (fields: "
                        "DemoConfig in openqwen/demo/config.py)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    import yaml

    dc = DemoConfig.make_quick() if args.quick else DemoConfig.for_minutes(args.minutes)
    dc.threads = args.threads
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set max_steps.sft=300")
        dc.set_field(key, yaml.safe_load(value))
    if dc.threads < 1:
        raise ValueError(f"--threads must be at least 1, got {dc.threads}")
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; pass a folder (it is created when missing)")
    run(out, dc)
    return 0
