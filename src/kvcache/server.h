/*
 * server — the network side of one `brix kvcache` node: a libuv loop with
 * the brixkv listeners (TCP for other hosts, UNIX for this one, which may map
 * the arena) and the HTTP listener for /metrics and /healthz.
 *
 * Each connection has a resumable parser (kvproto) and an output batch:
 * replies made while handling one read (pipelined requests) are written
 * together with one uv_write, whose buffers are the reply heads and, for a
 * TCP GET, the values' slots themselves (writev from the arena; the objects
 * stay referenced until the write completes). PUT payloads are read straight
 * into their reserved slots. A connection whose unsent replies pass
 * --max-pending stops being read until they drain.
 */
#ifndef BRIX_KVCACHE_SERVER_H
#define BRIX_KVCACHE_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "kvcache/store.h"

typedef struct brix_kvsrv_cfg {
    char *listen; /* HOST:PORT, NULL = no TCP listener */
    char *unix_path;
    int64_t http_port; /* -1 = no HTTP listener */
    char *http_host;
    uint64_t capacity;
    uint64_t max_value;
    double high_watermark, low_watermark;
    char *eviction, *eviction_order;
    uint64_t lease_ms;
    int64_t max_leases;
    uint64_t max_pin_ms;
    double max_pinned_fraction;
    int64_t max_batch;
    uint64_t max_frame;
    int64_t max_connections;
    uint64_t max_pending;
    uint64_t frame_timeout_ms; /* a frame begun and stalled this long closes the connection */
    uint64_t min_rate; /* bytes/s: a frame must end by frame_timeout + body / min_rate (0: no) */
    uint64_t max_put_reserved; /* slot bytes PUTs in flight may hold; 0 = capacity / 4 */
    uint64_t hello_timeout_ms; /* a connection without HELLO this long is closed (0: never) */
    uint64_t idle_timeout_ms;  /* 0 = never; else a connection without requests is closed */
    int64_t max_unauth_per_ip; /* TCP connections one address holds before HELLO (0: no cap) */
    int64_t max_namespaces;
    char *hash_seed;
    char *token_file;
    bool no_hugepages;
    char *log_level;
} brix_kvsrv_cfg_t;

typedef struct brix_kvsrv brix_kvsrv_t;

/* Opens the store and the listeners on loop. token may be NULL (no auth).
 * 0, or -errno with err. */
int brix_kvsrv_start(uv_loop_t *loop, const brix_kvsrv_cfg_t *cfg, const char *token,
                     brix_kvsrv_t **out, char *err, size_t errlen);
/* The bound ports (after start). */
int brix_kvsrv_port(const brix_kvsrv_t *s);
int brix_kvsrv_http_port(const brix_kvsrv_t *s);
/* Closes listeners and connections; the loop then ends. */
void brix_kvsrv_stop(brix_kvsrv_t *s);
/* After the loop ended. */
void brix_kvsrv_free(brix_kvsrv_t *s);

#endif
