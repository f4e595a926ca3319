/* The tokenizer, internal: its representation and the helpers its files share (text/tokenizer*.c). Not for use
 * outside text/. */
#ifndef TXT_TOKENIZER_INTERNAL_H
#define TXT_TOKENIZER_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cJSON.h>
#include <limits.h>
#include <pcre2.h>

#include "text/txt_tokenizer.h"

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
    int txt__cleanup_spaces;
};

/* ---- errors ---- */

#define fail(err, errlen, st, ...) PD_FAIL(err, errlen, st, "tokenizer", __VA_ARGS__)

typedef enum { U8_VALID, U8_INVALID, U8_INCOMPLETE } u8_kind;

static inline uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t)(uint32_t)a << 32 | (uint32_t)b; }
static inline size_t pair_hash(uint64_t k, size_t mask) { return (size_t)((k * 0x9E3779B97F4A7C15ull) >> 32) & mask; }

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

/* tokenizer.c */
size_t txt__utf8_valid_prefix(const uint8_t *s, size_t n);
u8_kind txt__utf8_step(const uint8_t *s, size_t n, size_t *len);
size_t txt__utf8_decode(const uint8_t *s, uint32_t *cp);
size_t txt__utf8_encode(uint32_t c, uint8_t *o);
int txt__is_white_space(uint32_t c);
void txt__byte_level_tables(uint32_t byte_to_cp[256]);
int txt__cp_to_byte(const uint32_t byte_to_cp[256], uint32_t cp);
int txt__strmap_init(strmap *m, size_t n);
void txt__strmap_put(strmap *m, const char *s, size_t len, int32_t id);
int32_t txt__strmap_get(const strmap *m, const char *s, size_t len);
void txt__merge_put(txt_tokenizer t, int32_t a, int32_t b, int32_t rank, int32_t id);

/* tokenizer_decode.c */
void txt__cleanup_spaces(char *s, size_t *n);

#endif
