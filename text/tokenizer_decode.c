/* Ids -> text: bytes of each token, concatenated, invalid UTF-8 replaced by U+FFFD (the maximal-subpart rule of
 * Rust's from_utf8_lossy and WHATWG's TextDecoder); the incremental detokenizer applies the same rule as bytes
 * arrive, holding at most an incomplete character. */
#include "text/tokenizer_internal.h"

#include <string.h>

/* ---- decode ---- */

typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static int buf_add(buf_t *b, const void *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return 0;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return 1;
}

static const uint8_t REPLACEMENT[3] = {0xEF, 0xBF, 0xBD};

/* Appends s[0..n) to out with invalid sequences replaced; when !final an incomplete tail is left unconsumed and
 * its length returned through *held. */
static int lossy_append(buf_t *out, const uint8_t *s, size_t n, int final, size_t *held)
{
    size_t i = 0, run = 0; /* run: start of the pending valid stretch */
    *held = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t l;
        u8_kind k = txt__utf8_step(s + i, n - i, &l);
        if (k == U8_VALID) {
            i += l;
            continue;
        }
        if (!buf_add(out, s + run, i - run)) return 0;
        if (k == U8_INCOMPLETE && !final) {
            *held = l;
            return 1;
        }
        if (!buf_add(out, REPLACEMENT, 3)) return 0;
        i += l;
        run = i;
    }
    return buf_add(out, s + run, i - run);
}

void txt__cleanup_spaces(char *s, size_t *n)
{
    static const char *const pats[][2] = {{" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
                                          {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"},
                                          {" 're", "'re"}};
    for (size_t p = 0; p < PD_ARRAY_LEN(pats); p++) {
        size_t fl = strlen(pats[p][0]), tl = strlen(pats[p][1]), o = 0;
        for (size_t i = 0; i < *n;) {
            if (i + fl <= *n && !memcmp(s + i, pats[p][0], fl)) {
                memcpy(s + o, pats[p][1], tl);
                o += tl;
                i += fl;
            } else s[o++] = s[i++];
        }
        *n = o;
        s[o] = 0;
    }
}

pd_status txt_tokenizer_decode(txt_tokenizer t, const int32_t *ids, size_t n, int skip_special, char **text,
                               size_t *len)
{
    buf_t raw = {0}, out = {0};
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->n_vocab) {
            pd_error("tokenizer: decode: id %d at position %zu is outside the vocabulary [0, %d)", ids[i], i,
                     t->n_vocab);
            free(raw.p);
            return PD_ERR_RANGE;
        }
        const tok_entry *e = &t->tokens[ids[i]];
        if (skip_special && (e->flags & TOK_SPECIAL)) continue;
        if (!buf_add(&raw, e->bytes ? e->bytes : "", e->nbytes)) goto fail_nomem;
    }
    size_t held;
    if (!lossy_append(&out, (const uint8_t *)(raw.p ? raw.p : ""), raw.n, 1, &held)) goto fail_nomem;
    if (!out.p && !buf_add(&out, "", 0)) goto fail_nomem;
    if (t->txt__cleanup_spaces) txt__cleanup_spaces(out.p, &out.n);
    free(raw.p);
    *text = out.p;
    *len = out.n;
    return PD_OK;

fail_nomem:
    pd_error("tokenizer: out of memory decoding %zu ids", n);
    free(raw.p);
    free(out.p);
    return PD_ERR_NOMEM;
}

/* ---- incremental detokenizer ---- */

struct txt_detok_s {
    txt_tokenizer t;
    int skip_special;
    uint8_t pend[8];
    size_t n_pend;
    buf_t in, out;
};

pd_status txt_detok_create(txt_tokenizer t, int skip_special, txt_detok *out)
{
    txt_detok d = calloc(1, sizeof *d);
    if (!d) {
        pd_error("tokenizer: out of memory creating a detokenizer");
        return PD_ERR_NOMEM;
    }
    d->t = t;
    d->skip_special = skip_special;
    *out = d;
    return PD_OK;
}

void txt_detok_destroy(txt_detok d)
{
    if (!d) return;
    free(d->in.p);
    free(d->out.p);
    free(d);
}

pd_status txt_detok_push(txt_detok d, int32_t id, const char **piece, size_t *len)
{
    if (id < 0 || id >= d->t->n_vocab) {
        pd_error("tokenizer: detokenizer: id %d is outside the vocabulary [0, %d)", id, d->t->n_vocab);
        return PD_ERR_RANGE;
    }
    const tok_entry *e = &d->t->tokens[id];
    d->in.n = 0;
    d->out.n = 0;
    if (!buf_add(&d->in, d->pend, d->n_pend) || !buf_add(&d->out, "", 0)) goto fail_nomem;
    if (!(d->skip_special && (e->flags & TOK_SPECIAL)) && !buf_add(&d->in, e->bytes ? e->bytes : "", e->nbytes))
        goto fail_nomem;
    size_t held;
    if (!lossy_append(&d->out, (const uint8_t *)d->in.p, d->in.n, 0, &held)) goto fail_nomem;
    memcpy(d->pend, d->in.p + d->in.n - held, held);
    d->n_pend = held;
    *piece = d->out.p;
    *len = d->out.n;
    return PD_OK;

fail_nomem:
    pd_error("tokenizer: out of memory in the detokenizer");
    return PD_ERR_NOMEM;
}

pd_status txt_detok_flush(txt_detok d, const char **piece, size_t *len)
{
    size_t held;
    d->out.n = 0;
    if (!buf_add(&d->out, "", 0) || !lossy_append(&d->out, d->pend, d->n_pend, 1, &held)) {
        pd_error("tokenizer: out of memory in the detokenizer");
        return PD_ERR_NOMEM;
    }
    d->n_pend = 0;
    *piece = d->out.p;
    *len = d->out.n;
    return PD_OK;
}
