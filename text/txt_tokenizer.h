/* The checkpoint's own tokenizer: byte-level BPE loaded from tokenizer.json (+ tokenizer_config.json), text ->
 * ids exactly as Hugging Face tokenizers does (added tokens first, then the pre-tokenizer's regex splits, then
 * BPE merges by rank), ids -> text, and an incremental detokenizer for streaming. See docs/tokenizer.md. */
#ifndef TXT_TOKENIZER_H
#define TXT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "common/pd_common.h"

typedef struct txt_tokenizer_s *txt_tokenizer;

/* Loads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json (add_bos_token, bos/eos tokens,
 * clean_up_tokenization_spaces). Anything the files ask for that this implementation cannot do exactly (an
 * unknown model, normalizer, pre-tokenizer or decoder type, a regex PCRE2 rejects) fails here with
 * PD_ERR_UNSUPPORTED or PD_ERR_FORMAT and a message naming the field; never a silently different tokenizer.
 * *out is written only on success. The tokenizer is immutable after load: every other function may be called
 * from several threads at once. */
pd_status txt_tokenizer_load(const char *dir, txt_tokenizer *out, char *err, size_t errlen);
/* Accepts NULL. */
void txt_tokenizer_destroy(txt_tokenizer t);

/* Flags of txt_tokenizer_encode. */
#define TXT_ENCODE_ADD_BOS 1u       /* prepend the BOS id (what HF's encode does when add_bos_token is true) */
#define TXT_ENCODE_SPLIT_SPECIAL 2u /* text of special tokens is plain text (HF split_special_tokens=True);
                                     * non-special added tokens are still matched */

/* Encodes len bytes of UTF-8 text (NUL bytes allowed). *ids is a malloc'd array of *n_ids ids (the caller frees
 * it; non-NULL even when empty). Returns PD_ERR_INVALID (logged, with the byte offset) for text that is not
 * valid UTF-8, PD_ERR_NOMEM. Outputs are written only on success. */
pd_status txt_tokenizer_encode(txt_tokenizer t, const char *text, size_t len, unsigned flags, int32_t **ids,
                               size_t *n_ids);

/* Decodes ids to UTF-8 text as HF's decode does: byte-level tokens become their bytes, added tokens their
 * content, invalid UTF-8 is replaced with U+FFFD; skip_special drops tokens marked special. *text is malloc'd
 * and NUL-terminated, *len excludes the NUL. Returns PD_ERR_RANGE for an id outside the vocabulary. */
pd_status txt_tokenizer_decode(txt_tokenizer t, const int32_t *ids, size_t n, int skip_special, char **text,
                               size_t *len);

/* Vocabulary: one more than the largest id (ids without a token in between decode as nothing). */
int txt_tokenizer_vocab_size(txt_tokenizer t);
int32_t txt_tokenizer_bos(txt_tokenizer t);  /* -1 when the tokenizer has none */
int32_t txt_tokenizer_eos(txt_tokenizer t);  /* -1 when the tokenizer has none */
/* add_bos_token of tokenizer_config.json (0 when absent). */
int txt_tokenizer_add_bos_default(txt_tokenizer t);
/* 1 for an added token marked "special": true, else 0 (also for out-of-range ids). */
int txt_tokenizer_is_special(txt_tokenizer t, int32_t id);
/* The token as written in tokenizer.json (byte-level form, e.g. "Ġthe"); NULL for an unknown id. Valid until
 * destroy. */
const char *txt_tokenizer_token_str(txt_tokenizer t, int32_t id);
/* Id of an added token's content (e.g. "<think>") or of a vocabulary entry in its tokenizer.json form; -1 if
 * absent. */
int32_t txt_tokenizer_token_id(txt_tokenizer t, const char *token_text);
/* Content of bos/eos from tokenizer_config.json (or tokenizer.json's added tokens); "" when none. */
const char *txt_tokenizer_bos_str(txt_tokenizer t);
const char *txt_tokenizer_eos_str(txt_tokenizer t);

/* vocab_size of the checkpoint's config.json (DIR/config.json, or PATH itself when it ends in .json): the id space
 * the model scores, which may exceed the tokenizer's (DeepSeek-V3: 129280 ids, 128815 tokens). Reads that one field
 * (an integer in [2, 2^30]) and nothing of the architecture. PD_ERR_NOT_FOUND and the I/O errors of pd_file_read,
 * PD_ERR_FORMAT; logged, with the message in err. *out is written only on success. */
pd_status txt_config_vocab_size(const char *path, int *out, char *err, size_t errlen);

/* Incremental detokenizer for one stream. Each push returns the text that became complete: UTF-8 characters are
 * never split across two pieces, bytes that can never form a character come out as U+FFFD exactly where the
 * one-shot decode puts them, so the concatenation of all pieces plus flush equals txt_tokenizer_decode of all
 * ids. O(bytes of the new token) per push; holds at most 3 pending bytes. */
typedef struct txt_detok_s *txt_detok;

pd_status txt_detok_create(txt_tokenizer t, int skip_special, txt_detok *out);
/* Accepts NULL. */
void txt_detok_destroy(txt_detok d);
/* *piece points into the detokenizer's buffer (valid until the next call on d, NUL-terminated) and may be
 * empty. PD_ERR_RANGE for an unknown id (state unchanged). */
pd_status txt_detok_push(txt_detok d, int32_t id, const char **piece, size_t *len);
/* Emits what is pending (an incomplete character becomes U+FFFD) and resets d for a new stream. */
pd_status txt_detok_flush(txt_detok d, const char **piece, size_t *len);

#endif
