/* snapshot.c: the published, read-only view that predictions use (DESIGN
 * 2.8): selector -> expert (argmax) -> that expert's softmax over the labels
 * it has trained on -> label.  A snapshot is never modified after it is
 * built, so any number of threads may predict from it at once, each with
 * its own tame_predict_work. */
#include "tame_internal.h"

#include <stdatomic.h>
#include <string.h>

int tame_frozen_get(const struct nn_mlp *net, struct tame_frozen **cache, struct tame_frozen **ret)
{
    struct tame_frozen *f = *cache;
    if (!f || f->net->version != net->version) {
        f = tame_calloc(1, sizeof(*f));
        if (!f) return TAME_E_NOMEM;
        if (nn_mlp_clone_frozen(net, &f->net) < 0) {
            tame_free(f);
            return TAME_E_NOMEM;
        }
        f->nonzero = nn_mlp_nonzero(f->net);
        atomic_init(&f->refs, 1); /* the cache's */
        tame_frozen_put(*cache);
        *cache = f;
    }
    atomic_fetch_add_explicit(&f->refs, 1, memory_order_relaxed);
    *ret = f;
    return 0;
}

void tame_frozen_put(struct tame_frozen *f)
{
    if (!f || atomic_fetch_sub_explicit(&f->refs, 1, memory_order_acq_rel) != 1) return;
    nn_mlp_free(f->net);
    tame_free(f);
}

struct tame_snapshot {
    int input_dim, classes;
    int n_experts;
    int active;                               /* route target without a selector */
    struct tame_frozen *frozen[TAME_MAX_EXPERTS]; /* the experts */
    uint8_t *labels;                          /* [n_experts x classes] */
    struct tame_frozen *frozen_selector;      /* or NULL */
    int selector_experts;
};

void tame_snapshot_free(struct tame_snapshot *s)
{
    if (!s) return;
    for (int k = 0; k < s->n_experts; k++) tame_frozen_put(s->frozen[k]);
    tame_frozen_put(s->frozen_selector);
    tame_free(s->labels);
    tame_free(s);
}

int tame_learner_snapshot(struct tame_learner *l, struct tame_snapshot **ret)
{
    struct tame_snapshot *s = tame_calloc(1, sizeof(*s));
    if (!s) return TAME_E_NOMEM;
    s->input_dim = l->p.input_dim;
    s->classes = l->p.classes;
    s->active = l->active;
    s->labels = tame_calloc((size_t)(l->n_experts ? l->n_experts : 1) * l->p.classes, 1);
    if (!s->labels) goto fail;
    for (int k = 0; k < l->n_experts; k++) {
        if (tame_frozen_get(l->experts[k]->net, &l->experts[k]->frozen, &s->frozen[k]) < 0) goto fail;
        s->n_experts = k + 1;
        uint8_t *lab = s->labels + (size_t)k * s->classes;
        memcpy(lab, l->experts[k]->labels, (size_t)s->classes);
        /* An expert whose first batches are still held back for attribution
         * predicts among the labels of those batches, not among all. */
        bool any = false;
        for (int j = 0; j < s->classes; j++) any |= lab[j] != 0;
        for (int i = 0; !any && i < l->pend_len; i++) {
            const struct tame_pending *q = &l->pending[(l->pend_head + i) % l->p.attribution_batches];
            if (q->expert != k) continue;
            for (int j = 0; j < q->n; j++) lab[q->y[j]] = 1;
        }
    }
    if (l->selector) {
        if (tame_frozen_get(l->selector, &l->frozen_selector, &s->frozen_selector) < 0) goto fail;
        s->selector_experts = l->selector_experts;
    }
    *ret = s;
    return 0;
fail:
    tame_snapshot_free(s);
    return TAME_E_NOMEM;
}

int tame_snapshot_experts(const struct tame_snapshot *s) { return s->n_experts; }
int tame_snapshot_classes(const struct tame_snapshot *s) { return s->classes; }

void tame_snapshot_nonzero(const struct tame_snapshot *s, size_t *ret_experts, size_t *ret_selector)
{
    size_t e = 0;
    for (int k = 0; k < s->n_experts; k++) e += s->frozen[k]->nonzero;
    *ret_experts = e;
    *ret_selector = s->frozen_selector ? s->frozen_selector->nonzero : 0;
}

struct tame_predict_work {
    int max_rows;
    struct nn_work *expert_work;   /* shaped like the experts */
    struct nn_work *selector_work; /* shaped like the selector it was made for */
    int selector_outputs;
    int *route;                    /* [max_rows] */
    int *rows;                     /* [max_rows] rows routed to one expert */
    float *gathered;               /* [max_rows x input_dim] */
    int expert_in;                 /* input_dim it was made for */
};

void tame_predict_work_free(struct tame_predict_work *w)
{
    if (!w) return;
    nn_work_free(w->expert_work);
    nn_work_free(w->selector_work);
    tame_free(w->route);
    tame_free(w->rows);
    tame_free(w->gathered);
    tame_free(w);
}

int tame_predict_work_new(const struct tame_snapshot *s, int max_rows, struct tame_predict_work **ret)
{
    if (max_rows < 1 || s->n_experts < 1) return TAME_E_STATE;
    struct tame_predict_work *w = tame_calloc(1, sizeof(*w));
    if (!w) return TAME_E_NOMEM;
    w->max_rows = max_rows;
    w->expert_in = s->input_dim;
    w->route = tame_malloc((size_t)max_rows * sizeof(int));
    w->rows = tame_malloc((size_t)max_rows * sizeof(int));
    w->gathered = tame_malloc((size_t)max_rows * s->input_dim * sizeof(float));
    if (!w->route || !w->rows || !w->gathered ||
        nn_work_new(s->frozen[0]->net, max_rows, &w->expert_work) < 0) {
        tame_predict_work_free(w);
        return TAME_E_NOMEM;
    }
    *ret = w;
    return 0;
}

bool tame_predict_work_fits(const struct tame_predict_work *w, const struct tame_snapshot *s, int rows)
{
    if (!w || rows > w->max_rows || s->n_experts < 1) return false;
    const struct nn_mlp *e = s->frozen[0]->net;
    const struct nn_work *ew = w->expert_work;
    if (ew->n_layers != e->n_layers || nn_mlp_inputs(e) != s->input_dim) return false;
    for (int l = 0; l < e->n_layers; l++)
        if (ew->width[l] != e->layer[l].out) return false;
    /* The gather buffer is sized by the inputs of the first layer. */
    return w->expert_in == e->layer[0].in && ew->head == e->head && ew->head_scale == e->head_scale;
}

/* Selectors grow with the experts: remake the workspace when the shape moves. */
static int selector_work_for(struct tame_predict_work *w, const struct nn_mlp *sel)
{
    if (w->selector_work && w->selector_outputs == nn_mlp_outputs(sel)) return 0;
    nn_work_free(w->selector_work);
    w->selector_work = NULL;
    int rc = nn_work_new(sel, w->max_rows, &w->selector_work);
    if (rc < 0) return rc;
    w->selector_outputs = nn_mlp_outputs(sel);
    return 0;
}

/* Probabilities of `e` restricted to the labels it trained on, renormalised;
 * writes the label and, if probs, the row. */
static void restricted(const struct tame_snapshot *s, int e, const float *p, float *probs, int *label)
{
    const uint8_t *lab = s->labels + (size_t)e * s->classes;
    bool any = false;
    for (int j = 0; j < s->classes; j++) any |= lab[j] != 0;
    double sum = 0;
    int best = -1;
    for (int j = 0; j < s->classes; j++) {
        if (any && !lab[j]) continue;
        sum += p[j];
        if (best < 0 || p[j] > p[best]) best = j;
    }
    *label = best;
    if (!probs) return;
    for (int j = 0; j < s->classes; j++) probs[j] = (!any || lab[j]) ? (float)(p[j] / sum) : 0.0f;
}

static int predict_chunk(const struct tame_snapshot *s, struct tame_predict_work *w, const float *x,
                         int n, int expert, struct tame_prediction *out, float *probs)
{
    const int d = s->input_dim;
    if (expert >= 0) {
        for (int i = 0; i < n; i++) w->route[i] = expert, out[i].confidence = 1.0f;
    } else if (s->frozen_selector && s->n_experts >= 2) {
        const struct nn_mlp *sel = s->frozen_selector->net;
        int rc = selector_work_for(w, sel);
        if (rc < 0) return rc;
        nn_mlp_forward(sel, w->selector_work, x, n);
        nn_head_probs(w->selector_work, n);
        int c = w->selector_outputs;
        for (int i = 0; i < n; i++) {
            const float *p = w->selector_work->prob + (size_t)i * c;
            int best = 0;
            for (int j = 1; j < s->selector_experts; j++)
                if (p[j] > p[best]) best = j;
            w->route[i] = best;
            out[i].confidence = p[best];
        }
    } else {
        int to = s->active >= 0 ? s->active : 0;
        for (int i = 0; i < n; i++) w->route[i] = to, out[i].confidence = 1.0f;
    }

    for (int e = 0; e < s->n_experts; e++) {
        int m = 0;
        for (int i = 0; i < n; i++)
            if (w->route[i] == e) w->rows[m++] = i;
        if (m == 0) continue;
        const float *in = x;
        if (m < n) { /* gather only when the chunk is split between experts */
            for (int r = 0; r < m; r++)
                memcpy(w->gathered + (size_t)r * d, x + (size_t)w->rows[r] * d, (size_t)d * sizeof(float));
            in = w->gathered;
        }
        nn_mlp_forward(s->frozen[e]->net, w->expert_work, in, m);
        nn_head_probs(w->expert_work, m);
        for (int r = 0; r < m; r++) {
            int i = w->rows[r];
            out[i].expert = e;
            restricted(s, e, w->expert_work->prob + (size_t)r * s->classes,
                       probs ? probs + (size_t)i * s->classes : NULL, &out[i].label);
        }
    }
    return 0;
}

int tame_snapshot_predict(const struct tame_snapshot *s, struct tame_predict_work *w, const float *x,
                          int n, int expert, struct tame_prediction *out, float *probs)
{
    if (n < 0 || expert >= s->n_experts) return TAME_E_RANGE;
    for (int start = 0; start < n; start += w->max_rows) {
        int m = n - start < w->max_rows ? n - start : w->max_rows;
        int rc = predict_chunk(s, w, x + (size_t)start * s->input_dim, m, expert, out + start,
                               probs ? probs + (size_t)start * s->classes : NULL);
        if (rc < 0) return rc;
    }
    return 0;
}
