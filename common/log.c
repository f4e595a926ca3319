/* Logging to stderr: one line per call, written with a single fwrite so lines from threads never interleave. */
#include "common/pd_common.h"

#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static int g_level = -2; /* -2: not set yet (PD_LOG_OFF is -1) */

static pd_log_level level_from_env(void)
{
    const char *e = getenv("PDSERVE_LOG");
    pd_log_level l;
    if (e && pd_log_level_parse(e, &l) == PD_OK) return l;
    return PD_LOG_INFO;
}

void pd_log_set_level(pd_log_level lvl) { g_level = (int)lvl; }

pd_log_level pd_log_get_level(void)
{
    if (g_level == -2) g_level = (int)level_from_env();
    return (pd_log_level)g_level;
}

pd_status pd_log_level_parse(const char *s, pd_log_level *out)
{
    static const char *names[] = {"error", "warn", "info", "debug"};
    for (size_t i = 0; i < PD_ARRAY_LEN(names); i++) {
        if (strcasecmp(s, names[i]) == 0) {
            *out = (pd_log_level)i;
            return PD_OK;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = PD_LOG_WARN;
        return PD_OK;
    }
    return PD_ERR_INVALID;
}

void pd_log_write(pd_log_level lvl, const char *file, int line, const char *fmt, ...)
{
    static const char *tags[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    if (lvl < PD_LOG_ERROR) return;
    char buf[4096];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;
    int n =
        snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s:%d ", tm.tm_year + 1900, tm.tm_mon + 1,
                 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000, tags[lvl], base, line);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : PD_MIN((size_t)m, sizeof buf - (size_t)n - 2));
    buf[len++] = '\n';
    fwrite(buf, 1, len, stderr);
}

int pd_log_due(pd_log_limit *l, double every, unsigned long *count, double *since)
{
    l->pending++;
    const double now = pd_time_now();
    if (l->logged_at != 0 && now - l->logged_at < every) return 0;
    *count = l->pending;
    *since = l->logged_at == 0 ? 0 : now - l->logged_at;
    l->logged_at = now;
    l->pending = 0;
    return 1;
}

void pd_abort(const char *file, int line, const char *expr)
{
    fprintf(stderr, "%s:%d: assertion failed: %s\n", file, line, expr);
    fflush(stderr);
    abort();
}

pd_status pd_fail_at(const char *file, int line, char *err, size_t errlen, pd_status st, const char *area,
                     const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (err && errlen) snprintf(err, errlen, "%s", buf);
    if (PD_LOG_ERROR <= pd_log_get_level()) {
        if (area) pd_log_write(PD_LOG_ERROR, file, line, "%s: %s", area, buf);
        else pd_log_write(PD_LOG_ERROR, file, line, "%s", buf);
    }
    return st;
}
