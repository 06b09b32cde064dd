/* http_internal.h: shared by the files of src/http/ only. */
#ifndef TAME_HTTP_INTERNAL_H
#define TAME_HTTP_INTERNAL_H

#include "http.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>

enum http_endpoint {
    HTTP_EP_LIVEZ, HTTP_EP_READYZ, HTTP_EP_METRICS, HTTP_EP_MODELS, HTTP_EP_MODEL,
    HTTP_EP_SAMPLES, HTTP_EP_PREDICT, HTTP_EP_EVENTS, HTTP_EP_FLUSH, HTTP_EP_SELECTOR, HTTP_EP_OTHER,
    HTTP_EP_COUNT
};
const char *http_endpoint_name(enum http_endpoint e);

/* Request-duration histogram buckets, seconds. */
#define HTTP_BUCKETS 10
extern const double http_bucket_le[HTTP_BUCKETS];

/* What a handler answers: filled by http_send*, sent by server.c (from the
 * HTTP thread that owns the connection). */
struct http_reply {
    int status;
    const char *type;        /* static strings only, as the two below */
    char *body;              /* malloc'd, taken by the reply */
    size_t len;
    const char *retry_after;
    const char *www_auth;
};

struct lane;

/* One request as the handlers see it.  They never queue a response on the
 * connection themselves, so a request can be handled on a lane thread
 * (lane.c) while its connection is suspended. */
struct http_req {
    struct MHD_Connection *conn; /* for GET arguments only */
    const char *content_type;
    struct lane *lane;           /* set when it runs on a lane thread: it may fork work there */
    struct http_reply reply;
};

/* Why a connection was closed at accept: the limit it was over. */
enum http_refused { HTTP_REFUSED_CONNECTIONS_MAX, HTTP_REFUSED_PER_IP_MAX, HTTP_REFUSED_COUNT };

struct http_server {
    struct http_config cfg;
    struct serve *serve;
    struct MHD_Daemon *daemon;
    int port;
    int listen_fd;              /* returned by quiesce, closed at stop */
    bool quiesced;
    atomic_bool ready;
    pthread_mutex_t metrics_mu; /* guards the counters below */
    struct lane *lane;          /* threads for writes and long requests */
    uint64_t requests[HTTP_EP_COUNT][6];             /* by status class 1xx..5xx, [0] unused */
    uint64_t duration_bucket[HTTP_EP_COUNT][HTTP_BUCKETS];
    uint64_t duration_count[HTTP_EP_COUNT];
    double duration_sum[HTTP_EP_COUNT];
    uint64_t bodies_split[2];                        /* parsed in two parts: [0] alone, [1] in parallel */
    /* Open connections by client address, and those refused at accept
     * (server.c, "connection limits"). */
    pthread_mutex_t conn_mu;
    struct conn_count *by_ip;   /* [n_ips] of ips_cap: libmicrohttpd's connection limit */
    int n_ips, ips_cap;
    uint64_t refused[HTTP_REFUSED_COUNT];
    uint64_t refused_unlogged;  /* since the last log line about them */
    double refused_logged_at;
};

/* body is the request's own buffer: numeric arrays are rewritten in place.
 * Leaves the answer in c->reply. */
void http_route(struct http_server *h, struct http_req *c, const char *url, const char *method,
                char *body, size_t len, double t0);
/* metrics.c: count a request; and answer /metrics. */
void http_metrics_request(struct http_server *h, enum http_endpoint ep, int status, double seconds);
int http_handle_metrics(struct http_server *h, struct http_req *c);
/* Connections open now, and those refused at accept so far by limit. */
void http_connection_counts(struct http_server *h, int *open, uint64_t refused[HTTP_REFUSED_COUNT]);

/* Set c's reply (replacing one set before); body is taken. */
int http_send(struct http_req *c, int status, const char *type, char *body, size_t len,
              const char *retry_after, const char *www_auth);
/* Takes the reference to doc. */
int http_send_json(struct http_req *c, int status, json_t *doc);
int http_send_error_ex(struct http_req *c, int status, const char *code, const char *retry_after,
                       const char *www_auth, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
#define http_send_error(c, status, code, ...) \
    http_send_error_ex((c), (status), (code), NULL, NULL, __VA_ARGS__)

/* ---- lane.c: requests that write or run long, off the HTTP threads ---- */

/* A request whose body is complete and whose connection is suspended.
 * `run` handles it and ends by resuming the connection, after which the
 * job may already be freed by the HTTP thread. */
struct lane_job {
    struct lane_job *next;
    void (*run)(struct lane_job *job);
    bool taken; /* a lane thread took it (under the lane's lock) */
};

int lane_start(int threads, int nice, struct lane **ret);
void lane_push(struct lane *l, struct lane_job *job);

/* Part of one request's work, lent to a lane thread that has nothing to do:
 * lane_fork queues it first in line if a lane thread is idle (false if
 * none is: run it yourself); lane_join returns once it ran, running it on
 * the caller's thread if no lane thread took it meanwhile, so a request
 * never waits behind another's. */
struct lane_task {
    struct lane_job job;
    struct lane *lane;
    void (*fn)(void *arg);
    void *arg;
    bool done;
};
bool lane_fork(struct lane *l, struct lane_task *t, void (*fn)(void *arg), void *arg);
void lane_join(struct lane_task *t);
/* Runs every job already pushed, then stops the threads; a job pushed
 * later runs on the pusher's thread.  lane_free (after the HTTP threads
 * are gone) stops the lane if need be and frees it. */
void lane_stop(struct lane *l);
void lane_free(struct lane *l);

#endif
