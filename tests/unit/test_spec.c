/* Speculative decoding tests: greedy output with MTP drafting (k = 1, 2, 3) equals the output without it, token
 * for token, with stop ids, min_tokens and max_tokens, in LOCAL mode and in PD mode (prefill-only engine, blocks
 * copied, remote-KV engine); on a generated model (drafts mostly rejected) and on the trained demo-v3 model
 * (drafts mostly accepted). Temperature sampling with speculation has the non-speculative distribution
 * (chi-square against the exact distribution), and a deliberately wrong acceptance rule fails the same test. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/mdl_engine.h"
#include "model/mdl_generate.h"
#include "model/mdl_presets.h"
#include "model/mdl_runner.h"
#include "model/mdl_serve.h"
#include "pd_check.h"

#define MAXR 64
#define MAXT 48
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t out[MAXR][MAXT];
    int n_out[MAXR];
    int done[MAXR], n_done;
    mdl_finish why[MAXR];
    int prefilled[MAXR];
    int32_t first[MAXR];
    float first_lp[MAXR];
    float *hidden;  /* [MAXR][hidden] */
    int hidden_size;
    int spec_drafted, spec_accepted;
} sink;

static void on_event(const mdl_event *ev, void *arg)
{
    sink *k = arg;
    int i = (int)(ev->id % MAXR);
    pthread_mutex_lock(&k->mu);
    switch (ev->type) {
    case MDL_EV_TOKEN:
        if (k->n_out[i] < MAXT) k->out[i][k->n_out[i]] = ev->token;
        k->n_out[i]++;
        break;
    case MDL_EV_DONE:
        k->done[i] = 1;
        k->n_done++;
        k->why[i] = ev->finish;
        k->spec_drafted += ev->spec_drafted;
        k->spec_accepted += ev->spec_accepted;
        break;
    case MDL_EV_PREFILLED:
        k->prefilled[i] = 1;
        k->first[i] = ev->token;
        k->first_lp[i] = ev->logprob;
        memcpy(k->hidden + (size_t)i * k->hidden_size, ev->hidden, (size_t)k->hidden_size * sizeof(float));
        break;
    case MDL_EV_BLOCKS: break;
    }
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

static void wait_for(sink *k, int *flag)
{
    pthread_mutex_lock(&k->mu);
    while (!*flag) pthread_cond_wait(&k->cv, &k->mu);
    pthread_mutex_unlock(&k->mu);
}

static sink *sink_new(int hidden_size)
{
    sink *k = calloc(1, sizeof *k);
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
    k->hidden_size = hidden_size;
    k->hidden = calloc((size_t)MAXR * hidden_size, sizeof(float));
    return k;
}

static void sink_free(sink *k)
{
    if (!k) return;
    free(k->hidden);
    free(k);
}

/* ---- models --------------------------------------------------------------------------------------------- */

static char g_gen_dir[256], g_small_dir[256];
static mdl_model *g_gen, *g_small, *g_demo;

static mdl_model *generated(char *dir, int vocab, uint64_t seed)
{
    snprintf(dir, 256, "/tmp/pd_spec_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    mdl_config c;
    char err[512];
    ck_assert_int_eq(mdl_preset_config("tiny", &c), PD_OK);
    c.vocab_size = vocab;
    mdl_generate_opts o = {.seed = seed};
    ck_assert_int_eq(mdl_generate_checkpoint(dir, &c, &o, err, sizeof err), PD_OK);
    mdl_load_opts lo = mdl_load_defaults();
    lo.progress = 0;
    mdl_model *m = NULL;
    ck_assert_int_eq(mdl_model_load(dir, &lo, &m, err, sizeof err), PD_OK);
    return m;
}

static mdl_model *gen_model(void)
{
    if (!g_gen) g_gen = generated(g_gen_dir, 500, 3);
    return g_gen;
}

/* The trained demo model ships beside the repository (../shared/models/demo-v3.tar.xz); it is unpacked into
 * the build directory once. Missing is a failure, not a skip: CI provides it. */
static mdl_model *demo_model(void)
{
    if (g_demo) return g_demo;
    char tarball[1024], dir[1024], cfg[1100], cmd[4096], err[1024];
    snprintf(tarball, sizeof tarball, "%s/../shared/models/demo-v3.tar.xz", PD_SOURCE_DIR);
    snprintf(dir, sizeof dir, "%s/models", PD_BINARY_DIR);
    snprintf(cfg, sizeof cfg, "%s/demo-v3/config.json", dir);
    struct stat sb;
    if (stat(cfg, &sb) != 0) {
        ck_assert_msg(stat(tarball, &sb) == 0,
                      "the trained demo model is missing: expected %s (the shared folder beside the repository)",
                      tarball);
        snprintf(cmd, sizeof cmd, "mkdir -p '%s' && tar xJf '%s' -C '%s'", dir, tarball, dir);
        ck_assert_msg(system(cmd) == 0, "unpacking %s into %s failed", tarball, dir);
    }
    snprintf(dir, sizeof dir, "%s/models/demo-v3", PD_BINARY_DIR);
    mdl_load_opts lo = mdl_load_defaults();
    lo.progress = 0;
    ck_assert_msg(mdl_model_load(dir, &lo, &g_demo, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_int_eq(g_demo->n_mtp, 1);
    return g_demo;
}

/* Drafts come from the MTP layer, or from prompt lookup (n-grams of 1..3 tokens: the short outputs here repeat
 * short phrases) when g_ngram is set. */
static int g_ngram;
static int g_draft_vocab; /* MTP: the pruned draft head's vocabulary (0: whole) */
static int g_draft_int8;  /* MTP: drafts score with an int8 copy of the MTP head (draft_head_int8) */
static int g_full_logits; /* mdl_engine_opts.full_logits: every logit, no lm_head screen for greedy rows */

static mdl_engine *engine(mdl_model *m, sink *k, int spec, int max_seqs)
{
    mdl_engine_opts o = {.max_num_seqs = max_seqs, .max_num_batched_tokens = 64, .max_model_len = 128,
                         .block_size = 8, .n_blocks = 1200, .num_speculative_tokens = spec,
                         .spec_method = g_ngram ? MDL_SPEC_NGRAM : MDL_SPEC_MTP, .ngram_min = 1, .ngram_max = 3,
                         .draft_vocab_size = g_ngram || !spec ? 0 : g_draft_vocab, .full_logits = g_full_logits,
                         .draft_head_int8 = g_ngram ? 0 : g_draft_int8};
    mdl_engine *e = NULL;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_OK);
    return e;
}

/* ---- greedy equality ------------------------------------------------------------------------------------ */

#define NPROMPTS 50
#define GEN 24

static void prompt_of(const mdl_model *m, int i, int32_t *t, int *n)
{
    *n = 3 + (i * 7) % 30;
    t[0] = m->cfg.bos_token_id;
    /* ids below 3000 are the frequent pieces of a real tokenizer; any id is fine for a generated model */
    int span = PD_MIN(m->cfg.vocab_size - 3, 3000);
    for (int j = 1; j < *n; j++) t[j] = (int32_t)(3 + (i * 131 + j * 17 + (i * j) % 7) % span);
}

typedef struct {
    mdl_gen_params p[NPROMPTS];
} plan_params;

static mdl_gen_params greedy(int max_tokens)
{
    mdl_gen_params p = {0};
    p.sampling = krn_sampling_defaults();
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = 1;
    return p;
}

/* Runs the prompts in mode LOCAL on an engine with spec drafts (or via prefill-only + remote-KV engines when pd)
 * and records the outputs in k. */
static void run_all(mdl_model *m, int spec, int pd, const plan_params *pp, sink *k)
{
    int32_t t[64];
    int n;
    if (!pd) {
        mdl_engine *e = engine(m, k, spec, 8);
        for (int i = 0; i < NPROMPTS; i++) {
            prompt_of(m, i, t, &n);
            ck_assert_int_eq(mdl_engine_submit(e, (uint64_t)i, NULL, t, n, &pp->p[i], MDL_REQ_LOCAL), PD_OK);
        }
        for (int i = 0; i < NPROMPTS; i++) wait_for(k, &k->done[i]);
        mdl_engine_stats st;
        mdl_engine_get_stats(e, &st);
        ck_assert_int_eq(st.free_blocks, st.total_blocks);
        if (spec > 0) {
            ck_assert_uint_gt(st.spec_drafted, 0);
            ck_assert_uint_eq(st.spec_drafted, (uint64_t)k->spec_drafted);
            ck_assert_uint_eq(st.spec_accepted, (uint64_t)k->spec_accepted);
        }
        mdl_engine_destroy(e);
        return;
    }
    sink *kp = sink_new(m->cfg.hidden_size);
    mdl_engine *ep = engine(m, kp, 0, 8), *ed = engine(m, k, spec, 8);
    mdl_kv_pool *pool_p = mdl_engine_pool(ep), *pool_d = mdl_engine_pool(ed);
    for (int i = 0; i < NPROMPTS; i++) {
        prompt_of(m, i, t, &n);
        ck_assert_int_eq(mdl_engine_submit(ed, (uint64_t)i, NULL, t, n, &pp->p[i], MDL_REQ_REMOTE_KV), PD_OK);
        ck_assert_int_eq(mdl_engine_submit(ep, (uint64_t)i, NULL, t, n, &pp->p[i], MDL_REQ_PREFILL_ONLY), PD_OK);
    }
    for (int i = 0; i < NPROMPTS; i++) {
        wait_for(kp, &kp->prefilled[i]);
        int src[64], dst[64];
        int ns = mdl_engine_blocks(ep, (uint64_t)i, src, 64), nd = mdl_engine_blocks(ed, (uint64_t)i, dst, 64);
        ck_assert_int_ge(nd, ns);
        for (int b = 0; b < ns; b++)
            memcpy(mdl_kv_row(pool_d, dst[b], 0, 0), mdl_kv_row(pool_p, src[b], 0, 0), pool_p->block_bytes);
        mdl_engine_release(ep, (uint64_t)i);
        ck_assert_int_eq(mdl_engine_kv_ready(ed, (uint64_t)i, kp->first[i], kp->first_lp[i], 0, NULL, NULL,
                                             kp->hidden + (size_t)i * m->cfg.hidden_size),
                         PD_OK);
    }
    for (int i = 0; i < NPROMPTS; i++) wait_for(k, &k->done[i]);
    mdl_engine_destroy(ed);
    mdl_engine_destroy(ep);
    sink_free(kp);
}

/* Reference outputs without speculation, then parameters that exercise every stop condition at positions
 * inside accepted runs: stop ids taken from the reference output, min_tokens holding them back, eos honoured,
 * max_tokens of every residue modulo k+1. */
static void make_params(mdl_model *m, plan_params *pp)
{
    plan_params plain;
    for (int i = 0; i < NPROMPTS; i++) plain.p[i] = greedy(GEN);
    sink *ref = sink_new(m->cfg.hidden_size);
    run_all(m, 0, 0, &plain, ref);
    for (int i = 0; i < NPROMPTS; i++) {
        mdl_gen_params p = greedy(5 + (i * 5) % (GEN - 4));
        p.top_logprobs = i % 3 ? -1 : 0; /* most ask for no logprobs: their greedy rows may take the lm_head screen */
        switch (i % 4) {
        case 0: break; /* max_tokens only */
        case 1:        /* a stop id that occurs in the reference output */
            p.stop_ids[p.n_stop_ids++] = ref->out[i][3 + i % 5];
            p.max_tokens = GEN;
            break;
        case 2: /* the same, held back by min_tokens */
            p.stop_ids[p.n_stop_ids++] = ref->out[i][1];
            p.min_tokens = 4;
            p.max_tokens = GEN;
            break;
        case 3: /* eos honoured, a repetition penalty (drafts must see the same history as the target) */
            p.ignore_eos = 0;
            p.sampling.repetition_penalty = 1.3f;
            break;
        }
        pp->p[i] = p;
    }
    sink_free(ref);
}

static void check_equal(const sink *a, const sink *b, const char *what, int spec)
{
    for (int i = 0; i < NPROMPTS; i++) {
        ck_assert_msg(a->why[i] == b->why[i], "%s k=%d req %d: finish %s vs %s", what, spec, i,
                      mdl_finish_str(a->why[i]), mdl_finish_str(b->why[i]));
        ck_assert_msg(a->n_out[i] == b->n_out[i], "%s k=%d req %d: %d tokens vs %d", what, spec, i, a->n_out[i],
                      b->n_out[i]);
        for (int j = 0; j < a->n_out[i] && j < MAXT; j++)
            ck_assert_msg(a->out[i][j] == b->out[i][j], "%s k=%d req %d token %d: %d without MTP, %d with", what,
                          spec, i, j, a->out[i][j], b->out[i][j]);
    }
}

static void greedy_equal(mdl_model *m, const char *what, int ngram)
{
    g_ngram = ngram;
    plan_params *pp = malloc(sizeof *pp);
    make_params(m, pp);
    /* the reference computes every logit; the runs compared with it find greedy rows' tokens with the lm_head
     * screen where it exists (mdl_engine_opts.full_logits), k = 0 included */
    sink *base = sink_new(m->cfg.hidden_size);
    g_full_logits = 1;
    run_all(m, 0, 0, pp, base);
    g_full_logits = 0;
    int stops = 0;
    for (int i = 0; i < NPROMPTS; i++) stops += base->why[i] == MDL_FINISH_STOP;
    ck_assert_int_ge(stops, NPROMPTS / 4); /* the stop conditions are really exercised */
    uint64_t screened0, whole0, screened1, whole1;
    krn_linear_argmax_counts(&screened0, &whole0);
    sink *k0 = sink_new(m->cfg.hidden_size);
    run_all(m, 0, 0, pp, k0);
    check_equal(base, k0, "screened greedy rows", 0);
    sink_free(k0);
    krn_linear_argmax_counts(&screened1, &whole1);
    if (m->lm_head_norms) ck_assert_uint_gt(screened1, screened0);
    for (int spec = 1; spec <= 3; spec++) {
        for (int pd = 0; pd <= 1; pd++) {
            sink *k = sink_new(m->cfg.hidden_size);
            run_all(m, spec, pd, pp, k);
            check_equal(base, k, pd ? "PD" : "local", spec);
            fprintf(stderr, "%s %s %s k=%d: %d/%d drafts accepted (%.0f%%)\n", what, ngram ? "ngram" : "MTP",
                    pd ? "PD" : "local", spec, k->spec_accepted, k->spec_drafted,
                    100.0 * k->spec_accepted / PD_MAX(1, k->spec_drafted));
            if (ngram) ck_assert_int_gt(k->spec_accepted, 0); /* lookups really matched and were verified */
            if (!pd && !ngram) { /* greedy drafts through the MTP head's screen are the drafts of its full logits */
                sink *f = sink_new(m->cfg.hidden_size);
                g_full_logits = 1;
                run_all(m, spec, 0, pp, f);
                g_full_logits = 0;
                check_equal(base, f, "every logit", spec);
                ck_assert_msg(f->spec_drafted == k->spec_drafted && f->spec_accepted == k->spec_accepted,
                              "k=%d: %d/%d drafts accepted with every logit, %d/%d with the screen", spec,
                              f->spec_accepted, f->spec_drafted, k->spec_accepted, k->spec_drafted);
                sink_free(f);
            }
            sink_free(k);
        }
    }
    sink_free(base);
    free(pp);
    g_ngram = 0;
}

START_TEST(test_greedy_equal_generated) { greedy_equal(gen_model(), "generated", 0); }
END_TEST

START_TEST(test_greedy_equal_demo) { greedy_equal(demo_model(), "demo-v3", 0); }
END_TEST

/* Prompt lookup: the same tokens as without speculation, on the generated and the trained model; and on a model
 * loaded without its MTP layer, which MTP drafting refuses and n-gram drafting does not need. */
START_TEST(test_greedy_equal_ngram) { greedy_equal(gen_model(), "generated", 1); }
END_TEST

START_TEST(test_greedy_equal_ngram_demo) { greedy_equal(demo_model(), "demo-v3", 1); }
END_TEST

/* The pruned MTP draft head (token ids below 32768 only): drafts change, output does not. Bad sizes are refused. */
START_TEST(test_greedy_equal_pruned_draft_demo)
{
    mdl_model *m = demo_model();
    g_draft_vocab = 32768;
    greedy_equal(m, "demo-v3 draft vocab 32768", 0);
    g_draft_vocab = 0;
    sink *k = sink_new(m->cfg.hidden_size);
    mdl_engine_opts o = {.max_num_seqs = 4, .max_num_batched_tokens = 64, .max_model_len = 128, .block_size = 8,
                         .n_blocks = 200, .num_speculative_tokens = 2, .draft_vocab_size = MDL_MIN_DRAFT_VOCAB - 1};
    mdl_engine *e = NULL;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_ERR_INVALID);
    o.draft_vocab_size = m->cfg.vocab_size + 1;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_ERR_INVALID);
    o.draft_vocab_size = m->cfg.vocab_size;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_OK);
    mdl_engine_destroy(e);
    sink_free(k);
}
END_TEST

/* The int8 draft head (draft_head_dtype "int8"): drafts may change at a near tie, the output does not (k = 1..3,
 * local and PD); and the drafts stay about as good as the checkpoint head's (a broken copy would still be lossless,
 * but its drafts would be rejected), alone and with the pruned vocabulary. */
START_TEST(test_greedy_equal_int8_draft_demo)
{
    mdl_model *m = demo_model();
    g_draft_int8 = 1;
    greedy_equal(m, "demo-v3 int8 draft head", 0);
    g_draft_int8 = 0;
    plan_params *pp = malloc(sizeof *pp);
    make_params(m, pp);
    for (int pruned = 0; pruned <= 1; pruned++) {
        g_draft_vocab = pruned ? 32768 : 0;
        sink *a = sink_new(m->cfg.hidden_size), *b = sink_new(m->cfg.hidden_size);
        run_all(m, 2, 0, pp, a);
        g_draft_int8 = 1;
        run_all(m, 2, 0, pp, b);
        g_draft_int8 = 0;
        check_equal(a, b, "int8 draft head", 2);
        fprintf(
            stderr, "demo-v3 k=2%s: %d/%d drafts accepted with the checkpoint's MTP head, %d/%d with its int8 copy\n",
            pruned ? " draft vocab 32768" : "", a->spec_accepted, a->spec_drafted, b->spec_accepted, b->spec_drafted);
        ck_assert_int_gt(a->spec_accepted, 0);
        ck_assert_msg(b->spec_accepted * 10 >= a->spec_accepted * 9, "int8 draft head: %d accepted against %d",
                      b->spec_accepted, a->spec_accepted);
        sink_free(a);
        sink_free(b);
    }
    g_draft_vocab = 0;
    free(pp);
}
END_TEST

START_TEST(test_ngram_without_mtp_layer)
{
    gen_model();
    mdl_load_opts lo = mdl_load_defaults();
    lo.progress = 0;
    lo.no_mtp = 1;
    mdl_model *m = NULL;
    char err[512];
    ck_assert_int_eq(mdl_model_load(g_gen_dir, &lo, &m, err, sizeof err), PD_OK);
    ck_assert_int_eq(m->n_mtp, 0);
    sink *k = sink_new(m->cfg.hidden_size);
    mdl_engine_opts o = {.max_num_seqs = 4, .max_num_batched_tokens = 64, .max_model_len = 128, .block_size = 8,
                         .n_blocks = 200, .num_speculative_tokens = 2};
    mdl_engine *e = NULL;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_ERR_INVALID); /* MTP drafting needs the layer */
    o.spec_method = MDL_SPEC_NGRAM;
    o.ngram_max = 2;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_OK);
    mdl_gen_params p = greedy(GEN);
    int32_t t[64];
    int n;
    for (int i = 0; i < 8; i++) {
        prompt_of(m, i, t, &n);
        ck_assert_int_eq(mdl_engine_submit(e, (uint64_t)i, NULL, t, n, &p, MDL_REQ_LOCAL), PD_OK);
    }
    for (int i = 0; i < 8; i++) wait_for(k, &k->done[i]);
    mdl_engine_stats st;
    mdl_engine_get_stats(e, &st);
    mdl_engine_destroy(e);
    for (int i = 0; i < 8; i++) ck_assert_int_eq(k->n_out[i], GEN);
    ck_assert_uint_gt(st.spec_drafted, 0);
    ck_assert_int_eq(st.free_blocks, st.total_blocks);
    /* bad n-gram sizes are refused */
    o.ngram_min = 3;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_ERR_INVALID);
    o.ngram_min = 0;
    o.ngram_max = MDL_MAX_NGRAM + 1;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_ERR_INVALID);
    sink_free(k);
    mdl_model_destroy(m);
}
END_TEST

/* The proposer itself: longest n first, latest match, periodic continuation past the end, no match. */
START_TEST(test_ngram_propose)
{
    int32_t out[8];
    /* "5 6 7 8 | 1 2 3 9 9 | 1 2 3": the 3-gram 1 2 3 occurred before, followed by 9 9 1 2 ... */
    const int32_t a[] = {5, 6, 7, 8, 1, 2, 3, 9, 9, 1, 2, 3};
    ck_assert_int_eq(mdl__ngram_propose(a, 12, 1, 3, 4, out), 4);
    ck_assert_int_eq(out[0], 9);
    ck_assert_int_eq(out[1], 9);
    ck_assert_int_eq(out[2], 1);
    ck_assert_int_eq(out[3], 2);
    /* the latest of two matches wins: "4 7 | 4 8 | 4" -> 8 */
    const int32_t b[] = {4, 7, 4, 8, 4};
    ck_assert_int_eq(mdl__ngram_propose(b, 5, 1, 1, 1, out), 1);
    ck_assert_int_eq(out[0], 8);
    /* a longer match beats a later shorter one: "1 2 3 | 2 3 | x 2 3" with n = 3 .. 2 -> 3-gram "x 2 3" is absent,
     * 2-gram "2 3" latest at index 3 -> what follows it */
    const int32_t c[] = {1, 2, 3, 2, 3, 6, 1, 2, 3};
    ck_assert_int_eq(mdl__ngram_propose(c, 9, 2, 3, 2, out), 2);
    ck_assert_int_eq(out[0], 2); /* 3-gram "1 2 3" at 0 -> 2 3 */
    ck_assert_int_eq(out[1], 3);
    /* a run continues periodically: "7 7 7" -> 7 7 7 7; period 2: "3 4 3 4 3" -> 4 3 4 3 */
    const int32_t d[] = {7, 7, 7};
    ck_assert_int_eq(mdl__ngram_propose(d, 3, 2, 2, 4, out), 4);
    for (int j = 0; j < 4; j++) ck_assert_int_eq(out[j], 7);
    const int32_t e[] = {3, 4, 3, 4, 3};
    ck_assert_int_eq(mdl__ngram_propose(e, 5, 2, 3, 4, out), 4);
    ck_assert_int_eq(out[0], 4);
    ck_assert_int_eq(out[1], 3);
    ck_assert_int_eq(out[2], 4);
    ck_assert_int_eq(out[3], 3);
    /* no match, and too short for the smallest n */
    const int32_t f[] = {1, 2, 3, 4};
    ck_assert_int_eq(mdl__ngram_propose(f, 4, 1, 3, 3, out), 0);
    ck_assert_int_eq(mdl__ngram_propose(f, 1, 1, 3, 3, out), 0);
}
END_TEST

/* The known-drafts hook replaying the reference continuation: every draft is accepted, output unchanged. */
typedef struct {
    const sink *ref;
    int n_prompt[NPROMPTS];
} known_arg;

static int known_cb(uint64_t id, void *user, const int32_t *tokens, int n_tokens, int32_t *drafts, int k, void *arg)
{
    (void)user;
    (void)tokens;
    const known_arg *ka = arg;
    int g = n_tokens - ka->n_prompt[id], n = 0;
    for (; n < k && g + n < ka->ref->n_out[id]; n++) drafts[n] = ka->ref->out[id][g + n];
    return n;
}

START_TEST(test_known_drafts_all_accepted)
{
    mdl_model *m = gen_model();
    plan_params pp;
    for (int i = 0; i < NPROMPTS; i++) pp.p[i] = greedy(GEN);
    sink *ref = sink_new(m->cfg.hidden_size), *k = sink_new(m->cfg.hidden_size);
    run_all(m, 0, 0, &pp, ref);
    known_arg ka = {.ref = ref};
    int32_t t[64];
    for (int i = 0; i < NPROMPTS; i++) prompt_of(m, i, t, &ka.n_prompt[i]);
    mdl_engine *e = engine(m, k, 3, 8);
    mdl_engine_set_draft_hook(e, known_cb, &ka);
    for (int i = 0; i < NPROMPTS; i++) {
        int n;
        prompt_of(m, i, t, &n);
        ck_assert_int_eq(mdl_engine_submit(e, (uint64_t)i, NULL, t, n, &pp.p[i], MDL_REQ_LOCAL), PD_OK);
    }
    for (int i = 0; i < NPROMPTS; i++) wait_for(k, &k->done[i]);
    mdl_engine_stats st;
    mdl_engine_get_stats(e, &st);
    mdl_engine_destroy(e);
    check_equal(ref, k, "known drafts", 3);
    ck_assert_uint_eq(st.spec_accepted, st.spec_drafted);
    ck_assert_uint_eq(st.spec_accepted_at[0], st.spec_seq_steps);
    /* 23 decode tokens per request at up to 4 per step: 6 steps each (the last one clamped to 3 tokens) */
    ck_assert_double_eq_tol(st.spec_mean_accepted_len, 23.0 / 6.0, 1e-9);
    ck_assert_uint_gt(st.n_graph_sizes, 0);
    uint64_t replayed = 0;
    for (int i = 0; i < st.n_graph_sizes; i++) replayed += st.graph_steps[i];
    ck_assert_uint_eq(replayed + st.graph_eager_steps, st.decode_steps);
    ck_assert_uint_eq(st.graph_eager_steps, 0); /* max_num_seqs 8 is a captured size */
    sink_free(ref);
    sink_free(k);
}
END_TEST

/* Captured sizes off, or a list that leaves large batches to the general path: same tokens. */
START_TEST(test_graph_sizes_fallback)
{
    mdl_model *m = gen_model();
    plan_params pp;
    for (int i = 0; i < NPROMPTS; i++) pp.p[i] = greedy(12);
    sink *a = sink_new(m->cfg.hidden_size), *b = sink_new(m->cfg.hidden_size);
    run_all(m, 2, 0, &pp, a);
    mdl_engine_opts o = {.max_num_seqs = 8, .max_num_batched_tokens = 64, .max_model_len = 128, .block_size = 8,
                         .n_blocks = 1200, .num_speculative_tokens = 2, .graph_batch_sizes = {1, 3},
                         .n_graph_batch_sizes = 2};
    mdl_engine *e = NULL;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, b, &e), PD_OK);
    int32_t t[64];
    int n;
    for (int i = 0; i < NPROMPTS; i++) {
        prompt_of(m, i, t, &n);
        ck_assert_int_eq(mdl_engine_submit(e, (uint64_t)i, NULL, t, n, &pp.p[i], MDL_REQ_LOCAL), PD_OK);
    }
    for (int i = 0; i < NPROMPTS; i++) wait_for(b, &b->done[i]);
    mdl_engine_stats st;
    mdl_engine_get_stats(e, &st);
    mdl_engine_destroy(e);
    check_equal(a, b, "sizes {1,3}", 2);
    ck_assert_int_eq(st.n_graph_sizes, 2);
    ck_assert_uint_gt(st.graph_eager_steps, 0);
    ck_assert_uint_gt(st.graph_steps[0] + st.graph_steps[1], 0);
    /* bad lists are refused */
    o.graph_batch_sizes[1] = 1;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, b, &e), PD_ERR_INVALID);
    o.graph_batch_sizes[1] = 9;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, b, &e), PD_ERR_INVALID);
    o.n_graph_batch_sizes = 0;
    o.num_speculative_tokens = 5;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, b, &e), PD_ERR_INVALID);
    sink_free(a);
    sink_free(b);
}
END_TEST

/* ---- the distribution ------------------------------------------------------------------------------------ */

#define SV 8        /* vocabulary of the small model */
#define NSAMP 6000  /* requests per arm */

/* Exact distribution of (t1, t2) — the 2nd and 3rd generated tokens — marginalised over t0, at temperature T,
 * from the model run alone. */
static void exact_pair_dist(mdl_model *m, const int32_t *prompt, int n, float T, double *out)
{
    const int V = SV;
    float lg[SV], l1[SV], l2[SV];
    double p0[SV], p1[SV];
    mdl_runner r;
    memset(out, 0, sizeof(double) * V * V);
    for (int t0 = 0; t0 < V; t0++)
        for (int t1 = 0; t1 < V; t1++) {
            int32_t seq[64];
            memcpy(seq, prompt, (size_t)n * sizeof *seq);
            seq[n] = t0;
            seq[n + 1] = t1;
            ck_assert_int_eq(mdl_runner_open(&r, m, n + 4, n + 2, 8), PD_OK);
            float all[(64 + 2) * SV];
            ck_assert_int_eq(mdl_runner_feed(&r, seq, n + 2, 0, MDL_ATTN_PREFILL, 1, all, NULL), PD_OK);
            mdl_runner_close(&r);
            memcpy(lg, all + (size_t)(n - 1) * V, sizeof lg);
            memcpy(l1, all + (size_t)n * V, sizeof l1);
            memcpy(l2, all + (size_t)(n + 1) * V, sizeof l2);
            double s0 = 0, s1 = 0, s2 = 0, p2[SV];
            for (int v = 0; v < V; v++) {
                p0[v] = exp(lg[v] / T);
                p1[v] = exp(l1[v] / T);
                p2[v] = exp(l2[v] / T);
                s0 += p0[v];
                s1 += p1[v];
                s2 += p2[v];
            }
            for (int t2 = 0; t2 < V; t2++) out[t1 * V + t2] += p0[t0] / s0 * p1[t1] / s1 * p2[t2] / s2;
        }
}

/* Samples NSAMP requests of 4 tokens (distinct seeds) and returns the chi-square statistic of the (t1, t2)
 * counts against expected; *df receives the degrees of freedom (cells with expected < 5 pooled). */
static double chi_square_arm(mdl_model *m, const int32_t *prompt, int n, float T, int spec, int ngram, int accept_all,
                             const double *expected, int *df, double *accept_rate)
{
    const int V = SV;
    long counts[SV * SV] = {0};
    sink *k = sink_new(m->cfg.hidden_size);
    mdl_engine_opts o = {.max_num_seqs = 32, .max_num_batched_tokens = 256, .max_model_len = 64, .block_size = 8,
                         .n_blocks = 2000, .num_speculative_tokens = spec,
                         .spec_method = ngram ? MDL_SPEC_NGRAM : MDL_SPEC_MTP, .ngram_min = 1, .ngram_max = 2,
                         .draft_head_int8 = ngram ? 0 : g_draft_int8};
    mdl_engine *e = NULL;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_OK);
    if (accept_all) mdl__engine_test_accept_all(e, 1);
    for (int base = 0; base < NSAMP; base += MAXR) {
        int nb = PD_MIN(MAXR, NSAMP - base);
        pthread_mutex_lock(&k->mu);
        memset(k->n_out, 0, sizeof k->n_out);
        memset(k->done, 0, sizeof k->done);
        pthread_mutex_unlock(&k->mu);
        for (int i = 0; i < nb; i++) {
            mdl_gen_params p = greedy(4);
            p.sampling.temperature = T;
            p.has_seed = 1;
            p.seed = 0x5eed0000ull + (uint64_t)(base + i);
            ck_assert_int_eq(mdl_engine_submit(e, (uint64_t)(base + i), NULL, prompt, n, &p, MDL_REQ_LOCAL), PD_OK);
        }
        for (int i = 0; i < nb; i++) {
            int slot = (base + i) % MAXR;
            wait_for(k, &k->done[slot]);
            ck_assert_int_eq(k->n_out[slot], 4);
            counts[k->out[slot][1] * V + k->out[slot][2]]++;
        }
    }
    mdl_engine_stats st;
    mdl_engine_get_stats(e, &st);
    *accept_rate = st.spec_drafted ? (double)st.spec_accepted / st.spec_drafted : 0;
    mdl_engine_destroy(e);
    sink_free(k);
    double chi = 0, pool_e = 0;
    long pool_o = 0;
    int cells = 0;
    for (int c = 0; c < V * V; c++) {
        double ex = expected[c] * NSAMP;
        if (ex < 5) {
            pool_e += ex;
            pool_o += counts[c];
            continue;
        }
        chi += (counts[c] - ex) * (counts[c] - ex) / ex;
        cells++;
    }
    if (pool_e > 0) {
        chi += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
        cells++;
    }
    *df = cells - 1;
    return chi;
}

START_TEST(test_distribution_chi_square)
{
    if (!g_small) g_small = generated(g_small_dir, SV, 11);
    mdl_model *m = g_small;
    const int32_t prompt[5] = {0, 3, 5, 2, 7};
    const float T = 0.7f; /* sharper than 1: draft and target distributions differ visibly */
    double expected[SV * SV];
    exact_pair_dist(m, prompt, 5, T, expected);
    int df;
    double acc;
    /* p < 1e-4 bound for chi-square with df degrees of freedom (Wilson-Hilferty) */
#define CHI_LIMIT(df) ((df) * pow(1 - 2.0 / (9 * (df)) + 3.719 * sqrt(2.0 / (9 * (df))), 3))
    double c0 = chi_square_arm(m, prompt, 5, T, 0, 0, 0, expected, &df, &acc);
    fprintf(stderr, "chi-square k=0: %.1f (df %d, limit %.1f)\n", c0, df, CHI_LIMIT(df));
    ck_assert_msg(c0 < CHI_LIMIT(df), "no speculation: chi-square %.1f over %.1f (df %d)", c0, CHI_LIMIT(df), df);
    /* MTP drafts k = 1, 2, then prompt-lookup drafts k = 2 (one-hot q: accepted with probability p(x)), then MTP
     * k = 2 drafting with the int8 copy of the MTP head (q is that copy's distribution) */
    for (int arm = 1; arm <= 4; arm++) {
        const int spec = arm == 1 ? 1 : 2, ngram = arm == 3;
        g_draft_int8 = arm == 4;
        double c = chi_square_arm(m, prompt, 5, T, spec, ngram, 0, expected, &df, &acc);
        g_draft_int8 = 0;
        fprintf(stderr, "chi-square k=%d %s: %.1f (df %d, limit %.1f), %.0f%% of drafts accepted\n", spec,
                ngram ? "ngram" : arm == 4 ? "MTP int8 head" : "MTP", c, df, CHI_LIMIT(df), 100 * acc);
        ck_assert_msg(c < CHI_LIMIT(df), "k=%d: chi-square %.1f over %.1f (df %d)", spec, c, CHI_LIMIT(df), df);
        ck_assert(acc > 0.05 && acc < 0.95); /* both accept and reject paths ran */
    }
    /* the negative check: accepting every draft gives the draft distribution, and the test sees it */
    double cw = chi_square_arm(m, prompt, 5, T, 1, 0, 1, expected, &df, &acc);
    fprintf(stderr, "chi-square k=1 accept-all: %.1f (df %d, limit %.1f)\n", cw, df, CHI_LIMIT(df));
    ck_assert_msg(cw > CHI_LIMIT(df), "a wrong acceptance rule passed: chi-square %.1f (df %d)", cw, df);
}
END_TEST

/* Same seed, same tokens: speculation draws from the request's generator only, in a fixed order; and PD == local
 * with sampling. */
START_TEST(test_seeded_reproducible)
{
    mdl_model *m = gen_model();
    plan_params pp;
    for (int i = 0; i < NPROMPTS; i++) {
        pp.p[i] = greedy(GEN);
        pp.p[i].sampling.temperature = 0.8f;
        pp.p[i].sampling.top_p = 0.9f;
        pp.p[i].sampling.top_k = i % 3 ? 0 : 20;
        pp.p[i].sampling.min_p = i % 5 ? 0.0f : 0.05f;
        pp.p[i].has_seed = 1;
        pp.p[i].seed = 77 + (uint64_t)i;
    }
    sink *a = sink_new(m->cfg.hidden_size), *b = sink_new(m->cfg.hidden_size), *c = sink_new(m->cfg.hidden_size);
    run_all(m, 2, 0, &pp, a);
    run_all(m, 2, 0, &pp, b);
    run_all(m, 2, 1, &pp, c);
    check_equal(a, b, "seeded rerun", 2);
    check_equal(a, c, "seeded PD", 2);
    sink_free(a);
    sink_free(b);
    sink_free(c);
}
END_TEST

/* The shared server options: --speculative-config, --graph-batch-sizes and --no-prefill-bf16 reach the engine
 * options. */
START_TEST(test_serve_options)
{
    gen_model();
    mdl_serve_opts so;
    pd_opt table[MDL_SERVE_NOPTS];
    char err[512];
    mdl_serve_defaults(&so);
    mdl_serve_options(&so, table);
    char *argv[] = {"x", "--model", g_gen_dir, "--max-num-seqs", "16", "--speculative-config",
                    "{\"method\":\"mtp\",\"num_speculative_tokens\":3}", "--graph-batch-sizes", "1,2,4,8"};
    ck_assert_int_eq(pd_opts_parse(table, MDL_SERVE_NOPTS, 9, argv, "", err, sizeof err), PD_OK);
    mdl_model *m = NULL;
    mdl_engine_opts eo;
    ck_assert_msg(mdl_serve_load(&so, &m, &eo, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_int_eq(eo.num_speculative_tokens, 3);
    ck_assert_int_eq(eo.n_graph_batch_sizes, 4);
    ck_assert_int_eq(eo.graph_batch_sizes[3], 8);
    ck_assert_int_eq(eo.exact_prefill, 0); /* prompt prefill with bf16 activations by default */
    mdl_model_destroy(m);
    /* prompt lookup, vLLM's keys; the missing size takes the given one */
    free(so.speculative_config);
    so.speculative_config = strdup("{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"prompt_lookup_max\":4}");
    ck_assert_msg(mdl_serve_load(&so, &m, &eo, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_int_eq(eo.num_speculative_tokens, 2);
    ck_assert_int_eq(eo.spec_method, MDL_SPEC_NGRAM);
    ck_assert_int_eq(eo.ngram_max, 4);
    ck_assert_int_eq(eo.ngram_min, 0);
    mdl_model_destroy(m);
    free(so.speculative_config);
    so.speculative_config = strdup("{\"method\":\"mtp\",\"num_speculative_tokens\":1,\"draft_vocab_size\":400}");
    ck_assert_msg(mdl_serve_load(&so, &m, &eo, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_int_eq(eo.draft_vocab_size, 400);
    ck_assert_int_eq(eo.draft_head_int8, 0);
    mdl_model_destroy(m);
    free(so.speculative_config);
    so.speculative_config = strdup("{\"method\":\"mtp\",\"num_speculative_tokens\":2,\"draft_head_dtype\":\"int8\"}");
    ck_assert_msg(mdl_serve_load(&so, &m, &eo, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_int_eq(eo.draft_head_int8, 1);
    mdl_model_destroy(m);
    const char *bad_spec[] = {"{\"method\":\"medusa\",\"num_speculative_tokens\":3}",
                              "{\"method\":\"mtp\",\"num_speculative_tokens\":5}", "mtp",
                              "{\"method\":\"mtp\",\"num_speculative_tokens\":2,\"prompt_lookup_max\":3}",
                              "{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"prompt_lookup_max\":0}",
                              "{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"prompt_lookup_min\":4,"
                              "\"prompt_lookup_max\":3}",
                              "{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"prompt_lookup_max\":\"4\"}",
                              "{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"draft_vocab_size\":100}",
                              "{\"method\":\"mtp\",\"num_speculative_tokens\":2,\"draft_vocab_size\":3}",
                              "{\"method\":\"mtp\",\"num_speculative_tokens\":2,\"draft_vocab_size\":501}",
                              "{\"method\":\"mtp\",\"num_speculative_tokens\":2,\"draft_head_dtype\":\"int4\"}",
                              "{\"method\":\"mtp\",\"num_speculative_tokens\":2,\"draft_head_dtype\":8}",
                              "{\"method\":\"ngram\",\"num_speculative_tokens\":2,\"draft_head_dtype\":\"int8\"}"};
    for (size_t i = 0; i < PD_ARRAY_LEN(bad_spec); i++) {
        free(so.speculative_config);
        so.speculative_config = strdup(bad_spec[i]);
        ck_assert_int_eq(mdl_serve_load(&so, &m, &eo, err, sizeof err), PD_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(err, "--speculative-config"));
    }
    free(so.speculative_config);
    so.speculative_config = NULL;
    const char *bad_sizes[] = {"1,2,2", "4,2", "1,32", "1,x"};
    for (size_t i = 0; i < PD_ARRAY_LEN(bad_sizes); i++) {
        free(so.graph_batch_sizes);
        so.graph_batch_sizes = strdup(bad_sizes[i]);
        ck_assert_int_eq(mdl_serve_load(&so, &m, &eo, err, sizeof err), PD_ERR_INVALID);
        ck_assert_ptr_nonnull(strstr(err, "--graph-batch-sizes"));
    }
    free(so.graph_batch_sizes);
    so.graph_batch_sizes = strdup("none");
    ck_assert_int_eq(mdl_serve_load(&so, &m, &eo, err, sizeof err), PD_OK);
    ck_assert_int_eq(eo.n_graph_batch_sizes, -1);
    ck_assert_int_eq(eo.num_speculative_tokens, 0);
    mdl_model_destroy(m);
    char *argv2[] = {"x", "--no-prefill-bf16"};
    ck_assert_int_eq(pd_opts_parse(table, MDL_SERVE_NOPTS, 2, argv2, "", err, sizeof err), PD_OK);
    ck_assert_int_eq(mdl_serve_load(&so, &m, &eo, err, sizeof err), PD_OK);
    ck_assert_int_eq(eo.exact_prefill, 1);
    mdl_model_destroy(m);
    pd_opts_free(table, MDL_SERVE_NOPTS);
}
END_TEST

int main(void)
{
    /* cases (CK_RUN_CASE=<name> runs one): options, greedy, ngram, sampling, demo */
    Suite *s = suite_create("spec");
    struct {
        const char *name;
        const TTest *tests[4];
    } cases[] = {
        {"options", {test_serve_options}},
        {"greedy", {test_greedy_equal_generated, test_known_drafts_all_accepted, test_graph_sizes_fallback}},
        {"ngram", {test_ngram_propose, test_greedy_equal_ngram, test_ngram_without_mtp_layer}},
        {"sampling", {test_seeded_reproducible, test_distribution_chi_square}},
        {"demo", {test_greedy_equal_demo, test_greedy_equal_ngram_demo, test_greedy_equal_pruned_draft_demo,
                  test_greedy_equal_int8_draft_demo}},
    };
    for (size_t c = 0; c < PD_ARRAY_LEN(cases); c++) {
        size_t n = 0;
        while (n < 4 && cases[c].tests[n]) n++;
        pd_check_case(s, cases[c].name, 1200, cases[c].tests, n);
    }
    int failed = pd_check_run(s, 1);
    mdl_model_destroy(g_gen);
    mdl_model_destroy(g_small);
    mdl_model_destroy(g_demo);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", g_gen_dir[0] ? g_gen_dir : "", g_small_dir[0] ? g_small_dir : "");
    if ((g_gen_dir[0] || g_small_dir[0]) && system(cmd) != 0) return 1;
    return failed ? 1 : 0;
}
