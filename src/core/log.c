/* log.c: logfmt lines on stderr, one write(2) per line so that threads do
 * not interleave. */
#include "tame/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum tame_log_level tame_log_threshold = TAME_LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

int tame_log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (!strcmp(s, level_names[i])) return i;
    return -1;
}

void tame_log_line(enum tame_log_level level, const char *msg, const char *fmt, ...)
{
    char line[1024];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int len = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=\"%s\"",
                       tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                       tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], msg);
    if (fmt && *fmt && len < (int)sizeof(line) - 2) {
        line[len++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int more = vsnprintf(line + len, sizeof(line) - (size_t)len, fmt, ap);
        va_end(ap);
        if (more > 0) len += more;
    }
    if (len > (int)sizeof(line) - 2) len = (int)sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)len);
    (void)w;
}
