/* reservoir.h: a stratified uniform sample without replacement.
 *
 * Every offered sample carries a random key; each bucket (a (label, tag)
 * pair) keeps the samples with the highest keys, up to its quota
 * capacity / number_of_buckets.  When a bucket appears every quota shrinks
 * and the lowest keys of over-full buckets are dropped.  Keeping the top-q
 * keys of i.i.d. uniform keys is a uniform q-subset of what the bucket saw.
 * Owned by one thread (the learner's). */
#ifndef TAME_RESERVOIR_H
#define TAME_RESERVOIR_H

#include "tame/core.h"

struct tame_bucket {
    int label, tag;   /* the stratum */
    int count;        /* samples kept (= heap length) */
    int heap_cap;
    int *heap;        /* slot indices, a min-heap on key */
    uint64_t seen;    /* samples offered to this bucket */
};

struct tame_reservoir {
    int capacity;     /* total slots */
    int dim;          /* floats per sample */
    float *x;         /* [capacity x dim] */
    int *y;           /* [capacity] label */
    int *tag;         /* [capacity] expert id (or 0) */
    double *key;      /* [capacity] */
    int *free_slots;  /* stack of unused slots */
    int n_free;
    int n_buckets, buckets_cap;
    struct tame_bucket *buckets;
    int n_spare;      /* heaps allocated ahead by tame_reservoir_reserve */
    int spare_cap;
    int **spare;      /* [spare_cap], each heap of spare_len[i] ints */
    int *spare_len;
};

int tame_reservoir_new(int capacity, int dim, struct tame_reservoir **ret);
void tame_reservoir_free(struct tame_reservoir *r);
/* Allocate ahead whatever `n_new` new buckets will need, so that the offers
 * that follow cannot fail.  Changes no observable state. */
int tame_reservoir_reserve(struct tame_reservoir *r, int n_new);
bool tame_reservoir_has_bucket(const struct tame_reservoir *r, int y, int tag);
/* Offer one sample with its random key in [0, 1).  A bucket's heap is sized
 * for its quota when it is created (quotas only shrink), so offers to
 * existing buckets, or to new ones reserved ahead, never allocate.
 * TAME_E_NOMEM leaves the reservoir as it was. */
int tame_reservoir_offer(struct tame_reservoir *r, const float *x, int y, int tag, double key);
/* Give every sample tagged `from` the tag `to`: a (label, from) bucket is
 * renamed when (label, to) has none, else merged into it (the highest keys
 * of both, up to the quota: still a uniform sample of what both saw) and
 * left empty, so the number of buckets and every quota stay as they were.
 * Allocates nothing. */
void tame_reservoir_retag(struct tame_reservoir *r, int from, int to);
int tame_reservoir_size(const struct tame_reservoir *r);
/* Samples kept under `tag`. */
int tame_reservoir_tag_count(const struct tame_reservoir *r, int tag);
int tame_reservoir_quota(const struct tame_reservoir *r);
/* Copy the kept samples, in slot order, into x[size x dim], y, tag (each may
 * be NULL). */
void tame_reservoir_copy(const struct tame_reservoir *r, float *x, int *y, int *tag);
void tame_reservoir_save(const struct tame_reservoir *r, struct tame_wbuf *w);
/* TAME_E_CORRUPT unless the saved reservoir has this capacity and dim. */
int tame_reservoir_load(struct tame_rbuf *rb, int capacity, int dim, struct tame_reservoir **ret);

#endif
