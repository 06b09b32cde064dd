/* numarray.h: fast numeric arrays behind the same JSON contract.
 *
 * jansson spends ~25 ms on a 128 x 784 samples body (a json_t and a strtod
 * per number).  Before jansson sees a body, numarray_extract finds every
 * array that holds only JSON numbers (outside strings, with the strict
 * JSON number grammar), parses the numbers into a pool, and overwrites the
 * array's text in place with a placeholder string of the same length that
 * carries a random per-request nonce.  jansson then parses a small
 * skeleton and checks everything else (structure, duplicates, depth,
 * trailing bytes); the handlers take a placeholder wherever they take a
 * numeric array.  Anything unusual (an invalid or overflowing number, a
 * short array) is left in place for jansson, whose errors stand. */
#ifndef TAME_HTTP_NUMARRAY_H
#define TAME_HTTP_NUMARRAY_H

#include <stdbool.h>
#include <stddef.h>

struct num_pool {
    double *v;           /* all numbers, array after array */
    size_t n, cap;
    size_t *first;       /* per array: index of its first number in v */
    size_t *count;       /* per array: how many */
    bool *all_int;       /* per array: every number written as an integer */
    size_t n_arr, cap_arr;
    char nonce[17];      /* 16 hex digits */
    struct num_pool *next; /* the pool of a body's second part (numarray_join) */
};

void num_pool_init(struct num_pool *p);
void num_pool_done(struct num_pool *p);
/* Rewrite body[0..*len) in place (it only shrinks; *len is updated);
 * body[*len] must be a NUL on entry.  Returns 0 or -1 when out of memory. */
int numarray_extract(char *body, size_t *len, struct num_pool *pool);
/* A large body can be extracted in two parts on two threads: numarray_cut
 * finds where (just after a "]," or "}," outside strings, at or after the
 * middle; 0 if nowhere), each part goes through numarray_extract with its own pool
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

#endif
