/* Unit tests of model/safetensors: writer -> reader round trips, sharded checkpoints with an index, the
 * golden fixtures, and one test per kind of malformed file (status and the message's file/tensor names). */
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/safetensors.h"
#include "pd_check.h"

/* ---- helpers ------------------------------------------------------------------------------------ */

static char tmpdir[64];

static void setup_tmp(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/pdst_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

/* Removes the directory and everything in it (one level, which is all the tests create). */
static void teardown_tmp(void)
{
    DIR *d = opendir(tmpdir);
    if (!d) return;
    struct dirent *de;
    char p[512];
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", tmpdir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(tmpdir);
}

static const char *tpath(const char *name)
{
    static char buf[4][512];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 512, "%s/%s", tmpdir, name);
    return p;
}

static int file_exists(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Writes a file: 8-byte little-endian hlen, the header text, then data_len bytes of 0xab. */
static const char *raw_file_len(const char *name, uint64_t hlen, const char *header, size_t data_len)
{
    const char *p = tpath(name);
    FILE *f = fopen(p, "wb");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 8; i++) fputc((int)((hlen >> (8 * i)) & 0xff), f);
    fwrite(header, 1, strlen(header), f);
    for (size_t i = 0; i < data_len; i++) fputc(0xab, f);
    fclose(f);
    return p;
}

static const char *raw_file(const char *name, const char *header, size_t data_len)
{
    return raw_file_len(name, strlen(header), header, data_len);
}

static void text_file(const char *name, const char *text)
{
    FILE *f = fopen(tpath(name), "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* Opens path expecting failure with status st; the message must contain each non-NULL needle, and *out
 * must stay untouched. */
static void expect_fail(const char *path, pd_status st, const char *needle1, const char *needle2)
{
    char err[1024] = "";
    int sentinel;
    mdl_st out = (mdl_st)(void *)&sentinel;
    pd_status rc = mdl_st_open(path, &out, err, sizeof err);
    ck_assert_msg(rc == st, "open(%s): expected %s, got %s (%s)", path, pd_status_str(st), pd_status_str(rc), err);
    ck_assert_ptr_eq(out, (mdl_st)(void *)&sentinel);
    if (needle1) ck_assert_msg(strstr(err, needle1) != NULL, "'%s' not in message: %s", needle1, err);
    if (needle2) ck_assert_msg(strstr(err, needle2) != NULL, "'%s' not in message: %s", needle2, err);
}

/* Header with one tensor entry around the given JSON body. */
static const char *one_tensor(const char *name, const char *entry_json, size_t data_len)
{
    static char hdr[1024];
    snprintf(hdr, sizeof hdr, "{\"t\":%s}", entry_json);
    return raw_file(name, hdr, data_len);
}

static void fill(unsigned char *p, size_t n, uint64_t seed)
{
    pd_rng r;
    pd_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)pd_rng_next(&r);
}

/* ---- round trips -------------------------------------------------------------------------------- */

typedef struct {
    const char *name;
    mdl_dtype dt;
    int ndim;
    int64_t shape[MDL_MAX_DIMS];
    int64_t numel;
} spec;

static const spec specs[] = {
    {"a.f32", MDL_DT_F32, 2, {2, 3}, 6},
    {"b.bf16", MDL_DT_BF16, 1, {5}, 5},
    {"c.scalar_i64", MDL_DT_I64, 0, {0}, 1},
    {"d.empty_u8", MDL_DT_U8, 2, {0, 7}, 0},
    {"e.empty_f32", MDL_DT_F32, 1, {0}, 0},
    {"f.fp8", MDL_DT_F8_E4M3, 2, {3, 5}, 15},
    {"g.f16", MDL_DT_F16, 3, {2, 1, 3}, 6},
    {"h.f64_8dims", MDL_DT_F64, 8, {1, 2, 1, 1, 1, 1, 1, 2}, 4},
    {"i.i32", MDL_DT_I32, 1, {3}, 3},
    {"j.i16", MDL_DT_I16, 1, {1}, 1},
    {"k.i8", MDL_DT_I8, 1, {9}, 9},
    {"l.bool", MDL_DT_BOOL, 1, {2}, 2},
    {"m \"quoted\"\\name\x01/\xc3\xa9", MDL_DT_F32, 0, {0}, 1},
};

/* Writes specs[] to path with chunk-byte writes; returns the data (caller frees). */
static unsigned char *write_specs(const char *path, size_t chunk, size_t *total)
{
    size_t n = 0;
    for (size_t i = 0; i < PD_ARRAY_LEN(specs); i++) n += (size_t)specs[i].numel * mdl_dtype_size(specs[i].dt);
    unsigned char *data = malloc(n);
    fill(data, n, 99);
    mdl_st_writer w = NULL;
    ck_assert_int_eq(mdl_st_writer_create(path, &w), PD_OK);
    for (size_t i = 0; i < PD_ARRAY_LEN(specs); i++)
        ck_assert_int_eq(mdl_st_writer_declare(w, specs[i].name, specs[i].dt, specs[i].ndim,
                                               specs[i].ndim ? specs[i].shape : NULL),
                         PD_OK);
    ck_assert_int_eq(mdl_st_writer_begin(w), PD_OK);
    for (size_t off = 0; off < n; off += chunk)
        ck_assert_int_eq(mdl_st_writer_write(w, data + off, PD_MIN(chunk, n - off)), PD_OK);
    ck_assert_int_eq(mdl_st_writer_finish(w), PD_OK);
    mdl_st_writer_destroy(w);
    *total = n;
    return data;
}

START_TEST(test_dtype_table)
{
    for (int i = 0; i < MDL_DT_COUNT; i++) {
        mdl_dtype d;
        ck_assert_int_eq(mdl_dtype_parse(mdl_dtype_name((mdl_dtype)i), &d), PD_OK);
        ck_assert_int_eq(d, i);
        ck_assert_uint_gt(mdl_dtype_size(d), 0);
    }
    ck_assert_str_eq(mdl_dtype_name(MDL_DT_F8_E4M3), "F8_E4M3");
    ck_assert_str_eq(mdl_dtype_name(MDL_DT_BF16), "BF16");
    ck_assert_uint_eq(mdl_dtype_size(MDL_DT_F64), 8);
    ck_assert_uint_eq(mdl_dtype_size(MDL_DT_BOOL), 1);
    ck_assert_str_eq(mdl_dtype_name(MDL_DT_COUNT), "?");
    ck_assert_uint_eq(mdl_dtype_size(MDL_DT_COUNT), 0);
    mdl_dtype d = MDL_DT_I8;
    ck_assert_int_eq(mdl_dtype_parse("bf16", &d), PD_ERR_FORMAT);
    ck_assert_int_eq(mdl_dtype_parse("F8_E5M2", &d), PD_ERR_FORMAT);
    ck_assert_int_eq(mdl_dtype_parse(NULL, &d), PD_ERR_INVALID);
    ck_assert_int_eq(d, MDL_DT_I8);
}
END_TEST

START_TEST(test_roundtrip)
{
    const size_t chunks[] = {1, 7, 1 << 20};
    for (size_t c = 0; c < PD_ARRAY_LEN(chunks); c++) {
        const char *path = tpath("rt.safetensors");
        size_t n;
        unsigned char *data = write_specs(path, chunks[c], &n);
        ck_assert(!file_exists(tpath("rt.safetensors.partial")));

        /* Header as the reference writes it: 8-aligned, space padded, __metadata__ format pt. */
        char *raw;
        size_t rawlen;
        ck_assert_int_eq(pd_file_read(path, &raw, &rawlen), PD_OK);
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (unsigned char)raw[i];
        ck_assert_uint_eq(hlen % 8, 0);
        ck_assert_uint_eq(rawlen, 8 + hlen + n);
        ck_assert(memmem(raw + 8, hlen, "{\"__metadata__\":{\"format\":\"pt\"}", 31) != NULL);
        ck_assert_int_eq(memcmp(raw + 8 + hlen, data, n), 0);
        free(raw);

        mdl_st st = NULL;
        char err[512] = "";
        ck_assert_int_eq(mdl_st_open(path, &st, err, sizeof err), PD_OK);
        ck_assert_uint_eq(mdl_st_count(st), PD_ARRAY_LEN(specs));
        ck_assert_uint_eq(mdl_st_total_bytes(st), n);
        ck_assert_uint_eq(mdl_st_file_count(st), 1);
        size_t off = 0;
        for (size_t i = 0; i < PD_ARRAY_LEN(specs); i++) {
            const spec *s = &specs[i];
            const mdl_tensor_view *v = mdl_st_find(st, s->name);
            ck_assert_ptr_nonnull(v);
            ck_assert_ptr_eq(v, mdl_st_at(st, i)); /* contiguous in declaration order */
            ck_assert_str_eq(v->name, s->name);
            ck_assert_str_eq(v->file, path);
            ck_assert_int_eq(v->dtype, s->dt);
            ck_assert_int_eq(v->ndim, s->ndim);
            for (int d = 0; d < MDL_MAX_DIMS; d++) ck_assert_int_eq(v->shape[d], d < s->ndim ? s->shape[d] : 0);
            ck_assert_int_eq(v->numel, s->numel);
            ck_assert_uint_eq(v->nbytes, (size_t)s->numel * mdl_dtype_size(s->dt));
            ck_assert_int_eq(memcmp(v->data, data + off, v->nbytes), 0);
            off += v->nbytes;
        }
        ck_assert_ptr_null(mdl_st_find(st, "nope"));
        ck_assert_ptr_null(mdl_st_find(st, "__metadata__"));
        ck_assert_ptr_null(mdl_st_at(st, PD_ARRAY_LEN(specs)));
        mdl_st_close(st);
        free(data);
    }
    mdl_st_close(NULL);
    ck_assert_uint_eq(mdl_st_count(NULL), 0);
}
END_TEST

START_TEST(test_writer_empty_file)
{
    mdl_st_writer w = NULL;
    const char *path = tpath("empty.safetensors");
    ck_assert_int_eq(mdl_st_writer_create(path, &w), PD_OK);
    ck_assert_int_eq(mdl_st_writer_begin(w), PD_OK);
    ck_assert_int_eq(mdl_st_writer_write(w, NULL, 0), PD_OK);
    ck_assert_int_eq(mdl_st_writer_finish(w), PD_OK);
    mdl_st_writer_destroy(w);
    mdl_st st = NULL;
    ck_assert_int_eq(mdl_st_open(path, &st, NULL, 0), PD_OK);
    ck_assert_uint_eq(mdl_st_count(st), 0);
    ck_assert_uint_eq(mdl_st_total_bytes(st), 0);
    mdl_st_close(st);
}
END_TEST

START_TEST(test_writer_misuse)
{
    const char *path = tpath("w.safetensors");
    const char *partial = tpath("w.safetensors.partial");
    int64_t shape[2] = {2, 2};
    unsigned char buf[64] = {0};
    mdl_st_writer w = NULL;

    ck_assert_int_eq(mdl_st_writer_create(tpath("no/such/dir.safetensors"), &w), PD_ERR_NOT_FOUND);
    ck_assert_ptr_null(w);

    ck_assert_int_eq(mdl_st_writer_create(path, &w), PD_OK);
    ck_assert(file_exists(partial));
    ck_assert_int_eq(mdl_st_writer_write(w, buf, 1), PD_ERR_INVALID); /* before begin */
    ck_assert_int_eq(mdl_st_writer_declare(w, "x", MDL_DT_F32, 2, shape), PD_OK);
    ck_assert_int_eq(mdl_st_writer_declare(w, "x", MDL_DT_F32, 2, shape), PD_ERR_INVALID);
    ck_assert_int_eq(mdl_st_writer_declare(w, "__metadata__", MDL_DT_F32, 2, shape), PD_ERR_INVALID);
    ck_assert_int_eq(mdl_st_writer_declare(w, "", MDL_DT_F32, 2, shape), PD_ERR_INVALID);
    ck_assert_int_eq(mdl_st_writer_declare(w, "bad\xff", MDL_DT_F32, 2, shape), PD_ERR_INVALID);
    ck_assert_int_eq(mdl_st_writer_declare(w, "y", MDL_DT_COUNT, 2, shape), PD_ERR_INVALID);
    ck_assert_int_eq(mdl_st_writer_declare(w, "y", MDL_DT_F32, MDL_MAX_DIMS + 1, shape), PD_ERR_INVALID);
    int64_t neg[1] = {-1};
    ck_assert_int_eq(mdl_st_writer_declare(w, "y", MDL_DT_F32, 1, neg), PD_ERR_INVALID);
    int64_t huge[3] = {1 << 30, 1 << 30, 1 << 30};
    ck_assert_int_eq(mdl_st_writer_declare(w, "y", MDL_DT_F32, 3, huge), PD_ERR_INVALID);
    ck_assert_int_eq(mdl_st_writer_begin(w), PD_OK);
    ck_assert_int_eq(mdl_st_writer_begin(w), PD_ERR_INVALID);
    ck_assert_int_eq(mdl_st_writer_declare(w, "z", MDL_DT_F32, 2, shape), PD_ERR_INVALID);
    ck_assert_int_eq(mdl_st_writer_write(w, buf, 10), PD_OK);
    ck_assert_int_eq(mdl_st_writer_write(w, buf, 7), PD_ERR_RANGE); /* 17 > 16 declared */
    ck_assert_int_eq(mdl_st_writer_finish(w), PD_ERR_RANGE);        /* 10 < 16 */
    ck_assert(!file_exists(path));
    mdl_st_writer_destroy(w);
    ck_assert(!file_exists(partial));
    ck_assert(!file_exists(path));

    /* An abandoned writer leaves an existing file alone. */
    text_file("w.safetensors", "old");
    ck_assert_int_eq(mdl_st_writer_create(path, &w), PD_OK);
    mdl_st_writer_destroy(w);
    ck_assert(file_exists(path));
    ck_assert(!file_exists(partial));
    mdl_st_writer_destroy(NULL);
}
END_TEST

/* Writes shard `name` holding tensors prefix.0 .. prefix.(n-1), each F32 [k] with k = i % 4 (so some are empty). */
static size_t write_shard(const char *name, const char *prefix, int n, const char **names_out, const char **files_out)
{
    mdl_st_writer w = NULL;
    ck_assert_int_eq(mdl_st_writer_create(tpath(name), &w), PD_OK);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        char tn[64];
        snprintf(tn, sizeof tn, "%s.%d", prefix, i);
        int64_t k = i % 4;
        ck_assert_int_eq(mdl_st_writer_declare(w, tn, MDL_DT_F32, 1, &k), PD_OK);
        if (names_out) {
            names_out[i] = strdup(tn);
            files_out[i] = name;
        }
        total += (size_t)k * 4;
    }
    ck_assert_int_eq(mdl_st_writer_begin(w), PD_OK);
    for (int i = 0; i < n; i++) {
        float v[3];
        for (int j = 0; j < i % 4; j++) v[j] = (float)i + 0.25f * (float)j;
        ck_assert_int_eq(mdl_st_writer_write(w, v, (size_t)(i % 4) * 4), PD_OK);
    }
    ck_assert_int_eq(mdl_st_writer_finish(w), PD_OK);
    mdl_st_writer_destroy(w);
    return total;
}

START_TEST(test_sharded_index)
{
    enum { PER = 3000 };
    const char *names[3 * PER];
    const char *files[3 * PER];
    size_t total = 0;
    /* Written out of name order: the reader sorts shards by name. */
    total += write_shard("model-00002-of-00003.safetensors", "b", PER, names + PER, files + PER);
    total += write_shard("model-00001-of-00003.safetensors", "a", PER, names, files);
    total += write_shard("model-00003-of-00003.safetensors", "c", PER, names + 2 * PER, files + 2 * PER);
    ck_assert_int_eq(mdl_st_index_write(tmpdir, names, files, 3 * PER, total), PD_OK);
    ck_assert(file_exists(tpath("model.safetensors.index.json")));

    const char *opens[2] = {tmpdir, tpath("model.safetensors.index.json")};
    for (int o = 0; o < 2; o++) {
        mdl_st st = NULL;
        char err[512] = "";
        ck_assert_int_eq(mdl_st_open(opens[o], &st, err, sizeof err), PD_OK);
        ck_assert_uint_eq(mdl_st_count(st), 3 * PER);
        ck_assert_uint_eq(mdl_st_file_count(st), 3);
        ck_assert_uint_eq(mdl_st_total_bytes(st), total);
        ck_assert(strstr(mdl_st_at(st, 0)->file, "model-00001-of-00003.safetensors") != NULL);
        ck_assert(strstr(mdl_st_at(st, 3 * PER - 1)->file, "model-00003-of-00003.safetensors") != NULL);
        for (int i = 0; i < 3 * PER; i++) {
            const mdl_tensor_view *v = mdl_st_find(st, names[i]);
            ck_assert_ptr_nonnull(v);
            ck_assert(strstr(v->file, files[i]) != NULL);
            int k = (i % PER) % 4;
            ck_assert_int_eq(v->shape[0], k);
            const float *f = v->data;
            for (int j = 0; j < k; j++) {
                float x;
                memcpy(&x, f + j, 4);
                ck_assert(x == (float)(i % PER) + 0.25f * (float)j);
            }
        }
        mdl_st_close(st);
    }

    /* The index file as Hugging Face lays it out. */
    char *text;
    ck_assert_int_eq(pd_file_read(tpath("model.safetensors.index.json"), &text, NULL), PD_OK);
    char want[128];
    snprintf(want, sizeof want, "\"metadata\": {\n    \"total_size\": %zu\n  }", total);
    ck_assert(strstr(text, want) != NULL);
    ck_assert(strstr(text, "\"a.0\": \"model-00001-of-00003.safetensors\"") != NULL);
    free(text);
    for (int i = 0; i < 3 * PER; i++) free((void *)names[i]);

    const char *dup[2] = {"x", "x"};
    const char *df[2] = {"f", "f"};
    ck_assert_int_eq(mdl_st_index_write(tpath("dup.json"), dup, df, 2, 0), PD_ERR_INVALID);
    ck_assert(!file_exists(tpath("dup.json")));
}
END_TEST

START_TEST(test_directory_resolution)
{
    /* No index, no model.safetensors: the only .safetensors file. */
    write_shard("only.safetensors", "o", 3, NULL, NULL);
    mdl_st st = NULL;
    ck_assert_int_eq(mdl_st_open(tmpdir, &st, NULL, 0), PD_OK);
    ck_assert_uint_eq(mdl_st_count(st), 3);
    mdl_st_close(st);
    /* Two of them is ambiguous. */
    write_shard("other.safetensors", "p", 2, NULL, NULL);
    expect_fail(tmpdir, PD_ERR_FORMAT, tmpdir, "several");
    /* model.safetensors wins over the others. */
    write_shard("model.safetensors", "m", 5, NULL, NULL);
    ck_assert_int_eq(mdl_st_open(tmpdir, &st, NULL, 0), PD_OK);
    ck_assert_uint_eq(mdl_st_count(st), 5);
    ck_assert_ptr_nonnull(mdl_st_find(st, "m.4"));
    mdl_st_close(st);
    /* Missing things. */
    expect_fail(tpath("missing.safetensors"), PD_ERR_NOT_FOUND, "missing.safetensors", NULL);
    expect_fail(tpath("missing.json"), PD_ERR_NOT_FOUND, "missing.json", NULL);
    ck_assert_int_eq(mkdir(tpath("sub"), 0700), 0);
    expect_fail(tpath("sub"), PD_ERR_NOT_FOUND, "sub", NULL);
    rmdir(tpath("sub"));
}
END_TEST

/* ---- golden fixtures ---------------------------------------------------------------------------- */

static void check_view(const mdl_st st, const char *name, mdl_dtype dt, int ndim, int64_t d0, int64_t d1)
{
    const mdl_tensor_view *v = mdl_st_find(st, name);
    ck_assert_msg(v != NULL, "%s missing", name);
    ck_assert_int_eq(v->dtype, dt);
    ck_assert_int_eq(v->ndim, ndim);
    ck_assert_int_eq(v->shape[0], d0);
    if (ndim > 1) ck_assert_int_eq(v->shape[1], d1);
}

/* Compares a view's bytes with the file's bytes at 8 + hlen + begin, read with stdio. */
static void check_bytes(const mdl_tensor_view *v, const char *path, uint64_t hlen, uint64_t begin)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    unsigned char *buf = malloc(v->nbytes);
    ck_assert_int_eq(fseek(f, (long)(8 + hlen + begin), SEEK_SET), 0);
    ck_assert_uint_eq(fread(buf, 1, v->nbytes, f), v->nbytes);
    ck_assert_int_eq(memcmp(buf, v->data, v->nbytes), 0);
    free(buf);
    fclose(f);
}

START_TEST(test_fixture_v3tiny)
{
    const char *path = PD_FIXTURES "/v3tiny/model.safetensors";
    mdl_st st = NULL;
    char err[512] = "";
    ck_assert_int_eq(mdl_st_open(path, &st, err, sizeof err), PD_OK);
    ck_assert_uint_eq(mdl_st_count(st), 207);
    ck_assert_uint_eq(mdl_st_total_bytes(st), 14220992);
    check_view(st, "model.layers.0.self_attn.kv_b_proj.weight", MDL_DT_BF16, 2, 256, 64);
    check_view(st, "model.layers.0.mlp.down_proj.weight", MDL_DT_BF16, 2, 256, 512);
    check_view(st, "model.layers.1.mlp.gate.e_score_correction_bias", MDL_DT_F32, 1, 16, 0);
    ck_assert_str_eq(mdl_st_find(st, "lm_head.weight")->file, path);
    check_bytes(mdl_st_find(st, "model.layers.1.mlp.gate.e_score_correction_bias"), path, 23744, 5236608);
    check_bytes(mdl_st_find(st, "model.layers.0.self_attn.kv_b_proj.weight"), path, 23744, 1877120);
    mdl_st_close(st);
    /* The fixture directory resolves to its model.safetensors. */
    ck_assert_int_eq(mdl_st_open(PD_FIXTURES "/v3tiny", &st, err, sizeof err), PD_OK);
    ck_assert_uint_eq(mdl_st_count(st), 207);
    mdl_st_close(st);
}
END_TEST

START_TEST(test_fixture_v3yarn_fp8)
{
    const char *path = PD_FIXTURES "/v3yarn-fp8/model.safetensors";
    mdl_st st = NULL;
    char err[512] = "";
    ck_assert_int_eq(mdl_st_open(path, &st, err, sizeof err), PD_OK);
    ck_assert_uint_eq(mdl_st_count(st), 686);
    ck_assert_uint_eq(mdl_st_total_bytes(st), 17237108);
    check_view(st, "model.layers.0.mlp.down_proj.weight", MDL_DT_F8_E4M3, 2, 320, 640);
    check_view(st, "model.layers.0.mlp.down_proj.weight_scale_inv", MDL_DT_F32, 2, 3, 5);
    check_view(st, "model.layers.0.self_attn.kv_b_proj.weight", MDL_DT_F8_E4M3, 2, 440, 80);
    check_view(st, "model.layers.0.self_attn.kv_b_proj.weight_scale_inv", MDL_DT_F32, 2, 4, 1);
    check_bytes(mdl_st_find(st, "model.layers.0.mlp.down_proj.weight_scale_inv"), path, 81856, 2826880);
    mdl_st_close(st);
}
END_TEST

/* ---- malformed files: one test per check ------------------------------------------------------ */

START_TEST(test_bad_short_file)
{
    text_file("short.safetensors", "1234567");
    expect_fail(tpath("short.safetensors"), PD_ERR_FORMAT, "short.safetensors", "shorter than");
    text_file("zero.safetensors", "");
    expect_fail(tpath("zero.safetensors"), PD_ERR_FORMAT, "zero.safetensors", NULL);
}
END_TEST

START_TEST(test_bad_header_len_zero)
{
    expect_fail(raw_file_len("h0.safetensors", 0, "{}", 0), PD_ERR_FORMAT, "h0.safetensors", "header length 0");
}
END_TEST

START_TEST(test_bad_header_len_huge)
{
    /* Over the 100 MB limit, and separately a length that the file cannot hold. */
    expect_fail(raw_file_len("hbig.safetensors", 100000001ull, "{}", 0), PD_ERR_FORMAT, "hbig.safetensors",
                "header length 100000001");
    expect_fail(raw_file_len("hmax.safetensors", UINT64_MAX, "{}", 0), PD_ERR_FORMAT, "hmax.safetensors", NULL);
    expect_fail(raw_file_len("hpast.safetensors", 3, "{}", 0), PD_ERR_FORMAT, "hpast.safetensors",
                "header length 3");
}
END_TEST

START_TEST(test_bad_header_json)
{
    expect_fail(raw_file("json.safetensors", "{\"t\":{\"dtype\":", 0), PD_ERR_FORMAT, "json.safetensors",
                "not valid JSON");
    expect_fail(raw_file("trail.safetensors", "{} x", 0), PD_ERR_FORMAT, "trail.safetensors", "trailing");
    expect_fail(raw_file("utf8.safetensors", "{\"\xc0\xaf\":1}", 0), PD_ERR_FORMAT, "utf8.safetensors", "UTF-8");
    /* Padding with spaces is fine; the reference pads that way. */
    mdl_st st = NULL;
    ck_assert_int_eq(mdl_st_open(raw_file("pad.safetensors", "{}      ", 0), &st, NULL, 0), PD_OK);
    mdl_st_close(st);
}
END_TEST

START_TEST(test_bad_header_not_object)
{
    expect_fail(raw_file("arr.safetensors", "[1,2]   ", 0), PD_ERR_FORMAT, "arr.safetensors", "not a JSON object");
    expect_fail(raw_file("str.safetensors", "\"x\"", 0), PD_ERR_FORMAT, "str.safetensors", "not a JSON object");
}
END_TEST

START_TEST(test_bad_entry_not_object)
{
    expect_fail(one_tensor("ent.safetensors", "[1]", 0), PD_ERR_FORMAT, "ent.safetensors", "'t'");
    expect_fail(raw_file("ent2.safetensors", "{\"w.bias\":5}", 0), PD_ERR_FORMAT, "ent2.safetensors", "'w.bias'");
}
END_TEST

START_TEST(test_bad_metadata)
{
    expect_fail(raw_file("meta.safetensors", "{\"__metadata__\":{\"format\":1}}", 0), PD_ERR_FORMAT,
                "meta.safetensors", "__metadata__");
    expect_fail(raw_file("meta2.safetensors", "{\"__metadata__\":[]}", 0), PD_ERR_FORMAT, "meta2.safetensors",
                "__metadata__");
}
END_TEST

START_TEST(test_bad_dtype)
{
    expect_fail(one_tensor("dt.safetensors", "{\"dtype\":\"Q4_K\",\"shape\":[1],\"data_offsets\":[0,1]}", 1),
                PD_ERR_FORMAT, "dt.safetensors", "'t'");
    expect_fail(one_tensor("dt2.safetensors", "{\"dtype\":\"F8_E5M2\",\"shape\":[1],\"data_offsets\":[0,1]}", 1),
                PD_ERR_FORMAT, "dt2.safetensors", "F8_E5M2");
    expect_fail(one_tensor("dt3.safetensors", "{\"shape\":[1],\"data_offsets\":[0,1]}", 1), PD_ERR_FORMAT,
                "dt3.safetensors", "'t'");
}
END_TEST

START_TEST(test_bad_shape)
{
    static const char *bad[] = {
        "{\"dtype\":\"U8\",\"shape\":4,\"data_offsets\":[0,4]}",
        "{\"dtype\":\"U8\",\"shape\":[-4],\"data_offsets\":[0,4]}",
        "{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,4]}",
        "{\"dtype\":\"U8\",\"shape\":[\"4\"],\"data_offsets\":[0,4]}",
        "{\"dtype\":\"U8\",\"shape\":[1e300],\"data_offsets\":[0,4]}",
        "{\"dtype\":\"U8\",\"data_offsets\":[0,4]}",
        "{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,4],\"data_offsets\":[0,4]}",
    };
    for (size_t i = 0; i < PD_ARRAY_LEN(bad); i++) {
        char name[64];
        snprintf(name, sizeof name, "shape%zu.safetensors", i);
        expect_fail(one_tensor(name, bad[i], 4), PD_ERR_FORMAT, name, "tensor 't'");
    }
    expect_fail(one_tensor("dims.safetensors", bad[6], 4), PD_ERR_FORMAT, "dims.safetensors", "more than 8");
    /* Eight dimensions are fine. */
    mdl_st st = NULL;
    ck_assert_int_eq(mdl_st_open(one_tensor("dims8.safetensors",
                                            "{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,4],\"data_offsets\":[0,4]}", 4),
                                 &st, NULL, 0),
                     PD_OK);
    ck_assert_int_eq(mdl_st_find(st, "t")->ndim, 8);
    mdl_st_close(st);
}
END_TEST

START_TEST(test_bad_offsets)
{
    static const char *bad[] = {
        "{\"dtype\":\"U8\",\"shape\":[4]}",
        "{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0]}",
        "{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4,8]}",
        "{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[\"0\",4]}",
        "{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[-1,3]}",
        "{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":{\"a\":0,\"b\":4}}",
    };
    for (size_t i = 0; i < PD_ARRAY_LEN(bad); i++) {
        char name[64];
        snprintf(name, sizeof name, "off%zu.safetensors", i);
        expect_fail(one_tensor(name, bad[i], 8), PD_ERR_FORMAT, name, "tensor 't'");
    }
    expect_fail(one_tensor("rev.safetensors", "{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[4,0]}", 8),
                PD_ERR_FORMAT, "rev.safetensors", "begin > end");
}
END_TEST

START_TEST(test_bad_end_beyond_buffer)
{
    expect_fail(one_tensor("end.safetensors", "{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 7),
                PD_ERR_FORMAT, "end.safetensors", "tensor 't'");
    expect_fail(one_tensor("end2.safetensors",
                           "{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[9007199254740992,9007199254740992]}", 7),
                PD_ERR_FORMAT, "end2.safetensors", "beyond the data buffer");
}
END_TEST

START_TEST(test_bad_size_mismatch)
{
    expect_fail(one_tensor("sz.safetensors", "{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,11]}", 12),
                PD_ERR_FORMAT, "sz.safetensors", "tensor 't'");
    expect_fail(one_tensor("sz2.safetensors", "{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,6]}", 12),
                PD_ERR_FORMAT, "sz2.safetensors", "needs 12");
    /* numel * size overflows 64 bits: caught, not wrapped into a small matching size. */
    expect_fail(one_tensor("ovf.safetensors",
                           "{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}", 4),
                PD_ERR_FORMAT, "ovf.safetensors", "overflow");
    expect_fail(one_tensor("ovf2.safetensors",
                           "{\"dtype\":\"F64\",\"shape\":[1099511627776,4194304],\"data_offsets\":[0,0]}", 4),
                PD_ERR_FORMAT, "ovf2.safetensors", "overflow");
    /* A zero extent makes any other extents harmless. */
    mdl_st st = NULL;
    ck_assert_int_eq(mdl_st_open(one_tensor("zero.safetensors",
                                            "{\"dtype\":\"F32\",\"shape\":[0,4294967296,4294967296],"
                                            "\"data_offsets\":[0,0]}",
                                            0),
                                 &st, NULL, 0),
                     PD_OK);
    ck_assert_int_eq(mdl_st_find(st, "t")->numel, 0);
    mdl_st_close(st);
}
END_TEST

START_TEST(test_bad_overlap)
{
    const char *hdr = "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
                      "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                      "\"c\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[6,9]}}";
    expect_fail(raw_file("ovl.safetensors", hdr, 16), PD_ERR_FORMAT, "ovl.safetensors", "'c' overlaps tensor 'a'");
    /* Gaps and empty tensors inside others are not overlaps. */
    hdr = "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]},"
          "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
          "\"e\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[5,5]},"
          "\"c\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[8,11]}}";
    mdl_st st = NULL;
    ck_assert_int_eq(mdl_st_open(raw_file("ok.safetensors", hdr, 16), &st, NULL, 0), PD_OK);
    ck_assert_str_eq(mdl_st_at(st, 0)->name, "b"); /* by data offset */
    ck_assert_str_eq(mdl_st_at(st, 3)->name, "c");
    ck_assert_uint_eq(mdl_st_total_bytes(st), 9);
    mdl_st_close(st);
}
END_TEST

START_TEST(test_bad_duplicate_name)
{
    const char *hdr = "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                      "\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}";
    expect_fail(raw_file("dup.safetensors", hdr, 4), PD_ERR_FORMAT, "dup.safetensors", "'w' is defined twice");
    expect_fail(raw_file("dupmeta.safetensors", "{\"__metadata__\":{},\"__metadata__\":{}}", 0), PD_ERR_FORMAT,
                "dupmeta.safetensors", "__metadata__");
}
END_TEST

START_TEST(test_bad_duplicate_across_shards)
{
    raw_file("s1.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
    raw_file("s2.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
                               "\"v\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}", 2);
    text_file("model.safetensors.index.json", "{\"weight_map\":{\"w\":\"s1.safetensors\",\"v\":\"s2.safetensors\"}}");
    expect_fail(tmpdir, PD_ERR_FORMAT, "s2.safetensors", "'w' is also defined in");
    expect_fail(tmpdir, PD_ERR_FORMAT, "s1.safetensors", NULL);
}
END_TEST

START_TEST(test_bad_index)
{
    raw_file("s1.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
    raw_file("s2.safetensors", "{\"v\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
    const char *idx = tpath("model.safetensors.index.json");

    text_file("model.safetensors.index.json", "{\"weight_map\":{\"w\":\"s1.safetensors\",");
    expect_fail(tmpdir, PD_ERR_FORMAT, idx, "not a valid JSON");
    text_file("model.safetensors.index.json", "{\"weight_map\":{\"w\":\"s1.safetensors\"}} x");
    expect_fail(tmpdir, PD_ERR_FORMAT, idx, "not a valid JSON");
    text_file("model.safetensors.index.json", "[]");
    expect_fail(tmpdir, PD_ERR_FORMAT, idx, "not a valid JSON object");
    text_file("model.safetensors.index.json", "{\"metadata\":{}}");
    expect_fail(tmpdir, PD_ERR_FORMAT, idx, "weight_map");
    text_file("model.safetensors.index.json", "{\"weight_map\":[\"s1.safetensors\"]}");
    expect_fail(tmpdir, PD_ERR_FORMAT, idx, "weight_map");
    text_file("model.safetensors.index.json", "{\"weight_map\":{\"w\":7}}");
    expect_fail(tmpdir, PD_ERR_FORMAT, idx, "'w'");
    /* A shard that is not there: named in the message. */
    text_file("model.safetensors.index.json", "{\"weight_map\":{\"w\":\"s1.safetensors\",\"x\":\"s9.safetensors\"}}");
    expect_fail(tmpdir, PD_ERR_NOT_FOUND, idx, "s9.safetensors");
    /* A tensor that its shard lacks: both named. */
    text_file("model.safetensors.index.json", "{\"weight_map\":{\"w\":\"s1.safetensors\",\"q\":\"s2.safetensors\"}}");
    expect_fail(tmpdir, PD_ERR_FORMAT, "'q'", "s2.safetensors");
    /* A tensor listed under the wrong shard. */
    text_file("model.safetensors.index.json", "{\"weight_map\":{\"w\":\"s2.safetensors\",\"v\":\"s1.safetensors\"}}");
    expect_fail(tmpdir, PD_ERR_FORMAT, "'w' in ", "s2.safetensors, which does not contain it (it is in");
    /* Listed twice. */
    text_file("model.safetensors.index.json", "{\"weight_map\":{\"w\":\"s1.safetensors\",\"w\":\"s1.safetensors\"}}");
    expect_fail(tmpdir, PD_ERR_FORMAT, "'w'", "twice");
    /* A bad shard is reported with the shard's name. */
    raw_file("s3.safetensors", "{\"u\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2);
    text_file("model.safetensors.index.json", "{\"weight_map\":{\"w\":\"s1.safetensors\",\"u\":\"s3.safetensors\"}}");
    expect_fail(tmpdir, PD_ERR_FORMAT, "s3.safetensors", "tensor 'u'");
    /* And a good one opens, by directory and by file; unlisted shard tensors are still there. */
    text_file("model.safetensors.index.json", "{\"metadata\":{\"total_size\":4},"
                                              "\"weight_map\":{\"w\":\"s1.safetensors\",\"v\":\"s2.safetensors\"}}");
    mdl_st st = NULL;
    ck_assert_int_eq(mdl_st_open(idx, &st, NULL, 0), PD_OK);
    ck_assert_uint_eq(mdl_st_count(st), 2);
    ck_assert_str_eq(mdl_st_find(st, "v")->file, tpath("s2.safetensors"));
    mdl_st_close(st);
}
END_TEST

START_TEST(test_not_a_regular_file)
{
    ck_assert_int_eq(mkdir(tpath("d.safetensors"), 0700), 0);
    write_shard("model.safetensors", "m", 1, NULL, NULL);
    /* A directory whose name ends in .safetensors is neither a file to map nor a checkpoint dir. */
    expect_fail(tpath("d.safetensors"), PD_ERR_NOT_FOUND, "d.safetensors", NULL);
    rmdir(tpath("d.safetensors"));
    expect_fail("/dev/null", PD_ERR_FORMAT, "/dev/null", "regular file");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = PD_CHECK_CASE(s, "core", 120, test_dtype_table, test_roundtrip, test_writer_empty_file,
                  test_writer_misuse, test_sharded_index, test_directory_resolution, test_fixture_v3tiny,
                  test_fixture_v3yarn_fp8, test_bad_short_file, test_bad_header_len_zero, test_bad_header_len_huge,
                  test_bad_header_json, test_bad_header_not_object, test_bad_entry_not_object, test_bad_metadata,
                  test_bad_dtype, test_bad_shape, test_bad_offsets, test_bad_end_beyond_buffer, test_bad_size_mismatch,
                  test_bad_overlap, test_bad_duplicate_name, test_bad_duplicate_across_shards, test_bad_index,
                  test_not_a_regular_file);
    tcase_add_checked_fixture(tc, setup_tmp, teardown_tmp);
    return s;
}

int main(void)
{
    int failed = pd_check_run(suite(), 0);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
