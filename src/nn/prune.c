/* prune.c: global unstructured magnitude pruning.  All weight matrices of a
 * network compete in one ranking by |w|; biases are never pruned.  The mask
 * is kept with the network and re-applied by every SGD step. */
#include "nn_internal.h"

#include <math.h>
#include <stdlib.h>

struct ranked {
    float mag;
    uint32_t idx;
};

static int by_magnitude_desc(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    if (x->mag != y->mag) return x->mag > y->mag ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int nn_mlp_prune(struct nn_mlp *mlp, double sparsity)
{
    if (!(sparsity >= 0.0 && sparsity < 1.0)) return TAME_E_INVAL;
    struct ranked *r = tame_malloc(mlp->n_weights * sizeof(*r));
    if (!r) return TAME_E_NOMEM;
    float *mask = mlp->mask;
    if (!mask) {
        mask = tame_malloc(mlp->n_params * sizeof(float));
        if (!mask) {
            tame_free(r);
            return TAME_E_NOMEM;
        }
        for (size_t i = 0; i < mlp->n_params; i++) mask[i] = 1.0f;
    }

    /* Rank the weights still alive; pruned ones stay pruned. */
    size_t alive = 0;
    for (int l = 0; l < mlp->n_layers; l++) {
        const struct nn_layer *L = &mlp->layer[l];
        size_t cnt = (size_t)L->in * L->out;
        for (size_t i = L->w_off; i < L->w_off + cnt; i++)
            if (mask[i] != 0.0f) r[alive++] = (struct ranked){fabsf(mlp->param[i]), (uint32_t)i};
    }
    size_t keep = (size_t)llround((1.0 - sparsity) * (double)mlp->n_weights);
    if (keep > alive) keep = alive;
    qsort(r, alive, sizeof(*r), by_magnitude_desc);
    for (size_t k = keep; k < alive; k++) {
        uint32_t i = r[k].idx;
        mask[i] = 0.0f;
        mlp->param[i] = 0.0f;
        mlp->vel[i] = 0.0f;
    }
    tame_free(r);
    mlp->mask = mask;
    mlp->version = nn_next_version();
    return 0;
}
