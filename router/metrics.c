/* The router's Prometheus metrics: request and token counters, client-side latency histograms (TTFT and
 * inter-token latency as the router relays them, end to end) and the phase histograms built from each
 * choice's timings, plus per-instance health and load gauges refreshed from the registry at every scrape. */
#include <string.h>

#include "router/rt_req.h"

static void collect_cb(pd_metrics *reg, void *arg)
{
    (void)reg;
    rt_router *rt = arg;
    rt_metrics *m = &rt->m;
    int running = 0;
    for (rt_req *r = rt->reqs; r; r = r->next) running++;
    pd_gauge_set(m->running, NULL, running);
    pd_metric *inst[] = {m->inst_healthy, m->inst_running, m->inst_waiting, m->inst_kv_usage, m->inst_free_blocks,
                         m->inst_queued, m->inst_inflight};
    for (size_t i = 0; i < PD_ARRAY_LEN(inst); i++) pd_metric_clear(inst[i]); /* instances come and go */
    cJSON *a = rt_registry_json(rt->reg);
    const cJSON *x;
    cJSON_ArrayForEach(x, a)
    {
        const char *lv[] = {cJSON_GetObjectItem(x, "address")->valuestring,
                            cJSON_GetObjectItem(x, "role")->valuestring};
        double total = cJSON_GetObjectItem(x, "total_blocks")->valuedouble;
        double free_b = cJSON_GetObjectItem(x, "free_blocks")->valuedouble;
        pd_gauge_set(m->inst_healthy, lv, cJSON_IsTrue(cJSON_GetObjectItem(x, "healthy")));
        pd_gauge_set(m->inst_running, lv, cJSON_GetObjectItem(x, "running")->valuedouble);
        pd_gauge_set(m->inst_waiting, lv, cJSON_GetObjectItem(x, "waiting")->valuedouble);
        pd_gauge_set(m->inst_kv_usage, lv, total > 0 ? 1.0 - free_b / total : 0);
        pd_gauge_set(m->inst_free_blocks, lv, free_b);
        pd_gauge_set(m->inst_queued, lv, cJSON_GetObjectItem(x, "queued_tokens")->valuedouble);
        pd_gauge_set(m->inst_inflight, lv, cJSON_GetObjectItem(x, "inflight")->valuedouble);
    }
    cJSON_Delete(a);
}

pd_status rt_metrics_init(rt_router *rt)
{
    rt_metrics *m = &rt->m;
    pd_status st = pd_metrics_create(&m->reg);
    if (st != PD_OK) return st;
    pd_metrics *r = m->reg;
#define G(field, name, help, labels) if (st == PD_OK) st = pd_metrics_gauge(r, name, help, labels, &m->field)
#define C(field, name, help, labels) if (st == PD_OK) st = pd_metrics_counter(r, name, help, labels, &m->field)
#define H(field, name, help, b) if (st == PD_OK) st = pd_metrics_histogram(r, name, help, NULL, b, b##_n, &m->field)
    C(requests, "pdserve_router_requests_total", "Generation requests received.", NULL);
    C(rejected, "pdserve_router_requests_rejected_total", "Requests refused before they started.", NULL);
    C(failed, "pdserve_router_requests_failed_total", "Requests that failed after they started.", NULL);
    G(running, "pdserve_router_requests_running", "Requests in flight.", NULL);
    C(prompt_tokens, "pdserve_router_prompt_tokens_total", "Prompt tokens of finished requests.", NULL);
    C(gen_tokens, "pdserve_router_generation_tokens_total", "Tokens relayed to clients.", NULL);
    C(finished, "pdserve_router_choices_finished_total", "Finished choices by reason.", "finished_reason");
    C(errors, "pdserve_router_error_replies_total", "Error answers to clients (refusals and failures) by HTTP status.",
      "status");
    C(retries, "pdserve_router_retries_total", "Requests sent again to another instance after a failure.", NULL);
    H(ttft, "pdserve_router_time_to_first_token_seconds", "Time from a request's arrival to its first token.",
      pd_buckets_ttft);
    H(itl, "pdserve_router_inter_token_latency_seconds", "Time between consecutive token messages of a choice.",
      pd_buckets_itl);
    H(e2e, "pdserve_router_e2e_request_latency_seconds", "Time from a request's arrival to its last byte.",
      pd_buckets_request);
    H(queue, "pdserve_router_request_queue_time_seconds", "Queue time of finished choices (prefill and decode).",
      pd_buckets_ttft);
    H(prefill, "pdserve_router_request_prefill_time_seconds", "Prefill compute time of finished choices.",
      pd_buckets_ttft);
    H(transfer, "pdserve_router_request_kv_transfer_time_seconds",
      "KV transfer time of finished choices after their prefill ended.", pd_buckets_ttft);
    H(decode, "pdserve_router_request_decode_time_seconds", "Decode time of finished choices.", pd_buckets_request);
    G(inst_healthy, "pdserve_router_instance_healthy", "Health of each instance (1 healthy).", "instance,role");
    G(inst_running, "pdserve_router_instance_running_requests", "Requests running on each instance (last poll).",
      "instance,role");
    G(inst_waiting, "pdserve_router_instance_waiting_requests", "Requests waiting on each instance (last poll).",
      "instance,role");
    G(inst_kv_usage, "pdserve_router_instance_kv_cache_usage_perc", "KV cache usage of each instance (0-1).",
      "instance,role");
    G(inst_free_blocks, "pdserve_router_instance_kv_cache_free_blocks", "Free KV blocks of each instance.",
      "instance,role");
    G(inst_queued, "pdserve_router_instance_queued_prompt_tokens", "Prompt tokens queued on each instance.",
      "instance,role");
    G(inst_inflight, "pdserve_router_instance_inflight_requests", "Requests the router has in flight on each instance.",
      "instance,role");
#undef G
#undef C
#undef H
    if (st == PD_OK) st = pd_metrics_on_collect(r, collect_cb, rt);
    if (st != PD_OK) {
        rt_metrics_free(rt);
        return st;
    }
    static const char *const why[] = {"stop", "length", "abort", "error"};
    for (size_t i = 0; i < PD_ARRAY_LEN(why); i++) pd_counter_add(m->finished, PD_LV(why[i]), 0);
    return PD_OK;
}

void rt_metrics_free(rt_router *rt)
{
    pd_metrics_destroy(rt->m.reg);
    memset(&rt->m, 0, sizeof rt->m);
}

void rt_metrics_choice(rt_router *rt, const rt_choice *c)
{
    rt_metrics *m = &rt->m;
    if (c->st.state != RT_CH_DONE || !strcmp(c->st.finish, "abort")) return;
    pd_histogram_observe(m->queue, NULL, c->tm.queue);
    if (c->tm.prefill > 0) pd_histogram_observe(m->prefill, NULL, c->tm.prefill);
    if (c->up.p) pd_histogram_observe(m->transfer, NULL, c->tm.transfer);
    pd_histogram_observe(m->decode, NULL, c->tm.decode);
}
