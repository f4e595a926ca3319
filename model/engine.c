/* Continuous batching engine (see mdl_engine.h). One mutex guards the request lists; the forward pass and
 * sampling run without it, on the engine thread, which alone changes a running sequence's tokens and cache.
 * Events are collected under the lock and delivered after it is released, so a callback may call back in.
 * A decode step: [MTP drafting: the pending verified pairs of every sequence, then k-1 recursive passes] ->
 * one main-model pass over k+1 positions per sequence (on a captured plan when one fits, padded) ->
 * acceptance (greedy match or rejection sampling) -> tokens emitted one by one under the lock. This file holds the
 * public API and the thread's loop; engine_internal.h says where the rest of a step lives. */
#include "model/engine_internal.h"

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

/* A request-path allocation that is to fail on purpose (tests only: mdl__engine_test_oom). */
static int alloc_fails(mdl_engine *e)
{
    int n = atomic_load(&e->test_fail_allocs);
    while (n > 0 && !atomic_compare_exchange_weak(&e->test_fail_allocs, &n, n - 1)) continue;
    return n > 0;
}

static void deliver_events(mdl_engine *e);

/* A new pending event for s (under the lock, engine thread). When the buffer cannot grow, the pending events go out
 * first (as they would after the step; callbacks may call in) and their room is reused: nothing is lost. */
static mdl_event *push_ev(mdl_engine *e, mdl_event_type t, const seq *s)
{
    const int capped = e->test_ev_cap > 0 && e->n_evs >= e->test_ev_cap;
    if (capped || e->n_evs == e->cap_evs) {
        int nc = e->cap_evs * 2;
        mdl_event *n = capped ? NULL : realloc(e->evs, (size_t)nc * sizeof *n);
        if (n) {
            e->evs = n;
            e->cap_evs = nc;
            e->evs_short = 0;
        } else {
            if (!e->evs_short)
                pd_warn("engine: out of memory growing the event buffer at %d pending events; delivering them "
                        "before the step ends", e->n_evs);
            e->evs_short = 1;
            deliver_events(e);
        }
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

/* ---- the engine thread ------------------------------------------------------------------------------------- */

/* Aborts and releases asked for since the last step (under the lock). */
static void step_commands(mdl_engine *e)
{
    for (seq *s = e->all, *nx; s; s = nx) {
        nx = s->next;
        if (s->abort_req) finish(e, s, MDL_FINISH_ABORT, -1);
        else if (s->release_req && s->state == SEQ_HELD) finish(e, s, MDL_FINISH_STOP, -1);
    }
}

/* REMOTE_KV sequences whose KV arrived start decoding with the first token the prefill side sampled (under the
 * lock). */
static void step_start_remote(mdl_engine *e)
{
    for (seq *s = e->all, *nx; s; s = nx) {
        nx = s->next; /* the first token may finish s */
        if (s->state == SEQ_KV_READY) {
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
}

/* The computation of a planned step (lock not held): prefill chunks and their first tokens, then the decode step.
 * Returns the decode step's seconds. */
static double step_compute(mdl_engine *e, step *st)
{
    const int V = e->m->cfg.vocab_size;
    if (st->nc > 0) mdl__sched_prefill(e, st->ch, st->nc);
    for (int i = 0, r = 0; i < st->nc; i++) {
        if (!st->ch[i].done) continue;
        memset(&st->tmpl[i], 0, sizeof st->tmpl[i]);
        st->first[i] =
            mdl__spec_sample_first(e, st->ch[i].s, e->logits + (size_t)r * V, &st->first_lp[i], &st->tmpl[i]);
        r++;
    }
    double t_dec = 0;
    if (st->nd > 0) {
        double t0 = pd_time_now();
        mdl__spec_decode(e, st->dec, st->nd);
        t_dec = pd_time_now() - t0;
    }
    return t_dec;
}

/* Results of the step's prompt chunks (under the lock): BLOCKS and PREFILLED for PREFILL_ONLY, else the first
 * token and decoding from the next step on. */
static void step_prefilled(mdl_engine *e, step *st, double now)
{
    for (int i = 0; i < st->nc; i++) {
        seq *s = st->ch[i].s;
        s->n_cached += st->ch[i].n;
        e->st.prefill_tokens += (uint64_t)st->ch[i].n;
        if (s->mode == MDL_REQ_PREFILL_ONLY) {
            mdl_event *ev = push_ev(e, MDL_EV_BLOCKS, s);
            ev->n_blocks_done = st->ch[i].done ? mdl_kv_blocks_for(e->kv, s->n_prompt) : s->n_cached / e->o.block_size;
        }
        if (!st->ch[i].done) continue;
        s->t_prefill1 = now;
        s->prefilling = 0;
        if (s->mode == MDL_REQ_PREFILL_ONLY) {
            s->state = SEQ_HELD;
            mdl_event *ev = push_ev(e, MDL_EV_PREFILLED, s);
            ev->token = st->first[i];
            ev->logprob = st->first_lp[i];
            ev->n_top = st->tmpl[i].n_top;
            memcpy(ev->top_ids, st->tmpl[i].top_ids, sizeof ev->top_ids);
            memcpy(ev->top_lps, st->tmpl[i].top_lps, sizeof ev->top_lps);
            ev->hidden = s->hidden;
            ev->prompt_tokens = s->n_prompt;
            ev->t_queue = s->t_prefill0 - s->t_submit;
            ev->t_prefill = now - s->t_prefill0;
            s->first_token = st->first[i];
        } else {
            s->state = SEQ_RUNNING;
            if (!s->recompute) s->t_decode0 = now;
            s->recompute = 0;
            s->n_hid = 1; /* the last prefilled position's hidden state */
            if (!s->abort_req) emit_token(e, s, st->first[i], st->first_lp[i], &st->tmpl[i]);
        }
    }
}

/* Results of the decode step (under the lock): stats, then each sequence's accepted tokens and bonus token. */
static void step_decoded(mdl_engine *e, step *st, double t_dec)
{
    if (st->nd > 0) {
        e->st.decode_steps++;
        e->st.decode_seconds += t_dec;
        if (e->last_plan >= 0) {
            e->st.graph_steps[e->plans[e->last_plan].size_idx]++;
            e->st.graph_padded_rows += (uint64_t)e->last_padded;
        } else if (e->n_plans > 0) {
            e->st.graph_eager_steps++;
        }
    }
    for (int i = 0; i < st->nd; i++) {
        seq *s = st->dec[i];
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
}

/* Plans a step (under the lock): commands, remote sequences that may start, prompt chunks, then every running
 * sequence with the blocks it grows into. Returns 0 when there is no step to run now: nothing to compute here (with
 * wait, after waiting for work, unless a preemption freed blocks to plan the recomputation with; a multi-rank engine
 * waits in the ranks' sync instead), or a callback aborted a planned sequence. 1 when it is ready to run. */
static int step_plan(mdl_engine *e, step *st, int wait)
{
    step_commands(e);
    step_start_remote(e);
    st->nc = mdl__sched_chunks(e, st->ch);
    st->nd = 0;
    for (seq *s = e->all; s && st->nd < e->o.max_num_seqs; s = s->next)
        if (s->state == SEQ_RUNNING) st->dec[st->nd++] = s;
    const uint64_t preempted = e->st.preemptions;
    st->nd = mdl__sched_grow(e, st->dec, st->nd);
    if (st->nc == 0 && st->nd == 0) {
        if (wait && e->st.preemptions == preempted) {
            deliver_events(e);
            if (!e->stop && !has_commands(e)) pthread_cond_wait(&e->cv, &e->mu);
        }
        return 0;
    }
    /* events so far go out before the long computation */
    if (e->n_evs) {
        deliver_events(e);
        int stale = 0; /* a callback may have aborted one we planned: plan again */
        for (int i = 0; i < st->nc; i++) stale |= st->ch[i].s->abort_req;
        for (int i = 0; i < st->nd; i++) stale |= st->dec[i]->abort_req;
        if (stale) return 0;
    }
    return 1;
}

/* Runs a planned step (called and returns under the lock). d: a multi-rank engine, which serves the other ranks'
 * expert rows after its own computation until every rank has ended the step. */
static void step_run(mdl_engine *e, step *st, const mdl_engine_dist *d)
{
    pthread_mutex_unlock(&e->mu);
    const double t_dec = step_compute(e, st);
    if (d) d->step_end(d->arg);
    pthread_mutex_lock(&e->mu);
    step_prefilled(e, st, pd_time_now());
    step_decoded(e, st, t_dec);
    e->st.steps++;
}

static void *engine_main(void *arg)
{
    mdl_engine *e = arg;
    step *st = &e->stp;
    pthread_mutex_lock(&e->mu);
    while (!e->stop) {
        if (!step_plan(e, st, 1)) continue;
        step_run(e, st, NULL);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ---- multi-rank (mdl_engine_dist) --------------------------------------------------------------------------- */

static int has_running(const mdl_engine *e)
{
    for (const seq *s = e->all; s; s = s->next)
        if (s->state == SEQ_RUNNING) return 1;
    return 0;
}

/* rank 0 with nothing to do on any rank: sleeps until a request or command arrives here or for another rank */
static int dist_wait(mdl_engine *e)
{
    const mdl_engine_dist *d = e->o.dist;
    pthread_mutex_lock(&e->mu);
    while (!e->stop && !has_commands(e) && !has_running(e) && !d->pending(d->arg)) {
        if (d->idle_poll <= 0) {
            pthread_cond_wait(&e->cv, &e->mu);
            continue;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        const long ns = ts.tv_nsec + (long)(d->idle_poll * 1e9);
        ts.tv_sec += ns / 1000000000L;
        ts.tv_nsec = ns % 1000000000L;
        pthread_cond_timedwait(&e->cv, &e->mu, &ts);
    }
    const int stop = e->stop;
    pthread_mutex_unlock(&e->mu);
    return stop;
}

/* The loop of an engine in a multi-rank instance: every rank syncs, then steps (maybe with nothing to compute here,
 * serving other ranks' expert rows until all of them are through), in lockstep. */
static void *engine_main_dist(void *arg)
{
    mdl_engine *e = arg;
    const mdl_engine_dist *d = e->o.dist;
    step *st = &e->stp;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        deliver_events(e);
        const int work = has_commands(e) || has_running(e), stopping = e->stop;
        pthread_mutex_unlock(&e->mu);
        const int go = d->sync(d->arg, e, work, stopping, dist_wait);
        pthread_mutex_lock(&e->mu);
        if (!go) break;
        if (step_plan(e, st, 0)) {
            step_run(e, st, d);
        } else {
            pthread_mutex_unlock(&e->mu);
            d->step_end(d->arg);
            pthread_mutex_lock(&e->mu);
        }
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ---- public ------------------------------------------------------------------------------------------- */

pd_status mdl_engine_create(mdl_model *m, const mdl_engine_opts *o, mdl_event_cb cb, void *cb_arg, mdl_engine **out)
{
    if (o->max_num_seqs < 1 || o->max_num_seqs > 256 || o->max_num_batched_tokens < 1 || o->block_size < 1 ||
        o->n_blocks < 1 || o->max_model_len < 2 || o->num_speculative_tokens < 0 ||
        o->num_speculative_tokens > MDL_MAX_SPEC_TOKENS)
        return PD_ERR_INVALID;
    if (o->spec_method != MDL_SPEC_MTP && o->spec_method != MDL_SPEC_NGRAM) return PD_ERR_INVALID;
    if (o->spec_method == MDL_SPEC_MTP && o->num_speculative_tokens > 0 && m->n_mtp < 1) {
        pd_error("num_speculative_tokens %d needs the model's MTP layer, which is not loaded",
                 o->num_speculative_tokens);
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
    pd_status st = mdl__plan_sizes(o, e->sizes, &e->n_sizes);
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
    if ((st = mdl__plan_create_all(e)) != PD_OK) goto fail_engine;
    /* pieces of acceptance (krn_parallel: up to 2 per thread) */
    e->n_ws = PD_MIN(S, PD_MIN(2 * krn_threads_get(), 16));
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
    e->stp.ch = calloc((size_t)S, sizeof *e->stp.ch);
    e->stp.dec = calloc((size_t)S, sizeof *e->stp.dec);
    e->stp.first = calloc((size_t)S, sizeof *e->stp.first);
    e->stp.first_lp = calloc((size_t)S, sizeof *e->stp.first_lp);
    e->stp.tmpl = calloc((size_t)S, sizeof *e->stp.tmpl);
    int ok = e->b_tokens && e->b_start && e->b_ctx && e->b_rows && e->b_amax_only && e->b_amax && e->b_tables &&
             e->logits && e->mtp_hidden && e->mtp_tokens && e->evs && e->ks && e->r_tok && e->r_lp && e->r_tmpl &&
             e->r_n && e->r_acc && e->stp.ch && e->stp.dec && e->stp.first && e->stp.first_lp && e->stp.tmpl;
    if (k > 0) {
        e->q = malloc((size_t)S * k * V * sizeof(float));
        e->q_onehot = calloc((size_t)S * k, 1);
        e->g = malloc((size_t)S * D * sizeof(float));
        e->known = malloc((size_t)S * k * sizeof(int32_t));
        e->n_known = calloc((size_t)S, sizeof(int));
        e->map = malloc((size_t)S * sizeof(int));
        ok = ok && e->q && e->q_onehot && e->g && e->known && e->n_known && e->map;
        if (ok && e->ngram) memset(e->q_onehot, 1, (size_t)S * k); /* prompt-lookup drafts are deterministic */
        if (ok && !e->ngram && o->draft_head_int8) ok = mdl__spec_make_draft_head(e);
    }
    if (!ok) {
        st = PD_ERR_NOMEM;
        goto fail_engine;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv, NULL);
    if (pthread_create(&e->thread, NULL, e->o.dist ? engine_main_dist : engine_main, e) != 0) {
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
    void *bufs[] = {e->b_tokens, e->b_start, e->b_ctx, e->b_rows, e->b_amax_only, e->b_amax, e->b_tables, e->logits,
                    e->mtp_hidden, e->mtp_tokens, e->evs, e->ks, e->r_tok, e->r_lp, e->r_tmpl, e->r_n, e->r_acc, e->q,
                    e->q_onehot, e->g, e->known, e->n_known, e->map, e->scratch_blocks, e->stp.ch, e->stp.dec,
                    e->stp.first, e->stp.first_lp, e->stp.tmpl};
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

void mdl__engine_test_oom(mdl_engine *e, int fail_allocs, int ev_cap)
{
    pthread_mutex_lock(&e->mu);
    atomic_store(&e->test_fail_allocs, fail_allocs);
    e->test_ev_cap = ev_cap;
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
    const mdl_engine_dist *d = e->o.dist;
    if (d && d->rank == 0) { /* a multi-rank instance: this rank's or another's */
        pthread_mutex_lock(&e->mu);
        int load = 0;
        for (const seq *q = e->all; q; q = q->next) load++;
        const int r = find(e, id) ? 0 : d->place(d->arg, nb, load, e->kv->n_free, mode != MDL_REQ_LOCAL);
        pd_status st = r < 0 ? PD_ERR_BUSY : PD_OK;
        if (r > 0 && (st = d->submit(d->arg, r, id, user, prompt, n_prompt, p, mode)) == PD_OK)
            pthread_cond_signal(&e->cv);
        pthread_mutex_unlock(&e->mu);
        if (r != 0) return st;
    }
    seq *s = alloc_fails(e) ? NULL : calloc(1, sizeof *s);
    if (s) {
        s->tokens = malloc((size_t)(n_prompt + p->max_tokens) * sizeof(int32_t));
        s->blocks = malloc((size_t)cap * sizeof(int));
        s->hidden = malloc((size_t)(e->k + 1) * c->hidden_size * sizeof(float));
    }
    if (!s || !s->tokens || !s->blocks || !s->hidden) {
        pd_error("engine: out of memory admitting request %llu (%d prompt tokens, %d blocks); refused",
                 (unsigned long long)id, n_prompt, cap);
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
    if (!s && e->o.dist && e->o.dist->rank == 0) {
        mdl_event ready = {.token = first_token, .logprob = first_logprob, .n_top = n_top};
        if (n_top) {
            memcpy(ready.top_ids, top_ids, (size_t)n_top * sizeof *top_ids);
            memcpy(ready.top_lps, top_lps, (size_t)n_top * sizeof *top_lps);
        }
        if (e->o.dist->command(e->o.dist->arg, 'k', id, &ready, hidden)) {
            pthread_cond_signal(&e->cv);
            pthread_mutex_unlock(&e->mu);
            return PD_OK;
        }
    }
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
    } else if (e->o.dist && e->o.dist->rank == 0 && e->o.dist->command(e->o.dist->arg, 'a', id, NULL, NULL)) {
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
    } else if (e->o.dist && e->o.dist->rank == 0 && e->o.dist->command(e->o.dist->arg, 'r', id, NULL, NULL)) {
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
}

void mdl_engine_wake(mdl_engine *e)
{
    pthread_mutex_lock(&e->mu);
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

static void get_stats(mdl_engine *e, mdl_engine_stats *out, int all_ranks)
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
    if (all_ranks && e->o.dist && e->o.dist->rank == 0) e->o.dist->stats(e->o.dist->arg, &s);
    s.spec_mean_accepted_len = s.spec_seq_steps ? 1.0 + (double)s.spec_accepted / (double)s.spec_seq_steps : 0.0;
    s.n_graph_sizes = e->n_sizes;
    memcpy(s.graph_sizes, e->sizes, sizeof s.graph_sizes);
    pthread_mutex_unlock(&e->mu);
    *out = s;
}

void mdl_engine_get_stats(mdl_engine *e, mdl_engine_stats *out) { get_stats(e, out, 1); }

void mdl_engine_get_local_stats(mdl_engine *e, mdl_engine_stats *out) { get_stats(e, out, 0); }

mdl_kv_pool *mdl_engine_pool(mdl_engine *e) { return e->kv; }

int mdl_engine_max_model_len(const mdl_engine *e) { return e->o.max_model_len; }

void mdl_engine_layout(const mdl_engine *e, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%dx%d/%d/%s", e->m->cfg.architecture, e->kv->n_layers, e->kv->row, e->kv->block_size,
             krn_type_name(e->kv->type));
}
