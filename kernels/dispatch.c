/* The one kernel table: filled at first use from CPU feature detection (AVX-512 F/BW/VL, plus VNNI for W8A8 and
 * AVX512-BF16 for the opt-in bf16-activation prefill GEMM; else AVX2 + FMA), or the portable reference when
 * PDSERVE_PORTABLE=1 or the CPU has neither. PDSERVE_KERNELS picks a lower table. The public kernel entry points
 * live here: they pick the kernel for the matrix's packed form (and the call's flags) and split the work over the
 * pool. */
#include <pthread.h>
#include <strings.h>

#include "kernels/krn_impl.h"

static const krn__ops g_ref = {
    .name = "ref",
    .fast_bf16 = KRN_PACK_NONE,
    .fast_f8 = KRN_PACK_NONE,
    .gemm_i8 = krn__gemm_i8_ref,
    .quant_rows = krn__quant_rows_ref,
    .attn_tile = krn__attn_tile_ref,
    .matmul_sub = krn__matmul_sub_ref,
    .linear_rows = krn__linear_rows_ref,
    .logsumexp = krn__logsumexp_ref,
    .to_f32 = krn__to_f32_ref,
};

static krn__ops g_avx2, g_avx512, g_avx512_base;
static const krn__ops *g_ops, *g_detected;
static int g_have_avx2, g_have_avx512, g_have_avx512_base;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* PDSERVE_BF16_DOT=0 (and the like) turns the bf16-activation prefill kernel off for the whole process. */
static int env_off(const char *name)
{
    const char *v = getenv(name);
    return v && (!strcmp(v, "0") || !strcasecmp(v, "off") || !strcasecmp(v, "false") || !strcasecmp(v, "no"));
}

/* PDSERVE_KERNELS=portable|avx2|avx512 picks a table below the best this CPU has (tests, benchmarks, a user
 * comparing paths); a table the CPU lacks, or an unknown name, keeps the detected one with a warning. */
static const krn__ops *env_table(const krn__ops *detected)
{
    const char *v = getenv("PDSERVE_KERNELS");
    if (!v || !*v) return detected;
    if (!strcasecmp(v, "portable") || !strcasecmp(v, "ref")) return &g_ref;
    if (!strcasecmp(v, "avx2") && g_have_avx2) return &g_avx2;
    if (!strcasecmp(v, "avx512") && g_have_avx512) return &g_avx512;
    pd_warn("PDSERVE_KERNELS='%s': not a kernel table this CPU runs (portable, avx2 with FMA, avx512); using %s", v,
            detected->name);
    return detected;
}

unsigned krn__ops_fill(const krn_cpu_features *f, krn__ops *avx2, krn__ops *avx512)
{
    unsigned have = 0;
    if (f->avx2 && f->fma) {
        /* kernels/avx2/: the packed GEMMs, W8A8's int8 GEMM, the F32 GEMV, the attention tile and MLA's absorbed
         * products; the activation quantiser, the sampler's reductions and the rest stay portable */
        *avx2 = g_ref;
        avx2->name = "avx2";
        avx2->fast_bf16 = KRN_PACK_BF16_N32K2;
        avx2->fast_f8 = KRN_PACK_F8_N32K1;
        avx2->gemm_bf16 = krn__gemm_bf16_avx2_2x32;
        avx2->gemm_f8 = krn__gemm_f8_avx2_2x32;
        avx2->gemv_f32 = krn__gemv_f32_avx2_4x8;
        avx2->gemm_i8 = krn__gemm_i8_avx2_2x32;
        avx2->attn_tile = krn__attn_tile_avx2;
        avx2->matmul_sub = krn__matmul_sub_avx2;
        avx2->linear_rows = krn__linear_rows_avx2;
        have |= KRN__HAVE_AVX2;
    }
    /* kernels/avx512/ is built with F/BW/VL and FMA (which every AVX-512 CPU has; checked all the same) */
    if (!(f->avx512f && f->avx512bw && f->avx512vl && f->fma)) return have;
    *avx512 = (krn__ops){
        .name = "avx512",
        .fast_bf16 = KRN_PACK_BF16_N32K2,
        .fast_f8 = KRN_PACK_F8_N32K1,
        .gemm_bf16 = krn__gemm_bf16_avx512_12x32,
        .gemm_f8 = krn__gemm_f8_avx512_12x32,
        .gemm_i8 = (have & KRN__HAVE_AVX2) ? krn__gemm_i8_avx2_2x32 : krn__gemm_i8_ref,
        .quant_rows = krn__quant_rows_avx512,
        .gemv_f32 = krn__gemv_f32_avx512_4x16,
        .attn_tile = krn__attn_tile_avx512,
        .matmul_sub = krn__matmul_sub_avx512,
        .linear_rows = krn__linear_rows_avx512,
        .logsumexp = krn__logsumexp_avx512,
        .to_f32 = krn__to_f32_avx512,
    };
    if (f->avx512_vnni) avx512->gemm_i8 = krn__gemm_i8_avx512vnni_12x32; /* kernels/avx512_vnni/ */
    if (f->avx512_bf16) {                                                 /* kernels/avx512_bf16/ */
        if (!env_off("PDSERVE_BF16_DOT")) avx512->gemm_bf16dot = krn__gemm_bf16dot_avx512_12x32;
        if (!env_off("PDSERVE_ARGMAX_SCREEN")) {
            avx512->round_bf16_pairs = krn__round_bf16_pairs_avx512;
            avx512->gemm_bf16dot_rows = krn__gemm_bf16dot_rows_avx512;
            avx512->screen = krn__screen_avx512;
        }
    }
    if (avx512->gemm_bf16dot) avx512->name = "avx512+bf16dot";
    return have | KRN__HAVE_AVX512;
}

static void fill(void)
{
    const krn_cpu_features *f = krn_cpu_get();
    const unsigned have = krn__ops_fill(f, &g_avx2, &g_avx512);
    g_have_avx2 = (have & KRN__HAVE_AVX2) != 0;
    g_have_avx512 = (have & KRN__HAVE_AVX512) != 0;
    g_detected = g_have_avx512 ? &g_avx512 : g_have_avx2 ? &g_avx2 : &g_ref;
    /* what a CPU with this one's AVX-512 F/BW/VL but no VNNI or BF16 gets, for tests to run on this one */
    krn_cpu_features base = *f;
    base.avx512_vnni = base.avx512_bf16 = 0;
    krn__ops unused;
    g_have_avx512_base = (krn__ops_fill(&base, &unused, &g_avx512_base) & KRN__HAVE_AVX512) != 0;
    g_detected = env_table(g_detected);
    g_ops = g_detected;
}

const krn__ops *krn__ops_get(void)
{
    pthread_once(&g_once, fill);
    return g_ops;
}

const krn__ops *krn__ops_ref(void) { return &g_ref; }

const krn__ops *krn__ops_avx2(void)
{
    pthread_once(&g_once, fill);
    return g_have_avx2 ? &g_avx2 : NULL;
}

const krn__ops *krn__ops_avx512(void)
{
    pthread_once(&g_once, fill);
    return g_have_avx512 ? &g_avx512 : NULL;
}

const krn__ops *krn__ops_avx512_base(void)
{
    pthread_once(&g_once, fill);
    return g_have_avx512_base ? &g_avx512_base : NULL;
}

void krn__ops_force(const krn__ops *ops)
{
    pthread_once(&g_once, fill);
    g_ops = ops ? ops : g_detected;
}

const char *krn_kernels_name(void) { return krn__ops_get()->name; }

/* ---- linear layers -------------------------------------------------------------------------------------- */

/* Below this many multiply-adds a kernel runs on the calling thread: waking the pool costs more. */
#define PAR_MIN_MACS (1 << 16)

/* Pieces to split a kernel into: one when it is too small to share, else up to 4 per thread so that a thread
 * the OS deschedules costs a quarter of its share, not all of it. */
static int threads_for(double macs, int units)
{
    if (macs < PAR_MIN_MACS || units < 2) return 1;
    const int nt = krn_threads_get();
    return nt <= 1 ? 1 : PD_MIN(4 * nt, units);
}

/* F32 weights (the router; float32 models) on the AVX-512 table: the GEMV kernel for any m, whose rows do not depend
 * on m; pieces are (16 outputs) x (F32_MROWS rows) so that a prefill over a small matrix (the router: 4 blocks
 * of 16 outputs) still spreads over the pool. */
#define F32_MROWS 64
/* Items per pool job in krn_linear_group (more run as further jobs). */
#define KRN_GROUP_MAX 64
typedef struct {
    krn__gemm_fn gemm; /* NULL: not part of the job */
} group_slot;

typedef struct {
    const krn_mat *w;
    const float *x;
    const uint8_t *xq;
    const float *xs;
    int m, ldy;
    float *y;
    krn__gemm_fn gemm;
    krn__gemm_i8_fn gemm_i8;
    krn__gemv_f32_fn gemv;
    int units;
    float *scratch; /* fixed_task: KRN_LINEAR_BLOCK slots of cols + 4 floats */
} lin_job;

static void split(int units, int ith, int nth, int *u0, int *u1)
{
    *u0 = (int)((long)units * ith / nth);
    *u1 = (int)((long)units * (ith + 1) / nth);
}

static void gemm_task(void *p, int ith, int nth)
{
    const lin_job *j = p;
    int b0, b1;
    split(j->units, ith, nth, &b0, &b1);
    if (b0 < b1) j->gemm(j->w, j->x, j->m, j->y, j->ldy, b0, b1);
}

static void gemm_i8_task(void *p, int ith, int nth)
{
    const lin_job *j = p;
    int b0, b1;
    split(j->units, ith, nth, &b0, &b1);
    if (b0 < b1) j->gemm_i8(j->w, j->xq, j->xs, j->m, j->y, j->ldy, b0, b1);
}

/* units: row chunk r (F32_MROWS rows) x output block b (16 outputs), u = r * nb + b; a piece runs its units as
 * one call per row chunk */
static void gemv_f32_task(void *p, int ith, int nth)
{
    const lin_job *j = p;
    const int nb = (j->w->rows + 15) / 16;
    int u0, u1;
    split(j->units, ith, nth, &u0, &u1);
    while (u0 < u1) {
        const int r = u0 / nb, b0 = u0 % nb, b1 = PD_MIN(nb, b0 + (u1 - u0));
        const int i0 = r * F32_MROWS, mr = PD_MIN(F32_MROWS, j->m - i0);
        j->gemv(j->w, j->x + (size_t)i0 * j->w->cols, mr, j->y + (size_t)i0 * j->ldy, j->ldy, b0 * 16,
                PD_MIN(b1 * 16, j->w->rows));
        u0 += b1 - b0;
    }
}

typedef struct {
    const float *x;
    int m, k, kq4;
    uint8_t *xq;
    float *xs;
    krn__quant_rows_fn q;
} quant_job;

static void quant_task(void *p, int ith, int nth)
{
    const quant_job *j = p;
    int r0, r1;
    split(j->m, ith, nth, &r0, &r1);
    if (r0 < r1) j->q(j->x + (size_t)r0 * j->k, r1 - r0, j->k, j->kq4, j->xq + (size_t)r0 * j->kq4, j->xs + r0);
}

static void linear_i8(const krn__ops *o, const krn_mat *w, const float *x, int m, float *y, int ldy, float *scratch)
{
    const int K = w->cols, kq4 = krn__kq4(K), nb = krn__nblocks(w->rows);
    /* activations of a chunk of rows: u8 [rows][kq4] then their scales, inside krn_linear_scratch(K) floats */
    const size_t bytes = krn_linear_scratch(K) * sizeof(float);
    int chunk = (int)((bytes - 64) / ((size_t)kq4 + sizeof(float)));
    PD_ASSERT(chunk >= 1);
    for (int r0 = 0; r0 < m; r0 += chunk) {
        const int mr = PD_MIN(chunk, m - r0);
        uint8_t *xq = (uint8_t *)scratch;
        float *xs = (float *)(xq + (((size_t)mr * kq4 + 63) & ~(size_t)63));
        quant_job qj = {x + (size_t)r0 * K, mr, K, kq4, xq, xs, o->quant_rows};
        krn_parallel(quant_task, &qj, threads_for((double)mr * K * 4, mr));
        lin_job j = {.w = w, .xq = xq, .xs = xs, .m = mr, .ldy = ldy, .y = y + (size_t)r0 * ldy,
                     .gemm_i8 = o->gemm_i8, .units = nb};
        krn_parallel(gemm_i8_task, &j, threads_for((double)mr * w->rows * K, nb));
    }
}

/* The portable path's exact products: krn__linear_fixed_ref over pieces of 16 outputs, so that a row's bits do
 * not depend on m (decode and verify rows get what a single-row step gives them). Piece i converts F16/F8
 * weight rows into its own slot of scratch (krn_linear_scratch has KRN_LINEAR_BLOCK slots of cols + 4). */
static void fixed_task(void *p, int ith, int nth)
{
    const lin_job *j = p;
    int u0, u1;
    split(j->units, ith, nth, &u0, &u1);
    if (u0 < u1)
        krn__linear_fixed_ref(j->w, u0 * 16, PD_MIN(u1 * 16, j->w->rows), j->x, j->m, j->y, j->ldy,
                              j->scratch + (size_t)ith * (j->w->cols + 4));
}

static void linear_fixed(const krn_mat *w, const float *x, int m, float *y, int ldy, float *scratch)
{
    lin_job j = {.w = w, .x = x, .m = m, .ldy = ldy, .y = y, .units = (w->rows + 15) / 16, .scratch = scratch};
    const int pieces = PD_MIN(threads_for((double)m * w->rows * w->cols, j.units), KRN_LINEAR_BLOCK);
    krn_parallel(fixed_task, &j, pieces);
}

void krn_linear(const krn_mat *w, const float *x, int m, float *y, int ldy, float *scratch)
{
    krn_linear_ex(w, x, m, y, ldy, scratch, 0);
}

void krn_linear_ex(const krn_mat *w, const float *x, int m, float *y, int ldy, float *scratch, unsigned flags)
{
    if (m <= 0) return;
    const krn__ops *o = krn__ops_get();
    const double macs = (double)m * w->rows * w->cols;
    const int nb = krn__nblocks(w->rows);
    if (w->pack == KRN_PACK_I8_N32K4) {
        linear_i8(o, w, x, m, y, ldy, scratch);
        return;
    }
    krn__gemm_fn g = w->pack == KRN_PACK_BF16_N32K2 ? o->gemm_bf16 : w->pack == KRN_PACK_F8_N32K1 ? o->gemm_f8 : NULL;
    if (g) {
        lin_job j = {.w = w, .x = x, .m = m, .ldy = ldy, .y = y, .gemm = g, .units = nb};
        krn_parallel(gemm_task, &j, threads_for(macs, nb));
        return;
    }
    if (w->type == KRN_F32 && o->gemv_f32) {
        const int units = (w->rows + 15) / 16;
        lin_job j = {.w = w, .x = x, .m = m, .ldy = ldy, .y = y, .gemv = o->gemv_f32, .units = units};
        j.units = units * ((m + F32_MROWS - 1) / F32_MROWS);
        krn_parallel(gemv_f32_task, &j, threads_for(macs, j.units));
        return;
    }
    /* The portable path: every product, prompt rows (KRN_LINEAR_BF16_ACT) included, sums each output in one fixed
     * order. Prompt rows once went through sgemm above 2 rows; their bits then depended on their company (an
     * expert's product has as many rows as tokens routed to it), so a prompt prefilled beside others in a
     * prefill-only engine left other KV than the same prompt prefilled alone, and seeded sampling changed text. */
    (void)flags;
    linear_fixed(w, x, m, y, ldy, scratch);
}

typedef struct {
    const krn_linear_item *items;
    const group_slot *fns;
    int n, units;
} group_job;

static void group_task(void *p, int ith, int nth)
{
    const group_job *j = p;
    int u0, u1;
    split(j->units, ith, nth, &u0, &u1);
    /* walk the items' block ranges laid end to end; run the part of each that falls in [u0, u1) */
    for (int i = 0, base = 0; i < j->n && base < u1; i++) {
        const krn_linear_item *it = &j->items[i];
        if (!j->fns[i].gemm) continue;
        const int nb = krn__nblocks(it->w->rows), b0 = PD_MAX(u0 - base, 0), b1 = PD_MIN(u1 - base, nb);
        if (b0 < b1) j->fns[i].gemm(it->w, it->x, it->m, it->y, it->ldy, b0, b1);
        base += nb;
    }
}

void krn_linear_group(const krn_linear_item *items, int n, float *scratch)
{
    const krn__ops *o = krn__ops_get();
    group_slot fns[KRN_GROUP_MAX];
    for (int i0 = 0; i0 < n; i0 += KRN_GROUP_MAX) {
        const int cnt = PD_MIN(KRN_GROUP_MAX, n - i0);
        const krn_linear_item *it = items + i0;
        int units = 0;
        double macs = 0;
        for (int i = 0; i < cnt; i++) {
            const krn_mat *w = it[i].w;
            const int dot = (it[i].flags & KRN_LINEAR_BF16_ACT) && o->gemm_bf16dot;
            fns[i].gemm = it[i].m <= 0 ? NULL
                          : w->pack == KRN_PACK_BF16_N32K2 ? (dot ? o->gemm_bf16dot : o->gemm_bf16)
                          : w->pack == KRN_PACK_F8_N32K1   ? o->gemm_f8
                                                           : NULL;
            if (fns[i].gemm) {
                units += krn__nblocks(w->rows);
                macs += (double)it[i].m * w->rows * w->cols;
            } else if (it[i].m > 0) {
                krn_linear_ex(w, it[i].x, it[i].m, it[i].y, it[i].ldy, scratch, it[i].flags);
            }
        }
        if (!units) continue;
        group_job j = {it, fns, cnt, units};
        krn_parallel(group_task, &j, threads_for(macs, units));
    }
}

/* ---- greedy argmax with a screen ------------------------------------------------------------------------ */

#define SCREEN_CAP 1024 /* candidates per row; more (a nearly flat row) and the row is computed exactly */

static uint64_t g_screen_rows, g_screen_whole; /* krn_linear_argmax_counts */

void krn_linear_argmax_counts(uint64_t *rows, uint64_t *whole)
{
    *rows = __atomic_load_n(&g_screen_rows, __ATOMIC_RELAXED);
    *whole = __atomic_load_n(&g_screen_whole, __ATOMIC_RELAXED);
}

static size_t screen_ldxb(int cols) { return ((size_t)(cols + 1) / 2 + 15) & ~(size_t)15; }

size_t krn_linear_argmax_scratch(int cols, int m)
{
    return (size_t)m * (screen_ldxb(cols) * 4 + SCREEN_CAP * 4) + 64;
}

typedef struct {
    const krn_mat *w;
    float *out;
    int bad; /* a row's norm is not finite */
} norms_job;

static void norms_task(void *p, int ith, int nth)
{
    norms_job *j = p;
    const krn_mat *w = j->w;
    int r0, r1;
    split(w->rows, ith, nth, &r0, &r1);
    float buf[256];
    for (int r = r0; r < r1; r++) {
        double s = 0;
        for (int c0 = 0; c0 < w->cols; c0 += 256) {
            const int n = PD_MIN(256, w->cols - c0);
            krn_mat_row_part(w, r, c0, n, buf);
            for (int c = 0; c < n; c++) s += (double)buf[c] * buf[c];
        }
        const float v = (float)(sqrt(s) * (1 + 0x1p-40));
        j->out[r] = nextafterf(v, INFINITY); /* an upper bound whatever the two roundings did */
        if (!isfinite(j->out[r])) __atomic_store_n(&j->bad, 1, __ATOMIC_RELAXED);
    }
}

pd_status krn_mat_row_norms(const krn_mat *w, float *out)
{
    norms_job j = {w, out, 0};
    krn_parallel(norms_task, &j, threads_for((double)w->rows * w->cols, w->rows));
    return j.bad ? PD_ERR_RANGE : PD_OK;
}

typedef struct {
    const krn__ops *o;
    krn_mat h; /* w, its first n rows */
    const float *rn, *x;
    const uint32_t *xb;
    size_t ldxb;
    int m, ldy, units;
    float *y;
    int32_t *out, *cand;
} screen_job;

static void screen_gemm_task(void *p, int ith, int nth)
{
    const screen_job *j = p;
    int u0, u1;
    split(j->units, ith, nth, &u0, &u1);
    if (u0 < u1) j->o->gemm_bf16dot_rows(&j->h, j->xb, j->ldxb, j->m, j->y, j->ldy, u0, u1);
}

/* Row r: the screen's candidates, then their panels computed exactly (the product krn_linear runs, one panel at a
 * time: an output's bits do not depend on which outputs or rows it is computed with). A flat row (too many
 * candidates, or a screen that could not bound it) is computed whole. */
static void pick_row(const screen_job *j, int r)
{
    const krn__ops *o = j->o;
    const krn_mat *h = &j->h;
    const int K = h->cols, n = h->rows, nb = krn__nblocks(n);
    const float *x = j->x + (size_t)r * K;
    float *a = j->y + (size_t)r * j->ldy;
    int32_t *cand = j->cand + (size_t)r * SCREEN_CAP;
    double ss = 0;
    for (int i = 0; i < K; i++) ss += (double)x[i] * x[i];
    const double xn = sqrt(ss) * (1 + 0x1p-40);
    /* |exact - screen| <= (2^-8 (bf16's unit roundoff on x) + ~4K 2^-24 (both sums' roundings)) |x| |w_o| by
     * Cauchy-Schwarz, plus terms below 2^-100 for flushed subnormals; 2^-12 more covers the scan's own float
     * roundings (docs/kernels.md, "Greedy argmax") */
    const double c = (0x1p-8 * 1.01 + 4.2 * K * 0x1p-24) * (1 + 0x1p-12);
    int nc = -1;
    if (isfinite(xn) && xn > 1e-30)
        nc = o->screen(a, j->rn, n, (float)(c * xn * (1 + 0x1p-20)) + 0x1p-120f, 0x1p-100f, cand, SCREEN_CAP);
    int panels = 0;
    for (int i = 0; i < nc; i++) panels += i == 0 || cand[i] / KRN_NR != cand[i - 1] / KRN_NR;
    int best = -1;
    float bv = 0;
    if (nc > 0 && panels <= nb / 8 + 1) {
        for (int i = 0; i < nc && best != -2;) {
            const int p = cand[i] / KRN_NR;
            o->gemm_bf16(h, x, 1, a, j->ldy, p, p + 1); /* the kernel writes panel p's outputs at a + 32 p */
            for (; i < nc && cand[i] / KRN_NR == p; i++) {
                const float v = a[cand[i]];
                if (isnan(v)) {
                    best = -2;
                    break;
                }
                if (best < 0 || v > bv) {
                    best = cand[i];
                    bv = v;
                }
            }
        }
    }
    if (best < 0) { /* the whole row, exactly */
        o->gemm_bf16(h, x, 1, a, j->ldy, 0, nb);
        best = krn_argmax(a, n);
        __atomic_add_fetch(&g_screen_whole, 1, __ATOMIC_RELAXED);
    }
    __atomic_add_fetch(&g_screen_rows, 1, __ATOMIC_RELAXED);
    j->out[r] = best;
}

static void pick_task(void *p, int ith, int nth)
{
    const screen_job *j = p;
    int r0, r1;
    split(j->m, ith, nth, &r0, &r1);
    for (int r = r0; r < r1; r++) pick_row(j, r);
}

int krn_linear_argmax_available(const krn_mat *w)
{
    return krn__ops_get()->screen && w->pack == KRN_PACK_BF16_N32K2;
}

int krn_linear_argmax(const krn_mat *w, const float *rownorm, int n, const float *x, int m, float *y, int ldy,
                      int32_t *out, void *scratch)
{
    const krn__ops *o = krn__ops_get();
    if (!krn_linear_argmax_available(w) || !rownorm || m < 1 || n < 1 || n > w->rows || ldy < n) return 0;
    const int K = w->cols;
    const size_t ldxb = screen_ldxb(K);
    uint8_t *sp = (uint8_t *)(((uintptr_t)scratch + 63) & ~(uintptr_t)63);
    screen_job j = {.o = o, .h = *w, .rn = rownorm, .x = x, .ldxb = ldxb, .m = m, .ldy = ldy, .y = y, .out = out};
    j.h.rows = n; /* a prefix of rows is a valid view of the packed form: panels of 32 rows, in order */
    uint32_t *xb = (uint32_t *)sp;
    j.xb = xb;
    j.cand = (int32_t *)(sp + (size_t)m * ldxb * 4);
    o->round_bf16_pairs(x, (size_t)K, m, K, xb, ldxb);
    j.units = krn__nblocks(n);
    krn_parallel(screen_gemm_task, &j, threads_for((double)m * n * K, j.units));
    krn_parallel(pick_task, &j, PD_MIN(m, krn_threads_get()));
    return 1;
}

void krn_matmul_sub(const krn_mat *w, int r0, int c0, const float *x, size_t ldx, int m, int k, int n, float *y,
                    size_t ldy, int accumulate)
{
    krn__ops_get()->matmul_sub(w, r0, c0, x, ldx, m, k, n, y, ldy, accumulate);
}

void krn_linear_rows(const krn_mat *w, int r0, int n, const float *x, size_t ldx, int m, float *y, size_t ldy)
{
    krn__ops_get()->linear_rows(w, r0, n, x, ldx, m, y, ldy);
}

/* ---- attention ------------------------------------------------------------------------------------------ */

typedef struct {
    const krn_attn_tile_args *a;
    void (*fn)(const krn_attn_tile_args *a, int u0, int u1);
} attn_job;

static void attn_task(void *p, int ith, int nth)
{
    const attn_job *j = p;
    int u0, u1;
    split(j->a->nq * j->a->nh, ith, nth, &u0, &u1);
    if (u0 < u1) j->fn(j->a, u0, u1);
}

void krn_attn_tile_units(const krn_attn_tile_args *a, int u0, int u1)
{
    if (u0 < u1) krn__ops_get()->attn_tile(a, u0, u1);
}

void krn_attn_tile(const krn_attn_tile_args *a)
{
    const int units = a->nq * a->nh;
    attn_job j = {a, krn__ops_get()->attn_tile};
    krn_parallel(attn_task, &j, threads_for((double)units * a->nk * (a->da + a->db + a->dv), units));
}

float krn_logsumexp(const float *x, int n) { return krn__ops_get()->logsumexp(x, n); }

void krn_to_f32(krn_type t, const void *src, float *dst, int n)
{
    PD_ASSERT(t == KRN_F32 || t == KRN_F16 || t == KRN_BF16);
    krn__ops_get()->to_f32(t, src, dst, n);
}
