/* Random-weight checkpoints in the official layout. Tensors stream through the safetensors writer row block
 * by row block, so memory stays small whatever the model size. */
#include <cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "kernels/krn.h"
#include "model/mdl_generate.h"
#include "model/mdl_tensors.h"
#include "model/safetensors.h"

#define fail(err, errlen, st, ...) PD_FAIL(err, errlen, st, NULL, __VA_ARGS__)

static int is_fp8(const mdl_config *c, const mdl_tensor_spec *s, int fp8)
{
    return fp8 && s->kind == MDL_T_MATRIX && s->fp8 && s->shape[0] >= 1;
    (void)c;
}

static uint64_t spec_bytes(const mdl_config *c, const mdl_tensor_spec *s, int fp8)
{
    uint64_t n = (uint64_t)s->shape[0] * (uint64_t)(s->ndim == 2 ? s->shape[1] : 1);
    if (s->kind == MDL_T_BIAS) return n * 4;
    if (is_fp8(c, s, fp8)) {
        uint64_t sb = (uint64_t)((s->shape[0] + c->fp8_block[0] - 1) / c->fp8_block[0]) *
                      (uint64_t)((s->shape[1] + c->fp8_block[1] - 1) / c->fp8_block[1]);
        return n + sb * 4;
    }
    return n * 2;
}

/* The config a checkpoint is written with: FP8 on or off, and FP8's 128x128 scale blocks unless the config sets
 * its own (presets other than v3 have none). */
static mdl_config written_config(const mdl_config *cfg, int fp8)
{
    mdl_config c = *cfg;
    c.fp8 = fp8 != 0;
    if (fp8 && (c.fp8_block[0] < 1 || c.fp8_block[1] < 1)) c.fp8_block[0] = c.fp8_block[1] = 128;
    return c;
}

uint64_t mdl_generate_size(const mdl_config *cfg, int fp8)
{
    const mdl_config cc = written_config(cfg, fp8), *c = &cc;
    int n_mtp = c->num_nextn_predict_layers > 0;
    size_t n = mdl_tensor_specs(c, n_mtp, NULL, 0);
    mdl_tensor_spec *sp = calloc(n, sizeof *sp);
    if (!sp) return 0;
    mdl_tensor_specs(c, n_mtp, sp, n);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) total += spec_bytes(c, &sp[i], fp8);
    free(sp);
    return total;
}

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

/* The MTP layer's embedding and head repeat the main model's, as in DeepSeek-V3's release. */
static const char *value_key(const mdl_config *c, const mdl_tensor_spec *s)
{
    if (s->layer >= c->num_hidden_layers) {
        if (strstr(s->name, ".embed_tokens.weight")) return "model.embed_tokens.weight";
        if (strstr(s->name, ".shared_head.head.weight")) return "lm_head.weight";
    }
    return s->name;
}

static float draw(const mdl_tensor_spec *s, pd_rng *r)
{
    double z = pd_rng_normal(r);
    switch (s->kind) {
    case MDL_T_NORM: return (float)(1.0 + 0.05 * z);
    case MDL_T_BIAS: return (float)(0.02 * z);
    case MDL_T_EMBED: return (float)z;
    default: return (float)(z / sqrt((double)s->shape[1]));
    }
}

typedef struct {
    mdl_st_writer w;
    char path[4200];
} shard;

static pd_status write_tensor(mdl_st_writer w, const mdl_config *c, const mdl_tensor_spec *s, uint64_t seed, int fp8)
{
    pd_rng r;
    pd_rng_seed(&r, seed ^ name_hash(value_key(c, s)));
    const int64_t R = s->shape[0], C = s->ndim == 2 ? s->shape[1] : 1;
    pd_status st = PD_OK;
    if (s->kind == MDL_T_BIAS) {
        float *v = malloc((size_t)R * 4);
        if (!v) return PD_ERR_NOMEM;
        for (int64_t i = 0; i < R; i++) v[i] = draw(s, &r);
        st = mdl_st_writer_write(w, v, (size_t)R * 4);
        free(v);
        return st;
    }
    if (!is_fp8(c, s, fp8)) {
        krn_bf16 *row = malloc((size_t)C * 2);
        if (!row) return PD_ERR_NOMEM;
        for (int64_t i = 0; i < R && st == PD_OK; i++) {
            for (int64_t j = 0; j < C; j++) row[j] = krn_f32_to_bf16(draw(s, &r));
            st = mdl_st_writer_write(w, row, (size_t)C * 2);
        }
        free(row);
        return st;
    }
    /* FP8: one block-row at a time; scales per 128x128 block = amax / 448 */
    const int br = c->fp8_block[0], bc = c->fp8_block[1];
    const int64_t sr = (R + br - 1) / br, sc = (C + bc - 1) / bc;
    float *blk = malloc((size_t)br * (size_t)C * sizeof(float));
    uint8_t *q = malloc((size_t)br * (size_t)C);
    float *scales = malloc((size_t)(sr * sc) * sizeof(float));
    if (!blk || !q || !scales) {
        st = PD_ERR_NOMEM;
        goto free_bufs;
    }
    for (int64_t b = 0; b < sr && st == PD_OK; b++) {
        int64_t rows = PD_MIN((int64_t)br, R - b * br);
        for (int64_t i = 0; i < rows * C; i++) blk[i] = draw(s, &r);
        for (int64_t cb = 0; cb < sc; cb++) {
            float amax = 0;
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = cb * bc; j < PD_MIN((cb + 1) * bc, C); j++) amax = fmaxf(amax, fabsf(blk[i * C + j]));
            float scale = amax > 0 ? amax / 448.0f : 1.0f;
            scales[b * sc + cb] = scale;
            for (int64_t i = 0; i < rows; i++)
                for (int64_t j = cb * bc; j < PD_MIN((cb + 1) * bc, C); j++)
                    q[i * C + j] = krn_f32_to_e4m3(blk[i * C + j] / scale);
        }
        st = mdl_st_writer_write(w, q, (size_t)(rows * C));
    }
    if (st == PD_OK) st = mdl_st_writer_write(w, scales, (size_t)(sr * sc) * sizeof(float));
free_bufs:
    free(blk);
    free(q);
    free(scales);
    return st;
}

static pd_status copy_file(const char *from, const char *to)
{
    char *buf = NULL;
    size_t len = 0;
    pd_status st = pd_file_read(from, &buf, &len);
    if (st != PD_OK) return st;
    FILE *f = fopen(to, "wb");
    if (!f) {
        free(buf);
        return PD_ERR_IO;
    }
    size_t n = fwrite(buf, 1, len, f);
    int bad = fclose(f) != 0 || n != len;
    free(buf);
    return bad ? PD_ERR_IO : PD_OK;
}

static pd_status write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (!f) return PD_ERR_IO;
    size_t n = strlen(text);
    int bad = fwrite(text, 1, n, f) != n;
    bad |= fclose(f) != 0;
    return bad ? PD_ERR_IO : PD_OK;
}

pd_status mdl_generate_checkpoint(const char *dir, const mdl_config *cfg, const mdl_generate_opts *opts, char *err,
                                  size_t errlen)
{
    mdl_config c = written_config(cfg, opts->fp8);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++) { /* mkdir -p */
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
            return fail(err, errlen, PD_ERR_IO, "cannot create directory %s: %s", tmp, strerror(errno));
        *p = '/';
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
        return fail(err, errlen, PD_ERR_IO, "cannot create directory %s: %s", dir, strerror(errno));
    char path[4200];
    char *json = mdl_config_to_json(&c);
    if (!json) return fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/config.json", dir);
    pd_status st = write_text(path, json);
    free(json);
    if (st != PD_OK) return fail(err, errlen, st, "cannot write %s", path);
    if (opts->tokenizer_dir) {
        const char *files[] = {"tokenizer.json", "tokenizer_config.json"};
        for (int i = 0; i < 2; i++) {
            char from[4200];
            snprintf(from, sizeof from, "%s/%s", opts->tokenizer_dir, files[i]);
            snprintf(path, sizeof path, "%s/%s", dir, files[i]);
            if ((st = copy_file(from, path)) != PD_OK)
                return fail(err, errlen, st, "cannot copy %s to %s: %s", from, path, pd_status_str(st));
        }
    }
    if (opts->config_only) return PD_OK;

    const int n_mtp = c.num_nextn_predict_layers > 0;
    size_t n = mdl_tensor_specs(&c, n_mtp, NULL, 0);
    mdl_tensor_spec *sp = calloc(n, sizeof *sp);
    int *shard_of = calloc(n, sizeof *shard_of);
    if (!sp || !shard_of) {
        free(sp);
        free(shard_of);
        return fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    }
    mdl_tensor_specs(&c, n_mtp, sp, n);
    uint64_t limit = opts->shard_bytes ? opts->shard_bytes : (4ull << 30), cur = 0, total = 0;
    int n_shards = 1;
    for (size_t i = 0; i < n; i++) {
        uint64_t b = spec_bytes(&c, &sp[i], opts->fp8);
        if (cur > 0 && cur + b > limit) {
            n_shards++;
            cur = 0;
        }
        cur += b;
        total += b;
        shard_of[i] = n_shards - 1;
    }
    const char **names = calloc(2 * n, sizeof *names);
    const char **files = calloc(2 * n, sizeof *files);
    char (*shard_names)[64] = calloc((size_t)n_shards, 64);
    size_t n_index = 0, i = 0;
    uint64_t written = 0;
    int last_pct = -1;
    if (!names || !files || !shard_names) {
        st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
        goto free_lists;
    }
    for (int sh = 0; sh < n_shards && st == PD_OK; sh++) {
        if (n_shards == 1) snprintf(shard_names[sh], 64, "model.safetensors");
        else snprintf(shard_names[sh], 64, "model-%05d-of-%05d.safetensors", sh + 1, n_shards);
        snprintf(path, sizeof path, "%s/%s", dir, shard_names[sh]);
        mdl_st_writer w = NULL;
        if ((st = mdl_st_writer_create(path, &w)) != PD_OK) {
            st = fail(err, errlen, st, "cannot create %s", path);
            break;
        }
        size_t first = i;
        for (size_t k = first; k < n && shard_of[k] == sh && st == PD_OK; k++) {
            if (is_fp8(&c, &sp[k], opts->fp8)) {
                int64_t ss[2] = {(sp[k].shape[0] + c.fp8_block[0] - 1) / c.fp8_block[0],
                                 (sp[k].shape[1] + c.fp8_block[1] - 1) / c.fp8_block[1]};
                char sname[160];
                snprintf(sname, sizeof sname, "%s_scale_inv", sp[k].name);
                st = mdl_st_writer_declare(w, sp[k].name, MDL_DT_F8_E4M3, 2, sp[k].shape);
                if (st == PD_OK) st = mdl_st_writer_declare(w, sname, MDL_DT_F32, 2, ss);
            } else {
                st = mdl_st_writer_declare(w, sp[k].name, sp[k].kind == MDL_T_BIAS ? MDL_DT_F32 : MDL_DT_BF16,
                                           sp[k].ndim, sp[k].shape);
            }
        }
        if (st == PD_OK) st = mdl_st_writer_begin(w);
        for (; i < n && shard_of[i] == sh && st == PD_OK; i++) {
            st = write_tensor(w, &c, &sp[i], opts->seed, opts->fp8);
            written += spec_bytes(&c, &sp[i], opts->fp8);
            if (opts->progress && total > (256u << 20)) {
                int pct = (int)(100.0 * (double)written / (double)total);
                if (pct != last_pct) fprintf(stderr, "\rwriting weights: %3d%%", pct);
                last_pct = pct;
            }
        }
        if (st == PD_OK) st = mdl_st_writer_finish(w);
        if (st != PD_OK) fail(err, errlen, st, "writing %s failed: %s", path, pd_status_str(st));
        mdl_st_writer_destroy(w);
    }
    if (opts->progress && total > (256u << 20)) fputc('\n', stderr);
    if (st == PD_OK && n_shards > 1) {
        char **owned = calloc(n, sizeof *owned);
        if (!owned) {
            st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
            goto free_lists;
        }
        for (size_t k = 0; k < n; k++) {
            names[n_index] = sp[k].name;
            files[n_index++] = shard_names[shard_of[k]];
            if (is_fp8(&c, &sp[k], opts->fp8)) {
                owned[k] = malloc(strlen(sp[k].name) + 16);
                if (!owned[k]) continue;
                sprintf(owned[k], "%s_scale_inv", sp[k].name);
                names[n_index] = owned[k];
                files[n_index++] = shard_names[shard_of[k]];
            }
        }
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        st = mdl_st_index_write(path, names, files, n_index, total);
        if (st != PD_OK) fail(err, errlen, st, "cannot write %s", path);
        for (size_t k = 0; k < n; k++) free(owned[k]);
        free(owned);
    }
free_lists:
    free(names);
    free(files);
    free(shard_names);
    free(sp);
    free(shard_of);
    return st;
}

pd_status mdl_config_override(mdl_config *c, const char *const *kv, int n, char *err, size_t errlen)
{
    if (n == 0) return PD_OK;
    char *json = mdl_config_to_json(c);
    cJSON *root = json ? cJSON_Parse(json) : NULL;
    free(json);
    if (!root) return fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    pd_status st = PD_OK;
    for (int i = 0; i < n && st == PD_OK; i++) {
        const char *eq = strchr(kv[i], '=');
        if (!eq || eq == kv[i]) {
            st = fail(err, errlen, PD_ERR_INVALID, "override '%s' is not key=value", kv[i]);
            break;
        }
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int)(eq - kv[i]), kv[i]);
        cJSON *v = cJSON_Parse(eq + 1);
        if (!v) v = cJSON_CreateString(eq + 1);
        if (!strcmp(key, "architectures") && cJSON_IsString(v)) {
            cJSON *a = cJSON_CreateArray();
            cJSON_AddItemToArray(a, v);
            v = a;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(root, key);
        cJSON_AddItemToObject(root, key, v);
    }
    if (st == PD_OK) {
        char *text = cJSON_PrintUnformatted(root);
        mdl_config nc;
        st = text ? mdl_config_parse(text, &nc, err, errlen) : PD_ERR_NOMEM;
        free(text);
        if (st == PD_OK) *c = nc;
    }
    cJSON_Delete(root);
    return st;
}
