/* http.h: tamed's HTTP/JSON front (API v1, DESIGN 4): the only place that
 * includes <microhttpd.h> and <jansson.h>.  It parses and validates
 * requests, calls serve/, and answers JSON; it knows no SQL and no maths. */
#ifndef TAME_HTTP_H
#define TAME_HTTP_H

#include "../serve/serve.h"

struct http_config {
    const char *listen_host;     /* "127.0.0.1" */
    int port;                    /* 0 = any free port */
    size_t body_max_bytes;       /* 413 above */
    int connections_max;
    int per_ip_max;
    size_t connection_memory_bytes; /* libmicrohttpd's pool per connection */
    int idle_timeout_s;
    int threads;                 /* HTTP threads */
    int lane_threads;            /* threads for writes and large bodies */
    int lane_nice;               /* how far below the HTTP threads they run */
    const char *token;           /* bearer token, or NULL for no auth; never logged */
    /* request limits, reported in errors */
    int input_dim_max, classes_max, hidden_max, hidden_layers_max, experts_max, batch_max;
    double x_abs_max;            /* |x| above is refused */
    double model_bytes_max;      /* a model estimated to need more at max_experts is refused */
    int queue_samples;           /* each model's queue, for that estimate */
};

struct http_server;
/* Start serving `s` (borrowed; outlives the server). */
int http_start(const struct http_config *cfg, struct serve *s, struct http_server **ret);
/* The port actually bound (useful with port 0). */
int http_port(const struct http_server *h);
/* Stop accepting new connections; in-flight requests finish. */
void http_quiesce(struct http_server *h);
/* After quiesce: wait until open connections are done, at most timeout_s. */
void http_drain(struct http_server *h, double timeout_s);
/* Mark not ready (shutting down): /readyz answers 503. */
void http_set_ready(struct http_server *h, bool ready);
void http_stop(struct http_server *h);

#endif
