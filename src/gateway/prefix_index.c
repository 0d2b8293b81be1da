/*
 * Sharded prefix index. Each shard: an array of entries (slab), an
 * open-addressing table of indices into it (linear probing, backward-shift
 * delete), and an intrusive LRU list. The shard is chosen by the hash's top
 * bits, the table slot by its low bits, so both are independent.
 */
#include "gateway/prefix_index.h"

#include "core/alloc.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define SHARDS 64
#define NONE   UINT32_MAX

typedef struct entry {
    uint64_t hash;
    brix_podset_t routed, cached;
    uint32_t prev, next; /* LRU, head = most recent */
} entry_t;

typedef struct shard {
    pthread_mutex_t mu;
    entry_t *e;
    uint32_t cap, used;
    uint32_t *table; /* slot -> entry index or NONE */
    uint32_t mask;
    uint32_t head, tail;
    uint32_t free_head; /* free entries chained through .next */
    uint64_t evictions;
} shard_t;

struct brix_prefix_index {
    shard_t sh[SHARDS];
    size_t bytes;
};

static shard_t *shard_of(brix_prefix_index_t *ix, uint64_t h)
{
    return &ix->sh[h >> 58]; /* top 6 bits: 64 shards */
}

brix_prefix_index_t *brix_prefix_index_new(size_t max_entries)
{
    brix_prefix_index_t *ix = brix_calloc(1, sizeof *ix);
    if (!ix)
        return NULL;
    uint32_t per = (uint32_t)((max_entries + SHARDS - 1) / SHARDS);
    if (per < 16)
        per = 16;
    uint32_t tsize = 16;
    while (tsize < per * 2)
        tsize <<= 1;
    for (int i = 0; i < SHARDS; i++) /* all first: a failure below frees every shard */
        pthread_mutex_init(&ix->sh[i].mu, NULL);
    for (int i = 0; i < SHARDS; i++) {
        shard_t *s = &ix->sh[i];
        s->cap = per;
        s->e = brix_calloc(per, sizeof *s->e);
        s->table = brix_malloc(tsize * sizeof *s->table);
        if (!s->e || !s->table) {
            brix_prefix_index_free(ix);
            return NULL;
        }
        memset(s->table, 0xff, tsize * sizeof *s->table);
        s->mask = tsize - 1;
        s->head = s->tail = NONE;
        for (uint32_t k = 0; k < per; k++)
            s->e[k].next = k + 1 < per ? k + 1 : NONE;
        s->free_head = 0;
    }
    ix->bytes = sizeof *ix + SHARDS * ((size_t)per * sizeof(entry_t) + tsize * sizeof(uint32_t));
    return ix;
}

void brix_prefix_index_free(brix_prefix_index_t *ix)
{
    if (!ix)
        return;
    for (int i = 0; i < SHARDS; i++) {
        brix_free(ix->sh[i].e);
        brix_free(ix->sh[i].table);
        pthread_mutex_destroy(&ix->sh[i].mu);
    }
    brix_free(ix);
}

static uint32_t slot0(const shard_t *s, uint64_t h)
{
    return (uint32_t)(h * 0x9e3779b97f4a7c15ull >> 32) & s->mask;
}

static uint32_t find(const shard_t *s, uint64_t h)
{
    for (uint32_t i = slot0(s, h);; i = (i + 1) & s->mask) {
        uint32_t k = s->table[i];
        if (k == NONE || s->e[k].hash == h)
            return k;
    }
}

static void lru_unlink(shard_t *s, uint32_t k)
{
    entry_t *e = &s->e[k];
    if (e->prev != NONE)
        s->e[e->prev].next = e->next;
    else
        s->head = e->next;
    if (e->next != NONE)
        s->e[e->next].prev = e->prev;
    else
        s->tail = e->prev;
}

static void lru_push_head(shard_t *s, uint32_t k)
{
    entry_t *e = &s->e[k];
    e->prev = NONE;
    e->next = s->head;
    if (s->head != NONE)
        s->e[s->head].prev = k;
    else
        s->tail = k;
    s->head = k;
}

static void table_delete(shard_t *s, uint64_t h)
{
    uint32_t i = slot0(s, h);
    while (s->e[s->table[i]].hash != h)
        i = (i + 1) & s->mask;
    uint32_t j = i;
    for (;;) {
        s->table[i] = NONE;
        for (;;) {
            j = (j + 1) & s->mask;
            if (s->table[j] == NONE)
                return;
            uint32_t home = slot0(s, s->e[s->table[j]].hash);
            if (i <= j ? (home <= i || home > j) : (home <= i && home > j))
                break;
        }
        s->table[i] = s->table[j];
        i = j;
    }
}

static void drop(shard_t *s, uint32_t k)
{
    lru_unlink(s, k);
    table_delete(s, s->e[k].hash);
    s->e[k].next = s->free_head;
    s->free_head = k;
    s->used--;
}

/* Finds or creates the entry for h (evicting the LRU entry when full). */
static uint32_t upsert(shard_t *s, uint64_t h)
{
    uint32_t k = find(s, h);
    if (k != NONE) {
        lru_unlink(s, k);
        lru_push_head(s, k);
        return k;
    }
    if (s->free_head == NONE) {
        drop(s, s->tail);
        s->evictions++;
    }
    k = s->free_head;
    s->free_head = s->e[k].next;
    memset(&s->e[k], 0, sizeof s->e[k]);
    s->e[k].hash = h;
    uint32_t i = slot0(s, h);
    while (s->table[i] != NONE)
        i = (i + 1) & s->mask;
    s->table[i] = k;
    lru_push_head(s, k);
    s->used++;
    return k;
}

void brix_prefix_index_add(brix_prefix_index_t *ix, brix_prefix_kind_t kind, const uint64_t *hashes,
                           size_t n, uint32_t pod)
{
    if (pod >= BRIX_PREFIX_MAX_PODS)
        return;
    for (size_t i = 0; i < n; i++) {
        shard_t *s = shard_of(ix, hashes[i]);
        pthread_mutex_lock(&s->mu);
        uint32_t k = upsert(s, hashes[i]);
        brix_podset_add(kind == BRIX_PREFIX_ROUTED ? &s->e[k].routed : &s->e[k].cached, pod);
        pthread_mutex_unlock(&s->mu);
    }
}

static bool empty(const entry_t *e)
{
    for (int w = 0; w < BRIX_PREFIX_WORDS; w++)
        if (e->routed.w[w] | e->cached.w[w])
            return false;
    return true;
}

void brix_prefix_index_remove(brix_prefix_index_t *ix, uint64_t hash, uint32_t pod)
{
    if (pod >= BRIX_PREFIX_MAX_PODS)
        return;
    shard_t *s = shard_of(ix, hash);
    pthread_mutex_lock(&s->mu);
    uint32_t k = find(s, hash);
    if (k != NONE) {
        s->e[k].cached.w[pod / 64] &= ~(1ull << (pod % 64));
        if (empty(&s->e[k]))
            drop(s, k);
    }
    pthread_mutex_unlock(&s->mu);
}

void brix_prefix_index_forget_pod(brix_prefix_index_t *ix, brix_prefix_kind_t kind, uint32_t pod)
{
    if (pod >= BRIX_PREFIX_MAX_PODS)
        return;
    uint64_t bit = 1ull << (pod % 64);
    for (int i = 0; i < SHARDS; i++) {
        shard_t *s = &ix->sh[i];
        pthread_mutex_lock(&s->mu);
        for (uint32_t k = s->head; k != NONE;) {
            uint32_t next = s->e[k].next;
            brix_podset_t *set = kind == BRIX_PREFIX_ROUTED ? &s->e[k].routed : &s->e[k].cached;
            set->w[pod / 64] &= ~bit;
            if (empty(&s->e[k]))
                drop(s, k);
            k = next;
        }
        pthread_mutex_unlock(&s->mu);
    }
}

void brix_prefix_index_match(brix_prefix_index_t *ix, const uint64_t *hashes, size_t n,
                             const uint32_t *pods, size_t npods, const brix_podset_t *precise_pods,
                             uint32_t *match)
{
    /* alive: candidates whose match run has not ended yet */
    uint64_t alive[BRIX_PREFIX_WORDS] = { 0 };
    size_t nalive = 0;
    for (size_t p = 0; p < npods; p++)
        match[p] = 0;
    if (npods > BRIX_PREFIX_MAX_PODS)
        npods = BRIX_PREFIX_MAX_PODS; /* candidates beyond this count as no match */
    for (size_t p = 0; p < npods; p++) {
        if (pods[p] < BRIX_PREFIX_MAX_PODS) {
            alive[p / 64] |= 1ull << (p % 64);
            nalive++;
        }
    }
    for (size_t i = 0; i < n && nalive; i++) {
        shard_t *s = shard_of(ix, hashes[i]);
        pthread_mutex_lock(&s->mu);
        uint32_t k = find(s, hashes[i]);
        if (k == NONE) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        const entry_t *e = &s->e[k];
        lru_unlink(s, k);
        lru_push_head(s, k);
        for (size_t p = 0; p < npods; p++) {
            if (!((alive[p / 64] >> (p % 64)) & 1))
                continue;
            uint32_t id = pods[p];
            bool precise = precise_pods && brix_podset_has(precise_pods, id);
            if (brix_podset_has(precise ? &e->cached : &e->routed, id)) {
                match[p] = (uint32_t)(i + 1);
            } else {
                alive[p / 64] &= ~(1ull << (p % 64));
                nalive--;
            }
        }
        pthread_mutex_unlock(&s->mu);
    }
}

size_t brix_prefix_index_entries(brix_prefix_index_t *ix)
{
    size_t n = 0;
    for (int i = 0; i < SHARDS; i++) {
        pthread_mutex_lock(&ix->sh[i].mu);
        n += ix->sh[i].used;
        pthread_mutex_unlock(&ix->sh[i].mu);
    }
    return n;
}

size_t brix_prefix_index_bytes(const brix_prefix_index_t *ix)
{
    return ix->bytes;
}

uint64_t brix_prefix_index_evictions(brix_prefix_index_t *ix)
{
    uint64_t n = 0;
    for (int i = 0; i < SHARDS; i++) {
        pthread_mutex_lock(&ix->sh[i].mu);
        n += ix->sh[i].evictions;
        pthread_mutex_unlock(&ix->sh[i].mu);
    }
    return n;
}
