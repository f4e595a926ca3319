/* HTTP helpers on libevent's evhttp. Client calls own one connection each; connections are freed from the
 * event loop (a zero-delay timer), never inside their own callbacks. */
#include "common/pd_auth.h"
#include "common/pd_http.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>

/* ---- accepting under descriptor exhaustion ----------------------------------------------------------------
 * When accept() fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), libevent retries at once
 * and logs each failure: a busy loop writing a line per try. The guard stops accepting for PD_HTTP_ACCEPT_PAUSE
 * seconds instead (connections wait in the kernel's backlog), so descriptors that close meanwhile go to work the
 * process already has (its outgoing calls), and logs one line per 10 s with the count. */
#define PD_HTTP_ACCEPT_PAUSE 0.1

typedef struct guard {
    struct guard *next;
    struct evhttp *http;
    struct evconnlistener *l;
    struct event *resume;
    pd_log_limit failures;
} guard;

static guard *g_guards; /* loop threads own their servers; the list itself is only touched at create and free */
static pthread_mutex_t g_guards_mu = PTHREAD_MUTEX_INITIALIZER;

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evconnlistener_enable(((guard *)arg)->l);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    (void)arg; /* evhttp's: the guard is found through the list */
    const int err = EVUTIL_SOCKET_ERROR();
    pthread_mutex_lock(&g_guards_mu);
    guard *g = g_guards;
    while (g && g->l != l) g = g->next;
    pthread_mutex_unlock(&g_guards_mu);
    if (!g) return;
    const int scarce = err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
    unsigned long n;
    double since;
    if (pd_log_due(&g->failures, 10, &n, &since))
        pd_warn("http: accept() failed %lu time%s in the last %.0f s (latest: %s)%s", n, n == 1 ? "" : "s", since,
                strerror(err), scarce ? "; pausing new connections 100 ms at a time until descriptors free up" : "");
    if (!scarce) return;
    struct timeval tv = {0, (long)(PD_HTTP_ACCEPT_PAUSE * 1e6)};
    evconnlistener_disable(l);
    if (evtimer_add(g->resume, &tv) != 0) evconnlistener_enable(l); /* cannot pause: keep accepting */
}

void pd_http_server_free(struct evhttp *http)
{
    if (!http) return;
    pthread_mutex_lock(&g_guards_mu);
    for (guard **pp = &g_guards; *pp; pp = &(*pp)->next)
        if ((*pp)->http == http) {
            guard *g = *pp;
            *pp = g->next;
            event_free(g->resume);
            free(g);
            break;
        }
    pthread_mutex_unlock(&g_guards_mu);
    evhttp_free(http);
}

pd_status pd_http_server_create(struct event_base *base, const char *host, int port, const pd_http_limits *lim,
                                void (*gencb)(struct evhttp_request *, void *), void *arg, struct evhttp **out,
                                int *bound_port)
{
    struct evhttp *http = evhttp_new(base);
    if (!http) return PD_ERR_NOMEM;
    pd_http_limits l = lim ? *lim : (pd_http_limits){0};
    evhttp_set_max_headers_size(http, (ev_ssize_t)(l.max_headers ? l.max_headers : 16384));
    evhttp_set_max_body_size(http, (ev_ssize_t)(l.max_body ? l.max_body : (8u << 20)));
    evhttp_set_timeout(http, l.timeout_s ? l.timeout_s : 600);
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(http, gencb, arg);
    struct evhttp_bound_socket *h = evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port);
    if (!h) {
        pd_error("cannot listen on %s:%d", host, port);
        evhttp_free(http);
        return PD_ERR_IO;
    }
    guard *g = calloc(1, sizeof *g);
    if (g) {
        g->http = http;
        g->l = evhttp_bound_socket_get_listener(h);
        g->resume = evtimer_new(base, resume_cb, g);
    }
    if (!g || !g->l || !g->resume) {
        if (g && g->resume) event_free(g->resume);
        free(g);
        evhttp_free(http);
        return PD_ERR_NOMEM;
    }
    evconnlistener_set_error_cb(g->l, accept_error_cb);
    pthread_mutex_lock(&g_guards_mu);
    g->next = g_guards;
    g_guards = g;
    pthread_mutex_unlock(&g_guards_mu);
    if (bound_port) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        getsockname(evhttp_bound_socket_get_fd(h), (struct sockaddr *)&ss, &sl);
        *bound_port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port) :
                                                 ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    *out = http;
    return PD_OK;
}

pd_status pd_http_body(struct evhttp_request *req, size_t max, char **out, size_t *len)
{
    struct evbuffer *b = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(b);
    if (n > max) return PD_ERR_RANGE;
    char *s = malloc(n + 1);
    if (!s) return PD_ERR_NOMEM;
    evbuffer_copyout(b, s, n);
    s[n] = '\0';
    *out = s;
    if (len) *len = n;
    return PD_OK;
}

const char *pd_http_path(struct evhttp_request *req, char *buf, size_t len)
{
    const char *uri = evhttp_request_get_uri(req);
    size_t n = strcspn(uri, "?#");
    snprintf(buf, len, "%.*s", (int)n, uri);
    return buf;
}

static int g_unflushed; /* see pd_http_replies_unflushed; the servers' loop thread only */

static void reply_complete_cb(struct evhttp_request *req, void *arg)
{
    (void)req;
    (void)arg;
    if (g_unflushed > 0) g_unflushed--;
}

/* Counts a reply until libevent has written its last byte. */
static void track_reply(struct evhttp_request *req)
{
    g_unflushed++;
    evhttp_request_set_on_complete_cb(req, reply_complete_cb, NULL);
}

int pd_http_replies_unflushed(void) { return g_unflushed; }

void pd_http_reply_text(struct evhttp_request *req, int code, const char *content_type, const char *text, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) return;
    evbuffer_add(b, text, len);
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", content_type);
    track_reply(req);
    evhttp_send_reply(req, code, NULL, b);
    evbuffer_free(b);
}

void pd_http_reply_metrics(struct evhttp_request *req, pd_metrics *r)
{
    char *txt = NULL;
    size_t len = 0;
    if (pd_metrics_render(r, &txt, &len) != PD_OK) {
        pd_http_reply_error(req, 500, NULL, NULL, "out of memory rendering metrics");
        return;
    }
    pd_http_reply_text(req, 200, "text/plain; version=0.0.4; charset=utf-8", txt, len);
    free(txt);
}

void pd_http_reply_json(struct evhttp_request *req, int code, const cJSON *body)
{
    char *s = cJSON_PrintUnformatted(body);
    if (!s) {
        evhttp_send_error(req, 500, "out of memory");
        return;
    }
    pd_http_reply_text(req, code, "application/json", s, strlen(s));
    free(s);
}

const char *pd_http_error_type(int status)
{
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 404: return "not_found_error";
    case 405: return "invalid_request_error";
    case 413: return "invalid_request_error";
    case 429: return "rate_limit_error";
    case 503: return "service_unavailable_error";
    default: return status >= 500 ? "internal_server_error" : "invalid_request_error";
    }
}

cJSON *pd_http_error_json(int status, const char *type, const char *param, const char *msg)
{
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", type ? type : pd_http_error_type(status));
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    cJSON_AddNumberToObject(e, "code", status);
    return o;
}

void pd_http_reply_error(struct evhttp_request *req, int status, const char *type, const char *param, const char *fmt,
                         ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *o = pd_http_error_json(status, type, param, msg);
    pd_http_reply_json(req, status, o);
    cJSON_Delete(o);
}

void pd_http_reply_retry(struct evhttp_request *req, int status, const char *msg)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), "Retry-After", "1");
    pd_http_reply_error(req, status, NULL, NULL, "%s", msg);
}

void pd_http_stream_start(struct evhttp_request *req, int code, const char *content_type)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    evhttp_add_header(h, "Content-Type", content_type);
    evhttp_add_header(h, "Cache-Control", "no-cache");
    track_reply(req);
    evhttp_send_reply_start(req, code, code == 200 ? "OK" : "Error");
}

void pd_http_stream_write(struct evhttp_request *req, const char *data, size_t len)
{
    struct evbuffer *b = evbuffer_new();
    if (!b) return;
    evbuffer_add(b, data, len);
    evhttp_send_reply_chunk(req, b);
    evbuffer_free(b);
}

void pd_http_stream_end(struct evhttp_request *req) { evhttp_send_reply_end(req); }

void pd_http_release_detached(struct evhttp_request *req)
{
    if (req && evhttp_request_get_connection(req) == NULL) evhttp_send_reply_end(req); /* frees a detached request */
}

/* ---- client ------------------------------------------------------------------------------------------- */

struct pd_http_call_s {
    struct event_base *base;
    struct evhttp_connection *conn;
    struct evhttp_request *req;
    struct evbuffer *pending; /* bytes of an unfinished line */
    pd_http_line_cb line_cb;
    pd_http_done_cb done_cb;
    void *arg;
    int in_line_cb;
    int starting, start_failed; /* inside evhttp_make_request; libevent failed the call there */
    int cancelled;              /* no user callback runs once set */
    int destroy_scheduled;
    struct pd_http_call_s *dnext, *dprev; /* scheduled for release, not yet released */
};

/* Calls whose release is scheduled on their loop: pd_http_calls_release() frees them when the loop will not run
 * again (process exit). Loop threads only; the lock keeps several loops in one process apart. */
static pd_http_call *g_dying;
static pthread_mutex_t g_dying_mu = PTHREAD_MUTEX_INITIALIZER;

static void call_free(pd_http_call *c)
{
    if (c->conn) evhttp_connection_free(c->conn);
    evbuffer_free(c->pending);
    free(c);
}

/* Frees the connection (and any request still queued on it, without callbacks) and the call, from the loop. */
static void destroy_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pd_http_call *c = arg;
    pthread_mutex_lock(&g_dying_mu);
    if (c->dprev) c->dprev->dnext = c->dnext;
    else g_dying = c->dnext;
    if (c->dnext) c->dnext->dprev = c->dprev;
    pthread_mutex_unlock(&g_dying_mu);
    call_free(c);
}

void pd_http_calls_release(void)
{
    pthread_mutex_lock(&g_dying_mu);
    while (g_dying) {
        pd_http_call *c = g_dying;
        g_dying = c->dnext;
        call_free(c);
    }
    pthread_mutex_unlock(&g_dying_mu);
}

static void schedule_destroy(pd_http_call *c)
{
    if (c->destroy_scheduled) return;
    c->destroy_scheduled = 1;
    pthread_mutex_lock(&g_dying_mu);
    c->dnext = g_dying;
    if (g_dying) g_dying->dprev = c;
    g_dying = c;
    pthread_mutex_unlock(&g_dying_mu);
    if (event_base_once(c->base, -1, EV_TIMEOUT, destroy_cb, c, &(struct timeval){0, 0}) != 0)
        pd_error("http client: cannot schedule the release of a connection (freed at exit)");
}

static void drain_lines(pd_http_call *c)
{
    size_t n;
    char *line;
    while (!c->cancelled && (line = evbuffer_readln(c->pending, &n, EVBUFFER_EOL_LF)) != NULL) {
        c->in_line_cb = 1;
        c->line_cb(c, line, n, c->arg);
        c->in_line_cb = 0;
        free(line);
    }
}

static void chunk_cb(struct evhttp_request *req, void *arg)
{
    pd_http_call *c = arg;
    if (c->cancelled) return;
    evbuffer_add_buffer(c->pending, evhttp_request_get_input_buffer(req));
    if (c->line_cb) drain_lines(c);
    if (c->cancelled) schedule_destroy(c); /* cancelled from inside line_cb */
}

static void error_cb(enum evhttp_request_error e, void *arg)
{
    (void)e;
    (void)arg; /* the completion callback reports errors (and nothing runs on cancel) */
}

static void done_cb(struct evhttp_request *req, void *arg)
{
    pd_http_call *c = arg;
    c->req = NULL;
    /* libevent fails a call whose socket it cannot create (EMFILE) from inside evhttp_make_request: the start
     * reports it instead, and no callback runs for a call the caller never got */
    if (c->starting) {
        c->start_failed = 1;
        return;
    }
    if (c->cancelled) return;
    int status = req ? evhttp_request_get_response_code(req) : 0;
    if (req) evbuffer_add_buffer(c->pending, evhttp_request_get_input_buffer(req));
    if (req && c->line_cb) drain_lines(c);
    if (!c->cancelled) {
        c->cancelled = 1; /* done: nothing more for the user */
        size_t n = evbuffer_get_length(c->pending);
        char *rest = malloc(n + 1);
        if (rest) {
            evbuffer_copyout(c->pending, rest, n);
            rest[n] = '\0';
        }
        c->done_cb(c, status, rest ? rest : "", rest ? n : 0, status == 0 ? PD_ERR_PEER : PD_OK, c->arg);
        free(rest);
    }
    schedule_destroy(c);
}

pd_status pd_http_call_start(struct event_base *base, const char *host, int port, const char *method, const char *path,
                             const char *body, size_t body_len, int timeout_s, pd_http_line_cb line_cb,
                             pd_http_done_cb done, void *arg, pd_http_call **out)
{
    pd_http_call *c = calloc(1, sizeof *c);
    if (!c) return PD_ERR_NOMEM;
    c->base = base;
    c->line_cb = line_cb;
    c->done_cb = done;
    c->arg = arg;
    c->pending = evbuffer_new();
    c->conn = evhttp_connection_base_new(base, NULL, host, (ev_uint16_t)port);
    if (!c->pending || !c->conn) goto fail;
    evhttp_connection_set_retries(c->conn, 0);
    if (timeout_s > 0) evhttp_connection_set_timeout(c->conn, timeout_s);
    c->req = evhttp_request_new(done_cb, c);
    if (!c->req) goto fail;
    evhttp_request_set_chunked_cb(c->req, chunk_cb);
    evhttp_request_set_error_cb(c->req, error_cb);
    struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
    char hostport[300];
    snprintf(hostport, sizeof hostport, "%s:%d", host, port);
    evhttp_add_header(h, "Host", hostport);
    if (body) {
        evhttp_add_header(h, "Content-Type", "application/json");
        evbuffer_add(evhttp_request_get_output_buffer(c->req), body, body_len);
    }
    pd_auth_sign(h, method, path, body, body ? body_len : 0);
    enum evhttp_cmd_type cmd = !strcmp(method, "GET") ? EVHTTP_REQ_GET :
        !strcmp(method, "DELETE")                     ? EVHTTP_REQ_DELETE :
                                                        EVHTTP_REQ_POST;
    c->starting = 1;
    const int made = evhttp_make_request(c->conn, c->req, cmd, path);
    c->starting = 0;
    if (made != 0 || c->start_failed) {
        c->req = NULL; /* freed by libevent on failure */
        goto fail;
    }
    *out = c;
    return PD_OK;
fail:
    if (c->req) evhttp_request_free(c->req);
    if (c->conn) evhttp_connection_free(c->conn);
    if (c->pending) evbuffer_free(c->pending);
    free(c);
    return PD_ERR_PEER;
}

void pd_http_call_cancel(pd_http_call *c)
{
    if (!c || c->cancelled) return;
    c->cancelled = 1;
    if (c->in_line_cb) return; /* chunk_cb schedules the release once line_cb returns */
    if (c->req) {
        evhttp_cancel_request(c->req); /* runs error_cb only; the completion callback is not called */
        c->req = NULL;
    }
    schedule_destroy(c);
}

pd_status pd_http_parse_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *p = s;
    if (!strncmp(p, "http://", 7)) p += 7;
    const char *colon = strrchr(p, ':');
    if (!colon || colon == p) return PD_ERR_INVALID;
    char *end;
    long v = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || (*end && *end != '/') || v < 1 || v > 65535) return PD_ERR_INVALID;
    size_t hl = (size_t)(colon - p);
    if (p[0] == '[' && hl >= 2 && p[hl - 1] == ']') { /* [::1]:8000 */
        p++;
        hl -= 2;
    }
    if (hl + 1 > hostlen) return PD_ERR_RANGE;
    memcpy(host, p, hl);
    host[hl] = '\0';
    *port = (int)v;
    return PD_OK;
}
