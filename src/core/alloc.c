/*
 * Counted allocator: a 16-byte header in front of every block records its size,
 * so live bytes can be reported. Counters are relaxed atomics: they are for
 * tests and /metrics, not for synchronisation.
 */
#include "core/alloc.h"

#include <cjson/cJSON.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define HDR 16

static atomic_llong g_live;
static atomic_llong g_live_bytes;
static atomic_long g_fail_after = -1;

static int should_fail(void)
{
    long v = atomic_load_explicit(&g_fail_after, memory_order_relaxed);
    if (v < 0)
        return 0;
    v = atomic_fetch_sub(&g_fail_after, 1);
    if (v == 0) {
        atomic_store(&g_fail_after, -1);
        return 1;
    }
    return 0;
}

void brix_alloc_fail_after(long n)
{
    atomic_store(&g_fail_after, n);
}

int64_t brix_alloc_live(void)
{
    return atomic_load(&g_live);
}

int64_t brix_alloc_live_bytes(void)
{
    return atomic_load(&g_live_bytes);
}

void *brix_malloc(size_t n)
{
    if (should_fail() || n > SIZE_MAX - HDR)
        return NULL;
    unsigned char *p = malloc(n + HDR);
    if (!p)
        return NULL;
    memcpy(p, &n, sizeof n);
    atomic_fetch_add_explicit(&g_live, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&g_live_bytes, (long long)n, memory_order_relaxed);
    return p + HDR;
}

void *brix_calloc(size_t nmemb, size_t size)
{
    if (size && nmemb > SIZE_MAX / size)
        return NULL;
    void *p = brix_malloc(nmemb * size);
    if (p)
        memset(p, 0, nmemb * size);
    return p;
}

void *brix_realloc(void *p, size_t n)
{
    if (!p)
        return brix_malloc(n);
    if (should_fail() || n > SIZE_MAX - HDR)
        return NULL;
    unsigned char *base = (unsigned char *)p - HDR;
    size_t old;
    memcpy(&old, base, sizeof old);
    unsigned char *nb = realloc(base, n + HDR);
    if (!nb)
        return NULL;
    memcpy(nb, &n, sizeof n);
    atomic_fetch_add_explicit(&g_live_bytes, (long long)n - (long long)old, memory_order_relaxed);
    return nb + HDR;
}

void brix_free(void *p)
{
    if (!p)
        return;
    unsigned char *base = (unsigned char *)p - HDR;
    size_t n;
    memcpy(&n, base, sizeof n);
    atomic_fetch_sub_explicit(&g_live, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&g_live_bytes, (long long)n, memory_order_relaxed);
    free(base);
}

char *brix_strndup(const char *s, size_t n)
{
    char *d = brix_malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *brix_strdup(const char *s)
{
    return brix_strndup(s, strlen(s));
}

void brix_alloc_init(void)
{
    cJSON_Hooks h = { .malloc_fn = brix_malloc, .free_fn = brix_free };
    cJSON_InitHooks(&h);
}

/* ---- arena ---- */

struct brix_arena_chunk {
    brix_arena_chunk_t *next;
    size_t size;
    size_t off;
    _Alignas(16) unsigned char data[];
};

void brix_arena_init(brix_arena_t *a, size_t chunk_size)
{
    a->head = NULL;
    a->chunk_size = chunk_size ? chunk_size : 4096;
    a->used = 0;
}

void *brix_arena_alloc(brix_arena_t *a, size_t n)
{
    size_t need = (n + 15) & ~(size_t)15;
    if (need < n)
        return NULL;
    brix_arena_chunk_t *c = a->head;
    if (!c || c->size - c->off < need) {
        size_t sz = need > a->chunk_size ? need : a->chunk_size;
        c = brix_malloc(sizeof *c + sz);
        if (!c)
            return NULL;
        c->size = sz;
        c->off = 0;
        /* A chunk made for one large block goes behind the head, so the
         * head's free tail stays usable for small allocations. */
        if (a->head && sz > a->chunk_size) {
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
        }
    }
    void *p = c->data + c->off;
    c->off += need;
    a->used += need;
    return p;
}

char *brix_arena_strndup(brix_arena_t *a, const char *s, size_t n)
{
    char *d = brix_arena_alloc(a, n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

void brix_arena_reset(brix_arena_t *a)
{
    brix_arena_chunk_t *keep = NULL, *c = a->head;
    while (c) {
        brix_arena_chunk_t *next = c->next;
        if (!keep && c->size == a->chunk_size) {
            keep = c;
        } else {
            brix_free(c);
        }
        c = next;
    }
    if (keep) {
        keep->next = NULL;
        keep->off = 0;
    }
    a->head = keep;
    a->used = 0;
}

void brix_arena_free(brix_arena_t *a)
{
    brix_arena_chunk_t *c = a->head;
    while (c) {
        brix_arena_chunk_t *next = c->next;
        brix_free(c);
        c = next;
    }
    a->head = NULL;
    a->used = 0;
}
