/* config.json -> mdl_config. Unknown architectures and unsupported values are rejected here, once, with
 * the field's name, so nothing downstream has to guess. */
#include "model/mdl_config.h"

#include <cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#define fail(err, errlen, st, ...) PD_FAIL(err, errlen, st, "config.json", __VA_ARGS__)

/* Integer field: required unless def_ok; must be a whole number in [lo, hi]. */
static int get_int(const cJSON *o, const char *name, int required, int def, int lo, int hi, int *out, char *err,
                   size_t errlen, pd_status *st)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) {
        if (required) {
            *st = fail(err, errlen, PD_ERR_FORMAT, "missing required field '%s'", name);
            return 0;
        }
        *out = def;
        return 1;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble)) {
        *st = fail(err, errlen, PD_ERR_FORMAT, "field '%s' must be an integer", name);
        return 0;
    }
    if (v->valuedouble < lo || v->valuedouble > hi) {
        *st = fail(err, errlen, PD_ERR_UNSUPPORTED, "field '%s' = %.0f is out of the supported range [%d, %d]",
                   name, v->valuedouble, lo, hi);
        return 0;
    }
    *out = (int)v->valuedouble;
    return 1;
}

static int get_num(const cJSON *o, const char *name, int required, double def, double lo, double hi, double *out,
                   char *err, size_t errlen, pd_status *st)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) {
        if (required) {
            *st = fail(err, errlen, PD_ERR_FORMAT, "missing required field '%s'", name);
            return 0;
        }
        *out = def;
        return 1;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        *st = fail(err, errlen, PD_ERR_FORMAT, "field '%s' must be a number", name);
        return 0;
    }
    if (v->valuedouble < lo || v->valuedouble > hi) {
        *st = fail(err, errlen, PD_ERR_UNSUPPORTED, "field '%s' = %g is out of the supported range [%g, %g]", name,
                   v->valuedouble, lo, hi);
        return 0;
    }
    *out = v->valuedouble;
    return 1;
}

static int get_bool(const cJSON *o, const char *name, int def, int *out, char *err, size_t errlen, pd_status *st)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return 1;
    }
    if (!cJSON_IsBool(v)) {
        *st = fail(err, errlen, PD_ERR_FORMAT, "field '%s' must be true or false", name);
        return 0;
    }
    *out = cJSON_IsTrue(v);
    return 1;
}

static const char *get_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

#define BIG (1 << 30)

/* The MoE sizes that depend on each other, and the router's scoring and top-k method (defaults per architecture). */
static pd_status parse_routing(const cJSON *root, mdl_config *c, char *err, size_t errlen)
{
    pd_status st = PD_OK;
    if (c->n_routed_experts > 0) {
        if (!get_int(root, "moe_intermediate_size", 1, 0, 1, BIG, &c->moe_intermediate_size, err, errlen, &st))
            return st;
        if (c->num_experts_per_tok < 1 || c->num_experts_per_tok > c->n_routed_experts) {
            st = fail(err, errlen, PD_ERR_FORMAT,
                      "field 'num_experts_per_tok' = %d must be in [1, n_routed_experts=%d]",
                      c->num_experts_per_tok, c->n_routed_experts);
            return st;
        }
        if (c->n_routed_experts % c->n_group) {
            st = fail(err, errlen, PD_ERR_FORMAT, "field 'n_group' = %d must divide n_routed_experts = %d", c->n_group,
                      c->n_routed_experts);
            return st;
        }
        if (c->topk_group > c->n_group) {
            st = fail(err, errlen, PD_ERR_FORMAT, "field 'topk_group' = %d exceeds n_group = %d", c->topk_group,
                      c->n_group);
            return st;
        }
    }

    const char *sf = get_str(root, "scoring_func");
    if (!sf) sf = c->arch == MDL_ARCH_DEEPSEEK_V3 ? "sigmoid" : "softmax";
    if (!strcmp(sf, "softmax")) c->scoring_func = MDL_SCORE_SOFTMAX;
    else if (!strcmp(sf, "sigmoid")) c->scoring_func = MDL_SCORE_SIGMOID;
    else {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED, "field 'scoring_func': '%s' is not supported (softmax, sigmoid)",
                  sf);
        return st;
    }
    const char *tm = get_str(root, "topk_method");
    if (!tm) tm = c->arch == MDL_ARCH_DEEPSEEK_V3 ? "noaux_tc" : "greedy";
    if (!strcmp(tm, "greedy")) c->topk_method = MDL_TOPK_GREEDY;
    else if (!strcmp(tm, "group_limited_greedy")) c->topk_method = MDL_TOPK_GROUP_LIMITED_GREEDY;
    else if (!strcmp(tm, "noaux_tc")) c->topk_method = MDL_TOPK_NOAUX_TC;
    else {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED,
                  "field 'topk_method': '%s' is not supported (greedy, group_limited_greedy, noaux_tc)", tm);
        return st;
    }
    if (c->topk_method == MDL_TOPK_NOAUX_TC && c->arch != MDL_ARCH_DEEPSEEK_V3) {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED, "field 'topk_method': noaux_tc needs DeepseekV3ForCausalLM");
        return st;
    }

    return PD_OK;
}

/* rope_scaling: null or absent, or YaRN. */
static pd_status parse_rope_scaling(const cJSON *root, mdl_config *c, char *err, size_t errlen)
{
    pd_status st = PD_OK;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        if (!cJSON_IsObject(rs)) {
            st = fail(err, errlen, PD_ERR_FORMAT, "field 'rope_scaling' must be an object or null");
            return st;
        }
        const char *type = get_str(rs, "type");
        if (!type) type = get_str(rs, "rope_type");
        if (!type || strcmp(type, "yarn") != 0) {
            st = fail(err, errlen, PD_ERR_UNSUPPORTED, "field 'rope_scaling.type': '%s' is not supported (yarn)",
                      type ? type : "(missing)");
            return st;
        }
        c->rope_yarn = 1;
        double orig;
        if (!get_num(rs, "factor", 1, 1, 1e-6, 1e6, &c->rope_factor, err, errlen, &st) ||
            !get_num(rs, "original_max_position_embeddings", 0, 4096, 1, 1e9, &orig, err, errlen, &st) ||
            !get_num(rs, "beta_fast", 0, 32, 0, 1e6, &c->rope_beta_fast, err, errlen, &st) ||
            !get_num(rs, "beta_slow", 0, 1, 0, 1e6, &c->rope_beta_slow, err, errlen, &st) ||
            !get_num(rs, "mscale", 0, 1, 0, 1e6, &c->rope_mscale, err, errlen, &st) ||
            !get_num(rs, "mscale_all_dim", 0, 0, 0, 1e6, &c->rope_mscale_all_dim, err, errlen, &st))
            return st;
        c->rope_original_max_pos = (int)orig;
    }

    return PD_OK;
}

/* quantization_config: null or absent, or FP8 e4m3 in blocks (128 x 128 unless weight_block_size says). */
static pd_status parse_quantization(const cJSON *root, mdl_config *c, char *err, size_t errlen)
{
    pd_status st = PD_OK;
    const cJSON *qc = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
    if (qc && !cJSON_IsNull(qc)) {
        const char *qm = get_str(qc, "quant_method");
        if (!qm || strcmp(qm, "fp8") != 0) {
            st = fail(err, errlen, PD_ERR_UNSUPPORTED,
                      "field 'quantization_config.quant_method': '%s' is not supported (fp8)",
                      qm ? qm : "(missing)");
            return st;
        }
        const char *fmt = get_str(qc, "fmt");
        if (fmt && strcmp(fmt, "e4m3") != 0) {
            st = fail(err, errlen, PD_ERR_UNSUPPORTED,
                      "field 'quantization_config.fmt': '%s' is not supported (e4m3)", fmt);
            return st;
        }
        c->fp8 = 1;
        c->fp8_block[0] = c->fp8_block[1] = 128;
        const cJSON *bs = cJSON_GetObjectItemCaseSensitive(qc, "weight_block_size");
        if (bs) {
            if (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2 || !cJSON_IsNumber(cJSON_GetArrayItem(bs, 0)) ||
                !cJSON_IsNumber(cJSON_GetArrayItem(bs, 1)) || cJSON_GetArrayItem(bs, 0)->valueint < 1 ||
                cJSON_GetArrayItem(bs, 1)->valueint < 1) {
                st = fail(err, errlen, PD_ERR_FORMAT,
                          "field 'quantization_config.weight_block_size' must be [rows, cols]");
                return st;
            }
            c->fp8_block[0] = cJSON_GetArrayItem(bs, 0)->valueint;
            c->fp8_block[1] = cJSON_GetArrayItem(bs, 1)->valueint;
        }
    }
    return PD_OK;
}

pd_status mdl_config_parse(const char *json, mdl_config *out, char *err, size_t errlen)
{
    pd_status st = PD_OK;
    mdl_config c;
    memset(&c, 0, sizeof c);
    cJSON *root = cJSON_Parse(json);
    if (!root) return fail(err, errlen, PD_ERR_FORMAT, "not valid JSON (near byte %ld)",
                           (long)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - json : 0));
    if (!cJSON_IsObject(root)) {
        st = fail(err, errlen, PD_ERR_FORMAT, "top level must be a JSON object");
        goto done;
    }

    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(root, "architectures");
    const char *arch = NULL;
    if (cJSON_IsArray(archs) && cJSON_GetArraySize(archs) >= 1 && cJSON_IsString(cJSON_GetArrayItem(archs, 0)))
        arch = cJSON_GetArrayItem(archs, 0)->valuestring;
    if (!arch) {
        st = fail(err, errlen, PD_ERR_FORMAT, "missing field 'architectures' (a list with the model class name)");
        goto done;
    }
    if (!strcmp(arch, "DeepseekV3ForCausalLM")) c.arch = MDL_ARCH_DEEPSEEK_V3;
    else if (!strcmp(arch, "DeepseekV2ForCausalLM")) c.arch = MDL_ARCH_DEEPSEEK_V2;
    else {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED,
                  "field 'architectures': '%s' is not supported (DeepseekV3ForCausalLM, DeepseekV2ForCausalLM)",
                  arch);
        goto done;
    }
    snprintf(c.architecture, sizeof c.architecture, "%s", arch);

    const char *act = get_str(root, "hidden_act");
    if (act && strcmp(act, "silu") != 0) {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED, "field 'hidden_act': '%s' is not supported (silu)", act);
        goto done;
    }
    int attention_bias = 0;
    if (!get_bool(root, "attention_bias", 0, &attention_bias, err, errlen, &st)) goto done;
    if (attention_bias) {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED, "field 'attention_bias': true is not supported");
        goto done;
    }

    if (!get_int(root, "vocab_size", 1, 0, 2, BIG, &c.vocab_size, err, errlen, &st) ||
        !get_int(root, "hidden_size", 1, 0, 1, 1 << 20, &c.hidden_size, err, errlen, &st) ||
        !get_int(root, "intermediate_size", 1, 0, 1, BIG, &c.intermediate_size, err, errlen, &st) ||
        !get_int(root, "num_hidden_layers", 1, 0, 1, 4096, &c.num_hidden_layers, err, errlen, &st) ||
        !get_int(root, "num_attention_heads", 1, 0, 1, 4096, &c.num_attention_heads, err, errlen, &st) ||
        !get_int(root, "q_lora_rank", 0, 0, 0, 1 << 20, &c.q_lora_rank, err, errlen, &st) ||
        !get_int(root, "kv_lora_rank", 1, 0, 1, 1 << 20, &c.kv_lora_rank, err, errlen, &st) ||
        !get_int(root, "qk_nope_head_dim", 1, 0, 1, 4096, &c.qk_nope_head_dim, err, errlen, &st) ||
        !get_int(root, "qk_rope_head_dim", 1, 0, 2, 4096, &c.qk_rope_head_dim, err, errlen, &st) ||
        !get_int(root, "v_head_dim", 1, 0, 1, 4096, &c.v_head_dim, err, errlen, &st) ||
        !get_int(root, "n_routed_experts", 0, 0, 0, 1 << 16, &c.n_routed_experts, err, errlen, &st) ||
        !get_int(root, "n_shared_experts", 0, 0, 0, 1 << 10, &c.n_shared_experts, err, errlen, &st) ||
        !get_int(root, "num_experts_per_tok", 0, 0, 0, 1 << 10, &c.num_experts_per_tok, err, errlen, &st) ||
        !get_int(root, "n_group", 0, 1, 1, 1 << 16, &c.n_group, err, errlen, &st) ||
        !get_int(root, "topk_group", 0, 1, 1, 1 << 16, &c.topk_group, err, errlen, &st) ||
        !get_int(root, "first_k_dense_replace", 0, 0, 0, 4096, &c.first_k_dense_replace, err, errlen, &st) ||
        !get_int(root, "moe_layer_freq", 0, 1, 1, 4096, &c.moe_layer_freq, err, errlen, &st) ||
        !get_int(root, "max_position_embeddings", 0, 4096, 1, BIG, &c.max_position_embeddings, err, errlen, &st) ||
        !get_int(root, "num_nextn_predict_layers", 0, 0, 0, 16, &c.num_nextn_predict_layers, err, errlen, &st) ||
        !get_int(root, "bos_token_id", 0, 0, 0, BIG, &c.bos_token_id, err, errlen, &st) ||
        !get_int(root, "eos_token_id", 0, 1, 0, BIG, &c.eos_token_id, err, errlen, &st) ||
        !get_bool(root, "norm_topk_prob", 0, &c.norm_topk_prob, err, errlen, &st) ||
        !get_bool(root, "tie_word_embeddings", 0, &c.tie_word_embeddings, err, errlen, &st))
        goto done;
    if (c.tie_word_embeddings) {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED, "field 'tie_word_embeddings': true is not supported");
        goto done;
    }
    if (c.q_lora_rank == 0) { /* null or 0 both mean "no q compression" */
    }
    if (c.bos_token_id >= c.vocab_size || c.eos_token_id >= c.vocab_size) {
        st = fail(err, errlen, PD_ERR_FORMAT, "field 'bos_token_id'/'eos_token_id' must be below vocab_size %d",
                  c.vocab_size);
        goto done;
    }
    if (c.qk_rope_head_dim % 2) {
        st = fail(err, errlen, PD_ERR_FORMAT, "field 'qk_rope_head_dim' must be even (RoPE rotates pairs)");
        goto done;
    }

    double d;
    if (!get_num(root, "rms_norm_eps", 0, 1e-6, 0, 1, &d, err, errlen, &st)) goto done;
    c.rms_norm_eps = (float)d;
    if (!get_num(root, "rope_theta", 0, 10000.0, 1e-6, 1e30, &c.rope_theta, err, errlen, &st)) goto done;
    if (!get_num(root, "routed_scaling_factor", 0, 1.0, 0, 1e6, &d, err, errlen, &st)) goto done;
    c.routed_scaling_factor = (float)d;

    if ((st = parse_routing(root, &c, err, errlen)) != PD_OK ||
        (st = parse_rope_scaling(root, &c, err, errlen)) != PD_OK ||
        (st = parse_quantization(root, &c, err, errlen)) != PD_OK)
        goto done;
    *out = c;
done:
    cJSON_Delete(root);
    return st;
}

pd_status mdl_config_load(const char *path, mdl_config *out, char *err, size_t errlen)
{
    char file[4096];
    size_t n = strlen(path);
    if (n > 5 && !strcmp(path + n - 5, ".json")) snprintf(file, sizeof file, "%s", path);
    else snprintf(file, sizeof file, "%s/config.json", path);
    char *text = NULL;
    pd_status st = pd_file_read(file, &text, NULL);
    if (st != PD_OK) return fail(err, errlen, st, "cannot read %s: %s", file, pd_status_str(st));
    st = mdl_config_parse(text, out, err, errlen);
    free(text);
    return st;
}

static double yarn_get_mscale(double scale, double mscale)
{
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

double mdl_config_softmax_scale(const mdl_config *c)
{
    double s = 1.0 / sqrt((double)mdl_config_qk_head_dim(c));
    if (c->rope_yarn && c->rope_mscale_all_dim > 0) {
        double m = yarn_get_mscale(c->rope_factor, c->rope_mscale_all_dim);
        s *= m * m;
    }
    return s;
}

char *mdl_config_to_json(const mdl_config *c)
{
    cJSON *o = cJSON_CreateObject();
    cJSON *a = cJSON_AddArrayToObject(o, "architectures");
    cJSON_AddItemToArray(a, cJSON_CreateString(c->arch == MDL_ARCH_DEEPSEEK_V3 ? "DeepseekV3ForCausalLM"
                                                                            : "DeepseekV2ForCausalLM"));
    cJSON_AddStringToObject(o, "model_type", c->arch == MDL_ARCH_DEEPSEEK_V3 ? "deepseek_v3" : "deepseek_v2");
    cJSON_AddNumberToObject(o, "rms_norm_eps", c->rms_norm_eps);
    cJSON_AddStringToObject(o, "hidden_act", "silu");
    cJSON_AddNumberToObject(o, "moe_layer_freq", c->moe_layer_freq);
    cJSON_AddBoolToObject(o, "tie_word_embeddings", 0);
    cJSON_AddNumberToObject(o, "bos_token_id", c->bos_token_id);
    cJSON_AddNumberToObject(o, "eos_token_id", c->eos_token_id);
    cJSON_AddStringToObject(o, "torch_dtype", "bfloat16");
    cJSON_AddBoolToObject(o, "attention_bias", 0);
    cJSON_AddNumberToObject(o, "vocab_size", c->vocab_size);
    cJSON_AddNumberToObject(o, "hidden_size", c->hidden_size);
    cJSON_AddNumberToObject(o, "intermediate_size", c->intermediate_size);
    cJSON_AddNumberToObject(o, "moe_intermediate_size", c->moe_intermediate_size);
    cJSON_AddNumberToObject(o, "num_hidden_layers", c->num_hidden_layers);
    cJSON_AddNumberToObject(o, "first_k_dense_replace", c->first_k_dense_replace);
    cJSON_AddNumberToObject(o, "num_attention_heads", c->num_attention_heads);
    cJSON_AddNumberToObject(o, "num_key_value_heads", c->num_attention_heads);
    cJSON_AddNumberToObject(o, "n_routed_experts", c->n_routed_experts);
    cJSON_AddNumberToObject(o, "n_shared_experts", c->n_shared_experts);
    cJSON_AddNumberToObject(o, "num_experts_per_tok", c->num_experts_per_tok);
    cJSON_AddNumberToObject(o, "n_group", c->n_group);
    cJSON_AddNumberToObject(o, "topk_group", c->topk_group);
    cJSON_AddNumberToObject(o, "routed_scaling_factor", c->routed_scaling_factor);
    cJSON_AddStringToObject(o, "scoring_func", c->scoring_func == MDL_SCORE_SIGMOID ? "sigmoid" : "softmax");
    cJSON_AddStringToObject(o, "topk_method", c->topk_method == MDL_TOPK_NOAUX_TC ? "noaux_tc"
                                              : c->topk_method == MDL_TOPK_GROUP_LIMITED_GREEDY ? "group_limited_greedy"
                                                                                               : "greedy");
    cJSON_AddBoolToObject(o, "norm_topk_prob", c->norm_topk_prob);
    if (c->q_lora_rank) cJSON_AddNumberToObject(o, "q_lora_rank", c->q_lora_rank);
    else cJSON_AddNullToObject(o, "q_lora_rank");
    cJSON_AddNumberToObject(o, "kv_lora_rank", c->kv_lora_rank);
    cJSON_AddNumberToObject(o, "qk_nope_head_dim", c->qk_nope_head_dim);
    cJSON_AddNumberToObject(o, "qk_rope_head_dim", c->qk_rope_head_dim);
    cJSON_AddNumberToObject(o, "v_head_dim", c->v_head_dim);
    cJSON_AddNumberToObject(o, "rope_theta", c->rope_theta);
    if (c->rope_yarn) {
        cJSON *r = cJSON_AddObjectToObject(o, "rope_scaling");
        cJSON_AddStringToObject(r, "type", "yarn");
        cJSON_AddNumberToObject(r, "factor", c->rope_factor);
        cJSON_AddNumberToObject(r, "original_max_position_embeddings", c->rope_original_max_pos);
        cJSON_AddNumberToObject(r, "beta_fast", c->rope_beta_fast);
        cJSON_AddNumberToObject(r, "beta_slow", c->rope_beta_slow);
        cJSON_AddNumberToObject(r, "mscale", c->rope_mscale);
        cJSON_AddNumberToObject(r, "mscale_all_dim", c->rope_mscale_all_dim);
    } else {
        cJSON_AddNullToObject(o, "rope_scaling");
    }
    cJSON_AddNumberToObject(o, "max_position_embeddings", c->max_position_embeddings);
    cJSON_AddNumberToObject(o, "num_nextn_predict_layers", c->num_nextn_predict_layers);
    if (c->fp8) {
        cJSON *q = cJSON_AddObjectToObject(o, "quantization_config");
        cJSON_AddStringToObject(q, "activation_scheme", "dynamic");
        cJSON_AddStringToObject(q, "fmt", "e4m3");
        cJSON_AddStringToObject(q, "quant_method", "fp8");
        cJSON *b = cJSON_AddArrayToObject(q, "weight_block_size");
        cJSON_AddItemToArray(b, cJSON_CreateNumber(c->fp8_block[0]));
        cJSON_AddItemToArray(b, cJSON_CreateNumber(c->fp8_block[1]));
    }
    char *s = cJSON_Print(o);
    cJSON_Delete(o);
    return s;
}
