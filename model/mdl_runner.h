/* A single sequence on a model with its own small KV pool and context: the simplest way to run the model
 * (offline generation, the logits tool, tests). Servers batch many sequences through mdl_forward directly. */
#ifndef MDL_RUNNER_H
#define MDL_RUNNER_H

#include "model/mdl.h"

/* One sequence on one model: a pool and context sized for it. */
typedef struct {
    mdl_model *m;
    mdl_kv_pool *kv;
    mdl_ctx *ctx;
    int *blocks;
    int n_blocks;
    int max_chunk;
    int act_bf16; /* prefill-form feeds are prompt prefills (mdl_batch.act_bf16); mdl_runner_open sets 1, callers may
                   * clear it for exact f32 activations */
} mdl_runner;

pd_status mdl_runner_open(mdl_runner *s, mdl_model *m, int max_len, int max_chunk, int block_size);
void mdl_runner_close(mdl_runner *s);
/* Feeds tokens[0..n) starting at position pos0 in chunks of at most max_chunk (prefill form) or one at a time
 * (decode form); writes logits of every position into logits[n][vocab] when all_logits, else only the last
 * one into logits[vocab]; hidden (optional) receives every position's final hidden state [n][hidden]. */
pd_status mdl_runner_feed(mdl_runner *s, const int32_t *tokens, int n, int pos0, mdl_attn_mode mode, int all_logits,
                        float *logits, float *hidden);
/* The MTP layer over pairs (hidden[i], tokens[i]) at positions pos0+i; logits of every position. */
pd_status mdl_runner_feed_mtp(mdl_runner *s, const int32_t *tokens, const float *hidden, int n, int pos0,
                            mdl_attn_mode mode, float *logits, float *hidden_out);

#endif
