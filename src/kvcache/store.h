/*
 * store — the memory of one `brix kvcache` node: a preallocated arena of
 * fixed-size slots, the index of objects in it, leases, pins and eviction.
 *
 * Arena: one memfd (huge pages when the kernel gives them), mapped once and
 * populated at open, so nothing allocates on the data path and same-host
 * clients can map the very same memory (the fd is passed to them). It starts
 * with one u32 generation word per slot, then the slabs. A slab is one
 * "largest class" worth of bytes and is cut into equal slots of one size
 * class when a class first needs it; a slab whose last slot is freed goes
 * back to the pool, so memory follows the value sizes in use. Classes are 4
 * per power of two (p, 5p/4, 6p/4, 7p/4) from 4 KiB, so a power-of-two value
 * (a 2 MiB KV block) fills its slot exactly.
 *
 * Objects are immutable: put-if-absent, keyed by (namespace id, 16-byte key).
 * An object with a reference (a TCP reply being written from it, a SHM
 * lease) or an unexpired pin is never evicted nor deleted. A slot's
 * generation word is bumped whenever the slot is freed and again when it is
 * reused, so a same-host reader whose lease expired sees the change.
 *
 * Eviction: LRU or S3-FIFO, per size class, evicting across classes the
 * class whose candidate is the least recently used; by bytes between a high
 * and a low watermark, and on demand when a class has no free slot. Batches
 * are touched in "prefix" order (last key first, so a chain's root is the
 * most recent) or in request order.
 *
 * Single-threaded: every call runs on the server's loop thread. Times are
 * passed in (monotonic ms) so tests control them.
 */
#ifndef BRIX_KVCACHE_STORE_H
#define BRIX_KVCACHE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvcache/brixkv.h" /* statuses */
#include "kvcache/proto.h"

typedef enum brix_kvs_policy {
    BRIX_KVS_LRU = 0,
    BRIX_KVS_S3FIFO = 1,
} brix_kvs_policy_t;

typedef enum brix_kvs_order {
    BRIX_KVS_ORDER_PREFIX = 0,  /* a batch is touched last key first: roots stay */
    BRIX_KVS_ORDER_REQUEST = 1, /* first key first (plain LRU) */
} brix_kvs_order_t;

typedef enum brix_kvs_hugepages {
    BRIX_KVS_HP_NONE = 0,    /* 4 KiB pages */
    BRIX_KVS_HP_THP = 1,     /* transparent huge pages on the shmem mapping */
    BRIX_KVS_HP_HUGETLB = 2, /* MFD_HUGETLB: reserved huge pages */
} brix_kvs_hugepages_t;

typedef struct brix_kvs_cfg {
    uint64_t capacity;  /* bytes of slabs wanted (rounded down to whole slabs) */
    uint64_t max_value; /* largest value; 0 = automatic (64 MiB, less for a small arena) */
    double high_watermark, low_watermark; /* fractions of capacity */
    brix_kvs_policy_t policy;
    brix_kvs_order_t order;
    uint64_t lease_ms; /* how long a lease blocks eviction */
    uint32_t max_leases_per_owner;
    uint64_t max_pin_ms;        /* longest pin */
    double max_pinned_fraction; /* of capacity */
    bool no_hugepages;          /* tests: skip the MFD_HUGETLB attempt */
    /* slot bytes all PUTs in flight may hold reserved (0 = no cap): past it
     * reserve answers NO_SPACE without evicting, so clients that send slowly
     * (or never finish) cannot push the cache out */
    uint64_t max_reserved;
    /* namespace ids are 1..max_namespaces: objects are counted per id so
     * the server may reuse an id nothing is stored under (0: not counted) */
    uint32_t max_namespaces;
} brix_kvs_cfg_t;

typedef struct brix_kvs brix_kvs_t;

/* An object as the server sees it (read-only outside store.c). */
typedef struct brix_kvs_obj brix_kvs_obj_t;

/* A reservation for a PUT value: the slot the payload is read into. */
typedef struct brix_kvs_resv {
    uint8_t *ptr; /* where the value's bytes go (NULL: nothing reserved) */
    uint8_t key[16];
    uint32_t slab, idx, len; /* internal */
} brix_kvs_resv_t;

/* A lease's owner (a connection): its leases end with it. */
typedef struct brix_kvs_owner {
    struct brix_kvs_lease *head;
    uint32_t nleases;
} brix_kvs_owner_t;

typedef struct brix_kvs_stats {
    uint64_t capacity_bytes, used_bytes, payload_bytes, reserved_bytes, objects;
    uint64_t gets, hits, misses;
    uint64_t puts, put_exists, put_no_space, put_too_large;
    uint64_t evictions, evicted_bytes;
    uint64_t leases_active, leases_expired, pins_active, pinned_bytes;
    uint64_t slabs_total, slabs_free;
} brix_kvs_stats_t;

/* Maps the arena and builds the classes. 0, or -errno with err. */
int brix_kvs_open(const brix_kvs_cfg_t *cfg, brix_kvs_t **out, char *err, size_t errlen);
void brix_kvs_close(brix_kvs_t *s);

/* The arena's memfd for same-host clients, sealed (no resize, no writable
 * mapping, no write); -1 when the kernel could not seal it: do not share. */
int brix_kvs_fd(const brix_kvs_t *s);
uint8_t *brix_kvs_base(const brix_kvs_t *s);
uint64_t brix_kvs_arena_bytes(const brix_kvs_t *s);
brix_kvs_hugepages_t brix_kvs_hugepages(const brix_kvs_t *s);
const char *brix_kvs_hugepages_str(brix_kvs_hugepages_t h);
uint64_t brix_kvs_max_value(const brix_kvs_t *s);
uint64_t brix_kvs_slab_bytes(const brix_kvs_t *s);
size_t brix_kvs_nclasses(const brix_kvs_t *s);
uint64_t brix_kvs_class_size(const brix_kvs_t *s, size_t i);
/* The class a value of len bytes goes to, or -1 if over max_value. */
int brix_kvs_class_of(const brix_kvs_t *s, uint64_t len);
void brix_kvs_get_stats(const brix_kvs_t *s, brix_kvs_stats_t *out);
/* Objects stored under namespace ns; UINT64_MAX when not counted. */
uint64_t brix_kvs_ns_objects(const brix_kvs_t *s, uint32_t ns);

/* ---- objects ---- */
uint32_t brix_kvs_obj_len(const brix_kvs_obj_t *o);
uint64_t brix_kvs_obj_offset(const brix_kvs_t *s, const brix_kvs_obj_t *o); /* in the arena */
const uint8_t *brix_kvs_obj_data(const brix_kvs_t *s, const brix_kvs_obj_t *o);
uint32_t brix_kvs_obj_gen_off(const brix_kvs_t *s, const brix_kvs_obj_t *o);
uint32_t brix_kvs_obj_gen(const brix_kvs_t *s, const brix_kvs_obj_t *o);
uint32_t brix_kvs_obj_refs(const brix_kvs_obj_t *o);

/* The object or NULL; no recency change, no counters. */
brix_kvs_obj_t *brix_kvs_find(brix_kvs_t *s, uint32_t ns, const uint8_t key[16]);
/* The longest prefix of keys stored; touches those (in the store's order). */
size_t brix_kvs_match(brix_kvs_t *s, uint32_t ns, const uint8_t (*keys)[16], size_t n);
/* Looks up n keys for a GET: objs[i] = object or NULL, each found one
 * referenced (unref it when its bytes are sent) and touched in order.
 * Counts gets/hits/misses. Returns the hits. */
size_t brix_kvs_get(brix_kvs_t *s, uint32_t ns, const uint8_t (*keys)[16], size_t n,
                    brix_kvs_obj_t **objs);
void brix_kvs_ref(brix_kvs_obj_t *o);
void brix_kvs_unref(brix_kvs_t *s, brix_kvs_obj_t *o);

/*
 * PUT in two steps so the payload is read straight into the slot:
 * brix_kvs_reserve for each value (status OK with r->ptr, or EXISTS (the key
 * is stored; nothing reserved), TOO_LARGE, NO_SPACE, BAD_REQUEST), then,
 * once every byte arrived, brix_kvs_commit for the whole batch (st[i] as
 * reserve returned it): keys are
 * inserted (or an EXISTS refreshed) in the store's order; st[i] is updated
 * (a key stored meanwhile by another connection turns into EXISTS and its
 * slot is freed). brix_kvs_unreserve frees a reservation that will not be
 * committed (the connection closed mid-PUT).
 */
uint16_t brix_kvs_reserve(brix_kvs_t *s, uint32_t ns, const uint8_t key[16], uint64_t len,
                          uint64_t now_ms, brix_kvs_resv_t *r);
void brix_kvs_unreserve(brix_kvs_t *s, brix_kvs_resv_t *r);
void brix_kvs_commit(brix_kvs_t *s, uint32_t ns, brix_kvs_resv_t *r, uint16_t *st, size_t n,
                     uint64_t now_ms);

/* OK, NOT_FOUND or BUSY (referenced or pinned). */
uint16_t brix_kvs_delete(brix_kvs_t *s, uint32_t ns, const uint8_t key[16], uint64_t now_ms);
/* Pins for ttl_ms (0 unpins). OK, NOT_FOUND, NO_SPACE (over the pinned
 * budget), BAD_REQUEST (ttl over the limit). */
uint16_t brix_kvs_pin(brix_kvs_t *s, uint32_t ns, const uint8_t key[16], uint64_t ttl_ms,
                      uint64_t now_ms);

/* ---- leases ---- */
void brix_kvs_owner_init(brix_kvs_owner_t *ow);
/* Takes a lease on o for owner (a reference until released or expired).
 * 0 with *id, or -ENOSPC (owner at its limit) / -ENOMEM. */
int brix_kvs_lease(brix_kvs_t *s, brix_kvs_owner_t *ow, brix_kvs_obj_t *o, uint64_t now_ms,
                   uint64_t *id);
/* Releases one of owner's leases; false if unknown (expired, another's). */
bool brix_kvs_release(brix_kvs_t *s, brix_kvs_owner_t *ow, uint64_t id);
/* Releases every lease of owner (its connection closed). */
void brix_kvs_owner_drop(brix_kvs_t *s, brix_kvs_owner_t *ow);

/* Expires leases and pins and evicts down to the low watermark when over
 * the high one. Call periodically and after PUTs. */
void brix_kvs_tick(brix_kvs_t *s, uint64_t now_ms);

#endif
