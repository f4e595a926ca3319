/* Chat templates: the Jinja template of tokenizer_config.json rendered by a small interpreter of the Jinja subset
 * that real model templates use, with transformers' settings (trim_blocks, lstrip_blocks, tojson with
 * ensure_ascii=False, raise_exception). Template source -> AST once at load; render walks the AST over values
 * built from cJSON. See docs/tokenizer.md for the supported subset. */
#ifndef TXT_CHAT_TEMPLATE_H
#define TXT_CHAT_TEMPLATE_H

#include <cJSON.h>
#include <stddef.h>

#include "common/pd_common.h"

typedef struct txt_chat_template_s *txt_chat_template;

/* Compiles template source. bos_token/eos_token (may be NULL: "") become the variables of the same name.
 * A template this interpreter cannot render — a syntax error, an unknown statement, filter, test or method — fails
 * here with PD_ERR_UNSUPPORTED or PD_ERR_FORMAT and a message with the line, never later as a wrong prompt: the
 * template is also test-rendered over a sample conversation. *out is written only on success. */
pd_status txt_chat_template_create(const char *source, const char *bos_token, const char *eos_token,
                                   txt_chat_template *out, char *err, size_t errlen);
/* Reads chat_template (a string, or a list of {name, template} of which "default" is used) and bos_token/eos_token
 * from DIR/tokenizer_config.json; DIR/chat_template.jinja, when present, takes precedence (newer checkpoints).
 * PD_ERR_NOT_FOUND when the checkpoint has no template. */
pd_status txt_chat_template_load(const char *dir, txt_chat_template *out, char *err, size_t errlen);
/* Accepts NULL. */
void txt_chat_template_destroy(txt_chat_template t);

/* Renders messages (a JSON array of objects such as {"role": "user", "content": "..."}) with
 * add_generation_prompt; extra_vars (a JSON object or NULL) adds or overrides variables, e.g. "tools",
 * "thinking", "bos_token". *out is malloc'd, NUL-terminated, *len excludes the NUL. A template error at render time
 * (raise_exception, a type error over this input) returns PD_ERR_INVALID with the message in err; nothing is
 * logged for raise_exception since it reports bad input, not a fault. Thread-safe for concurrent renders. */
pd_status txt_chat_template_render(txt_chat_template t, const cJSON *messages, int add_generation_prompt,
                                   const cJSON *extra_vars, char **out, size_t *len, char *err, size_t errlen);

/* Every render has a budget beyond its input: interpreter steps (statements, expressions, loop iterations) and
 * bytes allocated. A render that exceeds it fails with PD_ERR_INVALID ("template exceeds its work budget"), so a
 * looping template or a conversation that makes one blow up costs bounded time and memory. Defaults 10 million
 * steps (DeepSeek-V3's template spends 10-100 per message, 2.5 us in all) and 256 MiB. 0 keeps a value's default.
 * Process-wide; set it before rendering starts (tests and fuzzing use small budgets). */
void txt_chat_template_set_budget(size_t max_steps, size_t max_bytes);

#endif
