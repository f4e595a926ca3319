/* Engine tests: continuous batching gives each request what it would get alone; prefill on one engine +
 * blocks copied into another engine's reserved blocks (what kvtransfer does) + kv_ready == local, for greedy
 * and seeded sampling; aborts and refusals free everything; logprobs are the model's; a pool too small for
 * every sequence's growth preempts and recomputes without changing any output. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "model/engine_internal.h" /* mdl__engine_test_oom */
#include "model/mdl_engine.h"
#include "model/mdl_generate.h"
#include "model/mdl_presets.h"
#include "model/mdl_runner.h"
#include "pd_check.h"

#define MAXR 16
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t out[MAXR][64];
    float lps[MAXR][64];
    int n_out[MAXR];
    int done[MAXR];
    mdl_finish why[MAXR];
    int prefilled[MAXR];
    int32_t first[MAXR];
    float first_lp[MAXR];
    float hidden[MAXR][128];
    int blocks_events[MAXR];
} sink;

static void on_event(const mdl_event *ev, void *arg)
{
    sink *k = arg;
    int i = (int)ev->id;
    pthread_mutex_lock(&k->mu);
    switch (ev->type) {
    case MDL_EV_TOKEN:
        k->lps[i][k->n_out[i]] = ev->logprob;
        k->out[i][k->n_out[i]++] = ev->token;
        break;
    case MDL_EV_DONE: k->done[i] = 1; k->why[i] = ev->finish; break;
    case MDL_EV_PREFILLED:
        k->prefilled[i] = 1;
        k->first[i] = ev->token;
        k->first_lp[i] = ev->logprob;
        memcpy(k->hidden[i], ev->hidden, sizeof k->hidden[i]);
        break;
    case MDL_EV_BLOCKS: k->blocks_events[i]++; break;
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

static char g_dir[256];
static mdl_model *g_m;

static void setup(void)
{
    if (g_m) return;
    snprintf(g_dir, sizeof g_dir, "/tmp/pd_engine_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
    mdl_config c;
    char err[512];
    ck_assert_int_eq(mdl_preset_config("tiny", &c), PD_OK);
    c.vocab_size = 500;
    mdl_generate_opts o = {.seed = 3};
    ck_assert_int_eq(mdl_generate_checkpoint(g_dir, &c, &o, err, sizeof err), PD_OK);
    mdl_load_opts lo = mdl_load_defaults();
    lo.progress = 0;
    ck_assert_int_eq(mdl_model_load(g_dir, &lo, &g_m, err, sizeof err), PD_OK);
}

static mdl_gen_params greedy(int max_tokens)
{
    mdl_gen_params p = {0};
    p.sampling = krn_sampling_defaults();
    p.sampling.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = 1;
    return p;
}

/* max_tokens at temperature, seeded (the same seed draws the same tokens on any engine) */
static mdl_gen_params seeded(int max_tokens, float temperature, uint64_t seed)
{
    mdl_gen_params p = greedy(max_tokens);
    p.sampling.temperature = temperature;
    p.has_seed = 1;
    p.seed = seed;
    return p;
}

static void prompt_of(int i, int32_t *t, int *n)
{
    *n = 3 + (i * 7) % 40; /* 3 .. 42 tokens: several cross blocks of 8 and the 16-token budget */
    for (int j = 0; j < *n; j++) t[j] = (int32_t)((i * 131 + j * 17) % 500);
}

static mdl_engine *engine(sink *k, int block, int n_blocks, int budget)
{
    mdl_engine_opts o = {.max_num_seqs = 8, .max_num_batched_tokens = budget, .max_model_len = 128,
                         .block_size = block, .n_blocks = n_blocks};
    mdl_engine *e = NULL;
    ck_assert_int_eq(mdl_engine_create(g_m, &o, on_event, k, &e), PD_OK);
    return e;
}

static sink *sink_new(void)
{
    sink *k = calloc(1, sizeof *k);
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
    return k;
}

START_TEST(test_batched_equals_alone)
{
    setup();
    const int N = 12, T = 20;
    sink *k = sink_new();
    mdl_engine *e = engine(k, 8, 256, 16);
    int32_t t[64];
    int n;
    for (int i = 0; i < N; i++) {
        prompt_of(i, t, &n);
        mdl_gen_params p = greedy(T);
        ck_assert_int_eq(mdl_engine_submit(e, (uint64_t)i, NULL, t, n, &p, MDL_REQ_LOCAL), PD_OK);
    }
    for (int i = 0; i < N; i++) wait_for(k, &k->done[i]);
    const int V = g_m->cfg.vocab_size;
    float *lg = malloc((size_t)V * sizeof(float));
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(k->why[i], MDL_FINISH_LENGTH);
        ck_assert_int_eq(k->n_out[i], T);
        prompt_of(i, t, &n);
        mdl_runner r;
        ck_assert_int_eq(mdl_runner_open(&r, g_m, n + T, n, 16), PD_OK);
        ck_assert_int_eq(mdl_runner_feed(&r, t, n, 0, MDL_ATTN_PREFILL, 0, lg, NULL), PD_OK);
        for (int j = 0; j < T; j++) {
            int32_t a = krn_argmax(lg, V);
            ck_assert_msg(a == k->out[i][j], "request %d token %d: %d alone, %d batched", i, j, a, k->out[i][j]);
            float mx = lg[a];
            double s = 0;
            for (int v = 0; v < V; v++) s += exp((double)lg[v] - mx);
            ck_assert_float_eq_tol(k->lps[i][j], -log(s), 1e-3);
            ck_assert_int_eq(mdl_runner_feed(&r, &a, 1, n + j, MDL_ATTN_DECODE, 0, lg, NULL), PD_OK);
        }
        mdl_runner_close(&r);
    }
    free(lg);
    mdl_engine_stats st;
    mdl_engine_get_stats(e, &st);
    ck_assert_int_eq(st.free_blocks, 256);
    ck_assert_int_eq(st.running + st.waiting, 0);
    mdl_engine_destroy(e);
    free(k);
}
END_TEST

static mdl_engine *engine_on(mdl_model *m, sink *k, int block, int n_blocks, int budget)
{
    mdl_engine_opts o = {.max_num_seqs = 8, .max_num_batched_tokens = budget, .max_model_len = 128,
                         .block_size = block, .n_blocks = n_blocks};
    mdl_engine *e = NULL;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_OK);
    return e;
}

/* prefill engine -> copy blocks -> decode engine (dec_blocks in its pool), against one local engine; returns
 * the decode engine's preemptions */
static uint64_t pd_vs_local_on(mdl_model *m, float temperature, int N, int T, int dec_blocks)
{
    const int BS = 8;
    sink *kl = sink_new(), *kp = sink_new(), *kd = sink_new();
    mdl_engine *el = engine_on(m, kl, BS, 256, 16), *ep = engine_on(m, kp, BS, 256, 16);
    mdl_engine *ed = engine_on(m, kd, BS, dec_blocks, 16);
    char la[128], lb[128];
    mdl_engine_layout(ep, la, sizeof la);
    mdl_engine_layout(ed, lb, sizeof lb);
    ck_assert_str_eq(la, lb);
    int32_t t[64];
    int n;
    for (int i = 0; i < N; i++) {
        prompt_of(i, t, &n);
        mdl_gen_params p = seeded(T, temperature, 1000 + (uint64_t)i);
        p.sampling.top_p = 0.9f;
        ck_assert_int_eq(mdl_engine_submit(el, (uint64_t)i, NULL, t, n, &p, MDL_REQ_LOCAL), PD_OK);
        ck_assert_int_eq(mdl_engine_submit(ed, (uint64_t)i, NULL, t, n, &p, MDL_REQ_REMOTE_KV), PD_OK);
        ck_assert_int_eq(mdl_engine_submit(ep, (uint64_t)i, NULL, t, n, &p, MDL_REQ_PREFILL_ONLY), PD_OK);
    }
    mdl_kv_pool *pp = mdl_engine_pool(ep), *pd = mdl_engine_pool(ed);
    for (int i = 0; i < N; i++) {
        wait_for(kp, &kp->prefilled[i]);
        ck_assert_int_ge(kp->blocks_events[i], 1);
        int src[32], dst[32];
        int ns = mdl_engine_blocks(ep, (uint64_t)i, src, 32), nd = mdl_engine_blocks(ed, (uint64_t)i, dst, 32);
        prompt_of(i, t, &n);
        ck_assert_int_eq(ns, mdl_kv_blocks_for(pp, n));
        ck_assert_int_ge(nd, ns);
        for (int b = 0; b < ns; b++)
            memcpy(mdl_kv_row(pd, dst[b], 0, 0), mdl_kv_row(pp, src[b], 0, 0), pp->block_bytes);
        mdl_engine_release(ep, (uint64_t)i);
        ck_assert_int_eq(
            mdl_engine_kv_ready(ed, (uint64_t)i, kp->first[i], kp->first_lp[i], 0, NULL, NULL, kp->hidden[i]), PD_OK);
    }
    for (int i = 0; i < N; i++) {
        wait_for(kl, &kl->done[i]);
        wait_for(kd, &kd->done[i]);
        ck_assert_int_eq(kd->n_out[i], T);
        ck_assert_int_eq(kd->why[i], MDL_FINISH_LENGTH);
        for (int j = 0; j < T; j++)
            ck_assert_msg(kd->out[i][j] == kl->out[i][j], "T=%.1f req %d tok %d: pd %d local %d", temperature, i, j,
                          kd->out[i][j], kl->out[i][j]);
        ck_assert_float_eq_tol(kd->lps[i][0], kl->lps[i][0], 1e-4);
    }
    mdl_engine_stats st;
    mdl_engine_get_stats(ed, &st);
    ck_assert_int_eq(st.free_blocks, dec_blocks);
    uint64_t preempted = st.preemptions;
    mdl_engine_get_stats(ep, &st);
    for (int tries = 0; tries < 200 && st.free_blocks != 256; tries++) { /* release is asynchronous */
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
        mdl_engine_get_stats(ep, &st);
    }
    ck_assert_int_eq(st.free_blocks, 256);
    mdl_engine_destroy(el);
    mdl_engine_destroy(ep);
    mdl_engine_destroy(ed);
    free(kl);
    free(kp);
    free(kd);
    return preempted;
}

static void pd_vs_local(float temperature)
{
    setup();
    pd_vs_local_on(g_m, temperature, 6, 12, 128);
}

START_TEST(test_pd_equals_local_greedy) { pd_vs_local(0.0f); }
END_TEST
START_TEST(test_pd_equals_local_seeded) { pd_vs_local(0.8f); }
END_TEST

/* top_logprobs -1 (a request that asked for no logprobs): the same tokens as with 0, greedy and seeded, with and
 * without speculative drafts; its events carry logprob 0 where the other's carry the real (negative) values. */
START_TEST(test_no_logprobs)
{
    setup();
    const int T = 12;
    for (int spec = 0; spec <= 2; spec += 2) {
        sink *k = sink_new();
        mdl_engine_opts o = {.max_num_seqs = 8, .max_num_batched_tokens = 64, .max_model_len = 128, .block_size = 8,
                             .n_blocks = 256, .num_speculative_tokens = spec};
        mdl_engine *e = NULL;
        ck_assert_int_eq(mdl_engine_create(g_m, &o, on_event, k, &e), PD_OK);
        int32_t t[64];
        int n;
        for (int i = 0; i < 8; i++) { /* pairs 2j (no logprobs) and 2j+1 (logprobs) share a prompt */
            prompt_of(i / 2, t, &n);
            mdl_gen_params p = greedy(T);
            if (i >= 4) {
                p.sampling.temperature = 0.8f;
                p.seed = 1000 + (uint64_t)(i / 2);
                p.has_seed = 1;
            }
            p.top_logprobs = i % 2 ? 0 : -1;
            ck_assert_int_eq(mdl_engine_submit(e, (uint64_t)i, NULL, t, n, &p, MDL_REQ_LOCAL), PD_OK);
        }
        mdl_gen_params bad = greedy(T);
        bad.top_logprobs = -2;
        ck_assert_int_eq(mdl_engine_submit(e, 9, NULL, t, n, &bad, MDL_REQ_LOCAL), PD_ERR_INVALID);
        for (int i = 0; i < 8; i++) wait_for(k, &k->done[i]);
        for (int i = 0; i < 8; i += 2) {
            ck_assert_int_eq(k->n_out[i], T);
            ck_assert_int_eq(k->n_out[i + 1], T);
            for (int j = 0; j < T; j++) {
                ck_assert_msg(k->out[i][j] == k->out[i + 1][j],
                              "k=%d request %d token %d: %d without logprobs, %d with", spec, i, j, k->out[i][j],
                              k->out[i + 1][j]);
                ck_assert(k->lps[i][j] == 0.0f);
                ck_assert(k->lps[i + 1][j] < 0.0f && isfinite(k->lps[i + 1][j]));
            }
        }
        mdl_engine_destroy(e);
        free(k);
    }
}
END_TEST

START_TEST(test_abort_and_refusal)
{
    setup();
    sink *k = sink_new();
    mdl_engine *e = engine(k, 8, 12, 16);
    int32_t t[80];
    for (int j = 0; j < 80; j++) t[j] = j;
    mdl_gen_params p = greedy(40), p16 = greedy(16);
    /* an 80-token prompt takes 10 of the 12 blocks at admission (it may grow to all 12); 24 more do not fit */
    ck_assert_int_eq(mdl_engine_submit(e, 0, NULL, t, 80, &p16, MDL_REQ_REMOTE_KV), PD_OK);
    ck_assert_int_eq(mdl_engine_submit(e, 1, NULL, t, 24, &p, MDL_REQ_LOCAL), PD_ERR_BUSY);
    ck_assert_int_eq(mdl_engine_submit(e, 1, NULL, t, 80, &p, MDL_REQ_LOCAL), PD_ERR_RANGE); /* > the pool alone */
    ck_assert_int_eq(mdl_engine_submit(e, 0, NULL, t, 8, &p, MDL_REQ_LOCAL), PD_ERR_INVALID); /* duplicate id */
    mdl_gen_params big = greedy(200);
    ck_assert_int_eq(mdl_engine_submit(e, 2, NULL, t, 8, &big, MDL_REQ_LOCAL), PD_ERR_RANGE); /* > max_model_len */
    t[3] = 100000;
    ck_assert_int_eq(mdl_engine_submit(e, 3, NULL, t, 8, &p, MDL_REQ_LOCAL), PD_ERR_INVALID);  /* bad token */
    t[3] = 3;
    mdl_engine_abort(e, 0);
    wait_for(k, &k->done[0]);
    ck_assert_int_eq(k->why[0], MDL_FINISH_ABORT);
    /* now there is room; a running request aborted midway frees its blocks too */
    ck_assert_int_eq(mdl_engine_submit(e, 1, NULL, t, 8, &p, MDL_REQ_LOCAL), PD_OK);
    pthread_mutex_lock(&k->mu);
    while (k->n_out[1] < 3) pthread_cond_wait(&k->cv, &k->mu);
    pthread_mutex_unlock(&k->mu);
    mdl_engine_abort(e, 1);
    wait_for(k, &k->done[1]);
    ck_assert(k->why[1] == MDL_FINISH_ABORT || k->why[1] == MDL_FINISH_LENGTH);
    mdl_engine_stats st;
    mdl_engine_get_stats(e, &st);
    ck_assert_int_eq(st.free_blocks, 12);
    mdl_engine_abort(e, 12345); /* unknown: ignored */
    /* eos stops unless ignore_eos; min_tokens holds stop tokens back */
    mdl_gen_params q = greedy(5);
    q.ignore_eos = 0;
    q.n_stop_ids = 0;
    ck_assert_int_eq(mdl_engine_submit(e, 4, NULL, t, 4, &q, MDL_REQ_LOCAL), PD_OK);
    wait_for(k, &k->done[4]);
    int32_t firsttok = k->out[4][0];
    q.stop_ids[0] = firsttok;
    q.n_stop_ids = 1;
    ck_assert_int_eq(mdl_engine_submit(e, 5, NULL, t, 4, &q, MDL_REQ_LOCAL), PD_OK);
    wait_for(k, &k->done[5]);
    ck_assert_int_eq(k->why[5], MDL_FINISH_STOP);
    ck_assert_int_eq(k->n_out[5], 1);
    q.min_tokens = 3;
    ck_assert_int_eq(mdl_engine_submit(e, 6, NULL, t, 4, &q, MDL_REQ_LOCAL), PD_OK);
    wait_for(k, &k->done[6]);
    ck_assert_int_ge(k->n_out[6], 3);
    ck_assert_int_ne(k->out[6][0], firsttok);
    mdl_engine_destroy(e);
    free(k);
}
END_TEST

/* Out of memory on a request path is an error for that request, never an abort: a request whose memory cannot be
 * had is refused with PD_ERR_NOMEM holding nothing, and an event buffer that cannot grow delivers its events early,
 * losing none; the engine serves on with the tokens an unconstrained engine gives. */
START_TEST(test_out_of_memory)
{
    setup();
    const int N = 12, T = 20;
    sink *ref = sink_new(), *k = sink_new();
    mdl_engine *a = engine(ref, 8, 256, 16), *e = engine(k, 8, 256, 16);
    int32_t t[64];
    int n;
    mdl_gen_params p = greedy(T);
    prompt_of(0, t, &n);
    mdl__engine_test_oom(e, 1, 0);
    ck_assert_int_eq(mdl_engine_submit(e, 0, NULL, t, n, &p, MDL_REQ_LOCAL), PD_ERR_NOMEM);
    mdl_engine_stats st;
    mdl_engine_get_stats(e, &st);
    ck_assert_int_eq(st.free_blocks, 256);
    ck_assert_int_eq(st.running + st.waiting, 0);
    mdl__engine_test_oom(e, 0, 1); /* the event buffer cannot grow past one pending event */
    for (int i = 0; i < N; i++) {
        prompt_of(i, t, &n);
        ck_assert_int_eq(mdl_engine_submit(a, (uint64_t)i, NULL, t, n, &p, MDL_REQ_LOCAL), PD_OK);
        ck_assert_int_eq(mdl_engine_submit(e, (uint64_t)i, NULL, t, n, &p, MDL_REQ_LOCAL), PD_OK);
    }
    for (int i = 0; i < N; i++) {
        wait_for(ref, &ref->done[i]);
        wait_for(k, &k->done[i]);
    }
    for (int i = 0; i < N; i++) {
        ck_assert_int_eq(k->why[i], MDL_FINISH_LENGTH);
        ck_assert_int_eq(k->n_out[i], T);
        for (int j = 0; j < T; j++) {
            ck_assert_msg(k->out[i][j] == ref->out[i][j], "request %d token %d: %d, %d unconstrained", i, j,
                          k->out[i][j], ref->out[i][j]);
            ck_assert_float_eq_tol(k->lps[i][j], ref->lps[i][j], 1e-3);
        }
    }
    mdl_engine_get_stats(e, &st);
    ck_assert_int_eq(st.free_blocks, 256);
    ck_assert_int_eq(st.running + st.waiting, 0);
    mdl_engine_destroy(a);
    mdl_engine_destroy(e);
    free(ref);
    free(k);
}
END_TEST

/* Sequences take blocks as they grow. A pool far smaller than what the batch needs at its longest preempts
 * (recompute), and every request still gets exactly the tokens a roomy pool gives it: greedy and seeded, with and
 * without MTP speculation (float32 weights and KV, so the recomputed prefill path rounds like decode did). */
static void run_pool(mdl_model *m, int n_blocks, int spec, float temperature, int out[][64], uint64_t *preempted)
{
    const int N = 8, T = 40;
    sink *k = sink_new();
    mdl_engine_opts o = {.max_num_seqs = 8, .max_num_batched_tokens = 16, .max_model_len = 128, .block_size = 8,
                         .n_blocks = n_blocks, .num_speculative_tokens = spec};
    mdl_engine *e = NULL;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_OK);
    int32_t t[64];
    int n;
    for (int i = 0; i < N; i++) {
        prompt_of(i, t, &n);
        mdl_gen_params p = seeded(T, temperature, 77 + (uint64_t)i);
        /* once the pool has preempted someone, admission answers BUSY until it is recomputed: submit again, as a
         * server's client would after its 503 (the outputs are per request, whatever the order of arrival) */
        pd_status st;
        while ((st = mdl_engine_submit(e, (uint64_t)i, NULL, t, n, &p, MDL_REQ_LOCAL)) == PD_ERR_BUSY) usleep(1000);
        ck_assert_int_eq(st, PD_OK);
    }
    for (int i = 0; i < N; i++) {
        wait_for(k, &k->done[i]);
        ck_assert_int_eq(k->why[i], MDL_FINISH_LENGTH);
        ck_assert_int_eq(k->n_out[i], T);
        memcpy(out[i], k->out[i], sizeof k->out[i]);
    }
    mdl_engine_stats st;
    mdl_engine_get_stats(e, &st);
    ck_assert_int_eq(st.free_blocks, n_blocks);
    *preempted = st.preemptions;
    mdl_engine_destroy(e);
    free(k);
}

START_TEST(test_preemption_keeps_outputs)
{
    setup();
    char err[512];
    mdl_load_opts lo = mdl_load_defaults();
    lo.progress = 0;
    lo.weight_type = KRN_F32;
    lo.kv_type = KRN_F32;
    mdl_model *m = NULL;
    ck_assert_int_eq(mdl_model_load(g_dir, &lo, &m, err, sizeof err), PD_OK);
    static const struct { int spec; float temp; } cases[] = {{0, 0.0f}, {0, 0.8f}, {2, 0.0f}};
    for (int c = 0; c < 3; c++) {
        int roomy[8][64], tight[8][64];
        uint64_t pr_roomy, pr_tight;
        run_pool(m, 256, cases[c].spec, cases[c].temp, roomy, &pr_roomy);
        /* the prompts take 21 blocks of 8; at the end the sequences need 61; the pool has 24 */
        run_pool(m, 24, cases[c].spec, cases[c].temp, tight, &pr_tight);
        ck_assert_int_eq(pr_roomy, 0);
        ck_assert_msg(pr_tight > 0, "case %d: the tight pool preempted nothing", c);
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 40; j++)
                ck_assert_msg(roomy[i][j] == tight[i][j], "case %d (k=%d T=%.1f): req %d tok %d: %d roomy, %d after "
                              "%llu preemptions", c, cases[c].spec, cases[c].temp, i, j, roomy[i][j], tight[i][j],
                              (unsigned long long)pr_tight);
    }
    /* sequences whose KV came from a prefill engine are preempted and recomputed on the decode engine */
    for (int c = 0; c < 2; c++) {
        uint64_t pr = pd_vs_local_on(m, c ? 0.8f : 0.0f, 8, 40, 24);
        ck_assert_msg(pr > 0, "PD case %d: the tight decode pool preempted nothing", c);
    }
    mdl_model_destroy(m);
    /* BF16 weights (f32 KV): the prompt prefill rounds activations to bf16 where the CPU has AVX512-BF16, decode
     * does not. A recomputation prefills the prompt part the same way (the same KV bits) and the generated part
     * exactly, as decode computed it, in separate chunks; greedy outputs stay those of the roomy pool. */
    lo.weight_type = KRN_BF16;
    ck_assert_int_eq(mdl_model_load(g_dir, &lo, &m, err, sizeof err), PD_OK);
    for (int c = 0; c < 2; c++) {
        int roomy[8][64], tight[8][64];
        uint64_t pr_roomy, pr_tight;
        run_pool(m, 256, 2 * c, 0.0f, roomy, &pr_roomy);
        run_pool(m, 24, 2 * c, 0.0f, tight, &pr_tight);
        ck_assert(pr_roomy == 0 && pr_tight > 0);
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 40; j++)
                ck_assert_msg(roomy[i][j] == tight[i][j],
                              "bf16 k=%d: req %d tok %d: %d roomy, %d after %llu preemptions", 2 * c, i, j, roomy[i][j],
                              tight[i][j], (unsigned long long)pr_tight);
    }
    mdl_model_destroy(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("engine");
    PD_CHECK_CASE(s, "engine", 300, test_batched_equals_alone, test_pd_equals_local_greedy, test_pd_equals_local_seeded,
                  test_abort_and_refusal, test_no_logprobs, test_preemption_keeps_outputs, test_out_of_memory);
    int failed = pd_check_run(s, 1);
    mdl_model_destroy(g_m);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0) return 1;
    return failed ? 1 : 0;
}
