/* libpddist: one instance over several MPI ranks (OpenMPI). Rank 0 is the instance the router sees (HTTP,
 * registration, the request table, its own engine); every rank runs an engine over the sequences it is given and
 * their KV (data-parallel attention) and, with expert parallelism, holds 1/n of every MoE layer's routed experts.
 * The engines step together: at the top of each step the ranks exchange events and commands (MPI gather and
 * broadcast), and each MoE layer's rows go to their experts' ranks and back (MPI all-to-all-v), docs/scaling.md.
 * A collective that waits longer than the collective timeout aborts the whole MPI job, so no rank stays blocked.
 * Without --data-parallel-size > 1 none of this runs and MPI is never initialised. */
#ifndef DST_H
#define DST_H

#include <cJSON.h>

#include "common/pd_metrics.h"
#include "model/mdl_engine.h"

typedef struct dst_s dst;

/* Initialises MPI (threads: serialized; the engine thread makes the calls) and checks that the job has n_ranks
 * ranks. expert_parallel: split the routed experts over the ranks (else every rank holds all of them).
 * coll_timeout: seconds a collective inside a step may wait (0: forever). On error err says why. */
pd_status dst_init(int *argc, char ***argv, int n_ranks, int expert_parallel, double coll_timeout, dst **out, char *err,
                   size_t errlen);
int dst_rank(const dst *d);
int dst_size(const dst *d);
/* The expert-parallel rank and size for mdl_load_opts. */
void dst_ep(const dst *d, int *ep_rank, int *ep_size);
/* Every rank, collective: PD_OK on all ranks when every rank passes the same bytes, else PD_ERR_INVALID on all and
 * rank 0 logs which ranks differ from it (what: "options", "model"). */
pd_status dst_agree(dst *d, const void *bytes, size_t n, const char *what);
/* Every rank, collective: PD_OK on all ranks when local is PD_OK on every rank; otherwise the first failing rank's
 * status on all, and rank 0 logs which ranks could not do what (each failing rank logs its own reason). */
pd_status dst_all_ok(dst *d, pd_status local, const char *what);
/* Every rank, collective: dst_agree over what the ranks' engines must share: the model's config, its MTP layer,
 * the weight and KV types and the quantization. */
pd_status dst_agree_model(dst *d, const mdl_model *m);
/* Every rank, collective: rank 0's engine options go to every rank (pointers excepted), so every rank's engine
 * runs alike whatever the role adjusted on rank 0. */
pd_status dst_share_engine_opts(dst *d, mdl_engine_opts *eo);
/* Logs why and aborts the whole MPI job (for a failure after the ranks' engines may have started). */
void dst_abort(dst *d, const char *why) __attribute__((noreturn));
/* dst_all_ok for a step whose failure reason is err (a message; ignored on success): the reason is logged once, by
 * rank 0 or by a rank whose reason differs from rank 0's, so an error every rank meets is not repeated n times.
 * The other ranks should keep their own logging of that step quiet. */
pd_status dst_all_ok_err(dst *d, pd_status local, const char *err, const char *what);
/* After loading: attaches the expert exchange to m (expert parallelism) and the engine hooks to eo. Rank 0 keeps
 * cb and cb_arg (its events and the other ranks' go there); on other ranks they are replaced by the hook that ships
 * events to rank 0. */
pd_status dst_attach(dst *d, mdl_model *m, mdl_engine_opts *eo, mdl_event_cb *cb, void **cb_arg);
/* The engine created with those options (every rank, before anything is submitted). Rank 0 returns once every
 * rank's engine runs. */
void dst_set_engine(dst *d, mdl_engine *e);
/* Logs this rank's experts and resident memory once its engine runs. */
void dst_log_rank(dst *d, const char *name, const mdl_model *m);
/* Ranks > 0: blocks until rank 0's engine stops (its last sync). */
void dst_wait_stop(dst *d);
/* Messages between rank 0 and the other ranks, riding each step's sync: the KV transfer agents of instance/ranks.c,
 * so each rank's own pool sends and receives KV. Every callback runs on the engine thread with no lock held. */
typedef struct {
    void *arg;
    /* ranks > 0: rank 0's message for this rank (valid during the call) */
    void (*on_msg)(void *arg, const void *msg, size_t len);
    /* ranks > 0: this rank's engine admitted a request rank 0 placed here */
    void (*on_admitted)(void *arg, uint64_t id, mdl_req_mode mode);
    /* rank 0: a message rank `rank` posted (valid during the call) */
    void (*on_rank_msg)(void *arg, int rank, const void *msg, size_t len);
    /* ranks > 0: the engines stopped (the last sync ran) */
    void (*on_stop)(void *arg);
} dst_agent;
/* Every rank, before dst_attach. With an agent, rank 0 also wakes for messages the other ranks post while it sleeps,
 * and requests whose KV crosses instances (PREFILL_ONLY, REMOTE_KV) go to any rank whose pool takes transfers
 * (dst_set_rank_kv); without one they stay on rank 0. */
void dst_set_agent(dst *d, const dst_agent *a);
/* Rank 0, any thread: queues msg for rank `rank` (delivered at the next sync). PD_ERR_NOMEM: not queued. */
pd_status dst_send(dst *d, int rank, const void *msg, size_t len);
/* Ranks > 0, any thread: queues msg for rank 0 (shipped at the next sync; a rank 0 that sleeps is woken). */
pd_status dst_post(dst *d, const void *msg, size_t len);
/* Rank 0, any thread: rank `rank`'s pool takes KV transfers (ok) or not. */
void dst_set_rank_kv(dst *d, int rank, int ok);
/* Rank 0, any thread: the rank request id was placed on (0: this rank, or no longer known). */
int dst_rank_of(dst *d, uint64_t id);

/* What each rank last reported (rank 0; the others report at every step's sync). */
typedef struct {
    int rank;
    int exp0, exp1;   /* the routed experts it holds: [exp0, exp1) */
    double rss_bytes; /* resident memory (refreshed every half second) */
    int running, waiting, free_blocks, total_blocks;
    uint64_t steps, prefill_tokens, decode_tokens;
    uint64_t moe_rounds;      /* expert exchanges (one per MoE layer of a pass, and the rounds ending a step) */
    double moe_wait_seconds;  /* in the exchange's collectives: transfer and waiting for slower ranks */
    double moe_serve_seconds; /* running the rows it received through its experts */
    double moe_bytes;         /* rows and outputs it sent */
    double step_seconds;      /* its steps, from sync to sync */
} dst_rank_info;
/* Rank 0: fills out[0..min(size, cap)) and returns the rank count. */
int dst_ranks_info(dst *d, dst_rank_info *out, int cap);

/* Rank 0: adds "ranks" (each rank's figures above) to a /health body. */
void dst_health(dst *d, cJSON *body);
/* Rank 0: registers the per-rank families (label rank) on reg, refreshed at each scrape. d must outlive reg's
 * scrapes. */
pd_status dst_metrics(dst *d, pd_metrics *reg);

/* Finalises MPI and frees d (NULL: nothing). */
void dst_finalize(dst *d);

#endif
