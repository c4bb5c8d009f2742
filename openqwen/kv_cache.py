"""The KV cache of cached decoding: one row per sequence, ring buffers for windowed layers, int8 storage.

Rows. Each sequence owns one row and its own length, so sequences of different lengths share a batch
without left padding (and without the position shift that left padding caused in the release). A caller
that right-pads a batched prefill passes each row's real token count (``num_tokens``): the cache
advances by it, and the padded tokens never overwrite a ring slot a row still needs.

Full-attention layers store position p in slot p: ``max_length`` slots per row.

Windowed layers (``QwenConfig.window_sizes``) keep only what they can still see. A layer with window w
and ``attention_sinks`` = s has ``s + w`` slots per row (fewer when ``max_length`` is smaller): position
p lives in slot p when p < s (the sinks), else in slot ``s + (p - s) mod w``. So its memory stops growing
at s + w positions, whatever the context. Attention of a step reads the ring as it was before the step
(each slot's position is known from the row's length, :meth:`KVCache.slot_positions`), followed by the
step's new keys; the model masks them by true positions (window, sinks, causality, empty slots), which is
exactly the dense masked attention over the same keys (tests/test_kv_cache.py). Then the new keys are
written, only each row's real tokens and, of a step longer than the window, only the last w of them.
A query at p needs p - w + 1 .. p, so the ring may drop p - w when p arrives: the fused C decode step
writes first and reads the ring in place.

Prefix reuse on a ring needs care: a slot that later held position n - 1 no longer holds the positions
w before it, so a row can be continued only from (almost) its end - :meth:`KVCache.can_continue` says
when, and the engine's scheduler asks it.

int8 storage (``QwenConfig.kv_cache_dtype = "int8"``, ``--kv-cache int8``): keys and values are stored
as int8 with one fp32 scale per (row, head, slot) - per head, per token - ``scale = max|x| / 127``,
``q = round(x / scale)``; attention reads ``q * scale``. Every step, the new tokens included, reads the
same rounded values, so prefill and decoding see one cache. Memory: ``head_dim + 4`` bytes per head and
token instead of ``4 * head_dim`` (fp32) or ``2 * head_dim`` (bf16): 3.8x and 1.9x less at head_dim 64.
"""

from __future__ import annotations

import math
import mmap

import torch

from .config import KV_CACHE_DTYPES  # auto: the model's dtype; int8: per head, per token scales

EMPTY = 1 << 40
"""The position reported for a slot that holds nothing yet: past every query, so the mask hides it."""



def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, fp32 scales) of x [..., D], one scale per vector: max|x| / 127 (round half to even)."""
    xf = x.float()
    scale = xf.abs().amax(-1) / 127.0
    inv = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    return torch.round(xf * inv[..., None]).clamp_(-127, 127).to(torch.int8), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale[..., None]).to(dtype)


def packed_offsets(nbytes: list[int], align: int = 64) -> tuple[list[int], int]:
    """Byte offsets that lay buffers of ``nbytes`` end to end, each starting on an ``align`` boundary
    (a cache line by default), and the total length."""
    offsets, total = [], 0
    for n in nbytes:
        offsets.append(total)
        total += -(-n // align) * align
    return offsets, total


def anonymous_map(nbytes: int, start_align: int = 64, huge_pages: bool = True) -> torch.Tensor:
    """A uint8 tensor of ``nbytes`` on its own private anonymous memory map, starting on a
    ``start_align`` boundary. The OS supplies its pages, zeroed, on first write, so it is resident only
    where written; ``huge_pages=False`` asks for 4 KB pages (``MADV_NOHUGEPAGE``), so that a first write
    makes 4 KB resident, not 2 MB. Private: a forked child (a code sandbox, a data loader) must not
    share the parent's pages. The tensor holds the map."""
    size = nbytes + start_align  # room to move the start to a boundary (the skipped head is never touched)
    flags = {"flags": mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS} if hasattr(mmap, "MAP_PRIVATE") else {}
    buffer = mmap.mmap(-1, size, **flags)
    if not huge_pages and hasattr(buffer, "madvise") and hasattr(mmap, "MADV_NOHUGEPAGE"):
        buffer.madvise(mmap.MADV_NOHUGEPAGE)
    whole = torch.frombuffer(buffer, dtype=torch.uint8)
    start = -whole.data_ptr() % start_align
    return whole[start:start + nbytes]


def zeroed_buffers(shapes: list[tuple[int, ...]], dtype: torch.dtype,
                   device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Zero-filled tensors of ``shapes``. On the CPU they are views of one :func:`anonymous_map` (4 KB
    pages), whose pages the OS supplies on first write: a cache costs resident memory only for the
    positions it has held, not for its whole ``max_length`` (``torch.zeros`` writes every byte, so a
    4,096-position fp32 cache of a 0.5B model was 100 MB resident from the first token)."""
    if torch.device(device or "cpu").type != "cpu":
        return [torch.zeros(s, dtype=dtype, device=device) for s in shapes]
    itemsize = torch.empty((), dtype=dtype).element_size()
    counts = [math.prod(s) for s in shapes]
    offsets, total = packed_offsets([n * itemsize for n in counts])
    if total == 0:
        return [torch.zeros(s, dtype=dtype) for s in shapes]
    block = anonymous_map(total, huge_pages=False)
    return [block[o:o + n * itemsize].view(dtype).view(s) for o, n, s in zip(offsets, counts, shapes)]


class KVCache:
    """Preallocated key/value buffers, one row per sequence, each row with its own length.

    ``ring=False`` stores every position in every layer (the dense layout, windows applied by the mask
    only: the reference the ring layout is tested against). ``kv_dtype``: None or "auto" (store in
    ``dtype``), "int8" (per head, per token scales). The model drives it per forward pass:
    :meth:`prepare` (mask and write plan for the new tokens), :meth:`update` (once per layer),
    :meth:`advance` (lengths += new tokens).
    """

    def __init__(self, config, batch_size: int, max_length: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, ring: bool = True, kv_dtype: str | None = None) -> None:
        kv_dtype = kv_dtype or "auto"
        if kv_dtype not in KV_CACHE_DTYPES:
            raise ValueError(f"kv cache dtype must be one of {', '.join(KV_CACHE_DTYPES)}, got {kv_dtype!r}")
        layers = config.num_hidden_layers
        self.sinks = int(config.attention_sinks)
        windows = config.window_sizes or [None] * layers
        # ring layout per layer (None: slot = position); windows as wide as the cache gain nothing
        self.windows: list[int | None] = [w if ring and w is not None and self.sinks + w < max_length else None
                                          for w in windows]
        self.capacity = [max_length if w is None else self.sinks + w for w in self.windows]
        self.dense = not ring
        self.quantized = kv_dtype == "int8"
        self.kv_dtype = kv_dtype
        self.dtype = dtype
        store = torch.int8 if self.quantized else dtype
        heads, dim = config.num_key_value_heads, config.head_dim
        kv_shapes = [(batch_size, heads, c, dim) for c in self.capacity]
        self.keys = zeroed_buffers(kv_shapes, store, device)
        self.values = zeroed_buffers(kv_shapes, store, device)
        if self.quantized:
            self.key_scales = zeroed_buffers([s[:3] for s in kv_shapes], torch.float32, device)
            self.value_scales = zeroed_buffers([s[:3] for s in kv_shapes], torch.float32, device)
        else:
            self.key_scales = self.value_scales = []
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        # the RoPE base each row's cached keys are rotated with (0: none yet); dynamic RoPE reads it
        self.rope_bases = torch.zeros(batch_size, dtype=torch.float64)
        self.max_length = max_length
        self._write: torch.Tensor | int = 0  # full layers: slot indices [B, T], or the shared start slot
        self._used = 0  # full layers: slots that attention reads this step
        self._ring_plan: dict[int, tuple] = {}  # window -> (key positions [B, C+T], write indices)

    # ------------------------------------------------------------------------------ layout
    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def layout(self) -> tuple:
        """What the buffers were laid out for: (windows with a ring, sinks, kv dtype)."""
        return tuple(self.windows), self.sinks, self.kv_dtype

    def fits(self, layout: tuple) -> bool:
        """Whether a model wanting ``layout`` (:meth:`openqwen.model.Qwen.cache_layout`) can use this cache: the
        same layout, or a dense one (every position kept: any windows and sinks) of the same kv dtype."""
        return layout == self.layout or (self.dense and layout[2] == self.kv_dtype)

    def is_ring(self, layer: int) -> bool:
        return self.windows[layer] is not None

    @property
    def has_rings(self) -> bool:
        return any(w is not None for w in self.windows)

    def nbytes(self) -> int:
        """Bytes of every buffer (keys, values, scales) of every row."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values + self.key_scales + self.value_scales)

    def rows(self, start: int, stop: int) -> "KVCache":
        """A cache over rows [start, stop) sharing this one's storage, lengths included (the engine
        runs a batch over the span of its occupied rows)."""
        view = object.__new__(KVCache)
        view.__dict__.update(self.__dict__)
        for name in ("keys", "values", "key_scales", "value_scales"):
            setattr(view, name, [t[start:stop] for t in getattr(self, name)])
        view.lengths = self.lengths[start:stop]
        view.rope_bases = self.rope_bases[start:stop]
        view._write, view._used, view._ring_plan = 0, 0, {}
        return view

    def slot_of(self, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """The slot holding each of ``positions`` in ``layer``."""
        w = self.windows[layer]
        if w is None:
            return positions
        s = self.sinks
        return torch.where(positions < s, positions, s + (positions - s) % w)

    def slot_positions(self, window: int, lengths: torch.Tensor) -> torch.Tensor:
        """[B, s + w] the position each slot of a ring layer holds in rows of ``lengths`` tokens
        (:data:`EMPTY` where none): sinks hold themselves, ring slot s + r the largest p < n with
        p = s + r (mod w)."""
        s = self.sinks
        slot = torch.arange(s + window, device=lengths.device)[None]
        n = lengths[:, None]
        r = slot - s
        newest = s + r + window * torch.div(n - 1 - s - r, window, rounding_mode="floor")
        pos = torch.where(slot < s, slot.expand_as(newest), newest)
        held = torch.where(slot < s, slot < n, r < n - s)
        return torch.where(held, pos, torch.full_like(pos, EMPTY))

    def can_continue(self, row: int, start: int) -> bool:
        """Whether row ``row`` (as left by its last sequence) can be continued after its first ``start``
        positions: always without rings; with rings, only when the row held at most ``start + 1``
        positions (a slot written later holds a position the new text must not see, and has lost the
        one it needs)."""
        return not self.has_rings or int(self.lengths[row]) <= start + 1

    # ------------------------------------------------------------------------------ a step
    def default_positions(self, q_len: int) -> torch.Tensor:
        return self.lengths[:, None] + torch.arange(q_len, device=self.lengths.device)

    def prepare(self, q_len: int, num_tokens: torch.Tensor | None = None) -> torch.Tensor | None:
        """Plan where ``q_len`` new tokens (``num_tokens`` [B] of them real; default all) go; return the
        boolean attention mask [B, 1, T, S] of the full-attention layers (or None when plain causal
        attention over all used slots is exact). Ring layers get theirs from :meth:`ring_key_positions`."""
        start = int(self.lengths.min())
        end = int(self.lengths.max()) + q_len
        if end > self.max_length:
            raise ValueError(
                f"KV cache overflow: {end} tokens needed, the cache holds {self.max_length}; "
                "allocate a longer cache or shorten the request"
            )
        self._plan_rings(q_len, num_tokens)
        self._used = end
        uniform = start + q_len == end
        if uniform:
            self._write = start
            if q_len == 1 or start == 0:
                return None  # decode step (sees every used slot) or a fresh prefill (plain causal)
        slots = torch.arange(end, device=self.lengths.device)
        query_slots = self.default_positions(q_len)  # [B, T]
        if not uniform:
            self._write = query_slots
        return (slots[None, None, :] <= query_slots[:, :, None])[:, None]

    def _plan_rings(self, q_len: int, num_tokens: torch.Tensor | None) -> None:
        self._ring_plan = {}
        query = self.default_positions(q_len)  # [B, T]
        real = torch.ones_like(query, dtype=torch.bool) if num_tokens is None else (
            torch.arange(q_len, device=query.device)[None] < num_tokens.to(query.device)[:, None])
        final = self.lengths + (q_len if num_tokens is None else num_tokens.to(self.lengths.device))
        for layer, w in enumerate(self.windows):
            if w is None or w in self._ring_plan:
                continue
            keys = torch.cat((self.slot_positions(w, self.lengths), query), dim=1)
            # of the real new tokens, the sinks and the last w survive (distinct slots: no write races)
            keep = real & ((query < self.sinks) | (query >= final[:, None] - w))
            b, t = keep.nonzero(as_tuple=True)
            self._ring_plan[w] = (keys, b, t, self.slot_of(layer, query[b, t]))

    def ring_key_positions(self, window: int) -> torch.Tensor:
        """[B, s + w + T] positions of the keys a ring layer of ``window`` attends this step (the ring
        before the step, then the new tokens)."""
        return self._ring_plan[window][0]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values [B, Hkv, T, D] of one layer; return the keys/values attention reads
        (full layers: every used slot; ring layers: the ring as it was, then the new ones)."""
        if self.quantized:  # attention reads the rounded values, the new tokens' too
            kq, ks = quantize_int8(k)
            vq, vs = quantize_int8(v)
            k, v = dequantize_int8(kq, ks, k.dtype), dequantize_int8(vq, vs, v.dtype)
            new = ((kq, ks), (vq, vs))
        else:
            new = ((k, None), (v, None))
        if self.is_ring(layer):
            _, b, t, slot = self._ring_plan[self.windows[layer]]
            old_k, old_v = self._read(layer, None)
            seen = torch.cat((old_k, k), dim=2), torch.cat((old_v, v), dim=2)  # copies: before the writes
            for (data, scale), buf, sbuf in zip(new, (self.keys, self.values), (self.key_scales, self.value_scales)):
                buf[layer][b, :, slot] = data.transpose(1, 2)[b, t]
                if scale is not None:
                    sbuf[layer][b, :, slot] = scale.transpose(1, 2)[b, t]
            return seen
        for (data, scale), buf, sbuf in zip(new, (self.keys, self.values), (self.key_scales, self.value_scales)):
            if isinstance(self._write, int):
                buf[layer][:, :, self._write : self._write + data.shape[2]] = data
                if scale is not None:
                    sbuf[layer][:, :, self._write : self._write + data.shape[2]] = scale
            else:
                rows = torch.arange(data.shape[0], device=data.device)[:, None]
                buf[layer][rows, :, self._write] = data.transpose(1, 2)
                if scale is not None:
                    sbuf[layer][rows, :, self._write] = scale.transpose(1, 2)
        return self._read(layer, self._used)

    def _read(self, layer: int, used: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.keys[layer], self.values[layer]
        if used is not None:
            k, v = k[:, :, :used], v[:, :, :used]
        if not self.quantized:
            return k, v
        ks, vs = self.key_scales[layer][:, :, : k.shape[2]], self.value_scales[layer][:, :, : v.shape[2]]
        return dequantize_int8(k, ks, self.dtype), dequantize_int8(v, vs, self.dtype)

    def advance(self, q_len: int) -> None:
        self.lengths += q_len

    # ------------------------------------------------------------------------------ copies
    def held_positions(self, layer: int, length: int) -> torch.Tensor:
        """The positions of a row of ``length`` tokens that ``layer`` keeps (all, or the sinks and the
        last w)."""
        w = self.windows[layer]
        pos = torch.arange(length, device=self.lengths.device)
        return pos if w is None else pos[(pos < self.sinks) | (pos >= length - w)]

    def copy_row(self, src: "KVCache", src_row: int, dst_row: int, length: int) -> None:
        """Copy positions [0, length) of ``src`` row ``src_row`` into row ``dst_row`` (and the RoPE base
        the keys were rotated with), whatever each side's layout (ring or dense, same storage dtype)."""
        if src.quantized != self.quantized:
            raise ValueError("cannot copy between an int8 and a float KV cache")
        self.rope_bases[dst_row] = src.rope_bases[src_row]
        n_src = int(src.lengths[src_row])
        for layer in range(len(self.keys)):
            pos = self.held_positions(layer, length)
            w = src.windows[layer]
            if w is not None and not bool(((pos < src.sinks) | (pos >= n_src - w)).all()):
                raise ValueError(f"KV cache row {src_row} holds {n_src} positions in ring buffers of {w}: it no "
                                 f"longer has all of the first {length} that the copy needs")
            s_slot, d_slot = src.slot_of(layer, pos), self.slot_of(layer, pos)
            for name in ("keys", "values", "key_scales", "value_scales"):
                bufs = getattr(self, name)
                if bufs:
                    bufs[layer][dst_row, :, d_slot] = getattr(src, name)[layer][src_row, :, s_slot]
