/* mdl_runner: one sequence, its own KV pool and context; prefill in chunks or decode one token at a time. */
#include <string.h>

#include "model/mdl_runner.h"

pd_status mdl_runner_open(mdl_runner *s, mdl_model *m, int max_len, int max_chunk, int block_size)
{
    memset(s, 0, sizeof *s);
    s->m = m;
    s->max_chunk = max_chunk;
    s->act_bf16 = 1;
    int nb = (max_len + block_size - 1) / block_size;
    pd_status st = mdl_kv_pool_create(&m->cfg, m->n_mtp, m->opts.kv_type, block_size, nb, &s->kv);
    if (st != PD_OK) return st;
    s->blocks = malloc((size_t)nb * sizeof(int));
    if (!s->blocks) {
        mdl_runner_close(s);
        return PD_ERR_NOMEM;
    }
    s->n_blocks = nb;
    if ((st = mdl_kv_alloc(s->kv, nb, s->blocks)) != PD_OK ||
        (st = mdl_ctx_create(m, max_chunk, max_chunk, &s->ctx)) != PD_OK) {
        mdl_runner_close(s);
        return st;
    }
    return PD_OK;
}

void mdl_runner_close(mdl_runner *s)
{
    mdl_ctx_destroy(s->ctx);
    mdl_kv_pool_destroy(s->kv);
    free(s->blocks);
    memset(s, 0, sizeof *s);
}

static pd_status feed(mdl_runner *s, const int32_t *tokens, const float *mtp_hidden, int n, int pos0,
                      mdl_attn_mode mode, int all_logits, float *logits, float *hidden)
{
    const int V = s->m->cfg.vocab_size, D = s->m->cfg.hidden_size;
    int step = mode == MDL_ATTN_DECODE ? 1 : s->max_chunk;
    int rows[4096];
    const int *table = s->blocks;
    for (int i = 0; i < n; i += step) {
        int k = PD_MIN(step, n - i);
        int start[2] = {0, k}, ctx_len = pos0 + i;
        int nl = all_logits ? k : (i + k == n ? 1 : 0);
        if (nl > (int)PD_ARRAY_LEN(rows)) return PD_ERR_RANGE;
        for (int r = 0; r < nl; r++) rows[r] = all_logits ? r : k - 1;
        mdl_batch b = {.n_seqs = 1, .n_tokens = k, .tokens = tokens + i, .seq_start = start, .ctx_len = &ctx_len,
                       .block_table = &table, .logits_rows = rows, .n_logits = nl, .attn = mode,
                       .mtp_hidden = mtp_hidden ? mtp_hidden + (size_t)i * D : NULL,
                       .act_bf16 = s->act_bf16 && mode == MDL_ATTN_PREFILL};
        float *lo = all_logits ? logits + (size_t)i * V : logits;
        pd_status st = mtp_hidden ? mdl_forward_mtp(s->ctx, s->kv, &b, nl ? lo : NULL)
                                  : mdl_forward(s->ctx, s->kv, &b, nl ? lo : NULL);
        if (st != PD_OK) return st;
        if (hidden) memcpy(hidden + (size_t)i * D, mdl_ctx_hidden(s->ctx), (size_t)k * D * sizeof(float));
    }
    return PD_OK;
}

pd_status mdl_runner_feed(mdl_runner *s, const int32_t *tokens, int n, int pos0, mdl_attn_mode mode, int all_logits,
                        float *logits, float *hidden)
{
    return feed(s, tokens, NULL, n, pos0, mode, all_logits, logits, hidden);
}

pd_status mdl_runner_feed_mtp(mdl_runner *s, const int32_t *tokens, const float *hidden, int n, int pos0,
                            mdl_attn_mode mode, float *logits, float *hidden_out)
{
    return feed(s, tokens, hidden, n, pos0, mode, 1, logits, hidden_out);
}
