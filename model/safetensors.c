/* Safetensors reader and writer. Reading: resolve the path to a list of shard files, mmap each, copy and parse
 * its JSON header, validate every entry against the mapping, index all names in one hash table; later drop the
 * pages of tensors marked done. Writing: collect declarations, emit the header, stream the data, rename into place. */
#include "model/safetensors.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- dtypes ------------------------------------------------------------------------------------ */

static const struct {
    const char *name;
    size_t size;
} dtype_info[MDL_DT_COUNT] = {
    [MDL_DT_F32] = {"F32", 4},     [MDL_DT_F16] = {"F16", 2},  [MDL_DT_BF16] = {"BF16", 2},
    [MDL_DT_F8_E4M3] = {"F8_E4M3", 1}, [MDL_DT_F64] = {"F64", 8},  [MDL_DT_I64] = {"I64", 8},
    [MDL_DT_I32] = {"I32", 4},     [MDL_DT_I16] = {"I16", 2},  [MDL_DT_I8] = {"I8", 1},
    [MDL_DT_U8] = {"U8", 1},       [MDL_DT_BOOL] = {"BOOL", 1},
};

size_t mdl_dtype_size(mdl_dtype dt)
{
    return (unsigned)dt < MDL_DT_COUNT ? dtype_info[dt].size : 0;
}

const char *mdl_dtype_name(mdl_dtype dt)
{
    return (unsigned)dt < MDL_DT_COUNT ? dtype_info[dt].name : "?";
}

pd_status mdl_dtype_parse(const char *s, mdl_dtype *out)
{
    if (!s || !out) return PD_ERR_INVALID;
    for (int i = 0; i < MDL_DT_COUNT; i++) {
        if (!strcmp(s, dtype_info[i].name)) {
            *out = (mdl_dtype)i;
            return PD_OK;
        }
    }
    return PD_ERR_FORMAT;
}

/* ---- small helpers ------------------------------------------------------------------------------ */

#define fail(err, errlen, st, ...) PD_FAIL(err, errlen, st, "safetensors", __VA_ARGS__)

static pd_status errno_status(int e)
{
    return e == ENOENT || e == ENOTDIR ? PD_ERR_NOT_FOUND : e == ENOMEM ? PD_ERR_NOMEM : PD_ERR_IO;
}

/* Strict UTF-8 (no overlongs, no surrogates, at most U+10FFFF). */
static int utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07, min = 0x10000;
        else return 0;
        if (n - i < len) return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += len;
    }
    return 1;
}

/* A JSON number that is a whole number in [0, 2^53] (beyond that doubles stop being exact). */
static int json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!isfinite(d) || d < 0 || d > 9007199254740992.0 || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

static char *str_dup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* "a" + "/" + "b" in a malloc'd string. */
static char *path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* Directory part of a file path ("." when there is none), malloc'd. */
static char *path_dir(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return str_dup(".");
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, path, n);
    d[n] = '\0';
    return d;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* ---- string -> index hash table (open addressing, linear probing; keys are borrowed) ------------- */

typedef struct {
    const char **keys;   /* [cap], NULL = empty slot */
    uint32_t *vals;      /* [cap] */
    size_t cap, n;       /* cap is 0 or a power of two, kept at least twice n */
} strmap;

static uint64_t hash_str(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    h ^= h >> 33; /* FNV-1a's low bits are weak; fold the high ones in before masking */
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static void strmap_free(strmap *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static int strmap_grow(strmap *m, size_t want)
{
    size_t cap = 16;
    while (cap < 2 * want) cap *= 2;
    if (cap <= m->cap) return 1;
    const char **keys = calloc(cap, sizeof *keys);
    uint32_t *vals = malloc(cap * sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return 0;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t j = hash_str(m->keys[i]) & (cap - 1);
        while (keys[j]) j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        vals[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return 1;
}

/* Returns 1 when inserted, 0 when the key was already there (its value in *existing), -1 out of memory. */
static int strmap_put(strmap *m, const char *key, uint32_t val, uint32_t *existing)
{
    if (2 * (m->n + 1) > m->cap && !strmap_grow(m, m->n + 1)) return -1;
    size_t j = hash_str(key) & (m->cap - 1);
    while (m->keys[j]) {
        if (!strcmp(m->keys[j], key)) {
            if (existing) *existing = m->vals[j];
            return 0;
        }
        j = (j + 1) & (m->cap - 1);
    }
    m->keys[j] = key;
    m->vals[j] = val;
    m->n++;
    return 1;
}

static int strmap_get(const strmap *m, const char *key, uint32_t *val)
{
    if (!m->cap) return 0;
    size_t j = hash_str(key) & (m->cap - 1);
    while (m->keys[j]) {
        if (!strcmp(m->keys[j], key)) {
            *val = m->vals[j];
            return 1;
        }
        j = (j + 1) & (m->cap - 1);
    }
    return 0;
}

/* ---- reader --------------------------------------------------------------------------------------- */

typedef struct {
    char *path;
    const unsigned char *map;   /* whole file, PROT_READ; NULL until mapped */
    size_t size;
    size_t data_off;            /* 8 + header length: where the data buffer starts */
    char *names;                /* the file's tensor names, NUL-separated */
} st_file;

struct mdl_st_s {
    st_file *files;             /* [nfiles] */
    size_t nfiles;
    mdl_tensor_view *tensors;   /* [ntensors], grouped by file */
    unsigned char *done;        /* [ntensors] 1: marked by mdl_st_mark_done */
    size_t ntensors;
    strmap by_name;             /* name -> index into tensors */
    size_t total_bytes;
};

int mdl_st_holds(mdl_st st, const void *p)
{
    for (size_t i = 0; st && p && i < st->nfiles; i++)
        if (st->files[i].map && (const unsigned char *)p >= st->files[i].map &&
            (const unsigned char *)p < st->files[i].map + st->files[i].size)
            return 1;
    return 0;
}

void mdl_st_close(mdl_st st)
{
    if (!st) return;
    for (size_t i = 0; i < st->nfiles; i++) {
        if (st->files[i].map) munmap((void *)st->files[i].map, st->files[i].size);
        free(st->files[i].names);
        free(st->files[i].path);
    }
    free(st->files);
    free(st->tensors);
    free(st->done);
    strmap_free(&st->by_name);
    free(st);
}

size_t mdl_st_count(const mdl_st st) { return st ? st->ntensors : 0; }
size_t mdl_st_file_count(const mdl_st st) { return st ? st->nfiles : 0; }
size_t mdl_st_total_bytes(const mdl_st st) { return st ? st->total_bytes : 0; }

const mdl_tensor_view *mdl_st_at(const mdl_st st, size_t i)
{
    return st && i < st->ntensors ? &st->tensors[i] : NULL;
}

const mdl_tensor_view *mdl_st_find(const mdl_st st, const char *name)
{
    uint32_t i;
    if (!st || !name || !strmap_get(&st->by_name, name, &i)) return NULL;
    return &st->tensors[i];
}

void mdl_st_mark_done(mdl_st st, const mdl_tensor_view *t)
{
    if (!st || !t) return;
    PD_ASSERT(t >= st->tensors && t < st->tensors + st->ntensors);
    st->done[t - st->tensors] = 1;
}

static size_t page_down(size_t x, size_t pg) { return x & ~(pg - 1); }
static size_t page_up(size_t x, size_t pg) { return (x + pg - 1) & ~(pg - 1); }

/* Drops the pages of f's done tensors (views [b, e) of st, sorted by offset) that no kept byte shares. A run of
 * done tensors lies between kept bytes (the header, a tensor not done, or the end of the file); the run's pages
 * go, except the one holding the last kept byte before it and the one holding the first kept byte after it. Bytes
 * of no tensor (gaps) are nobody's and may go with their page. */
static size_t release_file(mdl_st st, const st_file *f, size_t b, size_t e, size_t pg, int *warned)
{
    size_t dropped = 0, keep_end = f->data_off, run_lo = 0, run_hi = 0;
    int in_run = 0;
    for (size_t i = b; i <= e; i++) {
        const mdl_tensor_view *t = i < e ? &st->tensors[i] : NULL;
        if (t && !t->nbytes) continue; /* occupies nothing */
        const size_t off = t ? (size_t)((const unsigned char *)t->data - f->map) : f->size;
        if (t && st->done[i]) {
            if (!in_run) run_lo = off;
            in_run = 1;
            run_hi = off + t->nbytes;
            continue;
        }
        if (in_run) {
            const size_t lo = PD_MAX(page_down(run_lo, pg), page_up(keep_end, pg));
            const size_t hi = t ? PD_MIN(page_up(run_hi, pg), page_down(off, pg)) : page_up(run_hi, pg);
            /* PROT_READ + MAP_PRIVATE, never written: no private copies to lose, only file pages to unmap */
            if (hi > lo) {
                if (madvise((void *)(f->map + lo), hi - lo, MADV_DONTNEED) == 0) {
                    dropped += hi - lo;
                } else if (!*warned) {
                    pd_warn("%s: madvise(MADV_DONTNEED) failed: %s; its loaded tensors stay resident", f->path,
                            strerror(errno));
                    *warned = 1;
                }
            }
            in_run = 0;
        }
        if (t) keep_end = off + t->nbytes;
    }
    return dropped;
}

size_t mdl_st_release_done(mdl_st st)
{
    if (!st) return 0;
    const long psz = sysconf(_SC_PAGESIZE);
    const size_t pg = psz > 0 ? (size_t)psz : 4096;
    size_t dropped = 0;
    int warned = 0;
    for (size_t b = 0, e; b < st->ntensors; b = e) { /* views are grouped by file */
        for (e = b + 1; e < st->ntensors && st->tensors[e].file == st->tensors[b].file;) e++;
        const st_file *f = NULL;
        for (size_t i = 0; i < st->nfiles && !f; i++)
            if (st->files[i].path == st->tensors[b].file) f = &st->files[i];
        PD_ASSERT(f && f->map);
        dropped += release_file(st, f, b, e, pg, &warned);
    }
    return dropped;
}

static int view_cmp(const void *pa, const void *pb)
{
    const mdl_tensor_view *a = pa, *b = pb;
    const char *da = a->data, *db = b->data;
    if (da != db) return da < db ? -1 : 1;
    if (a->nbytes != b->nbytes) return a->nbytes < b->nbytes ? -1 : 1;
    /* Names sit in the arena in header order, so ties (empty tensors) keep the header's order. */
    return a->name < b->name ? -1 : a->name > b->name;
}

/* Validates one header entry and fills v (name already set). Offsets are checked against data_len. */
static pd_status parse_entry(const st_file *f, const cJSON *e, const unsigned char *data, size_t data_len,
                             mdl_tensor_view *v, char *err, size_t errlen)
{
    const char *fn = f->path, *tn = v->name;
    if (!cJSON_IsObject(e))
        return fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", fn, tn);

    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(dt))
        return fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s': missing or non-string \"dtype\"", fn, tn);
    if (mdl_dtype_parse(dt->valuestring, &v->dtype) != PD_OK)
        return fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s': unknown or unsupported dtype '%s'", fn, tn,
                    dt->valuestring);

    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (!cJSON_IsArray(sh))
        return fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s': \"shape\" is missing or not an array", fn, tn);
    int nd = 0;
    uint64_t numel = 1;
    int overflow = 0;
    for (const cJSON *d = sh->child; d; d = d->next) {
        uint64_t x;
        if (nd == MDL_MAX_DIMS)
            return fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s': shape has more than %d dimensions", fn, tn,
                        MDL_MAX_DIMS);
        if (!json_uint(d, &x))
            return fail(err, errlen, PD_ERR_FORMAT,
                        "%s: tensor '%s': shape[%d] is not an integer in [0, 2^53]", fn, tn, nd);
        v->shape[nd++] = (int64_t)x;
        if (__builtin_mul_overflow(numel, x, &numel)) overflow = 1;
    }
    v->ndim = nd;
    for (int i = nd; i < MDL_MAX_DIMS; i++) v->shape[i] = 0;
    /* A zero anywhere makes the tensor empty, whatever the other extents multiply to. */
    for (int i = 0; i < nd; i++)
        if (v->shape[i] == 0) numel = 0, overflow = 0;
    uint64_t nbytes;
    if (overflow || numel > INT64_MAX || __builtin_mul_overflow(numel, (uint64_t)mdl_dtype_size(v->dtype), &nbytes))
        return fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s': shape is too large (element count overflows)", fn,
                    tn);

    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t b, end;
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || !json_uint(off->child, &b) ||
        !json_uint(off->child->next, &end))
        return fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s': \"data_offsets\" must be two integers in [0, 2^53]",
                    fn, tn);
    if (b > end)
        return fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s': data_offsets [%" PRIu64 ", %" PRIu64 "] begin > end",
                    fn, tn, b, end);
    if (end > data_len)
        return fail(err, errlen, PD_ERR_FORMAT,
                    "%s: tensor '%s': data_offsets end %" PRIu64 " is beyond the data buffer (%zu bytes)", fn, tn, end,
                    data_len);
    if (end - b != nbytes)
        return fail(err, errlen, PD_ERR_FORMAT,
                    "%s: tensor '%s': data_offsets span %" PRIu64 " bytes but %s shape needs %" PRIu64, fn, tn, end - b,
                    mdl_dtype_name(v->dtype), nbytes);
    v->numel = (int64_t)numel;
    v->nbytes = (size_t)nbytes;
    v->data = data + b;
    v->file = f->path;
    return PD_OK;
}

/* __metadata__ is a flat map of strings (the reference rejects anything else). */
static pd_status check_metadata(const st_file *f, const cJSON *m, char *err, size_t errlen)
{
    if (!cJSON_IsObject(m))
        return fail(err, errlen, PD_ERR_FORMAT, "%s: \"__metadata__\" is not a JSON object", f->path);
    for (const cJSON *c = m->child; c; c = c->next)
        if (!cJSON_IsString(c))
            return fail(err, errlen, PD_ERR_FORMAT, "%s: \"__metadata__\" value '%s' is not a string", f->path,
                        c->string);
    return PD_OK;
}

/* Maps f->path (a regular file of at least 8 bytes) read-only into f->map / f->size. */
static pd_status map_file(st_file *f, char *err, size_t errlen)
{
    pd_status rc = PD_OK;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return fail(err, errlen, errno_status(e), "%s: cannot open: %s", f->path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        rc = fail(err, errlen, PD_ERR_IO, "%s: cannot stat: %s", f->path, strerror(e));
        goto done;
    }
    if (!S_ISREG(sb.st_mode)) {
        rc = fail(err, errlen, PD_ERR_FORMAT, "%s: not a regular file", f->path);
        goto done;
    }
    if (sb.st_size < 8) {
        rc = fail(err, errlen, PD_ERR_FORMAT, "%s: file is %lld bytes, shorter than the 8-byte header length",
                  f->path, (long long)sb.st_size);
        goto done;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        rc = fail(err, errlen, PD_ERR_IO, "%s: file too large to map", f->path);
        goto done;
    }
    void *map = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        int e = errno;
        rc = fail(err, errlen, e == ENOMEM ? PD_ERR_NOMEM : PD_ERR_IO, "%s: mmap failed: %s", f->path, strerror(e));
        goto done;
    }
    f->map = map;
    f->size = (size_t)sb.st_size;
done:
    close(fd);
    return rc;
}

/* Sorts the count views just parsed from f (after st's first st->ntensors) by offset, adds their names to the
 * name table and their bytes to the total; a name defined twice or two tensors that overlap are errors. */
static pd_status index_views(mdl_st st, const st_file *f, size_t count, char *err, size_t errlen)
{
    pd_status rc = PD_OK;
    mdl_tensor_view *first = st->tensors + st->ntensors;
    qsort(first, count, sizeof *first, view_cmp);
    for (size_t i = 0; i < count; i++) {
        uint32_t prev;
        int r = strmap_put(&st->by_name, first[i].name, (uint32_t)(st->ntensors + i), &prev);
        if (r < 0) {
            rc = fail(err, errlen, PD_ERR_NOMEM, "%s: no memory for the name table", f->path);
            return rc;
        }
        if (r == 0) {
            const char *other = prev < st->ntensors ? st->tensors[prev].file : f->path;
            if (other == f->path)
                rc = fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s' is defined twice", f->path, first[i].name);
            else
                rc = fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s' is also defined in %s", f->path,
                          first[i].name, other);
            return rc;
        }
    }
    /* Sorted by begin, so any overlap shows between neighbours; empty tensors occupy nothing. */
    const mdl_tensor_view *last = NULL;
    for (size_t i = 0; i < count; i++) {
        const mdl_tensor_view *t = &first[i];
        if (!t->nbytes) continue;
        if (last && (const char *)t->data < (const char *)last->data + last->nbytes) {
            rc = fail(err, errlen, PD_ERR_FORMAT, "%s: tensor '%s' overlaps tensor '%s' in the data buffer", f->path,
                      t->name, last->name);
            return rc;
        }
        last = t;
        st->total_bytes += t->nbytes;
    }
    return PD_OK;
}

/* Maps f->path, validates its header and appends its tensors to st (sorted by offset, names indexed). */
static pd_status load_file(mdl_st st, st_file *f, char *err, size_t errlen)
{
    pd_status rc = PD_OK;
    char *hdr = NULL;
    cJSON *root = NULL;

    if ((rc = map_file(f, err, errlen)) != PD_OK) return rc;

    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | f->map[i];
    if (hlen == 0 || hlen > MDL_ST_MAX_HEADER || hlen > f->size - 8) {
        rc = fail(err, errlen, PD_ERR_FORMAT,
                  "%s: header length %" PRIu64 " is invalid (must be 1..%u and fit in the %zu-byte file)", f->path,
                  hlen, MDL_ST_MAX_HEADER, f->size);
        goto done;
    }
    /* A private NUL-terminated copy: the JSON parser can never run past the header, whatever it holds. */
    hdr = malloc(hlen + 1);
    if (!hdr) {
        rc = fail(err, errlen, PD_ERR_NOMEM, "%s: no memory for a %" PRIu64 "-byte header", f->path, hlen);
        goto done;
    }
    memcpy(hdr, f->map + 8, hlen);
    hdr[hlen] = '\0';
    if (!utf8_valid((const unsigned char *)hdr, hlen)) {
        rc = fail(err, errlen, PD_ERR_FORMAT, "%s: header is not valid UTF-8", f->path);
        goto done;
    }
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(hdr, hlen, &end, 0);
    if (!root) {
        const char *ep = cJSON_GetErrorPtr();
        rc = fail(err, errlen, PD_ERR_FORMAT, "%s: header is not valid JSON (near byte %ld of %" PRIu64 ")", f->path,
                  ep && ep >= hdr && ep <= hdr + hlen ? (long)(ep - hdr) : -1L, hlen);
        goto done;
    }
    for (const char *p = end; p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            rc = fail(err, errlen, PD_ERR_FORMAT, "%s: header has trailing bytes after the JSON object (at byte %ld)",
                      f->path, (long)(p - hdr));
            goto done;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = fail(err, errlen, PD_ERR_FORMAT, "%s: header is not a JSON object", f->path);
        goto done;
    }

    /* Names go into one arena per file: count first, so views can point into it and never move. */
    size_t count = 0, name_bytes = 0;
    int have_meta = 0;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (!strcmp(c->string, "__metadata__")) {
            if (have_meta++) {
                rc = fail(err, errlen, PD_ERR_FORMAT, "%s: \"__metadata__\" appears twice", f->path);
                goto done;
            }
            if ((rc = check_metadata(f, c, err, errlen)) != PD_OK) goto done;
            continue;
        }
        count++;
        name_bytes += strlen(c->string) + 1;
    }
    if (st->ntensors + count > UINT32_MAX) {
        rc = fail(err, errlen, PD_ERR_FORMAT, "%s: too many tensors", f->path);
        goto done;
    }
    f->names = malloc(name_bytes ? name_bytes : 1);
    mdl_tensor_view *tv = realloc(st->tensors, (st->ntensors + count + 1) * sizeof *tv);
    if (tv) st->tensors = tv;
    unsigned char *dn = realloc(st->done, st->ntensors + count + 1);
    if (dn) {
        st->done = dn;
        memset(dn + st->ntensors, 0, count + 1);
    }
    if (!f->names || !tv || !dn) {
        rc = fail(err, errlen, PD_ERR_NOMEM, "%s: no memory for %zu tensors", f->path, count);
        goto done;
    }

    f->data_off = 8 + (size_t)hlen;
    const unsigned char *data = f->map + f->data_off;
    size_t data_len = f->size - f->data_off;
    mdl_tensor_view *v = st->tensors + st->ntensors;
    char *np = f->names;
    for (const cJSON *c = root->child; c; c = c->next) {
        if (!strcmp(c->string, "__metadata__")) continue;
        size_t n = strlen(c->string) + 1;
        memcpy(np, c->string, n);
        v->name = np;
        np += n;
        if ((rc = parse_entry(f, c, data, data_len, v, err, errlen)) != PD_OK) goto done;
        v++;
    }

    if ((rc = index_views(st, f, count, err, errlen)) != PD_OK) goto done;
    st->ntensors += count;

done:
    cJSON_Delete(root);
    free(hdr);
    return rc;
}

/* Builds st from a list of file paths (takes ownership of the strings). */
static pd_status st_alloc(char **paths, size_t n, mdl_st *out)
{
    mdl_st st = calloc(1, sizeof *st);
    if (st) st->files = calloc(n ? n : 1, sizeof *st->files);
    if (!st || !st->files) {
        free(st);
        for (size_t i = 0; i < n; i++) free(paths[i]);
        return PD_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) st->files[i].path = paths[i];
    st->nfiles = n;
    *out = st;
    return PD_OK;
}

static int str_ptr_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Opens every shard that the index's weight_map names, then checks each listed tensor is in its shard. */
static pd_status open_index(const char *index_path, mdl_st *out, char *err, size_t errlen)
{
    pd_status rc;
    char *text = NULL, *dir = NULL;
    cJSON *root = NULL;
    strmap shards = {0};
    const char **uniq = NULL;
    char **paths = NULL;
    uint8_t *listed = NULL;
    size_t nuniq = 0;
    mdl_st st = NULL;

    rc = pd_file_read(index_path, &text, NULL);
    if (rc != PD_OK) return fail(err, errlen, rc, "%s: cannot read index: %s", index_path, pd_status_str(rc));
    root = cJSON_ParseWithOpts(text, NULL, 1); /* 1: nothing but whitespace may follow the object */
    if (!root || !cJSON_IsObject(root)) {
        rc = fail(err, errlen, PD_ERR_FORMAT, "%s: index is not a valid JSON object", index_path);
        goto cleanup;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) {
        rc = fail(err, errlen, PD_ERR_FORMAT, "%s: index has no \"weight_map\" object", index_path);
        goto cleanup;
    }
    size_t nentries = 0;
    for (const cJSON *c = wm->child; c; c = c->next, nentries++) {
        if (!cJSON_IsString(c) || !c->valuestring[0]) {
            rc = fail(err, errlen, PD_ERR_FORMAT, "%s: weight_map entry for tensor '%s' is not a file name", index_path,
                      c->string);
            goto cleanup;
        }
        int r = strmap_put(&shards, c->valuestring, 0, NULL);
        if (r < 0) {
            rc = fail(err, errlen, PD_ERR_NOMEM, "%s: no memory for the shard list", index_path);
            goto cleanup;
        }
        nuniq += (size_t)r;
    }
    if (nentries > UINT32_MAX) {
        rc = fail(err, errlen, PD_ERR_FORMAT, "%s: weight_map is too large", index_path);
        goto cleanup;
    }
    uniq = malloc((nuniq ? nuniq : 1) * sizeof *uniq);
    paths = calloc(nuniq ? nuniq : 1, sizeof *paths);
    dir = path_dir(index_path);
    if (!uniq || !paths || !dir) {
        rc = fail(err, errlen, PD_ERR_NOMEM, "%s: no memory for the shard list", index_path);
        goto cleanup;
    }
    for (size_t i = 0, k = 0; i < shards.cap; i++)
        if (shards.keys[i]) uniq[k++] = shards.keys[i];
    qsort(uniq, nuniq, sizeof *uniq, str_ptr_cmp);
    for (size_t i = 0; i < nuniq; i++) {
        if (!(paths[i] = path_join(dir, uniq[i]))) {
            rc = fail(err, errlen, PD_ERR_NOMEM, "%s: no memory for the shard list", index_path);
            goto cleanup;
        }
        struct stat sb;
        if (stat(paths[i], &sb) != 0) {
            int e = errno;
            rc = fail(err, errlen, errno_status(e), "%s: shard file '%s' listed in weight_map is missing (%s: %s)",
                      index_path, uniq[i], paths[i], strerror(e));
            goto cleanup;
        }
    }
    rc = st_alloc(paths, nuniq, &st);
    free(paths);
    paths = NULL;
    if (rc != PD_OK) {
        rc = fail(err, errlen, rc, "%s: no memory for %zu shards", index_path, nuniq);
        goto cleanup;
    }
    for (size_t i = 0; i < st->nfiles; i++)
        if ((rc = load_file(st, &st->files[i], err, errlen)) != PD_OK) goto cleanup;

    /* Which file each shard name stands for, now that the order is final. */
    strmap_free(&shards);
    for (size_t i = 0; i < nuniq; i++) {
        if (strmap_put(&shards, uniq[i], (uint32_t)i, NULL) < 0) {
            rc = fail(err, errlen, PD_ERR_NOMEM, "%s: no memory for the shard list", index_path);
            goto cleanup;
        }
    }
    listed = calloc(st->ntensors ? st->ntensors : 1, 1);
    if (!listed) {
        rc = fail(err, errlen, PD_ERR_NOMEM, "%s: no memory", index_path);
        goto cleanup;
    }
    for (const cJSON *c = wm->child; c; c = c->next) {
        uint32_t fi = 0, ti = 0;
        PD_ASSERT(strmap_get(&shards, c->valuestring, &fi));
        const char *shard_path = st->files[fi].path;
        if (!strmap_get(&st->by_name, c->string, &ti)) {
            rc = fail(err, errlen, PD_ERR_FORMAT, "%s: weight_map puts tensor '%s' in %s, which does not contain it",
                      index_path, c->string, shard_path);
            goto cleanup;
        }
        if (st->tensors[ti].file != shard_path) {
            rc = fail(err, errlen, PD_ERR_FORMAT,
                      "%s: weight_map puts tensor '%s' in %s, which does not contain it (it is in %s)", index_path,
                      c->string, shard_path, st->tensors[ti].file);
            goto cleanup;
        }
        if (listed[ti]++) {
            rc = fail(err, errlen, PD_ERR_FORMAT, "%s: weight_map lists tensor '%s' twice", index_path, c->string);
            goto cleanup;
        }
    }
    *out = st;
    st = NULL;

cleanup:
    mdl_st_close(st);
    free(listed);
    if (paths)
        for (size_t i = 0; i < nuniq; i++) free(paths[i]);
    free(paths);
    free(uniq);
    free(dir);
    strmap_free(&shards);
    cJSON_Delete(root);
    free(text);
    return rc;
}

static pd_status open_files(char *path, mdl_st *out, char *err, size_t errlen)
{
    mdl_st st = NULL;
    char *p = path;
    pd_status rc = st_alloc(&p, 1, &st);
    if (rc != PD_OK) return fail(err, errlen, rc, "no memory to open a checkpoint");
    rc = load_file(st, &st->files[0], err, errlen);
    if (rc != PD_OK) {
        mdl_st_close(st);
        return rc;
    }
    *out = st;
    return PD_OK;
}

/* Directory without an index or model.safetensors: its one *.safetensors file. */
static pd_status find_single(const char *dir, char **out, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        return fail(err, errlen, errno_status(e), "%s: cannot list directory: %s", dir, strerror(e));
    }
    char *found = NULL;
    pd_status rc = PD_OK;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!ends_with(de->d_name, ".safetensors") || de->d_name[0] == '.') continue;
        if (found) {
            rc = fail(err, errlen, PD_ERR_FORMAT,
                      "%s: several .safetensors files (e.g. %s, %s) and no model.safetensors.index.json", dir,
                      strrchr(found, '/') + 1, de->d_name);
            goto cleanup;
        }
        if (!(found = path_join(dir, de->d_name))) {
            rc = fail(err, errlen, PD_ERR_NOMEM, "%s: no memory", dir);
            goto cleanup;
        }
    }
    if (!found) {
        rc = fail(err, errlen, PD_ERR_NOT_FOUND, "%s: no model.safetensors.index.json or .safetensors file", dir);
        goto cleanup;
    }
    *out = found;
    found = NULL;
cleanup:
    free(found);
    closedir(d);
    return rc;
}

pd_status mdl_st_open(const char *path, mdl_st *out, char *err, size_t errlen)
{
    if (!path || !out) return fail(err, errlen, PD_ERR_INVALID, "mdl_st_open: NULL path or out");
    struct stat sb;
    if (stat(path, &sb) != 0) {
        int e = errno;
        return fail(err, errlen, errno_status(e), "%s: %s", path, strerror(e));
    }
    if (!S_ISDIR(sb.st_mode)) {
        if (ends_with(path, ".json")) return open_index(path, out, err, errlen);
        char *p = str_dup(path);
        if (!p) return fail(err, errlen, PD_ERR_NOMEM, "%s: no memory", path);
        return open_files(p, out, err, errlen);
    }
    char *p = path_join(path, "model.safetensors.index.json");
    if (!p) return fail(err, errlen, PD_ERR_NOMEM, "%s: no memory", path);
    if (stat(p, &sb) == 0) {
        pd_status rc = open_index(p, out, err, errlen);
        free(p);
        return rc;
    }
    free(p);
    p = path_join(path, "model.safetensors");
    if (!p) return fail(err, errlen, PD_ERR_NOMEM, "%s: no memory", path);
    if (stat(p, &sb) != 0) {
        free(p);
        p = NULL;
        pd_status rc = find_single(path, &p, err, errlen);
        if (rc != PD_OK) return rc;
    }
    return open_files(p, out, err, errlen);
}

/* ---- writer --------------------------------------------------------------------------------------- */

/* Growable text buffer; a failed append sets oom and later appends do nothing. */
typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    PD_ASSERT(n >= 0 && (size_t)n < sizeof tmp);
    sb_add(b, tmp, (size_t)n);
}

/* A JSON string literal; the input is valid UTF-8, so only quotes, backslashes and controls need escapes. */
static void sb_json_str(sbuf *b, const char *s)
{
    sb_add(b, "\"", 1);
    const char *run = s;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c != '"' && c != '\\' && c >= 0x20) continue;
        sb_add(b, run, (size_t)(s - run));
        if (c == '"') sb_str(b, "\\\"");
        else if (c == '\\') sb_str(b, "\\\\");
        else sb_printf(b, "\\u%04x", c);
        run = s + 1;
    }
    sb_add(b, run, (size_t)(s - run));
    sb_add(b, "\"", 1);
}

/* Writes text to PATH.partial and renames it to PATH. */
static pd_status write_whole(const char *path, const char *what, const char *text, size_t len)
{
    sbuf tmp = {0};
    sb_str(&tmp, path);
    sb_str(&tmp, ".partial");
    if (tmp.oom) return fail(NULL, 0, PD_ERR_NOMEM, "%s: no memory", path);
    pd_status rc = PD_OK;
    FILE *f = fopen(tmp.p, "wb");
    if (!f) {
        int e = errno;
        rc = fail(NULL, 0, errno_status(e), "%s: cannot create %s: %s", tmp.p, what, strerror(e));
        goto cleanup;
    }
    int bad = fwrite(text, 1, len, f) != len;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp.p, path) != 0) {
        int e = errno;
        rc = fail(NULL, 0, PD_ERR_IO, "%s: cannot write %s: %s", path, what, strerror(e));
        unlink(tmp.p);
    }
cleanup:
    free(tmp.p);
    return rc;
}

typedef struct {
    char *name;
    mdl_dtype dtype;
    int ndim;
    int64_t shape[MDL_MAX_DIMS];
    uint64_t begin, end;   /* data_offsets */
} wr_tensor;

typedef enum { WR_DECLARING, WR_WRITING, WR_FINISHED, WR_FAILED } wr_state;

struct mdl_st_writer_s {
    char *path;
    char *tmp_path;        /* PATH.partial, where the bytes go until finish */
    FILE *f;
    wr_tensor *t;          /* [n], declaration order */
    size_t n, cap;
    strmap names;          /* name -> index, for duplicate checks */
    uint64_t total;        /* declared data bytes */
    uint64_t written;
    wr_state state;
};

pd_status mdl_st_writer_create(const char *path, mdl_st_writer *out)
{
    if (!path || !out || !path[0]) return fail(NULL, 0, PD_ERR_INVALID, "mdl_st_writer_create: NULL or empty path");
    pd_status rc = PD_OK;
    mdl_st_writer w = calloc(1, sizeof *w);
    sbuf tmp = {0};
    sb_str(&tmp, path);
    sb_str(&tmp, ".partial");
    if (!w || tmp.oom || !(w->path = str_dup(path))) {
        rc = fail(NULL, 0, PD_ERR_NOMEM, "%s: no memory for a writer", path);
        goto fail_alloc;
    }
    w->tmp_path = tmp.p;
    tmp.p = NULL;
    w->f = fopen(w->tmp_path, "wb");
    if (!w->f) {
        int e = errno;
        rc = fail(NULL, 0, errno_status(e), "%s: cannot create: %s", w->tmp_path, strerror(e));
        goto fail_alloc;
    }
    w->state = WR_DECLARING;
    *out = w;
    return PD_OK;

fail_alloc:
    free(tmp.p);
    if (w) {
        free(w->tmp_path);
        free(w->path);
        free(w);
    }
    return rc;
}

pd_status mdl_st_writer_declare(mdl_st_writer w, const char *name, mdl_dtype dt, int ndim, const int64_t *shape)
{
    if (!w || !name) return fail(NULL, 0, PD_ERR_INVALID, "mdl_st_writer_declare: NULL writer or name");
    const char *fn = w->path;
    if (w->state != WR_DECLARING)
        return fail(NULL, 0, PD_ERR_INVALID, "%s: tensor '%s' declared after begin", fn, name);
    if (!name[0] || !strcmp(name, "__metadata__") || !utf8_valid((const unsigned char *)name, strlen(name)))
        return fail(NULL, 0, PD_ERR_INVALID, "%s: tensor name '%s' is empty, reserved or not UTF-8", fn, name);
    if ((unsigned)dt >= MDL_DT_COUNT)
        return fail(NULL, 0, PD_ERR_INVALID, "%s: tensor '%s': invalid dtype %d", fn, name, (int)dt);
    if (ndim < 0 || ndim > MDL_MAX_DIMS || (ndim > 0 && !shape))
        return fail(NULL, 0, PD_ERR_INVALID, "%s: tensor '%s': ndim %d is not in 0..%d (or shape is NULL)", fn,
                    name, ndim, MDL_MAX_DIMS);
    uint64_t numel = 1, nbytes, end;
    int zero = 0, overflow = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > 9007199254740992ull)
            return fail(NULL, 0, PD_ERR_INVALID, "%s: tensor '%s': shape[%d] = %" PRId64 " is out of range", fn, name,
                        i, shape[i]);
        zero |= shape[i] == 0;
        overflow |= __builtin_mul_overflow(numel, (uint64_t)shape[i], &numel);
    }
    if (zero) numel = 0, overflow = 0;
    if (overflow || numel > INT64_MAX || __builtin_mul_overflow(numel, (uint64_t)mdl_dtype_size(dt), &nbytes) ||
        __builtin_add_overflow(w->total, nbytes, &end) || end > 9007199254740992ull)
        return fail(NULL, 0, PD_ERR_INVALID, "%s: tensor '%s': too large", fn, name);

    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 64;
        wr_tensor *t = realloc(w->t, cap * sizeof *t);
        if (!t) return fail(NULL, 0, PD_ERR_NOMEM, "%s: tensor '%s': no memory", fn, name);
        w->t = t;
        w->cap = cap;
    }
    wr_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    if (!(t->name = str_dup(name))) return fail(NULL, 0, PD_ERR_NOMEM, "%s: tensor '%s': no memory", fn, name);
    int r = strmap_put(&w->names, t->name, (uint32_t)w->n, NULL);
    if (r <= 0) {
        free(t->name);
        return r < 0 ? fail(NULL, 0, PD_ERR_NOMEM, "%s: tensor '%s': no memory", fn, name)
                     : fail(NULL, 0, PD_ERR_INVALID, "%s: tensor '%s' declared twice", fn, name);
    }
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->begin = w->total;
    t->end = end;
    w->total = end;
    w->n++;
    return PD_OK;
}

pd_status mdl_st_writer_begin(mdl_st_writer w)
{
    if (!w) return fail(NULL, 0, PD_ERR_INVALID, "mdl_st_writer_begin: NULL writer");
    if (w->state != WR_DECLARING)
        return fail(NULL, 0, PD_ERR_INVALID, "%s: begin called twice or after an error", w->path);
    sbuf h = {0};
    sb_str(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < w->n; i++) {
        const wr_tensor *t = &w->t[i];
        sb_str(&h, ",");
        sb_json_str(&h, t->name);
        sb_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", mdl_dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) sb_printf(&h, d ? ",%" PRId64 : "%" PRId64, t->shape[d]);
        sb_printf(&h, "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", t->begin, t->end);
    }
    sb_str(&h, "}");
    /* The reference pads with spaces so the data buffer starts 8-byte aligned. */
    while (!h.oom && h.len % 8) sb_str(&h, " ");
    if (h.oom) {
        free(h.p);
        return fail(NULL, 0, PD_ERR_NOMEM, "%s: no memory for the header", w->path);
    }
    if (h.len > MDL_ST_MAX_HEADER) {
        free(h.p);
        return fail(NULL, 0, PD_ERR_INVALID, "%s: header of %zu bytes exceeds the %u-byte limit", w->path, h.len,
                    MDL_ST_MAX_HEADER);
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)h.len >> (8 * i));
    int ok = fwrite(len8, 1, 8, w->f) == 8 && fwrite(h.p, 1, h.len, w->f) == h.len;
    free(h.p);
    if (!ok) {
        int e = errno;
        w->state = WR_FAILED;
        return fail(NULL, 0, PD_ERR_IO, "%s: writing the header failed: %s", w->tmp_path, strerror(e));
    }
    w->state = WR_WRITING;
    return PD_OK;
}

/* The tensor that holds data byte off, for error messages. */
static const char *wr_tensor_at(const mdl_st_writer w, uint64_t off)
{
    for (size_t i = 0; i < w->n; i++)
        if (off < w->t[i].end) return w->t[i].name;
    return "(past the last tensor)";
}

pd_status mdl_st_writer_write(mdl_st_writer w, const void *data, size_t nbytes)
{
    if (!w || (!data && nbytes)) return fail(NULL, 0, PD_ERR_INVALID, "mdl_st_writer_write: NULL writer or data");
    if (w->state != WR_WRITING)
        return fail(NULL, 0, PD_ERR_INVALID, "%s: write before begin, after finish or after an error", w->path);
    if (nbytes > w->total - w->written)
        return fail(NULL, 0, PD_ERR_RANGE, "%s: writing %zu bytes at data offset %" PRIu64 " exceeds the %" PRIu64
                    " declared bytes", w->path, nbytes, w->written, w->total);
    if (nbytes && fwrite(data, 1, nbytes, w->f) != nbytes) {
        int e = errno;
        w->state = WR_FAILED;
        return fail(NULL, 0, PD_ERR_IO, "%s: tensor '%s': write failed: %s", w->tmp_path, wr_tensor_at(w, w->written),
                    strerror(e));
    }
    w->written += nbytes;
    return PD_OK;
}

pd_status mdl_st_writer_finish(mdl_st_writer w)
{
    if (!w) return fail(NULL, 0, PD_ERR_INVALID, "mdl_st_writer_finish: NULL writer");
    if (w->state != WR_WRITING)
        return fail(NULL, 0, PD_ERR_INVALID, "%s: finish before begin, twice or after an error", w->path);
    if (w->written != w->total)
        return fail(NULL, 0, PD_ERR_RANGE, "%s: tensor '%s': only %" PRIu64 " of %" PRIu64 " declared bytes written",
                    w->path, wr_tensor_at(w, w->written), w->written, w->total);
    int bad = fclose(w->f) != 0;
    w->f = NULL;
    if (bad || rename(w->tmp_path, w->path) != 0) {
        int e = errno;
        w->state = WR_FAILED;
        return fail(NULL, 0, PD_ERR_IO, "%s: cannot complete the file: %s", w->path, strerror(e));
    }
    w->state = WR_FINISHED;
    return PD_OK;
}

void mdl_st_writer_destroy(mdl_st_writer w)
{
    if (!w) return;
    if (w->f) fclose(w->f);
    if (w->state != WR_FINISHED) unlink(w->tmp_path);
    for (size_t i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    strmap_free(&w->names);
    free(w->tmp_path);
    free(w->path);
    free(w);
}

pd_status mdl_st_index_write(const char *path, const char *const *names, const char *const *files, size_t n,
                             uint64_t total_size)
{
    if (!path || (n && (!names || !files))) return fail(NULL, 0, PD_ERR_INVALID, "mdl_st_index_write: NULL argument");
    pd_status rc = PD_OK;
    char *file = NULL;
    strmap seen = {0};
    sbuf b = {0};
    struct stat sb;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) file = path_join(path, "model.safetensors.index.json");
    else file = str_dup(path);
    if (!file) return fail(NULL, 0, PD_ERR_NOMEM, "%s: no memory", path);

    sb_printf(&b, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64 "\n  },\n  \"weight_map\": {", total_size);
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !files[i] || !names[i][0] || !files[i][0] ||
            !utf8_valid((const unsigned char *)names[i], strlen(names[i])) ||
            !utf8_valid((const unsigned char *)files[i], strlen(files[i]))) {
            rc = fail(NULL, 0, PD_ERR_INVALID, "%s: entry %zu has a NULL, empty or non-UTF-8 name or file", file, i);
            goto cleanup;
        }
        int r = strmap_put(&seen, names[i], (uint32_t)i, NULL);
        if (r <= 0) {
            rc = r < 0 ? fail(NULL, 0, PD_ERR_NOMEM, "%s: no memory", file)
                       : fail(NULL, 0, PD_ERR_INVALID, "%s: tensor '%s' listed twice", file, names[i]);
            goto cleanup;
        }
        sb_str(&b, i ? ",\n    " : "\n    ");
        sb_json_str(&b, names[i]);
        sb_str(&b, ": ");
        sb_json_str(&b, files[i]);
    }
    sb_str(&b, n ? "\n  }\n}\n" : "}\n}\n");
    if (b.oom) {
        rc = fail(NULL, 0, PD_ERR_NOMEM, "%s: no memory", file);
        goto cleanup;
    }
    rc = write_whole(file, "index", b.p, b.len);

cleanup:
    free(b.p);
    strmap_free(&seen);
    free(file);
    return rc;
}
