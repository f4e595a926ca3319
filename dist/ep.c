/* Expert parallelism over MPI (dst.h). Each MoE layer of a pass is one round: every rank sends, to each rank that
 * holds one of a token's picked experts, one record (the token's row and which of its picks live there), the
 * ranks run the rows they received through their experts, and the outputs go back (MPI_Alltoall of the sizes, then
 * MPI_Alltoallv there and back). The ranks' engines need not be at the same layer, or in a pass at all: a record
 * names its layer and the products' flags, and a rank whose step is over (dst__step_end) keeps serving rounds with
 * nothing to send until every rank is over. A pick's output is computed by the same kernels on the same row as in
 * one process (their results do not depend on the row count), and the layer adds the outputs in its own order. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "dist/dst_internal.h"

struct dst_round {
    int cap_send, cap_recv, cap_rows;  /* bytes, bytes, rows */
    char *send, *recv;                 /* records out, records in */
    float *res_out, *res_in;           /* outputs of the rows received (to send back), of the rows sent */
    float *rows_in, *rows_out;         /* the received rows gathered by expert, their outputs */
    int *row_key, *row_order, *row_src; /* [rows] key, rows sorted by key, each row's record */
    int cap_rin, cap_rout, cap_key, cap_ord, cap_src;
    mdl_expert_job *jobs;
    int cap_jobs;
    int *scnt, *sdsp, *rcnt, *rdsp;    /* [size] records' byte counts and displacements, out and in */
    int *ocnt, *odsp, *icnt, *idsp;    /* [size] outputs' float counts and displacements, out and in */
    int cap_res_in;
    int *sz_out, *sz_in;               /* [2 * size]: bytes and done flag per rank */
    mdl_experts_ws *ws;
    int ws_rows, ws_jobs;
};

/* A record: int32 layer, flags, n (picks held by the receiver), token; int32 expert[K], slot[K]; float row[D]. */
static int rec_picks(const char *rec)
{
    int32_t n;
    memcpy(&n, rec + 8, 4);
    return n;
}

static size_t rec_bytes(const mdl_config *c)
{
    return (size_t)(4 + 2 * c->num_experts_per_tok) * sizeof(int32_t) + (size_t)c->hidden_size * sizeof(float);
}

static int grow(void **p, int *cap, size_t need, int aligned)
{
    if (need <= (size_t)*cap) return 1;
    size_t nc = PD_MAX(need, (size_t)*cap * 2);
    if (nc > (size_t)1 << 30) nc = need;
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
    void *bufs[] = {r->send, r->recv, r->res_out, r->res_in, r->rows_in, r->rows_out, r->row_key, r->row_order,
                    r->row_src, r->jobs, r->scnt, r->sdsp, r->rcnt, r->rdsp, r->ocnt, r->odsp, r->icnt, r->idsp,
                    r->sz_out, r->sz_in};
    for (size_t i = 0; i < PD_ARRAY_LEN(bufs); i++) free(bufs[i]);
    mdl_experts_ws_destroy(r->ws);
    free(r);
    d->rd = NULL;
}

static struct dst_round *round_state(dst *d)
{
    if (d->rd) return d->rd;
    struct dst_round *r = calloc(1, sizeof *r);
    const size_t n = (size_t)d->size;
    if (!r || !(r->scnt = calloc(n, sizeof(int))) || !(r->sdsp = calloc(n, sizeof(int))) ||
        !(r->rcnt = calloc(n, sizeof(int))) || !(r->rdsp = calloc(n, sizeof(int))) ||
        !(r->ocnt = calloc(n, sizeof(int))) || !(r->odsp = calloc(n, sizeof(int))) ||
        !(r->icnt = calloc(n, sizeof(int))) || !(r->idsp = calloc(n, sizeof(int))) ||
        !(r->sz_out = calloc(2 * n, sizeof(int))) || !(r->sz_in = calloc(2 * n, sizeof(int)))) {
        pd_error("rank %d: out of memory for the expert exchange; aborting the instance", d->rank);
        MPI_Abort(MPI_COMM_WORLD, 73);
    }
    d->rd = r;
    return r;
}

static void oom(dst *d, size_t bytes)
{
    pd_error("rank %d: out of memory (%zu bytes) for the expert exchange; aborting the instance", d->rank, bytes);
    MPI_Abort(MPI_COMM_WORLD, 73);
}

/* The records this rank sends (grouped by destination, tokens in order); returns their total bytes. */
static size_t pack(dst *d, struct dst_round *r, int layer, const float *xn, int T, const int *topi, unsigned flags)
{
    const mdl_config *c = &d->m->cfg;
    const int K = c->num_experts_per_tok, D = c->hidden_size, E = c->n_routed_experts, n = d->size;
    const size_t rb = rec_bytes(c);
    /* worst case: every token to every rank it picks, at most min(K, n) records per token */
    if (!grow((void **)&r->send, &r->cap_send, (size_t)T * (size_t)PD_MIN(K, n) * rb + 1, 0))
        oom(d, (size_t)T * PD_MIN(K, n) * rb);
    size_t o = 0;
    for (int dst_r = 0; dst_r < n; dst_r++) {
        const int e0 = mdl_ep_first(E, dst_r, n), e1 = mdl_ep_first(E, dst_r + 1, n);
        r->sdsp[dst_r] = (int)o;
        for (int t = 0; t < T; t++) {
            int32_t hdr[4] = {layer, (int32_t)flags, 0, t}, ex[64], sl[64];
            for (int k = 0; k < K; k++) {
                const int e = topi[t * K + k];
                if (e >= e0 && e < e1) {
                    ex[hdr[2]] = e;
                    sl[hdr[2]++] = k;
                }
            }
            if (!hdr[2]) continue;
            char *p = r->send + o;
            memcpy(p, hdr, sizeof hdr);
            memcpy(p + 16, ex, (size_t)K * 4);
            memcpy(p + 16 + (size_t)K * 4, sl, (size_t)K * 4);
            memcpy(p + 16 + (size_t)K * 8, xn + (size_t)t * D, (size_t)D * sizeof(float));
            o += rb;
        }
        r->scnt[dst_r] = (int)(o - (size_t)r->sdsp[dst_r]);
    }
    return o;
}

static __thread const int *sort_keys;
static int by_key(const void *a, const void *b)
{
    const int x = sort_keys[*(const int *)a], y = sort_keys[*(const int *)b];
    return x < y ? -1 : x > y ? 1 : (*(const int *)a < *(const int *)b ? -1 : 1);
}

/* Runs the received records' rows through this rank's experts; res_out gets each row's output in record order. */
static void serve_rows(dst *d, struct dst_round *r, size_t recv_bytes)
{
    const mdl_config *c = &d->m->cfg;
    const int K = c->num_experts_per_tok, D = c->hidden_size;
    const size_t rb = rec_bytes(c), nrec = recv_bytes / rb;
    int rows = 0;
    for (size_t i = 0; i < nrec; i++) {
        int32_t nsel;
        memcpy(&nsel, r->recv + i * rb + 8, 4);
        rows += nsel;
    }
    if (!rows) return;
    const size_t fbytes = (size_t)rows * D * sizeof(float);
    if (!grow((void **)&r->res_out, &r->cap_rows, fbytes, 1)) oom(d, fbytes);
    const size_t ibytes = (size_t)rows * sizeof(int);
    if (!grow((void **)&r->rows_in, &r->cap_rin, fbytes, 1) || !grow((void **)&r->rows_out, &r->cap_rout, fbytes, 1) ||
        !grow((void **)&r->row_key, &r->cap_key, ibytes, 0) || !grow((void **)&r->row_order, &r->cap_ord, ibytes, 0) ||
        !grow((void **)&r->row_src, &r->cap_src, ibytes, 0))
        oom(d, 2 * fbytes);
    /* key: layer, expert, flags (0 or the bf16-activation flag: a prompt pass and a decode pass differ) */
    const int E = c->n_routed_experts;
    int *src_of = r->row_src; /* row -> its record */
    for (size_t i = 0, row = 0; i < nrec; i++) {
        const char *p = r->recv + i * rb;
        int32_t hdr[4];
        memcpy(hdr, p, sizeof hdr);
        for (int s = 0; s < hdr[2]; s++, row++) {
            int32_t e;
            memcpy(&e, p + 16 + (size_t)s * 4, 4);
            r->row_key[row] = (hdr[0] * E + e) * 2 + (hdr[1] != 0);
            r->row_order[row] = (int)row;
            src_of[row] = (int)i;
        }
    }
    sort_keys = r->row_key;
    qsort(r->row_order, (size_t)rows, sizeof(int), by_key);
    /* gather the rows by key and make one job per key */
    int nj = 0;
    if (rows > r->cap_jobs) {
        free(r->jobs);
        r->jobs = malloc((size_t)rows * sizeof *r->jobs);
        r->cap_jobs = r->jobs ? rows : 0;
        if (!r->jobs) oom(d, (size_t)rows * sizeof *r->jobs);
    }
    for (int j = 0; j < rows; j++) {
        const int row = r->row_order[j], key = r->row_key[row];
        const char *p = r->recv + (size_t)src_of[row] * rb;
        memcpy(r->rows_in + (size_t)j * D, p + 16 + (size_t)K * 8, (size_t)D * sizeof(float));
        if (nj && r->row_key[r->row_order[j - 1]] == key) {
            r->jobs[nj - 1].n++;
            continue;
        }
        int32_t flags;
        memcpy(&flags, p + 4, 4);
        r->jobs[nj++] = (mdl_expert_job){.layer = key / 2 / E, .expert = key / 2 % E, .n = 1, .flags = (unsigned)flags,
                                         .in = r->rows_in + (size_t)j * D, .out = r->rows_out + (size_t)j * D};
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
    for (int j = 0; j < rows; j++)
        memcpy(r->res_out + (size_t)r->row_order[j] * D, r->rows_out + (size_t)j * D, (size_t)D * sizeof(float));
}

/* One round. T = 0 with done: this rank's step is over. Returns 1 when every rank's step was over (no rows moved). */
static int round_run(dst *d, int layer, const float *xn, int T, const int *topi, unsigned flags, float *y, int done)
{
    struct dst_round *r = round_state(d);
    const mdl_config *c = &d->m->cfg;
    const int n = d->size, D = c->hidden_size, K = c->num_experts_per_tok;
    const size_t rb = rec_bytes(c);
    const size_t sent = pack(d, r, layer, xn, T, topi, flags);
    for (int i = 0; i < n; i++) {
        r->sz_out[2 * i] = r->scnt[i];
        r->sz_out[2 * i + 1] = done;
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
    serve_rows(d, r, recv);
    t0 = pd_time_now();
    d->me.moe_serve_seconds += t0 - t1;
    /* outputs back: to each source its records' picks in order; from each destination the picks we sent there */
    size_t o = 0, back = 0;
    for (int i = 0; i < n; i++) {
        int rows = 0;
        for (int q = r->rdsp[i]; q < r->rdsp[i] + r->rcnt[i]; q += (int)rb) rows += rec_picks(r->recv + q);
        r->odsp[i] = (int)o;
        r->ocnt[i] = rows * D;
        o += (size_t)rows * D;
        rows = 0;
        for (int q = r->sdsp[i]; q < r->sdsp[i] + r->scnt[i]; q += (int)rb) rows += rec_picks(r->send + q);
        r->idsp[i] = (int)back;
        r->icnt[i] = rows * D;
        back += (size_t)rows * D;
    }
    /* bytes that leave this rank: records and outputs for the others */
    d->me.moe_bytes += (double)(sent - (size_t)r->scnt[d->rank]) + (double)(o - (size_t)r->ocnt[d->rank]) * 4;
    if (!grow((void **)&r->res_in, &r->cap_res_in, back * sizeof(float) + 64, 1)) oom(d, back * sizeof(float));
    MPI_Ialltoallv(r->res_out, r->ocnt, r->odsp, MPI_FLOAT, r->res_in, r->icnt, r->idsp, MPI_FLOAT, MPI_COMM_WORLD,
                   &rq);
    dst__wait(d, &rq, "the expert combine", 0);
    d->me.moe_wait_seconds += pd_time_now() - t0;
    /* each pick's output to its row of y, walking the records as pack wrote them */
    const float *res = r->res_in;
    for (size_t q = 0; q < sent; q += rb) {
        int32_t hdr[4], sl[64];
        memcpy(hdr, r->send + q, sizeof hdr);
        memcpy(sl, r->send + q + 16 + (size_t)K * 4, (size_t)K * 4);
        for (int s = 0; s < hdr[2]; s++, res += D)
            memcpy(y + ((size_t)hdr[3] * K + (size_t)sl[s]) * D, res, (size_t)D * sizeof(float));
    }
    return 0;
}

void dst__ep_moe(mdl_ep *ep, int layer, const float *xn, int T, const int *topi, unsigned flags, float *y)
{
    dst *d = (dst *)((char *)ep - offsetof(dst, ep));
    round_run(d, layer, xn, T, topi, flags, y, 0);
}

void dst__step_end(void *arg)
{
    dst *d = arg;
    if (!d->ep_on || d->size < 2) return;
    while (!round_run(d, 0, NULL, 0, NULL, 0, NULL, 1)) continue;
}
