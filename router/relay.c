/* One choice of a client request: opens it on a decode instance, hands the reservation to a prefill
 * instance (PD) or lets a colocated instance prefill, and turns the decode stream into text. Text goes
 * through two stages before the client sees it: stop strings (bytes that could still begin a stop string are
 * held back), then the reasoning split (<think> ... </think> becomes reasoning_content). Releases are cut at
 * UTF-8 character boundaries, so a character never straddles two chunks. */
#include <string.h>

#include "router/rt_req.h"

/* Largest k <= want such that buf[0..k) ends on a character boundary. */
static size_t char_boundary(const char *buf, size_t want)
{
    while (want > 0 && ((unsigned char)buf[want] & 0xC0) == 0x80) want--;
    return want;
}

static const char THINK_OPEN[] = "<think>", THINK_CLOSE[] = "</think>";

/* Moves released raw text [split_pos, upto) into reasoning/content deltas; final: no more text follows. */
static pd_status split_and_emit(rt_choice *c, size_t upto, int final, cJSON *lps)
{
    rt_req *r = c->req;
    const char *rs = NULL, *cs = NULL;
    size_t rl = 0, cl = 0, pos = c->split_pos;
    const size_t open_n = sizeof THINK_OPEN - 1, close_n = sizeof THINK_CLOSE - 1;
    if (r->chat && !c->open_checked) { /* output that starts with <think> opens a reasoning block */
        size_t have = upto - pos;
        if (have < open_n && !final && !strncmp(c->raw.data + pos, THINK_OPEN, have)) goto emit; /* undecided */
        c->open_checked = 1;
        if (have >= open_n && !strncmp(c->raw.data + pos, THINK_OPEN, open_n)) {
            c->in_think = 1;
            pos += open_n;
        }
    }
    if (c->in_think) {
        const char *end = strstr(c->raw.data + pos, THINK_CLOSE);
        if (end && (size_t)(end - c->raw.data) + close_n <= upto) {
            rs = c->raw.data + pos;
            rl = (size_t)(end - c->raw.data) - pos;
            pos = (size_t)(end - c->raw.data) + close_n;
            c->in_think = 0;
        } else {
            size_t safe = final ? upto : upto >= close_n - 1 ? upto - (close_n - 1) : 0;
            safe = char_boundary(c->raw.data, safe);
            if (safe > pos) {
                rs = c->raw.data + pos;
                rl = safe - pos;
                pos = safe;
            }
            goto emit;
        }
    }
    if (upto > pos) {
        cs = c->raw.data + pos;
        cl = upto - pos;
        pos = upto;
    }
emit:
    c->split_pos = pos;
    return rl || cl || lps ? rt_req_choice_delta(r, c, rs, rl, cs, cl, lps) : PD_OK;
}

/* Runs the stop-string stage over new raw text; *stopped = 1 when a stop string ended the choice. PD_ERR_NOMEM when
 * the released text could not be kept. */
static pd_status stop_stage(rt_choice *c, int final, cJSON *lps, int *stopped)
{
    rt_req *r = c->req;
    size_t from = c->released;
    size_t best = (size_t)-1;
    int which = -1;
    for (int i = 0; i < r->n_stops; i++) {
        size_t sl = strlen(r->stops[i]);
        size_t start = from >= sl - 1 ? from - (sl - 1) : 0;
        const char *hit = strstr(c->raw.data + start, r->stops[i]);
        if (hit && (size_t)(hit - c->raw.data) < best) {
            best = (size_t)(hit - c->raw.data);
            which = i;
        }
    }
    if (which >= 0) {
        c->raw.len = best; /* the stop string and what follows are not part of the output */
        c->raw.data[best] = '\0';
        snprintf(c->stop_str, sizeof c->stop_str, "%s", r->stops[which]);
        c->released = best;
        *stopped = 1;
        return split_and_emit(c, best, 1, lps);
    }
    size_t raw_len = c->raw.len;
    size_t safe = final || r->max_stop_len == 0 ? raw_len
                  : raw_len >= r->max_stop_len - 1 ? raw_len - (r->max_stop_len - 1) : 0;
    safe = char_boundary(c->raw.data, safe);
    if (safe < c->released) safe = c->released;
    c->released = safe;
    *stopped = 0;
    return split_and_emit(c, safe, final, lps);
}

static void release_decode(rt_choice *c);

static void finish_choice(rt_choice *c, const char *reason)
{
    if (c->done) return;
    c->done = 1;
    c->finish = reason;
    release_decode(c); /* closing the decode stream aborts it there if it still runs */
    rt_req_choice_done(c->req, c);
}

static void fail_choice(rt_choice *c, int status, const char *msg)
{
    if (c->done) return;
    c->failed_status = status;
    snprintf(c->failed_msg, sizeof c->failed_msg, "%s", msg);
    finish_choice(c, "error");
}

/* The fields decode and prefill both take: id, prompt, sampling (with the choice's seed), limits, stop ids. */
static cJSON *gen_body(rt_choice *c)
{
    rt_req *r = c->req;
    cJSON *b = cJSON_CreateObject();
    char id[64];
    snprintf(id, sizeof id, "%s-%d.%d", r->id, c->index, c->retries); /* one id per attempt */
    cJSON_AddStringToObject(b, "id", id);
    cJSON *pr = cJSON_AddArrayToObject(b, "prompt");
    for (int i = 0; i < c->n_prompt; i++) cJSON_AddItemToArray(pr, cJSON_CreateNumber(c->prompt[i]));
    cJSON_AddNumberToObject(b, "max_tokens", r->max_tokens);
    cJSON_AddNumberToObject(b, "min_tokens", r->min_tokens);
    cJSON_AddBoolToObject(b, "ignore_eos", r->ignore_eos);
    if (r->n_stop_ids) {
        cJSON *a = cJSON_AddArrayToObject(b, "stop_token_ids");
        for (int i = 0; i < r->n_stop_ids; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(r->stop_ids[i]));
    }
    cJSON *sp = cJSON_Duplicate(r->sampling, 1);
    if (c->has_seed) cJSON_AddNumberToObject(sp, "seed", (double)c->seed);
    cJSON_AddItemToObject(b, "sampling", sp);
    cJSON_AddNumberToObject(b, "logprobs", r->logprobs >= 0 ? r->logprobs : -1); /* -1: none asked for */
    return b;
}

static void ignore_done(pd_http_call *call, int status, const char *body, size_t len, pd_status err, void *arg)
{
    (void)call;
    (void)status;
    (void)body;
    (void)len;
    (void)err;
    (void)arg;
}

/* Ends the choice's decode request. When the prefill instance refused the request before writing anything, the
 * decode instance is told so, and frees the reservation at once instead of waiting for a transfer. */
static void release_decode(rt_choice *c)
{
    if (c->kv_untouched && c->d_call && c->d) {
        char path[160];
        pd_http_call *x;
        snprintf(path, sizeof path, "/internal/requests/%s-%d.%d?kv=untouched", c->req->id, c->index, c->retries);
        if (pd_http_call_start(c->req->rt->base, c->d->host, c->d->port, "DELETE", path, NULL, 0, 10, NULL,
                               ignore_done, NULL, &x) != PD_OK)
            pd_warn("router: %s: cannot tell %s to release its reservation", c->req->id, c->d->addr);
    }
    rt_choice_cancel(c);
}

/* A prefill-side failure before any token reached the client: run the choice again on another prefill
 * instance (with a new decode reservation). Returns 1 when it did. */
static int retry_elsewhere(rt_choice *c)
{
    if (c->retries >= 1 || c->n_gen > 0 || c->done) return 0;
    rt_instance *failed = c->p;
    if (!rt_pick_prefill(c->req->rt->reg, NULL, failed)) return 0;
    release_decode(c); /* names the failed attempt's id */
    c->kv_untouched = 0;
    c->retries++;
    c->failed_p = failed;
    pd_counter_add(c->req->rt->m.retries, NULL, 1);
    pd_info("router: %s: retrying on another prefill instance", c->req->id);
    rt_choice_start(c);
    return 1;
}

/* ---- prefill call ------------------------------------------------------------------------------------------ */

static double num_or(const cJSON *o, const char *k, double def)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

static void on_p_done(pd_http_call *call, int status, const char *body, size_t len, pd_status err, void *arg)
{
    (void)call;
    (void)len;
    rt_choice *c = arg;
    c->p_call = NULL;
    if (c->p) c->p->inflight--;
    if (status == 200 || c->pending_finish) {
        cJSON *o = status == 200 ? cJSON_Parse(body) : NULL;
        const cJSON *t = o ? cJSON_GetObjectItem(o, "timing") : NULL;
        if (t) {
            c->p_queue = num_or(t, "queue_s", 0);
            c->timing_prefill = num_or(t, "prefill_s", 0);
            c->timing_transfer = num_or(t, "transfer_s", 0);
            c->timing_queue += c->p_queue; /* the decode side's share may be in already */
        }
        cJSON_Delete(o);
        if (c->pending_finish) finish_choice(c, c->pending_finish); /* decode was done already */
        return;
    }
    char msg[200];
    snprintf(msg, sizeof msg, "prefill instance %s failed (%s)", c->p ? c->p->addr : "?",
             err != PD_OK ? pd_status_str(err) : "error reply");
    pd_warn("router: %s: %s", c->req->id, msg);
    if (status != 0) {
        cJSON *eo = cJSON_Parse(body);
        const cJSON *e = eo ? cJSON_GetObjectItem(eo, "error") : NULL;
        c->kv_untouched = e && cJSON_IsTrue(cJSON_GetObjectItem(e, "kv_untouched"));
        cJSON_Delete(eo);
    }
    if (status != 400 && retry_elsewhere(c)) return;
    fail_choice(c, status == 429 ? 429 : status == 400 ? 400 : 503, msg);
}

static void start_prefill(rt_choice *c, const cJSON *kv)
{
    rt_req *r = c->req;
    const cJSON *layout = cJSON_GetObjectItem(kv, "layout");
    if (!c->p || (cJSON_IsString(layout) && strcmp(layout->valuestring, c->p->layout) != 0)) {
        fail_choice(c, 503, "no healthy prefill instance with a matching KV layout");
        return;
    }
    size_t ul = strlen(c->used);
    snprintf(c->used + ul, sizeof c->used - ul, " <- %s", c->p->addr);
    cJSON *b = gen_body(c);
    cJSON_AddItemToObject(b, "target", cJSON_Duplicate(kv, 1));
    char *txt = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    pd_status st = txt ? pd_http_call_start(r->rt->base, c->p->host, c->p->port, "POST", "/internal/prefill", txt,
                                            strlen(txt), (int)r->rt->o->request_timeout, NULL, on_p_done, c, &c->p_call)
                       : PD_ERR_NOMEM;
    free(txt);
    if (st != PD_OK) fail_choice(c, 503, "cannot reach the prefill instance");
    else c->p->inflight++;
}

/* ---- decode stream ------------------------------------------------------------------------------------------ */

static void on_token(rt_choice *c, const cJSON *o)
{
    rt_req *r = c->req;
    const cJSON *ids = cJSON_GetObjectItem(o, "ids"), *lps = cJSON_GetObjectItem(o, "logprobs");
    const cJSON *tops = cJSON_GetObjectItem(o, "top_logprobs");
    if (!cJSON_IsArray(ids)) return;
    double now = pd_time_now();
    rt_metrics *m = &r->rt->m;
    if (c->t_first == 0) {
        c->t_first = now;
        pd_histogram_observe(m->ttft, NULL, now - r->t0);
        rt_stats_sample(r->rt->stats, RT_SAMPLE_TTFT, now - r->t0);
    } else {
        pd_histogram_observe(m->itl, NULL, now - c->t_last);
        rt_stats_sample(r->rt->stats, RT_SAMPLE_ITL, now - c->t_last);
    }
    c->t_last = now;
    cJSON *lp_out = NULL;
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, ids)
    {
        int32_t id = (int32_t)v->valuedouble;
        c->n_gen++;
        pd_counter_add(m->gen_tokens, NULL, 1);
        const char *piece;
        size_t n;
        if (mdl_detok_push(c->detok, id, &piece, &n) == PD_OK && n && pd_buf_append(&c->raw, piece, n) != PD_OK)
            goto fail_nomem;
        if (c->lp_tokens) {
            const cJSON *lp = cJSON_GetArrayItem(lps, i), *top = cJSON_IsArray(tops) ? cJSON_GetArrayItem(tops, i) : NULL;
            cJSON *e = rt_token_logprob_entry(r->rt, r->chat, id, cJSON_IsNumber(lp) ? lp->valuedouble : 0.0, top);
            if (!lp_out) lp_out = cJSON_CreateArray();
            if (!e || !lp_out || !cJSON_AddItemToArray(lp_out, e)) {
                cJSON_Delete(e);
                goto fail_nomem;
            }
        }
        i++;
    }
    int stopped = 0;
    if (stop_stage(c, 0, lp_out, &stopped) != PD_OK) fail_choice(c, 503, "out of memory");
    else if (stopped) finish_choice(c, "stop");
    return;
fail_nomem:
    cJSON_Delete(lp_out);
    fail_choice(c, 503, "out of memory");
}

static void on_d_line(pd_http_call *call, const char *line, size_t len, void *arg)
{
    (void)call;
    (void)len;
    rt_choice *c = arg;
    if (c->done) return;
    rt_req_progress(c->req);
    cJSON *o = cJSON_Parse(line);
    const cJSON *ev = o ? cJSON_GetObjectItem(o, "event") : NULL;
    if (!cJSON_IsString(ev)) {
        cJSON_Delete(o);
        fail_choice(c, 502, "malformed line from the decode instance");
        return;
    }
    c->started = 1;
    if (!strcmp(ev->valuestring, "reserved")) {
        start_prefill(c, cJSON_GetObjectItem(o, "kv"));
    } else if (!strcmp(ev->valuestring, "token")) {
        on_token(c, o);
    } else if (!strcmp(ev->valuestring, "done")) {
        const cJSON *fr = cJSON_GetObjectItem(o, "finish_reason"), *stok = cJSON_GetObjectItem(o, "stop_token");
        const cJSON *t = cJSON_GetObjectItem(o, "timing");
        if (cJSON_IsNumber(stok)) c->stop_token = stok->valueint;
        if (t) { /* PD: queue = the prefill's queue + the wait to join the decode batch; colocated: all local */
            c->timing_queue = c->p_queue + num_or(t, "queue_s", 0);
            c->timing_decode = num_or(t, "decode_s", 0);
            if (!c->p) c->timing_prefill = num_or(t, "prefill_s", 0);
        }
        const char *piece;
        size_t n;
        int stopped = 0;
        if ((mdl_detok_flush(c->detok, &piece, &n) == PD_OK && n && pd_buf_append(&c->raw, piece, n) != PD_OK) ||
            stop_stage(c, 1, NULL, &stopped) != PD_OK) {
            cJSON_Delete(o);
            fail_choice(c, 503, "out of memory");
            return;
        }
        const char *why = stopped ? "stop" : cJSON_IsString(fr) ? fr->valuestring : "stop";
        why = !strcmp(why, "length") ? "length" : !strcmp(why, "abort") ? "abort" : "stop";
        if (c->p_call) c->pending_finish = why; /* the prefill reply (with its timings) follows shortly */
        else finish_choice(c, why);
    } else if (!strcmp(ev->valuestring, "error")) {
        const cJSON *st = cJSON_GetObjectItem(o, "status"), *m = cJSON_GetObjectItem(o, "message");
        if (cJSON_IsTrue(cJSON_GetObjectItem(o, "retryable")) && retry_elsewhere(c)) {
            cJSON_Delete(o);
            return;
        }
        fail_choice(c, cJSON_IsNumber(st) ? st->valueint : 503, cJSON_IsString(m) ? m->valuestring : "decode failed");
    }
    cJSON_Delete(o);
}

static void on_d_done(pd_http_call *call, int status, const char *body, size_t len, pd_status err, void *arg)
{
    (void)call;
    (void)len;
    rt_choice *c = arg;
    c->d_call = NULL;
    if (c->d) c->d->inflight--;
    c->d = NULL;
    if (c->done || c->pending_finish) return;
    if (status != 200) { /* refused before streaming: pass the decode instance's answer on */
        cJSON *o = cJSON_Parse(body);
        const cJSON *e = o ? cJSON_GetObjectItem(o, "error") : NULL, *m = e ? cJSON_GetObjectItem(e, "message") : NULL;
        char msg[256];
        snprintf(msg, sizeof msg, "%s", cJSON_IsString(m) ? m->valuestring
                                        : err != PD_OK ? "the decode instance is unreachable" : "decode refused");
        cJSON_Delete(o);
        fail_choice(c, status == 400 || status == 429 ? status : 503, msg);
        return;
    }
    fail_choice(c, 503, "the decode instance closed the stream before finishing");
}

void rt_choice_start(rt_choice *c)
{
    rt_req *r = c->req;
    rt_router *rt = r->rt;
    c->stop_token = -1;
    /* the text pipeline reads raw before any text */
    if ((!c->raw.data && pd_buf_append(&c->raw, "", 0) != PD_OK) ||
        (!c->detok && mdl_detok_create(rt->tok, 1, &c->detok) != PD_OK)) {
        fail_choice(c, 503, "out of memory");
        return;
    }
    if ((r->logprobs >= 0 || r->chat_logprobs) && !c->lp_tokens && !(c->lp_tokens = cJSON_CreateArray())) {
        fail_choice(c, 503, "out of memory");
        return;
    }
    if (r->think) { /* the prompt opened the reasoning block already (R1's generation prompt) */
        c->in_think = 1;
        c->open_checked = 1;
    }
    c->d = rt_pick_decode(rt->reg, c->n_prompt + r->max_tokens);
    if (!c->d) {
        fail_choice(c, 503, "no healthy decode instance");
        return;
    }
    int local = c->d->role == RT_COLOCATED;
    snprintf(c->used, sizeof c->used, "%s%s", c->d->addr, local ? " (colocated)" : "");
    c->p = local ? NULL : rt_pick_prefill(rt->reg, c->d->layout, c->failed_p);
    if (!local && !c->p) {
        c->d = NULL;
        fail_choice(c, 503, "no healthy prefill instance");
        return;
    }
    cJSON *b = gen_body(c);
    cJSON_AddStringToObject(b, "mode", local ? "local" : "pd");
    if (c->p && c->p->kv_desc) cJSON_AddStringToObject(b, "prefill_kv_desc", c->p->kv_desc);
    char *txt = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    pd_status st = txt ? pd_http_call_start(rt->base, c->d->host, c->d->port, "POST", "/internal/requests", txt,
                                            strlen(txt), (int)rt->o->request_timeout, on_d_line, on_d_done, c,
                                            &c->d_call)
                       : PD_ERR_NOMEM;
    free(txt);
    if (st != PD_OK) {
        c->d = NULL;
        fail_choice(c, 503, "cannot reach the decode instance");
        return;
    }
    c->d->inflight++;
}

void rt_choice_cancel(rt_choice *c)
{
    if (c->d_call) {
        pd_http_call_cancel(c->d_call);
        c->d_call = NULL;
        if (c->d) c->d->inflight--;
        c->d = NULL;
    }
    if (c->p_call) {
        pd_http_call_cancel(c->p_call);
        c->p_call = NULL;
        if (c->p) c->p->inflight--;
    }
}

void rt_choice_free(rt_choice *c)
{
    rt_choice_cancel(c);
    mdl_detok_destroy(c->detok);
    pd_buf_free(&c->raw);
    pd_buf_free(&c->content);
    pd_buf_free(&c->reasoning);
    cJSON_Delete(c->lp_tokens);
}
