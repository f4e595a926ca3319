/* Decode instance: HTTP control API (/internal/requests), engine events -> NDJSON token streams, KV notices
 * -> requests joining the running batch. Everything but the engine's compute runs on the loop thread. */
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <string.h>

#include "common/pd_http.h"
#include "common/pd_mailbox.h"
#include "decode/server.h"
#include "kvtransfer/kv.h"

typedef struct dec_server_s dec_server;

typedef struct dreq {
    dec_server *s;
    uint64_t id;
    char ext_id[96];
    struct evhttp_request *http; /* NULL once the router is gone */
    int pd;                      /* KV comes from a prefill instance */
    int kv_arrived;              /* the notice (or an abort of the transfer) has come */
    int aborting;                /* waiting for a transfer in flight before the blocks are freed */
    struct event *kv_timer;
    struct event *kv_deadline;   /* kv_transfer_timeout after the reservation: the KV must have come by then */
    kv_remote_t prefill;         /* the instance that will write our KV: we hear at once if it dies */
    uint64_t prefill_peer;
    double t0, t_kv, t_last;     /* opened, KV ready notice, last token (loop clock) */
    struct dreq *next;
} dreq;

struct dec_server_s {
    struct event_base *base;
    struct evhttp *http;
    dec_opts *o;
    mdl_model *m;
    mdl_engine *eng;
    mdl_engine_opts eo;
    int draining;
    pd_drain *drain;
    pd_announcer *announcer;
    pd_mailbox *mb;
    kv_context_t kv;
    kv_region_t region;
    char *desc;
    char layout[160];
    dreq *reqs;
    uint64_t next_id;
    mdl_serve_metrics *metrics;
};

static dreq *find_id(dec_server *s, uint64_t id)
{
    for (dreq *r = s->reqs; r; r = r->next)
        if (r->id == id) return r;
    return NULL;
}

static dreq *find_ext(dec_server *s, const char *ext)
{
    for (dreq *r = s->reqs; r; r = r->next)
        if (!strcmp(r->ext_id, ext)) return r;
    return NULL;
}

static void dreq_free(dec_server *s, dreq *r)
{
    for (dreq **pp = &s->reqs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    if (r->http) evhttp_connection_set_closecb(evhttp_request_get_connection(r->http), NULL, NULL);
    if (r->kv_timer) event_free(r->kv_timer);
    if (r->kv_deadline) event_free(r->kv_deadline);
    kv_remote_destroy(r->prefill);
    free(r);
}

static void stream_line(dreq *r, cJSON *o)
{
    if (!r->http) return;
    char *txt = cJSON_PrintUnformatted(o);
    if (!txt) return;
    size_t n = strlen(txt);
    txt[n] = '\n';
    pd_http_stream_write(r->http, txt, n + 1);
    free(txt);
}

/* ---- engine events (loop thread) ---------------------------------------------------------------------- */

static void on_engine_event(void *msg, void *arg)
{
    dec_server *s = arg;
    const mdl_event *ev = msg;
    dreq *r = find_id(s, ev->id);
    if (!r) return;
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
        pd_histogram_observe(r->t_last ? s->metrics->itl : s->metrics->ttft, NULL, now - (r->t_last ? r->t_last : r->t0));
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
        if (r->pd) {
            ph.t_queue = PD_MAX(0.0, now - r->t0 - ev->t_queue - ev->t_decode);
            ph.t_prefill = 0;
        }
        cJSON *t = cJSON_AddObjectToObject(o, "timing");
        cJSON_AddNumberToObject(t, "queue_s", ph.t_queue);
        cJSON_AddNumberToObject(t, "prefill_s", ph.t_prefill);
        if (r->pd) cJSON_AddNumberToObject(t, "kv_wait_s", ev->t_queue);
        cJSON_AddNumberToObject(t, "decode_s", ev->t_decode);
        stream_line(r, o);
        if (r->http) pd_http_stream_end(r->http);
        mdl_serve_metrics_done(s->metrics, &ph);
        if (ev->finish != MDL_FINISH_ABORT && ev->finish != MDL_FINISH_ERROR)
            pd_histogram_observe(s->metrics->e2e, NULL, now - r->t0);
        pd_info("request %s: %s, %d prompt + %d generated tokens, %s, %.3f s", r->ext_id,
                mdl_finish_str(ev->finish), ev->prompt_tokens, ev->completion_tokens, r->pd ? "pd" : "local",
                pd_time_now() - r->t0);
        dreq_free(s, r);
    }
    cJSON_Delete(o);
}

static void engine_cb(const mdl_event *ev, void *arg)
{
    dec_server *s = arg;
    mdl_event copy = *ev;
    copy.hidden = NULL;
    if (pd_mailbox_post(s->mb, &copy) != PD_OK) pd_error("decode: event queue full; event for %llu lost",
                                                         (unsigned long long)ev->id);
}

/* ---- aborts ---------------------------------------------------------------------------------------------- */

static void kv_wait_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dreq *r = arg;
    pd_warn("request %s: no KV transfer outcome %.0f s after its abort; releasing its blocks", r->ext_id,
            r->s->o->kv_wait_timeout);
    r->kv_arrived = 1;
    mdl_engine_abort(r->s->eng, r->id);
}

/* Aborts r. A request whose KV is still expected keeps its blocks until the transfer resolves (notice or
 * abort event) or kv_wait_timeout passes, so a late write can never land in blocks someone else owns. */
static void abort_req(dreq *r)
{
    if (r->aborting) return;
    r->aborting = 1;
    if (r->pd && !r->kv_arrived) {
        struct timeval tv = {(long)r->s->o->kv_wait_timeout, 0};
        r->kv_timer = evtimer_new(r->s->base, kv_wait_timeout_cb, r);
        if (r->kv_timer && evtimer_add(r->kv_timer, &tv) == 0) return;
        pd_error("request %s: cannot arm the KV wait timer; releasing its blocks now", r->ext_id);
    }
    mdl_engine_abort(r->s->eng, r->id);
}

/* The transfer for r is over (landed or aborted): an abort waiting for it can proceed. */
static void kv_resolved(dreq *r)
{
    r->kv_arrived = 1;
    if (r->aborting) {
        if (r->kv_timer) evtimer_del(r->kv_timer);
        mdl_engine_abort(r->s->eng, r->id);
    }
}

/* The KV for r will never arrive: unless r is already being aborted, the router hears a retryable 503 (another
 * prefill instance may do the work) and r is aborted; its blocks are free at once since no write can land. */
static void kv_lost(dreq *r, const char *msg)
{
    if (!r->aborting) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "event", "error");
        cJSON_AddNumberToObject(o, "status", 503);
        cJSON_AddStringToObject(o, "message", msg);
        cJSON_AddBoolToObject(o, "retryable", 1);
        stream_line(r, o);
        cJSON_Delete(o);
        abort_req(r);
    }
    kv_resolved(r);
}

/* The reservation's deadline passed without the KV: the prefill instance (or the path to it) stalls. The router
 * hears a retryable 503 and may run the request elsewhere; the blocks stay reserved until the transfer resolves
 * or kv_wait_timeout passes, and the prefill instance itself stops writing at the same deadline ("not_after"). */
static void kv_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    dreq *r = arg;
    if (r->kv_arrived || r->aborting) return;
    pd_warn("request %s: no KV %.1f s after its reservation; giving it up", r->ext_id, r->s->o->kv_transfer_timeout);
    pd_counter_add(r->s->metrics->kv_failures, NULL, 1);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "event", "error");
    cJSON_AddNumberToObject(o, "status", 504);
    cJSON_AddStringToObject(o, "message", "the KV transfer from the prefill instance did not arrive in time");
    cJSON_AddBoolToObject(o, "retryable", 1);
    stream_line(r, o);
    cJSON_Delete(o);
    abort_req(r);
}

static void close_cb(struct evhttp_connection *c, void *arg)
{
    (void)c;
    dreq *r = arg;
    pd_http_release_detached(r->http);
    r->http = NULL;
    pd_info("request %s: router closed the stream; aborting", r->ext_id);
    abort_req(r);
}

/* ---- KV transfer events (loop thread) --------------------------------------------------------------------- */

static void on_kv_event(kv_context_t ctx, const kv_event *ev, void *arg)
{
    (void)ctx;
    dec_server *s = arg;
    if (ev->type == KV_EVENT_PEER_FAILED) {
        pd_warn("kv: prefill peer %016llx failed: %s", (unsigned long long)ev->peer_id, pd_status_str(ev->status));
        /* whatever that instance was to write will never come: release those requests now */
        for (dreq *r = s->reqs, *nx; r; r = nx) {
            nx = r->next;
            if (!r->pd || r->kv_arrived || r->prefill_peer != ev->peer_id) continue;
            kv_lost(r, "the prefill instance failed");
        }
        return;
    }
    if (ev->type == KV_EVENT_NOTICE && ev->payload_len == 0) return; /* a batch of blocks landed; more follow */
    dreq *r = find_id(s, ev->tag);
    if (!r || !r->pd) {
        pd_warn("kv: %s for unknown request %llu ignored", ev->type == KV_EVENT_NOTICE ? "notice" : "abort",
                (unsigned long long)ev->tag);
        return;
    }
    if (ev->type == KV_EVENT_ABORTED) {
        pd_warn("request %s: KV transfer aborted: %s", r->ext_id, pd_status_str(ev->status));
        pd_counter_add(s->metrics->kv_failures, NULL, 1);
        kv_lost(r, "KV transfer from the prefill instance failed");
        return;
    }
    mdl_handoff h;
    pd_status hs = mdl_handoff_decode(ev->payload, ev->payload_len, &h);
    if (hs == PD_OK && h.req_id == r->id && h.first_token < 0) {
        pd_info("request %s: the prefill instance abandoned it", r->ext_id);
        kv_lost(r, "the prefill instance gave the request up");
        return;
    }
    if (hs != PD_OK || h.req_id != r->id || h.hidden_size != s->m->cfg.hidden_size) {
        pd_error("request %s: malformed ready notice (%zu bytes)", r->ext_id, ev->payload_len);
        abort_req(r);
        kv_resolved(r);
        return;
    }
    if (r->aborting) {
        kv_resolved(r);
        return;
    }
    r->kv_arrived = 1;
    r->t_kv = pd_time_now();
    pd_histogram_observe(s->metrics->kv_wait, NULL, r->t_kv - r->t0);
    float *hid = malloc((size_t)h.hidden_size * sizeof(float)); /* the payload need not be aligned */
    if (hid) memcpy(hid, h.hidden, (size_t)h.hidden_size * sizeof(float));
    pd_status st = hid ? mdl_engine_kv_ready(s->eng, r->id, h.first_token, h.logprob, h.n_top, h.top_ids, h.top_lps, hid) : PD_ERR_NOMEM;
    free(hid);
    if (st != PD_OK) {
        pd_error("request %s: cannot start decoding: %s", r->ext_id, pd_status_str(st));
        abort_req(r);
    }
}

/* ---- HTTP --------------------------------------------------------------------------------------------------- */

static void handle_open(dec_server *s, struct evhttp_request *req)
{
    char *body = NULL, err[256] = "";
    if (pd_http_body(req, 64u << 20, &body, NULL) != PD_OK) {
        pd_http_reply_error(req, 413, NULL, NULL, "request body too large");
        return;
    }
    cJSON *root = cJSON_Parse(body);
    free(body);
    int32_t *prompt = NULL;
    int np = 0;
    mdl_gen_params p;
    const cJSON *id = root ? cJSON_GetObjectItemCaseSensitive(root, "id") : NULL;
    const cJSON *mode = root ? cJSON_GetObjectItemCaseSensitive(root, "mode") : NULL;
    int pd = !mode || (cJSON_IsString(mode) && !strcmp(mode->valuestring, "pd"));
    if (!cJSON_IsObject(root)) {
        pd_http_reply_error(req, 400, NULL, NULL, "body must be a JSON object");
        goto done;
    }
    if (!cJSON_IsString(id) || !id->valuestring[0] || strlen(id->valuestring) >= sizeof(((dreq *)0)->ext_id)) {
        pd_http_reply_error(req, 400, NULL, "id", "'id' must be a non-empty string under 96 bytes");
        goto done;
    }
    if (mode && !(cJSON_IsString(mode) && (!strcmp(mode->valuestring, "pd") || !strcmp(mode->valuestring, "local")))) {
        pd_http_reply_error(req, 400, NULL, "mode", "'mode' must be \"pd\" or \"local\"");
        goto done;
    }
    if (!pd && !s->o->colocated) {
        pd_http_reply_error(req, 400, NULL, "mode", "this decode instance does not prefill (start it with --colocated)");
        goto done;
    }
    if (pd && !s->kv) {
        pd_http_reply_error(req, 503, NULL, NULL, "KV transfer is unavailable on this instance");
        goto done;
    }
    if (find_ext(s, id->valuestring)) {
        pd_http_reply_error(req, 400, NULL, "id", "request '%s' already exists", id->valuestring);
        goto done;
    }
    if (mdl_serve_parse_gen(s->m, root, s->o->serve.seed, s->next_id, &prompt, &np, &p, err, sizeof err) != PD_OK) {
        pd_http_reply_error(req, 400, NULL, NULL, "%s", err);
        goto done;
    }
    dreq *r = calloc(1, sizeof *r);
    if (!r) {
        pd_http_reply_error(req, 503, NULL, NULL, "out of memory");
        goto done;
    }
    r->s = s;
    r->id = ++s->next_id;
    snprintf(r->ext_id, sizeof r->ext_id, "%s", id->valuestring);
    r->pd = pd;
    r->t0 = pd_time_now();
    pd_status st = mdl_engine_submit(s->eng, r->id, r, prompt, np, &p, pd ? MDL_REQ_REMOTE_KV : MDL_REQ_LOCAL);
    if (st != PD_OK) {
        free(r);
        pd_counter_add(s->metrics->rejected, NULL, 1);
        if (st == PD_ERR_RANGE)
            pd_http_reply_error(req, 400, NULL, "max_tokens",
                                "prompt (%d tokens) + max_tokens (%d) exceeds this instance's max model length %d",
                                np, p.max_tokens, s->eo.max_model_len);
        else if (st == PD_ERR_FULL) pd_http_reply_retry(req, 429, "the decode queue is full; retry later");
        else if (st == PD_ERR_BUSY) pd_http_reply_retry(req, 503, "no KV cache blocks free; retry later");
        else if (st == PD_ERR_NOMEM) pd_http_reply_retry(req, 503, "out of memory; retry later");
        else pd_http_reply_error(req, 400, NULL, NULL, "request refused: %s", pd_status_str(st));
        goto done;
    }
    const cJSON *pf = cJSON_GetObjectItemCaseSensitive(root, "prefill_kv_desc");
    if (pd && cJSON_IsString(pf)) {
        if (kv_remote_create(s->kv, pf->valuestring, &r->prefill) == PD_OK) r->prefill_peer = kv_remote_peer_id(r->prefill);
        else pd_warn("request %s: cannot connect to the announced prefill instance", r->ext_id);
    }
    r->http = req;
    r->next = s->reqs;
    s->reqs = r;
    evhttp_connection_set_closecb(evhttp_request_get_connection(req), close_cb, r);
    pd_http_stream_start(req, 200, "application/x-ndjson");
    if (pd) {
        int *blocks = malloc((size_t)s->eo.n_blocks * sizeof(int));
        int nb = blocks ? mdl_engine_blocks(s->eng, r->id, blocks, s->eo.n_blocks) : -1;
        cJSON *o = cJSON_CreateObject(), *kv = NULL;
        cJSON_AddStringToObject(o, "event", "reserved");
        kv = cJSON_AddObjectToObject(o, "kv");
        cJSON_AddStringToObject(kv, "desc", s->desc);
        cJSON_AddNumberToObject(kv, "req", (double)r->id);
        cJSON *ba = cJSON_AddArrayToObject(kv, "blocks");
        for (int i = 0; i < nb; i++) cJSON_AddItemToArray(ba, cJSON_CreateNumber(blocks[i]));
        cJSON_AddNumberToObject(kv, "block_size", s->eo.block_size);
        cJSON_AddNumberToObject(kv, "block_bytes", (double)mdl_engine_pool(s->eng)->block_bytes);
        cJSON_AddStringToObject(kv, "layout", s->layout);
        /* wall clock: the prefill instance starts no write after it (hosts' clocks agree to well within
         * kv_wait_timeout, the grace an aborted reservation keeps its blocks) */
        cJSON_AddNumberToObject(kv, "not_after", pd_wall_now() + s->o->kv_transfer_timeout);
        struct timeval tv = {(long)s->o->kv_transfer_timeout,
                             (long)((s->o->kv_transfer_timeout - (long)s->o->kv_transfer_timeout) * 1e6)};
        r->kv_deadline = evtimer_new(s->base, kv_deadline_cb, r);
        if (!r->kv_deadline || evtimer_add(r->kv_deadline, &tv) != 0)
            pd_error("request %s: cannot arm the KV deadline timer; it waits for its KV without one", r->ext_id);
        stream_line(r, o);
        cJSON_Delete(o);
        free(blocks);
    }
done:
    free(prompt);
    cJSON_Delete(root);
}

static void reply_health(dec_server *s, struct evhttp_request *req)
{
    cJSON *o = mdl_serve_health(s->eng, s->o->colocated ? "colocated" : "decode", s->o->serve.served_model_name);
    if (s->draining) cJSON_ReplaceItemInObject(o, "status", cJSON_CreateString("draining"));
    pd_http_reply_json(req, s->draining ? 503 : 200, o);
    cJSON_Delete(o);
}


static int idle(void *arg) { return ((dec_server *)arg)->reqs == NULL; }

void dec_server_drain(void *server)
{
    dec_server *s = server;
    if (s->draining) return;
    s->draining = 1;
    pd_announcer_destroy(s->announcer); /* a draining instance must not register again */
    s->announcer = NULL;
    if (pd_drain_start(s->base, "decode", s->o->drain_timeout, idle, s, &s->drain) != PD_OK)
        event_base_loopexit(s->base, NULL);
}

static void gencb(struct evhttp_request *req, void *arg)
{
    dec_server *s = arg;
    char path[256];
    pd_http_path(req, path, sizeof path);
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (!strcmp(path, "/internal/requests")) {
        if (m == EVHTTP_REQ_POST && s->draining) pd_http_reply_retry(req, 503, "this instance is draining");
        else if (m == EVHTTP_REQ_POST) handle_open(s, req);
        else pd_http_reply_error(req, 405, NULL, NULL, "use POST");
    } else if (!strncmp(path, "/internal/requests/", 19)) {
        if (m != EVHTTP_REQ_DELETE) {
            pd_http_reply_error(req, 405, NULL, NULL, "use DELETE");
            return;
        }
        char *ext = evhttp_uridecode(path + 19, 0, NULL);
        dreq *r = ext ? find_ext(s, ext) : NULL;
        const char *q = strchr(evhttp_request_get_uri(req), '?');
        if (!r) pd_http_reply_error(req, 404, NULL, NULL, "no request '%s'", ext ? ext : "");
        else {
            abort_req(r);
            /* the router heard from the prefill instance that it refused the request before writing anything */
            if (q && strstr(q, "kv=untouched")) kv_resolved(r);
            cJSON *o = cJSON_CreateObject();
            cJSON_AddBoolToObject(o, "aborted", 1);
            pd_http_reply_json(req, 200, o);
            cJSON_Delete(o);
        }
        free(ext);
    } else if (!strcmp(path, "/internal/drain") && m == EVHTTP_REQ_POST) {
        dec_server_drain(s);
        pd_http_reply_text(req, 200, "application/json", "{\"draining\":true}", 17);
    } else if (!strcmp(path, "/health")) {
        reply_health(s, req);
    } else if (!strcmp(path, "/metrics")) {
        pd_http_reply_metrics(req, s->metrics->reg);
    } else {
        pd_http_reply_error(req, 404, NULL, NULL, "no route %s", path);
    }
}

pd_status dec_server_create(struct event_base *base, dec_opts *o, dec_server **out, int *bound_port)
{
    char err[1024];
    dec_server *s = calloc(1, sizeof *s);
    if (!s) return PD_ERR_NOMEM;
    s->base = base;
    s->o = o;
    pd_status st = mdl_serve_load(&o->serve, &s->m, &s->eo, err, sizeof err);
    if (st != PD_OK) {
        pd_error("decode: %s", err);
        goto fail_server;
    }
    if ((st = pd_mailbox_create(base, sizeof(mdl_event), on_engine_event, s, &s->mb)) != PD_OK) goto fail_server;
    /* KV transfer first: the pool lives in UCX-allocated memory, so a prefill instance on this host puts into it
     * directly (with memory we registered ourselves, puts over shared memory degrade to active messages) */
    kv_params_t kp = {.field_mask = KV_PARAM_FIELD_EVENT_CB | KV_PARAM_FIELD_MAX_NOTICE, .event_cb = on_kv_event,
                      .event_arg = s, .max_notice = 4096 + (size_t)s->m->cfg.hidden_size * sizeof(float)};
    if (o->kv_proto && kv_proto_parse(o->kv_proto, &kp.proto) == PD_OK) kp.field_mask |= KV_PARAM_FIELD_PROTO;
    size_t pool_bytes = mdl_kv_pool_bytes(&s->m->cfg, s->m->n_mtp, s->m->opts.kv_type, s->eo.block_size,
                                          mdl_engine_pool_blocks(&s->eo));
    st = kv_context_create(&kp, &s->kv);
    if (st == PD_OK) st = kv_context_attach(s->kv, base);
    if (st == PD_OK) st = kv_region_alloc(s->kv, pool_bytes, &s->region);
    if (st == PD_OK) st = kv_region_descriptor(s->region, &s->desc);
    if (st != PD_OK) {
        if (!o->colocated) {
            pd_error("decode: KV transfer unavailable (%s)", pd_status_str(st));
            goto fail_server;
        }
        pd_warn("decode: KV transfer unavailable (%s); serving colocated requests only", pd_status_str(st));
        kv_region_destroy(s->region);
        kv_context_destroy(s->kv);
        s->region = NULL;
        s->kv = NULL;
    }
    s->eo.kv_mem = s->region ? kv_region_base(s->region) : NULL;
    if ((st = mdl_engine_create(s->m, &s->eo, engine_cb, s, &s->eng)) != PD_OK) {
        pd_error("decode: cannot start the engine: %s", pd_status_str(st));
        goto fail_server;
    }
    mdl_engine_layout(s->eng, s->layout, sizeof s->layout);
    if ((st = mdl_serve_metrics_create(s->eng, o->colocated ? "colocated" : "decode", &s->metrics)) != PD_OK)
        goto fail_server;
    pd_http_limits lim = {.max_body = 64u << 20};
    if ((st = pd_http_server_create(base, o->host, o->port, &lim, gencb, s, &s->http, bound_port)) != PD_OK)
        goto fail_server;
    if (o->router_url) {
        char body[512];
        const char *host = o->advertise_host ? o->advertise_host : strcmp(o->host, "0.0.0.0") ? o->host : "127.0.0.1";
        snprintf(body, sizeof body, "{\"address\":\"%s:%d\",\"role\":\"%s\"}", host, *bound_port,
                 o->colocated ? "colocated" : "decode");
        if ((st = pd_announcer_create(base, o->router_url, body, 5.0, &s->announcer)) != PD_OK) goto fail_server;
    }
    *out = s;
    return PD_OK;
fail_server:
    dec_server_destroy(s);
    return st;
}

void dec_server_destroy(dec_server *s)
{
    if (!s) return;
    for (dreq *r = s->reqs; r; r = r->next) /* connections go with the server: no callbacks from them */
        if (r->http) {
            evhttp_connection_set_closecb(evhttp_request_get_connection(r->http), NULL, NULL);
            r->http = NULL;
        }
    pd_announcer_destroy(s->announcer);
    pd_drain_destroy(s->drain);
    if (s->http) evhttp_free(s->http);
    mdl_engine_destroy(s->eng); /* no more events; its pool lives in the region's memory */
    mdl_serve_metrics_destroy(s->metrics);
    while (s->reqs) dreq_free(s, s->reqs);
    pd_mailbox_destroy(s->mb);
    free(s->desc);
    kv_region_destroy(s->region);
    kv_context_destroy(s->kv);
    mdl_model_destroy(s->m);
    free(s);
}
