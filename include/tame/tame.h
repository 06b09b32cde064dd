/*
 * tame.h: the TAME learner (Task-Agnostic continual learning using Multiple
 * Experts), as DESIGN.md section 2 specifies it.
 *
 * A learner consumes labelled mini-batches in order.  Each batch is scored
 * by every expert before anything trains on it; a shift test on the active
 * expert's smoothed loss decides whether to keep it, switch back to an
 * expert that already knows the data (reuse) or grow a new one (spawn).
 * Reservoir buffers keep a stratified uniform sample of the stream; a
 * selector network trained on that sample routes predictions to experts.
 *
 * Data flows one way: tame_learner_step() changes the learner; a selector is
 * trained on a copy of the buffer (tame_selector_job, safe to run on another
 * thread) and installed atomically; tame_learner_snapshot() publishes an
 * immutable copy that any number of threads can predict from.
 *
 * The engine never logs, parses JSON or touches SQLite: it returns codes and
 * records events.
 */
#ifndef TAME_TAME_H
#define TAME_TAME_H

#include "tame/core.h"
#include "tame/nn.h"

#define TAME_MAX_EXPERTS 64   /* hard cap; params.max_experts <= this */
#define TAME_MAX_HIDDEN 6     /* hidden layers */

/* Hyper-parameters of one model.  tame_params_default() fills DESIGN 2.x. */
struct tame_params {
    int input_dim;           /* features per sample, >= 1 */
    int classes;             /* labels are 0..classes-1, >= 2 */
    int n_hidden;            /* hidden layers of experts and selector */
    int hidden[TAME_MAX_HIDDEN]; /* their widths, default {100, 100} */
    int batch_size;          /* samples per step, default 128 */
    float head_scale;        /* b in the experts' head softmax(b*sigmoid(z)), 3 */
    float lr;                /* SGD learning rate, 0.1 */
    float momentum;          /* 0.9 */
    float weight_decay;      /* 5e-4 */
    int window;              /* detector window of raw losses, 100 */
    float alpha;             /* EWMA smoothing, 0.2 */
    float k_sigma;           /* threshold = mean + k_sigma * max(sd, floor), 3 */
    float sigma_floor;       /* 0.015 (0.005 per unit of head_scale) */
    float k_warn;            /* losses enter the window only below mean + k_warn*sd, 1 */
    int min_batches;         /* trained batches before the shift test runs, 10 */
    int selector_capacity;   /* selector buffer size, 5000 */
    int expert_capacity;     /* per-expert buffer size, 500 */
    int selector_epochs;     /* 50 */
    float selector_lr;       /* SGD learning rate of the selector, 0.01 */
    int selector_every;      /* retrain due after this many batches, 1000 */
    float expert_sparsity;   /* pruning of experts once inactive, 0.98 */
    float selector_sparsity; /* pruning of the selector after training, 0.5 */
    int finetune_epochs;     /* fine-tuning after each prune, 10 */
    int max_experts;         /* <= TAME_MAX_EXPERTS, 32 */
    int attribution_batches; /* trained batches held back before they enter the
                                buffers, so a detection can hand the batches of
                                its warning zone to the new expert, 8 */
    uint64_t seed;           /* every random choice derives from it */
};

void tame_params_default(struct tame_params *p, int input_dim, int classes);
/* TAME_E_RANGE (with the field name in *ret_field) if a value is out of its
 * range; 0 if the set is usable. */
int tame_params_validate(const struct tame_params *p, const char **ret_field);

/* Bytes a learner of these parameters holds once it has max_experts
 * experts: each network with its gradient, momentum, mask, a frozen copy for
 * predictions and a batch's workspace; the experts' and the selector's
 * buffers; the copy a selector retrain trains on; the attribution ring; a
 * checkpoint's serialised copy of all that.  An
 * estimate (allocator overhead and small state left out), for refusing a
 * model the machine cannot hold before it is created. */
double tame_params_memory_bytes(const struct tame_params *p);

/* ---- events ---- */
enum tame_event_kind {
    TAME_EV_DETECT,   /* the active expert's smoothed loss crossed its threshold */
    TAME_EV_REUSE,    /* an earlier expert qualified and became active */
    TAME_EV_SPAWN,    /* a new expert was created and became active */
    TAME_EV_SELECTOR, /* a newly trained selector was installed */
    TAME_EV_PRUNE,    /* a network was pruned and fine-tuned */
};
const char *tame_event_kind_name(enum tame_event_kind kind);

struct tame_event {
    uint64_t seq;             /* 0, 1, 2, ... per learner */
    uint64_t batch;           /* index of the batch that caused it */
    enum tame_event_kind kind;
    int from, to;             /* expert ids; -1 = none (or the selector for prune) */
    double stat;              /* detect: S_all of `from`; reuse: S_hyp of `to`;
                                 selector: accuracy on its buffer; prune: non-zero params */
    double threshold;         /* detect: tau of `from`; reuse: tau of `to` */
    int n_losses;             /* losses of every expert on this batch */
    float losses[TAME_MAX_EXPERTS];
    float k_sigma, k_warn;    /* the guards in force (DESIGN 2.4) */
    int min_batches;
};

/* ---- learner ---- */
struct tame_learner;

/* A new learner with no expert yet.  Copies *params (validated first:
 * TAME_E_RANGE).  Owned by the caller: tame_learner_free. */
int tame_learner_new(const struct tame_params *params, struct tame_learner **ret);
void tame_learner_free(struct tame_learner *l);
const struct tame_params *tame_learner_params(const struct tame_learner *l);
/* Threads a step may use (1 or 2; more counts as 2).  With 2, a helper
 * thread scores the inactive experts while the caller's thread handles the
 * active one; results are bit-identical to 1 thread.  Not part of the saved
 * state.  TAME_E_RANGE for < 1, TAME_E_NOMEM if the thread cannot start. */
int tame_learner_set_threads(struct tame_learner *l, int threads);

/* One step of DESIGN 2.4 on a batch of n (1..batch_size) samples, x row-major
 * [n x input_dim], y in [0, classes).  Returns 0 on success;
 * TAME_E_RANGE for a bad label or n (nothing changes);
 * TAME_E_NONFINITE if x holds NaN/Inf or the loss is not finite (nothing
 * trains; counted); TAME_E_NOMEM (nothing changes).  A refused non-finite
 * update is counted and still returns 0: the batch was consumed. */
int tame_learner_step(struct tame_learner *l, const float *x, const int *y, int n);

/* Events recorded since the last take; ownership of the array passes to the
 * caller (tame_free).  *ret_events is NULL when there are none. */
int tame_learner_take_events(struct tame_learner *l, struct tame_event **ret_events,
                             size_t *ret_n);

struct tame_info {
    uint64_t batches;            /* steps taken */
    uint64_t samples_trained;
    int n_experts;
    int active;                  /* -1 before the first batch */
    uint64_t nonfinite_batches;  /* batches skipped for a non-finite loss/input */
    uint64_t nonfinite_updates;  /* SGD updates refused as non-finite */
    int selector_experts;        /* outputs of the installed selector, 0 = none */
    uint64_t selector_version;   /* selectors installed so far */
    bool selector_due;           /* expert set changed or selector_every passed */
    int selector_fill;           /* samples in the selector buffer */
};
void tame_learner_info(const struct tame_learner *l, struct tame_info *info);

struct tame_expert_info {
    int id;
    uint64_t batches_trained;
    const uint8_t *labels;       /* [classes] 1 if trained on that label; borrowed */
    size_t nonzero_params;
    double loss;                 /* its loss on the last batch */
    double threshold;            /* tau, last computed */
    double s_all, s_act;         /* the EWMAs */
    bool pruned;
    int buffer_fill;
};
int tame_learner_expert_info(const struct tame_learner *l, int expert,
                             struct tame_expert_info *info);

/* ---- selector training ---- */
struct tame_selector_job;
/* Copy what selector training needs (buffer, expert count, params, seed) so
 * it can run without the learner.  Taking a job is what resets selector_due,
 * so the jobs a learner asks for depend only on its batches.  TAME_E_STATE
 * if fewer than 2 experts. */
int tame_selector_job_new(struct tame_learner *l, struct tame_selector_job **ret);
/* Train (fresh init, selector_epochs, then prune + fine-tune).  Slow; touches
 * only the job, so it may run on any thread. */
int tame_selector_job_run(struct tame_selector_job *job);
/* Install the trained selector (the job keeps nothing) and record events. */
int tame_learner_install_selector(struct tame_learner *l, struct tame_selector_job *job);
void tame_selector_job_free(struct tame_selector_job *job);
/* A taken job's inputs (not its result), so a checkpoint can hold a job in
 * flight and a restart run it again: the same inputs give the same selector.
 * load: TAME_E_CORRUPT on anything inconsistent with p. */
void tame_selector_job_save(const struct tame_selector_job *job, struct tame_wbuf *w);
int tame_selector_job_load(struct tame_rbuf *r, const struct tame_params *p, struct tame_selector_job **ret);
/* All three in a row, on this thread. */
int tame_learner_train_selector(struct tame_learner *l);

/* ---- published snapshots and prediction ---- */
struct tame_snapshot;
/* An immutable copy of what prediction needs (experts, their label sets and
 * the selector).  Any number of threads may predict from one snapshot.
 * Networks that did not change since the learner's last snapshot are
 * shared with it, not copied again (the learner keeps a reference). */
int tame_learner_snapshot(struct tame_learner *l, struct tame_snapshot **ret);
void tame_snapshot_free(struct tame_snapshot *s);
int tame_snapshot_experts(const struct tame_snapshot *s);
int tame_snapshot_classes(const struct tame_snapshot *s);
/* Non-zero parameters of all experts, and of the selector. */
void tame_snapshot_nonzero(const struct tame_snapshot *s, size_t *ret_experts,
                           size_t *ret_selector);

struct tame_prediction {
    int label;          /* argmax over the labels the expert trained on */
    int expert;         /* the routed expert */
    float confidence;   /* the selector's probability for that expert (1 if no selector) */
};
/* Per-thread scratch space for predictions, for up to max_rows per chunk. */
struct tame_predict_work;
int tame_predict_work_new(const struct tame_snapshot *s, int max_rows,
                          struct tame_predict_work **ret);
void tame_predict_work_free(struct tame_predict_work *w);
/* Can `w` serve predictions of `rows` rows from `s` (same expert shapes)?
 * Lets a thread keep one workspace across requests and snapshots. */
bool tame_predict_work_fits(const struct tame_predict_work *w, const struct tame_snapshot *s, int rows);
/* Route and predict n rows of x.  `expert` < 0 routes through the selector
 * (or, without one, to the active expert); >= 0 forces that expert.
 * out[n]; probs, if not NULL, [n x classes]: the expert's probabilities
 * restricted to its labels (renormalised).  The snapshot is not changed. */
int tame_snapshot_predict(const struct tame_snapshot *s, struct tame_predict_work *w,
                          const float *x, int n, int expert, struct tame_prediction *out,
                          float *probs);

/* ---- persistence ----
 * The whole learner (experts, masks, optimiser and detector state, buffers,
 * selector, RNG, counters, pending events) as one checksummed blob; loading
 * and continuing gives exactly the future a never-saved learner would. */
void tame_learner_save(const struct tame_learner *l, struct tame_wbuf *w);
/* The parts of that blob, for a store that keeps them apart: parameters and
 * events (no magic or CRC of their own; a reader checks r->err, and
 * tame_params_validate the parameters). */
void tame_params_save(const struct tame_params *p, struct tame_wbuf *w);
void tame_params_load(struct tame_rbuf *r, struct tame_params *p);
void tame_event_save(const struct tame_event *e, struct tame_wbuf *w);
void tame_event_load(struct tame_rbuf *r, struct tame_event *e);
int tame_learner_load(struct tame_rbuf *r, struct tame_learner **ret);

#endif
