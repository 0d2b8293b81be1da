/*
 * brixkv_int — libbrixkv's private pieces that unit tests reach directly:
 * the member-list parser and rendezvous placement (brixkv_members.c), and
 * the limits the client enforces. Not installed; engines include brixkv.h.
 */
#ifndef BRIXKV_INT_H
#define BRIXKV_INT_H

#include "kvcache/brixkv.h"
#include "kvcache/proto.h"

#include <stddef.h>
#include <stdint.h>

/* Bounds on what a caller hands the library (every input is bounded). */
#define BRIXKV__MAX_MEMBERS     256
#define BRIXKV__MAX_SERVERS_LEN 65536
#define BRIXKV__MAX_HOST        255 /* a DNS name is at most 253 bytes */
#define BRIXKV__MAX_CALL_KEYS   (1u << 20)
/* Keys per request when the node's HELLO reply gives no max_batch. */
#define BRIXKV__DEFAULT_BATCH 256
/* A PUT request carries at most this many payload bytes (at least one key),
 * so one request never asks a node for an unbounded frame. */
#define BRIXKV__PUT_REQ_BYTES (64u << 20)
/* The longest HELLO reply body accepted (fixed part + a UNIX path). */
#define BRIXKV__MAX_HELLO_REPLY 8192
/* Error-frame messages kept for brixkv_last_error. */
#define BRIXKV__ERR_LEN 256

typedef struct brixkv__member {
    /* The member exactly as listed (trimmed): the rendezvous hash input, so
     * every client given the same list places keys the same way. */
    char addr[BRIXKV__MAX_HOST + 16];
    char host[BRIXKV__MAX_HOST + 1]; /* without IPv6 brackets */
    char port[6];
} brixkv__member_t;

/* Splits "HOST:PORT[,HOST:PORT...]" (IPv6 as "[ADDR]:PORT", spaces around
 * members ignored) into a malloc'd array. No name resolution. Refuses empty
 * members, missing or out-of-range ports, duplicates and more than
 * BRIXKV__MAX_MEMBERS. Returns 0 or -EINVAL (message in err), -ENOMEM. */
int brixkv__parse_members(const char *servers, brixkv__member_t **out, size_t *n, char *err,
                          size_t errlen);

/* The per-member seed of the rendezvous weights: xxh64 of the address. */
uint64_t brixkv__member_seed(const char *addr);
/* Rendezvous (highest random weight): weight(m, key) = xxh64(key, seed_m);
 * the member with the highest weight owns the key. Ties (never seen in
 * practice) go to the higher seed, so the choice does not depend on the order
 * of the list. n must be > 0. */
size_t brixkv__rendezvous(const uint64_t *seeds, size_t n, const brixkv_key_t *key);

#endif
