/* libpdkv: moves KV-cache blocks between registered memory regions of two processes over UCX.
 * A sender copies a batch of (local offset, remote offset, length) blocks into a peer's registered region,
 * then delivers a small notice that the peer sees only after all of the data has landed.
 * Knows nothing about tokens or models; everything runs on the thread that owns the kv_context. */
#ifndef PD_KV_H
#define PD_KV_H

#include <stddef.h>
#include <stdint.h>

#include "common/pd_common.h"

struct event_base;

typedef struct kv_context *kv_context_t; /* UCX context + worker of one process */
typedef struct kv_region *kv_region_t;   /* a registered local memory region (the KV pool) */
typedef struct kv_remote *kv_remote_t;   /* a peer's region, imported from its descriptor */
typedef struct kv_xfer *kv_xfer_t;       /* one batch of block copies plus its notice */

/* How blocks travel. PUT: one-sided RMA put, then an ep flush, then the notice (for transports that do
 * RMA natively: shared memory/CMA, RDMA verbs). AM: active messages, rendezvous for large blocks, the
 * receiver lands each block at its offset and holds the notice until every block is in (fast over TCP).
 * AUTO picks PUT for a peer region mapped into this process (see kv_remote_direct), otherwise per peer
 * from the lanes UCX chose for the endpoint. */
typedef enum { KV_PROTO_AUTO = 0, KV_PROTO_PUT, KV_PROTO_AM } kv_proto;

const char *kv_proto_str(kv_proto p);
/* "auto", "put", "am"; PD_ERR_INVALID otherwise. */
pd_status kv_proto_parse(const char *s, kv_proto *out);

/* What a receiver hears about. */
typedef enum {
    KV_EVENT_NOTICE,      /* all blocks of a transfer landed; payload is the sender's notice */
    KV_EVENT_ABORTED,     /* a transfer that had started arriving will not complete (status says why) */
    KV_EVENT_PEER_FAILED, /* a peer process died or became unreachable; its transfers are over */
} kv_event_type;

typedef struct {
    kv_event_type type;
    pd_status status;    /* PD_OK for a good notice; otherwise the reason */
    uint64_t peer_id;    /* the sending context's id (kv_context_id on the sender) */
    uint64_t tag;        /* the sender's kv_xfer_params_t.tag; 0 for PEER_FAILED */
    const void *payload; /* NOTICE only; valid during the callback */
    size_t payload_len;
} kv_event;

typedef void (*kv_event_cb)(kv_context_t ctx, const kv_event *ev, void *arg);
/* Sender side: called exactly once per started transfer, from kv_progress*, never from inside
 * kv_xfer_start. After it returns the kv_xfer_t is gone. */
typedef void (*kv_xfer_cb)(kv_xfer_t xfer, pd_status status, void *arg);

enum {
    KV_PARAM_FIELD_PROTO = 1u << 0,
    KV_PARAM_FIELD_ERROR_TIMEOUT = 1u << 1,
    KV_PARAM_FIELD_XFER_TIMEOUT = 1u << 2,
    KV_PARAM_FIELD_EVENT_CB = 1u << 3,
    KV_PARAM_FIELD_MAX_NOTICE = 1u << 4,
    KV_PARAM_FIELD_LINGER = 1u << 5,
};

typedef struct {
    uint64_t field_mask;    /* KV_PARAM_FIELD_* of the fields that are set; others take defaults */
    kv_proto proto;         /* default AUTO; env PDSERVE_KV_PROTO overrides AUTO */
    double error_timeout;   /* s: bound from a reported failure to every pending op ended (default 1) */
    double xfer_timeout;    /* s: a transfer not done by then ends with PD_ERR_TIMEOUT (default 30) */
    kv_event_cb event_cb;   /* receiver callbacks (optional for pure senders) */
    void *event_arg;
    size_t max_notice;      /* largest notice payload accepted or sent (default 64 KiB) */
    double linger;          /* s, at most 0.01: after the worker did something, keep re-polling it every
                             * linger/2 for this long before sleeping armed on its event fd, so a peer that
                             * streams messages need not signal (wake) this process for each one; a message in
                             * such a stream waits up to linger/2 (default 200e-6; 0: arm at once) */
} kv_params_t;

/* Creates the UCX context and worker (UCX_* environment applies: UCX_TLS, UCX_NET_DEVICES, ...).
 * Returns PD_ERR_TRANSPORT if UCX cannot start, PD_ERR_INVALID on bad params. */
pd_status kv_context_create(const kv_params_t *params, kv_context_t *out);
/* Cancels or waits out (bounded by error_timeout) every in-flight UCX request, closes endpoints,
 * deregisters regions still registered and frees everything. Pending transfers end with
 * PD_ERR_CANCELED callbacks. Accepts NULL. Never call from inside a kv callback. */
void kv_context_destroy(kv_context_t ctx);
/* Random 64-bit id of this context; receivers see it as kv_event.peer_id. */
uint64_t kv_context_id(kv_context_t ctx);

/* Progress from a libevent loop: watches the worker's event fd (ucp_worker_arm) and runs a timer for
 * deadlines and liveness checks, so the loop neither busy-polls nor stalls. Within `linger` of activity
 * the worker is re-polled from a microsecond timer (timerfd) instead of armed. Call once; the context
 * detaches in kv_context_destroy. */
pd_status kv_context_attach(kv_context_t ctx, struct event_base *base);
/* For tools and tests without a loop: progresses and dispatches callbacks; if nothing happened, sleeps
 * on the worker's event fd for at most timeout_s. PD_OK if any callback ran, PD_ERR_TIMEOUT otherwise. */
pd_status kv_progress_wait(kv_context_t ctx, double timeout_s);

/* Registers [base, base+len) for UCX. The memory stays the caller's; it must outlive the region. */
pd_status kv_region_create(kv_context_t ctx, void *base, size_t len, kv_region_t *out);
/* Allocates len bytes through UCX (ucp_mem_map ALLOCATE) and registers them. On one host UCX can then
 * back the region with shared memory that peers attach, so puts into it are plain memory copies by the
 * sender (this is what makes ucx_perftest's put fast over posix); prefer it for a receiving KV pool.
 * The memory is zeroed by the OS, owned by the region and freed with it. */
pd_status kv_region_alloc(kv_context_t ctx, size_t len, kv_region_t *out);
/* Cancels incoming writes still landing in the region (their transfers are ABORTED), then deregisters.
 * Transfers that use it as their local source must have completed. Accepts NULL. */
void kv_region_destroy(kv_region_t region);
/* The region's descriptor: a printable string ("pdkv1:" + base64url) with the worker address, packed
 * rkey, base and length, to carry in JSON. *out is malloc'd; the caller frees it. */
pd_status kv_region_descriptor(kv_region_t region, char **out);
void *kv_region_base(kv_region_t region);
size_t kv_region_length(kv_region_t region);

/* Imports a peer's region from its descriptor; connects (endpoints are cached per peer process and
 * remotes per region, so importing the same descriptor again is cheap). PD_ERR_FORMAT for a malformed
 * descriptor, PD_ERR_PEER if the peer is known to have failed or cannot be reached. */
pd_status kv_remote_create(kv_context_t ctx, const char *descriptor, kv_remote_t *out);
/* Drops the caller's reference. Accepts NULL. */
void kv_remote_destroy(kv_remote_t remote);
/* The protocol used for this remote (after AUTO resolution): PUT for a directly mapped region (below),
 * otherwise the peer's. */
kv_proto kv_remote_proto(kv_remote_t remote);
uint64_t kv_remote_peer_id(kv_remote_t remote);
/* 1 if PUTs to this remote are CPU copies into the peer's region mapped in this process (a region the
 * peer made with kv_region_alloc, reached over shared memory); 0 if they go through UCX requests. */
int kv_remote_direct(kv_remote_t remote);

typedef struct {
    uint64_t local_off;  /* offset in the local region */
    uint64_t remote_off; /* offset in the remote region */
    uint64_t len;
} kv_block;

enum {
    KV_XFER_FIELD_TAG = 1u << 0,
    KV_XFER_FIELD_NOTICE = 1u << 1,
    KV_XFER_FIELD_TIMEOUT = 1u << 2,
};

typedef struct {
    uint64_t field_mask;    /* KV_XFER_FIELD_* for the optional fields */
    kv_region_t local;      /* required: source region */
    kv_remote_t remote;     /* required: destination */
    const kv_block *blocks; /* required, n_blocks >= 0; copied as needed, not kept */
    size_t n_blocks;
    uint64_t tag;           /* opaque id the receiver sees with the notice or an abort */
    const void *notice;     /* payload copied at start, <= max_notice bytes */
    size_t notice_len;
    double timeout;         /* s; default is the context's xfer_timeout */
    kv_xfer_cb cb;          /* required */
    void *arg;
} kv_xfer_params_t;

/* Starts a transfer. On PD_OK the callback will run exactly once with: PD_OK (data and notice delivered
 * to the peer), PD_ERR_PEER / PD_ERR_TRANSPORT (peer died, endpoint failed), PD_ERR_TIMEOUT,
 * PD_ERR_CANCELED. Blocks out of range, or a notice that is too large, give PD_ERR_RANGE and no
 * callback. The local blocks must not be modified until the callback. */
pd_status kv_xfer_start(kv_context_t ctx, const kv_xfer_params_t *params, kv_xfer_t *out);
/* Cancels: no notice is sent, the receiver gets an ABORTED event, the callback reports PD_ERR_CANCELED
 * once no UCX operation of the transfer is in flight (bounded by error_timeout). PD_ERR_BUSY if the
 * notice is already on its way (the callback then reports how it went). */
pd_status kv_xfer_cancel(kv_xfer_t xfer);

/* Descriptor codec, exposed for the control plane and tests. kv_desc_t fields point into the struct's
 * own allocation; free with kv_desc_free (accepts NULL). */
typedef struct {
    uint64_t ctx_id;     /* owning context's id */
    uint64_t region_id;  /* 0 for a bare peer (no region) */
    uint64_t base, length;
    uint32_t pid;        /* owner process, for liveness checks over shared memory */
    uint64_t start_time; /* owner process start time (clock ticks since boot) */
    uint8_t boot_id[16]; /* host identity */
    const void *addr;    /* UCX worker address */
    size_t addr_len;
    const void *rkey;    /* packed rkey */
    size_t rkey_len;
} kv_desc_t;

/* Encodes to a malloc'd NUL-terminated string. */
pd_status kv_desc_encode(const kv_desc_t *d, char **out);
/* Decodes; PD_ERR_FORMAT (and one warning saying what is wrong) for anything malformed: wrong prefix,
 * bad base64, truncation, bad magic/version, inconsistent lengths, checksum mismatch. */
pd_status kv_desc_decode(const char *s, kv_desc_t **out);
void kv_desc_free(kv_desc_t *d);

#endif
