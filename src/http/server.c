/* server.c: libmicrohttpd plumbing: connection limits, bodies accumulated
 * under a cap (never MHD_PostProcessor), bearer auth, JSON errors, routing
 * to the handlers of api.c, request metrics. */
#include "http_internal.h"

#include "tame/log.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One request from its headers to its completion.  The lane job comes
 * first: a job handed to the lane is its request. */
struct request {
    struct lane_job job;
    struct http_server *h;
    struct http_req rq;
    const char *url, *method; /* libmicrohttpd's, valid until completion */
    char *body;
    size_t len, cap;
    bool too_large;
    double t0;
};

/* Prediction bodies up to this size are answered on the HTTP thread; every
 * other request with a body, and every write, goes to the lane. */
#define INLINE_BODY_MAX (64 * 1024)

static const char *const endpoint_names[] = {"livez", "readyz", "metrics", "models", "model",
                                             "samples", "predict", "events", "flush", "selector",
                                             "other"};

const char *http_endpoint_name(enum http_endpoint e) { return endpoint_names[e]; }

int http_send(struct http_req *c, int status, const char *type, char *body, size_t len,
              const char *retry_after, const char *www_auth)
{
    free(c->reply.body);
    c->reply = (struct http_reply){.status = status, .type = type, .body = body, .len = len,
                                   .retry_after = retry_after, .www_auth = www_auth};
    return body ? MHD_YES : MHD_NO;
}

/* Queue the reply on its connection; without one (out of memory while
 * answering), the connection is closed. */
static enum MHD_Result send_reply(struct MHD_Connection *c, struct http_reply *rp)
{
    if (!rp->body) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(rp->len, rp->body, MHD_RESPMEM_MUST_FREE);
    if (!r) return MHD_NO; /* the body stays with rp and is freed at completion */
    rp->body = NULL;
    MHD_add_response_header(r, "Content-Type", rp->type);
    if (rp->retry_after) MHD_add_response_header(r, "Retry-After", rp->retry_after);
    if (rp->www_auth) MHD_add_response_header(r, "WWW-Authenticate", rp->www_auth);
    enum MHD_Result ret = MHD_queue_response(c, (unsigned)rp->status, r);
    MHD_destroy_response(r);
    return ret;
}

int http_send_json(struct http_req *c, int status, json_t *doc)
{
    /* Nine significant digits round-trip a float exactly, without the
     * noise of printing it as a double. */
    char *s = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(doc);
    if (!s) return http_send_error(c, 503, "NOMEM", "out of memory");
    return http_send(c, status, "application/json", s, strlen(s), NULL, NULL);
}

int http_send_error_ex(struct http_req *c, int status, const char *code, const char *retry_after,
                       const char *www_auth, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *doc = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    char *s = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (!s) return MHD_NO;
    return http_send(c, status, "application/json", s, strlen(s), retry_after, www_auth);
}

/* Constant-time comparison: the time does not depend on where they differ. */
static bool token_equal(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    unsigned char diff = (unsigned char)(la != lb);
    for (size_t i = 0; i < la; i++) diff |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return diff == 0;
}

/* RFC 6750: false, with the 400 or 401 and its WWW-Authenticate left in
 * c's reply (invalid_token when one was given), unless the request may pass. */
static bool authorized(struct http_server *h, struct http_req *c)
{
    if (!h->cfg.token) return true;
    const char *auth = MHD_lookup_connection_value(c->conn, MHD_HEADER_KIND, "Authorization");
    if (MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "access_token")) {
        http_send_error_ex(c, 400, "INVALID_REQUEST", NULL, "Bearer realm=\"tamed\", error=\"invalid_request\"",
                           "send the token in the Authorization header, not the URL");
        return false;
    }
    if (!auth) {
        http_send_error_ex(c, 401, "UNAUTHORIZED", NULL, "Bearer realm=\"tamed\"", "missing bearer token");
        return false;
    }
    if (strncmp(auth, "Bearer ", 7) != 0 || !token_equal(auth + 7, h->cfg.token)) {
        http_send_error_ex(c, 401, "INVALID_TOKEN", NULL, "Bearer realm=\"tamed\", error=\"invalid_token\"",
                           "invalid bearer token");
        return false;
    }
    return true;
}

/* On a lane thread: handle, then let the connection's HTTP thread send. */
static void lane_run(struct lane_job *job)
{
    struct request *req = (struct request *)job;
    http_route(req->h, &req->rq, req->url, req->method, req->body, req->len, req->t0);
    MHD_resume_connection(req->rq.conn); /* req may be freed from here on */
}

static bool goes_to_lane(const char *url, const char *method, size_t len)
{
    if (!strcmp(method, "GET")) return false;
    size_t n = strlen(url);
    bool predict = n >= 8 && !strcmp(url + n - 8, "/predict");
    return !predict || len > INLINE_BODY_MAX;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    struct http_server *h = cls;
    struct request *req = *con_cls;
    if (!req) {
        /* Headers only: decide early what can be decided before the body. */
        req = calloc(1, sizeof(*req));
        if (!req) return MHD_NO;
        req->t0 = tame_now_s();
        req->h = h;
        req->url = url;
        req->method = method;
        req->rq.conn = c;
        req->rq.content_type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
        *con_cls = req;
        bool open_route = !strcmp(url, "/livez") || !strcmp(url, "/readyz");
        if (!open_route && !authorized(h, &req->rq)) return send_reply(c, &req->rq.reply);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        unsigned long long declared = cl ? strtoull(cl, NULL, 10) : 0;
        if (declared > h->cfg.body_max_bytes) {
            http_metrics_request(h, HTTP_EP_OTHER, 413, 0);
            http_send_error(&req->rq, 413, "LIMIT", "body of %s bytes exceeds the limit of %zu bytes", cl,
                            h->cfg.body_max_bytes);
            return send_reply(c, &req->rq.reply);
        }
        /* A declared length within the cap sizes the buffer once (growth
         * still checks every byte against the cap). */
        if (declared > 0) {
            req->body = malloc((size_t)declared + 1);
            if (!req->body) return MHD_NO;
            req->cap = (size_t)declared + 1;
        }
        return MHD_YES;
    }
    if (req->rq.lane) return send_reply(c, &req->rq.reply); /* handed to the lane and resumed: answered */
    if (*upload_size > 0) {
        /* Count every byte, chunked or not; keep none past the cap. */
        if (!req->too_large && req->len + *upload_size > h->cfg.body_max_bytes) req->too_large = true;
        if (!req->too_large) {
            if (req->len + *upload_size + 1 > req->cap) { /* +1: the NUL parsers rely on */
                size_t cap = req->cap ? req->cap : 4096;
                while (cap < req->len + *upload_size + 1) cap *= 2;
                if (cap > h->cfg.body_max_bytes + 1) cap = h->cfg.body_max_bytes + 1;
                char *nb = realloc(req->body, cap);
                if (!nb) return MHD_NO;
                req->body = nb;
                req->cap = cap;
            }
            memcpy(req->body + req->len, upload_data, *upload_size);
            req->len += *upload_size;
            req->body[req->len] = 0;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    (void)version;
    if (req->too_large) {
        http_send_error(&req->rq, 413, "LIMIT", "body exceeds the limit of %zu bytes", h->cfg.body_max_bytes);
        return send_reply(c, &req->rq.reply);
    }
    if (goes_to_lane(url, method, req->len)) {
        req->rq.lane = h->lane;
        req->job.run = lane_run;
        MHD_suspend_connection(c);
        lane_push(h->lane, &req->job);
        return MHD_YES;
    }
    http_route(h, &req->rq, url, method, req->body, req->len, req->t0);
    return send_reply(c, &req->rq.reply);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c, (void)toe;
    struct request *req = *con_cls;
    if (!req) return;
    free(req->body);
    free(req->rq.reply.body);
    free(req);
    *con_cls = NULL;
}

/* ---- connection limits ----
 * libmicrohttpd closes a connection over its limits without a word, so the
 * client sees a reset and the operator nothing.  tamed applies
 * --connections-max and --per-ip-max itself, in the accept policy, where a
 * refusal is counted (tame_http_connections_refused_total) and logged, at
 * most once every 10 s with the number since.  A connection is counted once
 * libmicrohttpd has set it up (STARTED) and uncounted when it closes; the
 * policy only reads the counts, so a connection that fails its setup after
 * the policy never keeps a slot.  Two HTTP threads accepting from one
 * address at the same instant may both pass: a limit can be exceeded by at
 * most threads - 1, and libmicrohttpd's own connection limit, that much
 * higher, stays the hard bound. */

struct conn_count {
    in_addr_t ip; /* network order; 0 for an address that is not IPv4 */
    int n;
};

static in_addr_t client_ip(const struct sockaddr *a)
{
    return a && a->sa_family == AF_INET ? ((const struct sockaddr_in *)a)->sin_addr.s_addr : 0;
}

/* The entry of ip (NULL if none), and, if ret_open, the connections open
 * from every address. */
static struct conn_count *conn_find(struct http_server *h, in_addr_t ip, int *ret_open)
{
    struct conn_count *c = NULL;
    int open = 0;
    for (int i = 0; i < h->n_ips; i++) {
        open += h->by_ip[i].n;
        if (h->by_ip[i].ip == ip) c = &h->by_ip[i];
    }
    if (ret_open) *ret_open = open;
    return c;
}

static enum MHD_Result accept_policy(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    (void)addrlen;
    struct http_server *h = cls;
    in_addr_t ip = client_ip(addr);
    int why = -1, limit = 0;
    uint64_t unlogged = 0;
    pthread_mutex_lock(&h->conn_mu);
    int open;
    const struct conn_count *c = conn_find(h, ip, &open);
    if (open >= h->cfg.connections_max) why = HTTP_REFUSED_CONNECTIONS_MAX, limit = h->cfg.connections_max;
    else if (c && c->n >= h->cfg.per_ip_max) why = HTTP_REFUSED_PER_IP_MAX, limit = h->cfg.per_ip_max;
    if (why >= 0) {
        h->refused[why]++;
        h->refused_unlogged++;
        double now = tame_now_s();
        if (now - h->refused_logged_at >= 10.0) {
            unlogged = h->refused_unlogged;
            h->refused_unlogged = 0;
            h->refused_logged_at = now;
        }
    }
    pthread_mutex_unlock(&h->conn_mu);
    if (unlogged) {
        char text[INET_ADDRSTRLEN] = "?";
        inet_ntop(AF_INET, &ip, text, sizeof(text));
        TAME_LOG(TAME_LOG_WARN, "connection refused", "addr=%s limit=%s value=%d refused_since_last_line=%llu",
                 text, why == HTTP_REFUSED_PER_IP_MAX ? "per-ip-max" : "connections-max", limit,
                 (unsigned long long)unlogged);
    }
    return why < 0 ? MHD_YES : MHD_NO;
}

/* The address is kept in the connection's socket context, tagged so that
 * 0.0.0.0 is not NULL: a connection closed without having started (none
 * should) uncounts nothing. */
#define CONN_TAG ((uintptr_t)1 << 32)
_Static_assert(sizeof(uintptr_t) >= 8, "the socket context holds a tagged IPv4 address");

static void on_connection(void *cls, struct MHD_Connection *connection, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct http_server *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *i = MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        in_addr_t ip = client_ip(i ? i->client_addr : NULL);
        pthread_mutex_lock(&h->conn_mu);
        struct conn_count *c = conn_find(h, ip, NULL);
        /* by_ip has room for as many addresses as libmicrohttpd lets
         * connections open; past that (it cannot happen) it goes uncounted. */
        if (!c && h->n_ips < h->ips_cap) {
            c = &h->by_ip[h->n_ips++];
            *c = (struct conn_count){.ip = ip};
        }
        if (c) c->n++;
        pthread_mutex_unlock(&h->conn_mu);
        *socket_context = c ? (void *)(CONN_TAG | ip) : NULL;
    } else if (toe == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        in_addr_t ip = (in_addr_t)((uintptr_t)*socket_context & (CONN_TAG - 1));
        pthread_mutex_lock(&h->conn_mu);
        struct conn_count *c = conn_find(h, ip, NULL);
        if (c && --c->n == 0) *c = h->by_ip[--h->n_ips];
        pthread_mutex_unlock(&h->conn_mu);
        *socket_context = NULL;
    }
}

void http_connection_counts(struct http_server *h, int *open, uint64_t refused[HTTP_REFUSED_COUNT])
{
    pthread_mutex_lock(&h->conn_mu);
    conn_find(h, 0, open); /* for the total; the address looked up does not matter */
    memcpy(refused, h->refused, sizeof(h->refused));
    pthread_mutex_unlock(&h->conn_mu);
}

static void server_free(struct http_server *h)
{
    pthread_mutex_destroy(&h->conn_mu);
    pthread_mutex_destroy(&h->metrics_mu);
    free(h->by_ip);
    free(h);
}

int http_start(const struct http_config *cfg, struct serve *s, struct http_server **ret)
{
    struct http_server *h = calloc(1, sizeof(*h));
    if (!h) return TAME_E_NOMEM;
    h->cfg = *cfg;
    h->serve = s;
    atomic_init(&h->ready, true);
    /* libmicrohttpd's limit, the hard one: ours plus what a race can add. */
    h->ips_cap = cfg->connections_max + cfg->threads;
    h->by_ip = calloc((size_t)h->ips_cap, sizeof(*h->by_ip));
    if (!h->by_ip) {
        free(h);
        return TAME_E_NOMEM;
    }
    pthread_mutex_init(&h->conn_mu, NULL);
    pthread_mutex_init(&h->metrics_mu, NULL);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    if (inet_pton(AF_INET, cfg->listen_host, &addr.sin_addr) != 1) {
        server_free(h);
        return TAME_E_INVAL;
    }
    json_object_seed(0); /* before any thread parses: randomised hashing */
    if (lane_start(cfg->lane_threads, cfg->lane_nice, &h->lane) < 0) {
        server_free(h);
        return TAME_E_NOMEM;
    }
    /* poll(), not epoll: with a thread pool, libmicrohttpd 0.9.75's
     * MHD_quiesce_daemon and each worker may both remove the listen socket
     * from the worker's epoll set, and the loser aborts the process ("Failed
     * to remove listen FD from epoll set"; seen once at SIGTERM in the
     * tests).  With poll, quiescing only signals the workers.
     * Each connection keeps a memory pool (headers and read buffer) of
     * --connection-memory-kib, 16 by default.  libmicrohttpd zeroes the
     * whole pool between requests (memorypool.c), so a prediction pays for
     * its size: ~10 % more CPU per prediction at 64 KiB, 15-20 % fewer
     * predictions a second at 32 (both measured).  A body, though, is read
     * half a pool per poll round: at 16 KiB a 600 KB samples body on a
     * thread that also serves 32 busy prediction connections takes ~75
     * rounds (30-130 ms), and a stream of 5,000 samples/s fell to a third
     * of its pace in about 1 run in 4; at 64 KiB, 1 in 17.  Predictions
     * first by default; the flag is the other choice. */
    h->daemon = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME, 0, accept_policy, h,
        on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->threads, MHD_OPTION_CONNECTION_LIMIT, (unsigned)h->ips_cap,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->idle_timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        cfg->connection_memory_bytes, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, h, MHD_OPTION_END);
    if (!h->daemon) {
        lane_free(h->lane);
        server_free(h);
        return TAME_E_IO;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : cfg->port;
    *ret = h;
    return 0;
}

int http_port(const struct http_server *h) { return h->port; }

void http_set_ready(struct http_server *h, bool ready) { atomic_store(&h->ready, ready); }

void http_quiesce(struct http_server *h)
{
    if (!h->quiesced) {
        h->listen_fd = MHD_quiesce_daemon(h->daemon);
        h->quiesced = true;
    }
}

void http_drain(struct http_server *h, double timeout_s)
{
    /* In-flight requests finish and their responses go out; connections
     * a client keeps open idle are cut at the timeout. */
    double until = tame_now_s() + timeout_s;
    while (tame_now_s() < until) {
        const union MHD_DaemonInfo *i = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
        if (!i || i->num_connections == 0) return;
        usleep(10000);
    }
}

void http_stop(struct http_server *h)
{
    if (!h) return;
    /* Every request handed to the lane is answered before libmicrohttpd
     * stops: its connection is resumed while the HTTP threads still run
     * (one that arrives meanwhile runs on its HTTP thread). */
    lane_stop(h->lane);
    MHD_stop_daemon(h->daemon);
    lane_free(h->lane);
    if (h->quiesced && h->listen_fd >= 0) close(h->listen_fd);
    server_free(h);
}
