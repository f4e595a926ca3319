/* Datasets: random (token ids or words, lengths drawn uniformly within --random-range-ratio of the targets,
 * an optional shared prefix), ShareGPT JSON (first human turn as the prompt, the reply's length as the output
 * length, filtered as vLLM does), and one fixed prompt. Token counts of text come from the router's /tokenize,
 * so they are the server's own. */
#include <event2/event.h>
#include <string.h>

#include "benchmarks/pdserve_bench/bench.h"
#include "common/pd_http.h"

typedef struct {
    struct event_base *base;
    int status;
    char *body;
} sync_call;

static void sync_done(pd_http_call *c, int status, const char *body, size_t len, pd_status st, void *arg)
{
    (void)c;
    (void)st;
    sync_call *s = arg;
    s->status = status;
    s->body = malloc(len + 1);
    if (s->body) {
        memcpy(s->body, body, len);
        s->body[len] = '\0';
    }
    event_base_loopbreak(s->base);
}

pd_status bench_http(const char *host, int port, const char *method, const char *path, const char *body,
                     int *status, char **resp)
{
    sync_call s = {event_base_new(), 0, NULL};
    if (!s.base) return PD_ERR_NOMEM;
    pd_http_call *c;
    pd_status st = pd_http_call_start(s.base, host, port, method, path, body, body ? strlen(body) : 0, 60, NULL,
                                      sync_done, &s, &c);
    if (st == PD_OK) {
        event_base_dispatch(s.base);
        event_base_loop(s.base, EVLOOP_NONBLOCK);
    }
    event_base_free(s.base);
    if (st != PD_OK) return st;
    *status = s.status;
    *resp = s.body;
    return s.status ? PD_OK : PD_ERR_PEER;
}

/* Token count of a text prompt by the router's /tokenize; -1 on failure. */
static int count_tokens(const char *host, int port, const char *text)
{
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "prompt", text);
    char *txt = cJSON_PrintUnformatted(b), *resp = NULL;
    cJSON_Delete(b);
    int status = 0, n = -1;
    if (txt && bench_http(host, port, "POST", "/tokenize", txt, &status, &resp) == PD_OK && status == 200) {
        cJSON *o = cJSON_Parse(resp);
        const cJSON *c = o ? cJSON_GetObjectItem(o, "count") : NULL;
        if (cJSON_IsNumber(c)) n = c->valueint;
        cJSON_Delete(o);
    }
    free(txt);
    free(resp);
    return n;
}

static int uniform_int(pd_rng *r, int lo, int hi) /* [lo, hi] */
{
    if (hi <= lo) return lo;
    return lo + (int)(pd_rng_uniform(r) * (double)(hi - lo + 1));
}

static const char *const WORDS[] = {
    "the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "he", "was", "for", "on", "are", "as", "with",
    "his", "they", "at", "be", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not", "what", "all",
    "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which", "she", "do", "how", "their",
    "if", "will", "up", "other", "about", "out", "many", "then", "them", "these", "so", "some", "her", "would",
    "make", "like", "him", "into", "time", "has", "look", "two", "more", "write", "go", "see", "number", "no", "way",
    "could", "people", "my", "than", "first", "water", "been", "call", "who", "oil", "its", "now", "find", "long",
    "down", "day", "did", "get", "come", "made", "may", "part"};

static pd_status build_random(const bench_data_opts *o, int n, const char *host, int port, bench_prompt *out,
                              char *err, size_t errlen)
{
    pd_rng r;
    pd_rng_seed(&r, (uint64_t)o->seed);
    int text = o->random_input_type && !strcmp(o->random_input_type, "text");
    int lo_tok = 1000, hi_tok = o->vocab_size > 2000 ? o->vocab_size - 1 : 100000; /* skip low and special ids */
    double rr = o->random_range_ratio;
    int in_lo = (int)floor(o->random_input_len * (1 - rr)), in_hi = (int)ceil(o->random_input_len * (1 + rr));
    int out_lo = (int)floor(o->random_output_len * (1 - rr)), out_hi = (int)ceil(o->random_output_len * (1 + rr));
    int32_t *prefix = o->random_prefix_len > 0 ? malloc((size_t)o->random_prefix_len * sizeof *prefix) : NULL;
    for (int k = 0; prefix && k < o->random_prefix_len; k++) prefix[k] = uniform_int(&r, lo_tok, hi_tok);
    for (int i = 0; i < n; i++) {
        bench_prompt *p = &out[i];
        int in = PD_MAX(1, uniform_int(&r, in_lo, in_hi));
        p->output_len = PD_MAX(1, uniform_int(&r, out_lo, out_hi));
        int np = o->random_prefix_len + in;
        if (!text) {
            p->ids = malloc((size_t)np * sizeof *p->ids);
            if (!p->ids) return PD_FAIL(err, errlen, PD_ERR_NOMEM, "bench", "out of memory");
            for (int k = 0; k < o->random_prefix_len; k++) p->ids[k] = prefix[k];
            for (int k = o->random_prefix_len; k < np; k++) p->ids[k] = uniform_int(&r, lo_tok, hi_tok);
            p->n_ids = np;
            p->prompt_len = np;
        } else { /* words: about one token each; the exact count comes from the router */
            size_t cap = (size_t)np * 12 + 1, len = 0;
            p->text = malloc(cap);
            if (!p->text) return PD_FAIL(err, errlen, PD_ERR_NOMEM, "bench", "out of memory");
            pd_rng pr;
            pd_rng_seed(&pr, (uint64_t)o->seed ^ 0x9e3779b97f4a7c15ull);
            for (int k = 0; k < np; k++) {
                const char *w =
                    WORDS[uniform_int(k < o->random_prefix_len ? &pr : &r, 0, (int)PD_ARRAY_LEN(WORDS) - 1)];
                len += (size_t)snprintf(p->text + len, cap - len, "%s%s", k ? " " : "", w);
            }
            int c = count_tokens(host, port, p->text);
            p->prompt_len = c > 0 ? c : np;
        }
    }
    free(prefix);
    return PD_OK;
}

static pd_status build_sharegpt(const bench_data_opts *o, int n, const char *host, int port, bench_prompt *out,
                                char *err, size_t errlen)
{
    if (!o->dataset_path)
        return PD_FAIL(err, errlen, PD_ERR_INVALID, "bench", "--dataset-path is required for sharegpt");
    char *buf = NULL;
    size_t len;
    if (pd_file_read(o->dataset_path, &buf, &len) != PD_OK)
        return PD_FAIL(err, errlen, PD_ERR_IO, "bench", "cannot read %s", o->dataset_path);
    cJSON *root = cJSON_Parse(buf);
    free(buf);
    if (!cJSON_IsArray(root)) {
        cJSON_Delete(root);
        return PD_FAIL(err, errlen, PD_ERR_FORMAT, "bench", "%s: not a ShareGPT JSON array", o->dataset_path);
    }
    int total = cJSON_GetArraySize(root), got = 0;
    int *order = malloc((size_t)(total ? total : 1) * sizeof *order);
    if (!order) {
        cJSON_Delete(root);
        return PD_FAIL(err, errlen, PD_ERR_NOMEM, "bench", "out of memory");
    }
    pd_rng r;
    pd_rng_seed(&r, (uint64_t)o->seed);
    for (int i = 0; i < total; i++) order[i] = i;
    for (int i = total - 1; i > 0; i--) { /* shuffle, as vLLM does before sampling */
        int j = uniform_int(&r, 0, i), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int k = 0; k < total && got < n; k++) {
        const cJSON *conv = cJSON_GetObjectItem(cJSON_GetArrayItem(root, order[k]), "conversations");
        const cJSON *a = cJSON_GetArrayItem(conv, 0), *b = cJSON_GetArrayItem(conv, 1);
        const cJSON *av = a ? cJSON_GetObjectItem(a, "value") : NULL, *bv = b ? cJSON_GetObjectItem(b, "value") : NULL;
        if (!cJSON_IsString(av) || !cJSON_IsString(bv)) continue;
        int pl = count_tokens(host, port, av->valuestring);
        int ol = o->sharegpt_output_len > 0 ? o->sharegpt_output_len : count_tokens(host, port, bv->valuestring);
        /* vLLM's filter: too short to time, or too long for a 2k context */
        if (pl < 4 || ol < 4 || pl > 1024 || pl + ol > 2048) continue;
        out[got].text = strdup(av->valuestring);
        out[got].prompt_len = pl;
        out[got].output_len = ol;
        got++;
    }
    free(order);
    cJSON_Delete(root);
    if (got < n)
        return PD_FAIL(err, errlen, PD_ERR_RANGE, "bench", "%s holds only %d usable conversations; %d wanted",
                       o->dataset_path, got, n);
    return PD_OK;
}

pd_status bench_dataset_build(const bench_data_opts *o, int n, const char *host, int port, bench_prompt **out,
                              char *err, size_t errlen)
{
    bench_prompt *p = calloc((size_t)(n > 0 ? n : 1), sizeof *p);
    if (!p) return PD_FAIL(err, errlen, PD_ERR_NOMEM, "bench", "out of memory");
    const char *name = o->dataset_name ? o->dataset_name : "random";
    pd_status st;
    if (!strcmp(name, "random")) {
        st = build_random(o, n, host, port, p, err, errlen);
    } else if (!strcmp(name, "sharegpt")) {
        st = build_sharegpt(o, n, host, port, p, err, errlen);
    } else if (!strcmp(name, "fixed")) {
        st = PD_OK;
        const char *txt = o->fixed_prompt ? o->fixed_prompt : "The capital of France is";
        int c = count_tokens(host, port, txt);
        for (int i = 0; i < n && st == PD_OK; i++) {
            if (!(p[i].text = strdup(txt))) st = PD_FAIL(err, errlen, PD_ERR_NOMEM, "bench", "out of memory");
            p[i].prompt_len = c > 0 ? c : 0;
            p[i].output_len = o->fixed_output_len;
        }
    } else {
        st = PD_FAIL(err, errlen, PD_ERR_INVALID, "bench", "--dataset-name: '%s' is not random, sharegpt or fixed",
                     name);
    }
    if (st != PD_OK) {
        bench_dataset_free(p, n);
        return st;
    }
    *out = p;
    return PD_OK;
}

void bench_dataset_free(bench_prompt *p, int n)
{
    for (int i = 0; p && i < n; i++) {
        free(p[i].text);
        free(p[i].ids);
    }
    free(p);
}
