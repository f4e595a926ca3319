/* pdserve-prefill: the prefill instance. Batches prompts up to the token budget (chunked when longer), runs
 * the model and its MTP layer, samples the first token, writes each finished KV block into the decode
 * instance's reserved blocks as chunks complete, then sends the ready notice after the data. */
#ifndef PF_SERVER_H
#define PF_SERVER_H

#include "instance/inst.h"

typedef struct {
    inst_opts inst;          /* what every instance has */
    double kv_xfer_timeout;  /* seconds a transfer may take */
} pf_opts;

/* The inst_program start function: the prefill role on an instance (arg: the pf_opts). */
/* The role inst_create runs (ranks > 0 take its KV part). */
void pf_role(void *arg, inst_role *role);
pd_status pf_start(struct event_base *base, void *arg, inst **out, int *bound_port);

#endif
