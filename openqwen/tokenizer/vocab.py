"""What a Qwen vocabulary is made of, shared by every tokenizer module (which all import this one).

* :class:`Vocabulary`: the raw data a :class:`~openqwen.tokenizer.QwenTokenizer` is built from
  (ranks, special tokens, split regex, normalisation). The readers in :mod:`.formats` produce it,
  the writers take it; the tokenizer itself never parses a file.
* the split regexes, the special-token names and the first-generation special-token numbering;
* GPT-2's byte-to-unicode spelling, in which ``vocab.json``, ``tokenizer.json`` and GGUF write
  token bytes;
* :class:`TokenizerError`, the one error every module raises for bad vocabularies and requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# cl100k_base's split regex with ``\p{N}{1,3}`` replaced by ``\p{N}``: numbers become single digits.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# GPT-2's split regex, used only for tokenizer.json files whose ByteLevel pre-tokenizer splits itself.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


class TokenizerError(ValueError):
    """A vocabulary that cannot be read or a request that cannot be served; the message says what to fix."""


@dataclass(frozen=True)
class Vocabulary:
    """The data that defines a byte-level BPE tokenizer.

    ``ranks`` maps token bytes to rank (= id; rank-based BPE merges the pair whose concatenation
    ranks lowest); ``special_tokens`` maps special-token text to its id (after the ranks);
    ``pattern`` is the split regex; ``normalize`` says whether text is NFC-normalised first.
    """

    ranks: dict[bytes, int]
    special_tokens: dict[str, int]
    pattern: str = QWEN_PATTERN
    name: str = "qwen"
    normalize: bool = True


def first_gen_special_tokens(num_base: int = 151643, num_extra: int = 205) -> dict[str, int]:
    """The first-generation release's specials, numbered directly after the ``num_base`` ranks."""
    names = [ENDOFTEXT, IM_START, IM_END] + [f"<|extra_{i}|>" for i in range(num_extra)]
    return {name: num_base + i for i, name in enumerate(names)}


# ------------------------------------------------------------------------------ byte <-> unicode
@lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Byte-level BPE files (``vocab.json``, ``tokenizer.json``, GGUF) spell token bytes this way:
    printable Latin-1 bytes stand for themselves, the others are shifted to U+0100 and up.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in keep}
    shift = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


@lru_cache(maxsize=None)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of :func:`bytes_to_unicode`."""
    return {c: b for b, c in bytes_to_unicode().items()}


def token_str_to_bytes(token: str) -> bytes:
    """Bytes of a token spelled in byte-to-unicode form (``"Ġthe"`` -> ``b" the"``)."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError as e:
        raise TokenizerError(f"token {token!r} is not in byte-level (GPT-2 byte-to-unicode) form: bad character {e}") from None


def token_bytes_to_str(token: bytes) -> str:
    """The byte-to-unicode spelling of token bytes (``b" the"`` -> ``"Ġthe"``)."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)
