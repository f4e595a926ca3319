/* pdserve-model version: what this build is and which kernel paths the CPU allows. */
#include <stdio.h>

#include "kernels/krn.h"

int cmd_version(int argc, char **argv)
{
    char feats[256];
    krn_cpu_describe(feats, sizeof feats);
    printf("pdserve 0.1.0\ncpu: %s\n", feats);
    return 0;
}
