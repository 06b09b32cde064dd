/* test_nn.c: the MLP, its head, SGD, pruning and serialisation, checked
 * against finite differences, a plain-C GEMM and hand-computed values. */
#include "tame/nn.h"

#include "check_run.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void fill_uniform(struct tame_rng *r, float *v, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) v[i] = lo + (hi - lo) * (float)tame_rng_uniform(r);
}

START_TEST(gemm_matches_reference_on_odd_shapes)
{
    struct tame_rng r;
    tame_rng_seed(&r, 11);
    const int shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {17, 13, 129}, {128, 100, 784}, {33, 1, 65}};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int m = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                /* Leading dimensions one wider than needed catch lda mix-ups. */
                int lda = (ta ? m : k) + 1, ldb = (tb ? k : n) + 1, ldc = n + 2;
                int rows_a = ta ? k : m, rows_b = tb ? n : k;
                float *a = malloc(sizeof(float) * rows_a * lda);
                float *b = malloc(sizeof(float) * rows_b * ldb);
                float *c1 = malloc(sizeof(float) * m * ldc), *c2 = malloc(sizeof(float) * m * ldc);
                fill_uniform(&r, a, (size_t)rows_a * lda, -1, 1);
                fill_uniform(&r, b, (size_t)rows_b * ldb, -1, 1);
                fill_uniform(&r, c1, (size_t)m * ldc, -1, 1);
                memcpy(c2, c1, sizeof(float) * m * ldc);
                nn_gemm(ta, tb, m, n, k, 0.7f, a, lda, b, ldb, 0.3f, c1, ldc);
                nn_gemm_ref(ta, tb, m, n, k, 0.7f, a, lda, b, ldb, 0.3f, c2, ldc);
                for (int i = 0; i < m; i++)
                    for (int j = 0; j < ldc; j++) {
                        float x = c1[i * ldc + j], y = c2[i * ldc + j];
                        ck_assert_msg(fabsf(x - y) <= 1e-4f * (1 + sqrtf((float)k)),
                                      "shape %d (ta=%d tb=%d) [%d,%d]: %g vs %g", (int)s, ta, tb, i, j,
                                      x, y);
                    }
                free(a);
                free(b);
                free(c1);
                free(c2);
            }
    }
}
END_TEST

static double loss_of(struct nn_mlp *m, struct nn_work *w, const float *x, const int *y, int n)
{
    nn_mlp_forward(m, w, x, n);
    return nn_head_loss(w, y, n, NULL);
}

START_TEST(gradients_match_finite_differences_for_every_layer)
{
    /* Three layers, so the first, a middle and the last layer are covered,
     * each weight and each bias. */
    const int dims[] = {6, 7, 5, 4};
    const int n = 9;
    struct tame_rng r;
    tame_rng_seed(&r, 5);
    struct nn_mlp *m;
    struct nn_work *w;
    ck_assert_int_eq(nn_mlp_new(dims, 4, &r, &m), 0);
    ck_assert_int_eq(nn_work_new(m, n, &w), 0);
    /* Larger weights than the default init so the head is not flat. */
    for (size_t i = 0; i < m->n_params; i++) m->param[i] *= 3.0f;
    float x[9 * 6];
    int y[9];
    fill_uniform(&r, x, sizeof(x) / sizeof(x[0]), -2, 2);
    for (int i = 0; i < n; i++) y[i] = (int)tame_rng_below(&r, 4);

    nn_mlp_forward(m, w, x, n);
    float dl[9 * 4];
    nn_head_loss(w, y, n, dl);
    nn_mlp_backward(m, w, x, n, dl);

    const float eps = 1e-3f;
    int checked = 0;
    for (size_t i = 0; i < m->n_params; i++) {
        float keep = m->param[i];
        m->param[i] = keep + eps;
        double lp = loss_of(m, w, x, y, n);
        m->param[i] = keep - eps;
        double lm = loss_of(m, w, x, y, n);
        m->param[i] = keep;
        double fd = (lp - lm) / (2 * eps);
        ck_assert_msg(fabs(fd - m->grad[i]) <= 2e-3 + 2e-2 * fabs(fd),
                      "param %zu: analytic %g, numeric %g", i, (double)m->grad[i], fd);
        checked++;
    }
    ck_assert_int_eq(checked, (int)m->n_params);
    nn_work_free(w);
    nn_mlp_free(m);
}
END_TEST

/* Compare the head's analytic dL/dz with central differences on the
 * logits left in `w` by the last forward pass; returns the loss. */
static double check_head_gradient(struct nn_work *w, const int *y, int n, const uint8_t *active,
                                  double tol, const char *what)
{
    const int c = w->width[w->n_layers - 1];
    float *z = w->act[w->n_layers - 1];
    float dz[64];
    ck_assert_int_le(n * c, 64);
    double loss = nn_head_loss_masked(w, y, n, active, dz);
    const double eps = 1e-3;
    for (int i = 0; i < n * c; i++) {
        float keep = z[i];
        z[i] = keep + (float)eps;
        double lp = nn_head_loss_masked(w, y, n, active, NULL);
        z[i] = keep - (float)eps;
        double lm = nn_head_loss_masked(w, y, n, active, NULL);
        z[i] = keep;
        double fd = (lp - lm) / (2 * eps);
        ck_assert_msg(fabs(fd - dz[i]) < tol, "%s, logit %d: %g vs %g", what, i, (double)dz[i], fd);
        if (active && !active[i % c]) ck_assert_float_eq(dz[i], 0.0f);
    }
    nn_head_loss_masked(w, y, n, active, NULL); /* leave w->prob for this z */
    return loss;
}

START_TEST(head_gradient_matches_finite_differences)
{
    /* A one-layer network whose logits we set directly. */
    const int dims[] = {3, 5};
    const int n = 4;
    struct tame_rng r;
    tame_rng_seed(&r, 9);
    struct nn_mlp *m;
    struct nn_work *w;
    ck_assert_int_eq(nn_mlp_new(dims, 2, &r, &m), 0);
    ck_assert_int_eq(nn_work_new(m, n, &w), 0);
    float x[12];
    int y[4] = {0, 4, 2, 2};
    fill_uniform(&r, x, 12, -1, 1);
    nn_mlp_forward(m, w, x, n);
    fill_uniform(&r, w->act[0], 20, -4, 4);

    /* softmax(sigmoid(z)), bounded as DESIGN 2.2 says. */
    double base = check_head_gradient(w, y, n, NULL, 5e-4, "sigmoid head");
    ck_assert_double_ge(base, log(1 + 4 / M_E) - 1e-6);
    ck_assert_double_le(base, log(1 + 4 * M_E) + 1e-6);
    for (int i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < 5; j++) s += w->prob[i * 5 + j];
        ck_assert_double_eq_tol(s, 1.0, 1e-5);
    }
    /* Over a subset of outputs: inactive ones get probability 0, no gradient. */
    const uint8_t active[5] = {1, 0, 1, 1, 1};
    int ym[4] = {0, 4, 2, 3};
    double masked = check_head_gradient(w, ym, n, active, 5e-4, "masked head");
    ck_assert_double_ge(masked, log(1 + 3 / M_E) - 1e-6);
    ck_assert_double_le(masked, log(1 + 3 * M_E) + 1e-6);
    for (int i = 0; i < n; i++) ck_assert_float_eq(w->prob[i * 5 + 1], 0.0f);
    /* Scaled, softmax(3 * sigmoid(z)). */
    w->head_scale = 3.0f;
    double scaled = check_head_gradient(w, y, n, NULL, 1e-3, "scaled head");
    ck_assert_double_ge(scaled, log(1 + 4 * exp(-3.0)) - 1e-6);
    ck_assert_double_le(scaled, log(1 + 4 * exp(3.0)) + 1e-6);
    /* The plain softmax head (the selector's): dL/dz = (p - onehot) / n. */
    w->head = NN_HEAD_SOFTMAX;
    check_head_gradient(w, y, n, NULL, 5e-4, "softmax head");
    nn_work_free(w);
    nn_mlp_free(m);
}
END_TEST

START_TEST(sgd_momentum_and_weight_decay_match_hand_computation)
{
    const int dims[] = {1, 1};
    struct tame_rng r;
    tame_rng_seed(&r, 1);
    struct nn_mlp *m;
    ck_assert_int_eq(nn_mlp_new(dims, 2, &r, &m), 0);
    m->param[0] = 0.5f;  /* w */
    m->param[1] = 0.1f;  /* b */
    struct nn_sgd opt = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 0.01f};
    m->grad[0] = 0.2f;
    m->grad[1] = -0.1f;
    ck_assert_int_eq(nn_sgd_step(m, &opt), 0);
    /* v = 0.2 + 0.01*0.5 = 0.205; w = 0.5 - 0.0205 */
    ck_assert_float_eq_tol(m->vel[0], 0.205f, 1e-7f);
    ck_assert_float_eq_tol(m->param[0], 0.4795f, 1e-7f);
    /* v = -0.1 + 0.001 = -0.099; b = 0.1 + 0.0099 */
    ck_assert_float_eq_tol(m->param[1], 0.1099f, 1e-7f);
    ck_assert_int_eq(nn_sgd_step(m, &opt), 0);
    /* v = 0.9*0.205 + 0.2 + 0.01*0.4795 = 0.389295; w = 0.4795 - 0.0389295 */
    ck_assert_float_eq_tol(m->vel[0], 0.389295f, 1e-6f);
    ck_assert_float_eq_tol(m->param[0], 0.4405705f, 1e-6f);
    /* v = 0.9*-0.099 - 0.1 + 0.01*0.1099 = -0.188001; b = 0.1099 + 0.0188001 */
    ck_assert_float_eq_tol(m->param[1], 0.1287001f, 1e-6f);
    nn_mlp_free(m);
}
END_TEST

START_TEST(nonfinite_update_changes_nothing)
{
    const int dims[] = {4, 3, 2};
    struct tame_rng r;
    tame_rng_seed(&r, 2);
    struct nn_mlp *m;
    struct nn_work *w;
    ck_assert_int_eq(nn_mlp_new(dims, 3, &r, &m), 0);
    ck_assert_int_eq(nn_work_new(m, 2, &w), 0);
    struct nn_sgd opt = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 5e-4f};
    float *before = malloc(m->n_params * sizeof(float));
    memcpy(before, m->param, m->n_params * sizeof(float));

    for (size_t i = 0; i < m->n_params; i++) m->grad[i] = 0.01f;
    m->grad[3] = INFINITY;
    ck_assert_int_eq(nn_sgd_step(m, &opt), TAME_E_NONFINITE);
    ck_assert_mem_eq(before, m->param, m->n_params * sizeof(float));

    /* A gradient so large the weight overflows is refused too. */
    m->grad[3] = 3e38f;
    m->param[3] = -3.3e38f;
    before[3] = -3.3e38f;
    ck_assert_int_eq(nn_sgd_step(m, &opt), TAME_E_NONFINITE);
    ck_assert_mem_eq(before, m->param, m->n_params * sizeof(float));
    m->param[3] = before[3] = 0.1f;

    /* A NaN input gives a NaN loss and trains nothing. */
    float x[8] = {1, 2, NAN, 4, 1, 1, 1, 1};
    int y[2] = {0, 1};
    double loss = -1;
    ck_assert_int_eq(nn_mlp_train_step(m, w, x, y, 2, NULL, &opt, &loss), TAME_E_NONFINITE);
    ck_assert_double_eq(loss, -1);
    ck_assert_mem_eq(before, m->param, m->n_params * sizeof(float));
    free(before);
    nn_work_free(w);
    nn_mlp_free(m);
}
END_TEST

/* Two Gaussian blobs per class in 8 dimensions. */
static void blobs(struct tame_rng *r, float *x, int *y, int n, int d, int classes)
{
    for (int i = 0; i < n; i++) {
        y[i] = (int)tame_rng_below(r, (uint64_t)classes);
        for (int j = 0; j < d; j++) {
            double u1 = tame_rng_uniform(r) + 1e-12, u2 = tame_rng_uniform(r);
            double g = sqrt(-2 * log(u1)) * cos(2 * M_PI * u2);
            x[i * d + j] = (float)((j % classes == y[i] ? 2.0 : 0.0) + 0.5 * g);
        }
    }
}

START_TEST(training_learns_separable_blobs)
{
    const int dims[] = {8, 16, 4};
    struct tame_rng r;
    tame_rng_seed(&r, 3);
    struct nn_mlp *m;
    struct nn_work *w;
    ck_assert_int_eq(nn_mlp_new(dims, 3, &r, &m), 0);
    ck_assert_int_eq(nn_work_new(m, 32, &w), 0);
    struct nn_sgd opt = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 5e-4f};
    float x[32 * 8];
    int y[32];
    double first = 0, last = 0;
    for (int step = 0; step < 300; step++) {
        blobs(&r, x, y, 32, 8, 4);
        double loss;
        ck_assert_int_eq(nn_mlp_train_step(m, w, x, y, 32, NULL, &opt, &loss), 0);
        if (step == 0) first = loss;
        last = loss;
    }
    ck_assert_double_lt(last, first - 0.3);
    blobs(&r, x, y, 32, 8, 4);
    nn_mlp_forward(m, w, x, 32);
    nn_head_probs(w, 32);
    int correct = 0;
    for (int i = 0; i < 32; i++) {
        int best = 0;
        for (int j = 1; j < 4; j++)
            if (w->prob[i * 4 + j] > w->prob[i * 4 + best]) best = j;
        correct += best == y[i];
    }
    ck_assert_int_ge(correct, 30);
    nn_work_free(w);
    nn_mlp_free(m);
}
END_TEST

static size_t zero_weights(const struct nn_mlp *m)
{
    size_t z = 0;
    for (int l = 0; l < m->n_layers; l++)
        for (size_t i = 0; i < (size_t)m->layer[l].in * m->layer[l].out; i++)
            z += m->param[m->layer[l].w_off + i] == 0.0f;
    return z;
}

START_TEST(pruning_reaches_exact_sparsity_and_survives_training)
{
    const int dims[] = {8, 30, 20, 4};
    struct tame_rng r;
    tame_rng_seed(&r, 4);
    struct nn_mlp *m;
    struct nn_work *w;
    ck_assert_int_eq(nn_mlp_new(dims, 4, &r, &m), 0);
    ck_assert_int_eq(nn_work_new(m, 32, &w), 0);
    const double sparsity[] = {0.5, 0.9, 0.98};
    struct nn_sgd opt = {.lr = 0.1f, .momentum = 0.9f, .weight_decay = 5e-4f};
    float x[32 * 8];
    int y[32];
    for (size_t s = 0; s < 3; s++) {
        float largest = 0;
        for (size_t i = 0; i < m->n_params; i++) largest = fmaxf(largest, fabsf(m->param[i]));
        ck_assert_int_eq(nn_mlp_prune(m, sparsity[s]), 0);
        size_t keep = (size_t)llround((1 - sparsity[s]) * (double)m->n_weights);
        ck_assert_uint_eq(zero_weights(m), m->n_weights - keep);
        for (int step = 0; step < 50; step++) {
            blobs(&r, x, y, 32, 8, 4);
            ck_assert_int_eq(nn_mlp_train_step(m, w, x, y, 32, NULL, &opt, NULL), 0);
        }
        /* Pruned weights are still exactly zero (and no more got pruned by
         * accident: kept weights that training moved are non-zero). */
        for (size_t i = 0; i < m->n_params; i++)
            if (m->mask[i] == 0.0f) ck_assert_float_eq(m->param[i], 0.0f);
        ck_assert_uint_ge(zero_weights(m), m->n_weights - keep);
        ck_assert_uint_le(zero_weights(m), m->n_weights - keep + 2);
    }
    /* Biases are never pruned. */
    for (int l = 0; l < m->n_layers; l++)
        for (int j = 0; j < m->layer[l].out; j++) ck_assert_float_eq(m->mask[m->layer[l].b_off + j], 1.0f);
    ck_assert_int_eq(nn_mlp_prune(m, 1.0), TAME_E_INVAL);
    ck_assert_int_eq(nn_mlp_prune(m, -0.1), TAME_E_INVAL);
    nn_work_free(w);
    nn_mlp_free(m);
}
END_TEST

/* A frozen copy keeps the source's version and, for each layer with few
 * enough non-zero weights, compressed rows holding exactly those weights;
 * its forward passes (compressed rows for few input rows, the GEMM for many)
 * agree with the source's.  Every change of the weights gives a new version. */
START_TEST(frozen_copies_compress_sparse_layers_and_forward_alike)
{
    const int dims[] = {40, 30, 20, 5};
    struct tame_rng r;
    tame_rng_seed(&r, 11);
    struct nn_mlp *m, *f, *dense_f;
    struct nn_work *wm, *wf;
    ck_assert_int_eq(nn_mlp_new(dims, 4, &r, &m), 0);
    ck_assert_int_eq(nn_mlp_clone_frozen(m, &dense_f), 0);
    for (int l = 0; l < m->n_layers; l++) ck_assert_ptr_null(dense_f->sparse[l]); /* nothing pruned */
    uint64_t v0 = m->version;
    ck_assert_uint_eq(dense_f->version, v0);
    ck_assert_int_eq(nn_mlp_prune(m, 0.97), 0);
    ck_assert_uint_ne(m->version, v0);
    ck_assert_int_eq(nn_mlp_clone_frozen(m, &f), 0);
    ck_assert_uint_eq(f->version, m->version);
    int compressed = 0;
    for (int l = 0; l < m->n_layers; l++) {
        const struct nn_layer *L = &m->layer[l];
        const float *w = m->param + L->w_off;
        size_t nz = 0, dense = (size_t)L->in * L->out;
        for (size_t i = 0; i < dense; i++) nz += w[i] != 0.0f;
        const struct nn_sparse_rows *s = f->sparse[l];
        ck_assert(nz * 8 <= dense ? s != NULL : s == NULL);
        if (!s) continue;
        compressed++;
        ck_assert_uint_eq(s->start[L->out], nz);
        float *back = calloc(dense, sizeof(float));
        for (int j = 0; j < L->out; j++)
            for (uint32_t k = s->start[j]; k < s->start[j + 1]; k++) {
                ck_assert_uint_lt(s->col[k], (uint32_t)L->in);
                back[(size_t)j * L->in + s->col[k]] = s->val[k];
            }
        ck_assert_mem_eq(back, w, dense * sizeof(float));
        free(back);
    }
    ck_assert_int_ge(compressed, 1);

    ck_assert_int_eq(nn_work_new(m, 64, &wm), 0);
    ck_assert_int_eq(nn_work_new(f, 64, &wf), 0);
    float x[64 * 40];
    fill_uniform(&r, x, 64 * 40, -1.0f, 2.0f);
    const int rows[] = {1, 3, 64};
    for (int t = 0; t < 3; t++) {
        int n = rows[t];
        uint64_t v = m->version;
        nn_mlp_forward(m, wm, x, n);
        nn_mlp_forward(f, wf, x, n);
        ck_assert_uint_eq(m->version, v);
        for (int i = 0; i < n * 5; i++)
            ck_assert_float_eq_tol(nn_work_logits(wf)[i], nn_work_logits(wm)[i],
                                   1e-5f * (1.0f + fabsf(nn_work_logits(wm)[i])));
    }
    /* A training step moves the version on; the frozen copy keeps its own. */
    int y[64];
    blobs(&r, x, y, 64, 40, 5);
    struct nn_sgd opt = {.lr = 0.1f, .momentum = 0.9f};
    uint64_t before = m->version;
    ck_assert_int_eq(nn_mlp_train_step(m, wm, x, y, 64, NULL, &opt, NULL), 0);
    ck_assert_uint_ne(m->version, before);
    ck_assert_uint_eq(f->version, before);
    nn_work_free(wm);
    nn_work_free(wf);
    nn_mlp_free(f);
    nn_mlp_free(dense_f);
    nn_mlp_free(m);
}
END_TEST

START_TEST(serialisation_round_trips_and_detects_corruption)
{
    const int dims[] = {5, 6, 3};
    struct tame_rng r;
    tame_rng_seed(&r, 8);
    struct nn_mlp *m, *back;
    ck_assert_int_eq(nn_mlp_new(dims, 3, &r, &m), 0);
    for (size_t i = 0; i < m->n_params; i++) m->vel[i] = (float)i * 0.01f;
    ck_assert_int_eq(nn_mlp_prune(m, 0.5), 0);
    struct tame_wbuf w;
    tame_wbuf_init(&w);
    nn_mlp_save(m, &w);
    ck_assert_int_eq(w.err, 0);

    struct tame_rbuf rb;
    tame_rbuf_init(&rb, w.data, w.len);
    ck_assert_int_eq(nn_mlp_load(&rb, &back), 0);
    ck_assert_uint_eq(tame_rbuf_left(&rb), 0);
    ck_assert(nn_mlp_same_shape(m, back));
    ck_assert_mem_eq(m->param, back->param, m->n_params * sizeof(float));
    ck_assert_mem_eq(m->vel, back->vel, m->n_params * sizeof(float));
    ck_assert_mem_eq(m->mask, back->mask, m->n_params * sizeof(float));
    /* Saving the loaded copy gives the same bytes. */
    struct tame_wbuf w2;
    tame_wbuf_init(&w2);
    nn_mlp_save(back, &w2);
    ck_assert_uint_eq(w.len, w2.len);
    ck_assert_mem_eq(w.data, w2.data, w.len);
    nn_mlp_free(back);
    tame_wbuf_done(&w2);

    /* Every flipped byte and every truncation is refused. */
    for (size_t i = 0; i < w.len; i++) {
        w.data[i] ^= 0x41;
        tame_rbuf_init(&rb, w.data, w.len);
        back = NULL;
        ck_assert_int_lt(nn_mlp_load(&rb, &back), 0);
        ck_assert_ptr_null(back);
        w.data[i] ^= 0x41;
    }
    for (size_t len = 0; len < w.len; len += 7) {
        tame_rbuf_init(&rb, w.data, len);
        ck_assert_int_eq(nn_mlp_load(&rb, &back), TAME_E_CORRUPT);
    }
    /* Widths the blob cannot hold (65536 x 65536: 16 GB of weights) are
     * refused before anything is allocated for them (found by fuzz-state). */
    uint8_t *wide = malloc(w.len);
    memcpy(wide, w.data, w.len);
    const uint32_t huge = NN_MAX_WIDTH;
    memcpy(wide + 12, &huge, 4); /* magic, version, layers, then dims[0] and dims[1] */
    memcpy(wide + 16, &huge, 4);
    tame_rbuf_init(&rb, wide, w.len);
    long before = tame_alloc_count();
    ck_assert_int_eq(nn_mlp_load(&rb, &back), TAME_E_CORRUPT);
    ck_assert_int_eq(tame_alloc_count(), before);
    free(wide);
    tame_wbuf_done(&w);
    nn_mlp_free(m);
}
END_TEST

START_TEST(allocation_failures_are_clean)
{
    const int dims[] = {5, 6, 3};
    struct tame_rng r;
    struct nn_mlp *m = NULL;
    struct tame_wbuf w;
    tame_rng_seed(&r, 1);
    ck_assert_int_eq(nn_mlp_new(dims, 3, &r, &m), 0);
    ck_assert_int_eq(nn_mlp_prune(m, 0.5), 0);
    tame_wbuf_init(&w);
    nn_mlp_save(m, &w);
    long live = tame_alloc_live();

    int failures = 0;
    for (long n = 0;; n++) {
        struct nn_mlp *a = NULL, *b = NULL, *c = NULL;
        struct nn_work *wk = NULL;
        struct tame_rbuf rb;
        tame_rbuf_init(&rb, w.data, w.len);
        tame_alloc_fail_at(n, false);
        int rc1 = nn_mlp_new(dims, 3, &r, &a);
        int rc2 = nn_mlp_clone(m, &b);
        int rc3 = nn_work_new(m, 16, &wk);
        int rc4 = nn_mlp_load(&rb, &c);
        int rc5 = b ? nn_mlp_prune(b, 0.9) : 0;
        long seen = tame_alloc_count();
        tame_alloc_fail_at(-1, false);
        int rcs[5] = {rc1, rc2, rc3, rc4, rc5};
        int bad = 0;
        for (int i = 0; i < 5; i++) {
            ck_assert(rcs[i] == 0 || rcs[i] == TAME_E_NOMEM);
            bad += rcs[i] != 0;
        }
        ck_assert_int_eq(rc1 == 0, a != NULL);
        ck_assert_int_eq(rc4 == 0, c != NULL);
        nn_mlp_free(a);
        nn_mlp_free(b);
        nn_mlp_free(c);
        nn_work_free(wk);
        ck_assert_int_eq(tame_alloc_live(), live);
        if (n >= seen) break; /* this round failed nothing: all covered */
        ck_assert_int_eq(bad, 1);
        failures++;
    }
    ck_assert_int_gt(failures, 10);
    tame_wbuf_done(&w);
    nn_mlp_free(m);
}
END_TEST

static Suite *nn_suite(void)
{
    Suite *s = suite_create("nn");
    TCase *tc = tcase_create("nn");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, gemm_matches_reference_on_odd_shapes);
    tcase_add_test(tc, gradients_match_finite_differences_for_every_layer);
    tcase_add_test(tc, head_gradient_matches_finite_differences);
    tcase_add_test(tc, sgd_momentum_and_weight_decay_match_hand_computation);
    tcase_add_test(tc, nonfinite_update_changes_nothing);
    tcase_add_test(tc, training_learns_separable_blobs);
    tcase_add_test(tc, pruning_reaches_exact_sparsity_and_survives_training);
    tcase_add_test(tc, frozen_copies_compress_sparse_layers_and_forward_alike);
    tcase_add_test(tc, serialisation_round_trips_and_detects_corruption);
    tcase_add_test(tc, allocation_failures_are_clean);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return check_run(nn_suite());
}
