/* Kernel tests, second file of test_kernels: the "paths" case reruns the linear, W8A8, attention and MLA kernels on
 * every kernel table this CPU supports (reference, AVX2, AVX-512) and thread counts 1-3, packed as the loader packs,
 * and checks which table a CPU's features select. test_kernels.c holds the reference case and main. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/krn.h"
#include "kernels/krn_impl.h"
#include "pd_check.h"
#include "test_kernels.h"

#define MAX_TABLES 4 /* ref, avx2, avx512, avx512 without VNNI/BF16 */
static const krn__ops *g_tables[MAX_TABLES];
static int g_ntables;

static void collect_tables(void)
{
    g_ntables = 0;
    g_tables[g_ntables++] = krn__ops_ref();
    if (krn__ops_avx2()) g_tables[g_ntables++] = krn__ops_avx2();
    if (krn__ops_avx512()) g_tables[g_ntables++] = krn__ops_avx512();
    if (krn__ops_avx512_base()) g_tables[g_ntables++] = krn__ops_avx512_base();
}

/* Which kernels a CPU gets from its features: each ISA group only when every flag it is compiled with is there (an
 * AVX-512F/BW/VL CPU without VNNI or BF16 never reaches kernels/avx512_vnni/ or kernels/avx512_bf16/). */
START_TEST(test_dispatch_features)
{
    const int bf16dot_on = !getenv("PDSERVE_BF16_DOT"), screen_on = !getenv("PDSERVE_ARGMAX_SCREEN");
    krn__ops t2, t5;
    krn_cpu_features f = {0};
    ck_assert_uint_eq(krn__ops_fill(&f, &t2, &t5), 0);
    f.avx2 = 1;
    ck_assert_uint_eq(krn__ops_fill(&f, &t2, &t5), 0); /* AVX2 without FMA: portable */
    f.fma = 1;
    ck_assert_uint_eq(krn__ops_fill(&f, &t2, &t5), KRN__HAVE_AVX2);
    ck_assert_str_eq(t2.name, "avx2");
    ck_assert_ptr_eq(t2.gemm_i8, krn__gemm_i8_avx2_2x32);
    ck_assert_ptr_eq(t2.quant_rows, krn__quant_rows_ref);
    ck_assert_ptr_null(t2.gemm_bf16dot);
    f.avx512f = f.avx512bw = 1;
    ck_assert_uint_eq(krn__ops_fill(&f, &t2, &t5), KRN__HAVE_AVX2); /* no VL: no AVX-512 table */
    f.avx512vl = 1;
    ck_assert_uint_eq(krn__ops_fill(&f, &t2, &t5), KRN__HAVE_AVX2 | KRN__HAVE_AVX512);
    ck_assert_str_eq(t5.name, "avx512");
    ck_assert_ptr_eq(t5.gemm_bf16, krn__gemm_bf16_avx512_12x32);
    ck_assert_ptr_eq(t5.quant_rows, krn__quant_rows_avx512);
    ck_assert_ptr_eq(t5.gemm_i8, krn__gemm_i8_avx2_2x32); /* no VNNI: the AVX2 int8 GEMM */
    ck_assert_ptr_null(t5.gemm_bf16dot);
    ck_assert_ptr_null(t5.round_bf16_pairs);
    ck_assert_ptr_null(t5.gemm_bf16dot_rows);
    ck_assert_ptr_null(t5.screen);
    f.avx512_vnni = 1;
    krn__ops_fill(&f, &t2, &t5);
    ck_assert_ptr_eq(t5.gemm_i8, krn__gemm_i8_avx512vnni_12x32);
    ck_assert_ptr_null(t5.gemm_bf16dot);
    f.avx512_vnni = 0;
    f.avx512_bf16 = 1;
    krn__ops_fill(&f, &t2, &t5);
    ck_assert_ptr_eq(t5.gemm_i8, krn__gemm_i8_avx2_2x32);
    if (bf16dot_on) {
        ck_assert_ptr_eq(t5.gemm_bf16dot, krn__gemm_bf16dot_avx512_12x32);
        ck_assert_str_eq(t5.name, "avx512+bf16dot");
    }
    if (screen_on) ck_assert_ptr_eq(t5.screen, krn__screen_avx512);
    /* AVX-512 without AVX2 (no such CPU, but the table must not reach kernels/avx2/) */
    f.avx2 = 0;
    ck_assert_uint_eq(krn__ops_fill(&f, &t2, &t5), KRN__HAVE_AVX512);
    ck_assert_ptr_eq(t5.gemm_i8, krn__gemm_i8_ref);
    /* this CPU's tables agree with what its features give */
    const krn__ops *base = krn__ops_avx512_base();
    ck_assert(!base == !krn__ops_avx512());
    if (base) {
        ck_assert_ptr_eq(base->gemm_i8, krn__ops_avx2() ? krn__gemm_i8_avx2_2x32 : krn__gemm_i8_ref);
        ck_assert_ptr_null(base->gemm_bf16dot);
        ck_assert_ptr_null(base->screen);
        ck_assert_ptr_eq(base->quant_rows, krn__quant_rows_avx512);
    }
}
END_TEST

/* Weights of type t (random, FP8 with awkward block scales) and their exact float values. */
typedef struct {
    krn_mat w;
    void *data;
    float *scale, *exact;
    void *pack;
} test_mat;

static void make_mat(test_mat *tm, krn_type t, int n, int k)
{
    memset(tm, 0, sizeof *tm);
    const int br = 32, bc = 48, sr = (n + br - 1) / br, sc = (k + bc - 1) / bc;
    tm->exact = malloc(sizeof(float) * n * k);
    tm->data = malloc((size_t)n * k * 4);
    tm->scale = malloc(sizeof(float) * sr * sc);
    for (int i = 0; i < sr * sc; i++) tm->scale[i] = 0.002f * (1 + i % 5);
    for (int r = 0; r < n; r++)
        for (int c = 0; c < k; c++) {
            size_t i = (size_t)r * k + c;
            float v = randn() * 0.1f;
            if (t == KRN_F32) ((float *)tm->data)[i] = tm->exact[i] = v;
            else if (t == KRN_BF16) tm->exact[i] = krn_bf16_to_f32(((krn_bf16 *)tm->data)[i] = krn_f32_to_bf16(v));
            else {
                float s = tm->scale[(r / br) * sc + c / bc];
                uint8_t q = krn_f32_to_e4m3(v / s);
                if ((i % 97) == 3) q = (uint8_t)((i & 1) << 7 | (i % 8)); /* subnormals and zeros */
                ((uint8_t *)tm->data)[i] = q;
                tm->exact[i] = krn_e4m3_to_f32(q) * s;
            }
        }
    tm->w =
        (krn_mat){.type = t, .rows = n, .cols = k, .data = tm->data, .scale = tm->scale, .block_r = br, .block_c = bc};
}

static void pack_mat(test_mat *tm, krn_prepack_mode mode)
{
    free(tm->pack);
    tm->pack = NULL;
    krn_mat plain = tm->w;
    plain.pack = KRN_PACK_NONE;
    plain.packed = NULL;
    tm->w = plain;
    size_t n = krn_mat_prepack_size(&tm->w, mode);
    if (!n) return;
    tm->pack = pd_aligned_alloc(n);
    ck_assert_int_eq(krn_mat_prepack(&tm->w, mode, tm->pack), PD_OK);
}

static void free_mat(test_mat *tm)
{
    free(tm->data);
    free(tm->scale);
    free(tm->exact);
    free(tm->pack);
}

/* krn_linear_argmax gives krn_argmax of the exact product, bit for bit in the index: random rows, exact ties (a
 * duplicated weight row: the lower index wins), a one-ulp near tie, a pruned prefix of the outputs, a flat row (every
 * output a candidate) and a partial last panel; on a table without the screen it declines (returns 0). */
START_TEST(test_paths_linear_argmax)
{
    const int shapes[][2] = {{1000, 301}, {777, 512}, {4100, 64}};
    const int ms[] = {1, 2, 3, 4, 5, 13, 16};
    uint64_t screened = 0, extra_whole = 0;
    collect_tables();
    for (int si = 0; si < 3; si++) {
        const int n = shapes[si][0], k = shapes[si][1];
        test_mat tm;
        make_mat(&tm, KRN_BF16, n, k);
        krn_bf16 *d = tm.data;
        for (int c = 0; c < k; c++) { /* row 20 long; 700 its copy; 701 the copy one bf16 ulp off in one place */
            d[20 * k + c] = krn_f32_to_bf16(4 * krn_bf16_to_f32(d[20 * k + c]));
            d[700 * k + c] = d[20 * k + c];
            d[701 * k + c] = (krn_bf16)(d[20 * k + c] + (c == k / 2));
        }
        for (int i = 0; i < n * k; i++) tm.exact[i] = krn_bf16_to_f32(d[i]);
        pack_mat(&tm, KRN_PREPACK_FAST);
        float *rn = malloc(sizeof(float) * n);
        ck_assert_int_eq(krn_mat_row_norms(&tm.w, rn), PD_OK);
        for (int r = 0; r < n; r += 97) { /* an upper bound, tight */
            double s = 0;
            for (int c = 0; c < k; c++) s += (double)tm.exact[r * k + c] * tm.exact[r * k + c];
            ck_assert(rn[r] >= sqrt(s) && rn[r] <= sqrt(s) * (1 + 1e-6));
        }
        float *x = malloc(sizeof(float) * 16 * k), *y = malloc(sizeof(float) * 16 * n),
              *yr = malloc(sizeof(float) * 16 * n);
        float *scr = malloc(sizeof(float) * krn_linear_scratch(k));
        void *ws = malloc(krn_linear_argmax_scratch(k, 16));
        for (int ti = 0; ti < g_ntables; ti++) {
            krn__ops_force(g_tables[ti]);
            pack_mat(&tm, KRN_PREPACK_FAST);
            for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++) {
                const int m = ms[mi];
                for (int i = 0; i < m; i++)
                    for (int c = 0; c < k; c++) {
                        float v = randn();
                        if (i % 3 == 1) v = tm.exact[20 * k + c] * (1 + 0.01f * randn()); /* near rows 20/700/701 */
                        if (i % 3 == 2 && i % 2 == 0) v = tm.exact[20 * k + c];          /* exactly row 20 */
                        if (i == 5) v = 0;                                               /* flat: all 0 */
                        x[i * k + c] = v;
                    }
                for (int pruned = 0; pruned < 2; pruned++) {
                    const int nn = pruned ? n / 2 + 3 : n;
                    int32_t got[16], want[16];
                    krn_linear(&tm.w, x, m, yr, n, scr);
                    for (int i = 0; i < m; i++) want[i] = krn_argmax(yr + (size_t)i * n, nn);
                    uint64_t rows0, whole0, rows1, whole1;
                    krn_linear_argmax_counts(&rows0, &whole0);
                    const int done = krn_linear_argmax(&tm.w, rn, nn, x, m, y, n, got, ws);
                    krn_linear_argmax_counts(&rows1, &whole1);
                    ck_assert_int_eq(done, g_tables[ti]->screen != NULL && tm.w.pack == KRN_PACK_BF16_N32K2);
                    ck_assert_int_eq(done, krn_linear_argmax_available(&tm.w));
                    /* the screen really decides: only the flat row (i == 5) is computed whole */
                    ck_assert_uint_eq(rows1 - rows0, done ? (uint64_t)m : 0);
                    screened += rows1 - rows0;
                    extra_whole += (whole1 - whole0) - (done && m > 5 ? 1 : 0);
                    ck_assert_uint_ge(whole1 - whole0, done && m > 5 ? 1 : 0); /* the flat row cannot be screened */
                    for (int i = 0; i < m && done; i++)
                        ck_assert_msg(got[i] == want[i], "table %s n %d k %d m %d row %d (of %d outputs): %d, exact %d",
                                      g_tables[ti]->name, n, k, m, i, nn, got[i], want[i]);
                }
            }
        }
        krn__ops_force(NULL);
        free(x);
        free(y);
        free(yr);
        free(scr);
        free(ws);
        free(rn);
        free_mat(&tm);
    }
    { /* a head with a non-finite weight cannot be bounded: no norms, so no screen */
        test_mat bad;
        make_mat(&bad, KRN_BF16, 70, 33);
        ((krn_bf16 *)bad.data)[45 * 33 + 7] = 0x7f80; /* +inf */
        float rn[70];
        ck_assert_int_eq(krn_mat_row_norms(&bad.w, rn), PD_ERR_RANGE);
        free_mat(&bad);
    }
    /* the screen really decides: besides the flat rows, few rows (only on these small matrices, where a handful of
     * candidate panels is already a large share) are computed whole */
    fprintf(stderr, "linear_argmax: %llu rows screened, %llu computed whole besides the flat ones\n",
            (unsigned long long)screened, (unsigned long long)extra_whole);
    ck_assert_uint_le(extra_whole * 20, screened);
}
END_TEST

START_TEST(test_paths_linear)
{
    /* m: decode 1-4, a 12-row tile plus remainder, past the 144-row M block; k: odd, past the 256-value K block */
    const int sizes[][3] = {{1, 37, 53}, {2, 65, 130}, {3, 129, 257}, {4, 33, 600}, {13, 70, 257},
                            {17, 31, 1}, {40, 96, 97}, {150, 45, 300}, {5, 1, 7}};
    collect_tables();
    for (int ti = 0; ti < g_ntables; ti++) {
        krn__ops_force(g_tables[ti]);
        for (int nth = 1; nth <= 3; nth++) {
            ck_assert_int_eq(krn_threads_init(nth), PD_OK);
            for (size_t si = 0; si < PD_ARRAY_LEN(sizes); si++) {
                const int m = sizes[si][0], n = sizes[si][1], k = sizes[si][2], ldy = n + 5;
                float *x = malloc(sizeof(float) * m * k), *y = malloc(sizeof(float) * m * ldy);
                float *scratch = malloc(sizeof(float) * krn_linear_scratch(k));
                double *yr = malloc(sizeof(double) * m * n);
                for (int i = 0; i < m * k; i++) x[i] = randn();
                const krn_type types[] = {KRN_F32, KRN_BF16, KRN_F8E4M3};
                for (int t = 0; t < 3; t++) {
                    test_mat tm;
                    make_mat(&tm, types[t], n, k);
                    pack_mat(&tm, KRN_PREPACK_FAST);
                    if (ti > 0 && types[t] != KRN_F32) ck_assert_int_ne(tm.w.pack, KRN_PACK_NONE);
                    ref_linear(x, tm.exact, m, n, k, yr);
                    for (int i = 0; i < m * ldy; i++) y[i] = 12345.0f; /* columns past n must stay untouched */
                    krn_linear(&tm.w, x, m, y, ldy, scratch);
                    for (int i = 0; i < m; i++) {
                        for (int j = 0; j < n; j++)
                            ck_assert_msg(fabs(y[i * ldy + j] - yr[i * n + j]) < 1e-4 * (1 + fabs(yr[i * n + j])),
                                          "%s nth %d type %d m%d n%d k%d at %d,%d: %g vs %g", g_tables[ti]->name, nth,
                                          t, m, n, k, i, j, y[i * ldy + j], yr[i * n + j]);
                        for (int j = n; j < ldy; j++) ck_assert(y[i * ldy + j] == 12345.0f);
                    }
                    /* MLA's absorbed products read the plain rows */
                    float yb[200], ys[1300];
                    krn_linear_rows(&tm.w, n / 3, n - n / 3, x, (size_t)k, 1, yb, 0);
                    for (int j = n / 3; j < n; j++) ck_assert(fabs(yb[j - n / 3] - yr[j]) < 1e-4 * (1 + fabs(yr[j])));
                    int r0 = n > 1 ? 1 : 0, c0 = k > 2 ? 2 : 0, kk = PD_MIN(5, n - r0), nn = k - c0;
                    int mm = PD_MIN(m, 2);
                    for (int i = 0; i < mm * nn; i++) ys[i] = 1.0f;
                    krn_matmul_sub(&tm.w, r0, c0, x, (size_t)kk, mm, kk, nn, ys, (size_t)nn, 1);
                    for (int i = 0; i < mm; i++)
                        for (int c = 0; c < nn; c++) {
                            double s = 1.0;
                            for (int d = 0; d < kk; d++)
                                s += (double)x[i * kk + d] * tm.exact[(size_t)(r0 + d) * k + c0 + c];
                            ck_assert(fabs(ys[i * nn + c] - s) < 1e-4 * (1 + fabs(s)));
                        }
                    free_mat(&tm);
                }
                free(x); free(y); free(scratch); free(yr);
            }
        }
    }
    krn__ops_force(NULL);
    krn_threads_init(0);
}
END_TEST

/* Every table sums each output of krn_linear in one fixed order whatever the row count: a row's result is the
 * same bits alone (decode), among 4 (verify pass of k = 3) or 16 rows, or inside a 150-row prefill (packed
 * BF16/FP8: MC blocks; F32: past its 64-row pieces and, at k = 2100, its 28-row L2 blocks), at any thread count.
 * Speculative decoding and batching rely on it to stay exactly lossless, and seeded sampling on it to give the
 * same text whatever else is batched. On the portable table (unpacked weights) that holds for exact products; it
 * once switched from dot products to sgemm above 2 rows, and a verify pass then differed from decode steps. */
START_TEST(test_paths_rows_independent)
{
    const int shapes[][2] = {{37, 53}, {65, 600}, {129, 257}, {33, 1}, {100, 513}, {64, 2100}};
    const int ms[] = {2, 3, 4, 5, 12, 13, 16, 17, 64, 150};
    collect_tables();
    for (int ti = 0; ti < 2 * g_ntables; ti++) {
    /* ti odd: the same table with the weights left unpacked (the portable path's form) */
    krn__ops_force(g_tables[ti / 2]);
    for (int nth = 1; nth <= 3; nth += 2) {
        ck_assert_int_eq(krn_threads_init(nth), PD_OK);
        for (size_t si = 0; si < PD_ARRAY_LEN(shapes); si++) {
            const int n = shapes[si][0], k = shapes[si][1], M = 150, ldy = n + 3;
            float *x = malloc(sizeof(float) * M * k), *y1 = malloc(sizeof(float) * M * ldy);
            float *ym = malloc(sizeof(float) * M * ldy), *scratch = malloc(sizeof(float) * krn_linear_scratch(k));
            for (int i = 0; i < M * k; i++) x[i] = randn();
            for (int t = 0; t < 3; t++) {
                const krn_type type = t == 0 ? KRN_BF16 : t == 1 ? KRN_F8E4M3 : KRN_F32;
                test_mat tm;
                make_mat(&tm, type, n, k);
                if (ti % 2 == 0) pack_mat(&tm, KRN_PREPACK_FAST);
                if (ti >= 2 && ti % 2 == 0 && type != KRN_F32) ck_assert_int_ne(tm.w.pack, KRN_PACK_NONE);
                for (int i = 0; i < M; i++) krn_linear(&tm.w, x + (size_t)i * k, 1, y1 + (size_t)i * ldy, ldy, scratch);
                for (size_t mi = 0; mi < PD_ARRAY_LEN(ms); mi++) {
                    const int m = ms[mi], r0 = (int)(mi * 7) % (M - m + 1); /* rows r0..r0+m-1 */
                    krn_linear(&tm.w, x + (size_t)r0 * k, m, ym, ldy, scratch);
                    for (int i = 0; i < m; i++)
                        ck_assert_msg(!memcmp(ym + (size_t)i * ldy, y1 + (size_t)(r0 + i) * ldy, sizeof(float) * n),
                                      "%s %s%s n%d k%d m%d row %d differs from the row alone", g_tables[ti / 2]->name,
                                      ti % 2 ? "unpacked " : "", krn_type_name(type), n, k, m, i);
                }
                free_mat(&tm);
            }
            free(x); free(y1); free(ym); free(scratch);
        }
    }
    }
    krn__ops_force(NULL);
    krn_threads_init(0);
}
END_TEST

/* The AVX2 table's packed BF16 and FP8 products are the AVX-512 table's bit for bit (the same FMA chains in the same
 * order, 8 lanes instead of 16), so a deployment mixing the two CPU kinds gives the same tokens; its F32 GEMV sums
 * 8 lanes, so only its row-independence is promised (test_paths_rows_independent). Runs where the CPU has both. */
START_TEST(test_paths_avx2_matches_avx512)
{
    const krn__ops *t2 = krn__ops_avx2(), *t5 = krn__ops_avx512();
    ck_assert_ptr_nonnull(krn__ops_ref()); /* the reference is always there; the comparison needs both others */
    if (!t2 || !t5) return;
    const int sizes[][3] = {{1, 37, 53}, {2, 65, 130}, {4, 33, 600}, {13, 70, 257}, {150, 45, 300}, {5, 1, 7},
                            {3, 100, 2100}};
    for (size_t si = 0; si < PD_ARRAY_LEN(sizes); si++) {
        const int m = sizes[si][0], n = sizes[si][1], k = sizes[si][2], ldy = n + 2;
        float *x = malloc(sizeof(float) * m * k), *y2 = malloc(sizeof(float) * m * ldy);
        float *y5 = malloc(sizeof(float) * m * ldy), *scratch = malloc(sizeof(float) * krn_linear_scratch(k));
        for (int i = 0; i < m * k; i++) x[i] = randn();
        for (int t = 0; t < 2; t++) {
            test_mat tm;
            make_mat(&tm, t ? KRN_F8E4M3 : KRN_BF16, n, k);
            krn__ops_force(t2);
            pack_mat(&tm, KRN_PREPACK_FAST); /* the same layout for both tables */
            ck_assert_int_ne(tm.w.pack, KRN_PACK_NONE);
            krn_linear(&tm.w, x, m, y2, ldy, scratch);
            krn__ops_force(t5);
            krn_linear(&tm.w, x, m, y5, ldy, scratch);
            for (int i = 0; i < m; i++)
                ck_assert_msg(!memcmp(y2 + (size_t)i * ldy, y5 + (size_t)i * ldy, sizeof(float) * n),
                              "%s m%d n%d k%d row %d: avx2 and avx512 differ", t ? "f8" : "bf16", m, n, k, i);
            free_mat(&tm);
        }
        free(x); free(y2); free(y5); free(scratch);
    }
    krn__ops_force(NULL);
}
END_TEST

/* bf16 as vcvtne2ps2bf16 rounds: to nearest even, inputs below 2^-126 flushed to (signed) zero */
static float round_bf16(float v)
{
    if (fabsf(v) < 0x1p-126f) return copysignf(0.0f, v);
    return krn_bf16_to_f32(krn_f32_to_bf16(v));
}

/* y[i, j] over bf16-rounded x in double, and the sum of |terms| that bounds an f32 summation's error */
static void ref_linear_bf16act(const float *x, const float *W, int m, int n, int k, double *y, double *mag)
{
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double s = 0, a = 0;
            for (int c = 0; c < k; c++) {
                const double t = (double)round_bf16(x[i * k + c]) * W[(size_t)j * k + c];
                s += t;
                a += fabs(t);
            }
            y[i * n + j] = s;
            mag[i * n + j] = a;
        }
}

/* KRN_LINEAR_BF16_ACT (the opt-in prompt-prefill kernel): where the table has it, against the bf16-rounded-x
 * oracle within f32 summation error (tight: |err| <= k * 2^-23 * sum|terms|, twice the worst case of one f32
 * rounding per term) and against the exact f32 product within bf16 rounding of x (looser: 2^-7 * sum|terms|, twice
 * the worst case of bf16's unit roundoff 2^-8 per term), on awkward sizes (m past the 144-row block, n not multiples of
 * 32, odd k, k past the 256-value chunk), 1-3 threads, columns past n untouched; each row the same bits whatever m
 * and wherever it sits; krn_linear_group with mixed flagged items equals each item alone. Where the table lacks it
 * (portable, no AVX512-BF16, PDSERVE_BF16_DOT=0) the flag changes nothing: the same bits as krn_linear. */
START_TEST(test_paths_bf16dot)
{
    const int sizes[][3] = {{1, 37, 53}, {3, 129, 257}, {13, 70, 257}, {17, 31, 1}, {40, 96, 97},
                            {150, 45, 300}, {300, 33, 513}, {5, 1, 7}, {20, 64, 2}};
    collect_tables();
    double worst_exact = 0;
    for (int ti = 0; ti < g_ntables; ti++) {
        krn__ops_force(g_tables[ti]);
        const int dot = g_tables[ti]->gemm_bf16dot != NULL;
        for (int nth = 1; nth <= 3; nth++) {
            ck_assert_int_eq(krn_threads_init(nth), PD_OK);
            for (size_t si = 0; si < PD_ARRAY_LEN(sizes); si++) {
                const int m = sizes[si][0], n = sizes[si][1], k = sizes[si][2], ldy = n + 5;
                float *x = malloc(sizeof(float) * m * k), *y = malloc(sizeof(float) * m * ldy);
                float *ye = malloc(sizeof(float) * m * ldy), *y1 = malloc(sizeof(float) * ldy);
                float *scratch = malloc(sizeof(float) * krn_linear_scratch(k));
                double *yr = malloc(sizeof(double) * m * n), *mag = malloc(sizeof(double) * m * n);
                double *yx = malloc(sizeof(double) * m * n);
                for (int i = 0; i < m * k; i++) x[i] = randn() * (i % 11 == 0 ? 30.0f : 1.0f);
                test_mat tm;
                make_mat(&tm, KRN_BF16, n, k);
                pack_mat(&tm, KRN_PREPACK_FAST);
                for (int i = 0; i < m * ldy; i++) y[i] = ye[i] = 12345.0f;
                const krn_linear_item it = {&tm.w, x, m, ldy, y, KRN_LINEAR_BF16_ACT};
                krn_linear_group(&it, 1, scratch);
                krn_linear(&tm.w, x, m, ye, ldy, scratch);
                if (!dot && tm.w.pack == KRN_PACK_NONE && m > 2) {
                    /* the portable path: flagged prompt rows go through sgemm, exact ones through fixed-order dots;
                     * both are the exact product up to f32 rounding */
                    ref_linear(x, tm.exact, m, n, k, yx);
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < n; j++)
                            ck_assert_msg(fabs(y[i * ldy + j] - yx[i * n + j]) < 1e-4 * (1 + fabs(yx[i * n + j])) &&
                                              fabs(ye[i * ldy + j] - yx[i * n + j]) < 1e-4 * (1 + fabs(yx[i * n + j])),
                                          "%s m%d n%d k%d at %d,%d: %g / %g vs %g", g_tables[ti]->name, m, n, k, i, j,
                                          y[i * ldy + j], ye[i * ldy + j], yx[i * n + j]);
                } else if (!dot) {
                    ck_assert_msg(!memcmp(y, ye, sizeof(float) * m * ldy), "%s: the flag changed the result",
                                  g_tables[ti]->name);
                } else {
                    ref_linear_bf16act(x, tm.exact, m, n, k, yr, mag);
                    ref_linear(x, tm.exact, m, n, k, yx);
                    for (int i = 0; i < m; i++) {
                        for (int j = 0; j < n; j++) {
                            const double v = y[i * ldy + j], a = mag[i * n + j];
                            ck_assert_msg(fabs(v - yr[i * n + j]) <= k * 0x1p-23 * a + 1e-30,
                                          "nth %d m%d n%d k%d at %d,%d: %.9g vs bf16-x oracle %.9g (sum|t| %g)", nth,
                                          m, n, k, i, j, v, yr[i * n + j], a);
                            ck_assert_msg(fabs(v - yx[i * n + j]) <= 0x1p-7 * a + 1e-30,
                                          "m%d n%d k%d at %d,%d: %.9g vs exact %.9g", m, n, k, i, j, v, yx[i * n + j]);
                            worst_exact = fmax(worst_exact, fabs(v - yx[i * n + j]) / (a + 1e-30));
                        }
                        for (int j = n; j < ldy; j++) ck_assert(y[i * ldy + j] == 12345.0f);
                        /* the row alone: the same bits */
                        const krn_linear_item one = {&tm.w, x + (size_t)i * k, 1, ldy, y1, KRN_LINEAR_BF16_ACT};
                        krn_linear_group(&one, 1, scratch);
                        ck_assert_msg(!memcmp(y1, y + (size_t)i * ldy, sizeof(float) * n),
                                      "nth %d m%d n%d k%d: row %d differs from the row alone", nth, m, n, k, i);
                    }
                }
                free_mat(&tm);
                free(x); free(y); free(ye); free(y1); free(scratch); free(yr); free(mag); free(yx);
            }
            /* rows r0.. of a 300-row x in passes of m rows: the same bits as the whole pass (chunked prompts) */
            if (dot) {
                const int n = 70, k = 300, M = 300, ms[] = {1, 2, 5, 12, 13, 16, 17, 64, 144, 145, 150};
                test_mat tm;
                make_mat(&tm, KRN_BF16, n, k);
                pack_mat(&tm, KRN_PREPACK_FAST);
                float *x = malloc(sizeof(float) * M * k), *ya = malloc(sizeof(float) * M * n);
                float *ym = malloc(sizeof(float) * M * n), *scratch = malloc(sizeof(float) * krn_linear_scratch(k));
                for (int i = 0; i < M * k; i++) x[i] = randn();
                const krn_linear_item all = {&tm.w, x, M, n, ya, KRN_LINEAR_BF16_ACT};
                krn_linear_group(&all, 1, scratch);
                for (size_t mi = 0; mi < PD_ARRAY_LEN(ms); mi++) {
                    const int m = ms[mi], r0 = (int)(mi * 13) % (M - m + 1);
                    const krn_linear_item part = {&tm.w, x + (size_t)r0 * k, m, n, ym, KRN_LINEAR_BF16_ACT};
                    krn_linear_group(&part, 1, scratch);
                    ck_assert_msg(!memcmp(ym, ya + (size_t)r0 * n, sizeof(float) * m * n),
                                  "nth %d: rows %d..%d in a pass of %d differ from the 300-row pass", nth, r0,
                                  r0 + m - 1, m);
                }
                /* a group mixing flagged BF16, exact BF16 and FP8 items: each as it is alone */
                test_mat t2, t3;
                make_mat(&t2, KRN_BF16, 45, 257);
                pack_mat(&t2, KRN_PREPACK_FAST);
                make_mat(&t3, KRN_F8E4M3, 33, 257);
                pack_mat(&t3, KRN_PREPACK_FAST);
                float *g[3], *s1[3];
                const krn_mat *ws[3] = {&tm.w, &t2.w, &t3.w};
                const int mm[3] = {20, 7, 5}, nn[3] = {n, 45, 33};
                const unsigned fl[3] = {KRN_LINEAR_BF16_ACT, 0, KRN_LINEAR_BF16_ACT};
                krn_linear_item items[3];
                for (int q = 0; q < 3; q++) {
                    g[q] = malloc(sizeof(float) * mm[q] * nn[q]);
                    s1[q] = malloc(sizeof(float) * mm[q] * nn[q]);
                    items[q] = (krn_linear_item){ws[q], x, mm[q], nn[q], g[q], fl[q]};
                    krn_linear_group(&items[q], 1, scratch);
                    memcpy(s1[q], g[q], sizeof(float) * mm[q] * nn[q]);
                    memset(g[q], 0, sizeof(float) * mm[q] * nn[q]);
                }
                krn_linear_group(items, 3, scratch);
                for (int q = 0; q < 3; q++) {
                    ck_assert_msg(!memcmp(g[q], s1[q], sizeof(float) * mm[q] * nn[q]), "group item %d differs", q);
                    free(g[q]); free(s1[q]);
                }
                /* FP8 ignores the flag: the same bits as krn_linear */
                float *f8 = malloc(sizeof(float) * 5 * 33);
                krn_linear(&t3.w, x, 5, f8, 33, scratch);
                items[2].y = f8 + 0;
                float *f8b = malloc(sizeof(float) * 5 * 33);
                items[2].y = f8b;
                krn_linear_group(&items[2], 1, scratch);
                ck_assert(!memcmp(f8, f8b, sizeof(float) * 5 * 33));
                free(f8); free(f8b);
                free_mat(&t2); free_mat(&t3); free_mat(&tm);
                free(x); free(ya); free(ym); free(scratch);
            }
        }
    }
    if (worst_exact > 0) {
        fprintf(stderr, "bf16dot: worst |y - exact| / sum|terms| %.3g (bound 2^-7)\n", worst_exact);
        ck_assert(worst_exact > 1e-5); /* the kernel did round x (else this test would not test the new kernel) */
    }
    krn__ops_force(NULL);
    krn_threads_init(0);
}
END_TEST

/* krn_linear_group gives every item exactly what krn_linear gives it, for mixed item kinds (packed BF16/FP8 in
 * the shared job, F32 and W8A8 one by one, an empty item), awkward sizes, on every table and thread count. */
START_TEST(test_paths_group)
{
    enum { NI = 7 };
    const int shapes[NI][3] = {{1, 37, 53}, {3, 65, 130}, {1, 129, 257}, {0, 33, 40},
                               {5, 70, 33}, {2, 20, 53},  {16, 45, 257}};
    const krn_type types[NI] = {KRN_BF16, KRN_F8E4M3, KRN_BF16, KRN_BF16, KRN_F32, KRN_BF16, KRN_F8E4M3};
    collect_tables();
    for (int ti = 0; ti < g_ntables; ti++) {
        krn__ops_force(g_tables[ti]);
        for (int nth = 1; nth <= 3; nth++) {
            ck_assert_int_eq(krn_threads_init(nth), PD_OK);
            test_mat tm[NI];
            krn_linear_item items[NI];
            float *x[NI], *yg[NI], *y1[NI], *scratch = malloc(sizeof(float) * krn_linear_scratch(257));
            for (int i = 0; i < NI; i++) {
                const int m = shapes[i][0], n = shapes[i][1], k = shapes[i][2];
                make_mat(&tm[i], types[i], n, k);
                pack_mat(&tm[i], i == 5 ? KRN_PREPACK_W8A8 : KRN_PREPACK_FAST);
                x[i] = malloc(sizeof(float) * (m + 1) * k);
                yg[i] = malloc(sizeof(float) * (m + 1) * (n + 2));
                y1[i] = malloc(sizeof(float) * (m + 1) * (n + 2));
                for (int j = 0; j < m * k; j++) x[i][j] = randn();
                for (int j = 0; j < (m + 1) * (n + 2); j++) yg[i][j] = y1[i][j] = 7.0f;
                items[i] = (krn_linear_item){&tm[i].w, x[i], m, n + 2, yg[i], 0};
                krn_linear(&tm[i].w, x[i], m, y1[i], n + 2, scratch);
            }
            krn_linear_group(items, NI, scratch);
            for (int i = 0; i < NI; i++) {
                ck_assert_msg(!memcmp(yg[i], y1[i], sizeof(float) * (shapes[i][0] + 1) * (shapes[i][1] + 2)),
                              "%s nth %d item %d differs from krn_linear", g_tables[ti]->name, nth, i);
                free_mat(&tm[i]);
                free(x[i]); free(yg[i]); free(y1[i]);
            }
            free(scratch);
        }
    }
    krn__ops_force(NULL);
    krn_threads_init(0);
}
END_TEST

/* log-sum-exp: every table against a double computation, awkward lengths, wide ranges, -inf entries */
/* KV rows to float32: every f16 and bf16 bit pattern (subnormals, infinities, NaNs), odd lengths, on every table,
 * against the scalar conversions; F32 is a copy. */
START_TEST(test_paths_to_f32)
{
    collect_tables();
    uint16_t *h = malloc(sizeof(uint16_t) * 65536);
    float *got = malloc(sizeof(float) * (65536 + 1)), *f = malloc(sizeof(float) * 37); /* + a guard */
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    for (int ti = 0; ti < g_ntables; ti++) {
        for (int ty = 0; ty < 2; ty++) {
            const krn_type t = ty ? KRN_BF16 : KRN_F16;
            const int lens[] = {65536, 37, 16, 15, 1};
            for (size_t li = 0; li < PD_ARRAY_LEN(lens); li++) {
                const int n = lens[li], off = li ? 60000 : 0; /* short runs from the NaN/inf end of the range */
                memset(got, 0x55, sizeof(float) * (size_t)n + 4);
                g_tables[ti]->to_f32(t, h + off, got, n);
                for (int i = 0; i < n; i++) {
                    const float want = ty ? krn_bf16_to_f32(h[off + i]) : krn_f16_to_f32(h[off + i]);
                    ck_assert_msg((isnan(want) && isnan(got[i])) || !memcmp(&want, &got[i], 4),
                                  "%s %s 0x%04x: %a, want %a", g_tables[ti]->name, ty ? "bf16" : "f16", off + i,
                                  got[i], want);
                }
                uint32_t guard;
                memcpy(&guard, got + n, 4);
                ck_assert_uint_eq(guard, 0x55555555u); /* nothing written past n */
            }
        }
        for (int i = 0; i < 37; i++) f[i] = (float)randn();
        g_tables[ti]->to_f32(KRN_F32, f, got, 37);
        ck_assert(!memcmp(f, got, sizeof(float) * 37));
    }
    free(h);
    free(got);
    free(f);
}
END_TEST

START_TEST(test_paths_logsumexp)
{
    collect_tables();
    const int sizes[] = {1, 15, 16, 17, 63, 64, 65, 1000, 129280};
    float *x = malloc(sizeof(float) * 129280);
    for (size_t si = 0; si < PD_ARRAY_LEN(sizes); si++) {
        const int n = sizes[si];
        for (int rep = 0; rep < 3; rep++) {
            for (int i = 0; i < n; i++) x[i] = (float)(randn() * (rep == 0 ? 1.0 : rep == 1 ? 30.0 : 0.01)) + 5.0f;
            if (n > 3) x[n / 2] = -INFINITY;
            double mx = -INFINITY, sum = 0;
            for (int i = 0; i < n; i++) mx = x[i] > mx ? x[i] : mx;
            for (int i = 0; i < n; i++) sum += exp((double)x[i] - mx);
            const double want = mx + log(sum);
            for (int ti = 0; ti < g_ntables; ti++) {
                float got = g_tables[ti]->logsumexp(x, n);
                ck_assert_msg(fabs(got - want) <= 2e-6 * fabs(want) + 2e-6, "%s n=%d rep %d: %.9g, want %.9g",
                              g_tables[ti]->name, n, rep, got, want);
            }
        }
        for (int i = 0; i < n; i++) x[i] = -INFINITY;
        for (int ti = 0; ti < g_ntables; ti++) ck_assert(g_tables[ti]->logsumexp(x, n) == -INFINITY);
    }
    free(x);
}
END_TEST

START_TEST(test_paths_w8a8)
{
    const int sizes[][3] = {{1, 37, 53}, {3, 129, 257}, {13, 70, 6}, {150, 45, 300}, {2, 64, 1024}};
    collect_tables();
    for (size_t si = 0; si < PD_ARRAY_LEN(sizes); si++) {
        const int m = sizes[si][0], n = sizes[si][1], k = sizes[si][2];
        float *x = malloc(sizeof(float) * m * k), *y[MAX_TABLES],
              *scratch = malloc(sizeof(float) * krn_linear_scratch(k));
        double *yr = malloc(sizeof(double) * m * n);
        for (int i = 0; i < m * k; i++) x[i] = randn();
        for (int t = 1; t < 3; t++) { /* from BF16 and FP8 checkpoints */
            test_mat tm;
            make_mat(&tm, t == 1 ? KRN_BF16 : KRN_F8E4M3, n, k);
            pack_mat(&tm, KRN_PREPACK_W8A8);
            ck_assert_int_eq(tm.w.pack, KRN_PACK_I8_N32K4);
            ref_linear(x, tm.exact, m, n, k, yr);
            for (int ti = 0; ti < g_ntables; ti++) {
                krn__ops_force(g_tables[ti]);
                krn_threads_init(1 + ti);
                y[ti] = malloc(sizeof(float) * m * n);
                krn_linear(&tm.w, x, m, y[ti], n, scratch);
                /* int8 x int8 with per-row/per-token scales: error well under 2% of each row's size */
                for (int i = 0; i < m; i++) {
                    double num = 0, den = 0;
                    for (int j = 0; j < n; j++) {
                        num += (y[ti][i * n + j] - yr[i * n + j]) * (y[ti][i * n + j] - yr[i * n + j]);
                        den += yr[i * n + j] * yr[i * n + j];
                    }
                    ck_assert_msg(sqrt(num / (den + 1e-30)) < 2e-2, "%s m%d n%d k%d row %d: rel %.3g",
                                  g_tables[ti]->name, m, n, k, i, sqrt(num / den));
                }
            }
            /* integer sums are exact and the scaling is done in the same order: every path is bit-identical */
            for (int ti = 1; ti < g_ntables; ti++) ck_assert_mem_eq(y[ti], y[0], sizeof(float) * m * n);
            for (int ti = 0; ti < g_ntables; ti++) free(y[ti]);
            free_mat(&tm);
        }
        free(x); free(scratch); free(yr);
    }
    krn__ops_force(NULL);
    krn_threads_init(0);
}
END_TEST

/* Random attention inputs: queries (two parts) scaled down, keys (two parts), values unless they are the keys. */
static void attn_random_inputs(int nq, int nh, int nk, int hk, int da, int db, int dv, int shared, float *q,
                               float *qb, float *k, float *kb, float *v)
{
    for (int i = 0; i < nq * nh * da; i++) q[i] = randn() * 0.3f;
    for (int i = 0; i < nq * nh * db; i++) qb[i] = randn() * 0.3f;
    for (int i = 0; i < nk * hk * da; i++) k[i] = randn();
    for (int i = 0; i < nk * db; i++) kb[i] = randn();
    if (!shared) for (int i = 0; i < nk * hk * dv; i++) v[i] = randn();
}

/* One attention pass (causal, tiles of `tile` keys) on table t, into acc (nq x nh x dv); scores: the tile's optional
 * scratch (tile floats) or NULL. */
static void attn_on_table(const krn__ops *t, int nq, int nh, int da, int db, int dv, int p0, int tile, int shared,
                          const float *q, const float *qb, const float *k, const float *kb, const float *v, float *acc,
                          float *scores)
{
    const int nk = p0 + nq, hk = shared ? 1 : nh, vstride = shared ? da : hk * dv;
    float *m = malloc(sizeof(float) * nq * nh), *l = malloc(sizeof(float) * nq * nh);
    int *lim = malloc(sizeof(int) * nq);
    for (int i = 0; i < nq; i++) lim[i] = p0 + i;
    krn__ops_force(t);
    krn_attn_init(nq, nh, dv, m, l, acc, nh * dv, dv);
    for (int k0 = 0; k0 < nk; k0 += tile) {
        krn_attn_tile_args a = {.nq = nq, .nh = nh, .nk = PD_MIN(tile, nk - k0), .da = da, .db = db, .dv = dv,
                                .qa = q, .qa_stride = nh * da, .qa_hstride = da,
                                .qb = qb, .qb_stride = nh * db, .qb_hstride = db,
                                .ka = k + (size_t)k0 * hk * da, .ka_stride = hk * da, .ka_hstride = shared ? 0 : da,
                                .kb = kb + (size_t)k0 * db, .kb_stride = db,
                                .v = v + (size_t)k0 * vstride, .v_stride = vstride, .v_hstride = shared ? 0 : dv,
                                .q_limit = lim, .k_pos0 = k0, .scale = 0.2f, .m = m, .l = l,
                                .acc = acc, .acc_stride = nh * dv, .acc_hstride = dv, .scores = scores};
        krn_attn_tile(&a);
    }
    krn_attn_finish(nq, nh, dv, l, acc, nh * dv, dv);
    krn__ops_force(NULL);
    free(m); free(l); free(lim);
}

/* Attention over nk keys with every table: causal, chunked into tiles of `tile` keys, against float64. */
static void attn_case(int nq, int nh, int da, int db, int dv, int p0, int tile, int shared)
{
    const int nk = p0 + nq, hk = shared ? 1 : nh;
    float *q = malloc(sizeof(float) * nq * nh * da), *qb = malloc(sizeof(float) * nq * nh * db);
    float *k = malloc(sizeof(float) * nk * hk * da), *kb = malloc(sizeof(float) * nk * db);
    float *v = shared ? k : malloc(sizeof(float) * nk * hk * dv);
    float *acc = malloc(sizeof(float) * nq * nh * dv), *scores = malloc(sizeof(float) * tile);
    int *lim = malloc(sizeof(int) * nq);
    attn_random_inputs(nq, nh, nk, hk, da, db, dv, shared, q, qb, k, kb, v);
    for (int i = 0; i < nq; i++) lim[i] = p0 + i;
    for (int ti = 0; ti < g_ntables; ti++) {
        krn_threads_init(1 + ti);
        attn_on_table(g_tables[ti], nq, nh, da, db, dv, p0, tile, shared, q, qb, k, kb, v, acc, scores);
        for (int i = 0; i < nq; i++)
            for (int h = 0; h < nh; h++) {
                double *s = malloc(sizeof(double) * nk), mx = -1e30, sum = 0;
                const int hh = shared ? 0 : h;
                for (int j = 0; j <= lim[i]; j++) {
                    double d = 0;
                    for (int c = 0; c < da; c++)
                        d += (double)q[(i * nh + h) * da + c] * k[((size_t)j * hk + hh) * da + c];
                    for (int c = 0; c < db; c++) d += (double)qb[(i * nh + h) * db + c] * kb[(size_t)j * db + c];
                    s[j] = d * 0.2;
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j <= lim[i]; j++) sum += (s[j] = exp(s[j] - mx));
                for (int c = 0; c < dv; c++) {
                    double o = 0;
                    for (int j = 0; j <= lim[i]; j++) {
                        const float *vr = shared ? k + (size_t)j * da : v + ((size_t)j * hk + hh) * dv;
                        o += s[j] / sum * vr[c];
                    }
                    ck_assert_msg(fabs(o - acc[(i * nh + h) * dv + c]) < 2e-5 * (1 + fabs(o)),
                                  "%s q%d h%d c%d: %g vs %g", g_tables[ti]->name, i, h, c, acc[(i * nh + h) * dv + c],
                                  o);
                }
                free(s);
            }
    }
    krn__ops_force(NULL);
    free(q); free(qb); free(k); free(kb); if (!shared) free(v); free(acc); free(scores); free(lim);
}

START_TEST(test_paths_attention)
{
    collect_tables();
    attn_case(7, 3, 6, 4, 5, 11, 5, 0);       /* tiny, odd everything */
    attn_case(19, 5, 64, 32, 64, 70, 64, 0);  /* prefill shape, keys past one tile */
    attn_case(3, 4, 144, 16, 144, 300, 64, 1); /* MLA absorbed decode: shared latent head, dv > 128 */
    attn_case(2, 2, 40, 8, 40, 600, 300, 1);  /* a tile wider than the kernels' key chunk */
    attn_case(37, 3, 64, 32, 64, 5, 64, 0);   /* several 16-query blocks per head, a partial one, short prefix */
    attn_case(5, 16, 128, 32, 128, 90, 64, 1); /* shared head: each block is one query's 16 heads */
    attn_case(9, 5, 16, 8, 16, 3, 20, 1);     /* shared head: blocks straddle queries */
    krn_threads_init(0);
}
END_TEST

/* A query's attention output is the same bits whether it is scored alone (a decode step) or beside others (a
 * verify pass of k+1 positions, a batch): MLA decode shape and prefill shape, on every table. */
static void attn_rows_case(int nh, int da, int db, int dv, int shared)
{
    enum { NQ = 4, P0 = 100, NK = P0 + NQ, TILE = 64 };
    const int hk = shared ? 1 : nh, vstride = shared ? da : hk * dv;
    float *q = malloc(sizeof(float) * NQ * nh * da), *qb = malloc(sizeof(float) * NQ * nh * db);
    float *k = malloc(sizeof(float) * NK * hk * da), *kb = malloc(sizeof(float) * NK * db);
    float *v = shared ? k : malloc(sizeof(float) * NK * hk * dv);
    float *m = malloc(sizeof(float) * NQ * nh), *l = malloc(sizeof(float) * NQ * nh);
    float *all = malloc(sizeof(float) * NQ * nh * dv), *one = malloc(sizeof(float) * nh * dv);
    int lim[NQ];
    attn_random_inputs(NQ, nh, NK, hk, da, db, dv, shared, q, qb, k, kb, v);
    for (int i = 0; i < NQ; i++) lim[i] = P0 + i;
    for (int ti = 0; ti < g_ntables; ti++) {
        krn__ops_force(g_tables[ti]);
        krn_threads_init(2);
        for (int q0 = -1; q0 < NQ; q0++) { /* -1: all queries in one pass; else query q0 alone */
            const int nq = q0 < 0 ? NQ : 1, first = q0 < 0 ? 0 : q0;
            float *acc = q0 < 0 ? all : one;
            krn_attn_init(nq, nh, dv, m, l, acc, nh * dv, dv);
            for (int k0 = 0; k0 < NK; k0 += TILE) {
                krn_attn_tile_args a = {.nq = nq, .nh = nh, .nk = PD_MIN(TILE, NK - k0), .da = da, .db = db, .dv = dv,
                                        .qa = q + (size_t)first * nh * da, .qa_stride = nh * da, .qa_hstride = da,
                                        .qb = qb + (size_t)first * nh * db, .qb_stride = nh * db, .qb_hstride = db,
                                        .ka = k + (size_t)k0 * hk * da, .ka_stride = hk * da,
                                        .ka_hstride = shared ? 0 : da, .kb = kb + (size_t)k0 * db, .kb_stride = db,
                                        .v = v + (size_t)k0 * vstride, .v_stride = vstride,
                                        .v_hstride = shared ? 0 : dv, .q_limit = lim + first, .k_pos0 = k0,
                                        .scale = 0.2f, .m = m, .l = l, .acc = acc, .acc_stride = nh * dv,
                                        .acc_hstride = dv, .scores = NULL};
                krn_attn_tile(&a);
            }
            krn_attn_finish(nq, nh, dv, l, acc, nh * dv, dv);
            if (q0 >= 0)
                ck_assert_msg(!memcmp(one, all + (size_t)q0 * nh * dv, sizeof(float) * nh * dv),
                              "%s: query %d alone differs from the same query in a pass of %d (nh %d, shared %d)",
                              g_tables[ti]->name, q0, NQ, nh, shared);
        }
    }
    krn__ops_force(NULL);
    krn_threads_init(0);
    free(q); free(qb); free(k); free(kb); if (!shared) free(v); free(m); free(l); free(all); free(one);
}

/* MLA's absorbed products over several rows at once (one head's queries of a whole pass, strided as in the
 * q / latent buffers): on every table each row equals the same product for that row alone, bit for bit (a verify
 * pass must score a position as a decode step does), and the products match float64 on awkward sizes. */
START_TEST(test_paths_absorbed_rows)
{
    const int shapes[][3] = {{40, 70, 130}, {24, 16, 64}, {9, 5, 33}}; /* band rows, k (d), cols */
    const int ms[] = {1, 3, 4, 5, 9, 16};
    collect_tables();
    for (int ti = 0; ti < g_ntables; ti++) {
        krn__ops_force(g_tables[ti]);
        for (size_t si = 0; si < PD_ARRAY_LEN(shapes); si++) {
            const int nr = shapes[si][0], kd = shapes[si][1], cols = shapes[si][2];
            const krn_type types[] = {KRN_BF16, KRN_F32, KRN_F8E4M3};
            for (int t = 0; t < 3; t++) {
                test_mat tm;
                make_mat(&tm, types[t], nr + kd, cols);
                for (size_t mi = 0; mi < PD_ARRAY_LEN(ms); mi++) {
                    const int m = ms[mi];
                    const size_t ldx = (size_t)cols + 7, ldy = (size_t)cols + 5;
                    float *x = malloc(sizeof(float) * m * ldx), *y = malloc(sizeof(float) * m * ldy);
                    float *one = malloc(sizeof(float) * ldy);
                    for (size_t i = 0; i < (size_t)m * ldx; i++) x[i] = randn();
                    for (size_t i = 0; i < (size_t)m * ldy; i++) y[i] = randn();
                    float *y0 = malloc(sizeof(float) * m * ldy);
                    memcpy(y0, y, sizeof(float) * m * ldy);
                    /* transposed sub-block, accumulating: rows kd of W from r0 = 3, columns from c0 = 1 */
                    const int nn = cols - 1;
                    krn_matmul_sub(&tm.w, 3, 1, x, ldx, m, kd, nn, y, ldy, 1);
                    for (int i = 0; i < m; i++) {
                        memcpy(one, y0 + (size_t)i * ldy, sizeof(float) * ldy);
                        krn_matmul_sub(&tm.w, 3, 1, x + (size_t)i * ldx, (size_t)kd, 1, kd, nn, one, ldy, 1);
                        ck_assert_msg(!memcmp(one, y + (size_t)i * ldy, sizeof(float) * nn),
                                      "%s %s matmul_sub m%d k%d n%d: row %d differs from the row alone",
                                      g_tables[ti]->name, krn_type_name(types[t]), m, kd, nn, i);
                        for (int c = 0; c < nn; c++) {
                            double s = y0[(size_t)i * ldy + c];
                            for (int d = 0; d < kd; d++)
                                s += (double)x[(size_t)i * ldx + d] * tm.exact[(size_t)(3 + d) * cols + 1 + c];
                            ck_assert(fabs(y[(size_t)i * ldy + c] - s) < 1e-4 * (1 + fabs(s)));
                        }
                        for (int c = nn; c < (int)ldy; c++)
                            ck_assert(y[(size_t)i * ldy + c] == y0[(size_t)i * ldy + c]);
                    }
                    /* band of nr rows from r0 = kd against m vectors of length cols */
                    krn_linear_rows(&tm.w, kd, nr, x, ldx, m, y, ldy);
                    for (int i = 0; i < m; i++) {
                        krn_linear_rows(&tm.w, kd, nr, x + (size_t)i * ldx, (size_t)cols, 1, one, 0);
                        ck_assert_msg(!memcmp(one, y + (size_t)i * ldy, sizeof(float) * nr),
                                      "%s %s linear_rows m%d: row %d differs from the row alone", g_tables[ti]->name,
                                      krn_type_name(types[t]), m, i);
                        for (int j = 0; j < nr; j++) {
                            double s = 0;
                            for (int c = 0; c < cols; c++)
                                s += (double)x[(size_t)i * ldx + c] * tm.exact[(size_t)(kd + j) * cols + c];
                            ck_assert(fabs(y[(size_t)i * ldy + j] - s) < 1e-4 * (1 + fabs(s)));
                        }
                    }
                    free(x); free(y); free(y0); free(one);
                }
                free_mat(&tm);
            }
        }
    }
    krn__ops_force(NULL);
}
END_TEST

/* The AVX2 table's attention tile and MLA absorbed products give the AVX-512 table's bits (lanes never mix; the
 * same chains, exp and reduction order), on the shapes of test_paths_attention and test_paths_absorbed_rows plus
 * a peaked softmax (scores spread over hundreds). Runs where the CPU has both. */
START_TEST(test_paths_avx2_attention_matches_avx512)
{
    const krn__ops *t2 = krn__ops_avx2(), *t5 = krn__ops_avx512();
    ck_assert_ptr_nonnull(krn__ops_ref());
    if (!t2 || !t5) return;
    const int cases[][8] = {{7, 3, 6, 4, 5, 11, 5, 0},     {19, 5, 64, 32, 64, 70, 64, 0},
                            {3, 4, 144, 16, 144, 300, 64, 1}, {2, 2, 40, 8, 40, 600, 300, 1},
                            {37, 3, 64, 32, 64, 5, 64, 0},   {5, 16, 128, 32, 128, 90, 64, 1},
                            {9, 5, 16, 8, 16, 3, 20, 1},     {4, 16, 128, 32, 128, 200, 64, 1}};
    for (size_t ci = 0; ci < PD_ARRAY_LEN(cases); ci++) {
        const int *c = cases[ci], nq = c[0], nh = c[1], da = c[2], db = c[3], dv = c[4], p0 = c[5], tile = c[6];
        const int shared = c[7], nk = p0 + nq, hk = shared ? 1 : nh;
        float *q = malloc(sizeof(float) * nq * nh * da), *qb = malloc(sizeof(float) * nq * nh * db);
        float *k = malloc(sizeof(float) * nk * hk * da), *kb = malloc(sizeof(float) * nk * db);
        float *v = shared ? k : malloc(sizeof(float) * nk * hk * dv);
        float *a2 = malloc(sizeof(float) * nq * nh * dv), *a5 = malloc(sizeof(float) * nq * nh * dv);
        attn_random_inputs(nq, nh, nk, hk, da, db, dv, shared, q, qb, k, kb, v);
        if (ci == PD_ARRAY_LEN(cases) - 1) /* wide score range: most keys' weights underflow */
            for (int i = 0; i < nq * nh * da; i++) q[i] *= 40.0f;
        attn_on_table(t2, nq, nh, da, db, dv, p0, tile, shared, q, qb, k, kb, v, a2, NULL);
        attn_on_table(t5, nq, nh, da, db, dv, p0, tile, shared, q, qb, k, kb, v, a5, NULL);
        for (int i = 0; i < nq * nh * dv; i++)
            ck_assert_msg(!memcmp(a2 + i, a5 + i, sizeof(float)), "attention case %zu at %d: avx2 %a, avx512 %a", ci, i,
                          a2[i], a5[i]);
        free(q); free(qb); free(k); free(kb); if (!shared) free(v); free(a2); free(a5);
    }
    const int shapes[][3] = {{40, 70, 130}, {24, 16, 64}, {9, 5, 33}, {128, 128, 144}}; /* band rows, k (d), cols */
    const krn_type types[] = {KRN_BF16, KRN_F32, KRN_F8E4M3};
    for (size_t si = 0; si < PD_ARRAY_LEN(shapes); si++)
        for (int t = 0; t < 3; t++) {
            const int nr = shapes[si][0], kd = shapes[si][1], cols = shapes[si][2], m = 5;
            const size_t ldx = (size_t)cols + 7, ldy = (size_t)cols + 5;
            test_mat tm;
            make_mat(&tm, types[t], nr + kd, cols);
            float *x = malloc(sizeof(float) * m * ldx), *y0 = malloc(sizeof(float) * m * ldy);
            float *y2 = malloc(sizeof(float) * m * ldy), *y5 = malloc(sizeof(float) * m * ldy);
            for (size_t i = 0; i < (size_t)m * ldx; i++) x[i] = randn();
            for (size_t i = 0; i < (size_t)m * ldy; i++) y0[i] = randn();
            for (int acc = 0; acc < 2; acc++) {
                memcpy(y2, y0, sizeof(float) * m * ldy);
                memcpy(y5, y0, sizeof(float) * m * ldy);
                krn__ops_force(t2);
                krn_matmul_sub(&tm.w, 3, 1, x, ldx, m, kd, cols - 1, y2, ldy, acc);
                krn__ops_force(t5);
                krn_matmul_sub(&tm.w, 3, 1, x, ldx, m, kd, cols - 1, y5, ldy, acc);
                ck_assert_msg(!memcmp(y2, y5, sizeof(float) * m * ldy),
                              "%s matmul_sub k%d n%d acc %d: avx2 and avx512 differ", krn_type_name(types[t]), kd,
                              cols - 1, acc);
            }
            krn__ops_force(t2);
            krn_linear_rows(&tm.w, kd, nr, x, ldx, m, y2, ldy);
            krn__ops_force(t5);
            krn_linear_rows(&tm.w, kd, nr, x, ldx, m, y5, ldy);
            ck_assert_msg(!memcmp(y2, y5, sizeof(float) * m * ldy),
                          "%s linear_rows rows %d cols %d: avx2 and avx512 differ", krn_type_name(types[t]), nr, cols);
            krn__ops_force(NULL);
            free(x); free(y0); free(y2); free(y5);
            free_mat(&tm);
        }
}
END_TEST

START_TEST(test_paths_attention_rows_independent)
{
    collect_tables();
    attn_rows_case(16, 128, 32, 128, 1); /* MLA absorbed decode (bench: 16 heads, latent 128 + rope 32) */
    attn_rows_case(5, 40, 8, 40, 1);     /* heads not a multiple of the 16 lanes: blocks straddle queries */
    attn_rows_case(3, 64, 32, 64, 0);    /* per-head keys (prefill form) */
}
END_TEST

TCase *test_kernels_paths_case(Suite *s)
{
    return PD_CHECK_CASE(s, "paths", 300, test_dispatch_features, test_paths_linear, test_paths_linear_argmax,
                         test_paths_w8a8, test_paths_logsumexp, test_paths_to_f32, test_paths_rows_independent,
                         test_paths_avx2_matches_avx512, test_paths_avx2_attention_matches_avx512,
                         test_paths_absorbed_rows, test_paths_group, test_paths_bf16dot, test_paths_attention,
                         test_paths_attention_rows_independent);
}
