/* The instance's request table (instance/reqtab.c): every listed request is found by engine id and by router id
 * through growth and removals, removed ones are not, walks see arrival order, and a removal in a walk is safe. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include "instance/inst_reqtab.h"
#include "pd_check.h"

#define N 5000 /* grows the table from 64 slots through seven doublings */

static inst_req *make(int n)
{
    inst_req *r = calloc((size_t)n, sizeof *r);
    ck_assert_ptr_nonnull(r);
    for (int i = 0; i < n; i++) {
        r[i].id = (uint64_t)i * 3 + 1; /* not the slot numbers: hashing must spread them */
        snprintf(r[i].ext_id, sizeof r[i].ext_id, "cmpl-%d-0.0", i);
    }
    return r;
}

START_TEST(test_find_through_growth)
{
    inst_reqtab t;
    ck_assert_int_eq(inst_reqtab_init(&t), PD_OK);
    inst_req *r = make(N);
    for (int i = 0; i < N; i++) {
        inst_reqtab_add(&t, &r[i]);
        ck_assert_ptr_eq(inst_reqtab_find_id(&t, r[i].id), &r[i]);
    }
    ck_assert_uint_eq(t.count, N);
    ck_assert_uint_ge(t.n_slots, N);
    for (int i = 0; i < N; i++) {
        ck_assert_ptr_eq(inst_reqtab_find_id(&t, r[i].id), &r[i]);
        ck_assert_ptr_eq(inst_reqtab_find_ext(&t, r[i].ext_id), &r[i]);
    }
    ck_assert_ptr_null(inst_reqtab_find_id(&t, 0));
    ck_assert_ptr_null(inst_reqtab_find_ext(&t, "cmpl-5000-0.0"));
    inst_reqtab_free(&t);
    free(r);
}
END_TEST

START_TEST(test_remove_and_walk)
{
    inst_reqtab t;
    ck_assert_int_eq(inst_reqtab_init(&t), PD_OK);
    inst_req *r = make(N);
    for (int i = 0; i < N; i++) inst_reqtab_add(&t, &r[i]);
    for (inst_req *q = t.head, *nx; q; q = nx) { /* the walk the decode role does on a failed peer */
        nx = q->next;
        if ((q - r) % 2) inst_reqtab_remove(&t, q);
    }
    inst_reqtab_remove(&t, &r[1]); /* not listed any more: nothing happens */
    ck_assert_uint_eq(t.count, N / 2);
    int i = 0;
    for (inst_req *q = t.head; q; q = q->next, i += 2) ck_assert_ptr_eq(q, &r[i]);
    ck_assert_int_eq(i, N);
    ck_assert_ptr_eq(t.tail, &r[N - 2]);
    for (int j = 0; j < N; j++) {
        ck_assert_ptr_eq(inst_reqtab_find_id(&t, r[j].id), j % 2 ? NULL : &r[j]);
        ck_assert_ptr_eq(inst_reqtab_find_ext(&t, r[j].ext_id), j % 2 ? NULL : &r[j]);
    }
    for (int j = 0; j < N; j += 2) inst_reqtab_remove(&t, &r[j]);
    ck_assert_uint_eq(t.count, 0);
    ck_assert_ptr_null(t.head);
    ck_assert_ptr_null(t.tail);
    inst_reqtab_add(&t, &r[7]); /* an emptied table takes entries again */
    ck_assert_ptr_eq(inst_reqtab_find_ext(&t, "cmpl-7-0.0"), &r[7]);
    inst_reqtab_free(&t);
    free(r);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("inst_reqtab");
    PD_CHECK_CASE(s, "reqtab", 0, test_find_through_growth, test_remove_and_walk);
    return pd_check_run(s, 0) ? 1 : 0;
}
