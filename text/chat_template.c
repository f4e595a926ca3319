/* Jinja chat templates. Source -> tokens (whitespace control, trim_blocks, lstrip_blocks as transformers sets
 * them) -> AST, once at create; render evaluates the AST over values converted from cJSON, all of them in one
 * arena per render that is freed whole. Errors unwind with longjmp to the entry point, which owns every
 * allocation, so nothing leaks on any path. Python/jinja2 semantics are followed where the output depends on
 * them: truthiness, str() and repr() of values, tojson (ensure_ascii=False), loop scoping, namespace(). */
#include "text/txt_chat_template.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

/* ---- arena ---- */

typedef struct arena_blk {
    struct arena_blk *next;
    size_t used, cap;
    max_align_t data[];
} arena_blk;

typedef struct {
    arena_blk *head;
} arena;

static void arena_free(arena *a)
{
    for (arena_blk *b = a->head, *n; b; b = n) {
        n = b->next;
        free(b);
    }
    a->head = NULL;
}

/* ---- errors (shared by the parser and the interpreter) ---- */

typedef enum { JE_NONE, JE_SYNTAX, JE_UNSUPPORTED, JE_RAISE, JE_RUNTIME, JE_NOMEM } jerr_kind;

typedef struct {
    jmp_buf jb;
    jerr_kind kind;
    char msg[512];
    arena *ar;
    /* A render's work budget (templates can loop and grow strings without bound; the messages are the user's):
     * bytes allocated (arena and output) and interpreter steps (statements, expressions, loop iterations).
     * Parsing runs unbudgeted (max = SIZE_MAX): the source is the operator's and is linear to parse. */
    size_t bytes, max_bytes;
    size_t steps, max_steps;
} jctx;

/* A render's default budget beyond its input (see txt_chat_template_set_budget). */
#define JT_MAX_STEPS ((size_t)10 * 1000 * 1000)
#define JT_MAX_BYTES ((size_t)256 << 20)
static size_t jt_max_steps = JT_MAX_STEPS, jt_max_bytes = JT_MAX_BYTES;

void txt_chat_template_set_budget(size_t max_steps, size_t max_bytes)
{
    jt_max_steps = max_steps ? max_steps : JT_MAX_STEPS;
    jt_max_bytes = max_bytes ? max_bytes : JT_MAX_BYTES;
}

static void jfail(jctx *c, jerr_kind k, int line, const char *fmt, ...) __attribute__((noreturn, format(printf, 4, 5)));
static void jfail(jctx *c, jerr_kind k, int line, const char *fmt, ...)
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
    if (n > c->max_bytes - c->bytes) jfail(c, JE_RUNTIME, 0, "template exceeds its memory budget (%zu MiB beyond its input)", jt_max_bytes >> 20);
    c->bytes += n;
}

static void jstep(jctx *c, int line)
{
    if (++c->steps > c->max_steps) jfail(c, JE_RUNTIME, line, "template exceeds its work budget (%zu steps)", c->max_steps);
}

/* A builtin that scans `bytes` without allocating (comparisons, searches, length): one step per 64 bytes, so a loop
 * over a large string costs its size, not one step per iteration. */
static void jscan(jctx *c, size_t bytes)
{
    c->steps += bytes >> 6;
    jstep(c, 0);
}

static void *jalloc(jctx *c, size_t n)
{
    arena *a = c->ar;
    n = (n + 15) & ~(size_t)15;
    jcharge(c, n);
    if (!a->head || a->head->used + n > a->head->cap) {
        size_t cap = n > 65536 ? n : 65536;
        arena_blk *b = malloc(sizeof *b + cap);
        if (!b) jfail(c, JE_NOMEM, 0, "out of memory");
        b->next = a->head;
        b->used = 0;
        b->cap = cap;
        a->head = b;
    }
    void *p = (char *)a->head->data + a->head->used;
    a->head->used += n;
    return p;
}

static char *jstrndup(jctx *c, const char *s, size_t n)
{
    char *p = jalloc(c, n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}

/* ---- values ---- */

typedef enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_NS, V_FUNC } vtype;

typedef struct value value;
typedef struct {
    const char *k;
    size_t kn;
    value *v;
} kv;

struct value {
    vtype t;
    union {
        int b;
        int64_t i;
        double f;
        struct {
            const char *s;
            size_t n;
        } s;
        struct {
            value **v;
            size_t n, cap;
            int tuple; /* prints as (a, b) */
        } l;
        struct {
            kv *v;
            size_t n, cap;
        } d; /* V_DICT and V_NS, insertion-ordered */
        struct {
            int fn;
            value *self;
        } fn;
    };
};

static value UNDEF = {.t = V_UNDEF}, NONE = {.t = V_NONE}, TRUE_V = {.t = V_BOOL, .b = 1}, FALSE_V = {.t = V_BOOL, .b = 0};

static value *v_new(jctx *c, vtype t)
{
    value *v = jalloc(c, sizeof *v);
    memset(v, 0, sizeof *v);
    v->t = t;
    return v;
}
static value *v_bool(int b) { return b ? &TRUE_V : &FALSE_V; }
static value *v_int(jctx *c, int64_t i)
{
    value *v = v_new(c, V_INT);
    v->i = i;
    return v;
}
static value *v_float(jctx *c, double f)
{
    value *v = v_new(c, V_FLOAT);
    v->f = f;
    return v;
}
static value *v_str(jctx *c, const char *s, size_t n)
{
    value *v = v_new(c, V_STR);
    v->s.s = s;
    v->s.n = n;
    return v;
}
static value *v_strdup(jctx *c, const char *s, size_t n) { return v_str(c, jstrndup(c, s, n), n); }

static void list_push(jctx *c, value *l, value *x)
{
    if (l->l.n == l->l.cap) {
        size_t cap = l->l.cap ? l->l.cap * 2 : 8;
        value **p = jalloc(c, cap * sizeof *p);
        if (l->l.n) memcpy(p, l->l.v, l->l.n * sizeof *p);
        l->l.v = p;
        l->l.cap = cap;
    }
    l->l.v[l->l.n++] = x;
}

static value *dict_get(const value *d, const char *k, size_t kn)
{
    for (size_t i = 0; i < d->d.n; i++)
        if (d->d.v[i].kn == kn && !memcmp(d->d.v[i].k, k, kn)) return d->d.v[i].v;
    return NULL;
}

static void dict_set(jctx *c, value *d, const char *k, size_t kn, value *x)
{
    for (size_t i = 0; i < d->d.n; i++)
        if (d->d.v[i].kn == kn && !memcmp(d->d.v[i].k, k, kn)) {
            d->d.v[i].v = x;
            return;
        }
    if (d->d.n == d->d.cap) {
        size_t cap = d->d.cap ? d->d.cap * 2 : 8;
        kv *p = jalloc(c, cap * sizeof *p);
        if (d->d.n) memcpy(p, d->d.v, d->d.n * sizeof *p);
        d->d.v = p;
        d->d.cap = cap;
    }
    d->d.v[d->d.n++] = (kv){k, kn, x};
}

static value *from_json(jctx *c, const cJSON *j)
{
    if (!j || cJSON_IsNull(j)) return &NONE;
    if (cJSON_IsBool(j)) return v_bool(cJSON_IsTrue(j));
    if (cJSON_IsNumber(j)) {
        double d = j->valuedouble;
        /* cJSON keeps no int/float distinction: integral values become ints (what JSON ints are). */
        if (d == floor(d) && fabs(d) < 9007199254740992.0) return v_int(c, (int64_t)d);
        return v_float(c, d);
    }
    if (cJSON_IsString(j)) return v_str(c, j->valuestring, strlen(j->valuestring));
    if (cJSON_IsArray(j)) {
        value *l = v_new(c, V_LIST);
        const cJSON *x;
        cJSON_ArrayForEach(x, j) list_push(c, l, from_json(c, x));
        return l;
    }
    if (cJSON_IsObject(j)) {
        value *d = v_new(c, V_DICT);
        const cJSON *x;
        cJSON_ArrayForEach(x, j) dict_set(c, d, x->string, strlen(x->string), from_json(c, x));
        return d;
    }
    return &NONE;
}

/* ---- string building ---- */

typedef struct {
    jctx *c;
    char *p;
    size_t n, cap;
    int heap; /* 1: malloc'd (the render output), 0: arena */
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p;
        if (b->heap) {
            jcharge(b->c, cap - b->cap);
            p = realloc(b->p, cap);
            if (!p) jfail(b->c, JE_NOMEM, 0, "out of memory");
        } else {
            p = jalloc(b->c, cap);
            if (b->n) memcpy(p, b->p, b->n);
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sb_puts(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

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
    sb_add(b, &q, 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char tmp[8];
        if (ch == '\\') sb_puts(b, "\\\\");
        else if (ch == (unsigned char)q) sb_puts(b, q == '\'' ? "\\'" : "\\\"");
        else if (ch == '\n') sb_puts(b, "\\n");
        else if (ch == '\r') sb_puts(b, "\\r");
        else if (ch == '\t') sb_puts(b, "\\t");
        else if (ch < 0x20 || ch == 0x7f) {
            snprintf(tmp, sizeof tmp, "\\x%02x", ch);
            sb_puts(b, tmp);
        } else sb_add(b, (const char *)&s[i], 1);
    }
    sb_add(b, &q, 1);
}

/* str(v) as Python prints it. */
static void str_into(sbuf *b, const value *v)
{
    char tmp[48];
    switch (v->t) {
    case V_UNDEF: break;
    case V_NONE: sb_puts(b, "None"); break;
    case V_BOOL: sb_puts(b, v->b ? "True" : "False"); break;
    case V_INT:
        snprintf(tmp, sizeof tmp, "%lld", (long long)v->i);
        sb_puts(b, tmp);
        break;
    case V_FLOAT:
        py_float(v->f, tmp, sizeof tmp);
        sb_puts(b, tmp);
        break;
    case V_STR: sb_add(b, v->s.s, v->s.n); break;
    case V_FUNC: sb_puts(b, "<function>"); break;
    case V_NS: sb_puts(b, "<Namespace>"); break;
    default: repr_into(b, v); break;
    }
}

static void repr_into(sbuf *b, const value *v)
{
    switch (v->t) {
    case V_STR: repr_str(b, v->s.s, v->s.n); break;
    case V_LIST:
        sb_puts(b, v->l.tuple ? "(" : "[");
        for (size_t i = 0; i < v->l.n; i++) {
            if (i) sb_puts(b, ", ");
            repr_into(b, v->l.v[i]);
        }
        sb_puts(b, v->l.tuple ? (v->l.n == 1 ? ",)" : ")") : "]");
        break;
    case V_DICT:
        sb_puts(b, "{");
        for (size_t i = 0; i < v->d.n; i++) {
            if (i) sb_puts(b, ", ");
            repr_str(b, v->d.v[i].k, v->d.v[i].kn);
            sb_puts(b, ": ");
            repr_into(b, v->d.v[i].v);
        }
        sb_puts(b, "}");
        break;
    default: str_into(b, v); break;
    }
}

static value *to_str(jctx *c, const value *v)
{
    if (v->t == V_STR) return (value *)v;
    sbuf b = {c, NULL, 0, 0, 0};
    str_into(&b, v);
    return v_str(c, b.p ? b.p : "", b.n);
}

/* json.dumps(v, ensure_ascii=False, indent=indent) as transformers' tojson filter calls it. */
static void json_into(jctx *c, sbuf *b, const value *v, int indent, int depth, int line)
{
    char tmp[48];
    switch (v->t) {
    case V_NONE: sb_puts(b, "null"); return;
    case V_BOOL: sb_puts(b, v->b ? "true" : "false"); return;
    case V_INT:
    case V_FLOAT:
        if (v->t == V_FLOAT && isnan(v->f)) sb_puts(b, "NaN");
        else if (v->t == V_FLOAT && isinf(v->f)) sb_puts(b, v->f < 0 ? "-Infinity" : "Infinity");
        else str_into(b, v);
        return;
    case V_STR:
        sb_puts(b, "\"");
        for (size_t i = 0; i < v->s.n; i++) {
            unsigned char ch = (unsigned char)v->s.s[i];
            if (ch == '"') sb_puts(b, "\\\"");
            else if (ch == '\\') sb_puts(b, "\\\\");
            else if (ch == '\n') sb_puts(b, "\\n");
            else if (ch == '\r') sb_puts(b, "\\r");
            else if (ch == '\t') sb_puts(b, "\\t");
            else if (ch == '\b') sb_puts(b, "\\b");
            else if (ch == '\f') sb_puts(b, "\\f");
            else if (ch < 0x20) {
                snprintf(tmp, sizeof tmp, "\\u%04x", ch);
                sb_puts(b, tmp);
            } else sb_add(b, (const char *)&v->s.s[i], 1);
        }
        sb_puts(b, "\"");
        return;
    case V_LIST:
    case V_DICT:
    case V_NS: {
        int is_list = v->t == V_LIST;
        size_t n = is_list ? v->l.n : v->d.n;
        sb_puts(b, is_list ? "[" : "{");
        if (n == 0) {
            sb_puts(b, is_list ? "]" : "}");
            return;
        }
        for (size_t i = 0; i < n; i++) {
            if (i) sb_puts(b, indent >= 0 ? "," : ", ");
            if (indent >= 0) {
                sb_puts(b, "\n");
                for (int k = 0; k < indent * (depth + 1); k++) sb_puts(b, " ");
            }
            if (is_list) json_into(c, b, v->l.v[i], indent, depth + 1, line);
            else {
                value key = {.t = V_STR, .s = {v->d.v[i].k, v->d.v[i].kn}};
                json_into(c, b, &key, indent, depth + 1, line);
                sb_puts(b, ": ");
                json_into(c, b, v->d.v[i].v, indent, depth + 1, line);
            }
        }
        if (indent >= 0) {
            sb_puts(b, "\n");
            for (int k = 0; k < indent * depth; k++) sb_puts(b, " ");
        }
        sb_puts(b, is_list ? "]" : "}");
        return;
    }
    default: jfail(c, JE_RUNTIME, line, "tojson: value is not JSON serializable (undefined or a function)");
    }
}

/* ---- template tokens ---- */

typedef enum { T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END, T_NAME, T_STRING, T_INT, T_FLOAT, T_OP, T_EOF } ttype;

typedef struct {
    ttype t;
    int line;
    const char *s; /* text, name, operator or decoded string */
    size_t n;
    int64_t i;
    double f;
} token;

typedef struct {
    jctx *c;
    token *v;
    size_t n, cap;
} tokvec;

static void tok_push(tokvec *tv, token t)
{
    if (tv->n == tv->cap) {
        size_t cap = tv->cap ? tv->cap * 2 : 256;
        token *p = jalloc(tv->c, cap * sizeof *p);
        if (tv->n) memcpy(p, tv->v, tv->n * sizeof *p);
        tv->v = p;
        tv->cap = cap;
    }
    tv->v[tv->n++] = t;
}

static int line_of(const char *src, const char *p)
{
    int l = 1;
    for (const char *q = src; q < p; q++) l += *q == '\n';
    return l;
}

static int is_name_start(char ch) { return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_'; }
static int is_name_char(char ch) { return is_name_start(ch) || (ch >= '0' && ch <= '9'); }

/* Decodes a string literal's escapes (Python rules for the common ones) into the arena. */
static const char *unescape(jctx *c, const char *s, size_t n, size_t *out_n, int line)
{
    char *o = jalloc(c, n + 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\' || i + 1 >= n) {
            o[k++] = s[i];
            continue;
        }
        char e = s[++i];
        switch (e) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case '0': o[k++] = '\0'; break;
        case 'a': o[k++] = '\a'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case 'v': o[k++] = '\v'; break;
        case '\\': o[k++] = '\\'; break;
        case '\'': o[k++] = '\''; break;
        case '"': o[k++] = '"'; break;
        case '\n': break;
        case 'x':
        case 'u':
        case 'U': {
            int len = e == 'x' ? 2 : e == 'u' ? 4 : 8;
            if (i + (size_t)len >= n)
                jfail(c, JE_SYNTAX, line, "truncated \\%c escape in a string literal", e);
            char hex[9] = {0};
            memcpy(hex, s + i + 1, (size_t)len);
            char *end;
            unsigned long cp = strtoul(hex, &end, 16);
            if (*end || cp > 0x10FFFF) jfail(c, JE_SYNTAX, line, "bad \\%c escape in a string literal", e);
            i += (size_t)len;
            /* n + 1 bytes were allocated; an escape of 4+ source bytes never expands beyond them */
            if (cp < 0x80) o[k++] = (char)cp;
            else if (cp < 0x800) o[k++] = (char)(0xC0 | cp >> 6), o[k++] = (char)(0x80 | (cp & 63));
            else if (cp < 0x10000)
                o[k++] = (char)(0xE0 | cp >> 12), o[k++] = (char)(0x80 | ((cp >> 6) & 63)), o[k++] = (char)(0x80 | (cp & 63));
            else {
                o[k++] = (char)(0xF0 | cp >> 18), o[k++] = (char)(0x80 | ((cp >> 12) & 63));
                o[k++] = (char)(0x80 | ((cp >> 6) & 63)), o[k++] = (char)(0x80 | (cp & 63));
            }
            break;
        }
        default: o[k++] = '\\', o[k++] = e; break; /* Python keeps unknown escapes */
        }
    }
    o[k] = 0;
    *out_n = k;
    return o;
}

/* Tokenizes the inside of a {{ }} or {% %} starting at p; returns the position of its closing delimiter. */
static const char *lex_expr(tokvec *tv, const char *src, const char *p, const char *end, char closer)
{
    jctx *c = tv->c;
    int depth = 0;
    static const char *const ops[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                                      "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"};
    while (p < end) {
        char ch = *p;
        if (ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r') {
            p++;
            continue;
        }
        int line = line_of(src, p);
        if (depth == 0) {
            if ((ch == '-' || (ch == '+' && closer == '%')) && end - p >= 3 && p[1] == closer && p[2] == '}')
                return p;
            if (ch == closer && end - p >= 2 && p[1] == '}') return p;
        }
        if (is_name_start(ch)) {
            const char *s = p;
            while (p < end && is_name_char(*p)) p++;
            tok_push(tv, (token){T_NAME, line, s, (size_t)(p - s), 0, 0});
            continue;
        }
        if (ch >= '0' && ch <= '9') {
            const char *s = p;
            int is_float = 0;
            while (p < end && ((*p >= '0' && *p <= '9') || *p == '_')) p++;
            if (p + 1 < end && *p == '.' && p[1] >= '0' && p[1] <= '9') {
                is_float = 1;
                p++;
                while (p < end && *p >= '0' && *p <= '9') p++;
            }
            if (p < end && (*p == 'e' || *p == 'E')) {
                const char *q = p + 1;
                if (q < end && (*q == '+' || *q == '-')) q++;
                if (q < end && *q >= '0' && *q <= '9') {
                    is_float = 1;
                    p = q;
                    while (p < end && *p >= '0' && *p <= '9') p++;
                }
            }
            char num[64];
            size_t k = 0;
            for (const char *q = s; q < p && k + 1 < sizeof num; q++)
                if (*q != '_') num[k++] = *q;
            num[k] = 0;
            token t = {is_float ? T_FLOAT : T_INT, line, s, (size_t)(p - s), 0, 0};
            if (is_float) t.f = strtod(num, NULL);
            else t.i = strtoll(num, NULL, 10);
            tok_push(tv, t);
            continue;
        }
        if (ch == '\'' || ch == '"') {
            const char *s = ++p;
            while (p < end && *p != ch) p += (*p == '\\' && p + 1 < end) ? 2 : 1;
            if (p >= end) jfail(c, JE_SYNTAX, line, "unterminated string literal");
            token t = {T_STRING, line, NULL, 0, 0, 0};
            t.s = unescape(c, s, (size_t)(p - s), &t.n, line);
            tok_push(tv, t);
            p++;
            continue;
        }
        size_t k;
        for (k = 0; k < PD_ARRAY_LEN(ops); k++) {
            size_t l = strlen(ops[k]);
            if ((size_t)(end - p) >= l && !memcmp(p, ops[k], l)) break;
        }
        if (k == PD_ARRAY_LEN(ops)) jfail(c, JE_SYNTAX, line, "unexpected character '%c'", ch);
        if (*ops[k] == '(' || *ops[k] == '[' || *ops[k] == '{') depth++;
        if (*ops[k] == ')' || *ops[k] == ']' || *ops[k] == '}') depth--;
        tok_push(tv, (token){T_OP, line, ops[k], strlen(ops[k]), 0, 0});
        p += strlen(ops[k]);
    }
    jfail(c, JE_SYNTAX, line_of(src, end), "unclosed tag (missing '%c}')", closer);
}

static void lex(tokvec *tv, const char *src)
{
    jctx *c = tv->c;
    size_t n = strlen(src);
    if (n && src[n - 1] == '\n') n--; /* jinja2's keep_trailing_newline=False */
    const char *p = src, *end = src + n;
    int strip_next = 0; /* previous tag ended with '-' */
    while (p < end) {
        /* Find the next tag opener. */
        const char *q = p;
        while (q + 1 < end && !(q[0] == '{' && (q[1] == '{' || q[1] == '%' || q[1] == '#'))) q++;
        if (q + 1 >= end) q = end;
        const char *ts = p, *te = q;
        if (strip_next)
            while (ts < te && (*ts == ' ' || *ts == '\t' || *ts == '\n' || *ts == '\r')) ts++;
        if (q < end) {
            char kind = q[1];
            int minus = q + 2 < end && q[2] == '-', plus = q + 2 < end && q[2] == '+';
            if (minus) {
                while (te > ts && (te[-1] == ' ' || te[-1] == '\t' || te[-1] == '\n' || te[-1] == '\r')) te--;
            } else if ((kind == '%' || kind == '#') && !plus) {
                /* lstrip_blocks: spaces/tabs between a line start and the block tag go. */
                const char *ls = te;
                while (ls > ts && (ls[-1] == ' ' || ls[-1] == '\t')) ls--;
                if ((ls > ts && ls[-1] == '\n') || (ls == ts && (p == src || p[-1] == '\n') && ts == p)) te = ls;
            }
        }
        if (te > ts) tok_push(tv, (token){T_TEXT, line_of(src, ts), ts, (size_t)(te - ts), 0, 0});
        strip_next = 0;
        if (q >= end) break;
        char kind = q[1];
        const char *body = q + 2;
        if (body < end && (*body == '-' || *body == '+')) body++;
        const char *close;
        if (kind == '#') {
            close = body;
            while (close + 1 < end && !(close[0] == '#' && close[1] == '}')) close++;
            if (close + 1 >= end) jfail(c, JE_SYNTAX, line_of(src, q), "unclosed comment");
            if (close > body && close[-1] == '-') strip_next = 1;
            p = close + 2;
            if (!strip_next && !(close > body && close[-1] == '+') && p < end && *p == '\n') p++;
            continue;
        }
        tok_push(tv, (token){kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, line_of(src, q), NULL, 0, 0, 0});
        close = lex_expr(tv, src, body, end, kind == '{' ? '}' : '%');
        int trim = 1;
        if (*close == '-') strip_next = 1, close++, trim = 0;
        else if (*close == '+') close++, trim = 0;
        tok_push(tv, (token){kind == '{' ? T_VAR_END : T_BLOCK_END, line_of(src, close), NULL, 0, 0, 0});
        p = close + 2;
        if (kind == '%' && trim && p < end && *p == '\n') p++; /* trim_blocks */
    }
    tok_push(tv, (token){T_EOF, line_of(src, end), NULL, 0, 0, 0});
}

/* ---- AST ---- */

typedef enum {
    /* statements */
    N_TEXT, N_OUTPUT, N_IF, N_FOR, N_SET, N_SET_ATTR, N_SET_BLOCK, N_BREAK, N_CONTINUE, N_BLOCK,
    /* expressions */
    E_LIT, E_NAME, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST, E_BIN, E_NEG, E_POS, E_NOT, E_AND, E_OR,
    E_COND, E_LIST, E_DICT
} nkind;

typedef struct node node;
typedef struct {
    node **v;
    size_t n, cap;
} nodelist;

struct node {
    nkind k;
    int line;
    const char *s; /* text, name, attribute, operator, filter/test name */
    size_t sn;
    value *lit;
    node *a, *b, *c, *d;
    nodelist list, list2; /* bodies, arguments; list2: else body, kwarg values, dict values */
    const char **names;   /* for targets, kwarg names */
    size_t *name_lens;
    size_t n_names;
    int negate;
};

static void nl_push(jctx *c, nodelist *l, node *x)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        node **p = jalloc(c, cap * sizeof *p);
        if (l->n) memcpy(p, l->v, l->n * sizeof *p);
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

typedef struct {
    jctx *c;
    token *t;
    size_t pos;
    int depth; /* nesting of the recursive productions, bounded by JT_MAX_DEPTH */
} parser;

/* Nesting bound for expressions and statements, in the parser and the interpreter alike: recursion is on the C
 * stack, and a template or a left-leaning chain (1+1+...+1) must not overflow it. Real templates nest < 20. */
#define JT_MAX_DEPTH 200

static void parse_enter(parser *p, int line)
{
    if (++p->depth > JT_MAX_DEPTH) jfail(p->c, JE_SYNTAX, line, "expression or block nested deeper than %d", JT_MAX_DEPTH);
}

static token *peek(parser *p) { return &p->t[p->pos]; }
static token *next_tok(parser *p)
{
    token *t = &p->t[p->pos];
    if (t->t != T_EOF) p->pos++;
    return t;
}
static int is_op(const token *t, const char *op) { return t->t == T_OP && t->n == strlen(op) && !memcmp(t->s, op, t->n); }
static int is_name(const token *t, const char *nm)
{
    return t->t == T_NAME && t->n == strlen(nm) && !memcmp(t->s, nm, t->n);
}
static void expect_op(parser *p, const char *op)
{
    token *t = next_tok(p);
    if (!is_op(t, op)) jfail(p->c, JE_SYNTAX, t->line, "expected '%s'", op);
}

static node *mk(parser *p, nkind k, int line)
{
    node *n = jalloc(p->c, sizeof *n);
    memset(n, 0, sizeof *n);
    n->k = k;
    n->line = line;
    return n;
}

static node *parse_expr(parser *p);
static node *parse_or(parser *p);
static node *parse_unary(parser *p, int with_filter);

static const char *const FILTERS[] = {"length", "count", "trim", "tojson", "string", "int", "float", "lower",
                                      "upper", "title", "capitalize", "first", "last", "join", "default", "d",
                                      "list", "reverse", "replace", "safe", "items", "selectattr", "rejectattr",
                                      "map", "abs", "round", "sort", "escape", "e", "indent", "unique", "max",
                                      "min", "sum", "dictsort", "wordcount", "center", "batch"};
static const char *const TESTS[] = {"defined", "undefined", "none", "string", "number", "integer", "float",
                                    "boolean", "true", "false", "mapping", "sequence", "iterable", "odd", "even",
                                    "divisibleby", "eq", "equalto", "sameas", "ne", "lower", "upper", "in",
                                    "callable", "gt", "lt", "ge", "le"};

static int in_list(const char *const *l, size_t n, const char *s, size_t sn)
{
    for (size_t i = 0; i < n; i++)
        if (strlen(l[i]) == sn && !memcmp(l[i], s, sn)) return 1;
    return 0;
}

/* Call arguments after '(' : positional into n->list, keyword into n->names/n->list2. */
static void parse_args(parser *p, node *n)
{
    size_t cap = 0;
    while (!is_op(peek(p), ")")) {
        token *t = peek(p);
        if (t->t == T_NAME && is_op(&p->t[p->pos + 1], "=")) {
            p->pos += 2;
            if (n->n_names == cap) {
                cap = cap ? cap * 2 : 4;
                const char **nm = jalloc(p->c, cap * sizeof *nm);
                size_t *nl = jalloc(p->c, cap * sizeof *nl);
                if (n->n_names) memcpy(nm, n->names, n->n_names * sizeof *nm), memcpy(nl, n->name_lens, n->n_names * sizeof *nl);
                n->names = nm;
                n->name_lens = nl;
            }
            n->names[n->n_names] = t->s;
            n->name_lens[n->n_names++] = t->n;
            nl_push(p->c, &n->list2, parse_expr(p));
        } else {
            if (n->n_names) jfail(p->c, JE_SYNTAX, t->line, "positional argument after a keyword argument");
            nl_push(p->c, &n->list, parse_expr(p));
        }
        if (!is_op(peek(p), ",")) break;
        next_tok(p);
    }
    expect_op(p, ")");
}

static node *parse_primary(parser *p)
{
    token *t = next_tok(p);
    node *n;
    switch (t->t) {
    case T_NAME:
        if (is_name(t, "true") || is_name(t, "True")) n = mk(p, E_LIT, t->line), n->lit = &TRUE_V;
        else if (is_name(t, "false") || is_name(t, "False")) n = mk(p, E_LIT, t->line), n->lit = &FALSE_V;
        else if (is_name(t, "none") || is_name(t, "None")) n = mk(p, E_LIT, t->line), n->lit = &NONE;
        else n = mk(p, E_NAME, t->line), n->s = t->s, n->sn = t->n;
        return n;
    case T_STRING: {
        /* Adjacent literals concatenate, as in Python. */
        sbuf b = {p->c, NULL, 0, 0, 0};
        sb_add(&b, t->s, t->n);
        while (peek(p)->t == T_STRING) {
            token *u = next_tok(p);
            sb_add(&b, u->s, u->n);
        }
        n = mk(p, E_LIT, t->line);
        n->lit = v_str(p->c, b.p ? b.p : "", b.n);
        return n;
    }
    case T_INT: n = mk(p, E_LIT, t->line), n->lit = v_int(p->c, t->i); return n;
    case T_FLOAT: n = mk(p, E_LIT, t->line), n->lit = v_float(p->c, t->f); return n;
    case T_OP:
        if (is_op(t, "(")) {
            if (is_op(peek(p), ")")) {
                next_tok(p);
                n = mk(p, E_LIST, t->line); /* () */
                n->negate = 1;
                return n;
            }
            node *e = parse_expr(p);
            if (is_op(peek(p), ",")) {
                n = mk(p, E_LIST, t->line);
                n->negate = 1; /* tuple */
                nl_push(p->c, &n->list, e);
                while (is_op(peek(p), ",")) {
                    next_tok(p);
                    if (is_op(peek(p), ")")) break;
                    nl_push(p->c, &n->list, parse_expr(p));
                }
                e = n;
            }
            expect_op(p, ")");
            return e;
        }
        if (is_op(t, "[")) {
            n = mk(p, E_LIST, t->line);
            while (!is_op(peek(p), "]")) {
                nl_push(p->c, &n->list, parse_expr(p));
                if (!is_op(peek(p), ",")) break;
                next_tok(p);
            }
            expect_op(p, "]");
            return n;
        }
        if (is_op(t, "{")) {
            n = mk(p, E_DICT, t->line);
            while (!is_op(peek(p), "}")) {
                nl_push(p->c, &n->list, parse_expr(p));
                expect_op(p, ":");
                nl_push(p->c, &n->list2, parse_expr(p));
                if (!is_op(peek(p), ",")) break;
                next_tok(p);
            }
            expect_op(p, "}");
            return n;
        }
        break;
    default: break;
    }
    jfail(p->c, JE_SYNTAX, t->line, "unexpected %s in an expression",
          t->t == T_EOF ? "end of template" : t->t == T_VAR_END || t->t == T_BLOCK_END ? "end of tag" : "token");
}

/* Defined with the interpreter's tables: whether a call target can ever be callable. */
static int callable_name(const node *callee);

static node *parse_postfix(parser *p, node *n)
{
    for (;;) {
        token *t = peek(p);
        if (is_op(t, ".")) {
            next_tok(p);
            token *nm = next_tok(p);
            if (nm->t == T_INT) { /* x.0 */
                node *e = mk(p, E_ITEM, nm->line);
                e->a = n;
                e->b = mk(p, E_LIT, nm->line);
                e->b->lit = v_int(p->c, nm->i);
                n = e;
                continue;
            }
            if (nm->t != T_NAME) jfail(p->c, JE_SYNTAX, nm->line, "expected an attribute name after '.'");
            node *e = mk(p, E_ATTR, nm->line);
            e->a = n;
            e->s = nm->s;
            e->sn = nm->n;
            n = e;
        } else if (is_op(t, "[")) {
            next_tok(p);
            node *parts[3] = {NULL, NULL, NULL};
            int colons = 0;
            for (;;) {
                if (is_op(peek(p), "]")) break;
                if (is_op(peek(p), ":")) {
                    if (++colons > 2) jfail(p->c, JE_SYNTAX, t->line, "bad slice");
                    next_tok(p);
                    continue;
                }
                parts[colons] = parse_expr(p);
            }
            expect_op(p, "]");
            node *e;
            if (colons) {
                e = mk(p, E_SLICE, t->line);
                e->b = parts[0], e->c = parts[1], e->d = parts[2];
            } else {
                if (!parts[0]) jfail(p->c, JE_SYNTAX, t->line, "empty subscript");
                e = mk(p, E_ITEM, t->line);
                e->b = parts[0];
            }
            e->a = n;
            n = e;
        } else if (is_op(t, "(")) {
            next_tok(p);
            node *e = mk(p, E_CALL, t->line);
            e->a = n;
            if (!callable_name(n))
                jfail(p->c, JE_UNSUPPORTED, t->line, "call of '%.*s' is not supported (no macros; known methods: "
                      "strip, split, replace, startswith, items, get, ...)", (int)(n->sn ? n->sn : 1), n->sn ? n->s : "?");
            parse_args(p, e);
            n = e;
        } else return n;
    }
}

static node *parse_filters_tests(parser *p, node *n)
{
    for (;;) {
        token *t = peek(p);
        if (is_op(t, "|")) {
            next_tok(p);
            token *nm = next_tok(p);
            if (nm->t != T_NAME) jfail(p->c, JE_SYNTAX, nm->line, "expected a filter name after '|'");
            if (!in_list(FILTERS, PD_ARRAY_LEN(FILTERS), nm->s, nm->n))
                jfail(p->c, JE_UNSUPPORTED, nm->line, "filter '%.*s' is not supported", (int)nm->n, nm->s);
            node *e = mk(p, E_FILTER, nm->line);
            e->a = n;
            e->s = nm->s;
            e->sn = nm->n;
            if (is_op(peek(p), "(")) {
                next_tok(p);
                parse_args(p, e);
            }
            n = e;
        } else if (is_name(t, "is")) {
            next_tok(p);
            node *e = mk(p, E_TEST, t->line);
            if (is_name(peek(p), "not")) next_tok(p), e->negate = 1;
            token *nm = next_tok(p);
            if (nm->t != T_NAME && !(nm->t == T_OP && (is_op(nm, "==") || is_op(nm, "!="))))
                jfail(p->c, JE_SYNTAX, nm->line, "expected a test name after 'is'");
            const char *tn = nm->s;
            size_t tl = nm->n;
            if (is_op(nm, "==")) tn = "eq", tl = 2;
            if (is_op(nm, "!=")) tn = "ne", tl = 2;
            if (!in_list(TESTS, PD_ARRAY_LEN(TESTS), tn, tl))
                jfail(p->c, JE_UNSUPPORTED, nm->line, "test '%.*s' is not supported", (int)tl, tn);
            e->a = n;
            e->s = tn;
            e->sn = tl;
            if (is_op(peek(p), "(")) {
                next_tok(p);
                parse_args(p, e);
            } else {
                /* One argument without parentheses: `is sameas false`, `is divisibleby 3`. */
                token *u = peek(p);
                if (u->t == T_STRING || u->t == T_INT || u->t == T_FLOAT ||
                    (u->t == T_NAME && !is_name(u, "and") && !is_name(u, "or") && !is_name(u, "else") &&
                     !is_name(u, "if") && !is_name(u, "is") && !is_name(u, "in") && !is_name(u, "not")))
                    nl_push(p->c, &e->list, parse_unary(p, 0));
            }
            n = e;
        } else return n;
    }
}

static node *parse_unary(parser *p, int with_filter)
{
    token *t = peek(p);
    node *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        next_tok(p);
        n = mk(p, is_op(t, "-") ? E_NEG : E_POS, t->line);
        parse_enter(p, t->line);
        n->a = parse_unary(p, 0);
        p->depth--;
    } else n = parse_postfix(p, parse_primary(p));
    return with_filter ? parse_filters_tests(p, n) : n;
}

static node *bin(parser *p, const char *op, int line, node *a, node *b)
{
    node *n = mk(p, E_BIN, line);
    n->s = op;
    n->a = a;
    n->b = b;
    return n;
}

static node *parse_pow(parser *p)
{
    node *n = parse_unary(p, 1);
    while (is_op(peek(p), "**")) {
        token *t = next_tok(p);
        n = bin(p, "**", t->line, n, parse_unary(p, 1));
    }
    return n;
}

static node *parse_mul(parser *p)
{
    node *n = parse_pow(p);
    for (;;) {
        token *t = peek(p);
        if (is_op(t, "*") || is_op(t, "/") || is_op(t, "//") || is_op(t, "%")) {
            next_tok(p);
            n = bin(p, t->s, t->line, n, parse_pow(p));
        } else return n;
    }
}

static node *parse_concat(parser *p)
{
    node *n = parse_mul(p);
    while (is_op(peek(p), "~")) {
        token *t = next_tok(p);
        n = bin(p, "~", t->line, n, parse_mul(p));
    }
    return n;
}

static node *parse_add(parser *p)
{
    node *n = parse_concat(p);
    for (;;) {
        token *t = peek(p);
        if (is_op(t, "+") || is_op(t, "-")) {
            next_tok(p);
            n = bin(p, t->s, t->line, n, parse_concat(p));
        } else return n;
    }
}

static node *parse_compare(parser *p)
{
    node *n = parse_add(p);
    for (;;) {
        token *t = peek(p);
        const char *op = NULL;
        if (is_op(t, "==") || is_op(t, "!=") || is_op(t, "<") || is_op(t, ">") || is_op(t, "<=") || is_op(t, ">="))
            op = t->s, next_tok(p);
        else if (is_name(t, "in")) op = "in", next_tok(p);
        else if (is_name(t, "not") && is_name(&p->t[p->pos + 1], "in")) op = "not in", p->pos += 2;
        else return n;
        n = bin(p, op, t->line, n, parse_add(p));
    }
}

static node *parse_not(parser *p)
{
    token *t = peek(p);
    if (is_name(t, "not")) {
        next_tok(p);
        node *n = mk(p, E_NOT, t->line);
        parse_enter(p, t->line);
        n->a = parse_not(p);
        p->depth--;
        return n;
    }
    return parse_compare(p);
}

static node *parse_and(parser *p)
{
    node *n = parse_not(p);
    while (is_name(peek(p), "and")) {
        token *t = next_tok(p);
        node *e = mk(p, E_AND, t->line);
        e->a = n;
        e->b = parse_not(p);
        n = e;
    }
    return n;
}

static node *parse_or(parser *p)
{
    node *n = parse_and(p);
    while (is_name(peek(p), "or")) {
        token *t = next_tok(p);
        node *e = mk(p, E_OR, t->line);
        e->a = n;
        e->b = parse_and(p);
        n = e;
    }
    return n;
}

static node *parse_expr(parser *p)
{
    parse_enter(p, peek(p)->line);
    node *n = parse_or(p);
    while (is_name(peek(p), "if")) {
        token *t = next_tok(p);
        node *e = mk(p, E_COND, t->line);
        e->b = n;
        e->a = parse_or(p);
        if (is_name(peek(p), "else")) {
            next_tok(p);
            e->c = parse_expr(p);
        }
        n = e;
    }
    p->depth--;
    return n;
}

/* Statements. parse_body stops at a block tag whose keyword is in stops (the tag's keyword token is left). */
static void parse_body(parser *p, nodelist *out, const char *const *stops, size_t n_stops, const char **stopped);

static void expect_block_end(parser *p)
{
    token *t = next_tok(p);
    if (t->t != T_BLOCK_END) jfail(p->c, JE_SYNTAX, t->line, "expected '%%}'");
}

static node *parse_statement_kw(parser *p);

static node *parse_statement(parser *p)
{
    int depth = p->depth;
    parse_enter(p, peek(p)->line);
    node *n = parse_statement_kw(p);
    p->depth = depth; /* an if's elif chain nests one level per elif (see below) */
    return n;
}

static node *parse_statement_kw(parser *p)
{
    token *kw = next_tok(p);
    if (kw->t != T_NAME) jfail(p->c, JE_SYNTAX, kw->line, "expected a statement keyword after '{%%'");
    if (is_name(kw, "if")) {
        node *n = mk(p, N_IF, kw->line), *cur = n;
        cur->a = parse_expr(p);
        expect_block_end(p);
        static const char *const stops[] = {"elif", "else", "endif"};
        for (;;) {
            const char *st;
            parse_body(p, &cur->list, stops, 3, &st);
            if (!strcmp(st, "elif")) {
                parse_enter(p, peek(p)->line); /* an elif is an if inside the else: one level deeper */
                node *e = mk(p, N_IF, peek(p)->line);
                e->a = parse_expr(p);
                expect_block_end(p);
                nl_push(p->c, &cur->list2, e);
                cur = e;
            } else if (!strcmp(st, "else")) {
                expect_block_end(p);
                static const char *const s2[] = {"endif"};
                parse_body(p, &cur->list2, s2, 1, &st);
                expect_block_end(p);
                return n;
            } else {
                expect_block_end(p);
                return n;
            }
        }
    }
    if (is_name(kw, "for")) {
        node *n = mk(p, N_FOR, kw->line);
        size_t cap = 4;
        n->names = jalloc(p->c, cap * sizeof *n->names);
        n->name_lens = jalloc(p->c, cap * sizeof *n->name_lens);
        for (;;) {
            token *t = next_tok(p);
            if (t->t != T_NAME || n->n_names == cap) jfail(p->c, JE_SYNTAX, t->line, "bad for-loop target");
            n->names[n->n_names] = t->s;
            n->name_lens[n->n_names++] = t->n;
            if (!is_op(peek(p), ",")) break;
            next_tok(p);
        }
        if (!is_name(next_tok(p), "in")) jfail(p->c, JE_SYNTAX, kw->line, "expected 'in' in a for loop");
        n->a = parse_or(p); /* no inline if-expression: 'if' here filters */
        if (is_name(peek(p), "if")) {
            next_tok(p);
            n->b = parse_or(p);
        }
        if (is_name(peek(p), "recursive")) jfail(p->c, JE_UNSUPPORTED, kw->line, "recursive loops are not supported");
        expect_block_end(p);
        static const char *const stops[] = {"else", "endfor"};
        const char *st;
        parse_body(p, &n->list, stops, 2, &st);
        if (!strcmp(st, "else")) {
            expect_block_end(p);
            static const char *const s2[] = {"endfor"};
            parse_body(p, &n->list2, s2, 1, &st);
        }
        expect_block_end(p);
        return n;
    }
    if (is_name(kw, "set")) {
        token *t = next_tok(p);
        if (t->t != T_NAME) jfail(p->c, JE_SYNTAX, t->line, "expected a name after 'set'");
        node *n;
        if (is_op(peek(p), ".")) {
            next_tok(p);
            token *a = next_tok(p);
            if (a->t != T_NAME) jfail(p->c, JE_SYNTAX, a->line, "expected an attribute name");
            n = mk(p, N_SET_ATTR, kw->line);
            n->s = t->s, n->sn = t->n;
            n->names = jalloc(p->c, sizeof *n->names);
            n->name_lens = jalloc(p->c, sizeof *n->name_lens);
            n->names[0] = a->s, n->name_lens[0] = a->n, n->n_names = 1;
        } else {
            n = mk(p, N_SET, kw->line);
            n->s = t->s, n->sn = t->n;
        }
        if (is_op(peek(p), ",")) jfail(p->c, JE_UNSUPPORTED, kw->line, "tuple assignment in 'set' is not supported");
        if (peek(p)->t == T_BLOCK_END && n->k == N_SET) {
            next_tok(p);
            n->k = N_SET_BLOCK;
            static const char *const stops[] = {"endset"};
            const char *st;
            parse_body(p, &n->list, stops, 1, &st);
            expect_block_end(p);
            return n;
        }
        expect_op(p, "=");
        n->a = parse_expr(p);
        expect_block_end(p);
        return n;
    }
    if (is_name(kw, "break") || is_name(kw, "continue")) {
        node *n = mk(p, is_name(kw, "break") ? N_BREAK : N_CONTINUE, kw->line);
        expect_block_end(p);
        return n;
    }
    if (is_name(kw, "generation")) { /* transformers' AssistantTracker: renders its body */
        node *n = mk(p, N_BLOCK, kw->line);
        expect_block_end(p);
        static const char *const stops[] = {"endgeneration"};
        const char *st;
        parse_body(p, &n->list, stops, 1, &st);
        expect_block_end(p);
        return n;
    }
    jfail(p->c, JE_UNSUPPORTED, kw->line, "statement '%.*s' is not supported", (int)kw->n, kw->s);
}

static void parse_body(parser *p, nodelist *out, const char *const *stops, size_t n_stops, const char **stopped)
{
    for (;;) {
        token *t = peek(p);
        if (t->t == T_EOF) {
            if (n_stops) jfail(p->c, JE_SYNTAX, t->line, "unexpected end of template (missing '{%% %s %%}')", stops[n_stops - 1]);
            return;
        }
        if (t->t == T_TEXT) {
            next_tok(p);
            node *n = mk(p, N_TEXT, t->line);
            n->s = t->s, n->sn = t->n;
            nl_push(p->c, out, n);
        } else if (t->t == T_VAR_BEGIN) {
            next_tok(p);
            node *n = mk(p, N_OUTPUT, t->line);
            n->a = parse_expr(p);
            token *e = next_tok(p);
            if (e->t != T_VAR_END) jfail(p->c, JE_SYNTAX, e->line, "expected '}}'");
            nl_push(p->c, out, n);
        } else if (t->t == T_BLOCK_BEGIN) {
            token *kw = &p->t[p->pos + 1];
            for (size_t i = 0; i < n_stops; i++)
                if (is_name(kw, stops[i])) {
                    p->pos += 2;
                    *stopped = stops[i];
                    return;
                }
            if (kw->t == T_NAME && (is_name(kw, "endif") || is_name(kw, "endfor") || is_name(kw, "else") ||
                                    is_name(kw, "elif") || is_name(kw, "endset") || is_name(kw, "endgeneration")))
                jfail(p->c, JE_SYNTAX, kw->line, "unexpected '{%% %.*s %%}'", (int)kw->n, kw->s);
            next_tok(p);
            nl_push(p->c, out, parse_statement(p));
        } else jfail(p->c, JE_SYNTAX, t->line, "unexpected token");
    }
}

/* ---- the template object ---- */

struct txt_chat_template_s {
    arena ar; /* AST and strings */
    nodelist body;
    char *bos, *eos;
};

/* ---- interpreter ---- */

typedef struct scope {
    struct scope *parent;
    value vars; /* V_DICT */
} scope;

typedef enum { FL_NORMAL, FL_BREAK, FL_CONTINUE } flow;

typedef struct {
    jctx *c;
    sbuf out;
    int depth; /* eval/exec recursion, bounded by JT_MAX_DEPTH (a chain such as 1+1+...+1 nests at run time) */
} interp;

enum {
    FN_RAISE = 1, FN_NAMESPACE, FN_RANGE, FN_STRFTIME, FN_DICT,
    /* str methods */
    FN_S_STRIP, FN_S_LSTRIP, FN_S_RSTRIP, FN_S_STARTSWITH, FN_S_ENDSWITH, FN_S_SPLIT, FN_S_RSPLIT, FN_S_REPLACE,
    FN_S_UPPER, FN_S_LOWER, FN_S_TITLE, FN_S_CAPITALIZE, FN_S_FIND, FN_S_COUNT, FN_S_JOIN, FN_S_SPLITLINES,
    FN_S_ISDIGIT, FN_S_ISSPACE,
    /* dict methods */
    FN_D_ITEMS, FN_D_KEYS, FN_D_VALUES, FN_D_GET
};

static const struct {
    const char *name;
    int fn;
    vtype on;
} METHODS[] = {
    {"strip", FN_S_STRIP, V_STR},       {"lstrip", FN_S_LSTRIP, V_STR},         {"rstrip", FN_S_RSTRIP, V_STR},
    {"startswith", FN_S_STARTSWITH, V_STR}, {"endswith", FN_S_ENDSWITH, V_STR}, {"split", FN_S_SPLIT, V_STR},
    {"rsplit", FN_S_RSPLIT, V_STR},     {"replace", FN_S_REPLACE, V_STR},       {"upper", FN_S_UPPER, V_STR},
    {"lower", FN_S_LOWER, V_STR},       {"title", FN_S_TITLE, V_STR},           {"capitalize", FN_S_CAPITALIZE, V_STR},
    {"find", FN_S_FIND, V_STR},         {"count", FN_S_COUNT, V_STR},           {"join", FN_S_JOIN, V_STR},
    {"splitlines", FN_S_SPLITLINES, V_STR}, {"isdigit", FN_S_ISDIGIT, V_STR},   {"isspace", FN_S_ISSPACE, V_STR},
    {"items", FN_D_ITEMS, V_DICT},      {"keys", FN_D_KEYS, V_DICT},            {"values", FN_D_VALUES, V_DICT},
    {"get", FN_D_GET, V_DICT},
};

static const struct {
    const char *name;
    int fn;
} GLOBALS[] = {{"raise_exception", FN_RAISE}, {"namespace", FN_NAMESPACE}, {"range", FN_RANGE},
               {"strftime_now", FN_STRFTIME}, {"dict", FN_DICT}};

static int callable_name(const node *callee)
{
    if (callee->k == E_NAME) {
        for (size_t i = 0; i < PD_ARRAY_LEN(GLOBALS); i++)
            if (strlen(GLOBALS[i].name) == callee->sn && !memcmp(GLOBALS[i].name, callee->s, callee->sn)) return 1;
        return 0;
    }
    if (callee->k == E_ATTR) {
        for (size_t i = 0; i < PD_ARRAY_LEN(METHODS); i++)
            if (strlen(METHODS[i].name) == callee->sn && !memcmp(METHODS[i].name, callee->s, callee->sn)) return 1;
        return 0;
    }
    return 0;
}

static value *eval(interp *in, scope *sc, node *n);
static flow exec_list(interp *in, scope *sc, nodelist *l);

static const char *type_name(const value *v)
{
    static const char *const names[] = {"undefined", "NoneType", "bool", "int", "float", "str", "list", "dict",
                                        "Namespace", "function"};
    return names[v->t];
}

static int truthy(const value *v)
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

static int is_num(const value *v) { return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL; }
static double num_f(const value *v) { return v->t == V_FLOAT ? v->f : v->t == V_INT ? (double)v->i : v->b; }
static int64_t num_i(const value *v) { return v->t == V_INT ? v->i : v->b; }

static int values_equal(jctx *c, const value *a, const value *b)
{
    jstep(c, 0);
    if (is_num(a) && is_num(b)) {
        if (a->t == V_FLOAT || b->t == V_FLOAT) return num_f(a) == num_f(b);
        return num_i(a) == num_i(b);
    }
    if (a->t != b->t) return 0;
    switch (a->t) {
    case V_UNDEF:
    case V_NONE: return 1;
    case V_STR:
        if (a->s.n != b->s.n) return 0;
        jscan(c, a->s.n);
        return !memcmp(a->s.s, b->s.s, a->s.n);
    case V_LIST:
        if (a->l.n != b->l.n) return 0;
        for (size_t i = 0; i < a->l.n; i++)
            if (!values_equal(c, a->l.v[i], b->l.v[i])) return 0;
        return 1;
    case V_DICT:
        if (a->d.n != b->d.n) return 0;
        for (size_t i = 0; i < a->d.n; i++) {
            value *o = dict_get(b, a->d.v[i].k, a->d.v[i].kn);
            if (!o || !values_equal(c, a->d.v[i].v, o)) return 0;
        }
        return 1;
    default: return a == b;
    }
}

/* <0, 0, >0; fails for types Python cannot order. */
static int values_cmp(interp *in, const value *a, const value *b, int line)
{
    if (is_num(a) && is_num(b)) {
        double x = num_f(a), y = num_f(b);
        return x < y ? -1 : x > y;
    }
    jstep(in->c, line);
    if (a->t == V_STR && b->t == V_STR) {
        size_t n = PD_MIN(a->s.n, b->s.n);
        jscan(in->c, n);
        int r = memcmp(a->s.s, b->s.s, n);
        return r ? r : (a->s.n > b->s.n) - (a->s.n < b->s.n);
    }
    if (a->t == V_LIST && b->t == V_LIST) {
        for (size_t i = 0; i < a->l.n && i < b->l.n; i++) {
            if (values_equal(in->c, a->l.v[i], b->l.v[i])) continue;
            return values_cmp(in, a->l.v[i], b->l.v[i], line);
        }
        return (a->l.n > b->l.n) - (a->l.n < b->l.n);
    }
    jfail(in->c, JE_RUNTIME, line, "cannot compare %s and %s", type_name(a), type_name(b));
}

/* UTF-8 code point boundaries of a string: offs[0..n] (n code points). */
static size_t *cp_offsets(jctx *c, const char *s, size_t len, size_t *n)
{
    size_t *o = jalloc(c, (len + 1) * sizeof *o), k = 0;
    for (size_t i = 0; i < len; i++)
        if (((unsigned char)s[i] & 0xC0) != 0x80) o[k++] = i;
    o[k] = len;
    *n = k;
    return o;
}

static size_t cp_len(jctx *c, const char *s, size_t len)
{
    jscan(c, len);
    size_t k = 0;
    for (size_t i = 0; i < len; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

static value *lookup(scope *sc, const char *name, size_t n)
{
    for (; sc; sc = sc->parent) {
        value *v = dict_get(&sc->vars, name, n);
        if (v) return v;
    }
    return NULL;
}

static value *get_attr(interp *in, value *obj, const char *name, size_t n, int line)
{
    if (obj->t == V_UNDEF)
        jfail(in->c, JE_RUNTIME, line, "'%.*s' of an undefined value", (int)n, name);
    if (obj->t == V_DICT || obj->t == V_NS) {
        value *v = dict_get(obj, name, n);
        if (v) return v;
    }
    for (size_t i = 0; i < PD_ARRAY_LEN(METHODS); i++)
        if (METHODS[i].on == obj->t && strlen(METHODS[i].name) == n && !memcmp(METHODS[i].name, name, n)) {
            value *f = v_new(in->c, V_FUNC);
            f->fn.fn = METHODS[i].fn;
            f->fn.self = obj;
            return f;
        }
    return &UNDEF;
}

static value *get_item(interp *in, value *obj, value *key, int line)
{
    if (obj->t == V_UNDEF) jfail(in->c, JE_RUNTIME, line, "subscript of an undefined value");
    if ((obj->t == V_DICT || obj->t == V_NS) && key->t == V_STR) {
        value *v = dict_get(obj, key->s.s, key->s.n);
        return v ? v : &UNDEF;
    }
    if (obj->t == V_LIST && (key->t == V_INT || key->t == V_BOOL)) {
        int64_t i = num_i(key);
        if (i < 0) i += (int64_t)obj->l.n;
        return i >= 0 && (size_t)i < obj->l.n ? obj->l.v[i] : &UNDEF;
    }
    if (obj->t == V_STR && (key->t == V_INT || key->t == V_BOOL)) {
        size_t n;
        size_t *o = cp_offsets(in->c, obj->s.s, obj->s.n, &n);
        int64_t i = num_i(key);
        if (i < 0) i += (int64_t)n;
        if (i < 0 || (size_t)i >= n) return &UNDEF;
        return v_str(in->c, obj->s.s + o[i], o[i + 1] - o[i]);
    }
    if (key->t == V_STR) return get_attr(in, obj, key->s.s, key->s.n, line);
    return &UNDEF;
}

static void slice_indices(int64_t len, value *a, value *b, value *s, int64_t *start, int64_t *stop, int64_t *step,
                          interp *in, int line)
{
    *step = s && s->t != V_NONE ? num_i(s) : 1;
    if (*step == 0) jfail(in->c, JE_RUNTIME, line, "slice step cannot be zero");
    int64_t lo = *step < 0 ? -1 : 0, hi = *step < 0 ? len - 1 : len;
    if (!a || a->t == V_NONE) *start = *step < 0 ? hi : lo;
    else {
        *start = num_i(a);
        if (*start < 0) *start += len;
        *start = *start < lo ? lo : *start > hi ? hi : *start;
    }
    if (!b || b->t == V_NONE) *stop = *step < 0 ? lo : hi;
    else {
        *stop = num_i(b);
        if (*stop < 0) *stop += len;
        *stop = *stop < lo ? lo : *stop > hi ? hi : *stop;
    }
}

static value *do_slice(interp *in, value *obj, value *a, value *b, value *s, int line)
{
    value *parts[3] = {a, b, s};
    for (int i = 0; i < 3; i++)
        if (parts[i] && !(parts[i]->t == V_INT || parts[i]->t == V_BOOL || parts[i]->t == V_NONE))
            jfail(in->c, JE_RUNTIME, line, "slice indices must be integers");
    int64_t start, stop, step;
    if (obj->t == V_LIST) {
        slice_indices((int64_t)obj->l.n, a, b, s, &start, &stop, &step, in, line);
        value *r = v_new(in->c, V_LIST);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) list_push(in->c, r, obj->l.v[i]);
        return r;
    }
    if (obj->t == V_STR) {
        size_t n;
        size_t *o = cp_offsets(in->c, obj->s.s, obj->s.n, &n);
        slice_indices((int64_t)n, a, b, s, &start, &stop, &step, in, line);
        sbuf sb = {in->c, NULL, 0, 0, 0};
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            sb_add(&sb, obj->s.s + o[i], o[i + 1] - o[i]);
        return v_str(in->c, sb.p ? sb.p : "", sb.n);
    }
    jfail(in->c, JE_RUNTIME, line, "cannot slice a value of type %s", type_name(obj));
}

/* Python str.isspace() characters. */
static int py_space_at(const char *s, size_t n, size_t *len)
{
    unsigned char b = (unsigned char)s[0];
    *len = 1;
    if ((b >= 9 && b <= 13) || (b >= 0x1c && b <= 0x20)) return 1;
    if (b < 0x80) return 0;
    uint32_t cp = 0;
    size_t l = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    if (l > n) return 0;
    cp = l == 2 ? (uint32_t)(b & 0x1F) : l == 3 ? (uint32_t)(b & 0x0F) : (uint32_t)(b & 0x07);
    for (size_t i = 1; i < l; i++) cp = cp << 6 | ((unsigned char)s[i] & 0x3F);
    *len = l;
    return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
           cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Python str.strip family: chars NULL strips whitespace, else any code point of chars. */
static value *py_strip(interp *in, value *s, value *chars, int left, int right)
{
    const char *p = s->s.s, *e = s->s.s + s->s.n;
    if (chars && chars->t != V_NONE && chars->t != V_STR) jfail(in->c, JE_RUNTIME, 0, "strip arg must be a string");
    int ws = !chars || chars->t == V_NONE;
    size_t l;
    if (left)
        while (p < e) {
            if (ws) {
                if (!py_space_at(p, (size_t)(e - p), &l)) break;
            } else {
                l = 1;
                while (p + l < e && ((unsigned char)p[l] & 0xC0) == 0x80) l++;
                int found = 0;
                for (size_t i = 0; i + l <= chars->s.n; i++)
                    if (!memcmp(chars->s.s + i, p, l)) found = 1;
                if (!found) break;
            }
            p += l;
        }
    if (right)
        while (e > p) {
            const char *q = e - 1;
            while (q > p && ((unsigned char)*q & 0xC0) == 0x80) q--;
            l = (size_t)(e - q);
            if (ws) {
                size_t l2;
                if (!py_space_at(q, l, &l2) || l2 != l) break;
            } else {
                int found = 0;
                for (size_t i = 0; i + l <= chars->s.n; i++)
                    if (!memcmp(chars->s.s + i, q, l)) found = 1;
                if (!found) break;
            }
            e = q;
        }
    return v_str(in->c, p, (size_t)(e - p));
}

static const char *memmem_s(jctx *c, const char *h, size_t hn, const char *n, size_t nn)
{
    if (nn == 0) return h;
    const char *f = memmem(h, hn, n, nn);
    jscan(c, f ? (size_t)(f - h) + nn : hn); /* what it read: successive searches of a split charge each byte once */
    return f;
}

static value *py_split(interp *in, value *s, value *sep, int64_t maxsplit, int from_right, int line)
{
    value *r = v_new(in->c, V_LIST);
    const char *p = s->s.s, *e = s->s.s + s->s.n;
    if (!sep || sep->t == V_NONE) {
        /* Whitespace runs; no empty strings. rsplit with maxsplit on whitespace is rare: treated as split. */
        int64_t splits = 0;
        size_t l;
        while (p < e) {
            while (p < e && py_space_at(p, (size_t)(e - p), &l)) p += l;
            if (p >= e) break;
            if (maxsplit >= 0 && splits == maxsplit) {
                const char *q = e;
                while (q > p) {
                    const char *c0 = q - 1;
                    while (c0 > p && ((unsigned char)*c0 & 0xC0) == 0x80) c0--;
                    size_t l2;
                    if (!py_space_at(c0, (size_t)(q - c0), &l2)) break;
                    q = c0;
                }
                list_push(in->c, r, v_str(in->c, p, (size_t)(q - p)));
                break;
            }
            const char *w = p;
            while (p < e && !py_space_at(p, (size_t)(e - p), &l)) p += l;
            list_push(in->c, r, v_str(in->c, w, (size_t)(p - w)));
            splits++;
        }
        return r;
    }
    if (sep->t != V_STR) jfail(in->c, JE_RUNTIME, line, "split separator must be a string");
    if (sep->s.n == 0) jfail(in->c, JE_RUNTIME, line, "empty separator");
    if (!from_right || maxsplit < 0) {
        int64_t splits = 0;
        for (;;) {
            const char *f = maxsplit >= 0 && splits >= maxsplit ? NULL : memmem_s(in->c, p, (size_t)(e - p), sep->s.s, sep->s.n);
            if (!f) {
                list_push(in->c, r, v_str(in->c, p, (size_t)(e - p)));
                return r;
            }
            list_push(in->c, r, v_str(in->c, p, (size_t)(f - p)));
            p = f + sep->s.n;
            splits++;
        }
    }
    /* rsplit with a limit: collect from the right, then reverse. */
    value *tmp = v_new(in->c, V_LIST);
    int64_t splits = 0;
    const char *q = e;
    while (splits < maxsplit) {
        const char *f = NULL;
        for (const char *x = q - sep->s.n; x >= p; x--)
            if (!memcmp(x, sep->s.s, sep->s.n)) {
                f = x;
                break;
            }
        if (!f) break;
        list_push(in->c, tmp, v_str(in->c, f + sep->s.n, (size_t)(q - f - sep->s.n)));
        q = f;
        splits++;
    }
    list_push(in->c, tmp, v_str(in->c, p, (size_t)(q - p)));
    for (size_t i = tmp->l.n; i-- > 0;) list_push(in->c, r, tmp->l.v[i]);
    return r;
}

static value *py_replace(interp *in, value *s, value *old, value *new_, int64_t count, int line)
{
    if (old->t != V_STR || new_->t != V_STR) jfail(in->c, JE_RUNTIME, line, "replace arguments must be strings");
    sbuf b = {in->c, NULL, 0, 0, 0};
    const char *p = s->s.s, *e = s->s.s + s->s.n;
    int64_t done = 0;
    if (old->s.n == 0) { /* Python inserts between every character */
        size_t n;
        size_t *o = cp_offsets(in->c, p, s->s.n, &n);
        for (size_t i = 0; i <= n; i++) {
            if (count < 0 || done < count) sb_add(&b, new_->s.s, new_->s.n), done++;
            if (i < n) sb_add(&b, p + o[i], o[i + 1] - o[i]);
        }
        return v_str(in->c, b.p ? b.p : "", b.n);
    }
    while (p < e) {
        const char *f = count >= 0 && done >= count ? NULL : memmem_s(in->c, p, (size_t)(e - p), old->s.s, old->s.n);
        if (!f) break;
        sb_add(&b, p, (size_t)(f - p));
        sb_add(&b, new_->s.s, new_->s.n);
        p = f + old->s.n;
        done++;
    }
    sb_add(&b, p, (size_t)(e - p));
    return v_str(in->c, b.p, b.n);
}

/* ASCII-only case mapping (documented limitation: non-ASCII letters are left as they are). */
static value *case_map(interp *in, value *s, int mode /* 0 lower 1 upper 2 title 3 capitalize */)
{
    char *o = jalloc(in->c, s->s.n + 1);
    int prev_letter = 0;
    for (size_t i = 0; i < s->s.n; i++) {
        char ch = s->s.s[i];
        int is_lower = ch >= 'a' && ch <= 'z', is_upper = ch >= 'A' && ch <= 'Z';
        int up = mode == 1 || (mode == 2 && !prev_letter) || (mode == 3 && i == 0);
        if (up && is_lower) ch = (char)(ch - 32);
        else if (!up && mode != 1 && is_upper) ch = (char)(ch + 32);
        o[i] = ch;
        prev_letter = is_lower || is_upper || ((unsigned char)ch >= 0x80);
    }
    o[s->s.n] = 0;
    return v_str(in->c, o, s->s.n);
}

static value *arg_or(node *call, value **args, size_t nargs, size_t idx, const char *kw, value **kwv)
{
    if (idx < nargs) return args[idx];
    for (size_t i = 0; i < call->n_names; i++)
        if (strlen(kw) == call->name_lens[i] && !memcmp(kw, call->names[i], call->name_lens[i])) return kwv[i];
    return NULL;
}

static value *need_str(interp *in, value *v, const char *what, int line)
{
    if (!v || v->t != V_STR) jfail(in->c, JE_RUNTIME, line, "%s must be a string", what);
    return v;
}

static value *call_fn(interp *in, value *f, node *call, value **args, size_t nargs, value **kwv)
{
    jctx *c = in->c;
    int line = call->line;
    value *self = f->fn.self;
#define ARG(i, kw) arg_or(call, args, nargs, (i), (kw), kwv)
    switch (f->fn.fn) {
    case FN_RAISE: {
        sbuf b = {c, NULL, 0, 0, 0};
        if (nargs) str_into(&b, args[0]);
        jfail(c, JE_RAISE, 0, "%s", b.p ? b.p : "raise_exception");
    }
    case FN_NAMESPACE:
    case FN_DICT: {
        value *ns = v_new(c, f->fn.fn == FN_NAMESPACE ? V_NS : V_DICT);
        if (nargs && (args[0]->t == V_DICT || args[0]->t == V_NS))
            for (size_t i = 0; i < args[0]->d.n; i++) dict_set(c, ns, args[0]->d.v[i].k, args[0]->d.v[i].kn, args[0]->d.v[i].v);
        for (size_t i = 0; i < call->n_names; i++) dict_set(c, ns, call->names[i], call->name_lens[i], kwv[i]);
        return ns;
    }
    case FN_RANGE: {
        int64_t a = 0, b, s = 1;
        for (size_t i = 0; i < nargs; i++)
            if (args[i]->t != V_INT) jfail(c, JE_RUNTIME, line, "range() arguments must be integers");
        if (nargs == 1) b = args[0]->i;
        else if (nargs >= 2) a = args[0]->i, b = args[1]->i, s = nargs > 2 ? args[2]->i : 1;
        else jfail(c, JE_RUNTIME, line, "range() needs arguments");
        if (s == 0) jfail(c, JE_RUNTIME, line, "range() step cannot be zero");
        value *r = v_new(c, V_LIST);
        for (int64_t i = a; s > 0 ? i < b : i > b; i += s) {
            if (r->l.n > 1000000) jfail(c, JE_RUNTIME, line, "range() too large");
            list_push(c, r, v_int(c, i));
        }
        return r;
    }
    case FN_STRFTIME: {
        value *fmt = need_str(in, ARG(0, "format"), "strftime_now format", line);
        time_t now = time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        char buf[256];
        size_t n = strftime(buf, sizeof buf, fmt->s.s, &tm);
        return v_strdup(c, buf, n);
    }
    case FN_S_STRIP: return py_strip(in, self, ARG(0, "chars"), 1, 1);
    case FN_S_LSTRIP: return py_strip(in, self, ARG(0, "chars"), 1, 0);
    case FN_S_RSTRIP: return py_strip(in, self, ARG(0, "chars"), 0, 1);
    case FN_S_STARTSWITH:
    case FN_S_ENDSWITH: {
        value *x = ARG(0, "prefix");
        if (!x) jfail(c, JE_RUNTIME, line, "startswith/endswith need an argument");
        size_t nx = x->t == V_LIST ? x->l.n : 1;
        for (size_t i = 0; i < nx; i++) {
            value *s = need_str(in, x->t == V_LIST ? x->l.v[i] : x, "startswith/endswith argument", line);
            if (s->s.n <= self->s.n &&
                !memcmp(f->fn.fn == FN_S_STARTSWITH ? self->s.s : self->s.s + self->s.n - s->s.n, s->s.s, s->s.n))
                return &TRUE_V;
        }
        return &FALSE_V;
    }
    case FN_S_SPLIT:
    case FN_S_RSPLIT: {
        value *ms = ARG(1, "maxsplit");
        return py_split(in, self, ARG(0, "sep"), ms && ms->t == V_INT ? ms->i : -1, f->fn.fn == FN_S_RSPLIT, line);
    }
    case FN_S_REPLACE: {
        value *cnt = ARG(2, "count");
        value *o = ARG(0, "old"), *n = ARG(1, "new");
        if (!o || !n) jfail(c, JE_RUNTIME, line, "replace needs two arguments");
        return py_replace(in, self, o, n, cnt && cnt->t == V_INT ? cnt->i : -1, line);
    }
    case FN_S_UPPER: return case_map(in, self, 1);
    case FN_S_LOWER: return case_map(in, self, 0);
    case FN_S_TITLE: return case_map(in, self, 2);
    case FN_S_CAPITALIZE: return case_map(in, self, 3);
    case FN_S_FIND:
    case FN_S_COUNT: {
        value *x = need_str(in, ARG(0, "sub"), "find/count argument", line);
        if (f->fn.fn == FN_S_FIND) {
            const char *p = memmem_s(in->c, self->s.s, self->s.n, x->s.s, x->s.n);
            return v_int(c, p ? (int64_t)cp_len(in->c, self->s.s, (size_t)(p - self->s.s)) : -1);
        }
        if (x->s.n == 0) return v_int(c, (int64_t)cp_len(in->c, self->s.s, self->s.n) + 1);
        int64_t k = 0;
        for (const char *p = self->s.s, *e = self->s.s + self->s.n; (p = memmem_s(in->c, p, (size_t)(e - p), x->s.s, x->s.n));
             p += x->s.n)
            k++;
        return v_int(c, k);
    }
    case FN_S_JOIN: {
        value *l = ARG(0, "iterable");
        if (!l || l->t != V_LIST) jfail(c, JE_RUNTIME, line, "join needs a list");
        sbuf b = {c, NULL, 0, 0, 0};
        for (size_t i = 0; i < l->l.n; i++) {
            if (i) sb_add(&b, self->s.s, self->s.n);
            sb_add(&b, need_str(in, l->l.v[i], "join item", line)->s.s, l->l.v[i]->s.n);
        }
        return v_str(c, b.p ? b.p : "", b.n);
    }
    case FN_S_SPLITLINES: {
        value *r = v_new(c, V_LIST);
        const char *p = self->s.s, *e = p + self->s.n, *st = p;
        while (p < e) {
            if (*p == '\n' || *p == '\r') {
                list_push(c, r, v_str(c, st, (size_t)(p - st)));
                if (*p == '\r' && p + 1 < e && p[1] == '\n') p++;
                st = ++p;
            } else p++;
        }
        if (st < e) list_push(c, r, v_str(c, st, (size_t)(e - st)));
        return r;
    }
    case FN_S_ISDIGIT:
    case FN_S_ISSPACE: {
        if (!self->s.n) return &FALSE_V;
        for (size_t i = 0; i < self->s.n;) {
            size_t l = 1;
            if (f->fn.fn == FN_S_ISDIGIT ? !(self->s.s[i] >= '0' && self->s.s[i] <= '9')
                                         : !py_space_at(self->s.s + i, self->s.n - i, &l))
                return &FALSE_V;
            i += l;
        }
        return &TRUE_V;
    }
    case FN_D_ITEMS:
    case FN_D_KEYS:
    case FN_D_VALUES: {
        value *r = v_new(c, V_LIST);
        for (size_t i = 0; i < self->d.n; i++) {
            value *k = v_str(c, self->d.v[i].k, self->d.v[i].kn);
            if (f->fn.fn == FN_D_ITEMS) {
                value *pair = v_new(c, V_LIST);
                pair->l.tuple = 1;
                list_push(c, pair, k);
                list_push(c, pair, self->d.v[i].v);
                list_push(c, r, pair);
            } else list_push(c, r, f->fn.fn == FN_D_KEYS ? k : self->d.v[i].v);
        }
        return r;
    }
    case FN_D_GET: {
        value *k = ARG(0, "key"), *d = ARG(1, "default");
        if (!k) jfail(c, JE_RUNTIME, line, "get needs a key");
        value *v = k->t == V_STR ? dict_get(self, k->s.s, k->s.n) : NULL;
        return v ? v : d ? d : &NONE;
    }
    }
#undef ARG
    jfail(c, JE_RUNTIME, line, "not callable");
}

static int test_value(interp *in, node *n, value *v, value **args, size_t nargs)
{
    const char *t = n->s;
    size_t tl = n->sn;
#define IS(name) (tl == strlen(name) && !memcmp(t, name, tl))
    if (IS("defined")) return v->t != V_UNDEF;
    if (IS("undefined")) return v->t == V_UNDEF;
    if (IS("none")) return v->t == V_NONE;
    if (IS("string")) return v->t == V_STR;
    if (IS("number")) return v->t == V_INT || v->t == V_FLOAT;
    if (IS("integer")) return v->t == V_INT;
    if (IS("float")) return v->t == V_FLOAT;
    if (IS("boolean")) return v->t == V_BOOL;
    if (IS("true")) return v->t == V_BOOL && v->b;
    if (IS("false")) return v->t == V_BOOL && !v->b;
    if (IS("mapping")) return v->t == V_DICT || v->t == V_NS;
    if (IS("sequence") || IS("iterable")) return v->t == V_LIST || v->t == V_STR || v->t == V_DICT;
    if (IS("callable")) return v->t == V_FUNC;
    if (IS("lower") || IS("upper")) {
        if (v->t != V_STR) return 0;
        value *m = case_map(in, v, IS("upper"));
        return !memcmp(m->s.s, v->s.s, v->s.n);
    }
    if (IS("odd") || IS("even")) {
        if (v->t != V_INT) jfail(in->c, JE_RUNTIME, n->line, "odd/even need an integer");
        return (int)(((v->i % 2) + 2) % 2) == (IS("odd") ? 1 : 0);
    }
    if (nargs < 1) jfail(in->c, JE_RUNTIME, n->line, "test '%.*s' needs an argument", (int)tl, t);
    value *a = args[0];
    if (IS("divisibleby")) {
        if (v->t != V_INT || a->t != V_INT || a->i == 0) jfail(in->c, JE_RUNTIME, n->line, "divisibleby needs integers");
        return v->i % a->i == 0;
    }
    if (IS("eq") || IS("equalto")) return values_equal(in->c, v, a);
    if (IS("ne")) return !values_equal(in->c, v, a);
    if (IS("sameas")) return v->t == a->t && (v->t == V_NONE || v->t == V_UNDEF || (v->t == V_BOOL && v->b == a->b) || v == a);
    if (IS("gt")) return values_cmp(in, v, a, n->line) > 0;
    if (IS("lt")) return values_cmp(in, v, a, n->line) < 0;
    if (IS("ge")) return values_cmp(in, v, a, n->line) >= 0;
    if (IS("le")) return values_cmp(in, v, a, n->line) <= 0;
    if (IS("in")) {
        if (a->t == V_STR && v->t == V_STR) return memmem_s(in->c, a->s.s, a->s.n, v->s.s, v->s.n) != NULL;
        if (a->t == V_LIST) {
            for (size_t i = 0; i < a->l.n; i++)
                if (values_equal(in->c, a->l.v[i], v)) return 1;
            return 0;
        }
        if ((a->t == V_DICT || a->t == V_NS) && v->t == V_STR) return dict_get(a, v->s.s, v->s.n) != NULL;
        return 0;
    }
#undef IS
    jfail(in->c, JE_UNSUPPORTED, n->line, "test '%.*s' is not supported", (int)tl, t);
}

/* Items of an iterable as Python iterates them. */
static value *iter_list(interp *in, value *v, int line)
{
    if (v->t == V_LIST) return v;
    value *r = v_new(in->c, V_LIST);
    if (v->t == V_UNDEF) return r;
    if (v->t == V_DICT || v->t == V_NS) {
        for (size_t i = 0; i < v->d.n; i++) list_push(in->c, r, v_str(in->c, v->d.v[i].k, v->d.v[i].kn));
        return r;
    }
    if (v->t == V_STR) {
        size_t n;
        size_t *o = cp_offsets(in->c, v->s.s, v->s.n, &n);
        for (size_t i = 0; i < n; i++) list_push(in->c, r, v_str(in->c, v->s.s + o[i], o[i + 1] - o[i]));
        return r;
    }
    jfail(in->c, JE_RUNTIME, line, "'%s' object is not iterable", type_name(v));
}

static value *apply_filter(interp *in, scope *sc, node *n, value *v, value **args, size_t nargs, value **kwv);

static value *html_escape(interp *in, value *s)
{
    sbuf b = {in->c, NULL, 0, 0, 0};
    for (size_t i = 0; i < s->s.n; i++) {
        char ch = s->s.s[i];
        if (ch == '&') sb_puts(&b, "&amp;");
        else if (ch == '<') sb_puts(&b, "&lt;");
        else if (ch == '>') sb_puts(&b, "&gt;");
        else if (ch == '"') sb_puts(&b, "&#34;");
        else if (ch == '\'') sb_puts(&b, "&#39;");
        else sb_add(&b, &ch, 1);
    }
    return v_str(in->c, b.p ? b.p : "", b.n);
}

static value *apply_filter(interp *in, scope *sc, node *n, value *v, value **args, size_t nargs, value **kwv)
{
    jctx *c = in->c;
    int line = n->line;
    const char *f = n->s;
    size_t fl = n->sn;
#define IS(name) (fl == strlen(name) && !memcmp(f, name, fl))
#define ARG(i, kw) arg_or(n, args, nargs, (i), (kw), kwv)
    if (IS("length") || IS("count")) {
        switch (v->t) {
        case V_STR: return v_int(c, (int64_t)cp_len(in->c, v->s.s, v->s.n));
        case V_LIST: return v_int(c, (int64_t)v->l.n);
        case V_DICT:
        case V_NS: return v_int(c, (int64_t)v->d.n);
        case V_UNDEF: return v_int(c, 0);
        default: jfail(c, JE_RUNTIME, line, "object of type '%s' has no len()", type_name(v));
        }
    }
    if (IS("safe")) return v;
    if (IS("string")) return to_str(c, v);
    if (IS("trim")) return py_strip(in, to_str(c, v), ARG(0, "chars"), 1, 1);
    if (IS("lower")) return case_map(in, to_str(c, v), 0);
    if (IS("upper")) return case_map(in, to_str(c, v), 1);
    if (IS("title")) return case_map(in, to_str(c, v), 2);
    if (IS("capitalize")) return case_map(in, to_str(c, v), 3);
    if (IS("escape") || IS("e")) return html_escape(in, to_str(c, v));
    if (IS("tojson")) {
        value *ind = ARG(0, "indent");
        sbuf b = {c, NULL, 0, 0, 0};
        json_into(c, &b, v, ind && ind->t == V_INT ? (int)ind->i : -1, 0, line);
        return v_str(c, b.p ? b.p : "", b.n);
    }
    if (IS("default") || IS("d")) {
        value *d = ARG(0, "default_value"), *bo = ARG(1, "boolean");
        int use = v->t == V_UNDEF || (bo && truthy(bo) && !truthy(v));
        return use ? (d ? d : v_str(c, "", 0)) : v;
    }
    if (IS("int")) {
        if (v->t == V_INT) return v;
        if (v->t == V_FLOAT) return v_int(c, (int64_t)v->f);
        if (v->t == V_BOOL) return v_int(c, v->b);
        if (v->t == V_STR) {
            char *end;
            const char *s = jstrndup(c, v->s.s, v->s.n);
            long long x = strtoll(s, &end, 10);
            if (end != s && !*end) return v_int(c, x);
            double d = strtod(s, &end);
            if (end != s && !*end) return v_int(c, (int64_t)d);
        }
        value *d = ARG(0, "default");
        return d ? d : v_int(c, 0);
    }
    if (IS("float")) {
        if (is_num(v)) return v_float(c, num_f(v));
        if (v->t == V_STR) {
            char *end;
            const char *s = jstrndup(c, v->s.s, v->s.n);
            double d = strtod(s, &end);
            if (end != s && !*end) return v_float(c, d);
        }
        value *d = ARG(0, "default");
        return d ? d : v_float(c, 0);
    }
    if (IS("abs")) {
        if (v->t == V_INT) return v_int(c, v->i < 0 ? -v->i : v->i);
        if (v->t == V_FLOAT) return v_float(c, fabs(v->f));
        jfail(c, JE_RUNTIME, line, "abs of a %s", type_name(v));
    }
    if (IS("round")) {
        value *pr = ARG(0, "precision");
        int p = pr && pr->t == V_INT ? (int)pr->i : 0;
        double m = pow(10, p), x = num_f(v) * m;
        double r = floor(x + 0.5);
        return v_float(c, r / m);
    }
    if (IS("first") || IS("last")) {
        value *l = iter_list(in, v, line);
        if (!l->l.n) return &UNDEF;
        return IS("first") ? l->l.v[0] : l->l.v[l->l.n - 1];
    }
    if (IS("list")) {
        value *l = iter_list(in, v, line), *r = v_new(c, V_LIST);
        for (size_t i = 0; i < l->l.n; i++) list_push(c, r, l->l.v[i]);
        return r;
    }
    if (IS("reverse")) {
        if (v->t == V_STR) {
            value *one = v_int(c, -1);
            return do_slice(in, v, NULL, NULL, one, line);
        }
        value *l = iter_list(in, v, line), *r = v_new(c, V_LIST);
        for (size_t i = l->l.n; i-- > 0;) list_push(c, r, l->l.v[i]);
        return r;
    }
    if (IS("join")) {
        value *sep = ARG(0, "d"), *attr = ARG(1, "attribute");
        value *l = iter_list(in, v, line);
        sbuf b = {c, NULL, 0, 0, 0};
        for (size_t i = 0; i < l->l.n; i++) {
            if (i && sep) str_into(&b, sep);
            value *x = attr ? get_item(in, l->l.v[i], attr, line) : l->l.v[i];
            str_into(&b, x);
        }
        return v_str(c, b.p ? b.p : "", b.n);
    }
    if (IS("replace")) {
        value *cnt = ARG(2, "count"), *o = ARG(0, "old"), *nw = ARG(1, "new");
        if (!o || !nw) jfail(c, JE_RUNTIME, line, "replace needs two arguments");
        return py_replace(in, to_str(c, v), o, nw, cnt && cnt->t == V_INT ? cnt->i : -1, line);
    }
    if (IS("items")) {
        if (v->t == V_UNDEF) return v_new(c, V_LIST);
        if (v->t != V_DICT && v->t != V_NS) jfail(c, JE_RUNTIME, line, "items needs a mapping");
        value fn = {.t = V_FUNC, .fn = {FN_D_ITEMS, v}};
        return call_fn(in, &fn, n, NULL, 0, NULL);
    }
    if (IS("selectattr") || IS("rejectattr")) {
        value *l = iter_list(in, v, line), *r = v_new(c, V_LIST);
        if (nargs < 1 || args[0]->t != V_STR) jfail(c, JE_RUNTIME, line, "selectattr needs an attribute name");
        node tn = {.k = E_TEST, .line = line};
        if (nargs >= 2) {
            if (args[1]->t != V_STR || !in_list(TESTS, PD_ARRAY_LEN(TESTS), args[1]->s.s, args[1]->s.n))
                jfail(c, JE_UNSUPPORTED, line, "selectattr test is not supported");
            tn.s = args[1]->s.s;
            tn.sn = args[1]->s.n;
        }
        int select = IS("selectattr");
        for (size_t i = 0; i < l->l.n; i++) {
            value *a = get_item(in, l->l.v[i], args[0], line);
            int ok = nargs >= 2 ? test_value(in, &tn, a, args + 2, nargs - 2) : truthy(a);
            if (ok == select) list_push(c, r, l->l.v[i]);
        }
        return r;
    }
    if (IS("map")) {
        value *l = iter_list(in, v, line), *r = v_new(c, V_LIST), *attr = ARG(99, "attribute");
        if (attr) {
            value *def = ARG(99, "default");
            for (size_t i = 0; i < l->l.n; i++) {
                value *x = get_item(in, l->l.v[i], attr, line);
                list_push(c, r, x->t == V_UNDEF && def ? def : x);
            }
            return r;
        }
        if (nargs < 1 || args[0]->t != V_STR || !in_list(FILTERS, PD_ARRAY_LEN(FILTERS), args[0]->s.s, args[0]->s.n))
            jfail(c, JE_UNSUPPORTED, line, "map needs attribute= or a supported filter name");
        node fn = {.k = E_FILTER, .line = line, .s = args[0]->s.s, .sn = args[0]->s.n};
        for (size_t i = 0; i < l->l.n; i++)
            list_push(c, r, apply_filter(in, sc, &fn, l->l.v[i], args + 1, nargs - 1, NULL));
        return r;
    }
    if (IS("indent")) {
        value *w = ARG(0, "width"), *first = ARG(1, "first"), *blank = ARG(2, "blank");
        value *s = to_str(c, v);
        sbuf pad = {c, NULL, 0, 0, 0};
        if (w && w->t == V_STR) sb_add(&pad, w->s.s, w->s.n);
        else
            for (int64_t i = 0; i < (w && w->t == V_INT ? w->i : 4); i++) sb_puts(&pad, " ");
        sbuf b = {c, NULL, 0, 0, 0};
        const char *p = s->s.s, *e = p + s->s.n;
        int line_no = 0;
        while (p <= e) {
            const char *nl = memchr(p, '\n', (size_t)(e - p));
            const char *le = nl ? nl : e;
            int blank_line = le == p;
            if ((line_no > 0 || (first && truthy(first))) && (!blank_line || (blank && truthy(blank))) && pad.n)
                sb_add(&b, pad.p, pad.n);
            sb_add(&b, p, (size_t)(le - p));
            if (!nl) break;
            sb_puts(&b, "\n");
            p = nl + 1;
            line_no++;
        }
        return v_str(c, b.p ? b.p : "", b.n);
    }
    if (IS("sort") || IS("unique") || IS("max") || IS("min") || IS("sum") || IS("dictsort") || IS("wordcount") ||
        IS("center") || IS("batch")) {
        value *l = iter_list(in, v, line);
        if (IS("sum")) {
            int64_t si = 0;
            double sf = 0;
            int fl_ = 0;
            for (size_t i = 0; i < l->l.n; i++) {
                if (!is_num(l->l.v[i])) jfail(c, JE_RUNTIME, line, "sum of non-numbers");
                if (l->l.v[i]->t == V_FLOAT) fl_ = 1;
                si += num_i(l->l.v[i]);
                sf += num_f(l->l.v[i]);
            }
            return fl_ ? v_float(c, sf) : v_int(c, si);
        }
        if (IS("max") || IS("min")) {
            if (!l->l.n) return &UNDEF;
            value *best = l->l.v[0];
            for (size_t i = 1; i < l->l.n; i++) {
                int r = values_cmp(in, l->l.v[i], best, line);
                if (IS("max") ? r > 0 : r < 0) best = l->l.v[i];
            }
            return best;
        }
        if (IS("sort")) {
            value *r = v_new(c, V_LIST);
            for (size_t i = 0; i < l->l.n; i++) {
                /* insertion sort: stable, as Python's sort is */
                list_push(c, r, l->l.v[i]);
                for (size_t j = r->l.n - 1; j > 0 && values_cmp(in, r->l.v[j - 1], r->l.v[j], line) > 0; j--) {
                    value *t = r->l.v[j];
                    r->l.v[j] = r->l.v[j - 1];
                    r->l.v[j - 1] = t;
                }
            }
            return r;
        }
        if (IS("unique")) {
            value *r = v_new(c, V_LIST);
            for (size_t i = 0; i < l->l.n; i++) {
                int seen = 0;
                for (size_t j = 0; j < r->l.n && !seen; j++) seen = values_equal(in->c, r->l.v[j], l->l.v[i]);
                if (!seen) list_push(c, r, l->l.v[i]);
            }
            return r;
        }
    }
#undef IS
#undef ARG
    jfail(c, JE_UNSUPPORTED, line, "filter '%.*s' is not supported here", (int)fl, f);
}

static value *arith(interp *in, const char *op, value *a, value *b, int line)
{
    jctx *c = in->c;
    if (!strcmp(op, "~")) {
        sbuf s = {c, NULL, 0, 0, 0};
        str_into(&s, a);
        str_into(&s, b);
        return v_str(c, s.p ? s.p : "", s.n);
    }
    if (!strcmp(op, "+")) {
        if (a->t == V_STR && b->t == V_STR) {
            char *p = jalloc(c, a->s.n + b->s.n + 1);
            memcpy(p, a->s.s, a->s.n);
            memcpy(p + a->s.n, b->s.s, b->s.n);
            p[a->s.n + b->s.n] = 0;
            return v_str(c, p, a->s.n + b->s.n);
        }
        if (a->t == V_LIST && b->t == V_LIST) {
            value *r = v_new(c, V_LIST);
            for (size_t i = 0; i < a->l.n; i++) list_push(c, r, a->l.v[i]);
            for (size_t i = 0; i < b->l.n; i++) list_push(c, r, b->l.v[i]);
            return r;
        }
    }
    if (!strcmp(op, "*") && ((a->t == V_STR && b->t == V_INT) || (a->t == V_INT && b->t == V_STR))) {
        value *s = a->t == V_STR ? a : b;
        int64_t k = a->t == V_INT ? a->i : b->i;
        if (k <= 0 || s->s.n == 0) return v_str(c, "", 0); /* as Python: no loop over k copies of nothing */
        if (k > (int64_t)((1 << 26) / s->s.n)) jfail(c, JE_RUNTIME, line, "string repetition too large");
        /* One allocation, filled by doubling: a 1-byte string times 60 million is 26 copies, not 60 million. */
        size_t total = (size_t)k * s->s.n, done = s->s.n;
        char *p = jalloc(c, total + 1);
        memcpy(p, s->s.s, s->s.n);
        while (done < total) {
            size_t m = done < total - done ? done : total - done;
            memcpy(p + done, p, m);
            done += m;
        }
        p[total] = 0;
        return v_str(c, p, total);
    }
    if (!is_num(a) || !is_num(b))
        jfail(c, JE_RUNTIME, line, "unsupported operand types for %s: '%s' and '%s'", op, type_name(a), type_name(b));
    int fl = a->t == V_FLOAT || b->t == V_FLOAT;
    if (!strcmp(op, "/")) {
        if (num_f(b) == 0) jfail(c, JE_RUNTIME, line, "division by zero");
        return v_float(c, num_f(a) / num_f(b));
    }
    if (!strcmp(op, "**")) {
        if (!fl && num_i(b) >= 0) {
            int64_t r = 1, x = num_i(a);
            for (int64_t i = 0; i < num_i(b) && i < 64; i++)
                if (__builtin_mul_overflow(r, x, &r)) jfail(c, JE_RUNTIME, line, "integer overflow in **");
            return v_int(c, r);
        }
        return v_float(c, pow(num_f(a), num_f(b)));
    }
    if (fl) {
        double x = num_f(a), y = num_f(b);
        if (!strcmp(op, "+")) return v_float(c, x + y);
        if (!strcmp(op, "-")) return v_float(c, x - y);
        if (!strcmp(op, "*")) return v_float(c, x * y);
        if (y == 0) jfail(c, JE_RUNTIME, line, "division by zero");
        if (!strcmp(op, "//")) return v_float(c, floor(x / y));
        double m = fmod(x, y);
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        return v_float(c, m);
    }
    int64_t x = num_i(a), y = num_i(b), r;
    /* Python's integers do not overflow; 64-bit ones do: refuse rather than wrap (found by fuzz_chat_template) */
    if (!strcmp(op, "+")) {
        if (__builtin_add_overflow(x, y, &r)) jfail(c, JE_RUNTIME, line, "integer overflow in +");
        return v_int(c, r);
    }
    if (!strcmp(op, "-")) {
        if (__builtin_sub_overflow(x, y, &r)) jfail(c, JE_RUNTIME, line, "integer overflow in -");
        return v_int(c, r);
    }
    if (!strcmp(op, "*")) {
        if (__builtin_mul_overflow(x, y, &r)) jfail(c, JE_RUNTIME, line, "integer overflow in *");
        return v_int(c, r);
    }
    if (y == 0) jfail(c, JE_RUNTIME, line, "division by zero");
    if (y == -1 && x == INT64_MIN) jfail(c, JE_RUNTIME, line, "integer overflow in division");
    int64_t q = x / y;
    r = x % y;
    if (r != 0 && ((r < 0) != (y < 0))) q--, r += y;
    return v_int(c, !strcmp(op, "//") ? q : r);
}

static value *eval_node(interp *in, scope *sc, node *n);

static value *eval(interp *in, scope *sc, node *n)
{
    if (++in->depth > JT_MAX_DEPTH) jfail(in->c, JE_RUNTIME, n->line, "expression nested deeper than %d", JT_MAX_DEPTH);
    value *v = eval_node(in, sc, n);
    in->depth--;
    return v;
}

static value *eval_node(interp *in, scope *sc, node *n)
{
    jctx *c = in->c;
    jstep(c, n->line);
    switch (n->k) {
    case E_LIT: return n->lit;
    case E_NAME: {
        value *v = lookup(sc, n->s, n->sn);
        if (v) return v;
        for (size_t i = 0; i < PD_ARRAY_LEN(GLOBALS); i++)
            if (strlen(GLOBALS[i].name) == n->sn && !memcmp(GLOBALS[i].name, n->s, n->sn)) {
                value *f = v_new(c, V_FUNC);
                f->fn.fn = GLOBALS[i].fn;
                return f;
            }
        return &UNDEF;
    }
    case E_ATTR: return get_attr(in, eval(in, sc, n->a), n->s, n->sn, n->line);
    case E_ITEM: return get_item(in, eval(in, sc, n->a), eval(in, sc, n->b), n->line);
    case E_SLICE:
        return do_slice(in, eval(in, sc, n->a), n->b ? eval(in, sc, n->b) : NULL, n->c ? eval(in, sc, n->c) : NULL,
                        n->d ? eval(in, sc, n->d) : NULL, n->line);
    case E_CALL:
    case E_FILTER:
    case E_TEST: {
        value *target = eval(in, sc, n->a);
        size_t na = n->list.n;
        value **args = jalloc(c, (na + 1) * sizeof *args), **kwv = jalloc(c, (n->list2.n + 1) * sizeof *kwv);
        for (size_t i = 0; i < na; i++) args[i] = eval(in, sc, n->list.v[i]);
        for (size_t i = 0; i < n->list2.n; i++) kwv[i] = eval(in, sc, n->list2.v[i]);
        if (n->k == E_FILTER) return apply_filter(in, sc, n, target, args, na, kwv);
        if (n->k == E_TEST) {
            int r = test_value(in, n, target, args, na);
            return v_bool(n->negate ? !r : r);
        }
        if (target->t != V_FUNC) {
            if (n->a->k == E_ATTR)
                jfail(c, JE_UNSUPPORTED, n->line, "method '%.*s' is not supported on a %s", (int)n->a->sn, n->a->s,
                      type_name(eval(in, sc, n->a->a)));
            jfail(c, n->a->k == E_NAME ? JE_UNSUPPORTED : JE_RUNTIME, n->line, "'%.*s' is not callable",
                  (int)(n->a->k == E_NAME ? n->a->sn : 5), n->a->k == E_NAME ? n->a->s : "value");
        }
        return call_fn(in, target, n, args, na, kwv);
    }
    case E_BIN: {
        value *a = eval(in, sc, n->a), *b = eval(in, sc, n->b);
        const char *op = n->s;
        if (!strcmp(op, "==")) return v_bool(values_equal(in->c, a, b));
        if (!strcmp(op, "!=")) return v_bool(!values_equal(in->c, a, b));
        if (!strcmp(op, "<")) return v_bool(values_cmp(in, a, b, n->line) < 0);
        if (!strcmp(op, ">")) return v_bool(values_cmp(in, a, b, n->line) > 0);
        if (!strcmp(op, "<=")) return v_bool(values_cmp(in, a, b, n->line) <= 0);
        if (!strcmp(op, ">=")) return v_bool(values_cmp(in, a, b, n->line) >= 0);
        if (!strcmp(op, "in") || !strcmp(op, "not in")) {
            int r;
            if (b->t == V_STR) {
                if (a->t != V_STR) jfail(c, JE_RUNTIME, n->line, "'in <string>' requires a string on the left");
                r = memmem_s(in->c, b->s.s, b->s.n, a->s.s, a->s.n) != NULL;
            } else if (b->t == V_LIST) {
                r = 0;
                for (size_t i = 0; i < b->l.n && !r; i++) r = values_equal(in->c, b->l.v[i], a);
            } else if (b->t == V_DICT || b->t == V_NS) r = a->t == V_STR && dict_get(b, a->s.s, a->s.n) != NULL;
            else if (b->t == V_UNDEF) r = 0;
            else jfail(c, JE_RUNTIME, n->line, "argument of type '%s' is not iterable", type_name(b));
            return v_bool(op[0] == 'n' ? !r : r);
        }
        return arith(in, op, a, b, n->line);
    }
    case E_NEG:
    case E_POS: {
        value *a = eval(in, sc, n->a);
        if (!is_num(a)) jfail(c, JE_RUNTIME, n->line, "bad operand type for unary %s: '%s'", n->k == E_NEG ? "-" : "+",
                              type_name(a));
        if (n->k == E_POS) return a;
        if (a->t != V_FLOAT && num_i(a) == INT64_MIN) jfail(c, JE_RUNTIME, n->line, "integer overflow in unary -");
        return a->t == V_FLOAT ? v_float(c, -a->f) : v_int(c, -num_i(a));
    }
    case E_NOT: return v_bool(!truthy(eval(in, sc, n->a)));
    case E_AND: {
        value *a = eval(in, sc, n->a);
        return truthy(a) ? eval(in, sc, n->b) : a;
    }
    case E_OR: {
        value *a = eval(in, sc, n->a);
        return truthy(a) ? a : eval(in, sc, n->b);
    }
    case E_COND: return truthy(eval(in, sc, n->a)) ? eval(in, sc, n->b) : n->c ? eval(in, sc, n->c) : &UNDEF;
    case E_LIST: {
        value *l = v_new(c, V_LIST);
        l->l.tuple = n->negate;
        for (size_t i = 0; i < n->list.n; i++) list_push(c, l, eval(in, sc, n->list.v[i]));
        return l;
    }
    case E_DICT: {
        value *d = v_new(c, V_DICT);
        for (size_t i = 0; i < n->list.n; i++) {
            value *k = eval(in, sc, n->list.v[i]);
            if (k->t != V_STR) jfail(c, JE_UNSUPPORTED, n->line, "dict literal keys must be strings");
            dict_set(c, d, k->s.s, k->s.n, eval(in, sc, n->list2.v[i]));
        }
        return d;
    }
    default: jfail(c, JE_RUNTIME, n->line, "internal: not an expression");
    }
}

static void assign_targets(interp *in, scope *sc, node *n, value *item)
{
    if (n->n_names == 1) {
        dict_set(in->c, &sc->vars, n->names[0], n->name_lens[0], item);
        return;
    }
    value *l = iter_list(in, item, n->line);
    if (l->l.n != n->n_names) jfail(in->c, JE_RUNTIME, n->line, "cannot unpack %zu values into %zu names", l->l.n, n->n_names);
    for (size_t i = 0; i < n->n_names; i++) dict_set(in->c, &sc->vars, n->names[i], n->name_lens[i], l->l.v[i]);
}

static flow exec_stmt(interp *in, scope *sc, node *n);

static flow exec_node(interp *in, scope *sc, node *n)
{
    if (++in->depth > JT_MAX_DEPTH) jfail(in->c, JE_RUNTIME, n->line, "blocks nested deeper than %d", JT_MAX_DEPTH);
    flow f = exec_stmt(in, sc, n);
    in->depth--;
    return f;
}

static flow exec_stmt(interp *in, scope *sc, node *n)
{
    jctx *c = in->c;
    jstep(c, n->line);
    switch (n->k) {
    case N_TEXT: sb_add(&in->out, n->s, n->sn); return FL_NORMAL;
    case N_OUTPUT: str_into(&in->out, eval(in, sc, n->a)); return FL_NORMAL;
    case N_IF: /* an elif is parsed as an if alone in the else body */
        return exec_list(in, sc, truthy(eval(in, sc, n->a)) ? &n->list : &n->list2);
    case N_FOR: {
        value *items = iter_list(in, eval(in, sc, n->a), n->line);
        /* The loop body runs in its own scope (sets inside do not leak out, as in jinja2). */
        scope inner = {sc, {.t = V_DICT}};
        value *sel = items;
        if (n->b) {
            sel = v_new(c, V_LIST);
            for (size_t i = 0; i < items->l.n; i++) {
                jstep(c, n->line);
                inner.vars.d.n = 0;
                assign_targets(in, &inner, n, items->l.v[i]);
                if (truthy(eval(in, &inner, n->b))) list_push(c, sel, items->l.v[i]);
            }
        }
        if (!sel->l.n) return exec_list(in, sc, &n->list2);
        size_t len = sel->l.n;
        for (size_t i = 0; i < len; i++) {
            jstep(c, n->line);
            inner.vars.d.n = 0;
            value *loop = v_new(c, V_DICT);
            dict_set(c, loop, "index", 5, v_int(c, (int64_t)i + 1));
            dict_set(c, loop, "index0", 6, v_int(c, (int64_t)i));
            dict_set(c, loop, "revindex", 8, v_int(c, (int64_t)(len - i)));
            dict_set(c, loop, "revindex0", 9, v_int(c, (int64_t)(len - i - 1)));
            dict_set(c, loop, "first", 5, v_bool(i == 0));
            dict_set(c, loop, "last", 4, v_bool(i + 1 == len));
            dict_set(c, loop, "length", 6, v_int(c, (int64_t)len));
            dict_set(c, loop, "depth", 5, v_int(c, 1));
            dict_set(c, loop, "depth0", 6, v_int(c, 0));
            dict_set(c, loop, "previtem", 8, i ? sel->l.v[i - 1] : &UNDEF);
            dict_set(c, loop, "nextitem", 8, i + 1 < len ? sel->l.v[i + 1] : &UNDEF);
            dict_set(c, &inner.vars, "loop", 4, loop);
            assign_targets(in, &inner, n, sel->l.v[i]);
            flow f = exec_list(in, &inner, &n->list);
            if (f == FL_BREAK) break;
        }
        return FL_NORMAL;
    }
    case N_SET: dict_set(c, &sc->vars, n->s, n->sn, eval(in, sc, n->a)); return FL_NORMAL;
    case N_SET_ATTR: {
        value *ns = lookup(sc, n->s, n->sn);
        if (!ns || ns->t != V_NS)
            jfail(c, JE_RUNTIME, n->line, "cannot assign attribute on '%.*s': not a namespace", (int)n->sn, n->s);
        dict_set(c, ns, n->names[0], n->name_lens[0], eval(in, sc, n->a));
        return FL_NORMAL;
    }
    case N_SET_BLOCK: {
        sbuf saved = in->out;
        in->out = (sbuf){c, NULL, 0, 0, 0};
        exec_list(in, sc, &n->list);
        value *s = v_str(c, in->out.p ? in->out.p : "", in->out.n);
        in->out = saved;
        dict_set(c, &sc->vars, n->s, n->sn, s);
        return FL_NORMAL;
    }
    case N_BREAK: return FL_BREAK;
    case N_CONTINUE: return FL_CONTINUE;
    case N_BLOCK: return exec_list(in, sc, &n->list);
    default: jfail(c, JE_RUNTIME, n->line, "internal: not a statement");
    }
}

static flow exec_list(interp *in, scope *sc, nodelist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        flow f = exec_node(in, sc, l->v[i]);
        if (f != FL_NORMAL) return f;
    }
    return FL_NORMAL;
}

/* ---- public API ---- */

static pd_status render_impl(txt_chat_template t, const cJSON *messages, int add_generation_prompt,
                             const cJSON *extra, char **out, size_t *len, jctx *jc)
{
    arena ar = {NULL};
    interp in;
    jc->ar = &ar;
    jc->kind = JE_NONE;
    jc->bytes = jc->steps = 0;
    jc->max_bytes = jc->max_steps = SIZE_MAX; /* the input's own values are not the template's work */
    in.c = jc;
    in.out = (sbuf){jc, NULL, 0, 0, 1};
    in.depth = 0;
    if (setjmp(jc->jb)) {
        free(in.out.p);
        arena_free(&ar);
        return PD_ERR_INVALID;
    }
    scope top = {NULL, {.t = V_DICT}};
    dict_set(jc, &top.vars, "messages", 8, from_json(jc, messages));
    dict_set(jc, &top.vars, "add_generation_prompt", 21, v_bool(add_generation_prompt));
    dict_set(jc, &top.vars, "bos_token", 9, v_str(jc, t->bos, strlen(t->bos)));
    dict_set(jc, &top.vars, "eos_token", 9, v_str(jc, t->eos, strlen(t->eos)));
    dict_set(jc, &top.vars, "tools", 5, &NONE);     /* transformers passes tools=None, documents=None */
    dict_set(jc, &top.vars, "documents", 9, &NONE);
    const cJSON *x;
    if (cJSON_IsObject(extra))
        cJSON_ArrayForEach(x, extra) dict_set(jc, &top.vars, x->string, strlen(x->string), from_json(jc, x));
    jc->max_bytes = jc->bytes + jt_max_bytes;
    jc->max_steps = jt_max_steps;
    exec_list(&in, &top, &t->body);
    if (!in.out.p) sb_add(&in.out, "", 0);
    *out = in.out.p;
    *len = in.out.n;
    arena_free(&ar);
    return PD_OK;
}

pd_status txt_chat_template_render(txt_chat_template t, const cJSON *messages, int add_generation_prompt,
                                   const cJSON *extra_vars, char **out, size_t *len, char *err, size_t errlen)
{
    jctx jc;
    if (!cJSON_IsArray(messages)) {
        if (err && errlen) snprintf(err, errlen, "messages must be a JSON array");
        return PD_ERR_INVALID;
    }
    pd_status st = render_impl(t, messages, add_generation_prompt, extra_vars, out, len, &jc);
    if (st != PD_OK) {
        if (jc.kind == JE_NOMEM) st = PD_ERR_NOMEM;
        if (err && errlen) snprintf(err, errlen, "%s", jc.msg);
        if (jc.kind != JE_RAISE) pd_error("chat template: %s", jc.msg);
    }
    return st;
}

void txt_chat_template_destroy(txt_chat_template t)
{
    if (!t) return;
    arena_free(&t->ar);
    free(t->bos);
    free(t->eos);
    free(t);
}

pd_status txt_chat_template_create(const char *source, const char *bos_token, const char *eos_token,
                                   txt_chat_template *out, char *err, size_t errlen)
{
    txt_chat_template t = calloc(1, sizeof *t);
    if (!t || !(t->bos = strdup(bos_token ? bos_token : "")) || !(t->eos = strdup(eos_token ? eos_token : ""))) {
        txt_chat_template_destroy(t);
        if (err && errlen) snprintf(err, errlen, "out of memory");
        pd_error("chat template: out of memory");
        return PD_ERR_NOMEM;
    }
    jctx jc;
    jc.ar = &t->ar;
    jc.kind = JE_NONE;
    jc.bytes = jc.steps = 0;
    jc.max_bytes = jc.max_steps = SIZE_MAX;
    if (setjmp(jc.jb)) {
        pd_status st = jc.kind == JE_NOMEM ? PD_ERR_NOMEM : jc.kind == JE_SYNTAX ? PD_ERR_FORMAT : PD_ERR_UNSUPPORTED;
        if (err && errlen) snprintf(err, errlen, "%s", jc.msg);
        pd_error("chat template: %s", jc.msg);
        txt_chat_template_destroy(t);
        return st;
    }
    tokvec tv = {&jc, NULL, 0, 0};
    /* The AST points into the source text: keep a copy for the template's lifetime. */
    lex(&tv, jstrndup(&jc, source, strlen(source)));
    parser p = {&jc, tv.v, 0, 0};
    const char *stopped = NULL;
    parse_body(&p, &t->body, NULL, 0, &stopped);

    /* Test render over a typical conversation: what the interpreter cannot do shows up now, not on a request.
     * raise_exception is the template rejecting the sample, which is not a fault of ours. */
    static const char *const SAMPLES[] = {
        "[{\"role\":\"system\",\"content\":\"You are helpful.\"},{\"role\":\"user\",\"content\":\"Hi\"},"
        "{\"role\":\"assistant\",\"content\":\"Hello!\"},{\"role\":\"user\",\"content\":\"How are you?\"}]",
        "[{\"role\":\"user\",\"content\":\"Hi\"}]"};
    for (size_t i = 0; i < PD_ARRAY_LEN(SAMPLES); i++) {
        cJSON *msgs = cJSON_Parse(SAMPLES[i]);
        char *o = NULL;
        size_t ol;
        jctx rc;
        pd_status st = msgs ? render_impl(t, msgs, 1, NULL, &o, &ol, &rc) : PD_ERR_NOMEM;
        cJSON_Delete(msgs);
        free(o);
        /* Only what the interpreter lacks fails the load: a runtime error over the sample (a field the sample
         * does not have, raise_exception) is about the data, and jinja2 would fail the same way. */
        if (st != PD_OK && (!msgs || rc.kind == JE_UNSUPPORTED || rc.kind == JE_NOMEM)) {
            st = !msgs || rc.kind == JE_NOMEM ? PD_ERR_NOMEM : PD_ERR_UNSUPPORTED;
            if (err && errlen) snprintf(err, errlen, "cannot render a sample conversation: %s", msgs ? rc.msg : "out of memory");
            pd_error("chat template: cannot render a sample conversation: %s", msgs ? rc.msg : "out of memory");
            txt_chat_template_destroy(t);
            return st;
        }
    }
    *out = t;
    return PD_OK;
}

static const char *cfg_token(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        return cJSON_IsString(c) ? c->valuestring : NULL;
    }
    return NULL;
}

pd_status txt_chat_template_load(const char *dir, txt_chat_template *out, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *txt = NULL, *jinja = NULL;
    size_t n;
    cJSON *cfg = NULL;
    pd_status st = pd_file_read(path, &txt, &n);
    if (st == PD_OK) {
        cfg = cJSON_Parse(txt);
        free(txt);
        if (!cJSON_IsObject(cfg)) {
            cJSON_Delete(cfg);
            if (err && errlen) snprintf(err, errlen, "%s is not a JSON object", path);
            pd_error("chat template: %s is not a JSON object", path);
            return PD_ERR_FORMAT;
        }
    } else if (st != PD_ERR_NOT_FOUND) {
        if (err && errlen) snprintf(err, errlen, "cannot read %s: %s", path, pd_status_str(st));
        pd_error("chat template: cannot read %s: %s", path, pd_status_str(st));
        return st;
    }
    const char *src = NULL;
    snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
    if (pd_file_read(path, &jinja, &n) == PD_OK) src = jinja;
    else {
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template"), *x;
        if (cJSON_IsString(ct)) src = ct->valuestring;
        else if (cJSON_IsArray(ct))
            cJSON_ArrayForEach(x, ct)
            {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(x, "name"), *tp = cJSON_GetObjectItemCaseSensitive(x, "template");
                if (cJSON_IsString(nm) && !strcmp(nm->valuestring, "default") && cJSON_IsString(tp)) src = tp->valuestring;
            }
    }
    if (!src) {
        if (err && errlen) snprintf(err, errlen, "%s has no chat_template", dir);
        pd_error("chat template: %s has no chat_template (tokenizer_config.json or chat_template.jinja)", dir);
        cJSON_Delete(cfg);
        return PD_ERR_NOT_FOUND;
    }
    st = txt_chat_template_create(src, cfg_token(cfg, "bos_token"), cfg_token(cfg, "eos_token"), out, err, errlen);
    free(jinja);
    cJSON_Delete(cfg);
    return st;
}
