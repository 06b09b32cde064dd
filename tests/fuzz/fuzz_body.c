/* fuzz_body.c: any bytes, as a request body, mean the same to jansson
 * after the numeric-array rewrite as before it, whole and cut in two, and a
 * refused one gets jansson's very error once laid out as sent. */
#include "body_meaning.h"
#include "fuzz.h"

#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char msg[256];
    for (int split = 0; split < 2; split++) {
        const char *why = body_meaning_differs((const char *)data, size, split, NULL, msg, sizeof(msg));
        FUZZ_REQUIRE(!why, "%s (%s)", why, split ? "in two parts" : "whole");
    }
    return 0;
}
