/* The router's text pipeline for one choice: the detokenized bytes of each token go in; stop strings are applied
 * (bytes that could still begin one are held back until decided), then chat output is split into reasoning
 * (<think> ... </think>) and content; the released text leaves as deltas to a sink. No I/O, no HTTP, no SSE. */
#ifndef RT_TEXT_H
#define RT_TEXT_H

#include <stddef.h>

#include "common/pd_common.h"

typedef struct rt_text rt_text;

/* One delta: reasoning and content bytes (either may be empty) and aux as given to rt_text_release. Where the
 * pipeline holds bytes back it cuts on a UTF-8 character boundary; what it releases whole (final, or with nothing
 * to hold back) ends where the fed bytes end, which is on a boundary when they come from the incremental
 * detokenizer (it never splits a character). Called on the caller's thread from inside
 * rt_text_release, never re-entrantly. PD_ERR_NOMEM when the sink could not keep the text: rt_text_release
 * returns it. */
typedef pd_status (*rt_text_delta_cb)(void *arg, const char *reasoning, size_t rlen, const char *content, size_t clen,
                                      void *aux);

typedef struct {
    rt_text_delta_cb delta_cb;
    void *arg;
} rt_text_sink;

typedef struct {
    const char *const *stops;     /* stop strings (not copied: they outlive the rt_text); empty ones never match */
    int n_stops;
    int split_think;              /* chat: output that opens with <think> is reasoning up to </think> */
    int in_think;                 /* the prompt opened the reasoning block already (R1's generation prompt) */
} rt_text_params;

/* PD_OK: *out is a pipeline with no text yet. PD_ERR_NOMEM otherwise (*out untouched). */
pd_status rt_text_create(const rt_text_params *p, const rt_text_sink *sink, rt_text **out);
/* NULL is fine. */
void rt_text_destroy(rt_text *t);
/* Appends one token's detokenized bytes (any bytes). PD_ERR_NOMEM: nothing was appended. Emits nothing. */
pd_status rt_text_feed(rt_text *t, const char *bytes, size_t n);
/* Runs the stop strings over the text fed so far and releases what is decided: all of it when final (no more text
 * follows), else all but the bytes that could begin a stop string or </think>, cut on a character boundary. The
 * earliest stop string found ends the text there (it and what follows are dropped): *stopped = 1 and
 * rt_text_stop_str names it. The sink gets one delta when there is text to give or aux is not NULL (aux is handed
 * to it exactly once then, to own). PD_ERR_NOMEM when the sink returned it. */
pd_status rt_text_release(rt_text *t, int final, void *aux, int *stopped);
/* The stop string that ended the text, or "" while none did. */
const char *rt_text_stop_str(const rt_text *t);

#endif
