/* libpdkv regions and remotes: memory registered with UCX (or allocated by it, shared-memory capable), its packed
 * rkey and descriptor; a remote is a peer's region named by its descriptor, its rkey unpacked on the peer's
 * endpoint and, for shared memory, mapped here so PUTs become plain copies. */
#include <string.h>

#include "kvtransfer/kv_internal.h"

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

pd_status kv_region_alloc(kv_context_t ctx, size_t len, kv_region_t *out)
{
    return kv__region_map(ctx, NULL, len, out);
}

void kv_region_destroy(kv_region_t r)
{
    if (!r) return;
    kv_context_t ctx = r->ctx;
    kv__link *it, *tmp;
    ctx->xl->region_closing(r);
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
