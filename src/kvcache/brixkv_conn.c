/*
 * brixkv_conn — libbrixkv's connections and members: parsing and resolving
 * the member list, connecting the nodes a call needs (all at once, under one
 * connect timeout), the HELLO, and the same-host upgrade: the node's UNIX
 * socket, the arena's memfd received with SCM_RIGHTS and mapped read-only,
 * used only when the UNIX side reports the TCP side's node_id. Also
 * brixkv_open/close and the small helpers both halves share.
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
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_NS_STR  1024 /* model, dtype, layout, client */
#define DEF_TIMEOUT 1000
#define DEF_CONNECT 200
#define DEF_RETRY   1000

typedef brixkv__node_t node_t;

uint64_t brixkv__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int brixkv__ms_left(uint64_t deadline)
{
    uint64_t t = brixkv__now_ms();
    if (t >= deadline)
        return 0;
    uint64_t d = deadline - t;
    return d > INT_MAX ? INT_MAX : (int)d;
}

int brixkv__grow(void **p, size_t *cap, size_t want, size_t elem)
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
brixkv_status_t brixkv__wire_status(uint16_t s)
{
    return s <= BRIXKV_ST_DENIED ? (brixkv_status_t)s : BRIXKV_ST_INTERNAL;
}

/* vsnprintf: a message cut at BRIXKV__ERR_LEN is fine for a log line. */
void brixkv__seterr(brixkv_t *c, const char *fmt, ...)
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

void brixkv__node_close(brixkv_t *c, node_t *nd)
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
    if (nd->state == BRIXKV__NODE_UP)
        nd->state = BRIXKV__NODE_CLOSED;
}

void brixkv__node_down(brixkv_t *c, node_t *nd, brixkv_status_t st)
{
    brixkv__node_close(c, nd);
    nd->state = BRIXKV__NODE_DOWN;
    nd->down_st = st;
    nd->down_until = brixkv__now_ms() + (uint64_t)c->retry_ms;
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
        int t = brixkv__ms_left(deadline);
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
        int t = brixkv__ms_left(deadline);
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
        int t = brixkv__ms_left(deadline);
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
        brixkv__seterr(c, "%s: malformed HELLO reply", nd->m.addr);
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
        res->st = brixkv__wire_status(rh.status);
        brixkv__seterr(c, "%s refused HELLO (%s): %.*s", nd->m.addr, brixkv_status_str(res->st),
                       (int)(rh.body_len > 160 ? 160 : rh.body_len), (const char *)body);
        return 0;
    }
    if (rh.body_len < sizeof(res->r)) {
        brixkv__seterr(c, "%s: short HELLO reply", nd->m.addr);
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
/* The TCP connection's peer is this host: a loopback address, or one of our
 * own (the kernel then picks that same address as the source). A node on
 * another host may name a UNIX path that something else serves here. */
static bool peer_is_local(int fd)
{
    struct sockaddr_storage me, peer;
    socklen_t ml = sizeof(me), pl = sizeof(peer);
    if (getsockname(fd, (struct sockaddr *)&me, &ml) ||
        getpeername(fd, (struct sockaddr *)&peer, &pl))
        return false;
    if (peer.ss_family == AF_INET) {
        const struct sockaddr_in *p4 = (const struct sockaddr_in *)&peer;
        const struct sockaddr_in *m4 = (const struct sockaddr_in *)&me;
        if ((ntohl(p4->sin_addr.s_addr) >> 24) == 127)
            return true;
        return me.ss_family == AF_INET && p4->sin_addr.s_addr == m4->sin_addr.s_addr;
    }
    if (peer.ss_family == AF_INET6) {
        const struct sockaddr_in6 *p6 = (const struct sockaddr_in6 *)&peer;
        const struct sockaddr_in6 *m6 = (const struct sockaddr_in6 *)&me;
        if (IN6_IS_ADDR_LOOPBACK(&p6->sin6_addr))
            return true;
        if (IN6_IS_ADDR_V4MAPPED(&p6->sin6_addr) && p6->sin6_addr.s6_addr[12] == 127)
            return true;
        return me.ss_family == AF_INET6 &&
               !memcmp(&p6->sin6_addr, &m6->sin6_addr, sizeof(p6->sin6_addr));
    }
    return false;
}

/* The process listening on the UNIX socket runs as us or as root: anyone
 * else could have put a socket at the advertised path to collect our token
 * and serve us a fake arena. */
static bool peer_is_trusted(int ufd)
{
    struct ucred cr;
    socklen_t cl = sizeof(cr);
    if (getsockopt(ufd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) || cl != sizeof(cr))
        return false;
    return cr.uid == getuid() || cr.uid == geteuid() || cr.uid == 0;
}

static void try_unix(brixkv_t *c, node_t *nd, const char *path, uint64_t deadline)
{
    struct sockaddr_un su = { .sun_family = AF_UNIX };
    size_t pl = strlen(path);
    /* a relative path would resolve against our cwd, not the node's */
    if (pl == 0 || pl >= sizeof(su.sun_path) || path[0] != '/')
        return;
    if (!peer_is_local(nd->fd))
        return;
    memcpy(su.sun_path, path, pl);
    int ufd = sock_connect((struct sockaddr *)&su, (socklen_t)sizeof(su), deadline);
    if (ufd < 0)
        return;
    if (!peer_is_trusted(ufd)) { /* before the HELLO: it carries the token */
        close(ufd);
        return;
    }
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
        /* mapping past the file's end, or a file that may still shrink, is
         * SIGBUS on a later read: require the size and the node's seals */
        struct stat fs;
        int seals = fcntl(hr.memfd, F_GET_SEALS);
        bool sane = fstat(hr.memfd, &fs) == 0 && fs.st_size >= 0 &&
                    (uint64_t)fs.st_size >= hr.r.arena_bytes && seals >= 0 &&
                    (seals & F_SEAL_SHRINK);
        if (sane && (hr.r.flags & BRIXKV_HELLO_SHM) && hr.r.arena_bytes >= 4096 &&
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
    /* a node before max_frame_kib says 0: only the PUT_REQ_BYTES chunks */
    nd->max_frame = hr->r.max_frame_kib ? (uint64_t)hr->r.max_frame_kib * 1024 : UINT64_MAX;
    nd->state = BRIXKV__NODE_UP;
    if (hr->unix_path[0] && !c->no_shm) /* no_shm: TCP only, as another host would */
        try_unix(c, nd, hr->unix_path, deadline);
}

/* Connect stages of connect_needed. */
enum { CS_CONNECTING = 1, CS_HELLO = 2 };

/* Connects every node this call needs that is not up (and not backing off),
 * all at once: one connect timeout (capped by the call's deadline) covers
 * them all, so several dead nodes cost no more than one. A node that fails
 * is DOWN for retry_ms. */
void brixkv__connect_needed(brixkv_t *c, uint64_t deadline)
{
    uint64_t t = brixkv__now_ms(), dl = t + (uint64_t)c->connect_ms;
    if (dl > deadline)
        dl = deadline;
    size_t nw = 0;
    for (size_t m = 0; m < c->n; m++) {
        node_t *nd = &c->nodes[m];
        if (!(nd->nidx || nd->active) || nd->state == BRIXKV__NODE_UP)
            continue;
        if (nd->state == BRIXKV__NODE_DOWN && t < nd->down_until)
            continue;
        bool pending;
        int fd = sock_start((struct sockaddr *)&nd->sa, nd->salen, &pending);
        if (fd < 0) {
            brixkv__seterr(c, "%s: connect: %s", nd->m.addr, strerror(-fd));
            brixkv__node_down(c, nd, BRIXKV_ST_UNAVAILABLE);
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
                    brixkv__seterr(c, "%s: HELLO: %s", nd->m.addr, strerror(-rc));
                    brixkv__node_down(c, nd, BRIXKV_ST_UNAVAILABLE);
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
        int tl = brixkv__ms_left(dl);
        int pr = tl ? poll(c->pfd, (nfds_t)np, tl) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) {
            for (size_t w = 0; w < nw; w++) {
                brixkv__seterr(c, "%s: %s timed out", c->pnode[w]->m.addr,
                               c->pnode[w]->cstage == CS_CONNECTING ? "connect" : "HELLO");
                brixkv__node_down(c, c->pnode[w], BRIXKV_ST_UNAVAILABLE);
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
                brixkv__seterr(c, "%s: connect: %s", nd->m.addr, strerror(-e));
                brixkv__node_down(c, nd, BRIXKV_ST_UNAVAILABLE);
            } else {
                /* The reply is one small write: it is all there, or comes
                 * right after (recv_all waits for it within dl). */
                hello_res_t hr;
                int rc = hello_recv(c, nd, nd->fd, false, dl, &hr);
                if (!rc && hr.st == BRIXKV_ST_OK) {
                    node_up(c, nd, &hr, dl);
                } else {
                    if (rc)
                        brixkv__seterr(c, "%s: HELLO: %s", nd->m.addr,
                                       rc == -EPROTO ? "protocol error" : strerror(-rc));
                    brixkv__node_down(c, nd, rc ? BRIXKV_ST_UNAVAILABLE : hr.st);
                }
            }
            c->pnode[w] = c->pnode[--nw];
        }
    }
}

/* An UP connection that is readable between calls was closed by its node
 * (restart, idle timeout) or is out of sync: drop it so the call reconnects
 * instead of failing. One poll() for all the call's nodes. */
void brixkv__drop_dead_idle(brixkv_t *c)
{
    size_t np = 0;
    for (size_t m = 0; m < c->n; m++) {
        node_t *nd = &c->nodes[m];
        if (nd->nidx || nd->active)
            if (nd->state == BRIXKV__NODE_UP) {
                c->pfd[np] = (struct pollfd){ .fd = nd->fd, .events = POLLIN };
                c->pnode[np++] = nd;
            }
    }
    if (!np || poll(c->pfd, (nfds_t)np, 0) <= 0)
        return;
    for (size_t p = 0; p < np; p++)
        if (c->pfd[p].revents)
            brixkv__node_close(c, c->pnode[p]);
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
    return c && i < c->n && c->nodes[i].state == BRIXKV__NODE_UP;
}

bool brixkv_member_shm(const brixkv_t *c, size_t i)
{
    return c && i < c->n && c->nodes[i].state == BRIXKV__NODE_UP && c->nodes[i].map != NULL;
}

size_t brixkv_owner(const brixkv_t *c, const brixkv_key_t *key)
{
    if (!c || !key || !c->n)
        return 0;
    return brixkv__rendezvous(c->seeds, c->n, key);
}

static void node_free(brixkv_t *c, node_t *nd)
{
    brixkv__node_close(c, nd);
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
                if (nodes[i].state != BRIXKV__NODE_UP) { /* not connected: use the fresh address */
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
    c->sink = malloc(BRIXKV__SINK_BYTES);
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
