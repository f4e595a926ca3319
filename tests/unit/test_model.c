/* Engine tests: logits against DeepSeek's reference (tests/fixtures/<case>/golden.json) through the prefill
 * and decode paths at float32 and default precision, MTP logits, greedy continuations; invariants on
 * generated checkpoints of other shapes (V2 routing, no q_lora, odd sizes, YaRN, many KV blocks, chunked
 * prefill, batched == alone, sharded == single file, FP8); malformed configs and checkpoints; the checkpoint pages
 * a loaded model no longer reads leave its resident memory. */
#include <cJSON.h>
#include <check.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/mdl.h"
#include "model/mdl_generate.h"
#include "model/mdl_presets.h"
#include "model/mdl_runner.h"
#include "pd_check.h"

static double rel_l2(const float *a, const float *ref, int n)
{
    double num = 0, den = 0;
    for (int i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static void json_floats(const cJSON *arr, float *out)
{
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr) out[i++] = (float)v->valuedouble;
}

/* ---- golden ------------------------------------------------------------------------------------------ */

typedef struct {
    const char *fixture;
    krn_type wt, kv;
    mdl_attn_mode mode;
    double tol;
    mdl_quant quant; /* MDL_QUANT_NONE unless given */
} golden_cfg;

static void run_golden(const golden_cfg *g)
{
    char path[1024], err[1024];
    snprintf(path, sizeof path, "%s/%s/golden.json", PD_FIXTURES, g->fixture);
    char *text = NULL;
    ck_assert_int_eq(pd_file_read(path, &text, NULL), PD_OK);
    cJSON *root = cJSON_Parse(text);
    free(text);
    ck_assert_ptr_nonnull(root);
    snprintf(path, sizeof path, "%s/%s", PD_FIXTURES, g->fixture);
    mdl_load_opts lo = mdl_load_defaults();
    lo.weight_type = g->wt;
    lo.kv_type = g->kv;
    lo.quant = g->quant;
    lo.progress = 0;
    mdl_model *m = NULL;
    ck_assert_msg(mdl_model_load(path, &lo, &m, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_int_eq(m->n_mtp, 1);
    const int V = m->cfg.vocab_size, D = m->cfg.hidden_size;
    double worst = 0, worst_mtp = 0;
    int greedy_checked = 0;
    const cJSON *cs;
    cJSON_ArrayForEach(cs, cJSON_GetObjectItem(root, "cases"))
    {
        const cJSON *jt = cJSON_GetObjectItem(cs, "tokens");
        int n = cJSON_GetArraySize(jt), k = 0;
        int32_t *toks = malloc((size_t)(n + 8) * sizeof *toks);
        const cJSON *v;
        cJSON_ArrayForEach(v, jt) toks[k++] = v->valueint;
        float *lg = malloc((size_t)n * V * sizeof(float)), *hid = malloc((size_t)n * D * sizeof(float));
        float *ref = malloc((size_t)V * sizeof(float));
        mdl_runner r;
        ck_assert_int_eq(mdl_runner_open(&r, m, n + 8, n, 16), PD_OK);
        ck_assert_int_eq(mdl_runner_feed(&r, toks, n, 0, g->mode, 1, lg, hid), PD_OK);
        const cJSON *pos = cJSON_GetObjectItem(cs, "positions"), *lgs = cJSON_GetObjectItem(cs, "logits");
        for (int i = 0; i < cJSON_GetArraySize(pos); i++) {
            int p = cJSON_GetArrayItem(pos, i)->valueint;
            json_floats(cJSON_GetArrayItem(lgs, i), ref);
            double e = rel_l2(lg + (size_t)p * V, ref, V);
            worst = fmax(worst, e);
            ck_assert_msg(e <= g->tol, "%s pos %d: rel L2 %.3g > %.3g", g->fixture, p, e, g->tol);
            /* same argmax wherever the reference's top-1 margin is clear of the error */
            int a = krn_argmax(ref, V);
            float second = -INFINITY;
            for (int j = 0; j < V; j++)
                if (j != a && ref[j] > second) second = ref[j];
            double scale = 0;
            for (int j = 0; j < V; j++) scale += (double)ref[j] * ref[j];
            if (ref[a] - second > 4 * e * sqrt(scale / V) + 1e-3)
                ck_assert_int_eq(krn_argmax(lg + (size_t)p * V, V), a);
        }
        /* MTP: pairs (h_main[p], t[p+1]) */
        ck_assert_int_eq(mdl_runner_feed_mtp(&r, toks + 1, hid, n - 1, 0, g->mode, lg, NULL), PD_OK);
        pos = cJSON_GetObjectItem(cs, "mtp_positions");
        lgs = cJSON_GetObjectItem(cs, "mtp_logits");
        for (int i = 0; i < cJSON_GetArraySize(pos); i++) {
            int p = cJSON_GetArrayItem(pos, i)->valueint;
            json_floats(cJSON_GetArrayItem(lgs, i), ref);
            double e = rel_l2(lg + (size_t)p * V, ref, V);
            worst_mtp = fmax(worst_mtp, e);
            ck_assert_msg(e <= g->tol, "%s MTP pos %d: rel L2 %.3g > %.3g", g->fixture, p, e, g->tol);
        }
        mdl_runner_close(&r);
        /* greedy continuation: equal until our own top-1 margin is too small to decide */
        ck_assert_int_eq(mdl_runner_open(&r, m, n + 8, n, 16), PD_OK);
        ck_assert_int_eq(mdl_runner_feed(&r, toks, n, 0, MDL_ATTN_PREFILL, 0, lg, NULL), PD_OK);
        const cJSON *gr = cJSON_GetObjectItem(cs, "greedy");
        for (int i = 0; i < cJSON_GetArraySize(gr); i++) {
            int a = krn_argmax(lg, V);
            float second = -INFINITY;
            for (int j = 0; j < V; j++)
                if (j != a && lg[j] > second) second = lg[j];
            if (lg[a] - second < (g->wt == KRN_F32 ? 1e-4 : 5e-3)) break; /* >= 10x the measured error */
            ck_assert_int_eq(a, cJSON_GetArrayItem(gr, i)->valueint);
            greedy_checked++;
            toks[n + i] = a;
            ck_assert_int_eq(mdl_runner_feed(&r, &toks[n + i], 1, n + i, g->mode, 0, lg, NULL), PD_OK);
        }
        mdl_runner_close(&r);
        free(toks);
        free(lg);
        free(hid);
        free(ref);
    }
    ck_assert_int_ge(greedy_checked, 16); /* of 24 */
    fprintf(stderr, "golden %s w=%s%s kv=%s %s: worst rel L2 %.3g, MTP %.3g, %d greedy tokens equal\n", g->fixture,
            krn_type_name(g->wt), g->quant == MDL_QUANT_W8A8 ? " W8A8" : "", krn_type_name(g->kv),
            g->mode == MDL_ATTN_PREFILL ? "prefill" : "decode", worst, worst_mtp, greedy_checked);
    mdl_model_destroy(m);
    cJSON_Delete(root);
}

static const golden_cfg goldens[] = {
    {"v3tiny", KRN_F32, KRN_F32, MDL_ATTN_PREFILL, 1e-4, MDL_QUANT_NONE},
    {"v3tiny", KRN_F32, KRN_F32, MDL_ATTN_DECODE, 1e-4, MDL_QUANT_NONE},
    {"v3tiny", KRN_BF16, KRN_F16, MDL_ATTN_PREFILL, 2e-2, MDL_QUANT_NONE},
    {"v3tiny", KRN_BF16, KRN_F16, MDL_ATTN_DECODE, 2e-2, MDL_QUANT_NONE},
    {"v3tiny", KRN_BF16, KRN_BF16, MDL_ATTN_PREFILL, 2e-2, MDL_QUANT_NONE},
    {"v3tiny", KRN_BF16, KRN_BF16, MDL_ATTN_DECODE, 2e-2, MDL_QUANT_NONE},
    {"v3yarn-fp8", KRN_F32, KRN_F32, MDL_ATTN_PREFILL, 1e-4, MDL_QUANT_NONE},
    {"v3yarn-fp8", KRN_F32, KRN_F32, MDL_ATTN_DECODE, 1e-4, MDL_QUANT_NONE},
    {"v3yarn-fp8", KRN_BF16, KRN_F16, MDL_ATTN_PREFILL, 2e-2, MDL_QUANT_NONE},
    {"v3yarn-fp8", KRN_BF16, KRN_F16, MDL_ATTN_DECODE, 2e-2, MDL_QUANT_NONE},
    /* W8A8 experts: int8 weights (per output channel) and per-token int8 activations, converted at load.
     * v3yarn-fp8 is absent on purpose: its near-tied expert choice (docs/engine.md) flips under int8 noise
     * and that position's logits move by 0.17 (docs/kernels.md). */
    {"v3tiny", KRN_BF16, KRN_F16, MDL_ATTN_PREFILL, 5e-2, MDL_QUANT_W8A8},
    {"v3tiny", KRN_BF16, KRN_F16, MDL_ATTN_DECODE, 5e-2, MDL_QUANT_W8A8},
};

START_TEST(test_golden) { run_golden(&goldens[_i]); }
END_TEST

START_TEST(test_fp8_stays_fp8)
{
    char path[1024], err[1024];
    snprintf(path, sizeof path, "%s/v3yarn-fp8", PD_FIXTURES);
    mdl_load_opts lo = mdl_load_defaults();
    lo.progress = 0;
    mdl_model *m = NULL;
    ck_assert_msg(mdl_model_load(path, &lo, &m, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_int_eq(m->layers[0].q_a.type, KRN_F8E4M3);
    ck_assert_int_eq(m->layers[0].q_a.block_r, 128);
    ck_assert_ptr_nonnull(m->layers[0].q_a.scale);
    ck_assert_int_eq(m->layers[2].exp_down[31].type, KRN_F8E4M3);
    ck_assert_int_eq(m->layers[0].kv_a.type, KRN_BF16); /* stored BF16 in this checkpoint */
    ck_assert_float_eq(m->cfg.rope_factor, 8.0);
    mdl_model_destroy(m);
    /* W8A8 from an FP8 checkpoint: experts become int8 (the FP8 data stays for row lookups), the rest stays FP8 */
    lo.quant = MDL_QUANT_W8A8;
    ck_assert_msg(mdl_model_load(path, &lo, &m, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_int_eq(m->layers[2].exp_down[31].pack, KRN_PACK_I8_N32K4);
    ck_assert_int_eq(m->layers[2].exp_down[31].type, KRN_F8E4M3);
    ck_assert_int_eq(m->layers[2].sh_up.pack, KRN_PACK_I8_N32K4);
    ck_assert_int_ne(m->layers[0].q_a.pack, KRN_PACK_I8_N32K4);
    mdl_model_destroy(m);
}
END_TEST

/* ---- generated variants --------------------------------------------------------------------------------- */

static char g_tmp[256];

static void make_model(const char *name, const char *const *sets, int n_sets, int fp8, uint64_t shard, char *out,
                       size_t outlen)
{
    mdl_config c;
    char err[1024];
    ck_assert_int_eq(mdl_preset_config("tiny", &c), PD_OK);
    c.vocab_size = 1000; /* keep variants small; sets may change it */
    ck_assert_msg(mdl_config_override(&c, sets, n_sets, err, sizeof err) == PD_OK, "%s", err);
    snprintf(out, outlen, "%s/%s", g_tmp, name);
    mdl_generate_opts o = {.seed = 11, .fp8 = fp8, .shard_bytes = shard};
    ck_assert_msg(mdl_generate_checkpoint(out, &c, &o, err, sizeof err) == PD_OK, "%s", err);
}

static mdl_model *load(const char *dir, krn_type wt, krn_type kv)
{
    char err[1024];
    mdl_load_opts lo = mdl_load_defaults();
    lo.weight_type = wt;
    lo.kv_type = kv;
    lo.progress = 0;
    mdl_model *m = NULL;
    ck_assert_msg(mdl_model_load(dir, &lo, &m, err, sizeof err) == PD_OK, "%s: %s", dir, err);
    return m;
}

static void random_tokens(int32_t *t, int n, int vocab, uint64_t seed)
{
    pd_rng r;
    pd_rng_seed(&r, seed);
    for (int i = 0; i < n; i++) t[i] = (int32_t)(pd_rng_next(&r) % (uint64_t)vocab);
}

/* Logits at every position through one path; caller frees. */
static float *all_logits(mdl_model *m, const int32_t *t, int n, mdl_attn_mode mode, int chunk, int block)
{
    mdl_runner r;
    float *lg = malloc((size_t)n * m->cfg.vocab_size * sizeof(float));
    ck_assert_int_eq(mdl_runner_open(&r, m, n, chunk, block), PD_OK);
    ck_assert_int_eq(mdl_runner_feed(&r, t, n, 0, mode, 1, lg, NULL), PD_OK);
    mdl_runner_close(&r);
    return lg;
}

static void check_paths_agree(const char *dir, int n, double tol)
{
    mdl_model *m = load(dir, KRN_F32, KRN_F32);
    const int V = m->cfg.vocab_size;
    int32_t *t = malloc((size_t)n * sizeof *t);
    random_tokens(t, n, V, 5);
    float *a = all_logits(m, t, n, MDL_ATTN_PREFILL, n, 4);        /* whole prompt, blocks of 4 */
    float *b = all_logits(m, t, n, MDL_ATTN_DECODE, n, 16);        /* one token at a time */
    float *c = all_logits(m, t, n, MDL_ATTN_PREFILL, 7, 5);        /* chunked prefill, odd block */
    double e1 = rel_l2(b, a, n * V), e2 = rel_l2(c, a, n * V);
    ck_assert_msg(e1 <= tol, "%s: decode vs prefill %.3g", dir, e1);
    ck_assert_msg(e2 <= tol, "%s: chunked vs whole prefill %.3g", dir, e2);
    /* logits are not degenerate: positions differ, and they are finite */
    ck_assert(rel_l2(a, a + V, V) > 1e-3);
    for (int i = 0; i < n * V; i++) ck_assert(isfinite(a[i]));
    free(a);
    free(b);
    free(c);
    free(t);
    mdl_model_destroy(m);
}

/* ---- resident memory after load --------------------------------------------------------------------------- */

/* This process's resident bytes in its mappings of the file at path (the Rss of its /proc/self/smaps entries: pages
 * mapped here, not the page cache's), and the address range they cover. */
static size_t file_rss(const char *path, uintptr_t *lo, uintptr_t *hi)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    ck_assert_ptr_nonnull(f);
    char line[PATH_MAX + 256];
    size_t rss = 0;
    int in = 0;
    *lo = UINTPTR_MAX;
    *hi = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long a, b, kb;
        int n = 0;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &a, &b, &n) == 2 && n > 0) { /* a mapping's first line */
            line[strcspn(line, "\n")] = '\0';
            in = !strcmp(line + n, path);
            if (in) *lo = PD_MIN(*lo, (uintptr_t)a), *hi = PD_MAX(*hi, (uintptr_t)b);
        } else if (in && sscanf(line, "Rss: %lu kB", &kb) == 1) {
            rss += (size_t)kb * 1024;
        }
    }
    fclose(f);
    return rss;
}

/* Whole pages inside [p, p + n) mapped in this process (bit 63 of their /proc/self/pagemap entries). */
static size_t present_pages(const void *p, size_t n)
{
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a0 = ((uintptr_t)p + pg - 1) & ~(pg - 1);
    const uintptr_t a1 = ((uintptr_t)p + n) & ~(pg - 1);
    int fd = open("/proc/self/pagemap", O_RDONLY);
    ck_assert_int_ge(fd, 0);
    size_t count = 0;
    for (uintptr_t a = a0; a < a1; a += pg) {
        uint64_t e = 0;
        ck_assert_int_eq(pread(fd, &e, sizeof e, (off_t)(a / pg * sizeof e)), (ssize_t)sizeof e);
        count += (size_t)(e >> 63);
    }
    close(fd);
    return count;
}

typedef struct {
    size_t kept_bytes;    /* matrices the forward pass reads in place */
    int n_kept, n_packed; /* in the mapping: read in place / read only through their packed forms */
} mats_tally;

/* Tallies a matrix whose data lies in [lo, hi) (the checkpoint's mapping; converted copies lie elsewhere). Packed
 * ones (but kv_b_proj, which absorbed MLA reads unpacked) must have no whole page of theirs mapped. */
static void tally_mat(const krn_mat *w, int plain_read, uintptr_t lo, uintptr_t hi, const char *what, int l,
                      mats_tally *t)
{
    if ((uintptr_t)w->data < lo || (uintptr_t)w->data >= hi) return;
    const size_t bytes = (size_t)w->rows * w->cols * krn_type_size(w->type);
    if (w->pack == KRN_PACK_NONE || plain_read) {
        t->kept_bytes += bytes;
        t->n_kept++;
        return;
    }
    t->n_packed++;
    size_t n = present_pages(w->data, bytes);
    ck_assert_msg(n == 0, "layer %d %s: %zu of its pages still resident after load", l, what, n);
}

static void tally_model(const mdl_model *m, uintptr_t lo, uintptr_t hi, mats_tally *t)
{
    memset(t, 0, sizeof *t);
    tally_mat(&m->embed, 0, lo, hi, "embed", -1, t);
    tally_mat(&m->lm_head, 0, lo, hi, "lm_head", -1, t);
    for (int l = 0; l < m->n_layers + m->n_mtp; l++) {
        const mdl_layer *L = &m->layers[l];
        const krn_mat *w[] = {&L->q_a, &L->q_b, &L->q, &L->kv_a, &L->o, &L->gate, &L->up, &L->down, &L->router,
                              &L->sh_gate, &L->sh_up, &L->sh_down, &L->eh_proj, &L->head, &L->embed};
        for (size_t i = 0; i < PD_ARRAY_LEN(w); i++) tally_mat(w[i], 0, lo, hi, "matrix", l, t);
        tally_mat(&L->kv_b, 1, lo, hi, "kv_b", l, t);
        for (int e = m->exp0; L->is_moe && e < m->exp1; e++) {
            tally_mat(&L->exp_gate[e], 0, lo, hi, "expert gate", l, t);
            tally_mat(&L->exp_up[e], 0, lo, hi, "expert up", l, t);
            tally_mat(&L->exp_down[e], 0, lo, hi, "expert down", l, t);
        }
    }
}

static const struct {
    const char *fixture;
    mdl_quant quant;
} releases[] = {{"v3tiny", MDL_QUANT_NONE}, {"v3tiny", MDL_QUANT_W8A8}, {"v3yarn-fp8", MDL_QUANT_NONE}};

/* After load, the checkpoint's pages in this process are at most the header's and those of the matrices read in place
 * (embeddings, kv_b_proj, whatever this kernel table does not pack), each with the two pages it may share with a
 * neighbour: vectors, converted and packed matrices are gone, and a forward pass does not bring them back. */
START_TEST(test_load_releases_checkpoint_pages)
{
    char dir[1024], given[1100], file[PATH_MAX], err[1024];
    snprintf(dir, sizeof dir, "%s/%s", PD_FIXTURES, releases[_i].fixture);
    snprintf(given, sizeof given, "%s/model.safetensors", dir);
    ck_assert_ptr_nonnull(realpath(given, file));
    const size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    unsigned char h8[8];
    FILE *f = fopen(file, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fread(h8, 1, 8, f), 8);
    fclose(f);
    size_t header = 8;
    for (int i = 7; i >= 0; i--) header += (size_t)h8[i] << (8 * i);

    mdl_load_opts lo = mdl_load_defaults();
    lo.quant = releases[_i].quant;
    lo.progress = 0;
    mdl_model *m = NULL;
    ck_assert_msg(mdl_model_load(dir, &lo, &m, err, sizeof err) == PD_OK, "%s", err);
    uintptr_t a, b;
    const size_t rss = file_rss(file, &a, &b);
    ck_assert_uint_lt(a, b);
    mats_tally t;
    tally_model(m, a, b, &t);
    const size_t bound = (header + pg - 1) / pg * pg + t.kept_bytes + (size_t)t.n_kept * 2 * pg;
    fprintf(stderr, "%s%s on %s: %zu KB of the checkpoint resident after load (at most %zu KB: %d matrices read in "
            "place); %d packed matrices released\n", releases[_i].fixture, lo.quant ? " W8A8" : "",
            krn_kernels_name(), rss >> 10, bound >> 10, t.n_kept, t.n_packed);
    ck_assert_msg(rss <= bound, "%zu bytes of the checkpoint resident after load, more than %zu", rss, bound);

    /* prefill, decode and MTP read packed forms and copies besides the matrices read in place: only those fault in
     * (with the kernel's fault-around, up to 64 KiB of a neighbour's pages at either end of each) */
    const int V = m->cfg.vocab_size, D = m->cfg.hidden_size, n = 24;
    int32_t toks[24];
    random_tokens(toks, n, V, 3);
    float *lg = malloc((size_t)n * V * sizeof(float)), *hid = malloc((size_t)n * D * sizeof(float));
    mdl_runner r;
    ck_assert_int_eq(mdl_runner_open(&r, m, n, 8, 16), PD_OK);
    ck_assert_int_eq(mdl_runner_feed(&r, toks, n - 4, 0, MDL_ATTN_PREFILL, 1, lg, hid), PD_OK);
    ck_assert_int_eq(mdl_runner_feed(&r, toks + n - 4, 4, n - 4, MDL_ATTN_DECODE, 1, lg, NULL), PD_OK);
    ck_assert_int_eq(mdl_runner_feed_mtp(&r, toks + 1, hid, n - 5, 0, MDL_ATTN_DECODE, lg, NULL), PD_OK);
    mdl_runner_close(&r);
    for (int i = 0; i < V; i++) ck_assert(isfinite(lg[i]));
    const size_t rss2 = file_rss(file, &a, &b);
    ck_assert_msg(rss2 <= bound + (size_t)t.n_kept * 2 * (64u << 10),
                  "after a forward pass %zu bytes of the checkpoint are resident (%zu after load, at most %zu)", rss2,
                  rss, bound);
    free(lg);
    free(hid);
    mdl_model_destroy(m);
}
END_TEST

START_TEST(test_variant_v3_default)
{
    char dir[512];
    make_model("v3", NULL, 0, 0, 0, dir, sizeof dir);
    check_paths_agree(dir, 70, 1e-5);
}
END_TEST

/* Decode attention splits the keys into 256-key tiles scored side by side, 4 at a time, and folds them in order:
 * 1100 positions give 5 tiles over 2 rounds, against the prefill path's single online pass. */
START_TEST(test_variant_v3_long_context)
{
    char dir[512];
    make_model("v3", NULL, 0, 0, 0, dir, sizeof dir);
    check_paths_agree(dir, 1100, 1e-5);
}
END_TEST

START_TEST(test_variant_v2_greedy_no_qlora)
{
    const char *sets[] = {"architectures=DeepseekV2ForCausalLM", "q_lora_rank=null", "scoring_func=softmax",
                          "topk_method=greedy", "norm_topk_prob=false", "routed_scaling_factor=1.5",
                          "n_group=1", "topk_group=1", "n_shared_experts=2", "num_nextn_predict_layers=0",
                          "vocab_size=1001", "num_attention_heads=3", "kv_lora_rank=48", "v_head_dim=24"};
    char dir[512];
    make_model("v2greedy", sets, PD_ARRAY_LEN(sets), 0, 0, dir, sizeof dir);
    check_paths_agree(dir, 45, 1e-5);
}
END_TEST

START_TEST(test_variant_v2_group_limited_yarn)
{
    const char *sets[] = {"architectures=DeepseekV2ForCausalLM", "scoring_func=softmax",
                          "topk_method=group_limited_greedy", "norm_topk_prob=true", "n_group=8", "topk_group=3",
                          "num_experts_per_tok=6", "first_k_dense_replace=0", "moe_layer_freq=2",
                          "rope_scaling={\"type\":\"yarn\",\"factor\":4,\"original_max_position_embeddings\":16,"
                          "\"beta_fast\":32,\"beta_slow\":1,\"mscale\":0.707,\"mscale_all_dim\":0.707}",
                          "qk_rope_head_dim=8", "qk_nope_head_dim=24", "num_nextn_predict_layers=0"};
    char dir[512];
    make_model("v2group", sets, PD_ARRAY_LEN(sets), 0, 0, dir, sizeof dir);
    check_paths_agree(dir, 60, 1e-5);
}
END_TEST

/* A prompt's logits (and so its KV and first token) do not depend on how it is chunked: passes of 7, 32, 33, 64
 * and 65 tokens and the whole 150 give the same bits on every kernel table, with bf16 prompt activations and with
 * exact f32 ones. Every product there sums each output in one fixed order whatever the row count (the F32 router
 * included: it once went to sgemm above 64 rows, and a prompt prefilled in a long pass then differed from the same
 * prompt prefilled beside few others; the portable path's prompt rows went to sgemm above 2 rows before,
 * and a seeded PD request then changed text, test_spec_portable_sampling). */
START_TEST(test_prefill_chunking_bitwise)
{
    char dir[512];
    make_model("chunking", NULL, 0, 0, 0, dir, sizeof dir);
    mdl_model *m = load(dir, KRN_BF16, KRN_F16);
    const int V = m->cfg.vocab_size, n = 150, chunks[] = {7, 32, 33, 64, 65};
    int32_t t[150];
    random_tokens(t, n, V, 77);
    for (int act = 0; act <= 1; act++) {
        float *whole = malloc((size_t)n * V * sizeof(float)), *lg = malloc((size_t)n * V * sizeof(float));
        mdl_runner r;
        ck_assert_int_eq(mdl_runner_open(&r, m, n, n, 16), PD_OK);
        r.act_bf16 = act;
        ck_assert_int_eq(mdl_runner_feed(&r, t, n, 0, MDL_ATTN_PREFILL, 1, whole, NULL), PD_OK);
        mdl_runner_close(&r);
        for (size_t ci = 0; ci < PD_ARRAY_LEN(chunks); ci++) {
            ck_assert_int_eq(mdl_runner_open(&r, m, n, chunks[ci], 16), PD_OK);
            r.act_bf16 = act;
            ck_assert_int_eq(mdl_runner_feed(&r, t, n, 0, MDL_ATTN_PREFILL, 1, lg, NULL), PD_OK);
            mdl_runner_close(&r);
            for (int p = 0; p < n; p++)
                ck_assert_msg(!memcmp(lg + (size_t)p * V, whole + (size_t)p * V, (size_t)V * sizeof(float)),
                              "act_bf16 %d, chunks of %d: position %d differs from the whole prompt", act, chunks[ci],
                              p);
        }
        free(whole);
        free(lg);
    }
    mdl_model_destroy(m);
}
END_TEST

/* Rows marked argmax_only get the argmax of the exact logits (krn_argmax's index), and unmarked rows of the same
 * pass keep their exact logits bit for bit, whether no, some (interleaved) or all rows are marked. Where the lm_head
 * screen exists (AVX512-BF16, BF16 head) the marked rows are screened, not computed whole. */
START_TEST(test_argmax_rows)
{
    char dir[512];
    make_model("argmax", NULL, 0, 0, 0, dir, sizeof dir);
    mdl_model *m = load(dir, KRN_BF16, KRN_F16);
    const int V = m->cfg.vocab_size, n = 40;
    int32_t t[40];
    random_tokens(t, n, V, 91);
    mdl_runner r;
    ck_assert_int_eq(mdl_runner_open(&r, m, n, n, 8), PD_OK);
    int start[2] = {0, n}, ctx_len = 0, rows[40];
    for (int i = 0; i < n; i++) rows[i] = i;
    const int *table = r.blocks;
    float *plain = malloc((size_t)n * V * sizeof(float)), *lg = malloc((size_t)n * V * sizeof(float));
    mdl_batch b = {.n_seqs = 1, .n_tokens = n, .tokens = t, .seq_start = start, .ctx_len = &ctx_len,
                   .block_table = &table, .logits_rows = rows, .n_logits = n, .attn = MDL_ATTN_PREFILL};
    ck_assert_int_eq(mdl_forward(r.ctx, r.kv, &b, plain), PD_OK);
    const int screen = m->lm_head_norms != NULL;
    ck_assert_int_eq(screen, krn_linear_argmax_available(&m->lm_head)); /* norms exactly where they are used */
    for (int pattern = 0; pattern < 3; pattern++) {
        uint8_t only[40];
        int32_t amax[40], marked = 0;
        for (int i = 0; i < n; i++) marked += only[i] = pattern == 2 || (pattern == 1 && i % 3 != 1);
        for (int i = 0; i < n; i++) amax[i] = -7;
        b.argmax_only = only;
        b.argmax = amax;
        uint64_t rows0, whole0, rows1, whole1;
        krn_linear_argmax_counts(&rows0, &whole0);
        ck_assert_int_eq(mdl_forward(r.ctx, r.kv, &b, lg), PD_OK);
        krn_linear_argmax_counts(&rows1, &whole1);
        ck_assert_uint_eq(rows1 - rows0, screen ? (uint64_t)marked : 0);
        ck_assert_uint_le(whole1 - whole0, (rows1 - rows0) / 10);
        for (int i = 0; i < n; i++) {
            const float *p = plain + (size_t)i * V;
            if (only[i])
                ck_assert_msg(amax[i] == krn_argmax(p, V), "pattern %d row %d: %d, exact argmax %d", pattern, i,
                              amax[i], krn_argmax(p, V));
            else
                ck_assert_msg(amax[i] == -7 && !memcmp(lg + (size_t)i * V, p, (size_t)V * sizeof(float)),
                              "pattern %d row %d: the exact logits changed", pattern, i);
        }
    }
    free(plain);
    free(lg);
    mdl_runner_close(&r);
    mdl_model_destroy(m);
}
END_TEST

START_TEST(test_batch_equals_alone)
{
    char dir[512];
    make_model("batch", NULL, 0, 0, 0, dir, sizeof dir);
    mdl_model *m = load(dir, KRN_F32, KRN_F32);
    const int V = m->cfg.vocab_size, bs = 4;
    /* three sequences: a fresh prompt, a continuation of a cached prefix, a single decode token */
    const int plen[3] = {13, 9, 1}, pre[3] = {0, 10, 21};
    int32_t toks[3][40];
    for (int s = 0; s < 3; s++) random_tokens(toks[s], pre[s] + plen[s], V, 100 + s);
    float *alone[3];
    for (int s = 0; s < 3; s++) alone[s] = all_logits(m, toks[s], pre[s] + plen[s], MDL_ATTN_PREFILL, 40, bs);

    mdl_kv_pool *kv;
    ck_assert_int_eq(mdl_kv_pool_create(&m->cfg, m->n_mtp, KRN_F32, bs, 64, &kv), PD_OK);
    int tables[3][16];
    const int *tp[3];
    for (int s = 0; s < 3; s++) {
        ck_assert_int_eq(mdl_kv_alloc(kv, mdl_kv_blocks_for(kv, pre[s] + plen[s]), tables[s]), PD_OK);
        tp[s] = tables[s];
    }
    mdl_ctx *ctx;
    ck_assert_int_eq(mdl_ctx_create(m, 64, 64, &ctx), PD_OK);
    /* fill the prefixes, each in its own batch */
    for (int s = 0; s < 3; s++) {
        if (!pre[s]) continue;
        int st[2] = {0, pre[s]}, zero = 0;
        mdl_batch b = {.n_seqs = 1, .n_tokens = pre[s], .tokens = toks[s], .seq_start = st, .ctx_len = &zero,
                       .block_table = &tp[s], .attn = MDL_ATTN_PREFILL};
        ck_assert_int_eq(mdl_forward(ctx, kv, &b, NULL), PD_OK);
    }
    int32_t flat[40];
    int start[4] = {0}, rows[40], n = 0;
    for (int s = 0; s < 3; s++) {
        for (int i = 0; i < plen[s]; i++) {
            rows[n] = n;
            flat[n++] = toks[s][pre[s] + i];
        }
        start[s + 1] = n;
    }
    float *lg = malloc((size_t)n * V * sizeof(float));
    for (int mode = 0; mode < 2; mode++) {
        mdl_batch b = {.n_seqs = 3, .n_tokens = n, .tokens = flat, .seq_start = start, .ctx_len = pre,
                       .block_table = tp, .logits_rows = rows, .n_logits = n, .attn = (mdl_attn_mode)mode};
        ck_assert_int_eq(mdl_forward(ctx, kv, &b, lg), PD_OK);
        for (int s = 0; s < 3; s++)
            for (int i = 0; i < plen[s]; i++) {
                double e = rel_l2(lg + (size_t)(start[s] + i) * V, alone[s] + (size_t)(pre[s] + i) * V, V);
                ck_assert_msg(e < 1e-5, "mode %d seq %d tok %d: %.3g", mode, s, i, e);
            }
    }
    /* a batch that does not fit the plan is refused, nothing written */
    mdl_batch big = {.n_seqs = 1, .n_tokens = 65, .tokens = flat, .seq_start = start, .ctx_len = pre,
                     .block_table = tp};
    ck_assert_int_eq(mdl_forward(ctx, kv, &big, NULL), PD_ERR_INVALID);
    for (int s = 0; s < 3; s++) {
        mdl_kv_free(kv, mdl_kv_blocks_for(kv, pre[s] + plen[s]), tables[s]);
        free(alone[s]);
    }
    ck_assert_int_eq(kv->n_free, 64);
    free(lg);
    mdl_ctx_destroy(ctx);
    mdl_kv_pool_destroy(kv);
    mdl_model_destroy(m);
}
END_TEST

START_TEST(test_sharded_equals_single_and_fp8)
{
    char one[512], many[512], f8[512];
    make_model("one", NULL, 0, 0, 0, one, sizeof one);
    make_model("many", NULL, 0, 0, 3u << 20, many, sizeof many);
    make_model("fp8", NULL, 0, 1, 0, f8, sizeof f8);
    char idx[600];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", many);
    ck_assert_int_eq(access(idx, F_OK), 0);
    mdl_model *a = load(one, KRN_BF16, KRN_F16), *b = load(many, KRN_BF16, KRN_F16);
    mdl_model *c = load(f8, KRN_BF16, KRN_F16), *c32 = load(f8, KRN_F32, KRN_F32);
    ck_assert_int_eq(c->layers[1].exp_up[0].type, KRN_F8E4M3);
    const int V = a->cfg.vocab_size, n = 20;
    int32_t t[20];
    random_tokens(t, n, V, 9);
    float *la = all_logits(a, t, n, MDL_ATTN_PREFILL, n, 16), *lb = all_logits(b, t, n, MDL_ATTN_PREFILL, n, 16);
    ck_assert_mem_eq(la, lb, (size_t)n * V * sizeof(float));
    /* native FP8 (values + block scales in the matmul) == exact dequantisation to float32 */
    float *lc = all_logits(c, t, n, MDL_ATTN_PREFILL, n, 16), *lc32 = all_logits(c32, t, n, MDL_ATTN_PREFILL, n, 16);
    ck_assert_msg(rel_l2(lc, lc32, n * V) < 2e-2, "fp8 native vs f32 %.3g", rel_l2(lc, lc32, n * V));
    free(la);
    free(lb);
    free(lc);
    free(lc32);
    mdl_model_destroy(a);
    mdl_model_destroy(b);
    mdl_model_destroy(c);
    mdl_model_destroy(c32);
}
END_TEST

START_TEST(test_generate_deterministic)
{
    char a[512], b[512], pa[600], pb[600];
    make_model("det_a", NULL, 0, 0, 0, a, sizeof a);
    make_model("det_b", NULL, 0, 0, 0, b, sizeof b);
    snprintf(pa, sizeof pa, "%s/model.safetensors", a);
    snprintf(pb, sizeof pb, "%s/model.safetensors", b);
    char *x = NULL, *y = NULL;
    size_t nx, ny;
    ck_assert_int_eq(pd_file_read(pa, &x, &nx), PD_OK);
    ck_assert_int_eq(pd_file_read(pb, &y, &ny), PD_OK);
    ck_assert_uint_eq(nx, ny);
    ck_assert(memcmp(x, y, nx) == 0);
    free(x);
    free(y);
}
END_TEST

/* ---- malformed input ------------------------------------------------------------------------------------ */

static void expect_config_error(const char *json, pd_status want, const char *needle)
{
    mdl_config c;
    char err[1024] = "";
    ck_assert_int_eq(mdl_config_parse(json, &c, err, sizeof err), want);
    ck_assert_msg(strstr(err, needle) != NULL, "error '%s' does not name '%s'", err, needle);
}

START_TEST(test_config_errors)
{
    char *base = NULL;
    char path[1024];
    snprintf(path, sizeof path, "%s/v3tiny/config.json", PD_FIXTURES);
    ck_assert_int_eq(pd_file_read(path, &base, NULL), PD_OK);
    mdl_config c;
    char err[1024];
    ck_assert_int_eq(mdl_config_parse(base, &c, err, sizeof err), PD_OK);
    ck_assert_int_eq(c.arch, MDL_ARCH_DEEPSEEK_V3);
    ck_assert_int_eq(c.q_lora_rank, 128);
    struct { const char *from, *to; pd_status st; const char *needle; } cases[] = {
        {"\"DeepseekV3ForCausalLM\"", "\"LlamaForCausalLM\"", PD_ERR_UNSUPPORTED, "architectures"},
        {"\"hidden_size\": 256", "\"hidden_size\": \"256\"", PD_ERR_FORMAT, "hidden_size"},
        {"\"hidden_size\": 256,", "", PD_ERR_FORMAT, "hidden_size"},
        {"\"kv_lora_rank\": 64", "\"kv_lora_rank\": 6.5", PD_ERR_FORMAT, "kv_lora_rank"},
        {"\"qk_rope_head_dim\": 16", "\"qk_rope_head_dim\": 15", PD_ERR_FORMAT, "qk_rope_head_dim"},
        {"\"scoring_func\": \"sigmoid\"", "\"scoring_func\": \"relu\"", PD_ERR_UNSUPPORTED, "scoring_func"},
        {"\"topk_method\": \"noaux_tc\"", "\"topk_method\": \"magic\"", PD_ERR_UNSUPPORTED, "topk_method"},
        {"\"n_group\": 4", "\"n_group\": 3", PD_ERR_FORMAT, "n_group"},
        {"\"topk_group\": 2", "\"topk_group\": 9", PD_ERR_FORMAT, "topk_group"},
        {"\"num_experts_per_tok\": 4", "\"num_experts_per_tok\": 40", PD_ERR_FORMAT, "num_experts_per_tok"},
        {"\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}", PD_ERR_UNSUPPORTED,
         "rope_scaling"},
        {"\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", PD_ERR_UNSUPPORTED, "hidden_act"},
        {"\"vocab_size\": 1024", "\"vocab_size\": -5", PD_ERR_UNSUPPORTED, "vocab_size"},
        {"\"eos_token_id\": 1", "\"eos_token_id\": 5000", PD_ERR_FORMAT, "eos_token_id"},
        {"\"tie_word_embeddings\": false", "\"tie_word_embeddings\": true", PD_ERR_UNSUPPORTED, "tie_word_embeddings"},
        {"{", "[", PD_ERR_FORMAT, "JSON"},
    };
    for (size_t i = 0; i < PD_ARRAY_LEN(cases); i++) {
        const char *at = strstr(base, cases[i].from);
        ck_assert_msg(at != NULL, "fixture lacks '%s'", cases[i].from);
        size_t n = strlen(base) + strlen(cases[i].to) + 1;
        char *j = malloc(n);
        snprintf(j, n, "%.*s%s%s", (int)(at - base), base, cases[i].to, at + strlen(cases[i].from));
        expect_config_error(j, cases[i].st, cases[i].needle);
        free(j);
    }
    expect_config_error("", PD_ERR_FORMAT, "JSON");
    free(base);
}
END_TEST

START_TEST(test_checkpoint_errors)
{
    char dir[512], err[1024];
    make_model("bad", NULL, 0, 0, 0, dir, sizeof dir);
    mdl_load_opts lo = mdl_load_defaults();
    lo.progress = 0;
    mdl_model *m = NULL;
    /* config.json disagreeing with the weights: the error names the tensor and both shapes */
    char cfgp[600];
    snprintf(cfgp, sizeof cfgp, "%s/config.json", dir);
    mdl_config c;
    ck_assert_int_eq(mdl_config_load(dir, &c, err, sizeof err), PD_OK);
    c.intermediate_size += 1;
    char *j = mdl_config_to_json(&c);
    FILE *f = fopen(cfgp, "w");
    fputs(j, f);
    fclose(f);
    free(j);
    ck_assert_int_eq(mdl_model_load(dir, &lo, &m, err, sizeof err), PD_ERR_FORMAT);
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(err, "model.layers.0.mlp.gate_proj.weight") && strstr(err, "385"), "%s", err);
    /* a layer the weights do not have */
    c.intermediate_size -= 1;
    c.num_hidden_layers += 2; /* layer 3 is the MTP layer (a full block); layer 4 exists nowhere */
    c.num_nextn_predict_layers = 0;
    j = mdl_config_to_json(&c);
    f = fopen(cfgp, "w");
    fputs(j, f);
    fclose(f);
    free(j);
    ck_assert_int_eq(mdl_model_load(dir, &lo, &m, err, sizeof err), PD_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err, "missing tensor") != NULL, "%s", err);
    /* no config at all */
    unlink(cfgp);
    ck_assert_int_eq(mdl_model_load(dir, &lo, &m, err, sizeof err), PD_ERR_NOT_FOUND);
    ck_assert_msg(strstr(err, "config.json") != NULL, "%s", err);
    /* bad options */
    lo.kv_type = KRN_F8E4M3;
    ck_assert_int_eq(mdl_model_load(dir, &lo, &m, err, sizeof err), PD_ERR_INVALID);
}
END_TEST

START_TEST(test_param_counts)
{
    mdl_config c;
    mdl_param_counts pc;
    ck_assert_int_eq(mdl_preset_config("v3", &c), PD_OK);
    mdl_config_count(&c, 2, &pc);
    /* DeepSeek-V3: 671B main + 14B MTP = 685B; 37B activated */
    ck_assert_msg(pc.params_total > 684e9 && pc.params_total < 686e9, "%.4g", pc.params_total);
    ck_assert_msg(pc.params_active > 36e9 && pc.params_active < 39e9, "%.4g", pc.params_active);
    ck_assert_uint_eq(pc.kv_bytes_per_token, 62u * 576u * 2u);
    ck_assert_int_eq(mdl_preset_config("v2-lite", &c), PD_OK);
    mdl_config_count(&c, 2, &pc);
    /* DeepSeek-V2-Lite: 15.7B total, 2.4B active */
    ck_assert_msg(pc.params_total > 15.5e9 && pc.params_total < 16e9, "%.4g", pc.params_total);
    ck_assert_msg(pc.params_active > 2.2e9 && pc.params_active < 2.9e9, "%.4g", pc.params_active);
}
END_TEST

int main(void)
{
    snprintf(g_tmp, sizeof g_tmp, "/tmp/pd_model_XXXXXX");
    if (!mkdtemp(g_tmp)) return 1;
    Suite *s = suite_create("model");
    TCase *tg = PD_CHECK_CASE(s, "golden", 600, test_fp8_stays_fp8);
    tcase_add_loop_test(tg, test_golden, 0, PD_ARRAY_LEN(goldens));
    tcase_add_loop_test(tg, test_load_releases_checkpoint_pages, 0, PD_ARRAY_LEN(releases));
    PD_CHECK_CASE(s, "variants", 600, test_variant_v3_default, test_variant_v3_long_context,
                  test_variant_v2_greedy_no_qlora, test_variant_v2_group_limited_yarn, test_batch_equals_alone,
                  test_prefill_chunking_bitwise, test_argmax_rows, test_sharded_equals_single_and_fp8,
                  test_generate_deterministic);
    PD_CHECK_CASE(s, "errors", 0, test_config_errors, test_checkpoint_errors, test_param_counts);
    int failed = pd_check_run(s, 0);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (system(cmd) != 0) return 1;
    return failed ? 1 : 0;
}
