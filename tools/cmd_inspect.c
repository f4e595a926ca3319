/* pdserve-model inspect: what a checkpoint is — architecture, parameters, active parameters per token, KV
 * bytes per token, dtypes found. Works from config.json alone when there are no weights. */
#include <stdio.h>
#include <string.h>

#include "model/mdl.h"
#include "model/safetensors.h"

int cmd_inspect(int argc, char **argv)
{
    const char *dir = NULL;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--help")) {
            printf("usage: pdserve-model inspect DIR [--json]\n");
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "inspect: unknown option '%s'\n", argv[i]);
            return 2;
        } else dir = argv[i];
    }
    if (!dir) {
        fprintf(stderr, "usage: pdserve-model inspect DIR [--json]\n");
        return 2;
    }
    mdl_config c;
    char err[1024];
    if (mdl_config_load(dir, &c, err, sizeof err) != PD_OK) {
        fprintf(stderr, "inspect: %s\n", err);
        return 1;
    }
    mdl_param_counts pc;
    mdl_config_count(&c, 2, &pc);
    /* dtypes present, when there are weights */
    size_t per[MDL_DT_COUNT] = {0}, n_tensors = 0, bytes = 0;
    int have_weights = 0;
    mdl_st st = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        probe = fopen(path, "rb");
    }
    if (probe) {
        fclose(probe);
        if (mdl_st_open(dir, &st, err, sizeof err) != PD_OK) {
            fprintf(stderr, "inspect: %s\n", err);
            return 1;
        }
        have_weights = 1;
        n_tensors = mdl_st_count(st);
        for (size_t i = 0; i < n_tensors; i++) per[mdl_st_at(st, i)->dtype]++;
        bytes = mdl_st_total_bytes(st);
        mdl_st_close(st);
    }
    const char *topk = c.topk_method == MDL_TOPK_NOAUX_TC ? "noaux_tc"
                       : c.topk_method == MDL_TOPK_GROUP_LIMITED_GREEDY ? "group_limited_greedy" : "greedy";
    if (json) {
        printf("{\"architecture\":\"%s\",\"params_total\":%.0f,\"params_active\":%.0f,\"params_mtp\":%.0f,"
               "\"kv_bytes_per_token_16bit\":%zu,\"layers\":%d,\"mtp_layers\":%d,\"hidden_size\":%d,"
               "\"vocab_size\":%d,\"fp8\":%s,\"tensors\":%zu,\"weight_bytes\":%zu,\"dtypes\":{",
               c.architecture, pc.params_total, pc.params_active, pc.params_mtp, pc.kv_bytes_per_token,
               c.num_hidden_layers, c.num_nextn_predict_layers, c.hidden_size, c.vocab_size, c.fp8 ? "true" : "false",
               n_tensors, bytes);
        int first = 1;
        for (int d = 0; d < MDL_DT_COUNT; d++)
            if (per[d]) {
                printf("%s\"%s\":%zu", first ? "" : ",", mdl_dtype_name((mdl_dtype)d), per[d]);
                first = 0;
            }
        printf("}}\n");
        return 0;
    }
    printf("architecture        %s\n", c.architecture);
    printf("layers              %d (%d dense, then MoE) + %d MTP\n", c.num_hidden_layers,
           PD_MIN(c.first_k_dense_replace, c.num_hidden_layers), c.num_nextn_predict_layers);
    printf("hidden / heads      %d / %d (qk %d+%d, v %d)\n", c.hidden_size, c.num_attention_heads, c.qk_nope_head_dim,
           c.qk_rope_head_dim, c.v_head_dim);
    printf("MLA ranks           q_lora %d%s, kv_lora %d\n", c.q_lora_rank, c.q_lora_rank ? "" : " (q_proj)",
           c.kv_lora_rank);
    if (c.n_routed_experts)
        printf("MoE                 %d routed (top-%d, %d groups, top-%d groups, %s, %s) + %d shared, inter %d\n",
               c.n_routed_experts, c.num_experts_per_tok, c.n_group, c.topk_group, topk,
               c.scoring_func == MDL_SCORE_SIGMOID ? "sigmoid" : "softmax", c.n_shared_experts,
               c.moe_intermediate_size);
    printf("vocab               %d\n", c.vocab_size);
    printf("rope                theta %g%s", c.rope_theta, c.rope_yarn ? ", yarn" : "\n");
    if (c.rope_yarn) printf(" factor %g over %d positions\n", c.rope_factor, c.rope_original_max_pos);
    printf("parameters          %.3f B total, %.3f B active per token, %.3f B in MTP\n", pc.params_total / 1e9,
           pc.params_active / 1e9, pc.params_mtp / 1e9);
    printf("KV cache per token  %zu bytes (16-bit, %d layers x %d values)\n", pc.kv_bytes_per_token,
           c.num_hidden_layers + (c.num_nextn_predict_layers > 0), mdl_config_kv_row(&c));
    if (have_weights) {
        printf("weights             %zu tensors, %.2f GB:", n_tensors, bytes / 1e9);
        for (int d = 0; d < MDL_DT_COUNT; d++)
            if (per[d]) printf(" %s x%zu", mdl_dtype_name((mdl_dtype)d), per[d]);
        printf("\n");
    } else {
        printf("weights             none (config only)\n");
    }
    return 0;
}
