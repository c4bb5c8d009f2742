"""MMLU through lm-eval (EleutherAI's harness, its Hugging Face backend) beside ``openqwen eval`` on the
same questions and the same model folder: accuracy of each, per-question agreement, wall-time ratio.

lm-eval reads its data from the hub by default; here a task YAML points it at a local JSON file
(``dataset_path: json``). Both harnesses score the four letters " A".." D" by log-likelihood after
the same prompt (the header "The following are multiple choice questions (with answers) about
SUBJECT.", the question, the lettered choices, "Answer:"), 0-shot, so their predictions should agree
question for question; timings are reported as a ratio measured in the same run.

    .venv/bin/python benchmarks/mmlu_lm_eval_peer.py --model runs/demo/pretrain --per-subject 2 \\
        --out runs/specialist/mmlu-peer.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from openqwen.artifacts import artifact_path
from openqwen.eval.harness import EvalConfig, run_eval
from openqwen.eval.tasks import multiple_choice as mc

TASK_YAML = """task: openqwen_mmlu_subset
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{{{target}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a Hugging Face layout model folder (both harnesses load it)")
    ap.add_argument("--per-subject", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    items, _ = mc.load_mc(artifact_path("mmlu-test"))
    subset = mc.select(mc.split_shots(items, 0)[1], None, args.per_subject)
    tmp = Path(tempfile.mkdtemp(prefix="mmlu-peer-"))
    ours_file, peer_file = tmp / "subset.jsonl", tmp / "subset-lm-eval.jsonl"
    with ours_file.open("w") as f, peer_file.open("w") as g:
        for it in subset:
            f.write(json.dumps({"question": it.question, **{f"answer_{L.lower()}": c for L, c in zip(mc.LETTERS, it.choices)},
                                "correct_answer": it.answer, "topic": it.subject}) + "\n")
            shared, question = mc.base_prompt_parts(it, [], False)
            g.write(json.dumps({"prompt": shared + question, "target": mc.LETTERS.index(it.answer)}) + "\n")
    (tmp / "task.yaml").write_text(TASK_YAML.format(path=peer_file))

    t0 = time.perf_counter()
    ours = run_eval(EvalConfig(model=args.model, task="mc", data=str(ours_file), shots=0, mode="base",
                               batch_size=args.batch_size, progress=False))
    ours_s = time.perf_counter() - t0

    import lm_eval  # noqa: PLC0415
    from lm_eval.tasks import TaskManager  # noqa: PLC0415

    t0 = time.perf_counter()
    peer = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={args.model},dtype=float32",
                                   tasks=["openqwen_mmlu_subset"], num_fewshot=0, batch_size=args.batch_size,
                                   device="cpu", task_manager=TaskManager(include_path=str(tmp)), log_samples=True)
    peer_s = time.perf_counter() - t0
    samples = peer["samples"]["openqwen_mmlu_subset"]
    peer_pred = {s["doc_id"]: mc.LETTERS[max(range(4), key=lambda k: s["resps"][k][0][0])] for s in samples}
    ours_pred = [d["prediction"] for d in ours["details"]]
    agree = sum(peer_pred[i] == p for i, p in enumerate(ours_pred))
    summary = {"questions": len(subset), "openqwen_accuracy": ours["metrics"]["accuracy"],
               "lm_eval_accuracy": peer["results"]["openqwen_mmlu_subset"]["acc,none"],
               "predictions_agree": agree, "openqwen_s": round(ours_s, 1), "lm_eval_s": round(peer_s, 1),
               "lm_eval_time_over_openqwen": round(peer_s / ours_s, 2)}
    print(json.dumps(summary))
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
