/* Chat templates: the values a render computes with (Python semantics: truthiness, equality, ordering, str(),
 * repr(), tojson), the per-render arena they live in, the work budget, and the error unwinding (longjmp) shared
 * by the lexer, parser and interpreter. */
#include "text/template_internal.h"

#include <math.h>
#include <stdarg.h>
#include <string.h>

void txt__arena_free(arena *a)
{
    for (arena_blk *b = a->head, *n; b; b = n) {
        n = b->next;
        free(b);
    }
    a->head = NULL;
}

void txt__jfail(jctx *c, jerr_kind k, int line, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int off = line > 0 ? snprintf(c->msg, sizeof c->msg, "line %d: ", line) : 0;
    vsnprintf(c->msg + off, sizeof c->msg - (size_t)off, fmt, ap);
    va_end(ap);
    c->kind = k;
    longjmp(c->jb, 1);
}

static void jcharge(jctx *c, size_t n)
{
    if (n > c->max_bytes - c->bytes)
        txt__jfail(c, JE_RUNTIME, 0, "template exceeds its memory budget (%zu MiB beyond its input)",
                   txt__max_bytes >> 20);
    c->bytes += n;
}

void txt__jstep(jctx *c, int line)
{
    if (++c->steps > c->max_steps)
        txt__jfail(c, JE_RUNTIME, line, "template exceeds its work budget (%zu steps)", c->max_steps);
}

/* A builtin that scans `bytes` without allocating (comparisons, searches, length): one step per 64 bytes, so a loop
 * over a large string costs its size, not one step per iteration. */
void txt__jscan(jctx *c, size_t bytes)
{
    c->steps += bytes >> 6;
    txt__jstep(c, 0);
}

void *txt__jalloc(jctx *c, size_t n)
{
    arena *a = c->ar;
    n = (n + 15) & ~(size_t)15;
    jcharge(c, n);
    if (!a->head || a->head->used + n > a->head->cap) {
        size_t cap = n > 65536 ? n : 65536;
        arena_blk *b = malloc(sizeof *b + cap);
        if (!b) txt__jfail(c, JE_NOMEM, 0, "out of memory");
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

char *txt__jstrndup(jctx *c, const char *s, size_t n)
{
    char *p = txt__jalloc(c, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

value txt__undef = {.t = V_UNDEF}, txt__none = {.t = V_NONE}, txt__true = {.t = V_BOOL, .b = 1},
      txt__false = {.t = V_BOOL, .b = 0};

value *txt__v_new(jctx *c, vtype t)
{
    value *v = txt__jalloc(c, sizeof *v);
    memset(v, 0, sizeof *v);
    v->t = t;
    return v;
}
value *txt__v_bool(int b) { return b ? &txt__true : &txt__false; }
value *txt__v_int(jctx *c, int64_t i)
{
    value *v = txt__v_new(c, V_INT);
    v->i = i;
    return v;
}
value *txt__v_float(jctx *c, double f)
{
    value *v = txt__v_new(c, V_FLOAT);
    v->f = f;
    return v;
}
value *txt__v_str(jctx *c, const char *s, size_t n)
{
    value *v = txt__v_new(c, V_STR);
    v->s.s = s;
    v->s.n = n;
    return v;
}
value *txt__v_strdup(jctx *c, const char *s, size_t n) { return txt__v_str(c, txt__jstrndup(c, s, n), n); }

void txt__list_push(jctx *c, value *l, value *x)
{
    if (l->l.n == l->l.cap) {
        size_t cap = l->l.cap ? l->l.cap * 2 : 8;
        value **p = txt__jalloc(c, cap * sizeof *p);
        if (l->l.n) memcpy(p, l->l.v, l->l.n * sizeof *p);
        l->l.v = p;
        l->l.cap = cap;
    }
    l->l.v[l->l.n++] = x;
}

value *txt__dict_get(const value *d, const char *k, size_t kn)
{
    for (size_t i = 0; i < d->d.n; i++)
        if (d->d.v[i].kn == kn && !memcmp(d->d.v[i].k, k, kn)) return d->d.v[i].v;
    return NULL;
}

void txt__dict_set(jctx *c, value *d, const char *k, size_t kn, value *x)
{
    for (size_t i = 0; i < d->d.n; i++)
        if (d->d.v[i].kn == kn && !memcmp(d->d.v[i].k, k, kn)) {
            d->d.v[i].v = x;
            return;
        }
    if (d->d.n == d->d.cap) {
        size_t cap = d->d.cap ? d->d.cap * 2 : 8;
        kv *p = txt__jalloc(c, cap * sizeof *p);
        if (d->d.n) memcpy(p, d->d.v, d->d.n * sizeof *p);
        d->d.v = p;
        d->d.cap = cap;
    }
    d->d.v[d->d.n++] = (kv){k, kn, x};
}

value *txt__from_json(jctx *c, const cJSON *j)
{
    if (!j || cJSON_IsNull(j)) return &txt__none;
    if (cJSON_IsBool(j)) return txt__v_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        /* cJSON keeps no int/float distinction: integral values become ints (what JSON ints are). */
        if (d == floor(d) && fabs(d) < 9007199254740992.0) return txt__v_int(c, (int64_t)d);
        return txt__v_float(c, d);
    }
    if (cJSON_IsString(j)) return txt__v_str(c, j->valuestring, strlen(j->valuestring));
    if (cJSON_IsArray(j)) {
        value *l = txt__v_new(c, V_LIST);
        const cJSON *x;
        cJSON_ArrayForEach(x, j) txt__list_push(c, l, txt__from_json(c, x));
        return l;
    }
    if (cJSON_IsObject(j)) {
        value *d = txt__v_new(c, V_DICT);
        const cJSON *x;
        cJSON_ArrayForEach(x, j) txt__dict_set(c, d, x->string, strlen(x->string), txt__from_json(c, x));
        return d;
    }
    return &txt__none;
}

void txt__sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p;
        if (b->heap) {
            jcharge(b->c, cap - b->cap);
            p = realloc(b->p, cap);
            if (!p) txt__jfail(b->c, JE_NOMEM, 0, "out of memory");
        } else {
            p = txt__jalloc(b->c, cap);
            if (b->n) memcpy(p, b->p, b->n);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
void txt__sb_puts(sbuf *b, const char *s) { txt__sb_add(b, s, strlen(s)); }

/* Python's repr() of a float (shortest round-trip digits, exponent form outside [1e-4, 1e16)). */
static void py_float(double f, char *out, size_t cap)
{
    if (isnan(f)) {
        snprintf(out, cap, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(out, cap, f < 0 ? "-inf" : "inf");
        return;
    }
    char e[40];
    int p;
    for (p = 1; p <= 17; p++) {
        snprintf(e, sizeof e, "%.*e", p - 1, f);
        if (strtod(e, NULL) == f) break;
    }
    /* e = [-]d[.ddd]e[+-]XX */
    char digits[24];
    int nd = 0, neg = e[0] == '-';
    const char *q = e + neg;
    for (; *q && *q != 'e'; q++)
        if (*q != '.') digits[nd++] = *q;
    digits[nd] = 0;
    int exp10 = atoi(q + 1);
    while (nd > 1 && digits[nd - 1] == '0') digits[--nd] = 0;
    char *o = out;
    size_t left = cap;
#define PUT(...)                                                \
    do {                                                        \
        int w_ = snprintf(o, left, __VA_ARGS__);                \
        if (w_ > 0 && (size_t)w_ < left) o += w_, left -= (size_t)w_; \
    } while (0)
    if (neg) PUT("-");
    if (exp10 >= 16 || exp10 < -4) {
        PUT("%c", digits[0]);
        if (nd > 1) PUT(".%s", digits + 1);
        PUT("e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
    } else if (exp10 < 0) {
        PUT("0.");
        for (int i = 0; i < -exp10 - 1; i++) PUT("0");
        PUT("%s", digits);
    } else {
        for (int i = 0; i <= exp10; i++) PUT("%c", i < nd ? digits[i] : '0');
        PUT(".");
        if (nd > exp10 + 1) PUT("%s", digits + exp10 + 1);
        else PUT("0");
    }
#undef PUT
}

static void repr_into(sbuf *b, const value *v);

static void repr_str(sbuf *b, const char *s, size_t n)
{
    int has_sq = memchr(s, '\'', n) != NULL, has_dq = memchr(s, '"', n) != NULL;
    char q = has_sq && !has_dq ? '"' : '\'';
    txt__sb_add(b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char tmp[8];
        if (ch == '\\') txt__sb_puts(b, "\\\\");
        else if (ch == (unsigned char)q) txt__sb_puts(b, q == '\'' ? "\\'" : "\\\"");
        else if (ch == '\n') txt__sb_puts(b, "\\n");
        else if (ch == '\r') txt__sb_puts(b, "\\r");
        else if (ch == '\t') txt__sb_puts(b, "\\t");
        else if (ch < 0x20 || ch == 0x7f) {
            snprintf(tmp, sizeof tmp, "\\x%02x", ch);
            txt__sb_puts(b, tmp);
        } else txt__sb_add(b, (const char *)&s[i], 1);
    }
    txt__sb_add(b, &q, 1);
}

/* str(v) as Python prints it. */
void txt__str_into(sbuf *b, const value *v)
{
    char tmp[48];
    switch (v->t) {
    case V_UNDEF: break;
    case V_NONE: txt__sb_puts(b, "None"); break;
    case V_BOOL: txt__sb_puts(b, v->b ? "True" : "False"); break;
    case V_INT:
        snprintf(tmp, sizeof tmp, "%lld", (long long)v->i);
        txt__sb_puts(b, tmp);
        break;
    case V_FLOAT:
        py_float(v->f, tmp, sizeof tmp);
        txt__sb_puts(b, tmp);
        break;
    case V_STR: txt__sb_add(b, v->s.s, v->s.n); break;
    case V_FUNC: txt__sb_puts(b, "<function>"); break;
    case V_NS: txt__sb_puts(b, "<Namespace>"); break;
    default: repr_into(b, v); break;
    }
}

static void repr_into(sbuf *b, const value *v)
{
    switch (v->t) {
    case V_STR: repr_str(b, v->s.s, v->s.n); break;
    case V_LIST:
        txt__sb_puts(b, v->l.tuple ? "(" : "[");
        for (size_t i = 0; i < v->l.n; i++) {
            if (i) txt__sb_puts(b, ", ");
            repr_into(b, v->l.v[i]);
        }
        txt__sb_puts(b, v->l.tuple ? (v->l.n == 1 ? ",)" : ")") : "]");
        break;
    case V_DICT:
        txt__sb_puts(b, "{");
        for (size_t i = 0; i < v->d.n; i++) {
            if (i) txt__sb_puts(b, ", ");
            repr_str(b, v->d.v[i].k, v->d.v[i].kn);
            txt__sb_puts(b, ": ");
            repr_into(b, v->d.v[i].v);
        }
        txt__sb_puts(b, "}");
        break;
    default: txt__str_into(b, v); break;
    }
}

value *txt__to_str(jctx *c, const value *v)
{
    if (v->t == V_STR) return (value *)v;
    sbuf b = {c, NULL, 0, 0, 0};
    txt__str_into(&b, v);
    return txt__v_str(c, b.p ? b.p : "", b.n);
}

/* json.dumps(v, ensure_ascii=False, indent=indent) as transformers' tojson filter calls it. */
void txt__json_into(jctx *c, sbuf *b, const value *v, int indent, int depth, int line)
{
    char tmp[48];
    switch (v->t) {
    case V_NONE: txt__sb_puts(b, "null"); return;
    case V_BOOL: txt__sb_puts(b, v->b ? "true" : "false"); return;
    case V_INT:
    case V_FLOAT:
        if (v->t == V_FLOAT && isnan(v->f)) txt__sb_puts(b, "NaN");
        else if (v->t == V_FLOAT && isinf(v->f)) txt__sb_puts(b, v->f < 0 ? "-Infinity" : "Infinity");
        else txt__str_into(b, v);
        return;
    case V_STR:
        txt__sb_puts(b, "\"");
        for (size_t i = 0; i < v->s.n; i++) {
            unsigned char ch = (unsigned char)v->s.s[i];
            if (ch == '"') txt__sb_puts(b, "\\\"");
            else if (ch == '\\') txt__sb_puts(b, "\\\\");
            else if (ch == '\n') txt__sb_puts(b, "\\n");
            else if (ch == '\r') txt__sb_puts(b, "\\r");
            else if (ch == '\t') txt__sb_puts(b, "\\t");
            else if (ch == '\b') txt__sb_puts(b, "\\b");
            else if (ch == '\f') txt__sb_puts(b, "\\f");
            else if (ch < 0x20) {
                snprintf(tmp, sizeof tmp, "\\u%04x", ch);
                txt__sb_puts(b, tmp);
            } else txt__sb_add(b, (const char *)&v->s.s[i], 1);
        }
        txt__sb_puts(b, "\"");
        return;
    case V_LIST:
    case V_DICT:
    case V_NS: {
        int is_list = v->t == V_LIST;
        size_t n = is_list ? v->l.n : v->d.n;
        txt__sb_puts(b, is_list ? "[" : "{");
        if (n == 0) {
            txt__sb_puts(b, is_list ? "]" : "}");
            return;
        }
        for (size_t i = 0; i < n; i++) {
            if (i) txt__sb_puts(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) {
                txt__sb_puts(b, "\n");
                for (int k = 0; k < indent * (depth + 1); k++) txt__sb_puts(b, " ");
            }
            if (is_list) txt__json_into(c, b, v->l.v[i], indent, depth + 1, line);
            else {
                value key = {.t = V_STR, .s = {v->d.v[i].k, v->d.v[i].kn}};
                txt__json_into(c, b, &key, indent, depth + 1, line);
                txt__sb_puts(b, ": ");
                txt__json_into(c, b, v->d.v[i].v, indent, depth + 1, line);
            }
        }
        if (indent >= 0) {
            txt__sb_puts(b, "\n");
            for (int k = 0; k < indent * depth; k++) txt__sb_puts(b, " ");
        }
        txt__sb_puts(b, is_list ? "]" : "}");
        return;
    }
    default: txt__jfail(c, JE_RUNTIME, line, "tojson: value is not JSON serializable (undefined or a function)");
    }
}

const char *txt__type_name(const value *v)
{
    static const char *const names[] = {"undefined", "NoneType", "bool", "int", "float", "str", "list", "dict",
                                        "Namespace", "function"};
    return names[v->t];
}

int txt__truthy(const value *v)
{
    switch (v->t) {
    case V_UNDEF:
    case V_NONE: return 0;
    case V_BOOL: return v->b;
    case V_INT: return v->i != 0;
    case V_FLOAT: return v->f != 0;
    case V_STR: return v->s.n != 0;
    case V_LIST: return v->l.n != 0;
    case V_DICT: return v->d.n != 0;
    default: return 1;
    }
}

int txt__is_num(const value *v) { return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL; }
double txt__num_f(const value *v) { return v->t == V_FLOAT ? v->f : v->t == V_INT ? (double)v->i : v->b; }
int64_t txt__num_i(const value *v) { return v->t == V_INT ? v->i : v->b; }

int txt__values_equal(jctx *c, const value *a, const value *b)
{
    txt__jstep(c, 0);
    if (txt__is_num(a) && txt__is_num(b)) {
        if (a->t == V_FLOAT || b->t == V_FLOAT) return txt__num_f(a) == txt__num_f(b);
        return txt__num_i(a) == txt__num_i(b);
    }
    if (a->t != b->t) return 0;
    switch (a->t) {
    case V_UNDEF:
    case V_NONE: return 1;
    case V_STR:
        if (a->s.n != b->s.n) return 0;
        txt__jscan(c, a->s.n);
        return !memcmp(a->s.s, b->s.s, a->s.n);
    case V_LIST:
        if (a->l.n != b->l.n) return 0;
        for (size_t i = 0; i < a->l.n; i++)
            if (!txt__values_equal(c, a->l.v[i], b->l.v[i])) return 0;
        return 1;
    case V_DICT:
        if (a->d.n != b->d.n) return 0;
        for (size_t i = 0; i < a->d.n; i++) {
            value *o = txt__dict_get(b, a->d.v[i].k, a->d.v[i].kn);
            if (!o || !txt__values_equal(c, a->d.v[i].v, o)) return 0;
        }
        return 1;
    default: return a == b;
    }
}

/* <0, 0, >0; fails for types Python cannot order. */
int txt__values_cmp(interp *in, const value *a, const value *b, int line)
{
    if (txt__is_num(a) && txt__is_num(b)) {
        double x = txt__num_f(a), y = txt__num_f(b);
        return x < y ? -1 : x > y;
    }
    txt__jstep(in->c, line);
    if (a->t == V_STR && b->t == V_STR) {
        size_t n = PD_MIN(a->s.n, b->s.n);
        txt__jscan(in->c, n);
        int r = memcmp(a->s.s, b->s.s, n);
        return r ? r : (a->s.n > b->s.n) - (a->s.n < b->s.n);
    }
    if (a->t == V_LIST && b->t == V_LIST) {
        for (size_t i = 0; i < a->l.n && i < b->l.n; i++) {
            if (txt__values_equal(in->c, a->l.v[i], b->l.v[i])) continue;
            return txt__values_cmp(in, a->l.v[i], b->l.v[i], line);
        }
        return (a->l.n > b->l.n) - (a->l.n < b->l.n);
    }
    txt__jfail(in->c, JE_RUNTIME, line, "cannot compare %s and %s", txt__type_name(a), txt__type_name(b));
}

/* UTF-8 code point boundaries of a string: offs[0..n] (n code points). */
size_t *txt__cp_offsets(jctx *c, const char *s, size_t len, size_t *n)
{
    size_t *o = txt__jalloc(c, (len + 1) * sizeof *o), k = 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) o[k++] = i;
    o[k] = len;
    *n = k;
    return o;
}

size_t txt__cp_len(jctx *c, const char *s, size_t len)
{
    txt__jscan(c, len);
    size_t k = 0;
    for (size_t i = 0; i < len; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}
