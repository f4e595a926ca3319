/* A choice's lifecycle (rt_choice.h): one transition function over named events. The driver (relay.c, or a test)
 * feeds it what happened and carries out the actions it returns; every way to a final state releases the calls
 * held then and reports once (except when the request itself stopped the choice: abort, client gone). */
#include <stdio.h>

#include "router/rt_choice.h"

void rt_choice_fsm_init(rt_choice_fsm *m)
{
    *m = (rt_choice_fsm){.state = RT_CH_IDLE};
}

int rt_choice_fsm_final(const rt_choice_fsm *m)
{
    return m->state == RT_CH_DONE || m->state == RT_CH_FAILED;
}

int rt_choice_fsm_live(const rt_choice_fsm *m)
{
    return (m->state == RT_CH_OPENING || m->state == RT_CH_PREFILLING || m->state == RT_CH_DECODING) &&
           (m->held & RT_HELD_DECODE);
}

/* Cancels what is held; an untouched reservation is released on the decode instance before its call goes. */
static unsigned release_all(rt_choice_fsm *m)
{
    unsigned a = 0;
    if (m->held & RT_HELD_DECODE) a |= RT_ACT_CANCEL_DECODE | (m->kv_untouched ? RT_ACT_RELEASE_KV : 0u);
    if (m->held & RT_HELD_PREFILL) a |= RT_ACT_CANCEL_PREFILL;
    m->held = 0;
    return a;
}

static void set_failure(rt_choice_fsm *m, int status, const char *msg)
{
    m->status = status;
    snprintf(m->msg, sizeof m->msg, "%s", msg ? msg : "");
}

static unsigned to_done(rt_choice_fsm *m, const char *finish, int report)
{
    m->state = RT_CH_DONE;
    m->finish = finish;
    return release_all(m) | (report ? (unsigned)RT_ACT_REPORT : 0u);
}

static unsigned to_failed(rt_choice_fsm *m, int status, const char *msg)
{
    m->state = RT_CH_FAILED;
    m->finish = "error";
    set_failure(m, status, msg);
    return release_all(m) | RT_ACT_REPORT;
}

/* A failure before any token reached the client may be retried once on another prefill instance. */
static unsigned retry_or_fail(rt_choice_fsm *m, const rt_choice_event *ev)
{
    int may = (m->state == RT_CH_OPENING || m->state == RT_CH_PREFILLING) && m->retries < RT_CHOICE_MAX_RETRIES;
    if (!ev->retryable || !may) return to_failed(m, ev->status, ev->msg);
    m->state = RT_CH_RETRYING;
    set_failure(m, ev->status, ev->msg); /* stands if the retry is refused */
    unsigned a = release_all(m);
    m->kv_untouched = 0;
    return a | RT_ACT_RETRY;
}

unsigned rt_choice_step(rt_choice_fsm *m, const rt_choice_event *ev)
{
    if (rt_choice_fsm_final(m)) return 0; /* late: a reply or a line after the end */
    const int line = rt_choice_fsm_live(m); /* decode lines count only while the stream is listened to */
    switch (ev->kind) {
    case RT_EV_OPENED:
        if (m->state != RT_CH_IDLE) return 0;
        m->held |= RT_HELD_DECODE;
        m->state = RT_CH_OPENING;
        return 0;
    case RT_EV_RESERVED:
        return line && m->state == RT_CH_OPENING ? (unsigned)RT_ACT_START_PREFILL : 0u;
    case RT_EV_PREFILL_STARTED:
        if (m->state != RT_CH_OPENING || (m->held & RT_HELD_PREFILL)) return 0;
        m->held |= RT_HELD_PREFILL;
        m->state = RT_CH_PREFILLING;
        return 0;
    case RT_EV_TOKEN:
        if (line && ev->n > 0) m->state = RT_CH_DECODING;
        return 0;
    case RT_EV_STOPPED:
        return line ? to_done(m, "stop", 1) : 0u;
    case RT_EV_DECODE_DONE:
        if (!line) return 0;
        if (!(m->held & RT_HELD_PREFILL)) return to_done(m, ev->finish, 1);
        m->state = RT_CH_FINISHING; /* the prefill reply (with its timings) follows shortly */
        m->pending = ev->finish;
        return 0;
    case RT_EV_DECODE_ERROR:
        return line ? retry_or_fail(m, ev) : 0u;
    case RT_EV_DECODE_CLOSED:
        if (!(m->held & RT_HELD_DECODE)) return 0;
        m->held &= ~(unsigned)RT_HELD_DECODE;
        return m->state == RT_CH_FINISHING ? 0u : to_failed(m, ev->status, ev->msg);
    case RT_EV_PREFILL_OK:
    case RT_EV_PREFILL_FAILED:
        if (!(m->held & RT_HELD_PREFILL)) return 0;
        m->held &= ~(unsigned)RT_HELD_PREFILL;
        if (m->state == RT_CH_FINISHING) return to_done(m, m->pending, 1); /* decode was done already */
        if (ev->kind == RT_EV_PREFILL_OK) return 0;
        m->kv_untouched = ev->kv_untouched;
        return retry_or_fail(m, ev);
    case RT_EV_FAIL:
    case RT_EV_TIMEOUT:
        return to_failed(m, ev->status, ev->msg);
    case RT_EV_ABORT:
    case RT_EV_CLIENT_GONE:
        return to_done(m, "abort", 0);
    case RT_EV_RETRY:
        if (m->state != RT_CH_RETRYING) return 0;
        m->state = RT_CH_IDLE;
        m->retries++;
        set_failure(m, 0, "");
        return 0;
    case RT_EV_RETRY_REFUSED:
        if (m->state != RT_CH_RETRYING) return 0;
        m->state = RT_CH_FAILED;
        m->finish = "error";
        return RT_ACT_REPORT;
    case RT_EV_NKINDS:
        break;
    }
    return 0;
}

const char *rt_choice_state_name(rt_choice_state s)
{
    static const char *const names[RT_CH_NSTATES] = {"idle",     "opening",  "prefilling", "decoding",
                                                     "finishing", "retrying", "done",       "failed"};
    return (unsigned)s < RT_CH_NSTATES ? names[s] : "?";
}

const char *rt_choice_ev_name(rt_choice_ev_kind k)
{
    static const char *const names[RT_EV_NKINDS] = {
        "opened",        "reserved", "prefill_started", "token",      "stopped",     "decode_done",
        "decode_error",  "decode_closed", "prefill_ok", "prefill_failed", "fail",    "timeout",
        "abort",         "client_gone",   "retry",      "retry_refused"};
    return (unsigned)k < RT_EV_NKINDS ? names[k] : "?";
}
