/* What a serving process (prefill, decode, colocated) needs from the model library at start-up: the model and
 * engine options as one option table, loading the model, and sizing the KV pool from a memory budget. Also
 * the hand-off record a prefill instance sends a decode instance after the KV blocks (the ready notice). */
#ifndef MDL_SERVE_H
#define MDL_SERVE_H

#include <cJSON.h>

#include "common/pd_metrics.h"
#include "common/pd_opts.h"
#include "model/mdl_engine.h"

typedef struct {
    char *model;                 /* checkpoint directory */
    char *served_model_name;     /* default: the directory's last component */
    char *dtype;                 /* auto|bfloat16|float32 */
    char *kv_cache_dtype;        /* auto|float16|bfloat16|float32 */
    int max_num_seqs;
    int max_num_batched_tokens;
    int max_model_len;           /* 0: min(max_position_embeddings, 8192) */
    int block_size;
    uint64_t kv_cache_memory;    /* bytes for the KV pool */
    int max_num_queued_reqs;
    int max_num_queued_tokens;   /* prompt tokens waiting for prefill before 429 (0: unlimited) */
    int seed;                    /* default seed for requests without one (-1: random) */
    char *speculative_config;    /* JSON: {"method":"mtp","num_speculative_tokens":k}, k 0..4; NULL: off */
    char *graph_batch_sizes;     /* "1,2,4,8": captured decode batch sizes; "none": off; NULL: default list */
    int prefill_bf16;            /* prompt prefill with bf16 activations (default 1; mdl_engine_opts.exact_prefill) */
    int ep_rank, ep_size;        /* set by a multi-rank instance (not options): mdl_load_opts' expert split */
} mdl_serve_opts;

#define MDL_SERVE_NOPTS 15
void mdl_serve_defaults(mdl_serve_opts *o);
/* Writes the option entries (MDL_SERVE_NOPTS) for o into table. */
void mdl_serve_options(mdl_serve_opts *o, pd_opt *table);
/* Loads the model and fills engine options (--speculative-config and --graph-batch-sizes included, checked against
 * the model: MTP drafting needs its MTP layer); errors are written to err, nothing is left loaded on failure. */
pd_status mdl_serve_load(mdl_serve_opts *o, mdl_model **m, mdl_engine_opts *eo, char *err, size_t errlen);

/* Parses the generation fields of an internal request body with proto's decoder (pr_gen_decode: prompt,
 * max_tokens, min_tokens, logprobs, ignore_eos, stop_token_ids, sampling{...}, each against proto's limits and
 * token ids against the model's vocabulary) into the engine's parameters. Requests without a seed get
 * default_seed ^ salt when default_seed >= 0. PD_ERR_INVALID with a message naming the field, PD_ERR_NOMEM;
 * *prompt is malloc'd on success. */
pd_status mdl_serve_parse_gen(const mdl_model *m, const cJSON *root, int default_seed, uint64_t salt, int32_t **prompt,
                              int *n_prompt, mdl_gen_params *p, char *err, size_t errlen);

/* The metrics every serving process exports (GET /metrics), on a registry of its own that other components
 * extend with families of theirs (pd_metrics_counter(m->reg, ...)): engine gauges read at each scrape, request
 * and token counters, latency histograms; the KV-transfer families exist in the roles that transfer. */
typedef struct {
    pd_metrics *reg;
    mdl_engine *eng;
    pd_metric *running, *waiting, *kv_usage, *free_blocks, *total_blocks, *steps; /* read from the engine */
    pd_metric *prompt_tokens, *gen_tokens, *success, *rejected;
    pd_metric *ttft, *itl, *e2e, *queue, *prefill, *decode;
    pd_metric *kv_bytes, *kv_failures, *kv_xfer_time, *kv_xfer_duration; /* prefill (failures also decode) */
    pd_metric *kv_wait;                                                     /* decode: reservation -> KV ready */
    pd_metric *spec_drafts, *spec_draft_tokens, *spec_accepted, *spec_accepted_pos; /* MTP speculation */
    pd_metric *graph_steps, *graph_padded;                                  /* captured batch sizes */
    pd_metric *screen_rows;                                                 /* greedy rows through the screen */
    pd_metric *preemptions;
} mdl_serve_metrics;

/* role: "prefill", "decode" or "colocated". The engine must outlive the metrics. */
pd_status mdl_serve_metrics_create(mdl_engine *e, const char *role, mdl_serve_metrics **out);
void mdl_serve_metrics_destroy(mdl_serve_metrics *m);
/* Records a finished request from its DONE event: finish reason; unless aborted, prompt tokens and the phase
 * times (t_queue, t_prefill when > 0, t_decode). */
void mdl_serve_metrics_done(mdl_serve_metrics *m, const mdl_event *ev);

/* GET /health body: status, role, model, layout, max_model_len, load{running, waiting, free_blocks, ...}. */
cJSON *mdl_serve_health(mdl_engine *e, const char *role, const char *model);

/* The ready notice: request id, first token and its logprobs, the last prompt position's hidden state. */
typedef struct {
    uint64_t req_id;
    int32_t first_token;
    float logprob;
    int n_top;
    int32_t top_ids[MDL_MAX_TOP_LOGPROBS];
    float top_lps[MDL_MAX_TOP_LOGPROBS];
    int hidden_size;
    const float *hidden;         /* decode: points into the payload (valid as long as it is) */
} mdl_handoff;

/* Encodes into a malloc'd buffer (little-endian, versioned). */
pd_status mdl_handoff_encode(const mdl_handoff *h, void **out, size_t *len);
/* Decodes and validates; PD_ERR_FORMAT for anything malformed. h->hidden points into buf. */
pd_status mdl_handoff_decode(const void *buf, size_t len, mdl_handoff *h);

#endif
