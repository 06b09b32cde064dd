/*
 * core.h: the lowest layer of tamed: error codes, allocation hooks, the seeded
 * random number generator and the little-endian byte buffers that every
 * serialised blob is built with.  Nothing here knows about networks, TAME,
 * HTTP or SQLite.
 */
#ifndef TAME_CORE_H
#define TAME_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

/* ---- errors ----------------------------------------------------------------
 * Fallible functions return int: >= 0 on success, a negative TAME_E_* code on
 * failure.  This one table gives each code its name, its message and the HTTP
 * status the daemon answers with, so no layer invents a status by hand.
 *        name        message                                   http */
#define TAME_ERRNO_MAP(X)                                                   \
    X(NOMEM,      "out of memory",                                  503)    \
    X(INVAL,      "invalid argument",                               400)    \
    X(RANGE,      "value out of range",                             400)    \
    X(CORRUPT,    "corrupt data",                                   500)    \
    X(VERSION,    "unsupported format version",                     500)    \
    X(NONFINITE,  "non-finite value",                               422)    \
    X(LIMIT,      "configured limit exceeded",                      413)    \
    X(IO,         "input/output error",                             500)    \
    X(NOTFOUND,   "not found",                                      404)    \
    X(EXIST,      "already exists",                                 409)    \
    X(BUSY,       "busy, retry later",                              429)    \
    X(UNAVAIL,    "persistence unavailable",                        503)    \
    X(STATE,      "operation not valid in the current state",       409)

enum tame_errno {
    TAME_OK = 0,
#define TAME_ERR_ENUM_(name, msg, http) TAME_E_##name,
    TAME_E_FIRST_ = -1000,
    TAME_ERRNO_MAP(TAME_ERR_ENUM_)
#undef TAME_ERR_ENUM_
    TAME_E_LAST_
};

/* Human message for an error code ("unknown error" for anything else). */
const char *tame_strerror(int err);
/* Stable machine name, e.g. "NOMEM", used as the JSON error code. */
const char *tame_err_name(int err);
/* HTTP status for an error code; 500 for unknown codes. */
int tame_err_http_status(int err);

/* Always-on assertion for broken invariants (never for request input). */
#define TAME_ASSERT(cond)                                                   \
    do {                                                                    \
        if (!(cond)) tame_assert_fail(#cond, __FILE__, __LINE__);           \
    } while (0)
_Noreturn void tame_assert_fail(const char *expr, const char *file, int line);

/* ---- allocation ------------------------------------------------------------
 * Every allocation of the engine goes through these, so that tests can fail
 * the Nth allocation (sqlite's FAULTSIM pattern) and count live blocks.
 * Thread-safe.  tame_free(NULL) does nothing. */
void *tame_malloc(size_t n);
void *tame_calloc(size_t count, size_t size);
void *tame_realloc(void *p, size_t n);
void tame_free(void *p);
/* Make the allocation numbered `n` from now (0 = the next one) and, if
 * `sticky`, every later one fail; n < 0 disables injection. */
void tame_alloc_fail_at(long n, bool sticky);
/* Allocations made since the last tame_alloc_fail_at() call. */
long tame_alloc_count(void);
/* Live blocks allocated through tame_malloc & co and not yet freed. */
long tame_alloc_live(void);

/* ---- random numbers --------------------------------------------------------
 * xoshiro256** seeded through splitmix64: fast, reproducible on every
 * platform, and its whole state serialises as four words. */
struct tame_rng {
    uint64_t s[4];
};
void tame_rng_seed(struct tame_rng *rng, uint64_t seed);
/* Derive an independent stream from (seed, stream id). */
void tame_rng_seed2(struct tame_rng *rng, uint64_t seed, uint64_t stream);
uint64_t tame_rng_u64(struct tame_rng *rng);
/* Uniform in [0, 1) with 53 random bits. */
double tame_rng_uniform(struct tame_rng *rng);
/* Uniform integer in [0, n), n > 0, without modulo bias. */
uint64_t tame_rng_below(struct tame_rng *rng, uint64_t n);
/* Fisher-Yates shuffle of idx[0..n). */
void tame_rng_shuffle(struct tame_rng *rng, int *idx, int n);

/* ---- byte buffers ------------------------------------------------------------
 * Writers append little-endian values and remember the first error; readers
 * check every length against what remains, so a corrupt blob can only ever
 * produce TAME_E_CORRUPT, never a read out of bounds. */
struct tame_wbuf {
    uint8_t *data;  /* owned; tame_wbuf_done frees it */
    size_t len;     /* bytes written */
    size_t cap;     /* bytes allocated */
    int err;        /* first error, 0 if none */
};
void tame_wbuf_init(struct tame_wbuf *w);
void tame_wbuf_done(struct tame_wbuf *w);
void tame_wbuf_bytes(struct tame_wbuf *w, const void *p, size_t n);
void tame_wbuf_u8(struct tame_wbuf *w, uint8_t v);
void tame_wbuf_u32(struct tame_wbuf *w, uint32_t v);
void tame_wbuf_u64(struct tame_wbuf *w, uint64_t v);
void tame_wbuf_i32(struct tame_wbuf *w, int32_t v);
void tame_wbuf_f32(struct tame_wbuf *w, float v);
void tame_wbuf_f64(struct tame_wbuf *w, double v);
void tame_wbuf_f32s(struct tame_wbuf *w, const float *v, size_t n);
/* Append printf-formatted text; a NUL follows the data (not counted in len). */
void tame_wbuf_printf(struct tame_wbuf *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Room for n more bytes at data + len (len unchanged: advance it by what was
 * written), or NULL after an error. */
uint8_t *tame_wbuf_room(struct tame_wbuf *w, size_t n);
/* Append a CRC-32 of everything from byte `from` to the end. */
void tame_wbuf_crc(struct tame_wbuf *w, size_t from);

struct tame_rbuf {
    const uint8_t *data; /* borrowed */
    size_t len;
    size_t pos;
    int err;             /* TAME_E_CORRUPT once any read overran */
};
void tame_rbuf_init(struct tame_rbuf *r, const void *data, size_t len);
void tame_rbuf_bytes(struct tame_rbuf *r, void *p, size_t n);
uint8_t tame_rbuf_u8(struct tame_rbuf *r);
uint32_t tame_rbuf_u32(struct tame_rbuf *r);
uint64_t tame_rbuf_u64(struct tame_rbuf *r);
int32_t tame_rbuf_i32(struct tame_rbuf *r);
float tame_rbuf_f32(struct tame_rbuf *r);
double tame_rbuf_f64(struct tame_rbuf *r);
/* Read n floats; any non-finite value makes the buffer corrupt. */
void tame_rbuf_f32s(struct tame_rbuf *r, float *v, size_t n);
/* Check the CRC-32 written by tame_wbuf_crc over bytes [from, pos). */
void tame_rbuf_crc(struct tame_rbuf *r, size_t from);
/* Number of unread bytes (0 once an error occurred). */
size_t tame_rbuf_left(const struct tame_rbuf *r);

uint32_t tame_crc32(uint32_t crc, const void *p, size_t n);

/* ---- threads ----
 * Name the calling thread (shown by top -H and in /proc; cut to 15 bytes)
 * and lower its priority by `nice` (0: leave it). */
void tame_thread_setup(const char *name, int nice);
/* The moment `ms` milliseconds from now, as pthread_cond_timedwait takes it
 * (CLOCK_REALTIME): fixed once, so a wait that wakes early and waits again
 * still ends on time. */
struct timespec tame_deadline_ms(long ms);
/* pthread_cond_wait for at most `seconds` (mu held, as for the wait): for
 * threads that also have something to do as time passes. */
void tame_cond_wait_s(pthread_cond_t *cv, pthread_mutex_t *mu, int seconds);

/* ---- numbers as text ---------------------------------------------------------
 * A finite float as a JSON number of at most 9 significant digits that parses
 * back to the same float: positional from 1e-5 to 1e9 ("0.00392156886",
 * "12.5"), else "d.dddde-x".  Writes at most TAME_FLOAT_TEXT_MAX bytes, no
 * NUL; returns the length. */
#define TAME_FLOAT_TEXT_MAX 16
int tame_fmt_float(char *out, float f);
/* The same with the fewest significant digits that still read back as f
 * ("0.003921569" for 1/255): a few times slower, for callers that cache the
 * text of repeated values (tame-eval's request bodies). */
int tame_fmt_float_shortest(char *out, float f);
/* v in decimal at out (at most 20 bytes, no NUL); returns the length.
 * printf's machinery costs more than the rest of a small reply. */
int tame_fmt_int(char *out, long long v);

/* ---- numbers ---- */
/* 1 if the IEEE-754 single has an all-ones exponent (Inf or NaN).  Integer
 * operations, so loops that OR it together vectorise (a float reduction
 * would not, without reassociation). */
static inline uint32_t tame_f32_nonfinite(float v)
{
    union {
        float f;
        uint32_t u;
    } b = {.f = v};
    return (b.u & 0x7f800000u) == 0x7f800000u;
}
/* True if no element of v[0..n) is Inf or NaN. */
bool tame_all_finite(const float *v, size_t n);

/* Seconds from a monotonic clock. */
double tame_now_s(void);

#endif
