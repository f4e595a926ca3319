/* What the Check unit tests' mains share: a test case built from a list of tests, and running a suite to a count
 * of failures. Header-only: each test executable includes it once, from its main file. */
#ifndef PD_CHECK_H
#define PD_CHECK_H

#include <check.h>
#include <stddef.h>

/* Adds to s a case named name holding the n tests, with a timeout in seconds (0: Check's default, or
 * CK_DEFAULT_TIMEOUT); returns it for fixtures and loop tests. */
static inline TCase *pd_check_case(Suite *s, const char *name, int timeout, const TTest *const *tests, size_t n)
{
    TCase *tc = tcase_create(name);
    if (timeout > 0) tcase_set_timeout(tc, timeout);
    for (size_t i = 0; i < n; i++) tcase_add_test(tc, tests[i]);
    suite_add_tcase(s, tc);
    return tc;
}

#define PD_CHECK_CASE(s, name, timeout, ...)                                                                      \
    pd_check_case((s), (name), (timeout), (const TTest *const[]){__VA_ARGS__},                                 \
                  sizeof((const TTest *const[]){__VA_ARGS__}) / sizeof(const TTest *))

/* Runs every case of s (in one process when nofork: the tests share state loaded once; else each in a child, as
 * Check does by default) and frees it. Returns the number of tests that failed. */
static inline int pd_check_run(Suite *s, int nofork)
{
    SRunner *sr = srunner_create(s);
    if (nofork) srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    const int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed;
}

#endif
