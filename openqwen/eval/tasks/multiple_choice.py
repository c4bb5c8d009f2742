"""Multiple-choice benchmarks (MMLU, C-Eval, CMMLU) scored from next-token log-probabilities.

The model is never asked to *generate* an answer: after the prompt it is asked for one next token,
and the answer is the letter (A-D) whose token is the most likely. This is how the report's
MMLU / C-Eval numbers are produced, and it makes scoring deterministic and cheap.

* base mode: ``k``-shot prompt (the report: MMLU 5-shot, C-Eval 5-shot). The shots are the first
  ``k`` questions of the same subject in the file; they are removed from the evaluated set. (The
  official protocol takes them from the dev split, which the ``mmlu-test`` artifact lacks.)
* chat mode: a 0-shot ChatML conversation (the report's Table 5), letters scored at the first
  position of the assistant's reply.

Scoring goes through :meth:`openqwen.infer.engine.Engine.score`: each question is a prompt with four
one-token continuations, so the question runs once for its four letters, and the leading tokens that
every prompt of a subject shares (header, shots, system prompt) run once and their keys/values are
reused by every batch.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ...tokenizer.chat import chat_prompt_ids

LETTERS = "ABCD"
_CJK = re.compile(r"[\u4e00-\u9fff]")


class TaskDataError(ValueError):
    """A task file that cannot be read as the task expects; the message says what to fix."""


@dataclass
class MCItem:
    """One four-way multiple-choice question."""

    question: str
    choices: list[str]
    answer: str
    """The correct letter, one of A-D."""
    subject: str
    id: str


# ------------------------------------------------------------------------------------- loading
def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(location, row) pairs from a .jsonl, .json (list) or .csv file."""
    name = path.name.removesuffix(".gz")
    with _open_text(path) as f:
        if name.endswith(".csv"):
            return [(f"{path}:{i + 2}", row) for i, row in enumerate(csv.DictReader(f))]
        if name.endswith(".json"):
            data = json.load(f)
            if not isinstance(data, list):
                raise TaskDataError(f"{path}: expected a JSON list of question objects")
            return [(f"{path}[{i}]", row) for i, row in enumerate(data)]
        out = []
        for i, line in enumerate(f):
            if line.strip():
                try:
                    out.append((f"{path}:{i + 1}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise TaskDataError(f"{path}:{i + 1}: not valid JSON ({e})") from None
        return out


def _field(row: dict[str, Any], *names: str) -> Any:
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    return None


def load_mc_file(path: str | Path, subject: str | None = None) -> tuple[list[MCItem], int]:
    """Questions from one file, and the number of header-like junk rows dropped.

    Accepted shapes: the MMLU artifact (``question, answer_a..answer_d, correct_answer, topic``),
    C-Eval CSV (``id, question, A, B, C, D, answer``) and CMMLU CSV (``Question, A, B, C, D,
    Answer``). Without a subject column the subject is the file name (``_val``/``_test``/``_dev``
    suffix removed). Rows that repeat the column names (the MMLU artifact has two) are dropped and
    counted; any other malformed row is an error naming its line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no task file at {path}")
    default_subject = subject or re.sub(r"_(val|test|dev)$", "", path.name.split(".")[0]).replace("_", " ")
    items: list[MCItem] = []
    junk = 0
    for loc, row in _rows(path):
        q = _field(row, "question", "Question")
        choices = [_field(row, f"answer_{c.lower()}", c, c.lower()) for c in LETTERS]
        ans = _field(row, "correct_answer", "answer", "Answer")
        if q is None or any(c is None for c in choices) or ans is None:
            raise TaskDataError(
                f"{loc}: expected keys question, answer_a..answer_d (or A..D) and correct_answer "
                f"(or answer); found {sorted(row)}"
            )
        ans = str(ans).strip().upper()
        if ans not in LETTERS:
            if str(q).strip().lower() == "question":  # a repeated header row
                junk += 1
                continue
            raise TaskDataError(f"{loc}: correct answer {ans!r} is not one of A, B, C, D")
        subj = _field(row, "topic", "subject") or default_subject
        items.append(MCItem(str(q), [str(c) for c in choices], ans, str(subj),
                            str(_field(row, "id") or loc.rsplit("/", 1)[-1])))
    return items, junk


def load_mc(paths: str | Path | Sequence[str | Path]) -> tuple[list[MCItem], int]:
    """Questions from a file, a folder of files (one per subject, C-Eval/CMMLU style) or a list."""
    if isinstance(paths, (str, Path)):
        p = Path(paths)
        paths = sorted(f for f in p.iterdir() if re.search(r"\.(jsonl|json|csv)(\.gz)?$", f.name)) if p.is_dir() else [p]
        if not paths:
            raise TaskDataError(f"{p} holds no .jsonl/.json/.csv task files")
    items, junk = [], 0
    for p in paths:
        its, j = load_mc_file(p)
        items += its
        junk += j
    return items, junk


def split_shots(items: Sequence[MCItem], shots: int) -> tuple[dict[str, list[MCItem]], list[MCItem]]:
    """The first ``shots`` questions of every subject become its examples; the rest are evaluated."""
    by_subject: dict[str, list[MCItem]] = defaultdict(list)
    rest: list[MCItem] = []
    for it in items:
        if len(by_subject[it.subject]) < shots:
            by_subject[it.subject].append(it)
        else:
            rest.append(it)
    return dict(by_subject), rest


def select(items: Sequence[MCItem], limit: int | None = None, per_subject: int | None = None) -> list[MCItem]:
    """A fixed subset: the first ``per_subject`` of each subject, then the first ``limit`` overall."""
    out = list(items)
    if per_subject is not None:
        seen: Counter[str] = Counter()
        keep = []
        for it in out:
            if seen[it.subject] < per_subject:
                keep.append(it)
                seen[it.subject] += 1
        out = keep
    return out[:limit] if limit is not None else out


# ------------------------------------------------------------------------------------- prompts
def is_chinese(items: Sequence[MCItem]) -> bool:
    return any(_CJK.search(it.question) for it in items[:20])


def format_question(it: MCItem, zh: bool, answer: bool) -> str:
    lines = [it.question.strip()] + [f"{L}. {c}" for L, c in zip(LETTERS, it.choices)]
    cue = "答案：" if zh else "Answer:"
    tail = (f"{cue}{it.answer}" if zh else f"{cue} {it.answer}") if answer else cue
    return "\n".join(lines) + "\n" + tail


def header(subject: str, zh: bool) -> str:
    if zh:
        return f"以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n"
    return f"The following are multiple choice questions (with answers) about {subject}.\n\n"


def base_prompt_parts(it: MCItem, shots: Sequence[MCItem], zh: bool) -> tuple[str, str]:
    """(shared part, question part) of a k-shot base-model prompt."""
    shared = header(it.subject, zh) + "".join(format_question(s, zh, True) + "\n\n" for s in shots)
    return shared, format_question(it, zh, False)


def chat_messages(it: MCItem, shots: Sequence[MCItem], zh: bool, system: str | None = None) -> list[dict[str, str]]:
    """A 0-shot (or k-shot, examples inline) ChatML question asking for the letter only, after the
    ``system`` message when one is given."""
    ask = ("请直接给出正确答案的选项字母。" if zh
           else "Answer with the letter of the correct option only.")
    shared = header(it.subject, zh) + "".join(format_question(s, zh, True) + "\n\n" for s in shots)
    q = "\n".join([it.question.strip()] + [f"{L}. {c}" for L, c in zip(LETTERS, it.choices)])
    user = [{"role": "user", "content": f"{shared}{q}\n\n{ask}"}]
    return user if system is None else [{"role": "system", "content": system}] + user


def letter_token_ids(tokenizer: Any, leading_space: bool) -> list[int]:
    """The single token of each letter (" A" after "Answer:", "A" at a fresh position)."""
    ids = []
    for L in LETTERS:
        toks = tokenizer.encode((" " if leading_space else "") + L)
        if len(toks) != 1:
            raise ValueError(f"the tokenizer splits {L!r} into {len(toks)} tokens; letter scoring needs one")
        ids.append(toks[0])
    return ids


# ------------------------------------------------------------------------------------- scoring
def letter_logprobs(engine: Any, prompts: Sequence[Sequence[int]], letter_ids: Sequence[int],
                    batch_size: int = 8, progress: Any = None) -> torch.Tensor:
    """log p(letter | prompt) [N, len(letter_ids)]: each letter as the next token after each prompt,
    ``batch_size`` prompts per forward."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[start:start + batch_size]]
        results = engine.score([p for p in chunk for _ in letter_ids], [[t] for _ in chunk for t in letter_ids],
                               batch_size=batch_size)
        out.append(torch.tensor([r.total for r in results]).view(len(chunk), len(letter_ids)))
        if progress is not None:
            progress.update(len(chunk))
    return torch.cat(out) if out else torch.empty(0, len(letter_ids))


def evaluate_mc(engine: Any, items: Sequence[MCItem], shots: int, mode: str = "base",
                batch_size: int = 8, examples: dict[str, list[MCItem]] | None = None,
                progress: bool = False, system: str | None = None) -> dict[str, Any]:
    """Accuracy of ``engine``'s model (an :class:`openqwen.infer.engine.Engine`) on ``items``;
    ``examples`` maps subject -> shot questions; ``system``: the chat prompts' system message (None:
    the ChatML renderer's default)."""
    if mode not in ("base", "chat"):
        raise ValueError(f"mode must be 'base' or 'chat', got {mode!r}")
    tokenizer = engine.tokenizer
    examples = examples or {}
    zh = is_chinese(items)
    letters = letter_token_ids(tokenizer, leading_space=(mode == "base" and not zh))
    by_subject: dict[str, list[MCItem]] = defaultdict(list)
    for it in items:
        by_subject[it.subject].append(it)
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=len(items), desc="multiple choice", unit="q")
    details, per_subject = [], {}
    for subject, its in by_subject.items():
        ex = examples.get(subject, [])[:shots]
        if mode == "base":
            prompts = []
            for it in its:
                shared, question = base_prompt_parts(it, ex, zh)
                # encoded separately so every prompt of the subject shares the shot tokens exactly
                prompts.append(tokenizer.encode(shared) + tokenizer.encode(question))
        else:
            # the one chat-prompt path: shots that do not fit the engine's context (less the answer
            # letter) are dropped oldest first, as the chat CLI and the server drop old turns
            prompts = [chat_prompt_ids(tokenizer, chat_messages(it, ex, zh, system), engine.max_seq_len - 1)
                       for it in its]
        scores = letter_logprobs(engine, prompts, letters, batch_size, bar)
        preds = [LETTERS[i] for i in scores.argmax(-1).tolist()]
        correct = sum(p == it.answer for p, it in zip(preds, its))
        per_subject[subject] = {"accuracy": correct / len(its), "correct": correct, "total": len(its)}
        for it, p, s in zip(its, preds, scores.tolist()):
            details.append({"id": it.id, "subject": subject, "answer": it.answer, "prediction": p,
                            "correct": p == it.answer, "letter_logprobs": [round(x, 4) for x in s]})
    if bar is not None:
        bar.close()
    n = len(details)
    correct = sum(d["correct"] for d in details)
    return {
        "metrics": {
            "accuracy": correct / n if n else 0.0,
            "accuracy_macro": sum(v["accuracy"] for v in per_subject.values()) / len(per_subject) if per_subject else 0.0,
        },
        "counts": {"total": n, "correct": correct, "subjects": len(per_subject)},
        "breakdown": dict(sorted(per_subject.items())),
        "details": details,
    }
