/* Decode instance: HTTP control API (/internal/requests), engine events -> NDJSON token streams, KV notices
 * -> requests joining the running batch. Everything but the engine's compute runs on the loop thread. */
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <string.h>

#include "common/pd_http.h"
#include "common/pd_mailbox.h"
#include "decode/dreq_state.h"
#include "decode/server.h"
#include "kvtransfer/kv.h"

typedef struct dreq {
    inst_req base;               /* id: the engine's; ext_id: the router's; http: the stream, NULL once gone */
    inst *in;
    dec_dreq_fsm m;              /* the lifecycle (dreq_state.h): m.pd, the KV comes from a prefill instance */
    struct event *kv_timer;      /* kv_wait_timeout after a give-up while the KV may still land */
    struct event *kv_deadline;   /* kv_transfer_timeout after the reservation: the KV must have come by then */
    kv_remote_t prefill;         /* the instance that will write our KV: we hear at once if it dies */
    uint64_t prefill_peer;
    double t0, t_kv, t_last;     /* opened, KV ready notice, last token (loop clock) */
} dreq;

static dec_opts *opts_of(const inst *in) { return in->role.arg; }
static void dreq_apply(dreq *r, unsigned a);

static void dreq_free(dreq *r)
{
    if (r->kv_timer) event_free(r->kv_timer);
    if (r->kv_deadline) event_free(r->kv_deadline);
    kv_remote_destroy(r->prefill);
    free(r);
}

static void dreq_end(dreq *r)
{
    inst_req_remove(r->in, &r->base);
    dreq_free(r);
}

static void stream_line(dreq *r, cJSON *o)
{
    if (!r->base.http) return;
    char *txt = cJSON_PrintUnformatted(o);
    if (!txt) return;
    size_t n = strlen(txt);
    txt[n] = '\n';
    pd_http_stream_write(r->base.http, txt, n + 1);
    free(txt);
}

/* An error line the router may retry elsewhere: {"event":"error","status":...,"message":...,"retryable":true}. */
static void stream_retryable(dreq *r, int status, const char *msg)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "error");
    cJSON_AddNumberToObject(o, "status", status);
    cJSON_AddStringToObject(o, "message", msg);
    cJSON_AddBoolToObject(o, "retryable", 1);
    stream_line(r, o);
    cJSON_Delete(o);
}

/* ---- engine events (loop thread) ---------------------------------------------------------------------- */

static void on_event(inst *s, inst_req *base, const mdl_event *ev, const float *hidden)
{
    (void)hidden;
    dreq *r = (dreq *)base;
    cJSON *o = cJSON_CreateObject();
    if (ev->type == MDL_EV_TOKEN) {
        cJSON_AddStringToObject(o, "event", "token");
        cJSON *ids = cJSON_AddArrayToObject(o, "ids");
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(ev->token));
        cJSON *lps = cJSON_AddArrayToObject(o, "logprobs");
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(ev->logprob));
        if (ev->n_top > 0) {
            cJSON *tl = cJSON_AddArrayToObject(o, "top_logprobs"), *one = cJSON_CreateArray();
            for (int i = 0; i < ev->n_top; i++) {
                cJSON *pair = cJSON_CreateArray();
                cJSON_AddItemToArray(pair, cJSON_CreateNumber(ev->top_ids[i]));
                cJSON_AddItemToArray(pair, cJSON_CreateNumber(ev->top_lps[i]));
                cJSON_AddItemToArray(one, pair);
            }
            cJSON_AddItemToArray(tl, one);
        }
        double now = pd_time_now();
        pd_counter_add(s->metrics->gen_tokens, NULL, 1);
        pd_histogram_observe(r->t_last ? s->metrics->itl : s->metrics->ttft, NULL,
                             now - (r->t_last ? r->t_last : r->t0));
        r->t_last = now;
        stream_line(r, o);
    } else if (ev->type == MDL_EV_DONE) {
        cJSON_AddStringToObject(o, "event", "done");
        cJSON_AddStringToObject(o, "finish_reason", mdl_finish_str(ev->finish));
        if (ev->stop_token >= 0) cJSON_AddNumberToObject(o, "stop_token", ev->stop_token);
        cJSON *u = cJSON_AddObjectToObject(o, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", ev->prompt_tokens);
        cJSON_AddNumberToObject(u, "completion_tokens", ev->completion_tokens);
        /* PD: the engine counts the wait for the KV as queueing; split it off, the queue is the wait to join
         * the running batch after the KV came */
        mdl_event ph = *ev;
        double now = pd_time_now();
        if (r->m.pd) {
            ph.t_queue = PD_MAX(0.0, now - r->t0 - ev->t_queue - ev->t_decode);
            ph.t_prefill = 0;
        }
        cJSON *t = cJSON_AddObjectToObject(o, "timing");
        cJSON_AddNumberToObject(t, "queue_s", ph.t_queue);
        cJSON_AddNumberToObject(t, "prefill_s", ph.t_prefill);
        if (r->m.pd) cJSON_AddNumberToObject(t, "kv_wait_s", ev->t_queue);
        cJSON_AddNumberToObject(t, "decode_s", ev->t_decode);
        unsigned a = dec_dreq_step(&r->m, DEC_EV_ENGINE_DONE);
        dreq_apply(r, a);
        if (a & DEC_ACT_END_STREAM) {
            stream_line(r, o);
            if (r->base.http) pd_http_stream_end(r->base.http);
        }
        mdl_serve_metrics_done(s->metrics, &ph);
        if (ev->finish != MDL_FINISH_ABORT && ev->finish != MDL_FINISH_ERROR)
            pd_histogram_observe(s->metrics->e2e, NULL, now - r->t0);
        pd_info("request %s: %s, %d prompt + %d generated tokens, %s, %.3f s", r->base.ext_id,
                mdl_finish_str(ev->finish), ev->prompt_tokens, ev->completion_tokens, r->m.pd ? "pd" : "local",
                pd_time_now() - r->t0);
        if (a & DEC_ACT_FREE) dreq_end(r);
    }
    cJSON_Delete(o);
}

/* ---- the lifecycle's actions ------------------------------------------------------------------------------ */

static void kv_wait_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dreq *r = arg;
    unsigned a = dec_dreq_step(&r->m, DEC_EV_KV_WAIT_TIMEOUT);
    if (a)
        pd_warn("request %s: no KV transfer outcome %.0f s after its abort; releasing its blocks", r->base.ext_id,
                opts_of(r->in)->kv_wait_timeout);
    dreq_apply(r, a);
}

/* Carries out a step's actions except the three that need the event's data, which their callers do:
 * DEC_ACT_KV_READY (on_kv_event), DEC_ACT_END_STREAM and DEC_ACT_FREE (on_event). Never frees r. */
static void dreq_apply(dreq *r, unsigned a)
{
    if (a & DEC_ACT_STREAM_ERROR) stream_retryable(r, r->m.status, r->m.msg);
    if ((a & DEC_ACT_DISARM_WAIT) && r->kv_timer) evtimer_del(r->kv_timer);
    if (a & DEC_ACT_ABORT_ENGINE) mdl_engine_abort(r->in->eng, r->base.id);
    if (a & DEC_ACT_ARM_WAIT) {
        /* a late write must never land in blocks someone else owns: they stay until the transfer resolves */
        struct timeval tv = {(long)opts_of(r->in)->kv_wait_timeout, 0};
        if (!r->kv_timer) r->kv_timer = evtimer_new(r->in->base, kv_wait_timeout_cb, r);
        if (!r->kv_timer || evtimer_add(r->kv_timer, &tv) != 0) {
            pd_error("request %s: cannot arm the KV wait timer; releasing its blocks now", r->base.ext_id);
            dreq_apply(r, dec_dreq_step(&r->m, DEC_EV_WAIT_TIMER_FAILED));
        }
    }
}

static void dreq_step(dreq *r, dec_dreq_ev ev) { dreq_apply(r, dec_dreq_step(&r->m, ev)); }

/* The reservation's deadline passed without the KV: the prefill instance (or the path to it) stalls. The router
 * hears a retryable 504 and may run the request elsewhere; the blocks stay reserved until the transfer resolves
 * or kv_wait_timeout passes, and the prefill instance itself stops writing at the same deadline ("not_after"). */
static void kv_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dreq *r = arg;
    unsigned a = dec_dreq_step(&r->m, DEC_EV_KV_DEADLINE);
    if (!a) return;
    pd_warn("request %s: no KV %.1f s after its reservation; giving it up", r->base.ext_id,
            opts_of(r->in)->kv_transfer_timeout);
    pd_counter_add(r->in->metrics->kv_failures, NULL, 1);
    dreq_apply(r, a);
}

static void client_gone(inst_req *base)
{
    dreq *r = (dreq *)base;
    pd_info("request %s: router closed the stream; aborting", r->base.ext_id);
    dreq_step(r, DEC_EV_CLIENT_GONE);
}

/* ---- KV transfer events (loop thread) --------------------------------------------------------------------- */

static void on_kv_event(kv_context_t ctx, const kv_event *ev, void *arg)
{
    (void)ctx;
    inst *s = arg;
    if (ev->type == KV_EVENT_PEER_FAILED) {
        pd_warn("kv: prefill peer %016llx failed: %s", (unsigned long long)ev->peer_id, pd_status_str(ev->status));
        /* whatever that instance was to write will never come: release those requests now */
        for (inst_req *b = s->reqs.head, *nx; b; b = nx) {
            nx = b->next;
            dreq *r = (dreq *)b;
            if (!r->m.pd || r->prefill_peer != ev->peer_id) continue;
            dreq_step(r, DEC_EV_PEER_FAILED); /* ignored unless its KV is still awaited */
        }
        return;
    }
    if (ev->type == KV_EVENT_NOTICE && ev->payload_len == 0) return; /* a batch of blocks landed; more follow */
    dreq *r = (dreq *)inst_req_find(s, ev->tag);
    if (!r || !r->m.pd) {
        pd_warn("kv: %s for unknown request %llu ignored", ev->type == KV_EVENT_NOTICE ? "notice" : "abort",
                (unsigned long long)ev->tag);
        return;
    }
    if (ev->type == KV_EVENT_ABORTED) {
        pd_warn("request %s: KV transfer aborted: %s", r->base.ext_id, pd_status_str(ev->status));
        pd_counter_add(s->metrics->kv_failures, NULL, 1);
        dreq_step(r, DEC_EV_KV_ABORTED);
        return;
    }
    mdl_handoff h;
    pd_status hs = mdl_handoff_decode(ev->payload, ev->payload_len, &h);
    if (hs == PD_OK && h.req_id == r->base.id && h.first_token < 0) {
        pd_info("request %s: the prefill instance abandoned it", r->base.ext_id);
        dreq_step(r, DEC_EV_KV_ABANDONED);
        return;
    }
    if (hs != PD_OK || h.req_id != r->base.id || h.hidden_size != s->m->cfg.hidden_size) {
        pd_error("request %s: malformed ready notice (%zu bytes)", r->base.ext_id, ev->payload_len);
        dreq_step(r, DEC_EV_KV_MALFORMED);
        return;
    }
    unsigned a = dec_dreq_step(&r->m, DEC_EV_KV_READY);
    dreq_apply(r, a); /* given up already: the abort waited for this */
    if (!(a & DEC_ACT_KV_READY)) return;
    r->t_kv = pd_time_now();
    pd_histogram_observe(s->metrics->kv_wait, NULL, r->t_kv - r->t0);
    float *hid = malloc((size_t)h.hidden_size * sizeof(float)); /* the payload need not be aligned */
    if (hid) memcpy(hid, h.hidden, (size_t)h.hidden_size * sizeof(float));
    pd_status st = hid ?
        mdl_engine_kv_ready(s->eng, r->base.id, h.first_token, h.logprob, h.n_top, h.top_ids, h.top_lps, hid) :
        PD_ERR_NOMEM;
    free(hid);
    if (st != PD_OK) {
        pd_error("request %s: cannot start decoding: %s", r->base.ext_id, pd_status_str(st));
        dreq_step(r, DEC_EV_KV_REFUSED);
    }
}

/* ---- HTTP --------------------------------------------------------------------------------------------------- */

/* Tells the router which blocks (of rank `rank`, whose region desc names) the prefill instance writes into, and by
 * when. */
static void send_reservation(dreq *r, int rank, const int *blocks, int nb)
{
    inst *s = r->in;
    double timeout = opts_of(s)->kv_transfer_timeout;
    cJSON *o = cJSON_CreateObject(), *kv = NULL;
    cJSON_AddStringToObject(o, "event", "reserved");
    kv = cJSON_AddObjectToObject(o, "kv");
    cJSON_AddStringToObject(kv, "desc", inst_rank_desc(s, rank));
    if (rank) cJSON_AddNumberToObject(kv, "rank", rank);
    cJSON_AddNumberToObject(kv, "req", (double)r->base.id);
    cJSON *ba = cJSON_AddArrayToObject(kv, "blocks");
    for (int i = 0; i < nb; i++) cJSON_AddItemToArray(ba, cJSON_CreateNumber(blocks[i]));
    cJSON_AddNumberToObject(kv, "block_size", s->eo.block_size);
    cJSON_AddNumberToObject(kv, "block_bytes", (double)mdl_engine_pool(s->eng)->block_bytes);
    cJSON_AddStringToObject(kv, "layout", s->layout);
    /* wall clock: the prefill instance starts no write after it (hosts' clocks agree to well within
     * kv_wait_timeout, the grace an aborted reservation keeps its blocks) */
    cJSON_AddNumberToObject(kv, "not_after", pd_wall_now() + timeout);
    struct timeval tv = {(long)timeout, (long)((timeout - (long)timeout) * 1e6)};
    r->kv_deadline = evtimer_new(s->base, kv_deadline_cb, r);
    if (!r->kv_deadline || evtimer_add(r->kv_deadline, &tv) != 0)
        pd_error("request %s: cannot arm the KV deadline timer; it waits for its KV without one", r->base.ext_id);
    stream_line(r, o);
    cJSON_Delete(o);
}

/* A request placed on another rank: its blocks there are known now. */
static void reserved(inst *s, inst_req *base, int rank, const int *blocks, int n)
{
    (void)s;
    dreq *r = (dreq *)base;
    if (r->m.pd && !r->kv_deadline) send_reservation(r, rank, blocks, n);
}

static void handle_open(inst *s, struct evhttp_request *req)
{
    char err[256] = "";
    int status = 400;
    const char *param = NULL;
    inst_open op;
    if (inst_open_read(s, req, &op, &status, &param, err, sizeof err) != PD_OK) {
        pd_http_reply_error(req, status, NULL, param, "%s", err);
        return;
    }
    const int np = op.n_prompt;
    const cJSON *mode = cJSON_GetObjectItemCaseSensitive(op.root, "mode");
    int pd = !mode || (cJSON_IsString(mode) && !strcmp(mode->valuestring, "pd"));
    if (mode && !(cJSON_IsString(mode) && (!strcmp(mode->valuestring, "pd") || !strcmp(mode->valuestring, "local")))) {
        pd_http_reply_error(req, 400, NULL, "mode", "'mode' must be \"pd\" or \"local\"");
        goto done;
    }
    if (!pd && !opts_of(s)->colocated) {
        pd_http_reply_error(req, 400, NULL, "mode",
                            "this decode instance does not prefill (start it with --colocated)");
        goto done;
    }
    if (pd && !s->kv) {
        pd_http_reply_error(req, 503, NULL, NULL, "KV transfer is unavailable on this instance");
        goto done;
    }
    dreq *r = calloc(1, sizeof *r);
    if (!r) {
        pd_http_reply_error(req, 503, NULL, NULL, "out of memory");
        goto done;
    }
    r->in = s;
    inst_req_init(s, &r->base, op.ext_id);
    dec_dreq_fsm_init(&r->m, pd);
    r->t0 = pd_time_now();
    pd_status st =
        mdl_engine_submit(s->eng, r->base.id, r, op.prompt, np, &op.p, pd ? MDL_REQ_REMOTE_KV : MDL_REQ_LOCAL);
    if (st != PD_OK) {
        free(r);
        pd_counter_add(s->metrics->rejected, NULL, 1);
        if (st == PD_ERR_RANGE)
            pd_http_reply_error(req, 400, NULL, "max_tokens",
                                "prompt (%d tokens) + max_tokens (%d) exceeds this instance's max model length %d",
                                np, op.p.max_tokens, s->eo.max_model_len);
        else if (st == PD_ERR_FULL) pd_http_reply_retry(req, 429, "the decode queue is full; retry later");
        else if (st == PD_ERR_BUSY) pd_http_reply_retry(req, 503, "no KV cache blocks free; retry later");
        else if (st == PD_ERR_NOMEM) pd_http_reply_retry(req, 503, "out of memory; retry later");
        else pd_http_reply_error(req, 400, NULL, NULL, "request refused: %s", pd_status_str(st));
        goto done;
    }
    const cJSON *pf = cJSON_GetObjectItemCaseSensitive(op.root, "prefill_kv_desc");
    if (pd && cJSON_IsString(pf)) {
        if (kv_remote_create(s->kv, pf->valuestring, &r->prefill) == PD_OK)
            r->prefill_peer = kv_remote_peer_id(r->prefill);
        else pd_warn("request %s: cannot connect to the announced prefill instance", r->base.ext_id);
    }
    inst_req_add(s, &r->base, req);
    pd_http_stream_start(req, 200, "application/x-ndjson");
    if (pd && inst_req_rank(s, r->base.id) == 0) { /* else the rank that took it reports its blocks */
        int *blocks = malloc((size_t)s->eo.n_blocks * sizeof(int));
        int nb = blocks ? mdl_engine_blocks(s->eng, r->base.id, blocks, s->eo.n_blocks) : -1;
        send_reservation(r, 0, blocks, nb);
        free(blocks);
    }
done:
    inst_open_free(&op);
}

static void abort_route(inst *in, inst_req *base, struct evhttp_request *req)
{
    (void)in;
    dreq *r = (dreq *)base;
    const char *q = strchr(evhttp_request_get_uri(req), '?');
    /* kv=untouched: the router heard from the prefill instance that it refused the request before writing */
    dreq_step(r, q && strstr(q, "kv=untouched") ? DEC_EV_DELETE_UNTOUCHED : DEC_EV_DELETE);
}

static void req_free(inst_req *r) { dreq_free((dreq *)r); }

static const inst_route routes[] = {{"/internal/requests", handle_open, abort_route}};

void dec_role(void *arg, inst_role *role)
{
    dec_opts *o = arg;
    *role = (inst_role){.name = "decode", .kind = o->colocated ? "colocated" : "decode", .routes = routes,
                        .n_routes = (int)PD_ARRAY_LEN(routes), .on_event = on_event, .client_gone = client_gone,
                        .req_free = req_free, .arg = o, .pool_in_region = 1, .kv_optional = o->colocated,
                        .kv_event_cb = on_kv_event, .reserved = reserved};
}

pd_status dec_start(struct event_base *base, void *arg, inst **out, int *bound_port)
{
    inst_role role;
    dec_role(arg, &role);
    return inst_create(base, &((dec_opts *)arg)->inst, &role, out, bound_port);
}
