/* Shared helpers of the pdserve-model subcommands: flag parsing and running one sequence through the model. */
#ifndef TOOLS_TOOL_UTIL_H
#define TOOLS_TOOL_UTIL_H

#include "model/mdl.h"

/* Returns the value of --name (next argument) and advances *i, or NULL after printing a usage error. */
const char *tool_arg(int argc, char **argv, int *i);
/* Parses "1,2,3" into a malloc'd array. */
pd_status tool_parse_ids(const char *s, int32_t **out, int *n);
/* Parses --dtype values: float32|fp32|f32 -> KRN_F32, bfloat16|bf16|auto -> KRN_BF16. */
pd_status tool_parse_type(const char *s, krn_type *out);

#endif
