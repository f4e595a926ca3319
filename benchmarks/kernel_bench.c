/* kernel_bench: one run measures the kernels against this machine's own limits and prints one table.
 * - peak: register-resident multiply-add loops on every pool thread, with the instructions of the kernel table in
 *   use (AVX-512, AVX2 + FMA or plain C), and vdpbf16ps where the CPU has it (GFLOP/s ceiling);
 * - prefill GEMM on the `bench` preset's matrix shapes at --tokens rows (BF16 packed, FP8, W8A8, and the prompt-
 *   prefill bf16-activation kernel vs the vdpbf16ps peak) vs that peak and vs OpenBLAS sgemm on the same shapes with
 *   the same thread count;
 * - decode GEMV (one row) over enough copies of each matrix to stream from DRAM: bytes of weights / time vs a
 *   streaming sum over a large buffer;
 * - flash (tiled online-softmax) vs naive (S x S scores per head, sgemm) attention at 2k and 8k tokens: time,
 *   peak extra memory, max difference. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchmarks/kernel_bench_peak.h"
#include "kernels/krn.h"
#include "model/mdl.h"
#include "model/mdl_runner.h"

static pd_rng g_rng;
static volatile float g_sink;

static double now(void) { return pd_time_now(); }

/* ---- peak and bandwidth, run on every pool thread ----------------------------------------------------- */
typedef struct {
    long iters;
    int bf16;
    const float *buf;
    size_t n;
} peak_job;

static void peak_task(void *p, int ith, int nth)
{
    const peak_job *j = p;
    (void)ith;
    (void)nth;
    g_sink += j->bf16 ? bench_peak_bf16dot(j->iters) : bench_peak_fma(j->iters);
}

static void stream_task(void *p, int ith, int nth)
{
    const peak_job *j = p;
    size_t per = (j->n / (size_t)nth) & ~(size_t)127;
    g_sink += bench_stream_sum(j->buf + per * (size_t)ith, per);
}

static double peak_gflops(int bf16, int nth)
{
    peak_job j = {.iters = 5000000, .bf16 = bf16};
    double best = 0;
    for (int r = 0; r < 9; r++) { /* best of several short runs: other processes may share the cores */
        double t = now();
        krn_parallel(peak_task, &j, nth);
        t = now() - t;
        double fl = bf16 ? (double)nth * j.iters * 12 * 64 : (double)nth * (j.iters / 2) * 24 * 32;
        if (fl / t > best) best = fl / t;
    }
    return best / 1e9;
}

static double stream_gbs(int nth)
{
    const size_t n = (size_t)128 << 20; /* 512 MB of floats */
    float *buf = pd_aligned_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) buf[i] = 1.0f;
    peak_job j = {.buf = buf, .n = n};
    double best = 0;
    for (int r = 0; r < 8; r++) {
        double t = now();
        krn_parallel(stream_task, &j, nth);
        t = now() - t;
        double gbs = (double)((n / (size_t)nth) & ~(size_t)127) * nth * 4 / t / 1e9;
        if (gbs > best) best = gbs;
    }
    free(buf);
    return best;
}

/* ---- matrices -------------------------------------------------------------------------------------------- */
typedef struct {
    const char *name;
    int n, k;
} shape;

/* bench preset: hidden 1024, q_lora 384, kv_lora 128, heads 16, nope 64 / rope 32 / v 64, inter 2816,
 * moe_inter 256 */
static const shape g_shapes[] = {
    {"q_a_proj", 384, 1024},   {"q_b_proj", 16 * 96, 384},  {"kv_a_proj", 128 + 32, 1024},
    {"kv_b_proj", 16 * 128, 128}, {"o_proj", 1024, 16 * 64}, {"mlp.gate/up", 2816, 1024},
    {"mlp.down", 1024, 2816},  {"expert.gate/up", 256, 1024}, {"expert.down", 1024, 256},
};

typedef struct {
    krn_mat w;
    void *data, *pack;
    float *scale;
    size_t bytes; /* bytes the kernel streams per product */
} bmat;

static void bmat_make(bmat *b, krn_type t, int w8a8, int n, int k)
{
    memset(b, 0, sizeof *b);
    const int br = 128, bc = 128, sr = (n + br - 1) / br, sc = (k + bc - 1) / bc;
    b->data = pd_aligned_alloc((size_t)n * k * krn_type_size(t) + 64);
    b->scale = pd_aligned_alloc(sizeof(float) * sr * sc);
    for (int i = 0; i < sr * sc; i++) b->scale[i] = 1e-3f * (1 + i % 3);
    for (size_t i = 0; i < (size_t)n * k; i++) {
        float v = (float)pd_rng_normal(&g_rng) * 0.05f;
        if (t == KRN_F32) ((float *)b->data)[i] = v;
        else if (t == KRN_BF16) ((krn_bf16 *)b->data)[i] = krn_f32_to_bf16(v);
        else ((uint8_t *)b->data)[i] = krn_f32_to_e4m3(v / 1e-3f);
    }
    b->w = (krn_mat){.type = t, .rows = n, .cols = k, .data = b->data, .scale = b->scale, .block_r = br, .block_c = bc};
    krn_prepack_mode mode = w8a8 ? KRN_PREPACK_W8A8 : KRN_PREPACK_FAST;
    size_t pb = krn_mat_prepack_size(&b->w, mode);
    if (pb) {
        b->pack = pd_aligned_alloc(pb);
        krn_mat_prepack(&b->w, mode, b->pack);
    }
    b->bytes = w8a8 ? (size_t)n * k : (size_t)n * k * krn_type_size(t);
}

static void bmat_free(bmat *b)
{
    free(b->data);
    free(b->pack);
    free(b->scale);
}

static double time_linear(const krn_mat *w, const float *x, int m, float *y, float *scratch, int reps)
{
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now();
        krn_linear(w, x, m, y, w->rows, scratch);
        t = now() - t;
        if (t < best) best = t;
    }
    return best;
}

/* krn_linear with options (KRN_LINEAR_BF16_ACT: the prompt-prefill kernel) */
static double time_linear_flags(const krn_mat *w, const float *x, int m, float *y, float *scratch, int reps,
                                unsigned flags)
{
    const krn_linear_item it = {w, x, m, w->rows, y, flags};
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now();
        krn_linear_group(&it, 1, scratch);
        t = now() - t;
        if (t < best) best = t;
    }
    return best;
}

static double time_sgemm(const float *W, int n, int k, const float *x, int m, float *y, int nth, int reps)
{
    openblas_set_num_threads(nth);
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, W, k, 0.0f, y, n);
        t = now() - t;
        if (t < best) best = t;
    }
    openblas_set_num_threads(nth > 1 ? 1 : nth); /* back to what the pool wants */
    return best;
}

/* ---- attention ------------------------------------------------------------------------------------------- */
#define H 16
#define NOPE 64
#define ROPE 32
#define VD 64
#define QK (NOPE + ROPE)
#define KV (NOPE + VD)

typedef struct {
    int S;
    const float *q, *kv, *kpe;
    float *out, *P, *Qh, *Kh, *Vh, *Oh;
} naive_job;

static void softmax_rows_task(void *p, int ith, int nth)
{
    naive_job *j = p;
    for (int i = ith; i < j->S; i += nth) {
        float *r = j->P + (size_t)i * j->S;
        krn_softmax(r, i + 1); /* causal: keys 0..i */
        memset(r + i + 1, 0, (size_t)(j->S - i - 1) * sizeof(float));
    }
}

static double attn_naive(int S, const float *q, const float *kv, const float *kpe, float *out, float scale, int nth,
                         size_t *peak)
{
    naive_job j = {.S = S, .q = q, .kv = kv, .kpe = kpe, .out = out};
    j.P = pd_aligned_alloc((size_t)S * S * sizeof(float));
    j.Qh = pd_aligned_alloc((size_t)S * QK * 4);
    j.Kh = pd_aligned_alloc((size_t)S * QK * 4);
    j.Vh = pd_aligned_alloc((size_t)S * VD * 4);
    j.Oh = pd_aligned_alloc((size_t)S * VD * 4);
    *peak = (size_t)S * S * 4 + (size_t)S * (2 * QK + 2 * VD) * 4;
    double t = now();
    for (int h = 0; h < H; h++) {
        for (int s = 0; s < S; s++) {
            memcpy(j.Qh + (size_t)s * QK, q + ((size_t)s * H + h) * QK, QK * 4);
            memcpy(j.Kh + (size_t)s * QK, kv + ((size_t)s * H + h) * KV, NOPE * 4);
            memcpy(j.Kh + (size_t)s * QK + NOPE, kpe + (size_t)s * ROPE, ROPE * 4);
            memcpy(j.Vh + (size_t)s * VD, kv + ((size_t)s * H + h) * KV + NOPE, VD * 4);
        }
        openblas_set_num_threads(nth);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, S, S, QK, scale, j.Qh, QK, j.Kh, QK, 0.0f, j.P, S);
        openblas_set_num_threads(1);
        krn_parallel(softmax_rows_task, &j, nth);
        openblas_set_num_threads(nth);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, S, VD, S, 1.0f, j.P, S, j.Vh, VD, 0.0f, j.Oh, VD);
        openblas_set_num_threads(1);
        for (int s = 0; s < S; s++) memcpy(out + ((size_t)s * H + h) * VD, j.Oh + (size_t)s * VD, VD * 4);
    }
    t = now() - t;
    free(j.P); free(j.Qh); free(j.Kh); free(j.Vh); free(j.Oh);
    return t;
}

#define FLASH_TILE 256 /* keys per krn_attn_tile call, as model/forward.c's ATTN_TILE */

static double attn_flash(int S, const float *q, const float *kv, const float *kpe, float *out, float scale,
                         size_t *peak)
{
    float *m = pd_aligned_alloc((size_t)S * H * 4), *l = pd_aligned_alloc((size_t)S * H * 4);
    float scores[64];
    int *lim = malloc((size_t)S * sizeof(int));
    for (int i = 0; i < S; i++) lim[i] = i;
    /* + per thread: the AVX-512 kernel's transposed block of 16 queries and its 64 x 16 score tile */
    *peak = (size_t)S * H * 2 * 4 + (size_t)S * sizeof(int) +
            (size_t)krn_threads_get() * ((size_t)(NOPE + ROPE) * 16 + 64 * 16) * 4;
    double t = now();
    krn_attn_init(S, H, VD, m, l, out, H * VD, VD);
    for (int k0 = 0; k0 < S; k0 += FLASH_TILE) {
        /* queries before k0 see none of this tile: start at the first that does */
        krn_attn_tile_args a = {
            .nq = S - k0, .nh = H, .nk = PD_MIN(FLASH_TILE, S - k0), .da = NOPE, .db = ROPE, .dv = VD,
            .qa = q + (size_t)k0 * H * QK, .qa_stride = H * QK, .qa_hstride = QK,
            .qb = q + (size_t)k0 * H * QK + NOPE, .qb_stride = H * QK, .qb_hstride = QK,
            .ka = kv + (size_t)k0 * H * KV, .ka_stride = H * KV, .ka_hstride = KV,
            .kb = kpe + (size_t)k0 * ROPE, .kb_stride = ROPE,
            .v = kv + (size_t)k0 * H * KV + NOPE, .v_stride = H * KV, .v_hstride = KV,
            .q_limit = lim + k0, .k_pos0 = k0, .scale = scale,
            .m = m + (size_t)k0 * H, .l = l + (size_t)k0 * H, .acc = out + (size_t)k0 * H * VD,
            .acc_stride = H * VD, .acc_hstride = VD, .scores = scores,
        };
        krn_attn_tile(&a);
    }
    krn_attn_finish(S, H, VD, l, out, H * VD, VD);
    t = now() - t;
    free(m); free(l); free(lim);
    return t;
}

/* ---- decode GEMV ------------------------------------------------------------------------------------------ */
/* Buffers the decode section streams, weights and the streaming loop alike: 2 MB aligned, ordinary 4 KB pages (as
 * the loader's packed weights; transparent huge pages were tried: +10-20% on a long stream but about 3 s of
 * page compaction per GB at load on this machine). */
static void *big_alloc(size_t bytes)
{
    bytes = (bytes + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
    void *p = NULL;
    if (posix_memalign(&p, (size_t)2 << 20, bytes) != 0) return NULL;
    memset(p, 0, bytes);
    return p;
}

/* One timed pass of the streaming read over the first `bytes` of buf, on every pool thread: GB/s. */
static double stream_once(const float *buf, size_t bytes, int nth)
{
    peak_job j = {.buf = buf, .n = bytes / sizeof(float)};
    double t = now();
    krn_parallel(stream_task, &j, nth);
    t = now() - t;
    return (double)((j.n / (size_t)nth) & ~(size_t)127) * nth * 4 / t / 1e9;
}

/* Decode: m activation rows (batch x positions) through each matrix, weights streamed from DRAM (copies of the
 * matrix, > 256 MB in all, one after another, as a forward pass meets its layers). Each repetition times the
 * streaming read over as many bytes and then the GEMV loop, back to back, so the ratio compares the two under
 * the same load from other processes; the figures are medians over the repetitions. GB/s counts the weight
 * bytes once per product whatever m is: at m > 1 the question is whether the rows share one pass. */
static void decode_section(int nth, const int *rows, int n_rows, int reps)
{
    enum { MAXREP = 64 };
    const char *tname[4] = {"bf16", "fp8", "w8a8", "f32"};
    const size_t sbytes = (size_t)288 << 20;
    float *sbuf = big_alloc(sbytes);
    for (size_t i = 0; i < sbytes / 4; i++) sbuf[i] = 1.0f;
    for (int ri = 0; ri < n_rows; ri++) {
        const int m = rows[ri];
        printf("\n== decode GEMV, m=%d row%s, weights streamed from DRAM (copies > 256 MB); GB/s of weights and ratio "
               "vs the streaming read in the same repetition (medians of %d)\n", m, m > 1 ? "s" : "", reps);
        printf("  %-15s %6s %6s", "matrix", "N", "K");
        for (int ty = 0; ty < 4; ty++) printf(" | %8s %6s", tname[ty], "ratio");
        printf("\n");
        double sum_b[4] = {0}, sum_t[4] = {0}, all_stream[4 * 16 * MAXREP];
        int n_stream = 0;
        for (size_t si = 0; si < PD_ARRAY_LEN(g_shapes); si++) {
            const int n = g_shapes[si].n, k = g_shapes[si].k;
            float *x = pd_aligned_alloc((size_t)m * k * 4), *y = pd_aligned_alloc((size_t)m * n * 4);
            float *scratch = pd_aligned_alloc(krn_linear_scratch(k) * 4);
            for (int i = 0; i < m * k; i++) x[i] = (float)pd_rng_normal(&g_rng);
            printf("  %-15s %6d %6d", g_shapes[si].name, n, k);
            for (int ty = 0; ty < 4; ty++) {
                krn_type t = ty == 1 ? KRN_F8E4M3 : ty == 3 ? KRN_F32 : KRN_BF16;
                bmat one;
                bmat_make(&one, t, ty == 2, n, k);
                const size_t psz = one.pack ?
                    krn_mat_prepack_size(&one.w, ty == 2 ? KRN_PREPACK_W8A8 : KRN_PREPACK_FAST) :
                    (size_t)n * k * krn_type_size(t);
                const size_t stride = (psz + 4095) & ~(size_t)4095;
                const int copies = (int)PD_MIN(4096, ((size_t)256 << 20) / one.bytes + 1);
                uint8_t *arena = big_alloc(stride * copies);
                krn_mat *ws = malloc(sizeof(krn_mat) * copies);
                for (int c = 0; c < copies; c++) {
                    uint8_t *buf = arena + stride * c;
                    memcpy(buf, one.pack ? one.pack : one.data, psz);
                    ws[c] = one.w;
                    if (one.pack) {
                        ws[c].packed = buf;
                        ws[c].pscale = one.w.pscale ? (const float *)(buf + ((const uint8_t *)one.w.pscale -
                                                                            (const uint8_t *)one.pack)) : NULL;
                        ws[c].psum = one.w.psum ? (const int32_t *)(buf + ((const uint8_t *)one.w.psum -
                                                                          (const uint8_t *)one.pack)) : NULL;
                    } else {
                        ws[c].data = buf;
                    }
                }
                const double wbytes = (double)one.bytes * copies;
                double gbs[MAXREP], ratio[MAXREP];
                for (int c = 0; c < copies; c++) krn_linear(&ws[c], x, m, y, n, scratch); /* warm */
                for (int r = 0; r < reps; r++) {
                    const double s = stream_once(sbuf, PD_MIN(sbytes, (size_t)wbytes), nth);
                    double tt = now();
                    for (int c = 0; c < copies; c++) krn_linear(&ws[c], x, m, y, n, scratch);
                    tt = now() - tt;
                    gbs[r] = wbytes / tt / 1e9;
                    ratio[r] = gbs[r] / s;
                    all_stream[n_stream++] = s;
                }
                const double g = bench_median(gbs, reps), rt = bench_median(ratio, reps);
                printf(" | %8.1f %6.2f", g, rt);
                sum_b[ty] += wbytes;
                sum_t[ty] += wbytes / (g * 1e9);
                free(ws);
                free(arena);
                bmat_free(&one);
            }
            printf("\n");
            free(x); free(y); free(scratch);
        }
        const double sm = bench_median(all_stream, n_stream);
        printf("  %-15s %13s", "all (sum)", "");
        for (int ty = 0; ty < 4; ty++)
            printf(" | %8.1f %6.2f", sum_b[ty] / sum_t[ty] / 1e9, sum_b[ty] / sum_t[ty] / 1e9 / sm);
        printf("\n  (all: total bytes / total of the median times, vs the median streaming read of the section, %.1f "
               "GB/s)\n",
               sm);
    }
    free(sbuf);
}

/* ---- prefill on a model ---------------------------------------------------------------------------------- */

/* Model FLOPs of prefilling S tokens (the usual MFU count): 2 x the active parameters each token multiplies (the
 * lm_head excluded: a prefill takes logits for its last token only), plus causal attention in MLA's prefill form,
 * 2 x heads x (qk + v) per (query, key) pair, S(S+1)/2 pairs per layer. kv_b's per-tile decompression is work the
 * implementation adds, not model FLOPs. */
static double prefill_flops(const mdl_model *m, int S)
{
    const mdl_config *c = &m->cfg;
    mdl_param_counts pc;
    mdl_config_count(c, 2, &pc);
    const double head = (double)m->lm_head.rows * m->lm_head.cols;
    const double body = pc.params_active - head;
    const double qk = c->qk_nope_head_dim + c->qk_rope_head_dim, v = c->v_head_dim;
    const double attn = 2.0 * c->num_attention_heads * (qk + v) * ((double)S * (S + 1) / 2) * m->n_layers;
    return 2.0 * body * S + attn;
}

/* Prompt prefill through mdl_runner (chunks of `chunk` tokens, as a server's --max-num-batched-tokens), exact f32
 * activations and bf16 ones back to back per repetition: tokens/s and model FLOP utilisation against the peak loop
 * of the arithmetic each uses (FMA for exact, vdpbf16ps for bf16), measured by this run. */
static void model_section(const char *dir, const int *lens, int n_lens, int chunk, int reps, double pk, double pk_bf)
{
    enum { MAXREP = 64 };
    char err[1024];
    mdl_load_opts lo = mdl_load_defaults();
    lo.progress = 0;
    mdl_model *m = NULL;
    if (mdl_model_load(dir, &lo, &m, err, sizeof err) != PD_OK) {
        fprintf(stderr, "kernel_bench: %s\n", err);
        return;
    }
    const int have_dot = strstr(krn_kernels_name(), "bf16dot") != NULL;
    mdl_param_counts pc;
    mdl_config_count(&m->cfg, 2, &pc);
    printf("\n== prefill on %s (%d layers, hidden %d; %.2f B active parameters), chunks of %d, medians of %d\n", dir,
           m->n_layers, m->cfg.hidden_size, pc.params_active / 1e9, chunk, reps);
    printf("  MFU = model FLOPs / time / the peak loop of the arithmetic used (exact: FMA %.0f, bf16: vdpbf16ps %.0f "
           "GFLOP/s)\n", pk, pk_bf);
    printf("  %7s | %10s %8s %6s | %10s %8s %6s | %8s\n", "tokens", "exact t/s", "GFLOP/s", "MFU", "bf16 t/s",
           "GFLOP/s", "MFU", "bf16/ex");
    for (int li = 0; li < n_lens; li++) {
        const int S = lens[li];
        if (S < 1 || S + 1 > m->cfg.max_position_embeddings) continue;
        int32_t *t = malloc((size_t)S * sizeof(int32_t));
        float *lg = malloc((size_t)m->cfg.vocab_size * sizeof(float));
        for (int i = 0; i < S; i++) t[i] = (int32_t)(3 + (pd_rng_next(&g_rng) % (uint64_t)(m->cfg.vocab_size - 3)));
        mdl_runner r;
        if (mdl_runner_open(&r, m, S, PD_MIN(chunk, S), 16) != PD_OK) {
            fprintf(stderr, "kernel_bench: cannot open a runner for %d tokens\n", S);
            free(t);
            free(lg);
            continue;
        }
        double te[MAXREP], tb[MAXREP], ratio[MAXREP];
        (void)mdl_runner_feed(&r, t, S, 0, MDL_ATTN_PREFILL, 0, lg, NULL); /* warm-up: first touch of the buffers */
        for (int rep = 0; rep < reps; rep++)
            for (int a = 0; a < 1 + have_dot; a++) {
                r.act_bf16 = a;
                double t0 = now();
                (void)mdl_runner_feed(&r, t, S, 0, MDL_ATTN_PREFILL, 0, lg, NULL);
                (a ? tb : te)[rep] = now() - t0;
                if (a) ratio[rep] = te[rep] / tb[rep];
            }
        mdl_runner_close(&r);
        const double fl = prefill_flops(m, S) / 1e9, e = bench_median(te, reps);
        printf("  %7d | %10.1f %8.1f %6.2f |", S, S / e, fl / e, fl / e / pk);
        if (have_dot) {
            const double b = bench_median(tb, reps);
            printf(" %10.1f %8.1f %6.2f | %7.2fx\n", S / b, fl / b, pk_bf > 0 ? fl / b / pk_bf : 0,
                   bench_median(ratio, reps));
        } else {
            printf(" %10s %8s %6s | %8s\n", "-", "-", "-", "-");
        }
        fflush(stdout);
        free(t);
        free(lg);
    }
    mdl_model_destroy(m);
}

/* "1,4,16" -> up to cap positive counts (others skipped); returns how many. */
static int parse_counts(char *s, int *v, int cap)
{
    int n = 0;
    for (char *p = s; *p && n < cap;) {
        v[n] = (int)strtol(p, &p, 10);
        if (v[n] >= 1) n++;
        if (*p == ',') p++;
        else break;
    }
    return n;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "--stream-only")) {
        krn_threads_init(0);
        for (int i = 0; i < 3; i++) printf("stream %.1f GB/s\n", stream_gbs(krn_threads_get()));
        return 0;
    }
    int threads = 0, tokens = 512, max_s = 8192, reps = 7, rows[8] = {1}, n_rows = 1;
    int want_prefill = 1, want_decode = 1, want_attn = 1, lens[8] = {512, 2048}, n_lens = 2, chunk = 2048;
    const char *model_dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) {
            reps = atoi(argv[++i]); /* PD_MIN/PD_MAX evaluate twice: no ++i inside */
            reps = PD_MAX(1, PD_MIN(64, reps));
        }
        else if (!strcmp(argv[i], "--rows") && i + 1 < argc) {
            n_rows = parse_counts(argv[++i], rows, 8);
            if (!n_rows) rows[n_rows++] = 1;
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc) {
            const char *o = argv[++i];
            want_prefill = !strcmp(o, "prefill");
            want_decode = !strcmp(o, "decode");
            want_attn = !strcmp(o, "attention");
            if (!strcmp(o, "model")) want_prefill = want_decode = want_attn = 0;
        } else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) tokens = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--max-seq") && i + 1 < argc) max_s = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--model") && i + 1 < argc) model_dir = argv[++i];
        else if (!strcmp(argv[i], "--chunk") && i + 1 < argc) {
            chunk = atoi(argv[++i]); /* as --reps: no ++i inside PD_MAX */
            chunk = PD_MAX(1, chunk);
        } else if (!strcmp(argv[i], "--prompt-tokens") && i + 1 < argc) n_lens = parse_counts(argv[++i], lens, 8);
        else {
            fprintf(stderr,
                    "usage: kernel_bench [--threads N] [--tokens M (512)] [--max-seq S (8192)] [--reps R (7)]\n"
                    "                    [--rows 1,4,16 (decode rows, 1)] [--only prefill|decode|attention|model]\n"
                    "                    [--model DIR [--prompt-tokens 512,2048] [--chunk 2048]]\n");
            return 2;
        }
    }
    pd_rng_seed(&g_rng, 42);
    if (krn_threads_init(threads) != PD_OK) return 1;
    const int nth = krn_threads_get();
    char cpu[256];
    krn_cpu_describe(cpu, sizeof cpu);
    double load = 0;
    FILE *lf = fopen("/proc/loadavg", "r");
    if (lf) { if (fscanf(lf, "%lf", &load) != 1) load = 0; fclose(lf); }
    printf("kernel_bench: kernels=%s threads=%d cpu=[%s] loadavg(1m)=%.2f\n", krn_kernels_name(), nth, cpu, load);
    const krn_cpu_features *f = krn_cpu_get();
    const double pk = peak_gflops(0, nth), pk_bf = f->avx512_bf16 ? peak_gflops(1, nth) : 0;
    const double bw = stream_gbs(nth);
    printf("\n== machine (measured by this program, %d threads)\n", nth);
    printf("  peak f32 multiply-add                   %8.1f GFLOP/s  (%s)\n", pk, bench_peak_isa());
    if (pk_bf > 0) printf("  peak bf16 dot (vdpbf16ps, 12 chains)    %8.1f GFLOP/s\n", pk_bf);
    else printf("  peak bf16 dot                                n/a  (no AVX512-BF16 on this CPU)\n");
    printf("  streaming read (sum over 512 MB)        %8.1f GB/s\n", bw);

    if (want_prefill) {
        /* ---- prefill GEMM ---- */
        printf("\n== prefill GEMM, M=%d tokens, y = x W^T, f32 activations; GFLOP/s (ratios vs FMA peak and sgemm)\n",
               tokens);
        printf(
            "  bf16dot: the prompt-prefill kernel (KRN_LINEAR_BF16_ACT: x rounded to bf16, vdpbf16ps), %%dot = of the\n"
            "  vdpbf16ps peak loop, x sgemm / x bf16 = speed-up over OpenBLAS sgemm / the exact bf16 kernel (same "
            "run)\n");
        printf("  %-15s %6s %6s | %8s %6s | %8s %6s | %8s %6s %7s %6s | %8s %8s | %8s\n", "matrix", "N", "K", "bf16",
               "%peak", "sgemm", "x sgemm", "bf16dot", "%dot", "x sgemm", "x bf16", "fp8", "w8a8", "%peak");
        const int M = tokens;
        const int have_dot = strstr(krn_kernels_name(), "bf16dot") != NULL;
        double tot_fl = 0, tot_bf = 0, tot_sg = 0, tot_f8 = 0, tot_i8 = 0, tot_bd = 0;
        for (size_t si = 0; si < PD_ARRAY_LEN(g_shapes); si++) {
            const int n = g_shapes[si].n, k = g_shapes[si].k;
            float *x = pd_aligned_alloc((size_t)M * k * 4), *y = pd_aligned_alloc((size_t)M * n * 4);
            float *scratch = pd_aligned_alloc(krn_linear_scratch(k) * 4);
            for (size_t i = 0; i < (size_t)M * k; i++) x[i] = (float)pd_rng_normal(&g_rng);
            bmat b, f8, i8;
            bmat_make(&b, KRN_BF16, 0, n, k);
            bmat_make(&f8, KRN_F8E4M3, 0, n, k);
            bmat_make(&i8, KRN_BF16, 1, n, k);
            float *wf = pd_aligned_alloc((size_t)n * k * 4);
            for (int r = 0; r < n; r++) krn_mat_row(&b.w, r, wf + (size_t)r * k);
            const double fl = 2.0 * M * n * k;
            time_linear(&b.w, x, M, y, scratch, 1); /* warm */
            double tb = time_linear(&b.w, x, M, y, scratch, 5);
            time_linear_flags(&b.w, x, M, y, scratch, 1, KRN_LINEAR_BF16_ACT); /* warm */
            double td = time_linear_flags(&b.w, x, M, y, scratch, 5, KRN_LINEAR_BF16_ACT);
            double tf = time_linear(&f8.w, x, M, y, scratch, 5);
            double ti = time_linear(&i8.w, x, M, y, scratch, 5);
            double ts = time_sgemm(wf, n, k, x, M, y, nth, 5);
            printf(
                "  %-15s %6d %6d | %8.1f %5.0f%% | %8.1f %6.2f | %8.1f %5.0f%% %7.2f %6.2f | %8.1f %8.1f | %7.0f%%\n",
                g_shapes[si].name, n, k, fl / tb / 1e9, 100 * fl / tb / 1e9 / pk, fl / ts / 1e9, ts / tb, fl / td / 1e9,
                have_dot ? 100 * fl / td / 1e9 / pk_bf : 0, ts / td, tb / td, fl / tf / 1e9, fl / ti / 1e9,
                100 * fl / ti / 1e9 / pk);
            tot_fl += fl; tot_bf += tb; tot_sg += ts; tot_f8 += tf; tot_i8 += ti; tot_bd += td;
            bmat_free(&b); bmat_free(&f8); bmat_free(&i8);
            free(wf); free(x); free(y); free(scratch);
        }
        printf("  %-15s %13s | %8.1f %5.0f%% | %8.1f %6.2f | %8.1f %5.0f%% %7.2f %6.2f | %8.1f %8.1f | %7.0f%%\n",
               "all (sum)", "", tot_fl / tot_bf / 1e9, 100 * tot_fl / tot_bf / 1e9 / pk, tot_fl / tot_sg / 1e9,
               tot_sg / tot_bf, tot_fl / tot_bd / 1e9, have_dot ? 100 * tot_fl / tot_bd / 1e9 / pk_bf : 0,
               tot_sg / tot_bd, tot_bf / tot_bd, tot_fl / tot_f8 / 1e9, tot_fl / tot_i8 / 1e9,
               100 * tot_fl / tot_i8 / 1e9 / pk);
        if (!have_dot) printf("  (no AVX512-BF16 here: the bf16dot column is the exact kernel)\n");
    }

    /* ---- decode GEMV ---- */
    if (want_decode) decode_section(nth, rows, n_rows, reps);

    if (want_attn) {
        /* ---- attention ---- */
        printf(
            "\n== prefill attention, %d heads, qk %d+%d, v %d, causal: flash (krn_attn_tile, 256-key tiles) vs naive\n",
            H, NOPE, ROPE, VD);
        printf("  %6s | %9s %12s | %9s %12s | %8s %10s\n", "tokens", "flash s", "flash extra", "naive s", "naive extra",
               "speedup", "max |diff|");
        for (int S = 2048; S <= max_s; S *= 4) {
            float *q = pd_aligned_alloc((size_t)S * H * QK * 4), *kv = pd_aligned_alloc((size_t)S * H * KV * 4);
            float *kpe = pd_aligned_alloc((size_t)S * ROPE * 4);
            float *o1 = pd_aligned_alloc((size_t)S * H * VD * 4), *o2 = pd_aligned_alloc((size_t)S * H * VD * 4);
            for (size_t i = 0; i < (size_t)S * H * QK; i++) q[i] = (float)pd_rng_normal(&g_rng);
            for (size_t i = 0; i < (size_t)S * H * KV; i++) kv[i] = (float)pd_rng_normal(&g_rng);
            for (size_t i = 0; i < (size_t)S * ROPE; i++) kpe[i] = (float)pd_rng_normal(&g_rng);
            const float scale = 1.0f / sqrtf((float)QK);
            size_t pf, pn;
            double tf = attn_flash(S, q, kv, kpe, o1, scale, &pf);
            double tn = attn_naive(S, q, kv, kpe, o2, scale, nth, &pn);
            double md = 0;
            for (size_t i = 0; i < (size_t)S * H * VD; i++) md = fmax(md, fabs((double)o1[i] - o2[i]));
            printf("  %6d | %9.3f %9.2f MB | %9.3f %9.2f MB | %7.2fx %10.2g\n", S, tf, pf / 1e6, tn, pn / 1e6, tn / tf,
                   md);
            free(q); free(kv); free(kpe); free(o1); free(o2);
        }
        printf("\n(flash extra: softmax state m,l [S x heads] + per thread 16 transposed queries and a 64 x 16 score "
               "tile; naive extra: one S x S score matrix "
               "(heads run one after another) + per-head Q/K/V/O copies. Outputs [S x heads x v] are the same for "
               "both.)\n");
    }
    if (model_dir) model_section(model_dir, lens, n_lens, chunk, reps, pk, pk_bf);
    return 0;
}
