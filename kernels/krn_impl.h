/* Internal to libpdkernels: the kernel table that dispatch.c fills once from CPU feature detection, and the
 * entry points of each ISA's kernels. Public wrappers (krn_linear, krn_attn_tile, ...) route through it. */
#ifndef KRN_IMPL_H
#define KRN_IMPL_H

#include "kernels/krn.h"

/* A GEMM over packed weights for the output-row blocks [nb0, nb1) of 32 rows each:
 * y[m, n] = x[m, :] . W[n, :] for n in those blocks (clipped to w->rows). Never allocates. */
typedef void (*krn__gemm_fn)(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1);
/* W8A8: xq are activations quantised per row (u8 = q + 128, row stride kq4 = ceil(cols/4)*4), xs their scales. */
typedef void (*krn__gemm_i8_fn)(const krn_mat *w, const uint8_t *xq, const float *xs, int m, float *y, int ldy,
                                int nb0, int nb1);
/* Row-major F32 weights, rows [n0, n1): y[m, n] = x[m, :] . W[n, :] (small m; large m goes to sgemm). */
typedef void (*krn__gemv_f32_fn)(const krn_mat *w, const float *x, int m, float *y, int ldy, int n0, int n1);
/* Quantises rows of x for W8A8: u8 = round(x * 127 / amax) + 128, zero padded to kq4; scale = amax / 127. */
typedef void (*krn__quant_rows_fn)(const float *x, int m, int k, int kq4, uint8_t *xq, float *xs);

typedef struct {
    const char *name;
    krn_pack fast_bf16, fast_f8;   /* what KRN_PREPACK_FAST makes for BF16 / F8E4M3 weights */
    krn__gemm_fn gemm_bf16;        /* KRN_PACK_BF16_N32K2 */
    krn__gemm_fn gemm_bf16dot;     /* KRN_PACK_BF16_N32K2 with x rounded to bf16 (KRN_LINEAR_BF16_ACT); NULL: none */
    krn__gemm_fn gemm_f8;          /* KRN_PACK_F8_N32K1 */
    krn__gemm_i8_fn gemm_i8;       /* KRN_PACK_I8_N32K4 */
    krn__quant_rows_fn quant_rows;
    krn__gemv_f32_fn gemv_f32;     /* NULL: reference */
    void (*attn_tile)(const krn_attn_tile_args *a, int u0, int u1); /* (query, head) units u = i*nh + h */
    void (*matmul_sub)(const krn_mat *w, int r0, int c0, const float *x, size_t ldx, int m, int k, int n, float *y,
                       size_t ldy, int accumulate);
    void (*linear_rows)(const krn_mat *w, int r0, int n, const float *x, size_t ldx, int m, float *y, size_t ldy);
    float (*logsumexp)(const float *x, int n);
    void (*to_f32)(krn_type t, const void *src, float *dst, int n);
    /* krn_linear_argmax's screen (NULL: none; the caller then computes the logits): x rounded to bf16 pairs, the
     * approximate products of packed BF16 weights over it, and one row's candidate scan */
    void (*round_bf16_pairs)(const float *x, size_t ldx, int m, int k, uint32_t *dst, size_t ldd);
    void (*gemm_bf16dot_rows)(const krn_mat *w, const uint32_t *xb, size_t ldxb, int m, float *y, int ldy, int nb0,
                              int nb1);
    int (*screen)(const float *a, const float *wn, int n, float cx, float a0, int32_t *cand, int cap);
} krn__ops;

/* The table in use (filled on first call; PDSERVE_PORTABLE=1 gives the reference one, PDSERVE_KERNELS a lower one). */
const krn__ops *krn__ops_get(void);
/* The tables, for tests that compare them: the reference one always exists; avx2 is NULL when the CPU lacks AVX2 or
 * FMA, avx512 when it lacks AVX-512 F/BW/VL (both NULL with PDSERVE_PORTABLE=1). */
const krn__ops *krn__ops_ref(void);
const krn__ops *krn__ops_avx2(void);
const krn__ops *krn__ops_avx512(void);
/* The AVX-512 table a CPU with this one's AVX-512 F/BW/VL but neither VNNI nor BF16 gets (NULL when this one lacks
 * F/BW/VL): kernels/avx512/ only, the AVX2 int8 GEMM, no bf16-activation GEMM and no argmax screen. */
const krn__ops *krn__ops_avx512_base(void);
/* Fills the AVX2 and AVX-512 tables a CPU with features f gets (PDSERVE_BF16_DOT and PDSERVE_ARGMAX_SCREEN apply;
 * PDSERVE_KERNELS does not): each ISA group of kernels (kernels/CMakeLists.txt) only when f has every flag it is
 * built with. Returns which it filled (KRN__HAVE_*); the others are left as they were. */
#define KRN__HAVE_AVX2 1u
#define KRN__HAVE_AVX512 2u
unsigned krn__ops_fill(const krn_cpu_features *f, krn__ops *avx2, krn__ops *avx512);
/* Uses the given table for the rest of the process (tests and benchmarks); NULL restores the detected one. */
void krn__ops_force(const krn__ops *ops);

/* reference kernels (kernels/ref/) */
void krn__linear_ref(const krn_mat *w, const float *x, int m, float *y, int ldy, float *scratch);
/* Outputs [n0, n1) of y[m, w->rows] = x . W^T, each one dot product in one fixed order whatever m: every row
 * gets the bits krn__linear_ref gives a single row. Reads each weight row once for all m rows. rowbuf: w->cols
 * floats (F16/F8 weights are converted a row at a time). */
void krn__linear_fixed_ref(const krn_mat *w, int n0, int n1, const float *x, int m, float *y, int ldy, float *rowbuf);
void krn__gemm_i8_ref(const krn_mat *w, const uint8_t *xq, const float *xs, int m, float *y, int ldy, int nb0,
                      int nb1);
void krn__quant_rows_ref(const float *x, int m, int k, int kq4, uint8_t *xq, float *xs);
void krn__attn_tile_ref(const krn_attn_tile_args *a, int u0, int u1);
/* The units [u0, u1) of an attention tile in blocks that read the same keys and values, for the vector tiles: with
 * one shared K/V head (MLA absorbed decode) up to qb consecutive units (a query's heads, then the next query's); else,
 * per head, up to qb of its queries. fn runs each block (kernels/attn_blocks.c). */
#define KRN__ATTN_QB_MAX 16
typedef struct {
    int n; /* units in the block */
    int u[KRN__ATTN_QB_MAX], i[KRN__ATTN_QB_MAX], h[KRN__ATTN_QB_MAX];
} krn__attn_block;
void krn__attn_blocks(const krn_attn_tile_args *a, int u0, int u1, int qb,
                      void (*fn)(const krn_attn_tile_args *a, const krn__attn_block *b, void *arg), void *arg);
void krn__matmul_sub_ref(const krn_mat *w, int r0, int c0, const float *x, size_t ldx, int m, int k, int n,
                         float *y, size_t ldy, int accumulate);
void krn__linear_rows_ref(const krn_mat *w, int r0, int n, const float *x, size_t ldx, int m, float *y,
                          size_t ldy);
float krn__logsumexp_ref(const float *x, int n);
void krn__to_f32_ref(krn_type t, const void *src, float *dst, int n);

/* AVX2 + FMA kernels (kernels/avx2/, compiled with those flags; only called after detection). Same packed layouts
 * as AVX-512; the BF16 and FP8 products, the attention tile and MLA's absorbed products give the AVX-512 kernels'
 * bits, the int8 GEMM the VNNI kernel's and the reference's. */
void krn__gemm_bf16_avx2_2x32(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1);
void krn__gemm_f8_avx2_2x32(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1);
void krn__gemv_f32_avx2_4x8(const krn_mat *w, const float *x, int m, float *y, int ldy, int n0, int n1);
void krn__gemm_i8_avx2_2x32(const krn_mat *w, const uint8_t *xq, const float *xs, int m, float *y, int ldy, int nb0,
                            int nb1);
void krn__attn_tile_avx2(const krn_attn_tile_args *a, int u0, int u1);
void krn__matmul_sub_avx2(const krn_mat *w, int r0, int c0, const float *x, size_t ldx, int m, int k, int n, float *y,
                          size_t ldy, int accumulate);
void krn__linear_rows_avx2(const krn_mat *w, int r0, int n, const float *x, size_t ldx, int m, float *y, size_t ldy);

/* AVX-512 kernels, only called after detection: kernels/avx512/ (F/BW/VL + FMA), kernels/avx512_vnni/ (+ VNNI:
 * krn__gemm_i8_avx512vnni_12x32) and kernels/avx512_bf16/ (+ BF16: *_bf16dot_*, krn__round_bf16_pairs_avx512 and
 * krn__screen_avx512) */
void krn__gemm_bf16_avx512_12x32(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1);
void krn__gemm_bf16dot_avx512_12x32(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1);
void krn__round_bf16_pairs_avx512(const float *x, size_t ldx, int m, int k, uint32_t *dst, size_t ldd);
void krn__gemm_bf16dot_rows_avx512(const krn_mat *w, const uint32_t *xb, size_t ldxb, int m, float *y, int ldy,
                                   int nb0, int nb1);
int krn__screen_avx512(const float *a, const float *wn, int n, float cx, float a0, int32_t *cand, int cap);
void krn__gemm_f8_avx512_12x32(const krn_mat *w, const float *x, int m, float *y, int ldy, int nb0, int nb1);
void krn__gemm_i8_avx512vnni_12x32(const krn_mat *w, const uint8_t *xq, const float *xs, int m, float *y, int ldy,
                                   int nb0, int nb1);
void krn__quant_rows_avx512(const float *x, int m, int k, int kq4, uint8_t *xq, float *xs);
void krn__gemv_f32_avx512_4x16(const krn_mat *w, const float *x, int m, float *y, int ldy, int n0, int n1);
void krn__attn_tile_avx512(const krn_attn_tile_args *a, int u0, int u1);
void krn__matmul_sub_avx512(const krn_mat *w, int r0, int c0, const float *x, size_t ldx, int m, int k, int n,
                         float *y, size_t ldy, int accumulate);
void krn__linear_rows_avx512(const krn_mat *w, int r0, int n, const float *x, size_t ldx, int m, float *y,
                          size_t ldy);
float krn__logsumexp_avx512(const float *x, int n);
void krn__to_f32_avx512(krn_type t, const void *src, float *dst, int n);

/* Packed-layout geometry shared by packers and kernels. */
#define KRN_NR 32
static inline int krn__nblocks(int rows) { return (rows + KRN_NR - 1) / KRN_NR; }
static inline int krn__kq4(int cols) { return (cols + 3) & ~3; }
static inline int krn__f8_kblocks(const krn_mat *w) { return (w->cols + w->block_c - 1) / w->block_c; }
/* 2^120: the F8 column scales carry it so that e4m3 bits placed in a float's exponent/mantissa decode with
 * one multiply (see kernels/pack.c). */
#define KRN_F8_BIAS_SCALE 1.329227995784916e36f

#endif
