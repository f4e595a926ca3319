/* Parsing and validation of a completions or chat completions body, with no HTTP in it: bytes in, either a
 * request ready to run (prompts tokenized, choices laid out, sampling object built) or an OpenAI-shaped error
 * naming the field out. api.c runs the result; tests/fuzz/fuzz_router_request.c throws hostile bytes at it. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "proto/pr_gen.h"
#include "router/rt_req.h"

/* ---- validation helpers --------------------------------------------------------------------------------- */

static int bad(rt_error *e, const char *param, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Length of the UTF-8 sequence at p (at most n bytes there): 1-4, or 0 when it is not a valid one (overlong forms,
 * surrogates and code points past U+10FFFF are not). */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0], cp, min;
    size_t k;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) k = 1, cp = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) k = 2, cp = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) k = 3, cp = c & 0x07, min = 0x10000;
    else return 0;
    if (n <= k) return 0;
    for (size_t j = 1; j <= k; j++) {
        if ((p[j] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (p[j] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return k + 1;
}

static int bad(rt_error *e, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    if (n >= (int)sizeof e->msg) { /* cut short: never inside a UTF-8 sequence of an echoed value */
        size_t len = strlen(e->msg), i = len;
        while (i > 0 && len - i < 4 && ((unsigned char)e->msg[i - 1] & 0xC0) == 0x80) i--;
        if (i > 0 && (unsigned char)e->msg[i - 1] >= 0xC0 && !utf8_seq((unsigned char *)e->msg + i - 1, len - i + 1))
            e->msg[i - 1] = '\0';
    }
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    e->status = 400;
    e->type = pd_http_error_type(400);
    return 0;
}

/* Optional number in [lo, hi]; integer when want_int. */
static int opt_num(const cJSON *o, const char *k, double lo, double hi, int want_int, double *out, rt_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsNumber(v)) return bad(e, k, "'%s' must be a number", k);
    /* the range first: casting a double outside long long's range is undefined */
    if (v->valuedouble < lo || v->valuedouble > hi)
        return want_int ? bad(e, k, "'%s' must be an integer in [%lld, %lld]", k, (long long)lo, (long long)hi) :
                          bad(e, k, "'%s' must be in [%g, %g]", k, lo, hi);
    if (want_int && v->valuedouble != (double)(long long)v->valuedouble) return bad(e, k, "'%s' must be an integer", k);
    *out = v->valuedouble;
    return 1;
}

static int opt_bool(const cJSON *o, const char *k, int *out, rt_error *e)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsBool(v)) return bad(e, k, "'%s' must be true or false", k);
    *out = cJSON_IsTrue(v);
    return 1;
}

/* ---- prompts ---------------------------------------------------------------------------------- */

static int add_prompt(rt_req *r, const int32_t *ids, int n, int *cap)
{
    if (r->n_prompts + n > *cap) {
        int nc = PD_MAX(*cap * 2, r->n_prompts + n + 64);
        int32_t *np = realloc(r->prompts, (size_t)nc * sizeof *np);
        if (!np) return 0;
        r->prompts = np;
        *cap = nc;
    }
    memcpy(r->prompts + r->n_prompts, ids, (size_t)n * sizeof *ids);
    r->n_prompts += n;
    return 1;
}

/* Parses the prompts of a completions request into r->prompts; starts/lengths into the arrays. */
int rt_completion_prompts(const rt_limits *lim, const cJSON *prompt, rt_req *r, int *starts, int *lens, int *n_prompts,
                          int max_prompts, rt_error *e)
{
    int cap = 0;
    if (!prompt) return bad(e, "prompt", "'prompt' is required");
    const cJSON *items[1] = {prompt};
    const cJSON *list = NULL;
    int n = 0;
    int ids_prompt =
        cJSON_IsArray(prompt) && cJSON_GetArraySize(prompt) > 0 && cJSON_IsNumber(cJSON_GetArrayItem(prompt, 0));
    if (cJSON_IsString(prompt) || ids_prompt) n = 1;
    else if (cJSON_IsArray(prompt)) {
        list = prompt;
        n = cJSON_GetArraySize(prompt);
    } else return bad(e, "prompt", "'prompt' must be a string, a list of strings, or token ids");
    if (n < 1) return bad(e, "prompt", "'prompt' must not be empty");
    if (n > max_prompts) return bad(e, "prompt", "at most %d prompts per request", max_prompts);
    for (int i = 0; i < n; i++) {
        const cJSON *p = list ? cJSON_GetArrayItem(list, i) : items[0];
        starts[i] = r->n_prompts;
        if (cJSON_IsString(p)) {
            int32_t *ids = NULL;
            size_t nid = 0;
            unsigned flags = txt_tokenizer_add_bos_default(lim->tok) ? TXT_ENCODE_ADD_BOS : 0;
            if (txt_tokenizer_encode(lim->tok, p->valuestring, strlen(p->valuestring), flags, &ids, &nid) != PD_OK)
                return bad(e, "prompt", "'prompt' is not valid UTF-8 text");
            int ok = nid > 0 && add_prompt(r, ids, (int)nid, &cap);
            free(ids);
            if (!ok) return bad(e, "prompt", "'prompt' is empty");
        } else if (cJSON_IsArray(p)) {
            int m = cJSON_GetArraySize(p);
            if (m < 1) return bad(e, "prompt", "a token-id prompt must not be empty");
            const cJSON *v;
            cJSON_ArrayForEach(v, p) {
                if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= lim->vocab_size ||
                    v->valuedouble != (double)(int)v->valuedouble)
                    return bad(e, "prompt", "token ids must be integers in [0, %d)", lim->vocab_size);
                int32_t id = (int32_t)v->valuedouble;
                if (!add_prompt(r, &id, 1, &cap)) return bad(e, "prompt", "out of memory");
            }
        } else {
            return bad(e, "prompt", "prompt %d must be a string or a list of token ids", i);
        }
        lens[i] = r->n_prompts - starts[i];
    }
    *n_prompts = n;
    return 1;
}

/* Checks messages and returns a copy with content normalised to strings (text parts joined). */
static cJSON *normalise_messages(const cJSON *msgs, rt_error *e)
{
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) < 1) {
        bad(e, "messages", "'messages' must be a non-empty list");
        return NULL;
    }
    cJSON *out = cJSON_CreateArray();
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role"),
                    *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
            bad(e, "messages", "messages[%d] needs a string 'role'", i);
            goto fail;
        }
        const char *rl = role->valuestring;
        if (strcmp(rl, "system") && strcmp(rl, "user") && strcmp(rl, "assistant") && strcmp(rl, "tool") &&
            strcmp(rl, "developer")) {
            bad(e, "messages", "messages[%d].role '%s' is not one of system, user, assistant, tool, developer", i, rl);
            goto fail;
        }
        cJSON *copy = cJSON_Duplicate(m, 1);
        if (!strcmp(rl, "developer")) cJSON_ReplaceItemInObject(copy, "role", cJSON_CreateString("system"));
        if (cJSON_IsArray(content)) { /* [{"type":"text","text":...}, ...] */
            size_t total = 0;
            const cJSON *part;
            cJSON_ArrayForEach(part, content) {
                const cJSON *ty = cJSON_GetObjectItem(part, "type"), *tx = cJSON_GetObjectItem(part, "text");
                if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "text") || !cJSON_IsString(tx)) {
                    cJSON_Delete(copy);
                    bad(e, "messages", "messages[%d].content: only text parts are supported", i);
                    goto fail;
                }
                total += strlen(tx->valuestring);
            }
            char *joined = malloc(total + 1);
            size_t k = 0;
            cJSON_ArrayForEach(part, content) {
                const char *tx = cJSON_GetObjectItem(part, "text")->valuestring;
                memcpy(joined + k, tx, strlen(tx));
                k += strlen(tx);
            }
            joined[k] = '\0';
            cJSON_ReplaceItemInObject(copy, "content", cJSON_CreateString(joined));
            free(joined);
        } else if (!cJSON_IsString(content) && !(cJSON_IsNull(content) && !strcmp(rl, "assistant"))) {
            cJSON_Delete(copy);
            bad(e, "messages", "messages[%d].content must be a string", i);
            goto fail;
        }
        cJSON_AddItemToArray(out, copy);
        i++;
    }
    return out;
fail:
    cJSON_Delete(out);
    return NULL;
}

/* Renders the chat template and tokenizes; sets r->think when the prompt opens a reasoning block. */
int rt_chat_prompt(const rt_limits *lim, const cJSON *root, rt_req *r, int *len, rt_error *e)
{
    if (!lim->tmpl) return bad(e, "messages", "this model has no chat template; use /v1/completions");
    cJSON *msgs = normalise_messages(cJSON_GetObjectItemCaseSensitive(root, "messages"), e);
    if (!msgs) return 0;
    int agp = 1;
    if (!opt_bool(root, "add_generation_prompt", &agp, e)) {
        cJSON_Delete(msgs);
        return 0;
    }
    cJSON *vars = cJSON_CreateObject();
    const cJSON *kw = cJSON_GetObjectItemCaseSensitive(root, "chat_template_kwargs");
    if (cJSON_IsObject(kw)) {
        const cJSON *v;
        cJSON_ArrayForEach(v, kw) cJSON_AddItemToObject(vars, v->string, cJSON_Duplicate(v, 1));
    }
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    if (cJSON_IsArray(tools)) cJSON_AddItemToObject(vars, "tools", cJSON_Duplicate(tools, 1));
    char *text = NULL, err[512] = "";
    size_t tl = 0;
    pd_status st = txt_chat_template_render(lim->tmpl, msgs, agp, vars, &text, &tl, err, sizeof err);
    cJSON_Delete(msgs);
    cJSON_Delete(vars);
    if (st != PD_OK) return bad(e, "messages", "chat template: %s", err[0] ? err : pd_status_str(st));
    int32_t *ids = NULL;
    size_t n = 0;
    st = txt_tokenizer_encode(lim->tok, text, tl, 0, &ids, &n); /* the template carries BOS itself */
    size_t k = tl;
    while (k > 0 && (text[k - 1] == '\n' || text[k - 1] == ' ')) k--;
    r->think = k >= 7 && !strncmp(text + k - 7, "<think>", 7);
    free(text);
    if (st != PD_OK) return bad(e, "messages", "messages are not valid UTF-8 text");
    int cap = 0, ok = add_prompt(r, ids, (int)n, &cap);
    free(ids);
    if (!ok) return bad(e, "messages", "out of memory");
    *len = (int)n;
    return 1;
}

/* Out of memory while parsing: 503 (the request may succeed later), never an abort. Returns 0. */
static int nomem(rt_error *e, const char *param)
{
    bad(e, param, "out of memory");
    e->status = 503;
    e->type = pd_http_error_type(503);
    return 0;
}

static int parse_stop(const rt_limits *lim, const cJSON *root, rt_req *r, rt_error *e)
{
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (stop && !cJSON_IsNull(stop)) {
        if (cJSON_IsString(stop)) { /* one string: the limits of a list of one */
            if (stop->valuestring[0] && lim->max_stop < 1)
                return bad(e, "stop", "at most %d stop strings", lim->max_stop);
            if (strlen(stop->valuestring) > 200) return bad(e, "stop", "stop strings are at most 200 bytes");
            if (stop->valuestring[0] && !(r->stops[r->n_stops++] = strdup(stop->valuestring))) return nomem(e, "stop");
        } else if (cJSON_IsArray(stop)) {
            if (cJSON_GetArraySize(stop) > lim->max_stop)
                return bad(e, "stop", "at most %d stop strings", lim->max_stop);
            const cJSON *v;
            cJSON_ArrayForEach(v, stop) {
                if (!cJSON_IsString(v)) return bad(e, "stop", "'stop' must hold strings");
                if (!v->valuestring[0]) continue;
                if (strlen(v->valuestring) > 200) return bad(e, "stop", "stop strings are at most 200 bytes");
                if (!(r->stops[r->n_stops++] = strdup(v->valuestring))) return nomem(e, "stop");
            }
        } else return bad(e, "stop", "'stop' must be a string or a list of strings");
    }
    for (int i = 0; i < r->n_stops; i++) r->max_stop_len = PD_MAX(r->max_stop_len, strlen(r->stops[i]));
    const cJSON *sti = cJSON_GetObjectItemCaseSensitive(root, "stop_token_ids");
    if (sti && !cJSON_IsNull(sti)) {
        if (!cJSON_IsArray(sti) || cJSON_GetArraySize(sti) > PR_MAX_STOP_IDS)
            return bad(e, "stop_token_ids", "'stop_token_ids' must be a list of at most %d token ids", PR_MAX_STOP_IDS);
        const cJSON *v;
        cJSON_ArrayForEach(v, sti) {
            if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble >= lim->vocab_size ||
                v->valuedouble != (double)(int32_t)v->valuedouble)
                return bad(e, "stop_token_ids", "'stop_token_ids' holds a value that is not a token id");
            r->stop_ids[r->n_stop_ids++] = (int32_t)v->valuedouble;
        }
    }
    return 1;
}

/* logit_bias (OpenAI's form): null, or an object mapping token ids (decimal strings) to biases in [-100, 100] added to
 * their logits before sampling; at most PR_MAX_LOGIT_BIAS entries. *out: the entries with normalised keys, for the
 * pools (NULL when there are none). */
static int parse_logit_bias(const rt_limits *lim, const cJSON *root, cJSON **out, rt_error *e)
{
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(root, "logit_bias");
    *out = NULL;
    if (!lb || cJSON_IsNull(lb)) return 1;
    if (!cJSON_IsObject(lb)) return bad(e, "logit_bias", "'logit_bias' must be an object of token ids to biases");
    if (cJSON_GetArraySize(lb) > PR_MAX_LOGIT_BIAS)
        return bad(e, "logit_bias", "'logit_bias' may hold at most %d token ids", PR_MAX_LOGIT_BIAS);
    if (cJSON_GetArraySize(lb) == 0) return 1;
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        bad(e, "logit_bias", "out of memory");
        e->status = 503;
        e->type = pd_http_error_type(503);
        return 0;
    }
    const cJSON *v;
    cJSON_ArrayForEach(v, lb) {
        const char *k = v->string;
        char *end = NULL;
        errno = 0;
        const long id = strtol(k, &end, 10);
        if (!(k[0] >= '0' && k[0] <= '9') || *end || errno || id < 0 || id >= lim->vocab_size ||
            (k[0] == '0' && k[1])) {
            cJSON_Delete(o);
            /* the key whole: bad() cuts an over-long message only where UTF-8 allows */
            return bad(e, "logit_bias", "'logit_bias' key '%s' is not a token id of this model (vocabulary %d)", k,
                       lim->vocab_size);
        }
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= -PR_MAX_BIAS && v->valuedouble <= PR_MAX_BIAS)) {
            cJSON_Delete(o);
            return bad(e, "logit_bias", "'logit_bias' values must be numbers in [%g, %g]", -PR_MAX_BIAS, PR_MAX_BIAS);
        }
        char key[16];
        snprintf(key, sizeof key, "%ld", id);
        if (cJSON_GetObjectItemCaseSensitive(o, key)) {
            cJSON_Delete(o);
            return bad(e, "logit_bias", "'logit_bias' names token %ld twice", id);
        }
        cJSON_AddNumberToObject(o, key, v->valuedouble);
    }
    *out = o;
    return 1;
}

/* ---- the request ---------------------------------------------------------------------------------------- */

/* One pass over the raw body before cJSON sees it. Nesting depth: cJSON recurses up to its own limit of 1000 and
 * the chat template and cJSON_Duplicate recurse over what it builds. UTF-8 (JSON text is UTF-8, RFC 8259): an
 * invalid byte would otherwise reach the tokenizer or the template, be kept (stop strings), or be echoed into an
 * error reply that is then not UTF-8 itself. NUL in a string, raw or \u0000: cJSON's C strings would cut the text
 * there without a word. The error names the top-level field at fault; malformed JSON is left to cJSON. */
static int scan_body(const unsigned char *p, size_t n, int max_depth, rt_error *e)
{
    int depth = 0, in_str = 0, key_next = 0, in_key = 0;
    char key[48] = "", cur[48] = ""; /* the last top-level key, the one being read */
    size_t kl = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned c = p[i];
        const char *field = in_key ? NULL : key[0] ? key : NULL;
        if (in_str) {
            size_t len = 1;
            if (c == '"') {
                in_str = 0;
                if (in_key) memcpy(key, cur, kl + 1);
                in_key = 0;
                continue;
            }
            if (c == 0 || (c == '\\' && i + 5 < n && !memcmp(p + i + 1, "u0000", 5))) {
                if (field) return bad(e, field, "'%s' must not contain NUL characters (\\u0000)", field);
                return bad(e, NULL, "request body strings must not contain NUL characters (\\u0000)");
            }
            /* the escaped character is not a delimiter; a non-ASCII byte after a backslash is no JSON escape and is
             * checked as UTF-8 on its own (it must not reach a key that an error message echoes) */
            if (c == '\\' && i + 1 < n && p[i + 1] < 0x80) len = 2;
            else if (c >= 0x80 && !(len = utf8_seq(p + i, n - i))) {
                if (field) return bad(e, field, "'%s' is not valid UTF-8 text", field);
                return bad(e, NULL, "request body is not valid UTF-8");
            }
            if (in_key && kl + len < sizeof cur) {
                memcpy(cur + kl, p + i, len);
                kl += len;
                cur[kl] = '\0';
            }
            i += len - 1;
            continue;
        }
        switch (c) {
        case '"':
            in_str = 1;
            if (depth == 1 && key_next) {
                in_key = 1;
                key_next = 0;
                kl = 0;
                cur[0] = '\0';
            }
            break;
        case '{':
        case '[':
            if (++depth > max_depth) {
                if (field) return bad(e, field, "'%s' is nested deeper than %d levels", field, max_depth);
                return bad(e, NULL, "request body is nested deeper than %d levels", max_depth);
            }
            key_next = depth == 1 && c == '{';
            break;
        case '}':
        case ']':
            if (depth > 0) depth--;
            break;
        case ',': key_next = depth == 1; break;
        default:
            if (c >= 0x80 && !utf8_seq(p + i, n - i)) {
                if (field) return bad(e, field, "'%s' is not valid UTF-8 text", field);
                return bad(e, NULL, "request body is not valid UTF-8");
            }
            break;
        }
    }
    return 1;
}

/* 503 for what the server lacks now (memory, a decode instance), not the request's fault. Returns 0. */
static int unavailable(rt_error *e, const char *msg)
{
    e->status = 503;
    e->type = pd_http_error_type(503);
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    return 0;
}

/* The body's bytes -> *root, a JSON object (the whole of len: a NUL after the JSON does not end it early). *text
 * keeps the NUL-terminated copy cJSON parsed; the caller frees both, also on failure. */
static int parse_body(const char *body, size_t len, const rt_limits *lim, char **text, cJSON **root, rt_error *e)
{
    if (len > lim->max_body) {
        bad(e, NULL, "request body larger than %zu bytes", lim->max_body);
        e->status = 413;
        e->type = pd_http_error_type(413);
        return 0;
    }
    if (!(*text = malloc(len + 1))) return unavailable(e, "out of memory"); /* cJSON wants a NUL-terminated string */
    if (!scan_body((const unsigned char *)body, len, lim->max_depth, e)) return 0;
    memcpy(*text, body, len);
    (*text)[len] = '\0';
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(*text, len, &end, 0);
    while (o && end < *text + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) end++;
    if (o && end != *text + len) {
        cJSON_Delete(o);
        o = NULL;
    }
    if (!o) return bad(e, NULL, "request body is not valid JSON");
    *root = o;
    if (!cJSON_IsObject(o)) return bad(e, NULL, "request body must be a JSON object");
    return 1;
}

static int check_model(const rt_limits *lim, const cJSON *root, rt_error *e)
{
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (model && !cJSON_IsNull(model) && !cJSON_IsString(model)) return bad(e, "model", "'model' must be a string");
    if (cJSON_IsString(model) && strcmp(model->valuestring, lim->served_model_name) != 0) {
        /* 404, as OpenAI and vLLM answer a model they do not serve */
        bad(e, "model", "the model '%s' does not exist; this server serves '%s'", model->valuestring,
            lim->served_model_name);
        e->status = 404;
        e->type = pd_http_error_type(404);
        return 0;
    }
    return 1;
}

/* Unsupported options are refused rather than silently ignored; logit_bias is checked in their order. */
static int parse_options(const rt_limits *lim, const cJSON *root, cJSON **bias, rt_error *e)
{
    int echo = 0;
    if (!opt_bool(root, "echo", &echo, e)) return 0;
    if (echo) return bad(e, "echo", "'echo' is not supported");
    const cJSON *suffix = cJSON_GetObjectItemCaseSensitive(root, "suffix");
    if (cJSON_IsString(suffix) && suffix->valuestring[0]) return bad(e, "suffix", "'suffix' is not supported");
    if (!parse_logit_bias(lim, root, bias, e)) return 0;
    const cJSON *rf = cJSON_GetObjectItemCaseSensitive(root, "response_format");
    const cJSON *rft = rf ? cJSON_GetObjectItem(rf, "type") : NULL;
    if (rf && !cJSON_IsNull(rf) && !(cJSON_IsString(rft) && !strcmp(rft->valuestring, "text")))
        return bad(e, "response_format", "only response_format {\"type\": \"text\"} is supported");
    return 1;
}

/* The sampling parameters and limits of a body, before they are checked against the prompts. */
typedef struct {
    double temperature, top_p, top_k, min_p, pres, freq, rep, seed, n, max_tokens, min_tokens;
    int ignore_eos, stream;
    const char *mt_name; /* the field max_tokens came from (chat: max_completion_tokens when given) */
} gen_params;

static int parse_sampling(const rt_limits *lim, const cJSON *root, int chat, gen_params *g, rt_error *e)
{
    *g = (gen_params){.temperature = 1.0,
                      .top_p = 1.0,
                      .rep = 1,
                      .seed = -1,
                      .n = 1,
                      .max_tokens = chat ? -1 : 16,
                      .mt_name = "max_tokens"};
    const rt_sampling_defaults *d = lim->defaults;
    if (d) {
        if (!isnan(d->temperature)) g->temperature = d->temperature;
        if (!isnan(d->top_p)) g->top_p = d->top_p;
        if (!isnan(d->top_k)) g->top_k = d->top_k;
        if (!isnan(d->min_p)) g->min_p = d->min_p;
        if (!isnan(d->repetition_penalty)) g->rep = d->repetition_penalty;
    }
    const cJSON *mct = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens");
    if (chat && mct && !cJSON_IsNull(mct)) g->mt_name = "max_completion_tokens";
    if (!opt_num(root, g->mt_name, 1, PR_MAX_TOKENS, 1, &g->max_tokens, e) ||
        !opt_num(root, "temperature", 0, PR_MAX_TEMPERATURE, 0, &g->temperature, e) ||
        !opt_num(root, "top_p", 0, 1, 0, &g->top_p, e) || !opt_num(root, "top_k", -1, PR_MAX_TOP_K, 1, &g->top_k, e) ||
        !opt_num(root, "min_p", 0, 1, 0, &g->min_p, e) ||
        !opt_num(root, "presence_penalty", -PR_MAX_PENALTY, PR_MAX_PENALTY, 0, &g->pres, e) ||
        !opt_num(root, "frequency_penalty", -PR_MAX_PENALTY, PR_MAX_PENALTY, 0, &g->freq, e) ||
        !opt_num(root, "repetition_penalty", PR_MIN_REPETITION, PR_MAX_REPETITION, 0, &g->rep, e) ||
        !opt_num(root, "seed", -PR_MAX_SEED, PR_MAX_SEED, 1, &g->seed, e) ||
        !opt_num(root, "n", 1, lim->max_n, 1, &g->n, e) ||
        !opt_num(root, "min_tokens", 0, PR_MAX_TOKENS, 1, &g->min_tokens, e) ||
        !opt_bool(root, "ignore_eos", &g->ignore_eos, e) || !opt_bool(root, "stream", &g->stream, e))
        return 0;
    if (g->top_p <= 0) return bad(e, "top_p", "'top_p' must be in (0, 1]");
    const cJSON *bo = cJSON_GetObjectItemCaseSensitive(root, "best_of");
    if (cJSON_IsNumber(bo) && bo->valuedouble != g->n)
        return bad(e, "best_of", "'best_of' other than n is not supported");
    return 1;
}

/* logprobs (chat: a bool with top_logprobs; completions: a count) and stream_options. */
static int parse_output(const cJSON *root, int chat, rt_req *r, rt_error *e)
{
    if (chat) {
        int lp = 0;
        double top = 0;
        if (!opt_bool(root, "logprobs", &lp, e) || !opt_num(root, "top_logprobs", 0, PR_MAX_TOP_LOGPROBS, 1, &top, e))
            return 0;
        if (top > 0 && !lp) return bad(e, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
        r->chat_logprobs = lp;
        r->logprobs = lp ? (int)top : -1;
    } else {
        double lp = -1;
        if (!opt_num(root, "logprobs", 0, PR_MAX_TOP_LOGPROBS, 1, &lp, e)) return 0;
        r->logprobs = (int)lp;
    }
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (so && !cJSON_IsNull(so)) {
        if (!cJSON_IsObject(so)) return bad(e, "stream_options", "'stream_options' must be an object");
        if (!opt_bool(so, "include_usage", &r->include_usage, e)) return 0;
    }
    return 1;
}

/* max_tokens (chat without one: what fits) against the server's limit and the context length mml. */
static int check_lengths(const rt_limits *lim, int mml, int max_prompt, gen_params *g, rt_error *e)
{
    if (g->max_tokens < 0) { /* chat without a limit: what fits, up to the server's limit */
        g->max_tokens = mml - max_prompt;
        if (lim->max_tokens_limit > 0 && g->max_tokens > lim->max_tokens_limit) g->max_tokens = lim->max_tokens_limit;
    }
    if (lim->max_tokens_limit > 0 && g->max_tokens > lim->max_tokens_limit)
        return bad(e, g->mt_name, "'%s' = %.0f exceeds this server's limit %d", g->mt_name, g->max_tokens,
                   lim->max_tokens_limit);
    if (max_prompt >= mml || max_prompt + g->max_tokens > mml)
        return bad(e, max_prompt >= mml ? "prompt" : g->mt_name,
                   "this model's maximum context length is %d tokens; the prompt has %d tokens and %.0f more were "
                   "requested",
                   mml, max_prompt, g->max_tokens < 1 ? 1 : g->max_tokens);
    if (g->min_tokens > g->max_tokens) return bad(e, "min_tokens", "'min_tokens' exceeds the maximum number of tokens");
    return 1;
}

/* The internal sampling object (it takes *bias); the choices, prompt x n, each with its seed. */
static int build_choices(const cJSON *root, const gen_params *g, const int *starts, const int *lens, int n_prompts,
                         cJSON **bias, rt_req *r, rt_error *e)
{
    r->max_tokens = (int)g->max_tokens;
    r->min_tokens = (int)g->min_tokens;
    r->ignore_eos = g->ignore_eos;
    r->stream = g->stream;
    if (!(r->sampling = cJSON_CreateObject())) return unavailable(e, "out of memory");
    cJSON_AddNumberToObject(r->sampling, "temperature", g->temperature);
    cJSON_AddNumberToObject(r->sampling, "top_p", g->top_p);
    cJSON_AddNumberToObject(r->sampling, "top_k", g->top_k < 0 ? 0 : g->top_k);
    cJSON_AddNumberToObject(r->sampling, "min_p", g->min_p);
    cJSON_AddNumberToObject(r->sampling, "presence_penalty", g->pres);
    cJSON_AddNumberToObject(r->sampling, "frequency_penalty", g->freq);
    cJSON_AddNumberToObject(r->sampling, "repetition_penalty", g->rep);
    if (*bias) cJSON_AddItemToObject(r->sampling, "logit_bias", *bias);
    *bias = NULL;
    int n = (int)g->n;
    r->n_ch = n_prompts * n;
    if (!(r->ch = calloc((size_t)r->n_ch, sizeof *r->ch))) return unavailable(e, "out of memory");
    for (int i = 0; i < n_prompts; i++) r->prompt_tokens += lens[i];
    int seeded = g->seed != -1 || cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(root, "seed"));
    for (int i = 0; i < r->n_ch; i++) {
        rt_choice *c = &r->ch[i];
        c->req = r;
        c->index = i;
        c->prompt = r->prompts + starts[i / n];
        c->n_prompt = lens[i / n];
        if (seeded) {
            c->has_seed = 1;
            c->seed = (uint64_t)(int64_t)g->seed + (uint64_t)(i % n); /* n samples of one prompt differ */
        }
    }
    return 1;
}

pd_status rt_request_parse(const char *body, size_t len, int chat, const rt_limits *lim, rt_req **out, rt_error *e)
{
    memset(e, 0, sizeof *e);
    const unsigned long mark = rt_json_failures(); /* a cJSON allocation that failed: out of memory (json.c) */
    int starts[RT_MAX_PROMPTS], lens[RT_MAX_PROMPTS], n_prompts = 0;
    char *text = NULL;
    rt_req *r = NULL;
    cJSON *root = NULL, *bias = NULL; /* bias: the normalised logit_bias until r->sampling owns it */
    gen_params g;
    if (len > lim->max_body) { /* before anything is allocated for it */
        parse_body(body, len, lim, &text, &root, e);
        goto refuse;
    }
    if (!(r = calloc(1, sizeof *r))) {
        unavailable(e, "out of memory");
        goto refuse;
    }
    r->chat = chat;
    r->logprobs = -1;
    if (!parse_body(body, len, lim, &text, &root, e) || !check_model(lim, root, e)) goto refuse;
    if (chat) {
        if (!rt_chat_prompt(lim, root, r, &lens[0], e)) goto refuse;
        starts[0] = 0;
        n_prompts = 1;
    } else if (!rt_completion_prompts(lim, cJSON_GetObjectItemCaseSensitive(root, "prompt"), r, starts, lens,
                                      &n_prompts, RT_MAX_PROMPTS, e)) {
        goto refuse;
    }
    if (!parse_options(lim, root, &bias, e)) goto refuse;
    int mml = lim->max_model_len;
    if (mml <= 0) {
        unavailable(e, "no healthy decode instance");
        goto refuse;
    }
    int max_prompt = 0;
    for (int i = 0; i < n_prompts; i++) max_prompt = PD_MAX(max_prompt, lens[i]);
    if (!parse_sampling(lim, root, chat, &g, e) || !parse_output(root, chat, r, e) || !parse_stop(lim, root, r, e) ||
        !check_lengths(lim, mml, max_prompt, &g, e) || !build_choices(root, &g, starts, lens, n_prompts, &bias, r, e))
        goto refuse;
    if (rt_json_failures() != mark) goto refuse; /* the sampling object (or another part) is not whole */
    cJSON_Delete(root);
    free(text);
    *out = r;
    return PD_OK;
refuse:
    if (rt_json_failures() != mark) unavailable(e, "out of memory"); /* what looked like bad input may be this */
    if (!e->status) { /* every refusal names its status; a missing one is a bad request */
        e->status = 400;
        e->type = pd_http_error_type(400);
    }
    cJSON_Delete(root);
    cJSON_Delete(bias);
    free(text);
    rt_request_free(r);
    return PD_ERR_INVALID;
}

void rt_request_free(rt_req *r)
{
    if (!r) return;
    free(r->ch);
    free(r->prompts);
    for (int i = 0; i < r->n_stops; i++) free(r->stops[i]);
    cJSON_Delete(r->sampling);
    free(r);
}

/* ---- default sampling from generation_config.json (--generation-config, --override-generation-config) ---- */

static const struct {
    const char *key;
    size_t off;
    double lo, hi;
} DEFAULT_FIELDS[] = {
    {"temperature", offsetof(rt_sampling_defaults, temperature), 0, PR_MAX_TEMPERATURE},
    {"top_p", offsetof(rt_sampling_defaults, top_p), 1e-9, 1},
    {"top_k", offsetof(rt_sampling_defaults, top_k), -1, PR_MAX_TOP_K},
    {"min_p", offsetof(rt_sampling_defaults, min_p), 0, 1},
    {"repetition_penalty", offsetof(rt_sampling_defaults, repetition_penalty), PR_MIN_REPETITION, PR_MAX_REPETITION},
};

/* The five fields of object o into d; unknown keys refused when strict (an override), skipped otherwise (a
 * generation_config.json carries token ids and more). */
static pd_status defaults_from(const cJSON *o, int strict, const char *what, rt_sampling_defaults *d, char *err,
                               size_t errlen)
{
    if (!cJSON_IsObject(o)) {
        snprintf(err, errlen, "%s: not a JSON object", what);
        return PD_ERR_INVALID;
    }
    for (const cJSON *it = o->child; it; it = it->next) {
        size_t f = 0;
        while (f < PD_ARRAY_LEN(DEFAULT_FIELDS) && strcmp(DEFAULT_FIELDS[f].key, it->string)) f++;
        if (f == PD_ARRAY_LEN(DEFAULT_FIELDS)) {
            if (!strict) continue;
            snprintf(err, errlen, "%s: '%s' is not one of temperature, top_p, top_k, min_p, repetition_penalty", what,
                     it->string);
            return PD_ERR_INVALID;
        }
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < DEFAULT_FIELDS[f].lo ||
            it->valuedouble > DEFAULT_FIELDS[f].hi) {
            snprintf(err, errlen, "%s: '%s' must be a number in [%g, %g]", what, it->string, DEFAULT_FIELDS[f].lo,
                     DEFAULT_FIELDS[f].hi);
            return PD_ERR_INVALID;
        }
        *(double *)(void *)((char *)d + DEFAULT_FIELDS[f].off) = it->valuedouble;
    }
    return PD_OK;
}

pd_status rt_sampling_defaults_load(const char *model_dir, const char *source, const char *override,
                                    rt_sampling_defaults *d, char *err, size_t errlen)
{
    *d = (rt_sampling_defaults){NAN, NAN, NAN, NAN, NAN};
    if (!source) source = "auto";
    const char *dir = !strcmp(source, "auto") ? model_dir : !strcmp(source, "vllm") ? NULL : source;
    pd_status st = PD_OK;
    if (dir) {
        char path[4096];
        snprintf(path, sizeof path, "%s/generation_config.json", dir);
        char *text = NULL;
        size_t len = 0;
        const pd_status rd = pd_file_read(path, &text, &len);
        if (rd == PD_OK) {
            cJSON *o = cJSON_ParseWithLength(text, len);
            st = defaults_from(o, 0, path, d, err, errlen);
            cJSON_Delete(o);
            free(text);
        } else if (rd != PD_ERR_NOT_FOUND || strcmp(source, "auto")) { /* auto: a model without one is fine */
            snprintf(err, errlen, "--generation-config %s: %s: %s", source, path, pd_status_str(rd));
            return PD_ERR_IO;
        }
    }
    if (st == PD_OK && override) {
        cJSON *o = cJSON_Parse(override);
        st = defaults_from(o, 1, "--override-generation-config", d, err, errlen);
        cJSON_Delete(o);
    }
    return st;
}

void rt_sampling_defaults_str(const rt_sampling_defaults *d, char *buf, size_t n)
{
    size_t at = 0;
    buf[0] = '\0';
    for (size_t f = 0; f < PD_ARRAY_LEN(DEFAULT_FIELDS); f++) {
        const double v = *(const double *)(const void *)((const char *)d + DEFAULT_FIELDS[f].off);
        if (isnan(v) || at >= n) continue;
        at += (size_t)snprintf(buf + at, n - at, "%s%s=%g", at ? " " : "", DEFAULT_FIELDS[f].key, v);
    }
}
