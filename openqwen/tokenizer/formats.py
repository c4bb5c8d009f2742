"""Vocabulary files in and out: every form the Qwen vocabulary ships in, read into a :class:`Vocabulary`.

* the first-generation ``qwen.tiktoken`` (``base64(token bytes) rank`` per line, 151,643 lines),
  with the first-generation special tokens (``<|endoftext|>`` 151643, ``<|im_start|>``,
  ``<|im_end|>``, ``<|extra_0|>`` .. ``<|extra_204|>``);
* a Qwen2-family Hugging Face folder (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``), whose
  base vocabulary is the same bytes with the same ranks; its special tokens come from the file;
* a ``.gguf`` file (``tokenizer.ggml.tokens`` in GPT-2 byte-to-unicode form, token types), read
  with the torch-free GGUF header reader;
* a folder written by :func:`write_folder` (``QwenTokenizer.save_pretrained``; every model folder
  written by training carries its tokenizer this way).

:func:`read_vocabulary` finds which of these a path is. Readers check what they read and raise
:class:`TokenizerError` naming the file and the line or field at fault. This module knows nothing
of encoding: :class:`~openqwen.tokenizer.QwenTokenizer` is built from what it returns.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path

from .vocab import (
    ENDOFTEXT,
    GPT2_PATTERN,
    IM_END,
    IM_START,
    QWEN_PATTERN,
    TokenizerError,
    Vocabulary,
    first_gen_special_tokens,
    token_bytes_to_str,
    token_str_to_bytes,
)

TIKTOKEN_FILE = "qwen.tiktoken"
CONFIG_FILE = "tokenizer_config.json"
HF_FILE = "tokenizer.json"


# ------------------------------------------------------------------------------ finding a vocabulary
def read_vocabulary(path: str | Path) -> Vocabulary:
    """The vocabulary at ``path``: a ``qwen.tiktoken`` file or folder, a Qwen2-family folder
    (``tokenizer.json`` or ``vocab.json`` + ``merges.txt``), a ``tokenizer.json`` file, a ``.gguf``
    file, or a folder written by :func:`write_folder`."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TokenizerError(f"no tokenizer at {path}: the path does not exist")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".tiktoken":
            return read_tiktoken(path, path.parent / CONFIG_FILE)
        if suffix == ".gguf":
            return read_gguf(path)
        if suffix == ".json":
            return read_tokenizer_json(path)
        raise TokenizerError(f"{path}: unknown tokenizer file type; expected .tiktoken, .json (tokenizer.json) or .gguf")
    # a folder: openqwen's own layout first, then the Hugging Face layouts, then a bare .tiktoken or .gguf
    if (path / TIKTOKEN_FILE).exists():
        return read_tiktoken(path / TIKTOKEN_FILE, path / CONFIG_FILE)
    if (path / HF_FILE).exists():
        return read_tokenizer_json(path / HF_FILE)
    if (path / "vocab.json").exists() and (path / "merges.txt").exists():
        return read_vocab_merges(path / "vocab.json", path / "merges.txt", path / CONFIG_FILE)
    tiktokens = sorted(path.glob("*.tiktoken"))
    if len(tiktokens) == 1:
        return read_tiktoken(tiktokens[0], path / CONFIG_FILE)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return read_gguf(ggufs[0])
    raise TokenizerError(
        f"no tokenizer found in {path}: expected {TIKTOKEN_FILE}, {HF_FILE}, vocab.json + merges.txt, "
        "or a single .tiktoken / .gguf file"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TokenizerError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path} is not valid JSON ({e}); the file is corrupt or truncated") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} holds a JSON {type(data).__name__}, not an object; the file is not a tokenizer file")
    return data


# ------------------------------------------------------------------------------ qwen.tiktoken
def load_tiktoken_ranks(path: str | Path) -> dict[bytes, int]:
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
        except (ValueError, binascii.Error) as e:
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


def write_tiktoken_ranks(ranks: dict[bytes, int], path: str | Path) -> None:
    """Write ranks as a ``.tiktoken`` file, in rank order."""
    lines = [f"{base64.b64encode(tok).decode('ascii')} {rank}\n" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    Path(path).write_text("".join(lines), encoding="ascii")


def read_tiktoken(path: str | Path, config_path: str | Path | None = None,
                  special_tokens: dict[str, int] | None = None) -> Vocabulary:
    """A ``.tiktoken`` file. Specials: ``special_tokens`` when given, else those saved by
    :func:`write_folder` in ``config_path``, else the first generation's after the base ranks."""
    ranks = load_tiktoken_ranks(path)
    if special_tokens is not None:
        return Vocabulary(ranks, dict(special_tokens))
    config = _read_json(Path(config_path)) if config_path is not None and Path(config_path).exists() else {}
    ours = config.get("openqwen")
    if not ours:
        return Vocabulary(ranks, first_gen_special_tokens(len(ranks)))
    try:
        specials = {str(k): int(v) for k, v in ours["special_tokens"].items()}
    except (KeyError, AttributeError, TypeError, ValueError):
        raise TokenizerError(f"{config_path}: 'openqwen.special_tokens' must map token text to an id; "
                             "the file is corrupt (save the tokenizer again)") from None
    return Vocabulary(ranks, specials, pattern=ours.get("pattern", QWEN_PATTERN), name=ours.get("name", "qwen"),
                      normalize=ours.get("normalization", "NFC") == "NFC")


# ------------------------------------------------------------------------------ Hugging Face files
def read_tokenizer_json(path: str | Path) -> Vocabulary:
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
    return Vocabulary(ranks, specials, pattern=pattern, normalize=normalize)


def read_vocab_merges(vocab_path: str | Path, merges_path: str | Path,
                      config_path: str | Path | None = None) -> Vocabulary:
    """A ``vocab.json`` + ``merges.txt`` pair; specials from ``tokenizer_config.json``
    (``added_tokens_decoder``) when present, else the Qwen2 trio after the base ranks."""
    vocab = _read_json(Path(vocab_path))
    try:
        lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TokenizerError(f"{merges_path} does not exist") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{merges_path} is not UTF-8 text ({e}); the merges file is corrupt") from None
    merges = [ln for ln in lines if ln and not ln.startswith("#version")]
    specials: dict[str, int] = {}
    if config_path is not None and Path(config_path).exists():
        for i, tok in (_read_json(Path(config_path)).get("added_tokens_decoder") or {}).items():
            specials[tok["content"]] = int(i)
    vocab = {k: v for k, v in vocab.items() if k not in specials}
    ranks = _ranks_from_vocab_merges(vocab, merges, str(merges_path))
    if not specials:
        specials = {s: len(ranks) + i for i, s in enumerate((ENDOFTEXT, IM_START, IM_END))}
    return Vocabulary(ranks, specials)


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


# ------------------------------------------------------------------------------ GGUF
def read_gguf(path: str | Path) -> Vocabulary:
    """The vocabulary embedded in a GGUF file (``tokenizer.ggml.*``, byte-level BPE "gpt2" model)."""
    path = Path(path)
    meta = _gguf_tokenizer_metadata(path)
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
        _check_merge_order(ranks, list(merges), str(path))
    return Vocabulary(ranks, specials, pattern=QWEN_PATTERN if pre == "qwen2" else GPT2_PATTERN)


def _gguf_tokenizer_metadata(path: Path) -> dict:
    """The ``tokenizer.*`` metadata of a GGUF file, string arrays as lists."""
    # The project's one GGUF header reader, shared with the weight loader: numpy only, no torch.
    # Imported here so that tokenizers read from other formats do not import numpy.
    from ..checkpoint.gguf_file import GGUFFile, StringArray

    try:
        with GGUFFile(path) as f:
            return {k: (v.tolist() if isinstance(v, StringArray) else v)
                    for k, v in f.metadata.items() if k.startswith("tokenizer.")}
    except FileNotFoundError:
        raise TokenizerError(f"{path} does not exist") from None
    except ValueError as e:  # the reader's own error (a CheckpointError, a ValueError) says what is wrong
        raise TokenizerError(str(e)) from None


# ------------------------------------------------------------------------------ writing
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


def hf_tokenizer_json(vocab: Vocabulary, merges: list[tuple[bytes, bytes]] | None = None) -> dict:
    """``vocab`` as a Hugging Face ``tokenizer.json`` dict (NFC, split regex, byte-level BPE).

    Each token gets one merge (``merges``, default :func:`derive_merges`): the pair that rank-based
    BPE joins last when it encodes the token's own bytes, ordered by the token's rank. That makes
    merge-priority BPE (tokenizers) produce the same ids as rank-priority BPE (tiktoken).
    """
    if merges is None:
        merges = derive_merges(vocab.ranks)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for s, i in sorted(vocab.special_tokens.items(), key=lambda kv: kv[1])
        ],
        "normalizer": {"type": "NFC"} if vocab.normalize else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": vocab.pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {token_bytes_to_str(b): r for b, r in sorted(vocab.ranks.items(), key=lambda kv: kv[1])},
                  "merges": [[token_bytes_to_str(a), token_bytes_to_str(b)] for a, b in merges]},
    }


def tokenizer_config(vocab: Vocabulary, chat_template: str | None) -> dict:
    """``tokenizer_config.json``: the HF fields, and an ``openqwen`` section that :func:`read_tiktoken`
    reads back exactly (specials, split regex, normalisation)."""
    specials = dict(sorted(vocab.special_tokens.items(), key=lambda kv: kv[1]))
    eos = ENDOFTEXT if ENDOFTEXT in specials else None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 32768,
        "eos_token": eos,
        "pad_token": eos,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for s, i in specials.items()
        },
        "openqwen": {
            "format": 1,
            "name": vocab.name,
            "pattern": vocab.pattern,
            "normalization": "NFC" if vocab.normalize else None,
            "special_tokens": specials,
        },
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def write_folder(vocab: Vocabulary, directory: str | Path, chat_template: str | None = None,
                 hf_json: dict | None = None) -> Path:
    """Write ``qwen.tiktoken`` and ``tokenizer_config.json`` (which :func:`read_vocabulary` reads
    back exactly), and ``tokenizer.json`` when ``hf_json`` (from :func:`hf_tokenizer_json`) is given."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_tiktoken_ranks(vocab.ranks, directory / TIKTOKEN_FILE)
    config = tokenizer_config(vocab, chat_template)
    (directory / CONFIG_FILE).write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    if hf_json is not None:
        (directory / HF_FILE).write_text(json.dumps(hf_json, ensure_ascii=False), encoding="utf-8")
    return directory
