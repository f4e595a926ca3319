/* libpdcommon: status codes, logging, assertions and small utilities shared by every pdserve library.
 * Nothing here knows about models, tokens or the network. */
#ifndef PD_COMMON_H
#define PD_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* One status enum for the whole code base (libuv's UV_ERRNO_MAP pattern). */
#define PD_STATUS_MAP(X)                                           \
    X(PD_OK, "ok")                                                 \
    X(PD_ERR_NOMEM, "out of memory")                               \
    X(PD_ERR_IO, "I/O error")                                      \
    X(PD_ERR_NOT_FOUND, "not found")                               \
    X(PD_ERR_INVALID, "invalid argument")                          \
    X(PD_ERR_FORMAT, "malformed input")                            \
    X(PD_ERR_UNSUPPORTED, "unsupported")                           \
    X(PD_ERR_RANGE, "out of range")                                \
    X(PD_ERR_BUSY, "busy")                                         \
    X(PD_ERR_FULL, "queue full")                                   \
    X(PD_ERR_TIMEOUT, "timed out")                                 \
    X(PD_ERR_CANCELED, "canceled")                                 \
    X(PD_ERR_TRANSPORT, "transport error")                         \
    X(PD_ERR_PEER, "peer unreachable")                             \
    X(PD_ERR_INTERNAL, "internal error")

typedef enum {
#define PD__STATUS_ENUM(name, str) name,
    PD_STATUS_MAP(PD__STATUS_ENUM)
#undef PD__STATUS_ENUM
    PD_STATUS_COUNT
} pd_status;

/* Human-readable text of a status; never NULL. */
const char *pd_status_str(pd_status s);

/* Logging. Levels follow syslog order; the threshold comes from pd_log_set_level() or PDSERVE_LOG
 * (error|warn|info|debug). Lines go to stderr with a timestamp, level and the component tag. */
typedef enum { PD_LOG_OFF = -1, PD_LOG_ERROR = 0, PD_LOG_WARN, PD_LOG_INFO, PD_LOG_DEBUG } pd_log_level;

void pd_log_set_level(pd_log_level lvl);
pd_log_level pd_log_get_level(void);
/* Parses "error", "warn", "info", "debug"; returns PD_ERR_INVALID for anything else. */
pd_status pd_log_level_parse(const char *s, pd_log_level *out);
void pd_log_write(pd_log_level lvl, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define PD_LOG(lvl, ...)                                                  \
    do {                                                                  \
        if ((lvl) <= pd_log_get_level()) pd_log_write((lvl), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
#define pd_error(...) PD_LOG(PD_LOG_ERROR, __VA_ARGS__)
#define pd_warn(...) PD_LOG(PD_LOG_WARN, __VA_ARGS__)
#define pd_info(...) PD_LOG(PD_LOG_INFO, __VA_ARGS__)
#define pd_debug(...) PD_LOG(PD_LOG_DEBUG, __VA_ARGS__)

/* A repeated log line, rate-limited: pd_log_due counts one occurrence and says whether to write the line now (the
 * first time, then at most once per `every` seconds). When it does, *count is the occurrences the line stands for and
 * *since the seconds they span (0 the first time). Not locked: callers sharing one across threads hold a lock. */
typedef struct {
    double logged_at;
    unsigned long pending;
} pd_log_limit;
int pd_log_due(pd_log_limit *l, double every, unsigned long *count, double *since);

/* Reports an error that the caller returns: writes the message into err (when given) and logs it once, as
 * "area: message" (area may be NULL), with the caller's file and line. Returns st. */
pd_status pd_fail_at(const char *file, int line, char *err, size_t errlen, pd_status st, const char *area,
                     const char *fmt, ...) __attribute__((format(printf, 7, 8)));
#define PD_FAIL(err, errlen, st, area, ...) pd_fail_at(__FILE__, __LINE__, (err), (errlen), (st), (area), __VA_ARGS__)

/* Broken invariants abort in every build (like GGML_ASSERT); bad input never reaches these. */
void pd_abort(const char *file, int line, const char *expr) __attribute__((noreturn));
#define PD_ASSERT(x)                                       \
    do {                                                   \
        if (__builtin_expect(!(x), 0)) pd_abort(__FILE__, __LINE__, #x); \
    } while (0)

/* Allocation helpers that abort on failure are deliberately absent: callers handle PD_ERR_NOMEM.
 * pd_aligned_alloc returns 64-byte aligned, zeroed memory or NULL; free with free(). */
void *pd_aligned_alloc(size_t bytes);
/* A private anonymous mapping of at least `bytes` (zeroed, 2 MiB-aligned) advised MADV_HUGEPAGE, so that the
 * kernel backs it with transparent huge pages where it can (THP "always" or "madvise"): for memory that is
 * streamed whole, such as packed weights, one TLB entry then covers 2 MiB instead of 4 KiB. NULL when the
 * mapping fails; pages untouched cost nothing. Free with pd_huge_unmap(p, bytes). */
void *pd_huge_map(size_t bytes);
void pd_huge_unmap(void *p, size_t bytes);

/* A growable byte buffer, zero-initialised ({0}) before use: data is NUL-terminated after len bytes once anything
 * was appended (NULL before). Appends return PD_ERR_NOMEM when memory runs out, leaving data and len as they were,
 * and never abort; a failure is sticky (failed stays set and later appends fail too, until pd_buf_reset), so a run
 * of appends may be checked once at its end. pd_buf_free accepts NULL and a buffer never appended to. */
typedef struct {
    char *data;
    size_t len, cap;
    int failed;
} pd_buf;
pd_status pd_buf_append(pd_buf *b, const void *s, size_t n);
pd_status pd_buf_printf(pd_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Empties the buffer (keeps its memory) and clears failed. */
void pd_buf_reset(pd_buf *b);
void pd_buf_free(pd_buf *b);

/* Monotonic clock. */
double pd_time_now(void);    /* seconds */
uint64_t pd_time_ns(void);   /* nanoseconds */
/* Wall clock (seconds since the epoch): only for deadlines that cross hosts, whose clocks agree (NTP). */
double pd_wall_now(void);

/* Reads a whole file into a NUL-terminated malloc'd buffer. On error logs nothing; returns status. */
pd_status pd_file_read(const char *path, char **out, size_t *out_len);

/* Overflow-checked size arithmetic: returns 0 on overflow, 1 on success. */
static inline int pd_mul_ok(size_t a, size_t b, size_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline int pd_add_ok(size_t a, size_t b, size_t *out) { return !__builtin_add_overflow(a, b, out); }

/* Deterministic PRNG (xoshiro256**) seeded through splitmix64; used for weights generation and sampling. */
typedef struct { uint64_t s[4]; } pd_rng;
void pd_rng_seed(pd_rng *r, uint64_t seed);
uint64_t pd_rng_next(pd_rng *r);
double pd_rng_uniform(pd_rng *r);   /* [0, 1) with 53 bits */
double pd_rng_normal(pd_rng *r);    /* standard normal (Box-Muller) */

#define PD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PD_MAX(a, b) ((a) > (b) ? (a) : (b))
#define PD_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
