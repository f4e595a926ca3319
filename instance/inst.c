/* The instance: start-up and shutdown in dependency order, engine events to the loop thread, the KV transfer
 * bring-up, the route table with /health, /metrics and /internal/drain, registration, drain, and the request
 * table's exchange bookkeeping. */
#include <string.h>

#include "common/pd_auth.h"
#include "common/pd_http.h"
#include "instance/inst.h"

/* ---- requests ----------------------------------------------------------------------------------------------- */

void inst_req_init(inst *in, inst_req *r, const char *ext_id)
{
    r->owner = in;
    r->id = ++in->next_id;
    snprintf(r->ext_id, sizeof r->ext_id, "%s", ext_id);
}

static void close_cb(struct evhttp_connection *c, void *arg)
{
    (void)c;
    inst_req *r = arg;
    inst *in = r->owner;
    pd_http_release_detached(r->http);
    r->http = NULL;
    in->role.client_gone(r);
}

void inst_req_add(inst *in, inst_req *r, struct evhttp_request *http)
{
    r->owner = in;
    r->http = http;
    inst_reqtab_add(&in->reqs, r);
    if (http) pd_http_set_closecb(http, close_cb, r);
}

struct evhttp_request *inst_req_take_http(inst_req *r)
{
    struct evhttp_request *req = r->http;
    if (req) pd_http_set_closecb(req, NULL, NULL);
    r->http = NULL;
    return req;
}

void inst_req_remove(inst *in, inst_req *r)
{
    inst_reqtab_remove(&in->reqs, r);
    inst_req_take_http(r);
}

inst_req *inst_req_find(const inst *in, uint64_t id) { return inst_reqtab_find_id(&in->reqs, id); }

pd_status inst_open_read(inst *in, struct evhttp_request *req, inst_open *op, int *status, const char **param,
                         char *err, size_t errlen)
{
    char *body = NULL;
    memset(op, 0, sizeof *op);
    *status = 400;
    *param = NULL;
    if (pd_http_body(req, 64u << 20, &body, NULL) != PD_OK) {
        *status = 413;
        snprintf(err, errlen, "request body too large");
        return PD_ERR_RANGE;
    }
    op->root = cJSON_Parse(body);
    free(body);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(op->root, "id");
    if (!cJSON_IsObject(op->root)) {
        snprintf(err, errlen, "body must be a JSON object");
    } else if (!cJSON_IsString(id) || !id->valuestring[0] || strlen(id->valuestring) >= INST_EXT_ID_LEN) {
        *param = "id";
        snprintf(err, errlen, "'id' must be a non-empty string under %d bytes", INST_EXT_ID_LEN);
    } else if (inst_reqtab_find_ext(&in->reqs, id->valuestring)) {
        *param = "id";
        snprintf(err, errlen, "request '%s' already exists", id->valuestring);
    } else if (mdl_serve_parse_gen(in->m, op->root, in->o->serve.seed, in->next_id, &op->prompt, &op->n_prompt, &op->p,
                                   err, errlen) == PD_OK) {
        op->ext_id = id->valuestring;
        return PD_OK;
    }
    inst_open_free(op);
    return PD_ERR_INVALID;
}

void inst_open_free(inst_open *op)
{
    cJSON_Delete(op->root);
    free(op->prompt);
    memset(op, 0, sizeof *op);
}

/* ---- engine events: engine thread -> mailbox -> loop thread ------------------------------------------------ */

static void engine_cb(const mdl_event *ev, void *arg)
{
    inst *in = arg;
    size_t hidden = (size_t)in->m->cfg.hidden_size * sizeof(float);
    int with_hidden = in->role.want_hidden && ev->type == MDL_EV_PREFILLED;
    mdl_event copy = *ev;
    copy.hidden = NULL;
    uint8_t *msg = (uint8_t *)&copy;
    if (in->msg_size > sizeof copy && !(msg = calloc(1, in->msg_size))) {
        pd_error("%s: out of memory forwarding an engine event; event for %llu lost", in->role.name,
                 (unsigned long long)ev->id);
        return;
    }
    if (msg != (uint8_t *)&copy) memcpy(msg, &copy, sizeof copy);
    if (with_hidden) memcpy(msg + sizeof copy, ev->hidden, hidden);
    if (pd_mailbox_post(in->mb, msg) != PD_OK)
        pd_error("%s: event queue full; event for %llu lost", in->role.name, (unsigned long long)ev->id);
    if (msg != (uint8_t *)&copy) free(msg);
}

static void on_engine_event(void *msg, void *arg)
{
    inst *in = arg;
    const mdl_event *ev = msg;
    inst_req *r = inst_reqtab_find_id(&in->reqs, ev->id);
    if (!r) return;
    int with_hidden = in->role.want_hidden && ev->type == MDL_EV_PREFILLED;
    in->role.on_event(in, r, ev, with_hidden ? (const float *)((const uint8_t *)msg + sizeof *ev) : NULL);
}

/* ---- HTTP: the role's routes and the built-in ones ---------------------------------------------------------- */

static void reply_health(inst *in, struct evhttp_request *req)
{
    cJSON *o = mdl_serve_health(in->eng, in->role.kind, in->o->serve.served_model_name);
    if (!o) {
        pd_http_reply_error(req, 503, NULL, NULL, "out of memory");
        return;
    }
    if (in->role.health) in->role.health(in, o);
    char why[160];
    if (!pd_auth_verify(req, why, sizeof why)) /* the KV region's address and key go to the cluster's peers only */
        cJSON_DeleteItemFromObjectCaseSensitive(o, "kv_desc");
    if (in->o->dist) dst_health(in->o->dist, o);
    if (in->draining) cJSON_ReplaceItemInObject(o, "status", cJSON_CreateString("draining"));
    pd_http_reply_json(req, in->draining ? 503 : 200, o);
    cJSON_Delete(o);
}

static void route_abort(inst *in, const inst_route *rt, const char *ext_path, struct evhttp_request *req)
{
    if (evhttp_request_get_command(req) != EVHTTP_REQ_DELETE) {
        pd_http_reply_error(req, 405, NULL, NULL, "use DELETE");
        return;
    }
    char *ext = evhttp_uridecode(ext_path, 0, NULL);
    inst_req *r = ext ? inst_reqtab_find_ext(&in->reqs, ext) : NULL;
    if (!r) {
        pd_http_reply_error(req, 404, NULL, NULL, "no request '%s'", ext ? ext : "");
    } else {
        rt->abort(in, r, req);
        pd_http_reply_text(req, 200, "application/json", "{\"aborted\":true}", 16);
    }
    free(ext);
}

static void gencb(struct evhttp_request *req, void *arg)
{
    inst *in = arg;
    char path[256];
    pd_http_path(req, path, sizeof path);
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    /* with a cluster secret every route but /health and /metrics takes signed calls only */
    if (pd_auth_enabled() && strcmp(path, "/health") && strcmp(path, "/metrics") && !pd_auth_check(req, in->role.name))
        return;
    for (int i = 0; i < in->role.n_routes; i++) {
        const inst_route *rt = &in->role.routes[i];
        size_t n = strlen(rt->path);
        if (strncmp(path, rt->path, n) != 0) continue;
        if (path[n] == '\0') {
            if (m != EVHTTP_REQ_POST) pd_http_reply_error(req, 405, NULL, NULL, "use POST");
            else if (in->draining) pd_http_reply_retry(req, 503, "this instance is draining");
            else rt->open(in, req);
            return;
        }
        if (path[n] == '/') {
            route_abort(in, rt, path + n + 1, req);
            return;
        }
    }
    if (!strcmp(path, "/internal/drain") && m == EVHTTP_REQ_POST) {
        inst_drain(in);
        pd_http_reply_text(req, 200, "application/json", "{\"draining\":true}", 17);
    } else if (!strcmp(path, "/health")) {
        reply_health(in, req);
    } else if (!strcmp(path, "/metrics")) {
        pd_http_reply_metrics(req, in->metrics->reg);
    } else {
        pd_http_reply_error(req, 404, NULL, NULL, "no route %s", path);
    }
}

static int idle(void *arg) { return ((inst *)arg)->reqs.count == 0; }

void inst_drain(void *arg)
{
    inst *in = arg;
    if (in->draining) return;
    in->draining = 1;
    pd_announcer_destroy(in->announcer); /* a draining instance must not register again */
    in->announcer = NULL;
    if (pd_drain_start(in->base, in->role.name, in->o->drain_timeout, idle, in, &in->drain) != PD_OK)
        event_base_loopexit(in->base, NULL);
}

/* ---- start-up and shutdown ---------------------------------------------------------------------------------- */

/* The KV transfer context attached to the loop, and a region over mem (NULL: allocated by the context, so peers
 * on this host can put into it directly; memory we registered ourselves degrades shared-memory puts to active
 * messages) with its descriptor. */
static pd_status kv_open(inst *in, void *mem, size_t bytes)
{
    kv_params_t kp;
    inst__kv_params(&in->role, in->o, in->m, &kp);
    if (in->role.kv_event_cb) {
        kp.field_mask |= KV_PARAM_FIELD_EVENT_CB;
        kp.event_cb = in->role.kv_event_cb;
        kp.event_arg = in;
    }
    pd_status st = kv_context_create(&kp, &in->kv);
    if (st == PD_OK) st = kv_context_attach(in->kv, in->base);
    if (st == PD_OK)
        st = mem ? kv_region_create(in->kv, mem, bytes, &in->region) : kv_region_alloc(in->kv, bytes, &in->region);
    if (st == PD_OK) st = kv_region_descriptor(in->region, &in->desc);
    return st;
}

/* Decode: the pool goes into a region the KV context allocates, before the engine that uses it. */
static pd_status kv_open_for_pool(inst *in)
{
    size_t pool_bytes = mdl_kv_pool_bytes(&in->m->cfg, in->m->n_mtp, in->m->opts.kv_type, in->eo.block_size,
                                          mdl_engine_pool_blocks(&in->eo));
    pd_status st = kv_open(in, NULL, pool_bytes);
    if (st != PD_OK) {
        if (!in->role.kv_optional) {
            pd_error("%s: KV transfer unavailable (%s)", in->role.name, pd_status_str(st));
            return st;
        }
        pd_warn("%s: KV transfer unavailable (%s); serving colocated requests only", in->role.name, pd_status_str(st));
        kv_region_destroy(in->region);
        kv_context_destroy(in->kv);
        free(in->desc);
        in->region = NULL;
        in->kv = NULL;
        in->desc = NULL;
    }
    in->eo.kv_mem = in->region ? kv_region_base(in->region) : NULL;
    return PD_OK;
}

static pd_status start_engine(inst *in)
{
    pd_status st = PD_OK;
    dst *d = in->o->dist;
    if (in->role.pool_in_region) st = kv_open_for_pool(in);
    if (d && (st = dst_all_ok(d, st, "prepare the engine")) == PD_OK) st = dst_share_engine_opts(d, &in->eo);
    if (st != PD_OK) return st;
    mdl_event_cb cb = engine_cb;
    void *cb_arg = in;
    if (d && (st = inst__ranks_open(in)) != PD_OK) dst_abort(d, "cannot listen to the other ranks");
    if (d) dst_attach(d, in->m, &in->eo, &cb, &cb_arg);
    if ((st = mdl_engine_create(in->m, &in->eo, cb, cb_arg, &in->eng)) != PD_OK) {
        pd_error("%s: cannot start the engine: %s", in->role.name, pd_status_str(st));
        if (d) dst_abort(d, "an engine did not start");
        return st;
    }
    if (d) {
        dst_set_engine(d, in->eng);
        dst_log_rank(d, in->role.name, in->m);
        if ((st = inst__ranks_wait(in)) != PD_OK) return st; /* the engine's stop ends every rank */
    }
    mdl_engine_layout(in->eng, in->layout, sizeof in->layout);
    if (!in->role.pool_in_region) { /* prefill: the region registers the engine's pool */
        mdl_kv_pool *pool = mdl_engine_pool(in->eng);
        if ((st = kv_open(in, pool->base, pool->block_bytes * (size_t)pool->n_blocks)) != PD_OK) {
            pd_error("%s: KV transfer unavailable: %s", in->role.name, pd_status_str(st));
            return st;
        }
    }
    if ((st = mdl_serve_metrics_create(in->eng, in->role.kind, &in->metrics)) != PD_OK) return st;
    return d ? dst_metrics(d, in->metrics->reg) : PD_OK;
}

static pd_status listen_and_register(inst *in, int *bound_port)
{
    inst_opts *o = in->o;
    /* a connection (the router's call) may come with a KV transfer's descriptors */
    pd_http_limits lim = {.max_body = 64u << 20, .fds_per_connection = 2, .listen = &o->listen};
    pd_status st = pd_http_server_create(in->base, o->host, o->port, &lim, gencb, in, &in->http, bound_port);
    if (st != PD_OK || !o->router_url) return st;
    char body[512];
    const char *host = o->advertise_host ? o->advertise_host : strcmp(o->host, "0.0.0.0") ? o->host : "127.0.0.1";
    snprintf(body, sizeof body, "{\"address\":\"%s:%d\",\"role\":\"%s\"}", host, *bound_port, in->role.kind);
    return pd_announcer_create(in->base, o->router_url, body, 5.0, &in->announcer);
}

pd_status inst_create(struct event_base *base, inst_opts *o, const inst_role *role, inst **out, int *bound_port)
{
    char err[1024];
    inst *in = calloc(1, sizeof *in);
    if (!in) return PD_ERR_NOMEM;
    in->base = base;
    in->o = o;
    in->role = *role;
    pd_status st = inst_reqtab_init(&in->reqs);
    if (st != PD_OK) {
        free(in);
        return st;
    }
    if ((st = mdl_serve_load(&o->serve, &in->m, &in->eo, err, sizeof err)) != PD_OK)
        pd_error("%s: %s", role->name, err);
    if (o->dist && (st = dst_all_ok_err(o->dist, st, err, "load the model")) == PD_OK)
        st = dst_agree_model(o->dist, in->m);
    if (st != PD_OK) goto fail;
    if (role->configure) role->configure(in, &in->eo);
    in->msg_size = sizeof(mdl_event) + (role->want_hidden ? (size_t)in->m->cfg.hidden_size * sizeof(float) : 0);
    if ((st = pd_mailbox_create(base, in->msg_size, on_engine_event, in, &in->mb)) != PD_OK) goto fail;
    if ((st = start_engine(in)) != PD_OK) goto fail;
    if ((st = listen_and_register(in, bound_port)) != PD_OK) goto fail;
    *out = in;
    return PD_OK;
fail:
    inst_destroy(in);
    return st;
}

static void free_requests(inst *in)
{
    while (in->reqs.head) {
        inst_req *r = in->reqs.head;
        inst_reqtab_remove(&in->reqs, r);
        in->role.req_free(r);
    }
}

void inst_destroy(inst *in)
{
    if (!in) return;
    for (inst_req *r = in->reqs.head; r; r = r->next) inst_req_take_http(r); /* connections go with the server */
    pd_announcer_destroy(in->announcer);
    pd_drain_destroy(in->drain);
    pd_http_server_free(in->http);
    if (in->role.pool_in_region) { /* the engine computes into the region's memory: it goes first */
        mdl_engine_destroy(in->eng);
        mdl_serve_metrics_destroy(in->metrics);
        inst__ranks_close(in);
        free_requests(in);
        kv_region_destroy(in->region);
        kv_context_destroy(in->kv);
    } else { /* transfers read the engine's pool: cancelled first, their callbacks run while the engine lives */
        in->closing = 1;
        kv_region_destroy(in->region);
        kv_context_destroy(in->kv);
        inst__ranks_close(in); /* transfers on other ranks end too, while the engine lives */
        mdl_engine_destroy(in->eng);
        mdl_serve_metrics_destroy(in->metrics);
        free_requests(in);
    }
    pd_mailbox_destroy(in->mb);
    mdl_model_destroy(in->m);
    inst_reqtab_free(&in->reqs);
    free(in->desc);
    free(in);
}
