/* Options: a YAML mapping (libyaml event parser; scalars, and sequences of scalars joined with commas), then
 * --name value / --name=value flags. Every value is parsed and range-checked in one place. */
#include "common/pd_opts.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <yaml.h>

static pd_status fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static pd_status fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return PD_ERR_INVALID;
}

static int name_eq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a == '_' ? '-' : *a, y = *b == '_' ? '-' : *b;
        if (x != y) return 0;
    }
    return *a == *b;
}

static const pd_opt *find(const pd_opt *opts, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (name_eq(opts[i].name, name)) return &opts[i];
    return NULL;
}

pd_status pd_parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0 || !isfinite(v)) return PD_ERR_INVALID;
    double mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end == 'i') end++;
    if (*end == 'B' || *end == 'b') end++;
    if (*end || v * mul >= 18446744073709551616.0) return PD_ERR_INVALID; /* beyond uint64: no conversion (UB) */
    *out = (uint64_t)(v * mul);
    return PD_OK;
}

pd_status pd_opts_set(const pd_opt *opts, int n, const char *name, const char *value, char *err, size_t errlen)
{
    const pd_opt *o = find(opts, n, name);
    if (!o) return fail(err, errlen, "unknown option '%s'", name);
    char *end;
    switch (o->type) {
    case PD_OPT_STR: {
        char *d = strdup(value);
        if (!d) return PD_ERR_NOMEM;
        free(*(char **)o->dst);
        *(char **)o->dst = d;
        return PD_OK;
    }
    case PD_OPT_INT: {
        errno = 0;
        long v = strtol(value, &end, 10);
        if (end == value || *end || errno || v < INT32_MIN || v > INT32_MAX)
            return fail(err, errlen, "option '%s' needs an integer, got '%s'", o->name, value);
        if (o->min != o->max && (v < o->min || v > o->max))
            return fail(err, errlen, "option '%s' = %ld is outside [%g, %g]", o->name, v, o->min, o->max);
        *(int *)o->dst = (int)v;
        return PD_OK;
    }
    case PD_OPT_DOUBLE: {
        errno = 0;
        double v = strtod(value, &end);
        if (end == value || *end || errno || !isfinite(v))
            return fail(err, errlen, "option '%s' needs a number, got '%s'", o->name, value);
        if (o->min != o->max && (v < o->min || v > o->max))
            return fail(err, errlen, "option '%s' = %g is outside [%g, %g]", o->name, v, o->min, o->max);
        *(double *)o->dst = v;
        return PD_OK;
    }
    case PD_OPT_BOOL:
        if (!strcmp(value, "true") || !strcmp(value, "1") || !strcmp(value, "yes") || !strcmp(value, "on"))
            *(int *)o->dst = 1;
        else if (!strcmp(value, "false") || !strcmp(value, "0") || !strcmp(value, "no") || !strcmp(value, "off"))
            *(int *)o->dst = 0;
        else return fail(err, errlen, "option '%s' needs true or false, got '%s'", o->name, value);
        return PD_OK;
    case PD_OPT_SIZE: {
        uint64_t v;
        if (pd_parse_size(value, &v) != PD_OK)
            return fail(err, errlen, "option '%s' needs a size like 512M or 4G, got '%s'", o->name, value);
        *(uint64_t *)o->dst = v;
        return PD_OK;
    }
    }
    return PD_ERR_INVALID;
}

pd_status pd_opts_load_yaml(const pd_opt *opts, int n, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) return fail(err, errlen, "cannot open config file %s: %s", path, strerror(errno));
    yaml_parser_t p;
    yaml_event_t ev;
    pd_status st = PD_OK;
    if (!yaml_parser_initialize(&p)) {
        fclose(f);
        return PD_ERR_NOMEM;
    }
    yaml_parser_set_input_file(&p, f);
    enum { TOP, KEY, VALUE, SEQ } state = TOP;
    char key[128] = "", list[4096] = "";
    int depth = 0, done = 0;
    while (!done && st == PD_OK) {
        if (!yaml_parser_parse(&p, &ev)) {
            st = fail(err, errlen, "%s:%zu: YAML error: %s", path, p.problem_mark.line + 1,
                      p.problem ? p.problem : "parse error");
            break;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = 1; break;
        case YAML_MAPPING_START_EVENT:
            depth++;
            if (depth == 1) state = KEY;
            else
                st = fail(err, errlen, "%s:%zu: option '%s': nested mappings are not supported (write JSON in a "
                          "string)", path, ev.start_mark.line + 1, key);
            break;
        case YAML_MAPPING_END_EVENT: depth--; break;
        case YAML_SEQUENCE_START_EVENT:
            if (state != VALUE) st = fail(err, errlen, "%s:%zu: unexpected list", path, ev.start_mark.line + 1);
            state = SEQ;
            list[0] = '\0';
            break;
        case YAML_SEQUENCE_END_EVENT:
            st = pd_opts_set(opts, n, key, list, err, errlen);
            state = KEY;
            break;
        case YAML_SCALAR_EVENT: {
            const char *v = (const char *)ev.data.scalar.value;
            if (state == KEY) {
                snprintf(key, sizeof key, "%s", v);
                state = VALUE;
            } else if (state == VALUE) {
                char e2[512];
                st = pd_opts_set(opts, n, key, v, e2, sizeof e2);
                if (st != PD_OK) fail(err, errlen, "%s:%zu: %s", path, ev.start_mark.line + 1, e2);
                state = KEY;
            } else if (state == SEQ) {
                size_t l = strlen(list);
                snprintf(list + l, sizeof list - l, "%s%s", l ? "," : "", v);
            } else {
                st = fail(err, errlen, "%s: the top level must be a mapping of option names", path);
            }
            break;
        }
        default: break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    fclose(f);
    return st;
}

void pd_opts_print_usage(const pd_opt *opts, int n, const char *usage, FILE *f)
{
    fprintf(f, "%s\n\noptions (also accepted as keys of the YAML file given with --config):\n", usage);
    fprintf(f, "  --%-28s %s\n", "config FILE", "YAML file of options; flags override it");
    for (int i = 0; i < n; i++) {
        const char *arg = opts[i].type == PD_OPT_BOOL ? "" : opts[i].type == PD_OPT_STR ? " S"
                          : opts[i].type == PD_OPT_SIZE ? " SIZE" : " N";
        char left[64];
        snprintf(left, sizeof left, "%s%s", opts[i].name, arg);
        fprintf(f, "  --%-28s %s\n", left, opts[i].help);
    }
}

pd_status pd_opts_parse(const pd_opt *opts, int n, int argc, char **argv, const char *usage, char *err,
                        size_t errlen)
{
    /* the config file first, wherever --config stands */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            pd_opts_print_usage(opts, n, usage, stdout);
            return PD_ERR_NOT_FOUND;
        }
        if (!strncmp(argv[i], "--config", 8) && (argv[i][8] == '\0' || argv[i][8] == '=')) {
            const char *path = argv[i][8] == '=' ? argv[i] + 9 : (i + 1 < argc ? argv[i + 1] : NULL);
            if (!path) return fail(err, errlen, "--config needs a file");
            pd_status st = pd_opts_load_yaml(opts, n, path, err, errlen);
            if (st != PD_OK) return st;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0) return fail(err, errlen, "unexpected argument '%s'", a);
        a += 2;
        if (!strncmp(a, "config", 6) && (a[6] == '\0' || a[6] == '=')) {
            if (a[6] == '\0') i++;
            continue;
        }
        char name[128];
        const char *eq = strchr(a, '=');
        const char *val;
        snprintf(name, sizeof name, "%.*s", (int)(eq ? (size_t)(eq - a) : strlen(a)), a);
        const pd_opt *o = find(opts, n, name);
        if (!o && !strncmp(name, "no-", 3) && (o = find(opts, n, name + 3)) && o->type == PD_OPT_BOOL) {
            *(int *)o->dst = 0;
            continue;
        }
        if (!o) return fail(err, errlen, "unknown option '--%s' (see --help)", name);
        if (eq) val = eq + 1;
        else if (o->type == PD_OPT_BOOL && (i + 1 >= argc || strncmp(argv[i + 1], "--", 2) == 0 ||
                                            (strcmp(argv[i + 1], "true") && strcmp(argv[i + 1], "false"))))
            val = "true";
        else if (i + 1 < argc) val = argv[++i];
        else return fail(err, errlen, "option '--%s' needs a value", name);
        pd_status st = pd_opts_set(opts, n, name, val, err, errlen);
        if (st != PD_OK) return st;
    }
    return PD_OK;
}

void pd_opts_free(const pd_opt *opts, int n)
{
    for (int i = 0; i < n; i++)
        if (opts[i].type == PD_OPT_STR) {
            free(*(char **)opts[i].dst);
            *(char **)opts[i].dst = NULL;
        }
}
