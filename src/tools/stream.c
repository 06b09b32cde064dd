/* stream.c: the continual streams of DESIGN 6 over an IDX data set.
 * split: tasks of 2 classes {0,1},{2,3},...; permuted: task 0 as is, each
 * later task a fixed random pixel permutation; rotated: task t rotated by
 * t*180/T degrees; recurring: split tasks in a given order of visits. */
#include "dataset.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

bool task_has_class(const struct task *t, int c)
{
    for (int i = 0; i < t->n_classes; i++)
        if (t->classes[i] == c) return true;
    return false;
}

int stream_label(const struct stream *s, int task, int c)
{
    if (!s->spec.local_labels) return c;
    const struct task *t = &s->task[task];
    for (int i = 0; i < t->n_classes; i++)
        if (t->classes[i] == c) return i;
    return -1;
}

int stream_class(const struct stream *s, int task, int label)
{
    if (!s->spec.local_labels) return label;
    const struct task *t = &s->task[task];
    return label >= 0 && label < t->n_classes ? t->classes[label] : -1;
}

int stream_build(const struct stream_spec *spec, int dim, struct stream *s, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    s->spec = *spec;
    int T = spec->tasks;
    if (T < 1 || T > 64) {
        snprintf(err, errlen, "--tasks must be 1..64");
        return TAME_E_RANGE;
    }
    struct tame_rng rng;
    tame_rng_seed2(&rng, spec->seed, 77);
    for (int t = 0; t < T; t++) {
        struct task *k = &s->task[t];
        if (spec->kind == STREAM_SPLIT || spec->kind == STREAM_RECURRING) {
            if (T > 5) {
                snprintf(err, errlen, "split streams have at most 5 tasks of 2 classes");
                return TAME_E_RANGE;
            }
            k->n_classes = 2;
            k->classes[0] = 2 * t;
            k->classes[1] = 2 * t + 1;
        } else {
            k->n_classes = 10;
            for (int c = 0; c < 10; c++) k->classes[c] = c;
        }
        if (spec->kind == STREAM_PERMUTED && t > 0) {
            k->perm = malloc((size_t)dim * sizeof(int));
            if (!k->perm) return TAME_E_NOMEM;
            for (int i = 0; i < dim; i++) k->perm[i] = i;
            tame_rng_shuffle(&rng, k->perm, dim);
        }
        if (spec->kind == STREAM_ROTATED) k->angle_deg = t * 180.0 / T;
    }
    /* With task-local labels the model sees n_classes labels; otherwise all. */
    s->model_classes = 10;
    if (spec->local_labels && (spec->kind == STREAM_SPLIT || spec->kind == STREAM_RECURRING))
        s->model_classes = 2;
    if (s->spec.n_visits == 0) {
        s->spec.n_visits = T;
        for (int t = 0; t < T; t++) s->spec.visit[t] = t;
    }
    for (int v = 0; v < s->spec.n_visits; v++)
        if (s->spec.visit[v] < 0 || s->spec.visit[v] >= T) {
            snprintf(err, errlen, "--sequence names task %d, outside 1..%d", s->spec.visit[v] + 1, T);
            return TAME_E_RANGE;
        }
    return 0;
}

void stream_free(struct stream *s)
{
    for (int t = 0; t < 64; t++) free(s->task[t].perm);
    memset(s, 0, sizeof(*s));
}

int *task_indices(const struct stream *s, int task, const struct idx_set *set, int limit, int *n)
{
    int *idx = malloc((size_t)set->n * sizeof(int));
    if (!idx) return NULL;
    int m = 0;
    for (int i = 0; i < set->n; i++)
        if (task_has_class(&s->task[task], set->y[i])) idx[m++] = i;
    if (limit > 0 && m > limit) m = limit;
    *n = m;
    return idx;
}

void task_transform(const struct stream *s, int task, const struct idx_set *set, int i, float *out)
{
    const struct task *t = &s->task[task];
    const float *src = set->x + (size_t)i * set->dim;
    if (t->perm) {
        for (int j = 0; j < set->dim; j++) out[j] = src[t->perm[j]];
    } else if (t->angle_deg != 0) {
        /* Bilinear rotation about the image centre; outside is black. */
        double a = t->angle_deg * M_PI / 180.0, ca = cos(a), sa = sin(a);
        double cy = (set->rows - 1) / 2.0, cx = (set->cols - 1) / 2.0;
        for (int r = 0; r < set->rows; r++)
            for (int c = 0; c < set->cols; c++) {
                double sy = ca * (r - cy) + sa * (c - cx) + cy;
                double sx = -sa * (r - cy) + ca * (c - cx) + cx;
                int y0 = (int)floor(sy), x0 = (int)floor(sx);
                double fy = sy - y0, fx = sx - x0, v = 0;
                for (int dy = 0; dy < 2; dy++)
                    for (int dx = 0; dx < 2; dx++) {
                        int yy = y0 + dy, xx = x0 + dx;
                        if (yy < 0 || yy >= set->rows || xx < 0 || xx >= set->cols) continue;
                        double w = (dy ? fy : 1 - fy) * (dx ? fx : 1 - fx);
                        v += w * src[yy * set->cols + xx];
                    }
                out[r * set->cols + c] = (float)v;
            }
    } else {
        memcpy(out, src, (size_t)set->dim * sizeof(float));
    }
}
