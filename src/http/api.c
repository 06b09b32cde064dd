/* api.c: the v1 handlers (api/openapi.yaml): validation of every field with
 * the index of the offending sample, and the JSON codecs.  /metrics is
 * metrics.c's. */
#include "http_internal.h"
#include "numarray.h"

#include "tame/log.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- model parameters ---- */

enum ftype { F_INT, F_FLOAT, F_U64 };
static const struct field {
    const char *name;
    enum ftype type;
    size_t off;
} param_fields[] = {
#define FI(n) {#n, F_INT, offsetof(struct tame_params, n)}
#define FF(n) {#n, F_FLOAT, offsetof(struct tame_params, n)}
    FI(input_dim), FI(classes), FI(batch_size), FF(head_scale), FF(lr), FF(momentum),
    FF(weight_decay), FI(window), FF(alpha), FF(k_sigma), FF(sigma_floor), FF(k_warn),
    FI(min_batches), FI(selector_capacity), FI(expert_capacity), FI(selector_epochs),
    FF(selector_lr), FI(selector_every), FF(expert_sparsity), FF(selector_sparsity),
    FI(finetune_epochs), FI(max_experts), FI(attribution_batches),
    {"seed", F_U64, offsetof(struct tame_params, seed)},
#undef FI
#undef FF
};
#define N_FIELDS (sizeof(param_fields) / sizeof(param_fields[0]))

/* A float for a jansson tree: the double of the float's shortest decimal
 * text.  Dumped at 9 significant digits (server.c), 0.1f then reads "0.1"
 * rather than "0.100000001", and either way parses back to the same float.
 * Not finite (a loss may overflow): null, as jansson has no such number. */
static json_t *json_float(float f)
{
    if (!isfinite(f)) return json_null();
    char buf[TAME_FLOAT_TEXT_MAX + 1];
    int n = tame_fmt_float_shortest(buf, f);
    buf[n] = 0;
    return json_real(strtod(buf, NULL));
}

/* A double for a jansson tree; null when not finite, as for json_float. */
static json_t *json_double(double d) { return isfinite(d) ? json_real(d) : json_null(); }

static json_t *params_json(const struct tame_params *p)
{
    json_t *o = json_object();
    for (size_t i = 0; i < N_FIELDS; i++) {
        const struct field *f = &param_fields[i];
        const char *base = (const char *)p + f->off;
        json_t *v = f->type == F_INT     ? json_integer(*(const int *)base)
                    : f->type == F_FLOAT ? json_float(*(const float *)base)
                                         : json_integer((json_int_t) * (const uint64_t *)base);
        json_object_set_new(o, f->name, v);
    }
    json_t *hid = json_array();
    for (int i = 0; i < p->n_hidden; i++) json_array_append_new(hid, json_integer(p->hidden[i]));
    json_object_set_new(o, "hidden", hid);
    return o;
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > SERVE_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-' || c == '.'))
            return false;
    }
    return true;
}

/* Fill *p from a create request; on error writes status/code/message. */
static int parse_create(const struct http_server *h, json_t *doc, char *name, struct tame_params *p,
                        char *msg, size_t msglen)
{
    if (!json_is_object(doc)) return snprintf(msg, msglen, "the body must be a JSON object"), -1;
    json_t *jn = json_object_get(doc, "name");
    if (!json_is_string(jn) || !valid_name(json_string_value(jn)))
        return snprintf(msg, msglen, "name: a string of 1-%d characters [A-Za-z0-9_.-]", SERVE_NAME_MAX), -1;
    snprintf(name, SERVE_NAME_MAX + 1, "%s", json_string_value(jn));
    json_t *ji = json_object_get(doc, "input_dim"), *jc = json_object_get(doc, "classes");
    if (!json_is_integer(ji) || !json_is_integer(jc))
        return snprintf(msg, msglen, "input_dim and classes: integers, both required"), -1;
    tame_params_default(p, (int)json_integer_value(ji), (int)json_integer_value(jc));
    const char *key;
    json_t *v;
    json_object_foreach(doc, key, v) {
        if (!strcmp(key, "name")) continue;
        if (!strcmp(key, "hidden")) {
            if (!json_is_array(v) || json_array_size(v) > (size_t)h->cfg.hidden_layers_max)
                return snprintf(msg, msglen, "hidden: an array of at most %d layer widths",
                                h->cfg.hidden_layers_max), -1;
            p->n_hidden = (int)json_array_size(v);
            for (int i = 0; i < p->n_hidden; i++) {
                json_t *w = json_array_get(v, (size_t)i);
                if (!json_is_integer(w) || json_integer_value(w) < 1 ||
                    json_integer_value(w) > h->cfg.hidden_max)
                    return snprintf(msg, msglen, "hidden[%d]: an integer in 1..%d (the configured limit)", i,
                                    h->cfg.hidden_max), -1;
                p->hidden[i] = (int)json_integer_value(w);
            }
            continue;
        }
        const struct field *f = NULL;
        for (size_t i = 0; i < N_FIELDS; i++)
            if (!strcmp(param_fields[i].name, key)) f = &param_fields[i];
        if (!f) return snprintf(msg, msglen, "unknown field '%s'", key), -1;
        char *base = (char *)p + f->off;
        if (f->type == F_FLOAT) {
            if (!json_is_number(v)) return snprintf(msg, msglen, "%s: a number", key), -1;
            *(float *)base = (float)json_number_value(v);
        } else {
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                (f->type == F_INT && json_integer_value(v) > 0x7fffffff))
                return snprintf(msg, msglen, "%s: a non-negative integer", key), -1;
            if (f->type == F_INT) *(int *)base = (int)json_integer_value(v);
            else *(uint64_t *)base = (uint64_t)json_integer_value(v);
        }
    }
    if (p->input_dim > h->cfg.input_dim_max)
        return snprintf(msg, msglen, "input_dim %d exceeds the configured limit %d", p->input_dim,
                        h->cfg.input_dim_max), -1;
    if (p->classes > h->cfg.classes_max)
        return snprintf(msg, msglen, "classes %d exceeds the configured limit %d", p->classes,
                        h->cfg.classes_max), -1;
    if (p->max_experts > h->cfg.experts_max)
        return snprintf(msg, msglen, "max_experts %d exceeds the configured limit %d", p->max_experts,
                        h->cfg.experts_max), -1;
    if (p->batch_size > h->cfg.batch_max)
        return snprintf(msg, msglen, "batch_size %d exceeds the configured limit %d", p->batch_size,
                        h->cfg.batch_max), -1;
    const char *field = NULL;
    if (tame_params_validate(p, &field) < 0) return snprintf(msg, msglen, "%s is out of range", field), -1;
    double need = tame_params_memory_bytes(p) + h->cfg.queue_samples * (sizeof(float) * (double)p->input_dim + sizeof(int));
    if (need > h->cfg.model_bytes_max)
        return snprintf(msg, msglen, "the model needs about %.0f MiB at max_experts %d, over the limit of %.0f MiB "
                        "(--model-mb-max)", need / 1048576, p->max_experts, h->cfg.model_bytes_max / 1048576), -1;
    return 0;
}

static json_t *model_json(struct serve_model *m)
{
    const struct tame_params *p = serve_model_params(m);
    struct serve_view *v = serve_view_get(m);
    struct serve_counters c;
    serve_counters(m, &c);
    json_t *experts = json_array();
    for (int k = 0; k < v->n_experts; k++) {
        const struct tame_expert_info *e = &v->experts[k];
        json_t *labels = json_array();
        for (int j = 0; j < p->classes; j++)
            if (e->labels[j]) json_array_append_new(labels, json_integer(j));
        json_array_append_new(experts,
                              json_pack("{s:i,s:I,s:o,s:I,s:o,s:o,s:o,s:o,s:b,s:i}", "id", e->id,
                                        "batches_trained", (json_int_t)e->batches_trained, "labels", labels,
                                        "nonzero_params", (json_int_t)e->nonzero_params, "loss",
                                        json_double(e->loss), "threshold", json_double(e->threshold), "s_all",
                                        json_double(e->s_all), "s_act", json_double(e->s_act), "pruned", e->pruned,
                                        "buffer_fill", e->buffer_fill));
    }
    json_t *o = json_pack(
        "{s:s,s:i,s:i,s:o,s:I,s:I,s:I,s:I,s:i,s:i,s:o,s:{s:i,s:I,s:b,s:i},s:I,s:I,s:I,s:I}", "name",
        serve_model_name(m), "input_dim", p->input_dim, "classes", p->classes, "params", params_json(p),
        "samples_acknowledged", (json_int_t)c.acknowledged, "samples_trained",
        (json_int_t)v->info.samples_trained, "samples_queued", (json_int_t)c.queued, "batches",
        (json_int_t)v->info.batches, "active_expert", v->info.active, "n_experts", v->n_experts, "experts",
        experts, "selector", "experts", v->info.selector_experts, "version",
        (json_int_t)v->info.selector_version, "due", v->info.selector_due, "buffer_fill",
        v->info.selector_fill, "nonfinite_batches", (json_int_t)v->info.nonfinite_batches,
        "nonfinite_updates", (json_int_t)v->info.nonfinite_updates, "predictions",
        (json_int_t)c.predictions, "events", (json_int_t)c.events);
    json_object_set_new(o, "samples_duplicate", json_integer((json_int_t)c.duplicates));
    json_object_set_new(o, "step_failures", json_integer((json_int_t)c.step_failures));
    json_object_set_new(json_object_get(o, "selector"), "pending", json_integer(c.selector_pending));
    json_object_set_new(o, "durability", json_pack("{s:I,s:I,s:b}", "checkpoint_position",
                                                   (json_int_t)c.checkpoint_pos, "checkpoints",
                                                   (json_int_t)c.checkpoints, "replaying", c.replaying));
    serve_view_put(v);
    return o;
}

/* ---- numeric arrays ---- */

/* "sample 12": what and index, the prefix of an error message naming an
 * item; made for every item before anything can fail, so without printf. */
static void item_name(char where[48], const char *what, size_t i)
{
    size_t k = strlen(what);
    memcpy(where, what, k);
    where[k++] = ' ';
    k += (size_t)tame_fmt_int(where + k, (long long)i);
    where[k] = 0;
}

/* x: an array of input_dim finite numbers within +-x_abs_max. */
static int read_vector(const struct http_server *h, const struct num_pool *pool, json_t *a, int dim,
                       float *out, const char *where, char *msg, size_t msglen)
{
    const double *v;
    size_t n;
    bool all_int;
    if (json_is_string(a) && numarray_lookup(pool, json_string_value(a), &v, &n, &all_int)) {
        if ((int)n != dim)
            return snprintf(msg, msglen, "%s: x has %zu values, the model's input_dim is %d", where, n, dim), -1;
        for (int j = 0; j < dim; j++) {
            if (!isfinite(v[j]) || fabs(v[j]) > h->cfg.x_abs_max)
                return snprintf(msg, msglen, "%s: x[%d] = %g is outside +-%g", where, j, v[j], h->cfg.x_abs_max), -1;
            out[j] = (float)v[j];
        }
        return 0;
    }
    if (!json_is_array(a)) return snprintf(msg, msglen, "%s: x must be an array of numbers", where), -1;
    if ((int)json_array_size(a) != dim)
        return snprintf(msg, msglen, "%s: x has %zu values, the model's input_dim is %d", where,
                        json_array_size(a), dim), -1;
    for (int j = 0; j < dim; j++) {
        json_t *e = json_array_get(a, (size_t)j);
        if (!json_is_number(e)) return snprintf(msg, msglen, "%s: x[%d] is not a number", where, j), -1;
        double d = json_number_value(e);
        if (!isfinite(d) || fabs(d) > h->cfg.x_abs_max)
            return snprintf(msg, msglen, "%s: x[%d] = %g is outside +-%g", where, j, d, h->cfg.x_abs_max), -1;
        out[j] = (float)d;
    }
    return 0;
}

/* Row form {"samples":[{"x":[...],"y":3}]} or column form {"x":[[...]],"y":[...]}. */
/* A sample id: a string of 1..SAMPLE_ID_MAX bytes, or null/absent for none. */
#define SAMPLE_ID_MAX 256

struct sample_ids {
    char *text;       /* all ids, back to back */
    const char **id;  /* [n], NULL for none */
    size_t *len;
};

static void sample_ids_free(struct sample_ids *ids)
{
    free(ids->text);
    free(ids->id);
    free(ids->len);
    memset(ids, 0, sizeof(*ids));
}

static int read_id(const struct num_pool *pool, json_t *v, const char *where, char *msg, size_t msglen)
{
    if (!v || json_is_null(v)) return 0;
    const double *nv;
    size_t nn;
    bool ni;
    /* a numeric array the fast path took out is not a string either */
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > SAMPLE_ID_MAX ||
        numarray_lookup(pool, json_string_value(v), &nv, &nn, &ni))
        return snprintf(msg, msglen, "%s: id must be a string of 1 to %d bytes", where, SAMPLE_ID_MAX), -1;
    return 1;
}

/* Copy the ids out of the document (which is freed before they are used). */
static int collect_ids(const struct num_pool *pool, json_t *rows, json_t *cid, size_t n, struct sample_ids *ids,
                       char *msg, size_t msglen)
{
    memset(ids, 0, sizeof(*ids));
    if (!rows && !cid) return 0;
    if (cid && (!json_is_array(cid) || json_array_size(cid) != n))
        return snprintf(msg, msglen, "id must be an array of %zu ids (or nulls), one per row of x", n), -1;
    size_t total = 0, any = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *v = rows ? json_object_get(json_array_get(rows, i), "id") : json_array_get(cid, i);
        char where[48];
        item_name(where, "sample", i);
        int k = read_id(pool, v, where, msg, msglen);
        if (k < 0) return -1;
        if (k) total += json_string_length(v), any++;
    }
    if (!any) return 0;
    ids->text = malloc(total ? total : 1);
    ids->id = calloc(n, sizeof(*ids->id));
    ids->len = calloc(n, sizeof(*ids->len));
    if (!ids->text || !ids->id || !ids->len) {
        sample_ids_free(ids);
        return snprintf(msg, msglen, "out of memory"), -2;
    }
    char *w = ids->text;
    for (size_t i = 0; i < n; i++) {
        json_t *v = rows ? json_object_get(json_array_get(rows, i), "id") : json_array_get(cid, i);
        if (!json_is_string(v)) continue;
        ids->id[i] = w;
        ids->len[i] = json_string_length(v);
        memcpy(w, json_string_value(v), ids->len[i]);
        w += ids->len[i];
    }
    return 0;
}

static int parse_samples(const struct http_server *h, const struct num_pool *pool, json_t *doc,
                         const struct tame_params *p, float **ret_x, int **ret_y, int *ret_n,
                         struct sample_ids *ids, char *msg, size_t msglen)
{
    memset(ids, 0, sizeof(*ids));
    if (!json_is_object(doc)) return snprintf(msg, msglen, "the body must be a JSON object"), -1;
    json_t *rows = json_object_get(doc, "samples"), *cx = json_object_get(doc, "x"), *cy = json_object_get(doc, "y");
    const double *ys = NULL;
    size_t ys_n = 0;
    const char *key;
    json_t *v;
    json_t *cid = json_object_get(doc, "id");
    json_object_foreach(doc, key, v) if (strcmp(key, "samples") && strcmp(key, "x") && strcmp(key, "y") &&
                                         strcmp(key, "id"))
        return snprintf(msg, msglen, "unknown field '%s'", key), -1;
    size_t n;
    if (rows) {
        if (cx || cy || cid) return snprintf(msg, msglen, "use either samples or x/y/id, not both"), -1;
        if (!json_is_array(rows)) return snprintf(msg, msglen, "samples must be an array"), -1;
        n = json_array_size(rows);
    } else {
        /* y may have become a pool array (numbers only). */
        bool y_int = true;
        if (json_is_string(cy) && numarray_lookup(pool, json_string_value(cy), &ys, &ys_n, &y_int)) {
            if (!y_int) return snprintf(msg, msglen, "y must hold integer labels"), -1;
        } else if (!json_is_array(cy)) {
            cy = NULL;
        } else {
            ys_n = json_array_size(cy);
        }
        if (!json_is_array(cx) || (!cy && !ys))
            return snprintf(msg, msglen, "expected {\"samples\": [...]} or {\"x\": [[...]], \"y\": [...]}"), -1;
        n = json_array_size(cx);
        if (ys_n != n) return snprintf(msg, msglen, "x has %zu rows but y has %zu labels", n, ys_n), -1;
    }
    if (n == 0) return snprintf(msg, msglen, "no samples"), -1;
    float *x = malloc(n * (size_t)p->input_dim * sizeof(float));
    int *y = malloc(n * sizeof(int));
    if (!x || !y) {
        free(x);
        free(y);
        return snprintf(msg, msglen, "out of memory"), -2;
    }
    for (size_t i = 0; i < n; i++) {
        char where[48];
        item_name(where, "sample", i);
        json_t *xi, *yi;
        if (rows) {
            json_t *s = json_array_get(rows, i);
            if (!json_is_object(s)) {
                snprintf(msg, msglen, "%s: must be an object with x and y", where);
                goto bad;
            }
            json_object_foreach(s, key, v) if (strcmp(key, "x") && strcmp(key, "y") && strcmp(key, "id")) {
                snprintf(msg, msglen, "%s: unknown field '%s'", where, key);
                goto bad;
            }
            xi = json_object_get(s, "x");
            yi = json_object_get(s, "y");
        } else {
            xi = json_array_get(cx, i);
            yi = ys ? NULL : json_array_get(cy, i);
        }
        if (read_vector(h, pool, xi, p->input_dim, x + i * (size_t)p->input_dim, where, msg, msglen) < 0)
            goto bad;
        if (ys) {
            if (!(ys[i] >= 0 && ys[i] < p->classes)) {
                snprintf(msg, msglen, "%s: y must be an integer label in 0..%d", where, p->classes - 1);
                goto bad;
            }
            y[i] = (int)ys[i];
            continue;
        }
        if (!json_is_integer(yi) || json_integer_value(yi) < 0 || json_integer_value(yi) >= p->classes) {
            snprintf(msg, msglen, "%s: y must be an integer label in 0..%d", where, p->classes - 1);
            goto bad;
        }
        y[i] = (int)json_integer_value(yi);
    }
    int irc = collect_ids(pool, rows, cid, n, ids, msg, msglen);
    if (irc < 0) {
        free(x);
        free(y);
        return irc;
    }
    *ret_x = x;
    *ret_y = y;
    *ret_n = (int)n;
    return 0;
bad:
    free(x);
    free(y);
    return -1;
}

/* ---- handlers ---- */

static bool is_json(struct http_req *c)
{
    const char *t = c->content_type;
    return t && !strncasecmp(t, "application/json", 16) && (t[16] == 0 || t[16] == ';' || t[16] == ' ');
}

/* The second part of a body split for extraction on two threads. */
struct half {
    char *body;
    size_t len;
    struct num_pool pool;
    int rc;
};

static void extract_half(void *arg)
{
    struct half *hf = arg;
    num_pool_init(&hf->pool);
    hf->rc = numarray_extract_tail(hf->body, &hf->len, &hf->pool);
}

/* Bodies from this size on are parsed in two parts when a lane thread is
 * free to take one (a 128 x 784 samples body is 0.5-1 MB). */
#define SPLIT_MIN_BYTES (256 * 1024)

static int extract_numbers(struct http_server *h, struct http_req *c, char *body, size_t *len,
                           struct num_pool *pool)
{
    size_t cut = c->lane && *len >= SPLIT_MIN_BYTES ? numarray_cut(body, *len) : 0;
    if (!cut) return numarray_extract(body, len, pool);
    struct half hf = {.body = body + cut, .len = *len - cut};
    struct lane_task t;
    bool forked = lane_fork(c->lane, &t, extract_half, &hf);
    size_t len1 = cut;
    int rc = numarray_extract(body, &len1, pool); /* reads nothing at or past cut */
    if (forked) lane_join(&t);
    else extract_half(&hf);
    pthread_mutex_lock(&h->metrics_mu);
    h->bodies_split[forked]++;
    pthread_mutex_unlock(&h->metrics_mu);
    struct num_pool *second = rc < 0 || hf.rc < 0 ? NULL : malloc(sizeof(*second));
    if (!second) {
        num_pool_done(&hf.pool);
        return -1;
    }
    *second = hf.pool;
    numarray_join(body, len, len1, cut, hf.len, pool, second);
    return 0;
}

/* jansson's error on a rewritten body counts lines and columns of the
 * rewritten text; the client needs them in the body it sent.  Parsed again
 * laid out as sent (rare: malformed bodies only), the error is the one
 * jansson gives for the body as sent. */
static void error_as_sent(const char *body, size_t len, const struct num_pool *pool, json_error_t *err)
{
    bool any = false;
    for (const struct num_pool *p = pool; p && !any; p = p->next) any = p->n_arr > 0;
    size_t n;
    char *text = any ? numarray_layout(body, len, pool, &n) : NULL;
    if (!text) return; /* nothing was rewritten, or out of memory: the error as it is */
    json_error_t again;
    json_t *doc = json_loadb(text, n, JSON_REJECT_DUPLICATES, &again);
    if (!doc) *err = again;
    json_decref(doc);
    free(text);
}

static json_t *parse_body_json(struct http_server *h, struct http_req *c, char *body, size_t len,
                               struct num_pool *pool,
                               int *ret)
{
    if (!is_json(c)) {
        *ret = http_send_error(c, 415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json");
        return NULL;
    }
    if (len == 0) {
        *ret = http_send_error(c, 400, "INVALID", "empty body");
        return NULL;
    }
    if (pool && extract_numbers(h, c, body, &len, pool) < 0) {
        *ret = http_send_error(c, 503, "NOMEM", "out of memory");
        return NULL;
    }
    json_error_t err;
    json_t *doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
    if (!doc) {
        if (pool) error_as_sent(body, len, pool, &err);
        *ret = http_send_error(c, 400, "MALFORMED_JSON", "line %d column %d: %s", err.line, err.column, err.text);
    }
    return doc;
}

/* Parse a JSON body; with a pool (initialised here, and released here on
 * failure), numeric arrays go to it first. */
static json_t *parse_body(struct http_server *h, struct http_req *c, char *body, size_t len,
                          struct num_pool *pool, int *ret)
{
    if (pool) num_pool_init(pool);
    json_t *doc = parse_body_json(h, c, body, len, pool, ret);
    if (!doc && pool) num_pool_done(pool);
    return doc;
}

static int send_model_error(struct http_req *c, int rc, const char *name)
{
    if (rc == TAME_E_NOTFOUND) return http_send_error(c, 404, "NOT_FOUND", "no model named '%s'", name);
    return http_send_error(c, tame_err_http_status(rc), tame_err_name(rc), "%s", tame_strerror(rc));
}

/* Errors of anything that writes the log: nothing was acknowledged. */
static int send_append_error(struct http_req *c, struct serve_model *m, int rc)
{
    if (rc == TAME_E_BUSY)
        return http_send_error_ex(c, 429, "BUSY", "1", NULL, "the queue of model '%s' is full; retry later",
                                  serve_model_name(m));
    if (rc == TAME_E_UNAVAIL) {
        struct serve_counters cn;
        serve_counters(m, &cn);
        if (cn.replaying)
            return http_send_error_ex(c, 503, "REPLAYING", "1", NULL,
                                      "model '%s' is replaying its log after a restart; retry shortly",
                                      serve_model_name(m));
        return http_send_error_ex(c, 503, "UNAVAILABLE", "5", NULL,
                                  "the database is not writable (disk full, read-only or failing); "
                                  "nothing was acknowledged");
    }
    return send_model_error(c, rc, serve_model_name(m));
}

static int handle_create(struct http_server *h, struct http_req *c, char *body, size_t len)
{
    int ret;
    json_t *doc = parse_body(h, c, body, len, NULL, &ret);
    if (!doc) return ret;
    char name[SERVE_NAME_MAX + 1], msg[256];
    struct tame_params p;
    int prc = parse_create(h, doc, name, &p, msg, sizeof(msg));
    json_decref(doc);
    if (prc < 0) return http_send_error(c, 400, "INVALID", "%s", msg);
    int rc = serve_create(h->serve, name, &p);
    if (rc == TAME_E_EXIST) return http_send_error(c, 409, "EXISTS", "a model named '%s' exists", name);
    if (rc == TAME_E_LIMIT) return http_send_error(c, 409, "LIMIT", "the daemon already serves its maximum of models");
    if (rc == TAME_E_UNAVAIL)
        return http_send_error_ex(c, 503, "UNAVAILABLE", "5", NULL, "the database is not writable; the model was not created");
    if (rc < 0) return send_model_error(c, rc, name);
    TAME_LOG(TAME_LOG_INFO, "model created", "model=%s input_dim=%d classes=%d", name, p.input_dim, p.classes);
    struct serve_model *m = serve_get(h->serve, name);
    if (!m) return http_send_error(c, 404, "NOT_FOUND", "model '%s' was deleted", name);
    json_t *o = model_json(m);
    serve_put(m);
    return http_send_json(c, 201, o);
}

static int handle_list(struct http_server *h, struct http_req *c)
{
    char **names;
    int n;
    if (serve_names(h->serve, &names, &n) < 0) return http_send_error(c, 503, "NOMEM", "out of memory");
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        struct serve_model *m = serve_get(h->serve, names[i]);
        if (m) json_array_append_new(arr, model_json(m));
        serve_put(m);
        free(names[i]);
    }
    free(names);
    return http_send_json(c, 200, json_pack("{s:o}", "models", arr));
}

static int handle_samples(struct http_server *h, struct http_req *c, struct serve_model *m, char *body,
                          size_t len)
{
    int ret;
    struct num_pool pool;
    json_t *doc = parse_body(h, c, body, len, &pool, &ret);
    if (!doc) return ret;
    float *x;
    int *y, n;
    char msg[256];
    struct sample_ids ids;
    int prc = parse_samples(h, &pool, doc, serve_model_params(m), &x, &y, &n, &ids, msg, sizeof(msg));
    json_decref(doc);
    num_pool_done(&pool);
    if (prc == -2) return http_send_error(c, 503, "NOMEM", "%s", msg);
    if (prc < 0) return http_send_error(c, 400, "INVALID", "%s", msg);
    uint64_t acked = 0;
    int dups = 0;
    int rc = serve_append(m, x, y, ids.id, ids.len, n, &dups, &acked);
    free(x);
    free(y);
    sample_ids_free(&ids);
    if (rc < 0) return send_append_error(c, m, rc);
    return http_send_json(c, 200, json_pack("{s:i,s:i,s:I}", "accepted", n - dups, "duplicates", dups,
                                            "samples_acknowledged", (json_int_t)acked));
}

/* Each HTTP thread keeps one prediction workspace across requests (freed
 * when the thread ends); a request for another shape replaces it. */
static pthread_key_t work_key;
static pthread_once_t work_once = PTHREAD_ONCE_INIT;

static void work_key_free(void *w) { tame_predict_work_free(w); }
static void work_key_make(void) { pthread_key_create(&work_key, work_key_free); }

static struct tame_predict_work *thread_work(const struct tame_snapshot *snap, int rows)
{
    pthread_once(&work_once, work_key_make);
    struct tame_predict_work *w = pthread_getspecific(work_key);
    if (tame_predict_work_fits(w, snap, rows)) return w;
    tame_predict_work_free(w);
    pthread_setspecific(work_key, NULL);
    if (tame_predict_work_new(snap, rows > 64 ? rows : 64, &w) < 0) return NULL;
    pthread_setspecific(work_key, w);
    return w;
}

static int handle_predict(struct http_server *h, struct http_req *c, struct serve_model *m, char *body,
                          size_t len)
{
    int ret;
    struct num_pool pool;
    json_t *doc = parse_body(h, c, body, len, &pool, &ret);
    if (!doc) return ret;
    const struct tame_params *p = serve_model_params(m);
    json_t *jx = json_is_object(doc) ? json_object_get(doc, "x") : NULL;
    const char *key;
    json_t *v;
    if (json_is_object(doc))
        json_object_foreach(doc, key, v) if (strcmp(key, "x")) {
            ret = http_send_error(c, 400, "INVALID", "unknown field '%s'", key); /* key lives in doc */
            json_decref(doc);
            num_pool_done(&pool);
            return ret;
        }
    if (!json_is_array(jx) || json_array_size(jx) == 0) {
        json_decref(doc);
        num_pool_done(&pool);
        return http_send_error(c, 400, "INVALID", "expected {\"x\": [[...], ...]} with at least one input");
    }
    size_t n = json_array_size(jx);
    float *x = malloc(n * (size_t)p->input_dim * sizeof(float));
    struct tame_prediction *out = malloc(n * sizeof(*out));
    float *probs = malloc(n * (size_t)p->classes * sizeof(float));
    char msg[256];
    if (!x || !out || !probs) {
        ret = http_send_error(c, 503, "NOMEM", "out of memory");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        char where[48];
        item_name(where, "input", i);
        if (read_vector(h, &pool, json_array_get(jx, i), p->input_dim, x + i * (size_t)p->input_dim, where,
                        msg, sizeof(msg)) < 0) {
            ret = http_send_error(c, 400, "INVALID", "%s", msg);
            goto done;
        }
    }
    struct serve_view *view = serve_view_get(m);
    if (!view->snap) {
        serve_view_put(view);
        ret = http_send_error(c, 409, "NOT_TRAINED", "model '%s' has not trained a batch yet", serve_model_name(m));
        goto done;
    }
    struct tame_predict_work *w = thread_work(view->snap, n < 256 ? (int)n : 256);
    int rc = w ? tame_snapshot_predict(view->snap, w, x, (int)n, -1, out, probs) : TAME_E_NOMEM;
    serve_view_put(view);
    if (rc < 0) {
        ret = send_model_error(c, rc, serve_model_name(m));
        goto done;
    }
    /* Written directly rather than through jansson: a single-sample
     * prediction is small, and building and dumping a json_t tree per
     * request was a fifth of its time. */
    struct tame_wbuf t;
    tame_wbuf_init(&t);
    static const char open[] = "{\"predictions\":[", label[] = "{\"label\":", probs_key[] = ",\"probabilities\":[",
                      expert[] = "],\"expert\":", confidence[] = ",\"confidence\":";
    tame_wbuf_bytes(&t, open, sizeof(open) - 1);
    for (size_t i = 0; i < n; i++) {
        const float *pr = probs + i * (size_t)p->classes;
        bool finite = isfinite(out[i].confidence);
        for (int j = 0; j < p->classes; j++) finite &= isfinite(pr[j]) != 0;
        if (!finite) {
            tame_wbuf_done(&t);
            ret = http_send_error(c, 500, "NONFINITE", "prediction %zu is not finite", i);
            goto done;
        }
        /* Room for the row at its longest: keys, two ints, classes + 1 floats. */
        char *q = (char *)tame_wbuf_room(&t, 128 + (size_t)(p->classes + 1) * (TAME_FLOAT_TEXT_MAX + 1));
        if (!q) break; /* t.err says so below */
        if (i) *q++ = ',';
        memcpy(q, label, sizeof(label) - 1), q += sizeof(label) - 1;
        q += tame_fmt_int(q, out[i].label);
        memcpy(q, probs_key, sizeof(probs_key) - 1), q += sizeof(probs_key) - 1;
        for (int j = 0; j < p->classes; j++) {
            if (j) *q++ = ',';
            q += tame_fmt_float(q, pr[j]);
        }
        memcpy(q, expert, sizeof(expert) - 1), q += sizeof(expert) - 1;
        q += tame_fmt_int(q, out[i].expert);
        memcpy(q, confidence, sizeof(confidence) - 1), q += sizeof(confidence) - 1;
        q += tame_fmt_float(q, out[i].confidence);
        *q++ = '}';
        t.len = (size_t)(q - (char *)t.data);
    }
    tame_wbuf_bytes(&t, "]}", 2);
    if (t.err) {
        tame_wbuf_done(&t);
        ret = http_send_error(c, 503, "NOMEM", "out of memory");
        goto done;
    }
    serve_count_predictions(m, n);
    ret = http_send(c, 200, "application/json", (char *)t.data, t.len, NULL, NULL); /* takes t.data */
done:
    json_decref(doc);
    num_pool_done(&pool);
    free(x);
    free(out);
    free(probs);
    return ret;
}

static bool parse_u64(const char *s, uint64_t *v)
{
    if (!s || !*s) return false;
    char *end;
    unsigned long long x = strtoull(s, &end, 10);
    if (*end || s[0] == '-') return false;
    *v = x;
    return true;
}

static int handle_events(struct http_req *c, struct serve_model *m)
{
    uint64_t from = 0, limit = 100;
    const char *sf = MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "from");
    const char *sl = MHD_lookup_connection_value(c->conn, MHD_GET_ARGUMENT_KIND, "limit");
    if (sf && !parse_u64(sf, &from)) return http_send_error(c, 400, "INVALID", "from: a non-negative integer");
    if (sl && (!parse_u64(sl, &limit) || limit < 1 || limit > 1000))
        return http_send_error(c, 400, "INVALID", "limit: an integer in 1..1000");
    struct tame_event *ev;
    size_t n;
    uint64_t next;
    if (serve_events(m, from, (int)limit, &ev, &n, &next) < 0) return http_send_error(c, 503, "NOMEM", "out of memory");
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *losses = json_array();
        for (int k = 0; k < ev[i].n_losses; k++) json_array_append_new(losses, json_float(ev[i].losses[k]));
        json_array_append_new(arr, json_pack("{s:I,s:I,s:s,s:i,s:i,s:o,s:o,s:o,s:o,s:o,s:i}", "seq",
                                             (json_int_t)ev[i].seq, "batch", (json_int_t)ev[i].batch, "kind",
                                             tame_event_kind_name(ev[i].kind), "from", ev[i].from, "to", ev[i].to,
                                             "stat", json_double(ev[i].stat), "threshold",
                                             json_double(ev[i].threshold), "losses", losses, "k_sigma",
                                             json_float(ev[i].k_sigma), "k_warn", json_float(ev[i].k_warn),
                                             "min_batches", ev[i].min_batches));
    }
    free(ev);
    json_t *jnext = next == UINT64_MAX ? json_null() : json_integer((json_int_t)next);
    return http_send_json(c, 200, json_pack("{s:o,s:o}", "events", arr, "next", jnext));
}

/* ---- routing ---- */

static int dispatch(struct http_server *h, struct http_req *c, const char *url, const char *method,
                    char *body, size_t len, enum http_endpoint *ep)
{
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST"), del = !strcmp(method, "DELETE");
    if (!strcmp(url, "/livez")) {
        *ep = HTTP_EP_LIVEZ;
        if (!get) return http_send_error(c, 405, "METHOD_NOT_ALLOWED", "use GET");
        return http_send_json(c, 200, json_pack("{s:s}", "status", "ok"));
    }
    if (!strcmp(url, "/readyz")) {
        *ep = HTTP_EP_READYZ;
        if (!get) return http_send_error(c, 405, "METHOD_NOT_ALLOWED", "use GET");
        const char *why = "shutting down";
        if (!atomic_load(&h->ready) || !serve_ready(h->serve, &why))
            return http_send_error_ex(c, 503, "NOT_READY", "1", NULL, "%s", why);
        return http_send_json(c, 200, json_pack("{s:s}", "status", "ready"));
    }
    if (!strcmp(url, "/metrics")) {
        *ep = HTTP_EP_METRICS;
        if (!get) return http_send_error(c, 405, "METHOD_NOT_ALLOWED", "use GET");
        return http_handle_metrics(h, c);
    }
    if (!strcmp(url, "/v1/models") || !strcmp(url, "/v1/models/")) {
        *ep = HTTP_EP_MODELS;
        if (get) return handle_list(h, c);
        if (post) return handle_create(h, c, body, len);
        return http_send_error(c, 405, "METHOD_NOT_ALLOWED", "use GET or POST");
    }
    if (strncmp(url, "/v1/models/", 11) != 0) return http_send_error(c, 404, "NOT_FOUND", "no route %s", url);
    char name[SERVE_NAME_MAX + 2];
    const char *rest = url + 11, *slash = strchr(rest, '/');
    size_t nl = slash ? (size_t)(slash - rest) : strlen(rest);
    if (nl == 0 || nl > SERVE_NAME_MAX) return http_send_error(c, 404, "NOT_FOUND", "no route %s", url);
    memcpy(name, rest, nl);
    name[nl] = 0;
    const char *action = slash ? slash + 1 : "";
    *ep = !*action                       ? HTTP_EP_MODEL
          : !strcmp(action, "samples")   ? HTTP_EP_SAMPLES
          : !strcmp(action, "predict")   ? HTTP_EP_PREDICT
          : !strcmp(action, "events")    ? HTTP_EP_EVENTS
          : !strcmp(action, "flush")     ? HTTP_EP_FLUSH
          : !strcmp(action, "selector")  ? HTTP_EP_SELECTOR
                                         : HTTP_EP_OTHER;
    if (*ep == HTTP_EP_OTHER) return http_send_error(c, 404, "NOT_FOUND", "no route %s", url);
    if (*ep == HTTP_EP_MODEL && del) {
        int rc = serve_delete(h->serve, name);
        if (rc < 0) return send_model_error(c, rc, name);
        TAME_LOG(TAME_LOG_INFO, "model deleted", "model=%s", name);
        return http_send_json(c, 200, json_pack("{s:s}", "deleted", name));
    }
    struct serve_model *m = serve_get(h->serve, name);
    if (!m) return http_send_error(c, 404, "NOT_FOUND", "no model named '%s'", name);
    int ret;
    switch (*ep) {
    case HTTP_EP_MODEL:
        ret = get ? http_send_json(c, 200, model_json(m)) : http_send_error(c, 405, "METHOD_NOT_ALLOWED", "use GET or DELETE");
        break;
    case HTTP_EP_SAMPLES:
        ret = post ? handle_samples(h, c, m, body, len) : http_send_error(c, 405, "METHOD_NOT_ALLOWED", "use POST");
        break;
    case HTTP_EP_PREDICT:
        ret = post ? handle_predict(h, c, m, body, len) : http_send_error(c, 405, "METHOD_NOT_ALLOWED", "use POST");
        break;
    case HTTP_EP_EVENTS:
        ret = get ? handle_events(c, m) : http_send_error(c, 405, "METHOD_NOT_ALLOWED", "use GET");
        break;
    case HTTP_EP_SELECTOR:
    case HTTP_EP_FLUSH: {
        if (!post) {
            ret = http_send_error(c, 405, "METHOD_NOT_ALLOWED", "use POST");
            break;
        }
        int rc = *ep == HTTP_EP_SELECTOR ? serve_retrain_selector(m) : serve_flush(m);
        ret = rc < 0                     ? send_append_error(c, m, rc)
              : *ep == HTTP_EP_SELECTOR ? http_send_json(c, 202, json_pack("{s:b}", "requested", 1))
                                        : http_send_json(c, 200, json_pack("{s:b}", "flushed", 1));
        break;
    }
    default:
        ret = http_send_error(c, 404, "NOT_FOUND", "no route %s", url);
        break;
    }
    serve_put(m);
    return ret;
}

void http_route(struct http_server *h, struct http_req *c, const char *url, const char *method,
                char *body, size_t len, double t0)
{
    enum http_endpoint ep = HTTP_EP_OTHER;
    /* dispatch leaves the reply in c (none if even that failed: server.c
     * then closes the connection); the time is measured around it. */
    dispatch(h, c, url, method, body, len, &ep);
    http_metrics_request(h, ep, c->reply.status, tame_now_s() - t0);
}
