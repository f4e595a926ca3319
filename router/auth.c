/* Who may call the router. API keys on the public API: --api-key KEY[,KEY...], --api-key-file FILE (one key a line; blank lines and lines
 * starting with # skipped) or, when neither is given, the environment variable PDSERVE_API_KEY (comma-separated).
 * A request to /v1/..., /tokenize or /detokenize must then carry "Authorization: Bearer <key>" with one of them, as
 * OpenAI's API and vLLM's --api-key ask; otherwise it gets 401 with OpenAI's error body (code invalid_api_key) and
 * WWW-Authenticate: Bearer. /health, /metrics and the admin routes are not covered. Keys are never logged; refusals
 * are logged at most once per 10 s, with the count since the last line.
 * The admin routes (/admin/...: registration, drain, removal, the instance list, the dashboard's stats): with
 * --admin-key (or PDSERVE_ADMIN_KEY) they need it as a Bearer token; without one they answer only this host's
 * (loopback) peers. Registrations take the cluster signature instead when the router has a cluster secret. */
#include <ctype.h>
#include <errno.h>
#include <event2/keyvalq_struct.h>
#include <string.h>

#include "common/pd_auth.h"
#include "router/rt_req.h"

typedef struct {
    char **keys;
    int n;
} keyset;

struct rt_auth {
    keyset api, admin;
    pd_log_limit refusals[2]; /* [0] API, [1] admin */
};

static pd_status add_key(keyset *a, const char *s, size_t len)
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

static pd_status add_list(keyset *a, const char *list)
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

static void keys_free(keyset *k)
{
    for (int i = 0; i < k->n; i++) {
        memset(k->keys[i], 0, strlen(k->keys[i]));
        free(k->keys[i]);
    }
    free(k->keys);
}

void rt_auth_destroy(rt_auth *a)
{
    if (!a) return;
    keys_free(&a->api);
    keys_free(&a->admin);
    free(a);
}

pd_status rt_auth_create(const rt_opts *o, rt_auth **out, char *err, size_t errlen)
{
    rt_auth *a = calloc(1, sizeof *a);
    if (!a) return PD_ERR_NOMEM;
    pd_status st = PD_OK;
    const char *env = getenv("PDSERVE_API_KEY"), *admin_env = getenv("PDSERVE_ADMIN_KEY");
    if (o->api_key) st = add_list(&a->api, o->api_key);
    if (st == PD_OK && o->api_key_file) {
        FILE *f = fopen(o->api_key_file, "r");
        if (!f) {
            snprintf(err, errlen, "--api-key-file %s: %s", o->api_key_file, strerror(errno));
            rt_auth_destroy(a);
            return PD_ERR_IO;
        }
        char line[4096];
        while (st == PD_OK && fgets(line, sizeof line, f))
            if (line[0] != '#') st = add_key(&a->api, line, strlen(line));
        fclose(f);
        if (st == PD_OK && a->api.n == 0) {
            snprintf(err, errlen, "--api-key-file %s holds no key", o->api_key_file);
            st = PD_ERR_INVALID;
        }
    }
    if (st == PD_OK && !o->api_key && !o->api_key_file && env && *env) st = add_list(&a->api, env);
    if (st == PD_OK && o->api_key && a->api.n == 0) {
        snprintf(err, errlen, "--api-key is empty");
        st = PD_ERR_INVALID;
    }
    if (st == PD_OK) st = add_list(&a->admin, o->admin_key ? o->admin_key : admin_env ? admin_env : "");
    if (st == PD_OK && o->admin_key && a->admin.n == 0) {
        snprintf(err, errlen, "--admin-key is empty");
        st = PD_ERR_INVALID;
    }
    for (int i = 0; st == PD_OK && i < a->admin.n; i++)
        for (int j = 0; j < a->api.n; j++)
            if (!strcmp(a->admin.keys[i], a->api.keys[j])) {
                snprintf(err, errlen, "an admin key must not also be an API key");
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

int rt_auth_keys(const rt_auth *a) { return a ? a->api.n : 0; }

/* Compares in time that depends on the lengths only, not on where the bytes differ. */
static int same(const char *a, size_t an, const char *b)
{
    const size_t bn = strlen(b);
    unsigned char d = an != bn;
    for (size_t i = 0; i < an; i++) d |= (unsigned char)(a[i] ^ b[i % (bn ? bn : 1)]);
    return d == 0;
}

/* The request's Bearer token is one of k's keys. *tok: the token (NULL: no Bearer credential), *hdr: the header. */
static int bearer_ok(const keyset *k, struct evhttp_request *req, const char **tok, const char **hdr)
{
    const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
    *hdr = h;
    *tok = NULL;
    if (!h || strncasecmp(h, "Bearer ", 7)) return 0;
    const char *t = h + 7;
    while (*t == ' ') t++;
    *tok = t;
    size_t n = strlen(t);
    while (n && t[n - 1] == ' ') n--;
    int ok = 0;
    for (int i = 0; i < k->n; i++) ok |= same(t, n, k->keys[i]);
    return ok;
}

static const char *peer_of(struct evhttp_request *req)
{
    char *addr = NULL;
    ev_uint16_t port = 0;
    evhttp_connection_get_peer(evhttp_request_get_connection(req), &addr, &port);
    return addr ? addr : "?";
}

/* At most one line per 10 s for each kind of refusal, with the count since the last one. */
static void refused(rt_auth *a, int kind, struct evhttp_request *req, const char *what, const char *why)
{
    unsigned long n;
    double since;
    if (!pd_log_due(&a->refusals[kind], 10, &n, &since)) return;
    pd_warn("router: refused %lu request%s %s in %.0f s (latest %s from %s: %s)", n, n == 1 ? "" : "s", what, since,
            evhttp_request_get_uri(req), peer_of(req), why);
}

static void reply_401(struct evhttp_request *req, const char *msg, const char *code)
{
    cJSON *o = pd_http_error_json(401, "invalid_request_error", NULL, msg);
    cJSON_ReplaceItemInObject(cJSON_GetObjectItem(o, "error"), "code", cJSON_CreateString(code));
    evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate", "Bearer");
    pd_http_reply_json(req, 401, o);
    cJSON_Delete(o);
}

int rt_auth_check(rt_auth *a, struct evhttp_request *req)
{
    if (!a || a->api.n == 0) return 1;
    const char *tok, *h;
    if (bearer_ok(&a->api, req, &tok, &h)) return 1;
    refused(a, 0, req, "without a valid API key", tok ? "wrong key" : h ? "not a Bearer credential" : "no key");
    reply_401(req,
              tok ? "Incorrect API key provided." :
                    "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
              "invalid_api_key");
    return 0;
}

static int loopback(const char *addr)
{
    return !strncmp(addr, "127.", 4) || !strcmp(addr, "::1") || !strncmp(addr, "::ffff:127.", 11);
}

int rt_auth_admin(rt_auth *a, struct evhttp_request *req, int registration)
{
    if (registration && pd_auth_enabled()) return pd_auth_check(req, "router");
    const char *tok, *h;
    if (a->admin.n) {
        if (bearer_ok(&a->admin, req, &tok, &h)) return 1;
        refused(a, 1, req, "to the admin routes without the admin key", tok ? "wrong key" : "no key");
        reply_401(req, "this route needs the admin key: 'Authorization: Bearer <admin key>'", "invalid_admin_key");
        return 0;
    }
    if (loopback(peer_of(req))) return 1;
    refused(a, 1, req, "to the admin routes from another host", "no --admin-key is set");
    pd_http_reply_error(req, 403, "permission_error", NULL,
                        "the admin routes answer this host only unless the router has --admin-key (registrations "
                        "from other hosts: --cluster-secret-file on the router and the instances)");
    return 0;
}
