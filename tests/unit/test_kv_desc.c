/* Unit tests of the libpdkv descriptor codec: round trips of region and bare-peer descriptors, and
 * rejection (PD_ERR_FORMAT) of every kind of malformed string. */
#include <check.h>
#include <string.h>

#include "kvtransfer/kv.h"
#include "pd_check.h"

static kv_desc_t sample(uint8_t *addr, size_t addr_len, uint8_t *rkey, size_t rkey_len)
{
    for (size_t i = 0; i < addr_len; i++) addr[i] = (uint8_t)(i * 7 + 1);
    for (size_t i = 0; i < rkey_len; i++) rkey[i] = (uint8_t)(255 - i);
    kv_desc_t d = {.ctx_id = 0x0123456789abcdefull, .region_id = 3, .base = 0x7f0000001000ull, .length = 9u << 20,
                   .pid = 4242, .start_time = 987654321ull, .addr = addr, .addr_len = addr_len, .rkey = rkey,
                   .rkey_len = rkey_len};
    for (int i = 0; i < 16; i++) d.boot_id[i] = (uint8_t)(0xa0 + i);
    return d;
}

START_TEST(test_round_trip)
{
    /* Every body length mod 3 exercises each base64 tail. */
    for (size_t alen = 1; alen < 40; alen++) {
        uint8_t addr[64], rkey[16];
        kv_desc_t d = sample(addr, alen, rkey, 11);
        char *s = NULL;
        ck_assert_int_eq(kv_desc_encode(&d, &s), PD_OK);
        ck_assert(strncmp(s, "pdkv1:", 6) == 0);
        for (const char *p = s; *p; p++) ck_assert(*p != '"' && *p != '\\' && *p != '+' && *p != '/' && *p != '=');
        kv_desc_t *o = NULL;
        ck_assert_int_eq(kv_desc_decode(s, &o), PD_OK);
        ck_assert_uint_eq(o->ctx_id, d.ctx_id);
        ck_assert_uint_eq(o->region_id, d.region_id);
        ck_assert_uint_eq(o->base, d.base);
        ck_assert_uint_eq(o->length, d.length);
        ck_assert_uint_eq(o->pid, d.pid);
        ck_assert_uint_eq(o->start_time, d.start_time);
        ck_assert(memcmp(o->boot_id, d.boot_id, 16) == 0);
        ck_assert_uint_eq(o->addr_len, alen);
        ck_assert(memcmp(o->addr, addr, alen) == 0);
        ck_assert_uint_eq(o->rkey_len, 11);
        ck_assert(memcmp(o->rkey, rkey, 11) == 0);
        kv_desc_free(o);
        free(s);
    }
}
END_TEST

START_TEST(test_bare_peer)
{
    uint8_t addr[20], rkey[1];
    kv_desc_t d = sample(addr, sizeof(addr), rkey, 0);
    d.region_id = 0;
    d.length = 0;
    d.rkey = NULL;
    char *s;
    ck_assert_int_eq(kv_desc_encode(&d, &s), PD_OK);
    kv_desc_t *o;
    ck_assert_int_eq(kv_desc_decode(s, &o), PD_OK);
    ck_assert_uint_eq(o->rkey_len, 0);
    ck_assert_ptr_null(o->rkey);
    kv_desc_free(o);
    free(s);
    kv_desc_free(NULL);
}
END_TEST

static void expect_bad(const char *s)
{
    kv_desc_t *o = (kv_desc_t *)0x1;
    ck_assert_int_eq(kv_desc_decode(s, &o), PD_ERR_FORMAT);
    ck_assert_ptr_eq(o, (kv_desc_t *)0x1); /* output untouched on failure */
}

START_TEST(test_malformed)
{
    uint8_t addr[33], rkey[9];
    kv_desc_t d = sample(addr, sizeof(addr), rkey, sizeof(rkey));
    char *s;
    ck_assert_int_eq(kv_desc_encode(&d, &s), PD_OK);
    size_t n = strlen(s);
    char *t = malloc(n + 8);

    expect_bad("");
    expect_bad("pdkv1:");
    expect_bad("pdkv2:AAAA");
    expect_bad(s + 1); /* prefix damaged */
    strcpy(t, s);
    t[10] = '*'; /* not base64url */
    expect_bad(t);
    strcpy(t, s);
    t[10] = '+'; /* standard base64, not url-safe */
    expect_bad(t);
    for (size_t cut = 7; cut < n; cut += 5) { /* every truncation */
        memcpy(t, s, cut);
        t[cut] = '\0';
        expect_bad(t);
    }
    strcpy(t, s);
    t[20] = t[20] == 'A' ? 'B' : 'A'; /* flipped payload bit: checksum */
    expect_bad(t);
    strcpy(t, s);
    strcat(t, "AAAA"); /* trailing garbage: lengths no longer match */
    expect_bad(t);
    ck_assert_int_eq(kv_desc_decode(NULL, NULL), PD_ERR_INVALID);
    free(t);
    free(s);
}
END_TEST

START_TEST(test_encode_rejects_bad_input)
{
    uint8_t addr[4], rkey[4];
    kv_desc_t d = sample(addr, 0, rkey, 4);
    char *s = NULL;
    ck_assert_int_eq(kv_desc_encode(&d, &s), PD_ERR_INVALID); /* no worker address */
    ck_assert_ptr_null(s);
}
END_TEST

START_TEST(test_proto_parse)
{
    kv_proto p;
    ck_assert_int_eq(kv_proto_parse("am", &p), PD_OK);
    ck_assert_int_eq(p, KV_PROTO_AM);
    ck_assert_int_eq(kv_proto_parse("put", &p), PD_OK);
    ck_assert_int_eq(p, KV_PROTO_PUT);
    ck_assert_int_eq(kv_proto_parse("rdma", &p), PD_ERR_INVALID);
    ck_assert_str_eq(kv_proto_str(KV_PROTO_AUTO), "auto");
}
END_TEST

int main(void)
{
    pd_log_set_level(PD_LOG_ERROR); /* malformed-input warnings are expected here */
    Suite *s = suite_create("kv_desc");
    PD_CHECK_CASE(s, "core", 0, test_round_trip, test_bare_peer, test_malformed, test_encode_rejects_bad_input,
                  test_proto_parse);
    int failed = pd_check_run(s, 0);
    return failed ? 1 : 0;
}
