/*
 * brixkv_int — libbrixkv's private pieces that unit tests reach directly:
 * the member-list parser and rendezvous placement (brixkv_members.c), and
 * the limits the client enforces. Not installed; engines include brixkv.h.
 */
#ifndef BRIXKV_INT_H
#define BRIXKV_INT_H

#include "kvcache/brixkv.h"
#include "kvcache/proto.h"

#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

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
/* Discard buffer for payloads the caller cannot take. */
#define BRIXKV__SINK_BYTES 65536

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

/* ---- the client's state, shared by brixkv_conn.c (connections, members,
 * open/close) and brixkv_client.c (the batch calls) ---- */

/* Connection states of a member. */
enum brixkv__node_state {
    BRIXKV__NODE_CLOSED, /* no connection; the next call that needs the node connects */
    BRIXKV__NODE_UP,     /* fd connected and HELLO accepted; between calls no reply is
                    outstanding (the pipeline is in sync) */
    BRIXKV__NODE_DOWN,   /* the last connect/HELLO/call failed: no attempt before
                    down_until, its keys get down_st meanwhile */
};

/* Receive phases of the reply being read. */
enum brixkv__rx_phase {
    BRIXKV__RX_HDR,     /* the 24-byte header into rhdr */
    BRIXKV__RX_FIXED,   /* entries (or the stats struct) */
    BRIXKV__RX_PAYLOAD, /* TCP GET payloads into the caller's buffers */
    BRIXKV__RX_DRAIN,   /* body bytes this client does not know: discarded */
    BRIXKV__RX_ERRMSG,  /* an error frame's message, then the node is failed */
};

typedef struct brixkv__req {
    size_t lo, hi; /* idx[lo..hi) of the node's keys */
    uint32_t id;
} brixkv__req_t;

typedef struct brixkv__node {
    brixkv__member_t m;
    uint64_t seed;
    struct sockaddr_storage sa;
    socklen_t salen;

    enum brixkv__node_state state;
    int fd;
    bool via_unix;
    uint64_t down_until;
    brixkv_status_t down_st;
    uint64_t node_id;
    bool ever_up;
    uint32_t max_batch;
    uint64_t max_value;
    uint64_t max_frame; /* body bytes of one request (the node's --max-frame; unknown: max) */
    const uint8_t *map; /* the node's arena, read-only, when SHM is on */
    size_t map_len;
    uint32_t next_id;

    /* NOREPLY RELEASE bytes not yet written: they precede the next request */
    uint8_t *ctl;
    size_t ctl_len, ctl_cap;
    /* leases taken by this call's SHM GETs, released at its end */
    uint64_t *rel;
    size_t nrel, rel_cap;

    /* per-call scratch (grow-only, sized by keys) */
    size_t *idx;
    size_t nidx, idx_cap;
    uint8_t *body; /* keys, or PUT descriptors, contiguous */
    size_t body_cap;
    brixkv_entry_t *ents;
    size_t ents_cap;
    brixkv_hdr_t *hdrs;
    brixkv__req_t *reqs;
    size_t nreq, req_cap;
    struct iovec *iov;
    size_t niov, iov_pos, iov_cap;

    /* per-call receive state */
    bool active;
    size_t rreq;
    enum brixkv__rx_phase rphase;
    size_t roff;
    brixkv_hdr_t rhdr;
    size_t rfixed;           /* bytes of the fixed part of this reply */
    uint64_t rleft;          /* body bytes still to read in BRIXKV__RX_PAYLOAD/BRIXKV__RX_DRAIN */
    size_t rent;             /* BRIXKV__RX_PAYLOAD: entry index within the request */
    size_t rpay;             /* BRIXKV__RX_PAYLOAD: bytes of that entry already read */
    size_t match_first;      /* MATCH: global index of the first missing key */
    bool shm_get;            /* this call's GETs to the node use BRIXKV_F_SHM */
    int cstage;              /* connect_needed: where this node's handshake is */
    brixkv_status_t fail_st; /* OK, or why the node failed this call */
    char errmsg[BRIXKV__ERR_LEN];
} brixkv__node_t;

struct brixkv {
    int timeout_ms, connect_ms, retry_ms;
    bool no_shm;
    brixkv_ns_t ns; /* strings owned (copies) */
    uint8_t *hello; /* HELLO body, built once */
    size_t hello_len;

    brixkv__node_t *nodes;
    size_t n;
    uint64_t *seeds;

    uint8_t *sink;
    struct pollfd *pfd;
    brixkv__node_t **pnode;
    size_t pfd_cap;
    brixkv_stats_wire_t stats_wire;
    char err[BRIXKV__ERR_LEN];
    brixkv_client_stats_t cs;
};

uint64_t brixkv__now_ms(void);
int brixkv__ms_left(uint64_t deadline);
/* Grows *p (an array of elem-byte items, capacity *cap) to hold want. */
int brixkv__grow(void **p, size_t *cap, size_t want, size_t elem);
brixkv_status_t brixkv__wire_status(uint16_t s);
void brixkv__seterr(brixkv_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Closes nd's connection (and mapping); an UP node becomes CLOSED. */
void brixkv__node_close(brixkv_t *c, brixkv__node_t *nd);
/* Closes it and skips it for retry_ms; its keys get st meanwhile. */
void brixkv__node_down(brixkv_t *c, brixkv__node_t *nd, brixkv_status_t st);
/* Connects (in parallel) the nodes the call needs (nidx or active). */
void brixkv__connect_needed(brixkv_t *c, uint64_t deadline);
/* Drops UP connections the node closed while idle. */
void brixkv__drop_dead_idle(brixkv_t *c);

#endif
