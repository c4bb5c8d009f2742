/* CPU decode kernels for openqwen (AVX2 + FMA, OpenMP). Compiled on first use by openqwen/infer/kernels.py.

   Two entry points:

   * linear_forward: y = x W^T (* per-row scale) (+ bias) for a few rows of x, with W stored as fp32,
     bf16 or int8. Used by the Int8Linear / BF16Linear modules for small batches.
   * decode_step: one decode step of every transformer layer for M sequences (one new token each),
     written straight into the engine's KV cache. Used by the generation engine; it removes the ~40
     small torch ops per layer that otherwise cost 15-40 % of a decode step at batch 1.

   Decoding reads every weight once per step, so the matrix kernels stream each weight row once for
   all M rows of x and keep the arithmetic in registers: a 4 rows x 2 columns tile shares every
   converted weight vector between four rows and every activation load between two columns.
   Everything except the weights is fp32, as in the torch model (RMSNorm, RoPE and attention in fp32).
*/
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stddef.h>
#include <stdlib.h>

enum { W_F32 = 0, W_BF16 = 1, W_I8 = 2, W_I4 = 3 };

typedef struct {
    const void *weight;  /* [n, k] row-major (int4: [n, k / 2] bytes, see DEFINE_GEMM_I4) */
    const float *scale;  /* [n] per-row scale (int8 weights), [n, k / group] (int4), or NULL */
    const float *bias;   /* [n] or NULL */
    int64_t n, k, type;
    const float *offset; /* int4: [n, k / group], w = code * scale + offset */
    int64_t group;       /* int4: inputs per scale (a multiple of 32) */
} Linear;

typedef struct {
    const float *input_norm, *post_norm; /* RMSNorm weights [hidden] */
    Linear qkv, o, gate_up, down;        /* fused Q|K|V and gate|up, as in openqwen/model.py */
    void *keys, *values;                 /* this layer's cache: [rows, kv_heads, capacity, head_dim], fp32 or int8 */
    int64_t window;                      /* attention window in positions (0: full attention) */
    int64_t capacity;                    /* slots per row: max_len, or sinks + window for a ring buffer */
    int64_t ring;                        /* 1: position p sits in slot p < sinks ? p : sinks + (p - sinks) % window */
    float *key_scales, *value_scales;    /* int8 cache: [rows, kv_heads, capacity] per-token scales; NULL: fp32 */
} Layer;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, inter, max_len;
    double eps;
    const Layer *layer;
    const float *final_norm;
    int64_t sinks; /* windowed layers also see positions 0 .. sinks-1 (attention sinks) */
} Model;

/* ------------------------------------------------------------------------------ vector helpers */
static inline float hsum(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

static inline __m256 load_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load_i8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
static inline __m256 load_bf16(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static inline void store(float *y, float v, int accumulate) { *y = accumulate ? *y + v : v; }

/* ---------------------------------------------------------------------------- matrix kernels
   Columns [n0, n1) of y[M, ldy] (=, or += when accumulate) from x[M, K]; K % 8 == 0.
   The value stored is scale[n] * dot + bias[n], the same order of operations as the torch modules. */
/* Weight rows stream from DRAM. The hardware prefetcher alone keeps too few lines in flight for one
   core (measured: 4 GB/s from an 8.7 MB int8 matrix, 12 GB/s with this), so while a pair of rows is
   being multiplied the next pair is requested, at the same offsets. Prefetches past the end of the
   matrix are harmless (they never fault). */
#define PREFETCH_NEXT_PAIR(w1, K, k)                                                                   \
    do {                                                                                               \
        _mm_prefetch((const char *)((w1) + (K) + (k)), _MM_HINT_T0);                                   \
        _mm_prefetch((const char *)((w1) + 2 * (K) + (k)), _MM_HINT_T0);                               \
    } while (0)

#define DEFINE_GEMM(NAME, WT, LOAD)                                                                    \
static void NAME(const float *x, const WT *w, const float *scale, const float *bias, float *y,       \
                 int64_t M, int64_t K, int64_t ldy, int accumulate, int64_t n0, int64_t n1) {        \
    int64_t n = n0;                                                                                    \
    for (; n + 2 <= n1; n += 2) {                                                                      \
        const WT *w0 = w + n * K, *w1 = w0 + K;                                                        \
        float s0 = scale ? scale[n] : 1.0f, s1 = scale ? scale[n + 1] : 1.0f;                          \
        float b0 = bias ? bias[n] : 0.0f, b1 = bias ? bias[n + 1] : 0.0f;                              \
        int64_t m = 0;                                                                                 \
        for (; m + 4 <= M; m += 4) {                                                                   \
            const float *x0 = x + m * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;                     \
            __m256 a00 = _mm256_setzero_ps(), a01 = _mm256_setzero_ps();                               \
            __m256 a10 = _mm256_setzero_ps(), a11 = _mm256_setzero_ps();                               \
            __m256 a20 = _mm256_setzero_ps(), a21 = _mm256_setzero_ps();                               \
            __m256 a30 = _mm256_setzero_ps(), a31 = _mm256_setzero_ps();                               \
            for (int64_t k = 0; k < K; k += 8) {                                                       \
                if (m == 0) PREFETCH_NEXT_PAIR(w1, K, k);                                              \
                __m256 v0 = LOAD(w0 + k), v1 = LOAD(w1 + k), xv;                                       \
                xv = _mm256_loadu_ps(x0 + k);                                                          \
                a00 = _mm256_fmadd_ps(v0, xv, a00); a01 = _mm256_fmadd_ps(v1, xv, a01);                \
                xv = _mm256_loadu_ps(x1 + k);                                                          \
                a10 = _mm256_fmadd_ps(v0, xv, a10); a11 = _mm256_fmadd_ps(v1, xv, a11);                \
                xv = _mm256_loadu_ps(x2 + k);                                                          \
                a20 = _mm256_fmadd_ps(v0, xv, a20); a21 = _mm256_fmadd_ps(v1, xv, a21);                \
                xv = _mm256_loadu_ps(x3 + k);                                                          \
                a30 = _mm256_fmadd_ps(v0, xv, a30); a31 = _mm256_fmadd_ps(v1, xv, a31);                \
            }                                                                                          \
            store(y + m * ldy + n, s0 * hsum(a00) + b0, accumulate);                                   \
            store(y + m * ldy + n + 1, s1 * hsum(a01) + b1, accumulate);                               \
            store(y + (m + 1) * ldy + n, s0 * hsum(a10) + b0, accumulate);                             \
            store(y + (m + 1) * ldy + n + 1, s1 * hsum(a11) + b1, accumulate);                         \
            store(y + (m + 2) * ldy + n, s0 * hsum(a20) + b0, accumulate);                             \
            store(y + (m + 2) * ldy + n + 1, s1 * hsum(a21) + b1, accumulate);                         \
            store(y + (m + 3) * ldy + n, s0 * hsum(a30) + b0, accumulate);                             \
            store(y + (m + 3) * ldy + n + 1, s1 * hsum(a31) + b1, accumulate);                         \
        }                                                                                              \
        for (; m < M; m++) { /* leftover rows (all of them at batch 1): two columns, two k streams */ \
            const float *xr = x + m * K;                                                               \
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();                                 \
            __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps();                                 \
            int64_t k = 0;                                                                             \
            for (; k + 16 <= K; k += 16) {                                                             \
                PREFETCH_NEXT_PAIR(w1, K, k);                                                          \
                __m256 xa = _mm256_loadu_ps(xr + k), xb = _mm256_loadu_ps(xr + k + 8);                 \
                a0 = _mm256_fmadd_ps(LOAD(w0 + k), xa, a0);                                            \
                a1 = _mm256_fmadd_ps(LOAD(w1 + k), xa, a1);                                            \
                c0 = _mm256_fmadd_ps(LOAD(w0 + k + 8), xb, c0);                                        \
                c1 = _mm256_fmadd_ps(LOAD(w1 + k + 8), xb, c1);                                        \
            }                                                                                          \
            for (; k < K; k += 8) {                                                                    \
                __m256 xa = _mm256_loadu_ps(xr + k);                                                   \
                a0 = _mm256_fmadd_ps(LOAD(w0 + k), xa, a0);                                            \
                a1 = _mm256_fmadd_ps(LOAD(w1 + k), xa, a1);                                            \
            }                                                                                          \
            store(y + m * ldy + n, s0 * hsum(_mm256_add_ps(a0, c0)) + b0, accumulate);                 \
            store(y + m * ldy + n + 1, s1 * hsum(_mm256_add_ps(a1, c1)) + b1, accumulate);             \
        }                                                                                              \
    }                                                                                                  \
    for (; n < n1; n++) { /* an odd last column */                                                     \
        const WT *wr = w + n * K;                                                                      \
        float s = scale ? scale[n] : 1.0f, b = bias ? bias[n] : 0.0f;                                  \
        for (int64_t m = 0; m < M; m++) {                                                              \
            __m256 a = _mm256_setzero_ps();                                                            \
            for (int64_t k = 0; k < K; k += 8) a = _mm256_fmadd_ps(LOAD(wr + k), _mm256_loadu_ps(x + m * K + k), a); \
            store(y + m * ldy + n, s * hsum(a) + b, accumulate);                                       \
        }                                                                                              \
    }                                                                                                  \
}

DEFINE_GEMM(gemm_f32, float, load_f32)
DEFINE_GEMM(gemm_bf16, uint16_t, load_bf16)
DEFINE_GEMM(gemm_i8, int8_t, load_i8)

/* ------------------------------------------------------------ int8 weights x int16 activations
   For int8 weights the activations are rounded to int16 in blocks of QBLK along k (one fp32 scale per
   block: absmax / 32767, a relative step of 3e-5, far below the weights' own int8 rounding), so the
   products run as integer multiply-adds: 16 weights per _mm256_madd_epi16, exact int32 sums per block,
   then one fp32 multiply-add per block. That is half the instructions of converting every weight to
   fp32, which is what lets one core keep up with its share of the memory bandwidth at batch 1.
   Every row of x gets the same lane-by-lane arithmetic whatever the batch: a row's result does not
   depend on the other rows. openqwen/infer/quant.py reproduces the rounding in torch. */
#define QBLK 64

/* max |v| over 8 lanes; a NaN lane is skipped, as the scalar `fabsf(x) > amax ? ...` would */
static inline float absmax8(__m256 m) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}

/* the rounded multiples round_half_even(x * inv) of 8 inputs, clamped to [-limit, limit], as int32 */
static inline __m256i round_scaled(const float *x, __m256 inv, __m256 limit) {
    __m256 q = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x), inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(q, limit), _mm256_sub_ps(_mm256_setzero_ps(), limit)));
}

/* scale = absmax / limit of n inputs (n % 8 == 0) and its inverse (0 for an all-zero block) */
static inline float block_scale(const float *x, int n, float limit, __m256 *inv) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), m);
    const float scale = absmax8(m) / limit;
    *inv = _mm256_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
    return scale;
}

/* one block of QBLK inputs -> int16 (round half to even, as torch.round) and its scale */
static void quantize_block_i16(const float *xb, int16_t *dst, float *xs) {
    __m256 inv;
    *xs = block_scale(xb, QBLK, 32767.0f, &inv);
    const __m256 limit = _mm256_set1_ps(32767.0f);
    for (int i = 0; i < QBLK; i += 16) { /* packs works per 128-bit lane: the permute restores the order */
        __m256i p = _mm256_packs_epi32(round_scaled(xb + i, inv, limit), round_scaled(xb + i + 8, inv, limit));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_permute4x64_epi64(p, 0xD8));
    }
}

static inline __m256i load_i8_i16(const int8_t *p) { return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)p)); }
static inline __m256i load_i16(const int16_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* R rows [m, m + R) of y (R = 1 or 4, the four sharing every widened weight vector) at columns [n0, n1).
   One small function per R holding the column loop, as for int4 below: the accumulators stay in
   registers (one function for both cases ran 30 % slower from L2). The block sums are exact integers
   whatever the order, so both cases give a row the same result. */
/* The weight stream is prefetched a fixed 6 KB ahead into L2 (T1), far enough to cover the memory's
   latency when it is fast: into L1 (T0) the lines hold the core's few L1 miss buffers the whole way.
   Interleaved runs on the 2-core Zen 4 VM (2026-12-04, weights packed by openqwen/infer/arena.py), GB/s
   of the int8 model's layers with the probe above / below 50 GB/s: 29.6 -> 32.7 and 26.8 -> 27.8
   against 1 KB into L1; its head (in the int4 model) 34.4 -> 40.3 and 27.1 -> 28.2. 4 KB into L2 gave
   less, 8 KB more in the fast phase and less in the slow one. (On the AVX2 EPYC, before the arena, in
   two interleaved runs of the int8 model: one row ahead beat two rows, 52.2 against 48.1 tok/s, and
   1 KB beat one row, 54.0 against 50.8; 6 KB into L2 has not been measured there.) */
#define I8_PREFETCH 6144
#define I8_PREFETCH_HINT _MM_HINT_T1
#define DEFINE_I8_TILE(NAME, ATTR, MADD, R)                                                        \
    ATTR static __attribute__((noinline)) void NAME(const int16_t *xq, const float *xs, const int8_t *w, const float *scale, \
                                               const float *bias, float *y, int64_t m, int64_t K, int64_t ldy, \
                                               int accumulate, int64_t n0, int64_t n1) {               \
        const int64_t nb = K / QBLK;                                                                   \
        const int16_t *xr = xq + m * K;                                                                \
        const float *xsr = xs + m * nb;                                                                \
        for (int64_t n = n0; n < n1; n++) {                                                            \
            const int8_t *wr = w + n * K;                                                              \
            __m256 f[R];                                                                               \
            for (int r = 0; r < R; r++) f[r] = _mm256_setzero_ps();                                    \
            for (int64_t blk = 0; blk < nb; blk++) {                                                   \
                if (m == 0) _mm_prefetch((const char *)(wr + blk * QBLK + I8_PREFETCH), I8_PREFETCH_HINT); \
                const int64_t k = blk * QBLK;                                                          \
                if (R == 1) { /* two chains of two multiply-adds */                                    \
                    __m256i i0 = MADD(_mm256_setzero_si256(), load_i8_i16(wr + k), load_i16(xr + k));  \
                    __m256i i1 = MADD(_mm256_setzero_si256(), load_i8_i16(wr + k + 16), load_i16(xr + k + 16)); \
                    i0 = MADD(i0, load_i8_i16(wr + k + 32), load_i16(xr + k + 32));                    \
                    i1 = MADD(i1, load_i8_i16(wr + k + 48), load_i16(xr + k + 48));                    \
                    f[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(i0, i1)), _mm256_set1_ps(xsr[blk]), f[0]); \
                } else {                                                                               \
                    __m256i acc[R];                                                                    \
                    for (int r = 0; r < R; r++) acc[r] = _mm256_setzero_si256();                       \
                    for (int64_t kk = k; kk < k + QBLK; kk += 16) {                                    \
                        __m256i wv = load_i8_i16(wr + kk);                                             \
                        for (int r = 0; r < R; r++)                                                    \
                            acc[r] = MADD(acc[r], wv, load_i16(xr + r * K + kk));                           \
                    }                                                                                  \
                    for (int r = 0; r < R; r++)                                                        \
                        f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r]), _mm256_set1_ps(xsr[r * nb + blk]), f[r]); \
                }                                                                                      \
            }                                                                                          \
            const float s = scale[n], b = bias ? bias[n] : 0.0f;                                       \
            for (int r = 0; r < R; r++) store(y + (m + r) * ldy + n, s * hsum(f[r]) + b, accumulate);  \
        }                                                                                              \
    }

/* acc + the pairwise products of 16-bit lanes, summed per 32-bit lane: AVX2's multiply-add and add, or
   AVX512-VNNI's one instruction (the same wrapped integer sums: the two give identical bits) */
#define MADD_AVX2(acc, a, b) _mm256_add_epi32((acc), _mm256_madd_epi16((a), (b)))
#define MADD_VNNI(acc, a, b) _mm256_dpwssd_epi32((acc), (a), (b))
#define VNNI_TARGET __attribute__((target("avx512vnni,avx512vl")))

_Static_assert(QBLK == 64, "the one-row case unrolls a block into four multiply-adds of 16");
DEFINE_I8_TILE(gemm_i8_i16_1, , MADD_AVX2, 1)
DEFINE_I8_TILE(gemm_i8_i16_4, , MADD_AVX2, 4)
DEFINE_I8_TILE(gemm_i8_i16_vnni_1, VNNI_TARGET, MADD_VNNI, 1)
DEFINE_I8_TILE(gemm_i8_i16_vnni_4, VNNI_TARGET, MADD_VNNI, 4)

/* -1: not decided yet (the library's constructor decides); 0: AVX2 multiply-adds; 1: AVX512-VNNI (same
   results, fewer instructions), for the int8 and the int4 kernels alike */
static int vnni = -1;

/* Which dot products run: mode -1 asks (deciding from the CPU on first use), 0 / 1 chooses (1 only
   where the CPU has AVX512-VNNI and VL). Returns the one in use. */
int use_vnni(int mode) {
    const int capable = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
    if (mode >= 0) vnni = mode && capable;
    else if (vnni < 0) vnni = capable;
    return vnni;
}

__attribute__((constructor)) static void choose_dot_products(void) { use_vnni(-1); }

/* columns [n0, n1) of y from the quantised rows (xq [M, K], xs [M, K / QBLK]); K % QBLK == 0 */
static void gemm_i8_i16(const int16_t *xq, const float *xs, const int8_t *w, const float *scale, const float *bias,
                        float *y, int64_t M, int64_t K, int64_t ldy, int accumulate, int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M;) {
        const int four = M - m >= 4;
        if (vnni > 0) (four ? gemm_i8_i16_vnni_4 : gemm_i8_i16_vnni_1)(xq, xs, w, scale, bias, y, m, K, ldy, accumulate, n0, n1);
        else (four ? gemm_i8_i16_4 : gemm_i8_i16_1)(xq, xs, w, scale, bias, y, m, K, ldy, accumulate, n0, n1);
        m += four ? 4 : 1;
    }
}

/* --------------------------------------------------------------------------- bf16 weights
   A 32-bit lane of a bf16 weight vector holds two neighbours, w[2j] in its low half and w[2j+1] in its
   high half, and a bf16 is the top half of an fp32: `lane << 16` is w[2j] as fp32 and
   `lane & 0xffff0000` is w[2j+1]. Two instructions widen 16 weights (half the work of widening them
   8 at a time) when x is split the same way: per 16 inputs, the 8 even ones, then the 8 odd ones.
   Each row keeps an even and an odd accumulator per column in every path, so a row's result does not
   depend on the other rows of the batch. The weight stream is prefetched 8 rows ahead (measured
   against 2 rows: 18.6-19.0 against 16.4-17.6 tok/s for the 0.5B model). */
static void split_row_pairs(const float *x, int64_t K, float *xp) {
    for (int64_t b = 0; b < K; b += 16)
        for (int j = 0; j < 8; j++) { xp[b + j] = x[b + 2 * j]; xp[b + 8 + j] = x[b + 2 * j + 1]; }
}

#define BF16_PAIRS(p, even, odd)                                                                       \
    do {                                                                                               \
        __m256i v_ = _mm256_loadu_si256((const __m256i *)(p));                                         \
        even = _mm256_castsi256_ps(_mm256_slli_epi32(v_, 16));                                         \
        odd = _mm256_castsi256_ps(_mm256_and_si256(v_, _mm256_set1_epi32((int)0xffff0000u)));          \
    } while (0)

/* columns [n0, n1) of y from the split rows xp [M, K]; K % 16 == 0 */
static void gemm_bf16_pairs(const float *xp, const uint16_t *w, const float *bias, float *y, int64_t M, int64_t K,
                            int64_t ldy, int accumulate, int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; n++) {
        const uint16_t *wr = w + n * K;
        const float b = bias ? bias[n] : 0.0f;
        int64_t m = 0;
        for (; m + 4 <= M; m += 4) { /* four rows share every widened weight vector */
            const float *x0 = xp + m * K, *x1 = x0 + K, *x2 = x1 + K, *x3 = x2 + K;
            __m256 e0 = _mm256_setzero_ps(), o0 = _mm256_setzero_ps(), e1 = _mm256_setzero_ps(), o1 = _mm256_setzero_ps();
            __m256 e2 = _mm256_setzero_ps(), o2 = _mm256_setzero_ps(), e3 = _mm256_setzero_ps(), o3 = _mm256_setzero_ps();
            for (int64_t k = 0; k < K; k += 16) {
                if (m == 0 && (k & 31) == 0) _mm_prefetch((const char *)(wr + 8 * K + k), _MM_HINT_T0);
                __m256 we, wo;
                BF16_PAIRS(wr + k, we, wo);
                e0 = _mm256_fmadd_ps(we, _mm256_loadu_ps(x0 + k), e0); o0 = _mm256_fmadd_ps(wo, _mm256_loadu_ps(x0 + k + 8), o0);
                e1 = _mm256_fmadd_ps(we, _mm256_loadu_ps(x1 + k), e1); o1 = _mm256_fmadd_ps(wo, _mm256_loadu_ps(x1 + k + 8), o1);
                e2 = _mm256_fmadd_ps(we, _mm256_loadu_ps(x2 + k), e2); o2 = _mm256_fmadd_ps(wo, _mm256_loadu_ps(x2 + k + 8), o2);
                e3 = _mm256_fmadd_ps(we, _mm256_loadu_ps(x3 + k), e3); o3 = _mm256_fmadd_ps(wo, _mm256_loadu_ps(x3 + k + 8), o3);
            }
            store(y + m * ldy + n, hsum(_mm256_add_ps(e0, o0)) + b, accumulate);
            store(y + (m + 1) * ldy + n, hsum(_mm256_add_ps(e1, o1)) + b, accumulate);
            store(y + (m + 2) * ldy + n, hsum(_mm256_add_ps(e2, o2)) + b, accumulate);
            store(y + (m + 3) * ldy + n, hsum(_mm256_add_ps(e3, o3)) + b, accumulate);
        }
        for (; m < M; m++) { /* leftover rows (all of them at batch 1): the same arithmetic, one row */
            const float *x0 = xp + m * K;
            __m256 e0 = _mm256_setzero_ps(), o0 = _mm256_setzero_ps();
            for (int64_t k = 0; k < K; k += 16) {
                if ((k & 31) == 0) _mm_prefetch((const char *)(wr + 8 * K + k), _MM_HINT_T0);
                __m256 we, wo;
                BF16_PAIRS(wr + k, we, wo);
                e0 = _mm256_fmadd_ps(we, _mm256_loadu_ps(x0 + k), e0);
                o0 = _mm256_fmadd_ps(wo, _mm256_loadu_ps(x0 + k + 8), o0);
            }
            store(y + m * ldy + n, hsum(_mm256_add_ps(e0, o0)) + b, accumulate);
        }
    }
}

/* ------------------------------------------------------------- int4 weights x int8 activations
   Group-wise int4 (openqwen/infer/quant.py's Int4Linear): w = code * scale[g] + offset[g] per group of
   `group` inputs, codes packed per segment of 32 inputs, byte i = input i (low nibble) | input i + 16
   (high nibble). 32 bytes (two segments) split into two vectors of 32 codes with one shift and two masks.
   The activations are rounded to int8 per segment (scale = absmax / 127, llama.cpp's choice for its
   4-bit dot products) and stored in the order the split codes come out: per segment pair A, B,
   [A 0..15, B 0..15, A 16..31, B 16..31]. Then 64 products are two u8 x s8 multiply-adds into int32
   lanes (lanes 0-3 sum segment A, 4-7 segment B): half the instructions per weight of int16
   activations, which is what lets two cores keep up with the memory at batch 1 (the int16 kernel ran
   at 25 GB/s of its bytes from the cache). Per eight segments the lane sums reduce to one vector of
   segment sums, and one fp32 multiply-add applies scale[g] * activation scale; the offset term is
   offset[g] * (sum of the segment's rounded activations). Integer sums are exact, so the VNNI and the
   plain AVX2 instructions give the same bits. */
/* one segment of 32 inputs -> int8 at dst[0..15] (inputs 0-15) and dst[32..47] (inputs 16-31), its
   scale and scale * (sum of the rounded values) */
static void quantize_segment_i8(const float *xb, int8_t *dst, float *xs, float *xsum) {
    __m256 inv;
    const float scale = block_scale(xb, 32, 127.0f, &inv);
    const __m256 limit = _mm256_set1_ps(127.0f);
    __m256i q0 = round_scaled(xb, inv, limit), q1 = round_scaled(xb + 8, inv, limit);
    __m256i q2 = round_scaled(xb + 16, inv, limit), q3 = round_scaled(xb + 24, inv, limit);
    __m256i t = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
    __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
    /* packs interleaves per 128-bit lane: [q0 0-3, q1 0-3, q2 0-3, q3 0-3 | q0 4-7, ...]; the permute puts inputs in order */
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
    b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm_storeu_si128((__m128i *)dst, _mm256_castsi256_si128(b));
    _mm_storeu_si128((__m128i *)(dst + 32), _mm256_extracti128_si256(b, 1));
    *xs = scale;
    *xsum = scale * (float)_mm_cvtsi128_si32(t4);
}

/* a[i]: lanes 0-3 segment 2i, lanes 4-7 segment 2i+1 -> the eight segment sums as [0 2 4 6 1 3 5 7].
   Unpacks and adds rather than three horizontal adds (which cost 3-4 micro-ops each on AMD cores): the
   same exact integers, 6-10 % faster from L2. */
static inline __m256i segment_sums(const __m256i *a) {
    __m256i u = _mm256_add_epi32(_mm256_unpacklo_epi32(a[0], a[1]), _mm256_unpackhi_epi32(a[0], a[1]));
    __m256i v = _mm256_add_epi32(_mm256_unpacklo_epi32(a[2], a[3]), _mm256_unpackhi_epi32(a[2], a[3]));
    return _mm256_add_epi32(_mm256_unpacklo_epi64(u, v), _mm256_unpackhi_epi64(u, v));
}

#define PAIR_DOT_AVX2(lo, hi, xp)                                                                      \
    _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(xp))), \
                                       _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)((xp) + 32)))), \
                      _mm256_set1_epi16(1)) /* |15 * 127 * 4| fits int16: no saturation */
#define PAIR_DOT_VNNI(lo, hi, xp)                                                                      \
    _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), lo, _mm256_loadu_si256((const __m256i *)(xp))), \
                        hi, _mm256_loadu_si256((const __m256i *)((xp) + 32)))

/* this row's scales (or offsets) of segments [j, j + segs), one lane each */
static inline __attribute__((always_inline)) __m256 segment_params(const float *p, int64_t j, int segs, int64_t spg,
                                                                   __m256i mask) {
    if (spg == 1) return segs == 8 ? _mm256_loadu_ps(p + j) : _mm256_maskload_ps(p + j, mask);
    if (8 % spg == 0 || spg % 8 == 0) { /* j % 8 == 0: lane i is group j / spg + i / spg */
        const int64_t need = (segs + spg - 1) / spg;
        __m256i take = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)need), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256i idx = _mm256_srli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), __builtin_ctzll(spg < 8 ? spg : 8));
        if (spg >= 8) idx = _mm256_setzero_si256();
        return _mm256_and_ps(_mm256_permutevar8x32_ps(_mm256_maskload_ps(p + j / spg, take), idx),
                             _mm256_castsi256_ps(mask));
    }
    float t[8] = {0};
    for (int i = 0; i < segs; i++) t[i] = p[(j + i) / spg];
    return _mm256_loadu_ps(t);
}

/* The codes are prefetched 6 KB ahead into L1 (two rows ahead before: 896 bytes for rows of 896 inputs).
   Zen 4 VM, interleaved, GB/s of the int4 layers with the probe above / below 50 GB/s: 32.8 -> 35.8 and
   27.1 -> 27.5; into L2 instead gave less. */
#define I4_PREFETCH 6144

/* Segments [j, j + segs) of one weight row (codes wr, scales sc, offsets of) against R rows of rounded
   activations (R = 1 or 4, sharing the split codes): f[r] += segment sums * (scale * activation scale),
   ov[r] += offset * activation sum. Always inlined with constant segs (8 in the main loop), spg and R,
   so the main loop carries no tail checks; every row gets the same arithmetic in the same order
   whatever R is, so a row's result does not depend on the batch. */
#define DEFINE_I4_BLOCK(NAME, ATTR, PAIR_DOT)                                                          \
    ATTR static inline __attribute__((always_inline)) void NAME(                                       \
        const uint8_t *wr, const float *sc, const float *of, int64_t spg, int64_t j, int segs, int R, int prefetch, \
        const int8_t *xq, const float *xs, const float *xsum, int64_t K, __m256 *f, __m256 *ov) {      \
        const int64_t nseg = K / 32;                                                                   \
        const int pairs = segs / 2;                                                                    \
        const __m256i m4 = _mm256_set1_epi8(0x0F), order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7); \
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(segs), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); \
        if (prefetch) { /* I4_PREFETCH bytes ahead */                                                  \
            _mm_prefetch((const char *)(wr + I4_PREFETCH + j * 16), _MM_HINT_T0);                      \
            _mm_prefetch((const char *)(wr + I4_PREFETCH + j * 16 + 64), _MM_HINT_T0);                 \
        }                                                                                              \
        __m256i lo[4], hi[4];                                                                          \
        for (int p = 0; p < pairs; p++) {                                                              \
            __m256i c = _mm256_loadu_si256((const __m256i *)(wr + j * 16 + p * 32));                    \
            lo[p] = _mm256_and_si256(c, m4);                                                           \
            hi[p] = _mm256_and_si256(_mm256_srli_epi16(c, 4), m4);                                     \
        }                                                                                              \
        const __m256 scv = segment_params(sc, j, segs, spg, mask), ofv = segment_params(of, j, segs, spg, mask); \
        for (int r = 0; r < R; r++) {                                                                  \
            const int8_t *xr = xq + r * K + j * 32;                                                    \
            const float *xsr = xs + r * nseg + j, *xur = xsum + r * nseg + j;                          \
            __m256i a[4];                                                                              \
            for (int p = 0; p < 4; p++) a[p] = p < pairs ? PAIR_DOT(lo[p], hi[p], xr + p * 64) : _mm256_setzero_si256(); \
            const __m256 xsv = segs == 8 ? _mm256_loadu_ps(xsr) : _mm256_maskload_ps(xsr, mask);       \
            const __m256 xuv = segs == 8 ? _mm256_loadu_ps(xur) : _mm256_maskload_ps(xur, mask);       \
            const __m256 mult = _mm256_permutevar8x32_ps(_mm256_mul_ps(scv, xsv), order);              \
            f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(segment_sums(a)), mult, f[r]);                   \
            ov[r] = _mm256_fmadd_ps(ofv, xuv, ov[r]);                                                  \
        }                                                                                              \
    }

/* R rows [m, m + R) of y (R = 1 or 4) at columns [n0, n1): per weight row its full runs of 8 segments,
   then its tail (2, 4 or 6 segments when K / 32 is not a multiple of 8: K % 64 == 0). One small function
   per (R, group) case holding the column loop, so the accumulators stay in registers and no call is made
   per column (both cost 20-30 % on rows of 896 inputs). */
#define DEFINE_I4_TILE(NAME, ATTR, BLOCK, SPG, R)                                                      \
    ATTR static __attribute__((noinline)) void NAME(const int8_t *xq, const float *xs, const float *xsum, \
                                                    const Linear *L, float *y, int64_t m, int64_t ldy, \
                                                    int accumulate, int64_t n0, int64_t n1) {          \
        const int64_t K = L->k, nseg = K / 32, nfull = nseg & ~(int64_t)7, ng = K / L->group;          \
        const int64_t spg = L->group / 32, tail = nseg - nfull;                                        \
        const int8_t *xr = xq + m * K;                                                                 \
        const float *xsr = xs + m * nseg, *xur = xsum + m * nseg;                                      \
        (void)spg;                                                                                     \
        for (int64_t n = n0; n < n1; n++) {                                                            \
            const uint8_t *wr = (const uint8_t *)L->weight + n * (K / 2);                              \
            const float *sc = L->scale + n * ng, *of = L->offset + n * ng;                             \
            const float b = L->bias ? L->bias[n] : 0.0f;                                               \
            __m256 f[R], ov[R];                                                                        \
            for (int r = 0; r < R; r++) f[r] = ov[r] = _mm256_setzero_ps();                            \
            for (int64_t j = 0; j < nfull; j += 8) BLOCK(wr, sc, of, SPG, j, 8, R, m == 0, xr, xsr, xur, K, f, ov); \
            if (tail == 2) BLOCK(wr, sc, of, SPG, nfull, 2, R, m == 0, xr, xsr, xur, K, f, ov);        \
            else if (tail == 4) BLOCK(wr, sc, of, SPG, nfull, 4, R, m == 0, xr, xsr, xur, K, f, ov);   \
            else if (tail == 6) BLOCK(wr, sc, of, SPG, nfull, 6, R, m == 0, xr, xsr, xur, K, f, ov);   \
            for (int r = 0; r < R; r++)                                                                \
                store(y + (m + r) * ldy + n, hsum(_mm256_add_ps(f[r], ov[r])) + b, accumulate);        \
        }                                                                                              \
    }

/* columns [n0, n1) of y from the rounded rows (xq [M, K] in pair order, xs and xsum [M, K / 32]): four
   rows at a time share every split code vector (the chunk's weight rows stay in L2 between tiles) */
#define DEFINE_GEMM_I4(NAME, ATTR, PAIR_DOT)                                                           \
    DEFINE_I4_BLOCK(NAME##_block, ATTR, PAIR_DOT)                                                      \
    DEFINE_I4_TILE(NAME##_1, ATTR, NAME##_block, 1, 1)       /* group 32 (GGUF's k-quants), one row */ \
    DEFINE_I4_TILE(NAME##_4, ATTR, NAME##_block, 1, 4)       /* group 32, four rows */                 \
    DEFINE_I4_TILE(NAME##_1g, ATTR, NAME##_block, spg, 1)    /* any group, one row */                 \
    DEFINE_I4_TILE(NAME##_4g, ATTR, NAME##_block, spg, 4)    /* any group, four rows */               \
    ATTR static void NAME(const int8_t *xq, const float *xs, const float *xsum, const Linear *L, float *y, \
                          int64_t M, int64_t ldy, int accumulate, int64_t n0, int64_t n1) {            \
        const int g32 = L->group == 32;                                                                \
        for (int64_t m = 0; m < M;) {                                                                  \
            if (M - m >= 4) { (g32 ? NAME##_4 : NAME##_4g)(xq, xs, xsum, L, y, m, ldy, accumulate, n0, n1); m += 4; } \
            else { (g32 ? NAME##_1 : NAME##_1g)(xq, xs, xsum, L, y, m, ldy, accumulate, n0, n1); m += 1; } \
        }                                                                                              \
    }

DEFINE_GEMM_I4(gemm_i4_avx2, , PAIR_DOT_AVX2)
DEFINE_GEMM_I4(gemm_i4_vnni, VNNI_TARGET, PAIR_DOT_VNNI)

static void gemm_i4(const int8_t *xq, const float *xs, const float *xsum, const Linear *L, float *y, int64_t M,
                    int64_t ldy, int accumulate, int64_t n0, int64_t n1) {
    if (vnni > 0) gemm_i4_vnni(xq, xs, xsum, L, y, M, ldy, accumulate, n0, n1);
    else gemm_i4_avx2(xq, xs, xsum, L, y, M, ldy, accumulate, n0, n1);
}

/* The fp32 weight of an int4 layer (rows [0, n) of w [n, k]), for prefills long enough that torch's
   matmul on it beats the kernel: one pass, the threads sharing the rows. The values of
   Int4Linear.dequantize() in its offset form, code * scale + offset, up to one fp32 rounding (the
   compiler may fuse the multiply-add). */
void dequantize_i4(const Linear *L, float *w, int nthreads) {
    const int64_t K = L->k, ng = K / L->group;
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t n = 0; n < L->n; n++) {
        const uint8_t *wr = (const uint8_t *)L->weight + n * (K / 2);
        float *out = w + n * K;
        for (int64_t j = 0; j < K / 32; j++) {
            const int64_t g = j * 32 / L->group;
            const float s = L->scale[n * ng + g], o = L->offset[n * ng + g];
            for (int i = 0; i < 16; i++) {
                out[j * 32 + i] = (float)(wr[j * 16 + i] & 15) * s + o;
                out[j * 32 + 16 + i] = (float)(wr[j * 16 + i] >> 4) * s + o;
            }
        }
    }
}

/* ------------------------------------------------------------------------------ per-row int8 rounding
   What openqwen/infer/quant.py's round_rows_int8 computes in torch, bit for bit, from fp32 rows or
   straight from a GGUF file's Q8_0 / Q5_0 blocks (the dequantised values are exact in fp32 whatever the
   order: a small integer times an fp16 scale), without the five full passes over memory that the torch
   version makes: per row, scale = max(absmax, 1e-12) / 127 and q = round_half_even(w / scale), clamped
   to [-127, 127]. Loading a GGUF as int8 spent most of its time there (4.5-5 ns a weight in torch). */
enum { SRC_F32 = 0, SRC_Q8_0 = 8, SRC_Q5_0 = 6 }; /* the GGML type numbers */

static float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 31, m = h & 1023;
    union { uint32_t u; float f; } v;
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact */
        float f = (float)m * 5.9604644775390625e-08f;
        return sign ? -f : f;
    }
    v.u = sign | (e == 31 ? 0x7f800000u | (m << 13) : ((e + 112) << 23) | (m << 13));
    return v.f;
}

static void dequantize_row(const uint8_t *src, int type, int64_t k, float *out) {
    for (int64_t b = 0; b < k / 32; b++) {
        float *o = out + b * 32;
        if (type == SRC_Q8_0) { /* fp16 d, 32 int8 codes: w = d * q */
            const uint8_t *blk = src + b * 34;
            const float d = half_to_float((uint16_t)(blk[0] | blk[1] << 8));
            for (int i = 0; i < 32; i++) o[i] = (float)(int8_t)blk[2 + i] * d;
        } else { /* Q5_0: fp16 d, 32 high bits, 16 bytes of low nibbles: w = d * (q - 16) */
            const uint8_t *blk = src + b * 22;
            const float d = half_to_float((uint16_t)(blk[0] | blk[1] << 8));
            const uint32_t qh = (uint32_t)blk[2] | (uint32_t)blk[3] << 8 | (uint32_t)blk[4] << 16 | (uint32_t)blk[5] << 24;
            for (int i = 0; i < 16; i++) {
                o[i] = ((float)((blk[6 + i] & 15) | ((qh >> i) & 1) << 4) - 16.0f) * d;
                o[i + 16] = ((float)((blk[6 + i] >> 4) | ((qh >> (i + 16)) & 1) << 4) - 16.0f) * d;
            }
        }
    }
}

static int64_t source_row_bytes(int type, int64_t k) {
    return type == SRC_Q8_0 ? k / 32 * 34 : type == SRC_Q5_0 ? k / 32 * 22 : k * 4;
}

/* row r of a [n, k] matrix stored as `type`: the fp32 row itself, or its blocks dequantised into buf */
static const float *source_row(const void *src, int type, int64_t r, int64_t k, float *buf) {
    const uint8_t *p = (const uint8_t *)src + r * source_row_bytes(type, k);
    if (type == SRC_F32) return (const float *)p;
    dequantize_row(p, type, k, buf);
    return buf;
}

/* rows [0, n) of a [n, k] matrix (fp32, or GGML blocks when type says so; k % 32 == 0 for blocks and
   k % 8 == 0 always) -> int8 codes q [n, k] and per-row scales [n]. Returns 0, or -1 when out of memory. */
int round_rows_i8(const void *src, int type, int64_t n, int64_t k, int8_t *q, float *scale, int nthreads) {
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *buf = type == SRC_F32 ? NULL : malloc(sizeof(float) * k);
        if (type != SRC_F32 && !buf) failed = 1;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            if (type != SRC_F32 && !buf) continue;
            const float *w = source_row(src, type, r, k, buf);
            const __m256 sign = _mm256_set1_ps(-0.0f), limit = _mm256_set1_ps(127.0f);
            __m256 m = _mm256_setzero_ps();
            for (int64_t i = 0; i < k; i += 8) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(w + i)), m);
            const float s = fmaxf(absmax8(m), 1e-12f) / 127.0f;
            const __m256 vs = _mm256_set1_ps(s);
            scale[r] = s;
            int8_t *qr = q + r * k;
            for (int64_t i = 0; i < k; i += 8) { /* a true division, as torch's part / s */
                __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(w + i), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                __m256i c = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(v, limit), _mm256_sub_ps(_mm256_setzero_ps(), limit)));
                __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
                _mm_storel_epi64((__m128i *)(qr + i), _mm_packs_epi16(p16, p16));
            }
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

/* Rows [0, n) of a [n, k] matrix (read as round_rows_i8 reads it) rounded to asymmetric int4 per group of
   g inputs, bit for bit quant.quantize_rtn_int4: lo = min(min w, 0), hi = max(max w, 0), s = max((hi - lo)
   / 15, 1e-12), z = clamp(round(-lo / s), 0, 15), q = clamp(round(w / s) + z, 0, 15), every step one fp32
   operation as torch does it (true divisions, ties to even). Writes the codes packed as pack_int4 packs
   them (per segment of 32 inputs, input i in the low nibble of byte i and input i + 16 in its high one),
   and scales s and offsets -z * s [n, k / g]. Needs g % 32 == 0 and k % g == 0. The q4_k_m file's int4
   load (its Q5_0 layers) took 1.5 s with torch's ops, 1.0 s with this. Returns 0, or -1 when out of memory. */
int round_groups_i4(const void *src, int type, int64_t n, int64_t k, int64_t g, uint8_t *packed, float *scale,
                    float *offset, int nthreads) {
    const int64_t ng = k / g;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *buf = type == SRC_F32 ? NULL : malloc(sizeof(float) * k);
        if (type != SRC_F32 && !buf) failed = 1;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < n; r++) {
            if (type != SRC_F32 && !buf) continue;
            const float *w = source_row(src, type, r, k, buf);
            for (int64_t j = 0; j < ng; j++) {
                const float *x = w + j * g;
                float lo = 0.0f, hi = 0.0f;
                for (int64_t i = 0; i < g; i++) {
                    lo = x[i] < lo ? x[i] : lo;
                    hi = x[i] > hi ? x[i] : hi;
                }
                float s = (hi - lo) / 15.0f;
                s = s < 1e-12f ? 1e-12f : s;
                float z = nearbyintf(-lo / s);
                z = z < 0.0f ? 0.0f : z > 15.0f ? 15.0f : z;
                scale[r * ng + j] = s;
                offset[r * ng + j] = -z * s;
                uint8_t *out = packed + (r * k + j * g) / 2;
                for (int64_t seg = 0; seg < g; seg += 32) {
                    uint8_t code[32];
                    for (int i = 0; i < 32; i++) {
                        float q = nearbyintf(x[seg + i] / s) + z;
                        code[i] = (uint8_t)(q < 0.0f ? 0.0f : q > 15.0f ? 15.0f : q);
                    }
                    for (int i = 0; i < 16; i++) out[seg / 2 + i] = (uint8_t)(code[i] | code[i + 16] << 4);
                }
            }
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

/* An input embedding kept as a GGUF file's Q8_0 / Q5_0 blocks: the n rows idx[i] of src [vocab, k / 32
   blocks] into out [n, k], the file's exact values (torch's dequantisation of one gathered row made
   ~10 small ops, 0.2 ms of every decode step). Returns -1 for another block type or an index outside
   [0, vocab), writing nothing. */
int gather_rows_gguf(const uint8_t *src, int type, int64_t vocab, const int64_t *idx, int64_t n, int64_t k, float *out) {
    if (type != SRC_Q8_0 && type != SRC_Q5_0) return -1;
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= vocab) return -1;
    for (int64_t i = 0; i < n; i++) dequantize_row(src + idx[i] * source_row_bytes(type, k), type, k, out + i * k);
    return 0;
}

/* out[m] = the index of the first largest of each row of x [M, n] (torch.argmax's choice), or -1 for a
   row holding a NaN (torch ranks NaN above every number: the caller asks torch). Two passes, the second
   over data still in cache: the vector maximum, then the first index that equals it. torch's argmax
   over a 152k vocabulary took 0.16 ms of a decode step. */
void argmax_rows(const float *x, int64_t M, int64_t n, int64_t *out) {
    for (int64_t m = 0; m < M; m++) {
        const float *r = x + m * n;
        __m256 best = _mm256_set1_ps(-INFINITY), nan = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(r + i);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            best = _mm256_max_ps(best, v);
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, best);
        float top = lanes[0];
        for (int l = 1; l < 8; l++) top = lanes[l] > top ? lanes[l] : top;
        int has_nan = _mm256_movemask_ps(nan) != 0;
        for (; i < n; i++) {
            has_nan |= r[i] != r[i];
            top = r[i] > top ? r[i] : top;
        }
        out[m] = -1;
        if (has_nan) continue;
        for (int64_t j = 0; j < n; j++)
            if (r[j] == top) { out[m] = j; break; }
    }
}

#define COLUMN_CHUNK 16 /* columns per work item: threads take contiguous runs of chunks */

static int uses_i16(const Linear *L) { return L->type == W_I8 && L->k % QBLK == 0; }
static int uses_i4(const Linear *L) { return L->type == W_I4; } /* linear_spec checks k % QBLK, group % 32 */
static int uses_pairs(const Linear *L) { return L->type == W_BF16 && L->k % 16 == 0; }

/* Called inside a parallel region: the threads share the columns (an orphaned `omp for`, with the
   implicit barrier at its end, so y is complete when every thread returns). int8 layers first round
   x into xq/xs, bf16 layers split it into xp (which shares xq's room: M * k floats), the threads
   sharing the rows; int4 layers round it to int8 there, with their segment scales and sums after the
   codes. */
static void gemm(const Linear *L, const float *x, int64_t M, float *y, int64_t ldy, int accumulate,
                 int16_t *xq, float *xs) {
    const int i16 = uses_i16(L), pairs = uses_pairs(L), i4 = uses_i4(L);
    float *xp = (float *)xq;
    /* int4: int8 codes [M, k], then activation scales and sums [M, k / 32] each (1.25 M k bytes) */
    int8_t *x8 = (int8_t *)xq;
    float *x8s = (float *)(x8 + M * L->k), *x8sum = x8s + M * (L->k / 32);
    if (i4) { /* the threads share the segments (at batch 1 a row is all there is to share) */
        const int64_t nseg = L->k / 32;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < M * nseg; t++) {
            const int64_t m = t / nseg, j = t % nseg;
            quantize_segment_i8(x + m * L->k + j * 32, x8 + m * L->k + (j / 2) * 64 + (j & 1) * 16, x8s + t, x8sum + t);
        }
    } else if (i16) {
        const int64_t nb = L->k / QBLK;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < M * nb; t++) quantize_block_i16(x + t * QBLK, xq + t * QBLK, xs + t);
    } else if (pairs) {
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) split_row_pairs(x + m * L->k, L->k, xp + m * L->k);
    }
    int64_t chunks = (L->n + COLUMN_CHUNK - 1) / COLUMN_CHUNK;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t n0 = c * COLUMN_CHUNK, n1 = n0 + COLUMN_CHUNK < L->n ? n0 + COLUMN_CHUNK : L->n;
        if (i4) {
            gemm_i4(x8, x8s, x8sum, L, y, M, ldy, accumulate, n0, n1);
            continue;
        }
        if (i16) {
            gemm_i8_i16(xq, xs, (const int8_t *)L->weight, L->scale, L->bias, y, M, L->k, ldy, accumulate, n0, n1);
            continue;
        }
        if (pairs) {
            gemm_bf16_pairs(xp, (const uint16_t *)L->weight, L->bias, y, M, L->k, ldy, accumulate, n0, n1);
            continue;
        }
        switch (L->type) {
        case W_I8: gemm_i8(x, (const int8_t *)L->weight, L->scale, L->bias, y, M, L->k, ldy, accumulate, n0, n1); break;
        case W_BF16: gemm_bf16(x, (const uint16_t *)L->weight, L->scale, L->bias, y, M, L->k, ldy, accumulate, n0, n1); break;
        default: gemm_f32(x, (const float *)L->weight, L->scale, L->bias, y, M, L->k, ldy, accumulate, n0, n1);
        }
    }
}

/* y[M, n] = x[M, k] W^T for one layer. Returns 0, or -1 when out of memory. */
int linear_forward(const Linear *L, const float *x, float *y, int64_t M, int nthreads) {
    int16_t *xq = NULL;
    float *xs = NULL;
    if (uses_i16(L) || uses_pairs(L) || uses_i4(L)) {
        xq = malloc(sizeof(float) * M * L->k);
        xs = malloc(sizeof(float) * (M * (L->k / QBLK) + 1));
        if (!xq || !xs) { free(xq); free(xs); return -1; }
    }
#pragma omp parallel num_threads(nthreads)
    gemm(L, x, M, y, L->n, 0, xq, xs);
    free(xq);
    free(xs);
    return 0;
}

/* ------------------------------------------------------------------------------ small layers */
static void rms_norm(const float *x, const float *weight, float *out, int64_t d, float eps) {
    float ss = 0.0f;
    for (int64_t i = 0; i < d; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / (float)d + eps);
    for (int64_t i = 0; i < d; i++) out[i] = weight[i] * (x[i] * r);
}

/* rotate-half RoPE of one head vector in place */
static void rope(float *v, const float *cos, const float *sin, int64_t d) {
    int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* the KV-cache slot of position p in a layer (openqwen/kv_cache.py's KVCache.slot_of) */
static inline int64_t cache_slot(const Layer *ly, int64_t sinks, int64_t p) {
    return !ly->ring || p < sinks ? p : sinks + (p - sinks) % ly->window;
}

/* int8 KV cache: one scale per vector, max|x| / 127, round half to even (openqwen/kv_cache.py's quantize_int8) */
static void store_i8(const float *x, int8_t *q, float *scale, int64_t d) {
    float amax = 0.0f;
    for (int64_t i = 0; i < d; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    float s = amax / 127.0f, inv = s > 0.0f ? 1.0f / s : 0.0f;
    for (int64_t i = 0; i < d; i++) {
        float r = nearbyintf(x[i] * inv);
        q[i] = (int8_t)(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
    }
    *scale = s;
}

/* e^x of 8 lanes: Cephes' expf (x = n ln2 + r, |r| <= ln2 / 2, a degree-5 polynomial in r, times 2^n),
   within 2 ulp of expf. Inputs are clamped to +-88.376: e^x stays finite and the smallest results flush
   to 0 instead of denormals, which is what silu needs (gate / (1 + e^-gate) for |gate| that large is
   0 or the gate itself in fp32). The scalar expf was 2 % of an int4 decode step. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-88.3762626647949f));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x); /* ln 2 in two parts: exact n * high */
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* the sums of eight vectors, one per lane (lane j: the sum of a[j]) */
static inline __m256 hsum8(const __m256 *a) {
    __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20), _mm256_permute2f128_ps(t0, t1, 0x31));
}

/* Scores of query q against `count` keys in consecutive cache rows k (fp32 or int8; an int8 cache's
   per-row scales in ks) into p[0 .. count), times `scale`; returns max(best, the largest). Eight rows at a
   time: eight independent dot products whose sums reduce together, instead of one dependent chain and
   one horizontal sum each. */
#define DEFINE_SCORE_RUN(NAME, T, LOAD, SCALED)                                                         \
    static float NAME(const float *q, const T *k, const float *ks, int64_t count, int64_t D, float scale, \
                      float *p, float best) {                                                          \
        __m256 top = _mm256_set1_ps(best);                                                             \
        int64_t s = 0;                                                                                 \
        for (; s + 8 <= count; s += 8) {                                                               \
            const T *kr = k + s * D;                                                                   \
            __m256 acc[8];                                                                             \
            for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();                                  \
            for (int64_t i = 0; i < D; i += 8) {                                                       \
                const __m256 qv = _mm256_loadu_ps(q + i);                                              \
                for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(qv, LOAD(kr + j * D + i), acc[j]); \
            }                                                                                          \
            __m256 v = _mm256_mul_ps(hsum8(acc), _mm256_set1_ps(scale));                               \
            if (SCALED) v = _mm256_mul_ps(v, _mm256_loadu_ps(ks + s));                                 \
            _mm256_storeu_ps(p + s, v);                                                                \
            top = _mm256_max_ps(top, v);                                                               \
        }                                                                                              \
        float t8[8];                                                                                   \
        _mm256_storeu_ps(t8, top);                                                                     \
        for (int j = 0; j < 8; j++) best = t8[j] > best ? t8[j] : best;                                \
        for (; s < count; s++) {                                                                       \
            __m256 acc = _mm256_setzero_ps();                                                          \
            for (int64_t i = 0; i < D; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), LOAD(k + s * D + i), acc); \
            float v = hsum(acc) * scale;                                                               \
            if (SCALED) v *= ks[s];                                                                    \
            p[s] = v;                                                                                  \
            best = v > best ? v : best;                                                                \
        }                                                                                              \
        return best;                                                                                   \
    }
DEFINE_SCORE_RUN(score_run_f32, float, _mm256_loadu_ps, 0)
DEFINE_SCORE_RUN(score_run_i8, int8_t, load_i8, 1)

/* out[0 .. w) += sum over `count` cache rows (stride D) of p[s] * value row s, for a slice of w <= 64
   columns of the rows v (fp32, or int8 times their per-row scales vs). A full slice of 64 keeps its
   eight sums in registers for the whole run; narrower ones (head_dim not a multiple of 64) go through
   memory. */
#define DEFINE_VALUE_SLICE(NAME, T, LOAD, SCALED)                                                      \
    static void NAME(const float *p, const T *v, const float *vs, int64_t count, int64_t D, int64_t w, float *out) { \
        if (w == 64) {                                                                                 \
            __m256 a[8];                                                                               \
            for (int j = 0; j < 8; j++) a[j] = _mm256_loadu_ps(out + 8 * j);                           \
            for (int64_t s = 0; s < count; s++) {                                                      \
                const __m256 ps = _mm256_set1_ps(SCALED ? p[s] * vs[s] : p[s]);                        \
                for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(ps, LOAD(v + s * D + 8 * j), a[j]); \
            }                                                                                          \
            for (int j = 0; j < 8; j++) _mm256_storeu_ps(out + 8 * j, a[j]);                           \
            return;                                                                                    \
        }                                                                                              \
        for (int64_t s = 0; s < count; s++) {                                                          \
            const __m256 ps = _mm256_set1_ps(SCALED ? p[s] * vs[s] : p[s]);                            \
            for (int64_t j = 0; j < w; j += 8)                                                         \
                _mm256_storeu_ps(out + j, _mm256_fmadd_ps(ps, LOAD(v + s * D + j), _mm256_loadu_ps(out + j))); \
        }                                                                                              \
    }
DEFINE_VALUE_SLICE(value_slice_f32, float, _mm256_loadu_ps, 0)
DEFINE_VALUE_SLICE(value_slice_i8, int8_t, load_i8, 1)

/* how many of the positions pos, pos + 1, ..., pos + count - 1 lie in consecutive cache slots (a ring
   buffer wraps after its last slot; its sinks are slots of their own) */
static inline int64_t slot_run(const Layer *ly, int64_t sinks, int64_t pos, int64_t count) {
    if (!ly->ring) return count;
    const int64_t room = pos < sinks ? sinks - pos : sinks + ly->window - cache_slot(ly, sinks, pos);
    return room < count ? room : count;
}

/* p[a..b) = e^(p - best) eight at a time (exp8, within 2 ulp of expf); returns their sum */
static float exp_range(float *p, int64_t a, int64_t b, float best) {
    const __m256 bv = _mm256_set1_ps(best);
    __m256 sum = _mm256_setzero_ps();
    int64_t s = a;
    for (; s + 8 <= b; s += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + s), bv));
        _mm256_storeu_ps(p + s, e);
        sum = _mm256_add_ps(sum, e);
    }
    float total = hsum(sum);
    if (s < b) { /* the tail through the same exp8, padded */
        float t8[8] = {0};
        for (int64_t j = s; j < b; j++) t8[j - s] = p[j] - best;
        _mm256_storeu_ps(t8, exp8(_mm256_loadu_ps(t8)));
        for (int64_t j = s; j < b; j++) { p[j] = t8[j - s]; total += p[j]; }
    }
    return total;
}

/* Attention is split by key/value head and by chunks of ATTN_CHUNK visible positions: one work item
   takes every query head of its group over one chunk, so each chunk of keys and values comes from memory
   once, and from L1 for the group's other heads (attend_chunk; scoring head by head over the whole
   context re-read the cache once per query head: at 4,096 tokens a step was 2.5x one at 32). Each item leaves, per query
   head, the chunk's largest score, its sum of e^(score - largest) and its unnormalised sum of values;
   merge_chunks combines them. The chunks are fixed in size, so results do not depend on the threads. */
#define ATTN_CHUNK 256

/* a row holding n positions (the new token included) sees, in a layer with a window, the sinks [0, *sk)
   and the window [*lo, n); without one (or while n fits the window) all of [0, n): *sk = *lo = 0 */
static inline void visible_ranges(const Layer *ly, int64_t sinks, int64_t n, int64_t *sk, int64_t *lo) {
    *lo = ly->window > 0 && n > ly->window ? n - ly->window : 0;
    *sk = sinks < *lo ? sinks : *lo;
}

/* visible index i (0 .. sk + n - lo) -> position: the sinks [0, sk), then the window [lo, n) */
static inline int64_t visible_position(int64_t i, int64_t sk, int64_t lo) { return i < sk ? i : lo + (i - sk); }

/* Every query head of one key/value head (nh of them: queries q + h * D) over the visible indices
   [a, b) of the chunk, in sub-blocks of ATTN_BLOCK cache rows that every head reads while they are in L1.
   Head h's scores go to p + h * ps, e^(score - its largest) replacing them; its largest score, sum and
   unnormalised value sum to top[h * st], total[h * st] and out + h * os. */
#define ATTN_BLOCK 32
static void attend_chunk(const float *q, int64_t nh, const Layer *ly, int64_t sinks, size_t base, int64_t sk,
                         int64_t lo, int64_t a, int64_t b, int64_t D, float scale, float *p, int64_t ps,
                         float *out, int64_t os, float *top, float *total, int64_t st) {
    /* the chunk as runs of consecutive cache slots (at most three: the sinks, and a window that wraps) */
    int64_t run_i[4], run_cell[4], run_len[4], runs = 0;
    for (int64_t i = a; i < b;) {
        const int64_t pos = visible_position(i, sk, lo), end = i < sk && b > sk ? sk : b;
        const int64_t len = slot_run(ly, sinks, pos, end - i);
        run_i[runs] = i, run_cell[runs] = (int64_t)base + cache_slot(ly, sinks, pos), run_len[runs] = len, runs++;
        i += len;
    }
    for (int64_t h = 0; h < nh; h++) top[h * st] = -INFINITY;
    for (int r = 0; r < runs; r++)
        for (int64_t s0 = 0; s0 < run_len[r]; s0 += ATTN_BLOCK) {
            const int64_t cnt = run_len[r] - s0 < ATTN_BLOCK ? run_len[r] - s0 : ATTN_BLOCK, cell = run_cell[r] + s0;
            float *pr = p + run_i[r] + s0;
            for (int64_t h = 0; h < nh; h++)
                top[h * st] = ly->key_scales
                    ? score_run_i8(q + h * D, (const int8_t *)ly->keys + cell * D, ly->key_scales + cell, cnt, D, scale,
                                   pr + h * ps, top[h * st])
                    : score_run_f32(q + h * D, (const float *)ly->keys + cell * D, NULL, cnt, D, scale, pr + h * ps,
                                    top[h * st]);
        }
    for (int64_t h = 0; h < nh; h++) {
        total[h * st] = exp_range(p + h * ps, a, b, top[h * st]);
        for (int64_t j = 0; j < D; j++) out[h * os + j] = 0.0f;
    }
    for (int r = 0; r < runs; r++)
        for (int64_t s0 = 0; s0 < run_len[r]; s0 += ATTN_BLOCK) {
            const int64_t cnt = run_len[r] - s0 < ATTN_BLOCK ? run_len[r] - s0 : ATTN_BLOCK, cell = run_cell[r] + s0;
            const float *pr = p + run_i[r] + s0;
            for (int64_t h = 0; h < nh; h++)
                for (int64_t d0 = 0; d0 < D; d0 += 64) {
                    const int64_t w = D - d0 < 64 ? D - d0 : 64;
                    if (ly->value_scales)
                        value_slice_i8(pr + h * ps, (const int8_t *)ly->values + cell * D + d0, ly->value_scales + cell,
                                       cnt, D, w, out + h * os + d0);
                    else
                        value_slice_f32(pr + h * ps, (const float *)ly->values + cell * D + d0, NULL, cnt, D, w,
                                        out + h * os + d0);
                }
        }
}

/* one query head's output from its nc chunks (partial value sums [nc, D], largest scores and sums [nc]) */
static void merge_chunks(const float *part, const float *top, const float *total, int64_t nc, int64_t D, float *out) {
    float best = -INFINITY, sum = 0.0f;
    for (int64_t c = 0; c < nc; c++) best = top[c] > best ? top[c] : best;
    for (int64_t i = 0; i < D; i++) out[i] = 0.0f;
    for (int64_t c = 0; c < nc; c++) {
        const float f = expf(top[c] - best); /* exactly 1 for the largest chunk (and a lone one) */
        sum += f * total[c];
        for (int64_t i = 0; i < D; i++) out[i] += f * part[c * D + i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < D; i++) out[i] *= inv;
}

/* ------------------------------------------------------------------------------- decode step
   x: [M, hidden] input embeddings; on return the final-norm hidden states.
   lengths: [M] tokens already cached per row (the new token goes to that position; int64, not changed
   here). row0: first cache row of these M sequences. cos/sin: [M, head_dim] rotary tables (each row's
   own: dynamic NTK gives rows different bases). q_scale: [M] LogN multipliers of the rotated queries,
   or NULL. scratch: decode_scratch_floats(model, M) floats.
   A layer with a window w sees positions [n - w, n) of a row holding n (with the new token), and the
   first `sinks` positions: the same keys as the torch model's window mask. */
static int64_t widest_input(const Model *md) {
    int64_t k = md->hidden > md->inter ? md->hidden : md->inter;
    return k > md->heads * md->head_dim ? k : md->heads * md->head_dim;
}

static int64_t attention_chunks(const Model *md) { return (md->max_len + ATTN_CHUNK - 1) / ATTN_CHUNK; }

int64_t decode_scratch_floats(const Model *md, int64_t M) {
    int64_t qkv = (md->heads + 2 * md->kv_heads) * md->head_dim, K = widest_input(md);
    return M * (md->hidden + qkv + md->heads * md->head_dim + 2 * md->inter + md->inter)
           + M * md->heads * md->max_len
           + M * md->heads * attention_chunks(md) * (md->head_dim + 2) /* per chunk: value sums, largest score, sum */
           + M * K + M * K / QBLK + 16; /* rounded int16 or split fp32 activations, and block scales */
}

void decode_step(const Model *md, float *x, const int64_t *lengths, int64_t row0, const float *cos,
                 const float *sin, const float *q_scale, int64_t M, float *scratch, int nthreads) {
    const int64_t H = md->heads, G = md->kv_heads, D = md->head_dim, HD = md->hidden, I = md->inter;
    const int64_t S = md->max_len, QKV = (H + 2 * G) * D, group = H / G;
    const float eps = (float)md->eps, inv_sqrt_d = 1.0f / sqrtf((float)D);
    float *h = scratch, *qkv = h + M * HD, *attn = qkv + M * QKV, *gu = attn + M * H * D;
    const int64_t NC = attention_chunks(md);
    float *act = gu + M * 2 * I, *scores = act + M * I, *part = scores + M * H * S;
    float *part_top = part + M * H * NC * D, *part_total = part_top + M * H * NC, *xs = part_total + M * H * NC;
    int16_t *xq = (int16_t *)(xs + M * widest_input(md) / QBLK + 8);

#pragma omp parallel num_threads(nthreads)
    for (int64_t l = 0; l < md->layers; l++) {
        const Layer *ly = &md->layer[l];
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) rms_norm(x + m * HD, ly->input_norm, h + m * HD, HD, eps);
        gemm(&ly->qkv, h, M, qkv, QKV, 0, xq, xs);
        /* RoPE on every query and key head; keys and values go into the cache at position lengths[m] */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < M * (H + G); t++) {
            int64_t m = t / (H + G), head = t % (H + G);
            float *row = qkv + m * QKV;
            if (head < H) {
                rope(row + head * D, cos + m * D, sin + m * D, D);
                if (q_scale)
                    for (int64_t i = 0; i < D; i++) row[head * D + i] *= q_scale[m];
            } else {
                int64_t g = head - H;
                float *k = row + (H + g) * D, *v = row + (H + G + g) * D;
                rope(k, cos + m * D, sin + m * D, D);
                /* a ring slot's old position (p - window) is one the new query no longer sees */
                size_t cell = (size_t)((row0 + m) * G + g) * ly->capacity + cache_slot(ly, md->sinks, lengths[m]);
                if (ly->key_scales) {
                    store_i8(k, (int8_t *)ly->keys + cell * D, ly->key_scales + cell, D);
                    store_i8(v, (int8_t *)ly->values + cell * D, ly->value_scales + cell, D);
                } else {
                    float *kd = (float *)ly->keys + cell * D, *vd = (float *)ly->values + cell * D;
                    for (int64_t i = 0; i < D; i++) { kd[i] = k[i]; vd[i] = v[i]; }
                }
            }
        }
        /* attention: each (row, key/value head, chunk of visible positions) over the row's visible
           positions, 0..lengths[m] or with a window the sinks [0, sk) and the window [lo, n); then each
           (row, query head) merges its chunks */
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < M * G * NC; t++) {
            const int64_t m = t / (G * NC), g = t / NC % G, c = t % NC, a = c * ATTN_CHUNK;
            int64_t sk, lo;
            visible_ranges(ly, md->sinks, lengths[m] + 1, &sk, &lo);
            const int64_t visible = sk + lengths[m] + 1 - lo, b = a + ATTN_CHUNK < visible ? a + ATTN_CHUNK : visible;
            if (a >= b) continue;
            const size_t base = (size_t)((row0 + m) * G + g) * ly->capacity;
            const int64_t mh = m * H + g * group; /* the group's first query head */
            attend_chunk(qkv + m * QKV + g * group * D, group, ly, md->sinks, base, sk, lo, a, b, D, inv_sqrt_d,
                         scores + mh * S, S, part + (mh * NC + c) * D, NC * D, part_top + mh * NC + c,
                         part_total + mh * NC + c, NC);
        }
#pragma omp for schedule(static)
        for (int64_t t = 0; t < M * H; t++) {
            int64_t sk, lo;
            visible_ranges(ly, md->sinks, lengths[t / H] + 1, &sk, &lo);
            merge_chunks(part + t * NC * D, part_top + t * NC, part_total + t * NC,
                         (sk + lengths[t / H] + 1 - lo + ATTN_CHUNK - 1) / ATTN_CHUNK, D, attn + t * D);
        }
        gemm(&ly->o, attn, M, x, HD, 1, xq, xs); /* residual: x += o_proj(attn) */
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) rms_norm(x + m * HD, ly->post_norm, h + m * HD, HD, eps);
        gemm(&ly->gate_up, h, M, gu, 2 * I, 0, xq, xs);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < M * I; t += 8) { /* silu(gate) * up, 8 at a time (I % 8 == 0, build checks) */
            int64_t m = t / I, j = t % I;
            __m256 gate = _mm256_loadu_ps(gu + m * 2 * I + j), up = _mm256_loadu_ps(gu + m * 2 * I + I + j);
            __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gate));
            _mm256_storeu_ps(act + t, _mm256_mul_ps(_mm256_div_ps(gate, _mm256_add_ps(_mm256_set1_ps(1.0f), e)), up));
        }
        gemm(&ly->down, act, M, x, HD, 1, xq, xs); /* residual: x += down_proj(act) */
    }
    for (int64_t m = 0; m < M; m++) rms_norm(x + m * HD, md->final_norm, x + m * HD, HD, eps);
}
