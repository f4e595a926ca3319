/* kv_peer: one end of the libpdkv process tests. "recv" registers a region, writes its descriptor to a
 * file and verifies every notice against checksums of the blocks it names (so a notice that overtook its
 * data fails); it runs on libevent. "send" reads receivers' descriptors, fills random block patterns,
 * keeps transfers in flight to each receiver and checks completions; it runs on kv_progress_wait.
 * Lines on stdout (READY, PEER_FAILED, XFER_ERROR, SUMMARY) are parsed by kv_test.py. */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kvtransfer/kv.h"

#define NOTICE_MAGIC 0x4e4f5449u
#define MAX_BLOCKS 8
#define MAX_RECV 8
#define MAX_CONC 16

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t checksum(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, b + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

typedef struct {
    uint64_t off, len, sum;
} blk_sum;

typedef struct {
    uint32_t magic, n;
    uint64_t tag;
    uint32_t desc_len, pad; /* the sender's region descriptor follows the header, for the ack */
    blk_sum b[MAX_BLOCKS];
} notice_hdr;

#define ACK_MAGIC 0x41434b21u
typedef struct {
    uint32_t magic, pad;
    uint64_t tag;
} ack_msg;

static struct {
    const char *mode, *desc_out, *descs[MAX_RECV];
    int n_desc;
    size_t size, notice_size;
    int count, conc, slot, slots, expect_complete, expect_failed, cancel_every, expect_fail_mask, long_mask;
    double timeout, error_timeout, xfer_timeout, linger; /* linger < 0: the library's default */
    kv_proto proto;
    size_t sizes[8];
    int n_sizes;
    uint64_t seed;
    int alloc; /* recv: the region comes from kv_region_alloc (shared-memory capable), not mmap */
} opt = {.size = 256u << 20,
         .notice_size = 7168,
         .count = 20,
         .conc = 2,
         .slots = 1,
         .timeout = 60,
         .error_timeout = 1.0,
         .xfer_timeout = 30,
         .linger = -1,
         .sizes = {4096, 65536, 1 << 20, 9 << 20},
         .n_sizes = 4};

static void set_linger(kv_params_t *p)
{
    if (opt.linger < 0) return;
    p->field_mask |= KV_PARAM_FIELD_LINGER;
    p->linger = opt.linger;
}

/* ---------------- receiver ---------------- */

typedef struct {
    uint64_t id;
    int notices, aborted;
    kv_remote_t ack_to;
} peer_count;

static struct {
    kv_context_t ctx;
    kv_region_t region;
    struct event_base *base;
    peer_count peers[64];
    int n_peers, notices, bad, aborted, peer_failed;
} R;

static peer_count *peer_slot(uint64_t id)
{
    for (int i = 0; i < R.n_peers; i++)
        if (R.peers[i].id == id) return &R.peers[i];
    if (R.n_peers == 64) return NULL;
    R.peers[R.n_peers].id = id;
    return &R.peers[R.n_peers++];
}

static int recv_done(void)
{
    if (!opt.expect_complete && !opt.expect_failed) return 0; /* run until SIGTERM */
    int complete = 0;
    for (int i = 0; i < R.n_peers; i++) complete += R.peers[i].notices + R.peers[i].aborted >= opt.count;
    return complete >= opt.expect_complete && R.peer_failed >= opt.expect_failed;
}

static int acks_pending;

static void ack_cb(kv_xfer_t x, pd_status st, void *arg)
{
    acks_pending--;
    if (st != PD_OK) printf("ACK_XFER status=%s\n", pd_status_str(st));
}

static void recv_event_cb(kv_context_t ctx, const kv_event *ev, void *arg)
{
    if (ev->type == KV_EVENT_PEER_FAILED) {
        R.peer_failed++;
        printf("PEER_FAILED peer=%016llx status=%s t=%.6f\n", (unsigned long long)ev->peer_id,
               pd_status_str(ev->status), wall_now());
    } else if (ev->type == KV_EVENT_ABORTED) {
        R.aborted++;
        peer_count *pc = peer_slot(ev->peer_id);
        if (pc) pc->aborted++;
        printf("ABORTED peer=%016llx tag=%llu status=%s\n", (unsigned long long)ev->peer_id,
               (unsigned long long)ev->tag, pd_status_str(ev->status));
    } else {
        const notice_hdr *h = ev->payload;
        int ok = ev->payload_len >= sizeof(*h) && h->magic == NOTICE_MAGIC &&
                 h->tag == ev->tag && h->n <= MAX_BLOCKS;
        for (uint32_t i = 0; ok && i < h->n; i++) {
            if (h->b[i].off + h->b[i].len > opt.size) ok = 0;
            else if (checksum((char *)kv_region_base(R.region) + h->b[i].off, h->b[i].len) != h->b[i].sum) {
                printf("BAD_BLOCK tag=%llu block=%u off=%llu len=%llu\n", (unsigned long long)ev->tag, i,
                       (unsigned long long)h->b[i].off, (unsigned long long)h->b[i].len);
                ok = 0;
            }
        }
        size_t pat = sizeof(*h) + (ok ? h->desc_len + 1 : 0);
        if (ok && (pat > ev->payload_len || ((const char *)ev->payload)[pat - 1] != '\0')) ok = 0;
        for (size_t i = pat; ok && i < ev->payload_len; i++)
            if (((const uint8_t *)ev->payload)[i] != (uint8_t)(h->tag + i)) ok = 0;
        if (ok) {
            R.notices++;
            peer_count *pc = peer_slot(ev->peer_id);
            if (pc) pc->notices++;
            /* Ack so the sender may reuse the window: a transfer with no blocks, just a notice. */
            if (pc && !pc->ack_to &&
                kv_remote_create(ctx, (const char *)ev->payload + sizeof(*h), &pc->ack_to) != PD_OK)
                printf("ACK_CONNECT_FAILED peer=%016llx\n", (unsigned long long)ev->peer_id);
            if (pc && pc->ack_to) {
                ack_msg a = {.magic = ACK_MAGIC, .tag = h->tag};
                kv_xfer_params_t xp = {.field_mask = KV_XFER_FIELD_TAG | KV_XFER_FIELD_NOTICE, .local = R.region,
                                       .remote = pc->ack_to, .tag = h->tag, .notice = &a, .notice_len = sizeof(a),
                                       .cb = ack_cb};
                if (kv_xfer_start(ctx, &xp, NULL) == PD_OK) acks_pending++;
                else printf("ACK_FAILED tag=%llu\n", (unsigned long long)h->tag);
            }
        } else {
            R.bad++;
            printf("BAD_NOTICE peer=%016llx tag=%llu len=%zu\n", (unsigned long long)ev->peer_id,
                   (unsigned long long)ev->tag, ev->payload_len);
        }
    }
    fflush(stdout);
    if (recv_done() || R.bad) event_base_loopbreak(R.base);
}

static int stopped;

static void recv_stop_cb(evutil_socket_t fd, short what, void *arg)
{
    stopped = 1;
    event_base_loopbreak(R.base);
}

static void recv_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    printf("TIMEOUT\n");
    event_base_loopbreak(R.base);
}

static int run_recv(void)
{
    kv_params_t p = {.field_mask = KV_PARAM_FIELD_EVENT_CB | KV_PARAM_FIELD_ERROR_TIMEOUT |
                         KV_PARAM_FIELD_XFER_TIMEOUT | KV_PARAM_FIELD_PROTO,
                     .event_cb = recv_event_cb,
                     .error_timeout = opt.error_timeout,
                     .xfer_timeout = opt.xfer_timeout,
                     .proto = opt.proto};
    set_linger(&p);
    kv_context_t ctx;
    if (kv_context_create(&p, &ctx) != PD_OK) return 2;
    void *mem = NULL;
    if (opt.alloc) {
        if (kv_region_alloc(ctx, opt.size, &R.region) != PD_OK) return 2;
    } else {
        mem = mmap(NULL, opt.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) return 2;
        memset(mem, 0, opt.size);
        if (kv_region_create(ctx, mem, opt.size, &R.region) != PD_OK) return 2;
    }
    char *desc;
    if (kv_region_descriptor(R.region, &desc) != PD_OK) return 2;
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", opt.desc_out);
    FILE *f = fopen(tmp, "w");
    if (!f) return 2;
    fputs(desc, f);
    fclose(f);
    rename(tmp, opt.desc_out);
    free(desc);
    R.base = event_base_new();
    if (kv_context_attach(ctx, R.base) != PD_OK) return 2;
    struct event *to = evtimer_new(R.base, recv_timeout_cb, NULL);
    struct timeval tv = {.tv_sec = (long)opt.timeout};
    evtimer_add(to, &tv);
    struct event *term = evsignal_new(R.base, SIGTERM, recv_stop_cb, NULL);
    evsignal_add(term, NULL);
    printf("READY id=%016llx\n", (unsigned long long)kv_context_id(ctx));
    fflush(stdout);
    event_base_dispatch(R.base);
    int ok = (stopped || recv_done()) && !R.bad;
    for (int i = 0; i < R.n_peers; i++)
        printf("PEER id=%016llx notices=%d aborted=%d\n", (unsigned long long)R.peers[i].id, R.peers[i].notices,
               R.peers[i].aborted);
    printf("SUMMARY role=recv notices=%d bad=%d aborted=%d peer_failed=%d ok=%d\n", R.notices, R.bad, R.aborted,
           R.peer_failed, ok);
    fflush(stdout);
    event_free(to);
    event_free(term);
    for (double end = pd_time_now() + 5; acks_pending > 0 && pd_time_now() < end;) kv_progress_wait(ctx, 0.1);
    for (int i = 0; i < R.n_peers; i++) kv_remote_destroy(R.peers[i].ack_to);
    kv_region_destroy(R.region);
    kv_context_destroy(ctx);
    event_base_free(R.base);
    if (mem) munmap(mem, opt.size);
    return ok ? 0 : 1;
}

/* ---------------- sender ---------------- */

typedef struct recv_state recv_state;
typedef struct {
    recv_state *r;
    int slot, busy, reported, acked;
    pd_status status;
    kv_xfer_t x;
    uint64_t tag;
} xslot;

struct recv_state {
    int idx;
    kv_remote_t remote;
    int started, ok, canceled, errors, failed, peer_failed;
    int flowing;             /* an ack came back: both directions are wired up */
    xslot slots[MAX_CONC];
};

static struct {
    kv_region_t local;
    char *mem;
    size_t window;
    recv_state rs[MAX_RECV];
    char *desc;
    pd_rng rng;
    uint64_t next_tag;
    int pending;
} S;

/* A window is free again once its transfer failed, or succeeded and the receiver acked it. */
static void slot_maybe_free(xslot *s)
{
    if (s->busy && s->reported && (s->acked || s->status != PD_OK)) {
        s->busy = 0;
        S.pending--;
    }
}

static void send_event_cb(kv_context_t ctx, const kv_event *ev, void *arg)
{
    if (ev->type == KV_EVENT_PEER_FAILED) {
        /* Acks from a dead receiver never come: its windows are free. */
        for (int i = 0; i < opt.n_desc; i++) {
            recv_state *r = &S.rs[i];
            if (!r->remote || kv_remote_peer_id(r->remote) != ev->peer_id) continue;
            printf("PEER_FAILED recv=%d status=%s t=%.6f\n", i, pd_status_str(ev->status), wall_now());
            r->failed = 1;
            r->peer_failed = 1;
            for (int k = 0; k < opt.conc; k++)
                if (r->slots[k].reported) {
                    r->slots[k].acked = 1;
                    slot_maybe_free(&r->slots[k]);
                }
        }
        return;
    }
    if (ev->type != KV_EVENT_NOTICE || ev->payload_len != sizeof(ack_msg)) return;
    const ack_msg *a = ev->payload;
    for (int i = 0; i < opt.n_desc; i++)
        for (int k = 0; k < opt.conc; k++) {
            xslot *s = &S.rs[i].slots[k];
            if (s->busy && s->tag == a->tag && a->magic == ACK_MAGIC) {
                s->acked = 1;
                if (!S.rs[i].flowing) {
                    S.rs[i].flowing = 1;
                    printf("FLOWING recv=%d\n", i);
                    fflush(stdout);
                }
                slot_maybe_free(s);
            }
        }
}

static void send_cb(kv_xfer_t x, pd_status st, void *arg)
{
    xslot *s = arg;
    recv_state *r = s->r;
    s->reported = 1;
    s->status = st;
    slot_maybe_free(s);
    if (st == PD_OK) r->ok++;
    else if (st == PD_ERR_CANCELED) r->canceled++;
    else {
        if (!r->errors)
            printf("XFER_ERROR recv=%d tag=%llu status=%s t=%.6f\n", r->idx, (unsigned long long)s->tag,
                   pd_status_str(st), wall_now());
        r->errors++;
        r->failed = 1;
    }
}

static void fill_random(char *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v = pd_rng_next(&S.rng);
        memcpy(p + i, &v, 8);
    }
    for (; i < n; i++) p[i] = (char)pd_rng_next(&S.rng);
}

static kv_context_t g_ctx;

static int start_xfer(recv_state *r, xslot *s)
{
    uint64_t remote_win = (uint64_t)(opt.slot * opt.conc + s->slot) * S.window;
    uint64_t local_win = (uint64_t)(r->idx * opt.conc + s->slot) * S.window;
    kv_block blocks[MAX_BLOCKS];
    char *notice = calloc(1, opt.notice_size);
    notice_hdr *h = (notice_hdr *)notice;
    uint64_t pos = 0;
    int nb = 1 + (int)(pd_rng_next(&S.rng) % 4);
    for (int i = 0; i < nb; i++) {
        size_t len = opt.sizes[pd_rng_next(&S.rng) % opt.n_sizes];
        uint64_t gap = (pd_rng_next(&S.rng) % 16) * 4096;
        if (pos + gap + len > S.window) break;
        pos += gap;
        blocks[h->n] = (kv_block){.local_off = local_win + pos, .remote_off = remote_win + pos, .len = len};
        fill_random(S.mem + local_win + pos, len);
        h->b[h->n] = (blk_sum){.off = remote_win + pos, .len = len, .sum = checksum(S.mem + local_win + pos, len)};
        h->n++;
        pos += len;
    }
    s->tag = ++S.next_tag | ((uint64_t)(opt.slot + 1) << 48);
    h->magic = NOTICE_MAGIC;
    h->tag = s->tag;
    h->desc_len = (uint32_t)strlen(S.desc);
    memcpy(notice + sizeof(*h), S.desc, h->desc_len + 1);
    for (size_t i = sizeof(*h) + h->desc_len + 1; i < opt.notice_size; i++) notice[i] = (char)(uint8_t)(h->tag + i);
    kv_xfer_params_t xp = {.field_mask = KV_XFER_FIELD_TAG | KV_XFER_FIELD_NOTICE, .local = S.local,
                           .remote = r->remote, .blocks = blocks, .n_blocks = h->n, .tag = s->tag, .notice = notice,
                           .notice_len = opt.notice_size, .cb = send_cb, .arg = s};
    pd_status st = kv_xfer_start(g_ctx, &xp, &s->x);
    free(notice);
    if (st != PD_OK) {
        if (!r->errors)
            printf("XFER_ERROR recv=%d tag=%llu status=%s t=%.6f (start)\n", r->idx, (unsigned long long)s->tag,
                   pd_status_str(st), wall_now());
        r->errors++;
        r->failed = 1;
        return -1;
    }
    s->busy = 1;
    s->reported = s->acked = 0;
    S.pending++;
    r->started++;
    if (opt.cancel_every && r->started % opt.cancel_every == 0) {
        pd_status cs = kv_xfer_cancel(s->x);
        printf("CANCEL tag=%llu -> %s\n", (unsigned long long)s->tag, pd_status_str(cs));
    }
    return 0;
}

static char *read_desc(const char *path, double timeout)
{
    double end = pd_time_now() + timeout;
    while (pd_time_now() < end) {
        char *buf = NULL;
        size_t len;
        if (pd_file_read(path, &buf, &len) == PD_OK && len > 0) return buf;
        free(buf);
        usleep(20000);
    }
    return NULL;
}

static int run_send(void)
{
    kv_params_t p = {.field_mask = KV_PARAM_FIELD_ERROR_TIMEOUT | KV_PARAM_FIELD_XFER_TIMEOUT | KV_PARAM_FIELD_PROTO |
                                   KV_PARAM_FIELD_EVENT_CB,
                     .error_timeout = opt.error_timeout, .xfer_timeout = opt.xfer_timeout, .proto = opt.proto,
                     .event_cb = send_event_cb};
    set_linger(&p);
    if (kv_context_create(&p, &g_ctx) != PD_OK) return 2;
    pd_rng_seed(&S.rng, opt.seed ? opt.seed : (uint64_t)getpid());
    S.window = (opt.size / (size_t)(opt.slots * opt.conc)) & ~(size_t)4095;
    size_t local_size = S.window * (size_t)opt.conc * (size_t)opt.n_desc;
    S.mem = mmap(NULL, local_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (S.mem == MAP_FAILED) return 2;
    if (kv_region_create(g_ctx, S.mem, local_size, &S.local) != PD_OK) return 2;
    if (kv_region_descriptor(S.local, &S.desc) != PD_OK) return 2;
    if (opt.notice_size < sizeof(notice_hdr) + strlen(S.desc) + 1)
        opt.notice_size = sizeof(notice_hdr) + strlen(S.desc) + 1;
    for (int i = 0; i < opt.n_desc; i++) {
        recv_state *r = &S.rs[i];
        r->idx = i;
        for (int k = 0; k < opt.conc; k++) S.rs[i].slots[k] = (xslot){.r = r, .slot = k};
        char *d = read_desc(opt.descs[i], 20);
        if (!d) {
            printf("NO_DESCRIPTOR %s\n", opt.descs[i]);
            return 2;
        }
        pd_status st = kv_remote_create(g_ctx, d, &r->remote);
        free(d);
        if (st != PD_OK) {
            printf("CONNECT_FAILED recv=%d status=%s\n", i, pd_status_str(st));
            return 2;
        }
        printf("CONNECTED recv=%d proto=%s direct=%d\n", i, kv_proto_str(kv_remote_proto(r->remote)),
               kv_remote_direct(r->remote));
    }
    printf("READY id=%016llx\n", (unsigned long long)kv_context_id(g_ctx));
    fflush(stdout);
    double end = pd_time_now() + opt.timeout;
    for (;;) {
        int active = 0;
        for (int i = 0; i < opt.n_desc; i++) {
            recv_state *r = &S.rs[i];
            for (int k = 0; k < opt.conc; k++) {
                xslot *s = &r->slots[k];
                if (!s->busy && !r->failed && r->started < (((opt.long_mask >> i) & 1) ? 1000000 : opt.count))
                    start_xfer(r, s);
                active += s->busy;
            }
        }
        fflush(stdout);
        if (!active || pd_time_now() > end) break;
        kv_progress_wait(g_ctx, 0.1);
    }
    int ok = 1;
    for (int i = 0; i < opt.n_desc; i++) {
        recv_state *r = &S.rs[i];
        int expect_fail = (opt.expect_fail_mask >> i) & 1;
        int good =
            expect_fail ? (r->errors > 0 || r->peer_failed) : (r->errors == 0 && r->ok + r->canceled == opt.count);
        printf("RESULT recv=%d started=%d ok=%d canceled=%d errors=%d good=%d\n", i, r->started, r->ok, r->canceled,
               r->errors, good);
        ok &= good;
    }
    printf("SUMMARY role=send pending=%d ok=%d\n", S.pending, ok);
    fflush(stdout);
    for (int i = 0; i < opt.n_desc; i++) {
        kv_remote_destroy(S.rs[i].remote);
        S.rs[i].remote = NULL; /* events during kv_context_destroy must not look at it */
    }
    kv_region_destroy(S.local);
    kv_context_destroy(g_ctx);
    free(S.desc);
    munmap(S.mem, local_size);
    return ok ? 0 : 1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: kv_peer recv --desc-out FILE [--size B] [--alloc] [--count N] [--expect-complete K] "
            "[--expect-failed F]\n"
            "       kv_peer send --desc FILE [--desc FILE...] [--slot I --slots S] [--count N] [--conc C]\n"
            "common: --proto auto|put|am --timeout S --error-timeout S --xfer-timeout S --sizes a,b,c\n"
            "        --notice-size B --cancel-every K --expect-fail-mask M --seed X --linger US\n");
}

int main(int argc, char **argv)
{
    static struct option lo[] = {{"desc-out", 1, 0, 'o'},
                                 {"desc", 1, 0, 'd'},
                                 {"size", 1, 0, 'z'},
                                 {"count", 1, 0, 'n'},
                                 {"conc", 1, 0, 'c'},
                                 {"slot", 1, 0, 'i'},
                                 {"slots", 1, 0, 'S'},
                                 {"expect-complete", 1, 0, 'k'},
                                 {"expect-failed", 1, 0, 'f'},
                                 {"proto", 1, 0, 'p'},
                                 {"timeout", 1, 0, 't'},
                                 {"error-timeout", 1, 0, 'e'},
                                 {"xfer-timeout", 1, 0, 'x'},
                                 {"sizes", 1, 0, 's'},
                                 {"notice-size", 1, 0, 'N'},
                                 {"cancel-every", 1, 0, 'C'},
                                 {"expect-fail-mask", 1, 0, 'm'},
                                 {"seed", 1, 0, 'r'},
                                 {"long-mask", 1, 0, 'L'},
                                 {"alloc", 0, 0, 'A'},
                                 {"linger", 1, 0, 'g'},
                                 {0, 0, 0, 0}};
    if (argc < 2) {
        usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    opt.mode = argv[1];
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'o': opt.desc_out = optarg; break;
        case 'd':
            if (opt.n_desc < MAX_RECV) opt.descs[opt.n_desc++] = optarg;
            break;
        case 'z': opt.size = strtoull(optarg, NULL, 0); break;
        case 'n': opt.count = atoi(optarg); break;
        case 'c': opt.conc = PD_MAX(1, PD_MIN(MAX_CONC, atoi(optarg))); break;
        case 'i': opt.slot = atoi(optarg); break;
        case 'S': opt.slots = atoi(optarg); break;
        case 'k': opt.expect_complete = atoi(optarg); break;
        case 'f': opt.expect_failed = atoi(optarg); break;
        case 'p':
            if (kv_proto_parse(optarg, &opt.proto) != PD_OK) {
                usage();
                return 2;
            }
            break;
        case 't': opt.timeout = atof(optarg); break;
        case 'e': opt.error_timeout = atof(optarg); break;
        case 'x': opt.xfer_timeout = atof(optarg); break;
        case 's': {
            opt.n_sizes = 0;
            for (char *tok = strtok(optarg, ","); tok && opt.n_sizes < 8; tok = strtok(NULL, ","))
                opt.sizes[opt.n_sizes++] = strtoull(tok, NULL, 0);
            break;
        }
        case 'N': opt.notice_size = strtoull(optarg, NULL, 0); break;
        case 'C': opt.cancel_every = atoi(optarg); break;
        case 'm': opt.expect_fail_mask = atoi(optarg); break;
        case 'L': opt.long_mask = atoi(optarg); break;
        case 'r': opt.seed = strtoull(optarg, NULL, 0); break;
        case 'A': opt.alloc = 1; break;
        case 'g': opt.linger = atof(optarg) * 1e-6; break;
        default: usage(); return 2;
        }
    }
    if (!strcmp(opt.mode, "recv") && opt.desc_out) return run_recv();
    if (!strcmp(opt.mode, "send") && opt.n_desc > 0) return run_send();
    usage();
    return 2;
}
