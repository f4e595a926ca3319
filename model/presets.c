/* Preset model shapes. v2-lite and v3 are the published DeepSeek-V2-Lite and DeepSeek-V3 configs; tiny and
 * bench keep V3's structure (q_lora, MLA, dense-then-MoE, sigmoid routing with correction bias, grouped
 * top-k, one shared expert, MTP) at sizes this machine class runs. */
#include <string.h>

#include "model/mdl_presets.h"

/* What differs between presets of one architecture: the sizes, and YaRN / FP8 where the published model has them. */
typedef struct {
    const char *name;
    mdl_arch arch;
    int hidden, ffn, moe_ffn, layers, dense_layers, heads, experts, experts_per_tok, groups, topk_groups;
    int q_lora, kv_lora, qk_nope, qk_rope, v_head, max_pos;
    double yarn_mscale; /* 0: no YaRN; else YaRN x40 over 4096 original positions with this mscale (both) */
    int fp8;            /* FP8 e4m3 weights in 128 x 128 blocks */
} preset;

static const preset g_presets[] = {
    {"tiny", MDL_ARCH_DEEPSEEK_V3, 128, 384, 64, 3, 1, 4, 16, 4, 4, 2, 96, 64, 32, 16, 32, 4096, 0, 0},
    {"bench", MDL_ARCH_DEEPSEEK_V3, 1024, 2816, 256, 8, 1, 16, 64, 8, 8, 4, 384, 128, 64, 32, 64, 16384, 0, 0},
    {"v2-lite", MDL_ARCH_DEEPSEEK_V2, 2048, 10944, 1408, 27, 1, 16, 64, 6, 1, 1, 0, 512, 128, 64, 128, 163840, 0.707,
     0},
    {"v3", MDL_ARCH_DEEPSEEK_V3, 7168, 18432, 2048, 61, 3, 128, 256, 8, 8, 4, 1536, 512, 128, 64, 128, 163840, 1.0, 1},
};

/* What an architecture fixes whatever the sizes: its routing and its vocabulary. */
typedef struct {
    const char *architecture;
    int vocab_size, n_shared_experts, nextn_layers, bos, eos, norm_topk_prob;
    mdl_scoring scoring;
    mdl_topk_method topk;
    float routed_scaling_factor;
} family;

/* DeepSeek-V3's: sigmoid scores with a correction bias, grouped top-k, one shared expert, one MTP layer. */
static const family g_v3 = {"DeepseekV3ForCausalLM", 129280, 1, 1, 0, 1, 1, MDL_SCORE_SIGMOID, MDL_TOPK_NOAUX_TC, 2.5f};
/* DeepSeek-V2's: softmax scores, greedy top-k, two shared experts, no MTP. */
static const family g_v2 = {"DeepseekV2ForCausalLM", 102400, 2, 0, 100000, 100001, 0, MDL_SCORE_SOFTMAX,
                            MDL_TOPK_GREEDY, 1.0f};

static void family_apply(const family *f, mdl_config *c)
{
    snprintf(c->architecture, sizeof c->architecture, "%s", f->architecture);
    c->vocab_size = f->vocab_size;
    c->n_shared_experts = f->n_shared_experts;
    c->num_nextn_predict_layers = f->nextn_layers;
    c->bos_token_id = f->bos;
    c->eos_token_id = f->eos;
    c->norm_topk_prob = f->norm_topk_prob;
    c->scoring_func = f->scoring;
    c->topk_method = f->topk;
    c->routed_scaling_factor = f->routed_scaling_factor;
}

pd_status mdl_preset_config(const char *name, mdl_config *c)
{
    const preset *p = NULL;
    for (size_t i = 0; i < PD_ARRAY_LEN(g_presets) && !p; i++)
        if (!strcmp(name, g_presets[i].name)) p = &g_presets[i];
    if (!p) return PD_ERR_NOT_FOUND;
    memset(c, 0, sizeof *c);
    c->arch = p->arch;
    family_apply(p->arch == MDL_ARCH_DEEPSEEK_V2 ? &g_v2 : &g_v3, c);
    c->moe_layer_freq = 1;
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 10000.0;
    c->hidden_size = p->hidden;
    c->intermediate_size = p->ffn;
    c->moe_intermediate_size = p->moe_ffn;
    c->num_hidden_layers = p->layers;
    c->first_k_dense_replace = p->dense_layers;
    c->num_attention_heads = p->heads;
    c->n_routed_experts = p->experts;
    c->num_experts_per_tok = p->experts_per_tok;
    c->n_group = p->groups;
    c->topk_group = p->topk_groups;
    c->q_lora_rank = p->q_lora;
    c->kv_lora_rank = p->kv_lora;
    c->qk_nope_head_dim = p->qk_nope;
    c->qk_rope_head_dim = p->qk_rope;
    c->v_head_dim = p->v_head;
    c->max_position_embeddings = p->max_pos;
    if (p->yarn_mscale > 0) {
        c->rope_yarn = 1;
        c->rope_factor = 40;
        c->rope_original_max_pos = 4096;
        c->rope_beta_fast = 32;
        c->rope_beta_slow = 1;
        c->rope_mscale = c->rope_mscale_all_dim = p->yarn_mscale;
    }
    if (p->fp8) {
        c->fp8 = 1;
        c->fp8_block[0] = c->fp8_block[1] = 128;
    }
    return PD_OK;
}

const char *mdl_preset_names(void) { return "tiny, bench, v2-lite, v3"; }
