/* learner.c: the per-batch step of DESIGN 2.4, the detector arithmetic of
 * 2.3 and the learner's bookkeeping.  Everything a step might need to
 * allocate is allocated before the learner changes, so a failed step leaves
 * it exactly as it was. */
#include "tame_internal.h"

#include <math.h>
#include <string.h>

/* ---- experts ---- */

int tame_expert_new(const struct tame_learner *l, int id, struct tame_expert **ret)
{
    const struct tame_params *p = &l->p;
    struct tame_expert *e = tame_calloc(1, sizeof(*e));
    if (!e) return TAME_E_NOMEM;
    e->id = id;
    int dims[TAME_MAX_HIDDEN + 2];
    int n_dims = tame_dims(p, p->classes, dims);
    struct tame_rng rng;
    tame_rng_seed2(&rng, p->seed, 1000 + (uint64_t)id);
    int rc = nn_mlp_new(dims, n_dims, &rng, &e->net);
    if (rc < 0) goto fail;
    e->net->head_scale = p->head_scale;
    rc = nn_work_new(e->net, p->batch_size, &e->work);
    if (rc < 0) goto fail;
    rc = tame_reservoir_new(p->expert_capacity, p->input_dim, &e->buf);
    if (rc < 0) goto fail;
    rc = TAME_E_NOMEM;
    e->window = tame_malloc((size_t)p->window * sizeof(float));
    e->labels = tame_calloc((size_t)p->classes, 1);
    e->label_count = tame_calloc((size_t)p->classes, sizeof(uint64_t));
    if (!e->window || !e->labels || !e->label_count) goto fail;
    /* The window starts from ln(C), the loss of an uninformed guess. */
    e->window[0] = (float)log((double)p->classes);
    e->win_len = 1;
    e->win_pos = 1 % p->window;
    *ret = e;
    return 0;
fail:
    tame_expert_free(e);
    return rc;
}

void tame_expert_free(struct tame_expert *e)
{
    if (!e) return;
    nn_mlp_free(e->net);
    tame_frozen_put(e->frozen);
    nn_work_free(e->work);
    tame_reservoir_free(e->buf);
    tame_free(e->window);
    tame_free(e->labels);
    tame_free(e->label_count);
    tame_free(e);
}

static void window_stats(const struct tame_expert *e, double *mean, double *sd)
{
    double s = 0, s2 = 0;
    for (int i = 0; i < e->win_len; i++) s += e->window[i];
    *mean = s / e->win_len;
    for (int i = 0; i < e->win_len; i++) s2 += (e->window[i] - *mean) * (e->window[i] - *mean);
    *sd = sqrt(s2 / e->win_len); /* population sd */
}

static void window_push(struct tame_expert *e, int cap, double loss)
{
    e->window[e->win_pos] = (float)loss;
    e->win_pos = (e->win_pos + 1) % cap;
    if (e->win_len < cap) e->win_len++;
}

/* mean(W) + k * max(popstd(W), floor) */
static double window_line(const struct tame_expert *e, double k, double floor_sd)
{
    double mean, sd;
    window_stats(e, &mean, &sd);
    return mean + k * (sd > floor_sd ? sd : floor_sd);
}

static double ewma(bool has, double prev, double x, double alpha)
{
    return has ? alpha * x + (1.0 - alpha) * prev : x;
}

/* ---- learner lifecycle ---- */

int tame_learner_new(const struct tame_params *params, struct tame_learner **ret)
{
    int rc = tame_params_validate(params, NULL);
    if (rc < 0) return rc;
    struct tame_learner *l = tame_calloc(1, sizeof(*l));
    if (!l) return TAME_E_NOMEM;
    l->p = *params;
    l->active = -1;
    tame_rng_seed2(&l->rng, params->seed, 1);
    rc = tame_reservoir_new(params->selector_capacity, params->input_dim, &l->sel_buf);
    if (rc < 0) goto fail;
    rc = TAME_E_NOMEM;
    if (params->attribution_batches > 0) {
        l->pending = tame_calloc((size_t)params->attribution_batches, sizeof(*l->pending));
        if (!l->pending) goto fail;
        for (int i = 0; i < params->attribution_batches; i++) {
            struct tame_pending *q = &l->pending[i];
            q->x = tame_malloc((size_t)params->batch_size * params->input_dim * sizeof(float));
            q->y = tame_malloc((size_t)params->batch_size * sizeof(int));
            if (!q->x || !q->y) goto fail;
        }
    }
    *ret = l;
    return 0;
fail:
    tame_learner_free(l);
    return rc;
}

void tame_learner_free(struct tame_learner *l)
{
    if (!l) return;
    for (int k = 0; k < l->n_experts; k++) tame_expert_free(l->experts[k]);
    tame_reservoir_free(l->sel_buf);
    if (l->pending)
        for (int i = 0; i < l->p.attribution_batches; i++) {
            tame_free(l->pending[i].x);
            tame_free(l->pending[i].y);
        }
    tame_free(l->pending);
    nn_mlp_free(l->selector);
    tame_frozen_put(l->frozen_selector);
    tame_free(l->events);
    tame_helper_free(l->helper);
    tame_free(l);
}

int tame_learner_set_threads(struct tame_learner *l, int threads)
{
    if (threads < 1) return TAME_E_RANGE;
    if (threads >= 2 && !l->helper) return tame_helper_new(&l->helper);
    if (threads == 1) {
        tame_helper_free(l->helper);
        l->helper = NULL;
    }
    return 0;
}

const struct tame_params *tame_learner_params(const struct tame_learner *l) { return &l->p; }

/* ---- events ---- */

static int events_reserve(struct tame_learner *l, size_t more)
{
    if (l->n_events + more <= l->events_cap) return 0;
    size_t cap = l->events_cap ? l->events_cap : 16;
    while (cap < l->n_events + more) cap *= 2;
    struct tame_event *ev = tame_realloc(l->events, cap * sizeof(*ev));
    if (!ev) return TAME_E_NOMEM;
    l->events = ev;
    l->events_cap = cap;
    return 0;
}

int tame_learner_record(struct tame_learner *l, const struct tame_event *ev)
{
    int rc = events_reserve(l, 1);
    if (rc < 0) return rc;
    struct tame_event *e = &l->events[l->n_events++];
    *e = *ev;
    e->seq = l->next_event_seq++;
    e->k_sigma = l->p.k_sigma;
    e->k_warn = l->p.k_warn;
    e->min_batches = l->p.min_batches;
    return 0;
}

int tame_learner_take_events(struct tame_learner *l, struct tame_event **ret_events, size_t *ret_n)
{
    *ret_events = l->n_events ? l->events : NULL;
    *ret_n = l->n_events;
    if (!l->n_events) return 0;
    l->events = NULL;
    l->n_events = l->events_cap = 0;
    return 0;
}

static struct tame_event event_with_losses(const struct tame_learner *l, enum tame_event_kind kind,
                                           int from, int to)
{
    struct tame_event ev = {.batch = l->batches, .kind = kind, .from = from, .to = to};
    ev.n_losses = l->n_experts;
    for (int k = 0; k < l->n_experts; k++) ev.losses[k] = (float)l->experts[k]->loss;
    return ev;
}

/* ---- training helpers ---- */

int tame_batch_labels(const int *y, int n, uint8_t *present)
{
    int distinct = 0;
    for (int i = 0; i < n; i++) distinct += !present[y[i]], present[y[i]] = 1;
    return distinct;
}

int tame_train_epochs(struct nn_mlp *net, struct nn_work *work, const struct tame_params *p,
                      struct tame_rng *rng, const float *x, const int *y, int n, bool batch_head,
                      int epochs)
{
    if (n < 1 || epochs < 1) return 0;
    int bs = work->max_batch;
    struct nn_sgd opt = {.lr = p->lr, .momentum = p->momentum, .weight_decay = p->weight_decay};
    int *order = tame_malloc((size_t)n * sizeof(int));
    float *bx = tame_malloc((size_t)bs * p->input_dim * sizeof(float));
    int *by = tame_malloc((size_t)bs * sizeof(int));
    int rc = TAME_E_NOMEM;
    if (!order || !bx || !by) goto out;
    for (int i = 0; i < n; i++) order[i] = i;
    for (int ep = 0; ep < epochs; ep++) {
        tame_rng_shuffle(rng, order, n);
        for (int start = 0; start < n; start += bs) {
            int m = n - start < bs ? n - start : bs;
            for (int i = 0; i < m; i++) {
                int s = order[start + i];
                memcpy(bx + (size_t)i * p->input_dim, x + (size_t)s * p->input_dim,
                       (size_t)p->input_dim * sizeof(float));
                by[i] = y[s];
            }
            uint8_t head[NN_MAX_OUTPUTS] = {0};
            if (batch_head) tame_batch_labels(by, m, head);
            /* A refused (non-finite) update just leaves the weights as they were. */
            (void)nn_mlp_train_step(net, work, bx, by, m, batch_head ? head : NULL, &opt, NULL);
        }
    }
    rc = 0;
out:
    tame_free(order);
    tame_free(bx);
    tame_free(by);
    return rc;
}

/* A pruned and fine-tuned copy of a deactivated expert's network (DESIGN
 * 2.7), built before the step commits so that a failure changes nothing.
 * Fine-tuning uses the expert's own buffer and workspace. */
static int expert_pruned_copy(const struct tame_learner *l, struct tame_expert *e,
                              struct nn_mlp **ret_net)
{
    const struct tame_params *p = &l->p;
    int n = tame_reservoir_size(e->buf);
    struct nn_mlp *net = NULL;
    float *x = tame_malloc((size_t)(n ? n : 1) * p->input_dim * sizeof(float));
    int *y = tame_malloc((size_t)(n ? n : 1) * sizeof(int));
    int rc = TAME_E_NOMEM;
    if (!x || !y) goto out;
    rc = nn_mlp_clone(e->net, &net);
    if (rc < 0) goto out;
    rc = nn_mlp_prune(net, p->expert_sparsity);
    if (rc < 0) goto out;
    tame_reservoir_copy(e->buf, x, y, NULL);
    struct tame_rng rng;
    tame_rng_seed2(&rng, p->seed, 0x100000000ULL + l->batches * TAME_MAX_EXPERTS + (uint64_t)e->id);
    rc = tame_train_epochs(net, e->work, p, &rng, x, y, n, true, p->finetune_epochs);
    if (rc < 0) goto out;
    *ret_net = net;
    net = NULL;
out:
    nn_mlp_free(net);
    tame_free(x);
    tame_free(y);
    return rc;
}

/* Distinct labels of y[0..n) that have no bucket (label, tag) in r yet. */
static int new_buckets(const struct tame_reservoir *r, const int *y, int n, int tag)
{
    uint8_t seen[NN_MAX_OUTPUTS] = {0};
    int fresh = 0;
    for (int i = 0; i < n; i++) {
        if (seen[y[i]]) continue;
        seen[y[i]] = 1;
        fresh += !tame_reservoir_has_bucket(r, y[i], tag);
    }
    return fresh;
}

/* Samples enter the buffers of the expert they are attributed to, and
 * teach that expert's label set.  Room was reserved before the commit. */
static void attribute(struct tame_learner *l, const float *x, const int *y, int n, int expert)
{
    const struct tame_params *p = &l->p;
    struct tame_expert *e = l->experts[expert];
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * p->input_dim;
        e->label_count[y[i]]++;
        int rc = tame_reservoir_offer(l->sel_buf, xi, y[i], expert, tame_rng_uniform(&l->rng));
        TAME_ASSERT(rc == 0);
        rc = tame_reservoir_offer(e->buf, xi, y[i], 0, tame_rng_uniform(&l->rng));
        TAME_ASSERT(rc == 0);
    }
    tame_expert_update_labels(e, p->classes);
}

void tame_expert_update_labels(struct tame_expert *e, int classes)
{
    /* A label belongs to an expert once it is at least 1% of what the
     * expert trained on: the few samples of the previous task in a batch
     * that straddles a boundary must not widen its predictions. */
    uint64_t total = 0;
    for (int j = 0; j < classes; j++) total += e->label_count[j];
    for (int j = 0; j < classes; j++)
        e->labels[j] = e->label_count[j] > 0 && e->label_count[j] * 100 >= total;
}

static struct tame_pending *pending_at(struct tame_learner *l, int i)
{
    return &l->pending[(l->pend_head + i) % l->p.attribution_batches];
}

/* Step 7 of DESIGN 2.4 with the attribution delay: the oldest held-back
 * batch (if the ring is full) enters the buffers of the expert it is
 * attributed to, and B is copied into the ring's next slot; the caller
 * counts it in (pending_push) once B has trained.  Touches the buffers,
 * label counts and the RNG, never a network, so it can run beside the
 * weight update. */
struct buffer_job {
    struct tame_learner *l;
    const float *x;
    const int *y;
    int n;
};

static void buffer_work(void *arg)
{
    const struct buffer_job *job = arg;
    struct tame_learner *l = job->l;
    const struct tame_params *p = &l->p;
    if (l->pend_len == p->attribution_batches) {
        struct tame_pending *q = pending_at(l, 0);
        attribute(l, q->x, q->y, q->n, q->expert);
        l->pend_head = (l->pend_head + 1) % p->attribution_batches;
        l->pend_len--;
    }
    struct tame_pending *q = pending_at(l, l->pend_len);
    memcpy(q->x, job->x, (size_t)job->n * p->input_dim * sizeof(float));
    memcpy(q->y, job->y, (size_t)job->n * sizeof(int));
}

static void pending_push(struct tame_learner *l, int n, int expert)
{
    struct tame_pending *q = pending_at(l, l->pend_len);
    q->n = n;
    q->batch = l->batches;
    q->expert = expert;
    l->pend_len++;
}

/* Half of the active expert's first layer, for the helper thread. */
struct part_job {
    struct nn_mlp *net;
    struct nn_work *work;
    const float *x;
    int n, from, to;
    bool backward;
};

static void part_work(void *arg)
{
    const struct part_job *job = arg;
    if (job->backward) nn_mlp_backward_first(job->net, job->work, job->x, job->n, job->from, job->to);
    else nn_mlp_forward_first(job->net, job->work, job->x, job->n, job->from, job->to);
}

/* ---- the step ---- */

int tame_learner_step(struct tame_learner *l, const float *x, const int *y, int n)
{
    const struct tame_params *p = &l->p;
    if (n < 1 || n > p->batch_size) return TAME_E_RANGE;
    for (int i = 0; i < n; i++)
        if (y[i] < 0 || y[i] >= p->classes) return TAME_E_RANGE;
    if (!tame_all_finite(x, (size_t)n * p->input_dim)) {
        l->nonfinite_batches++;
        return TAME_E_NONFINITE;
    }
    /* Room for detect + reuse/spawn + prune (+ the first spawn). */
    int rc = events_reserve(l, 4);
    if (rc < 0) return rc;

    struct tame_expert *first = NULL;
    if (l->n_experts == 0) {
        rc = tame_expert_new(l, 0, &first);
        if (rc < 0) return rc;
    }
    const int n_old = l->n_experts;
    struct tame_expert *const *ex = l->experts;

    /* 2. Score every expert (forward only, test-then-train).  The head's
     * softmax covers the labels present in B (README, "Head"). */
    double loss[TAME_MAX_EXPERTS + 1];
    uint8_t in_batch[NN_MAX_OUTPUTS] = {0};
    int batch_labels = tame_batch_labels(y, n, in_batch);
    struct tame_score_job job = {.experts = ex, .x = x, .y = y, .n = n, .head = in_batch,
                                  .from = 0, .to = n_old, .skip = -1, .loss = loss};
    bool speculated = false; /* active expert's gradient already computed */
    if (n_old >= 1 && n_old <= 2 && ex[l->active]->net->layer[0].out >= 2) {
        /* One or two experts: not enough scoring to share, so the two
         * threads split the active expert's first layer (most of its work)
         * by output units, forward and backward.  One thread runs the very
         * same halves, so the arithmetic does not depend on the thread
         * count whatever GEMM kernel OpenBLAS picks. */
        int a0 = l->active;
        struct tame_expert *ea = ex[a0];
        int units = ea->net->layer[0].out, half = units / 2;
        struct part_job pj = {.net = ea->net, .work = ea->work, .x = x, .n = n, .from = half,
                              .to = units};
        if (n_old == 1) {
            if (l->helper) tame_helper_post(l->helper, part_work, &pj);
            nn_mlp_forward_first(ea->net, ea->work, x, n, 0, half);
            if (l->helper) tame_helper_wait(l->helper);
            else part_work(&pj);
        } else {
            job.from = 1 - a0, job.to = 2 - a0;
            if (l->helper) tame_helper_post(l->helper, tame_score_experts, &job);
            else tame_score_experts(&job);
            nn_mlp_forward_first(ea->net, ea->work, x, n, 0, units);
        }
        nn_mlp_forward_rest(ea->net, ea->work, n);
        loss[a0] = nn_head_loss_masked(ea->work, y, n, in_batch, ea->work->delta[0]);
        if (isfinite(loss[a0])) nn_mlp_backward_rest(ea->net, ea->work, n, ea->work->delta[0]);
        if (n_old == 2 && l->helper) tame_helper_wait(l->helper);
        if (isfinite(loss[a0])) {
            pj.backward = true;
            if (l->helper) tame_helper_post(l->helper, part_work, &pj);
            nn_mlp_backward_first(ea->net, ea->work, x, n, 0, half);
            if (l->helper) tame_helper_wait(l->helper);
            else part_work(&pj);
            speculated = true;
        }
    } else if (l->helper && n_old >= 3) {
        /* The helper scores the others while this thread scores the active
         * expert and back-propagates through it. */
        int a0 = l->active;
        /* Balance: forward + backward of the active expert cost about two
         * forwards, so the helper takes h of the others, about (n_old+1)/2. */
        int h = (n_old + 2) / 2;
        if (h > n_old - 1) h = n_old - 1;
        int split = h + (a0 < h); /* experts [0, split) minus a0 are h experts */
        job.to = split;
        job.skip = a0;
        tame_helper_post(l->helper, tame_score_experts, &job);
        struct tame_score_job mine = job;
        mine.from = a0, mine.to = a0 + 1, mine.skip = -1;
        tame_score_experts(&mine);
        if (isfinite(loss[a0])) {
            nn_mlp_backward(ex[a0]->net, ex[a0]->work, x, n, ex[a0]->work->delta[0]);
            speculated = true;
        }
        mine.from = split, mine.to = n_old, mine.skip = a0;
        tame_score_experts(&mine);
        tame_helper_wait(l->helper);
    } else {
        tame_score_experts(&job);
    }
    for (int k = 0; k < n_old; k++)
        if (!isfinite(loss[k])) {
            l->nonfinite_batches++;
            return TAME_E_NONFINITE;
        }

    /* 3-4. Threshold and shift test of the active expert, decided before
     * anything changes. */
    int a = l->active, next = a;
    bool detect = false, spawn = first != NULL;
    double s_all_a = 0, tau_a = 0, best_hyp = INFINITY;
    if (a >= 0) {
        struct tame_expert *ea = ex[a];
        s_all_a = ewma(ea->has_s_all, ea->s_all, loss[a], p->alpha);
        tau_a = window_line(ea, p->k_sigma, p->sigma_floor);
        /* The test runs once the expert has trained min_batches since it
         * became active and its window holds min_batches losses of its own:
         * a fresh expert cannot tell a shift from its own learning curve. */
        detect = !ea->probation && ea->since_active >= (uint64_t)p->min_batches &&
                 ea->win_len > p->min_batches && s_all_a > tau_a;
    }
    /* Reuse candidates: S_hyp_k = alpha*L_k + (1-alpha)*S_act_k below tau_k. */
    int best = -1, best_any = -1;
    double best_any_hyp = INFINITY;
    for (int k = 0; k < n_old && a >= 0; k++) {
        if (k == a) continue;
        const struct tame_expert *e = ex[k];
        double hyp = e->has_s_act ? p->alpha * loss[k] + (1.0 - p->alpha) * e->s_act : loss[k];
        if (hyp < best_any_hyp) best_any_hyp = hyp, best_any = k;
        if (hyp < e->tau && hyp < best_hyp) best_hyp = hyp, best = k;
    }
    /* Probation: a batch that straddles a boundary is a poor witness for
     * the reuse test, so a freshly spawned expert keeps asking it on the
     * clean batches that follow.  If an older expert qualifies before any
     * of the newcomer's batches reached the buffers, the newcomer is
     * retired and its batches go to the expert that owns the task. */
    bool retire = a >= 0 && ex[a]->probation && best >= 0;
    if (retire) next = best;
    if (detect) {
        if (best >= 0) {
            next = best;
        } else if (n_old < p->max_experts) {
            spawn = true;
        } else {
            /* At the expert limit: fall back to the closest expert. */
            next = best_any >= 0 ? best_any : a;
            best_hyp = best_any_hyp;
        }
    }
    struct tame_expert *born = first;
    struct nn_mlp *pruned = NULL;
    if (spawn && !born) {
        rc = tame_expert_new(l, n_old, &born);
        if (rc < 0) return rc;
    }
    if (born) {
        next = n_old;
        /* Its reference starts from an uninformed guess among B's labels. */
        born->window[0] = (float)log(batch_labels > 2 ? batch_labels : 2);
        nn_mlp_forward(born->net, born->work, x, n);
        loss[n_old] = nn_head_loss_masked(born->work, y, n, in_batch, born->work->delta[0]);
        if (!isfinite(loss[n_old])) {
            tame_expert_free(born);
            l->nonfinite_batches++;
            return TAME_E_NONFINITE;
        }
    }
    if (detect && next != a && p->expert_sparsity > 0) {
        rc = expert_pruned_copy(l, ex[a], &pruned);
        if (rc < 0) goto fail;
    }
    /* The warning zone of the active expert: where its S_all left the
     * warning line.  On a switch, held-back batches from that zone belong
     * to the new expert, not to the one that happened to train on them. */
    bool warning = false;
    uint64_t warn_since = l->batches;
    if (a >= 0) {
        warning = s_all_a > window_line(ex[a], p->k_warn, p->sigma_floor);
        if (warning && ex[a]->warning) warn_since = ex[a]->warn_since;
    }
    bool reattribute = (detect || retire) && next != a;
    uint64_t reattribute_from = retire ? 0 : warn_since;
    /* This step hands one batch to the buffers: the oldest held-back one if
     * the ring is full, or B itself without a ring.  Reserve its room. */
    const int *give_y = NULL;
    int give_n = 0, give_to = next;
    if (p->attribution_batches == 0) {
        give_y = y, give_n = n;
    } else if (l->pend_len == p->attribution_batches) {
        struct tame_pending *q = pending_at(l, 0);
        give_y = q->y, give_n = q->n, give_to = q->expert;
        if (reattribute && q->expert == a && q->batch >= reattribute_from) give_to = next;
    }
    if (give_n > 0) {
        struct tame_expert *target = give_to == n_old ? born : ex[give_to];
        rc = tame_reservoir_reserve(l->sel_buf, new_buckets(l->sel_buf, give_y, give_n, give_to));
        if (rc < 0) goto fail;
        rc = tame_reservoir_reserve(target->buf, new_buckets(target->buf, give_y, give_n, 0));
        if (rc < 0) goto fail;
    }

    /* Commit: from here on nothing fails. */
    for (int k = 0; k < n_old; k++) {
        struct tame_expert *e = ex[k];
        e->loss = loss[k];
        e->s_all = ewma(e->has_s_all, e->s_all, loss[k], p->alpha);
        e->has_s_all = true;
    }
    if (a >= 0) {
        ex[a]->tau = tau_a;
        ex[a]->warn_since = warn_since;
        ex[a]->warning = warning;
    }
    if (reattribute)
        for (int i = 0; i < l->pend_len; i++) {
            struct tame_pending *q = pending_at(l, i);
            if (q->expert == a && q->batch >= reattribute_from) q->expert = next;
        }
    if (born) {
        born->loss = born->s_all = loss[n_old];
        born->has_s_all = true;
        born->probation = n_old > 0 && p->attribution_batches > 0;
        l->experts[n_old] = born;
        l->n_experts++;
    }
    if (detect) {
        struct tame_event ev = event_with_losses(l, TAME_EV_DETECT, a, -1);
        ev.stat = s_all_a;
        ev.threshold = tau_a;
        tame_learner_record(l, &ev);
    }
    if (born) {
        struct tame_event ev = event_with_losses(l, TAME_EV_SPAWN, a, next);
        tame_learner_record(l, &ev);
    } else if ((detect || retire) && next != a) {
        struct tame_event ev = event_with_losses(l, TAME_EV_REUSE, a, next);
        ev.stat = best_hyp;
        ev.threshold = ex[next]->tau;
        tame_learner_record(l, &ev);
    }
    if ((detect || retire) && next != a && !born) {
        /* A reused expert's S_all has been tracking data it does not own
         * while inactive; restart it from the statistic that made it
         * qualify, or it would look "shifted" for ~20 batches and be
         * dropped again right after its minimum run (see README). */
        ex[next]->s_all = best_hyp;
    }
    if (detect || retire) {
        ex[next]->since_active = 0;
        ex[next]->warning = false;
    }
    if (retire) {
        /* The newcomer is the last expert.  Its own batches are still held
         * back (reattributed above), but the warning zone handed to it at
         * its spawn may already have reached the selector buffer: those
         * samples go to the expert that owns the task, or the buffer would
         * name an expert that no longer exists (a selector retrain then
         * stopped the daemon on an assertion, found by bench/soak.sh). */
        TAME_ASSERT(a == l->n_experts - 1);
        tame_reservoir_retag(l->sel_buf, a, next);
        tame_expert_free(ex[a]);
        l->experts[a] = NULL;
        l->n_experts--;
    }
    if (pruned) {
        nn_mlp_free(ex[a]->net);
        ex[a]->net = pruned;
        ex[a]->pruned = true;
        struct tame_event ev = event_with_losses(l, TAME_EV_PRUNE, a, a);
        ev.stat = (double)nn_mlp_nonzero(pruned);
        tame_learner_record(l, &ev);
    }
    l->active = next;

    /* 5. Train the active expert one step on B, reusing its forward pass,
     * while the helper (if any) feeds the buffers. */
    struct buffer_job bjob = {.l = l, .x = x, .y = y, .n = n};
    bool ring = p->attribution_batches > 0;
    if (ring && l->helper) tame_helper_post(l->helper, buffer_work, &bjob);
    else if (ring) buffer_work(&bjob);
    struct tame_expert *e = l->experts[next];
    double la = e->loss;
    if (!(speculated && next == a)) nn_mlp_backward(e->net, e->work, x, n, e->work->delta[0]);
    struct nn_sgd opt = {.lr = p->lr, .momentum = p->momentum, .weight_decay = p->weight_decay};
    bool trained = nn_sgd_step(e->net, &opt) == 0;
    if (trained) {
        /* The window keeps an honest reference: only losses of an expert
         * in control (below the warning line) enter it. */
        if (e->s_all <= window_line(e, p->k_warn, p->sigma_floor)) window_push(e, p->window, la);
        e->s_act = ewma(e->has_s_act, e->s_act, la, p->alpha);
        e->has_s_act = true;
        e->batches_trained++;
        e->since_active++;
        if (e->since_active >= (uint64_t)p->attribution_batches) e->probation = false;
        l->samples_trained += (uint64_t)n;
    } else {
        l->nonfinite_updates++;
    }
    if (ring && l->helper) tame_helper_wait(l->helper);
    /* 7. B waits in the ring (or, without one, enters the buffers now). */
    if (trained && ring) pending_push(l, n, next);
    else if (trained) attribute(l, x, y, n, next);
    l->batches++;
    return 0;
fail:
    if (born) tame_expert_free(born);
    nn_mlp_free(pruned);
    return rc;
}

/* ---- introspection ---- */

void tame_learner_info(const struct tame_learner *l, struct tame_info *info)
{
    *info = (struct tame_info){
        .batches = l->batches,
        .samples_trained = l->samples_trained,
        .n_experts = l->n_experts,
        .active = l->active,
        .nonfinite_batches = l->nonfinite_batches,
        .nonfinite_updates = l->nonfinite_updates,
        .selector_experts = l->selector ? l->selector_experts : 0,
        .selector_version = l->selector_version,
        .selector_fill = tame_reservoir_size(l->sel_buf),
    };
    /* Due when the expert set changed since the last job was taken, or
     * selector_every batches passed since, and
     * every expert has samples in the buffer to be routed to (a newcomer's
     * first samples arrive attribution_batches after it was spawned). */
    bool represented = l->n_experts >= 2;
    for (int k = 0; k < l->n_experts && represented; k++)
        represented = tame_reservoir_tag_count(l->sel_buf, k) > 0;
    info->selector_due = represented &&
                         (l->selector_req_experts != l->n_experts ||
                          l->batches - l->selector_batch >= (uint64_t)l->p.selector_every);
}

/* Counted once per version: by the frozen copy, if it is of the weights now. */
static size_t expert_nonzero(const struct tame_expert *e)
{
    const struct tame_frozen *f = e->frozen;
    return f && f->net->version == e->net->version ? f->nonzero : nn_mlp_nonzero(e->net);
}

int tame_learner_expert_info(const struct tame_learner *l, int expert,
                             struct tame_expert_info *info)
{
    if (expert < 0 || expert >= l->n_experts) return TAME_E_NOTFOUND;
    const struct tame_expert *e = l->experts[expert];
    *info = (struct tame_expert_info){
        .id = e->id,
        .batches_trained = e->batches_trained,
        .labels = e->labels,
        .nonzero_params = expert_nonzero(e),
        .loss = e->loss,
        .threshold = e->tau,
        .s_all = e->s_all,
        .s_act = e->s_act,
        .pruned = e->pruned,
        .buffer_fill = tame_reservoir_size(e->buf),
    };
    return 0;
}
