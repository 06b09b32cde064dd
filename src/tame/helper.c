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
#include <stdatomic.h>

/* A job lasts tens to hundreds of microseconds, about what a futex wake-up
 * costs, so both sides spin for a short while before they sleep. */
#define SPIN_ROUNDS 20000

enum { H_IDLE, H_POSTED, H_DONE, H_QUIT };

struct tame_helper {
    pthread_t thread;
    pthread_mutex_t mu;                /* with cv: the sleeping path only */
    pthread_cond_t cv;
    atomic_int state;                  /* H_*: who owns fn/arg */
    void (*fn)(void *);                /* written by the caller before POSTED */
    void *arg;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Wait until state is one of a, b; spin first, then sleep. */
static int await_state(struct tame_helper *h, int a, int b)
{
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        int st = atomic_load_explicit(&h->state, memory_order_acquire);
        if (st == a || st == b) return st;
        cpu_relax();
    }
    pthread_mutex_lock(&h->mu);
    int st;
    while ((st = atomic_load_explicit(&h->state, memory_order_acquire)) != a && st != b)
        pthread_cond_wait(&h->cv, &h->mu);
    pthread_mutex_unlock(&h->mu);
    return st;
}

/* Publish a new state and wake a sleeper, if any. */
static void set_state(struct tame_helper *h, int st)
{
    atomic_store_explicit(&h->state, st, memory_order_release);
    pthread_mutex_lock(&h->mu);
    pthread_cond_broadcast(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

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
    tame_thread_setup("step-helper", 0);
    nn_blas_threads(1);
    while (await_state(h, H_POSTED, H_QUIT) == H_POSTED) {
        h->fn(h->arg);
        set_state(h, H_DONE);
    }
    return NULL;
}

int tame_helper_new(struct tame_helper **ret)
{
    struct tame_helper *h = tame_calloc(1, sizeof(*h));
    if (!h) return TAME_E_NOMEM;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    atomic_init(&h->state, H_IDLE);
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
    set_state(h, H_QUIT);
    pthread_join(h->thread, NULL);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    tame_free(h);
}

void tame_helper_post(struct tame_helper *h, void (*fn)(void *), void *arg)
{
    TAME_ASSERT(atomic_load(&h->state) == H_IDLE);
    h->fn = fn;
    h->arg = arg;
    set_state(h, H_POSTED);
}

void tame_helper_wait(struct tame_helper *h)
{
    await_state(h, H_DONE, H_DONE);
    atomic_store_explicit(&h->state, H_IDLE, memory_order_relaxed);
}
