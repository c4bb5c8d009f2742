"""CLI verbs ``openqwen pretrain`` and ``openqwen sft`` (one loop behind both)."""

from __future__ import annotations

import argparse
import json
from typing import Any

EXAMPLES_PRETRAIN = """examples:
  openqwen pretrain --config nano-pretrain.yaml --data.path runs/data/packed --data.tokenizer runs/tok
  openqwen pretrain --config nano-pretrain.yaml --data.path runs/data/packed --optim.lr 1e-3 --train.max_steps 200
  torchrun --nproc_per_node 2 -m openqwen.cli pretrain --config nano-pretrain.yaml --data.path D --train.parallel fsdp

Any config field can be overridden as --SECTION.KEY VALUE (sections: model, data, optim, train, sft, lora);
--print-config shows the resolved config. A run resumes from the newest checkpoint in train.out_dir."""

EXAMPLES_SFT = """examples:
  openqwen sft --config nano-sft.yaml --model.init_from runs/pretrain --sft.train_files builtin
  openqwen sft --config sft.yaml --model.init_from runs/pretrain --sft.train_files chats.jsonl --lora.rank 8

Chat files: JSONL with OpenAI "messages" or the release's "conversations" per line."""


class _OverrideParser(argparse.ArgumentParser):
    """Collects ``--section.key value`` pairs into ``args.overrides`` (they are config fields, not flags)."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        args = list(args or [])
        rest, overrides, i = [], [], 0
        while i < len(args):
            a = args[i]
            if a.startswith("--") and "." in a.split("=", 1)[0]:
                take = 1 if "=" in a else 2
                overrides += args[i : i + take]
                i += take
            else:
                rest.append(a)
                i += 1
        ns, unknown = super().parse_known_args(rest, namespace)
        ns.overrides = overrides
        return ns, unknown


def add_parser(subparsers: Any) -> None:
    for verb, helptext, examples, func in (
        ("pretrain", "pretrain a Qwen on packed token shards", EXAMPLES_PRETRAIN, _pretrain),
        ("sft", "supervised fine-tuning on chat data (loss on assistant turns only)", EXAMPLES_SFT, _sft),
    ):
        p = subparsers.add_parser(verb, help=helptext, description=helptext, epilog=examples,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        p.__class__ = _OverrideParser
        p.add_argument("--config", help="recipe YAML (a path, or the name of a bundled recipe: "
                       "nano-pretrain.yaml, nano-sft.yaml, pretrain.yaml, sft.yaml)")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        p.set_defaults(func=func)


def _load(args):
    from .config import TrainConfig

    return TrainConfig.load(args.config, args.overrides)  # bad input: one line from the openqwen dispatcher


def _run(args, module) -> int:
    cfg = _load(args)
    if args.print_config:
        print(cfg.to_yaml())
        return 0
    summary = module.run(cfg)  # ValueError / FileNotFoundError / FloatingPointError: one line, exit 2
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
        print(f"model written to {summary['model_dir']}")
    return 0


def _pretrain(args) -> int:
    from . import pretrain

    return _run(args, pretrain)


def _sft(args) -> int:
    from . import sft

    return _run(args, sft)
