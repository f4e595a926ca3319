/* The prefill request's state machine: one transition function over named events. What each state still holds
 * is in pf_machine's counters; settle() gives back what is no longer needed once no transfer reads it. */
#include <stddef.h>

#include "prefill/preq_state.h"

void pf_machine_init(pf_machine *m, int has_remote)
{
    *m = (pf_machine){.state = PF_COMPUTING, .engine_held = 1, .http_open = 1, .has_remote = has_remote};
}

static int finished(const pf_machine *m)
{
    return m->state == PF_FAILED || m->state == PF_DELIVERED || m->state == PF_FREED;
}

/* Once no transfer is in flight: the engine's blocks go back, a failed request's decode instance is told, and a
 * request that holds nothing any more is freed. */
static int settle(pf_machine *m)
{
    int act = 0;
    if (m->outstanding > 0 || !finished(m) || m->state == PF_FREED) return 0;
    if (m->engine_held && !m->engine_asked) {
        m->engine_asked = 1;
        act |= PF_ACT_RELEASE;
    }
    if (m->state == PF_FAILED && !m->abandon_sent && !m->dest_dead && m->has_remote) {
        m->abandon_sent = 1;
        m->outstanding++;
        act |= PF_ACT_ABANDON;
    }
    if (m->outstanding == 0 && !m->engine_held) {
        m->state = PF_FREED;
        act |= PF_ACT_FREE;
    }
    return act;
}

static int fail(pf_machine *m, int status, const char *msg)
{
    if (finished(m)) return 0; /* the first outcome stands */
    int act = PF_ACT_FAILED;
    m->state = PF_FAILED;
    m->status = status;
    m->msg = msg;
    if (m->http_open) {
        m->http_open = 0;
        act |= PF_ACT_REPLY;
    }
    if (m->outstanding > 0) act |= PF_ACT_CANCEL;
    return act;
}

/* The transfers before the notice have landed: the last one goes, with the notice after its blocks. */
static int send_last(pf_machine *m)
{
    m->state = PF_NOTIFYING;
    m->outstanding++;
    return PF_ACT_SEND_LAST;
}

static int xfer_ended(pf_machine *m)
{
    if (m->outstanding > 0) m->outstanding--;
    if (m->outstanding > 0) return 0;
    if (m->state == PF_SENDING) return send_last(m);
    if (m->state != PF_NOTIFYING) return 0;
    m->state = PF_DELIVERED; /* the notice is delivered */
    m->status = 200;
    m->msg = NULL;
    if (!m->http_open) return 0;
    m->http_open = 0;
    return PF_ACT_REPLY;
}

int pf_machine_step(pf_machine *m, pf_event ev, int status, const char *msg, int dest_dead)
{
    int act = 0;
    if (m->state == PF_FREED) return 0;
    switch (ev) {
    case PF_EV_BLOCKS:
        if (m->state == PF_COMPUTING && !m->prefilled) {
            m->outstanding++;
            act = PF_ACT_SEND_BLOCKS;
        }
        break;
    case PF_EV_PREFILLED:
        if (m->prefilled) break;
        m->prefilled = 1;
        if (m->state == PF_COMPUTING) {
            m->state = PF_SENDING;
            if (m->outstanding == 0) act = send_last(m);
        }
        break;
    case PF_EV_ENGINE_DONE:
        m->engine_held = 0;
        if (!m->prefilled) act = fail(m, status, msg);
        break;
    case PF_EV_XFER_OK:
        act = xfer_ended(m);
        break;
    case PF_EV_XFER_FAILED:
    case PF_EV_XFER_START_FAILED:
        if (dest_dead) m->dest_dead = 1;
        if (m->outstanding > 0) m->outstanding--;
        act = fail(m, status, msg);
        break;
    case PF_EV_ABANDON_DONE:
        if (m->outstanding > 0) m->outstanding--;
        break;
    case PF_EV_CLIENT_GONE:
        m->http_open = 0;
        act = fail(m, status, msg);
        break;
    case PF_EV_ABORT:
    case PF_EV_DEADLINE:
        act = fail(m, status, msg);
        break;
    }
    return act | settle(m);
}

const char *pf_state_str(pf_state s)
{
    static const char *const names[] = {"computing", "sending", "notifying", "delivered", "failed", "freed"};
    return (unsigned)s < sizeof names / sizeof *names ? names[s] : "?";
}

const char *pf_event_str(pf_event e)
{
    static const char *const names[] = {"blocks",   "prefilled",   "engine_done", "xfer_ok",   "xfer_failed",
                                        "xfer_start_failed", "abandon_done", "client_gone", "abort", "deadline"};
    return (unsigned)e < sizeof names / sizeof *names ? names[e] : "?";
}
