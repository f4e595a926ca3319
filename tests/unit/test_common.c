/* Unit tests of libpdcommon: status strings, log level parsing, the PRNG, whole-file reads, the growable buffer. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/pd_common.h"
#include "common/pd_opts.h"
#include "pd_check.h"

START_TEST(test_status_str)
{
    ck_assert_str_eq(pd_status_str(PD_OK), "ok");
    ck_assert_str_eq(pd_status_str(PD_ERR_FORMAT), "malformed input");
    ck_assert_str_eq(pd_status_str((pd_status)9999), "unknown status");
}
END_TEST

START_TEST(test_log_level_parse)
{
    pd_log_level l;
    ck_assert_int_eq(pd_log_level_parse("debug", &l), PD_OK);
    ck_assert_int_eq(l, PD_LOG_DEBUG);
    ck_assert_int_eq(pd_log_level_parse("WARNING", &l), PD_OK);
    ck_assert_int_eq(l, PD_LOG_WARN);
    ck_assert_int_eq(pd_log_level_parse("loud", &l), PD_ERR_INVALID);
}
END_TEST

START_TEST(test_rng_deterministic_and_normal)
{
    pd_rng a, b;
    pd_rng_seed(&a, 42);
    pd_rng_seed(&b, 42);
    for (int i = 0; i < 100; i++) ck_assert_uint_eq(pd_rng_next(&a), pd_rng_next(&b));
    pd_rng_seed(&a, 7);
    double s = 0, s2 = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = pd_rng_normal(&a);
        s += x;
        s2 += x * x;
    }
    ck_assert(fabs(s / n) < 0.01);
    ck_assert(fabs(s2 / n - 1.0) < 0.02);
}
END_TEST

START_TEST(test_file_read)
{
    char *buf = NULL;
    size_t len = 0;
    ck_assert_int_eq(pd_file_read("/nonexistent/file", &buf, &len), PD_ERR_NOT_FOUND);
    ck_assert_ptr_null(buf);
    char path[] = "/tmp/pdtestXXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    for (int i = 0; i < 100000; i++) fputc('a' + i % 26, f);
    fclose(f);
    ck_assert_int_eq(pd_file_read(path, &buf, &len), PD_OK);
    ck_assert_uint_eq(len, 100000);
    ck_assert_int_eq(buf[25], 'z');
    ck_assert_int_eq(buf[len], '\0');
    free(buf);
    unlink(path);
}
END_TEST

START_TEST(test_parse_size)
{
    uint64_t v = 0;
    ck_assert_int_eq(pd_parse_size("4G", &v), PD_OK);
    ck_assert_uint_eq(v, 4ull << 30);
    ck_assert_int_eq(pd_parse_size("1.5MiB", &v), PD_OK);
    ck_assert_uint_eq(v, 3ull << 19);
    ck_assert_int_eq(pd_parse_size("512", &v), PD_OK);
    ck_assert_uint_eq(v, 512);
    /* found by fuzz_yaml_opts: sizes beyond 2^64 were converted with undefined behaviour */
    ck_assert_int_eq(pd_parse_size("1e30G", &v), PD_ERR_INVALID);
    ck_assert_int_eq(pd_parse_size("16777216T", &v), PD_ERR_INVALID);
    ck_assert_int_eq(pd_parse_size("-1", &v), PD_ERR_INVALID);
    ck_assert_int_eq(pd_parse_size("12Q", &v), PD_ERR_INVALID);
    ck_assert_int_eq(pd_parse_size("nan", &v), PD_ERR_INVALID);
}
END_TEST

/* The VmFlags of the mapping holding p in /proc/self/smaps, or "" when not found. */
static void vm_flags_of(const void *p, char *out, size_t outlen)
{
    out[0] = '\0';
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return;
    char line[512];
    int in = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) { /* a mapping's first line; field lines do not parse */
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
        } else if (in && !strncmp(line, "VmFlags:", 8)) {
            snprintf(out, outlen, "%.*s", (int)PD_MIN(outlen - 1, (size_t)200), line + 8);
            break;
        }
    }
    fclose(f);
}

START_TEST(test_huge_map)
{
    const size_t n = (5u << 20) + 123;
    uint8_t *p = pd_huge_map(n);
    ck_assert_ptr_nonnull(p);
    ck_assert_uint_eq((uintptr_t)p % (2u << 20), 0);
    size_t nonzero = 0, wrong = 0;
    for (size_t i = 0; i < n; i++) nonzero += p[i] != 0;
    ck_assert_uint_eq(nonzero, 0);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(i * 7);
    for (size_t i = 0; i < n; i++) wrong += p[i] != (uint8_t)(i * 7);
    ck_assert_uint_eq(wrong, 0);
    /* the advice reached the kernel where it has transparent huge pages ("hg" in the mapping's VmFlags) */
    if (access("/sys/kernel/mm/transparent_hugepage/enabled", F_OK) == 0) {
        char flags[512];
        vm_flags_of(p, flags, sizeof flags);
        ck_assert_msg(strstr(flags, " hg") != NULL, "VmFlags of the mapping: '%s'", flags);
    }
    pd_huge_unmap(p, n);
    ck_assert_ptr_null(pd_huge_map(SIZE_MAX - 4096));
}
END_TEST

START_TEST(test_buf)
{
    pd_buf b = {0};
    ck_assert_int_eq(pd_buf_append(&b, "", 0), PD_OK); /* appending nothing still gives a terminated string */
    ck_assert_ptr_nonnull(b.data);
    ck_assert_str_eq(b.data, "");
    ck_assert_uint_eq(b.len, 0);
    ck_assert_int_eq(pd_buf_append(&b, "abc", 3), PD_OK);
    ck_assert_int_eq(pd_buf_printf(&b, "-%d-%s", 42, "x"), PD_OK);
    ck_assert_str_eq(b.data, "abc-42-x");
    ck_assert_uint_eq(b.len, 8);
    /* growth past the first block, through both appends, keeps every byte */
    char big[1000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)('a' + i % 26);
    for (int k = 0; k < 5; k++) ck_assert_int_eq(pd_buf_append(&b, big, sizeof big), PD_OK);
    ck_assert_uint_eq(b.len, 8 + 5 * sizeof big);
    ck_assert_int_eq(memcmp(b.data + 8 + 4 * sizeof big, big, sizeof big), 0);
    ck_assert_int_eq(pd_buf_printf(&b, "%.*s", 600, big), PD_OK); /* longer than the room left in one go */
    ck_assert_uint_eq(b.len, 8 + 5 * sizeof big + 600);
    ck_assert_int_eq(b.data[b.len], '\0');
    ck_assert_uint_eq(strlen(b.data), b.len);
    /* binary bytes, a NUL among them */
    pd_buf_reset(&b);
    ck_assert_uint_eq(b.len, 0);
    ck_assert_str_eq(b.data, "");
    ck_assert_int_eq(pd_buf_append(&b, "a\0b", 3), PD_OK);
    ck_assert_uint_eq(b.len, 3);
    ck_assert_int_eq(memcmp(b.data, "a\0b", 4), 0);
    /* a size that cannot be had: PD_ERR_NOMEM, contents unchanged, sticky until reset; no abort */
    ck_assert_int_eq(pd_buf_append(&b, "x", SIZE_MAX - 1), PD_ERR_NOMEM);
    ck_assert_uint_eq(b.len, 3);
    ck_assert_int_eq(memcmp(b.data, "a\0b", 4), 0);
    ck_assert_int_eq(pd_buf_append(&b, "c", 1), PD_ERR_NOMEM);
    ck_assert_int_eq(pd_buf_printf(&b, "c"), PD_ERR_NOMEM);
    ck_assert_uint_eq(b.len, 3);
    pd_buf_reset(&b);
    ck_assert_int_eq(pd_buf_append(&b, "c", 1), PD_OK);
    ck_assert_str_eq(b.data, "c");
    pd_buf_free(&b);
    ck_assert_ptr_null(b.data);
    ck_assert_uint_eq(b.len, 0);
    pd_buf_free(&b); /* twice, and NULL, are fine */
    pd_buf_free(NULL);
    pd_buf e = {0}; /* printf into a buffer never appended to */
    ck_assert_int_eq(pd_buf_printf(&e, "%s", ""), PD_OK);
    ck_assert_str_eq(e.data, "");
    pd_buf_free(&e);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("common");
    PD_CHECK_CASE(s, "core", 0, test_status_str, test_log_level_parse, test_rng_deterministic_and_normal,
                  test_file_read, test_parse_size, test_huge_map, test_buf);
    int failed = pd_check_run(s, 0);
    return failed ? 1 : 0;
}
