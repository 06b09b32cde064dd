/* fuzz.h: the entry point every fuzz target defines.  Built with clang
 * -fsanitize=fuzzer (scripts/fuzz.sh) it is driven by libFuzzer; built by
 * the default suite it is driven by replay.c over the committed corpus. */
#ifndef TAME_TESTS_FUZZ_H
#define TAME_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A property the target checks failed: say which, with the input's size,
 * and abort (libFuzzer then saves the input as a crash). */
#define FUZZ_REQUIRE(cond, ...)                                                                                      \
    do {                                                                                                             \
        if (!(cond)) {                                                                                               \
            fprintf(stderr, "fuzz: %s:%d: %s: ", __FILE__, __LINE__, #cond);                                         \
            fprintf(stderr, __VA_ARGS__);                                                                            \
            fprintf(stderr, "\n");                                                                                   \
            abort();                                                                                                 \
        }                                                                                                            \
    } while (0)

#endif
