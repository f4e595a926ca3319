/* The Prometheus metric registry: families in registration order, each with its series (one per label-value
 * tuple, in creation order). One mutex guards all values; collect hooks run before rendering, unlocked, so
 * they may update metrics themselves. */
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>

#include "common/pd_metrics.h"

typedef struct series {
    char *lv[PD_METRIC_MAX_LABELS];
    double value;                          /* counter, gauge */
    uint64_t buckets[PD_METRIC_MAX_BUCKETS]; /* histogram: per bucket (not cumulative); [n_bounds] is +Inf */
    uint64_t count;
    double sum;
    struct series *next;
} series;

struct pd_metric_s {
    pd_metrics *reg;
    pd_metric_type type;
    char *name, *help;
    char *labels[PD_METRIC_MAX_LABELS];
    int n_labels;
    double bounds[PD_METRIC_MAX_BUCKETS];
    int n_bounds;
    series *series, **tail;
    struct pd_metric_s *next;
};

typedef struct hook {
    pd_metrics_collect_cb cb;
    void *arg;
    struct hook *next;
} hook;

struct pd_metrics_s {
    pthread_mutex_t mu;
    pd_metric *families, **tail;
    hook *hooks, **hook_tail;
};

const double pd_buckets_ttft[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                  1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0};
const int pd_buckets_ttft_n = (int)PD_ARRAY_LEN(pd_buckets_ttft);
const double pd_buckets_itl[] = {0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4,
                                 0.5,   0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
const int pd_buckets_itl_n = (int)PD_ARRAY_LEN(pd_buckets_itl);
const double pd_buckets_request[] = {0.1,  0.3,  0.5,  0.8,  1.0,   1.5,   2.0,   2.5,   5.0,   10.0, 15.0,
                                     20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
const int pd_buckets_request_n = (int)PD_ARRAY_LEN(pd_buckets_request);

pd_status pd_metrics_create(pd_metrics **out)
{
    pd_metrics *r = calloc(1, sizeof *r);
    if (!r) return PD_ERR_NOMEM;
    pthread_mutex_init(&r->mu, NULL);
    r->tail = &r->families;
    r->hook_tail = &r->hooks;
    *out = r;
    return PD_OK;
}

static void series_free(series *s, int n_labels)
{
    for (int i = 0; i < n_labels; i++) free(s->lv[i]);
    free(s);
}

static void family_free(pd_metric *m)
{
    for (series *s = m->series, *nx; s; s = nx) {
        nx = s->next;
        series_free(s, m->n_labels);
    }
    for (int i = 0; i < m->n_labels; i++) free(m->labels[i]);
    free(m->name);
    free(m->help);
    free(m);
}

void pd_metrics_destroy(pd_metrics *r)
{
    if (!r) return;
    for (pd_metric *m = r->families, *nx; m; m = nx) {
        nx = m->next;
        family_free(m);
    }
    for (hook *h = r->hooks, *nx; h; h = nx) {
        nx = h->next;
        free(h);
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

static struct series *find_series(pd_metric *m, const char *const *lv, int create);

static int name_ok(const char *s, int label)
{
    if (!s || !*s) return 0;
    if (label && s[0] == '_' && s[1] == '_') return 0; /* reserved */
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (!label && c == ':');
        if (!alpha && !(p > s && c >= '0' && c <= '9')) return 0;
    }
    return 1;
}

static size_t ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && !strcmp(s + n - k, suf);
}

static pd_status family_add(pd_metrics *r, pd_metric_type type, const char *name, const char *help,
                            const char *labels, const double *bounds, int n_bounds, pd_metric **out)
{
    if (!r || !name_ok(name, 0) || !help) return PD_ERR_INVALID;
    if ((type == PD_METRIC_COUNTER) != (ends_with(name, "_total") != 0)) return PD_ERR_INVALID;
    if (type == PD_METRIC_HISTOGRAM) {
        if (n_bounds < 1 || n_bounds >= PD_METRIC_MAX_BUCKETS) return PD_ERR_INVALID;
        for (int i = 0; i < n_bounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) return PD_ERR_INVALID;
    }
    pd_metric *m = calloc(1, sizeof *m);
    if (!m) return PD_ERR_NOMEM;
    m->reg = r;
    m->type = type;
    m->tail = &m->series;
    m->name = strdup(name);
    m->help = strdup(help);
    pd_status st = m->name && m->help ? PD_OK : PD_ERR_NOMEM;
    if (st == PD_OK && labels && *labels) {
        char *copy = strdup(labels), *save = NULL;
        if (!copy) st = PD_ERR_NOMEM;
        for (char *t = copy ? strtok_r(copy, ", ", &save) : NULL; t && st == PD_OK; t = strtok_r(NULL, ", ", &save)) {
            if (m->n_labels == PD_METRIC_MAX_LABELS || !name_ok(t, 1) ||
                (type == PD_METRIC_HISTOGRAM && !strcmp(t, "le"))) {
                st = PD_ERR_INVALID;
                break;
            }
            for (int i = 0; i < m->n_labels; i++)
                if (!strcmp(m->labels[i], t)) st = PD_ERR_INVALID;
            if (st == PD_OK && !(m->labels[m->n_labels++] = strdup(t))) st = PD_ERR_NOMEM;
        }
        free(copy);
    }
    if (type == PD_METRIC_HISTOGRAM) {
        memcpy(m->bounds, bounds, (size_t)n_bounds * sizeof *bounds);
        m->n_bounds = n_bounds;
    }
    pthread_mutex_lock(&r->mu);
    for (pd_metric *x = r->families; x && st == PD_OK; x = x->next)
        if (!strcmp(x->name, name)) st = PD_ERR_INVALID;
    if (st == PD_OK && m->n_labels == 0 && !find_series(m, NULL, 1)) st = PD_ERR_NOMEM; /* shown from the start */
    if (st == PD_OK) {
        *r->tail = m;
        r->tail = &m->next;
    }
    pthread_mutex_unlock(&r->mu);
    if (st != PD_OK) {
        family_free(m);
        return st;
    }
    *out = m;
    return PD_OK;
}

pd_status pd_metrics_counter(pd_metrics *r, const char *name, const char *help, const char *labels, pd_metric **out)
{
    return family_add(r, PD_METRIC_COUNTER, name, help, labels, NULL, 0, out);
}

pd_status pd_metrics_gauge(pd_metrics *r, const char *name, const char *help, const char *labels, pd_metric **out)
{
    return family_add(r, PD_METRIC_GAUGE, name, help, labels, NULL, 0, out);
}

pd_status pd_metrics_histogram(pd_metrics *r, const char *name, const char *help, const char *labels,
                               const double *bounds, int n_bounds, pd_metric **out)
{
    return family_add(r, PD_METRIC_HISTOGRAM, name, help, labels, bounds, n_bounds, out);
}

pd_metric *pd_metrics_find(pd_metrics *r, const char *name)
{
    pthread_mutex_lock(&r->mu);
    pd_metric *m = r->families;
    while (m && strcmp(m->name, name) != 0) m = m->next;
    pthread_mutex_unlock(&r->mu);
    return m;
}

pd_status pd_metrics_on_collect(pd_metrics *r, pd_metrics_collect_cb cb, void *arg)
{
    hook *h = calloc(1, sizeof *h);
    if (!h) return PD_ERR_NOMEM;
    h->cb = cb;
    h->arg = arg;
    pthread_mutex_lock(&r->mu);
    *r->hook_tail = h;
    r->hook_tail = &h->next;
    pthread_mutex_unlock(&r->mu);
    return PD_OK;
}

/* The series for lv (created when create is set), under the lock. NULL when absent or out of memory. */
static series *find_series(pd_metric *m, const char *const *lv, int create)
{
    for (series *s = m->series; s; s = s->next) {
        int eq = 1;
        for (int i = 0; i < m->n_labels && eq; i++) eq = !strcmp(s->lv[i], lv && lv[i] ? lv[i] : "");
        if (eq) return s;
    }
    if (!create) return NULL;
    series *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    for (int i = 0; i < m->n_labels; i++)
        if (!(s->lv[i] = strdup(lv && lv[i] ? lv[i] : ""))) {
            series_free(s, m->n_labels);
            return NULL;
        }
    *m->tail = s;
    m->tail = &s->next;
    return s;
}

typedef enum { OP_ADD, OP_SET, OP_OBSERVE } op_kind;

static void update(pd_metric *m, pd_metric_type want, op_kind op, const char *const *lv, double v)
{
    if (!m || m->type != want || isnan(v)) return;
    if (want == PD_METRIC_COUNTER && op == OP_ADD && v < 0) return;
    pthread_mutex_lock(&m->reg->mu);
    series *s = find_series(m, lv, 1);
    if (s) {
        if (op == OP_ADD) s->value += v;
        else if (op == OP_SET) s->value = v;
        else {
            int b = 0;
            while (b < m->n_bounds && v > m->bounds[b]) b++;
            s->buckets[b]++;
            s->count++;
            s->sum += v;
        }
    }
    pthread_mutex_unlock(&m->reg->mu);
}

void pd_counter_add(pd_metric *m, const char *const *lv, double v) { update(m, PD_METRIC_COUNTER, OP_ADD, lv, v); }
void pd_counter_set(pd_metric *m, const char *const *lv, double v) { update(m, PD_METRIC_COUNTER, OP_SET, lv, v); }
void pd_gauge_set(pd_metric *m, const char *const *lv, double v) { update(m, PD_METRIC_GAUGE, OP_SET, lv, v); }
void pd_gauge_add(pd_metric *m, const char *const *lv, double v) { update(m, PD_METRIC_GAUGE, OP_ADD, lv, v); }
void pd_histogram_observe(pd_metric *m, const char *const *lv, double v)
{
    update(m, PD_METRIC_HISTOGRAM, OP_OBSERVE, lv, v);
}

void pd_metric_clear(pd_metric *m)
{
    if (!m) return;
    pthread_mutex_lock(&m->reg->mu);
    for (series *s = m->series, *nx; s; s = nx) {
        nx = s->next;
        series_free(s, m->n_labels);
    }
    m->series = NULL;
    m->tail = &m->series;
    pthread_mutex_unlock(&m->reg->mu);
}

pd_status pd_metric_get(pd_metric *m, const char *const *lv, double *value)
{
    if (!m || m->type == PD_METRIC_HISTOGRAM) return PD_ERR_INVALID;
    pthread_mutex_lock(&m->reg->mu);
    series *s = find_series(m, lv, 0);
    if (s) *value = s->value;
    pthread_mutex_unlock(&m->reg->mu);
    return s ? PD_OK : PD_ERR_NOT_FOUND;
}

pd_status pd_histogram_get(pd_metric *m, const char *const *lv, uint64_t *count, double *sum)
{
    if (!m || m->type != PD_METRIC_HISTOGRAM) return PD_ERR_INVALID;
    pthread_mutex_lock(&m->reg->mu);
    series *s = find_series(m, lv, 0);
    if (s) {
        *count = s->count;
        *sum = s->sum;
    }
    pthread_mutex_unlock(&m->reg->mu);
    return s ? PD_OK : PD_ERR_NOT_FOUND;
}

/* ---- rendering -------------------------------------------------------------------------------------------- */

/* Escapes \ and newline (help) and also " (label values). */
static void sb_escaped(pd_buf *b, const char *s, int quote)
{
    for (; *s; s++) {
        if (*s == '\\') pd_buf_printf(b, "\\\\");
        else if (*s == '\n') pd_buf_printf(b, "\\n");
        else if (quote && *s == '"') pd_buf_printf(b, "\\\"");
        else pd_buf_printf(b, "%c", *s);
    }
}

static void sb_value(pd_buf *b, double v)
{
    if (isnan(v)) pd_buf_printf(b, "NaN");
    else if (isinf(v)) pd_buf_printf(b, v > 0 ? "+Inf" : "-Inf");
    else if (v == (double)(long long)v && fabs(v) < 1e15) pd_buf_printf(b, "%lld", (long long)v);
    else pd_buf_printf(b, "%.10g", v);
}

/* name{labels[,le="x"]} */
static void sb_series_name(pd_buf *b, const pd_metric *m, const series *s, const char *suffix, const char *le)
{
    pd_buf_printf(b, "%s%s", m->name, suffix);
    if (m->n_labels == 0 && !le) return;
    pd_buf_printf(b, "{");
    for (int i = 0; i < m->n_labels; i++) {
        pd_buf_printf(b, "%s%s=\"", i ? "," : "", m->labels[i]);
        sb_escaped(b, s->lv[i], 1);
        pd_buf_printf(b, "\"");
    }
    if (le) pd_buf_printf(b, "%sle=\"%s\"", m->n_labels ? "," : "", le);
    pd_buf_printf(b, "}");
}

pd_status pd_metrics_render(pd_metrics *r, char **out, size_t *len)
{
    pthread_mutex_lock(&r->mu);
    hook *hooks = r->hooks;
    pthread_mutex_unlock(&r->mu);
    for (hook *h = hooks; h; h = h->next) h->cb(r, h->arg); /* hooks are only ever appended */
    pd_buf b = {0};
    static const char *types[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&r->mu);
    for (const pd_metric *m = r->families; m; m = m->next) {
        pd_buf_printf(&b, "# HELP %s ", m->name);
        sb_escaped(&b, m->help, 0);
        pd_buf_printf(&b, "\n# TYPE %s %s\n", m->name, types[m->type]);
        for (const series *s = m->series; s; s = s->next) {
            if (m->type != PD_METRIC_HISTOGRAM) {
                sb_series_name(&b, m, s, "", NULL);
                pd_buf_printf(&b, " ");
                sb_value(&b, s->value);
                pd_buf_printf(&b, "\n");
                continue;
            }
            uint64_t cum = 0;
            for (int i = 0; i <= m->n_bounds; i++) {
                char le[40];
                cum += s->buckets[i];
                if (i < m->n_bounds) snprintf(le, sizeof le, "%.10g", m->bounds[i]);
                else snprintf(le, sizeof le, "+Inf");
                sb_series_name(&b, m, s, "_bucket", le);
                pd_buf_printf(&b, " %llu\n", (unsigned long long)cum);
            }
            sb_series_name(&b, m, s, "_sum", NULL);
            pd_buf_printf(&b, " ");
            sb_value(&b, s->sum);
            pd_buf_printf(&b, "\n");
            sb_series_name(&b, m, s, "_count", NULL);
            pd_buf_printf(&b, " %llu\n", (unsigned long long)s->count);
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (b.failed || pd_buf_append(&b, "", 0) != PD_OK) { /* appending nothing: a page with no families is "" */
        pd_buf_free(&b);
        return PD_ERR_NOMEM;
    }
    *out = b.data;
    *len = b.len;
    return PD_OK;
}
