/* libpdkv peers: one endpoint per remote context, cached and found by context id (the connection cache), the
 * protocol each endpoint uses, HELLO so a receiver connects back, and failure: UCX's error callback, or for
 * shared-memory endpoints without error handling a /proc liveness check; a failure is handled from dispatch. */
#include <stdio.h>
#include <string.h>

#include "kvtransfer/kv_internal.h"

static int kv__proc_alive(uint32_t pid, uint64_t start_time)
{
    char state;
    uint64_t st;
    if (kv__proc_stat(pid, &state, &st) != 0) return 0;
    return st == start_time && state != 'Z' && state != 'X';
}

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

void kv__peer_close_ep(kv__peer *p, int force)
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
void kv__peer_handle_failure(kv__peer *p)
{
    kv_context_t ctx = p->ctx;
    kv__link *it, *tmp;
    p->fail_handled = 1;
    pd_warn("kv: peer %016llx (pid %u) failed: %s", (unsigned long long)p->id, p->pid, pd_status_str(p->fail_status));
    ctx->xl->peer_failed(p);
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
    char *text = kv__ucx_info(NULL, ep);
    if (!text) return KV_PROTO_AM;
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
pd_status kv__peer_get(kv_context_t ctx, const kv_desc_t *d, int send_hello, kv__peer **out)
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

/* Liveness of peers whose endpoints have no UCX error handling (shared memory): a peer whose process is gone, or
 * is another process now under the same pid, has failed. */
void kv__peers_check(kv_context_t ctx)
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
}
