/* log.h: one logging macro for the daemon's layers (tamed.c, http/, serve/).
 * Lines are logfmt on stderr: ts=... level=... msg="..." key=value...  The
 * level is checked before anything is formatted.  The engine never logs. */
#ifndef TAME_LOG_H
#define TAME_LOG_H

enum tame_log_level { TAME_LOG_DEBUG, TAME_LOG_INFO, TAME_LOG_WARN, TAME_LOG_ERROR };

extern enum tame_log_level tame_log_threshold;

/* Parse "debug", "info", "warn", "error"; -1 if none. */
int tame_log_level_parse(const char *s);
/* fmt continues the line after msg: e.g. tame_log(TAME_LOG_INFO, "model created",
 * "model=%s", name).  Thread-safe (one write per line). */
void tame_log_line(enum tame_log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define TAME_LOG(level, msg, ...)                                                 \
    do {                                                                          \
        if ((level) >= tame_log_threshold) tame_log_line((level), (msg), __VA_ARGS__); \
    } while (0)

#endif
