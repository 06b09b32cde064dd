/* idx.c: reading IDX files (the MNIST layout: big-endian magic, dimensions,
 * then unsigned bytes), gzipped or not: zlib's gzread reads both. */
#include "dataset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static gzFile open_either(const char *dir, const char *name, char *path, size_t pathlen)
{
    snprintf(path, pathlen, "%s/%s.gz", dir, name);
    gzFile f = gzopen(path, "rb");
    if (f) return f;
    snprintf(path, pathlen, "%s/%s", dir, name);
    return gzopen(path, "rb");
}

static int read_be32(gzFile f, uint32_t *v)
{
    uint8_t b[4];
    if (gzread(f, b, 4) != 4) return -1;
    *v = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    return 0;
}

int idx_load(const char *dir, const char *prefix, struct idx_set *set, char *err, size_t errlen)
{
    char name[256], path[4096];
    memset(set, 0, sizeof(*set));
    uint8_t *pix = NULL;
    gzFile fi = NULL, fl = NULL;

    snprintf(name, sizeof(name), "%s-images-idx3-ubyte", prefix);
    fi = open_either(dir, name, path, sizeof(path));
    if (!fi) {
        snprintf(err, errlen, "cannot open %s/%s[.gz]", dir, name);
        goto fail;
    }
    uint32_t magic, n, rows, cols;
    if (read_be32(fi, &magic) || magic != 0x803 || read_be32(fi, &n) || read_be32(fi, &rows) ||
        read_be32(fi, &cols) || n == 0 || n > 10000000 || rows == 0 || cols == 0 ||
        rows > 4096 || cols > 4096) {
        snprintf(err, errlen, "%s: not an IDX image file (magic 0x803, u8 pixels)", path);
        goto fail;
    }
    snprintf(name, sizeof(name), "%s-labels-idx1-ubyte", prefix);
    fl = open_either(dir, name, path, sizeof(path));
    uint32_t lmagic, ln;
    if (!fl || read_be32(fl, &lmagic) || lmagic != 0x801 || read_be32(fl, &ln) || ln != n) {
        snprintf(err, errlen, "%s: missing, not an IDX label file, or count differs from images", path);
        goto fail;
    }
    set->n = (int)n;
    set->rows = (int)rows;
    set->cols = (int)cols;
    set->dim = (int)(rows * cols);
    size_t total = (size_t)n * set->dim;
    pix = malloc(total);
    set->x = malloc(total * sizeof(float));
    set->y = malloc((size_t)n * sizeof(int));
    uint8_t *lab = malloc(n);
    if (!pix || !set->x || !set->y || !lab) {
        free(lab);
        snprintf(err, errlen, "out of memory for %u samples", n);
        goto fail;
    }
    size_t got = 0;
    while (got < total) {
        unsigned chunk = total - got > (1u << 30) ? (1u << 30) : (unsigned)(total - got);
        int r = gzread(fi, pix + got, chunk);
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (got != total || gzread(fl, lab, n) != (int)n) {
        free(lab);
        snprintf(err, errlen, "%s: truncated", dir);
        goto fail;
    }
    for (size_t i = 0; i < total; i++) set->x[i] = pix[i] * (1.0f / 255.0f);
    for (uint32_t i = 0; i < n; i++) set->y[i] = lab[i];
    free(lab);
    free(pix);
    gzclose(fi);
    gzclose(fl);
    return 0;
fail:
    free(pix);
    if (fi) gzclose(fi);
    if (fl) gzclose(fl);
    idx_free(set);
    return TAME_E_IO;
}

void idx_free(struct idx_set *set)
{
    free(set->x);
    free(set->y);
    memset(set, 0, sizeof(*set));
}
