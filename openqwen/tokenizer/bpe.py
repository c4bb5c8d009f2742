"""The Qwen tokenizer's core: byte-level BPE on tiktoken, safe special tokens, streaming decode.

:class:`QwenTokenizer` is built from a :class:`~openqwen.tokenizer.vocab.Vocabulary` (ranks,
special tokens, split regex); :mod:`.formats` reads and writes the files those come in, and
:mod:`.chat` renders ChatML. This module adds what needs the compiled BPE: encode and decode.

Encoding follows the release: NFC normalisation, then the cl100k split regex with single digits,
then rank-based BPE inside each piece (tiktoken's Rust core). Unlike the release, text that looks
like a special token (``"<|im_end|>"`` typed by a user) stays ordinary text unless the caller opts
in with ``allowed_special=``; this is what keeps user content from forging chat turn boundaries.
"""

from __future__ import annotations

import codecs
import unicodedata
from pathlib import Path
from typing import AbstractSet, Iterable, Literal, Sequence

import tiktoken

from . import chat, formats
from .vocab import ENDOFTEXT, IM_END, IM_START, QWEN_PATTERN, TokenizerError, Vocabulary


# ------------------------------------------------------------------------------ stream decoding
class StreamDecoder:
    """Turns a stream of token ids into text that only ever contains complete UTF-8 characters.

    A Chinese character or an emoji often spans several byte-level tokens; ``push`` holds back the
    incomplete tail until the rest arrives. Invalid bytes become U+FFFD exactly as in
    :meth:`QwenTokenizer.decode`, so ``"".join(pushes) + flush()`` equals ``decode(all ids)``.
    """

    def __init__(self, tokenizer: "QwenTokenizer", skip_special_tokens: bool = False) -> None:
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became complete (possibly ``""``)."""
        return self._utf8.decode(self._tok._token_bytes(int(token_id), self._skip))

    def push_many(self, token_ids: Iterable[int]) -> str:
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        """End of stream: whatever is held back (an incomplete character decodes as U+FFFD)."""
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out


# ------------------------------------------------------------------------------ the tokenizer
class QwenTokenizer:
    """Qwen's byte-level BPE tokenizer with special tokens and ChatML.

    ``mergeable_ranks`` maps token bytes to rank (= token id); BPE merges the adjacent pair whose
    concatenation has the lowest rank. ``special_tokens`` maps special-token text to its id (they
    sit after the base ranks). Build one with :meth:`from_pretrained`; the constructor is for
    vocabularies made in code (e.g. by :func:`openqwen.tokenizer.train.train_tokenizer`).
    """

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: dict[str, int],
        pattern: str = QWEN_PATTERN,
        name: str = "qwen",
        normalize: bool = True,
    ) -> None:
        if not mergeable_ranks:
            raise TokenizerError("empty vocabulary: no mergeable ranks")
        missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        if missing:
            raise TokenizerError(
                f"vocabulary lacks {len(missing)} of the 256 single bytes (e.g. {bytes([missing[0]])!r}); "
                "a byte-level BPE needs all of them so every text can be encoded"
            )
        rank_ids = set(mergeable_ranks.values())
        if len(rank_ids) != len(mergeable_ranks):
            raise TokenizerError("vocabulary has duplicate ranks")
        clash = [s for s, i in special_tokens.items() if i in rank_ids]
        if clash:
            raise TokenizerError(f"special tokens {clash[:3]} reuse ids of ordinary tokens")
        self.mergeable_ranks = mergeable_ranks
        self._special = dict(sorted(special_tokens.items(), key=lambda kv: kv[1]))
        self.pattern = pattern
        self.name = name
        self.normalize = normalize
        self._enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=self._special)
        self._special_ids = frozenset(self._special.values())
        self._special_bytes = {i: s.encode("utf-8") for s, i in self._special.items()}
        self._vocab_size = max(max(mergeable_ranks.values()), max(self._special_ids, default=-1)) + 1
        self._known_ids = None  # set of valid ids, built on demand when ids have gaps
        self._merges = None  # derived merges for tokenizer.json, computed once (seconds for 152K tokens)

    # -------------------------------------------------------------------------- properties
    @property
    def vocab_size(self) -> int:
        """Number of ids including special tokens (max id + 1)."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token text -> id (a copy)."""
        return dict(self._special)

    def _special_id(self, text: str) -> int:
        try:
            return self._special[text]
        except KeyError:
            raise TokenizerError(f"this vocabulary has no special token {text!r}") from None

    @property
    def eos_id(self) -> int:
        """``<|endoftext|>``: the document separator and the stop token of base models."""
        return self._special_id(ENDOFTEXT)

    @property
    def im_start_id(self) -> int:
        return self._special_id(IM_START)

    @property
    def im_end_id(self) -> int:
        return self._special_id(IM_END)

    @property
    def stop_ids(self) -> list[int]:
        """Chat generation stops: ``<|im_end|>``, ``<|im_start|>``, ``<|endoftext|>``."""
        return [self._special[s] for s in (IM_END, IM_START, ENDOFTEXT) if s in self._special]

    @property
    def num_base_tokens(self) -> int:
        """Number of ordinary (mergeable) tokens."""
        return len(self.mergeable_ranks)

    def token_to_id(self, token: str | bytes) -> int:
        """Id of one whole token: special-token text, or the exact bytes (or text) of an ordinary token."""
        if isinstance(token, str) and token in self._special:
            return self._special[token]
        key = token.encode("utf-8") if isinstance(token, str) else token
        try:
            return self.mergeable_ranks[key]
        except KeyError:
            raise TokenizerError(f"{token!r} is not a single token of this vocabulary") from None

    def id_to_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (special tokens give their text)."""
        return self._token_bytes(token_id, False)

    # -------------------------------------------------------------------------- encode / decode
    def _prepare(self, text: str) -> str:
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        # NFC as the release does; the check is much cheaper than normalising already-NFC text.
        if self.normalize and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        return text

    def _allowed(self, allowed_special: Literal["all"] | AbstractSet[str]) -> AbstractSet[str]:
        if allowed_special == "all":
            return self._enc.special_tokens_set
        allowed = frozenset(allowed_special)
        unknown = allowed - self._enc.special_tokens_set
        if unknown:
            raise TokenizerError(f"allowed_special names unknown special tokens {sorted(unknown)}")
        return allowed

    def encode(self, text: str, allowed_special: Literal["all"] | AbstractSet[str] = frozenset()) -> list[int]:
        """Token ids of ``text``.

        Special-token text is ordinary text unless listed in ``allowed_special`` (or ``"all"``):
        ``encode("<|im_end|>")`` gives the ids of the characters ``<``, ``|``, ... not 151645.
        """
        text = self._prepare(text)
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._enc.encode_ordinary(text)
        return self._enc.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(
        self,
        texts: Sequence[str],
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        num_threads: int = 8,
    ) -> list[list[int]]:
        """``encode`` for many texts, in parallel threads (tiktoken releases the GIL)."""
        texts = [self._prepare(t) for t in texts]
        allowed = self._allowed(allowed_special)
        if not allowed:
            return self._enc.encode_ordinary_batch(texts, num_threads=num_threads)
        return self._enc.encode_batch(texts, num_threads=num_threads, allowed_special=allowed, disallowed_special=())

    def _check_id(self, token_id: int) -> None:
        if self._known_ids is None:
            self._known_ids = frozenset(self.mergeable_ranks.values()) | self._special_ids
        if token_id not in self._known_ids:
            raise TokenizerError(
                f"token id {token_id} is not in this vocabulary (ids 0..{self._vocab_size - 1}); "
                "a model whose embedding is padded past the vocabulary should never sample those rows"
            )

    def _token_bytes(self, token_id: int, skip_special: bool) -> bytes:
        if token_id in self._special_ids:
            return b"" if skip_special else self._special_bytes[token_id]
        try:
            return self._enc.decode_single_token_bytes(token_id)
        except (KeyError, ValueError, OverflowError):
            self._check_id(token_id)
            raise

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = False) -> bytes:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        try:
            return self._enc.decode_bytes(ids)
        except (KeyError, ValueError, OverflowError):
            for i in ids:
                self._check_id(i)
            raise

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; bytes that are not valid UTF-8 (a cut character) become U+FFFD."""
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """An incremental decoder for streaming (see :class:`StreamDecoder`)."""
        return StreamDecoder(self, skip_special_tokens)

    # -------------------------------------------------------------------------- ChatML
    def apply_chat_template(
        self,
        messages: Sequence[dict],
        add_generation_prompt: bool = True,
        return_assistant_mask: bool = False,
        default_system: str | None = chat.DEFAULT_SYSTEM,
    ) -> list[int] | tuple[list[int], list[bool]]:
        """ChatML ids of an OpenAI-style message list (and the SFT assistant mask on request):
        :func:`openqwen.tokenizer.chat.render_chatml` with this tokenizer."""
        return chat.render_chatml(self, messages, add_generation_prompt=add_generation_prompt,
                                  return_assistant_mask=return_assistant_mask, default_system=default_system)

    # -------------------------------------------------------------------------- files
    @property
    def vocabulary(self) -> Vocabulary:
        """The data this tokenizer is built from (what :mod:`.formats` reads and writes)."""
        return Vocabulary(self.mergeable_ranks, dict(self._special), pattern=self.pattern, name=self.name,
                          normalize=self.normalize)

    @classmethod
    def from_vocabulary(cls, vocab: Vocabulary) -> "QwenTokenizer":
        return cls(vocab.ranks, vocab.special_tokens, pattern=vocab.pattern, name=vocab.name, normalize=vocab.normalize)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "QwenTokenizer":
        """Load from a ``qwen.tiktoken`` file or folder, a Qwen2-family folder (``tokenizer.json`` or
        ``vocab.json`` + ``merges.txt``), a ``tokenizer.json`` file, a ``.gguf`` file, or a folder
        written by :meth:`save_pretrained` (including every model folder written by training);
        see :func:`openqwen.tokenizer.formats.read_vocabulary`."""
        return cls.from_vocabulary(formats.read_vocabulary(path))

    @classmethod
    def from_tiktoken(cls, path: str | Path, special_tokens: dict[str, int] | None = None) -> "QwenTokenizer":
        """A ``.tiktoken`` file with the given specials (default: the first-generation ones)."""
        return cls.from_vocabulary(formats.read_tiktoken(path, special_tokens=special_tokens))

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> "QwenTokenizer":
        """A Hugging Face ``tokenizer.json`` of a byte-level BPE (the Qwen2 family's format)."""
        return cls.from_vocabulary(formats.read_tokenizer_json(path))

    @classmethod
    def from_vocab_merges(cls, vocab_path: str | Path, merges_path: str | Path,
                          config_path: str | Path | None = None) -> "QwenTokenizer":
        """A ``vocab.json`` + ``merges.txt`` pair (specials from ``tokenizer_config.json`` when present)."""
        return cls.from_vocabulary(formats.read_vocab_merges(vocab_path, merges_path, config_path))

    @classmethod
    def from_gguf(cls, path: str | Path) -> "QwenTokenizer":
        """The vocabulary embedded in a GGUF file (``tokenizer.ggml.*``); reads the header only."""
        return cls.from_vocabulary(formats.read_gguf(path))

    def save_pretrained(self, directory: str | Path, hf_tokenizer_json: bool = True) -> Path:
        """Write ``qwen.tiktoken`` and ``tokenizer_config.json`` (which :meth:`from_pretrained`
        reads back exactly, with a Jinja chat template equal to :meth:`apply_chat_template`), and
        by default a Hugging Face ``tokenizer.json`` with the same behaviour, so transformers and
        other tools can load the folder too."""
        hf_json = self.to_hf_tokenizer_json() if hf_tokenizer_json else None
        return formats.write_folder(self.vocabulary, directory, chat_template=chat.CHAT_TEMPLATE_JINJA, hf_json=hf_json)

    def to_hf_tokenizer_json(self) -> dict:
        """This tokenizer as a Hugging Face ``tokenizer.json`` dict (see :func:`formats.hf_tokenizer_json`)."""
        if self._merges is None:  # seconds for 152K tokens: derive once per tokenizer
            self._merges = formats.derive_merges(self.mergeable_ranks)
        return formats.hf_tokenizer_json(self.vocabulary, self._merges)

    def __repr__(self) -> str:
        return (f"QwenTokenizer(name={self.name!r}, base_tokens={self.num_base_tokens}, "
                f"special_tokens={len(self._special)}, vocab_size={self.vocab_size})")


__all__ = ["QwenTokenizer", "StreamDecoder"]
