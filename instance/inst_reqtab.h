/* The requests an instance has in flight, found by engine id (each engine event, each KV notice) and by the
 * router's id (aborts) in constant time: two chained hash tables over the same entries, plus a list in the
 * order of arrival for walks. The table owns no request: the role embeds an inst_req first in its own. */
#ifndef INST_REQTAB_H
#define INST_REQTAB_H

#include <event2/http.h>
#include <stddef.h>
#include <stdint.h>

#include "common/pd_common.h"

#define INST_EXT_ID_LEN 96 /* the router's id, NUL included */

typedef struct inst_req {
    uint64_t id;                     /* the engine's id */
    char ext_id[INST_EXT_ID_LEN];    /* the router's id */
    struct evhttp_request *http;     /* the open exchange with the router; NULL once ended or gone */
    void *owner;                     /* the instance (for the exchange's close callback) */
    struct inst_req *id_next, *ext_next; /* hash chains */
    struct inst_req *prev, *next;        /* arrival order */
} inst_req;

typedef struct {
    inst_req **by_id, **by_ext;
    size_t n_slots;                  /* a power of two */
    size_t count;
    inst_req *head, *tail;
} inst_reqtab;

pd_status inst_reqtab_init(inst_reqtab *t);
/* Frees the table's slots; the requests are the caller's. */
void inst_reqtab_free(inst_reqtab *t);
/* Lists r under r->id and r->ext_id (neither listed yet). Never fails: when growing the table is impossible the
 * chains get longer. */
void inst_reqtab_add(inst_reqtab *t, inst_req *r);
void inst_reqtab_remove(inst_reqtab *t, inst_req *r);
inst_req *inst_reqtab_find_id(const inst_reqtab *t, uint64_t id);
inst_req *inst_reqtab_find_ext(const inst_reqtab *t, const char *ext_id);

#endif
