/* Safetensors checkpoints: a reader that mmaps every shard read-only and hands out tensor views into the
 * mappings (validated once at open, looked up by name through a hash table), and a streaming writer for
 * single files plus the model.safetensors.index.json that ties shards together. */
#ifndef MDL_SAFETENSORS_H
#define MDL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "common/pd_common.h"

/* Element types pdserve reads and writes. Safetensors spells them as mdl_dtype_name() returns. */
typedef enum {
    MDL_DT_F32,
    MDL_DT_F16,
    MDL_DT_BF16,
    MDL_DT_F8_E4M3,
    MDL_DT_F64,
    MDL_DT_I64,
    MDL_DT_I32,
    MDL_DT_I16,
    MDL_DT_I8,
    MDL_DT_U8,
    MDL_DT_BOOL,
    MDL_DT_COUNT
} mdl_dtype;

/* Bytes per element; 0 for a value outside the enum. */
size_t mdl_dtype_size(mdl_dtype dt);
/* Safetensors spelling: "BF16", "F8_E4M3", ...; "?" for a value outside the enum. Never NULL. */
const char *mdl_dtype_name(mdl_dtype dt);
/* Exact, case-sensitive inverse of mdl_dtype_name. Returns PD_ERR_FORMAT for any other string (including
 * safetensors dtypes pdserve does not handle, such as F8_E5M2) and PD_ERR_INVALID for NULL; logs nothing;
 * *out is written only on success. */
pd_status mdl_dtype_parse(const char *s, mdl_dtype *out);

#define MDL_MAX_DIMS 8
/* Largest JSON header accepted, as in the reference implementation. */
#define MDL_ST_MAX_HEADER 100000000u

/* One tensor of an open checkpoint. Everything it points to lives until mdl_st_close. */
typedef struct {
    const char *name;
    mdl_dtype dtype;
    int ndim;                       /* 0 for a scalar */
    int64_t shape[MDL_MAX_DIMS];    /* shape[ndim..] are 0 */
    int64_t numel;                  /* product of shape; 1 for a scalar, 0 for an empty tensor */
    const void *data;               /* inside the read-only mmap of its file; no alignment promised */
    size_t nbytes;                  /* numel * mdl_dtype_size(dtype) */
    const char *file;               /* path of the shard that holds it */
} mdl_tensor_view;

typedef struct mdl_st_s *mdl_st;

/* Opens a checkpoint. path is one of
 *   - a directory: uses model.safetensors.index.json if present (all shards in its weight_map, resolved
 *     relative to the directory); else model.safetensors; else the only *.safetensors file in it
 *     (PD_ERR_FORMAT if there are several, PD_ERR_NOT_FOUND if none);
 *   - a .safetensors file;
 *   - an index .json file (any name ending in .json); shards are resolved relative to its directory.
 * Every file is mmap'd read-only and its header fully validated here, so views never point outside a
 * mapping. With an index, every tensor its weight_map lists must be in the shard it names; tensors in the
 * shards that the weight_map does not list are still opened. Tensors come in file order (shards sorted by
 * name) and, within a file, by data offset.
 * On error returns PD_ERR_NOT_FOUND (a path or shard is missing), PD_ERR_IO (open/read/mmap failed),
 * PD_ERR_FORMAT (anything malformed), PD_ERR_NOMEM, or PD_ERR_INVALID (NULL path/out); writes a message
 * naming the file (and the tensor, where there is one) into err (if err && errlen), logs it once with
 * pd_error, and leaves *out untouched. Truncating a file while it is open is not detected (SIGBUS). */
pd_status mdl_st_open(const char *path, mdl_st *out, char *err, size_t errlen);
size_t mdl_st_count(const mdl_st st);
/* i < mdl_st_count(st); NULL otherwise. */
const mdl_tensor_view *mdl_st_at(const mdl_st st, size_t i);
/* O(1) average (hash table); NULL if absent. */
const mdl_tensor_view *mdl_st_find(const mdl_st st, const char *name);
/* Sum of nbytes over all tensors. */
size_t mdl_st_total_bytes(const mdl_st st);
/* Number of files mapped (1 without an index). */
size_t mdl_st_file_count(const mdl_st st);
/* Releasing pages nothing reads any more. A loader that copied, converted or packed a tensor marks it done;
 * mdl_st_release_done then drops from this process every page of the file mappings that holds bytes of done
 * tensors and of no other tensor and no header (madvise MADV_DONTNEED on the read-only private file mapping: the
 * page cache keeps the pages for other processes; this one's resident memory no longer counts them). A page shared
 * with a tensor not marked done is kept whole. Views stay valid: a dropped page that is read again faults back in
 * from the file with the same bytes, so marking is about memory, never correctness.
 * mark_done: t must be a view of st (from mdl_st_find / mdl_st_at); marking twice is harmless. NULL does nothing. */
void mdl_st_mark_done(mdl_st st, const mdl_tensor_view *t);
/* 1 when p points into one of the checkpoint's file mappings (a tensor read in place). */
int mdl_st_holds(mdl_st st, const void *p);
/* Drops the pages as above (again for pages read since an earlier call); returns the bytes dropped. Logs a warning
 * once if the kernel refuses (the pages then stay resident; nothing else changes). */
size_t mdl_st_release_done(mdl_st st);
/* Unmaps every file and frees every view. Accepts NULL. */
void mdl_st_close(mdl_st st);

/* Writer: declare every tensor, then begin, then stream the data in declaration order (any chunking), then
 * finish. The file is written as PATH.partial and renamed to PATH by a successful finish, so PATH never holds
 * a half-written checkpoint. Tensors are laid out contiguously in declaration order after a header of the
 * form {"__metadata__":{"format":"pt"},name:{"dtype","shape","data_offsets"},...} padded with spaces to a
 * multiple of 8 bytes, as the reference implementation does. Every error is logged once, naming the file
 * (and tensor). Calls out of order return PD_ERR_INVALID. */
typedef struct mdl_st_writer_s *mdl_st_writer;
/* Creates PATH.partial now, so an unwritable location fails early (PD_ERR_NOT_FOUND / PD_ERR_IO). */
pd_status mdl_st_writer_create(const char *path, mdl_st_writer *out);
/* name: non-empty UTF-8, not "__metadata__", not declared before; 0 <= ndim <= MDL_MAX_DIMS; shape[i] >= 0
 * (shape may be NULL when ndim is 0). The name is copied. PD_ERR_INVALID otherwise, or after begin. */
pd_status mdl_st_writer_declare(mdl_st_writer w, const char *name, mdl_dtype dt, int ndim, const int64_t *shape);
/* Writes the header with __metadata__ {"format":"pt"}, padded with spaces to 8-byte alignment. */
pd_status mdl_st_writer_begin(mdl_st_writer w);
/* Appends nbytes of tensor data. PD_ERR_RANGE (and nothing written) if that would exceed the declared
 * total; PD_ERR_IO on a failed write, after which only destroy is useful. */
pd_status mdl_st_writer_write(mdl_st_writer w, const void *data, size_t nbytes);
/* PD_ERR_RANGE if fewer bytes than declared were written (the file stays unfinished); otherwise flushes,
 * closes (no fsync) and renames PATH.partial to PATH. The writer still has to be destroyed. */
pd_status mdl_st_writer_finish(mdl_st_writer w);
/* Accepts NULL. Removes PATH.partial if finish did not succeed; a finished file stays. */
void mdl_st_writer_destroy(mdl_st_writer w);

/* Writes the shard index {"metadata":{"total_size":N},"weight_map":{name:file,...}} (entries in the order
 * given; files are relative to the index's directory). path is the index file, or an existing directory to
 * write DIR/model.safetensors.index.json into. Written through PATH.partial and a rename. PD_ERR_INVALID for
 * NULL or duplicate names, PD_ERR_IO / PD_ERR_NOT_FOUND when the file cannot be written; errors are logged. */
pd_status mdl_st_index_write(const char *path, const char *const *names, const char *const *files, size_t n,
                             uint64_t total_size);

#endif
