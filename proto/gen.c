/* The internal generate request's codec (pr_gen.h): pr_gen -> JSON body on the router, JSON body -> pr_gen on the
 * instances, with the limits of pr_gen.h checked once here. */
#include "proto/pr_gen.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void pr_gen_defaults(pr_gen *g, pr_sampling *s)
{
    memset(g, 0, sizeof *g);
    g->max_tokens = 16;
    memset(s, 0, sizeof *s);
    s->temperature = 1.0;
    s->top_p = 1.0;
    s->repetition_penalty = 1.0;
}

/* ---- encode ---- */

static int add_num(cJSON *o, const char *k, double v) { return cJSON_AddNumberToObject(o, k, v) != NULL; }

pd_status pr_sampling_encode(const pr_sampling *s, cJSON **out)
{
    cJSON *sp = cJSON_CreateObject();
    int ok = sp && add_num(sp, "temperature", s->temperature) && add_num(sp, "top_p", s->top_p) &&
             add_num(sp, "top_k", s->top_k) && add_num(sp, "min_p", s->min_p) &&
             add_num(sp, "presence_penalty", s->presence_penalty) &&
             add_num(sp, "frequency_penalty", s->frequency_penalty) &&
             add_num(sp, "repetition_penalty", s->repetition_penalty);
    if (ok && s->n_bias) {
        cJSON *lb = cJSON_AddObjectToObject(sp, "logit_bias");
        ok = lb != NULL;
        for (int i = 0; ok && i < s->n_bias; i++) {
            char key[16];
            snprintf(key, sizeof key, "%d", (int)s->bias_ids[i]);
            ok = add_num(lb, key, s->bias[i]);
        }
    }
    if (!ok) {
        cJSON_Delete(sp);
        return PD_ERR_NOMEM;
    }
    *out = sp;
    return PD_OK;
}

pd_status pr_gen_encode(const pr_gen *g, const cJSON *sampling, const char *id, const int32_t *prompt, int n_prompt,
                        cJSON **out)
{
    cJSON *b = cJSON_CreateObject();
    int ok = b && cJSON_AddStringToObject(b, "id", id);
    cJSON *a = ok ? cJSON_AddArrayToObject(b, "prompt") : NULL;
    ok = a != NULL;
    for (int i = 0; ok && i < n_prompt; i++) {
        cJSON *x = cJSON_CreateNumber(prompt[i]);
        ok = x && cJSON_AddItemToArray(a, x);
    }
    ok = ok && add_num(b, "max_tokens", g->max_tokens) && add_num(b, "min_tokens", g->min_tokens) &&
         cJSON_AddBoolToObject(b, "ignore_eos", g->ignore_eos);
    if (ok && g->n_stop_ids) {
        a = cJSON_AddArrayToObject(b, "stop_token_ids");
        ok = a != NULL;
        for (int i = 0; ok && i < g->n_stop_ids; i++) {
            cJSON *x = cJSON_CreateNumber(g->stop_ids[i]);
            ok = x && cJSON_AddItemToArray(a, x);
        }
    }
    cJSON *sp = ok ? cJSON_Duplicate(sampling, 1) : NULL;
    /* Signed: a JSON number holds an int64 (to 2^53 exactly), not a uint64 above 2^63. */
    ok = sp && (!g->has_seed || add_num(sp, "seed", (double)(int64_t)g->seed)) &&
         cJSON_AddItemToObject(b, "sampling", sp);
    if (!ok) cJSON_Delete(sp);
    ok = ok && add_num(b, "logprobs", g->logprobs);
    if (!ok) {
        cJSON_Delete(b);
        return PD_ERR_NOMEM;
    }
    *out = b;
    return PD_OK;
}

/* ---- decode ---- */

/* Each reads field k of o into *out (its default when absent or null); 0 with err naming k otherwise. */
static int get_int(const cJSON *o, const char *k, long long lo, long long hi, int *out, char *err, size_t n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= (double)lo && v->valuedouble <= (double)hi) ||
        v->valuedouble != floor(v->valuedouble)) {
        snprintf(err, n, "'%s' must be an integer in [%lld, %lld]", k, lo, hi);
        return 0;
    }
    *out = (int)v->valuedouble;
    return 1;
}

/* lo_open: the range is (lo, hi]. */
static int get_num(const cJSON *o, const char *k, double lo, int lo_open, double hi, double *out, char *err, size_t n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsNumber(v) || !(lo_open ? v->valuedouble > lo : v->valuedouble >= lo) || !(v->valuedouble <= hi)) {
        snprintf(err, n, "'%s' must be a number in %c%g, %g]", k, lo_open ? '(' : '[', lo, hi);
        return 0;
    }
    *out = v->valuedouble;
    return 1;
}

static int get_bool(const cJSON *o, const char *k, int *out, char *err, size_t n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsBool(v)) {
        snprintf(err, n, "'%s' must be true or false", k);
        return 0;
    }
    *out = cJSON_IsTrue(v);
    return 1;
}

static int is_token_id(const cJSON *v, int vocab_size)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < vocab_size &&
           v->valuedouble == floor(v->valuedouble);
}

/* A seed: any integer a signed 64-bit value holds (the router's, plus the choice's index). */
static int get_seed(const cJSON *sp, pr_gen *g, char *err, size_t n)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(sp, "seed");
    if (!v || cJSON_IsNull(v)) return 1;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= -0x1p63 && v->valuedouble < 0x1p63) ||
        v->valuedouble != floor(v->valuedouble)) {
        snprintf(err, n, "'seed' must be an integer in [-2^63, 2^63)");
        return 0;
    }
    g->has_seed = 1;
    g->seed = (uint64_t)(int64_t)v->valuedouble;
    return 1;
}

/* logit_bias: null, or an object of at most PR_MAX_LOGIT_BIAS distinct token ids (decimal, no sign or leading
 * zero: the router's normalised keys) to biases in [-PR_MAX_BIAS, PR_MAX_BIAS]. */
static int get_logit_bias(const cJSON *sp, int vocab_size, pr_sampling *s, char *err, size_t n)
{
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(sp, "logit_bias"), *v;
    if (!lb || cJSON_IsNull(lb)) return 1;
    if (!cJSON_IsObject(lb) || cJSON_GetArraySize(lb) > PR_MAX_LOGIT_BIAS) {
        snprintf(err, n, "'logit_bias' must be an object of at most %d token ids", PR_MAX_LOGIT_BIAS);
        return 0;
    }
    cJSON_ArrayForEach(v, lb)
    {
        const char *k = v->string;
        char *end = NULL;
        errno = 0;
        const long id = strtol(k, &end, 10);
        if (!(k[0] >= '0' && k[0] <= '9') || *end || errno || id >= vocab_size || (k[0] == '0' && k[1])) {
            snprintf(err, n, "'logit_bias' keys must be token ids of this model (vocabulary %d)", vocab_size);
            return 0;
        }
        if (!cJSON_IsNumber(v) || !(v->valuedouble >= -PR_MAX_BIAS && v->valuedouble <= PR_MAX_BIAS)) {
            snprintf(err, n, "'logit_bias' values must be numbers in [%g, %g]", -PR_MAX_BIAS, PR_MAX_BIAS);
            return 0;
        }
        for (int i = 0; i < s->n_bias; i++)
            if (s->bias_ids[i] == id) {
                snprintf(err, n, "'logit_bias' names token %ld twice", id);
                return 0;
            }
        s->bias_ids[s->n_bias] = (int32_t)id;
        s->bias[s->n_bias++] = v->valuedouble;
    }
    return 1;
}

static int get_sampling(const cJSON *root, int vocab_size, pr_gen *g, pr_sampling *s, char *err, size_t n)
{
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(root, "sampling");
    if (!sp || cJSON_IsNull(sp)) return 1;
    if (!cJSON_IsObject(sp)) {
        snprintf(err, n, "'sampling' must be an object");
        return 0;
    }
    return get_num(sp, "temperature", 0, 0, PR_MAX_TEMPERATURE, &s->temperature, err, n) &&
           get_num(sp, "top_p", 0, 1, 1, &s->top_p, err, n) &&
           get_int(sp, "top_k", -1, PR_MAX_TOP_K, &s->top_k, err, n) &&
           get_num(sp, "min_p", 0, 0, 1, &s->min_p, err, n) &&
           get_num(sp, "repetition_penalty", PR_MIN_REPETITION, 0, PR_MAX_REPETITION, &s->repetition_penalty, err,
                   n) &&
           get_num(sp, "frequency_penalty", -PR_MAX_PENALTY, 0, PR_MAX_PENALTY, &s->frequency_penalty, err, n) &&
           get_num(sp, "presence_penalty", -PR_MAX_PENALTY, 0, PR_MAX_PENALTY, &s->presence_penalty, err, n) &&
           get_seed(sp, g, err, n) && get_logit_bias(sp, vocab_size, s, err, n);
}

static int get_stop_ids(const cJSON *root, int vocab_size, pr_gen *g, char *err, size_t n)
{
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "stop_token_ids"), *v;
    if (!st || cJSON_IsNull(st)) return 1;
    if (!cJSON_IsArray(st) || cJSON_GetArraySize(st) > PR_MAX_STOP_IDS) {
        snprintf(err, n, "'stop_token_ids' must be an array of at most %d token ids", PR_MAX_STOP_IDS);
        return 0;
    }
    cJSON_ArrayForEach(v, st)
    {
        if (!is_token_id(v, vocab_size)) {
            snprintf(err, n, "'stop_token_ids' holds a value that is not a token id");
            return 0;
        }
        g->stop_ids[g->n_stop_ids++] = (int32_t)v->valuedouble;
    }
    return 1;
}

static pd_status get_prompt(const cJSON *root, int vocab_size, int32_t **out, int *n_out, char *err, size_t n)
{
    const cJSON *pr = cJSON_GetObjectItemCaseSensitive(root, "prompt"), *v;
    if (!cJSON_IsArray(pr) || cJSON_GetArraySize(pr) < 1) {
        snprintf(err, n, "'prompt' must be a non-empty array of token ids");
        return PD_ERR_INVALID;
    }
    int np = cJSON_GetArraySize(pr), i = 0;
    cJSON_ArrayForEach(v, pr)
    {
        if (!is_token_id(v, vocab_size)) {
            snprintf(err, n, "'prompt'[%d] is not a token id of this model (vocabulary %d)", i, vocab_size);
            return PD_ERR_INVALID;
        }
        i++;
    }
    int32_t *t = malloc((size_t)np * sizeof *t);
    if (!t) {
        snprintf(err, n, "out of memory");
        return PD_ERR_NOMEM;
    }
    i = 0;
    cJSON_ArrayForEach(v, pr) t[i++] = (int32_t)v->valuedouble;
    *out = t;
    *n_out = np;
    return PD_OK;
}

pd_status pr_gen_decode(const cJSON *root, int vocab_size, pr_gen *g, pr_sampling *s, int32_t **prompt,
                        int *n_prompt, char *err, size_t errlen)
{
    if (!cJSON_IsObject(root)) {
        snprintf(err, errlen, "body must be a JSON object");
        return PD_ERR_INVALID;
    }
    int32_t *t;
    int np;
    pd_status st = get_prompt(root, vocab_size, &t, &np, err, errlen);
    if (st != PD_OK) return st;
    pr_gen d;
    pr_sampling ds;
    pr_gen_defaults(&d, &ds);
    if (!get_int(root, "max_tokens", 1, PR_MAX_TOKENS, &d.max_tokens, err, errlen) ||
        !get_int(root, "min_tokens", 0, PR_MAX_TOKENS, &d.min_tokens, err, errlen) ||
        !get_int(root, "logprobs", -1, PR_MAX_TOP_LOGPROBS, &d.logprobs, err, errlen) ||
        !get_bool(root, "ignore_eos", &d.ignore_eos, err, errlen) || !get_stop_ids(root, vocab_size, &d, err, errlen) ||
        !get_sampling(root, vocab_size, &d, &ds, err, errlen)) {
        free(t);
        return PD_ERR_INVALID;
    }
    *g = d;
    *s = ds;
    *prompt = t;
    *n_prompt = np;
    return PD_OK;
}
