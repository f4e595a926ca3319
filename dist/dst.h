/* libpddist: one instance over several MPI ranks (OpenMPI). Rank 0 is the instance the router sees (HTTP,
 * registration, the request table, its own engine); every rank runs an engine over the sequences it is given and
 * their KV (data-parallel attention) and, with expert parallelism, holds 1/n of every MoE layer's routed experts.
 * The engines step together: at the top of each step the ranks exchange events and commands (MPI gather and
 * broadcast), and each MoE layer's rows go to their experts' ranks and back (MPI all-to-all-v), docs/scaling.md.
 * A collective that waits longer than the collective timeout aborts the whole MPI job, so no rank stays blocked.
 * Without --data-parallel-size > 1 none of this runs and MPI is never initialised. */
#ifndef DST_H
#define DST_H

#include "model/mdl_engine.h"

typedef struct dst_s dst;

/* Initialises MPI (threads: serialized; the engine thread makes the calls) and checks that the job has n_ranks
 * ranks. expert_parallel: split the routed experts over the ranks (else every rank holds all of them).
 * coll_timeout: seconds a collective inside a step may wait (0: forever). On error err says why. */
pd_status dst_init(int *argc, char ***argv, int n_ranks, int expert_parallel, double coll_timeout, dst **out,
                   char *err, size_t errlen);
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
/* After loading: attaches the expert exchange to m (expert parallelism) and the engine hooks to eo. Rank 0 keeps
 * cb and cb_arg (its events and the other ranks' go there); on other ranks they are replaced by the hook that ships
 * events to rank 0. */
pd_status dst_attach(dst *d, mdl_model *m, mdl_engine_opts *eo, mdl_event_cb *cb, void **cb_arg);
/* The engine created with those options (every rank, before anything is submitted). */
void dst_set_engine(dst *d, mdl_engine *e);
/* Ranks > 0: blocks until rank 0's engine stops (its last sync). */
void dst_wait_stop(dst *d);
/* Finalises MPI and frees d (NULL: nothing). */
void dst_finalize(dst *d);

#endif
