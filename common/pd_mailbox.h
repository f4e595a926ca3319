/* Event-loop plumbing. A mailbox from any thread to a libevent loop: messages (copied) are queued under a mutex and delivered on
 * the loop's thread by one callback per message, woken through an eventfd. */
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
/* Loop thread; undelivered messages are dropped. Accepts NULL. */
void pd_mailbox_destroy(pd_mailbox *mb);

/* Runs base until SIGINT or SIGTERM (logged as "<name>: signal N, stopping"); SIGPIPE is ignored, since peers
 * that close sockets are reported through the event loop instead. */
void pd_run_until_signal(struct event_base *base, const char *name);

#endif
