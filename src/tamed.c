/* tamed.c: configuration (one table drives flags, TAMED_* environment
 * variables, validation and --help), signals, wiring and lifecycle.
 * SIGTERM/SIGINT: stop accepting, finish in-flight requests, train every
 * queued sample, exit 0. */
#include "http/http.h"
#include "serve/serve.h"
#include "store/store.h"
#include "tame/log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct settings {
    char listen[128];
    char db[1024];
    char token_file[1024];
    char log_level[16];
    char durability[16];
    long body_max_bytes, connections_max, per_ip_max, connection_memory_kib, idle_timeout_s, http_threads,
        lane_threads, lane_nice, workers, step_threads, queue_samples, queue_wait_ms, models_max, input_dim_max,
        classes_max, hidden_max, hidden_layers_max, experts_max, batch_max, model_mb_max, checkpoint_batches, checkpoint_seconds,
        ids_keep, db_max_mb, train_nice, selector_nice;
};

enum stype { S_STR, S_LONG };
static const struct setting {
    const char *name; /* flag --name, variable TAMED_NAME */
    enum stype type;
    size_t off, size;
    long lo, hi;
    const char *dflt;
    const char *doc;
} table[] = {
#define STR(f, d, doc) {#f, S_STR, offsetof(struct settings, f), sizeof(((struct settings *)0)->f), 0, 0, d, doc}
#define LNG(f, lo, hi, d, doc) {#f, S_LONG, offsetof(struct settings, f), 0, lo, hi, d, doc}
    STR(listen, "127.0.0.1:8080", "address:port to listen on (IPv4)"),
    STR(db, "./tamed.db", "SQLite database: models, sample log, checkpoints (created if absent)"),
    STR(durability, "normal", "normal: nothing acknowledged is lost if tamed crashes; full: nor if the machine does"),
    LNG(checkpoint_batches, 1, 1L << 40, "1000", "checkpoint a model after this many batches..."),
    LNG(checkpoint_seconds, 1, 86400, "60", "...or this many seconds after its last checkpoint"),
    LNG(ids_keep, 0, 1L << 40, "10000000", "remember client sample ids for at least this many latest samples"),
    LNG(db_max_mb, 0, 1L << 30, "0", "cap on the database size in MiB (0 = none); ingestion gets 503 at the cap"),
    STR(token_file, "", "file holding the bearer token; empty = no authentication"),
    STR(log_level, "info", "debug, info, warn or error"),
    LNG(body_max_bytes, 1024, 1L << 30, "16777216", "largest request body; 413 above"),
    LNG(connections_max, 1, 65536, "256", "simultaneous connections"),
    LNG(per_ip_max, 1, 65536, "64", "simultaneous connections from one address"),
    LNG(connection_memory_kib, 8, 1024, "16", "memory per connection, KiB: request headers, and each read of a body"),
    LNG(idle_timeout_s, 1, 3600, "30", "idle connection timeout, seconds"),
    LNG(http_threads, 1, 256, "2", "HTTP threads: predictions and reads"),
    LNG(lane_threads, 1, 256, "2", "threads for writes and large bodies (samples), off the HTTP threads"),
    LNG(lane_nice, 0, 19, "0", "nice of the lane threads, against the HTTP threads"),
    LNG(workers, 1, 256, "2", "learner worker threads (size to the cores)"),
    LNG(step_threads, 1, 2, "1", "threads per learner step (1 keeps workers independent)"),
    LNG(train_nice, 0, 19, "10", "nice of the learner threads: requests come first"),
    LNG(selector_nice, 0, 19, "15", "nice of the selector thread: the learner, keeping up with the stream, first"),
    LNG(queue_samples, 1, 1L << 24, "8192", "per-model queue, samples; 429 when full..."),
    LNG(queue_wait_ms, 0, 60000, "200", "...for longer than this: a write waits for room up to this long (one fewer than --lane-threads at a time)"),
    LNG(models_max, 1, 100000, "64", "models per daemon"),
    LNG(input_dim_max, 1, 65536, "65536", "largest input_dim of a model"),
    LNG(classes_max, 2, 4096, "4096", "largest number of classes"),
    LNG(hidden_max, 1, 65536, "4096", "widest hidden layer"),
    LNG(hidden_layers_max, 0, 6, "6", "most hidden layers"),
    LNG(experts_max, 1, 64, "64", "largest max_experts of a model"),
    LNG(batch_max, 1, 65536, "4096", "largest batch_size of a model"),
    LNG(model_mb_max, 0, 1L << 30, "0", "largest model, MiB, estimated at its max_experts; 0 = half the memory (the machine's, or its cgroup's cap)"),
#undef STR
#undef LNG
};
#define N_SETTINGS (sizeof(table) / sizeof(table[0]))

static int apply(struct settings *s, const struct setting *t, const char *value, const char *from)
{
    char *base = (char *)s + t->off;
    if (t->type == S_STR) {
        if (strlen(value) >= t->size) {
            fprintf(stderr, "tamed: %s (%s): too long\n", t->name, from);
            return -1;
        }
        strcpy(base, value);
        return 0;
    }
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || *end || end == value || v < t->lo || v > t->hi) {
        fprintf(stderr, "tamed: %s (%s): '%s' is not an integer in %ld..%ld\n", t->name, from, value, t->lo,
                t->hi);
        return -1;
    }
    *(long *)base = v;
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: tamed [--NAME VALUE]... | tamed --healthcheck | tamed backup PATH [--db DB] | tamed --help\n"
               "Task-agnostic continual learning over HTTP/JSON.  Every setting is also read\n"
               "from the environment as TAMED_NAME (flags win).\n\n");
    for (size_t i = 0; i < N_SETTINGS; i++) {
        char flag[64];
        snprintf(flag, sizeof(flag), "--%s", table[i].name);
        for (char *p = flag; *p; p++)
            if (*p == '_') *p = '-';
        fprintf(f, "  %-24s %s (default %s)\n", flag, table[i].doc, *table[i].dflt ? table[i].dflt : "none");
    }
    fprintf(f, "  %-24s ask /livez of a running tamed; exit 0 if alive, 1 if not\n", "--healthcheck");
    fprintf(f, "  %-24s copy the database consistently to PATH, while tamed runs or not\n", "backup PATH");
}

static const struct setting *find_setting(const char *flag)
{
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const char *a = table[i].name, *b = flag;
        while (*a && (*a == *b || (*a == '_' && *b == '-'))) a++, b++;
        if (!*a && !*b) return &table[i];
    }
    return NULL;
}

static int configure(int argc, char **argv, struct settings *s, bool *healthcheck)
{
    memset(s, 0, sizeof(*s));
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (apply(s, &table[i], table[i].dflt, "default") < 0) return -1;
    for (size_t i = 0; i < N_SETTINGS; i++) {
        char var[64] = "TAMED_";
        for (size_t k = 0; table[i].name[k] && k < 50; k++) var[6 + k] = (char)toupper(table[i].name[k]);
        const char *v = getenv(var);
        if (v && apply(s, &table[i], v, var) < 0) return -1;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(argv[i], "--healthcheck")) {
            *healthcheck = true;
            continue;
        }
        const struct setting *t = strncmp(argv[i], "--", 2) ? NULL : find_setting(argv[i] + 2);
        if (!t) {
            fprintf(stderr, "tamed: unknown option '%s' (see --help)\n", argv[i]);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "tamed: %s needs a value\n", argv[i]);
            return -1;
        }
        const char *flag = argv[i++];
        if (apply(s, t, argv[i], flag) < 0) return -1;
    }
    return 0;
}

static int split_listen(const char *listen, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= hostlen) return -1;
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = 0;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || p < 0 || p > 65535) return -1;
    *port = (int)p;
    struct in_addr a;
    return inet_pton(AF_INET, host, &a) == 1 ? 0 : -1;
}

/* For containers without curl: GET /livez, exit 0 on 200. */
static int healthcheck(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) return 1;
    char req[256], resp[64] = {0};
    int n = snprintf(req, sizeof(req), "GET /livez HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host);
    if (write(fd, req, (size_t)n) != n) return 1;
    ssize_t got = read(fd, resp, sizeof(resp) - 1);
    close(fd);
    return got > 12 && !strncmp(resp + 9, "200", 3) ? 0 : 1;
}

/* SIGTERM/SIGINT may be handled on any thread (OpenBLAS starts threads
 * before main), so main does not pause() for it: the handler writes the
 * signal to a pipe that main blocks on (no lost wake-up either). */
static volatile sig_atomic_t stop_signal;
static int stop_pipe[2] = {-1, -1};
static void on_signal(int sig)
{
    int saved = errno;
    stop_signal = sig;
    char c = (char)sig;
    ssize_t n = write(stop_pipe[1], &c, 1); /* if the pipe is full, a stop is pending anyway */
    (void)n;
    errno = saved;
}

/* tamed backup PATH: SQLite's online backup, safe while a daemon writes. */
static int backup(const char *db, const char *dst)
{
    if (access(dst, F_OK) == 0) {
        fprintf(stderr, "tamed: %s exists; a backup never overwrites\n", dst);
        return 2;
    }
    char why[512] = "";
    double t0 = tame_now_s();
    int rc = store_backup(db, dst, why, sizeof(why));
    if (rc) {
        fprintf(stderr, "tamed: backup failed: %s\n", why);
        return 1;
    }
    fprintf(stderr, "tamed: backed up %s to %s in %.2f s\n", db, dst, tame_now_s() - t0);
    return 0;
}

/* The memory this process may use: the machine's, or less if a control
 * group (a container's --memory) caps it, cgroup v2 or v1. */
static double memory_bytes(void)
{
    double mem = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    static const char *const caps[] = {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        FILE *f = fopen(caps[i], "r");
        double cap;
        if (!f) continue;
        if (fscanf(f, "%lf", &cap) == 1 && cap > 0 && cap < mem) mem = cap; /* "max": no cap */
        fclose(f);
    }
    return mem;
}

int main(int argc, char **argv)
{
    struct settings st;
    bool hc = false;
    if (argc >= 2 && !strcmp(argv[1], "backup")) {
        if (argc < 3 || !strncmp(argv[2], "--", 2)) {
            fprintf(stderr, "usage: tamed backup PATH [--db DB]\n");
            return 2;
        }
        if (configure(argc - 2, argv + 2, &st, &hc) < 0) return 2;
        return backup(st.db, argv[2]);
    }
    if (configure(argc, argv, &st, &hc) < 0) return 2;
    char host[64];
    int port;
    if (split_listen(st.listen, host, sizeof(host), &port) < 0) {
        fprintf(stderr, "tamed: --listen wants IPV4:PORT, not '%s'\n", st.listen);
        return 2;
    }
    if (hc) return healthcheck(host, port);
    int lvl = tame_log_level_parse(st.log_level);
    if (lvl < 0) {
        fprintf(stderr, "tamed: --log-level must be debug, info, warn or error\n");
        return 2;
    }
    tame_log_threshold = (enum tame_log_level)lvl;

    char token[512] = "";
    if (st.token_file[0]) {
        FILE *f = fopen(st.token_file, "r");
        if (!f || !fgets(token, sizeof(token), f)) {
            fprintf(stderr, "tamed: cannot read the token file %s\n", st.token_file);
            if (f) fclose(f);
            return 2;
        }
        fclose(f);
        token[strcspn(token, "\r\n")] = 0;
        if (strlen(token) < 16) {
            fprintf(stderr, "tamed: the token in %s is shorter than 16 characters\n", st.token_file);
            return 2;
        }
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file-size limit is a full disk (503), not a crash */
    if (pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        fprintf(stderr, "tamed: cannot create the signal pipe\n");
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    struct serve_config scfg = {.workers = (int)st.workers,
                                .queue_samples = (int)st.queue_samples,
                                .queue_wait_ms = (int)st.queue_wait_ms,
                                /* a lane thread always left for the other models' writes */
                                .queue_waiters_max = (int)st.lane_threads - 1,
                                .models_max = (int)st.models_max,
                                .step_threads = (int)st.step_threads};
    /* The database is checked before anything is written to it; one that
     * is damaged or newer than this build stops the start, untouched. */
    if (strcmp(st.durability, "normal") && strcmp(st.durability, "full")) {
        fprintf(stderr, "tamed: --durability must be normal or full\n");
        return 2;
    }
    char why[512] = "";
    struct store_options so = {.sync = strcmp(st.durability, "full") ? STORE_SYNC_NORMAL : STORE_SYNC_FULL,
                               .busy_ms = 5000,
                               .manual_wal = true, /* serve folds it on a thread of its own */
                               .max_bytes = st.db_max_mb * (1024 * 1024)};
    double t_open = tame_now_s();
    struct store *store;
    int src = store_open(st.db, &so, &store, why, sizeof(why));
    if (src) {
        TAME_LOG(TAME_LOG_ERROR, src == TAME_E_CORRUPT ? "database corrupt: refusing to start" : "cannot open the database",
                 "db=%s error=\"%s\"", st.db, why);
        return 1;
    }
    scfg.db_path = st.db;
    scfg.store = store;
    scfg.checkpoint_batches = (uint64_t)st.checkpoint_batches;
    scfg.checkpoint_seconds = (double)st.checkpoint_seconds;
    scfg.ids_keep = (uint64_t)st.ids_keep;
    scfg.synchronous = so.sync == STORE_SYNC_FULL ? 2 : 1;
    scfg.train_nice = (int)st.train_nice;
    scfg.selector_nice = (int)st.selector_nice;
    /* Fault injection for the durability tests only; not a setting. */
    const char *stall = getenv("TAMED_TEST_CHECKPOINT_PAUSE_MS");
    scfg.test_checkpoint_pause_ms = stall ? atoi(stall) : 0;
    const char *slow = getenv("TAMED_TEST_STEP_PAUSE_MS");
    scfg.test_step_pause_ms = slow ? atoi(slow) : 0;
    const char *nomem = getenv("TAMED_TEST_STEP_NOMEM");
    scfg.test_step_nomem = nomem ? atoi(nomem) : 0;
    struct serve *sv;
    int svrc = serve_new(&scfg, &sv, why, sizeof(why));
    if (svrc < 0) {
        TAME_LOG(TAME_LOG_ERROR, svrc == TAME_E_CORRUPT ? "database corrupt: refusing to start" : "cannot load the models",
                 "db=%s error=\"%s\"", st.db, why);
        return 1;
    }
    TAME_LOG(TAME_LOG_INFO, "database open", "db=%s durability=%s seconds=%.3f", st.db, st.durability,
             tame_now_s() - t_open);
    /* Half the memory by default: enough for any model that trains at a
     * useful speed, and a refusal at create for one that would only fail
     * to allocate its experts later. */
    double model_bytes_max = (double)st.model_mb_max * 1048576;
    if (model_bytes_max == 0) model_bytes_max = memory_bytes() / 2;
    struct http_config hcfg = {.listen_host = host,
                               .port = port,
                               .body_max_bytes = (size_t)st.body_max_bytes,
                               .connections_max = (int)st.connections_max,
                               .per_ip_max = (int)st.per_ip_max,
                               .connection_memory_bytes = (size_t)st.connection_memory_kib * 1024,
                               .idle_timeout_s = (int)st.idle_timeout_s,
                               .threads = (int)st.http_threads,
                               .lane_threads = (int)st.lane_threads,
                               .lane_nice = (int)st.lane_nice,
                               .token = token[0] ? token : NULL,
                               .input_dim_max = (int)st.input_dim_max,
                               .classes_max = (int)st.classes_max,
                               .hidden_max = (int)st.hidden_max,
                               .hidden_layers_max = (int)st.hidden_layers_max,
                               .experts_max = (int)st.experts_max,
                               .batch_max = (int)st.batch_max,
                               .x_abs_max = 1e6,
                               .model_bytes_max = model_bytes_max,
                               .queue_samples = (int)st.queue_samples};
    struct http_server *hs;
    if (http_start(&hcfg, sv, &hs) < 0) {
        TAME_LOG(TAME_LOG_ERROR, "cannot listen", "listen=%s", st.listen);
        serve_free(sv);
        return 1;
    }
    TAME_LOG(TAME_LOG_INFO, "listening", "addr=%s:%d db=%s auth=%s workers=%ld", host, http_port(hs), st.db,
             token[0] ? "bearer" : "none", st.workers);

    char sigc;
    while (read(stop_pipe[0], &sigc, 1) != 1) { /* EINTR, or EAGAIN: wait for it */
        struct pollfd pfd = {.fd = stop_pipe[0], .events = POLLIN};
        poll(&pfd, 1, -1);
    }

    TAME_LOG(TAME_LOG_INFO, "stopping", "signal=%d", (int)stop_signal);
    http_set_ready(hs, false);
    http_quiesce(hs);
    http_drain(hs, 5.0);    /* in-flight requests finish, responses go out */
    http_stop(hs);
    serve_stop(sv, true);   /* trains every full batch, checkpoints */
    char **names;
    int n_names;
    if (serve_names(sv, &names, &n_names) == 0) {
        for (int i = 0; i < n_names; i++) {
            struct serve_model *m = serve_get(sv, names[i]);
            struct serve_counters c;
            serve_counters(m, &c);
            struct serve_view *v = serve_view_get(m);
            TAME_LOG(TAME_LOG_INFO, "model drained", "model=%s acknowledged=%llu trained=%llu queued=%llu",
                     names[i], (unsigned long long)c.acknowledged,
                     (unsigned long long)v->info.samples_trained, (unsigned long long)c.queued);
            serve_view_put(v);
            serve_put(m);
            free(names[i]);
        }
        free(names);
    }
    serve_free(sv);
    TAME_LOG(TAME_LOG_INFO, "stopped", "%s", "");
    return 0;
}
