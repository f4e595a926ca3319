/* The lifecycle of one decode request as a state machine: server.c turns what happens (a KV notice, a failed
 * peer, the engine's DONE, the router's DELETE, a timer) into named events; dec_dreq_step moves the state and
 * returns the actions the driver takes (stream an error line, hand the KV over, abort, arm/disarm the KV wait
 * timer, end the stream, free). Pure logic: no libevent, no UCX, no engine calls. */
#ifndef DEC_DREQ_STATE_H
#define DEC_DREQ_STATE_H

typedef enum {
    DEC_RQ_WAIT_KV,      /* PD: blocks reserved, the prefill instance writes into them */
    DEC_RQ_DECODING,     /* the engine has the request: the KV was handed over (PD), or it prefills here (local) */
    DEC_RQ_ABORT_KV,     /* given up while the KV may still land: the blocks stay until it resolves or the wait
                          * timer fires (armed) */
    DEC_RQ_ABORTING,     /* the engine abort was sent: waiting for its DONE */
    DEC_RQ_DONE,         /* final: freed (the driver forgets the machine with the request) */
    DEC_RQ_NSTATES
} dec_dreq_state;

typedef enum {
    DEC_EV_KV_READY,         /* a well-formed ready notice: the KV landed */
    DEC_EV_PEER_FAILED,      /* the prefill instance that writes our KV failed */
    DEC_EV_KV_ABORTED,       /* the transfer was aborted */
    DEC_EV_KV_ABANDONED,     /* the prefill instance gave the request up (a notice without a first token) */
    DEC_EV_KV_MALFORMED,     /* a ready notice that does not decode or is not ours: the transfer is over */
    DEC_EV_KV_REFUSED,       /* the engine refused the KV handed to it (mdl_engine_kv_ready failed) */
    DEC_EV_ENGINE_DONE,      /* the engine's DONE event: it holds nothing for the request any more */
    DEC_EV_CLIENT_GONE,      /* the router closed the stream */
    DEC_EV_DELETE,           /* the router's DELETE */
    DEC_EV_DELETE_UNTOUCHED, /* DELETE ?kv=untouched: the prefill instance refused before writing anything */
    DEC_EV_KV_DEADLINE,      /* kv_transfer_timeout after the reservation */
    DEC_EV_KV_WAIT_TIMEOUT,  /* the wait timer fired: kv_wait_timeout after the give-up, no outcome */
    DEC_EV_WAIT_TIMER_FAILED,/* the driver could not arm the wait timer: the blocks go now */
    DEC_EV_NKINDS
} dec_dreq_ev;

/* What the driver does after a step, in this order. DEC_ACT_FREE comes only with (or after) everything else:
 * once it is done the machine is gone with the request. */
enum {
    DEC_ACT_STREAM_ERROR = 1 << 0,   /* a retryable error line: status and msg in the machine */
    DEC_ACT_DISARM_WAIT = 1 << 1,    /* disarm the wait timer (armed now) */
    DEC_ACT_KV_READY = 1 << 2,       /* hand the KV to the engine; DEC_EV_KV_REFUSED when it refuses */
    DEC_ACT_ABORT_ENGINE = 1 << 3,   /* mdl_engine_abort: its DONE follows */
    DEC_ACT_ARM_WAIT = 1 << 4,       /* arm the wait timer (kv_wait_timeout); DEC_EV_WAIT_TIMER_FAILED when it
                                      * cannot be */
    DEC_ACT_END_STREAM = 1 << 5,     /* the done line and the end of the stream (open until now) */
    DEC_ACT_FREE = 1 << 6,           /* unlist and free the request */
};

typedef struct {
    dec_dreq_state state;
    int pd;                          /* the KV comes from a prefill instance (else: local, no KV events) */
    int stream_open;                 /* the router's stream: open until the client goes or the stream ends */
    int wait_armed;                  /* the wait timer is armed (DEC_RQ_ABORT_KV only) */
    int status;                      /* DEC_ACT_STREAM_ERROR: the line's HTTP status */
    const char *msg;                 /* and its message (a static string) */
} dec_dreq_fsm;

/* A new request whose stream is open: waiting for its KV (pd) or decoding (local). */
void dec_dreq_fsm_init(dec_dreq_fsm *m, int pd);
/* Applies ev and returns the DEC_ACT_* mask to carry out. Events that do not apply to the state (late or
 * duplicate ones: a second notice, a DELETE after the client went, anything once done, KV events of a local
 * request) change nothing but the stream's state and return 0. The engine is aborted at most once, never while
 * the KV may still land unless the wait timer fired (or could not be armed); at most one error line is asked
 * for, never after the stream closed. */
unsigned dec_dreq_step(dec_dreq_fsm *m, dec_dreq_ev ev);
const char *dec_dreq_state_name(dec_dreq_state s);
const char *dec_dreq_ev_name(dec_dreq_ev ev);

#endif
