/* Writes a random-weight checkpoint in DeepSeek's published layout (config.json, safetensors with HF names,
 * BF16 or FP8+block scales, sharded with an index when large, tokenizer files copied in). Deterministic for
 * a seed: each tensor's values depend only on the seed and the tensor's name. */
#ifndef MDL_GENERATE_H
#define MDL_GENERATE_H

#include "model/mdl_config.h"

typedef struct {
    uint64_t seed;
    int fp8;                   /* store *_proj matrices as F8_E4M3 with 128x128 weight_scale_inv */
    uint64_t shard_bytes;      /* start a new shard past this size (0: 4 GiB) */
    const char *tokenizer_dir; /* copy tokenizer.json / tokenizer_config.json from here (NULL: none) */
    int config_only;           /* write config.json only */
    int progress;
} mdl_generate_opts;

pd_status mdl_generate_checkpoint(const char *dir, const mdl_config *cfg, const mdl_generate_opts *opts, char *err,
                                  size_t errlen);
/* Bytes the weights will take. */
uint64_t mdl_generate_size(const mdl_config *cfg, int fp8);

/* Applies "key=value" overrides (value parsed as JSON, or taken as a string when it is not JSON) to a config
 * through its JSON form, so every override is validated exactly as config.json is. */
pd_status mdl_config_override(mdl_config *c, const char *const *kv, int n, char *err, size_t errlen);

#endif
