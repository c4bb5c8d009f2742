"""Learn a byte-level BPE vocabulary with Qwen's pre-tokenisation, and measure compression.

``train_tokenizer`` runs the ``tokenizers`` library's BPE trainer (Rust, multi-threaded) behind
the same NFC normalisation and split regex as :class:`~openqwen.tokenizer.QwenTokenizer`, so digits
stay single tokens. The learned merges become tiktoken ranks: the 256 bytes first (rank = byte
value), then each new token in the order it was learned; the Qwen special tokens follow directly
after the base ranks. ``vocab_size`` counts everything, specials included, which is what a model's
embedding needs.

``extend_tokenizer`` grows an existing vocabulary (as the report grew cl100k with Chinese): every
old token keeps its rank, new tokens learned from new text are ranked after them.

``compression_stats`` measures bytes per token per source or language, for several tokenizers at
once (the report's Figure 3).
"""

from __future__ import annotations

import heapq
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .bpe import QwenTokenizer
from .vocab import ENDOFTEXT, IM_END, IM_START, QWEN_PATTERN, token_str_to_bytes

# Specials of a newly trained vocabulary: the chat trio plus a few spare ids for later use
# (tool markers, fill-in-the-middle ...), kept small so nano vocabularies don't waste rows.
DEFAULT_NUM_EXTRA = 13


def default_special_tokens(num_extra: int = DEFAULT_NUM_EXTRA) -> list[str]:
    """``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, then ``<|extra_0|>`` .. as the release."""
    if num_extra < 0:
        raise ValueError(f"num_extra (how many <|extra_N|> special tokens) must be 0 or more, got {num_extra}")
    return [ENDOFTEXT, IM_START, IM_END] + [f"<|extra_{i}|>" for i in range(num_extra)]


TextSource = str | os.PathLike


def iter_texts(texts_or_files: TextSource | Iterable[TextSource], text_key: str = "text",
               stats: dict | None = None) -> Iterator[str]:
    """Texts from a mix of strings and paths (``Path`` objects: files or folders, read with the data
    stage's readers: ``.jsonl(.gz)`` documents, ``.txt``/``.md``/``.py`` files). Plain ``str`` items
    are texts. Unreadable lines are counted in ``stats["bad_lines"]``, never dropped silently."""
    from ..data.io import BadLine, list_input_files, read_documents

    if isinstance(texts_or_files, (str, os.PathLike)):
        texts_or_files = [texts_or_files]
    for item in texts_or_files:
        if isinstance(item, os.PathLike):
            for path in list_input_files(item):
                for doc in read_documents(path, text_key=text_key):
                    if isinstance(doc, BadLine):
                        if stats is not None:
                            stats["bad_lines"] = stats.get("bad_lines", 0) + 1
                            stats.setdefault("bad_examples", []).append(f"{doc.file}:{doc.line}: {doc.error}")
                        continue
                    yield doc[text_key]
        elif isinstance(item, str):
            yield item
        else:
            raise TypeError(f"expected texts (str) or paths (pathlib.Path), got {type(item).__name__}")


def train_tokenizer(
    texts_or_files: TextSource | Iterable[TextSource],
    vocab_size: int,
    special_tokens: list[str] | None = None,
    min_frequency: int = 2,
    pattern: str = QWEN_PATTERN,
    max_token_bytes: int | None = 32,
    show_progress: bool = True,
) -> QwenTokenizer:
    """Learn a byte-level BPE of ``vocab_size`` ids in total (base tokens + special tokens).

    ``texts_or_files``: strings (texts) and/or ``pathlib.Path`` objects (files or folders of
    ``.jsonl(.gz)`` documents or plain text). ``special_tokens`` default to
    :func:`default_special_tokens` (16 ids). ``max_token_bytes`` caps token length (long runs of
    ``=`` or spaces otherwise eat the vocabulary). When the corpus is too small to learn that many
    merges the vocabulary comes out smaller, with a warning on stderr.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = list(special_tokens) if special_tokens is not None else default_special_tokens()
    _check_merge_limits(min_frequency, max_token_bytes)
    if len(set(specials)) != len(specials):
        raise ValueError(f"special_tokens has duplicates: {specials}")
    n_base = vocab_size - len(specials)
    if n_base < 256:
        raise ValueError(f"vocab_size {vocab_size} leaves {n_base} ordinary tokens after {len(specials)} specials; "
                         "a byte-level BPE needs at least the 256 bytes (use vocab_size >= "
                         f"{256 + len(specials)})")
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=n_base, min_frequency=min_frequency, show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
        max_token_length=max_token_bytes,
    )
    stats: dict = {}
    n_chars = 0

    def counted() -> Iterator[str]:
        nonlocal n_chars
        for text in iter_texts(texts_or_files, stats=stats):
            n_chars += len(text)
            yield text

    tk.train_from_iterator(counted(), trainer)
    _report_bad_lines(stats)
    if n_chars == 0:
        raise ValueError(_NO_TEXT)
    ranks = ranks_from_hf_merges(tk)
    if len(ranks) < n_base:
        print(f"warning: the corpus gave only {len(ranks) - 256} merges; vocabulary has {len(ranks) + len(specials)} "
              f"ids instead of {vocab_size} (more text or a lower min_frequency gives more)", file=sys.stderr)
    return QwenTokenizer(ranks, {s: len(ranks) + i for i, s in enumerate(specials)}, pattern=pattern)


_NO_TEXT = ("no training text: the inputs hold no text; give files with text in them "
            "(.txt/.md/.py, or .jsonl[.gz] with a 'text' field)")


def _report_bad_lines(stats: dict) -> None:
    if stats.get("bad_lines"):
        print(f"warning: skipped {stats['bad_lines']} unreadable lines, e.g. {stats['bad_examples'][0]}", file=sys.stderr)


def _check_merge_limits(min_frequency: int, max_token_bytes: int | None) -> None:
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be 1 or more (how often a pair must occur to be merged), got {min_frequency}")
    if max_token_bytes is not None and max_token_bytes < 2:
        raise ValueError(f"max_token_bytes must be 2 or more (a merged token has at least 2 bytes), got {max_token_bytes}")


def ranks_from_hf_merges(tokenizer) -> dict[bytes, int]:
    """tiktoken ranks from a trained byte-level ``tokenizers.Tokenizer``: bytes 0..255, then the
    merged tokens in the order they were learned."""
    import json

    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    ranks = {bytes([b]): b for b in range(256)}
    for merge in merges:
        left, right = merge if isinstance(merge, (list, tuple)) else merge.split(" ", 1)
        token = token_str_to_bytes(left + right)
        if token not in ranks:  # the trainer may reach the same bytes by two merges: first one ranks
            ranks[token] = len(ranks)
    return ranks


# ------------------------------------------------------------------------------ extending a vocabulary
def extend_tokenizer(
    base: QwenTokenizer,
    texts_or_files: TextSource | Iterable[TextSource],
    num_new_tokens: int,
    special_tokens: list[str] | None = None,
    min_frequency: int = 2,
    max_token_bytes: int | None = 32,
    show_progress: bool = True,
) -> QwenTokenizer:
    """Add ``num_new_tokens`` BPE tokens learned from new text to ``base``, keeping every base rank.

    Words (pieces of the split regex) start as their encoding by the current vocabulary; the most
    frequent adjacent pair whose bytes are not yet a token becomes the next token, and only the
    words that contain it are re-encoded (rank-based BPE: old ranks still merge first, so the
    result is exactly what the extended tokenizer will produce). Pair counts live in a heap with
    lazy updates, so each merge costs the words it touches, not a pass over all pairs.
    ``special_tokens`` (default: the base's specials, by name) are renumbered after the new ranks.
    Tokens longer than ``max_token_bytes`` are not made.
    """
    import regex
    from tqdm import tqdm

    if num_new_tokens < 1:
        raise ValueError(f"the number of new tokens must be 1 or more, got {num_new_tokens}")
    _check_merge_limits(min_frequency, max_token_bytes)
    split = regex.compile(base.pattern)
    words: Counter[bytes] = Counter()
    stats: dict = {}
    for text in iter_texts(texts_or_files, stats=stats):
        text = base._prepare(text)
        words.update(m.encode("utf-8") for m in split.findall(text))
    _report_bad_lines(stats)
    if not words:
        raise ValueError(_NO_TEXT)
    ranks = dict(base.mergeable_ranks)
    by_id = {r: b for b, r in ranks.items()}
    seqs: list[list[int]] = []
    counts: list[int] = []
    for w, c in words.items():
        seqs.append(base._enc._encode_single_piece(w))
        counts.append(c)
    pair_count: Counter[tuple[int, int]] = Counter()
    where: dict[tuple[int, int], set[int]] = defaultdict(set)
    for wi, seq in enumerate(seqs):
        for p in zip(seq, seq[1:]):
            pair_count[p] += counts[wi]
            where[p].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    added = 0
    next_rank = max(by_id) + 1
    bar = tqdm(total=num_new_tokens, desc="extend vocabulary", disable=not show_progress)
    while added < num_new_tokens and heap:
        neg, pair = heapq.heappop(heap)
        if -neg != pair_count.get(pair, 0) or -neg <= 0:
            continue  # stale entry
        if -neg < min_frequency:
            break
        token = by_id[pair[0]] + by_id[pair[1]]
        if token in ranks or (max_token_bytes and len(token) > max_token_bytes):
            # the bytes are already a token that rank-based BPE does not reach here: skip the pair
            pair_count[pair] = 0
            continue
        rank = next_rank
        next_rank += 1
        ranks[token] = rank
        by_id[rank] = token
        added += 1
        bar.update(1)
        for wi in list(where.get(pair, ())):
            old = seqs[wi]
            new = _rank_bpe(old, by_id, ranks)
            if new == old:
                continue
            c = counts[wi]
            for p in zip(old, old[1:]):
                pair_count[p] -= c
                where[p].discard(wi)
                heapq.heappush(heap, (-pair_count[p], p))
            for p in zip(new, new[1:]):
                pair_count[p] += c
                where[p].add(wi)
                heapq.heappush(heap, (-pair_count[p], p))
            seqs[wi] = new
    bar.close()
    if added < num_new_tokens:
        print(f"warning: only {added} new tokens reach min_frequency {min_frequency}", file=sys.stderr)
    names = special_tokens if special_tokens is not None else list(base.special_tokens)
    return QwenTokenizer(ranks, {s: next_rank + i for i, s in enumerate(names)}, pattern=base.pattern, name=base.name,
                         normalize=base.normalize)


def _rank_bpe(parts: list[int], by_id: dict[int, bytes], ranks: dict[bytes, int]) -> list[int]:
    """Continue rank-based BPE from ``parts``: merge the lowest-ranked adjacent pair until none is left."""
    parts = list(parts)
    while len(parts) > 1:
        best, best_rank = -1, None
        for i in range(len(parts) - 1):
            r = ranks.get(by_id[parts[i]] + by_id[parts[i + 1]])
            if r is not None and (best_rank is None or r < best_rank):
                best, best_rank = i, r
        if best < 0:
            break
        parts[best:best + 2] = [best_rank]
    return parts


# ------------------------------------------------------------------------------ compression statistics
@dataclass
class CompressionRow:
    """Compression of one tokenizer on one group of documents."""

    tokenizer: str
    group: str
    documents: int
    bytes: int
    chars: int
    tokens: int

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / max(self.tokens, 1)

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / max(self.chars, 1)


def group_documents(paths: Iterable[str | os.PathLike], group_by: str = "auto", text_key: str = "text") -> dict[str, list[str]]:
    """Documents grouped for statistics: by the ``source`` (or ``lang``) field of JSONL documents when
    ``group_by`` names it (``auto``: ``lang``, else ``source``, else the file name), else by file."""
    from ..data.io import BadLine, list_input_files, read_documents

    groups: dict[str, list[str]] = defaultdict(list)
    bad = 0
    for path in list_input_files([Path(p) for p in paths]):
        for doc in read_documents(path, text_key=text_key):
            if isinstance(doc, BadLine):
                bad += 1
                continue
            if group_by == "file":
                key = path.name
            elif group_by == "auto":
                key = doc.get("lang") or doc.get("source") or path.name
            else:
                key = doc.get(group_by) or path.name
            groups[str(key)].append(doc[text_key])
    if bad:
        print(f"warning: skipped {bad} unreadable lines", file=sys.stderr)
    return dict(sorted(groups.items()))


def compression_stats(tokenizers: dict[str, QwenTokenizer], groups: dict[str, list[str]]) -> list[CompressionRow]:
    """Bytes per token and tokens per character of each tokenizer on each group (and ``all``)."""
    rows = []
    for name, tok in tokenizers.items():
        total = CompressionRow(name, "all", 0, 0, 0, 0)
        for group, docs in groups.items():
            n_tokens = sum(len(ids) for ids in tok.encode_batch(docs, num_threads=2))
            row = CompressionRow(name, group, len(docs), sum(len(d.encode("utf-8")) for d in docs),
                                 sum(len(d) for d in docs), n_tokens)
            rows.append(row)
            for f in ("documents", "bytes", "chars", "tokens"):
                setattr(total, f, getattr(total, f) + getattr(row, f))
        rows.append(total)
    return rows


def format_table(rows: list[CompressionRow]) -> str:
    """A plain-text table: one line per (group, tokenizer)."""
    head = f"{'group':<20} {'tokenizer':<24} {'docs':>7} {'bytes':>12} {'tokens':>11} {'bytes/tok':>9} {'tok/char':>8}"
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r.group == "all", r.group)):
        lines.append(f"{r.group[:20]:<20} {r.tokenizer[:24]:<24} {r.documents:>7} {r.bytes:>12} {r.tokens:>11} "
                     f"{r.bytes_per_token:>9.3f} {r.tokens_per_char:>8.3f}")
    return "\n".join(lines)


def plot_compression(rows: list[CompressionRow], out: str | os.PathLike, title: str = "Compression (bytes per token)") -> Path:
    """A grouped bar chart like the report's Figure 3: bytes per token per group, one bar per tokenizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({r.group for r in rows}, key=lambda g: (g == "all", g))
    names = list(dict.fromkeys(r.tokenizer for r in rows))
    value = {(r.group, r.tokenizer): r.bytes_per_token for r in rows}
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) * max(1, len(names) / 2)), 4))
    for k, name in enumerate(names):
        xs = [g + (k - (len(names) - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [value.get((grp, name), 0.0) for grp in groups], width, label=name)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel("bytes per token (higher = better compression)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


__all__ = [
    "train_tokenizer", "extend_tokenizer", "default_special_tokens", "iter_texts", "ranks_from_hf_merges",
    "CompressionRow", "group_documents", "compression_stats", "format_table", "plot_compression",
]
