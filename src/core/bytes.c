/* bytes.c: little-endian writers and bounds-checked readers for the blobs
 * tamed stores (networks, learner state).  CRC-32 comes from zlib. */
#include "tame/core.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

void tame_wbuf_init(struct tame_wbuf *w) { *w = (struct tame_wbuf){0}; }

void tame_wbuf_done(struct tame_wbuf *w)
{
    tame_free(w->data);
    *w = (struct tame_wbuf){0};
}

static uint8_t *wbuf_reserve(struct tame_wbuf *w, size_t n)
{
    if (w->err) return NULL;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n) cap *= 2;
        uint8_t *p = tame_realloc(w->data, cap);
        if (!p) {
            w->err = TAME_E_NOMEM;
            return NULL;
        }
        w->data = p;
        w->cap = cap;
    }
    uint8_t *p = w->data + w->len;
    w->len += n;
    return p;
}

uint8_t *tame_wbuf_room(struct tame_wbuf *w, size_t n)
{
    uint8_t *p = wbuf_reserve(w, n);
    if (p) w->len -= n;
    return p;
}

void tame_wbuf_printf(struct tame_wbuf *w, const char *fmt, ...)
{
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    uint8_t *d = n < 0 ? NULL : tame_wbuf_room(w, (size_t)n + 1);
    if (d) {
        vsnprintf((char *)d, (size_t)n + 1, fmt, again);
        w->len += (size_t)n;
    } else if (n < 0 && !w->err) {
        w->err = TAME_E_INVAL;
    }
    va_end(again);
}

void tame_wbuf_bytes(struct tame_wbuf *w, const void *p, size_t n)
{
    uint8_t *d = wbuf_reserve(w, n);
    if (d && n) memcpy(d, p, n);
}

void tame_wbuf_u8(struct tame_wbuf *w, uint8_t v) { tame_wbuf_bytes(w, &v, 1); }

void tame_wbuf_u32(struct tame_wbuf *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    tame_wbuf_bytes(w, b, 4);
}

void tame_wbuf_u64(struct tame_wbuf *w, uint64_t v)
{
    tame_wbuf_u32(w, (uint32_t)v);
    tame_wbuf_u32(w, (uint32_t)(v >> 32));
}

void tame_wbuf_i32(struct tame_wbuf *w, int32_t v) { tame_wbuf_u32(w, (uint32_t)v); }

void tame_wbuf_f32(struct tame_wbuf *w, float v)
{
    uint32_t u;
    memcpy(&u, &v, 4);
    tame_wbuf_u32(w, u);
}

void tame_wbuf_f64(struct tame_wbuf *w, double v)
{
    uint64_t u;
    memcpy(&u, &v, 8);
    tame_wbuf_u64(w, u);
}

void tame_wbuf_f32s(struct tame_wbuf *w, const float *v, size_t n)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    tame_wbuf_bytes(w, v, n * sizeof(float));
#else
    for (size_t i = 0; i < n; i++) tame_wbuf_f32(w, v[i]);
#endif
}

uint32_t tame_crc32(uint32_t crc, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
        crc = (uint32_t)crc32(crc, b, chunk);
        b += chunk;
        n -= chunk;
    }
    return crc;
}

void tame_wbuf_crc(struct tame_wbuf *w, size_t from)
{
    if (w->err) return;
    tame_wbuf_u32(w, tame_crc32(0, w->data + from, w->len - from));
}

void tame_rbuf_init(struct tame_rbuf *r, const void *data, size_t len)
{
    *r = (struct tame_rbuf){.data = data, .len = len};
}

static const uint8_t *rbuf_take(struct tame_rbuf *r, size_t n)
{
    if (r->err || n > r->len - r->pos) {
        r->err = TAME_E_CORRUPT;
        return NULL;
    }
    const uint8_t *p = r->data + r->pos;
    r->pos += n;
    return p;
}

void tame_rbuf_bytes(struct tame_rbuf *r, void *p, size_t n)
{
    const uint8_t *s = rbuf_take(r, n);
    if (s) memcpy(p, s, n);
    else memset(p, 0, n);
}

uint8_t tame_rbuf_u8(struct tame_rbuf *r)
{
    const uint8_t *s = rbuf_take(r, 1);
    return s ? s[0] : 0;
}

uint32_t tame_rbuf_u32(struct tame_rbuf *r)
{
    const uint8_t *s = rbuf_take(r, 4);
    if (!s) return 0;
    return (uint32_t)s[0] | (uint32_t)s[1] << 8 | (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24;
}

uint64_t tame_rbuf_u64(struct tame_rbuf *r)
{
    uint64_t lo = tame_rbuf_u32(r);
    uint64_t hi = tame_rbuf_u32(r);
    return lo | hi << 32;
}

int32_t tame_rbuf_i32(struct tame_rbuf *r) { return (int32_t)tame_rbuf_u32(r); }

float tame_rbuf_f32(struct tame_rbuf *r)
{
    uint32_t u = tame_rbuf_u32(r);
    float v;
    memcpy(&v, &u, 4);
    if (!isfinite(v)) {
        r->err = TAME_E_CORRUPT;
        return 0;
    }
    return v;
}

double tame_rbuf_f64(struct tame_rbuf *r)
{
    uint64_t u = tame_rbuf_u64(r);
    double v;
    memcpy(&v, &u, 8);
    if (!isfinite(v)) {
        r->err = TAME_E_CORRUPT;
        return 0;
    }
    return v;
}

void tame_rbuf_f32s(struct tame_rbuf *r, float *v, size_t n)
{
    if (n > SIZE_MAX / sizeof(float)) {
        r->err = TAME_E_CORRUPT;
        return;
    }
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    tame_rbuf_bytes(r, v, n * sizeof(float));
#else
    for (size_t i = 0; i < n; i++) v[i] = tame_rbuf_f32(r);
#endif
    if (!r->err && !tame_all_finite(v, n)) r->err = TAME_E_CORRUPT;
}

void tame_rbuf_crc(struct tame_rbuf *r, size_t from)
{
    if (r->err) return;
    uint32_t want = tame_crc32(0, r->data + from, r->pos - from);
    if (tame_rbuf_u32(r) != want) r->err = TAME_E_CORRUPT;
}

size_t tame_rbuf_left(const struct tame_rbuf *r) { return r->err ? 0 : r->len - r->pos; }

bool tame_all_finite(const float *v, size_t n)
{
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) bad |= tame_f32_nonfinite(v[i]);
    return !bad;
}

double tame_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
