/* head.c: the output head of DESIGN 2.2, with a scale b (head_scale):
 * s = b * sigmoid(z), p = softmax(s), loss = -log p[y].  Squashing the
 * logits first bounds the loss to [ln(1+(C-1)e^-b), ln(1+(C-1)e^b)], which
 * keeps the detector calm early on.  dL/dz = (p - onehot(y)) * b * g(1 - g)
 * with g = sigmoid(z).  DESIGN's head is b = 1; with b = 1 the largest
 * probability a 10-class head can give is e/(e+9) = 0.23 and it learns
 * 10-class tasks poorly (README, "Head").
 *
 * The softmax may run over a subset of the outputs (an `active` mask): an
 * expert's head covers the labels it knows plus those of the batch.  Over
 * all C outputs, outputs that never occur keep pulling every trained logit
 * up until the sigmoids saturate and the gradient vanishes (README,
 * "Head"); inactive outputs get probability 0 and no gradient.
 *
 * NN_HEAD_SOFTMAX is the plain softmax cross-entropy (p = softmax(z),
 * dL/dz = p - onehot(y)), used by the selector, which no detector watches. */
#include "tame/nn.h"

#include <math.h>

static inline float sigmoidf_stable(float z)
{
    if (z >= 0.0f) return 1.0f / (1.0f + expf(-z));
    float e = expf(z);
    return e / (1.0f + e);
}

/* Row i: s into `s` (the squashed or raw logits), p into `p` (0 where
 * inactive); returns log(sum exp s). */
static double row_probs(enum nn_head head, float scale, const float *z, int c,
                        const uint8_t *active, float *s, float *p)
{
    float shift = 0.0f;
    if (head == NN_HEAD_SOFTMAX) {
        shift = -INFINITY;
        for (int j = 0; j < c; j++) {
            s[j] = z[j];
            if ((!active || active[j]) && z[j] > shift) shift = z[j];
        }
    } else {
        /* s in [0,b]: no overflow for any sane b, no shift needed */
        for (int j = 0; j < c; j++) s[j] = scale * sigmoidf_stable(z[j]);
    }
    double sum = 0;
    for (int j = 0; j < c; j++) {
        p[j] = (!active || active[j]) ? expf(s[j] - shift) : 0.0f;
        sum += p[j];
    }
    float inv = (float)(1.0 / sum);
    for (int j = 0; j < c; j++) p[j] *= inv;
    return log(sum) + shift;
}

double nn_head_loss_masked(struct nn_work *work, const int *y, int n, const uint8_t *active,
                           float *dlogits)
{
    int c = work->width[work->n_layers - 1];
    const float *z = nn_work_logits(work);
    float s[NN_MAX_OUTPUTS];
    TAME_ASSERT(c <= NN_MAX_OUTPUTS);
    double total = 0;
    float scale = 1.0f / (float)n;
    for (int i = 0; i < n; i++) {
        const float *zi = z + (size_t)i * c;
        float *pi = work->prob + (size_t)i * c;
        double lse = row_probs(work->head, work->head_scale, zi, c, active, s, pi);
        TAME_ASSERT(y[i] >= 0 && y[i] < c && (!active || active[y[i]]));
        total += lse - s[y[i]];
        if (dlogits) {
            float *di = dlogits + (size_t)i * c;
            for (int j = 0; j < c; j++) {
                float g = pi[j] - (j == y[i] ? 1.0f : 0.0f);
                if (active && !active[j]) di[j] = 0.0f;
                else if (work->head == NN_HEAD_SOFTMAX) di[j] = g * scale;
                else {
                    float sg = s[j] / work->head_scale; /* sigmoid(z) */
                    di[j] = g * work->head_scale * sg * (1.0f - sg) * scale;
                }
            }
        }
    }
    return total / n;
}

double nn_head_loss(struct nn_work *work, const int *y, int n, float *dlogits)
{
    return nn_head_loss_masked(work, y, n, NULL, dlogits);
}

void nn_head_probs(struct nn_work *work, int n)
{
    int c = work->width[work->n_layers - 1];
    const float *z = nn_work_logits(work);
    float s[NN_MAX_OUTPUTS];
    TAME_ASSERT(c <= NN_MAX_OUTPUTS);
    for (int i = 0; i < n; i++)
        row_probs(work->head, work->head_scale, z + (size_t)i * c, c, NULL, s,
                  work->prob + (size_t)i * c);
}
