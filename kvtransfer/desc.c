/* Descriptor codec: a region's (or bare peer's) identity, UCX worker address and packed rkey, as a
 * printable string "pdkv1:<base64url>" that the control plane carries in JSON.
 * Binary layout (little-endian): "PDKV" u8 version u8 flags u16 0 | ctx_id u64 | region_id u64 |
 * base u64 | length u64 | pid u32 | start_time u64 | boot_id[16] | addr_len u32 | rkey_len u32 |
 * addr | rkey | crc32 u32 (of everything before it). */
#include <string.h>

#include "kvtransfer/kv.h"

#define KV__DESC_PREFIX "pdkv1:"
#define KV__DESC_VERSION 1
#define KV__DESC_FIXED 76
#define KV__DESC_MAX_BLOB (64 * 1024)

static const char kv__b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static uint32_t kv__crc32(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1u)));
    }
    return ~c;
}

static void kv__put_u16(uint8_t **p, uint16_t v) { for (int i = 0; i < 2; i++) *(*p)++ = (uint8_t)(v >> (8 * i)); }
static void kv__put_u32(uint8_t **p, uint32_t v) { for (int i = 0; i < 4; i++) *(*p)++ = (uint8_t)(v >> (8 * i)); }
static void kv__put_u64(uint8_t **p, uint64_t v) { for (int i = 0; i < 8; i++) *(*p)++ = (uint8_t)(v >> (8 * i)); }
static uint32_t kv__get_u32(const uint8_t **p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)(*p)[i] << (8 * i);
    *p += 4;
    return v;
}
static uint64_t kv__get_u64(const uint8_t **p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)(*p)[i] << (8 * i);
    *p += 8;
    return v;
}

pd_status kv_desc_encode(const kv_desc_t *d, char **out)
{
    if (!d || !out || d->addr_len == 0 || !d->addr || d->addr_len > KV__DESC_MAX_BLOB ||
        d->rkey_len > KV__DESC_MAX_BLOB || (d->rkey_len && !d->rkey))
        return PD_ERR_INVALID;
    size_t blen = KV__DESC_FIXED + d->addr_len + d->rkey_len + 4;
    uint8_t *bin = malloc(blen);
    size_t slen = strlen(KV__DESC_PREFIX) + (blen * 4 + 2) / 3 + 1;
    char *s = malloc(slen);
    if (!bin || !s) {
        free(bin);
        free(s);
        return PD_ERR_NOMEM;
    }
    uint8_t *p = bin;
    memcpy(p, "PDKV", 4);
    p += 4;
    *p++ = KV__DESC_VERSION;
    *p++ = 0;
    kv__put_u16(&p, 0);
    kv__put_u64(&p, d->ctx_id);
    kv__put_u64(&p, d->region_id);
    kv__put_u64(&p, d->base);
    kv__put_u64(&p, d->length);
    kv__put_u32(&p, d->pid);
    kv__put_u64(&p, d->start_time);
    memcpy(p, d->boot_id, 16);
    p += 16;
    kv__put_u32(&p, (uint32_t)d->addr_len);
    kv__put_u32(&p, (uint32_t)d->rkey_len);
    memcpy(p, d->addr, d->addr_len);
    p += d->addr_len;
    if (d->rkey_len) memcpy(p, d->rkey, d->rkey_len);
    p += d->rkey_len;
    kv__put_u32(&p, kv__crc32(bin, (size_t)(p - bin)));
    PD_ASSERT((size_t)(p - bin) == blen);

    char *o = s + strlen(KV__DESC_PREFIX);
    memcpy(s, KV__DESC_PREFIX, strlen(KV__DESC_PREFIX));
    size_t i = 0;
    for (; i + 3 <= blen; i += 3) {
        uint32_t v = (uint32_t)bin[i] << 16 | (uint32_t)bin[i + 1] << 8 | bin[i + 2];
        *o++ = kv__b64[v >> 18];
        *o++ = kv__b64[(v >> 12) & 63];
        *o++ = kv__b64[(v >> 6) & 63];
        *o++ = kv__b64[v & 63];
    }
    if (blen - i == 1) {
        uint32_t v = (uint32_t)bin[i] << 16;
        *o++ = kv__b64[v >> 18];
        *o++ = kv__b64[(v >> 12) & 63];
    } else if (blen - i == 2) {
        uint32_t v = (uint32_t)bin[i] << 16 | (uint32_t)bin[i + 1] << 8;
        *o++ = kv__b64[v >> 18];
        *o++ = kv__b64[(v >> 12) & 63];
        *o++ = kv__b64[(v >> 6) & 63];
    }
    *o = '\0';
    free(bin);
    *out = s;
    return PD_OK;
}

static int kv__b64_val(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

#define KV__DESC_BAD(...)                       \
    do {                                        \
        pd_warn("kv descriptor: " __VA_ARGS__); \
        goto free_bin;                          \
    } while (0)

pd_status kv_desc_decode(const char *s, kv_desc_t **out)
{
    if (!s || !out) return PD_ERR_INVALID;
    size_t plen = strlen(KV__DESC_PREFIX);
    if (strncmp(s, KV__DESC_PREFIX, plen) != 0) {
        pd_warn("kv descriptor: does not start with \"%s\"", KV__DESC_PREFIX);
        return PD_ERR_FORMAT;
    }
    const char *t = s + plen;
    size_t tlen = strlen(t);
    if (tlen % 4 == 1 || tlen > 4 * KV__DESC_MAX_BLOB) {
        pd_warn("kv descriptor: base64 text has an impossible length %zu", tlen);
        return PD_ERR_FORMAT;
    }
    size_t blen = tlen / 4 * 3 + (tlen % 4 ? tlen % 4 - 1 : 0);
    uint8_t *bin = malloc(blen ? blen : 1);
    if (!bin) return PD_ERR_NOMEM;
    size_t o = 0;
    uint32_t acc = 0;
    int nacc = 0;
    for (size_t i = 0; i < tlen; i++) {
        int v = kv__b64_val(t[i]);
        if (v < 0) KV__DESC_BAD("invalid base64url character at position %zu", plen + i);
        acc = acc << 6 | (uint32_t)v;
        if (++nacc == 4) {
            bin[o++] = (uint8_t)(acc >> 16);
            bin[o++] = (uint8_t)(acc >> 8);
            bin[o++] = (uint8_t)acc;
            acc = 0;
            nacc = 0;
        }
    }
    if (nacc == 2) {
        if (acc & 0xf) KV__DESC_BAD("non-canonical base64 tail");
        bin[o++] = (uint8_t)(acc >> 4);
    } else if (nacc == 3) {
        if (acc & 0x3) KV__DESC_BAD("non-canonical base64 tail");
        bin[o++] = (uint8_t)(acc >> 10);
        bin[o++] = (uint8_t)(acc >> 2);
    }
    PD_ASSERT(o == blen);
    if (blen < KV__DESC_FIXED + 4) KV__DESC_BAD("truncated (%zu bytes, need at least %d)", blen, KV__DESC_FIXED + 4);
    if (memcmp(bin, "PDKV", 4) != 0) KV__DESC_BAD("bad magic");
    if (bin[4] != KV__DESC_VERSION) KV__DESC_BAD("unsupported version %u", bin[4]);
    const uint8_t *p = bin + 8;
    uint64_t ctx_id = kv__get_u64(&p);
    uint64_t region_id = kv__get_u64(&p);
    uint64_t base = kv__get_u64(&p);
    uint64_t length = kv__get_u64(&p);
    uint32_t pid = kv__get_u32(&p);
    uint64_t start_time = kv__get_u64(&p);
    const uint8_t *boot_id = p;
    p += 16;
    uint32_t addr_len = kv__get_u32(&p);
    uint32_t rkey_len = kv__get_u32(&p);
    if (addr_len == 0) KV__DESC_BAD("empty worker address");
    if ((uint64_t)KV__DESC_FIXED + addr_len + rkey_len + 4 != blen)
        KV__DESC_BAD("lengths (address %u, rkey %u) do not match the %zu-byte body", addr_len, rkey_len, blen);
    const uint8_t *crcp = bin + blen - 4;
    if (kv__get_u32(&crcp) != kv__crc32(bin, blen - 4)) KV__DESC_BAD("checksum mismatch");
    if (region_id != 0 && (length == 0 || rkey_len == 0))
        KV__DESC_BAD("region without length or rkey");
    if (base + length < base) KV__DESC_BAD("region wraps the address space");

    kv_desc_t *d = malloc(sizeof(*d) + addr_len + rkey_len);
    if (!d) {
        free(bin);
        return PD_ERR_NOMEM;
    }
    uint8_t *blob = (uint8_t *)(d + 1);
    memcpy(blob, p, addr_len + rkey_len);
    d->ctx_id = ctx_id;
    d->region_id = region_id;
    d->base = base;
    d->length = length;
    d->pid = pid;
    d->start_time = start_time;
    memcpy(d->boot_id, boot_id, 16);
    d->addr = blob;
    d->addr_len = addr_len;
    d->rkey = rkey_len ? blob + addr_len : NULL;
    d->rkey_len = rkey_len;
    free(bin);
    *out = d;
    return PD_OK;

free_bin:
    free(bin);
    return PD_ERR_FORMAT;
}

void kv_desc_free(kv_desc_t *d) { free(d); }

const char *kv_proto_str(kv_proto p)
{
    switch (p) {
    case KV_PROTO_PUT: return "put";
    case KV_PROTO_AM: return "am";
    default: return "auto";
    }
}

pd_status kv_proto_parse(const char *s, kv_proto *out)
{
    if (!s) return PD_ERR_INVALID;
    if (!strcmp(s, "auto")) *out = KV_PROTO_AUTO;
    else if (!strcmp(s, "put")) *out = KV_PROTO_PUT;
    else if (!strcmp(s, "am")) *out = KV_PROTO_AM;
    else return PD_ERR_INVALID;
    return PD_OK;
}
