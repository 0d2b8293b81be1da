/*
 * kv_events — vLLM-compatible KV-cache event publisher (ZMQ PUB + msgpack).
 *
 * Enabled with --kv-events-config '{"enable_kv_cache_events": true,
 * "publisher": "zmq", "endpoint": ..., "replay_endpoint": ..., "topic": ""}'
 * exactly as vLLM takes it (default endpoint: tcp, any address, port 5557).
 * The block pool reports stores and removals while a scheduler step runs; at
 * the end of the step the events are published as one EventBatch, on the
 * wire exactly as vLLM's ZmqEventPublisher frames it: multipart [topic,
 * sequence number as 8-byte big-endian, msgpack payload]. A ROUTER replay
 * socket (when replay_endpoint is set) re-sends buffered batches from a
 * requested sequence number, so subscribers can recover from gaps. All
 * sockets are non-blocking and serviced on the engine's libuv loop (ZMQ_FD
 * polled with uv_poll).
 *
 * Like vLLM, the PUB socket binds when the endpoint contains "*" or "::" or
 * is ipc:// or inproc://, and connects otherwise; the replay socket always
 * binds. Replay clients must be DEALER sockets (send ["", start_seq]): a REQ
 * socket accepts only the first of the several replies a replay produces.
 */
#ifndef BRIX_ENGINE_SIM_KV_EVENTS_H
#define BRIX_ENGINE_SIM_KV_EVENTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct brix_kv_events_cfg {
    bool enabled;          /* enable_kv_cache_events */
    char *publisher;       /* "zmq" (or "null": events are counted, not sent) */
    char *endpoint;        /* PUB bind/connect endpoint, default tcp any-address port 5557 */
    char *replay_endpoint; /* ROUTER endpoint for replays, NULL = none */
    char *topic;           /* default "" */
    int64_t buffer_steps;  /* batches kept for replay, default 10000 */
    int64_t hwm;           /* ZMQ send high-water mark, default 100000 */
} brix_kv_events_cfg_t;

/* Parses the JSON given to --kv-events-config. Unknown keys are an error
 * naming the key. Returns 0, or -1 with err (cfg then owns nothing). */
int brix_kv_events_cfg_parse(const char *json, brix_kv_events_cfg_t *cfg, char *err, size_t errlen);
void brix_kv_events_cfg_free(brix_kv_events_cfg_t *cfg);

typedef struct brix_kv_events brix_kv_events_t;

brix_kv_events_t *brix_kv_events_new(uv_loop_t *loop, const brix_kv_events_cfg_t *cfg, char *err,
                                     size_t errlen);

/* Queue events for the current batch. lora_name (adapter blocks only) is sent
 * as the 8th BlockStored field, as newer vLLM versions do. Hashes are the engine's 64-bit chained
 * block hashes. parent is ignored when has_parent is false; lora_id < 0 = none. */
void brix_kv_events_block_stored(brix_kv_events_t *ev, const uint64_t *hashes, size_t nhashes,
                                 bool has_parent, uint64_t parent, const uint32_t *token_ids,
                                 size_t ntokens, int block_size, int64_t lora_id,
                                 const char *lora_name);
void brix_kv_events_block_removed(brix_kv_events_t *ev, const uint64_t *hashes, size_t nhashes);
void brix_kv_events_all_cleared(brix_kv_events_t *ev);

/* Publishes the queued events as one batch (no-op when none are queued).
 * Returns 0, or -EAGAIN / -ENOMEM when the batch was dropped; a dropped batch
 * still consumes its sequence number, so subscribers see the gap. */
int brix_kv_events_flush(brix_kv_events_t *ev);

/* Counters for /metrics and tests, in batches. published: sent to ZMQ (the
 * "null" publisher counts the batches it discards); dropped: refused by ZMQ
 * or lost to ENOMEM. */
uint64_t brix_kv_events_published(const brix_kv_events_t *ev);
uint64_t brix_kv_events_dropped(const brix_kv_events_t *ev);

/* Closes the sockets (handles close on the loop) and frees. */
void brix_kv_events_close(brix_kv_events_t *ev);

#endif
