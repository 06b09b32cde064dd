/* selector.c: training the selector (DESIGN 2.6) as a job that copies what
 * it needs from the learner, runs anywhere, and is installed atomically.
 * The selector maps x to the expert that was active when x arrived. */
#include "tame_internal.h"

#include <string.h>

struct tame_selector_job {
    struct tame_params p;
    int n_experts;         /* outputs of the selector being trained */
    uint64_t version;      /* jobs taken before this one: seeds it */
    uint64_t batch;        /* learner batches when copied */
    int n;                 /* training samples */
    float *x;              /* [n x input_dim] */
    int *tag;              /* [n] expert ids */
    struct nn_mlp *net;    /* the trained selector, NULL until run */
    double accuracy;       /* on its own training sample */
};

void tame_selector_job_free(struct tame_selector_job *job)
{
    if (!job) return;
    tame_free(job->x);
    tame_free(job->tag);
    nn_mlp_free(job->net);
    tame_free(job);
}

int tame_selector_job_new(struct tame_learner *l, struct tame_selector_job **ret)
{
    int n = tame_reservoir_size(l->sel_buf);
    if (l->n_experts < 2 || n < 1) return TAME_E_STATE;
    struct tame_selector_job *job = tame_calloc(1, sizeof(*job));
    if (!job) return TAME_E_NOMEM;
    job->p = l->p;
    job->n_experts = l->n_experts;
    job->version = l->selector_jobs;
    job->batch = l->batches;
    job->n = n;
    job->x = tame_malloc((size_t)n * l->p.input_dim * sizeof(float));
    job->tag = tame_malloc((size_t)n * sizeof(int));
    if (!job->x || !job->tag) {
        tame_selector_job_free(job);
        return TAME_E_NOMEM;
    }
    tame_reservoir_copy(l->sel_buf, job->x, NULL, job->tag);
    /* A checkpoint written before retired newcomers handed their samples
     * on (tame_reservoir_retag) may still hold samples naming an expert
     * that no longer exists: they teach the selector nothing true. */
    int kept = 0;
    for (int i = 0; i < n; i++) {
        if (job->tag[i] >= l->n_experts) continue;
        if (kept != i)
            memcpy(job->x + (size_t)kept * l->p.input_dim, job->x + (size_t)i * l->p.input_dim,
                   (size_t)l->p.input_dim * sizeof(float));
        job->tag[kept++] = job->tag[i];
    }
    job->n = kept;
    if (kept == 0) {
        tame_selector_job_free(job);
        return TAME_E_STATE;
    }
    /* Taking a job is what schedules the next one, so when jobs are taken
     * depends only on the batches, never on when a job finishes: a log
     * replayed gives the same jobs with the same seeds. */
    l->selector_jobs++;
    l->selector_batch = l->batches;
    l->selector_req_experts = l->n_experts;
    *ret = job;
    return 0;
}

#define JOB_MAGIC 0x424f4a54u /* "TJOB" */

void tame_selector_job_save(const struct tame_selector_job *job, struct tame_wbuf *w)
{
    tame_wbuf_u32(w, JOB_MAGIC);
    tame_wbuf_i32(w, job->n_experts);
    tame_wbuf_u64(w, job->version);
    tame_wbuf_u64(w, job->batch);
    tame_wbuf_i32(w, job->n);
    tame_wbuf_f32s(w, job->x, (size_t)job->n * job->p.input_dim);
    for (int i = 0; i < job->n; i++) tame_wbuf_i32(w, job->tag[i]);
}

int tame_selector_job_load(struct tame_rbuf *r, const struct tame_params *p, struct tame_selector_job **ret)
{
    if (tame_rbuf_u32(r) != JOB_MAGIC) return TAME_E_CORRUPT;
    int n_experts = tame_rbuf_i32(r);
    uint64_t version = tame_rbuf_u64(r), batch = tame_rbuf_u64(r);
    int n = tame_rbuf_i32(r);
    if (r->err || n_experts < 2 || n_experts > TAME_MAX_EXPERTS || n < 1 || n > p->selector_capacity ||
        (size_t)n * p->input_dim * sizeof(float) > tame_rbuf_left(r))
        return TAME_E_CORRUPT;
    struct tame_selector_job *job = tame_calloc(1, sizeof(*job));
    if (!job) return TAME_E_NOMEM;
    job->p = *p;
    job->n_experts = n_experts;
    job->version = version;
    job->batch = batch;
    job->n = n;
    job->x = tame_malloc((size_t)n * p->input_dim * sizeof(float));
    job->tag = tame_malloc((size_t)n * sizeof(int));
    if (!job->x || !job->tag) {
        tame_selector_job_free(job);
        return TAME_E_NOMEM;
    }
    tame_rbuf_f32s(r, job->x, (size_t)n * p->input_dim);
    for (int i = 0; i < n; i++) {
        job->tag[i] = tame_rbuf_i32(r);
        if (job->tag[i] < 0 || job->tag[i] >= n_experts) r->err = TAME_E_CORRUPT;
    }
    if (r->err) {
        tame_selector_job_free(job);
        return TAME_E_CORRUPT;
    }
    *ret = job;
    return 0;
}

int tame_selector_job_run(struct tame_selector_job *job)
{
    /* The selector trains with its own learning rate (plain softmax head). */
    struct tame_params sp = job->p;
    sp.lr = sp.selector_lr;
    const struct tame_params *p = &sp;
    int dims[TAME_MAX_HIDDEN + 2];
    int n_dims = tame_dims(p, job->n_experts, dims);
    struct tame_rng rng;
    tame_rng_seed2(&rng, p->seed, 0x200000000ULL + job->version);
    struct nn_mlp *net = NULL;
    struct nn_work *work = NULL;
    int rc = nn_mlp_new(dims, n_dims, &rng, &net);
    if (rc < 0) goto fail;
    /* No detector watches the selector, so it needs no bounded loss; the
     * sigmoid head underfits it badly (README, "Head"). */
    net->head = NN_HEAD_SOFTMAX;
    rc = nn_work_new(net, p->batch_size, &work);
    if (rc < 0) goto fail;
    rc = tame_train_epochs(net, work, p, &rng, job->x, job->tag, job->n, false, p->selector_epochs);
    if (rc < 0) goto fail;
    if (p->selector_sparsity > 0) {
        rc = nn_mlp_prune(net, p->selector_sparsity);
        if (rc < 0) goto fail;
        rc = tame_train_epochs(net, work, p, &rng, job->x, job->tag, job->n, false, p->finetune_epochs);
        if (rc < 0) goto fail;
    }
    /* Accuracy on its own sample: how well it separates the experts. */
    int correct = 0;
    for (int start = 0; start < job->n; start += p->batch_size) {
        int m = job->n - start < p->batch_size ? job->n - start : p->batch_size;
        nn_mlp_forward(net, work, job->x + (size_t)start * p->input_dim, m);
        const float *z = nn_work_logits(work);
        for (int i = 0; i < m; i++) {
            int best = 0;
            for (int j = 1; j < job->n_experts; j++)
                if (z[i * job->n_experts + j] > z[i * job->n_experts + best]) best = j;
            correct += best == job->tag[start + i];
        }
    }
    job->accuracy = (double)correct / job->n;
    nn_work_free(work);
    nn_mlp_free(job->net);
    job->net = net;
    return 0;
fail:
    nn_work_free(work);
    nn_mlp_free(net);
    return rc;
}

int tame_learner_install_selector(struct tame_learner *l, struct tame_selector_job *job)
{
    if (!job->net || job->n_experts > l->n_experts ||
        nn_mlp_inputs(job->net) != l->p.input_dim)
        return TAME_E_STATE;
    /* Events carry the batch the job was taken at (its buffer), not the
     * batch it happened to be installed at. */
    int rc = tame_learner_record(l, &(struct tame_event){.batch = job->batch,
                                                         .kind = TAME_EV_SELECTOR,
                                                         .from = l->selector ? l->selector_experts : 0,
                                                         .to = job->n_experts,
                                                         .stat = job->accuracy});
    if (rc < 0) return rc;
    if (job->p.selector_sparsity > 0) {
        rc = tame_learner_record(l, &(struct tame_event){.batch = job->batch,
                                                         .kind = TAME_EV_PRUNE,
                                                         .from = -1,
                                                         .to = -1,
                                                         .stat = (double)nn_mlp_nonzero(job->net)});
        if (rc < 0) {
            l->n_events--; /* undo the selector event: all or nothing */
            l->next_event_seq--;
            return rc;
        }
    }
    nn_mlp_free(l->selector);
    l->selector = job->net;
    job->net = NULL;
    l->selector_experts = job->n_experts;
    l->selector_version++;
    return 0;
}

int tame_learner_train_selector(struct tame_learner *l)
{
    struct tame_selector_job *job;
    int rc = tame_selector_job_new(l, &job);
    if (rc < 0) return rc;
    rc = tame_selector_job_run(job);
    if (rc >= 0) rc = tame_learner_install_selector(l, job);
    tame_selector_job_free(job);
    return rc;
}
