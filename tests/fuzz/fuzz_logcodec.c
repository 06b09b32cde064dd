/* fuzz_logcodec.c: any bytes read back from the sample log (a damaged
 * database) decode to n floats or to TAME_E_CORRUPT, never past either
 * buffer; what decodes, encoded again, decodes to the same bits.  The
 * first two bytes choose n (0..4096). */
#include "fuzz.h"
#include "serve/logcodec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t n = ((size_t)data[0] | (size_t)data[1] << 8) % 4097;
    float *out = malloc((n ? n : 1) * sizeof(float)), *back = malloc((n ? n : 1) * sizeof(float));
    FUZZ_REQUIRE(out && back, "out of memory");
    int rc = log_x_decode(data + 2, size - 2, n, out);
    FUZZ_REQUIRE(rc == 0 || rc == TAME_E_CORRUPT, "decode returned %d", rc);
    if (rc == 0) {
        struct tame_wbuf w;
        tame_wbuf_init(&w);
        log_x_encode(out, n, &w);
        FUZZ_REQUIRE(!w.err, "encode failed");
        FUZZ_REQUIRE(log_x_decode(w.data, w.len, n, back) == 0, "its own encoding refused");
        FUZZ_REQUIRE(!memcmp(out, back, n * sizeof(float)), "round trip changed the values");
        tame_wbuf_done(&w);
    }
    free(out);
    free(back);
    return 0;
}
