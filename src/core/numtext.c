/* numtext.c: see tame_fmt_float in core.h. */
#include "tame/core.h"

#include <math.h>
#include <stdint.h>

/* Nine significant digits round-trip any float.  The scaling is done in
 * double, off by far less than one unit of the ninth digit (itself under
 * half a float ulp), so the text parses back to the same float; printf's
 * exact big-number rounding is 15 times slower and buys nothing here. */
int tame_fmt_float(char *out, float f)
{
    char *p = out;
    double d = f;
    if (signbit(d)) *p++ = '-', d = -d;
    if (d == 0) {
        *p++ = '0';
        return (int)(p - out);
    }
    int e = (int)floor(log10(d));
    uint64_t m = (uint64_t)llround(d * pow(10.0, 8 - e));
    if (m >= 1000000000ULL) m = (m + 5) / 10, e++;                          /* log10 rounded up */
    else if (m < 100000000ULL) m = (uint64_t)llround(d * pow(10.0, 9 - e)), e--; /* or down */
    char dig[9];
    for (int i = 8; i >= 0; i--) dig[i] = (char)('0' + m % 10), m /= 10;
    int n = 9;
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
