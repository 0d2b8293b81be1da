/*
 * kv_watch — the precise prefix index's feed: one engine's KV-cache events.
 *
 * Subscribes (ZMQ SUB) to an engine's vLLM-format event stream on the
 * control loop and turns BlockStored / BlockRemoved / AllBlocksCleared into
 * `cached` entries of the shared prefix index. Engine block hashes are
 * mapped to the gateway's own chain (prompt.h) by re-hashing each block's
 * token ids on its parent's gateway hash, so a request's prompt hashes match
 * exactly what the engine holds — provided the engine tokenizes like the
 * gateway (true for engine-sim; for a real vLLM see the README).
 *
 * Sequence numbers are checked: a gap is repaired from the engine's replay
 * socket when one is configured (live batches are held meanwhile), else the
 * pod's cached entries are dropped and rebuilt from what follows; a
 * sequence that goes backwards means the engine restarted (entries dropped
 * too). While not in sequence the pod is not "live", and routing falls back
 * to the approximate index for it.
 */
#ifndef BRIX_GATEWAY_KV_WATCH_H
#define BRIX_GATEWAY_KV_WATCH_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "gateway/fleet.h"
#include "gateway/prefix_index.h"

typedef struct brix_kvw brix_kvw_t;

typedef struct brix_kvw_stats {
    uint64_t batches, events, stored_blocks, removed_blocks;
    uint64_t gaps, resets, replays, unknown_parents;
    uint64_t reconnects; /* connections dropped and made again */
} brix_kvw_stats_t;

#define BRIX_KVW_MAX_MSG (16 << 20)

/* zctx: a ZMQ context shared by all watchers (control thread only).
 * max_msg: largest message accepted on either socket (ZMQ_MAXMSGSIZE; 0 =
 * BRIX_KVW_MAX_MSG). on_change runs when the watcher turns live or stops
 * being live. */
brix_kvw_t *brix_kvw_new(uv_loop_t *loop, void *zctx, brix_prefix_index_t *ix, brix_pod_t *pod,
                         const char *endpoint, const char *replay, uint32_t block_size,
                         int64_t max_msg, void (*on_change)(void *ud), void *ud);
/* The base model's name, the chain root of blocks without a LoRA. */
void brix_kvw_set_base_model(brix_kvw_t *w, const char *name);
bool brix_kvw_live(const brix_kvw_t *w);
/* Forgets what the pod cached and starts over (the engine went away: what it
 * held is unknown now); with a replay socket, asks for everything again. */
void brix_kvw_reset(brix_kvw_t *w);
const brix_kvw_stats_t *brix_kvw_stats(const brix_kvw_t *w);
/* Closes the sockets, forgets the pod's cached entries and frees (async). */
void brix_kvw_close(brix_kvw_t *w);

#endif
