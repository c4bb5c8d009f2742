"""The C decode kernels (``kernels.c``): built once with the system compiler, called through ctypes.

``kernels.c`` holds two things the torch model cannot do quickly on a CPU at decode time:

* :func:`linear_forward` - a matrix-vector product for a few rows against fp32, bf16 or int8 weights
  that reads each weight once and converts it in registers (what :mod:`openqwen.infer.quant` runs;
  for int8 weights the activations are rounded to int16 blocks and multiplied as integers, see
  :func:`openqwen.infer.quant.round_activations_int16`; int4 weights take int8 activations,
  :func:`~openqwen.infer.quant.round_activations_int8`, through AVX512-VNNI where the CPU has it);
* :class:`FusedDecoder` - one call that runs a whole decode step (every layer, for every active
  sequence) and writes keys and values into the engine's KV cache. At batch 1 a torch decode step is
  about a thousand small op dispatches (norms, RoPE, cache writes, attention, views), which cost 15-40 %
  on top of reading the weights; the fused step has none of them. Prefill stays in torch.

The library is compiled on first use (``cc -O3 -mavx2 -mfma -fopenmp``) into
``~/.cache/openqwen/kernels`` (``OPENQWEN_KERNEL_CACHE``), named by the hash of the source, and loaded
with ctypes. Without a compiler, on a CPU without AVX2/FMA, or with ``OPENQWEN_NO_KERNELS=1``,
everything falls back to torch and :func:`kernel_status` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import nn

from ..long_context import is_dynamic, logn_factors, rope_type
from ..model import rope_cos_sin, rope_inverse_frequencies

_SOURCE = Path(__file__).with_name("kernels.c")
KERNEL_ROW_CHUNK = 64
"""Rows per kernel call: enough for a decode batch, and few enough that their rounded activations
stay in the L2 cache (longer inputs are split into chunks of this many rows)."""
W_F32, W_BF16, W_I8, W_I4 = 0, 1, 2, 3

_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_lib_lock = threading.Lock()


class LinearSpec(ctypes.Structure):
    """C ``Linear``: one weight matrix and how to read it."""

    _fields_ = [("weight", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p),
                ("n", ctypes.c_int64), ("k", ctypes.c_int64), ("type", ctypes.c_int64),
                ("offset", ctypes.c_void_p), ("group", ctypes.c_int64)]


class LayerSpec(ctypes.Structure):
    _fields_ = [("input_norm", ctypes.c_void_p), ("post_norm", ctypes.c_void_p),
                ("qkv", LinearSpec), ("o", LinearSpec), ("gate_up", LinearSpec), ("down", LinearSpec),
                ("keys", ctypes.c_void_p), ("values", ctypes.c_void_p), ("window", ctypes.c_int64),
                ("capacity", ctypes.c_int64), ("ring", ctypes.c_int64),
                ("key_scales", ctypes.c_void_p), ("value_scales", ctypes.c_void_p)]


class ModelSpec(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_int64), ("hidden", ctypes.c_int64), ("heads", ctypes.c_int64),
                ("kv_heads", ctypes.c_int64), ("head_dim", ctypes.c_int64), ("inter", ctypes.c_int64),
                ("max_len", ctypes.c_int64), ("eps", ctypes.c_double),
                ("layer", ctypes.POINTER(LayerSpec)), ("final_norm", ctypes.c_void_p), ("sinks", ctypes.c_int64)]


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def load_kernels() -> ctypes.CDLL | None:
    """Compile (once, cached) and load the kernels; None when impossible (reason in :func:`kernel_status`)."""
    global _lib, _lib_error
    with _lib_lock:
        if _lib is not None or _lib_error is not None:
            return _lib
        if os.environ.get("OPENQWEN_NO_KERNELS"):
            _lib_error = "disabled by OPENQWEN_NO_KERNELS"
            return None
        if not _cpu_has_avx2_fma():
            _lib_error = "this CPU lacks AVX2/FMA"
            return None
        source = _SOURCE.read_text()
        digest = hashlib.sha256(source.encode()).hexdigest()[:16]
        cache = Path(os.environ.get("OPENQWEN_KERNEL_CACHE", "~/.cache/openqwen/kernels")).expanduser()
        so = cache / f"openqwen-kernels-{digest}.so"
        try:
            if not so.exists():
                cache.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "kernels.so"
                    cc = os.environ.get("CC", "cc")
                    subprocess.run([cc, "-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", str(_SOURCE),
                                    "-o", str(out), "-lm"], check=True, capture_output=True, timeout=180)
                    os.replace(out, so)  # atomic: concurrent processes never load half a file
            lib = ctypes.CDLL(str(so))
        except (OSError, subprocess.SubprocessError) as e:
            err = getattr(e, "stderr", b"") or b""
            _lib_error = f"could not build the C kernels ({e}) {err.decode(errors='replace')[:300]}"
            return None
        lib.linear_forward.restype = ctypes.c_int
        lib.linear_forward.argtypes = [ctypes.POINTER(LinearSpec), ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_int64, ctypes.c_int]
        lib.use_vnni.restype = ctypes.c_int
        lib.use_vnni.argtypes = [ctypes.c_int]
        lib.dequantize_i4.restype = None
        lib.dequantize_i4.argtypes = [ctypes.POINTER(LinearSpec), ctypes.c_void_p, ctypes.c_int]
        lib.round_rows_i8.restype = ctypes.c_int
        lib.round_rows_i8.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_int]
        lib.round_groups_i4.restype = ctypes.c_int
        lib.round_groups_i4.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        lib.gather_rows_gguf.restype = ctypes.c_int
        lib.gather_rows_gguf.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64,
                                         ctypes.c_int64, ctypes.c_void_p]
        lib.argmax_rows.restype = None
        lib.argmax_rows.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        lib.decode_scratch_floats.restype = ctypes.c_int64
        lib.decode_scratch_floats.argtypes = [ctypes.POINTER(ModelSpec), ctypes.c_int64]
        lib.decode_step.restype = None
        lib.decode_step.argtypes = [ctypes.POINTER(ModelSpec), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                    ctypes.c_int]
        _lib = lib
        return lib


def kernel_status() -> str:
    """'C kernels (AVX2)' (with '+ AVX512-VNNI' where the int8 and int4 dot products use it) or why the
    torch fallback is used."""
    lib = load_kernels()
    if lib is None:
        return f"torch fallback: {_lib_error}"
    return "C kernels (AVX2 + AVX512-VNNI)" if lib.use_vnni(-1) else "C kernels (AVX2)"


def use_vnni(enabled: bool) -> bool:
    """Choose the int8 and int4 kernels' dot products: AVX512-VNNI (the default where the CPU has it) or
    plain AVX2. Both give identical results (exact integer sums); returns whether VNNI is now in use."""
    lib = load_kernels()
    assert lib is not None, "use_vnni needs the C kernels (check kernel_status())"
    return bool(lib.use_vnni(1 if enabled else 0))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def linear_spec(module: nn.Module) -> LinearSpec | None:
    """The C view of a linear layer: an fp32 nn.Linear, or a module that declares its weight layout
    with a ``kernel_weight_type`` attribute (W_I8 with a per-row fp32 ``scale``, W_BF16, or W_I4 with
    packed codes, group-wise ``scale`` / ``offset`` and ``group_size``), as the Int8Linear / BF16Linear /
    Int4Linear of :mod:`openqwen.infer.quant` do; None when the kernels cannot read it.
    (The layout is declared, not looked up by class, so this module never imports quant.)"""
    weight = module.weight
    bias = module.bias
    kind = getattr(module, "kernel_weight_type", None)
    offset, group = None, 0
    if kind == W_I8 and weight.dtype == torch.int8:
        scale = module.scale
    elif kind == W_I4 and weight.dtype == torch.uint8:
        # codes packed two per byte; groups of whole 32-input segments; activations in pairs of segments
        scale, offset, group = module.scale, module.offset, module.group_size
        if (module.in_features % 64 or group % 32 or not scale.is_contiguous() or not offset.is_contiguous()
                or scale.dtype != torch.float32 or offset.dtype != torch.float32):
            return None
    elif kind == W_BF16 and weight.dtype == torch.bfloat16:
        scale = None
    elif type(module) is nn.Linear and weight.dtype == torch.float32:
        kind, scale = W_F32, None
    else:
        return None
    if (weight.device.type != "cpu" or not weight.is_contiguous() or weight.shape[1] % 8
            or (bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()))):
        return None
    k = module.in_features if kind == W_I4 else weight.shape[1]
    return LinearSpec(weight.data_ptr(), _ptr(scale), _ptr(bias), weight.shape[0], k, kind, _ptr(offset), group)


def linear_forward(spec: LinearSpec, x: torch.Tensor, out_features: int) -> torch.Tensor:
    """y[M, out] = x[M, in] W^T (scaled, plus bias) with the C kernel; x must be fp32 and contiguous."""
    lib = _lib if _lib is not None else load_kernels()
    assert lib is not None, "linear_forward needs the C kernels (check kernel_status())"
    y = torch.empty(x.shape[0], out_features, dtype=torch.float32)
    if lib.linear_forward(ctypes.byref(spec), x.data_ptr(), y.data_ptr(), x.shape[0], torch.get_num_threads()):
        raise MemoryError(f"the C kernel could not allocate its activation buffer for {x.shape[0]} rows")
    return y


def dequantize_int4(spec: LinearSpec) -> torch.Tensor:
    """The fp32 weight [n, k] of an int4 layer's spec (code * scale + offset), in one pass in C."""
    lib = _lib if _lib is not None else load_kernels()
    assert lib is not None and spec.type == W_I4, "dequantize_int4 needs the C kernels and an int4 spec"
    w = torch.empty(spec.n, spec.k, dtype=torch.float32)
    lib.dequantize_i4(ctypes.byref(spec), w.data_ptr(), torch.get_num_threads())
    return w


ROUND_SOURCES = {"F32": 0, "Q5_0": 6, "Q8_0": 8}
"""What :func:`round_rows_int8_c` reads: fp32 rows, or a GGUF file's Q5_0 / Q8_0 blocks (GGML type numbers)."""


def _rounding_source(src: torch.Tensor, rows: int, k: int, source: str, caller: str) -> tuple[ctypes.CDLL, int] | None:
    """The library and GGML type number for a C rounding of ``rows`` x ``k`` ``source`` values held in
    ``src``; None when the kernels are unavailable or the shape does not fit them. Raises ValueError when
    ``src`` does not hold exactly those bytes."""
    kind = ROUND_SOURCES[source]
    lib = _lib if _lib is not None else load_kernels()
    if lib is None or src.device.type != "cpu" or not src.is_contiguous() or k % (32 if kind else 8):
        return None
    want = torch.float32 if kind == 0 else torch.uint8
    nbytes = rows * k * 4 if kind == 0 else rows * (k // 32) * (34 if source == "Q8_0" else 22)
    if src.dtype != want or src.numel() * src.element_size() != nbytes:
        raise ValueError(f"{caller}: {rows} x {k} {source} needs {nbytes} bytes of {want}, "
                         f"got {src.dtype} {tuple(src.shape)}")
    return lib, kind


def round_rows_int8_c(src: torch.Tensor, rows: int, k: int, source: str = "F32",
                      threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-row int8 codes [rows, k] and scales [rows] of ``src`` in C, bit for bit what
    :func:`openqwen.infer.quant.round_rows_int8` computes in torch: ``src`` is a contiguous fp32 [rows, k]
    matrix, or the raw bytes (uint8) of ``rows`` rows of ``source`` blocks (:data:`ROUND_SOURCES`),
    dequantised on the fly. None when the kernels are unavailable or the shape does not fit them (the
    caller then rounds in torch). ``threads``: OpenMP threads (default: torch's)."""
    found = _rounding_source(src, rows, k, source, "round_rows_int8_c")
    if found is None:
        return None
    lib, kind = found
    q = torch.empty(rows, k, dtype=torch.int8)
    scale = torch.empty(rows, dtype=torch.float32)
    if lib.round_rows_i8(src.data_ptr(), kind, rows, k, q.data_ptr(), scale.data_ptr(),
                         threads or torch.get_num_threads()):
        raise MemoryError("round_rows_int8_c could not allocate a row buffer")
    return q, scale


def round_groups_int4_c(src: torch.Tensor, rows: int, k: int, group_size: int, source: str = "F32",
                        threads: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Asymmetric group-wise int4 of ``src`` (read as :func:`round_rows_int8_c` reads it) in C: packed codes
    uint8 [rows, k / 2] (:func:`openqwen.infer.quant.pack_int4`'s order), scales and offsets fp32
    [rows, k / group_size], bit for bit ``pack_int4(q), s, -z * s`` of
    :func:`openqwen.infer.quant.quantize_rtn_int4`. None when the kernels are unavailable or the shape
    does not fit them (``group_size`` a multiple of 32 that divides ``k``)."""
    if group_size < 32 or group_size % 32 or k % group_size:
        return None
    found = _rounding_source(src, rows, k, source, "round_groups_int4_c")
    if found is None:
        return None
    lib, kind = found
    packed = torch.empty(rows, k // 2, dtype=torch.uint8)
    scale = torch.empty(rows, k // group_size, dtype=torch.float32)
    offset = torch.empty_like(scale)
    if lib.round_groups_i4(src.data_ptr(), kind, rows, k, group_size, packed.data_ptr(), scale.data_ptr(),
                           offset.data_ptr(), threads or torch.get_num_threads()):
        raise MemoryError("round_groups_int4_c could not allocate a row buffer")
    return packed, scale, offset


def gather_rows_gguf(raw: torch.Tensor, ggml_type: int, ids: torch.Tensor, k: int) -> torch.Tensor | None:
    """fp32 rows [len(ids), k] of a matrix stored as Q8_0 / Q5_0 blocks (``raw``: uint8 [rows, bytes per
    row], contiguous), exactly the file's values; None when the kernels are unavailable or the block type
    is another, or an id lies outside ``[0, rows)`` (the caller then dequantises in torch, which raises
    for it or wraps a negative id as indexing does)."""
    lib = _lib if _lib is not None else load_kernels()
    block_bytes = {ROUND_SOURCES["Q5_0"]: 22, ROUND_SOURCES["Q8_0"]: 34}.get(ggml_type)
    if (lib is None or block_bytes is None or raw.dtype != torch.uint8 or raw.dim() != 2 or not raw.is_contiguous()
            or k % 32 or raw.shape[1] != k // 32 * block_bytes or raw.device.type != "cpu"):
        return None
    ids = ids.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty(ids.numel(), k, dtype=torch.float32)
    done = lib.gather_rows_gguf(raw.data_ptr(), ggml_type, raw.shape[0], ids.data_ptr(), ids.numel(), k, out.data_ptr())
    return out if done == 0 else None


def argmax_rows(logits: torch.Tensor) -> list[int]:
    """torch.argmax(logits, -1).tolist() of fp32 logits [M, vocab] (the first largest entry of each row),
    in C where it can: one vectorised pass and one scan of a row still in cache. Rows holding a NaN, and
    anything but a contiguous fp32 CPU matrix, go to torch."""
    lib = _lib if _lib is not None else load_kernels()
    if (lib is None or logits.dim() != 2 or logits.dtype != torch.float32 or logits.device.type != "cpu"
            or not logits.is_contiguous() or logits.shape[1] == 0):
        return torch.argmax(logits, -1).tolist()
    out = torch.empty(logits.shape[0], dtype=torch.int64)
    lib.argmax_rows(logits.data_ptr(), logits.shape[0], logits.shape[1], out.data_ptr())
    found = out.tolist()
    return [i if i >= 0 else int(torch.argmax(logits[m])) for m, i in enumerate(found)]


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class FusedDecoder:
    """Runs a decode step of a :class:`openqwen.model.Qwen` in one C call, against a given KV cache.

    Build it with :meth:`build`, which returns None (with the reason in ``FusedDecoder.why_not``) when
    the model or cache is not one it handles: it needs the C kernels, fp32 activations, an fp32 or int8
    KV cache (ring buffers for windowed layers included: :mod:`openqwen.kv_cache`) (fp32
    models, or bf16/int8 linears from :mod:`openqwen.infer.quant`), no dropout, no forward hooks on the
    layers (the fused step would skip them; hooks on the output head are honoured), head_dim a multiple
    of 8 and at most 128. The result equals ``model.hidden_states`` for one new token per row within fp32
    rounding (tests/infer/test_infer_kernels.py), long-context options included: per-row RoPE tables
    (dynamic NTK, re-rotation, yarn) come from :meth:`openqwen.model.Qwen.rope_tables`, LogN multipliers
    scale the queries in the kernel, and windowed layers (with sinks) read only the keys they may see
    (tests/infer/test_infer_long_context.py).
    """

    why_not: str = ""

    def __init__(self, model: nn.Module, cache, spec: ModelSpec, layers, keep: list) -> None:
        self.model = model
        self.cache = cache
        self._spec = spec
        self._layers = layers
        self._keep = keep  # tensors whose memory the C structs point at
        self._lib = load_kernels()
        rows = cache.batch_size
        n = self._lib.decode_scratch_floats(ctypes.byref(spec), rows)
        self._scratch = torch.empty(n, dtype=torch.float32)
        cfg = model.config
        self._inv_freq = rope_inverse_frequencies(cfg.head_dim, cfg.rope_theta)
        self._plain_rope = not is_dynamic(cfg) and rope_type(cfg) == "default"
        # only a plain fp32 head needs this: Int8Linear / BF16Linear heads reach the kernel by themselves
        head = model.lm_head
        self._head_spec = linear_spec(head) if type(head) is nn.Linear else None
        self._head_key = head.weight.data_ptr()

    @classmethod
    def build(cls, model: nn.Module, cache) -> "FusedDecoder | None":
        def no(reason: str) -> None:
            cls.why_not = reason
            return None

        if load_kernels() is None:
            return no(kernel_status())
        cfg = model.config
        if model.training and cfg.dropout:
            return no("the model is in training mode with dropout")
        if cfg.head_dim % 8 or cfg.head_dim > 128 or cfg.hidden_size % 8 or cfg.intermediate_size % 8:
            return no(f"head_dim {cfg.head_dim} / hidden {cfg.hidden_size} / intermediate {cfg.intermediate_size} "
                      "not supported (multiples of 8, head_dim <= 128)")
        hooked = [name for name, mod in model.named_modules() if name != "lm_head" and _has_hooks(mod)]
        if hooked:
            return no(f"forward hooks are registered on {hooked[0]!r} (the fused step would skip them)")
        if cache.keys[0].dtype not in (torch.float32, torch.int8) or cache.keys[0].device.type != "cpu":
            return no("the KV cache is neither fp32 nor int8 on the CPU")
        if not all(k.is_contiguous() for k in cache.keys + cache.values + cache.key_scales + cache.value_scales):
            return no("the KV cache is not contiguous")
        if cfg.num_attention_heads % cfg.num_key_value_heads:
            return no("query heads are not a multiple of key/value heads")
        layers = (LayerSpec * cfg.num_hidden_layers)()
        keep: list = []
        for i, block in enumerate(model.layers):
            norms = (block.input_layernorm.weight, block.post_attention_layernorm.weight)
            if any(w.dtype != torch.float32 or not w.is_contiguous() for w in norms):
                return no("RMSNorm weights are not fp32 (load bf16 models with openqwen.infer.quant.optimise_for_decode)")
            specs = [linear_spec(m) for m in (block.self_attn.qkv_proj, block.self_attn.o_proj,
                                              block.mlp.gate_up_proj, block.mlp.down_proj)]
            if any(s is None for s in specs):
                return no("a linear layer is neither fp32 nn.Linear, Int8Linear, Int4Linear nor BF16Linear")
            window = (cfg.window_sizes or [None] * cfg.num_hidden_layers)[i]
            # a ring-buffer layer (openqwen/kv_cache.py) has sinks + window slots per row; int8 caches pass their scales
            scales = (cache.key_scales[i].data_ptr(), cache.value_scales[i].data_ptr()) if cache.quantized else (None, None)
            layers[i] = LayerSpec(norms[0].data_ptr(), norms[1].data_ptr(), *specs,
                                  cache.keys[i].data_ptr(), cache.values[i].data_ptr(), window or 0,
                                  cache.capacity[i], int(cache.is_ring(i)), *scales)
            keep.extend(norms)
        final = model.norm.weight
        if final.dtype != torch.float32:
            return no("the final norm is not fp32")
        keep.append(final)
        spec = ModelSpec(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                         cfg.head_dim, cfg.intermediate_size, cache.max_length, cfg.rms_norm_eps,
                         ctypes.cast(layers, ctypes.POINTER(LayerSpec)), final.data_ptr(), cfg.attention_sinks)
        return cls(model, cache, spec, layers, keep)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head on [M, hidden] rows, through the C kernel when its layout allows (an fp32
        nn.Linear head otherwise goes to torch's matmul, which streams the weight more slowly)."""
        head = self.model.lm_head
        if (self._head_spec is None or self._head_key != head.weight.data_ptr()
                or hidden.shape[0] > KERNEL_ROW_CHUNK or _has_hooks(head)):  # hooks must run: call the module
            return head(hidden)
        return linear_forward(self._head_spec, hidden.float().contiguous(), head.weight.shape[0])

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, row0: int = 0) -> torch.Tensor:
        """Final-norm hidden states [M, 1, hidden] for one new token per row (input_ids [M, 1]) of cache
        rows ``row0 .. row0+M-1``; keys/values are written at each row's length, and lengths advance."""
        M = input_ids.shape[0]
        if input_ids.dim() != 2 or input_ids.shape[1] != 1:
            raise ValueError(f"the fused decoder takes one token per row ([M, 1]), got {tuple(input_ids.shape)}")
        if row0 < 0 or row0 + M > self.cache.batch_size:
            raise ValueError(f"rows {row0}..{row0 + M - 1} are outside the cache's {self.cache.batch_size} rows")
        lengths = self.cache.lengths[row0 : row0 + M]
        if int(lengths.max()) + 1 > self.cache.max_length:
            raise ValueError(
                f"KV cache overflow: {int(lengths.max()) + 1} tokens needed, the cache holds "
                f"{self.cache.max_length}; allocate a longer cache or shorten the request"
            )
        x = self.model.embed_tokens(input_ids[:, 0]).float().contiguous()
        positions = lengths[:, None]
        cfg = self.model.config
        if self._plain_rope:
            tables = rope_cos_sin(positions, self._inv_freq)
        else:  # each row's RoPE base (dynamic NTK), cached keys re-rotated as rope_update says; yarn's scale
            tables = self.model.rope_tables(positions, self.cache.rows(row0, row0 + M))
        cos, sin = (t.reshape(M, -1).float().contiguous() for t in tables)
        q_scale = logn_factors(positions, cfg.seq_length) if cfg.use_logn_attn else None
        q_scale = None if q_scale is None else q_scale.reshape(M).float().contiguous()
        self._lib.decode_step(ctypes.byref(self._spec), x.data_ptr(), lengths.data_ptr(), row0,
                              cos.data_ptr(), sin.data_ptr(), _ptr(q_scale), M, self._scratch.data_ptr(),
                              torch.get_num_threads())
        lengths += 1
        return x[:, None]
