/* Small utilities: aligned allocation, clocks, whole-file reads, the deterministic PRNG. */
#include "common/pd_common.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

void *pd_aligned_alloc(size_t bytes)
{
    void *p = NULL;
    if (bytes == 0) bytes = 64;
    if (posix_memalign(&p, 64, bytes) != 0) return NULL;
    memset(p, 0, bytes);
    return p;
}

#define PD_HUGE_PAGE ((size_t)2 << 20)

static size_t page_round(size_t bytes)
{
    const long ps = sysconf(_SC_PAGESIZE);
    const size_t pg = ps > 0 ? (size_t)ps : 4096;
    return (PD_MAX(bytes, (size_t)1) + pg - 1) / pg * pg;
}

void *pd_huge_map(size_t bytes)
{
    const size_t len = page_round(bytes);
    if (len > SIZE_MAX - PD_HUGE_PAGE) return NULL;
    /* over-map by one huge page, then trim to a 2 MiB-aligned start */
    uint8_t *p = mmap(NULL, len + PD_HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    uint8_t *a = (uint8_t *)(((uintptr_t)p + PD_HUGE_PAGE - 1) & ~(uintptr_t)(PD_HUGE_PAGE - 1));
    if (a > p) munmap(p, (size_t)(a - p));
    const size_t tail = (size_t)(p + len + PD_HUGE_PAGE - (a + len));
    if (tail) munmap(a + len, tail);
#ifdef MADV_HUGEPAGE
    (void)madvise(a, len, MADV_HUGEPAGE); /* advice only: EINVAL without THP support changes nothing */
#endif
    return a;
}

void pd_huge_unmap(void *p, size_t bytes)
{
    if (p) munmap(p, page_round(bytes));
}

double pd_time_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double pd_wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

uint64_t pd_time_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

pd_status pd_file_read(const char *path, char **out, size_t *out_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? PD_ERR_NOT_FOUND : PD_ERR_IO;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 65536) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, ncap + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return PD_ERR_NOMEM;
            }
            buf = nb;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return PD_ERR_IO;
    }
    buf[len] = '\0';
    *out = buf;
    if (out_len) *out_len = len;
    return PD_OK;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void pd_rng_seed(pd_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t pd_rng_next(pd_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double pd_rng_uniform(pd_rng *r) { return (double)(pd_rng_next(r) >> 11) * 0x1.0p-53; }

double pd_rng_normal(pd_rng *r)
{
    double u1 = pd_rng_uniform(r), u2 = pd_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}
