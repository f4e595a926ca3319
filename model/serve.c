/* Serving-process set-up shared by pdserve-prefill and pdserve-decode, and the ready-notice codec. */
#include <float.h>
#include <string.h>

#include <cJSON.h>

#include "model/mdl_serve.h"
#include "proto/pr_gen.h"

void mdl_serve_defaults(mdl_serve_opts *o)
{
    memset(o, 0, sizeof *o);
    o->max_num_seqs = 64;
    o->max_num_batched_tokens = 2048;
    o->block_size = 16;
    o->kv_cache_memory = 1ull << 30;
    o->max_num_queued_reqs = 1024;
    o->seed = -1;
    o->prefill_bf16 = 1;
}

void mdl_serve_options(mdl_serve_opts *o, pd_opt *t)
{
    pd_opt opts[MDL_SERVE_NOPTS] = {
        {"model", PD_OPT_STR, &o->model, "checkpoint directory (config.json, safetensors, tokenizer files)", 0, 0},
        {"served-model-name", PD_OPT_STR, &o->served_model_name, "model name in the API (default: directory name)", 0,
         0},
        {"dtype", PD_OPT_STR, &o->dtype, "weights: auto|bfloat16|float32 (FP8 checkpoints stay FP8 unless float32)", 0,
         0},
        {"kv-cache-dtype", PD_OPT_STR, &o->kv_cache_dtype, "KV cache: auto(float16)|float16|bfloat16|float32", 0, 0},
        {"max-num-seqs", PD_OPT_INT, &o->max_num_seqs, "sequences running at once (default 64)", 1, 256},
        {"max-num-batched-tokens", PD_OPT_INT, &o->max_num_batched_tokens, "prompt tokens per step (default 2048)", 1,
         1 << 20},
        {"max-model-len", PD_OPT_INT, &o->max_model_len, "prompt + output tokens (default min(model, 8192))", 0,
         1 << 24},
        {"block-size", PD_OPT_INT, &o->block_size, "tokens per KV block (default 16)", 1, 4096},
        {"kv-cache-memory", PD_OPT_SIZE, &o->kv_cache_memory, "bytes for the KV cache pool (default 1G)", 0, 0},
        {"max-num-queued-reqs", PD_OPT_INT, &o->max_num_queued_reqs, "queued requests before 429 (default 1024)", 1,
         1 << 24},
        {"max-num-queued-tokens", PD_OPT_INT, &o->max_num_queued_tokens,
         "prompt tokens waiting for prefill before 429; a longer prompt still runs when none wait (default 0: no "
         "limit)",
         0, 1 << 30},
        {"seed", PD_OPT_INT, &o->seed, "seed of requests that bring none (default: random)", -1, 2147483647},
        {"speculative-config", PD_OPT_STR, &o->speculative_config,
         "speculative decoding, e.g. '{\"method\":\"mtp\",\"num_speculative_tokens\":3}' or "
         "'{\"method\":\"ngram\",\"num_speculative_tokens\":3,\"prompt_lookup_max\":4}' (default off)",
         0, 0},
        {"graph-batch-sizes", PD_OPT_STR, &o->graph_batch_sizes,
         "captured decode batch sizes, e.g. 1,2,4,8,16,32,64 (default: powers of two up to --max-num-seqs; none: off)",
         0, 0},
        {"prefill-bf16", PD_OPT_BOOL, &o->prefill_bf16,
         "prompt prefill GEMMs round activations to bf16 on CPUs with AVX512-BF16 (default on; --no-prefill-bf16: "
         "exact f32; decode is always exact)",
         0, 0},
    };
    memcpy(t, opts, sizeof opts);
}

static pd_status parse_kind(const char *s, int kv, krn_type *out)
{
    if (!s || !strcmp(s, "auto")) {
        *out = kv ? KRN_F16 : KRN_BF16;
        return PD_OK;
    }
    if (!strcmp(s, "bfloat16") || !strcmp(s, "bf16")) *out = KRN_BF16;
    else if (!strcmp(s, "float32") || !strcmp(s, "fp32")) *out = KRN_F32;
    else if (kv && (!strcmp(s, "float16") || !strcmp(s, "fp16"))) *out = KRN_F16;
    else return PD_ERR_INVALID;
    return PD_OK;
}

/* An integer member of the speculative config in [lo, hi]; absent: 0. */
static int spec_int(const cJSON *j, const char *name, int lo, int hi, int *v, char *err, size_t errlen)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(j, name);
    *v = 0;
    if (!n) return 1;
    if (cJSON_IsNumber(n) && n->valuedouble == (double)(int)n->valuedouble && n->valuedouble >= lo &&
        n->valuedouble <= hi) {
        *v = (int)n->valuedouble;
        return 1;
    }
    snprintf(err, errlen, "--speculative-config: '%s' must be an integer in [%d, %d]", name, lo, hi);
    return 0;
}

/* "draft_head_dtype": "auto" (the checkpoint's head; the default) or "int8" (mdl_engine_opts.draft_head_int8). */
static int spec_head_dtype(const cJSON *j, int *int8, char *err, size_t errlen)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "draft_head_dtype");
    *int8 = 0;
    if (!d) return 1;
    if (cJSON_IsString(d) && (!strcmp(d->valuestring, "auto") || !strcmp(d->valuestring, "int8"))) {
        *int8 = !strcmp(d->valuestring, "int8");
        return 1;
    }
    snprintf(err, errlen, "--speculative-config: 'draft_head_dtype' must be \"auto\" or \"int8\"");
    return 0;
}

/* --speculative-config: vLLM's JSON form. method "mtp" (or vLLM's older name "deepseek_mtp") drafts with the
 * model's MTP layer (draft_vocab_size and draft_head_dtype, ours: a pruned or int8 draft head); "ngram" with prompt
 * lookup (prompt_lookup_min / prompt_lookup_max, vLLM's keys). Writes k, method, the n-gram sizes and the draft
 * head's options into eo. */
static pd_status parse_spec(const char *s, mdl_engine_opts *eo, char *err, size_t errlen)
{
    eo->num_speculative_tokens = 0;
    if (!s || !*s) return PD_OK;
    cJSON *j = cJSON_Parse(s);
    pd_status st = PD_ERR_INVALID;
    const cJSON *m = j ? cJSON_GetObjectItemCaseSensitive(j, "method") : NULL;
    const cJSON *n = j ? cJSON_GetObjectItemCaseSensitive(j, "num_speculative_tokens") : NULL;
    const int ngram = cJSON_IsString(m) && !strcmp(m->valuestring, "ngram");
    if (!cJSON_IsObject(j)) snprintf(err, errlen, "--speculative-config: not a JSON object: %s", s);
    else if (!cJSON_IsString(m) || (strcmp(m->valuestring, "mtp") && strcmp(m->valuestring, "deepseek_mtp") && !ngram))
        snprintf(err, errlen, "--speculative-config: 'method' must be \"mtp\" or \"ngram\"");
    else if (!cJSON_IsNumber(n) || n->valuedouble != (double)(int)n->valuedouble || n->valuedouble < 0 ||
             n->valuedouble > MDL_MAX_SPEC_TOKENS)
        snprintf(err, errlen, "--speculative-config: 'num_speculative_tokens' must be an integer in [0, %d]",
                 MDL_MAX_SPEC_TOKENS);
    else if (!ngram && (cJSON_GetObjectItemCaseSensitive(j, "prompt_lookup_min") ||
                        cJSON_GetObjectItemCaseSensitive(j, "prompt_lookup_max")))
        snprintf(err, errlen, "--speculative-config: prompt_lookup_min/max apply to method \"ngram\" only");
    else if (ngram && (cJSON_GetObjectItemCaseSensitive(j, "draft_vocab_size") ||
                       cJSON_GetObjectItemCaseSensitive(j, "draft_head_dtype")))
        snprintf(err, errlen,
                 "--speculative-config: draft_vocab_size and draft_head_dtype apply to method \"mtp\" only");
    else if (!spec_head_dtype(j, &eo->draft_head_int8, err, errlen))
        ; /* err says why */
    else if (spec_int(j, "prompt_lookup_min", 1, MDL_MAX_NGRAM, &eo->ngram_min, err, errlen) &&
             spec_int(j, "prompt_lookup_max", 1, MDL_MAX_NGRAM, &eo->ngram_max, err, errlen) &&
             spec_int(j, "draft_vocab_size", MDL_MIN_DRAFT_VOCAB, 1 << 24, &eo->draft_vocab_size, err, errlen)) {
        if (eo->ngram_min && eo->ngram_max && eo->ngram_min > eo->ngram_max)
            snprintf(err, errlen, "--speculative-config: prompt_lookup_min %d exceeds prompt_lookup_max %d",
                     eo->ngram_min, eo->ngram_max);
        else {
            eo->num_speculative_tokens = (int)n->valuedouble;
            eo->spec_method = ngram ? MDL_SPEC_NGRAM : MDL_SPEC_MTP;
            st = PD_OK;
        }
    }
    cJSON_Delete(j);
    return st;
}

/* --graph-batch-sizes: ascending comma-separated sizes within --max-num-seqs, or "none". */
static pd_status parse_sizes(const char *s, int max_seqs, mdl_engine_opts *eo, char *err, size_t errlen)
{
    eo->n_graph_batch_sizes = 0;
    if (!s) return PD_OK;
    if (!strcmp(s, "none") || !*s) {
        eo->n_graph_batch_sizes = -1;
        return PD_OK;
    }
    const char *p = s;
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        int prev = eo->n_graph_batch_sizes ? eo->graph_batch_sizes[eo->n_graph_batch_sizes - 1] : 0;
        if (end == p || v < 1 || v > max_seqs || v <= prev || eo->n_graph_batch_sizes == MDL_MAX_GRAPH_SIZES ||
            (*end && *end != ',')) {
            snprintf(err, errlen,
                     "--graph-batch-sizes: '%s' must be up to %d ascending sizes in [1, --max-num-seqs %d]", s,
                     MDL_MAX_GRAPH_SIZES, max_seqs);
            return PD_ERR_INVALID;
        }
        eo->graph_batch_sizes[eo->n_graph_batch_sizes++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return PD_OK;
}

pd_status mdl_serve_load(mdl_serve_opts *o, mdl_model **out, mdl_engine_opts *eo, char *err, size_t errlen)
{
    mdl_engine_opts parsed; /* what the two flags say */
    memset(&parsed, 0, sizeof parsed);
    if (parse_spec(o->speculative_config, &parsed, err, errlen) != PD_OK ||
        parse_sizes(o->graph_batch_sizes, o->max_num_seqs, &parsed, err, errlen) != PD_OK)
        return PD_ERR_INVALID;
    if (!o->model) {
        snprintf(err, errlen, "--model is required");
        return PD_ERR_INVALID;
    }
    mdl_load_opts lo = mdl_load_defaults();
    lo.ep_rank = o->ep_rank;
    lo.ep_size = o->ep_size;
    if (parse_kind(o->dtype, 0, &lo.weight_type) != PD_OK) {
        snprintf(err, errlen, "--dtype: '%s' is not one of auto, bfloat16, float32", o->dtype);
        return PD_ERR_INVALID;
    }
    if (parse_kind(o->kv_cache_dtype, 1, &lo.kv_type) != PD_OK) {
        snprintf(err, errlen, "--kv-cache-dtype: '%s' is not one of auto, float16, bfloat16, float32",
                 o->kv_cache_dtype);
        return PD_ERR_INVALID;
    }
    mdl_model *m = NULL;
    pd_status st = mdl_model_load(o->model, &lo, &m, err, errlen);
    if (st != PD_OK) return st;
    if (parsed.num_speculative_tokens > 0 && parsed.spec_method == MDL_SPEC_MTP && m->n_mtp < 1) {
        snprintf(err, errlen, "--speculative-config: %s has no MTP layer (model.layers.%d.*) to draft with", o->model,
                 m->n_layers);
        mdl_model_destroy(m);
        return PD_ERR_INVALID;
    }
    if (parsed.draft_vocab_size > m->cfg.vocab_size) {
        snprintf(err, errlen, "--speculative-config: draft_vocab_size %d exceeds the model's vocab_size %d",
                 parsed.draft_vocab_size, m->cfg.vocab_size);
        mdl_model_destroy(m);
        return PD_ERR_INVALID;
    }
    if (!o->served_model_name) {
        const char *p = o->model + strlen(o->model);
        while (p > o->model && p[-1] == '/') p--;
        const char *end = p;
        while (p > o->model && p[-1] != '/') p--;
        o->served_model_name = strndup(p, (size_t)(end - p));
    }
    int mml = o->max_model_len ? o->max_model_len : PD_MIN(m->cfg.max_position_embeddings, 8192);
    if (mml > m->cfg.max_position_embeddings)
        pd_warn("--max-model-len %d exceeds the model's max_position_embeddings %d", mml,
                m->cfg.max_position_embeddings);
    size_t block_bytes = (size_t)(m->n_layers + m->n_mtp) * (size_t)o->block_size * (size_t)mdl_config_kv_row(&m->cfg) *
                         krn_type_size(lo.kv_type);
    uint64_t nb = o->kv_cache_memory / block_bytes;
    if (nb < (uint64_t)(mml + o->block_size - 1) / (uint64_t)o->block_size) {
        snprintf(err, errlen, "--kv-cache-memory %.1f MB holds %llu blocks of %zu bytes: less than one sequence of "
                 "--max-model-len %d", o->kv_cache_memory / 1e6, (unsigned long long)nb, block_bytes, mml);
        mdl_model_destroy(m);
        return PD_ERR_INVALID;
    }
    if (nb > (1u << 30)) nb = 1u << 30;
    memset(eo, 0, sizeof *eo);
    eo->max_num_seqs = o->max_num_seqs;
    eo->max_num_batched_tokens = o->max_num_batched_tokens;
    eo->max_model_len = mml;
    eo->block_size = o->block_size;
    eo->n_blocks = (int)nb;
    eo->max_waiting = o->max_num_queued_reqs;
    eo->max_waiting_tokens = o->max_num_queued_tokens;
    eo->num_speculative_tokens = parsed.num_speculative_tokens;
    eo->spec_method = parsed.spec_method;
    eo->ngram_min = parsed.ngram_min;
    eo->ngram_max = parsed.ngram_max;
    eo->draft_vocab_size = parsed.draft_vocab_size;
    eo->draft_head_int8 = parsed.draft_head_int8;
    eo->exact_prefill = !o->prefill_bf16;
    eo->n_graph_batch_sizes = parsed.n_graph_batch_sizes;
    memcpy(eo->graph_batch_sizes, parsed.graph_batch_sizes, sizeof eo->graph_batch_sizes);
    *out = m;
    return PD_OK;
}

#define HANDOFF_MAGIC 0x314e4450u /* "PDN1" */

typedef struct {
    uint32_t magic, hidden_size;
    uint64_t req_id;
    int32_t first_token;
    float logprob;
    int32_t n_top;
    int32_t top_ids[MDL_MAX_TOP_LOGPROBS];
    float top_lps[MDL_MAX_TOP_LOGPROBS];
} handoff_wire;

pd_status mdl_handoff_encode(const mdl_handoff *h, void **out, size_t *len)
{
    size_t n = sizeof(handoff_wire) + (size_t)h->hidden_size * sizeof(float);
    uint8_t *b = malloc(n);
    if (!b) return PD_ERR_NOMEM;
    handoff_wire w = {
        HANDOFF_MAGIC, (uint32_t)h->hidden_size, h->req_id, h->first_token, h->logprob, h->n_top, {0}, {0}};
    memcpy(w.top_ids, h->top_ids, sizeof w.top_ids);
    memcpy(w.top_lps, h->top_lps, sizeof w.top_lps);
    memcpy(b, &w, sizeof w);
    if (h->hidden_size) memcpy(b + sizeof w, h->hidden, (size_t)h->hidden_size * sizeof(float));
    *out = b;
    *len = n;
    return PD_OK;
}

pd_status mdl_handoff_decode(const void *buf, size_t len, mdl_handoff *h)
{
    handoff_wire w;
    if (len < sizeof w) return PD_ERR_FORMAT;
    memcpy(&w, buf, sizeof w);
    if (w.magic != HANDOFF_MAGIC || w.n_top < 0 || w.n_top > MDL_MAX_TOP_LOGPROBS ||
        len != sizeof w + (size_t)w.hidden_size * sizeof(float))
        return PD_ERR_FORMAT;
    memset(h, 0, sizeof *h);
    h->req_id = w.req_id;
    h->first_token = w.first_token;
    h->logprob = w.logprob;
    h->n_top = w.n_top;
    memcpy(h->top_ids, w.top_ids, sizeof w.top_ids);
    memcpy(h->top_lps, w.top_lps, sizeof w.top_lps);
    h->hidden_size = (int)w.hidden_size;
    h->hidden = (const float *)((const uint8_t *)buf + sizeof w);
    return PD_OK;
}

/* ---- request parsing, health, metrics ---------------------------------------------------------------------- */

/* The generate request as proto decodes it (limits and all), converted to the engine's parameters. */
_Static_assert(PR_MAX_STOP_IDS <= MDL_MAX_STOP_IDS, "a decoded request's stop ids fit mdl_gen_params");

pd_status mdl_serve_parse_gen(const mdl_model *m, const cJSON *root, int default_seed, uint64_t salt, int32_t **prompt,
                              int *n_prompt, mdl_gen_params *p, char *err, size_t n)
{
    pr_gen g;
    pr_sampling sp;
    const pr_sampling *s = &sp;
    int32_t *t;
    int np;
    pd_status st = pr_gen_decode(root, m->cfg.vocab_size, &g, &sp, &t, &np, err, n);
    if (st != PD_OK) return st;
    memset(p, 0, sizeof *p);
    p->sampling = (krn_sampling_params){.temperature = (float)s->temperature,
                                        .top_k = s->top_k,
                                        /* a top_p below float's range still means "the top token only" */
                                        .top_p = s->top_p < FLT_MIN ? FLT_MIN : (float)s->top_p,
                                        .min_p = (float)s->min_p,
                                        .repetition_penalty = (float)s->repetition_penalty,
                                        .frequency_penalty = (float)s->frequency_penalty,
                                        .presence_penalty = (float)s->presence_penalty};
    p->has_seed = g.has_seed;
    p->seed = g.seed;
    if (!p->has_seed && default_seed >= 0) {
        p->has_seed = 1;
        p->seed = (uint64_t)default_seed ^ salt;
    }
    p->max_tokens = g.max_tokens;
    p->min_tokens = g.min_tokens;
    p->ignore_eos = g.ignore_eos;
    p->n_stop_ids = g.n_stop_ids;
    memcpy(p->stop_ids, g.stop_ids, (size_t)g.n_stop_ids * sizeof *g.stop_ids);
    p->n_bias = s->n_bias;
    for (int i = 0; i < s->n_bias; i++) {
        p->bias_ids[i] = s->bias_ids[i];
        p->bias[i] = (float)s->bias[i];
    }
    p->top_logprobs = g.logprobs;
    *prompt = t;
    *n_prompt = np;
    return PD_OK;
}

cJSON *mdl_serve_health(mdl_engine *e, const char *role, const char *model)
{
    mdl_engine_stats st;
    mdl_engine_get_stats(e, &st);
    char layout[160];
    mdl_engine_layout(e, layout, sizeof layout);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", "ok");
    cJSON_AddStringToObject(o, "role", role);
    cJSON_AddStringToObject(o, "model", model);
    cJSON_AddStringToObject(o, "layout", layout);
    cJSON_AddNumberToObject(o, "max_model_len", mdl_engine_max_model_len(e));
    cJSON *l = cJSON_AddObjectToObject(o, "load");
    cJSON_AddNumberToObject(l, "running", st.running);
    cJSON_AddNumberToObject(l, "waiting", st.waiting);
    cJSON_AddNumberToObject(l, "free_blocks", st.free_blocks);
    cJSON_AddNumberToObject(l, "total_blocks", st.total_blocks);
    cJSON_AddNumberToObject(l, "queued_tokens", (double)st.queued_prompt_tokens);
    cJSON *cs = cJSON_AddArrayToObject(l, "captured_sizes"); /* the router's bucket-aware policy packs into them */
    for (int i = 0; i < st.n_graph_sizes; i++) cJSON_AddItemToArray(cs, cJSON_CreateNumber(st.graph_sizes[i]));
    return o;
}

static void collect_cb(pd_metrics *reg, void *arg)
{
    (void)reg;
    mdl_serve_metrics *m = arg;
    mdl_engine_stats st;
    mdl_engine_get_stats(m->eng, &st);
    pd_gauge_set(m->running, NULL, st.running);
    pd_gauge_set(m->waiting, NULL, st.waiting);
    pd_gauge_set(m->kv_usage, NULL, st.total_blocks ? 1.0 - (double)st.free_blocks / st.total_blocks : 0);
    pd_gauge_set(m->free_blocks, NULL, st.free_blocks);
    pd_gauge_set(m->total_blocks, NULL, st.total_blocks);
    pd_counter_set(m->steps, NULL, (double)st.steps);
    pd_counter_set(m->preemptions, NULL, (double)st.preemptions);
    /* speculative decoding and captured batch sizes */
    pd_counter_set(m->spec_drafts, NULL, (double)st.spec_seq_steps);
    pd_counter_set(m->spec_draft_tokens, NULL, (double)st.spec_drafted);
    pd_counter_set(m->spec_accepted, NULL, (double)st.spec_accepted);
    for (int i = 0; i < MDL_MAX_SPEC_TOKENS && st.spec_seq_steps > 0; i++) {
        char pos[8];
        snprintf(pos, sizeof pos, "%d", i);
        pd_counter_set(m->spec_accepted_pos, PD_LV(pos), (double)st.spec_accepted_at[i]);
    }
    pd_counter_set(m->graph_steps, PD_LV("eager"), (double)st.graph_eager_steps);
    for (int i = 0; i < st.n_graph_sizes; i++) {
        char size[16];
        snprintf(size, sizeof size, "%d", st.graph_sizes[i]);
        pd_counter_set(m->graph_steps, PD_LV(size), (double)st.graph_steps[i]);
    }
    pd_counter_set(m->graph_padded, NULL, (double)st.graph_padded_rows);
    uint64_t rows, whole;
    krn_linear_argmax_counts(&rows, &whole);
    pd_counter_set(m->screen_rows, PD_LV("screened"), (double)(rows - whole));
    pd_counter_set(m->screen_rows, PD_LV("whole"), (double)whole);
}

pd_status mdl_serve_metrics_create(mdl_engine *e, const char *role, mdl_serve_metrics **out)
{
    mdl_serve_metrics *m = calloc(1, sizeof *m);
    if (!m) return PD_ERR_NOMEM;
    m->eng = e;
    pd_status st = pd_metrics_create(&m->reg);
    if (st != PD_OK) goto fail_metrics;
    pd_metrics *r = m->reg;
#define G(field, name, help) if (st == PD_OK) st = pd_metrics_gauge(r, name, help, NULL, &m->field)
#define C(field, name, help, labels) if (st == PD_OK) st = pd_metrics_counter(r, name, help, labels, &m->field)
#define H(field, name, help, b) if (st == PD_OK) st = pd_metrics_histogram(r, name, help, NULL, b, b##_n, &m->field)
    G(running, "pdserve_num_requests_running", "Requests in the running batch.");
    G(waiting, "pdserve_num_requests_waiting", "Requests waiting for prefill or for their KV.");
    G(kv_usage, "pdserve_kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).");
    G(free_blocks, "pdserve_kv_cache_free_blocks", "Free KV cache blocks.");
    G(total_blocks, "pdserve_kv_cache_total_blocks", "KV cache blocks in the pool.");
    C(steps, "pdserve_engine_steps_total", "Engine steps (batched forward passes).", NULL);
    C(preemptions, "pdserve_num_preemptions_total", "Running sequences whose KV blocks were taken back for others "
      "to grow into (recomputed later).", NULL);
    C(gen_tokens, "pdserve_generation_tokens_total", "Tokens generated.", NULL);
    C(prompt_tokens, "pdserve_prompt_tokens_total", "Prompt tokens processed.", NULL);
    C(rejected, "pdserve_request_rejected_total", "Requests refused at admission.", NULL);
    C(success, "pdserve_request_success_total", "Finished requests by finish reason.", "finished_reason");
    C(spec_drafts, "pdserve_spec_decode_num_drafts_total", "Sequence-steps that drafted (MTP or n-gram).", NULL);
    C(spec_draft_tokens, "pdserve_spec_decode_num_draft_tokens_total", "Draft tokens proposed.", NULL);
    C(spec_accepted, "pdserve_spec_decode_num_accepted_tokens_total", "Draft tokens accepted.", NULL);
    C(spec_accepted_pos, "pdserve_spec_decode_num_accepted_tokens_per_pos_total",
      "Draft tokens accepted, by draft position.", "position");
    C(graph_steps, "pdserve_decode_graph_steps_total", "Decode steps by captured batch size (eager: general path).",
      "size");
    C(graph_padded, "pdserve_decode_graph_padded_rows_total", "Padding rows added to reach a captured size.", NULL);
    C(screen_rows, "pdserve_argmax_screen_rows_total", "Greedy rows whose token the lm_head screen found "
      "(whole: a flat row, computed in full).", "outcome");
    H(queue, "pdserve_request_queue_time_seconds", "Time requests waited before their prefill started.",
      pd_buckets_ttft);
    H(prefill, "pdserve_request_prefill_time_seconds", "Time requests spent in prefill compute.", pd_buckets_ttft);
    if (strcmp(role, "prefill") != 0) {
        H(ttft, "pdserve_time_to_first_token_seconds",
          "Time from a request's arrival at this instance to its first token.", pd_buckets_ttft);
        H(itl, "pdserve_inter_token_latency_seconds", "Time between consecutive tokens of a request.",
          pd_buckets_itl);
        H(e2e, "pdserve_e2e_request_latency_seconds", "Time from a request's arrival to its end.",
          pd_buckets_request);
        H(decode, "pdserve_request_decode_time_seconds", "Time requests spent in the decode phase.",
          pd_buckets_request);
    }
    if (strcmp(role, "colocated") != 0)
        C(kv_failures, "pdserve_kv_transfer_failures_total", "KV transfers that failed.", NULL);
    if (!strcmp(role, "prefill")) {
        C(kv_bytes, "pdserve_kv_transfer_bytes_total", "Bytes of KV blocks sent.", NULL);
        H(kv_xfer_time, "pdserve_request_kv_transfer_time_seconds",
          "Time from the end of a request's prefill until its ready notice was delivered.", pd_buckets_ttft);
        H(kv_xfer_duration, "pdserve_kv_transfer_duration_seconds",
          "Time from a request's first block put until its ready notice was delivered.", pd_buckets_ttft);
    }
    if (!strcmp(role, "decode"))
        H(kv_wait, "pdserve_request_kv_wait_time_seconds",
          "Time from a request's block reservation until its KV and ready notice arrived.", pd_buckets_ttft);
#undef G
#undef C
#undef H
    if (st == PD_OK) st = pd_metrics_on_collect(r, collect_cb, m);
    if (st != PD_OK) goto fail_metrics;
    for (int f = 0; f < 4; f++) pd_counter_add(m->success, PD_LV(mdl_finish_str((mdl_finish)f)), 0);
    *out = m;
    return PD_OK;
fail_metrics:
    mdl_serve_metrics_destroy(m);
    return st;
}

void mdl_serve_metrics_destroy(mdl_serve_metrics *m)
{
    if (!m) return;
    pd_metrics_destroy(m->reg);
    free(m);
}

void mdl_serve_metrics_done(mdl_serve_metrics *m, const mdl_event *ev)
{
    pd_counter_add(m->success, PD_LV(mdl_finish_str(ev->finish)), 1);
    if (ev->finish == MDL_FINISH_ABORT || ev->finish == MDL_FINISH_ERROR) return; /* partial phases mislead */
    pd_counter_add(m->prompt_tokens, NULL, ev->prompt_tokens);
    pd_histogram_observe(m->queue, NULL, ev->t_queue);
    if (ev->t_prefill > 0) pd_histogram_observe(m->prefill, NULL, ev->t_prefill); /* 0: prefilled elsewhere */
    if (m->decode) pd_histogram_observe(m->decode, NULL, ev->t_decode);
}
