/*
 * prefix_index — which pods hold which prompt blocks, shared by every worker
 * and the control thread.
 *
 * Keys are the gateway's chained block hashes (prompt.h). Each entry carries
 * two pod sets: `routed` — the gateway sent a request with this block to the
 * pod (the approximate index, AIBrix/GIE style) — and `cached` — the pod's
 * own KV events said the block is stored there and not yet removed (the
 * precise index, llm-d style). Pods are identified by their stable id, up to
 * BRIX_PREFIX_MAX_PODS.
 *
 * The table is split into shards, each a fixed-size open-addressing table
 * with its own mutex and LRU list; a full shard evicts its least recently
 * used entry, so memory is bounded (reported by brix_prefix_index_bytes).
 * Lookups walk a prompt's blocks in order and stop at the first block no
 * candidate pod holds, so a decision costs O(matched blocks × shards locked).
 * No lock is held across I/O; critical sections are a few memory accesses.
 */
#ifndef BRIX_GATEWAY_PREFIX_INDEX_H
#define BRIX_GATEWAY_PREFIX_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BRIX_PREFIX_MAX_PODS 256
#define BRIX_PREFIX_WORDS    (BRIX_PREFIX_MAX_PODS / 64)
/* The id that stands for a fleet's shared KV store (brix kvcache) in the
 * routed sets: blocks of prompts routed to a pod whose engines save to the
 * store. Pod ids skip it. */
#define BRIX_PREFIX_STORE_POD (BRIX_PREFIX_MAX_PODS - 1)

typedef struct brix_podset {
    uint64_t w[BRIX_PREFIX_WORDS];
} brix_podset_t;

static inline void brix_podset_add(brix_podset_t *s, uint32_t id)
{
    if (id < BRIX_PREFIX_MAX_PODS)
        s->w[id / 64] |= 1ull << (id % 64);
}
static inline bool brix_podset_has(const brix_podset_t *s, uint32_t id)
{
    return id < BRIX_PREFIX_MAX_PODS && (s->w[id / 64] >> (id % 64)) & 1;
}

typedef struct brix_prefix_index brix_prefix_index_t;

/* max_entries is split evenly over the shards. */
brix_prefix_index_t *brix_prefix_index_new(size_t max_entries);
void brix_prefix_index_free(brix_prefix_index_t *ix);

typedef enum brix_prefix_kind {
    BRIX_PREFIX_ROUTED, /* approximate: where the gateway sent it */
    BRIX_PREFIX_CACHED, /* precise: what the engine reported */
} brix_prefix_kind_t;

/* Records that pod holds (or was sent) these blocks. */
void brix_prefix_index_add(brix_prefix_index_t *ix, brix_prefix_kind_t kind, const uint64_t *hashes,
                           size_t n, uint32_t pod);
/* Removes pod from a block's cached set (a BlockRemoved event). */
void brix_prefix_index_remove(brix_prefix_index_t *ix, uint64_t hash, uint32_t pod);
/* Forgets everything of one kind about a pod (engine restart, event gap). */
void brix_prefix_index_forget_pod(brix_prefix_index_t *ix, brix_prefix_kind_t kind, uint32_t pod);

/*
 * For each candidate pod, the number of leading blocks of `hashes` it holds:
 * match[i] for pods[i]. `precise_pods` selects, per pod, which set counts:
 * pods in it use the cached (precise) set, the others the routed set.
 * Touches the entries it reads (LRU).
 */
void brix_prefix_index_match(brix_prefix_index_t *ix, const uint64_t *hashes, size_t n,
                             const uint32_t *pods, size_t npods, const brix_podset_t *precise_pods,
                             uint32_t *match);

size_t brix_prefix_index_entries(brix_prefix_index_t *ix);
size_t brix_prefix_index_bytes(const brix_prefix_index_t *ix);
uint64_t brix_prefix_index_evictions(brix_prefix_index_t *ix);

#endif
