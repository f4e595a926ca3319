/* API keys on the public API: --api-key KEY[,KEY...], --api-key-file FILE (one key a line; blank lines and lines
 * starting with # skipped) or, when neither is given, the environment variable PDSERVE_API_KEY (comma-separated).
 * A request to /v1/..., /tokenize or /detokenize must then carry "Authorization: Bearer <key>" with one of them, as
 * OpenAI's API and vLLM's --api-key ask; otherwise it gets 401 with OpenAI's error body (code invalid_api_key) and
 * WWW-Authenticate: Bearer. /health, /metrics and the admin routes are not covered. Keys are never logged; refusals
 * are logged at most once per 10 s, with the count since the last line. */
#include <ctype.h>
#include <errno.h>
#include <event2/keyvalq_struct.h>
#include <string.h>

#include "router/rt_req.h"

struct rt_auth {
    char **keys;
    int n;
    unsigned long refused, unlogged;
    double logged_at;
};

static pd_status add_key(rt_auth *a, const char *s, size_t len)
{
    while (len && isspace((unsigned char)*s)) s++, len--;
    while (len && isspace((unsigned char)s[len - 1])) len--;
    if (!len) return PD_OK;
    char **k = realloc(a->keys, (size_t)(a->n + 1) * sizeof *k);
    if (!k) return PD_ERR_NOMEM;
    a->keys = k;
    if (!(a->keys[a->n] = strndup(s, len))) return PD_ERR_NOMEM;
    a->n++;
    return PD_OK;
}

static pd_status add_list(rt_auth *a, const char *list)
{
    pd_status st = PD_OK;
    for (const char *p = list; st == PD_OK && *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        st = add_key(a, p, n);
        p += n + (e != NULL);
    }
    return st;
}

void rt_auth_destroy(rt_auth *a)
{
    if (!a) return;
    for (int i = 0; i < a->n; i++) {
        memset(a->keys[i], 0, strlen(a->keys[i]));
        free(a->keys[i]);
    }
    free(a->keys);
    free(a);
}

pd_status rt_auth_create(const rt_opts *o, rt_auth **out, char *err, size_t errlen)
{
    rt_auth *a = calloc(1, sizeof *a);
    if (!a) return PD_ERR_NOMEM;
    pd_status st = PD_OK;
    const char *env = getenv("PDSERVE_API_KEY");
    if (o->api_key) st = add_list(a, o->api_key);
    if (st == PD_OK && o->api_key_file) {
        FILE *f = fopen(o->api_key_file, "r");
        if (!f) {
            snprintf(err, errlen, "--api-key-file %s: %s", o->api_key_file, strerror(errno));
            rt_auth_destroy(a);
            return PD_ERR_IO;
        }
        char line[4096];
        while (st == PD_OK && fgets(line, sizeof line, f))
            if (line[0] != '#') st = add_key(a, line, strlen(line));
        fclose(f);
        if (st == PD_OK && a->n == 0) {
            snprintf(err, errlen, "--api-key-file %s holds no key", o->api_key_file);
            st = PD_ERR_INVALID;
        }
    }
    if (st == PD_OK && !o->api_key && !o->api_key_file && env && *env) st = add_list(a, env);
    if (st == PD_OK && o->api_key && a->n == 0) {
        snprintf(err, errlen, "--api-key is empty");
        st = PD_ERR_INVALID;
    }
    if (st != PD_OK) {
        if (st == PD_ERR_NOMEM) snprintf(err, errlen, "out of memory");
        rt_auth_destroy(a);
        return st;
    }
    *out = a;
    return PD_OK;
}

int rt_auth_keys(const rt_auth *a) { return a ? a->n : 0; }

/* Compares in time that depends on the lengths only, not on where the bytes differ. */
static int same(const char *a, size_t an, const char *b)
{
    const size_t bn = strlen(b);
    unsigned char d = an != bn;
    for (size_t i = 0; i < an; i++) d |= (unsigned char)(a[i] ^ b[i % (bn ? bn : 1)]);
    return d == 0;
}

int rt_auth_check(rt_auth *a, struct evhttp_request *req)
{
    if (!a || a->n == 0) return 1;
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    const char *tok = NULL;
    if (h && !strncasecmp(h, "Bearer ", 7)) {
        tok = h + 7;
        while (*tok == ' ') tok++;
    }
    if (tok) {
        size_t n = strlen(tok);
        while (n && tok[n - 1] == ' ') n--;
        int ok = 0;
        for (int i = 0; i < a->n; i++) ok |= same(tok, n, a->keys[i]);
        if (ok) return 1;
    }
    a->refused++;
    a->unlogged++;
    const double now = pd_time_now();
    if (a->logged_at == 0 || now - a->logged_at >= 10) {
        char peer[64] = "?";
        const char *addr = NULL;
        ev_uint16_t port = 0;
        evhttp_connection_get_peer(evhttp_request_get_connection(req), (char **)&addr, &port);
        if (addr) snprintf(peer, sizeof peer, "%s", addr);
        pd_warn("router: refused %lu request%s without a valid API key (latest from %s: %s)", a->unlogged,
                a->unlogged == 1 ? "" : "s", peer, tok ? "wrong key" : h ? "not a Bearer credential" : "no key");
        a->logged_at = now;
        a->unlogged = 0;
    }
    cJSON *o = pd_http_error_json(401, "invalid_request_error", NULL,
                                  tok ? "Incorrect API key provided."
                                      : "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.");
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(o, "error"), "code", cJSON_CreateString("invalid_api_key"));
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
    pd_http_reply_json(req, 401, o);
    cJSON_Delete(o);
    return 0;
}
