/* Prefill instance: HTTP control API (/internal/prefill), engine events -> KV transfers into the decode
 * instance's blocks. Blocks of finished chunks go out while later chunks compute; the last batch carries the
 * ready notice and starts only after every earlier batch has landed, so the notice always follows all data.
 * Local blocks are released only once no transfer reads them. Everything but compute runs on the loop. */
#include <event2/keyvalq_struct.h>
#include <string.h>

#include "common/pd_http.h"
#include "common/pd_mailbox.h"
#include "kvtransfer/kv.h"
#include "prefill/preq_state.h"
#include "prefill/server.h"

typedef struct preq {
    inst_req base;             /* id: the engine's; ext_id: the router's; http: the reply pending */
    inst *in;
    pf_machine m;              /* the lifecycle: prefill/preq_state.h */
    int depth;                 /* steps in progress (an action's outcome can step again): free at the outermost */
    char why[192];             /* the failure's message (m.msg points here) */
    uint64_t tag;              /* the decode instance's request number */
    kv_remote_t remote;        /* the decode region, imported here: we hear at once if it goes */
    char *desc;                /* its descriptor (another rank of ours imports it) */
    int rank;                  /* our rank holding the request's blocks (0: this process) */
    int *dst;                  /* decode blocks, in order */
    int n_dst;
    int n_src;                 /* our blocks */
    int sent;                  /* blocks handed to transfers */
    int blocks_done;           /* blocks the engine has finished */
    inst_xfer *xfers[8];
    mdl_handoff h;
    float *hidden;
    int n_prompt;
    double t0, t_prefilled, t_xfer0;
    double eng_queue, eng_prefill; /* the engine's queue and compute times */
    double not_after;          /* wall clock: the decode instance gives the reservation up then (0: no limit) */
    struct event *deadline;
} preq;

static void preq_free(preq *r)
{
    if (!r) return;
    if (r->deadline) event_free(r->deadline);
    kv_remote_destroy(r->remote);
    free(r->desc);
    free(r->dst);
    free(r->hidden);
    free(r);
}

static int active(const preq *r) { return r->m.state < PF_DELIVERED; }

static void step(preq *r, pf_event ev, int status, const char *msg, int dest_dead);

static void reply(preq *r)
{
    struct evhttp_request *req = inst_req_take_http(&r->base);
    if (!req) return;
    if (r->m.status != 200) {
        pd_http_reply_error(req, r->m.status, NULL, NULL, "%s", r->m.msg);
        return;
    }
    double now = pd_time_now();
    pd_info("prefill %s: %d prompt tokens, %d blocks, prefill %.3f s, transfer %.3f s", r->base.ext_id, r->n_prompt,
            r->n_src, r->t_prefilled - r->t0, now - r->t_xfer0);
    pd_histogram_observe(r->in->metrics->kv_xfer_time, NULL, now - r->t_prefilled);
    pd_histogram_observe(r->in->metrics->kv_xfer_duration, NULL, now - r->t_xfer0);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "first_token", r->h.first_token);
    cJSON_AddNumberToObject(o, "prompt_tokens", r->n_prompt);
    /* queue: waiting for the engine; prefill: compute; transfer: what the transfer added after the compute
     * (prefill end -> notice delivered); transfer_total: first block put -> notice delivered */
    cJSON *t = cJSON_AddObjectToObject(o, "timing");
    cJSON_AddNumberToObject(t, "queue_s", r->eng_queue);
    cJSON_AddNumberToObject(t, "prefill_s", r->eng_prefill);
    cJSON_AddNumberToObject(t, "transfer_s", now - r->t_prefilled);
    cJSON_AddNumberToObject(t, "transfer_total_s", now - r->t_xfer0);
    if (cJSON_GetObjectItemCaseSensitive(t, "transfer_total_s")) pd_http_reply_json(req, 200, o);
    else pd_http_reply_error(req, 503, NULL, NULL, "out of memory");
    cJSON_Delete(o);
}

static void xfer_cb(inst_xfer *x, pd_status st, void *arg)
{
    preq *r = arg;
    for (int i = 0; i < (int)PD_ARRAY_LEN(r->xfers); i++)
        if (r->xfers[i] == x) r->xfers[i] = NULL;
    if (st == PD_OK) {
        step(r, PF_EV_XFER_OK, 0, NULL, 0);
        return;
    }
    char msg[160];
    snprintf(msg, sizeof msg, "KV transfer to the decode instance failed: %s", pd_status_str(st));
    if (active(r)) pd_counter_add(r->in->metrics->kv_failures, NULL, 1);
    step(r, PF_EV_XFER_FAILED, 503, msg, st == PD_ERR_PEER || st == PD_ERR_TRANSPORT);
}

static void abandon_cb(inst_xfer *x, pd_status st, void *arg)
{
    (void)x;
    preq *r = arg;
    if (st != PD_OK) pd_debug("prefill %s: abandon notice not delivered: %s", r->base.ext_id, pd_status_str(st));
    step(r, PF_EV_ABANDON_DONE, 0, NULL, 0);
}

/* Tells the decode instance, after every transfer of r has ended, that no ready notice will come, so it frees
 * the blocks it reserved at once instead of waiting out a timeout. */
static void send_abandon(preq *r)
{
    mdl_handoff h = {.req_id = r->tag, .first_token = -1};
    void *notice = NULL;
    size_t nlen = 0;
    pd_status st = mdl_handoff_encode(&h, &notice, &nlen);
    if (st == PD_OK) {
        inst_xfer_params p = {.rank = r->rank, .id = r->base.id, .desc = r->desc, .remote = r->remote, .tag = r->tag,
                              .notice = notice, .notice_len = nlen, .cb = abandon_cb, .arg = r};
        st = inst_xfer_start(r->in, &p, NULL);
        free(notice);
    }
    if (st != PD_OK) step(r, PF_EV_ABANDON_DONE, 0, NULL, 0); /* no way to tell it: it times the reservation out */
}

static void start_failed(preq *r, int status, const char *what, pd_status st)
{
    char msg[160];
    snprintf(msg, sizeof msg, "%s%s", what, st == PD_OK ? "" : pd_status_str(st));
    step(r, PF_EV_XFER_START_FAILED, status, msg, 0);
}

/* Sends our blocks [sent, upto) into the decode blocks; with_notice: the ready notice follows them. */
static void start_xfer(preq *r, int upto, int with_notice)
{
    inst *s = r->in;
    int slot = -1;
    for (int i = 0; i < (int)PD_ARRAY_LEN(r->xfers); i++)
        if (!r->xfers[i]) slot = i;
    int n = upto - r->sent;
    void *notice = NULL;
    size_t nlen = 0;
    if (slot < 0 || (with_notice && mdl_handoff_encode(&r->h, &notice, &nlen) != PD_OK)) {
        start_failed(r, 503, slot < 0 ? "no KV transfer slot free" : "out of memory", PD_OK);
        return;
    }
    mdl_kv_pool *pool = mdl_engine_pool(s->eng);
    inst_xfer_params p = {.rank = r->rank, .id = r->base.id, .from = r->sent, .upto = upto, .dst = r->dst + r->sent,
                          .desc = r->desc, .remote = r->remote, .tag = r->tag, .notice = notice, .notice_len = nlen,
                          .timeout = s->role.kv_xfer_timeout, .cb = xfer_cb, .arg = r};
    if (r->t_xfer0 == 0) r->t_xfer0 = pd_time_now();
    pd_status st = inst_xfer_start(s, &p, &r->xfers[slot]);
    free(notice);
    if (st != PD_OK) {
        pd_counter_add(s->metrics->kv_failures, NULL, 1);
        start_failed(r, st == PD_ERR_RANGE ? 400 : 503, "cannot start the KV transfer: ", st);
        return;
    }
    r->sent = upto;
    pd_counter_add(s->metrics->kv_bytes, NULL, (double)n * (double)pool->block_bytes);
}

static void perform(preq *r, int act)
{
    if (act & PF_ACT_FAILED) pd_warn("prefill %s: %s", r->base.ext_id, r->m.msg);
    if (act & PF_ACT_REPLY) reply(r);
    if (act & PF_ACT_CANCEL)
        for (int i = 0; i < (int)PD_ARRAY_LEN(r->xfers); i++)
            if (r->xfers[i]) inst_xfer_cancel(r->in, r->xfers[i]);
    if (act & PF_ACT_SEND_BLOCKS) start_xfer(r, PD_MIN(r->blocks_done, r->n_src), 0);
    if (act & PF_ACT_SEND_LAST) start_xfer(r, r->n_src, 1);
    if (act & PF_ACT_RELEASE) { /* the engine answers with DONE */
        if (r->m.prefilled) mdl_engine_release(r->in->eng, r->base.id);
        else mdl_engine_abort(r->in->eng, r->base.id);
    }
    if (act & PF_ACT_ABANDON) send_abandon(r);
}

/* Feeds ev to r's machine and performs what it asks. An action's outcome may step again (a transfer that cannot
 * start); r is freed once, when the outermost step ends in PF_FREED. */
static void step(preq *r, pf_event ev, int status, const char *msg, int dest_dead)
{
    if (msg && active(r)) snprintf(r->why, sizeof r->why, "%s", msg); /* the first failure's words stand */
    r->depth++;
    perform(r, pf_machine_step(&r->m, ev, status, msg ? r->why : NULL, dest_dead));
    if (--r->depth == 0 && r->m.state == PF_FREED) {
        inst_req_remove(r->in, &r->base);
        preq_free(r);
    }
}

/* ---- engine events ------------------------------------------------------------------------------------------ */

static void on_event(inst *s, inst_req *base, const mdl_event *ev, const float *hidden)
{
    preq *r = (preq *)base;
    switch (ev->type) {
    case MDL_EV_BLOCKS: /* a free slot: otherwise the last transfer takes these blocks too */
        for (int i = 0; i < (int)PD_ARRAY_LEN(r->xfers); i++)
            if (!r->xfers[i] && PD_MIN(ev->n_blocks_done, r->n_src) > r->sent) {
                r->blocks_done = ev->n_blocks_done;
                step(r, PF_EV_BLOCKS, 0, NULL, 0);
                break;
            }
        break;
    case MDL_EV_PREFILLED:
        r->t_prefilled = pd_time_now();
        r->eng_queue = ev->t_queue;
        r->eng_prefill = ev->t_prefill;
        r->h.req_id = r->tag;
        r->h.first_token = ev->token;
        r->h.logprob = ev->logprob;
        r->h.n_top = ev->n_top;
        memcpy(r->h.top_ids, ev->top_ids, sizeof r->h.top_ids);
        memcpy(r->h.top_lps, ev->top_lps, sizeof r->h.top_lps);
        r->h.hidden_size = s->m->cfg.hidden_size;
        memcpy(r->hidden, hidden, (size_t)r->h.hidden_size * sizeof(float));
        r->h.hidden = r->hidden;
        step(r, PF_EV_PREFILLED, 0, NULL, 0);
        break;
    case MDL_EV_DONE:
        mdl_serve_metrics_done(s->metrics, ev);
        step(r, PF_EV_ENGINE_DONE, 503, "prefill aborted", 0);
        break;
    case MDL_EV_TOKEN:
        break;
    }
}

/* ---- HTTP ------------------------------------------------------------------------------------------------------- */

/* The decode instance's reservation expired (it gives the request up and, after its grace, reuses the blocks):
 * nothing more may be written into them. */
static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    preq *r = arg;
    if (active(r)) pd_counter_add(r->in->metrics->kv_failures, NULL, 1);
    step(r, PF_EV_DEADLINE, 504, "the decode instance's reservation expired before the KV was delivered", 0);
}

static void client_gone(inst_req *base) { step((preq *)base, PF_EV_CLIENT_GONE, 499, "router went away", 0); }

static int parse_target(inst *s, const cJSON *t, preq *r, char *err, size_t n)
{
    if (!cJSON_IsObject(t)) {
        snprintf(err, n, "'target' must be an object");
        return 0;
    }
    const cJSON *desc = cJSON_GetObjectItemCaseSensitive(t, "desc"),
                *blocks = cJSON_GetObjectItemCaseSensitive(t, "blocks");
    const cJSON *layout = cJSON_GetObjectItemCaseSensitive(t, "layout"),
                *req = cJSON_GetObjectItemCaseSensitive(t, "req");
    if (!cJSON_IsString(layout) || strcmp(layout->valuestring, s->layout) != 0) {
        snprintf(err, n, "KV layout mismatch: decode has '%s', this prefill instance '%s'",
                 cJSON_IsString(layout) ? layout->valuestring : "?", s->layout);
        return 0;
    }
    if (!cJSON_IsString(desc) || !cJSON_IsArray(blocks) || !cJSON_IsNumber(req)) {
        snprintf(err, n, "'target' needs desc, blocks and req");
        return 0;
    }
    int nb = cJSON_GetArraySize(blocks);
    if (nb < r->n_src) {
        snprintf(err, n, "'target.blocks' has %d blocks; the prompt needs %d", nb, r->n_src);
        return 0;
    }
    r->dst = malloc((size_t)nb * sizeof(int));
    if (!r->dst) {
        snprintf(err, n, "out of memory");
        return 0;
    }
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, blocks)
    {
        if (!cJSON_IsNumber(v) || v->valuedouble < 0) {
            snprintf(err, n, "'target.blocks' must hold block numbers");
            return 0;
        }
        r->dst[i++] = (int)v->valuedouble;
    }
    r->n_dst = nb;
    r->tag = (uint64_t)req->valuedouble;
    const cJSON *na = cJSON_GetObjectItemCaseSensitive(t, "not_after");
    if (na && !cJSON_IsNumber(na)) {
        snprintf(err, n, "'target.not_after' must be a number (seconds since the epoch)");
        return 0;
    }
    r->not_after = na ? na->valuedouble : 0;
    if (r->not_after > 0 && pd_wall_now() >= r->not_after) {
        snprintf(err, n, "the decode instance's reservation expired %.1f s ago (this instance stalled, or clocks "
                 "disagree); nothing written", pd_wall_now() - r->not_after);
        return 0;
    }
    pd_status st = kv_remote_create(s->kv, desc->valuestring, &r->remote);
    if (st == PD_OK && !(r->desc = strdup(desc->valuestring))) st = PD_ERR_NOMEM;
    if (st != PD_OK) {
        snprintf(err, n, "cannot reach the decode instance's KV region: %s", pd_status_str(st));
        return 0;
    }
    return 1;
}

static void handle_prefill(inst *s, struct evhttp_request *req)
{
    char err[256] = "";
    int status = 400;
    const char *param = NULL;
    inst_open op;
    preq *r = NULL;
    if (inst_open_read(s, req, &op, &status, &param, err, sizeof err) != PD_OK) goto refuse;
    const int np = op.n_prompt;
    r = calloc(1, sizeof *r);
    if (!r || !(r->hidden = malloc((size_t)s->m->cfg.hidden_size * sizeof(float)))) {
        status = 503;
        snprintf(err, sizeof err, "out of memory");
        goto refuse;
    }
    r->in = s;
    inst_req_init(s, &r->base, op.ext_id);
    r->n_prompt = np;
    r->t0 = pd_time_now();
    r->n_src = mdl_kv_blocks_for(mdl_engine_pool(s->eng), np);
    if (!parse_target(s, cJSON_GetObjectItemCaseSensitive(op.root, "target"), r, err, sizeof err)) {
        status = strstr(err, "cannot reach") ? 503 : strstr(err, "expired") ? 504 : 400;
        if (status == 504) pd_warn("prefill %s: %s", r->base.ext_id, err);
        goto refuse;
    }
    if (r->not_after > 0) {
        double left = r->not_after - pd_wall_now();
        struct timeval tv = {(long)left, (long)((left - (long)left) * 1e6)};
        r->deadline = evtimer_new(s->base, deadline_cb, r);
        if (!r->deadline || evtimer_add(r->deadline, &tv) != 0) {
            status = 503;
            snprintf(err, sizeof err, "cannot arm the reservation deadline");
            goto refuse;
        }
    }
    op.p.max_tokens = 1; /* the first token only */
    pd_status st = mdl_engine_submit(s->eng, r->base.id, r, op.prompt, np, &op.p, MDL_REQ_PREFILL_ONLY);
    if (st != PD_OK) {
        pd_counter_add(s->metrics->rejected, NULL, 1);
        int full = st == PD_ERR_BUSY || st == PD_ERR_FULL;
        status = full ? 429 : st == PD_ERR_NOMEM ? 503 : 400;
        snprintf(err, sizeof err, "%s", full ? "prefill queue or KV cache full; retry later"
                                        : st == PD_ERR_NOMEM ? "out of memory; retry later"
                                        : st == PD_ERR_RANGE ? "prompt longer than this instance's max model length"
                                                             : "request refused");
        if (status == 429) evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
        goto refuse;
    }
    r->rank = inst_req_rank(s, r->base.id); /* its blocks are there: they go from that rank's own pool */
    pf_machine_init(&r->m, r->remote != NULL);
    inst_req_add(s, &r->base, req);
    inst_open_free(&op);
    return;
refuse: {
    /* nothing was written for this request and nothing will be: the decode side may free its blocks at once */
    cJSON *eo = pd_http_error_json(status, NULL, param, err);
    cJSON_AddBoolToObject(cJSON_GetObjectItem(eo, "error"), "kv_untouched", 1);
    pd_http_reply_json(req, status, eo);
    cJSON_Delete(eo);
}
    preq_free(r);
    inst_open_free(&op);
}

static void abort_req(inst *in, inst_req *base, struct evhttp_request *req)
{
    (void)in;
    (void)req;
    step((preq *)base, PF_EV_ABORT, 499, "abandoned by the router", 0);
}

static void add_health(inst *in, cJSON *o)
{
    cJSON_AddStringToObject(o, "kv_desc", in->desc); /* decode instances connect to it to hear if we die */
}

/* a prefill instance never runs a draft pass (its requests end after the first token): no int8 draft head copy,
 * even when it shares the decode instances' --speculative-config */
static void configure(inst *in, mdl_engine_opts *eo)
{
    (void)in;
    eo->draft_head_int8 = 0;
}

static void req_free(inst_req *r) { preq_free((preq *)r); }

static const inst_route routes[] = {{"/internal/prefill", handle_prefill, abort_req}};

void pf_role(void *arg, inst_role *role)
{
    pf_opts *o = arg;
    *role = (inst_role){.name = "prefill", .kind = "prefill", .routes = routes, .n_routes = (int)PD_ARRAY_LEN(routes),
                        .on_event = on_event, .want_hidden = 1, .client_gone = client_gone, .req_free = req_free,
                        .health = add_health, .configure = configure, .arg = o,
                        .kv_xfer_timeout = o->kv_xfer_timeout};
}

pd_status pf_start(struct event_base *base, void *arg, inst **out, int *bound_port)
{
    inst_role role;
    pf_role(arg, &role);
    return inst_create(base, &((pf_opts *)arg)->inst, &role, out, bound_port);
}
