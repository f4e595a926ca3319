/* compare: result files (single runs or sweeps; one file = one deployment) -> hand-drawn SVG line charts
 * (latency percentiles vs request rate, throughput and goodput vs rate, TTFT and ITL CDFs) and a markdown table.
 * A run's x position is its request rate; runs at rate inf appear in the table (and on the rate axes only when a
 * file has nothing else, at their measured request throughput). */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "benchmarks/pdserve_bench/bench.h"

#define MAX_FILES 16
#define MAX_POINTS 64

typedef struct {
    char label[128];
    cJSON *root;
    const cJSON *pts[MAX_POINTS]; /* sorted by x */
    double x[MAX_POINTS];
    int n;
    const cJSON *goodput_rate;
} series_t;

static const char *const COLORS[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
                                     "#17becf"};

static double num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

/* Sort key: the request rate, inf last. */
static double point_x(const cJSON *r)
{
    double rate = num(r, "request_rate");
    return isfinite(rate) ? rate : INFINITY;
}

/* ---- drawing ---------------------------------------------------------------------------------------------- */

typedef struct {
    const double *x, *y;
    int n;
    const char *color;
    int dashed;
} line_t;

static double nice_step(double span)
{
    if (!(span > 0)) return 1;
    double raw = span / 5, mag = pow(10, floor(log10(raw))), f = raw / mag;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag;
}

static void fmt_tick(char *buf, size_t n, double v)
{
    if (fabs(v) >= 1000) snprintf(buf, n, "%.0f", v);
    else if (fabs(v) >= 10 || v == 0) snprintf(buf, n, "%.4g", v);
    else snprintf(buf, n, "%.3g", v);
}

/* One chart at (ox, oy) of size w x h: axes from 0 (y) and from the smallest x (or 0), ticks, grid, lines. */
static void panel(FILE *f, double ox, double oy, double w, double h, const char *title, const char *xl, const char *yl,
                  const line_t *ls, int nl, int x_from_zero)
{
    double xmin = INFINITY, xmax = -INFINITY, ymax = 0;
    for (int i = 0; i < nl; i++)
        for (int k = 0; k < ls[i].n; k++) {
            if (!isfinite(ls[i].x[k]) || !isfinite(ls[i].y[k])) continue;
            xmin = fmin(xmin, ls[i].x[k]);
            xmax = fmax(xmax, ls[i].x[k]);
            ymax = fmax(ymax, ls[i].y[k]);
        }
    if (!isfinite(xmin)) xmin = 0, xmax = 1;
    if (x_from_zero) xmin = 0;
    if (xmax <= xmin) xmax = xmin + 1;
    if (ymax <= 0) ymax = 1;
    double ys = nice_step(ymax), xs = nice_step(xmax - xmin);
    ymax = ceil(ymax * 1.0001 / ys) * ys;
    xmin = floor(xmin / xs) * xs;
    xmax = ceil(xmax / xs) * xs;
    double L = ox + 62, R = ox + w - 12, T = oy + 28, B = oy + h - 42;
#define PX(v) (L + ((v) - xmin) / (xmax - xmin) * (R - L))
#define PY(v) (B - (v) / ymax * (B - T))
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"14\" font-weight=\"bold\" text-anchor=\"middle\">%s</text>\n",
            (L + R) / 2, oy + 18, title);
    for (double v = 0; v <= ymax * 1.0001; v += ys) {
        char t[32];
        fmt_tick(t, sizeof t, v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, PY(v), R, PY(v));
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"end\">%s</text>\n", L - 4, PY(v) + 4, t);
    }
    for (double v = xmin; v <= xmax * 1.0001 + 1e-12; v += xs) {
        char t[32];
        fmt_tick(t, sizeof t, v);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>\n", PX(v), T, PX(v), B);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">%s</text>\n", PX(v), B + 15, t);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n", L, T,
            R - L, B - T);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\">%s</text>\n", (L + R) / 2, B + 32,
            xl);
    fprintf(f,
            "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" text-anchor=\"middle\" transform=\"rotate(-90 %.1f %.1f)\">"
            "%s</text>\n",
            ox + 14, (T + B) / 2, ox + 14, (T + B) / 2, yl);
    for (int i = 0; i < nl; i++) {
        if (ls[i].n == 0) continue;
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"", ls[i].color,
                ls[i].dashed ? " stroke-dasharray=\"6 4\"" : "");
        for (int k = 0; k < ls[i].n; k++)
            if (isfinite(ls[i].x[k]) && isfinite(ls[i].y[k])) fprintf(f, "%.1f,%.1f ", PX(ls[i].x[k]), PY(ls[i].y[k]));
        fprintf(f, "\"/>\n");
        if (ls[i].n <= 40) /* markers on sweep points, not on CDF curves */
            for (int k = 0; k < ls[i].n; k++)
                if (isfinite(ls[i].x[k]) && isfinite(ls[i].y[k]))
                    fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", PX(ls[i].x[k]),
                            PY(ls[i].y[k]), ls[i].color);
    }
#undef PX
#undef PY
}

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else fputc(*s, f);
    }
}

static FILE *svg_open(const char *dir, const char *name, double w, double h, const series_t *s, int ns,
                      const char *note)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" "
               "height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" font-family=\"sans-serif\">\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", w, h + 30, w, h + 30);
    double x = 12;
    for (int i = 0; i < ns; i++) { /* legend */
        fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"14\" height=\"4\" fill=\"%s\"/>\n", x, h + 12,
                COLORS[i % (int)PD_ARRAY_LEN(COLORS)]);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\">", x + 18, h + 18);
        xml_text(f, s[i].label);
        fprintf(f, "</text>\n");
        x += 30 + 7.0 * (double)strlen(s[i].label);
    }
    if (note)
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" fill=\"#555\">%s</text>\n", x + 10, h + 18, note);
    return f;
}

static int svg_close(FILE *f)
{
    fprintf(f, "</svg>\n");
    return fclose(f) == 0;
}

/* ---- charts ----------------------------------------------------------------------------------------------- */

static int latency_chart(const char *dir, series_t *s, int ns)
{
    static const struct { const char *key, *title; } m[] = {
        {"ttft", "Time to first token"}, {"tpot", "Time per output token"}, {"itl", "Inter-token latency"},
        {"e2el", "End-to-end latency"}};
    FILE *f = svg_open(dir, "latency_vs_rate.svg", 1000, 720, s, ns, "solid: median, dashed: p99");
    if (!f) return 0;
    for (int p = 0; p < 4; p++) {
        double ys[MAX_FILES][2][MAX_POINTS];
        line_t ls[MAX_FILES * 2];
        int nl = 0;
        for (int i = 0; i < ns; i++)
            for (int q = 0; q < 2; q++) {
                char k[64];
                snprintf(k, sizeof k, "%s_%s_ms", q ? "p99" : "median", m[p].key);
                for (int j = 0; j < s[i].n; j++) ys[i][q][j] = num(s[i].pts[j], k);
                ls[nl++] = (line_t){s[i].x, ys[i][q], s[i].n, COLORS[i % (int)PD_ARRAY_LEN(COLORS)], q};
            }
        panel(f, (p % 2) * 500.0, (p / 2) * 360.0, 500, 360, m[p].title, "request rate (req/s)", "ms", ls, nl, 1);
    }
    return svg_close(f);
}

static int throughput_chart(const char *dir, series_t *s, int ns)
{
    FILE *f =
        svg_open(dir, "throughput_vs_rate.svg", 1000, 360, s, ns, "right: solid request throughput, dashed goodput");
    if (!f) return 0;
    double y1[MAX_FILES][MAX_POINTS], y2[MAX_FILES][MAX_POINTS], y3[MAX_FILES][MAX_POINTS];
    line_t a[MAX_FILES], b[MAX_FILES * 2];
    int nb = 0;
    for (int i = 0; i < ns; i++) {
        const char *c = COLORS[i % (int)PD_ARRAY_LEN(COLORS)];
        for (int j = 0; j < s[i].n; j++) {
            y1[i][j] = num(s[i].pts[j], "output_throughput");
            y2[i][j] = num(s[i].pts[j], "request_throughput");
            y3[i][j] = num(s[i].pts[j], "request_goodput");
        }
        a[i] = (line_t){s[i].x, y1[i], s[i].n, c, 0};
        b[nb++] = (line_t){s[i].x, y2[i], s[i].n, c, 0};
        b[nb++] = (line_t){s[i].x, y3[i], s[i].n, c, 1};
    }
    panel(f, 0, 0, 500, 360, "Output token throughput", "request rate (req/s)", "tokens/s", a, ns, 1);
    panel(f, 500, 0, 500, 360, "Request throughput and goodput", "request rate (req/s)", "requests/s", b, nb, 1);
    return svg_close(f);
}

/* The run of s used for CDFs: the one at rate cdf_rate if given, else the highest rate. */
static const cJSON *cdf_point(const series_t *s, double cdf_rate)
{
    if (s->n == 0) return NULL;
    if (cdf_rate > 0)
        for (int j = 0; j < s->n; j++)
            if (fabs(num(s->pts[j], "request_rate") - cdf_rate) < 1e-9) return s->pts[j];
    return s->pts[s->n - 1];
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cdf_chart(const char *dir, const char *file, const char *title, const char *key, series_t *s, int ns,
                     double cdf_rate)
{
    char note[128];
    snprintf(note, sizeof note, "at %s", cdf_rate > 0 ? "the chosen rate" : "each deployment's highest rate");
    FILE *f = svg_open(dir, file, 700, 420, s, ns, note);
    if (!f) return 0;
    double *xs[MAX_FILES] = {0}, *ys[MAX_FILES] = {0};
    line_t ls[MAX_FILES] = {{0}};
    for (int i = 0; i < ns; i++) {
        const cJSON *p = cdf_point(&s[i], cdf_rate), *arr = p ? cJSON_GetObjectItem(p, key) : NULL, *v;
        int n = 0, cap = 0;
        cJSON_ArrayForEach(v, arr)
        {
            const cJSON *e, *list = cJSON_IsArray(v) ? v : NULL; /* itls: a list per request */
            if (list) {
                cJSON_ArrayForEach(e, list) cap++;
            } else cap++;
        }
        xs[i] = malloc((size_t)(cap + 1) * sizeof(double));
        ys[i] = malloc((size_t)(cap + 1) * sizeof(double));
        if (!xs[i] || !ys[i]) cap = 0;
        cJSON_ArrayForEach(v, arr)
        {
            if (!xs[i] || !ys[i]) break;
            const cJSON *e;
            if (cJSON_IsArray(v)) {
                cJSON_ArrayForEach(e, v) if (cJSON_IsNumber(e)) xs[i][n++] = e->valuedouble * 1e3;
            } else if (cJSON_IsNumber(v) && v->valuedouble > 0) xs[i][n++] = v->valuedouble * 1e3;
        }
        if (n) qsort(xs[i], (size_t)n, sizeof(double), cmp_d);
        for (int k = 0; k < n; k++) ys[i][k] = (k + 1.0) / n;
        /* thin very long curves to about 1000 points */
        int step = n > 1000 ? n / 1000 : 1, m = 0;
        for (int k = 0; k < n; k += step) {
            xs[i][m] = xs[i][k];
            ys[i][m++] = ys[i][k];
        }
        if (n && (n - 1) % step) {
            xs[i][m] = xs[i][n - 1];
            ys[i][m++] = 1;
        }
        ls[i] = (line_t){xs[i], ys[i], m, COLORS[i % (int)PD_ARRAY_LEN(COLORS)], 0};
    }
    panel(f, 0, 0, 700, 420, title, "ms", "fraction of samples", ls, ns, 1);
    for (int i = 0; i < ns; i++) {
        free(xs[i]);
        free(ys[i]);
    }
    return svg_close(f);
}

static int summary_md(const char *dir, series_t *s, int ns)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/summary.md", dir);
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    fprintf(f, "# Benchmark comparison\n\n");
    fprintf(f, "| deployment | rate (req/s) | completed | failed | req/s | output tok/s | TTFT p50 / p99 (ms) | "
               "TPOT p50 / p99 (ms) | ITL p99 (ms) | E2E p50 (ms) | goodput (%%) |\n");
    fprintf(f, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < ns; i++)
        for (int j = 0; j < s[i].n; j++) {
            const cJSON *p = s[i].pts[j];
            const cJSON *rate = cJSON_GetObjectItem(p, "request_rate");
            char rs[32], gp[32];
            if (cJSON_IsNumber(rate)) snprintf(rs, sizeof rs, "%.3g", rate->valuedouble);
            else snprintf(rs, sizeof rs, "inf");
            double g = num(p, "goodput_fraction");
            if (isfinite(g)) snprintf(gp, sizeof gp, "%.0f", 100 * g);
            else snprintf(gp, sizeof gp, "-");
            fprintf(f, "| %s | %s | %.0f | %.0f | %.2f | %.1f | %.1f / %.1f | %.1f / %.1f | %.1f | %.1f | %s |\n",
                    s[i].label, rs, num(p, "completed"), num(p, "failed"), num(p, "request_throughput"),
                    num(p, "output_throughput"), num(p, "median_ttft_ms"), num(p, "p99_ttft_ms"),
                    num(p, "median_tpot_ms"), num(p, "p99_tpot_ms"), num(p, "p99_itl_ms"), num(p, "median_e2el_ms"),
                    gp);
        }
    int any = 0;
    for (int i = 0; i < ns; i++) any |= s[i].goodput_rate != NULL;
    if (any) {
        fprintf(f,
                "\nDistServe goodput (the highest request rate at which at least 90%% of requests met the SLOs):\n\n");
        for (int i = 0; i < ns; i++) {
            if (!s[i].goodput_rate) continue;
            if (cJSON_IsNumber(s[i].goodput_rate))
                fprintf(f, "- %s: %.3g req/s\n", s[i].label, s[i].goodput_rate->valuedouble);
            else fprintf(f, "- %s: none of the rates tried\n", s[i].label);
        }
    }
    fprintf(f, "\nPlots: `latency_vs_rate.svg`, `throughput_vs_rate.svg`, `ttft_cdf.svg`, `itl_cdf.svg`.\n");
    return fclose(f) == 0;
}

pd_status bench_compare(char **files, int n_files, const char *labels, const char *out_dir, double cdf_rate,
                        char *err, size_t errlen)
{
    if (n_files > MAX_FILES) return PD_FAIL(err, errlen, PD_ERR_RANGE, "compare", "at most %d files", MAX_FILES);
    series_t *s = calloc((size_t)n_files, sizeof *s);
    if (!s) return PD_ERR_NOMEM;
    pd_status st = PD_OK;
    char *lab = labels ? strdup(labels) : NULL, *save = NULL, *tok = lab ? strtok_r(lab, ",", &save) : NULL;
    for (int i = 0; i < n_files && st == PD_OK; i++, tok = tok ? strtok_r(NULL, ",", &save) : NULL) {
        char *buf = NULL;
        size_t len;
        if (pd_file_read(files[i], &buf, &len) != PD_OK) {
            st = PD_FAIL(err, errlen, PD_ERR_IO, "compare", "cannot read %s", files[i]);
            break;
        }
        s[i].root = cJSON_Parse(buf);
        free(buf);
        if (!cJSON_IsObject(s[i].root)) {
            st = PD_FAIL(err, errlen, PD_ERR_FORMAT, "compare", "%s is not a result file", files[i]);
            break;
        }
        const cJSON *sw = cJSON_GetObjectItem(s[i].root, "sweep"), *p;
        if (cJSON_IsArray(sw)) {
            cJSON_ArrayForEach(p, sw) if (s[i].n < MAX_POINTS) s[i].pts[s[i].n++] = p;
            s[i].goodput_rate = cJSON_GetObjectItem(s[i].root, "distserve_goodput_rate");
        } else {
            s[i].pts[s[i].n++] = s[i].root;
        }
        for (int j = 0; j < s[i].n; j++)
            if (!isfinite(num(s[i].pts[j], "completed")))
                st = PD_FAIL(err, errlen, PD_ERR_FORMAT, "compare", "%s: a run without 'completed'", files[i]);
        for (int a = 1; a < s[i].n; a++) /* insertion sort by x */
            for (int b = a; b > 0 && point_x(s[i].pts[b]) < point_x(s[i].pts[b - 1]); b--) {
                const cJSON *t = s[i].pts[b];
                s[i].pts[b] = s[i].pts[b - 1];
                s[i].pts[b - 1] = t;
            }
        /* x on the rate axes: an all-at-once run (rate inf) has no place among finite rates and is left out
         * there (the table has it); a file of inf runs only is placed at its measured request throughput */
        int finite = 0;
        for (int j = 0; j < s[i].n; j++) finite += isfinite(point_x(s[i].pts[j]));
        for (int j = 0; j < s[i].n; j++)
            s[i].x[j] = isfinite(point_x(s[i].pts[j])) ? point_x(s[i].pts[j])
                        : finite ? NAN : num(s[i].pts[j], "request_throughput");
        const cJSON *l = cJSON_GetObjectItem(s[i].root, "label");
        if (!cJSON_IsString(l) && s[i].n) l = cJSON_GetObjectItem(s[i].pts[0], "label");
        const char *base = strrchr(files[i], '/');
        snprintf(s[i].label, sizeof s[i].label, "%s",
                 tok ? tok : cJSON_IsString(l) ? l->valuestring : base ? base + 1 : files[i]);
    }
    free(lab);
    if (st == PD_OK && mkdir(out_dir, 0777) != 0 && errno != EEXIST)
        st = PD_FAIL(err, errlen, PD_ERR_IO, "compare", "cannot create %s", out_dir);
    if (st == PD_OK && !(latency_chart(out_dir, s, n_files) && throughput_chart(out_dir, s, n_files) &&
                         cdf_chart(out_dir, "ttft_cdf.svg", "TTFT distribution", "ttfts", s, n_files, cdf_rate) &&
                         cdf_chart(out_dir, "itl_cdf.svg", "Inter-token latency distribution", "itls", s, n_files,
                                   cdf_rate) &&
                         summary_md(out_dir, s, n_files)))
        st = PD_FAIL(err, errlen, PD_ERR_IO, "compare", "cannot write into %s", out_dir);
    for (int i = 0; i < n_files; i++) cJSON_Delete(s[i].root);
    free(s);
    return st;
}
