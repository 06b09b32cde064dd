/* sgd.c: SGD with momentum and weight decay, PyTorch semantics
 * (g = grad + wd*w; v = m*v + g; w = w - lr*v), and the one training step
 * built on it.  An update that would put a non-finite number into the
 * network is refused whole, so NaN and Inf never enter the state. */
#include "nn_internal.h"

#include <math.h>
#include <string.h>

int nn_sgd_step(struct nn_mlp *mlp, const struct nn_sgd *opt)
{
    const float lr = opt->lr, mom = opt->momentum, wd = opt->weight_decay;
    float *w = mlp->param, *v = mlp->vel;
    const float *g = mlp->grad, *mask = mlp->mask;
    const size_t n = mlp->n_params;

    /* Pass 1: would every new value be finite?  (Integer test: vectorises.) */
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        float vi = mom * v[i] + g[i] + wd * w[i];
        float wi = w[i] - lr * vi;
        bad |= tame_f32_nonfinite(vi) | tame_f32_nonfinite(wi);
    }
    if (bad) return TAME_E_NONFINITE;

    /* Pass 2: apply. */
    if (mask) {
        for (size_t i = 0; i < n; i++) {
            float vi = (mom * v[i] + g[i] + wd * w[i]) * mask[i];
            v[i] = vi;
            w[i] = (w[i] - lr * vi) * mask[i];
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            float vi = mom * v[i] + g[i] + wd * w[i];
            v[i] = vi;
            w[i] -= lr * vi;
        }
    }
    mlp->version = nn_next_version();
    return 0;
}

void nn_sgd_reset(struct nn_mlp *mlp) { memset(mlp->vel, 0, mlp->n_params * sizeof(float)); }

int nn_mlp_train_step(struct nn_mlp *mlp, struct nn_work *work, const float *x, const int *y,
                      int n, const uint8_t *active, const struct nn_sgd *opt, double *ret_loss)
{
    nn_mlp_forward(mlp, work, x, n);
    float *dlogits = work->delta[0];
    double loss = nn_head_loss_masked(work, y, n, active, dlogits);
    if (!isfinite(loss)) return TAME_E_NONFINITE;
    nn_mlp_backward(mlp, work, x, n, dlogits);
    int rc = nn_sgd_step(mlp, opt);
    if (rc < 0) return rc;
    if (ret_loss) *ret_loss = loss;
    return 0;
}
