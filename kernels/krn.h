/* libpdkernels public interface: number formats, CPU features, and the compute kernels the model calls.
 * Kernels work on caller-owned memory, never allocate in a hot path and never do I/O. */
#ifndef KRN_H
#define KRN_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/pd_common.h"

/* ---- number formats ------------------------------------------------------------------------- */
typedef uint16_t krn_bf16;

static inline float krn_bf16_to_f32(krn_bf16 h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Round to nearest even; NaN stays NaN. */
static inline krn_bf16 krn_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (krn_bf16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (krn_bf16)(u >> 16);
}

static inline float krn_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ffu;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* OCP FP8 E4M3 (the "fn" variant used by DeepSeek checkpoints): bias 7, no infinities, 0x7f/0xff NaN,
 * max finite 448. */
static inline float krn_e4m3_to_f32(uint8_t v)
{
    uint32_t sign = v >> 7, exp = (v >> 3) & 0xfu, man = v & 0x7u;
    float r;
    if (exp == 0xf && man == 0x7) return NAN;
    if (exp == 0) r = ldexpf((float)man, -9);                  /* subnormal: man/8 * 2^-6 */
    else r = ldexpf(1.0f + (float)man / 8.0f, (int)exp - 7);
    return sign ? -r : r;
}

/* Round to nearest even with saturation to +-448 (what torch's float8_e4m3fn cast does for finite input). */
uint8_t krn_f32_to_e4m3(float f);

/* ---- CPU features ------------------------------------------------------------------------------ */
typedef struct {
    int avx2, fma, f16c;
    int avx512f, avx512bw, avx512vl, avx512_vnni, avx512_bf16, avx512_fp16;
    int amx_tile, amx_bf16, amx_int8;
} krn_cpu_features;

/* Detected once (CPUID + OS support via XGETBV); PDSERVE_PORTABLE=1 in the environment reports none. */
const krn_cpu_features *krn_cpu_get(void);
/* Writes a one-line summary like "avx512f avx512_bf16 amx_bf16" into buf. */
void krn_cpu_describe(char *buf, size_t len);

#endif
