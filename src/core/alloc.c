/* alloc.c: the engine's allocator.  It is plain malloc plus two counters: a
 * countdown that makes the Nth allocation fail (for fault-injection tests)
 * and the number of live blocks (for leak checks in those tests). */
#include "tame/core.h"

#include <stdatomic.h>
#include <stdlib.h>

static atomic_long alloc_seen;      /* allocations since tame_alloc_fail_at */
static atomic_long alloc_fail_n = -1; /* index that fails, -1 = never */
static atomic_bool alloc_sticky;
static atomic_long alloc_live;

static bool should_fail(void)
{
    long n = atomic_load_explicit(&alloc_fail_n, memory_order_relaxed);
    long i = atomic_fetch_add_explicit(&alloc_seen, 1, memory_order_relaxed);
    if (n < 0) return false;
    return i == n || (i > n && atomic_load(&alloc_sticky));
}

void tame_alloc_fail_at(long n, bool sticky)
{
    atomic_store(&alloc_seen, 0);
    atomic_store(&alloc_sticky, sticky);
    atomic_store(&alloc_fail_n, n);
}

long tame_alloc_count(void) { return atomic_load(&alloc_seen); }
long tame_alloc_live(void) { return atomic_load(&alloc_live); }

void *tame_malloc(size_t n)
{
    if (should_fail()) return NULL;
    void *p = malloc(n ? n : 1);
    if (p) atomic_fetch_add_explicit(&alloc_live, 1, memory_order_relaxed);
    return p;
}

void *tame_calloc(size_t count, size_t size)
{
    if (should_fail()) return NULL;
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (p) atomic_fetch_add_explicit(&alloc_live, 1, memory_order_relaxed);
    return p;
}

void *tame_realloc(void *p, size_t n)
{
    if (!p) return tame_malloc(n);
    if (should_fail()) return NULL;
    return realloc(p, n ? n : 1);
}

void tame_free(void *p)
{
    if (!p) return;
    atomic_fetch_sub_explicit(&alloc_live, 1, memory_order_relaxed);
    free(p);
}
