/* The DeepSeek-V2/V3 forward pass over a batch of sequences (float32 activations; a prompt-prefill pass may let
 * the GEMMs over BF16 weights round them to bf16, mdl_batch.act_bf16).
 * Per layer: RMSNorm -> MLA (q via q_lora or q_proj; kv_a -> latent norm + rotated rope key written to the
 * paged cache; attention in the prefill (decompressed, tiled) or decode (absorbed) form) -> o_proj ->
 * residual -> RMSNorm -> dense SwiGLU or MoE (routed experts grouped by token + shared experts) -> residual.
 * Every buffer is planned in mdl_ctx_create; a forward pass never allocates. */
#include <string.h>

#include "model/mdl.h"

#define ATTN_TILE 256  /* keys per attention tile (one kernel call; its queries are transposed once per call) */
#define DEC_QCHUNK 16  /* decode: queries of one sequence attended together (one group of latent-row passes) */
#define DEC_SPLIT 4    /* decode: key tiles scored side by side (split-K), then merged in tile order */
#define DEC_UGROUP 16  /* decode: (query, head) units per piece, the attention kernel's lanes */
#define DEC_ABS 32     /* decode: tokens (of any sequences) whose absorbed products run together, per head */
/* Expert parallelism: tokens per exchange of a MoE layer (bounds each pass's buffer of expert outputs). */
#define EP_CHUNK 256
/* Up to this many tokens, a MoE layer runs all its experts' products as two pool jobs (gate/up, then down) over
 * per-slot copies of the inputs; above it each expert has enough rows to run on its own. */
#define MOE_GROUP_TOKENS 32

struct mdl_ctx_s {
    const mdl_model *m;
    int max_tokens, max_logits;
    float *x;        /* [T, D] residual stream (final hidden state after the last layer) */
    float *xn;       /* [T, D] normalised input of a sub-block */
    float *tmp;      /* [T, D] sub-block output */
    float *qa;       /* [T, q_lora] */
    float *q;        /* [T, H*qk] */
    float *kva;      /* [T, kv_lora + rope] */
    float *attn;     /* [T, H*v] */
    float *cosb, *sinb; /* [T, rope/2] */
    int *q_limit;    /* [T] */
    float *am, *al;  /* [T*H] online softmax state */
    /* prefill attention tile */
    float *lat;      /* [ATTN_TILE, kv_lora] */
    float *kpe;      /* [ATTN_TILE, rope] */
    float *kvb;      /* [ATTN_TILE, H*(nope+v)] */
    float *scores;   /* [ATTN_TILE] */
    /* decode attention */
    float *qabs;     /* [da, H, kv_lora] */
    float *acc_lat;  /* [da, H, kv_lora] */
    int da;          /* tokens per absorbed chunk this context holds: min(DEC_ABS, max_tokens) */
    int dq;          /* decode queries per chunk this context holds: min(DEC_QCHUNK, max_tokens) */
    float *dlat;     /* [DEC_SPLIT, ATTN_TILE, kv_lora] each split's latent rows */
    float *dkpe;     /* [DEC_SPLIT, ATTN_TILE, rope] */
    float *dm, *dl;  /* [DEC_SPLIT, dq*H] each split's partial softmax state */
    float *dacc;     /* [DEC_SPLIT, dq, H, kv_lora] */
    /* feed-forward */
    float *g, *u;    /* [T, F] */
    float *xg, *yg;  /* [T, D] gathered rows of one expert, its output */
    float *moe;      /* [T, D] */
    float *rscore;   /* [T, E] router scores */
    float *rsel;     /* [E] selection scores of one token */
    int *topi;       /* [T, K] */
    float *topw;     /* [T, K] */
    int *ecount, *eoff; /* [E], [E+1] */
    int *elist;      /* [T*K] token*K + slot */
    float *ecat;     /* [T, 2D] MTP input concat */
    /* grouped MoE (T <= MOE_GROUP_TOKENS): one row per (token, expert slot), in expert order (elist) */
    float *gx, *gy;  /* [GT*K, D] gathered inputs, expert outputs */
    float *gg, *gu;  /* [GT*K, moe_inter] gate (then silu(gate)*up), up */
    krn_linear_item *items; /* [2E + 2] */
    float *epy;      /* [min(T, EP_CHUNK)*K, D] expert parallelism: each pick's expert output (mdl_ep); NULL without */
    struct {
        void *p;
        size_t len;
    } maps[64];      /* the buffers ctx_alloc mapped */
    int n_maps;
    float *lrows;    /* [max_logits, D] */
    float *scratch;  /* krn_linear scratch */
    uint8_t *amax_ws; /* krn_linear_argmax scratch for max_logits rows */
    float *lrows2;    /* [max_logits, D] lrows reordered: full rows, then screened rows */
    int *lperm;       /* [max_logits] the logits row of each reordered row */
    int32_t *lamax;   /* [max_logits] the screened rows' argmax */
    unsigned lin_flags; /* this pass's products: KRN_LINEAR_BF16_ACT for prompt prefill (mdl_batch.act_bf16), else 0 */
};

static size_t max_cols(const mdl_config *c)
{
    size_t m = (size_t)c->hidden_size * 2;
    m = PD_MAX(m, (size_t)c->q_lora_rank);
    m = PD_MAX(m, (size_t)c->kv_lora_rank);
    m = PD_MAX(m, (size_t)c->num_attention_heads * c->v_head_dim);
    m = PD_MAX(m, (size_t)c->intermediate_size);
    m = PD_MAX(m, (size_t)c->moe_intermediate_size * PD_MAX(1, c->n_shared_experts));
    return m;
}

/* A buffer of the context: large ones are mapped (zero pages until written), so a context planned for a long
 * prompt costs resident memory only for the rows passes really use; small ones come from the allocator. */
#define CTX_MAP_MIN ((size_t)1 << 20)
static void *ctx_alloc(mdl_ctx *x, size_t bytes)
{
    if (bytes < CTX_MAP_MIN || x->n_maps == (int)PD_ARRAY_LEN(x->maps)) return pd_aligned_alloc(bytes);
    void *p = pd_huge_map(bytes);
    if (p) {
        x->maps[x->n_maps].p = p;
        x->maps[x->n_maps++].len = bytes;
    }
    return p;
}

static void ctx_free(mdl_ctx *x, void *p)
{
    for (int i = 0; p && i < x->n_maps; i++)
        if (x->maps[i].p == p) {
            pd_huge_unmap(p, x->maps[i].len);
            return;
        }
    free(p);
}

pd_status mdl_ctx_create(const mdl_model *m, int max_tokens, int max_logits, mdl_ctx **out)
{
    if (max_tokens < 1 || max_logits < 0) return PD_ERR_INVALID;
    const mdl_config *c = &m->cfg;
    const size_t T = (size_t)max_tokens, D = (size_t)c->hidden_size, H = (size_t)c->num_attention_heads;
    const size_t qk = (size_t)mdl_config_qk_head_dim(c), kvl = (size_t)c->kv_lora_rank;
    const size_t rope = (size_t)c->qk_rope_head_dim, nv = (size_t)c->qk_nope_head_dim + (size_t)c->v_head_dim;
    const size_t E = (size_t)PD_MAX(1, c->n_routed_experts), K = (size_t)PD_MAX(1, c->num_experts_per_tok);
    size_t F = (size_t)PD_MAX(c->intermediate_size, c->moe_intermediate_size * PD_MAX(1, c->n_shared_experts));
    mdl_ctx *x = calloc(1, sizeof *x);
    if (!x) return PD_ERR_NOMEM;
    x->m = m;
    x->max_tokens = max_tokens;
    x->max_logits = max_logits;
    int ok = 1;
#define ALLOC(field, count)                                                   \
    do {                                                                      \
        x->field = ctx_alloc(x, (size_t)(count) * sizeof(*x->field));         \
        ok = ok && x->field != NULL;                                          \
    } while (0)
    ALLOC(x, T * D);
    ALLOC(xn, T * D);
    ALLOC(tmp, T * D);
    ALLOC(qa, T * PD_MAX((size_t)c->q_lora_rank, 1));
    ALLOC(q, T * H * qk);
    ALLOC(kva, T * (kvl + rope));
    ALLOC(attn, T * H * (size_t)c->v_head_dim);
    ALLOC(cosb, T * rope / 2);
    ALLOC(sinb, T * rope / 2);
    ALLOC(q_limit, T);
    ALLOC(am, T * H);
    ALLOC(al, T * H);
    ALLOC(lat, ATTN_TILE * kvl);
    ALLOC(kpe, ATTN_TILE * rope);
    ALLOC(kvb, ATTN_TILE * H * nv);
    ALLOC(scores, ATTN_TILE);
    x->da = (int)PD_MIN((size_t)DEC_ABS, T);
    ALLOC(qabs, (size_t)x->da * H * kvl);
    ALLOC(acc_lat, (size_t)x->da * H * kvl);
    x->dq = (int)PD_MIN((size_t)DEC_QCHUNK, T);
    ALLOC(dlat, (size_t)DEC_SPLIT * ATTN_TILE * kvl);
    ALLOC(dkpe, (size_t)DEC_SPLIT * ATTN_TILE * rope);
    ALLOC(dm, (size_t)DEC_SPLIT * x->dq * H);
    ALLOC(dl, (size_t)DEC_SPLIT * x->dq * H);
    ALLOC(dacc, (size_t)DEC_SPLIT * x->dq * H * kvl);
    ALLOC(g, T * F);
    ALLOC(u, T * F);
    if (m->opts.ep_size <= 1) { /* the per-expert path; expert parallelism sends the rows away instead */
        ALLOC(xg, T * D);
        ALLOC(yg, T * D);
    }
    ALLOC(moe, T * D);
    ALLOC(rscore, T * E);
    ALLOC(rsel, E);
    ALLOC(topi, T * K);
    ALLOC(topw, T * K);
    ALLOC(ecount, E);
    ALLOC(eoff, E + 1);
    ALLOC(elist, T * K);
    ALLOC(ecat, T * 2 * D);
    ALLOC(lrows, (size_t)PD_MAX(max_logits, 1) * D);
    const size_t GK = (size_t)PD_MIN(max_tokens, MOE_GROUP_TOKENS) * K,
                 Fm = (size_t)PD_MAX(1, c->moe_intermediate_size);
    if (m->opts.ep_size <= 1) { /* the grouped path; expert parallelism sends the rows away instead */
        ALLOC(gx, GK * D);
        ALLOC(gy, GK * D);
        ALLOC(gg, GK * Fm);
        ALLOC(gu, GK * Fm);
    }
    ALLOC(items, 2 * E + 2);
    if (m->opts.ep_size > 1) ALLOC(epy, PD_MIN(T, (size_t)EP_CHUNK) * K * D);
    ALLOC(scratch, krn_linear_scratch((int)max_cols(c)));
    ALLOC(amax_ws, krn_linear_argmax_scratch(D, PD_MAX(max_logits, 1)));
    ALLOC(lrows2, (size_t)PD_MAX(max_logits, 1) * D);
    ALLOC(lperm, PD_MAX(max_logits, 1));
    ALLOC(lamax, PD_MAX(max_logits, 1));
#undef ALLOC
    if (!ok) {
        mdl_ctx_destroy(x);
        return PD_ERR_NOMEM;
    }
    *out = x;
    return PD_OK;
}

void mdl_ctx_destroy(mdl_ctx *x)
{
    if (!x) return;
    void *bufs[] = {x->x, x->xn, x->tmp, x->qa, x->q, x->kva, x->attn, x->cosb, x->sinb, x->q_limit, x->am,
                    x->al, x->lat, x->kpe, x->kvb, x->scores, x->qabs, x->acc_lat, x->g, x->u, x->xg, x->yg,
                    x->moe, x->epy, x->rscore, x->rsel, x->topi, x->topw, x->ecount, x->eoff, x->elist, x->ecat,
                    x->lrows, x->scratch, x->gx, x->gy, x->gg, x->gu, x->items, x->dlat, x->dkpe, x->dm, x->dl,
                    x->dacc, x->amax_ws, x->lrows2, x->lperm, x->lamax};
    for (size_t i = 0; i < PD_ARRAY_LEN(bufs); i++) ctx_free(x, bufs[i]);
    free(x);
}

const float *mdl_ctx_hidden(const mdl_ctx *c) { return c->x; }

/* The products' flags for a pass: bf16 activations for a prompt prefill, except on W8A8 models, whose experts
 * already quantise their activations to int8 per token: on the v3tiny golden fixture the two roundings together
 * change a greedy token that either alone keeps (docs/kernels.md). */
static unsigned pass_flags(const mdl_model *m, const mdl_batch *b)
{
    return b->act_bf16 && m->opts.quant != MDL_QUANT_W8A8 ? KRN_LINEAR_BF16_ACT : 0;
}

/* One product of this pass (see lin_flags): y[m, ldy] = in[m, w->cols] . W^T. */
static void linear(mdl_ctx *x, const krn_mat *w, const float *in, int m, float *y, int ldy)
{
    const krn_linear_item it = {w, in, m, ldy, y, x->lin_flags};
    krn_linear_group(&it, 1, x->scratch);
}

/* ---- KV rows ------------------------------------------------------------------------------------------ */

static void kv_store(mdl_kv_pool *kv, const int *table, int layer, int pos, const float *row)
{
    void *dst = mdl_kv_row(kv, table[pos / kv->block_size], layer, pos % kv->block_size);
    if (kv->type == KRN_F32) {
        memcpy(dst, row, (size_t)kv->row * sizeof(float));
    } else if (kv->type == KRN_F16) {
        uint16_t *d = dst;
        for (int i = 0; i < kv->row; i++) d[i] = krn_f32_to_f16(row[i]);
    } else {
        krn_bf16 *d = dst;
        for (int i = 0; i < kv->row; i++) d[i] = krn_f32_to_bf16(row[i]);
    }
}

/* Gathers rows [p0, p0+n) of one layer: latent into lat[n][kvl], rope key into kpe[n][rope]. */
static void kv_gather(const mdl_kv_pool *kv, const int *table, int layer, int p0, int n, int kvl, float *lat,
                      float *kpe)
{
    const int rope = kv->row - kvl;
    const size_t es = krn_type_size(kv->type);
    for (int j = 0; j < n; j++) {
        int pos = p0 + j;
        const uint8_t *src = mdl_kv_row(kv, table[pos / kv->block_size], layer, pos % kv->block_size);
        krn_to_f32(kv->type, src, lat + (size_t)j * kvl, kvl);
        krn_to_f32(kv->type, src + (size_t)kvl * es, kpe + (size_t)j * rope, rope);
    }
}

/* ---- attention ---------------------------------------------------------------------------------------- */

/* MLA's absorbed decode products for the n tokens of a chunk, one head at a time (every token of the chunk, of
 * whichever sequence, against that head's rows of kv_b: the weights are read once per chunk, not once per token),
 * split over the pool by heads: the key half (value = 0) maps q_nope[t, h] to qabs[t, h] through kv_b's rows of
 * head h; the value half (value = 1) maps acc_lat[t, h] back to out[t, h]. Each (token, head) is one fixed
 * sequence of FMAs whatever n and the split (krn_matmul_sub / krn_linear_rows rows are independent), so a query
 * gets the same bits in a verify pass as in a decode step. */
typedef struct {
    const mdl_layer *L;
    const mdl_config *c;
    const float *q;  /* [n, H*qk] queries (key half) */
    float *lat;      /* [n, H, kvl]: qabs (written, key half) or acc_lat (read, value half) */
    float *out;      /* [n, H*v] (value half) */
    int value, n;
} absorb_job;

static void absorb_task(void *p, int ith, int nth)
{
    const absorb_job *j = p;
    const mdl_config *c = j->c;
    const int H = c->num_attention_heads, nope = c->qk_nope_head_dim, vd = c->v_head_dim, kvl = c->kv_lora_rank;
    const int qk = nope + c->qk_rope_head_dim, nv = nope + vd;
    const int h0 = (int)((long)H * ith / nth), h1 = (int)((long)H * (ith + 1) / nth);
    for (int h = h0; h < h1; h++) {
        if (!j->value)
            krn_matmul_sub(&j->L->kv_b, h * nv, 0, j->q + (size_t)h * qk, (size_t)H * qk, j->n, nope, kvl,
                           j->lat + (size_t)h * kvl, (size_t)H * kvl, 0);
        else
            krn_linear_rows(&j->L->kv_b, h * nv + nope, vd, j->lat + (size_t)h * kvl, (size_t)H * kvl, j->n,
                            j->out + (size_t)h * vd, (size_t)H * vd);
    }
}

/* Pieces for `heads` absorbed products of `macs` each: inline below 64K multiply-adds (waking the pool costs
 * more), else two per thread. */
static int absorb_pieces(int heads, double macs)
{
    if ((double)heads * macs < (1 << 16)) return 1;
    return PD_MIN(heads, 2 * krn_threads_get());
}

/* Decode attention over the latent rows, split over the keys (flash-decoding): the key tiles of a round are
 * gathered side by side, each tile's partial softmax state is computed from scratch by pieces of DEC_UGROUP units,
 * then every unit folds the partials into its running state in tile order. The split is fixed (per ATTN_TILE keys,
 * whatever the thread count or the number of queries), so a query gets the same bits in a verify pass as in a plain
 * decode step; with one tile the fold is an exact copy of the tile's state. */
typedef struct {
    mdl_ctx *x;
    const mdl_kv_pool *kv;
    const int *table;
    int layer, k0, nt, nq, H, kvl, rope, ngroups;
    int last;             /* keys the chunk sees: its last query's position + 1 */
    float *acc;           /* [nq, H, kvl] the chunk's running state (in acc_lat) */
    krn_attn_tile_args a; /* the chunk's arguments; per piece: keys, state and units change */
} dec_attn_job;

/* Keys of tile t of the round. */
static int tile_keys(const dec_attn_job *j, int t) { return PD_MIN(ATTN_TILE, j->last - (j->k0 + t * ATTN_TILE)); }

static void dec_gather_task(void *p, int ith, int nth)
{
    const dec_attn_job *j = p;
    for (int t = ith; t < j->nt; t += nth) {
        kv_gather(j->kv, j->table, j->layer, j->k0 + t * ATTN_TILE, tile_keys(j, t), j->kvl,
                  j->x->dlat + (size_t)t * ATTN_TILE * j->kvl, j->x->dkpe + (size_t)t * ATTN_TILE * j->rope);
    }
}

static void dec_attend_task(void *p, int ith, int nth)
{
    const dec_attn_job *j = p;
    mdl_ctx *x = j->x;
    const int units = j->nq * j->H, slot = j->x->dq * j->H;
    for (int piece = ith; piece < j->nt * j->ngroups; piece += nth) {
        const int t = piece / j->ngroups, u0 = piece % j->ngroups * DEC_UGROUP, u1 = PD_MIN(units, u0 + DEC_UGROUP);
        krn_attn_tile_args a = j->a;
        a.nk = tile_keys(j, t);
        a.k_pos0 = j->k0 + t * ATTN_TILE;
        a.ka = a.v = x->dlat + (size_t)t * ATTN_TILE * j->kvl;
        a.kb = x->dkpe + (size_t)t * ATTN_TILE * j->rope;
        a.m = x->dm + (size_t)t * slot;
        a.l = x->dl + (size_t)t * slot;
        a.acc = x->dacc + (size_t)t * slot * j->kvl;
        for (int u = u0; u < u1; u++) {
            a.m[u] = -INFINITY;
            a.l[u] = 0;
            memset(a.acc + (size_t)u * j->kvl, 0, (size_t)j->kvl * sizeof(float));
        }
        krn_attn_tile_units(&a, u0, u1);
    }
}

static void dec_merge_task(void *p, int ith, int nth)
{
    const dec_attn_job *j = p;
    mdl_ctx *x = j->x;
    const int units = j->nq * j->H, slot = j->x->dq * j->H, kvl = j->kvl;
    const int u0 = (int)((long)units * ith / nth), u1 = (int)((long)units * (ith + 1) / nth);
    for (int u = u0; u < u1; u++) {
        float *acc = j->acc + (size_t)u * kvl;
        for (int t = 0; t < j->nt; t++) {
            const float m2 = x->dm[(size_t)t * slot + u];
            if (m2 == -INFINITY) continue; /* the unit saw no key of this tile */
            const float m1 = x->am[u], mn = m1 > m2 ? m1 : m2;
            const float s1 = expf(m1 - mn), s2 = expf(m2 - mn); /* exp(-inf) = 0: an empty state adds nothing */
            const float *acc2 = x->dacc + ((size_t)t * slot + u) * kvl;
            for (int d = 0; d < kvl; d++) acc[d] = acc[d] * s1 + acc2[d] * s2;
            x->al[u] = x->al[u] * s1 + x->dl[(size_t)t * slot + u] * s2;
            x->am[u] = mn;
        }
    }
}

/* Prefill form: per sequence, kv_b decompresses each tile of latent rows into keys and values, then one online
 * softmax pass over the tiles (flash attention); out: x->attn. */
static void attn_prefill(mdl_ctx *x, mdl_kv_pool *kv, const mdl_batch *b, const mdl_layer *L, int cache_layer)
{
    const mdl_config *c = &x->m->cfg;
    const int H = c->num_attention_heads;
    const int nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim, vd = c->v_head_dim;
    const int qk = nope + rope, kvl = c->kv_lora_rank, nv = nope + vd;
    for (int s = 0; s < b->n_seqs; s++) {
        const int t0 = b->seq_start[s], n = b->seq_start[s + 1] - t0;
        if (n == 0) continue;
        const int total = b->ctx_len[s] + n; /* keys 0 .. total-1 */
        const int *table = b->block_table[s];
        float *acc = x->attn + (size_t)t0 * H * vd;
        krn_attn_init(n, H, vd, x->am, x->al, acc, H * vd, vd);
        for (int k0 = 0; k0 < total; k0 += ATTN_TILE) {
            int nk = PD_MIN(ATTN_TILE, total - k0);
            kv_gather(kv, table, cache_layer, k0, nk, kvl, x->lat, x->kpe);
            linear(x, &L->kv_b, x->lat, nk, x->kvb, H * nv);
            krn_attn_tile_args a = {
                .nq = n, .nh = H, .nk = nk, .da = nope, .db = rope, .dv = vd,
                .qa = x->q + (size_t)t0 * H * qk, .qa_stride = H * qk, .qa_hstride = qk,
                .qb = x->q + (size_t)t0 * H * qk + nope, .qb_stride = H * qk, .qb_hstride = qk,
                .ka = x->kvb, .ka_stride = H * nv, .ka_hstride = nv,
                .kb = x->kpe, .kb_stride = rope,
                .v = x->kvb + nope, .v_stride = H * nv, .v_hstride = nv,
                .q_limit = x->q_limit + t0, .k_pos0 = k0, .scale = x->m->softmax_scale,
                .m = x->am, .l = x->al, .acc = acc, .acc_stride = H * vd, .acc_hstride = vd,
                .scores = x->scores,
            };
            krn_attn_tile(&a);
        }
        krn_attn_finish(n, H, vd, x->al, acc, H * vd, vd);
    }
}

/* Decode (absorbed) form: per chunk of up to da tokens (of any sequences), kv_b's key half absorbed into every query
 * of the chunk head by head, attention over the latent rows per sequence, then the value half; out: x->attn. */
static void attn_decode(mdl_ctx *x, mdl_kv_pool *kv, const mdl_batch *b, const mdl_layer *L, int cache_layer)
{
    const mdl_config *c = &x->m->cfg;
    const int T = b->n_tokens, H = c->num_attention_heads;
    const int nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim, vd = c->v_head_dim;
    const int qk = nope + rope, kvl = c->kv_lora_rank;
    for (int c0 = 0; c0 < T; c0 += x->da) {
        const int c1 = PD_MIN(T, c0 + x->da), nc = c1 - c0;
        /* q_abs[t, h] = q_nope[t, h] . Wk[h]  ([nope] x [nope, kvl]) */
        absorb_job aj = {L, c, x->q + (size_t)c0 * H * qk, x->qabs, NULL, 0, nc};
        krn_parallel(absorb_task, &aj, absorb_pieces(H, (double)nc * nope * kvl));
        for (int s = 0; s < b->n_seqs; s++) {
            const int t0 = PD_MAX(b->seq_start[s], c0), t1 = PD_MIN(b->seq_start[s + 1], c1);
            for (int q0 = t0; q0 < t1; q0 += DEC_QCHUNK) {
                const int nq = PD_MIN(DEC_QCHUNK, t1 - q0);
                float *qa = x->qabs + (size_t)(q0 - c0) * H * kvl, *acc = x->acc_lat + (size_t)(q0 - c0) * H * kvl;
                krn_attn_init(nq, H, kvl, x->am, x->al, acc, H * kvl, kvl);
                /* keys this group of queries can see: up to its last query's position */
                const int last = b->ctx_len[s] + (q0 - b->seq_start[s]) + nq;
                PD_ASSERT(nq <= x->dq && x->q_limit[q0 + nq - 1] + 1 == last);
                dec_attn_job j = {
                    .x = x, .kv = kv, .table = b->block_table[s], .layer = cache_layer, .nq = nq, .H = H, .kvl = kvl,
                    .rope = rope, .ngroups = (nq * H + DEC_UGROUP - 1) / DEC_UGROUP, .last = last, .acc = acc,
                    .a = {.nq = nq, .nh = H, .da = kvl, .db = rope, .dv = kvl,
                          .qa = qa, .qa_stride = H * kvl, .qa_hstride = kvl,
                          .qb = x->q + (size_t)q0 * H * qk + nope, .qb_stride = H * qk, .qb_hstride = qk,
                          .ka_stride = kvl, .ka_hstride = 0, .kb_stride = rope, .v_stride = kvl, .v_hstride = 0,
                          .q_limit = x->q_limit + q0, .scale = x->m->softmax_scale,
                          .acc_stride = H * kvl, .acc_hstride = kvl, .scores = x->scores},
                };
                const int ntile = (last + ATTN_TILE - 1) / ATTN_TILE, nth = krn_threads_get();
                for (int r0 = 0; r0 < ntile; r0 += DEC_SPLIT) {
                    j.k0 = r0 * ATTN_TILE;
                    j.nt = PD_MIN(DEC_SPLIT, ntile - r0);
                    const double work = (double)j.nt * PD_MIN(last - j.k0, DEC_SPLIT * ATTN_TILE) * nq * H * 2 * kvl;
                    const int par = work < (1 << 16) ? 1 : nth;
                    krn_parallel(dec_gather_task, &j, PD_MIN(par, j.nt));
                    krn_parallel(dec_attend_task, &j, PD_MIN(par, j.nt * j.ngroups));
                    krn_parallel(dec_merge_task, &j, PD_MIN(par, nq * H));
                }
                krn_attn_finish(nq, H, kvl, x->al, acc, H * kvl, kvl);
            }
        }
        /* back out of the latent space through kv_b's value half: out[t, h] = Wv[h] . acc_lat[t, h] */
        absorb_job vj = {L, c, NULL, x->acc_lat, x->attn + (size_t)c0 * H * vd, 1, nc};
        krn_parallel(absorb_task, &vj, absorb_pieces(H, (double)nc * vd * kvl));
    }
}

static void attention(mdl_ctx *x, mdl_kv_pool *kv, const mdl_batch *b, const mdl_layer *L, int cache_layer)
{
    const mdl_config *c = &x->m->cfg;
    const int T = b->n_tokens, D = c->hidden_size, H = c->num_attention_heads;
    const int nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim;
    const int qk = nope + rope, kvl = c->kv_lora_rank;
    const float eps = c->rms_norm_eps;

    /* queries */
    /* both products of the normalised input in one pool job: the query's first one and kv_a (latent + rope key) */
    const krn_linear_item first[2] = {
        c->q_lora_rank > 0 ? (krn_linear_item){&L->q_a, x->xn, T, c->q_lora_rank, x->qa, x->lin_flags}
                           : (krn_linear_item){&L->q, x->xn, T, H * qk, x->q, x->lin_flags},
        {&L->kv_a, x->xn, T, kvl + rope, x->kva, x->lin_flags},
    };
    krn_linear_group(first, 2, x->scratch);
    if (c->q_lora_rank > 0) {
        for (int t = 0; t < T; t++) {
            float *r = x->qa + (size_t)t * c->q_lora_rank;
            krn_rmsnorm(r, L->q_a_norm, c->q_lora_rank, eps, r);
        }
        linear(x, &L->q_b, x->qa, T, x->q, H * qk);
    }
    /* latent + rope key, written to the cache */
    for (int s = 0; s < b->n_seqs; s++) {
        for (int t = b->seq_start[s]; t < b->seq_start[s + 1]; t++) {
            int pos = b->ctx_len[s] + (t - b->seq_start[s]);
            const float *cs = x->cosb + (size_t)t * rope / 2, *sn = x->sinb + (size_t)t * rope / 2;
            float *row = x->kva + (size_t)t * (kvl + rope);
            krn_rmsnorm(row, L->kv_a_norm, kvl, eps, row);
            krn_rope_interleaved(row + kvl, rope, cs, sn);
            for (int h = 0; h < H; h++)
                krn_rope_interleaved(x->q + (size_t)t * H * qk + (size_t)h * qk + nope, rope, cs, sn);
            kv_store(kv, b->block_table[s], cache_layer, pos, row);
            x->q_limit[t] = pos;
        }
    }

    if (b->attn == MDL_ATTN_PREFILL) attn_prefill(x, kv, b, L, cache_layer);
    else attn_decode(x, kv, b, L, cache_layer);
    linear(x, &L->o, x->attn, T, x->tmp, D);
    for (size_t i = 0; i < (size_t)T * D; i++) x->x[i] += x->tmp[i];
}

/* ---- feed-forward ------------------------------------------------------------------------------------- */

static void mlp(mdl_ctx *x, const krn_mat *gate, const krn_mat *up, const krn_mat *down, const float *in, int n,
                float *out)
{
    const int F = gate->rows;
    const krn_linear_item gu[2] = {{gate, in, n, F, x->g, x->lin_flags}, {up, in, n, F, x->u, x->lin_flags}};
    krn_linear_group(gu, 2, x->scratch);
    krn_silu_mul(x->g, x->u, n * F);
    linear(x, down, x->g, n, out, down->rows);
}

/* Picks the top k of v[n] (ignoring -inf), writing indices in descending order of value. */
static void topk(const float *v, int n, int k, int *idx)
{
    for (int i = 0; i < k; i++) {
        int best = -1;
        for (int j = 0; j < n; j++) {
            int taken = 0;
            for (int p = 0; p < i; p++) taken |= idx[p] == j;
            if (taken) continue;
            if (best < 0 || v[j] > v[best]) best = j;
        }
        idx[i] = best;
    }
}

static void route(mdl_ctx *x, const mdl_layer *L, int T)
{
    const mdl_config *c = &x->m->cfg;
    const int E = c->n_routed_experts, K = c->num_experts_per_tok, G = c->n_group;
    const int per = E / G;
    krn_linear(&L->router, x->xn, T, x->rscore, E, x->scratch);
    for (int t = 0; t < T; t++) {
        float *sc = x->rscore + (size_t)t * E;
        if (c->scoring_func == MDL_SCORE_SIGMOID)
            for (int e = 0; e < E; e++) sc[e] = 1.0f / (1.0f + expf(-sc[e]));
        else krn_softmax(sc, E);
        float *sel = x->rsel;
        for (int e = 0; e < E; e++) sel[e] = sc[e] + (L->router_bias ? L->router_bias[e] : 0.0f);
        int limited = G > 1 && (c->topk_method == MDL_TOPK_NOAUX_TC || c->topk_method == MDL_TOPK_GROUP_LIMITED_GREEDY);
        if (limited) {
            float gs[256];
            int gi[256];
            PD_ASSERT(G <= 256);
            for (int g = 0; g < G; g++) {
                const float *v = sel + g * per;
                if (c->topk_method == MDL_TOPK_NOAUX_TC) { /* sum of the group's top two */
                    int two[2];
                    int k2 = per >= 2 ? 2 : 1;
                    topk(v, per, k2, two);
                    gs[g] = v[two[0]] + (k2 == 2 ? v[two[1]] : 0.0f);
                } else { /* group_limited_greedy: the group's max */
                    float mx = v[0];
                    for (int i = 1; i < per; i++) mx = v[i] > mx ? v[i] : mx;
                    gs[g] = mx;
                }
            }
            topk(gs, G, c->topk_group, gi);
            for (int g = 0; g < G; g++) {
                int keep = 0;
                for (int i = 0; i < c->topk_group; i++) keep |= gi[i] == g;
                if (!keep)
                    for (int i = 0; i < per; i++) sel[g * per + i] = -INFINITY;
            }
        }
        int *ti = x->topi + (size_t)t * K;
        float *tw = x->topw + (size_t)t * K;
        topk(sel, E, K, ti);
        double sum = 0;
        for (int i = 0; i < K; i++) {
            tw[i] = sc[ti[i]]; /* weights from the unbiased scores */
            sum += tw[i];
        }
        int norm = K > 1 && c->norm_topk_prob;
        for (int i = 0; i < K; i++) {
            if (norm) tw[i] = (float)(tw[i] / (sum + 1e-20));
            if (c->arch == MDL_ARCH_DEEPSEEK_V3 || !norm) tw[i] *= c->routed_scaling_factor;
        }
    }
}

/* The experts of a small batch: every (token, slot) row gathered in expert order, then all gate/up products
 * (routed and shared) as one pool job and all down products as another. Each row meets the same kernels as in
 * the per-expert loop, and the outputs are added in the same order, so the two paths give the same bits. */
static void moe_grouped(mdl_ctx *x, const mdl_layer *L, int T)
{
    const mdl_config *c = &x->m->cfg;
    const int E = c->n_routed_experts, K = c->num_experts_per_tok, D = c->hidden_size, Fm = c->moe_intermediate_size;
    const int n = T * K, sh = c->n_shared_experts > 0, Fs = sh ? L->sh_gate.rows : 0;
    for (int r = 0; r < n; r++) memcpy(x->gx + (size_t)r * D, x->xn + (size_t)(x->elist[r] / K) * D, (size_t)D * 4);
    int ni = 0;
    for (int e = 0; e < E; e++) {
        const int o = x->eoff[e], ne = x->eoff[e + 1] - o;
        if (!ne) continue;
        x->items[ni++] = (krn_linear_item){&L->exp_gate[e], x->gx + (size_t)o * D, ne, Fm, x->gg + (size_t)o * Fm,
                                           x->lin_flags};
        x->items[ni++] =
            (krn_linear_item){&L->exp_up[e], x->gx + (size_t)o * D, ne, Fm, x->gu + (size_t)o * Fm, x->lin_flags};
    }
    if (sh) {
        x->items[ni++] = (krn_linear_item){&L->sh_gate, x->xn, T, Fs, x->g, x->lin_flags};
        x->items[ni++] = (krn_linear_item){&L->sh_up, x->xn, T, Fs, x->u, x->lin_flags};
    }
    krn_linear_group(x->items, ni, x->scratch);
    krn_silu_mul(x->gg, x->gu, n * Fm);
    if (sh) krn_silu_mul(x->g, x->u, T * Fs);
    ni = 0;
    for (int e = 0; e < E; e++) {
        const int o = x->eoff[e], ne = x->eoff[e + 1] - o;
        if (ne)
            x->items[ni++] =
                (krn_linear_item){&L->exp_down[e], x->gg + (size_t)o * Fm, ne, D, x->gy + (size_t)o * D, x->lin_flags};
    }
    if (sh) x->items[ni++] = (krn_linear_item){&L->sh_down, x->g, T, D, x->tmp, x->lin_flags};
    krn_linear_group(x->items, ni, x->scratch);
    for (int r = 0; r < n; r++)
        krn_axpy(D, x->topw[x->elist[r]], x->gy + (size_t)r * D, x->moe + (size_t)(x->elist[r] / K) * D);
}

/* Expert parallelism: the picks' rows go to the ranks that hold their experts (mdl_ep), EP_CHUNK tokens at a time
 * (one exchange each, bounding the outputs' buffer), while the shared experts run here. Each token's outputs are
 * added in ascending expert order, the order elist gives both single-process paths. */
static void moe_ep(mdl_ctx *x, const mdl_layer *L, int layer, int T)
{
    const mdl_config *c = &x->m->cfg;
    const int K = c->num_experts_per_tok, D = c->hidden_size;
    for (int t0 = 0; t0 < T; t0 += EP_CHUNK) {
        const int n = PD_MIN(EP_CHUNK, T - t0);
        x->m->ep->moe(x->m->ep, layer, x->xn + (size_t)t0 * D, n, x->topi + (size_t)t0 * K, x->lin_flags, x->epy);
        for (int t = 0; t < n; t++) {
            int ord[64];
            for (int k = 0; k < K; k++) ord[k] = k;
            for (int a = 1; a < K; a++) /* K is small: insertion sort by expert */
                for (int b = a;
                     b > 0 && x->topi[(size_t)(t0 + t) * K + ord[b]] < x->topi[(size_t)(t0 + t) * K + ord[b - 1]];
                     b--) {
                    const int tmp = ord[b];
                    ord[b] = ord[b - 1];
                    ord[b - 1] = tmp;
                }
            for (int k = 0; k < K; k++) {
                const size_t i = (size_t)(t0 + t) * K + (size_t)ord[k];
                krn_axpy(D, x->topw[i], x->epy + ((size_t)t * K + (size_t)ord[k]) * D, x->moe + (size_t)(t0 + t) * D);
            }
        }
    }
    if (c->n_shared_experts > 0) mlp(x, &L->sh_gate, &L->sh_up, &L->sh_down, x->xn, T, x->tmp);
}

static void moe(mdl_ctx *x, const mdl_layer *L, int layer, int T)
{
    const mdl_config *c = &x->m->cfg;
    const int E = c->n_routed_experts, K = c->num_experts_per_tok, D = c->hidden_size;
    route(x, L, T);
    /* group token slots by expert */
    memset(x->ecount, 0, (size_t)E * sizeof(int));
    for (int i = 0; i < T * K; i++) x->ecount[x->topi[i]]++;
    x->eoff[0] = 0;
    for (int e = 0; e < E; e++) x->eoff[e + 1] = x->eoff[e] + x->ecount[e];
    memset(x->ecount, 0, (size_t)E * sizeof(int));
    for (int i = 0; i < T * K; i++) {
        int e = x->topi[i];
        x->elist[x->eoff[e] + x->ecount[e]++] = i;
    }
    memset(x->moe, 0, (size_t)T * D * sizeof(float));
    if (x->m->ep) {
        moe_ep(x, L, layer, T);
    } else if (T <= MOE_GROUP_TOKENS) {
        moe_grouped(x, L, T);
    } else {
        for (int e = 0; e < E; e++) {
            int n = x->eoff[e + 1] - x->eoff[e];
            if (!n) continue;
            const int *lst = x->elist + x->eoff[e];
            for (int r = 0; r < n; r++) memcpy(x->xg + (size_t)r * D, x->xn + (size_t)(lst[r] / K) * D, (size_t)D * 4);
            mlp(x, &L->exp_gate[e], &L->exp_up[e], &L->exp_down[e], x->xg, n, x->yg);
            for (int r = 0; r < n; r++)
                krn_axpy(D, x->topw[lst[r]], x->yg + (size_t)r * D, x->moe + (size_t)(lst[r] / K) * D);
        }
        if (c->n_shared_experts > 0) mlp(x, &L->sh_gate, &L->sh_up, &L->sh_down, x->xn, T, x->tmp);
    }
    if (c->n_shared_experts > 0)
        for (size_t i = 0; i < (size_t)T * D; i++) x->moe[i] += x->tmp[i];
    for (size_t i = 0; i < (size_t)T * D; i++) x->x[i] += x->moe[i];
}

static void layer_forward(mdl_ctx *x, mdl_kv_pool *kv, const mdl_batch *b, const mdl_layer *L, int cache_layer)
{
    const mdl_config *c = &x->m->cfg;
    const int T = b->n_tokens, D = c->hidden_size;
    for (int t = 0; t < T; t++)
        krn_rmsnorm(x->x + (size_t)t * D, L->attn_norm, D, c->rms_norm_eps, x->xn + (size_t)t * D);
    attention(x, kv, b, L, cache_layer);
    for (int t = 0; t < T; t++)
        krn_rmsnorm(x->x + (size_t)t * D, L->ffn_norm, D, c->rms_norm_eps, x->xn + (size_t)t * D);
    if (L->is_moe) {
        moe(x, L, cache_layer, T);
    } else {
        mlp(x, &L->gate, &L->up, &L->down, x->xn, T, x->tmp);
        for (size_t i = 0; i < (size_t)T * D; i++) x->x[i] += x->tmp[i];
    }
}

/* ---- batch checks, rope tables, logits ---------------------------------------------------------------- */

static pd_status check_batch(const mdl_ctx *x, const mdl_kv_pool *kv, const mdl_batch *b)
{
    if (b->n_tokens < 1 || b->n_tokens > x->max_tokens || b->n_seqs < 1 || b->n_logits < 0 ||
        b->n_logits > x->max_logits)
        return PD_ERR_INVALID;
    if (b->seq_start[0] != 0 || b->seq_start[b->n_seqs] != b->n_tokens) return PD_ERR_INVALID;
    for (int s = 0; s < b->n_seqs; s++) {
        if (b->seq_start[s + 1] < b->seq_start[s] || b->ctx_len[s] < 0) return PD_ERR_INVALID;
        if (b->ctx_len[s] + (b->seq_start[s + 1] - b->seq_start[s]) > x->m->cfg.max_position_embeddings * 64)
            return PD_ERR_RANGE;
    }
    for (int i = 0; i < b->n_tokens; i++)
        if (b->tokens[i] < 0 || b->tokens[i] >= x->m->cfg.vocab_size) return PD_ERR_INVALID;
    for (int i = 0; i < b->n_logits; i++)
        if (b->logits_rows[i] < 0 || b->logits_rows[i] >= b->n_tokens) return PD_ERR_INVALID;
    (void)kv;
    return PD_OK;
}

static void rope_tables(mdl_ctx *x, const mdl_batch *b)
{
    const int half = x->m->cfg.qk_rope_head_dim / 2;
    for (int s = 0; s < b->n_seqs; s++)
        for (int t = b->seq_start[s]; t < b->seq_start[s + 1]; t++) {
            float pos = (float)(b->ctx_len[s] + (t - b->seq_start[s]));
            for (int i = 0; i < half; i++) {
                float ang = pos * x->m->rope_freqs[i]; /* float32 product, as the reference computes it */
                x->cosb[(size_t)t * half + i] = cosf(ang);
                x->sinb[(size_t)t * half + i] = sinf(ang);
            }
        }
}

/* head_norms: krn_mat_row_norms of head, for greedy rows (mdl_batch.argmax_only); NULL: none */
static void logits_out(mdl_ctx *x, const mdl_batch *b, const float *norm, const krn_mat *head,
                       const float *head_norms, float *logits)
{
    const mdl_config *c = &x->m->cfg;
    const int D = c->hidden_size, n = b->n_logits;
    if (n == 0 || !logits) return;
    for (int i = 0; i < n; i++)
        krn_rmsnorm(x->x + (size_t)b->logits_rows[i] * D, norm, D, c->rms_norm_eps, x->lrows + (size_t)i * D);
    /* exact in every pass (prefill's rows too: whose argmax is the first token); rows marked argmax_only get their
     * argmax through the screen, exact as well, where it exists */
    const int V = c->vocab_size, nv = b->n_vocab > 0 && b->n_vocab < V ? b->n_vocab : V;
    const int want = b->argmax_only && b->argmax;
    if (x->m->ep) { /* vocab-parallel heads: every rank computes its slice (mdl_ep) */
        PD_ASSERT(head == &x->m->lm_head || head == &x->m->layers[x->m->n_layers].head);
        x->m->ep->logits(x->m->ep, head != &x->m->lm_head, x->lrows, n, nv, want ? b->argmax_only : NULL,
                         want ? b->argmax : NULL, logits);
        for (int i = 0; i < n && nv < V; i++)
            if (!(want && b->argmax_only[i]))
                for (int v = nv; v < V; v++) logits[(size_t)i * V + v] = -INFINITY;
        return;
    }
    krn_mat h = *head;
    h.rows = nv; /* a prefix of rows is a valid view of every packed form: panels of 32 rows, in order */
    int ns = 0;
    for (int i = 0; i < n && want && head_norms; i++) ns += b->argmax_only[i] != 0;
    if (ns > 0) {
        /* rows in the order: full rows (ascending), then the screened ones; the screen uses logits rows nf.. as
         * scratch, the full rows are computed into rows 0.. and then moved up to their own rows */
        const int nf = n - ns;
        for (int i = 0, f = 0, r = nf; i < n; i++) x->lperm[b->argmax_only[i] ? r++ : f++] = i;
        for (int r = 0; r < n; r++)
            memcpy(x->lrows2 + (size_t)r * D, x->lrows + (size_t)x->lperm[r] * D, (size_t)D * sizeof(float));
        if (krn_linear_argmax(head, head_norms, nv, x->lrows2 + (size_t)nf * D, ns, logits + (size_t)nf * V, V,
                              x->lamax, x->amax_ws)) {
            for (int r = nf; r < n; r++) b->argmax[x->lperm[r]] = x->lamax[r - nf];
            if (nf > 0) krn_linear(&h, x->lrows2, nf, logits, V, x->scratch);
            for (int r = nf - 1; r >= 0; r--) { /* lperm[r] >= r: moving the last first overwrites nothing unmoved */
                float *dst = logits + (size_t)x->lperm[r] * V;
                if (x->lperm[r] != r) memcpy(dst, logits + (size_t)r * V, (size_t)nv * sizeof(float));
                for (int v = nv; v < V; v++) dst[v] = -INFINITY;
            }
            return;
        }
    }
    krn_linear(&h, x->lrows, n, logits, V, x->scratch);
    for (int i = 0; i < n && nv < V; i++)
        for (int v = nv; v < V; v++) logits[(size_t)i * V + v] = -INFINITY;
    for (int i = 0; i < n && want; i++)
        if (b->argmax_only[i]) b->argmax[i] = krn_argmax(logits + (size_t)i * V, V);
}

pd_status mdl_forward(mdl_ctx *x, mdl_kv_pool *kv, const mdl_batch *b, float *logits)
{
    pd_status st = check_batch(x, kv, b);
    if (st != PD_OK) return st;
    const mdl_model *m = x->m;
    const int D = m->cfg.hidden_size;
    x->lin_flags = pass_flags(m, b);
        if (m->ep) m->ep->embed(m->ep, 0, b->tokens, b->n_tokens, x->x, D); /* vocab-parallel: rows from their ranks */
    else
        for (int t = 0; t < b->n_tokens; t++) krn_mat_row(&m->embed, b->tokens[t], x->x + (size_t)t * D);
    rope_tables(x, b);
    for (int l = 0; l < m->n_layers; l++) layer_forward(x, kv, b, &m->layers[l], l);
    logits_out(x, b, m->final_norm, &m->lm_head, m->lm_head_norms, logits);
    return PD_OK;
}

pd_status mdl_forward_mtp(mdl_ctx *x, mdl_kv_pool *kv, const mdl_batch *b, float *logits)
{
    const mdl_model *m = x->m;
    if (m->n_mtp < 1 || !b->mtp_hidden) return PD_ERR_INVALID;
    pd_status st = check_batch(x, kv, b);
    if (st != PD_OK) return st;
    const mdl_config *c = &m->cfg;
    const int D = c->hidden_size, T = b->n_tokens;
    const mdl_layer *L = &m->layers[m->n_layers];
    x->lin_flags = pass_flags(m, b);
    if (m->ep) m->ep->embed(m->ep, 1, b->tokens, T, x->ecat, 2 * D); /* vocab-parallel: rows from their ranks */
    for (int t = 0; t < T; t++) {
        float *e = x->ecat + (size_t)t * 2 * D;
        if (!m->ep) krn_mat_row(&L->embed, b->tokens[t], e);
        krn_rmsnorm(e, L->enorm, D, c->rms_norm_eps, e);
        krn_rmsnorm(b->mtp_hidden + (size_t)t * D, L->hnorm, D, c->rms_norm_eps, e + D);
    }
    linear(x, &L->eh_proj, x->ecat, T, x->x, D);
    rope_tables(x, b);
    layer_forward(x, kv, b, L, m->n_layers);
    if (b->mtp_head) logits_out(x, b, L->head_norm, b->mtp_head, NULL, logits); /* no screen for the copy */
    else logits_out(x, b, L->head_norm, &L->head, L->head_norms, logits);
    return PD_OK;
}
