/* logcodec.c: see logcodec.h. */
#include "logcodec.h"

#include <stdint.h>
#include <string.h>

#define PALETTE_MAX 256
#define SLOTS 1024 /* open addressing, load <= 1/4 */

enum { RAW = 0, PALETTE = 1 };

static void encode_raw(const float *x, size_t n, struct tame_wbuf *w)
{
    tame_wbuf_u8(w, RAW);
    tame_wbuf_f32s(w, x, n);
}

void log_x_encode(const float *x, size_t n, struct tame_wbuf *w)
{
    if (n == 0) { /* no values: the raw form, since a palette holds 1..256 */
        encode_raw(x, n, w);
        return;
    }
    /* Palette slots hold bit pattern + 1 (0 = empty), so -0.0 and 0.0 stay
     * distinct and every pattern round-trips. */
    uint64_t slot_key[SLOTS] = {0};
    uint8_t slot_idx[SLOTS];
    uint32_t palette[PALETTE_MAX];
    int k = 0;
    size_t start = w->len;
    tame_wbuf_u8(w, PALETTE);
    uint8_t *hdr = tame_wbuf_room(w, 2 + PALETTE_MAX * 4); /* filled at the end */
    if (!hdr) return;
    size_t hdr_at = w->len;
    w->len += 2 + PALETTE_MAX * 4;
    uint8_t *idx = tame_wbuf_room(w, n);
    if (!idx) return;
    hdr = w->data + hdr_at; /* tame_wbuf_room may have moved the buffer */
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, &x[i], sizeof(bits));
        uint64_t key = (uint64_t)bits + 1;
        uint32_t h = (bits * 2654435761u) >> 22; /* 10 bits */
        while (slot_key[h] && slot_key[h] != key) h = (h + 1) & (SLOTS - 1);
        if (!slot_key[h]) {
            if (k == PALETTE_MAX) { /* too many distinct values: plain floats */
                w->len = start;
                encode_raw(x, n, w);
                return;
            }
            slot_key[h] = key;
            slot_idx[h] = (uint8_t)k;
            palette[k++] = bits;
        }
        idx[i] = slot_idx[h];
    }
    w->len += n;
    /* The header was sized for a full palette: write k entries, then move
     * the indices up behind them. */
    hdr[0] = (uint8_t)k, hdr[1] = (uint8_t)(k >> 8);
    for (int j = 0; j < k; j++)
        for (int b = 0; b < 4; b++) hdr[2 + 4 * j + b] = (uint8_t)(palette[j] >> (8 * b));
    size_t unused = (size_t)(PALETTE_MAX - k) * 4;
    memmove(hdr + 2 + (size_t)k * 4, hdr + 2 + PALETTE_MAX * 4, n);
    w->len -= unused;
}

int log_x_decode(const void *b, size_t len, size_t n, float *out)
{
    const uint8_t *p = b;
    if (len < 1) return TAME_E_CORRUPT;
    if (p[0] == RAW) {
        if (len != 1 + n * 4) return TAME_E_CORRUPT;
        struct tame_rbuf r;
        tame_rbuf_init(&r, p + 1, len - 1);
        tame_rbuf_f32s(&r, out, n); /* refuses non-finite values */
        return r.err ? TAME_E_CORRUPT : 0;
    }
    if (p[0] != PALETTE || len < 3) return TAME_E_CORRUPT;
    size_t k = (size_t)p[1] | (size_t)p[2] << 8;
    if (k < 1 || k > PALETTE_MAX || len != 3 + k * 4 + n) return TAME_E_CORRUPT;
    float palette[PALETTE_MAX];
    for (size_t j = 0; j < k; j++) {
        uint32_t bits = (uint32_t)p[3 + 4 * j] | (uint32_t)p[4 + 4 * j] << 8 | (uint32_t)p[5 + 4 * j] << 16 |
                        (uint32_t)p[6 + 4 * j] << 24;
        memcpy(&palette[j], &bits, sizeof(bits));
        if (!tame_all_finite(&palette[j], 1)) return TAME_E_CORRUPT;
    }
    const uint8_t *idx = p + 3 + k * 4;
    for (size_t i = 0; i < n; i++) {
        if (idx[i] >= k) return TAME_E_CORRUPT;
        out[i] = palette[idx[i]];
    }
    return 0;
}
