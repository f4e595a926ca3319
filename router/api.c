/* The OpenAI-compatible API: /v1/completions, /v1/chat/completions (JSON or SSE), /v1/models, /tokenize,
 * /detokenize, /health, /metrics, /admin/instances, /admin/stats, /dashboard. Bodies are validated and turned into
 * token prompts and choices (prompt x n) by request.c; relay.c runs the choices; the answers take OpenAI's shapes
 * here. */
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <string.h>
#include <time.h>

#include "common/pd_auth.h"
#include "router/rt_req.h"

/* ---- requests -------------------------------------------------------------------------------------------- */

static void timeout_cb(evutil_socket_t fd, short what, void *arg);

static void req_free(rt_req *r)
{
    rt_router *rt = r->rt;
    for (rt_req **pp = &rt->reqs; *pp; pp = &(*pp)->next)
        if (*pp == r) {
            *pp = r->next;
            break;
        }
    if (r->http) pd_http_set_closecb(r->http, NULL, NULL);
    for (int i = 0; i < r->n_ch; i++) rt_choice_free(&r->ch[i]);
    if (r->timer) event_free(r->timer);
    rt_request_free(r);
}

static void req_progress(rt_req *r)
{
    struct timeval tv = {(long)r->rt->o->request_timeout, 0};
    if (r->timer) evtimer_add(r->timer, &tv);
}

static void close_cb(struct evhttp_connection *c, void *arg)
{
    (void)c;
    rt_req *r = arg;
    pd_http_release_detached(r->http);
    r->http = NULL;
    pd_info("router: %s: client went away; aborting", r->id);
    for (int i = 0; i < r->n_ch; i++) rt_choice_cancel(&r->ch[i]);
    pd_counter_add(r->rt->m.finished, PD_LV("abort"), 1);
    req_free(r);
}

/* ---- out of memory while building JSON (json.c counts the failed allocations) ------------------------------
 * A response builder notes rt_json_failures() before it starts and checks it once at the end, instead of testing
 * each cJSON_Create / cJSON_Add result; a response that could not be built whole becomes a 503. */
/* o as text, or NULL when building it (since mark) or printing it ran out of memory. */
static char *json_print(const cJSON *o, unsigned long mark)
{
    if (!o || rt_json_failures() != mark) return NULL;
    return cJSON_PrintUnformatted(o);
}

/* Replies o, or 503 with one log line when it could not be built whole (mark: rt_json_failures() before). */
static void reply_json(struct evhttp_request *http, int status, cJSON *o, unsigned long mark, const char *what)
{
    char *txt = json_print(o, mark);
    if (txt) {
        pd_http_reply_text(http, status, "application/json", txt, strlen(txt));
    } else {
        pd_warn("router: out of memory building the %s reply", what);
        pd_http_reply_retry(http, 503, "out of memory");
    }
    free(txt);
}

/* One SSE event; PD_ERR_NOMEM (nothing sent) when o could not be built whole (since mark) or sent. */
static pd_status sse_send(rt_req *r, const cJSON *o, unsigned long mark)
{
    if (!r->http) return PD_OK;
    char *txt = json_print(o, mark);
    struct evbuffer *b = txt ? evbuffer_new() : NULL;
    pd_status st = b && evbuffer_add_printf(b, "data: %s\n\n", txt) >= 0 ? PD_OK : PD_ERR_NOMEM;
    if (st == PD_OK) evhttp_send_reply_chunk(r->http, b);
    if (b) evbuffer_free(b);
    free(txt);
    return st;
}

static void sse_start(rt_req *r)
{
    if (r->sse_started || !r->http) return;
    r->sse_started = 1;
    pd_http_stream_start(r->http, 200, "text/event-stream");
}

static cJSON *chunk_base(rt_req *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object", r->chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", r->rt->o->served_model_name);
    return o;
}

/* Characters (code points) of a UTF-8 string, as Python's len() counts them. */
static long utf8_chars(const char *s)
{
    long n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/* c: the choice the entries belong to; completions' text_offset runs on over its chunks (c->out.lp_offset) */
static void add_lp(cJSON *dst, rt_req *r, rt_choice *c, cJSON *entries)
{
    /* chat: {"content":[entries]}; completions: {"tokens":[...],"token_logprobs":[...],"top_logprobs":[...],
     * "text_offset":[...]}, text_offset being where each token's text starts in the choice's text, as vLLM counts
     * it (the sum of the earlier tokens' lengths in characters) */
    if (r->chat) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "content", entries);
        cJSON_AddItemToObject(dst, "logprobs", o);
        return;
    }
    cJSON *o = cJSON_CreateObject(), *toks = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs"), *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    const cJSON *e;
    cJSON_ArrayForEach(e, entries) {
        const cJSON *tok = cJSON_GetObjectItem(e, "token");
        cJSON_AddItemToArray(toks, cJSON_Duplicate(tok, 1));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)c->out.lp_offset));
        if (cJSON_IsString(tok)) c->out.lp_offset += utf8_chars(tok->valuestring);
        cJSON_AddItemToArray(lps, cJSON_Duplicate(cJSON_GetObjectItem(e, "logprob"), 1));
        const cJSON *t = cJSON_GetObjectItem(e, "top_logprobs");
        cJSON *m = cJSON_CreateObject();
        const cJSON *x;
        cJSON_ArrayForEach(x, t)
            cJSON_AddItemToObject(m, cJSON_GetObjectItem(x, "token")->valuestring,
                                  cJSON_Duplicate(cJSON_GetObjectItem(x, "logprob"), 1));
        cJSON_AddItemToArray(tops, m);
    }
    cJSON_Delete(entries);
    cJSON_AddItemToObject(dst, "logprobs", o);
}

static cJSON *str_n(const char *s, size_t n)
{
    char *t = strndup(s, n);
    cJSON *o = cJSON_CreateString(t ? t : "");
    free(t);
    return o;
}

/* relay.c's callbacks (rt_choice_cbs): text, the end of a choice, progress. */
static pd_status choice_delta_cb(void *arg, rt_choice *c, const char *rs, size_t rl, const char *cs, size_t cl,
                                 cJSON *lps)
{
    rt_req *r = arg;
    if (!r->stream) { /* accumulate */
        pd_status st = PD_OK;
        if (rl) st = pd_buf_append(&c->out.reasoning, rs, rl);
        if (cl && st == PD_OK) st = pd_buf_append(&c->out.content, cs, cl);
        if (lps) {
            cJSON *e;
            while ((e = cJSON_DetachItemFromArray(lps, 0)) != NULL) cJSON_AddItemToArray(c->out.lp_tokens, e);
            cJSON_Delete(lps);
        }
        return st;
    }
    sse_start(r);
    const unsigned long mark = rt_json_failures();
    cJSON *o = chunk_base(r), *chs = cJSON_AddArrayToObject(o, "choices"), *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", c->index);
    if (r->chat) {
        cJSON *d = cJSON_AddObjectToObject(ch, "delta");
        if (rl) cJSON_AddItemToObject(d, "reasoning_content", str_n(rs, rl));
        if (cl || !rl) cJSON_AddItemToObject(d, "content", str_n(cs ? cs : "", cl));
    } else {
        cJSON_AddItemToObject(ch, "text", str_n(cs ? cs : "", cl));
    }
    if (lps) add_lp(ch, r, c, lps);
    else cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddNullToObject(ch, "finish_reason");
    if (!cJSON_AddItemToArray(chs, ch)) cJSON_Delete(ch);
    pd_status st = sse_send(r, o, mark); /* PD_ERR_NOMEM: relay.c fails the choice (503) */
    cJSON_Delete(o);
    return st;
}

static cJSON *usage_json(rt_req *r)
{
    int comp = 0;
    for (int i = 0; i < r->n_ch; i++) comp += r->ch[i].out.n_gen;
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", r->prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", comp);
    cJSON_AddNumberToObject(u, "total_tokens", r->prompt_tokens + comp);
    return u;
}

static cJSON *stop_reason(const rt_choice *c)
{
    if (c->out.stop_str[0]) return cJSON_CreateString(c->out.stop_str);
    if (c->out.stop_token >= 0 && !strcmp(c->st.finish, "stop")) return cJSON_CreateNumber(c->out.stop_token);
    return cJSON_CreateNull();
}

/* The phase timings of one choice (the pdserve_timing extension field). */
static cJSON *timing_json(const rt_choice *c)
{
    cJSON *t = cJSON_CreateObject();
    cJSON_AddNumberToObject(t, "queue_s", c->tm.queue);
    cJSON_AddNumberToObject(t, "prefill_s", c->tm.prefill);
    cJSON_AddNumberToObject(t, "transfer_s", c->tm.transfer);
    cJSON_AddNumberToObject(t, "decode_s", c->tm.decode);
    return t;
}

static void count_error(rt_router *rt, int status)
{
    char code[16];
    snprintf(code, sizeof code, "%d", status);
    pd_counter_add(rt->m.errors, PD_LV(code), 1);
}

static void send_error(rt_req *r, int status, const char *msg)
{
    if (!r->http || r->error_sent) return;
    r->error_sent = 1;
    if (r->sse_started) { /* the stream has started: an error event, then [DONE] */
        const unsigned long mark = rt_json_failures();
        cJSON *e = pd_http_error_json(status, NULL, NULL, msg);
        (void)sse_send(r, e, mark); /* failing already: [DONE] ends the stream either way */
        cJSON_Delete(e);
        pd_http_stream_write(r->http, "data: [DONE]\n\n", 14);
        pd_http_stream_end(r->http);
    } else {
        if (status == 429 || status == 503)
            evhttp_add_header(evhttp_request_get_output_headers(r->http), "Retry-After", "1");
        pd_http_reply_error(r->http, status, NULL, NULL, "%s", msg);
    }
}

static void log_request(rt_req *r, const char *outcome)
{
    int comp = 0;
    double ttft = 0;
    char inst[400] = "";
    size_t n = 0;
    for (int i = 0; i < r->n_ch; i++) {
        const double first = r->ch[i].tm.t_first;
        comp += r->ch[i].out.n_gen;
        if (first > 0 && (ttft == 0 || first - r->t0 < ttft)) ttft = first - r->t0;
    }
    for (int i = 0; i < r->n_ch && n < sizeof inst - 1; i++) {
        const char *used = r->ch[i].up.used;
        n += (size_t)snprintf(inst + n, sizeof inst - n, "%s%s", i ? "; " : "", used[0] ? used : "-");
    }
    pd_info("router: %s %s: %d prompt + %d completion tokens, %d choice(s), ttft %.3f s, total %.3f s (%s)", r->id,
            outcome, r->prompt_tokens, comp, r->n_ch, ttft, pd_time_now() - r->t0, inst);
}

/* One failed choice (or a response out of memory) fails the request: the others stop, the client gets the error. */
static void fail_request(rt_req *r, int status, const char *msg)
{
    rt_router *rt = r->rt;
    for (int i = 0; i < r->n_ch; i++)
        if (!rt_choice_fsm_final(&r->ch[i].st)) {
            rt_choice_abort(&r->ch[i]);
            r->n_done++;
        }
    pd_counter_add(rt->m.failed, NULL, 1);
    pd_counter_add(rt->m.finished, PD_LV("error"), 1);
    count_error(rt, status);
    pd_warn("router: %s failed: %s", r->id, msg);
    send_error(r, status, msg);
    log_request(r, "failed");
    req_free(r);
}

/* A streamed choice's final chunk. PD_ERR_NOMEM: nothing sent. */
static pd_status send_final_chunk(rt_req *r, rt_choice *c)
{
    sse_start(r);
    const unsigned long mark = rt_json_failures();
    cJSON *o = chunk_base(r), *chs = cJSON_AddArrayToObject(o, "choices"), *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", c->index);
    if (r->chat) cJSON_AddObjectToObject(ch, "delta");
    else cJSON_AddStringToObject(ch, "text", "");
    cJSON_AddNullToObject(ch, "logprobs");
    cJSON_AddStringToObject(ch, "finish_reason", c->st.finish);
    cJSON_AddItemToObject(ch, "stop_reason", stop_reason(c));
    if (!cJSON_AddItemToArray(chs, ch)) cJSON_Delete(ch);
    cJSON_AddItemToObject(o, "pdserve_timing", timing_json(c)); /* extension: this choice's phase times */
    pd_status st = sse_send(r, o, mark);
    cJSON_Delete(o);
    return st;
}

/* The whole (non-stream) response of a finished request. */
static cJSON *response_json(rt_req *r)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object", r->chat ? "chat.completion" : "text_completion");
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", r->rt->o->served_model_name);
    cJSON *chs = cJSON_AddArrayToObject(o, "choices");
    for (int i = 0; i < r->n_ch; i++) {
        rt_choice *x = &r->ch[i];
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", i);
        if (r->chat) {
            cJSON *m = cJSON_AddObjectToObject(ch, "message");
            cJSON_AddStringToObject(m, "role", "assistant");
            cJSON_AddStringToObject(m, "content", x->out.content.data ? x->out.content.data : "");
            if (x->out.reasoning.len) cJSON_AddStringToObject(m, "reasoning_content", x->out.reasoning.data);
        } else {
            cJSON_AddStringToObject(ch, "text", x->out.content.data ? x->out.content.data : "");
        }
        if (x->out.lp_tokens) {
            add_lp(ch, r, x, x->out.lp_tokens);
            x->out.lp_tokens = NULL;
        } else {
            cJSON_AddNullToObject(ch, "logprobs");
        }
        cJSON_AddStringToObject(ch, "finish_reason", x->st.finish);
        cJSON_AddItemToObject(ch, "stop_reason", stop_reason(x));
        if (!cJSON_AddItemToArray(chs, ch)) cJSON_Delete(ch);
    }
    cJSON_AddItemToObject(o, "usage", usage_json(r));
    cJSON_AddItemToObject(o, "pdserve_timing", timing_json(&r->ch[0])); /* phase timings of the first choice */
    return o;
}

/* The request's last bytes, built before anything is counted so that out of memory fails it instead (503):
 * the usage chunk (stream with include_usage) or the whole response. NULL in *txt: nothing to send. */
static pd_status final_text(rt_req *r, char **txt)
{
    *txt = NULL;
    if (!r->http || (r->stream && !r->include_usage)) return PD_OK;
    const unsigned long mark = rt_json_failures();
    cJSON *o = r->stream ? chunk_base(r) : response_json(r);
    if (r->stream) {
        cJSON_AddArrayToObject(o, "choices");
        cJSON_AddItemToObject(o, "usage", usage_json(r));
    }
    char *t = json_print(o, mark);
    cJSON_Delete(o);
    if (t && r->stream) { /* one SSE event */
        size_t n = strlen(t);
        char *e = malloc(n + 9);
        if (e) snprintf(e, n + 9, "data: %s\n\n", t);
        free(t);
        t = e;
    }
    if (!t) return PD_ERR_NOMEM;
    *txt = t;
    return PD_OK;
}

static void choice_done_cb(void *arg, rt_choice *c)
{
    rt_req *r = arg;
    rt_router *rt = r->rt;
    r->n_done++;
    if (c->st.state == RT_CH_FAILED) {
        fail_request(r, c->st.status, c->st.msg);
        return;
    }
    if (r->stream && r->http && send_final_chunk(r, c) != PD_OK) {
        fail_request(r, 503, "out of memory");
        return;
    }
    if (r->n_done < r->n_ch) return;
    char *txt;
    if (final_text(r, &txt) != PD_OK) {
        fail_request(r, 503, "out of memory");
        return;
    }
    pd_counter_add(rt->m.prompt_tokens, NULL, r->prompt_tokens);
    for (int i = 0; i < r->n_ch; i++) {
        const char *f = r->ch[i].st.finish;
        pd_counter_add(rt->m.finished,
                       PD_LV(!strcmp(f, "length")    ? "length" :
                                 !strcmp(f, "abort") ? "abort" :
                                                       "stop"),
                       1);
        rt_metrics_choice(rt, &r->ch[i]);
    }
    pd_histogram_observe(rt->m.e2e, NULL, pd_time_now() - r->t0);
    rt_stats_sample(rt->stats, RT_SAMPLE_E2E, pd_time_now() - r->t0);
    if (r->stream && r->http) {
        if (txt) pd_http_stream_write(r->http, txt, strlen(txt));
        pd_http_stream_write(r->http, "data: [DONE]\n\n", 14);
        pd_http_stream_end(r->http);
    } else if (r->http) {
        pd_http_reply_text(r->http, 200, "application/json", txt, strlen(txt));
    }
    free(txt);
    log_request(r, "done");
    req_free(r);
}

static void choice_progress_cb(void *arg, rt_choice *c)
{
    (void)c;
    req_progress(arg);
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rt_req *r = arg;
    for (int i = 0; i < r->n_ch; i++)
        if (!rt_choice_fsm_final(&r->ch[i].st)) {
            char msg[64];
            snprintf(msg, sizeof msg, "no progress for %.0f s", r->rt->o->request_timeout);
            rt_choice_timeout(&r->ch[i], msg); /* fails the whole request (choice_done_cb) */
            return;
        }
}

/* The limits a body is checked against, from the options and the instances known now. */
static rt_limits request_limits(rt_router *rt)
{
    rt_limits lim = {
        .tok = rt->tok,
        .tmpl = rt->tmpl,
        .defaults = &rt->defaults,
        .served_model_name = rt->o->served_model_name,
        .vocab_size = rt->vocab_size,
        .max_model_len = rt->o->max_model_len ? rt->o->max_model_len : rt_registry_max_model_len(rt->reg),
        .max_tokens_limit = rt->o->max_tokens_limit,
        .max_stop = rt->o->max_stop,
        .max_n = rt->o->max_n,
        .max_body = rt->o->max_body,
        .max_depth = RT_MAX_JSON_DEPTH,
    };
    return lim;
}

/* Prompt tokens of the choices in flight that have produced no token yet (queued or being prefilled). */
static long queued_tokens(rt_router *rt)
{
    long n = 0;
    for (rt_req *q = rt->reqs; q; q = q->next)
        for (int i = 0; i < q->n_ch; i++)
            if (!rt_choice_fsm_final(&q->ch[i].st) && q->ch[i].tm.t_first == 0) n += q->ch[i].n_prompt;
    return n;
}

static void handle_generate(rt_router *rt, struct evhttp_request *http, int chat)
{
    char *body = NULL;
    size_t len = 0;
    /* libevent refuses bodies over max_body before this runs; rt_request_parse checks again */
    if (pd_http_body(http, SIZE_MAX - 1, &body, &len) != PD_OK) {
        pd_http_reply_retry(http, 503, "out of memory");
        return;
    }
    pd_counter_add(rt->m.requests, NULL, 1);
    int inflight = 0;
    for (rt_req *q = rt->reqs; q; q = q->next) inflight++;
    if (rt->o->max_queued > 0 && inflight >= rt->o->max_queued) {
        free(body);
        pd_counter_add(rt->m.rejected, NULL, 1);
        count_error(rt, 429);
        char msg[128];
        snprintf(msg, sizeof msg, "server overloaded: %d requests in flight; retry later", inflight);
        pd_http_reply_retry(http, 429, msg);
        return;
    }
    double t0 = pd_time_now(); /* latencies include validation and tokenization */
    long created = (long)time(NULL);
    char id[sizeof((rt_req *)0)->id];
    snprintf(id, sizeof id, "%s-%llx%06llx", chat ? "chatcmpl" : "cmpl", (unsigned long long)created,
             (unsigned long long)++rt->next_id);
    rt_limits lim = request_limits(rt);
    rt_req *r = NULL;
    rt_error e;
    pd_status st = rt_request_parse(body, len, chat, &lim, &r, &e);
    free(body);
    if (st != PD_OK) {
        pd_counter_add(rt->m.rejected, NULL, 1);
        count_error(rt, e.status);
        if (e.status == 503) evhttp_add_header(evhttp_request_get_output_headers(http), "Retry-After", "1");
        pd_http_reply_error(http, e.status, e.type, e.param[0] ? e.param : NULL, "%s", e.msg);
        pd_info("router: %s refused (%d): %s", id, e.status, e.msg);
        return;
    }
    if (rt->o->max_queued_tokens > 0) {
        long queued = queued_tokens(rt), mine = 0;
        for (int i = 0; i < r->n_ch; i++) mine += r->ch[i].n_prompt;
        /* a request alone is admitted whatever its size (--max-model-len bounds that): the limit bounds queueing */
        if (queued > 0 && queued + mine > rt->o->max_queued_tokens) {
            rt_request_free(r);
            pd_counter_add(rt->m.rejected, NULL, 1);
            count_error(rt, 429);
            char msg[192];
            snprintf(msg, sizeof msg,
                     "server overloaded: %ld prompt tokens wait for their first token, %ld more would "
                     "pass the limit of %d; retry later",
                     queued, mine, rt->o->max_queued_tokens);
            pd_http_reply_retry(http, 429, msg);
            pd_info("router: %s refused (429): %s", id, msg);
            return;
        }
    }
    r->rt = rt;
    r->t0 = t0;
    r->created = created;
    memcpy(r->id, id, sizeof id);
    if (!(r->timer = evtimer_new(rt->base, timeout_cb, r))) {
        rt_request_free(r);
        count_error(rt, 503);
        pd_warn("router: %s refused (503): out of memory", id);
        pd_http_reply_retry(http, 503, "out of memory");
        return;
    }
    r->http = http;
    r->next = rt->reqs;
    rt->reqs = r;
    req_progress(r);
    pd_http_set_closecb(http, close_cb, r);
    const rt_choice_cbs cbs = {
        .delta_cb = choice_delta_cb, .done_cb = choice_done_cb, .progress_cb = choice_progress_cb, .arg = r};
    for (int i = 0; i < r->n_ch && r->http && !r->error_sent; i++) {
        rt_req *alive = r;
        rt_choice_start(&r->ch[i], &cbs);
        /* a failed start frees the request: stop touching it */
        int still = 0;
        for (rt_req *q = rt->reqs; q; q = q->next) still |= q == alive;
        if (!still) return;
    }
}

/* ---- small routes ---------------------------------------------------------------------------------------- */

static void handle_tokenize(rt_router *rt, struct evhttp_request *http, int detok)
{
    const unsigned long mark = rt_json_failures();
    char *body = NULL;
    rt_error e = {0};
    rt_limits lim = request_limits(rt);
    if (pd_http_body(http, rt->o->max_body, &body, NULL) != PD_OK) {
        pd_http_reply_error(http, 413, NULL, NULL, "request body too large");
        return;
    }
    cJSON *root = cJSON_ParseWithOpts(body, NULL, 1), *out = NULL;
    free(body);
    rt_req tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.rt = rt;
    if (!cJSON_IsObject(root)) {
        e.status = 400;
        snprintf(e.msg, sizeof e.msg, "request body must be a JSON object");
    } else if (detok) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "tokens");
        int n = cJSON_GetArraySize(t), ok = cJSON_IsArray(t);
        int32_t *ids = malloc((size_t)(n + 1) * sizeof *ids);
        int i = 0;
        const cJSON *v;
        cJSON_ArrayForEach(v, t)
            ok = ok && cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < txt_tokenizer_vocab_size(rt->tok) &&
                (ids[i++] = (int32_t)v->valuedouble, 1);
        char *text = NULL;
        size_t len = 0;
        if (!ok || !ids || txt_tokenizer_decode(rt->tok, ids, (size_t)n, 0, &text, &len) != PD_OK) {
            e.status = 400;
            snprintf(e.param, sizeof e.param, "tokens");
            snprintf(e.msg, sizeof e.msg, "%s", !ok || !ids ? "'tokens' must be a list of token ids" : "cannot decode");
        } else {
            out = cJSON_CreateObject();
            cJSON_AddStringToObject(out, "prompt", text);
        }
        free(text);
        free(ids);
    } else {
        int len = 0, starts[1], n = 0;
        int ok = cJSON_GetObjectItemCaseSensitive(root, "messages") ?
            rt_chat_prompt(&lim, root, &tmp, &len, &e) :
            rt_completion_prompts(&lim, cJSON_GetObjectItemCaseSensitive(root, "prompt"), &tmp, starts, &len, &n, 1,
                                  &e);
        if (ok) {
            out = cJSON_CreateObject();
            cJSON *a = cJSON_AddArrayToObject(out, "tokens");
            for (int i = 0; i < tmp.n_prompts; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(tmp.prompts[i]));
            cJSON_AddNumberToObject(out, "count", tmp.n_prompts);
            cJSON_AddNumberToObject(out, "max_model_len",
                                    rt->o->max_model_len ? rt->o->max_model_len : rt_registry_max_model_len(rt->reg));
        }
    }
    if (out) reply_json(http, 200, out, mark, detok ? "detokenize" : "tokenize");
    else pd_http_reply_error(http, e.status ? e.status : 400, NULL, e.param[0] ? e.param : NULL, "%s", e.msg);
    cJSON_Delete(out);
    cJSON_Delete(root);
    free(tmp.prompts);
}

static void handle_models(rt_router *rt, struct evhttp_request *http)
{
    const unsigned long mark = rt_json_failures();
    cJSON *o = cJSON_CreateObject(), *d = cJSON_AddArrayToObject(o, "data"), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddStringToObject(m, "id", rt->o->served_model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "pdserve");
    cJSON_AddStringToObject(m, "root", rt->o->model ? rt->o->model : rt->o->served_model_name);
    int mml = rt->o->max_model_len ? rt->o->max_model_len : rt_registry_max_model_len(rt->reg);
    if (mml > 0) cJSON_AddNumberToObject(m, "max_model_len", mml);
    if (!cJSON_AddItemToArray(d, m)) cJSON_Delete(m);
    reply_json(http, 200, o, mark, "models");
    cJSON_Delete(o);
}

/* POST /admin/instances {"address": "host:port", "role": "prefill"|"decode"}: add or re-register;
 * POST /admin/instances/<address>/drain; DELETE /admin/instances/<address>. */
static void handle_admin(rt_router *rt, struct evhttp_request *http, const char *rest, enum evhttp_cmd_type m)
{
    const unsigned long mark = rt_json_failures();
    if (!*rest && m == EVHTTP_REQ_POST) {
        if (!rt_auth_admin(rt->auth, http, 1)) return; /* the cluster's instances, or an operator */
        char *body = NULL;
        if (pd_http_body(http, 65536, &body, NULL) != PD_OK) {
            pd_http_reply_error(http, 413, NULL, NULL, "request body too large");
            return;
        }
        cJSON *o = cJSON_Parse(body);
        free(body);
        const cJSON *a = o ? cJSON_GetObjectItem(o, "address") : NULL, *ro = o ? cJSON_GetObjectItem(o, "role") : NULL;
        rt_role role;
        rt_instance *in = NULL;
        if (!cJSON_IsString(a) || !cJSON_IsString(ro) ||
            (strcmp(ro->valuestring, "prefill") && strcmp(ro->valuestring, "decode") &&
             strcmp(ro->valuestring, "colocated")))
            pd_http_reply_error(http, 400, NULL, NULL,
                                "need {\"address\": \"host:port\", \"role\": \"prefill\"|\"decode\"|\"colocated\"}");
        else if ((role = !strcmp(ro->valuestring, "prefill") ? RT_PREFILL : RT_DECODE),
                 rt_registry_add(rt->reg, a->valuestring, role, &in) != PD_OK)
            pd_http_reply_error(http, 400, NULL, "address", "'%s' is not host:port", a->valuestring);
        else {
            if (!in->registered) pd_info("router: instance %s (%s) registered", in->addr, ro->valuestring);
            in->registered = 1;
            cJSON *r = cJSON_CreateObject();
            cJSON_AddStringToObject(r, "address", in->addr);
            cJSON_AddBoolToObject(r, "registered", 1);
            reply_json(http, 200, r, mark, "admin");
            cJSON_Delete(r);
        }
        cJSON_Delete(o);
        return;
    }
    if (*rest != '/') {
        pd_http_reply_error(http, 404, NULL, NULL, "no such admin route");
        return;
    }
    char addr[512];
    snprintf(addr, sizeof addr, "%s", rest + 1);
    char *slash = strchr(addr, '/');
    int drain = slash && !strcmp(slash, "/drain");
    if (slash) *slash = '\0';
    char *dec = evhttp_uridecode(addr, 0, NULL);
    rt_instance *in = dec ? rt_registry_find(rt->reg, dec) : NULL;
    free(dec);
    if (!in || in->removed) pd_http_reply_error(http, 404, NULL, NULL, "no instance %s", addr);
    else if (drain && m == EVHTTP_REQ_POST) {
        pd_info("router: draining %s", in->addr);
        rt_registry_drain(rt->reg, in);
        cJSON *r = cJSON_CreateObject();
        cJSON_AddBoolToObject(r, "draining", 1);
        reply_json(http, 200, r, mark, "admin");
        cJSON_Delete(r);
    } else if (!slash && m == EVHTTP_REQ_DELETE) {
        pd_info("router: removing %s (%d requests in flight finish first)", in->addr, in->inflight);
        rt_registry_remove(rt->reg, in);
        cJSON *r = cJSON_CreateObject();
        cJSON_AddBoolToObject(r, "removed", 1);
        reply_json(http, 200, r, mark, "admin");
        cJSON_Delete(r);
    } else {
        pd_http_reply_error(http, 405, NULL, NULL, "use POST .../drain or DELETE");
    }
}

static void gencb(struct evhttp_request *http, void *arg)
{
    rt_router *rt = arg;
    char path[512];
    pd_http_path(http, path, sizeof path);
    enum evhttp_cmd_type m = evhttp_request_get_command(http);
    int post = m == EVHTTP_REQ_POST, get = m == EVHTTP_REQ_GET;
    const unsigned long mark = rt_json_failures();
    if ((!strncmp(path, "/v1/", 4) || !strcmp(path, "/tokenize") || !strcmp(path, "/detokenize")) &&
        !rt_auth_check(rt->auth, http))
        return;
    if (!strcmp(path, "/v1/completions") || !strcmp(path, "/v1/chat/completions")) {
        if (post) handle_generate(rt, http, path[4] == 'c' && path[5] == 'h');
        else pd_http_reply_error(http, 405, NULL, NULL, "use POST");
    } else if (!strcmp(path, "/v1/models") && get) {
        handle_models(rt, http);
    } else if ((!strcmp(path, "/tokenize") || !strcmp(path, "/detokenize")) && post) {
        handle_tokenize(rt, http, path[1] == 'd');
    } else if (!strcmp(path, "/health") && get) {
        cJSON *o = cJSON_CreateObject();
        int ok = rt_registry_ready(rt->reg);
        cJSON_AddStringToObject(o, "status", ok ? "ok" : "unavailable");
        cJSON_AddItemToObject(o, "instances", rt_registry_json(rt->reg));
        reply_json(http, ok ? 200 : 503, o, mark, "health");
        cJSON_Delete(o);
    } else if (!strncmp(path, "/admin/", 7) && !(post && !strcmp(path, "/admin/instances")) &&
               !rt_auth_admin(rt->auth, http, 0)) {
        return;
    } else if (!strcmp(path, "/admin/instances") && get) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToObject(o, "instances", rt_registry_json(rt->reg));
        reply_json(http, 200, o, mark, "instances");
        cJSON_Delete(o);
    } else if (!strncmp(path, "/admin/instances", 16)) {
        handle_admin(rt, http, path + 16, m);
    } else if (!strcmp(path, "/metrics") && get) {
        pd_http_reply_metrics(http, rt->m.reg);
    } else if (!strcmp(path, "/admin/stats") && get) {
        rt_stats_reply(rt->stats, http);
    } else if ((!strcmp(path, "/dashboard") || !strcmp(path, "/dashboard/")) && get) {
        rt_dashboard_reply(http);
    } else {
        pd_http_reply_error(http, 404, NULL, NULL, "no route %s %s", get ? "GET" : post ? "POST" : "", path);
    }
}

pd_status rt_router_create(struct event_base *base, rt_opts *o, rt_router **out, int *bound_port)
{
    char err[1024];
    rt_router *rt = calloc(1, sizeof *rt);
    if (!rt) return PD_ERR_NOMEM;
    rt_json_track();
    rt->base = base;
    rt->o = o;
    const char *tokdir = o->tokenizer ? o->tokenizer : o->model;
    pd_status st;
    if (!tokdir) {
        pd_error("router: --model (or --tokenizer) is required: the tokenizer and chat template come from it");
        st = PD_ERR_INVALID;
        goto fail_router;
    }
    if ((st = txt_tokenizer_load(tokdir, &rt->tok, err, sizeof err)) != PD_OK) {
        pd_error("router: %s", err);
        goto fail_router;
    }
    if (txt_chat_template_load(tokdir, &rt->tmpl, err, sizeof err) != PD_OK) {
        pd_warn("router: no usable chat template (%s); /v1/chat/completions is unavailable", err);
        rt->tmpl = NULL;
    }
    rt->vocab_size = txt_tokenizer_vocab_size(rt->tok);
    int vocab;
    if (o->model && txt_config_vocab_size(o->model, &vocab, err, sizeof err) == PD_OK) rt->vocab_size = vocab;
    if ((st = rt_sampling_defaults_load(o->model, o->generation_config, o->override_generation_config, &rt->defaults,
                                        err, sizeof err)) != PD_OK) {
        pd_error("router: %s", err);
        goto fail_router;
    }
    char dflt[256];
    rt_sampling_defaults_str(&rt->defaults, dflt, sizeof dflt);
    if (dflt[0]) pd_info("router: requests that leave them out sample with %s (the model's generation config)", dflt);
    if ((st = rt_auth_create(o, &rt->auth, err, sizeof err)) != PD_OK) {
        pd_error("router: %s", err);
        goto fail_router;
    }
    if (rt_auth_keys(rt->auth))
        pd_info("router: the public API requires an API key (%d configured)", rt_auth_keys(rt->auth));
    rt_policy policy;
    if (rt_policy_parse(o->policy, &policy) != PD_OK) {
        pd_error("router: --policy '%s' is not least-load, round-robin or bucket", o->policy);
        st = PD_ERR_INVALID;
        goto fail_router;
    }
    if ((st = rt_registry_create(base, o->prefill, o->decode, o->health_interval, policy, &rt->reg)) != PD_OK)
        goto fail_router;
    if ((st = rt_metrics_init(rt)) != PD_OK || (st = rt_stats_create(rt, &rt->stats)) != PD_OK) goto fail_router;
    /* a client connection may hold two more: its request's calls to a prefill and a decode instance */
    pd_http_limits lim = {.max_body = o->max_body, .max_headers = 16384, .fds_per_connection = 3, .listen = &o->listen};
    if ((st = pd_http_server_create(base, o->host, o->port, &lim, gencb, rt, &rt->http, bound_port)) != PD_OK)
        goto fail_router;
    *out = rt;
    return PD_OK;
fail_router:
    rt_router_destroy(rt);
    return st;
}

void rt_router_destroy(rt_router *rt)
{
    if (!rt) return;
    for (rt_req *r = rt->reqs; r; r = r->next)
        if (r->http) {
            pd_http_set_closecb(r->http, NULL, NULL);
            r->http = NULL;
        }
    pd_http_server_free(rt->http);
    while (rt->reqs) req_free(rt->reqs);
    rt_stats_destroy(rt->stats);
    rt_auth_destroy(rt->auth);
    rt_registry_destroy(rt->reg);
    rt_metrics_free(rt);
    txt_chat_template_destroy(rt->tmpl);
    txt_tokenizer_destroy(rt->tok);
    free(rt);
}
