/* dataset.h: labelled image sets in the IDX format of MNIST, and the
 * continual-learning streams of DESIGN 6 built from them. */
#ifndef TAME_TOOLS_DATASET_H
#define TAME_TOOLS_DATASET_H

#include "tame/core.h"

struct idx_set {
    int n;          /* samples */
    int rows, cols; /* image shape */
    int dim;        /* rows * cols */
    float *x;       /* [n x dim], pixels scaled to [0, 1] */
    int *y;         /* [n] */
};

/* Load DIR/{prefix}-images-idx3-ubyte[.gz] and DIR/{prefix}-labels-idx1-ubyte[.gz]
 * (prefix "train" or "t10k").  On failure returns a negative code and writes
 * a message to err. */
int idx_load(const char *dir, const char *prefix, struct idx_set *set, char *err, size_t errlen);
void idx_free(struct idx_set *set);

enum stream_kind { STREAM_SPLIT, STREAM_PERMUTED, STREAM_ROTATED, STREAM_RECURRING };

/* One true task: which samples, how they are transformed, how labels map. */
struct task {
    int n_classes;        /* classes of this task */
    int classes[16];      /* its global classes */
    int *perm;            /* permuted: pixel permutation [dim], or NULL */
    double angle_deg;     /* rotated: rotation, 0 for none */
};

struct stream_spec {
    enum stream_kind kind;
    int tasks;            /* distinct true tasks */
    int epochs;           /* passes over a task per visit */
    bool local_labels;    /* labels 0..n_classes-1 within each task */
    uint64_t seed;
    int n_visits;         /* visits in order */
    int visit[64];        /* task index of each visit */
    int train_limit;      /* use at most this many training samples per task (0 = all) */
};

struct stream {
    struct stream_spec spec;
    int model_classes;    /* classes the model sees */
    struct task task[64];
};

int stream_build(const struct stream_spec *spec, int dim, struct stream *s, char *err, size_t errlen);
void stream_free(struct stream *s);
/* Label the model sees for a sample of `task` with global class c. */
int stream_label(const struct stream *s, int task, int c);
/* Global class meant by model label `label` predicted for `task`. */
int stream_class(const struct stream *s, int task, int label);
bool task_has_class(const struct task *t, int c);
/* Indices of `set` whose class belongs to `task` (caller frees), count in *n. */
int *task_indices(const struct stream *s, int task, const struct idx_set *set, int limit, int *n);
/* The task's view of sample i of `set` into out[dim]. */
void task_transform(const struct stream *s, int task, const struct idx_set *set, int i, float *out);

#endif
