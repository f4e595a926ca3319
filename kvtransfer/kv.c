/* libpdkv core: UCX context and worker, progress (libevent through the worker's event fd, or a blocking
 * wait), peers (endpoints cached per remote context, failure detection), regions and remotes.
 * UCX callbacks only change state and queue work; user callbacks run from kv__dispatch afterwards. */
#include <errno.h>
#include <event2/event.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "kvtransfer/kv_internal.h"

pd_status kv__status_from_ucs(ucs_status_t s)
{
    switch (s) {
    case UCS_OK: return PD_OK;
    case UCS_ERR_CANCELED: return PD_ERR_CANCELED;
    case UCS_ERR_NO_MEMORY: return PD_ERR_NOMEM;
    case UCS_ERR_TIMED_OUT:
    case UCS_ERR_ENDPOINT_TIMEOUT: return PD_ERR_TIMEOUT;
    case UCS_ERR_UNREACHABLE:
    case UCS_ERR_CONNECTION_RESET:
    case UCS_ERR_REJECTED:
    case UCS_ERR_NOT_CONNECTED: return PD_ERR_PEER;
    default: return PD_ERR_TRANSPORT;
    }
}

/* ---- process identity (liveness of shared-memory peers, whose endpoints have no UCX error handling) */

/* Reads state and start time (field 22) of /proc/<pid>/stat. Returns 0 on success. */
static int kv__proc_stat(uint32_t pid, char *state, uint64_t *start_time)
{
    char path[64], buf[1024];
    snprintf(path, sizeof(path), "/proc/%u/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    p += 2; /* field 3: state */
    *state = *p;
    for (int field = 3; field < 22; field++) {
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    *start_time = strtoull(p, NULL, 10);
    return 0;
}

static int kv__proc_alive(uint32_t pid, uint64_t start_time)
{
    char state;
    uint64_t st;
    if (kv__proc_stat(pid, &state, &st) != 0) return 0;
    return st == start_time && state != 'Z' && state != 'X';
}

static void kv__read_boot_id(uint8_t out[16])
{
    memset(out, 0, 16);
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (!f) return;
    char buf[64] = {0};
    if (fgets(buf, sizeof(buf), f)) {
        int k = 0;
        for (char *p = buf; *p && k < 32; p++) {
            int v = (*p >= '0' && *p <= '9') ? *p - '0' : (*p >= 'a' && *p <= 'f') ? *p - 'a' + 10 : -1;
            if (v < 0) continue;
            out[k / 2] |= (uint8_t)(v << (k % 2 ? 0 : 4));
            k++;
        }
    }
    fclose(f);
}

/* Size of the largest CPU cache in bytes, from sysfs (sysconf's figure can be the whole package's, or
 * wrong in a VM: 320 MiB here for a 32 MiB L3); 32 MiB if unknown. */
static size_t kv__llc_size(void)
{
    size_t best = 0;
    for (int i = 0; i < 8; i++) {
        char path[96];
        snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        FILE *f = fopen(path, "r");
        if (!f) break;
        unsigned long long v = 0;
        char unit = 0;
        if (fscanf(f, "%llu%c", &v, &unit) >= 1) {
            if (unit == 'K') v <<= 10;
            else if (unit == 'M') v <<= 20;
            else if (unit == 'G') v <<= 30;
            best = PD_MAX(best, (size_t)v);
        }
        fclose(f);
    }
    return best ? best : (size_t)32 << 20;
}

/* ---- ops: one per UCX request ---- */

kv__op *kv__op_new(kv_context_t ctx, kv__op_kind kind)
{
    kv__op *op = calloc(1, sizeof(*op));
    if (!op) return NULL;
    op->ctx = ctx;
    op->kind = kind;
    kv__list_push(&ctx->ops, &op->link);
    return op;
}

static void kv__op_complete(kv__op *op, ucs_status_t status)
{
    kv__list_del(&op->link);
    switch (op->kind) {
    case KV__OP_PUT:
    case KV__OP_FLUSH:
    case KV__OP_AM_DATA:
    case KV__OP_NOTICE: kv__op_done_xfer(op, status); break;
    case KV__OP_RECV_DATA:
    case KV__OP_RECV_NOTICE: kv__op_done_rx(op, status); break;
    default:
        if (status != UCS_OK && status != UCS_ERR_CANCELED)
            pd_debug("kv: control op %d ended: %s", op->kind, ucs_status_string(status));
        break;
    }
    free(op->buf);
    free(op);
}

void kv__op_track(kv__op *op, ucs_status_ptr_t sp)
{
    if (sp == NULL) kv__op_complete(op, UCS_OK);
    else if (UCS_PTR_IS_ERR(sp)) kv__op_complete(op, UCS_PTR_STATUS(sp));
    else op->req = sp;
}

void kv__op_send_cb(void *request, ucs_status_t status, void *user_data)
{
    kv__op *op = user_data;
    op->req = NULL;
    ucp_request_free(request);
    kv__op_complete(op, status);
}

void kv__op_recv_cb(void *request, ucs_status_t status, size_t length, void *user_data)
{
    kv__op_send_cb(request, status, user_data);
}

/* ---- dispatch queue ---- */

void kv__queue_event(kv_context_t ctx, const kv_event *ev, void *owned_payload)
{
    kv__qev *q = calloc(1, sizeof(*q));
    if (!q) {
        pd_error("kv: out of memory queueing a receiver event (type %d, tag %llu)", ev->type,
                 (unsigned long long)ev->tag);
        free(owned_payload);
        return;
    }
    q->ev = *ev;
    q->payload = owned_payload;
    q->ev.payload = owned_payload;
    kv__list_push(&ctx->equeue, &q->qlink);
    kv__kick(ctx);
}

void kv__kick(kv_context_t ctx)
{
    if (ctx->ev_efd) event_active(ctx->ev_efd, EV_READ, 0);
}

/* ---- peers ---- */

kv__peer *kv__peer_find(kv_context_t ctx, uint64_t id)
{
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->peers) {
        kv__peer *p = KV__CONTAINER(it, kv__peer, link);
        if (p->id == id) return p;
    }
    return NULL;
}

static void kv__peer_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    kv__peer *p = arg;
    pd_warn("kv: endpoint to peer %016llx reported %s", (unsigned long long)p->id, ucs_status_string(status));
    kv__peer_fail(p, kv__status_from_ucs(status));
}

void kv__peer_fail(kv__peer *p, pd_status st)
{
    if (p->failed) return;
    p->failed = 1;
    p->fail_status = st;
    kv__kick(p->ctx);
}

static void kv__peer_close_ep(kv__peer *p, int force)
{
    if (!p->ep) return;
    kv_context_t ctx = p->ctx;
    kv__op *op = kv__op_new(ctx, KV__OP_CLOSE);
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS};
    prm.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    if (op) {
        op->peer = p;
        prm.op_attr_mask |= UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        prm.cb.send = kv__op_send_cb;
        prm.user_data = op;
    }
    ucp_ep_h ep = p->ep;
    p->ep = NULL;
    ucs_status_ptr_t sp = ucp_ep_close_nbx(ep, &prm);
    if (op) kv__op_track(op, sp);
    else if (UCS_PTR_IS_PTR(sp)) ucp_request_free(sp); /* released when done; nothing of ours in it */
}

/* Ends everything that depended on a failed peer: transfers to it, transfers arriving from it, its
 * endpoint (force-closed, which completes its outstanding requests with errors) and its rkeys. */
static void kv__peer_handle_failure(kv__peer *p)
{
    kv_context_t ctx = p->ctx;
    kv__link *it, *tmp;
    p->fail_handled = 1;
    pd_warn("kv: peer %016llx (pid %u) failed: %s", (unsigned long long)p->id, p->pid, pd_status_str(p->fail_status));
    KV__FOREACH(it, tmp, &ctx->xfers) {
        kv_xfer_t x = KV__CONTAINER(it, struct kv_xfer, link);
        if (x->peer == p) kv__xfer_end(x, p->fail_status);
    }
    KV__FOREACH(it, tmp, &ctx->rxs) {
        kv__rx *rx = KV__CONTAINER(it, kv__rx, link);
        if (rx->sender_id == p->id) kv__rx_end(rx, PD_ERR_PEER);
    }
    /* UCX 1.13 cannot purge requests stuck on a shared-memory endpoint to a dead process (it crashes in
     * ucp_worker_destroy), so a context that lost such a peer leaks its worker at teardown instead. */
    if (p->err_mode == UCP_ERR_HANDLING_MODE_NONE) ctx->keep_worker = 1;
    kv__peer_close_ep(p, 1);
    KV__FOREACH(it, tmp, &ctx->remotes) {
        kv_remote_t r = KV__CONTAINER(it, struct kv_remote, link);
        if (r->peer != p) continue;
        if (r->rkey) ucp_rkey_destroy(r->rkey);
        if (r->map_rkey) ucp_rkey_destroy(r->map_rkey);
        r->rkey = r->map_rkey = NULL;
        r->ptr = NULL;
        if (r->refs == 0) {
            kv__list_del(&r->link);
            free(r);
        }
    }
    kv_event ev = {.type = KV_EVENT_PEER_FAILED, .status = p->fail_status, .peer_id = p->id};
    if (ctx->event_cb) kv__queue_event(ctx, &ev, NULL);
}

/* Which protocol an endpoint should use: PUT when some RMA bandwidth lane is a transport that does RMA
 * natively (cma, knem, xpmem, rc/dc verbs, ...), AM when the only way to put is emulation over TCP. */
static kv_proto kv__detect_proto(ucp_ep_h ep)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return KV_PROTO_AM;
    ucp_ep_print_info(ep, f);
    fclose(f);
    pd_debug("kv: endpoint configuration:\n%s", text);
    kv_proto proto = KV_PROTO_AM;
    for (char *line = text; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = '\0';
        char *lane = strstr(line, "lane[");
        if (lane && strstr(line, "rma_bw#")) {
            char *c = strchr(lane, ':'); /* "lane[1]:  2:cma/memory.0 ..." */
            if (c) {
                c++;
                while (*c == ' ') c++;
                while (*c >= '0' && *c <= '9') c++;
                if (*c == ':') c++;
                char tl[32] = {0};
                size_t k = 0;
                while (c[k] && c[k] != '/' && k < sizeof(tl) - 1) {
                    tl[k] = c[k];
                    k++;
                }
                if (k && strcmp(tl, "tcp") != 0) proto = KV_PROTO_PUT;
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return proto;
}

static void kv__send_hello(kv__peer *p)
{
    kv_context_t ctx = p->ctx;
    kv__op *op = kv__op_new(ctx, KV__OP_HELLO);
    if (!op) return;
    op->peer = p;
    op->buf = strdup(ctx->self_desc);
    if (!op->buf) {
        kv__list_del(&op->link);
        free(op);
        return;
    }
    op->hdr.magic = KV__AM_MAGIC;
    op->hdr.sender_id = ctx->id;
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
                               .cb.send = kv__op_send_cb, .user_data = op};
    kv__op_track(op, ucp_am_send_nbx(p->ep, KV__AM_HELLO, &op->hdr, sizeof(op->hdr), op->buf,
                                     strlen(op->buf), &prm));
}

/* Finds or connects the peer of a descriptor. Contexts whose transports cannot report peer failure
 * (shared memory only, in UCX 1.13) connect without UCX error handling and watch peers through /proc. */
static pd_status kv__peer_get(kv_context_t ctx, const kv_desc_t *d, int send_hello, kv__peer **out)
{
    kv__peer *p = kv__peer_find(ctx, d->ctx_id);
    if (p) {
        *out = p;
        return PD_OK;
    }
    p = calloc(1, sizeof(*p));
    if (!p) return PD_ERR_NOMEM;
    p->ctx = ctx;
    p->id = d->ctx_id;
    p->pid = d->pid;
    p->start_time = d->start_time;
    int same_host = memcmp(d->boot_id, ctx->boot_id, 16) == 0;
    if (ctx->err_mode == UCP_ERR_HANDLING_MODE_NONE && !same_host) {
        pd_error("kv: peer %016llx is on another host but this context has only shared-memory transports",
                 (unsigned long long)d->ctx_id);
        free(p);
        return PD_ERR_UNSUPPORTED;
    }
    ucp_ep_params_t epp = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                                         UCP_EP_PARAM_FIELD_ERR_HANDLER,
                           .address = d->addr,
                           .err_mode = ctx->err_mode,
                           .err_handler = {.cb = kv__peer_err_cb, .arg = p}};
    ucs_status_t st = ucp_ep_create(ctx->worker, &epp, &p->ep);
    if (st != UCS_OK) {
        pd_error("kv: cannot connect to peer %016llx: %s", (unsigned long long)d->ctx_id, ucs_status_string(st));
        free(p);
        return PD_ERR_PEER;
    }
    p->err_mode = epp.err_mode;
    p->proto = ctx->proto != KV_PROTO_AUTO ? ctx->proto : kv__detect_proto(p->ep);
    kv__list_push(&ctx->peers, &p->link);
    pd_debug("kv: connected to peer %016llx (pid %u), protocol %s, error mode %s", (unsigned long long)p->id, p->pid,
             kv_proto_str(p->proto), p->err_mode == UCP_ERR_HANDLING_MODE_PEER ? "peer" : "none");
    if (send_hello) kv__send_hello(p);
    *out = p;
    return PD_OK;
}

/* ---- regions ---- */

kv_region_t kv__region_find(kv_context_t ctx, uint64_t id)
{
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->regions) {
        kv_region_t r = KV__CONTAINER(it, struct kv_region, link);
        if (r->id == id) return r;
    }
    return NULL;
}

static pd_status kv__region_map(kv_context_t ctx, void *base, size_t len, kv_region_t *out)
{
    if (!ctx || !len || !out) return PD_ERR_INVALID;
    kv_region_t r = calloc(1, sizeof(*r));
    if (!r) return PD_ERR_NOMEM;
    ucp_mem_map_params_t mp = {.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                                             UCP_MEM_MAP_PARAM_FIELD_FLAGS,
                               .address = base, .length = len, .flags = base ? 0 : UCP_MEM_MAP_ALLOCATE};
    ucs_status_t st = ucp_mem_map(ctx->ucp, &mp, &r->memh);
    if (st != UCS_OK) {
        pd_error("kv: registering %zu bytes at %p failed: %s", len, base, ucs_status_string(st));
        goto free_region;
    }
    if (!base) {
        ucp_mem_attr_t ma = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS};
        st = ucp_mem_query(r->memh, &ma);
        if (st != UCS_OK) {
            pd_error("kv: querying an allocated region failed: %s", ucs_status_string(st));
            ucp_mem_unmap(ctx->ucp, r->memh);
            goto free_region;
        }
        base = ma.address;
        r->owned = 1;
    }
    st = ucp_rkey_pack(ctx->ucp, r->memh, &r->rkey_buf, &r->rkey_len);
    if (st != UCS_OK) {
        pd_error("kv: packing the rkey of %zu bytes at %p failed: %s", len, base, ucs_status_string(st));
        goto unmap;
    }
    r->ctx = ctx;
    r->id = ++ctx->next_region_id;
    r->base = base;
    r->len = len;
    kv__list_push(&ctx->regions, &r->link);
    *out = r;
    return PD_OK;

unmap:
    ucp_mem_unmap(ctx->ucp, r->memh);
free_region:
    free(r);
    return PD_ERR_TRANSPORT;
}

pd_status kv_region_create(kv_context_t ctx, void *base, size_t len, kv_region_t *out)
{
    if (!base) return PD_ERR_INVALID;
    return kv__region_map(ctx, base, len, out);
}

pd_status kv_region_alloc(kv_context_t ctx, size_t len, kv_region_t *out) { return kv__region_map(ctx, NULL, len, out); }

static int kv__count_ops(kv_context_t ctx, kv_region_t region, int include_close)
{
    int n = 0;
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->ops) {
        kv__op *op = KV__CONTAINER(it, kv__op, link);
        if (region && op->region != region) continue;
        if (!include_close && op->kind == KV__OP_CLOSE) continue;
        n++;
    }
    return n;
}

static int kv__progress(kv_context_t ctx);

/* Progresses until no op matching (region, include_close) remains or timeout_s passes. */
static int kv__drain(kv_context_t ctx, kv_region_t region, int include_close, double timeout_s)
{
    double deadline = pd_time_now() + timeout_s;
    int n;
    while ((n = kv__count_ops(ctx, region, include_close)) > 0 && pd_time_now() < deadline) {
        kv__progress(ctx);
        if (ucp_worker_arm(ctx->worker) == UCS_OK) {
            struct pollfd pfd = {.fd = ctx->efd, .events = POLLIN};
            poll(&pfd, 1, 10);
        }
    }
    return n;
}

void kv_region_destroy(kv_region_t r)
{
    if (!r) return;
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
    kv__list_del(&r->link); /* no new writes land here */
    int left = kv__drain(ctx, r, 0, ctx->error_timeout);
    if (left) {
        pd_error("kv: %d incoming writes into region %llu still in flight after %.1fs", left,
                 (unsigned long long)r->id, ctx->error_timeout);
        KV__FOREACH(it, tmp, &ctx->ops) {
            kv__op *op = KV__CONTAINER(it, kv__op, link);
            if (op->region == r) op->region = NULL;
        }
    }
    ucp_rkey_buffer_release(r->rkey_buf);
    ucp_mem_unmap(ctx->ucp, r->memh);
    free(r);
}

pd_status kv_region_descriptor(kv_region_t r, char **out)
{
    if (!r || !out) return PD_ERR_INVALID;
    kv_context_t ctx = r->ctx;
    kv_desc_t d = {.ctx_id = ctx->id, .region_id = r->id, .base = (uint64_t)(uintptr_t)r->base, .length = r->len,
                   .pid = ctx->pid, .start_time = ctx->start_time, .addr = ctx->addr, .addr_len = ctx->addr_len,
                   .rkey = r->rkey_buf, .rkey_len = r->rkey_len};
    memcpy(d.boot_id, ctx->boot_id, 16);
    return kv_desc_encode(&d, out);
}

void *kv_region_base(kv_region_t r) { return r ? r->base : NULL; }
size_t kv_region_length(kv_region_t r) { return r ? r->len : 0; }

/* ---- remotes ---- */

/* An endpoint unpacks only the rkey parts of memory domains its configuration reaches, and right after
 * the two sides connected to each other (a receiver's back-connection) that configuration can lack the
 * shared-memory domains: seen as ucp_rkey_ptr UNREACHABLE in 3 of 5 prefill/decode runs. An endpoint to this
 * context's own worker reaches every local domain, so the rkey is unpacked a second time through it, only
 * to map the region. Returns the local address of the region's base, or NULL. */
static void *kv__map_rkey(kv_context_t ctx, const kv_desc_t *d, ucp_rkey_h *out)
{
    kv_desc_t *self = NULL;
    kv__peer *sp;
    ucp_rkey_h rk;
    void *ptr = NULL;
    if (kv_desc_decode(ctx->self_desc, &self) != PD_OK) return NULL;
    if (kv__peer_get(ctx, self, 0, &sp) == PD_OK && sp->ep && !sp->failed &&
        ucp_ep_rkey_unpack(sp->ep, d->rkey, &rk) == UCS_OK) {
        if (ucp_rkey_ptr(rk, d->base, &ptr) == UCS_OK) *out = rk;
        else {
            ucp_rkey_destroy(rk);
            ptr = NULL;
        }
    }
    kv_desc_free(self);
    return ptr;
}

pd_status kv_remote_create(kv_context_t ctx, const char *descriptor, kv_remote_t *out)
{
    if (!ctx || !descriptor || !out) return PD_ERR_INVALID;
    kv_desc_t *d = NULL;
    pd_status s = kv_desc_decode(descriptor, &d);
    if (s != PD_OK) return s;
    if (d->region_id == 0) {
        pd_warn("kv: descriptor of peer %016llx names no region", (unsigned long long)d->ctx_id);
        s = PD_ERR_INVALID;
        goto free_desc;
    }
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->remotes) {
        kv_remote_t r = KV__CONTAINER(it, struct kv_remote, link);
        if (r->peer->id == d->ctx_id && r->region_id == d->region_id) {
            if (r->peer->failed) {
                s = PD_ERR_PEER;
                goto free_desc;
            }
            r->refs++;
            *out = r;
            goto free_desc;
        }
    }
    kv__peer *p;
    s = kv__peer_get(ctx, d, 1, &p);
    if (s != PD_OK) goto free_desc;
    if (p->failed || !p->ep) {
        s = PD_ERR_PEER;
        goto free_desc;
    }
    kv_remote_t r = calloc(1, sizeof(*r));
    if (!r) {
        s = PD_ERR_NOMEM;
        goto free_desc;
    }
    ucs_status_t st = ucp_ep_rkey_unpack(p->ep, d->rkey, &r->rkey);
    if (st != UCS_OK) {
        pd_error("kv: unpacking the rkey of peer %016llx region %llu failed: %s", (unsigned long long)d->ctx_id,
                 (unsigned long long)d->region_id, ucs_status_string(st));
        free(r);
        s = PD_ERR_TRANSPORT;
        goto free_desc;
    }
    /* A region the peer allocated through UCX is shared memory that the rkey attached here (posix, sysv,
     * xpmem): PUTs into it become plain copies, whatever lanes the endpoint uses (with tcp in UCX_TLS the
     * endpoint is all tcp, for peer-failure reporting, but the region is still mapped). Caller-registered
     * memory and peers on other hosts have no mapping; an explicit AM choice is kept. */
    void *ptr = NULL;
    if (ctx->proto != KV_PROTO_AM && !memcmp(d->boot_id, ctx->boot_id, 16) &&
        ucp_rkey_ptr(r->rkey, d->base, &ptr) != UCS_OK)
        ptr = kv__map_rkey(ctx, d, &r->map_rkey);
    if (ptr) {
        r->ptr = ptr;
        /* Streaming stores once the copies' working set, this region plus the sender's source blocks, is
         * more than about half the last-level cache, which the receiver and other processes share: from
         * 16 MiB regions streaming stores were 1.4x (64 KiB blocks) and 1.6x (1 MiB blocks) faster here,
         * at 4 MiB memcpy was 1.8x faster (cache-resident), 9 MiB was even. */
        r->nt = d->length > ctx->llc_size / 4;
    }
    pd_debug("kv: peer %016llx region %llu (%llu bytes): %s", (unsigned long long)d->ctx_id,
             (unsigned long long)d->region_id, (unsigned long long)d->length,
             r->ptr ? (r->nt ? "mapped, streaming copies" : "mapped, cached copies") : "not mapped, UCX puts");
    r->ctx = ctx;
    r->peer = p;
    r->region_id = d->region_id;
    r->base = d->base;
    r->len = d->length;
    r->refs = 1;
    kv__list_push(&ctx->remotes, &r->link);
    *out = r;

free_desc:
    kv_desc_free(d);
    return s;
}

/* Remotes stay cached with no references while their peer is healthy. */
void kv__remote_unref(kv_remote_t r)
{
    PD_ASSERT(r->refs > 0);
    if (--r->refs == 0 && r->peer->failed && r->peer->fail_handled) {
        kv__list_del(&r->link);
        free(r);
    }
}

void kv_remote_destroy(kv_remote_t r)
{
    if (r) kv__remote_unref(r);
}

kv_proto kv_remote_proto(kv_remote_t r) { return r->ptr ? KV_PROTO_PUT : r->peer->proto; }
uint64_t kv_remote_peer_id(kv_remote_t r) { return r->peer->id; }
int kv_remote_direct(kv_remote_t r) { return r->ptr != NULL; }

/* ---- progress ---- */

#define KV__ARM_TRIES 8

static void kv__tick(kv_context_t ctx, double now)
{
    kv__link *it, *tmp;
    KV__FOREACH(it, tmp, &ctx->peers) {
        kv__peer *p = KV__CONTAINER(it, kv__peer, link);
        if (!p->failed && p->ep && p->err_mode == UCP_ERR_HANDLING_MODE_NONE && p->id != ctx->id &&
            !kv__proc_alive(p->pid, p->start_time)) {
            pd_warn("kv: peer %016llx process %u is gone", (unsigned long long)p->id, p->pid);
            kv__peer_fail(p, PD_ERR_PEER);
        }
    }
    kv__tick_xfers(ctx, now);
}

/* Runs queued work and user callbacks; returns how many user callbacks ran. */
static int kv__dispatch(kv_context_t ctx)
{
    int n = 0;
    kv__link *it, *tmp;
    while (!kv__list_empty(&ctx->hellos)) {
        kv__hello *h = KV__CONTAINER(ctx->hellos.next, kv__hello, link);
        kv__list_del(&h->link);
        kv_desc_t *d = NULL;
        kv__peer *p;
        if (!ctx->destroying && kv_desc_decode(h->desc, &d) == PD_OK) {
            if (kv__peer_get(ctx, d, 0, &p) != PD_OK)
                pd_warn("kv: cannot connect back to sender %016llx; its failures go unnoticed",
                        (unsigned long long)d->ctx_id);
        }
        kv_desc_free(d);
        free(h->desc);
        free(h);
    }
    KV__FOREACH(it, tmp, &ctx->peers) {
        kv__peer *p = KV__CONTAINER(it, kv__peer, link);
        if (p->failed && !p->fail_handled) kv__peer_handle_failure(p);
    }
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
    while (!kv__list_empty(&ctx->equeue)) {
        kv__qev *q = KV__CONTAINER(ctx->equeue.next, kv__qev, qlink);
        kv__list_del(&q->qlink);
        if (ctx->event_cb) ctx->event_cb(ctx, &q->ev, ctx->event_arg);
        n++;
        free(q->payload);
        free(q);
    }
    return n;
}

static int kv__progress(kv_context_t ctx)
{
    int n = 0, active = 0;
    for (;;) {
        while (ucp_worker_progress(ctx->worker)) active = 1;
        double now = pd_time_now();
        if (now >= ctx->next_tick) {
            ctx->next_tick = now + ctx->tick;
            kv__tick(ctx, now);
        }
        int d = kv__dispatch(ctx);
        n += d;
        if (d || active) ctx->last_active = now;
        if (!d && kv__list_empty(&ctx->xqueue) && kv__list_empty(&ctx->equeue)) break;
    }
    return n;
}

/* Interrupt moderation. A sleeping worker is woken by its peers: over shared memory each message to an
 * armed worker costs its sender a signal (a datagram on a unix socket) and this process a wake-up. While
 * messages keep coming (the worker found work within the last `linger`), the worker stays unarmed and
 * is re-polled every `nap` instead, so a stream of notices costs neither side a syscall per notice; once
 * `linger` passes without work, it is armed and sleeps on its event fd as before. */
static int kv__lingering(kv_context_t ctx, double now) { return now - ctx->last_active < ctx->linger; }

/* The nap timer: periodic every `nap` while on, so a stream of naps costs no timerfd_settime each. */
static void kv__nap_timer(kv_context_t ctx, int on)
{
    if (ctx->napping == on) return;
    long ns = on ? (long)(ctx->nap * 1e9) : 0;
    struct itimerspec its = {.it_value = {.tv_sec = 0, .tv_nsec = ns}, .it_interval = {.tv_sec = 0, .tv_nsec = ns}};
    if (timerfd_settime(ctx->tfd, 0, &its, NULL) != 0) {
        pd_error("kv: timerfd_settime failed (%s); arming the worker at once from now on", strerror(errno));
        ctx->linger = 0;
        return;
    }
    ctx->napping = on;
}

/* Loop side: 1 if the worker stays unarmed for now. While lingering the event fd is left out of the loop
 * (unarmed, it stays readable from the signal that woke us, which would spin the loop: measured, the
 * receiver's CPU per byte x3.5) and the nap timer calls kv__loop_cb instead. */
static int kv__linger(kv_context_t ctx)
{
    if (ctx->tfd < 0) return 0;
    if (!kv__lingering(ctx, pd_time_now())) {
        kv__nap_timer(ctx, 0);
        return 0;
    }
    kv__nap_timer(ctx, 1);
    if (!ctx->napping) return 0;
    if (ctx->efd_watched) {
        event_del(ctx->ev_efd);
        ctx->efd_watched = 0;
    }
    return 1;
}

static void kv__watch_efd(kv_context_t ctx)
{
    if (ctx->efd_watched) return;
    if (event_add(ctx->ev_efd, NULL) == 0)
        ctx->efd_watched = 1;
    else
        pd_error("kv: cannot add the worker's event fd back to the event loop");
}

/* Progress until the worker can be armed. A worker that stays busy (seen after a shared-memory peer was
 * killed in the middle of a message) is re-polled from a 1 ms timer instead of spinning here, so the
 * rest of the loop (signals, timers, other fds) keeps running. */
static void kv__loop_cb(evutil_socket_t fd, short what, void *arg)
{
    kv_context_t ctx = arg;
    for (int tries = 0; tries < KV__ARM_TRIES; tries++) {
        kv__progress(ctx);
        if (kv__linger(ctx)) return;
        ucs_status_t st = ucp_worker_arm(ctx->worker);
        if (st == UCS_OK) {
            kv__watch_efd(ctx);
            return;
        }
        if (st != UCS_ERR_BUSY) {
            pd_error("kv: ucp_worker_arm failed: %s", ucs_status_string(st));
            break;
        }
    }
    kv__watch_efd(ctx);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 1000};
    evtimer_add(ctx->ev_retry, &tv);
}

static void kv__nap_cb(evutil_socket_t fd, short what, void *arg)
{
    uint64_t expirations;
    if (read(fd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
        pd_error("kv: reading the nap timer failed: %s", strerror(errno));
    kv__loop_cb(fd, what, arg);
}

pd_status kv_context_attach(kv_context_t ctx, struct event_base *base)
{
    if (!ctx || !base || ctx->base) return PD_ERR_INVALID;
    ctx->ev_efd = event_new(base, ctx->efd, EV_READ | EV_PERSIST, kv__loop_cb, ctx);
    ctx->ev_tick = event_new(base, -1, EV_PERSIST, kv__loop_cb, ctx);
    ctx->ev_retry = evtimer_new(base, kv__loop_cb, ctx);
    if (!ctx->ev_efd || !ctx->ev_tick || !ctx->ev_retry) goto free_events;
    if (ctx->linger > 0) {
        ctx->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (ctx->tfd < 0) pd_warn("kv: timerfd_create failed (%s); the worker is armed at once", strerror(errno));
        if (ctx->tfd >= 0 && !(ctx->ev_nap = event_new(base, ctx->tfd, EV_READ | EV_PERSIST, kv__nap_cb, ctx)))
            goto free_events;
    }
    struct timeval tv = {.tv_sec = (long)ctx->tick, .tv_usec = (long)((ctx->tick - (long)ctx->tick) * 1e6)};
    if (event_add(ctx->ev_efd, NULL) != 0 || event_add(ctx->ev_tick, &tv) != 0 ||
        (ctx->ev_nap && event_add(ctx->ev_nap, NULL) != 0))
        goto free_events;
    ctx->efd_watched = 1;
    ctx->base = base;
    event_active(ctx->ev_efd, EV_READ, 0);
    return PD_OK;

free_events:
    pd_error("kv: cannot add the worker's event fd to the event loop");
    if (ctx->ev_efd) event_free(ctx->ev_efd);
    if (ctx->ev_tick) event_free(ctx->ev_tick);
    if (ctx->ev_retry) event_free(ctx->ev_retry);
    if (ctx->ev_nap) event_free(ctx->ev_nap);
    if (ctx->tfd >= 0) close(ctx->tfd);
    ctx->tfd = -1;
    ctx->ev_efd = ctx->ev_tick = ctx->ev_retry = ctx->ev_nap = NULL;
    return PD_ERR_INTERNAL;
}

pd_status kv_progress_wait(kv_context_t ctx, double timeout_s)
{
    double deadline = pd_time_now() + timeout_s;
    int busy = 0;
    for (;;) {
        if (kv__progress(ctx) > 0) return PD_OK;
        double now = pd_time_now();
        if (now >= deadline) return PD_ERR_TIMEOUT;
        if (kv__lingering(ctx, now)) {
            double nap = PD_MIN(ctx->nap, deadline - now);
            struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(nap * 1e9)};
            nanosleep(&ts, NULL);
            continue;
        }
        ucs_status_t st = ucp_worker_arm(ctx->worker);
        if (st == UCS_ERR_BUSY && ++busy < KV__ARM_TRIES) continue;
        double until = PD_MIN(deadline, ctx->next_tick);
        int ms = until > now ? (int)((until - now) * 1000.0) + 1 : 0;
        if (st == UCS_ERR_BUSY) {
            ms = PD_MIN(ms, 1);
            st = UCS_OK;
        }
        busy = 0;
        if (st != UCS_OK) {
            pd_error("kv: ucp_worker_arm failed: %s", ucs_status_string(st));
            ms = PD_MIN(ms, 1);
        }
        struct pollfd pfd = {.fd = ctx->efd, .events = POLLIN};
        if (poll(&pfd, 1, ms) < 0 && errno != EINTR) {
            pd_error("kv: poll on the worker's event fd failed: %s", strerror(errno));
            return PD_ERR_IO;
        }
    }
}

/* ---- context ---- */

/* UCX 1.13 reports peer failure only through network transports (tcp, verbs); posix/sysv/cma cannot.
 * Both ends must agree on the mode (UCX rejects asymmetric endpoints), and they share the UCX_TLS
 * configuration, so the choice is made from this context's own resources. */
static ucp_err_handling_mode_t kv__choose_err_mode(ucp_context_h ucp)
{
    static const char *const net[] = {"tcp/", "rc_verbs/", "rc_mlx5/", "dc_mlx5/", "ud_verbs/", "ud_mlx5/"};
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return UCP_ERR_HANDLING_MODE_PEER;
    ucp_context_print_info(ucp, f);
    fclose(f);
    ucp_err_handling_mode_t mode = UCP_ERR_HANDLING_MODE_NONE;
    for (char *line = strstr(text, "resource"); line; line = strstr(line + 1, "resource")) {
        char *tl = strstr(line, "-- ");
        char *nl = strchr(line, '\n');
        if (!tl || (nl && tl > nl)) continue;
        for (size_t i = 0; i < PD_ARRAY_LEN(net); i++)
            if (!strncmp(tl + 3, net[i], strlen(net[i]))) mode = UCP_ERR_HANDLING_MODE_PEER;
    }
    free(text);
    if (mode == UCP_ERR_HANDLING_MODE_NONE)
        pd_info("kv: no transport can report peer failure (shared memory only); watching peer processes instead");
    return mode;
}

/* Whether UCX_TLS lets UCX use tcp: unset, "all", a list naming tcp, or an exclusion list ("^...") without it.
 * A transport key set while no transport has it makes UCX warn "invalid configuration" on stdout. */
static int kv__tls_has_tcp(void)
{
    const char *tls = getenv("UCX_TLS");
    if (!tls || !*tls) return 1;
    const int excl = tls[0] == '^';
    int named = 0, all = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", tls + excl);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        named |= !strcmp(t, "tcp");
        all |= !strcmp(t, "all");
    }
    return excl ? !named : named || all;
}

/* UCX defaults that pdserve changes, unless the environment sets them (UCX_<NAME> wins). Keep them equal on every
 * process of a deployment: a TCP endpoint sizes its sends by its own receive segment and trusts the peer's to match.
 *  - TCP_RX_SEG_SIZE 64K -> 512K: with peer-failure handling (UCP_ERR_HANDLING_MODE_PEER, which libpdkv needs to
 *    report a dead peer over TCP) UCX 1.13 moves active-message rendezvous data as zero-copy fragments of at most
 *    one receive segment; 8x fewer fragments per MiB took kv_bench over tcp from 2.9-3.4 to 5.2 GB/s at 1 MiB and
 *    from 1.3-3.4 to 2.6-6.1 GB/s at 9 MiB (docs/kvtransfer.md, Measured). */
static void kv__tune_config(ucp_config_t *cfg)
{
    if (!kv__tls_has_tcp()) return;
    /* key: as ucp_config_modify takes a transport's field (it applies to every transport that has it; only tcp
     * has RX_SEG_SIZE); env: the variable that overrides it */
    static const struct { const char *key, *env, *value; } TUNE[] = {{"RX_SEG_SIZE", "UCX_TCP_RX_SEG_SIZE", "512K"}};
    for (size_t i = 0; i < PD_ARRAY_LEN(TUNE); i++) {
        if (getenv(TUNE[i].env)) continue;
        ucs_status_t st = ucp_config_modify(cfg, TUNE[i].key, TUNE[i].value);
        if (st != UCS_OK) pd_warn("kv: cannot set %s=%s: %s", TUNE[i].env, TUNE[i].value, ucs_status_string(st));
    }
}

pd_status kv_context_create(const kv_params_t *params, kv_context_t *out)
{
    if (!out) return PD_ERR_INVALID;
    kv_context_t ctx = calloc(1, sizeof(*ctx));
    if (!ctx) return PD_ERR_NOMEM;
    kv__list_init(&ctx->peers);
    kv__list_init(&ctx->regions);
    kv__list_init(&ctx->remotes);
    kv__list_init(&ctx->xfers);
    kv__list_init(&ctx->rxs);
    kv__list_init(&ctx->ops);
    kv__list_init(&ctx->hellos);
    kv__list_init(&ctx->xqueue);
    kv__list_init(&ctx->xcopy);
    kv__list_init(&ctx->equeue);
    ctx->proto = KV_PROTO_AUTO;
    ctx->error_timeout = 1.0;
    ctx->xfer_timeout = 30.0;
    ctx->max_notice = 64 * 1024;
    ctx->linger = 200e-6;
    ctx->tfd = -1;
    pd_status s = PD_ERR_INVALID;
    if (params) {
        uint64_t m = params->field_mask;
        if (m & KV_PARAM_FIELD_PROTO) ctx->proto = params->proto;
        if (m & KV_PARAM_FIELD_ERROR_TIMEOUT) ctx->error_timeout = params->error_timeout;
        if (m & KV_PARAM_FIELD_XFER_TIMEOUT) ctx->xfer_timeout = params->xfer_timeout;
        if (m & KV_PARAM_FIELD_EVENT_CB) {
            ctx->event_cb = params->event_cb;
            ctx->event_arg = params->event_arg;
        }
        if (m & KV_PARAM_FIELD_MAX_NOTICE) ctx->max_notice = params->max_notice;
        if (m & KV_PARAM_FIELD_LINGER) ctx->linger = params->linger;
    }
    if (!(ctx->error_timeout > 0) || !(ctx->xfer_timeout > 0) || ctx->proto > KV_PROTO_AM ||
        !(ctx->linger >= 0 && ctx->linger <= 0.01)) {
        pd_error("kv: invalid parameters (error_timeout %g, xfer_timeout %g, proto %d, linger %g)",
                 ctx->error_timeout, ctx->xfer_timeout, (int)ctx->proto, ctx->linger);
        goto free_ctx;
    }
    const char *env = getenv("PDSERVE_KV_PROTO");
    if (env && ctx->proto == KV_PROTO_AUTO && kv_proto_parse(env, &ctx->proto) != PD_OK) {
        pd_error("kv: PDSERVE_KV_PROTO=%s is not auto, put or am", env);
        goto free_ctx;
    }
    ctx->tick = PD_MIN(0.1, ctx->error_timeout / 4);
    ctx->nap = ctx->linger / 2;
    ctx->llc_size = kv__llc_size();
    ctx->pid = (uint32_t)getpid();
    char state;
    if (kv__proc_stat(ctx->pid, &state, &ctx->start_time) != 0) ctx->start_time = 0;
    kv__read_boot_id(ctx->boot_id);
    while (ctx->id == 0) {
        if (getrandom(&ctx->id, sizeof(ctx->id), 0) != sizeof(ctx->id)) ctx->id = pd_time_ns() ^ ((uint64_t)ctx->pid << 32);
    }

    s = PD_ERR_TRANSPORT;
    ucp_config_t *cfg;
    ucs_status_t st = ucp_config_read(NULL, NULL, &cfg);
    if (st != UCS_OK) {
        pd_error("kv: reading the UCX configuration failed: %s", ucs_status_string(st));
        goto free_ctx;
    }
    kv__tune_config(cfg);
    ucp_params_t up = {.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_NAME,
                       .features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP,
                       .name = "pdkv"};
    st = ucp_init(&up, cfg, &ctx->ucp);
    ucp_config_release(cfg);
    if (st != UCS_OK) {
        pd_error("kv: ucp_init failed: %s", ucs_status_string(st));
        goto free_ctx;
    }
    ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE, .thread_mode = UCS_THREAD_MODE_SINGLE};
    st = ucp_worker_create(ctx->ucp, &wp, &ctx->worker);
    if (st != UCS_OK) {
        pd_error("kv: ucp_worker_create failed: %s", ucs_status_string(st));
        goto cleanup_ucp;
    }
    ctx->err_mode = kv__choose_err_mode(ctx->ucp);
    st = ucp_worker_get_efd(ctx->worker, &ctx->efd);
    if (st != UCS_OK) {
        pd_error("kv: the worker has no event fd: %s", ucs_status_string(st));
        goto destroy_worker;
    }
    st = ucp_worker_get_address(ctx->worker, &ctx->addr, &ctx->addr_len);
    if (st != UCS_OK) {
        pd_error("kv: ucp_worker_get_address failed: %s", ucs_status_string(st));
        goto destroy_worker;
    }
    kv_desc_t self = {.ctx_id = ctx->id, .pid = ctx->pid, .start_time = ctx->start_time, .addr = ctx->addr,
                      .addr_len = ctx->addr_len};
    memcpy(self.boot_id, ctx->boot_id, 16);
    s = kv_desc_encode(&self, &ctx->self_desc);
    if (s != PD_OK) goto release_address;
    s = kv__am_register(ctx);
    if (s != PD_OK) goto free_self_desc;
    ctx->next_tick = pd_time_now() + ctx->tick;
    *out = ctx;
    return PD_OK;

free_self_desc:
    free(ctx->self_desc);
release_address:
    ucp_worker_release_address(ctx->worker, ctx->addr);
destroy_worker:
    ucp_worker_destroy(ctx->worker);
cleanup_ucp:
    ucp_cleanup(ctx->ucp);
free_ctx:
    free(ctx);
    return s;
}

uint64_t kv_context_id(kv_context_t ctx) { return ctx->id; }

void kv_context_destroy(kv_context_t ctx)
{
    if (!ctx) return;
    kv__link *it, *tmp;
    ctx->destroying = 1;
    KV__FOREACH(it, tmp, &ctx->xfers) {
        kv_xfer_t x = KV__CONTAINER(it, struct kv_xfer, link);
        if (!x->queued) kv__xfer_end(x, PD_ERR_CANCELED);
    }
    KV__FOREACH(it, tmp, &ctx->rxs) kv__rx_end(KV__CONTAINER(it, kv__rx, link), PD_ERR_CANCELED);
    int left = kv__drain(ctx, NULL, 0, ctx->error_timeout);
    /* Closing an endpoint completes whatever is still stuck on it. */
    KV__FOREACH(it, tmp, &ctx->peers) {
        kv__peer *p = KV__CONTAINER(it, kv__peer, link);
        kv__peer_close_ep(p, p->err_mode == UCP_ERR_HANDLING_MODE_PEER || p->failed || left);
    }
    left = kv__drain(ctx, NULL, 1, ctx->error_timeout);
    if (left) pd_error("kv: %d UCX requests still in flight at shutdown; leaking them", left);
    kv__progress(ctx);
    KV__FOREACH(it, tmp, &ctx->ops) {
        kv__op *op = KV__CONTAINER(it, kv__op, link);
        op->xfer = NULL;
        op->rx = NULL;
    }
    kv__rx_free_all(ctx);
    KV__FOREACH(it, tmp, &ctx->xfers) {
        kv_xfer_t x = KV__CONTAINER(it, struct kv_xfer, link);
        kv__list_del(&x->link);
        free(x->notice);
        free(x);
    }
    KV__FOREACH(it, tmp, &ctx->remotes) {
        kv_remote_t r = KV__CONTAINER(it, struct kv_remote, link);
        if (r->rkey) ucp_rkey_destroy(r->rkey);
        if (r->map_rkey) ucp_rkey_destroy(r->map_rkey);
        free(r);
    }
    KV__FOREACH(it, tmp, &ctx->peers) free(KV__CONTAINER(it, kv__peer, link));
    KV__FOREACH(it, tmp, &ctx->hellos) {
        kv__hello *h = KV__CONTAINER(it, kv__hello, link);
        free(h->desc);
        free(h);
    }
    KV__FOREACH(it, tmp, &ctx->equeue) {
        kv__qev *q = KV__CONTAINER(it, kv__qev, qlink);
        free(q->payload);
        free(q);
    }
    KV__FOREACH(it, tmp, &ctx->regions) {
        kv_region_t r = KV__CONTAINER(it, struct kv_region, link);
        ucp_rkey_buffer_release(r->rkey_buf);
        ucp_mem_unmap(ctx->ucp, r->memh);
        free(r);
    }
    if (ctx->ev_efd) event_free(ctx->ev_efd);
    if (ctx->ev_tick) event_free(ctx->ev_tick);
    if (ctx->ev_retry) event_free(ctx->ev_retry);
    if (ctx->ev_nap) event_free(ctx->ev_nap);
    if (ctx->tfd >= 0) close(ctx->tfd);
    free(ctx->self_desc);
    ucp_worker_release_address(ctx->worker, ctx->addr);
    if (kv__list_empty(&ctx->ops) && !ctx->keep_worker) {
        ucp_worker_destroy(ctx->worker);
        ucp_cleanup(ctx->ucp);
    } else if (ctx->keep_worker) {
        pd_warn("kv: a shared-memory peer died; leaving the UCX worker to process exit (UCX 1.13 cannot purge it)");
    }
    KV__FOREACH(it, tmp, &ctx->ops) free(KV__CONTAINER(it, kv__op, link));
    free(ctx);
}
