/* metrics.c: /metrics in Prometheus text format (every series named
 * tame_*), and the request counters and duration histograms the HTTP
 * threads keep for it. */
#include "http_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double http_bucket_le[HTTP_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01,
                                             0.025,  0.05,  0.1,    0.5,   2.5};

void http_metrics_request(struct http_server *h, enum http_endpoint ep, int status, double seconds)
{
    pthread_mutex_lock(&h->metrics_mu);
    int cls = status / 100;
    if (cls >= 1 && cls <= 5) h->requests[ep][cls]++;
    for (int b = 0; b < HTTP_BUCKETS; b++)
        if (seconds <= http_bucket_le[b]) h->duration_bucket[ep][b]++;
    h->duration_count[ep]++;
    h->duration_sum[ep] += seconds;
    pthread_mutex_unlock(&h->metrics_mu);
}

/* The server's own series: requests, durations, bodies, connections. */
static void render_http(struct http_server *h, struct tame_wbuf *t)
{
    pthread_mutex_lock(&h->metrics_mu);
    tame_wbuf_printf(t,
                     "# HELP tame_http_requests_total HTTP requests by endpoint and status class.\n"
                     "# TYPE tame_http_requests_total counter\n");
    for (int e = 0; e < HTTP_EP_COUNT; e++)
        for (int k = 1; k <= 5; k++)
            if (h->requests[e][k])
                tame_wbuf_printf(t,
                                 "tame_http_requests_total{endpoint=\"%s\",code=\"%dxx\"} %llu\n",
                                 http_endpoint_name(e), k, (unsigned long long)h->requests[e][k]);
    tame_wbuf_printf(t, "# HELP tame_http_request_duration_seconds Request durations.\n"
                        "# TYPE tame_http_request_duration_seconds histogram\n");
    for (int e = 0; e < HTTP_EP_COUNT; e++) {
        if (!h->duration_count[e]) continue;
        for (int b = 0; b < HTTP_BUCKETS; b++)
            tame_wbuf_printf(
                t, "tame_http_request_duration_seconds_bucket{endpoint=\"%s\",le=\"%g\"} %llu\n",
                http_endpoint_name(e), http_bucket_le[b],
                (unsigned long long)h->duration_bucket[e][b]);
        tame_wbuf_printf(
            t, "tame_http_request_duration_seconds_bucket{endpoint=\"%s\",le=\"+Inf\"} %llu\n",
            http_endpoint_name(e), (unsigned long long)h->duration_count[e]);
        tame_wbuf_printf(t, "tame_http_request_duration_seconds_sum{endpoint=\"%s\"} %.6f\n",
                         http_endpoint_name(e), h->duration_sum[e]);
        tame_wbuf_printf(t, "tame_http_request_duration_seconds_count{endpoint=\"%s\"} %llu\n",
                         http_endpoint_name(e), (unsigned long long)h->duration_count[e]);
    }
    tame_wbuf_printf(
        t,
        "# HELP tame_http_bodies_split_total Large bodies parsed in two parts, by whether a second"
        " lane thread took one.\n# TYPE tame_http_bodies_split_total counter\n");
    for (int k = 0; k < 2; k++)
        tame_wbuf_printf(t, "tame_http_bodies_split_total{parallel=\"%s\"} %llu\n",
                         k ? "yes" : "no", (unsigned long long)h->bodies_split[k]);
    pthread_mutex_unlock(&h->metrics_mu);
    int open;
    uint64_t refused[HTTP_REFUSED_COUNT];
    http_connection_counts(h, &open, refused);
    tame_wbuf_printf(
        t,
        "# HELP tame_http_connections Open HTTP connections.\n# TYPE tame_http_connections gauge\n"
        "tame_http_connections %d\n",
        open);
    tame_wbuf_printf(
        t,
        "# HELP tame_http_connections_refused_total Connections closed at accept, by the limit"
        " they were over.\n# TYPE tame_http_connections_refused_total counter\n"
        "tame_http_connections_refused_total{limit=\"connections_max\"} %llu\n"
        "tame_http_connections_refused_total{limit=\"per_ip_max\"} %llu\n",
        (unsigned long long)refused[HTTP_REFUSED_CONNECTIONS_MAX],
        (unsigned long long)refused[HTTP_REFUSED_PER_IP_MAX]);
}

/* One series per model for each of these, labelled model="name". */
static void render_models(struct http_server *h, struct tame_wbuf *t)
{
    static const char *const gauges[][3] = {
        {"tame_samples_ingested_total", "counter", "Samples acknowledged."},
        {"tame_samples_trained_total", "counter", "Samples trained."},
        {"tame_batches_trained_total", "counter", "Batches stepped."},
        {"tame_predictions_total", "counter", "Rows predicted."},
        {"tame_experts", "gauge", "Experts of the model."},
        {"tame_detections_total", "counter", "Shift detections."},
        {"tame_reuses_total", "counter", "Switches back to an existing expert."},
        {"tame_spawns_total", "counter", "Experts created."},
        {"tame_selector_retrains_total", "counter", "Selectors installed."},
        {"tame_queue_depth", "gauge", "Samples waiting for a learner worker."},
        {"tame_nonfinite_skips_total", "counter", "Batches and updates refused as non-finite."},
        {"tame_loss", "gauge", "Loss of the active expert on the last batch."},
        {"tame_statistic", "gauge", "Smoothed loss S_all of the active expert."},
        {"tame_threshold", "gauge", "Threshold of the active expert."},
        {"tame_selector_buffer_fill", "gauge", "Samples in the selector buffer."},
        {"tame_samples_duplicate_total", "counter",
         "Samples acknowledged as duplicates of a known id (since start)."},
        {"tame_checkpoint_position", "gauge", "Log items covered by the model's last checkpoint."},
        {"tame_queue_waits_total", "counter",
         "Writes that found the queue full and waited for room (--queue-wait-ms)."},
        {"tame_queue_full_total", "counter",
         "Writes refused with 429: the queue stayed full for --queue-wait-ms."},
        {"tame_step_failures_total", "counter",
         "Learner rounds that failed (out of memory); their batch stayed queued and is retried."},
    };
    enum { N_G = sizeof(gauges) / sizeof(gauges[0]) };
    /* One row per model, read before any text is written so that each
     * model's view is held only for the copy. */
    struct model_row {
        char name[SERVE_NAME_MAX + 1];
        double v[N_G];
    } *rows = NULL;
    char **names = NULL;
    int n = 0, shown = 0;
    if (serve_names(h->serve, &names, &n) < 0) names = NULL, n = 0;
    if (n && !(rows = calloc((size_t)n, sizeof(*rows)))) t->err = TAME_E_NOMEM;
    for (int i = 0; rows && i < n; i++) {
        struct serve_model *m = serve_get(h->serve, names[i]);
        if (!m) continue; /* deleted since it was listed */
        struct serve_view *v = serve_view_get(m);
        struct serve_counters cn;
        serve_counters(m, &cn);
        const struct tame_expert_info *a = v->info.active >= 0 ? &v->experts[v->info.active] : NULL;
        double row[N_G] = {(double)cn.acknowledged,
                           (double)v->info.samples_trained,
                           (double)v->info.batches,
                           (double)cn.predictions,
                           v->n_experts,
                           (double)cn.by_kind[TAME_EV_DETECT],
                           (double)cn.by_kind[TAME_EV_REUSE],
                           (double)cn.by_kind[TAME_EV_SPAWN],
                           (double)cn.by_kind[TAME_EV_SELECTOR],
                           (double)cn.queued,
                           (double)(v->info.nonfinite_batches + v->info.nonfinite_updates),
                           a ? a->loss : NAN,
                           a ? a->s_all : NAN,
                           a ? a->threshold : NAN,
                           v->info.selector_fill,
                           (double)cn.duplicates,
                           (double)cn.checkpoint_pos,
                           (double)cn.queue_waits,
                           (double)cn.queue_full,
                           (double)cn.step_failures};
        memcpy(rows[shown].v, row, sizeof(row));
        snprintf(rows[shown].name, sizeof(rows[shown].name), "%s", names[i]);
        shown++;
        serve_view_put(v);
        serve_put(m);
    }
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    for (int g = 0; g < N_G; g++) {
        tame_wbuf_printf(t, "# HELP %s %s\n# TYPE %s %s\n", gauges[g][0], gauges[g][2],
                         gauges[g][0], gauges[g][1]);
        for (int i = 0; i < shown; i++) {
            double v = rows[i].v[g];
            if (isnan(v)) continue; /* no active expert yet */
            if (isinf(v)) /* Prometheus spells infinities +Inf and -Inf */
                tame_wbuf_printf(t, "%s{model=\"%s\"} %sInf\n", gauges[g][0], rows[i].name,
                                 v > 0 ? "+" : "-");
            else
                tame_wbuf_printf(t, "%s{model=\"%s\"} %.17g\n", gauges[g][0], rows[i].name, v);
        }
    }
    free(rows);
}

/* The database's series. */
static void render_store(struct http_server *h, struct tame_wbuf *t)
{
    struct serve_store_stats ss;
    serve_store_stats(h->serve, &ss);
    const struct {
        const char *name, *type, *help;
        double v;
    } store_rows[] = {
        {"tame_store_commits_total", "counter",
         "Transactions committed (each may hold many requests).", (double)ss.commits},
        {"tame_store_commit_failures_total", "counter",
         "Transactions that failed: nothing in them was acknowledged.", (double)ss.commit_failures},
        {"tame_store_requests_committed_total", "counter", "Requests made durable.",
         (double)ss.requests_committed},
        {"tame_store_commit_seconds_total", "counter", "Time spent in committed transactions.",
         ss.commit_seconds},
        {"tame_checkpoints_total", "counter", "Checkpoints written.", (double)ss.checkpoints},
        {"tame_checkpoint_bytes_total", "counter", "Bytes of learner state checkpointed.",
         (double)ss.checkpoint_bytes},
        {"tame_checkpoint_seconds_total", "counter",
         "Time spent checkpointing (serialise and commit).", ss.checkpoint_seconds},
        {"tame_store_writable", "gauge",
         "1 when the database accepts writes, 0 while every write fails.", ss.degraded ? 0 : 1},
        {"tame_store_synchronous", "gauge",
         "SQLite synchronous level in force: 1 NORMAL, 2 FULL (journal mode is WAL).",
         ss.synchronous},
        {"tame_models_replaying", "gauge", "Models still replaying their log after a start.",
         ss.replaying},
    };
    for (size_t i = 0; i < sizeof(store_rows) / sizeof(store_rows[0]); i++)
        tame_wbuf_printf(t, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", store_rows[i].name,
                         store_rows[i].help, store_rows[i].name, store_rows[i].type,
                         store_rows[i].name, store_rows[i].v);
}

int http_handle_metrics(struct http_server *h, struct http_req *c)
{
    struct tame_wbuf t;
    tame_wbuf_init(&t);
    tame_wbuf_printf(&t,
                     "# HELP tame_build_info Build information.\n# TYPE tame_build_info gauge\n");
    tame_wbuf_printf(&t, "tame_build_info{version=\"%s\"} 1\n", TAMED_VERSION);
    render_http(h, &t);
    render_models(h, &t);
    render_store(h, &t);
    if (t.err) {
        tame_wbuf_done(&t);
        return http_send_error(c, 503, "NOMEM", "out of memory");
    }
    /* The response frees the text with free(): hand over a malloc'd copy. */
    char *text = malloc(t.len ? t.len : 1);
    if (text) memcpy(text, t.data, t.len);
    size_t len = t.len;
    tame_wbuf_done(&t);
    if (!text) return http_send_error(c, 503, "NOMEM", "out of memory");
    return http_send(c, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL, NULL);
}
