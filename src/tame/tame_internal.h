/* tame_internal.h: the learner's insides, shared by the files of src/tame/
 * only.  A learner is owned by one thread at a time (the caller's lock or
 * the daemon's learner worker); snapshots and selector jobs are separate
 * objects precisely so that other threads never touch it. */
#ifndef TAME_INTERNAL_H
#define TAME_INTERNAL_H

#include "tame/tame.h"
#include "reservoir.h"

/* A frozen copy of a network (nn_mlp_clone_frozen), shared by every
 * snapshot published while the network kept its version and by the owner
 * of the network, which hands it out again: a snapshot copies only what
 * changed since the last one (the active expert, not 20 pruned ones). */
struct tame_frozen {
    _Atomic int refs;
    struct nn_mlp *net;
    size_t nonzero; /* nn_mlp_nonzero, counted once */
};

/* A new reference to the frozen copy of `net`, from *cache if it holds the
 * current version, else from a new copy that replaces it. */
int tame_frozen_get(const struct nn_mlp *net, struct tame_frozen **cache, struct tame_frozen **ret);
void tame_frozen_put(struct tame_frozen *f);

struct tame_expert {
    int id;
    struct nn_mlp *net;
    struct tame_frozen *frozen;  /* the last frozen copy of net; not saved */
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
    uint64_t *label_count;       /* [classes] samples attributed to it per label */
    uint8_t *labels;             /* [classes] 1 = a label it predicts (>= 1% of its samples) */
    bool pruned;
    bool warning;                /* its S_all is above the warning line */
    bool probation;              /* newly spawned; may still be retired for a reuse */
    uint64_t warn_since;         /* batch where the current warning began */
    struct tame_reservoir *buf;  /* what it trained on (stratified by label) */
};

/* A trained batch waiting to enter the buffers (DESIGN 2.5 with the
 * attribution delay of README "Buffers"). */
struct tame_pending {
    uint64_t batch;              /* its batch index */
    int n;                       /* samples */
    int expert;                  /* the expert it is attributed to */
    float *x;                    /* [batch_size x input_dim], allocated once */
    int *y;                      /* [batch_size] */
};

/* Scoring work: experts [from, to) except `skip` score (x, y) into loss[]. */
struct tame_score_job {
    struct tame_expert *const *experts;
    const float *x;
    const int *y;
    int n;
    const uint8_t *head;
    int from, to, skip;
    double *loss;
};
struct tame_helper;
int tame_helper_new(struct tame_helper **ret);
void tame_helper_free(struct tame_helper *h);
/* Run fn(arg) on the helper thread; tame_helper_wait blocks until it ran.
 * One job at a time. */
void tame_helper_post(struct tame_helper *h, void (*fn)(void *), void *arg);
void tame_helper_wait(struct tame_helper *h);
void tame_score_experts(void *job); /* a struct tame_score_job */

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
    struct tame_pending *pending; /* ring of attribution_batches entries */
    int pend_head, pend_len;      /* oldest entry; entries held */
    struct nn_mlp *selector;     /* NULL until the first one is installed */
    struct tame_frozen *frozen_selector; /* its last frozen copy; not saved */
    int selector_experts;        /* experts it was trained for */
    uint64_t selector_version;
    uint64_t selector_batch;     /* l->batches when the last job was taken */
    int selector_req_experts;    /* experts the last job was taken for */
    uint64_t selector_jobs;      /* jobs taken so far (seeds the next one) */
    struct tame_event *events;   /* pending, not yet taken */
    size_t n_events, events_cap;
    uint64_t next_event_seq;
    struct tame_helper *helper;  /* second scoring thread, or NULL; not saved */
};

/* The layer sizes of experts (outputs = classes) or the selector
 * (outputs = n_out). */
int tame_dims(const struct tame_params *p, int n_out, int *dims);
int tame_expert_new(const struct tame_learner *l, int id, struct tame_expert **ret);
void tame_expert_free(struct tame_expert *e);
/* Train `net` for `epochs` over (x, y) in shuffled batches of batch_size,
 * the head's softmax over each batch's labels (batch_head) or all outputs. */
int tame_train_epochs(struct nn_mlp *net, struct nn_work *work, const struct tame_params *p,
                      struct tame_rng *rng, const float *x, const int *y, int n, bool batch_head,
                      int epochs);
/* Mark the labels of y[0..n) in present[]; returns how many are new. */
int tame_batch_labels(const int *y, int n, uint8_t *present);
void tame_expert_update_labels(struct tame_expert *e, int classes);
int tame_learner_record(struct tame_learner *l, const struct tame_event *ev);

#endif
