/* The registry of prefill and decode instances: configured addresses, a health poll per instance
 * (GET /health) that refreshes load, and the least-load choices. An instance that fails a poll, or has not
 * answered for three intervals, is out of scheduling until it answers again. */
#include <string.h>

#include "router/router.h"

struct rt_registry {
    struct event_base *base;
    rt_instance **inst;      /* stable pointers: choices hold them while instances come and go */
    int n;
    double interval;
    rt_policy policy;
    unsigned rr;             /* round-robin cursor */
    struct event *timer;
};

pd_status rt_policy_parse(const char *s, rt_policy *out)
{
    if (!s || !strcmp(s, "least-load")) *out = RT_POLICY_LEAST_LOAD;
    else if (!strcmp(s, "round-robin")) *out = RT_POLICY_ROUND_ROBIN;
    else if (!strcmp(s, "bucket")) *out = RT_POLICY_BUCKET;
    else return PD_ERR_INVALID;
    return PD_OK;
}

static int schedulable(const rt_instance *in) { return in->healthy && !in->draining && !in->removed; }

static void probe_done(pd_http_call *c, int status, const char *body, size_t len, pd_status err, void *arg)
{
    (void)c;
    (void)len;
    rt_instance *in = arg;
    in->probe = NULL;
    cJSON *o = status == 200 || status == 503 ? cJSON_Parse(body) : NULL;
    if (o && status == 503 && !cJSON_IsString(cJSON_GetObjectItem(o, "status"))) {
        cJSON_Delete(o);
        o = NULL;
    }
    if (!o) {
        if (in->healthy) pd_warn("router: instance %s is unhealthy (%s)", in->addr,
                                 err != PD_OK ? pd_status_str(err) : status ? "bad health reply" : "no answer");
        in->healthy = 0;
        return;
    }
    const cJSON *role = cJSON_GetObjectItem(o, "role"), *layout = cJSON_GetObjectItem(o, "layout");
    const cJSON *status_s = cJSON_GetObjectItem(o, "status");
    in->draining = cJSON_IsString(status_s) && !strcmp(status_s->valuestring, "draining");
    const cJSON *mml = cJSON_GetObjectItem(o, "max_model_len"), *load = cJSON_GetObjectItem(o, "load");
    if (cJSON_IsString(role) && !strcmp(role->valuestring, "colocated") && in->role == RT_DECODE)
        in->role = RT_COLOCATED;
    if (cJSON_IsString(layout)) snprintf(in->layout, sizeof in->layout, "%s", layout->valuestring);
    const cJSON *kd = cJSON_GetObjectItem(o, "kv_desc");
    if (cJSON_IsString(kd) && (!in->kv_desc || strcmp(in->kv_desc, kd->valuestring))) {
        free(in->kv_desc);
        in->kv_desc = strdup(kd->valuestring);
    }
    if (cJSON_IsNumber(mml)) in->max_model_len = mml->valueint;
    if (cJSON_IsObject(load)) {
        const cJSON *v;
        if ((v = cJSON_GetObjectItem(load, "running")) && cJSON_IsNumber(v)) in->running = v->valueint;
        if ((v = cJSON_GetObjectItem(load, "waiting")) && cJSON_IsNumber(v)) in->waiting = v->valueint;
        if ((v = cJSON_GetObjectItem(load, "free_blocks")) && cJSON_IsNumber(v)) in->free_blocks = v->valueint;
        if ((v = cJSON_GetObjectItem(load, "total_blocks")) && cJSON_IsNumber(v)) in->total_blocks = v->valueint;
        if ((v = cJSON_GetObjectItem(load, "queued_tokens")) && cJSON_IsNumber(v))
            in->queued_tokens = (long)v->valuedouble;
        if ((v = cJSON_GetObjectItem(load, "captured_sizes")) && cJSON_IsArray(v)) {
            int n = 0;
            const cJSON *e;
            cJSON_ArrayForEach(e, v)
            {
                if (n < (int)PD_ARRAY_LEN(in->captured) && cJSON_IsNumber(e) && e->valueint > 0 &&
                    (n == 0 || e->valueint > in->captured[n - 1]))
                    in->captured[n++] = e->valueint;
            }
            in->n_captured = n;
        }
    }
    if (!in->healthy) pd_info("router: instance %s (%s) is healthy", in->addr,
                              in->role == RT_PREFILL ? "prefill" : in->role == RT_COLOCATED ? "colocated" : "decode");
    in->healthy = 1;
    in->last_ok = pd_time_now();
    cJSON_Delete(o);
}

static void poll_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rt_registry *r = arg;
    double now = pd_time_now();
    for (int i = 0; i < r->n; i++) { /* forget removed instances nothing refers to any more */
        rt_instance *in = r->inst[i];
        if (!in->removed || in->inflight > 0 || in->probe) continue;
        pd_info("router: instance %s removed", in->addr);
        free(in->kv_desc);
        free(in);
        r->inst[i--] = r->inst[--r->n];
    }
    for (int i = 0; i < r->n; i++) {
        rt_instance *in = r->inst[i];
        if (in->removed) continue;
        if (in->healthy && now - in->last_ok > 3 * r->interval + 1) {
            pd_warn("router: instance %s stopped answering health checks", in->addr);
            in->healthy = 0;
        }
        if (in->probe) continue;
        int timeout = (int)(2 * r->interval) + 1;
        if (pd_http_call_start(r->base, in->host, in->port, "GET", "/health", NULL, 0, timeout, NULL, probe_done, in,
                               &in->probe) != PD_OK)
            in->healthy = 0;
    }
}

pd_status rt_registry_add(rt_registry *r, const char *addr, rt_role role, rt_instance **out)
{
    rt_instance *in = rt_registry_find(r, addr);
    if (in) {
        in->removed = 0;
        if (out) *out = in;
        return PD_OK;
    }
    in = calloc(1, sizeof *in);
    if (!in) return PD_ERR_NOMEM;
    snprintf(in->addr, sizeof in->addr, "%s", addr);
    if (pd_http_parse_hostport(addr, in->host, sizeof in->host, &in->port) != PD_OK) {
        free(in);
        return PD_ERR_INVALID;
    }
    in->role = role;
    rt_instance **n = realloc(r->inst, (size_t)(r->n + 1) * sizeof *n);
    if (!n) {
        free(in);
        return PD_ERR_NOMEM;
    }
    r->inst = n;
    r->inst[r->n++] = in;
    if (out) *out = in;
    return PD_OK;
}

rt_instance *rt_registry_find(rt_registry *r, const char *addr)
{
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->inst[i]->addr, addr)) return r->inst[i];
    return NULL;
}

static void drain_done(pd_http_call *c, int status, const char *body, size_t len, pd_status err, void *arg)
{
    (void)c;
    (void)body;
    (void)len;
    rt_instance *in = arg;
    in->probe = NULL;
    if (status != 200) pd_warn("router: %s did not accept the drain request (%s)", in->addr,
                               err != PD_OK ? pd_status_str(err) : "error reply");
}

void rt_registry_drain(rt_registry *r, rt_instance *in)
{
    in->draining = 1;
    pd_http_call_cancel(in->probe);
    in->probe = NULL;
    if (pd_http_call_start(r->base, in->host, in->port, "POST", "/internal/drain", "{}", 2, 10, NULL, drain_done, in,
                           &in->probe) != PD_OK)
        pd_warn("router: cannot reach %s to drain it", in->addr);
}

void rt_registry_remove(rt_registry *r, rt_instance *in)
{
    (void)r;
    in->removed = 1;
    in->healthy = 0;
    pd_http_call_cancel(in->probe);
    in->probe = NULL;
}

static pd_status add_list(rt_registry *r, const char *list, rt_role role)
{
    if (!list || !*list) return PD_OK;
    char *copy = strdup(list), *save = NULL;
    if (!copy) return PD_ERR_NOMEM;
    pd_status st = PD_OK;
    for (char *tok = strtok_r(copy, ", ", &save); tok && st == PD_OK; tok = strtok_r(NULL, ", ", &save)) {
        st = rt_registry_add(r, tok, role, NULL);
        if (st == PD_ERR_INVALID) pd_error("router: '%s' is not host:port", tok);
    }
    free(copy);
    return st;
}

pd_status rt_registry_create(struct event_base *base, const char *prefill, const char *decode, double interval,
                             rt_policy policy, rt_registry **out)
{
    rt_registry *r = calloc(1, sizeof *r);
    if (!r) return PD_ERR_NOMEM;
    r->base = base;
    r->policy = policy;
    r->interval = interval > 0 ? interval : 1.0;
    pd_status st;
    if ((st = add_list(r, prefill, RT_PREFILL)) != PD_OK || (st = add_list(r, decode, RT_DECODE)) != PD_OK) {
        rt_registry_destroy(r);
        return st;
    }
    r->timer = event_new(base, -1, EV_PERSIST, poll_cb, r);
    struct timeval tv = {(long)r->interval, (long)((r->interval - (long)r->interval) * 1e6)};
    if (!r->timer || event_add(r->timer, &tv) != 0) {
        rt_registry_destroy(r);
        return PD_ERR_NOMEM;
    }
    poll_cb(-1, 0, r); /* first poll now */
    *out = r;
    return PD_OK;
}

void rt_registry_destroy(rt_registry *r)
{
    if (!r) return;
    if (r->timer) event_free(r->timer);
    for (int i = 0; i < r->n; i++) {
        pd_http_call_cancel(r->inst[i]->probe);
        free(r->inst[i]->kv_desc);
        free(r->inst[i]);
    }
    free(r->inst);
    free(r);
}

/* Round robin over the instances that qualify. */
static rt_instance *pick_rr(rt_registry *r, int (*ok)(const rt_instance *, const void *), const void *arg)
{
    for (int k = 0; k < r->n; k++) {
        rt_instance *in = r->inst[(r->rr + (unsigned)k) % (unsigned)r->n];
        if (ok(in, arg)) {
            r->rr += (unsigned)k + 1;
            return in;
        }
    }
    return NULL;
}

static int decode_ok(const rt_instance *in, const void *arg)
{
    (void)arg;
    return schedulable(in) && in->role != RT_PREFILL;
}

static int prefill_ok(const rt_instance *in, const void *arg)
{
    const rt_instance *const *pa = arg; /* {avoid} ; layout checked by the caller */
    return schedulable(in) && in->role == RT_PREFILL && in != pa[0];
}

/* Bucket tier of adding one sequence to in's batch: 0 it fills a padded row of the captured size the batch already
 * runs on, 1 it stays within the largest captured size, 2 the batch would leave the captured sizes (general path),
 * 3 nothing known. The batch is what the instance last reported, or what the router has sent it if that is more. */
static int bucket_tier(const rt_instance *in)
{
    if (in->n_captured == 0) return 3;
    int n = PD_MAX(in->running + in->waiting, in->inflight);
    if (n + 1 > in->captured[in->n_captured - 1]) return 2;
    for (int i = 0; i < in->n_captured && n > 0; i++)
        if (in->captured[i] >= n) return n + 1 <= in->captured[i] ? 0 : 1;
    return 1;
}

rt_instance *rt_pick_decode(rt_registry *r, int tokens)
{
    (void)tokens; /* the decode instance itself refuses what does not fit */
    if (r->policy == RT_POLICY_ROUND_ROBIN) return pick_rr(r, decode_ok, NULL);
    rt_instance *best = NULL;
    int btier = 0;
    for (int i = 0; i < r->n; i++) {
        rt_instance *in = r->inst[i];
        if (!decode_ok(in, NULL)) continue;
        int tier = r->policy == RT_POLICY_BUCKET ? bucket_tier(in) : 0;
        /* free blocks net of what the router has sent since the last poll, then running sequences */
        long score = (long)in->free_blocks - (long)in->inflight * 4, bscore = 0;
        if (best) bscore = (long)best->free_blocks - (long)best->inflight * 4;
        if (!best || tier < btier ||
            (tier == btier && (score > bscore || (score == bscore && in->running + in->inflight <
                                                                         best->running + best->inflight)))) {
            best = in;
            btier = tier;
        }
    }
    return best;
}

rt_instance *rt_pick_prefill(rt_registry *r, const char *layout, const rt_instance *avoid)
{
    const rt_instance *arg[1] = {avoid};
    for (int tries = 0; r->policy == RT_POLICY_ROUND_ROBIN && tries < r->n; tries++) {
        rt_instance *in = pick_rr(r, prefill_ok, arg);
        if (!in || !layout || !layout[0] || !strcmp(layout, in->layout)) return in;
    }
    rt_instance *best = NULL;
    for (int i = 0; i < r->n; i++) {
        rt_instance *in = r->inst[i];
        if (!prefill_ok(in, arg) || (layout && layout[0] && strcmp(layout, in->layout) != 0)) continue;
        if (!best || in->queued_tokens + in->inflight * 256 < best->queued_tokens + best->inflight * 256) best = in;
    }
    return best;
}

int rt_registry_max_model_len(rt_registry *r)
{
    int m = 0;
    for (int i = 0; i < r->n; i++)
        if (r->inst[i]->role != RT_PREFILL && !r->inst[i]->removed && r->inst[i]->max_model_len > 0)
            m = m == 0 ? r->inst[i]->max_model_len : PD_MIN(m, r->inst[i]->max_model_len);
    return m;
}

int rt_registry_ready(rt_registry *r)
{
    int d = 0, p = 0, c = 0;
    for (int i = 0; i < r->n; i++) {
        if (!schedulable(r->inst[i])) continue;
        d += r->inst[i]->role == RT_DECODE;
        c += r->inst[i]->role == RT_COLOCATED;
        p += r->inst[i]->role == RT_PREFILL;
    }
    return c > 0 || (d > 0 && p > 0);
}

cJSON *rt_registry_json(rt_registry *r)
{
    cJSON *a = cJSON_CreateArray();
    static const char *roles[] = {"prefill", "decode", "colocated"};
    for (int i = 0; i < r->n; i++) {
        rt_instance *in = r->inst[i];
        if (in->removed) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "address", in->addr);
        cJSON_AddStringToObject(o, "role", roles[in->role]);
        cJSON_AddBoolToObject(o, "healthy", in->healthy);
        cJSON_AddBoolToObject(o, "draining", in->draining);
        cJSON_AddBoolToObject(o, "registered", in->registered);
        cJSON_AddNumberToObject(o, "running", in->running);
        cJSON_AddNumberToObject(o, "waiting", in->waiting);
        cJSON_AddNumberToObject(o, "free_blocks", in->free_blocks);
        cJSON_AddNumberToObject(o, "total_blocks", in->total_blocks);
        cJSON_AddNumberToObject(o, "queued_tokens", (double)in->queued_tokens);
        cJSON_AddNumberToObject(o, "inflight", in->inflight);
        if (in->n_captured) {
            cJSON *cs = cJSON_AddArrayToObject(o, "captured_sizes");
            for (int k = 0; k < in->n_captured; k++) cJSON_AddItemToArray(cs, cJSON_CreateNumber(in->captured[k]));
        }
        cJSON_AddItemToArray(a, o);
    }
    return a;
}
