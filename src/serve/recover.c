/* recover.c: loading every model at start.  Each model comes back from its
 * checkpoint (or fresh from its parameters) with its stored events; then a
 * loader thread feeds the log after the checkpoint into the model's queue,
 * where the ordinary workers train it: a replay runs exactly the code the
 * original run did, in the same order, so it ends in the same state. */
#include "serve_internal.h"
#include "logcodec.h"

#include "tame/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct load_ctx {
    struct serve *s;
    char *why;
    size_t why_len;
};

static int load_event(void *arg, uint64_t seq, const void *b, size_t len)
{
    struct serve_model *m = arg;
    struct tame_rbuf r;
    tame_rbuf_init(&r, b, len);
    struct tame_event ev;
    tame_event_load(&r, &ev);
    if (r.err || ev.seq != seq || seq != m->n_events) return TAME_E_CORRUPT;
    serve_append_events_locked(m, &ev, 1);
    return m->n_events == seq + 1 ? 0 : TAME_E_NOMEM;
}

static int load_model(void *arg, const struct store_model_row *row)
{
    struct load_ctx *c = arg;
    struct serve *s = c->s;
    struct tame_params p;
    int rc = serve_params_load(row->params, row->params_len, &p);
    if (rc) {
        snprintf(c->why, c->why_len, "model '%s': stored parameters are corrupt", row->name);
        return rc;
    }
    struct serve_model *m = serve_model_alloc(s, row->name, &p);
    if (!m) {
        snprintf(c->why, c->why_len, "model '%s': out of memory", row->name);
        return TAME_E_NOMEM;
    }
    m->id = row->id;
    void *state = NULL;
    size_t len = 0;
    uint64_t pos = 0;
    rc = store_checkpoint_get(s->store, m->id, &pos, &state, &len);
    if (rc == 0) {
        rc = serve_checkpoint_load(s, m, state, len);
        free(state);
        if (rc) {
            snprintf(c->why, c->why_len, "model '%s': checkpoint at log position %llu is %s", row->name,
                     (unsigned long long)pos, rc == TAME_E_CORRUPT ? "corrupt" : tame_strerror(rc));
            goto fail;
        }
    } else if (rc != TAME_E_NOTFOUND) {
        snprintf(c->why, c->why_len, "model '%s': cannot read its checkpoint: %s", row->name,
                 rc == TAME_E_CORRUPT ? "checksum mismatch" : store_errmsg(s->store));
        goto fail;
    }
    rc = store_events_each(s->store, m->id, load_event, m);
    if (rc) {
        snprintf(c->why, c->why_len, "model '%s': stored events are %s", row->name,
                 rc == TAME_E_CORRUPT ? "corrupt" : tame_strerror(rc));
        goto fail;
    }
    /* The learner's own pending events (taken after its checkpoint) are not
     * stored: replay records them again. */
    struct tame_event *pending = NULL;
    size_t n_pending = 0;
    tame_learner_take_events(m->learner, &pending, &n_pending);
    tame_free(pending);
    m->events_stored = m->n_events;
    uint64_t end, samples;
    rc = store_log_tail(s->store, m->id, pos, &end, &samples);
    if (rc) {
        snprintf(c->why, c->why_len, "model '%s': cannot read its log: %s", row->name, store_errmsg(s->store));
        goto fail;
    }
    struct tame_info info;
    tame_learner_info(m->learner, &info);
    m->q_pos = m->ckpt_pos = pos;
    m->batches = m->ckpt_batches = info.batches;
    m->log_end = end;
    m->trim_pending = true; /* whatever a killed run left below the checkpoint */
    m->trim_log = pos;
    m->trim_ids = pos > s->cfg.ids_keep ? pos - s->cfg.ids_keep : 0;
    m->acknowledged = info.samples_trained + samples;
    m->replaying = end > pos;
    struct serve_view_ref *v = serve_view_build(m->learner, p.classes);
    if (!v) {
        rc = TAME_E_NOMEM;
        snprintf(c->why, c->why_len, "model '%s': out of memory", row->name);
        goto fail;
    }
    if (m->view) serve_view_put(&m->view->view);
    m->view = v;
    if (m->replaying) atomic_fetch_add(&s->replaying, 1);
    pthread_mutex_lock(&s->mu);
    serve_model_register_locked(s, m);
    pthread_mutex_unlock(&s->mu);
    TAME_LOG(TAME_LOG_INFO, "model loaded", "model=%s checkpoint=%llu log_end=%llu experts=%d", m->name,
             (unsigned long long)pos, (unsigned long long)end, info.n_experts);
    return 0;
fail:
    serve_put(m);
    return rc;
}

/* ---- the loader thread ---- */

struct replay_ctx {
    struct serve *s;
    struct serve_model *m;
    uint64_t from; /* first position not yet consumed */
};

/* Push one record's items at or after `from` into the queue, waiting for
 * room as the workers consume. */
static int replay_record(void *arg, const struct store_record *rec)
{
    struct replay_ctx *c = arg;
    struct serve_model *m = c->m;
    const int d = m->p.input_dim;
    float *x = NULL;
    if (rec->kind == STORE_SAMPLES) {
        if (rec->y_len != (size_t)rec->items * sizeof(int32_t)) return TAME_E_CORRUPT;
        x = malloc((size_t)rec->items * d * sizeof(float));
        if (!x) return TAME_E_NOMEM;
        if (log_x_decode(rec->x, rec->x_len, (size_t)rec->items * d, x) != 0) {
            free(x);
            return TAME_E_CORRUPT;
        }
    }
    uint32_t skip = rec->pos < c->from ? (uint32_t)(c->from - rec->pos) : 0;
    for (uint32_t i = skip; i < rec->items; i++) {
        pthread_mutex_lock(&m->mu);
        while (m->q_len + m->q_reserved >= m->q_cap && !m->deleted && !atomic_load(&m->s->load_stop))
            pthread_cond_wait(&m->room_cv, &m->mu);
        if (m->deleted || atomic_load(&m->s->load_stop)) {
            pthread_mutex_unlock(&m->mu);
            free(x);
            return TAME_E_STATE;
        }
        int slot = (m->q_head + m->q_len) % m->q_cap;
        if (rec->kind == STORE_SAMPLES) {
            memcpy(m->qx + (size_t)slot * d, x + (size_t)i * d, (size_t)d * sizeof(float));
            int32_t y;
            memcpy(&y, (const char *)rec->y + (size_t)i * sizeof(int32_t), sizeof(y));
            if (y < 0 || y >= m->p.classes) {
                pthread_mutex_unlock(&m->mu);
                free(x);
                return TAME_E_CORRUPT;
            }
            m->qy[slot] = y;
            m->q_samples++;
        } else {
            m->qy[slot] = rec->kind == STORE_FLUSH ? ITEM_FLUSH : ITEM_SELECTOR;
            m->q_marks++;
        }
        m->q_len++;
        bool ready = serve_has_work_locked(m);
        pthread_mutex_unlock(&m->mu);
        if (ready) serve_kick(m->s);
    }
    free(x);
    c->from = rec->pos + rec->items;
    return 0;
}

static void *load_main(void *arg)
{
    struct serve *s = arg;
    tame_thread_setup("log-replay", 0);
    struct store *reader = NULL;
    char why[512] = "";
    struct store_options o = {.readonly = true, .busy_ms = 5000};
    int rc = store_open(s->cfg.db_path, &o, &reader, why, sizeof(why));
    if (rc) TAME_LOG(TAME_LOG_ERROR, "cannot open the database to replay", "error=\"%s\"", why);
    /* The models listed at start are the only ones with a log to replay. */
    pthread_mutex_lock(&s->mu);
    int n = s->n_models;
    struct serve_model **list = malloc((size_t)(n ? n : 1) * sizeof(*list));
    for (int i = 0; list && i < n; i++) {
        list[i] = s->models[i];
        atomic_fetch_add(&list[i]->refs, 1);
    }
    pthread_mutex_unlock(&s->mu);
    if (!list) n = 0, rc = TAME_E_NOMEM;
    bool failed = false;
    for (int i = 0; i < n; i++) {
        struct serve_model *m = list[i];
        pthread_mutex_lock(&m->mu);
        bool todo = m->replaying && !failed;
        pthread_mutex_unlock(&m->mu);
        if (todo && !atomic_load(&s->load_stop)) {
            struct replay_ctx c = {.s = s, .m = m, .from = m->q_pos};
            double t0 = tame_now_s();
            int r = rc ? rc : store_log_each(reader, m->id, c.from, replay_record, &c);
            if (r && r != TAME_E_STATE) {
                /* The model stays not ready: nothing may follow a gap in its log. */
                TAME_LOG(TAME_LOG_ERROR, "replay failed: the model refuses samples until a restart",
                         "model=%s error=\"%s\"", m->name,
                         r == TAME_E_CORRUPT ? "corrupt log record" : tame_strerror(r));
                failed = true;
            } else {
                if (!r)
                    TAME_LOG(TAME_LOG_INFO, "log replayed", "model=%s items=%llu seconds=%.3f", m->name,
                             (unsigned long long)(c.from - m->ckpt_pos), tame_now_s() - t0);
                pthread_mutex_lock(&m->mu);
                bool done = !r || m->deleted; /* else stopping: it stays replaying */
                if (done) m->replaying = false;
                pthread_mutex_unlock(&m->mu);
                if (done) atomic_fetch_sub(&s->replaying, 1);
            }
        }
        serve_put(m);
    }
    free(list);
    store_close(reader);
    return NULL;
}

int serve_recover(struct serve *s, char *why, size_t why_len)
{
    struct load_ctx c = {.s = s, .why = why, .why_len = why_len};
    int rc = store_models(s->store, load_model, &c);
    if (rc) {
        if (!why[0]) snprintf(why, why_len, "cannot read the models: %s", store_errmsg(s->store));
        return rc;
    }
    if (atomic_load(&s->replaying) == 0) return 0;
    if (pthread_create(&s->load_thread, NULL, load_main, s) != 0) {
        snprintf(why, why_len, "cannot start the replay thread");
        return TAME_E_NOMEM;
    }
    s->load_started = true;
    return 0;
}

void serve_recover_stop(struct serve *s)
{
    if (!s->load_started) return;
    atomic_store(&s->load_stop, true); /* and wake it if it waits for room */
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->n_models; i++) {
        pthread_mutex_lock(&s->models[i]->mu);
        pthread_cond_broadcast(&s->models[i]->room_cv);
        pthread_mutex_unlock(&s->models[i]->mu);
    }
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->load_thread, NULL);
    s->load_started = false;
}
