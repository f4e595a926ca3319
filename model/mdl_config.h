/* The model's config.json (Hugging Face layout) as pdserve uses it: every field that changes the math of
 * DeepseekV2ForCausalLM / DeepseekV3ForCausalLM, validated at load with errors that name the field. */
#ifndef MDL_CONFIG_H
#define MDL_CONFIG_H

#include <stdint.h>

#include "common/pd_common.h"

typedef enum { MDL_ARCH_DEEPSEEK_V2 = 2, MDL_ARCH_DEEPSEEK_V3 = 3 } mdl_arch;
typedef enum { MDL_SCORE_SOFTMAX, MDL_SCORE_SIGMOID } mdl_scoring;
typedef enum { MDL_TOPK_GREEDY, MDL_TOPK_GROUP_LIMITED_GREEDY, MDL_TOPK_NOAUX_TC } mdl_topk_method;

typedef struct {
    mdl_arch arch;
    char architecture[64];      /* as in config.json, e.g. "DeepseekV3ForCausalLM" */
    int vocab_size;
    int hidden_size;
    int intermediate_size;      /* dense MLP */
    int moe_intermediate_size;  /* per routed expert */
    int num_hidden_layers;      /* main-model layers; the MTP layers follow at these indices */
    int num_attention_heads;
    int q_lora_rank;            /* 0 when config has null: q_proj used directly */
    int kv_lora_rank;
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    int n_routed_experts;       /* 0: no MoE */
    int n_shared_experts;
    int num_experts_per_tok;
    int n_group, topk_group;
    mdl_topk_method topk_method;
    mdl_scoring scoring_func;
    int norm_topk_prob;
    float routed_scaling_factor;
    int first_k_dense_replace;
    int moe_layer_freq;
    float rms_norm_eps;
    double rope_theta;
    int max_position_embeddings;
    /* rope_scaling; rope_yarn == 0 means none */
    int rope_yarn;
    double rope_factor;
    int rope_original_max_pos;
    double rope_beta_fast, rope_beta_slow, rope_mscale, rope_mscale_all_dim;
    int num_nextn_predict_layers;
    int bos_token_id, eos_token_id;
    int tie_word_embeddings;
    /* quantization_config */
    int fp8;                    /* quant_method fp8 with e4m3 */
    int fp8_block[2];           /* weight_block_size, [128,128] */
} mdl_config;

/* Parses config.json text. On error returns PD_ERR_FORMAT/PD_ERR_UNSUPPORTED and writes a message naming
 * the field into err (also logged). *out is written only on success. */
pd_status mdl_config_parse(const char *json, mdl_config *out, char *err, size_t errlen);
/* Reads DIR/config.json (or the file itself when path ends in .json). */
pd_status mdl_config_load(const char *path, mdl_config *out, char *err, size_t errlen);

/* Derived quantities. */
static inline int mdl_config_qk_head_dim(const mdl_config *c) { return c->qk_nope_head_dim + c->qk_rope_head_dim; }
/* Per-token per-layer KV row: normalised latent followed by the rotated rope key. */
static inline int mdl_config_kv_row(const mdl_config *c) { return c->kv_lora_rank + c->qk_rope_head_dim; }
/* Whether main-model or MTP layer index l uses MoE (HF: routed experts, l >= first_k_dense_replace,
 * l % moe_layer_freq == 0). */
static inline int mdl_config_layer_is_moe(const mdl_config *c, int l)
{
    return c->n_routed_experts > 0 && l >= c->first_k_dense_replace && l % c->moe_layer_freq == 0;
}
/* Attention softmax scale including YaRN's mscale(factor, mscale_all_dim)^2. */
double mdl_config_softmax_scale(const mdl_config *c);

/* Writes config.json text for c (as DeepSeek publishes it). Returns malloc'd string or NULL. */
char *mdl_config_to_json(const mdl_config *c);

#endif
