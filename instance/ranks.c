/* The KV of a multi-rank instance: every rank registers its own pool, and a sequence's blocks move straight between
 * the rank that holds them and the peer's rank (docs/scaling.md). Rank 0 keeps every request's lifecycle; a rank > 0
 * runs an agent that carries out rank 0's transfers from its pool and reports what its region hears (ready notices,
 * aborts, failed peers) and which blocks a request reserved there. Agents talk over dist/'s messages, which ride the
 * engines' step syncs; on each rank the KV context lives on that rank's main thread (an event loop). */
#include <string.h>

#include "instance/inst.h"

/* ---- the messages ------------------------------------------------------------------------------------------
 * The ranks of one job run one build, so these structs cross as bytes. Rank > 0 -> rank 0: 'D' (n: descriptor
 * bytes, 0 when the rank has no region), 'R' (n: block ids), 'E', 'X'. Rank 0 -> rank > 0: 'S', 'C'. */
enum { RK_DESC = 'D', RK_RESERVED = 'R', RK_KV_EVENT = 'E', RK_XFER_DONE = 'X', RK_XFER_START = 'S', RK_CANCEL = 'C' };

typedef struct {
    int32_t kind, n;
    uint64_t id;
} rk_head; /* 'D' + n bytes; 'R' + n int32 blocks of request id */

typedef struct {
    int32_t kind, type, status, pad;
    uint64_t peer_id, tag, len;
} rk_event; /* + len payload bytes */

typedef struct {
    int32_t kind, status;
    uint64_t xid;
} rk_done; /* also 'C' (status unused) */

typedef struct {
    int32_t kind, from, upto, desc_len;
    uint64_t xid, id, tag, notice_len;
    double timeout;
} rk_start; /* + int32 dst[upto - from], desc_len bytes of descriptor, notice_len bytes of notice */

struct inst_xfer {
    inst_xfer *next;
    inst *in;
    uint64_t xid;
    int rank;
    kv_xfer_t kx; /* rank 0's own */
    inst_xfer_cb cb;
    void *arg;
};

/* The blocks [from, upto) of engine request id, as copies from pool into dst. NULL with *st set on failure. */
static kv_block *blocks_of(mdl_engine *e, uint64_t id, int from, int upto, const int *dst, pd_status *st)
{
    const size_t bb = mdl_engine_pool(e)->block_bytes;
    int *src = malloc((size_t)PD_MAX(upto, 1) * sizeof *src);
    kv_block *b = malloc((size_t)PD_MAX(upto - from, 1) * sizeof *b);
    *st = src && b ? PD_OK : PD_ERR_NOMEM;
    if (*st == PD_OK && mdl_engine_blocks(e, id, src, upto) < upto) *st = PD_ERR_INTERNAL; /* ended meanwhile */
    for (int i = from; *st == PD_OK && i < upto; i++)
        b[i - from] = (kv_block){(uint64_t)src[i] * bb, (uint64_t)dst[i - from] * bb, bb};
    free(src);
    if (*st != PD_OK) {
        free(b);
        return NULL;
    }
    return b;
}

void inst__kv_params(const inst_role *role, const inst_opts *o, const mdl_model *m, kv_params_t *kp)
{
    memset(kp, 0, sizeof *kp);
    kp->field_mask = KV_PARAM_FIELD_MAX_NOTICE;
    kp->max_notice = 4096 + (size_t)m->cfg.hidden_size * sizeof(float);
    if (role->kv_xfer_timeout > 0) {
        kp->field_mask |= KV_PARAM_FIELD_XFER_TIMEOUT;
        kp->xfer_timeout = role->kv_xfer_timeout;
    }
    if (o->kv_proto && kv_proto_parse(o->kv_proto, &kp->proto) == PD_OK) kp->field_mask |= KV_PARAM_FIELD_PROTO;
}

/* ---- rank 0 --------------------------------------------------------------------------------------------------- */

const char *inst_rank_desc(const inst *in, int rank)
{
    if (rank <= 0 || !in->rank_desc) return in->desc;
    return in->rank_desc[rank];
}

int inst_req_rank(const inst *in, uint64_t id) { return in->o->dist ? dst_rank_of(in->o->dist, id) : 0; }

static void xfer_unlink(inst *in, inst_xfer *x)
{
    for (inst_xfer **pp = &in->xfers; *pp; pp = &(*pp)->next)
        if (*pp == x) {
            *pp = x->next;
            return;
        }
}

static void xfer_end(inst_xfer *x, pd_status st)
{
    xfer_unlink(x->in, x);
    x->cb(x, st, x->arg);
    free(x);
}

static void local_done(kv_xfer_t kx, pd_status st, void *arg)
{
    (void)kx;
    xfer_end(arg, st);
}

pd_status inst_xfer_start(inst *in, const inst_xfer_params *p, inst_xfer **out)
{
    if (in->closing || !in->kv) return PD_ERR_CANCELED;
    inst_xfer *x = calloc(1, sizeof *x);
    if (!x) return PD_ERR_NOMEM;
    *x = (inst_xfer){.in = in, .xid = ++in->next_xid, .rank = p->rank, .cb = p->cb, .arg = p->arg};
    pd_status st = PD_OK;
    if (p->rank == 0) {
        kv_block *b = p->upto > p->from ? blocks_of(in->eng, p->id, p->from, p->upto, p->dst, &st) : NULL;
        kv_xfer_params_t kp = {.field_mask = KV_XFER_FIELD_TAG | (p->notice ? KV_XFER_FIELD_NOTICE : 0) |
                                   (p->timeout > 0 ? KV_XFER_FIELD_TIMEOUT : 0),
                               .local = in->region,
                               .remote = p->remote,
                               .blocks = b,
                               .n_blocks = (size_t)PD_MAX(p->upto - p->from, 0),
                               .tag = p->tag,
                               .notice = p->notice,
                               .notice_len = p->notice_len,
                               .timeout = p->timeout,
                               .cb = local_done,
                               .arg = x};
        if (st == PD_OK) st = kv_xfer_start(in->kv, &kp, &x->kx);
        free(b);
    } else {
        const int n = PD_MAX(p->upto - p->from, 0);
        const size_t dl = strlen(p->desc), len = sizeof(rk_start) + (size_t)n * 4 + dl + p->notice_len;
        char *m = malloc(len);
        if (!m) {
            st = PD_ERR_NOMEM;
        } else {
            rk_start h = {RK_XFER_START, p->from, p->upto,       (int32_t)dl, x->xid,
                          p->id,         p->tag,  p->notice_len, p->timeout};
            memcpy(m, &h, sizeof h);
            memcpy(m + sizeof h, p->dst, (size_t)n * 4);
            memcpy(m + sizeof h + (size_t)n * 4, p->desc, dl);
            if (p->notice_len) memcpy(m + sizeof h + (size_t)n * 4 + dl, p->notice, p->notice_len);
            st = dst_send(in->o->dist, p->rank, m, len);
            free(m);
        }
    }
    if (st != PD_OK) {
        free(x);
        return st;
    }
    x->next = in->xfers;
    in->xfers = x;
    if (out) *out = x;
    return PD_OK;
}

void inst_xfer_cancel(inst *in, inst_xfer *x)
{
    if (x->rank == 0) {
        kv_xfer_cancel(x->kx);
        return;
    }
    rk_done c = {RK_CANCEL, 0, x->xid};
    if (dst_send(in->o->dist, x->rank, &c, sizeof c) != PD_OK) /* it ends anyway: by its timeout */
        pd_warn("%s: out of memory cancelling a transfer on rank %d", in->role.name, x->rank);
}

/* Engine thread: a rank's message. Descriptors are taken here (start-up waits for them); the rest go to the loop. */
static void rank0_msg(void *arg, int rank, const void *msg, size_t len)
{
    inst *in = arg;
    rk_head h;
    if (len < sizeof(int32_t)) return;
    memcpy(&h, msg, len < sizeof h ? len : sizeof h);
    if (h.kind == RK_DESC && len >= sizeof h) {
        char *desc = strndup((const char *)msg + sizeof h, (size_t)h.n);
        pthread_mutex_lock(&in->rank_mu);
        if (!in->rank_desc[rank]) in->n_rank_desc++;
        free(in->rank_desc[rank]);
        in->rank_desc[rank] = desc;
        pthread_cond_broadcast(&in->rank_cv);
        pthread_mutex_unlock(&in->rank_mu);
        dst_set_rank_kv(in->o->dist, rank, desc && desc[0]);
        return;
    }
    char *copy = malloc(sizeof(int32_t) * 2 + len);
    if (!copy) {
        pd_error("%s: out of memory taking a message of rank %d (%zu bytes); dropped", in->role.name, rank, len);
        return;
    }
    const int32_t head[2] = {rank, (int32_t)len};
    memcpy(copy, head, sizeof head);
    memcpy(copy + sizeof head, msg, len);
    if (pd_mailbox_post(in->rank_mb, &copy) != PD_OK) {
        pd_error("%s: message queue full; a message of rank %d dropped", in->role.name, rank);
        free(copy);
    }
}

/* Loop thread: a rank's reservation, transfer outcome or region event. */
static void on_rank_mail(void *msg, void *arg)
{
    inst *in = arg;
    char *m = *(char **)msg;
    int32_t head[2];
    memcpy(head, m, sizeof head);
    const char *p = m + sizeof head;
    const size_t len = (size_t)head[1];
    int32_t kind;
    memcpy(&kind, p, 4);
    if (in->closing) {
    } else if (kind == RK_RESERVED && len >= sizeof(rk_head)) {
        rk_head h;
        memcpy(&h, p, sizeof h);
        h.n = (int32_t)PD_MIN((size_t)PD_MAX(h.n, 0), (len - sizeof h) / sizeof(int));
        inst_req *r = inst_req_find(in, h.id);
        int *blocks = malloc((size_t)PD_MAX(h.n, 1) * sizeof *blocks);
        if (blocks) memcpy(blocks, p + sizeof h, (size_t)h.n * sizeof *blocks);
        if (r && blocks && in->role.reserved) in->role.reserved(in, r, head[0], blocks, h.n);
        else if (r && !blocks) mdl_engine_abort(in->eng, h.id);
        free(blocks);
    } else if (kind == RK_XFER_DONE && len >= sizeof(rk_done)) {
        rk_done d;
        memcpy(&d, p, sizeof d);
        inst_xfer *x = in->xfers;
        while (x && x->xid != d.xid) x = x->next;
        if (x) xfer_end(x, (pd_status)d.status);
    } else if (kind == RK_KV_EVENT && len >= sizeof(rk_event) && in->role.kv_event_cb) {
        rk_event e;
        memcpy(&e, p, sizeof e);
        e.len = PD_MIN(e.len, len - sizeof e);
        kv_event ev = {.type = (kv_event_type)e.type,
                       .status = (pd_status)e.status,
                       .peer_id = e.peer_id,
                       .tag = e.tag,
                       .payload = e.len ? p + sizeof e : NULL,
                       .payload_len = e.len};
        in->role.kv_event_cb(in->kv, &ev, in);
    }
    free(m);
}

pd_status inst__ranks_open(inst *in)
{
    dst *d = in->o->dist;
    const int n = dst_size(d);
    pthread_mutex_init(&in->rank_mu, NULL);
    pthread_cond_init(&in->rank_cv, NULL);
    if (!(in->rank_desc = calloc((size_t)n, sizeof *in->rank_desc))) return PD_ERR_NOMEM;
    pd_status st = pd_mailbox_create(in->base, sizeof(char *), on_rank_mail, in, &in->rank_mb);
    if (st != PD_OK) return st;
    dst_agent a = {.arg = in, .on_rank_msg = rank0_msg};
    dst_set_agent(d, &a);
    return PD_OK;
}

pd_status inst__ranks_wait(inst *in)
{
    dst *d = in->o->dist;
    const int n = dst_size(d);
    const double limit = in->o->collective_timeout > 0 ? in->o->collective_timeout : 60;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)limit;
    pthread_mutex_lock(&in->rank_mu);
    int rc = 0;
    while (in->n_rank_desc < n - 1 && rc == 0) rc = pthread_cond_timedwait(&in->rank_cv, &in->rank_mu, &ts);
    pd_buf none = {0};
    for (int r = 1; r < n; r++)
        if (!in->rank_desc[r] || !in->rank_desc[r][0]) pd_buf_printf(&none, "%s%d", none.len ? ", " : "", r);
    const int said = in->n_rank_desc;
    pthread_mutex_unlock(&in->rank_mu);
    pd_status st = PD_OK;
    if (said < n - 1) {
        pd_error("%s: %d of %d ranks did not report their KV region within %.0f s", in->role.name, n - 1 - said, n - 1,
                 limit);
        st = PD_ERR_TIMEOUT;
    } else if (none.len && !in->role.kv_optional) {
        pd_error("%s: KV transfer unavailable on rank%s %s", in->role.name, strchr(none.data, ',') ? "s" : "",
                 none.data);
        st = PD_ERR_TRANSPORT;
    } else if (none.len) {
        pd_warn("%s: KV transfer unavailable on rank%s %s; PD requests go to the other ranks", in->role.name,
                strchr(none.data, ',') ? "s" : "", none.data);
    }
    pd_buf_free(&none);
    return st;
}

void inst__ranks_close(inst *in)
{
    in->closing = 1;
    while (in->xfers) { /* rank 0's own ended with its context; these were on ranks that stop with us */
        inst_xfer *x = in->xfers;
        if (x->rank == 0) {
            xfer_unlink(in, x); /* never: the context's destruction ended them */
            free(x);
            continue;
        }
        xfer_end(x, PD_ERR_CANCELED);
    }
    if (!in->rank_desc) return;
    pd_mailbox_flush(in->rank_mb); /* closing: only frees */
    pd_mailbox_destroy(in->rank_mb);
    in->rank_mb = NULL;
    for (int r = 0; r < dst_size(in->o->dist); r++) free(in->rank_desc[r]);
    free(in->rank_desc);
    in->rank_desc = NULL;
    pthread_mutex_destroy(&in->rank_mu);
    pthread_cond_destroy(&in->rank_cv);
}

/* ---- a rank > 0 --------------------------------------------------------------------------------------------- */

typedef struct wxfer {
    struct wxfer *next;
    uint64_t xid;
    kv_xfer_t kx;
    struct worker *w;
} wxfer;

typedef struct worker {
    dst *d;
    int rank;
    const char *name;
    struct event_base *base;
    pd_mailbox *mb; /* rank 0's messages (malloc'd copies), engine thread -> this loop; NULL: leave the loop */
    mdl_engine *eng;
    kv_context_t kv;
    kv_region_t region;
    wxfer *xfers;
    int relay; /* the role hears region events (decode) */
} worker;

static void post_or_abort(worker *w, const void *msg, size_t len)
{
    if (dst_post(w->d, msg, len) != PD_OK) dst_abort(w->d, "out of memory holding a message for rank 0");
}

static void w_xfer_done(kv_xfer_t kx, pd_status st, void *arg)
{
    (void)kx;
    wxfer *x = arg;
    worker *w = x->w;
    rk_done d = {RK_XFER_DONE, (int32_t)st, x->xid};
    post_or_abort(w, &d, sizeof d);
    for (wxfer **pp = &w->xfers; *pp; pp = &(*pp)->next)
        if (*pp == x) {
            *pp = x->next;
            break;
        }
    free(x);
}

static void w_start(worker *w, const char *m, size_t len)
{
    rk_start h;
    memcpy(&h, m, sizeof h);
    const int n = PD_MAX(h.upto - h.from, 0);
    pd_status st = PD_OK;
    kv_remote_t remote = NULL;
    kv_block *b = NULL;
    wxfer *x = calloc(1, sizeof *x);
    int32_t *dst = malloc((size_t)PD_MAX(n, 1) * sizeof *dst);
    char *desc = NULL;
    if (len < sizeof h + (size_t)n * 4 + (size_t)h.desc_len + h.notice_len || !x || !dst) {
        st = x && dst ? PD_ERR_FORMAT : PD_ERR_NOMEM;
    } else {
        memcpy(dst, m + sizeof h, (size_t)n * 4);
        desc = strndup(m + sizeof h + (size_t)n * 4, (size_t)h.desc_len);
        st = desc ? PD_OK : PD_ERR_NOMEM;
    }
    if (st == PD_OK && !w->kv) st = PD_ERR_TRANSPORT;
    if (st == PD_OK && n > 0 && !(b = blocks_of(w->eng, h.id, h.from, h.upto, dst, &st)))
        pd_warn("%s rank %d: request %llu's blocks: %s", w->name, w->rank, (unsigned long long)h.id, pd_status_str(st));
    if (st == PD_OK) st = kv_remote_create(w->kv, desc, &remote);
    if (st == PD_OK) {
        *x = (wxfer){.xid = h.xid, .w = w};
        kv_xfer_params_t kp = {.field_mask = KV_XFER_FIELD_TAG | (h.notice_len ? KV_XFER_FIELD_NOTICE : 0) |
                                   (h.timeout > 0 ? KV_XFER_FIELD_TIMEOUT : 0),
                               .local = w->region,
                               .remote = remote,
                               .blocks = b,
                               .n_blocks = (size_t)n,
                               .tag = h.tag,
                               .notice = h.notice_len ? m + sizeof h + (size_t)n * 4 + (size_t)h.desc_len : NULL,
                               .notice_len = h.notice_len,
                               .timeout = h.timeout,
                               .cb = w_xfer_done,
                               .arg = x};
        st = kv_xfer_start(w->kv, &kp, &x->kx);
    }
    kv_remote_destroy(remote); /* a started transfer holds its own reference */
    free(b);
    free(dst);
    free(desc);
    if (st == PD_OK) {
        x->next = w->xfers;
        w->xfers = x;
        return;
    }
    free(x);
    rk_done d = {RK_XFER_DONE, (int32_t)st, h.xid};
    post_or_abort(w, &d, sizeof d);
}

/* Loop thread: rank 0's message for this rank, or NULL: the engines stopped. */
static void w_mail(void *msg, void *arg)
{
    worker *w = arg;
    char *m = *(char **)msg;
    if (!m) {
        event_base_loopexit(w->base, NULL);
        return;
    }
    size_t len;
    memcpy(&len, m, sizeof len);
    const char *p = m + sizeof len;
    int32_t kind;
    memcpy(&kind, p, 4);
    if (kind == RK_XFER_START && len >= sizeof(rk_start)) {
        w_start(w, p, len);
    } else if (kind == RK_CANCEL && len >= sizeof(rk_done)) {
        rk_done c;
        memcpy(&c, p, sizeof c);
        for (wxfer *x = w->xfers; x; x = x->next)
            if (x->xid == c.xid) {
                kv_xfer_cancel(x->kx);
                break;
            }
    }
    free(m);
}

/* Engine thread: rank 0's message; carried out on the loop, which owns the KV context. */
static void w_msg(void *arg, const void *msg, size_t len)
{
    worker *w = arg;
    char *copy = malloc(sizeof len + len);
    if (copy) {
        memcpy(copy, &len, sizeof len);
        memcpy(copy + sizeof len, msg, len);
    }
    if (!copy || pd_mailbox_post(w->mb, &copy) != PD_OK) {
        free(copy);
        dst_abort(w->d, "out of memory taking a message of rank 0");
    }
}

/* Engine thread: a REMOTE_KV request admitted here; rank 0 tells its peer where to write. */
static void w_admitted(void *arg, uint64_t id, mdl_req_mode mode)
{
    worker *w = arg;
    if (mode != MDL_REQ_REMOTE_KV) return;
    mdl_engine *e = __atomic_load_n(&w->eng, __ATOMIC_ACQUIRE);
    const int cap = mdl_engine_pool(e)->n_blocks;
    char *m = malloc(sizeof(rk_head) + (size_t)cap * sizeof(int));
    if (!m) dst_abort(w->d, "out of memory reporting a reservation");
    const int n = mdl_engine_blocks(e, id, (int *)(void *)(m + sizeof(rk_head)), cap);
    rk_head h = {RK_RESERVED, PD_MAX(n, 0), id};
    memcpy(m, &h, sizeof h);
    post_or_abort(w, m, sizeof h + (size_t)h.n * sizeof(int));
    free(m);
}

static void w_stop(void *arg)
{
    worker *w = arg;
    char *none = NULL;
    if (pd_mailbox_post(w->mb, &none) != PD_OK) dst_abort(w->d, "out of memory stopping");
}

/* Loop thread: what this rank's region hears goes to rank 0's role (a notice of a batch that is not the last has no
 * payload and nothing to say). */
static void w_kv_event(kv_context_t ctx, const kv_event *ev, void *arg)
{
    (void)ctx;
    worker *w = arg;
    if (ev->type == KV_EVENT_NOTICE && ev->payload_len == 0) return;
    const size_t len = sizeof(rk_event) + ev->payload_len;
    char *m = malloc(len);
    if (!m) dst_abort(w->d, "out of memory relaying a KV event");
    rk_event e = {RK_KV_EVENT, (int32_t)ev->type, (int32_t)ev->status, 0, ev->peer_id, ev->tag, ev->payload_len};
    memcpy(m, &e, sizeof e);
    if (ev->payload_len) memcpy(m + sizeof e, ev->payload, ev->payload_len);
    post_or_abort(w, m, len);
    free(m);
}

/* The context on this rank's loop and a region: over mem, or (NULL) allocated by the context. On failure the rank
 * serves without one and rank 0 decides (some roles need every rank's KV). */
static void w_kv_open(worker *w, const inst_role *role, const inst_opts *o, const mdl_model *m, void *mem, size_t bytes)
{
    kv_params_t kp;
    inst__kv_params(role, o, m, &kp);
    if (w->relay) {
        kp.field_mask |= KV_PARAM_FIELD_EVENT_CB;
        kp.event_cb = w_kv_event;
        kp.event_arg = w;
    }
    pd_status st = kv_context_create(&kp, &w->kv);
    if (st == PD_OK) st = kv_context_attach(w->kv, w->base);
    if (st == PD_OK)
        st = mem ? kv_region_create(w->kv, mem, bytes, &w->region) : kv_region_alloc(w->kv, bytes, &w->region);
    if (st != PD_OK) {
        pd_warn("%s rank %d: KV transfer unavailable: %s", w->name, w->rank, pd_status_str(st));
        kv_region_destroy(w->region);
        kv_context_destroy(w->kv);
        w->region = NULL;
        w->kv = NULL;
    }
}

static void w_post_desc(worker *w)
{
    char *desc = NULL;
    if (w->region && kv_region_descriptor(w->region, &desc) != PD_OK) desc = NULL;
    const size_t n = desc ? strlen(desc) : 0;
    char *m = malloc(sizeof(rk_head) + n);
    if (!m) dst_abort(w->d, "out of memory reporting the KV region");
    rk_head h = {RK_DESC, (int32_t)n, 0};
    memcpy(m, &h, sizeof h);
    if (n) memcpy(m + sizeof h, desc, n);
    post_or_abort(w, m, sizeof h + n);
    free(m);
    free(desc);
}

/* A rank > 0 of a multi-rank instance: its model share, engine and KV region, no listener; runs its loop (the KV
 * context and rank 0's transfer orders) until rank 0 stops. The collectives are those of inst_create and
 * start_engine, in the same order. */
int inst__serve_worker(const inst_program *p, dst *d)
{
    inst_opts *o = p->opts;
    inst_role role = {0};
    p->role(p->arg, &role);
    worker w = {.d = d, .rank = dst_rank(d), .name = p->name, .relay = role.kv_event_cb != NULL};
    char err[1024];
    mdl_model *m = NULL;
    mdl_engine_opts eo;
    mdl_engine *e = NULL;
    if (!(w.base = event_base_new()) || pd_mailbox_create(w.base, sizeof(char *), w_mail, &w, &w.mb) != PD_OK)
        dst_abort(d, "cannot create an event loop");
    const pd_log_level lvl = pd_log_get_level();
    pd_log_set_level(PD_LOG_OFF); /* rank 0 says what every rank meets; dst_all_ok_err says what only this one met */
    pd_status st = mdl_serve_load(&o->serve, &m, &eo, err, sizeof err);
    pd_log_set_level(lvl);
    if ((st = dst_all_ok_err(d, st, err, "load the model")) == PD_OK) st = dst_agree_model(d, m);
    if (st == PD_OK && (st = dst_all_ok(d, PD_OK, "prepare the engine")) == PD_OK) st = dst_share_engine_opts(d, &eo);
    if (st != PD_OK) {
        mdl_model_destroy(m);
        pd_mailbox_destroy(w.mb);
        event_base_free(w.base);
        return 1;
    }
    if (role.pool_in_region) { /* decode: the pool in a region the context allocates, as on rank 0 */
        w_kv_open(&w, &role, o, m, NULL,
                  mdl_kv_pool_bytes(&m->cfg, m->n_mtp, m->opts.kv_type, eo.block_size, mdl_engine_pool_blocks(&eo)));
        eo.kv_mem = w.region ? kv_region_base(w.region) : NULL;
    }
    dst_agent a = {.arg = &w, .on_msg = w_msg, .on_admitted = w_admitted, .on_stop = w_stop};
    dst_set_agent(d, &a);
    mdl_event_cb cb = NULL;
    void *cb_arg = NULL;
    dst_attach(d, m, &eo, &cb, &cb_arg);
    if ((st = mdl_engine_create(m, &eo, cb, cb_arg, &e)) != PD_OK) {
        pd_error("%s rank %d: cannot start the engine: %s", p->name, w.rank, pd_status_str(st));
        dst_abort(d, "an engine did not start");
    }
    __atomic_store_n(&w.eng, e, __ATOMIC_RELEASE);
    dst_set_engine(d, e);
    dst_log_rank(d, p->name, m);
    if (!role.pool_in_region) { /* prefill: the region registers the engine's pool */
        mdl_kv_pool *pool = mdl_engine_pool(e);
        w_kv_open(&w, &role, o, m, pool->base, pool->block_bytes * (size_t)pool->n_blocks);
    }
    w_post_desc(&w);
    event_base_dispatch(w.base);
    dst_wait_stop(d);
    if (role.pool_in_region) { /* the engine computes into the region's memory: it goes first */
        mdl_engine_destroy(e);
        kv_region_destroy(w.region);
        kv_context_destroy(w.kv);
    } else { /* transfers read the engine's pool: they end first */
        kv_region_destroy(w.region);
        kv_context_destroy(w.kv);
        mdl_engine_destroy(e);
    }
    pd_mailbox_flush(w.mb);
    pd_mailbox_destroy(w.mb);
    event_base_free(w.base);
    mdl_model_destroy(m);
    return 0;
}
