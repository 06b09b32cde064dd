/* test_buffers.c: the stratified reservoir of DESIGN 2.5. */
#include "reservoir.h"

#include "check_run.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>

START_TEST(quotas_hold_as_buckets_appear)
{
    struct tame_reservoir *r;
    ck_assert_int_eq(tame_reservoir_new(100, 2, &r), 0);
    struct tame_rng rng;
    tame_rng_seed(&rng, 1);
    float x[2] = {0, 0};
    /* Buckets appear one after another, as labels/experts do in a stream. */
    for (int b = 0; b < 7; b++) {
        for (int i = 0; i < 300; i++) {
            x[0] = (float)b;
            ck_assert_int_eq(tame_reservoir_offer(r, x, b, b / 2, tame_rng_uniform(&rng)), 0);
        }
        int quota = 100 / (b + 1);
        ck_assert_int_eq(tame_reservoir_quota(r), quota);
        ck_assert_int_eq(r->n_buckets, b + 1);
        for (int k = 0; k < r->n_buckets; k++) ck_assert_int_eq(r->buckets[k].count, quota);
        ck_assert_int_eq(tame_reservoir_size(r), quota * (b + 1));
    }
    /* Every kept sample sits in its own bucket's stratum. */
    float xs[100 * 2];
    int ys[100], tags[100];
    tame_reservoir_copy(r, xs, ys, tags);
    for (int i = 0; i < tame_reservoir_size(r); i++) {
        ck_assert_int_eq((int)xs[2 * i], ys[i]);
        ck_assert_int_eq(tags[i], ys[i] / 2);
    }
    /* A bucket that has seen fewer samples than its quota keeps them all. */
    ck_assert_int_eq(tame_reservoir_offer(r, x, 99, 0, 0.5), 0);
    ck_assert_int_eq(r->buckets[7].count, 1);
    tame_reservoir_free(r);
}
END_TEST

START_TEST(kept_sample_is_uniform)
{
    /* 2000 trials of 100 items through a 10-slot reservoir: each item is kept
     * with probability 1/10, so about 200 times.  Chi-square with 99 degrees
     * of freedom; the 99.9% quantile is 148.2.  Seed fixed. */
    const int items = 100, cap = 10, trials = 2000;
    long kept[100] = {0};
    struct tame_rng rng;
    tame_rng_seed(&rng, 12345);
    for (int t = 0; t < trials; t++) {
        struct tame_reservoir *r;
        ck_assert_int_eq(tame_reservoir_new(cap, 1, &r), 0);
        for (int i = 0; i < items; i++) {
            float x = (float)i;
            ck_assert_int_eq(tame_reservoir_offer(r, &x, 0, 0, tame_rng_uniform(&rng)), 0);
        }
        float xs[10];
        tame_reservoir_copy(r, xs, NULL, NULL);
        ck_assert_int_eq(tame_reservoir_size(r), cap);
        for (int k = 0; k < cap; k++) kept[(int)xs[k]]++;
        tame_reservoir_free(r);
    }
    double expect = (double)trials * cap / items, chi = 0;
    for (int i = 0; i < items; i++) chi += pow(kept[i] - expect, 2) / expect;
    ck_assert_msg(chi < 148.2, "chi-square %g", chi);
    /* Early and late items alike: the first and last quarter agree. */
    long early = 0, late = 0;
    for (int i = 0; i < 25; i++) early += kept[i], late += kept[items - 1 - i];
    ck_assert_msg(labs(early - late) < 300, "early %ld late %ld", early, late);
}
END_TEST

START_TEST(save_load_round_trip_and_corruption)
{
    struct tame_reservoir *r, *back;
    ck_assert_int_eq(tame_reservoir_new(20, 3, &r), 0);
    struct tame_rng rng;
    tame_rng_seed(&rng, 2);
    for (int i = 0; i < 200; i++) {
        float x[3] = {(float)i, 1, 2};
        ck_assert_int_eq(tame_reservoir_offer(r, x, i % 3, i % 2, tame_rng_uniform(&rng)), 0);
    }
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    tame_reservoir_save(r, &w);
    struct tame_rbuf rb;
    tame_rbuf_init(&rb, w.data, w.len);
    ck_assert_int_eq(tame_reservoir_load(&rb, 20, 3, &back), 0);
    struct tame_wbuf w2;
    tame_wbuf_init(&w2);
    tame_reservoir_save(back, &w2);
    ck_assert_uint_eq(w.len, w2.len);
    ck_assert_mem_eq(w.data, w2.data, w.len);
    /* Both continue identically. */
    for (int i = 0; i < 100; i++) {
        float x[3] = {(float)-i, 0, 0};
        double key = tame_rng_uniform(&rng);
        tame_reservoir_offer(r, x, i % 4, 0, key);
        tame_reservoir_offer(back, x, i % 4, 0, key);
    }
    tame_wbuf_done(&w);
    tame_wbuf_done(&w2);
    tame_wbuf_init(&w);
    tame_wbuf_init(&w2);
    tame_reservoir_save(r, &w);
    tame_reservoir_save(back, &w2);
    ck_assert_mem_eq(w.data, w2.data, w.len);
    /* Truncations never load. */
    for (size_t len = 0; len < w.len; len += 5) {
        struct tame_reservoir *bad = NULL;
        tame_rbuf_init(&rb, w.data, len);
        ck_assert_int_lt(tame_reservoir_load(&rb, 20, 3, &bad), 0);
        ck_assert_ptr_null(bad);
    }
    /* Nor a reservoir of another shape than the model's (a damaged size
     * would otherwise be allocated before it is found out). */
    int shapes[][2] = {{21, 3}, {20, 2}, {1 << 24, 3}};
    for (int i = 0; i < 3; i++) {
        struct tame_reservoir *bad = NULL;
        tame_rbuf_init(&rb, w.data, w.len);
        long before = tame_alloc_count();
        ck_assert_int_eq(tame_reservoir_load(&rb, shapes[i][0], shapes[i][1], &bad), TAME_E_CORRUPT);
        ck_assert_int_eq(tame_alloc_count(), before);
        ck_assert_ptr_null(bad);
    }
    tame_wbuf_done(&w);
    tame_wbuf_done(&w2);
    tame_reservoir_free(r);
    tame_reservoir_free(back);
}
END_TEST

/* Retagging (an expert retired: its samples become another's) renames a
 * stratum that the target lacks, merges one it has into it keeping the
 * highest keys up to the quota (so still a uniform sample of both), leaves
 * the merged stratum empty for a later expert of that id, changes no quota
 * and allocates nothing.  Samples carry their key as x to be told apart. */
START_TEST(retag_renames_or_merges_keeping_the_highest_keys)
{
    struct tame_reservoir *r;
    ck_assert_int_eq(tame_reservoir_new(12, 1, &r), 0);
    static const struct {
        int y, tag;
        double key;
    } in[] = {{0, 0, 0.1}, {0, 0, 0.2}, {0, 0, 0.3}, {0, 0, 0.4}, {0, 0, 0.5}, {0, 0, 0.6},
              {0, 1, 0.05}, {0, 1, 0.65}, {0, 1, 0.7}, {1, 1, 0.3}};
    for (size_t i = 0; i < sizeof(in) / sizeof(in[0]); i++) {
        float x = (float)in[i].key;
        ck_assert_int_eq(tame_reservoir_offer(r, &x, in[i].y, in[i].tag, in[i].key), 0);
    }
    ck_assert_int_eq(tame_reservoir_quota(r), 4); /* 3 strata in 12 slots */
    ck_assert_int_eq(tame_reservoir_size(r), 4 + 3 + 1);

    long before = tame_alloc_count();
    tame_reservoir_retag(r, 1, 0);
    ck_assert_int_eq(tame_alloc_count(), before);
    ck_assert_int_eq(tame_reservoir_quota(r), 4);
    ck_assert_int_eq(tame_reservoir_tag_count(r, 1), 0);
    ck_assert_int_eq(tame_reservoir_tag_count(r, 0), 5);
    ck_assert(tame_reservoir_has_bucket(r, 1, 0));  /* renamed */
    ck_assert(!tame_reservoir_has_bucket(r, 1, 1));
    ck_assert(tame_reservoir_has_bucket(r, 0, 1));  /* merged, left empty */
    int n = tame_reservoir_size(r);
    ck_assert_int_eq(n, 5);
    float x[12];
    int y[12], tag[12];
    tame_reservoir_copy(r, x, y, tag);
    /* label 0 keeps the four highest keys of both strata: 0.5 0.6 0.65 0.7 */
    int label0 = 0;
    for (int i = 0; i < n; i++) {
        ck_assert_int_eq(tag[i], 0);
        if (y[i] != 0) continue;
        label0++;
        ck_assert_msg(x[i] >= 0.49f, "kept key %g, not among the 4 highest", x[i]);
    }
    ck_assert_int_eq(label0, 4);

    /* A later expert 1 fills the empty stratum again; no stratum is added. */
    float x1 = 0.9f;
    ck_assert_int_eq(tame_reservoir_offer(r, &x1, 0, 1, 0.9), 0);
    ck_assert_int_eq(tame_reservoir_tag_count(r, 1), 1);
    ck_assert_int_eq(tame_reservoir_quota(r), 4);
    /* and the whole still saves and loads */
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    tame_reservoir_save(r, &w);
    struct tame_rbuf rb;
    tame_rbuf_init(&rb, w.data, w.len);
    struct tame_reservoir *back;
    ck_assert_int_eq(tame_reservoir_load(&rb, 12, 1, &back), 0);
    ck_assert_int_eq(tame_reservoir_size(back), 6);
    tame_reservoir_free(back);
    tame_wbuf_done(&w);
    tame_reservoir_free(r);
}
END_TEST

START_TEST(allocation_failure_changes_nothing)
{
    long live = tame_alloc_live();
    for (long n = 0; n < 40; n++) {
        struct tame_reservoir *r = NULL;
        tame_alloc_fail_at(n, false);
        int rc = tame_reservoir_new(10, 2, &r);
        tame_alloc_fail_at(-1, false);
        ck_assert(rc == 0 || rc == TAME_E_NOMEM);
        if (rc == 0) {
            float x[2] = {1, 2};
            ck_assert_int_eq(tame_reservoir_offer(r, x, 0, 0, 0.5), 0);
            /* A new bucket whose allocation fails leaves the others intact. */
            tame_alloc_fail_at(0, true);
            ck_assert_int_eq(tame_reservoir_offer(r, x, 1, 0, 0.7), TAME_E_NOMEM);
            tame_alloc_fail_at(-1, false);
            ck_assert_int_eq(r->n_buckets, 1);
            ck_assert_int_eq(tame_reservoir_size(r), 1);
        }
        tame_reservoir_free(r);
        ck_assert_int_eq(tame_alloc_live(), live);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("buffers");
    TCase *tc = tcase_create("buffers");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, quotas_hold_as_buckets_appear);
    tcase_add_test(tc, kept_sample_is_uniform);
    tcase_add_test(tc, save_load_round_trip_and_corruption);
    tcase_add_test(tc, allocation_failure_changes_nothing);
    tcase_add_test(tc, retag_renames_or_merges_keeping_the_highest_keys);
    suite_add_tcase(s, tc);
    return check_run(s);
}
