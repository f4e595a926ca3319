/* libFuzzer target: arbitrary bytes as a .safetensors file through the validating reader. It must reject or
 * accept without crashing, and every accepted tensor must lie inside the file. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/pdfuzz_st_%d.safetensors", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    pd_log_set_level(PD_LOG_OFF);
    mdl_st st = NULL;
    char err[256];
    if (mdl_st_open(path, &st, err, sizeof err) == PD_OK) {
        for (size_t i = 0; i < mdl_st_count(st); i++) {
            const mdl_tensor_view *t = mdl_st_at(st, i);
            volatile uint8_t sum = 0;
            for (size_t b = 0; b < t->nbytes; b += 4096) sum += ((const uint8_t *)t->data)[b]; /* touch the mapping */
            if (t->nbytes) sum += ((const uint8_t *)t->data)[t->nbytes - 1];
            if (mdl_st_find(st, t->name) != t) __builtin_trap();
            (void)sum;
        }
        mdl_st_close(st);
    }
    return 0;
}
