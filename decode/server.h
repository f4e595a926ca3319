/* pdserve-decode: the decode instance. Receives KV blocks for prompts prefilled elsewhere (or prefills
 * locally with --colocated), runs continuous batching, streams tokens to the router as NDJSON. */
#ifndef DEC_SERVER_H
#define DEC_SERVER_H

#include <event2/event.h>

#include "model/mdl_serve.h"

typedef struct {
    mdl_serve_opts serve;
    char *host;
    int port;
    char *router_url;        /* register with this router (http://host:port) and keep re-registering */
    char *advertise_host;    /* the address the router reaches us at (default: --host, or 127.0.0.1) */
    double drain_timeout;    /* seconds a drain waits for requests in flight before exiting anyway */
    int colocated;          /* prefill locally too */
    char *kv_proto;         /* auto|put|am */
    double kv_wait_timeout; /* seconds an aborted request's blocks stay reserved for a transfer in flight */
    double kv_transfer_timeout; /* seconds a reservation waits for its KV before the request is given up */
} dec_opts;

typedef struct dec_server_s dec_server;

/* Loads the model, starts the engine, the KV transfer context and the HTTP server. bound_port receives the
 * port (useful with --port 0). */
pd_status dec_server_create(struct event_base *base, dec_opts *o, dec_server **out, int *bound_port);
void dec_server_destroy(dec_server *s);
/* Stops taking new requests (503 "draining", /health says so), leaves the event loop once none is in flight or
 * drain_timeout passed. The pd_run_until_signal drain callback (arg: the server). */
void dec_server_drain(void *server);

#endif
