/* serve.c: see serve.h.  Locks: `s->mu` guards the registry and the
 * scheduling flags of every model (busy, ready); `m->mu` guards a model's
 * queue, view pointer, events and counters.  Order: s->mu before m->mu.
 * A model's learner is touched only by the worker that set it busy. */
#include "serve.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TAKE_BATCHES 8 /* batches a worker trains before it publishes */

struct serve_view_ref {
    struct serve_view view;
    atomic_int refs;
};

struct serve_model {
    char name[SERVE_NAME_MAX + 1];
    struct tame_params p;
    struct serve *s;
    atomic_int refs;                  /* registry + requests + workers */
    /* guarded by s->mu */
    bool busy;
    /* guarded by mu */
    pthread_mutex_t mu;
    float *qx;                        /* ring [queue_cap x input_dim] */
    int *qy;
    int q_head, q_len, q_cap;
    bool flush;                       /* train a partial batch */
    bool selector_request;            /* retrain the selector now (client asked) */
    uint64_t acknowledged, predictions;
    uint64_t by_kind[TAME_EV_PRUNE + 1]; /* events per kind, kept as they are appended */
    struct serve_view_ref *view;
    struct tame_event *events;
    size_t n_events, events_cap;
    struct tame_selector_job *selector_done; /* trained, waiting to be installed */
    bool selector_running;
    /* owned by the busy worker */
    struct tame_learner *learner;
};

struct serve {
    struct serve_config cfg;
    pthread_mutex_t mu;
    pthread_cond_t work_cv;           /* a model may have work; or stopping */
    struct serve_model **models;
    int n_models, models_cap;
    bool stopping, draining, stopped;
    int rr;                           /* round-robin start */
    pthread_t *workers;
    int n_workers;
    /* selector thread */
    pthread_t sel_thread;
    bool sel_started;
    pthread_cond_t sel_cv;
    struct serve_model **sel_queue;   /* models with a job to run, refs held */
    struct tame_selector_job **sel_jobs;
    int sel_len, sel_cap;
};

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
static struct serve_view_ref *view_build(struct tame_learner *l, int classes)
{
    struct serve_view_ref *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    atomic_init(&r->refs, 1);
    struct serve_view *v = &r->view;
    tame_learner_info(l, &v->info);
    v->n_experts = v->info.n_experts;
    v->labels = calloc((size_t)(v->n_experts ? v->n_experts : 1) * classes, 1);
    if (!v->labels) goto fail;
    for (int k = 0; k < v->n_experts; k++) {
        tame_learner_expert_info(l, k, &v->experts[k]);
        memcpy(v->labels + (size_t)k * classes, v->experts[k].labels, (size_t)classes);
        v->experts[k].labels = v->labels + (size_t)k * classes;
    }
    if (v->n_experts > 0 && tame_learner_snapshot(l, &v->snap) < 0) goto fail;
    return r;
fail:
    view_free(r);
    return NULL;
}

/* ---- models ---- */

static void model_free(struct serve_model *m)
{
    tame_learner_free(m->learner);
    tame_selector_job_free(m->selector_done);
    if (m->view) serve_view_put(&m->view->view);
    free(m->qx);
    free(m->qy);
    free(m->events);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void serve_put(struct serve_model *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1) model_free(m);
}

const char *serve_model_name(const struct serve_model *m) { return m->name; }
const struct tame_params *serve_model_params(const struct serve_model *m) { return &m->p; }

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
    struct serve_model *m = calloc(1, sizeof(*m));
    if (!m) return TAME_E_NOMEM;
    snprintf(m->name, sizeof(m->name), "%s", name);
    m->p = *p;
    m->s = s;
    atomic_init(&m->refs, 1);
    pthread_mutex_init(&m->mu, NULL);
    m->q_cap = s->cfg.queue_samples;
    m->qx = malloc((size_t)m->q_cap * p->input_dim * sizeof(float));
    m->qy = malloc((size_t)m->q_cap * sizeof(int));
    rc = TAME_E_NOMEM;
    if (!m->qx || !m->qy) goto fail;
    rc = tame_learner_new(p, &m->learner);
    if (rc < 0) goto fail;
    rc = tame_learner_set_threads(m->learner, s->cfg.step_threads);
    if (rc < 0) goto fail;
    m->view = view_build(m->learner, p->classes);
    rc = TAME_E_NOMEM;
    if (!m->view) goto fail;

    pthread_mutex_lock(&s->mu);
    if (find_model(s, name) >= 0) {
        rc = TAME_E_EXIST;
    } else if (s->n_models >= s->cfg.models_max) {
        rc = TAME_E_LIMIT;
    } else if (s->stopping) {
        rc = TAME_E_UNAVAIL;
    } else {
        if (s->n_models == s->models_cap) {
            int cap = s->models_cap ? 2 * s->models_cap : 8;
            struct serve_model **nm = realloc(s->models, (size_t)cap * sizeof(*nm));
            if (nm) s->models = nm, s->models_cap = cap;
        }
        if (s->n_models < s->models_cap) {
            s->models[s->n_models++] = m;
            rc = 0;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (rc == 0) return 0;
fail:
    model_free(m);
    return rc;
}

int serve_delete(struct serve *s, const char *name)
{
    pthread_mutex_lock(&s->mu);
    int i = find_model(s, name);
    if (i < 0) {
        pthread_mutex_unlock(&s->mu);
        return TAME_E_NOTFOUND;
    }
    struct serve_model *m = s->models[i];
    s->models[i] = s->models[--s->n_models];
    pthread_mutex_unlock(&s->mu);
    serve_put(m); /* the registry's reference */
    return 0;
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

static bool has_work_locked(const struct serve_model *m)
{
    return m->q_len >= m->p.batch_size || (m->flush && m->q_len > 0) || m->selector_done ||
           m->selector_request;
}

static void kick(struct serve *s)
{
    pthread_mutex_lock(&s->mu);
    pthread_cond_broadcast(&s->work_cv);
    pthread_mutex_unlock(&s->mu);
}

int serve_append(struct serve_model *m, const float *x, const int *y, int n, uint64_t *ret_acked)
{
    const int d = m->p.input_dim;
    pthread_mutex_lock(&m->mu);
    if (m->q_len + n > m->q_cap) {
        pthread_mutex_unlock(&m->mu);
        return TAME_E_BUSY;
    }
    for (int i = 0; i < n; i++) {
        int slot = (m->q_head + m->q_len) % m->q_cap;
        memcpy(m->qx + (size_t)slot * d, x + (size_t)i * d, (size_t)d * sizeof(float));
        m->qy[slot] = y[i];
        m->q_len++;
    }
    m->acknowledged += (uint64_t)n;
    *ret_acked = m->acknowledged;
    bool ready = has_work_locked(m);
    pthread_mutex_unlock(&m->mu);
    if (ready) kick(m->s);
    return 0;
}

void serve_flush(struct serve_model *m)
{
    pthread_mutex_lock(&m->mu);
    m->flush = m->q_len > 0;
    bool ready = has_work_locked(m);
    pthread_mutex_unlock(&m->mu);
    if (ready) kick(m->s);
}

void serve_retrain_selector(struct serve_model *m)
{
    pthread_mutex_lock(&m->mu);
    m->selector_request = true;
    pthread_mutex_unlock(&m->mu);
    kick(m->s);
}

void serve_counters(struct serve_model *m, struct serve_counters *c)
{
    pthread_mutex_lock(&m->mu);
    *c = (struct serve_counters){.acknowledged = m->acknowledged,
                                 .queued = (uint64_t)m->q_len,
                                 .predictions = m->predictions,
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

/* ---- selector thread ---- */

static void *selector_main(void *arg)
{
    struct serve *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (s->sel_len == 0 && !s->stopped) pthread_cond_wait(&s->sel_cv, &s->mu);
        if (s->sel_len == 0) break;
        struct serve_model *m = s->sel_queue[0];
        struct tame_selector_job *job = s->sel_jobs[0];
        s->sel_len--;
        memmove(s->sel_queue, s->sel_queue + 1, (size_t)s->sel_len * sizeof(*s->sel_queue));
        memmove(s->sel_jobs, s->sel_jobs + 1, (size_t)s->sel_len * sizeof(*s->sel_jobs));
        pthread_mutex_unlock(&s->mu);
        int rc = tame_selector_job_run(job);
        pthread_mutex_lock(&m->mu);
        m->selector_running = false;
        if (rc == 0) {
            tame_selector_job_free(m->selector_done);
            m->selector_done = job;
            job = NULL;
        }
        pthread_mutex_unlock(&m->mu);
        tame_selector_job_free(job);
        serve_put(m);
        pthread_mutex_lock(&s->mu);
        pthread_cond_broadcast(&s->work_cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Hand a selector job to the selector thread (worker holds the model). */
static void selector_submit(struct serve *s, struct serve_model *m)
{
    pthread_mutex_lock(&m->mu);
    bool running = m->selector_running;
    pthread_mutex_unlock(&m->mu);
    if (running) return;
    struct tame_selector_job *job;
    if (tame_selector_job_new(m->learner, &job) < 0) return;
    pthread_mutex_lock(&s->mu);
    if (s->sel_len == s->sel_cap) {
        int cap = s->sel_cap ? 2 * s->sel_cap : 8;
        struct serve_model **q = realloc(s->sel_queue, (size_t)cap * sizeof(*q));
        if (q) s->sel_queue = q;
        struct tame_selector_job **j = realloc(s->sel_jobs, (size_t)cap * sizeof(*j));
        if (j) s->sel_jobs = j;
        if (q && j) s->sel_cap = cap;
    }
    if (s->sel_len < s->sel_cap && !s->stopped) {
        atomic_fetch_add(&m->refs, 1);
        s->sel_queue[s->sel_len] = m;
        s->sel_jobs[s->sel_len++] = job;
        job = NULL;
        pthread_mutex_lock(&m->mu);
        m->selector_running = true;
        pthread_mutex_unlock(&m->mu);
        pthread_cond_signal(&s->sel_cv);
    }
    pthread_mutex_unlock(&s->mu);
    tame_selector_job_free(job);
}

/* ---- workers ---- */

/* One round on a busy model: install a finished selector, train up to
 * TAKE_BATCHES batches from the queue, publish a new view. */
static void work_round(struct serve *s, struct serve_model *m, float *bx, int *by)
{
    const struct tame_params *p = &m->p;
    const int d = p->input_dim, bs = p->batch_size;
    pthread_mutex_lock(&m->mu);
    struct tame_selector_job *job = m->selector_done;
    m->selector_done = NULL;
    bool requested = m->selector_request;
    m->selector_request = false;
    int take = m->q_len / bs * bs;
    if (take > TAKE_BATCHES * bs) take = TAKE_BATCHES * bs;
    if (take == 0 && m->flush) take = m->q_len < bs ? m->q_len : bs;
    if (m->q_len - take == 0) m->flush = false;
    for (int i = 0; i < take; i++) {
        int slot = (m->q_head + i) % m->q_cap;
        memcpy(bx + (size_t)i * d, m->qx + (size_t)slot * d, (size_t)d * sizeof(float));
        by[i] = m->qy[slot];
    }
    pthread_mutex_unlock(&m->mu);

    bool changed = false;
    if (job) {
        changed |= tame_learner_install_selector(m->learner, job) == 0;
        tame_selector_job_free(job);
    }
    for (int off = 0; off < take; off += bs) {
        int n = take - off < bs ? take - off : bs;
        (void)tame_learner_step(m->learner, bx + (size_t)off * d, by + off, n);
        changed = true;
    }
    struct tame_info info;
    tame_learner_info(m->learner, &info);
    if (info.selector_due || (requested && info.n_experts >= 2)) selector_submit(s, m);

    struct tame_event *ev = NULL;
    size_t n_ev = 0;
    tame_learner_take_events(m->learner, &ev, &n_ev);
    struct serve_view_ref *view = changed ? view_build(m->learner, p->classes) : NULL;

    pthread_mutex_lock(&m->mu);
    /* The queue shrinks only now, so /v1 counters never show samples as
     * neither queued nor trained. */
    m->q_head = (m->q_head + take) % m->q_cap;
    m->q_len -= take;
    if (n_ev) {
        if (m->n_events + n_ev > m->events_cap) {
            size_t cap = m->events_cap ? m->events_cap : 64;
            while (cap < m->n_events + n_ev) cap *= 2;
            struct tame_event *ne = realloc(m->events, cap * sizeof(*ne));
            if (ne) m->events = ne, m->events_cap = cap;
        }
        if (m->n_events + n_ev <= m->events_cap) {
            memcpy(m->events + m->n_events, ev, n_ev * sizeof(*ev));
            m->n_events += n_ev;
        }
        for (size_t k = 0; k < n_ev; k++) m->by_kind[ev[k].kind]++;
    }
    struct serve_view_ref *old = NULL;
    if (view) old = m->view, m->view = view;
    pthread_mutex_unlock(&m->mu);
    if (old) serve_view_put(&old->view);
    tame_free(ev);
}

static void *worker_main(void *arg)
{
    struct serve *s = arg;
    nn_blas_threads(1);
    size_t cap_x = 0;
    float *bx = NULL;
    int *by = NULL;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        struct serve_model *m = NULL;
        for (int k = 0; k < s->n_models && !m; k++) {
            struct serve_model *c = s->models[(s->rr + k) % s->n_models];
            if (c->busy) continue;
            pthread_mutex_lock(&c->mu);
            if (s->draining && c->q_len > 0) c->flush = true;
            bool ready = has_work_locked(c);
            pthread_mutex_unlock(&c->mu);
            if (ready) m = c, s->rr = (s->rr + k + 1) % s->n_models;
        }
        if (!m) {
            bool any_busy = false;
            for (int k = 0; k < s->n_models; k++) any_busy |= s->models[k]->busy;
            if (s->stopping && (!s->draining || !any_busy)) break;
            pthread_cond_wait(&s->work_cv, &s->mu);
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
        if (cap_x) work_round(s, m, bx, by);

        pthread_mutex_lock(&s->mu);
        m->busy = false;
        pthread_cond_broadcast(&s->work_cv);
        pthread_mutex_unlock(&s->mu);
        serve_put(m);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    free(bx);
    free(by);
    return NULL;
}

int serve_new(const struct serve_config *cfg, struct serve **ret)
{
    if (cfg->workers < 1 || cfg->queue_samples < 1 || cfg->models_max < 1) return TAME_E_RANGE;
    struct serve *s = calloc(1, sizeof(*s));
    if (!s) return TAME_E_NOMEM;
    s->cfg = *cfg;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->work_cv, NULL);
    pthread_cond_init(&s->sel_cv, NULL);
    s->workers = calloc((size_t)cfg->workers, sizeof(pthread_t));
    if (!s->workers) {
        free(s);
        return TAME_E_NOMEM;
    }
    for (int i = 0; i < cfg->workers; i++) {
        if (pthread_create(&s->workers[i], NULL, worker_main, s) != 0) break;
        s->n_workers++;
    }
    if (pthread_create(&s->sel_thread, NULL, selector_main, s) == 0) s->sel_started = true;
    if (s->n_workers < cfg->workers || !s->sel_started) {
        serve_stop(s, false);
        serve_free(s);
        return TAME_E_NOMEM;
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
    for (int i = 0; i < s->n_workers; i++) pthread_join(s->workers[i], NULL);
    pthread_mutex_lock(&s->mu);
    s->stopped = true;
    pthread_cond_broadcast(&s->sel_cv);
    pthread_mutex_unlock(&s->mu);
    if (s->sel_started) pthread_join(s->sel_thread, NULL);
}

void serve_free(struct serve *s)
{
    if (!s) return;
    serve_stop(s, false);
    for (int i = 0; i < s->sel_len; i++) {
        tame_selector_job_free(s->sel_jobs[i]);
        serve_put(s->sel_queue[i]);
    }
    for (int i = 0; i < s->n_models; i++) serve_put(s->models[i]);
    free(s->models);
    free(s->sel_queue);
    free(s->sel_jobs);
    free(s->workers);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->work_cv);
    pthread_cond_destroy(&s->sel_cv);
    free(s);
}
