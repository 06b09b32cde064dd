/* body_meaning.h: whether the numeric-array rewrite (src/http/numarray.h)
 * keeps what a body means to jansson.  Shared by the numarray unit test and
 * the fuzz target fuzz_body. */
#ifndef TAME_TESTS_BODY_MEANING_H
#define TAME_TESTS_BODY_MEANING_H

#include <stdbool.h>
#include <stddef.h>

/* text[0..n) rewritten whole, or with split in the two parts numarray_cut
 * picks: NULL if jansson accepts it exactly when it accepts the original,
 * placeholders resolve to the original numbers bit for bit (integers where
 * they were integers), and a refused body laid out as sent gets jansson's
 * very error (line, column, byte, text).  Otherwise what differs, written
 * into msg.  *ret_arrays (if not NULL): how many arrays were rewritten. */
const char *body_meaning_differs(const char *text, size_t n, bool split, size_t *ret_arrays, char *msg,
                                 size_t cap);

#endif
