/* Rows through the routed experts held here, for expert parallelism (mdl.h: mdl_experts_run): what a MoE layer's
 * grouped path does for its own rows, for rows that other ranks sent, of any layer and pass. */
#include "model/mdl.h"

struct mdl_experts_ws_s {
    int max_rows, max_jobs;
    float *gg, *gu;         /* [max_rows, moe_inter] gate (then silu(gate) * up), up */
    krn_linear_item *items; /* [2 * max_jobs] */
    float *scratch;         /* krn_linear scratch for the widest expert product */
};

pd_status mdl_experts_ws_create(const mdl_model *m, int max_rows, int max_jobs, mdl_experts_ws **out)
{
    const mdl_config *c = &m->cfg;
    if (max_rows < 1 || max_jobs < 1) return PD_ERR_INVALID;
    mdl_experts_ws *w = calloc(1, sizeof *w);
    if (!w) return PD_ERR_NOMEM;
    const size_t F = (size_t)PD_MAX(1, c->moe_intermediate_size);
    w->max_rows = max_rows;
    w->max_jobs = max_jobs;
    w->gg = pd_aligned_alloc((size_t)max_rows * F * sizeof(float));
    w->gu = pd_aligned_alloc((size_t)max_rows * F * sizeof(float));
    w->items = calloc((size_t)2 * max_jobs, sizeof *w->items);
    w->scratch = pd_aligned_alloc(krn_linear_scratch(PD_MAX(c->hidden_size, c->moe_intermediate_size)) * sizeof(float));
    if (!w->gg || !w->gu || !w->items || !w->scratch) {
        mdl_experts_ws_destroy(w);
        return PD_ERR_NOMEM;
    }
    *out = w;
    return PD_OK;
}

void mdl_experts_ws_destroy(mdl_experts_ws *w)
{
    if (!w) return;
    free(w->gg);
    free(w->gu);
    free(w->items);
    free(w->scratch);
    free(w);
}

pd_status mdl_experts_run(const mdl_model *m, const mdl_expert_job *jobs, int n_jobs, mdl_experts_ws *w)
{
    const mdl_config *c = &m->cfg;
    const int F = c->moe_intermediate_size, D = c->hidden_size;
    int rows = 0;
    if (n_jobs > w->max_jobs) return PD_ERR_RANGE;
    for (int i = 0; i < n_jobs; i++) {
        const mdl_expert_job *j = &jobs[i];
        if (j->layer < 0 || j->layer >= m->n_layers + m->n_mtp || !m->layers[j->layer].is_moe || j->expert < m->exp0 ||
            j->expert >= m->exp1 || j->n < 0)
            return PD_ERR_INVALID;
        rows += j->n;
    }
    if (rows > w->max_rows) return PD_ERR_RANGE;
    int ni = 0;
    for (int i = 0, o = 0; i < n_jobs; o += jobs[i].n, i++) {
        const mdl_expert_job *j = &jobs[i];
        const mdl_layer *L = &m->layers[j->layer];
        if (!j->n) continue;
        w->items[ni++] = (krn_linear_item){&L->exp_gate[j->expert], j->in, j->n, F, w->gg + (size_t)o * F, j->flags};
        w->items[ni++] = (krn_linear_item){&L->exp_up[j->expert], j->in, j->n, F, w->gu + (size_t)o * F, j->flags};
    }
    if (!ni) return PD_OK;
    krn_linear_group(w->items, ni, w->scratch);
    krn_silu_mul(w->gg, w->gu, rows * F);
    ni = 0;
    for (int i = 0, o = 0; i < n_jobs; o += jobs[i].n, i++) {
        const mdl_expert_job *j = &jobs[i];
        if (j->n)
            w->items[ni++] = (krn_linear_item){
                &m->layers[j->layer].exp_down[j->expert], w->gg + (size_t)o * F, j->n, D, j->out, j->flags};
    }
    krn_linear_group(w->items, ni, w->scratch);
    return PD_OK;
}
