/* pdserve-router: the OpenAI-compatible front. Tokenizes and templates, validates, picks a decode instance
 * (free KV blocks, running sequences) and a prefill instance (queued prompt tokens), and relays the decode
 * stream back to the client as JSON or SSE while detokenizing incrementally. Never touches model weights. */
#ifndef RT_ROUTER_H
#define RT_ROUTER_H

#include <event2/event.h>
#include <event2/http.h>

#include "common/pd_http.h"
#include "text/txt_chat_template.h"
#include "text/txt_tokenizer.h"

typedef struct {
    char *host;
    int port;
    char *model;             /* checkpoint dir: tokenizer.json, tokenizer_config.json, config.json */
    char *tokenizer;         /* tokenizer dir (default: model) */
    char *served_model_name;
    char *prefill;           /* comma-separated host:port list */
    char *decode;            /* comma-separated host:port list */
    int max_model_len;       /* 0: smallest of the decode instances' */
    int max_tokens_limit;    /* upper bound on max_tokens (0: max_model_len) */
    uint64_t max_body;       /* request body limit */
    int max_stop;            /* stop strings per request */
    int max_n;               /* choices per request */
    double health_interval;  /* seconds between health polls */
    double request_timeout;  /* seconds without progress before a request fails */
    int max_queued;          /* requests in flight before new ones get 429 (0: unlimited) */
    int max_queued_tokens;   /* prompt tokens of choices without a first token before new ones get 429 (0: no limit) */
    char *policy;            /* least-load (default) | round-robin */
    char *api_key;           /* comma-separated keys the public API requires (router/auth.c) */
    char *api_key_file;      /* one key a line */
    char *cluster_secret_file; /* internal calls signed, registrations taken only signed (common/pd_auth.h) */
    pd_http_listen_opts listen; /* timeouts, --max-connections, TLS of the public listener */
    char *generation_config;          /* auto (the model's generation_config.json), vllm (none) or a directory */
    char *override_generation_config; /* JSON object of default sampling fields, over the above */
    char *admin_key;         /* comma-separated keys the admin routes require (default: loopback peers only) */
} rt_opts;

/* API keys (router/auth.c): from the options, or PDSERVE_API_KEY. err says why on failure. */
typedef struct rt_auth rt_auth;
pd_status rt_auth_create(const rt_opts *o, rt_auth **out, char *err, size_t errlen);
int rt_auth_keys(const rt_auth *a);
/* 1: req may go on (it carries a valid key, or none is required); 0: it was answered 401. */
int rt_auth_check(rt_auth *a, struct evhttp_request *req);
/* The same for an admin route (registration: POST /admin/instances); 0: answered 401 or 403. */
int rt_auth_admin(rt_auth *a, struct evhttp_request *req, int registration);
void rt_auth_destroy(rt_auth *a);

/* ---- instances ---- */
typedef enum { RT_PREFILL, RT_DECODE, RT_COLOCATED } rt_role;

typedef struct rt_instance {
    char addr[128];
    char host[96];
    int port;
    rt_role role;            /* as configured; a decode that reports "colocated" is colocated */
    int healthy;
    double last_ok;
    char layout[160];
    int max_model_len;
    int running, waiting, free_blocks, total_blocks;
    long queued_tokens;
    int captured[16];        /* decode: captured batch sizes, ascending */
    int n_captured;
    int inflight;            /* requests the router has sent and not finished */
    int draining;            /* reported draining or told to drain: no new work */
    int removed;             /* removed by an operator: freed once inflight reaches 0 */
    int registered;          /* added through /admin/instances (registration) rather than configured */
    char *kv_desc;           /* prefill: its KV region descriptor (decode instances watch it for failure) */
    pd_http_call *probe;
} rt_instance;

typedef struct rt_registry rt_registry;
typedef enum { RT_POLICY_LEAST_LOAD = 0, RT_POLICY_ROUND_ROBIN, RT_POLICY_BUCKET } rt_policy;
pd_status rt_policy_parse(const char *s, rt_policy *out);

pd_status rt_registry_create(struct event_base *base, const char *prefill, const char *decode, double interval,
                             rt_policy policy, rt_registry **out);
/* Adds an instance (or finds it, when the address is known: re-registration is idempotent and clears removal).
 * PD_ERR_INVALID for a malformed address. */
pd_status rt_registry_add(rt_registry *r, const char *addr, rt_role role, rt_instance **out);
rt_instance *rt_registry_find(rt_registry *r, const char *addr);
/* Stops scheduling to the instance and asks it to drain (finish in-flight work, then exit). */
void rt_registry_drain(rt_registry *r, rt_instance *in);
/* Stops scheduling to and polling the instance; it is forgotten once nothing in flight refers to it. */
void rt_registry_remove(rt_registry *r, rt_instance *in);
void rt_registry_destroy(rt_registry *r);
/* Healthy decode/colocated instance: least-loaded (more free blocks, then fewer running), or by policy round-robin,
 * or bucket-aware (the instance whose batch grows within the captured size it already pads to, then one whose
 * batch stays within its largest captured size, least-loaded among equals); NULL if none. */
rt_instance *rt_pick_decode(rt_registry *r, int tokens);
/* Healthy prefill instance with the fewest queued prompt tokens (its layout must equal layout when given),
 * other than avoid; NULL if none. */
rt_instance *rt_pick_prefill(rt_registry *r, const char *layout, const rt_instance *avoid);
int rt_registry_max_model_len(rt_registry *r);
/* Instances as a JSON array (address, role, health, load). */
cJSON *rt_registry_json(rt_registry *r);
int rt_registry_ready(rt_registry *r);

/* ---- the router ---- */
typedef struct rt_router rt_router;
pd_status rt_router_create(struct event_base *base, rt_opts *o, rt_router **out, int *bound_port);
void rt_router_destroy(rt_router *rt);

#endif
