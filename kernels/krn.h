/* libpdkernels public interface: number formats, CPU features, and the compute kernels the model calls.
 * Kernels work on caller-owned memory, never allocate in a hot path and never do I/O. */
#ifndef KRN_H
#define KRN_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/pd_common.h"

/* ---- number formats ------------------------------------------------------------------------- */
typedef uint16_t krn_bf16;

static inline float krn_bf16_to_f32(krn_bf16 h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even; NaN stays NaN. */
static inline krn_bf16 krn_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (krn_bf16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (krn_bf16)(u >> 16);
}

static inline float krn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ffu;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* OCP FP8 E4M3 (the "fn" variant used by DeepSeek checkpoints): bias 7, no infinities, 0x7f/0xff NaN,
 * max finite 448. */
static inline float krn_e4m3_to_f32(uint8_t v)
{
    uint32_t sign = v >> 7, exp = (v >> 3) & 0xfu, man = v & 0x7u;
    float r;
    if (exp == 0xf && man == 0x7) return NAN;
    if (exp == 0) r = ldexpf((float)man, -9);                  /* subnormal: man/8 * 2^-6 */
    else r = ldexpf(1.0f + (float)man / 8.0f, (int)exp - 7);
    return sign ? -r : r;
}

/* Round to nearest even with saturation to +-448 (what torch's float8_e4m3fn cast does for finite input). */
uint8_t krn_f32_to_e4m3(float f);

/* ---- CPU features ------------------------------------------------------------------------------ */
typedef struct {
    int avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512_vnni, avx512_bf16, avx512_fp16;
    int amx_tile, amx_bf16, amx_int8;
} krn_cpu_features;

/* Detected once (CPUID + OS support via XGETBV); PDSERVE_PORTABLE=1 in the environment reports none. */
const krn_cpu_features *krn_cpu_get(void);
/* Writes a one-line summary like "avx512f avx512_bf16 amx_bf16" into buf. */
void krn_cpu_describe(char *buf, size_t len);

/* ---- matrices ------------------------------------------------------------------------------------ */
/* Element types. F8E4M3 is a weight-only type: FP8 values with float32 scales per block of
 * block_r x block_c elements (DeepSeek's weight_scale_inv), kept as published so FP8 checkpoints stay exact. */
typedef enum { KRN_F32 = 0, KRN_BF16 = 1, KRN_F16 = 2, KRN_F8E4M3 = 3 } krn_type;

static inline size_t krn_type_size(krn_type t) { return t == KRN_F32 ? 4 : t == KRN_F8E4M3 ? 1 : 2; }
const char *krn_type_name(krn_type t);

/* IEEE binary16, round to nearest even; overflow gives infinity, NaN stays NaN. Portable C: no compiler's
 * _Float16 is needed. */
static inline uint16_t krn_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu, man = x & 0x7fffffu;
    if (exp == 0xff) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) { /* subnormal half (or zero) */
        if (e < -10) return (uint16_t)sign;
        man |= 0x800000u;
        int shift = 14 - e;
        uint32_t h = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (man >> 13), rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++; /* a carry moves into the exponent, as it should */
    return (uint16_t)(sign | h);
}

/* Packed forms a matrix may carry besides its plain data (see krn_mat_prepack and docs/kernels.md). */
typedef enum {
    KRN_PACK_NONE = 0,
    KRN_PACK_BF16_N32K2 = 1, /* bf16 [ceil(rows/32)][ceil(cols/2)][32][2]: k-pairs of 32 output rows */
    KRN_PACK_F8_N32K1 = 2,   /* e4m3 [ceil(rows/32)][cols][32] + f32 column scales [ceil(rows/32)][kblocks][32] */
    KRN_PACK_I8_N32K4 = 3,   /* W8A8: int8 [ceil(rows/32)][ceil(cols/4)][32][4] + f32 row scale + int32 row sum */
} krn_pack;

/* A row-major weight matrix W[rows, cols]: rows = output features, cols = input features (HF layout). */
typedef struct {
    krn_type type;
    int rows, cols;
    const void *data;     /* rows * cols elements of type; not owned */
    const float *scale;   /* F8E4M3 only: [ceil(rows/block_r)][ceil(cols/block_c)]; not owned */
    int block_r, block_c; /* F8E4M3 only */
    /* Set by krn_mat_prepack; data stays valid and is what krn_mat_row_part and the reference path read,
     * except for KRN_PACK_I8_N32K4, which changes the numbers (W8A8) and is used by every path. */
    krn_pack pack;
    const void *packed;   /* the packed weights in a caller-owned buffer; not owned */
    const float *pscale;  /* F8: [ceil(rows/32)][ceil(cols/block_c)][32] block scale * 2^120 per output row;
                           * I8: [ceil(rows/32)*32] per-output-row scale */
    const int32_t *psum;  /* I8 only: [ceil(rows/32)*32] sum over k of the int8 weights of each row */
} krn_mat;

/* Packing: the loader calls these once per matrix. mode KRN_PREPACK_FAST packs for the fastest kernel this
 * CPU has (nothing when that kernel reads the plain data or the portable path is in use); KRN_PREPACK_W8A8
 * quantises to int8 with per-output-row scales (every path; activations are then quantised per token). */
typedef enum { KRN_PREPACK_FAST = 0, KRN_PREPACK_W8A8 = 1 } krn_prepack_mode;
/* Bytes of the caller-owned buffer krn_mat_prepack needs; 0 means there is no packed form to make. */
size_t krn_mat_prepack_size(const krn_mat *w, krn_prepack_mode mode);
/* Fills buf (krn_mat_prepack_size bytes, 64-byte aligned) and points w->packed etc. into it. buf must outlive
 * every use of w. Reads w->data; never allocates. PD_ERR_INVALID when the size is 0 or buf is NULL. */
pd_status krn_mat_prepack(krn_mat *w, krn_prepack_mode mode, void *buf);

/* Row r, columns [c0, c0+n) of W as float32 (dequantised for FP8). */
void krn_mat_row_part(const krn_mat *w, int r, int c0, int n, float *out);

/* Scratch floats krn_linear may need for a matrix with this many columns (caller preallocates). */
#define KRN_LINEAR_BLOCK 64
static inline size_t krn_linear_scratch(int cols) { return (size_t)KRN_LINEAR_BLOCK * (size_t)(cols + 4) + 64; }

/* y[m, w->rows] = x[m, w->cols] . W^T, float32 accumulation. ldy: row stride of y (>= w->rows).
 * scratch: krn_linear_scratch(w->cols) floats. Each output is summed in one fixed order whatever m, on every
 * kernel table: a row's bits do not depend on the rows beside it (decode, verify; docs/kernels.md). */
void krn_linear(const krn_mat *w, const float *x, int m, float *y, int ldy, float *scratch);
/* krn_linear with KRN_LINEAR_* flags (below; 0: krn_linear). */
void krn_linear_ex(const krn_mat *w, const float *x, int m, float *y, int ldy, float *scratch, unsigned flags);
/* Options of one product (krn_linear_item.flags). 0: the exact default.
 * KRN_LINEAR_BF16_ACT: the product may round x to bf16 (round to nearest even; inputs and products below 2^-126 count
 * as 0) where that is faster: packed BF16 weights on a CPU with AVX512-BF16 (vdpbf16ps, f32 accumulation). Each output
 * is then still summed in one fixed order, so a row's result does not depend on m, but it differs from the exact result
 * by up to 2^-8 (bf16's unit roundoff) relative per product term. For prompt prefill only: decode and verify passes
 * must stay exact (docs/kernels.md, "Numerics choice"). Ignored elsewhere (other weights, no AVX512-BF16,
 * PDSERVE_BF16_DOT=0, the portable path): there the product is krn_linear's, so on every table a row's bits do not
 * depend on m. */
#define KRN_LINEAR_BF16_ACT 1u
/* One product of a group: y[m, w->rows] = x[m, w->cols] . W^T (ldy: row stride of y). */
typedef struct {
    const krn_mat *w;
    const float *x;
    int m, ldy;
    float *y;
    unsigned flags; /* KRN_LINEAR_* (0: exact) */
} krn_linear_item;
/* Every item's product, as krn_linear computes it (the same bits; with its flags honoured), but the packed BF16/FP8
 * ones run as ONE job on the pool, split over all their output blocks together: a decode step's experts (8 x gate/up,
 * then 8 x down) cost one wake-up of the pool each instead of 24, and each thread streams long runs of weights. Other
 * items (W8A8, F32, the portable path) run one after another through krn_linear. No two items may write the same y
 * element, and no item may read another's y. scratch: krn_linear_scratch(max cols) floats. */
void krn_linear_group(const krn_linear_item *items, int n, float *scratch);
/* y[i*ldy + c] (+)= sum_d x[i*ldx + d] * W[r0 + d, c0 + c] for i < m, c < n, d < k — the "transposed" use of a
 * sub-block of W, used by MLA's absorbed decode form (W is kv_b_proj; the rows of x are one head's q_nope of
 * several tokens). accumulate: 0 overwrite, 1 add. Each output is one FMA chain over d in order, whatever m. */
void krn_matmul_sub(const krn_mat *w, int r0, int c0, const float *x, size_t ldx, int m, int k, int n, float *y,
                    size_t ldy, int accumulate);
/* y[i*ldy + j] = dot(x[i*ldx ..], W[r0 + j, :]) for i < m, j < n: vectors against a band of rows (MLA's absorbed
 * value projection uses a head's rows of kv_b_proj). Each output is summed the same way whatever m. */
void krn_linear_rows(const krn_mat *w, int r0, int n, const float *x, size_t ldx, int m, float *y, size_t ldy);
/* Greedy decoding's argmax, without every logit computed exactly. out[i] = the index of the largest of
 * y_i[o] = x_i . W[o, :] over o < n, the first on ties: the answer krn_argmax gives on krn_linear's output, always
 * (it is exact, not an estimate). A cheap product over x rounded to bf16 (vdpbf16ps) screens the outputs with a
 * proven error bound (|x| |W[o, :]| times bf16's unit roundoff plus both sums' rounding); only the outputs that can
 * still be the largest are computed with krn_linear's own kernel. Returns 1 when done, 0 when this CPU or matrix
 * has no screen (packed BF16 weights on AVX512-BF16 only; PDSERVE_ARGMAX_SCREEN=0 turns it off): the caller then
 * computes the logits itself. rownorm: krn_mat_row_norms of w. y: m rows (stride ldy >= n) of scratch whose
 * contents afterwards are unspecified. scratch: krn_linear_argmax_scratch(w->cols, m) bytes. */
int krn_linear_argmax(const krn_mat *w, const float *rownorm, int n, const float *x, int m, float *y, int ldy,
                      int32_t *out, void *scratch);
size_t krn_linear_argmax_scratch(int cols, int m);
/* 1 when krn_linear_argmax can screen w on this CPU (with its row norms). */
int krn_linear_argmax_available(const krn_mat *w);
/* Since the process started: rows krn_linear_argmax answered, and how many of them it computed whole (a flat row:
 * too many outputs close to the largest for the screen to rule out). */
void krn_linear_argmax_counts(uint64_t *rows, uint64_t *whole);
/* out[r] >= the Euclidean norm of row r of W (an upper bound, for krn_linear_argmax); PD_ERR_RANGE when one is
 * not finite (the screen cannot bound such a matrix). */
pd_status krn_mat_row_norms(const krn_mat *w, float *out);
/* Copies row r of W as float32 into out[cols] (embedding lookup). */
void krn_mat_row(const krn_mat *w, int r, float *out);

/* ---- elementwise and normalisation ---------------------------------------------------------------- */
/* out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i]; out may alias x. */
void krn_rmsnorm(const float *x, const float *w, int n, float eps, float *out);
/* gate[i] = silu(gate[i]) * up[i] */
void krn_silu_mul(float *gate, const float *up, int n);
/* Rotates interleaved pairs (x[2i], x[2i+1]) by angles whose cos/sin are given: [n/2] each. */
void krn_rope_interleaved(float *x, int n, const float *cos_t, const float *sin_t);
/* In-place softmax over n values; returns nothing. */
void krn_softmax(float *x, int n);
/* y[i] += a * x[i] */
void krn_axpy(int n, float a, const float *x, float *y);

/* ---- attention tiles (online softmax; no score matrix beyond one tile) ------------------------------
 * State per (query, head): running max m, running sum l, accumulator acc[dv].
 * krn_attn_tile: for queries i in [0, nq) and heads h in [0, nh):
 *   keys j in [0, nk) with j_pos[j] <= q_limit[i] take part;
 *   score = scale * (dot(qa[i,h,:da], ka[j,h?,:da]) + dot(qb[i,h,:db], kb[j,:db]))
 *   acc[i,h,:] = acc*corr + p * v[j,h?,:dv]
 * Strides are in floats. ka_hstride/v_hstride = 0 means one shared head (MLA absorbed decode). */
typedef struct {
    int nq, nh, nk;
    int da, db, dv;
    const float *qa; int qa_stride, qa_hstride;   /* [nq][nh][da] */
    const float *qb; int qb_stride, qb_hstride;   /* [nq][nh][db] (rope part) */
    const float *ka; int ka_stride, ka_hstride;   /* [nk][nh or 1][da] */
    const float *kb; int kb_stride;               /* [nk][db] shared by all heads */
    const float *v;  int v_stride, v_hstride;     /* [nk][nh or 1][dv] */
    const int *q_limit;                           /* [nq]: last key position query i may see */
    int k_pos0;                                   /* position of key 0 (keys are consecutive) */
    float scale;
    float *m, *l;                                 /* [nq*nh] */
    float *acc; int acc_stride, acc_hstride;      /* [nq][nh][dv] */
    float *scores;                                /* scratch [nk] */
} krn_attn_tile_args;
void krn_attn_tile(const krn_attn_tile_args *a);
/* The same for the units u = i*nh + h in [u0, u1) only, on the calling thread (callers that split the work
 * themselves, e.g. over key tiles). A unit's result does not depend on the range it is computed in. */
void krn_attn_tile_units(const krn_attn_tile_args *a, int u0, int u1);
/* Initialises m=-inf, l=0, acc=0 for nq*nh states; krn_attn_finish divides acc by l. */
void krn_attn_init(int nq, int nh, int dv, float *m, float *l, float *acc, int acc_stride, int acc_hstride);
void krn_attn_finish(int nq, int nh, int dv, const float *l, float *acc, int acc_stride, int acc_hstride);

/* ---- sampling -------------------------------------------------------------------------------------- */
typedef struct {
    float temperature;        /* <= 0: greedy */
    int top_k;                /* <= 0: off */
    float top_p;              /* >= 1: off */
    float min_p;              /* <= 0: off */
    float repetition_penalty; /* 1: off; applies to prompt and output tokens */
    float frequency_penalty;  /* 0: off; output tokens */
    float presence_penalty;   /* 0: off; output tokens */
} krn_sampling_params;

static inline krn_sampling_params krn_sampling_defaults(void)
{
    krn_sampling_params p = {1.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f};
    return p;
}

typedef struct krn_sampler_s *krn_sampler;
/* Scratch for one vocabulary size; one sampler per thread. */
pd_status krn_sampler_create(int vocab, krn_sampler *out);
void krn_sampler_destroy(krn_sampler s);
/* Applies penalties in place to logits[vocab], then samples. prompt/output: the request's token history.
 * rng is the request's generator (seeded per request for reproducibility). Returns the token; writes the
 * log-probability of it under the final (processed) distribution to *logprob when non-NULL.
 * probs_out, when non-NULL, receives the processed distribution [vocab] (speculative decoding needs it). */
int32_t krn_sample(krn_sampler s, float *logits, const krn_sampling_params *p, const int32_t *prompt,
                   int n_prompt, const int32_t *output, int n_output, pd_rng *rng, float *logprob,
                   float *probs_out);
/* Index of the largest value (first one on ties). */
int32_t krn_argmax(const float *x, int n);
/* log(sum exp(x[i])), by the largest value first: -inf when every value is -inf (n > 0). Logprobs of every
 * emitted token need it over the whole vocabulary. */
float krn_logsumexp(const float *x, int n);
/* dst[0..n) = src[0..n) converted from F32, F16 or BF16 to float32, exactly (every half and bf16 value, subnormals
 * included, is a float). KV-cache rows on their way into attention. */
void krn_to_f32(krn_type t, const void *src, float *dst, int n);

/* ---- dispatch and threads ------------------------------------------------------------------------------
 * One table of kernel pointers is filled at first use from krn_cpu_get() (PDSERVE_PORTABLE=1: portable C).
 * krn_kernels_name() says which: "avx512", "avx512+bf16dot" (with the KRN_LINEAR_BF16_ACT kernel) or "ref". */
const char *krn_kernels_name(void);

/* The thread pool every kernel splits its work over (ith/nth over output blocks). Created once: by
 * krn_threads_init, or at the first kernel call with PDSERVE_THREADS threads (default: every online core).
 * n <= 0 means that default. Re-initialising (tests, benchmarks) joins the old workers first; it must not
 * race a running kernel. While the pool has more than one thread OpenBLAS is held at one thread, so the two
 * never oversubscribe the cores. Calls from several application threads are safe: one runs on the pool,
 * the others run their kernel on their own thread. */
pd_status krn_threads_init(int n);
int krn_threads_get(void);
/* Runs fn(ctx, ith, nth) once for every piece ith in [0, nth) on the pool's threads (the caller included) and
 * returns when all are done. nth may exceed krn_threads_get(): pieces are claimed as threads come free, so
 * kernels pass a few pieces per thread. Nested calls (fn calling krn_parallel) run their pieces inline. */
typedef void (*krn_task_cb)(void *ctx, int ith, int nth);
void krn_parallel(krn_task_cb fn, void *ctx, int nth);

#endif
