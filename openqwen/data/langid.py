"""Language identification with ``py3langid`` (langid.py's model, shipped inside the package).

The model is a naive Bayes over byte n-grams covering 97 languages; it is loaded once per process
(about 2 s, from the package's own data file: nothing is downloaded). Texts are classified on
their first ``max_chars`` characters, which is enough for a stable answer and keeps the cost per
document bounded. Chinese varieties the model separates (Wu ``wuu``, Cantonese ``yue``) are
reported as ``zh``: classical poetry is often labelled ``wuu``. Code (``domain == "code"``) is
not natural language and is labelled ``code`` without running the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

ZH_VARIANTS = {"zh", "wuu", "yue", "lzh", "gan", "hak", "nan"}


@dataclass
class LangIdConfig:
    """keep: language codes to keep (None keeps every language and only labels documents).
    min_score: minimum normalised probability of the top language (0 disables the check).
    max_chars: characters of each document given to the model."""

    keep: list[str] | None = None
    min_score: float = 0.0
    max_chars: int = 2000


@lru_cache(maxsize=1)
def _identifier():
    try:
        import py3langid.langid as langid_module
    except ImportError as e:  # pragma: no cover - it is a runtime dependency
        raise ImportError("language id needs py3langid: pip install py3langid") from e
    return langid_module.LanguageIdentifier.from_model_file(langid_module.MODEL_FILE, norm_probs=True)


def detect_language(text: str, max_chars: int = 2000) -> tuple[str, float]:
    """``(language code, probability)`` of the text; ``("und", 0.0)`` for text without letters."""
    sample = text[:max_chars]
    if not any(ch.isalpha() for ch in sample):
        return "und", 0.0
    lang, prob = _identifier().classify(sample)
    if lang in ZH_VARIANTS:
        lang = "zh"
    return lang, float(prob)


def langid_documents(docs: list[dict[str, Any]], config: LangIdConfig) -> list[list[dict[str, Any]] | str]:
    """Label each document with ``lang`` and ``lang_score``; return ``[doc]`` to keep or a reason."""
    keep = set(config.keep) if config.keep else None
    out: list[list[dict[str, Any]] | str] = []
    for doc in docs:
        if doc.get("domain") == "code" or doc.get("lang") == "code":
            doc["lang"], doc["lang_score"] = "code", 1.0
        else:
            doc["lang"], doc["lang_score"] = detect_language(doc["text"], config.max_chars)
        if keep is not None and doc["lang"] not in keep:
            out.append("lang_not_kept")
        elif doc["lang"] != "code" and doc["lang_score"] < config.min_score:
            out.append("lang_low_confidence")
        else:
            out.append([doc])
    return out
