/* The prefill request's lifecycle as one state machine: named events in, the actions the server must take out.
 * Pure logic (no engine, no UCX, no HTTP), so a unit test can drive it through every order of events. The server
 * (prefill/server.c) performs the actions in the order of the pf_act bits and feeds their outcomes back as events
 * (a transfer that cannot start is PF_EV_XFER_START_FAILED). */
#ifndef PF_PREQ_STATE_H
#define PF_PREQ_STATE_H

typedef enum {
    PF_COMPUTING, /* the engine prefills; blocks of finished chunks may be in flight */
    PF_SENDING,   /* prefilled: the last blocks and the ready notice go once the earlier batches landed */
    PF_NOTIFYING, /* the batch carrying the ready notice is in flight */
    PF_DELIVERED, /* the notice landed and the router heard 200: the engine's blocks go back */
    PF_FAILED,    /* given up: transfers are cancelled, then the engine's blocks go back and the decode instance
                   * hears that no notice will come */
    PF_FREED,     /* nothing is held: the request is gone */
} pf_state;

typedef enum {
    PF_EV_BLOCKS,            /* the engine finished chunks whose blocks can go now (a transfer slot is free) */
    PF_EV_PREFILLED,         /* the engine computed the prompt and the first token */
    PF_EV_ENGINE_DONE,       /* the engine let the request go (after our release or abort, or on its own) */
    PF_EV_XFER_OK,           /* a block or notice transfer landed */
    PF_EV_XFER_FAILED,       /* a transfer failed (dest_dead: on the decode side's account; it cannot hear us) */
    PF_EV_XFER_START_FAILED, /* a transfer the machine asked for could not start */
    PF_EV_ABANDON_DONE,      /* the abandon notice's transfer ended (either way), or it could not start */
    PF_EV_CLIENT_GONE,       /* the router closed the exchange */
    PF_EV_ABORT,             /* the router abandoned the request (DELETE) */
    PF_EV_DEADLINE,          /* the decode instance's reservation expired */
} pf_event;

/* Actions, performed in this order. */
enum {
    PF_ACT_FAILED = 1 << 0,      /* the request just failed: log status/msg once */
    PF_ACT_REPLY = 1 << 1,       /* answer the router: status and msg (200: the hand-off's figures) */
    PF_ACT_CANCEL = 1 << 2,      /* cancel the transfers in flight (each ends with XFER_OK or XFER_FAILED) */
    PF_ACT_SEND_BLOCKS = 1 << 3, /* start a transfer of the finished blocks not yet sent */
    PF_ACT_SEND_LAST = 1 << 4,   /* start the last transfer: the remaining blocks, then the ready notice */
    PF_ACT_RELEASE = 1 << 5,     /* give the engine the request back: release when prefilled, else abort */
    PF_ACT_ABANDON = 1 << 6,     /* tell the decode instance no notice will come (ends with ABANDON_DONE) */
    PF_ACT_FREE = 1 << 7,        /* free the request */
};

typedef struct {
    pf_state state;
    int outstanding;   /* transfers in flight, the abandon notice included */
    int engine_held;   /* the engine has the request (until ENGINE_DONE) */
    int engine_asked;  /* RELEASE was asked */
    int prefilled;
    int http_open;     /* the router waits for the answer */
    int dest_dead;     /* a transfer failed on the decode side's account */
    int has_remote;    /* the decode instance can be told (an abandon notice has a way to go) */
    int abandon_sent;
    int status;        /* with PF_ACT_FAILED / PF_ACT_REPLY */
    const char *msg;
} pf_machine;

/* A request the engine accepted, with its exchange open. */
void pf_machine_init(pf_machine *m, int has_remote);
/* Applies ev; status and msg say why for the events that fail the request (XFER_FAILED, XFER_START_FAILED,
 * CLIENT_GONE, ABORT, DEADLINE, and ENGINE_DONE before PREFILLED); dest_dead goes with XFER_FAILED. Returns the
 * PF_ACT_* bits to perform; m->status and m->msg hold the answer for REPLY and FAILED. */
int pf_machine_step(pf_machine *m, pf_event ev, int status, const char *msg, int dest_dead);
const char *pf_state_str(pf_state s);
const char *pf_event_str(pf_event e);

#endif
