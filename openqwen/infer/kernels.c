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

enum { W_F32 = 0, W_BF16 = 1, W_I8 = 2 };

typedef struct {
    const void *weight;  /* [n, k] row-major */
    const float *scale;  /* [n] per-row scale (int8 weights) or NULL */
    const float *bias;   /* [n] or NULL */
    int64_t n, k, type;
} Linear;

typedef struct {
    const float *input_norm, *post_norm; /* RMSNorm weights [hidden] */
    Linear qkv, o, gate_up, down;        /* fused Q|K|V and gate|up, as in openqwen/model.py */
    float *keys, *values;                /* this layer's cache: [rows, kv_heads, max_len, head_dim] */
} Layer;

typedef struct {
    int64_t layers, hidden, heads, kv_heads, head_dim, inter, max_len;
    double eps;
    const Layer *layer;
    const float *final_norm;
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

#define COLUMN_CHUNK 16 /* columns per work item: threads take contiguous runs of chunks */

/* Called inside a parallel region: the threads share the columns (an orphaned `omp for`, with the
   implicit barrier at its end, so y is complete when every thread returns). */
static void gemm(const Linear *L, const float *x, int64_t M, float *y, int64_t ldy, int accumulate) {
    int64_t chunks = (L->n + COLUMN_CHUNK - 1) / COLUMN_CHUNK;
#pragma omp for schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t n0 = c * COLUMN_CHUNK, n1 = n0 + COLUMN_CHUNK < L->n ? n0 + COLUMN_CHUNK : L->n;
        switch (L->type) {
        case W_I8: gemm_i8(x, (const int8_t *)L->weight, L->scale, L->bias, y, M, L->k, ldy, accumulate, n0, n1); break;
        case W_BF16: gemm_bf16(x, (const uint16_t *)L->weight, L->scale, L->bias, y, M, L->k, ldy, accumulate, n0, n1); break;
        default: gemm_f32(x, (const float *)L->weight, L->scale, L->bias, y, M, L->k, ldy, accumulate, n0, n1);
        }
    }
}

void linear_forward(const Linear *L, const float *x, float *y, int64_t M, int nthreads) {
#pragma omp parallel num_threads(nthreads)
    gemm(L, x, M, y, L->n, 0);
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

static inline float dot(const float *a, const float *b, int64_t d) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < d; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    return hsum(acc);
}

/* ------------------------------------------------------------------------------- decode step
   x: [M, hidden] input embeddings; on return the final-norm hidden states.
   lengths: [M] tokens already cached per row (the new token goes to that position; int64, not changed
   here). row0: first cache row of these M sequences. cos/sin: [M, head_dim] rotary tables.
   scratch: decode_scratch_floats(model, M) floats. */
int64_t decode_scratch_floats(const Model *md, int64_t M) {
    int64_t qkv = (md->heads + 2 * md->kv_heads) * md->head_dim;
    return M * (md->hidden + qkv + md->heads * md->head_dim + 2 * md->inter + md->inter)
           + M * md->heads * md->max_len;
}

void decode_step(const Model *md, float *x, const int64_t *lengths, int64_t row0, const float *cos,
                 const float *sin, int64_t M, float *scratch, int nthreads) {
    const int64_t H = md->heads, G = md->kv_heads, D = md->head_dim, HD = md->hidden, I = md->inter;
    const int64_t S = md->max_len, QKV = (H + 2 * G) * D, group = H / G;
    const float eps = (float)md->eps, inv_sqrt_d = 1.0f / sqrtf((float)D);
    float *h = scratch, *qkv = h + M * HD, *attn = qkv + M * QKV, *gu = attn + M * H * D;
    float *act = gu + M * 2 * I, *scores = act + M * I;

#pragma omp parallel num_threads(nthreads)
    for (int64_t l = 0; l < md->layers; l++) {
        const Layer *ly = &md->layer[l];
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) rms_norm(x + m * HD, ly->input_norm, h + m * HD, HD, eps);
        gemm(&ly->qkv, h, M, qkv, QKV, 0);
        /* RoPE on every query and key head; keys and values go into the cache at position lengths[m] */
#pragma omp for schedule(static)
        for (int64_t t = 0; t < M * (H + G); t++) {
            int64_t m = t / (H + G), head = t % (H + G);
            float *row = qkv + m * QKV;
            if (head < H) {
                rope(row + head * D, cos + m * D, sin + m * D, D);
            } else {
                int64_t g = head - H;
                float *k = row + (H + g) * D, *v = row + (H + G + g) * D;
                rope(k, cos + m * D, sin + m * D, D);
                size_t at = ((size_t)((row0 + m) * G + g) * S + lengths[m]) * D;
                for (int64_t i = 0; i < D; i++) { ly->keys[at + i] = k[i]; ly->values[at + i] = v[i]; }
            }
        }
        /* attention of each (row, query head) over the row's cached positions 0..lengths[m] */
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < M * H; t++) {
            int64_t m = t / H, head = t % H, g = head / group, n = lengths[m] + 1;
            const float *q = qkv + m * QKV + head * D;
            const float *kb = ly->keys + (size_t)((row0 + m) * G + g) * S * D;
            const float *vb = ly->values + (size_t)((row0 + m) * G + g) * S * D;
            float *p = scores + t * S, best = -INFINITY, total = 0.0f;
            for (int64_t s = 0; s < n; s++) {
                p[s] = dot(q, kb + s * D, D) * inv_sqrt_d;
                best = p[s] > best ? p[s] : best;
            }
            for (int64_t s = 0; s < n; s++) { p[s] = expf(p[s] - best); total += p[s]; }
            float inv = 1.0f / total;
            __m256 acc[16]; /* head_dim <= 128 */
            for (int64_t i = 0; i < D / 8; i++) acc[i] = _mm256_setzero_ps();
            for (int64_t s = 0; s < n; s++) {
                __m256 ps = _mm256_set1_ps(p[s] * inv);
                for (int64_t i = 0; i < D / 8; i++) acc[i] = _mm256_fmadd_ps(ps, _mm256_loadu_ps(vb + s * D + 8 * i), acc[i]);
            }
            for (int64_t i = 0; i < D / 8; i++) _mm256_storeu_ps(attn + m * H * D + head * D + 8 * i, acc[i]);
        }
        gemm(&ly->o, attn, M, x, HD, 1); /* residual: x += o_proj(attn) */
#pragma omp for schedule(static)
        for (int64_t m = 0; m < M; m++) rms_norm(x + m * HD, ly->post_norm, h + m * HD, HD, eps);
        gemm(&ly->gate_up, h, M, gu, 2 * I, 0);
#pragma omp for schedule(static)
        for (int64_t t = 0; t < M * I; t++) {
            int64_t m = t / I, j = t % I;
            float gate = gu[m * 2 * I + j];
            act[t] = gate / (1.0f + expf(-gate)) * gu[m * 2 * I + I + j]; /* silu(gate) * up */
        }
        gemm(&ly->down, act, M, x, HD, 1); /* residual: x += down_proj(act) */
    }
    for (int64_t m = 0; m < M; m++) rms_norm(x + m * HD, md->final_norm, x + m * HD, HD, eps);
}
