/* Event-loop plumbing. A mailbox from any thread to a libevent loop: messages (copied) are queued under a mutex
 * and delivered on the loop's thread by one callback per message, woken through an eventfd. */
#ifndef PD_MAILBOX_H
#define PD_MAILBOX_H

#include <event2/event.h>

#include "common/pd_common.h"

typedef struct pd_mailbox_s pd_mailbox;
typedef void (*pd_mailbox_cb)(void *msg, void *arg);

/* msg_size: bytes of every message. */
pd_status pd_mailbox_create(struct event_base *base, size_t msg_size, pd_mailbox_cb cb, void *arg, pd_mailbox **out);
/* Any thread. Copies msg. PD_ERR_NOMEM when the queue cannot grow (the message is dropped). */
pd_status pd_mailbox_post(pd_mailbox *mb, const void *msg);
/* Loop thread: delivers every queued message now (before a destroy, when messages own memory). Accepts NULL. */
void pd_mailbox_flush(pd_mailbox *mb);
/* Loop thread; undelivered messages are dropped. Accepts NULL. */
void pd_mailbox_destroy(pd_mailbox *mb);

/* Runs base until SIGINT or SIGTERM; SIGPIPE is ignored, since peers that close sockets are reported through the
 * event loop instead. With drain_cb, the first SIGTERM calls it instead (the server stops taking work and leaves
 * the loop once idle); SIGINT or a second SIGTERM stop at once. */
void pd_run_until_signal(struct event_base *base, const char *name, void (*drain_cb)(void *), void *arg);
/* A server process's main loop: prints "READY <port>" on stdout (what launchers and tests wait for), then
 * pd_run_until_signal. */
void pd_serve_until_signal(struct event_base *base, const char *name, int port, void (*drain_cb)(void *), void *arg);

/* Draining: calls idle(arg) every 100 ms; once it returns non-zero, waits (at most PD_DRAIN_FLUSH_GRACE seconds)
 * for replies libevent has not finished writing (pd_http_replies_unflushed), then leaves the loop; or leaves after
 * timeout seconds (logged as "<name>: ..."). */
#define PD_DRAIN_FLUSH_GRACE 2.0
typedef struct pd_drain_s pd_drain;
pd_status pd_drain_start(struct event_base *base, const char *name, double timeout, int (*idle)(void *), void *arg,
                         pd_drain **out);
void pd_drain_destroy(pd_drain *d);

/* Announces an instance to a router: POSTs body to url's /admin/instances now and every interval seconds
 * (registration is idempotent, so a restarted router learns its instances again). */
typedef struct pd_announcer_s pd_announcer;
pd_status pd_announcer_create(struct event_base *base, const char *router_url, const char *body, double interval,
                              pd_announcer **out);
void pd_announcer_destroy(pd_announcer *a);

#endif
