"""Decode-speed precisions for CPU: weight-only int8 and bf16 linears, swapped in from outside the model.

Decoding one token at a time is a matrix-vector product per linear layer: the time goes into reading
the weights from memory, so fewer bytes per weight means more tokens per second. Two module swaps:

* :class:`Int8Linear` (``quantize_int8(model)``): weights rounded to int8 with one fp32 scale per
  output row (symmetric, absmax / 127); activations and accumulation stay fp32. 4x fewer bytes than fp32.
* :class:`BF16Linear` (``optimise_for_decode(model)`` on a bf16 model): bf16 weights, fp32 activations
  and accumulation.

Both run small batches (decode, M <= 64 rows) through a tiny AVX2/FMA C kernel compiled once on first
use with the system C compiler (cached in ``~/.cache/openqwen/kernels``) and called through ctypes; it
streams each weight row once for all rows of the batch, converting to fp32 in registers. Without a
compiler or AVX2 they fall back to torch (``torch.ops.aten._weight_int8pack_mm`` for int8, which
exists in torch >= 2.3 but has no fast AVX2 path, and ``F.linear`` for bf16). Prefill (many rows) is
compute-bound and uses torch's matmul on weights dequantised block by block.

The model file knows nothing of this: quantisation replaces ``nn.Linear`` modules after loading.
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
import torch.nn.functional as F
from torch import nn

MAX_KERNEL_ROWS = 64
"""Batches up to this many rows use the matrix-vector kernel (decode); more rows (prefill) use torch's
matmul on the dequantised weight, which is compute-bound anyway."""

_C_SOURCE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stddef.h>

static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

/* 8 weights -> 8 fp32 lanes */
static inline __m256 load_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline __m256 load_bf16(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/* y[m, n] = scale[n] * sum_k x[m, k] * w[n, k] + bias[n]; K % 32 == 0; rows of x are fp32.
   Each weight row is read from memory once for all M rows of x. Rows of x go four at a time, so one
   weight conversion feeds four FMAs (batched decode is otherwise bound by the conversions). */
#define GEMV(NAME, WT, LOAD)                                                                          \
void NAME(const float *x, const WT *w, const float *scale, const float *bias, float *y,             \
          int M, int N, int K, int nthreads) {                                                       \
    _Pragma("omp parallel for num_threads(nthreads) schedule(static)")                               \
    for (int n = 0; n < N; n++) {                                                                     \
        const WT *wr = w + (size_t)n * K;                                                             \
        float s = scale ? scale[n] : 1.0f, b = bias ? bias[n] : 0.0f;                                 \
        int m = 0;                                                                                    \
        for (; m + 4 <= M; m += 4) {                                                                  \
            const float *x0 = x + (size_t)m * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;            \
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                                \
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();                                \
            __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();                                \
            __m256 c2 = _mm256_setzero_ps(), c3 = _mm256_setzero_ps();                                \
            for (int k = 0; k < K; k += 16) {                                                         \
                __m256 wa = LOAD(wr + k), wb = LOAD(wr + k + 8);                                      \
                a0 = _mm256_fmadd_ps(wa, _mm256_loadu_ps(x0 + k), a0);                                \
                a1 = _mm256_fmadd_ps(wa, _mm256_loadu_ps(x1 + k), a1);                                \
                a2 = _mm256_fmadd_ps(wa, _mm256_loadu_ps(x2 + k), a2);                                \
                a3 = _mm256_fmadd_ps(wa, _mm256_loadu_ps(x3 + k), a3);                                \
                c0 = _mm256_fmadd_ps(wb, _mm256_loadu_ps(x0 + k + 8), c0);                            \
                c1 = _mm256_fmadd_ps(wb, _mm256_loadu_ps(x1 + k + 8), c1);                            \
                c2 = _mm256_fmadd_ps(wb, _mm256_loadu_ps(x2 + k + 8), c2);                            \
                c3 = _mm256_fmadd_ps(wb, _mm256_loadu_ps(x3 + k + 8), c3);                            \
            }                                                                                         \
            y[(size_t)m * N + n] = s * hsum(_mm256_add_ps(a0, c0)) + b;                               \
            y[(size_t)(m + 1) * N + n] = s * hsum(_mm256_add_ps(a1, c1)) + b;                         \
            y[(size_t)(m + 2) * N + n] = s * hsum(_mm256_add_ps(a2, c2)) + b;                         \
            y[(size_t)(m + 3) * N + n] = s * hsum(_mm256_add_ps(a3, c3)) + b;                         \
        }                                                                                             \
        for (; m < M; m++) {                                                                          \
            const float *xr = x + (size_t)m * K;                                                      \
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                                \
            __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();                                \
            for (int k = 0; k < K; k += 32) {                                                         \
                a0 = _mm256_fmadd_ps(LOAD(wr + k), _mm256_loadu_ps(xr + k), a0);                      \
                a1 = _mm256_fmadd_ps(LOAD(wr + k + 8), _mm256_loadu_ps(xr + k + 8), a1);              \
                a2 = _mm256_fmadd_ps(LOAD(wr + k + 16), _mm256_loadu_ps(xr + k + 16), a2);            \
                a3 = _mm256_fmadd_ps(LOAD(wr + k + 24), _mm256_loadu_ps(xr + k + 24), a3);            \
            }                                                                                         \
            y[(size_t)m * N + n] = s * hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))) + b; \
        }                                                                                             \
    }                                                                                                 \
}

GEMV(gemv_i8, int8_t, load_i8)
GEMV(gemv_bf16, uint16_t, load_bf16)
"""

_lib: ctypes.CDLL | None = None
_lib_error: str | None = None
_lib_lock = threading.Lock()


def _cpu_has_avx2_fma() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def load_kernels() -> ctypes.CDLL | None:
    """Compile (once, cached) and load the C kernels; None when that is impossible (reason in
    :func:`kernel_status`)."""
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
        digest = hashlib.sha256(_C_SOURCE.encode()).hexdigest()[:16]
        cache = Path(os.environ.get("OPENQWEN_KERNEL_CACHE", "~/.cache/openqwen/kernels")).expanduser()
        so = cache / f"gemv-{digest}.so"
        try:
            if not so.exists():
                cache.mkdir(parents=True, exist_ok=True)
                with tempfile.TemporaryDirectory() as tmp:
                    src = Path(tmp) / "gemv.c"
                    src.write_text(_C_SOURCE)
                    out = Path(tmp) / "gemv.so"
                    cc = os.environ.get("CC", "cc")
                    subprocess.run([cc, "-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC", str(src),
                                    "-o", str(out)], check=True, capture_output=True, timeout=120)
                    os.replace(out, so)  # atomic: concurrent processes never load half a file
            lib = ctypes.CDLL(str(so))
        except (OSError, subprocess.SubprocessError) as e:
            err = getattr(e, "stderr", b"") or b""
            _lib_error = f"could not build the C kernels ({e}) {err.decode(errors='replace')[:300]}"
            return None
        for fn in (lib.gemv_i8, lib.gemv_bf16):
            fn.restype = None
            fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int] * 4
        _lib = lib
        return lib


def kernel_status() -> str:
    """'C kernels (AVX2)' or why the torch fallback is used."""
    return "C kernels (AVX2)" if load_kernels() is not None else f"torch fallback: {_lib_error}"


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _KernelLinear(nn.Module):
    """Shared forward: small batches through the C kernel, large ones through torch."""

    in_features: int
    out_features: int
    bias: torch.Tensor | None

    def _kernel(self, lib: ctypes.CDLL):  # pragma: no cover - overridden
        raise NotImplementedError

    def _dense(self) -> torch.Tensor:  # fp32 weight for torch's matmul
        raise NotImplementedError

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        M = x2.shape[0]
        lib = (_lib if _lib is not None else load_kernels()) if self.in_features % 32 == 0 else None
        if M > MAX_KERNEL_ROWS:
            y = F.linear(x2.float(), self._dense(), None if self.bias is None else self.bias.float())
        elif lib is None:
            y = self._fallback(x2)
        else:
            xf = x2.float().contiguous()
            y = torch.empty(M, self.out_features, dtype=torch.float32)
            self._kernel(lib)(xf.data_ptr(), self.weight.data_ptr(), _ptr(self._scale_f32()),
                              _ptr(self.bias), y.data_ptr(), M, self.out_features, self.in_features,
                              torch.get_num_threads())
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _scale_f32(self) -> torch.Tensor | None:
        return None


class Int8Linear(_KernelLinear):
    """y = x @ (int8 W * per-row scale)^T + b, with fp32 activations."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        w = weight.detach().float()
        self.out_features, self.in_features = w.shape
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scale", scale.contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def _kernel(self, lib):
        return lib.gemv_i8

    def _scale_f32(self):
        return self.scale

    def _dense(self) -> torch.Tensor:
        return self.weight.float() * self.scale[:, None]

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int8pack_mm(x.float().contiguous(), self.weight, self.scale)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


class BF16Linear(_KernelLinear):
    """bf16 weights, fp32 accumulation; output in the input's dtype."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    def _kernel(self, lib):
        return lib.gemv_bf16

    def _dense(self) -> torch.Tensor:
        return self.weight.float()

    def _fallback(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight.float(), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bf16"


def _swap_linears(model: nn.Module, make) -> nn.Module:
    targets = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(mod))
    return model


@torch.no_grad()
def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every nn.Linear (the output head too; a tied embedding stays fp32 for lookups) with an
    :class:`Int8Linear`, in place. The model should be fp32."""
    return _swap_linears(model, lambda m: Int8Linear(m.weight, m.bias))


@torch.no_grad()
def optimise_for_decode(model: nn.Module) -> nn.Module:
    """For a bf16 model: bf16 weights, fp32 compute. Every nn.Linear becomes a :class:`BF16Linear`
    (weights stay bf16: half the bytes to read per token) and the few remaining parameters (norms,
    the input embedding) go back to fp32, so activations, the KV cache and all small ops run in fp32,
    which CPUs without native bf16 do much faster. fp32 models are left as they are."""
    if next(model.parameters()).dtype != torch.bfloat16:
        return model
    _swap_linears(model, lambda m: BF16Linear(m.weight, m.bias))
    for p in model.parameters():
        p.data = p.data.float()
    return model
