/* Expert parallelism and vocab-parallel heads over MPI (dst.h). Each MoE layer of a pass is one round: every rank
 * sends, to each rank that holds one of a token's picked experts, one record (the token's row and which of its
 * picks live there), the ranks run the rows they received through their experts, and the outputs go back
 * (MPI_Alltoall of the sizes, then MPI_Alltoallv there and back). The heads (lm_head, the MTP head) are split by
 * vocabulary rows: a pass's logits rows go to every rank, each computes its slice (or, for a greedy row, only its
 * slice's largest logit and where it is), and the source puts the row together. The ranks' engines need not be at
 * the same layer, or in a pass at all: a record names what it is for, and a rank whose step is over (dst__step_end)
 * keeps serving rounds with nothing to send until every rank is over. Every output comes from the same kernels on
 * the same row as in one process (their results do not depend on the row count, nor a logit on the other rows of
 * its head), and the layer adds the expert outputs in its own order: a rank gets one process's bits. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "dist/dst_internal.h"

/* What this rank asks of a round. */
typedef struct {
    int kind;       /* ASK_DONE: its step is over; ASK_MOE; ASK_HEAD */
    int layer;      /* MOE */
    const float *x; /* MOE: [T][D] the layer's inputs; HEAD: [T][D] the normalised rows */
    int T;
    const int *topi;          /* MOE: [T][K] */
    unsigned flags;           /* MOE: the products' flags */
    float *y;                 /* MOE: [T*K][D] each pick's expert output */
    int head, nv;             /* HEAD: 0 lm_head, 1 the MTP head; only columns < nv count */
    const uint8_t *amax_only; /* HEAD: rows that need only their argmax (NULL: none) */
    int32_t *amax;            /* HEAD: their argmax */
    float *logits;            /* HEAD: [T][V] the other rows' logits */
    const int32_t *tokens;    /* EMBED: [T] token ids (head: 0 the model's embedding, 1 the MTP layer's) */
    float *out;               /* EMBED: T rows of hidden_size floats, ld apart */
    int ld;
} ask;
enum { ASK_DONE, ASK_MOE, ASK_HEAD, ASK_EMBED };

struct dst_round {
    int cap_send, cap_recv, cap_out, cap_in; /* bytes */
    char *send, *recv;                       /* records out, records in */
    float *res_out, *res_in;                 /* outputs of the records received (to send back), of those sent */
    int cap_rin, cap_rout, cap_key, cap_ord, cap_src, cap_off, cap_jobs, cap_hin, cap_hout;
    float *rows_in, *rows_out;          /* received MoE rows gathered by expert, their outputs */
    int *row_key, *row_order, *row_src; /* [rows] key, rows sorted by key, each row's record */
    int *rec_off;                       /* [records received] where its outputs start in res_out */
    size_t *rec_at;                     /* [records received] where it starts in recv */
    int cap_at;
    mdl_expert_job *jobs;
    float *head_in, *head_out;      /* received head rows, their logits slice */
    int *scnt, *sdsp, *rcnt, *rdsp; /* [size] records' byte counts and displacements, out and in */
    int *ocnt, *odsp, *icnt, *idsp; /* [size] outputs' float counts and displacements, out and in */
    int *sz_out, *sz_in;            /* [2 * size]: bytes and done flag per rank */
    float *lin_scratch;
    mdl_experts_ws *ws;
    int ws_rows, ws_jobs;
};

/* A record: int32 header[4], then (MoE and head) int32 expert[K], slot[K], float row[D].
 *   MoE:   {layer >= 0, flags, n (picks held by the receiver), token}, the picks' experts and slots.
 *   head:  {-1 - head, nv, 1 for argmax only, row}; experts and slots unused.
 *   embed: {-3 - which, token id, 0, row}: the header alone. */
static size_t rec_bytes(const mdl_config *c)
{
    return (size_t)(4 + 2 * c->num_experts_per_tok) * sizeof(int32_t) + (size_t)c->hidden_size * sizeof(float);
}

static void rec_hdr(const char *rec, int32_t h[4]) { memcpy(h, rec, 4 * sizeof(int32_t)); }

static size_t rec_size(const mdl_config *c, const char *rec)
{
    int32_t h[4];
    rec_hdr(rec, h);
    return h[0] <= -3 ? 4 * sizeof(int32_t) : rec_bytes(c);
}

/* The vocabulary slice of rank r of n. */
static int vocab_w(const mdl_config *c, int r, int n)
{
    return mdl_vocab_first(c->vocab_size, r + 1, n) - mdl_vocab_first(c->vocab_size, r, n);
}

/* Floats a record's outputs take when rank `at` computes them. */
static int rec_out(const mdl_config *c, const char *rec, int at, int n)
{
    int32_t h[4];
    rec_hdr(rec, h);
    if (h[0] >= 0 || h[0] <= -3) return (h[0] >= 0 ? h[2] : 1) * c->hidden_size;
    return h[2] ? 2 : vocab_w(c, at, n);
}

static int grow(void **p, int *cap, size_t need, int aligned)
{
    if (need <= (size_t)*cap) return 1;
    size_t nc = PD_MAX(need, (size_t)*cap * 2);
    if (nc > (size_t)0x7fffffff) nc = need;
    if (nc > (size_t)0x7fffffff) return 0;
    void *n = aligned ? pd_aligned_alloc(nc) : malloc(nc);
    if (!n) return 0;
    free(*p);
    *p = n;
    *cap = (int)nc;
    return 1;
}

void dst__round_free(dst *d)
{
    struct dst_round *r = d->rd;
    if (!r) return;
    void *bufs[] = {r->send,      r->recv,    r->res_out, r->res_in,     r->rows_in, r->rows_out, r->row_key,
                    r->row_order, r->row_src, r->rec_off, r->rec_at,     r->jobs,    r->head_in,  r->head_out,
                    r->scnt,      r->sdsp,    r->rcnt,    r->rdsp,       r->ocnt,    r->odsp,     r->icnt,
                    r->idsp,      r->sz_out,  r->sz_in,   r->lin_scratch};
    for (size_t i = 0; i < PD_ARRAY_LEN(bufs); i++) free(bufs[i]);
    mdl_experts_ws_destroy(r->ws);
    free(r);
    d->rd = NULL;
}

static void oom(dst *d, size_t bytes)
{
    pd_error("rank %d: out of memory (%zu bytes) for the expert exchange; aborting the instance", d->rank, bytes);
    MPI_Abort(MPI_COMM_WORLD, 73);
}

static struct dst_round *round_state(dst *d)
{
    if (d->rd) return d->rd;
    struct dst_round *r = calloc(1, sizeof *r);
    const size_t n = (size_t)d->size;
    const mdl_config *c = &d->m->cfg;
    if (!r || !(r->scnt = calloc(n, sizeof(int))) || !(r->sdsp = calloc(n, sizeof(int))) ||
        !(r->rcnt = calloc(n, sizeof(int))) || !(r->rdsp = calloc(n, sizeof(int))) ||
        !(r->ocnt = calloc(n, sizeof(int))) || !(r->odsp = calloc(n, sizeof(int))) ||
        !(r->icnt = calloc(n, sizeof(int))) || !(r->idsp = calloc(n, sizeof(int))) ||
        !(r->sz_out = calloc(2 * n, sizeof(int))) || !(r->sz_in = calloc(2 * n, sizeof(int))) ||
        !(r->lin_scratch = pd_aligned_alloc(krn_linear_scratch(c->hidden_size) * sizeof(float))))
        oom(d, 0);
    d->rd = r;
    return r;
}

/* The records this rank sends (grouped by destination, rows in order); returns their total bytes. */
static size_t pack(dst *d, struct dst_round *r, const ask *a)
{
    const mdl_config *c = &d->m->cfg;
    const int K = c->num_experts_per_tok, D = c->hidden_size, E = c->n_routed_experts, n = d->size;
    const size_t rb = rec_bytes(c);
    /* at most one record per row and rank */
    const size_t most = (size_t)a->T * (size_t)(a->kind == ASK_MOE ? PD_MIN(K, n) : n) * rb;
    if (!grow((void **)&r->send, &r->cap_send, most + 1, 0)) oom(d, most);
    size_t o = 0;
    for (int to = 0; to < n; to++) {
        const int e0 = mdl_ep_first(E, to, n), e1 = mdl_ep_first(E, to + 1, n);
        const int v0 = mdl_vocab_first(c->vocab_size, to, n), v1 = mdl_vocab_first(c->vocab_size, to + 1, n);
        r->sdsp[to] = (int)o;
        for (int t = 0; t < a->T; t++) {
            int32_t hdr[4], ex[64] = {0}, sl[64] = {0};
            if (a->kind == ASK_EMBED) { /* to the rank that holds the token's row */
                if (a->tokens[t] < v0 || a->tokens[t] >= v1) continue;
                hdr[0] = -3 - a->head;
                hdr[1] = a->tokens[t];
                hdr[2] = 0;
                hdr[3] = t;
                memcpy(r->send + o, hdr, sizeof hdr);
                o += sizeof hdr;
                continue;
            }
            if (a->kind == ASK_MOE) {
                hdr[0] = a->layer;
                hdr[1] = (int32_t)a->flags;
                hdr[2] = 0;
                hdr[3] = t;
                for (int k = 0; k < K; k++) {
                    const int e = a->topi[t * K + k];
                    if (e >= e0 && e < e1) {
                        ex[hdr[2]] = e;
                        sl[hdr[2]++] = k;
                    }
                }
                if (!hdr[2]) continue;
            } else {
                hdr[0] = -1 - a->head;
                hdr[1] = a->nv;
                hdr[2] = a->amax_only && a->amax_only[t];
                hdr[3] = t;
            }
            char *p = r->send + o;
            memcpy(p, hdr, sizeof hdr);
            memcpy(p + 16, ex, (size_t)K * 4);
            memcpy(p + 16 + (size_t)K * 4, sl, (size_t)K * 4);
            memcpy(p + 16 + (size_t)K * 8, a->x + (size_t)t * D, (size_t)D * sizeof(float));
            o += rb;
        }
        r->scnt[to] = (int)(o - (size_t)r->sdsp[to]);
    }
    return o;
}

static __thread const int *sort_keys;
static int by_key(const void *a, const void *b)
{
    const int x = sort_keys[*(const int *)a], y = sort_keys[*(const int *)b];
    return x < y ? -1 : x > y ? 1 : (*(const int *)a < *(const int *)b ? -1 : 1);
}

/* The received MoE records' rows through this rank's experts, outputs into res_out at their records' offsets. */
static void serve_moe(dst *d, struct dst_round *r, size_t nrec)
{
    const mdl_config *c = &d->m->cfg;
    const int K = c->num_experts_per_tok, D = c->hidden_size, E = c->n_routed_experts;
    int rows = 0;
    for (size_t i = 0; i < nrec; i++) {
        int32_t h[4];
        rec_hdr(r->recv + r->rec_at[i], h);
        if (h[0] >= 0) rows += h[2];
    }
    if (!rows) return;
    const size_t fbytes = (size_t)rows * D * sizeof(float), ibytes = (size_t)rows * sizeof(int);
    if (!grow((void **)&r->rows_in, &r->cap_rin, fbytes, 1) || !grow((void **)&r->rows_out, &r->cap_rout, fbytes, 1) ||
        !grow((void **)&r->row_key, &r->cap_key, ibytes, 0) || !grow((void **)&r->row_order, &r->cap_ord, ibytes, 0) ||
        !grow((void **)&r->row_src, &r->cap_src, ibytes * 2, 0) ||
        !grow((void **)&r->jobs, &r->cap_jobs, (size_t)rows * sizeof *r->jobs, 0))
        oom(d, 2 * fbytes);
    /* key: layer, expert, flags (0 or the bf16-activation flag: a prompt pass and a decode pass differ) */
    int *src_rec = r->row_src, *src_pick = r->row_src + rows;
    for (size_t i = 0, row = 0; i < nrec; i++) {
        const char *p = r->recv + r->rec_at[i];
        int32_t h[4];
        rec_hdr(p, h);
        if (h[0] < 0) continue;
        for (int s = 0; s < h[2]; s++, row++) {
            int32_t e;
            memcpy(&e, p + 16 + (size_t)s * 4, 4);
            r->row_key[row] = (h[0] * E + e) * 2 + (h[1] != 0);
            r->row_order[row] = (int)row;
            src_rec[row] = (int)i;
            src_pick[row] = s;
        }
    }
    sort_keys = r->row_key;
    qsort(r->row_order, (size_t)rows, sizeof(int), by_key);
    int nj = 0;
    for (int j = 0; j < rows; j++) {
        const int row = r->row_order[j], key = r->row_key[row];
        const char *p = r->recv + r->rec_at[src_rec[row]];
        memcpy(r->rows_in + (size_t)j * D, p + 16 + (size_t)K * 8, (size_t)D * sizeof(float));
        if (nj && r->row_key[r->row_order[j - 1]] == key) {
            r->jobs[nj - 1].n++;
            continue;
        }
        int32_t h[4];
        rec_hdr(p, h);
        r->jobs[nj++] = (mdl_expert_job){.layer = key / 2 / E,
                                         .expert = key / 2 % E,
                                         .n = 1,
                                         .flags = (unsigned)h[1],
                                         .in = r->rows_in + (size_t)j * D,
                                         .out = r->rows_out + (size_t)j * D};
    }
    if (!r->ws || r->ws_rows < rows || r->ws_jobs < nj) {
        mdl_experts_ws_destroy(r->ws);
        r->ws = NULL;
        r->ws_rows = PD_MAX(rows, 2 * r->ws_rows);
        r->ws_jobs = PD_MAX(nj, 2 * r->ws_jobs);
        if (mdl_experts_ws_create(d->m, r->ws_rows, r->ws_jobs, &r->ws) != PD_OK) oom(d, (size_t)r->ws_rows * D * 8);
    }
    pd_status st = mdl_experts_run(d->m, r->jobs, nj, r->ws);
    if (st != PD_OK) { /* a record for an expert not held here: the ranks disagree on the split */
        pd_error("rank %d: received rows for experts it does not hold (%s); aborting the instance", d->rank,
                 pd_status_str(st));
        MPI_Abort(MPI_COMM_WORLD, 74);
    }
    for (int j = 0; j < rows; j++) {
        const int row = r->row_order[j];
        memcpy(r->res_out + r->rec_off[src_rec[row]] + (size_t)src_pick[row] * D, r->rows_out + (size_t)j * D,
               (size_t)D * sizeof(float));
    }
}

/* The received head records: this rank's vocabulary slice of each row's logits, or for a greedy row the slice's
 * largest logit below nv and its token id (as two floats: ids < 2^24 are exact). */
static void serve_heads(dst *d, struct dst_round *r, size_t nrec)
{
    const mdl_config *c = &d->m->cfg;
    const int K = c->num_experts_per_tok, D = c->hidden_size, w = d->m->vocab1 - d->m->vocab0;
    for (int head = 0; head < 2; head++) {
        int rows = 0;
        for (size_t i = 0; i < nrec; i++) {
            int32_t h[4];
            rec_hdr(r->recv + r->rec_at[i], h);
            rows += h[0] == -1 - head;
        }
        if (!rows) continue;
        const krn_mat *hm = head ? &d->m->layers[d->m->n_layers].head : &d->m->lm_head;
        if (!grow((void **)&r->head_in, &r->cap_hin, (size_t)rows * D * sizeof(float), 1) ||
            !grow((void **)&r->head_out, &r->cap_hout, (size_t)rows * w * sizeof(float), 1))
            oom(d, (size_t)rows * w * sizeof(float));
        int j = 0;
        for (size_t i = 0; i < nrec; i++) {
            int32_t h[4];
            rec_hdr(r->recv + r->rec_at[i], h);
            if (h[0] == -1 - head)
                memcpy(r->head_in + (size_t)j++ * D, r->recv + r->rec_at[i] + 16 + (size_t)K * 8,
                       (size_t)D * sizeof(float));
        }
        krn_linear(hm, r->head_in, rows, r->head_out, w, r->lin_scratch);
        j = 0;
        for (size_t i = 0; i < nrec; i++) {
            int32_t h[4];
            rec_hdr(r->recv + r->rec_at[i], h);
            if (h[0] != -1 - head) continue;
            const float *lg = r->head_out + (size_t)j++ * w;
            float *out = r->res_out + r->rec_off[i];
            if (!h[2]) {
                memcpy(out, lg, (size_t)w * sizeof(float));
                continue;
            }
            const int lim = PD_MAX(0, PD_MIN(w, h[1] - d->m->vocab0));
            const int at = lim > 0 ? krn_argmax(lg, lim) : -1;
            out[0] = at >= 0 ? lg[at] : -INFINITY;
            out[1] = at >= 0 ? (float)(d->m->vocab0 + at) : -1.0f;
        }
    }
}

/* Every received record's outputs into res_out (their offsets first). Returns the floats written. */
static size_t serve(dst *d, struct dst_round *r, size_t recv_bytes)
{
    const mdl_config *c = &d->m->cfg;
    size_t nrec = 0;
    for (size_t q = 0; q < recv_bytes; q += rec_size(c, r->recv + q)) nrec++;
    if (!grow((void **)&r->rec_off, &r->cap_off, (nrec + 1) * sizeof(int), 0) ||
        !grow((void **)&r->rec_at, &r->cap_at, (nrec + 1) * sizeof(size_t), 0))
        oom(d, nrec * sizeof(size_t));
    size_t total = 0;
    for (size_t i = 0, q = 0; i < nrec; q += rec_size(c, r->recv + q), i++) {
        r->rec_at[i] = q;
        r->rec_off[i] = (int)total;
        total += (size_t)rec_out(c, r->recv + q, d->rank, d->size);
    }
    if (!grow((void **)&r->res_out, &r->cap_out, total * sizeof(float) + 64, 1)) oom(d, total * sizeof(float));
    serve_moe(d, r, nrec);
    serve_heads(d, r, nrec);
    for (size_t i = 0; i < nrec; i++) { /* embedding rows held here */
        int32_t h[4];
        rec_hdr(r->recv + r->rec_at[i], h);
        if (h[0] > -3) continue;
        const krn_mat *e = h[0] == -3 ? &d->m->embed : &d->m->layers[d->m->n_layers].embed;
        if (h[1] < d->m->vocab0 || h[1] >= d->m->vocab1) { /* the ranks disagree on the split */
            pd_error("rank %d: asked for embedding row %d it does not hold; aborting the instance", d->rank, h[1]);
            MPI_Abort(MPI_COMM_WORLD, 74);
        }
        krn_mat_row(e, h[1] - d->m->vocab0, r->res_out + r->rec_off[i]);
    }
    return total;
}

/* The outputs that came back, walking the sent records as pack wrote them. */
static void unpack(dst *d, struct dst_round *r, const ask *a, size_t sent)
{
    const mdl_config *c = &d->m->cfg;
    const int K = c->num_experts_per_tok, D = c->hidden_size, V = c->vocab_size;
    if (a->kind == ASK_HEAD && a->amax)
        for (int t = 0; t < a->T; t++) a->amax[t] = -1;
    float *best = NULL;
    if (a->kind == ASK_HEAD && a->amax_only && !(best = malloc((size_t)PD_MAX(1, a->T) * sizeof(float))))
        oom(d, (size_t)a->T * sizeof(float));
    for (int to = 0; to < d->size; to++) {
        const float *res = r->res_in + r->idsp[to];
        for (size_t q = (size_t)r->sdsp[to]; q < (size_t)r->sdsp[to] + (size_t)r->scnt[to];
             q += rec_size(c, r->send + q)) {
            int32_t h[4], sl[64];
            rec_hdr(r->send + q, h);
            if (h[0] <= -3) {
                memcpy(a->out + (size_t)h[3] * a->ld, res, (size_t)D * sizeof(float));
                res += D;
            } else if (h[0] >= 0) {
                memcpy(sl, r->send + q + 16 + (size_t)K * 4, (size_t)K * 4);
                for (int s = 0; s < h[2]; s++, res += D)
                    memcpy(a->y + ((size_t)h[3] * K + (size_t)sl[s]) * D, res, (size_t)D * sizeof(float));
            } else if (h[2]) { /* ranks in vocabulary order: a later slice wins only with a larger logit */
                if (res[1] >= 0 && (a->amax[h[3]] < 0 || res[0] > best[h[3]])) {
                    best[h[3]] = res[0];
                    a->amax[h[3]] = (int32_t)res[1];
                }
                res += 2;
            } else {
                const int v0 = mdl_vocab_first(V, to, d->size), w = vocab_w(c, to, d->size);
                memcpy(a->logits + (size_t)h[3] * V + v0, res, (size_t)w * sizeof(float));
                res += w;
            }
        }
    }
    free(best);
}

/* One round. Returns 1 when every rank's step was over (nothing moved). */
static int round_run(dst *d, const ask *a)
{
    struct dst_round *r = round_state(d);
    const mdl_config *c = &d->m->cfg;
    const int n = d->size;
    const size_t sent = a->kind == ASK_DONE ? 0 : pack(d, r, a);
    if (a->kind == ASK_DONE)
        for (int i = 0; i < n; i++) r->scnt[i] = r->sdsp[i] = 0;
    for (int i = 0; i < n; i++) {
        r->sz_out[2 * i] = r->scnt[i];
        r->sz_out[2 * i + 1] = a->kind == ASK_DONE;
    }
    MPI_Request rq;
    double t0 = pd_time_now();
    d->me.moe_rounds++;
    MPI_Ialltoall(r->sz_out, 2, MPI_INT, r->sz_in, 2, MPI_INT, MPI_COMM_WORLD, &rq);
    dst__wait(d, &rq, "the expert exchange's sizes", 0);
    int all_done = 1;
    size_t recv = 0;
    for (int i = 0; i < n; i++) {
        all_done &= r->sz_in[2 * i + 1];
        r->rdsp[i] = (int)recv;
        r->rcnt[i] = r->sz_in[2 * i];
        recv += (size_t)r->rcnt[i];
    }
    if (all_done) {
        d->me.moe_wait_seconds += pd_time_now() - t0;
        return 1;
    }
    if (!grow((void **)&r->recv, &r->cap_recv, recv + 1, 0)) oom(d, recv);
    MPI_Ialltoallv(r->send, r->scnt, r->sdsp, MPI_BYTE, r->recv, r->rcnt, r->rdsp, MPI_BYTE, MPI_COMM_WORLD, &rq);
    dst__wait(d, &rq, "the expert dispatch", 0);
    double t1 = pd_time_now();
    d->me.moe_wait_seconds += t1 - t0;
    serve(d, r, recv);
    t0 = pd_time_now();
    d->me.moe_serve_seconds += t0 - t1;
    /* outputs back: to each source its records' outputs in order; from each destination those of ours it computed */
    size_t o = 0, back = 0;
    for (int i = 0; i < n; i++) {
        r->odsp[i] = (int)o;
        for (int q = r->rdsp[i]; q < r->rdsp[i] + r->rcnt[i]; q += (int)rec_size(c, r->recv + q))
            o += (size_t)rec_out(c, r->recv + q, d->rank, n);
        r->ocnt[i] = (int)(o - (size_t)r->odsp[i]);
        r->idsp[i] = (int)back;
        for (int q = r->sdsp[i]; q < r->sdsp[i] + r->scnt[i]; q += (int)rec_size(c, r->send + q))
            back += (size_t)rec_out(c, r->send + q, i, n);
        r->icnt[i] = (int)(back - (size_t)r->idsp[i]);
    }
    /* bytes that leave this rank: records and outputs for the others */
    d->me.moe_bytes += (double)(sent - (size_t)r->scnt[d->rank]) + (double)(o - (size_t)r->ocnt[d->rank]) * 4;
    if (!grow((void **)&r->res_in, &r->cap_in, back * sizeof(float) + 64, 1)) oom(d, back * sizeof(float));
    MPI_Ialltoallv(r->res_out, r->ocnt, r->odsp, MPI_FLOAT, r->res_in, r->icnt, r->idsp, MPI_FLOAT, MPI_COMM_WORLD,
                   &rq);
    dst__wait(d, &rq, "the expert combine", 0);
    d->me.moe_wait_seconds += pd_time_now() - t0;
    if (a->kind != ASK_DONE) unpack(d, r, a, sent);
    return 0;
}

void dst__ep_moe(mdl_ep *ep, int layer, const float *xn, int T, const int *topi, unsigned flags, float *y)
{
    dst *d = (dst *)((char *)ep - offsetof(dst, ep));
    const ask a = {.kind = ASK_MOE, .layer = layer, .x = xn, .T = T, .topi = topi, .flags = flags, .y = y};
    round_run(d, &a);
}

void dst__ep_logits(mdl_ep *ep, int head, const float *rows, int n, int nv, const uint8_t *argmax_only, int32_t *argmax,
                    float *logits)
{
    dst *d = (dst *)((char *)ep - offsetof(dst, ep));
    const ask a = {.kind = ASK_HEAD,
                   .x = rows,
                   .T = n,
                   .head = head,
                   .nv = nv,
                   .amax_only = argmax_only,
                   .amax = argmax,
                   .logits = logits};
    round_run(d, &a);
}

void dst__ep_embed(mdl_ep *ep, int which, const int32_t *tokens, int n, float *out, int ld)
{
    dst *d = (dst *)((char *)ep - offsetof(dst, ep));
    const ask a = {.kind = ASK_EMBED, .head = which, .tokens = tokens, .T = n, .out = out, .ld = ld};
    round_run(d, &a);
}

void dst__step_end(void *arg)
{
    dst *d = arg;
    if (!d->ep_on || d->size < 2) return;
    const ask done = {.kind = ASK_DONE};
    while (!round_run(d, &done)) continue;
}
