/*
 * alloc — counted allocation wrappers and a per-request arena.
 *
 * Every heap allocation in brix goes through brix_malloc & co. so that tests can
 * assert that nothing leaks (brix_alloc_live) and inject ENOMEM
 * (brix_alloc_fail_after). cJSON is pointed at the same functions by
 * brix_alloc_init(). The arena is a bump allocator in chunks: everything a
 * request allocates is released by one brix_arena_reset/free call.
 */
#ifndef BRIX_CORE_ALLOC_H
#define BRIX_CORE_ALLOC_H

#include <stddef.h>
#include <stdint.h>

void brix_alloc_init(void);

void *brix_malloc(size_t n);
void *brix_calloc(size_t nmemb, size_t size);
void *brix_realloc(void *p, size_t n);
void brix_free(void *p);
char *brix_strdup(const char *s);
char *brix_strndup(const char *s, size_t n);

/* Number of live allocations made through these wrappers (all threads). */
int64_t brix_alloc_live(void);
/* Total bytes currently allocated through these wrappers. */
int64_t brix_alloc_live_bytes(void);
/* Make the n-th next allocation (0 = the next one) fail; -1 disables. Tests only. */
void brix_alloc_fail_after(long n);

typedef struct brix_arena_chunk brix_arena_chunk_t;

typedef struct brix_arena {
    brix_arena_chunk_t *head; /* newest chunk, allocations are carved from it */
    size_t chunk_size;        /* default size of a new chunk */
    size_t used;              /* bytes handed out since the last reset */
} brix_arena_t;

void brix_arena_init(brix_arena_t *a, size_t chunk_size);
/* Returns 16-byte aligned memory valid until reset/free, or NULL on ENOMEM. */
void *brix_arena_alloc(brix_arena_t *a, size_t n);
char *brix_arena_strndup(brix_arena_t *a, const char *s, size_t n);
/* Frees all chunks but the first, which is kept for reuse. */
void brix_arena_reset(brix_arena_t *a);
void brix_arena_free(brix_arena_t *a);

#endif
