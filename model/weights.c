/* Checkpoint loading: config.json + safetensors -> mdl_model. BF16 weights used as BF16 stay in the mmap
 * (zero copy, shared through the page cache); other combinations (F32, F16, FP8 with 128x128 block scales)
 * are converted once at load into owned buffers. Every tensor is checked against the catalogue first. Tensors
 * whose checkpoint bytes nothing reads after load (copied, converted, or packed) are marked done, and their pages
 * leave the process's resident memory at the end (mdl_st_release_done). */
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "model/mdl.h"
#include "model/mdl_tensors.h"
#include "model/safetensors.h"

/* Converted and packed weights live in huge-page mappings (pd_huge_map): a step streams every packed matrix, and
 * with 4 KiB pages each 4 KiB of them costs a TLB entry (DeepSeek-V3's ~700 GB would need ~1.3 GB of page
 * tables). Buffers of STORE_CHUNK / 4 or more get a mapping of their own; smaller ones are carved, 4 KiB-aligned,
 * from STORE_CHUNK mappings (an unused tail is address space only). */
#define STORE_CHUNK ((size_t)64 << 20)

typedef struct {
    void *p;
    size_t len;
} store_map;

struct mdl__store {
    mdl_st st;
    store_map *maps;
    size_t n_maps, cap_maps;
    uint8_t *chunk; /* the chunk small buffers are carved from; chunk_used bytes of it taken */
    size_t chunk_used;
    size_t done_bytes, total_bytes;
    int last_pct;
    int progress;
};

#define fail(err, errlen, st, ...) PD_FAIL(err, errlen, st, NULL, __VA_ARGS__)

static void *store_map_new(struct mdl__store *s, size_t len)
{
    if (s->n_maps == s->cap_maps) {
        size_t nc = s->cap_maps ? s->cap_maps * 2 : 64;
        store_map *n = realloc(s->maps, nc * sizeof *n);
        if (!n) return NULL;
        s->maps = n;
        s->cap_maps = nc;
    }
    void *p = pd_huge_map(len);
    if (p) s->maps[s->n_maps++] = (store_map){p, len};
    return p;
}

/* Zeroed, 4 KiB-aligned (so 64-byte aligned, as the packed kernels need), owned by the store. */
static void *store_alloc(struct mdl__store *s, size_t bytes)
{
    if (bytes > SIZE_MAX / 2) return NULL;
    bytes = (PD_MAX(bytes, (size_t)1) + 4095) & ~(size_t)4095;
    if (bytes >= STORE_CHUNK / 4) return store_map_new(s, bytes);
    if (!s->chunk || s->chunk_used + bytes > STORE_CHUNK) {
        uint8_t *c = store_map_new(s, STORE_CHUNK);
        if (!c) return NULL;
        s->chunk = c;
        s->chunk_used = 0;
    }
    void *p = s->chunk + s->chunk_used;
    s->chunk_used += bytes;
    return p;
}

static void progress(struct mdl__store *s, size_t bytes)
{
    s->done_bytes += bytes;
    if (!s->progress || s->total_bytes < (256u << 20)) return;
    int pct = (int)(100.0 * (double)s->done_bytes / (double)s->total_bytes);
    int tty = isatty(2), step = tty ? 1 : 25; /* a log file gets a line per quarter */
    if (pct / step != s->last_pct / step && s->last_pct < 100) {
        fprintf(stderr, "%sloading weights: %3d%% (%.2f / %.2f GB)%s", tty ? "\r" : "", PD_MIN(pct, 100),
                s->done_bytes / 1e9, s->total_bytes / 1e9, tty && pct < 100 ? "" : "\n");
        s->last_pct = pct;
    }
}

/* Element i of a tensor as float. */
static inline float elem_f32(const mdl_tensor_view *t, size_t i)
{
    switch (t->dtype) {
    case MDL_DT_F32: { float f; memcpy(&f, (const uint8_t *)t->data + 4 * i, 4); return f; }
    case MDL_DT_BF16: { uint16_t h; memcpy(&h, (const uint8_t *)t->data + 2 * i, 2); return krn_bf16_to_f32(h); }
    case MDL_DT_F16: { uint16_t h; memcpy(&h, (const uint8_t *)t->data + 2 * i, 2); return krn_f16_to_f32(h); }
    case MDL_DT_F8_E4M3: return krn_e4m3_to_f32(((const uint8_t *)t->data)[i]);
    default: return NAN;
    }
}

static const mdl_tensor_view *find_checked(struct mdl__store *s, const mdl_tensor_spec *sp, char *err, size_t errlen,
                                           pd_status *st)
{
    const mdl_tensor_view *t = mdl_st_find(s->st, sp->name);
    if (!t) {
        *st = fail(err, errlen, PD_ERR_NOT_FOUND, "checkpoint: missing tensor '%s'", sp->name);
        return NULL;
    }
    int ok = t->ndim == sp->ndim && t->shape[0] == sp->shape[0] && (sp->ndim < 2 || t->shape[1] == sp->shape[1]);
    if (!ok) {
        char got[64] = "", want[64];
        for (int i = 0, n = 0; i < t->ndim && i < 4; i++)
            n += snprintf(got + n, sizeof got - (size_t)n, "%s%lld", i ? "," : "", (long long)t->shape[i]);
        if (sp->ndim == 2) snprintf(want, sizeof want, "%lld,%lld", (long long)sp->shape[0], (long long)sp->shape[1]);
        else snprintf(want, sizeof want, "%lld", (long long)sp->shape[0]);
        *st = fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s' has shape [%s], config.json implies [%s]", t->file,
                   sp->name, got, want);
        return NULL;
    }
    if (t->dtype != MDL_DT_F32 && t->dtype != MDL_DT_BF16 && t->dtype != MDL_DT_F16 && t->dtype != MDL_DT_F8_E4M3) {
        *st = fail(err, errlen, PD_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (supported: F32, BF16, F16, F8_E4M3)",
                   t->file, sp->name, mdl_dtype_name(t->dtype));
        return NULL;
    }
    return t;
}

/* A vector (norm weight, bias) as an owned f32 array. */
static float *load_vec(struct mdl__store *s, const mdl_tensor_spec *sp, char *err, size_t errlen, pd_status *st)
{
    const mdl_tensor_view *t = find_checked(s, sp, err, errlen, st);
    if (!t) return NULL;
    if (t->dtype == MDL_DT_F8_E4M3) {
        *st = fail(err, errlen, PD_ERR_UNSUPPORTED, "%s: tensor '%s' is F8_E4M3; only matrices may be FP8", t->file,
                   sp->name);
        return NULL;
    }
    float *v = store_alloc(s, (size_t)t->numel * sizeof(float));
    if (!v) {
        *st = fail(err, errlen, PD_ERR_NOMEM, "out of memory loading '%s'", sp->name);
        return NULL;
    }
    for (int64_t i = 0; i < t->numel; i++) v[i] = elem_f32(t, (size_t)i);
    mdl_st_mark_done(s->st, t);
    progress(s, t->nbytes);
    return v;
}

/* A matrix in the requested type; FP8 is dequantised with its weight_scale_inv blocks. */
static int load_mat(struct mdl__store *s, const mdl_tensor_spec *sp, krn_type want, int fp8_dequant,
                    const int *fp8_block, krn_mat *out, char *err, size_t errlen, pd_status *st)
{
    const mdl_tensor_view *t = find_checked(s, sp, err, errlen, st);
    if (!t) return 0;
    const int R = (int)t->shape[0], C = (int)t->shape[1];
    out->type = want;
    out->rows = R;
    out->cols = C;
    if ((t->dtype == MDL_DT_BF16 && want == KRN_BF16 && ((uintptr_t)t->data & 1) == 0) ||
        (t->dtype == MDL_DT_F32 && want == KRN_F32 && ((uintptr_t)t->data & 3) == 0)) {
        out->data = t->data; /* zero copy from the mmap */
        progress(s, t->nbytes);
        return 1;
    }
    const float *scale = NULL;
    const mdl_tensor_view *sv = NULL; /* FP8: the block scales */
    int sr = 0, sc = 0, br = 128, bc = 128;
    if (t->dtype == MDL_DT_F8_E4M3) {
        char sname[160];
        snprintf(sname, sizeof sname, "%s_scale_inv", sp->name);
        sv = mdl_st_find(s->st, sname);
        if (fp8_block) {
            br = fp8_block[0];
            bc = fp8_block[1];
        }
        sr = (R + br - 1) / br;
        sc = (C + bc - 1) / bc;
        if (!sv) {
            *st = fail(err, errlen, PD_ERR_NOT_FOUND, "%s: FP8 tensor '%s' has no '%s'", t->file, sp->name, sname);
            return 0;
        }
        if (sv->dtype != MDL_DT_F32 || sv->ndim != 2 || sv->shape[0] != sr || sv->shape[1] != sc) {
            *st = fail(err, errlen, PD_ERR_FORMAT, "%s: '%s' must be F32 [%d,%d] (blocks of %dx%d over [%d,%d])",
                       sv->file, sname, sr, sc, br, bc, R, C);
            return 0;
        }
        scale = sv->data; /* read through memcpy below: alignment is not guaranteed */
        if (want != KRN_F32 && !fp8_dequant) { /* keep FP8 as published: values from the mmap, scales copied */
            float *sc_copy = store_alloc(s, (size_t)sr * sc * sizeof(float));
            if (!sc_copy) {
                *st = fail(err, errlen, PD_ERR_NOMEM, "out of memory loading '%s'", sname);
                return 0;
            }
            memcpy(sc_copy, sv->data, (size_t)sr * sc * sizeof(float));
            mdl_st_mark_done(s->st, sv);
            out->type = KRN_F8E4M3;
            out->data = t->data;
            out->scale = sc_copy;
            out->block_r = br;
            out->block_c = bc;
            progress(s, t->nbytes + sv->nbytes);
            return 1;
        }
    }
    size_t n = (size_t)R * C;
    void *dst = store_alloc(s, n * krn_type_size(want));
    if (!dst) {
        *st = fail(err, errlen, PD_ERR_NOMEM, "out of memory loading '%s' (%zu MB)", sp->name,
                   n * krn_type_size(want) >> 20);
        return 0;
    }
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < C; c++) {
            size_t i = (size_t)r * C + c;
            float v = elem_f32(t, i);
            if (scale) {
                float sf;
                memcpy(&sf, (const uint8_t *)scale + 4 * ((size_t)(r / br) * sc + (size_t)(c / bc)), 4);
                v *= sf;
            }
            if (want == KRN_F32) ((float *)dst)[i] = v;
            else ((krn_bf16 *)dst)[i] = krn_f32_to_bf16(v);
        }
    }
    out->data = dst;
    mdl_st_mark_done(s->st, t); /* the owned copy is what every path reads */
    mdl_st_mark_done(s->st, sv);
    progress(s, t->nbytes);
    return 1;
}

/* Packs a loaded matrix once for the fast kernels (a no-op on the portable path) or, for W8A8, quantises it to
 * int8 with per-output-row scales. The plain data stays valid: row lookups and the reference path read it.
 * Once packed, krn_linear, krn_linear_group and krn_linear_argmax read only the packed form, so the checkpoint
 * bytes are marked done, unless plain_read: something reads the plain rows in place as well (kv_b_proj: absorbed
 * MLA's krn_matmul_sub / krn_linear_rows). Marking is safe before head_norms reads the plain rows: pages go only
 * at the end of the load. */
static int prepack(struct mdl__store *s, krn_mat *m, krn_prepack_mode mode, int plain_read, const char *name,
                   char *err, size_t errlen, pd_status *st)
{
    size_t bytes = krn_mat_prepack_size(m, mode);
    if (!bytes) return 1;
    void *buf = store_alloc(s, bytes);
    if (!buf) {
        *st = fail(err, errlen, PD_ERR_NOMEM, "out of memory packing '%s' (%zu MB)", name, bytes >> 20);
        return 0;
    }
    PD_ASSERT(krn_mat_prepack(m, mode, buf) == PD_OK);
    if (!plain_read && m->pack != KRN_PACK_NONE) mdl_st_mark_done(s->st, mdl_st_find(s->st, name));
    return 1;
}

/* The row norms of a head the screen can take (krn_linear_argmax_available), for greedy rows' screened argmax;
 * *out stays NULL for other heads, and for one with a non-finite row (greedy rows then get every logit). 0 on out
 * of memory. */
static int head_norms(struct mdl__store *s, const krn_mat *head, const char *dir, const char *name, float **out,
                      char *err, size_t errlen, pd_status *st)
{
    *out = NULL;
    if (!krn_linear_argmax_available(head)) return 1;
    float *n = store_alloc(s, (size_t)head->rows * sizeof(float));
    if (!n) {
        *st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
        return 0;
    }
    if (krn_mat_row_norms(head, n) != PD_OK) {
        pd_warn("%s: a row of %s has a non-finite norm; greedy decoding computes every logit", dir, name);
        return 1;
    }
    *out = n;
    return 1;
}

/* Precomputes per-pair RoPE frequencies as DeepSeek's reference does (float32), with YaRN's blend of
 * interpolated and extrapolated frequencies when rope_scaling is yarn. */
static void rope_freqs(const mdl_config *c, float *f)
{
    const int dim = c->qk_rope_head_dim;
    for (int i = 0; i < dim / 2; i++) f[i] = (float)(1.0 / pow(c->rope_theta, (double)(2 * i) / dim));
    if (!c->rope_yarn) return;
    double base = c->rope_theta, orig = c->rope_original_max_pos;
    double lo_d = dim * log(orig / (c->rope_beta_fast * 2 * M_PI)) / (2 * log(base));
    double hi_d = dim * log(orig / (c->rope_beta_slow * 2 * M_PI)) / (2 * log(base));
    double lo = floor(lo_d), hi = ceil(hi_d);
    if (lo < 0) lo = 0;
    if (hi > dim - 1) hi = dim - 1;
    if (lo == hi) hi += 0.001;
    for (int i = 0; i < dim / 2; i++) {
        float ramp = (float)(((double)i - lo) / (hi - lo));
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float smooth = 1.0f - ramp;
        f[i] = f[i] / (float)c->rope_factor * (1.0f - smooth) + f[i] * smooth;
    }
}

/* An embedding read in place from the checkpoint's mapping is looked up one row per token, at random: no
 * fault-around or read-ahead of neighbouring rows (which would make a few thousand lookups resident as a hundred
 * MB of pages nobody reads). */
static void advise_rows(const krn_mat *m)
{
    const uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a = (uintptr_t)m->data & ~(pg - 1);
    const uintptr_t b = (uintptr_t)m->data + (size_t)m->rows * (size_t)m->cols * krn_type_size(m->type);
    if (m->data && b > a) (void)madvise((void *)a, b - a, MADV_RANDOM);
}

/* Restricts a loaded, not yet packed matrix to rows [r0, r1) (a vocab-parallel head's slice): a view of the same
 * data, so packing touches only those rows. FP8 slices start on a scale block (mdl_vocab_first). */
static void mat_rows(krn_mat *m, int r0, int r1)
{
    if (r0 == 0 && r1 == m->rows) return;
    if (m->type == KRN_F8E4M3) {
        PD_ASSERT(r0 % m->block_r == 0);
        m->scale += (size_t)(r0 / m->block_r) * (size_t)((m->cols + m->block_c - 1) / m->block_c);
    }
    m->data = (const uint8_t *)m->data + (size_t)r0 * (size_t)m->cols * krn_type_size(m->type);
    m->rows = r1 - r0;
}

/* Loads layer l's tensors into L; routed experts outside [e0, e1) (expert parallelism: other ranks') are skipped,
 * and the MTP head keeps rows [v0, v1) only. */
static int load_layer(struct mdl__store *s, const mdl_config *c, int l, krn_type wt, int fp8_dequant, int quant,
                      int e0, int e1, int v0, int v1, mdl_layer *L, char *err, size_t errlen, pd_status *st)
{
    size_t n = mdl_tensor_specs_layer(c, l, NULL, 0);
    mdl_tensor_spec *sp = calloc(n, sizeof *sp);
    if (!sp) {
        *st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
        return 0;
    }
    mdl_tensor_specs_layer(c, l, sp, n);
    const int *blk = c->fp8 ? c->fp8_block : NULL;
    int ok = 1;
    L->is_moe = mdl_config_layer_is_moe(c, l);
    if (L->is_moe) {
        L->exp_gate = calloc((size_t)c->n_routed_experts, sizeof(krn_mat));
        L->exp_up = calloc((size_t)c->n_routed_experts, sizeof(krn_mat));
        L->exp_down = calloc((size_t)c->n_routed_experts, sizeof(krn_mat));
        if (!L->exp_gate || !L->exp_up || !L->exp_down) {
            *st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
            ok = 0;
        }
    }
    for (size_t i = 0; ok && i < n; i++) {
        const char *nm = strchr(sp[i].name + strlen("model.layers."), '.') + 1; /* after "model.layers.N." */
        if (sp[i].kind == MDL_T_NORM || sp[i].kind == MDL_T_BIAS) {
            float *v = load_vec(s, &sp[i], err, errlen, st);
            if (!v) { ok = 0; break; }
            if (!strcmp(nm, "input_layernorm.weight")) L->attn_norm = v;
            else if (!strcmp(nm, "post_attention_layernorm.weight")) L->ffn_norm = v;
            else if (!strcmp(nm, "self_attn.q_a_layernorm.weight")) L->q_a_norm = v;
            else if (!strcmp(nm, "self_attn.kv_a_layernorm.weight")) L->kv_a_norm = v;
            else if (!strcmp(nm, "mlp.gate.e_score_correction_bias")) L->router_bias = v;
            else if (!strcmp(nm, "enorm.weight")) L->enorm = v;
            else if (!strcmp(nm, "hnorm.weight")) L->hnorm = v;
            else if (!strcmp(nm, "shared_head.norm.weight")) L->head_norm = v;
            else PD_ASSERT(!"unmapped vector tensor");
            continue;
        }
        krn_mat *dst = NULL;
        int e;
        char which[16];
        if (!strcmp(nm, "self_attn.q_a_proj.weight")) dst = &L->q_a;
        else if (!strcmp(nm, "self_attn.q_b_proj.weight")) dst = &L->q_b;
        else if (!strcmp(nm, "self_attn.q_proj.weight")) dst = &L->q;
        else if (!strcmp(nm, "self_attn.kv_a_proj_with_mqa.weight")) dst = &L->kv_a;
        else if (!strcmp(nm, "self_attn.kv_b_proj.weight")) dst = &L->kv_b;
        else if (!strcmp(nm, "self_attn.o_proj.weight")) dst = &L->o;
        else if (!strcmp(nm, "mlp.gate_proj.weight")) dst = &L->gate;
        else if (!strcmp(nm, "mlp.up_proj.weight")) dst = &L->up;
        else if (!strcmp(nm, "mlp.down_proj.weight")) dst = &L->down;
        else if (!strcmp(nm, "mlp.gate.weight")) dst = &L->router;
        else if (!strcmp(nm, "mlp.shared_experts.gate_proj.weight")) dst = &L->sh_gate;
        else if (!strcmp(nm, "mlp.shared_experts.up_proj.weight")) dst = &L->sh_up;
        else if (!strcmp(nm, "mlp.shared_experts.down_proj.weight")) dst = &L->sh_down;
        else if (!strcmp(nm, "eh_proj.weight")) dst = &L->eh_proj;
        else if (!strcmp(nm, "shared_head.head.weight")) dst = &L->head;
        else if (!strcmp(nm, "embed_tokens.weight")) dst = &L->embed;
        else if (sscanf(nm, "mlp.experts.%d.%15[a-z]_proj.weight", &e, which) == 2 && e >= 0 &&
                 e < c->n_routed_experts) {
            if (e < e0 || e >= e1) continue; /* another rank's */
            dst = !strcmp(which, "gate") ? &L->exp_gate[e] : !strcmp(which, "up") ? &L->exp_up[e] : &L->exp_down[e];
        }
        PD_ASSERT(dst != NULL);
        /* the router's scores decide expert choice: keep them in f32 so bf16 rounding cannot flip a choice */
        krn_type t = dst == &L->router ? KRN_F32 : wt;
        if (!load_mat(s, &sp[i], t, fp8_dequant, blk, dst, err, errlen, st)) ok = 0;
        if (ok && (dst == &L->head || dst == &L->embed)) mat_rows(dst, v0, v1);
        if (ok && dst == &L->embed && mdl_st_holds(s->st, dst->data)) advise_rows(dst);
        /* W8A8 covers the MoE experts (routed and shared: ~97% of DeepSeek-V3's weights and of its decode
         * traffic). Attention, the dense layers, the router and the heads keep their checkpoint precision:
         * int8 noise there moves the residual stream enough to flip near-tied expert choices (measured on the
         * golden fixtures, see docs/kernels.md). Embeddings are row lookups and are not packed. */
        if (ok && dst != &L->embed && dst != &L->router) {
            int w8 = quant == MDL_QUANT_W8A8 && (strstr(nm, "mlp.experts.") || strstr(nm, "mlp.shared_experts."));
            if (!prepack(s, dst, w8 ? KRN_PREPACK_W8A8 : KRN_PREPACK_FAST, dst == &L->kv_b, sp[i].name, err, errlen,
                         st))
                ok = 0;
        }
    }
    free(sp);
    return ok;
}

static int has_mtp_weights(const mdl_st st, const mdl_config *c)
{
    char name[128];
    snprintf(name, sizeof name, "model.layers.%d.eh_proj.weight", c->num_hidden_layers);
    return mdl_st_find(st, name) != NULL;
}

pd_status mdl_model_load(const char *dir, const mdl_load_opts *opts, mdl_model **out, char *err, size_t errlen)
{
    mdl_load_opts o = opts ? *opts : mdl_load_defaults();
    pd_status st = PD_OK;
    if (o.weight_type != KRN_F32 && o.weight_type != KRN_BF16)
        return fail(err, errlen, PD_ERR_INVALID, "weight dtype must be float32 or bfloat16, not %s",
                    krn_type_name(o.weight_type));
    if (o.quant != MDL_QUANT_NONE && o.quant != MDL_QUANT_W8A8)
        return fail(err, errlen, PD_ERR_INVALID, "unknown quantization %d (none, w8a8)", (int)o.quant);
    if (o.ep_size < 1) o.ep_size = 1;
    if (o.ep_rank < 0 || o.ep_rank >= o.ep_size)
        return fail(err, errlen, PD_ERR_INVALID, "expert-parallel rank %d is outside 0..%d", o.ep_rank, o.ep_size - 1);
    if (o.kv_type != KRN_F32 && o.kv_type != KRN_BF16 && o.kv_type != KRN_F16)
        return fail(err, errlen, PD_ERR_INVALID, "KV cache dtype must be float16, bfloat16 or float32, not %s",
                    krn_type_name(o.kv_type));
    mdl_model *m = calloc(1, sizeof *m);
    if (!m) return fail(err, errlen, PD_ERR_NOMEM, "out of memory");
    m->opts = o;
    snprintf(m->path, sizeof m->path, "%s", dir);
    m->store = calloc(1, sizeof *m->store);
    if (!m->store) {
        st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
        goto fail_model;
    }
    m->store->progress = o.progress;
    if ((st = mdl_config_load(dir, &m->cfg, err, errlen)) != PD_OK) goto fail_model;
    if ((st = mdl_st_open(dir, &m->store->st, err, errlen)) != PD_OK) goto fail_model;
    const mdl_config *c = &m->cfg;
    if (o.ep_size > 1 && (c->n_routed_experts < o.ep_size || c->n_routed_experts % o.ep_size)) {
        st = fail(err, errlen, PD_ERR_INVALID,
                  "%s: %d routed experts cannot be split evenly over %d expert-parallel ranks (the rank count must "
                  "divide n_routed_experts)", dir, c->n_routed_experts, o.ep_size);
        goto fail_model;
    }
    m->exp0 = mdl_ep_first(c->n_routed_experts, o.ep_rank, o.ep_size);
    m->exp1 = mdl_ep_first(c->n_routed_experts, o.ep_rank + 1, o.ep_size);
    m->vocab0 = mdl_vocab_first(c->vocab_size, o.ep_rank, o.ep_size);
    m->vocab1 = mdl_vocab_first(c->vocab_size, o.ep_rank + 1, o.ep_size);
    if (m->vocab1 <= m->vocab0) {
        st = fail(err, errlen, PD_ERR_INVALID, "%s: a vocabulary of %d cannot be split into %d slices of 128 rows", dir,
                  c->vocab_size, o.ep_size);
        goto fail_model;
    }

    m->n_layers = c->num_hidden_layers;
    m->n_mtp = 0;
    if (!o.no_mtp && c->num_nextn_predict_layers > 0) {
        if (has_mtp_weights(m->store->st, c)) m->n_mtp = 1;
        else pd_warn("%s: config.json has num_nextn_predict_layers=%d but the checkpoint has no MTP layer "
                     "(model.layers.%d.*); speculative decoding with MTP is unavailable",
                     dir, c->num_nextn_predict_layers, c->num_hidden_layers);
    }
    m->store->total_bytes = mdl_st_total_bytes(m->store->st);
    m->layers = calloc((size_t)(m->n_layers + m->n_mtp), sizeof *m->layers);
    if (!m->layers) {
        st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
        goto fail_model;
    }

    mdl_tensor_spec top[3];
    mdl_tensor_specs_layer(c, -1, top, 3);
    if (!load_mat(m->store, &top[0], o.weight_type, o.fp8_dequant, NULL, &m->embed, err, errlen, &st)) goto fail_model;
    mat_rows(&m->embed, m->vocab0, m->vocab1);
    if (mdl_st_holds(m->store->st, m->embed.data)) advise_rows(&m->embed);
    if (!(m->final_norm = load_vec(m->store, &top[1], err, errlen, &st))) goto fail_model;
    if (!load_mat(m->store, &top[2], o.weight_type, o.fp8_dequant, c->fp8 ? c->fp8_block : NULL, &m->lm_head, err,
                  errlen, &st))
        goto fail_model;
    mat_rows(&m->lm_head, m->vocab0, m->vocab1);
    if (!prepack(m->store, &m->lm_head, KRN_PREPACK_FAST, 0, top[2].name, err, errlen, &st)) goto fail_model;
    if (!head_norms(m->store, &m->lm_head, dir, top[2].name, &m->lm_head_norms, err, errlen, &st)) goto fail_model;
    for (int l = 0; l < m->n_layers + m->n_mtp; l++)
        if (!load_layer(m->store, c, l, o.weight_type, o.fp8_dequant, o.quant, m->exp0, m->exp1, m->vocab0, m->vocab1,
                        &m->layers[l], err, errlen, &st))
            goto fail_model;
    for (int l = m->n_layers; l < m->n_layers + m->n_mtp; l++)
        if (!head_norms(m->store, &m->layers[l].head, dir, "shared_head.head", &m->layers[l].head_norms, err, errlen,
                        &st))
            goto fail_model;

    m->rope_freqs = store_alloc(m->store, (size_t)c->qk_rope_head_dim / 2 * sizeof(float));
    if (!m->rope_freqs) {
        st = fail(err, errlen, PD_ERR_NOMEM, "out of memory");
        goto fail_model;
    }
    rope_freqs(c, m->rope_freqs);
    m->softmax_scale = (float)mdl_config_softmax_scale(c);
    /* Last, so no later read of a neighbour at load faults (with fault-around) a dropped page back in. The MTP
     * head's plain rows are read once more only for draft_head_dtype int8's copy (mdl__spec_make_draft_head), from
     * the file. */
    size_t dropped = mdl_st_release_done(m->store->st);
    pd_debug("%s: %.1f MB of checkpoint pages released (read only through copies or packed forms)", dir,
             dropped / 1e6);
    *out = m;
    return PD_OK;

fail_model:
    mdl_model_destroy(m);
    return st;
}

void mdl_model_destroy(mdl_model *m)
{
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->n_layers + m->n_mtp; l++) {
            free(m->layers[l].exp_gate);
            free(m->layers[l].exp_up);
            free(m->layers[l].exp_down);
        }
        free(m->layers);
    }
    if (m->store) {
        for (size_t i = 0; i < m->store->n_maps; i++) pd_huge_unmap(m->store->maps[i].p, m->store->maps[i].len);
        free(m->store->maps);
        mdl_st_close(m->store->st);
        free(m->store);
    }
    free(m);
}

void mdl_config_count(const mdl_config *c, size_t kv_elem_size, mdl_param_counts *out)
{
    memset(out, 0, sizeof *out);
    const int n_mtp = c->num_nextn_predict_layers > 0 ? 1 : 0;
    for (int l = -1; l < c->num_hidden_layers + n_mtp; l++) {
        size_t n = mdl_tensor_specs_layer(c, l, NULL, 0);
        mdl_tensor_spec *sp = calloc(n, sizeof *sp);
        if (!sp) return;
        mdl_tensor_specs_layer(c, l, sp, n);
        for (size_t i = 0; i < n; i++) {
            double p = (double)sp[i].shape[0] * (sp[i].ndim == 2 ? (double)sp[i].shape[1] : 1.0);
            int mtp = l >= c->num_hidden_layers;
            out->params_total += p;
            if (mtp) out->params_mtp += p;
            int routed = strstr(sp[i].name, ".mlp.experts.") != NULL;
            if (!mtp && sp[i].kind != MDL_T_EMBED)
                out->params_active += routed ? p * c->num_experts_per_tok / c->n_routed_experts : p;
        }
        free(sp);
    }
    out->kv_bytes_per_token = (size_t)(c->num_hidden_layers + n_mtp) * (size_t)mdl_config_kv_row(c) * kv_elem_size;
}
