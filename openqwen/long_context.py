"""The long-context arithmetic of inference: RoPE bases and frequencies per row, LogN factors, window masks.

The report extends Qwen's context at inference time, without training, by three tricks; the release
shipped the first two, transformers ships the RoPE scalings of the Qwen2 family. This module holds their
formulas as plain functions, and :mod:`openqwen.model` applies them (per row, on every path):

* **dynamic NTK, as released** (``QwenConfig.use_dynamic_ntk``): for a row of true (unpadded) length
  ``L`` and training length ``S = seq_length``, ``alpha = max(2 ** ceil(log2(L / S) + 1) - 1, 1)`` (so 1
  up to S, then 3, 7, 15 ...) and the RoPE base becomes ``base * alpha ** (d / (d - 2))``
  (:func:`ntk_alpha`, computed with the release's own float expression, so the bucket edges are its).
* **transformers' ``rope_scaling``** (``QwenConfig.rope_scaling``, the Qwen2-family config.json
  spelling): ``linear`` (inverse frequencies / factor), ``dynamic`` (``base * ((factor * L / M) -
  (factor - 1)) ** (d / (d - 2))`` once L exceeds ``M = max_position_embeddings``) and ``yarn`` (the
  frequency ramp between beta_fast and beta_slow rotations, and cos/sin multiplied by the attention
  factor ``0.1 ln(factor) + 1``). ``linear`` and ``yarn`` are static, as in transformers and vLLM: they
  change the model at every length, short ones included.
* **LogN attention scaling** (``use_logn_attn``): the query at absolute position p (0-based) is
  multiplied by ``log(p + 1) / log(S)`` when ``p + 1 > S`` (:func:`logn_factors`).
* **layer-wise window attention** (``window_sizes``, ``attention_sinks``): a query at position p of a
  layer with window w sees keys at positions ``p - w < j <= p``, plus the first ``attention_sinks``
  positions of the sequence (StreamingLLM's sinks), which keep their absolute positions here
  (:func:`window_mask`).

Decoding past an alpha boundary (``QwenConfig.rope_update``): the release decides alpha once at prefill
and keeps it while decoding (``"prefill"``); transformers' dynamic RoPE rotates every new token with the
base of the current length but leaves cached keys with the base they were written with (``"stale"``);
openqwen's ``"rotate"`` updates the base as the row grows and re-rotates that row's cached keys to it
when it changes (:func:`rerotate`: once per boundary crossing for NTK's buckets), so cached decoding
equals a full forward over the whole sequence.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .config import ROPE_TYPES, ROPE_UPDATES  # noqa: F401 (re-exported: the names openqwen accepts)


# ------------------------------------------------------------------------------------ RoPE bases
def ntk_alpha(length: int, seq_length: int) -> float:
    """The release's dynamic-NTK alpha for a row of ``length`` tokens trained at ``seq_length``."""
    context_value = math.log(length / seq_length, 2) + 1  # the release's expression, float quirks included
    return max(2 ** math.ceil(context_value) - 1, 1)


def rope_type(config: Any) -> str:
    """The ``rope_scaling`` type of ``config`` (``"default"`` when unset)."""
    scaling = config.rope_scaling or {}
    return str(scaling.get("rope_type", scaling.get("type", "default")))


def is_dynamic(config: Any) -> bool:
    """The RoPE base depends on each row's length (dynamic NTK or transformers' dynamic scaling)."""
    return bool(config.use_dynamic_ntk) or rope_type(config) == "dynamic"


def rope_base(config: Any, length: int) -> float:
    """The RoPE base for a row of ``length`` tokens (the configured base unless scaling is dynamic)."""
    base, d = float(config.rope_theta), config.head_dim
    if config.use_dynamic_ntk:
        return base * ntk_alpha(length, config.seq_length) ** (d / (d - 2))
    if rope_type(config) == "dynamic":
        factor = float(config.rope_scaling["factor"])
        top = config.max_position_embeddings
        length = max(length, top)
        return base * ((factor * length / top) - (factor - 1)) ** (d / (d - 2))
    return base


def inverse_frequencies(config: Any, base: float, device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim / 2] in fp32, the cos/sin multiplier) of RoPE with ``base``.

    theta_i = base^(-2i/d) in fp32 (bf16 frequencies visibly hurt long positions); ``linear`` divides by
    the factor, ``yarn`` blends interpolated and original frequencies as transformers does.
    """
    d = config.head_dim
    exponents = torch.arange(0, d, 2, dtype=torch.float32, device=device) / d
    powers = base**exponents
    kind = rope_type(config)
    if kind in ("default", "dynamic"):
        return 1.0 / powers, 1.0
    scaling = config.rope_scaling
    if kind == "linear":
        return (1.0 / powers) / float(scaling["factor"]), 1.0
    return _yarn(config, scaling, base, powers, device)


def _yarn(config: Any, scaling: dict, base: float, powers: torch.Tensor, device) -> tuple[torch.Tensor, float]:
    """YaRN's frequencies and attention factor with transformers' defaults (beta_fast 32, beta_slow 1,
    truncated correction range, mscale 0.1 ln(factor) + 1)."""
    d = config.head_dim
    original = scaling.get("original_max_position_embeddings") or config.max_position_embeddings
    factor = scaling.get("factor")
    factor = float(factor) if factor is not None else config.max_position_embeddings / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = scaling.get("attention_factor")
    if attention is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all else mscale(factor)
    fast, slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times over `original`
        return (d * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(fast), correction_dim(slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low), 0, 1).to(device)
    keep = 1 - ramp  # 1: the original (extrapolated) frequency, 0: the interpolated one
    inv_freq = (1.0 / (factor * powers)) * (1 - keep) + (1.0 / powers) * keep
    return inv_freq, float(attention)


# ------------------------------------------------------------------------------------ LogN
_LOGN_TABLES: dict[int, torch.Tensor] = {}


def logn_table(seq_length: int, size: int) -> torch.Tensor:
    """The release's LogN factors of positions 0..size-1 as fp32 (``math.log(p + 1, S)`` past S, else 1),
    grown by doubling and kept per S."""
    table = _LOGN_TABLES.get(seq_length)
    if table is None or table.shape[0] < size:
        n = max(size, 2 * (table.shape[0] if table is not None else 0), 1024)
        table = torch.tensor([math.log(i, seq_length) if i > seq_length else 1 for i in range(1, n + 1)],
                             dtype=torch.float32)
        _LOGN_TABLES[seq_length] = table
    return table


def logn_factors(positions: torch.Tensor, seq_length: int) -> torch.Tensor | None:
    """Query multipliers [B, T] for absolute ``positions`` [B, T]; None when every one is 1 (no position
    past S), so short inputs take exactly the unscaled path."""
    top = int(positions.max()) + 1
    if top <= seq_length:
        return None
    return logn_table(seq_length, top).to(positions.device)[positions]


# ------------------------------------------------------------------------------------ windows
def window_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, window: int, sinks: int) -> torch.Tensor:
    """[B, 1, T, K] boolean: which keys (absolute positions [B or 1, K]) a query (positions [B, T]) of a
    layer with ``window`` may see, causality included: ``j <= p`` and (``p - j < window`` or ``j < sinks``)."""
    q = query_pos[:, :, None]
    k = key_pos[:, None, :]
    return ((k <= q) & ((q - k < window) | (k < sinks)))[:, None]


def window_binds(window: int | None, longest: int) -> bool:
    """Whether a window changes anything for sequences of at most ``longest`` positions (w < longest)."""
    return window is not None and window < longest


# ------------------------------------------------------------------------------------ re-rotation
def rerotate_slots(cache, layer: int, row: int, slots: torch.Tensor, old: tuple[torch.Tensor, torch.Tensor],
                   new: tuple[torch.Tensor, torch.Tensor], apply_rope) -> None:
    """:func:`rerotate` for the keys of ``slots`` of one row and layer of a KV cache (cos/sin tables of the
    positions those slots hold); int8 keys are dequantized, turned and rounded again."""
    from .kv_cache import dequantize_int8, quantize_int8  # noqa: PLC0415 (kv_cache imports nothing of ours)

    keys = cache.keys[layer][row][:, slots]  # [Hkv, n, D]
    if cache.quantized:
        keys = dequantize_int8(keys, cache.key_scales[layer][row][:, slots], torch.float32)
    turned = apply_rope(apply_rope(keys[None].float(), old[0], -old[1]), new[0], new[1])[0]
    if cache.quantized:
        q, scale = quantize_int8(turned)
        cache.keys[layer][row][:, slots] = q
        cache.key_scales[layer][row][:, slots] = scale
    else:
        cache.keys[layer][row][:, slots] = turned.to(cache.keys[layer].dtype)


def rerotate(keys: torch.Tensor, length: int, old: tuple[torch.Tensor, torch.Tensor],
             new: tuple[torch.Tensor, torch.Tensor], apply_rope) -> None:
    """Turn cached keys [Hkv, >= length, D] of one row from the angles ``old`` (cos, sin [1, 1, length, D])
    to ``new`` in place: undo the old rotation (rotate by -angle), then apply the new one, both in fp32
    with the same tables a full forward computes."""
    k = keys[None, :, :length]
    raw = apply_rope(k, old[0], -old[1])
    keys[:, :length] = apply_rope(raw, new[0], new[1])[0]
