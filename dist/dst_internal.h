/* Internals of libpddist shared by dist.c (initialisation, checks, the engine's sync, commands and events) and
 * ep.c (the MoE all-to-all). */
#ifndef DST_INTERNAL_H
#define DST_INTERNAL_H

#include <mpi.h>
#include <pthread.h>
#include <stdatomic.h>

#include "dist/dst.h"

typedef struct {
    uint64_t id;
    int rank;
} dst_where;

struct dst_s {
    int rank, size, ep_on;
    int block_size, block_total; /* the engines' (every rank's pool is sized alike) */
    double timeout;              /* seconds a collective inside a step may wait; 0: forever */
    mdl_engine_dist hooks;
    mdl_ep ep;
    mdl_model *m;
    mdl_engine *eng;
    mdl_event_cb cb; /* rank 0: where every rank's events go */
    void *cb_arg;
    pthread_mutex_t mu; /* rank 0: out, where, rst, pend (taken under the engine's lock) */
    pd_buf out;         /* rank 0: commands queued for other ranks */
    dst_where *where;   /* rank 0: requests on other ranks */
    int n_where, cap_where;
    mdl_engine_stats *rst;        /* rank 0: [size] each rank's last report */
    int *pend_load, *pend_blocks; /* rank 0: [size] placed since that report */
    int reported;                 /* rank 0: the first reports came in */
    pd_buf evs;                   /* ranks > 0: events for rank 0 (engine thread) */
    int stopped;                  /* the last sync ran */
    pthread_cond_t stop_cv;
    dst_rank_info me;    /* this rank's figures (engine thread; rank 0's read under mu) */
    dst_rank_info *info; /* rank 0: [size] the last reports */
    double rss_at, step_t0;
    void *metrics_arg; /* dst_metrics' state */
    dst_agent agent;          /* dst_set_agent; all NULL: none */
    int *kv_ok;               /* rank 0: [size] that rank's pool takes transfers (under mu) */
    pthread_mutex_t post_mu;  /* ranks > 0: posts, from any thread */
    pd_buf posts;             /* framed like evs, shipped at the next sync */
    atomic_int posted;
    MPI_Request wake_rq;      /* rank 0: the receive of wake-ups; ranks > 0: the last wake-up sent */
    int wake_buf, wake_on;    /* wake_on: wake_rq is active */
    /* hook_sync's buffers (engine thread), kept from step to step: rank 0's gathers (sync_evs: the events; ranks >
     * 0 receive rank 0's commands in it) and the command buffer that trades places with out at each step */
    void *sync_all;
    int *sync_counts, *sync_displs;
    char *sync_evs;
    size_t sync_evs_cap;
    pd_buf sync_cmds;
    /* ep.c: one round's buffers (engine thread) */
    struct dst_round *rd;
};

/* Waits for a nonblocking collective: spins briefly, then sleeps between tests (ranks may share cores). idle: the
 * rank waits for work, which may take forever; otherwise past the collective timeout the whole job is aborted. */
void dst__wait(dst *d, MPI_Request *rq, const char *what, int idle);
/* ep.c */
void dst__ep_moe(mdl_ep *ep, int layer, const float *xn, int T, const int *topi, unsigned flags, float *y);
void dst__ep_logits(mdl_ep *ep, int head, const float *rows, int n, int nv, const uint8_t *argmax_only, int32_t *argmax,
                    float *logits);
void dst__ep_embed(mdl_ep *ep, int which, const int32_t *tokens, int n, float *out, int ld);
void dst__step_end(void *arg);
void dst__round_free(dst *d);

#endif
