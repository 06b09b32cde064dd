/* thread.c: see tame_thread_setup in core.h. */
#include "tame/core.h"
#include "tame/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/syscall.h>
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
