/* mlp.c: construction, workspaces, forward and backward passes of the MLP.
 * Layer l computes a_l = relu(a_{l-1} W_l^T + b_l) (no ReLU on the last,
 * which gives the logits); one GEMM per layer forward, two backward. */
#include "nn_internal.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

static atomic_uint_fast64_t last_version;

uint64_t nn_next_version(void) { return atomic_fetch_add(&last_version, 1) + 1; }

int nn_mlp_alloc(const int *dims, int n_dims, struct nn_mlp **ret_mlp)
{
    if (n_dims < 2 || n_dims > NN_MAX_LAYERS + 1) return TAME_E_INVAL;
    for (int i = 0; i < n_dims; i++)
        if (dims[i] < 1 || dims[i] > NN_MAX_WIDTH) return TAME_E_INVAL;
    if (dims[n_dims - 1] > NN_MAX_OUTPUTS) return TAME_E_INVAL;

    struct nn_mlp *m = tame_calloc(1, sizeof(*m));
    if (!m) return TAME_E_NOMEM;
    m->n_layers = n_dims - 1;
    m->head_scale = 1.0f;
    m->version = nn_next_version();
    size_t off = 0;
    for (int l = 0; l < m->n_layers; l++) {
        struct nn_layer *L = &m->layer[l];
        L->in = dims[l];
        L->out = dims[l + 1];
        L->w_off = off;
        off += (size_t)L->in * L->out;
        L->b_off = off;
        off += (size_t)L->out;
        m->n_weights += (size_t)L->in * L->out;
    }
    m->n_params = off;
    m->param = tame_calloc(off, sizeof(float));
    m->grad = tame_calloc(off, sizeof(float));
    m->vel = tame_calloc(off, sizeof(float));
    if (!m->param || !m->grad || !m->vel) {
        nn_mlp_free(m);
        return TAME_E_NOMEM;
    }
    *ret_mlp = m;
    return 0;
}

int nn_mlp_new(const int *dims, int n_dims, struct tame_rng *rng, struct nn_mlp **ret_mlp)
{
    struct nn_mlp *m;
    int rc = nn_mlp_alloc(dims, n_dims, &m);
    if (rc < 0) return rc;
    for (int l = 0; l < m->n_layers; l++) {
        const struct nn_layer *L = &m->layer[l];
        double bound = 1.0 / sqrt((double)L->in);
        size_t n = (size_t)L->in * L->out + (size_t)L->out;
        for (size_t i = 0; i < n; i++)
            m->param[L->w_off + i] = (float)((2.0 * tame_rng_uniform(rng) - 1.0) * bound);
    }
    *ret_mlp = m;
    return 0;
}

void nn_mlp_free(struct nn_mlp *mlp)
{
    if (!mlp) return;
    tame_free(mlp->param);
    tame_free(mlp->grad);
    tame_free(mlp->vel);
    tame_free(mlp->mask);
    for (int l = 0; l < NN_MAX_LAYERS; l++) tame_free(mlp->sparse[l]);
    tame_free(mlp);
}

static void mlp_dims(const struct nn_mlp *m, int *dims)
{
    dims[0] = m->layer[0].in;
    for (int l = 0; l < m->n_layers; l++) dims[l + 1] = m->layer[l].out;
}

int nn_mlp_clone(const struct nn_mlp *src, struct nn_mlp **ret_mlp)
{
    int dims[NN_MAX_LAYERS + 1];
    mlp_dims(src, dims);
    struct nn_mlp *m;
    int rc = nn_mlp_alloc(dims, src->n_layers + 1, &m);
    if (rc < 0) return rc;
    m->head = src->head;
    m->head_scale = src->head_scale;
    memcpy(m->param, src->param, src->n_params * sizeof(float));
    memcpy(m->vel, src->vel, src->n_params * sizeof(float));
    if (src->mask) {
        m->mask = tame_malloc(src->n_params * sizeof(float));
        if (!m->mask) {
            nn_mlp_free(m);
            return TAME_E_NOMEM;
        }
        memcpy(m->mask, src->mask, src->n_params * sizeof(float));
    }
    *ret_mlp = m;
    return 0;
}

/* Compressed rows or the GEMM, for n rows through a layer of `dense`
 * weights of which nz are non-zero?  Compressed rows cost about a cycle per
 * non-zero weight and row (three loads); the GEMM streams the whole matrix
 * from L2 once (~8 weights a cycle) and, given rows enough to reuse it, does
 * ~32 products a cycle.  So one row gains below 1/8 of the weights, many
 * rows below 1/32: a pruned expert keeps 2 %.  (Costs in 1/32 cycle.) */
static bool sparse_gains(size_t nz, size_t dense, int n)
{
    return (size_t)n * nz * 32 <= dense * (size_t)(n < 4 ? 4 : n);
}

/* Compressed rows of layer l if few enough of its weights are non-zero for
 * a one-row forward pass to gain, else NULL (not an error:
 * *ret is set either way).  One block: header, start, col, val. */
static int sparse_rows_new(const struct nn_mlp *m, int l, struct nn_sparse_rows **ret)
{
    const struct nn_layer *L = &m->layer[l];
    const float *w = m->param + L->w_off;
    const size_t dense = (size_t)L->in * L->out;
    size_t nz = 0;
    for (size_t i = 0; i < dense; i++) nz += w[i] != 0.0f;
    *ret = NULL;
    if (!sparse_gains(nz, dense, 1)) return 0;
    struct nn_sparse_rows *s = tame_malloc(sizeof(*s) + ((size_t)L->out + 1 + nz) * sizeof(uint32_t) +
                                           nz * sizeof(float));
    if (!s) return TAME_E_NOMEM;
    s->start = (uint32_t *)(s + 1);
    s->col = s->start + L->out + 1;
    s->val = (float *)(s->col + nz);
    uint32_t k = 0;
    for (int j = 0; j < L->out; j++) {
        s->start[j] = k;
        const float *row = w + (size_t)j * L->in;
        for (int i = 0; i < L->in; i++)
            if (row[i] != 0.0f) s->col[k] = (uint32_t)i, s->val[k++] = row[i];
    }
    s->start[L->out] = k;
    *ret = s;
    return 0;
}

int nn_mlp_clone_frozen(const struct nn_mlp *src, struct nn_mlp **ret_mlp)
{
    struct nn_mlp *m = tame_calloc(1, sizeof(*m));
    if (!m) return TAME_E_NOMEM;
    *m = *src;
    m->grad = m->vel = m->mask = NULL;
    memset(m->sparse, 0, sizeof(m->sparse));
    m->param = tame_malloc(src->n_params * sizeof(float));
    if (!m->param) {
        tame_free(m);
        return TAME_E_NOMEM;
    }
    memcpy(m->param, src->param, src->n_params * sizeof(float));
    for (int l = 0; l < m->n_layers; l++)
        if (sparse_rows_new(m, l, &m->sparse[l]) < 0) {
            nn_mlp_free(m);
            return TAME_E_NOMEM;
        }
    *ret_mlp = m;
    return 0;
}

int nn_mlp_inputs(const struct nn_mlp *mlp) { return mlp->layer[0].in; }
int nn_mlp_outputs(const struct nn_mlp *mlp) { return mlp->layer[mlp->n_layers - 1].out; }

bool nn_mlp_same_shape(const struct nn_mlp *a, const struct nn_mlp *b)
{
    if (a->n_layers != b->n_layers) return false;
    for (int l = 0; l < a->n_layers; l++)
        if (a->layer[l].in != b->layer[l].in || a->layer[l].out != b->layer[l].out) return false;
    return true;
}

size_t nn_mlp_nonzero(const struct nn_mlp *mlp)
{
    size_t nz = 0;
    for (size_t i = 0; i < mlp->n_params; i++) nz += mlp->param[i] != 0.0f;
    return nz;
}

int nn_work_new(const struct nn_mlp *mlp, int max_batch, struct nn_work **ret_work)
{
    if (max_batch < 1) return TAME_E_INVAL;
    struct nn_work *w = tame_calloc(1, sizeof(*w));
    if (!w) return TAME_E_NOMEM;
    w->max_batch = max_batch;
    w->head = mlp->head;
    w->head_scale = mlp->head_scale;
    w->n_layers = mlp->n_layers;
    int widest = mlp->layer[0].in;
    for (int l = 0; l < mlp->n_layers; l++) {
        w->width[l] = mlp->layer[l].out;
        if (w->width[l] > widest) widest = w->width[l];
        w->act[l] = tame_malloc((size_t)max_batch * w->width[l] * sizeof(float));
        if (!w->act[l]) goto fail;
    }
    for (int i = 0; i < 2; i++) {
        w->delta[i] = tame_malloc((size_t)max_batch * widest * sizeof(float));
        if (!w->delta[i]) goto fail;
    }
    w->prob = tame_malloc((size_t)max_batch * nn_mlp_outputs(mlp) * sizeof(float));
    if (!w->prob) goto fail;
    *ret_work = w;
    return 0;
fail:
    nn_work_free(w);
    return TAME_E_NOMEM;
}

void nn_work_free(struct nn_work *work)
{
    if (!work) return;
    for (int l = 0; l < NN_MAX_LAYERS; l++) tame_free(work->act[l]);
    tame_free(work->delta[0]);
    tame_free(work->delta[1]);
    tame_free(work->prob);
    tame_free(work);
}

/* out[i][j - from] += row j of the weights . in[i], over the compressed rows. */
static void sparse_forward(const struct nn_sparse_rows *s, const struct nn_layer *L, const float *in, int n,
                           int from, int to, float *out)
{
    for (int i = 0; i < n; i++) {
        const float *x = in + (size_t)i * L->in;
        float *o = out + (size_t)i * L->out;
        for (int j = from; j < to; j++) {
            float acc = 0.0f;
            for (uint32_t k = s->start[j]; k < s->start[j + 1]; k++) acc += s->val[k] * x[s->col[k]];
            o[j - from] += acc;
        }
    }
}

/* Output units [from, to) of layer l on input `in`: bias, one GEMM (or the
 * compressed rows of a frozen sparse layer) into a column block of the
 * layer's output, ReLU unless it is the last layer. */
static void layer_forward(const struct nn_mlp *mlp, struct nn_work *work, int l, const float *in,
                          int n, int from, int to)
{
    const struct nn_layer *L = &mlp->layer[l];
    const float *b = mlp->param + L->b_off + from;
    float *out = work->act[l] + from;
    int cols = to - from;
    /* Start from the bias so the GEMM adds onto it (beta = 1). */
    for (int i = 0; i < n; i++) memcpy(out + (size_t)i * L->out, b, (size_t)cols * sizeof(float));
    const struct nn_sparse_rows *sp = mlp->sparse[l];
    if (sp && sparse_gains(sp->start[L->out], (size_t)L->in * L->out, n))
        sparse_forward(sp, L, in, n, from, to, out);
    else
        nn_gemm(false, true, n, cols, L->in, 1.0f, in, L->in, mlp->param + L->w_off + (size_t)from * L->in,
                L->in, 1.0f, out, L->out);
    if (l + 1 < mlp->n_layers)
        for (int i = 0; i < n; i++) {
            float *row = out + (size_t)i * L->out;
            for (int j = 0; j < cols; j++) row[j] = row[j] > 0.0f ? row[j] : 0.0f;
        }
}

void nn_mlp_forward_first(const struct nn_mlp *mlp, struct nn_work *work, const float *x, int n,
                          int from, int to)
{
    TAME_ASSERT(n >= 1 && n <= work->max_batch && work->n_layers == mlp->n_layers);
    TAME_ASSERT(0 <= from && from < to && to <= mlp->layer[0].out);
    layer_forward(mlp, work, 0, x, n, from, to);
}

void nn_mlp_forward_rest(const struct nn_mlp *mlp, struct nn_work *work, int n)
{
    for (int l = 1; l < mlp->n_layers; l++)
        layer_forward(mlp, work, l, work->act[l - 1], n, 0, mlp->layer[l].out);
}

void nn_mlp_forward(const struct nn_mlp *mlp, struct nn_work *work, const float *x, int n)
{
    nn_mlp_forward_first(mlp, work, x, n, 0, mlp->layer[0].out);
    nn_mlp_forward_rest(mlp, work, n);
}

const float *nn_work_logits(const struct nn_work *work) { return work->act[work->n_layers - 1]; }

/* Gradients of layer l's weights for output units [from, to):
 * dW = delta^T a_in  [rows from..to of out x in];  db = column sums of delta. */
static void layer_weight_grad(struct nn_mlp *mlp, const float *delta, const float *a_in, int l,
                              int n, int from, int to)
{
    const struct nn_layer *L = &mlp->layer[l];
    int rows = to - from;
    nn_gemm(true, false, rows, L->in, n, 1.0f, delta + from, L->out, a_in, L->in, 0.0f,
            mlp->grad + L->w_off + (size_t)from * L->in, L->in);
    float *db = mlp->grad + L->b_off + from;
    memset(db, 0, (size_t)rows * sizeof(float));
    for (int i = 0; i < n; i++) {
        const float *row = delta + (size_t)i * L->out + from;
        for (int j = 0; j < rows; j++) db[j] += row[j];
    }
}

void nn_mlp_backward_rest(struct nn_mlp *mlp, struct nn_work *work, int n, const float *dlogits)
{
    const float *cur = dlogits;
    for (int l = mlp->n_layers - 1; l >= 1; l--) {
        const struct nn_layer *L = &mlp->layer[l];
        layer_weight_grad(mlp, cur, work->act[l - 1], l, n, 0, L->out);
        /* delta_{l-1} = (delta W) * relu'(a_{l-1}) */
        float *next = cur == work->delta[0] ? work->delta[1] : work->delta[0];
        nn_gemm(false, false, n, L->in, L->out, 1.0f, cur, L->out, mlp->param + L->w_off, L->in,
                0.0f, next, L->in);
        size_t cnt = (size_t)n * L->in;
        const float *a = work->act[l - 1];
        for (size_t i = 0; i < cnt; i++) next[i] = a[i] > 0.0f ? next[i] : 0.0f; /* branch-free */
        cur = next;
    }
    work->delta_first = cur;
}

void nn_mlp_backward_first(struct nn_mlp *mlp, struct nn_work *work, const float *x, int n,
                           int from, int to)
{
    TAME_ASSERT(0 <= from && from < to && to <= mlp->layer[0].out);
    layer_weight_grad(mlp, work->delta_first, x, 0, n, from, to);
}

void nn_mlp_backward(struct nn_mlp *mlp, struct nn_work *work, const float *x, int n,
                     const float *dlogits)
{
    nn_mlp_backward_rest(mlp, work, n, dlogits);
    nn_mlp_backward_first(mlp, work, x, n, 0, mlp->layer[0].out);
}
