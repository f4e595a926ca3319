/* A replayed decode step allocates nothing (issue 7, "captured batch sizes"): every buffer a step on a captured
 * size uses was made when the engine was created. Counted with jemalloc's per-thread allocation counters
 * (`thread.allocatedp`) on the engine thread and on every kernel-pool worker, read from the event callback, which
 * runs on the engine thread between steps. Plain decode (k = 0), MTP drafting (k = 2, also with the int8 draft head)
 * and prompt lookup, greedy and seeded sampling, one sequence and three (padded to a plan of 4). The counters cover
 * malloc, calloc, realloc and the aligned forms, including allocations glibc makes inside its own functions
 * (jemalloc replaces malloc for the whole process). Not in the sanitizer build: there the sanitizer's allocator,
 * not jemalloc, serves malloc. */
#include <check.h>
#include <jemalloc/jemalloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/krn.h"
#include "model/mdl_engine.h"
#include "model/mdl_generate.h"
#include "model/mdl_presets.h"
#include "model/mdl_runner.h"
#include "pd_check.h"

/* ---- every thread's counter ------------------------------------------------------------------------------ */

#define MAXTHR 64
static uint64_t *g_ctr[MAXTHR];  /* thread.allocatedp of each kernel-pool thread (the caller's included) */
static pthread_t g_ctr_tid[MAXTHR];
static int g_nctr, g_want;
static pthread_mutex_t g_ctr_mu = PTHREAD_MUTEX_INITIALIZER;

/* The calling thread's cumulative allocated-bytes counter (NULL if jemalloc will not say). No Check asserts here:
 * pool workers and the engine thread call it too. */
static uint64_t *my_counter(void)
{
    uint64_t *p = NULL;
    size_t sz = sizeof p;
    return mallctl("thread.allocatedp", &p, &sz, NULL, 0) == 0 ? p : NULL;
}

/* Each piece records the pointer of the thread that runs it, then waits until every pool thread has one: a thread
 * holding a piece cannot take another, so the pool's n pieces land on its n threads. */
static void collect_task(void *ctx, int ith, int nth)
{
    (void)ctx, (void)ith, (void)nth;
    uint64_t *p = my_counter();
    const int ok = p != NULL;
    pthread_mutex_lock(&g_ctr_mu);
    int seen = 0;
    for (int i = 0; i < g_nctr; i++) seen |= pthread_equal(g_ctr_tid[i], pthread_self());
    if (ok && !seen && g_nctr < MAXTHR) {
        g_ctr_tid[g_nctr] = pthread_self();
        g_ctr[g_nctr++] = p;
    }
    pthread_mutex_unlock(&g_ctr_mu);
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        pthread_mutex_lock(&g_ctr_mu);
        int n = g_nctr;
        pthread_mutex_unlock(&g_ctr_mu);
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (n >= g_want || (double)(t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) * 1e-9 > 10.0) break;
        sched_yield();
    }
}

/* The pool's workers' counters; the engine thread adds its own on its first event. */
static void collect_workers(void)
{
    g_want = krn_threads_get();
    g_nctr = 0;
    krn_parallel(collect_task, NULL, g_want);
    ck_assert_msg(g_nctr == g_want, "counters of %d of the pool's %d threads", g_nctr, g_want);
}

/* ---- a sink that allocates nothing ------------------------------------------------------------------------ */

#define NREQ 3
#define GEN 40
#define MAXEV 1024
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t *engine_ctr;   /* the engine thread's counter */
    int n_tok[NREQ], done[NREQ], n_done;
    /* per TOKEN event: all counters summed, and how many requests had reached their 2nd token by then */
    uint64_t total[MAXEV];
    int warm[MAXEV];
    int n_ev;
    int first_done_ev;      /* index of the first event after a request finished (-1: none yet) */
} sink;

static uint64_t sum_counters(const sink *k)
{
    uint64_t s = __atomic_load_n(k->engine_ctr, __ATOMIC_RELAXED);
    for (int i = 0; i < g_nctr; i++)
        if (g_ctr[i] != k->engine_ctr) s += __atomic_load_n(g_ctr[i], __ATOMIC_RELAXED);
    return s;
}

static void on_event(const mdl_event *ev, void *arg)
{
    sink *k = arg;
    if (!k->engine_ctr) k->engine_ctr = my_counter(); /* first event: the engine thread's (mallctl may allocate) */
    const int i = (int)ev->id;
    pthread_mutex_lock(&k->mu);
    if (ev->type == MDL_EV_TOKEN && i >= 0 && i < NREQ) {
        k->n_tok[i]++;
        if (k->n_ev < MAXEV && k->engine_ctr) {
            int warm = 0;
            for (int r = 0; r < NREQ; r++) warm += k->n_tok[r] >= 2;
            k->total[k->n_ev] = sum_counters(k);
            k->warm[k->n_ev] = warm;
            k->n_ev++;
        }
    } else if (ev->type == MDL_EV_DONE && i >= 0 && i < NREQ) {
        k->done[i] = 1;
        k->n_done++;
        if (k->first_done_ev < 0) k->first_done_ev = k->n_ev;
    }
    pthread_cond_broadcast(&k->cv);
    pthread_mutex_unlock(&k->mu);
}

/* ---- the model -------------------------------------------------------------------------------------------- */

static mdl_model *g_model;
static char g_dir[64];

static mdl_model *model(void)
{
    if (g_model) return g_model;
    snprintf(g_dir, sizeof g_dir, "/tmp/pd_alloc_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_dir));
    mdl_config c;
    char err[512];
    ck_assert_int_eq(mdl_preset_config("tiny", &c), PD_OK);
    c.vocab_size = 500;
    mdl_generate_opts go = {.seed = 7};
    ck_assert_int_eq(mdl_generate_checkpoint(g_dir, &c, &go, err, sizeof err), PD_OK);
    mdl_load_opts lo = mdl_load_defaults();
    lo.progress = 0;
    ck_assert_int_eq(mdl_model_load(g_dir, &lo, &g_model, err, sizeof err), PD_OK);
    collect_workers();
    return g_model;
}

/* Runs n_req requests of GEN tokens on an engine with captured sizes {1, 2, 4} and checks that no thread of the step
 * allocated between the moment every request had its 2nd token (prefills and the first decode step behind) and the
 * first request's end. Returns the number of steps that window covered. */
static int g_draft_int8; /* MTP: drafts score with an int8 copy of the MTP head */

static int run(int spec, int ngram, int n_req, float temperature)
{
    mdl_model *m = model();
    sink *k = calloc(1, sizeof *k);
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
    k->first_done_ev = -1;
    mdl_engine_opts o = {.max_num_seqs = 4, .max_num_batched_tokens = 64, .max_model_len = 128, .block_size = 8,
                         .n_blocks = 256, .num_speculative_tokens = spec,
                         .spec_method = ngram ? MDL_SPEC_NGRAM : MDL_SPEC_MTP, .ngram_min = 1, .ngram_max = 3,
                         .graph_batch_sizes = {1, 2, 4}, .n_graph_batch_sizes = 3, .draft_head_int8 = g_draft_int8};
    mdl_engine *e = NULL;
    ck_assert_int_eq(mdl_engine_create(m, &o, on_event, k, &e), PD_OK);
    for (int r = 0; r < n_req; r++) {
        int32_t t[16];
        const int n = 5 + 3 * r;
        t[0] = m->cfg.bos_token_id;
        for (int j = 1; j < n; j++) t[j] = (int32_t)(3 + (r * 37 + j * 11) % 400);
        mdl_gen_params p = {0};
        p.sampling = krn_sampling_defaults();
        p.sampling.temperature = temperature;
        p.sampling.top_p = temperature > 0 ? 0.9f : 1.0f;
        p.seed = 1000 + (uint64_t)r;
        p.has_seed = temperature > 0;
        p.max_tokens = GEN;
        p.ignore_eos = 1;
        ck_assert_int_eq(mdl_engine_submit(e, (uint64_t)r, NULL, t, n, &p, MDL_REQ_LOCAL), PD_OK);
    }
    pthread_mutex_lock(&k->mu);
    while (k->n_done < n_req) pthread_cond_wait(&k->cv, &k->mu);
    pthread_mutex_unlock(&k->mu);
    mdl_engine_stats st;
    mdl_engine_get_stats(e, &st);
    mdl_engine_destroy(e);

    int w0 = -1, w1 = k->first_done_ev;
    for (int i = 0; i < k->n_ev && w0 < 0; i++)
        if (k->warm[i] == n_req) w0 = i;
    ck_assert_int_ge(w0, 0);
    ck_assert_int_gt(w1, w0 + 1);
    /* the window holds several replayed steps: GEN tokens in steps of up to spec+1 */
    for (int i = w0 + 1; i < w1; i++)
        ck_assert_msg(k->total[i] == k->total[w0],
                      "spec %d%s, %d request(s), T %.1f: %llu bytes allocated between token event %d and %d",
                      spec, ngram ? " (ngram)" : "", n_req, temperature,
                      (unsigned long long)(k->total[i] - k->total[w0]), w0, i);
    ck_assert_uint_eq(st.graph_eager_steps, 0);
    uint64_t replayed = 0;
    for (int i = 0; i < st.n_graph_sizes; i++) replayed += st.graph_steps[i];
    ck_assert_uint_gt(replayed, 0);
    const int tokens_in_window = w1 - w0;
    free(k);
    return tokens_in_window;
}

START_TEST(test_plain_decode)
{
    ck_assert_int_gt(run(0, 0, 1, 0.0f), 10);
    ck_assert_int_gt(run(0, 0, 3, 0.0f), 10);
    ck_assert_int_gt(run(0, 0, 3, 0.8f), 10);
}
END_TEST

START_TEST(test_mtp)
{
    ck_assert_int_gt(run(2, 0, 1, 0.0f), 10);
    ck_assert_int_gt(run(2, 0, 3, 0.0f), 10);
    ck_assert_int_gt(run(2, 0, 3, 0.8f), 10);
}
END_TEST

/* MTP drafts scored with the int8 copy of the MTP head (the W8A8 kernels quantise each row into the pass's scratch) */
START_TEST(test_mtp_int8_head)
{
    g_draft_int8 = 1;
    ck_assert_int_gt(run(2, 0, 1, 0.0f), 10);
    ck_assert_int_gt(run(2, 0, 3, 0.8f), 10);
    g_draft_int8 = 0;
}
END_TEST

START_TEST(test_ngram)
{
    ck_assert_int_gt(run(3, 1, 1, 0.0f), 10);
    ck_assert_int_gt(run(3, 1, 3, 0.8f), 10);
}
END_TEST

/* The check itself: an allocation on a pool worker during a step is seen (the counters are live). */
static void alloc_task(void *ctx, int ith, int nth)
{
    (void)ith, (void)nth;
    void *p = malloc(1000);
    __atomic_store_n((void **)ctx + ith, p, __ATOMIC_RELAXED);
}

START_TEST(test_counters_see_allocations)
{
    model();
    sink k = {0};
    k.engine_ctr = my_counter();
    ck_assert_ptr_nonnull(k.engine_ctr);
    const uint64_t a = sum_counters(&k);
    void *ptrs[MAXTHR] = {0};
    krn_parallel(alloc_task, ptrs, g_nctr);
    const uint64_t b = sum_counters(&k);
    for (int i = 0; i < g_nctr; i++) free(ptrs[i]);
    ck_assert_uint_ge(b - a, (uint64_t)g_nctr * 1000);
}
END_TEST

static void cleanup(void)
{
    if (g_model) mdl_model_destroy(g_model);
    if (g_dir[0]) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", g_dir);
    }
}

int main(void)
{
    Suite *s = suite_create("step_alloc");
    PD_CHECK_CASE(s, "core", 600, test_counters_see_allocations, test_plain_decode, test_mtp, test_mtp_int8_head,
                  test_ngram);
    int nf = pd_check_run(s, 1);
    cleanup();
    return nf ? 1 : 0;
}
