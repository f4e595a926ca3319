/* Unit tests of the router's text pipeline (router/text.c): stop strings and their hold-back, UTF-8-safe cuts, the
 * <think> split, as the router has always applied them. Tokens are fed one by one, each followed by a release, and
 * a final release at the end, as relay.c does with the decode stream's token lines. */
#include <check.h>
#include <string.h>

#include "router/rt_text.h"

/* What the sink saw: every delta as [r:...|c:...] ("[]" for one with no text), and the text put together. */
typedef struct {
    char log[4096];
    char reasoning[1024], content[1024];
    int n_aux;
    int fail;                     /* the sink answers PD_ERR_NOMEM */
} rec;

static void cat_n(char *dst, size_t cap, const char *s, size_t n)
{
    size_t l = strlen(dst);
    ck_assert_uint_lt(l + n, cap);
    memcpy(dst + l, s, n);
    dst[l + n] = '\0';
}

static pd_status sink_cb(void *arg, const char *rs, size_t rl, const char *cs, size_t cl, void *aux)
{
    rec *r = arg;
    if (aux) r->n_aux++;
    if (r->fail) return PD_ERR_NOMEM;
    cat_n(r->log, sizeof r->log, "[", 1);
    if (rl) {
        cat_n(r->log, sizeof r->log, "r:", 2);
        cat_n(r->log, sizeof r->log, rs, rl);
        cat_n(r->reasoning, sizeof r->reasoning, rs, rl);
    }
    if (rl && cl) cat_n(r->log, sizeof r->log, "|", 1);
    if (cl) {
        cat_n(r->log, sizeof r->log, "c:", 2);
        cat_n(r->log, sizeof r->log, cs, cl);
        cat_n(r->content, sizeof r->content, cs, cl);
    }
    cat_n(r->log, sizeof r->log, "]", 1);
    return PD_OK;
}

/* Feeds tokens (NULL-terminated) with a release after each, then a final release unless a stop string ended it.
 * Returns the stop string ("" when none); the deltas land in *r. */
static const char *run(rt_text **tp, const char *const *stops, int n_stops, int split_think, int in_think,
                       const char *const *tokens, rec *r)
{
    memset(r, 0, sizeof *r);
    rt_text_params p = {.stops = stops, .n_stops = n_stops, .split_think = split_think, .in_think = in_think};
    rt_text_sink sink = {.delta_cb = sink_cb, .arg = r};
    ck_assert_int_eq(rt_text_create(&p, &sink, tp), PD_OK);
    int stopped = 0;
    for (int i = 0; tokens[i] && !stopped; i++) {
        ck_assert_int_eq(rt_text_feed(*tp, tokens[i], strlen(tokens[i])), PD_OK);
        ck_assert_int_eq(rt_text_release(*tp, 0, NULL, &stopped), PD_OK);
    }
    if (!stopped) {
        ck_assert_int_eq(rt_text_release(*tp, 1, NULL, &stopped), PD_OK);
        ck_assert_int_eq(stopped, 0);
    }
    return rt_text_stop_str(*tp);
}

START_TEST(test_stop_split_across_tokens)
{
    static const char *const stops[] = {"STOP"};
    static const char *const toks[] = {"Hello ", "ST", "OP", " after", NULL};
    rec r;
    rt_text *t;
    ck_assert_str_eq(run(&t, stops, 1, 0, 0, toks, &r), "STOP");
    /* three bytes (the longest stop string less one) are held back until decided */
    ck_assert_str_eq(r.log, "[c:Hel][c:lo][c: ]");
    ck_assert_str_eq(r.content, "Hello ");
    rt_text_destroy(t);
}
END_TEST

START_TEST(test_stop_in_holdback_at_end)
{
    static const char *const stops[] = {"END!"};
    static const char *const toks[] = {"abcEN", NULL};
    rec r;
    rt_text *t;
    /* the stream ends while "EN" could still begin the stop string: the final release gives it out */
    ck_assert_str_eq(run(&t, stops, 1, 0, 0, toks, &r), "");
    ck_assert_str_eq(r.log, "[c:ab][c:cEN]");
    rt_text_destroy(t);
    /* the held-back bytes complete the stop string with the next token: they never reach the client */
    static const char *const toks2[] = {"abcEN", "D!", "zz", NULL};
    ck_assert_str_eq(run(&t, stops, 1, 0, 0, toks2, &r), "END!");
    ck_assert_str_eq(r.log, "[c:ab][c:c]");
    ck_assert_str_eq(r.content, "abc");
    rt_text_destroy(t);
    /* a stop string at the very start: no text at all, no delta */
    static const char *const stops3[] = {"Hi"};
    static const char *const toks3[] = {"Hi there", NULL};
    ck_assert_str_eq(run(&t, stops3, 1, 0, 0, toks3, &r), "Hi");
    ck_assert_str_eq(r.log, "");
    rt_text_destroy(t);
}
END_TEST

START_TEST(test_multiple_stops)
{
    /* the earliest match wins, whatever the order of the list */
    static const char *const stops[] = {"world", "lo w"};
    static const char *const toks[] = {"hello world", NULL};
    rec r;
    rt_text *t;
    ck_assert_str_eq(run(&t, stops, 2, 0, 0, toks, &r), "lo w");
    ck_assert_str_eq(r.log, "[c:hel]");
    rt_text_destroy(t);
    /* two matches at the same place: the first listed */
    static const char *const stops2[] = {"ab", "abc"};
    static const char *const toks2[] = {"xabc", NULL};
    ck_assert_str_eq(run(&t, stops2, 2, 0, 0, toks2, &r), "ab");
    ck_assert_str_eq(r.content, "x");
    rt_text_destroy(t);
    /* the hold-back follows the longest stop string (5 - 1 bytes), a short one still stops early */
    static const char *const stops3[] = {"Q", "12345"};
    static const char *const toks3[] = {"abcdefg", "hQi", NULL};
    ck_assert_str_eq(run(&t, stops3, 2, 0, 0, toks3, &r), "Q");
    ck_assert_str_eq(r.log, "[c:abc][c:defgh]");
    rt_text_destroy(t);
    /* no stop string matches: everything comes out, nothing held at the end */
    static const char *const toks4[] = {"a", "b", "c", NULL};
    ck_assert_str_eq(run(&t, stops, 2, 0, 0, toks4, &r), "");
    ck_assert_str_eq(r.log, "[c:abc]");
    rt_text_destroy(t);
}
END_TEST

START_TEST(test_utf8_cut)
{
    /* the hold-back never cuts inside a character: "€" (E2 82 AC) arrives in two tokens */
    static const char *const stops[] = {"xyz"};
    static const char *const toks[] = {"ab\xE2\x82", "\xAC", "cd", NULL};
    rec r;
    rt_text *t;
    ck_assert_str_eq(run(&t, stops, 1, 0, 0, toks, &r), "");
    ck_assert_str_eq(r.log, "[c:ab][c:\xE2\x82\xAC][c:cd]");
    rt_text_destroy(t);
    /* a stop string right after a multi-byte character */
    static const char *const stops2[] = {"\xC3\xA9!"};
    static const char *const toks2[] = {"caf\xC3", "\xA9", "!", NULL};
    ck_assert_str_eq(run(&t, stops2, 1, 0, 0, toks2, &r), "\xC3\xA9!");
    ck_assert_str_eq(r.content, "caf");
    rt_text_destroy(t);
    /* with nothing to hold back the pipeline releases what it was fed as it is (the detokenizer's pieces are
     * whole characters) */
    static const char *const toks3[] = {"a\xC3", "\xA9", NULL};
    ck_assert_str_eq(run(&t, NULL, 0, 0, 0, toks3, &r), "");
    ck_assert_str_eq(r.log, "[c:a\xC3][c:\xA9]");
    rt_text_destroy(t);
}
END_TEST

START_TEST(test_think_split_across_tokens)
{
    static const char *const toks[] = {"<th", "ink>", "reason", "ing</th", "ink>", "answer", NULL};
    rec r;
    rt_text *t;
    ck_assert_str_eq(run(&t, NULL, 0, 1, 0, toks, &r), "");
    /* "<th" is undecided; inside the block the bytes that could begin </think> wait */
    ck_assert_str_eq(r.log, "[r:reason][r:ing][c:answer]");
    ck_assert_str_eq(r.reasoning, "reasoning");
    ck_assert_str_eq(r.content, "answer");
    rt_text_destroy(t);
    /* the prompt opened the block (R1's generation prompt): reasoning, then content in one delta */
    static const char *const toks2[] = {"abc</think>def", NULL};
    ck_assert_str_eq(run(&t, NULL, 0, 1, 1, toks2, &r), "");
    ck_assert_str_eq(r.log, "[r:abc|c:def]");
    rt_text_destroy(t);
    /* the block never closes: the final release gives out the held-back reasoning */
    static const char *const toks3[] = {"<think>abcdefgh", NULL};
    ck_assert_str_eq(run(&t, NULL, 0, 1, 0, toks3, &r), "");
    ck_assert_str_eq(r.log, "[r:a][r:bcdefgh]");
    rt_text_destroy(t);
}
END_TEST

START_TEST(test_no_think)
{
    rec r;
    rt_text *t;
    /* a prefix of <think> that turns out otherwise is content */
    static const char *const toks[] = {"<t", "ext>", NULL};
    ck_assert_str_eq(run(&t, NULL, 0, 1, 0, toks, &r), "");
    ck_assert_str_eq(r.log, "[c:<text>]");
    rt_text_destroy(t);
    /* the output ends while still a prefix of <think>: content */
    static const char *const toks2[] = {"<th", NULL};
    ck_assert_str_eq(run(&t, NULL, 0, 1, 0, toks2, &r), "");
    ck_assert_str_eq(r.log, "[c:<th]");
    rt_text_destroy(t);
    /* <think> later in the output is content; completions (no split) never split */
    static const char *const toks3[] = {"a<think>b</think>c", NULL};
    ck_assert_str_eq(run(&t, NULL, 0, 1, 0, toks3, &r), "");
    ck_assert_str_eq(r.log, "[c:a<think>b</think>c]");
    rt_text_destroy(t);
    static const char *const toks4[] = {"<think>b</think>c", NULL};
    ck_assert_str_eq(run(&t, NULL, 0, 0, 0, toks4, &r), "");
    ck_assert_str_eq(r.log, "[c:<think>b</think>c]");
    ck_assert_str_eq(r.reasoning, "");
    rt_text_destroy(t);
}
END_TEST

START_TEST(test_stop_inside_reasoning)
{
    static const char *const stops[] = {"STOP"};
    static const char *const toks[] = {"<think>ab", "STOPcd", NULL};
    rec r;
    rt_text *t;
    ck_assert_str_eq(run(&t, stops, 1, 1, 0, toks, &r), "STOP");
    ck_assert_str_eq(r.log, "[r:ab]");
    ck_assert_str_eq(r.content, "");
    rt_text_destroy(t);
    /* a stop string in the content after the block */
    static const char *const toks2[] = {"<think>x</think>yySTOP", NULL};
    ck_assert_str_eq(run(&t, stops, 1, 1, 0, toks2, &r), "STOP");
    ck_assert_str_eq(r.log, "[r:x|c:yy]");
    rt_text_destroy(t);
}
END_TEST

START_TEST(test_aux_and_nomem)
{
    static const char *const stops[] = {"xyz"};
    rec r;
    memset(&r, 0, sizeof r);
    rt_text_params p = {.stops = stops, .n_stops = 1};
    rt_text_sink sink = {.delta_cb = sink_cb, .arg = &r};
    rt_text *t;
    ck_assert_int_eq(rt_text_create(&p, &sink, &t), PD_OK);
    int aux = 0, stopped = -1;
    /* everything is held back, but aux (the tokens' logprobs) still goes out, once, in a delta with no text */
    ck_assert_int_eq(rt_text_feed(t, "a", 1), PD_OK);
    ck_assert_int_eq(rt_text_release(t, 0, &aux, &stopped), PD_OK);
    ck_assert_int_eq(stopped, 0);
    ck_assert_int_eq(r.n_aux, 1);
    ck_assert_str_eq(r.log, "[]");
    /* nothing new, no aux: no delta */
    ck_assert_int_eq(rt_text_release(t, 0, NULL, &stopped), PD_OK);
    ck_assert_str_eq(r.log, "[]");
    /* the sink running out of memory is the release's answer */
    r.fail = 1;
    ck_assert_int_eq(rt_text_feed(t, "bcd", 3), PD_OK);
    ck_assert_int_eq(rt_text_release(t, 0, NULL, &stopped), PD_ERR_NOMEM);
    ck_assert_int_eq(rt_text_feed(t, "", 0), PD_OK);
    rt_text_destroy(t);
    rt_text_destroy(NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("router_text");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_stop_split_across_tokens);
    tcase_add_test(tc, test_stop_in_holdback_at_end);
    tcase_add_test(tc, test_multiple_stops);
    tcase_add_test(tc, test_utf8_cut);
    tcase_add_test(tc, test_think_split_across_tokens);
    tcase_add_test(tc, test_no_think);
    tcase_add_test(tc, test_stop_inside_reasoning);
    tcase_add_test(tc, test_aux_and_nomem);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
