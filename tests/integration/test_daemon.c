/* test_daemon.c: the real tamed on an ephemeral loopback port, spoken to
 * over HTTP with libcurl: a three-task stream learned, routed and predicted
 * while it trains; a table of bad requests that change nothing; metrics
 * that count what was sent; bearer auth; SIGTERM during ingest. */
#include "check_run.h"
#include "harness.h"
#include "synth.h"

#include <check.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static const char *openapi_path;
static char token_path[256];

static const char *model_spec =
    "{\"name\":\"m\",\"input_dim\":16,\"classes\":8,\"batch_size\":32,\"hidden\":[32,32],"
    "\"selector_capacity\":1000,\"expert_capacity\":200,\"selector_epochs\":20,"
    "\"finetune_epochs\":5,\"expert_sparsity\":0.8,\"selector_every\":50}";

struct prober {
    int port;
    atomic_bool stop;
    int ok, not_trained, failed;
};

static void *probe_predictions(void *arg)
{
    struct prober *p = arg;
    const char *body = "{\"x\":[[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1]]}";
    while (!p->stop) {
        struct reply r = call(p->port, "POST", "/v1/models/m/predict", body);
        json_t *doc = json_loads(r.body, 0, NULL);
        if (r.status == 200 && doc && json_array_size(json_object_get(doc, "predictions")) == 2) p->ok++;
        else if (r.status == 409) p->not_trained++;
        else p->failed++;
        json_decref(doc);
        free(r.body);
    }
    return NULL;
}

START_TEST(three_task_stream_is_learned_routed_and_predicted_while_training)
{
    struct daemon d;
    daemon_start(&d, NULL);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    struct prober pr = {.port = d.port};
    pthread_t th;
    pthread_create(&th, NULL, probe_predictions, &pr);
    struct tame_rng r;
    tame_rng_seed(&r, 42);
    long sent = 0;
    for (int t = 0; t < 3; t++)
        for (int k = 0; k < 75; k++) { /* 75 requests x 128 = 300 batches of 32 */
            char *body = samples_body(&r, t, 128, k % 2);
            json_t *ack = call_json(d.port, "POST", "/v1/models/m/samples", body, 200);
            free(body);
            sent += 128;
            ck_assert_int_eq((long)jnum(ack, "accepted"), 128);
            ck_assert_int_eq((long)jnum(ack, "samples_acknowledged"), sent);
            json_decref(ack);
        }
    json_decref(call_json(d.port, "POST", "/v1/models/m/flush", "{}", 200));
    /* Wait for training to catch up and the selector for 3 experts. */
    json_t *m = NULL;
    for (int tries = 0; tries < 600; tries++) {
        json_decref(m);
        m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
        json_t *sel = json_object_get(m, "selector");
        if (jnum(m, "samples_trained") == sent && jnum(sel, "experts") == 3 &&
            !json_is_true(json_object_get(sel, "due")))
            break;
        usleep(100000);
    }
    pr.stop = true;
    pthread_join(th, NULL);
    ck_assert_int_eq((long)jnum(m, "samples_acknowledged"), sent);
    ck_assert_int_eq((long)jnum(m, "samples_trained"), sent);
    ck_assert_int_eq((int)jnum(m, "n_experts"), 3);
    ck_assert_int_eq((int)jnum(json_object_get(m, "selector"), "experts"), 3);
    /* A retrain on request installs a new selector version. */
    double version = jnum(json_object_get(m, "selector"), "version");
    json_decref(m);
    json_decref(call_json(d.port, "POST", "/v1/models/m/selector", "{}", 202));
    bool retrained = false;
    for (int tries = 0; tries < 600 && !retrained; tries++) {
        m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
        retrained = jnum(json_object_get(m, "selector"), "version") > version;
        json_decref(m);
        if (!retrained) usleep(50000);
    }
    ck_assert(retrained);
    /* Predictions issued while training all succeeded. */
    ck_assert_int_gt(pr.ok, 10);
    ck_assert_int_eq(pr.failed, 0);
    /* The events show the two shifts and three spawns, paged. */
    int detects = 0, spawns = 0, seen = 0;
    char path[128] = "/v1/models/m/events?limit=2";
    for (;;) {
        json_t *ev = call_json(d.port, "GET", path, NULL, 200);
        json_t *e;
        size_t i;
        json_array_foreach(json_object_get(ev, "events"), i, e) {
            ck_assert_int_eq((int)jnum(e, "seq"), seen++);
            const char *kind = json_string_value(json_object_get(e, "kind"));
            detects += !strcmp(kind, "detect");
            spawns += !strcmp(kind, "spawn");
        }
        json_t *next = json_object_get(ev, "next");
        bool more = json_is_integer(next);
        if (more) snprintf(path, sizeof(path), "/v1/models/m/events?limit=2&from=%lld", json_integer_value(next));
        json_decref(ev);
        if (!more) break;
    }
    ck_assert_int_eq(detects, 2);
    ck_assert_int_eq(spawns, 3);
    /* Routed, correct predictions on fresh samples of each task. */
    int routed = 0, right = 0, total = 0;
    for (int t = 0; t < 3; t++) {
        float x[100 * SYNTH_DIM];
        int y[100];
        synth_batch(&r, t, 2, true, x, y, 100);
        json_t *xs = json_array();
        for (int i = 0; i < 100; i++) {
            json_t *row = json_array();
            for (int j = 0; j < SYNTH_DIM; j++) json_array_append_new(row, json_real(x[i * SYNTH_DIM + j]));
            json_array_append_new(xs, row);
        }
        json_t *req = json_pack("{s:o}", "x", xs);
        char *body = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        json_t *res = call_json(d.port, "POST", "/v1/models/m/predict", body, 200);
        free(body);
        json_t *p;
        size_t i;
        json_array_foreach(json_object_get(res, "predictions"), i, p) {
            routed += (int)jnum(p, "expert") == t;
            right += (int)jnum(p, "label") == y[i];
            ck_assert_uint_eq(json_array_size(json_object_get(p, "probabilities")), 8);
            total++;
        }
        json_decref(res);
    }
    ck_assert_int_eq(total, 300);
    ck_assert_msg(routed >= 270, "routed %d of 300", routed);
    ck_assert_msg(right >= 255, "right %d of 300", right);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

struct bad {
    const char *method, *path, *ctype, *body;
    long status;
};

/* GET /v1/models/m with one request header of about `pad` bytes: the status. */
static long get_with_header_of(int port, size_t pad)
{
    char *hdr = malloc(pad + 16);
    memcpy(hdr, "X-Pad: ", 7);
    memset(hdr + 7, 'a', pad);
    hdr[7 + pad] = 0;
    CURL *c = curl_easy_init();
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/models/m", port);
    struct buf hb = {0};
    struct curl_slist *hh = curl_slist_append(NULL, hdr);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hh);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &hb);
    long status = 0;
    ck_assert_int_eq(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hh);
    curl_easy_cleanup(c);
    free(hb.p);
    free(hdr);
    return status;
}

/* Formatted request bodies for a table built in one initializer: each
 * call takes the next of the caller's buffers.  A function, because the
 * initializer's expressions are evaluated in no fixed order. */
struct bodies {
    char b[64][512];
    int n;
};

__attribute__((format(printf, 2, 3))) static const char *body_fmt(struct bodies *bs, const char *fmt, ...)
{
    ck_assert_int_lt(bs->n, 64);
    char *out = bs->b[bs->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, sizeof(bs->b[0]), fmt, ap);
    va_end(ap);
    return out;
}

START_TEST(bad_requests_get_a_json_error_and_change_nothing)
{
    struct daemon d;
    const char *extra[] = {"--body-max-bytes", "65536", "--input-dim-max", "64", "--queue-samples", "64", NULL};
    daemon_start(&d, extra);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    struct tame_rng r;
    tame_rng_seed(&r, 7);
    char *good = samples_body(&r, 0, 32, false);
    json_decref(call_json(d.port, "POST", "/v1/models/m/samples", good, 200));
    free(good);
    const char *J = "application/json";
    const char *x15 = "[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]", *x16 = "[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]";
    struct bodies bs;
    bs.n = 0;
#define S(...) body_fmt(&bs, __VA_ARGS__)
    const struct bad cases[] = {
        {"POST", "/v1/models/m/samples", J, "{", 400},
        {"POST", "/v1/models/m/samples", J, "{\"samples\":[}", 400},
        {"POST", "/v1/models/m/samples", J, "", 400},
        {"POST", "/v1/models/m/samples", J, "[]", 400},
        {"POST", "/v1/models/m/samples", J, "null", 400},
        {"POST", "/v1/models/m/samples", J, "{} trailing", 400},
        {"POST", "/v1/models/m/samples", J, "{}{}", 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":%s,\"y\":0}],\"samples\":[]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":%s,\"y\":0,\"y\":1}]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":%s,\"y\":0}]}", x15), 400},
        /* a long numeric array where an id (a string) belongs */
        {"POST", "/v1/models/m/samples", J,
         S("{\"samples\":[{\"x\":%s,\"y\":0,\"id\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20]}]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":[NaN,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],\"y\":0}]}"), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":[Infinity,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],\"y\":0}]}"), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":[1e999,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],\"y\":0}]}"), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":[1e7,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],\"y\":0}]}"), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":[\"1\",0,0,0,0,0,0,0,0,0,0,0,0,0,0,0],\"y\":0}]}"), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":%s,\"y\":8}]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":%s,\"y\":-1}]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":%s,\"y\":1.5}]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":%s,\"y\":\"1\"}]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":%s}]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":%s,\"y\":0},{\"x\":%s,\"y\":0}]}", x16, x15), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"samples\":[{\"x\":%s,\"y\":0,\"z\":1}]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"x\":[%s],\"y\":[0,1]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, S("{\"x\":[%s],\"y\":[0],\"samples\":[]}", x16), 400},
        {"POST", "/v1/models/m/samples", J, "{\"samples\":[]}", 400},
        {"POST", "/v1/models/m/samples", J, "{\"samples\":\"all\"}", 400},
        {"POST", "/v1/models/m/samples", J, "{\"samples\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}", 400},
        {"POST", "/v1/models/m/samples", J, "{\"samples\":[{\"x\":[1],\"y\":0}],\"s\":\"\\u0000\"}", 400},
        {"POST", "/v1/models/m/samples", "text/plain", S("{\"samples\":[{\"x\":%s,\"y\":0}]}", x16), 415},
        {"POST", "/v1/models/m/samples", NULL, S("{\"samples\":[{\"x\":%s,\"y\":0}]}", x16), 415},
        {"POST", "/v1/models/nope/samples", J, S("{\"samples\":[{\"x\":%s,\"y\":0}]}", x16), 404},
        {"POST", "/v1/models/m/predict", J, "{\"x\":[]}", 400},
        {"POST", "/v1/models/m/predict", J, S("{\"x\":[%s]}", x15), 400},
        {"POST", "/v1/models/m/predict", J, S("{\"x\":%s}", x16), 400},
        {"POST", "/v1/models/m/predict", J, S("{\"x\":[%s],\"k\":1}", x16), 400},
        {"POST", "/v1/models", J, "{\"name\":\"m\",\"input_dim\":16,\"classes\":8}", 409},
        {"POST", "/v1/models", J, "{\"name\":\"bad name\",\"input_dim\":16,\"classes\":8}", 400},
        {"POST", "/v1/models", J, "{\"name\":\"n\",\"input_dim\":0,\"classes\":8}", 400},
        {"POST", "/v1/models", J, "{\"name\":\"n\",\"input_dim\":65,\"classes\":8}", 400},
        {"POST", "/v1/models", J, "{\"name\":\"n\",\"input_dim\":4,\"classes\":1}", 400},
        {"POST", "/v1/models", J, "{\"name\":\"n\",\"input_dim\":4,\"classes\":2,\"lr\":-1}", 400},
        {"POST", "/v1/models", J, "{\"name\":\"n\",\"input_dim\":4,\"classes\":2,\"bogus\":1}", 400},
        {"POST", "/v1/models", J, "{\"name\":\"n\",\"input_dim\":4,\"classes\":2,\"hidden\":[0]}", 400},
        {"POST", "/v1/models", J, "{\"name\":\"n\",\"input_dim\":4}", 400},
        {"GET", "/v1/models/nope", NULL, NULL, 404},
        {"DELETE", "/v1/models/nope", NULL, NULL, 404},
        {"GET", "/v1/nothing", NULL, NULL, 404},
        {"GET", "/v1/models/m/unknown", NULL, NULL, 404},
        {"PUT", "/v1/models/m", J, "{}", 405},
        {"GET", "/v1/models/m/samples", NULL, NULL, 405},
        {"GET", "/v1/models/m/events?limit=0", NULL, NULL, 400},
        {"GET", "/v1/models/m/events?from=-3", NULL, NULL, 400},
    };
#undef S
    const size_t n_cases = sizeof(cases) / sizeof(cases[0]);
    ck_assert_uint_ge(n_cases, 40);
    json_t *before = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
    for (size_t i = 0; i < n_cases; i++) {
        const struct bad *c = &cases[i];
        struct reply rp = request(d.port, c->method, c->path, c->ctype, c->body, c->body ? strlen(c->body) : 0, NULL);
        ck_assert_msg(rp.status == c->status, "case %zu (%s %s %s): status %ld, want %ld: %s", i, c->method, c->path,
                      c->body ? c->body : "", rp.status, c->status, rp.body);
        json_t *err = json_loads(rp.body, 0, NULL);
        json_t *e = json_object_get(err, "error");
        ck_assert_msg(json_is_string(json_object_get(e, "code")) && json_is_string(json_object_get(e, "message")),
                      "case %zu: no JSON error: %s", i, rp.body);
        json_decref(err);
        free(rp.body);
        struct reply live = call(d.port, "GET", "/livez", NULL);
        ck_assert_int_eq(live.status, 200);
        free(live.body);
    }
    /* A malformed body gets jansson's own error for the body as sent: its
     * line and column count the numeric arrays the daemon parsed apart
     * (one of them over two lines) before the error. */
    {
        const char *x = "[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]";
        const char *xs = "[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,\n 0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5]";
        char body[512];
        snprintf(body, sizeof(body), "{\"samples\":[{\"x\":%s,\"y\":0},{\"x\":%s,\"y\":0},{\"x\":%s,\"y\":0 x}]}", x, xs, x);
        json_error_t want;
        ck_assert_ptr_null(json_loads(body, JSON_REJECT_DUPLICATES, &want));
        ck_assert_int_eq(want.line, 2); /* not on the first line, not at the first array's end */
        char msg[256];
        snprintf(msg, sizeof(msg), "line %d column %d: %s", want.line, want.column, want.text);
        struct reply rp = request(d.port, "POST", "/v1/models/m/samples", J, body, strlen(body), NULL);
        ck_assert_int_eq(rp.status, 400);
        json_t *err = json_loads(rp.body, 0, NULL);
        ck_assert_str_eq(json_string_value(json_object_get(json_object_get(err, "error"), "message")), msg);
        json_decref(err);
        free(rp.body);
    }
    /* Oversized bodies: by Content-Length and counted as they arrive. */
    size_t big = 70000;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    huge[big] = 0;
    struct reply rp = request(d.port, "POST", "/v1/models/m/samples", J, huge, big, NULL);
    ck_assert_int_eq(rp.status, 413);
    free(rp.body);
    free(huge);
    /* A chunked body has no Content-Length: it is counted as it arrives. */
    {
        CURL *c = curl_easy_init();
        char url[128];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/models/m/samples", d.port);
        size_t big2 = 200000;
        char *chunky = malloc(big2 + 1);
        memset(chunky, ' ', big2);
        chunky[big2] = 0;
        struct buf cb = {0};
        struct curl_slist *hh = curl_slist_append(NULL, "Content-Type: application/json");
        hh = curl_slist_append(hh, "Transfer-Encoding: chunked");
        curl_easy_setopt(c, CURLOPT_URL, url);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hh);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, chunky);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
        curl_easy_setopt(c, CURLOPT_WRITEDATA, &cb);
        long status = 0;
        if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        /* 413, or the connection closed on us: never accepted. */
        ck_assert_msg(status == 413 || status == 0, "chunked oversized body: %ld", status);
        curl_slist_free_all(hh);
        curl_easy_cleanup(c);
        free(cb.p);
        free(chunky);
    }
    /* Request headers: about 8 KiB fit the connection's 16 KiB memory pool;
     * 20 KiB get 431 from libmicrohttpd, and the daemon goes on. */
    ck_assert_int_eq(get_with_header_of(d.port, 8000), 200);
    ck_assert_int_eq(get_with_header_of(d.port, 20000), 431);
    /* More samples than the queue can ever hold: 429 with Retry-After. */
    char *too_many = samples_body(&r, 0, 100, true);
    rp = request(d.port, "POST", "/v1/models/m/samples", J, too_many, strlen(too_many), NULL);
    ck_assert_int_eq(rp.status, 429);
    ck_assert_str_eq(rp.retry_after, "1");
    ck_assert_ptr_nonnull(strstr(rp.body, "\"BUSY\""));
    free(rp.body);
    free(too_many);
    /* The model is unchanged: same acknowledged count. */
    json_t *after = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_int_eq((long)jnum(after, "samples_acknowledged"), (long)jnum(before, "samples_acknowledged"));
    ck_assert_int_eq((long)jnum(after, "samples_acknowledged"), 32);
    json_decref(before);
    json_decref(after);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

/* Value of the sample line `name{labels}` in Prometheus text, or NAN. */
static double metric(const char *text, const char *series)
{
    const char *p = text;
    size_t n = strlen(series);
    while ((p = strstr(p, series))) {
        if ((p == text || p[-1] == '\n') && p[n] == ' ') return strtod(p + n + 1, NULL);
        p += n;
    }
    return NAN;
}

START_TEST(every_path_of_the_openapi_contract_is_served)
{
    struct daemon d;
    daemon_start(&d, NULL);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    FILE *f = fopen(openapi_path, "r");
    ck_assert_msg(f != NULL, "cannot open %s", openapi_path);
    char line[512];
    bool in_paths = false;
    int checked = 0;
    while (fgets(line, sizeof(line), f)) {
        if (!strncmp(line, "paths:", 6)) in_paths = true;
        if (!in_paths || strncmp(line, "  /", 3) != 0) continue;
        /* "  /v1/models/{m}/samples:" -> "/v1/models/m/samples" */
        char path[256] = "";
        size_t k = 0;
        for (const char *c = line + 2; *c && *c != ':' && k < sizeof(path) - 2; c++) {
            if (!strncmp(c, "{m}", 3)) path[k++] = 'm', c += 2;
            else path[k++] = *c;
        }
        path[k] = 0;
        /* The route exists: any answer but "no route" (GET on a POST-only path is 405). */
        struct reply r = call(d.port, "GET", path, NULL);
        ck_assert_msg(r.status != 404 || !strstr(r.body, "no route"), "%s is in the contract but not served", path);
        ck_assert_msg(r.status == 200 || r.status == 405, "%s: %ld %s", path, r.status, r.body);
        free(r.body);
        checked++;
    }
    fclose(f);
    ck_assert_int_eq(checked, 10);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

/* tamed --healthcheck against a port: its exit status. */
static int healthcheck(int port)
{
    char listen[64];
    snprintf(listen, sizeof(listen), "127.0.0.1:%d", port);
    const char *argv[] = {tamed_bin, "--healthcheck", "--listen", listen, NULL};
    pid_t pid;
    ck_assert_int_eq(posix_spawn(&pid, tamed_bin, NULL, NULL, (char *const *)argv, environ), 0);
    int st;
    ck_assert_int_eq(waitpid(pid, &st, 0), pid);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

START_TEST(healthcheck_mode_reports_liveness)
{
    struct daemon d;
    daemon_start(&d, NULL);
    ck_assert_int_eq(healthcheck(d.port), 0);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
    ck_assert_int_eq(healthcheck(d.port), 1);
}
END_TEST

START_TEST(metrics_parse_and_count_what_was_sent)
{
    struct daemon d;
    daemon_start(&d, NULL);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    struct tame_rng r;
    tame_rng_seed(&r, 9);
    for (int k = 0; k < 5; k++) {
        char *body = samples_body(&r, 0, 64, k % 2);
        json_decref(call_json(d.port, "POST", "/v1/models/m/samples", body, 200));
        free(body);
    }
    struct reply bad = call(d.port, "POST", "/v1/models/m/samples", "{");
    ck_assert_int_eq(bad.status, 400);
    free(bad.body);
    json_decref(call_json(d.port, "POST", "/v1/models/m/flush", "{}", 200));
    for (int tries = 0; tries < 200; tries++) {
        json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
        bool done = jnum(m, "samples_trained") == 320;
        json_decref(m);
        if (done) break;
        usleep(20000);
    }
    struct reply mt = call(d.port, "GET", "/metrics", NULL);
    ck_assert_int_eq(mt.status, 200);
    /* Every line is a comment or `name{labels} value`. */
    char *save, *copy = strdup(mt.body);
    int samples = 0;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') {
            ck_assert(!strncmp(line, "# HELP tame_", 12) || !strncmp(line, "# TYPE tame_", 12));
            continue;
        }
        ck_assert_msg(!strncmp(line, "tame_", 5), "bad line: %s", line);
        char *sp = strrchr(line, ' ');
        ck_assert_ptr_nonnull(sp);
        char *end;
        strtod(sp + 1, &end);
        ck_assert_msg(*end == 0, "bad value: %s", line);
        samples++;
    }
    free(copy);
    ck_assert_int_gt(samples, 20);
    ck_assert_double_eq(metric(mt.body, "tame_samples_ingested_total{model=\"m\"}"), 320);
    ck_assert_double_eq(metric(mt.body, "tame_samples_trained_total{model=\"m\"}"), 320);
    ck_assert_double_eq(metric(mt.body, "tame_batches_trained_total{model=\"m\"}"), 10);
    ck_assert_double_eq(metric(mt.body, "tame_experts{model=\"m\"}"), 1);
    ck_assert_double_eq(metric(mt.body, "tame_spawns_total{model=\"m\"}"), 1);
    ck_assert_double_eq(metric(mt.body, "tame_detections_total{model=\"m\"}"), 0);
    ck_assert_double_eq(metric(mt.body, "tame_queue_depth{model=\"m\"}"), 0);
    ck_assert_double_eq(metric(mt.body, "tame_http_requests_total{endpoint=\"samples\",code=\"2xx\"}"), 5);
    ck_assert_double_eq(metric(mt.body, "tame_http_requests_total{endpoint=\"samples\",code=\"4xx\"}"), 1);
    ck_assert_double_eq(metric(mt.body, "tame_http_request_duration_seconds_count{endpoint=\"samples\"}"), 6);
    free(mt.body);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

/* Hyper-parameters are floats: a model reads back what was sent, in its
 * shortest text ("lr":0.05, not 0.0500000007), and that text is the same
 * float again. */
START_TEST(model_params_read_back_as_written)
{
    struct daemon d;
    daemon_start(&d, NULL);
    const char *spec = "{\"name\":\"p\",\"input_dim\":4,\"classes\":2,\"lr\":0.05,\"momentum\":0.9,"
                       "\"weight_decay\":0.0005,\"sigma_floor\":0.015,\"alpha\":0.2}";
    json_decref(call_json(d.port, "POST", "/v1/models", spec, 201));
    struct reply r = call(d.port, "GET", "/v1/models/p", NULL);
    ck_assert_int_eq(r.status, 200);
    const char *want[] = {"\"lr\":0.05,", "\"momentum\":0.9,", "\"weight_decay\":0.0005,",
                          "\"sigma_floor\":0.015,", "\"alpha\":0.2,", "\"head_scale\":3.0,"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        ck_assert_msg(strstr(r.body, want[i]), "%s not in %s", want[i], r.body);
    json_t *m = json_loads(r.body, 0, NULL);
    json_t *params = json_object_get(m, "params");
    ck_assert((float)json_real_value(json_object_get(params, "lr")) == 0.05f);
    ck_assert((float)json_real_value(json_object_get(params, "momentum")) == 0.9f);
    json_decref(m);
    free(r.body);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

/* A model whose networks and buffers would not fit under --model-mb-max
 * at its max_experts is refused when it is created, with the estimate and
 * the limit, rather than accepted and left unable to allocate its experts;
 * a smaller one is created, and the refusal leaves no model behind. */
START_TEST(a_model_too_large_for_the_limit_is_refused_at_create)
{
    struct daemon d;
    const char *extra[] = {"--model-mb-max", "64", NULL};
    daemon_start(&d, extra);
    struct reply r = call(d.port, "POST", "/v1/models", "{\"name\":\"big\",\"input_dim\":784,\"classes\":10}");
    ck_assert_int_eq(r.status, 400);
    ck_assert_msg(strstr(r.body, "\"code\":\"INVALID\"") && strstr(r.body, "MiB at max_experts 32, over the limit of 64 MiB (--model-mb-max)"),
                  "%s", r.body);
    free(r.body);
    json_decref(call_json(d.port, "POST", "/v1/models",
                          "{\"name\":\"small\",\"input_dim\":784,\"classes\":10,\"max_experts\":2,"
                          "\"selector_capacity\":1000,\"expert_capacity\":100}", 201));
    json_t *list = call_json(d.port, "GET", "/v1/models", NULL, 200);
    json_t *models = json_object_get(list, "models");
    ck_assert_int_eq((int)json_array_size(models), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(models, 0), "name")), "small");
    json_decref(list);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

/* /metrics lists every model, however many the daemon was allowed
 * (--models-max): it once kept a fixed 64 rows and left the rest out. */
START_TEST(metrics_list_every_model)
{
    struct daemon d;
    const char *extra[] = {"--models-max", "100", NULL};
    daemon_start(&d, extra);
    enum { N = 70 };
    for (int k = 0; k < N; k++) {
        char spec[128];
        snprintf(spec, sizeof(spec), "{\"name\":\"m%d\",\"input_dim\":4,\"classes\":2,\"hidden\":[4]}", k);
        json_decref(call_json(d.port, "POST", "/v1/models", spec, 201));
    }
    json_decref(call_json(d.port, "POST", "/v1/models/m69/samples", "{\"x\":[[1,2,3,4]],\"y\":[1]}", 200));
    struct reply mt = call(d.port, "GET", "/metrics", NULL);
    ck_assert_int_eq(mt.status, 200);
    for (int k = 0; k < N; k++) {
        char series[64];
        snprintf(series, sizeof(series), "tame_samples_ingested_total{model=\"m%d\"}", k);
        ck_assert_msg(metric(mt.body, series) == (k == N - 1 ? 1 : 0), "%s missing or wrong", series);
        snprintf(series, sizeof(series), "tame_experts{model=\"m%d\"}", k);
        ck_assert_msg(!isnan(metric(mt.body, series)), "%s missing", series);
    }
    free(mt.body);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

START_TEST(bearer_auth_follows_rfc_6750)
{
    const char *token = "s3cret-token-0123456789";
    FILE *f = fopen(token_path, "w");
    fprintf(f, "%s\n", token);
    fclose(f);
    struct daemon d;
    const char *extra[] = {"--token-file", token_path, NULL};
    daemon_start(&d, extra);
    char good[128];
    snprintf(good, sizeof(good), "Bearer %s", token);
    struct reply r = request(d.port, "GET", "/v1/models", NULL, NULL, 0, NULL);
    ck_assert_int_eq(r.status, 401);
    ck_assert_str_eq(r.www_auth, "Bearer realm=\"tamed\"");
    free(r.body);
    r = request(d.port, "GET", "/v1/models", NULL, NULL, 0, "Bearer wrong-token-0123456789");
    ck_assert_int_eq(r.status, 401);
    ck_assert_ptr_nonnull(strstr(r.www_auth, "error=\"invalid_token\""));
    free(r.body);
    r = request(d.port, "GET", "/v1/models?access_token=s3cret-token-0123456789", NULL, NULL, 0, NULL);
    ck_assert_int_eq(r.status, 400);
    free(r.body);
    r = request(d.port, "GET", "/v1/models", NULL, NULL, 0, good);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    r = request(d.port, "GET", "/metrics", NULL, NULL, 0, NULL);
    ck_assert_int_eq(r.status, 401);
    free(r.body);
    r = request(d.port, "GET", "/livez", NULL, NULL, 0, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    r = request(d.port, "GET", "/readyz", NULL, NULL, 0, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
    /* The token never reaches the log. */
    FILE *lf = fopen(d.log_path, "r");
    char line[1024];
    while (lf && fgets(line, sizeof(line), lf)) ck_assert_ptr_null(strstr(line, "s3cret"));
    if (lf) fclose(lf);
}
END_TEST

struct feeder {
    int port;
    atomic_bool stop;
    long acked;
};

static void *feed_until_refused(void *arg)
{
    struct feeder *f = arg;
    struct tame_rng r;
    tame_rng_seed(&r, 99);
    int task = 0;
    while (!f->stop) {
        char *body = samples_body(&r, task++ % 3, 96, false);
        long status = post(f->port, "/v1/models/m/samples", body);
        if (status == 0) f->stop = true; /* the daemon stopped listening */
        if (status == 200) f->acked += 96;
        free(body);
    }
    return NULL;
}

/* The highest nice among tamed's threads named `name` (threads name
 * themselves: learner, selector, http-lane, MHD-worker, ...), or -100 if
 * there is none. */
static int thread_nice(pid_t pid, const char *name)
{
    int max = -100;
    char dir[64], want[64];
    snprintf(dir, sizeof(dir), "/proc/%d/task", (int)pid);
    snprintf(want, sizeof(want), "(%s)", name);
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[400], line[512];
        snprintf(path, sizeof(path), "%s/%s/stat", dir, e->d_name);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (fgets(line, sizeof(line), f) && strstr(line, want)) {
            char *close = strrchr(line, ')');
            int nice = 0;
            /* after ") ": state, then fields 4..19; nice is field 19 */
            if (close && sscanf(close + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %d",
                                &nice) == 1)
                max = nice > max ? nice : max;
        }
        fclose(f);
    }
    closedir(d);
    return max;
}

/* A process-directed signal may be handled on any thread; this one is sent
 * to a thread other than main's, which used to leave main in pause() for
 * good. */
START_TEST(sigterm_handled_on_another_thread_still_stops_the_daemon)
{
    struct daemon d;
    daemon_start(&d, NULL);
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/task", (int)d.pid);
    DIR *td = opendir(dir);
    ck_assert_ptr_nonnull(td);
    struct dirent *e;
    /* One of tamed's own threads (found by name: a sanitizer runtime may
     * add a thread of its own that never handles signals). */
    pid_t other = 0;
    for (int i = 0; i < 200 && !other; i++) {
        rewinddir(td);
        while ((e = readdir(td)) && !other) {
            if (e->d_name[0] == '.' || atoi(e->d_name) == d.pid) continue;
            char path[400], comm[64] = "";
            snprintf(path, sizeof(path), "%s/%s/comm", dir, e->d_name);
            FILE *f = fopen(path, "r");
            if (f && fgets(comm, sizeof(comm), f) && !strcmp(comm, "http-lane\n")) other = (pid_t)atoi(e->d_name);
            if (f) fclose(f);
        }
        if (!other) usleep(10000);
    }
    closedir(td);
    ck_assert_int_gt(other, 0);
    ck_assert_int_eq(syscall(SYS_tgkill, d.pid, other, SIGTERM), 0);
    int st;
    ck_assert_int_eq(waitpid(d.pid, &st, 0), d.pid); /* the suite's timeout catches a hang */
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    ck_assert(daemon_log_has(&d, "msg=\"stopped\""));
    d.pid = 0;
    daemon_remove(&d);
}
END_TEST

START_TEST(training_threads_run_below_the_http_threads)
{
    const char *extra[] = {"--train-nice", "7", "--selector-nice", "12", "--lane-nice", "3", NULL};
    struct daemon d;
    daemon_start(&d, extra);
    /* Threads name themselves once running: give them a moment. */
    for (int i = 0; i < 200 && (thread_nice(d.pid, "learner") != 7 || thread_nice(d.pid, "selector") != 12 ||
                                thread_nice(d.pid, "http-lane") != 3);
         i++)
        usleep(10000);
    ck_assert_int_eq(thread_nice(d.pid, "learner"), 7);
    ck_assert_int_eq(thread_nice(d.pid, "selector"), 12); /* routing refreshes after training */
    ck_assert_int_eq(thread_nice(d.pid, "http-lane"), 3); /* writes below predictions */
    ck_assert_int_eq(thread_nice(d.pid, "MHD-worker"), 0); /* requests first */
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

/* A raw connection to the daemon that asks /livez and stays open: its fd,
 * or -1 if the daemon closed it instead of answering. */
static int livez_connection(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    static const char ask[] = "GET /livez HTTP/1.1\r\nHost: t\r\n\r\n";
    char got[64] = {0};
    ssize_t n = -1;
    if (send(fd, ask, sizeof(ask) - 1, MSG_NOSIGNAL) == (ssize_t)sizeof(ask) - 1) n = recv(fd, got, sizeof(got) - 1, 0);
    if (n > 0 && strncmp(got, "HTTP/1.1 200", 12) == 0) return fd;
    close(fd);
    return -1;
}

/* The same, retried for up to 2 s: the daemon notices a closed connection
 * on its next poll, not at once. */
static int livez_connection_soon(int port)
{
    for (int i = 0; i < 200; i++) {
        int fd = livez_connection(port);
        if (fd >= 0) return fd;
        usleep(10000);
    }
    return -1;
}

/* Over --per-ip-max or --connections-max, a connection is closed at
 * accept, counted by limit and logged; a slot comes back when a connection
 * closes.  (All of a test's connections come from 127.0.0.1.) */
START_TEST(connections_over_a_limit_are_refused_counted_and_logged)
{
    struct {
        const char *flags[5];
        const char *series, *log;
    } cases[] = {
        {{"--per-ip-max", "2", NULL}, "tame_http_connections_refused_total{limit=\"per_ip_max\"}",
         "limit=per-ip-max value=2"},
        {{"--connections-max", "2", "--per-ip-max", "64", NULL},
         "tame_http_connections_refused_total{limit=\"connections_max\"}", "limit=connections-max value=2"},
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        struct daemon d;
        daemon_start(&d, cases[k].flags);
        int a = livez_connection(d.port), b = livez_connection(d.port);
        ck_assert_int_ge(a, 0);
        ck_assert_int_ge(b, 0);
        ck_assert_int_eq(livez_connection(d.port), -1);
        close(a);
        int c = livez_connection_soon(d.port);
        ck_assert_int_ge(c, 0);
        /* The metrics, on that connection (every slot is taken). */
        static const char ask[] = "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        ck_assert_int_eq(send(c, ask, sizeof(ask) - 1, MSG_NOSIGNAL), (ssize_t)sizeof(ask) - 1);
        size_t len = 0;
        char *text = malloc(1 << 20);
        for (ssize_t n; (n = recv(c, text + len, (1 << 20) - 1 - len, 0)) > 0;) len += (size_t)n;
        text[len] = 0;
        const char *body = strstr(text, "\r\n\r\n");
        ck_assert_ptr_nonnull(body);
        ck_assert_double_ge(metric(body + 4, cases[k].series), 1);
        ck_assert_double_eq(metric(body + 4, "tame_http_connections"), 2);
        free(text);
        close(b);
        close(c);
        ck_assert(daemon_log_has(&d, "msg=\"connection refused\""));
        ck_assert(daemon_log_has(&d, cases[k].log));
        ck_assert_int_eq(daemon_stop(&d), 0);
        daemon_remove(&d);
    }
}
END_TEST

/* --connection-memory-kib sizes each connection's pool: at 64 KiB, request
 * headers of 40 KB (431 at the default 16) are read and answered. */
START_TEST(connection_memory_sets_what_a_request_may_carry)
{
    const char *flags[] = {"--connection-memory-kib", "64", NULL};
    struct daemon d;
    daemon_start(&d, flags);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    ck_assert_int_eq(get_with_header_of(d.port, 40000), 200);
    ck_assert_int_eq(get_with_header_of(d.port, 80000), 431);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

/* Start tamed with one environment variable set for it (a test hook, or
 * SQLite's temporary directory) and create model m. */
static void start_with(struct daemon *d, const char *const *flags, const char *var, const char *value)
{
    setenv(var, value, 1);
    daemon_start(d, flags);
    unsetenv(var);
    json_decref(call_json(d->port, "POST", "/v1/models", model_spec, 201));
}

/* `requests` samples requests of n samples of task 0 to model m, each 200. */
static void post_task0(int port, struct tame_rng *r, int requests, int n)
{
    for (int i = 0; i < requests; i++) {
        char *body = samples_body(r, 0, n, false);
        json_decref(call_json(port, "POST", "/v1/models/m/samples", body, 200));
        free(body);
    }
}

/* A step that runs out of memory leaves the learner as it was: its batch
 * stays queued, is counted and logged, and trains on a later round, so no
 * acknowledged sample is skipped (TAMED_TEST_STEP_NOMEM fails the first
 * steps of the daemon). */
START_TEST(a_step_out_of_memory_keeps_its_batch_for_a_later_round)
{
    struct daemon d;
    start_with(&d, NULL, "TAMED_TEST_STEP_NOMEM", "3");
    struct tame_rng r;
    tame_rng_seed(&r, 21);
    post_task0(d.port, &r, 4, 32); /* 4 batches of 32 */
    double trained = 0, batches = 0, failures = 0;
    for (int tries = 0; tries < 500 && trained < 128; tries++) { /* retries pause 0.25, 0.5 and 1 s */
        usleep(20000);
        json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
        trained = jnum(m, "samples_trained");
        batches = jnum(m, "batches");
        failures = jnum(m, "step_failures");
        json_decref(m);
    }
    ck_assert_double_eq(trained, 128);
    ck_assert_double_eq(batches, 4);
    ck_assert_double_eq(failures, 3);
    struct reply mt = call(d.port, "GET", "/metrics", NULL);
    ck_assert_double_eq(metric(mt.body, "tame_step_failures_total{model=\"m\"}"), 3);
    free(mt.body);
    ck_assert(daemon_log_has(&d, "msg=\"cannot train: the batch stays queued\" model=m error=NOMEM"));
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

struct slow_post {
    int port;
    const char *body;
    long status;
};

static void *post_samples(void *arg)
{
    struct slow_post *p = arg;
    p->status = post(p->port, "/v1/models/m/samples", p->body);
    return NULL;
}

static double checkpoint_position(int port)
{
    json_t *m = call_json(port, "GET", "/v1/models/m", NULL, 200);
    double pos = jnum(json_object_get(m, "durability"), "checkpoint_position");
    json_decref(m);
    return pos;
}

START_TEST(a_write_waiting_for_its_commit_does_not_hold_up_predictions)
{
    /* One HTTP thread, and every checkpoint stalls 3 s inside its
     * transaction (test hook), so a samples request made meanwhile waits
     * that long for its commit.  It waits on a lane thread: the HTTP
     * thread goes on answering, and what it answers shows the checkpoint
     * still in progress. */
    const char *flags[] = {"--http-threads", "1", "--checkpoint-batches", "4", NULL};
    struct daemon d;
    start_with(&d, flags, "TAMED_TEST_CHECKPOINT_PAUSE_MS", "3000");
    struct tame_rng r;
    tame_rng_seed(&r, 31);
    post_task0(d.port, &r, 4, 32);
    bool paused = false;
    for (int i = 0; i < 200 && !paused; i++) {
        usleep(10000);
        paused = daemon_log_has(&d, "checkpoint paused");
    }
    ck_assert_msg(paused, "the checkpoint did not start (see %s)", d.log_path);
    char *body = samples_body(&r, 0, 32, false);
    struct slow_post sp = {.port = d.port, .body = body};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, post_samples, &sp), 0);
    usleep(200000); /* let it reach the commit */
    struct reply pr = call(d.port, "POST", "/v1/models/m/predict",
                           "{\"x\":[[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]]}");
    ck_assert_int_eq(pr.status, 200);
    free(pr.body);
    ck_assert_int_eq((int)checkpoint_position(d.port), 0); /* answered while the commit waits */
    pthread_join(t, NULL);
    ck_assert_int_eq(sp.status, 200);
    ck_assert_int_eq((int)checkpoint_position(d.port), 4 * 32);
    free(body);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

/* The model's queue_waits and queue_full counters from /metrics. */
static void queue_counters(int port, double *waits, double *full)
{
    struct reply m = call(port, "GET", "/metrics", NULL);
    ck_assert_int_eq(m.status, 200);
    *waits = metric(m.body, "tame_queue_waits_total{model=\"m\"}");
    *full = metric(m.body, "tame_queue_full_total{model=\"m\"}");
    free(m.body);
}

START_TEST(a_write_to_a_full_queue_waits_for_room_then_gets_429)
{
    /* A queue of two batches, and every learner round stalls before it
     * trains (test hook): 64 samples fill the queue until the round ends.
     * With --queue-wait-ms longer than the stall, the next write waits and
     * is acknowledged; shorter, it waits, then is refused with 429 and
     * changes nothing; 0, it is refused at once, without waiting. */
    struct tame_rng r;
    tame_rng_seed(&r, 41);
    char *fill = samples_body(&r, 0, 64, false), *more = samples_body(&r, 0, 32, false);
    static const struct {
        const char *wait_ms, *stall_ms;
        bool refuse;
        double waits;
    } cases[] = {{"10000", "2000", false, 1}, {"100", "3000", true, 1}, {"0", "3000", true, 0}};
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const bool refuse = cases[k].refuse;
        const char *flags[] = {"--queue-samples", "64", "--queue-wait-ms", cases[k].wait_ms, NULL};
        struct daemon d;
        start_with(&d, flags, "TAMED_TEST_STEP_PAUSE_MS", cases[k].stall_ms);
        json_decref(call_json(d.port, "POST", "/v1/models/m/samples", fill, 200));
        double waits, full;
        queue_counters(d.port, &waits, &full);
        ck_assert(waits == 0 && full == 0);
        struct reply rp = request(d.port, "POST", "/v1/models/m/samples", "application/json", more, strlen(more),
                                  NULL);
        queue_counters(d.port, &waits, &full);
        ck_assert_double_eq(waits, cases[k].waits);
        json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
        if (refuse) {
            ck_assert_int_eq(rp.status, 429);
            ck_assert_str_eq(rp.retry_after, "1");
            ck_assert_ptr_nonnull(strstr(rp.body, "\"BUSY\""));
            ck_assert_double_eq(full, 1);
            ck_assert_int_eq((long)jnum(m, "samples_acknowledged"), 64);
        } else {
            ck_assert_msg(rp.status == 200, "status %ld: %s", rp.status, rp.body);
            ck_assert_double_eq(full, 0);
            ck_assert_int_eq((long)jnum(m, "samples_acknowledged"), 96);
        }
        json_decref(m);
        free(rp.body);
        ck_assert_int_eq(daemon_stop(&d), 0);
        daemon_remove(&d);
    }
    free(fill);
    free(more);
}
END_TEST

START_TEST(commits_create_no_temporary_files)
{
    /* Each request commits in a savepoint; SQLite spills a savepoint's
     * journal of more than 64 KiB (one of tamed's pages) to a file in its
     * temporary directory, unless told to keep it in memory.  Watch that
     * directory while samples are committed: nothing may appear in it (a
     * container with a read-only filesystem has none to give). */
    char tmp[] = "/tmp/tamed-sqlite-tmp-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(tmp));
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_ge(inotify_add_watch(fd, tmp, IN_CREATE), 0);
    struct daemon d;
    start_with(&d, NULL, "SQLITE_TMPDIR", tmp);
    struct tame_rng r;
    tame_rng_seed(&r, 43);
    post_task0(d.port, &r, 8, 32);
    ck_assert_int_eq(daemon_stop(&d), 0);
    char ev[4096];
    ssize_t got = read(fd, ev, sizeof(ev));
    ck_assert_msg(got < 0 && errno == EAGAIN, "a file was created in SQLite's temporary directory: %s",
                  got > (ssize_t)sizeof(struct inotify_event) ? ((struct inotify_event *)ev)->name : "?");
    close(fd);
    rmdir(tmp);
    daemon_remove(&d);
}
END_TEST

/* A write waiting for room: a queue of 64 filled, every learner round
 * stalled 5 s (test hook), --queue-wait-ms outlasting it, and a write of 32
 * more posted on a thread of the test until /metrics shows it waiting. */
struct waiting_write {
    struct daemon d;
    char *fill, *more;
    struct slow_post post;
    pthread_t thread;
};

static void start_waiting_write(struct waiting_write *w, unsigned seed)
{
    const char *flags[] = {"--queue-samples", "64", "--queue-wait-ms", "20000", "--lane-threads", "2", NULL};
    start_with(&w->d, flags, "TAMED_TEST_STEP_PAUSE_MS", "5000");
    struct tame_rng r;
    tame_rng_seed(&r, seed);
    w->fill = samples_body(&r, 0, 64, false);
    w->more = samples_body(&r, 0, 32, false);
    json_decref(call_json(w->d.port, "POST", "/v1/models/m/samples", w->fill, 200));
    w->post = (struct slow_post){.port = w->d.port, .body = w->more};
    ck_assert_int_eq(pthread_create(&w->thread, NULL, post_samples, &w->post), 0);
    double waits = 0, full = 0;
    for (int i = 0; i < 300 && waits < 1; i++) {
        usleep(10000);
        queue_counters(w->d.port, &waits, &full);
    }
    ck_assert_double_eq(waits, 1);
}

/* Join the waiting write (its status: w->post.status). */
static void end_waiting_write(struct waiting_write *w)
{
    pthread_join(w->thread, NULL);
    free(w->fill);
    free(w->more);
}

START_TEST(only_one_write_at_a_time_waits_for_a_full_queue)
{
    /* A waiting write holds a lane thread; with two, one is kept for the
     * other models' writes: while one write waits for room, a second to the
     * same full queue is refused at once instead of waiting. */
    struct waiting_write w;
    start_waiting_write(&w, 47);
    struct reply second = request(w.d.port, "POST", "/v1/models/m/samples", "application/json", w.more,
                                  strlen(w.more), NULL);
    ck_assert_int_eq(second.status, 429);
    free(second.body);
    double waits, full;
    queue_counters(w.d.port, &waits, &full);
    ck_assert_double_eq(waits, 1);
    ck_assert_double_eq(full, 1);
    end_waiting_write(&w);
    ck_assert_int_eq(w.post.status, 200); /* room came when the round ended */
    json_t *m = call_json(w.d.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_int_eq((long)jnum(m, "samples_acknowledged"), 96);
    json_decref(m);
    ck_assert_int_eq(daemon_stop(&w.d), 0);
    daemon_remove(&w.d);
}
END_TEST

START_TEST(a_write_waiting_for_room_gets_404_when_its_model_is_deleted)
{
    /* The model is deleted (on the other lane thread) while a write waits
     * for room: the write is answered 404, as if it had come after. */
    struct waiting_write w;
    start_waiting_write(&w, 53);
    struct reply del = call(w.d.port, "DELETE", "/v1/models/m", NULL);
    ck_assert_msg(del.status == 200 || del.status == 204, "DELETE: %ld %s", del.status, del.body);
    free(del.body);
    end_waiting_write(&w);
    ck_assert_int_eq(w.post.status, 404);
    ck_assert_int_eq(daemon_stop(&w.d), 0);
    daemon_remove(&w.d);
}
END_TEST

static long trained(int port, const char *model)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/models/%s", model);
    json_t *m = call_json(port, "GET", path, NULL, 200);
    long n = (long)jnum(m, "samples_trained");
    json_decref(m);
    return n;
}

START_TEST(a_large_body_parsed_in_two_parts_means_the_same_as_small_ones)
{
    /* Bodies of 256 KiB and more are parsed in two parts on two lane
     * threads.  The same 3200 samples sent as one 1 MB body to model a and
     * as eight bodies of 400 to model b (too small to split) give the same
     * learner: the same events and the same prediction, to the byte. */
    struct daemon d;
    daemon_start(&d, NULL);
#define SPEC(name) "{\"name\":\"" name "\",\"input_dim\":16,\"classes\":8,\"batch_size\":32,\"hidden\":[32,32]}"
    json_decref(call_json(d.port, "POST", "/v1/models", SPEC("a"), 201));
    json_decref(call_json(d.port, "POST", "/v1/models", SPEC("b"), 201));
#undef SPEC
    struct tame_rng r;
    tame_rng_seed(&r, 77);
    size_t cap = 4 << 20, n = 0;
    char *big = malloc(cap);
    n += (size_t)snprintf(big, cap, "{\"samples\":[");
    for (int k = 0; k < 8; k++) {
        char *body = samples_body(&r, k % 3, 400, false); /* {"samples":[...]} */
        json_decref(call_json(d.port, "POST", "/v1/models/b/samples", body, 200));
        size_t bl = strlen(body);
        ck_assert_uint_lt(n + bl, cap);
        n += (size_t)snprintf(big + n, cap - n, "%s%.*s", k ? "," : "", (int)(bl - 14), body + 12);
        free(body);
    }
    /* One extra row of 15 numbers, last: its error must name it, which
     * needs the second part's arrays. */
    char bad[] = ",{\"x\":[0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5],\"y\":0}]}";
    memcpy(big + n, bad, sizeof(bad));
    ck_assert_uint_ge(strlen(big), 1u << 19);
    struct reply rp = call(d.port, "POST", "/v1/models/a/samples", big);
    ck_assert_int_eq(rp.status, 400);
    ck_assert_msg(strstr(rp.body, "sample 3200: x has 15 values"), "%s", rp.body);
    free(rp.body);
    snprintf(big + n, cap - n, "]}");
    json_t *ack = call_json(d.port, "POST", "/v1/models/a/samples", big, 200);
    ck_assert_int_eq((long)jnum(ack, "accepted"), 3200);
    json_decref(ack);
    free(big);
    struct reply mt = call(d.port, "GET", "/metrics", NULL);
    double split = metric(mt.body, "tame_http_bodies_split_total{parallel=\"yes\"}") +
                   metric(mt.body, "tame_http_bodies_split_total{parallel=\"no\"}");
    ck_assert_double_eq(split, 2); /* both big bodies; none of the small ones */
    free(mt.body);
    for (int i = 0; i < 600 && (trained(d.port, "a") < 3200 || trained(d.port, "b") < 3200); i++) usleep(20000);
    ck_assert_int_eq(trained(d.port, "a"), 3200);
    ck_assert_int_eq(trained(d.port, "b"), 3200);
    struct reply ea = call(d.port, "GET", "/v1/models/a/events", NULL), eb = call(d.port, "GET", "/v1/models/b/events", NULL);
    ck_assert_int_eq(ea.status, 200);
    ck_assert_str_eq(ea.body, eb.body);
    const char *x = "{\"x\":[[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1,1.1,1.2,1.3,1.4,1.5,1.6]]}";
    struct reply pa = call(d.port, "POST", "/v1/models/a/predict", x), pb = call(d.port, "POST", "/v1/models/b/predict", x);
    ck_assert_int_eq(pa.status, 200);
    ck_assert_str_eq(pa.body, pb.body);
    free(ea.body), free(eb.body), free(pa.body), free(pb.body);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

START_TEST(sigterm_during_ingest_exits_0_and_keeps_every_acknowledged_sample)
{
    struct daemon d;
    daemon_start(&d, NULL);
    json_decref(call_json(d.port, "POST", "/v1/models", model_spec, 201));
    struct feeder f = {.port = d.port};
    pthread_t th;
    pthread_create(&th, NULL, feed_until_refused, &f);
    usleep(1500000);
    ck_assert_int_eq(daemon_stop(&d), 0);
    f.stop = true;
    pthread_join(th, NULL);
    ck_assert_int_gt(f.acked, 0);
    FILE *lf = fopen(d.log_path, "r");
    char line[1024];
    long acked = -1, trained = -1, queued = -1;
    while (lf && fgets(line, sizeof(line), lf)) {
        char *p = strstr(line, "msg=\"model drained\" model=m ");
        if (p) sscanf(p, "msg=\"model drained\" model=m acknowledged=%ld trained=%ld queued=%ld", &acked, &trained,
                      &queued);
    }
    if (lf) fclose(lf);
    /* Every acknowledgement reached the client (in-flight requests finish
     * before the daemon stops); everything acknowledged was trained except
     * a partial batch, which stays in the log for the samples that complete
     * it after the restart. */
    ck_assert_int_eq(acked, f.acked);
    ck_assert_int_eq(trained + queued, acked);
    ck_assert_int_lt(queued, 32);
    daemon_restart(&d, NULL);
    json_t *m = call_json(d.port, "GET", "/v1/models/m", NULL, 200);
    ck_assert_int_eq((long)jnum(m, "samples_acknowledged"), acked);
    ck_assert_int_eq((long)jnum(m, "samples_trained"), trained);
    ck_assert_int_eq((long)jnum(m, "samples_queued"), queued);
    json_decref(m);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

int main(int argc, char **argv)
{
    tamed_bin = argc > 1 ? argv[1] : getenv("TAMED");
    openapi_path = argc > 2 ? argv[2] : "api/openapi.yaml";
    if (!tamed_bin) {
        fprintf(stderr, "usage: test_daemon PATH_TO_TAMED [PATH_TO_OPENAPI_YAML]\n");
        return 2;
    }
    snprintf(token_path, sizeof(token_path), "/tmp/tamed-token-%d", getpid());
    srandom((unsigned)getpid());
    curl_global_init(CURL_GLOBAL_DEFAULT);
    Suite *s = suite_create("daemon");
    TCase *tc = tcase_create("daemon");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, three_task_stream_is_learned_routed_and_predicted_while_training);
    tcase_add_test(tc, bad_requests_get_a_json_error_and_change_nothing);
    tcase_add_test(tc, metrics_parse_and_count_what_was_sent);
    tcase_add_test(tc, metrics_list_every_model);
    tcase_add_test(tc, model_params_read_back_as_written);
    tcase_add_test(tc, a_step_out_of_memory_keeps_its_batch_for_a_later_round);
    tcase_add_test(tc, a_model_too_large_for_the_limit_is_refused_at_create);
    tcase_add_test(tc, healthcheck_mode_reports_liveness);
    tcase_add_test(tc, every_path_of_the_openapi_contract_is_served);
    tcase_add_test(tc, bearer_auth_follows_rfc_6750);
    tcase_add_test(tc, sigterm_during_ingest_exits_0_and_keeps_every_acknowledged_sample);
    tcase_add_test(tc, training_threads_run_below_the_http_threads);
    tcase_add_test(tc, a_write_waiting_for_its_commit_does_not_hold_up_predictions);
    tcase_add_test(tc, a_write_to_a_full_queue_waits_for_room_then_gets_429);
    tcase_add_test(tc, commits_create_no_temporary_files);
    tcase_add_test(tc, connections_over_a_limit_are_refused_counted_and_logged);
    tcase_add_test(tc, connection_memory_sets_what_a_request_may_carry);
    tcase_add_test(tc, only_one_write_at_a_time_waits_for_a_full_queue);
    tcase_add_test(tc, a_write_waiting_for_room_gets_404_when_its_model_is_deleted);
    tcase_add_test(tc, a_large_body_parsed_in_two_parts_means_the_same_as_small_ones);
    tcase_add_test(tc, sigterm_handled_on_another_thread_still_stops_the_daemon);
    suite_add_tcase(s, tc);
    int rc = check_run(s);
    unlink(token_path);
    curl_global_cleanup();
    return rc;
}
