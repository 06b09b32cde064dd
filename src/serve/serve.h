/*
 * serve.h: the models a daemon serves, between HTTP and the engine.
 *
 * Data flows one way: a request's samples are committed to the sample log
 * (store/) by group commit (one thread at a time commits every request
 * queued, in one transaction), and only then appended to the model's queue
 * and acknowledged.  A pool of learner workers, sized to the cores, takes a model
 * with a full batch, steps its learner (only the worker holding a model
 * touches its learner), and publishes an immutable, reference-counted view
 * (prediction snapshot, learner info, events); predictions read the latest
 * view and never wait for training.  Selector training runs on its own thread
 * on a copy of the buffer and is installed by the next worker that holds the
 * model.  Every so many batches or seconds the worker checkpoints the learner
 * and the log before it is dropped.  At start every model is loaded from its
 * checkpoint and its log replayed through the same queue and workers, so the
 * learner is a function of its log: killed and recovered, it ends where it
 * would have.
 */
#ifndef TAME_SERVE_H
#define TAME_SERVE_H

#include "tame/tame.h"

#define SERVE_NAME_MAX 64

struct store;

struct serve_config {
    int workers;               /* learner threads, >= 1 */
    int queue_samples;         /* per-model queue capacity, samples */
    int queue_wait_ms;         /* a write waits this long for room in a full queue, then TAME_E_BUSY */
    int queue_waiters_max;     /* ...if fewer writes than this are waiting already (else at once) */
    int models_max;            /* models per daemon */
    int step_threads;          /* threads per learner step (1 or 2) */
    const char *db_path;       /* the database (a reader is opened to replay) */
    struct store *store;       /* the writer connection; serve owns it from serve_new on */
    uint64_t checkpoint_batches; /* checkpoint a model after this many batches... */
    double checkpoint_seconds; /* ...or this long after its last one, if it changed */
    uint64_t ids_keep;         /* remember sample ids of at least this many last items */
    int synchronous;           /* SQLite's synchronous level in force (1 NORMAL, 2 FULL), for metrics */
    int test_checkpoint_pause_ms; /* tests only: stall inside each checkpoint transaction */
    int test_step_pause_ms;    /* tests only: stall each learner round before it trains */
    int test_step_nomem;       /* tests only: the first this many steps fail as out of memory */
    int train_nice;            /* nice of the learner workers (0..19) */
    int selector_nice;         /* nice of the selector thread (0..19) */
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

/* Start the threads and load every model of the store (its log replays in
 * the background; serve_ready says when it is done).  On failure *why says
 * what is wrong (a corrupt checkpoint names its model). */
int serve_new(const struct serve_config *cfg, struct serve **ret, char *why, size_t why_len);
/* Stop: with drain, every full batch queued is trained, pending selector
 * jobs installed and every model checkpointed (a partial batch stays in the
 * log, to be trained with the samples that complete it after a restart).
 * Then the threads end.  Idempotent. */
void serve_stop(struct serve *s, bool drain);
/* Ready: every model replayed and the database writable.  *why when not. */
bool serve_ready(struct serve *s, const char **why);
void serve_free(struct serve *s);

/* TAME_E_EXIST, TAME_E_LIMIT (models_max), TAME_E_RANGE (params), TAME_E_NOMEM,
 * TAME_E_UNAVAIL (not persisted). */
int serve_create(struct serve *s, const char *name, const struct tame_params *p);
int serve_delete(struct serve *s, const char *name);
/* A model with a reference held (serve_put), or NULL. */
struct serve_model *serve_get(struct serve *s, const char *name);
void serve_put(struct serve_model *m);
/* Names of all models, sorted; caller frees the array and the strings with free(). */
int serve_names(struct serve *s, char ***ret_names, int *ret_n);

const char *serve_model_name(const struct serve_model *m);
const struct tame_params *serve_model_params(const struct serve_model *m);
/* Append n samples (all or none), durably: returns once they are committed
 * to the log and queued.  ids[i] (NULL, or id_lens[i] bytes) names a sample;
 * one seen before (in this request or any earlier one) is a duplicate,
 * acknowledged but not logged or trained again.  TAME_E_BUSY if the queue
 * cannot take them, TAME_E_UNAVAIL if they could not be persisted (or the
 * model is still replaying its log).  *ret_dups counts duplicates;
 * *ret_acked: samples acknowledged so far, after these. */
int serve_append(struct serve_model *m, const float *x, const int *y, const char *const *ids,
                 const size_t *id_lens, int n, int *ret_dups, uint64_t *ret_acked);
/* Train the queued partial batch now (a mark in the log, so a replay cuts
 * its batches in the same places). */
int serve_flush(struct serve_model *m);
/* Flush, then retrain the selector on the buffer (when it has >= 2 experts),
 * whether or not a retrain is due; it is installed when done. */
int serve_retrain_selector(struct serve_model *m);

struct serve_counters {
    uint64_t acknowledged;     /* samples accepted (durable) */
    uint64_t duplicates;       /* samples acknowledged as duplicates since start */
    uint64_t checkpoint_pos;   /* items covered by the last checkpoint */
    uint64_t checkpoints;      /* checkpoints written since start */
    bool replaying;            /* still replaying its log */
    int selector_pending;      /* selector jobs taken, not yet installed */
    uint64_t queued;           /* waiting for a worker */
    uint64_t predictions;      /* rows predicted */
    uint64_t queue_waits;      /* writes that found the queue full and waited for room */
    uint64_t queue_full;       /* writes refused (TAME_E_BUSY): still no room after the wait */
    uint64_t step_failures;    /* learner rounds that failed (out of memory), their batch kept queued */
    uint64_t events;           /* events recorded */
    uint64_t by_kind[TAME_EV_PRUNE + 1]; /* events per tame_event_kind */
};
void serve_counters(struct serve_model *m, struct serve_counters *c);
void serve_count_predictions(struct serve_model *m, uint64_t rows);

struct serve_store_stats {
    uint64_t commits, commit_failures, requests_committed;
    double commit_seconds;     /* total time in committed transactions */
    uint64_t checkpoints, checkpoint_bytes;
    double checkpoint_seconds;
    bool degraded;             /* the last write failed */
    int replaying;             /* models still replaying their log */
    int synchronous;
};
void serve_store_stats(struct serve *s, struct serve_store_stats *st);

/* The latest view, referenced; release with serve_view_put. */
struct serve_view *serve_view_get(struct serve_model *m);
void serve_view_put(struct serve_view *v);

/* Events with seq >= from, at most limit; copies into *ret (free()).
 * *ret_next: seq to ask for next, or UINT64_MAX if there are no more yet. */
int serve_events(struct serve_model *m, uint64_t from, int limit, struct tame_event **ret, size_t *ret_n,
                 uint64_t *ret_next);

#endif
