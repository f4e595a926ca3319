/* pdserve-bench: parse flags (vLLM's `vllm bench serve` names where the meaning matches), build the dataset,
 * run warm-ups, then one run or a sweep over request rates, print the summary and save the result file; or
 * `pdserve-bench compare A.json B.json ... --out-dir DIR` to plot result files against each other. */
#include <string.h>

#include "benchmarks/pdserve_bench/bench.h"
#include "common/pd_http.h"
#include "common/pd_opts.h"

typedef struct {
    char *host, *base_url, *endpoint, *model, *request_rate, *goodput, *save_result, *sweep_rates, *label;
    int port, num_prompts, max_concurrency, num_warmups, ignore_eos, timeout, disable_tqdm;
    double burstiness, temperature;
    bench_data_opts data;
} bench_opts;

static int parse_rate(const char *s, double *out)
{
    if (!s || !strcmp(s, "inf") || !strcmp(s, "Inf")) {
        *out = INFINITY;
        return 1;
    }
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end || !(v > 0)) return 0;
    *out = v;
    return 1;
}

static int write_json(const char *path, const cJSON *o)
{
    char *txt = cJSON_Print(o);
    FILE *f = txt ? fopen(path, "w") : NULL;
    int ok = f && fputs(txt, f) >= 0 && fputc('\n', f) != EOF;
    if (f && fclose(f) != 0) ok = 0;
    free(txt);
    return ok;
}

static int compare_main(int argc, char **argv)
{
    char *files[64], *out_dir = NULL, *labels = NULL;
    double cdf_rate = 0;
    int n = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--out-dir") && i + 1 < argc) out_dir = argv[++i];
        else if (!strcmp(argv[i], "--labels") && i + 1 < argc) labels = argv[++i];
        else if (!strcmp(argv[i], "--cdf-rate") && i + 1 < argc) cdf_rate = atof(argv[++i]);
        else if (argv[i][0] == '-') {
            fprintf(stderr, "pdserve-bench compare: unknown option %s\n", argv[i]);
            return 2;
        } else if (n < 64) files[n++] = argv[i];
    }
    if (n < 1 || !out_dir) {
        fprintf(stderr, "usage: pdserve-bench compare RESULT.json [RESULT.json ...] --out-dir DIR "
                        "[--labels a,b,...] [--cdf-rate R]\n"
                        "Writes latency_vs_rate.svg, throughput_vs_rate.svg, ttft_cdf.svg, itl_cdf.svg and "
                        "summary.md into DIR.\n");
        return 2;
    }
    char err[512];
    if (bench_compare(files, n, labels, out_dir, cdf_rate, err, sizeof err) != PD_OK) {
        fprintf(stderr, "pdserve-bench compare: %s\n", err);
        return 1;
    }
    printf("compare: wrote %s/{latency_vs_rate,throughput_vs_rate,ttft_cdf,itl_cdf}.svg and %s/summary.md\n",
           out_dir, out_dir);
    return 0;
}

/* The request rates to run: --sweep-rates' list, else --request-rate (default inf); returns 0 after printing why
 * one is not a rate. */
static int rates_parse(const bench_opts *o, double *rates, int *n_rates)
{
    int n = 0;
    if (o->sweep_rates) {
        char *copy = strdup(o->sweep_rates), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t && n < 64; t = strtok_r(NULL, ",", &save))
            if (!parse_rate(t, &rates[n++])) {
                fprintf(stderr, "pdserve-bench: --sweep-rates: '%s' is not a positive rate or inf\n", t);
                free(copy);
                return 0;
            }
        free(copy);
    } else if (!parse_rate(o->request_rate, &rates[n++])) {
        fprintf(stderr, "pdserve-bench: --request-rate '%s' is not a positive rate or inf\n", o->request_rate);
        return 0;
    }
    *n_rates = n;
    return 1;
}

/* The router's model (the first in GET /v1/models) into *model, strdup'd; returns 0 after printing why not. */
static int model_discover(const char *host, int port, char **model)
{
    int status = 0;
    char *resp = NULL;
    if (bench_http(host, port, "GET", "/v1/models", NULL, &status, &resp) != PD_OK || status != 200) {
        fprintf(stderr, "pdserve-bench: cannot reach the router at %s:%d (GET /v1/models)\n", host, port);
        free(resp);
        return 0;
    }
    cJSON *m = cJSON_Parse(resp);
    const cJSON *id = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(m, "data"), 0), "id");
    if (cJSON_IsString(id)) *model = strdup(id->valuestring);
    cJSON_Delete(m);
    free(resp);
    if (!*model) {
        fprintf(stderr, "pdserve-bench: the router lists no model; pass --model\n");
        return 0;
    }
    return 1;
}

/* Warm-ups: the first n prompts, all at once, not counted; their records are freed. */
static void warmups_run(const bench_run_opts *ro, const bench_prompt *prompts, int n, uint64_t seed,
                        bench_record *recs)
{
    double duration;
    int peak;
    bench_run_opts wo = *ro;
    wo.request_rate = INFINITY;
    wo.progress = 0;
    fprintf(stderr, "pdserve-bench: %d warm-up request(s)\n", n);
    bench_run(&wo, prompts, n, seed, recs, &duration, &peak);
    int bad = 0;
    for (int i = 0; i < n; i++) bad += !recs[i].ok;
    if (bad) fprintf(stderr, "pdserve-bench: %d warm-up request(s) failed: %s\n", bad, recs[0].ok ? "" : recs[0].error);
    bench_records_free(recs, n);
}

/* Writes the result file: the run itself, or for a sweep the runs and DistServe's goodput (the highest rate with
 * >= 90% meeting the SLOs). Takes sweep's runs (*sweep becomes NULL when it is moved whole); returns 0 on failure. */
static int result_save(const bench_opts *o, cJSON **sweep, int n_rates, const bench_slo *slo, double best_rate)
{
    cJSON *out;
    if (n_rates == 1) {
        out = cJSON_DetachItemFromArray(*sweep, 0);
    } else {
        out = cJSON_CreateObject();
        if (o->label) cJSON_AddStringToObject(out, "label", o->label);
        cJSON_AddStringToObject(out, "model_id", o->model);
        cJSON_AddItemToObject(out, "sweep", *sweep);
        *sweep = NULL;
        if (slo->any && best_rate > 0) cJSON_AddNumberToObject(out, "distserve_goodput_rate", best_rate);
        else cJSON_AddNullToObject(out, "distserve_goodput_rate");
    }
    if (!write_json(o->save_result, out)) {
        fprintf(stderr, "pdserve-bench: cannot write %s\n", o->save_result);
        cJSON_Delete(out);
        return 0;
    }
    cJSON_Delete(out);
    fprintf(stderr, "pdserve-bench: result saved to %s\n", o->save_result);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "compare")) return compare_main(argc, argv);
    bench_opts o;
    memset(&o, 0, sizeof o);
    o.port = 8000;
    o.num_prompts = 1000;
    o.burstiness = 1.0;
    o.timeout = 600;
    o.data.random_input_len = 1024;
    o.data.random_output_len = 128;
    o.data.fixed_output_len = 128;
    o.data.vocab_size = 100000;
    pd_opt table[] = {
        {"host", PD_OPT_STR, &o.host, "router address (default 127.0.0.1)", 0, 0},
        {"port", PD_OPT_INT, &o.port, "router port (default 8000)", 1, 65535},
        {"base-url", PD_OPT_STR, &o.base_url, "http://HOST:PORT (instead of --host/--port)", 0, 0},
        {"endpoint", PD_OPT_STR, &o.endpoint, "API path (default /v1/completions)", 0, 0},
        {"model", PD_OPT_STR, &o.model, "model name (default: the router's first in /v1/models)", 0, 0},
        {"dataset-name", PD_OPT_STR, &o.data.dataset_name, "random (default), sharegpt or fixed", 0, 0},
        {"dataset-path", PD_OPT_STR, &o.data.dataset_path, "ShareGPT JSON file", 0, 0},
        {"random-input-len", PD_OPT_INT, &o.data.random_input_len, "prompt tokens (default 1024)", 1, 1 << 24},
        {"random-output-len", PD_OPT_INT, &o.data.random_output_len, "output tokens (default 128)", 1, 1 << 24},
        {"random-range-ratio", PD_OPT_DOUBLE, &o.data.random_range_ratio, "lengths uniform in [x(1-r), x(1+r)] (0)", 0,
         1},
        {"random-prefix-len", PD_OPT_INT, &o.data.random_prefix_len, "shared prefix tokens before each prompt (0)", 0,
         1 << 24},
        {"random-input-type", PD_OPT_STR, &o.data.random_input_type, "ids (default: random token ids) or text (words)",
         0, 0},
        {"vocab-size", PD_OPT_INT, &o.data.vocab_size, "random ids are drawn from [1000, this) (default 100000)", 2000,
         1 << 30},
        {"sharegpt-output-len", PD_OPT_INT, &o.data.sharegpt_output_len,
         "output tokens for ShareGPT (default: the reply's)", 0, 1 << 24},
        {"fixed-prompt", PD_OPT_STR, &o.data.fixed_prompt, "the prompt of the fixed dataset", 0, 0},
        {"fixed-output-len", PD_OPT_INT, &o.data.fixed_output_len, "output tokens of the fixed dataset (128)", 1,
         1 << 24},
        {"num-prompts", PD_OPT_INT, &o.num_prompts, "requests per run (default 1000)", 1, 1 << 24},
        {"request-rate", PD_OPT_STR, &o.request_rate, "requests/s, Poisson arrivals (default inf: all at once)", 0, 0},
        {"burstiness", PD_OPT_DOUBLE, &o.burstiness, "gamma shape of the arrival gaps (1: Poisson)", 1e-3, 1e3},
        {"max-concurrency", PD_OPT_INT, &o.max_concurrency, "requests in flight at most (default unlimited)", 0,
         1 << 24},
        {"num-warmups", PD_OPT_INT, &o.num_warmups, "warm-up requests before the run, not counted (0)", 0, 1 << 20},
        {"seed", PD_OPT_INT, &o.data.seed, "seed of the dataset and arrivals (0)", 0, 2147483647},
        {"ignore-eos", PD_OPT_BOOL, &o.ignore_eos, "generate exactly the output length", 0, 0},
        {"temperature", PD_OPT_DOUBLE, &o.temperature, "sampling temperature (default 0)", 0, 100},
        {"goodput", PD_OPT_STR, &o.goodput, "SLOs in ms: 'ttft:MS tpot:MS [e2el:MS]'", 0, 0},
        {"save-result", PD_OPT_STR, &o.save_result, "write the result JSON to this file", 0, 0},
        {"sweep-rates", PD_OPT_STR, &o.sweep_rates, "comma-separated request rates to run one after another", 0, 0},
        {"label", PD_OPT_STR, &o.label, "name of this deployment in results and plots", 0, 0},
        {"timeout", PD_OPT_INT, &o.timeout, "seconds without data before a request fails (600)", 1, 86400},
        {"disable-tqdm", PD_OPT_BOOL, &o.disable_tqdm, "no progress line", 0, 0},
    };
    const int nt = (int)PD_ARRAY_LEN(table);
    char err[512];
    pd_status st = pd_opts_parse(table, nt, argc, argv,
                                 "usage: pdserve-bench [--port 8000] [--dataset-name random|sharegpt|fixed] "
                                 "[--request-rate R | --sweep-rates a,b,c] [--save-result FILE.json] ...\n"
                                 "       pdserve-bench compare A.json B.json ... --out-dir DIR",
                                 err, sizeof err);
    if (st == PD_ERR_NOT_FOUND) return 0;
    if (st != PD_OK) {
        fprintf(stderr, "pdserve-bench: %s\n", err);
        return 2;
    }
    int rc = 1;
    bench_prompt *prompts = NULL;
    bench_record *recs = NULL;
    cJSON *sweep = NULL;
    double rates[64];
    int n_rates = 0;
    bench_slo slo = {0};
    char host[128] = "127.0.0.1";
    if (o.host) snprintf(host, sizeof host, "%s", o.host);
    if (o.base_url && pd_http_parse_hostport(o.base_url, host, sizeof host, &o.port) != PD_OK) {
        fprintf(stderr, "pdserve-bench: --base-url '%s' is not http://HOST:PORT\n", o.base_url);
        goto free_opts;
    }
    if (o.goodput && bench_slo_parse(o.goodput, &slo, err, sizeof err) != PD_OK) goto free_opts;
    if (!rates_parse(&o, rates, &n_rates)) goto free_opts;
    if (!o.model && !model_discover(host, o.port, &o.model)) goto free_opts;
    int total = o.num_warmups + o.num_prompts;
    if (bench_dataset_build(&o.data, total, host, o.port, &prompts, err, sizeof err) != PD_OK) {
        fprintf(stderr, "pdserve-bench: %s\n", err);
        goto free_opts;
    }
    bench_run_opts ro = {.host = host, .port = o.port, .endpoint = o.endpoint ? o.endpoint : "/v1/completions",
                         .model = o.model, .burstiness = o.burstiness, .max_concurrency = o.max_concurrency,
                         .ignore_eos = o.ignore_eos, .temperature = o.temperature, .timeout_s = o.timeout,
                         .progress = !o.disable_tqdm, .label = o.label};
    recs = calloc((size_t)total, sizeof *recs);
    if (!recs) goto free_opts;
    double duration;
    int peak;
    if (o.num_warmups > 0) warmups_run(&ro, prompts, o.num_warmups, (uint64_t)o.data.seed, recs);
    sweep = cJSON_CreateArray();
    double best_rate = -1;
    int all_failed = 1;
    for (int k = 0; k < n_rates; k++) {
        bench_record *rr = recs + o.num_warmups;
        memset(rr, 0, (size_t)o.num_prompts * sizeof *rr);
        ro.request_rate = rates[k];
        if (isfinite(rates[k])) fprintf(stderr, "pdserve-bench: %d requests at %.3g req/s\n", o.num_prompts, rates[k]);
        else fprintf(stderr, "pdserve-bench: %d requests, all at once\n", o.num_prompts);
        if (bench_run(&ro, prompts + o.num_warmups, o.num_prompts, (uint64_t)o.data.seed + 1 + (uint64_t)k, rr,
                      &duration, &peak) != PD_OK)
            goto free_opts;
        cJSON *res = bench_report(&ro, o.num_prompts, rr, o.num_prompts, duration, peak, &slo, 1);
        bench_records_free(rr, o.num_prompts);
        if (!res) goto free_opts;
        all_failed &= cJSON_GetObjectItem(res, "completed")->valuedouble == 0;
        const cJSON *gf = cJSON_GetObjectItem(res, "goodput_fraction");
        if (cJSON_IsNumber(gf) && gf->valuedouble >= 0.9 && isfinite(rates[k]) && rates[k] > best_rate)
            best_rate = rates[k];
        cJSON_AddItemToArray(sweep, res);
    }
    if (o.save_result && !result_save(&o, &sweep, n_rates, &slo, best_rate)) goto free_opts;
    if (slo.any && n_rates > 1) {
        if (best_rate > 0)
            printf("DistServe goodput (highest rate with >= 90%% meeting the SLOs): %.3g req/s\n", best_rate);
        else printf("DistServe goodput: no rate kept 90%% of requests within the SLOs\n");
    }
    rc = all_failed ? 1 : 0;
free_opts:
    cJSON_Delete(sweep);
    free(recs);
    bench_dataset_free(prompts, o.num_warmups + o.num_prompts);
    pd_opts_free(table, nt);
    return rc;
}
