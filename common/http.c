/* HTTP helpers on libevent's evhttp. Client calls own one connection each; connections are freed from the
 * event loop (a zero-delay timer), never inside their own callbacks. */
#include "common/pd_auth.h"
#include "common/pd_http.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* ---- the listener and its connections ------------------------------------------------------------------
 * Every accepted connection gets a record (evhttp's bevcb makes its bufferevent: a socket, or OpenSSL's on a TLS
 * listener). On the loop's next turn the record is tied to evhttp's connection (the bufferevent's callback argument)
 * and takes its close callback, which libevent calls when the connection goes; callers set theirs through
 * pd_http_set_closecb. Records count the open connections (--max-connections: one beyond gets a 503 and is closed)
 * and switch the connection's timeout between the read timeout (a request arriving: seconds without a byte), the
 * reply's (while a request is answered: a stream may last minutes) and the idle timeout (keep-alive, between
 * requests).
 *
 * When accept() fails for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), libevent retries at once
 * and logs each failure: a busy loop writing a line per try. The listener stops accepting for PD_HTTP_ACCEPT_PAUSE
 * seconds instead (connections wait in the kernel's backlog), so descriptors that close meanwhile go to work the
 * process already has (its outgoing calls). The default connection limit keeps that from happening at all: it leaves
 * a reserve of descriptors for the process's own calls. */
#define PD_HTTP_ACCEPT_PAUSE 0.1

typedef struct conn conn;

static int g_unflushed; /* see pd_http_replies_unflushed; the servers' loop thread only */

typedef struct server {
    struct server *next;
    struct evhttp *http;
    struct evconnlistener *l;
    struct event *resume;
    void (*gencb)(struct evhttp_request *, void *);
    void *arg;
    SSL_CTX *tls;
    struct timeval read_tv, idle_tv, reply_tv;
    int max_conns, nconns; /* nconns: records, so open connections (a refused one until it is closed) */
    conn *conns;           /* every record */
    pd_log_limit accept_fail, refused;
} server;

struct conn {
    conn *hnext;       /* in g_conns, once adopted */
    conn *prev, *next; /* in the server's list */
    server *s;
    struct bufferevent *bev;
    struct evhttp_connection *evcon; /* NULL until adopted */
    struct event *adopt;
    int refused;
    void (*user_closecb)(struct evhttp_connection *, void *);
    void *user_arg;
};

/* Records are touched on their server's loop thread; the hash and the server list under g_mu. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static server *g_servers;
static conn **g_conns; /* adopted records by evhttp connection */
static size_t g_conns_cap, g_conns_n;

static size_t conn_slot(const struct evhttp_connection *evcon, size_t cap)
{
    uintptr_t h = (uintptr_t)evcon;
    h ^= h >> 17;
    h *= 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 20) & (cap - 1);
}

static int conn_insert(conn *c) /* 0 when out of memory */
{
    pthread_mutex_lock(&g_mu);
    if (g_conns_n + 1 > g_conns_cap) {
        const size_t cap = g_conns_cap ? g_conns_cap * 2 : 1024;
        conn **t = calloc(cap, sizeof *t);
        if (!t) {
            pthread_mutex_unlock(&g_mu);
            return 0;
        }
        for (size_t i = 0; i < g_conns_cap; i++)
            for (conn *x = g_conns[i], *nx; x; x = nx) {
                nx = x->hnext;
                conn **head = &t[conn_slot(x->evcon, cap)];
                x->hnext = *head;
                *head = x;
            }
        free(g_conns);
        g_conns = t;
        g_conns_cap = cap;
    }
    conn **head = &g_conns[conn_slot(c->evcon, g_conns_cap)];
    c->hnext = *head;
    *head = c;
    g_conns_n++;
    pthread_mutex_unlock(&g_mu);
    return 1;
}

static conn *conn_find(struct evhttp_connection *evcon)
{
    conn *c = NULL;
    pthread_mutex_lock(&g_mu);
    if (evcon && g_conns_cap)
        for (c = g_conns[conn_slot(evcon, g_conns_cap)]; c && c->evcon != evcon; c = c->hnext) {
        }
    pthread_mutex_unlock(&g_mu);
    return c;
}

static void conn_free(conn *c)
{
    if (c->evcon) {
        pthread_mutex_lock(&g_mu);
        for (conn **pp = &g_conns[conn_slot(c->evcon, g_conns_cap)]; *pp; pp = &(*pp)->hnext)
            if (*pp == c) {
                *pp = c->hnext;
                g_conns_n--;
                break;
            }
        pthread_mutex_unlock(&g_mu);
    }
    if (c->prev) c->prev->next = c->next;
    else c->s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->s->nconns--;
    event_free(c->adopt);
    free(c);
}

static void conn_closed(struct evhttp_connection *evcon, void *arg)
{
    conn *c = arg;
    if (c->user_closecb) c->user_closecb(evcon, c->user_arg);
    conn_free(c);
}

void pd_http_set_closecb(struct evhttp_request *req, void (*cb)(struct evhttp_connection *, void *), void *arg)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!evcon) return;
    conn *c = conn_find(evcon);
    if (!c) {
        evhttp_connection_set_closecb(evcon, cb, arg);
        return;
    }
    c->user_closecb = cb;
    c->user_arg = arg;
}

static const char REFUSED_BODY[] =
    "{\"error\":{\"message\":\"the server is at its connection limit; retry later\",\"type\":\"service_unavailable\","
    "\"param\":null,\"code\":null}}\n";

/* The loop's next turn after the accept: evhttp has made its connection around c->bev. */
static void conn_adopt(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conn *c = arg;
    server *s = c->s;
    void *cbarg = NULL;
    bufferevent_getcb(c->bev, NULL, NULL, NULL, &cbarg);
    struct evhttp_connection *evcon = cbarg;
    if (!evcon || evhttp_connection_get_bufferevent(evcon) != c->bev) {
        pd_warn("http: a new connection's bufferevent is not evhttp's (libevent changed?); it is not counted");
        conn_free(c);
        return;
    }
    c->evcon = evcon;
    if (!conn_insert(c)) {
        c->evcon = NULL;
        conn_free(c);
        evhttp_connection_free(evcon);
        return;
    }
    evhttp_connection_set_closecb(evcon, conn_closed, c);
    if (!c->refused) {
        evhttp_connection_set_timeout_tv(evcon, &s->read_tv);
        return;
    }
    unsigned long n;
    double since;
    if (pd_log_due(&s->refused, 10, &n, &since))
        pd_warn("http: refused %lu connection%s in %.0f s at the connection limit of %d (--max-connections)", n,
                n == 1 ? "" : "s", since, s->max_conns);
    const evutil_socket_t sock = bufferevent_getfd(c->bev);
    if (!s->tls && sock >= 0) { /* a TLS client cannot read a plain reply: it is just closed */
        char sink[4096];        /* what the client sent already: closing over unread bytes would reset the reply */
        for (int i = 0; i < 16 && recv(sock, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {
        }
        char reply[512];
        const int len =
            snprintf(reply, sizeof reply,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                     "Connection: close\r\nContent-Length: %zu\r\n\r\n%s",
                     sizeof REFUSED_BODY - 1, REFUSED_BODY);
        if (send(sock, reply, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL) > 0) shutdown(sock, SHUT_WR);
    }
    evhttp_connection_free(evcon); /* calls conn_closed */
}

/* evhttp's bevcb, at each accept: the new connection's bufferevent (evhttp sets its socket next). */
static struct bufferevent *conn_new(struct event_base *base, void *arg)
{
    server *s = arg;
    conn *c = calloc(1, sizeof *c);
    SSL *ssl = NULL;
    if (!c || !(c->adopt = event_new(base, -1, 0, conn_adopt, c))) goto fail;
    if (s->tls) {
        if (!(ssl = SSL_new(s->tls))) goto fail;
        c->bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
        if (!c->bev) goto fail;
        bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1); /* a client closing without close_notify: EOF */
    } else if (!(c->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE))) {
        goto fail;
    }
    c->s = s;
    c->refused = s->nconns >= s->max_conns;
    s->nconns++;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    event_active(c->adopt, 0, 0);
    return c->bev;
fail:
    if (ssl && !(c && c->bev)) SSL_free(ssl);
    if (c && c->adopt) event_free(c->adopt);
    free(c);
    /* evhttp makes a plain socket bufferevent of its own: on a TLS listener server_gencb refuses its requests */
    return NULL;
}

/* A reply's last byte was written (the request is about to be freed). arg: &g_unflushed when track_reply counted
 * it. The connection waits for its next request. */
static void reply_done_cb(struct evhttp_request *req, void *arg)
{
    if (arg && g_unflushed > 0) g_unflushed--;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    conn *c = conn_find(evcon);
    if (c) evhttp_connection_set_timeout_tv(evcon, &c->s->idle_tv);
}

static void server_gencb(struct evhttp_request *req, void *arg)
{
    server *s = arg;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    conn *c = conn_find(evcon);
    if (!c && s->tls) { /* not TLS (its record could not be made): no service */
        evhttp_connection_free(evcon);
        return;
    }
    if (c) evhttp_connection_set_timeout_tv(evcon, &s->reply_tv);
    evhttp_request_set_on_complete_cb(req, reply_done_cb, NULL);
    s->gencb(req, s->arg);
}

static server *server_of_listener(struct evconnlistener *l)
{
    pthread_mutex_lock(&g_mu);
    server *s = g_servers;
    while (s && s->l != l) s = s->next;
    pthread_mutex_unlock(&g_mu);
    return s;
}

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    evconnlistener_enable(((server *)arg)->l);
}

static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    (void)arg; /* evhttp's: the server is found through the list */
    const int err = EVUTIL_SOCKET_ERROR();
    server *s = server_of_listener(l);
    if (!s) return;
    const int scarce = err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
    unsigned long n;
    double since;
    if (pd_log_due(&s->accept_fail, 10, &n, &since))
        pd_warn("http: accept() failed %lu time%s in the last %.0f s (latest: %s)%s", n, n == 1 ? "" : "s", since,
                strerror(err), scarce ? "; pausing new connections 100 ms at a time until descriptors free up" : "");
    if (!scarce) return;
    struct timeval tv = {0, (long)(PD_HTTP_ACCEPT_PAUSE * 1e6)};
    evconnlistener_disable(l);
    if (evtimer_add(s->resume, &tv) != 0) evconnlistener_enable(l); /* cannot pause: keep accepting */
}

int pd_http_open_connections(struct evhttp *http)
{
    int n = -1;
    pthread_mutex_lock(&g_mu);
    for (server *s = g_servers; s; s = s->next)
        if (s->http == http) n = s->nconns;
    pthread_mutex_unlock(&g_mu);
    return n;
}

void pd_http_server_free(struct evhttp *http)
{
    if (!http) return;
    server *s = NULL;
    pthread_mutex_lock(&g_mu);
    for (server **pp = &g_servers; *pp; pp = &(*pp)->next)
        if ((*pp)->http == http) {
            s = *pp;
            *pp = s->next;
            break;
        }
    pthread_mutex_unlock(&g_mu);
    evhttp_free(http); /* closes every adopted connection: their records go in conn_closed */
    if (!s) return;
    while (s->conns) conn_free(s->conns); /* accepted on the last turn of the loop, never adopted */
    event_free(s->resume);
    if (s->tls) SSL_CTX_free(s->tls);
    free(s);
}

/* The soft descriptor limit raised to the hard one, once per process (as Go's runtime and nginx's
 * worker_rlimit_nofile do): Debian's default soft limit of 1024 is far below what a server needs. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max) return;
    const rlim_t was = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
        pd_debug("http: descriptor limit raised from %llu to %llu", (unsigned long long)was,
                 (unsigned long long)rl.rlim_max);
}

static struct timeval seconds_tv(double s)
{
    return (struct timeval){(time_t)s, (suseconds_t)((s - (double)(time_t)s) * 1e6)};
}

int pd_http_default_max_connections(int fds_per_connection)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, raise_nofile);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1u << 30)) return 1 << 20;
    const long fds = (long)rl.rlim_cur, reserve = PD_MIN(256L, fds / 8);
    const long n = (fds - reserve) / (fds_per_connection > 0 ? fds_per_connection : 1);
    return n < 1 ? 1 : (int)n;
}

static SSL_CTX *tls_context(const char *cert, const char *key)
{
    char why[256] = "";
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) goto fail;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(why, sizeof why, "--ssl-certfile %s", cert);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
        snprintf(why, sizeof why, "--ssl-keyfile %s (a PEM private key: that of --ssl-certfile)", key);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(why, sizeof why, "--ssl-keyfile %s does not match --ssl-certfile %s", key, cert);
        goto fail;
    }
    return ctx;
fail:;
    char ossl[256];
    ERR_error_string_n(ERR_get_error(), ossl, sizeof ossl);
    ERR_clear_error();
    pd_error("http: TLS: %s: %s", why[0] ? why : "cannot make a context", ossl);
    SSL_CTX_free(ctx);
    return NULL;
}

int pd_http_listen_options(pd_http_listen_opts *o, int tls, pd_opt *t)
{
    const pd_opt mine[] = {
        {"http-read-timeout", PD_OPT_DOUBLE, &o->read_timeout,
         "seconds a client has to send a whole request, from its connection or the request's first byte (30)", 0.01,
         86400},
        {"http-idle-timeout", PD_OPT_DOUBLE, &o->idle_timeout,
         "seconds a keep-alive connection may wait for its next request (60)", 0.01, 86400},
        {"max-connections", PD_OPT_INT, &o->max_connections,
         "open client connections beyond which a new one gets 503 and is closed (default: what the descriptor limit "
         "allows after a reserve for this process's own calls)",
         0, 1 << 30},
        {"ssl-certfile", PD_OPT_STR, &o->ssl_certfile, "serve HTTPS with this PEM certificate (chain)", 0, 0},
        {"ssl-keyfile", PD_OPT_STR, &o->ssl_keyfile, "the PEM private key of --ssl-certfile", 0, 0},
    };
    const int n = tls ? (int)PD_ARRAY_LEN(mine) : (int)PD_ARRAY_LEN(mine) - 2;
    if (t) memcpy(t, mine, (size_t)n * sizeof *t);
    return n;
}

pd_status pd_http_server_create(struct event_base *base, const char *host, int port, const pd_http_limits *lim,
                                void (*gencb)(struct evhttp_request *, void *), void *arg, struct evhttp **out,
                                int *bound_port)
{
    pd_http_limits l = lim ? *lim : (pd_http_limits){0};
    const pd_http_listen_opts lo = l.listen ? *l.listen : (pd_http_listen_opts){0};
    if (!lo.ssl_certfile != !lo.ssl_keyfile) {
        pd_error("http: --ssl-certfile and --ssl-keyfile go together");
        return PD_ERR_INVALID;
    }
    server *s = calloc(1, sizeof *s);
    if (!s) return PD_ERR_NOMEM;
    s->gencb = gencb;
    s->arg = arg;
    s->read_tv = seconds_tv(lo.read_timeout > 0 ? lo.read_timeout : 30);
    s->idle_tv = seconds_tv(lo.idle_timeout > 0 ? lo.idle_timeout : 60);
    s->reply_tv = seconds_tv(l.timeout_s ? l.timeout_s : 600);
    const int fit = pd_http_default_max_connections(l.fds_per_connection);
    s->max_conns = lo.max_connections > 0 ? lo.max_connections : fit;
    if (lo.max_connections > fit)
        pd_warn("http: --max-connections %d is more than the descriptor limit allows (%d with a reserve for this "
                "process's own calls); beyond that, accepting pauses while descriptors are short",
                lo.max_connections, fit);
    if (lo.ssl_certfile && !(s->tls = tls_context(lo.ssl_certfile, lo.ssl_keyfile))) {
        free(s);
        return PD_ERR_INVALID;
    }
    struct evhttp *http = evhttp_new(base);
    if (!http || !(s->resume = evtimer_new(base, resume_cb, s))) {
        if (http) evhttp_free(http);
        if (s->tls) SSL_CTX_free(s->tls);
        free(s);
        return PD_ERR_NOMEM;
    }
    s->http = http;
    evhttp_set_max_headers_size(http, (ev_ssize_t)(l.max_headers ? l.max_headers : 16384));
    evhttp_set_max_body_size(http, (ev_ssize_t)(l.max_body ? l.max_body : (8u << 20)));
    evhttp_set_timeout_tv(http, &s->read_tv); /* a new connection's, until it is adopted */
    evhttp_set_allowed_methods(http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS);
    evhttp_set_gencb(http, server_gencb, s);
    evhttp_set_bevcb(http, conn_new, s);
    struct evhttp_bound_socket *h = evhttp_bind_socket_with_handle(http, host, (ev_uint16_t)port);
    if (!h || !(s->l = evhttp_bound_socket_get_listener(h))) {
        pd_error("cannot listen on %s:%d", host, port);
        evhttp_free(http);
        event_free(s->resume);
        if (s->tls) SSL_CTX_free(s->tls);
        free(s);
        return PD_ERR_IO;
    }
    evconnlistener_set_error_cb(s->l, accept_error_cb);
    pthread_mutex_lock(&g_mu);
    s->next = g_servers;
    g_servers = s;
    pthread_mutex_unlock(&g_mu);
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

/* Counts a reply until libevent has written its last byte. */
static void track_reply(struct evhttp_request *req)
{
    g_unflushed++;
    evhttp_request_set_on_complete_cb(req, reply_done_cb, &g_unflushed);
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
