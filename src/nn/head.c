/* head.c: the output head of DESIGN 2.2.  s = sigmoid(z), p = softmax(s),
 * loss = -log p[y].  Squashing the logits first bounds the loss to
 * [ln(1+(C-1)/e), ln(1+(C-1)e)], which keeps the detector calm early on.
 * dL/dz = (p - onehot(y)) * s * (1 - s). */
#include "tame/nn.h"

#include <math.h>

static inline float sigmoidf_stable(float z)
{
    if (z >= 0.0f) return 1.0f / (1.0f + expf(-z));
    float e = expf(z);
    return e / (1.0f + e);
}

/* Row i: s into `s`, p into `p`; returns log(sum exp s). */
static double row_probs(const float *z, int c, float *s, float *p)
{
    double sum = 0;
    for (int j = 0; j < c; j++) {
        s[j] = sigmoidf_stable(z[j]);
        p[j] = expf(s[j]); /* s in [0,1]: no overflow, no max shift needed */
        sum += p[j];
    }
    float inv = (float)(1.0 / sum);
    for (int j = 0; j < c; j++) p[j] *= inv;
    return log(sum);
}

double nn_head_loss(struct nn_work *work, const int *y, int n, float *dlogits)
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
        double lse = row_probs(zi, c, s, pi);
        TAME_ASSERT(y[i] >= 0 && y[i] < c);
        total += lse - s[y[i]];
        if (dlogits) {
            float *di = dlogits + (size_t)i * c;
            for (int j = 0; j < c; j++) {
                float g = pi[j] - (j == y[i] ? 1.0f : 0.0f);
                di[j] = g * s[j] * (1.0f - s[j]) * scale;
            }
        }
    }
    return total / n;
}

void nn_head_probs(struct nn_work *work, int n)
{
    int c = work->width[work->n_layers - 1];
    const float *z = nn_work_logits(work);
    float s[NN_MAX_OUTPUTS];
    TAME_ASSERT(c <= NN_MAX_OUTPUTS);
    for (int i = 0; i < n; i++) row_probs(z + (size_t)i * c, c, s, work->prob + (size_t)i * c);
}
