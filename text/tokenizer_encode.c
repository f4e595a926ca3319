/* Text -> ids. Added tokens are cut out of the text first (longest match, lstrip/rstrip/single_word as HF), each
 * remaining section goes depth-first through the pre-tokenizer's steps (PCRE2-JIT regex splits), each final piece
 * through byte-level BPE on token ids (pair ranks in an array for short pieces, a heap for long ones). */
#include "text/tokenizer_internal.h"

#include <limits.h>
#include <string.h>

/* ---- per-call encode state ---- */

typedef struct {
    size_t start, end;
    int delim;
} segment;

typedef struct {
    segment *v;
    size_t n, cap;
} seg_vec;

typedef struct {
    int32_t rank, pos, id;
} heap_item;

typedef struct {
    const struct txt_tokenizer_s *t;
    int32_t *ids;
    size_t n_ids, cap_ids;
    seg_vec *segs;              /* one per pre-tokenizer step */
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jstack;
    /* BPE scratch */
    int32_t *sym, *rank, *mid, *prev, *next;
    size_t sym_cap;
    heap_item *heap;
    size_t heap_cap;
    char *pfx;                  /* piece with a prefix space (ByteLevel add_prefix_space) */
    size_t pfx_cap;
    pd_status st;
} enc_ctx;

static int push_id(enc_ctx *c, int32_t id)
{
    if (c->n_ids == c->cap_ids) {
        size_t cap = c->cap_ids ? c->cap_ids * 2 : 256;
        int32_t *p = realloc(c->ids, cap * sizeof *p);
        if (!p) return 0;
        c->ids = p;
        c->cap_ids = cap;
    }
    c->ids[c->n_ids++] = id;
    return 1;
}

static int seg_push(seg_vec *v, size_t s, size_t e, int delim)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        segment *p = realloc(v->v, cap * sizeof *p);
        if (!p) return 0;
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = (segment){s, e, delim};
    return 1;
}

static int bpe_reserve(enc_ctx *c, size_t n)
{
    if (n <= c->sym_cap) return 1;
    size_t cap = c->sym_cap ? c->sym_cap : 64;
    while (cap < n) cap *= 2;
    int32_t **arrs[] = {&c->sym, &c->rank, &c->mid, &c->prev, &c->next};
    for (size_t k = 0; k < PD_ARRAY_LEN(arrs); k++) {
        int32_t *p = realloc(*arrs[k], cap * sizeof *p);
        if (!p) return 0;
        *arrs[k] = p;
    }
    heap_item *h = realloc(c->heap, 2 * cap * sizeof *h);
    if (!h) return 0;
    c->heap = h;
    c->heap_cap = 2 * cap;
    c->sym_cap = cap;
    return 1;
}

static inline int heap_less(heap_item a, heap_item b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }

static void heap_push(heap_item *h, size_t *n, heap_item x)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less(x, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static heap_item heap_pop(heap_item *h, size_t *n)
{
    heap_item top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        heap_item best = x;
        if (l < *n && heap_less(h[l], best)) m = l, best = h[l];
        if (r < *n && heap_less(h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = x;
    return top;
}

/* BPE of one pre-tokenized piece (raw bytes), appending ids. Merges the lowest-ranked adjacent pair, leftmost
 * first, until none applies: HF's and transformers.js's order. */
static int bpe_piece(enc_ctx *c, const uint8_t *s, size_t n)
{
    const struct txt_tokenizer_s *t = c->t;
    if (n == 0) return 1;
    if (n == 1) return push_id(c, t->byte_id[s[0]]);
    if (t->ignore_merges) {
        /* Whole piece in the vocabulary wins (Llama-3 style); the lookup needs the byte-level form. */
        int32_t id = -1;
        if (n <= 256) {
            uint32_t b2c[256];
            txt__byte_level_tables(b2c);
            uint8_t buf[512];
            size_t k = 0;
            for (size_t i = 0; i < n; i++) k += txt__utf8_encode(b2c[s[i]], buf + k);
            id = txt__strmap_get(&t->by_str, (const char *)buf, k);
        }
        if (id >= 0) return push_id(c, id);
    }
    if (!bpe_reserve(c, n)) return 0;
    int32_t *sym = c->sym, *rank = c->rank, *mid = c->mid;
    for (size_t i = 0; i < n; i++) sym[i] = t->byte_id[s[i]];
    if (n <= 48) {
        /* Short piece: ranks of adjacent pairs in an array, linear scan for the minimum. */
        size_t m = n;
        for (size_t i = 0; i + 1 < m; i++) rank[i] = merge_get(t, sym[i], sym[i + 1], &mid[i]);
        while (m > 1) {
            size_t best = 0;
            int32_t br = rank[0];
            for (size_t i = 1; i + 1 < m; i++)
                if (rank[i] < br) br = rank[i], best = i;
            if (br == INT_MAX) break;
            sym[best] = mid[best];
            memmove(sym + best + 1, sym + best + 2, (m - best - 2) * sizeof *sym);
            if (m >= best + 3) {
                memmove(rank + best + 1, rank + best + 2, (m - best - 3) * sizeof *rank);
                memmove(mid + best + 1, mid + best + 2, (m - best - 3) * sizeof *mid);
            }
            m--;
            if (best > 0) rank[best - 1] = merge_get(t, sym[best - 1], sym[best], &mid[best - 1]);
            if (best + 1 < m) rank[best] = merge_get(t, sym[best], sym[best + 1], &mid[best]);
        }
        for (size_t i = 0; i < m; i++)
            if (!push_id(c, sym[i])) return 0;
        return 1;
    }
    /* Long piece: linked symbols and a heap of candidate merges (HF's word.rs). */
    int32_t *prev = c->prev, *next = c->next;
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        prev[i] = (int32_t)i - 1;
        next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t id = -1, r = merge_get(t, sym[i], sym[i + 1], &id);
        if (r != INT_MAX) heap_push(c->heap, &hn, (heap_item){r, (int32_t)i, id});
    }
    while (hn) {
        heap_item h = heap_pop(c->heap, &hn);
        int32_t p = h.pos;
        if (sym[p] < 0 || next[p] < 0) continue;
        int32_t q = next[p], id = -1;
        if (merge_get(t, sym[p], sym[q], &id) != h.rank || id != h.id) continue;
        sym[p] = h.id;
        sym[q] = -1;
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = p;
        PD_ASSERT(hn + 2 <= c->heap_cap); /* n-1 initial pairs, then net +1 per merge: at most 2n-2 */
        if (prev[p] >= 0) {
            int32_t r = merge_get(t, sym[prev[p]], sym[p], &id);
            if (r != INT_MAX) heap_push(c->heap, &hn, (heap_item){r, prev[p], id});
        }
        if (next[p] >= 0) {
            int32_t r = merge_get(t, sym[p], sym[next[p]], &id);
            if (r != INT_MAX) heap_push(c->heap, &hn, (heap_item){r, p, id});
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i])
        if (!push_id(c, sym[i])) return 0;
    return 1;
}

/* Runs the matches of one regex step over s[0..n), filling v with segments (offsets relative to s). */
static int regex_segments(enc_ctx *c, const pretok_step *ps, const char *s, size_t n, seg_vec *v)
{
    v->n = 0;
    size_t pos = 0, prev_end = 0;
    while (pos <= n) {
        int rc = ps->jit ? pcre2_jit_match(ps->re, (PCRE2_SPTR)s, n, pos, 0, c->md, c->mctx)
                         : pcre2_match(ps->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, c->md, c->mctx);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !c->jstack) {
            c->jstack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, NULL);
            if (!c->jstack) return 0;
            pcre2_jit_stack_assign(c->mctx, NULL, c->jstack);
            continue;
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            pd_error("tokenizer: pre-tokenizer regex failed: %s", (char *)msg);
            c->st = PD_ERR_INTERNAL;
            return 0;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (ms > prev_end && !seg_push(v, prev_end, ms, ps->invert)) return 0;
        if (me > ms) {
            if (!seg_push(v, ms, me, !ps->invert)) return 0;
            prev_end = me;
            pos = me;
        } else {
            /* Empty match: no piece; step over one character. */
            if (ms >= n) break;
            size_t l = 1;
            while (ms + l < n && ((uint8_t)s[ms + l] & 0xC0) == 0x80) l++;
            pos = ms + l;
        }
    }
    if (prev_end < n && !seg_push(v, prev_end, n, ps->invert)) return 0;
    return 1;
}

/* Applies HF's SplitDelimiterBehavior to v in place. */
static void apply_behavior(split_behavior b, seg_vec *v)
{
    size_t o = 0;
    int prev_delim = 0;
    for (size_t i = 0; i < v->n; i++) {
        segment sg = v->v[i];
        switch (b) {
        case SPLIT_ISOLATED: v->v[o++] = sg; break;
        case SPLIT_REMOVED:
            if (!sg.delim) v->v[o++] = sg;
            break;
        case SPLIT_MERGED_PREV:
            if (sg.delim && !prev_delim && o > 0) v->v[o - 1].end = sg.end;
            else v->v[o++] = sg;
            break;
        case SPLIT_CONTIGUOUS:
            if (sg.delim == prev_delim && o > 0) v->v[o - 1].end = sg.end;
            else v->v[o++] = sg;
            break;
        case SPLIT_MERGED_NEXT: v->v[o++] = sg; break;
        }
        prev_delim = sg.delim;
    }
    v->n = o;
    if (b == SPLIT_MERGED_NEXT) {
        /* Right to left: a delimiter joins the piece after it. */
        size_t w = v->n;
        int next_delim = 0;
        for (size_t i = v->n; i-- > 0;) {
            segment sg = v->v[i];
            if (sg.delim && !next_delim && w < v->n) v->v[w].start = sg.start;
            else v->v[--w] = sg;
            next_delim = sg.delim;
        }
        memmove(v->v, v->v + w, (v->n - w) * sizeof *v->v);
        v->n -= w;
    }
}

static int pretok_run(enc_ctx *c, int step, const char *s, size_t n)
{
    const struct txt_tokenizer_s *t = c->t;
    if (n == 0) return 1;
    if (step == t->n_steps) {
        if (t->prefix_space && s[0] != ' ') {
            if (n + 1 > c->pfx_cap) {
                char *p = realloc(c->pfx, n + 1);
                if (!p) return 0;
                c->pfx = p;
                c->pfx_cap = n + 1;
            }
            c->pfx[0] = ' ';
            memcpy(c->pfx + 1, s, n);
            return bpe_piece(c, (const uint8_t *)c->pfx, n + 1);
        }
        return bpe_piece(c, (const uint8_t *)s, n);
    }
    const pretok_step *ps = &t->steps[step];
    seg_vec *v = &c->segs[step];
    if (!regex_segments(c, ps, s, n, v)) return 0;
    apply_behavior(ps->behavior, v);
    for (size_t i = 0; i < v->n; i++) {
        segment sg = v->v[i];
        if (!pretok_run(c, step + 1, s + sg.start, sg.end - sg.start)) return 0;
    }
    return 1;
}

/* Longest added token starting at s[0..n); -1 when none. */
static int added_match(const struct txt_tokenizer_s *t, const uint8_t *s, size_t n, int split_special, size_t *mlen)
{
    int best = -1;
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t ch = t->trie[node].child;
        while (ch >= 0 && t->trie[ch].byte != s[i]) ch = t->trie[ch].sibling;
        if (ch < 0) break;
        node = ch;
        int term = t->trie[node].term;
        if (term >= 0 && !(split_special && t->added[term].special)) {
            best = term;
            *mlen = i + 1;
        }
    }
    return best;
}

static int is_word_byte_at_end(const uint8_t *s, size_t n)
{
    if (!n) return 0;
    uint8_t b = s[n - 1];
    return (b >= '0' && b <= '9') || (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z') || b == '_' || b >= 0x80;
}

static void enc_ctx_free(enc_ctx *c)
{
    free(c->ids);
    if (c->segs)
        for (int i = 0; i < c->t->n_steps; i++) free(c->segs[i].v);
    free(c->segs);
    pcre2_match_data_free(c->md);
    pcre2_match_context_free(c->mctx);
    pcre2_jit_stack_free(c->jstack);
    free(c->sym), free(c->rank), free(c->mid), free(c->prev), free(c->next), free(c->heap), free(c->pfx);
}

/* Trims whitespace at the end (dir < 0) or start (dir > 0) of [*s, *e). */
static void trim_ws(const uint8_t *base, size_t *s, size_t *e, int dir)
{
    if (dir > 0) {
        while (*s < *e) {
            uint32_t cp;
            size_t l = txt__utf8_decode(base + *s, &cp);
            if (!txt__is_white_space(cp)) break;
            *s += l;
        }
    } else {
        while (*e > *s) {
            size_t k = *e - 1;
            while (k > *s && (base[k] & 0xC0) == 0x80) k--;
            uint32_t cp;
            txt__utf8_decode(base + k, &cp);
            if (!txt__is_white_space(cp)) break;
            *e = k;
        }
    }
}

pd_status txt_tokenizer_encode(txt_tokenizer t, const char *text, size_t len, unsigned flags, int32_t **ids,
                               size_t *n_ids)
{
    const uint8_t *s = (const uint8_t *)text;
    if (!t || (!text && len)) {
        pd_error("tokenizer: encode called without a tokenizer or text");
        return PD_ERR_INVALID;
    }
    size_t ok = txt__utf8_valid_prefix(s, len);
    if (ok != len) {
        pd_error("tokenizer: input is not valid UTF-8 (byte 0x%02x at offset %zu)", s[ok], ok);
        return PD_ERR_INVALID;
    }
    enc_ctx c;
    memset(&c, 0, sizeof c);
    c.t = t;
    c.st = PD_ERR_NOMEM;
    c.segs = calloc((size_t)t->n_steps + 1, sizeof *c.segs);
    c.md = pcre2_match_data_create(1, NULL);
    c.mctx = pcre2_match_context_create(NULL);
    if (!c.segs || !c.md || !c.mctx) goto fail_ctx;
    if ((flags & TXT_ENCODE_ADD_BOS) && t->bos >= 0 && !push_id(&c, t->bos)) goto fail_ctx;

    int split_special = (flags & TXT_ENCODE_SPLIT_SPECIAL) != 0;
    size_t sec = 0, pos = 0;
    int rstrip_pending = 0;
    while (pos < len) {
        if (!t->trie_first[s[pos]]) {
            pos++;
            continue;
        }
        size_t mlen = 0;
        int a = added_match(t, s + pos, len - pos, split_special, &mlen);
        if (a >= 0 && t->added[a].single_word &&
            (is_word_byte_at_end(s, pos) || (pos + mlen < len && is_word_byte_at_end(s + pos + mlen, 1))))
            a = -1;
        if (a < 0) {
            pos++;
            continue;
        }
        size_t ss = sec, se = pos;
        if (rstrip_pending) trim_ws(s, &ss, &se, 1);
        if (t->added[a].lstrip) trim_ws(s, &ss, &se, -1);
        if (!pretok_run(&c, 0, text + ss, se - ss)) goto fail_ctx;
        if (!push_id(&c, t->added[a].id)) goto fail_ctx;
        rstrip_pending = t->added[a].rstrip;
        pos += mlen;
        sec = pos;
    }
    size_t ss = sec, se = len;
    if (rstrip_pending) trim_ws(s, &ss, &se, 1);
    if (!pretok_run(&c, 0, text + ss, se - ss)) goto fail_ctx;

    if (!c.ids && !(c.ids = malloc(sizeof *c.ids))) goto fail_ctx;
    *ids = c.ids;
    *n_ids = c.n_ids;
    c.ids = NULL;
    enc_ctx_free(&c);
    return PD_OK;

fail_ctx:
    if (c.st == PD_ERR_NOMEM) pd_error("tokenizer: out of memory encoding %zu bytes", len);
    pd_status st = c.st;
    enc_ctx_free(&c);
    return st;
}
