/* test_core.c: error table, RNG, byte buffers and allocation hooks. */
#include "tame/core.h"

#include "check_run.h"

#include <check.h>
#include <float.h>
#include <limits.h>
#include <time.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

START_TEST(error_table_maps_names_messages_statuses)
{
    ck_assert_str_eq(tame_err_name(TAME_E_NOMEM), "NOMEM");
    ck_assert_str_eq(tame_strerror(TAME_E_NOMEM), "out of memory");
    ck_assert_int_eq(tame_err_http_status(TAME_E_INVAL), 400);
    ck_assert_int_eq(tame_err_http_status(TAME_E_NOTFOUND), 404);
    ck_assert_int_eq(tame_err_http_status(TAME_E_UNAVAIL), 503);
    ck_assert_str_eq(tame_err_name(-1), "UNKNOWN");
    ck_assert_int_eq(tame_err_http_status(-1), 500);
    ck_assert_str_eq(tame_strerror(0), "success");
}
END_TEST

START_TEST(rng_is_deterministic_and_streams_differ)
{
    struct tame_rng a, b, c;
    tame_rng_seed(&a, 42);
    tame_rng_seed(&b, 42);
    tame_rng_seed2(&c, 42, 1);
    int same_c = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t x = tame_rng_u64(&a);
        ck_assert_uint_eq(x, tame_rng_u64(&b));
        same_c += x == tame_rng_u64(&c);
    }
    ck_assert_int_eq(same_c, 0);
}
END_TEST

START_TEST(rng_below_is_uniform)
{
    /* Chi-square over 10 cells, 100000 draws: 9 dof, 99.9% quantile 27.9. */
    struct tame_rng r;
    tame_rng_seed(&r, 7);
    long cnt[10] = {0};
    const int n = 100000;
    for (int i = 0; i < n; i++) cnt[tame_rng_below(&r, 10)]++;
    double chi = 0;
    for (int k = 0; k < 10; k++) chi += pow(cnt[k] - n / 10.0, 2) / (n / 10.0);
    ck_assert_double_lt(chi, 27.9);
    double u = tame_rng_uniform(&r);
    ck_assert(u >= 0.0 && u < 1.0);
}
END_TEST

START_TEST(rng_shuffle_is_a_permutation)
{
    struct tame_rng r;
    tame_rng_seed(&r, 3);
    int idx[100], seen[100] = {0};
    for (int i = 0; i < 100; i++) idx[i] = i;
    tame_rng_shuffle(&r, idx, 100);
    int moved = 0;
    for (int i = 0; i < 100; i++) {
        seen[idx[i]]++;
        moved += idx[i] != i;
    }
    for (int i = 0; i < 100; i++) ck_assert_int_eq(seen[i], 1);
    ck_assert_int_gt(moved, 50);
}
END_TEST

START_TEST(bytes_round_trip_with_crc)
{
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    float fs[3] = {1.5f, -2.25f, 0.0f};
    tame_wbuf_u32(&w, 0xdeadbeef);
    tame_wbuf_u64(&w, 0x0123456789abcdefULL);
    tame_wbuf_i32(&w, -5);
    tame_wbuf_f64(&w, 3.25);
    tame_wbuf_f32s(&w, fs, 3);
    tame_wbuf_crc(&w, 0);
    ck_assert_int_eq(w.err, 0);

    struct tame_rbuf r;
    tame_rbuf_init(&r, w.data, w.len);
    ck_assert_uint_eq(tame_rbuf_u32(&r), 0xdeadbeef);
    ck_assert_uint_eq(tame_rbuf_u64(&r), 0x0123456789abcdefULL);
    ck_assert_int_eq(tame_rbuf_i32(&r), -5);
    ck_assert_double_eq(tame_rbuf_f64(&r), 3.25);
    float back[3];
    tame_rbuf_f32s(&r, back, 3);
    ck_assert_mem_eq(back, fs, sizeof(fs));
    tame_rbuf_crc(&r, 0);
    ck_assert_int_eq(r.err, 0);
    ck_assert_uint_eq(tame_rbuf_left(&r), 0);

    /* Any flipped bit breaks the checksum. */
    for (size_t i = 0; i < w.len - 4; i++) {
        w.data[i] ^= 0x10;
        tame_rbuf_init(&r, w.data, w.len);
        uint8_t tmp[64];
        tame_rbuf_bytes(&r, tmp, w.len - 4);
        tame_rbuf_crc(&r, 0);
        ck_assert_int_eq(r.err, TAME_E_CORRUPT);
        w.data[i] ^= 0x10;
    }
    tame_wbuf_done(&w);
}
END_TEST

START_TEST(wbuf_printf_grows_and_terminates)
{
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    char want[8192] = "";
    for (int i = 0; i < 1000; i++) {
        char part[32];
        snprintf(part, sizeof(part), "%d,", i * 7);
        strcat(want, part);
        tame_wbuf_printf(&w, "%d,", i * 7);
    }
    ck_assert_int_eq(w.err, 0);
    ck_assert_uint_eq(w.len, strlen(want));
    ck_assert_str_eq((const char *)w.data, want); /* NUL after the data */
    uint8_t *room = tame_wbuf_room(&w, 3);
    ck_assert_ptr_nonnull(room);
    memcpy(room, "abc", 3);
    w.len += 3;
    ck_assert_mem_eq(w.data + strlen(want), "abc", 3);
    tame_wbuf_done(&w);
}
END_TEST

/* Every float the formatter writes is valid JSON-number text of at most
 * TAME_FLOAT_TEXT_MAX bytes that parses back to the same float. */
static void check_text(float f, int (*fmt)(char *, float))
{
    char buf[TAME_FLOAT_TEXT_MAX + 1];
    int n = fmt(buf, f);
    ck_assert_int_gt(n, 0);
    ck_assert_int_le(n, TAME_FLOAT_TEXT_MAX);
    buf[n] = 0;
    /* JSON grammar: -?(0|[1-9]d*)(.d+)?([eE][+-]?d+)? */
    const char *p = buf;
    if (*p == '-') p++;
    if (*p == '0') p++;
    else {
        ck_assert_msg(*p >= '1' && *p <= '9', "bad text %s", buf);
        while (*p >= '0' && *p <= '9') p++;
    }
    if (*p == '.') {
        p++;
        ck_assert_msg(*p >= '0' && *p <= '9', "bad text %s", buf);
        while (*p >= '0' && *p <= '9') p++;
    }
    if (*p == 'e') {
        p++;
        if (*p == '-') p++;
        ck_assert_msg(*p >= '0' && *p <= '9', "bad text %s", buf);
        while (*p >= '0' && *p <= '9') p++;
    }
    ck_assert_msg(*p == 0, "bad text %s", buf);
    float back = strtof(buf, NULL);
    ck_assert_msg(memcmp(&back, &f, sizeof(f)) == 0, "%a wrote %s, read back %a", (double)f, buf, (double)back);
}

static void check_round_trip(float f)
{
    check_text(f, tame_fmt_float);
    check_text(f, tame_fmt_float_shortest);
}

START_TEST(fmt_float_round_trips_and_is_json)
{
    const float fixed[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.5f, 12.5f, 1e-5f, 9.99999e-6f, 123456789.0f, 1e9f,
                           1.0f / 255, 3.0f / 255, FLT_MIN, -FLT_MAX, FLT_MAX, 0x1p-149f, 0x1.fffffep-127f,
                           0.1f, 0.2f, 0.3f, 100.0f, 1e10f, 999999999.0f};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) check_round_trip(fixed[i]);
    char buf[TAME_FLOAT_TEXT_MAX];
    int n = tame_fmt_float(buf, 1.0f / 255);
    ck_assert_int_eq(n, 13);
    ck_assert_mem_eq(buf, "0.00392156886", 13); /* positional in the %g range */
    n = tame_fmt_float(buf, 12.5f);
    ck_assert_mem_eq(buf, "12.5", 4);
    ck_assert_int_eq(n, 4);
    /* The shortest text: the digits a float actually needs. */
    const struct {
        float f;
        const char *text;
    } shortest[] = {{1.0f / 255, "0.003921569"}, {0.1f, "0.1"}, {0.5f, "0.5"}, {12.5f, "12.5"},
                    {3e-7f, "3e-7"}, {-2.0f, "-2"}, {1e10f, "1e10"}, {100.0f, "100"}, {99.5f, "99.5"}};
    for (size_t i = 0; i < sizeof(shortest) / sizeof(shortest[0]); i++) {
        n = tame_fmt_float_shortest(buf, shortest[i].f);
        ck_assert_msg(n == (int)strlen(shortest[i].text) && !memcmp(buf, shortest[i].text, (size_t)n),
                      "%a: %.*s, want %s", (double)shortest[i].f, n, buf, shortest[i].text);
    }
    struct tame_rng rng;
    tame_rng_seed(&rng, 11);
    for (int i = 0; i < 200000; i++) {
        uint32_t bits = (uint32_t)tame_rng_u64(&rng);
        float f;
        memcpy(&f, &bits, sizeof(f));
        if (!isfinite(f)) continue;
        check_text(f, tame_fmt_float);
        if (i % 10 == 0) check_text(f, tame_fmt_float_shortest); /* up to 9 formats each: fewer */
    }
}
END_TEST

START_TEST(fmt_int_writes_what_printf_writes)
{
    const long long fixed[] = {0, 1, -1, 9, 10, -10, 99, 100, 12345, -987654321, INT_MAX, INT_MIN,
                               LLONG_MAX, LLONG_MIN, LLONG_MIN + 1};
    struct tame_rng rng;
    tame_rng_seed(&rng, 12);
    for (int i = 0; i < 100000; i++) {
        long long v = i < (int)(sizeof(fixed) / sizeof(fixed[0])) ? fixed[i]
                                                                   : (long long)(tame_rng_u64(&rng) >> (i % 64));
        if (i % 2 && v != LLONG_MIN) v = -v;
        char got[24], want[24];
        int n = tame_fmt_int(got, v);
        int m = snprintf(want, sizeof(want), "%lld", v);
        ck_assert_msg(n == m && !memcmp(got, want, (size_t)n), "%lld: %.*s", v, n, got);
    }
}
END_TEST

static long long realtime_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

START_TEST(deadline_ms_is_that_far_from_now_and_normalised)
{
    const long ms[] = {0, 1, 999, 1000, 1001, 1500, 60000};
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
        /* taken between two readings of the clock, so bracketed by them */
        long long before = realtime_ns();
        struct timespec d = tame_deadline_ms(ms[i]);
        long long after = realtime_ns();
        ck_assert(d.tv_nsec >= 0 && d.tv_nsec < 1000000000L);
        long long at = d.tv_sec * 1000000000LL + d.tv_nsec;
        ck_assert(at >= before + ms[i] * 1000000LL && at <= after + ms[i] * 1000000LL);
    }
}
END_TEST

START_TEST(rbuf_overrun_and_nonfinite_are_corrupt)
{
    uint8_t two[2] = {1, 2};
    struct tame_rbuf r;
    tame_rbuf_init(&r, two, 2);
    ck_assert_uint_eq(tame_rbuf_u32(&r), 0);
    ck_assert_int_eq(r.err, TAME_E_CORRUPT);
    ck_assert_uint_eq(tame_rbuf_left(&r), 0);

    float bad[2] = {1.0f, NAN};
    tame_rbuf_init(&r, bad, sizeof(bad));
    float out[2];
    tame_rbuf_f32s(&r, out, 2);
    ck_assert_int_eq(r.err, TAME_E_CORRUPT);
}
END_TEST

START_TEST(alloc_injection_fails_the_nth_and_counts_live)
{
    long live = tame_alloc_live();
    tame_alloc_fail_at(2, false);
    void *a = tame_malloc(8), *b = tame_malloc(8), *c = tame_malloc(8), *d = tame_malloc(8);
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_null(c);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(tame_alloc_live(), live + 3);
    tame_alloc_fail_at(0, true);
    ck_assert_ptr_null(tame_calloc(1, 8));
    ck_assert_ptr_null(tame_malloc(1));
    tame_alloc_fail_at(-1, false);
    tame_free(a);
    tame_free(b);
    tame_free(d);
    tame_free(NULL);
    ck_assert_int_eq(tame_alloc_live(), live);
}
END_TEST

static Suite *core_suite(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60); /* a hang guard: the formatter cases run long under the sanitizers */
    tcase_add_test(tc, error_table_maps_names_messages_statuses);
    tcase_add_test(tc, rng_is_deterministic_and_streams_differ);
    tcase_add_test(tc, rng_below_is_uniform);
    tcase_add_test(tc, rng_shuffle_is_a_permutation);
    tcase_add_test(tc, bytes_round_trip_with_crc);
    tcase_add_test(tc, wbuf_printf_grows_and_terminates);
    tcase_add_test(tc, fmt_float_round_trips_and_is_json);
    tcase_add_test(tc, fmt_int_writes_what_printf_writes);
    tcase_add_test(tc, deadline_ms_is_that_far_from_now_and_normalised);
    tcase_add_test(tc, rbuf_overrun_and_nonfinite_are_corrupt);
    tcase_add_test(tc, alloc_injection_fails_the_nth_and_counts_live);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(core_suite());
}
