"""Helpers shared by the tokenizer tests: a multilingual sample and a small slice of a vocabulary."""

from __future__ import annotations

import random
import sysconfig
import unicodedata
from pathlib import Path

from openqwen.tokenizer import QwenTokenizer

# ------------------------------------------------------------------------------ a multilingual sample
CHINESE = (
    "通义千问是阿里云研发的大语言模型。我们在三万亿个词元上进行了预训练，覆盖中文、英文和代码。"
    "模型采用旋转位置编码和SwiGLU激活函数。今天天气很好，我们去公园散步吧！数学题：三加四等于七。"
    "《红楼梦》是中国古典小说的巅峰之作；“你好，世界”——这是程序员的第一行代码。"
)
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇨🇳", "🇺🇸", "❤️", "🧑🏿‍🚀", "🤖", "🎉", "✅", "⚡", "🏳️‍🌈", "\U0001faf6"]
SCRIPTS = [
    "Привет, как дела? Съешь же ещё этих мягких французских булок.",
    "مرحبا بالعالم، هذه جملة عربية للاختبار.",
    "नमस्ते दुनिया, यह एक परीक्षण वाक्य है।",
    "こんにちは世界、カタカナとひらがなの文。",
    "안녕하세요 세계, 한국어 문장입니다.",
    "สวัสดีชาวโลก นี่คือประโยคภาษาไทย",
    "Γειά σου Κόσμε, αυτή είναι μια πρόταση.",
    "שלום עולם, זה משפט בעברית.",
    "Ünïcödé ñoño façade café naïve Åsa Øre",
    "ℌ𝔢𝔩𝔩𝔬 ① ② ⅻ ½ ¾ ٣٤٥ ۶۷ ߁߂ 𝟘𝟙𝟚 ²³",
]
WORDS = ("the model learns a vocabulary of byte pairs from text and code while numbers are split into "
         "single digits so that arithmetic stays regular I'm you're we'll they'd it's DON'T WE'VE").split()


def _random_unicode(rng: random.Random, n: int) -> str:
    out = []
    while len(out) < n:
        cp = rng.choice([rng.randrange(0x20, 0x250), rng.randrange(0x370, 0x2000), rng.randrange(0x2000, 0x3000),
                         rng.randrange(0x3000, 0xA000), rng.randrange(0xAC00, 0xD7A4), rng.randrange(0x1F300, 0x1FAFF)])
        ch = chr(cp)
        if unicodedata.category(ch) not in ("Cs", "Cn", "Co"):
            out.append(ch)
    return "".join(out)


def multilingual_sample(seed: int = 0, n_generated: int = 1500, code_bytes: int = 1_500_000) -> list[str]:
    """Real code (the Python standard library) plus generated English, Chinese, digit runs, emoji,
    whitespace runs, mixed scripts, decomposed (NFD) text and random code points."""
    rng = random.Random(seed)
    docs: list[str] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.append(text)
        total += len(text)
        if total > code_bytes:
            break
    ws = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\t\t\n", "    ", "\u3000", "\xa0"]
    for _ in range(n_generated):
        parts = []
        for _ in range(rng.randint(5, 40)):
            kind = rng.random()
            if kind < 0.25:
                parts.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))))
            elif kind < 0.45:
                start = rng.randrange(len(CHINESE) - 30)
                parts.append(CHINESE[start:start + rng.randint(1, 30)])
            elif kind < 0.55:
                parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 60))))
            elif kind < 0.62:
                parts.append("".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 6))))
            elif kind < 0.72:
                parts.append(rng.choice(SCRIPTS))
            elif kind < 0.80:
                parts.append(unicodedata.normalize("NFD", rng.choice(SCRIPTS + [CHINESE[:20], "é à ñ ü Å"])))
            elif kind < 0.88:
                parts.append(_random_unicode(rng, rng.randint(1, 20)))
            else:
                parts.append(f"{rng.randint(-10**9, 10**9)}.{rng.randint(0, 999)}e{rng.randint(-9, 9)} "
                             f"x={rng.random():.6f}; 3.14%; $1,234,567; 2023-09-28T12:00:00Z")
            parts.append(rng.choice(ws) if rng.random() < 0.6 else "".join(rng.choice(ws) for _ in range(rng.randint(2, 8))))
        docs.append("".join(parts))
    return docs


def small_copy(tok: QwenTokenizer, n: int = 5000) -> QwenTokenizer:
    """The first n ranks of a vocabulary (a valid BPE: every token's parts rank lower) with the
    Qwen specials right after; saves quickly."""
    ranks = {b: r for b, r in tok.mergeable_ranks.items() if r < n}
    specials = {s: n + i for i, s in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])}
    return QwenTokenizer(ranks, specials)
