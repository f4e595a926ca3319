/* Continuous batching engine (see mdl_engine.h). One mutex guards the request lists; the forward pass and
 * sampling run without it, on the engine thread, which alone changes a running sequence's tokens and cache.
 * Events are collected under the lock and delivered after it is released, so a callback may call back in.
 * A decode step: [MTP drafting: the pending verified pairs of every sequence, then k-1 recursive passes] ->
 * one main-model pass over k+1 positions per sequence (on a captured plan when one fits, padded) ->
 * acceptance (greedy match or rejection sampling) -> tokens emitted one by one under the lock. */
#include <pthread.h>
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
};

const char *mdl_finish_str(mdl_finish f)
{
    static const char *s[] = {"stop", "length", "abort", "error"};
    return f <= MDL_FINISH_ERROR ? s[f] : "?";
}

static seq *find(mdl_engine *e, uint64_t id)
{
    for (seq *s = e->all; s; s = s->next)
        if (s->id == id) return s;
    return NULL;
}

static mdl_event *push_ev(mdl_engine *e, mdl_event_type t, const seq *s)
{
    if (e->n_evs == e->cap_evs) {
        int nc = e->cap_evs ? e->cap_evs * 2 : 64;
        mdl_event *n = realloc(e->evs, (size_t)nc * sizeof *n);
        PD_ASSERT(n != NULL);
        e->evs = n;
        e->cap_evs = nc;
    }
    mdl_event *ev = &e->evs[e->n_evs++];
    memset(ev, 0, sizeof *ev);
    ev->type = t;
    ev->id = s->id;
    ev->user = s->user;
    ev->stop_token = -1;
    return ev;
}

/* Delivers pending events with the lock released (a callback may call into the engine). Called locked;
 * returns locked. */
static void deliver_events(mdl_engine *e)
{
    if (e->n_evs == 0) return;
    /* only the engine thread pushes events and it is here: the buffer stays put while callbacks run */
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < e->n_evs; i++) e->cb(&e->evs[i], e->cb_arg);
    pthread_mutex_lock(&e->mu);
    e->n_evs = 0;
}

static int has_commands(const mdl_engine *e)
{
    for (const seq *s = e->all; s; s = s->next)
        if (s->abort_req || (s->release_req && s->state == SEQ_HELD) || s->state == SEQ_KV_READY ||
            (s->state == SEQ_WAITING && !(s->recompute && s->n_blocks == 0))) /* preempted: waits for blocks */
            return 1;
    return 0;
}

static void seq_free(seq *s)
{
    if (!s) return;
    free(s->tokens);
    free(s->blocks);
    free(s->hidden);
    free(s);
}

/* Removes s from the live list, frees its blocks and emits DONE (under the lock). */
static void finish(mdl_engine *e, seq *s, mdl_finish why, int32_t stop_token)
{
    double now = pd_time_now();
    mdl_event *ev = push_ev(e, MDL_EV_DONE, s);
    ev->finish = why;
    ev->stop_token = stop_token;
    ev->prompt_tokens = s->n_prompt;
    ev->completion_tokens = s->n_gen;
    ev->t_queue = (s->t_prefill0 ? s->t_prefill0 : now) - s->t_submit;
    ev->t_prefill = s->t_prefill1 > s->t_prefill0 ? s->t_prefill1 - s->t_prefill0 : 0;
    ev->t_decode = s->t_decode0 ? now - s->t_decode0 : 0;
    ev->spec_steps = s->spec_steps;
    ev->spec_drafted = s->spec_drafted;
    ev->spec_accepted = s->spec_accepted;
    memcpy(ev->spec_accepted_at, s->spec_acc_at, sizeof ev->spec_accepted_at);
    for (seq **pp = &e->all; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    mdl_kv_free(e->kv, s->n_blocks, s->blocks);
    seq_free(s);
}

static int is_stop(const mdl_engine *e, const seq *s, int32_t t)
{
    if (t == e->m->cfg.eos_token_id && !s->p.ignore_eos) return 1;
    for (int i = 0; i < s->p.n_stop_ids; i++)
        if (s->p.stop_ids[i] == t) return 1;
    return 0;
}

/* Logprobs of one logits row (the model's raw distribution, before penalties and temperature, as vLLM reports
 * them): keeps a raw copy in w->raw, fills ev's top alternatives and returns the log-sum-exp. A request that asked
 * for no logprobs (top_logprobs -1) skips all of it (a 129k-entry copy and log-sum-exp per row); see logprob_of. */
static float row_logprobs(const mdl_engine *e, row_ws *w, const seq *s, const float *lg, mdl_event *ev)
{
    const int V = e->m->cfg.vocab_size;
    ev->n_top = 0;
    if (s->p.top_logprobs < 0) return 0;
    memcpy(w->raw, lg, (size_t)V * sizeof(float));
    const float lse = krn_logsumexp(lg, V);
    const int k = PD_MIN(s->p.top_logprobs, MDL_MAX_TOP_LOGPROBS);
    for (int i = 0; i < V && k > 0; i++) { /* keep the k best in descending order */
        if (ev->n_top == k && lg[i] <= ev->top_lps[k - 1]) continue;
        int j = ev->n_top < k ? ev->n_top++ : k - 1;
        while (j > 0 && ev->top_lps[j - 1] < lg[i]) {
            ev->top_lps[j] = ev->top_lps[j - 1];
            ev->top_ids[j] = ev->top_ids[j - 1];
            j--;
        }
        ev->top_lps[j] = lg[i];
        ev->top_ids[j] = i;
    }
    for (int j = 0; j < ev->n_top; j++) ev->top_lps[j] -= lse;
    return lse;
}

/* The raw logprob of token t of the row row_logprobs saw last (0 when the request asked for none). */
static float logprob_of(const row_ws *w, const seq *s, int32_t t, float lse)
{
    return s->p.top_logprobs < 0 ? 0.0f : w->raw[t] - lse;
}

/* 1 when the (n_out+1)-th generated token of s is the plain argmax of its logits row: greedy, no penalties, no
 * logit_bias, no logprobs, no min_tokens mask (what process_sample + krn_sample do then), so the step may hand the
 * row to the lm_head screen (mdl_batch.argmax_only) instead of computing its logits. */
static int argmax_row(const mdl_engine *e, const seq *s, int n_out)
{
    const krn_sampling_params *p = &s->p.sampling;
    return !e->o.full_logits && !(p->temperature > 1e-6f) && s->p.top_logprobs < 0 && n_out >= s->p.min_tokens &&
           !(p->repetition_penalty != 1.0f && p->repetition_penalty > 0) && p->frequency_penalty == 0.0f &&
           p->presence_penalty == 0.0f && s->p.n_bias == 0;
}

/* Processes logits row lg (modified: logit_bias, the min_tokens mask, then krn_sample's penalties) as the
 * (n_out+1)-th generated token of s, whose output so far is s->tokens[n_prompt .. n_prompt + n_out), and samples it
 * with rng. probs_out (optional) receives the processed distribution. */
static int32_t process_sample(const mdl_engine *e, row_ws *w, seq *s, float *lg, int n_out, pd_rng *rng,
                              float *probs_out)
{
    for (int i = 0; i < s->p.n_bias; i++) lg[s->p.bias_ids[i]] += s->p.bias[i];
    if (n_out < s->p.min_tokens) { /* stop tokens may not end it yet */
        if (!s->p.ignore_eos) lg[e->m->cfg.eos_token_id] = -INFINITY;
        for (int i = 0; i < s->p.n_stop_ids; i++) lg[s->p.stop_ids[i]] = -INFINITY;
    }
    return krn_sample(w->sampler, lg, &s->p.sampling, s->tokens, s->n_prompt, s->tokens + s->n_prompt, n_out, rng,
                      NULL, probs_out);
}

/* Samples the first token of s from logits row lg (modified). */
static int32_t sample(mdl_engine *e, seq *s, float *lg, float *logprob, mdl_event *ev)
{
    float lse = row_logprobs(e, &e->ws[0], s, lg, ev);
    int32_t t = process_sample(e, &e->ws[0], s, lg, s->n_gen, &s->rng, NULL);
    *logprob = logprob_of(&e->ws[0], s, t, lse);
    return t;
}

/* Records generated token t for s (under the lock); finishes s when it stops. Returns 1 when s is gone. */
static int emit_token(mdl_engine *e, seq *s, int32_t t, float lp, const mdl_event *tmpl)
{
    s->tokens[s->n_prompt + s->n_gen++] = t;
    mdl_event *ev = push_ev(e, MDL_EV_TOKEN, s);
    if (tmpl) {
        ev->n_top = tmpl->n_top;
        memcpy(ev->top_ids, tmpl->top_ids, sizeof ev->top_ids);
        memcpy(ev->top_lps, tmpl->top_lps, sizeof ev->top_lps);
    }
    ev->token = t;
    ev->logprob = lp;
    if (is_stop(e, s, t)) finish(e, s, MDL_FINISH_STOP, t); /* stop tokens are masked below min_tokens */
    else if (s->n_gen >= s->p.max_tokens) finish(e, s, MDL_FINISH_LENGTH, -1);
    else return 0;
    return 1;
}

/* ---- one step ------------------------------------------------------------------------------------------ */

typedef struct {
    seq *s;
    int n;        /* tokens of this step */
    int done;     /* prompt completes in this step */
} chunk;

/* A chunk that prompt prefill may compute with bf16 activations: positions inside the prompt only (a recomputed
 * sequence's chunks never straddle the prompt's end, see engine_main). */
static int chunk_bf16(const mdl_engine *e, const chunk *c)
{
    return !e->o.exact_prefill && c->s->n_cached + c->n <= c->s->n_prompt;
}

/* One forward pass (main model, then MTP over the prompt pairs) over chunks ch[0..nc); logits of the completed
 * ones into logits[] in chunk order. act_bf16: see mdl_batch. */
static void prefill_pass(mdl_engine *e, chunk *ch, int nc, int act_bf16, float *logits)
{
    const mdl_config *c = &e->m->cfg;
    const int D = c->hidden_size;
    int nt = 0, nl = 0;
    for (int i = 0; i < nc; i++) {
        seq *s = ch[i].s;
        e->b_start[i] = nt;
        e->b_ctx[i] = s->n_cached;
        e->b_tables[i] = s->blocks;
        memcpy(e->b_tokens + nt, s->tokens + s->n_cached, (size_t)ch[i].n * sizeof(int32_t));
        nt += ch[i].n;
        if (ch[i].done) e->b_rows[nl++] = nt - 1;
    }
    e->b_start[nc] = nt;
    mdl_batch b = {.n_seqs = nc, .n_tokens = nt, .tokens = e->b_tokens, .seq_start = e->b_start, .ctx_len = e->b_ctx,
                   .block_table = e->b_tables, .logits_rows = e->b_rows, .n_logits = nl, .attn = MDL_ATTN_PREFILL,
                   .act_bf16 = act_bf16};
    pd_status st = mdl_forward(e->ctx, e->kv, &b, logits);
    PD_ASSERT(st == PD_OK); /* batches are built within the plan */
    const float *h = mdl_ctx_hidden(e->ctx);
    /* last hidden state of completed prompts */
    for (int i = 0, r = 0; i < nc; i++)
        if (ch[i].done) {
            memcpy(ch[i].s->hidden, h + (size_t)e->b_rows[r] * D, (size_t)D * sizeof(float));
            r++;
        }
    /* the MTP layer over the prompt pairs (h[p], t[p+1]) whose next token is known (an n-gram drafting engine
     * never reads that cache; a prefill-only engine, k = 0, fills it for whichever decode engine takes over) */
    if (e->m->n_mtp > 0 && !e->ngram) {
        int mt = 0, mseq = 0;
        int *mstart = e->b_start, *mctx = e->b_ctx; /* reused: main batch is done */
        for (int i = 0; i < nc; i++) {
            seq *s = ch[i].s;
            int p0 = s->n_cached, p1 = PD_MIN(s->n_cached + ch[i].n, s->n_fill - 1);
            int row0 = 0;
            for (int j = 0; j < i; j++) row0 += ch[j].n;
            if (p1 <= p0) continue;
            mstart[mseq] = mt;
            mctx[mseq] = s->n_mtp_cached;
            e->b_tables[mseq] = s->blocks;
            for (int p = p0; p < p1; p++, mt++) {
                e->mtp_tokens[mt] = s->tokens[p + 1];
                memcpy(e->mtp_hidden + (size_t)mt * D, h + (size_t)(row0 + p - p0) * D, (size_t)D * sizeof(float));
            }
            mseq++;
        }
        if (mt > 0) {
            mstart[mseq] = mt;
            mdl_batch mb = {.n_seqs = mseq, .n_tokens = mt, .tokens = e->mtp_tokens, .seq_start = mstart,
                            .ctx_len = mctx, .block_table = e->b_tables, .n_logits = 0, .attn = MDL_ATTN_PREFILL,
                            .mtp_hidden = e->mtp_hidden, .act_bf16 = act_bf16};
            st = mdl_forward_mtp(e->ctx, e->kv, &mb, NULL);
            PD_ASSERT(st == PD_OK);
        }
        for (int i = 0; i < nc; i++) {
            seq *s = ch[i].s;
            int p1 = PD_MIN(s->n_cached + ch[i].n, s->n_fill - 1);
            if (p1 > s->n_mtp_cached) s->n_mtp_cached = p1;
        }
    }
}

/* The step's prompt chunks: those inside prompts as one pass with bf16 activations (unless exact_prefill), the
 * generated tokens of preempted sequences as an exact pass, as decode computed them. Reorders ch (bf16 chunks
 * first) so that e->logits holds the completed chunks' logits in the order of ch. */
static void run_prefill(mdl_engine *e, chunk *ch, int nc)
{
    int nf = 0, nl = 0;
    for (int i = 0; i < nc; i++)
        if (chunk_bf16(e, &ch[i])) {
            const chunk t = ch[i];
            memmove(ch + nf + 1, ch + nf, (size_t)(i - nf) * sizeof *ch);
            ch[nf++] = t;
        }
    for (int i = 0; i < nf; i++) nl += ch[i].done;
    if (nf > 0) prefill_pass(e, ch, nf, 1, e->logits);
    if (nc > nf) prefill_pass(e, ch + nf, nc - nf, 0, e->logits + (size_t)nl * e->m->cfg.vocab_size);
}

/* ---- decode: drafting, verification, acceptance --------------------------------------------------------- */

/* The plan for nd sequences of up to tps new tokens: the smallest captured size that holds them (fewest tokens
 * per sequence among equals), or -1. */
static int pick_plan(const mdl_engine *e, int nd, int tps)
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

/* Picks draft j (1-based) of decode slot i from MTP logits row lg (modified), or takes amax (>= 0: the row's
 * argmax, found by the pass for a row argmax_row marked), and writes it after s's tokens. */
static void pick_draft(mdl_engine *e, seq *s, int i, int j, float *lg, int32_t amax)
{
    const int V = e->m->cfg.vocab_size, k = e->k;
    const int L = s->n_prompt + s->n_gen;
    int32_t d;
    if (j <= e->n_known[i]) {
        d = e->known[i * k + j - 1];
        e->q_onehot[i * k + j - 1] = 1;
    } else if (amax >= 0) {
        d = amax; /* greedy with nothing that changes the row: what process_sample would pick */
        e->q_onehot[i * k + j - 1] = 0;
    } else {
        /* the same processing as the target's row for this position: penalties see drafts 1..j-1 */
        float *q = s->p.sampling.temperature > 1e-6f ? e->q + ((size_t)i * k + j - 1) * V : NULL;
        d = process_sample(e, &e->ws[0], s, lg, s->n_gen + j - 1, &s->rng, q);
        e->q_onehot[i * k + j - 1] = 0;
    }
    s->tokens[L + j - 1] = d;
}

/* MTP drafting for the nd running sequences: e->ks[i] drafts each, written to s->tokens[L .. L + ks) where L is
 * the sequence's length; the MTP cache then holds every verified position (rows written past it by the
 * recursive passes are scratch: later passes overwrite them before anything attends to them). */
static void draft(mdl_engine *e, mdl_ctx *ctx, seq **dec, int nd)
{
    const int V = e->m->cfg.vocab_size, D = e->m->cfg.hidden_size, k = e->k;
    for (int i = 0; i < nd; i++) {
        seq *s = dec[i];
        e->n_known[i] = 0;
        if (e->draft_cb && e->ks[i] > 0) {
            int n = e->draft_cb(s->id, s->user, s->tokens, s->n_prompt + s->n_gen, e->known + (size_t)i * k, e->ks[i],
                                e->draft_arg);
            e->n_known[i] = PD_MAX(0, PD_MIN(n, e->ks[i]));
        }
    }
    /* pass 1: the pending verified pairs (h[p], t[p+1]) of every drafting sequence; the last one's logits give
     * draft 1. A sequence that drafts nothing emits its last token this step and finishes: its MTP cache no
     * longer matters. */
    int nt = 0, ns = 0;
    for (int i = 0; i < nd; i++) {
        seq *s = dec[i];
        PD_ASSERT(s->n_hid >= 1 && s->n_mtp_cached + s->n_hid == s->n_prompt + s->n_gen - 1);
        if (e->ks[i] == 0) continue;
        e->map[ns] = i;
        e->b_start[ns] = nt;
        e->b_ctx[ns] = s->n_mtp_cached;
        e->b_tables[ns] = s->blocks;
        for (int j = 0; j < s->n_hid; j++, nt++) {
            e->mtp_tokens[nt] = s->tokens[s->n_mtp_cached + j + 1];
            memcpy(e->mtp_hidden + (size_t)nt * D, s->hidden + (size_t)j * D, (size_t)D * sizeof(float));
        }
        e->b_amax_only[ns] = (uint8_t)argmax_row(e, s, s->n_gen);
        e->b_rows[ns++] = nt - 1;
    }
    if (ns == 0) return;
    e->b_start[ns] = nt;
    mdl_batch b = {.n_seqs = ns, .n_tokens = nt, .tokens = e->mtp_tokens, .seq_start = e->b_start, .ctx_len = e->b_ctx,
                   .block_table = e->b_tables, .logits_rows = e->b_rows, .n_logits = ns, .attn = MDL_ATTN_DECODE,
                   .mtp_hidden = e->mtp_hidden, .n_vocab = e->o.draft_vocab_size, .argmax_only = e->b_amax_only,
                   .argmax = e->b_amax, .mtp_head = e->dhead_buf ? &e->dhead : NULL};
    pd_status st = mdl_forward_mtp(ctx, e->kv, &b, e->logits);
    PD_ASSERT(st == PD_OK);
    const float *h = mdl_ctx_hidden(ctx);
    for (int r = 0; r < ns; r++) {
        int i = e->map[r];
        seq *s = dec[i];
        s->n_mtp_cached += s->n_hid;
        s->n_hid = 0;
        memcpy(e->g + (size_t)i * D, h + (size_t)(e->b_start[r + 1] - 1) * D, (size_t)D * sizeof(float));
        pick_draft(e, s, i, 1, e->logits + (size_t)r * V, e->b_amax_only[r] ? e->b_amax[r] : -1);
    }
    /* passes 2..k: the MTP layer applied to its own output and the previous draft, one position further on */
    for (int j = 2; j <= k; j++) {
        ns = 0;
        for (int i = 0; i < nd; i++) {
            if (e->ks[i] < j) continue;
            seq *s = dec[i];
            const int L = s->n_prompt + s->n_gen;
            e->map[ns] = i;
            e->b_start[ns] = ns;
            e->b_ctx[ns] = L + j - 3;
            e->b_tables[ns] = s->blocks;
            e->b_rows[ns] = ns;
            e->b_amax_only[ns] = (uint8_t)argmax_row(e, s, s->n_gen + j - 1);
            e->mtp_tokens[ns] = s->tokens[L + j - 2];
            memcpy(e->mtp_hidden + (size_t)ns * D, e->g + (size_t)i * D, (size_t)D * sizeof(float));
            ns++;
        }
        if (ns == 0) break;
        e->b_start[ns] = ns;
        mdl_batch rb = {.n_seqs = ns, .n_tokens = ns, .tokens = e->mtp_tokens, .seq_start = e->b_start,
                        .ctx_len = e->b_ctx, .block_table = e->b_tables, .logits_rows = e->b_rows, .n_logits = ns,
                        .attn = MDL_ATTN_DECODE, .mtp_hidden = e->mtp_hidden, .n_vocab = e->o.draft_vocab_size,
                        .argmax_only = e->b_amax_only, .argmax = e->b_amax,
                        .mtp_head = e->dhead_buf ? &e->dhead : NULL};
        st = mdl_forward_mtp(ctx, e->kv, &rb, e->logits);
        PD_ASSERT(st == PD_OK);
        h = mdl_ctx_hidden(ctx);
        for (int r = 0; r < ns; r++) {
            int i = e->map[r];
            memcpy(e->g + (size_t)i * D, h + (size_t)r * D, (size_t)D * sizeof(float));
            pick_draft(e, dec[i], i, j, e->logits + (size_t)r * V, e->b_amax_only[r] ? e->b_amax[r] : -1);
        }
    }
}

/* Prompt lookup: up to k drafts continuing t[0..L) from the latest earlier occurrence of its last n tokens, n
 * from nmax down to nmin. A match at distance d before the suffix predicts t[L + j] = t[L + j - d]: what followed
 * the match, and past the end of t the prediction itself (a repeating phrase continues repeating), so a match
 * always yields k drafts. Returns how many were written to out (0: no match). O(L * n) per n. */
int mdl__ngram_propose(const int32_t *t, int L, int nmin, int nmax, int k, int32_t *out)
{
    for (int n = PD_MIN(nmax, L - 1); n >= nmin; n--) {
        const int32_t *suf = t + L - n;
        for (int i = L - n - 1; i >= 0; i--) {
            if (t[i] != suf[0] || memcmp(t + i, suf, (size_t)n * sizeof *t)) continue;
            const int d = L - n - i;
            for (int j = 0; j < k; j++) out[j] = j < d ? t[i + n + j] : out[j - d];
            return k;
        }
    }
    return 0;
}

/* n-gram drafting for the nd running sequences: e->ks[i] drops to the drafts found (the hook's, when set), which
 * are written to s->tokens[L .. L + ks) and count as sampled from a one-hot q. */
static void ngram_draft(mdl_engine *e, seq **dec, int nd)
{
    for (int i = 0; i < nd; i++) {
        seq *s = dec[i];
        const int L = s->n_prompt + s->n_gen, ks = e->ks[i];
        int n = 0;
        if (ks > 0)
            n = e->draft_cb ? e->draft_cb(s->id, s->user, s->tokens, L, s->tokens + L, ks, e->draft_arg)
                            : mdl__ngram_propose(s->tokens, L, e->o.ngram_min, e->o.ngram_max, ks, s->tokens + L);
        e->ks[i] = PD_MAX(0, PD_MIN(n, ks)); /* q_onehot is all ones in an n-gram engine (set at creation) */
    }
}

/* A draw from norm(max(0, p - q)) (q one-hot on d when q is NULL): where rejection sampling goes on a reject. */
static int32_t sample_residual(const mdl_engine *e, seq *s, const float *p, const float *q, int32_t d)
{
    const int V = e->m->cfg.vocab_size;
    double sum = 0;
    for (int v = 0; v < V; v++) {
        double r = (double)p[v] - (q ? q[v] : (v == d ? 1.0 : 0.0));
        if (r > 0) sum += r;
    }
    double u = pd_rng_uniform(&s->rng);
    if (!(sum > 0)) { /* p == q up to rounding: a reject is then a rounding accident; p itself is the answer */
        double c = 0;
        for (int v = 0; v < V; v++)
            if (u < (c += p[v])) return v;
        return krn_argmax(p, V);
    }
    u *= sum;
    double c = 0;
    int32_t last = krn_argmax(p, V);
    for (int v = 0; v < V; v++) {
        double r = (double)p[v] - (q ? q[v] : (v == d ? 1.0 : 0.0));
        if (r <= 0) continue;
        last = v;
        if (u < (c += r)) return v;
    }
    return last;
}

/* Verifies the drafts of decode slot i against the main model's rows [row0, row0 + ks] and decides the tokens
 * to emit: greedy accepts a draft when it is the target's argmax; with temperature, draft x is accepted with
 * probability min(1, p(x)/q(x)) and a reject draws from norm(max(0, p - q)), so every emitted token has the
 * non-speculative distribution. The row after the last accepted draft gives one more token (the bonus). */
static void accept(mdl_engine *e, row_ws *w, seq *s, int i, int row0)
{
    const int V = e->m->cfg.vocab_size, k = e->k, ks = k > 0 ? e->ks[i] : 0;
    const int L = s->n_prompt + s->n_gen;
    const int greedy = !(s->p.sampling.temperature > 1e-6f);
    int n = 0, acc = 0;
    for (int j = 0; j <= ks; j++) {
        float *lg = e->logits + (size_t)(row0 + j) * V;
        mdl_event *tm = &e->r_tmpl[i * e->tps + j];
        memset(tm, 0, sizeof *tm);
        float lse = row_logprobs(e, w, s, lg, tm);
        int32_t x;
        int ok = 0;
        const int amax = e->b_amax_only[row0 + j]; /* the step found this row's token (argmax_row) */
        if (j == ks) {
            x = amax ? e->b_amax[row0 + j] : process_sample(e, w, s, lg, s->n_gen + j, &s->rng, NULL);
        } else {
            const int32_t d = s->tokens[L + j];
            if (greedy) {
                x = amax ? e->b_amax[row0 + j] : process_sample(e, w, s, lg, s->n_gen + j, &s->rng, NULL);
                ok = x == d || e->accept_all;
            } else {
                pd_rng scratch = s->rng; /* p only: the pick krn_sample makes with it is not used */
                (void)process_sample(e, w, s, lg, s->n_gen + j, &scratch, w->pbuf);
                const float *q = e->q_onehot[i * k + j] ? NULL : e->q + ((size_t)i * k + j) * V;
                double qd = q ? q[d] : 1.0, u = pd_rng_uniform(&s->rng);
                ok = e->accept_all || (qd > 0 && u * qd < w->pbuf[d]);
                x = ok ? d : sample_residual(e, s, w->pbuf, q, d);
            }
            if (ok) x = d;
        }
        e->r_tok[i * e->tps + n] = x;
        e->r_lp[i * e->tps + n] = logprob_of(w, s, x, lse);
        n++;
        if (j < ks && !ok) break;
        if (j < ks) acc++;
    }
    e->r_n[i] = n;
    e->r_acc[i] = acc;
}

/* Acceptance of the step's sequences, spread over the pool: sequences [i0, i1) of piece ith with workspace ith. Each
 * sequence's tokens depend only on its own rows and generator, so the split changes nothing in the output. */
typedef struct {
    mdl_engine *e;
    seq **dec;
    int nd;
} accept_job;

static void accept_task(void *p, int ith, int nth)
{
    const accept_job *j = p;
    const int i0 = (int)((long)j->nd * ith / nth), i1 = (int)((long)j->nd * (ith + 1) / nth);
    for (int i = i0; i < i1; i++) accept(j->e, &j->e->ws[ith], j->dec[i], i, j->e->b_start[i]);
}

/* One decode step over the nd running sequences (engine thread, lock not held): drafts (k > 0), one main-model
 * pass over the last token and the drafts of each, acceptance. Results in e->r_*; e->last_plan/last_padded say
 * which plan ran. */
/* Drafts s verifies in its next decode step: k, never past max_tokens. */
static int step_drafts(const mdl_engine *e, const seq *s)
{
    return e->k > 0 ? PD_MAX(0, PD_MIN(e->k, s->p.max_tokens - s->n_gen - 1)) : 0;
}

/* Takes s's blocks back (under the lock): it waits to prefill its prompt and output so far again (vLLM's
 * recompute preemption), then samples on from where it stopped, with the same generator. */
static void preempt(mdl_engine *e, seq *s)
{
    mdl_kv_free(e->kv, s->n_blocks, s->blocks);
    s->n_blocks = 0;
    s->state = SEQ_WAITING;
    s->recompute = 1;
    s->prefilling = 0;
    s->n_fill = s->n_prompt + s->n_gen;
    s->n_cached = s->n_mtp_cached = s->n_hid = 0;
    e->st.preemptions++;
}

/* Gives every sequence of the coming decode step the blocks for the positions it writes (under the lock). When
 * the pool runs dry the latest-arrived running sequence is preempted, which may be the one growing. Returns the
 * number of sequences left in dec. */
static int grow(mdl_engine *e, seq **dec, int nd)
{
    int n = 0;
    for (int i = 0; i < nd; i++) {
        seq *s = dec[i];
        if (s->state != SEQ_RUNNING) continue; /* preempted for an earlier one */
        int need = mdl_kv_blocks_for(e->kv, s->n_prompt + s->n_gen + step_drafts(e, s)) - s->n_blocks;
        while (need > 0 && e->kv->n_free < need) {
            seq *victim = NULL;
            for (seq *q = e->all; q; q = q->next)
                if (q->state == SEQ_RUNNING) victim = q;
            preempt(e, victim);
            if (victim == s) break;
        }
        if (s->state != SEQ_RUNNING) continue;
        if (need > 0) {
            PD_ASSERT(s->n_blocks + need <= s->cap_blocks);
            pd_status st = mdl_kv_alloc(e->kv, need, s->blocks + s->n_blocks);
            PD_ASSERT(st == PD_OK); /* n_free >= need was made true above */
            s->n_blocks += need;
        }
    }
    for (int i = 0; i < nd; i++)
        if (dec[i]->state == SEQ_RUNNING) dec[n++] = dec[i];
    return n;
}

static void run_decode(mdl_engine *e, seq **dec, int nd)
{
    const int D = e->m->cfg.hidden_size, k = e->k;
    int tps = 1;
    for (int i = 0; i < nd && k > 0; i++)
        e->ks[i] = step_drafts(e, dec[i]); /* grow() gave the sequence blocks for up to these positions */
    if (k > 0 && e->ngram) ngram_draft(e, dec, nd);
    for (int i = 0; i < nd && k > 0; i++) tps = PD_MAX(tps, e->ks[i] + 1);
    const int pi = pick_plan(e, nd, tps);
    mdl_ctx *ctx = pi >= 0 ? e->plans[pi].ctx : e->ctx;
    if (k > 0 && !e->ngram) draft(e, ctx, dec, nd);
    int nt = 0;
    for (int i = 0; i < nd; i++) {
        seq *s = dec[i];
        const int ks = k > 0 ? e->ks[i] : 0, L = s->n_prompt + s->n_gen;
        e->b_start[i] = nt;
        e->b_ctx[i] = L - 1;
        e->b_tables[i] = s->blocks;
        for (int j = 0; j <= ks; j++, nt++) {
            e->b_tokens[nt] = s->tokens[L - 1 + j];
            e->b_rows[nt] = nt;
            e->b_amax_only[nt] = (uint8_t)argmax_row(e, s, s->n_gen + j);
        }
    }
    const int nl = nt;
    int ns = nd;
    e->last_padded = 0;
    if (pi >= 0) /* padding sequences write only the scratch blocks and ask for no logits */
        for (; ns < e->plans[pi].n_seqs; ns++) {
            e->b_start[ns] = nt;
            e->b_ctx[ns] = 0;
            e->b_tables[ns] = e->scratch_blocks;
            for (int j = 0; j < e->plans[pi].tps; j++) e->b_tokens[nt++] = 0;
            e->last_padded += e->plans[pi].tps;
        }
    e->b_start[ns] = nt;
    e->last_plan = pi;
    mdl_batch b = {.n_seqs = ns, .n_tokens = nt, .tokens = e->b_tokens, .seq_start = e->b_start, .ctx_len = e->b_ctx,
                   .block_table = e->b_tables, .logits_rows = e->b_rows, .n_logits = nl, .attn = MDL_ATTN_DECODE,
                   .argmax_only = e->b_amax_only, .argmax = e->b_amax};
    pd_status st = mdl_forward(ctx, e->kv, &b, e->logits);
    PD_ASSERT(st == PD_OK);
    if (k > 0 && !e->ngram) { /* main hidden states of the verified positions: the next step's MTP pairs */
        const float *h = mdl_ctx_hidden(ctx);
        for (int i = 0; i < nd; i++)
            memcpy(dec[i]->hidden, h + (size_t)e->b_start[i] * D, (size_t)(e->ks[i] + 1) * D * sizeof(float));
    }
    accept_job aj = {e, dec, nd};
    krn_parallel(accept_task, &aj, PD_MIN(nd, e->n_ws));
}

static void *engine_main(void *arg)
{
    mdl_engine *e = arg;
    const mdl_config *c = &e->m->cfg;
    const int V = c->vocab_size;
    const int S = e->o.max_num_seqs;
    chunk *ch = calloc((size_t)S, sizeof *ch);
    seq **dec = calloc((size_t)S, sizeof *dec);
    int32_t *first = calloc((size_t)S, sizeof *first);
    float *first_lp = calloc((size_t)S, sizeof *first_lp);
    mdl_event *tmpl = calloc((size_t)S, sizeof *tmpl);
    PD_ASSERT(ch && dec && first && first_lp && tmpl);
    pthread_mutex_lock(&e->mu);
    while (!e->stop) {
        /* commands */
        for (seq *s = e->all, *nx; s; s = nx) {
            nx = s->next;
            if (s->abort_req) finish(e, s, MDL_FINISH_ABORT, -1);
            else if (s->release_req && s->state == SEQ_HELD) finish(e, s, MDL_FINISH_STOP, -1);
        }
        int running = 0;
        for (seq *s = e->all, *nx; s; s = nx) {
            nx = s->next; /* the first token may finish s */
            if (s->state == SEQ_KV_READY && running < e->o.max_num_seqs) {
                /* the prefill side sampled the first token with one draw of the same generator */
                if (s->p.sampling.temperature > 1e-6f) (void)pd_rng_uniform(&s->rng);
                s->state = SEQ_RUNNING;
                s->t_decode0 = pd_time_now();
                s->n_cached = s->n_prompt;
                s->n_mtp_cached = s->n_prompt - 1;
                s->n_hid = 1; /* the hidden state that came with the first token */
                emit_token(e, s, s->first_token, s->first_logprob, &s->first_top);
            }
        }
        running = 0;
        for (seq *s = e->all; s; s = s->next) running += s->state == SEQ_RUNNING || (s->state == SEQ_WAITING && s->prefilling);
        /* plan: prompt chunks up to the budget, then every running sequence */
        int nc = 0, budget = e->o.max_num_batched_tokens, nd = 0;
        for (seq *s = e->all; s && budget > 0 && nc < e->o.max_num_seqs; s = s->next) {
            if (s->state != SEQ_WAITING) continue;
            if (!s->prefilling) {
                const int local = s->mode == MDL_REQ_LOCAL || s->recompute;
                if (local && running >= e->o.max_num_seqs) continue;
                if (s->recompute) { /* a preempted sequence takes its blocks back before it prefills again */
                    int nb = mdl_kv_blocks_for(e->kv, s->n_fill);
                    if (e->kv->n_free < nb || mdl_kv_alloc(e->kv, nb, s->blocks) != PD_OK) continue;
                    s->n_blocks = nb;
                }
                s->prefilling = 1;
                if (!s->recompute) s->t_prefill0 = pd_time_now();
                if (local) running++;
            }
            int n = PD_MIN(budget, s->n_fill - s->n_cached);
            /* a recomputed sequence's prompt and generated tokens go in separate chunks: the prompt part as its
             * prefill computed it (bf16 activations, the same KV bits), the rest exactly, as decode computed it */
            if (!e->o.exact_prefill && s->n_cached < s->n_prompt) n = PD_MIN(n, s->n_prompt - s->n_cached);
            ch[nc].s = s;
            ch[nc].n = n;
            ch[nc].done = s->n_cached + n == s->n_fill;
            budget -= n;
            nc++;
        }
        for (seq *s = e->all; s && nd < e->o.max_num_seqs; s = s->next)
            if (s->state == SEQ_RUNNING) dec[nd++] = s;
        const uint64_t preempted = e->st.preemptions;
        nd = grow(e, dec, nd);
        if (nc == 0 && nd == 0 && e->st.preemptions != preempted) continue; /* plan the recomputation now */
        if (nc == 0 && nd == 0) {
            deliver_events(e);
            if (!e->stop && !has_commands(e)) pthread_cond_wait(&e->cv, &e->mu);
            continue;
        }
        /* events so far go out before the long computation */
        if (e->n_evs) {
            deliver_events(e);
            int stale = 0; /* a callback may have aborted one we planned: plan again */
            for (int i = 0; i < nc; i++) stale |= ch[i].s->abort_req;
            for (int i = 0; i < nd; i++) stale |= dec[i]->abort_req;
            if (stale) continue;
        }
        pthread_mutex_unlock(&e->mu);

        /* ---- compute, unlocked ---- */
        if (nc > 0) run_prefill(e, ch, nc);
        for (int i = 0, r = 0; i < nc; i++) {
            if (!ch[i].done) continue;
            memset(&tmpl[i], 0, sizeof tmpl[i]);
            first[i] = sample(e, ch[i].s, e->logits + (size_t)r * V, &first_lp[i], &tmpl[i]);
            r++;
        }
        /* decode step */
        double t_dec = 0;
        if (nd > 0) {
            double t0 = pd_time_now();
            run_decode(e, dec, nd);
            t_dec = pd_time_now() - t0;
        }

        pthread_mutex_lock(&e->mu);
        double now = pd_time_now();
        for (int i = 0; i < nc; i++) {
            seq *s = ch[i].s;
            s->n_cached += ch[i].n;
            e->st.prefill_tokens += (uint64_t)ch[i].n;
            if (s->mode == MDL_REQ_PREFILL_ONLY) {
                mdl_event *ev = push_ev(e, MDL_EV_BLOCKS, s);
                ev->n_blocks_done = ch[i].done ? mdl_kv_blocks_for(e->kv, s->n_prompt) : s->n_cached / e->o.block_size;
            }
            if (!ch[i].done) continue;
            s->t_prefill1 = now;
            s->prefilling = 0;
            if (s->mode == MDL_REQ_PREFILL_ONLY) {
                s->state = SEQ_HELD;
                mdl_event *ev = push_ev(e, MDL_EV_PREFILLED, s);
                ev->token = first[i];
                ev->logprob = first_lp[i];
                ev->n_top = tmpl[i].n_top;
                memcpy(ev->top_ids, tmpl[i].top_ids, sizeof ev->top_ids);
                memcpy(ev->top_lps, tmpl[i].top_lps, sizeof ev->top_lps);
                ev->hidden = s->hidden;
                ev->prompt_tokens = s->n_prompt;
                ev->t_queue = s->t_prefill0 - s->t_submit;
                ev->t_prefill = now - s->t_prefill0;
                s->first_token = first[i];
            } else {
                s->state = SEQ_RUNNING;
                if (!s->recompute) s->t_decode0 = now;
                s->recompute = 0;
                s->n_hid = 1; /* the last prefilled position's hidden state */
                if (!s->abort_req) emit_token(e, s, first[i], first_lp[i], &tmpl[i]);
            }
        }
        if (nd > 0) {
            e->st.decode_steps++;
            e->st.decode_seconds += t_dec;
            if (e->last_plan >= 0) {
                e->st.graph_steps[e->plans[e->last_plan].size_idx]++;
                e->st.graph_padded_rows += (uint64_t)e->last_padded;
            } else if (e->n_plans > 0) {
                e->st.graph_eager_steps++;
            }
        }
        for (int i = 0; i < nd; i++) {
            seq *s = dec[i];
            if (s->abort_req) continue;
            const int ks = e->k > 0 ? e->ks[i] : 0, acc = e->r_acc[i];
            if (ks > 0) {
                s->spec_steps++;
                s->spec_drafted += ks;
                s->spec_accepted += acc;
                e->st.spec_seq_steps++;
                e->st.spec_drafted += (uint64_t)ks;
                e->st.spec_accepted += (uint64_t)acc;
                for (int j = 0; j < acc; j++) {
                    s->spec_acc_at[j]++;
                    e->st.spec_accepted_at[j]++;
                }
            }
            if (ks > 0) s->n_hid = acc + 1; /* verified positions L-1 .. L-1+acc: hidden rows 0..acc */
            /* one by one: the first stop condition ends the request, later accepted tokens are dropped */
            int gone = 0;
            for (int j = 0; j < e->r_n[i] && !gone; j++) {
                e->st.decode_tokens++;
                gone = emit_token(e, s, e->r_tok[i * e->tps + j], e->r_lp[i * e->tps + j], &e->r_tmpl[i * e->tps + j]);
            }
            /* an MTP sequence that did not draft was at its last token (an n-gram one may have found no match) */
            PD_ASSERT(gone || ks > 0 || e->k == 0 || e->ngram);
        }
        e->st.steps++;
    }
    pthread_mutex_unlock(&e->mu);
    free(ch);
    free(dec);
    free(first);
    free(first_lp);
    free(tmpl);
    return NULL;
}

/* ---- public ------------------------------------------------------------------------------------------- */

/* The captured sizes: the option's list (validated) or the default (powers of two up to max_num_seqs). */
static pd_status graph_sizes(const mdl_engine_opts *o, int *sizes, int *n)
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
    if (graph_sizes(o, sizes, &n) != PD_OK || n == 0) return o->n_blocks;
    int tps = o->num_speculative_tokens + 1;
    return o->n_blocks + (tps + o->block_size - 1) / o->block_size;
}

/* draft_head_int8: an int8 (W8A8-packed) copy of the MTP head's first draft_vocab_size rows (or all), which the
 * draft passes score with (mdl_batch.mtp_head). 0 on out of memory. */
static int make_draft_head(mdl_engine *e)
{
    const krn_mat *src = &e->m->layers[e->m->n_layers].head;
    const int nv = e->o.draft_vocab_size > 0 ? e->o.draft_vocab_size : e->m->cfg.vocab_size;
    krn_mat h = {.type = src->type, .rows = nv, .cols = src->cols, .data = src->data, .scale = src->scale,
                 .block_r = src->block_r, .block_c = src->block_c};
    const size_t bytes = krn_mat_prepack_size(&h, KRN_PREPACK_W8A8);
    void *buf = bytes ? pd_huge_map(bytes) : NULL;
    if (!buf || krn_mat_prepack(&h, KRN_PREPACK_W8A8, buf) != PD_OK) {
        pd_error("draft_head_dtype int8: cannot make the int8 copy of the MTP head (%d rows, %.1f MB)", nv,
                 bytes / 1e6);
        if (buf) pd_huge_unmap(buf, bytes);
        return 0;
    }
    e->dhead = h;
    e->dhead_buf = buf;
    e->dhead_bytes = bytes;
    pd_info("MTP drafts score with an int8 copy of the MTP head: %d rows, %.1f MB (the checkpoint's: %.1f MB)", nv,
            bytes / 1e6, (double)nv * src->cols * krn_type_size(src->type) / 1e6);
    if (!strcmp(krn_kernels_name(), "ref"))
        pd_warn("draft_head_dtype int8 on the portable kernels: their int8 product is scalar and slower than the "
                "checkpoint's head; leave it out here");
    return 1;
}

pd_status mdl_engine_create(mdl_model *m, const mdl_engine_opts *o, mdl_event_cb cb, void *cb_arg, mdl_engine **out)
{
    if (o->max_num_seqs < 1 || o->max_num_seqs > 256 || o->max_num_batched_tokens < 1 || o->block_size < 1 ||
        o->n_blocks < 1 || o->max_model_len < 2 || o->num_speculative_tokens < 0 ||
        o->num_speculative_tokens > MDL_MAX_SPEC_TOKENS)
        return PD_ERR_INVALID;
    if (o->spec_method != MDL_SPEC_MTP && o->spec_method != MDL_SPEC_NGRAM) return PD_ERR_INVALID;
    if (o->spec_method == MDL_SPEC_MTP && o->num_speculative_tokens > 0 && m->n_mtp < 1) {
        pd_error("num_speculative_tokens %d needs the model's MTP layer, which is not loaded", o->num_speculative_tokens);
        return PD_ERR_INVALID;
    }
    if (o->ngram_min < 0 || o->ngram_max < 0 || o->ngram_min > MDL_MAX_NGRAM || o->ngram_max > MDL_MAX_NGRAM ||
        (o->ngram_min && o->ngram_max && o->ngram_min > o->ngram_max))
        return PD_ERR_INVALID;
    if (o->draft_vocab_size && (o->draft_vocab_size < MDL_MIN_DRAFT_VOCAB || o->draft_vocab_size > m->cfg.vocab_size))
        return PD_ERR_INVALID;
    mdl_engine *e = calloc(1, sizeof *e);
    if (!e) return PD_ERR_NOMEM;
    e->m = m;
    e->o = *o;
    e->cb = cb;
    e->cb_arg = cb_arg;
    e->k = o->num_speculative_tokens;
    e->tps = e->k + 1;
    e->ngram = e->k > 0 && o->spec_method == MDL_SPEC_NGRAM;
    if (!e->o.ngram_min) e->o.ngram_min = e->o.ngram_max ? e->o.ngram_max : 5;
    if (!e->o.ngram_max) e->o.ngram_max = e->o.ngram_min;
    e->last_plan = -1;
    const int D = m->cfg.hidden_size, V = m->cfg.vocab_size, S = o->max_num_seqs, k = e->k;
    e->max_tokens = PD_MAX(o->max_num_batched_tokens, S * e->tps);
    pd_status st = graph_sizes(o, e->sizes, &e->n_sizes);
    if (st != PD_OK) goto fail_engine;
    /* padding sequences write positions 0 .. tps-1 of these blocks; the pool gets them on top of n_blocks */
    e->n_scratch = mdl_engine_pool_blocks(o) - o->n_blocks;
    st = mdl_kv_pool_create_in(&m->cfg, m->n_mtp, m->opts.kv_type, o->block_size, o->n_blocks + e->n_scratch, o->kv_mem,
                               &e->kv);
    if (st != PD_OK) goto fail_engine;
    if (e->n_scratch > 0) {
        e->scratch_blocks = malloc((size_t)e->n_scratch * sizeof(int));
        if (!e->scratch_blocks) {
            st = PD_ERR_NOMEM;
            goto fail_engine;
        }
        if ((st = mdl_kv_alloc(e->kv, e->n_scratch, e->scratch_blocks)) != PD_OK) goto fail_engine;
    }
    if ((st = mdl_ctx_create(m, e->max_tokens, S * e->tps, &e->ctx)) != PD_OK) goto fail_engine;
    for (int i = 0; i < e->n_sizes; i++) {
        for (int t = 0; t < (k > 0 ? 2 : 1); t++) {
            plan *pl = &e->plans[e->n_plans];
            pl->n_seqs = e->sizes[i];
            pl->tps = t == 0 ? e->tps : 1;
            pl->size_idx = i;
            if ((st = mdl_ctx_create(m, pl->n_seqs * pl->tps, pl->n_seqs * pl->tps, &pl->ctx)) != PD_OK) goto fail_engine;
            e->n_plans++;
        }
    }
    e->n_ws = PD_MIN(S, PD_MIN(2 * krn_threads_get(), 16)); /* pieces of acceptance (krn_parallel: up to 2 per thread) */
    e->n_ws = PD_MAX(e->n_ws, 1);
    e->ws = calloc((size_t)e->n_ws, sizeof *e->ws);
    if (!e->ws) {
        st = PD_ERR_NOMEM;
        goto fail_engine;
    }
    for (int i = 0; i < e->n_ws; i++) {
        if ((st = krn_sampler_create(V, &e->ws[i].sampler)) != PD_OK) goto fail_engine;
        e->ws[i].raw = malloc((size_t)V * sizeof(float));
        e->ws[i].pbuf = k > 0 ? malloc((size_t)V * sizeof(float)) : NULL;
        if (!e->ws[i].raw || (k > 0 && !e->ws[i].pbuf)) {
            st = PD_ERR_NOMEM;
            goto fail_engine;
        }
    }
    e->b_tokens = malloc((size_t)e->max_tokens * sizeof(int32_t));
    e->b_start = malloc((size_t)(S + 1) * sizeof(int));
    e->b_ctx = malloc((size_t)S * sizeof(int));
    e->b_rows = malloc((size_t)e->max_tokens * sizeof(int));
    e->b_amax_only = malloc((size_t)e->max_tokens);
    e->b_amax = malloc((size_t)e->max_tokens * sizeof(int32_t));
    e->b_tables = malloc((size_t)S * sizeof(int *));
    e->logits = malloc((size_t)S * e->tps * V * sizeof(float));
    e->mtp_hidden = malloc((size_t)e->max_tokens * D * sizeof(float));
    e->mtp_tokens = malloc((size_t)e->max_tokens * sizeof(int32_t));
    e->cap_evs = 64;
    e->evs = malloc((size_t)e->cap_evs * sizeof *e->evs);
    e->ks = calloc((size_t)S, sizeof(int));
    e->r_tok = malloc((size_t)S * e->tps * sizeof(int32_t));
    e->r_lp = malloc((size_t)S * e->tps * sizeof(float));
    e->r_tmpl = malloc((size_t)S * e->tps * sizeof(mdl_event));
    e->r_n = calloc((size_t)S, sizeof(int));
    e->r_acc = calloc((size_t)S, sizeof(int));
    int ok = e->b_tokens && e->b_start && e->b_ctx && e->b_rows && e->b_amax_only && e->b_amax && e->b_tables && e->logits && e->mtp_hidden &&
             e->mtp_tokens && e->evs && e->ks && e->r_tok && e->r_lp && e->r_tmpl && e->r_n && e->r_acc;
    if (k > 0) {
        e->q = malloc((size_t)S * k * V * sizeof(float));
        e->q_onehot = calloc((size_t)S * k, 1);
        e->g = malloc((size_t)S * D * sizeof(float));
        e->known = malloc((size_t)S * k * sizeof(int32_t));
        e->n_known = calloc((size_t)S, sizeof(int));
        e->map = malloc((size_t)S * sizeof(int));
        ok = ok && e->q && e->q_onehot && e->g && e->known && e->n_known && e->map;
        if (ok && e->ngram) memset(e->q_onehot, 1, (size_t)S * k); /* prompt-lookup drafts are deterministic */
        if (ok && !e->ngram && o->draft_head_int8) ok = make_draft_head(e);
    }
    if (!ok) {
        st = PD_ERR_NOMEM;
        goto fail_engine;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        st = PD_ERR_INTERNAL;
        goto fail_engine;
    }
    e->started = 1;
    *out = e;
    return PD_OK;
fail_engine:
    mdl_engine_destroy(e);
    return st;
}

void mdl_engine_destroy(mdl_engine *e)
{
    if (!e) return;
    if (e->started) {
        pthread_mutex_lock(&e->mu);
        e->stop = 1;
        pthread_cond_signal(&e->cv);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
    }
    for (seq *s = e->all, *nx; s; s = nx) {
        nx = s->next;
        seq_free(s);
    }
    if (e->dhead_buf) pd_huge_unmap(e->dhead_buf, e->dhead_bytes);
    for (int i = 0; i < e->n_plans; i++) mdl_ctx_destroy(e->plans[i].ctx);
    mdl_ctx_destroy(e->ctx);
    mdl_kv_pool_destroy(e->kv);
    for (int i = 0; e->ws && i < e->n_ws; i++) {
        krn_sampler_destroy(e->ws[i].sampler);
        free(e->ws[i].raw);
        free(e->ws[i].pbuf);
    }
    free(e->ws);
    void *bufs[] = {e->b_tokens, e->b_start, e->b_ctx, e->b_rows, e->b_amax_only, e->b_amax, e->b_tables, e->logits, e->mtp_hidden,
                    e->mtp_tokens, e->evs, e->ks, e->r_tok, e->r_lp, e->r_tmpl, e->r_n, e->r_acc, e->q, e->q_onehot,
                    e->g, e->known, e->n_known, e->map, e->scratch_blocks};
    for (size_t i = 0; i < PD_ARRAY_LEN(bufs); i++) free(bufs[i]);
    free(e);
}

void mdl_engine_set_draft_hook(mdl_engine *e, mdl_draft_cb cb, void *arg)
{
    pthread_mutex_lock(&e->mu);
    e->draft_cb = cb;
    e->draft_arg = arg;
    pthread_mutex_unlock(&e->mu);
}

void mdl__engine_test_accept_all(mdl_engine *e, int on)
{
    pthread_mutex_lock(&e->mu);
    e->accept_all = on;
    pthread_mutex_unlock(&e->mu);
}

pd_status mdl_engine_submit(mdl_engine *e, uint64_t id, void *user, const int32_t *prompt, int n_prompt,
                            const mdl_gen_params *p, mdl_req_mode mode)
{
    const mdl_config *c = &e->m->cfg;
    if (n_prompt < 1 || p->max_tokens < 1 || p->n_stop_ids < 0 || p->n_stop_ids > MDL_MAX_STOP_IDS ||
        p->top_logprobs < -1 || p->top_logprobs > MDL_MAX_TOP_LOGPROBS || p->sampling.temperature < 0)
        return PD_ERR_INVALID;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab_size) return PD_ERR_INVALID;
    for (int i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] < 0 || p->stop_ids[i] >= c->vocab_size) return PD_ERR_INVALID;
    int gen = mode == MDL_REQ_PREFILL_ONLY ? 0 : p->max_tokens;
    if (n_prompt + gen > e->o.max_model_len) return PD_ERR_RANGE;
    /* the whole sequence must fit the pool on its own; the prompt's blocks are taken now, the rest as it grows */
    int cap = mdl_kv_blocks_for(e->kv, n_prompt + gen), nb = mdl_kv_blocks_for(e->kv, n_prompt);
    if (cap > e->o.n_blocks) return PD_ERR_RANGE;
    seq *s = calloc(1, sizeof *s);
    if (!s) return PD_ERR_NOMEM;
    s->tokens = malloc((size_t)(n_prompt + p->max_tokens) * sizeof(int32_t));
    s->blocks = malloc((size_t)cap * sizeof(int));
    s->hidden = malloc((size_t)(e->k + 1) * c->hidden_size * sizeof(float));
    if (!s->tokens || !s->blocks || !s->hidden) {
        seq_free(s);
        return PD_ERR_NOMEM;
    }
    memcpy(s->tokens, prompt, (size_t)n_prompt * sizeof(int32_t));
    s->id = id;
    s->user = user;
    s->mode = mode;
    s->n_prompt = n_prompt;
    s->n_fill = n_prompt;
    s->n_blocks = nb;
    s->cap_blocks = cap;
    s->p = *p;
    pd_rng_seed(&s->rng, p->has_seed ? p->seed : pd_time_ns() ^ id);
    s->state = mode == MDL_REQ_REMOTE_KV ? SEQ_WAIT_KV : SEQ_WAITING;
    s->t_submit = pd_time_now();
    pthread_mutex_lock(&e->mu);
    pd_status st = PD_OK;
    int waiting = 0, preempted = 0;
    long waiting_tokens = 0; /* as mdl_engine_get_stats counts queued prompt tokens */
    for (seq *q = e->all; q; q = q->next) {
        if (q->state == SEQ_WAITING) {
            waiting++;
            waiting_tokens += q->n_fill - q->n_cached;
        }
        preempted |= q->recompute && q->n_blocks == 0;
    }
    int prefills_here = mode != MDL_REQ_REMOTE_KV;
    if (find(e, id)) st = PD_ERR_INVALID;
    else if (e->o.max_waiting > 0 && waiting >= e->o.max_waiting) st = PD_ERR_FULL;
    else if (prefills_here && e->o.max_waiting_tokens > 0 && waiting_tokens > 0 &&
             waiting_tokens + n_prompt > e->o.max_waiting_tokens)
        st = PD_ERR_FULL;
    /* preempted sequences get blocks first; a 1% watermark keeps room for running sequences to grow into */
    else if (preempted || e->kv->n_free - nb < e->o.n_blocks / 100) st = PD_ERR_BUSY;
    else st = mdl_kv_alloc(e->kv, nb, s->blocks);
    if (st == PD_OK) {
        seq **pp = &e->all; /* append: arrival order is prefill order */
        while (*pp) pp = &(*pp)->next;
        *pp = s;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    if (st != PD_OK) seq_free(s);
    return st;
}

int mdl_engine_blocks(mdl_engine *e, uint64_t id, int *out, int cap)
{
    pthread_mutex_lock(&e->mu);
    seq *s = find(e, id);
    int n = -1;
    if (s) {
        n = s->n_blocks;
        memcpy(out, s->blocks, (size_t)PD_MIN(n, cap) * sizeof(int));
    }
    pthread_mutex_unlock(&e->mu);
    return n;
}

pd_status mdl_engine_kv_ready(mdl_engine *e, uint64_t id, int32_t first_token, float first_logprob, int n_top,
                              const int32_t *top_ids, const float *top_lps, const float *hidden)
{
    if (first_token < 0 || first_token >= e->m->cfg.vocab_size || n_top < 0 || n_top > MDL_MAX_TOP_LOGPROBS)
        return PD_ERR_INVALID;
    pthread_mutex_lock(&e->mu);
    seq *s = find(e, id);
    pd_status st = PD_OK;
    if (!s || s->state != SEQ_WAIT_KV) st = PD_ERR_NOT_FOUND;
    else {
        s->first_token = first_token;
        s->first_logprob = first_logprob;
        memset(&s->first_top, 0, sizeof s->first_top);
        s->first_top.n_top = n_top;
        if (n_top) {
            memcpy(s->first_top.top_ids, top_ids, (size_t)n_top * sizeof *top_ids);
            memcpy(s->first_top.top_lps, top_lps, (size_t)n_top * sizeof *top_lps);
        }
        if (hidden) memcpy(s->hidden, hidden, (size_t)e->m->cfg.hidden_size * sizeof(float));
        s->state = SEQ_KV_READY;
        s->t_prefill0 = s->t_prefill1 = pd_time_now();
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    return st;
}

void mdl_engine_abort(mdl_engine *e, uint64_t id)
{
    pthread_mutex_lock(&e->mu);
    seq *s = find(e, id);
    if (s) {
        s->abort_req = 1;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
}

void mdl_engine_release(mdl_engine *e, uint64_t id)
{
    pthread_mutex_lock(&e->mu);
    seq *s = find(e, id);
    if (s) {
        s->release_req = 1;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
}

void mdl_engine_get_stats(mdl_engine *e, mdl_engine_stats *out)
{
    pthread_mutex_lock(&e->mu);
    mdl_engine_stats s = e->st;
    s.running = s.waiting = s.held = 0;
    s.queued_prompt_tokens = 0;
    for (seq *q = e->all; q; q = q->next) {
        if (q->state == SEQ_RUNNING || q->state == SEQ_KV_READY) s.running++;
        else if (q->state == SEQ_WAITING || q->state == SEQ_WAIT_KV) {
            s.waiting++;
            if (q->state == SEQ_WAITING) s.queued_prompt_tokens += q->n_fill - q->n_cached;
        } else if (q->state == SEQ_HELD) s.held++;
    }
    s.free_blocks = e->kv->n_free;
    s.total_blocks = e->o.n_blocks;
    s.spec_mean_accepted_len = s.spec_seq_steps ? 1.0 + (double)s.spec_accepted / (double)s.spec_seq_steps : 0.0;
    s.n_graph_sizes = e->n_sizes;
    memcpy(s.graph_sizes, e->sizes, sizeof s.graph_sizes);
    pthread_mutex_unlock(&e->mu);
    *out = s;
}

mdl_kv_pool *mdl_engine_pool(mdl_engine *e) { return e->kv; }

int mdl_engine_max_model_len(const mdl_engine *e) { return e->o.max_model_len; }

void mdl_engine_layout(const mdl_engine *e, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%dx%d/%d/%s", e->m->cfg.architecture, e->kv->n_layers, e->kv->row, e->kv->block_size,
             krn_type_name(e->kv->type));
}
