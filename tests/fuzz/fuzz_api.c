/* fuzz_api.c: any body sent to any route that takes one is answered, and
 * as DESIGN 4 says: a 2xx with a JSON reply, or a 4xx, 429 or 503 with the
 * JSON error {"error": {"code", "message"}}; never a 500, never a reply
 * that is not JSON, never a crash; and a refused write leaves the model's
 * acknowledged count as it was, an accepted one moves it as its reply
 * says.  The real stack runs in this process (SQLite in a temporary
 * directory, the learners, the HTTP server on a loopback port), started
 * once; each input is one request on a new connection (the integration
 * harness's libcurl client).  The input's first byte picks the route, the
 * rest is the body (or, for the events route, the query string). */
#include "fuzz.h"
#include "harness.h"
#include "http/http.h"
#include "store/store.h"
#include "tame/log.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct {
    char dir[64], db[128];
    struct serve *sv;
    struct http_server *hs;
    int port;
    double acknowledged; /* model m's, after the last samples request */
} st;

static const struct route {
    const char *method, *path;
} routes[] = {
    {"POST", "/v1/models/m/samples"}, {"POST", "/v1/models/m/predict"}, {"POST", "/v1/models"},
    {"GET", "/v1/models/m/events?"},  {"POST", "/v1/models/m/flush"},   {"POST", "/v1/models/m/selector"},
};

/* One request: the status (0 if the exchange failed: *body then says
 * why) and the reply's body (malloc'd) in *body. */
static int request_to(const char *method, const char *path, const uint8_t *b, size_t n, char **body)
{
    struct reply r;
    CURLcode rc = try_request(st.port, method, path, "application/json", (const char *)b, n, NULL, &r);
    if (rc != CURLE_OK) {
        free(r.body);
        *body = strdup(curl_easy_strerror(rc));
        return 0;
    }
    *body = r.body;
    return (int)r.status;
}

/* Model m's samples_acknowledged, as GET /v1/models/m reports it. */
static double acknowledged(void)
{
    char *body;
    int status = request_to("GET", "/v1/models/m", NULL, 0, &body);
    json_t *doc = json_loads(body ? body : "", 0, NULL);
    json_t *v = json_object_get(doc, "samples_acknowledged");
    FUZZ_REQUIRE(status == 200 && json_is_number(v), "GET /v1/models/m: %d %s", status, body ? body : "");
    double n = json_number_value(v);
    json_decref(doc);
    free(body);
    return n;
}

static void stop(void)
{
    if (!st.hs) return;
    http_set_ready(st.hs, false);
    http_quiesce(st.hs);
    http_drain(st.hs, 5.0);
    http_stop(st.hs);
    serve_stop(st.sv, false);
    serve_free(st.sv);
    st.hs = NULL;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", st.dir);
    if (system(cmd) != 0) fprintf(stderr, "fuzz_api: could not remove %s\n", st.dir);
}

static void start(void)
{
    tame_log_threshold = TAME_LOG_WARN; /* a line per created model would drown libFuzzer's own */
    snprintf(st.dir, sizeof(st.dir), "/tmp/fuzz-api-XXXXXX");
    FUZZ_REQUIRE(mkdtemp(st.dir), "mkdtemp");
    snprintf(st.db, sizeof(st.db), "%s/tamed.db", st.dir);
    char why[512] = "";
    struct store_options so = {.sync = STORE_SYNC_NORMAL, .busy_ms = 5000, .manual_wal = true};
    struct store *store;
    FUZZ_REQUIRE(store_open(st.db, &so, &store, why, sizeof(why)) == 0, "store: %s", why);
    struct serve_config sc = {.workers = 1, .queue_samples = 256, .queue_wait_ms = 10, .queue_waiters_max = 1,
                              .models_max = 8, .step_threads = 1, .db_path = st.db, .store = store,
                              .checkpoint_batches = 50, .checkpoint_seconds = 5, .ids_keep = 1000,
                              .synchronous = 1};
    FUZZ_REQUIRE(serve_new(&sc, &st.sv, why, sizeof(why)) == 0, "serve: %s", why);
    /* Small limits: a fuzzed create may ask for the largest model allowed. */
    struct http_config hc = {.listen_host = "127.0.0.1", .body_max_bytes = 1 << 20, .connections_max = 64,
                             .per_ip_max = 64, .connection_memory_bytes = 16 * 1024, .idle_timeout_s = 5,
                             .threads = 2, .lane_threads = 2, .input_dim_max = 64, .classes_max = 16,
                             .hidden_max = 32, .hidden_layers_max = 2, .experts_max = 32, .batch_max = 64,
                             .x_abs_max = 1e6, .model_bytes_max = 256.0 * 1048576, .queue_samples = 256};
    FUZZ_REQUIRE(http_start(&hc, st.sv, &st.hs) == 0, "http_start");
    st.port = http_port(st.hs);
    atexit(stop);
    /* The model every route but create talks to, trained a little so that
     * predictions are routed through experts. */
    const char *model = "{\"name\":\"m\",\"input_dim\":4,\"classes\":3,\"hidden\":[8],\"batch_size\":4}";
    char *body;
    FUZZ_REQUIRE(request_to("POST", "/v1/models", (const uint8_t *)model, strlen(model), &body) == 201, "create: %s",
                 body);
    free(body);
    const char *samples = "{\"x\":[[1,0,0,0],[0,1,0,0],[0,0,1,0],[1,1,0,0]],\"y\":[0,1,2,0]}";
    FUZZ_REQUIRE(request_to("POST", "/v1/models/m/samples", (const uint8_t *)samples, strlen(samples), &body) == 200,
                 "samples: %s", body);
    free(body);
    st.acknowledged = acknowledged();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!st.hs) start();
    if (size < 1) return 0;
    const struct route *rt = &routes[data[0] % (sizeof(routes) / sizeof(routes[0]))];
    data++, size--;
    char path[512];
    size_t n = (size_t)snprintf(path, sizeof(path), "%s", rt->path);
    if (!strcmp(rt->method, "GET")) { /* the body becomes the query, in the characters a URL takes as they are */
        for (size_t i = 0; i < size && n + 1 < sizeof(path); i++)
            if (data[i] && strchr("abcdefghijklmnopqrstuvwxyz0123456789=&-_.%+", data[i])) path[n++] = (char)data[i];
        path[n] = 0;
        size = 0;
    }
    char *body;
    int status = request_to(rt->method, path, strcmp(rt->method, "GET") ? data : NULL, size, &body);
    FUZZ_REQUIRE(status >= 200 && status != 500 && status < 600, "%s %s: status %d: %s", rt->method, path, status,
                 body ? body : "");
    json_t *doc = body && *body ? json_loads(body, 0, NULL) : NULL;
    if (status >= 400) {
        json_t *e = json_object_get(doc, "error");
        FUZZ_REQUIRE(json_is_string(json_object_get(e, "code")) && json_is_string(json_object_get(e, "message")),
                     "%s %s: %d without a JSON error: %s", rt->method, path, status, body);
    } else {
        FUZZ_REQUIRE(doc || !body || !*body, "%s %s: %d, not JSON: %s", rt->method, path, status, body);
    }
    if (rt == &routes[0]) {
        /* A refused write changes nothing; an accepted one is counted as it says. */
        double now = acknowledged();
        if (status == 200)
            FUZZ_REQUIRE(now == json_number_value(json_object_get(doc, "samples_acknowledged")) &&
                             now >= st.acknowledged,
                         "acknowledged %g -> %g, reply %s", st.acknowledged, now, body);
        else
            FUZZ_REQUIRE(now == st.acknowledged, "refused (%d) but acknowledged %g -> %g: %s", status,
                         st.acknowledged, now, body);
        st.acknowledged = now;
    }
    json_decref(doc);
    free(body);
    return 0;
}
