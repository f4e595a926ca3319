/* The router's choice state machine (router/rt_choice.h) driven through every order of sets of events, with a fake
 * driver in place of relay.c (no sockets, no processes): each path must end final, report to the request exactly
 * once (never when the request stopped the choice itself) and release every call and reservation exactly once. */
#include <stdio.h>
#include <string.h>

#include "pd_check.h"
#include "router/rt_choice.h"

/* The fake driver: what relay.c holds (open calls), and what it did. */
typedef struct {
    rt_choice_fsm m;
    int can_retry;                /* another prefill instance exists */
    int prefill_start_fails;      /* starting the prefill call fails (cannot reach it) */
    int dcall, pcall;             /* calls open now */
    int d_opened, d_released, p_opened, p_released;
    int kv_released, kv_this_attempt, attempts;
    int reports;
    rt_choice_ev_kind final_by;   /* the event that made the choice final */
    char err[256];                /* the first broken promise */
} drv;

static unsigned visited_states, accepted_events;

static void bad(drv *d, const char *what)
{
    if (!d->err[0]) snprintf(d->err, sizeof d->err, "%s (state %s)", what, rt_choice_state_name(d->m.state));
}

static void step(drv *d, rt_choice_event ev);

/* Carries out actions in relay.c's order (choice_apply). */
static void apply(drv *d, unsigned a)
{
    if ((a & RT_ACT_RETRY) && (a & RT_ACT_REPORT)) bad(d, "retry and report at once");
    if (a & RT_ACT_START_PREFILL) {
        if (d->pcall) bad(d, "a second prefill call");
        if (d->prefill_start_fails) {
            step(d, (rt_choice_event){.kind = RT_EV_FAIL, .status = 503, .msg = "cannot reach the prefill instance"});
        } else {
            d->pcall = 1;
            d->p_opened++;
            step(d, (rt_choice_event){.kind = RT_EV_PREFILL_STARTED});
        }
    }
    if (a & RT_ACT_RELEASE_KV) {
        if (!d->dcall) bad(d, "reservation released without its decode call");
        if (d->kv_this_attempt++) bad(d, "reservation released twice");
        d->kv_released++;
    }
    if (a & RT_ACT_CANCEL_DECODE) {
        if (!d->dcall) bad(d, "decode call released twice");
        d->dcall = 0;
        d->d_released++;
    }
    if (a & RT_ACT_CANCEL_PREFILL) {
        if (!d->pcall) bad(d, "prefill call released twice");
        d->pcall = 0;
        d->p_released++;
    }
    if (a & RT_ACT_RETRY) {
        if (!d->can_retry) {
            step(d, (rt_choice_event){.kind = RT_EV_RETRY_REFUSED});
            return;
        }
        step(d, (rt_choice_event){.kind = RT_EV_RETRY});
        d->dcall = 1; /* rt_choice_start: a new attempt */
        d->d_opened++;
        d->kv_this_attempt = 0;
        d->attempts++;
        step(d, (rt_choice_event){.kind = RT_EV_OPENED});
    } else if (a & RT_ACT_REPORT) {
        d->reports++;
    }
}

static void step(drv *d, rt_choice_event ev)
{
    const rt_choice_fsm before = d->m;
    const int was_final = rt_choice_fsm_final(&d->m);
    unsigned a = rt_choice_step(&d->m, &ev);
    if (was_final && (a || memcmp(&before, &d->m, sizeof before))) bad(d, "a late event changed a final choice");
    if (a || memcmp(&before, &d->m, sizeof before)) accepted_events |= 1u << ev.kind;
    visited_states |= 1u << d->m.state;
    if (!was_final && rt_choice_fsm_final(&d->m)) d->final_by = ev.kind;
    apply(d, a);
}

/* An event from outside: a call that ends on its own is no longer open (late ones find it closed already). */
static void deliver(drv *d, rt_choice_event ev)
{
    if (ev.kind == RT_EV_DECODE_CLOSED && d->dcall) {
        d->dcall = 0;
        d->d_released++;
    }
    if ((ev.kind == RT_EV_PREFILL_OK || ev.kind == RT_EV_PREFILL_FAILED) && d->pcall) {
        d->pcall = 0;
        d->p_released++;
    }
    step(d, ev);
    if (!!(d->m.held & RT_HELD_DECODE) != d->dcall) bad(d, "the machine and the driver disagree on the decode call");
    if (!!(d->m.held & RT_HELD_PREFILL) != d->pcall) bad(d, "the machine and the driver disagree on the prefill call");
    if (d->reports > 1) bad(d, "reported twice");
}

static void check_end(drv *d)
{
    if (!rt_choice_fsm_final(&d->m)) bad(d, "not final");
    if (d->dcall || d->pcall) bad(d, "a call is still open");
    if (d->d_opened != d->d_released) bad(d, "decode calls opened != released");
    if (d->p_opened != d->p_released) bad(d, "prefill calls opened != released");
    int by_request = d->final_by == RT_EV_ABORT || d->final_by == RT_EV_CLIENT_GONE;
    if (d->reports != (by_request ? 0 : 1)) bad(d, "not reported exactly once");
    if (d->kv_released > d->attempts) bad(d, "more reservation releases than attempts");
    if (d->m.retries > RT_CHOICE_MAX_RETRIES) bad(d, "retried too often");
    if (d->m.state == RT_CH_FAILED && (d->m.status == 0 || strcmp(d->m.finish, "error") != 0))
        bad(d, "failed without a status");
    if (d->m.state == RT_CH_DONE && strcmp(d->m.finish, "stop") && strcmp(d->m.finish, "length") &&
        strcmp(d->m.finish, "abort"))
        bad(d, "done without a finish reason");
}

/* ---- the event sets -------------------------------------------------------------------------------------- */

#define E(k, ...) ((rt_choice_event){.kind = RT_EV_##k, __VA_ARGS__})
#define RESERVED E(RESERVED, .n = 0)
#define TOKEN(k) E(TOKEN, .n = (k))
#define STOPPED E(STOPPED, .n = 0)
#define DONE(f) E(DECODE_DONE, .finish = (f))
#define DERR(r) E(DECODE_ERROR, .status = 503, .msg = "decode failed", .retryable = (r))
#define DCLOSED(s) E(DECODE_CLOSED, .status = (s), .msg = "closed")
#define POK E(PREFILL_OK, .n = 0)
#define PFAIL(s, r, kv)                                                                                           \
    E(PREFILL_FAILED, .status = (s), .msg = "prefill failed", .retryable = (r), .kv_untouched = (kv))
#define FAIL E(FAIL, .status = 503, .msg = "out of memory")
#define TIMEOUT E(TIMEOUT, .status = 504, .msg = "no progress")
#define ABORT E(ABORT, .n = 0)
#define GONE E(CLIENT_GONE, .n = 0)

typedef struct {
    const char *name;
    rt_choice_event ev[8];
    int n;
} ev_set;

#define SET(name, ...)                                                                                             \
    {name, {__VA_ARGS__}, sizeof((rt_choice_event[]){__VA_ARGS__}) / sizeof(rt_choice_event)}


/* The next permutation of idx[0..n) in lexicographic order; 0 after the last. */
static int next_perm(int *idx, int n)
{
    int i = n - 2;
    while (i >= 0 && idx[i] >= idx[i + 1]) i--;
    if (i < 0) return 0;
    int j = n - 1;
    while (idx[j] <= idx[i]) j--;
    int t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
    for (int a = i + 1, b = n - 1; a < b; a++, b--) t = idx[a], idx[a] = idx[b], idx[b] = t;
    return 1;
}

static void describe(char *out, size_t cap, const ev_set *s, const int *idx)
{
    size_t k = 0;
    for (int i = 0; i < s->n && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%s", i ? ", " : "", rt_choice_ev_name(s->ev[idx[i]].kind));
}

/* One path: open the decode call, deliver the events in idx's order, then the request's timer (it fires while a
 * choice is not final: the backstop that ends every path). */
static void run_path(const ev_set *s, const int *idx, int variant, long *natural)
{
    drv d;
    memset(&d, 0, sizeof d);
    rt_choice_fsm_init(&d.m);
    d.can_retry = variant & 1;
    d.prefill_start_fails = (variant >> 1) & 1;
    d.final_by = RT_EV_NKINDS;
    visited_states |= 1u << d.m.state;
    d.dcall = 1;
    d.d_opened = 1;
    d.attempts = 1;
    step(&d, (rt_choice_event){.kind = RT_EV_OPENED});
    for (int i = 0; i < s->n; i++) deliver(&d, s->ev[idx[i]]);
    if (rt_choice_fsm_final(&d.m)) (*natural)++;
    else deliver(&d, TIMEOUT);
    check_end(&d);
    if (d.err[0]) {
        char order[512];
        describe(order, sizeof order, s, idx);
        ck_abort_msg("%s: %s; set \"%s\", variant %d, order: %s", d.err, rt_choice_ev_name(d.final_by), s->name,
                     variant, order);
    }
}

START_TEST(test_every_order)
{
    long paths = 0, natural = 0;
    const ev_set sets[] = { /* compound literals: an automatic array */
        SET("pd, late and duplicate replies", RESERVED, TOKEN(1), POK, DONE("length"), DCLOSED(200), POK, TOKEN(1)),
        SET("pd, retryable failures", RESERVED, PFAIL(503, 1, 1), RESERVED, DERR(1), TOKEN(1), DONE("stop"),
            DCLOSED(200)),
        SET("pd, the retry limit", RESERVED, PFAIL(503, 1, 1), RESERVED, PFAIL(429, 1, 1), DERR(1), DCLOSED(503),
            TOKEN(2)),
        SET("pd, decode done before the prefill reply", RESERVED, DONE("stop"), PFAIL(503, 1, 0), DCLOSED(200), DERR(1),
            TOKEN(1), POK),
        SET("request-level events", RESERVED, TOKEN(0), STOPPED, TIMEOUT, ABORT, GONE, PFAIL(400, 0, 1)),
        SET("colocated", TOKEN(1), STOPPED, DONE("abort"), DERR(0), DCLOSED(503), FAIL),
        SET("every kind once", RESERVED, TOKEN(1), STOPPED, DONE("stop"), DERR(1), DCLOSED(200), POK, PFAIL(503, 1, 1)),
    };
    for (size_t k = 0; k < sizeof sets / sizeof sets[0]; k++) {
        const ev_set *s = &sets[k];
        for (int variant = 0; variant < 4; variant++) {
            int idx[8];
            for (int i = 0; i < s->n; i++) idx[i] = i;
            do {
                run_path(s, idx, variant, &natural);
                paths++;
            } while (next_perm(idx, s->n));
        }
    }
    ck_assert_int_gt(natural, paths / 4); /* most paths end by themselves, not by the timer */
    /* every state was reached and every event kind did something somewhere */
    ck_assert_uint_eq(visited_states, (1u << RT_CH_NSTATES) - 1);
    ck_assert_uint_eq(accepted_events, (1u << RT_EV_NKINDS) - 1);
}
END_TEST

/* A start that fails before any call (out of memory, no instance): failed, reported, nothing to release. */
START_TEST(test_start_fails)
{
    drv d;
    memset(&d, 0, sizeof d);
    rt_choice_fsm_init(&d.m);
    step(&d, FAIL);
    ck_assert_int_eq(d.m.state, RT_CH_FAILED);
    ck_assert_int_eq(d.m.status, 503);
    ck_assert_str_eq(d.m.msg, "out of memory");
    ck_assert_int_eq(d.reports, 1);
    ck_assert_int_eq(d.d_released + d.p_released, 0);
    ck_assert_str_eq(d.err, "");
}
END_TEST

/* The paths relay.c takes most, step by step: PD with the prefill reply after decode's done; a retried prefill
 * failure that released the untouched reservation. */
START_TEST(test_known_paths)
{
    drv d;
    memset(&d, 0, sizeof d);
    rt_choice_fsm_init(&d.m);
    d.dcall = d.d_opened = d.attempts = 1;
    step(&d, E(OPENED, .n = 0));
    deliver(&d, RESERVED);
    ck_assert_int_eq(d.m.state, RT_CH_PREFILLING);
    deliver(&d, TOKEN(3));
    deliver(&d, DONE("length"));
    ck_assert_int_eq(d.m.state, RT_CH_FINISHING);
    ck_assert_int_eq(d.reports, 0);
    deliver(&d, DCLOSED(200));
    ck_assert_int_eq(d.m.state, RT_CH_FINISHING);
    deliver(&d, POK);
    ck_assert_int_eq(d.m.state, RT_CH_DONE);
    ck_assert_str_eq(d.m.finish, "length");
    check_end(&d);
    ck_assert_str_eq(d.err, "");

    memset(&d, 0, sizeof d);
    rt_choice_fsm_init(&d.m);
    d.can_retry = 1;
    d.dcall = d.d_opened = d.attempts = 1;
    step(&d, E(OPENED, .n = 0));
    deliver(&d, RESERVED);
    deliver(&d, PFAIL(503, 1, 1));
    ck_assert_int_eq(d.kv_released, 1);
    ck_assert_int_eq(d.m.state, RT_CH_OPENING);
    ck_assert_int_eq(d.m.retries, 1);
    ck_assert_int_eq(d.m.status, 0);
    deliver(&d, RESERVED);
    deliver(&d, PFAIL(503, 1, 0)); /* a second failure: no more retries */
    ck_assert_int_eq(d.m.state, RT_CH_FAILED);
    ck_assert_int_eq(d.m.status, 503);
    check_end(&d);
    ck_assert_str_eq(d.err, "");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("choice_states");
    PD_CHECK_CASE(s, "choice_states", 120, test_every_order, test_start_fails, test_known_paths);
    return pd_check_run(s, 0) ? 1 : 0;
}
