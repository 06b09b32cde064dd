/* tame-eval: streams a continual-learning benchmark (DESIGN 6) through the
 * TAME engine in-process and reports what it learned: experts against true
 * tasks, detection delays, false detections, accuracies with task-local and
 * global labels, routing accuracy, the accuracy matrix, model size, speed
 * and memory.  --baseline finetune/oracle give the lower and upper bounds on
 * the same stream.  It links the engine; it knows nothing of the daemon. */
#include "dataset.h"
#include "remote.h"
#include "tame/nn.h"
#include "tame/tame.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define DEFAULT_DATA "/usr/share/datasets/fashion-mnist"
#define MAX_TASKS 64

enum baseline { BASE_NONE, BASE_FINETUNE, BASE_ORACLE };

struct options {
    const char *data;
    struct stream_spec spec;
    enum baseline baseline;
    const char *json;
    bool matrix;
    bool bench;
    bool quiet;
    int test_limit;
    int threads;
    const char *url;        /* stream to a running tamed instead of in-process */
    const char *token_file;
    int request_size;       /* samples per HTTP request */
    double rate;            /* --url: samples per second at most (0: as fast as the daemon takes them) */
    struct tame_params p; /* overrides on top of the defaults */
};

/* ---------------------------------------------------------------- systems */

/* What is being evaluated: TAME itself, or a baseline built from the same
 * engine (finetune: one learner that never tests for shifts; oracle: one
 * such learner per true task, fed and asked by the true task). */
struct system {
    enum baseline kind;
    struct remote *remote;                 /* --url: the daemon holds the learner */
    char model[64];
    float *rx;                             /* --url: samples waiting to be sent */
    int *ry, r_fill;
    double rate, rate_t0;                  /* --rate, and when the first request went out */
    uint64_t r_sent;                       /* samples handed to the daemon */
    int n;                                 /* learners */
    struct tame_learner *l[MAX_TASKS];
    uint64_t trained[TAME_MAX_EXPERTS][MAX_TASKS]; /* samples per (expert, true task) */
};

static int system_init(struct system *sys, enum baseline kind, const struct tame_params *p, int tasks,
                       int threads)
{
    memset(sys, 0, sizeof(*sys));
    sys->kind = kind;
    struct tame_params q = *p;
    if (kind != BASE_NONE) {
        q.min_batches = 1000000; /* never test for a shift: one network */
        q.expert_sparsity = 0;
    }
    sys->n = kind == BASE_ORACLE ? tasks : 1;
    for (int i = 0; i < sys->n; i++) {
        int rc = tame_learner_new(&q, &sys->l[i]);
        if (rc < 0) return rc;
        rc = tame_learner_set_threads(sys->l[i], threads);
        if (rc < 0) return rc;
    }
    return 0;
}

static void system_done(struct system *sys)
{
    remote_close(sys->remote);
    free(sys->rx);
    free(sys->ry);
    for (int i = 0; i < sys->n; i++) tame_learner_free(sys->l[i]);
}

/* ---------------------------------------------------------------- reports */

struct event_rec {
    uint64_t batch;
    enum tame_event_kind kind;
    int from, to;
    double stat, threshold;
    int n_losses;
    float losses[TAME_MAX_EXPERTS];
};

struct report {
    int visits, distinct_tasks;
    uint64_t visit_start[MAX_TASKS];       /* sample index where each visit starts */
    int task_of_visit[MAX_TASKS];
    uint64_t boundary[MAX_TASKS];          /* batch index where each visit starts */
    uint64_t batches, samples;
    struct event_rec *ev;
    size_t n_ev, cap_ev;
    long delay[MAX_TASKS];                 /* -1 = missed / not a boundary */
    bool is_boundary[MAX_TASKS];
    int false_detections;
    int experts;
    double acc_local, acc_global, acc_routing;
    double task_local[MAX_TASKS], task_global[MAX_TASKS], task_routing[MAX_TASKS];
    bool task_seen[MAX_TASKS];
    double matrix[MAX_TASKS][MAX_TASKS];   /* [after visit][task] local accuracy */
    int matrix_rows;
    double average_accuracy, forgetting;
    size_t nonzero_experts, nonzero_selector;
    double train_seconds, flops;
    double remote_t0;
    uint64_t nonfinite;
    double gemm_gflops;
    long peak_rss;
};

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("tame-eval: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

static void check(int rc, const char *what)
{
    if (rc < 0) die("%s: %s", what, tame_strerror(rc));
}

static void append_event(struct report *rep, const struct tame_event *ev)
{
    if (rep->n_ev == rep->cap_ev) {
        rep->cap_ev = rep->cap_ev ? 2 * rep->cap_ev : 64;
        rep->ev = realloc(rep->ev, rep->cap_ev * sizeof(*rep->ev));
        if (!rep->ev) die("out of memory");
    }
    struct event_rec *e = &rep->ev[rep->n_ev++];
    *e = (struct event_rec){ev->batch, ev->kind, ev->from, ev->to, ev->stat, ev->threshold, ev->n_losses, {0}};
    memcpy(e->losses, ev->losses, sizeof(float) * (size_t)ev->n_losses);
}

static void collect_events(struct system *sys, struct report *rep)
{
    for (int i = 0; i < sys->n; i++) {
        struct tame_event *ev;
        size_t n;
        tame_learner_take_events(sys->l[i], &ev, &n);
        for (size_t k = 0; k < n; k++) append_event(rep, &ev[k]);
        tame_free(ev);
    }
}

/* -------------------------------------------------------------- test sets */

struct test_set {
    int n;
    float *x;  /* [n x dim], transformed for the task */
    int *cls;  /* global class */
};

static void build_tests(const struct stream *s, const struct idx_set *test, int limit, struct test_set *ts)
{
    for (int t = 0; t < s->spec.tasks; t++) {
        int n;
        int *idx = task_indices(s, t, test, limit, &n);
        if (!idx) die("out of memory");
        ts[t].n = n;
        ts[t].x = malloc((size_t)n * test->dim * sizeof(float));
        ts[t].cls = malloc((size_t)n * sizeof(int));
        if (!ts[t].x || !ts[t].cls) die("out of memory");
        for (int i = 0; i < n; i++) {
            task_transform(s, t, test, idx[i], ts[t].x + (size_t)i * test->dim);
            ts[t].cls[i] = test->y[idx[i]];
        }
        free(idx);
    }
}

/* Expert -> true task by majority vote over the samples it trained on. */
static int expert_task(const struct system *sys, int e, int tasks)
{
    int best = -1;
    uint64_t most = 0;
    for (int t = 0; t < tasks; t++)
        if (sys->trained[e][t] > most) most = sys->trained[e][t], best = t;
    return best;
}

/* Accuracy on every visited task's test set.  For TAME the snapshot must
 * carry a trained selector (see with_selector). */
static void evaluate(struct system *sys, struct tame_snapshot **snap, const struct stream *s,
                     const struct test_set *ts, int ts_dim, const bool *visited, double *local,
                     double *global, double *routing)
{
    int classes = s->model_classes;
    for (int t = 0; t < s->spec.tasks; t++) {
        if (!visited[t]) continue;
        const struct tame_snapshot *sn = sys->kind == BASE_ORACLE ? snap[t] : snap[0];
        struct tame_predict_work *w = NULL;
        if (!sys->remote) check(tame_predict_work_new(sn, 256, &w), "predict workspace");
        struct tame_prediction *out = malloc((size_t)ts[t].n * sizeof(*out));
        float *probs = malloc((size_t)ts[t].n * classes * sizeof(float));
        if (!out || !probs) die("out of memory");
        int force = sys->kind == BASE_NONE ? -1 : 0;
        if (sys->remote) {
            if (remote_predict(sys->remote, sys->model, ts[t].x, ts[t].n, ts_dim,
                               classes, out, probs) < 0)
                die("%s", remote_error(sys->remote));
        } else {
            check(tame_snapshot_predict(sn, w, ts[t].x, ts[t].n, force, out, probs), "predict");
        }
        long ok_local = 0, ok_global = 0, ok_route = 0;
        const struct task *task = &s->task[t];
        for (int i = 0; i < ts[t].n; i++) {
            int truth = ts[t].cls[i];
            /* local: the routed expert's choice among the true task's labels */
            const float *p = probs + (size_t)i * classes;
            int best = -1;
            for (int c = 0; c < task->n_classes; c++) {
                int lab = stream_label(s, t, task->classes[c]);
                if (best < 0 || p[lab] > p[best]) best = lab;
            }
            ok_local += stream_class(s, t, best) == truth;
            /* global: the class the prediction means, through the routed
             * expert's task when labels are task-local */
            int route_task = sys->kind == BASE_ORACLE ? t
                             : sys->kind == BASE_FINETUNE ? -1
                                                          : expert_task(sys, out[i].expert, s->spec.tasks);
            int meant = s->spec.local_labels
                            ? (route_task >= 0 ? stream_class(s, route_task, out[i].label) : -1)
                            : out[i].label;
            if (sys->kind == BASE_FINETUNE && s->spec.local_labels) meant = -1;
            ok_global += meant == truth;
            ok_route += route_task == t;
        }
        local[t] = (double)ok_local / ts[t].n;
        global[t] = (double)ok_global / ts[t].n;
        routing[t] = sys->kind == BASE_FINETUNE ? NAN : (double)ok_route / ts[t].n;
        free(out);
        free(probs);
        tame_predict_work_free(w);
    }
}

/* Snapshots to evaluate now.  TAME's needs a selector: train one on a copy
 * of the learner so that evaluating mid-stream changes nothing. */
static void take_snapshots(struct system *sys, struct tame_snapshot **snap)
{
    for (int i = 0; i < sys->n && !sys->remote; i++) {
        struct tame_info info;
        tame_learner_info(sys->l[i], &info);
        if (sys->kind == BASE_NONE && info.n_experts >= 2 && info.selector_due) {
            struct tame_wbuf w;
            tame_wbuf_init(&w);
            tame_learner_save(sys->l[i], &w);
            check(w.err, "save");
            struct tame_rbuf r;
            tame_rbuf_init(&r, w.data, w.len);
            struct tame_learner *copy;
            check(tame_learner_load(&r, &copy), "load");
            check(tame_learner_train_selector(copy), "selector");
            check(tame_learner_snapshot(copy, &snap[i]), "snapshot");
            tame_learner_free(copy);
            tame_wbuf_done(&w);
        } else {
            check(tame_learner_snapshot(sys->l[i], &snap[i]), "snapshot");
        }
    }
}

static void free_snapshots(struct system *sys, struct tame_snapshot **snap)
{
    if (sys->remote) return;
    for (int i = 0; i < sys->n; i++) tame_snapshot_free(snap[i]), snap[i] = NULL;
}

/* ------------------------------------------------------------------ flops */

/* FLOPs of one step: every expert scores (forward), the active one trains
 * (dW for every layer, dX for all but the first). */
static double step_flops(const struct tame_params *p, int experts, int n)
{
    int dims[TAME_MAX_HIDDEN + 2];
    dims[0] = p->input_dim;
    for (int i = 0; i < p->n_hidden; i++) dims[i + 1] = p->hidden[i];
    dims[p->n_hidden + 1] = p->classes;
    double fwd = 0, bwd = 0;
    for (int l = 0; l <= p->n_hidden; l++) {
        double mn = (double)dims[l] * dims[l + 1];
        fwd += 2.0 * n * mn;
        bwd += 2.0 * n * mn * (l > 0 ? 2 : 1);
    }
    return experts * fwd + bwd;
}

/* The sgemm rate OpenBLAS reaches on the step's own shapes: one forward and
 * one backward of one network at batch n, repeated for ~1 s. */
static double measure_sgemm(const struct tame_params *p, int n)
{
    int dims[TAME_MAX_HIDDEN + 2];
    dims[0] = p->input_dim;
    for (int i = 0; i < p->n_hidden; i++) dims[i + 1] = p->hidden[i];
    dims[p->n_hidden + 1] = p->classes;
    int widest = 0;
    for (int l = 0; l <= p->n_hidden + 1; l++) widest = dims[l] > widest ? dims[l] : widest;
    size_t big = (size_t)widest * widest > (size_t)n * widest ? (size_t)widest * widest : (size_t)n * widest;
    float *a = calloc(big, sizeof(float)), *b = calloc(big, sizeof(float)), *c = calloc(big, sizeof(float));
    if (!a || !b || !c) die("out of memory");
    for (size_t i = 0; i < big; i++) a[i] = b[i] = (float)(i % 7) * 0.1f;
    double flops = 0, t0 = tame_now_s(), t;
    do {
        for (int l = 0; l <= p->n_hidden; l++) {
            int in = dims[l], out = dims[l + 1];
            nn_gemm(false, true, n, out, in, 1, a, in, b, in, 1, c, out);
            nn_gemm(true, false, out, in, n, 1, a, out, b, in, 0, c, in);
            flops += 4.0 * n * in * out;
            if (l > 0) {
                nn_gemm(false, false, n, in, out, 1, a, out, b, in, 0, c, in);
                flops += 2.0 * n * in * out;
            }
        }
        t = tame_now_s() - t0;
    } while (t < 1.0);
    free(a);
    free(b);
    free(c);
    return flops / t / 1e9;
}

/* ---------------------------------------------------------------- --url */

/* With --rate, wait until the stream is due to have sent `sent` samples:
 * a stream arriving at its own pace (a sensor, a feed), not as fast as the
 * daemon acknowledges. */
static void pace(struct system *sys)
{
    if (sys->rate <= 0) return;
    double now = tame_now_s();
    if (sys->r_sent == 0) sys->rate_t0 = now;
    double due = sys->rate_t0 + (double)sys->r_sent / sys->rate;
    if (due > now) usleep((useconds_t)((due - now) * 1e6));
}

/* Hand samples to the daemon in requests of --request-size. */
static void remote_push(struct system *sys, const float *x, const int *y, int n, int dim, int request_size,
                        bool last)
{
    memcpy(sys->rx + (size_t)sys->r_fill * dim, x, (size_t)n * dim * sizeof(float));
    memcpy(sys->ry + sys->r_fill, y, (size_t)n * sizeof(int));
    sys->r_fill += n;
    while (sys->r_fill >= request_size || (last && sys->r_fill > 0)) {
        int m = sys->r_fill < request_size ? sys->r_fill : request_size;
        pace(sys);
        sys->r_sent += (uint64_t)m;
        if (remote_samples(sys->remote, sys->model, sys->rx, sys->ry, m, dim) < 0)
            die("%s", remote_error(sys->remote));
        sys->r_fill -= m;
        memmove(sys->rx, sys->rx + (size_t)m * dim, (size_t)sys->r_fill * dim * sizeof(float));
        memmove(sys->ry, sys->ry + m, (size_t)sys->r_fill * sizeof(int));
    }
}

/* Which expert trained which true task, replayed from the events: a spawn
 * or reuse at batch b means batch b trained `to`. */
static void remote_counts(struct system *sys, const struct report *rep, int bs)
{
    int active = 0, v = 0;
    size_t k = 0;
    for (uint64_t i = 0; i < rep->samples; i++) {
        uint64_t b = i / (uint64_t)bs;
        for (; k < rep->n_ev && rep->ev[k].batch <= b; k++)
            if (rep->ev[k].kind == TAME_EV_SPAWN || rep->ev[k].kind == TAME_EV_REUSE) active = rep->ev[k].to;
        while (v + 1 < rep->visits && i >= rep->visit_start[v + 1]) v++;
        if (active >= 0 && active < TAME_MAX_EXPERTS) sys->trained[active][rep->task_of_visit[v]]++;
    }
}

/* ------------------------------------------------------------------- run */

static void run(const struct options *o, const struct idx_set *train, const struct idx_set *test,
                struct report *rep)
{
    char err[512];
    struct stream s;
    if (stream_build(&o->spec, train->dim, &s, err, sizeof(err)) < 0) die("%s", err);
    struct tame_params p = o->p;
    p.input_dim = train->dim;
    p.classes = s.model_classes;
    const char *field;
    if (tame_params_validate(&p, &field) < 0) die("parameter %s is out of range", field);

    struct test_set ts[MAX_TASKS] = {{0}};
    build_tests(&s, test, o->test_limit, ts);
    struct system sys;
    if (o->url) {
        memset(&sys, 0, sizeof(sys));
        char token[512] = "";
        if (o->token_file) {
            FILE *f = fopen(o->token_file, "r");
            if (!f || !fgets(token, sizeof(token), f)) die("cannot read %s", o->token_file);
            fclose(f);
            token[strcspn(token, "\r\n")] = 0;
        }
        check(remote_open(o->url, token[0] ? token : NULL, &sys.remote), "HTTP client");
        snprintf(sys.model, sizeof(sys.model), "tame-eval-%s-%llu", s.spec.kind == STREAM_SPLIT ? "split"
                 : s.spec.kind == STREAM_PERMUTED ? "permuted" : s.spec.kind == STREAM_ROTATED ? "rotated"
                 : "recurring", (unsigned long long)s.spec.seed);
        if (remote_create(sys.remote, sys.model, &p) < 0) die("%s", remote_error(sys.remote));
        sys.rate = o->rate;
        sys.rx = malloc((size_t)(o->request_size + p.batch_size) * train->dim * sizeof(float));
        sys.ry = malloc((size_t)(o->request_size + p.batch_size) * sizeof(int));
        if (!sys.rx || !sys.ry) die("out of memory");
    } else {
        check(system_init(&sys, o->baseline, &p, s.spec.tasks, o->threads), "learner");
    }

    const int bs = p.batch_size, dim = train->dim;
    float *bx = malloc((size_t)bs * dim * sizeof(float));
    int *by = malloc((size_t)bs * sizeof(int)), *btask = malloc((size_t)bs * sizeof(int));
    float *sub_x = malloc((size_t)bs * dim * sizeof(float));
    int *sub_y = malloc((size_t)bs * sizeof(int));
    if (!bx || !by || !btask || !sub_x || !sub_y) die("out of memory");
    int fill = 0;
    bool visited[MAX_TASKS] = {0};
    struct tame_snapshot *snap[MAX_TASKS] = {0};

    rep->visits = s.spec.n_visits;
    rep->matrix_rows = 0;
    uint64_t sample_pos = 0;
    struct tame_rng order_rng;
    tame_rng_seed2(&order_rng, s.spec.seed, 99);

    for (int v = 0; v < s.spec.n_visits; v++) {
        int t = s.spec.visit[v];
        rep->task_of_visit[v] = t;
        rep->boundary[v] = sample_pos / (uint64_t)bs;
        rep->visit_start[v] = sample_pos;
        rep->is_boundary[v] = v > 0 && s.spec.visit[v - 1] != t;
        visited[t] = true;
        /* The task's training view, prepared outside the timed loop. */
        int n;
        int *idx = task_indices(&s, t, train, s.spec.train_limit, &n);
        float *tx = malloc((size_t)n * dim * sizeof(float));
        int *ty = malloc((size_t)n * sizeof(int)), *order = malloc((size_t)n * sizeof(int));
        if (!idx || !tx || !ty || !order) die("out of memory");
        for (int i = 0; i < n; i++) {
            task_transform(&s, t, train, idx[i], tx + (size_t)i * dim);
            ty[i] = stream_label(&s, t, train->y[idx[i]]);
            order[i] = i;
        }
        double t0 = tame_now_s();
        if (sys.remote && v == 0) rep->remote_t0 = t0;
        for (int ep = 0; ep < s.spec.epochs; ep++) {
            tame_rng_shuffle(&order_rng, order, n);
            for (int i = 0; i < n; i++) {
                memcpy(bx + (size_t)fill * dim, tx + (size_t)order[i] * dim, (size_t)dim * sizeof(float));
                by[fill] = ty[order[i]];
                btask[fill] = t;
                fill++;
                sample_pos++;
                if (fill < bs) continue;
                /* One batch to every learner of the system. */
                if (sys.remote) {
                    remote_push(&sys, bx, by, fill, dim, o->request_size, false);
                    rep->flops = NAN;
                } else if (sys.kind == BASE_ORACLE) {
                    for (int k = 0; k < s.spec.tasks; k++) {
                        int m = 0;
                        for (int j = 0; j < fill; j++)
                            if (btask[j] == k) {
                                memcpy(sub_x + (size_t)m * dim, bx + (size_t)j * dim, (size_t)dim * sizeof(float));
                                sub_y[m++] = by[j];
                            }
                        if (m) check(tame_learner_step(sys.l[k], sub_x, sub_y, m), "step");
                        if (m) sys.trained[0][k] += (uint64_t)m;
                        rep->flops += m ? step_flops(&p, 1, m) : 0;
                    }
                } else {
                    int rc = tame_learner_step(sys.l[0], bx, by, fill);
                    if (rc == TAME_E_NONFINITE) rep->nonfinite++;
                    else check(rc, "step");
                    struct tame_info info;
                    tame_learner_info(sys.l[0], &info);
                    for (int j = 0; j < fill; j++) sys.trained[info.active][btask[j]]++;
                    rep->flops += step_flops(&p, info.n_experts, fill);
                }
                rep->batches++;
                rep->samples += (uint64_t)fill;
                fill = 0;
            }
        }
        rep->train_seconds += tame_now_s() - t0;
        collect_events(&sys, rep);
        free(idx);
        free(tx);
        free(ty);
        free(order);

        if (o->matrix) {
            double loc[MAX_TASKS] = {0}, glo[MAX_TASKS], rou[MAX_TASKS];
            bool seen_so_far[MAX_TASKS] = {0};
            for (int k = 0; k < s.spec.tasks; k++) seen_so_far[k] = true;
            take_snapshots(&sys, snap);
            evaluate(&sys, snap, &s, ts, dim, seen_so_far, loc, glo, rou);
            free_snapshots(&sys, snap);
            for (int k = 0; k < s.spec.tasks; k++) rep->matrix[rep->matrix_rows][k] = loc[k];
            rep->matrix_rows++;
        }
        if (!o->quiet)
            fprintf(stderr, "tame-eval: visit %d/%d (task %d) done, %llu batches, %.1f s streaming\n",
                    v + 1, s.spec.n_visits, t + 1, (unsigned long long)rep->batches, rep->train_seconds);
    }
    if (sys.remote) {
        /* Send the rest, flush, and time until the daemon has trained it all:
         * the HTTP figure is end to end. */
        remote_push(&sys, bx, by, fill, dim, o->request_size, true);
        rep->samples += (uint64_t)fill;
        rep->batches += fill > 0;
        fill = 0;
        if (remote_flush(sys.remote, sys.model) < 0) die("%s", remote_error(sys.remote));
        int experts;
        if (remote_wait(sys.remote, sys.model, rep->samples, false, &experts) < 0)
            die("%s", remote_error(sys.remote));
        rep->train_seconds = tame_now_s() - rep->remote_t0;
        if (remote_wait(sys.remote, sys.model, rep->samples, true, &experts) < 0)
            die("%s", remote_error(sys.remote));
        /* A final selector on the whole buffer, as in-process (untimed). */
        if (remote_retrain_selector(sys.remote, sys.model) < 0) die("%s", remote_error(sys.remote));
        struct tame_event *ev;
        size_t n_ev;
        if (remote_events(sys.remote, sys.model, &ev, &n_ev) < 0) die("%s", remote_error(sys.remote));
        for (size_t k = 0; k < n_ev; k++) append_event(rep, &ev[k]);
        free(ev);
        remote_counts(&sys, rep, bs);
        rep->experts = experts;
    }
    /* A trailing partial batch is flushed like the daemon's explicit flush. */
    if (fill > 0 && sys.kind != BASE_ORACLE) {
        int rc = tame_learner_step(sys.l[0], bx, by, fill);
        if (rc < 0 && rc != TAME_E_NONFINITE) check(rc, "step");
        struct tame_info info;
        tame_learner_info(sys.l[0], &info);
        for (int j = 0; j < fill; j++) sys.trained[info.active][btask[j]]++;
        rep->samples += (uint64_t)fill;
        rep->batches++;
        collect_events(&sys, rep);
    }

    /* Final selector, then the end-of-stream evaluation (both untimed). */
    if (sys.remote) {
        /* the daemon trained its selector in the background */
    } else if (sys.kind == BASE_NONE) {
        struct tame_info info;
        tame_learner_info(sys.l[0], &info);
        if (info.n_experts >= 2) check(tame_learner_train_selector(sys.l[0]), "selector");
        collect_events(&sys, rep);
        tame_learner_info(sys.l[0], &info);
        rep->experts = info.n_experts;
    } else {
        rep->experts = sys.n;
    }
    take_snapshots(&sys, snap);
    for (int i = 0; i < sys.n; i++) {
        size_t e, sel;
        tame_snapshot_nonzero(snap[i], &e, &sel);
        rep->nonzero_experts += e;
        rep->nonzero_selector += sel;
    }
    evaluate(&sys, snap, &s, ts, dim, visited, rep->task_local, rep->task_global, rep->task_routing);
    free_snapshots(&sys, snap);
    int nt = 0;
    for (int t = 0; t < s.spec.tasks; t++) {
        if (!visited[t]) continue;
        rep->task_seen[t] = true;
        rep->acc_local += rep->task_local[t];
        rep->acc_global += rep->task_global[t];
        rep->acc_routing += rep->task_routing[t];
        nt++;
    }
    rep->distinct_tasks = nt;
    rep->acc_local /= nt;
    rep->acc_global /= nt;
    rep->acc_routing /= nt;

    /* Detection delays: the first detection at or after each true boundary
     * and before the next one; every other detection is false. */
    bool used[4096] = {0};
    for (int v = 0; v < rep->visits; v++) {
        rep->delay[v] = -1;
        if (!rep->is_boundary[v]) continue;
        uint64_t end = v + 1 < rep->visits ? rep->boundary[v + 1] : UINT64_MAX;
        for (size_t k = 0; k < rep->n_ev; k++)
            if (rep->ev[k].kind == TAME_EV_DETECT && rep->ev[k].batch >= rep->boundary[v] &&
                rep->ev[k].batch < end) {
                rep->delay[v] = (long)(rep->ev[k].batch - rep->boundary[v]);
                if (k < 4096) used[k] = true;
                break;
            }
    }
    for (size_t k = 0; k < rep->n_ev; k++)
        if (rep->ev[k].kind == TAME_EV_DETECT && !(k < 4096 && used[k])) rep->false_detections++;

    if (o->matrix && rep->matrix_rows > 0) {
        int last = rep->matrix_rows - 1, cnt = 0, fcnt = 0;
        double sum = 0, fsum = 0;
        for (int t = 0; t < s.spec.tasks; t++) {
            if (!visited[t]) continue;
            sum += rep->matrix[last][t];
            cnt++;
            /* forgetting: best accuracy after any earlier visit minus final */
            double best = -1;
            for (int r = 0; r < last; r++) {
                bool seen_before = false;
                for (int v = 0; v <= r; v++) seen_before |= rep->task_of_visit[v] == t;
                if (seen_before && rep->matrix[r][t] > best) best = rep->matrix[r][t];
            }
            if (best >= 0) fsum += best - rep->matrix[last][t], fcnt++;
        }
        rep->average_accuracy = sum / cnt;
        rep->forgetting = fcnt ? fsum / fcnt : 0;
    } else {
        rep->average_accuracy = rep->acc_local;
        rep->forgetting = NAN;
    }
    if (o->bench) rep->gemm_gflops = measure_sgemm(&p, bs);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    rep->peak_rss = ru.ru_maxrss * 1024L;

    system_done(&sys);
    for (int t = 0; t < s.spec.tasks; t++) free(ts[t].x), free(ts[t].cls);
    free(bx);
    free(by);
    free(btask);
    free(sub_x);
    free(sub_y);
    stream_free(&s);
}

/* ---------------------------------------------------------------- output */

static const char *kind_name(enum stream_kind k)
{
    static const char *const names[] = {"split", "permuted", "rotated", "recurring"};
    return names[k];
}

static const char *baseline_name(enum baseline b)
{
    return b == BASE_FINETUNE ? "finetune" : b == BASE_ORACLE ? "oracle" : "tame";
}

static void json_num(FILE *f, double v)
{
    if (isfinite(v)) fprintf(f, "%.6g", v);
    else fputs("null", f);
}

static void write_json(FILE *f, const struct options *o, const struct report *r)
{
    fprintf(f, "{\n  \"system\": \"%s\",\n", baseline_name(o->baseline));
    fprintf(f, "  \"stream\": {\"kind\": \"%s\", \"tasks\": %d, \"epochs\": %d, \"labels\": \"%s\", "
               "\"seed\": %llu, \"batch_size\": %d, \"batches\": %llu, \"samples\": %llu, \"visits\": [",
            kind_name(o->spec.kind), r->distinct_tasks, o->spec.epochs,
            o->spec.local_labels ? "local" : "global", (unsigned long long)o->spec.seed,
            o->p.batch_size, (unsigned long long)r->batches, (unsigned long long)r->samples);
    for (int v = 0; v < r->visits; v++) fprintf(f, "%s%d", v ? ", " : "", r->task_of_visit[v] + 1);
    fputs("], \"boundaries\": [", f);
    for (int v = 0; v < r->visits; v++) fprintf(f, "%s%llu", v ? ", " : "", (unsigned long long)r->boundary[v]);
    fprintf(f, "]},\n  \"experts\": %d,\n  \"events\": [", r->experts);
    for (size_t k = 0; k < r->n_ev; k++) {
        const struct event_rec *e = &r->ev[k];
        fprintf(f, "%s\n    {\"batch\": %llu, \"kind\": \"%s\", \"from\": %d, \"to\": %d, \"stat\": ",
                k ? "," : "", (unsigned long long)e->batch, tame_event_kind_name(e->kind), e->from, e->to);
        json_num(f, e->stat);
        fputs(", \"threshold\": ", f);
        json_num(f, e->threshold);
        if (e->n_losses > 0) {
            fputs(", \"losses\": [", f);
            for (int j = 0; j < e->n_losses; j++) {
                fputs(j ? ", " : "", f);
                json_num(f, e->losses[j]);
            }
            fputc(']', f);
        }
        fputc('}', f);
    }
    fputs("\n  ],\n  \"boundary_delays\": [", f);
    bool first = true;
    for (int v = 1; v < r->visits; v++) {
        if (!r->is_boundary[v]) continue;
        fputs(first ? "" : ", ", f);
        first = false;
        if (r->delay[v] >= 0) fprintf(f, "%ld", r->delay[v]);
        else fputs("null", f);
    }
    fprintf(f, "],\n  \"false_detections\": %d,\n  \"accuracy\": {\"local\": ", r->false_detections);
    json_num(f, r->acc_local);
    fputs(", \"global\": ", f);
    json_num(f, r->acc_global);
    fputs(", \"routing\": ", f);
    json_num(f, r->acc_routing);
    fputs(", \"per_task\": [", f);
    first = true;
    for (int t = 0; t < MAX_TASKS; t++) {
        if (!r->task_seen[t]) continue;
        fprintf(f, "%s{\"task\": %d, \"local\": ", first ? "" : ", ", t + 1);
        first = false;
        json_num(f, r->task_local[t]);
        fputs(", \"global\": ", f);
        json_num(f, r->task_global[t]);
        fputs(", \"routing\": ", f);
        json_num(f, r->task_routing[t]);
        fputc('}', f);
    }
    fputs("]},\n  \"matrix\": ", f);
    if (r->matrix_rows == 0) {
        fputs("null", f);
    } else {
        fputc('[', f);
        for (int i = 0; i < r->matrix_rows; i++) {
            fputs(i ? ", [" : "[", f);
            bool fst = true;
            for (int t = 0; t < MAX_TASKS; t++) {
                if (!r->task_seen[t]) continue;
                fputs(fst ? "" : ", ", f);
                fst = false;
                json_num(f, r->matrix[i][t]);
            }
            fputc(']', f);
        }
        fputc(']', f);
    }
    fputs(",\n  \"average_accuracy\": ", f);
    json_num(f, r->average_accuracy);
    fputs(", \"forgetting\": ", f);
    json_num(f, r->forgetting);
    if (o->url) /* the daemon does not report model sizes yet */
        fputs(",\n  \"nonzero_params\": {\"experts\": null, \"selector\": null},\n", f);
    else
        fprintf(f, ",\n  \"nonzero_params\": {\"experts\": %zu, \"selector\": %zu},\n", r->nonzero_experts,
                r->nonzero_selector);
    fputs("  \"train_seconds\": ", f);
    json_num(f, r->train_seconds);
    fputs(", \"samples_per_second\": ", f);
    json_num(f, r->samples / r->train_seconds);
    fputs(", \"step_gflops\": ", f);
    json_num(f, r->flops / r->train_seconds / 1e9);
    fputs(", \"sgemm_gflops\": ", f);
    json_num(f, o->bench ? r->gemm_gflops : NAN);
    fprintf(f, ", \"threads\": %d, \"nonfinite_batches\": %llu, \"peak_rss_bytes\": %ld\n}\n",
            o->threads, (unsigned long long)r->nonfinite, r->peak_rss);
}

static void print_table(const struct options *o, const struct report *r)
{
    printf("%s on %s Fashion-MNIST-format data: %d tasks, %d epochs, %s labels, seed %llu\n",
           baseline_name(o->baseline), kind_name(o->spec.kind), r->distinct_tasks, o->spec.epochs,
           o->spec.local_labels ? "local" : "global", (unsigned long long)o->spec.seed);
    printf("  batches %llu, samples %llu, experts %d (true tasks %d)\n", (unsigned long long)r->batches,
           (unsigned long long)r->samples, r->experts, r->distinct_tasks);
    printf("  detection delays (batches):");
    for (int v = 1; v < r->visits; v++)
        if (r->is_boundary[v]) {
            if (r->delay[v] >= 0) printf(" %ld", r->delay[v]);
            else printf(" missed");
        }
    printf("; false detections %d\n", r->false_detections);
    printf("  %-6s %8s %8s %8s\n", "task", "local", "global", "routing");
    for (int t = 0; t < MAX_TASKS; t++)
        if (r->task_seen[t])
            printf("  %-6d %7.2f%% %7.2f%% %7.2f%%\n", t + 1, 100 * r->task_local[t], 100 * r->task_global[t],
                   100 * r->task_routing[t]);
    printf("  %-6s %7.2f%% %7.2f%% %7.2f%%\n", "all", 100 * r->acc_local, 100 * r->acc_global,
           100 * r->acc_routing);
    if (r->matrix_rows) {
        printf("  accuracy matrix (local), row = after visit:\n");
        for (int i = 0; i < r->matrix_rows; i++) {
            printf("   ");
            for (int t = 0; t < MAX_TASKS; t++)
                if (r->task_seen[t]) printf(" %6.2f", 100 * r->matrix[i][t]);
            printf("\n");
        }
        printf("  average accuracy %.2f%%, forgetting %.2f%%\n", 100 * r->average_accuracy, 100 * r->forgetting);
    }
    if (o->url) {
        printf("  over HTTP to %s: %.2f s from the first request to the last sample trained, %.0f samples/s",
               o->url, r->train_seconds, r->samples / r->train_seconds);
    } else {
        printf("  non-zero parameters: experts %zu, selector %zu\n", r->nonzero_experts, r->nonzero_selector);
        printf("  streaming %.2f s, %.0f samples/s, step %.1f GFLOP/s", r->train_seconds,
               r->samples / r->train_seconds, r->flops / r->train_seconds / 1e9);
    }
    if (o->bench) printf(", OpenBLAS sgemm on the same shapes %.1f GFLOP/s (step at %.0f%%)", r->gemm_gflops,
                         100 * (r->flops / r->train_seconds / 1e9) / r->gemm_gflops);
    printf("\n  peak RSS %.1f MiB\n", r->peak_rss / 1048576.0);
}

/* ---------------------------------------------------------------- options */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: tame-eval [options]\n"
            "Stream a continual-learning benchmark through TAME in-process and report.\n\n"
            "  --data DIR          IDX files in the MNIST layout, gzipped or not\n"
            "                      (default " DEFAULT_DATA ")\n"
            "  --stream KIND       split | permuted | rotated | recurring (default split)\n"
            "  --tasks N           true tasks (split 5, permuted/rotated 10)\n"
            "  --sequence LIST     visits of a recurring stream, 1-based (default 1,2,3,2,4)\n"
            "  --epochs N          passes over a task per visit (default 10)\n"
            "  --labels MODE       global | local (default global)\n"
            "  --seed N            seeds the model and the stream order (default 1)\n"
            "  --baseline B        finetune (one network, no detector) | oracle (one expert\n"
            "                      per true task, routed by the true task)\n"
            "  --matrix            accuracy on every task after each visit\n"
            "  --bench             also measure OpenBLAS sgemm on the step's shapes\n"
            "  --json FILE         write the report as JSON\n"
            "  --train-limit N     at most N training samples per task (quick runs)\n"
            "  --test-limit N      at most N test samples per task\n"
            "  --batch N --hidden W,W --lr X --k-sigma X --k-warn X --min-batches N\n"
            "  --head-scale X --window N --alpha X --sigma-floor X --selector-epochs N --selector-lr X --expert-sparsity X\n"
            "  --selector-sparsity X --finetune-epochs N   model hyper-parameters\n"
            "  --threads N         1 or 2 threads per learner step (default 2; results are\n"
            "                      identical either way)\n"
            "  --url URL           stream to a running tamed (e.g. http://127.0.0.1:8080) over\n"
            "                      HTTP instead of in-process; --token-file FILE for its token\n"
            "  --request-size N    samples per HTTP request with --url (default 128)\n"
            "  --rate N            with --url, send at most N samples a second (default: as\n"
            "                      fast as the daemon acknowledges them)\n"
            "  --quiet             no progress lines on stderr\n");
}

static long parse_long(const char *s, const char *opt, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) die("%s wants an integer in %ld..%ld, not '%s'", opt, lo, hi, s);
    return v;
}

static float parse_float(const char *s, const char *opt)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || end == s || !isfinite(v)) die("%s wants a number, not '%s'", opt, s);
    return (float)v;
}

static int parse_list(const char *s, int *out, int max, const char *opt)
{
    int n = 0;
    char buf[512];
    snprintf(buf, sizeof(buf), "%s", s);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (n == max) die("%s: at most %d entries", opt, max);
        out[n++] = (int)parse_long(tok, opt, 1, 65536);
    }
    if (n == 0) die("%s: empty list", opt);
    return n;
}

static void parse_args(int argc, char **argv, struct options *o)
{
    enum {
        O_DATA = 256, O_STREAM, O_TASKS, O_SEQ, O_EPOCHS, O_LABELS, O_SEED, O_BASE, O_MATRIX, O_BENCH,
        O_JSON, O_TRAIN_LIMIT, O_TEST_LIMIT, O_BATCH, O_HIDDEN, O_LR, O_KSIG, O_KWARN, O_MINB, O_WINDOW,
        O_ALPHA, O_SFLOOR, O_HSCALE, O_URL, O_TOKEN, O_REQSIZE, O_RATE, O_SELEP, O_SELLR, O_ESPARSE, O_SSPARSE, O_FTEP, O_QUIET, O_THREADS, O_HELP
    };
    static const struct option opts[] = {
        {"data", 1, 0, O_DATA}, {"stream", 1, 0, O_STREAM}, {"tasks", 1, 0, O_TASKS},
        {"sequence", 1, 0, O_SEQ}, {"epochs", 1, 0, O_EPOCHS}, {"labels", 1, 0, O_LABELS},
        {"seed", 1, 0, O_SEED}, {"baseline", 1, 0, O_BASE}, {"matrix", 0, 0, O_MATRIX},
        {"bench", 0, 0, O_BENCH}, {"json", 1, 0, O_JSON}, {"train-limit", 1, 0, O_TRAIN_LIMIT},
        {"test-limit", 1, 0, O_TEST_LIMIT}, {"batch", 1, 0, O_BATCH}, {"hidden", 1, 0, O_HIDDEN},
        {"lr", 1, 0, O_LR}, {"k-sigma", 1, 0, O_KSIG}, {"k-warn", 1, 0, O_KWARN},
        {"min-batches", 1, 0, O_MINB}, {"window", 1, 0, O_WINDOW}, {"alpha", 1, 0, O_ALPHA}, {"sigma-floor", 1, 0, O_SFLOOR},
        {"head-scale", 1, 0, O_HSCALE}, {"url", 1, 0, O_URL}, {"token-file", 1, 0, O_TOKEN},
        {"request-size", 1, 0, O_REQSIZE}, {"rate", 1, 0, O_RATE},
        {"selector-epochs", 1, 0, O_SELEP}, {"selector-lr", 1, 0, O_SELLR}, {"expert-sparsity", 1, 0, O_ESPARSE},
        {"selector-sparsity", 1, 0, O_SSPARSE}, {"finetune-epochs", 1, 0, O_FTEP},
        {"quiet", 0, 0, O_QUIET}, {"threads", 1, 0, O_THREADS}, {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    memset(o, 0, sizeof(*o));
    o->data = DEFAULT_DATA;
    o->spec.kind = STREAM_SPLIT;
    o->spec.epochs = 10;
    o->spec.seed = 1;
    o->threads = 2;
    o->request_size = 128;
    int tasks = 0, seq[64], n_seq = 0;
    tame_params_default(&o->p, 1, 2);
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case O_DATA: o->data = optarg; break;
        case O_STREAM:
            if (!strcmp(optarg, "split")) o->spec.kind = STREAM_SPLIT;
            else if (!strcmp(optarg, "permuted")) o->spec.kind = STREAM_PERMUTED;
            else if (!strcmp(optarg, "rotated")) o->spec.kind = STREAM_ROTATED;
            else if (!strcmp(optarg, "recurring")) o->spec.kind = STREAM_RECURRING;
            else die("--stream must be split, permuted, rotated or recurring");
            break;
        case O_TASKS: tasks = (int)parse_long(optarg, "--tasks", 1, 64); break;
        case O_SEQ: n_seq = parse_list(optarg, seq, 64, "--sequence"); break;
        case O_EPOCHS: o->spec.epochs = (int)parse_long(optarg, "--epochs", 1, 1000); break;
        case O_LABELS:
            if (!strcmp(optarg, "local")) o->spec.local_labels = true;
            else if (!strcmp(optarg, "global")) o->spec.local_labels = false;
            else die("--labels must be local or global");
            break;
        case O_SEED: o->spec.seed = (uint64_t)parse_long(optarg, "--seed", 0, 1L << 62); break;
        case O_BASE:
            if (!strcmp(optarg, "finetune")) o->baseline = BASE_FINETUNE;
            else if (!strcmp(optarg, "oracle")) o->baseline = BASE_ORACLE;
            else if (!strcmp(optarg, "none") || !strcmp(optarg, "tame")) o->baseline = BASE_NONE;
            else die("--baseline must be finetune or oracle");
            break;
        case O_MATRIX: o->matrix = true; break;
        case O_BENCH: o->bench = true; break;
        case O_JSON: o->json = optarg; break;
        case O_TRAIN_LIMIT: o->spec.train_limit = (int)parse_long(optarg, "--train-limit", 1, 10000000); break;
        case O_TEST_LIMIT: o->test_limit = (int)parse_long(optarg, "--test-limit", 1, 10000000); break;
        case O_BATCH: o->p.batch_size = (int)parse_long(optarg, "--batch", 1, 65536); break;
        case O_HIDDEN: o->p.n_hidden = parse_list(optarg, o->p.hidden, TAME_MAX_HIDDEN, "--hidden"); break;
        case O_LR: o->p.lr = parse_float(optarg, "--lr"); break;
        case O_KSIG: o->p.k_sigma = parse_float(optarg, "--k-sigma"); break;
        case O_KWARN: o->p.k_warn = parse_float(optarg, "--k-warn"); break;
        case O_MINB: o->p.min_batches = (int)parse_long(optarg, "--min-batches", 0, 1000000); break;
        case O_WINDOW: o->p.window = (int)parse_long(optarg, "--window", 2, 100000); break;
        case O_ALPHA: o->p.alpha = parse_float(optarg, "--alpha"); break;
        case O_URL: o->url = optarg; break;
        case O_TOKEN: o->token_file = optarg; break;
        case O_REQSIZE: o->request_size = (int)parse_long(optarg, "--request-size", 1, 1 << 20); break;
        case O_RATE: o->rate = (double)parse_long(optarg, "--rate", 1, 100000000); break;
        case O_HSCALE: o->p.head_scale = parse_float(optarg, "--head-scale"); break;
        case O_SFLOOR: o->p.sigma_floor = parse_float(optarg, "--sigma-floor"); break;
        case O_SELEP: o->p.selector_epochs = (int)parse_long(optarg, "--selector-epochs", 1, 10000); break;
        case O_SELLR: o->p.selector_lr = parse_float(optarg, "--selector-lr"); break;
        case O_ESPARSE: o->p.expert_sparsity = parse_float(optarg, "--expert-sparsity"); break;
        case O_SSPARSE: o->p.selector_sparsity = parse_float(optarg, "--selector-sparsity"); break;
        case O_FTEP: o->p.finetune_epochs = (int)parse_long(optarg, "--finetune-epochs", 0, 10000); break;
        case O_QUIET: o->quiet = true; break;
        case O_THREADS: o->threads = (int)parse_long(optarg, "--threads", 1, 2); break;
        case 'h':
        case O_HELP: usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) die("unexpected argument '%s' (see --help)", argv[optind]);
    if (o->url && (o->matrix || o->baseline != BASE_NONE || o->bench))
        die("--matrix, --baseline and --bench run in-process only, not with --url");
    if (!o->url && o->rate > 0) die("--rate paces a stream sent with --url");
    bool split_like = o->spec.kind == STREAM_SPLIT || o->spec.kind == STREAM_RECURRING;
    o->spec.tasks = tasks ? tasks : split_like ? 5 : 10;
    if (o->spec.kind == STREAM_RECURRING) {
        if (!n_seq) {
            static const int dflt[] = {1, 2, 3, 2, 4};
            n_seq = 5;
            memcpy(seq, dflt, sizeof(dflt));
        }
    } else if (n_seq) {
        die("--sequence applies to --stream recurring");
    }
    o->spec.n_visits = n_seq;
    for (int i = 0; i < n_seq; i++) o->spec.visit[i] = seq[i] - 1;
    o->p.seed = o->spec.seed;
}

int main(int argc, char **argv)
{
    struct options o;
    parse_args(argc, argv, &o);
    nn_blas_threads(1); /* one thread per learner: runs are reproducible */
    char err[512];
    struct idx_set train, test;
    if (idx_load(o.data, "train", &train, err, sizeof(err)) < 0 ||
        idx_load(o.data, "t10k", &test, err, sizeof(err)) < 0)
        die("%s (install Debian's dataset-fashion-mnist, or pass --data DIR)", err);
    if (train.dim != test.dim) die("train and test images differ in size");
    struct report rep;
    memset(&rep, 0, sizeof(rep));
    run(&o, &train, &test, &rep);
    print_table(&o, &rep);
    if (o.json) {
        FILE *f = fopen(o.json, "w");
        if (!f) die("cannot write %s: %s", o.json, strerror(errno));
        write_json(f, &o, &rep);
        if (fclose(f) != 0) die("cannot write %s: %s", o.json, strerror(errno));
    }
    free(rep.ev);
    idx_free(&train);
    idx_free(&test);
    return 0;
}
