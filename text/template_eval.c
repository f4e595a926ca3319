/* Chat templates, step 3: the interpreter. Walks the AST over values, with jinja2's scoping (for loops, set,
 * namespace()), writing the output into the render's buffer; expressions, attribute and item access, slices and
 * arithmetic are here, filters, tests and methods in template_builtins.c. */
#include "text/template_internal.h"

#include <math.h>
#include <string.h>

static value *lookup(scope *sc, const char *name, size_t n)
{
    for (; sc; sc = sc->parent) {
        value *v = txt__dict_get(&sc->vars, name, n);
        if (v) return v;
    }
    return NULL;
}

value *txt__get_item(interp *in, value *obj, value *key, int line)
{
    if (obj->t == V_UNDEF) txt__jfail(in->c, JE_RUNTIME, line, "subscript of an undefined value");
    if ((obj->t == V_DICT || obj->t == V_NS) && key->t == V_STR) {
        value *v = txt__dict_get(obj, key->s.s, key->s.n);
        return v ? v : &txt__undef;
    }
    if (obj->t == V_LIST && (key->t == V_INT || key->t == V_BOOL)) {
        int64_t i = txt__num_i(key);
        if (i < 0) i += (int64_t)obj->l.n;
        return i >= 0 && (size_t)i < obj->l.n ? obj->l.v[i] : &txt__undef;
    }
    if (obj->t == V_STR && (key->t == V_INT || key->t == V_BOOL)) {
        size_t n;
        size_t *o = txt__cp_offsets(in->c, obj->s.s, obj->s.n, &n);
        int64_t i = txt__num_i(key);
        if (i < 0) i += (int64_t)n;
        if (i < 0 || (size_t)i >= n) return &txt__undef;
        return txt__v_str(in->c, obj->s.s + o[i], o[i + 1] - o[i]);
    }
    if (key->t == V_STR) return txt__get_attr(in, obj, key->s.s, key->s.n, line);
    return &txt__undef;
}

static void slice_indices(int64_t len, value *a, value *b, value *s, int64_t *start, int64_t *stop, int64_t *step,
                          interp *in, int line)
{
    *step = s && s->t != V_NONE ? txt__num_i(s) : 1;
    if (*step == 0) txt__jfail(in->c, JE_RUNTIME, line, "slice step cannot be zero");
    int64_t lo = *step < 0 ? -1 : 0, hi = *step < 0 ? len - 1 : len;
    if (!a || a->t == V_NONE) *start = *step < 0 ? hi : lo;
    else {
        *start = txt__num_i(a);
        if (*start < 0) *start += len;
        *start = *start < lo ? lo : *start > hi ? hi : *start;
    }
    if (!b || b->t == V_NONE) *stop = *step < 0 ? lo : hi;
    else {
        *stop = txt__num_i(b);
        if (*stop < 0) *stop += len;
        *stop = *stop < lo ? lo : *stop > hi ? hi : *stop;
    }
}

value *txt__do_slice(interp *in, value *obj, value *a, value *b, value *s, int line)
{
    value *parts[3] = {a, b, s};
    for (int i = 0; i < 3; i++)
        if (parts[i] && !(parts[i]->t == V_INT || parts[i]->t == V_BOOL || parts[i]->t == V_NONE))
            txt__jfail(in->c, JE_RUNTIME, line, "slice indices must be integers");
    int64_t start, stop, step;
    if (obj->t == V_LIST) {
        slice_indices((int64_t)obj->l.n, a, b, s, &start, &stop, &step, in, line);
        value *r = txt__v_new(in->c, V_LIST);
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) txt__list_push(in->c, r, obj->l.v[i]);
        return r;
    }
    if (obj->t == V_STR) {
        size_t n;
        size_t *o = txt__cp_offsets(in->c, obj->s.s, obj->s.n, &n);
        slice_indices((int64_t)n, a, b, s, &start, &stop, &step, in, line);
        sbuf sb = {in->c, NULL, 0, 0, 0};
        for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
            txt__sb_add(&sb, obj->s.s + o[i], o[i + 1] - o[i]);
        return txt__v_str(in->c, sb.p ? sb.p : "", sb.n);
    }
    txt__jfail(in->c, JE_RUNTIME, line, "cannot slice a value of type %s", txt__type_name(obj));
}

static value *arith(interp *in, const char *op, value *a, value *b, int line)
{
    jctx *c = in->c;
    if (!strcmp(op, "~")) {
        sbuf s = {c, NULL, 0, 0, 0};
        txt__str_into(&s, a);
        txt__str_into(&s, b);
        return txt__v_str(c, s.p ? s.p : "", s.n);
    }
    if (!strcmp(op, "+")) {
        if (a->t == V_STR && b->t == V_STR) {
            char *p = txt__jalloc(c, a->s.n + b->s.n + 1);
            memcpy(p, a->s.s, a->s.n);
            memcpy(p + a->s.n, b->s.s, b->s.n);
            p[a->s.n + b->s.n] = 0;
            return txt__v_str(c, p, a->s.n + b->s.n);
        }
        if (a->t == V_LIST && b->t == V_LIST) {
            value *r = txt__v_new(c, V_LIST);
            for (size_t i = 0; i < a->l.n; i++) txt__list_push(c, r, a->l.v[i]);
            for (size_t i = 0; i < b->l.n; i++) txt__list_push(c, r, b->l.v[i]);
            return r;
        }
    }
    if (!strcmp(op, "*") && ((a->t == V_STR && b->t == V_INT) || (a->t == V_INT && b->t == V_STR))) {
        value *s = a->t == V_STR ? a : b;
        int64_t k = a->t == V_INT ? a->i : b->i;
        if (k <= 0 || s->s.n == 0) return txt__v_str(c, "", 0); /* as Python: no loop over k copies of nothing */
        if (k > (int64_t)((1 << 26) / s->s.n)) txt__jfail(c, JE_RUNTIME, line, "string repetition too large");
        /* One allocation, filled by doubling: a 1-byte string times 60 million is 26 copies, not 60 million. */
        size_t total = (size_t)k * s->s.n, done = s->s.n;
        char *p = txt__jalloc(c, total + 1);
        memcpy(p, s->s.s, s->s.n);
        while (done < total) {
            size_t m = done < total - done ? done : total - done;
            memcpy(p + done, p, m);
            done += m;
        }
        p[total] = 0;
        return txt__v_str(c, p, total);
    }
    if (!txt__is_num(a) || !txt__is_num(b))
        txt__jfail(c, JE_RUNTIME, line, "unsupported operand types for %s: '%s' and '%s'", op, txt__type_name(a),
                   txt__type_name(b));
    int fl = a->t == V_FLOAT || b->t == V_FLOAT;
    if (!strcmp(op, "/")) {
        if (txt__num_f(b) == 0) txt__jfail(c, JE_RUNTIME, line, "division by zero");
        return txt__v_float(c, txt__num_f(a) / txt__num_f(b));
    }
    if (!strcmp(op, "**")) {
        if (!fl && txt__num_i(b) >= 0) {
            int64_t r = 1, x = txt__num_i(a);
            for (int64_t i = 0; i < txt__num_i(b) && i < 64; i++)
                if (__builtin_mul_overflow(r, x, &r)) txt__jfail(c, JE_RUNTIME, line, "integer overflow in **");
            return txt__v_int(c, r);
        }
        return txt__v_float(c, pow(txt__num_f(a), txt__num_f(b)));
    }
    if (fl) {
        double x = txt__num_f(a), y = txt__num_f(b);
        if (!strcmp(op, "+")) return txt__v_float(c, x + y);
        if (!strcmp(op, "-")) return txt__v_float(c, x - y);
        if (!strcmp(op, "*")) return txt__v_float(c, x * y);
        if (y == 0) txt__jfail(c, JE_RUNTIME, line, "division by zero");
        if (!strcmp(op, "//")) return txt__v_float(c, floor(x / y));
        double m = fmod(x, y);
        if (m != 0 && ((m < 0) != (y < 0))) m += y;
        return txt__v_float(c, m);
    }
    int64_t x = txt__num_i(a), y = txt__num_i(b), r;
    /* Python's integers do not overflow; 64-bit ones do: refuse rather than wrap (found by fuzz_chat_template) */
    if (!strcmp(op, "+")) {
        if (__builtin_add_overflow(x, y, &r)) txt__jfail(c, JE_RUNTIME, line, "integer overflow in +");
        return txt__v_int(c, r);
    }
    if (!strcmp(op, "-")) {
        if (__builtin_sub_overflow(x, y, &r)) txt__jfail(c, JE_RUNTIME, line, "integer overflow in -");
        return txt__v_int(c, r);
    }
    if (!strcmp(op, "*")) {
        if (__builtin_mul_overflow(x, y, &r)) txt__jfail(c, JE_RUNTIME, line, "integer overflow in *");
        return txt__v_int(c, r);
    }
    if (y == 0) txt__jfail(c, JE_RUNTIME, line, "division by zero");
    if (y == -1 && x == INT64_MIN) txt__jfail(c, JE_RUNTIME, line, "integer overflow in division");
    int64_t q = x / y;
    r = x % y;
    if (r != 0 && ((r < 0) != (y < 0))) q--, r += y;
    return txt__v_int(c, !strcmp(op, "//") ? q : r);
}

static value *eval_node(interp *in, scope *sc, node *n);

static value *eval(interp *in, scope *sc, node *n)
{
    if (++in->depth > JT_MAX_DEPTH)
        txt__jfail(in->c, JE_RUNTIME, n->line, "expression nested deeper than %d", JT_MAX_DEPTH);
    value *v = eval_node(in, sc, n);
    in->depth--;
    return v;
}

static value *eval_node(interp *in, scope *sc, node *n)
{
    jctx *c = in->c;
    txt__jstep(c, n->line);
    switch (n->k) {
    case E_LIT: return n->lit;
    case E_NAME: {
        value *v = lookup(sc, n->s, n->sn);
        if (v) return v;
        v = txt__global_get(c, n->s, n->sn);
        return v ? v : &txt__undef;
    }
    case E_ATTR: return txt__get_attr(in, eval(in, sc, n->a), n->s, n->sn, n->line);
    case E_ITEM: return txt__get_item(in, eval(in, sc, n->a), eval(in, sc, n->b), n->line);
    case E_SLICE:
        return txt__do_slice(in, eval(in, sc, n->a), n->b ? eval(in, sc, n->b) : NULL, n->c ? eval(in, sc, n->c) : NULL,
                        n->d ? eval(in, sc, n->d) : NULL, n->line);
    case E_CALL:
    case E_FILTER:
    case E_TEST: {
        value *target = eval(in, sc, n->a);
        size_t na = n->list.n;
        value **args = txt__jalloc(c, (na + 1) * sizeof *args), **kwv = txt__jalloc(c, (n->list2.n + 1) * sizeof *kwv);
        for (size_t i = 0; i < na; i++) args[i] = eval(in, sc, n->list.v[i]);
        for (size_t i = 0; i < n->list2.n; i++) kwv[i] = eval(in, sc, n->list2.v[i]);
        if (n->k == E_FILTER) return txt__apply_filter(in, sc, n, target, args, na, kwv);
        if (n->k == E_TEST) {
            int r = txt__test_value(in, n, target, args, na);
            return txt__v_bool(n->negate ? !r : r);
        }
        if (target->t != V_FUNC) {
            if (n->a->k == E_ATTR)
                txt__jfail(c, JE_UNSUPPORTED, n->line, "method '%.*s' is not supported on a %s", (int)n->a->sn, n->a->s,
                      txt__type_name(eval(in, sc, n->a->a)));
            txt__jfail(c, n->a->k == E_NAME ? JE_UNSUPPORTED : JE_RUNTIME, n->line, "'%.*s' is not callable",
                  (int)(n->a->k == E_NAME ? n->a->sn : 5), n->a->k == E_NAME ? n->a->s : "value");
        }
        return txt__call_fn(in, target, n, args, na, kwv);
    }
    case E_BIN: {
        value *a = eval(in, sc, n->a), *b = eval(in, sc, n->b);
        const char *op = n->s;
        if (!strcmp(op, "==")) return txt__v_bool(txt__values_equal(in->c, a, b));
        if (!strcmp(op, "!=")) return txt__v_bool(!txt__values_equal(in->c, a, b));
        if (!strcmp(op, "<")) return txt__v_bool(txt__values_cmp(in, a, b, n->line) < 0);
        if (!strcmp(op, ">")) return txt__v_bool(txt__values_cmp(in, a, b, n->line) > 0);
        if (!strcmp(op, "<=")) return txt__v_bool(txt__values_cmp(in, a, b, n->line) <= 0);
        if (!strcmp(op, ">=")) return txt__v_bool(txt__values_cmp(in, a, b, n->line) >= 0);
        if (!strcmp(op, "in") || !strcmp(op, "not in")) {
            int r;
            if (b->t == V_STR) {
                if (a->t != V_STR) txt__jfail(c, JE_RUNTIME, n->line, "'in <string>' requires a string on the left");
                r = txt__memmem_s(in->c, b->s.s, b->s.n, a->s.s, a->s.n) != NULL;
            } else if (b->t == V_LIST) {
                r = 0;
                for (size_t i = 0; i < b->l.n && !r; i++) r = txt__values_equal(in->c, b->l.v[i], a);
            } else if (b->t == V_DICT || b->t == V_NS) r = a->t == V_STR && txt__dict_get(b, a->s.s, a->s.n) != NULL;
            else if (b->t == V_UNDEF) r = 0;
            else txt__jfail(c, JE_RUNTIME, n->line, "argument of type '%s' is not iterable", txt__type_name(b));
            return txt__v_bool(op[0] == 'n' ? !r : r);
        }
        return arith(in, op, a, b, n->line);
    }
    case E_NEG:
    case E_POS: {
        value *a = eval(in, sc, n->a);
        if (!txt__is_num(a))
            txt__jfail(c, JE_RUNTIME, n->line, "bad operand type for unary %s: '%s'", n->k == E_NEG ? "-" : "+",
                       txt__type_name(a));
        if (n->k == E_POS) return a;
        if (a->t != V_FLOAT && txt__num_i(a) == INT64_MIN)
            txt__jfail(c, JE_RUNTIME, n->line, "integer overflow in unary -");
        return a->t == V_FLOAT ? txt__v_float(c, -a->f) : txt__v_int(c, -txt__num_i(a));
    }
    case E_NOT: return txt__v_bool(!txt__truthy(eval(in, sc, n->a)));
    case E_AND: {
        value *a = eval(in, sc, n->a);
        return txt__truthy(a) ? eval(in, sc, n->b) : a;
    }
    case E_OR: {
        value *a = eval(in, sc, n->a);
        return txt__truthy(a) ? a : eval(in, sc, n->b);
    }
    case E_COND: return txt__truthy(eval(in, sc, n->a)) ? eval(in, sc, n->b) : n->c ? eval(in, sc, n->c) : &txt__undef;
    case E_LIST: {
        value *l = txt__v_new(c, V_LIST);
        l->l.tuple = n->negate;
        for (size_t i = 0; i < n->list.n; i++) txt__list_push(c, l, eval(in, sc, n->list.v[i]));
        return l;
    }
    case E_DICT: {
        value *d = txt__v_new(c, V_DICT);
        for (size_t i = 0; i < n->list.n; i++) {
            value *k = eval(in, sc, n->list.v[i]);
            if (k->t != V_STR) txt__jfail(c, JE_UNSUPPORTED, n->line, "dict literal keys must be strings");
            txt__dict_set(c, d, k->s.s, k->s.n, eval(in, sc, n->list2.v[i]));
        }
        return d;
    }
    default: txt__jfail(c, JE_RUNTIME, n->line, "internal: not an expression");
    }
}

static void assign_targets(interp *in, scope *sc, node *n, value *item)
{
    if (n->n_names == 1) {
        txt__dict_set(in->c, &sc->vars, n->names[0], n->name_lens[0], item);
        return;
    }
    value *l = txt__iter_list(in, item, n->line);
    if (l->l.n != n->n_names)
        txt__jfail(in->c, JE_RUNTIME, n->line, "cannot unpack %zu values into %zu names", l->l.n, n->n_names);
    for (size_t i = 0; i < n->n_names; i++) txt__dict_set(in->c, &sc->vars, n->names[i], n->name_lens[i], l->l.v[i]);
}

static flow exec_stmt(interp *in, scope *sc, node *n);

static flow exec_node(interp *in, scope *sc, node *n)
{
    if (++in->depth > JT_MAX_DEPTH)
        txt__jfail(in->c, JE_RUNTIME, n->line, "blocks nested deeper than %d", JT_MAX_DEPTH);
    flow f = exec_stmt(in, sc, n);
    in->depth--;
    return f;
}

static flow exec_stmt(interp *in, scope *sc, node *n)
{
    jctx *c = in->c;
    txt__jstep(c, n->line);
    switch (n->k) {
    case N_TEXT: txt__sb_add(&in->out, n->s, n->sn); return FL_NORMAL;
    case N_OUTPUT: txt__str_into(&in->out, eval(in, sc, n->a)); return FL_NORMAL;
    case N_IF: /* an elif is parsed as an if alone in the else body */
        return txt__exec_list(in, sc, txt__truthy(eval(in, sc, n->a)) ? &n->list : &n->list2);
    case N_FOR: {
        value *items = txt__iter_list(in, eval(in, sc, n->a), n->line);
        /* The loop body runs in its own scope (sets inside do not leak out, as in jinja2). */
        scope inner = {sc, {.t = V_DICT}};
        value *sel = items;
        if (n->b) {
            sel = txt__v_new(c, V_LIST);
            for (size_t i = 0; i < items->l.n; i++) {
                txt__jstep(c, n->line);
                inner.vars.d.n = 0;
                assign_targets(in, &inner, n, items->l.v[i]);
                if (txt__truthy(eval(in, &inner, n->b))) txt__list_push(c, sel, items->l.v[i]);
            }
        }
        if (!sel->l.n) return txt__exec_list(in, sc, &n->list2);
        size_t len = sel->l.n;
        for (size_t i = 0; i < len; i++) {
            txt__jstep(c, n->line);
            inner.vars.d.n = 0;
            value *loop = txt__v_new(c, V_DICT);
            txt__dict_set(c, loop, "index", 5, txt__v_int(c, (int64_t)i + 1));
            txt__dict_set(c, loop, "index0", 6, txt__v_int(c, (int64_t)i));
            txt__dict_set(c, loop, "revindex", 8, txt__v_int(c, (int64_t)(len - i)));
            txt__dict_set(c, loop, "revindex0", 9, txt__v_int(c, (int64_t)(len - i - 1)));
            txt__dict_set(c, loop, "first", 5, txt__v_bool(i == 0));
            txt__dict_set(c, loop, "last", 4, txt__v_bool(i + 1 == len));
            txt__dict_set(c, loop, "length", 6, txt__v_int(c, (int64_t)len));
            txt__dict_set(c, loop, "depth", 5, txt__v_int(c, 1));
            txt__dict_set(c, loop, "depth0", 6, txt__v_int(c, 0));
            txt__dict_set(c, loop, "previtem", 8, i ? sel->l.v[i - 1] : &txt__undef);
            txt__dict_set(c, loop, "nextitem", 8, i + 1 < len ? sel->l.v[i + 1] : &txt__undef);
            txt__dict_set(c, &inner.vars, "loop", 4, loop);
            assign_targets(in, &inner, n, sel->l.v[i]);
            flow f = txt__exec_list(in, &inner, &n->list);
            if (f == FL_BREAK) break;
        }
        return FL_NORMAL;
    }
    case N_SET: txt__dict_set(c, &sc->vars, n->s, n->sn, eval(in, sc, n->a)); return FL_NORMAL;
    case N_SET_ATTR: {
        value *ns = lookup(sc, n->s, n->sn);
        if (!ns || ns->t != V_NS)
            txt__jfail(c, JE_RUNTIME, n->line, "cannot assign attribute on '%.*s': not a namespace", (int)n->sn, n->s);
        txt__dict_set(c, ns, n->names[0], n->name_lens[0], eval(in, sc, n->a));
        return FL_NORMAL;
    }
    case N_SET_BLOCK: {
        sbuf saved = in->out;
        in->out = (sbuf){c, NULL, 0, 0, 0};
        txt__exec_list(in, sc, &n->list);
        value *s = txt__v_str(c, in->out.p ? in->out.p : "", in->out.n);
        in->out = saved;
        txt__dict_set(c, &sc->vars, n->s, n->sn, s);
        return FL_NORMAL;
    }
    case N_BREAK: return FL_BREAK;
    case N_CONTINUE: return FL_CONTINUE;
    case N_BLOCK: return txt__exec_list(in, sc, &n->list);
    default: txt__jfail(c, JE_RUNTIME, n->line, "internal: not a statement");
    }
}

flow txt__exec_list(interp *in, scope *sc, nodelist *l)
{
    for (size_t i = 0; i < l->n; i++) {
        flow f = exec_node(in, sc, l->v[i]);
        if (f != FL_NORMAL) return f;
    }
    return FL_NORMAL;
}
