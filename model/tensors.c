/* Tensor catalogue: HF names and shapes of every weight, layer by layer, from config.json alone. */
#include "model/mdl_tensors.h"

#include <stdarg.h>
#include <string.h>

typedef struct {
    mdl_tensor_spec *out;
    size_t cap, n;
    int layer;
} specs;

static void add(specs *s, mdl_tensor_kind kind, int fp8, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void add(specs *s, mdl_tensor_kind kind, int fp8, int64_t d0, int64_t d1, const char *fmt, ...)
{
    if (s->out && s->n < s->cap) {
        mdl_tensor_spec *t = &s->out[s->n];
        memset(t, 0, sizeof *t);
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->name, sizeof t->name, fmt, ap);
        va_end(ap);
        t->kind = kind;
        t->fp8 = fp8;
        t->layer = s->layer;
        t->ndim = d1 > 0 ? 2 : 1;
        t->shape[0] = d0;
        t->shape[1] = d1 > 0 ? d1 : 0;
    }
    s->n++;
}

static void mlp(specs *s, const char *prefix, int inter, int hidden)
{
    add(s, MDL_T_MATRIX, 1, inter, hidden, "%s.gate_proj.weight", prefix);
    add(s, MDL_T_MATRIX, 1, inter, hidden, "%s.up_proj.weight", prefix);
    add(s, MDL_T_MATRIX, 1, hidden, inter, "%s.down_proj.weight", prefix);
}

size_t mdl_tensor_specs_layer(const mdl_config *c, int l, mdl_tensor_spec *out, size_t cap)
{
    specs s = {out, cap, 0, l};
    const int D = c->hidden_size, H = c->num_attention_heads, qk = mdl_config_qk_head_dim(c);
    if (l < 0) {
        add(&s, MDL_T_EMBED, 0, c->vocab_size, D, "model.embed_tokens.weight");
        add(&s, MDL_T_NORM, 0, D, 0, "model.norm.weight");
        add(&s, MDL_T_MATRIX, 0, c->vocab_size, D, "lm_head.weight");
        return s.n;
    }
    char p[96];
    snprintf(p, sizeof p, "model.layers.%d", l);
    if (l >= c->num_hidden_layers) { /* MTP layer */
        add(&s, MDL_T_EMBED, 0, c->vocab_size, D, "%s.embed_tokens.weight", p);
        add(&s, MDL_T_NORM, 0, D, 0, "%s.enorm.weight", p);
        add(&s, MDL_T_NORM, 0, D, 0, "%s.hnorm.weight", p);
        add(&s, MDL_T_MATRIX, 0, D, 2 * D, "%s.eh_proj.weight", p);
        add(&s, MDL_T_NORM, 0, D, 0, "%s.shared_head.norm.weight", p);
        add(&s, MDL_T_MATRIX, 0, c->vocab_size, D, "%s.shared_head.head.weight", p);
    }
    add(&s, MDL_T_NORM, 0, D, 0, "%s.input_layernorm.weight", p);
    if (c->q_lora_rank > 0) {
        add(&s, MDL_T_MATRIX, 1, c->q_lora_rank, D, "%s.self_attn.q_a_proj.weight", p);
        add(&s, MDL_T_NORM, 0, c->q_lora_rank, 0, "%s.self_attn.q_a_layernorm.weight", p);
        add(&s, MDL_T_MATRIX, 1, (int64_t)H * qk, c->q_lora_rank, "%s.self_attn.q_b_proj.weight", p);
    } else {
        add(&s, MDL_T_MATRIX, 1, (int64_t)H * qk, D, "%s.self_attn.q_proj.weight", p);
    }
    add(&s, MDL_T_MATRIX, 1, c->kv_lora_rank + c->qk_rope_head_dim, D, "%s.self_attn.kv_a_proj_with_mqa.weight", p);
    add(&s, MDL_T_NORM, 0, c->kv_lora_rank, 0, "%s.self_attn.kv_a_layernorm.weight", p);
    add(&s, MDL_T_MATRIX, 1, (int64_t)H * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank,
        "%s.self_attn.kv_b_proj.weight", p);
    add(&s, MDL_T_MATRIX, 1, D, (int64_t)H * c->v_head_dim, "%s.self_attn.o_proj.weight", p);
    add(&s, MDL_T_NORM, 0, D, 0, "%s.post_attention_layernorm.weight", p);
    if (mdl_config_layer_is_moe(c, l)) {
        add(&s, MDL_T_MATRIX, 0, c->n_routed_experts, D, "%s.mlp.gate.weight", p);
        if (c->topk_method == MDL_TOPK_NOAUX_TC)
            add(&s, MDL_T_BIAS, 0, c->n_routed_experts, 0, "%s.mlp.gate.e_score_correction_bias", p);
        char e[128];
        for (int x = 0; x < c->n_routed_experts; x++) {
            snprintf(e, sizeof e, "%s.mlp.experts.%d", p, x);
            mlp(&s, e, c->moe_intermediate_size, D);
        }
        if (c->n_shared_experts > 0) {
            snprintf(e, sizeof e, "%s.mlp.shared_experts", p);
            mlp(&s, e, c->moe_intermediate_size * c->n_shared_experts, D);
        }
    } else {
        snprintf(p + strlen(p), sizeof p - strlen(p), ".mlp");
        mlp(&s, p, c->intermediate_size, D);
    }
    return s.n;
}

size_t mdl_tensor_specs(const mdl_config *c, int n_mtp, mdl_tensor_spec *out, size_t cap)
{
    size_t n = mdl_tensor_specs_layer(c, -1, out, cap);
    for (int l = 0; l < c->num_hidden_layers + n_mtp; l++)
        n += mdl_tensor_specs_layer(c, l, out ? out + PD_MIN(n, cap) : NULL, cap > n ? cap - n : 0);
    return n;
}
