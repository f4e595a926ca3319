/* The decode request's state machine (decode/dreq_state.h) driven through every order of sets of events, with a
 * fake driver and engine in place of server.c (no UCX, no processes): every path must end freed exactly once, abort
 * the engine at most once (exactly once when given up), never release blocks a write may still land in. */
#include <stdio.h>
#include <string.h>

#include "decode/dreq_state.h"
#include "pd_check.h"

typedef struct {
    dec_dreq_fsm m;
    int pd, refuse_kv, arm_fails;  /* the variant */
    int kv_may_land;               /* the transfer is unresolved (the test's own view) */
    int waited_out;                /* the wait timer fired (or could not be armed) */
    int engine_has_kv, engine_aborts, kv_handed, gave_up;
    int armed, arms, error_lines, ended, stream_closed, freed;
    char err[256];                 /* the first broken promise */
} drv;

static unsigned visited_states, accepted_events;

static void bad(drv *d, const char *what)
{
    if (!d->err[0]) snprintf(d->err, sizeof d->err, "%s (state %s)", what, dec_dreq_state_name(d->m.state));
}

static void step(drv *d, dec_dreq_ev ev);

/* Carries out actions in server.c's order (dreq_apply, on_kv_event, on_event). */
static void apply(drv *d, unsigned a)
{
    if (a && d->freed) bad(d, "an action after the free");
    if (a & DEC_ACT_STREAM_ERROR) {
        if (d->stream_closed || d->ended) bad(d, "an error line on a closed stream");
        if (d->error_lines++) bad(d, "a second error line");
        if (d->m.status != 503 && d->m.status != 504) bad(d, "an error line without a status");
    }
    if (a & DEC_ACT_DISARM_WAIT) {
        if (!d->armed) bad(d, "disarmed a timer not armed");
        d->armed = 0;
    }
    if (a & DEC_ACT_KV_READY) {
        if (!d->pd || d->kv_handed++ || d->engine_aborts) bad(d, "KV handed over twice, to a local or aborted one");
        if (d->refuse_kv) {
            d->gave_up = 1;
            step(d, DEC_EV_KV_REFUSED);
        }
        else d->engine_has_kv = 1;
    }
    if (a & DEC_ACT_ABORT_ENGINE) {
        if (d->engine_aborts++) bad(d, "a second engine abort");
        if (d->kv_may_land && !d->waited_out) bad(d, "engine abort while the KV may still land");
    }
    if (a & DEC_ACT_ARM_WAIT) {
        if (d->arms++) bad(d, "the wait timer armed twice");
        if (d->arm_fails) step(d, DEC_EV_WAIT_TIMER_FAILED);
        else d->armed = 1;
    }
    if (a & DEC_ACT_END_STREAM) {
        if (d->stream_closed || d->ended++) bad(d, "the stream ended twice or after it closed");
    }
    if (a & DEC_ACT_FREE) {
        if (d->freed++) bad(d, "freed twice");
        if (d->armed) bad(d, "freed with the wait timer armed");
        if (d->kv_may_land && !d->waited_out) bad(d, "freed while the KV may still land");
        if (!d->stream_closed && !d->ended) bad(d, "freed with the stream open");
    }
}

static void step(drv *d, dec_dreq_ev ev)
{
    const dec_dreq_fsm before = d->m;
    if (ev == DEC_EV_WAIT_TIMER_FAILED) d->waited_out = 1;
    unsigned a = dec_dreq_step(&d->m, ev);
    if (before.state == DEC_RQ_DONE && (a || memcmp(&before, &d->m, sizeof before))) bad(d, "a late event acted");
    if (a || memcmp(&before, &d->m, sizeof before)) accepted_events |= 1u << ev;
    visited_states |= 1u << d->m.state;
    apply(d, a);
}

/* An event from outside, as the world makes it: the engine finishes only a request it runs or was asked to
 * abort, the wait timer fires only when armed, transfer events resolve the transfer. */
static void deliver(drv *d, dec_dreq_ev ev)
{
    if (ev == DEC_EV_ENGINE_DONE && !d->engine_has_kv && !d->engine_aborts) return;
    if (ev == DEC_EV_KV_WAIT_TIMEOUT) {
        if (!d->armed) return;
        d->armed = 0;
        d->waited_out = 1;
    }
    if (!d->freed && !d->engine_aborts && ev != DEC_EV_ENGINE_DONE && ev != DEC_EV_KV_WAIT_TIMEOUT) {
        int lost = d->pd && (ev == DEC_EV_KV_ABORTED || ev == DEC_EV_KV_ABANDONED || ev == DEC_EV_KV_MALFORMED ||
                             ((ev == DEC_EV_PEER_FAILED || ev == DEC_EV_KV_DEADLINE) && !d->kv_handed));
        if (lost || ev == DEC_EV_CLIENT_GONE || ev == DEC_EV_DELETE || ev == DEC_EV_DELETE_UNTOUCHED) d->gave_up = 1;
    }
    if (d->pd && (ev == DEC_EV_KV_READY || ev == DEC_EV_PEER_FAILED || ev == DEC_EV_KV_ABORTED ||
                  ev == DEC_EV_KV_ABANDONED || ev == DEC_EV_KV_MALFORMED || ev == DEC_EV_DELETE_UNTOUCHED))
        d->kv_may_land = 0;
    if (ev == DEC_EV_CLIENT_GONE) d->stream_closed = 1;
    step(d, ev);
    if (d->m.wait_armed != d->armed && !d->freed) bad(d, "the machine and the driver disagree on the timer");
}

static void check_end(drv *d)
{
    if (d->freed != 1) bad(d, "not freed exactly once");
    if (d->m.state != DEC_RQ_DONE) bad(d, "not done");
    if (d->armed) bad(d, "the wait timer left armed");
    if (d->engine_aborts > 1) bad(d, "aborted twice");
    if (d->gave_up && d->engine_aborts != 1) bad(d, "given up without exactly one engine abort");
    if (!d->gave_up && d->engine_aborts) bad(d, "aborted without a reason");
}

#define NEV 8
typedef struct {
    const char *name;
    dec_dreq_ev ev[NEV];
    int n;
} ev_set;

#define SET(name, ...) {name, {__VA_ARGS__}, sizeof((dec_dreq_ev[]){__VA_ARGS__}) / sizeof(dec_dreq_ev)}

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

/* One path: the events in idx's order, then what always comes in the end (the deadline, the wait timer, the
 * engine's DONE), then the set again, all of it late. */
static void run_path(const ev_set *s, const int *idx, int variant, long *natural)
{
    drv d;
    memset(&d, 0, sizeof d);
    d.pd = variant != 4;
    d.refuse_kv = variant & 1;
    d.arm_fails = (variant >> 1) & 1;
    d.kv_may_land = d.pd;
    d.engine_has_kv = !d.pd; /* local: the engine prefills it */
    dec_dreq_fsm_init(&d.m, d.pd);
    visited_states |= 1u << d.m.state;
    for (int i = 0; i < s->n; i++) deliver(&d, s->ev[idx[i]]);
    if (d.freed) (*natural)++;
    const dec_dreq_ev backstop[] = {DEC_EV_KV_DEADLINE, DEC_EV_KV_WAIT_TIMEOUT, DEC_EV_ENGINE_DONE};
    for (size_t i = 0; i < sizeof backstop / sizeof backstop[0]; i++) deliver(&d, backstop[i]);
    for (int i = 0; i < s->n; i++) step(&d, s->ev[idx[i]]);
    check_end(&d);
    if (d.err[0]) {
        char order[512];
        size_t k = 0;
        for (int i = 0; i < s->n && k < sizeof order; i++)
            k += (size_t)snprintf(order + k, sizeof order - k, "%s%s", i ? ", " : "", dec_dreq_ev_name(s->ev[idx[i]]));
        ck_abort_msg("%s; set \"%s\", variant %d, order: %s", d.err, s->name, variant, order);
    }
}

START_TEST(test_every_order)
{
    long paths = 0, natural = 0;
    const ev_set sets[] = {
        SET("ready, duplicates, done", DEC_EV_KV_READY, DEC_EV_KV_READY, DEC_EV_ENGINE_DONE, DEC_EV_CLIENT_GONE,
            DEC_EV_DELETE, DEC_EV_KV_ABORTED, DEC_EV_PEER_FAILED),
        SET("give-ups while the KV may land", DEC_EV_CLIENT_GONE, DEC_EV_DELETE, DEC_EV_KV_DEADLINE,
            DEC_EV_KV_WAIT_TIMEOUT, DEC_EV_KV_READY, DEC_EV_ENGINE_DONE, DEC_EV_DELETE_UNTOUCHED, DEC_EV_DELETE),
        SET("transfer lost", DEC_EV_PEER_FAILED, DEC_EV_KV_ABORTED, DEC_EV_KV_ABANDONED, DEC_EV_KV_DEADLINE,
            DEC_EV_ENGINE_DONE, DEC_EV_CLIENT_GONE, DEC_EV_KV_WAIT_TIMEOUT),
        SET("malformed and untouched", DEC_EV_KV_MALFORMED, DEC_EV_DELETE_UNTOUCHED, DEC_EV_KV_READY,
            DEC_EV_CLIENT_GONE, DEC_EV_ENGINE_DONE, DEC_EV_KV_WAIT_TIMEOUT, DEC_EV_KV_DEADLINE),
        SET("every outside kind once", DEC_EV_KV_READY, DEC_EV_PEER_FAILED, DEC_EV_KV_ABANDONED, DEC_EV_KV_MALFORMED,
            DEC_EV_ENGINE_DONE, DEC_EV_CLIENT_GONE, DEC_EV_DELETE, DEC_EV_KV_WAIT_TIMEOUT),
    };
    for (size_t k = 0; k < sizeof sets / sizeof sets[0]; k++) {
        for (int variant = 0; variant < 5; variant++) { /* 0-3: pd (refused KV, failed timer); 4: local */
            int idx[NEV];
            for (int i = 0; i < sets[k].n; i++) idx[i] = i;
            do {
                run_path(&sets[k], idx, variant, &natural);
                paths++;
            } while (next_perm(idx, sets[k].n));
        }
    }
    ck_assert_int_gt(natural, paths / 4); /* most paths end by themselves, not by the backstop */
    ck_assert_uint_eq(visited_states, (1u << DEC_RQ_NSTATES) - 1);
    ck_assert_uint_eq(accepted_events, (1u << DEC_EV_NKINDS) - 1);
}
END_TEST

/* The paths server.c takes most, step by step. */
START_TEST(test_known_paths)
{
    dec_dreq_fsm m;
    dec_dreq_fsm_init(&m, 1); /* PD: notice, tokens, DONE */
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_KV_READY), DEC_ACT_KV_READY);
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_KV_READY), 0); /* a duplicate notice is not handed over again */
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_PEER_FAILED), 0);
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_KV_DEADLINE), 0);
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_ENGINE_DONE), DEC_ACT_END_STREAM | DEC_ACT_FREE);

    dec_dreq_fsm_init(&m, 1); /* the deadline: a 504, the blocks kept; then the abort of the transfer */
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_KV_DEADLINE), DEC_ACT_STREAM_ERROR | DEC_ACT_ARM_WAIT);
    ck_assert_int_eq(m.status, 504);
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_CLIENT_GONE), 0);
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_KV_ABORTED), DEC_ACT_DISARM_WAIT | DEC_ACT_ABORT_ENGINE);
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_KV_WAIT_TIMEOUT), 0);
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_ENGINE_DONE), DEC_ACT_FREE);

    dec_dreq_fsm_init(&m, 1); /* the peer dies: a retryable 503 and the blocks free at once */
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_PEER_FAILED), DEC_ACT_STREAM_ERROR | DEC_ACT_ABORT_ENGINE);
    ck_assert_int_eq(m.status, 503);
    ck_assert_str_eq(m.msg, "the prefill instance failed");

    dec_dreq_fsm_init(&m, 0); /* local: KV events mean nothing, DELETE aborts once */
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_KV_ABORTED), 0);
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_DELETE_UNTOUCHED), DEC_ACT_ABORT_ENGINE);
    ck_assert_uint_eq(dec_dreq_step(&m, DEC_EV_DELETE_UNTOUCHED), 0);
    ck_assert_int_eq(m.state, DEC_RQ_ABORTING);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dreq_states");
    PD_CHECK_CASE(s, "dreq_states", 60, test_every_order, test_known_paths);
    return pd_check_run(s, 0) ? 1 : 0;
}
