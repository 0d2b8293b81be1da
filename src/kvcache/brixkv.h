/*
 * libbrixkv — the client library of brix's distributed KV-block store.
 *
 * An engine (brix engine-sim, or any engine written against this header)
 * opens one client per thread over the store's members ("HOST:PORT,..."),
 * bound to one namespace: model, dtype, layout, tensor-parallel rank and the
 * hash seed its block keys were made with. Keys are 16 opaque bytes (a
 * chained block hash); values are immutable byte strings (a KV block).
 *
 * Placement is client-side rendezvous hashing over the member list, so every
 * client with the same list sends a key to the same node without any
 * coordination, and a node joining or leaving moves only its own keys. Each
 * call fans a batch out to the nodes that own its keys (one request per
 * node, sent together, answers awaited together) and reports per key: a
 * node that is down, slow or refusing costs that node's keys a status
 * (UNAVAILABLE, TIMEOUT), never the whole call, and never wrong bytes.
 *
 * Same-host path: a node's HELLO reply names its UNIX socket; when the client
 * can connect to it and reaches the same node (same node_id), it maps the
 * node's arena (memfd passed once over the socket) and GETs become offsets
 * into that mapping: the bytes are copied once, from the store's memory into
 * the caller's buffer, and a generation check after the copy turns a slot
 * reused meanwhile into a miss.
 *
 * Every call is blocking, bounded by the client's timeout. A client is not
 * thread-safe; use one per thread. The library allocates with malloc: it is
 * meant to be linked by engines outside brix (libbrixkv.a / .so), so it does
 * not depend on brix's core.
 *
 * Linking: include "kvcache/brixkv.h" (with brix's src/ on the include path)
 * and link libbrixkv.a and libxxhash (-lbrixkv -lxxhash); nothing else.
 *
 * Connections: one per member, made by the first call that needs the member
 * (connect + HELLO within connect_timeout_ms; the members one call needs
 * connect in parallel, under that one timeout), then kept. A member whose
 * connect or HELLO fails is "down" for retry_ms: calls meanwhile give its
 * keys UNAVAILABLE (or NAMESPACE when it refused the HELLO) without trying,
 * so a dead node costs no connect storm. A member that does not answer a call
 * in time gets TIMEOUT for its keys and loses its connection (its replies
 * would be out of order); the next call reconnects. A member that restarted
 * (new node_id) just misses on the keys it had. Writes never raise SIGPIPE.
 *
 * Limits: at most 256 members, at most 2^20 keys per call (more: every key
 * BAD_REQUEST). A node's share of a batch is sent as pipelined requests of at
 * most its max_batch keys (from its HELLO reply), PUT requests of at most
 * 64 MiB of values (at least one key). Client memory grows with the keys of
 * the largest call, never with value bytes: values are written from and read
 * into the caller's buffers (writev/readv).
 */
#ifndef BRIXKV_H
#define BRIXKV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BRIXKV_KEY_LEN 16

typedef struct brixkv_key {
    uint8_t b[BRIXKV_KEY_LEN];
} brixkv_key_t;

/* A key from a 64-bit chained block hash (low 8 bytes little-endian, the rest
 * zero), the form vLLM-style 64-bit hashes take. */
static inline brixkv_key_t brixkv_key_u64(uint64_t h)
{
    brixkv_key_t k = { { 0 } };
    for (int i = 0; i < 8; i++)
        k.b[i] = (uint8_t)(h >> (8 * i));
    return k;
}

/* Per-key outcomes. Values below 100 are also wire statuses (proto.h). */
typedef enum brixkv_status {
    BRIXKV_ST_OK = 0,
    BRIXKV_ST_NOT_FOUND = 1,
    BRIXKV_ST_EXISTS = 2,      /* PUT of a stored key: kept as it was */
    BRIXKV_ST_NO_SPACE = 3,    /* nothing evictable to make room */
    BRIXKV_ST_TOO_LARGE = 4,   /* value above the node's max_value */
    BRIXKV_ST_BAD_REQUEST = 5, /* malformed frame or argument */
    BRIXKV_ST_NAMESPACE = 6,   /* HELLO refused or missing */
    BRIXKV_ST_BUSY = 7,        /* DELETE of a leased or pinned object */
    BRIXKV_ST_INTERNAL = 8,
    BRIXKV_ST_DENIED = 9,         /* HELLO without the node's token (--token-file) */
    BRIXKV_ST_TIMEOUT = 100,      /* the node did not answer in time */
    BRIXKV_ST_UNAVAILABLE = 101,  /* the node is down (or backing off) */
    BRIXKV_ST_SHORT_BUFFER = 102, /* GET: value larger than the caller's buffer */
    BRIXKV_ST_STALE = 103,        /* SHM GET: slot reused during the copy */
} brixkv_status_t;

const char *brixkv_status_str(brixkv_status_t st);

typedef struct brixkv_ns {
    const char *model;  /* served model name (LoRA: base name + adapter) */
    const char *dtype;  /* e.g. "bfloat16" */
    const char *layout; /* e.g. "paged-16" (block size, layer layout) */
    uint16_t tp_size;   /* >= 1 */
    uint16_t tp_rank;
    uint64_t hash_seed;      /* the seed of the chain's root hash */
    bool seed_deterministic; /* false: refused by every node, loudly */
    uint32_t block_bytes;    /* value size this client puts, 0 = any */
    const char *client;      /* free text for the node's logs, may be NULL */
    const char *token;       /* the nodes' token (their --token-file), NULL = none; <= 255 bytes */
} brixkv_ns_t;

/* Timeouts: 0 = the default, negative = refused by brixkv_open. */
typedef struct brixkv_opts {
    const char *servers;    /* "HOST:PORT[,HOST:PORT...]" (required) */
    int timeout_ms;         /* per call, default 1000 */
    int connect_timeout_ms; /* default 200 */
    int retry_ms;           /* a failed node is skipped this long, default 1000 */
    bool no_shm; /* never use the same-host path: TCP only (no UNIX socket, no mapping) */
} brixkv_opts_t;

typedef struct brixkv brixkv_t;

/* Parses servers and opens the client; connections are made lazily (a node
 * that is down now is not an error). Returns NULL with err on a bad
 * argument (unparsable servers, tp_rank >= tp_size, missing model...).
 *
 * servers: members separated by commas, each HOST:PORT, [IPV6]:PORT or
 * NAME:PORT (spaces around a member ignored; empty members, duplicates and
 * ports outside 1..65535 refused). Names are resolved here, BLOCKING (the
 * system resolver), first address used; a name that does not resolve is an
 * error. Placement hashes each member's string as written: every client of a
 * store must list its members spelled the same way (the controller publishes
 * one list), in any order. */
brixkv_t *brixkv_open(const brixkv_opts_t *opts, const brixkv_ns_t *ns, char *err, size_t errlen);
void brixkv_close(brixkv_t *c);

/* Replaces the member list (the controller published a new one). Nodes in
 * both lists keep their connections. Resolves names (blocking), like open.
 * Returns 0, or -EINVAL with err (the old list stays), or -ENOMEM. */
int brixkv_set_servers(brixkv_t *c, const char *servers, char *err, size_t errlen);

size_t brixkv_nmembers(const brixkv_t *c);
const char *brixkv_member_addr(const brixkv_t *c, size_t i);
bool brixkv_member_up(const brixkv_t *c, size_t i);  /* connected and HELLO accepted */
bool brixkv_member_shm(const brixkv_t *c, size_t i); /* using the same-host path */
/* The member owning key (rendezvous hashing over the addresses). */
size_t brixkv_owner(const brixkv_t *c, const brixkv_key_t *key);

/* The longest prefix keys[0..r) all stored (across nodes). A node that fails
 * ends the prefix at its first key. Never negative. */
size_t brixkv_match_prefix(brixkv_t *c, const brixkv_key_t *keys, size_t n);

/* Multi-get into caller buffers: bufs[i] of caps[i] bytes receives key i's
 * value, lens[i] its length, st[i] its status. Returns the number of OK keys.
 * SHORT_BUFFER: lens[i] is the value's length (retry with that much), bufs[i]
 * is not written. Any other status: lens[i] is 0, and bufs[i] may have been
 * written (a STALE copy, a node failing mid-reply) but holds no value. */
size_t brixkv_mget(brixkv_t *c, const brixkv_key_t *keys, size_t n, void *const *bufs,
                   const size_t *caps, size_t *lens, brixkv_status_t *st);

/* Multi-put (put-if-absent). Returns the number of keys now stored (OK or
 * EXISTS). A value above the node's max_value is TOO_LARGE without being
 * sent; vals[i] may be NULL only when lens[i] is 0. */
size_t brixkv_mput(brixkv_t *c, const brixkv_key_t *keys, size_t n, const void *const *vals,
                   const size_t *lens, brixkv_status_t *st);

/* Returns the number of OK keys. */
size_t brixkv_delete(brixkv_t *c, const brixkv_key_t *keys, size_t n, brixkv_status_t *st);
/* Pins keys for ttl_s seconds (0 unpins). Returns the number of OK keys. */
size_t brixkv_pin(brixkv_t *c, const brixkv_key_t *keys, size_t n, uint32_t ttl_s,
                  brixkv_status_t *st);

typedef struct brixkv_stats {
    uint64_t capacity_bytes, used_bytes, payload_bytes, objects;
    uint64_t gets, hits, misses;
    uint64_t puts, put_exists, put_no_space;
    uint64_t evictions, evicted_bytes;
    uint64_t leases_active, pins_active;
    uint64_t namespaces, connections;
} brixkv_stats_t;

/* One member's counters. Returns 0 or a brixkv_status_t (> 0) on failure. */
int brixkv_stats(brixkv_t *c, size_t member, brixkv_stats_t *out);

/* Client-side counters (for an engine's /metrics). */
typedef struct brixkv_client_stats {
    uint64_t calls, timeouts, unavailable, stale, reconnects;
    uint64_t bytes_in, bytes_out, shm_bytes_in;
} brixkv_client_stats_t;
void brixkv_client_stats(const brixkv_t *c, brixkv_client_stats_t *out);

/* The last failure the client saw, in words (a node's refusal of the
 * namespace, a connect error, a timeout...), "" if none. Valid until the next
 * call on c. For logs: per-key statuses are the API. */
const char *brixkv_last_error(const brixkv_t *c);

#ifdef __cplusplus
}
#endif

#endif
