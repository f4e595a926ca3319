/* The dashboard's data. Latency samples (TTFT, inter-token, end to end) go into rings; GET /admin/stats gives
 * their percentiles over the last minute, the router's counters, each instance's health and load from the
 * registry, and figures scraped from each instance's /metrics every two seconds (KV transfer bytes and time,
 * speculative-decoding acceptance, tokens). Rates are left to the client: it divides successive counters. */
#include <math.h>
#include <string.h>
#include <time.h>

#include "router/rt_req.h"

#define RING 8192
#define WINDOW_S 60.0
#define SCRAPE_S 2.0

typedef struct {
    double t[RING], v[RING];
    size_t n; /* samples ever written; the ring holds the last min(n, RING) */
} ring;

/* Figures scraped from one instance's /metrics (sums over series). */
static const char *const scraped[] = {
    "pdserve_kv_transfer_bytes_total",
    "pdserve_kv_transfer_duration_seconds_sum",
    "pdserve_kv_transfer_duration_seconds_count",
    "pdserve_kv_transfer_failures_total",
    "pdserve_generation_tokens_total",
    "pdserve_prompt_tokens_total",
    "pdserve_spec_decode_num_draft_tokens_total",
    "pdserve_spec_decode_num_accepted_tokens_total",
};
#define N_SCRAPED ((int)PD_ARRAY_LEN(scraped))

typedef struct {
    rt_stats *s;
    char addr[128];
    double val[N_SCRAPED];
    int have[N_SCRAPED];
    double at;                 /* when scraped (0: never) */
    pd_http_call *call;
} inst_scrape;

struct rt_stats {
    rt_router *rt;
    ring rings[RT_SAMPLE_KINDS];
    double t_start;
    inst_scrape **inst;        /* one allocation each: calls in flight point at them */
    int n_inst;
    struct event *timer;
};

void rt_stats_sample(rt_stats *s, rt_sample_kind kind, double v)
{
    if (!s || kind >= RT_SAMPLE_KINDS) return;
    ring *r = &s->rings[kind];
    r->t[r->n % RING] = pd_time_now();
    r->v[r->n % RING] = v;
    r->n++;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* {"n", "mean", "p50", "p90", "p99"} over the window, in seconds; null statistics without samples. */
static cJSON *window_json(const ring *r, double now)
{
    size_t have = r->n < RING ? r->n : RING, k = 0;
    double *v = malloc((have ? have : 1) * sizeof *v), sum = 0;
    cJSON *o = cJSON_CreateObject();
    for (size_t i = 0; v && i < have; i++) {
        size_t idx = (r->n - 1 - i) % RING;
        if (now - r->t[idx] > WINDOW_S) break;
        v[k++] = r->v[idx];
        sum += r->v[idx];
    }
    cJSON_AddNumberToObject(o, "n", (double)k);
    if (k == 0) {
        cJSON_AddNullToObject(o, "mean");
        cJSON_AddNullToObject(o, "p50");
        cJSON_AddNullToObject(o, "p90");
        cJSON_AddNullToObject(o, "p99");
    } else {
        qsort(v, k, sizeof *v, cmp_double);
        static const struct { const char *name; double q; } qs[] = {{"p50", 0.5}, {"p90", 0.9}, {"p99", 0.99}};
        cJSON_AddNumberToObject(o, "mean", sum / (double)k);
        for (size_t i = 0; i < PD_ARRAY_LEN(qs); i++) { /* linear interpolation, as numpy's default */
            double pos = qs[i].q * (double)(k - 1);
            size_t lo = (size_t)pos, hi = lo + 1 < k ? lo + 1 : lo;
            cJSON_AddNumberToObject(o, qs[i].name, v[lo] + (v[hi] - v[lo]) * (pos - (double)lo));
        }
    }
    free(v);
    return o;
}

/* ---- instance scrapes ----------------------------------------------------------------------------------- */

static inst_scrape *scrape_for(rt_stats *s, const char *addr)
{
    for (int i = 0; i < s->n_inst; i++)
        if (!strcmp(s->inst[i]->addr, addr)) return s->inst[i];
    return NULL;
}

/* Sums the samples of the scraped families (every label set) out of a Prometheus text body. */
static void parse_metrics(inst_scrape *in, const char *body)
{
    double val[N_SCRAPED] = {0};
    int have[N_SCRAPED] = {0};
    for (const char *line = body; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);
        if (n && line[0] != '#')
            for (int k = 0; k < N_SCRAPED; k++) {
                size_t kl = strlen(scraped[k]);
                if (n > kl && !strncmp(line, scraped[k], kl) && (line[kl] == ' ' || line[kl] == '{')) {
                    const char *sp = memchr(line + kl, line[kl] == '{' ? '}' : ' ', n - kl);
                    if (sp) {
                        val[k] += strtod(sp + 1, NULL);
                        have[k] = 1;
                    }
                }
            }
        line = end ? end + 1 : NULL;
    }
    memcpy(in->val, val, sizeof val);
    memcpy(in->have, have, sizeof have);
    in->at = pd_time_now();
}

static void scrape_done(pd_http_call *c, int status, const char *body, size_t len, pd_status err, void *arg)
{
    (void)c;
    (void)len;
    (void)err;
    inst_scrape *in = arg;
    in->call = NULL;
    if (status == 200) parse_metrics(in, body);
}

static void scrape_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rt_stats *s = arg;
    cJSON *a = rt_registry_json(s->rt->reg);
    const cJSON *x;
    cJSON_ArrayForEach(x, a)
    {
        const char *addr = cJSON_GetObjectItem(x, "address")->valuestring;
        inst_scrape *in = scrape_for(s, addr);
        if (!in) { /* kept for the router's life: an instance that leaves and returns finds its entry */
            inst_scrape **n = realloc(s->inst, (size_t)(s->n_inst + 1) * sizeof *n);
            if (!n) break;
            s->inst = n;
            if (!(in = calloc(1, sizeof *in))) break;
            s->inst[s->n_inst++] = in;
            in->s = s;
            snprintf(in->addr, sizeof in->addr, "%s", addr);
        }
        char host[128];
        int port;
        if (in->call || !cJSON_IsTrue(cJSON_GetObjectItem(x, "healthy")) ||
            pd_http_parse_hostport(addr, host, sizeof host, &port) != PD_OK)
            continue;
        if (pd_http_call_start(s->rt->base, host, port, "GET", "/metrics", NULL, 0, 5, NULL, scrape_done, in,
                               &in->call) != PD_OK)
            in->call = NULL;
    }
    cJSON_Delete(a);
}

pd_status rt_stats_create(rt_router *rt, rt_stats **out)
{
    rt_stats *s = calloc(1, sizeof *s);
    if (!s) return PD_ERR_NOMEM;
    s->rt = rt;
    s->t_start = pd_time_now();
    s->timer = event_new(rt->base, -1, EV_PERSIST, scrape_cb, s);
    struct timeval tv = {(long)SCRAPE_S, 0};
    if (!s->timer || event_add(s->timer, &tv) != 0) {
        rt_stats_destroy(s);
        return PD_ERR_NOMEM;
    }
    *out = s;
    return PD_OK;
}

void rt_stats_destroy(rt_stats *s)
{
    if (!s) return;
    if (s->timer) event_free(s->timer);
    for (int i = 0; i < s->n_inst; i++) {
        pd_http_call_cancel(s->inst[i]->call);
        free(s->inst[i]);
    }
    free(s->inst);
    free(s);
}

/* ---- GET /admin/stats ------------------------------------------------------------------------------------ */

static double counter(pd_metric *m, const char *const *lv)
{
    double v = 0;
    return pd_metric_get(m, lv, &v) == PD_OK ? v : 0;
}

void rt_stats_reply(rt_stats *s, struct evhttp_request *req)
{
    rt_router *rt = s->rt;
    double now = pd_time_now();
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "time", (double)wall.tv_sec + wall.tv_nsec * 1e-9);
    cJSON_AddNumberToObject(o, "uptime_s", now - s->t_start);
    cJSON_AddStringToObject(o, "model", rt->o->served_model_name ? rt->o->served_model_name : "");
    cJSON_AddNumberToObject(o, "window_s", WINDOW_S);
    int running = 0;
    for (rt_req *r = rt->reqs; r; r = r->next) running++;
    cJSON *ro = cJSON_AddObjectToObject(o, "router");
    cJSON_AddNumberToObject(ro, "requests_total", counter(rt->m.requests, NULL));
    cJSON_AddNumberToObject(ro, "running", running);
    cJSON_AddNumberToObject(ro, "rejected_total", counter(rt->m.rejected, NULL));
    cJSON_AddNumberToObject(ro, "failed_total", counter(rt->m.failed, NULL));
    cJSON_AddNumberToObject(ro, "prompt_tokens_total", counter(rt->m.prompt_tokens, NULL));
    cJSON_AddNumberToObject(ro, "generation_tokens_total", counter(rt->m.gen_tokens, NULL));
    cJSON_AddNumberToObject(ro, "retries_total", counter(rt->m.retries, NULL));
    cJSON *lat = cJSON_AddObjectToObject(o, "latency");
    cJSON_AddItemToObject(lat, "ttft", window_json(&s->rings[RT_SAMPLE_TTFT], now));
    cJSON_AddItemToObject(lat, "itl", window_json(&s->rings[RT_SAMPLE_ITL], now));
    cJSON_AddItemToObject(lat, "e2e", window_json(&s->rings[RT_SAMPLE_E2E], now));
    double xfer_bytes = 0, xfer_s = 0, xfer_n = 0, xfer_fail = 0, draft = 0, accepted = 0;
    int have_spec = 0;
    cJSON *inst = rt_registry_json(rt->reg), *x;
    cJSON_ArrayForEach(x, inst)
    {
        double total = cJSON_GetObjectItem(x, "total_blocks")->valuedouble;
        double free_b = cJSON_GetObjectItem(x, "free_blocks")->valuedouble;
        cJSON_AddNumberToObject(x, "kv_usage", total > 0 ? 1.0 - free_b / total : 0);
        inst_scrape *in = scrape_for(s, cJSON_GetObjectItem(x, "address")->valuestring);
        cJSON *m = cJSON_AddObjectToObject(x, "metrics");
        if (!in || in->at == 0) continue;
        cJSON_AddNumberToObject(m, "age_s", now - in->at);
        for (int k = 0; k < N_SCRAPED; k++)
            if (in->have[k]) cJSON_AddNumberToObject(m, scraped[k] + 8, in->val[k]); /* without "pdserve_" */
        xfer_bytes += in->val[0];
        xfer_s += in->val[1];
        xfer_n += in->val[2];
        xfer_fail += in->val[3];
        draft += in->val[6];
        accepted += in->val[7];
        have_spec |= in->have[6];
    }
    cJSON_AddItemToObject(o, "instances", inst);
    cJSON *kv = cJSON_AddObjectToObject(o, "kv_transfer");
    cJSON_AddNumberToObject(kv, "bytes_total", xfer_bytes);
    cJSON_AddNumberToObject(kv, "seconds_total", xfer_s);
    cJSON_AddNumberToObject(kv, "transfers_total", xfer_n);
    cJSON_AddNumberToObject(kv, "failures_total", xfer_fail);
    cJSON *sp = cJSON_AddObjectToObject(o, "spec_decode");
    cJSON_AddNumberToObject(sp, "draft_tokens_total", draft);
    cJSON_AddNumberToObject(sp, "accepted_tokens_total", accepted);
    if (have_spec && draft > 0) cJSON_AddNumberToObject(sp, "acceptance_rate", accepted / draft);
    else cJSON_AddNullToObject(sp, "acceptance_rate"); /* no speculative decoding (yet): the page shows n/a */
    cJSON_AddBoolToObject(o, "ready", rt_registry_ready(rt->reg));
    pd_http_reply_json(req, 200, o);
    cJSON_Delete(o);
}

/* ---- GET /dashboard ------------------------------------------------------------------------------------- */

extern const unsigned char rt_dashboard_html[]; /* router/dashboard.html, embedded at build time */
extern const unsigned long rt_dashboard_html_len;

void rt_dashboard_reply(struct evhttp_request *req)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    pd_http_reply_text(req, 200, "text/html; charset=utf-8", (const char *)rt_dashboard_html, rt_dashboard_html_len);
}
