/* HTTP on libevent: a server with limits, OpenAI-shaped JSON errors, chunked streaming replies; and a client
 * for the control plane between router, prefill and decode (JSON request, optional NDJSON line stream). */
#ifndef PD_HTTP_H
#define PD_HTTP_H

#include <cJSON.h>
#include <event2/event.h>
#include <event2/http.h>

#include "common/pd_common.h"
#include "common/pd_metrics.h"
#include "common/pd_opts.h"

/* A listener's connection hygiene and TLS, as options (pd_http_listen_options); zero fields take the defaults. */
typedef struct {
    double read_timeout;  /* seconds to receive a whole request, from the connection's start or the request's first
                             byte; then the connection is closed. 0: 30 */
    double idle_timeout;  /* seconds a keep-alive connection waits for its next request; 0: 60 */
    int max_connections;  /* open connections beyond which a new one gets 503 and is closed; 0: what the descriptor
                             limit allows (pd_http_default_max_connections) */
    char *ssl_certfile;   /* both set: the listener speaks only TLS (1.2 or later) */
    char *ssl_keyfile;
} pd_http_listen_opts;

/* Fills t with the options of o (--http-read-timeout, --http-idle-timeout, --max-connections and, when tls, the
 * --ssl-certfile and --ssl-keyfile vLLM names); returns how many (t NULL: only counts). */
int pd_http_listen_options(pd_http_listen_opts *o, int tls, pd_opt *t);

typedef struct {
    size_t max_headers;  /* bytes; 0: 16 KiB */
    size_t max_body;     /* bytes; 0: 8 MiB */
    int timeout_s;       /* a connection that makes no read or write progress for this long is dropped; 0: 600 */
    int fds_per_connection; /* descriptors one client connection may cost this process (its own and the calls a
                               request makes): the default --max-connections divides by it; 0: 1 */
    const pd_http_listen_opts *listen; /* NULL: defaults, no TLS */
} pd_http_limits;

/* Connections the descriptor limit allows: (RLIMIT_NOFILE - a reserve of min(256, 1/8)) / fds_per_connection. The
 * first call raises the soft limit to the hard one. */
int pd_http_default_max_connections(int fds_per_connection);

/* Binds host:port (port 0 picks a free one; the chosen port goes to *bound_port). gencb handles every route. A
 * TLS key or certificate that cannot be loaded fails with PD_ERR_INVALID (logged). */
pd_status pd_http_server_create(struct event_base *base, const char *host, int port, const pd_http_limits *lim,
                                void (*gencb)(struct evhttp_request *, void *), void *arg, struct evhttp **out,
                                int *bound_port);

/* Frees a server made by pd_http_server_create (its connections with it). Accepts NULL. */
void pd_http_server_free(struct evhttp *http);
/* Client connections open on a server made by pd_http_server_create (-1 for another). */
int pd_http_open_connections(struct evhttp *http);
/* The close callback of the request's connection (evhttp_connection_set_closecb is the server's own: use this).
 * cb NULL clears it. */
void pd_http_set_closecb(struct evhttp_request *req, void (*cb)(struct evhttp_connection *, void *), void *arg);

/* The request's body as a NUL-terminated malloc'd string. PD_ERR_RANGE when longer than max. */
pd_status pd_http_body(struct evhttp_request *req, size_t max, char **out, size_t *len);
/* Path without the query string, in buf. */
const char *pd_http_path(struct evhttp_request *req, char *buf, size_t len);

void pd_http_reply_json(struct evhttp_request *req, int code, const cJSON *body);
void pd_http_reply_text(struct evhttp_request *req, int code, const char *content_type, const char *text,
                        size_t len);
/* {"error":{"message":msg,"type":type,"param":param|null,"code":code}} with the given HTTP status. */
void pd_http_reply_error(struct evhttp_request *req, int status, const char *type, const char *param,
                         const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* 503 (or 429) with Retry-After: 1 and an OpenAI error body: the request may succeed if retried shortly. */
void pd_http_reply_retry(struct evhttp_request *req, int status, const char *msg);
/* The error object alone (for errors inside an SSE stream). Caller deletes. */
cJSON *pd_http_error_json(int status, const char *type, const char *param, const char *msg);
/* Reason phrase and OpenAI error type for a status: 400 invalid_request_error, 404 not_found_error, ... */
const char *pd_http_error_type(int status);

/* For a connection close callback: when the peer went away before the reply was finished, libevent detaches
 * the request from the connection and leaves it to its owner; this frees it. Call once, then forget req. */
void pd_http_release_detached(struct evhttp_request *req);

/* 200 with the registry rendered in the Prometheus text format (500 when out of memory). */
void pd_http_reply_metrics(struct evhttp_request *req, pd_metrics *r);

/* Streaming replies (chunked transfer). */
void pd_http_stream_start(struct evhttp_request *req, int code, const char *content_type);
void pd_http_stream_write(struct evhttp_request *req, const char *data, size_t len);
void pd_http_stream_end(struct evhttp_request *req);

/* Replies sent through the functions above whose last byte libevent has not yet written (loop thread only). A
 * draining server waits for them before it leaves its loop: a reply ended but still in the connection's buffer
 * is lost if the process exits. A reply whose client went away never completes, so waits on this are bounded. */
int pd_http_replies_unflushed(void);

/* ---- client ---------------------------------------------------------------------------------------------
 * One connection per call (the control plane talks to few peers; streams are long-lived). line_cb receives
 * each '\n'-terminated line of the response body as it arrives (NDJSON streams); done_cb is called exactly
 * once unless the call is cancelled: with the HTTP status and the part of the body not consumed as lines
 * (the whole body when line_cb is NULL), or with status 0 and a pd_status error when the peer could not be
 * reached, closed the connection early or timed out. */
typedef struct pd_http_call_s pd_http_call;
typedef void (*pd_http_line_cb)(pd_http_call *c, const char *line, size_t len, void *arg);
typedef void (*pd_http_done_cb)(pd_http_call *c, int status, const char *body, size_t len, pd_status err,
                                void *arg);

pd_status pd_http_call_start(struct event_base *base, const char *host, int port, const char *method,
                             const char *path, const char *body, size_t body_len, int timeout_s,
                             pd_http_line_cb line_cb, pd_http_done_cb done_cb, void *arg, pd_http_call **out);
/* Stops a call in flight: no callback runs afterwards. Safe from within line_cb (takes effect after it). */
void pd_http_call_cancel(pd_http_call *c);
/* Frees calls whose release was scheduled on a loop that will not run again: call after the last loop iteration,
 * before event_base_free (executables at exit). */
void pd_http_calls_release(void);
/* "host:port" -> parts. PD_ERR_INVALID when malformed. */
pd_status pd_http_parse_hostport(const char *s, char *host, size_t hostlen, int *port);

#endif
