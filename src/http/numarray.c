/* numarray.c: see numarray.h. */
#include "numarray.h"

#include "tame/core.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define MIN_SPAN 48 /* placeholder text: "\u0001" + 16 + index + quotes */

/* Number arrays of finished requests (up to KEEP_MAX numbers each) are
 * kept for the next ones, since a 128 x 784 body would otherwise grow its
 * array by realloc and fault in fresh pages every time.  They are shared by
 * all threads: the second half of a cut body is parsed on one thread and
 * released on another.  KEEP_ARRAYS covers a request in each of the lane
 * and HTTP threads' hands. */
#define KEEP_MAX (1u << 20)
#define KEEP_ARRAYS 4
static struct {
    pthread_mutex_t mu;
    int n;
    double *v[KEEP_ARRAYS];
    size_t cap[KEEP_ARRAYS];
} kept = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Per thread, the nonce source: a secret key from getrandom and a counter,
 * so a request costs no system call.  Nonces never leave the process; a
 * client cannot learn the key, so it cannot write a placeholder of a later
 * request. */
static pthread_key_t state_key;
static pthread_once_t state_once = PTHREAD_ONCE_INIT;

struct thread_state {
    uint64_t key, counter;
};

static void state_free(void *st) { free(st); }

static void state_key_make(void) { pthread_key_create(&state_key, state_free); }

static struct thread_state *thread_state(void)
{
    pthread_once(&state_once, state_key_make);
    struct thread_state *t = pthread_getspecific(state_key);
    if (t) return t;
    t = calloc(1, sizeof(*t));
    if (!t) return NULL;
    if (getrandom(&t->key, sizeof(t->key), 0) != sizeof(t->key))
        t->key = (uint64_t)(uintptr_t)t ^ ((uint64_t)time(NULL) << 20) ^ 0x9e3779b97f4a7c15ULL;
    if (pthread_setspecific(state_key, t) != 0) {
        free(t);
        return NULL;
    }
    return t;
}

/* A bijective 64-bit mixer (splitmix64's finaliser). */
static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void num_pool_init(struct num_pool *p)
{
    memset(p, 0, sizeof(*p));
    struct thread_state *t = thread_state();
    pthread_mutex_lock(&kept.mu);
    if (kept.n > 0) {
        kept.n--;
        p->v = kept.v[kept.n], p->cap = kept.cap[kept.n];
    }
    pthread_mutex_unlock(&kept.mu);
    uint64_t r;
    if (t) {
        r = mix64(t->key + 0x9e3779b97f4a7c15ULL * ++t->counter);
    } else if (getrandom(&r, sizeof(r), 0) != sizeof(r)) {
        r = mix64((uint64_t)(uintptr_t)p ^ (uint64_t)time(NULL));
    }
    for (int k = 0; k < 16; k++) p->nonce[k] = "0123456789abcdef"[(r >> (60 - 4 * k)) & 15];
    p->nonce[16] = 0;
}

void num_pool_done(struct num_pool *p)
{
    if (p->v && p->cap <= KEEP_MAX) {
        pthread_mutex_lock(&kept.mu);
        if (kept.n < KEEP_ARRAYS) {
            kept.v[kept.n] = p->v, kept.cap[kept.n] = p->cap;
            kept.n++;
            p->v = NULL;
        }
        pthread_mutex_unlock(&kept.mu);
    }
    if (p->next) {
        num_pool_done(p->next);
        free(p->next);
    }
    free(p->v);
    free(p->arr);
    memset(p, 0, sizeof(*p));
}

static const double pow10_exact[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

static inline bool is_digit(char c) { return (unsigned char)(c - '0') < 10; }

/* ---- w * 10^q, exactly rounded, for a 64-bit w and |q| <= 27 ----
 *
 * The Eisel-Lemire method (D. Lemire, "Number Parsing at a Gigabyte per
 * Second", 2021): multiply the normalised w by a 128-bit approximation of
 * 5^q, take the top 54 bits and round; for |q| <= 27 the approximation is
 * close enough that the result is the correctly rounded double, except for
 * inputs that might sit exactly between two doubles, which are detected
 * and left to strtod.  The table is computed once, exactly, with integer
 * arithmetic: 5^q itself for q >= 0 (it fits 64 bits), and
 * floor(2^(127 + z) / 5^-q) + 1 with 2^(z-1) < 5^-q <= 2^z for q < 0. */
#define Q_MAX 27
__extension__ typedef unsigned __int128 u128; /* GCC and Clang on 64-bit targets */
static uint64_t pow5_hi[2 * Q_MAX + 1], pow5_lo[2 * Q_MAX + 1]; /* index q + Q_MAX */

/* Built before main (and before any thread), so lookups need no lock. */
__attribute__((constructor)) static void pow5_build(void)
{
    uint64_t p5 = 1;
    for (int m = 0; m <= Q_MAX; m++, p5 *= 5) {
        int msb = 63 - __builtin_clzll(p5);
        pow5_hi[Q_MAX + m] = p5 << (63 - msb); /* exact: normalised 5^m */
        pow5_lo[Q_MAX + m] = 0;
        if (m == 0) continue;
        /* 2^(127 + z) / 5^m by long division of three 64-bit limbs. */
        int z = msb + 1, b = 127 + z; /* 128 <= b < 192 */
        uint64_t limbs[3] = {(uint64_t)1 << (b - 128), 0, 0}, quot[3];
        u128 rem = 0;
        for (int i = 0; i < 3; i++) {
            u128 cur = (rem << 64) | limbs[i];
            quot[i] = (uint64_t)(cur / p5);
            rem = cur % p5;
        }
        /* quot[0] == 0: the quotient lies in [2^127, 2^128) */
        u128 c = ((u128)quot[1] << 64 | quot[2]) + 1;
        pow5_hi[Q_MAX - m] = (uint64_t)(c >> 64);
        pow5_lo[Q_MAX - m] = (uint64_t)c;
    }
}

/* w * 10^q as a double into *out: true, or false for strtod to decide. */
static bool eisel_lemire(uint64_t w, int q, double *out)
{
    if (w == 0) {
        *out = 0;
        return true;
    }
    if (q < -Q_MAX || q > Q_MAX) return false;
    int lz = __builtin_clzll(w);
    w <<= lz;
    u128 first = (u128)w * pow5_hi[q + Q_MAX];
    uint64_t hi = (uint64_t)(first >> 64), lo = (uint64_t)first;
    if ((hi & 0x1FF) == 0x1FF) { /* the low half of 5^q may carry into the bits that decide */
        uint64_t carry = (uint64_t)(((u128)w * pow5_lo[q + Q_MAX]) >> 64);
        lo += carry;
        hi += lo < carry;
    }
    int upper = (int)(hi >> 63);
    uint64_t mant = hi >> (upper + 9); /* 54 bits: 53 and a rounding bit */
    /* the binary exponent: floor(log2(10^q)) + 63, biased, for the top bit of hi */
    int power2 = (int)(((152170 + 65536) * q) >> 16) + 63 + upper - lz + 1023;
    /* Exactly halfway between two doubles (possible only for -4 <= q <= 23):
     * round to even, which for an odd halfway mantissa means down. */
    if (lo <= 1 && q >= -4 && q <= 23 && (mant & 3) == 1 && (mant << (upper + 9)) == hi) mant &= ~(uint64_t)1;
    mant += mant & 1;
    mant >>= 1;
    if (mant >= (uint64_t)2 << 52) { /* rounding carried into a new bit */
        mant = (uint64_t)1 << 52;
        power2++;
    }
    if (power2 <= 0 || power2 >= 2047) return false; /* subnormal or infinite: not for |q| <= 27 */
    uint64_t bits = (mant & ~((uint64_t)1 << 52)) | (uint64_t)power2 << 52;
    memcpy(out, &bits, sizeof(bits));
    return true;
}

/* mant * 10^e exactly rounded, by the one rule both parsers follow (so a
 * number's double never depends on which of them read it): Clinger's exact
 * fast path for a mantissa up to 2^53 and |e| <= 22, else Eisel-Lemire;
 * false leaves it to strtod. */
static inline bool decimal_to_double(uint64_t mant, int e, double *out)
{
    if (mant <= (1ULL << 53) && e >= -22 && e <= 22) {
        double v = (double)mant;
        *out = e >= 0 ? v * pow10_exact[e] : v / pow10_exact[-e];
        return true;
    }
    return eisel_lemire(mant, e, out);
}

/* If the 8 bytes at p are all ASCII digits, their value (0..99999999).
 * Each byte b is a digit when (b & 0xF0) == 0x30 and ((b + 6) & 0xF0) ==
 * 0x30; no byte carries into the next.  Then pairs, quads and the octet
 * are combined lane by lane (little-endian: the first digit is the lowest
 * byte). */
static inline bool eight_digits(const char *p, uint32_t *ret)
{
    uint64_t v;
    memcpy(&v, p, 8);
    const uint64_t hi = 0xF0F0F0F0F0F0F0F0ULL, zeros = 0x3030303030303030ULL;
    if ((v & hi) != zeros || ((v + 0x0606060606060606ULL) & hi) != zeros) return false;
    uint64_t d = v - zeros;
    d = (d * 10 + (d >> 8)) & 0x00FF00FF00FF00FFULL;
    d = (d * 100 + (d >> 16)) & 0x0000FFFF0000FFFFULL;
    d = (d * 10000 + (d >> 32)) & 0xFFFFFFFFULL;
    *ret = (uint32_t)d;
    return true;
}

/* The leading run of ASCII digits in the 8 bytes at p: how many (0..8),
 * with their value in *ret.  A byte is a digit when (b & 0xF0) == 0x30 and
 * ((b + 6) & 0xF0) == 0x30; a carry out of a byte >= 0xFA can only reach
 * bytes after the first non-digit, which are not looked at.  The digits,
 * shifted up so that the bytes below them read as leading zeros, combine
 * lane by lane as in eight_digits. */
static inline int digit_run(const char *p, uint32_t *ret)
{
    uint64_t v;
    memcpy(&v, p, 8);
    const uint64_t hi = 0xF0F0F0F0F0F0F0F0ULL, zeros = 0x3030303030303030ULL;
    uint64_t bad = ((v & hi) ^ zeros) | (((v + 0x0606060606060606ULL) & hi) ^ zeros);
    int n = bad ? __builtin_ctzll(bad) / 8 : 8;
    if (n == 0) {
        *ret = 0;
        return 0;
    }
    uint64_t d = (v - zeros) << (8 * (8 - n));
    d = (d * 10 + (d >> 8)) & 0x00FF00FF00FF00FFULL;
    d = (d * 100 + (d >> 16)) & 0x0000FFFF0000FFFFULL;
    d = (d * 10000 + (d >> 32)) & 0xFFFFFFFFULL;
    *ret = (uint32_t)d;
    return n;
}

static const uint64_t pow10_u64[9] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000};

/* The common case in one pass without byte loops: [-](0|[1-9]d{0,7})[.d{1,27}]
 * without an exponent, whose digits fit a 64-bit mantissa (leading fraction
 * zeros are free).  Converted exactly as parse_number would: Clinger's fast
 * path up to 2^53 and 10^22 (0.529411793, Python's 0.00392156862745098),
 * else Eisel-Lemire (0.52941176470588236).  NULL for anything else, which
 * parse_number then reads from the start, so the result never depends on
 * which path took it.  Needs FAST_SLACK readable bytes at s. */
#define FAST_SLACK 48
static inline const char *parse_number_fast(const char *s, double *out, bool *is_int)
{
    const char *p = s;
    bool neg = *p == '-';
    p += neg;
    uint64_t mant;
    uint32_t v;
    if (*p == '0') {
        mant = 0;
        p++;
    } else {
        int n = digit_run(p, &v);
        if (n == 0 || n == 8 || *p == '0') return NULL;
        mant = v;
        p += n;
    }
    int frac = 0;
    if (*p == '.') {
        p++;
        /* Runs of up to 8 digits, a full run followed by more; a mantissa
         * past 2^64 (more than 19 significant digits) is parse_number's. */
        for (int run = 0, n = 8; n == 8; run++) {
            n = digit_run(p, &v);
            if ((run == 0 && n == 0) || frac + n > 27 || __builtin_mul_overflow(mant, pow10_u64[n], &mant) ||
                __builtin_add_overflow(mant, (uint64_t)v, &mant))
                return NULL;
            frac += n;
            p += n;
        }
    }
    /* 20 digits fit 64 bits, but parse_number keeps 19 and calls strtod */
    if (*p == 'e' || *p == 'E' || mant >= 10000000000000000000ULL) return NULL;
    double d;
    if (!decimal_to_double(mant, -frac, &d)) return NULL;
    *is_int = frac == 0;
    *out = neg && (mant || frac) ? -d : d; /* "-0" is jansson's integer 0 */
    return p;
}

/* Append the digits at *pp to mant (up to 19 significant digits; beyond,
 * *inexact), eight at a time where the buffer allows. */
static inline void read_digits(const char **pp, const char *end, uint64_t *mant, int *sig, bool *inexact)
{
    const char *p = *pp;
    uint32_t oct;
    while (*sig + 8 <= 19 && end - p >= 8 && eight_digits(p, &oct)) {
        *mant = *mant * 100000000ULL + oct;
        *sig += 8;
        p += 8;
    }
    while (is_digit(*p)) {
        if (*sig < 19) *mant = *mant * 10 + (uint64_t)(*p - '0'), (*sig)++;
        else *inexact = true;
        p++;
    }
    *pp = p;
}

/* Parse one JSON number at s (strict grammar).  Returns the end, or NULL if
 * it is not a valid, finite JSON number.  The buffer must end in a NUL
 * (a non-digit) so the digit loops need no bounds checks.  A mantissa up
 * to 2^53 with |exponent| <= 22 takes Clinger's exact fast path; up to 19
 * digits with |exponent| <= 27, Eisel-Lemire; the rest strtod, as in
 * jansson: the same double every way. */
static const char *parse_number(const char *s, const char *end, double *out, bool *is_int)
{
    const char *p = s;
    bool neg = *p == '-';
    p += neg;
    uint64_t mant = 0;
    int sig = 0, frac_digits = 0;
    bool inexact = false; /* more than 19 significant digits */
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        read_digits(&p, end, &mant, &sig, &inexact);
    } else {
        return NULL;
    }
    *is_int = true;
    if (*p == '.') {
        *is_int = false;
        p++;
        if (!is_digit(*p)) return NULL;
        const char *f0 = p;
        /* Leading zeros of a fraction are not significant digits. */
        if (sig == 0)
            while (*p == '0') p++;
        read_digits(&p, end, &mant, &sig, &inexact);
        frac_digits = (int)(p - f0); /* when inexact, strtod below decides */
    }
    int exp10 = 0;
    if (*p == 'e' || *p == 'E') {
        *is_int = false;
        p++;
        int esign = 1;
        if (*p == '+' || *p == '-') esign = *p == '-' ? -1 : 1, p++;
        if (!is_digit(*p)) return NULL;
        do {
            if (exp10 < 100000) exp10 = exp10 * 10 + (*p - '0');
            p++;
        } while (is_digit(*p));
        exp10 *= esign;
    }
    /* jansson reads an integer as a 64-bit one and refuses what does not
     * fit; "-0" is its integer 0. */
    if (*is_int && (inexact || mant > (neg ? (uint64_t)1 << 63 : (uint64_t)INT64_MAX))) return NULL;
    int e = exp10 - frac_digits;
    double exact;
    if (!inexact && decimal_to_double(mant, e, &exact)) {
        *out = neg && (mant || !*is_int) ? -exact : exact;
        return p;
    }
    char buf[512];
    size_t len = (size_t)(p - s);
    if (len >= sizeof(buf)) return NULL;
    memcpy(buf, s, len);
    buf[len] = 0;
    double v = strtod(buf, NULL);
    if (!isfinite(v)) return NULL; /* jansson reports the overflow */
    *out = v;
    return p;
}

static struct num_array *pool_push_array(struct num_pool *pool)
{
    if (pool->n_arr == pool->cap_arr) {
        size_t cap = pool->cap_arr ? 2 * pool->cap_arr : 256;
        struct num_array *a = realloc(pool->arr, cap * sizeof(*a));
        if (!a) return NULL;
        pool->arr = a;
        pool->cap_arr = cap;
    }
    return &pool->arr[pool->n_arr++];
}

static inline bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

static int extract(char *body, size_t *len, bool at_start, struct num_pool *pool);

int numarray_extract(char *body, size_t *len, struct num_pool *pool) { return extract(body, len, true, pool); }

int numarray_extract_tail(char *part, size_t *len, struct num_pool *pool) { return extract(part, len, false, pool); }

static int extract(char *body, size_t *len, bool at_start, struct num_pool *pool)
{
    /* Read at p, write at w <= p: a placeholder is shorter than the array
     * it replaces, so the body shrinks in place and jansson parses only
     * the skeleton. */
    char *const end = body + *len;
    char *p = body, *w = body;
    /* A body that is itself an array is left whole: a string in its place
     * would be a different error (jansson takes only an object or array).
     * A tail starts after a cut, inside the body: its first array is not
     * the body's (it was parsed by jansson, number by number, until
     * measured: lane CPU +0.3 ms for a 128 x 784 body). */
    const char *top = NULL;
    if (at_start)
        for (top = body; top < end && is_ws(*top);) top++;
    while (p < end) {
        char c = *p;
        if (c == '"') { /* copy a string, escapes included */
            char *s0 = p++;
            while (p < end && *p != '"') p += *p == '\\' ? 2 : 1;
            if (p < end) p++;
            if (p > end) p = end;
            memmove(w, s0, (size_t)(p - s0));
            w += p - s0;
            continue;
        }
        if (c != '[' || p == top) {
            *w++ = *p++;
            continue;
        }
        /* Try to read [number (, number)*] */
        char *open = p, *q = p + 1;
        size_t first = pool->n;
        bool ok = false, all_int = true, spaced = false;
        while (q < end && is_ws(*q)) q++, spaced = true;
        while (q < end) {
            if (pool->n == pool->cap) {
                size_t cap = pool->cap ? 2 * pool->cap : 4096;
                double *v = realloc(pool->v, cap * sizeof(double));
                if (!v) return -1;
                pool->v = v;
                pool->cap = cap;
            }
            bool is_int;
            const char *after = end - q >= FAST_SLACK ? parse_number_fast(q, &pool->v[pool->n], &is_int) : NULL;
            if (!after) after = parse_number(q, end, &pool->v[pool->n], &is_int);
            if (after && after > end) after = NULL;
            if (!after) break;
            all_int &= is_int;
            pool->n++;
            q = (char *)after;
            while (q < end && is_ws(*q)) q++, spaced = true;
            if (q < end && *q == ',') {
                q++;
                while (q < end && is_ws(*q)) q++, spaced = true;
                continue;
            }
            if (q < end && *q == ']') ok = true;
            break;
        }
        size_t span = ok ? (size_t)(q + 1 - open) : 0;
        if (!ok || span < MIN_SPAN) {
            pool->n = first; /* leave it to jansson */
            *w++ = *p++;
            continue;
        }
        struct num_array *a = pool_push_array(pool);
        if (!a) return -1;
        *a = (struct num_array){.first = first, .count = pool->n - first, .at = (size_t)(w - body), .span = span,
                                .all_int = all_int};
        /* Its line breaks, for numarray_layout (compact JSON has none). */
        for (const char *nl = open; spaced && (nl = memchr(nl, '\n', (size_t)(q - nl))); nl++) {
            a->lines++;
            a->tail = (size_t)(q - nl);
        }
        /* "\u0001" nonce index, in quotes: at most 7 + 16 + 20 + 1 bytes,
         * shorter than the array it replaces (MIN_SPAN); written over text
         * already read. */
        char *w0 = w;
        memcpy(w, "\"\\u0001", 7);
        memcpy(w + 7, pool->nonce, 16);
        w += 23;
        w += tame_fmt_int(w, (long long)(pool->n_arr - 1));
        *w++ = '"';
        a->len = (size_t)(w - w0);
        p = q + 1;
    }
    *len = (size_t)(w - body);
    return 0;
}

size_t numarray_cut(const char *body, size_t len)
{
    const char *p = body, *end = body + len, *from = body + len / 2;
    while (p < end) {
        const char *q = memchr(p, '"', (size_t)(end - p)); /* the next string, if any */
        const char *stop = q ? q : end, *s = p < from ? from : p;
        for (const char *m = s; m < stop && (m = memchr(m, ',', (size_t)(stop - m))); m++)
            if (m > body && (m[-1] == ']' || m[-1] == '}')) return (size_t)(m + 1 - body);
        if (!q) return 0;
        p = q + 1; /* skip the string as numarray_extract does */
        while (p < end && *p != '"') p += *p == '\\' ? 2 : 1;
        p++;
    }
    return 0;
}

void numarray_join(char *body, size_t *len, size_t len1, size_t cut, size_t len2, struct num_pool *pool,
                   struct num_pool *second)
{
    memmove(body + len1, body + cut, len2);
    *len = len1 + len2;
    body[*len] = 0;
    struct num_pool *tail = pool;
    while (tail->next) tail = tail->next;
    tail->next = second;
    second->base = len1;
}

bool numarray_lookup(const struct num_pool *pool, const char *s, const double **ret, size_t *ret_n,
                     bool *ret_all_int)
{
    if (!s || s[0] != '\x01') return false;
    while (pool && strncmp(s + 1, pool->nonce, 16) != 0) pool = pool->next;
    if (!pool) return false;
    char *endp;
    unsigned long long k = strtoull(s + 17, &endp, 10);
    if (*endp || s[17] == 0 || k >= pool->n_arr) return false;
    const struct num_array *a = &pool->arr[k];
    *ret = pool->v + a->first;
    *ret_n = a->count;
    *ret_all_int = a->all_int;
    return true;
}

char *numarray_layout(const char *body, size_t len, const struct num_pool *pool, size_t *ret_len)
{
    size_t n = len;
    for (const struct num_pool *p = pool; p; p = p->next)
        for (size_t k = 0; k < p->n_arr; k++) n += p->arr[k].span - p->arr[k].len;
    char *out = malloc(n + 1), *w = out;
    if (!out) return NULL;
    size_t from = 0; /* next byte of body to copy */
    for (const struct num_pool *p = pool; p; p = p->next)
        for (size_t k = 0; k < p->n_arr; k++) {
            const struct num_array *a = &p->arr[k];
            size_t at = p->base + a->at;
            memcpy(w, body + from, at - from);
            w += at - from;
            /* "[", spaces, the newlines ending where the last one was, spaces, "]" */
            size_t last_nl = a->span - 1 - a->tail; /* offset in the span, when lines > 0 */
            memset(w, ' ', a->span);
            w[0] = '[';
            if (a->lines) memset(w + last_nl + 1 - a->lines, '\n', a->lines);
            w[a->span - 1] = ']';
            w += a->span;
            from = at + a->len;
        }
    memcpy(w, body + from, len - from);
    w += len - from;
    *w = 0;
    *ret_len = n;
    return out;
}
