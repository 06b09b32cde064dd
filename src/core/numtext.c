/* numtext.c: see tame_fmt_float in core.h. */
#include "tame/core.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int fmt_digits(char *out, float f, int digits);

/* Nine significant digits round-trip any float.  The scaling is done in
 * double, off by far less than one unit of the ninth digit (itself under
 * half a float ulp), so the text parses back to the same float; printf's
 * exact big-number rounding is 15 times slower and buys nothing here. */
int tame_fmt_float(char *out, float f) { return fmt_digits(out, f, 9); }

int tame_fmt_int(char *out, long long v)
{
    char tmp[20];
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    int n = 0;
    do tmp[n++] = (char)('0' + u % 10);
    while ((u /= 10) != 0);
    int len = 0;
    if (v < 0) out[len++] = '-';
    while (n > 0) out[len++] = tmp[--n];
    return len;
}

int tame_fmt_float_shortest(char *out, float f)
{
    /* The first precision whose text reads back as f; 9 always does. */
    for (int digits = 1; digits < 9; digits++) {
        char buf[TAME_FLOAT_TEXT_MAX + 1];
        int n = fmt_digits(buf, f, digits);
        buf[n] = 0;
        float back = strtof(buf, NULL);
        if (memcmp(&back, &f, sizeof(f)) == 0) { /* the same float, -0 apart from 0 */
            memcpy(out, buf, (size_t)n);
            return n;
        }
    }
    return fmt_digits(out, f, 9);
}

/* f with `digits` significant digits (1..9), trailing zeros dropped. */
static int fmt_digits(char *out, float f, int digits)
{
    static const double pow10_d[10] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};
    char *p = out;
    double d = f;
    if (signbit(d)) *p++ = '-', d = -d;
    if (d == 0) {
        *p++ = '0';
        return (int)(p - out);
    }
    int e = (int)floor(log10(d));
    const uint64_t top = (uint64_t)pow10_d[digits], low = (uint64_t)pow10_d[digits - 1];
    uint64_t m = (uint64_t)llround(d * pow(10.0, digits - 1 - e));
    if (m >= top) m = (m + 5) / 10, e++;                                         /* log10 rounded up */
    else if (m < low) m = (uint64_t)llround(d * pow(10.0, digits - e)), e--;     /* or down */
    if (m >= top) m /= 10, e++; /* 9.96 at 2 digits rounds to 10.0 */
    char dig[9];
    for (int i = digits - 1; i >= 0; i--) dig[i] = (char)('0' + m % 10), m /= 10;
    int n = digits;
    while (n > 1 && dig[n - 1] == '0') n--;
    if (e >= -5 && e < 9) { /* positional, as %g would: 0.00392156886, 12.5, 3 */
        if (e < 0) {
            *p++ = '0', *p++ = '.';
            for (int i = -1; i > e; i--) *p++ = '0';
            for (int i = 0; i < n; i++) *p++ = dig[i];
        } else {
            for (int i = 0; i <= e; i++) *p++ = i < n ? dig[i] : '0';
            if (n > e + 1) {
                *p++ = '.';
                for (int i = e + 1; i < n; i++) *p++ = dig[i];
            }
        }
        return (int)(p - out);
    }
    *p++ = dig[0]; /* d.ddddddddE[-]x */
    if (n > 1) {
        *p++ = '.';
        for (int i = 1; i < n; i++) *p++ = dig[i];
    }
    *p++ = 'e';
    if (e < 0) *p++ = '-', e = -e;
    if (e >= 10) *p++ = (char)('0' + e / 10);
    *p++ = (char)('0' + e % 10);
    return (int)(p - out);
}
