/* Chat templates, internal: the types and functions shared by the lexer, parser, interpreter and builtins
 * (text/template_*.c) and the entry points in chat_template.c. Not for use outside text/. */
#ifndef TXT_TEMPLATE_INTERNAL_H
#define TXT_TEMPLATE_INTERNAL_H

#include <cJSON.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

#include "common/pd_common.h"
#include "text/txt_chat_template.h"

/* ---- arena ---- */

typedef struct arena_blk {
    struct arena_blk *next;
    size_t used, cap;
    max_align_t data[];
} arena_blk;

typedef struct {
    arena_blk *head;
} arena;

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

/* ---- string building ---- */

typedef struct {
    jctx *c;
    char *p;
    size_t n, cap;
    int heap; /* 1: malloc'd (the render output), 0: arena */
} sbuf;

/* ---- template tokens ---- */

typedef enum {
    T_TEXT,
    T_VAR_BEGIN,
    T_VAR_END,
    T_BLOCK_BEGIN,
    T_BLOCK_END,
    T_NAME,
    T_STRING,
    T_INT,
    T_FLOAT,
    T_OP,
    T_EOF
} ttype;

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

typedef struct {
    jctx *c;
    token *t;
    size_t pos;
    int depth; /* nesting of the recursive productions, bounded by JT_MAX_DEPTH */
} parser;

/* Nesting bound for expressions and statements, in the parser and the interpreter alike: recursion is on the C
 * stack, and a template or a left-leaning chain (1+1+...+1) must not overflow it. Real templates nest < 20. */
#define JT_MAX_DEPTH 200

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

/* The process-wide render budget (txt_chat_template_set_budget). */
extern size_t txt__max_steps, txt__max_bytes;
/* undefined, None, True, False: shared constants, never written. */
extern value txt__undef, txt__none, txt__true, txt__false;

/* template_value.c */
void txt__arena_free(arena *a);
void txt__jfail(jctx *c, jerr_kind k, int line, const char *fmt, ...) __attribute__((noreturn, format(printf, 4, 5)));
void txt__jstep(jctx *c, int line);
void txt__jscan(jctx *c, size_t bytes);
void *txt__jalloc(jctx *c, size_t n);
char *txt__jstrndup(jctx *c, const char *s, size_t n);
value *txt__v_new(jctx *c, vtype t);
value *txt__v_bool(int b);
value *txt__v_int(jctx *c, int64_t i);
value *txt__v_float(jctx *c, double f);
value *txt__v_str(jctx *c, const char *s, size_t n);
value *txt__v_strdup(jctx *c, const char *s, size_t n);
void txt__list_push(jctx *c, value *l, value *x);
value *txt__dict_get(const value *d, const char *k, size_t kn);
void txt__dict_set(jctx *c, value *d, const char *k, size_t kn, value *x);
value *txt__from_json(jctx *c, const cJSON *j);
void txt__sb_add(sbuf *b, const char *s, size_t n);
void txt__sb_puts(sbuf *b, const char *s);
void txt__str_into(sbuf *b, const value *v);
value *txt__to_str(jctx *c, const value *v);
void txt__json_into(jctx *c, sbuf *b, const value *v, int indent, int depth, int line);
const char *txt__type_name(const value *v);
int txt__truthy(const value *v);
int txt__is_num(const value *v);
double txt__num_f(const value *v);
int64_t txt__num_i(const value *v);
int txt__values_equal(jctx *c, const value *a, const value *b);
int txt__values_cmp(interp *in, const value *a, const value *b, int line);
size_t *txt__cp_offsets(jctx *c, const char *s, size_t len, size_t *n);
size_t txt__cp_len(jctx *c, const char *s, size_t len);

/* template_lex.c */
void txt__lex(tokvec *tv, const char *src);

/* template_parse.c */
void txt__parse_body(parser *p, nodelist *out, const char *const *stops, size_t n_stops, const char **stopped);

/* template_builtins.c */
/* 1 when name is a filter / test the builtins implement (the parser refuses others at load). */
int txt__filter_known(const char *name, size_t n);
int txt__test_known(const char *name, size_t n);
/* A global function (raise_exception, namespace, range, strftime_now, dict) as a callable value; NULL if none. */
value *txt__global_get(jctx *c, const char *name, size_t n);
int txt__callable_name(const node *callee);
value *txt__get_attr(interp *in, value *obj, const char *name, size_t n, int line);
const char *txt__memmem_s(jctx *c, const char *h, size_t hn, const char *n, size_t nn);
value *txt__call_fn(interp *in, value *f, node *call, value **args, size_t nargs, value **kwv);
int txt__test_value(interp *in, node *n, value *v, value **args, size_t nargs);
value *txt__iter_list(interp *in, value *v, int line);
value *txt__apply_filter(interp *in, scope *sc, node *n, value *v, value **args, size_t nargs, value **kwv);

/* template_eval.c */
value *txt__get_item(interp *in, value *obj, value *key, int line);
value *txt__do_slice(interp *in, value *obj, value *a, value *b, value *s, int line);
flow txt__exec_list(interp *in, scope *sc, nodelist *l);

#endif
