/* libpdkv progress: every UCX request in flight as a kv__op, the receiver event queue, and the worker's progress
 * with dispatch (where user callbacks run, never inside a UCX callback), driven by libevent through the worker's
 * event fd with interrupt moderation, or by a blocking wait. */
#include <errno.h>
#include <event2/event.h>
#include <poll.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "kvtransfer/kv_internal.h"

/* ---- ops: one per UCX request ---- */

kv__op *kv__op_new(kv_context_t ctx, kv__op_kind kind)
{
    kv__op *op = calloc(1, sizeof(*op));
    if (!op) return NULL;
    op->ctx = ctx;
    op->kind = kind;
    op->submitting = 1;
    kv__list_push(&ctx->ops, &op->link);
    return op;
}

static void kv__op_complete(kv__op *op, ucs_status_t status)
{
    kv__list_del(&op->link);
    switch (op->kind) {
    case KV__OP_PUT:
    case KV__OP_FLUSH:
    case KV__OP_AM_DATA:
    case KV__OP_NOTICE:
    case KV__OP_RECV_DATA:
    case KV__OP_RECV_NOTICE: op->ctx->xl->op_done(op, status); break;
    default:
        if (status != UCS_OK && status != UCS_ERR_CANCELED)
            pd_debug("kv: control op %d ended: %s", op->kind, ucs_status_string(status));
        break;
    }
    free(op->buf);
    free(op);
}

void kv__op_track(kv__op *op, ucs_status_ptr_t sp)
{
    op->submitting = 0;
    if (op->early) kv__op_complete(op, op->early_status); /* the callback ran inside the call; sp is gone */
    else if (sp == NULL) kv__op_complete(op, UCS_OK);
    else if (UCS_PTR_IS_ERR(sp)) kv__op_complete(op, UCS_PTR_STATUS(sp));
    else op->req = sp;
}

void kv__op_send_cb(void *request, ucs_status_t status, void *user_data)
{
    kv__op *op = user_data;
    op->req = NULL;
    ucp_request_free(request);
    if (op->submitting) { /* inside the UCX call that made the request: kv__op_track completes the op */
        op->early = 1;
        op->early_status = status;
        return;
    }
    kv__op_complete(op, status);
}

void kv__op_recv_cb(void *request, ucs_status_t status, size_t length, void *user_data)
{
    kv__op_send_cb(request, status, user_data);
}

/* ---- dispatch queue ---- */

void kv__queue_event(kv_context_t ctx, const kv_event *ev, void *owned_payload)
{
    kv__qev *q = calloc(1, sizeof(*q));
    if (!q) {
        pd_error("kv: out of memory queueing a receiver event (type %d, tag %llu)", ev->type,
                 (unsigned long long)ev->tag);
        free(owned_payload);
        return;
    }
    q->ev = *ev;
    q->payload = owned_payload;
    q->ev.payload = owned_payload;
    kv__list_push(&ctx->equeue, &q->qlink);
    kv__kick(ctx);
}

void kv__kick(kv_context_t ctx)
{
    if (ctx->ev_efd) event_active(ctx->ev_efd, EV_READ, 0);
}

static int kv__count_ops(kv_context_t ctx, kv_region_t region, int include_close)
{
    int n = 0;
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->ops)
    {
        kv__op *op = KV__CONTAINER(it, kv__op, link);
        if (region && op->region != region) continue;
        if (!include_close && op->kind == KV__OP_CLOSE) continue;
        n++;
    }
    return n;
}

/* Progresses until no op matching (region, include_close) remains or timeout_s passes. */
int kv__drain(kv_context_t ctx, kv_region_t region, int include_close, double timeout_s)
{
    double deadline = pd_time_now() + timeout_s;
    int n;
    while ((n = kv__count_ops(ctx, region, include_close)) > 0 && pd_time_now() < deadline) {
        kv__progress(ctx);
        if (ucp_worker_arm(ctx->worker) == UCS_OK) {
            struct pollfd pfd = {.fd = ctx->efd, .events = POLLIN};
            poll(&pfd, 1, 10);
        }
    }
    return n;
}

/* ---- progress ---- */

#define KV__ARM_TRIES 8

static void kv__tick(kv_context_t ctx, double now)
{
    kv__peers_check(ctx);
    ctx->xl->tick(ctx, now);
}

/* Runs queued work and user callbacks; returns how many user callbacks ran. */
static int kv__dispatch(kv_context_t ctx)
{
    int n = 0;
    kv__link *it, *tmp;
    while (!kv__list_empty(&ctx->hellos)) {
        kv__hello *h = KV__CONTAINER(ctx->hellos.next, kv__hello, link);
        kv__list_del(&h->link);
        kv_desc_t *d = NULL;
        kv__peer *p;
        if (!ctx->destroying && kv_desc_decode(h->desc, &d) == PD_OK) {
            if (kv__peer_get(ctx, d, 0, &p) != PD_OK)
                pd_warn("kv: cannot connect back to sender %016llx; its failures go unnoticed",
                        (unsigned long long)d->ctx_id);
        }
        kv_desc_free(d);
        free(h->desc);
        free(h);
    }
    KV__FOREACH(it, tmp, &ctx->peers)
    {
        kv__peer *p = KV__CONTAINER(it, kv__peer, link);
        if (p->failed && !p->fail_handled) kv__peer_handle_failure(p);
    }
    n += ctx->xl->dispatch(ctx);
    while (!kv__list_empty(&ctx->equeue)) {
        kv__qev *q = KV__CONTAINER(ctx->equeue.next, kv__qev, qlink);
        kv__list_del(&q->qlink);
        if (ctx->event_cb) ctx->event_cb(ctx, &q->ev, ctx->event_arg);
        n++;
        free(q->payload);
        free(q);
    }
    return n;
}

int kv__progress(kv_context_t ctx)
{
    int n = 0, active = 0;
    for (;;) {
        while (ucp_worker_progress(ctx->worker)) active = 1;
        double now = pd_time_now();
        if (now >= ctx->next_tick) {
            ctx->next_tick = now + ctx->tick;
            kv__tick(ctx, now);
        }
        int d = kv__dispatch(ctx);
        n += d;
        if (d || active) ctx->last_active = now;
        if (!d && kv__list_empty(&ctx->xqueue) && kv__list_empty(&ctx->equeue)) break;
    }
    return n;
}

/* Interrupt moderation. A sleeping worker is woken by its peers: over shared memory each message to an
 * armed worker costs its sender a signal (a datagram on a unix socket) and this process a wake-up. While
 * messages keep coming (the worker found work within the last `linger`), the worker stays unarmed and
 * is re-polled every `nap` instead, so a stream of notices costs neither side a syscall per notice; once
 * `linger` passes without work, it is armed and sleeps on its event fd as before. */
static int kv__lingering(kv_context_t ctx, double now) { return now - ctx->last_active < ctx->linger; }

/* The nap timer: periodic every `nap` while on, so a stream of naps costs no timerfd_settime each. */
static void kv__nap_timer(kv_context_t ctx, int on)
{
    if (ctx->napping == on) return;
    long ns = on ? (long)(ctx->nap * 1e9) : 0;
    struct itimerspec its = {.it_value = {.tv_sec = 0, .tv_nsec = ns}, .it_interval = {.tv_sec = 0, .tv_nsec = ns}};
    if (timerfd_settime(ctx->tfd, 0, &its, NULL) != 0) {
        pd_error("kv: timerfd_settime failed (%s); arming the worker at once from now on", strerror(errno));
        ctx->linger = 0;
        return;
    }
    ctx->napping = on;
}

/* Loop side: 1 if the worker stays unarmed for now. While lingering the event fd is left out of the loop
 * (unarmed, it stays readable from the signal that woke us, which would spin the loop: measured, the
 * receiver's CPU per byte x3.5) and the nap timer calls kv__loop_cb instead. */
static int kv__linger(kv_context_t ctx)
{
    if (ctx->tfd < 0) return 0;
    if (!kv__lingering(ctx, pd_time_now())) {
        kv__nap_timer(ctx, 0);
        return 0;
    }
    kv__nap_timer(ctx, 1);
    if (!ctx->napping) return 0;
    if (ctx->efd_watched) {
        event_del(ctx->ev_efd);
        ctx->efd_watched = 0;
    }
    return 1;
}

static void kv__watch_efd(kv_context_t ctx)
{
    if (ctx->efd_watched) return;
    if (event_add(ctx->ev_efd, NULL) == 0) ctx->efd_watched = 1;
    else pd_error("kv: cannot add the worker's event fd back to the event loop");
}

/* Progress until the worker can be armed. A worker that stays busy (seen after a shared-memory peer was
 * killed in the middle of a message) is re-polled from a 1 ms timer instead of spinning here, so the
 * rest of the loop (signals, timers, other fds) keeps running. */
static void kv__loop_cb(evutil_socket_t fd, short what, void *arg)
{
    kv_context_t ctx = arg;
    for (int tries = 0; tries < KV__ARM_TRIES; tries++) {
        kv__progress(ctx);
        if (kv__linger(ctx)) return;
        ucs_status_t st = ucp_worker_arm(ctx->worker);
        if (st == UCS_OK) {
            kv__watch_efd(ctx);
            return;
        }
        if (st != UCS_ERR_BUSY) {
            pd_error("kv: ucp_worker_arm failed: %s", ucs_status_string(st));
            break;
        }
    }
    kv__watch_efd(ctx);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 1000};
    evtimer_add(ctx->ev_retry, &tv);
}

static void kv__nap_cb(evutil_socket_t fd, short what, void *arg)
{
    uint64_t expirations;
    if (read(fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        pd_error("kv: reading the nap timer failed: %s", strerror(errno));
    kv__loop_cb(fd, what, arg);
}

pd_status kv_context_attach(kv_context_t ctx, struct event_base *base)
{
    if (!ctx || !base || ctx->base) return PD_ERR_INVALID;
    ctx->ev_efd = event_new(base, ctx->efd, EV_READ | EV_PERSIST, kv__loop_cb, ctx);
    ctx->ev_tick = event_new(base, -1, EV_PERSIST, kv__loop_cb, ctx);
    ctx->ev_retry = evtimer_new(base, kv__loop_cb, ctx);
    if (!ctx->ev_efd || !ctx->ev_tick || !ctx->ev_retry) goto free_events;
    if (ctx->linger > 0) {
        ctx->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (ctx->tfd < 0) pd_warn("kv: timerfd_create failed (%s); the worker is armed at once", strerror(errno));
        if (ctx->tfd >= 0 && !(ctx->ev_nap = event_new(base, ctx->tfd, EV_READ | EV_PERSIST, kv__nap_cb, ctx)))
            goto free_events;
    }
    struct timeval tv = {.tv_sec = (long)ctx->tick, .tv_usec = (long)((ctx->tick - (long)ctx->tick) * 1e6)};
    if (event_add(ctx->ev_efd, NULL) != 0 || event_add(ctx->ev_tick, &tv) != 0 ||
        (ctx->ev_nap && event_add(ctx->ev_nap, NULL) != 0))
        goto free_events;
    ctx->efd_watched = 1;
    ctx->base = base;
    event_active(ctx->ev_efd, EV_READ, 0);
    return PD_OK;

free_events:
    pd_error("kv: cannot add the worker's event fd to the event loop");
    if (ctx->ev_efd) event_free(ctx->ev_efd);
    if (ctx->ev_tick) event_free(ctx->ev_tick);
    if (ctx->ev_retry) event_free(ctx->ev_retry);
    if (ctx->ev_nap) event_free(ctx->ev_nap);
    if (ctx->tfd >= 0) close(ctx->tfd);
    ctx->tfd = -1;
    ctx->ev_efd = ctx->ev_tick = ctx->ev_retry = ctx->ev_nap = NULL;
    return PD_ERR_INTERNAL;
}

pd_status kv_progress_wait(kv_context_t ctx, double timeout_s)
{
    double deadline = pd_time_now() + timeout_s;
    int busy = 0;
    for (;;) {
        if (kv__progress(ctx) > 0) return PD_OK;
        double now = pd_time_now();
        if (now >= deadline) return PD_ERR_TIMEOUT;
        if (kv__lingering(ctx, now)) {
            double nap = PD_MIN(ctx->nap, deadline - now);
            struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(nap * 1e9)};
            nanosleep(&ts, NULL);
            continue;
        }
        ucs_status_t st = ucp_worker_arm(ctx->worker);
        if (st == UCS_ERR_BUSY && ++busy < KV__ARM_TRIES) continue;
        double until = PD_MIN(deadline, ctx->next_tick);
        int ms = until > now ? (int)((until - now) * 1000.0) + 1 : 0;
        if (st == UCS_ERR_BUSY) {
            ms = PD_MIN(ms, 1);
            st = UCS_OK;
        }
        busy = 0;
        if (st != UCS_OK) {
            pd_error("kv: ucp_worker_arm failed: %s", ucs_status_string(st));
            ms = PD_MIN(ms, 1);
        }
        struct pollfd pfd = {.fd = ctx->efd, .events = POLLIN};
        if (poll(&pfd, 1, ms) < 0 && errno != EINTR) {
            pd_error("kv: poll on the worker's event fd failed: %s", strerror(errno));
            return PD_ERR_IO;
        }
    }
}
