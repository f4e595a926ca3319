/* pdserve-bench: an online serving benchmark in the manner of vLLM's `vllm bench serve`. A dataset gives
 * prompts with wanted output lengths; the driver sends them to the router's streaming /v1/completions on one
 * libevent loop (Poisson or gamma arrivals, or a concurrency cap), timing every chunk; the report turns the
 * per-request records into vLLM's metrics and result-file keys; compare plots several result files as SVG. */
#ifndef BENCH_H
#define BENCH_H

#include <cJSON.h>
#include <math.h>

#include "common/pd_common.h"

/* A blocking HTTP call on a loop of its own (set-up requests: /v1/models, /tokenize). *resp is malloc'd. */
pd_status bench_http(const char *host, int port, const char *method, const char *path, const char *body,
                     int *status, char **resp);

/* ---- dataset ---- */
typedef struct {
    char *text;          /* text prompt, or NULL when ids are used */
    int32_t *ids;        /* token-id prompt */
    int n_ids;
    int prompt_len;      /* tokens (known exactly for ids and tokenized text; estimated otherwise) */
    int output_len;      /* max_tokens to ask for */
} bench_prompt;

typedef struct {
    char *dataset_name;   /* random | sharegpt | fixed */
    char *dataset_path;   /* ShareGPT JSON */
    int random_input_len, random_output_len, random_prefix_len;
    double random_range_ratio;
    char *random_input_type; /* ids | text */
    int sharegpt_output_len; /* 0: from the dataset's reply */
    char *fixed_prompt;
    int fixed_output_len;
    int vocab_size;        /* token ids are drawn below this (from /v1/models' root config or --vocab-size) */
    int seed;
} bench_data_opts;

/* Builds n prompts. host/port: the router, for /tokenize (ShareGPT lengths, text prompts). err on failure. */
pd_status bench_dataset_build(const bench_data_opts *o, int n, const char *host, int port, bench_prompt **out,
                              char *err, size_t errlen);
void bench_dataset_free(bench_prompt *p, int n);

/* ---- one run ---- */
typedef struct {
    int ok;
    char error[256];
    int prompt_len, output_tokens;
    double start;        /* seconds since the run began */
    double ttft, latency;
    double *itl;         /* gaps between content chunks */
    int n_itl, cap_itl;
    double *tok_t;       /* arrival time (run clock) of each content chunk, for max output tokens/s */
    int n_tok;
    char *text;          /* generated text */
    size_t text_len, text_cap;
    double timing[4];    /* pdserve_timing: queue, prefill, transfer, decode (seconds) */
    int has_timing;
} bench_record;

typedef struct {
    char *host;
    int port;
    char *endpoint;          /* /v1/completions */
    char *model;             /* served model name (default: the router's first) */
    double request_rate;     /* INFINITY: all at once */
    double burstiness;
    int max_concurrency;     /* 0: unlimited */
    int ignore_eos;
    double temperature;
    int timeout_s;
    int progress;            /* print the progress line */
    const char *label;
} bench_run_opts;

/* Runs prompts [0, n) and fills recs (n entries, zeroed by the caller); *duration gets the wall time from the
 * first send to the last completion; *peak the highest number of requests in flight. */
pd_status bench_run(const bench_run_opts *o, const bench_prompt *p, int n, uint64_t seed, bench_record *recs,
                    double *duration, int *peak);
void bench_records_free(bench_record *r, int n);

/* ---- report ---- */
typedef struct {
    double ttft_ms, tpot_ms, e2el_ms; /* 0: no limit on that metric */
    int any;
} bench_slo;

/* Parses "ttft:MS tpot:MS e2el:MS" (space or comma separated). */
pd_status bench_slo_parse(const char *s, bench_slo *out, char *err, size_t errlen);
/* The result object with vLLM's key names (plus pdserve extensions), and the printed summary on stdout. */
cJSON *bench_report(const bench_run_opts *o, int num_prompts, const bench_record *r, int n, double duration,
                    int peak, const bench_slo *slo, int print);

/* ---- compare ---- */
/* Reads result files (single runs or sweeps), writes SVG plots and summary.md into out_dir. */
pd_status bench_compare(char **files, int n_files, const char *labels, const char *out_dir, double cdf_rate,
                        char *err, size_t errlen);

/* numpy-style helpers on a copy of the values */
double bench_percentile(const double *v, int n, double q); /* q in [0, 100]; linear interpolation */
double bench_mean(const double *v, int n);
double bench_std(const double *v, int n);                  /* population (numpy's default) */

#endif
