/* body_meaning.c: see body_meaning.h. */
#include "body_meaning.h"

#include "numarray.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* want (the body as jansson reads it) and got (the rewritten body as
 * jansson reads it, placeholders resolved through the pool) mean the same. */
static bool same_meaning(json_t *want, json_t *got, const struct num_pool *pool)
{
    const double *v;
    size_t n;
    bool all_int;
    if (json_is_string(got) && numarray_lookup(pool, json_string_value(got), &v, &n, &all_int)) {
        if (!json_is_array(want) || json_array_size(want) != n) return false;
        bool ints = true;
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(want, i);
            double d = json_number_value(e);
            if (!json_is_number(e) || memcmp(&d, &v[i], sizeof(d)) != 0) return false;
            ints &= json_is_integer(e);
        }
        return ints == all_int;
    }
    if (json_typeof(want) != json_typeof(got)) return false;
    if (json_is_array(want)) {
        if (json_array_size(want) != json_array_size(got)) return false;
        for (size_t i = 0; i < json_array_size(want); i++)
            if (!same_meaning(json_array_get(want, i), json_array_get(got, i), pool)) return false;
        return true;
    }
    if (json_is_object(want)) {
        if (json_object_size(want) != json_object_size(got)) return false;
        const char *key;
        json_t *w;
        json_object_foreach(want, key, w) {
            json_t *o = json_object_get(got, key);
            if (!o || !same_meaning(w, o, pool)) return false;
        }
        return true;
    }
    return json_equal(want, got);
}

const char *body_meaning_differs(const char *text, size_t n, bool split, size_t *ret_arrays, char *msg,
                                 size_t cap)
{
    const char *why = NULL;
    json_error_t e_want, e_got;
    json_t *want = json_loadb(text, n, JSON_REJECT_DUPLICATES, &e_want), *got = NULL;
    char *b = malloc(n + 1);
    struct num_pool pool;
    num_pool_init(&pool);
    if (!b) {
        why = "out of memory";
        goto done;
    }
    memcpy(b, text, n);
    b[n] = 0;
    size_t cut = split ? numarray_cut(b, n) : 0, len = n;
    if (cut) {
        struct num_pool *second = malloc(sizeof(*second));
        if (!second) {
            why = "out of memory";
            goto done;
        }
        num_pool_init(second);
        size_t l1 = cut, l2 = n - cut;
        int rc1 = numarray_extract(b, &l1, &pool), rc2 = numarray_extract_tail(b + cut, &l2, second);
        numarray_join(b, &len, l1, cut, l2, &pool, second);
        if (rc1 < 0 || rc2 < 0) why = "out of memory";
    } else if (numarray_extract(b, &len, &pool) < 0) {
        why = "out of memory";
    }
    if (why) goto done;
    if (ret_arrays) *ret_arrays = pool.n_arr + (pool.next ? pool.next->n_arr : 0);
    got = json_loadb(b, len, JSON_REJECT_DUPLICATES, &e_got);
    if (want && !got) {
        snprintf(msg, cap, "refused after rewriting (%s)", e_got.text);
        why = msg;
    } else if (want && !same_meaning(want, got, &pool)) {
        why = "changed by rewriting";
    } else if (!want && got) {
        snprintf(msg, cap, "accepted after rewriting (jansson: %s)", e_want.text);
        why = msg;
    } else if (!want) {
        size_t ln;
        char *laid = numarray_layout(b, len, &pool, &ln);
        json_t *again = laid ? json_loadb(laid, ln, JSON_REJECT_DUPLICATES, &e_got) : NULL;
        if (!laid) {
            why = "out of memory";
        } else if (ln != n || again) {
            why = "laid out as sent, not the body sent";
        } else if (e_got.line != e_want.line || e_got.column != e_want.column || e_got.position != e_want.position ||
                   strcmp(e_got.text, e_want.text)) {
            snprintf(msg, cap, "error moved: %d:%d@%d %s, jansson %d:%d@%d %s", e_got.line, e_got.column,
                     e_got.position, e_got.text, e_want.line, e_want.column, e_want.position, e_want.text);
            why = msg;
        }
        json_decref(again);
        free(laid);
    }
done:
    json_decref(want);
    json_decref(got);
    num_pool_done(&pool);
    free(b);
    return why;
}
