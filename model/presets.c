/* Preset model shapes. v2-lite and v3 are the published DeepSeek-V2-Lite and DeepSeek-V3 configs; tiny and
 * bench keep V3's structure (q_lora, MLA, dense-then-MoE, sigmoid routing with correction bias, grouped
 * top-k, one shared expert, MTP) at sizes this machine class runs. */
#include <string.h>

#include "model/mdl_presets.h"

static void v3_common(mdl_config *c)
{
    memset(c, 0, sizeof *c);
    c->arch = MDL_ARCH_DEEPSEEK_V3;
    snprintf(c->architecture, sizeof c->architecture, "DeepseekV3ForCausalLM");
    c->vocab_size = 129280;
    c->scoring_func = MDL_SCORE_SIGMOID;
    c->topk_method = MDL_TOPK_NOAUX_TC;
    c->norm_topk_prob = 1;
    c->routed_scaling_factor = 2.5f;
    c->moe_layer_freq = 1;
    c->rms_norm_eps = 1e-6f;
    c->rope_theta = 10000.0;
    c->bos_token_id = 0;
    c->eos_token_id = 1;
    c->num_nextn_predict_layers = 1;
    c->n_shared_experts = 1;
}

pd_status mdl_preset_config(const char *name, mdl_config *c)
{
    if (!strcmp(name, "tiny")) {
        v3_common(c);
        c->hidden_size = 128;
        c->intermediate_size = 384;
        c->moe_intermediate_size = 64;
        c->num_hidden_layers = 3;
        c->first_k_dense_replace = 1;
        c->num_attention_heads = 4;
        c->n_routed_experts = 16;
        c->num_experts_per_tok = 4;
        c->n_group = 4;
        c->topk_group = 2;
        c->q_lora_rank = 96;
        c->kv_lora_rank = 64;
        c->qk_nope_head_dim = 32;
        c->qk_rope_head_dim = 16;
        c->v_head_dim = 32;
        c->max_position_embeddings = 4096;
        return PD_OK;
    }
    if (!strcmp(name, "bench")) {
        v3_common(c);
        c->hidden_size = 1024;
        c->intermediate_size = 2816;
        c->moe_intermediate_size = 256;
        c->num_hidden_layers = 8;
        c->first_k_dense_replace = 1;
        c->num_attention_heads = 16;
        c->n_routed_experts = 64;
        c->num_experts_per_tok = 8;
        c->n_group = 8;
        c->topk_group = 4;
        c->q_lora_rank = 384;
        c->kv_lora_rank = 128;
        c->qk_nope_head_dim = 64;
        c->qk_rope_head_dim = 32;
        c->v_head_dim = 64;
        c->max_position_embeddings = 16384;
        return PD_OK;
    }
    if (!strcmp(name, "v3")) {
        v3_common(c);
        c->hidden_size = 7168;
        c->intermediate_size = 18432;
        c->moe_intermediate_size = 2048;
        c->num_hidden_layers = 61;
        c->first_k_dense_replace = 3;
        c->num_attention_heads = 128;
        c->n_routed_experts = 256;
        c->num_experts_per_tok = 8;
        c->n_group = 8;
        c->topk_group = 4;
        c->q_lora_rank = 1536;
        c->kv_lora_rank = 512;
        c->qk_nope_head_dim = 128;
        c->qk_rope_head_dim = 64;
        c->v_head_dim = 128;
        c->max_position_embeddings = 163840;
        c->rope_yarn = 1;
        c->rope_factor = 40;
        c->rope_original_max_pos = 4096;
        c->rope_beta_fast = 32;
        c->rope_beta_slow = 1;
        c->rope_mscale = 1.0;
        c->rope_mscale_all_dim = 1.0;
        c->fp8 = 1;
        c->fp8_block[0] = c->fp8_block[1] = 128;
        return PD_OK;
    }
    if (!strcmp(name, "v2-lite")) {
        memset(c, 0, sizeof *c);
        c->arch = MDL_ARCH_DEEPSEEK_V2;
        snprintf(c->architecture, sizeof c->architecture, "DeepseekV2ForCausalLM");
        c->vocab_size = 102400;
        c->hidden_size = 2048;
        c->intermediate_size = 10944;
        c->moe_intermediate_size = 1408;
        c->num_hidden_layers = 27;
        c->first_k_dense_replace = 1;
        c->moe_layer_freq = 1;
        c->num_attention_heads = 16;
        c->n_routed_experts = 64;
        c->n_shared_experts = 2;
        c->num_experts_per_tok = 6;
        c->n_group = 1;
        c->topk_group = 1;
        c->topk_method = MDL_TOPK_GREEDY;
        c->scoring_func = MDL_SCORE_SOFTMAX;
        c->norm_topk_prob = 0;
        c->routed_scaling_factor = 1.0f;
        c->q_lora_rank = 0;
        c->kv_lora_rank = 512;
        c->qk_nope_head_dim = 128;
        c->qk_rope_head_dim = 64;
        c->v_head_dim = 128;
        c->rms_norm_eps = 1e-6f;
        c->rope_theta = 10000.0;
        c->max_position_embeddings = 163840;
        c->rope_yarn = 1;
        c->rope_factor = 40;
        c->rope_original_max_pos = 4096;
        c->rope_beta_fast = 32;
        c->rope_beta_slow = 1;
        c->rope_mscale = 0.707;
        c->rope_mscale_all_dim = 0.707;
        c->bos_token_id = 100000;
        c->eos_token_id = 100001;
        c->num_nextn_predict_layers = 0;
        return PD_OK;
    }
    return PD_ERR_NOT_FOUND;
}

const char *mdl_preset_names(void) { return "tiny, bench, v2-lite, v3"; }
