/* The catalogue of tensors a DeepSeek-V2/V3 checkpoint holds, with Hugging Face names and shapes, derived
 * from the config alone. The loader checks a checkpoint against it; the generator writes exactly it. */
#ifndef MDL_TENSORS_H
#define MDL_TENSORS_H

#include "model/mdl_config.h"

typedef enum {
    MDL_T_MATRIX, /* a linear layer's weight [out, in] */
    MDL_T_EMBED,  /* an embedding table [vocab, hidden] */
    MDL_T_NORM,   /* an RMSNorm weight [n] */
    MDL_T_BIAS,   /* the router's e_score_correction_bias [n_experts], F32 in official checkpoints */
} mdl_tensor_kind;

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[2];
    mdl_tensor_kind kind;
    int layer;    /* -1 for model-level tensors */
    int fp8;      /* stored as F8_E4M3 + weight_scale_inv in DeepSeek's FP8 checkpoints */
} mdl_tensor_spec;

/* Enumerates the tensors of layer l (0 <= l < num_hidden_layers + n_mtp) or, with l == -1, the model-level
 * ones (embed_tokens, norm, lm_head). Writes up to cap specs into out (out may be NULL) and returns the count. */
size_t mdl_tensor_specs_layer(const mdl_config *c, int l, mdl_tensor_spec *out, size_t cap);
/* Every tensor of the model (main layers, n_mtp MTP layers). */
size_t mdl_tensor_specs(const mdl_config *c, int n_mtp, mdl_tensor_spec *out, size_t cap);

#endif
