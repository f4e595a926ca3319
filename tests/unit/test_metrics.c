/* Unit tests of the Prometheus metric registry: registration rules, counters/gauges/histograms with labels,
 * escaping, collect hooks, concurrent updates, and the exact text format. */
#include <check.h>
#include <pthread.h>
#include <string.h>

#include "common/pd_metrics.h"
#include "pd_check.h"

START_TEST(test_register_rules)
{
    pd_metrics *r;
    pd_metric *m;
    ck_assert_int_eq(pd_metrics_create(&r), PD_OK);
    ck_assert_int_eq(pd_metrics_counter(r, "pd_x_total", "x", NULL, &m), PD_OK);
    ck_assert_ptr_eq(pd_metrics_find(r, "pd_x_total"), m);
    ck_assert_int_eq(pd_metrics_counter(r, "pd_x_total", "dup", NULL, &m), PD_ERR_INVALID);  /* duplicate */
    ck_assert_int_eq(pd_metrics_counter(r, "pd_y", "no _total", NULL, &m), PD_ERR_INVALID);
    ck_assert_int_eq(pd_metrics_gauge(r, "pd_g_total", "gauge with _total", NULL, &m), PD_ERR_INVALID);
    ck_assert_int_eq(pd_metrics_gauge(r, "9bad", "h", NULL, &m), PD_ERR_INVALID);
    ck_assert_int_eq(pd_metrics_gauge(r, "pd-bad", "h", NULL, &m), PD_ERR_INVALID);
    ck_assert_int_eq(pd_metrics_gauge(r, "pd_g", "h", "a,__b", &m), PD_ERR_INVALID);    /* reserved label */
    ck_assert_int_eq(pd_metrics_gauge(r, "pd_g", "h", "a,a", &m), PD_ERR_INVALID);      /* repeated label */
    ck_assert_int_eq(pd_metrics_gauge(r, "pd_g", "h", "a,b,c,d,e", &m), PD_ERR_INVALID); /* too many */
    double bad[] = {1, 0.5};
    ck_assert_int_eq(pd_metrics_histogram(r, "pd_h_seconds", "h", NULL, bad, 2, &m), PD_ERR_INVALID);
    double ok[] = {0.5, 1};
    ck_assert_int_eq(pd_metrics_histogram(r, "pd_h_seconds", "h", "le", ok, 2, &m), PD_ERR_INVALID);
    ck_assert_int_eq(pd_metrics_histogram(r, "pd_h_seconds", "h", NULL, ok, 2, &m), PD_OK);
    ck_assert_ptr_null(pd_metrics_find(r, "pd_g"));
    pd_metrics_destroy(r);
    pd_metrics_destroy(NULL);
}
END_TEST

START_TEST(test_render_exact)
{
    pd_metrics *r;
    pd_metric *c, *g, *h, *e;
    ck_assert_int_eq(pd_metrics_create(&r), PD_OK);
    ck_assert_int_eq(pd_metrics_counter(r, "pd_req_total", "Requests by reason.", "finished_reason", &c), PD_OK);
    ck_assert_int_eq(pd_metrics_gauge(r, "pd_usage_perc", "Usage\\ratio\nsecond line.", NULL, &g), PD_OK);
    double b[] = {0.1, 1};
    ck_assert_int_eq(pd_metrics_histogram(r, "pd_lat_seconds", "Latency.", "role", b, 2, &h), PD_OK);
    ck_assert_int_eq(pd_metrics_counter(r, "pd_empty_total", "Never updated.", NULL, &e), PD_OK);
    pd_counter_add(c, PD_LV("stop"), 2);
    pd_counter_add(c, PD_LV("length"), 1);
    pd_counter_add(c, PD_LV("stop"), 1);
    pd_counter_add(c, PD_LV("stop"), -5);      /* ignored */
    pd_histogram_observe(c, PD_LV("stop"), 1); /* wrong kind: ignored */
    pd_gauge_set(g, NULL, 0.25);
    pd_histogram_observe(h, PD_LV("a\"b"), 0.05);
    pd_histogram_observe(h, PD_LV("a\"b"), 0.1);  /* le is inclusive */
    pd_histogram_observe(h, PD_LV("a\"b"), 3);
    char *txt;
    size_t len;
    ck_assert_int_eq(pd_metrics_render(r, &txt, &len), PD_OK);
    const char *want =
        "# HELP pd_req_total Requests by reason.\n"
        "# TYPE pd_req_total counter\n"
        "pd_req_total{finished_reason=\"stop\"} 3\n"
        "pd_req_total{finished_reason=\"length\"} 1\n"
        "# HELP pd_usage_perc Usage\\\\ratio\\nsecond line.\n"
        "# TYPE pd_usage_perc gauge\n"
        "pd_usage_perc 0.25\n"
        "# HELP pd_lat_seconds Latency.\n"
        "# TYPE pd_lat_seconds histogram\n"
        "pd_lat_seconds_bucket{role=\"a\\\"b\",le=\"0.1\"} 2\n"
        "pd_lat_seconds_bucket{role=\"a\\\"b\",le=\"1\"} 2\n"
        "pd_lat_seconds_bucket{role=\"a\\\"b\",le=\"+Inf\"} 3\n"
        "pd_lat_seconds_sum{role=\"a\\\"b\"} 3.15\n"
        "pd_lat_seconds_count{role=\"a\\\"b\"} 3\n"
        "# HELP pd_empty_total Never updated.\n"
        "# TYPE pd_empty_total counter\n"
        "pd_empty_total 0\n";
    ck_assert_str_eq(txt, want);
    ck_assert_uint_eq(len, strlen(want));
    free(txt);
    double v;
    uint64_t n;
    ck_assert_int_eq(pd_metric_get(c, PD_LV("stop"), &v), PD_OK);
    ck_assert(v == 3);
    ck_assert_int_eq(pd_metric_get(c, PD_LV("abort"), &v), PD_ERR_NOT_FOUND);
    ck_assert_int_eq(pd_histogram_get(h, PD_LV("a\"b"), &n, &v), PD_OK);
    ck_assert_uint_eq(n, 3);
    pd_metric_clear(c);
    ck_assert_int_eq(pd_metric_get(c, PD_LV("stop"), &v), PD_ERR_NOT_FOUND);
    pd_metrics_destroy(r);
}
END_TEST

static void collect_cb(pd_metrics *r, void *arg)
{
    int *calls = arg;
    (*calls)++;
    pd_gauge_set(pd_metrics_find(r, "pd_running"), NULL, *calls * 10);
}

START_TEST(test_collect_hook)
{
    pd_metrics *r;
    pd_metric *g;
    int calls = 0;
    ck_assert_int_eq(pd_metrics_create(&r), PD_OK);
    ck_assert_int_eq(pd_metrics_gauge(r, "pd_running", "Running.", NULL, &g), PD_OK);
    ck_assert_int_eq(pd_metrics_on_collect(r, collect_cb, &calls), PD_OK);
    char *txt;
    size_t len;
    ck_assert_int_eq(pd_metrics_render(r, &txt, &len), PD_OK);
    ck_assert_ptr_nonnull(strstr(txt, "pd_running 10\n"));
    free(txt);
    ck_assert_int_eq(pd_metrics_render(r, &txt, &len), PD_OK);
    ck_assert_ptr_nonnull(strstr(txt, "pd_running 20\n"));
    free(txt);
    ck_assert_int_eq(calls, 2);
    pd_metrics_destroy(r);
}
END_TEST

typedef struct {
    pd_metric *c, *h;
} thr_arg;

static void *hammer(void *p)
{
    thr_arg *a = p;
    static const char *const why[] = {"stop", "length", "abort"};
    for (int i = 0; i < 20000; i++) {
        pd_counter_add(a->c, PD_LV(why[i % 3]), 1);
        pd_histogram_observe(a->h, NULL, (i % 7) * 0.01);
    }
    return NULL;
}

START_TEST(test_threads)
{
    pd_metrics *r;
    thr_arg a;
    ck_assert_int_eq(pd_metrics_create(&r), PD_OK);
    ck_assert_int_eq(pd_metrics_counter(r, "pd_t_total", "t", "why", &a.c), PD_OK);
    ck_assert_int_eq(pd_metrics_histogram(r, "pd_t_seconds", "t", NULL, pd_buckets_itl, pd_buckets_itl_n, &a.h), PD_OK);
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, hammer, &a);
    char *txt;
    size_t len;
    for (int i = 0; i < 20; i++) { /* render while others update */
        ck_assert_int_eq(pd_metrics_render(r, &txt, &len), PD_OK);
        free(txt);
    }
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    double total = 0, v;
    static const char *const why[] = {"stop", "length", "abort"};
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(pd_metric_get(a.c, PD_LV(why[i]), &v), PD_OK);
        total += v;
    }
    ck_assert(total == 80000);
    uint64_t n;
    ck_assert_int_eq(pd_histogram_get(a.h, NULL, &n, &v), PD_OK);
    ck_assert_uint_eq(n, 80000);
    pd_metrics_destroy(r);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    PD_CHECK_CASE(s, "core", 0, test_register_rules, test_render_exact, test_collect_hook, test_threads);
    int failed = pd_check_run(s, 0);
    return failed ? 1 : 0;
}
