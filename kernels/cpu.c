/* CPU feature detection (CPUID leaves 1 and 7, XGETBV for OS-enabled state) and number-format helpers
 * that are too long to inline. */
#include "kernels/krn.h"

#include <cpuid.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023 /* asm/prctl.h; spelled out for older headers */
#define XFEATURE_XTILEDATA 18

uint8_t krn_f32_to_e4m3(float f)
{
    if (isnan(f)) return 0x7f;
    uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= 448.0f) return sign | 0x7e;
    if (a < ldexpf(1.0f, -10)) return sign; /* below half the smallest subnormal (2^-9) rounds to 0 */
    int e;
    frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) -> unbiased exponent e-1 */
    int ue = e - 1;
    if (ue < -6) ue = -6; /* subnormal range shares the exponent of the smallest normal */
    float q = ldexpf(a, 3 - ue); /* 3 mantissa bits */
    float r = nearbyintf(q);     /* round-half-even in the default rounding mode */
    if (r >= 16.0f) { /* mantissa overflowed to the next binade */
        ue++;
        r = 8.0f;
    }
    int ir = (int)r;
    if (ir < 8) return (uint8_t)(sign | ir); /* subnormal (ue == -6) */
    int be = ue + 7;
    if (be > 15 || (be == 15 && (ir - 8) == 7)) return sign | 0x7e;
    return (uint8_t)(sign | (be << 3) | (ir - 8));
}

static krn_cpu_features g_cpu;
static int g_cpu_done;

static uint64_t xgetbv0(void)
{
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}

static void detect(krn_cpu_features *f)
{
    memset(f, 0, sizeof *f);
    const char *portable = getenv("PDSERVE_PORTABLE");
    if (portable && *portable && *portable != '0') return;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return;
    int osxsave = (c >> 27) & 1;
    if (!osxsave) return;
    uint64_t xcr0 = xgetbv0();
    int ymm = (xcr0 & 0x6) == 0x6, zmm = (xcr0 & 0xe6) == 0xe6, tiles = (xcr0 & (3ull << 17)) == (3ull << 17);
    f->fma = ymm && ((c >> 12) & 1);
    f->f16c = ymm && ((c >> 29) & 1);
    unsigned a7, b7, c7, d7;
    __cpuid_count(7, 0, a7, b7, c7, d7);
    f->avx2 = ymm && ((b7 >> 5) & 1);
    f->avx512f = zmm && ((b7 >> 16) & 1);
    f->avx512bw = zmm && ((b7 >> 30) & 1);
    f->avx512vl = zmm && ((b7 >> 31) & 1);
    f->avx512_vnni = zmm && ((c7 >> 11) & 1);
    f->avx512_fp16 = zmm && ((d7 >> 23) & 1);
    f->amx_bf16 = tiles && ((d7 >> 22) & 1);
    f->amx_tile = tiles && ((d7 >> 24) & 1);
    f->amx_int8 = tiles && ((d7 >> 25) & 1);
    unsigned a71, b71, c71, d71;
    __cpuid_count(7, 1, a71, b71, c71, d71);
    f->avx512_bf16 = zmm && ((a71 >> 5) & 1);
    /* Linux (5.16+) hands out AMX tile state only to processes that ask; without it the first tile
     * instruction faults, so AMX counts as absent when the request fails. */
    if (f->amx_tile && syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
        pd_warn("AMX present but the kernel refused tile data (arch_prctl ARCH_REQ_XCOMP_PERM); AMX disabled");
        f->amx_tile = f->amx_bf16 = f->amx_int8 = 0;
    }
}

const krn_cpu_features *krn_cpu_get(void)
{
    if (!__atomic_load_n(&g_cpu_done, __ATOMIC_ACQUIRE)) {
        detect(&g_cpu);
        __atomic_store_n(&g_cpu_done, 1, __ATOMIC_RELEASE);
    }
    return &g_cpu;
}

void krn_cpu_describe(char *buf, size_t len)
{
    const krn_cpu_features *f = krn_cpu_get();
    struct { int on; const char *name; } all[] = {
        {f->avx2, "avx2"}, {f->fma, "fma"}, {f->avx512f, "avx512f"}, {f->avx512bw, "avx512bw"},
        {f->avx512_vnni, "avx512_vnni"}, {f->avx512_bf16, "avx512_bf16"}, {f->avx512_fp16, "avx512_fp16"},
        {f->amx_tile, "amx_tile"}, {f->amx_bf16, "amx_bf16"}, {f->amx_int8, "amx_int8"},
    };
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < PD_ARRAY_LEN(all) && n < len; i++)
        if (all[i].on) n += (size_t)snprintf(buf + n, len - n, "%s%s", n ? " " : "", all[i].name);
    if (n == 0) snprintf(buf, len, "portable");
}
