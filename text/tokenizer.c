/* The tokenizer's shared pieces: UTF-8 validation and stepping (the maximal-subpart rule), GPT-2's byte-level
 * alphabet, the hash maps (token string -> id, merge pair -> rank), and the accessors. Loading is tokenizer_load.c,
 * text -> ids tokenizer_encode.c, ids -> text and the streaming detokenizer tokenizer_decode.c. */
#include "text/tokenizer_internal.h"

#include <string.h>

/* ---- UTF-8 ---- */

/* A non-ASCII lead byte b: how many continuation bytes follow it and the range [lo, hi] of the first (Unicode's
 * table 3-7: no overlong forms, no surrogates, nothing past U+10FFFF); 0 when b cannot start a character. */
static int utf8_lead(uint8_t b, size_t *need, uint8_t *lo, uint8_t *hi)
{
    *lo = 0x80, *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) *need = 1;
    else if (b == 0xE0) *need = 2, *lo = 0xA0;
    else if (b == 0xED) *need = 2, *hi = 0x9F;
    else if (b >= 0xE1 && b <= 0xEF) *need = 2;
    else if (b == 0xF0) *need = 3, *lo = 0x90;
    else if (b == 0xF4) *need = 3, *hi = 0x8F;
    else if (b >= 0xF1 && b <= 0xF3) *need = 3;
    else return 0;
    return 1;
}

/* Length of the valid UTF-8 prefix of s (== n when all of it is valid). */
size_t txt__utf8_valid_prefix(const uint8_t *s, size_t n)
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
        uint8_t lo, hi;
        if (!utf8_lead(b, &need, &lo, &hi)) return i;
        if (i + need >= n) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += need + 1;
    }
    return n;
}

/* Classifies the sequence at s[0..n) (n >= 1): a valid character of *len bytes, an invalid maximal subpart of
 * *len bytes (one U+FFFD), or an incomplete but so far valid prefix of all n bytes. */
u8_kind txt__utf8_step(const uint8_t *s, size_t n, size_t *len)
{
    uint8_t b = s[0];
    if (b < 0x80) {
        *len = 1;
        return U8_VALID;
    }
    size_t need;
    uint8_t lo, hi;
    if (!utf8_lead(b, &need, &lo, &hi)) {
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
size_t txt__utf8_decode(const uint8_t *s, uint32_t *cp)
{
    if (s[0] < 0x80) return *cp = s[0], 1;
    if (s[0] < 0xE0) return *cp = (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F), 2;
    if (s[0] < 0xF0) return *cp = (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F), 3;
    *cp = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    return 4;
}

size_t txt__utf8_encode(uint32_t c, uint8_t *o)
{
    if (c < 0x80) return o[0] = (uint8_t)c, 1;
    if (c < 0x800) return o[0] = (uint8_t)(0xC0 | c >> 6), o[1] = (uint8_t)(0x80 | (c & 63)), 2;
    if (c < 0x10000)
        return o[0] = (uint8_t)(0xE0 | c >> 12), o[1] = (uint8_t)(0x80 | ((c >> 6) & 63)),
               o[2] = (uint8_t)(0x80 | (c & 63)), 3;
    o[0] = (uint8_t)(0xF0 | c >> 18), o[1] = (uint8_t)(0x80 | ((c >> 12) & 63));
    o[2] = (uint8_t)(0x80 | ((c >> 6) & 63)), o[3] = (uint8_t)(0x80 | (c & 63));
    return 4;
}

/* Unicode White_Space (what Rust's char::is_whitespace tests, used by HF for lstrip/rstrip). */
int txt__is_white_space(uint32_t c)
{
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* ---- byte-level alphabet (GPT-2's bytes_to_unicode) ---- */

void txt__byte_level_tables(uint32_t byte_to_cp[256])
{
    int n = 0;
    for (int b = 0; b < 256; b++) {
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)) byte_to_cp[b] = (uint32_t)b;
        else byte_to_cp[b] = 256u + (uint32_t)n++;
    }
}

int txt__cp_to_byte(const uint32_t byte_to_cp[256], uint32_t cp)
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

int txt__strmap_init(strmap *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    m->slots = calloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    return m->slots != NULL;
}

/* Inserts or overwrites (later definitions win, as in HF). */
void txt__strmap_put(strmap *m, const char *s, size_t len, int32_t id)
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

int32_t txt__strmap_get(const strmap *m, const char *s, size_t len)
{
    size_t i = hash_bytes(s, len) & m->mask;
    while (m->slots[i].s) {
        if (m->slots[i].len == len && !memcmp(m->slots[i].s, s, len)) return m->slots[i].id;
        i = (i + 1) & m->mask;
    }
    return -1;
}

void txt__merge_put(txt_tokenizer t, int32_t a, int32_t b, int32_t rank, int32_t id)
{
    uint64_t k = pair_key(a, b);
    size_t i = pair_hash(k, t->merge_mask);
    while (t->merges[i].key != MERGE_EMPTY && t->merges[i].key != k) i = (i + 1) & t->merge_mask;
    t->merges[i] = (merge_slot){k, rank, id};
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
    return token_text ? txt__strmap_get(&t->by_str, token_text, strlen(token_text)) : -1;
}
