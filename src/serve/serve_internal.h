/* serve_internal.h: what serve.c (registry, workers, selector thread),
 * commit.c (group commit) and recover.c (loading and replay) share.
 *
 * Locks: `s->mu` guards the registry and the scheduling flags of every model
 * (busy); `m->mu` guards a model's queue, view pointer, events, counters and
 * selector hand-offs; `s->commit_mu` guards the list of requests to commit
 * and who leads.
 * Order: s->mu before m->mu; commit_mu is never held with either. */
#ifndef TAME_SERVE_INTERNAL_H
#define TAME_SERVE_INTERNAL_H

#include "serve.h"
#include "store/store.h"

#include <pthread.h>
#include <stdatomic.h>

#define TAKE_BATCHES 8 /* batches a worker trains per round before publishing */

/* Queue items: a sample (y >= 0) or a mark from the log. */
#define ITEM_FLUSH (-1)
#define ITEM_SELECTOR (-2)

struct serve_job {
    struct tame_selector_job *job;
    struct serve_model *m; /* referenced */
    bool failed;
    struct serve_job *next;
};

struct serve_model {
    char name[SERVE_NAME_MAX + 1];
    int64_t id; /* in the store */
    struct tame_params p;
    struct serve *s;
    atomic_int refs; /* registry + requests + workers + jobs */
    /* guarded by s->mu */
    bool busy;
    double retry_at, retry_pause; /* after a failed round: not before then (0: no failure) */
    /* guarded by mu */
    pthread_mutex_t mu;
    pthread_cond_t room_cv;  /* the queue has room (the replay waits on it) */
    float *qx;               /* ring of items [q_cap x input_dim] */
    int *qy;                 /* label, or ITEM_FLUSH / ITEM_SELECTOR */
    int q_head, q_len, q_cap;
    int q_reserved;          /* slots promised to requests being committed */
    int q_samples, q_marks;  /* what q_len holds */
    uint64_t q_pos;          /* log position of the head item = items consumed */
    uint64_t acknowledged, duplicates, predictions;
    uint64_t queue_waits, queue_full; /* writes that waited for room; that were refused */
    uint64_t step_failures;  /* learner rounds that failed (out of memory) and will be retried */
    bool replaying;          /* its log is being replayed: no appends yet */
    bool deleted;
    uint64_t by_kind[TAME_EV_PRUNE + 1];
    struct serve_view_ref *view;
    struct tame_event *events;
    size_t n_events, events_cap;
    uint64_t events_stored;  /* events [0, events_stored) are in the store */
    struct serve_job *done_head, *done_tail; /* trained selectors, in order */
    int jobs_out;            /* selector jobs taken and not yet installed... */
    struct tame_selector_job **out; /* ...in the order taken (inputs read-only) */
    int out_cap;
    uint64_t batches;        /* learner batches after the last round */
    uint64_t ckpt_pos, ckpt_batches, checkpoints;
    double ckpt_time, ckpt_retry;
    /* owned by the committing leader */
    uint64_t log_end;        /* next free log position */
    bool deleting;
    bool trim_pending;       /* garbage below the checkpoint to delete */
    uint64_t trim_log, trim_ids; /* log records before, sample ids before */
    /* owned by the busy worker (or by the loader before the model is listed) */
    struct tame_learner *learner;
};

struct serve_view_ref {
    struct serve_view view;
    atomic_int refs;
};

/* ---- requests to commit ---- */
enum op_kind { OP_SAMPLES, OP_MARK, OP_CREATE, OP_DELETE, OP_CHECKPOINT };

struct op {
    enum op_kind kind;
    struct serve_model *m;
    /* OP_SAMPLES */
    const float *x;
    const int *y;
    const char *const *ids;
    const size_t *id_lens;
    int n;
    uint8_t *dup;            /* [n], set when committed */
    int kept;
    /* OP_MARK */
    enum store_kind mark;
    /* OP_CREATE: params; OP_CHECKPOINT: learner state, then events */
    struct tame_wbuf blob;
    uint64_t pos;            /* checkpoint: items consumed; samples: first position */
    size_t state_len;        /* checkpoint: the state is blob[0, state_len) */
    size_t n_ev;             /* checkpoint: events, each at ev_off[i] .. ev_off[i + 1] */
    uint64_t ev_seq0;
    size_t *ev_off;
    /* result */
    int rc;
    bool done;
    uint64_t acked;          /* samples/marks: acknowledged after it */
    struct op *next;
};

struct serve {
    struct serve_config cfg;
    struct store *store;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;  /* a model may have work; or stopping */
    struct serve_model **models;
    int n_models, models_cap;
    bool stopping, draining, stopped;
    int rr;                  /* round-robin start */
    atomic_int test_nomem_left; /* tests only: steps still to fail (serve_config.test_step_nomem) */
    pthread_t *workers;
    int n_workers;
    pthread_mutex_t create_mu; /* one create or delete at a time */
    /* selector thread (guarded by mu) */
    pthread_t sel_thread;
    bool sel_started, sel_stop;
    pthread_cond_t sel_cv;
    struct serve_job *sel_head, *sel_tail;
    /* group commit (guarded by commit_mu) */
    pthread_t probe_thread;  /* retries a failed database, trims when idle */
    bool leader;             /* a thread is committing (it owns the write connection) */
    bool commit_started, commit_stop;
    pthread_mutex_t commit_mu;
    pthread_cond_t probe_cv, commit_done_cv;
    struct op *ops_head, *ops_tail;
    struct serve_store_stats stats;
    /* WAL folding (guarded by commit_mu) */
    pthread_t fold_thread;
    bool fold_started, fold_due;
    pthread_cond_t fold_cv;
    /* replay */
    pthread_t load_thread;
    bool load_started;
    atomic_int replaying;    /* models still replaying */
    atomic_int queue_waiters; /* writes waiting for room in a full queue */
    atomic_bool load_stop;
};

/* commit.c */
int serve_commit_start(struct serve *s);
void serve_commit_stop(struct serve *s);
/* Queue op and return once it is committed, leading the commit if no one
 * else does (op->rc). */
int serve_commit(struct serve *s, struct op *op);

/* serve.c */
void serve_kick(struct serve *s);
bool serve_has_work_locked(const struct serve_model *m);
struct serve_model *serve_model_alloc(struct serve *s, const char *name, const struct tame_params *p);
void serve_model_register_locked(struct serve *s, struct serve_model *m);
struct serve_view_ref *serve_view_build(struct tame_learner *l, int classes);
void serve_append_events_locked(struct serve_model *m, const struct tame_event *ev, size_t n);
/* Params in the store: a version word, then tame_params_save. */
void serve_params_save(const struct tame_params *p, struct tame_wbuf *w);
int serve_params_load(const void *b, size_t len, struct tame_params *p);

/* Queue a taken job for the selector thread (the caller holds the model). */
void serve_queue_job(struct serve *s, struct serve_model *m, struct tame_selector_job *job);
/* Checkpoint blobs: the learner, then the selector jobs in flight. */
void serve_checkpoint_save(struct serve_model *m, struct tame_wbuf *w);
int serve_checkpoint_load(struct serve *s, struct serve_model *m, const void *b, size_t len);

/* recover.c */
int serve_recover(struct serve *s, char *why, size_t why_len);
void serve_recover_stop(struct serve *s);

#endif
