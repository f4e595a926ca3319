/* libFuzzer target: arbitrary bytes sent as a client's whole side of a connection to a live listener made by
 * pd_http_server_create on 127.0.0.1 (libevent's HTTP parser, pdserve's connection records, limits and timeouts, the
 * cluster-signature check and the reply functions), then the client's half-close. The server must end every such
 * connection (it closes once the client's bytes are used up and its replies are written), every reply it writes
 * must start with an HTTP/1.x status line, and afterwards it must hold no connection record: anything else traps.
 * One connection per input; the client closes with a reset (SO_LINGER 0), so no TIME_WAIT piles up. */
#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/pd_auth.h"
#include "common/pd_http.h"

#define CHECK(c) ((c) ? (void)0 : __builtin_trap())

static struct event_base *g_base;
static struct evhttp *g_http;
static struct sockaddr_in g_addr;

/* Routes that use each reply path: a JSON reply, an OpenAI error, a stream, the signature check. */
static void gencb(struct evhttp_request *req, void *arg)
{
    (void)arg;
    char path[256];
    pd_http_path(req, path, sizeof path);
    char *body = NULL;
    size_t len = 0;
    if (pd_http_body(req, 4096, &body, &len) != PD_OK) {
        pd_http_reply_error(req, 413, NULL, NULL, "body over 4096 bytes");
        return;
    }
    struct evkeyvalq q;
    const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
    if (query && evhttp_parse_query_str(query, &q) == 0) evhttp_clear_headers(&q);
    if (!strncmp(path, "/internal/", 10)) {
        if (pd_auth_check(req, "fuzz")) pd_http_reply_text(req, 200, "text/plain", "signed\n", 7);
    } else if (!strcmp(path, "/stream")) {
        pd_http_stream_start(req, 200, "text/event-stream");
        pd_http_stream_write(req, body, len);
        pd_http_stream_write(req, "data: [DONE]\n\n", 14);
        pd_http_stream_end(req);
    } else if (!strcmp(path, "/json")) {
        cJSON *o = cJSON_ParseWithLength(body, len);
        cJSON *r = cJSON_CreateObject();
        cJSON_AddBoolToObject(r, "parsed", o != NULL);
        cJSON_AddNumberToObject(r, "bytes", (double)len);
        pd_http_reply_json(req, 200, r);
        cJSON_Delete(r);
        cJSON_Delete(o);
    } else if (!strcmp(path, "/retry")) {
        pd_http_reply_retry(req, 503, "busy");
    } else {
        pd_http_reply_error(req, 404, NULL, NULL, "no route %s", path);
    }
    free(body);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    pd_log_set_level(PD_LOG_OFF); /* refusals are the point; logging each would swamp the run */
    char secret[] = "/tmp/pdserve-fuzz-http-secret-XXXXXX", err[256];
    const int fd = mkstemp(secret);
    if (fd < 0 || write(fd, "fuzz-cluster-secret-0123456789ab", 32) != 32) abort();
    close(fd);
    const pd_status st = pd_auth_load_secret(secret, err, sizeof err);
    unlink(secret);
    if (st != PD_OK) abort();
    g_base = event_base_new();
    static pd_http_listen_opts lo = {.read_timeout = 1, .idle_timeout = 1, .max_connections = 64};
    pd_http_limits lim = {.max_headers = 4096, .max_body = 8192, .timeout_s = 2, .listen = &lo};
    int port = 0;
    if (!g_base || pd_http_server_create(g_base, "127.0.0.1", 0, &lim, gencb, NULL, &g_http, &port) != PD_OK) abort();
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)port);
    g_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 32768) return 0;
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    CHECK(fd >= 0);
    const struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    CHECK(connect(fd, (struct sockaddr *)&g_addr, sizeof g_addr) == 0 || errno == EINPROGRESS);
    size_t off = 0;
    int shut = 0, eof = 0, at_line = 1, quiet = 0;
    char buf[65536];
    /* Loopback delivers at once: a turn sends what fits, lets the server handle what is ready and reads its replies.
     * Only after turns without news does the server get 0.2 ms at a time to run its timers (1 s read timeout at most). */
    for (int turn = 0; turn < 3000 && !eof; turn++) {
        int news = 0;
        if (!shut) {
            const ssize_t n = off < size ? send(fd, data + off, size - off, MSG_NOSIGNAL) : 0;
            if (n > 0) off += (size_t)n, news = 1;
            if (off == size || (n < 0 && errno != EAGAIN && errno != EINPROGRESS && errno != ENOTCONN)) {
                if (shutdown(fd, SHUT_WR) == 0 || errno != ENOTCONN) shut = 1, news = 1;
            }
        }
        if (quiet < 8) {
            event_base_loop(g_base, EVLOOP_NONBLOCK);
        } else {
            struct timeval tv = {0, 200};
            event_base_loopexit(g_base, &tv);
            event_base_dispatch(g_base);
        }
        for (;;) {
            const ssize_t r = recv(fd, buf, sizeof buf, 0);
            if (r > 0) {
                /* the connection's first bytes from the server are a status line */
                if (at_line) CHECK(r < 5 || !memcmp(buf, "HTTP/", 5));
                at_line = 0;
                news = 1;
                continue;
            }
            if (r == 0 || (errno != EAGAIN && errno != ENOTCONN)) eof = 1;
            break;
        }
        quiet = news ? 0 : quiet + 1;
    }
    CHECK(eof); /* the server ended the connection: it never waits forever on a client that has finished */
    close(fd);
    for (int i = 0; i < 3; i++) event_base_loop(g_base, EVLOOP_NONBLOCK);
    CHECK(pd_http_open_connections(g_http) == 0);
    return 0;
}
