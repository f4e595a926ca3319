/* The kernel thread pool: n-1 workers created once (krn_threads_init, or lazily at the first kernel call), the
 * caller works too. A job is published by bumping a generation counter; workers spin briefly on it (kernels
 * come in quick succession during a forward pass) and then sleep on a condition variable. Pieces of a job are
 * claimed from a counter tagged with the job's generation, so a worker the OS has descheduled never holds a
 * job up (the caller takes its pieces) and can never run a piece of a job that has finished. */
#include <cblas.h>
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#include "kernels/krn_impl.h"

#define SPIN_NS 200000 /* how long an idle worker spins before it sleeps */

typedef struct {
    int n;                 /* threads including the caller */
    pthread_t *tids;
    krn_task_cb fn;
    void *ctx;
    int nth;
    unsigned gen;          /* job generation (atomic) */
    uint64_t next;         /* (generation << 32) | next unclaimed piece (atomic) */
    int done;              /* pieces finished (atomic) */
    int sleeping;          /* workers blocked on cv (atomic) */
    int stop;              /* atomic */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} pool_t;

typedef struct {
    pool_t *p;
    int idx;
    unsigned gen0; /* generation when the worker was created: jobs after it are the worker's */
} worker_arg;

static pool_t g_pool = {.n = 1, .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};
static pthread_mutex_t g_busy = PTHREAD_MUTEX_INITIALIZER; /* one caller on the pool at a time */
static pthread_mutex_t g_init_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_inited;                                       /* atomic */
static int g_blas_threads = -1;                            /* OpenBLAS's own setting before we changed it */
static __thread int tls_in_pool;
static worker_arg *g_args;

/* Claims and runs pieces of job `gen` until none is left (or the job is no longer current). */
static void run_pieces(pool_t *p, unsigned gen)
{
    for (;;) {
        krn_task_cb fn = p->fn;
        void *ctx = p->ctx;
        const int nth = p->nth;
        uint64_t cur = __atomic_load_n(&p->next, __ATOMIC_ACQUIRE);
        if ((unsigned)(cur >> 32) != gen || (int)(uint32_t)cur >= nth) return;
        if (!__atomic_compare_exchange_n(&p->next, &cur, cur + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
        /* the claim succeeded while the job was current, so it cannot finish before this piece does */
        fn(ctx, (int)(uint32_t)cur, nth);
        __atomic_fetch_add(&p->done, 1, __ATOMIC_ACQ_REL);
    }
}

static void *worker_main(void *argp)
{
    worker_arg *wa = argp;
    pool_t *p = wa->p;
    tls_in_pool = 1;
    unsigned seen = wa->gen0;
    for (;;) {
        uint64_t t0 = pd_time_ns();
        unsigned g;
        int spins = 0;
        while ((g = __atomic_load_n(&p->gen, __ATOMIC_ACQUIRE)) == seen &&
               !__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
            _mm_pause();
            if (++spins % 256 == 0 && pd_time_ns() - t0 > SPIN_NS) {
                pthread_mutex_lock(&p->mu);
                __atomic_fetch_add(&p->sleeping, 1, __ATOMIC_SEQ_CST);
                while (__atomic_load_n(&p->gen, __ATOMIC_SEQ_CST) == seen &&
                       !__atomic_load_n(&p->stop, __ATOMIC_SEQ_CST))
                    pthread_cond_wait(&p->cv, &p->mu);
                __atomic_fetch_sub(&p->sleeping, 1, __ATOMIC_SEQ_CST);
                pthread_mutex_unlock(&p->mu);
                t0 = pd_time_ns();
            }
        }
        if (__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) return NULL;
        seen = g;
        run_pieces(p, g);
    }
}

static void pool_stop(pool_t *p)
{
    if (p->n <= 1) return;
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->stop, 1, __ATOMIC_SEQ_CST);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n - 1; i++) pthread_join(p->tids[i], NULL);
    free(p->tids);
    free(g_args);
    p->tids = NULL;
    g_args = NULL;
    p->n = 1;
    __atomic_store_n(&p->stop, 0, __ATOMIC_SEQ_CST);
}

static int default_threads(void)
{
    const char *e = getenv("PDSERVE_THREADS");
    if (e && *e) {
        int n = atoi(e);
        if (n >= 1) return n;
        pd_warn("PDSERVE_THREADS='%s' is not a positive count; using every online core", e);
    }
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c >= 1 ? (int)c : 1;
}

pd_status krn_threads_init(int n)
{
    if (n <= 0) n = default_threads();
    if (n > 1024) return PD_ERR_INVALID;
    pthread_mutex_lock(&g_init_mu);
    pthread_mutex_lock(&g_busy);
    pool_stop(&g_pool);
    pd_status st = PD_OK;
    if (n > 1) {
        g_pool.tids = calloc((size_t)n - 1, sizeof *g_pool.tids);
        g_args = calloc((size_t)n - 1, sizeof *g_args);
        if (!g_pool.tids || !g_args) {
            free(g_pool.tids);
            free(g_args);
            g_pool.tids = NULL;
            g_args = NULL;
            st = PD_ERR_NOMEM;
            n = 1;
        }
    }
    int started = 0;
    for (int i = 0; st == PD_OK && i < n - 1; i++) {
        g_args[i] = (worker_arg){&g_pool, i + 1, __atomic_load_n(&g_pool.gen, __ATOMIC_ACQUIRE)};
        if (pthread_create(&g_pool.tids[i], NULL, worker_main, &g_args[i]) != 0) {
            pd_error("thread pool: cannot start worker %d of %d", i + 1, n - 1);
            st = PD_ERR_NOMEM;
            break;
        }
        started++;
    }
    g_pool.n = 1 + started;
    if (st != PD_OK) pool_stop(&g_pool);
    /* OpenBLAS would start its own threads inside a kernel that already runs on every core */
    if (g_blas_threads < 0) g_blas_threads = openblas_get_num_threads();
    openblas_set_num_threads(g_pool.n > 1 ? 1 : g_blas_threads);
    __atomic_store_n(&g_inited, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_busy);
    pthread_mutex_unlock(&g_init_mu);
    return st;
}

static void ensure_pool(void)
{
    if (__atomic_load_n(&g_inited, __ATOMIC_ACQUIRE)) return;
    pthread_mutex_lock(&g_init_mu);
    int done = __atomic_load_n(&g_inited, __ATOMIC_ACQUIRE);
    pthread_mutex_unlock(&g_init_mu);
    if (!done) krn_threads_init(0);
}

int krn_threads_get(void)
{
    ensure_pool();
    return g_pool.n;
}

void krn_parallel(krn_task_cb fn, void *ctx, int nth)
{
    ensure_pool();
    if (nth <= 1 || g_pool.n <= 1 || tls_in_pool || pthread_mutex_trylock(&g_busy) != 0) {
        for (int i = 0; i < nth; i++) fn(ctx, i, nth);
        return;
    }
    pool_t *p = &g_pool;
    const unsigned gen = __atomic_load_n(&p->gen, __ATOMIC_RELAXED) + 1;
    p->fn = fn;
    p->ctx = ctx;
    p->nth = nth;
    __atomic_store_n(&p->done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&p->next, (uint64_t)gen << 32, __ATOMIC_RELEASE);
    __atomic_store_n(&p->gen, gen, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&p->sleeping, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    tls_in_pool = 1;
    run_pieces(p, gen);
    tls_in_pool = 0;
    for (int spins = 0; __atomic_load_n(&p->done, __ATOMIC_ACQUIRE) < nth; spins++) {
        if (spins < 4096) _mm_pause();
        else sched_yield(); /* a worker holding a piece was descheduled: let it run */
    }
    pthread_mutex_unlock(&g_busy);
}
