/* pdserve-prefill: the prefill role's options on the shared instance process (instance/run.c). */
#include "prefill/server.h"

int main(int argc, char **argv)
{
    pf_opts o = {.kv_xfer_timeout = 30};
    const pd_opt mine[] = {
        {"kv-xfer-timeout", PD_OPT_DOUBLE, &o.kv_xfer_timeout, "seconds a KV transfer may take (default 30)", 0.1,
         3600},
    };
    inst_program p = {.name = "prefill", .default_port = 8100, .opts = &o.inst, .role_opts = mine,
                      .n_role_opts = (int)PD_ARRAY_LEN(mine), .start = pf_start, .arg = &o, .role = pf_role};
    return inst_main(argc, argv, &p);
}
