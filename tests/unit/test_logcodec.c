/* test_logcodec.c: log records' inputs round-trip exactly in both forms
 * (a palette of up to 256 distinct floats, plain float32 beyond), -0 and 0
 * stay apart, and damaged encodings are refused. */
#include "check_run.h"
#include "serve/logcodec.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void round_trip(const float *x, size_t n, int want_form, size_t want_len)
{
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    log_x_encode(x, n, &w);
    ck_assert_int_eq(w.err, 0);
    ck_assert_int_eq(w.data[0], want_form);
    ck_assert_uint_eq(w.len, want_len);
    float *back = malloc(n * sizeof(float));
    ck_assert_int_eq(log_x_decode(w.data, w.len, n, back), 0);
    ck_assert_mem_eq(back, x, n * sizeof(float)); /* bit for bit */
    ck_assert_int_eq(log_x_decode(w.data, w.len, n + 1, back), TAME_E_CORRUPT);
    free(back);
    tame_wbuf_done(&w);
}

START_TEST(quantised_inputs_take_a_palette_and_others_stay_float32)
{
    enum { N = 128 * 784 };
    float *x = malloc(N * sizeof(float));
    struct tame_rng r;
    tame_rng_seed(&r, 4);
    for (int i = 0; i < N; i++) x[i] = (float)tame_rng_below(&r, 256) / 255.0f; /* pixels */
    round_trip(x, N, 1, 3 + 256 * 4 + N);
    for (int i = 0; i < N; i++) x[i] = i % 3 ? 0.0f : -0.0f; /* two values, bitwise distinct */
    round_trip(x, N, 1, 3 + 2 * 4 + N);
    for (int i = 0; i < N; i++) x[i] = (float)tame_rng_uniform(&r); /* all distinct */
    round_trip(x, N, 0, 1 + (size_t)N * 4);
    for (int i = 0; i < 300; i++) x[i] = (float)(i % 257); /* 257 distinct: float32 */
    round_trip(x, 300, 0, 1 + 300 * 4);
    /* Runs of one value (an image's background), 0 and -0 among them:
     * still bit for bit; and runs of 300 distinct values still overflow
     * the palette. */
    for (int i = 0; i < N; i++) {
        int run = i / 37;
        x[i] = run % 5 == 0 ? 0.0f : run % 5 == 1 ? -0.0f : (float)(run % 200) / 255.0f;
    }
    round_trip(x, N, 1, 3 + 122 * 4 + N); /* 0, -0 and 120 others */
    for (int i = 0; i < 3000; i++) x[i] = (float)(i / 10);
    round_trip(x, 3000, 0, 1 + 3000 * 4);
    round_trip(x, 0, 0, 1); /* no values: the raw form's tag alone (a palette needs 1..256; found by fuzz-logcodec) */
    free(x);
}
END_TEST

START_TEST(damaged_encodings_are_refused)
{
    float x[8] = {1, 2, 1, 2, 3, 3, 1, 2}, out[8];
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    log_x_encode(x, 8, &w);
    ck_assert_int_eq(w.data[0], 1);
    uint8_t *b = malloc(w.len);
    memcpy(b, w.data, w.len);
    b[w.len - 1] = 3; /* index past the 3-entry palette */
    ck_assert_int_eq(log_x_decode(b, w.len, 8, out), TAME_E_CORRUPT);
    memcpy(b, w.data, w.len);
    float inf = INFINITY;
    memcpy(b + 3, &inf, 4); /* a non-finite palette entry */
    ck_assert_int_eq(log_x_decode(b, w.len, 8, out), TAME_E_CORRUPT);
    memcpy(b, w.data, w.len);
    b[0] = 7; /* unknown form */
    ck_assert_int_eq(log_x_decode(b, w.len, 8, out), TAME_E_CORRUPT);
    ck_assert_int_eq(log_x_decode(b, 0, 8, out), TAME_E_CORRUPT);
    free(b);
    tame_wbuf_done(&w);
}
END_TEST

static Suite *logcodec_suite(void)
{
    Suite *s = suite_create("logcodec");
    TCase *tc = tcase_create("logcodec");
    tcase_add_test(tc, quantised_inputs_take_a_palette_and_others_stay_float32);
    tcase_add_test(tc, damaged_encodings_are_refused);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return check_run(logcodec_suite()); }
