/* Cross-thread mailbox: a growable ring of fixed-size messages plus an eventfd that wakes the loop. */
#include "common/pd_http.h"
#include "common/pd_mailbox.h"

#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct pd_mailbox_s {
    pthread_mutex_t mu;
    uint8_t *buf;
    size_t msg, cap, head, count;
    int fd;
    struct event *ev;
    pd_mailbox_cb cb;
    void *arg;
};

static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    pd_mailbox *mb = arg;
    uint64_t v;
    if (read(fd, &v, sizeof v) < 0) { /* EAGAIN: already drained */
    }
    uint8_t *one = malloc(mb->msg);
    if (!one) return;
    for (;;) {
        pthread_mutex_lock(&mb->mu);
        if (mb->count == 0) {
            pthread_mutex_unlock(&mb->mu);
            break;
        }
        memcpy(one, mb->buf + mb->head * mb->msg, mb->msg);
        mb->head = (mb->head + 1) % mb->cap;
        mb->count--;
        pthread_mutex_unlock(&mb->mu);
        mb->cb(one, mb->arg);
    }
    free(one);
}

void pd_mailbox_flush(pd_mailbox *mb)
{
    if (mb) wake_cb(mb->fd, EV_READ, mb);
}

pd_status pd_mailbox_create(struct event_base *base, size_t msg_size, pd_mailbox_cb cb, void *arg, pd_mailbox **out)
{
    pd_mailbox *mb = calloc(1, sizeof *mb);
    if (!mb) return PD_ERR_NOMEM;
    mb->msg = msg_size;
    mb->cap = 64;
    mb->buf = malloc(mb->cap * msg_size);
    mb->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    mb->cb = cb;
    mb->arg = arg;
    pthread_mutex_init(&mb->mu, NULL);
    if (!mb->buf || mb->fd < 0) goto fail_mb;
    mb->ev = event_new(base, mb->fd, EV_READ | EV_PERSIST, wake_cb, mb);
    if (!mb->ev || event_add(mb->ev, NULL) != 0) goto fail_mb;
    *out = mb;
    return PD_OK;
fail_mb:
    pd_mailbox_destroy(mb);
    return PD_ERR_NOMEM;
}

pd_status pd_mailbox_post(pd_mailbox *mb, const void *msg)
{
    pthread_mutex_lock(&mb->mu);
    if (mb->count == mb->cap) {
        size_t nc = mb->cap * 2;
        uint8_t *nb = malloc(nc * mb->msg);
        if (!nb) {
            pthread_mutex_unlock(&mb->mu);
            return PD_ERR_NOMEM;
        }
        for (size_t i = 0; i < mb->count; i++)
            memcpy(nb + i * mb->msg, mb->buf + ((mb->head + i) % mb->cap) * mb->msg, mb->msg);
        free(mb->buf);
        mb->buf = nb;
        mb->cap = nc;
        mb->head = 0;
    }
    memcpy(mb->buf + ((mb->head + mb->count) % mb->cap) * mb->msg, msg, mb->msg);
    mb->count++;
    pthread_mutex_unlock(&mb->mu);
    uint64_t one = 1;
    if (write(mb->fd, &one, sizeof one) < 0) { /* counter saturated: the loop is awake anyway */
    }
    return PD_OK;
}

void pd_mailbox_destroy(pd_mailbox *mb)
{
    if (!mb) return;
    if (mb->ev) event_free(mb->ev);
    if (mb->fd >= 0) close(mb->fd);
    pthread_mutex_destroy(&mb->mu);
    free(mb->buf);
    free(mb);
}

typedef struct {
    struct event_base *base;
    void (*drain_cb)(void *);
    void *arg;
    int draining;
    const char *name;
} sig_ctx;

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    sig_ctx *c = arg;
    if (sig == SIGTERM && c->drain_cb && !c->draining) {
        c->draining = 1;
        pd_info("%s: SIGTERM: draining (finishing requests in flight; a second signal stops at once)", c->name);
        c->drain_cb(c->arg);
        return;
    }
    pd_info("%s: signal %d, stopping", c->name, (int)sig);
    event_base_loopexit(c->base, NULL);
}

void pd_run_until_signal(struct event_base *base, const char *name, void (*drain_cb)(void *), void *arg)
{
    signal(SIGPIPE, SIG_IGN);
    sig_ctx c = {base, drain_cb, arg, 0, name};
    struct event *si = evsignal_new(base, SIGINT, on_signal, &c), *st = evsignal_new(base, SIGTERM, on_signal, &c);
    if (!si || !st || evsignal_add(si, NULL) != 0 || evsignal_add(st, NULL) != 0)
        pd_warn("%s: cannot catch SIGINT/SIGTERM; stop it with SIGKILL", name);
    event_base_dispatch(base);
    pd_info("%s: stopped", name);
    if (si) event_free(si);
    if (st) event_free(st);
}

void pd_serve_until_signal(struct event_base *base, const char *name, int port, void (*drain_cb)(void *), void *arg)
{
    fprintf(stdout, "READY %d\n", port);
    fflush(stdout);
    pd_run_until_signal(base, name, drain_cb, arg);
}

struct pd_drain_s {
    struct event_base *base;
    struct event *timer;
    const char *name;
    double start, timeout;
    int (*idle)(void *);
    void *arg;
    double idle_since; /* 0: not idle yet */
};

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pd_drain *d = arg;
    if (d->idle(d->arg)) {
        const double now = pd_time_now();
        if (!d->idle_since) d->idle_since = now;
        const int unflushed = pd_http_replies_unflushed();
        if (unflushed == 0 || now - d->idle_since > PD_DRAIN_FLUSH_GRACE) {
            if (unflushed) pd_warn("%s: %d replies still unwritten after %.0f s; exiting", d->name, unflushed,
                                   PD_DRAIN_FLUSH_GRACE);
            else pd_info("%s: drained; exiting", d->name);
            event_base_loopexit(d->base, NULL);
        }
    } else if (pd_time_now() - d->start > d->timeout) {
        pd_warn("%s: drain timeout with requests in flight; exiting anyway", d->name);
        event_base_loopexit(d->base, NULL);
    }
}

pd_status pd_drain_start(struct event_base *base, const char *name, double timeout, int (*idle)(void *), void *arg,
                         pd_drain **out)
{
    pd_drain *d = calloc(1, sizeof *d);
    if (!d) return PD_ERR_NOMEM;
    *d = (pd_drain){base, NULL, name, pd_time_now(), timeout, idle, arg, 0};
    struct timeval tv = {0, 100000};
    d->timer = event_new(base, -1, EV_PERSIST, drain_cb, d);
    if (!d->timer || event_add(d->timer, &tv) != 0) {
        pd_drain_destroy(d);
        return PD_ERR_NOMEM;
    }
    *out = d;
    return PD_OK;
}

void pd_drain_destroy(pd_drain *d)
{
    if (!d) return;
    if (d->timer) event_free(d->timer);
    free(d);
}

struct pd_announcer_s {
    struct event_base *base;
    char host[256];
    int port;
    char *body;
    struct event *timer;
    pd_http_call *call;
    int ok;
};

static void announce_done(pd_http_call *c, int status, const char *body, size_t len, pd_status err, void *arg)
{
    (void)c;
    (void)body;
    (void)len;
    pd_announcer *a = arg;
    a->call = NULL;
    if (status == 200 && !a->ok) pd_info("registered with the router at %s:%d", a->host, a->port);
    if (status != 200 && a->ok)
        pd_warn("the router at %s:%d did not take our registration (%s)", a->host, a->port,
                err != PD_OK ? pd_status_str(err) : "error reply");
    a->ok = status == 200;
}

static void announce_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pd_announcer *a = arg;
    if (a->call) return;
    if (pd_http_call_start(a->base, a->host, a->port, "POST", "/admin/instances", a->body, strlen(a->body), 5, NULL,
                           announce_done, a, &a->call) != PD_OK)
        a->ok = 0;
}

pd_status pd_announcer_create(struct event_base *base, const char *router_url, const char *body, double interval,
                              pd_announcer **out)
{
    pd_announcer *a = calloc(1, sizeof *a);
    if (!a) return PD_ERR_NOMEM;
    a->base = base;
    if (pd_http_parse_hostport(router_url, a->host, sizeof a->host, &a->port) != PD_OK) {
        pd_error("--router-url '%s' is not http://host:port", router_url);
        free(a);
        return PD_ERR_INVALID;
    }
    a->body = strdup(body);
    a->timer = event_new(base, -1, EV_PERSIST, announce_cb, a);
    struct timeval tv = {(long)interval, (long)((interval - (long)interval) * 1e6)};
    if (!a->body || !a->timer || event_add(a->timer, &tv) != 0) {
        pd_announcer_destroy(a);
        return PD_ERR_NOMEM;
    }
    announce_cb(-1, 0, a);
    *out = a;
    return PD_OK;
}

void pd_announcer_destroy(pd_announcer *a)
{
    if (!a) return;
    if (a->timer) event_free(a->timer);
    pd_http_call_cancel(a->call);
    free(a->body);
    free(a);
}
