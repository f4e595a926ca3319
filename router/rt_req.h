/* Router-internal: a client request and its choices (one per prompt x n), shared by api.c (parsing, the
 * OpenAI response shapes) and relay.c (each choice's decode/prefill calls and its text pipeline). */
#ifndef RT_REQ_H
#define RT_REQ_H

#include <cJSON.h>

#include "proto/pr_gen.h"
#include "router/rt_choice.h"
#include "router/router.h"

#define RT_MAX_STOP 16

/* The router's Prometheus families (GET /metrics); the registry takes families from other components too. */
typedef struct {
    pd_metrics *reg;
    pd_metric *requests, *rejected, *failed, *running, *prompt_tokens, *gen_tokens, *finished, *errors, *retries;
    pd_metric *ttft, *itl, *e2e, *queue, *prefill, *transfer, *decode;
    pd_metric *inst_healthy, *inst_running, *inst_waiting, *inst_kv_usage, *inst_free_blocks, *inst_queued,
        *inst_inflight;
} rt_metrics;

typedef struct rt_stats rt_stats;

/* Default sampling for requests that leave a field out, as vLLM takes them from the model's generation_config.json
 * (--generation-config): NAN fields keep the API's defaults (temperature 1, top_p 1, top_k off, min_p 0,
 * repetition_penalty 1). */
typedef struct {
    double temperature, top_p, top_k, min_p, repetition_penalty;
} rt_sampling_defaults;

struct rt_router {
    struct event_base *base;
    struct evhttp *http;
    rt_opts *o;
    rt_registry *reg;
    txt_tokenizer tok;
    txt_chat_template tmpl;       /* NULL when the checkpoint has none */
    int vocab_size;               /* the model's (config.json), >= the tokenizer's */
    uint64_t next_id;
    struct rt_req *reqs;
    rt_metrics m;
    rt_stats *stats;              /* recent latencies, instance scrapes: /admin/stats and /dashboard */
    rt_auth *auth;                /* the public API's keys */
    rt_sampling_defaults defaults; /* for fields a request leaves out (the model's generation_config.json) */
};

typedef struct rt_req rt_req;
typedef struct rt_choice rt_choice;

/* What relay.c reports to a choice's owner (api.c: its request), set by rt_choice_start; called on the loop thread,
 * never re-entrantly. */
typedef struct {
    /* Released text (either part may be empty) and the tokens' logprob entries (an array the callee owns, or NULL).
     * PD_ERR_NOMEM when the text could not be kept: the choice fails. */
    pd_status (*delta_cb)(void *arg, rt_choice *c, const char *reasoning, size_t rlen, const char *content,
                          size_t clen, cJSON *logprobs);
    /* The choice is final: exactly once, except when the owner stopped it (rt_choice_cancel, rt_choice_abort). May
     * free the choice. */
    void (*done_cb)(void *arg, rt_choice *c);
    /* A line came from the decode instance: the request makes progress. */
    void (*progress_cb)(void *arg, rt_choice *c);
    void *arg;
} rt_choice_cbs;

/* A choice's upstream: the instances that serve it and its calls to them (relay.c). */
typedef struct {
    rt_instance *d, *p;
    rt_instance *failed_p;        /* a prefill instance that failed this choice (not picked again) */
    pd_http_call *d_call, *p_call;
    char used[160];               /* "P>D" addresses of the instances that served it, for the request log */
} rt_choice_up;

/* A choice's text pipeline: token ids -> bytes (detok) -> stop strings and reasoning split (text.c) -> deltas. */
typedef struct {
    txt_detok detok;
    struct rt_text *text;
} rt_choice_txt;

/* What a choice produced, for the response (api.c). */
typedef struct {
    pd_buf content, reasoning;    /* accumulated (non-stream) */
    cJSON *lp_tokens;             /* logprob entries (array), NULL when not requested */
    long lp_offset;               /* completions' text_offset of the next logprob entry (characters) */
    int n_gen;                    /* tokens generated */
    char stop_str[256];           /* the stop string that ended it, if any */
    int stop_token;               /* the stop token that ended it, or -1 */
} rt_choice_out;

/* A choice's timings (seconds): its token lines as seen here, its phases as the instances report them. */
typedef struct {
    double t_first, t_last;       /* first and latest token line (pd_time_now) */
    double queue, prefill, transfer, decode;
    double p_queue;               /* the prefill instance's queue time (PD) */
} rt_choice_times;

struct rt_choice {
    rt_req *req;
    int index;
    const int32_t *prompt;        /* points into req->prompts */
    int n_prompt;
    uint64_t seed;
    int has_seed;
    rt_choice_fsm st;             /* its lifecycle (rt_choice.h): state, calls held, retries, finish or failure */
    rt_choice_up up;
    rt_choice_txt txt;
    rt_choice_out out;
    rt_choice_times tm;
    rt_choice_cbs cbs;            /* its owner's callbacks (rt_choice_start) */
};

struct rt_req {
    rt_router *rt;
    struct evhttp_request *http;  /* NULL once the client is gone */
    char id[48];
    long created;
    int chat, stream, include_usage;
    int32_t *prompts;             /* all prompts back to back */
    int n_prompts;
    int prompt_tokens;            /* sum over distinct prompts */
    rt_choice *ch;
    int n_ch, n_done;
    int max_tokens, min_tokens, ignore_eos;
    int32_t stop_ids[PR_MAX_STOP_IDS];
    int n_stop_ids;
    char *stops[RT_MAX_STOP];
    int n_stops;
    size_t max_stop_len;
    int logprobs;                 /* completions: top alternatives (0..20) with tokens; -1: off */
    int chat_logprobs;            /* chat: logprobs requested */
    int think;                    /* the prompt opened a <think> block */
    cJSON *sampling;              /* internal sampling object (without seed; pr_gen_encode adds a choice's) */
    int sse_started;
    int error_sent;
    double t0;
    struct event *timer;          /* no progress for request_timeout: fail */
    struct rt_req *next;
};

/* request.c: a completions / chat completions body -> a request, or an OpenAI-shaped error. No HTTP. */
#define RT_MAX_PROMPTS 64         /* prompts in one completions request */
#define RT_MAX_JSON_DEPTH 64      /* nesting of arrays and objects in a body; the body object is level 1 */
#define RT_MAX_LOGIT_BIAS PR_MAX_LOGIT_BIAS /* logit_bias entries a request may give (the pools' limit) */

/* Fills d from `source` ("auto": <model_dir>/generation_config.json if there is one; "vllm": none; else a directory
 * holding generation_config.json) and then the JSON object `override` (NULL: none), whose keys must be the five
 * fields. Values out of the API's ranges are refused. PD_OK, or PD_ERR_INVALID / PD_ERR_IO with err naming the file
 * or option and the key. */
pd_status rt_sampling_defaults_load(const char *model_dir, const char *source, const char *override,
                                    rt_sampling_defaults *d, char *err, size_t errlen);
/* "temperature=0.6 top_p=0.95" (the fields set), for the log; "" when none is. */
void rt_sampling_defaults_str(const rt_sampling_defaults *d, char *buf, size_t n);

typedef struct {
    txt_tokenizer tok;
    txt_chat_template tmpl;       /* NULL: chat requests are refused (400) */
    const rt_sampling_defaults *defaults; /* NULL: the API's */
    const char *served_model_name;
    int vocab_size;               /* token ids are in [0, vocab_size) */
    int max_model_len;            /* prompt + max_tokens; <= 0: no healthy decode instance (503) */
    int max_tokens_limit;         /* largest max_tokens (0: only max_model_len bounds it) */
    int max_stop;                 /* stop strings per request, <= RT_MAX_STOP */
    int max_n;                    /* largest n */
    size_t max_body;              /* bytes; longer bodies get 413 */
    int max_depth;                /* nesting levels (RT_MAX_JSON_DEPTH) */
} rt_limits;

typedef struct {
    int status; /* HTTP status: 400, 413, 404 (a model not served); 503 when max_model_len <= 0 or out of memory */
    const char *type;             /* OpenAI error type for status (pd_http_error_type) */
    char param[64];               /* the offending field; "" when the body as a whole is at fault */
    char msg[512];                /* never empty */
} rt_error;

/* Parses and validates len bytes (any bytes: need not be NUL-terminated, valid UTF-8 or JSON) as a completions
 * (chat 0) or chat completions (chat 1) body. PD_OK: *out is a request with its prompts tokenized, its choices
 * (prompt x n) laid out and its sampling object built, attached to no router and no client (free it with
 * rt_request_free until it is). PD_ERR_INVALID: *err says why. Reads the tokenizer and template, never writes
 * them; does no I/O. */
pd_status rt_request_parse(const char *body, size_t len, int chat, const rt_limits *lim, rt_req **out,
                           rt_error *err);
/* Frees a request that never started (its choices hold nothing yet). NULL is fine. */
void rt_request_free(rt_req *r);
/* The prompt parts of a body, for /tokenize as well: the rendered and tokenized chat messages of root; the
 * completions prompt (a string, strings, token ids or lists of them; at most max_prompts). Append to r->prompts;
 * 1 on success, 0 with *e filled. */
int rt_chat_prompt(const rt_limits *lim, const cJSON *root, rt_req *r, int *len, rt_error *e);
int rt_completion_prompts(const rt_limits *lim, const cJSON *prompt, rt_req *r, int *starts, int *lens,
                          int *n_prompts, int max_prompts, rt_error *e);

/* relay.c: drives each choice's state machine from its calls. rt_choice_cancel: the client went away (nothing is
 * reported); rt_choice_abort: a sibling failed the request (nothing is reported); rt_choice_timeout: the choice fails
 * with 504 and msg and is reported. Each does nothing to a choice that is final already. */
void rt_choice_start(rt_choice *c, const rt_choice_cbs *cbs);
void rt_choice_cancel(rt_choice *c);
void rt_choice_abort(rt_choice *c);
void rt_choice_timeout(rt_choice *c, const char *msg);
void rt_choice_free(rt_choice *c);
/* json.c: rt_json_track makes cJSON allocate through a counter of failed allocations (process-wide; the router
 * builds JSON on its loop thread only). A builder compares rt_json_failures() before and after: a change means
 * something it built is missing a part (out of memory). */
void rt_json_track(void);
unsigned long rt_json_failures(void);
/* metrics.c: registers the router's families, the instance gauges filled from the registry at each scrape. */
pd_status rt_metrics_init(rt_router *rt);
void rt_metrics_free(rt_router *rt);
/* A finished choice: latency histograms from its timings. */
void rt_metrics_choice(rt_router *rt, const rt_choice *c);
/* stats.c: the dashboard's data (GET /admin/stats) and page (GET /dashboard). Samples of recent latencies for
 * percentiles over a sliding window; metric scrapes of every instance for transfer and acceptance figures. */
typedef enum { RT_SAMPLE_TTFT, RT_SAMPLE_ITL, RT_SAMPLE_E2E, RT_SAMPLE_KINDS } rt_sample_kind;
pd_status rt_stats_create(rt_router *rt, rt_stats **out);
void rt_stats_destroy(rt_stats *s);
void rt_stats_sample(rt_stats *s, rt_sample_kind kind, double v);
void rt_stats_reply(rt_stats *s, struct evhttp_request *req);
void rt_dashboard_reply(struct evhttp_request *req);

#endif
