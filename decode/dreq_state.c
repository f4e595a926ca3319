/* A decode request's lifecycle (dreq_state.h): one transition function over named events. server.c feeds it
 * what happened and carries out the actions it returns; the blocks a prefill instance may still write into are
 * never released before the transfer resolves or the wait timer fires, and every path ends in one free. */
#include "decode/dreq_state.h"

void dec_dreq_fsm_init(dec_dreq_fsm *m, int pd)
{
    *m = (dec_dreq_fsm){.state = pd ? DEC_RQ_WAIT_KV : DEC_RQ_DECODING, .pd = !!pd, .stream_open = 1};
}

static unsigned stream_error(dec_dreq_fsm *m, int status, const char *msg)
{
    if (!m->stream_open) return 0;
    m->status = status;
    m->msg = msg;
    return DEC_ACT_STREAM_ERROR;
}

/* The engine abort: from here only its DONE matters. */
static unsigned to_aborting(dec_dreq_fsm *m)
{
    unsigned a = m->wait_armed ? (unsigned)DEC_ACT_DISARM_WAIT : 0u;
    m->wait_armed = 0;
    m->state = DEC_RQ_ABORTING;
    return a | DEC_ACT_ABORT_ENGINE;
}

/* Gives the request up: at once when no write can land any more, else once the transfer resolves or the wait
 * timer fires, so a late write never lands in blocks someone else owns. */
static unsigned give_up(dec_dreq_fsm *m)
{
    if (m->state != DEC_RQ_WAIT_KV) return to_aborting(m);
    m->state = DEC_RQ_ABORT_KV;
    m->wait_armed = 1;
    return DEC_ACT_ARM_WAIT;
}

/* The KV will never arrive (or stops mattering): the router hears a retryable 503 unless the request is given up
 * already (another prefill instance may do the work); no write can land, so the engine aborts at once. */
static unsigned kv_lost(dec_dreq_fsm *m, const char *msg)
{
    if (m->state == DEC_RQ_ABORT_KV) return to_aborting(m);
    return stream_error(m, 503, msg) | to_aborting(m);
}

static unsigned engine_done(dec_dreq_fsm *m)
{
    unsigned a = (m->wait_armed ? (unsigned)DEC_ACT_DISARM_WAIT : 0u) |
                 (m->stream_open ? (unsigned)DEC_ACT_END_STREAM : 0u) | DEC_ACT_FREE;
    m->wait_armed = 0;
    m->stream_open = 0;
    m->state = DEC_RQ_DONE;
    return a;
}

/* The transfer's events: they count while the KV is awaited, and (lost, malformed) while decoding a PD request. */
static unsigned kv_event(dec_dreq_fsm *m, dec_dreq_ev ev)
{
    const int waiting = m->state == DEC_RQ_WAIT_KV, decoding = m->state == DEC_RQ_DECODING;
    if (!m->pd || !(waiting || decoding || m->state == DEC_RQ_ABORT_KV)) return 0;
    switch (ev) {
    case DEC_EV_KV_READY:
        if (decoding) return 0; /* a duplicate notice: the engine has the KV already */
        if (!waiting) return to_aborting(m);
        m->state = DEC_RQ_DECODING;
        return DEC_ACT_KV_READY;
    case DEC_EV_PEER_FAILED:
        return decoding ? 0u : kv_lost(m, "the prefill instance failed");
    case DEC_EV_KV_ABORTED:
        return kv_lost(m, "KV transfer from the prefill instance failed");
    case DEC_EV_KV_ABANDONED:
        return kv_lost(m, "the prefill instance gave the request up");
    case DEC_EV_KV_MALFORMED:
        return to_aborting(m); /* the transfer is over; nothing to retry on, no error line */
    default:
        return 0;
    }
}

unsigned dec_dreq_step(dec_dreq_fsm *m, dec_dreq_ev ev)
{
    if (m->state == DEC_RQ_DONE) return 0; /* late: the request is gone */
    switch (ev) {
    case DEC_EV_KV_READY:
    case DEC_EV_PEER_FAILED:
    case DEC_EV_KV_ABORTED:
    case DEC_EV_KV_ABANDONED:
    case DEC_EV_KV_MALFORMED:
        return kv_event(m, ev);
    case DEC_EV_KV_REFUSED:
        return m->pd && m->state == DEC_RQ_DECODING ? to_aborting(m) : 0u;
    case DEC_EV_ENGINE_DONE:
        return engine_done(m);
    case DEC_EV_CLIENT_GONE:
        m->stream_open = 0; /* nothing more can be written, whatever the state */
        return m->state == DEC_RQ_WAIT_KV || m->state == DEC_RQ_DECODING ? give_up(m) : 0u;
    case DEC_EV_DELETE:
        return m->state == DEC_RQ_WAIT_KV || m->state == DEC_RQ_DECODING ? give_up(m) : 0u;
    case DEC_EV_DELETE_UNTOUCHED: /* the prefill instance wrote nothing: nothing can land */
        return m->state == DEC_RQ_ABORTING ? 0u : to_aborting(m);
    case DEC_EV_KV_DEADLINE:
        if (m->state != DEC_RQ_WAIT_KV) return 0;
        return stream_error(m, 504, "the KV transfer from the prefill instance did not arrive in time") | give_up(m);
    case DEC_EV_KV_WAIT_TIMEOUT:
    case DEC_EV_WAIT_TIMER_FAILED:
        if (m->state != DEC_RQ_ABORT_KV || !m->wait_armed) return 0;
        m->wait_armed = 0; /* it fired, or was never armed */
        return to_aborting(m);
    case DEC_EV_NKINDS:
        break;
    }
    return 0;
}

const char *dec_dreq_state_name(dec_dreq_state s)
{
    static const char *const names[DEC_RQ_NSTATES] = {"wait_kv", "decoding", "abort_kv", "aborting", "done"};
    return (unsigned)s < DEC_RQ_NSTATES ? names[s] : "?";
}

const char *dec_dreq_ev_name(dec_dreq_ev ev)
{
    static const char *const names[DEC_EV_NKINDS] = {
        "kv_ready",   "peer_failed", "kv_aborted", "kv_abandoned",     "kv_malformed", "kv_refused",
        "engine_done", "client_gone", "delete",    "delete_untouched", "kv_deadline",  "kv_wait_timeout",
        "wait_timer_failed"};
    return (unsigned)ev < DEC_EV_NKINDS ? names[ev] : "?";
}
