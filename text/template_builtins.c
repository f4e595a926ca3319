/* Chat templates: the builtins a template can call. Global functions (raise_exception, namespace, range, ...),
 * str and dict methods, tests (is defined, is string, ...) and filters (the flat table apply_filter), each with
 * the Python/jinja2 semantics the output depends on. */
#include "text/template_internal.h"

#include <math.h>
#include <string.h>
#include <time.h>

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

int txt__filter_known(const char *s, size_t n) { return in_list(FILTERS, PD_ARRAY_LEN(FILTERS), s, n); }
int txt__test_known(const char *s, size_t n) { return in_list(TESTS, PD_ARRAY_LEN(TESTS), s, n); }

value *txt__global_get(jctx *c, const char *name, size_t n)
{
    for (size_t i = 0; i < PD_ARRAY_LEN(GLOBALS); i++)
        if (strlen(GLOBALS[i].name) == n && !memcmp(GLOBALS[i].name, name, n)) {
            value *f = txt__v_new(c, V_FUNC);
            f->fn.fn = GLOBALS[i].fn;
            return f;
        }
    return NULL;
}

int txt__callable_name(const node *callee)
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

value *txt__get_attr(interp *in, value *obj, const char *name, size_t n, int line)
{
    if (obj->t == V_UNDEF)
        txt__jfail(in->c, JE_RUNTIME, line, "'%.*s' of an undefined value", (int)n, name);
    if (obj->t == V_DICT || obj->t == V_NS) {
        value *v = txt__dict_get(obj, name, n);
        if (v) return v;
    }
    for (size_t i = 0; i < PD_ARRAY_LEN(METHODS); i++)
        if (METHODS[i].on == obj->t && strlen(METHODS[i].name) == n && !memcmp(METHODS[i].name, name, n)) {
            value *f = txt__v_new(in->c, V_FUNC);
            f->fn.fn = METHODS[i].fn;
            f->fn.self = obj;
            return f;
        }
    return &txt__undef;
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
    if (chars && chars->t != V_NONE && chars->t != V_STR)
        txt__jfail(in->c, JE_RUNTIME, 0, "strip arg must be a string");
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
    return txt__v_str(in->c, p, (size_t)(e - p));
}

const char *txt__memmem_s(jctx *c, const char *h, size_t hn, const char *n, size_t nn)
{
    if (nn == 0) return h;
    const char *f = memmem(h, hn, n, nn);
    txt__jscan(c,
               f ? (size_t)(f - h) + nn : hn); /* what it read: successive searches of a split charge each byte once */
    return f;
}

static value *py_split(interp *in, value *s, value *sep, int64_t maxsplit, int from_right, int line)
{
    value *r = txt__v_new(in->c, V_LIST);
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
                txt__list_push(in->c, r, txt__v_str(in->c, p, (size_t)(q - p)));
                break;
            }
            const char *w = p;
            while (p < e && !py_space_at(p, (size_t)(e - p), &l)) p += l;
            txt__list_push(in->c, r, txt__v_str(in->c, w, (size_t)(p - w)));
            splits++;
        }
        return r;
    }
    if (sep->t != V_STR) txt__jfail(in->c, JE_RUNTIME, line, "split separator must be a string");
    if (sep->s.n == 0) txt__jfail(in->c, JE_RUNTIME, line, "empty separator");
    if (!from_right || maxsplit < 0) {
        int64_t splits = 0;
        for (;;) {
            const char *f = maxsplit >= 0 && splits >= maxsplit
                                ? NULL
                                : txt__memmem_s(in->c, p, (size_t)(e - p), sep->s.s, sep->s.n);
            if (!f) {
                txt__list_push(in->c, r, txt__v_str(in->c, p, (size_t)(e - p)));
                return r;
            }
            txt__list_push(in->c, r, txt__v_str(in->c, p, (size_t)(f - p)));
            p = f + sep->s.n;
            splits++;
        }
    }
    /* rsplit with a limit: collect from the right, then reverse. */
    value *tmp = txt__v_new(in->c, V_LIST);
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
        txt__list_push(in->c, tmp, txt__v_str(in->c, f + sep->s.n, (size_t)(q - f - sep->s.n)));
        q = f;
        splits++;
    }
    txt__list_push(in->c, tmp, txt__v_str(in->c, p, (size_t)(q - p)));
    for (size_t i = tmp->l.n; i-- > 0;) txt__list_push(in->c, r, tmp->l.v[i]);
    return r;
}

static value *py_replace(interp *in, value *s, value *old, value *new_, int64_t count, int line)
{
    if (old->t != V_STR || new_->t != V_STR) txt__jfail(in->c, JE_RUNTIME, line, "replace arguments must be strings");
    sbuf b = {in->c, NULL, 0, 0, 0};
    const char *p = s->s.s, *e = s->s.s + s->s.n;
    int64_t done = 0;
    if (old->s.n == 0) { /* Python inserts between every character */
        size_t n;
        size_t *o = txt__cp_offsets(in->c, p, s->s.n, &n);
        for (size_t i = 0; i <= n; i++) {
            if (count < 0 || done < count) txt__sb_add(&b, new_->s.s, new_->s.n), done++;
            if (i < n) txt__sb_add(&b, p + o[i], o[i + 1] - o[i]);
        }
        return txt__v_str(in->c, b.p ? b.p : "", b.n);
    }
    while (p < e) {
        const char *f =
            count >= 0 && done >= count ? NULL : txt__memmem_s(in->c, p, (size_t)(e - p), old->s.s, old->s.n);
        if (!f) break;
        txt__sb_add(&b, p, (size_t)(f - p));
        txt__sb_add(&b, new_->s.s, new_->s.n);
        p = f + old->s.n;
        done++;
    }
    txt__sb_add(&b, p, (size_t)(e - p));
    return txt__v_str(in->c, b.p, b.n);
}

/* ASCII-only case mapping (documented limitation: non-ASCII letters are left as they are). */
static value *case_map(interp *in, value *s, int mode /* 0 lower 1 upper 2 title 3 capitalize */)
{
    char *o = txt__jalloc(in->c, s->s.n + 1);
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
    return txt__v_str(in->c, o, s->s.n);
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
    if (!v || v->t != V_STR) txt__jfail(in->c, JE_RUNTIME, line, "%s must be a string", what);
    return v;
}

/* Global functions (FN_RAISE .. FN_DICT). */
static value *call_global(interp *in, value *f, node *call, value **args, size_t nargs, value **kwv)
{
    jctx *c = in->c;
    int line = call->line;
#define ARG(i, kw) arg_or(call, args, nargs, (i), (kw), kwv)
    switch (f->fn.fn) {
    case FN_RAISE: {
        sbuf b = {c, NULL, 0, 0, 0};
        if (nargs) txt__str_into(&b, args[0]);
        txt__jfail(c, JE_RAISE, 0, "%s", b.p ? b.p : "raise_exception");
    }
    case FN_NAMESPACE:
    case FN_DICT: {
        value *ns = txt__v_new(c, f->fn.fn == FN_NAMESPACE ? V_NS : V_DICT);
        if (nargs && (args[0]->t == V_DICT || args[0]->t == V_NS))
            for (size_t i = 0; i < args[0]->d.n; i++)
                txt__dict_set(c, ns, args[0]->d.v[i].k, args[0]->d.v[i].kn, args[0]->d.v[i].v);
        for (size_t i = 0; i < call->n_names; i++) txt__dict_set(c, ns, call->names[i], call->name_lens[i], kwv[i]);
        return ns;
    }
    case FN_RANGE: {
        int64_t a = 0, b, s = 1;
        for (size_t i = 0; i < nargs; i++)
            if (args[i]->t != V_INT) txt__jfail(c, JE_RUNTIME, line, "range() arguments must be integers");
        if (nargs == 1) b = args[0]->i;
        else if (nargs >= 2) a = args[0]->i, b = args[1]->i, s = nargs > 2 ? args[2]->i : 1;
        else txt__jfail(c, JE_RUNTIME, line, "range() needs arguments");
        if (s == 0) txt__jfail(c, JE_RUNTIME, line, "range() step cannot be zero");
        value *r = txt__v_new(c, V_LIST);
        for (int64_t i = a; s > 0 ? i < b : i > b; i += s) {
            if (r->l.n > 1000000) txt__jfail(c, JE_RUNTIME, line, "range() too large");
            txt__list_push(c, r, txt__v_int(c, i));
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
        return txt__v_strdup(c, buf, n);
    }
    }
#undef ARG
    txt__jfail(c, JE_RUNTIME, line, "not callable");
}

value *txt__call_fn(interp *in, value *f, node *call, value **args, size_t nargs, value **kwv)
{
    jctx *c = in->c;
    int line = call->line;
    value *self = f->fn.self;
#define ARG(i, kw) arg_or(call, args, nargs, (i), (kw), kwv)
    if (f->fn.fn < FN_S_STRIP) return call_global(in, f, call, args, nargs, kwv);
    switch (f->fn.fn) {
    case FN_S_STRIP: return py_strip(in, self, ARG(0, "chars"), 1, 1);
    case FN_S_LSTRIP: return py_strip(in, self, ARG(0, "chars"), 1, 0);
    case FN_S_RSTRIP: return py_strip(in, self, ARG(0, "chars"), 0, 1);
    case FN_S_STARTSWITH:
    case FN_S_ENDSWITH: {
        value *x = ARG(0, "prefix");
        if (!x) txt__jfail(c, JE_RUNTIME, line, "startswith/endswith need an argument");
        size_t nx = x->t == V_LIST ? x->l.n : 1;
        for (size_t i = 0; i < nx; i++) {
            value *s = need_str(in, x->t == V_LIST ? x->l.v[i] : x, "startswith/endswith argument", line);
            if (s->s.n <= self->s.n &&
                !memcmp(f->fn.fn == FN_S_STARTSWITH ? self->s.s : self->s.s + self->s.n - s->s.n, s->s.s, s->s.n))
                return &txt__true;
        }
        return &txt__false;
    }
    case FN_S_SPLIT:
    case FN_S_RSPLIT: {
        value *ms = ARG(1, "maxsplit");
        return py_split(in, self, ARG(0, "sep"), ms && ms->t == V_INT ? ms->i : -1, f->fn.fn == FN_S_RSPLIT, line);
    }
    case FN_S_REPLACE: {
        value *cnt = ARG(2, "count");
        value *o = ARG(0, "old"), *n = ARG(1, "new");
        if (!o || !n) txt__jfail(c, JE_RUNTIME, line, "replace needs two arguments");
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
            const char *p = txt__memmem_s(in->c, self->s.s, self->s.n, x->s.s, x->s.n);
            return txt__v_int(c, p ? (int64_t)txt__cp_len(in->c, self->s.s, (size_t)(p - self->s.s)) : -1);
        }
        if (x->s.n == 0) return txt__v_int(c, (int64_t)txt__cp_len(in->c, self->s.s, self->s.n) + 1);
        int64_t k = 0;
        for (const char *p = self->s.s, *e = self->s.s + self->s.n;
             (p = txt__memmem_s(in->c, p, (size_t)(e - p), x->s.s, x->s.n)); p += x->s.n)
            k++;
        return txt__v_int(c, k);
    }
    case FN_S_JOIN: {
        value *l = ARG(0, "iterable");
        if (!l || l->t != V_LIST) txt__jfail(c, JE_RUNTIME, line, "join needs a list");
        sbuf b = {c, NULL, 0, 0, 0};
        for (size_t i = 0; i < l->l.n; i++) {
            if (i) txt__sb_add(&b, self->s.s, self->s.n);
            txt__sb_add(&b, need_str(in, l->l.v[i], "join item", line)->s.s, l->l.v[i]->s.n);
        }
        return txt__v_str(c, b.p ? b.p : "", b.n);
    }
    case FN_S_SPLITLINES: {
        value *r = txt__v_new(c, V_LIST);
        const char *p = self->s.s, *e = p + self->s.n, *st = p;
        while (p < e) {
            if (*p == '\n' || *p == '\r') {
                txt__list_push(c, r, txt__v_str(c, st, (size_t)(p - st)));
                if (*p == '\r' && p + 1 < e && p[1] == '\n') p++;
                st = ++p;
            } else p++;
        }
        if (st < e) txt__list_push(c, r, txt__v_str(c, st, (size_t)(e - st)));
        return r;
    }
    case FN_S_ISDIGIT:
    case FN_S_ISSPACE: {
        if (!self->s.n) return &txt__false;
        for (size_t i = 0; i < self->s.n;) {
            size_t l = 1;
            if (f->fn.fn == FN_S_ISDIGIT ? !(self->s.s[i] >= '0' && self->s.s[i] <= '9')
                                         : !py_space_at(self->s.s + i, self->s.n - i, &l))
                return &txt__false;
            i += l;
        }
        return &txt__true;
    }
    case FN_D_ITEMS:
    case FN_D_KEYS:
    case FN_D_VALUES: {
        value *r = txt__v_new(c, V_LIST);
        for (size_t i = 0; i < self->d.n; i++) {
            value *k = txt__v_str(c, self->d.v[i].k, self->d.v[i].kn);
            if (f->fn.fn == FN_D_ITEMS) {
                value *pair = txt__v_new(c, V_LIST);
                pair->l.tuple = 1;
                txt__list_push(c, pair, k);
                txt__list_push(c, pair, self->d.v[i].v);
                txt__list_push(c, r, pair);
            } else txt__list_push(c, r, f->fn.fn == FN_D_KEYS ? k : self->d.v[i].v);
        }
        return r;
    }
    case FN_D_GET: {
        value *k = ARG(0, "key"), *d = ARG(1, "default");
        if (!k) txt__jfail(c, JE_RUNTIME, line, "get needs a key");
        value *v = k->t == V_STR ? txt__dict_get(self, k->s.s, k->s.n) : NULL;
        return v ? v : d ? d : &txt__none;
    }
    }
#undef ARG
    txt__jfail(c, JE_RUNTIME, line, "not callable");
}

int txt__test_value(interp *in, node *n, value *v, value **args, size_t nargs)
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
        if (v->t != V_INT) txt__jfail(in->c, JE_RUNTIME, n->line, "odd/even need an integer");
        return (int)(((v->i % 2) + 2) % 2) == (IS("odd") ? 1 : 0);
    }
    if (nargs < 1) txt__jfail(in->c, JE_RUNTIME, n->line, "test '%.*s' needs an argument", (int)tl, t);
    value *a = args[0];
    if (IS("divisibleby")) {
        if (v->t != V_INT || a->t != V_INT || a->i == 0)
            txt__jfail(in->c, JE_RUNTIME, n->line, "divisibleby needs integers");
        return v->i % a->i == 0;
    }
    if (IS("eq") || IS("equalto")) return txt__values_equal(in->c, v, a);
    if (IS("ne")) return !txt__values_equal(in->c, v, a);
    if (IS("sameas"))
        return v->t == a->t && (v->t == V_NONE || v->t == V_UNDEF || (v->t == V_BOOL && v->b == a->b) || v == a);
    if (IS("gt")) return txt__values_cmp(in, v, a, n->line) > 0;
    if (IS("lt")) return txt__values_cmp(in, v, a, n->line) < 0;
    if (IS("ge")) return txt__values_cmp(in, v, a, n->line) >= 0;
    if (IS("le")) return txt__values_cmp(in, v, a, n->line) <= 0;
    if (IS("in")) {
        if (a->t == V_STR && v->t == V_STR) return txt__memmem_s(in->c, a->s.s, a->s.n, v->s.s, v->s.n) != NULL;
        if (a->t == V_LIST) {
            for (size_t i = 0; i < a->l.n; i++)
                if (txt__values_equal(in->c, a->l.v[i], v)) return 1;
            return 0;
        }
        if ((a->t == V_DICT || a->t == V_NS) && v->t == V_STR) return txt__dict_get(a, v->s.s, v->s.n) != NULL;
        return 0;
    }
#undef IS
    txt__jfail(in->c, JE_UNSUPPORTED, n->line, "test '%.*s' is not supported", (int)tl, t);
}

/* Items of an iterable as Python iterates them. */
value *txt__iter_list(interp *in, value *v, int line)
{
    if (v->t == V_LIST) return v;
    value *r = txt__v_new(in->c, V_LIST);
    if (v->t == V_UNDEF) return r;
    if (v->t == V_DICT || v->t == V_NS) {
        for (size_t i = 0; i < v->d.n; i++) txt__list_push(in->c, r, txt__v_str(in->c, v->d.v[i].k, v->d.v[i].kn));
        return r;
    }
    if (v->t == V_STR) {
        size_t n;
        size_t *o = txt__cp_offsets(in->c, v->s.s, v->s.n, &n);
        for (size_t i = 0; i < n; i++) txt__list_push(in->c, r, txt__v_str(in->c, v->s.s + o[i], o[i + 1] - o[i]));
        return r;
    }
    txt__jfail(in->c, JE_RUNTIME, line, "'%s' object is not iterable", txt__type_name(v));
}

static value *html_escape(interp *in, value *s)
{
    sbuf b = {in->c, NULL, 0, 0, 0};
    for (size_t i = 0; i < s->s.n; i++) {
        char ch = s->s.s[i];
        if (ch == '&') txt__sb_puts(&b, "&amp;");
        else if (ch == '<') txt__sb_puts(&b, "&lt;");
        else if (ch == '>') txt__sb_puts(&b, "&gt;");
        else if (ch == '"') txt__sb_puts(&b, "&#34;");
        else if (ch == '\'') txt__sb_puts(&b, "&#39;");
        else txt__sb_add(&b, &ch, 1);
    }
    return txt__v_str(in->c, b.p ? b.p : "", b.n);
}

value *txt__apply_filter(interp *in, scope *sc, node *n, value *v, value **args, size_t nargs, value **kwv)
{
    jctx *c = in->c;
    int line = n->line;
    const char *f = n->s;
    size_t fl = n->sn;
#define IS(name) (fl == strlen(name) && !memcmp(f, name, fl))
#define ARG(i, kw) arg_or(n, args, nargs, (i), (kw), kwv)
    if (IS("length") || IS("count")) {
        switch (v->t) {
        case V_STR: return txt__v_int(c, (int64_t)txt__cp_len(in->c, v->s.s, v->s.n));
        case V_LIST: return txt__v_int(c, (int64_t)v->l.n);
        case V_DICT:
        case V_NS: return txt__v_int(c, (int64_t)v->d.n);
        case V_UNDEF: return txt__v_int(c, 0);
        default: txt__jfail(c, JE_RUNTIME, line, "object of type '%s' has no len()", txt__type_name(v));
        }
    }
    if (IS("safe")) return v;
    if (IS("string")) return txt__to_str(c, v);
    if (IS("trim")) return py_strip(in, txt__to_str(c, v), ARG(0, "chars"), 1, 1);
    if (IS("lower")) return case_map(in, txt__to_str(c, v), 0);
    if (IS("upper")) return case_map(in, txt__to_str(c, v), 1);
    if (IS("title")) return case_map(in, txt__to_str(c, v), 2);
    if (IS("capitalize")) return case_map(in, txt__to_str(c, v), 3);
    if (IS("escape") || IS("e")) return html_escape(in, txt__to_str(c, v));
    if (IS("tojson")) {
        value *ind = ARG(0, "indent");
        sbuf b = {c, NULL, 0, 0, 0};
        txt__json_into(c, &b, v, ind && ind->t == V_INT ? (int)ind->i : -1, 0, line);
        return txt__v_str(c, b.p ? b.p : "", b.n);
    }
    if (IS("default") || IS("d")) {
        value *d = ARG(0, "default_value"), *bo = ARG(1, "boolean");
        int use = v->t == V_UNDEF || (bo && txt__truthy(bo) && !txt__truthy(v));
        return use ? (d ? d : txt__v_str(c, "", 0)) : v;
    }
    if (IS("int")) {
        if (v->t == V_INT) return v;
        if (v->t == V_FLOAT) return txt__v_int(c, (int64_t)v->f);
        if (v->t == V_BOOL) return txt__v_int(c, v->b);
        if (v->t == V_STR) {
            char *end;
            const char *s = txt__jstrndup(c, v->s.s, v->s.n);
            long long x = strtoll(s, &end, 10);
            if (end != s && !*end) return txt__v_int(c, x);
            double d = strtod(s, &end);
            if (end != s && !*end) return txt__v_int(c, (int64_t)d);
        }
        value *d = ARG(0, "default");
        return d ? d : txt__v_int(c, 0);
    }
    if (IS("float")) {
        if (txt__is_num(v)) return txt__v_float(c, txt__num_f(v));
        if (v->t == V_STR) {
            char *end;
            const char *s = txt__jstrndup(c, v->s.s, v->s.n);
            double d = strtod(s, &end);
            if (end != s && !*end) return txt__v_float(c, d);
        }
        value *d = ARG(0, "default");
        return d ? d : txt__v_float(c, 0);
    }
    if (IS("abs")) {
        if (v->t == V_INT) return txt__v_int(c, v->i < 0 ? -v->i : v->i);
        if (v->t == V_FLOAT) return txt__v_float(c, fabs(v->f));
        txt__jfail(c, JE_RUNTIME, line, "abs of a %s", txt__type_name(v));
    }
    if (IS("round")) {
        value *pr = ARG(0, "precision");
        int p = pr && pr->t == V_INT ? (int)pr->i : 0;
        double m = pow(10, p), x = txt__num_f(v) * m;
        double r = floor(x + 0.5);
        return txt__v_float(c, r / m);
    }
    if (IS("first") || IS("last")) {
        value *l = txt__iter_list(in, v, line);
        if (!l->l.n) return &txt__undef;
        return IS("first") ? l->l.v[0] : l->l.v[l->l.n - 1];
    }
    if (IS("list")) {
        value *l = txt__iter_list(in, v, line), *r = txt__v_new(c, V_LIST);
        for (size_t i = 0; i < l->l.n; i++) txt__list_push(c, r, l->l.v[i]);
        return r;
    }
    if (IS("reverse")) {
        if (v->t == V_STR) {
            value *one = txt__v_int(c, -1);
            return txt__do_slice(in, v, NULL, NULL, one, line);
        }
        value *l = txt__iter_list(in, v, line), *r = txt__v_new(c, V_LIST);
        for (size_t i = l->l.n; i-- > 0;) txt__list_push(c, r, l->l.v[i]);
        return r;
    }
    if (IS("join")) {
        value *sep = ARG(0, "d"), *attr = ARG(1, "attribute");
        value *l = txt__iter_list(in, v, line);
        sbuf b = {c, NULL, 0, 0, 0};
        for (size_t i = 0; i < l->l.n; i++) {
            if (i && sep) txt__str_into(&b, sep);
            value *x = attr ? txt__get_item(in, l->l.v[i], attr, line) : l->l.v[i];
            txt__str_into(&b, x);
        }
        return txt__v_str(c, b.p ? b.p : "", b.n);
    }
    if (IS("replace")) {
        value *cnt = ARG(2, "count"), *o = ARG(0, "old"), *nw = ARG(1, "new");
        if (!o || !nw) txt__jfail(c, JE_RUNTIME, line, "replace needs two arguments");
        return py_replace(in, txt__to_str(c, v), o, nw, cnt && cnt->t == V_INT ? cnt->i : -1, line);
    }
    if (IS("items")) {
        if (v->t == V_UNDEF) return txt__v_new(c, V_LIST);
        if (v->t != V_DICT && v->t != V_NS) txt__jfail(c, JE_RUNTIME, line, "items needs a mapping");
        value fn = {.t = V_FUNC, .fn = {FN_D_ITEMS, v}};
        return txt__call_fn(in, &fn, n, NULL, 0, NULL);
    }
    if (IS("selectattr") || IS("rejectattr")) {
        value *l = txt__iter_list(in, v, line), *r = txt__v_new(c, V_LIST);
        if (nargs < 1 || args[0]->t != V_STR) txt__jfail(c, JE_RUNTIME, line, "selectattr needs an attribute name");
        node tn = {.k = E_TEST, .line = line};
        if (nargs >= 2) {
            if (args[1]->t != V_STR || !txt__test_known(args[1]->s.s, args[1]->s.n))
                txt__jfail(c, JE_UNSUPPORTED, line, "selectattr test is not supported");
            tn.s = args[1]->s.s;
            tn.sn = args[1]->s.n;
        }
        int select = IS("selectattr");
        for (size_t i = 0; i < l->l.n; i++) {
            value *a = txt__get_item(in, l->l.v[i], args[0], line);
            int ok = nargs >= 2 ? txt__test_value(in, &tn, a, args + 2, nargs - 2) : txt__truthy(a);
            if (ok == select) txt__list_push(c, r, l->l.v[i]);
        }
        return r;
    }
    if (IS("map")) {
        value *l = txt__iter_list(in, v, line), *r = txt__v_new(c, V_LIST), *attr = ARG(99, "attribute");
        if (attr) {
            value *def = ARG(99, "default");
            for (size_t i = 0; i < l->l.n; i++) {
                value *x = txt__get_item(in, l->l.v[i], attr, line);
                txt__list_push(c, r, x->t == V_UNDEF && def ? def : x);
            }
            return r;
        }
        if (nargs < 1 || args[0]->t != V_STR || !txt__filter_known(args[0]->s.s, args[0]->s.n))
            txt__jfail(c, JE_UNSUPPORTED, line, "map needs attribute= or a supported filter name");
        node fn = {.k = E_FILTER, .line = line, .s = args[0]->s.s, .sn = args[0]->s.n};
        for (size_t i = 0; i < l->l.n; i++)
            txt__list_push(c, r, txt__apply_filter(in, sc, &fn, l->l.v[i], args + 1, nargs - 1, NULL));
        return r;
    }
    if (IS("indent")) {
        value *w = ARG(0, "width"), *first = ARG(1, "first"), *blank = ARG(2, "blank");
        value *s = txt__to_str(c, v);
        sbuf pad = {c, NULL, 0, 0, 0};
        if (w && w->t == V_STR) txt__sb_add(&pad, w->s.s, w->s.n);
        else
            for (int64_t i = 0; i < (w && w->t == V_INT ? w->i : 4); i++) txt__sb_puts(&pad, " ");
        sbuf b = {c, NULL, 0, 0, 0};
        const char *p = s->s.s, *e = p + s->s.n;
        int line_no = 0;
        while (p <= e) {
            const char *nl = memchr(p, '\n', (size_t)(e - p));
            const char *le = nl ? nl : e;
            int blank_line = le == p;
            if ((line_no > 0 || (first && txt__truthy(first))) && (!blank_line || (blank && txt__truthy(blank))) &&
                pad.n)
                txt__sb_add(&b, pad.p, pad.n);
            txt__sb_add(&b, p, (size_t)(le - p));
            if (!nl) break;
            txt__sb_puts(&b, "\n");
            p = nl + 1;
            line_no++;
        }
        return txt__v_str(c, b.p ? b.p : "", b.n);
    }
    if (IS("sort") || IS("unique") || IS("max") || IS("min") || IS("sum") || IS("dictsort") || IS("wordcount") ||
        IS("center") || IS("batch")) {
        value *l = txt__iter_list(in, v, line);
        if (IS("sum")) {
            int64_t si = 0;
            double sf = 0;
            int fl_ = 0;
            for (size_t i = 0; i < l->l.n; i++) {
                if (!txt__is_num(l->l.v[i])) txt__jfail(c, JE_RUNTIME, line, "sum of non-numbers");
                if (l->l.v[i]->t == V_FLOAT) fl_ = 1;
                si += txt__num_i(l->l.v[i]);
                sf += txt__num_f(l->l.v[i]);
            }
            return fl_ ? txt__v_float(c, sf) : txt__v_int(c, si);
        }
        if (IS("max") || IS("min")) {
            if (!l->l.n) return &txt__undef;
            value *best = l->l.v[0];
            for (size_t i = 1; i < l->l.n; i++) {
                int r = txt__values_cmp(in, l->l.v[i], best, line);
                if (IS("max") ? r > 0 : r < 0) best = l->l.v[i];
            }
            return best;
        }
        if (IS("sort")) {
            value *r = txt__v_new(c, V_LIST);
            for (size_t i = 0; i < l->l.n; i++) {
                /* insertion sort: stable, as Python's sort is */
                txt__list_push(c, r, l->l.v[i]);
                for (size_t j = r->l.n - 1; j > 0 && txt__values_cmp(in, r->l.v[j - 1], r->l.v[j], line) > 0; j--) {
                    value *t = r->l.v[j];
                    r->l.v[j] = r->l.v[j - 1];
                    r->l.v[j - 1] = t;
                }
            }
            return r;
        }
        if (IS("unique")) {
            value *r = txt__v_new(c, V_LIST);
            for (size_t i = 0; i < l->l.n; i++) {
                int seen = 0;
                for (size_t j = 0; j < r->l.n && !seen; j++) seen = txt__values_equal(in->c, r->l.v[j], l->l.v[i]);
                if (!seen) txt__list_push(c, r, l->l.v[i]);
            }
            return r;
        }
    }
#undef IS
#undef ARG
    txt__jfail(c, JE_UNSUPPORTED, line, "filter '%.*s' is not supported here", (int)fl, f);
}
