/*
 * kv_cache — the simulated paged KV cache: a block pool with automatic prefix
 * caching, as vLLM V1's BlockPool / KVCacheManager behave.
 *
 * Blocks hold block_size tokens. A block is either in use (ref > 0, owned by
 * one or more running sequences) or free. Free blocks sit in one LRU queue;
 * allocation takes from its head. A full block whose tokens are computed gets
 * a hash chained on its parent's hash (hash(parent, token ids, lora id)) and is
 * registered in the prefix-cache table; it stays there while free, so a later
 * sequence with the same prefix can take it back (a hit) until it is evicted
 * by an allocation reaching it at the head of the free queue. Freed blocks of
 * a sequence go to the tail in reverse order, so its tail blocks go first.
 *
 * Events (BlockStored on registration, BlockRemoved on eviction) go to an
 * optional sink, the KV-event publisher.
 */
#ifndef BRIX_ENGINE_SIM_KV_CACHE_H
#define BRIX_ENGINE_SIM_KV_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BRIX_KV_NONE UINT32_MAX

typedef struct brix_kv_block {
    uint64_t hash;       /* valid when cached */
    uint32_t ref;        /* sequences holding the block */
    uint32_t prev, next; /* free-queue links, BRIX_KV_NONE at the ends */
    bool cached;         /* registered in the prefix table */
    bool in_free;        /* on the free queue */
} brix_kv_block_t;

typedef struct brix_kv_sink {
    /* A run of consecutive blocks of one sequence got registered. */
    void (*stored)(void *ud, const uint64_t *hashes, size_t n, bool has_parent, uint64_t parent,
                   const uint32_t *tokens, size_t ntokens, int64_t lora_id);
    /* One cached block was evicted. */
    void (*removed)(void *ud, uint64_t hash);
    void *ud;
} brix_kv_sink_t;

typedef struct brix_kv_pool {
    uint32_t nblocks;
    uint32_t block_size;
    bool prefix_caching;
    brix_kv_block_t *blocks;
    uint32_t free_head, free_tail;
    uint32_t nfree; /* blocks on the free queue (cached or not) */
    /* Open-addressing table hash -> block id for cached blocks. */
    uint32_t *table;
    uint32_t table_mask;
    uint32_t ncached;
    brix_kv_sink_t sink;
    uint64_t evictions;
} brix_kv_pool_t;

/* nblocks >= 2 (one is the null block). */
int brix_kv_pool_init(brix_kv_pool_t *p, uint32_t nblocks, uint32_t block_size,
                      bool prefix_caching);
void brix_kv_pool_free(brix_kv_pool_t *p);

/* Chain hash of one block: hash(parent, tokens[0..block_size), lora_id). */
uint64_t brix_kv_block_hash(uint64_t parent, const uint32_t *tokens, uint32_t block_size,
                            int64_t lora_id);
/* Parent of the first block of every sequence. */
#define BRIX_KV_ROOT_HASH 0x6272697872616e64ull

/* Longest run of cached blocks matching hashes[0..n): takes a reference on
 * each (removing free ones from the free queue) and writes their ids. Returns
 * the number of blocks hit. */
size_t brix_kv_pool_acquire_cached(brix_kv_pool_t *p, const uint64_t *hashes, size_t n,
                                   uint32_t *out);
/* Counts the leading cached blocks without touching them. */
size_t brix_kv_pool_count_cached(const brix_kv_pool_t *p, const uint64_t *hashes, size_t n);
/* Takes n fresh blocks from the free queue head (evicting cached ones).
 * Returns false, taking nothing, when fewer than n are free. */
bool brix_kv_pool_alloc(brix_kv_pool_t *p, size_t n, uint32_t *out);
/* Registers a full, computed block under hash. If another block already has
 * that hash the block stays uncached (vLLM keeps the first). Returns whether
 * it was registered. Events are reported by the caller via
 * brix_kv_pool_report_stored so runs are batched like vLLM's. */
bool brix_kv_pool_cache_block(brix_kv_pool_t *p, uint32_t block, uint64_t hash);
void brix_kv_pool_report_stored(brix_kv_pool_t *p, const uint64_t *hashes, size_t n,
                                bool has_parent, uint64_t parent, const uint32_t *tokens,
                                size_t ntokens, int64_t lora_id);
/* Drops one reference on each block; blocks reaching 0 join the free-queue
 * tail, last block first. */
void brix_kv_pool_release(brix_kv_pool_t *p, const uint32_t *blocks, size_t n);

/* vLLM's kv_cache_usage_perc: 1 - free / (nblocks - 1). Block 0 is the
 * reserved null block, so nblocks - 1 blocks hold tokens. */
double brix_kv_pool_usage(const brix_kv_pool_t *p);

#endif
