/* Prometheus metrics: a registry of counter, gauge and histogram families with labels, updated from any
 * thread, rendered as the Prometheus text exposition format (version 0.0.4) for GET /metrics. Components
 * register their own families on the registry they are handed; collect hooks refresh values (gauges read
 * from an engine, say) just before each rendering. */
#ifndef PD_METRICS_H
#define PD_METRICS_H

#include "common/pd_common.h"

typedef enum { PD_METRIC_COUNTER, PD_METRIC_GAUGE, PD_METRIC_HISTOGRAM } pd_metric_type;

typedef struct pd_metrics_s pd_metrics; /* the registry */
typedef struct pd_metric_s pd_metric;   /* one family: a name, help, label names, its series */

#define PD_METRIC_MAX_LABELS 4
#define PD_METRIC_MAX_BUCKETS 32

/* Label values in the order of the family's label names: pd_counter_add(m, PD_LV("stop"), 1). A family without
 * labels takes NULL. */
#define PD_LV(...) ((const char *const[]){__VA_ARGS__})

pd_status pd_metrics_create(pd_metrics **out);
/* Frees the registry and every family in it (their handles become invalid). Accepts NULL. */
void pd_metrics_destroy(pd_metrics *r);

/* Registers a family. name must be a valid Prometheus name (counters end in _total); labels is a
 * comma-separated list of label names ("finished_reason", "instance,role") or NULL. Histograms take n_bounds
 * strictly increasing finite upper bounds (the +Inf bucket is implicit). PD_ERR_INVALID for a bad or
 * duplicate name, bad labels or bounds; the registry is unchanged then. The registry owns the family. A family
 * without labels has its one series (at 0) from the start; labelled series appear on first update. */
pd_status pd_metrics_counter(pd_metrics *r, const char *name, const char *help, const char *labels, pd_metric **out);
pd_status pd_metrics_gauge(pd_metrics *r, const char *name, const char *help, const char *labels, pd_metric **out);
pd_status pd_metrics_histogram(pd_metrics *r, const char *name, const char *help, const char *labels,
                               const double *bounds, int n_bounds, pd_metric **out);
/* The family registered under name, or NULL. */
pd_metric *pd_metrics_find(pd_metrics *r, const char *name);

/* Collect hooks run (in registration order, without the registry lock) at the start of every rendering. */
typedef void (*pd_metrics_collect_cb)(pd_metrics *r, void *arg);
pd_status pd_metrics_on_collect(pd_metrics *r, pd_metrics_collect_cb cb, void *arg);

/* Updates. lv holds one value per label name (NULL without labels); a series is created on first use. Any
 * thread. Updates of the wrong kind (observe on a counter, a negative counter increment) are ignored: they are
 * programming errors that must not take a server down. Out of memory drops the update. */
void pd_counter_add(pd_metric *m, const char *const *lv, double v);
void pd_gauge_set(pd_metric *m, const char *const *lv, double v);
void pd_gauge_add(pd_metric *m, const char *const *lv, double v);
/* A counter whose value lives elsewhere (an engine's step count): sets it from a collect hook. */
void pd_counter_set(pd_metric *m, const char *const *lv, double v);
void pd_histogram_observe(pd_metric *m, const char *const *lv, double v);
/* Drops every series of the family (e.g. per-instance gauges refilled by a collect hook). */
void pd_metric_clear(pd_metric *m);

/* Reads: the value of a counter/gauge series, or a histogram series' count and sum. PD_ERR_NOT_FOUND when the
 * series does not exist yet. */
pd_status pd_metric_get(pd_metric *m, const char *const *lv, double *value);
pd_status pd_histogram_get(pd_metric *m, const char *const *lv, uint64_t *count, double *sum);

/* The whole registry in the text exposition format, as a malloc'd NUL-terminated string. */
pd_status pd_metrics_render(pd_metrics *r, char **out, size_t *len);

/* Bucket bounds in seconds, modelled on vLLM's. */
extern const double pd_buckets_ttft[];      /* time to first token, queue, prefill, transfer: 1 ms .. 640 s */
extern const int pd_buckets_ttft_n;
extern const double pd_buckets_itl[];       /* inter-token latency: 5 ms .. 80 s */
extern const int pd_buckets_itl_n;
extern const double pd_buckets_request[];   /* end-to-end and decode time: 0.1 s .. 7680 s */
extern const int pd_buckets_request_n;

#endif
