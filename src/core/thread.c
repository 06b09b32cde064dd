/* thread.c: see tame_thread_setup in core.h. */
#include "tame/core.h"
#include "tame/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

void tame_thread_setup(const char *name, int nice)
{
    char n[16]; /* the kernel keeps 15 bytes */
    snprintf(n, sizeof(n), "%s", name);
    pthread_setname_np(pthread_self(), n);
    /* On Linux nice is per thread.  Lowering needs no privilege; if it
     * fails, the thread simply competes as an equal. */
    if (nice > 0 && setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), nice) != 0)
        TAME_LOG(TAME_LOG_WARN, "cannot lower a thread's priority", "thread=%s errno=%d", n, errno);
}

struct timespec tame_deadline_ms(long ms)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    long ns = t.tv_nsec + ms % 1000 * 1000000L;
    t.tv_sec += ms / 1000 + ns / 1000000000L;
    t.tv_nsec = ns % 1000000000L;
    return t;
}

void tame_cond_wait_s(pthread_cond_t *cv, pthread_mutex_t *mu, int seconds)
{
    struct timespec until = tame_deadline_ms(seconds * 1000L);
    pthread_cond_timedwait(cv, mu, &until);
}
