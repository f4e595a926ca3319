/* libFuzzer target: arbitrary bytes as a YAML config file through the option loader of the executables. */
#include <stdio.h>
#include <unistd.h>

#include "common/pd_opts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char path[64];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/pdfuzz_yaml_%d.yaml", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    char *s = NULL;
    int i = 0, b = 0;
    double d = 0;
    uint64_t z = 0;
    pd_opt t[] = {{"model", PD_OPT_STR, &s, "", 0, 0}, {"max-num-seqs", PD_OPT_INT, &i, "", 1, 256},
                  {"colocated", PD_OPT_BOOL, &b, "", 0, 0}, {"kv-wait-timeout", PD_OPT_DOUBLE, &d, "", 0, 1e6},
                  {"kv-cache-memory", PD_OPT_SIZE, &z, "", 0, 0}};
    char err[256];
    pd_log_set_level(PD_LOG_OFF);
    pd_opts_load_yaml(t, 5, path, err, sizeof err);
    pd_opts_free(t, 5);
    return 0;
}
