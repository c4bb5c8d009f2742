"""Perplexity of text at given context lengths (the report's Table 3 is this measurement on arXiv).

The token stream of the text is cut into consecutive, non-overlapping windows of ``L`` tokens. In
each window the model predicts tokens 2..L from their prefixes; perplexity is ``exp`` of the mean
negative log-likelihood over all predicted tokens of all windows. Comparing several ``L`` on the
same text shows whether a model keeps using longer context (perplexity falls) or breaks past its
training length (perplexity explodes).

Each window is one row of :meth:`openqwen.infer.engine.Engine.score` (prompt: its first token,
continuation: the rest), whose output head runs in chunks of positions, so a 16K window of a
152K-vocabulary model needs 0.6 GB of logits at a time, not 10 GB. The engine's ``max_seq_len`` must
hold the longest window.

Windows are chunked (non-overlapping), as the report's Table 3 measures: every token of a window of L
is predicted from the tokens of that window before it, so the mean covers positions 0..L-1 alike; a
model that breaks past its training length S shows it as soon as L > S. Long-context options
(``openqwen eval --task perplexity --lengths 1024,2048,4096 --rope-scaling ntk --logn --window-sizes
...``) are the model's own settings; :func:`markdown_table` and :func:`plot_curves` lay several runs side
by side (docs/long-context.md).

:func:`sliding_perplexity` measures a model *at* a context length instead: the same tokens at every L,
each predicted from at least L - stride tokens (windows sliding by ``stride``, each scoring its last
``stride`` tokens), as the context-extension literature does; it costs L / stride times as much.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any, Sequence

from .multiple_choice import TaskDataError


def read_texts(path: str | Path) -> list[str]:
    """Documents from a ``.txt``/``.md`` file, a ``.jsonl`` (``text`` field), a ``.zip`` of text files
    (its .txt/.md members when it has any, e.g. the plays of the shakespeare artifact), or a folder of
    any of these (sorted by name)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no text at {path}")
    if path.is_dir():
        return [t for f in sorted(path.iterdir()) if f.is_file() for t in read_texts(f)]
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as z:
            names = [n for n in sorted(z.namelist()) if not n.endswith("/")]
            prose = [n for n in names if n.endswith((".txt", ".md"))]
            return [z.read(n).decode("utf-8", errors="replace") for n in (prose or names)]
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(io.open(path, encoding="utf-8")):
            if line.strip():
                row = json.loads(line)
                if "text" not in row:
                    raise TaskDataError(f"{path}:{i + 1}: perplexity .jsonl rows need a 'text' field")
                out.append(row["text"])
        return out
    return [path.read_text(encoding="utf-8", errors="replace")]


def perplexity(engine: Any, token_ids: Sequence[int], context_length: int, max_windows: int | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Perplexity of ``engine``'s model (an :class:`openqwen.infer.engine.Engine`) over non-overlapping
    windows of ``context_length`` tokens of ``token_ids``."""
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2, got {context_length}")
    n_windows = len(token_ids) // context_length
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    if n_windows == 0:
        raise ValueError(f"the text has {len(token_ids)} tokens, fewer than one window of {context_length}")
    ids = [int(t) for t in token_ids[: n_windows * context_length]]
    it = range(n_windows)
    if progress:
        from tqdm import tqdm  # noqa: PLC0415

        it = tqdm(it, desc=f"perplexity @{context_length}", unit="window")
    nll, count = 0.0, 0
    for w in it:
        window = ids[w * context_length : (w + 1) * context_length]
        (scored,) = engine.score([window[:1]], [window[1:]])
        nll -= scored.total
        count += scored.num_tokens
    mean = nll / count
    return {"perplexity": math.exp(mean), "mean_nll": mean, "tokens": count, "windows": n_windows,
            "context_length": context_length}


def sliding_perplexity(engine: Any, token_ids: Sequence[int], context_length: int, stride: int, start: int,
                       stop: int | None = None) -> dict[str, Any]:
    """Perplexity of tokens ``start .. stop - 1`` of ``token_ids``, each predicted with at least
    ``context_length - stride`` tokens before it (sliding windows, as context-extension papers measure
    "perplexity at context L"): windows of ``context_length`` tokens ending at ``start + stride``,
    ``start + 2 stride`` ..., each scoring only its last ``stride`` tokens. So every L scores the same
    tokens, and a model is judged at the context length, not averaged over positions 0..L-1 as the
    chunked :func:`perplexity` does. Needs ``start >= context_length - stride``."""
    stop = len(token_ids) if stop is None else stop
    if not 0 < stride <= context_length - 1:
        raise ValueError(f"stride must be between 1 and context_length - 1, got {stride} for {context_length}")
    if start < context_length - stride:
        raise ValueError(f"start {start} leaves the first window short: use start >= {context_length - stride}")
    if stop > len(token_ids) or stop - start < stride:
        raise ValueError(f"tokens {start}..{stop} do not hold one stride of {stride} within the text")
    nll, count = 0.0, 0
    for end in range(start + stride, stop + 1, stride):
        window = [int(t) for t in token_ids[end - context_length : end]]
        (scored,) = engine.score([window[: context_length - stride]], [window[context_length - stride :]])
        nll -= scored.total
        count += scored.num_tokens
    mean = nll / count
    return {"perplexity": math.exp(mean), "mean_nll": mean, "tokens": count, "context_length": context_length,
            "stride": stride, "start": start}


def markdown_table(curves: dict[str, dict[int, float]]) -> str:
    """One row per option set (name -> {length: perplexity}), one column per length."""
    lengths = sorted({L for row in curves.values() for L in row})
    lines = ["| options | " + " | ".join(str(L) for L in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for name, row in curves.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[L]:.3f}" if L in row else "" for L in lengths) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict[str, dict[int, float]], path: str | Path, training_length: int | None = None,
                title: str = "perplexity by context length") -> Path:
    """Perplexity against context length (log-log), one line per option set; a dotted line at S."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, row in curves.items():
        xs = sorted(row)
        ax.plot(xs, [row[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if training_length:
        ax.axvline(training_length, color="grey", ls=":", lw=1, label=f"training length {training_length}")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
