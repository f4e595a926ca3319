/* Helpers shared by the pdserve-model subcommands. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "tools/tool_util.h"

const char *tool_arg(int argc, char **argv, int *i)
{
    if (*i + 1 >= argc) {
        fprintf(stderr, "option %s needs a value\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

pd_status tool_parse_ids(const char *s, int32_t **out, int *n)
{
    int cap = 16, k = 0;
    int32_t *v = malloc((size_t)cap * sizeof *v);
    if (!v) return PD_ERR_NOMEM;
    const char *p = s;
    while (*p) {
        char *end;
        long x = strtol(p, &end, 10);
        if (end == p || x < 0 || x > INT32_MAX) {
            free(v);
            return PD_ERR_INVALID;
        }
        if (k == cap) {
            cap *= 2;
            int32_t *nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv) {
                free(v);
                return PD_ERR_NOMEM;
            }
            v = nv;
        }
        v[k++] = (int32_t)x;
        p = end;
        while (*p == ',' || *p == ' ' || *p == '[' || *p == ']') p++;
    }
    if (k == 0) {
        free(v);
        return PD_ERR_INVALID;
    }
    *out = v;
    *n = k;
    return PD_OK;
}

pd_status tool_parse_type(const char *s, krn_type *out)
{
    if (!strcasecmp(s, "float32") || !strcasecmp(s, "fp32") || !strcasecmp(s, "f32") || !strcasecmp(s, "float")) {
        *out = KRN_F32;
        return PD_OK;
    }
    if (!strcasecmp(s, "bfloat16") || !strcasecmp(s, "bf16") || !strcasecmp(s, "auto")) {
        *out = KRN_BF16;
        return PD_OK;
    }
    if (!strcasecmp(s, "float16") || !strcasecmp(s, "fp16") || !strcasecmp(s, "f16") || !strcasecmp(s, "half")) {
        *out = KRN_F16;
        return PD_OK;
    }
    return PD_ERR_INVALID;
}

