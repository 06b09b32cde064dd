/* harness.h: the real tamed for integration tests: started on an ephemeral
 * loopback port with a database in a fresh temporary directory, restarted
 * on the same database, stopped with SIGTERM or killed with SIGKILL; and
 * HTTP requests to it through libcurl. */
#ifndef TAMED_TEST_HARNESS_H
#define TAMED_TEST_HARNESS_H

#include "synth.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdbool.h>
#include <sys/types.h>

extern const char *tamed_bin;

struct daemon {
    pid_t pid;
    int port;
    int starts;
    int exit_status;      /* of a start that failed (daemon_try_start) */
    uid_t uid;            /* run as this user (0: as the test) */
    char dir[128];        /* temporary directory: database and logs */
    char db[192];
    char log_path[192];   /* stderr of the latest start */
};

/* A fresh directory and database; extra: more flags, NULL-terminated. */
void daemon_start(struct daemon *d, const char *const *extra);
/* The same, as user uid (the test must be root to switch). */
void daemon_start_as(struct daemon *d, const char *const *extra, uid_t uid);
/* Start again on the same database. */
void daemon_restart(struct daemon *d, const char *const *extra);
/* Like daemon_restart, but a daemon that exits instead of listening is not
 * a failure: returns 0 if it listens, else its exit status. */
int daemon_try_start(struct daemon *d, const char *const *extra);
int daemon_stop(struct daemon *d); /* SIGTERM; the exit status */
void daemon_kill(struct daemon *d); /* SIGKILL */
bool daemon_log_has(const struct daemon *d, const char *text);
void daemon_remove(struct daemon *d); /* the directory and all in it */

struct buf {
    char *p;
    size_t n;
};
size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud);

struct reply {
    long status;
    char *body;          /* NUL-terminated, malloc'd */
    char www_auth[256];
    char retry_after[32];
};
/* One request, without asserting anything: CURLE_OK with *r filled, or
 * curl's error (r->body is then empty, r->status 0). */
CURLcode try_request(int port, const char *method, const char *path, const char *ctype, const char *body,
                     size_t body_len, const char *token, struct reply *r);
/* One request; ctype NULL = no Content-Type; token NULL = none. */
struct reply request(int port, const char *method, const char *path, const char *ctype, const char *body,
                     size_t body_len, const char *token);
struct reply call(int port, const char *method, const char *path, const char *json);
/* POST a JSON body from a feeding thread: the status, or 0 if the daemon did
 * not answer (killed or stopped), which is not a test failure. */
long post(int port, const char *path, const char *json);
/* call, assert the status, parse the JSON reply. */
json_t *call_json(int port, const char *method, const char *path, const char *json, long want);
double jnum(json_t *o, const char *key);

/* A samples request body of n synthetic samples of `task`, row or column form. */
char *samples_body(struct tame_rng *r, int task, int n, bool columns);

#endif
