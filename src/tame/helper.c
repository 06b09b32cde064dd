/* helper.c: the learner's optional second thread, which runs one function
 * at a time for the step.  Scoring every expert on a batch is independent
 * work, so the helper scores some inactive experts while the caller's thread
 * scores the active expert and back-propagates through it speculatively (it
 * is the one that trains unless a shift is detected); later the helper feeds
 * the buffers while the caller's thread updates the weights.  Each piece of
 * arithmetic is the same on either thread, so results are bit-identical to
 * the single-threaded step. */
#include "tame_internal.h"

#include <pthread.h>

struct tame_helper {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    enum { H_IDLE, H_POSTED, H_DONE, H_QUIT } state; /* guarded by mu */
    void (*fn)(void *);                               /* valid while POSTED */
    void *arg;
};

void tame_score_experts(void *arg)
{
    const struct tame_score_job *job = arg;
    for (int k = job->from; k < job->to; k++) {
        if (k == job->skip) continue;
        struct tame_expert *e = job->experts[k];
        nn_mlp_forward(e->net, e->work, job->x, job->n);
        job->loss[k] = nn_head_loss_masked(e->work, job->y, job->n, job->head, e->work->delta[0]);
    }
}

static void *helper_main(void *arg)
{
    struct tame_helper *h = arg;
    nn_blas_threads(1);
    pthread_mutex_lock(&h->mu);
    for (;;) {
        while (h->state != H_POSTED && h->state != H_QUIT) pthread_cond_wait(&h->cv, &h->mu);
        if (h->state == H_QUIT) break;
        pthread_mutex_unlock(&h->mu);
        h->fn(h->arg);
        pthread_mutex_lock(&h->mu);
        h->state = H_DONE;
        pthread_cond_broadcast(&h->cv);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

int tame_helper_new(struct tame_helper **ret)
{
    struct tame_helper *h = tame_calloc(1, sizeof(*h));
    if (!h) return TAME_E_NOMEM;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    h->state = H_IDLE;
    if (pthread_create(&h->thread, NULL, helper_main, h) != 0) {
        pthread_mutex_destroy(&h->mu);
        pthread_cond_destroy(&h->cv);
        tame_free(h);
        return TAME_E_NOMEM;
    }
    *ret = h;
    return 0;
}

void tame_helper_free(struct tame_helper *h)
{
    if (!h) return;
    pthread_mutex_lock(&h->mu);
    h->state = H_QUIT;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
    pthread_join(h->thread, NULL);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    tame_free(h);
}

void tame_helper_post(struct tame_helper *h, void (*fn)(void *), void *arg)
{
    pthread_mutex_lock(&h->mu);
    h->fn = fn;
    h->arg = arg;
    h->state = H_POSTED;
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

void tame_helper_wait(struct tame_helper *h)
{
    pthread_mutex_lock(&h->mu);
    while (h->state != H_DONE) pthread_cond_wait(&h->cv, &h->mu);
    h->state = H_IDLE;
    pthread_mutex_unlock(&h->mu);
}
