/* serve.c: see serve.h.  The registry, the published views, the learner
 * workers, the selector thread and checkpoints; group commit is in
 * commit.c and loading in recover.c (locks: serve_internal.h).  A model's
 * learner is touched only by the worker that set it busy. */
#include "serve_internal.h"

#include "tame/log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PARAMS_MAGIC 0x4d525054u /* "TPRM" */
#define PARAMS_VERSION 1u

/* ---- views ---- */

static void view_free(struct serve_view_ref *v)
{
    tame_snapshot_free(v->view.snap);
    free(v->view.labels);
    free(v);
}

void serve_view_put(struct serve_view *v)
{
    if (!v) return;
    struct serve_view_ref *r = (struct serve_view_ref *)v;
    if (atomic_fetch_sub(&r->refs, 1) == 1) view_free(r);
}

struct serve_view *serve_view_get(struct serve_model *m)
{
    pthread_mutex_lock(&m->mu);
    struct serve_view_ref *r = m->view;
    atomic_fetch_add(&r->refs, 1);
    pthread_mutex_unlock(&m->mu);
    return &r->view;
}

/* Build a view of the learner (caller owns the learner). */
struct serve_view_ref *serve_view_build(struct tame_learner *l, int classes)
{
    struct serve_view_ref *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    atomic_init(&r->refs, 1);
    struct serve_view *v = &r->view;
    tame_learner_info(l, &v->info);
    v->n_experts = v->info.n_experts;
    /* The snapshot first: expert info reads the non-zero counts of the
     * frozen copies it makes (or shares) rather than counting again. */
    if (v->n_experts > 0 && tame_learner_snapshot(l, &v->snap) < 0) goto fail;
    v->labels = calloc((size_t)(v->n_experts ? v->n_experts : 1) * classes, 1);
    if (!v->labels) goto fail;
    for (int k = 0; k < v->n_experts; k++) {
        tame_learner_expert_info(l, k, &v->experts[k]);
        memcpy(v->labels + (size_t)k * classes, v->experts[k].labels, (size_t)classes);
        v->experts[k].labels = v->labels + (size_t)k * classes;
    }
    return r;
fail:
    view_free(r);
    return NULL;
}

/* ---- models ---- */

void serve_params_save(const struct tame_params *p, struct tame_wbuf *w)
{
    tame_wbuf_u32(w, PARAMS_MAGIC);
    tame_wbuf_u32(w, PARAMS_VERSION);
    tame_params_save(p, w);
}

int serve_params_load(const void *b, size_t len, struct tame_params *p)
{
    struct tame_rbuf r;
    tame_rbuf_init(&r, b, len);
    if (tame_rbuf_u32(&r) != PARAMS_MAGIC) return TAME_E_CORRUPT;
    if (tame_rbuf_u32(&r) != PARAMS_VERSION) return r.err ? TAME_E_CORRUPT : TAME_E_VERSION;
    tame_params_load(&r, p);
    if (r.err || tame_rbuf_left(&r) != 0 || tame_params_validate(p, NULL) < 0) return TAME_E_CORRUPT;
    return 0;
}

static void model_free(struct serve_model *m)
{
    tame_learner_free(m->learner);
    for (struct serve_job *j = m->done_head, *next; j; j = next) {
        next = j->next;
        free(j); /* its job is in out[] */
    }
    for (int i = 0; i < m->jobs_out; i++) tame_selector_job_free(m->out[i]);
    free(m->out);
    if (m->view) serve_view_put(&m->view->view);
    free(m->qx);
    free(m->qy);
    free(m->events);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->room_cv);
    free(m);
}

void serve_put(struct serve_model *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) model_free(m);
}

const char *serve_model_name(const struct serve_model *m) { return m->name; }
const struct tame_params *serve_model_params(const struct serve_model *m) { return &m->p; }

/* A model with a fresh learner and an empty queue, not yet listed; one
 * reference, the caller's. */
struct serve_model *serve_model_alloc(struct serve *s, const char *name, const struct tame_params *p)
{
    struct serve_model *m = calloc(1, sizeof(*m));
    if (!m) return NULL;
    snprintf(m->name, sizeof(m->name), "%s", name);
    m->p = *p;
    m->s = s;
    atomic_init(&m->refs, 1);
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->room_cv, NULL);
    m->q_cap = s->cfg.queue_samples;
    m->qx = malloc((size_t)m->q_cap * p->input_dim * sizeof(float));
    m->qy = malloc((size_t)m->q_cap * sizeof(int));
    m->ckpt_time = tame_now_s();
    if (!m->qx || !m->qy || tame_learner_new(p, &m->learner) < 0 ||
        tame_learner_set_threads(m->learner, s->cfg.step_threads) < 0 ||
        !(m->view = serve_view_build(m->learner, p->classes))) {
        serve_put(m);
        return NULL;
    }
    return m;
}

/* The registry takes the caller's reference. */
void serve_model_register_locked(struct serve *s, struct serve_model *m)
{
    if (s->n_models == s->models_cap) {
        int cap = s->models_cap ? 2 * s->models_cap : 8;
        struct serve_model **nm = realloc(s->models, (size_t)cap * sizeof(*nm));
        if (!nm) abort(); /* a few pointers; the model row is already committed */
        s->models = nm;
        s->models_cap = cap;
    }
    s->models[s->n_models++] = m;
}

static int find_model(const struct serve *s, const char *name)
{
    for (int i = 0; i < s->n_models; i++)
        if (!strcmp(s->models[i]->name, name)) return i;
    return -1;
}

int serve_create(struct serve *s, const char *name, const struct tame_params *p)
{
    if (strlen(name) > SERVE_NAME_MAX) return TAME_E_RANGE;
    int rc = tame_params_validate(p, NULL);
    if (rc < 0) return rc;
    pthread_mutex_lock(&s->create_mu);
    pthread_mutex_lock(&s->mu);
    rc = find_model(s, name) >= 0 ? TAME_E_EXIST
         : s->n_models >= s->cfg.models_max ? TAME_E_LIMIT
         : s->stopping ? TAME_E_UNAVAIL : 0;
    pthread_mutex_unlock(&s->mu);
    struct serve_model *m = rc ? NULL : serve_model_alloc(s, name, p);
    if (!rc && !m) rc = TAME_E_NOMEM;
    if (!rc) {
        struct op op = {.kind = OP_CREATE, .m = m};
        tame_wbuf_init(&op.blob);
        serve_params_save(p, &op.blob);
        rc = op.blob.err ? op.blob.err : serve_commit(s, &op); /* registers m */
        tame_wbuf_done(&op.blob);
        if (rc) serve_put(m);
    }
    pthread_mutex_unlock(&s->create_mu);
    return rc;
}

int serve_delete(struct serve *s, const char *name)
{
    pthread_mutex_lock(&s->create_mu);
    struct serve_model *m = serve_get(s, name);
    int rc = TAME_E_NOTFOUND;
    if (m) {
        struct op op = {.kind = OP_DELETE, .m = m};
        rc = serve_commit(s, &op); /* unlists m and drops the registry's reference */
        serve_put(m);
    }
    pthread_mutex_unlock(&s->create_mu);
    return rc;
}

struct serve_model *serve_get(struct serve *s, const char *name)
{
    pthread_mutex_lock(&s->mu);
    int i = find_model(s, name);
    struct serve_model *m = i >= 0 ? s->models[i] : NULL;
    if (m) atomic_fetch_add(&m->refs, 1);
    pthread_mutex_unlock(&s->mu);
    return m;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int serve_names(struct serve *s, char ***ret_names, int *ret_n)
{
    pthread_mutex_lock(&s->mu);
    int n = s->n_models;
    char **names = calloc((size_t)(n ? n : 1), sizeof(char *));
    for (int i = 0; names && i < n; i++) {
        names[i] = strdup(s->models[i]->name);
        if (!names[i]) {
            for (int j = 0; j < i; j++) free(names[j]);
            free(names);
            names = NULL;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (!names) return TAME_E_NOMEM;
    qsort(names, (size_t)n, sizeof(char *), cmp_str);
    *ret_names = names;
    *ret_n = n;
    return 0;
}

/* ---- ingestion ---- */

/* Something consumed since the last checkpoint, and checkpoint_batches
 * batches or checkpoint_seconds passed (not while a failed one backs off). */
static bool checkpoint_due_locked(const struct serve_model *m, double now)
{
    return m->q_pos > m->ckpt_pos && !m->deleted && now >= m->ckpt_retry &&
           (m->batches - m->ckpt_batches >= m->s->cfg.checkpoint_batches ||
            now - m->ckpt_time >= m->s->cfg.checkpoint_seconds);
}

bool serve_has_work_locked(const struct serve_model *m)
{
    return m->q_samples >= m->p.batch_size || m->q_marks > 0 || m->done_head ||
           checkpoint_due_locked(m, tame_now_s());
}

void serve_kick(struct serve *s)
{
    pthread_mutex_lock(&s->mu);
    pthread_cond_broadcast(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
}

/* Promise n queue slots to a request before it is committed, so the
 * committed samples always fit.  A full queue is usually a learner a step
 * or two behind (a spawn, a selector install, a checkpoint): the request,
 * already parsed, waits up to queue_wait_ms for room rather than being
 * refused at once and sent, and parsed, again.  A waiting write holds its
 * thread (a lane thread), so at most queue_waiters_max wait at a time: one
 * slow model must not hold up the writes of every other. */
static int reserve(struct serve_model *m, int n)
{
    struct serve *s = m->s;
    pthread_mutex_lock(&m->mu);
    struct timespec until;
    bool waited = false, timed_out = s->cfg.queue_wait_ms <= 0;
    int rc;
    for (;;) {
        /* Deleted meanwhile (a write waiting for room included): gone, as if
         * the request had come a moment later. */
        rc = m->deleted ? TAME_E_NOTFOUND : m->replaying ? TAME_E_UNAVAIL : 0;
        if (rc || m->q_len + m->q_reserved + n <= m->q_cap) break;
        if (n > m->q_cap || timed_out) {
            rc = TAME_E_BUSY;
            break;
        }
        if (!waited) {
            if (atomic_fetch_add(&s->queue_waiters, 1) >= s->cfg.queue_waiters_max) {
                atomic_fetch_sub(&s->queue_waiters, 1);
                rc = TAME_E_BUSY;
                break;
            }
            waited = true;
            m->queue_waits++;
            until = tame_deadline_ms(s->cfg.queue_wait_ms);
        }
        timed_out = pthread_cond_timedwait(&m->room_cv, &m->mu, &until) == ETIMEDOUT;
    }
    if (waited) atomic_fetch_sub(&s->queue_waiters, 1);
    if (rc == TAME_E_BUSY) m->queue_full++;
    if (!rc) m->q_reserved += n;
    pthread_mutex_unlock(&m->mu);
    return rc;
}

static void unreserve(struct serve_model *m, int n)
{
    pthread_mutex_lock(&m->mu);
    m->q_reserved -= n;
    pthread_cond_broadcast(&m->room_cv);
    pthread_mutex_unlock(&m->mu);
}

int serve_append(struct serve_model *m, const float *x, const int *y, const char *const *ids,
                 const size_t *id_lens, int n, int *ret_dups, uint64_t *ret_acked)
{
    int rc = reserve(m, n);
    if (rc) return rc;
    uint8_t *dup = malloc((size_t)(n ? n : 1));
    if (!dup) {
        unreserve(m, n);
        return TAME_E_NOMEM;
    }
    struct op op = {.kind = OP_SAMPLES, .m = m, .x = x, .y = y, .ids = ids, .id_lens = id_lens, .n = n,
                    .dup = dup};
    rc = serve_commit(m->s, &op); /* queues the new samples and releases the slots */
    free(dup);
    if (rc) {
        unreserve(m, n);
        return rc;
    }
    *ret_dups = n - op.kept;
    *ret_acked = op.acked;
    return 0;
}

static int append_mark(struct serve_model *m, enum store_kind kind)
{
    int rc = reserve(m, 1);
    if (rc) return rc;
    struct op op = {.kind = OP_MARK, .m = m, .mark = kind};
    rc = serve_commit(m->s, &op);
    if (rc) unreserve(m, 1);
    return rc;
}

int serve_flush(struct serve_model *m) { return append_mark(m, STORE_FLUSH); }
int serve_retrain_selector(struct serve_model *m) { return append_mark(m, STORE_SELECTOR); }

void serve_counters(struct serve_model *m, struct serve_counters *c)
{
    pthread_mutex_lock(&m->mu);
    *c = (struct serve_counters){.acknowledged = m->acknowledged,
                                 .duplicates = m->duplicates,
                                 .checkpoint_pos = m->ckpt_pos,
                                 .checkpoints = m->checkpoints,
                                 .replaying = m->replaying,
                                 .selector_pending = m->jobs_out,
                                 .queued = (uint64_t)m->q_samples,
                                 .predictions = m->predictions,
                                 .queue_waits = m->queue_waits,
                                 .queue_full = m->queue_full,
                                 .step_failures = m->step_failures,
                                 .events = m->n_events};
    memcpy(c->by_kind, m->by_kind, sizeof(c->by_kind));
    pthread_mutex_unlock(&m->mu);
}

void serve_count_predictions(struct serve_model *m, uint64_t rows)
{
    pthread_mutex_lock(&m->mu);
    m->predictions += rows;
    pthread_mutex_unlock(&m->mu);
}

void serve_append_events_locked(struct serve_model *m, const struct tame_event *ev, size_t n)
{
    if (m->n_events + n > m->events_cap) {
        size_t cap = m->events_cap ? m->events_cap : 64;
        while (cap < m->n_events + n) cap *= 2;
        struct tame_event *ne = realloc(m->events, cap * sizeof(*ne));
        if (!ne) return;
        m->events = ne;
        m->events_cap = cap;
    }
    memcpy(m->events + m->n_events, ev, n * sizeof(*ev));
    m->n_events += n;
    for (size_t k = 0; k < n; k++) m->by_kind[ev[k].kind]++;
}

int serve_events(struct serve_model *m, uint64_t from, int limit, struct tame_event **ret, size_t *ret_n,
                 uint64_t *ret_next)
{
    pthread_mutex_lock(&m->mu);
    size_t start = from < m->n_events ? (size_t)from : m->n_events; /* seq == index */
    size_t n = m->n_events - start;
    if (n > (size_t)limit) n = (size_t)limit;
    struct tame_event *ev = malloc((n ? n : 1) * sizeof(*ev));
    if (!ev) {
        pthread_mutex_unlock(&m->mu);
        return TAME_E_NOMEM;
    }
    if (n) memcpy(ev, m->events + start, n * sizeof(*ev));
    *ret_next = start + n < m->n_events ? start + n : UINT64_MAX;
    pthread_mutex_unlock(&m->mu);
    *ret = ev;
    *ret_n = n;
    return 0;
}

bool serve_ready(struct serve *s, const char **why)
{
    pthread_mutex_lock(&s->commit_mu);
    bool degraded = s->stats.degraded;
    pthread_mutex_unlock(&s->commit_mu);
    if (degraded) {
        *why = "the database is not writable";
        return false;
    }
    if (atomic_load(&s->replaying) > 0) {
        *why = "replaying the sample log";
        return false;
    }
    return true;
}

void serve_store_stats(struct serve *s, struct serve_store_stats *st)
{
    pthread_mutex_lock(&s->commit_mu);
    *st = s->stats;
    pthread_mutex_unlock(&s->commit_mu);
    st->replaying = atomic_load(&s->replaying);
    st->synchronous = s->cfg.synchronous;
}

/* ---- selector thread ---- */

/* Training yields to requests: the learner workers run `train_nice` below
 * the HTTP threads, and the selector `selector_nice` (by default below the
 * learner, which must keep up with what was acknowledged; a selector
 * retrain only refreshes the routing). */
static void *selector_main(void *arg)
{
    struct serve *s = arg;
    tame_thread_setup("selector", s->cfg.selector_nice);
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->sel_head && !s->sel_stop) pthread_cond_wait(&s->sel_cv, &s->mu);
        if (!s->sel_head) break;
        struct serve_job *j = s->sel_head;
        s->sel_head = j->next;
        if (!s->sel_head) s->sel_tail = NULL;
        pthread_mutex_unlock(&s->mu);
        j->failed = tame_selector_job_run(j->job) != 0;
        j->next = NULL;
        struct serve_model *m = j->m;
        pthread_mutex_lock(&m->mu);
        if (m->done_tail) m->done_tail->next = j;
        else m->done_head = j;
        m->done_tail = j;
        pthread_mutex_unlock(&m->mu);
        serve_put(m); /* the job's reference */
        pthread_mutex_lock(&s->mu);
        pthread_cond_broadcast(&s->work_cv);
    }
    /* Stopped without draining: drop what is left. */
    while (s->sel_head) {
        struct serve_job *j = s->sel_head;
        s->sel_head = j->next;
        serve_put(j->m); /* the job stays in the model's out[] */
        free(j);
    }
    s->sel_tail = NULL;
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

void serve_queue_job(struct serve *s, struct serve_model *m, struct tame_selector_job *job)
{
    struct serve_job *j = calloc(1, sizeof(*j));
    pthread_mutex_lock(&m->mu);
    if (j && m->jobs_out == m->out_cap) {
        int cap = m->out_cap ? 2 * m->out_cap : 4;
        struct tame_selector_job **o = realloc(m->out, (size_t)cap * sizeof(*o));
        if (o) m->out = o, m->out_cap = cap;
    }
    bool ok = j && m->jobs_out < m->out_cap;
    if (ok) m->out[m->jobs_out++] = job;
    pthread_mutex_unlock(&m->mu);
    if (!ok) { /* out of memory: this retrain is lost; a later one replaces it */
        free(j);
        tame_selector_job_free(job);
        return;
    }
    j->job = job;
    j->m = m;
    atomic_fetch_add(&m->refs, 1);
    pthread_mutex_lock(&s->mu);
    if (s->sel_tail) s->sel_tail->next = j;
    else s->sel_head = j;
    s->sel_tail = j;
    pthread_cond_signal(&s->sel_cv);
    pthread_mutex_unlock(&s->mu);
}

/* Take a selector job now (worker holds the model) and queue it.  Jobs are
 * taken at points that depend only on the log, and installed in order. */
static void take_selector_job(struct serve *s, struct serve_model *m)
{
    struct tame_selector_job *job;
    if (tame_selector_job_new(m->learner, &job) == 0) serve_queue_job(s, m, job);
}

/* ---- checkpoints ---- */

/* Checkpoint blobs: "TCKP", a version word, the learner (tame_learner_save),
 * the number of selector jobs in flight and each one's inputs
 * (tame_selector_job_save), in the order taken, then a CRC-32.  Jobs in
 * flight are saved rather than waited for: on a restart they run again and
 * install in order, as they would have. */
#define CKPT_MAGIC 0x504b4354u /* "TCKP" */
#define CKPT_VERSION 1u

void serve_checkpoint_save(struct serve_model *m, struct tame_wbuf *w)
{
    size_t start = w->len;
    tame_wbuf_u32(w, CKPT_MAGIC);
    tame_wbuf_u32(w, CKPT_VERSION);
    tame_learner_save(m->learner, w);
    /* The worker holds the model, so no job of it is freed meanwhile; their
     * inputs are never written after they are taken. */
    pthread_mutex_lock(&m->mu);
    int n = m->jobs_out;
    struct tame_selector_job **jobs = malloc((size_t)(n ? n : 1) * sizeof(*jobs));
    if (jobs && n) memcpy(jobs, m->out, (size_t)n * sizeof(*jobs));
    pthread_mutex_unlock(&m->mu);
    if (!jobs && !w->err) w->err = TAME_E_NOMEM;
    tame_wbuf_u32(w, (uint32_t)n);
    for (int i = 0; jobs && i < n; i++) tame_selector_job_save(jobs[i], w);
    free(jobs);
    tame_wbuf_crc(w, start);
}

int serve_checkpoint_load(struct serve *s, struct serve_model *m, const void *b, size_t len)
{
    struct tame_rbuf r;
    tame_rbuf_init(&r, b, len);
    if (tame_rbuf_u32(&r) != CKPT_MAGIC) return TAME_E_CORRUPT;
    uint32_t version = tame_rbuf_u32(&r);
    if (r.err) return TAME_E_CORRUPT;
    if (version != CKPT_VERSION) return TAME_E_VERSION;
    struct tame_learner *l;
    int rc = tame_learner_load(&r, &l);
    if (rc) return rc;
    uint32_t n = tame_rbuf_u32(&r);
    struct tame_selector_job **jobs = calloc(n ? n : 1, sizeof(*jobs));
    rc = r.err || n > tame_rbuf_left(&r) / 16 ? TAME_E_CORRUPT : jobs ? 0 : TAME_E_NOMEM;
    uint32_t got = 0;
    for (; !rc && got < n; got++) rc = tame_selector_job_load(&r, &m->p, &jobs[got]);
    if (!rc) {
        tame_rbuf_crc(&r, 0);
        if (r.err || tame_rbuf_left(&r) != 0) rc = TAME_E_CORRUPT;
    }
    if (!rc) rc = tame_learner_set_threads(l, s->cfg.step_threads);
    if (rc) {
        for (uint32_t i = 0; i < n && jobs; i++) tame_selector_job_free(jobs[i]);
        free(jobs);
        tame_learner_free(l);
        return rc;
    }
    tame_learner_free(m->learner);
    m->learner = l;
    for (uint32_t i = 0; i < n; i++) serve_queue_job(s, m, jobs[i]);
    free(jobs);
    return 0;
}

/* Write the model (consumed up to q_pos) and the events not yet stored, in
 * one transaction.  The worker holds the model. */
static void checkpoint(struct serve *s, struct serve_model *m)
{
    double t0 = tame_now_s();
    struct op op = {.kind = OP_CHECKPOINT, .m = m};
    tame_wbuf_init(&op.blob);
    serve_checkpoint_save(m, &op.blob);
    op.state_len = op.blob.len;
    pthread_mutex_lock(&m->mu);
    op.pos = m->q_pos;
    op.ev_seq0 = m->events_stored;
    op.n_ev = m->n_events - m->events_stored;
    op.ev_off = malloc((op.n_ev + 1) * sizeof(size_t));
    for (size_t i = 0; op.ev_off && i < op.n_ev; i++) {
        op.ev_off[i] = op.blob.len;
        tame_event_save(&m->events[op.ev_seq0 + i], &op.blob);
    }
    if (op.ev_off) op.ev_off[op.n_ev] = op.blob.len;
    pthread_mutex_unlock(&m->mu);
    int rc = !op.ev_off ? TAME_E_NOMEM : op.blob.err ? op.blob.err : serve_commit(s, &op);
    double now = tame_now_s();
    pthread_mutex_lock(&m->mu);
    if (rc == 0) {
        m->ckpt_time = now;
        m->ckpt_retry = 0;
        m->ckpt_batches = m->batches;
    } else {
        m->ckpt_retry = now + 1.0; /* not every round while the disk is full */
    }
    pthread_mutex_unlock(&m->mu);
    if (rc == 0) {
        pthread_mutex_lock(&s->commit_mu);
        s->stats.checkpoints++;
        s->stats.checkpoint_bytes += op.blob.len;
        s->stats.checkpoint_seconds += now - t0;
        pthread_mutex_unlock(&s->commit_mu);
        TAME_LOG(TAME_LOG_DEBUG, "checkpoint", "model=%s pos=%llu bytes=%zu seconds=%.3f", m->name,
                 (unsigned long long)op.pos, op.blob.len, now - t0);
    } else if (rc != TAME_E_NOTFOUND) {
        TAME_LOG(TAME_LOG_WARN, "checkpoint failed; the log keeps everything", "model=%s error=\"%s\"", m->name,
                 tame_strerror(rc));
    }
    free(op.ev_off);
    tame_wbuf_done(&op.blob);
}

/* ---- workers ---- */

struct unit {
    int off, n; /* samples in bx */
    int mark;   /* 0, or the ITEM_ mark that ends it */
    int items;  /* queue items up to and including this unit */
};

static int step(struct serve *s, struct serve_model *m, const float *x, const int *y, int n)
{
    /* Fault injection for tests: the daemon's first steps fail as if out
     * of memory (serve_config.test_step_nomem). */
    if (atomic_load_explicit(&s->test_nomem_left, memory_order_relaxed) > 0 &&
        atomic_fetch_sub(&s->test_nomem_left, 1) > 0)
        return TAME_E_NOMEM;
    return tame_learner_step(m->learner, x, y, n);
}

/* One round on a busy model: install finished selectors in order, train up
 * to TAKE_BATCHES units from the queue (a unit is a full batch, or the
 * samples before a mark), publish a new view, checkpoint when due.  A step
 * that fails (out of memory: the learner is unchanged) ends the round
 * there: its unit and those after it stay queued for the next round, so an
 * acknowledged sample is never skipped.  Returns that failure, or 0. */
static int work_round(struct serve *s, struct serve_model *m, float *bx, int *by)
{
    const struct tame_params *p = &m->p;
    const int d = p->input_dim, bs = p->batch_size;
    struct unit units[TAKE_BATCHES];
    int n_units = 0, items = 0, samples = 0, marks = 0;
    pthread_mutex_lock(&m->mu);
    struct serve_job *done = m->done_head;
    m->done_head = m->done_tail = NULL;
    const int head = m->q_head, len = m->q_len;
    pthread_mutex_unlock(&m->mu);
    /* The queued items stay where they are until this round shrinks the
     * queue (writers fill slots past the tail), so they are copied out
     * unlocked: megabytes that predictions and commits would otherwise wait
     * for. */
    int filled = 0, cur = 0;
    for (int i = 0; i < len && n_units < TAKE_BATCHES; i++) {
        int slot = (head + i) % m->q_cap;
        int y = m->qy[slot];
        if (y >= 0) {
            memcpy(bx + (size_t)filled * d, m->qx + (size_t)slot * d, (size_t)d * sizeof(float));
            by[filled++] = y;
            if (filled - cur < bs) continue;
            units[n_units++] = (struct unit){cur, filled - cur, 0, i + 1};
        } else {
            units[n_units++] = (struct unit){cur, filled - cur, y, i + 1};
        }
        cur = filled;
    }

    bool changed = false;
    int installed = 0;
    while (done) {
        struct serve_job *j = done;
        done = j->next;
        if (!j->failed) changed |= tame_learner_install_selector(m->learner, j->job) == 0;
        installed++;
        free(j); /* the job itself is freed below, once it left out[] */
    }
    if (s->cfg.test_step_pause_ms > 0 && n_units > 0) usleep((useconds_t)s->cfg.test_step_pause_ms * 1000);
    int failed = 0;
    for (int u = 0; u < n_units; u++) {
        if (units[u].n > 0) {
            int rc = step(s, m, bx + (size_t)units[u].off * d, by + units[u].off, units[u].n);
            if (rc < 0 && rc != TAME_E_NONFINITE) { /* a non-finite batch is consumed, and counted */
                failed = rc;
                break;
            }
            changed = true;
        }
        items = units[u].items;
        samples = units[u].off + units[u].n;
        marks += units[u].mark != 0;
        struct tame_info info;
        tame_learner_info(m->learner, &info);
        if (info.selector_due || (units[u].mark == ITEM_SELECTOR && info.n_experts >= 2 && info.selector_fill > 0))
            take_selector_job(s, m);
    }
    struct tame_event *ev = NULL;
    size_t n_ev = 0;
    tame_learner_take_events(m->learner, &ev, &n_ev);
    struct serve_view_ref *view = changed ? serve_view_build(m->learner, p->classes) : NULL;

    struct tame_info info;
    tame_learner_info(m->learner, &info);
    pthread_mutex_lock(&m->mu);
    /* The queue shrinks only now, so counters never show samples as
     * neither queued nor trained. */
    m->q_head = (m->q_head + items) % m->q_cap;
    m->q_len -= items;
    m->q_pos += (uint64_t)items;
    m->q_samples -= samples;
    m->q_marks -= marks;
    /* Installed in the order taken: the first `installed` of out[]. */
    if (installed) {
        for (int k = 0; k < installed; k++) tame_selector_job_free(m->out[k]);
        memmove(m->out, m->out + installed, (size_t)(m->jobs_out - installed) * sizeof(*m->out));
        m->jobs_out -= installed;
    }
    if (items) pthread_cond_broadcast(&m->room_cv);
    if (n_ev) serve_append_events_locked(m, ev, n_ev);
    struct serve_view_ref *old = NULL;
    if (view) old = m->view, m->view = view;
    double now = tame_now_s();
    m->batches = info.batches;
    bool due = checkpoint_due_locked(m, now);
    pthread_mutex_unlock(&m->mu);
    if (old) serve_view_put(&old->view);
    tame_free(ev);
    if (due) checkpoint(s, m);
    return failed;
}

/* A round that could not run (a failed step, or no memory for the batch):
 * the model's queue is left as it was, and it is tried again after a
 * pause that doubles up to a minute, so that a model that cannot get
 * memory neither spins a worker nor floods the log.  Under s->mu. */
static void round_failed_locked(struct serve_model *m, int rc)
{
    m->retry_pause = m->retry_pause > 0 ? (m->retry_pause * 2 < 60 ? m->retry_pause * 2 : 60) : 0.25;
    m->retry_at = tame_now_s() + m->retry_pause;
    pthread_mutex_lock(&m->mu);
    m->step_failures++;
    int queued = m->q_samples;
    pthread_mutex_unlock(&m->mu);
    TAME_LOG(TAME_LOG_WARN, "cannot train: the batch stays queued", "model=%s error=%s queued=%d retry_s=%.2f",
             m->name, tame_err_name(rc), queued, m->retry_pause);
}

/* Any work left for a stopping daemon: queued units, or selector jobs out.
 * A model whose rounds fail is not waited for: its queue is in the log,
 * and the next start trains it. */
static bool stop_work_locked(struct serve *s)
{
    for (int k = 0; k < s->n_models; k++) {
        struct serve_model *c = s->models[k];
        if (c->retry_at > 0 && !c->busy) continue;
        pthread_mutex_lock(&c->mu);
        bool left = c->jobs_out > 0 || c->q_samples >= c->p.batch_size || c->q_marks > 0;
        pthread_mutex_unlock(&c->mu);
        if (left || c->busy) return true;
    }
    return false;
}

static void *worker_main(void *arg)
{
    struct serve *s = arg;
    tame_thread_setup("learner", s->cfg.train_nice);
    nn_blas_threads(1);
    size_t cap_x = 0;
    float *bx = NULL;
    int *by = NULL;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct serve_model *m = NULL;
        double now = tame_now_s(), wake = now + 1; /* timed: a checkpoint falls due with time alone */
        for (int k = 0; k < s->n_models && !m; k++) {
            struct serve_model *c = s->models[(s->rr + k) % s->n_models];
            if (c->busy) continue;
            if (c->retry_at > now) { /* its last round failed: not before its pause is over */
                if (c->retry_at < wake) wake = c->retry_at;
                continue;
            }
            pthread_mutex_lock(&c->mu);
            bool ready = serve_has_work_locked(c);
            pthread_mutex_unlock(&c->mu);
            if (ready) m = c, s->rr = (s->rr + k + 1) % s->n_models;
        }
        if (!m) {
            if (s->stopping && (!s->draining || !stop_work_locked(s))) break;
            struct timespec until = tame_deadline_ms((long)((wake - now) * 1000) + 1);
            pthread_cond_timedwait(&s->work_cv, &s->mu, &until);
            continue;
        }
        m->busy = true;
        atomic_fetch_add(&m->refs, 1);
        pthread_mutex_unlock(&s->mu);

        size_t need = (size_t)TAKE_BATCHES * m->p.batch_size * m->p.input_dim;
        if (need > cap_x) {
            free(bx);
            free(by);
            bx = malloc(need * sizeof(float));
            by = malloc((size_t)TAKE_BATCHES * m->p.batch_size * sizeof(int));
            cap_x = bx && by ? need : 0;
        }
        int rc = cap_x ? work_round(s, m, bx, by) : TAME_E_NOMEM;

        pthread_mutex_lock(&s->mu);
        if (rc < 0) round_failed_locked(m, rc);
        else m->retry_at = m->retry_pause = 0;
        m->busy = false;
        pthread_cond_broadcast(&s->work_cv);
        pthread_mutex_unlock(&s->mu);
        serve_put(m);
        pthread_mutex_lock(&s->mu);
    }
    pthread_cond_broadcast(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    free(bx);
    free(by);
    return NULL;
}

int serve_new(const struct serve_config *cfg, struct serve **ret, char *why, size_t why_len)
{
    why[0] = 0;
    if (cfg->workers < 1 || cfg->queue_samples < 1 || cfg->models_max < 1 || !cfg->store) {
        snprintf(why, why_len, "invalid configuration");
        store_close(cfg->store);
        return TAME_E_RANGE;
    }
    struct serve *s = calloc(1, sizeof(*s));
    if (!s) {
        store_close(cfg->store);
        return TAME_E_NOMEM;
    }
    s->cfg = *cfg;
    atomic_init(&s->test_nomem_left, cfg->test_step_nomem);
    s->store = cfg->store;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->create_mu, NULL);
    pthread_mutex_init(&s->commit_mu, NULL);
    pthread_cond_init(&s->work_cv, NULL);
    pthread_cond_init(&s->sel_cv, NULL);
    pthread_cond_init(&s->probe_cv, NULL);
    pthread_cond_init(&s->commit_done_cv, NULL);
    pthread_cond_init(&s->fold_cv, NULL);
    atomic_init(&s->replaying, 0);
    atomic_init(&s->queue_waiters, 0);
    atomic_init(&s->load_stop, false);
    s->workers = calloc((size_t)cfg->workers, sizeof(pthread_t));
    int rc = s->workers ? serve_recover(s, why, why_len) : TAME_E_NOMEM;
    if (!rc) rc = serve_commit_start(s);
    for (int i = 0; !rc && i < cfg->workers; i++) {
        if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0) rc = TAME_E_NOMEM;
        else s->n_workers++;
    }
    if (!rc) {
        if (pthread_create(&s->sel_thread, NULL, selector_main, s) == 0) s->sel_started = true;
        else rc = TAME_E_NOMEM;
    }
    if (rc) {
        if (!why[0]) snprintf(why, why_len, "cannot start: %s", tame_strerror(rc));
        serve_free(s);
        return rc;
    }
    *ret = s;
    return 0;
}

void serve_stop(struct serve *s, bool drain)
{
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        return;
    }
    s->stopping = true;
    s->draining = drain;
    pthread_cond_broadcast(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
    serve_recover_stop(s);
    for (int i = 0; i < s->n_workers; i++) pthread_join(s->workers[i], NULL);
    s->n_workers = 0;
    pthread_mutex_lock(&s->mu);
    s->sel_stop = true;
    pthread_cond_broadcast(&s->sel_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->sel_started) pthread_join(s->sel_thread, NULL);
    s->sel_started = false;
    /* Every learner is idle now: checkpoint what changed, so the next
     * start replays nothing but partial batches. */
    if (drain) {
        for (int i = 0; i < s->n_models; i++) {
            struct serve_model *m = s->models[i];
            pthread_mutex_lock(&m->mu);
            bool due = m->q_pos > m->ckpt_pos;
            pthread_mutex_unlock(&m->mu);
            if (due) checkpoint(s, m);
        }
    }
    serve_commit_stop(s);
    pthread_mutex_lock(&s->mu);
    s->stopped = true;
    pthread_mutex_unlock(&s->mu);
}

void serve_free(struct serve *s)
{
    if (!s) return;
    serve_stop(s, false);
    while (s->sel_head) { /* queued before the selector thread ever ran */
        struct serve_job *j = s->sel_head;
        s->sel_head = j->next;
        serve_put(j->m);
        free(j);
    }
    for (int i = 0; i < s->n_models; i++) serve_put(s->models[i]);
    store_close(s->store);
    free(s->models);
    free(s->workers);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->create_mu);
    pthread_mutex_destroy(&s->commit_mu);
    pthread_cond_destroy(&s->work_cv);
    pthread_cond_destroy(&s->sel_cv);
    pthread_cond_destroy(&s->probe_cv);
    pthread_cond_destroy(&s->commit_done_cv);
    pthread_cond_destroy(&s->fold_cv);
    free(s);
}
