/* tame_internal.h: the learner's insides, shared by the files of src/tame/
 * only.  A learner is owned by one thread at a time (the caller's lock or
 * the daemon's learner worker); snapshots and selector jobs are separate
 * objects precisely so that other threads never touch it. */
#ifndef TAME_INTERNAL_H
#define TAME_INTERNAL_H

#include "tame/tame.h"
#include "reservoir.h"

struct tame_expert {
    int id;
    struct nn_mlp *net;
    struct nn_work *work;        /* scratch for this expert's forward/backward; not saved */
    float *window;               /* ring of the last `window` reference losses */
    int win_len, win_pos;        /* entries used; next write position */
    double s_all;                /* EWMA of its loss over every batch since creation */
    double s_act;                /* EWMA over the batches it trained on */
    bool has_s_all, has_s_act;
    double tau;                  /* threshold, last computed while active */
    double loss;                 /* loss on the last batch scored */
    uint64_t batches_trained;
    uint64_t since_active;       /* batches trained since it last became active */
    uint8_t *labels;             /* [classes] */
    bool pruned;
    struct tame_reservoir *buf;  /* what it trained on (stratified by label) */
};

struct tame_learner {
    struct tame_params p;
    struct tame_rng rng;         /* reservoir keys */
    uint64_t batches;
    uint64_t samples_trained;
    uint64_t nonfinite_batches;
    uint64_t nonfinite_updates;
    int n_experts;
    int active;                  /* -1 until the first batch */
    struct tame_expert *experts[TAME_MAX_EXPERTS];
    struct tame_reservoir *sel_buf;
    struct nn_mlp *selector;     /* NULL until the first one is installed */
    int selector_experts;        /* experts it was trained for */
    uint64_t selector_version;
    uint64_t selector_batch;     /* l->batches when the last job was taken */
    struct tame_event *events;   /* pending, not yet taken */
    size_t n_events, events_cap;
    uint64_t next_event_seq;
};

/* The layer sizes of experts (outputs = classes) or the selector
 * (outputs = n_out). */
int tame_dims(const struct tame_params *p, int n_out, int *dims);
int tame_expert_new(const struct tame_learner *l, int id, struct tame_expert **ret);
void tame_expert_free(struct tame_expert *e);
/* Train `net` for `epochs` over (x, y) in shuffled batches of batch_size. */
int tame_train_epochs(struct nn_mlp *net, struct nn_work *work, const struct tame_params *p,
                      struct tame_rng *rng, const float *x, const int *y, int n, int epochs);
int tame_learner_record(struct tame_learner *l, const struct tame_event *ev);

#endif
