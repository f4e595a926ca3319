/* The paged KV pool: one page-aligned region of n_blocks blocks (registered for RMA by the servers; a huge-page
 * mapping when the pool owns it), and a free-list of block ids. Allocation is all-or-nothing so a failed
 * reservation never strands blocks. */
#include <unistd.h>

#include "model/mdl.h"

size_t mdl_kv_pool_bytes(const mdl_config *c, int n_mtp, krn_type type, int block_size, int n_blocks)
{
    return (size_t)(c->num_hidden_layers + n_mtp) * (size_t)block_size * (size_t)mdl_config_kv_row(c) *
           krn_type_size(type) * (size_t)n_blocks;
}

pd_status mdl_kv_pool_create(const mdl_config *c, int n_mtp, krn_type type, int block_size, int n_blocks,
                             mdl_kv_pool **out)
{
    return mdl_kv_pool_create_in(c, n_mtp, type, block_size, n_blocks, NULL, out);
}

pd_status mdl_kv_pool_create_in(const mdl_config *c, int n_mtp, krn_type type, int block_size, int n_blocks, void *mem,
                                mdl_kv_pool **out)
{
    if (block_size < 1 || n_blocks < 1) return PD_ERR_INVALID;
    mdl_kv_pool *p = calloc(1, sizeof *p);
    if (!p) return PD_ERR_NOMEM;
    p->n_layers = c->num_hidden_layers + n_mtp;
    p->row = mdl_config_kv_row(c);
    p->block_size = block_size;
    p->n_blocks = n_blocks;
    p->type = type;
    p->block_bytes = (size_t)p->n_layers * block_size * p->row * krn_type_size(type);
    size_t total;
    if (!pd_mul_ok(p->block_bytes, (size_t)n_blocks, &total)) {
        free(p);
        return PD_ERR_RANGE;
    }
    void *base = mem;
    if (!base) {
        base = pd_huge_map(total); /* attention streams the cached rows of every sequence, every step */
        if (!base) {
            free(p);
            return PD_ERR_NOMEM;
        }
        p->owns_base = 1;
    }
    p->base = base;
    p->free_list = malloc((size_t)n_blocks * sizeof *p->free_list);
    if (!p->free_list) {
        if (p->owns_base) pd_huge_unmap(base, total);
        free(p);
        return PD_ERR_NOMEM;
    }
    /* lowest ids on top of the stack */
    for (int i = 0; i < n_blocks; i++) p->free_list[i] = n_blocks - 1 - i;
    p->n_free = n_blocks;
    *out = p;
    return PD_OK;
}

void mdl_kv_pool_destroy(mdl_kv_pool *p)
{
    if (!p) return;
    if (p->base && p->owns_base) pd_huge_unmap(p->base, p->block_bytes * (size_t)p->n_blocks);
    free(p->free_list);
    free(p);
}

pd_status mdl_kv_alloc(mdl_kv_pool *p, int n, int *ids)
{
    if (n < 0) return PD_ERR_INVALID;
    if (n > p->n_free) return PD_ERR_BUSY;
    for (int i = 0; i < n; i++) ids[i] = p->free_list[--p->n_free];
    return PD_OK;
}

void mdl_kv_free(mdl_kv_pool *p, int n, const int *ids)
{
    for (int i = 0; i < n; i++) {
        PD_ASSERT(ids[i] >= 0 && ids[i] < p->n_blocks);
        PD_ASSERT(p->n_free < p->n_blocks);
        p->free_list[p->n_free++] = ids[i];
    }
}
