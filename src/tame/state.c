/* state.c: the whole learner as one checksummed blob (DESIGN 3).
 *   "TLRN" | version | params | rng | counters | experts (network blob,
 *   detector state, labels, buffer) | selector buffer | selector | pending
 *   events | crc32
 * Saving, loading and continuing must give exactly the same future as never
 * saving, so everything a later step reads is here; scratch workspaces are
 * rebuilt. */
#include "tame_internal.h"

#include <string.h>

#define LRN_MAGIC 0x4e524c54u /* "TLRN" */
#define LRN_VERSION 2u /* 2: selector jobs scheduled at taking */

void tame_params_save(const struct tame_params *p, struct tame_wbuf *w)
{
    tame_wbuf_i32(w, p->input_dim);
    tame_wbuf_i32(w, p->classes);
    tame_wbuf_i32(w, p->n_hidden);
    for (int i = 0; i < TAME_MAX_HIDDEN; i++) tame_wbuf_i32(w, p->hidden[i]);
    tame_wbuf_i32(w, p->batch_size);
    tame_wbuf_f32(w, p->head_scale);
    tame_wbuf_f32(w, p->lr);
    tame_wbuf_f32(w, p->momentum);
    tame_wbuf_f32(w, p->weight_decay);
    tame_wbuf_i32(w, p->window);
    tame_wbuf_f32(w, p->alpha);
    tame_wbuf_f32(w, p->k_sigma);
    tame_wbuf_f32(w, p->sigma_floor);
    tame_wbuf_f32(w, p->k_warn);
    tame_wbuf_i32(w, p->min_batches);
    tame_wbuf_i32(w, p->selector_capacity);
    tame_wbuf_i32(w, p->expert_capacity);
    tame_wbuf_i32(w, p->selector_epochs);
    tame_wbuf_f32(w, p->selector_lr);
    tame_wbuf_i32(w, p->selector_every);
    tame_wbuf_f32(w, p->expert_sparsity);
    tame_wbuf_f32(w, p->selector_sparsity);
    tame_wbuf_i32(w, p->finetune_epochs);
    tame_wbuf_i32(w, p->max_experts);
    tame_wbuf_i32(w, p->attribution_batches);
    tame_wbuf_u64(w, p->seed);
}

void tame_params_load(struct tame_rbuf *r, struct tame_params *p)
{
    p->input_dim = tame_rbuf_i32(r);
    p->classes = tame_rbuf_i32(r);
    p->n_hidden = tame_rbuf_i32(r);
    for (int i = 0; i < TAME_MAX_HIDDEN; i++) p->hidden[i] = tame_rbuf_i32(r);
    p->batch_size = tame_rbuf_i32(r);
    p->head_scale = tame_rbuf_f32(r);
    p->lr = tame_rbuf_f32(r);
    p->momentum = tame_rbuf_f32(r);
    p->weight_decay = tame_rbuf_f32(r);
    p->window = tame_rbuf_i32(r);
    p->alpha = tame_rbuf_f32(r);
    p->k_sigma = tame_rbuf_f32(r);
    p->sigma_floor = tame_rbuf_f32(r);
    p->k_warn = tame_rbuf_f32(r);
    p->min_batches = tame_rbuf_i32(r);
    p->selector_capacity = tame_rbuf_i32(r);
    p->expert_capacity = tame_rbuf_i32(r);
    p->selector_epochs = tame_rbuf_i32(r);
    p->selector_lr = tame_rbuf_f32(r);
    p->selector_every = tame_rbuf_i32(r);
    p->expert_sparsity = tame_rbuf_f32(r);
    p->selector_sparsity = tame_rbuf_f32(r);
    p->finetune_epochs = tame_rbuf_i32(r);
    p->max_experts = tame_rbuf_i32(r);
    p->attribution_batches = tame_rbuf_i32(r);
    p->seed = tame_rbuf_u64(r);
}

void tame_event_save(const struct tame_event *e, struct tame_wbuf *w)
{
    tame_wbuf_u64(w, e->seq);
    tame_wbuf_u64(w, e->batch);
    tame_wbuf_i32(w, (int32_t)e->kind);
    tame_wbuf_i32(w, e->from);
    tame_wbuf_i32(w, e->to);
    tame_wbuf_f64(w, e->stat);
    tame_wbuf_f64(w, e->threshold);
    tame_wbuf_i32(w, e->n_losses);
    tame_wbuf_f32s(w, e->losses, (size_t)e->n_losses);
    tame_wbuf_f32(w, e->k_sigma);
    tame_wbuf_f32(w, e->k_warn);
    tame_wbuf_i32(w, e->min_batches);
}

void tame_event_load(struct tame_rbuf *r, struct tame_event *e)
{
    memset(e, 0, sizeof(*e));
    e->seq = tame_rbuf_u64(r);
    e->batch = tame_rbuf_u64(r);
    int32_t kind = tame_rbuf_i32(r);
    e->kind = (enum tame_event_kind)kind;
    e->from = tame_rbuf_i32(r);
    e->to = tame_rbuf_i32(r);
    e->stat = tame_rbuf_f64(r);
    e->threshold = tame_rbuf_f64(r);
    e->n_losses = tame_rbuf_i32(r);
    if (kind < TAME_EV_DETECT || kind > TAME_EV_PRUNE || e->n_losses < 0 ||
        e->n_losses > TAME_MAX_EXPERTS) {
        r->err = TAME_E_CORRUPT;
        return;
    }
    tame_rbuf_f32s(r, e->losses, (size_t)e->n_losses);
    e->k_sigma = tame_rbuf_f32(r);
    e->k_warn = tame_rbuf_f32(r);
    e->min_batches = tame_rbuf_i32(r);
}

void tame_learner_save(const struct tame_learner *l, struct tame_wbuf *w)
{
    const struct tame_params *p = &l->p;
    size_t start = w->len;
    tame_wbuf_u32(w, LRN_MAGIC);
    tame_wbuf_u32(w, LRN_VERSION);
    tame_params_save(p, w);
    for (int i = 0; i < 4; i++) tame_wbuf_u64(w, l->rng.s[i]);
    tame_wbuf_u64(w, l->batches);
    tame_wbuf_u64(w, l->samples_trained);
    tame_wbuf_u64(w, l->nonfinite_batches);
    tame_wbuf_u64(w, l->nonfinite_updates);
    tame_wbuf_i32(w, l->n_experts);
    tame_wbuf_i32(w, l->active);
    for (int k = 0; k < l->n_experts; k++) {
        const struct tame_expert *e = l->experts[k];
        tame_wbuf_i32(w, e->id);
        nn_mlp_save(e->net, w);
        tame_wbuf_i32(w, e->win_len);
        tame_wbuf_i32(w, e->win_pos);
        tame_wbuf_f32s(w, e->window, (size_t)e->win_len);
        tame_wbuf_u8(w, (uint8_t)(e->has_s_all | e->has_s_act << 1 | e->pruned << 2 | e->warning << 3 |
                                  e->probation << 4));
        tame_wbuf_u64(w, e->warn_since);
        tame_wbuf_f64(w, e->s_all);
        tame_wbuf_f64(w, e->s_act);
        tame_wbuf_f64(w, e->tau);
        tame_wbuf_f64(w, e->loss);
        tame_wbuf_u64(w, e->batches_trained);
        tame_wbuf_u64(w, e->since_active);
        for (int j = 0; j < p->classes; j++) tame_wbuf_u64(w, e->label_count[j]);
        tame_reservoir_save(e->buf, w);
    }
    tame_reservoir_save(l->sel_buf, w);
    tame_wbuf_i32(w, l->pend_len);
    for (int i = 0; i < l->pend_len; i++) {
        const struct tame_pending *q = &l->pending[(l->pend_head + i) % p->attribution_batches];
        tame_wbuf_u64(w, q->batch);
        tame_wbuf_i32(w, q->n);
        tame_wbuf_i32(w, q->expert);
        tame_wbuf_f32s(w, q->x, (size_t)q->n * p->input_dim);
        for (int j = 0; j < q->n; j++) tame_wbuf_i32(w, q->y[j]);
    }
    tame_wbuf_u8(w, l->selector != NULL);
    if (l->selector) nn_mlp_save(l->selector, w);
    tame_wbuf_i32(w, l->selector_experts);
    tame_wbuf_u64(w, l->selector_version);
    tame_wbuf_u64(w, l->selector_batch);
    tame_wbuf_i32(w, l->selector_req_experts);
    tame_wbuf_u64(w, l->selector_jobs);
    tame_wbuf_u64(w, l->next_event_seq);
    tame_wbuf_u64(w, (uint64_t)l->n_events);
    for (size_t i = 0; i < l->n_events; i++) tame_event_save(&l->events[i], w);
    tame_wbuf_crc(w, start);
}

static int expert_load(struct tame_rbuf *r, const struct tame_learner *l, int k,
                       struct tame_expert **ret)
{
    const struct tame_params *p = &l->p;
    if (tame_rbuf_i32(r) != k) return TAME_E_CORRUPT;
    struct tame_expert *e;
    int rc = tame_expert_new(l, k, &e);
    if (rc < 0) return rc;
    /* Replace the freshly initialised parts with the stored ones. */
    nn_mlp_free(e->net);
    e->net = NULL;
    tame_reservoir_free(e->buf);
    e->buf = NULL;
    rc = nn_mlp_load(r, &e->net);
    if (rc < 0) goto fail;
    int dims[TAME_MAX_HIDDEN + 2];
    int n_dims = tame_dims(p, p->classes, dims);
    if (e->net->n_layers != n_dims - 1 || nn_mlp_inputs(e->net) != p->input_dim ||
        nn_mlp_outputs(e->net) != p->classes)
        goto corrupt;
    for (int i = 0; i < e->net->n_layers; i++)
        if (e->net->layer[i].out != dims[i + 1]) goto corrupt;
    e->win_len = tame_rbuf_i32(r);
    e->win_pos = tame_rbuf_i32(r);
    if (r->err || e->win_len < 1 || e->win_len > p->window || e->win_pos < 0 ||
        e->win_pos >= p->window)
        goto corrupt;
    tame_rbuf_f32s(r, e->window, (size_t)e->win_len);
    uint8_t flags = tame_rbuf_u8(r);
    e->has_s_all = flags & 1;
    e->has_s_act = flags & 2;
    e->pruned = flags & 4;
    e->warning = flags & 8;
    e->probation = flags & 16;
    e->warn_since = tame_rbuf_u64(r);
    e->s_all = tame_rbuf_f64(r);
    e->s_act = tame_rbuf_f64(r);
    e->tau = tame_rbuf_f64(r);
    e->loss = tame_rbuf_f64(r);
    e->batches_trained = tame_rbuf_u64(r);
    e->since_active = tame_rbuf_u64(r);
    for (int j = 0; j < p->classes; j++) e->label_count[j] = tame_rbuf_u64(r);
    if (r->err || flags > 31) goto corrupt;
    tame_expert_update_labels(e, p->classes);
    rc = tame_reservoir_load(r, p->expert_capacity, p->input_dim, &e->buf);
    if (rc < 0) goto fail;
    *ret = e;
    return 0;
corrupt:
    rc = TAME_E_CORRUPT;
fail:
    tame_expert_free(e);
    return rc;
}

int tame_learner_load(struct tame_rbuf *r, struct tame_learner **ret)
{
    size_t start = r->pos;
    if (tame_rbuf_u32(r) != LRN_MAGIC) return TAME_E_CORRUPT;
    uint32_t version = tame_rbuf_u32(r);
    if (r->err) return TAME_E_CORRUPT;
    if (version != LRN_VERSION) return TAME_E_VERSION;
    struct tame_params p;
    tame_params_load(r, &p);
    if (r->err || tame_params_validate(&p, NULL) < 0) return TAME_E_CORRUPT;
    struct tame_learner *l;
    int rc = tame_learner_new(&p, &l);
    if (rc < 0) return rc;
    for (int i = 0; i < 4; i++) l->rng.s[i] = tame_rbuf_u64(r);
    l->batches = tame_rbuf_u64(r);
    l->samples_trained = tame_rbuf_u64(r);
    l->nonfinite_batches = tame_rbuf_u64(r);
    l->nonfinite_updates = tame_rbuf_u64(r);
    int n_experts = tame_rbuf_i32(r);
    l->active = tame_rbuf_i32(r);
    if (r->err || n_experts < 0 || n_experts > p.max_experts || l->active < -1 ||
        l->active >= n_experts || (n_experts > 0) != (l->active >= 0))
        goto corrupt;
    for (int k = 0; k < n_experts; k++) {
        rc = expert_load(r, l, k, &l->experts[k]);
        if (rc < 0) goto fail;
        l->n_experts = k + 1;
    }
    /* What the step relies on: only the newest expert, spawned after
     * another and still in control, can be on probation (its retirement
     * removes the last expert; found by fuzz-state). */
    for (int k = 0; k < n_experts; k++)
        if (l->experts[k]->probation && (k == 0 || k != n_experts - 1 || k != l->active)) goto corrupt;
    tame_reservoir_free(l->sel_buf);
    l->sel_buf = NULL;
    rc = tame_reservoir_load(r, p.selector_capacity, p.input_dim, &l->sel_buf);
    if (rc < 0) goto fail;
    int pend_len = tame_rbuf_i32(r);
    if (r->err || pend_len < 0 || pend_len > p.attribution_batches) goto corrupt;
    for (int i = 0; i < pend_len; i++) {
        struct tame_pending *q = &l->pending[i]; /* stored oldest first: head 0 */
        q->batch = tame_rbuf_u64(r);
        q->n = tame_rbuf_i32(r);
        q->expert = tame_rbuf_i32(r);
        if (r->err || q->n < 1 || q->n > p.batch_size || q->expert < 0 || q->expert >= l->n_experts ||
            q->batch >= l->batches)
            goto corrupt;
        tame_rbuf_f32s(r, q->x, (size_t)q->n * p.input_dim);
        for (int j = 0; j < q->n; j++) {
            q->y[j] = tame_rbuf_i32(r);
            if (q->y[j] < 0 || q->y[j] >= p.classes) goto corrupt;
        }
        l->pend_len = i + 1;
    }
    uint8_t has_selector = tame_rbuf_u8(r);
    if (r->err || has_selector > 1) goto corrupt;
    if (has_selector) {
        rc = nn_mlp_load(r, &l->selector);
        if (rc < 0) goto fail;
    }
    l->selector_experts = tame_rbuf_i32(r);
    l->selector_version = tame_rbuf_u64(r);
    l->selector_batch = tame_rbuf_u64(r);
    l->selector_req_experts = tame_rbuf_i32(r);
    l->selector_jobs = tame_rbuf_u64(r);
    if (r->err || l->selector_experts < 0 || l->selector_experts > l->n_experts ||
        l->selector_req_experts < 0 || l->selector_req_experts > l->n_experts ||
        (l->selector && (nn_mlp_outputs(l->selector) != l->selector_experts ||
                         nn_mlp_inputs(l->selector) != p.input_dim)))
        goto corrupt;
    l->next_event_seq = tame_rbuf_u64(r);
    uint64_t n_events = tame_rbuf_u64(r);
    if (r->err || n_events > tame_rbuf_left(r) / 40) goto corrupt;
    if (n_events) {
        l->events = tame_malloc((size_t)n_events * sizeof(*l->events));
        if (!l->events) {
            rc = TAME_E_NOMEM;
            goto fail;
        }
        l->events_cap = (size_t)n_events;
        for (uint64_t i = 0; i < n_events; i++) tame_event_load(r, &l->events[i]);
        l->n_events = (size_t)n_events;
    }
    tame_rbuf_crc(r, start);
    if (r->err) goto corrupt;
    *ret = l;
    return 0;
corrupt:
    rc = TAME_E_CORRUPT;
fail:
    tame_learner_free(l);
    if (rc == TAME_E_CORRUPT) r->err = TAME_E_CORRUPT;
    return rc;
}
