/* test_lane.c: the lane runs what it is given exactly once: requests in
 * order, a forked task on an idle lane thread or back on its caller, and
 * a job pushed after the lane stopped on the pusher's own thread. */
#include "check_run.h"
#include "http_internal.h"

#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

static atomic_int order; /* how many probes ran before */

struct probe {
    struct lane_job job;
    pthread_t ran_on;
    int seq;
    atomic_int runs;
    atomic_bool hold;     /* keep the lane thread busy until cleared */
    atomic_bool started;
};

static void probe_run(struct lane_job *job)
{
    struct probe *p = (struct probe *)job;
    p->ran_on = pthread_self();
    p->seq = atomic_fetch_add(&order, 1);
    atomic_store(&p->started, true);
    while (atomic_load(&p->hold)) usleep(1000);
    atomic_fetch_add(&p->runs, 1);
}

struct counter {
    pthread_t ran_on;
    atomic_int runs;
};

static void count(void *arg)
{
    struct counter *c = arg;
    c->ran_on = pthread_self();
    atomic_fetch_add(&c->runs, 1);
}

static void wait_runs(atomic_int *runs, int want)
{
    for (int i = 0; i < 5000 && atomic_load(runs) < want; i++) usleep(1000);
    ck_assert_int_eq(atomic_load(runs), want);
}

START_TEST(a_forked_task_runs_once_on_an_idle_thread_or_its_caller)
{
    struct lane *l;
    ck_assert_int_eq(lane_start(1, 0, &l), 0);
    /* Idle thread: a fork is taken by it (once it waits for work). */
    struct counter c0 = {0};
    struct lane_task t0;
    bool f0 = false;
    for (int i = 0; i < 5000 && !(f0 = lane_fork(l, &t0, count, &c0)); i++) usleep(1000);
    ck_assert(f0);
    wait_runs(&c0.runs, 1); /* ran without a join */
    lane_join(&t0);
    ck_assert(!pthread_equal(c0.ran_on, pthread_self()));
    /* Joined at once, a task runs exactly once: on the lane thread or, not
     * yet taken, back on its caller. */
    for (int i = 0; i < 2000; i++) {
        struct counter c = {0};
        struct lane_task t;
        if (lane_fork(l, &t, count, &c)) lane_join(&t);
        else count(&c);
        ck_assert_int_eq(atomic_load(&c.runs), 1);
    }
    /* Busy thread: fork says no (the caller is left to run the task). */
    struct probe p = {.job = {.run = probe_run}};
    atomic_init(&p.hold, true);
    lane_push(l, &p.job);
    while (!atomic_load(&p.started)) usleep(1000);
    struct counter c = {0};
    struct lane_task t;
    ck_assert(!lane_fork(l, &t, count, &c));
    atomic_store(&p.hold, false);
    wait_runs(&p.runs, 1);
    lane_free(l);
}
END_TEST

START_TEST(jobs_run_in_order_and_after_stop_on_the_pusher)
{
    struct lane *l;
    ck_assert_int_eq(lane_start(1, 0, &l), 0);
    struct probe p[8];
    for (int i = 0; i < 8; i++) {
        p[i] = (struct probe){.job = {.run = probe_run}};
        lane_push(l, &p[i].job);
    }
    for (int i = 0; i < 8; i++) wait_runs(&p[i].runs, 1);
    for (int i = 1; i < 8; i++) ck_assert_int_eq(p[i].seq, p[i - 1].seq + 1); /* first in, first out */
    lane_stop(l); /* runs what is queued, then the threads end */
    struct probe late = {.job = {.run = probe_run}};
    lane_push(l, &late.job);
    ck_assert_int_eq(atomic_load(&late.runs), 1); /* already ran, here */
    ck_assert(pthread_equal(late.ran_on, pthread_self()));
    lane_free(l);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("lane");
    TCase *tc = tcase_create("lane");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, a_forked_task_runs_once_on_an_idle_thread_or_its_caller);
    tcase_add_test(tc, jobs_run_in_order_and_after_stop_on_the_pusher);
    suite_add_tcase(s, tc);
    return check_run(s);
}
