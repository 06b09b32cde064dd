/* numarray.h: fast numeric arrays behind the same JSON contract.
 *
 * jansson spends ~25 ms on a 128 x 784 samples body (a json_t and a strtod
 * per number).  Before jansson sees a body, numarray_extract finds every
 * array that holds only JSON numbers (outside strings, with the strict
 * JSON number grammar), parses the numbers into a pool, and replaces the
 * array's text in place with a shorter placeholder string that carries a
 * random per-request nonce.  jansson then parses a small skeleton and
 * checks everything else (structure, duplicates, depth, trailing bytes);
 * the handlers take a placeholder wherever they take a numeric array.
 * Anything unusual (an invalid or overflowing number, an integer jansson
 * would refuse, a short array) is left in place for jansson, whose errors
 * stand.  When jansson refuses a rewritten body, numarray_layout gives
 * back a text laid out as the client sent it, for an error whose line,
 * column and byte point into the body as sent. */
#ifndef TAME_HTTP_NUMARRAY_H
#define TAME_HTTP_NUMARRAY_H

#include <stdbool.h>
#include <stddef.h>

/* One extracted array. */
struct num_array {
    size_t first, count; /* its numbers: v[first .. first + count) */
    size_t at, len;      /* its placeholder: offset in the rewritten part, bytes */
    size_t span;         /* bytes of the array as sent */
    size_t lines;        /* newlines in it as sent... */
    size_t tail;         /* ...and bytes after the last one, up to its end */
    bool all_int;        /* every number written as an integer */
};

struct num_pool {
    double *v;           /* all numbers, array after array */
    size_t n, cap;
    struct num_array *arr;
    size_t n_arr, cap_arr;
    size_t base;         /* where this pool's part starts in the joined body */
    char nonce[17];      /* 16 hex digits */
    struct num_pool *next; /* the pool of a body's second part (numarray_join) */
};

void num_pool_init(struct num_pool *p);
void num_pool_done(struct num_pool *p);
/* Rewrite body[0..*len) in place (it only shrinks; *len is updated);
 * body[*len] must be a NUL on entry.  Returns 0 or -1 when out of memory. */
int numarray_extract(char *body, size_t *len, struct num_pool *pool);
/* The same for the part of a body after numarray_cut's cut. */
int numarray_extract_tail(char *part, size_t *len, struct num_pool *pool);
/* A large body can be extracted in two parts on two threads: numarray_cut
 * finds where (just after a "]," or "}," outside strings, at or after the
 * middle; 0 if nowhere), the first part goes through numarray_extract and the
 * second through numarray_extract_tail, each with its own pool
 * (the first part's last number ends inside it, so neither reads the
 * other's bytes), and numarray_join closes the gap between the two
 * rewritten parts and chains `second` (malloc'd, taken) behind `pool`. */
size_t numarray_cut(const char *body, size_t len);
void numarray_join(char *body, size_t *len, size_t len1, size_t cut, size_t len2, struct num_pool *pool,
                   struct num_pool *second);
/* If s is one of this pool's placeholders (or of a pool chained behind
 * it): its numbers. */
bool numarray_lookup(const struct num_pool *pool, const char *s, const double **ret, size_t *ret_n,
                     bool *ret_all_int);
/* The rewritten body[0..len) laid out as it was sent: every placeholder
 * back to an array of the original size and line breaks, emptied (spaces
 * and newlines between its brackets).  A parser that stops on an error
 * after such an array stops at the same line, column and byte as on the
 * body as sent (the arrays themselves held only valid numbers).  A
 * malloc'd, NUL-terminated text of *ret_len bytes, or NULL when out of
 * memory. */
char *numarray_layout(const char *body, size_t len, const struct num_pool *pool, size_t *ret_len);

#endif
