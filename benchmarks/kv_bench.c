/* kv_bench: libpdkv bandwidth between two processes. "recv" registers a region and progresses until
 * SIGTERM; "send" keeps --window transfers of --blocks blocks of --size bytes in flight (each transfer:
 * blocks, then [flush,] notice) and reports MB/s (2^20 bytes, as ucx_perftest does) over --bytes.
 * --slots N: the blocks cycle through N distinct block slots per side (regions of N x size on both ends).
 * The default, blocks x window, streams through a pool as a real KV pool larger than the cache does;
 * --slots 1 rewrites one message-size buffer on each side, the working set of ucx_perftest's bw tests.
 * The receiver runs a libevent loop (kv_context_attach), as the decode server does; the sender loops on
 * kv_progress_wait. --linger US sets kv_params_t.linger on both (default: the library's). */
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kvtransfer/kv.h"

static void on_signal(evutil_socket_t sig, short what, void *base) { event_base_loopbreak(base); }

static struct {
    const char *desc_out, *desc;
    size_t size, bytes, notice;
    int blocks, window, slots; /* slots 0: blocks x window */
    kv_proto proto;
    double linger; /* < 0: the library's default */
} opt = {.linger = -1, .size = 1 << 20, .bytes = (size_t)4 << 30, .blocks = 16, .window = 4, .notice = 4096};

static int inflight, done_xfers, failed;

static void xfer_cb(kv_xfer_t x, pd_status st, void *arg)
{
    inflight--;
    done_xfers++;
    if (st != PD_OK) {
        failed++;
        fprintf(stderr, "kv_bench: transfer failed: %s\n", pd_status_str(st));
    }
}

static char *read_desc(const char *path)
{
    for (int i = 0; i < 1000; i++) {
        char *buf = NULL;
        size_t len;
        if (pd_file_read(path, &buf, &len) == PD_OK && len) return buf;
        free(buf);
        usleep(20000);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    static struct option lo[] = {{"desc-out", 1, 0, 'o'}, {"desc", 1, 0, 'd'},   {"size", 1, 0, 's'},
                                 {"bytes", 1, 0, 'b'},    {"blocks", 1, 0, 'k'}, {"window", 1, 0, 'w'},
                                 {"proto", 1, 0, 'p'},    {"slots", 1, 0, 'n'},  {"notice", 1, 0, 'N'},
                                 {"linger", 1, 0, 'l'},   {0, 0, 0, 0}};
    if (argc < 2) goto usage;
    optind = 2;
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'o': opt.desc_out = optarg; break;
        case 'd': opt.desc = optarg; break;
        case 's': opt.size = strtoull(optarg, NULL, 0); break;
        case 'b': opt.bytes = strtoull(optarg, NULL, 0); break;
        case 'k': opt.blocks = atoi(optarg); break;
        case 'w': opt.window = atoi(optarg); break;
        case 'n': opt.slots = atoi(optarg); break;
        case 'N': opt.notice = strtoull(optarg, NULL, 0); break;
        case 'l': opt.linger = atof(optarg) * 1e-6; break;
        case 'p':
            if (kv_proto_parse(optarg, &opt.proto) != PD_OK) goto usage;
            break;
        default: goto usage;
        }
    }
    if (opt.blocks < 1 || opt.window < 1 || opt.slots < 0 || !opt.size) goto usage;
    if (!opt.slots) opt.slots = opt.blocks * opt.window;
    size_t region = opt.size * (size_t)opt.slots;
    kv_params_t p = {.field_mask = KV_PARAM_FIELD_PROTO, .proto = opt.proto};
    if (opt.linger >= 0) {
        p.field_mask |= KV_PARAM_FIELD_LINGER;
        p.linger = opt.linger;
    }
    kv_context_t ctx;
    if (kv_context_create(&p, &ctx) != PD_OK) return 2;
    /* The receiving pool comes from kv_region_alloc (shared-memory capable); --user-mem registers mmap'd
     * memory instead, as a server with its own pool allocator would. */
    kv_region_t reg;
    void *mem = NULL;
    if (getenv("KV_BENCH_USER_MEM")) {
        mem = mmap(NULL, region, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        if (mem == MAP_FAILED || kv_region_create(ctx, mem, region, &reg) != PD_OK) return 2;
    } else if (kv_region_alloc(ctx, region, &reg) != PD_OK) {
        return 2;
    }
    memset(kv_region_base(reg), 1, region);
    if (!strcmp(argv[1], "recv") && opt.desc_out) {
        struct event_base *base = event_base_new();
        struct event *sig_term = base ? evsignal_new(base, SIGTERM, on_signal, base) : NULL;
        struct event *sig_int = base ? evsignal_new(base, SIGINT, on_signal, base) : NULL;
        if (!sig_term || !sig_int || event_add(sig_term, NULL) || event_add(sig_int, NULL) ||
            kv_context_attach(ctx, base) != PD_OK)
            return 2;
        char *d, tmp[4096];
        if (kv_region_descriptor(reg, &d) != PD_OK) return 2;
        snprintf(tmp, sizeof(tmp), "%s.tmp", opt.desc_out);
        FILE *f = fopen(tmp, "w");
        if (!f) return 2;
        fputs(d, f);
        fclose(f);
        rename(tmp, opt.desc_out);
        free(d);
        event_base_dispatch(base);
        kv_region_destroy(reg);
        kv_context_destroy(ctx);
        event_free(sig_term);
        event_free(sig_int);
        event_base_free(base);
        return 0;
    } else if (!strcmp(argv[1], "send") && opt.desc) {
        char *d = read_desc(opt.desc);
        kv_remote_t remote;
        if (!d || kv_remote_create(ctx, d, &remote) != PD_OK) return 2;
        free(d);
        kv_block *blocks = calloc((size_t)opt.blocks, sizeof(*blocks)); /* kv_xfer_start copies what it keeps */
        char *notice = calloc(1, opt.notice ? opt.notice : 1);
        size_t per_xfer = opt.size * (size_t)opt.blocks;
        int warm = 2 * opt.window, total = warm + (int)PD_MAX(1, opt.bytes / per_xfer);
        int started = 0;
        double t0 = 0;
        while (done_xfers < total && !failed) {
            while (inflight < opt.window && started < total) {
                if (started == warm) {
                    while (inflight) kv_progress_wait(ctx, 0.1); /* warm-up drained: start the clock */
                    t0 = pd_time_now();
                }
                /* block j of transfer t takes slot (t x blocks + j) mod slots, the same slot on both sides */
                for (int j = 0; j < opt.blocks; j++) {
                    uint64_t off = (((uint64_t)started * opt.blocks + j) % (uint64_t)opt.slots) * opt.size;
                    blocks[j] = (kv_block){.local_off = off, .remote_off = off, .len = opt.size};
                }
                kv_xfer_params_t xp = {.field_mask = KV_XFER_FIELD_NOTICE, .local = reg, .remote = remote,
                                       .blocks = blocks, .n_blocks = (size_t)opt.blocks,
                                       .notice = notice, .notice_len = opt.notice, .cb = xfer_cb};
                if (kv_xfer_start(ctx, &xp, NULL) != PD_OK) return 1;
                inflight++;
                started++;
            }
            kv_progress_wait(ctx, 0.1);
        }
        double dt = pd_time_now() - t0;
        double mb = (double)(total - warm) * per_xfer / (1 << 20);
        printf("RESULT proto=%s direct=%d size=%zu blocks=%d window=%d slots=%d bytes=%.0f seconds=%.3f MBps=%.1f\n",
               kv_proto_str(kv_remote_proto(remote)), kv_remote_direct(remote), opt.size, opt.blocks, opt.window,
               opt.slots, mb * (1 << 20), dt, mb / dt);
        kv_remote_destroy(remote);
        free(blocks);
        free(notice);
    } else {
        goto usage;
    }
    kv_region_destroy(reg);
    kv_context_destroy(ctx);
    if (mem) munmap(mem, region);
    return failed ? 1 : 0;
usage:
    fprintf(stderr, "usage: kv_bench recv --desc-out FILE [--size B --blocks K --window W --slots N --linger US]\n"
                    "       kv_bench send --desc FILE [--size B --blocks K --window W --slots N --bytes N\n"
                    "                                  --notice BYTES --proto auto|put|am --linger US]\n"
                    "  --slots N: distinct block slots per side (default K x W; 1 = ucx_perftest's working set)\n"
                    "  --notice BYTES: notice payload per transfer (default 4096)\n"
                    "  --linger US: re-poll the worker for US microseconds after activity before sleeping armed\n"
                    "               (kv_params_t.linger; 0 = arm at once)\n");
    return 2;
}
