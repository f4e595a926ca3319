/* The request table: two chained hash tables (engine id, router id) over intrusive entries, grown by doubling
 * when the load passes 1, and a doubly linked list in arrival order. */
#include <stdlib.h>
#include <string.h>

#include "instance/inst_reqtab.h"

#define INITIAL_SLOTS 64

static size_t hash_id(uint64_t x)
{
    x ^= x >> 30; /* splitmix64's finaliser: consecutive ids spread over every slot */
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return (size_t)(x ^ (x >> 31));
}

static size_t hash_ext(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return (size_t)h;
}

pd_status inst_reqtab_init(inst_reqtab *t)
{
    memset(t, 0, sizeof *t);
    t->by_id = calloc(INITIAL_SLOTS, sizeof *t->by_id);
    t->by_ext = calloc(INITIAL_SLOTS, sizeof *t->by_ext);
    if (!t->by_id || !t->by_ext) {
        inst_reqtab_free(t);
        return PD_ERR_NOMEM;
    }
    t->n_slots = INITIAL_SLOTS;
    return PD_OK;
}

void inst_reqtab_free(inst_reqtab *t)
{
    free(t->by_id);
    free(t->by_ext);
    memset(t, 0, sizeof *t);
}

static void link_hashed(inst_req **by_id, inst_req **by_ext, size_t mask, inst_req *r)
{
    size_t i = hash_id(r->id) & mask, e = hash_ext(r->ext_id) & mask;
    r->id_next = by_id[i];
    by_id[i] = r;
    r->ext_next = by_ext[e];
    by_ext[e] = r;
}

static void grow(inst_reqtab *t)
{
    size_t n = t->n_slots * 2;
    inst_req **by_id = calloc(n, sizeof *by_id), **by_ext = calloc(n, sizeof *by_ext);
    if (!by_id || !by_ext) { /* keep the smaller table: lookups stay correct, only slower */
        free(by_id);
        free(by_ext);
        return;
    }
    for (inst_req *r = t->head; r; r = r->next) link_hashed(by_id, by_ext, n - 1, r);
    free(t->by_id);
    free(t->by_ext);
    t->by_id = by_id;
    t->by_ext = by_ext;
    t->n_slots = n;
}

void inst_reqtab_add(inst_reqtab *t, inst_req *r)
{
    r->next = NULL;
    r->prev = t->tail;
    if (t->tail) t->tail->next = r;
    else t->head = r;
    t->tail = r;
    t->count++;
    if (t->count > t->n_slots) grow(t); /* relinks every entry, r included */
    else link_hashed(t->by_id, t->by_ext, t->n_slots - 1, r);
}

void inst_reqtab_remove(inst_reqtab *t, inst_req *r)
{
    inst_req **pp = &t->by_id[hash_id(r->id) & (t->n_slots - 1)];
    while (*pp && *pp != r) pp = &(*pp)->id_next;
    if (!*pp) return; /* not listed */
    *pp = r->id_next;
    for (pp = &t->by_ext[hash_ext(r->ext_id) & (t->n_slots - 1)]; *pp != r; pp = &(*pp)->ext_next) {}
    *pp = r->ext_next;
    if (r->prev) r->prev->next = r->next;
    else t->head = r->next;
    if (r->next) r->next->prev = r->prev;
    else t->tail = r->prev;
    r->prev = r->next = r->id_next = r->ext_next = NULL;
    t->count--;
}

inst_req *inst_reqtab_find_id(const inst_reqtab *t, uint64_t id)
{
    inst_req *r = t->by_id[hash_id(id) & (t->n_slots - 1)];
    while (r && r->id != id) r = r->id_next;
    return r;
}

inst_req *inst_reqtab_find_ext(const inst_reqtab *t, const char *ext_id)
{
    inst_req *r = t->by_ext[hash_ext(ext_id) & (t->n_slots - 1)];
    while (r && strcmp(r->ext_id, ext_id) != 0) r = r->ext_next;
    return r;
}
