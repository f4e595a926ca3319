/* The lifecycle of one choice as a state machine: relay.c and api.c turn what happens (a decode line, a prefill
 * reply, a timeout, a client gone) into named events; rt_choice_step moves the state and returns the actions the
 * driver takes (start the prefill call, cancel calls, release a reservation, retry, report). No I/O, no sockets. */
#ifndef RT_CHOICE_H
#define RT_CHOICE_H

typedef enum {
    RT_CH_IDLE,                   /* not started, or a retry's new attempt not opened yet */
    RT_CH_OPENING,                /* the decode call is open; waiting for "reserved" (PD) or tokens (colocated) */
    RT_CH_PREFILLING,             /* PD: the prefill call was started; no token yet (the choice may still retry) */
    RT_CH_DECODING,               /* tokens came: no retry any more */
    RT_CH_FINISHING,              /* the decode finished while the prefill reply (with its timings) is still out */
    RT_CH_RETRYING,               /* the failed attempt is released; the driver places it again or refuses */
    RT_CH_DONE,                   /* final: finished ("stop", "length", "abort") */
    RT_CH_FAILED,                 /* final: failed with a status and a message */
    RT_CH_NSTATES
} rt_choice_state;

typedef enum {
    RT_EV_OPENED,                 /* the driver started the decode call (IDLE -> OPENING) */
    RT_EV_RESERVED,               /* decode line "reserved": the KV target for a prefill instance */
    RT_EV_PREFILL_STARTED,        /* the driver started the prefill call it was asked for */
    RT_EV_TOKEN,                  /* decode line "token" with n ids */
    RT_EV_STOPPED,                /* a stop string ended the text */
    RT_EV_DECODE_DONE,            /* decode line "done" with finish ("stop", "length", "abort") */
    RT_EV_DECODE_ERROR,           /* decode line "error": status, msg, retryable */
    RT_EV_DECODE_CLOSED,          /* the decode call ended (on its own): status, msg used when that is a failure */
    RT_EV_PREFILL_OK,             /* the prefill call replied 200 */
    RT_EV_PREFILL_FAILED,         /* the prefill call failed: status, msg, retryable, kv_untouched */
    RT_EV_FAIL,                   /* a failure on the router's side (out of memory, no instance, a malformed line) */
    RT_EV_TIMEOUT,                /* the request made no progress for request_timeout: status, msg */
    RT_EV_ABORT,                  /* a sibling choice failed the request: stop, nothing to report */
    RT_EV_CLIENT_GONE,            /* the client went away (or the router shuts down): stop, nothing to report */
    RT_EV_RETRY,                  /* the driver found another prefill instance: a new attempt starts (-> IDLE) */
    RT_EV_RETRY_REFUSED,          /* the driver found none: the failure that caused the retry stands */
    RT_EV_NKINDS
} rt_choice_ev_kind;

typedef struct {
    rt_choice_ev_kind kind;
    int n;                        /* TOKEN: ids in the line */
    int status;                   /* DECODE_ERROR, DECODE_CLOSED, PREFILL_FAILED, FAIL, TIMEOUT: the HTTP status */
    const char *msg;              /* the same events: why (copied) */
    int retryable;                /* DECODE_ERROR, PREFILL_FAILED: another prefill instance may succeed */
    int kv_untouched;             /* PREFILL_FAILED: the prefill instance refused before writing the KV */
    const char *finish;           /* DECODE_DONE: "stop", "length" or "abort" (a static string) */
} rt_choice_event;

/* What the driver does after a step, in this order; RT_ACT_RETRY and RT_ACT_REPORT come last and never together
 * (the report may free the choice). */
enum {
    RT_ACT_START_PREFILL = 1 << 0, /* start the prefill call; then PREFILL_STARTED, or FAIL when it cannot */
    RT_ACT_RELEASE_KV = 1 << 1,    /* tell the decode instance its reservation is untouched (frees it at once) */
    RT_ACT_CANCEL_DECODE = 1 << 2, /* cancel the decode call */
    RT_ACT_CANCEL_PREFILL = 1 << 3,/* cancel the prefill call */
    RT_ACT_RETRY = 1 << 4,         /* place the choice again: then RETRY (and OPENED or FAIL), or RETRY_REFUSED */
    RT_ACT_REPORT = 1 << 5,        /* the choice is final: tell its request (once per choice) */
};

/* The resources a choice holds, released exactly once by a cancel action or by the call ending on its own. */
enum { RT_HELD_DECODE = 1 << 0, RT_HELD_PREFILL = 1 << 1 };

#define RT_CHOICE_MAX_RETRIES 1

typedef struct {
    rt_choice_state state;
    unsigned held;                /* RT_HELD_*: the calls open now */
    int retries;                  /* attempts after the first */
    int kv_untouched;             /* the failed prefill did not write: the decode reservation may go at once */
    const char *finish;           /* final: "stop", "length", "abort" or "error"; NULL before */
    const char *pending;          /* FINISHING: the decode's finish reason */
    int status;                   /* FAILED (or RETRYING: the failure if the retry is refused): HTTP status */
    char msg[256];
} rt_choice_fsm;

/* A machine in IDLE that holds nothing. */
void rt_choice_fsm_init(rt_choice_fsm *m);
/* Applies ev and returns the RT_ACT_* mask to carry out. Events that do not apply to the state (late or duplicate
 * ones: a reply after a cancel, anything after a final state) change nothing and return 0. */
unsigned rt_choice_step(rt_choice_fsm *m, const rt_choice_event *ev);
/* DONE or FAILED. */
int rt_choice_fsm_final(const rt_choice_fsm *m);
/* The decode stream is listened to: OPENING, PREFILLING or DECODING with the decode call open. */
int rt_choice_fsm_live(const rt_choice_fsm *m);
const char *rt_choice_state_name(rt_choice_state s);
const char *rt_choice_ev_name(rt_choice_ev_kind k);

#endif
