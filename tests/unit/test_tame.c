/* test_tame.c: the learner of DESIGN 2.3-2.8 on synthetic streams: the
 * detector (no false alarm, prompt detection), reuse and spawn, pruning,
 * routing, persistence, determinism, numeric safety and allocation
 * failures. */
#include "synth.h"
#include "tame/tame.h"
#include "tame_internal.h" /* one test reaches into an expert's weights */

#include "check_run.h"

#include <check.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define BS 32
#define PER_TASK 2
#define CLASSES 8 /* global labels for up to 4 tasks */

static struct tame_params test_params(uint64_t seed)
{
    struct tame_params p;
    tame_params_default(&p, SYNTH_DIM, CLASSES);
    p.hidden[0] = p.hidden[1] = 32;
    p.batch_size = BS;
    p.selector_capacity = 1000;
    p.expert_capacity = 200;
    p.selector_epochs = 20;
    p.finetune_epochs = 5;
    p.expert_sparsity = 0.8f;
    p.seed = seed;
    return p;
}

struct run {
    struct tame_event *ev;
    size_t n_ev;
};

static void run_collect(struct tame_learner *l, struct run *run)
{
    struct tame_event *ev;
    size_t n;
    ck_assert_int_eq(tame_learner_take_events(l, &ev, &n), 0);
    if (!n) return;
    run->ev = realloc(run->ev, (run->n_ev + n) * sizeof(*ev));
    memcpy(run->ev + run->n_ev, ev, n * sizeof(*ev));
    run->n_ev += n;
    tame_free(ev);
}

/* Stream `batches` batches of `task` (data rng `r`). */
static void feed(struct tame_learner *l, struct tame_rng *r, int task, int batches, struct run *run)
{
    float x[BS * SYNTH_DIM];
    int y[BS];
    for (int b = 0; b < batches; b++) {
        synth_batch(r, task, PER_TASK, true, x, y, BS);
        ck_assert_int_eq(tame_learner_step(l, x, y, BS), 0);
        if (run) run_collect(l, run);
    }
}

static int count_kind(const struct run *run, enum tame_event_kind kind)
{
    int c = 0;
    for (size_t i = 0; i < run->n_ev; i++) c += run->ev[i].kind == kind;
    return c;
}

static const struct tame_event *nth_kind(const struct run *run, enum tame_event_kind kind, int nth)
{
    for (size_t i = 0; i < run->n_ev; i++)
        if (run->ev[i].kind == kind && nth-- == 0) return &run->ev[i];
    return NULL;
}

START_TEST(no_detection_on_a_long_stationary_stream)
{
    struct tame_params p = test_params(1);
    struct tame_learner *l;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 100);
    struct run run = {0};
    feed(l, &r, 0, 2500, &run);
    ck_assert_int_eq(count_kind(&run, TAME_EV_DETECT), 0);
    struct tame_info info;
    tame_learner_info(l, &info);
    ck_assert_int_eq(info.n_experts, 1);
    ck_assert_uint_eq(info.batches, 2500);
    ck_assert_uint_eq(info.samples_trained, 2500 * BS);
    free(run.ev);
    tame_learner_free(l);
}
END_TEST

START_TEST(abrupt_shift_is_detected_within_five_batches_and_spawns)
{
    for (uint64_t seed = 1; seed <= 3; seed++) {
        struct tame_params p = test_params(seed);
        struct tame_learner *l;
        ck_assert_int_eq(tame_learner_new(&p, &l), 0);
        struct tame_rng r;
        tame_rng_seed(&r, 200 + seed);
        struct run run = {0};
        feed(l, &r, 0, 300, &run);
        feed(l, &r, 1, 300, &run);
        ck_assert_int_eq(count_kind(&run, TAME_EV_DETECT), 1);
        const struct tame_event *d = nth_kind(&run, TAME_EV_DETECT, 0);
        ck_assert_uint_ge(d->batch, 300);
        ck_assert_uint_le(d->batch, 305);
        ck_assert_double_gt(d->stat, d->threshold);
        ck_assert_int_eq(d->from, 0);
        /* The new task spawns expert 1 (expert 0's spawn is the first event). */
        ck_assert_int_eq(count_kind(&run, TAME_EV_SPAWN), 2);
        const struct tame_event *s = nth_kind(&run, TAME_EV_SPAWN, 1);
        ck_assert_int_eq(s->from, 0);
        ck_assert_int_eq(s->to, 1);
        ck_assert_uint_eq(s->batch, d->batch);
        /* The deactivated expert was pruned to the configured sparsity. */
        const struct tame_event *pr = nth_kind(&run, TAME_EV_PRUNE, 0);
        ck_assert_ptr_nonnull(pr);
        ck_assert_int_eq(pr->from, 0);
        struct tame_expert_info ei;
        ck_assert_int_eq(tame_learner_expert_info(l, 0, &ei), 0);
        ck_assert(ei.pruned);
        size_t weights = 16 * 32 + 32 * 32 + 32 * CLASSES, biases = 32 + 32 + CLASSES;
        ck_assert_uint_le(ei.nonzero_params, (size_t)llround(0.2 * weights) + biases);
        free(run.ev);
        tame_learner_free(l);
    }
}
END_TEST

START_TEST(recurring_task_reuses_its_expert_and_new_task_spawns)
{
    struct tame_params p = test_params(4);
    struct tame_learner *l;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 300);
    struct run run = {0};
    feed(l, &r, 0, 300, &run);
    feed(l, &r, 1, 300, &run);
    feed(l, &r, 0, 300, &run);
    feed(l, &r, 2, 300, &run);
    ck_assert_int_eq(count_kind(&run, TAME_EV_DETECT), 3);
    const struct tame_event *reuse = nth_kind(&run, TAME_EV_REUSE, 0);
    ck_assert_ptr_nonnull(reuse);
    ck_assert_int_eq(count_kind(&run, TAME_EV_REUSE), 1);
    ck_assert_int_eq(reuse->from, 1);
    ck_assert_int_eq(reuse->to, 0);
    ck_assert_uint_ge(reuse->batch, 600);
    ck_assert_uint_le(reuse->batch, 605);
    ck_assert_double_lt(reuse->stat, reuse->threshold);
    const struct tame_event *spawn = nth_kind(&run, TAME_EV_SPAWN, 2);
    ck_assert_ptr_nonnull(spawn);
    ck_assert_int_eq(spawn->to, 2);
    ck_assert_uint_ge(spawn->batch, 900);
    ck_assert_uint_le(spawn->batch, 905);
    struct tame_info info;
    tame_learner_info(l, &info);
    ck_assert_int_eq(info.n_experts, 3);
    ck_assert_int_eq(info.active, 2);
    /* The reused expert kept its mask: still sparse after training again. */
    struct tame_expert_info ei;
    ck_assert_int_eq(tame_learner_expert_info(l, 0, &ei), 0);
    ck_assert(ei.pruned);
    ck_assert_uint_lt(ei.nonzero_params, 16 * 32 + 32 * 32);
    ck_assert_int_eq(ei.labels[0] + ei.labels[1], 2);
    ck_assert_int_eq(ei.labels[2] + ei.labels[3], 0);
    free(run.ev);
    tame_learner_free(l);
}
END_TEST

/* Routing and label accuracy on fresh samples of each task. */
static void accuracy(const struct tame_snapshot *s, int tasks, double *route_acc, double *label_acc)
{
    struct tame_predict_work *w;
    ck_assert_int_eq(tame_predict_work_new(s, 64, &w), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 999);
    const int n = 300;
    float *x = malloc(sizeof(float) * n * SYNTH_DIM);
    int y[300];
    struct tame_prediction out[300];
    int routed = 0, right = 0;
    for (int t = 0; t < tasks; t++) {
        synth_batch(&r, t, PER_TASK, true, x, y, n);
        ck_assert_int_eq(tame_snapshot_predict(s, w, x, n, -1, out, NULL), 0);
        for (int i = 0; i < n; i++) {
            routed += out[i].expert == t;
            right += out[i].label == y[i];
        }
    }
    *route_acc = (double)routed / (tasks * n);
    *label_acc = (double)right / (tasks * n);
    free(x);
    tame_predict_work_free(w);
}

START_TEST(three_task_stream_three_experts_and_routing_over_95_percent)
{
    struct tame_params p = test_params(5);
    struct tame_learner *l;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 400);
    struct run run = {0};
    for (int t = 0; t < 3; t++) feed(l, &r, t, 300, &run);
    struct tame_info info;
    tame_learner_info(l, &info);
    ck_assert_int_eq(info.n_experts, 3);
    ck_assert(info.selector_due);
    ck_assert_int_eq(tame_learner_train_selector(l), 0);
    run_collect(l, &run);
    tame_learner_info(l, &info);
    ck_assert(!info.selector_due);
    ck_assert_int_eq(info.selector_experts, 3);
    const struct tame_event *sel = nth_kind(&run, TAME_EV_SELECTOR, 0);
    ck_assert_ptr_nonnull(sel);
    ck_assert_int_eq(sel->to, 3);

    struct tame_snapshot *s;
    ck_assert_int_eq(tame_learner_snapshot(l, &s), 0);
    double route_acc, label_acc;
    accuracy(s, 3, &route_acc, &label_acc);
    ck_assert_msg(route_acc >= 0.95, "routing accuracy %g", route_acc);
    ck_assert_msg(label_acc >= 0.90, "label accuracy %g", label_acc);
    /* The selector was pruned to half its weights. */
    size_t nz_e, nz_s;
    tame_snapshot_nonzero(s, &nz_e, &nz_s);
    ck_assert_uint_le(nz_s, (16 * 32 + 32 * 32 + 32 * 3) / 2 + 32 + 32 + 3 + 1);
    /* Prediction restricted to the expert's labels: probabilities of labels
     * it never trained on are zero, the rest sum to one. */
    struct tame_predict_work *w;
    ck_assert_int_eq(tame_predict_work_new(s, 8, &w), 0);
    float x[SYNTH_DIM * 8], probs[8 * CLASSES];
    int y[8];
    struct tame_prediction out[8];
    synth_batch(&r, 1, PER_TASK, true, x, y, 8);
    ck_assert_int_eq(tame_snapshot_predict(s, w, x, 8, 1, out, probs), 0);
    for (int i = 0; i < 8; i++) {
        ck_assert_int_eq(out[i].expert, 1);
        ck_assert(out[i].label == 2 || out[i].label == 3);
        ck_assert_float_eq(probs[i * CLASSES + 0], 0.0f);
        ck_assert_float_eq_tol(probs[i * CLASSES + 2] + probs[i * CLASSES + 3], 1.0f, 1e-5f);
    }
    ck_assert_int_eq(tame_snapshot_predict(s, w, x, 8, 7, out, probs), TAME_E_RANGE);
    tame_predict_work_free(w);
    tame_snapshot_free(s);
    free(run.ev);
    tame_learner_free(l);
}
END_TEST

static void events_equal(const struct run *a, const struct run *b)
{
    ck_assert_uint_eq(a->n_ev, b->n_ev);
    for (size_t i = 0; i < a->n_ev; i++) {
        const struct tame_event *x = &a->ev[i], *y = &b->ev[i];
        ck_assert_uint_eq(x->seq, y->seq);
        ck_assert_uint_eq(x->batch, y->batch);
        ck_assert_int_eq(x->kind, y->kind);
        ck_assert_int_eq(x->from, y->from);
        ck_assert_int_eq(x->to, y->to);
        ck_assert_mem_eq(&x->stat, &y->stat, sizeof(double));
        ck_assert_mem_eq(&x->threshold, &y->threshold, sizeof(double));
        ck_assert_int_eq(x->n_losses, y->n_losses);
        ck_assert_mem_eq(x->losses, y->losses, sizeof(float) * (size_t)x->n_losses);
    }
}

/* Bit-identical predictions (labels, experts, confidences, probabilities)
 * of two snapshots on 600 inputs of the three tasks. */
static void snapshots_predict_alike(const struct tame_snapshot *sa, const struct tame_snapshot *sb)
{
    struct tame_predict_work *wa, *wb;
    ck_assert_int_eq(tame_predict_work_new(sa, 50, &wa), 0);
    ck_assert_int_eq(tame_predict_work_new(sb, 50, &wb), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 77);
    float x[200 * SYNTH_DIM], pa[200 * CLASSES], pb[200 * CLASSES];
    int y[200];
    struct tame_prediction oa[200], ob[200];
    for (int t = 0; t < 3; t++) {
        synth_batch(&r, t, PER_TASK, true, x, y, 200);
        ck_assert_int_eq(tame_snapshot_predict(sa, wa, x, 200, -1, oa, pa), 0);
        ck_assert_int_eq(tame_snapshot_predict(sb, wb, x, 200, -1, ob, pb), 0);
        ck_assert_mem_eq(pa, pb, sizeof(pa));
        for (int i = 0; i < 200; i++) {
            ck_assert_int_eq(oa[i].label, ob[i].label);
            ck_assert_int_eq(oa[i].expert, ob[i].expert);
            ck_assert_mem_eq(&oa[i].confidence, &ob[i].confidence, sizeof(float));
        }
    }
    tame_predict_work_free(wa);
    tame_predict_work_free(wb);
}

static void predictions_equal(struct tame_learner *a, struct tame_learner *b)
{
    struct tame_snapshot *sa, *sb;
    ck_assert_int_eq(tame_learner_snapshot(a, &sa), 0);
    ck_assert_int_eq(tame_learner_snapshot(b, &sb), 0);
    snapshots_predict_alike(sa, sb);
    tame_snapshot_free(sa);
    tame_snapshot_free(sb);
}

/* A copy of l through tame_learner_save and tame_learner_load, which must
 * read back every byte written. */
static struct tame_learner *reloaded(struct tame_learner *l)
{
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    tame_learner_save(l, &w);
    ck_assert_int_eq(w.err, 0);
    struct tame_rbuf rb;
    tame_rbuf_init(&rb, w.data, w.len);
    struct tame_learner *copy;
    ck_assert_int_eq(tame_learner_load(&rb, &copy), 0);
    ck_assert_uint_eq(tame_rbuf_left(&rb), 0);
    tame_wbuf_done(&w);
    return copy;
}

/* A snapshot copies only the networks that changed since the learner's
 * last one (pruned experts do not, the active one does after a step) and
 * never serves a stale one: it predicts exactly as a snapshot of a reloaded
 * copy, which shares nothing, even after its learner is gone. */
START_TEST(snapshots_share_unchanged_networks_and_never_stale_ones)
{
    struct tame_params p = test_params(5);
    p.expert_sparsity = 0.98f; /* the default: sparse enough for compressed rows */
    struct tame_learner *l, *copy;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 400);
    for (int t = 0; t < 3; t++) feed(l, &r, t, 300, NULL);
    ck_assert_int_eq(tame_learner_train_selector(l), 0);
    struct tame_info info;
    tame_learner_info(l, &info);
    ck_assert_int_eq(info.n_experts, 3);

    struct tame_snapshot *s1, *s2, *s3, *fresh;
    ck_assert_int_eq(tame_learner_snapshot(l, &s1), 0);
    struct tame_frozen *fr[3], *fsel = l->frozen_selector;
    ck_assert_ptr_nonnull(fsel);
    int pruned = 0;
    for (int k = 0; k < 3; k++) {
        fr[k] = l->experts[k]->frozen;
        ck_assert_ptr_nonnull(fr[k]);
        ck_assert_ptr_ne(fr[k]->net, l->experts[k]->net);
        /* Pruned experts forward over compressed rows, the others never. */
        int compressed = 0;
        for (int j = 0; j < fr[k]->net->n_layers; j++) compressed += fr[k]->net->sparse[j] != NULL;
        if (l->experts[k]->pruned) {
            pruned++;
            ck_assert_int_ge(compressed, 1);
        } else {
            ck_assert_int_eq(compressed, 0);
        }
    }
    ck_assert_int_ge(pruned, 1);
    ck_assert_int_eq(tame_learner_snapshot(l, &s2), 0);
    for (int k = 0; k < 3; k++) {
        ck_assert_ptr_eq(l->experts[k]->frozen, fr[k]);
        ck_assert_int_eq(atomic_load(&fr[k]->refs), 3); /* the learner, s1, s2 */
    }
    ck_assert_ptr_eq(l->frozen_selector, fsel);

    feed(l, &r, 2, 1, NULL); /* task 2 is the active expert's */
    tame_learner_info(l, &info);
    ck_assert_int_eq(tame_learner_snapshot(l, &s3), 0);
    for (int k = 0; k < 3; k++) {
        if (k == info.active) ck_assert_ptr_ne(l->experts[k]->frozen, fr[k]);
        else ck_assert_ptr_eq(l->experts[k]->frozen, fr[k]);
        /* The size reported is the frozen copy's count, which is current. */
        struct tame_expert_info ei;
        ck_assert_int_eq(tame_learner_expert_info(l, k, &ei), 0);
        ck_assert_uint_eq(ei.nonzero_params, nn_mlp_nonzero(l->experts[k]->net));
    }
    ck_assert_ptr_eq(l->frozen_selector, fsel);

    copy = reloaded(l);
    ck_assert_int_eq(tame_learner_snapshot(copy, &fresh), 0);
    tame_snapshot_free(s1);
    tame_snapshot_free(s2);
    tame_learner_free(l);
    snapshots_predict_alike(s3, fresh);
    tame_snapshot_free(s3);
    tame_snapshot_free(fresh);
    tame_learner_free(copy);
}
END_TEST

/* The stream 0,1,0,2 (300 batches each) cut at `cut` batches. */
static void stream_part(struct tame_learner *l, struct tame_rng *r, int from, int to, struct run *run)
{
    static const int order[] = {0, 1, 0, 2};
    float x[BS * SYNTH_DIM];
    int y[BS];
    for (int b = from; b < to; b++) {
        synth_batch(r, order[b / 300], PER_TASK, true, x, y, BS);
        ck_assert_int_eq(tame_learner_step(l, x, y, BS), 0);
        run_collect(l, run);
        if (b == 700) { /* a selector mid-stream, as the daemon would */
            ck_assert_int_eq(tame_learner_train_selector(l), 0);
            run_collect(l, run);
        }
    }
}

START_TEST(save_load_continue_equals_never_saving)
{
    const int cuts[] = {150, 302, 650, 701, 1000};
    struct tame_params p = test_params(6);
    /* Reference: never saved. */
    struct tame_learner *ref;
    ck_assert_int_eq(tame_learner_new(&p, &ref), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 500);
    struct run ref_run = {0};
    stream_part(ref, &r, 0, 1200, &ref_run);
    ck_assert_int_eq(tame_learner_train_selector(ref), 0);
    run_collect(ref, &ref_run);

    for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
        struct tame_learner *l;
        ck_assert_int_eq(tame_learner_new(&p, &l), 0);
        tame_rng_seed(&r, 500);
        struct run run = {0};
        stream_part(l, &r, 0, cuts[c], &run);
        struct tame_learner *back = reloaded(l);
        tame_learner_free(l);
        l = back;
        stream_part(l, &r, cuts[c], 1200, &run);
        ck_assert_int_eq(tame_learner_train_selector(l), 0);
        run_collect(l, &run);
        events_equal(&ref_run, &run);
        predictions_equal(ref, l);
        free(run.ev);
        tame_learner_free(l);
    }
    ck_assert_int_ge(count_kind(&ref_run, TAME_EV_REUSE), 1);
    free(ref_run.ev);
    tame_learner_free(ref);
}
END_TEST

/* A checkpoint holds a selector job in flight as its inputs: run after a
 * restart, it trains and installs the same selector as the original. */
START_TEST(a_saved_selector_job_trains_the_same_selector)
{
    struct tame_params p = test_params(6);
    struct tame_learner *a;
    ck_assert_int_eq(tame_learner_new(&p, &a), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 501);
    struct run ra = {0};
    stream_part(a, &r, 0, 1000, &ra);
    struct tame_selector_job *job;
    ck_assert_int_eq(tame_selector_job_new(a, &job), 0);
    /* The state a checkpoint writes: the learner after taking the job, and
     * the job's inputs. */
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    tame_learner_save(a, &w);
    size_t learner_len = w.len;
    tame_selector_job_save(job, &w);
    ck_assert_int_eq(w.err, 0);
    struct tame_rbuf rb;
    tame_rbuf_init(&rb, w.data, w.len);
    struct tame_learner *b;
    struct tame_selector_job *again;
    ck_assert_int_eq(tame_learner_load(&rb, &b), 0);
    ck_assert_int_eq(tame_selector_job_load(&rb, &p, &again), 0);
    ck_assert_uint_eq(tame_rbuf_left(&rb), 0);
    ck_assert_int_eq(tame_selector_job_run(job), 0);
    ck_assert_int_eq(tame_selector_job_run(again), 0);
    ck_assert_int_eq(tame_learner_install_selector(a, job), 0);
    ck_assert_int_eq(tame_learner_install_selector(b, again), 0);
    predictions_equal(a, b);
    /* Damage is refused: the magic, then a tag past the expert count. */
    uint8_t *bad = malloc(w.len);
    memcpy(bad, w.data, w.len);
    bad[learner_len] ^= 1;
    tame_rbuf_init(&rb, bad + learner_len, w.len - learner_len);
    struct tame_selector_job *none = NULL;
    ck_assert_int_eq(tame_selector_job_load(&rb, &p, &none), TAME_E_CORRUPT);
    memcpy(bad, w.data, w.len);
    bad[w.len - 4] = 0x7f; /* the last tag (little-endian) becomes 127 */
    tame_rbuf_init(&rb, bad + learner_len, w.len - learner_len);
    ck_assert_int_eq(tame_selector_job_load(&rb, &p, &none), TAME_E_CORRUPT);
    ck_assert_ptr_null(none);
    free(bad);
    tame_wbuf_done(&w);
    tame_selector_job_free(job);
    tame_selector_job_free(again);
    free(ra.ev);
    tame_learner_free(a);
    tame_learner_free(b);
}
END_TEST

START_TEST(two_threads_give_bit_identical_results)
{
    struct tame_params p = test_params(6);
    struct tame_learner *one, *two;
    ck_assert_int_eq(tame_learner_new(&p, &one), 0);
    ck_assert_int_eq(tame_learner_new(&p, &two), 0);
    ck_assert_int_eq(tame_learner_set_threads(two, 2), 0);
    ck_assert_int_eq(tame_learner_set_threads(two, 0), TAME_E_RANGE);
    struct tame_rng r1, r2;
    tame_rng_seed(&r1, 500);
    tame_rng_seed(&r2, 500);
    struct run run1 = {0}, run2 = {0};
    stream_part(one, &r1, 0, 1200, &run1);
    stream_part(two, &r2, 0, 1200, &run2);
    ck_assert_int_eq(tame_learner_train_selector(one), 0);
    ck_assert_int_eq(tame_learner_train_selector(two), 0);
    run_collect(one, &run1);
    run_collect(two, &run2);
    ck_assert_int_ge(count_kind(&run1, TAME_EV_DETECT), 3);
    events_equal(&run1, &run2);
    predictions_equal(one, two);
    struct tame_wbuf w1, w2;
    tame_wbuf_init(&w1);
    tame_wbuf_init(&w2);
    tame_learner_save(one, &w1);
    tame_learner_save(two, &w2);
    ck_assert_uint_eq(w1.len, w2.len);
    ck_assert_mem_eq(w1.data, w2.data, w1.len);
    tame_wbuf_done(&w1);
    tame_wbuf_done(&w2);
    free(run1.ev);
    free(run2.ev);
    tame_learner_free(one);
    tame_learner_free(two);
}
END_TEST

START_TEST(corrupt_state_is_refused)
{
    struct tame_params p = test_params(7);
    p.selector_capacity = 50;
    p.expert_capacity = 20;
    struct tame_learner *l;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 600);
    feed(l, &r, 0, 40, NULL);
    feed(l, &r, 1, 40, NULL);
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    tame_learner_save(l, &w);
    /* Flip bytes across the blob: none loads. */
    for (size_t i = 0; i < w.len; i += 37) {
        w.data[i] ^= 0x5a;
        struct tame_rbuf rb;
        tame_rbuf_init(&rb, w.data, w.len);
        struct tame_learner *bad = NULL;
        ck_assert_int_lt(tame_learner_load(&rb, &bad), 0);
        ck_assert_ptr_null(bad);
        w.data[i] ^= 0x5a;
    }
    struct tame_rbuf rb;
    tame_rbuf_init(&rb, w.data, w.len - 1);
    struct tame_learner *bad = NULL;
    ck_assert_int_eq(tame_learner_load(&rb, &bad), TAME_E_CORRUPT);
    tame_wbuf_done(&w);
    tame_learner_free(l);
}
END_TEST

START_TEST(same_seed_same_events_other_seed_other_weights)
{
    struct run runs[3] = {{0}};
    size_t nz[3];
    for (int i = 0; i < 3; i++) {
        struct tame_params p = test_params(i < 2 ? 8 : 9);
        struct tame_learner *l;
        ck_assert_int_eq(tame_learner_new(&p, &l), 0);
        struct tame_rng r;
        tame_rng_seed(&r, 700);
        feed(l, &r, 0, 200, &runs[i]);
        feed(l, &r, 1, 200, &runs[i]);
        feed(l, &r, 0, 200, &runs[i]);
        struct tame_expert_info ei;
        tame_learner_expert_info(l, 1, &ei);
        nz[i] = ei.nonzero_params;
        tame_learner_free(l);
    }
    events_equal(&runs[0], &runs[1]);
    ck_assert_uint_eq(nz[0], nz[1]);
    /* Another seed gives other weights: its losses differ. */
    ck_assert_uint_gt(runs[2].n_ev, 0);
    ck_assert(runs[2].ev[runs[2].n_ev - 1].losses[0] != runs[0].ev[runs[0].n_ev - 1].losses[0]);
    for (int i = 0; i < 3; i++) free(runs[i].ev);
}
END_TEST

START_TEST(bad_and_nonfinite_batches_change_nothing)
{
    struct tame_params p = test_params(10);
    struct tame_learner *l;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 800);
    feed(l, &r, 0, 20, NULL);
    struct tame_wbuf before, after;
    tame_wbuf_init(&before);
    tame_learner_save(l, &before);

    float x[BS * SYNTH_DIM];
    int y[BS];
    synth_batch(&r, 0, PER_TASK, true, x, y, BS);
    y[3] = CLASSES;
    ck_assert_int_eq(tame_learner_step(l, x, y, BS), TAME_E_RANGE);
    y[3] = -1;
    ck_assert_int_eq(tame_learner_step(l, x, y, BS), TAME_E_RANGE);
    y[3] = 0;
    ck_assert_int_eq(tame_learner_step(l, x, y, 0), TAME_E_RANGE);
    ck_assert_int_eq(tame_learner_step(l, x, y, BS + 1), TAME_E_RANGE);
    tame_wbuf_init(&after);
    tame_learner_save(l, &after);
    ck_assert_uint_eq(before.len, after.len);
    ck_assert_mem_eq(before.data, after.data, before.len);
    tame_wbuf_done(&after);

    /* NaN and Inf inputs, and inputs so large the loss overflows. */
    const float poison[] = {NAN, INFINITY, -INFINITY, 3e38f};
    for (int k = 0; k < 4; k++) {
        x[5] = poison[k];
        int rc = tame_learner_step(l, x, y, BS);
        if (k < 3) ck_assert_int_eq(rc, TAME_E_NONFINITE);
        struct tame_info info;
        tame_learner_info(l, &info);
        /* Every weight is still finite, whatever happened. */
        struct tame_snapshot *s;
        ck_assert_int_eq(tame_learner_snapshot(l, &s), 0);
        struct tame_predict_work *w;
        ck_assert_int_eq(tame_predict_work_new(s, BS, &w), 0);
        float probs[BS * CLASSES];
        struct tame_prediction out[BS];
        x[5] = 0;
        ck_assert_int_eq(tame_snapshot_predict(s, w, x, BS, -1, out, probs), 0);
        for (int i = 0; i < BS * CLASSES; i++) ck_assert(isfinite(probs[i]));
        tame_predict_work_free(w);
        tame_snapshot_free(s);
        if (k < 3) ck_assert_uint_eq(info.nonfinite_batches, (uint64_t)k + 1);
    }
    tame_wbuf_done(&before);
    tame_learner_free(l);
}
END_TEST

START_TEST(update_that_would_overflow_is_refused_and_counted)
{
    /* A weight near FLT_MAX whose input is 0 keeps the loss finite, but its
     * momentum would carry it past the float range: the step consumes the
     * batch, refuses the update whole and counts it. */
    struct tame_params p = test_params(14);
    struct tame_learner *l;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 1200);
    feed(l, &r, 0, 20, NULL);
    float x[BS * SYNTH_DIM];
    int y[BS];
    synth_batch(&r, 0, PER_TASK, true, x, y, BS);
    for (int i = 0; i < BS; i++) x[i * SYNTH_DIM] = 0.0f; /* feature 0 silent */
    struct nn_mlp *net = l->experts[l->active]->net;
    size_t w0 = net->layer[0].w_off; /* weight of unit 0 on feature 0 */
    net->param[w0] = -3.3e38f;
    net->vel[w0] = 3e38f;
    float *before = malloc(net->n_params * sizeof(float));
    memcpy(before, net->param, net->n_params * sizeof(float));
    struct tame_info info0, info1;
    tame_learner_info(l, &info0);
    ck_assert_int_eq(tame_learner_step(l, x, y, BS), 0);
    tame_learner_info(l, &info1);
    ck_assert_uint_eq(info1.nonfinite_updates, info0.nonfinite_updates + 1);
    ck_assert_uint_eq(info1.nonfinite_batches, info0.nonfinite_batches);
    ck_assert_uint_eq(info1.batches, info0.batches + 1);
    ck_assert_uint_eq(info1.samples_trained, info0.samples_trained);
    net = l->experts[l->active]->net;
    ck_assert_mem_eq(before, net->param, net->n_params * sizeof(float));
    free(before);
    tame_learner_free(l);
}
END_TEST

START_TEST(allocation_failures_are_clean_and_change_nothing)
{
    struct tame_params p = test_params(11);
    p.selector_capacity = 100;
    p.expert_capacity = 30;
    p.selector_epochs = 2;
    struct tame_learner *base;
    ck_assert_int_eq(tame_learner_new(&p, &base), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 900);
    feed(base, &r, 0, 150, NULL);
    feed(base, &r, 1, 150, NULL);
    struct tame_info info;
    tame_learner_info(base, &info);
    ck_assert_int_eq(info.n_experts, 2);
    /* Find the batch of a new task on which the learner detects, spawns
     * and prunes (the path with the most allocations): the step under test
     * replays it from the state just before. */
    struct tame_wbuf blob;
    tame_wbuf_init(&blob);
    float x[BS * SYNTH_DIM];
    int y[BS];
    for (int tries = 0; tries < 10; tries++) {
        tame_wbuf_done(&blob);
        tame_wbuf_init(&blob);
        tame_learner_save(base, &blob);
        synth_batch(&r, 2, PER_TASK, true, x, y, BS);
        ck_assert_int_eq(tame_learner_step(base, x, y, BS), 0);
        tame_learner_info(base, &info);
        if (info.n_experts == 3) break;
    }
    ck_assert_int_eq(info.n_experts, 3);
    struct tame_learner *before;
    struct tame_rbuf rb0;
    tame_rbuf_init(&rb0, blob.data, blob.len);
    ck_assert_int_eq(tame_learner_load(&rb0, &before), 0);
    tame_learner_free(base);
    base = before;
    long live = tame_alloc_live();

    int failures = 0;
    for (long n = 0;; n++) {
        struct tame_learner *a = NULL, *b = NULL;
        struct tame_snapshot *s = NULL;
        struct tame_predict_work *w = NULL;
        struct tame_selector_job *job = NULL;
        struct tame_rbuf rb;
        tame_rbuf_init(&rb, blob.data, blob.len);
        tame_alloc_fail_at(n, false);
        int rc[6];
        rc[0] = tame_learner_new(&p, &a);
        rc[1] = tame_learner_load(&rb, &b);
        /* Of the fresh copy: a learner keeps its snapshot's frozen networks
         * for the next one, and b is freed before s, which must keep them. */
        rc[2] = b ? tame_learner_snapshot(b, &s) : 0;
        rc[3] = s ? tame_predict_work_new(s, 16, &w) : 0;
        rc[4] = tame_selector_job_new(base, &job);
        rc[5] = b ? tame_learner_step(b, x, y, BS) : 0;
        if (b && rc[5] == 0) {
            struct tame_info bi;
            tame_learner_info(b, &bi);
            ck_assert_int_eq(bi.n_experts, 3);
        }
        long seen = tame_alloc_count();
        tame_alloc_fail_at(-1, false);
        int bad = 0;
        for (int i = 0; i < 6; i++) {
            ck_assert_msg(rc[i] == 0 || rc[i] == TAME_E_NOMEM, "n=%ld call %d rc=%d", n, i, rc[i]);
            bad += rc[i] != 0;
        }
        if (b && rc[5] == TAME_E_NOMEM) {
            /* A failed step left the learner exactly as loaded. */
            struct tame_wbuf again;
            tame_wbuf_init(&again);
            tame_learner_save(b, &again);
            ck_assert_uint_eq(again.len, blob.len);
            ck_assert_mem_eq(again.data, blob.data, blob.len);
            tame_wbuf_done(&again);
        }
        tame_learner_free(a);
        tame_learner_free(b);
        tame_predict_work_free(w);
        tame_snapshot_free(s);
        tame_selector_job_free(job);
        ck_assert_int_eq(tame_alloc_live(), live);
        if (n >= seen) break;
        ck_assert_int_eq(bad, 1);
        failures++;
    }
    ck_assert_int_gt(failures, 50);
    tame_wbuf_done(&blob);
    tame_learner_free(base);
}
END_TEST

START_TEST(params_are_validated)
{
    struct tame_params p = test_params(1);
    const char *field = NULL;
    ck_assert_int_eq(tame_params_validate(&p, &field), 0);
    p.alpha = 0;
    ck_assert_int_eq(tame_params_validate(&p, &field), TAME_E_RANGE);
    ck_assert_str_eq(field, "alpha");
    p = test_params(1);
    p.max_experts = TAME_MAX_EXPERTS + 1;
    ck_assert_int_eq(tame_params_validate(&p, &field), TAME_E_RANGE);
    ck_assert_str_eq(field, "max_experts");
    p = test_params(1);
    p.lr = NAN;
    struct tame_learner *l = NULL;
    ck_assert_int_eq(tame_learner_new(&p, &l), TAME_E_RANGE);
    ck_assert_ptr_null(l);
}
END_TEST

START_TEST(fresh_expert_predicts_among_the_labels_it_has_seen)
{
    /* Two batches: still held back for attribution, yet predictions are
     * restricted to their labels, not spread over all eight. */
    struct tame_params p = test_params(13);
    struct tame_learner *l;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 1100);
    feed(l, &r, 1, 2, NULL);
    struct tame_expert_info ei;
    ck_assert_int_eq(tame_learner_expert_info(l, 0, &ei), 0);
    for (int j = 0; j < CLASSES; j++) ck_assert_int_eq(ei.labels[j], 0); /* nothing committed yet */
    struct tame_snapshot *s;
    ck_assert_int_eq(tame_learner_snapshot(l, &s), 0);
    struct tame_predict_work *w;
    ck_assert_int_eq(tame_predict_work_new(s, BS, &w), 0);
    float x[BS * SYNTH_DIM], probs[BS * CLASSES];
    int y[BS];
    struct tame_prediction out[BS];
    synth_batch(&r, 1, PER_TASK, true, x, y, BS);
    ck_assert_int_eq(tame_snapshot_predict(s, w, x, BS, -1, out, probs), 0);
    for (int i = 0; i < BS; i++) {
        ck_assert(out[i].label == 2 || out[i].label == 3);
        for (int j = 0; j < CLASSES; j++)
            if (j != 2 && j != 3) ck_assert_float_eq(probs[i * CLASSES + j], 0.0f);
    }
    tame_predict_work_free(w);
    tame_snapshot_free(s);
    tame_learner_free(l);
}
END_TEST

/* Selector samples that name no existing expert. */
static int selector_tags_past(const struct tame_learner *l, int n_experts)
{
    int n = tame_reservoir_size(l->sel_buf), bad = 0;
    int *tag = malloc((size_t)(n ? n : 1) * sizeof(int));
    tame_reservoir_copy(l->sel_buf, NULL, NULL, tag);
    for (int i = 0; i < n; i++) bad += tag[i] < 0 || tag[i] >= n_experts;
    free(tag);
    return bad;
}

/* A newcomer on probation may already own selector samples: at a spawn the
 * old expert's warning zone is handed to it, and the oldest of those
 * batches reaches the buffers at once.  When it is retired (its data turns
 * out to be an existing expert's task), those samples must go to that
 * expert: left naming the removed one, they made the next selector
 * retrain stop the process on an assertion (bench/soak.sh found it).  The
 * hand-over is made here by offering the newcomer samples directly, on a
 * stream that spawns and retires one (task 1 interleaved into task 0). */
START_TEST(a_retired_newcomer_leaves_no_selector_sample_behind)
{
    struct tame_params p = test_params(1);
    struct tame_learner *l;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 501);
    float x[BS * SYNTH_DIM];
    int y[BS];
    int retires = 0, handed = 0;
    for (int b = 0; b < 300 + 20 + 3 + 60; b++) {
        int task = b < 300 ? 0 : b < 320 ? b % 3 == 0 : b < 323 ? 1 : 0;
        synth_batch(&r, task, PER_TASK, true, x, y, BS);
        int before = l->n_experts;
        ck_assert_int_eq(tame_learner_step(l, x, y, BS), 0);
        if (l->n_experts > before && before > 0 && !handed) {
            /* just spawned, on probation: give it what the hand-over would */
            for (int i = 0; i < 4; i++)
                ck_assert_int_eq(tame_reservoir_offer(l->sel_buf, x + i * SYNTH_DIM, y[i], before, 0.999), 0);
            handed = tame_reservoir_tag_count(l->sel_buf, before);
            ck_assert_int_gt(handed, 0);
        }
        retires += l->n_experts < before;
        ck_assert_msg(selector_tags_past(l, l->n_experts) == 0, "batch %d: %d selector samples name no expert", b,
                      selector_tags_past(l, l->n_experts));
    }
    ck_assert_int_gt(handed, 0);
    ck_assert_int_ge(retires, 1);
    /* and a selector trains on what is left */
    struct tame_info info;
    tame_learner_info(l, &info);
    if (info.n_experts >= 2) {
        struct tame_selector_job *job;
        ck_assert_int_eq(tame_selector_job_new(l, &job), 0);
        ck_assert_int_eq(tame_selector_job_run(job), 0);
        tame_selector_job_free(job);
    }
    tame_learner_free(l);
}
END_TEST

/* A checkpoint from before that fix may hold selector samples naming a
 * removed expert: a selector job leaves them out instead of training on
 * an output that does not exist. */
START_TEST(a_selector_job_leaves_out_samples_of_a_removed_expert)
{
    struct tame_params p = test_params(2);
    struct tame_learner *l;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 210);
    feed(l, &r, 0, 300, NULL);
    feed(l, &r, 1, 100, NULL);
    struct tame_info info;
    tame_learner_info(l, &info);
    ck_assert_int_eq(info.n_experts, 2);
    float x[SYNTH_DIM] = {0};
    ck_assert_int_eq(tame_reservoir_offer(l->sel_buf, x, 0, info.n_experts, 0.999), 0);
    ck_assert_int_eq(selector_tags_past(l, info.n_experts), 1);
    struct tame_selector_job *job;
    ck_assert_int_eq(tame_selector_job_new(l, &job), 0);
    ck_assert_int_eq(tame_selector_job_run(job), 0);
    ck_assert_int_eq(tame_learner_install_selector(l, job), 0);
    tame_selector_job_free(job);
    tame_learner_free(l);
}
END_TEST

START_TEST(expert_limit_falls_back_to_reuse)
{
    struct tame_params p = test_params(12);
    p.max_experts = 2;
    struct tame_learner *l;
    ck_assert_int_eq(tame_learner_new(&p, &l), 0);
    struct tame_rng r;
    tame_rng_seed(&r, 1000);
    struct run run = {0};
    for (int t = 0; t < 3; t++) feed(l, &r, t, 200, &run);
    struct tame_info info;
    tame_learner_info(l, &info);
    ck_assert_int_eq(info.n_experts, 2);
    ck_assert_int_eq(count_kind(&run, TAME_EV_SPAWN), 2);
    ck_assert_int_ge(count_kind(&run, TAME_EV_REUSE), 1);
    free(run.ev);
    tame_learner_free(l);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tame");
    TCase *tc = tcase_create("tame");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, no_detection_on_a_long_stationary_stream);
    tcase_add_test(tc, abrupt_shift_is_detected_within_five_batches_and_spawns);
    tcase_add_test(tc, recurring_task_reuses_its_expert_and_new_task_spawns);
    tcase_add_test(tc, three_task_stream_three_experts_and_routing_over_95_percent);
    tcase_add_test(tc, snapshots_share_unchanged_networks_and_never_stale_ones);
    tcase_add_test(tc, save_load_continue_equals_never_saving);
    tcase_add_test(tc, a_saved_selector_job_trains_the_same_selector);
    tcase_add_test(tc, two_threads_give_bit_identical_results);
    tcase_add_test(tc, corrupt_state_is_refused);
    tcase_add_test(tc, same_seed_same_events_other_seed_other_weights);
    tcase_add_test(tc, bad_and_nonfinite_batches_change_nothing);
    tcase_add_test(tc, update_that_would_overflow_is_refused_and_counted);
    tcase_add_test(tc, allocation_failures_are_clean_and_change_nothing);
    tcase_add_test(tc, params_are_validated);
    tcase_add_test(tc, expert_limit_falls_back_to_reuse);
    tcase_add_test(tc, fresh_expert_predicts_among_the_labels_it_has_seen);
    tcase_add_test(tc, a_retired_newcomer_leaves_no_selector_sample_behind);
    tcase_add_test(tc, a_selector_job_leaves_out_samples_of_a_removed_expert);
    suite_add_tcase(s, tc);
    return check_run(s);
}
