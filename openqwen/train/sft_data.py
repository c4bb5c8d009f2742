"""Chat data for SFT: reading, the ChatML loss mask, packing, and the built-in synthetic chat set.

Formats (JSONL, one conversation per line; ``.jsonl.gz`` works too):

- OpenAI ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}``
- the release's ``conversations``: ``{"conversations": [{"from": "user"|"assistant", "value": "..."}],
  "system": "optional per-sample system prompt"}`` (``human``/``gpt`` are accepted as role names).

A sample without a system message gets the configured default system prompt; a sample that has one
keeps its own (the release fixed the system prompt in fine-tuning; here each sample may differ).

Loss covers exactly the tokens the tokenizer marks as assistant output (the content of each
assistant turn and its closing ``<|im_end|>``), never system/user turns or the ChatML scaffolding;
``sft.mask_prompt: false`` puts every token of the conversation in the loss instead.

Packing (the default): conversations are shuffled with a fixed seed and packed first-fit into rows
of ``seq_len`` tokens. Each conversation gets its own ``segment_id`` and positions that restart at 0,
so attention stays inside it and it sees exactly what it would see alone; packing wastes almost no
compute on padding, whereas one-conversation-per-row padding wastes most of each row for short chats
(our synthetic chats are ~40 tokens in rows of 256). ``pack=False`` pads one conversation per row.
"""

from __future__ import annotations

import gzip
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..data.synthetic_instructions import instructions
from .batches import IGNORE_INDEX

ROLE_ALIASES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system",
                "bot": "assistant"}


class ChatDataError(ValueError):
    """A chat sample that cannot be used; the message names the file and line."""


def normalise_sample(obj: Any, where: str = "sample") -> list[dict[str, str]]:
    """One JSON object (either format) -> OpenAI-style messages; raises ChatDataError when malformed."""
    if not isinstance(obj, dict):
        raise ChatDataError(f"{where}: expected a JSON object with 'messages' or 'conversations'")
    if "messages" in obj:
        turns, role_key, text_key = obj["messages"], "role", "content"
    elif "conversations" in obj:
        turns, role_key, text_key = obj["conversations"], "from", "value"
    else:
        raise ChatDataError(f"{where}: has neither 'messages' (OpenAI format) nor 'conversations' (release format)")
    if not isinstance(turns, list) or not turns:
        raise ChatDataError(f"{where}: the conversation is empty")
    messages = []
    if isinstance(obj.get("system"), str) and obj["system"]:
        messages.append({"role": "system", "content": obj["system"]})
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or text_key not in turn:
            raise ChatDataError(f"{where}: turn {k} needs '{role_key}' and '{text_key}'")
        role = ROLE_ALIASES.get(str(turn[role_key]).lower())
        if role is None:
            raise ChatDataError(f"{where}: turn {k} has unknown role {turn[role_key]!r} "
                                f"(use system, user or assistant)")
        if not isinstance(turn[text_key], str):
            raise ChatDataError(f"{where}: turn {k} content must be a string")
        if role == "system" and messages:
            raise ChatDataError(f"{where}: a system message may only come first")
        messages.append({"role": role, "content": turn[text_key]})
    if not any(m["role"] == "assistant" for m in messages):
        raise ChatDataError(f"{where}: no assistant turn, so nothing to learn from")
    return messages


def read_chat_jsonl(path: str | Path) -> list[list[dict[str, str]]]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no chat data at {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ChatDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            out.append(normalise_sample(obj, f"{path}:{n}"))
    if not out:
        raise ChatDataError(f"{path}: no conversations")
    return out


def with_system(messages: list[dict[str, str]], system_prompt: str) -> list[dict[str, str]]:
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}] + messages


@dataclass
class EncodedChat:
    ids: list[int]
    mask: list[bool]


def encode_chats(conversations: Iterable[list[dict[str, str]]], tokenizer: Any, system_prompt: str,
                 max_len: int, mask_prompt: bool = True) -> tuple[list[EncodedChat], int]:
    """ChatML ids + loss masks; conversations longer than ``max_len`` are dropped (and counted).

    ``mask_prompt`` (the report's SFT): the loss covers the assistant tokens only; False: every token
    of the conversation, system and user turns included (the comparison the report draws for
    Math-Qwen, whose masking it says speeds convergence)."""
    out, dropped = [], 0
    for messages in conversations:
        ids, mask = tokenizer.apply_chat_template(with_system(messages, system_prompt),
                                                  add_generation_prompt=False, return_assistant_mask=True)
        if len(ids) != len(mask):
            raise ValueError("the tokenizer returned an assistant mask of a different length than the ids")
        if not mask_prompt:
            mask = [True] * len(ids)
        if len(ids) > max_len:
            dropped += 1
            continue
        out.append(EncodedChat(list(ids), list(mask)))
    return out, dropped


class ChatRows:
    """SFT rows of ``seq_len`` tokens: ``input_ids``, ``labels`` (IGNORE_INDEX off the assistant
    tokens), ``positions`` and ``segment_ids`` (0 marks padding)."""

    def __init__(self, chats: list[EncodedChat], seq_len: int, pad_id: int, pack: bool = True, seed: int = 0) -> None:
        if not chats:
            raise ValueError("no conversations fit the sequence length")
        self.seq_len = seq_len
        order = list(range(len(chats)))
        random.Random(seed).shuffle(order)
        bins: list[list[int]] = []
        if pack:
            free: list[int] = []
            for i in order:  # first fit: the first row with room takes the conversation
                n = len(chats[i].ids)
                for b, room in enumerate(free):
                    if room >= n:
                        bins[b].append(i)
                        free[b] -= n
                        break
                else:
                    bins.append([i])
                    free.append(seq_len - n)
        else:
            bins = [[i] for i in order]
        self.rows = []
        for members in bins:
            ids = np.full(seq_len, pad_id, np.int64)
            labels = np.full(seq_len, IGNORE_INDEX, np.int64)
            pos = np.zeros(seq_len, np.int64)
            seg = np.zeros(seq_len, np.int64)
            at = 0
            for s, i in enumerate(members, 1):
                c = chats[i]
                n = len(c.ids)
                ids[at : at + n] = c.ids
                labels[at : at + n] = np.where(np.asarray(c.mask, bool), np.asarray(c.ids), IGNORE_INDEX)
                # nothing inside the conversation predicts its first token: the previous conversation's
                # last token must not be trained to guess it
                labels[at] = IGNORE_INDEX
                pos[at : at + n] = np.arange(n)
                seg[at : at + n] = s
                at += n
            pos[at:] = np.arange(seq_len - at)  # padding: its own segment 0, never in the loss
            self.rows.append({"input_ids": ids, "labels": labels, "positions": pos, "segment_ids": seg})
        self.num_conversations = len(chats)
        self.fill = sum(int((r["segment_ids"] > 0).sum()) for r in self.rows) / (len(self.rows) * seq_len)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return self.rows[int(i)]


# ------------------------------------------------------------------ the built-in synthetic chat set
CORPUS_FACTS = [
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ("Who wrote Macbeth?", "William Shakespeare wrote Macbeth."),
    ("Who is the Prince of Denmark in Shakespeare?", "Hamlet is the Prince of Denmark."),
    ("Which play has Romeo and Juliet in it?", "Romeo and Juliet, a play by William Shakespeare."),
    ("What kind of poems are in the Chinese part of the corpus?", "Tang poems (唐诗)."),
    ("What programming language is the code in the corpus?", "Python: the code is the Python standard library."),
    ("What does the Python keyword def do?", "def defines a function in Python."),
    ("How do you print hello in Python?", "print(\"hello\")"),
    ("What is 唐诗?", "唐诗 are poems of the Tang dynasty."),
    ("Translate 你好 into English.", "你好 means hello."),
    ("What does import do in Python?", "import loads a module so its names can be used."),
    ("Who is Juliet's love?", "Romeo is Juliet's love."),
]

SYSTEM_PROMPTS = ["You are a helpful assistant.", "You are a concise assistant.",
                  "You are a helpful assistant. Answer briefly."]


def arithmetic_chat(a: int, b: int, op: str) -> tuple[str, str, int]:
    value = a + b if op == "+" else a - b
    return f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}", value


def arithmetic_pairs(seed: int, n: int, max_operand: int = 99) -> list[tuple[int, int, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        op = rng.choice("+-")
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if op == "-" and b > a:
            a, b = b, a
        out.append((a, b, op))
    return out


def heldout_arithmetic(n: int = 100, seed: int = 10_001) -> list[tuple[str, int]]:
    """Held-out arithmetic questions (question, answer); none of them is in the built-in SFT set."""
    return [(q, v) for q, _, v in (arithmetic_chat(*p) for p in arithmetic_pairs(seed, n))]


def builtin_chat_set(n: int = 2000, seed: int = 0, arithmetic: float = 0.6,
                     instructions_share: float = 0.3) -> list[list[dict[str, str]]]:
    """Synthetic chats: a share ``arithmetic`` of 2-digit sums and differences, ``instructions_share``
    of instructions of :mod:`openqwen.data.synthetic_instructions` (its train split), the rest
    questions about the demo corpus; some samples carry their own system prompt. Held-out arithmetic
    questions are excluded."""
    if not (0 <= arithmetic and 0 <= instructions_share and arithmetic + instructions_share <= 1):
        raise ValueError(f"shares must be >= 0 and sum to at most 1, got arithmetic {arithmetic}, "
                         f"instructions {instructions_share}")
    rng = random.Random(seed)
    held = {q for q, _ in heldout_arithmetic()}
    tasks = iter(instructions("train", n, seed))  # n: at least as many as any share draws
    out: list[list[dict[str, str]]] = []
    while len(out) < n:
        r = rng.random()
        if r < arithmetic:
            a, b, op = arithmetic_pairs(rng.randrange(1 << 30), 1)[0]
            q, ans, _ = arithmetic_chat(a, b, op)
            if q in held:
                continue
        elif r < arithmetic + instructions_share:
            item = next(tasks)
            q, ans = item.question, item.answer
        else:
            q, ans = rng.choice(CORPUS_FACTS)
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        out.append(messages)
    return out


def write_chat_jsonl(conversations: list[list[dict[str, str]]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for m in conversations:
            f.write(json.dumps({"messages": m}, ensure_ascii=False) + "\n")
    return path
