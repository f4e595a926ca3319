/* Continuous batching engine (see mdl_engine.h). One mutex guards the request lists; the forward pass and
 * sampling run without it, on the engine thread, which alone changes a running sequence's tokens and cache.
 * Events are collected under the lock and delivered after it is released, so a callback may call back in. */
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
    int *blocks, n_blocks;
    mdl_gen_params p;
    pd_rng rng;
    int abort_req, release_req, prefilling;
    int32_t first_token;
    float first_logprob;
    mdl_event first_top;      /* REMOTE_KV: the first token's alternatives */
    float *hidden;            /* [hidden] last main hidden state (MTP input) */
    double t_submit, t_prefill0, t_prefill1, t_decode0;
    struct seq *next;
} seq;

struct mdl_engine_s {
    mdl_model *m;
    mdl_engine_opts o;
    mdl_kv_pool *kv;
    mdl_ctx *ctx;
    krn_sampler sampler;
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
    const int **b_tables;
    seq **b_seqs;
    float *logits;            /* [max_num_seqs][vocab] */
    float *raw;               /* [vocab] raw logits of the row being sampled */
    float *mtp_hidden;        /* [max_tokens][hidden] */
    int32_t *mtp_tokens;
    int max_tokens;
    mdl_event *evs;           /* pending events */
    int n_evs, cap_evs;
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
    mdl_event *evs = e->evs;
    int n = e->n_evs;
    e->evs = NULL;
    e->n_evs = e->cap_evs = 0;
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < n; i++) e->cb(&evs[i], e->cb_arg);
    free(evs);
    pthread_mutex_lock(&e->mu);
}

static int has_commands(const mdl_engine *e)
{
    for (const seq *s = e->all; s; s = s->next)
        if (s->abort_req || (s->release_req && s->state == SEQ_HELD) || s->state == SEQ_KV_READY ||
            s->state == SEQ_WAITING)
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

/* Samples from logits row lg (modified) for s. Logprobs (the sampled token's and the alternatives') come from
 * the model's raw distribution, before penalties and temperature, as vLLM reports them. raw: [vocab] scratch. */
static int32_t sample(mdl_engine *e, seq *s, float *lg, float *raw, float *logprob, mdl_event *ev)
{
    const int V = e->m->cfg.vocab_size;
    float mx = lg[krn_argmax(lg, V)];
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)lg[i] - mx);
    const float lse = mx + (float)log(sum);
    const int k = PD_MIN(s->p.top_logprobs, MDL_MAX_TOP_LOGPROBS);
    ev->n_top = 0;
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
    const krn_sampling_params *sp = &s->p.sampling;
    int modifies = s->n_gen < s->p.min_tokens || sp->repetition_penalty != 1.0f || sp->frequency_penalty != 0.0f ||
                   sp->presence_penalty != 0.0f;
    if (modifies) memcpy(raw, lg, (size_t)V * sizeof(float));
    if (s->n_gen < s->p.min_tokens) { /* stop tokens may not end it yet */
        if (!s->p.ignore_eos) lg[e->m->cfg.eos_token_id] = -INFINITY;
        for (int i = 0; i < s->p.n_stop_ids; i++) lg[s->p.stop_ids[i]] = -INFINITY;
    }
    int32_t t = krn_sample(e->sampler, lg, sp, s->tokens, s->n_prompt, s->tokens + s->n_prompt, s->n_gen, &s->rng,
                           NULL, NULL);
    *logprob = (modifies ? raw[t] : lg[t]) - lse;
    return t;
}

/* Records generated token t for s (under the lock); finishes s when it stops. */
static void emit_token(mdl_engine *e, seq *s, int32_t t, float lp, const mdl_event *tmpl)
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
}

/* ---- one step ------------------------------------------------------------------------------------------ */

typedef struct {
    seq *s;
    int n;        /* tokens of this step */
    int done;     /* prompt completes in this step */
} chunk;

static void run_prefill(mdl_engine *e, chunk *ch, int nc)
{
    const mdl_config *c = &e->m->cfg;
    const int V = c->vocab_size, D = c->hidden_size;
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
                   .block_table = e->b_tables, .logits_rows = e->b_rows, .n_logits = nl, .attn = MDL_ATTN_PREFILL};
    pd_status st = mdl_forward(e->ctx, e->kv, &b, e->logits);
    PD_ASSERT(st == PD_OK); /* batches are built within the plan */
    const float *h = mdl_ctx_hidden(e->ctx);
    /* last hidden state of completed prompts */
    for (int i = 0, r = 0; i < nc; i++)
        if (ch[i].done) {
            memcpy(ch[i].s->hidden, h + (size_t)e->b_rows[r] * D, (size_t)D * sizeof(float));
            r++;
        }
    /* the MTP layer over the prompt pairs (h[p], t[p+1]) whose next token is known */
    if (e->m->n_mtp > 0) {
        int mt = 0, mseq = 0;
        int *mstart = e->b_start, *mctx = e->b_ctx; /* reused: main batch is done */
        for (int i = 0; i < nc; i++) {
            seq *s = ch[i].s;
            int p0 = s->n_cached, p1 = PD_MIN(s->n_cached + ch[i].n, s->n_prompt - 1);
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
                            .mtp_hidden = e->mtp_hidden};
            st = mdl_forward_mtp(e->ctx, e->kv, &mb, NULL);
            PD_ASSERT(st == PD_OK);
        }
        for (int i = 0; i < nc; i++) {
            seq *s = ch[i].s;
            int p1 = PD_MIN(s->n_cached + ch[i].n, s->n_prompt - 1);
            if (p1 > s->n_mtp_cached) s->n_mtp_cached = p1;
        }
    }
    (void)V;
}

static void *engine_main(void *arg)
{
    mdl_engine *e = arg;
    const mdl_config *c = &e->m->cfg;
    const int V = c->vocab_size;
    const int S = e->o.max_num_seqs;
    chunk *ch = calloc((size_t)S, sizeof *ch);
    seq **dec = calloc((size_t)S, sizeof *dec);
    int32_t *first = calloc((size_t)S, sizeof *first), *dtok = calloc((size_t)S, sizeof *dtok);
    float *first_lp = calloc((size_t)S, sizeof *first_lp), *dlp = calloc((size_t)S, sizeof *dlp);
    mdl_event *tmpl = calloc((size_t)S, sizeof *tmpl), *dtmpl = calloc((size_t)S, sizeof *dtmpl);
    PD_ASSERT(ch && dec && first && dtok && first_lp && dlp && tmpl && dtmpl);
    pthread_mutex_lock(&e->mu);
    while (!e->stop) {
        /* commands */
        for (seq *s = e->all, *nx; s; s = nx) {
            nx = s->next;
            if (s->abort_req) finish(e, s, MDL_FINISH_ABORT, -1);
            else if (s->release_req && s->state == SEQ_HELD) finish(e, s, MDL_FINISH_STOP, -1);
        }
        int running = 0;
        for (seq *s = e->all; s; s = s->next) {
            if (s->state == SEQ_KV_READY && running < e->o.max_num_seqs) {
                /* the prefill side sampled the first token with one draw of the same generator */
                if (s->p.sampling.temperature > 1e-6f) (void)pd_rng_uniform(&s->rng);
                s->state = SEQ_RUNNING;
                s->t_decode0 = pd_time_now();
                s->n_cached = s->n_prompt;
                s->n_mtp_cached = s->n_prompt - 1;
                emit_token(e, s, s->first_token, s->first_logprob, &s->first_top);
                continue; /* s may be gone */
            }
        }
        running = 0;
        for (seq *s = e->all; s; s = s->next) running += s->state == SEQ_RUNNING || (s->state == SEQ_WAITING && s->prefilling);
        /* plan: prompt chunks up to the budget, then every running sequence */
        int nc = 0, budget = e->o.max_num_batched_tokens, nd = 0;
        for (seq *s = e->all; s && budget > 0 && nc < e->o.max_num_seqs; s = s->next) {
            if (s->state != SEQ_WAITING) continue;
            if (!s->prefilling) {
                if (s->mode == MDL_REQ_LOCAL && running >= e->o.max_num_seqs) continue;
                s->prefilling = 1;
                s->t_prefill0 = pd_time_now();
                if (s->mode == MDL_REQ_LOCAL) running++;
            }
            int n = PD_MIN(budget, s->n_prompt - s->n_cached);
            ch[nc].s = s;
            ch[nc].n = n;
            ch[nc].done = s->n_cached + n == s->n_prompt;
            budget -= n;
            nc++;
        }
        for (seq *s = e->all; s && nd < e->o.max_num_seqs; s = s->next)
            if (s->state == SEQ_RUNNING) dec[nd++] = s;
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
            first[i] = sample(e, ch[i].s, e->logits + (size_t)r * V, e->raw, &first_lp[i], &tmpl[i]);
            r++;
        }
        /* decode step */
        if (nd > 0) {
            for (int i = 0; i < nd; i++) {
                seq *s = dec[i];
                e->b_tokens[i] = s->tokens[s->n_prompt + s->n_gen - 1];
                e->b_start[i] = i;
                e->b_ctx[i] = s->n_prompt + s->n_gen - 1;
                e->b_tables[i] = s->blocks;
                e->b_rows[i] = i;
            }
            e->b_start[nd] = nd;
            mdl_batch b = {.n_seqs = nd, .n_tokens = nd, .tokens = e->b_tokens, .seq_start = e->b_start,
                           .ctx_len = e->b_ctx, .block_table = e->b_tables, .logits_rows = e->b_rows, .n_logits = nd,
                           .attn = MDL_ATTN_DECODE};
            pd_status st = mdl_forward(e->ctx, e->kv, &b, e->logits);
            PD_ASSERT(st == PD_OK);
        }
        for (int i = 0; i < nd; i++) {
            memset(&dtmpl[i], 0, sizeof dtmpl[i]);
            dtok[i] = sample(e, dec[i], e->logits + (size_t)i * V, e->raw, &dlp[i], &dtmpl[i]);
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
                s->t_decode0 = now;
                if (!s->abort_req) emit_token(e, s, first[i], first_lp[i], &tmpl[i]);
            }
        }
        for (int i = 0; i < nd; i++) {
            if (dec[i]->abort_req) continue;
            e->st.decode_tokens++;
            emit_token(e, dec[i], dtok[i], dlp[i], &dtmpl[i]);
        }
        e->st.steps++;
    }
    pthread_mutex_unlock(&e->mu);
    free(ch);
    free(dec);
    free(first);
    free(dtok);
    free(first_lp);
    free(dlp);
    free(tmpl);
    free(dtmpl);
    return NULL;
}

/* ---- public ------------------------------------------------------------------------------------------- */

pd_status mdl_engine_create(mdl_model *m, const mdl_engine_opts *o, mdl_event_cb cb, void *cb_arg, mdl_engine **out)
{
    if (o->max_num_seqs < 1 || o->max_num_seqs > 256 || o->max_num_batched_tokens < 1 || o->block_size < 1 ||
        o->n_blocks < 1 || o->max_model_len < 2)
        return PD_ERR_INVALID;
    mdl_engine *e = calloc(1, sizeof *e);
    if (!e) return PD_ERR_NOMEM;
    e->m = m;
    e->o = *o;
    e->cb = cb;
    e->cb_arg = cb_arg;
    const int D = m->cfg.hidden_size, V = m->cfg.vocab_size;
    e->max_tokens = PD_MAX(o->max_num_batched_tokens, o->max_num_seqs);
    pd_status st = mdl_kv_pool_create_in(&m->cfg, m->n_mtp, m->opts.kv_type, o->block_size, o->n_blocks, o->kv_mem,
                                         &e->kv);
    if (st != PD_OK) goto fail_engine;
    if ((st = mdl_ctx_create(m, e->max_tokens, o->max_num_seqs, &e->ctx)) != PD_OK) goto fail_engine;
    if ((st = krn_sampler_create(V, &e->sampler)) != PD_OK) goto fail_engine;
    e->b_tokens = malloc((size_t)e->max_tokens * sizeof(int32_t));
    e->b_start = malloc((size_t)(o->max_num_seqs + 1) * sizeof(int));
    e->b_ctx = malloc((size_t)o->max_num_seqs * sizeof(int));
    e->b_rows = malloc((size_t)e->max_tokens * sizeof(int));
    e->b_tables = malloc((size_t)o->max_num_seqs * sizeof(int *));
    e->logits = malloc((size_t)o->max_num_seqs * V * sizeof(float));
    e->raw = malloc((size_t)V * sizeof(float));
    e->mtp_hidden = malloc((size_t)e->max_tokens * D * sizeof(float));
    e->mtp_tokens = malloc((size_t)e->max_tokens * sizeof(int32_t));
    if (!e->b_tokens || !e->b_start || !e->b_ctx || !e->b_rows || !e->b_tables || !e->logits || !e->raw || !e->mtp_hidden ||
        !e->mtp_tokens) {
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
    mdl_ctx_destroy(e->ctx);
    mdl_kv_pool_destroy(e->kv);
    krn_sampler_destroy(e->sampler);
    free(e->b_tokens);
    free(e->b_start);
    free(e->b_ctx);
    free(e->b_rows);
    free(e->b_tables);
    free(e->logits);
    free(e->raw);
    free(e->mtp_hidden);
    free(e->mtp_tokens);
    free(e->evs);
    free(e);
}

pd_status mdl_engine_submit(mdl_engine *e, uint64_t id, void *user, const int32_t *prompt, int n_prompt,
                            const mdl_gen_params *p, mdl_req_mode mode)
{
    const mdl_config *c = &e->m->cfg;
    if (n_prompt < 1 || p->max_tokens < 1 || p->n_stop_ids < 0 || p->n_stop_ids > MDL_MAX_STOP_IDS ||
        p->top_logprobs < 0 || p->top_logprobs > MDL_MAX_TOP_LOGPROBS || p->sampling.temperature < 0)
        return PD_ERR_INVALID;
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= c->vocab_size) return PD_ERR_INVALID;
    for (int i = 0; i < p->n_stop_ids; i++)
        if (p->stop_ids[i] < 0 || p->stop_ids[i] >= c->vocab_size) return PD_ERR_INVALID;
    int gen = mode == MDL_REQ_PREFILL_ONLY ? 0 : p->max_tokens;
    if (n_prompt + gen > e->o.max_model_len) return PD_ERR_RANGE;
    int nb = mdl_kv_blocks_for(e->kv, n_prompt + gen);
    if (nb > e->kv->n_blocks) return PD_ERR_RANGE;
    seq *s = calloc(1, sizeof *s);
    if (!s) return PD_ERR_NOMEM;
    s->tokens = malloc((size_t)(n_prompt + p->max_tokens) * sizeof(int32_t));
    s->blocks = malloc((size_t)nb * sizeof(int));
    s->hidden = malloc((size_t)c->hidden_size * sizeof(float));
    if (!s->tokens || !s->blocks || !s->hidden) {
        seq_free(s);
        return PD_ERR_NOMEM;
    }
    memcpy(s->tokens, prompt, (size_t)n_prompt * sizeof(int32_t));
    s->id = id;
    s->user = user;
    s->mode = mode;
    s->n_prompt = n_prompt;
    s->n_blocks = nb;
    s->p = *p;
    pd_rng_seed(&s->rng, p->has_seed ? p->seed : pd_time_ns() ^ id);
    s->state = mode == MDL_REQ_REMOTE_KV ? SEQ_WAIT_KV : SEQ_WAITING;
    s->t_submit = pd_time_now();
    pthread_mutex_lock(&e->mu);
    pd_status st = PD_OK;
    int waiting = 0;
    for (seq *q = e->all; q; q = q->next) waiting += q->state == SEQ_WAITING;
    if (find(e, id)) st = PD_ERR_INVALID;
    else if (e->o.max_waiting > 0 && waiting >= e->o.max_waiting) st = PD_ERR_FULL;
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
            if (q->state == SEQ_WAITING) s.queued_prompt_tokens += q->n_prompt - q->n_cached;
        } else if (q->state == SEQ_HELD) s.held++;
    }
    s.free_blocks = e->kv->n_free;
    s.total_blocks = e->kv->n_blocks;
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
