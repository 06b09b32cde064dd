/* seed_state.c: writes the seed checkpoints of fuzz_state: small learners
 * (4 inputs, 3 classes, hidden [5]) after a stream with a shift, so they
 * hold two experts, a pruned one, buffers and held-back batches.
 * Usage: seed-state DIR (run once; the files are committed). */
#include "tame/tame.h"

#include <stdio.h>
#include <stdlib.h>

static void write_learner(const struct tame_learner *l, const char *dir, const char *name)
{
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    tame_learner_save(l, &w);
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || w.err || fwrite(w.data, 1, w.len, f) != w.len || fclose(f) != 0) {
        fprintf(stderr, "seed-state: cannot write %s\n", path);
        exit(1);
    }
    tame_wbuf_done(&w);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: seed-state DIR\n");
        return 2;
    }
    struct tame_params p;
    tame_params_default(&p, 4, 3);
    p.n_hidden = 1;
    p.hidden[0] = 5;
    p.batch_size = 8;
    p.window = 10;
    p.min_batches = 3;
    p.selector_capacity = 40;
    p.expert_capacity = 16;
    p.finetune_epochs = 2;
    p.max_experts = 4;
    p.attribution_batches = 2;
    struct tame_learner *l;
    if (tame_learner_new(&p, &l) < 0) return 1;
    write_learner(l, argv[1], "new");
    struct tame_rng r;
    tame_rng_seed(&r, 1);
    float x[8 * 4];
    int y[8];
    for (int b = 0; b < 120; b++) {
        int task = b / 60; /* a shift at batch 60: the classes move */
        for (int i = 0; i < 8; i++) {
            y[i] = (int)(tame_rng_u64(&r) % 2) + task;
            for (int j = 0; j < 4; j++) x[i * 4 + j] = (float)(y[i] == j) * (task ? -2.0f : 2.0f) + 0.1f * (float)(tame_rng_u64(&r) % 10);
        }
        if (tame_learner_step(l, x, y, 8) < 0) return 1;
        if (b == 30) write_learner(l, argv[1], "one-expert");
    }
    write_learner(l, argv[1], "after-shift");
    tame_learner_free(l);
    return 0;
}
