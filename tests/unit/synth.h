/* synth.h: small synthetic continual-learning streams for the tests.  Task t
 * draws Gaussian blobs (sd 1) around class means that are fixed random
 * vectors of norm ~4 per (task, class), so tasks are told apart by x and
 * an expert of one task does badly on another. */
#ifndef TAME_TEST_SYNTH_H
#define TAME_TEST_SYNTH_H

#include "tame/tame.h"

#include <math.h>

#define SYNTH_DIM 16

static inline double synth_gauss(struct tame_rng *r)
{
    double u1 = tame_rng_uniform(r) + 1e-300, u2 = tame_rng_uniform(r);
    return sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
}

/* Class mean of (task, cls), task < 8, cls < 8: fixed random vectors of
 * N(0, 1) entries (norm ~4 in 16 dimensions). */
static inline float synth_mean(int task, int cls, int j)
{
    static float table[8][8][SYNTH_DIM];
    static bool ready;
    if (!ready) {
        struct tame_rng r;
        tame_rng_seed(&r, 0xC0FFEE);
        for (int t = 0; t < 8; t++)
            for (int c = 0; c < 8; c++)
                for (int k = 0; k < SYNTH_DIM; k++) table[t][c][k] = (float)synth_gauss(&r);
        ready = true;
    }
    return table[task][cls][j];
}

/* n samples of `task`, labels local (0..per_task-1) or global
 * (task*per_task + local). */
static inline void synth_batch(struct tame_rng *r, int task, int per_task, bool global, float *x,
                               int *y, int n)
{
    for (int i = 0; i < n; i++) {
        int c = (int)tame_rng_below(r, (uint64_t)per_task);
        y[i] = global ? task * per_task + c : c;
        for (int j = 0; j < SYNTH_DIM; j++) x[i * SYNTH_DIM + j] = synth_mean(task, c, j) + (float)synth_gauss(r);
    }
}

#endif
