/* Sampling and speculative decoding: a row's logprobs and sampled token, MTP and n-gram drafting, verification of
 * the drafts in one main-model pass (on a captured plan when one fits) and lossless acceptance (greedy match or
 * rejection sampling), spread over the kernel pool. Engine thread, lock not held. */
#include "model/engine_internal.h"

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
int32_t mdl__spec_sample_first(mdl_engine *e, seq *s, float *lg, float *logprob, mdl_event *ev)
{
    float lse = row_logprobs(e, &e->ws[0], s, lg, ev);
    int32_t t = process_sample(e, &e->ws[0], s, lg, s->n_gen, &s->rng, NULL);
    *logprob = logprob_of(&e->ws[0], s, t, lse);
    return t;
}

/* ---- decode: drafting, verification, acceptance --------------------------------------------------------- */

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

/* Drafts s verifies in its next decode step: k, never past max_tokens. */
int mdl__spec_step_drafts(const mdl_engine *e, const seq *s)
{
    return e->k > 0 ? PD_MAX(0, PD_MIN(e->k, s->p.max_tokens - s->n_gen - 1)) : 0;
}

/* One decode step over the nd running sequences (engine thread, lock not held): drafts (k > 0), one main-model
 * pass over the last token and the drafts of each, acceptance. Results in e->r_*; e->last_plan/last_padded say
 * which plan ran. */
void mdl__spec_decode(mdl_engine *e, seq **dec, int nd)
{
    const int D = e->m->cfg.hidden_size, k = e->k;
    int tps = 1;
    for (int i = 0; i < nd && k > 0; i++)
        e->ks[i] = mdl__spec_step_drafts(e, dec[i]); /* mdl__sched_grow gave it blocks for these positions */
    if (k > 0 && e->ngram) ngram_draft(e, dec, nd);
    for (int i = 0; i < nd && k > 0; i++) tps = PD_MAX(tps, e->ks[i] + 1);
    const int pi = mdl__plan_pick(e, nd, tps);
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

/* draft_head_int8: an int8 (W8A8-packed) copy of the MTP head's first draft_vocab_size rows (or all), which the
 * draft passes score with (mdl_batch.mtp_head). 0 on out of memory. */
int mdl__spec_make_draft_head(mdl_engine *e)
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
