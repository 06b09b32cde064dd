/* test_numarray.c: the fast numeric-array path gives exactly what jansson
 * (strtod, for reals) gives, leaves everything unusual to jansson, and cannot be
 * spoofed by a client-written string. */
#include "check_run.h"
#include "body_meaning.h"
#include "numarray.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One random number as text, from rand(). */
typedef void gen_fn(char *num, size_t cap, int digits, bool exact_digits);

/* %g with `digits` significant digits (exactly, or 1..digits at random). */
static void gen_g(char *num, size_t cap, int digits, bool exact_digits)
{
    double d = (rand() / (double)RAND_MAX - 0.25) * pow(10, rand() % 20 - 10);
    snprintf(num, cap, "%.*g", exact_digits ? digits : 1 + rand() % digits, d);
}

/* Positional, 1..digits fraction digits, either sign. */
static void gen_f(char *num, size_t cap, int digits, bool exact_digits)
{
    (void)exact_digits;
    double d = rand() / (double)RAND_MAX * pow(10, rand() % 8 - 4);
    snprintf(num, cap, "%s%.*f", rand() % 2 ? "-" : "", 1 + rand() % digits, d);
}

/* What jansson reads for the number text s; false if it refuses it. */
static bool jansson_number(const char *s, double *v, bool *is_int)
{
    json_t *j = json_loads(s, JSON_DECODE_ANY, NULL);
    if (!j) return false;
    *v = json_number_value(j);
    *is_int = json_is_integer(j);
    json_decref(j);
    return true;
}

/* `rounds` arrays of 300 random numbers go through the pool and must
 * equal jansson's doubles (strtod's, for reals) bit for bit. */
static void check_random_arrays(unsigned seed, int rounds, gen_fn *gen, int digits, bool exact_digits)
{
    srand(seed);
    for (int round = 0; round < rounds; round++) {
        char b[16384] = "{\"x\":[", num[64];
        double want[300];
        for (int i = 0; i < 300; i++) {
            gen(num, sizeof(num), digits, exact_digits);
            bool is_int;
            ck_assert(jansson_number(num, &want[i], &is_int));
            strcat(b, i ? "," : "");
            strcat(b, num);
        }
        strcat(b, "]}");
        size_t l = strlen(b);
        struct num_pool pool;
        num_pool_init(&pool);
        ck_assert_int_eq(numarray_extract(b, &l, &pool), 0);
        json_t *s = json_loadb(b, l, 0, NULL);
        const double *v;
        size_t cnt;
        bool all_int;
        ck_assert(numarray_lookup(&pool, json_string_value(json_object_get(s, "x")), &v, &cnt, &all_int));
        ck_assert_uint_eq(cnt, 300);
        for (int i = 0; i < 300; i++)
            ck_assert_msg(!memcmp(&v[i], &want[i], sizeof(double)), "%.17g vs %.17g", v[i], want[i]);
        json_decref(s);
        num_pool_done(&pool);
    }
}

START_TEST(numbers_parse_exactly_as_jansson)
{
    /* Many shapes of numbers: integers, fractions, exponents, long mantissas. */
    const char *nums[] = {"0", "-0", "1", "-17", "0.5", "3.14159265358979", "1e-7", "-2.5E+3", "123456789012345678",
                          "0.000001234567", "9.99999999e37", "1.17549435e-38", "4.9e-324", "0.1", "0.2", "0.3",
                          "1234567.125", "7e22", "7e23", "1.0000000000000002"};
    const int n = sizeof(nums) / sizeof(nums[0]);
    char body[4096] = "{\"x\":[";
    for (int i = 0; i < n; i++) strcat(body, i ? "," : ""), strcat(body, nums[i]);
    strcat(body, "]}");
    size_t len = strlen(body);
    struct num_pool pool;
    num_pool_init(&pool);
    ck_assert_int_eq(numarray_extract(body, &len, &pool), 0);
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    ck_assert_ptr_nonnull(doc);
    const double *v;
    size_t cnt;
    bool all_int;
    ck_assert(numarray_lookup(&pool, json_string_value(json_object_get(doc, "x")), &v, &cnt, &all_int));
    ck_assert_uint_eq(cnt, (size_t)n);
    ck_assert(!all_int);
    for (int i = 0; i < n; i++) {
        double want;
        bool is_int;
        ck_assert(jansson_number(nums[i], &want, &is_int));
        ck_assert_msg(memcmp(&v[i], &want, sizeof(double)) == 0, "%s: %.17g vs %.17g", nums[i], v[i], want);
    }
    json_decref(doc);
    num_pool_done(&pool);

    /* Random doubles printed with 17 digits, as most JSON encoders write
     * them (the extended-precision path), and decimals of up to 9 digits,
     * as clients send floats (the exact fast path): both give strtod's. */
    check_random_arrays(5, 100, gen_g, 17, true);
    check_random_arrays(3, 200, gen_g, 9, false);
}
END_TEST

START_TEST(the_one_pass_path_agrees_with_the_general_one)
{
    /* Each number first in a long array (read in one pass: far from the
     * end of the body) and last (read by the general parser): both equal
     * jansson's double bit for bit (strtod's, for a real; "-0" is its
     * integer 0), and what jansson refuses is left to it.  Around the one-pass limits: 8 integer
     * digits, 8 and 16 fraction digits, mantissas near 2^53, signs, zeros. */
    const char *nums[] = {"0", "-0", "0.0", "-0.0", "7", "12345678", "123456789", "99999999.99999999",
                          "0.5", "-0.25", "0.00392156886", "0.003921569", "0.12345678", "0.1234567890123456",
                          "0.9007199254740993", "9007199.254740993", "9007199.254740992", "0.00000001",
                          "0.0000000000000001", "1.0000000000000002", "3.40282347", "-1.17549435",
                          /* Python's float64 text, leading fraction zeros, and mantissas that
                           * would overflow 64 bits on the way (must fall back, not wrap) */
                          "0.00392156862745098", "0.52941176470588236", "0.0000000000000000000001",
                          "0.00000000000000000000001", "1234567.1234567812345678", "9999999.9999999999999999",
                          "0.000000009007199254740993", "0.000000009007199254740992",
                          /* exactly halfway between two doubles: ties go to the even one */
                          "9007199254740993", "9007199254740995", "9007199254740997", "18014398509481986",
                          "18014398509481990", "4503599627370496.5", "4503599627370497.5", "0.9007199254740993",
                          /* 19 and 20 digits, the 64-bit integer limits, and exponents just past the table */
                          "1844674407370955161", "18446744073709551615", "9223372036854775807",
                          "9223372036854775808", "-9223372036854775808", "-9223372036854775809", "1e-28", "1e28",
                          "123e-30"};
    for (size_t i = 0; i < sizeof(nums) / sizeof(nums[0]); i++) {
        char b[512];
        int n = snprintf(b, sizeof(b), "{\"x\":[%s,", nums[i]);
        for (int k = 0; k < 40; k++) n += snprintf(b + n, sizeof(b) - (size_t)n, "0,");
        n += snprintf(b + n, sizeof(b) - (size_t)n, "%s]}", nums[i]);
        size_t l = (size_t)n;
        struct num_pool pool;
        num_pool_init(&pool);
        ck_assert_int_eq(numarray_extract(b, &l, &pool), 0);
        double want;
        bool want_int;
        if (!jansson_number(nums[i], &want, &want_int)) { /* an integer past 64 bits: jansson's error */
            ck_assert_msg(pool.n_arr == 0, "%s extracted", nums[i]);
            num_pool_done(&pool);
            continue;
        }
        ck_assert_uint_eq(pool.n_arr, 1);
        ck_assert_uint_eq(pool.n, 42);
        ck_assert_msg(!memcmp(&pool.v[0], &want, sizeof(want)), "%s first: %.17g", nums[i], pool.v[0]);
        ck_assert_msg(!memcmp(&pool.v[41], &want, sizeof(want)), "%s last: %.17g", nums[i], pool.v[41]);
        ck_assert(pool.arr[0].all_int == want_int);
        num_pool_done(&pool);
    }
}
END_TEST

/* text is valid JSON; numarray_cut cuts it after the middle just after a
 * "]," or "}," (want_cut) or nowhere; whole and in those two parts it
 * means to jansson what it meant, with want_arrays arrays rewritten. */
static void check_split_equals_whole(const char *text, bool want_cut, size_t want_arrays)
{
    size_t n = strlen(text), cut = numarray_cut(text, n);
    json_t *doc = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    ck_assert_ptr_nonnull(doc);
    json_decref(doc);
    ck_assert(want_cut ? cut > n / 2 && cut < n : cut == 0);
    if (cut) ck_assert_msg((text[cut - 2] == ']' || text[cut - 2] == '}') && text[cut - 1] == ',', "cut at %zu", cut);
    char msg[256];
    for (int split = 0; split < 2; split++) {
        size_t arrays = 0;
        const char *why = body_meaning_differs(text, n, split, &arrays, msg, sizeof(msg));
        ck_assert_msg(!why, "%s (%s)", why, split ? "in two parts" : "whole");
        ck_assert_uint_eq(arrays, want_arrays);
    }
}

START_TEST(positional_decimals_of_every_length_parse_as_strtod)
{
    /* What Python and most encoders write for features in [0, 1) and
     * pixel-sized values: positional, 1 to 27 fraction digits, some with
     * leading zeros (0.00392156862745098); the one-pass path takes them
     * (Clinger, or Eisel-Lemire beyond 2^53) and must agree with strtod. */
    check_random_arrays(17, 70, gen_f, 27, false);
}
END_TEST

START_TEST(a_body_cut_in_two_parses_as_the_whole)
{
    /* Rows with numeric arrays and strings that hold "]," and escaped
     * quotes (a cut must never land inside a string). */
    char *body = malloc(1 << 20);
    size_t n = (size_t)sprintf(body, "{\"samples\":[");
    for (int i = 0; i < 400; i++) {
        n += (size_t)sprintf(body + n, "%s{\"tag\":\"r%d ],[ \\\" ],\",\"x\":[", i ? "," : "", i);
        for (int j = 0; j < 30; j++) n += (size_t)sprintf(body + n, "%s%d.%d", j ? "," : "", i, j);
        n += (size_t)sprintf(body + n, "]}");
    }
    sprintf(body + n, "]}");
    check_split_equals_whole(body, true, 400);
    /* Nowhere to cut after the middle: a body that is one long string
     * there. */
    n = (size_t)sprintf(body, "{\"samples\":[{\"tag\":\"a\",\"x\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19]}],\"pad\":\"");
    for (int i = 0; i < 2000; i++) body[n++] = i % 7 ? 'a' : ']', body[n++] = ',';
    sprintf(body + n, "\"}");
    check_split_equals_whole(body, false, 1);
    /* The column form cuts between two rows of x: the tail starts with an
     * array, which is a row like the others, not a body that is itself an
     * array (that one is left to jansson), so it is rewritten too. */
    n = (size_t)sprintf(body, "{\"x\":[");
    for (int i = 0; i < 400; i++) {
        n += (size_t)sprintf(body + n, "%s[", i ? "," : "");
        for (int j = 0; j < 30; j++) n += (size_t)sprintf(body + n, "%s%d.%d", j ? "," : "", i, j);
        n += (size_t)sprintf(body + n, "]");
    }
    sprintf(body + n, "]}");
    ck_assert(body[numarray_cut(body, strlen(body))] == '['); /* the tail starts with a row */
    check_split_equals_whole(body, true, 400);
    free(body);
}
END_TEST

START_TEST(unusual_arrays_are_left_to_jansson)
{
    const char *bodies[] = {
        "{\"x\":[1,2,3]}",                                            /* short: stays an array */
        "{\"x\":[NaN,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18]}", /* invalid: jansson's error */
        "{\"x\":[1e999,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18]}",
        "{\"x\":[01,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19]}",
        "{\"x\":[1.,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19]}",
        "{\"s\":\"[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]\"}", /* inside a string */
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        char b[256];
        snprintf(b, sizeof(b), "%s", bodies[i]);
        size_t l = strlen(b);
        struct num_pool pool;
        num_pool_init(&pool);
        ck_assert_int_eq(numarray_extract(b, &l, &pool), 0);
        ck_assert_uint_eq(pool.n_arr, 0);
        ck_assert_uint_eq(l, strlen(bodies[i]));
        ck_assert_mem_eq(b, bodies[i], l);
        num_pool_done(&pool);
    }
}
END_TEST

START_TEST(placeholders_cannot_be_spoofed)
{
    char b[512] = "{\"x\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24]}";
    size_t l = strlen(b);
    struct num_pool pool;
    num_pool_init(&pool);
    ck_assert_int_eq(numarray_extract(b, &l, &pool), 0);
    ck_assert_uint_eq(pool.n_arr, 1);
    const double *v;
    size_t cnt;
    bool all_int;
    json_t *doc = json_loadb(b, l, 0, NULL);
    ck_assert(numarray_lookup(&pool, json_string_value(json_object_get(doc, "x")), &v, &cnt, &all_int));
    ck_assert(all_int);
    ck_assert_uint_eq(cnt, 24);
    json_decref(doc);
    /* A client's own "\u0001..." string with another nonce or index is not ours. */
    ck_assert(!numarray_lookup(&pool, "\x01" "0000000000000000" "0", &v, &cnt, &all_int));
    char forged[64];
    snprintf(forged, sizeof(forged), "\x01%s7", pool.nonce);
    ck_assert(!numarray_lookup(&pool, forged, &v, &cnt, &all_int));
    ck_assert(!numarray_lookup(&pool, "plain", &v, &cnt, &all_int));
    num_pool_done(&pool);
}
END_TEST

/* ---- Random bodies: extraction never changes what a body means ---- */

struct gen {
    char *b;
    size_t n, cap;
    unsigned seed;
};

static unsigned pick(struct gen *g, unsigned n) { return (unsigned)rand_r(&g->seed) % n; }

static void put(struct gen *g, const char *s)
{
    size_t k = strlen(s);
    if (g->n + k + 1 > g->cap) {
        g->cap = 2 * (g->n + k + 1);
        g->b = realloc(g->b, g->cap);
        ck_assert_ptr_nonnull(g->b);
    }
    memcpy(g->b + g->n, s, k + 1);
    g->n += k;
}

/* Mostly no whitespace, as encoders write; sometimes any of JSON's four. */
static void gen_ws(struct gen *g)
{
    static const char *ws[] = {" ", "\n", "\t", "\r\n  ", "\n\n"};
    if (pick(g, 6) == 0) put(g, ws[pick(g, 5)]);
}

static void gen_number(struct gen *g)
{
    static const char *odd[] = {"01", "1.", ".5", "-", "1e", "+1", "NaN", "Infinity", "1e999", "-1e999", "1e-999",
                                "-0", "-0.0", "9223372036854775807", "9223372036854775808", "-9223372036854775809",
                                "123456789012345678901234567890", "4.9e-324", "0x10", "1E+2", "00"};
    char t[64];
    unsigned k = pick(g, 60); /* an odd one in 60, or an array of 40 would rarely be valid */
    if (k == 0) {
        put(g, odd[pick(g, sizeof(odd) / sizeof(odd[0]))]);
        return;
    }
    switch (k % 4) {
    case 0: snprintf(t, sizeof(t), "%d", (int)pick(g, 1000) - 500); break;
    case 1: snprintf(t, sizeof(t), "%.*f", 1 + (int)pick(g, 18), pick(g, 1000) / 999.0); break;
    case 2: snprintf(t, sizeof(t), "%.*g", 1 + (int)pick(g, 17), (pick(g, 2000) - 1000.0) * pow(10, (int)pick(g, 40) - 20)); break;
    default: snprintf(t, sizeof(t), "%.9g", pick(g, 256) / 255.0f); break; /* pixels */
    }
    put(g, t);
}

static void gen_string(struct gen *g)
{
    static const char *parts[] = {"a", "[1,2]", "],", "\\\"", "\\\\", "\\u0001", "\\n", "\xc3\xa9", "0", " ", "{"};
    put(g, "\"");
    for (int k = (int)pick(g, 5); k > 0; k--) put(g, parts[pick(g, sizeof(parts) / sizeof(parts[0]))]);
    put(g, "\"");
}

static void gen_value(struct gen *g, int depth)
{
    static const char *keys[] = {"\"x\"", "\"y\"", "\"samples\"", "\"id\"", "\"x\""}; /* "x" twice: duplicates */
    unsigned kind = depth >= 4 ? 6 + pick(g, 4) : pick(g, 10);
    if (kind <= 3) { /* a numeric array, often long enough to be extracted */
        put(g, "[");
        gen_ws(g);
        for (int i = 0, n = 1 + (int)pick(g, 40); i < n; i++) {
            if (i) put(g, ","), gen_ws(g);
            gen_number(g);
            gen_ws(g);
        }
        put(g, "]");
    } else if (kind == 4) { /* an array of anything */
        put(g, "[");
        for (int i = 0, n = (int)pick(g, 4); i < n; i++) {
            if (i) put(g, ",");
            gen_value(g, depth + 1);
        }
        put(g, "]");
    } else if (kind == 5) {
        put(g, "{");
        for (int i = 0, n = (int)pick(g, 4); i < n; i++) {
            if (i) put(g, ",");
            gen_ws(g);
            put(g, keys[pick(g, sizeof(keys) / sizeof(keys[0]))]);
            put(g, ":");
            gen_value(g, depth + 1);
        }
        put(g, "}");
    } else if (kind == 6) {
        gen_string(g);
    } else if (kind == 7) {
        gen_number(g);
    } else {
        static const char *lit[] = {"true", "false", "null"};
        put(g, lit[pick(g, 3)]);
    }
}

/* A few bytes replaced, inserted or deleted, from JSON's own alphabet. */
static void mutate(struct gen *g)
{
    static const char alphabet[] = "[]{},:\"\\ \n-+.eE0123456789aN\x01";
    for (int k = 1 + (int)pick(g, 3); k > 0 && g->n > 0; k--) {
        size_t at = pick(g, (unsigned)g->n);
        char c = alphabet[pick(g, sizeof(alphabet) - 1)];
        switch (pick(g, 3)) {
        case 0: g->b[at] = c; break;
        case 1:
            put(g, " "); /* room */
            memmove(g->b + at + 1, g->b + at, g->n - 1 - at);
            g->b[at] = c;
            break;
        default:
            memmove(g->b + at, g->b + at + 1, g->n - at);
            g->n--;
            break;
        }
    }
}

/* text[0..n) whole and split means to jansson what the rewrite makes of it. */
static void check_same_meaning(const char *text, size_t n)
{
    char msg[256];
    for (int split = 0; split < 2; split++) {
        const char *why = body_meaning_differs(text, n, split, NULL, msg, sizeof(msg));
        ck_assert_msg(!why, "%s (%s): %.*s", why, split ? "in two parts" : "whole", (int)n, text);
    }
}

START_TEST(rewriting_never_changes_what_a_body_means)
{
    /* Random bodies, half of them damaged a little: strings holding "],"
     * and escapes, numbers of every form jansson takes or refuses,
     * whitespace and line breaks inside arrays, duplicate keys.  Each is
     * checked rewritten whole and in two parts. */
    struct gen g = {.seed = 20261126};
    int refused = 0, extracted = 0;
    for (int i = 0; i < 6000; i++) {
        g.n = 0;
        put(&g, pick(&g, 8) ? "{\"samples\":" : "");
        gen_value(&g, 0);
        if (g.b[0] == '{') put(&g, "}");
        if (pick(&g, 2)) mutate(&g);
        json_t *j = json_loadb(g.b, g.n, JSON_REJECT_DUPLICATES, NULL);
        refused += !j;
        json_decref(j);
        struct num_pool pool;
        num_pool_init(&pool);
        char *c = strndup(g.b, g.n);
        size_t l = g.n;
        ck_assert_int_eq(numarray_extract(c, &l, &pool), 0);
        extracted += pool.n_arr > 0;
        num_pool_done(&pool);
        free(c);
        check_same_meaning(g.b, g.n);
    }
    /* The generator reaches both sides of every check. */
    ck_assert_int_gt(refused, 1000);
    ck_assert_int_gt(6000 - refused, 1000);
    ck_assert_int_gt(extracted, 1000);
    free(g.b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("numarray");
    TCase *tc = tcase_create("numarray");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, numbers_parse_exactly_as_jansson);
    tcase_add_test(tc, the_one_pass_path_agrees_with_the_general_one);
    tcase_add_test(tc, positional_decimals_of_every_length_parse_as_strtod);
    tcase_add_test(tc, a_body_cut_in_two_parses_as_the_whole);
    tcase_add_test(tc, unusual_arrays_are_left_to_jansson);
    tcase_add_test(tc, placeholders_cannot_be_spoofed);
    tcase_add_test(tc, rewriting_never_changes_what_a_body_means);
    suite_add_tcase(s, tc);
    return check_run(s);
}
