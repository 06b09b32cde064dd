/* numarray_bench.c: how long numarray_extract takes on one 128 x 784
 * samples body of Fashion-MNIST images, written as tame-eval writes floats
 * (shortest text) and as Python writes doubles (%.17g): best of 200 runs.
 * With --check N: N random decimals (1-19 digits, exponents -27..27, as
 * exponent, positional and integer text) against strtod, bit for bit.
 * Usage: build/bench-numarray [IDX_IMAGES_GZ] | --check N */
#include "numarray.h"
#include "tame/core.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define ROWS 128
#define DIM 784

static size_t make_body(char *out, const unsigned char *img, bool doubles)
{
    char *p = out;
    p += sprintf(p, "{\"x\":[");
    for (int i = 0; i < ROWS; i++) {
        p += sprintf(p, "%s[", i ? "," : "");
        for (int j = 0; j < DIM; j++) {
            if (j) *p++ = ',';
            unsigned v = img[i * DIM + j];
            if (doubles) p += v ? sprintf(p, "%.17g", v / 255.0) : sprintf(p, "0");
            else p += tame_fmt_float_shortest(p, (float)v / 255.0f);
        }
        *p++ = ']';
    }
    p += sprintf(p, "],\"y\":[");
    for (int i = 0; i < ROWS; i++) p += sprintf(p, "%s%d", i ? "," : "", i % 10);
    p += sprintf(p, "]}");
    return (size_t)(p - out);
}

static uint64_t xorshift(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* One random decimal as JSON text. */
static void random_decimal(uint64_t *rs, char *num, size_t cap)
{
    char m[24];
    int digits = 1 + (int)(xorshift(rs) % 19);
    m[0] = (char)('1' + xorshift(rs) % 9);
    for (int k = 1; k < digits; k++) m[k] = (char)('0' + xorshift(rs) % 10);
    m[digits] = 0;
    const char *sign = xorshift(rs) % 2 ? "-" : "";
    switch (xorshift(rs) % 3) {
    case 0: /* m e q */
        snprintf(num, cap, "%s%se%d", sign, m, (int)(xorshift(rs) % 55) - 27);
        break;
    case 1: { /* m / 10^f, positional */
        int f = 1 + (int)(xorshift(rs) % 27);
        if (f < digits) snprintf(num, cap, "%s%.*s.%s", sign, digits - f, m, m + digits - f);
        else snprintf(num, cap, "%s0.%0*d%s", sign, f - digits, 0, m);
        break;
    }
    default:
        snprintf(num, cap, "%s%s", sign, m);
    }
}

static int check(long n)
{
    uint64_t rs = 88172645463325252ULL;
    char *b = malloc(1 << 16);
    double want[500];
    long bad = 0, total = 0;
    while (total < n) {
        char *p = b;
        *p++ = '[';
        for (int i = 0; i < 500; i++) {
            char num[64];
            random_decimal(&rs, num, sizeof(num));
            want[i] = strtod(num, NULL);
            p += sprintf(p, "%s%s", i ? "," : "", num);
        }
        *p++ = ']';
        *p = 0;
        size_t len = (size_t)(p - b);
        struct num_pool pool;
        num_pool_init(&pool);
        if (numarray_extract(b, &len, &pool) < 0 || pool.n != 500) return 1;
        for (int i = 0; i < 500; i++, total++)
            if (memcmp(&pool.v[i], &want[i], sizeof(double)) && bad++ < 10)
                printf("differs: %.17g, strtod %.17g\n", pool.v[i], want[i]);
        num_pool_done(&pool);
    }
    printf("%ld of %ld random decimals differ from strtod\n", bad, total);
    free(b);
    return bad != 0;
}

int main(int argc, char **argv)
{
    if (argc > 2 && !strcmp(argv[1], "--check")) return check(atol(argv[2]));
    const char *path = argc > 1 ? argv[1] : "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz";
    gzFile g = gzopen(path, "rb");
    static unsigned char img[16 + ROWS * DIM];
    if (!g || gzread(g, img, sizeof(img)) != (int)sizeof(img)) {
        fprintf(stderr, "bench-numarray: cannot read %s\n", path);
        return 1;
    }
    gzclose(g);
    char *body = malloc(8 << 20), *work = malloc(8 << 20);
    if (!body || !work) return 1;
    for (int doubles = 0; doubles < 2; doubles++) {
        size_t len0 = make_body(body, img + 16, doubles);
        double best = 1e9;
        for (int r = 0; r < 200; r++) {
            memcpy(work, body, len0 + 1);
            size_t len = len0;
            struct num_pool pool;
            num_pool_init(&pool);
            double t0 = tame_now_s();
            if (numarray_extract(work, &len, &pool) < 0) return 1;
            double t = tame_now_s() - t0;
            best = t < best ? t : best;
            num_pool_done(&pool);
        }
        printf("%-28s %8zu bytes  %.3f ms  %.2f ns a number\n",
               doubles ? "doubles (%.17g, Python)" : "floats (shortest, tame-eval)", len0, best * 1e3,
               best * 1e9 / (ROWS * DIM));
    }
    free(body);
    free(work);
    return 0;
}
