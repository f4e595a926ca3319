/* Internals of mdl_engine shared by its files: engine.c (API, thread loop, events), sched.c (admission of prompt
 * chunks, block growth, preemption, prefill passes), spec.c (sampling, drafting, verification, the decode step) and
 * plan.c (captured decode plans). Engine thread only unless a comment says otherwise; names cross files as mdl__. */
#ifndef MDL_ENGINE_INTERNAL_H
#define MDL_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "model/mdl_engine.h"

typedef enum { SEQ_WAITING, SEQ_WAIT_KV, SEQ_KV_READY, SEQ_RUNNING, SEQ_HELD } seq_state;

typedef struct seq {
    uint64_t id;
    void *user;
    mdl_req_mode mode;
    seq_state state;
    int32_t *tokens;          /* prompt then generated: [n_prompt + max_tokens] */
    int n_prompt, n_gen, n_cached, n_mtp_cached;
    int n_fill;               /* tokens a prefill computes: the prompt, or prompt + generated when recomputing */
    int recompute;            /* preempted: its blocks were taken back; prefill n_fill tokens again, then go on */
    int *blocks, n_blocks;    /* held now; grown block by block as decoding needs them */
    int cap_blocks;           /* blocks for prompt + max_tokens: the most it can hold */
    mdl_gen_params p;
    pd_rng rng;
    int abort_req, release_req, prefilling;
    int32_t first_token;
    float first_logprob;
    mdl_event first_top;      /* REMOTE_KV: the first token's alternatives */
    float *hidden;            /* [k+1][hidden] main hidden states at positions n_mtp_cached .. + n_hid - 1: the
                               * verified pairs (h[p], t[p+1]) the MTP cache still lacks; row 0 is the last prompt
                               * position's until decoding starts (the PREFILLED payload) */
    int n_hid;
    int spec_steps, spec_drafted, spec_accepted, spec_acc_at[MDL_MAX_SPEC_TOKENS];
    double t_submit, t_prefill0, t_prefill1, t_decode0;
    struct seq *next;
} seq;

/* A captured decode plan. On CPU there is no graph to record: what is fixed at start-up is the context (every
 * activation buffer, sized exactly for n_seqs x tps tokens, at a fixed address), the batch shape (a step pads
 * to n_seqs sequences), and with it every GEMM's row count and so the kernel path each op takes. */
typedef struct {
    int n_seqs, tps;          /* sequences x new tokens per sequence */
    int size_idx;             /* index into the captured sizes (stats) */
    mdl_ctx *ctx;
} plan;

/* What sampling one logits row needs besides the row: a sampler (its scratch), the raw row kept for logprobs and the
 * processed target distribution of a verified row. Acceptance of different sequences runs on different pieces of the
 * pool, each with its own workspace. */
typedef struct {
    krn_sampler sampler;
    float *raw;  /* [vocab] raw logits of the row being sampled */
    float *pbuf; /* [vocab] processed target distribution of the row being verified (k > 0) */
} row_ws;

/* One prompt chunk of a step: n tokens of s's n_fill from n_cached on. */
typedef struct {
    seq *s;
    int n;        /* tokens of this step */
    int done;     /* prompt completes in this step */
} chunk;

/* What one step carries from planning through computation to its results (engine thread only; [max_num_seqs]
 * each, allocated with the engine). */
typedef struct {
    chunk *ch;                /* prompt chunks */
    seq **dec;                /* decoding sequences */
    int32_t *first;           /* first token sampled for each completed chunk */
    float *first_lp;
    mdl_event *tmpl;          /* its top logprobs */
    int nc, nd;
} step;

struct mdl_engine_s {
    mdl_model *m;
    mdl_engine_opts o;
    mdl_kv_pool *kv;
    mdl_ctx *ctx;
    mdl_event_cb cb;
    void *cb_arg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop, started;
    seq *all;                 /* every live request */
    mdl_engine_stats st;
    /* step buffers (engine thread only) */
    int32_t *b_tokens;
    int *b_start, *b_ctx, *b_rows;
    uint8_t *b_amax_only; /* [max_tokens] decode rows that want only their argmax (mdl_batch.argmax_only) */
    int32_t *b_amax;      /* [max_tokens] their argmax */
    const int **b_tables;
    seq **b_seqs;
    float *logits;            /* [max_num_seqs][vocab] */
    row_ws *ws;               /* [n_ws] sampling workspaces: ws[0] for the engine thread, one per piece of acceptance */
    int n_ws;
    float *mtp_hidden;        /* [max_tokens][hidden] */
    int32_t *mtp_tokens;
    int max_tokens;
    mdl_event *evs;           /* pending events (buffer kept across steps) */
    int n_evs, cap_evs;
    /* speculation */
    int k;                    /* num_speculative_tokens */
    int ngram;                /* drafts from prompt lookup (MDL_SPEC_NGRAM), not the MTP layer */
    int tps;                  /* new tokens per sequence in a decode step: k + 1 */
    float *q;                 /* [max_num_seqs][k][vocab] processed draft distributions (temperature > 0) */
    uint8_t *q_onehot;        /* [max_num_seqs][k] the draft came from the known-drafts hook */
    float *g;                 /* [max_num_seqs][hidden] MTP output fed back in recursive drafting */
    krn_mat dhead;            /* draft_head_int8: the int8 copy of the MTP head's draft rows (W8A8 packed) */
    void *dhead_buf;          /* its packed weights (dhead_bytes, huge pages); NULL: drafts use the layer's head */
    size_t dhead_bytes;
    int32_t *known;           /* [max_num_seqs][k] */
    int *n_known, *ks;        /* [max_num_seqs] known drafts, drafts this step */
    int *map;                 /* [max_num_seqs] batch slot -> decode index */
    int32_t *r_tok;           /* [max_num_seqs][k+1] tokens to emit */
    float *r_lp;              /* [max_num_seqs][k+1] */
    mdl_event *r_tmpl;        /* [max_num_seqs][k+1] top logprobs of each */
    int *r_n, *r_acc;         /* [max_num_seqs] tokens to emit, drafts accepted */
    mdl_draft_cb draft_cb;
    void *draft_arg;
    int accept_all;           /* tests only */
    /* captured plans */
    int n_sizes, sizes[MDL_MAX_GRAPH_SIZES];
    plan plans[2 * MDL_MAX_GRAPH_SIZES];
    int n_plans;
    int *scratch_blocks, n_scratch; /* KV rows of padding sequences */
    int last_plan;            /* plan of the last decode step, -1: general path */
    int last_padded;          /* padding rows of the last decode step */
    step stp;                 /* the step being run */
    int evs_short;            /* the event buffer could not grow: events go out early (logged once per episode) */
    /* tests only (mdl__engine_test_oom): request-path allocations still to fail, and an event buffer that cannot
     * grow past test_ev_cap entries (0: no limit) */
    atomic_int test_fail_allocs;
    int test_ev_cap;
};

/* ---- engine.c -------------------------------------------------------------------------------------------- */
/* Tests only: fault injection for out of memory. The next fail_allocs request-path allocations (a submitted
 * request's) fail; ev_cap > 0: the event buffer behaves as if it could not grow past ev_cap pending events. */
void mdl__engine_test_oom(mdl_engine *e, int fail_allocs, int ev_cap);

/* ---- sched.c --------------------------------------------------------------------------------------------- */
/* The step's prompt chunks (under the lock): waiting prompts in arrival order up to the token budget, into
 * ch[0..max_num_seqs); returns their count. */
int mdl__sched_chunks(mdl_engine *e, chunk *ch);
/* Gives every sequence of the coming decode step its blocks, preempting when the pool runs dry (under the lock).
 * Returns the number of sequences left in dec. */
int mdl__sched_grow(mdl_engine *e, seq **dec, int nd);
/* Runs the step's prompt chunks (lock not held); reorders ch; logits of completed chunks in e->logits. */
void mdl__sched_prefill(mdl_engine *e, chunk *ch, int nc);

/* ---- spec.c ---------------------------------------------------------------------------------------------- */
/* Samples the first token of s from logits row lg (modified). */
int32_t mdl__spec_sample_first(mdl_engine *e, seq *s, float *lg, float *logprob, mdl_event *ev);
/* Drafts s verifies in its next decode step: k, never past max_tokens. */
int mdl__spec_step_drafts(const mdl_engine *e, const seq *s);
/* One decode step over the nd running sequences (lock not held); results in e->r_*. */
void mdl__spec_decode(mdl_engine *e, seq **dec, int nd);
/* draft_head_int8: makes the int8 copy of the MTP head. 0 on out of memory. */
int mdl__spec_make_draft_head(mdl_engine *e);

/* ---- plan.c ---------------------------------------------------------------------------------------------- */
/* The captured sizes of o: its list (validated) or the default. */
pd_status mdl__plan_sizes(const mdl_engine_opts *o, int *sizes, int *n);
/* Creates the contexts of the captured plans (e->sizes must be set); on error the ones made stay for destroy. */
pd_status mdl__plan_create_all(mdl_engine *e);
/* The plan for nd sequences of up to tps new tokens, or -1. */
int mdl__plan_pick(const mdl_engine *e, int nd, int tps);

#endif
