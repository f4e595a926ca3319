/* libpdkv internals shared by the core (context.c, peers.c, regions.c, progress.c) and, on top of it, xfer.c
 * (sender state machine, receiver active-message handlers). The core calls up only through ctx->xl. Every UCX
 * request in flight is a kv__op on ctx->ops, so teardown can cancel or wait for each one before its buffers go. */
#ifndef PD_KV_INTERNAL_H
#define PD_KV_INTERNAL_H

#include <ucp/api/ucp.h>

#include "kvtransfer/kv.h"

/* Intrusive circular doubly-linked list. */
typedef struct kv__link {
    struct kv__link *prev, *next;
} kv__link;

static inline void kv__list_init(kv__link *h) { h->prev = h->next = h; }
static inline int kv__list_empty(const kv__link *h) { return h->next == h; }
static inline void kv__list_push(kv__link *h, kv__link *e)
{
    e->prev = h->prev;
    e->next = h;
    h->prev->next = e;
    h->prev = e;
}
static inline void kv__list_del(kv__link *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->prev = e->next = e;
}
#define KV__CONTAINER(ptr, type, member) ((type *)((char *)(ptr) - offsetof(type, member)))
/* Safe against deletion of the current element. */
#define KV__FOREACH(it, tmp, head)                                                                                 \
    for ((it) = (head)->next, (tmp) = (it)->next; (it) != (head); (it) = (tmp), (tmp) = (it)->next)

enum { KV__AM_HELLO = 11, KV__AM_DATA = 12, KV__AM_NOTICE = 13, KV__AM_ABORT = 14 };

/* Header of every active message; the same on both ends (same architecture assumed, checked by magic). */
typedef struct {
    uint32_t magic;     /* KV__AM_MAGIC */
    uint32_t count;     /* NOTICE: number of DATA messages the receiver must have landed (0 for PUT) */
    uint64_t sender_id; /* sending context id */
    uint64_t xfer_id;
    uint64_t tag;
    uint64_t region_id; /* DATA: destination region */
    uint64_t offset;    /* DATA: offset in the destination region */
    int32_t status;     /* ABORT: pd_status reason */
    uint32_t pad;
} kv__am_hdr;
#define KV__AM_MAGIC 0x4b56414du

typedef struct kv__peer {
    kv__link link;
    kv_context_t ctx;
    uint64_t id;            /* remote context id */
    ucp_ep_h ep;            /* NULL once closed */
    ucp_err_handling_mode_t err_mode;
    kv_proto proto;
    uint32_t pid;           /* liveness checks for ERR_HANDLING_MODE_NONE endpoints (shared memory) */
    uint64_t start_time;
    int refs;               /* remotes + transfers holding it */
    int failed;             /* set by the error callback or a liveness check; handled in dispatch */
    int fail_handled;
    pd_status fail_status;
} kv__peer;

struct kv_region {
    kv__link link;
    kv_context_t ctx;
    uint64_t id;
    void *base;
    size_t len;
    ucp_mem_h memh;
    int owned; /* memory allocated by UCX (kv_region_alloc): shared-memory capable */
    void *rkey_buf;
    size_t rkey_len;
};

struct kv_remote {
    kv__link link;
    kv_context_t ctx;
    kv__peer *peer;
    uint64_t region_id;
    uint64_t base, len;
    ucp_rkey_h rkey; /* NULL after the peer failed */
    /* The peer's region mapped into this process (ucp_rkey_ptr: a UCX-allocated region seen over shared
     * memory); then PUT blocks are CPU copies made from dispatch. NULL otherwise, and after the peer failed. */
    char *ptr;
    ucp_rkey_h map_rkey; /* rkey unpacked through the self endpoint to map the region (kv__map_rkey), or NULL */
    int nt; /* region larger than a quarter of the last-level cache: copy with non-temporal stores */
    int refs;
};

typedef enum { KV__X_DATA, KV__X_FLUSH, KV__X_NOTICE, KV__X_DONE } kv__xstate;

struct kv_xfer {
    kv__link link;  /* ctx->xfers */
    kv__link qlink; /* ctx->xqueue once its callback is due */
    kv__link clink; /* ctx->xcopy while its direct copies wait for dispatch */
    kv_context_t ctx;
    kv_remote_t remote;
    kv_region_t local;
    kv__peer *peer;
    uint64_t id, tag;
    kv_proto proto;
    kv__xstate state;
    int issuing;    /* ops are being posted: do not advance yet */
    int inflight;   /* kv__ops of this transfer still in UCX */
    int ending;     /* failed/canceled/timed out; waiting for inflight to drain */
    int queued, reported;
    pd_status status;
    uint32_t n_data;
    double deadline, kill_deadline;
    void *notice;
    size_t notice_len;
    kv_xfer_cb cb;
    void *arg;
    size_t n_blocks; /* direct PUT (remote->ptr): the blocks, copied from dispatch */
    kv_block blocks[];
};

/* Receiver-side state of one incoming transfer (AM data still landing, or a notice payload arriving). */
typedef struct kv__rx {
    kv__link link;
    kv_context_t ctx;
    uint64_t sender_id, xfer_id, tag;
    int inflight;
    int64_t expected; /* DATA messages announced by the notice; -1 until it arrives */
    uint32_t done;
    int have_notice;  /* 1 once the payload is complete */
    int ending;
    int emitted;      /* event delivered; kept as a tombstone that swallows late messages until expiry */
    pd_status status;
    void *payload;
    size_t payload_len;
    double last_activity, kill_deadline;
} kv__rx;

typedef enum { KV__OP_PUT, KV__OP_FLUSH, KV__OP_AM_DATA, KV__OP_NOTICE, KV__OP_ABORT, KV__OP_HELLO,
               KV__OP_RECV_DATA, KV__OP_RECV_NOTICE, KV__OP_CLOSE } kv__op_kind;

typedef struct kv__op {
    kv__link link; /* ctx->ops */
    kv_context_t ctx;
    kv__op_kind kind;
    void *req;          /* UCX request while in flight */
    kv_xfer_t xfer;     /* sender ops */
    kv__rx *rx;         /* receiver ops (NULL once orphaned) */
    kv_region_t region; /* RECV_DATA destination */
    kv__peer *peer;     /* ep the op runs on (for force-close on stuck ops) */
    kv__am_hdr hdr;     /* AM header; must live until completion */
    void *buf;          /* owned buffer (HELLO descriptor), freed with the op */
    int cancel_sent;
    /* From kv__op_new until kv__op_track: the UCX call is being made. UCX may complete a request with an error
     * inside that call (a peer that just failed) and still return its pointer; the callback then only records the
     * status, and kv__op_track completes the op. */
    int submitting, early;
    ucs_status_t early_status;
} kv__op;

/* A receiver event waiting for dispatch. */
typedef struct {
    kv__link qlink;
    kv_event ev;
    void *payload; /* owned */
} kv__qev;

/* A HELLO waiting for its back-connection (endpoints are not created inside AM callbacks). */
typedef struct {
    kv__link link;
    char *desc;
} kv__hello;

typedef struct kv__xfer_layer kv__xfer_layer;

struct kv_context {
    const kv__xfer_layer *xl; /* the transfer layer (kv__xfer_ops), set before anything can call it */
    ucp_context_h ucp;
    ucp_worker_h worker;
    int efd;
    uint64_t id;
    uint32_t pid;
    uint64_t start_time;
    uint8_t boot_id[16];
    ucp_address_t *addr;
    size_t addr_len;
    char *self_desc; /* bare peer descriptor sent in HELLO */

    kv_proto proto;
    double error_timeout, xfer_timeout, tick;
    kv_event_cb event_cb;
    void *event_arg;
    size_t max_notice;

    struct event_base *base;
    struct event *ev_efd, *ev_tick, *ev_retry, *ev_nap;
    double next_tick;
    double linger, nap;  /* see kv_params_t.linger; nap: the re-poll interval while lingering */
    double last_active;  /* when progress last found work (UCX progress or a dispatched callback) */
    int tfd;             /* timerfd behind ev_nap (-1: none; the worker is then armed at once) */
    int napping;         /* the nap timer runs (periodic, every nap) */
    int efd_watched;     /* ev_efd is added: the worker is armed, or about to be */

    kv__link peers, regions, remotes, xfers, rxs, ops, hellos;
    kv__link xqueue; /* kv_xfer.qlink: sender callbacks due */
    kv__link xcopy;  /* kv_xfer.clink: direct PUTs whose copies run at the next dispatch */
    kv__link equeue; /* kv__qev.qlink: receiver events due */
    uint64_t next_region_id, next_xfer_id;
    int destroying;
    int cancel_needed; /* some transfer or rx ended with requests in flight: cancel from dispatch */
    int keep_worker; /* see kv__peer_handle_failure */
    size_t llc_size; /* last-level cache, bytes: above a quarter of it a remote region is copied into with NT stores */
    ucp_err_handling_mode_t err_mode; /* PEER when a network transport can report failures, else NONE */
};

/* context.c */
pd_status kv__status_from_ucs(ucs_status_t s);
/* Reads state and start time (field 22) of /proc/<pid>/stat. Returns 0 on success. */
int kv__proc_stat(uint32_t pid, char *state, uint64_t *start_time);
/* What UCX prints about a context's resources (ep NULL) or an endpoint's configuration (ep given), as a string the
 * caller frees; NULL when it cannot be captured. */
char *kv__ucx_info(ucp_context_h ucp, ucp_ep_h ep);

/* progress.c */
kv__op *kv__op_new(kv_context_t ctx, kv__op_kind kind);
/* Takes the result of a ucp_*_nbx call: completes inline (NULL / error) or records the request. */
void kv__op_track(kv__op *op, ucs_status_ptr_t sp);
void kv__op_send_cb(void *request, ucs_status_t status, void *user_data);
void kv__op_recv_cb(void *request, ucs_status_t status, size_t length, void *user_data);
void kv__queue_event(kv_context_t ctx, const kv_event *ev, void *owned_payload);
void kv__kick(kv_context_t ctx);
/* Progresses until no op matching (region, include_close) remains or timeout_s passes; returns those left. */
int kv__drain(kv_context_t ctx, kv_region_t region, int include_close, double timeout_s);
/* Worker progress, deadlines and dispatch until nothing is due; returns how many user callbacks ran. */
int kv__progress(kv_context_t ctx);

/* peers.c */
kv__peer *kv__peer_find(kv_context_t ctx, uint64_t id);
/* Finds or connects the peer of a descriptor (HELLO on a new endpoint when send_hello). */
pd_status kv__peer_get(kv_context_t ctx, const kv_desc_t *d, int send_hello, kv__peer **out);
/* Marks a peer failed (from a UCX callback or a liveness check); handled from dispatch. */
void kv__peer_fail(kv__peer *peer, pd_status st);
void kv__peer_handle_failure(kv__peer *p);
void kv__peer_close_ep(kv__peer *p, int force);
void kv__peers_check(kv_context_t ctx);

/* regions.c */
kv_region_t kv__region_find(kv_context_t ctx, uint64_t id);
void kv__remote_unref(kv_remote_t r);

/* xfer.c, as the core sees it: every call from the core up into the transfer layer goes through this table. */
struct kv__xfer_layer {
    pd_status (*am_register)(kv_context_t ctx);       /* context creation: the active-message handlers */
    void (*op_done)(kv__op *op, ucs_status_t status); /* a sender or receiver request ended (ops of those kinds) */
    void (*peer_failed)(kv__peer *p);                 /* ends transfers to p and those arriving from it */
    void (*region_closing)(kv_region_t r);            /* kv_region_destroy: ends receives landing in r */
    void (*tick)(kv_context_t ctx, double now);       /* deadlines of transfers and receives */
    int (*dispatch)(kv_context_t ctx);                /* cancels, direct copies, due sender callbacks: how many ran */
    void (*cancel_all)(kv_context_t ctx);             /* context teardown: cancels every transfer and receive */
    void (*free_all)(kv_context_t ctx);               /* context teardown, requests drained: frees them */
};
extern const kv__xfer_layer kv__xfer_ops;

#endif
