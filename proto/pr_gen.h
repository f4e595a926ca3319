/* The internal generate request: the JSON body the router sends a decode instance (POST /internal/requests) and a
 * prefill instance (POST /internal/prefill): prompt ids, limits, stop ids, logprobs and the sampling object. Its
 * encoder (the router) and decoder (the instances) live side by side with the limits both ends apply, so what the
 * router accepts an instance accepts. The route-specific fields (mode, target, ...) stay with their routes. */
#ifndef PR_GEN_H
#define PR_GEN_H

#include <cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "common/pd_common.h"

/* Limits of a generate request, the router's public checks and the decoder's alike (docs/protocol.md). */
#define PR_MAX_TOKENS (1 << 30)      /* max_tokens in [1, PR_MAX_TOKENS], min_tokens in [0, PR_MAX_TOKENS] */
#define PR_MAX_TOP_LOGPROBS 20       /* logprobs: alternatives per token, 0..20; -1: none at all */
#define PR_MAX_STOP_IDS 16           /* stop_token_ids entries */
#define PR_MAX_LOGIT_BIAS 300        /* logit_bias entries (OpenAI's limit) */
#define PR_MAX_BIAS 100.0            /* a logit_bias value is in [-PR_MAX_BIAS, PR_MAX_BIAS] */
#define PR_MAX_TEMPERATURE 2.0       /* temperature in [0, 2] */
#define PR_MAX_TOP_K (1 << 30)       /* top_k in [-1, PR_MAX_TOP_K]; -1 and 0: off */
#define PR_MIN_REPETITION 1e-6       /* repetition_penalty in [1e-6, 100] */
#define PR_MAX_REPETITION 100.0
#define PR_MAX_PENALTY 2.0           /* frequency_penalty and presence_penalty in [-2, 2] */
#define PR_MAX_SEED 9.2e18           /* the public API's seed in [-9.2e18, 9.2e18]; a choice's seed adds its index */
/* top_p is in (0, 1], min_p in [0, 1]. */

/* The sampling object. Reals are doubles: the router forwards what the client sent, unrounded. */
typedef struct {
    double temperature;          /* 0: greedy */
    double top_p, min_p;
    int top_k;
    double repetition_penalty, frequency_penalty, presence_penalty;
    int n_bias;                  /* logit_bias: bias[i] is added to token bias_ids[i]'s logit; distinct ids */
    int32_t bias_ids[PR_MAX_LOGIT_BIAS];
    double bias[PR_MAX_LOGIT_BIAS];
} pr_sampling;

/* Everything else of a generate request but its id and prompt. */
typedef struct {
    int max_tokens;              /* >= 1 */
    int min_tokens;
    int ignore_eos;
    int n_stop_ids;
    int32_t stop_ids[PR_MAX_STOP_IDS];
    int logprobs;                /* -1..PR_MAX_TOP_LOGPROBS */
    int has_seed;                /* on the wire inside the sampling object: one request's choices differ by it */
    uint64_t seed;               /* on the wire as the signed 64-bit integer of the same bits */
} pr_gen;

/* What a body without the field means: max_tokens 16, min_tokens 0, logprobs 0, no stop ids, no seed; temperature 1,
 * top_p 1, top_k 0, min_p 0, penalties off (repetition 1), no logit_bias. */
void pr_gen_defaults(pr_gen *g, pr_sampling *s);

/* The sampling object of s (without seed: pr_gen_encode adds the choice's). A request's choices and attempts share
 * it, so the router builds it once. *out is a new object the caller owns. PD_ERR_NOMEM. */
pd_status pr_sampling_encode(const pr_sampling *s, cJSON **out);

/* Encodes a request: id (a non-empty string), the prompt's n_prompt ids, g, and sampling, a sampling object as
 * pr_sampling_encode makes it (copied; g's seed is added to the copy). The caller has checked everything against the
 * limits above; the encoder does not check. *out is a new JSON object the caller owns and may add its route's fields
 * to. PD_ERR_NOMEM, with nothing allocated. */
pd_status pr_gen_encode(const pr_gen *g, const cJSON *sampling, const char *id, const int32_t *prompt, int n_prompt,
                        cJSON **out);

/* Decodes and validates the generate fields of a body (id and route fields are the caller's): every field against
 * the limits above, token ids (prompt, stop_token_ids, logit_bias keys) against [0, vocab_size). A missing or null
 * field takes its default. *prompt is malloc'd (the caller frees it), non-empty. PD_ERR_INVALID with a message
 * naming the field in err, PD_ERR_NOMEM; outputs are written only on success. Never logs. */
pd_status pr_gen_decode(const cJSON *root, int vocab_size, pr_gen *g, pr_sampling *s, int32_t **prompt,
                        int *n_prompt, char *err, size_t errlen);

#endif
