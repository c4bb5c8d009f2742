"""The Qwen decoder in one file.

A LLaMA-like pre-norm transformer as the report describes it: untied (or, for small Qwen2.5 sizes,
tied) embedding and output head; rotary position embeddings with fp32 inverse frequencies in the
rotate-half layout; bias only in the query/key/value projection; RMSNorm computed in fp32; SwiGLU.
Grouped-query attention covers Qwen1.5/2/2.5. Nothing here knows about parallelism, mixed precision
or compilation: those are applied from outside (``openqwen.train``).

Long context (docs/long-context.md): :meth:`Qwen.rope_tables` gives each row the RoPE base of its true
length (dynamic NTK as released, or transformers' rope_scaling), re-rotating a row's cached keys when
``rope_update="rotate"`` moves its base; LogN multiplies the rotated queries past ``seq_length``;
:meth:`Qwen._layer_masks` gives windowed layers (with sinks) their own mask. The formulas are in
:mod:`openqwen.long_context`; with every option off, or a sequence within ``seq_length``, the code takes
exactly the plain path.

The KV cache (ring buffers for windowed layers, int8 storage) is :mod:`openqwen.kv_cache`.

Reading order: RMSNorm -> rotary helpers -> Attention -> MLP -> Block -> Qwen.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import long_context as lc
from .config import QwenConfig
from .kv_cache import KVCache

__all__ = ["KVCache", "Qwen", "QwenConfig", "RMSNorm", "apply_rope", "rope_cos_sin", "rope_inverse_frequencies"]


class RMSNorm(nn.Module):
    """Root-mean-square norm: statistics in fp32, the weight applied in the input dtype (as released)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# --------------------------------------------------------------------------------------- rotary
def rope_inverse_frequencies(head_dim: int, base: float, device: torch.device | None = None) -> torch.Tensor:
    """theta_i = base^(-2i/d), always in fp32 (bf16 frequencies visibly hurt long positions)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim
    return 1.0 / (base**exponents)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape [B, 1, T, head_dim] for integer positions [B, T]."""
    angles = positions.float()[..., None] * inv_freq  # [B, T, d/2]
    angles = torch.cat((angles, angles), dim=-1)  # rotate-half layout: first half pairs with second
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, H, T, D] by the angles in cos/sin, computed in fp32 and returned in x's dtype."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


# ------------------------------------------------------------------------------------ the layers
class Attention(nn.Module):
    def __init__(self, config: QwenConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        qkv_width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        # One fused projection (one matmul) for Q | K | V; checkpoints are split/joined on load/save.
        self.qkv_proj = nn.Linear(config.hidden_size, qkv_width, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        q_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``q_scale`` [B, 1, T, 1]: LogN multipliers of the rotated queries (None: none)."""
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x).split(
            [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim, self.num_kv_heads * self.head_dim],
            dim=-1,
        )
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if q_scale is not None:
            q = q * q_scale.to(q.dtype)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            is_causal=mask is None and T > 1 and k.shape[2] == T,
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); gate and up fused into one matmul."""

    def __init__(self, config: QwenConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: QwenConfig, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, mask, cache, q_scale=None):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, q_scale))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


# ------------------------------------------------------------------------------------- the model
class Qwen(nn.Module):
    """A Qwen causal language model. ``forward`` returns logits [B, T, vocab] as a plain tensor."""

    def __init__(self, config: QwenConfig) -> None:
        """A randomly initialised model (the release's init, see :meth:`init_weights`).

        Built under ``torch.device("meta")`` it has shapes only and no init runs: that is how loaders
        make the skeleton they assign a checkpoint's tensors into. Skipping it on meta is not only
        free, it avoids the first ``normal_`` on meta, which imports torch's reference decompositions
        (seconds per process).
        """
        super().__init__()
        self.config = config
        on_meta = torch.get_default_device().type == "meta"
        # nn.Embedding's own reset is a normal_; given a weight, it skips it (the init below redoes it)
        skeleton = torch.empty(config.vocab_size, config.hidden_size) if on_meta else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, _weight=skeleton)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if not on_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The release's init: N(0, 0.02) everywhere, N(0, 0.02/sqrt(2L)) for the residual outputs."""
        std = self.config.initializer_range
        out_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, out_std)
            else:
                p.normal_(0.0, std)

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segment_ids: torch.Tensor | None = None,
        num_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, T, hidden] (reward and value heads read these).

        positions: absolute positions [B, T]; by default 0..T-1, or continuing each cache row.
        segment_ids: [B, T] ids of packed documents; attention stays inside each one (training).
        num_tokens: [B] real new tokens of each row of a right-padded batch (default: all T). Dynamic
        RoPE decides each row's base from its true length, and the cache advances by it.
        """
        B, T = input_ids.shape
        if positions is None:
            positions = cache.default_positions(T) if cache is not None else torch.arange(
                T, device=input_ids.device
            ).expand(B, T)
        mask = None
        if cache is not None:
            if segment_ids is not None:
                raise ValueError("segment_ids (packed training) and a KV cache cannot be combined")
            if not cache.fits(self.cache_layout(cache.max_length)):
                raise ValueError(f"this KV cache was laid out for {cache.layout} (windows with a ring, sinks, kv "
                                 f"dtype); the model now wants {self.cache_layout(cache.max_length)}: allocate a "
                                 "new cache (model.new_cache) after changing window_sizes, attention_sinks or "
                                 "kv_cache_dtype")
            mask = cache.prepare(T, num_tokens)
        elif segment_ids is not None:
            causal = torch.ones(T, T, dtype=torch.bool, device=input_ids.device).tril()
            mask = (causal & (segment_ids[:, :, None] == segment_ids[:, None, :]))[:, None]
        cos, sin = self.rope_tables(positions, cache, num_tokens)
        q_scale = None
        if self.config.use_logn_attn:
            factors = lc.logn_factors(positions, self.config.seq_length)
            q_scale = None if factors is None else factors[:, None, :, None]
        masks = self._layer_masks(mask, positions, cache, T)
        x = self.embed_tokens(input_ids)
        for layer, layer_mask in zip(self.layers, masks):
            x = layer(x, cos, sin, layer_mask, cache, q_scale)
        if cache is not None:
            if num_tokens is None:
                cache.advance(T)
            else:
                cache.lengths += num_tokens.to(cache.lengths.device)
        return self.norm(x)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        segment_ids: torch.Tensor | None = None,
        num_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids, positions, cache, segment_ids, num_tokens))

    # ------------------------------------------------------------------------------ long context
    def rope_tables(self, positions: torch.Tensor, cache: KVCache | None = None,
                    num_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [B, 1, T, head_dim] for ``positions`` [B, T]. With dynamic RoPE (dynamic NTK or
        rope_scaling dynamic) each row gets the base of its true length - the largest position + 1, or
        the cache row's length after this step - kept or re-rotated as ``config.rope_update`` says."""
        cfg = self.config
        if not lc.is_dynamic(cfg):
            inv_freq, scale = lc.inverse_frequencies(cfg, float(cfg.rope_theta), positions.device)
            cos, sin = rope_cos_sin(positions, inv_freq)
            return (cos, sin) if scale == 1.0 else (cos * scale, sin * scale)
        B, T = positions.shape
        if cache is None:
            bases = [lc.rope_base(cfg, n) for n in (positions.max(-1).values + 1).tolist()]
        else:
            new = torch.full((B,), T) if num_tokens is None else num_tokens.cpu()
            after = (cache.lengths.cpu() + new).tolist()
            stored = cache.rope_bases.tolist()
            keep = cfg.rope_update == "prefill" and T == 1  # the release: decode steps keep the prefill's alpha
            bases = [old if keep and old else lc.rope_base(cfg, n) for old, n in zip(stored, after)]
            if cfg.rope_update != "stale":
                self._rerotate_cache(cache, stored, bases)
            cache.rope_bases.copy_(torch.tensor(bases, dtype=torch.float64))
        return self._tables_for_bases(positions, bases)

    def _inv_freq(self, base: float, device) -> torch.Tensor:
        return lc.inverse_frequencies(self.config, base, device)[0]

    def _tables_for_bases(self, positions: torch.Tensor, bases: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(set(bases)) == 1:  # one base for the batch: the same arithmetic as unscaled RoPE
            return rope_cos_sin(positions, self._inv_freq(bases[0], positions.device))
        inv = torch.stack([self._inv_freq(b, positions.device) for b in bases])  # [B, d/2]
        return rope_cos_sin(positions, inv[:, None, :])

    @torch.no_grad()
    def _rerotate_cache(self, cache: KVCache, stored: list[float], bases: list[float]) -> None:
        """Re-rotate the cached keys of every row whose base changes (rare: once per NTK bucket); a ring
        layer's slots by the positions they hold, int8 keys re-rounded."""
        for row, (old, new) in enumerate(zip(stored, bases)):
            n = int(cache.lengths[row])
            if not old or old == new or n == 0:
                continue
            done: dict[int | None, tuple] = {}
            for layer in range(len(cache.keys)):
                w = cache.windows[layer]
                if w not in done:
                    pos = cache.held_positions(layer, n)
                    done[w] = (cache.slot_of(layer, pos), self._tables_for_bases(pos[None], [old]),
                               self._tables_for_bases(pos[None], [new]))
                slots, before, after = done[w]
                lc.rerotate_slots(cache, layer, row, slots, before, after, apply_rope)

    def _layer_masks(self, mask: torch.Tensor | None, positions: torch.Tensor, cache: KVCache | None,
                     T: int) -> list[torch.Tensor | None]:
        """The attention mask of each layer: ``mask`` where full attention (or a window too wide to
        bind), else the window mask (with sinks) and ``mask`` together."""
        windows = self.config.window_sizes or [None] * len(self.layers)
        if cache is not None:  # cache slots are positions (full layers)
            query_pos = cache.default_positions(T)
            key_pos = torch.arange(cache._used, device=positions.device)[None]
        else:
            query_pos, key_pos = positions, positions
        longest = int(query_pos.max()) + 1
        built: dict[int, torch.Tensor] = {}
        rings: dict[int, torch.Tensor] = {}
        out = []
        for i, w in enumerate(windows):
            if cache is not None and cache.is_ring(i):  # the ring, then the new keys, by true positions
                if w not in rings:
                    rings[w] = lc.window_mask(query_pos, cache.ring_key_positions(w), w, self.config.attention_sinks)
                out.append(rings[w])
                continue
            if not lc.window_binds(w, longest):
                out.append(mask)
                continue
            if w not in built:
                wm = lc.window_mask(query_pos, key_pos, w, self.config.attention_sinks)
                built[w] = wm if mask is None else wm & mask
            out.append(built[w])
        return out

    # ------------------------------------------------------------------------------ conveniences
    def new_cache(self, batch_size: int, max_length: int, ring: bool = True) -> KVCache:
        """A KV cache on this model's device and dtype (int8 storage when ``config.kv_cache_dtype`` says
        so); windowed layers get ring buffers unless ``ring=False``."""
        p = self.norm.weight  # the activations' dtype (a quantised model's embedding rows are int8)
        return KVCache(self.config, batch_size, max_length, dtype=p.dtype, device=p.device, ring=ring,
                       kv_dtype=self.config.kv_cache_dtype)

    def cache_layout(self, max_length: int) -> tuple:
        """The :attr:`KVCache.layout` a cache of ``max_length`` needs for this model's current config
        (a cache built with ``ring=False`` has no rings and is accepted as the dense reference)."""
        cfg = self.config
        windows = cfg.window_sizes or [None] * cfg.num_hidden_layers
        rings = tuple(w if w is not None and cfg.attention_sinks + w < max_length else None for w in windows)
        return rings, cfg.attention_sinks, cfg.kv_cache_dtype

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
