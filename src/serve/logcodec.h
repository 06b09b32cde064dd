/* logcodec.h: how a log record's inputs are stored.  Samples are often
 * quantised (pixels k/255, ADC counts, one-hot features): when a record
 * holds at most 256 distinct floats they are stored as that palette and one
 * byte per value, a quarter of the bytes to write, checksum and replay;
 * otherwise as plain float32.  Both forms are exact.
 *
 *   raw:     0x00, then n float32 (little-endian)
 *   palette: 0x01, u16 k (1..256), k float32 bit patterns, then n bytes
 */
#ifndef TAME_SERVE_LOGCODEC_H
#define TAME_SERVE_LOGCODEC_H

#include "tame/core.h"

#include <stddef.h>

/* Append the encoding of x[0..n) to w (w->err on failure). */
void log_x_encode(const float *x, size_t n, struct tame_wbuf *w);
/* Decode exactly n floats into out; TAME_E_CORRUPT if the bytes are not a
 * valid encoding of n values. */
int log_x_decode(const void *b, size_t len, size_t n, float *out);

#endif
