"""The Qwen tokenizer: byte-level BPE on tiktoken, safe special tokens, ChatML with SFT loss masks.

One class, :class:`QwenTokenizer`, reads every form the Qwen vocabulary ships in:

* the first-generation ``qwen.tiktoken`` (``base64(token bytes) rank`` per line, 151,643 lines),
  with the first-generation special tokens (``<|endoftext|>`` 151643, ``<|im_start|>``,
  ``<|im_end|>``, ``<|extra_0|>`` .. ``<|extra_204|>``);
* a Qwen2-family Hugging Face folder (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``), whose
  base vocabulary is the same bytes with the same ranks; its special tokens come from the file;
* a ``.gguf`` file (``tokenizer.ggml.tokens`` in GPT-2 byte-to-unicode form, token types);
* a folder written by :meth:`QwenTokenizer.save_pretrained` (which is also how every model folder
  written by training carries its tokenizer).

Encoding follows the release: NFC normalisation, then the cl100k split regex with single digits,
then rank-based BPE inside each piece (tiktoken's Rust core). Unlike the release, text that looks
like a special token (``"<|im_end|>"`` typed by a user) stays ordinary text unless the caller opts
in with ``allowed_special=``; this is what keeps user content from forging chat turn boundaries.
"""

from __future__ import annotations

import base64
import codecs
import json
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import AbstractSet, Iterable, Literal, Sequence

import tiktoken

# cl100k_base's split regex with ``\p{N}{1,3}`` replaced by ``\p{N}``: numbers become single digits.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# GPT-2's split regex, used only for tokenizer.json files whose ByteLevel pre-tokenizer splits itself.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
DEFAULT_SYSTEM = "You are a helpful assistant."
# Roles a ChatML turn may carry. tool/function/observation leave room for the agent work.
CHAT_ROLES = ("system", "user", "assistant", "tool", "function", "observation")

TIKTOKEN_FILE = "qwen.tiktoken"
CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"


class TokenizerError(ValueError):
    """A vocabulary that cannot be read or a request that cannot be served; the message says what to fix."""


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
    return {c: b for b, c in bytes_to_unicode().items()}


def token_str_to_bytes(token: str) -> bytes:
    """Bytes of a token spelled in byte-to-unicode form (``"Ġthe"`` -> ``b" the"``)."""
    table = unicode_to_bytes()
    try:
        return bytes(table[c] for c in token)
    except KeyError as e:
        raise TokenizerError(f"token {token!r} is not in byte-level (GPT-2 byte-to-unicode) form: bad character {e}") from None


def token_bytes_to_str(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


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
        default_system: str | None = DEFAULT_SYSTEM,
    ) -> list[int] | tuple[list[int], list[bool]]:
        """ChatML ids of an OpenAI-style message list.

        Each turn is ``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n``; with ``add_generation_prompt`` the
        ids end with ``<|im_start|>assistant\\n``. When the first message is not a system message,
        ``default_system`` is put first (pass ``None`` for no system turn). The role, the newline and
        the content are encoded separately, as the first-generation release does, so a prompt that
        ends with ``assistant\\n`` is an exact prefix of the same chat with the reply added: what
        the model sees at inference matches what it was trained on. Content is always ordinary
        text: a ``"<|im_end|>"`` typed by a user cannot close its turn.

        With ``return_assistant_mask`` it also returns a list of bools, True on the tokens that carry
        the SFT loss: every assistant turn's content and its closing ``<|im_end|>``.
        """
        if isinstance(messages, dict) or not isinstance(messages, Sequence):
            raise TokenizerError("messages must be a list of {'role': ..., 'content': ...} dicts")
        im_start, im_end = self.im_start_id, self.im_end_id
        nl = self.encode("\n")
        turns = list(messages)
        if default_system is not None and (not turns or _role(turns[0], 0) != "system"):
            turns.insert(0, {"role": "system", "content": default_system})
        ids: list[int] = []
        mask: list[bool] = []

        def add(piece: list[int], loss: bool) -> None:
            ids.extend(piece)
            mask.extend([loss] * len(piece))

        for n, message in enumerate(turns):
            role = _role(message, n)
            content = _content(message, n)
            add([im_start] + self.encode(role) + nl, False)
            is_assistant = role == "assistant"
            add(self.encode(content) + [im_end], is_assistant)
            add(nl, False)
        if add_generation_prompt:
            add([im_start] + self.encode("assistant") + nl, False)
        return (ids, mask) if return_assistant_mask else ids

    # -------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path: str | Path) -> "QwenTokenizer":
        """Load from a ``qwen.tiktoken`` file or folder, a Qwen2-family folder (``tokenizer.json`` or
        ``vocab.json`` + ``merges.txt``), a ``tokenizer.json`` file, a ``.gguf`` file, or a folder
        written by :meth:`save_pretrained` (including every model folder written by training)."""
        path = Path(path).expanduser()
        if not path.exists():
            raise TokenizerError(f"no tokenizer at {path}: the path does not exist")
        if path.is_file():
            suffix = path.suffix.lower()
            if suffix == ".tiktoken":
                return cls._from_tiktoken_path(path, path.parent / CONFIG_FILE)
            if suffix == ".gguf":
                return cls.from_gguf(path)
            if suffix == ".json":
                return cls.from_tokenizer_json(path)
            raise TokenizerError(f"{path}: unknown tokenizer file type; expected .tiktoken, .json (tokenizer.json) or .gguf")
        # a folder: openqwen's own layout first, then the Hugging Face layouts, then a bare .tiktoken
        tk = path / TIKTOKEN_FILE
        if tk.exists():
            return cls._from_tiktoken_path(tk, path / CONFIG_FILE)
        if (path / HF_FILE).exists():
            return cls.from_tokenizer_json(path / HF_FILE)
        if (path / "vocab.json").exists() and (path / "merges.txt").exists():
            return cls.from_vocab_merges(path / "vocab.json", path / "merges.txt", path / CONFIG_FILE)
        tiktokens = sorted(path.glob("*.tiktoken"))
        if len(tiktokens) == 1:
            return cls._from_tiktoken_path(tiktokens[0], path / CONFIG_FILE)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return cls.from_gguf(ggufs[0])
        raise TokenizerError(
            f"no tokenizer found in {path}: expected {TIKTOKEN_FILE}, {HF_FILE}, vocab.json + merges.txt, "
            "or a single .tiktoken / .gguf file"
        )

    @classmethod
    def _from_tiktoken_path(cls, path: Path, config_path: Path) -> "QwenTokenizer":
        config = _read_json(config_path) if config_path.exists() else {}
        ours = config.get("openqwen")
        ranks = load_tiktoken_ranks(path)
        if ours:
            specials = {str(k): int(v) for k, v in ours["special_tokens"].items()}
            return cls(ranks, specials, pattern=ours.get("pattern", QWEN_PATTERN), name=ours.get("name", "qwen"),
                       normalize=ours.get("normalization", "NFC") == "NFC")
        # the first-generation release: its specials follow the base ranks
        return cls(ranks, first_gen_special_tokens(len(ranks)))

    @classmethod
    def from_tiktoken(cls, path: str | Path, special_tokens: dict[str, int] | None = None) -> "QwenTokenizer":
        """A ``.tiktoken`` file with the given specials (default: the first-generation ones)."""
        ranks = load_tiktoken_ranks(Path(path))
        return cls(ranks, special_tokens if special_tokens is not None else first_gen_special_tokens(len(ranks)))

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> "QwenTokenizer":
        """A Hugging Face ``tokenizer.json`` of a byte-level BPE (the Qwen2 family's format)."""
        path = Path(path)
        data = _read_json(path)
        model = data.get("model") or {}
        if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
            raise TokenizerError(f"{path}: not a byte-level BPE tokenizer.json (model.type is {model.get('type')!r})")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}
        pattern = _pattern_from_pre_tokenizer(data.get("pre_tokenizer"), path)
        normalize = _nfc_from_normalizer(data.get("normalizer"), path)
        vocab = {k: v for k, v in model["vocab"].items() if k not in specials}
        ranks = _ranks_from_vocab_merges(vocab, merges, str(path))
        return cls(ranks, specials, pattern=pattern, normalize=normalize)

    @classmethod
    def from_vocab_merges(cls, vocab_path: str | Path, merges_path: str | Path,
                          config_path: str | Path | None = None) -> "QwenTokenizer":
        """A ``vocab.json`` + ``merges.txt`` pair; specials from ``tokenizer_config.json``
        (``added_tokens_decoder``) when present, else the Qwen2 trio after the base ranks."""
        vocab = _read_json(Path(vocab_path))
        lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
        merges = [ln for ln in lines if ln and not ln.startswith("#version")]
        specials: dict[str, int] = {}
        if config_path is not None and Path(config_path).exists():
            for i, tok in (_read_json(Path(config_path)).get("added_tokens_decoder") or {}).items():
                specials[tok["content"]] = int(i)
        vocab = {k: v for k, v in vocab.items() if k not in specials}
        ranks = _ranks_from_vocab_merges(vocab, merges, str(merges_path))
        if not specials:
            specials = {s: len(ranks) + i for i, s in enumerate((ENDOFTEXT, IM_START, IM_END))}
        return cls(ranks, specials)

    @classmethod
    def from_gguf(cls, path: str | Path) -> "QwenTokenizer":
        """The vocabulary embedded in a GGUF file (``tokenizer.ggml.*``, byte-level BPE "gpt2" model)."""
        path = Path(path)
        # One GGUF header reader serves the project (it lives with the weight loader and so pulls in
        # torch; reading a GGUF vocabulary means a GGUF model is being loaded anyway).
        from ..checkpoint import CheckpointError
        from ..gguf_loader import GGUFFile, StringArray

        try:
            with GGUFFile(path) as f:
                meta = {k: (v.tolist() if isinstance(v, StringArray) else v)
                        for k, v in f.metadata.items() if k.startswith("tokenizer.")}
        except FileNotFoundError:
            raise TokenizerError(f"{path} does not exist") from None
        except CheckpointError as e:
            raise TokenizerError(str(e)) from None
        if meta.get("tokenizer.ggml.model") != "gpt2":
            raise TokenizerError(f"{path}: tokenizer.ggml.model is {meta.get('tokenizer.ggml.model')!r}; "
                                 "only byte-level BPE ('gpt2', as Qwen uses) is supported")
        tokens = meta.get("tokenizer.ggml.tokens")
        if not tokens:
            raise TokenizerError(f"{path}: no tokenizer.ggml.tokens in the GGUF metadata")
        types = meta.get("tokenizer.ggml.token_type")
        if types is None or len(types) == 0:
            types = [1] * len(tokens)
        pre = meta.get("tokenizer.ggml.pre", "qwen2")
        if pre not in ("qwen2", "default", "gpt-2", "gpt2"):
            raise TokenizerError(f"{path}: pre-tokenizer {pre!r} is not Qwen's; supported: qwen2")
        ranks: dict[bytes, int] = {}
        specials: dict[str, int] = {}
        for i, (tok, kind) in enumerate(zip(tokens, types)):
            if kind in (3, 4):  # CONTROL, USER_DEFINED: the special tokens
                specials[tok] = i
            elif kind == 5:  # UNUSED: [PAD...] rows that only pad the embedding
                continue
            else:
                ranks[token_str_to_bytes(tok)] = i
        merges = meta.get("tokenizer.ggml.merges")
        if merges:
            _check_merge_order(ranks, merges, str(path))
        pattern = QWEN_PATTERN if pre == "qwen2" else GPT2_PATTERN
        return cls(ranks, specials, pattern=pattern)

    # -------------------------------------------------------------------------- saving
    def save_pretrained(self, directory: str | Path, hf_tokenizer_json: bool = True) -> Path:
        """Write ``qwen.tiktoken`` and ``tokenizer_config.json`` (which :meth:`from_pretrained`
        reads back exactly), and by default a Hugging Face ``tokenizer.json`` with the same
        behaviour, so transformers and other tools can load the folder too."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_tiktoken_ranks(self.mergeable_ranks, directory / TIKTOKEN_FILE)
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 32768,
            "eos_token": ENDOFTEXT if ENDOFTEXT in self._special else None,
            "pad_token": ENDOFTEXT if ENDOFTEXT in self._special else None,
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": {
                str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
                for s, i in self._special.items()
            },
            "chat_template": CHAT_TEMPLATE_JINJA,
            "openqwen": {
                "format": 1,
                "name": self.name,
                "pattern": self.pattern,
                "normalization": "NFC" if self.normalize else None,
                "special_tokens": self._special,
            },
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        if hf_tokenizer_json:
            (directory / HF_FILE).write_text(json.dumps(self.to_hf_tokenizer_json(), ensure_ascii=False), encoding="utf-8")
        return directory

    def to_hf_tokenizer_json(self) -> dict:
        """This tokenizer as a Hugging Face ``tokenizer.json`` dict (NFC, split regex, byte-level BPE).

        Each token gets one merge: the pair that rank-based BPE joins last when it encodes the
        token's own bytes, ordered by the token's rank. That makes merge-priority BPE (tokenizers)
        produce the same ids as rank-priority BPE (tiktoken).
        """
        vocab = {token_bytes_to_str(b): r for b, r in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])}
        if self._merges is None:
            self._merges = [[token_bytes_to_str(a), token_bytes_to_str(b)] for a, b in derive_merges(self.mergeable_ranks)]
        merges = self._merges
        return {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                 "normalized": False, "special": True}
                for s, i in self._special.items()
            ],
            "normalizer": {"type": "NFC"} if self.normalize else None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            ]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": merges},
        }

    def __repr__(self) -> str:
        return (f"QwenTokenizer(name={self.name!r}, base_tokens={self.num_base_tokens}, "
                f"special_tokens={len(self._special)}, vocab_size={self.vocab_size})")


# A Jinja chat template equal to apply_chat_template for plain messages, for tools that read
# tokenizer_config.json (transformers' apply_chat_template, llama.cpp, vLLM).
CHAT_TEMPLATE_JINJA = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


# ------------------------------------------------------------------------------ chat helpers
def _role(message: object, n: int) -> str:
    if not isinstance(message, dict) or "role" not in message:
        raise TokenizerError(f"message {n} must be a dict with 'role' and 'content', got {message!r:.80}")
    role = message["role"]
    if role not in CHAT_ROLES:
        raise TokenizerError(f"message {n} has role {role!r}; expected one of {', '.join(CHAT_ROLES)}")
    return role


def _content(message: dict, n: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: only text parts carry meaning here
        texts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                raise TokenizerError(f"message {n}: only text content parts are supported, got {part!r:.80}")
        return "".join(texts)
    raise TokenizerError(f"message {n}: content must be a string or a list of text parts, got {type(content).__name__}")


# ------------------------------------------------------------------------------ file formats
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path} is not valid JSON ({e}); the file is corrupt or truncated") from None


def load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Read a ``.tiktoken`` file (one ``base64(token bytes) rank`` per line), checking every line."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"vocabulary file {path} does not exist") from None
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected 2 fields")
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
        except (ValueError, base64.binascii.Error) as e:
            raise TokenizerError(
                f"{path}: line {n} is not 'base64 rank' ({e}): {line[:60]!r}; the vocabulary file is corrupt"
            ) from None
        if token in ranks:
            raise TokenizerError(f"{path}: line {n} repeats a token already ranked {ranks[token]}")
        ranks[token] = rank
    if not ranks:
        raise TokenizerError(f"{path} holds no tokens; the vocabulary file is empty or corrupt")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps; the vocabulary file is corrupt")
    return ranks


def write_tiktoken_ranks(ranks: dict[bytes, int], path: Path) -> None:
    lines = [f"{base64.b64encode(tok).decode('ascii')} {rank}\n" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    Path(path).write_text("".join(lines), encoding="ascii")


def _pattern_from_pre_tokenizer(pre: dict | None, path: Path) -> str:
    """The split regex of a byte-level BPE ``pre_tokenizer``."""
    if not pre:
        raise TokenizerError(f"{path}: no pre_tokenizer; cannot tell how text is split")
    steps = pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    pattern = None
    for step in steps:
        if step.get("type") == "Split":
            regex = (step.get("pattern") or {}).get("Regex")
            if regex is None or step.get("behavior") != "Isolated" or step.get("invert"):
                raise TokenizerError(f"{path}: unsupported Split pre-tokenizer {step}")
            pattern = regex
        elif step.get("type") == "ByteLevel":
            if step.get("use_regex", True):
                pattern = GPT2_PATTERN if pattern is None else pattern
        else:
            raise TokenizerError(f"{path}: unsupported pre-tokenizer step {step.get('type')!r}")
    if pattern is None:
        raise TokenizerError(f"{path}: no split regex in the pre_tokenizer")
    return pattern


def _nfc_from_normalizer(norm: dict | None, path: Path) -> bool:
    if not norm:
        return False
    if norm.get("type") == "NFC":
        return True
    raise TokenizerError(f"{path}: unsupported normalizer {norm.get('type')!r} (only NFC or none)")


def _ranks_from_vocab_merges(vocab: dict[str, int], merges: list[str], where: str) -> dict[bytes, int]:
    ranks = {token_str_to_bytes(tok): int(i) for tok, i in vocab.items()}
    if len(ranks) != len(vocab):
        raise TokenizerError(f"{where}: two vocabulary entries spell the same bytes")
    _check_merge_order(ranks, merges, where)
    return ranks


def _check_merge_order(ranks: dict[bytes, int], merges: list[str], where: str) -> None:
    """tiktoken merges by the rank of the merged token; a merges list is equivalent only when the
    merged tokens' ids rise with the merge order (true of every Qwen release). Check it."""
    last = -1
    for n, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        merged = token_str_to_bytes(left + right)
        rank = ranks.get(merged)
        if rank is None:
            raise TokenizerError(f"{where}: merge {n} ({merge!r}) makes a token that is not in the vocabulary")
        if rank < last:
            raise TokenizerError(
                f"{where}: merge {n} ({merge!r}) makes token id {rank} after a merge that made id {last}; "
                "only vocabularies whose ids follow the merge order (as Qwen's do) are supported"
            )
        last = rank


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order: the pair that rank-based BPE joins last when
    encoding that token's bytes. Tokens that rank-based BPE can never produce get no merge."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best, best_rank = -1, None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best_rank is None or r < best_rank):
                    best, best_rank = i, r
            if best < 0:
                break
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        if len(parts) == 2:
            merges.append((parts[0], parts[1]))
    return merges


__all__ = [
    "QwenTokenizer", "StreamDecoder", "TokenizerError", "QWEN_PATTERN", "DEFAULT_SYSTEM", "CHAT_ROLES",
    "first_gen_special_tokens", "load_tiktoken_ranks", "write_tiktoken_ranks", "derive_merges",
    "bytes_to_unicode",
]
