/* The prefill request's state machine (prefill/preq_state.c) driven through every order of events a simulated
 * engine, transfers and router can produce, including start failures, cancelled transfers that land anyway,
 * failed peers and late events. On every path: the request is freed exactly once, with nothing in flight and the
 * engine done; the router hears once (unless it left first); the engine's blocks go back once and never while a
 * transfer reads them; the abandon notice goes at most once, only after a failure, after the last transfer and
 * never to a dead peer, and always when the peer can hear it; nothing is sent after the request failed. */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "prefill/preq_state.h"
#include "pd_check.h"

enum { X_DATA, X_LAST, X_ABANDON };
#define MAXX 6

typedef struct {
    pf_machine m;
    int has_remote;
    /* the simulated engine */
    int blocks_left, prefilled_sent, engine_done, spontaneous_left;
    /* transfers in flight */
    int xk[MAXX], nx;
    /* the router's one-shot events */
    int gone_used, abort_used, deadline_used, gone_while_open;
    /* what happened */
    int replies, reply_status, releases, abandons, frees, failed_seen, dest_dead_seen, delivered;
    int released_spontaneously; /* the engine let go before it was asked */
    int attempts;               /* start attempts in the current step (nested steps included) */
    char trace[512];
} world;

static unsigned long g_paths;
static int g_states_seen[PF_FREED + 1], g_events_seen[PF_EV_DEADLINE + 1];

static void fail_path(const world *w, const char *what)
{
    ck_abort_msg("%s (path: %s; state %s)", what, w->trace, pf_state_str(w->m.state));
}

static void add_x(world *w, int kind)
{
    if (w->nx >= MAXX) fail_path(w, "too many transfers");
    w->xk[w->nx++] = kind;
}

static int data_in_flight(const world *w)
{
    for (int i = 0; i < w->nx; i++)
        if (w->xk[i] != X_ABANDON) return 1;
    return 0;
}

static void step(world *w, pf_event ev, int status, int dest_dead, int start_ok_mask);

/* Performs the actions as prefill/server.c does, in the same order; start_ok_mask says which start attempts
 * succeed (bit 0: the first attempt in this step, ...). */
static void perform(world *w, int act, int start_ok_mask)
{
    int attempt = 0;
    if (act & PF_ACT_FAILED) {
        if (w->failed_seen || w->delivered) fail_path(w, "failed twice, or after delivery");
        w->failed_seen = 1;
    }
    if (act & PF_ACT_REPLY) {
        if (w->replies++) fail_path(w, "second reply");
        if (w->gone_while_open) fail_path(w, "reply after the router left");
        w->reply_status = w->m.status;
        if (w->m.status == 200) {
            if (w->nx || w->failed_seen) fail_path(w, "200 with transfers in flight or after a failure");
            w->delivered = 1;
        }
    }
    for (int k = 0; k < 2; k++) {
        int bit = k == 0 ? PF_ACT_SEND_BLOCKS : PF_ACT_SEND_LAST;
        if (!(act & bit)) continue;
        if (w->failed_seen || w->delivered) fail_path(w, "transfer started after the outcome");
        if (bit == PF_ACT_SEND_LAST && data_in_flight(w)) fail_path(w, "notice before earlier blocks landed");
        w->attempts++;
        if (start_ok_mask >> attempt++ & 1) add_x(w, k == 0 ? X_DATA : X_LAST);
        else step(w, PF_EV_XFER_START_FAILED, 503, 0, start_ok_mask >> attempt);
    }
    if (act & PF_ACT_RELEASE) {
        if (w->releases++) fail_path(w, "engine released twice");
        if (data_in_flight(w)) fail_path(w, "engine released while a transfer reads its blocks");
        if (w->engine_done) fail_path(w, "engine released after it let go");
    }
    if (act & PF_ACT_ABANDON) {
        if (w->abandons++) fail_path(w, "second abandon notice");
        if (!w->failed_seen || w->delivered) fail_path(w, "abandon notice without a failure");
        if (data_in_flight(w)) fail_path(w, "abandon notice before the transfers ended");
        if (w->dest_dead_seen || !w->has_remote) fail_path(w, "abandon notice to a peer that cannot hear it");
        w->attempts++;
        if (start_ok_mask >> attempt++ & 1) add_x(w, X_ABANDON);
        else step(w, PF_EV_ABANDON_DONE, 0, 0, start_ok_mask >> attempt);
    }
    if (act & PF_ACT_FREE) {
        if (w->frees++) fail_path(w, "freed twice");
        if (w->nx || !w->engine_done) fail_path(w, "freed while a transfer or the engine holds it");
    }
}

static void step(world *w, pf_event ev, int status, int dest_dead, int start_ok_mask)
{
    size_t n = strlen(w->trace);
    snprintf(w->trace + n, sizeof w->trace - n, "%s%s", n ? "," : "", pf_event_str(ev));
    g_events_seen[ev] = 1;
    if (w->frees) fail_path(w, "event after free reached the machine");
    if (ev == PF_EV_XFER_FAILED && dest_dead) w->dest_dead_seen = 1;
    int act = pf_machine_step(&w->m, ev, status, status ? "why" : NULL, dest_dead);
    g_states_seen[w->m.state] = 1;
    perform(w, act, start_ok_mask);
}

static void check_end(const world *w)
{
    g_paths++;
    if (w->frees != 1) fail_path(w, "not freed: something still holds the request");
    if (w->replies + w->gone_while_open != 1) fail_path(w, "the router did not hear exactly once");
    if (w->releases != (w->released_spontaneously ? 0 : 1)) fail_path(w, "engine not given back exactly once");
    int must_abandon = w->failed_seen && !w->dest_dead_seen && w->has_remote;
    if (w->abandons != must_abandon) fail_path(w, "abandon notice missing or extra");
}

/* Every event enabled in w, each explored in a copy. */
static void explore(const world *w)
{
    int any = 0;
    world c;
#define TRY(...)                                                                                                    \
    do {                                                                                                            \
        for (int ok = 0; ok < 8; ok++) { /* three start attempts at most per step: each succeeds or fails */    \
            c = *w;                                                                                                 \
            c.attempts = 0;                                                                                         \
            __VA_ARGS__;                                                                                            \
            if (ok >= 1 << c.attempts) continue; /* its low bits, the only ones read, were explored already */   \
            explore(&c);                                                                                            \
        }                                                                                                           \
        any = 1;                                                                                                    \
    } while (0)
    if (w->frees) {
        check_end(w);
        return;
    }
    if (!w->engine_done && !w->prefilled_sent && w->blocks_left)
        TRY(c.blocks_left--; step(&c, PF_EV_BLOCKS, 0, 0, ok));
    if (!w->engine_done && !w->prefilled_sent) TRY(c.prefilled_sent = 1; step(&c, PF_EV_PREFILLED, 0, 0, ok));
    if (!w->engine_done && w->releases) TRY(c.engine_done = 1; step(&c, PF_EV_ENGINE_DONE, 503, 0, ok));
    if (!w->engine_done && !w->releases && w->spontaneous_left)
        TRY(c.engine_done = 1; c.spontaneous_left = 0; c.released_spontaneously = 1;
            step(&c, PF_EV_ENGINE_DONE, 503, 0, ok));
    for (int i = 0; i < w->nx; i++) {
        int kind = w->xk[i];
        for (int outcome = 0; outcome < (kind == X_ABANDON ? 1 : 3); outcome++)
            TRY(memmove(&c.xk[i], &c.xk[i + 1], (size_t)(c.nx - i - 1) * sizeof c.xk[0]); c.nx--;
                if (kind == X_ABANDON) step(&c, PF_EV_ABANDON_DONE, 0, 0, ok);
                else if (outcome == 0) step(&c, PF_EV_XFER_OK, 0, 0, ok);
                else step(&c, PF_EV_XFER_FAILED, 503, outcome == 2, ok));
    }
    if (!w->gone_used && w->m.http_open)
        TRY(c.gone_used = 1; c.gone_while_open = 1; step(&c, PF_EV_CLIENT_GONE, 499, 0, ok));
    if (!w->abort_used) TRY(c.abort_used = 1; step(&c, PF_EV_ABORT, 499, 0, ok));
    if (!w->deadline_used) TRY(c.deadline_used = 1; step(&c, PF_EV_DEADLINE, 504, 0, ok));
#undef TRY
    if (!any) check_end(w); /* nothing can happen any more: the request must be gone */
}

static void run(int has_remote, int blocks, int spontaneous)
{
    world w;
    memset(&w, 0, sizeof w);
    pf_machine_init(&w.m, has_remote);
    w.has_remote = has_remote;
    w.blocks_left = blocks;
    w.spontaneous_left = spontaneous;
    explore(&w);
}

START_TEST(test_every_order)
{
    for (int remote = 0; remote < 2; remote++)
        for (int blocks = 0; blocks < 2; blocks++)
            for (int spont = 0; spont < 2; spont++) run(remote, blocks, spont);
    printf("preq state machine: %lu paths\n", g_paths);
    for (int s = 0; s <= PF_FREED; s++) ck_assert_msg(g_states_seen[s], "state %s never reached", pf_state_str(s));
    for (int e = 0; e <= PF_EV_DEADLINE; e++) ck_assert_msg(g_events_seen[e], "event %s never sent", pf_event_str(e));
}
END_TEST

/* The happy path, spelled out: chunks stream, the notice follows the last of them, the router hears 200, the
 * engine's blocks go back, the request is freed when the engine confirms. */
START_TEST(test_happy_path)
{
    pf_machine m;
    pf_machine_init(&m, 1);
    ck_assert_int_eq(pf_machine_step(&m, PF_EV_BLOCKS, 0, NULL, 0), PF_ACT_SEND_BLOCKS);
    ck_assert_int_eq(pf_machine_step(&m, PF_EV_PREFILLED, 0, NULL, 0), 0); /* waits for the chunk in flight */
    ck_assert_int_eq(m.state, PF_SENDING);
    ck_assert_int_eq(pf_machine_step(&m, PF_EV_XFER_OK, 0, NULL, 0), PF_ACT_SEND_LAST);
    ck_assert_int_eq(pf_machine_step(&m, PF_EV_XFER_OK, 0, NULL, 0), PF_ACT_REPLY | PF_ACT_RELEASE);
    ck_assert_int_eq(m.status, 200);
    ck_assert_int_eq(pf_machine_step(&m, PF_EV_ABORT, 499, "late", 0), 0); /* the outcome stands */
    ck_assert_int_eq(pf_machine_step(&m, PF_EV_ENGINE_DONE, 0, NULL, 0), PF_ACT_FREE);
    ck_assert_int_eq(m.state, PF_FREED);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("preq_states");
    PD_CHECK_CASE(s, "machine", 120, test_happy_path, test_every_order);
    return pd_check_run(s, 1) ? 1 : 0;
}
