/* One choice of a client request: opens it on a decode instance, hands the reservation to a prefill
 * instance (PD) or lets a colocated instance prefill, and turns the decode stream into text. The detokenized
 * text goes through the choice's text pipeline (text.c: stop strings, reasoning split, UTF-8-safe cuts), whose
 * deltas, the choice's end and its progress go to its owner through the callbacks given to rt_choice_start. */
#include <string.h>

#include "router/rt_choice.h"
#include "router/rt_req.h"
#include "router/rt_text.h"

/* The text pipeline's sink: its deltas go to the choice's owner (aux: the tokens' logprob entries or NULL). */
static pd_status text_delta_cb(void *arg, const char *rs, size_t rl, const char *cs, size_t cl, void *aux)
{
    rt_choice *c = arg;
    return c->cbs.delta_cb(c->cbs.arg, c, rs, rl, cs, cl, aux);
}

/* The display text of one token (invalid UTF-8 replaced by U+FFFD) and its bytes. */
static cJSON *token_logprob_entry(rt_router *rt, int chat, int32_t id, double lp, const cJSON *top)
{
    (void)chat;
    cJSON *e = cJSON_CreateObject();
    char *txt = NULL;
    size_t n = 0;
    int32_t one = id;
    if (txt_tokenizer_decode(rt->tok, &one, 1, 0, &txt, &n) != PD_OK) txt = NULL;
    /* a token may be part of a character: show U+FFFD for broken bytes, give the bytes as they are */
    cJSON *bytes = cJSON_CreateArray();
    char shown[512];
    size_t k = 0;
    for (size_t i = 0; txt && i < n && k < sizeof shown - 4;) {
        unsigned char ch = (unsigned char)txt[i];
        int len = ch < 0x80 ? 1 : (ch >> 5) == 6 ? 2 : (ch >> 4) == 14 ? 3 : (ch >> 3) == 30 ? 4 : 0;
        int ok = len > 0 && i + (size_t)len <= n;
        for (int j = 1; ok && j < len; j++) ok = ((unsigned char)txt[i + j] & 0xC0) == 0x80;
        if (ok) {
            memcpy(shown + k, txt + i, (size_t)len);
            k += (size_t)len;
            i += (size_t)len;
        } else {
            memcpy(shown + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    shown[k] = '\0';
    for (size_t i = 0; txt && i < n; i++) cJSON_AddItemToArray(bytes, cJSON_CreateNumber((unsigned char)txt[i]));
    free(txt);
    cJSON_AddStringToObject(e, "token", shown);
    cJSON_AddNumberToObject(e, "logprob", lp);
    cJSON_AddItemToObject(e, "bytes", bytes);
    cJSON *tops = cJSON_AddArrayToObject(e, "top_logprobs");
    const cJSON *pair;
    cJSON_ArrayForEach(pair, top)
    {
        const cJSON *tid = cJSON_GetArrayItem(pair, 0), *tlp = cJSON_GetArrayItem(pair, 1);
        if (!cJSON_IsNumber(tid) || !cJSON_IsNumber(tlp)) continue;
        cJSON *x = token_logprob_entry(rt, chat, (int32_t)tid->valuedouble, tlp->valuedouble, NULL);
        cJSON_DeleteItemFromObject(x, "top_logprobs");
        cJSON_AddItemToArray(tops, x);
    }
    return e;
}

/* Releases what the text pipeline has decided; *stopped = 1 when a stop string ended the choice. */
static pd_status text_release(rt_choice *c, int final, cJSON *lps, int *stopped)
{
    pd_status st = rt_text_release(c->txt.text, final, lps, stopped);
    if (*stopped) snprintf(c->out.stop_str, sizeof c->out.stop_str, "%s", rt_text_stop_str(c->txt.text));
    return st;
}

static void choice_apply(rt_choice *c, unsigned acts);
static void choice_start(rt_choice *c);

/* Feeds ev to the choice's state machine and carries out what it says (the choice may be freed after). */
static void choice_event(rt_choice *c, rt_choice_event ev)
{
    choice_apply(c, rt_choice_step(&c->st, &ev));
}

static void fail_choice(rt_choice *c, int status, const char *msg)
{
    choice_event(c, (rt_choice_event){.kind = RT_EV_FAIL, .status = status, .msg = msg});
}

/* The fields decode and prefill both take (proto's generate request): id, prompt, sampling (with the choice's seed),
 * limits, stop ids. NULL when out of memory. */
static cJSON *gen_body(rt_choice *c)
{
    rt_req *r = c->req;
    pr_gen g = {.max_tokens = r->max_tokens, .min_tokens = r->min_tokens, .ignore_eos = r->ignore_eos,
                .n_stop_ids = r->n_stop_ids, .logprobs = r->logprobs >= 0 ? r->logprobs : -1, /* -1: none asked for */
                .has_seed = c->has_seed, .seed = c->seed};
    memcpy(g.stop_ids, r->stop_ids, (size_t)r->n_stop_ids * sizeof *r->stop_ids);
    char id[64];
    snprintf(id, sizeof id, "%s-%d.%d", r->id, c->index, c->st.retries); /* one id per attempt */
    cJSON *b = NULL;
    return pr_gen_encode(&g, r->sampling, id, c->prompt, c->n_prompt, &b) == PD_OK ? b : NULL;
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

/* The prefill instance refused the request before writing anything: the decode instance is told so, and frees the
 * reservation at once instead of waiting for a transfer (the id names the failed attempt). */
static void release_kv(rt_choice *c)
{
    char path[160];
    pd_http_call *x;
    if (!c->up.d) return;
    snprintf(path, sizeof path, "/internal/requests/%s-%d.%d?kv=untouched", c->req->id, c->index, c->st.retries);
    if (pd_http_call_start(c->req->rt->base, c->up.d->host, c->up.d->port, "DELETE", path, NULL, 0, 10, NULL,
                           ignore_done, NULL, &x) != PD_OK)
        pd_warn("router: %s: cannot tell %s to release its reservation", c->req->id, c->up.d->addr);
}

/* Closing the decode stream aborts the request there if it still runs. */
static void cancel_decode(rt_choice *c)
{
    if (!c->up.d_call) return;
    pd_http_call_cancel(c->up.d_call);
    c->up.d_call = NULL;
    if (c->up.d) c->up.d->inflight--;
    c->up.d = NULL;
}

static void cancel_prefill(rt_choice *c)
{
    if (!c->up.p_call) return;
    pd_http_call_cancel(c->up.p_call);
    c->up.p_call = NULL;
    if (c->up.p) c->up.p->inflight--;
}

/* A failure before any token reached the client (the machine released the attempt): run the choice again on
 * another prefill instance, with a new decode reservation, or let the failure stand when there is none. */
static void retry_elsewhere(rt_choice *c)
{
    rt_instance *failed = c->up.p;
    if (!rt_pick_prefill(c->req->rt->reg, NULL, failed)) {
        choice_event(c, (rt_choice_event){.kind = RT_EV_RETRY_REFUSED});
        return;
    }
    choice_event(c, (rt_choice_event){.kind = RT_EV_RETRY});
    c->up.failed_p = failed;
    pd_counter_add(c->req->rt->m.retries, NULL, 1);
    pd_info("router: %s: retrying on another prefill instance", c->req->id);
    choice_start(c);
}

/* In rt_choice.h's order: the report comes last, as it may free the request and the choice with it. */
static void choice_apply(rt_choice *c, unsigned acts)
{
    if (acts & RT_ACT_RELEASE_KV) release_kv(c);
    if (acts & RT_ACT_CANCEL_DECODE) cancel_decode(c);
    if (acts & RT_ACT_CANCEL_PREFILL) cancel_prefill(c);
    if (acts & RT_ACT_RETRY) retry_elsewhere(c);
    else if (acts & RT_ACT_REPORT) c->cbs.done_cb(c->cbs.arg, c);
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
    c->up.p_call = NULL;
    if (c->up.p) c->up.p->inflight--;
    if (status == 200) {
        cJSON *o = cJSON_Parse(body);
        const cJSON *t = o ? cJSON_GetObjectItem(o, "timing") : NULL;
        if (t) {
            c->tm.p_queue = num_or(t, "queue_s", 0);
            c->tm.prefill = num_or(t, "prefill_s", 0);
            c->tm.transfer = num_or(t, "transfer_s", 0);
            c->tm.queue += c->tm.p_queue; /* the decode side's share may be in already */
        }
        cJSON_Delete(o);
        choice_event(c, (rt_choice_event){.kind = RT_EV_PREFILL_OK}); /* ends the choice if decode was done */
        return;
    }
    char msg[200];
    snprintf(msg, sizeof msg, "prefill instance %s failed (%s)", c->up.p ? c->up.p->addr : "?",
             err != PD_OK ? pd_status_str(err) : "error reply");
    pd_warn("router: %s: %s", c->req->id, msg);
    int untouched = 0;
    if (status != 0) {
        cJSON *eo = cJSON_Parse(body);
        const cJSON *e = eo ? cJSON_GetObjectItem(eo, "error") : NULL;
        untouched = e && cJSON_IsTrue(cJSON_GetObjectItem(e, "kv_untouched"));
        cJSON_Delete(eo);
    }
    choice_event(c, (rt_choice_event){.kind = RT_EV_PREFILL_FAILED, .msg = msg, .retryable = status != 400,
                                      .status = status == 429 ? 429 : status == 400 ? 400 : 503,
                                      .kv_untouched = untouched});
}

static void start_prefill(rt_choice *c, const cJSON *kv)
{
    rt_req *r = c->req;
    const cJSON *layout = cJSON_GetObjectItem(kv, "layout");
    if (!c->up.p || (cJSON_IsString(layout) && strcmp(layout->valuestring, c->up.p->layout) != 0)) {
        fail_choice(c, 503, "no healthy prefill instance with a matching KV layout");
        return;
    }
    size_t ul = strlen(c->up.used);
    snprintf(c->up.used + ul, sizeof c->up.used - ul, " <- %s", c->up.p->addr);
    const unsigned long mark = rt_json_failures();
    cJSON *b = gen_body(c);
    cJSON_AddItemToObject(b, "target", cJSON_Duplicate(kv, 1));
    char *txt = rt_json_failures() == mark ? cJSON_PrintUnformatted(b) : NULL; /* NULL: out of memory */
    cJSON_Delete(b);
    pd_status st = txt ? pd_http_call_start(r->rt->base, c->up.p->host, c->up.p->port, "POST", "/internal/prefill", txt,
                                            strlen(txt), (int)r->rt->o->request_timeout, NULL, on_p_done, c,
                                            &c->up.p_call)
                       : PD_ERR_NOMEM;
    free(txt);
    if (st != PD_OK) {
        fail_choice(c, 503, st == PD_ERR_NOMEM ? "out of memory" : "cannot reach the prefill instance");
        return;
    }
    c->up.p->inflight++;
    choice_event(c, (rt_choice_event){.kind = RT_EV_PREFILL_STARTED});
}

/* ---- decode stream ------------------------------------------------------------------------------------------ */

static void on_token(rt_choice *c, const cJSON *o)
{
    rt_req *r = c->req;
    const cJSON *ids = cJSON_GetObjectItem(o, "ids"), *lps = cJSON_GetObjectItem(o, "logprobs");
    const cJSON *tops = cJSON_GetObjectItem(o, "top_logprobs");
    if (!cJSON_IsArray(ids)) return;
    choice_event(c, (rt_choice_event){.kind = RT_EV_TOKEN, .n = cJSON_GetArraySize(ids)});
    double now = pd_time_now();
    rt_metrics *m = &r->rt->m;
    if (c->tm.t_first == 0) {
        c->tm.t_first = now;
        pd_histogram_observe(m->ttft, NULL, now - r->t0);
        rt_stats_sample(r->rt->stats, RT_SAMPLE_TTFT, now - r->t0);
    } else {
        pd_histogram_observe(m->itl, NULL, now - c->tm.t_last);
        rt_stats_sample(r->rt->stats, RT_SAMPLE_ITL, now - c->tm.t_last);
    }
    c->tm.t_last = now;
    cJSON *lp_out = NULL;
    const unsigned long mark = rt_json_failures(); /* the logprob entries are whole */
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, ids)
    {
        int32_t id = (int32_t)v->valuedouble;
        c->out.n_gen++;
        pd_counter_add(m->gen_tokens, NULL, 1);
        const char *piece;
        size_t n;
        if (txt_detok_push(c->txt.detok, id, &piece, &n) == PD_OK && rt_text_feed(c->txt.text, piece, n) != PD_OK)
            goto fail_nomem;
        if (c->out.lp_tokens) {
            const cJSON *lp = cJSON_GetArrayItem(lps, i),
                        *top = cJSON_IsArray(tops) ? cJSON_GetArrayItem(tops, i) : NULL;
            cJSON *e = token_logprob_entry(r->rt, r->chat, id, cJSON_IsNumber(lp) ? lp->valuedouble : 0.0, top);
            if (!lp_out) lp_out = cJSON_CreateArray();
            if (!e || !lp_out || !cJSON_AddItemToArray(lp_out, e)) {
                cJSON_Delete(e);
                goto fail_nomem;
            }
        }
        i++;
    }
    if (rt_json_failures() != mark) goto fail_nomem;
    int stopped = 0;
    if (text_release(c, 0, lp_out, &stopped) != PD_OK) fail_choice(c, 503, "out of memory");
    else if (stopped) choice_event(c, (rt_choice_event){.kind = RT_EV_STOPPED});
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
    if (!rt_choice_fsm_live(&c->st)) return;
    c->cbs.progress_cb(c->cbs.arg, c);
    const unsigned long mark = rt_json_failures();
    cJSON *o = cJSON_Parse(line);
    const cJSON *ev = o ? cJSON_GetObjectItem(o, "event") : NULL;
    if (!cJSON_IsString(ev)) {
        cJSON_Delete(o);
        if (rt_json_failures() != mark) fail_choice(c, 503, "out of memory");
        else fail_choice(c, 502, "malformed line from the decode instance");
        return;
    }
    if (!strcmp(ev->valuestring, "reserved")) {
        if (rt_choice_step(&c->st, &(rt_choice_event){.kind = RT_EV_RESERVED}) & RT_ACT_START_PREFILL)
            start_prefill(c, cJSON_GetObjectItem(o, "kv"));
    } else if (!strcmp(ev->valuestring, "token")) {
        on_token(c, o);
    } else if (!strcmp(ev->valuestring, "done")) {
        const cJSON *fr = cJSON_GetObjectItem(o, "finish_reason"), *stok = cJSON_GetObjectItem(o, "stop_token");
        const cJSON *t = cJSON_GetObjectItem(o, "timing");
        if (cJSON_IsNumber(stok)) c->out.stop_token = stok->valueint;
        if (t) { /* PD: queue = the prefill's queue + the wait to join the decode batch; colocated: all local */
            c->tm.queue = c->tm.p_queue + num_or(t, "queue_s", 0);
            c->tm.decode = num_or(t, "decode_s", 0);
            if (!c->up.p) c->tm.prefill = num_or(t, "prefill_s", 0);
        }
        const char *piece;
        size_t n;
        int stopped = 0;
        if ((txt_detok_flush(c->txt.detok, &piece, &n) == PD_OK && rt_text_feed(c->txt.text, piece, n) != PD_OK) ||
            text_release(c, 1, NULL, &stopped) != PD_OK) {
            cJSON_Delete(o);
            fail_choice(c, 503, "out of memory");
            return;
        }
        const char *why = stopped ? "stop" : cJSON_IsString(fr) ? fr->valuestring : "stop";
        why = !strcmp(why, "length") ? "length" : !strcmp(why, "abort") ? "abort" : "stop";
        choice_event(c, (rt_choice_event){.kind = RT_EV_DECODE_DONE, .finish = why});
    } else if (!strcmp(ev->valuestring, "error")) {
        const cJSON *st = cJSON_GetObjectItem(o, "status"), *m = cJSON_GetObjectItem(o, "message");
        choice_event(c, (rt_choice_event){.kind = RT_EV_DECODE_ERROR, .status = cJSON_IsNumber(st) ? st->valueint : 503,
                                          .msg = cJSON_IsString(m) ? m->valuestring : "decode failed",
                                          .retryable = cJSON_IsTrue(cJSON_GetObjectItem(o, "retryable"))});
    }
    cJSON_Delete(o);
}

static void on_d_done(pd_http_call *call, int status, const char *body, size_t len, pd_status err, void *arg)
{
    (void)call;
    (void)len;
    rt_choice *c = arg;
    c->up.d_call = NULL;
    if (c->up.d) c->up.d->inflight--;
    c->up.d = NULL;
    /* ends the choice unless it finished already (a failure then) or waits for the prefill reply (nothing) */
    rt_choice_event ev = {.kind = RT_EV_DECODE_CLOSED, .status = 503,
                          .msg = "the decode instance closed the stream before finishing"};
    char msg[256];
    if (status != 200 && rt_choice_fsm_live(&c->st)) { /* refused before streaming: pass its answer on */
        cJSON *o = cJSON_Parse(body);
        const cJSON *e = o ? cJSON_GetObjectItem(o, "error") : NULL, *m = e ? cJSON_GetObjectItem(e, "message") : NULL;
        snprintf(msg, sizeof msg, "%s", cJSON_IsString(m) ? m->valuestring
                                        : err != PD_OK ? "the decode instance is unreachable" : "decode refused");
        cJSON_Delete(o);
        ev.status = status == 400 || status == 429 ? status : 503;
        ev.msg = msg;
    }
    choice_event(c, ev);
}

void rt_choice_start(rt_choice *c, const rt_choice_cbs *cbs)
{
    c->cbs = *cbs;
    choice_start(c);
}

/* A first attempt, or a retry's (the callbacks are set). */
static void choice_start(rt_choice *c)
{
    rt_req *r = c->req;
    rt_router *rt = r->rt;
    c->out.stop_token = -1;
    rt_text_params tp = {.stops = (const char *const *)r->stops, .n_stops = r->n_stops, .split_think = r->chat,
                         .in_think = r->think};
    rt_text_sink sink = {.delta_cb = text_delta_cb, .arg = c};
    if ((!c->txt.text && rt_text_create(&tp, &sink, &c->txt.text) != PD_OK) ||
        (!c->txt.detok && txt_detok_create(rt->tok, 1, &c->txt.detok) != PD_OK)) {
        fail_choice(c, 503, "out of memory");
        return;
    }
    if ((r->logprobs >= 0 || r->chat_logprobs) && !c->out.lp_tokens && !(c->out.lp_tokens = cJSON_CreateArray())) {
        fail_choice(c, 503, "out of memory");
        return;
    }
    c->up.d = rt_pick_decode(rt->reg, c->n_prompt + r->max_tokens);
    if (!c->up.d) {
        fail_choice(c, 503, "no healthy decode instance");
        return;
    }
    int local = c->up.d->role == RT_COLOCATED;
    snprintf(c->up.used, sizeof c->up.used, "%s%s", c->up.d->addr, local ? " (colocated)" : "");
    c->up.p = local ? NULL : rt_pick_prefill(rt->reg, c->up.d->layout, c->up.failed_p);
    if (!local && !c->up.p) {
        c->up.d = NULL;
        fail_choice(c, 503, "no healthy prefill instance");
        return;
    }
    const unsigned long mark = rt_json_failures();
    cJSON *b = gen_body(c);
    cJSON_AddStringToObject(b, "mode", local ? "local" : "pd");
    if (c->up.p && c->up.p->kv_desc) cJSON_AddStringToObject(b, "prefill_kv_desc", c->up.p->kv_desc);
    char *txt = rt_json_failures() == mark ? cJSON_PrintUnformatted(b) : NULL; /* NULL: out of memory */
    cJSON_Delete(b);
    pd_status st = txt ? pd_http_call_start(rt->base, c->up.d->host, c->up.d->port, "POST", "/internal/requests", txt,
                                            strlen(txt), (int)rt->o->request_timeout, on_d_line, on_d_done, c,
                                            &c->up.d_call)
                       : PD_ERR_NOMEM;
    free(txt);
    if (st != PD_OK) {
        c->up.d = NULL;
        fail_choice(c, 503, st == PD_ERR_NOMEM ? "out of memory" : "cannot reach the decode instance");
        return;
    }
    c->up.d->inflight++;
    choice_event(c, (rt_choice_event){.kind = RT_EV_OPENED});
}

void rt_choice_cancel(rt_choice *c)
{
    choice_event(c, (rt_choice_event){.kind = RT_EV_CLIENT_GONE});
}

void rt_choice_abort(rt_choice *c)
{
    choice_event(c, (rt_choice_event){.kind = RT_EV_ABORT});
}

void rt_choice_timeout(rt_choice *c, const char *msg)
{
    choice_event(c, (rt_choice_event){.kind = RT_EV_TIMEOUT, .status = 504, .msg = msg});
}

void rt_choice_free(rt_choice *c)
{
    rt_choice_cancel(c);
    txt_detok_destroy(c->txt.detok);
    rt_text_destroy(c->txt.text);
    pd_buf_free(&c->out.content);
    pd_buf_free(&c->out.reasoning);
    cJSON_Delete(c->out.lp_tokens);
}
