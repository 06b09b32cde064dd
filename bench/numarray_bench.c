/* numarray_bench.c: how long numarray_extract takes on one 128 x 784
 * samples body of Fashion-MNIST images, written as tame-eval writes floats
 * (shortest text) and as Python writes doubles (%.17g): best of 200 runs.
 * Usage: build/bench-numarray [IDX_IMAGES_GZ] */
#include "numarray.h"
#include "tame/core.h"

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

int main(int argc, char **argv)
{
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
