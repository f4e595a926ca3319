/* pdserve-model logits: logits at every prompt position through the prefill path (default) or the decode
 * path (--decode), and the MTP layer's logits (--mtp), as JSON. The numerics debugging tool; its output
 * format is stable. */
#include <stdio.h>
#include <string.h>

#include "model/mdl_runner.h"
#include "tools/tool_util.h"

static void print_rows(const char *key, const float *v, int n, int V)
{
    printf(",\"%s\":[", key);
    for (int i = 0; i < n; i++) {
        printf("%s[", i ? "," : "");
        for (int j = 0; j < V; j++) printf("%s%.9g", j ? "," : "", v[(size_t)i * V + j]);
        printf("]");
    }
    printf("]");
}

int cmd_logits(int argc, char **argv)
{
    const char *model = NULL, *toks = NULL, *v;
    int decode = 0, mtp = 0, block = 16, chunk = 0, prefill_bf16 = 1;
    mdl_load_opts lo = mdl_load_defaults();
    lo.progress = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--model")) { if (!(model = tool_arg(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--tokens")) { if (!(toks = tool_arg(argc, argv, &i))) return 2; }
        else if (!strcmp(a, "--decode")) decode = 1;
        else if (!strcmp(a, "--mtp")) mtp = 1;
        else if (!strcmp(a, "--no-prefill-bf16")) prefill_bf16 = 0;
        else if (!strcmp(a, "--block-size")) { if (!(v = tool_arg(argc, argv, &i))) return 2; block = atoi(v); }
        else if (!strcmp(a, "--chunk")) { if (!(v = tool_arg(argc, argv, &i))) return 2; chunk = atoi(v); }
        else if (!strcmp(a, "--dtype") || !strcmp(a, "--kv-cache-dtype")) {
            if (!(v = tool_arg(argc, argv, &i))) return 2;
            if (tool_parse_type(v, !strcmp(a, "--dtype") ? &lo.weight_type : &lo.kv_type) != PD_OK) {
                fprintf(stderr, "%s: expected float32 or bfloat16, got '%s'\n", a, v);
                return 2;
            }
        }
        else if (!strcmp(a, "--help")) {
            printf(
                "usage: pdserve-model logits --model DIR --tokens 5,17,300 [--decode] [--mtp] [--dtype "
                "float32|bfloat16]\n"
                "       [--kv-cache-dtype float32|bfloat16] [--block-size N] [--chunk N] [--no-prefill-bf16]\n"
                "  --no-prefill-bf16  exact f32 activations on the prefill path (default: bf16 activations in the\n"
                "                     BF16-weight GEMMs where the CPU has AVX512-BF16, as servers prefill prompts)\n");
            return 0;
        }
        else { fprintf(stderr, "logits: unknown option '%s'\n", a); return 2; }
    }
    if (!model || !toks) {
        fprintf(stderr, "usage: pdserve-model logits --model DIR --tokens 5,17,300 [--decode] [--mtp]\n");
        return 2;
    }
    if (block < 1) { fprintf(stderr, "logits: --block-size must be positive\n"); return 2; }
    int32_t *ids = NULL;
    int n = 0;
    if (tool_parse_ids(toks, &ids, &n) != PD_OK) {
        fprintf(stderr, "logits: --tokens must be comma-separated ids\n");
        return 2;
    }
    char err[1024];
    mdl_model *m = NULL;
    if (mdl_model_load(model, &lo, &m, err, sizeof err) != PD_OK) {
        fprintf(stderr, "logits: %s\n", err);
        free(ids);
        return 1;
    }
    int rc = 1;
    const int V = m->cfg.vocab_size, D = m->cfg.hidden_size;
    for (int i = 0; i < n; i++)
        if (ids[i] >= V) {
            fprintf(stderr, "logits: token %d is outside the vocabulary (%d)\n", ids[i], V);
            goto free_model;
        }
    if (mtp && m->n_mtp == 0) { fprintf(stderr, "logits: this checkpoint has no MTP layer\n"); goto free_model; }
    mdl_runner r;
    if (chunk <= 0) chunk = n;
    if (mdl_runner_open(&r, m, n, chunk, block) != PD_OK) {
        fprintf(stderr, "logits: out of memory\n");
        goto free_model;
    }
    r.act_bf16 = prefill_bf16;
    float *lg = malloc((size_t)n * V * sizeof(float)), *hid = malloc((size_t)n * D * sizeof(float));
    mdl_attn_mode mode = decode ? MDL_ATTN_DECODE : MDL_ATTN_PREFILL;
    pd_status st = lg && hid ? mdl_runner_feed(&r, ids, n, 0, mode, 1, lg, hid) : PD_ERR_NOMEM;
    if (st == PD_OK) {
        printf("{\"positions\":[");
        for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", i);
        printf("]");
        print_rows("logits", lg, n, V);
        if (mtp && n > 1) {
            st = mdl_runner_feed_mtp(&r, ids + 1, hid, n - 1, 0, mode, lg, NULL);
            if (st == PD_OK) print_rows("mtp_logits", lg, n - 1, V);
        }
        printf("}\n");
    }
    if (st != PD_OK) fprintf(stderr, "logits: forward failed: %s\n", pd_status_str(st));
    else rc = 0;
    free(lg);
    free(hid);
    mdl_runner_close(&r);
free_model:
    mdl_model_destroy(m);
    free(ids);
    return rc;
}
