/*
 * brixkv_client — libbrixkv: connections, HELLO, the same-host mapping and the
 * fanned-out batch calls (see brixkv.h for the contract).
 *
 * A call splits its keys by owner (rendezvous, brixkv_members.c), connects
 * lazily to the owners it needs, writes every node's requests, then drives
 * all those sockets with one poll() loop under the call's deadline: each node
 * is a small state machine that sends its pipelined requests (writev from the
 * caller's buffers, no staging) while it reads the replies in order (readv
 * straight into the caller's buffers). A node that fails or runs out of time
 * loses its connection (its pipeline is out of sync) and gives its keys a
 * status; the other nodes' keys are unaffected. Memory: per-node scratch that
 * grows with the number of keys, never with payload bytes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "kvcache/brixkv_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SINK_BYTES  65536 /* discard buffer for payloads the caller cannot take */
#define RX_IOV      64    /* iovecs per readv of payloads */
#define TX_IOV      1024  /* iovecs per sendmsg (IOV_MAX on Linux) */
#define MAX_NS_STR  1024  /* model, dtype, layout, client */
#define MAX_TOKEN   1024
#define DEF_TIMEOUT 1000
#define DEF_CONNECT 200
#define DEF_RETRY   1000

/* Connection states of a member. */
enum node_state {
    NODE_CLOSED, /* no connection; the next call that needs the node connects */
    NODE_UP,     /* fd connected and HELLO accepted; between calls no reply is
                    outstanding (the pipeline is in sync) */
    NODE_DOWN,   /* the last connect/HELLO/call failed: no attempt before
                    down_until, its keys get down_st meanwhile */
};

/* Receive phases of the reply being read. */
enum rx_phase {
    RX_HDR,     /* the 24-byte header into rhdr */
    RX_FIXED,   /* entries (or the stats struct) */
    RX_PAYLOAD, /* TCP GET payloads into the caller's buffers */
    RX_DRAIN,   /* body bytes this client does not know: discarded */
    RX_ERRMSG,  /* an error frame's message, then the node is failed */
};

typedef struct req {
    size_t lo, hi; /* idx[lo..hi) of the node's keys */
    uint32_t id;
} req_t;

typedef struct node {
    brixkv__member_t m;
    uint64_t seed;
    struct sockaddr_storage sa;
    socklen_t salen;

    enum node_state state;
    int fd;
    bool via_unix;
    uint64_t down_until;
    brixkv_status_t down_st;
    uint64_t node_id;
    bool ever_up;
    uint32_t max_batch;
    uint64_t max_value;
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
    req_t *reqs;
    size_t nreq, req_cap;
    struct iovec *iov;
    size_t niov, iov_pos, iov_cap;

    /* per-call receive state */
    bool active;
    size_t rreq;
    enum rx_phase rphase;
    size_t roff;
    brixkv_hdr_t rhdr;
    size_t rfixed;           /* bytes of the fixed part of this reply */
    uint64_t rleft;          /* body bytes still to read in RX_PAYLOAD/RX_DRAIN */
    size_t rent;             /* RX_PAYLOAD: entry index within the request */
    size_t rpay;             /* RX_PAYLOAD: bytes of that entry already read */
    size_t match_first;      /* MATCH: global index of the first missing key */
    bool shm_get;            /* this call's GETs to the node use BRIXKV_F_SHM */
    int cstage;              /* connect_needed: where this node's handshake is */
    brixkv_status_t fail_st; /* OK, or why the node failed this call */
    char errmsg[BRIXKV__ERR_LEN];
} node_t;

struct brixkv {
    int timeout_ms, connect_ms, retry_ms;
    bool no_shm;
    brixkv_ns_t ns; /* strings owned (copies) */
    uint8_t *hello; /* HELLO body, built once */
    size_t hello_len;

    node_t *nodes;
    size_t n;
    uint64_t *seeds;

    uint8_t *sink;
    struct pollfd *pfd;
    node_t **pnode;
    size_t pfd_cap;
    brixkv_stats_wire_t stats_wire;
    char err[BRIXKV__ERR_LEN];
    brixkv_client_stats_t cs;
};

/* One batch call in flight. */
typedef struct call {
    uint8_t op, flags;
    const brixkv_key_t *keys;
    size_t n;
    void *const *bufs;
    const size_t *caps;
    size_t *lens;
    const void *const *vals;
    const size_t *vlens;
    uint32_t ttl_s;
    brixkv_status_t *st; /* NULL for MATCH and STATS */
    uint64_t deadline;
} call_t;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static int ms_left(uint64_t deadline)
{
    uint64_t t = now_ms();
    if (t >= deadline)
        return 0;
    uint64_t d = deadline - t;
    return d > INT_MAX ? INT_MAX : (int)d;
}

static int grow(void **p, size_t *cap, size_t want, size_t elem)
{
    if (want <= *cap)
        return 0;
    size_t nc = *cap ? *cap : 16;
    while (nc < want)
        nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = nc;
    return 0;
}

const char *brixkv_status_str(brixkv_status_t st)
{
    switch (st) {
    case BRIXKV_ST_OK:
        return "ok";
    case BRIXKV_ST_NOT_FOUND:
        return "not found";
    case BRIXKV_ST_EXISTS:
        return "exists";
    case BRIXKV_ST_NO_SPACE:
        return "no space";
    case BRIXKV_ST_TOO_LARGE:
        return "too large";
    case BRIXKV_ST_BAD_REQUEST:
        return "bad request";
    case BRIXKV_ST_NAMESPACE:
        return "namespace refused";
    case BRIXKV_ST_BUSY:
        return "busy";
    case BRIXKV_ST_INTERNAL:
        return "internal error";
    case BRIXKV_ST_DENIED:
        return "denied";
    case BRIXKV_ST_TIMEOUT:
        return "timeout";
    case BRIXKV_ST_UNAVAILABLE:
        return "unavailable";
    case BRIXKV_ST_SHORT_BUFFER:
        return "short buffer";
    case BRIXKV_ST_STALE:
        return "stale";
    }
    return "unknown";
}

/* A wire status as the API's enum (an unknown one is the node's fault). */
static brixkv_status_t wire_status(uint16_t s)
{
    return s <= BRIXKV_ST_DENIED ? (brixkv_status_t)s : BRIXKV_ST_INTERNAL;
}

/* vsnprintf: a message cut at BRIXKV__ERR_LEN is fine for a log line. */
static void seterr(brixkv_t *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void seterr(brixkv_t *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof(c->err), fmt, ap);
    va_end(ap);
}

const char *brixkv_last_error(const brixkv_t *c)
{
    return c ? c->err : "";
}

/* ---- connections ------------------------------------------------------ */

static void node_close(brixkv_t *c, node_t *nd)
{
    (void)c;
    if (nd->fd >= 0)
        close(nd->fd);
    nd->fd = -1;
    if (nd->map)
        munmap((void *)nd->map, nd->map_len);
    nd->map = NULL;
    nd->map_len = 0;
    nd->via_unix = false;
    nd->ctl_len = 0;
    nd->nrel = 0; /* the node drops a closed connection's leases itself */
    if (nd->state == NODE_UP)
        nd->state = NODE_CLOSED;
}

static void node_down(brixkv_t *c, node_t *nd, brixkv_status_t st)
{
    node_close(c, nd);
    nd->state = NODE_DOWN;
    nd->down_st = st;
    nd->down_until = now_ms() + (uint64_t)c->retry_ms;
}

/* Sends all of len bytes before deadline. */
static int send_all(int fd, const void *buf, size_t len, uint64_t deadline)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w > 0) {
            p += w;
            len -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        struct pollfd pf = { .fd = fd, .events = POLLOUT };
        int t = ms_left(deadline);
        if (t == 0)
            return -ETIMEDOUT;
        if (poll(&pf, 1, t) < 0 && errno != EINTR)
            return -errno;
    }
    return 0;
}

/* Reads exactly len bytes before deadline. With passed_fd, ancillary
 * SCM_RIGHTS data is accepted too: the first descriptor lands there (any
 * other is closed). */
static int recv_all(int fd, void *buf, size_t len, uint64_t deadline, int *passed_fd)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t r;
        if (passed_fd) {
            union {
                struct cmsghdr h;
                char b[CMSG_SPACE(4 * sizeof(int))];
            } cb;
            struct iovec iv = { .iov_base = p, .iov_len = len };
            struct msghdr mh = {
                .msg_iov = &iv, .msg_iovlen = 1, .msg_control = cb.b, .msg_controllen = sizeof(cb.b)
            };
            r = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
            if (r > 0)
                for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
                    if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                        continue;
                    size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                    for (size_t i = 0; i < nfd; i++) {
                        int f;
                        memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                        if (*passed_fd < 0)
                            *passed_fd = f;
                        else
                            close(f);
                    }
                }
        } else {
            r = recv(fd, p, len, MSG_DONTWAIT);
        }
        if (r > 0) {
            p += r;
            len -= (size_t)r;
            continue;
        }
        if (r == 0)
            return -ECONNRESET;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return -errno;
        struct pollfd pf = { .fd = fd, .events = POLLIN };
        int t = ms_left(deadline);
        if (t == 0)
            return -ETIMEDOUT;
        if (poll(&pf, 1, t) < 0 && errno != EINTR)
            return -errno;
    }
    return 0;
}

/* Starts a non-blocking connect: the fd (*pending when the connect is still
 * in progress) or -errno. */
static int sock_start(const struct sockaddr *sa, socklen_t salen, bool *pending)
{
    *pending = false;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (sa->sa_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (connect(fd, sa, salen) == 0)
        return fd;
    int e = errno;
    if (e != EINPROGRESS && e != EAGAIN) {
        close(fd);
        return -e;
    }
    *pending = true;
    return fd;
}

/* The outcome of a connect that was in progress: 0 or -errno. */
static int sock_error(int fd)
{
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        soerr = errno;
    return -soerr;
}

static int sock_connect(const struct sockaddr *sa, socklen_t salen, uint64_t deadline)
{
    bool pending;
    int fd = sock_start(sa, salen, &pending);
    if (fd < 0 || !pending)
        return fd;
    struct pollfd pf = { .fd = fd, .events = POLLOUT };
    for (;;) {
        int t = ms_left(deadline);
        int r = t ? poll(&pf, 1, t) : 0;
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            close(fd);
            return r == 0 ? -ETIMEDOUT : -errno;
        }
        break;
    }
    int e = sock_error(fd);
    if (e) {
        close(fd);
        return e;
    }
    return fd;
}

typedef struct hello_res {
    brixkv_hello_reply_t r;
    char unix_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int memfd;
    brixkv_status_t st; /* OK, or why not */
} hello_res_t;

/* HELLO, in two halves so several nodes' handshakes overlap. */
static int hello_send(brixkv_t *c, node_t *nd, int fd, bool shm, uint64_t deadline)
{
    brixkv_hdr_t h = { .magic = BRIXKV_MAGIC, .op = BRIXKV_OP_HELLO, .id = ++nd->next_id };
    h.body_len = c->hello_len;
    brixkv_hello_t *hb = (brixkv_hello_t *)c->hello;
    hb->flags = shm ? BRIXKV_HELLO_SHM : 0;
    uint8_t out[sizeof(h)];
    memcpy(out, &h, sizeof(h));
    int rc = send_all(fd, out, sizeof(out), deadline);
    if (!rc)
        rc = send_all(fd, c->hello, c->hello_len, deadline);
    return rc;
}

/* Reads the reply to the HELLO just sent (id nd->next_id). */
static int hello_recv(brixkv_t *c, node_t *nd, int fd, bool shm, uint64_t deadline,
                      hello_res_t *res)
{
    memset(res, 0, sizeof(*res));
    res->memfd = -1;
    brixkv_hdr_t h = { .id = nd->next_id };
    int rc;
    brixkv_hdr_t rh;
    rc = recv_all(fd, &rh, sizeof(rh), deadline, shm ? &res->memfd : NULL);
    if (rc)
        goto fail;
    if (rh.magic != BRIXKV_MAGIC || rh.op != BRIXKV_OP_HELLO || rh.id != h.id ||
        rh.body_len > BRIXKV__MAX_HELLO_REPLY) {
        seterr(c, "%s: malformed HELLO reply", nd->m.addr);
        rc = -EPROTO;
        goto fail;
    }
    uint8_t body[BRIXKV__MAX_HELLO_REPLY];
    rc = recv_all(fd, body, (size_t)rh.body_len, deadline, shm ? &res->memfd : NULL);
    if (rc)
        goto fail;
    if (rh.status != BRIXKV_ST_OK) {
        /* Refused (namespace, non-deterministic seed, token...): say so loudly
         * in last_error with the node's own words. */
        res->st = wire_status(rh.status);
        seterr(c, "%s refused HELLO (%s): %.*s", nd->m.addr, brixkv_status_str(res->st),
               (int)(rh.body_len > 160 ? 160 : rh.body_len), (const char *)body);
        return 0;
    }
    if (rh.body_len < sizeof(res->r)) {
        seterr(c, "%s: short HELLO reply", nd->m.addr);
        rc = -EPROTO;
        goto fail;
    }
    memcpy(&res->r, body, sizeof(res->r));
    size_t ul = res->r.unix_len;
    if (ul > rh.body_len - sizeof(res->r) || ul >= sizeof(res->unix_path))
        ul = 0; /* no usable path: TCP only */
    memcpy(res->unix_path, body + sizeof(res->r), ul);
    res->unix_path[ul] = 0;
    res->st = BRIXKV_ST_OK;
    return 0;
fail:
    if (res->memfd >= 0)
        close(res->memfd);
    res->memfd = -1;
    return rc;
}

/* One HELLO exchange on a fresh connection. Returns 0 (res->st says whether
 * the node accepted) or -errno for an I/O failure. */
static int hello(brixkv_t *c, node_t *nd, int fd, bool shm, uint64_t deadline, hello_res_t *res)
{
    int rc = hello_send(c, nd, fd, shm, deadline);
    if (rc) {
        memset(res, 0, sizeof(*res));
        res->memfd = -1;
        return rc;
    }
    return hello_recv(c, nd, fd, shm, deadline, res);
}

/* Tries the node's UNIX socket (same host): on success nd->fd is the UNIX
 * connection, with the arena mapped when the node passed it. Any failure
 * leaves the TCP connection in use: the same-host path is an optimisation. */
static void try_unix(brixkv_t *c, node_t *nd, const char *path, uint64_t deadline)
{
    struct sockaddr_un su = { .sun_family = AF_UNIX };
    size_t pl = strlen(path);
    if (pl == 0 || pl >= sizeof(su.sun_path))
        return;
    memcpy(su.sun_path, path, pl);
    int ufd = sock_connect((struct sockaddr *)&su, (socklen_t)sizeof(su), deadline);
    if (ufd < 0)
        return;
    hello_res_t hr;
    if (hello(c, nd, ufd, true, deadline, &hr) || hr.st != BRIXKV_ST_OK ||
        hr.r.node_id != nd->node_id) {
        /* Another node answers on that path (e.g. a stale socket file of a
         * node sharing the name): its arena is not this member's. */
        if (hr.memfd >= 0)
            close(hr.memfd);
        close(ufd);
        return;
    }
    const uint8_t *map = NULL;
    size_t map_len = 0;
    if (hr.memfd >= 0) {
        if ((hr.r.flags & BRIXKV_HELLO_SHM) && hr.r.arena_bytes >= 4096 &&
            hr.r.arena_bytes <= (uint64_t)SIZE_MAX) {
            void *p = mmap(NULL, (size_t)hr.r.arena_bytes, PROT_READ, MAP_SHARED, hr.memfd, 0);
            if (p != MAP_FAILED) {
                map = p;
                map_len = (size_t)hr.r.arena_bytes;
            }
        }
        close(hr.memfd); /* the mapping keeps the arena */
    }
    close(nd->fd);
    nd->fd = ufd;
    nd->via_unix = true;
    nd->map = map;
    nd->map_len = map_len;
}

/* The node accepted our HELLO: record what it said, take the same-host path
 * if there is one. */
static void node_up(brixkv_t *c, node_t *nd, const hello_res_t *hr, uint64_t deadline)
{
    if (nd->ever_up)
        c->cs.reconnects++;
    /* A new node_id is a restarted node: its store is empty, our keys just
     * miss; nothing else to do. */
    nd->node_id = hr->r.node_id;
    nd->ever_up = true;
    nd->max_batch = hr->r.max_batch ? hr->r.max_batch : BRIXKV__DEFAULT_BATCH;
    nd->max_value = hr->r.max_value ? hr->r.max_value : UINT32_MAX;
    nd->state = NODE_UP;
    if (hr->unix_path[0] && !c->no_shm) /* no_shm: TCP only, as another host would */
        try_unix(c, nd, hr->unix_path, deadline);
}

/* Connect stages of connect_needed. */
enum { CS_CONNECTING = 1, CS_HELLO = 2 };

/* Connects every node this call needs that is not up (and not backing off),
 * all at once: one connect timeout (capped by the call's deadline) covers
 * them all, so several dead nodes cost no more than one. A node that fails
 * is DOWN for retry_ms. */
static void connect_needed(brixkv_t *c, uint64_t deadline)
{
    uint64_t t = now_ms(), dl = t + (uint64_t)c->connect_ms;
    if (dl > deadline)
        dl = deadline;
    size_t nw = 0;
    for (size_t m = 0; m < c->n; m++) {
        node_t *nd = &c->nodes[m];
        if (!(nd->nidx || nd->active) || nd->state == NODE_UP)
            continue;
        if (nd->state == NODE_DOWN && t < nd->down_until)
            continue;
        bool pending;
        int fd = sock_start((struct sockaddr *)&nd->sa, nd->salen, &pending);
        if (fd < 0) {
            seterr(c, "%s: connect: %s", nd->m.addr, strerror(-fd));
            node_down(c, nd, BRIXKV_ST_UNAVAILABLE);
            continue;
        }
        nd->fd = fd;
        nd->cstage = pending ? CS_CONNECTING : 0;
        c->pnode[nw++] = nd;
    }
    while (nw) {
        size_t np = 0;
        for (size_t w = 0; w < nw; w++) {
            node_t *nd = c->pnode[w];
            if (nd->cstage == 0) { /* connected: the HELLO fits any socket buffer */
                int rc = hello_send(c, nd, nd->fd, false, dl);
                if (rc) {
                    seterr(c, "%s: HELLO: %s", nd->m.addr, strerror(-rc));
                    node_down(c, nd, BRIXKV_ST_UNAVAILABLE);
                    c->pnode[w--] = c->pnode[--nw];
                    continue;
                }
                nd->cstage = CS_HELLO;
            }
            c->pfd[np++] =
                (struct pollfd){ .fd = nd->fd,
                                 .events = nd->cstage == CS_CONNECTING ? POLLOUT : POLLIN };
        }
        if (!np)
            break;
        int tl = ms_left(dl);
        int pr = tl ? poll(c->pfd, (nfds_t)np, tl) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            for (size_t w = 0; w < nw; w++) {
                seterr(c, "%s: %s timed out", c->pnode[w]->m.addr,
                       c->pnode[w]->cstage == CS_CONNECTING ? "connect" : "HELLO");
                node_down(c, c->pnode[w], BRIXKV_ST_UNAVAILABLE);
            }
            break;
        }
        /* pfd[i] belongs to pnode[i]: walk backwards so removals keep that */
        for (size_t w = np; w-- > 0;) {
            node_t *nd = c->pnode[w];
            if (!c->pfd[w].revents)
                continue;
            if (nd->cstage == CS_CONNECTING) {
                int e = sock_error(nd->fd);
                if (!e) {
                    nd->cstage = 0;
                    continue;
                }
                seterr(c, "%s: connect: %s", nd->m.addr, strerror(-e));
                node_down(c, nd, BRIXKV_ST_UNAVAILABLE);
            } else {
                /* The reply is one small write: it is all there, or comes
                 * right after (recv_all waits for it within dl). */
                hello_res_t hr;
                int rc = hello_recv(c, nd, nd->fd, false, dl, &hr);
                if (!rc && hr.st == BRIXKV_ST_OK) {
                    node_up(c, nd, &hr, dl);
                } else {
                    if (rc)
                        seterr(c, "%s: HELLO: %s", nd->m.addr,
                               rc == -EPROTO ? "protocol error" : strerror(-rc));
                    node_down(c, nd, rc ? BRIXKV_ST_UNAVAILABLE : hr.st);
                }
            }
            c->pnode[w] = c->pnode[--nw];
        }
    }
}

/* ---- one fanned-out call ----------------------------------------------- */

static void set_st(call_t *k, size_t i, brixkv_status_t s)
{
    if (k->st)
        k->st[i] = s;
    if (k->lens)
        k->lens[i] = 0;
}

/* The node failed (or ran out of time) before the replies of requests
 * rreq.. arrived: those keys get st, the connection goes. */
static void node_fail(brixkv_t *c, call_t *k, node_t *nd, brixkv_status_t st, bool down)
{
    for (size_t r = nd->rreq; r < nd->nreq; r++) {
        if (k->op == BRIXKV_OP_MATCH) {
            if (nd->reqs[r].lo < nd->reqs[r].hi && nd->idx[nd->reqs[r].lo] < nd->match_first)
                nd->match_first = nd->idx[nd->reqs[r].lo];
            break;
        }
        for (size_t j = nd->reqs[r].lo; j < nd->reqs[r].hi; j++)
            set_st(k, nd->idx[j], st);
    }
    if (st == BRIXKV_ST_UNAVAILABLE)
        c->cs.unavailable += nd->nidx;
    nd->fail_st = st;
    nd->active = false;
    nd->rreq = nd->nreq;
    if (down) /* later calls in the back-off see it as unavailable */
        node_down(c, nd, BRIXKV_ST_UNAVAILABLE);
    else
        node_close(c, nd);
}

static size_t fixed_len(const call_t *k, size_t count)
{
    if (k->op == BRIXKV_OP_STATS)
        return sizeof(brixkv_stats_wire_t);
    if (k->op == BRIXKV_OP_MATCH)
        return 0;
    return count * sizeof(brixkv_entry_t);
}

/* Builds the node's requests for this call: chunks of at most max_batch keys
 * (PUT: and BRIXKV__PUT_REQ_BYTES of payload), their headers and bodies, and
 * the iovec list that sends them (after any queued RELEASE bytes). */
static int build(brixkv_t *c, call_t *k, node_t *nd)
{
    size_t n = nd->nidx;
    bool put = k->op == BRIXKV_OP_PUT;
    /* GETs to a node whose arena is mapped come back as offsets + leases */
    nd->shm_get = k->op == BRIXKV_OP_GET && nd->map;
    uint8_t flags = (uint8_t)(k->flags | (nd->shm_get ? BRIXKV_F_SHM : 0));
    if (put) { /* values the node would refuse never leave */
        size_t w = 0;
        for (size_t j = 0; j < n; j++) {
            size_t i = nd->idx[j];
            if (k->vlens[i] > nd->max_value || k->vlens[i] > UINT32_MAX)
                set_st(k, i, BRIXKV_ST_TOO_LARGE);
            else
                nd->idx[w++] = i;
        }
        nd->nidx = n = w;
    }
    if (n == 0 && k->op != BRIXKV_OP_STATS && k->op != BRIXKV_OP_PING) {
        nd->active = false; /* every key was settled here */
        return 0;
    }
    size_t per = put ? sizeof(brixkv_put_desc_t) : BRIXKV_KEY_LEN;
    size_t nreq_max = n / nd->max_batch + 2;
    if (put) /* byte chunks: at most one extra request per key */
        nreq_max = n + 2;
    size_t pin_extra = k->op == BRIXKV_OP_PIN ? sizeof(brixkv_pin_t) * nreq_max : 0;
    size_t niov_max = 1 + nreq_max * 3 + (put ? n : 0);
    if (grow((void **)&nd->body, &nd->body_cap, n * per + pin_extra + 1, 1) ||
        grow((void **)&nd->ents, &nd->ents_cap, n + 1, sizeof(brixkv_entry_t)) ||
        grow((void **)&nd->reqs, &nd->req_cap, nreq_max, sizeof(req_t)) ||
        grow((void **)&nd->iov, &nd->iov_cap, niov_max, sizeof(struct iovec)))
        return -ENOMEM;
    /* hdrs shares req_cap */
    brixkv_hdr_t *nh = realloc(nd->hdrs, nd->req_cap * sizeof(*nh));
    if (!nh)
        return -ENOMEM;
    nd->hdrs = nh;

    nd->niov = nd->iov_pos = 0;
    if (nd->ctl_len)
        nd->iov[nd->niov++] = (struct iovec){ nd->ctl, nd->ctl_len };
    uint8_t *bp = nd->body;
    nd->nreq = 0;
    size_t j = 0;
    do { /* STATS and PING: one request without keys */
        size_t lo = j;
        uint64_t bytes = 0;
        while (j < n && j - lo < nd->max_batch) {
            if (put) {
                size_t l = k->vlens[nd->idx[j]];
                if (j > lo && bytes + l > BRIXKV__PUT_REQ_BYTES)
                    break;
                bytes += l;
            }
            j++;
        }
        req_t *rq = &nd->reqs[nd->nreq];
        brixkv_hdr_t *h = &nd->hdrs[nd->nreq];
        nd->nreq++;
        rq->lo = lo;
        rq->hi = j;
        rq->id = ++nd->next_id;
        *h = (brixkv_hdr_t){ .magic = BRIXKV_MAGIC,
                             .op = k->op,
                             .flags = flags,
                             .id = rq->id,
                             .count = (uint32_t)(j - lo) };
        nd->iov[nd->niov++] = (struct iovec){ h, sizeof(*h) };
        uint8_t *b0 = bp;
        if (k->op == BRIXKV_OP_PIN) {
            brixkv_pin_t pin = { .ttl_s = k->ttl_s };
            memcpy(bp, &pin, sizeof(pin));
            bp += sizeof(pin);
        }
        for (size_t q = lo; q < j; q++) {
            size_t i = nd->idx[q];
            if (put) {
                brixkv_put_desc_t d = { .len = (uint32_t)k->vlens[i] };
                memcpy(d.key, k->keys[i].b, BRIXKV_KEY_LEN);
                memcpy(bp, &d, sizeof(d));
                bp += sizeof(d);
            } else {
                memcpy(bp, k->keys[i].b, BRIXKV_KEY_LEN);
                bp += BRIXKV_KEY_LEN;
            }
        }
        if (bp > b0)
            nd->iov[nd->niov++] = (struct iovec){ b0, (size_t)(bp - b0) };
        h->body_len = (uint64_t)(bp - b0);
        if (put)
            for (size_t q = lo; q < j; q++) {
                size_t i = nd->idx[q];
                if (k->vlens[i]) /* the caller's bytes, not a copy */
                    nd->iov[nd->niov++] = (struct iovec){ (void *)k->vals[i], k->vlens[i] };
                h->body_len += k->vlens[i];
            }
    } while (j < n);
    nd->active = true;
    nd->rreq = 0;
    nd->rphase = RX_HDR;
    nd->roff = 0;
    return 0;
}

/* Writes what the socket takes. Returns 0 or -errno. */
static int do_send(brixkv_t *c, node_t *nd)
{
    while (nd->iov_pos < nd->niov) {
        size_t cnt = nd->niov - nd->iov_pos;
        struct msghdr mh = { .msg_iov = &nd->iov[nd->iov_pos],
                             .msg_iovlen = cnt > TX_IOV ? TX_IOV : cnt };
        ssize_t w = sendmsg(nd->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        }
        c->cs.bytes_out += (uint64_t)w;
        size_t left = (size_t)w;
        while (left && nd->iov_pos < nd->niov) {
            struct iovec *v = &nd->iov[nd->iov_pos];
            if (left >= v->iov_len) {
                left -= v->iov_len;
                nd->iov_pos++;
            } else {
                v->iov_base = (uint8_t *)v->iov_base + left;
                v->iov_len -= left;
                left = 0;
            }
        }
    }
    nd->ctl_len = 0; /* the queued RELEASE bytes went out with the rest */
    return 0;
}

/* Copies SHM GET entries of request rq out of the mapping. */
static void shm_copy(brixkv_t *c, call_t *k, node_t *nd, const req_t *rq)
{
    for (size_t j = rq->lo; j < rq->hi; j++) {
        const brixkv_entry_t *e = &nd->ents[j];
        size_t i = nd->idx[j];
        if (e->status != BRIXKV_ST_OK) {
            set_st(k, i, wire_status(e->status));
            continue;
        }
        if (grow((void **)&nd->rel, &nd->rel_cap, nd->nrel + 1, sizeof(uint64_t)) == 0)
            nd->rel[nd->nrel++] = e->lease;
        if (e->offset > nd->map_len || e->len > nd->map_len - e->offset || e->gen_off % 4 ||
            e->gen_off > nd->map_len - 4) {
            set_st(k, i, BRIXKV_ST_INTERNAL); /* points outside the arena */
            continue;
        }
        k->lens[i] = e->len;
        if (e->len > k->caps[i]) {
            k->st[i] = BRIXKV_ST_SHORT_BUFFER;
            continue;
        }
        memcpy(k->bufs[i], nd->map + e->offset, e->len);
        /* seqlock-style check: the copy's loads happen before the re-read
         * of the generation word; a changed word means the slot was reused
         * while we copied (the lease ran out), so the bytes may be mixed. */
        atomic_thread_fence(memory_order_acquire);
        uint32_t g = __atomic_load_n((const uint32_t *)(nd->map + e->gen_off), __ATOMIC_ACQUIRE);
        if (g != e->gen) {
            k->st[i] = BRIXKV_ST_STALE;
            k->lens[i] = 0;
            c->cs.stale++;
            continue;
        }
        k->st[i] = BRIXKV_ST_OK;
        c->cs.shm_bytes_in += e->len;
    }
}

/* The header and fixed part of a reply are in: check and apply them, and set
 * up what is left of its body. Returns 0, or a status to fail the node with. */
static int on_fixed(brixkv_t *c, call_t *k, node_t *nd)
{
    const req_t *rq = &nd->reqs[nd->rreq];
    size_t cnt = rq->hi - rq->lo;
    uint64_t rest = nd->rhdr.body_len - nd->rfixed;
    if (k->op == BRIXKV_OP_MATCH) {
        if (nd->rhdr.count > cnt)
            return BRIXKV_ST_INTERNAL;
        if (nd->rhdr.count < cnt && nd->idx[rq->lo + nd->rhdr.count] < nd->match_first)
            nd->match_first = nd->idx[rq->lo + nd->rhdr.count];
    } else if (k->op == BRIXKV_OP_GET && !nd->shm_get) {
        uint64_t sum = 0;
        for (size_t j = rq->lo; j < rq->hi; j++) {
            brixkv_entry_t *e = &nd->ents[j];
            size_t i = nd->idx[j];
            k->st[i] = wire_status(e->status);
            k->lens[i] = 0;
            if (e->status == BRIXKV_ST_OK) {
                sum += e->len;
                k->lens[i] = e->len;
                if (e->len > k->caps[i])
                    k->st[i] = BRIXKV_ST_SHORT_BUFFER;
            }
        }
        if (sum != rest)
            return BRIXKV_ST_INTERNAL; /* payloads do not add up: out of sync */
        nd->rphase = RX_PAYLOAD;
        nd->rleft = rest;
        nd->rent = rq->lo;
        nd->rpay = 0;
        return 0;
    } else if (k->op == BRIXKV_OP_GET) {
        shm_copy(c, k, nd, rq);
    } else if (k->op != BRIXKV_OP_STATS && k->op != BRIXKV_OP_PING) {
        for (size_t j = rq->lo; j < rq->hi; j++)
            set_st(k, nd->idx[j], wire_status(nd->ents[j].status));
    }
    nd->rleft = rest;
    nd->rphase = RX_DRAIN;
    return 0;
}

/* Where the fixed part of the current reply goes. */
static uint8_t *fixed_dst(brixkv_t *c, const call_t *k, node_t *nd)
{
    if (k->op == BRIXKV_OP_STATS)
        return (uint8_t *)&c->stats_wire;
    return (uint8_t *)&nd->ents[nd->reqs[nd->rreq].lo];
}

/* Appends n bytes of an error frame's message ("status: message"). */
static void errmsg_add(node_t *nd, const uint8_t *p, size_t n)
{
    size_t have = strlen(nd->errmsg);
    if (!strchr(nd->errmsg, ':') && have + 2 < sizeof(nd->errmsg)) {
        memcpy(nd->errmsg + have, ": ", 3);
        have += 2;
    }
    size_t room = sizeof(nd->errmsg) - 1 - have;
    size_t cp = n < room ? n : room;
    memcpy(nd->errmsg + have, p, cp);
    nd->errmsg[have + cp] = 0;
}

static void next_reply(node_t *nd)
{
    nd->rreq++;
    nd->rphase = RX_HDR;
    nd->roff = 0;
    if (nd->rreq >= nd->nreq)
        nd->active = false;
}

/* Reads what the socket has. Returns 0 (would block or done), or a status to
 * fail the node with (UNAVAILABLE for a closed or broken connection). */
static int do_recv(brixkv_t *c, call_t *k, node_t *nd)
{
    while (nd->active) {
        struct iovec iv[RX_IOV];
        int niv = 0;
        switch (nd->rphase) {
        case RX_HDR: {
            /* the header and, in the same read, the fixed part a well-formed
             * reply has (one syscall less per reply) */
            iv[niv++] =
                (struct iovec){ (uint8_t *)&nd->rhdr + nd->roff, sizeof(nd->rhdr) - nd->roff };
            size_t fx = fixed_len(k, nd->reqs[nd->rreq].hi - nd->reqs[nd->rreq].lo);
            if (fx)
                iv[niv++] = (struct iovec){ fixed_dst(c, k, nd), fx };
            break;
        }
        case RX_FIXED:
            iv[niv++] = (struct iovec){ fixed_dst(c, k, nd) + nd->roff, nd->rfixed - nd->roff };
            break;
        case RX_PAYLOAD: {
            size_t j = nd->rent, off = nd->rpay;
            uint64_t budget = nd->rleft;
            while (niv < RX_IOV && budget && j < nd->reqs[nd->rreq].hi) {
                const brixkv_entry_t *e = &nd->ents[j];
                size_t i = nd->idx[j];
                if (e->status != BRIXKV_ST_OK || e->len == off) {
                    j++;
                    off = 0;
                    continue;
                }
                size_t want = e->len - off;
                if (k->st[i] == BRIXKV_ST_OK) {
                    iv[niv++] = (struct iovec){ (uint8_t *)k->bufs[i] + off, want };
                } else { /* too big for the caller's buffer: discarded */
                    iv[niv++] = (struct iovec){ c->sink, want < SINK_BYTES ? want : SINK_BYTES };
                    want = iv[niv - 1].iov_len;
                }
                budget -= want;
                if (want < e->len - off)
                    break; /* the sink is reused: one discard chunk per read */
                j++;
                off = 0;
            }
            break;
        }
        case RX_DRAIN:
        case RX_ERRMSG: {
            size_t want = nd->rleft < SINK_BYTES ? (size_t)nd->rleft : SINK_BYTES;
            iv[niv++] = (struct iovec){ c->sink, want };
            break;
        }
        }
        ssize_t r = 0;
        if (niv && iv[0].iov_len) {
            r = readv(nd->fd, iv, niv);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return 0;
                return BRIXKV_ST_UNAVAILABLE;
            }
            if (r == 0) {
                if (nd->rphase == RX_ERRMSG)
                    goto errmsg_done;
                return BRIXKV_ST_UNAVAILABLE;
            }
            c->cs.bytes_in += (uint64_t)r;
        }
        size_t got = (size_t)r;
        switch (nd->rphase) {
        case RX_HDR: {
            size_t need = sizeof(nd->rhdr) - nd->roff;
            size_t extra = got > need ? got - need : 0; /* bytes in the fixed area */
            nd->roff += got - extra;
            if (nd->roff < sizeof(nd->rhdr))
                continue;
            const brixkv_hdr_t *h = &nd->rhdr;
            const req_t *rq = &nd->reqs[nd->rreq];
            if (h->magic != BRIXKV_MAGIC || h->op != k->op || h->id != rq->id) {
                seterr(c, "%s: reply out of sync", nd->m.addr);
                return BRIXKV_ST_INTERNAL;
            }
            if (h->status != BRIXKV_ST_OK) {
                /* a frame error: the node closes the connection after it */
                snprintf(nd->errmsg, sizeof(nd->errmsg), "%s",
                         brixkv_status_str(wire_status(h->status)));
                nd->rleft =
                    h->body_len < sizeof(nd->errmsg) - 1 ? h->body_len : sizeof(nd->errmsg) - 1;
                size_t have = extra < nd->rleft ? extra : (size_t)nd->rleft;
                errmsg_add(nd, fixed_dst(c, k, nd), have);
                nd->rleft -= have;
                if (nd->rleft == 0)
                    goto errmsg_done;
                nd->roff = 1; /* the ": " is in */
                nd->rphase = RX_ERRMSG;
                continue;
            }
            size_t cnt = rq->hi - rq->lo;
            if (k->op != BRIXKV_OP_MATCH && k->op != BRIXKV_OP_STATS && h->count != cnt) {
                seterr(c, "%s: reply count %u for %zu keys", nd->m.addr, h->count, cnt);
                return BRIXKV_ST_INTERNAL;
            }
            nd->rfixed = fixed_len(k, cnt);
            if (h->body_len < nd->rfixed) {
                seterr(c, "%s: short reply body", nd->m.addr);
                return BRIXKV_ST_INTERNAL;
            }
            nd->roff = extra;
            nd->rphase = RX_FIXED;
            if (nd->roff >= nd->rfixed) {
                int s = on_fixed(c, k, nd);
                if (s)
                    return s;
                if (nd->rleft == 0)
                    next_reply(nd);
            }
            continue;
        }
        case RX_FIXED:
            nd->roff += got;
            if (nd->roff < nd->rfixed)
                continue;
            {
                int s = on_fixed(c, k, nd);
                if (s)
                    return s;
            }
            if (nd->rleft == 0)
                next_reply(nd);
            continue;
        case RX_PAYLOAD:
            nd->rleft -= got;
            while (got) {
                const brixkv_entry_t *e = &nd->ents[nd->rent];
                if (e->status != BRIXKV_ST_OK || e->len == nd->rpay) {
                    nd->rent++;
                    nd->rpay = 0;
                    continue;
                }
                size_t take = e->len - nd->rpay < got ? e->len - nd->rpay : got;
                nd->rpay += take;
                got -= take;
            }
            if (nd->rleft == 0)
                next_reply(nd);
            continue;
        case RX_DRAIN:
            nd->rleft -= got;
            if (nd->rleft == 0)
                next_reply(nd);
            continue;
        case RX_ERRMSG: {
            errmsg_add(nd, c->sink, got);
            nd->roff += got;
            nd->rleft = nd->rleft > got ? nd->rleft - got : 0;
            if (nd->rleft)
                continue;
        errmsg_done:
            seterr(c, "%s: %s", nd->m.addr, nd->errmsg);
            return wire_status(nd->rhdr.status) == BRIXKV_ST_OK ? BRIXKV_ST_INTERNAL
                                                                : (int)wire_status(nd->rhdr.status);
        }
        }
    }
    return 0;
}

/* Queues the RELEASE (no reply) of the leases this call took and writes what
 * the socket takes now; the rest goes before the node's next request. */
static void flush_releases(brixkv_t *c, node_t *nd)
{
    if (nd->state != NODE_UP || (!nd->nrel && !nd->ctl_len)) {
        nd->nrel = 0;
        return;
    }
    size_t per = nd->max_batch;
    for (size_t o = 0; o < nd->nrel; o += per) {
        size_t cnt = nd->nrel - o < per ? nd->nrel - o : per;
        size_t need = nd->ctl_len + sizeof(brixkv_hdr_t) + cnt * 8;
        if (grow((void **)&nd->ctl, &nd->ctl_cap, need, 1))
            break; /* leases then expire on their own */
        brixkv_hdr_t h = { .magic = BRIXKV_MAGIC,
                           .op = BRIXKV_OP_RELEASE,
                           .flags = BRIXKV_F_NOREPLY,
                           .id = ++nd->next_id,
                           .count = (uint32_t)cnt,
                           .body_len = cnt * 8 };
        memcpy(nd->ctl + nd->ctl_len, &h, sizeof(h));
        memcpy(nd->ctl + nd->ctl_len + sizeof(h), nd->rel + o, cnt * 8);
        nd->ctl_len = need;
    }
    nd->nrel = 0;
    while (nd->ctl_len) {
        ssize_t w = send(nd->fd, nd->ctl, nd->ctl_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (w <= 0) {
            node_close(c, nd);
            return;
        }
        c->cs.bytes_out += (uint64_t)w;
        memmove(nd->ctl, nd->ctl + w, nd->ctl_len - (size_t)w);
        nd->ctl_len -= (size_t)w;
    }
}

/* An UP connection that is readable between calls was closed by its node
 * (restart, idle timeout) or is out of sync: drop it so the call reconnects
 * instead of failing. One poll() for all the call's nodes. */
static void drop_dead_idle(brixkv_t *c)
{
    size_t np = 0;
    for (size_t m = 0; m < c->n; m++) {
        node_t *nd = &c->nodes[m];
        if (nd->nidx || nd->active)
            if (nd->state == NODE_UP) {
                c->pfd[np] = (struct pollfd){ .fd = nd->fd, .events = POLLIN };
                c->pnode[np++] = nd;
            }
    }
    if (!np || poll(c->pfd, (nfds_t)np, 0) <= 0)
        return;
    for (size_t p = 0; p < np; p++)
        if (c->pfd[p].revents)
            node_close(c, c->pnode[p]);
}

/* Runs call k over the nodes that have keys in it (nd->nidx > 0, or active
 * for a keyless STATS). */
static void run(brixkv_t *c, call_t *k)
{
    drop_dead_idle(c);
    connect_needed(c, k->deadline);
    for (size_t m = 0; m < c->n; m++) {
        node_t *nd = &c->nodes[m];
        nd->match_first = SIZE_MAX;
        nd->fail_st = BRIXKV_ST_OK;
        nd->rreq = nd->nreq = 0;
        bool want = nd->nidx || nd->active;
        nd->active = false;
        if (!want)
            continue;
        if (nd->state != NODE_UP) {
            nd->reqs[0] = (req_t){ 0, nd->nidx, 0 };
            nd->nreq = 1;
            node_fail(c, k, nd, nd->state == NODE_DOWN ? nd->down_st : BRIXKV_ST_UNAVAILABLE,
                      false);
            continue;
        }
        if (build(c, k, nd)) {
            nd->reqs[0] = (req_t){ 0, nd->nidx, 0 };
            nd->nreq = 1;
            node_fail(c, k, nd, BRIXKV_ST_INTERNAL, false);
            continue;
        }
    }
    for (;;) {
        size_t np = 0;
        for (size_t m = 0; m < c->n; m++) {
            node_t *nd = &c->nodes[m];
            if (!nd->active)
                continue;
            int rc = do_send(c, nd);
            if (rc) {
                node_fail(c, k, nd, BRIXKV_ST_UNAVAILABLE, true);
                continue;
            }
            c->pfd[np] = (struct pollfd){
                .fd = nd->fd, .events = (short)(POLLIN | (nd->iov_pos < nd->niov ? POLLOUT : 0))
            };
            c->pnode[np++] = nd;
        }
        if (!np)
            break;
        int t = ms_left(k->deadline);
        int pr = t ? poll(c->pfd, (nfds_t)np, t) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) { /* out of time (or poll itself failed) */
            for (size_t p = 0; p < np; p++) {
                seterr(c, "%s: timed out", c->pnode[p]->m.addr);
                c->cs.timeouts++;
                node_fail(c, k, c->pnode[p], BRIXKV_ST_TIMEOUT, false);
            }
            break;
        }
        for (size_t p = 0; p < np; p++) {
            node_t *nd = c->pnode[p];
            if (!c->pfd[p].revents || !nd->active)
                continue;
            int s = do_recv(c, k, nd);
            if (s) {
                if (s == BRIXKV_ST_UNAVAILABLE)
                    seterr(c, "%s: connection lost", nd->m.addr);
                /* a lost connection or a node speaking out of turn: back off
                 * (no reconnect per call to a broken node) */
                node_fail(c, k, nd, (brixkv_status_t)s, true);
            }
        }
    }
    for (size_t m = 0; m < c->n; m++)
        if (c->nodes[m].nrel || c->nodes[m].ctl_len)
            flush_releases(c, &c->nodes[m]);
}

/* Splits keys by owner. Keys refused by check get their status here. */
static int split(brixkv_t *c, call_t *k)
{
    for (size_t m = 0; m < c->n; m++) {
        c->nodes[m].nidx = 0;
        c->nodes[m].active = false;
    }
    for (size_t i = 0; i < k->n; i++) {
        if (k->op == BRIXKV_OP_GET && !k->bufs[i] && k->caps[i]) {
            set_st(k, i, BRIXKV_ST_BAD_REQUEST);
            continue;
        }
        if (k->op == BRIXKV_OP_PUT && !k->vals[i] && k->vlens[i]) {
            set_st(k, i, BRIXKV_ST_BAD_REQUEST);
            continue;
        }
        node_t *nd = &c->nodes[brixkv__rendezvous(c->seeds, c->n, &k->keys[i])];
        if (grow((void **)&nd->idx, &nd->idx_cap, nd->nidx + 1, sizeof(size_t)))
            return -ENOMEM;
        nd->idx[nd->nidx++] = i;
    }
    for (size_t m = 0; m < c->n; m++) /* room for the one failure req */
        if (grow((void **)&c->nodes[m].reqs, &c->nodes[m].req_cap, 1, sizeof(req_t)))
            return -ENOMEM;
    return 0;
}

static size_t count_ok(const call_t *k, bool exists_too)
{
    size_t ok = 0;
    for (size_t i = 0; i < k->n; i++)
        ok += k->st[i] == BRIXKV_ST_OK || (exists_too && k->st[i] == BRIXKV_ST_EXISTS);
    return ok;
}

static bool call_start(brixkv_t *c, call_t *k, size_t n)
{
    k->n = n;
    k->deadline = now_ms() + (uint64_t)c->timeout_ms;
    c->cs.calls++;
    if (n > BRIXKV__MAX_CALL_KEYS || split(c, k)) {
        for (size_t i = 0; i < n && k->st; i++)
            set_st(k, i, BRIXKV_ST_BAD_REQUEST);
        return false;
    }
    return true;
}

size_t brixkv_match_prefix(brixkv_t *c, const brixkv_key_t *keys, size_t n)
{
    if (!c || !keys || n == 0 || n > BRIXKV__MAX_CALL_KEYS)
        return 0;
    call_t k = { .op = BRIXKV_OP_MATCH, .keys = keys };
    if (!call_start(c, &k, n))
        return 0;
    run(c, &k);
    size_t r = n;
    for (size_t m = 0; m < c->n; m++)
        if (c->nodes[m].nidx && c->nodes[m].match_first < r)
            r = c->nodes[m].match_first;
    return r;
}

size_t brixkv_mget(brixkv_t *c, const brixkv_key_t *keys, size_t n, void *const *bufs,
                   const size_t *caps, size_t *lens, brixkv_status_t *st)
{
    if (!c || n == 0)
        return 0;
    if (!keys || !bufs || !caps || !lens || !st) {
        if (st)
            for (size_t i = 0; i < n; i++)
                st[i] = BRIXKV_ST_BAD_REQUEST;
        return 0;
    }
    call_t k = {
        .op = BRIXKV_OP_GET, .keys = keys, .bufs = bufs, .caps = caps, .lens = lens, .st = st
    };
    if (!call_start(c, &k, n))
        return 0;
    run(c, &k);
    return count_ok(&k, false);
}

size_t brixkv_mput(brixkv_t *c, const brixkv_key_t *keys, size_t n, const void *const *vals,
                   const size_t *lens, brixkv_status_t *st)
{
    if (!c || n == 0)
        return 0;
    if (!keys || !vals || !lens || !st) {
        if (st)
            for (size_t i = 0; i < n; i++)
                st[i] = BRIXKV_ST_BAD_REQUEST;
        return 0;
    }
    call_t k = { .op = BRIXKV_OP_PUT, .keys = keys, .vals = vals, .vlens = lens, .st = st };
    if (!call_start(c, &k, n))
        return 0;
    run(c, &k);
    return count_ok(&k, true);
}

static size_t keyed(brixkv_t *c, uint8_t op, const brixkv_key_t *keys, size_t n, uint32_t ttl_s,
                    brixkv_status_t *st)
{
    if (!c || n == 0)
        return 0;
    if (!keys || !st) {
        if (st)
            for (size_t i = 0; i < n; i++)
                st[i] = BRIXKV_ST_BAD_REQUEST;
        return 0;
    }
    call_t k = { .op = op, .keys = keys, .ttl_s = ttl_s, .st = st };
    if (!call_start(c, &k, n))
        return 0;
    run(c, &k);
    return count_ok(&k, false);
}

size_t brixkv_delete(brixkv_t *c, const brixkv_key_t *keys, size_t n, brixkv_status_t *st)
{
    return keyed(c, BRIXKV_OP_DELETE, keys, n, 0, st);
}

size_t brixkv_pin(brixkv_t *c, const brixkv_key_t *keys, size_t n, uint32_t ttl_s,
                  brixkv_status_t *st)
{
    return keyed(c, BRIXKV_OP_PIN, keys, n, ttl_s, st);
}

int brixkv_stats(brixkv_t *c, size_t member, brixkv_stats_t *out)
{
    if (!c || !out || member >= c->n)
        return BRIXKV_ST_BAD_REQUEST;
    call_t k = { .op = BRIXKV_OP_STATS };
    call_start(c, &k, 0);
    c->nodes[member].active = true; /* the one node this call talks to */
    run(c, &k);
    node_t *nd = &c->nodes[member];
    if (nd->fail_st != BRIXKV_ST_OK)
        return (int)nd->fail_st;
    const brixkv_stats_wire_t *w = &c->stats_wire;
    *out = (brixkv_stats_t){
        .capacity_bytes = w->capacity_bytes,
        .used_bytes = w->used_bytes,
        .payload_bytes = w->payload_bytes,
        .objects = w->objects,
        .gets = w->gets,
        .hits = w->hits,
        .misses = w->misses,
        .puts = w->puts,
        .put_exists = w->put_exists,
        .put_no_space = w->put_no_space,
        .evictions = w->evictions,
        .evicted_bytes = w->evicted_bytes,
        .leases_active = w->leases_active,
        .pins_active = w->pins_active,
        .namespaces = w->namespaces,
        .connections = w->connections,
    };
    return 0;
}

void brixkv_client_stats(const brixkv_t *c, brixkv_client_stats_t *out)
{
    if (!out)
        return;
    if (!c) {
        memset(out, 0, sizeof(*out));
        return;
    }
    *out = c->cs;
}

/* ---- members ------------------------------------------------------------ */

size_t brixkv_nmembers(const brixkv_t *c)
{
    return c ? c->n : 0;
}

const char *brixkv_member_addr(const brixkv_t *c, size_t i)
{
    return c && i < c->n ? c->nodes[i].m.addr : NULL;
}

bool brixkv_member_up(const brixkv_t *c, size_t i)
{
    return c && i < c->n && c->nodes[i].state == NODE_UP;
}

bool brixkv_member_shm(const brixkv_t *c, size_t i)
{
    return c && i < c->n && c->nodes[i].state == NODE_UP && c->nodes[i].map != NULL;
}

size_t brixkv_owner(const brixkv_t *c, const brixkv_key_t *key)
{
    if (!c || !key || !c->n)
        return 0;
    return brixkv__rendezvous(c->seeds, c->n, key);
}

static void node_free(brixkv_t *c, node_t *nd)
{
    node_close(c, nd);
    free(nd->ctl);
    free(nd->rel);
    free(nd->idx);
    free(nd->body);
    free(nd->ents);
    free(nd->hdrs);
    free(nd->reqs);
    free(nd->iov);
}

/* Parses and resolves servers into a new node array (blocking DNS). Members
 * already in c keep their node (and connection). */
static int members_set(brixkv_t *c, const char *servers, char *err, size_t errlen)
{
    brixkv__member_t *ms;
    size_t n;
    int rc = brixkv__parse_members(servers, &ms, &n, err, errlen);
    if (rc)
        return rc;
    node_t *nodes = calloc(n, sizeof(*nodes));
    uint64_t *seeds = calloc(n, sizeof(*seeds));
    struct pollfd *pfd = calloc(n, sizeof(*pfd));
    node_t **pnode = calloc(n, sizeof(*pnode));
    if (!nodes || !seeds || !pfd || !pnode) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        node_t *nd = &nodes[i];
        nd->m = ms[i];
        nd->fd = -1;
        nd->seed = seeds[i] = brixkv__member_seed(ms[i].addr);
        struct addrinfo hints = { .ai_family = AF_UNSPEC,
                                  .ai_socktype = SOCK_STREAM,
                                  .ai_flags = AI_NUMERICSERV },
                        *ai = NULL;
        int g = getaddrinfo(ms[i].host, ms[i].port, &hints, &ai);
        if (g || !ai || ai->ai_addrlen > sizeof(nd->sa)) {
            if (err && errlen)
                snprintf(err, errlen, "servers: cannot resolve \"%s\": %s", ms[i].addr,
                         g ? gai_strerror(g) : "no address");
            if (ai)
                freeaddrinfo(ai);
            rc = -EINVAL;
            goto out;
        }
        memcpy(&nd->sa, ai->ai_addr, ai->ai_addrlen);
        nd->salen = ai->ai_addrlen;
        freeaddrinfo(ai);
    }
    /* Resolved: swap in, moving the nodes that stay. */
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < c->n; j++)
            if (c->nodes[j].seed == nodes[i].seed && !strcmp(c->nodes[j].m.addr, nodes[i].m.addr)) {
                struct sockaddr_storage sa = nodes[i].sa;
                socklen_t salen = nodes[i].salen;
                nodes[i] = c->nodes[j];
                if (nodes[i].state != NODE_UP) { /* not connected: use the fresh address */
                    nodes[i].sa = sa;
                    nodes[i].salen = salen;
                }
                memset(&c->nodes[j], 0, sizeof(c->nodes[j]));
                c->nodes[j].fd = -1;
                break;
            }
    for (size_t j = 0; j < c->n; j++)
        node_free(c, &c->nodes[j]);
    free(c->nodes);
    free(c->seeds);
    free(c->pfd);
    free(c->pnode);
    c->nodes = nodes;
    c->seeds = seeds;
    c->pfd = pfd;
    c->pnode = pnode;
    c->n = n;
    c->pfd_cap = n;
    nodes = NULL;
    seeds = NULL;
    pfd = NULL;
    pnode = NULL;
out:
    free(nodes);
    free(seeds);
    free(pfd);
    free(pnode);
    free(ms);
    return rc;
}

int brixkv_set_servers(brixkv_t *c, const char *servers, char *err, size_t errlen)
{
    if (!c) {
        if (err && errlen)
            snprintf(err, errlen, "no client");
        return -EINVAL;
    }
    int rc = members_set(c, servers, err, errlen);
    return rc == -ENOMEM ? -ENOMEM : rc ? -EINVAL : 0;
}

static char *dupstr(const char *s)
{
    return strdup(s ? s : "");
}

static int bad(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return -EINVAL;
}

static int check_str(const char *s, bool required, const char *name, char *err, size_t errlen)
{
    if (!s || !*s) {
        if (!required)
            return 0;
        if (err && errlen)
            snprintf(err, errlen, "namespace: %s is required", name);
        return -EINVAL;
    }
    if (strnlen(s, MAX_NS_STR + 1) > MAX_NS_STR) {
        if (err && errlen)
            snprintf(err, errlen, "namespace: %s longer than %d bytes", name, MAX_NS_STR);
        return -EINVAL;
    }
    return 0;
}

brixkv_t *brixkv_open(const brixkv_opts_t *opts, const brixkv_ns_t *ns, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = 0;
    if (!opts || !ns) {
        bad(err, errlen, "brixkv_open: opts and ns are required");
        return NULL;
    }
    if (check_str(ns->model, true, "model", err, errlen) ||
        check_str(ns->dtype, true, "dtype", err, errlen) ||
        check_str(ns->layout, true, "layout", err, errlen) ||
        check_str(ns->client, false, "client", err, errlen))
        return NULL;
    if (ns->token && strnlen(ns->token, 256) > 255) {
        bad(err, errlen, "namespace: token longer than 255 bytes");
        return NULL;
    }
    if (ns->tp_size < 1 || ns->tp_rank >= ns->tp_size) {
        bad(err, errlen, "namespace: want tp_size >= 1 and tp_rank < tp_size");
        return NULL;
    }
    if (opts->timeout_ms < 0 || opts->connect_timeout_ms < 0 || opts->retry_ms < 0) {
        bad(err, errlen, "brixkv_open: negative timeout");
        return NULL;
    }
    brixkv_t *c = calloc(1, sizeof(*c));
    if (!c) {
        bad(err, errlen, "out of memory");
        return NULL;
    }
    c->timeout_ms = opts->timeout_ms ? opts->timeout_ms : DEF_TIMEOUT;
    c->connect_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms : DEF_CONNECT;
    c->retry_ms = opts->retry_ms ? opts->retry_ms : DEF_RETRY;
    c->no_shm = opts->no_shm;
    c->ns = *ns;
    c->ns.model = dupstr(ns->model);
    c->ns.dtype = dupstr(ns->dtype);
    c->ns.layout = dupstr(ns->layout);
    c->ns.client = dupstr(ns->client);
    c->ns.token = dupstr(ns->token);
    c->sink = malloc(SINK_BYTES);
    size_t lm = strlen(c->ns.model), ld = strlen(c->ns.dtype), ll = strlen(c->ns.layout),
           lc = strlen(c->ns.client), lt = c->ns.token ? strlen(c->ns.token) : 0;
    c->hello_len = sizeof(brixkv_hello_t) + lm + ld + ll + lc + lt;
    c->hello = malloc(c->hello_len);
    if (!c->ns.model || !c->ns.dtype || !c->ns.layout || !c->ns.client || !c->ns.token ||
        !c->sink || !c->hello) {
        bad(err, errlen, "out of memory");
        brixkv_close(c);
        return NULL;
    }
    brixkv_hello_t h = { .version = BRIXKV_VERSION,
                         .tp_size = ns->tp_size,
                         .tp_rank = ns->tp_rank,
                         .hash_seed = ns->hash_seed,
                         .seed_deterministic = ns->seed_deterministic ? 1 : 0,
                         .block_bytes = ns->block_bytes,
                         .model_len = (uint16_t)lm,
                         .dtype_len = (uint16_t)ld,
                         .layout_len = (uint16_t)ll,
                         .client_len = (uint16_t)lc,
                         .token_len = (uint8_t)lt };
    uint8_t *p = c->hello;
    memcpy(p, &h, sizeof(h));
    p += sizeof(h);
    memcpy(p, c->ns.model, lm);
    p += lm;
    memcpy(p, c->ns.dtype, ld);
    p += ld;
    memcpy(p, c->ns.layout, ll);
    p += ll;
    memcpy(p, c->ns.client, lc);
    p += lc;
    memcpy(p, c->ns.token, lt);
    if (members_set(c, opts->servers, err, errlen)) {
        brixkv_close(c);
        return NULL;
    }
    return c;
}

void brixkv_close(brixkv_t *c)
{
    if (!c)
        return;
    for (size_t m = 0; m < c->n; m++)
        node_free(c, &c->nodes[m]);
    free(c->nodes);
    free(c->seeds);
    free(c->pfd);
    free(c->pnode);
    free((char *)c->ns.model);
    free((char *)c->ns.dtype);
    free((char *)c->ns.layout);
    free((char *)c->ns.client);
    /* the token is a credential: not left in freed memory */
    if (c->ns.token) {
        memset((char *)c->ns.token, 0, strlen(c->ns.token));
        free((char *)c->ns.token);
    }
    if (c->hello) {
        memset(c->hello, 0, c->hello_len);
        free(c->hello);
    }
    free(c->sink);
    free(c);
}
