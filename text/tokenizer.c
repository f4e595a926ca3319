/* tokenizer.json -> txt_tokenizer, and text <-> ids. Encode: added tokens are cut out of the text first (longest
 * match, lstrip/rstrip/single_word as HF), each remaining section goes depth-first through the pre-tokenizer's
 * steps (PCRE2-JIT regex splits), each final piece through byte-level BPE on token ids. Decode: bytes of each
 * token, concatenated, invalid UTF-8 replaced by U+FFFD (the maximal-subpart rule of Rust's from_utf8_lossy and
 * WHATWG's TextDecoder); the incremental detokenizer applies the same rule as bytes arrive. */
#include "text/txt_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cJSON.h>
#include <pcre2.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>

#define TOK_PRESENT 1u
#define TOK_ADDED 2u
#define TOK_SPECIAL 4u

/* One vocabulary entry. */
typedef struct {
    char *str;        /* as in tokenizer.json (byte-level form for BPE tokens), NUL-terminated */
    char *bytes;      /* what it decodes to: the raw bytes behind the byte-level form, or an added token's content */
    uint32_t nbytes;
    uint8_t flags;
    char *vocab_str;  /* the vocab's own string for this id when an added token replaced it (a by_str key) */
} tok_entry;

typedef struct {
    int32_t id;
    uint8_t lstrip, rstrip, single_word, special;
    const char *content; /* == tokens[id].str */
    size_t len;
} added_token;

/* Open-addressing map from a byte string to an id. */
typedef struct {
    const char *s;
    uint32_t len;
    int32_t id;
} strmap_slot;
typedef struct {
    strmap_slot *slots;
    size_t mask;
} strmap;

/* Open-addressing map from a pair of ids to (rank, merged id). */
typedef struct {
    uint64_t key;
    int32_t rank;
    int32_t id;
} merge_slot;
#define MERGE_EMPTY UINT64_MAX

/* Byte trie of the added tokens' contents. */
typedef struct {
    int32_t child, sibling, term; /* term: index in added[] or -1 */
    uint8_t byte;
} trie_node;

typedef enum { SPLIT_ISOLATED, SPLIT_REMOVED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS } split_behavior;

typedef struct {
    pcre2_code *re;
    int jit;
    split_behavior behavior;
    int invert;
} pretok_step;

struct txt_tokenizer_s {
    int n_vocab;
    tok_entry *tokens;       /* [n_vocab] */
    strmap by_str;           /* tokenizer.json form / added content -> id */
    merge_slot *merges;      /* [merge_mask + 1] */
    size_t merge_mask;
    int32_t byte_id[256];    /* id of each single byte's token */
    int ignore_merges;
    added_token *added;
    int n_added;
    trie_node *trie;
    int n_trie;
    uint8_t trie_first[256]; /* bytes an added token can start with */
    pretok_step *steps;
    int n_steps;
    int prefix_space;        /* ByteLevel add_prefix_space */
    int32_t bos, eos;
    char *bos_str, *eos_str;
    int add_bos;
    int cleanup_spaces;
};

/* ---- errors ---- */

#define fail(err, errlen, st, ...) PD_FAIL(err, errlen, st, "tokenizer", __VA_ARGS__)

/* ---- UTF-8 ---- */

/* Length of the valid UTF-8 prefix of s (== n when all of it is valid). */
static size_t utf8_valid_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, s + i, 8);
            if (!(w & 0x8080808080808080ull)) {
                i += 8;
                continue;
            }
        }
        uint8_t b = s[i];
        if (b < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (b >= 0xC2 && b <= 0xDF) need = 1;
        else if (b == 0xE0) need = 2, lo = 0xA0;
        else if (b == 0xED) need = 2, hi = 0x9F;
        else if (b >= 0xE1 && b <= 0xEF) need = 2;
        else if (b == 0xF0) need = 3, lo = 0x90;
        else if (b == 0xF4) need = 3, hi = 0x8F;
        else if (b >= 0xF1 && b <= 0xF3) need = 3;
        else return i;
        if (i + need >= n) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += need + 1;
    }
    return n;
}

typedef enum { U8_VALID, U8_INVALID, U8_INCOMPLETE } u8_kind;

/* Classifies the sequence at s[0..n) (n >= 1): a valid character of *len bytes, an invalid maximal subpart of
 * *len bytes (one U+FFFD), or an incomplete but so far valid prefix of all n bytes. */
static u8_kind utf8_step(const uint8_t *s, size_t n, size_t *len)
{
    uint8_t b = s[0];
    if (b < 0x80) {
        *len = 1;
        return U8_VALID;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b == 0xE0) need = 2, lo = 0xA0;
    else if (b == 0xED) need = 2, hi = 0x9F;
    else if (b >= 0xE1 && b <= 0xEF) need = 2;
    else if (b == 0xF0) need = 3, lo = 0x90;
    else if (b == 0xF4) need = 3, hi = 0x8F;
    else if (b >= 0xF1 && b <= 0xF3) need = 3;
    else {
        *len = 1;
        return U8_INVALID;
    }
    for (size_t k = 1; k <= need; k++) {
        if (k >= n) {
            *len = n;
            return U8_INCOMPLETE;
        }
        uint8_t c = s[k];
        if (k == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80) {
            *len = k;
            return U8_INVALID;
        }
    }
    *len = need + 1;
    return U8_VALID;
}

/* Decodes the character at s (valid UTF-8, n >= 1 bytes available); returns its length. */
static size_t utf8_decode(const uint8_t *s, uint32_t *cp)
{
    if (s[0] < 0x80) return *cp = s[0], 1;
    if (s[0] < 0xE0) return *cp = (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F), 2;
    if (s[0] < 0xF0) return *cp = (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F), 3;
    *cp = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    return 4;
}

static size_t utf8_encode(uint32_t c, uint8_t *o)
{
    if (c < 0x80) return o[0] = (uint8_t)c, 1;
    if (c < 0x800) return o[0] = (uint8_t)(0xC0 | c >> 6), o[1] = (uint8_t)(0x80 | (c & 63)), 2;
    if (c < 0x10000)
        return o[0] = (uint8_t)(0xE0 | c >> 12), o[1] = (uint8_t)(0x80 | ((c >> 6) & 63)), o[2] = (uint8_t)(0x80 | (c & 63)), 3;
    o[0] = (uint8_t)(0xF0 | c >> 18), o[1] = (uint8_t)(0x80 | ((c >> 12) & 63));
    o[2] = (uint8_t)(0x80 | ((c >> 6) & 63)), o[3] = (uint8_t)(0x80 | (c & 63));
    return 4;
}

/* Unicode White_Space (what Rust's char::is_whitespace tests, used by HF for lstrip/rstrip). */
static int is_white_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---- byte-level alphabet (GPT-2's bytes_to_unicode) ---- */

static void byte_level_tables(uint32_t byte_to_cp[256])
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) byte_to_cp[b] = (uint32_t)b;
        else byte_to_cp[b] = 256u + (uint32_t)n++;
    }
}

static int cp_to_byte(const uint32_t byte_to_cp[256], uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255)) return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    for (int b = 0; b < 256; b++)
        if (byte_to_cp[b] == cp) return b;
    return -1;
}

/* ---- maps ---- */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

static int strmap_init(strmap *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    m->slots = calloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    return m->slots != NULL;
}

/* Inserts or overwrites (later definitions win, as in HF). */
static void strmap_put(strmap *m, const char *s, size_t len, int32_t id)
{
    size_t i = hash_bytes(s, len) & m->mask;
    while (m->slots[i].s) {
        if (m->slots[i].len == len && !memcmp(m->slots[i].s, s, len)) {
            m->slots[i].id = id;
            m->slots[i].s = s;
            return;
        }
        i = (i + 1) & m->mask;
    }
    m->slots[i] = (strmap_slot){s, (uint32_t)len, id};
}

static int32_t strmap_get(const strmap *m, const char *s, size_t len)
{
    size_t i = hash_bytes(s, len) & m->mask;
    while (m->slots[i].s) {
        if (m->slots[i].len == len && !memcmp(m->slots[i].s, s, len)) return m->slots[i].id;
        i = (i + 1) & m->mask;
    }
    return -1;
}

static inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }
static inline size_t pair_hash(uint64_t k, size_t mask) { return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 32) & mask; }

static void merge_put(txt_tokenizer t, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k, t->merge_mask);
    while (t->merges[i].key != MERGE_EMPTY && t->merges[i].key != k) i = (i + 1) & t->merge_mask;
    t->merges[i] = (merge_slot){k, rank, id};
}

/* Rank of merging (a, b), INT_MAX when they do not merge; *id gets the merged token. */
static inline int32_t merge_get(const struct txt_tokenizer_s *t, int32_t a, int32_t b, int32_t *id)
{
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k, t->merge_mask);
    for (;;) {
        const merge_slot *s = &t->merges[i];
        if (s->key == k) {
            *id = s->id;
            return s->rank;
        }
        if (s->key == MERGE_EMPTY) return INT_MAX;
        i = (i + 1) & t->merge_mask;
    }
}

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
            byte_level_tables(b2c);
            uint8_t buf[512];
            size_t k = 0;
            for (size_t i = 0; i < n; i++) k += utf8_encode(b2c[s[i]], buf + k);
            id = strmap_get(&t->by_str, (const char *)buf, k);
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
            size_t l = utf8_decode(base + *s, &cp);
            if (!is_white_space(cp)) break;
            *s += l;
        }
    } else {
        while (*e > *s) {
            size_t k = *e - 1;
            while (k > *s && (base[k] & 0xC0) == 0x80) k--;
            uint32_t cp;
            utf8_decode(base + k, &cp);
            if (!is_white_space(cp)) break;
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
    size_t ok = utf8_valid_prefix(s, len);
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
        u8_kind k = utf8_step(s + i, n - i, &l);
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

static void cleanup_spaces(char *s, size_t *n)
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
    if (t->cleanup_spaces) cleanup_spaces(out.p, &out.n);
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

/* ---- accessors ---- */

int txt_tokenizer_vocab_size(txt_tokenizer t) { return t->n_vocab; }
int32_t txt_tokenizer_bos(txt_tokenizer t) { return t->bos; }
int32_t txt_tokenizer_eos(txt_tokenizer t) { return t->eos; }
int txt_tokenizer_add_bos_default(txt_tokenizer t) { return t->add_bos; }
const char *txt_tokenizer_bos_str(txt_tokenizer t) { return t->bos_str ? t->bos_str : ""; }
const char *txt_tokenizer_eos_str(txt_tokenizer t) { return t->eos_str ? t->eos_str : ""; }

int txt_tokenizer_is_special(txt_tokenizer t, int32_t id)
{
    return id >= 0 && id < t->n_vocab && (t->tokens[id].flags & TOK_SPECIAL) != 0;
}

const char *txt_tokenizer_token_str(txt_tokenizer t, int32_t id)
{
    if (id < 0 || id >= t->n_vocab || !(t->tokens[id].flags & TOK_PRESENT)) return NULL;
    return t->tokens[id].str;
}

int32_t txt_tokenizer_token_id(txt_tokenizer t, const char *token_text)
{
    return token_text ? strmap_get(&t->by_str, token_text, strlen(token_text)) : -1;
}

/* ---- load ---- */

void txt_tokenizer_destroy(txt_tokenizer t)
{
    if (!t) return;
    if (t->tokens)
        for (int i = 0; i < t->n_vocab; i++) {
            if (t->tokens[i].bytes != t->tokens[i].str) free(t->tokens[i].bytes);
            free(t->tokens[i].str);
            free(t->tokens[i].vocab_str);
        }
    free(t->tokens);
    free(t->by_str.slots);
    free(t->merges);
    free(t->added);
    free(t->trie);
    for (int i = 0; i < t->n_steps; i++) pcre2_code_free(t->steps[i].re);
    free(t->steps);
    free(t->bos_str);
    free(t->eos_str);
    free(t);
}

static int json_bool(const cJSON *o, const char *k, int def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : def;
}

static const char *json_str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static pd_status add_regex_step(txt_tokenizer t, const char *pattern, int literal, split_behavior b, int invert,
                                char *err, size_t errlen)
{
    pretok_step *p = realloc(t->steps, (size_t)(t->n_steps + 1) * sizeof *p);
    if (!p) return fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    t->steps = p;
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP), &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return fail(err, errlen, PD_ERR_UNSUPPORTED, "pre_tokenizer regex '%s' is not supported (%s at offset %zu)",
                    pattern, (char *)msg, (size_t)eo);
    }
    int jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    if (!jit) pd_warn("tokenizer: PCRE2 JIT unavailable for '%s'; using the interpreter", pattern);
    t->steps[t->n_steps++] = (pretok_step){re, jit, b, invert};
    return PD_OK;
}

static pd_status parse_pretok(txt_tokenizer t, const cJSON *pt, int *saw_byte_level, char *err, size_t errlen)
{
    if (!pt || cJSON_IsNull(pt)) return PD_OK;
    const char *type = json_str(pt, "type");
    if (!type) return fail(err, errlen, PD_ERR_FORMAT, "pre_tokenizer without a 'type'");
    if (*saw_byte_level)
        return fail(err, errlen, PD_ERR_UNSUPPORTED, "pre_tokenizer '%s' after ByteLevel is not supported", type);
    if (!strcmp(type, "Sequence")) {
        const cJSON *arr = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers"), *x;
        if (!cJSON_IsArray(arr)) return fail(err, errlen, PD_ERR_FORMAT, "pre_tokenizer Sequence without a list");
        cJSON_ArrayForEach(x, arr)
        {
            pd_status st = parse_pretok(t, x, saw_byte_level, err, errlen);
            if (st != PD_OK) return st;
        }
        return PD_OK;
    }
    if (!strcmp(type, "Split")) {
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(pt, "pattern");
        const char *rx = json_str(pat, "Regex"), *lit = json_str(pat, "String");
        const char *beh = json_str(pt, "behavior");
        split_behavior b;
        if (!rx && !lit) return fail(err, errlen, PD_ERR_FORMAT, "pre_tokenizer Split without a Regex or String pattern");
        if (!beh) return fail(err, errlen, PD_ERR_FORMAT, "pre_tokenizer Split without a 'behavior'");
        if (!strcmp(beh, "Isolated")) b = SPLIT_ISOLATED;
        else if (!strcmp(beh, "Removed")) b = SPLIT_REMOVED;
        else if (!strcmp(beh, "MergedWithPrevious")) b = SPLIT_MERGED_PREV;
        else if (!strcmp(beh, "MergedWithNext")) b = SPLIT_MERGED_NEXT;
        else if (!strcmp(beh, "Contiguous")) b = SPLIT_CONTIGUOUS;
        else return fail(err, errlen, PD_ERR_UNSUPPORTED, "pre_tokenizer Split behavior '%s' is not supported", beh);
        return add_regex_step(t, rx ? rx : lit, !rx, b, json_bool(pt, "invert", 0), err, errlen);
    }
    if (!strcmp(type, "ByteLevel")) {
        *saw_byte_level = 1;
        t->prefix_space = json_bool(pt, "add_prefix_space", 0);
        if (json_bool(pt, "use_regex", 1)) return add_regex_step(t, GPT2_PATTERN, 0, SPLIT_ISOLATED, 0, err, errlen);
        return PD_OK;
    }
    return fail(err, errlen, PD_ERR_UNSUPPORTED, "pre_tokenizer type '%s' is not supported (Sequence, Split, ByteLevel)",
                type);
}

static pd_status check_normalizer(const cJSON *n, char *err, size_t errlen)
{
    if (!n || cJSON_IsNull(n)) return PD_OK;
    const char *type = json_str(n, "type");
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *x, *arr = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        cJSON_ArrayForEach(x, arr)
        {
            pd_status st = check_normalizer(x, err, errlen);
            if (st != PD_OK) return st;
        }
        return PD_OK;
    }
    return fail(err, errlen, PD_ERR_UNSUPPORTED, "normalizer '%s' is not supported (null or an empty Sequence)",
                type ? type : "?");
}

static pd_status check_decoder(const cJSON *d, char *err, size_t errlen)
{
    const char *type = json_str(d, "type");
    if (type && !strcmp(type, "ByteLevel")) return PD_OK;
    if (type && !strcmp(type, "Sequence")) {
        const cJSON *x, *arr = cJSON_GetObjectItemCaseSensitive(d, "decoders");
        int n = 0;
        cJSON_ArrayForEach(x, arr)
        {
            pd_status st = check_decoder(x, err, errlen);
            if (st != PD_OK) return st;
            n++;
        }
        if (n) return PD_OK;
    }
    return fail(err, errlen, PD_ERR_UNSUPPORTED, "decoder '%s' is not supported (ByteLevel)", type ? type : "null");
}

/* Sets tokens[id] from the tokenizer.json string s; bytes are the byte-level decoding (or s itself when it has
 * characters outside the byte alphabet, as HF's ByteLevel decoder does). */
static int set_token(txt_tokenizer t, int32_t id, const char *s, const uint32_t b2c[256], int added)
{
    tok_entry *e = &t->tokens[id];
    char *keep = e->vocab_str;
    if (e->bytes != e->str) free(e->bytes);
    if (added && e->str && !keep) keep = e->str; /* still a key of by_str */
    else free(e->str);
    memset(e, 0, sizeof *e);
    e->vocab_str = keep;
    size_t n = strlen(s);
    if (!(e->str = malloc(n + 1))) return 0;
    memcpy(e->str, s, n + 1);
    e->flags = TOK_PRESENT;
    if (added) {
        e->bytes = e->str;
        e->nbytes = (uint32_t)n;
        return 1;
    }
    char *b = malloc(n + 1);
    if (!b) return 0;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += utf8_decode((const uint8_t *)s + i, &cp);
        int byte = cp_to_byte(b2c, cp);
        if (byte < 0) {
            free(b);
            e->bytes = e->str;
            e->nbytes = (uint32_t)n;
            return 1;
        }
        b[k++] = (char)byte;
    }
    b[k] = 0;
    e->bytes = b;
    e->nbytes = (uint32_t)k;
    return 1;
}

/* bos_token/eos_token of tokenizer_config.json: a string or {"content": ...}. */
static const char *config_token(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) return json_str(v, "content");
    return NULL;
}

static pd_status load_config(txt_tokenizer t, const char *dir, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    char *txt = NULL;
    size_t n;
    pd_status st = pd_file_read(path, &txt, &n);
    if (st == PD_ERR_NOT_FOUND) return PD_OK;
    if (st != PD_OK) return fail(err, errlen, st, "cannot read %s: %s", path, pd_status_str(st));
    cJSON *cfg = cJSON_Parse(txt);
    free(txt);
    if (!cfg || !cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return fail(err, errlen, PD_ERR_FORMAT, "%s is not a JSON object", path);
    }
    t->add_bos = json_bool(cfg, "add_bos_token", 0);
    t->cleanup_spaces = json_bool(cfg, "clean_up_tokenization_spaces", 0);
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    st = PD_OK;
    if (bos) {
        t->bos = txt_tokenizer_token_id(t, bos);
        if (t->bos < 0) st = fail(err, errlen, PD_ERR_FORMAT, "%s: bos_token '%s' is not in the vocabulary", path, bos);
        else if (!(t->bos_str = strdup(bos))) st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    }
    if (st == PD_OK && eos) {
        t->eos = txt_tokenizer_token_id(t, eos);
        if (t->eos < 0) st = fail(err, errlen, PD_ERR_FORMAT, "%s: eos_token '%s' is not in the vocabulary", path, eos);
        else if (!(t->eos_str = strdup(eos))) st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    }
    cJSON_Delete(cfg);
    return st;
}

static pd_status build_trie(txt_tokenizer t, char *err, size_t errlen)
{
    size_t total = 1;
    for (int i = 0; i < t->n_added; i++) total += t->added[i].len;
    t->trie = malloc(total * sizeof *t->trie);
    if (!t->trie) return fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    t->trie[0] = (trie_node){-1, -1, -1, 0};
    t->n_trie = 1;
    for (int i = 0; i < t->n_added; i++) {
        const uint8_t *s = (const uint8_t *)t->added[i].content;
        int32_t node = 0;
        for (size_t k = 0; k < t->added[i].len; k++) {
            int32_t ch = t->trie[node].child;
            while (ch >= 0 && t->trie[ch].byte != s[k]) ch = t->trie[ch].sibling;
            if (ch < 0) {
                ch = t->n_trie++;
                t->trie[ch] = (trie_node){-1, t->trie[node].child, -1, s[k]};
                t->trie[node].child = ch;
            }
            node = ch;
        }
        t->trie[node].term = i; /* a later duplicate wins */
        if (t->added[i].len) t->trie_first[s[0]] = 1;
    }
    return PD_OK;
}

pd_status txt_tokenizer_load(const char *dir, txt_tokenizer *out, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    char *txt = NULL;
    size_t txt_len;
    pd_status st = pd_file_read(path, &txt, &txt_len);
    if (st != PD_OK) return fail(err, errlen, st, "cannot read %s: %s", path, pd_status_str(st));
    cJSON *root = cJSON_ParseWithLength(txt, txt_len);
    free(txt);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return fail(err, errlen, PD_ERR_FORMAT, "%s is not a JSON object", path);
    }
    txt_tokenizer t = calloc(1, sizeof *t);
    if (!t) {
        st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
        goto fail_json;
    }
    t->bos = t->eos = -1;

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    const char *mtype = json_str(model, "type");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (!cJSON_IsObject(model) || (mtype && strcmp(mtype, "BPE"))) {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED, "%s: model type '%s' is not supported (BPE)", path,
                  mtype ? mtype : "?");
        goto fail_tok;
    }
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges)) {
        st = fail(err, errlen, PD_ERR_FORMAT, "%s: model needs a 'vocab' object and a 'merges' list", path);
        goto fail_tok;
    }
    if (json_bool(model, "byte_fallback", 0) || (json_str(model, "continuing_subword_prefix") &&
                                                  *json_str(model, "continuing_subword_prefix")) ||
        (json_str(model, "end_of_word_suffix") && *json_str(model, "end_of_word_suffix"))) {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED,
                  "%s: BPE byte_fallback / continuing_subword_prefix / end_of_word_suffix are not supported", path);
        goto fail_tok;
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble != 0) {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED, "%s: BPE dropout is not supported", path);
        goto fail_tok;
    }
    t->ignore_merges = json_bool(model, "ignore_merges", 0);
    if ((st = check_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err, errlen)) != PD_OK ||
        (st = check_decoder(cJSON_GetObjectItemCaseSensitive(root, "decoder"), err, errlen)) != PD_OK)
        goto fail_tok;

    /* Size of the id space. */
    int max_id = -1, n_vocab_items = 0, n_added_items = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, vocab)
    {
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble >= (1 << 24) ||
            x->valuedouble != (int)x->valuedouble) {
            st = fail(err, errlen, PD_ERR_FORMAT, "%s: vocab entry '%s' has no valid id", path, x->string);
            goto fail_tok;
        }
        max_id = PD_MAX(max_id, x->valueint);
        n_vocab_items++;
    }
    cJSON_ArrayForEach(x, added)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(x, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (1 << 24) || !json_str(x, "content")) {
            st = fail(err, errlen, PD_ERR_FORMAT, "%s: added_tokens entry %d needs an 'id' and a 'content'", path,
                      n_added_items);
            goto fail_tok;
        }
        max_id = PD_MAX(max_id, id->valueint);
        n_added_items++;
    }
    t->n_vocab = max_id + 1;
    t->tokens = calloc((size_t)PD_MAX(t->n_vocab, 1), sizeof *t->tokens);
    t->added = calloc((size_t)PD_MAX(n_added_items, 1), sizeof *t->added);
    if (!t->tokens || !t->added || !strmap_init(&t->by_str, (size_t)(n_vocab_items + n_added_items))) {
        st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
        goto fail_tok;
    }
    uint32_t b2c[256];
    byte_level_tables(b2c);
    cJSON_ArrayForEach(x, vocab)
    {
        if (!set_token(t, x->valueint, x->string, b2c, 0)) {
            st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
            goto fail_tok;
        }
    }
    for (int i = 0; i < t->n_vocab; i++)
        if (t->tokens[i].flags & TOK_PRESENT) strmap_put(&t->by_str, t->tokens[i].str, strlen(t->tokens[i].str), i);
    cJSON_ArrayForEach(x, added)
    {
        int32_t id = cJSON_GetObjectItemCaseSensitive(x, "id")->valueint;
        if (!set_token(t, id, json_str(x, "content"), b2c, 1)) {
            st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
            goto fail_tok;
        }
        added_token *a = &t->added[t->n_added++];
        a->id = id;
        a->lstrip = (uint8_t)json_bool(x, "lstrip", 0);
        a->rstrip = (uint8_t)json_bool(x, "rstrip", 0);
        a->single_word = (uint8_t)json_bool(x, "single_word", 0);
        a->special = (uint8_t)json_bool(x, "special", 0);
        t->tokens[id].flags |= TOK_ADDED | (a->special ? TOK_SPECIAL : 0);
    }
    /* Pointers into tokens[] are stable only now that every set_token is done. */
    for (int i = 0; i < t->n_added; i++) {
        t->added[i].content = t->tokens[t->added[i].id].str;
        t->added[i].len = strlen(t->added[i].content);
        strmap_put(&t->by_str, t->added[i].content, t->added[i].len, t->added[i].id);
    }
    if ((st = build_trie(t, err, errlen)) != PD_OK) goto fail_tok;

    /* Single bytes must all be tokens: byte-level BPE can then encode any text. */
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        size_t l = utf8_encode(b2c[b], u);
        t->byte_id[b] = strmap_get(&t->by_str, (const char *)u, l);
        if (t->byte_id[b] < 0) {
            st = fail(err, errlen, PD_ERR_UNSUPPORTED, "%s: vocab lacks the byte-level token of byte 0x%02x", path, b);
            goto fail_tok;
        }
    }

    /* Merges, in either serialisation ("a b" or ["a", "b"]); ranks are positions, later duplicates win. */
    size_t n_merges = (size_t)cJSON_GetArraySize(merges), cap = 16;
    while (cap < 2 * n_merges + 2) cap <<= 1;
    t->merges = malloc(cap * sizeof *t->merges);
    if (!t->merges) {
        st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
        goto fail_tok;
    }
    for (size_t i = 0; i < cap; i++) t->merges[i].key = MERGE_EMPTY;
    t->merge_mask = cap - 1;
    int32_t rank = 0;
    char cat[1024];
    cJSON_ArrayForEach(x, merges)
    {
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (cJSON_IsString(x)) {
            const char *sp = strchr(x->valuestring, ' ');
            if (sp) a = x->valuestring, la = (size_t)(sp - a), b = sp + 1, lb = strlen(b);
        } else if (cJSON_IsArray(x) && cJSON_GetArraySize(x) == 2 && cJSON_IsString(cJSON_GetArrayItem(x, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(x, 1))) {
            a = cJSON_GetArrayItem(x, 0)->valuestring, la = strlen(a);
            b = cJSON_GetArrayItem(x, 1)->valuestring, lb = strlen(b);
        }
        if (!a || la + lb >= sizeof cat) {
            st = fail(err, errlen, PD_ERR_FORMAT, "%s: merge %d is not \"a b\" or [\"a\", \"b\"]", path, rank);
            goto fail_tok;
        }
        memcpy(cat, a, la);
        memcpy(cat + la, b, lb);
        int32_t ia = strmap_get(&t->by_str, a, la), ib = strmap_get(&t->by_str, b, lb),
                im = strmap_get(&t->by_str, cat, la + lb);
        if (ia < 0 || ib < 0 || im < 0) {
            st = fail(err, errlen, PD_ERR_FORMAT, "%s: merge %d ('%.*s' + '%.*s') uses a token not in the vocab", path,
                      rank, (int)la, a, (int)lb, b);
            goto fail_tok;
        }
        merge_put(t, ia, ib, rank++, im);
    }

    int saw_byte_level = 0;
    if ((st = parse_pretok(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), &saw_byte_level, err,
                           errlen)) != PD_OK)
        goto fail_tok;
    if (!saw_byte_level) {
        st = fail(err, errlen, PD_ERR_UNSUPPORTED, "%s: only byte-level BPE is supported (no ByteLevel pre_tokenizer)",
                  path);
        goto fail_tok;
    }
    if ((st = load_config(t, dir, err, errlen)) != PD_OK) goto fail_tok;
    cJSON_Delete(root);
    *out = t;
    return PD_OK;

fail_tok:
    txt_tokenizer_destroy(t);
fail_json:
    cJSON_Delete(root);
    return st;
}
