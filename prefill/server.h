/* pdserve-prefill: the prefill instance. Batches prompts up to the token budget (chunked when longer), runs
 * the model and its MTP layer, samples the first token, writes each finished KV block into the decode
 * instance's reserved blocks as chunks complete, then sends the ready notice after the data. */
#ifndef PF_SERVER_H
#define PF_SERVER_H

#include <event2/event.h>

#include "model/mdl_serve.h"

typedef struct {
    mdl_serve_opts serve;
    char *host;
    int port;
    char *router_url;        /* register with this router (http://host:port) and keep re-registering */
    char *advertise_host;    /* the address the router reaches us at (default: --host, or 127.0.0.1) */
    double drain_timeout;    /* seconds a drain waits for requests in flight before exiting anyway */
    char *kv_proto;          /* auto|put|am */
    double kv_xfer_timeout;  /* seconds a transfer may take */
} pf_opts;

typedef struct pf_server_s pf_server;

pd_status pf_server_create(struct event_base *base, pf_opts *o, pf_server **out, int *bound_port);
void pf_server_destroy(pf_server *s);
/* Stops taking new requests (503 "draining", /health says so), leaves the event loop once none is in flight or
 * drain_timeout passed. The pd_run_until_signal drain callback (arg: the server). */
void pf_server_drain(void *server);

#endif
