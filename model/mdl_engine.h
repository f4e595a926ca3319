/* mdl_engine: continuous batching over one model and one paged KV pool, on a thread of its own.
 * Requests are admitted with their prompt's blocks; a sequence takes further blocks as it decodes, and when the
 * pool runs dry the latest-arrived running sequence is preempted (its blocks taken back, its prompt and output
 * recomputed once blocks free up, then it samples on with the same generator). Each step takes waiting
 * prompts in arrival order up to the token budget (chunked when longer), runs them through the model and its
 * MTP layer, then one decode step over every running sequence — with MTP speculative decoding when
 * num_speculative_tokens > 0 (draft k, verify k+1 in one pass, lossless acceptance; docs/speculative.md) and on
 * a captured batch size when one fits; finished and aborted requests free their blocks at once. Results leave
 * through the event callback, called on the engine thread. No networking. */
#ifndef MDL_ENGINE_H
#define MDL_ENGINE_H

#include "model/mdl.h"
#include "proto/pr_gen.h"

#define MDL_MAX_STOP_IDS 16
#define MDL_MAX_LOGIT_BIAS PR_MAX_LOGIT_BIAS /* logit_bias entries per request: the internal protocol's limit */
#define MDL_MAX_TOP_LOGPROBS PR_MAX_TOP_LOGPROBS
#define MDL_MAX_SPEC_TOKENS 4   /* num_speculative_tokens 0..4 */
#define MDL_MAX_NGRAM 64        /* prompt lookup n-gram sizes 1..64 */
#define MDL_MIN_DRAFT_VOCAB (MDL_MAX_STOP_IDS + 2) /* smallest pruned MTP draft vocabulary: min_tokens masks eos and
                                                  * the stop ids; one id always stays */

typedef enum { MDL_SPEC_MTP = 0, MDL_SPEC_NGRAM = 1 } mdl_spec_method;
#define MDL_MAX_GRAPH_SIZES 16  /* captured batch sizes */

typedef struct {
    krn_sampling_params sampling;
    uint64_t seed;
    int has_seed;
    int max_tokens;            /* >= 1 */
    int min_tokens;            /* stop tokens are suppressed until this many were generated */
    int ignore_eos;
    int32_t stop_ids[MDL_MAX_STOP_IDS]; /* besides eos */
    int n_stop_ids;
    /* logit_bias: bias[i] is added to the logit of token bias_ids[i] before anything else processes the row (the
     * min_tokens mask, penalties, temperature); logprobs stay those of the model's logits */
    int32_t bias_ids[MDL_MAX_LOGIT_BIAS];
    float bias[MDL_MAX_LOGIT_BIAS];
    int n_bias;
    int top_logprobs;          /* 0..20 alternatives per token and the sampled token's logprob; -1: no logprobs
                                * at all (events carry logprob 0, no alternatives; saves a copy and a log-sum-exp
                                * over the vocabulary per sampled row) */
} mdl_gen_params;

typedef enum {
    MDL_REQ_LOCAL = 0,   /* prefill here, then decode here (colocated) */
    MDL_REQ_REMOTE_KV,   /* blocks are filled from outside; mdl_engine_kv_ready() starts decoding */
    MDL_REQ_PREFILL_ONLY /* prefill, sample the first token, report MDL_EV_PREFILLED and hold the blocks */
} mdl_req_mode;

typedef enum { MDL_FINISH_STOP = 0, MDL_FINISH_LENGTH, MDL_FINISH_ABORT, MDL_FINISH_ERROR } mdl_finish;
const char *mdl_finish_str(mdl_finish f);

typedef enum {
    MDL_EV_TOKEN,        /* one generated token (decode, or the first one in LOCAL mode) */
    MDL_EV_BLOCKS,       /* PREFILL_ONLY: blocks [0, n_blocks_done) hold their final KV */
    MDL_EV_PREFILLED,    /* PREFILL_ONLY: prompt done; first token, its logprob, the last hidden state */
    MDL_EV_DONE,         /* the request is over; its blocks are free (unless PREFILL_ONLY: release them) */
} mdl_event_type;

typedef struct {
    mdl_event_type type;
    uint64_t id;               /* the submitter's id */
    void *user;
    int32_t token;             /* TOKEN, PREFILLED */
    float logprob;
    int n_top;
    int32_t top_ids[MDL_MAX_TOP_LOGPROBS];
    float top_lps[MDL_MAX_TOP_LOGPROBS];
    int n_blocks_done;         /* BLOCKS */
    const float *hidden;       /* PREFILLED: [hidden_size], valid during the callback */
    mdl_finish finish;         /* DONE */
    int32_t stop_token;        /* DONE with STOP: the token that stopped it, -1 otherwise */
    int prompt_tokens, completion_tokens;
    double t_queue, t_prefill, t_decode; /* DONE / PREFILLED: seconds in each phase */
    /* DONE with speculation: drafts proposed and accepted for this request, accepted per draft position */
    int spec_steps, spec_drafted, spec_accepted;
    int spec_accepted_at[MDL_MAX_SPEC_TOKENS];
} mdl_event;

typedef void (*mdl_event_cb)(const mdl_event *ev, void *arg);

typedef struct mdl_engine_s mdl_engine;
typedef struct mdl_engine_stats_s mdl_engine_stats;

/* A multi-rank instance (dist/, over MPI): every rank runs an engine over its own sequences and their KV (data-
 * parallel attention); rank 0's engine takes every request and places it on a rank by load; the engines step
 * together, since a MoE layer's experts may be spread over the ranks (mdl_ep). The hooks marked "locked" are called
 * with the engine's lock held and must not call into the engine. */
typedef struct {
    void *arg;
    int rank;
    /* locked, rank 0: the rank a new request goes to, given this rank's load (running + waiting sequences, free
     * blocks) and the prompt's blocks; -1 when no rank has room (PD_ERR_BUSY). prefill_kv: the request's KV
     * crosses hosts (REMOTE_KV, PREFILL_ONLY), which only ranks whose pool is registered for transfers take. */
    int (*place)(void *arg, int nb, int local_load, int local_free, int prefill_kv);
    /* locked, rank 0: queues the request for rank `rank` (the prompt and parameters are copied) */
    pd_status (*submit)(void *arg, int rank, uint64_t id, void *user, const int32_t *prompt, int n_prompt,
                        const mdl_gen_params *p, mdl_req_mode mode);
    /* locked, rank 0: a command for id if it lives on another rank (then 1 is returned, else 0). cmd: 'a' abort,
     * 'r' release, 'k' KV ready (ready: its first token, logprob, alternatives and hidden state). */
    int (*command)(void *arg, int cmd, uint64_t id, const mdl_event *ready, const float *hidden);
    /* locked, rank 0: commands are queued for other ranks */
    int (*pending)(void *arg);
    /* locked, rank 0: adds the other ranks' last reported stats to s (counts and counters) */
    void (*stats)(void *arg, mdl_engine_stats *s);
    /* Engine thread, lock not held, at the top of every step on every rank: exchanges the ranks' events (rank 0
     * delivers them), commands and whether any rank has work; rank 0 waits for work through wait (which returns
     * nonzero when the engine is stopping). Returns 1 to step (maybe with nothing to do here), 0 to stop. */
    int (*sync)(void *arg, mdl_engine *e, int local_work, int stopping, int (*wait)(mdl_engine *e));
    /* Engine thread, lock not held, after a step's computation: serves other ranks' expert rows until every rank
     * has ended the step. */
    void (*step_end)(void *arg);
    /* rank 0: > 0: while idle, re-check pending() this often (seconds), for wake-ups no local call signals */
    double idle_poll;
} mdl_engine_dist;

typedef struct {
    int max_num_seqs;          /* running sequences at once */
    int max_num_batched_tokens;/* prompt tokens per step */
    int max_model_len;         /* prompt + generated */
    int block_size;
    int n_blocks;
    int max_waiting;           /* queued requests before submit answers PD_ERR_FULL (0: unlimited) */
    /* prompt tokens waiting to be prefilled (not yet cached) before submit answers PD_ERR_FULL (0: unlimited); a
     * request is admitted whatever its length when no prompt tokens wait, so one longer than the limit still runs */
    long max_waiting_tokens;
    void *kv_mem;              /* pool memory supplied by the caller (NULL: the engine maps its own); at least
                                * mdl_kv_pool_bytes() for mdl_engine_pool_blocks(), e.g. UCX-allocated so peers put
                                * into it directly */
    /* Speculative decoding: drafts per sequence and step, 0..MDL_MAX_SPEC_TOKENS. 0: off. */
    int num_speculative_tokens;
    /* Where drafts come from. MDL_SPEC_MTP: the model's MTP layer (k > 1 applies it recursively; needs the layer
     * loaded, PD_ERR_INVALID otherwise). MDL_SPEC_NGRAM: prompt lookup, no draft model: the latest earlier
     * occurrence of the sequence's last n tokens (n from ngram_max down to ngram_min, 1..MDL_MAX_NGRAM; 0 takes
     * the other's value, both 0 give 5 as vLLM does) proposes what followed it, continued periodically when the
     * match overlaps the suffix; a sequence with no match drafts nothing that step. */
    mdl_spec_method spec_method;
    int ngram_min, ngram_max;
    /* MTP only: the draft head scores token ids [0, draft_vocab_size) only (0: the whole vocabulary; else
     * MDL_MIN_DRAFT_VOCAB..vocab_size). Reads that many rows of the MTP head per draft pass instead of all of them
     * (the head dominates a draft pass: 129280 x hidden). Lossless: a draft is verified by the main model, and the
     * sampled drafts' q is the pruned distribution. BPE ids are ranked by merge order, which roughly follows
     * frequency, so the low ids cover most text (in one English sample, 93% of tokens had ids < 32768). */
    int draft_vocab_size;
    /* MTP only: 1: draft passes score with an int8 copy of the MTP head (its first draft_vocab_size rows, or all;
     * per-row scales, activations quantised per row: the W8A8 kernels), made at engine creation. Half the head's
     * bytes per draft pass; a draft's quality may change at a near tie, never the output: the main model verifies
     * every draft, and a sampled draft's q is the int8 head's distribution, which rejection sampling divides by.
     * 0 (default): the checkpoint's head, exact. */
    int draft_head_int8;
    /* Captured batch sizes (ascending, each 1..max_num_seqs): a decode step runs on the plan of the smallest size
     * that holds its sequences, padded up to it; larger batches take the general path. n_graph_batch_sizes 0:
     * the default list (powers of two up to max_num_seqs); -1: none (every step takes the general path). */
    int graph_batch_sizes[MDL_MAX_GRAPH_SIZES];
    int n_graph_batch_sizes;
    /* 0 (default): prompt prefill rounds the activations of its BF16-weight GEMMs to bf16 (mdl_batch.act_bf16; a
     * no-op without AVX512-BF16 or with PDSERVE_BF16_DOT=0). A preempted sequence recomputes its prompt the same way
     * (the same KV bits) and its generated tokens exactly, as decode computed them; decode and verify are always
     * exact. 1: prompt prefill exact as well (--no-prefill-bf16). */
    int exact_prefill;
    /* 0 (default): a decode step whose rows are all greedy with nothing that changes their logits (no penalties,
     * logprobs or min_tokens mask in effect) finds each row's argmax with the lm_head screen (krn_linear_argmax:
     * the same tokens, without computing every logit exactly; AVX512-BF16 only). 1: every logit, always. */
    int full_logits;
    const mdl_engine_dist *dist; /* NULL: one process */
} mdl_engine_opts;

/* Blocks the engine's pool holds for these options: n_blocks for requests plus scratch blocks that padded rows
 * of captured batch sizes write into. */
int mdl_engine_pool_blocks(const mdl_engine_opts *o);

struct mdl_engine_stats_s {
    int running, waiting, held, free_blocks, total_blocks;
    long queued_prompt_tokens;
    uint64_t steps, prefill_tokens, decode_tokens;
    /* decode steps and the seconds their compute took (forward passes + sampling, lock not held) */
    uint64_t decode_steps;
    double decode_seconds;
    /* speculation: sequence-steps that drafted, drafts proposed, drafts accepted (in all and per position);
     * mean_accepted_len = tokens emitted per drafting sequence-step, bonus token included (1 + accepted/steps) */
    uint64_t spec_seq_steps, spec_drafted, spec_accepted;
    uint64_t spec_accepted_at[MDL_MAX_SPEC_TOKENS];
    double spec_mean_accepted_len;
    /* sequences whose blocks were taken back to let others grow (recomputed later) */
    uint64_t preemptions;
    /* captured sizes: the sizes, decode steps replayed on each, padding rows added (waste), and steps that
     * took the general path because no captured size held the batch */
    int n_graph_sizes;
    int graph_sizes[MDL_MAX_GRAPH_SIZES];
    uint64_t graph_steps[MDL_MAX_GRAPH_SIZES];
    uint64_t graph_padded_rows, graph_eager_steps;
};

/* Creates the pool and plans the buffers; starts the thread. The model must outlive the engine. */
pd_status mdl_engine_create(mdl_model *m, const mdl_engine_opts *o, mdl_event_cb cb, void *cb_arg,
                            mdl_engine **out);
/* Stops the thread (finishing nothing: pending requests get no further events) and frees everything. */
void mdl_engine_destroy(mdl_engine *e);

/* Admits a request: validates it, takes the prompt's blocks. PD_ERR_BUSY when they are not free (beyond a 1%
 * watermark kept for running sequences to grow into) or a preempted sequence waits for blocks, PD_ERR_FULL when
 * max_waiting requests already wait or (LOCAL and PREFILL_ONLY, the modes that prefill here) when its prompt would
 * take the waiting prompt tokens past max_waiting_tokens, PD_ERR_RANGE when it can never fit (longer than
 * max_model_len or the pool), PD_ERR_INVALID
 * for bad tokens or parameters. The prompt is copied. */
pd_status mdl_engine_submit(mdl_engine *e, uint64_t id, void *user, const int32_t *prompt, int n_prompt,
                            const mdl_gen_params *p, mdl_req_mode mode);
/* Block ids a request holds now (copied into out, up to cap); returns the count or -1 when unknown. For a
 * REMOTE_KV request right after submit: the prompt's blocks, where its KV is to be written. */
int mdl_engine_blocks(mdl_engine *e, uint64_t id, int *out, int cap);
/* REMOTE_KV: the prompt's KV is in place; the first token (with its logprob and n_top alternatives) was
 * sampled by the prefill side; hidden is the last prompt position's hidden state (may be NULL). */
pd_status mdl_engine_kv_ready(mdl_engine *e, uint64_t id, int32_t first_token, float first_logprob, int n_top,
                              const int32_t *top_ids, const float *top_lps, const float *hidden);
/* Ends a request (DONE with ABORT follows unless it already finished). Unknown ids are ignored. */
void mdl_engine_abort(mdl_engine *e, uint64_t id);
/* PREFILL_ONLY: frees the blocks once the transfer is over. */
void mdl_engine_release(mdl_engine *e, uint64_t id);
/* A multi-rank instance's rank 0: something was queued for another rank outside the engine's calls; the engine
 * looks at its dist hooks' pending() again now. Any thread. */
void mdl_engine_wake(mdl_engine *e);
/* Counts and counters; in a multi-rank instance, rank 0's engine sums every rank's (their last reports). */
void mdl_engine_get_stats(mdl_engine *e, mdl_engine_stats *s);
/* This engine's alone. */
void mdl_engine_get_local_stats(mdl_engine *e, mdl_engine_stats *s);
mdl_kv_pool *mdl_engine_pool(mdl_engine *e);
int mdl_engine_max_model_len(const mdl_engine *e);
/* "<arch>/<layers>x<row>/<block>/<dtype>": blocks move only between engines with equal fingerprints. */
void mdl_engine_layout(const mdl_engine *e, char *buf, size_t len);

/* ---- benchmarks and tests only (servers never call these) ----------------------------------------------
 * Known drafts: before drafting for a sequence, the engine asks cb for up to k draft tokens that continue
 * tokens[0..n_tokens) (prompt + generated so far); it returns how many it knows (0..k). Known drafts replace
 * the MTP layer's own (which still runs, so its cost stays in the measurement) or, with MDL_SPEC_NGRAM, the
 * prompt lookup's (nothing else runs: the step is verification alone). They count as drafts sampled from a
 * one-hot distribution, so acceptance stays lossless. Called on the engine thread, lock not held.
 * Set it before the first submit. */
typedef int (*mdl_draft_cb)(uint64_t id, void *user, const int32_t *tokens, int n_tokens, int32_t *drafts, int k,
                            void *arg);
void mdl_engine_set_draft_hook(mdl_engine *e, mdl_draft_cb cb, void *arg);
/* Tests only: accept every draft whatever the target model says (a deliberately wrong acceptance rule, so the
 * distribution test can show that it catches one). */
void mdl__engine_test_accept_all(mdl_engine *e, int on);
/* Internal, exposed for its unit test: the prompt-lookup proposer of MDL_SPEC_NGRAM. Up to k drafts continuing
 * t[0..L) from the latest earlier occurrence of its last n tokens (n = nmax down to nmin); returns the count
 * written to out (k on a match, 0 without). */
int mdl__ngram_propose(const int32_t *t, int L, int nmin, int nmax, int k, int32_t *out);

#endif
