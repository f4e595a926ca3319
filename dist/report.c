/* What an operator sees of the ranks (dst.h): a "ranks" array in rank 0's /health and per-rank families in its
 * /metrics, from the reports of the last sync. */
#include "dist/dst_internal.h"

void dst_health(dst *d, cJSON *body)
{
    dst_rank_info *ri = calloc((size_t)d->size, sizeof *ri);
    cJSON *a = ri ? cJSON_AddArrayToObject(body, "ranks") : NULL;
    if (!a) {
        free(ri);
        return;
    }
    dst_ranks_info(d, ri, d->size);
    for (int r = 0; r < d->size; r++) {
        cJSON *o = cJSON_CreateObject();
        if (!o || !cJSON_AddItemToArray(a, o)) {
            cJSON_Delete(o);
            break;
        }
        cJSON_AddNumberToObject(o, "rank", r);
        cJSON *ex = cJSON_AddArrayToObject(o, "experts");
        if (ex) {
            cJSON_AddItemToArray(ex, cJSON_CreateNumber(ri[r].exp0));
            cJSON_AddItemToArray(ex, cJSON_CreateNumber(ri[r].exp1));
        }
        cJSON_AddNumberToObject(o, "resident_bytes", ri[r].rss_bytes);
        cJSON_AddNumberToObject(o, "running", ri[r].running);
        cJSON_AddNumberToObject(o, "waiting", ri[r].waiting);
        cJSON_AddNumberToObject(o, "free_blocks", ri[r].free_blocks);
        cJSON_AddNumberToObject(o, "total_blocks", ri[r].total_blocks);
        cJSON_AddNumberToObject(o, "steps", (double)ri[r].steps);
        cJSON_AddNumberToObject(o, "prefill_tokens", (double)ri[r].prefill_tokens);
        cJSON_AddNumberToObject(o, "decode_tokens", (double)ri[r].decode_tokens);
        cJSON_AddNumberToObject(o, "moe_rounds", (double)ri[r].moe_rounds);
        cJSON_AddNumberToObject(o, "moe_wait_s", ri[r].moe_wait_seconds);
        cJSON_AddNumberToObject(o, "moe_serve_s", ri[r].moe_serve_seconds);
        cJSON_AddNumberToObject(o, "moe_bytes", ri[r].moe_bytes);
        cJSON_AddNumberToObject(o, "step_s", ri[r].step_seconds);
    }
    free(ri);
}

typedef struct {
    dst *d;
    pd_metric *rss, *running, *rounds, *wait, *serve, *bytes, *step;
} rank_metrics;

static void collect(pd_metrics *reg, void *arg)
{
    (void)reg;
    rank_metrics *m = arg;
    dst *d = m->d;
    dst_rank_info *ri = calloc((size_t)d->size, sizeof *ri);
    if (!ri) return;
    dst_ranks_info(d, ri, d->size);
    for (int r = 0; r < d->size; r++) {
        char rank[16];
        snprintf(rank, sizeof rank, "%d", r);
        pd_gauge_set(m->rss, PD_LV(rank), ri[r].rss_bytes);
        pd_gauge_set(m->running, PD_LV(rank), ri[r].running);
        pd_counter_set(m->rounds, PD_LV(rank), (double)ri[r].moe_rounds);
        pd_counter_set(m->wait, PD_LV(rank), ri[r].moe_wait_seconds);
        pd_counter_set(m->serve, PD_LV(rank), ri[r].moe_serve_seconds);
        pd_counter_set(m->bytes, PD_LV(rank), ri[r].moe_bytes);
        pd_counter_set(m->step, PD_LV(rank), ri[r].step_seconds);
    }
    free(ri);
}

pd_status dst_metrics(dst *d, pd_metrics *reg)
{
    rank_metrics *m = calloc(1, sizeof *m);
    if (!m) return PD_ERR_NOMEM;
    m->d = d;
    pd_status st = PD_OK;
#define F(kind, field, name, help)                                                                                     \
    if (st == PD_OK) st = pd_metrics_##kind(reg, name, help, "rank", &m->field)
    F(gauge, rss, "pdserve_rank_resident_memory_bytes", "Resident memory of each rank of this instance");
    F(gauge, running, "pdserve_rank_num_requests_running", "Sequences each rank is decoding");
    F(counter, rounds, "pdserve_rank_moe_exchanges_total", "Expert all-to-all rounds each rank took part in");
    F(counter, wait, "pdserve_rank_moe_exchange_seconds_total",
      "Seconds each rank spent in the expert all-to-all's collectives (transfer and waiting for other ranks)");
    F(counter, serve, "pdserve_rank_moe_serve_seconds_total",
      "Seconds each rank spent running received rows through its experts");
    F(counter, bytes, "pdserve_rank_moe_exchange_bytes_total", "Bytes of rows and expert outputs each rank sent");
    F(counter, step, "pdserve_rank_step_seconds_total", "Seconds of each rank's steps, sync to sync");
#undef F
    if (st == PD_OK) st = pd_metrics_on_collect(reg, collect, m);
    if (st != PD_OK) {
        free(m);
        return st;
    }
    d->metrics_arg = m; /* freed with d */
    return PD_OK;
}
