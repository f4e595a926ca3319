/* The load driver: one libevent loop; arrivals scheduled ahead by a Poisson (or gamma, --burstiness) process,
 * each arrival starts a streaming /v1/completions call unless --max-concurrency calls are in flight (then it
 * waits in line). Every SSE line is timestamped as it arrives: the first chunk with text gives TTFT, later
 * ones the inter-token latencies; the final chunks give usage and pdserve_timing. */
#include <event2/event.h>
#include <string.h>
#include <unistd.h>

#include "benchmarks/pdserve_bench/bench.h"
#include "common/pd_http.h"

typedef struct run_s run_t;

typedef struct {
    run_t *run;
    int idx;
    double t_send, t_last;
    pd_http_call *call;
    int got_usage;
    int cap_tok;
} inflight;

struct run_s {
    const bench_run_opts *o;
    const bench_prompt *p;
    bench_record *recs;
    int n, next_arrival, started, done, running, peak, failed;
    int *queue;              /* arrived, waiting for a concurrency slot */
    int q_head, q_tail;
    double t0, t_end;
    double *arrival_at;      /* planned arrival times (run clock) */
    struct event_base *base;
    struct event *arrive_ev, *progress_ev;
    inflight *fl;
};

/* Gamma(shape k, scale theta) by Marsaglia and Tsang; k < 1 through the boost k+1 and U^(1/k). */
static double gamma_draw(pd_rng *r, double k, double theta)
{
    if (k < 1) {
        double u = pd_rng_uniform(r);
        return gamma_draw(r, k + 1, theta) * pow(u > 0 ? u : 1e-300, 1.0 / k);
    }
    double d = k - 1.0 / 3, c = 1 / sqrt(9 * d);
    for (;;) {
        double x = pd_rng_normal(r), v = 1 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = pd_rng_uniform(r);
        if (log(u > 0 ? u : 1e-300) < 0.5 * x * x + d - d * v + d * log(v)) return d * v * theta;
    }
}

static void rec_text(bench_record *r, const char *s, size_t n)
{
    if (r->text_len + n + 1 > r->text_cap) {
        size_t c = r->text_cap ? r->text_cap * 2 : 256;
        while (c < r->text_len + n + 1) c *= 2;
        char *t = realloc(r->text, c);
        if (!t) return;
        r->text = t;
        r->text_cap = c;
    }
    memcpy(r->text + r->text_len, s, n);
    r->text_len += n;
    r->text[r->text_len] = '\0';
}

static void push_d(double **a, int *n, int *cap, double v)
{
    if (*n == *cap) {
        int c = *cap ? *cap * 2 : 64;
        double *x = realloc(*a, (size_t)c * sizeof *x);
        if (!x) return;
        *a = x;
        *cap = c;
    }
    (*a)[(*n)++] = v;
}

static void dispatch(run_t *rn);

static void finish(inflight *f, const char *error)
{
    run_t *rn = f->run;
    bench_record *r = &rn->recs[f->idx];
    if (f->call) {
        pd_http_call_cancel(f->call);
        f->call = NULL;
    }
    double now = pd_time_now() - rn->t0;
    r->latency = now - r->start;
    if (error) {
        r->ok = 0;
        rn->failed++;
        snprintf(r->error, sizeof r->error, "%s", error);
    } else {
        r->ok = 1;
    }
    rn->running--;
    rn->done++;
    if (now > rn->t_end) rn->t_end = now;
    dispatch(rn);
    if (rn->done == rn->n) event_base_loopbreak(rn->base);
}

static void on_line(pd_http_call *c, const char *line, size_t len, void *arg)
{
    (void)c;
    inflight *f = arg;
    run_t *rn = f->run;
    bench_record *r = &rn->recs[f->idx];
    while (len && (line[len - 1] == '\r' || line[len - 1] == '\n')) len--;
    if (len < 6 || strncmp(line, "data: ", 6) != 0) return;
    if (len == 12 && !strncmp(line + 6, "[DONE]", 6)) return;
    double now = pd_time_now();
    cJSON *o = cJSON_ParseWithLength(line + 6, len - 6);
    if (!o) return;
    const cJSON *err = cJSON_GetObjectItem(o, "error"), *chs = cJSON_GetObjectItem(o, "choices");
    if (err) {
        const cJSON *m = cJSON_GetObjectItem(err, "message");
        char msg[200];
        snprintf(msg, sizeof msg, "stream error: %s", cJSON_IsString(m) ? m->valuestring : "?");
        snprintf(r->error, sizeof r->error, "%s", msg);
    }
    const cJSON *ch = cJSON_GetArrayItem(chs, 0);
    const cJSON *txt = ch ? cJSON_GetObjectItem(ch, "text") : NULL;
    if (!cJSON_IsString(txt) && ch) { /* chat endpoint: delta.content */
        const cJSON *d = cJSON_GetObjectItem(ch, "delta");
        txt = d ? cJSON_GetObjectItem(d, "content") : NULL;
    }
    if (cJSON_IsString(txt) && txt->valuestring[0]) { /* as vLLM: a chunk with text is a token event */
        double t = now - rn->t0;
        if (r->ttft == 0) r->ttft = now - f->t_send;
        else push_d(&r->itl, &r->n_itl, &r->cap_itl, now - f->t_last);
        f->t_last = now;
        push_d(&r->tok_t, &r->n_tok, &f->cap_tok, t);
        rec_text(r, txt->valuestring, strlen(txt->valuestring));
    }
    const cJSON *u = cJSON_GetObjectItem(o, "usage");
    if (cJSON_IsObject(u)) {
        const cJSON *pt = cJSON_GetObjectItem(u, "prompt_tokens"), *ct = cJSON_GetObjectItem(u, "completion_tokens");
        if (cJSON_IsNumber(pt)) r->prompt_len = pt->valueint;
        if (cJSON_IsNumber(ct)) r->output_tokens = ct->valueint;
        f->got_usage = 1;
    }
    const cJSON *tm = cJSON_GetObjectItem(o, "pdserve_timing");
    if (cJSON_IsObject(tm)) {
        static const char *k[] = {"queue_s", "prefill_s", "transfer_s", "decode_s"};
        for (int i = 0; i < 4; i++) {
            const cJSON *v = cJSON_GetObjectItem(tm, k[i]);
            r->timing[i] = cJSON_IsNumber(v) ? v->valuedouble : 0;
        }
        r->has_timing = 1;
    }
    cJSON_Delete(o);
}

static void on_done(pd_http_call *c, int status, const char *body, size_t len, pd_status st, void *arg)
{
    (void)c;
    (void)len;
    inflight *f = arg;
    f->call = NULL;
    bench_record *r = &f->run->recs[f->idx];
    char msg[256];
    if (status == 0) {
        snprintf(msg, sizeof msg, "connection failed: %s", pd_status_str(st));
        finish(f, msg);
    } else if (status != 200) {
        cJSON *o = cJSON_Parse(body);
        const cJSON *e = o ? cJSON_GetObjectItem(o, "error") : NULL, *m = e ? cJSON_GetObjectItem(e, "message") : NULL;
        snprintf(msg, sizeof msg, "HTTP %d: %s", status, cJSON_IsString(m) ? m->valuestring : "error");
        cJSON_Delete(o);
        finish(f, msg);
    } else if (r->error[0]) {
        snprintf(msg, sizeof msg, "%s", r->error);
        finish(f, msg);
    } else {
        if (!f->got_usage) r->output_tokens = r->n_tok; /* the server gave no usage: count chunks */
        finish(f, NULL);
    }
}

static void start_one(run_t *rn, int i)
{
    const bench_run_opts *o = rn->o;
    const bench_prompt *p = &rn->p[i];
    bench_record *r = &rn->recs[i];
    inflight *f = &rn->fl[i];
    f->run = rn;
    f->idx = i;
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "model", o->model);
    if (p->text) cJSON_AddStringToObject(b, "prompt", p->text);
    else {
        cJSON *a = cJSON_AddArrayToObject(b, "prompt");
        for (int k = 0; k < p->n_ids; k++) cJSON_AddItemToArray(a, cJSON_CreateNumber(p->ids[k]));
    }
    cJSON_AddNumberToObject(b, "max_tokens", p->output_len);
    cJSON_AddNumberToObject(b, "temperature", o->temperature);
    if (o->ignore_eos) cJSON_AddBoolToObject(b, "ignore_eos", 1);
    cJSON_AddBoolToObject(b, "stream", 1);
    cJSON_AddBoolToObject(cJSON_AddObjectToObject(b, "stream_options"), "include_usage", 1);
    char *txt = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    r->prompt_len = p->prompt_len;
    f->t_send = pd_time_now();
    r->start = f->t_send - rn->t0;
    rn->running++;
    rn->started++;
    if (rn->running > rn->peak) rn->peak = rn->running;
    pd_status st = txt ? pd_http_call_start(rn->base, o->host, o->port, "POST", o->endpoint, txt, strlen(txt),
                                            o->timeout_s, on_line, on_done, f, &f->call)
                       : PD_ERR_NOMEM;
    free(txt);
    if (st != PD_OK) {
        f->call = NULL;
        finish(f, "cannot start the request");
    }
}

static void dispatch(run_t *rn)
{
    while (rn->q_head < rn->q_tail && (rn->o->max_concurrency <= 0 || rn->running < rn->o->max_concurrency))
        start_one(rn, rn->queue[rn->q_head++]);
}

static void arrive_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    run_t *rn = arg;
    double now = pd_time_now() - rn->t0;
    while (rn->next_arrival < rn->n && rn->arrival_at[rn->next_arrival] <= now + 1e-4)
        rn->queue[rn->q_tail++] = rn->next_arrival++;
    dispatch(rn);
    if (rn->next_arrival < rn->n) {
        double dt = rn->arrival_at[rn->next_arrival] - now;
        if (dt < 0) dt = 0;
        struct timeval tv = {(long)dt, (long)((dt - (long)dt) * 1e6)};
        evtimer_add(rn->arrive_ev, &tv);
    }
}

static void progress_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    run_t *rn = arg;
    int tty = isatty(2);
    fprintf(stderr, "%s[%s] %d/%d done, %d running, %d waiting, %d failed, %.1f s%s", tty ? "\r" : "",
            rn->o->label ? rn->o->label : "bench", rn->done, rn->n, rn->running, rn->q_tail - rn->q_head, rn->failed,
            pd_time_now() - rn->t0, tty ? "   " : "\n");
    fflush(stderr);
}

pd_status bench_run(const bench_run_opts *o, const bench_prompt *p, int n, uint64_t seed, bench_record *recs,
                    double *duration, int *peak)
{
    if (n <= 0) {
        *duration = 0;
        *peak = 0;
        return PD_OK;
    }
    run_t rn;
    memset(&rn, 0, sizeof rn);
    rn.o = o;
    rn.p = p;
    rn.recs = recs;
    rn.n = n;
    rn.queue = calloc((size_t)n, sizeof *rn.queue);
    rn.arrival_at = calloc((size_t)n, sizeof *rn.arrival_at);
    rn.fl = calloc((size_t)n, sizeof *rn.fl);
    rn.base = event_base_new();
    pd_status st = PD_ERR_NOMEM;
    if (!rn.queue || !rn.arrival_at || !rn.fl || !rn.base) goto free_run;
    /* arrivals as vLLM draws them: gaps ~ Gamma(burstiness, 1/(rate*burstiness)); the first goes at once */
    pd_rng rng;
    pd_rng_seed(&rng, seed);
    double t = 0;
    for (int i = 0; i < n; i++) {
        rn.arrival_at[i] = t;
        if (isfinite(o->request_rate) && o->request_rate > 0)
            t += gamma_draw(&rng, o->burstiness, 1.0 / (o->request_rate * o->burstiness));
    }
    rn.arrive_ev = evtimer_new(rn.base, arrive_cb, &rn);
    rn.progress_ev = event_new(rn.base, -1, EV_PERSIST, progress_cb, &rn);
    if (!rn.arrive_ev || !rn.progress_ev) goto free_run;
    if (o->progress) {
        struct timeval tv = isatty(2) ? (struct timeval){0, 500000} : (struct timeval){5, 0};
        event_add(rn.progress_ev, &tv);
    }
    rn.t0 = pd_time_now();
    arrive_cb(-1, 0, &rn);
    if (rn.done < rn.n) event_base_dispatch(rn.base);
    if (o->progress) {
        progress_cb(-1, 0, &rn);
        if (isatty(2)) fputc('\n', stderr);
    }
    for (int i = 0; i < n; i++) /* nothing stays in flight (a loop break with calls open cannot happen) */
        if (rn.fl[i].call) pd_http_call_cancel(rn.fl[i].call);
    *duration = rn.t_end;
    *peak = rn.peak;
    st = PD_OK;
free_run:
    if (rn.arrive_ev) event_free(rn.arrive_ev);
    if (rn.progress_ev) event_free(rn.progress_ev);
    if (rn.base) {
        event_base_loop(rn.base, EVLOOP_NONBLOCK); /* runs the scheduled releases of finished calls */
        event_base_free(rn.base);
    }
    free(rn.queue);
    free(rn.arrival_at);
    free(rn.fl);
    return st;
}

void bench_records_free(bench_record *r, int n)
{
    for (int i = 0; r && i < n; i++) {
        free(r[i].itl);
        free(r[i].tok_t);
        free(r[i].text);
    }
}
