/*
 * brixkv_client — libbrixkv's fanned-out batch calls (see brixkv.h for the
 * contract; connections and members are brixkv_conn.c's).
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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RX_IOV 64   /* iovecs per readv of payloads */
#define TX_IOV 1024 /* iovecs per sendmsg (IOV_MAX on Linux) */

typedef brixkv__node_t node_t;
typedef brixkv__req_t req_t;

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
        brixkv__node_down(c, nd, BRIXKV_ST_UNAVAILABLE);
    else
        brixkv__node_close(c, nd);
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
            if (k->vlens[i] > nd->max_value || k->vlens[i] > UINT32_MAX ||
                k->vlens[i] + sizeof(brixkv_put_desc_t) > nd->max_frame)
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
    if (brixkv__grow((void **)&nd->body, &nd->body_cap, n * per + pin_extra + 1, 1) ||
        brixkv__grow((void **)&nd->ents, &nd->ents_cap, n + 1, sizeof(brixkv_entry_t)) ||
        brixkv__grow((void **)&nd->reqs, &nd->req_cap, nreq_max, sizeof(req_t)) ||
        brixkv__grow((void **)&nd->iov, &nd->iov_cap, niov_max, sizeof(struct iovec)))
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
        uint64_t bytes = 0, body = 0;
        while (j < n && j - lo < nd->max_batch) {
            if (put) {
                /* at most PUT_REQ_BYTES of values, and the node's
                 * --max-frame of body (descriptors and values) */
                size_t l = k->vlens[nd->idx[j]];
                if (j > lo && (bytes + l > BRIXKV__PUT_REQ_BYTES ||
                               body + l + sizeof(brixkv_put_desc_t) > nd->max_frame))
                    break;
                bytes += l;
                body += l + sizeof(brixkv_put_desc_t);
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
    nd->rphase = BRIXKV__RX_HDR;
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
            set_st(k, i, brixkv__wire_status(e->status));
            continue;
        }
        if (brixkv__grow((void **)&nd->rel, &nd->rel_cap, nd->nrel + 1, sizeof(uint64_t)) == 0)
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
            k->st[i] = brixkv__wire_status(e->status);
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
        nd->rphase = BRIXKV__RX_PAYLOAD;
        nd->rleft = rest;
        nd->rent = rq->lo;
        nd->rpay = 0;
        return 0;
    } else if (k->op == BRIXKV_OP_GET) {
        shm_copy(c, k, nd, rq);
    } else if (k->op != BRIXKV_OP_STATS && k->op != BRIXKV_OP_PING) {
        for (size_t j = rq->lo; j < rq->hi; j++)
            set_st(k, nd->idx[j], brixkv__wire_status(nd->ents[j].status));
    }
    nd->rleft = rest;
    nd->rphase = BRIXKV__RX_DRAIN;
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
    nd->rphase = BRIXKV__RX_HDR;
    nd->roff = 0;
    if (nd->rreq >= nd->nreq)
        nd->active = false;
}

/* Reads what the socket has. Returns 0 (would block or done), or a status to
 * fail the node with (UNAVAILABLE for a closed or broken connection). */
static int do_recv(brixkv_t *c, call_t *k, node_t *nd)
{
    while (nd->active) {
        /* a node that keeps bytes coming never makes readv say EAGAIN: the
         * call's deadline is checked here too, not only around poll */
        if (brixkv__ms_left(k->deadline) == 0) {
            brixkv__seterr(c, "%s: timed out (reply still streaming)", nd->m.addr);
            c->cs.timeouts++;
            return BRIXKV_ST_TIMEOUT;
        }
        struct iovec iv[RX_IOV];
        int niv = 0;
        switch (nd->rphase) {
        case BRIXKV__RX_HDR: {
            /* the header and, in the same read, the fixed part a well-formed
             * reply has (one syscall less per reply) */
            iv[niv++] =
                (struct iovec){ (uint8_t *)&nd->rhdr + nd->roff, sizeof(nd->rhdr) - nd->roff };
            size_t fx = fixed_len(k, nd->reqs[nd->rreq].hi - nd->reqs[nd->rreq].lo);
            if (fx)
                iv[niv++] = (struct iovec){ fixed_dst(c, k, nd), fx };
            break;
        }
        case BRIXKV__RX_FIXED:
            iv[niv++] = (struct iovec){ fixed_dst(c, k, nd) + nd->roff, nd->rfixed - nd->roff };
            break;
        case BRIXKV__RX_PAYLOAD: {
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
                    iv[niv++] =
                        (struct iovec){ c->sink,
                                        want < BRIXKV__SINK_BYTES ? want : BRIXKV__SINK_BYTES };
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
        case BRIXKV__RX_DRAIN:
        case BRIXKV__RX_ERRMSG: {
            size_t want = nd->rleft < BRIXKV__SINK_BYTES ? (size_t)nd->rleft : BRIXKV__SINK_BYTES;
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
                if (nd->rphase == BRIXKV__RX_ERRMSG)
                    goto errmsg_done;
                return BRIXKV_ST_UNAVAILABLE;
            }
            c->cs.bytes_in += (uint64_t)r;
        }
        size_t got = (size_t)r;
        switch (nd->rphase) {
        case BRIXKV__RX_HDR: {
            size_t need = sizeof(nd->rhdr) - nd->roff;
            size_t extra = got > need ? got - need : 0; /* bytes in the fixed area */
            nd->roff += got - extra;
            if (nd->roff < sizeof(nd->rhdr))
                continue;
            const brixkv_hdr_t *h = &nd->rhdr;
            const req_t *rq = &nd->reqs[nd->rreq];
            if (h->magic != BRIXKV_MAGIC || h->op != k->op || h->id != rq->id) {
                brixkv__seterr(c, "%s: reply out of sync", nd->m.addr);
                return BRIXKV_ST_INTERNAL;
            }
            if (h->status != BRIXKV_ST_OK) {
                /* a frame error: the node closes the connection after it */
                snprintf(nd->errmsg, sizeof(nd->errmsg), "%s",
                         brixkv_status_str(brixkv__wire_status(h->status)));
                nd->rleft =
                    h->body_len < sizeof(nd->errmsg) - 1 ? h->body_len : sizeof(nd->errmsg) - 1;
                size_t have = extra < nd->rleft ? extra : (size_t)nd->rleft;
                errmsg_add(nd, fixed_dst(c, k, nd), have);
                nd->rleft -= have;
                if (nd->rleft == 0)
                    goto errmsg_done;
                nd->roff = 1; /* the ": " is in */
                nd->rphase = BRIXKV__RX_ERRMSG;
                continue;
            }
            size_t cnt = rq->hi - rq->lo;
            if (k->op != BRIXKV_OP_MATCH && k->op != BRIXKV_OP_STATS && h->count != cnt) {
                brixkv__seterr(c, "%s: reply count %u for %zu keys", nd->m.addr, h->count, cnt);
                return BRIXKV_ST_INTERNAL;
            }
            nd->rfixed = fixed_len(k, cnt);
            if (h->body_len < nd->rfixed) {
                brixkv__seterr(c, "%s: short reply body", nd->m.addr);
                return BRIXKV_ST_INTERNAL;
            }
            nd->roff = extra;
            nd->rphase = BRIXKV__RX_FIXED;
            if (nd->roff >= nd->rfixed) {
                int s = on_fixed(c, k, nd);
                if (s)
                    return s;
                if (nd->rleft == 0)
                    next_reply(nd);
            }
            continue;
        }
        case BRIXKV__RX_FIXED:
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
        case BRIXKV__RX_PAYLOAD:
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
        case BRIXKV__RX_DRAIN:
            nd->rleft -= got;
            if (nd->rleft == 0)
                next_reply(nd);
            continue;
        case BRIXKV__RX_ERRMSG: {
            errmsg_add(nd, c->sink, got);
            nd->roff += got;
            nd->rleft = nd->rleft > got ? nd->rleft - got : 0;
            if (nd->rleft)
                continue;
        errmsg_done:
            brixkv__seterr(c, "%s: %s", nd->m.addr, nd->errmsg);
            return brixkv__wire_status(nd->rhdr.status) == BRIXKV_ST_OK
                       ? BRIXKV_ST_INTERNAL
                       : (int)brixkv__wire_status(nd->rhdr.status);
        }
        }
    }
    return 0;
}

/* Queues the RELEASE (no reply) of the leases this call took and writes what
 * the socket takes now; the rest goes before the node's next request. */
static void flush_releases(brixkv_t *c, node_t *nd)
{
    if (nd->state != BRIXKV__NODE_UP || (!nd->nrel && !nd->ctl_len)) {
        nd->nrel = 0;
        return;
    }
    size_t per = nd->max_batch;
    for (size_t o = 0; o < nd->nrel; o += per) {
        size_t cnt = nd->nrel - o < per ? nd->nrel - o : per;
        size_t need = nd->ctl_len + sizeof(brixkv_hdr_t) + cnt * 8;
        if (brixkv__grow((void **)&nd->ctl, &nd->ctl_cap, need, 1))
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
            brixkv__node_close(c, nd);
            return;
        }
        c->cs.bytes_out += (uint64_t)w;
        memmove(nd->ctl, nd->ctl + w, nd->ctl_len - (size_t)w);
        nd->ctl_len -= (size_t)w;
    }
}

/* Runs call k over the nodes that have keys in it (nd->nidx > 0, or active
 * for a keyless STATS). */
static void run(brixkv_t *c, call_t *k)
{
    brixkv__drop_dead_idle(c);
    brixkv__connect_needed(c, k->deadline);
    for (size_t m = 0; m < c->n; m++) {
        node_t *nd = &c->nodes[m];
        nd->match_first = SIZE_MAX;
        nd->fail_st = BRIXKV_ST_OK;
        nd->rreq = nd->nreq = 0;
        bool want = nd->nidx || nd->active;
        nd->active = false;
        if (!want)
            continue;
        if (nd->state != BRIXKV__NODE_UP) {
            nd->reqs[0] = (req_t){ 0, nd->nidx, 0 };
            nd->nreq = 1;
            node_fail(c, k, nd,
                      nd->state == BRIXKV__NODE_DOWN ? nd->down_st : BRIXKV_ST_UNAVAILABLE, false);
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
                brixkv__seterr(c, "%s: send: %s", nd->m.addr, strerror(-rc));
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
        int t = brixkv__ms_left(k->deadline);
        int pr = t ? poll(c->pfd, (nfds_t)np, t) : 0;
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0) { /* out of time (or poll itself failed) */
            for (size_t p = 0; p < np; p++) {
                brixkv__seterr(c, "%s: timed out", c->pnode[p]->m.addr);
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
                    brixkv__seterr(c, "%s: connection lost", nd->m.addr);
                /* a lost connection or a node speaking out of turn: back off
                 * (no reconnect per call to a broken node) */
                node_fail(c, k, nd, (brixkv_status_t)s, s != BRIXKV_ST_TIMEOUT);
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
        if (brixkv__grow((void **)&nd->idx, &nd->idx_cap, nd->nidx + 1, sizeof(size_t)))
            return -ENOMEM;
        nd->idx[nd->nidx++] = i;
    }
    for (size_t m = 0; m < c->n; m++) /* room for the one failure req */
        if (brixkv__grow((void **)&c->nodes[m].reqs, &c->nodes[m].req_cap, 1, sizeof(req_t)))
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
    k->deadline = brixkv__now_ms() + (uint64_t)c->timeout_ms;
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
