/* pdserve-decode: the decode role's options on the shared instance process (instance/run.c). */
#include "decode/server.h"

int main(int argc, char **argv)
{
    dec_opts o = {.kv_wait_timeout = 40, .kv_transfer_timeout = 300};
    const pd_opt mine[] = {
        {"colocated", PD_OPT_BOOL, &o.colocated, "also prefill here (no transfer): the baseline and the oracle", 0, 0},
        {"kv-wait-timeout", PD_OPT_DOUBLE, &o.kv_wait_timeout,
         "seconds an aborted request waits for its transfer (40)", 1, 3600},
        {"kv-transfer-timeout", PD_OPT_DOUBLE, &o.kv_transfer_timeout,
         "seconds a reservation waits for its KV (prefill queue + compute + transfer) before the request is "
         "given up and retried elsewhere (300)", 0.5, 86400},
    };
    inst_program p = {.name = "decode", .default_port = 8200, .opts = &o.inst, .role_opts = mine,
                      .n_role_opts = (int)PD_ARRAY_LEN(mine), .start = dec_start, .arg = &o, .role = dec_role};
    return inst_main(argc, argv, &p);
}
