/* libpddist (dst.h): MPI start-up and the checks every rank runs together, then the engines' lockstep. Each step
 * starts with a sync: every rank reports to rank 0 whether it has work, its stats and its events (gather,
 * gatherv); rank 0 delivers those events, sleeps when no rank has anything to do, and broadcasts the commands it
 * queued for other ranks (new requests, aborts, releases, KV arrivals) with the stop flag. */
#include <stddef.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "dist/dst_internal.h"

#define DST_TAG_CMD_SUBMIT 's'
#define DST_TAG_WAKE       0x77616b /* point-to-point: a rank > 0 has posted while rank 0 sleeps */
#define DST_REC_EVENT      'e'      /* an event record: an engine event */
#define DST_REC_MSG        'm'      /* an event record: a message an agent posted */

/* ---- start-up ------------------------------------------------------------------------------------------ */

pd_status dst_init(int *argc, char ***argv, int n_ranks, int expert_parallel, double coll_timeout, dst **out, char *err,
                   size_t errlen)
{
    int inited = 0, provided = 0;
    MPI_Initialized(&inited);
    if (!inited && MPI_Init_thread(argc, argv, MPI_THREAD_SERIALIZED, &provided) != MPI_SUCCESS)
        return PD_FAIL(err, errlen, PD_ERR_IO, NULL, "MPI_Init_thread failed");
    if (!inited && provided < MPI_THREAD_SERIALIZED) {
        MPI_Finalize();
        return PD_FAIL(err, errlen, PD_ERR_IO, NULL,
                       "this MPI library gives thread level %d; serialized (%d) is needed", provided,
                       MPI_THREAD_SERIALIZED);
    }
    dst *d = calloc(1, sizeof *d);
    if (!d) {
        MPI_Finalize();
        return PD_ERR_NOMEM;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &d->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d->size);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL); /* a failed collective ends the whole job */
    d->ep_on = expert_parallel;
    d->timeout = coll_timeout;
    pthread_mutex_init(&d->mu, NULL);
    pthread_mutex_init(&d->post_mu, NULL);
    pthread_cond_init(&d->stop_cv, NULL);
    if (d->size != n_ranks) { /* rank 0 says it; the others leave quietly */
        if (d->rank == 0)
            snprintf(err, errlen,
                     "--data-parallel-size %d, but this MPI job has %d ranks (start it as mpirun -np %d ...)", n_ranks,
                     d->size, n_ranks);
        else if (errlen) err[0] = 0;
        dst_finalize(d);
        return PD_ERR_INVALID;
    }
    /* threads: the host's cores shared by the ranks on it, unless PDSERVE_THREADS says otherwise */
    MPI_Comm local;
    int local_n = 1;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) == MPI_SUCCESS) {
        MPI_Comm_size(local, &local_n);
        MPI_Comm_free(&local);
    }
    const char *env = getenv("PDSERVE_THREADS");
    if (!env || !*env) {
        const long cores = sysconf(_SC_NPROCESSORS_ONLN);
        krn_threads_init((int)PD_MAX(1, cores / PD_MAX(1, local_n)));
    }
    d->rst = calloc((size_t)d->size, sizeof *d->rst);
    d->pend_load = calloc((size_t)d->size, sizeof *d->pend_load);
    d->pend_blocks = calloc((size_t)d->size, sizeof *d->pend_blocks);
    d->info = calloc((size_t)d->size, sizeof *d->info);
    d->kv_ok = calloc((size_t)d->size, sizeof *d->kv_ok);
    d->me.rank = d->rank;
    if (!d->rst || !d->pend_load || !d->pend_blocks || !d->info || !d->kv_ok) {
        dst_finalize(d);
        return PD_ERR_NOMEM;
    }
    *out = d;
    return PD_OK;
}

int dst_rank(const dst *d) { return d->rank; }
int dst_size(const dst *d) { return d->size; }

void dst_ep(const dst *d, int *ep_rank, int *ep_size)
{
    *ep_rank = d->ep_on ? d->rank : 0;
    *ep_size = d->ep_on ? d->size : 1;
}

static uint64_t fnv1a(const void *p, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ ((const unsigned char *)p)[i]) * 1099511628211ull;
    return h;
}

pd_status dst_agree(dst *d, const void *bytes, size_t n, const char *what)
{
    uint64_t mine = fnv1a(bytes, n), *all = calloc((size_t)d->size, sizeof *all);
    if (!all) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    pd_status st = PD_OK;
    for (int r = 1; r < d->size; r++)
        if (all[r] != all[0]) {
            if (d->rank == 0) pd_error("rank %d was started with different %s than rank 0; every rank exits", r, what);
            st = PD_ERR_INVALID;
        }
    free(all);
    return st;
}

pd_status dst_all_ok_err(dst *d, pd_status local, const char *err, const char *what)
{
    uint64_t mine[2] = {(uint64_t)local, local == PD_OK ? 0 : fnv1a(err, strlen(err))};
    uint64_t *all = calloc((size_t)d->size * 2, sizeof *all);
    if (!all) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Allgather(mine, 2, MPI_UINT64_T, all, 2, MPI_UINT64_T, MPI_COMM_WORLD);
    /* a reason is logged once: by rank 0, or by another rank whose reason is not rank 0's */
    if (local != PD_OK && d->rank > 0 && (all[0] == PD_OK || all[1] != mine[1])) pd_error("rank %d: %s", d->rank, err);
    free(all);
    return dst_all_ok(d, local, what);
}

pd_status dst_all_ok(dst *d, pd_status local, const char *what)
{
    int mine = (int)local, *all = calloc((size_t)d->size, sizeof *all);
    if (!all) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Allgather(&mine, 1, MPI_INT, all, 1, MPI_INT, MPI_COMM_WORLD);
    pd_status st = PD_OK;
    pd_buf who = {0}; /* one line naming every rank that failed */
    for (int r = 0; r < d->size; r++)
        if (all[r] != PD_OK) {
            pd_buf_printf(&who, "%s%d", st == PD_OK ? "" : ", ", r);
            if (st == PD_OK) st = (pd_status)all[r];
        }
    if (st != PD_OK && d->rank == 0)
        pd_error("rank%s %s could not %s; every rank exits", strchr(who.data ? who.data : "", ',') ? "s" : "",
                 who.data ? who.data : "?", what);
    pd_buf_free(&who);
    free(all);
    return st;
}

pd_status dst_agree_model(dst *d, const mdl_model *m)
{
    struct {
        mdl_config cfg;
        int n_mtp, weight_type, kv_type, fp8_dequant, quant;
    } fp;
    memset(&fp, 0, sizeof fp);
    fp.cfg = m->cfg;
    fp.n_mtp = m->n_mtp;
    fp.weight_type = (int)m->opts.weight_type;
    fp.kv_type = (int)m->opts.kv_type;
    fp.fp8_dequant = m->opts.fp8_dequant;
    fp.quant = (int)m->opts.quant;
    if (d->ep_on && m->cfg.num_experts_per_tok > 64) {
        if (d->rank == 0)
            pd_error("expert parallelism takes at most 64 experts per token, not %d", m->cfg.num_experts_per_tok);
        return PD_ERR_INVALID;
    }
    return dst_agree(d, &fp, sizeof fp, "a model (config.json, MTP layer, dtypes or quantization)");
}

pd_status dst_share_engine_opts(dst *d, mdl_engine_opts *eo)
{
    mdl_engine_opts mine = *eo;
    MPI_Bcast(&mine, sizeof mine, MPI_BYTE, 0, MPI_COMM_WORLD);
    if (d->rank) {
        mine.kv_mem = NULL; /* the other ranks' pools are their own */
        mine.dist = NULL;
        *eo = mine;
    }
    return PD_OK;
}

void dst_abort(dst *d, const char *why)
{
    pd_error("rank %d: %s; aborting every rank", d->rank, why);
    MPI_Abort(MPI_COMM_WORLD, 75);
    _exit(75);
}

void dst_finalize(dst *d)
{
    if (!d) return;
    dst__round_free(d);
    if (d->wake_on && d->rank == 0) { /* nothing more will wake us */
        MPI_Cancel(&d->wake_rq);
        MPI_Wait(&d->wake_rq, MPI_STATUS_IGNORE);
    } else if (d->wake_on) {
        MPI_Request_free(&d->wake_rq); /* a small message: sent eagerly, or dropped with the job */
    }
    pd_buf_free(&d->out);
    pd_buf_free(&d->sync_cmds);
    free(d->sync_all);
    free(d->sync_counts);
    free(d->sync_displs);
    free(d->sync_evs);
    pd_buf_free(&d->evs);
    pd_buf_free(&d->posts);
    free(d->kv_ok);
    free(d->where);
    free(d->rst);
    free(d->pend_load);
    free(d->pend_blocks);
    free(d->info);
    free(d->metrics_arg);
    pthread_mutex_destroy(&d->mu);
    pthread_mutex_destroy(&d->post_mu);
    pthread_cond_destroy(&d->stop_cv);
    free(d);
    MPI_Finalize();
}

/* ---- waiting for a collective ----------------------------------------------------------------------------- */

/* ranks > 0, waiting for rank 0's orders: what an agent posted since this rank's report goes out only at the next
 * sync, which a sleeping rank 0 would not start; one small message wakes it (dist_wait polls for it). */
static void wake_rank0(dst *d)
{
    int done = 1;
    if (d->wake_on) MPI_Test(&d->wake_rq, &done, MPI_STATUS_IGNORE);
    if (!done) return; /* the last one is still on its way: it wakes rank 0 as well */
    d->wake_buf = d->rank;
    MPI_Isend(&d->wake_buf, 1, MPI_INT, 0, DST_TAG_WAKE, MPI_COMM_WORLD, &d->wake_rq);
    d->wake_on = 1;
}

void dst__wait(dst *d, MPI_Request *rq, const char *what, int idle)
{
    const double t0 = pd_time_now();
    int flag = 0, woke = 0;
    for (long spins = 0;; spins++) {
        MPI_Test(rq, &flag, MPI_STATUS_IGNORE);
        if (flag) return;
        if ((spins & 63) != 63) continue;
        if (idle && d->rank && !woke && atomic_load(&d->posted)) {
            wake_rank0(d);
            woke = 1;
        }
        const double waited = pd_time_now() - t0;
        if (!idle && d->timeout > 0 && waited > d->timeout) {
            pd_error("rank %d: %s has waited %.0f s for the other ranks (--collective-timeout %.0f): a rank is gone "
                     "or stuck; aborting the whole instance",
                     d->rank, what, waited, d->timeout);
            MPI_Abort(MPI_COMM_WORLD, 70);
        }
        if (waited > 200e-6) {
            struct timespec ts = {0, idle && waited > 0.01 ? 1000000 : 50000};
            nanosleep(&ts, NULL);
        }
    }
}

/* ---- commands (rank 0 -> rank r) and events (rank r -> rank 0) ----------------------------------------------
 * A command: int32 rank, int32 kind, uint64 id, then by kind: 's' uint64 user, int32 mode, int32 n_prompt,
 * mdl_gen_params, n_prompt int32 tokens; 'k' an mdl_event (the first token and its alternatives), int32
 * has_hidden, hidden_size floats when set; 'a', 'r' nothing; 'x' (id: the length) an agent's message. An event
 * record: int32 'e', an mdl_event, int32 has_hidden, hidden; or int32 'm', int32 length, an agent's message.
 * The ranks of one job run one build on one kind of host, so structs cross as bytes. */

typedef struct {
    int32_t rank, kind;
    uint64_t id;
} cmd_head;

static void where_add(dst *d, uint64_t id, int rank)
{
    if (d->n_where == d->cap_where) {
        int nc = d->cap_where ? 2 * d->cap_where : 64;
        dst_where *n = realloc(d->where, (size_t)nc * sizeof *n);
        if (!n) return; /* then an abort of it finds no rank: its events still arrive and end it */
        d->where = n;
        d->cap_where = nc;
    }
    d->where[d->n_where++] = (dst_where){id, rank};
}

static int where_find(const dst *d, uint64_t id)
{
    for (int i = 0; i < d->n_where; i++)
        if (d->where[i].id == id) return i;
    return -1;
}

static int hook_place(void *arg, int nb, int local_load, int local_free, int prefill_kv)
{
    dst *d = arg;
    if (!d->reported) return 0;
    pthread_mutex_lock(&d->mu);
    int best = -1;
    long best_load = 0;
    for (int r = 0; r < d->size; r++) {
        if (prefill_kv && r && !d->kv_ok[r]) continue; /* its KV crosses instances: a registered pool only */
        const long load = (r ? d->rst[r].running + d->rst[r].waiting + d->rst[r].held : local_load) + d->pend_load[r];
        const long free_b = (r ? d->rst[r].free_blocks : local_free) - d->pend_blocks[r];
        const long keep = (r ? d->rst[r].total_blocks : d->rst[0].total_blocks) / 100;
        if (free_b - nb < keep && r) continue;
        if (best < 0 || load < best_load) {
            best = r;
            best_load = load;
        }
    }
    pthread_mutex_unlock(&d->mu);
    return best < 0 ? 0 : best; /* rank 0 answers busy itself when it is full too */
}

static pd_status hook_submit(void *arg, int rank, uint64_t id, void *user, const int32_t *prompt, int n_prompt,
                             const mdl_gen_params *p, mdl_req_mode mode)
{
    dst *d = arg;
    cmd_head h = {rank, DST_TAG_CMD_SUBMIT, id};
    uint64_t u = (uint64_t)(uintptr_t)user;
    int32_t md = (int32_t)mode, n = n_prompt;
    pthread_mutex_lock(&d->mu);
    const size_t len0 = d->out.len;
    pd_buf_append(&d->out, &h, sizeof h);
    pd_buf_append(&d->out, &u, sizeof u);
    pd_buf_append(&d->out, &md, sizeof md);
    pd_buf_append(&d->out, &n, sizeof n);
    pd_buf_append(&d->out, p, sizeof *p);
    pd_status st = pd_buf_append(&d->out, prompt, (size_t)n_prompt * sizeof *prompt);
    if (d->out.failed) {
        d->out.len = len0; /* drop the partial command; the queue stays whole */
        d->out.failed = 0;
        st = PD_ERR_NOMEM;
    }
    if (st == PD_OK) {
        where_add(d, id, rank);
        d->pend_load[rank]++;
        d->pend_blocks[rank] += (n_prompt + d->block_size - 1) / d->block_size;
    }
    pthread_mutex_unlock(&d->mu);
    return st;
}

static int hook_command(void *arg, int cmd, uint64_t id, const mdl_event *ready, const float *hidden)
{
    dst *d = arg;
    pthread_mutex_lock(&d->mu);
    const int i = where_find(d, id);
    if (i >= 0) {
        cmd_head h = {d->where[i].rank, cmd, id};
        const size_t len0 = d->out.len;
        pd_buf_append(&d->out, &h, sizeof h);
        if (cmd == 'k') {
            int32_t has = hidden != NULL;
            pd_buf_append(&d->out, ready, sizeof *ready);
            pd_buf_append(&d->out, &has, sizeof has);
            if (has) pd_buf_append(&d->out, hidden, (size_t)d->m->cfg.hidden_size * sizeof *hidden);
        }
        if (d->out.failed) { /* out of memory: the request stays on its rank; an abort comes again with the client */
            pd_error("dist: out of memory queueing a command for request %llu on rank %d", (unsigned long long)id,
                     d->where[i].rank);
            d->out.len = len0;
            d->out.failed = 0;
        }
    }
    pthread_mutex_unlock(&d->mu);
    return i >= 0;
}

/* rank 0 (engine thread): a rank posted while we slept; the receive stays posted from the first sync on */
static int woken(dst *d)
{
    if (!d->agent.on_rank_msg || d->size < 2) return 0;
    int flag = 0;
    if (d->wake_on) MPI_Test(&d->wake_rq, &flag, MPI_STATUS_IGNORE);
    if (flag || !d->wake_on) {
        MPI_Irecv(&d->wake_buf, 1, MPI_INT, MPI_ANY_SOURCE, DST_TAG_WAKE, MPI_COMM_WORLD, &d->wake_rq);
        d->wake_on = 1;
    }
    return flag;
}

static int hook_pending(void *arg)
{
    dst *d = arg;
    pthread_mutex_lock(&d->mu);
    const int n = d->out.len > 0;
    pthread_mutex_unlock(&d->mu);
    return n || woken(d);
}

static void hook_stats(void *arg, mdl_engine_stats *s)
{
    dst *d = arg;
    pthread_mutex_lock(&d->mu);
    for (int r = 1; r < d->size; r++) {
        const mdl_engine_stats *o = &d->rst[r];
        s->running += o->running;
        s->waiting += o->waiting;
        s->held += o->held;
        s->free_blocks += o->free_blocks;
        s->total_blocks += o->total_blocks;
        s->queued_prompt_tokens += o->queued_prompt_tokens;
        s->prefill_tokens += o->prefill_tokens;
        s->decode_tokens += o->decode_tokens;
        s->decode_steps += o->decode_steps;
        s->decode_seconds += o->decode_seconds;
        s->spec_seq_steps += o->spec_seq_steps;
        s->spec_drafted += o->spec_drafted;
        s->spec_accepted += o->spec_accepted;
        for (int j = 0; j < MDL_MAX_SPEC_TOKENS; j++) s->spec_accepted_at[j] += o->spec_accepted_at[j];
        s->preemptions += o->preemptions;
        for (int j = 0; j < MDL_MAX_GRAPH_SIZES; j++) s->graph_steps[j] += o->graph_steps[j];
        s->graph_padded_rows += o->graph_padded_rows;
        s->graph_eager_steps += o->graph_eager_steps;
    }
    pthread_mutex_unlock(&d->mu);
}

/* ranks > 0: the engine's callback; the events go to rank 0 at the next sync */
static void ship_event(const mdl_event *ev, void *arg)
{
    dst *d = arg;
    int32_t has = ev->type == MDL_EV_PREFILLED && ev->hidden, kind = DST_REC_EVENT;
    pd_buf_append(&d->evs, &kind, sizeof kind);
    pd_buf_append(&d->evs, ev, sizeof *ev);
    pd_buf_append(&d->evs, &has, sizeof has);
    if (has) pd_buf_append(&d->evs, ev->hidden, (size_t)d->m->cfg.hidden_size * sizeof(float));
    if (d->evs.failed) { /* nothing can be shipped in part: this rank cannot go on */
        pd_error("rank %d: out of memory holding %zu bytes of events for rank 0; aborting the instance", d->rank,
                 d->evs.len);
        MPI_Abort(MPI_COMM_WORLD, 71);
    }
}

/* ranks > 0: a request this rank could not admit ends at once, as the engine ends one it fails */
static void refuse(dst *d, uint64_t id, uint64_t user, pd_status st)
{
    mdl_event ev = {
        .type = MDL_EV_DONE, .id = id, .user = (void *)(uintptr_t)user, .finish = MDL_FINISH_ERROR, .stop_token = -1};
    pd_warn("rank %d: request %llu refused here: %s", d->rank, (unsigned long long)id, pd_status_str(st));
    ship_event(&ev, d);
}

/* ranks > 0: carries out the commands for this rank (engine thread, engine lock not held) */
static void apply_commands(dst *d, const char *p, size_t len)
{
    const size_t D = (size_t)d->m->cfg.hidden_size;
    for (size_t o = 0; o + sizeof(cmd_head) <= len;) {
        cmd_head h;
        memcpy(&h, p + o, sizeof h);
        o += sizeof h;
        if (h.kind == 's') {
            uint64_t user;
            int32_t mode, n;
            mdl_gen_params gp;
            memcpy(&user, p + o, sizeof user);
            memcpy(&mode, p + o + 8, 4);
            memcpy(&n, p + o + 12, 4);
            memcpy(&gp, p + o + 16, sizeof gp);
            const int32_t *prompt = (const int32_t *)(p + o + 16 + sizeof gp);
            o += 16 + sizeof gp + (size_t)n * 4;
            if (h.rank != d->rank) continue;
            int32_t *copy = malloc((size_t)n * 4); /* the payload is not aligned for int32 */
            pd_status st = copy ? PD_OK : PD_ERR_NOMEM;
            if (copy) {
                memcpy(copy, prompt, (size_t)n * 4);
                st = mdl_engine_submit(d->eng, h.id, (void *)(uintptr_t)user, copy, n, &gp, (mdl_req_mode)mode);
                free(copy);
            }
            if (st != PD_OK) refuse(d, h.id, user, st);
            else if (d->agent.on_admitted) d->agent.on_admitted(d->agent.arg, h.id, (mdl_req_mode)mode);
        } else if (h.kind == 'x') {
            const size_t n = (size_t)h.id;
            if (h.rank == d->rank && d->agent.on_msg) d->agent.on_msg(d->agent.arg, p + o, n);
            o += n;
        } else if (h.kind == 'k') {
            mdl_event ready;
            int32_t has;
            memcpy(&ready, p + o, sizeof ready);
            memcpy(&has, p + o + sizeof ready, 4);
            const size_t at = o + sizeof ready + 4;
            o = at + (has ? D * sizeof(float) : 0);
            if (h.rank != d->rank) continue;
            float *hid = has ? malloc(D * sizeof(float)) : NULL;
            if (hid) memcpy(hid, p + at, D * sizeof(float));
            if (mdl_engine_kv_ready(d->eng, h.id, ready.token, ready.logprob, ready.n_top, ready.top_ids, ready.top_lps,
                                    hid) != PD_OK)
                mdl_engine_abort(d->eng, h.id);
            free(hid);
        } else if (h.rank == d->rank) {
            if (h.kind == 'a') mdl_engine_abort(d->eng, h.id);
            else if (h.kind == 'r') mdl_engine_release(d->eng, h.id);
        }
    }
}

/* rank 0: rank r's event records: engine events delivered as if our own engine had made them, agents' messages to
 * the agent */
static void deliver_remote(dst *d, int r, const char *p, size_t len)
{
    const size_t D = (size_t)d->m->cfg.hidden_size;
    float *hid = NULL;
    for (size_t o = 0; o + 8 <= len;) {
        int32_t kind, has;
        memcpy(&kind, p + o, 4);
        if (kind == DST_REC_MSG) {
            memcpy(&has, p + o + 4, 4); /* the length */
            if (d->agent.on_rank_msg) d->agent.on_rank_msg(d->agent.arg, r, p + o + 8, (size_t)has);
            o += 8 + (size_t)has;
            continue;
        }
        mdl_event ev;
        memcpy(&ev, p + o + 4, sizeof ev);
        memcpy(&has, p + o + 4 + sizeof ev, 4);
        o += 8 + sizeof ev;
        ev.hidden = NULL;
        if (has) {
            if (!hid) hid = malloc(D * sizeof(float));
            if (hid) memcpy(hid, p + o, D * sizeof(float));
            ev.hidden = hid;
            o += D * sizeof(float);
        }
        if (ev.type == MDL_EV_DONE) {
            pthread_mutex_lock(&d->mu);
            const int i = where_find(d, ev.id);
            if (i >= 0) d->where[i] = d->where[--d->n_where];
            pthread_mutex_unlock(&d->mu);
        }
        d->cb(&ev, d->cb_arg);
    }
    free(hid);
}

typedef struct {
    int32_t work, ev_bytes;
    mdl_engine_stats st;
    dst_rank_info info;
} report;

static double rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return (double)res * (double)sysconf(_SC_PAGESIZE);
}

/* This rank's figures for its report (engine thread). */
static void refresh_me(dst *d, const mdl_engine_stats *st)
{
    const double now = pd_time_now();
    if (now - d->rss_at > 0.5) {
        d->me.rss_bytes = rss_bytes();
        d->rss_at = now;
    }
    if (d->step_t0 > 0) d->me.step_seconds += now - d->step_t0;
    d->step_t0 = now;
    d->me.exp0 = d->m->exp0;
    d->me.exp1 = d->m->exp1;
    d->me.running = st->running;
    d->me.waiting = st->waiting;
    d->me.free_blocks = st->free_blocks;
    d->me.total_blocks = st->total_blocks;
    d->me.steps = st->steps;
    d->me.prefill_tokens = st->prefill_tokens;
    d->me.decode_tokens = st->decode_tokens;
}

int dst_ranks_info(dst *d, dst_rank_info *out, int cap)
{
    pthread_mutex_lock(&d->mu);
    for (int r = 0; r < d->size && r < cap; r++) out[r] = d->info[r];
    pthread_mutex_unlock(&d->mu);
    return d->size;
}

typedef struct {
    int64_t stop, cmd_bytes;
} order;

static int hook_sync(void *arg, mdl_engine *e, int local_work, int stopping, int (*wait)(mdl_engine *e))
{
    dst *d = arg;
    static __thread int slack_set;
    if (!slack_set) { /* short sleeps between tests of a collective (dst__wait) */
        prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
        slack_set = 1;
    }
    const int n = d->size;
    if (d->rank) { /* what agents posted goes out with this report */
        pthread_mutex_lock(&d->post_mu);
        if (d->posts.len) pd_buf_append(&d->evs, d->posts.data, d->posts.len);
        if (d->evs.failed) MPI_Abort(MPI_COMM_WORLD, 71);
        pd_buf_reset(&d->posts);
        atomic_store(&d->posted, 0);
        pthread_mutex_unlock(&d->post_mu);
    }
    report me = {.work = local_work, .ev_bytes = (int32_t)d->evs.len};
    mdl_engine_get_local_stats(e, &me.st);
    refresh_me(d, &me.st);
    me.info = d->me;
    if (!d->rank && !d->sync_all) { /* sized by the rank count: once */
        d->sync_all = malloc((size_t)n * sizeof(report));
        d->sync_counts = calloc((size_t)n, sizeof *d->sync_counts);
        d->sync_displs = calloc((size_t)n, sizeof *d->sync_displs);
        if (!d->sync_all || !d->sync_counts || !d->sync_displs) MPI_Abort(MPI_COMM_WORLD, 72);
    }
    report *all = d->sync_all;
    int *counts = d->sync_counts, *displs = d->sync_displs;
    MPI_Request rq;
    MPI_Igather(&me, sizeof me, MPI_BYTE, all, sizeof me, MPI_BYTE, 0, MPI_COMM_WORLD, &rq);
    dst__wait(d, &rq, "the step's report", 0);
    char *evs = NULL;
    size_t total = 0;
    if (!d->rank) {
        for (int r = 0; r < n; r++) {
            displs[r] = (int)total;
            counts[r] = all[r].ev_bytes;
            total += (size_t)all[r].ev_bytes;
        }
        if (total + 1 > d->sync_evs_cap) { /* grows to the largest step's events, then stays */
            char *g = realloc(d->sync_evs, total + 1);
            if (!g) MPI_Abort(MPI_COMM_WORLD, 72);
            d->sync_evs = g;
            d->sync_evs_cap = total + 1;
        }
        evs = d->sync_evs;
    }
    MPI_Igatherv(d->evs.data, (int)d->evs.len, MPI_BYTE, evs, counts, displs, MPI_BYTE, 0, MPI_COMM_WORLD, &rq);
    dst__wait(d, &rq, "the ranks' events", 0);
    pd_buf_reset(&d->evs);
    order ord = {0, 0};
    pd_buf *cmds = &d->sync_cmds;
    if (!d->rank) {
        int any = local_work;
        pthread_mutex_lock(&d->mu);
        for (int r = 0; r < n; r++) d->info[r] = all[r].info;
        for (int r = 1; r < n; r++) {
            d->rst[r] = all[r].st;
            d->pend_load[r] = d->pend_blocks[r] = 0;
            any |= all[r].work;
        }
        d->rst[0].total_blocks = d->block_total;
        d->reported = 1;
        pthread_cond_broadcast(&d->stop_cv);
        pthread_mutex_unlock(&d->mu);
        for (int r = 1; r < n; r++) deliver_remote(d, r, evs + displs[r], (size_t)counts[r]);
        int stop = stopping;
        if (!any && !stop && !hook_pending(d)) stop = wait(e);
        pd_buf_reset(cmds);
        pthread_mutex_lock(&d->mu);
        const pd_buf queued = d->out; /* hand the queue over; last step's (emptied) buffer takes new commands */
        d->out = *cmds;
        *cmds = queued;
        pthread_mutex_unlock(&d->mu);
        ord.stop = stop;
        ord.cmd_bytes = (int64_t)cmds->len;
    }
    MPI_Ibcast(&ord, sizeof ord, MPI_BYTE, 0, MPI_COMM_WORLD, &rq);
    dst__wait(d, &rq, "rank 0's orders", 1);
    if (ord.cmd_bytes > 0) {
        char *cb = cmds->data; /* rank 0: the queue; ranks > 0: the gather buffer they do not use, grown to fit */
        if (d->rank && (size_t)ord.cmd_bytes > d->sync_evs_cap) {
            char *g = realloc(d->sync_evs, (size_t)ord.cmd_bytes);
            if (!g) MPI_Abort(MPI_COMM_WORLD, 72);
            d->sync_evs = g;
            d->sync_evs_cap = (size_t)ord.cmd_bytes;
        }
        if (d->rank) cb = d->sync_evs;
        MPI_Ibcast(cb, (int)ord.cmd_bytes, MPI_BYTE, 0, MPI_COMM_WORLD, &rq);
        dst__wait(d, &rq, "rank 0's commands", 0);
        if (d->rank) apply_commands(d, cb, (size_t)ord.cmd_bytes);
    }
    if (ord.stop) {
        pthread_mutex_lock(&d->mu);
        d->stopped = 1;
        pthread_cond_broadcast(&d->stop_cv);
        pthread_mutex_unlock(&d->mu);
        if (d->rank && d->agent.on_stop) d->agent.on_stop(d->agent.arg);
    }
    return !ord.stop;
}

pd_status dst_attach(dst *d, mdl_model *m, mdl_engine_opts *eo, mdl_event_cb *cb, void **cb_arg)
{
    d->m = m;
    d->block_size = eo->block_size;
    d->block_total = eo->n_blocks;
    if (d->ep_on && d->size > 1) {
        d->ep.moe = dst__ep_moe;
        d->ep.logits = dst__ep_logits;
        d->ep.embed = dst__ep_embed;
        m->ep = &d->ep;
        if (eo->draft_head_int8 && d->rank == 0)
            pd_warn("the int8 draft head copies the whole MTP head, which expert-parallel ranks split: drafts use "
                    "the checkpoint's head");
        eo->draft_head_int8 = 0;
    }
    d->hooks = (mdl_engine_dist){.arg = d,
                                 .rank = d->rank,
                                 .place = hook_place,
                                 .submit = hook_submit,
                                 .command = hook_command,
                                 .pending = hook_pending,
                                 .stats = hook_stats,
                                 .sync = hook_sync,
                                 .step_end = dst__step_end,
                                 .idle_poll = d->agent.on_rank_msg && d->size > 1 ? 2e-3 : 0};
    eo->dist = &d->hooks;
    if (d->rank == 0) {
        d->cb = *cb;
        d->cb_arg = *cb_arg;
    } else {
        *cb = ship_event;
        *cb_arg = d;
    }
    return PD_OK;
}

void dst_set_engine(dst *d, mdl_engine *e)
{
    d->eng = e;
    if (d->rank) return;
    /* rank 0 is ready once every rank's engine has reported (their first sync): requests are placed from then on */
    pthread_mutex_lock(&d->mu);
    while (!d->reported) pthread_cond_wait(&d->stop_cv, &d->mu);
    pthread_mutex_unlock(&d->mu);
}

void dst_log_rank(dst *d, const char *name, const mdl_model *m)
{
    if (d->ep_on)
        pd_info("%s rank %d of %d: routed experts %d..%d of %d, %.0f MiB resident", name, d->rank, d->size, m->exp0,
                m->exp1 - 1, m->cfg.n_routed_experts, rss_bytes() / 1048576.0);
    else
        pd_info("%s rank %d of %d: every routed expert (no --enable-expert-parallel), %.0f MiB resident", name, d->rank,
                d->size, rss_bytes() / 1048576.0);
}

void dst_wait_stop(dst *d)
{
    pthread_mutex_lock(&d->mu);
    while (!d->stopped) pthread_cond_wait(&d->stop_cv, &d->mu);
    pthread_mutex_unlock(&d->mu);
}

/* ---- agents' messages ---------------------------------------------------------------------------------------- */

void dst_set_agent(dst *d, const dst_agent *a) { d->agent = *a; }

/* Appends a header and a message whole, or nothing (PD_ERR_NOMEM; the buffer stays usable). */
static pd_status append_whole(pd_buf *b, const void *head, size_t hn, const void *msg, size_t n)
{
    const size_t len0 = b->len;
    pd_buf_append(b, head, hn);
    pd_buf_append(b, msg, n);
    if (!b->failed) return PD_OK;
    b->len = len0;
    b->failed = 0;
    return PD_ERR_NOMEM;
}

pd_status dst_send(dst *d, int rank, const void *msg, size_t len)
{
    cmd_head h = {rank, 'x', (uint64_t)len};
    pthread_mutex_lock(&d->mu);
    const pd_status st = append_whole(&d->out, &h, sizeof h, msg, len);
    pthread_mutex_unlock(&d->mu);
    if (st == PD_OK && d->eng) mdl_engine_wake(d->eng);
    return st;
}

pd_status dst_post(dst *d, const void *msg, size_t len)
{
    const int32_t head[2] = {DST_REC_MSG, (int32_t)len};
    pthread_mutex_lock(&d->post_mu);
    const pd_status st = append_whole(&d->posts, head, sizeof head, msg, len);
    if (st == PD_OK) atomic_store(&d->posted, 1);
    pthread_mutex_unlock(&d->post_mu);
    return st;
}

void dst_set_rank_kv(dst *d, int rank, int ok)
{
    pthread_mutex_lock(&d->mu);
    if (rank > 0 && rank < d->size) d->kv_ok[rank] = ok;
    pthread_mutex_unlock(&d->mu);
}

int dst_rank_of(dst *d, uint64_t id)
{
    pthread_mutex_lock(&d->mu);
    const int i = where_find(d, id);
    const int r = i >= 0 ? d->where[i].rank : 0;
    pthread_mutex_unlock(&d->mu);
    return r;
}
