/*
 * Block pool. Everything is O(1) per block: the free queue is an intrusive
 * doubly linked list over the block array, the prefix table is open
 * addressing with linear probing and backward-shift deletion (no tombstones),
 * sized to twice the block count so it never fills.
 */
#include "engine_sim/kv_cache.h"

#include "core/alloc.h"

#include <errno.h>
#include <string.h>
#include <xxhash.h>

static uint32_t mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (uint32_t)h;
}

int brix_kv_pool_init(brix_kv_pool_t *p, uint32_t nblocks, uint32_t block_size, bool prefix_caching)
{
    memset(p, 0, sizeof *p);
    if (nblocks < 2 || !block_size)
        return -EINVAL;
    p->nblocks = nblocks;
    p->block_size = block_size;
    p->prefix_caching = prefix_caching;
    p->blocks = brix_calloc(nblocks, sizeof *p->blocks);
    uint32_t tsize = 16;
    while (tsize < nblocks * 2u)
        tsize <<= 1;
    p->table = brix_malloc(tsize * sizeof *p->table);
    if (!p->blocks || !p->table) {
        brix_kv_pool_free(p);
        return -ENOMEM;
    }
    memset(p->table, 0xff, tsize * sizeof *p->table);
    p->table_mask = tsize - 1;
    /* Block 0 is vLLM's null block: reserved, never allocated, and not
     * counted in usage (1 - free / (num_gpu_blocks - 1)). */
    p->blocks[0].prev = p->blocks[0].next = BRIX_KV_NONE;
    p->blocks[0].ref = 1;
    for (uint32_t i = 1; i < nblocks; i++) {
        p->blocks[i].prev = i > 1 ? i - 1 : BRIX_KV_NONE;
        p->blocks[i].next = i + 1 < nblocks ? i + 1 : BRIX_KV_NONE;
        p->blocks[i].in_free = true;
    }
    p->free_head = nblocks > 1 ? 1 : BRIX_KV_NONE;
    p->free_tail = nblocks > 1 ? nblocks - 1 : BRIX_KV_NONE;
    p->nfree = nblocks - 1;
    return 0;
}

void brix_kv_pool_free(brix_kv_pool_t *p)
{
    brix_free(p->blocks);
    brix_free(p->table);
    p->blocks = NULL;
    p->table = NULL;
}

uint64_t brix_kv_block_hash(uint64_t parent, const uint32_t *tokens, uint32_t block_size,
                            int64_t lora_id)
{
    /* One contiguous little-endian message: parent, tokens, optional lora id.
     * block_size is bounded by the --block-size flag (<= 256). */
    unsigned char msg[8 + 256 * 4 + 8];
    size_t n = 0;
    if (block_size > 256)
        block_size = 256;
    for (int i = 0; i < 8; i++)
        msg[n++] = (unsigned char)(parent >> (8 * i));
    for (uint32_t t = 0; t < block_size; t++)
        for (int i = 0; i < 4; i++)
            msg[n++] = (unsigned char)(tokens[t] >> (8 * i));
    if (lora_id >= 0)
        for (int i = 0; i < 8; i++)
            msg[n++] = (unsigned char)((uint64_t)lora_id >> (8 * i));
    return XXH64(msg, n, 0);
}

/* ---- free queue ---- */

static void fq_remove(brix_kv_pool_t *p, uint32_t b)
{
    brix_kv_block_t *k = &p->blocks[b];
    if (k->prev != BRIX_KV_NONE)
        p->blocks[k->prev].next = k->next;
    else
        p->free_head = k->next;
    if (k->next != BRIX_KV_NONE)
        p->blocks[k->next].prev = k->prev;
    else
        p->free_tail = k->prev;
    k->prev = k->next = BRIX_KV_NONE;
    k->in_free = false;
    p->nfree--;
}

static void fq_push_tail(brix_kv_pool_t *p, uint32_t b)
{
    brix_kv_block_t *k = &p->blocks[b];
    k->prev = p->free_tail;
    k->next = BRIX_KV_NONE;
    if (p->free_tail != BRIX_KV_NONE)
        p->blocks[p->free_tail].next = b;
    else
        p->free_head = b;
    p->free_tail = b;
    k->in_free = true;
    p->nfree++;
}

/* ---- prefix table ---- */

static uint32_t table_find(const brix_kv_pool_t *p, uint64_t hash)
{
    uint32_t i = mix(hash) & p->table_mask;
    for (;;) {
        uint32_t b = p->table[i];
        if (b == BRIX_KV_NONE)
            return BRIX_KV_NONE;
        if (p->blocks[b].hash == hash)
            return b;
        i = (i + 1) & p->table_mask;
    }
}

static void table_insert(brix_kv_pool_t *p, uint32_t b)
{
    uint32_t i = mix(p->blocks[b].hash) & p->table_mask;
    while (p->table[i] != BRIX_KV_NONE)
        i = (i + 1) & p->table_mask;
    p->table[i] = b;
    p->ncached++;
}

static void table_remove(brix_kv_pool_t *p, uint32_t b)
{
    uint32_t i = mix(p->blocks[b].hash) & p->table_mask;
    while (p->table[i] != b)
        i = (i + 1) & p->table_mask;
    /* Backward-shift: move later entries of the probe run into the hole. */
    uint32_t j = i;
    for (;;) {
        p->table[i] = BRIX_KV_NONE;
        for (;;) {
            j = (j + 1) & p->table_mask;
            if (p->table[j] == BRIX_KV_NONE) {
                p->ncached--;
                return;
            }
            uint32_t home = mix(p->blocks[p->table[j]].hash) & p->table_mask;
            /* Entry at j may fill hole i if its home is not in (i, j]. */
            if (i <= j ? (home <= i || home > j) : (home <= i && home > j))
                break;
        }
        p->table[i] = p->table[j];
        i = j;
    }
}

/* ---- API ---- */

size_t brix_kv_pool_count_cached(const brix_kv_pool_t *p, const uint64_t *hashes, size_t n)
{
    if (!p->prefix_caching)
        return 0;
    size_t i = 0;
    while (i < n && table_find(p, hashes[i]) != BRIX_KV_NONE)
        i++;
    return i;
}

size_t brix_kv_pool_acquire_cached(brix_kv_pool_t *p, const uint64_t *hashes, size_t n,
                                   uint32_t *out)
{
    if (!p->prefix_caching)
        return 0;
    size_t i;
    for (i = 0; i < n; i++) {
        uint32_t b = table_find(p, hashes[i]);
        if (b == BRIX_KV_NONE)
            break;
        brix_kv_block_t *k = &p->blocks[b];
        if (k->in_free)
            fq_remove(p, b);
        k->ref++;
        out[i] = b;
    }
    return i;
}

bool brix_kv_pool_alloc(brix_kv_pool_t *p, size_t n, uint32_t *out)
{
    if (n > p->nfree)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint32_t b = p->free_head;
        fq_remove(p, b);
        brix_kv_block_t *k = &p->blocks[b];
        if (k->cached) {
            table_remove(p, b);
            k->cached = false;
            p->evictions++;
            if (p->sink.removed)
                p->sink.removed(p->sink.ud, k->hash);
        }
        k->ref = 1;
        out[i] = b;
    }
    return true;
}

bool brix_kv_pool_cache_block(brix_kv_pool_t *p, uint32_t block, uint64_t hash)
{
    if (!p->prefix_caching)
        return false;
    brix_kv_block_t *k = &p->blocks[block];
    if (k->cached)
        return false;
    if (table_find(p, hash) != BRIX_KV_NONE)
        return false;
    k->hash = hash;
    k->cached = true;
    table_insert(p, block);
    return true;
}

void brix_kv_pool_report_stored(brix_kv_pool_t *p, const uint64_t *hashes, size_t n,
                                bool has_parent, uint64_t parent, const uint32_t *tokens,
                                size_t ntokens, int64_t lora_id)
{
    if (n && p->sink.stored)
        p->sink.stored(p->sink.ud, hashes, n, has_parent, parent, tokens, ntokens, lora_id);
}

void brix_kv_pool_release(brix_kv_pool_t *p, const uint32_t *blocks, size_t n)
{
    for (size_t i = n; i-- > 0;) {
        brix_kv_block_t *k = &p->blocks[blocks[i]];
        if (k->ref && --k->ref == 0)
            fq_push_tail(p, blocks[i]);
    }
}

double brix_kv_pool_usage(const brix_kv_pool_t *p)
{
    uint32_t usable = p->nblocks - 1;
    return usable ? 1.0 - (double)p->nfree / (double)usable : 0.0;
}
