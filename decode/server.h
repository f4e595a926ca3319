/* pdserve-decode: the decode instance. Receives KV blocks for prompts prefilled elsewhere (or prefills
 * locally with --colocated), runs continuous batching, streams tokens to the router as NDJSON. */
#ifndef DEC_SERVER_H
#define DEC_SERVER_H

#include "instance/inst.h"

typedef struct {
    inst_opts inst;             /* what every instance has */
    int colocated;              /* prefill locally too */
    double kv_wait_timeout;     /* seconds an aborted request's blocks stay reserved for a transfer in flight */
    double kv_transfer_timeout; /* seconds a reservation waits for its KV before the request is given up */
} dec_opts;

/* The inst_program start function: the decode role on an instance (arg: the dec_opts). */
/* The role inst_create runs (ranks > 0 take its KV part). */
void dec_role(void *arg, inst_role *role);
pd_status dec_start(struct event_base *base, void *arg, inst **out, int *bound_port);

#endif
