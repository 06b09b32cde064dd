/* test_durability.c: the real tamed killed and restarted on its database.
 * Every acknowledged sample id survives SIGKILL at random moments (with
 * checkpoints every few batches, so kills land inside them too) and the
 * database passes integrity_check; a stream killed and recovered ends with
 * the same events and bit-identical predictions as one never killed; a full
 * disk gets 503 and never an acknowledgement, and ingestion comes back by
 * itself; damaged or newer databases are refused and left untouched; an
 * older one is migrated; a backup taken while ingesting starts a daemon.
 *
 * TAMED_CRASH_ROUNDS sets the number of kill rounds (default 20; the
 * README's soak uses 200). */
#include "check_run.h"
#include "harness.h"

#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *model_spec =
    "{\"name\":\"m\",\"input_dim\":16,\"classes\":8,\"batch_size\":32,\"hidden\":[64,64],"
    "\"selector_capacity\":600,\"expert_capacity\":150,\"selector_epochs\":10,"
    "\"finetune_epochs\":3,\"expert_sparsity\":0.8,\"selector_every\":40}";

/* A samples body with ids "<prefix><first + i>", written by hand (fast). */
static char *id_body(struct tame_rng *r, int task, int n, const char *prefix, long first)
{
    float *x = malloc((size_t)n * SYNTH_DIM * sizeof(float));
    int *y = malloc((size_t)n * sizeof(int));
    synth_batch(r, task, 2, true, x, y, n);
    size_t cap = (size_t)n * (SYNTH_DIM * 16 + 64) + 32, len = 0;
    char *s = malloc(cap);
    len += (size_t)snprintf(s + len, cap - len, "{\"samples\":[");
    for (int i = 0; i < n; i++) {
        len += (size_t)snprintf(s + len, cap - len, "%s{\"id\":\"%s%ld\",\"y\":%d,\"x\":[", i ? "," : "", prefix,
                                first + i, y[i]);
        for (int j = 0; j < SYNTH_DIM; j++)
            len += (size_t)snprintf(s + len, cap - len, "%s%.9g", j ? "," : "", (double)x[i * SYNTH_DIM + j]);
        len += (size_t)snprintf(s + len, cap - len, "]}");
    }
    snprintf(s + len, cap - len, "]}");
    free(x);
    free(y);
    return s;
}

static bool integrity_ok(const char *db)
{
    sqlite3 *h;
    bool ok = false;
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK) {
        sqlite3_stmt *s;
        if (sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &s, NULL) == SQLITE_OK) {
            ok = sqlite3_step(s) == SQLITE_ROW && !strcmp((const char *)sqlite3_column_text(s, 0), "ok");
            sqlite3_finalize(s);
        }
    }
    sqlite3_close(h);
    return ok;
}

static void exec_sql(const char *db, const char *sql)
{
    sqlite3 *h;
    ck_assert_int_eq(sqlite3_open(db, &h), SQLITE_OK);
    char *err = NULL;
    int rc = sqlite3_exec(h, sql, NULL, NULL, &err);
    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, err ? err : "");
    sqlite3_close(h);
}

static void wait_ready(const struct daemon *d)
{
    long status = 0;
    for (int i = 0; i < 600 && status != 200; i++) {
        struct reply r = call(d->port, "GET", "/readyz", NULL);
        status = r.status;
        free(r.body);
        if (status != 200) usleep(50000);
    }
    ck_assert_msg(status == 200, "not ready after 30 s (see %s)", d->log_path);
}

/* ---- acknowledged ids survive SIGKILL ---- */

struct client {
    int port, k;
    atomic_bool *stop;
    unsigned seed;
    long next;             /* next id number (ids: c<k>-<n>) */
    long *acked;           /* ids acknowledged, as numbers */
    size_t n_acked, cap;
};

/* Record ids first .. first + n - 1 as acknowledged. */
static void acked_ids(struct client *c, long first, int n)
{
    for (int i = 0; i < n; i++) {
        if (c->n_acked == c->cap) {
            c->cap = c->cap ? 2 * c->cap : 1024;
            c->acked = realloc(c->acked, c->cap * sizeof(long));
        }
        c->acked[c->n_acked++] = first + i;
    }
}

static void *client_main(void *arg)
{
    struct client *c = arg;
    struct tame_rng r;
    tame_rng_seed(&r, c->seed);
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "c%d-", c->k);
    while (!*c->stop) {
        int n = 8 + (int)tame_rng_below(&r, 24);
        char *body = id_body(&r, (int)tame_rng_below(&r, 3), n, prefix, c->next);
        long status = post(c->port, "/v1/models/m/samples", body);
        if (status == 0) *c->stop = true; /* killed */
        if (status == 200) acked_ids(c, c->next, n);
        c->next += n; /* an unacknowledged id is never reused */
        free(body);
        if (status == 429) usleep(5000);
    }
    return NULL;
}

/* Every id in c->acked is known to the daemon: sent again, each is a duplicate. */
static void check_ids_known(int port, const struct client *c)
{
    struct tame_rng r;
    tame_rng_seed(&r, 5);
    char prefix[16];
    snprintf(prefix, sizeof(prefix), "c%d-", c->k);
    for (size_t i = 0; i < c->n_acked;) {
        /* Runs of consecutive ids go in one request. */
        size_t j = i + 1;
        while (j < c->n_acked && j - i < 200 && c->acked[j] == c->acked[j - 1] + 1) j++;
        char *body = id_body(&r, 0, (int)(j - i), prefix, c->acked[i]);
        json_t *a = call_json(port, "POST", "/v1/models/m/samples", body, 200);
        ck_assert_msg(jnum(a, "duplicates") == (double)(j - i) && jnum(a, "accepted") == 0,
                      "client %d: ids %ld..%ld were acknowledged but %g of %zu are unknown", c->k, c->acked[i],
                      c->acked[j - 1], jnum(a, "accepted"), j - i);
        json_decref(a);
        free(body);
        i = j;
    }
}

START_TEST(sigkill_at_random_moments_loses_no_acknowledged_id)
{
    const char *env = getenv("TAMED_CRASH_ROUNDS");
    int rounds = env ? atoi(env) : 20;
    const char *flags[] = {"--checkpoint-batches", "2", "--checkpoint-seconds", "1", NULL};
    struct daemon d;
    daemon_start(&d, flags);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    enum { CLIENTS = 4 };
    struct client cl[CLIENTS] = {0};
    for (int k = 0; k < CLIENTS; k++) cl[k].k = k, cl[k].seed = 100 + (unsigned)k;
    struct tame_rng rr;
    tame_rng_seed(&rr, 2024);
    long total = 0;
    for (int round = 0; round < rounds; round++) {
        atomic_bool stop = false;
        pthread_t th[CLIENTS];
        for (int k = 0; k < CLIENTS; k++) {
            cl[k].port = d.port;
            cl[k].stop = &stop;
            pthread_create(&th[k], NULL, client_main, &cl[k]);
        }
        usleep(100000 + (useconds_t)tame_rng_below(&rr, 600000));
        daemon_kill(&d);
        stop = true;
        for (int k = 0; k < CLIENTS; k++) pthread_join(th[k], NULL);
        ck_assert_msg(integrity_ok(d.db), "round %d: integrity_check failed", round);
        daemon_restart(&d, flags);
        wait_ready(&d);
        total = 0;
        for (int k = 0; k < CLIENTS; k++) total += (long)cl[k].n_acked;
        json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
        ck_assert_msg(jnum(m, "samples_acknowledged") >= (double)total, "round %d: %g acknowledged, clients saw %ld",
                      round, jnum(m, "samples_acknowledged"), total);
        json_decref(m);
    }
    ck_assert_int_gt(total, 0);
    for (int k = 0; k < CLIENTS; k++) check_ids_known(d.port, &cl[k]);
    json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_msg(jnum(m, "samples_acknowledged") >= (double)total, "resent ids were counted again");
    json_decref(m);
    ck_assert_int_eq(daemon_stop(&d), 0);
    ck_assert(integrity_ok(d.db));
    for (int k = 0; k < CLIENTS; k++) free(cl[k].acked);
    daemon_remove(&d);
}
END_TEST

/* ---- replay equivalence ---- */

#define STREAM_REQUESTS 200

/* Request i of the fixed stream: three tasks of 48 batches, one after the
 * other, then the first again. */
static char *stream_request(int i)
{
    struct tame_rng r;
    tame_rng_seed2(&r, 77, (uint64_t)i);
    return id_body(&r, i / 50 % 3, 24, "s", (long)i * 24);
}

static const char *stream_spec =
    "{\"name\":\"m\",\"input_dim\":16,\"classes\":8,\"batch_size\":32,\"hidden\":[32,32],\"window\":20,"
    "\"selector_capacity\":600,\"expert_capacity\":150,\"selector_epochs\":10,"
    "\"finetune_epochs\":3,\"expert_sparsity\":0.8,\"selector_every\":40}";

struct outcome {
    json_t *events;  /* every event */
    char *probe;     /* predict response on the probe set */
    json_t *model;
};

static void settle(const struct daemon *d)
{
    json_t *m0 = call_json(d->port, "GET", "/v1/models/m", NULL, 200);
    double v0 = jnum(json_object_get(m0, "selector"), "version");
    json_decref(m0);
    json_decref(call_json(d->port, "POST", "/v1/models/m/flush", NULL, 200));
    json_decref(call_json(d->port, "POST", "/v1/models/m/selector", NULL, 202));
    char last[1024] = "";
    for (int i = 0; i < 1200; i++) {
        json_t *m = call_json(d->port, "GET", "/v1/models/m", NULL, 200);
        json_t *sel = json_object_get(m, "selector");
        bool done = jnum(m, "samples_trained") == jnum(m, "samples_acknowledged") &&
                    jnum(sel, "pending") == 0 && !json_is_true(json_object_get(sel, "due")) &&
                    (jnum(sel, "version") > v0 || jnum(m, "n_experts") < 2);
        snprintf(last, sizeof(last), "trained %g of %g, selector version %g (was %g), pending %g", jnum(m, "samples_trained"),
                 jnum(m, "samples_acknowledged"), jnum(sel, "version"), v0, jnum(sel, "pending"));
        json_decref(m);
        if (done) return;
        usleep(25000);
    }
    ck_abort_msg("the model did not settle: %s (see %s)", last, d->log_path);
}

static struct outcome run_stream(const int *kill_after, int n_kills)
{
    struct daemon d;
    const char *flags[] = {"--checkpoint-batches", "3", NULL};
    daemon_start(&d, flags);
    json_decref(call_json(d.port, "POST", "/v1/models", stream_spec, 201));
    int k = 0;
    for (int i = 0; i < STREAM_REQUESTS; i++) {
        char *body = stream_request(i);
        json_decref(call_json(d.port, "POST", "/v1/models/m/samples", body, 200));
        free(body);
        if (k < n_kills && i == kill_after[k]) {
            /* Killed right after the acknowledgement, while the learner is
             * somewhere in its queue; the client then resends the last
             * request, as one would without the reply (a duplicate). */
            daemon_kill(&d);
            daemon_restart(&d, flags);
            wait_ready(&d);
            body = stream_request(i);
            json_t *a = call_json(d.port, "POST", "/v1/models/m/samples", body, 200);
            ck_assert_int_eq((int)jnum(a, "duplicates"), 24);
            json_decref(a);
            free(body);
            k++;
        }
    }
    settle(&d);
    struct outcome o;
    json_t *ev = call_json(d.port, "GET", "/v1/models/m/events?limit=1000", NULL, 200);
    o.events = json_incref(json_object_get(ev, "events"));
    json_decref(ev);
    /* Probe: inputs of every task. */
    struct tame_rng r;
    tame_rng_seed(&r, 4242);
    float x[48 * SYNTH_DIM];
    int y[48];
    char probe[48 * SYNTH_DIM * 20 + 64];
    size_t len = (size_t)snprintf(probe, sizeof(probe), "{\"x\":[");
    for (int t = 0; t < 3; t++) {
        synth_batch(&r, t, 2, true, x + t * 16 * SYNTH_DIM, y, 16);
    }
    for (int i = 0; i < 48; i++) {
        len += (size_t)snprintf(probe + len, sizeof(probe) - len, "%s[", i ? "," : "");
        for (int j = 0; j < SYNTH_DIM; j++)
            len += (size_t)snprintf(probe + len, sizeof(probe) - len, "%s%.9g", j ? "," : "",
                                    (double)x[i * SYNTH_DIM + j]);
        len += (size_t)snprintf(probe + len, sizeof(probe) - len, "]");
    }
    snprintf(probe + len, sizeof(probe) - len, "]}");
    struct reply p = call(d.port, "POST", "/v1/models/m/predict", probe);
    ck_assert_int_eq(p.status, 200);
    o.probe = p.body;
    o.model = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
    return o;
}

/* The events of one kind group (selector or not), in order, as text. */
static char *events_text(json_t *events, bool selector)
{
    json_t *keep = json_array();
    size_t i;
    json_t *e;
    json_array_foreach(events, i, e)
    {
        bool is_sel = !strcmp(json_string_value(json_object_get(e, "kind")), "selector") ||
                      (!strcmp(json_string_value(json_object_get(e, "kind")), "prune") &&
                       json_integer_value(json_object_get(e, "from")) == -1);
        if (is_sel != selector) continue;
        json_t *c = json_deep_copy(e);
        json_object_del(c, "seq"); /* selectors are installed when they are ready */
        json_array_append_new(keep, c);
    }
    char *s = json_dumps(keep, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(keep);
    return s;
}

START_TEST(a_stream_killed_and_recovered_ends_as_one_never_killed)
{
    struct tame_rng r;
    tame_rng_seed(&r, 31337);
    int kills[4];
    for (int k = 0; k < 4; k++) kills[k] = 20 + k * 45 + (int)tame_rng_below(&r, 40);
    struct outcome a = run_stream(NULL, 0), b = run_stream(kills, 4);
    char *ea = events_text(a.events, false), *eb = events_text(b.events, false);
    ck_assert_msg(json_array_size(a.events) > 3, "the stream made too few events to compare: %s", ea);
    ck_assert_str_eq(ea, eb);
    free(ea);
    free(eb);
    ea = events_text(a.events, true);
    eb = events_text(b.events, true);
    ck_assert_str_eq(ea, eb);
    free(ea);
    free(eb);
    ck_assert_str_eq(a.probe, b.probe); /* the same floats, printed the same way */
    static const char *const same[] = {"samples_acknowledged", "samples_trained", "batches", "n_experts",
                                       "active_expert"};
    for (size_t i = 0; i < sizeof(same) / sizeof(same[0]); i++)
        ck_assert_msg(jnum(a.model, same[i]) == jnum(b.model, same[i]),
                      "%s: %g vs %g", same[i], jnum(a.model, same[i]), jnum(b.model, same[i]));
    /* Duplicates are counted since the daemon started: the last resend. */
    ck_assert_int_eq((int)jnum(b.model, "samples_duplicate"), 24);
    json_decref(a.events);
    json_decref(b.events);
    json_decref(a.model);
    json_decref(b.model);
    free(a.probe);
    free(b.probe);
}
END_TEST

/* ---- a full disk ---- */

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

START_TEST(a_full_disk_gets_503_never_an_ack_and_recovers_by_itself)
{
    struct daemon d;
    daemon_start(&d, NULL);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    struct tame_rng r;
    tame_rng_seed(&r, 8);
    struct client c = {.k = 9};
    /* Enough to train and answer predictions. */
    for (int i = 0; i < 20; i++) {
        char *body = id_body(&r, 0, 32, "c9-", c.next);
        json_decref(call_json(d.port, "POST", "/v1/models/m/samples", body, 200));
        acked_ids(&c, c.next, 32);
        c.next += 32;
        free(body);
    }
    /* The files may not grow past what they are now: the disk is full. */
    char wal[256];
    snprintf(wal, sizeof(wal), "%s-wal", d.db);
    long cap = file_size(d.db) > file_size(wal) ? file_size(d.db) : file_size(wal);
    struct rlimit lim;
    ck_assert_int_eq(prlimit(d.pid, RLIMIT_FSIZE, NULL, &lim), 0);
    rlim_t hard = lim.rlim_cur;
    lim.rlim_cur = (rlim_t)cap + 8192;
    ck_assert_int_eq(prlimit(d.pid, RLIMIT_FSIZE, &lim, NULL), 0);
    int refused = 0;
    for (int i = 0; i < 400 && refused < 3; i++) {
        char *body = id_body(&r, 0, 32, "c9-", c.next);
        struct reply a = call(d.port, "POST", "/v1/models/m/samples", body);
        free(body);
        if (a.status == 200) {
            acked_ids(&c, c.next, 32);
        } else {
            ck_assert_msg(a.status == 503, "status %ld: %s", a.status, a.body);
            ck_assert_str_eq(a.retry_after, "5");
            ck_assert_ptr_nonnull(strstr(a.body, "UNAVAILABLE"));
            refused++;
        }
        c.next += 32;
        free(a.body);
    }
    ck_assert_int_eq(refused, 3);
    struct reply rz = call(d.port, "GET", "/readyz", NULL);
    ck_assert_int_eq(rz.status, 503);
    free(rz.body);
    const char *probe = "{\"x\":[[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}";
    json_decref(call_json(d.port, "POST", "/v1/models/m/predict", probe, 200));
    /* Space again: ready and ingesting within a few seconds, with no help. */
    lim.rlim_cur = hard;
    ck_assert_int_eq(prlimit(d.pid, RLIMIT_FSIZE, &lim, NULL), 0);
    wait_ready(&d);
    char *body = id_body(&r, 0, 32, "c9-", c.next);
    json_decref(call_json(d.port, "POST", "/v1/models/m/samples", body, 200));
    acked_ids(&c, c.next, 32);
    free(body);
    /* Nothing refused was acknowledged, nothing acknowledged was lost. */
    daemon_kill(&d);
    daemon_restart(&d, NULL);
    wait_ready(&d);
    json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_int_eq((long)jnum(m, "samples_acknowledged"), (long)c.n_acked);
    json_decref(m);
    check_ids_known(d.port, &c);
    ck_assert_int_eq(daemon_stop(&d), 0);
    free(c.acked);
    daemon_remove(&d);
}
END_TEST

/* ---- damaged, newer and older databases ---- */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    *len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc(*len ? *len : 1);
    ck_assert_uint_eq(fread(b, 1, *len, f), *len);
    fclose(f);
    return b;
}

static void write_file(const char *path, const char *b, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(b, 1, len, f), len);
    fclose(f);
}

/* A database with a trained model, cleanly closed. */
static void trained_database(struct daemon *d)
{
    daemon_start(d, NULL);
    json_decref(call_json(d->port, "POST", "/v1/models", model_spec, 201));
    struct tame_rng r;
    tame_rng_seed(&r, 3);
    for (int i = 0; i < 12; i++) {
        char *body = id_body(&r, i / 6, 32, "t", i * 32L);
        json_decref(call_json(d->port, "POST", "/v1/models/m/samples", body, 200));
        free(body);
    }
    ck_assert_int_eq(daemon_stop(d), 0);
}

/* Start on the damaged file: refused with a message, file untouched. */
static void check_refused(struct daemon *d, const char *want_in_log)
{
    size_t before_len, after_len;
    char *before = read_file(d->db, &before_len);
    int st = daemon_try_start(d, NULL);
    ck_assert_msg(st != 0, "tamed started on a database it should refuse");
    ck_assert_int_eq(st, 1);
    ck_assert_msg(daemon_log_has(d, want_in_log), "the log does not say '%s' (see %s)", want_in_log, d->log_path);
    char *after = read_file(d->db, &after_len);
    ck_assert_uint_eq(before_len, after_len);
    ck_assert_msg(memcmp(before, after, before_len) == 0, "the refused database was modified");
    free(before);
    free(after);
}

START_TEST(a_flipped_page_is_refused_and_left_untouched)
{
    struct daemon d;
    trained_database(&d);
    size_t len;
    char *b = read_file(d.db, &len);
    /* The page size is big-endian at offset 16 of the header (1 = 65536). */
    size_t page = (size_t)((unsigned char)b[16] << 8 | (unsigned char)b[17]);
    if (page == 1) page = 65536;
    ck_assert_uint_gt(len, 2 * page);
    for (int i = 0; i < 16; i++) b[page + (size_t)i] ^= (char)0x5a; /* page 2's header */
    write_file(d.db, b, len);
    free(b);
    check_refused(&d, "database corrupt");
    daemon_remove(&d);
}
END_TEST

START_TEST(a_flipped_byte_in_a_checkpoint_is_refused_and_left_untouched)
{
    struct daemon d;
    trained_database(&d);
    size_t len;
    char *b = read_file(d.db, &len);
    /* Learner state blobs begin with the magic "TLRN" (as a little-endian
     * word); damage every copy, stale ones in free pages included. */
    int hit = 0;
    for (size_t i = 0; i + 300 < len; i++)
        if (!memcmp(b + i, "NRLT", 4) || !memcmp(b + i, "TLRN", 4)) b[i + 200] ^= 1, hit++;
    ck_assert_int_gt(hit, 0);
    write_file(d.db, b, len);
    free(b);
    check_refused(&d, "checksum mismatch");
    daemon_remove(&d);
}
END_TEST

/* The checkpoints table as versions 1 and 2 laid it out (state third). */
static void old_checkpoint_layout(const char *db)
{
    exec_sql(db, "CREATE TABLE c_old(model_id INTEGER PRIMARY KEY, pos INTEGER NOT NULL, state BLOB NOT NULL,"
                 "  crc INTEGER NOT NULL, created_at INTEGER NOT NULL);"
                 "INSERT INTO c_old SELECT model_id, pos, state, crc, created_at FROM checkpoints;"
                 "DROP TABLE checkpoints; ALTER TABLE c_old RENAME TO checkpoints");
}

/* After a migration: the current version, and the state last in its row. */
static void check_current_schema(const char *db)
{
    sqlite3 *h;
    ck_assert_int_eq(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    ck_assert_int_eq(sqlite3_prepare_v2(h, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    ck_assert_int_eq(sqlite3_column_int(s, 0), 3);
    sqlite3_finalize(s);
    ck_assert_int_eq(sqlite3_prepare_v2(h, "SELECT name FROM pragma_table_info('checkpoints') ORDER BY cid DESC LIMIT 1",
                                        -1, &s, NULL),
                     SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "state");
    sqlite3_finalize(s);
    sqlite3_close(h);
}

START_TEST(a_newer_database_is_refused_and_an_older_one_migrated)
{
    struct daemon d;
    trained_database(&d);
    /* Newer than this build. */
    exec_sql(d.db, "PRAGMA user_version = 99");
    check_refused(&d, "newer than this tamed understands");
    /* Version 2: the checkpoint's state third in its row.  It loads, and the
     * migration moves it last. */
    old_checkpoint_layout(d.db);
    exec_sql(d.db, "PRAGMA user_version = 2");
    daemon_restart(&d, NULL);
    wait_ready(&d);
    ck_assert_msg(daemon_log_has(&d, "msg=\"model loaded\" model=m checkpoint=384 "), "see %s", d.log_path);
    ck_assert_int_eq(daemon_stop(&d), 0);
    check_current_schema(d.db);
    /* Version 1: the same, and without what version 2 added (sample ids). */
    old_checkpoint_layout(d.db);
    exec_sql(d.db, "DROP TABLE sample_ids; PRAGMA user_version = 1");
    daemon_restart(&d, NULL);
    wait_ready(&d);
    json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_int_eq((int)jnum(m, "samples_acknowledged"), 12 * 32);
    json_decref(m);
    struct tame_rng r;
    tame_rng_seed(&r, 3);
    char *body = id_body(&r, 0, 8, "new", 0);
    json_t *a = call_json(d.port, "POST", "/v1/models/m/samples", body, 200);
    ck_assert_int_eq((int)jnum(a, "accepted"), 8);
    json_decref(a);
    a = call_json(d.port, "POST", "/v1/models/m/samples", body, 200);
    ck_assert_int_eq((int)jnum(a, "duplicates"), 8);
    json_decref(a);
    free(body);
    ck_assert_int_eq(daemon_stop(&d), 0);
    check_current_schema(d.db);
    daemon_remove(&d);
}
END_TEST

START_TEST(a_backup_taken_while_ingesting_starts_a_daemon)
{
    struct daemon d;
    trained_database(&d);
    daemon_restart(&d, NULL);
    wait_ready(&d);
    atomic_bool stop = false;
    struct client c = {.port = d.port, .k = 1, .stop = &stop, .seed = 11};
    pthread_t th;
    pthread_create(&th, NULL, client_main, &c);
    usleep(200000);
    char dst[sizeof(((struct daemon *)0)->db)];
    snprintf(dst, sizeof(dst), "%s/backup.db", d.dir);
    pid_t pid = fork();
    if (pid == 0) {
        execl(tamed_bin, tamed_bin, "backup", dst, "--db", d.db, (char *)NULL);
        _exit(127);
    }
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    ck_assert_msg(WIFEXITED(st) && WEXITSTATUS(st) == 0, "tamed backup failed");
    stop = true;
    pthread_join(th, NULL);
    ck_assert_int_eq(daemon_stop(&d), 0);
    ck_assert(integrity_ok(dst));
    /* A second daemon on the copy. */
    struct daemon b = d;
    snprintf(b.db, sizeof(b.db), "%s", dst);
    daemon_restart(&b, NULL);
    wait_ready(&b);
    json_t *m = call_json(b.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_int_ge((int)jnum(m, "samples_acknowledged"), 12 * 32);
    json_decref(m);
    ck_assert_int_eq(daemon_stop(&b), 0);
    free(c.acked);
    daemon_remove(&d);
}
END_TEST

START_TEST(a_read_only_database_serves_predictions_and_refuses_samples_until_writable)
{
    /* File permissions bind only an unprivileged user: as root, tamed runs
     * as nobody. */
    uid_t uid = geteuid() == 0 ? 65534 : 0;
    struct daemon d;
    daemon_start_as(&d, NULL, uid);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    struct tame_rng r;
    tame_rng_seed(&r, 6);
    for (int i = 0; i < 8; i++) {
        char *body = id_body(&r, 0, 32, "r", i * 32L);
        json_decref(call_json(d.port, "POST", "/v1/models/m/samples", body, 200));
        free(body);
    }
    ck_assert_int_eq(daemon_stop(&d), 0);
    ck_assert_int_eq(chmod(d.db, 0444), 0);
    daemon_restart(&d, NULL);
    struct reply rz = call(d.port, "GET", "/readyz", NULL);
    ck_assert_int_eq(rz.status, 503);
    ck_assert_ptr_nonnull(strstr(rz.body, "not writable"));
    free(rz.body);
    const char *probe = "{\"x\":[[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}";
    json_decref(call_json(d.port, "POST", "/v1/models/m/predict", probe, 200));
    char *body = id_body(&r, 0, 32, "r", 1000);
    struct reply a = call(d.port, "POST", "/v1/models/m/samples", body);
    ck_assert_int_eq(a.status, 503);
    ck_assert_ptr_nonnull(strstr(a.body, "UNAVAILABLE"));
    free(a.body);
    struct reply mt = call(d.port, "GET", "/metrics", NULL);
    ck_assert_ptr_nonnull(strstr(mt.body, "\ntame_store_writable 0\n"));
    free(mt.body);
    json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_int_eq((int)jnum(m, "samples_acknowledged"), 8 * 32);
    json_decref(m);
    /* Writable again: ingestion returns by itself. */
    ck_assert_int_eq(chmod(d.db, 0644), 0);
    wait_ready(&d);
    json_t *ok = call_json(d.port, "POST", "/v1/models/m/samples", body, 200);
    ck_assert_int_eq((int)jnum(ok, "accepted"), 32);
    json_decref(ok);
    free(body);
    ck_assert_int_eq(daemon_stop(&d), 0);
    ck_assert(integrity_ok(d.db));
    daemon_remove(&d);
}
END_TEST

START_TEST(the_durability_level_is_in_force_and_reported)
{
    const char *full[] = {"--durability", "full", NULL};
    struct daemon d;
    daemon_start(&d, full);
    struct reply mt = call(d.port, "GET", "/metrics", NULL);
    ck_assert_ptr_nonnull(strstr(mt.body, "\ntame_store_synchronous 2\n"));
    free(mt.body);
    sqlite3 *h;
    ck_assert_int_eq(sqlite3_open_v2(d.db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *s;
    ck_assert_int_eq(sqlite3_prepare_v2(h, "PRAGMA journal_mode", -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(s, 0), "wal");
    sqlite3_finalize(s);
    sqlite3_close(h);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_restart(&d, NULL);
    mt = call(d.port, "GET", "/metrics", NULL);
    ck_assert_ptr_nonnull(strstr(mt.body, "\ntame_store_synchronous 1\n"));
    free(mt.body);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

START_TEST(a_kill_inside_a_checkpoint_leaves_the_previous_one)
{
    /* Every checkpoint stalls 2 s inside its transaction (test hook), after
     * the new state and the log trim are written and before COMMIT. */
    setenv("TAMED_TEST_CHECKPOINT_PAUSE_MS", "2000", 1);
    const char *flags[] = {"--checkpoint-batches", "4", NULL};
    struct daemon d;
    daemon_start(&d, flags);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    struct tame_rng r;
    tame_rng_seed(&r, 12);
    long sent = 0;
    for (int i = 0; i < 4; i++, sent += 32) {
        char *body = id_body(&r, 0, 32, "k", sent);
        json_decref(call_json(d.port, "POST", "/v1/models/m/samples", body, 200));
        free(body);
    }
    /* The first checkpoint commits after its pause. */
    double pos1 = 0;
    for (int i = 0; i < 200 && pos1 == 0; i++) {
        usleep(50000);
        json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
        pos1 = jnum(json_object_get(m, "durability"), "checkpoint_position");
        json_decref(m);
    }
    ck_assert_int_eq((int)pos1, 4 * 32);
    /* The second (due once these four batches are trained) is killed in
     * its pause; no request follows (it would wait for the pause). */
    for (int i = 0; i < 4; i++, sent += 32) {
        char *body = id_body(&r, 1, 32, "k", sent);
        json_decref(call_json(d.port, "POST", "/v1/models/m/samples", body, 200));
        free(body);
    }
    bool paused = false;
    for (int i = 0; i < 200 && !paused; i++) {
        usleep(20000);
        FILE *f = fopen(d.log_path, "r");
        char line[1024];
        int n = 0;
        while (f && fgets(line, sizeof(line), f)) n += strstr(line, "checkpoint paused") != NULL;
        if (f) fclose(f);
        paused = n >= 2;
    }
    ck_assert_msg(paused, "the second checkpoint did not start (see %s)", d.log_path);
    daemon_kill(&d);
    ck_assert(integrity_ok(d.db));
    unsetenv("TAMED_TEST_CHECKPOINT_PAUSE_MS");
    daemon_restart(&d, flags);
    wait_ready(&d);
    /* The old checkpoint was loaded, whole (its CRC and the learner's
     * checked), and the log after it replayed (which may checkpoint anew). */
    ck_assert_msg(daemon_log_has(&d, "msg=\"model loaded\" model=m checkpoint=128 "), "see %s", d.log_path);
    json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_int_eq((long)jnum(m, "samples_acknowledged"), sent);
    json_decref(m);
    json_decref(call_json(d.port, "POST", "/v1/models/m/flush", NULL, 200));
    double trained = 0;
    for (int i = 0; i < 200 && trained != (double)sent; i++) {
        usleep(20000);
        m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
        trained = jnum(m, "samples_trained");
        json_decref(m);
    }
    ck_assert_int_eq((long)trained, sent);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

START_TEST(a_size_cap_gets_503_and_checkpoints_make_room_again)
{
    /* 2 MiB: a dozen requests of 2000 samples fill it before the first
     * checkpoint (every 2 s).  Ids are kept for the last 1000 samples only,
     * so they do not fill it for good. */
    const char *flags[] = {"--db-max-mb", "2", "--checkpoint-batches", "100000", "--checkpoint-seconds", "2",
                           "--ids-keep", "1000", NULL};
    struct daemon d;
    daemon_start(&d, flags);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    struct tame_rng r;
    tame_rng_seed(&r, 21);
    long next = 0, acked = 0;
    int refused = 0;
    for (int i = 0; i < 200 && !refused; i++, next += 2000) {
        char *body = id_body(&r, i % 3, 2000, "cap", next);
        struct reply a = call(d.port, "POST", "/v1/models/m/samples", body);
        free(body);
        if (a.status == 200) acked += 2000;
        else if (a.status == 503) refused++;
        else if (a.status != 429) ck_abort_msg("status %ld: %s", a.status, a.body);
        if (a.status == 429) usleep(20000);
        free(a.body);
    }
    ck_assert_int_eq(refused, 1);
    const char *probe = "{\"x\":[[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}";
    json_decref(call_json(d.port, "POST", "/v1/models/m/predict", probe, 200));
    /* The next checkpoint reuses its predecessor's pages and the log below
     * it is deleted: room again, without help. */
    wait_ready(&d);
    char *body = id_body(&r, 0, 200, "cap", next);
    json_decref(call_json(d.port, "POST", "/v1/models/m/samples", body, 200));
    free(body);
    acked += 200;
    json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_int_eq((long)jnum(m, "samples_acknowledged"), acked);
    json_decref(m);
    ck_assert_int_eq(daemon_stop(&d), 0);
    ck_assert(integrity_ok(d.db));
    daemon_remove(&d);
}
END_TEST

static Suite *durability_suite(void)
{
    Suite *s = suite_create("durability");
    TCase *tc = tcase_create("durability");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, sigkill_at_random_moments_loses_no_acknowledged_id);
    tcase_add_test(tc, a_stream_killed_and_recovered_ends_as_one_never_killed);
    tcase_add_test(tc, a_kill_inside_a_checkpoint_leaves_the_previous_one);
    tcase_add_test(tc, a_full_disk_gets_503_never_an_ack_and_recovers_by_itself);
    tcase_add_test(tc, a_size_cap_gets_503_and_checkpoints_make_room_again);
    tcase_add_test(tc, a_flipped_page_is_refused_and_left_untouched);
    tcase_add_test(tc, a_flipped_byte_in_a_checkpoint_is_refused_and_left_untouched);
    tcase_add_test(tc, a_newer_database_is_refused_and_an_older_one_migrated);
    tcase_add_test(tc, a_backup_taken_while_ingesting_starts_a_daemon);
    tcase_add_test(tc, a_read_only_database_serves_predictions_and_refuses_samples_until_writable);
    tcase_add_test(tc, the_durability_level_is_in_force_and_reported);
    suite_add_tcase(s, tc);
    return s;
}

int main(int argc, char **argv)
{
    tamed_bin = argc > 1 ? argv[1] : getenv("TAMED");
    if (!tamed_bin) {
        fprintf(stderr, "usage: test_durability PATH_TO_TAMED\n");
        return 2;
    }
    curl_global_init(CURL_GLOBAL_ALL);
    synth_mean(0, 0, 0); /* its table, before any client thread */
    int rc = check_run(durability_suite());
    curl_global_cleanup();
    return rc;
}
