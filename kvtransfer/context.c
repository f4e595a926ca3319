/* libpdkv context: the UCX context and worker of a process (transports, error-handling mode, UCX tuning), its
 * identity (context id, pid, start time, boot id: what peers check liveness by) and the teardown that ends
 * everything else in order. The transfer layer is reached only through ctx->xl (kv__xfer_ops, bound here). */
#include <event2/event.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
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
int kv__proc_stat(uint32_t pid, char *state, uint64_t *start_time)
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

char *kv__ucx_info(ucp_context_h ucp, ucp_ep_h ep)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) return NULL;
    if (ep) ucp_ep_print_info(ep, f);
    else ucp_context_print_info(ucp, f);
    fclose(f);
    return text;
}

/* ---- context ---- */

/* UCX 1.13 reports peer failure only through network transports (tcp, verbs); posix/sysv/cma cannot.
 * Both ends must agree on the mode (UCX rejects asymmetric endpoints), and they share the UCX_TLS
 * configuration, so the choice is made from this context's own resources. */
static ucp_err_handling_mode_t kv__choose_err_mode(ucp_context_h ucp)
{
    static const char *const net[] = {"tcp/", "rc_verbs/", "rc_mlx5/", "dc_mlx5/", "ud_verbs/", "ud_mlx5/"};
    char *text = kv__ucx_info(ucp, NULL);
    if (!text) return UCP_ERR_HANDLING_MODE_PEER;
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
        if (getrandom(&ctx->id, sizeof(ctx->id), 0) != sizeof(ctx->id))
            ctx->id = pd_time_ns() ^ ((uint64_t)ctx->pid << 32);
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
    ctx->xl = &kv__xfer_ops;
    s = ctx->xl->am_register(ctx);
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
    ctx->xl->cancel_all(ctx);
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
    ctx->xl->free_all(ctx);
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
