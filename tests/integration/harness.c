/* harness.c: see harness.h. */
#include "harness.h"

#include <check.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
const char *tamed_bin;

/* Spawn tamed with its stderr in d->log_path and read its port from the
 * "listening" line; 0 if it exited first. */
static int spawn_daemon(struct daemon *d, const char *const *extra, bool must_listen)
{
    snprintf(d->log_path, sizeof(d->log_path), "%s/tamed-%d.log", d->dir, d->starts++);
    const char *argv[48] = {tamed_bin, "--listen", "127.0.0.1:0", "--workers", "2", "--db", d->db};
    int argc = 7;
    for (int i = 0; extra && extra[i] && argc < 46; i++) argv[argc++] = extra[i];
    argv[argc] = NULL;
    if (d->uid) {
        /* As another user: fork, drop to it, exec. */
        int fd = open(d->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(fchown(fd, d->uid, d->uid), 0);
        d->pid = fork();
        ck_assert_int_ge(d->pid, 0);
        if (d->pid == 0) {
            dup2(fd, 2);
            if (setgid(d->uid) != 0 || setuid(d->uid) != 0) _exit(126);
            execve(tamed_bin, (char *const *)argv, environ);
            _exit(127);
        }
        close(fd);
    } else {
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 2, d->log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ck_assert_int_eq(posix_spawn(&d->pid, tamed_bin, &fa, NULL, (char *const *)argv, environ), 0);
        posix_spawn_file_actions_destroy(&fa);
    }
    d->port = 0;
    for (int tries = 0; tries < 1500 && !d->port; tries++) {
        usleep(10000);
        FILE *f = fopen(d->log_path, "r");
        char line[1024];
        while (f && fgets(line, sizeof(line), f)) {
            char *a = strstr(line, "msg=\"listening\" addr=127.0.0.1:");
            if (a) d->port = atoi(a + strlen("msg=\"listening\" addr=127.0.0.1:"));
        }
        if (f) fclose(f);
        int st;
        if (!d->port && waitpid(d->pid, &st, WNOHANG) == d->pid) {
            d->pid = 0;
            d->exit_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            break;
        }
    }
    if (must_listen) ck_assert_msg(d->port > 0, "tamed did not start (see %s)", d->log_path);
    return d->port;
}

void daemon_start(struct daemon *d, const char *const *extra) { daemon_start_as(d, extra, 0); }

void daemon_start_as(struct daemon *d, const char *const *extra, uid_t uid)
{
    memset(d, 0, sizeof(*d));
    d->uid = uid;
    snprintf(d->dir, sizeof(d->dir), "/tmp/tamed-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(d->dir));
    if (uid) {
        ck_assert_int_eq(chown(d->dir, uid, uid), 0);
        ck_assert_int_eq(chmod(d->dir, 0755), 0);
    }
    snprintf(d->db, sizeof(d->db), "%s/tamed.db", d->dir);
    spawn_daemon(d, extra, true);
}

void daemon_restart(struct daemon *d, const char *const *extra) { spawn_daemon(d, extra, true); }

int daemon_try_start(struct daemon *d, const char *const *extra)
{
    if (spawn_daemon(d, extra, false)) return 0;
    return d->exit_status;
}

int daemon_stop(struct daemon *d)
{
    kill(d->pid, SIGTERM);
    int st;
    ck_assert_int_eq(waitpid(d->pid, &st, 0), d->pid);
    d->pid = 0;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

void daemon_kill(struct daemon *d)
{
    kill(d->pid, SIGKILL);
    int st;
    ck_assert_int_eq(waitpid(d->pid, &st, 0), d->pid);
    d->pid = 0;
}

bool daemon_log_has(const struct daemon *d, const char *text)
{
    FILE *f = fopen(d->log_path, "r");
    char line[2048];
    bool found = false;
    while (f && !found && fgets(line, sizeof(line), f)) found = strstr(line, text) != NULL;
    if (f) fclose(f);
    return found;
}

void daemon_remove(struct daemon *d)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
    if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", d->dir);
}

size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    size_t add = size * nmemb;
    b->p = realloc(b->p, b->n + add + 1);
    memcpy(b->p + b->n, ptr, add);
    b->n += add;
    b->p[b->n] = 0;
    return add;
}

static size_t on_header(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct reply *r = ud;
    size_t n = size * nmemb;
    if (n > 18 && !strncasecmp(ptr, "WWW-Authenticate: ", 18))
        snprintf(r->www_auth, sizeof(r->www_auth), "%.*s", (int)(n - 18 - 2), ptr + 18);
    if (n > 13 && !strncasecmp(ptr, "Retry-After: ", 13))
        snprintf(r->retry_after, sizeof(r->retry_after), "%.*s", (int)(n - 13 - 2), ptr + 13);
    return n;
}

CURLcode try_request(int port, const char *method, const char *path, const char *ctype, const char *body,
                     size_t body_len, const char *token, struct reply *r)
{
    CURL *c = curl_easy_init();
    char url[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    struct buf b = {0};
    memset(r, 0, sizeof(*r));
    struct curl_slist *hdr = NULL;
    char h1[128], h2[600];
    if (ctype) snprintf(h1, sizeof(h1), "Content-Type: %s", ctype), hdr = curl_slist_append(hdr, h1);
    else hdr = curl_slist_append(hdr, "Content-Type:");
    if (token) snprintf(h2, sizeof(h2), "Authorization: %s", token), hdr = curl_slist_append(hdr, h2);
    hdr = curl_slist_append(hdr, "Expect:");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)body_len);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    r->body = b.p ? b.p : strdup("");
    return rc;
}

struct reply request(int port, const char *method, const char *path, const char *ctype,
                            const char *body, size_t body_len, const char *token)
{
    struct reply r;
    CURLcode rc = try_request(port, method, path, ctype, body, body_len, token, &r);
    ck_assert_msg(rc == CURLE_OK, "%s %s: %s", method, path, curl_easy_strerror(rc));
    return r;
}

long post(int port, const char *path, const char *json)
{
    struct reply r;
    CURLcode rc = try_request(port, "POST", path, "application/json", json, strlen(json), NULL, &r);
    free(r.body);
    return rc == CURLE_OK ? r.status : 0;
}

struct reply call(int port, const char *method, const char *path, const char *json)
{
    return request(port, method, path, json ? "application/json" : NULL, json, json ? strlen(json) : 0, NULL);
}

json_t *call_json(int port, const char *method, const char *path, const char *json, long want)
{
    struct reply r = call(port, method, path, json);
    ck_assert_msg(r.status == want, "%s %s: status %ld, want %ld: %s", method, path, r.status, want, r.body);
    json_error_t e;
    json_t *doc = json_loads(r.body, 0, &e);
    ck_assert_msg(doc != NULL, "%s %s: not JSON: %s", method, path, r.body);
    free(r.body);
    return doc;
}

double jnum(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    ck_assert_msg(json_is_number(v), "no number %s", key);
    return json_number_value(v);
}

/* A samples request body of n samples of `task`, row or column form. */
char *samples_body(struct tame_rng *r, int task, int n, bool columns)
{
    float x[512 * SYNTH_DIM];
    int y[512];
    synth_batch(r, task, 2, true, x, y, n);
    json_t *doc = json_object();
    if (columns) {
        json_t *xs = json_array(), *ys = json_array();
        for (int i = 0; i < n; i++) {
            json_t *row = json_array();
            for (int j = 0; j < SYNTH_DIM; j++) json_array_append_new(row, json_real(x[i * SYNTH_DIM + j]));
            json_array_append_new(xs, row);
            json_array_append_new(ys, json_integer(y[i]));
        }
        json_object_set_new(doc, "x", xs);
        json_object_set_new(doc, "y", ys);
    } else {
        json_t *rows = json_array();
        for (int i = 0; i < n; i++) {
            json_t *row = json_array();
            for (int j = 0; j < SYNTH_DIM; j++) json_array_append_new(row, json_real(x[i * SYNTH_DIM + j]));
            json_array_append_new(rows, json_pack("{s:o,s:i}", "x", row, "y", y[i]));
        }
        json_object_set_new(doc, "samples", rows);
    }
    char *s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    return s;
}

