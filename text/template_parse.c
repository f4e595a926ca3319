/* Chat templates, step 2: tokens -> AST (statements and expressions), once at create. Filters and tests are
 * checked against what the builtins implement here, so an unsupported template fails at load, not on a request. */
#include "text/template_internal.h"

#include <string.h>

static void nl_push(jctx *c, nodelist *l, node *x)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        node **p = txt__jalloc(c, cap * sizeof *p);
        if (l->n) memcpy(p, l->v, l->n * sizeof *p);
        l->v = p;
        l->cap = cap;
    }
    l->v[l->n++] = x;
}

static void parse_enter(parser *p, int line)
{
    if (++p->depth > JT_MAX_DEPTH)
        txt__jfail(p->c, JE_SYNTAX, line, "expression or block nested deeper than %d", JT_MAX_DEPTH);
}

static token *peek(parser *p) { return &p->t[p->pos]; }
static token *next_tok(parser *p)
{
    token *t = &p->t[p->pos];
    if (t->t != T_EOF) p->pos++;
    return t;
}
static int is_op(const token *t, const char *op)
{
    return t->t == T_OP && t->n == strlen(op) && !memcmp(t->s, op, t->n);
}
static int is_name(const token *t, const char *nm)
{
    return t->t == T_NAME && t->n == strlen(nm) && !memcmp(t->s, nm, t->n);
}
static void expect_op(parser *p, const char *op)
{
    token *t = next_tok(p);
    if (!is_op(t, op)) txt__jfail(p->c, JE_SYNTAX, t->line, "expected '%s'", op);
}

static node *mk(parser *p, nkind k, int line)
{
    node *n = txt__jalloc(p->c, sizeof *n);
    memset(n, 0, sizeof *n);
    n->k = k;
    n->line = line;
    return n;
}

static node *parse_expr(parser *p);
static node *parse_or(parser *p);
static node *parse_unary(parser *p, int with_filter);

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
                const char **nm = txt__jalloc(p->c, cap * sizeof *nm);
                size_t *nl = txt__jalloc(p->c, cap * sizeof *nl);
                if (n->n_names)
                    memcpy(nm, n->names, n->n_names * sizeof *nm), memcpy(nl, n->name_lens, n->n_names * sizeof *nl);
                n->names = nm;
                n->name_lens = nl;
            }
            n->names[n->n_names] = t->s;
            n->name_lens[n->n_names++] = t->n;
            nl_push(p->c, &n->list2, parse_expr(p));
        } else {
            if (n->n_names) txt__jfail(p->c, JE_SYNTAX, t->line, "positional argument after a keyword argument");
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
        if (is_name(t, "true") || is_name(t, "True")) n = mk(p, E_LIT, t->line), n->lit = &txt__true;
        else if (is_name(t, "false") || is_name(t, "False")) n = mk(p, E_LIT, t->line), n->lit = &txt__false;
        else if (is_name(t, "none") || is_name(t, "None")) n = mk(p, E_LIT, t->line), n->lit = &txt__none;
        else n = mk(p, E_NAME, t->line), n->s = t->s, n->sn = t->n;
        return n;
    case T_STRING: {
        /* Adjacent literals concatenate, as in Python. */
        sbuf b = {p->c, NULL, 0, 0, 0};
        txt__sb_add(&b, t->s, t->n);
        while (peek(p)->t == T_STRING) {
            token *u = next_tok(p);
            txt__sb_add(&b, u->s, u->n);
        }
        n = mk(p, E_LIT, t->line);
        n->lit = txt__v_str(p->c, b.p ? b.p : "", b.n);
        return n;
    }
    case T_INT: n = mk(p, E_LIT, t->line), n->lit = txt__v_int(p->c, t->i); return n;
    case T_FLOAT: n = mk(p, E_LIT, t->line), n->lit = txt__v_float(p->c, t->f); return n;
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
    txt__jfail(p->c, JE_SYNTAX, t->line, "unexpected %s in an expression",
          t->t == T_EOF ? "end of template" : t->t == T_VAR_END || t->t == T_BLOCK_END ? "end of tag" : "token");
}

/* Defined with the interpreter's tables: whether a call target can ever be callable. */

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
                e->b->lit = txt__v_int(p->c, nm->i);
                n = e;
                continue;
            }
            if (nm->t != T_NAME) txt__jfail(p->c, JE_SYNTAX, nm->line, "expected an attribute name after '.'");
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
                    if (++colons > 2) txt__jfail(p->c, JE_SYNTAX, t->line, "bad slice");
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
                if (!parts[0]) txt__jfail(p->c, JE_SYNTAX, t->line, "empty subscript");
                e = mk(p, E_ITEM, t->line);
                e->b = parts[0];
            }
            e->a = n;
            n = e;
        } else if (is_op(t, "(")) {
            next_tok(p);
            node *e = mk(p, E_CALL, t->line);
            e->a = n;
            if (!txt__callable_name(n))
                txt__jfail(p->c, JE_UNSUPPORTED, t->line,
                           "call of '%.*s' is not supported (no macros; known methods: "
                           "strip, split, replace, startswith, items, get, ...)",
                           (int)(n->sn ? n->sn : 1), n->sn ? n->s : "?");
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
            if (nm->t != T_NAME) txt__jfail(p->c, JE_SYNTAX, nm->line, "expected a filter name after '|'");
            if (!txt__filter_known(nm->s, nm->n))
                txt__jfail(p->c, JE_UNSUPPORTED, nm->line, "filter '%.*s' is not supported", (int)nm->n, nm->s);
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
                txt__jfail(p->c, JE_SYNTAX, nm->line, "expected a test name after 'is'");
            const char *tn = nm->s;
            size_t tl = nm->n;
            if (is_op(nm, "==")) tn = "eq", tl = 2;
            if (is_op(nm, "!=")) tn = "ne", tl = 2;
            if (!txt__test_known(tn, tl))
                txt__jfail(p->c, JE_UNSUPPORTED, nm->line, "test '%.*s' is not supported", (int)tl, tn);
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

static void expect_block_end(parser *p)
{
    token *t = next_tok(p);
    if (t->t != T_BLOCK_END) txt__jfail(p->c, JE_SYNTAX, t->line, "expected '%%}'");
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
    if (kw->t != T_NAME) txt__jfail(p->c, JE_SYNTAX, kw->line, "expected a statement keyword after '{%%'");
    if (is_name(kw, "if")) {
        node *n = mk(p, N_IF, kw->line), *cur = n;
        cur->a = parse_expr(p);
        expect_block_end(p);
        static const char *const stops[] = {"elif", "else", "endif"};
        for (;;) {
            const char *st;
            txt__parse_body(p, &cur->list, stops, 3, &st);
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
                txt__parse_body(p, &cur->list2, s2, 1, &st);
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
        n->names = txt__jalloc(p->c, cap * sizeof *n->names);
        n->name_lens = txt__jalloc(p->c, cap * sizeof *n->name_lens);
        for (;;) {
            token *t = next_tok(p);
            if (t->t != T_NAME || n->n_names == cap) txt__jfail(p->c, JE_SYNTAX, t->line, "bad for-loop target");
            n->names[n->n_names] = t->s;
            n->name_lens[n->n_names++] = t->n;
            if (!is_op(peek(p), ",")) break;
            next_tok(p);
        }
        if (!is_name(next_tok(p), "in")) txt__jfail(p->c, JE_SYNTAX, kw->line, "expected 'in' in a for loop");
        n->a = parse_or(p); /* no inline if-expression: 'if' here filters */
        if (is_name(peek(p), "if")) {
            next_tok(p);
            n->b = parse_or(p);
        }
        if (is_name(peek(p), "recursive"))
            txt__jfail(p->c, JE_UNSUPPORTED, kw->line, "recursive loops are not supported");
        expect_block_end(p);
        static const char *const stops[] = {"else", "endfor"};
        const char *st;
        txt__parse_body(p, &n->list, stops, 2, &st);
        if (!strcmp(st, "else")) {
            expect_block_end(p);
            static const char *const s2[] = {"endfor"};
            txt__parse_body(p, &n->list2, s2, 1, &st);
        }
        expect_block_end(p);
        return n;
    }
    if (is_name(kw, "set")) {
        token *t = next_tok(p);
        if (t->t != T_NAME) txt__jfail(p->c, JE_SYNTAX, t->line, "expected a name after 'set'");
        node *n;
        if (is_op(peek(p), ".")) {
            next_tok(p);
            token *a = next_tok(p);
            if (a->t != T_NAME) txt__jfail(p->c, JE_SYNTAX, a->line, "expected an attribute name");
            n = mk(p, N_SET_ATTR, kw->line);
            n->s = t->s, n->sn = t->n;
            n->names = txt__jalloc(p->c, sizeof *n->names);
            n->name_lens = txt__jalloc(p->c, sizeof *n->name_lens);
            n->names[0] = a->s, n->name_lens[0] = a->n, n->n_names = 1;
        } else {
            n = mk(p, N_SET, kw->line);
            n->s = t->s, n->sn = t->n;
        }
        if (is_op(peek(p), ","))
            txt__jfail(p->c, JE_UNSUPPORTED, kw->line, "tuple assignment in 'set' is not supported");
        if (peek(p)->t == T_BLOCK_END && n->k == N_SET) {
            next_tok(p);
            n->k = N_SET_BLOCK;
            static const char *const stops[] = {"endset"};
            const char *st;
            txt__parse_body(p, &n->list, stops, 1, &st);
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
        txt__parse_body(p, &n->list, stops, 1, &st);
        expect_block_end(p);
        return n;
    }
    txt__jfail(p->c, JE_UNSUPPORTED, kw->line, "statement '%.*s' is not supported", (int)kw->n, kw->s);
}

void txt__parse_body(parser *p, nodelist *out, const char *const *stops, size_t n_stops, const char **stopped)
{
    for (;;) {
        token *t = peek(p);
        if (t->t == T_EOF) {
            if (n_stops)
                txt__jfail(p->c, JE_SYNTAX, t->line, "unexpected end of template (missing '{%% %s %%}')",
                           stops[n_stops - 1]);
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
            if (e->t != T_VAR_END) txt__jfail(p->c, JE_SYNTAX, e->line, "expected '}}'");
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
                txt__jfail(p->c, JE_SYNTAX, kw->line, "unexpected '{%% %.*s %%}'", (int)kw->n, kw->s);
            next_tok(p);
            nl_push(p->c, out, parse_statement(p));
        } else txt__jfail(p->c, JE_SYNTAX, t->line, "unexpected token");
    }
}
