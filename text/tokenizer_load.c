/* tokenizer.json (+ tokenizer_config.json) -> txt_tokenizer: the vocabulary, merges, added tokens and the
 * pre-tokenizer's steps, each checked against what this implementation does exactly; anything else fails the load
 * with a message naming the field. Also the one field of config.json the router needs (vocab_size). */
#include "text/tokenizer_internal.h"

#include <limits.h>
#include <math.h>
#include <string.h>

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
        if (!rx && !lit)
            return fail(err, errlen, PD_ERR_FORMAT, "pre_tokenizer Split without a Regex or String pattern");
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
    return fail(err, errlen, PD_ERR_UNSUPPORTED,
                "pre_tokenizer type '%s' is not supported (Sequence, Split, ByteLevel)", type);
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
        i += txt__utf8_decode((const uint8_t *)s + i, &cp);
        int byte = txt__cp_to_byte(b2c, cp);
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
    t->txt__cleanup_spaces = json_bool(cfg, "clean_up_tokenization_spaces", 0);
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

/* The model object: BPE without the options this implementation does not have. */
static pd_status check_model(const cJSON *model, const char *path, char *err, size_t errlen)
{
    const char *mtype = json_str(model, "type");
    if (!cJSON_IsObject(model) || (mtype && strcmp(mtype, "BPE")))
        return fail(err, errlen, PD_ERR_UNSUPPORTED, "%s: model type '%s' is not supported (BPE)", path,
                    mtype ? mtype : "?");
    if (!cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(model, "vocab")) ||
        !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(model, "merges")))
        return fail(err, errlen, PD_ERR_FORMAT, "%s: model needs a 'vocab' object and a 'merges' list", path);
    if (json_bool(model, "byte_fallback", 0) || (json_str(model, "continuing_subword_prefix") &&
                                                  *json_str(model, "continuing_subword_prefix")) ||
        (json_str(model, "end_of_word_suffix") && *json_str(model, "end_of_word_suffix")))
        return fail(err, errlen, PD_ERR_UNSUPPORTED,
                    "%s: BPE byte_fallback / continuing_subword_prefix / end_of_word_suffix are not supported", path);
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (cJSON_IsNumber(dropout) && dropout->valuedouble != 0)
        return fail(err, errlen, PD_ERR_UNSUPPORTED, "%s: BPE dropout is not supported", path);
    return PD_OK;
}

/* vocab and added_tokens -> t->tokens, t->added, t->by_str, the added-token trie and t->byte_id (b2c: the
 * byte-level alphabet). On failure t holds what was set so far; txt_tokenizer_destroy frees it. */
static pd_status load_vocab(txt_tokenizer t, const cJSON *vocab, const cJSON *added, const uint32_t b2c[256],
                            const char *path, char *err, size_t errlen)
{
    /* Size of the id space. */
    int max_id = -1, n_vocab_items = 0, n_added_items = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, vocab)
    {
        if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble >= (1 << 24) ||
            x->valuedouble != (int)x->valuedouble)
            return fail(err, errlen, PD_ERR_FORMAT, "%s: vocab entry '%s' has no valid id", path, x->string);
        max_id = PD_MAX(max_id, x->valueint);
        n_vocab_items++;
    }
    cJSON_ArrayForEach(x, added)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(x, "id");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= (1 << 24) || !json_str(x, "content"))
            return fail(err, errlen, PD_ERR_FORMAT, "%s: added_tokens entry %d needs an 'id' and a 'content'", path,
                        n_added_items);
        max_id = PD_MAX(max_id, id->valueint);
        n_added_items++;
    }
    t->n_vocab = max_id + 1;
    t->tokens = calloc((size_t)PD_MAX(t->n_vocab, 1), sizeof *t->tokens);
    t->added = calloc((size_t)PD_MAX(n_added_items, 1), sizeof *t->added);
    if (!t->tokens || !t->added || !txt__strmap_init(&t->by_str, (size_t)(n_vocab_items + n_added_items)))
        return fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    cJSON_ArrayForEach(x, vocab)
    {
        if (!set_token(t, x->valueint, x->string, b2c, 0)) return fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    }
    for (int i = 0; i < t->n_vocab; i++)
        if (t->tokens[i].flags & TOK_PRESENT)
            txt__strmap_put(&t->by_str, t->tokens[i].str, strlen(t->tokens[i].str), i);
    cJSON_ArrayForEach(x, added)
    {
        int32_t id = cJSON_GetObjectItemCaseSensitive(x, "id")->valueint;
        if (!set_token(t, id, json_str(x, "content"), b2c, 1))
            return fail(err, errlen, PD_ERR_NOMEM, "out of memory");
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
        txt__strmap_put(&t->by_str, t->added[i].content, t->added[i].len, t->added[i].id);
    }
    pd_status st = build_trie(t, err, errlen);
    if (st != PD_OK) return st;

    /* Single bytes must all be tokens: byte-level BPE can then encode any text. */
    for (int b = 0; b < 256; b++) {
        uint8_t u[4];
        size_t l = txt__utf8_encode(b2c[b], u);
        t->byte_id[b] = txt__strmap_get(&t->by_str, (const char *)u, l);
        if (t->byte_id[b] < 0)
            return fail(err, errlen, PD_ERR_UNSUPPORTED, "%s: vocab lacks the byte-level token of byte 0x%02x", path,
                        b);
    }
    return PD_OK;
}

/* Merges, in either serialisation ("a b" or ["a", "b"]); ranks are positions, later duplicates win. */
static pd_status load_merges(txt_tokenizer t, const cJSON *merges, const char *path, char *err, size_t errlen)
{
    size_t n_merges = (size_t)cJSON_GetArraySize(merges), cap = 16;
    while (cap < 2 * n_merges + 2) cap <<= 1;
    t->merges = malloc(cap * sizeof *t->merges);
    if (!t->merges) return fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < cap; i++) t->merges[i].key = MERGE_EMPTY;
    t->merge_mask = cap - 1;
    int32_t rank = 0;
    char cat[1024];
    const cJSON *x;
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
        if (!a || la + lb >= sizeof cat)
            return fail(err, errlen, PD_ERR_FORMAT, "%s: merge %d is not \"a b\" or [\"a\", \"b\"]", path, rank);
        memcpy(cat, a, la);
        memcpy(cat + la, b, lb);
        int32_t ia = txt__strmap_get(&t->by_str, a, la), ib = txt__strmap_get(&t->by_str, b, lb),
                im = txt__strmap_get(&t->by_str, cat, la + lb);
        if (ia < 0 || ib < 0 || im < 0)
            return fail(err, errlen, PD_ERR_FORMAT, "%s: merge %d ('%.*s' + '%.*s') uses a token not in the vocab",
                        path, rank, (int)la, a, (int)lb, b);
        txt__merge_put(t, ia, ib, rank++, im);
    }
    return PD_OK;
}

/* Reads and parses the JSON file at path into *root (NULL when it is not JSON: the caller says what it wanted);
 * fails only when the file cannot be read. */
static pd_status json_file_parse(const char *path, cJSON **root, char *err, size_t errlen)
{
    char *txt = NULL;
    size_t len;
    pd_status st = pd_file_read(path, &txt, &len);
    if (st != PD_OK) return fail(err, errlen, st, "cannot read %s: %s", path, pd_status_str(st));
    *root = cJSON_ParseWithLength(txt, len);
    free(txt);
    return PD_OK;
}

pd_status txt_tokenizer_load(const char *dir, txt_tokenizer *out, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    cJSON *root = NULL;
    pd_status st = json_file_parse(path, &root, err, errlen);
    if (st != PD_OK) return st;
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
    if ((st = check_model(model, path, err, errlen)) != PD_OK) goto fail_tok;
    t->ignore_merges = json_bool(model, "ignore_merges", 0);
    if ((st = check_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), err, errlen)) != PD_OK ||
        (st = check_decoder(cJSON_GetObjectItemCaseSensitive(root, "decoder"), err, errlen)) != PD_OK)
        goto fail_tok;
    uint32_t b2c[256];
    txt__byte_level_tables(b2c);
    if ((st = load_vocab(t, cJSON_GetObjectItemCaseSensitive(model, "vocab"),
                         cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), b2c, path, err, errlen)) != PD_OK ||
        (st = load_merges(t, cJSON_GetObjectItemCaseSensitive(model, "merges"), path, err, errlen)) != PD_OK)
        goto fail_tok;

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

pd_status txt_config_vocab_size(const char *path, int *out, char *err, size_t errlen)
{
    char file[4096];
    size_t n = strlen(path);
    if (n > 5 && !strcmp(path + n - 5, ".json")) snprintf(file, sizeof file, "%s", path);
    else snprintf(file, sizeof file, "%s/config.json", path);
    cJSON *root = NULL;
    pd_status st = json_file_parse(file, &root, err, errlen);
    if (st != PD_OK) return st;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "vocab_size");
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < 2 ||
        v->valuedouble > (1 << 30)) {
        cJSON_Delete(root);
        return fail(err, errlen, PD_ERR_FORMAT, "%s: 'vocab_size' must be an integer in [2, %d]", file, 1 << 30);
    }
    *out = (int)v->valuedouble;
    cJSON_Delete(root);
    return PD_OK;
}
