/* libpdmodel: a loaded DeepSeek-V2/V3 checkpoint, its paged KV pool, and the forward pass.
 * Data flow: mdl_model_load (config.json + safetensors -> weights, mmap'd where the dtype allows) ->
 * mdl_ctx_create (every activation buffer planned for a token budget) -> mdl_forward / mdl_forward_mtp over
 * a batch of sequences whose KV rows live in an mdl_kv_pool. */
#ifndef MDL_H
#define MDL_H

#include "kernels/krn.h"
#include "model/mdl_config.h"

/* ---- weights ----------------------------------------------------------------------------------------- */
typedef struct {
    float *attn_norm;       /* [hidden] f32 (input_layernorm) */
    krn_mat q_a;            /* [q_lora, hidden]          (q_lora_rank > 0) */
    float *q_a_norm;        /* [q_lora] f32 */
    krn_mat q_b;            /* [H * qk_head, q_lora]     (q_lora_rank > 0) */
    krn_mat q;              /* [H * qk_head, hidden]     (q_lora_rank == 0) */
    krn_mat kv_a;           /* [kv_lora + rope, hidden]  kv_a_proj_with_mqa */
    float *kv_a_norm;       /* [kv_lora] f32 */
    krn_mat kv_b;           /* [H * (nope + v), kv_lora] */
    krn_mat o;              /* [hidden, H * v] */
    float *ffn_norm;        /* [hidden] f32 (post_attention_layernorm) */
    int is_moe;
    krn_mat gate, up, down; /* dense MLP: [inter, hidden], [inter, hidden], [hidden, inter] */
    krn_mat router;         /* [n_experts, hidden] mlp.gate.weight */
    float *router_bias;     /* [n_experts] f32 e_score_correction_bias, NULL when absent */
    krn_mat *exp_gate, *exp_up, *exp_down; /* [n_experts] each: [moe_inter, hidden] x2, [hidden, moe_inter] */
    krn_mat sh_gate, sh_up, sh_down;       /* shared experts: [moe_inter * n_shared, hidden] ... */
    /* MTP layer only */
    float *enorm, *hnorm;   /* [hidden] f32 */
    krn_mat eh_proj;        /* [hidden, 2 * hidden] */
    float *head_norm;       /* [hidden] f32 shared_head.norm */
    krn_mat head;           /* [vocab, hidden] shared_head.head */
    float *head_norms;      /* [vocab] krn_mat_row_norms of head for greedy drafts' argmax; NULL: none */
    krn_mat embed;          /* [vocab, hidden] the MTP layer's embed_tokens */
} mdl_layer;

/* Run-time weight quantisation chosen at load (--quantization). */
typedef enum {
    MDL_QUANT_NONE = 0,     /* weights as held by weight_type / FP8 */
    MDL_QUANT_W8A8 = 1,     /* int8 weights, per-output-channel scales; activations quantised per token */
} mdl_quant;

typedef struct {
    krn_type weight_type;   /* KRN_BF16 (default) or KRN_F32: how BF16/F16/F32 tensors are held */
    krn_type kv_type;       /* KV cache element type: KRN_F16 (default), KRN_BF16 or KRN_F32 */
    int fp8_dequant;        /* FP8 tensors: 0 keep them FP8 with their block scales (exact; default),
                             * 1 dequantise to weight_type. weight_type KRN_F32 always dequantises. */
    int no_mtp;             /* skip loading the MTP layer */
    int progress;           /* print loading progress to stderr */
    mdl_quant quant;        /* MDL_QUANT_NONE (default) or MDL_QUANT_W8A8: converted at load from BF16/FP8 */
    /* Expert parallelism: ep_size > 1 splits the routed experts of every MoE layer into ep_size contiguous ranges
     * (mdl_ep_first); this rank (ep_rank) maps and packs only its range. 0 or 1: every expert. */
    int ep_rank, ep_size;
} mdl_load_opts;

/* The KV default is float16: same size as bfloat16 with 8x finer resolution. MLA's cached values are a
 * normalised latent and a rotated key, far inside float16's range; the extra precision keeps MoE routing
 * decisions that sit within bfloat16's rounding of each other stable (seen on the v3yarn-fp8 golden case). */
static inline mdl_load_opts mdl_load_defaults(void)
{
    mdl_load_opts o = {KRN_BF16, KRN_F16, 0, 0, 1, MDL_QUANT_NONE, 0, 1};
    return o;
}

/* Expert parallelism in the forward pass (implemented by dist/ over MPI). A MoE layer routes its tokens as always,
 * then hands every (token, pick) to moe, which brings each row to the rank that holds the expert and its output
 * back: y[t * K + k] (hidden_size floats) = expert topi[t * K + k] of that layer applied to xn[t], unweighted,
 * with the products' flags. The layer adds the outputs in the single-process order, so with row-invariant
 * kernels a rank gets the bits one process would. layer: 0..n_layers-1, n_layers for the MTP layer. */
typedef struct mdl_ep_s {
    void (*moe)(struct mdl_ep_s *ep, int layer, const float *xn, int T, const int *topi, unsigned flags, float *y);
    /* Vocab-parallel heads: each rank holds rows [vocab0, vocab1) of the lm_head (head 0) and the MTP head (head 1).
     * rows: [n][hidden] normalised; only columns < nv count. Row i with argmax_only[i] (argmax_only may be NULL)
     * gets its argmax in argmax[i] (the first largest logit, as krn_argmax); every other row its logits in
     * logits[i][0..vocab_size) (columns >= nv: set to -inf by the caller). */
        void (*logits)(struct mdl_ep_s *ep, int head, const float *rows, int n, int nv, const uint8_t *argmax_only,
                   int32_t *argmax, float *logits);
    /* Vocab-parallel embeddings (rows [vocab0, vocab1) here): out + i * ld gets the f32 row of tokens[i] of the
     * model's embedding (which 0) or the MTP layer's (which 1). */
    void (*embed)(struct mdl_ep_s *ep, int which, const int32_t *tokens, int n, float *out, int ld);
} mdl_ep;

typedef struct mdl_model_s {
    mdl_config cfg;
    mdl_load_opts opts;
    char path[4096];
    krn_mat embed;          /* [vocab, hidden] */
    mdl_layer *layers;      /* [n_layers + n_mtp] : main layers then the MTP layer */
    int n_layers;           /* main layers */
    int n_mtp;              /* 0 or 1 MTP layers loaded */
    float *final_norm;      /* [hidden] f32 */
    krn_mat lm_head;        /* [vocab, hidden] */
    float *lm_head_norms;   /* [vocab] krn_mat_row_norms of lm_head for greedy rows' argmax (mdl_batch.argmax_only);
                             * NULL where the kernels have no screen or a norm is not finite */
    float *rope_freqs;      /* [rope/2] f32 per-pair inverse frequency (YaRN applied) */
    float softmax_scale;
    struct mdl__store *store; /* owns mmaps and converted copies */
    int exp0, exp1;         /* the routed experts loaded here: [exp0, exp1) (all without expert parallelism) */
        int vocab0, vocab1;     /* the rows of the embeddings and heads (lm_head, the MTP layer's) loaded here (all
                             * without expert parallelism) */
    mdl_ep *ep;             /* set by dist/ after loading when the experts are split over ranks; NULL: all local */
} mdl_model;

/* The first routed expert of rank r of n: experts are split into n contiguous ranges of E / n (n divides E). */
static inline int mdl_ep_first(int n_experts, int r, int n) { return (int)((long)n_experts * r / n); }
/* The first head row (token id) of rank r of n: slices start at multiples of 128 (FP8 scale blocks, packed
 * panels), the last ends at the vocabulary's end. */
static inline int mdl_vocab_first(int vocab, int r, int n)
{
    return r >= n ? vocab : (int)((long)vocab * r / n) / 128 * 128;
}

/* Rows through routed experts held here (expert parallelism: the rows other ranks sent). Job i runs n rows of in
 * (n x hidden_size) through expert `expert` of layer `layer` (which must be loaded here) with the products' flags
 * into out (n x hidden_size): the same bits the layer computes in one process. All gate and up products run as
 * one pool job, then all down products. */
typedef struct {
    int layer, expert, n;
    unsigned flags;
    const float *in;
    float *out;
} mdl_expert_job;
typedef struct mdl_experts_ws_s mdl_experts_ws;
/* Workspace for up to max_rows rows in up to max_jobs jobs at a time. */
pd_status mdl_experts_ws_create(const mdl_model *m, int max_rows, int max_jobs, mdl_experts_ws **out);
void mdl_experts_ws_destroy(mdl_experts_ws *ws);
/* PD_ERR_RANGE when the jobs exceed the workspace, PD_ERR_INVALID for an expert not held here. */
pd_status mdl_experts_run(const mdl_model *m, const mdl_expert_job *jobs, int n_jobs, mdl_experts_ws *ws);

/* Loads DIR (config.json + model.safetensors[.index.json]). Errors name the file, tensor and field; *out is
 * written only on success. */
pd_status mdl_model_load(const char *dir, const mdl_load_opts *opts, mdl_model **out, char *err, size_t errlen);
void mdl_model_destroy(mdl_model *m);

/* Counts from the config alone (no weights needed). */
typedef struct {
    double params_total;       /* main model + MTP + embeddings */
    double params_active;      /* per token: embeddings row not counted, lm_head counted */
    double params_mtp;
    size_t kv_bytes_per_token; /* all layers incl. MTP, at the given element size */
} mdl_param_counts;
void mdl_config_count(const mdl_config *c, size_t kv_elem_size, mdl_param_counts *out);

/* ---- paged KV pool ------------------------------------------------------------------------------------
 * One block = block_size tokens x every layer (main + MTP) x one row of kv_lora + rope values, laid out
 * [layer][slot][row] so one block is one contiguous region (one RMA put). */
typedef struct {
    int n_layers;           /* main + MTP layers that have a cache */
    int row;                /* kv_lora_rank + qk_rope_head_dim */
    int block_size;         /* tokens per block */
    int n_blocks;
    krn_type type;          /* KRN_F16, KRN_BF16 or KRN_F32 */
    size_t block_bytes;
    uint8_t *base;          /* n_blocks * block_bytes, page aligned */
    int owns_base;          /* mapped here (else the caller's memory, e.g. UCX-allocated for direct puts) */
    int *free_list;         /* stack of free block ids */
    int n_free;
} mdl_kv_pool;

pd_status mdl_kv_pool_create(const mdl_config *c, int n_mtp, krn_type type, int block_size, int n_blocks,
                             mdl_kv_pool **out);
/* The same over caller-owned memory of at least mdl_kv_pool_bytes() bytes (it must outlive the pool). */
pd_status mdl_kv_pool_create_in(const mdl_config *c, int n_mtp, krn_type type, int block_size, int n_blocks, void *mem,
                                mdl_kv_pool **out);
size_t mdl_kv_pool_bytes(const mdl_config *c, int n_mtp, krn_type type, int block_size, int n_blocks);
void mdl_kv_pool_destroy(mdl_kv_pool *p);
/* Takes n free blocks (all or none). PD_ERR_BUSY when fewer are free. */
pd_status mdl_kv_alloc(mdl_kv_pool *p, int n, int *ids);
void mdl_kv_free(mdl_kv_pool *p, int n, const int *ids);
static inline void *mdl_kv_row(const mdl_kv_pool *p, int block, int layer, int slot)
{
    return p->base + (size_t)block * p->block_bytes +
           ((size_t)layer * p->block_size + (size_t)slot) * (size_t)p->row * krn_type_size(p->type);
}
static inline int mdl_kv_blocks_for(const mdl_kv_pool *p, int n_tokens)
{
    return (n_tokens + p->block_size - 1) / p->block_size;
}

/* ---- a forward batch -----------------------------------------------------------------------------------
 * Sequences with their new tokens laid out back to back. Sequence s contributes tokens
 * [seq_start[s], seq_start[s+1]) at positions ctx_len[s] .. ctx_len[s] + n - 1; its KV rows live in the
 * blocks of block_table[s], which must cover every position up to the last new one. */
typedef enum {
    MDL_ATTN_PREFILL = 0, /* decompress K/V per head through kv_b_proj, tiled attention (compute-bound) */
    MDL_ATTN_DECODE = 1,  /* absorbed MLA over the latent rows (bandwidth-bound) */
} mdl_attn_mode;

typedef struct {
    int n_seqs, n_tokens;
    const int32_t *tokens;        /* [n_tokens] */
    const int *seq_start;         /* [n_seqs + 1] */
    const int *ctx_len;           /* [n_seqs] tokens already cached */
    const int *const *block_table;/* [n_seqs] -> block ids */
    const int *logits_rows;       /* [n_logits] token indices whose logits are wanted */
    int n_logits;
    mdl_attn_mode attn;
    /* MTP only: main-model hidden state (before the final norm) that each token pairs with [n_tokens][hidden] */
    const float *mtp_hidden;
    /* > 0: logits only for token ids [0, n_vocab) (a pruned draft head: the head's first rows are read, the
     * rest of each row is -inf); 0: the whole vocabulary. Rows keep their vocab_size stride. */
    int n_vocab;
    /* MTP only, optional: the head to score with instead of the MTP layer's shared_head.head (a compressed draft copy
     * with at least n_vocab rows, or vocab_size when n_vocab is 0); NULL: the layer's own head (and its screen). */
    const krn_mat *mtp_head;
    /* 1: a prompt-prefill pass; its products over BF16 weights may round activations to bf16 (KRN_LINEAR_BF16_ACT,
     * vdpbf16ps; lm_head and the router stay exact; ignored on W8A8 models). Every token's result still does not depend
     * on the batch or the chunking. 0 (the default): exact f32 activations, required for decode and verify passes
     * (speculative decoding is exact only if a row gives the same bits whatever the pass) and for recomputing generated
     * tokens. */
    int act_bf16;
    /* Optional (mdl_forward and mdl_forward_mtp): argmax_only[i] set means logits row i is wanted only for its argmax
     * (a greedy row with nothing that changes its logits: no penalties, masks or logprobs). argmax[i] then receives the
     * index of the row's largest logit, the first on ties: the index krn_argmax finds in the exact logits. Where the
     * lm_head screen exists (krn_linear_argmax) it is found without computing every logit exactly and logits row i is
     * left unspecified; elsewhere the row's logits are written as usual. Rows not marked get their exact logits. */
    const uint8_t *argmax_only;
    int32_t *argmax;
} mdl_batch;

typedef struct mdl_ctx_s mdl_ctx;
/* Plans every buffer for batches of up to max_tokens new tokens and max_logits logits rows. */
pd_status mdl_ctx_create(const mdl_model *m, int max_tokens, int max_logits, mdl_ctx **out);
void mdl_ctx_destroy(mdl_ctx *c);

/* Runs the main model over the batch: writes every new token's KV rows into the pool, then logits for the
 * requested rows into logits[n_logits][vocab] (may be NULL when n_logits == 0). Afterwards
 * mdl_ctx_hidden() holds each token's final hidden state before the final norm [n_tokens][hidden].
 * PD_ERR_INVALID for a batch that does not fit the plan (nothing is written then). */
pd_status mdl_forward(mdl_ctx *c, mdl_kv_pool *kv, const mdl_batch *b, float *logits);
/* Runs the MTP layer: token i of the batch is t[p+1] and b->mtp_hidden row i is the main hidden state at p;
 * the MTP cache row for position p is written. Logits are the MTP head's; mdl_ctx_hidden() afterwards holds
 * the MTP block output (before shared_head.norm), which recursive drafting feeds back. */
pd_status mdl_forward_mtp(mdl_ctx *c, mdl_kv_pool *kv, const mdl_batch *b, float *logits);
const float *mdl_ctx_hidden(const mdl_ctx *c);

#endif
