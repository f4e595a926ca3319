/* Chat templates, step 1: template source -> tokens. Text runs, {{ }} / {% %} delimiters with their whitespace
 * control (-, +), trim_blocks and lstrip_blocks as transformers sets them, and the expression tokens inside. */
#include "text/template_internal.h"

#include <string.h>

static void tok_push(tokvec *tv, token t)
{
    if (tv->n == tv->cap) {
        size_t cap = tv->cap ? tv->cap * 2 : 256;
        token *p = txt__jalloc(tv->c, cap * sizeof *p);
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
    char *o = txt__jalloc(c, n + 1);
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
                txt__jfail(c, JE_SYNTAX, line, "truncated \\%c escape in a string literal", e);
            char hex[9] = {0};
            memcpy(hex, s + i + 1, (size_t)len);
            char *end;
            unsigned long cp = strtoul(hex, &end, 16);
            if (*end || cp > 0x10FFFF) txt__jfail(c, JE_SYNTAX, line, "bad \\%c escape in a string literal", e);
            i += (size_t)len;
            /* n + 1 bytes were allocated; an escape of 4+ source bytes never expands beyond them */
            if (cp < 0x80) o[k++] = (char)cp;
            else if (cp < 0x800) o[k++] = (char)(0xC0 | cp >> 6), o[k++] = (char)(0x80 | (cp & 63));
            else if (cp < 0x10000)
                o[k++] = (char)(0xE0 | cp >> 12), o[k++] = (char)(0x80 | ((cp >> 6) & 63)),
                o[k++] = (char)(0x80 | (cp & 63));
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
            if (p >= end) txt__jfail(c, JE_SYNTAX, line, "unterminated string literal");
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
        if (k == PD_ARRAY_LEN(ops)) txt__jfail(c, JE_SYNTAX, line, "unexpected character '%c'", ch);
        if (*ops[k] == '(' || *ops[k] == '[' || *ops[k] == '{') depth++;
        if (*ops[k] == ')' || *ops[k] == ']' || *ops[k] == '}') depth--;
        tok_push(tv, (token){T_OP, line, ops[k], strlen(ops[k]), 0, 0});
        p += strlen(ops[k]);
    }
    txt__jfail(c, JE_SYNTAX, line_of(src, end), "unclosed tag (missing '%c}')", closer);
}

void txt__lex(tokvec *tv, const char *src)
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
            if (close + 1 >= end) txt__jfail(c, JE_SYNTAX, line_of(src, q), "unclosed comment");
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
