/* The router's text pipeline (rt_text.h): raw output -> stop strings (held back until decided) -> reasoning split
 * -> deltas to the sink. Everything generated stays in raw; released and split_pos mark how far each stage got. */
#include <string.h>

#include "router/rt_text.h"

struct rt_text {
    rt_text_sink sink;
    const char *const *stops;
    int n_stops;
    size_t max_stop_len;
    int split_think;
    pd_buf raw;                   /* everything generated, as text (NUL-terminated from creation on) */
    size_t released;              /* raw bytes past the stop-string check */
    int in_think;                 /* inside <think> ... </think> */
    int open_checked;             /* whether the output opens with <think> is decided */
    size_t split_pos;             /* released bytes already split into reasoning/content */
    int stop;                     /* the stop string that ended it, or -1 */
};

static const char THINK_OPEN[] = "<think>", THINK_CLOSE[] = "</think>";

pd_status rt_text_create(const rt_text_params *p, const rt_text_sink *sink, rt_text **out)
{
    rt_text *t = calloc(1, sizeof *t);
    if (!t) return PD_ERR_NOMEM;
    t->sink = *sink;
    t->stops = p->stops;
    t->n_stops = p->n_stops;
    for (int i = 0; i < p->n_stops; i++) t->max_stop_len = PD_MAX(t->max_stop_len, strlen(p->stops[i]));
    t->split_think = p->split_think;
    t->stop = -1;
    if (p->in_think) {
        t->in_think = 1;
        t->open_checked = 1;
    }
    if (pd_buf_append(&t->raw, "", 0) != PD_OK) { /* the stages read raw before any text */
        free(t);
        return PD_ERR_NOMEM;
    }
    *out = t;
    return PD_OK;
}

void rt_text_destroy(rt_text *t)
{
    if (!t) return;
    pd_buf_free(&t->raw);
    free(t);
}

pd_status rt_text_feed(rt_text *t, const char *bytes, size_t n)
{
    return n ? pd_buf_append(&t->raw, bytes, n) : PD_OK;
}

const char *rt_text_stop_str(const rt_text *t)
{
    return t->stop >= 0 ? t->stops[t->stop] : "";
}

/* Largest k <= want such that buf[0..k) ends on a character boundary. */
static size_t char_boundary(const char *buf, size_t want)
{
    while (want > 0 && ((unsigned char)buf[want] & 0xC0) == 0x80) want--;
    return want;
}

/* Moves released raw text [split_pos, upto) into reasoning/content deltas; final: no more text follows. */
static pd_status split_and_emit(rt_text *t, size_t upto, int final, void *aux)
{
    const char *raw = t->raw.data, *rs = NULL, *cs = NULL;
    size_t rl = 0, cl = 0, pos = t->split_pos;
    const size_t open_n = sizeof THINK_OPEN - 1, close_n = sizeof THINK_CLOSE - 1;
    if (t->split_think && !t->open_checked) { /* output that starts with <think> opens a reasoning block */
        size_t have = upto - pos;
        if (have < open_n && !final && !strncmp(raw + pos, THINK_OPEN, have)) goto emit; /* undecided */
        t->open_checked = 1;
        if (have >= open_n && !strncmp(raw + pos, THINK_OPEN, open_n)) {
            t->in_think = 1;
            pos += open_n;
        }
    }
    if (t->in_think) {
        const char *end = strstr(raw + pos, THINK_CLOSE);
        if (end && (size_t)(end - raw) + close_n <= upto) {
            rs = raw + pos;
            rl = (size_t)(end - raw) - pos;
            pos = (size_t)(end - raw) + close_n;
            t->in_think = 0;
        } else {
            size_t safe = final ? upto : upto >= close_n - 1 ? upto - (close_n - 1) : 0;
            safe = char_boundary(raw, safe);
            if (safe > pos) {
                rs = raw + pos;
                rl = safe - pos;
                pos = safe;
            }
            goto emit;
        }
    }
    if (upto > pos) {
        cs = raw + pos;
        cl = upto - pos;
        pos = upto;
    }
emit:
    t->split_pos = pos;
    return rl || cl || aux ? t->sink.delta_cb(t->sink.arg, rs, rl, cs, cl, aux) : PD_OK;
}

pd_status rt_text_release(rt_text *t, int final, void *aux, int *stopped)
{
    size_t from = t->released;
    size_t best = (size_t)-1;
    int which = -1;
    for (int i = 0; i < t->n_stops; i++) {
        size_t sl = strlen(t->stops[i]);
        if (sl == 0) continue;
        size_t start = from >= sl - 1 ? from - (sl - 1) : 0;
        const char *hit = strstr(t->raw.data + start, t->stops[i]);
        if (hit && (size_t)(hit - t->raw.data) < best) {
            best = (size_t)(hit - t->raw.data);
            which = i;
        }
    }
    if (which >= 0) {
        t->raw.len = best; /* the stop string and what follows are not part of the output */
        t->raw.data[best] = '\0';
        t->stop = which;
        t->released = best;
        *stopped = 1;
        return split_and_emit(t, best, 1, aux);
    }
    size_t len = t->raw.len;
    size_t safe = final || t->max_stop_len == 0 ? len : len >= t->max_stop_len - 1 ? len - (t->max_stop_len - 1) : 0;
    safe = char_boundary(t->raw.data, safe);
    if (safe < t->released) safe = t->released;
    t->released = safe;
    *stopped = 0;
    return split_and_emit(t, safe, final, aux);
}
