/* error.c: names, messages and HTTP statuses of the TAME_E_* codes, all read
 * from the one TAME_ERRNO_MAP table in core.h. */
#include "tame/core.h"

#include <stdio.h>
#include <stdlib.h>

static int err_index(int err)
{
    if (err <= TAME_E_FIRST_ || err >= TAME_E_LAST_) return -1;
    return err - TAME_E_FIRST_ - 1;
}

const char *tame_strerror(int err)
{
    static const char *const msgs[] = {
#define X_(name, msg, http) msg,
        TAME_ERRNO_MAP(X_)
#undef X_
    };
    if (err >= 0) return "success";
    int i = err_index(err);
    return i < 0 ? "unknown error" : msgs[i];
}

const char *tame_err_name(int err)
{
    static const char *const names[] = {
#define X_(name, msg, http) #name,
        TAME_ERRNO_MAP(X_)
#undef X_
    };
    if (err >= 0) return "OK";
    int i = err_index(err);
    return i < 0 ? "UNKNOWN" : names[i];
}

int tame_err_http_status(int err)
{
    static const int statuses[] = {
#define X_(name, msg, http) http,
        TAME_ERRNO_MAP(X_)
#undef X_
    };
    if (err >= 0) return 200;
    int i = err_index(err);
    return i < 0 ? 500 : statuses[i];
}

void tame_assert_fail(const char *expr, const char *file, int line)
{
    fprintf(stderr, "level=fatal msg=\"assertion failed\" expr=\"%s\" at=%s:%d\n",
            expr, file, line);
    fflush(stderr);
    abort();
}
