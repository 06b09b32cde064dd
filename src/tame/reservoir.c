/* reservoir.c: see reservoir.h. */
#include "reservoir.h"

#include <string.h>

int tame_reservoir_new(int capacity, int dim, struct tame_reservoir **ret)
{
    if (capacity < 1 || dim < 1) return TAME_E_INVAL;
    struct tame_reservoir *r = tame_calloc(1, sizeof(*r));
    if (!r) return TAME_E_NOMEM;
    r->capacity = capacity;
    r->dim = dim;
    r->x = tame_malloc((size_t)capacity * dim * sizeof(float));
    r->y = tame_malloc((size_t)capacity * sizeof(int));
    r->tag = tame_malloc((size_t)capacity * sizeof(int));
    r->key = tame_malloc((size_t)capacity * sizeof(double));
    r->free_slots = tame_malloc((size_t)capacity * sizeof(int));
    if (!r->x || !r->y || !r->tag || !r->key || !r->free_slots) {
        tame_reservoir_free(r);
        return TAME_E_NOMEM;
    }
    /* Pop order 0, 1, 2, ... */
    for (int i = 0; i < capacity; i++) r->free_slots[i] = capacity - 1 - i;
    r->n_free = capacity;
    *ret = r;
    return 0;
}

void tame_reservoir_free(struct tame_reservoir *r)
{
    if (!r) return;
    for (int b = 0; b < r->n_buckets; b++) tame_free(r->buckets[b].heap);
    for (int i = 0; i < r->n_spare; i++) tame_free(r->spare[i]);
    tame_free(r->spare);
    tame_free(r->spare_len);
    tame_free(r->buckets);
    tame_free(r->x);
    tame_free(r->y);
    tame_free(r->tag);
    tame_free(r->key);
    tame_free(r->free_slots);
    tame_free(r);
}

int tame_reservoir_size(const struct tame_reservoir *r) { return r->capacity - r->n_free; }

int tame_reservoir_tag_count(const struct tame_reservoir *r, int tag)
{
    int n = 0;
    for (int b = 0; b < r->n_buckets; b++)
        if (r->buckets[b].tag == tag) n += r->buckets[b].count;
    return n;
}

int tame_reservoir_quota(const struct tame_reservoir *r)
{
    return r->n_buckets ? r->capacity / r->n_buckets : r->capacity;
}

/* ---- min-heap on key, of slot indices ---- */
static void heap_sift_down(const struct tame_reservoir *r, int *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, m = i;
        if (l < n && r->key[h[l]] < r->key[h[m]]) m = l;
        if (l + 1 < n && r->key[h[l + 1]] < r->key[h[m]]) m = l + 1;
        if (m == i) return;
        int t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void heap_sift_up(const struct tame_reservoir *r, int *h, int i)
{
    while (i > 0) {
        int p = (i - 1) / 2;
        if (r->key[h[p]] <= r->key[h[i]]) return;
        int t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static void bucket_pop_min(struct tame_reservoir *r, struct tame_bucket *b)
{
    r->free_slots[r->n_free++] = b->heap[0];
    b->heap[0] = b->heap[--b->count];
    heap_sift_down(r, b->heap, b->count, 0);
}

static int find_bucket(const struct tame_reservoir *r, int y, int tag)
{
    for (int i = 0; i < r->n_buckets; i++)
        if (r->buckets[i].label == y && r->buckets[i].tag == tag) return i;
    return -1;
}

bool tame_reservoir_has_bucket(const struct tame_reservoir *r, int y, int tag)
{
    return find_bucket(r, y, tag) >= 0;
}

int tame_reservoir_reserve(struct tame_reservoir *r, int n_new)
{
    if (n_new <= 0) return 0;
    if (r->n_buckets + n_new > r->buckets_cap) {
        int cap = r->buckets_cap ? r->buckets_cap : 8;
        while (cap < r->n_buckets + n_new) cap *= 2;
        struct tame_bucket *nb = tame_realloc(r->buckets, (size_t)cap * sizeof(*nb));
        if (!nb) return TAME_E_NOMEM;
        r->buckets = nb;
        r->buckets_cap = cap;
    }
    if (r->n_spare + n_new > r->spare_cap) {
        int cap = r->n_spare + n_new;
        int **sp = tame_realloc(r->spare, (size_t)cap * sizeof(*sp));
        if (!sp) return TAME_E_NOMEM;
        r->spare = sp;
        int *sl = tame_realloc(r->spare_len, (size_t)cap * sizeof(*sl));
        if (!sl) return TAME_E_NOMEM;
        r->spare_len = sl;
        r->spare_cap = cap;
    }
    /* The largest quota any of them can get is that of the next bucket. */
    int len = r->capacity / (r->n_buckets + 1);
    while (r->n_spare < n_new) {
        int *h = tame_malloc((size_t)len * sizeof(int));
        if (!h) return TAME_E_NOMEM;
        r->spare[r->n_spare] = h;
        r->spare_len[r->n_spare] = len;
        r->n_spare++;
    }
    return 0;
}

static int add_bucket(struct tame_reservoir *r, int y, int tag)
{
    /* Secure the heap and the array slot first so a failure changes nothing. */
    int quota = r->capacity / (r->n_buckets + 1);
    int *heap = NULL;
    int heap_cap = quota;
    if (r->n_spare > 0 && r->spare_len[r->n_spare - 1] >= quota) {
        r->n_spare--;
        heap = r->spare[r->n_spare];
        heap_cap = r->spare_len[r->n_spare];
    } else {
        heap = tame_malloc((size_t)quota * sizeof(int));
        if (!heap) return TAME_E_NOMEM;
    }
    if (r->n_buckets == r->buckets_cap) {
        int cap = r->buckets_cap ? 2 * r->buckets_cap : 8;
        struct tame_bucket *nb = tame_realloc(r->buckets, (size_t)cap * sizeof(*nb));
        if (!nb) {
            tame_free(heap);
            return TAME_E_NOMEM;
        }
        r->buckets = nb;
        r->buckets_cap = cap;
    }
    r->buckets[r->n_buckets] =
        (struct tame_bucket){.label = y, .tag = tag, .heap = heap, .heap_cap = heap_cap};
    r->n_buckets++;
    /* Quotas shrink: drop the lowest keys of buckets now over quota. */
    for (int i = 0; i < r->n_buckets; i++)
        while (r->buckets[i].count > quota) bucket_pop_min(r, &r->buckets[i]);
    return r->n_buckets - 1;
}

void tame_reservoir_retag(struct tame_reservoir *r, int from, int to)
{
    if (from == to) return;
    int quota = tame_reservoir_quota(r);
    for (int bi = 0; bi < r->n_buckets; bi++) {
        struct tame_bucket *b = &r->buckets[bi];
        if (b->tag != from) continue;
        for (int j = 0; j < b->count; j++) r->tag[b->heap[j]] = to;
        int ti = find_bucket(r, b->label, to);
        if (ti < 0) {
            b->tag = to;
            continue;
        }
        struct tame_bucket *t = &r->buckets[ti];
        t->seen += b->seen;
        for (int j = 0; j < b->count; j++) {
            int s = b->heap[j];
            if (t->count < quota) { /* its heap was sized for a quota at least this large */
                t->heap[t->count] = s;
                heap_sift_up(r, t->heap, t->count);
                t->count++;
            } else if (t->count > 0 && r->key[s] > r->key[t->heap[0]]) {
                r->free_slots[r->n_free++] = t->heap[0];
                t->heap[0] = s;
                heap_sift_down(r, t->heap, t->count, 0);
            } else {
                r->free_slots[r->n_free++] = s;
            }
        }
        /* Left empty under its old stratum: an expert that takes the id
         * `from` later fills it again. */
        b->count = 0;
        b->seen = 0;
    }
}

int tame_reservoir_offer(struct tame_reservoir *r, const float *x, int y, int tag, double key)
{
    int bi = find_bucket(r, y, tag);
    if (bi < 0) {
        /* More buckets than slots would give a zero quota: then the new
         * stratum simply keeps nothing. */
        if (r->n_buckets >= r->capacity) return 0;
        bi = add_bucket(r, y, tag);
        if (bi < 0) return bi;
    }
    struct tame_bucket *b = &r->buckets[bi];
    b->seen++;
    int quota = tame_reservoir_quota(r);
    int slot;
    if (b->count < quota) {
        TAME_ASSERT(b->count < b->heap_cap);
        TAME_ASSERT(r->n_free > 0);
        slot = r->free_slots[--r->n_free];
        r->key[slot] = key;
        b->heap[b->count] = slot;
        heap_sift_up(r, b->heap, b->count);
        b->count++;
    } else if (b->count > 0 && key > r->key[b->heap[0]]) {
        slot = b->heap[0];
        r->key[slot] = key;
        heap_sift_down(r, b->heap, b->count, 0);
    } else {
        return 0;
    }
    memcpy(r->x + (size_t)slot * r->dim, x, (size_t)r->dim * sizeof(float));
    r->y[slot] = y;
    r->tag[slot] = tag;
    return 0;
}

void tame_reservoir_copy(const struct tame_reservoir *r, float *x, int *y, int *tag)
{
    /* Slot order is deterministic: walk buckets in creation order, each heap
     * in array order. */
    int k = 0;
    for (int bi = 0; bi < r->n_buckets; bi++) {
        const struct tame_bucket *b = &r->buckets[bi];
        for (int j = 0; j < b->count; j++, k++) {
            int s = b->heap[j];
            if (x) memcpy(x + (size_t)k * r->dim, r->x + (size_t)s * r->dim, (size_t)r->dim * sizeof(float));
            if (y) y[k] = r->y[s];
            if (tag) tag[k] = r->tag[s];
        }
    }
}

#define RES_MAGIC 0x53455254u /* "TRES" */

void tame_reservoir_save(const struct tame_reservoir *r, struct tame_wbuf *w)
{
    tame_wbuf_u32(w, RES_MAGIC);
    tame_wbuf_i32(w, r->capacity);
    tame_wbuf_i32(w, r->dim);
    tame_wbuf_i32(w, r->n_free);
    for (int i = 0; i < r->n_free; i++) tame_wbuf_i32(w, r->free_slots[i]);
    tame_wbuf_i32(w, r->n_buckets);
    for (int bi = 0; bi < r->n_buckets; bi++) {
        const struct tame_bucket *b = &r->buckets[bi];
        tame_wbuf_i32(w, b->label);
        tame_wbuf_i32(w, b->tag);
        tame_wbuf_u64(w, b->seen);
        tame_wbuf_i32(w, b->count);
        for (int j = 0; j < b->count; j++) {
            int s = b->heap[j];
            tame_wbuf_i32(w, s);
            tame_wbuf_f64(w, r->key[s]);
            tame_wbuf_i32(w, r->y[s]);
            tame_wbuf_i32(w, r->tag[s]);
            tame_wbuf_f32s(w, r->x + (size_t)s * r->dim, (size_t)r->dim);
        }
    }
}

int tame_reservoir_load(struct tame_rbuf *rb, int capacity, int dim, struct tame_reservoir **ret)
{
    /* The shape is the model's, checked before anything is allocated: a
     * damaged blob must not ask for gigabytes (found by fuzz-state). */
    if (tame_rbuf_u32(rb) != RES_MAGIC) return TAME_E_CORRUPT;
    int stored_capacity = tame_rbuf_i32(rb), stored_dim = tame_rbuf_i32(rb);
    if (rb->err || stored_capacity != capacity || stored_dim != dim) return TAME_E_CORRUPT;
    struct tame_reservoir *r;
    int rc = tame_reservoir_new(capacity, dim, &r);
    if (rc < 0) return rc;
    uint8_t *used = tame_calloc((size_t)capacity, 1);
    if (!used) {
        tame_reservoir_free(r);
        return TAME_E_NOMEM;
    }
    rc = TAME_E_CORRUPT;
    r->n_free = tame_rbuf_i32(rb);
    if (rb->err || r->n_free < 0 || r->n_free > capacity) goto fail;
    for (int i = 0; i < r->n_free; i++) {
        int s = tame_rbuf_i32(rb);
        if (rb->err || s < 0 || s >= capacity || used[s]) goto fail;
        used[s] = 1;
        r->free_slots[i] = s;
    }
    int n_buckets = tame_rbuf_i32(rb);
    if (rb->err || n_buckets < 0 || n_buckets > capacity) goto fail;
    if (n_buckets > 0) {
        r->buckets = tame_calloc((size_t)n_buckets, sizeof(*r->buckets));
        if (!r->buckets) {
            rc = TAME_E_NOMEM;
            goto fail;
        }
        r->buckets_cap = n_buckets;
    }
    int quota = capacity / (n_buckets ? n_buckets : 1);
    for (int bi = 0; bi < n_buckets; bi++) {
        struct tame_bucket *b = &r->buckets[bi];
        r->n_buckets = bi + 1;
        b->label = tame_rbuf_i32(rb);
        b->tag = tame_rbuf_i32(rb);
        b->seen = tame_rbuf_u64(rb);
        b->count = tame_rbuf_i32(rb);
        if (rb->err || b->count < 0 || b->count > quota || (uint64_t)b->count > b->seen) {
            b->count = 0;
            goto fail;
        }
        /* Sized for the current quota, which only shrinks from here. */
        b->heap = tame_malloc((size_t)(quota ? quota : 1) * sizeof(int));
        if (!b->heap) {
            b->count = 0;
            rc = TAME_E_NOMEM;
            goto fail;
        }
        b->heap_cap = quota;
        for (int j = 0; j < b->count; j++) {
            int s = tame_rbuf_i32(rb);
            if (rb->err || s < 0 || s >= capacity || used[s]) {
                b->count = j;
                goto fail;
            }
            used[s] = 1;
            b->heap[j] = s;
            r->key[s] = tame_rbuf_f64(rb);
            r->y[s] = tame_rbuf_i32(rb);
            r->tag[s] = tame_rbuf_i32(rb);
            tame_rbuf_f32s(rb, r->x + (size_t)s * dim, (size_t)dim);
            if (rb->err || r->y[s] != b->label || r->tag[s] != b->tag || !(r->key[s] >= 0 && r->key[s] < 1)) {
                b->count = j + 1;
                goto fail;
            }
            if (j > 0 && r->key[b->heap[(j - 1) / 2]] > r->key[s]) {
                b->count = j + 1;
                goto fail;
            }
        }
    }
    for (int s = 0; s < capacity; s++)
        if (!used[s]) goto fail;
    tame_free(used);
    *ret = r;
    return 0;
fail:
    tame_free(used);
    tame_reservoir_free(r);
    if (rc == TAME_E_CORRUPT) rb->err = TAME_E_CORRUPT;
    return rc;
}
