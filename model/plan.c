/* Captured decode plans: the batch sizes a decode step pads up to, one context per size (and per tokens per
 * sequence) fixed at start-up, and the choice of plan for a step. The engine's pool holds scratch blocks for the
 * padding rows (mdl_engine_pool_blocks). */
#include "model/engine_internal.h"

/* The captured sizes: the option's list (validated) or the default (powers of two up to max_num_seqs). */
pd_status mdl__plan_sizes(const mdl_engine_opts *o, int *sizes, int *n)
{
    *n = 0;
    if (o->n_graph_batch_sizes < 0) return PD_OK;
    if (o->n_graph_batch_sizes == 0) {
        for (int b = 1; b <= o->max_num_seqs && *n < MDL_MAX_GRAPH_SIZES; b *= 2) sizes[(*n)++] = b;
        return PD_OK;
    }
    if (o->n_graph_batch_sizes > MDL_MAX_GRAPH_SIZES) return PD_ERR_INVALID;
    for (int i = 0; i < o->n_graph_batch_sizes; i++) {
        int b = o->graph_batch_sizes[i];
        if (b < 1 || b > o->max_num_seqs || (i > 0 && b <= o->graph_batch_sizes[i - 1])) return PD_ERR_INVALID;
        sizes[(*n)++] = b;
    }
    return PD_OK;
}

int mdl_engine_pool_blocks(const mdl_engine_opts *o)
{
    int sizes[MDL_MAX_GRAPH_SIZES], n = 0;
    if (mdl__plan_sizes(o, sizes, &n) != PD_OK || n == 0) return o->n_blocks;
    int tps = o->num_speculative_tokens + 1;
    return o->n_blocks + (tps + o->block_size - 1) / o->block_size;
}

/* Every plan: per captured size, one of k+1 tokens per sequence and (with speculation) one of 1, for steps where
 * no sequence drafts. Contexts made before an error stay in e->plans for mdl_engine_destroy. */
pd_status mdl__plan_create_all(mdl_engine *e)
{
    const int k = e->k;
    for (int i = 0; i < e->n_sizes; i++) {
        for (int t = 0; t < (k > 0 ? 2 : 1); t++) {
            plan *pl = &e->plans[e->n_plans];
            pl->n_seqs = e->sizes[i];
            pl->tps = t == 0 ? e->tps : 1;
            pl->size_idx = i;
            pd_status st = mdl_ctx_create(e->m, pl->n_seqs * pl->tps, pl->n_seqs * pl->tps, &pl->ctx);
            if (st != PD_OK) return st;
            e->n_plans++;
        }
    }
    return PD_OK;
}

/* The plan for nd sequences of up to tps new tokens: the smallest captured size that holds them (fewest tokens
 * per sequence among equals), or -1. */
int mdl__plan_pick(const mdl_engine *e, int nd, int tps)
{
    int best = -1;
    for (int i = 0; i < e->n_plans; i++) {
        const plan *p = &e->plans[i];
        if (p->tps < tps || p->n_seqs < nd) continue;
        if (best < 0 || p->n_seqs < e->plans[best].n_seqs ||
            (p->n_seqs == e->plans[best].n_seqs && p->tps < e->plans[best].tps))
            best = i;
    }
    return best;
}
