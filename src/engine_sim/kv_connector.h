/*
 * kv_connector — engine-sim's KV connector to brix's distributed KV store
 * (`--kv-transfer-config`), after vLLM's KVConnectorBase_V1 contract
 * (vllm distributed/kv_transfer/kv_connector/v1/base.py).
 *
 * Scheduler side (get_num_new_matched_tokens): when a waiting sequence is
 * first considered, the blocks of its prompt after the local prefix-cache
 * hit are looked up in the store (longest stored prefix) and the hit blocks
 * loaded, asynchronously: the sequence waits (vLLM's WAITING_FOR_REMOTE_KVS)
 * while the connector thread does the I/O, then for what is left of the
 * simulated transfer time (bytes / transfer_gbps, scaled by --time-scale);
 * it is then admitted with the loaded blocks counted as computed. A block
 * whose load failed (timeout, unavailable, stale, wrong bytes) and every
 * block after it is recomputed (vLLM's get_block_ids_with_load_errors). The
 * thread loads what it can within timeout_ms of the lookup (a prefix); a
 * load still unanswered at twice that is abandoned by the loop: the store
 * can cost misses, never a failed or stuck request.
 * Save: full prompt blocks a prefill computed are queued for a multi-put
 * (best effort: a full queue drops them, counted).
 *
 * Threads: libbrixkv is blocking with one client per thread, so every store
 * call runs on one connector thread; jobs go to it through a mutex-protected
 * queue and come back through a uv_async. Jobs are allocated and freed on
 * the loop; the thread only fills in their results. All counters are loop
 * state (read by /metrics without locks).
 *
 * Block contents are synthetic but verifiable: a block's bytes are a word
 * sequence seeded by XXH64 of its key and the namespace, so a reader
 * recomputes and compares every byte it loaded.
 */
#ifndef BRIX_ENGINE_SIM_KV_CONNECTOR_H
#define BRIX_ENGINE_SIM_KV_CONNECTOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "engine_sim/scheduler.h"
#include "kvcache/brixkv.h"

/* KV bytes per token of the model every built-in GPU profile describes
 * (data/gpu_profiles.yaml: Llama-3-8B, 32 layers x 8 KV heads x 128 dims x
 * K and V x 2 bytes of bf16 = 128 KiB), so a 16-token block is 2 MiB. */
#define BRIX_KVC_BYTES_PER_TOKEN (128u * 1024u)

typedef enum brix_kvc_role {
    BRIX_KVC_BOTH,     /* kv_both: loads and saves */
    BRIX_KVC_PRODUCER, /* kv_producer: only saves */
    BRIX_KVC_CONSUMER, /* kv_consumer: only loads */
} brix_kvc_role_t;

typedef struct brix_kvc_cfg {
    brix_kvc_role_t role;
    char *servers;       /* "HOST:PORT[,HOST:PORT...]" */
    int64_t timeout_ms;  /* per store call; a load's I/O, and 2x its whole wait */
    int64_t block_bytes; /* stored per block; 0 = sim_block_bytes */
    /* the bytes one block of the modelled engine holds, which set the
     * simulated transfer time; 0 = BRIX_KVC_BYTES_PER_TOKEN x block size.
     * A smaller block_bytes stores a stand-in: the time is still the real
     * block's (a local cluster need not move 2 MiB per block to show it) */
    int64_t sim_block_bytes;
    double transfer_gbps; /* simulated bandwidth in Gbit/s; 0 = real I/O time only */
    int64_t max_inflight; /* loads in flight, and save batches queued */
    bool no_shm;          /* never use the store's same-host path */
    char *token_file;     /* the nodes' token (their --token-file), NULL = none */
} brix_kvc_cfg_t;

/* Parses --kv-transfer-config (vLLM's KVTransferConfig JSON). Unknown keys,
 * connectors and roles are errors naming them. Returns 0 or -1 with err (cfg
 * then owns nothing). */
int brix_kvc_cfg_parse(const char *json, brix_kvc_cfg_t *cfg, char *err, size_t errlen);
void brix_kvc_cfg_free(brix_kvc_cfg_t *cfg);

/* Why a load stopped short of what the store matched (or was not tried). */
typedef enum brix_kvc_fail {
    BRIX_KVC_FAIL_TIMEOUT,     /* a node did not answer in time, or the loop gave up */
    BRIX_KVC_FAIL_UNAVAILABLE, /* a node is down */
    BRIX_KVC_FAIL_NOT_FOUND,   /* matched, then gone (evicted) before the get */
    BRIX_KVC_FAIL_STALE,       /* same-host copy raced a slot reuse */
    BRIX_KVC_FAIL_CHECKSUM,    /* the bytes (or the length) were not the block's */
    BRIX_KVC_FAIL_REFUSED,     /* a node refused our HELLO: namespace, seed or token */
    BRIX_KVC_FAIL_BUSY,        /* max_inflight loads already: not looked up, computed */
    BRIX_KVC_FAIL_OTHER,
    BRIX_KVC_FAIL_N,
} brix_kvc_fail_t;

const char *brix_kvc_fail_name(brix_kvc_fail_t f);

typedef struct brix_kvc_stats {
    uint64_t queries_tokens; /* vllm:external_prefix_cache_queries_total */
    uint64_t hits_tokens;    /* vllm:external_prefix_cache_hits_total */
    uint64_t loads;          /* lookups that ended (hit or not) */
    uint64_t blocks_loaded, bytes_loaded;
    uint64_t load_failures[BRIX_KVC_FAIL_N];   /* loads cut short, by reason */
    uint64_t checksum_errors;                  /* blocks whose bytes were wrong */
    uint64_t blocks_saved, bytes_saved;        /* stored (or already there) */
    uint64_t save_failures;                    /* blocks a put did not store */
    uint64_t save_dropped;                     /* blocks dropped: save queue full */
    double wait_seconds;                       /* simulated seconds waiting for remote KV */
    uint32_t members, members_up, members_shm; /* as of the last store call */
} brix_kvc_stats_t;

typedef struct brix_kvc brix_kvc_t;

/* The namespace and sizes the engine gives the connector. */
typedef struct brix_kvc_env {
    uv_loop_t *loop;
    const char *model; /* served model name */
    uint32_t block_size;
    double time_scale; /* wall seconds per simulated second */
    brix_sched_t *sched;
    /* Called on the loop after a sequence's load finished (brix_sched_kv_ready
     * was called: the scheduler may admit it now). */
    void (*kick)(void *ud);
    void *ud;
} brix_kvc_env_t;

/* Opens the store client (a bad servers list is an error here, at start)
 * and starts the connector thread. cfg is copied. */
brix_kvc_t *brix_kvc_new(const brix_kvc_cfg_t *cfg, const brix_kvc_env_t *env, char *err,
                         size_t errlen);
/* Stops the thread (waiting for the call it is in, bounded by timeout_ms),
 * drops queued saves and closes the handles; frees on the loop. */
void brix_kvc_close(brix_kvc_t *c);

/* The scheduler's hooks (brix_sched_kv_t), bound to this connector. */
const brix_sched_kv_t *brix_kvc_sched_hooks(brix_kvc_t *c);

const brix_kvc_stats_t *brix_kvc_stats(const brix_kvc_t *c);
uint64_t brix_kvc_block_bytes(const brix_kvc_t *c);

/* Synthetic block contents: fill buf (len bytes) for key in the namespace
 * whose hash is ns_hash, or check that buf holds exactly that. */
void brix_kvc_fill(void *buf, size_t len, const brixkv_key_t *key, uint64_t ns_hash);
bool brix_kvc_verify(const void *buf, size_t len, const brixkv_key_t *key, uint64_t ns_hash);

#endif
