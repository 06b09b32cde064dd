/* lane.c: a few threads for the requests that would hold an HTTP thread
 * for long: every write (it waits for its SQLite commit) and every large
 * body (parsing 128 x 784 numbers takes a millisecond).  libmicrohttpd
 * serves many connections per thread, so one such request on an HTTP
 * thread would stall every prediction queued behind it; here it waits
 * with its connection suspended instead.  First in, first out; a request
 * may lend part of its own work (lane_fork) to a thread with nothing to do. */
#include "http_internal.h"

#include <stdlib.h>

struct lane {
    pthread_mutex_t mu;
    pthread_cond_t cv;      /* jobs for the threads */
    pthread_cond_t done_cv; /* tasks done, for lane_join */
    struct lane_job *head, *tail;
    int idle;               /* threads waiting for a job */
    bool stop;
    int n_threads;
    int nice;
    pthread_t threads[];
};

static void *lane_main(void *arg)
{
    struct lane *l = arg;
    tame_thread_setup("http-lane", l->nice);
    pthread_mutex_lock(&l->mu);
    for (;;) {
        l->idle++;
        while (!l->head && !l->stop) pthread_cond_wait(&l->cv, &l->mu);
        l->idle--;
        struct lane_job *job = l->head;
        if (!job) break; /* stopping, and nothing left */
        l->head = job->next;
        if (!l->head) l->tail = NULL;
        job->taken = true;
        pthread_mutex_unlock(&l->mu);
        job->run(job); /* ends by resuming its connection or marking its task done: job is gone */
        pthread_mutex_lock(&l->mu);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

int lane_start(int threads, int nice, struct lane **ret)
{
    struct lane *l = calloc(1, sizeof(*l) + (size_t)threads * sizeof(pthread_t));
    if (!l) return TAME_E_NOMEM;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cv, NULL);
    pthread_cond_init(&l->done_cv, NULL);
    l->nice = nice;
    for (int i = 0; i < threads; i++) {
        if (pthread_create(&l->threads[i], NULL, lane_main, l) != 0) {
            lane_free(l);
            return TAME_E_NOMEM;
        }
        l->n_threads++;
    }
    *ret = l;
    return 0;
}

void lane_push(struct lane *l, struct lane_job *job)
{
    job->next = NULL;
    job->taken = false;
    pthread_mutex_lock(&l->mu);
    if (l->stop) { /* stopping: a request that came late still gets its answer */
        pthread_mutex_unlock(&l->mu);
        job->taken = true;
        job->run(job);
        return;
    }
    if (l->tail) l->tail->next = job;
    else l->head = job;
    l->tail = job;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static void task_run(struct lane_job *job)
{
    struct lane_task *t = (struct lane_task *)job;
    t->fn(t->arg);
    pthread_mutex_lock(&t->lane->mu);
    t->done = true;
    pthread_cond_broadcast(&t->lane->done_cv);
    pthread_mutex_unlock(&t->lane->mu);
}

bool lane_fork(struct lane *l, struct lane_task *t, void (*fn)(void *arg), void *arg)
{
    *t = (struct lane_task){.job = {.run = task_run}, .lane = l, .fn = fn, .arg = arg};
    pthread_mutex_lock(&l->mu);
    bool idle = l->idle > 0 && !l->stop;
    if (idle) { /* first in line */
        t->job.next = l->head;
        l->head = &t->job;
        if (!l->tail) l->tail = &t->job;
        pthread_cond_signal(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return idle;
}

void lane_join(struct lane_task *t)
{
    struct lane *l = t->lane;
    pthread_mutex_lock(&l->mu);
    if (!t->job.taken) { /* nobody came: take it back and run it here */
        struct lane_job **pp = &l->head, *prev = NULL;
        while (*pp != &t->job) prev = *pp, pp = &(*pp)->next;
        *pp = t->job.next;
        if (l->tail == &t->job) l->tail = prev;
        pthread_mutex_unlock(&l->mu);
        t->fn(t->arg);
        return;
    }
    while (!t->done) pthread_cond_wait(&l->done_cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
}

void lane_stop(struct lane *l)
{
    if (!l) return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    for (int i = 0; i < l->n_threads; i++) pthread_join(l->threads[i], NULL);
    l->n_threads = 0;
}

void lane_free(struct lane *l)
{
    if (!l) return;
    lane_stop(l);
    pthread_mutex_destroy(&l->mu);
    pthread_cond_destroy(&l->cv);
    pthread_cond_destroy(&l->done_cv);
    free(l);
}
