/* remote.c: see remote.h.  Request bodies are written by hand with nine
 * significant digits, which give every float back exactly, so a stream sent
 * over HTTP trains the same model as the same stream in-process. */
#include "remote.h"

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Formatted floats, direct-mapped by their bits: data often repeats values
 * (pixels, quantised sensors), and a hit is a copy instead of a conversion. */
#define FMT_CACHE 4096
struct fmt_entry {
    uint32_t bits;
    uint8_t len;      /* 0 = empty */
    char text[TAME_FLOAT_TEXT_MAX];
};

#define SEND_SLOTS 2

struct remote {
    CURL *curl;
    char base[256];
    struct curl_slist *headers;
    char *resp;
    size_t resp_len, resp_cap;
    struct tame_wbuf req;      /* the body being formatted */
    char err[512];
    struct fmt_entry cache[FMT_CACHE];
    /* Samples are sent by a sender thread, so that the next requests are
     * formatted while the daemon parses this one.  Up to SEND_SLOTS bodies
     * wait in a ring, in order: the sender goes from one to the next without
     * waiting for the formatting thread to hand it over.  The connection is
     * used by one thread at a time: every other call waits for the sender. */
    pthread_t sender;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool sender_started, stop;
    int send_rc;               /* first failure of the sender, 0 if none */
    int send_head, queued;     /* the oldest slot, and how many are filled */
    struct send_slot {
        struct tame_wbuf body;
        char path[256];
    } slot[SEND_SLOTS];
};

const char *remote_error(const struct remote *r) { return r->err; }

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct remote *r = ud;
    size_t n = size * nmemb;
    if (r->resp_len + n + 1 > r->resp_cap) {
        size_t cap = r->resp_cap ? r->resp_cap : 65536;
        while (cap < r->resp_len + n + 1) cap *= 2;
        char *p = realloc(r->resp, cap);
        if (!p) return 0;
        r->resp = p;
        r->resp_cap = cap;
    }
    memcpy(r->resp + r->resp_len, ptr, n);
    r->resp_len += n;
    r->resp[r->resp_len] = 0;
    return n;
}

/* The text of f at out, from the cache when f was seen before.  out must
 * have TAME_FLOAT_TEXT_MAX bytes of room: a hit copies the whole entry
 * (one fixed-size copy, no length-dependent loop) and returns its length. */
static inline int fmt_cached(struct remote *r, char *out, float f)
{
    uint32_t bits;
    memcpy(&bits, &f, sizeof(bits));
    struct fmt_entry *e = &r->cache[(bits * 2654435761u) >> 20];
    if (e->len && e->bits == bits) {
        memcpy(out, e->text, TAME_FLOAT_TEXT_MAX);
        return e->len;
    }
    int n = tame_fmt_float_shortest(out, f); /* costly, but once per distinct value */
    e->bits = bits;
    e->len = (uint8_t)n;
    memcpy(e->text, out, (size_t)n);
    return n;
}

/* Append n floats as a JSON array. */
static void out_floats(struct remote *r, const float *x, int n)
{
    /* Room for every value at its longest, plus the last one's full-entry copy. */
    char *p = (char *)tame_wbuf_room(&r->req, (size_t)n * (TAME_FLOAT_TEXT_MAX + 1) + TAME_FLOAT_TEXT_MAX + 2);
    if (!p) abort();
    *p++ = '[';
    for (int j = 0; j < n; j++) {
        if (j) *p++ = ',';
        p += fmt_cached(r, p, x[j]);
    }
    *p++ = ']';
    r->req.len = (size_t)(p - (char *)r->req.data);
}

static long request(struct remote *r, const char *method, const char *path, const char *body, size_t len);

/* A write the daemon may shed (429: the model's queue is full) or not yet
 * take (503: a model replaying its log, the disk full): retry, for up to a
 * minute; every other status is final. */
static long request_retry(struct remote *r, const char *method, const char *path, const char *body, size_t len)
{
    for (int waited_ms = 0;;) {
        long st = request(r, method, path, body, len);
        if ((st != 429 && st != 503) || waited_ms > 60000) return st;
        int ms = st == 429 ? 2 : 100; /* the learner is behind; the disk or a replay takes longer */
        usleep((useconds_t)ms * 1000);
        waited_ms += ms;
    }
}

static void *sender_main(void *arg)
{
    struct remote *r = arg;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->queued && !r->stop) pthread_cond_wait(&r->cv, &r->mu);
        if (!r->queued) break;
        struct send_slot *sl = &r->slot[r->send_head]; /* only the sender touches a filled slot */
        pthread_mutex_unlock(&r->mu);
        int rc = request_retry(r, "POST", sl->path, (const char *)sl->body.data, sl->body.len) == 200 ? 0
                                                                                                    : TAME_E_IO;
        pthread_mutex_lock(&r->mu);
        if (rc && !r->send_rc) r->send_rc = rc;
        r->send_head = (r->send_head + 1) % SEND_SLOTS;
        r->queued--;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* Wait until at most `room_for` bodies are still queued; the sender's
 * first failure, if any.  0: the sender is idle. */
static int sender_wait(struct remote *r, int room_for)
{
    pthread_mutex_lock(&r->mu);
    while (r->queued > room_for && !r->send_rc) pthread_cond_wait(&r->cv, &r->mu);
    int rc = r->send_rc;
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int remote_open(const char *base, const char *token, struct remote **ret)
{
    struct remote *r = calloc(1, sizeof(*r));
    if (!r) return TAME_E_NOMEM;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    r->curl = curl_easy_init();
    snprintf(r->base, sizeof(r->base), "%s", base);
    r->headers = curl_slist_append(NULL, "Content-Type: application/json");
    r->headers = curl_slist_append(r->headers, "Expect:");
    if (token) {
        char h[600];
        snprintf(h, sizeof(h), "Authorization: Bearer %s", token);
        r->headers = curl_slist_append(r->headers, h);
    }
    if (!r->curl || !r->headers) {
        remote_close(r);
        return TAME_E_NOMEM;
    }
    curl_easy_setopt(r->curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(r->curl, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->curl, CURLOPT_HTTPHEADER, r->headers);
    curl_easy_setopt(r->curl, CURLOPT_TCP_NODELAY, 1L);
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    if (pthread_create(&r->sender, NULL, sender_main, r) != 0) {
        remote_close(r);
        return TAME_E_NOMEM;
    }
    r->sender_started = true;
    *ret = r;
    return 0;
}

void remote_close(struct remote *r)
{
    if (!r) return;
    if (r->sender_started) {
        pthread_mutex_lock(&r->mu);
        while (r->queued) pthread_cond_wait(&r->cv, &r->mu);
        r->stop = true;
        pthread_cond_broadcast(&r->cv);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->sender, NULL);
        pthread_mutex_destroy(&r->mu);
        pthread_cond_destroy(&r->cv);
    }
    for (int k = 0; k < SEND_SLOTS; k++) tame_wbuf_done(&r->slot[k].body);
    if (r->curl) curl_easy_cleanup(r->curl);
    curl_slist_free_all(r->headers);
    free(r->resp);
    tame_wbuf_done(&r->req);
    free(r);
}

/* One request on the kept-alive connection; returns the status or -1. */
static long request(struct remote *r, const char *method, const char *path, const char *body, size_t len)
{
    char url[512];
    snprintf(url, sizeof(url), "%s%s", r->base, path);
    r->resp_len = 0;
    if (r->resp) r->resp[0] = 0;
    curl_easy_setopt(r->curl, CURLOPT_URL, url);
    curl_easy_setopt(r->curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(r->curl, CURLOPT_POSTFIELDS, body ? body : "");
    curl_easy_setopt(r->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
    if (!strcmp(method, "GET")) curl_easy_setopt(r->curl, CURLOPT_HTTPGET, 1L);
    CURLcode rc = curl_easy_perform(r->curl);
    if (rc != CURLE_OK) {
        snprintf(r->err, sizeof(r->err), "%s %s: %s", method, path, curl_easy_strerror(rc));
        return -1;
    }
    long status = 0;
    curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &status);
    if (status >= 300) snprintf(r->err, sizeof(r->err), "%s %s: %ld %s", method, path, status, r->resp ? r->resp : "");
    return status;
}

static json_t *request_json(struct remote *r, const char *method, const char *path, const struct tame_wbuf *body,
                            long want)
{
    long st = request(r, method, path, body ? (const char *)body->data : NULL, body ? body->len : 0);
    if (st != want) return NULL;
    json_error_t e;
    json_t *doc = json_loads(r->resp ? r->resp : "", 0, &e);
    if (!doc) snprintf(r->err, sizeof(r->err), "%s %s: not JSON: %s", method, path, e.text);
    return doc;
}

int remote_create(struct remote *r, const char *name, const struct tame_params *p)
{
    if (sender_wait(r, 0) < 0) return TAME_E_IO;
    char path[256];
    snprintf(path, sizeof(path), "/v1/models/%s", name);
    long st = request(r, "DELETE", path, NULL, 0);
    if (st != 200 && st != 404) return TAME_E_IO;
    r->req.len = 0;
    tame_wbuf_printf(&r->req, "{\"name\":\"%s\",\"input_dim\":%d,\"classes\":%d,\"hidden\":[", name, p->input_dim, p->classes);
    for (int i = 0; i < p->n_hidden; i++) tame_wbuf_printf(&r->req, "%s%d", i ? "," : "", p->hidden[i]);
    tame_wbuf_printf(&r->req, "],\"batch_size\":%d,\"head_scale\":%.9g,\"lr\":%.9g,\"momentum\":%.9g,\"weight_decay\":%.9g,"
           "\"window\":%d,\"alpha\":%.9g,\"k_sigma\":%.9g,\"sigma_floor\":%.9g,\"k_warn\":%.9g,"
           "\"min_batches\":%d,\"selector_capacity\":%d,\"expert_capacity\":%d,\"selector_epochs\":%d,"
           "\"selector_lr\":%.9g,\"selector_every\":%d,\"expert_sparsity\":%.9g,\"selector_sparsity\":%.9g,"
           "\"finetune_epochs\":%d,\"max_experts\":%d,\"attribution_batches\":%d,\"seed\":%llu}",
        p->batch_size, p->head_scale, p->lr, p->momentum, p->weight_decay, p->window, p->alpha, p->k_sigma,
        p->sigma_floor, p->k_warn, p->min_batches, p->selector_capacity, p->expert_capacity, p->selector_epochs,
        p->selector_lr, p->selector_every, p->expert_sparsity, p->selector_sparsity, p->finetune_epochs,
        p->max_experts, p->attribution_batches, (unsigned long long)p->seed);
    json_t *doc = request_json(r, "POST", "/v1/models", &r->req, 201);
    json_decref(doc);
    return doc ? 0 : TAME_E_IO;
}

int remote_samples(struct remote *r, const char *name, const float *x, const int *y, int n, int dim)
{
    r->req.len = 0;
    tame_wbuf_printf(&r->req, "{\"x\":[");
    for (int i = 0; i < n; i++) {
        if (i) tame_wbuf_printf(&r->req, ",");
        out_floats(r, x + (size_t)i * dim, dim);
    }
    tame_wbuf_printf(&r->req, "],\"y\":[");
    for (int i = 0; i < n; i++) tame_wbuf_printf(&r->req, i ? ",%d" : "%d", y[i]);
    tame_wbuf_printf(&r->req, "]}");
    /* Queue the body behind the ones not sent yet (waiting for a free
     * slot) and return to format the next. */
    int rc = sender_wait(r, SEND_SLOTS - 1);
    if (rc < 0) return rc;
    if (r->req.err) return r->req.err;
    pthread_mutex_lock(&r->mu);
    struct send_slot *sl = &r->slot[(r->send_head + r->queued) % SEND_SLOTS];
    struct tame_wbuf t = sl->body;
    sl->body = r->req;
    r->req = t;
    r->req.len = 0;
    snprintf(sl->path, sizeof(sl->path), "/v1/models/%s/samples", name);
    r->queued++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

int remote_flush(struct remote *r, const char *name)
{
    if (sender_wait(r, 0) < 0) return TAME_E_IO;
    char path[256];
    snprintf(path, sizeof(path), "/v1/models/%s/flush", name);
    return request_retry(r, "POST", path, "{}", 2) == 200 ? 0 : TAME_E_IO;
}

int remote_retrain_selector(struct remote *r, const char *name)
{
    if (sender_wait(r, 0) < 0) return TAME_E_IO;
    char path[256];
    snprintf(path, sizeof(path), "/v1/models/%s", name);
    json_t *m = request_json(r, "GET", path, NULL, 200);
    if (!m) return TAME_E_IO;
    json_int_t version = json_integer_value(json_object_get(json_object_get(m, "selector"), "version"));
    int experts = (int)json_integer_value(json_object_get(m, "n_experts"));
    json_decref(m);
    if (experts < 2) return 0;
    snprintf(path, sizeof(path), "/v1/models/%s/selector", name);
    if (request_retry(r, "POST", path, "{}", 2) != 202) return TAME_E_IO;
    snprintf(path, sizeof(path), "/v1/models/%s", name);
    for (;;) {
        m = request_json(r, "GET", path, NULL, 200);
        if (!m) return TAME_E_IO;
        json_int_t now = json_integer_value(json_object_get(json_object_get(m, "selector"), "version"));
        json_decref(m);
        if (now > version) return 0;
        usleep(5000);
    }
}

int remote_wait(struct remote *r, const char *name, uint64_t trained, bool selector, int *ret_experts)
{
    if (sender_wait(r, 0) < 0) return TAME_E_IO;
    char path[256];
    snprintf(path, sizeof(path), "/v1/models/%s", name);
    for (;;) {
        json_t *m = request_json(r, "GET", path, NULL, 200);
        if (!m) return TAME_E_IO;
        json_t *sel = json_object_get(m, "selector");
        uint64_t done = (uint64_t)json_integer_value(json_object_get(m, "samples_trained"));
        int experts = (int)json_integer_value(json_object_get(m, "n_experts"));
        /* Settled: no retrain due or in flight (a selector may still be
         * missing: an expert with no samples in the buffer yet). */
        bool due = json_is_true(json_object_get(sel, "due"));
        bool pending = json_integer_value(json_object_get(sel, "pending")) > 0;
        json_decref(m);
        if (done >= trained && (!selector || (!due && !pending))) {
            *ret_experts = experts;
            return 0;
        }
        usleep(2000);
    }
}

int remote_events(struct remote *r, const char *name, struct tame_event **ret, size_t *ret_n)
{
    if (sender_wait(r, 0) < 0) return TAME_E_IO;
    struct tame_event *ev = NULL;
    size_t n = 0, cap = 0;
    long long from = 0;
    for (;;) {
        char path[256];
        snprintf(path, sizeof(path), "/v1/models/%s/events?from=%lld&limit=1000", name, from);
        json_t *doc = request_json(r, "GET", path, NULL, 200);
        if (!doc) {
            free(ev);
            return TAME_E_IO;
        }
        json_t *e;
        size_t i;
        json_array_foreach(json_object_get(doc, "events"), i, e) {
            if (n == cap) {
                cap = cap ? 2 * cap : 256;
                ev = realloc(ev, cap * sizeof(*ev));
                if (!ev) abort();
            }
            struct tame_event *t = &ev[n++];
            memset(t, 0, sizeof(*t));
            t->seq = (uint64_t)json_integer_value(json_object_get(e, "seq"));
            t->batch = (uint64_t)json_integer_value(json_object_get(e, "batch"));
            const char *kind = json_string_value(json_object_get(e, "kind"));
            for (int k = TAME_EV_DETECT; k <= TAME_EV_PRUNE; k++)
                if (kind && !strcmp(kind, tame_event_kind_name((enum tame_event_kind)k))) t->kind = k;
            t->from = (int)json_integer_value(json_object_get(e, "from"));
            t->to = (int)json_integer_value(json_object_get(e, "to"));
            t->stat = json_number_value(json_object_get(e, "stat"));
            t->threshold = json_number_value(json_object_get(e, "threshold"));
            json_t *l;
            size_t j;
            json_array_foreach(json_object_get(e, "losses"), j, l) if (j < TAME_MAX_EXPERTS) {
                t->losses[j] = (float)json_number_value(l);
                t->n_losses = (int)j + 1;
            }
        }
        json_t *next = json_object_get(doc, "next");
        bool more = json_is_integer(next);
        if (more) from = json_integer_value(next);
        json_decref(doc);
        if (!more) break;
    }
    *ret = ev;
    *ret_n = n;
    return 0;
}

int remote_predict(struct remote *r, const char *name, const float *x, int n, int dim, int classes,
                   struct tame_prediction *outp, float *probs)
{
    if (sender_wait(r, 0) < 0) return TAME_E_IO;
    char path[256];
    snprintf(path, sizeof(path), "/v1/models/%s/predict", name);
    for (int start = 0; start < n; start += 256) {
        int m = n - start < 256 ? n - start : 256;
        r->req.len = 0;
        tame_wbuf_printf(&r->req, "{\"x\":[");
        for (int i = 0; i < m; i++) {
            if (i) tame_wbuf_printf(&r->req, ",");
            out_floats(r, x + (size_t)(start + i) * dim, dim);
        }
        tame_wbuf_printf(&r->req, "]}");
        json_t *doc = request_json(r, "POST", path, &r->req, 200);
        if (!doc) return TAME_E_IO;
        json_t *p;
        size_t i;
        json_array_foreach(json_object_get(doc, "predictions"), i, p) {
            if ((int)i >= m) break;
            struct tame_prediction *o = &outp[start + (int)i];
            o->label = (int)json_integer_value(json_object_get(p, "label"));
            o->expert = (int)json_integer_value(json_object_get(p, "expert"));
            o->confidence = (float)json_number_value(json_object_get(p, "confidence"));
            json_t *pv;
            size_t j;
            json_array_foreach(json_object_get(p, "probabilities"), j, pv) if ((int)j < classes)
                probs[(size_t)(start + (int)i) * classes + j] = (float)json_number_value(pv);
        }
        json_decref(doc);
    }
    return 0;
}
