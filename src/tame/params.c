/* params.c: defaults and ranges of a model's hyper-parameters (DESIGN 2). */
#include "tame_internal.h"

#include <math.h>
#include <string.h>

void tame_params_default(struct tame_params *p, int input_dim, int classes)
{
    *p = (struct tame_params){
        .input_dim = input_dim,
        .classes = classes,
        .n_hidden = 2,
        .hidden = {100, 100},
        .batch_size = 128,
        .head_scale = 3.0f,
        .lr = 0.1f,
        .momentum = 0.9f,
        .weight_decay = 5e-4f,
        .window = 100,
        .alpha = 0.2f,
        .k_sigma = 3.0f,
        .sigma_floor = 0.015f,
        .k_warn = 1.0f,
        .min_batches = 10,
        .selector_capacity = 5000,
        .expert_capacity = 500,
        .selector_epochs = 50,
        .selector_lr = 0.01f,
        .selector_every = 1000,
        .expert_sparsity = 0.98f,
        .selector_sparsity = 0.5f,
        .finetune_epochs = 10,
        .max_experts = 32,
        .attribution_batches = 8,
        .seed = 1,
    };
}

#define CHECK(cond, field)                                                  \
    do {                                                                    \
        if (!(cond)) {                                                      \
            if (ret_field) *ret_field = field;                              \
            return TAME_E_RANGE;                                            \
        }                                                                   \
    } while (0)

int tame_params_validate(const struct tame_params *p, const char **ret_field)
{
    CHECK(p->input_dim >= 1 && p->input_dim <= NN_MAX_WIDTH, "input_dim");
    CHECK(p->classes >= 2 && p->classes <= NN_MAX_OUTPUTS, "classes");
    CHECK(p->n_hidden >= 0 && p->n_hidden <= TAME_MAX_HIDDEN, "hidden");
    for (int i = 0; i < p->n_hidden; i++) CHECK(p->hidden[i] >= 1 && p->hidden[i] <= NN_MAX_WIDTH, "hidden");
    CHECK(p->batch_size >= 1 && p->batch_size <= 65536, "batch_size");
    CHECK(isfinite(p->head_scale) && p->head_scale >= 0.1f && p->head_scale <= 20, "head_scale");
    CHECK(isfinite(p->lr) && p->lr > 0 && p->lr <= 10, "lr");
    CHECK(isfinite(p->momentum) && p->momentum >= 0 && p->momentum < 1, "momentum");
    CHECK(isfinite(p->weight_decay) && p->weight_decay >= 0 && p->weight_decay < 1, "weight_decay");
    CHECK(p->window >= 2 && p->window <= 100000, "window");
    CHECK(isfinite(p->alpha) && p->alpha > 0 && p->alpha <= 1, "alpha");
    CHECK(isfinite(p->k_sigma) && p->k_sigma > 0 && p->k_sigma <= 100, "k_sigma");
    CHECK(isfinite(p->sigma_floor) && p->sigma_floor >= 0 && p->sigma_floor <= 10, "sigma_floor");
    CHECK(isfinite(p->k_warn) && p->k_warn >= 0 && p->k_warn <= p->k_sigma, "k_warn");
    CHECK(p->min_batches >= 0 && p->min_batches <= 1000000, "min_batches");
    CHECK(p->selector_capacity >= 1 && p->selector_capacity <= (1 << 22), "selector_capacity");
    CHECK(p->expert_capacity >= 1 && p->expert_capacity <= (1 << 22), "expert_capacity");
    CHECK(p->selector_epochs >= 1 && p->selector_epochs <= 10000, "selector_epochs");
    CHECK(p->selector_every >= 1, "selector_every");
    CHECK(isfinite(p->selector_lr) && p->selector_lr > 0 && p->selector_lr <= 10, "selector_lr");
    CHECK(isfinite(p->expert_sparsity) && p->expert_sparsity >= 0 && p->expert_sparsity < 1, "expert_sparsity");
    CHECK(isfinite(p->selector_sparsity) && p->selector_sparsity >= 0 && p->selector_sparsity < 1, "selector_sparsity");
    CHECK(p->finetune_epochs >= 0 && p->finetune_epochs <= 10000, "finetune_epochs");
    CHECK(p->max_experts >= 1 && p->max_experts <= TAME_MAX_EXPERTS, "max_experts");
    CHECK(p->attribution_batches >= 0 && p->attribution_batches <= 64, "attribution_batches");
    return 0;
}

const char *tame_event_kind_name(enum tame_event_kind kind)
{
    switch (kind) {
    case TAME_EV_DETECT: return "detect";
    case TAME_EV_REUSE: return "reuse";
    case TAME_EV_SPAWN: return "spawn";
    case TAME_EV_SELECTOR: return "selector";
    case TAME_EV_PRUNE: return "prune";
    }
    return "unknown";
}

int tame_dims(const struct tame_params *p, int n_out, int *dims)
{
    dims[0] = p->input_dim;
    for (int i = 0; i < p->n_hidden; i++) dims[i + 1] = p->hidden[i];
    dims[p->n_hidden + 1] = n_out;
    return p->n_hidden + 2;
}

/* Weights and biases, and the sum of the layer widths, of a network with
 * these outputs. */
static void net_size(const struct tame_params *p, int outputs, double *params, double *widths)
{
    int dims[TAME_MAX_HIDDEN + 2];
    int n = tame_dims(p, outputs, dims);
    *params = *widths = 0;
    for (int i = 0; i < n; i++) {
        *widths += dims[i];
        if (i + 1 < n) *params += (double)dims[i] * dims[i + 1] + dims[i + 1];
    }
}

static double net_bytes(const struct tame_params *p, int outputs)
{
    double params, widths;
    net_size(p, outputs, &params, &widths);
    /* param, grad, vel, mask, frozen copy; activations and deltas */
    return 5 * sizeof(float) * params + 2 * sizeof(float) * (double)p->batch_size * widths;
}

double tame_params_memory_bytes(const struct tame_params *p)
{
    const double sample = sizeof(float) * (double)p->input_dim + 2 * sizeof(int); /* x, label, tag */
    double b = p->max_experts * (net_bytes(p, p->classes) + p->expert_capacity * sample);
    b += 2 * (net_bytes(p, p->max_experts) + p->selector_capacity * sample);
    b += (double)p->attribution_batches * p->batch_size * sample;
    /* A checkpoint's serialised state, built beside the live one: each
     * network's weights, momentum and mask, and every buffer. */
    double pe, ps, w;
    net_size(p, p->classes, &pe, &w);
    net_size(p, p->max_experts, &ps, &w);
    b += 3 * sizeof(float) * (p->max_experts * pe + ps) +
         ((double)p->max_experts * p->expert_capacity + p->selector_capacity) * sample;
    return b;
}
