/*
 * serve.h: the models a daemon serves, between HTTP and the engine.
 *
 * Data flows one way: a request appends samples to a model's queue (in
 * acknowledged order); a pool of learner workers, sized to the cores, takes
 * a model with a full batch, steps its learner (only the worker holding a
 * model touches its learner), and publishes an immutable, reference-counted
 * view (prediction snapshot, learner info, events); predictions read the
 * latest view and never wait for training.  Selector training runs on its
 * own thread on a copy of the buffer and is installed by the next worker
 * that holds the model.  Durability (store/) will sit between the queue and
 * the acknowledgement; for now the queue is memory.
 */
#ifndef TAME_SERVE_H
#define TAME_SERVE_H

#include "tame/tame.h"

#define SERVE_NAME_MAX 64

struct serve_config {
    int workers;               /* learner threads, >= 1 */
    int queue_samples;         /* per-model queue capacity, samples */
    int models_max;            /* models per daemon */
    int step_threads;          /* threads per learner step (1 or 2) */
};

struct serve;
struct serve_model;

/* A published view of a model: immutable once published; hold a reference
 * while reading it. */
struct serve_view {
    struct tame_snapshot *snap;        /* NULL before the first batch */
    struct tame_info info;
    int n_experts;
    struct tame_expert_info experts[TAME_MAX_EXPERTS]; /* .labels points into labels */
    uint8_t *labels;                   /* [n_experts x classes] */
};

int serve_new(const struct serve_config *cfg, struct serve **ret);
/* Stop: with drain, every queued sample is trained first (partial batches
 * flushed).  Then the threads end.  Idempotent. */
void serve_stop(struct serve *s, bool drain);
void serve_free(struct serve *s);

/* TAME_E_EXIST, TAME_E_LIMIT (models_max), TAME_E_RANGE (params), TAME_E_NOMEM. */
int serve_create(struct serve *s, const char *name, const struct tame_params *p);
int serve_delete(struct serve *s, const char *name);
/* A model with a reference held (serve_put), or NULL. */
struct serve_model *serve_get(struct serve *s, const char *name);
void serve_put(struct serve_model *m);
/* Names of all models, sorted; caller frees the array and the strings with free(). */
int serve_names(struct serve *s, char ***ret_names, int *ret_n);

const char *serve_model_name(const struct serve_model *m);
const struct tame_params *serve_model_params(const struct serve_model *m);
/* Append n samples (all or none).  TAME_E_BUSY if the queue cannot take
 * them.  *ret_acked: samples acknowledged so far, after these. */
int serve_append(struct serve_model *m, const float *x, const int *y, int n, uint64_t *ret_acked);
/* Train the queued partial batch as soon as a worker is free. */
void serve_flush(struct serve_model *m);
/* Retrain the selector now on the current buffer (when it has >= 2 experts),
 * whether or not a retrain is due; it is installed when done. */
void serve_retrain_selector(struct serve_model *m);

struct serve_counters {
    uint64_t acknowledged;     /* samples accepted */
    uint64_t queued;           /* waiting for a worker */
    uint64_t predictions;      /* rows predicted */
    uint64_t events;           /* events recorded */
    uint64_t by_kind[TAME_EV_PRUNE + 1]; /* events per tame_event_kind */
};
void serve_counters(struct serve_model *m, struct serve_counters *c);
void serve_count_predictions(struct serve_model *m, uint64_t rows);

/* The latest view, referenced; release with serve_view_put. */
struct serve_view *serve_view_get(struct serve_model *m);
void serve_view_put(struct serve_view *v);

/* Events with seq >= from, at most limit; copies into *ret (free()).
 * *ret_next: seq to ask for next, or UINT64_MAX if there are no more yet. */
int serve_events(struct serve_model *m, uint64_t from, int limit, struct tame_event **ret, size_t *ret_n,
                 uint64_t *ret_next);

#endif
