/*
 * nn.h: dense multi-layer perceptrons on OpenBLAS.
 *
 * A network keeps all of its parameters in one contiguous float block
 * (layer by layer: weights row-major [out x in], then bias [out]), with
 * gradients, SGD velocity and the pruning mask in parallel blocks of the same
 * layout.  Cloning is a memcpy, the optimiser is one loop, saving is one blob.
 * Activations live in a caller-owned workspace (struct nn_work) so that many
 * threads can run forward passes of one const network at the same time.
 *
 * This layer knows nothing of TAME, HTTP or SQLite, and never logs.
 */
#ifndef TAME_NN_H
#define TAME_NN_H

#include "tame/core.h"

#define NN_MAX_LAYERS 8      /* hidden layers + output layer */
#define NN_MAX_WIDTH 65536   /* any single layer dimension */
#define NN_MAX_OUTPUTS 4096  /* output layer (classes, experts) */

/* The output head that turns logits into probabilities and a loss. */
enum nn_head {
    NN_HEAD_SIGMOID_SOFTMAX = 0, /* softmax(b*sigmoid(z)): bounded loss, for experts */
    NN_HEAD_SOFTMAX = 1,         /* softmax(z): plain cross-entropy, for the selector */
};

struct nn_layer {
    int in, out;       /* shape: weights are [out x in] row-major */
    size_t w_off;      /* offset of the weights in the parameter block */
    size_t b_off;      /* offset of the bias */
};

/* Compressed rows of a mostly-zero weight matrix [out x in]: the non-zero
 * weights of output j are val[start[j] .. start[j+1]), at inputs col[..]. */
struct nn_sparse_rows {
    uint32_t *start; /* [out + 1] */
    uint32_t *col;   /* [non-zero] */
    float *val;      /* [non-zero] */
};

/* Owned by one thread at a time; const networks may be shared for forward. */
struct nn_mlp {
    int n_layers;                       /* >= 1 */
    enum nn_head head;                  /* default NN_HEAD_SIGMOID_SOFTMAX */
    float head_scale;                   /* b in softmax(b * sigmoid(z)), default 1 */
    struct nn_layer layer[NN_MAX_LAYERS];
    size_t n_params;                    /* weights + biases */
    size_t n_weights;                   /* weights only (what pruning ranks) */
    float *param;                       /* [n_params] */
    float *grad;                        /* [n_params], mean over the batch */
    float *vel;                         /* [n_params], SGD momentum buffer */
    float *mask;                        /* NULL, or [n_params] of 0/1; biases 1 */
    /* Names the values in param: a fresh number, unique in the process, at
     * creation, load and clone and after every SGD step and prune, so a
     * copy made at version v is still exact while the version is v. */
    uint64_t version;
    /* Frozen copies only: compressed rows of each layer whose weights are
     * sparse enough that a forward pass over them beats the dense GEMM
     * (pruned experts keep 2 %), else NULL. */
    struct nn_sparse_rows *sparse[NN_MAX_LAYERS];
};

/* Build a network with the given layer sizes: dims[0] inputs, dims[1..n-1]
 * hidden (ReLU), dims[n_dims-1] outputs.  Weights and biases are drawn
 * uniformly from +-1/sqrt(fan_in) (PyTorch's nn.Linear default) from `rng`.
 * Returns 0 and *ret_mlp (owned by the caller, nn_mlp_free) or TAME_E_INVAL
 * (bad sizes) / TAME_E_NOMEM. */
int nn_mlp_new(const int *dims, int n_dims, struct tame_rng *rng, struct nn_mlp **ret_mlp);
void nn_mlp_free(struct nn_mlp *mlp);
/* Deep copy, including velocity and mask. */
int nn_mlp_clone(const struct nn_mlp *src, struct nn_mlp **ret_mlp);
/* A copy of the parameters only (no gradient, velocity or mask), with the
 * source's version: enough to run forward passes, e.g. in a published
 * prediction snapshot.  Layers that are mostly zero also get compressed
 * rows, which forward passes of few rows use instead of the GEMM. */
int nn_mlp_clone_frozen(const struct nn_mlp *src, struct nn_mlp **ret_mlp);
int nn_mlp_inputs(const struct nn_mlp *mlp);
int nn_mlp_outputs(const struct nn_mlp *mlp);
/* Same shapes? */
bool nn_mlp_same_shape(const struct nn_mlp *a, const struct nn_mlp *b);
/* Non-zero weights and biases (the model-size figure). */
size_t nn_mlp_nonzero(const struct nn_mlp *mlp);

/* ---- workspaces ---- */
struct nn_work {
    int max_batch;
    enum nn_head head;          /* copied from the network it was made for */
    float head_scale;
    int n_layers;
    int width[NN_MAX_LAYERS];   /* outputs of each layer */
    float *act[NN_MAX_LAYERS];  /* [max_batch x width[l]]: post-ReLU, last = logits */
    float *delta[2];            /* two [max_batch x max width] ping-pong buffers */
    float *prob;                /* [max_batch x outputs]: softmax(sigmoid(logits)) */
    const float *delta_first;   /* after nn_mlp_backward_rest: dL/d(first layer's output) */
};
/* Workspace for batches of up to max_batch rows through networks shaped like
 * `mlp`.  Owned by the caller. */
int nn_work_new(const struct nn_mlp *mlp, int max_batch, struct nn_work **ret_work);
void nn_work_free(struct nn_work *work);

/* ---- forward, loss, backward ---- */
/* x: [n x inputs] row-major, n <= work->max_batch.  Leaves activations and
 * logits (nn_work_logits) in `work`; `mlp` is not modified. */
void nn_mlp_forward(const struct nn_mlp *mlp, struct nn_work *work, const float *x, int n);
const float *nn_work_logits(const struct nn_work *work);

/* The network's head on the logits of the last forward pass.  For the
 * default sigmoid-then-softmax head: s = sigmoid(z), p = softmax(s),
 * loss = mean_i -log p_i[y_i]
 * Returns the mean loss; if `dlogits` is not NULL it receives
 * dL/dz = (p - onehot(y)) * s * (1 - s) / n  [n x C] (plain softmax:
 * (p - onehot(y)) / n).  Labels must be in
 * [0, C).  Also fills work->prob. */
double nn_head_loss(struct nn_work *work, const int *y, int n, float *dlogits);
/* The same with the softmax over the outputs j with active[j] != 0 only
 * (active == NULL: all).  Inactive outputs get p = 0 and no gradient; every
 * y[i] must be active.  The loss is then bounded by the active count. */
double nn_head_loss_masked(struct nn_work *work, const int *y, int n, const uint8_t *active,
                           float *dlogits);
/* Fill work->prob with the head's probabilities for the last forward pass. */
void nn_head_probs(struct nn_work *work, int n);

/* Back-propagate dlogits (as produced by nn_head_loss, [n x C], may be the
 * workspace's delta buffer) through the network of the last forward on `x`,
 * writing mlp->grad (overwritten, not accumulated). */
void nn_mlp_backward(struct nn_mlp *mlp, struct nn_work *work, const float *x, int n,
                     const float *dlogits);

/* The same passes in parts, so that two threads can share one network's
 * work: units [from, to) of the first layer (nn_mlp_forward_first), then the
 * other layers (nn_mlp_forward_rest); backward through every layer but the
 * first (nn_mlp_backward_rest), then the first layer's weight gradient for
 * units [from, to) (nn_mlp_backward_first).  Disjoint unit ranges touch
 * disjoint memory, and each element is computed exactly as in the whole
 * pass. */
void nn_mlp_forward_first(const struct nn_mlp *mlp, struct nn_work *work, const float *x, int n,
                          int from, int to);
void nn_mlp_forward_rest(const struct nn_mlp *mlp, struct nn_work *work, int n);
void nn_mlp_backward_rest(struct nn_mlp *mlp, struct nn_work *work, int n, const float *dlogits);
void nn_mlp_backward_first(struct nn_mlp *mlp, struct nn_work *work, const float *x, int n,
                           int from, int to);

/* ---- optimiser ---- */
struct nn_sgd {
    float lr;            /* learning rate, 0.1 */
    float momentum;      /* 0.9 */
    float weight_decay;  /* 5e-4 */
};
/* One SGD step with PyTorch semantics: g = grad + wd*w; v = m*v + g;
 * w = w - lr*v; masked entries stay 0 (weight and velocity).  If any
 * updated weight or velocity would be non-finite nothing changes and
 * TAME_E_NONFINITE is returned. */
int nn_sgd_step(struct nn_mlp *mlp, const struct nn_sgd *opt);
void nn_sgd_reset(struct nn_mlp *mlp);

/* Train one step on (x, y): forward, loss (over `active` outputs, NULL =
 * all), backward, SGD.  *ret_loss is the
 * pre-update loss.  If the loss is not finite nothing is trained and
 * TAME_E_NONFINITE is returned; same if the update would be non-finite. */
int nn_mlp_train_step(struct nn_mlp *mlp, struct nn_work *work, const float *x, const int *y,
                      int n, const uint8_t *active, const struct nn_sgd *opt, double *ret_loss);

/* ---- pruning ---- */
/* Global magnitude pruning over all weight matrices (biases untouched):
 * keep exactly round((1 - sparsity) * n_weights) weights with the largest
 * |w| (ties broken by position), zero the rest and their velocity, and keep
 * the mask so that every later SGD step re-applies it.  Already pruned
 * weights stay pruned.  sparsity in [0, 1). */
int nn_mlp_prune(struct nn_mlp *mlp, double sparsity);

/* ---- serialisation ----
 * Blob: "TMLP", version, shapes, parameters, velocity, optional mask, CRC-32.
 * Loading checks every length, shape, value (finite) and the checksum. */
void nn_mlp_save(const struct nn_mlp *mlp, struct tame_wbuf *w);
int nn_mlp_load(struct tame_rbuf *r, struct nn_mlp **ret_mlp);

/* ---- BLAS wrapper ----
 * C[MxN] = alpha * op(A) op(B) + beta * C, row-major, op = transpose if the
 * flag is set.  nn_gemm goes to cblas_sgemm; nn_gemm_ref is the plain-C twin
 * the tests compare it with. */
void nn_gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
             int lda, const float *b, int ldb, float beta, float *c, int ldc);
void nn_gemm_ref(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc);
/* Threads OpenBLAS may use for one call (1 = deterministic, one per learner). */
void nn_blas_threads(int n);
/* Use the reference GEMM everywhere (tests); returns the previous setting. */
bool nn_gemm_use_ref(bool use_ref);

#endif
