/* libpdinst: what every serving instance (prefill, decode, colocated) is besides its role. The process flow
 * (options, event loop, signals, drain), the model and engine, the KV transfer context and region, the HTTP
 * server with /health, /metrics and /internal/drain built in, registration with the router, the mailbox that
 * brings engine events to the loop thread, and the table of requests in flight. prefill/ and decode/ fill in
 * an inst_role and keep only their role's logic. Loop thread only, unless a function says otherwise. */
#ifndef INST_H
#define INST_H

#include <cJSON.h>
#include <pthread.h>
#include <event2/event.h>
#include <event2/http.h>

#include "common/pd_http.h"
#include "common/pd_mailbox.h"
#include "dist/dst.h"
#include "instance/inst_reqtab.h"
#include "kvtransfer/kv.h"
#include "model/mdl_serve.h"

/* The options every instance has. A role's option struct holds one of these and its own fields. */
typedef struct {
    mdl_serve_opts serve;
    char *host;              /* address to listen on (default 127.0.0.1) */
    int port;
    char *router_url;        /* register with this router (http://host:port) and keep re-registering */
    char *advertise_host;    /* the address the router reaches us at (default: --host, or 127.0.0.1) */
    double drain_timeout;    /* seconds a drain waits for requests in flight before exiting anyway */
    char *kv_proto;          /* auto|put|am */
    int data_parallel_size;  /* MPI ranks of this instance (mpirun -np N); 1: one process */
    int tensor_parallel_size;/* only 1: attention and the dense layers are replicated (docs/scaling.md) */
    int expert_parallel;     /* split the routed experts over the ranks */
    double collective_timeout; /* seconds a rank waits in a collective inside a step before the job is aborted */
    char *cluster_secret_file; /* sign internal calls and take only signed ones (common/pd_auth.h) */
    pd_http_listen_opts listen; /* timeouts and --max-connections of the listener (no TLS: docs/security.md) */
    dst *dist;               /* the ranks (not an option); NULL: one process */
} inst_opts;

typedef struct inst_s inst;

/* A resource of the role's internal API: POST path opens a request (a retryable 503 while draining), DELETE
 * path/{id} aborts the one named (the library answers 404 when there is none, else {"aborted":true} after the
 * role's abort). Any other method is a 405. */
typedef struct {
    const char *path;                                               /* "/internal/prefill" */
    void (*open)(inst *in, struct evhttp_request *req);
    void (*abort)(inst *in, inst_req *r, struct evhttp_request *req); /* req: the DELETE (its query string) */
} inst_route;

typedef struct {
    const char *name;            /* "prefill" | "decode": the log prefix */
    const char *kind;            /* "prefill" | "decode" | "colocated": /health, metrics, registration */
    const inst_route *routes;
    int n_routes;
    /* An engine event for a listed request (loop thread). hidden: with MDL_EV_PREFILLED when want_hidden, the
     * last prompt position's hidden state (hidden_size floats); NULL otherwise. */
    void (*on_event)(inst *in, inst_req *r, const mdl_event *ev, const float *hidden);
    int want_hidden;
    /* The router closed r's exchange before it ended: r->http is NULL already. */
    void (*client_gone)(inst_req *r);
    /* Frees a request still listed when the instance is destroyed (after the engine and KV context are gone). */
    void (*req_free)(inst_req *r);
    void (*health)(inst *in, cJSON *body);              /* optional: the role's fields of GET /health */
    void (*configure)(inst *in, mdl_engine_opts *eo);   /* optional: adjusts the engine options after loading */
    void *arg;                                          /* the role's own state (in->role.arg) */
    /* KV transfer. pool_in_region: the engine's KV pool lives in a region the KV context allocates, so a peer on
     * this host can put into it directly (decode); otherwise the region registers the engine's pool (prefill).
     * kv_optional: without a KV context the instance still serves (colocated). */
    int pool_in_region, kv_optional;
    kv_event_cb kv_event_cb;     /* optional: transfer events (notices, aborts, failed peers); arg: the inst. In a
                                  * multi-rank instance the other ranks' events come here too (ctx: rank 0's) */
    double kv_xfer_timeout;      /* seconds a transfer may take (0: the context's default) */
    /* optional, multi-rank: a REMOTE_KV request r the engine placed on rank `rank` > 0 holds blocks there, where
     * its KV is to be written (inst_rank_desc(in, rank) names that rank's region) */
    void (*reserved)(inst *in, inst_req *r, int rank, const int *blocks, int n);
} inst_role;

typedef struct inst_program_s inst_program;
typedef struct inst_xfer inst_xfer; /* a transfer of one request's blocks from the rank that holds them */

struct inst_s {
    struct event_base *base;
    inst_opts *o;
    inst_role role;
    mdl_model *m;
    mdl_engine *eng;
    mdl_engine_opts eo;
    mdl_serve_metrics *metrics;
    kv_context_t kv;             /* NULL when the role's KV is optional and unavailable */
    kv_region_t region;
    char *desc;                  /* our region's descriptor (peers connect with it) */
    char layout[160];            /* the engine's KV layout; both ends of a transfer must agree */
    inst_reqtab reqs;
    uint64_t next_id;            /* the last engine id handed out */
    int draining;
    struct evhttp *http;
    pd_drain *drain;
    pd_announcer *announcer;
    pd_mailbox *mb;
    size_t msg_size;
    /* multi-rank (instance/ranks.c): the other ranks' KV, reached through their agents */
    char **rank_desc;            /* [ranks] each rank's region descriptor ("" : it has none); [0] unused */
    int n_rank_desc;             /* how many ranks have said (under rank_mu) */
    pthread_mutex_t rank_mu;
    pthread_cond_t rank_cv;
    pd_mailbox *rank_mb;         /* the ranks' messages, to the loop thread (each a malloc'd copy) */
    inst_xfer *xfers;            /* transfers in flight, here or on a rank */
    uint64_t next_xid;
    int closing;                 /* shutting down: no new transfers, messages are only freed */
};

/* Loads the model, starts the engine, the KV transfer context and region (in the order role->pool_in_region
 * asks), the metrics, the HTTP server and, with --router-url, registration. bound_port receives the port. */
pd_status inst_create(struct event_base *base, inst_opts *o, const inst_role *role, inst **out, int *bound_port);
/* Stops everything in the order that keeps memory valid, frees the listed requests with role.req_free. */
void inst_destroy(inst *in);
/* Stops taking new requests (503 "draining", /health says so), stops registering, and leaves the event loop once
 * no request is listed or drain_timeout passed. The pd_run_until_signal drain callback (arg: the inst). */
void inst_drain(void *in);

/* Gives r a new engine id (never reused by this instance) and the router's id; r is not listed yet. */
void inst_req_init(inst *in, inst_req *r, const char *ext_id);
/* Lists r (r->id and r->ext_id set) and makes http its open exchange: if the router closes it first, the role's
 * client_gone runs. */
void inst_req_add(inst *in, inst_req *r, struct evhttp_request *http);
/* Takes r's exchange back from the table (no more client_gone) and returns it (NULL if none): the caller ends it. */
struct evhttp_request *inst_req_take_http(inst_req *r);
/* Unlists r and forgets its exchange. The caller frees r. */
void inst_req_remove(inst *in, inst_req *r);
inst_req *inst_req_find(const inst *in, uint64_t id);

/* The body of a POST that opens a request. */
typedef struct {
    cJSON *root;                 /* the whole body, for the role's own fields */
    const char *ext_id;          /* its "id": a non-empty string under INST_EXT_ID_LEN bytes no listed request has */
    int32_t *prompt;             /* the generation fields (mdl_serve_parse_gen, seeded by --seed) */
    int n_prompt;
    mdl_gen_params p;
} inst_open;

/* Reads and checks the body into op. On failure, *status (400, 413), *param ("id" or NULL) and err say why and op
 * holds nothing. inst_open_free(op) either way. */
pd_status inst_open_read(inst *in, struct evhttp_request *req, inst_open *op, int *status, const char **param,
                         char *err, size_t errlen);
void inst_open_free(inst_open *op);

/* ---- transfers and ranks (instance/ranks.c) -------------------------------------------------------------------- */

/* Called once per started transfer, on the loop thread, never from inside inst_xfer_start; x is freed after. */
typedef void (*inst_xfer_cb)(inst_xfer *x, pd_status st, void *arg);
typedef struct {
    int rank;                /* the rank holding the request's blocks (0 here; dst_rank_of) */
    uint64_t id;             /* the engine's request id: its blocks [from, upto) are sent */
    int from, upto;
    const int *dst;          /* [upto - from] destination block numbers */
    const char *desc;        /* the destination region's descriptor (rank > 0 imports it) */
    kv_remote_t remote;      /* rank 0: that region, imported here */
    uint64_t tag;
    const void *notice;      /* optional: delivered after every block landed */
    size_t notice_len;
    double timeout;          /* s; 0: the context's */
    inst_xfer_cb cb;
    void *arg;
} inst_xfer_params;
/* Starts the copy from the rank's own pool into the destination blocks. PD_OK: cb will run once. */
pd_status inst_xfer_start(inst *in, const inst_xfer_params *p, inst_xfer **out);
/* Ends x early: its cb runs with PD_ERR_CANCELED (or the outcome that came first). */
void inst_xfer_cancel(inst *in, inst_xfer *x);
/* The region descriptor of rank `rank` (0: in->desc). */
const char *inst_rank_desc(const inst *in, int rank);
/* The rank an engine request lives on (0 in a one-process instance). */
int inst_req_rank(const inst *in, uint64_t id);

/* Internals of the instance library shared by inst.c, ranks.c and run.c. */
void inst__kv_params(const inst_role *role, const inst_opts *o, const mdl_model *m, kv_params_t *kp);
/* rank 0, before dst_attach: the agent that hears the ranks, and the mailbox to the loop */
pd_status inst__ranks_open(inst *in);
/* rank 0, once the engines run: waits until every rank said whether its pool takes transfers */
pd_status inst__ranks_wait(inst *in);
/* shutdown: transfers still on a rank end as canceled; queued messages are freed */
void inst__ranks_close(inst *in);
/* a rank > 0: its engine, KV region and agent; serves until rank 0 stops. The exit status. */
int inst__serve_worker(const inst_program *p, dst *d);

/* A process: parses the shared and the role's options (YAML + flags), runs start on a new event loop until
 * SIGINT or SIGTERM (SIGTERM drains), then stops. Returns the exit status. */
struct inst_program_s {
    const char *name;            /* "prefill": usage and error messages */
    int default_port;
    inst_opts *opts;             /* the shared options inside the role's struct */
    const pd_opt *role_opts;     /* the role's options (pointing into the same struct) */
    int n_role_opts;
    pd_status (*start)(struct event_base *base, void *arg, inst **out, int *bound_port);
    void *arg;                   /* start's argument: the role's option struct */
    void (*role)(void *arg, inst_role *out); /* the role start runs (ranks > 0 take its KV part) */
};

int inst_main(int argc, char **argv, const inst_program *p);

#endif
