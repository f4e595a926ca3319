/* Transfers. Sender: post every block (RMA put or AM send) -> [PUT: ep flush, so the data is remotely
 * complete] -> send the notice -> callback. A PUT into a peer region mapped here (shared memory) is instead
 * a CPU copy made at the next dispatch, fenced, then the notice: no UCX request and no flush round trip.
 * Receiver: AM data lands at its offset (rendezvous straight into the registered region), the notice is held
 * until every announced block is in, then surfaces as a KV_EVENT_NOTICE. Failures end a transfer on both sides;
 * cancels run from dispatch, never nested. The layer on top of the core files, which reach it only through
 * kv__xfer_ops (end of file). */
#include <stdatomic.h>
#include <string.h>
#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include "kvtransfer/kv_internal.h"

static void kv__xfer_end(kv_xfer_t x, pd_status st);

/* ---- sender ---- */

static void kv__xfer_queue(kv_xfer_t x)
{
    if (x->queued) return;
    x->queued = 1;
    kv__list_push(&x->ctx->xqueue, &x->qlink);
    kv__kick(x->ctx);
}

static void kv__xfer_maybe_free(kv_xfer_t x)
{
    if (!x->reported || x->inflight > 0) return;
    kv__list_del(&x->link);
    kv__remote_unref(x->remote);
    free(x->notice);
    free(x);
}

static ucp_request_param_t kv__send_param(kv__op *op, ucp_mem_h memh)
{
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                               .cb.send = kv__op_send_cb, .user_data = op};
    if (memh) {
        prm.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        prm.memh = memh;
    }
    return prm;
}

static kv__op *kv__xfer_op(kv_xfer_t x, kv__op_kind kind)
{
    kv__op *op = kv__op_new(x->ctx, kind);
    if (!op) {
        pd_error("kv: out of memory posting transfer %llu", (unsigned long long)x->id);
        kv__xfer_end(x, PD_ERR_NOMEM);
        return NULL;
    }
    op->xfer = x;
    op->peer = x->peer;
    op->hdr.magic = KV__AM_MAGIC;
    op->hdr.sender_id = x->ctx->id;
    op->hdr.xfer_id = x->id;
    op->hdr.tag = x->tag;
    x->inflight++;
    return op;
}

static void kv__xfer_advance(kv_xfer_t x)
{
    if (x->issuing || x->inflight > 0 || x->queued) return;
    if (x->ending) {
        kv__xfer_queue(x);
        return;
    }
    kv__op *op;
    ucp_request_param_t prm;
    switch (x->state) {
    case KV__X_DATA:
        if (x->proto == KV_PROTO_PUT) {
            x->state = KV__X_FLUSH;
            if (!(op = kv__xfer_op(x, KV__OP_FLUSH))) return;
            prm = kv__send_param(op, NULL);
            kv__op_track(op, ucp_ep_flush_nbx(x->peer->ep, &prm));
            return;
        }
        /* AM data is counted by the receiver: the notice may go now */
        __attribute__((fallthrough));
    case KV__X_FLUSH:
        x->state = KV__X_NOTICE;
        if (!(op = kv__xfer_op(x, KV__OP_NOTICE))) return;
        op->hdr.count = x->proto == KV_PROTO_AM ? x->n_data : 0;
        prm = kv__send_param(op, NULL);
        kv__op_track(op, ucp_am_send_nbx(x->peer->ep, KV__AM_NOTICE, &op->hdr, sizeof(op->hdr), x->notice,
                                         x->notice_len, &prm));
        return;
    case KV__X_NOTICE:
        x->state = KV__X_DONE;
        x->status = PD_OK;
        kv__xfer_queue(x);
        return;
    case KV__X_DONE: return;
    }
}

static void kv__op_done_xfer(kv__op *op, ucs_status_t status)
{
    kv_xfer_t x = op->xfer;
    if (!x) return; /* context teardown orphaned it */
    x->inflight--;
    if (status != UCS_OK && !x->ending) {
        pd_status ps = x->peer->failed ? x->peer->fail_status : kv__status_from_ucs(status);
        pd_warn("kv: transfer %llu (tag %llu) to peer %016llx: op %d failed: %s", (unsigned long long)x->id,
                (unsigned long long)x->tag, (unsigned long long)x->peer->id, op->kind, ucs_status_string(status));
        kv__xfer_end(x, ps);
    }
    if (x->reported) kv__xfer_maybe_free(x);
    else kv__xfer_advance(x);
}

static void kv__send_abort(kv__peer *peer, uint64_t xfer_id, uint64_t tag, pd_status st)
{
    if (peer->failed || !peer->ep) return;
    kv__op *op = kv__op_new(peer->ctx, KV__OP_ABORT);
    if (!op) return;
    op->peer = peer;
    op->hdr.magic = KV__AM_MAGIC;
    op->hdr.sender_id = peer->ctx->id;
    op->hdr.xfer_id = xfer_id;
    op->hdr.tag = tag;
    op->hdr.status = (int32_t)st;
    ucp_request_param_t prm = kv__send_param(op, NULL);
    kv__op_track(op, ucp_am_send_nbx(peer->ep, KV__AM_ABORT, &op->hdr, sizeof(op->hdr), NULL, 0, &prm));
}

static void kv__xfer_end(kv_xfer_t x, pd_status st)
{
    if (x->ending || x->queued) return;
    kv__list_del(&x->clink); /* a direct PUT not copied yet never will be */
    x->ending = 1;
    x->status = st;
    x->kill_deadline = pd_time_now() + x->ctx->error_timeout;
    if (x->state < KV__X_NOTICE) kv__send_abort(x->peer, x->id, x->tag, st);
    if (x->inflight > 0) x->ctx->cancel_needed = 1;
    else kv__xfer_advance(x);
}

pd_status kv_xfer_cancel(kv_xfer_t x)
{
    if (!x) return PD_ERR_INVALID;
    if (x->ending) return PD_OK;
    if (x->queued || x->state >= KV__X_NOTICE) return PD_ERR_BUSY;
    kv__xfer_end(x, PD_ERR_CANCELED);
    kv__kick(x->ctx);
    return PD_OK;
}

pd_status kv_xfer_start(kv_context_t ctx, const kv_xfer_params_t *prm, kv_xfer_t *out)
{
    if (!ctx || !prm || !prm->local || !prm->remote || !prm->cb || (prm->n_blocks && !prm->blocks) ||
        prm->local->ctx != ctx || prm->remote->ctx != ctx || ctx->destroying)
        return PD_ERR_INVALID;
    kv_region_t local = prm->local;
    kv_remote_t remote = prm->remote;
    const void *notice = (prm->field_mask & KV_XFER_FIELD_NOTICE) ? prm->notice : NULL;
    size_t notice_len = (prm->field_mask & KV_XFER_FIELD_NOTICE) ? prm->notice_len : 0;
    if (notice_len > ctx->max_notice || (notice_len && !notice)) {
        pd_warn("kv: notice of %zu bytes exceeds the %zu-byte limit", notice_len, ctx->max_notice);
        return PD_ERR_RANGE;
    }
    for (size_t i = 0; i < prm->n_blocks; i++) {
        const kv_block *b = &prm->blocks[i];
        if (b->local_off > local->len || b->len > local->len - b->local_off || b->remote_off > remote->len ||
            b->len > remote->len - b->remote_off) {
            pd_warn("kv: block %zu (local %llu, remote %llu, %llu bytes) is outside the regions (%zu, %llu bytes)", i,
                    (unsigned long long)b->local_off, (unsigned long long)b->remote_off, (unsigned long long)b->len,
                    local->len, (unsigned long long)remote->len);
            return PD_ERR_RANGE;
        }
    }
    kv__peer *peer = remote->peer;
    if (peer->failed || !peer->ep) return PD_ERR_PEER;
    int direct = remote->ptr != NULL;
    size_t n_keep = direct ? prm->n_blocks : 0;
    kv_xfer_t x = calloc(1, sizeof(*x) + n_keep * sizeof(kv_block));
    if (!x) return PD_ERR_NOMEM;
    if (notice_len) {
        x->notice = malloc(notice_len);
        if (!x->notice) {
            free(x);
            return PD_ERR_NOMEM;
        }
        memcpy(x->notice, notice, notice_len);
    }
    x->notice_len = notice_len;
    x->ctx = ctx;
    x->remote = remote;
    remote->refs++;
    x->local = local;
    x->peer = peer;
    x->id = ++ctx->next_xfer_id;
    x->tag = (prm->field_mask & KV_XFER_FIELD_TAG) ? prm->tag : 0;
    x->proto = direct ? KV_PROTO_PUT : peer->proto;
    x->state = KV__X_DATA;
    x->cb = prm->cb;
    x->arg = prm->arg;
    double timeout = (prm->field_mask & KV_XFER_FIELD_TIMEOUT) && prm->timeout > 0 ? prm->timeout : ctx->xfer_timeout;
    x->deadline = pd_time_now() + timeout;
    kv__list_init(&x->qlink);
    kv__list_init(&x->clink);
    kv__list_push(&ctx->xfers, &x->link);

    if (direct) {
        /* Copied from dispatch, not here: the start stays cheap and a cancel right after it still works. */
        if (n_keep) memcpy(x->blocks, prm->blocks, n_keep * sizeof(kv_block));
        x->n_blocks = n_keep;
        kv__list_push(&ctx->xcopy, &x->clink);
        kv__kick(ctx);
        if (out) *out = x;
        return PD_OK;
    }
    x->issuing = 1;
    for (size_t i = 0; i < prm->n_blocks && !x->ending; i++) {
        const kv_block *b = &prm->blocks[i];
        if (b->len == 0) continue;
        char *src = (char *)local->base + b->local_off;
        kv__op *op = kv__xfer_op(x, x->proto == KV_PROTO_PUT ? KV__OP_PUT : KV__OP_AM_DATA);
        if (!op) break;
        ucp_request_param_t p = kv__send_param(op, local->memh);
        if (x->proto == KV_PROTO_PUT) {
            kv__op_track(op, ucp_put_nbx(peer->ep, src, b->len, remote->base + b->remote_off, remote->rkey, &p));
        } else {
            x->n_data++;
            op->hdr.region_id = remote->region_id;
            op->hdr.offset = b->remote_off;
            kv__op_track(op, ucp_am_send_nbx(peer->ep, KV__AM_DATA, &op->hdr, sizeof(op->hdr), src, b->len, &p));
        }
    }
    x->issuing = 0;
    kv__xfer_advance(x);
    kv__kick(ctx);
    if (out) *out = x;
    return PD_OK;
}

/* Copies len bytes into a peer's mapped region. Non-temporal stores when the region is larger than a
 * quarter of the last-level cache (set in kv_remote_create): glibc's memcpy switches to them only for
 * single copies of about the cache size it reads from CPUID (2.36 on this VM: above 240 MiB), so a pool of
 * 1 MiB blocks would otherwise be written through the cache (read for ownership, then evicted) at about
 * half the memory bandwidth. Measured on the 2-core EPYC VM, 1 MiB blocks into a 64 MiB region: memcpy
 * 8.4-9.6 GB/s, SSE2 streaming stores 12.6-19 GB/s (AVX2/AVX-512 ones were at most 5 % faster; rep movsb
 * runs at memcpy's speed). */
static void kv__copy(char *dst, const char *src, size_t len, int nt)
{
#if defined(__x86_64__)
    if (nt && len >= 256) {
        size_t head = (64 - ((uintptr_t)dst & 63)) & 63;
        memcpy(dst, src, head);
        dst += head;
        src += head;
        len -= head;
        for (; len >= 64; len -= 64, dst += 64, src += 64) {
            __m128i a = _mm_loadu_si128((const __m128i *)src), b = _mm_loadu_si128((const __m128i *)(src + 16)),
                    c = _mm_loadu_si128((const __m128i *)(src + 32)), d = _mm_loadu_si128((const __m128i *)(src + 48));
            _mm_stream_si128((__m128i *)dst, a);
            _mm_stream_si128((__m128i *)(dst + 16), b);
            _mm_stream_si128((__m128i *)(dst + 32), c);
            _mm_stream_si128((__m128i *)(dst + 48), d);
        }
    }
#else
    (void)nt;
#endif
    memcpy(dst, src, len);
}

/* Runs the copies of direct PUTs, then posts their notices. The fence orders every store of the data
 * (streaming stores are weakly ordered) before the notice's, so the receiver never sees a notice first. */
static void kv__copy_pass(kv_context_t ctx)
{
    while (!kv__list_empty(&ctx->xcopy)) {
        kv_xfer_t x = KV__CONTAINER(ctx->xcopy.next, struct kv_xfer, clink);
        kv__list_del(&x->clink);
        kv_remote_t r = x->remote;
        if (x->peer->failed || !x->peer->ep || !r->ptr) {
            kv__xfer_end(x, x->peer->failed ? x->peer->fail_status : PD_ERR_PEER);
            continue;
        }
        for (size_t i = 0; i < x->n_blocks; i++) {
            const kv_block *b = &x->blocks[i];
            kv__copy(r->ptr + b->remote_off, (const char *)x->local->base + b->local_off, b->len, r->nt);
        }
#if defined(__x86_64__)
        _mm_sfence();
#endif
        atomic_thread_fence(memory_order_release);
        x->state = KV__X_FLUSH; /* the data is in place: go straight to the notice */
        kv__xfer_advance(x);
    }
}

/* ---- receiver ---- */

static kv__rx *kv__rx_find(kv_context_t ctx, uint64_t sender, uint64_t xfer_id)
{
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->rxs) {
        kv__rx *rx = KV__CONTAINER(it, kv__rx, link);
        if (rx->sender_id == sender && rx->xfer_id == xfer_id) return rx;
    }
    return NULL;
}

static kv__rx *kv__rx_get(kv_context_t ctx, const kv__am_hdr *h)
{
    kv__rx *rx = kv__rx_find(ctx, h->sender_id, h->xfer_id);
    if (rx) return rx;
    rx = calloc(1, sizeof(*rx));
    if (!rx) {
        pd_error("kv: out of memory tracking transfer %llu from %016llx", (unsigned long long)h->xfer_id,
                 (unsigned long long)h->sender_id);
        return NULL;
    }
    rx->ctx = ctx;
    rx->sender_id = h->sender_id;
    rx->xfer_id = h->xfer_id;
    rx->tag = h->tag;
    rx->expected = -1;
    kv__list_push(&ctx->rxs, &rx->link);
    return rx;
}

static void kv__rx_free(kv__rx *rx)
{
    kv__list_del(&rx->link);
    free(rx->payload);
    free(rx);
}

static void kv__rx_free_all(kv_context_t ctx)
{
    while (!kv__list_empty(&ctx->rxs)) kv__rx_free(KV__CONTAINER(ctx->rxs.next, kv__rx, link));
}

static void kv__rx_check(kv__rx *rx)
{
    if (rx->inflight > 0 || rx->emitted) return;
    kv_event ev = {.peer_id = rx->sender_id, .tag = rx->tag};
    if (rx->ending) {
        /* Messages of this transfer may still be on the wire: keep a tombstone that drops them. */
        ev.type = KV_EVENT_ABORTED;
        ev.status = rx->status;
        kv__queue_event(rx->ctx, &ev, NULL);
        rx->emitted = 1;
        free(rx->payload);
        rx->payload = NULL;
        rx->last_activity = pd_time_now();
    } else if (rx->have_notice && rx->expected >= 0 && rx->done >= (uint64_t)rx->expected) {
        ev.type = KV_EVENT_NOTICE;
        ev.status = PD_OK;
        ev.payload_len = rx->payload_len;
        kv__queue_event(rx->ctx, &ev, rx->payload);
        rx->payload = NULL;
        kv__rx_free(rx);
    }
}

static void kv__rx_end(kv__rx *rx, pd_status st)
{
    if (rx->ending) return;
    rx->ending = 1;
    rx->status = st;
    rx->kill_deadline = pd_time_now() + rx->ctx->error_timeout;
    if (rx->inflight > 0) rx->ctx->cancel_needed = 1;
    else kv__rx_check(rx);
}

static void kv__op_done_rx(kv__op *op, ucs_status_t status)
{
    kv__rx *rx = op->rx;
    if (!rx) return;
    rx->inflight--;
    if (status != UCS_OK) {
        if (!rx->ending && status != UCS_ERR_CANCELED)
            pd_warn("kv: receiving transfer %llu (tag %llu) from %016llx failed: %s", (unsigned long long)rx->xfer_id,
                    (unsigned long long)rx->tag, (unsigned long long)rx->sender_id, ucs_status_string(status));
        kv__rx_end(rx, kv__status_from_ucs(status));
    } else if (op->kind == KV__OP_RECV_DATA) {
        rx->done++;
    } else {
        rx->have_notice = 1;
    }
    kv__rx_check(rx);
}

/* Cancels every request of an ended transfer. One request at a time, rescanning after each, because a
 * cancel may complete requests (and end other transfers) re-entrantly. */
static void kv__cancel_pass(kv_context_t ctx)
{
    ctx->cancel_needed = 0;
    for (;;) {
        kv__op *found = NULL;
        kv__link *it, *tmp;
        KV__FOREACH(it, tmp, &ctx->ops) {
            kv__op *op = KV__CONTAINER(it, kv__op, link);
            if (op->req && !op->cancel_sent && ((op->xfer && op->xfer->ending) || (op->rx && op->rx->ending))) {
                found = op;
                break;
            }
        }
        if (!found) return;
        found->cancel_sent = 1;
        ucp_request_cancel(ctx->worker, found->req);
    }
}

static void kv__tick_xfers(kv_context_t ctx, double now)
{
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->xfers) {
        kv_xfer_t x = KV__CONTAINER(it, struct kv_xfer, link);
        if (x->queued) continue;
        if (!x->ending && now >= x->deadline) {
            pd_warn("kv: transfer %llu (tag %llu) to peer %016llx timed out", (unsigned long long)x->id,
                    (unsigned long long)x->tag, (unsigned long long)x->peer->id);
            kv__xfer_end(x, PD_ERR_TIMEOUT);
        } else if (x->ending && now >= x->kill_deadline) {
            /* Requests that outlive the bound are stuck on the endpoint: closing it completes them. */
            pd_error("kv: transfer %llu to peer %016llx: %d requests still in flight %.1fs after it ended; "
                     "closing the endpoint", (unsigned long long)x->id, (unsigned long long)x->peer->id, x->inflight,
                     ctx->error_timeout);
            kv__peer_fail(x->peer, x->status);
            kv__xfer_queue(x);
        }
    }
    KV__FOREACH(it, tmp, &ctx->rxs) {
        kv__rx *rx = KV__CONTAINER(it, kv__rx, link);
        if (rx->emitted) {
            if (now - rx->last_activity > ctx->xfer_timeout) kv__rx_free(rx);
            continue;
        }
        if (!rx->ending && now - rx->last_activity > ctx->xfer_timeout) {
            pd_warn("kv: incoming transfer %llu (tag %llu) from %016llx stalled for %.1fs",
                    (unsigned long long)rx->xfer_id, (unsigned long long)rx->tag, (unsigned long long)rx->sender_id,
                    now - rx->last_activity);
            kv__rx_end(rx, PD_ERR_TIMEOUT);
        } else if (rx->ending && rx->inflight > 0 && now >= rx->kill_deadline) {
            pd_error("kv: incoming transfer %llu from %016llx: %d receives still in flight %.1fs after it ended",
                     (unsigned long long)rx->xfer_id, (unsigned long long)rx->sender_id, rx->inflight,
                     ctx->error_timeout);
            kv__link *oi, *ot;
            KV__FOREACH(oi, ot, &ctx->ops) {
                kv__op *op = KV__CONTAINER(oi, kv__op, link);
                if (op->rx == rx) op->rx = NULL;
            }
            rx->inflight = 0;
            kv__rx_check(rx);
        }
    }
}

/* ---- active-message handlers ---- */

static int kv__hdr_ok(const void *header, size_t len, kv__am_hdr *h)
{
    if (len != sizeof(*h)) return 0;
    memcpy(h, header, sizeof(*h));
    return h->magic == KV__AM_MAGIC;
}

static ucs_status_t kv__am_data_cb(void *arg, const void *header, size_t header_length, void *data, size_t length,
                                   const ucp_am_recv_param_t *param)
{
    kv_context_t ctx = arg;
    kv__am_hdr h;
    if (!kv__hdr_ok(header, header_length, &h)) {
        pd_warn("kv: dropped a data message with a malformed header");
        return UCS_OK;
    }
    kv__rx *rx = kv__rx_get(ctx, &h);
    if (!rx) return UCS_OK;
    rx->last_activity = pd_time_now();
    if (rx->ending) return UCS_OK;
    kv_region_t region = kv__region_find(ctx, h.region_id);
    if (!region || h.offset > region->len || length > region->len - h.offset) {
        pd_warn("kv: transfer %llu from %016llx writes %zu bytes at %llu of region %llu, which %s",
                (unsigned long long)h.xfer_id, (unsigned long long)h.sender_id, length, (unsigned long long)h.offset,
                (unsigned long long)h.region_id, region ? "is too small" : "does not exist");
        kv__rx_end(rx, region ? PD_ERR_RANGE : PD_ERR_NOT_FOUND);
        return UCS_OK;
    }
    char *dst = (char *)region->base + h.offset;
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        memcpy(dst, data, length);
        rx->done++;
        kv__rx_check(rx);
        return UCS_OK;
    }
    kv__op *op = kv__op_new(ctx, KV__OP_RECV_DATA);
    if (!op) {
        kv__rx_end(rx, PD_ERR_NOMEM);
        return UCS_OK;
    }
    op->rx = rx;
    op->region = region;
    rx->inflight++;
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                                               UCP_OP_ATTR_FIELD_MEMH,
                               .cb.recv_am = kv__op_recv_cb, .user_data = op, .memh = region->memh};
    kv__op_track(op, ucp_am_recv_data_nbx(ctx->worker, data, dst, length, &prm));
    return UCS_OK;
}

static ucs_status_t kv__am_notice_cb(void *arg, const void *header, size_t header_length, void *data,
                                     size_t length, const ucp_am_recv_param_t *param)
{
    kv_context_t ctx = arg;
    kv__am_hdr h;
    if (!kv__hdr_ok(header, header_length, &h)) {
        pd_warn("kv: dropped a notice with a malformed header");
        return UCS_OK;
    }
    kv__rx *rx = kv__rx_get(ctx, &h);
    if (!rx) return UCS_OK;
    rx->last_activity = pd_time_now();
    rx->tag = h.tag;
    rx->expected = h.count;
    if (rx->ending) return UCS_OK;
    if (length > ctx->max_notice) {
        pd_warn("kv: notice of %zu bytes from %016llx exceeds the %zu-byte limit", length,
                (unsigned long long)h.sender_id, ctx->max_notice);
        kv__rx_end(rx, PD_ERR_RANGE);
        return UCS_OK;
    }
    rx->payload = malloc(length ? length : 1);
    if (!rx->payload) {
        kv__rx_end(rx, PD_ERR_NOMEM);
        return UCS_OK;
    }
    rx->payload_len = length;
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
        if (length) memcpy(rx->payload, data, length);
        rx->have_notice = 1;
        kv__rx_check(rx);
        return UCS_OK;
    }
    kv__op *op = kv__op_new(ctx, KV__OP_RECV_NOTICE);
    if (!op) {
        kv__rx_end(rx, PD_ERR_NOMEM);
        return UCS_OK;
    }
    op->rx = rx;
    rx->inflight++;
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                               .cb.recv_am = kv__op_recv_cb, .user_data = op};
    kv__op_track(op, ucp_am_recv_data_nbx(ctx->worker, data, rx->payload, length, &prm));
    return UCS_OK;
}

static ucs_status_t kv__am_abort_cb(void *arg, const void *header, size_t header_length, void *data, size_t length,
                                    const ucp_am_recv_param_t *param)
{
    kv_context_t ctx = arg;
    kv__am_hdr h;
    if (!kv__hdr_ok(header, header_length, &h)) return UCS_OK;
    pd_status st = h.status > 0 && h.status < PD_STATUS_COUNT ? (pd_status)h.status : PD_ERR_CANCELED;
    kv__rx *rx = kv__rx_get(ctx, &h);
    if (rx) {
        rx->last_activity = pd_time_now();
        kv__rx_end(rx, st);
    } else {
        kv_event ev = {.type = KV_EVENT_ABORTED, .status = st, .peer_id = h.sender_id, .tag = h.tag};
        kv__queue_event(ctx, &ev, NULL);
    }
    return UCS_OK;
}

static ucs_status_t kv__am_hello_cb(void *arg, const void *header, size_t header_length, void *data, size_t length,
                                    const ucp_am_recv_param_t *param)
{
    kv_context_t ctx = arg;
    kv__am_hdr h;
    if (!kv__hdr_ok(header, header_length, &h) || (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) ||
        kv__peer_find(ctx, h.sender_id))
        return UCS_OK;
    kv__hello *hello = calloc(1, sizeof(*hello));
    char *desc = malloc(length + 1);
    if (!hello || !desc) {
        free(hello);
        free(desc);
        return UCS_OK;
    }
    memcpy(desc, data, length);
    desc[length] = '\0';
    hello->desc = desc;
    kv__list_push(&ctx->hellos, &hello->link);
    kv__kick(ctx);
    return UCS_OK;
}

static pd_status kv__am_register(kv_context_t ctx)
{
    static const struct {
        unsigned id;
        ucp_am_recv_callback_t cb;
    } handlers[] = {{KV__AM_HELLO, kv__am_hello_cb},
                    {KV__AM_DATA, kv__am_data_cb},
                    {KV__AM_NOTICE, kv__am_notice_cb},
                    {KV__AM_ABORT, kv__am_abort_cb}};
    for (size_t i = 0; i < PD_ARRAY_LEN(handlers); i++) {
        ucp_am_handler_param_t hp = {.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                                                   UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG,
                                     .id = handlers[i].id,
                                     .flags = UCP_AM_FLAG_WHOLE_MSG,
                                     .cb = handlers[i].cb,
                                     .arg = ctx};
        ucs_status_t st = ucp_worker_set_am_recv_handler(ctx->worker, &hp);
        if (st != UCS_OK) {
            pd_error("kv: registering active message handler %u failed: %s", handlers[i].id, ucs_status_string(st));
            return PD_ERR_TRANSPORT;
        }
    }
    return PD_OK;
}

/* ---- what the core files call (ctx->xl) ---- */

static void kv__xl_op_done(kv__op *op, ucs_status_t status)
{
    if (op->kind == KV__OP_RECV_DATA || op->kind == KV__OP_RECV_NOTICE) kv__op_done_rx(op, status);
    else kv__op_done_xfer(op, status);
}

static void kv__xl_peer_failed(kv__peer *p)
{
    kv_context_t ctx = p->ctx;
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->xfers) {
        kv_xfer_t x = KV__CONTAINER(it, struct kv_xfer, link);
        if (x->peer == p) kv__xfer_end(x, p->fail_status);
    }
    KV__FOREACH(it, tmp, &ctx->rxs) {
        kv__rx *rx = KV__CONTAINER(it, kv__rx, link);
        if (rx->sender_id == p->id) kv__rx_end(rx, PD_ERR_PEER);
    }
}

static void kv__xl_region_closing(kv_region_t r)
{
    kv_context_t ctx = r->ctx;
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->xfers) {
        kv_xfer_t x = KV__CONTAINER(it, struct kv_xfer, link);
        PD_ASSERT(x->local != r || x->reported); /* contract: local transfers completed first */
        if (x->local == r) x->local = NULL;
    }
    KV__FOREACH(it, tmp, &ctx->ops) {
        kv__op *op = KV__CONTAINER(it, kv__op, link);
        if (op->region == r && op->rx) kv__rx_end(op->rx, PD_ERR_CANCELED);
    }
}

static int kv__xl_dispatch(kv_context_t ctx)
{
    int n = 0;
    if (ctx->cancel_needed) kv__cancel_pass(ctx);
    kv__copy_pass(ctx);
    while (!kv__list_empty(&ctx->xqueue)) {
        kv_xfer_t x = KV__CONTAINER(ctx->xqueue.next, struct kv_xfer, qlink);
        kv__list_del(&x->qlink);
        x->reported = 1;
        x->cb(x, x->status, x->arg);
        n++;
        kv__xfer_maybe_free(x);
    }
    return n;
}

static void kv__xl_cancel_all(kv_context_t ctx)
{
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->xfers) {
        kv_xfer_t x = KV__CONTAINER(it, struct kv_xfer, link);
        if (!x->queued) kv__xfer_end(x, PD_ERR_CANCELED);
    }
    KV__FOREACH(it, tmp, &ctx->rxs) kv__rx_end(KV__CONTAINER(it, kv__rx, link), PD_ERR_CANCELED);
}

static void kv__xl_free_all(kv_context_t ctx)
{
    kv__link *it, *tmp;
    kv__rx_free_all(ctx);
    KV__FOREACH(it, tmp, &ctx->xfers) {
        kv_xfer_t x = KV__CONTAINER(it, struct kv_xfer, link);
        kv__list_del(&x->link);
        free(x->notice);
        free(x);
    }
}

const kv__xfer_layer kv__xfer_ops = {
    .am_register = kv__am_register,
    .op_done = kv__xl_op_done,
    .peer_failed = kv__xl_peer_failed,
    .region_closing = kv__xl_region_closing,
    .tick = kv__tick_xfers,
    .dispatch = kv__xl_dispatch,
    .cancel_all = kv__xl_cancel_all,
    .free_all = kv__xl_free_all,
};
