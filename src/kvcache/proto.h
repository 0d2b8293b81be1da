/*
 * proto — the brixkv wire protocol, shared by the server (`brix kvcache`) and
 * the client library (libbrixkv). Binary, little-endian, batched.
 *
 * Every message, both ways, is a 24-byte header followed by body_len bytes.
 * A request names one op and `count` keys (or leases); its reply echoes op and
 * id and carries `count` fixed 32-byte entries (one per key, in request
 * order) followed, for a TCP GET, by the payloads of the entries whose status
 * is OK, concatenated in order. Requests may be pipelined; replies come back
 * in request order. A frame the server cannot parse gets a reply with the
 * request's op, count 0, status != OK and a UTF-8 message as body, and the
 * connection is closed.
 *
 *   HELLO    body brixkv_hello_t + model, dtype, layout, client strings,
 *            then token_len bytes of token (a node started with --token-file
 *            refuses a HELLO without its token: BRIXKV_ST_DENIED; a node
 *            without one ignores it). body_len must be exactly 32 + the five
 *            lengths. Must be the first request, and comes once;
 *            binds the connection to a namespace
 *            (model, dtype, layout, tp size/rank, hash seed). A client whose
 *            hash seed is not deterministic is refused (BRIXKV_ST_NAMESPACE):
 *            its keys could never match another instance's; so is one whose
 *            seed differs from the node's --hash-seed. Reply body
 *            brixkv_hello_reply_t + the node's UNIX socket path (may be
 *            empty). On a UNIX socket with BRIXKV_HELLO_SHM the reply carries
 *            the arena's memfd as SCM_RIGHTS ancillary data on its first byte:
 *            sealed (F_SEAL_SHRINK|GROW|FUTURE_WRITE|SEAL), so it can only be
 *            mapped read-only and never shrinks; it holds every namespace's
 *            values. A node that cannot seal it does not pass it. The reply's
 *            max_frame_kib (formerly padding, so 0 from older nodes) is the
 *            largest request body the node takes: a client splits PUTs to fit.
 *            A connection must send its HELLO within the node's
 *            --hello-timeout.
 *   MATCH    body count keys. Reply count = length of the leading run of keys
 *            stored (the longest stored prefix), no entries. Takes no lease.
 *   GET      body count keys. flags BRIXKV_F_SHM (only on a connection that
 *            mapped the arena): entries give offset + lease + generation, no
 *            payload; the client copies from its mapping, then checks the
 *            slot's generation word is unchanged (a changed word = a miss) and
 *            releases the lease. Without it the payloads follow the entries.
 *   PUT      body count brixkv_put_desc_t then the payloads concatenated in
 *            order. Objects are immutable: putting a stored key is EXISTS
 *            (and refreshes its recency), not an overwrite.
 *   DELETE   body count keys. Reply entries (OK, NOT_FOUND, BUSY if leased or
 *            pinned — deleted when the lease/pin ends is not promised).
 *   PIN      body brixkv_pin_t then count keys. ttl_s 0 unpins. A pinned
 *            object is never evicted until its ttl ends.
 *   RELEASE  body count u64 lease ids. flags BRIXKV_F_NOREPLY: no reply.
 *            Reply count = leases released.
 *   STATS    no body. Reply body brixkv_stats_wire_t.
 *   PING     no body. Reply empty.
 */
#ifndef BRIX_KVCACHE_PROTO_H
#define BRIX_KVCACHE_PROTO_H

#include <stdint.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "brixkv: the wire format is little-endian; big-endian hosts need byte swaps"
#endif

#define BRIXKV_MAGIC     0x31564b42u /* "BKV1" */
#define BRIXKV_VERSION   1
#define BRIXKV_KEY_BYTES 16

enum brixkv_op {
    BRIXKV_OP_HELLO = 1,
    BRIXKV_OP_MATCH = 2,
    BRIXKV_OP_GET = 3,
    BRIXKV_OP_PUT = 4,
    BRIXKV_OP_DELETE = 5,
    BRIXKV_OP_PIN = 6,
    BRIXKV_OP_RELEASE = 7,
    BRIXKV_OP_STATS = 8,
    BRIXKV_OP_PING = 9,
};

/* header flags */
#define BRIXKV_F_SHM     0x01 /* GET: answer with arena offsets + leases */
#define BRIXKV_F_NOREPLY 0x02 /* RELEASE: send no reply */

/* hello flags */
#define BRIXKV_HELLO_SHM 0x0001 /* map the arena (UNIX socket only) */

typedef struct brixkv_hdr {
    uint32_t magic;
    uint8_t op;
    uint8_t flags;
    uint16_t status; /* replies: BRIXKV_ST_* for the frame; requests: 0 */
    uint32_t id;     /* chosen by the client, echoed in the reply */
    uint32_t count;  /* keys / entries / leases */
    uint64_t body_len;
} brixkv_hdr_t;
_Static_assert(sizeof(brixkv_hdr_t) == 24, "brixkv header is 24 bytes");

typedef struct brixkv_hello {
    uint16_t version; /* BRIXKV_VERSION */
    uint16_t flags;   /* BRIXKV_HELLO_* */
    uint16_t tp_size; /* tensor-parallel world size (>= 1) */
    uint16_t tp_rank; /* < tp_size */
    uint64_t hash_seed;
    uint8_t seed_deterministic; /* 0: the client's seed is random -> refused */
    uint8_t token_len;          /* bytes of the node's token, after the client string */
    uint8_t pad[2];
    uint32_t block_bytes; /* the value size this client puts (0 = any) */
    uint16_t model_len, dtype_len, layout_len, client_len; /* strings follow */
} brixkv_hello_t;
_Static_assert(sizeof(brixkv_hello_t) == 32, "brixkv hello is 32 bytes");

typedef struct brixkv_hello_reply {
    uint32_t ns_id;       /* the server's id for this namespace */
    uint32_t flags;       /* BRIXKV_HELLO_SHM when the memfd was passed */
    uint64_t node_id;     /* random per server process: restart + same-node detection */
    uint64_t arena_bytes; /* size of the memfd mapping (0 without SHM) */
    uint64_t max_value;   /* largest value a PUT may carry */
    uint32_t max_batch;   /* most keys per request */
    uint32_t lease_ms;    /* how long a GET lease blocks eviction */
    uint16_t unix_len;    /* the node's UNIX socket path follows */
    uint16_t pad;
    uint32_t max_frame_kib; /* most body bytes of one request, in KiB (rounded down); 0 = not
                               said (a node before this field: assume 64 MiB) */
} brixkv_hello_reply_t;
_Static_assert(sizeof(brixkv_hello_reply_t) == 48, "brixkv hello reply is 48 bytes");

typedef struct brixkv_put_desc {
    uint8_t key[BRIXKV_KEY_BYTES];
    uint32_t len;
    uint32_t pad;
} brixkv_put_desc_t;
_Static_assert(sizeof(brixkv_put_desc_t) == 24, "brixkv put descriptor is 24 bytes");

typedef struct brixkv_pin {
    uint32_t ttl_s;
    uint32_t pad;
} brixkv_pin_t;

/* One reply entry per key. For a SHM GET: offset of the value in the arena,
 * the lease to release, and the slot's generation word: the u32 at arena
 * offset gen_off must still equal gen after the copy. */
typedef struct brixkv_entry {
    uint16_t status;
    uint16_t pad;
    uint32_t len;
    uint64_t offset;
    uint64_t lease;
    uint32_t gen_off; /* byte offset of the generation word in the arena */
    uint32_t gen;
} brixkv_entry_t;
_Static_assert(sizeof(brixkv_entry_t) == 32, "brixkv entry is 32 bytes");

typedef struct brixkv_stats_wire {
    uint64_t capacity_bytes; /* arena size */
    uint64_t used_bytes;     /* bytes of slots holding objects */
    uint64_t payload_bytes;  /* value bytes of those objects */
    uint64_t objects;
    uint64_t gets, hits, misses;
    uint64_t puts, put_exists, put_no_space;
    uint64_t evictions, evicted_bytes;
    uint64_t leases_active, pins_active;
    uint64_t namespaces, connections;
} brixkv_stats_wire_t;

#endif
