"""Model configuration and named presets.

One dataclass, :class:`QwenConfig`, describes every model of the family: the first generation of the
Qwen Technical Report (plain multi-head attention, untied head) and the Qwen1.5 / 2 / 2.5 checkpoints
(grouped-query attention, tied embeddings in small sizes). Field names follow the Hugging Face
``Qwen2Config`` where one exists, so that ``config.json`` maps across with few surprises.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


LONG_CONTEXT_FIELDS = ("use_dynamic_ntk", "use_logn_attn", "window_sizes", "attention_sinks", "rope_scaling",
                       "rope_update", "kv_cache_dtype")
"""The inference-time long-context options (see :mod:`openqwen.long_context` and docs/long-context.md)."""
ROPE_TYPES = ("default", "linear", "dynamic", "yarn")
ROPE_UPDATES = ("prefill", "rotate", "stale")
KV_CACHE_DTYPES = ("auto", "int8")


@dataclass
class QwenConfig:
    """Shape and numerics of a Qwen decoder.

    The defaults are those of the report's 7B model (first generation).
    """

    vocab_size: int = 151936
    """Rows of the embedding and the output head (padded above the tokenizer's ids)."""
    hidden_size: int = 4096
    intermediate_size: int = 11008
    """Width of *one* SwiGLU branch (the first-generation config.json stores twice this)."""
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    """Grouped-query attention: heads that share one key/value head. None means plain MHA."""
    head_dim: int | None = None
    """Per-head width; None means hidden_size // num_attention_heads (128 for the paper sizes)."""
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = True
    """Bias in the query/key/value projections only (the report: no other biases)."""
    tie_word_embeddings: bool = False
    """Share the input embedding with the output head (Qwen2.5 small sizes); the report unties them."""
    max_position_embeddings: int = 32768
    """Largest position the model is asked to handle (sizes caches; RoPE has no table to outgrow)."""
    seq_length: int = 2048
    """Training context length S: dynamic NTK and LogN scaling switch on past it."""
    dropout: float = 0.0
    """Dropout on attention probabilities and residual branches during training (SFT used 0.1)."""
    initializer_range: float = 0.02

    # Long-context inference options (docs/long-context.md). Each is an exact no-op up to seq_length
    # tokens (window sizes up to their own length), except the static rope_scaling types linear / yarn,
    # which change every length as they do in transformers. They apply in training mode too.
    use_dynamic_ntk: bool = False
    """Dynamic NTK-aware RoPE as released: per row, alpha = max(2^ceil(log2(L/S) + 1) - 1, 1) from the
    row's true length L, base' = base * alpha^(d/(d-2)). The first generation's config sets it."""
    use_logn_attn: bool = False
    """LogN attention scaling as released: the query at position p times log(p+1)/log(S) when p+1 > S."""
    window_sizes: list[int | None] | None = None
    """Per-layer attention window in tokens (None: full attention everywhere; a None entry: that layer
    full). The report's scheme is short windows in low layers and long ones in high layers."""
    attention_sinks: int = 0
    """Windowed layers also always see the first N positions (StreamingLLM's sinks). Needs windows."""
    rope_scaling: dict[str, Any] | None = None
    """transformers' ``rope_scaling`` (Qwen2-family config.json): {"rope_type": "linear" | "dynamic" |
    "yarn", "factor": F, ...}; yarn reads original_max_position_embeddings, beta_fast, beta_slow,
    attention_factor, mscale, mscale_all_dim, truncate with transformers' defaults."""
    rope_update: str = "prefill"
    """How a dynamic RoPE base (use_dynamic_ntk, or rope_scaling dynamic) follows a row while decoding:
    "prefill" (the release: decided by each multi-token step - prefill, scoring - from the row's length,
    kept by single-token decode steps), "rotate" (ours: follows every step; cached keys are re-rotated
    when it changes, so decoding equals a full forward), "stale" (transformers: new tokens use the
    current length's base, cached keys keep the base they were written with)."""
    kv_cache_dtype: str = "auto"
    """How the KV cache stores keys and values: "auto" (the model's dtype) or "int8" (one fp32 scale per
    head and token: 3.8x less memory than fp32 at head_dim 64, 1.9x less than bf16; see
    :mod:`openqwen.kv_cache`). Read by ``Qwen.new_cache``; not a no-op at any length (rounding)."""

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        self._validate_long_context()

    def _validate_long_context(self) -> None:
        """ValueError, saying what to fix, for long-context settings that cannot run."""
        ws = self.window_sizes
        if ws is not None:
            if not isinstance(ws, (list, tuple)) or len(ws) != self.num_hidden_layers:
                raise ValueError(f"window_sizes needs one entry per layer ({self.num_hidden_layers}), got {ws!r}; "
                                 "use null for a layer with full attention")
            if any(w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 1) for w in ws):
                raise ValueError(f"window_sizes entries must be positive token counts or null (full attention), "
                                 f"got {ws!r}")
            self.window_sizes = list(ws)
        if not isinstance(self.attention_sinks, int) or self.attention_sinks < 0:
            raise ValueError(f"attention_sinks must be a whole number >= 0, got {self.attention_sinks!r}")
        if self.attention_sinks and not any(w is not None for w in (ws or [])):
            raise ValueError("attention_sinks only acts beside windows: set window_sizes too (or attention_sinks 0)")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv_cache_dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {self.kv_cache_dtype!r}")
        if self.rope_update not in ROPE_UPDATES:
            raise ValueError(f"rope_update must be one of {', '.join(ROPE_UPDATES)}, got {self.rope_update!r}")
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict):
            raise ValueError(f"rope_scaling must be a mapping like {{'rope_type': 'yarn', 'factor': 4.0}}, got {rs!r}")
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ValueError(f"rope_scaling type {kind!r} is not implemented; use one of {', '.join(ROPE_TYPES)}")
        factor = rs.get("factor")
        if kind in ("linear", "dynamic") or (kind == "yarn" and factor is not None):
            if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor < 1:
                raise ValueError(f"rope_scaling {kind} needs a factor >= 1, got {factor!r}")
        if kind != "default" and self.use_dynamic_ntk:
            raise ValueError(f"use_dynamic_ntk and rope_scaling {kind!r} both rescale RoPE; choose one")

    # ---------------------------------------------------------------- derived sizes
    @property
    def num_parameters(self) -> int:
        """Parameter count (the embedding counted once when tied)."""
        d, h, kv, hd = self.hidden_size, self.num_attention_heads, self.num_key_value_heads, self.head_dim
        attn = d * (h + 2 * kv) * hd + (h + 2 * kv) * hd * self.qkv_bias + h * hd * d
        mlp = 3 * d * self.intermediate_size
        per_layer = attn + mlp + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * per_layer + emb + d

    def flops_per_token(self, context: int | None = None) -> float:
        """Training FLOPs per token (forward + backward = 6N plus attention), as in PaLM's MFU."""
        ctx = self.seq_length if context is None else context
        attn = 12 * self.num_hidden_layers * self.num_attention_heads * self.head_dim * ctx
        return 6 * self.num_parameters + attn

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QwenConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown QwenConfig fields: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "QwenConfig":
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


# ------------------------------------------------------------------------------------ presets
def _paper(hidden: int, heads: int, layers: int, ffn: int, vocab: int, **kw: Any) -> QwenConfig:
    return QwenConfig(
        vocab_size=vocab, hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=layers,
        intermediate_size=ffn, **kw,
    )


PRESETS: dict[str, QwenConfig] = {
    # The report's first generation: MHA, head dim 128, untied, RoPE base 10000, trained at 2048.
    "qwen-1.8b": _paper(2048, 16, 24, 5504, 151936),
    "qwen-7b": _paper(4096, 32, 32, 11008, 151936),
    "qwen-14b": _paper(5120, 40, 40, 13696, 152064),
    "qwen-72b": _paper(8192, 64, 80, 24576, 152064, rope_theta=1e6, seq_length=32768),
    # Qwen2.5 (same family, Hugging Face Qwen2 layout): GQA and tied embeddings.
    "qwen2.5-0.5b": QwenConfig(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, rope_theta=1e6, tie_word_embeddings=True,
        seq_length=32768, max_position_embeddings=32768,
    ),
    # Nano sizes for CPU work. Small vocabularies suit tokenizers trained on the demo corpus; the
    # embedding is tied so that parameters go to the transformer rather than the vocabulary.
    "nano-1m": QwenConfig(
        vocab_size=4096, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
        num_attention_heads=4, tie_word_embeddings=True, seq_length=256, max_position_embeddings=2048,
    ),
    "nano-10m": QwenConfig(
        vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=8,
        num_attention_heads=8, tie_word_embeddings=True, seq_length=512, max_position_embeddings=4096,
    ),
    "nano-50m": QwenConfig(
        vocab_size=16384, hidden_size=512, intermediate_size=1376, num_hidden_layers=12,
        num_attention_heads=8, tie_word_embeddings=True, seq_length=1024, max_position_embeddings=8192,
    ),
}


def get_preset(name: str, **overrides: Any) -> QwenConfig:
    """A copy of the named preset with ``overrides`` applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
