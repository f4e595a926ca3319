/* Prefill instance: HTTP control API (/internal/prefill), engine events -> KV transfers into the decode
 * instance's blocks. Blocks of finished chunks go out while later chunks compute; the last batch carries the
 * ready notice and starts only after every earlier batch has landed, so the notice always follows all data.
 * Local blocks are released only once no transfer reads them. Everything but compute runs on the loop. */
#include <event2/keyvalq_struct.h>
#include <string.h>

#include "common/pd_http.h"
#include "common/pd_mailbox.h"
#include "kvtransfer/kv.h"
#include "prefill/server.h"

typedef struct preq {
    inst_req base;             /* id: the engine's; ext_id: the router's; http: the reply pending */
    inst *in;
    uint64_t tag;              /* the decode instance's request number */
    kv_remote_t remote;
    int *dst;                  /* decode blocks, in order */
    int n_dst;
    int *src;                  /* our blocks, in order */
    int n_src;
    int sent;                  /* blocks handed to transfers */
    int outstanding;           /* transfers in flight */
    kv_xfer_t xfers[8];
    int prefilled, notice_started, failed, engine_gone;
    int dest_dead;             /* a transfer failed on the decode side's account: it cannot hear us */
    int abandon_sent;          /* the decode instance was told we give the request up */
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
    free(r->dst);
    free(r->src);
    free(r->hidden);
    free(r);
}

/* Frees r once nothing refers to it: no transfer in flight, the engine done with it. */
static void maybe_free(preq *r)
{
    if (r->outstanding > 0 || !r->engine_gone) return;
    inst_req_remove(r->in, &r->base);
    preq_free(r);
}

/* Gives the engine's blocks back (or stops the prefill) once no transfer reads them. */
static void release_engine(preq *r)
{
    if (r->outstanding > 0 || r->engine_gone) return;
    if (r->prefilled) mdl_engine_release(r->in->eng, r->base.id);
    else mdl_engine_abort(r->in->eng, r->base.id);
    /* the engine answers with DONE; engine_gone is set there */
}

static void send_abandon(preq *r);

static void reply_and_end(preq *r, int status, const char *msg)
{
    struct evhttp_request *req = inst_req_take_http(&r->base);
    if (!req) return;
    if (status == 200) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "first_token", r->h.first_token);
        cJSON_AddNumberToObject(o, "prompt_tokens", r->n_prompt);
        /* queue: waiting for the engine; prefill: compute; transfer: what the transfer added after the compute
         * (prefill end -> notice delivered); transfer_total: first block put -> notice delivered */
        double now = pd_time_now();
        cJSON *t = cJSON_AddObjectToObject(o, "timing");
        cJSON_AddNumberToObject(t, "queue_s", r->eng_queue);
        cJSON_AddNumberToObject(t, "prefill_s", r->eng_prefill);
        cJSON_AddNumberToObject(t, "transfer_s", now - r->t_prefilled);
        cJSON_AddNumberToObject(t, "transfer_total_s", now - r->t_xfer0);
        pd_http_reply_json(req, 200, o);
        cJSON_Delete(o);
    } else {
        pd_http_reply_error(req, status, NULL, NULL, "%s", msg);
    }
}

static void fail_req(preq *r, int status, const char *msg)
{
    if (r->failed) return;
    r->failed = 1;
    pd_warn("prefill %s: %s", r->base.ext_id, msg);
    reply_and_end(r, status, msg);
    for (int i = 0; i < (int)PD_ARRAY_LEN(r->xfers); i++)
        if (r->xfers[i]) kv_xfer_cancel(r->xfers[i]);
    release_engine(r);
    send_abandon(r);
}

static void start_xfer(preq *r, int upto, int with_notice);

static void xfer_cb(kv_xfer_t x, pd_status st, void *arg)
{
    preq *r = arg;
    for (int i = 0; i < (int)PD_ARRAY_LEN(r->xfers); i++)
        if (r->xfers[i] == x) r->xfers[i] = NULL;
    r->outstanding--;
    if (st == PD_ERR_PEER || st == PD_ERR_TRANSPORT) r->dest_dead = 1;
    if (st != PD_OK && !r->failed) {
        char msg[160];
        snprintf(msg, sizeof msg, "KV transfer to the decode instance failed: %s", pd_status_str(st));
        pd_counter_add(r->in->metrics->kv_failures, NULL, 1);
        fail_req(r, 503, msg);
    } else if (!r->failed) {
        if (r->notice_started && r->outstanding == 0) { /* the notice is delivered: done */
            pd_info("prefill %s: %d prompt tokens, %d blocks, prefill %.3f s, transfer %.3f s", r->base.ext_id,
                    r->n_prompt, r->n_src, r->t_prefilled - r->t0, pd_time_now() - r->t_xfer0);
            pd_histogram_observe(r->in->metrics->kv_xfer_time, NULL, pd_time_now() - r->t_prefilled);
            pd_histogram_observe(r->in->metrics->kv_xfer_duration, NULL, pd_time_now() - r->t_xfer0);
            reply_and_end(r, 200, NULL);
        } else if (r->prefilled && !r->notice_started && r->outstanding == 0) {
            start_xfer(r, r->n_src, 1);
        }
    }
    if (r->outstanding == 0 && (r->failed || (r->notice_started && !r->base.http))) release_engine(r);
    if (r->outstanding == 0 && r->failed) send_abandon(r);
    maybe_free(r);
}

static void abandon_cb(kv_xfer_t x, pd_status st, void *arg)
{
    (void)x;
    preq *r = arg;
    r->outstanding--;
    if (st != PD_OK) pd_debug("prefill %s: abandon notice not delivered: %s", r->base.ext_id, pd_status_str(st));
    maybe_free(r);
}

/* Tells the decode instance, after every transfer of r has ended, that no ready notice will come, so it frees
 * the blocks it reserved at once instead of waiting out a timeout. */
static void send_abandon(preq *r)
{
    if (r->abandon_sent || r->dest_dead || !r->remote || r->outstanding > 0) return;
    r->abandon_sent = 1;
    mdl_handoff h = {.req_id = r->tag, .first_token = -1};
    void *notice = NULL;
    size_t nlen = 0;
    kv_xfer_t x;
    if (mdl_handoff_encode(&h, &notice, &nlen) != PD_OK) return;
    kv_xfer_params_t p = {.field_mask = KV_XFER_FIELD_TAG | KV_XFER_FIELD_NOTICE, .local = r->in->region,
                          .remote = r->remote, .blocks = NULL, .n_blocks = 0, .tag = r->tag, .notice = notice,
                          .notice_len = nlen, .cb = abandon_cb, .arg = r};
    if (kv_xfer_start(r->in->kv, &p, &x) == PD_OK) r->outstanding++;
    free(notice);
}

/* Sends our blocks [sent, upto) into the decode blocks; with_notice: the ready notice follows them. */
static void start_xfer(preq *r, int upto, int with_notice)
{
    inst *s = r->in;
    int slot = -1;
    for (int i = 0; i < (int)PD_ARRAY_LEN(r->xfers); i++)
        if (!r->xfers[i]) slot = i;
    if (slot < 0) return; /* many in flight: the next callback sends the rest */
    int n = upto - r->sent;
    kv_block *b = n > 0 ? malloc((size_t)n * sizeof *b) : NULL;
    if (n > 0 && !b) {
        fail_req(r, 503, "out of memory");
        return;
    }
    mdl_kv_pool *pool = mdl_engine_pool(s->eng);
    for (int i = 0; i < n; i++) {
        b[i].local_off = (uint64_t)r->src[r->sent + i] * pool->block_bytes;
        b[i].remote_off = (uint64_t)r->dst[r->sent + i] * pool->block_bytes;
        b[i].len = pool->block_bytes;
    }
    void *notice = NULL;
    size_t nlen = 0;
    if (with_notice && mdl_handoff_encode(&r->h, &notice, &nlen) != PD_OK) {
        free(b);
        fail_req(r, 503, "out of memory");
        return;
    }
    kv_xfer_params_t p = {.field_mask =
                              KV_XFER_FIELD_TAG | KV_XFER_FIELD_TIMEOUT | (with_notice ? KV_XFER_FIELD_NOTICE : 0),
                          .local = s->region,
                          .remote = r->remote,
                          .blocks = b,
                          .n_blocks = (size_t)n,
                          .tag = r->tag,
                          .notice = notice,
                          .notice_len = nlen,
                          .timeout = s->role.kv_xfer_timeout,
                          .cb = xfer_cb,
                          .arg = r};
    if (r->t_xfer0 == 0) r->t_xfer0 = pd_time_now();
    pd_status st = kv_xfer_start(s->kv, &p, &r->xfers[slot]);
    free(b);
    free(notice);
    if (st != PD_OK) {
        char msg[160];
        snprintf(msg, sizeof msg, "cannot start the KV transfer: %s", pd_status_str(st));
        pd_counter_add(s->metrics->kv_failures, NULL, 1);
        fail_req(r, st == PD_ERR_RANGE ? 400 : 503, msg);
        return;
    }
    r->outstanding++;
    r->sent = upto;
    pd_counter_add(s->metrics->kv_bytes, NULL, (double)n * (double)pool->block_bytes);
    if (with_notice) r->notice_started = 1;
}

/* ---- engine events ------------------------------------------------------------------------------------------ */

static void on_event(inst *s, inst_req *base, const mdl_event *ev, const float *hidden)
{
    preq *r = (preq *)base;
    switch (ev->type) {
    case MDL_EV_BLOCKS:
        if (!r->failed && ev->n_blocks_done > r->sent && !r->prefilled)
            start_xfer(r, PD_MIN(ev->n_blocks_done, r->n_src), 0);
        break;
    case MDL_EV_PREFILLED:
        r->prefilled = 1;
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
        if (!r->failed && r->outstanding == 0) start_xfer(r, r->n_src, 1);
        else if (r->failed) release_engine(r);
        break;
    case MDL_EV_DONE:
        r->engine_gone = 1;
        mdl_serve_metrics_done(s->metrics, ev);
        if (!r->prefilled && !r->failed) fail_req(r, 503, "prefill aborted");
        maybe_free(r);
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
    if (r->failed || (r->notice_started && r->outstanding == 0)) return;
    pd_counter_add(r->in->metrics->kv_failures, NULL, 1);
    fail_req(r, 504, "the decode instance's reservation expired before the KV was delivered");
    maybe_free(r);
}

static void client_gone(inst_req *base)
{
    preq *r = (preq *)base;
    if (!r->failed) fail_req(r, 499, "router went away");
}

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
    r->src = malloc((size_t)r->n_src * sizeof(int));
    if (!r->src) { /* r is not listed yet: the engine's DONE for it finds nothing to free */
        mdl_engine_abort(s->eng, r->base.id);
        status = 503;
        snprintf(err, sizeof err, "out of memory; retry later");
        pd_error("prefill %s: out of memory for its block list", r->base.ext_id);
        goto refuse;
    }
    if (mdl_engine_blocks(s->eng, r->base.id, r->src, r->n_src) != r->n_src) PD_ASSERT(!"engine lost a request");
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
    fail_req((preq *)base, 499, "abandoned by the router");
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

pd_status pf_start(struct event_base *base, void *arg, inst **out, int *bound_port)
{
    pf_opts *o = arg;
    inst_role role = {.name = "prefill", .kind = "prefill", .routes = routes, .n_routes = (int)PD_ARRAY_LEN(routes),
                      .on_event = on_event, .want_hidden = 1, .client_gone = client_gone, .req_free = req_free,
                      .health = add_health, .configure = configure, .arg = o, .kv_xfer_timeout = o->kv_xfer_timeout};
    return inst_create(base, &o->inst, &role, out, bound_port);
}
