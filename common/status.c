/* pd_status strings, generated from the same X-macro as the enum. */
#include "common/pd_common.h"

const char *pd_status_str(pd_status s)
{
    switch (s) {
#define PD__STATUS_STR(name, str) case name: return str;
        PD_STATUS_MAP(PD__STATUS_STR)
#undef PD__STATUS_STR
    default: return "unknown status";
    }
}
