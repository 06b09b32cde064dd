/* commit.c: group commit.  One thread at a time, the leader, owns the
 * store's write connection.  Requests queue up while it commits; it takes
 * them all, runs each inside its own savepoint of one BEGIN IMMEDIATE
 * transaction, commits once, and only then applies them in memory (queue,
 * registry) and wakes their threads.  So an acknowledgement always follows a
 * commit, concurrent requests share one commit, and the queue order is the
 * log order.  Beside it: a prober that notices when a failed database is
 * writable again, and a thread that folds the WAL back into the database so
 * commits never do. */
#include "serve_internal.h"
#include "logcodec.h"

#include "tame/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FOLD_FRAMES 256 /* 16 MiB of 64 KiB pages */

/* ---- inside the transaction ---- */

static int do_samples(struct serve *s, struct op *op)
{
    struct serve_model *m = op->m;
    const int d = m->p.input_dim;
    op->pos = m->log_end;
    op->kept = 0;
    for (int i = 0; i < op->n; i++) {
        op->dup[i] = 0;
        if (op->ids && op->ids[i]) {
            int fresh = store_id_claim(s->store, m->id, op->ids[i], op->id_lens[i], op->pos + (uint64_t)op->kept);
            if (fresh < 0) return fresh;
            op->dup[i] = !fresh;
        }
        op->kept += !op->dup[i];
    }
    if (op->kept == 0) return 0;
    const float *x = op->x;
    const int *y = op->y;
    float *cx = NULL;
    int32_t *cy = NULL;
    if (op->kept < op->n) { /* log only the new ones, contiguous */
        cx = malloc((size_t)op->kept * d * sizeof(float));
        cy = malloc((size_t)op->kept * sizeof(int32_t));
        if (!cx || !cy) {
            free(cx);
            free(cy);
            return TAME_E_NOMEM;
        }
        for (int i = 0, k = 0; i < op->n; i++)
            if (!op->dup[i]) {
                memcpy(cx + (size_t)k * d, op->x + (size_t)i * d, (size_t)d * sizeof(float));
                cy[k++] = op->y[i];
            }
        x = cx;
        y = cy;
    }
    /* x as logcodec.h says; y little-endian int32, the layout in memory on
     * every target tamed builds for (x86-64, aarch64). */
    struct tame_wbuf enc;
    tame_wbuf_init(&enc);
    log_x_encode(x, (size_t)op->kept * d, &enc);
    int rc = enc.err ? enc.err
                     : store_log_append(s->store, m->id, op->pos, STORE_SAMPLES, (uint32_t)op->kept, enc.data, enc.len,
                                        y, (size_t)op->kept * sizeof(int32_t));
    tame_wbuf_done(&enc);
    free(cx);
    free(cy);
    if (!rc) m->log_end += (uint64_t)op->kept;
    return rc;
}

static int do_op(struct serve *s, struct op *op)
{
    struct serve_model *m = op->m;
    if (m && (m->deleting || m->deleted) && op->kind != OP_CREATE) return TAME_E_NOTFOUND;
    switch (op->kind) {
    case OP_SAMPLES: return do_samples(s, op);
    case OP_MARK: {
        op->pos = m->log_end;
        int rc = store_log_append(s->store, m->id, op->pos, op->mark, 1, NULL, 0, NULL, 0);
        if (!rc) m->log_end++;
        return rc;
    }
    case OP_CREATE: return store_model_create(s->store, m->name, op->blob.data, op->blob.len, &m->id);
    case OP_DELETE: {
        int rc = store_model_delete(s->store, m->id);
        if (!rc) m->deleting = true;
        return rc;
    }
    case OP_CHECKPOINT: {
        int rc = store_checkpoint_put(s->store, m->id, op->pos, op->blob.data, op->state_len);
        for (size_t i = 0; !rc && i < op->n_ev; i++)
            rc = store_event_put(s->store, m->id, op->ev_seq0 + i, op->blob.data + op->ev_off[i],
                                 op->ev_off[i + 1] - op->ev_off[i]);
        if (!rc && s->cfg.test_checkpoint_pause_ms > 0) {
            /* Fault injection for the tests: a kill now lands inside the
             * transaction, after the new state is written, before COMMIT. */
            TAME_LOG(TAME_LOG_WARN, "checkpoint paused before commit (test hook)", "model=%s pos=%llu", m->name,
                     (unsigned long long)op->pos);
            usleep((useconds_t)s->cfg.test_checkpoint_pause_ms * 1000);
        }
        return rc;
    }
    }
    return TAME_E_INVAL;
}

/* ---- after the commit ---- */

static void apply(struct serve *s, struct op *op)
{
    struct serve_model *m = op->m;
    switch (op->kind) {
    case OP_SAMPLES:
    case OP_MARK: {
        const int d = m->p.input_dim;
        int n = op->kind == OP_MARK ? 1 : op->n;
        /* The slots past the queue's tail were reserved for this op, and
         * only the commit leader (this thread) writes there; the worker reads
         * up to q_len alone.  So they are filled unlocked -- a 128 x 784
         * request is 400 KB to copy, which predictions taking a view of this
         * model would otherwise wait for -- and published under the lock. */
        pthread_mutex_lock(&m->mu);
        int tail = (m->q_head + m->q_len) % m->q_cap;
        pthread_mutex_unlock(&m->mu);
        int added = 0, samples = 0;
        for (int i = 0; i < n; i++) {
            if (op->kind == OP_SAMPLES && op->dup[i]) continue;
            int slot = (tail + added++) % m->q_cap;
            if (op->kind == OP_MARK) {
                m->qy[slot] = op->mark == STORE_FLUSH ? ITEM_FLUSH : ITEM_SELECTOR;
            } else {
                memcpy(m->qx + (size_t)slot * d, op->x + (size_t)i * d, (size_t)d * sizeof(float));
                m->qy[slot] = op->y[i];
                samples++;
            }
        }
        pthread_mutex_lock(&m->mu);
        m->q_len += added;
        m->q_samples += samples;
        m->q_marks += added - samples;
        m->acknowledged += (uint64_t)samples;
        m->q_reserved -= n;
        if (op->kind == OP_SAMPLES) m->duplicates += (uint64_t)(op->n - op->kept);
        op->acked = m->acknowledged;
        bool ready = serve_has_work_locked(m);
        pthread_mutex_unlock(&m->mu);
        if (ready) serve_kick(s);
        break;
    }
    case OP_CREATE:
        pthread_mutex_lock(&s->mu);
        serve_model_register_locked(s, m);
        pthread_mutex_unlock(&s->mu);
        break;
    case OP_DELETE:
        pthread_mutex_lock(&s->mu);
        for (int i = 0; i < s->n_models; i++)
            if (s->models[i] == m) {
                s->models[i] = s->models[--s->n_models];
                break;
            }
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_lock(&m->mu);
        m->deleted = true;
        pthread_cond_broadcast(&m->room_cv);
        pthread_mutex_unlock(&m->mu);
        serve_put(m); /* the registry's reference */
        break;
    case OP_CHECKPOINT:
        m->trim_pending = true;
        m->trim_log = op->pos;
        m->trim_ids = op->pos > s->cfg.ids_keep ? op->pos - s->cfg.ids_keep : 0;
        pthread_mutex_lock(&m->mu);
        m->ckpt_pos = op->pos;
        m->events_stored = op->ev_seq0 + op->n_ev;
        m->checkpoints++;
        pthread_mutex_unlock(&m->mu);
        break;
    }
}

/* Undo what do_op changed in memory when its savepoint or the commit is
 * rolled back. */
static void undo(struct op *op, uint64_t log_end)
{
    if (op->kind == OP_SAMPLES || op->kind == OP_MARK) op->m->log_end = log_end;
    if (op->kind == OP_DELETE) op->m->deleting = false;
}

static void set_degraded(struct serve *s, bool degraded, const char *why)
{
    pthread_mutex_lock(&s->commit_mu);
    bool was = s->stats.degraded;
    s->stats.degraded = degraded;
    pthread_mutex_unlock(&s->commit_mu);
    if (degraded && !was)
        TAME_LOG(TAME_LOG_ERROR, "database not writable: acknowledging nothing until it is", "error=\"%s\"", why);
    else if (!degraded && was)
        TAME_LOG(TAME_LOG_INFO, "database writable again", "%s", "");
}

/* Delete a little of what checkpoints left behind (log records below the
 * checkpoint, old sample ids), riding along in a transaction that commits
 * anyway, in its own savepoint: never one large delete that stalls every
 * request. */
#define TRIM_RECORDS 4

static bool trim_pending(struct serve *s)
{
    bool any = false;
    pthread_mutex_lock(&s->mu);
    for (int k = 0; k < s->n_models && !any; k++) any = s->models[k]->trim_pending && !s->models[k]->deleting;
    pthread_mutex_unlock(&s->mu);
    return any;
}

static bool trim_some(struct serve *s)
{
    struct serve_model *m = NULL;
    pthread_mutex_lock(&s->mu);
    for (int k = 0; k < s->n_models && !m; k++)
        if (s->models[k]->trim_pending && !s->models[k]->deleting) m = s->models[k];
    if (m) atomic_fetch_add(&m->refs, 1);
    pthread_mutex_unlock(&s->mu);
    if (!m) return false;
    bool done = false;
    int rc = store_savepoint(s->store);
    if (!rc) rc = store_trim(s->store, m->id, m->trim_log, m->trim_ids, TRIM_RECORDS, &done);
    if (!rc) rc = store_release(s->store);
    if (rc) store_rollback_to(s->store);
    else if (done) m->trim_pending = false;
    serve_put(m);
    return rc == 0;
}

static void commit_batch(struct serve *s, struct op *ops)
{
    double t0 = tame_now_s();
    size_t n_ops = 0;
    for (struct op *op = ops; op; op = op->next) n_ops++;
    struct op **list = malloc(n_ops * sizeof(*list));
    uint64_t *ends = malloc(n_ops * sizeof(*ends)); /* each op's model's log_end before it */
    int rc = list && ends ? store_begin(s->store) : TAME_E_NOMEM;
    size_t ok_ops = 0, k = 0;
    for (struct op *op = ops; op; op = op->next, k++) {
        if (list) list[k] = op;
        if (rc) {
            op->rc = rc;
            continue;
        }
        ends[k] = op->m ? op->m->log_end : 0;
        int r = store_savepoint(s->store);
        if (!r) r = do_op(s, op);
        if (!r) r = store_release(s->store);
        if (r) {
            store_rollback_to(s->store);
            if (op->m) undo(op, ends[k]);
            /* The disk failing fails the transaction, not just this request. */
            if (r == TAME_E_UNAVAIL || r == TAME_E_NOMEM || r == TAME_E_IO) rc = r;
        }
        op->rc = r;
        ok_ops += !r;
    }
    if (!rc) trim_some(s);
    if (!rc) rc = store_commit(s->store);
    if (rc) {
        const char *why = store_errmsg(s->store);
        store_rollback(s->store);
        /* In reverse, so each model's log_end returns to its value before
         * the batch. */
        for (size_t j = list ? n_ops : 0; j-- > 0;) {
            if (!list[j]->rc && list[j]->m) undo(list[j], ends[j]);
            if (!list[j]->rc) list[j]->rc = rc;
        }
        if (rc == TAME_E_UNAVAIL || rc == TAME_E_IO) set_degraded(s, true, why);
        ok_ops = 0;
    } else {
        set_degraded(s, false, NULL);
        for (struct op *op = ops; op; op = op->next)
            if (!op->rc) apply(s, op);
    }
    free(list);
    free(ends);
    double dt = tame_now_s() - t0;
    pthread_mutex_lock(&s->commit_mu);
    if (rc) {
        s->stats.commit_failures++;
    } else {
        s->stats.commits++;
        s->stats.requests_committed += ok_ops;
        s->stats.commit_seconds += dt;
    }
    for (struct op *op = ops; op; op = op->next) op->done = true;
    pthread_cond_broadcast(&s->commit_done_cv);
    /* Fold in 16 MiB steps: each fold syncs the database file. */
    if (!rc && store_wal_frames(s->store) >= FOLD_FRAMES) {
        s->fold_due = true;
        pthread_cond_signal(&s->fold_cv);
    }
    pthread_mutex_unlock(&s->commit_mu);
}

/* ---- folding the WAL back, beside the commits ---- */

#define FOLD_RESTART_FRAMES 1024 /* 64 MiB of 64 KiB pages: start the WAL over */

static void *fold_main(void *arg)
{
    struct serve *s = arg;
    tame_thread_setup("wal-fold", 0);
    struct store *st = NULL;
    struct store_options o = {.no_verify = true, .manual_wal = true, .busy_ms = 100};
    pthread_mutex_lock(&s->commit_mu);
    while (!s->commit_stop) {
        if (!s->fold_due) {
            tame_cond_wait_s(&s->fold_cv, &s->commit_mu, 1);
            continue;
        }
        s->fold_due = false;
        pthread_mutex_unlock(&s->commit_mu);
        char why[256];
        if (!st && store_open(s->cfg.db_path, &o, &st, why, sizeof(why)) != 0) st = NULL;
        if (st && !store_writable(st)) { /* opened while read-only: try again later */
            store_close(st);
            st = NULL;
        }
        int frames = 0, folded = 0;
        if (st && store_wal_fold(st, false, &frames, &folded) == 0 && frames >= FOLD_RESTART_FRAMES)
            store_wal_fold(st, true, &frames, &folded);
        usleep(20000);
        pthread_mutex_lock(&s->commit_mu);
    }
    pthread_mutex_unlock(&s->commit_mu);
    if (st) store_close(st);
    return NULL;
}

/* The prober: while the database is not writable, try a one-row write
 * (or reopen a read-only file) every second, as a leader, so readiness
 * returns without waiting for a client to find out. */
static void *probe_main(void *arg)
{
    struct serve *s = arg;
    tame_thread_setup("db-prober", 0);
    pthread_mutex_lock(&s->commit_mu);
    while (!s->commit_stop) {
        tame_cond_wait_s(&s->probe_cv, &s->commit_mu, 1);
        if (s->commit_stop || s->leader || s->ops_head) continue;
        s->leader = true;
        bool degraded = s->stats.degraded;
        pthread_mutex_unlock(&s->commit_mu);
        /* Idle: clear some garbage the checkpoints left.  When the
         * database is full, that may be what frees the space (a
         * --db-max-mb cap: deletes go to the WAL and the freed pages are
         * reused), so it comes before the probe. */
        if (store_writable(s->store) && trim_pending(s) && store_begin(s->store) == 0) {
            for (int k = 0; k < 8 && trim_some(s);) k++;
            if (store_commit(s->store)) store_rollback(s->store);
        }
        if (degraded) {
            int rc = store_writable(s->store) ? store_probe(s->store) : store_reopen(s->store);
            if (!rc) set_degraded(s, false, NULL);
        }
        pthread_mutex_lock(&s->commit_mu);
        s->leader = false;
        pthread_cond_broadcast(&s->commit_done_cv);
    }
    pthread_mutex_unlock(&s->commit_mu);
    return NULL;
}

/* Leader/follower group commit: a request that finds no leader commits
 * everything queued in one transaction, the others wait for it and the next
 * of them leads; no hand-off to another thread on the way to the
 * acknowledgement. */
int serve_commit(struct serve *s, struct op *op)
{
    op->done = false;
    op->next = NULL;
    pthread_mutex_lock(&s->commit_mu);
    if (!s->commit_started || s->commit_stop) {
        pthread_mutex_unlock(&s->commit_mu);
        return op->rc = TAME_E_UNAVAIL;
    }
    if (s->ops_tail) s->ops_tail->next = op;
    else s->ops_head = op;
    s->ops_tail = op;
    while (!op->done) {
        if (s->leader) {
            pthread_cond_wait(&s->commit_done_cv, &s->commit_mu);
            continue;
        }
        /* One transaction, with everything queued (this op included), then
         * leadership passes on: a request never carries later ones. */
        s->leader = true;
        struct op *ops = s->ops_head;
        s->ops_head = s->ops_tail = NULL;
        pthread_mutex_unlock(&s->commit_mu);
        commit_batch(s, ops); /* marks them done */
        pthread_mutex_lock(&s->commit_mu);
        s->leader = false;
        pthread_cond_broadcast(&s->commit_done_cv);
    }
    pthread_mutex_unlock(&s->commit_mu);
    return op->rc;
}

int serve_commit_start(struct serve *s)
{
    if (!store_writable(s->store)) {
        s->stats.degraded = true;
        TAME_LOG(TAME_LOG_ERROR, "database is read-only: serving predictions, refusing samples until it is writable",
                 "db=%s", s->cfg.db_path);
    }
    if (pthread_create(&s->probe_thread, NULL, probe_main, s) != 0) return TAME_E_NOMEM;
    s->commit_started = true;
    if (pthread_create(&s->fold_thread, NULL, fold_main, s) == 0) s->fold_started = true;
    return 0;
}

void serve_commit_stop(struct serve *s)
{
    if (!s->commit_started) return;
    pthread_mutex_lock(&s->commit_mu);
    s->commit_stop = true;
    pthread_cond_broadcast(&s->probe_cv);
    while (s->leader) pthread_cond_wait(&s->commit_done_cv, &s->commit_mu);
    pthread_mutex_unlock(&s->commit_mu);
    pthread_join(s->probe_thread, NULL);
    s->commit_started = false;
    if (s->fold_started) pthread_cond_broadcast(&s->fold_cv), pthread_join(s->fold_thread, NULL);
    s->fold_started = false;
}
