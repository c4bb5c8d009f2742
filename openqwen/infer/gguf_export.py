"""A quantised model written as a GGUF file (the ``gguf`` package's writer), for llama.cpp and other readers.

The grids of :mod:`openqwen.infer.gptq` were chosen so that two GGUF block types hold them exactly:

* int4, symmetric, groups of 32 -> ``Q4_0``: per block of 32 an fp16 ``d`` and 16 bytes of codes
  (byte j: input j in the low nibble, input j + 16 in the high one), ``w = d * (q - 8)``: our scale is
  ``d`` and our codes are ``q``;
* int8 (one scale per row) -> ``Q8_0``: per block of 32 an fp16 ``d`` and 32 int8 values, ``w = d * q``:
  every block of a row takes the row's scale, the codes minus 128.

So the file dequantises (with ``gguf.quants.dequantize``) to exactly our weights. The embedding, the
norms and biases are F32; an untied output head is Q8_0 of its float weight. The metadata is the
``qwen2`` architecture's, the vocabulary that of our tokenizer (byte-level BPE: tokens, types, merges).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint.gguf import GGUF_NAMES
from ..model import Qwen
from ..tokenizer.chat import CHAT_TEMPLATE_JINJA
from .gptq import QuantFormat, QuantizedWeight, quantize_rtn
from .gptq_format import FUSED_PARTS, module_weights

BLOCK = 32


def check_gguf_format(fmt: QuantFormat) -> None:
    """ValueError unless ``fmt`` is a grid Q4_0 / Q8_0 blocks hold exactly."""
    if fmt.bits == 4 and (fmt.group_size != BLOCK or not fmt.symmetric):
        raise ValueError("--format gguf writes int4 as Q4_0 blocks: use --group-size 32 without --asym")


def q4_0_bytes(qw: QuantizedWeight) -> np.ndarray:
    """Q4_0 blocks [rows, in / 32 * 18] of a symmetric group-32 int4 weight (zero points 8)."""
    if qw.bits != 4 or qw.group_size != BLOCK or not torch.all(qw.zeros == 8):
        raise ValueError("Q4_0 holds symmetric int4 in groups of 32 (zero point 8) only")
    rows, cols = qw.q.shape
    codes = qw.q.numpy().reshape(rows, cols // BLOCK, 2, BLOCK // 2)
    packed = (codes[:, :, 0] | (codes[:, :, 1] << 4)).astype(np.uint8)
    d = qw.scales.numpy().astype(np.float16).reshape(rows, cols // BLOCK, 1).view(np.uint8)
    return np.concatenate([d, packed], axis=2).reshape(rows, -1)


def q8_0_bytes(qw: QuantizedWeight) -> np.ndarray:
    """Q8_0 blocks [rows, in / 32 * 34] of a per-row int8 weight (zero point 128)."""
    if qw.bits != 8 or not torch.all(qw.zeros == 128):
        raise ValueError("Q8_0 holds symmetric int8 only")
    rows, cols = qw.q.shape
    values = (qw.q.numpy().astype(np.int16) - 128).astype(np.int8).reshape(rows, cols // BLOCK, BLOCK)
    scale = np.repeat(qw.scales.numpy()[:, :1], cols // BLOCK, axis=1).astype(np.float16).reshape(rows, -1, 1)
    return np.concatenate([scale.view(np.uint8), values.view(np.uint8)], axis=2).reshape(rows, -1)


def _vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """GGUF tokens, token types (1 normal, 3 control, 5 unused padding) and merges of our tokenizer."""
    hf = tokenizer.to_hf_tokenizer_json()
    tokens: list[str | None] = [None] * vocab_size
    types = [1] * vocab_size
    for text, i in hf["model"]["vocab"].items():
        if i < vocab_size:
            tokens[i] = text
    for added in hf.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]], types[added["id"]] = added["content"], 3
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i], types[i] = f"[PAD{i}]", 5
    merges = [m if isinstance(m, str) else " ".join(m) for m in hf["model"]["merges"]]
    return tokens, types, merges


def write_gguf(model: Qwen, path: str | Path, tokenizer: Any, source: Any = None) -> Path:
    """Write ``model`` (every block linear packed int4 g32 symmetric or int8 by :func:`pack_model`) to ``path``."""
    import gguf  # noqa: PLC0415

    c = model.config
    path = Path(path)
    names = GGUF_NAMES["qwen2"].plan(c)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_name(f"openqwen quantised {Path(str(source)).name if source else 'model'}")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    tokens, types, merges = _vocabulary(tokenizer, c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(tokenizer.eos_id)
    w.add_bos_token_id(tokenizer.eos_id)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE_JINJA)  # readers that format chats (llama.cpp's) use our template

    def f32(name: str, t: torch.Tensor) -> None:
        w.add_tensor(name, t.detach().float().contiguous().numpy())

    def blocks(name: str, qw: QuantizedWeight) -> None:
        if qw.bits == 4:
            w.add_tensor(name, q4_0_bytes(qw), raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            w.add_tensor(name, q8_0_bytes(qw), raw_dtype=gguf.GGMLQuantizationType.Q8_0)

    state = model.state_dict()
    for ours, parts in names.items():
        prefix = ours.removesuffix(".weight")
        if ours.startswith("layers.") and ours.endswith(".weight") and ".".join(prefix.split(".")[2:]) in FUSED_PARTS:
            qw = module_weights(model.get_submodule(prefix), prefix)
            start = 0
            for name, shape in parts:
                blocks(name, qw.rows(start, start + shape[0]))
                start += shape[0]
        elif ours == "lm_head.weight":
            head = model.lm_head
            weight = head._dense() if hasattr(head, "_dense") else head.weight
            blocks(parts[0][0], quantize_rtn(weight, QuantFormat(8)))
        else:
            tensor = state[ours]
            start = 0
            for name, shape in parts:
                f32(name, tensor[start : start + shape[0]])
                start += shape[0]
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
