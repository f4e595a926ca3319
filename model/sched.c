/* Scheduling of the engine's steps: which waiting prompts a step prefills (in arrival order, chunked to the token
 * budget), the prefill passes over them (main model, then MTP over the prompt pairs), and the blocks running
 * sequences grow into, with recompute preemption of the latest-arrived one when the pool runs dry. */
#include "model/engine_internal.h"

/* A chunk that prompt prefill may compute with bf16 activations: positions inside the prompt only (a recomputed
 * sequence's chunks never straddle the prompt's end, see mdl__sched_chunks). */
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
void mdl__sched_prefill(mdl_engine *e, chunk *ch, int nc)
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
int mdl__sched_grow(mdl_engine *e, seq **dec, int nd)
{
    int n = 0;
    for (int i = 0; i < nd; i++) {
        seq *s = dec[i];
        if (s->state != SEQ_RUNNING) continue; /* preempted for an earlier one */
        int need = mdl_kv_blocks_for(e->kv, s->n_prompt + s->n_gen + mdl__spec_step_drafts(e, s)) - s->n_blocks;
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

/* Plans the step's prompt chunks (under the lock): waiting prompts in arrival order up to the token budget, each
 * admitted while running sequences (those prefilling here included) stay under max_num_seqs; a preempted one first
 * takes its blocks back. Returns the number of chunks written to ch. */
int mdl__sched_chunks(mdl_engine *e, chunk *ch)
{
    int running = 0;
    for (seq *s = e->all; s; s = s->next)
        running += s->state == SEQ_RUNNING || (s->state == SEQ_WAITING && s->prefilling);
    int nc = 0, budget = e->o.max_num_batched_tokens;
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
    return nc;
}
