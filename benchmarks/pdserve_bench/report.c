/* From per-request records to vLLM's serving metrics: TTFT, TPOT ((latency - ttft) / (output tokens - 1)),
 * ITL, E2E latency (mean, median, std, p90, p99 in ms), request/token throughput, goodput under SLOs, failures
 * by reason. The result object uses vLLM's key names; pdserve's additions are named so they cannot clash. */
#include <string.h>
#include <time.h>

#include "benchmarks/pdserve_bench/bench.h"

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_percentile(const double *v, int n, double q)
{
    if (n <= 0) return 0;
    double *c = malloc((size_t)n * sizeof *c);
    if (!c) return NAN;
    memcpy(c, v, (size_t)n * sizeof *c);
    qsort(c, (size_t)n, sizeof *c, cmp_d);
    double pos = q / 100.0 * (n - 1);
    int lo = (int)pos, hi = lo + 1 < n ? lo + 1 : lo;
    double r = c[lo] + (c[hi] - c[lo]) * (pos - lo);
    free(c);
    return r;
}

double bench_mean(const double *v, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i];
    return n ? s / n : 0;
}

double bench_std(const double *v, int n)
{
    double m = bench_mean(v, n), s = 0;
    for (int i = 0; i < n; i++) s += (v[i] - m) * (v[i] - m);
    return n ? sqrt(s / n) : 0;
}

pd_status bench_slo_parse(const char *s, bench_slo *out, char *err, size_t errlen)
{
    bench_slo slo = {0};
    char *copy = strdup(s ? s : ""), *save = NULL;
    if (!copy) return PD_ERR_NOMEM;
    pd_status st = PD_OK;
    for (char *t = strtok_r(copy, " ,", &save); t && st == PD_OK; t = strtok_r(NULL, " ,", &save)) {
        char *colon = strchr(t, ':'), *end = NULL;
        double v = colon ? strtod(colon + 1, &end) : -1;
        if (!colon || end == colon + 1 || *end || v <= 0) {
            st = PD_FAIL(err, errlen, PD_ERR_INVALID, "bench", "--goodput: '%s' is not KEY:MS with a positive MS", t);
            break;
        }
        *colon = '\0';
        if (!strcmp(t, "ttft")) slo.ttft_ms = v;
        else if (!strcmp(t, "tpot")) slo.tpot_ms = v;
        else if (!strcmp(t, "e2el")) slo.e2el_ms = v;
        else st = PD_FAIL(err, errlen, PD_ERR_INVALID, "bench", "--goodput: '%s' is not ttft, tpot or e2el", t);
        slo.any = 1;
    }
    free(copy);
    if (st == PD_OK) *out = slo;
    return st;
}

static cJSON *darray(const double *v, int n)
{
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(a, cJSON_CreateNumber(v[i]));
    return a;
}

/* mean/median/std/p90/p99 of v (seconds) as <stat>_<name>_ms keys */
static void add_stats(cJSON *o, const char *name, const double *v, int n, int print, const char *title)
{
    char k[64];
    double ms[5] = {bench_mean(v, n) * 1e3, bench_percentile(v, n, 50) * 1e3, bench_std(v, n) * 1e3,
                    bench_percentile(v, n, 90) * 1e3, bench_percentile(v, n, 99) * 1e3};
    static const char *const stat[] = {"mean", "median", "std", "p90", "p99"};
    for (int i = 0; i < 5; i++) {
        snprintf(k, sizeof k, "%s_%s_ms", stat[i], name);
        cJSON_AddNumberToObject(o, k, ms[i]);
    }
    if (!print) return;
    printf("%s\n", title);
    printf("%-40s%-10.2f\n%-40s%-10.2f\n%-40s%-10.2f\n%-40s%-10.2f\n", "Mean (ms):", ms[0], "Median (ms):", ms[1],
           "P90 (ms):", ms[3], "P99 (ms):", ms[4]);
}

/* The most output tokens in any one-second window of the run (0 when it took no time). */
static double busiest_second(const bench_record *r, int n, double duration)
{
    double max_tps = 0;
    if (duration > 0) {
        int nb = (int)ceil(duration) + 1;
        double *per = calloc((size_t)nb, sizeof *per);
        for (int i = 0; per && i < n; i++)
            for (int k = 0; r[i].ok && k < r[i].n_tok; k++) {
                int b = (int)r[i].tok_t[k];
                if (b >= 0 && b < nb) per[b]++;
            }
        for (int b = 0; per && b < nb; b++) max_tps = PD_MAX(max_tps, per[b]);
        free(per);
    }
    return max_tps;
}

/* The totals of a run (what bench_report counted), for the summary it prints. */
typedef struct {
    int completed, failed, total_in, total_out, good, peak;
    double duration, max_tps;
} report_totals;

/* The head of the printed summary (vLLM's layout): the run's settings, counts and throughputs. */
static void totals_print(const bench_run_opts *o, const report_totals *t, const bench_slo *slo)
{
    const double d = t->duration > 0 ? t->duration : 1;
    printf("%s\n", "============ Serving Benchmark Result ============");
    if (o->label) printf("%-40s%s\n", "Label:", o->label);
    if (isfinite(o->request_rate)) printf("%-40s%-10.2f\n", "Request rate (req/s):", o->request_rate);
    else printf("%-40s%s\n", "Request rate (req/s):", "inf");
    if (o->max_concurrency > 0) printf("%-40s%d\n", "Maximum request concurrency:", o->max_concurrency);
    printf("%-40s%-10d\n", "Successful requests:", t->completed);
    printf("%-40s%-10d\n", "Failed requests:", t->failed);
    printf("%-40s%-10.2f\n", "Benchmark duration (s):", t->duration);
    printf("%-40s%-10d\n", "Total input tokens:", t->total_in);
    printf("%-40s%-10d\n", "Total generated tokens:", t->total_out);
    printf("%-40s%-10.2f\n", "Request throughput (req/s):", t->completed / d);
    if (slo && slo->any) printf("%-40s%-10.2f\n", "Request goodput (req/s):", t->good / d);
    printf("%-40s%-10.2f\n", "Output token throughput (tok/s):", t->total_out / d);
    printf("%-40s%-10.2f\n", "Peak output token throughput (tok/s):", t->max_tps);
    printf("%-40s%-10d\n", "Peak concurrent requests:", t->peak);
    printf("%-40s%-10.2f\n", "Total Token throughput (tok/s):", (t->total_in + t->total_out) / d);
}

cJSON *bench_report(const bench_run_opts *o, int num_prompts, const bench_record *r, int n, double duration,
                    int peak, const bench_slo *slo, int print)
{
    int completed = 0, total_in = 0, total_out = 0, good = 0, n_itl = 0, n_tpot = 0, n_timing = 0;
    for (int i = 0; i < n; i++) n_itl += r[i].ok ? r[i].n_itl : 0;
    double *ttft = calloc((size_t)n + 1, sizeof *ttft), *tpot = calloc((size_t)n + 1, sizeof *tpot);
    double *e2e = calloc((size_t)n + 1, sizeof *e2e), *itl = calloc((size_t)n_itl + 1, sizeof *itl);
    double timing[4] = {0};
    cJSON *o_ = cJSON_CreateObject();
    if (!ttft || !tpot || !e2e || !itl || !o_) {
        free(ttft);
        free(tpot);
        free(e2e);
        free(itl);
        cJSON_Delete(o_);
        return NULL;
    }
    cJSON *fail_reasons = cJSON_CreateObject(), *inl = cJSON_CreateArray(), *outl = cJSON_CreateArray();
    cJSON *ttfts = cJSON_CreateArray(), *itls = cJSON_CreateArray(), *texts = cJSON_CreateArray();
    cJSON *errors = cJSON_CreateArray(), *e2els = cJSON_CreateArray();
    n_itl = 0;
    for (int i = 0; i < n; i++) {
        const bench_record *x = &r[i];
        cJSON_AddItemToArray(errors, cJSON_CreateString(x->ok ? "" : x->error));
        if (!x->ok) {
            /* reasons without the varying detail after the first ':' of the message body */
            char reason[128];
            snprintf(reason, sizeof reason, "%s", x->error);
            cJSON *c = cJSON_GetObjectItem(fail_reasons, reason);
            if (c) cJSON_SetNumberValue(c, c->valuedouble + 1);
            else cJSON_AddNumberToObject(fail_reasons, reason, 1);
            cJSON_AddItemToArray(inl, cJSON_CreateNumber(x->prompt_len));
            cJSON_AddItemToArray(outl, cJSON_CreateNumber(0));
            cJSON_AddItemToArray(ttfts, cJSON_CreateNumber(0));
            cJSON_AddItemToArray(itls, cJSON_CreateArray());
            cJSON_AddItemToArray(texts, cJSON_CreateString(""));
            cJSON_AddItemToArray(e2els, cJSON_CreateNumber(0));
            continue;
        }
        ttft[completed] = x->ttft;
        e2e[completed] = x->latency;
        completed++;
        total_in += x->prompt_len;
        total_out += x->output_tokens;
        double tp = x->output_tokens > 1 ? (x->latency - x->ttft) / (x->output_tokens - 1) : 0;
        if (x->output_tokens > 1) tpot[n_tpot++] = tp;
        memcpy(itl + n_itl, x->itl, (size_t)x->n_itl * sizeof *itl);
        n_itl += x->n_itl;
        if (x->has_timing) {
            for (int k = 0; k < 4; k++) timing[k] += x->timing[k];
            n_timing++;
        }
        /* goodput: every SLO given must hold (a request without a TPOT has none to violate) */
        int ok = (!slo || slo->ttft_ms <= 0 || x->ttft * 1e3 <= slo->ttft_ms) &&
                 (!slo || slo->tpot_ms <= 0 || tp * 1e3 <= slo->tpot_ms) &&
                 (!slo || slo->e2el_ms <= 0 || x->latency * 1e3 <= slo->e2el_ms);
        good += ok;
        cJSON_AddItemToArray(inl, cJSON_CreateNumber(x->prompt_len));
        cJSON_AddItemToArray(outl, cJSON_CreateNumber(x->output_tokens));
        cJSON_AddItemToArray(ttfts, cJSON_CreateNumber(x->ttft));
        cJSON_AddItemToArray(itls, darray(x->itl, x->n_itl));
        cJSON_AddItemToArray(texts, cJSON_CreateString(x->text ? x->text : ""));
        cJSON_AddItemToArray(e2els, cJSON_CreateNumber(x->latency));
    }
    /* the most output tokens in any one-second window, and the peak concurrency */
    const double max_tps = busiest_second(r, n, duration);
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y%m%d-%H%M%S", localtime(&now));
    cJSON *x = o_;
    cJSON_AddStringToObject(x, "date", date);
    cJSON_AddStringToObject(x, "backend", "openai");
    cJSON_AddStringToObject(x, "endpoint_type", "openai");
    if (o->label) cJSON_AddStringToObject(x, "label", o->label);
    cJSON_AddStringToObject(x, "model_id", o->model);
    cJSON_AddStringToObject(x, "tokenizer_id", o->model);
    cJSON_AddNumberToObject(x, "num_prompts", num_prompts);
    if (isfinite(o->request_rate)) cJSON_AddNumberToObject(x, "request_rate", o->request_rate);
    else cJSON_AddStringToObject(x, "request_rate", "inf");
    cJSON_AddNumberToObject(x, "burstiness", o->burstiness);
    if (o->max_concurrency > 0) cJSON_AddNumberToObject(x, "max_concurrency", o->max_concurrency);
    else cJSON_AddNullToObject(x, "max_concurrency");
    cJSON_AddNumberToObject(x, "duration", duration);
    cJSON_AddNumberToObject(x, "completed", completed);
    cJSON_AddNumberToObject(x, "failed", n - completed);
    cJSON_AddNumberToObject(x, "total_input_tokens", total_in);
    cJSON_AddNumberToObject(x, "total_output_tokens", total_out);
    double d = duration > 0 ? duration : 1;
    cJSON_AddNumberToObject(x, "request_throughput", completed / d);
    if (slo && slo->any) cJSON_AddNumberToObject(x, "request_goodput", good / d);
    else cJSON_AddNullToObject(x, "request_goodput");
    cJSON_AddNumberToObject(x, "output_throughput", total_out / d);
    cJSON_AddNumberToObject(x, "total_token_throughput", (total_in + total_out) / d);
    cJSON_AddNumberToObject(x, "max_output_tokens_per_s", max_tps);
    cJSON_AddNumberToObject(x, "max_concurrent_requests", peak);
    if (print) {
        const report_totals t = {.completed = completed, .failed = n - completed, .total_in = total_in,
                                 .total_out = total_out, .good = good, .peak = peak, .duration = duration,
                                 .max_tps = max_tps};
        totals_print(o, &t, slo);
    }
    add_stats(x, "ttft", ttft, completed, print, "---------------Time to First Token----------------");
    add_stats(x, "tpot", tpot, n_tpot, print, "-----Time per Output Token (excl. 1st token)------");
    add_stats(x, "itl", itl, n_itl, print, "---------------Inter-token Latency----------------");
    add_stats(x, "e2el", e2e, completed, print, "----------------End-to-end Latency----------------");
    /* pdserve extensions */
    if (slo && slo->any) {
        cJSON *s = cJSON_AddObjectToObject(x, "goodput_slo_ms");
        if (slo->ttft_ms > 0) cJSON_AddNumberToObject(s, "ttft", slo->ttft_ms);
        if (slo->tpot_ms > 0) cJSON_AddNumberToObject(s, "tpot", slo->tpot_ms);
        if (slo->e2el_ms > 0) cJSON_AddNumberToObject(s, "e2el", slo->e2el_ms);
        cJSON_AddNumberToObject(x, "goodput_fraction", n ? (double)good / n : 0);
    }
    cJSON_AddItemToObject(x, "failed_reasons", fail_reasons);
    if (n_timing) {
        cJSON *t = cJSON_AddObjectToObject(x, "mean_pdserve_timing_ms");
        static const char *const k[] = {"queue", "prefill", "transfer", "decode"};
        for (int i = 0; i < 4; i++) cJSON_AddNumberToObject(t, k[i], timing[i] / n_timing * 1e3);
    }
    cJSON_AddItemToObject(x, "input_lens", inl);
    cJSON_AddItemToObject(x, "output_lens", outl);
    cJSON_AddItemToObject(x, "ttfts", ttfts);
    cJSON_AddItemToObject(x, "itls", itls);
    cJSON_AddItemToObject(x, "e2els", e2els);
    cJSON_AddItemToObject(x, "generated_texts", texts);
    cJSON_AddItemToObject(x, "errors", errors);
    if (print) {
        if (slo && slo->any) printf("%-40s%-10.1f\n", "Goodput (share meeting the SLOs, %):", n ? 100.0 * good / n : 0);
        if (n_timing)
            printf("%-40s%.1f / %.1f / %.1f / %.1f\n", "Mean queue/prefill/transfer/decode (ms):",
                   timing[0] / n_timing * 1e3, timing[1] / n_timing * 1e3, timing[2] / n_timing * 1e3,
                   timing[3] / n_timing * 1e3);
        const cJSON *fr;
        cJSON_ArrayForEach(fr, fail_reasons) printf("Failed: %d x %s\n", (int)fr->valuedouble, fr->string);
        printf("%s\n", "==================================================");
        fflush(stdout);
    }
    free(ttft);
    free(tpot);
    free(e2e);
    free(itl);
    return x;
}
