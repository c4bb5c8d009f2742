"""Loading a model for generation: one helper and one precision vocabulary for every verb.

``generate``, ``chat``, ``serve`` and ``eval`` all load through :func:`load_model_and_tokenizer`
(the engine's ``Engine.from_pretrained`` too) and take their ``--model/--tokenizer/--dtype/--threads``
flags from :func:`add_model_arguments`, so they accept the same precisions under the same names:

- ``auto`` (the default): what the checkpoint is (:func:`checkpoint_precision`): a quantised GGUF runs
  quantised (int4 when its linears are mostly blocks of 4 bits or fewer, int8 for 5- to 8-bit blocks:
  Q5_0 / Q5_K / Q6_K / Q8_0, and the q4_k_m Qwen2.5-0.5B, which is mostly Q5_0), a GPTQ folder
  runs its own int4 / int8 layers, a float checkpoint keeps its dtype (bf16 / fp16 as bf16, else fp32);
- ``fp32``: as stored, computed in float32;
- ``bf16``: the linears' weights in bfloat16 (half the bytes to read per token), computed in float32;
- ``int8``: weight-only int8 linears (per-row scales) on float32 activations;
- ``int4``: weight-only group-wise int4 linears (:class:`~openqwen.infer.quant.Int4Linear`; the output
  head int8): a GGUF's Q4_K blocks as stored, its other blocks rounded to int4 in groups of 32; a float
  checkpoint rounded to nearest in groups of 128.

At int8 and int4 the input embedding is int8 rows too (:class:`~openqwen.infer.quant.Int8Embedding`),
read from the output head's own rows when the checkpoint ties them, so a quantised model holds no fp32
copy of its vocabulary matrix; a GGUF with an untied head whose embedding is stored in fewer than 8
bits per weight keeps those blocks as they are (:class:`~openqwen.infer.gguf_quant.GGUFBlockEmbedding`).

``float32`` and ``bfloat16`` are accepted as spellings of fp32 and bf16. The choice and its reason are
printed at load (stderr). A GGUF loaded as int4 / int8 never exists in float32 (:mod:`.gguf_quant`).
Whatever the precision, the weights a decode step reads end up in one block of memory, in the order
the step reads them, on transparent huge pages where the OS gives them (:mod:`.arena`).

The long-context flags (``--rope-scaling``, ``--rope-update``, ``--logn``, ``--window-sizes``,
``--attention-sinks``, ``--seq-length``) override what the checkpoint says, through
:func:`long_context_from_args` and :func:`apply_long_context` (docs/long-context.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..model import Qwen

# This module imports no torch at import time: the CLIs take their flags from it for ``--help``.

DTYPE_CHOICES = ("auto", "fp32", "bf16", "int8", "int4")
"""The precisions a model can be loaded in for generation (``auto``: the checkpoint's own)."""

_DTYPE_SPELLINGS = {"float32": "fp32", "bfloat16": "bf16"}

DTYPE_HELP = ("precision: auto (default: what the checkpoint is; a GGUF of 4-bit blocks runs int4, of 5-8-bit "
              "blocks int8, a float folder its own dtype; printed at load), fp32, bf16 (bf16 weights, fp32 compute), int8 "
              "(weight-only int8 linears) or int4 (group-wise int4 linears, the head int8: the fewest bytes "
              "per token). Example: --dtype int8")

# GGML types whose codes have at most 4 bits: a file made mostly of them loses nothing more as int4.
# 5-bit blocks (Q5_0 / Q5_K) rounded to 4 bits cost real quality (a q4_k_m Qwen2.5-0.5B, mostly Q5_0
# because its 896-wide rows do not fit k-quant super-blocks: perplexity 7.89 -> 8.62), so they run int8.
_LOW_BIT_GGML = {"Q4_0", "Q4_1", "Q2_K", "Q3_K", "Q4_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S",
                 "IQ2_S", "IQ4_XS", "IQ1_M", "TQ1_0", "TQ2_0"}
_FLOAT_GGML = {"F32": "fp32", "F16": "bf16", "BF16": "bf16", "F64": "fp32"}


def normalise_dtype(name: str) -> str:
    """``name`` as one of :data:`DTYPE_CHOICES` (``float32`` -> ``fp32``, ``bfloat16`` -> ``bf16``)."""
    key = str(name).strip().lower()
    key = _DTYPE_SPELLINGS.get(key, key)
    if key not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)} (or float32 / bfloat16), got {name!r}")
    return key


def checkpoint_precision(path: str | Path) -> tuple[str, str]:
    """The precision ``auto`` picks for a checkpoint, and why (one phrase): ``gptq`` for a GPTQ folder
    (its own int4 / int8 layers), else one of fp32 / bf16 / int8 / int4."""
    import json  # noqa: PLC0415

    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        from ..checkpoint.gguf_file import GGUFFile  # noqa: PLC0415

        with GGUFFile(path) as f:
            counts: dict[str, int] = {}
            for name, info in f.tensors.items():
                if len(info.shape) == 2 and name != "token_embd.weight":  # the linears
                    counts[info.type_name] = counts.get(info.type_name, 0) + info.numel
        if not counts:
            return "fp32", "the file holds no linear layers"
        main = max(counts, key=counts.get)
        kinds = "/".join(sorted(counts, key=counts.get, reverse=True))
        if all(k in _FLOAT_GGML for k in counts):
            return _FLOAT_GGML[main], f"the file stores {kinds} weights"
        low = sum(n for k, n in counts.items() if k in _LOW_BIT_GGML)
        if low * 2 > sum(counts.values()):
            return "int4", f"the file stores {kinds} blocks, mostly 4 bits or fewer"
        return "int8", f"the file stores {kinds} blocks, mostly 5-8 bits"
    config = path / "config.json"
    try:
        hf = json.loads(config.read_text()) if config.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        hf = {}
    hf = hf if isinstance(hf, dict) else {}
    quant = hf.get("quantization_config")
    if isinstance(quant, dict) and quant.get("quant_method") == "gptq":
        return "gptq", f"a GPTQ checkpoint of {quant.get('bits', 4)} bits"
    stored = str(hf.get("torch_dtype") or hf.get("dtype") or "float32")
    if stored in ("bfloat16", "float16"):
        return "bf16", f"the checkpoint is {stored}"
    return "fp32", f"the checkpoint is {stored}"


def load_for_inference(path: str | Path, dtype: str = "auto", announce: bool = True) -> "Qwen":
    """Load a model for generation in ``dtype`` (see the module docstring; ``auto``: the checkpoint's own,
    :func:`checkpoint_precision`). ``announce``: print the precision and its reason to stderr."""
    import sys  # noqa: PLC0415

    from ..checkpoint import load_model  # noqa: PLC0415
    from ..train.cpu_matmul import bf16_products_preferred  # noqa: PLC0415
    from .arena import pack_decode_weights  # noqa: PLC0415
    from .quant import (Int8Linear, optimise_for_decode, quantize_embedding, quantize_int4,  # noqa: PLC0415
                        quantize_int8)

    path = Path(path).expanduser()
    dtype = normalise_dtype(dtype)
    auto, why = checkpoint_precision(path)
    if auto == "gptq":
        if dtype not in ("auto", "int4", "int8"):
            raise ValueError(f"{path} is a GPTQ checkpoint and runs as stored; drop --dtype {dtype}")
        from .gptq_format import load_gptq  # noqa: PLC0415

        model = load_gptq(path)
        precision = auto
    else:
        precision = auto if dtype == "auto" else dtype
        if dtype not in ("auto", auto):
            why = f"--dtype {dtype}; auto would pick {auto}: {why}"
        is_gguf = path.is_file() and path.suffix == ".gguf"
        if is_gguf and precision in ("int4", "int8"):
            from ..checkpoint.gguf import load_gguf  # noqa: PLC0415
            from .gguf_quant import block_embedding_builder, int4_builder, int8_builder  # noqa: PLC0415

            # an untied head leaves the embedding to itself: kept in the file's blocks when they are small
            model = load_gguf(path, dtype="fp32", linear_builder=int4_builder if precision == "int4" else int8_builder,
                              embedding_builder=block_embedding_builder)
            if not isinstance(model.lm_head, Int8Linear):  # a tied head: an int8 copy of the embedding
                model.lm_head = Int8Linear(model.lm_head.weight, None)
        else:
            model = load_model(path, dtype="bf16" if precision == "bf16" else "fp32")
            if precision == "int8":
                quantize_int8(model)
            elif precision == "int4":
                quantize_int4(model)
            else:
                optimise_for_decode(model)
        if precision in ("int4", "int8"):
            quantize_embedding(model)  # int8 rows, shared with a tied head: no fp32 copy of the vocabulary
    pack_decode_weights(model)
    release_freed_memory()
    bf16_products = bf16_products_preferred()  # a bad OPENQWEN_PREFILL_PRODUCTS fails here, before any prompt
    if announce:
        print(f"openqwen: {path.name} runs in {precision} ({why}; --dtype overrides)", file=sys.stderr)
        if bf16_products and precision in ("int4", "int8"):
            print("openqwen: long prompts multiply in bf16 on this CPU (native bf16 dot products; "
                  "OPENQWEN_PREFILL_PRODUCTS=fp32 keeps fp32)", file=sys.stderr)
    model.precision = precision
    return model.eval()


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc's ``malloc_trim``; elsewhere nothing). A load
    dequantises and re-rounds one layer at a time, and glibc keeps those freed temporaries mapped: on
    the q4_k_m Qwen2.5-0.5B at int4 that held 190-390 MB of resident memory after the load, for good."""
    import ctypes  # noqa: PLC0415

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl, macOS): their allocators return memory themselves
        pass


def load_model_and_tokenizer(path: str | Path, dtype: str = "auto", tokenizer_path: str | Path | None = None,
                             long_context: dict[str, Any] | None = None) -> tuple["Qwen", Any]:
    """The model in ``dtype`` (see :func:`load_for_inference`) and its tokenizer (from ``tokenizer_path``,
    else stored with the model); ``long_context``: overrides from :func:`long_context_from_args`."""
    from ..tokenizer import QwenTokenizer  # noqa: PLC0415

    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"model {path} does not exist; pass a model folder or a .gguf file")
    if tokenizer_path is not None and not Path(tokenizer_path).expanduser().exists():
        raise FileNotFoundError(f"tokenizer {tokenizer_path} does not exist; pass a tokenizer folder or file")
    model = load_for_inference(Path(path).expanduser(), dtype)
    if long_context:
        apply_long_context(model, long_context)
    tokenizer = QwenTokenizer.from_pretrained(Path(tokenizer_path or path).expanduser())
    return model, tokenizer


def set_threads(threads: int | None) -> None:
    """Use ``threads`` CPU threads for torch (None: torch's choice)."""
    if threads:
        import torch  # noqa: PLC0415

        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ command-line flags
def _dtype_flag(text: str) -> str:
    try:
        return normalise_dtype(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every generating verb shares: ``--model``, ``--tokenizer``, ``--dtype``, ``--threads``."""
    parser.add_argument("--model", required=True,
                        help="model folder (openqwen / Hugging Face Qwen2 / first-generation) or .gguf file")
    parser.add_argument("--tokenizer", default=None, help="tokenizer path when it is not stored with the model")
    parser.add_argument("--dtype", default="auto", type=_dtype_flag, metavar="{" + ",".join(DTYPE_CHOICES) + "}",
                        help=DTYPE_HELP)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    add_long_context_arguments(parser)


# ------------------------------------------------------------------------------ long-context flags
ROPE_SCALING_HELP = ("RoPE past the training length: ntk (dynamic NTK as the first generation released it: alpha "
                     "1, 3, 7, 15 ... from each row's length), dynamic:F / yarn:F / linear:F (transformers' "
                     "rope_scaling with factor F; yarn and linear change every length), none (plain RoPE). "
                     "Default: what the checkpoint says")


def parse_rope_scaling(text: str) -> dict[str, Any]:
    """``--rope-scaling`` as QwenConfig fields: ntk, none, dynamic:F, yarn:F or linear:F."""
    kind, _, factor = text.strip().lower().partition(":")
    if kind in ("ntk", "none") and not factor:
        return {"use_dynamic_ntk": kind == "ntk", "rope_scaling": None}
    if kind in ("dynamic", "yarn", "linear") and factor:
        try:
            f = float(factor)
        except ValueError:
            f = 0.0
        if f >= 1:
            return {"use_dynamic_ntk": False, "rope_scaling": {"rope_type": kind, "factor": f}}
    raise ValueError(f"--rope-scaling takes ntk, none, dynamic:F, yarn:F or linear:F with F >= 1, got {text!r}")


def parse_window_sizes(text: str, layers: int) -> list[int | None] | None:
    """``--window-sizes``: one window for every layer (``4096``), one per layer (``2048,2048,4096,null``),
    groups of layers (``4x2048,4x4096,16x8192``; ``null``/``full`` for full attention), or ``none``."""
    text = text.strip().lower()
    if text in ("none", "off"):
        return None

    def one(item: str) -> int | None:
        if item in ("null", "full"):
            return None
        value = int(item)
        if value < 1:
            raise ValueError
        return value

    try:
        items = [i.strip() for i in text.split(",") if i.strip()]
        if len(items) == 1 and "x" not in items[0]:
            return [one(items[0])] * layers
        sizes: list[int | None] = []
        for item in items:
            count, sep, size = item.partition("x")
            sizes += [one(size)] * int(count) if sep else [one(item)]
    except ValueError:
        raise ValueError(f"--window-sizes: expected W, W1,W2,... or NxW,... (positive token counts, null for "
                         f"full attention), got {text!r}") from None
    if len(sizes) != layers:
        raise ValueError(f"--window-sizes names {len(sizes)} layers; the model has {layers}")
    return sizes


def long_context_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The long-context flags that were given (raw: windows are resolved against the model's layers)."""
    out: dict[str, Any] = {}
    for flag in ("rope_scaling", "rope_update", "logn", "window_sizes", "attention_sinks", "seq_length", "kv_cache"):
        value = getattr(args, flag, None)
        if value is not None:
            out[flag] = value
    return out


def apply_long_context(model: "Qwen", settings: dict[str, Any]) -> None:
    """Set the long-context options of ``settings`` (from :func:`long_context_from_args`) on the loaded
    model; ValueError for a combination the config refuses."""
    fields: dict[str, Any] = {}
    if "rope_scaling" in settings:
        fields.update(parse_rope_scaling(settings["rope_scaling"]))
    if "rope_update" in settings:
        fields["rope_update"] = settings["rope_update"]
    if "logn" in settings:
        fields["use_logn_attn"] = bool(settings["logn"])
    if "window_sizes" in settings:
        fields["window_sizes"] = parse_window_sizes(settings["window_sizes"], model.config.num_hidden_layers)
    if "attention_sinks" in settings:
        fields["attention_sinks"] = int(settings["attention_sinks"])
    if "seq_length" in settings:
        fields["seq_length"] = int(settings["seq_length"])
    if "kv_cache" in settings:
        fields["kv_cache_dtype"] = settings["kv_cache"]
    model.config = model.config.replace(**fields)


def add_long_context_arguments(parser: argparse.ArgumentParser) -> None:
    """The long-context flags (each overrides the checkpoint's setting; docs/long-context.md)."""
    g = parser.add_argument_group(
        "long context", "inference-time context extension and the KV cache; each is a bit-exact no-op up to the "
        "training length (yarn/linear and --kv-cache int8 excepted). Example: --rope-scaling ntk --logn --window-sizes 4x2048,4x4096,24x8192")
    g.add_argument("--rope-scaling", default=None, metavar="SPEC", help=ROPE_SCALING_HELP)
    g.add_argument("--rope-update", default=None, choices=("prefill", "rotate", "stale"),
                   help="how a dynamic base follows decoding: prefill (the release: kept from the prompt), rotate "
                        "(re-decided as the text grows; cached keys re-rotated once per alpha step, so decoding "
                        "equals a full forward), stale (transformers: cached keys keep their base)")
    g.add_argument("--logn", default=None, action=argparse.BooleanOptionalAction,
                   help="LogN attention scaling past the training length (--no-logn switches a checkpoint's off)")
    g.add_argument("--window-sizes", default=None, metavar="LIST",
                   help="per-layer attention windows: W for all layers, W1,W2,... per layer, or NxW groups "
                        "(short low, long high, as the report); none: full attention")
    g.add_argument("--attention-sinks", type=int, default=None, metavar="N",
                   help="windowed layers also see the first N tokens (StreamingLLM); needs --window-sizes")
    g.add_argument("--seq-length", type=positive_int, default=None, metavar="S",
                   help="training length S where NTK and LogN switch on (default: the checkpoint's)")
    g.add_argument("--kv-cache", default=None, choices=("auto", "int8"),
                   help="KV-cache storage: auto (the model's dtype, default) or int8 (one scale per head and token: "
                        "3.8x less cache memory than fp32, 1.9x less than bf16, at a small quality cost; "
                        "docs/long-context.md). Windowed layers keep ring buffers either way")
