/*
 * server — brixkv listeners, connections and op handlers (see server.h).
 *
 * The arena's memfd is passed to a same-host client with SCM_RIGHTS. libuv
 * only sends handles over IPC pipes, not arbitrary fds, so the HELLO reply
 * that carries it is written with sendmsg(2) on the connection's own fd.
 * That is safe because HELLO is the first request of a connection and comes
 * once: nothing of ours is queued on the stream then, so the bytes cannot
 * overtake or interleave with libuv's writes (any part the socket does not
 * take at once is queued through libuv after it, in order).
 */
#include "kvcache/server.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/http_server.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/secret.h"
#include "core/time.h"
#include "kvcache/kvproto.h"

#define KV_READ_BUF   (256u << 10)
#define KV_TICK_MS    100
#define KV_MAX_STRING 4096 /* all HELLO strings together */

typedef struct kv_ns {
    char *model, *dtype, *layout; /* NULL: a free entry */
    uint16_t tp_size, tp_rank;
    uint64_t seed;
    uint32_t conns; /* connections bound to it */
} kv_ns_t;

/* One piece of an output batch: bytes of the batch's meta buffer (ptr NULL,
 * off) or of the arena (ptr). */
typedef struct kv_iov {
    const uint8_t *ptr;
    size_t off, len;
} kv_iov_t;

typedef struct kv_conn kv_conn_t;

typedef struct kv_write {
    uv_write_t req;
    kv_conn_t *c;
    char *meta;
    brix_kvs_obj_t **refs;
    size_t nrefs;
    uint64_t bytes;
    uv_buf_t bufs[]; /* nbufs */
} kv_write_t;

struct kv_conn {
    union {
        uv_tcp_t tcp;
        uv_pipe_t pipe;
        uv_stream_t stream;
        uv_handle_t handle;
    } h;
    brix_kvsrv_t *srv;
    kv_conn_t *prev, *next;
    bool is_unix, hello, shm, closing, close_after_flush, reading;
    uint32_t ns;
    brix_kvp_t parser;
    brix_kvs_owner_t owner;
    /* the PUT being received */
    brix_kvs_resv_t *resv;
    uint16_t *pst;
    size_t rcap;
    /* output batch */
    brix_buf_t meta;
    kv_iov_t *iov;
    size_t niov, iovcap;
    brix_kvs_obj_t **refs;
    size_t nrefs, refcap;
    uint64_t batch_bytes;
    /* written, not yet completed */
    uint64_t pending;
    uint32_t writes;
    uint64_t last_read_ms;
    uint64_t last_write_ms; /* a write completed, or the first one was queued */
    uint64_t accepted_ms;   /* HELLO must come by --hello-timeout after this */
    uint64_t last_req_ms;   /* the last frame completed (--idle-timeout) */
    uint64_t frame_no;      /* parser.frames when the current frame began */
    uint64_t frame_start_ms;
    uint64_t paused_ms; /* reading paused (--max-pending) at */
    uint8_t ip[16];     /* TCP peer address (IPv4 mapped), for --max-unauth-per-ip */
    bool in_frame;
    uint8_t *rbuf;
};

struct brix_kvsrv {
    uv_loop_t *loop;
    brix_kvsrv_cfg_t cfg;
    char *token;
    bool have_seed;
    uint64_t seed;
    brix_kvs_t *store;
    uint64_t node_id;
    uv_tcp_t tcp;
    uv_pipe_t unix_l;
    bool tcp_on, unix_on;
    int port, http_port;
    uv_timer_t tick;
    brix_http_server_t *http;
    brix_metrics_t *reg;
    brix_process_metrics_t pm;
    kv_conn_t *conns;
    uint64_t nconns;
    kv_ns_t *ns;
    size_t nns;
    brix_kvs_obj_t **scratch; /* max_batch object pointers for a GET */
    bool stopping, tick_on;
    struct {
        brix_metric_t *capacity, *used, *payload, *reserved, *objects, *gets, *hits, *misses, *puts,
            *put_exists, *put_no_space, *put_too_large, *evictions, *evicted_bytes, *leases,
            *leases_expired, *pins, *pinned_bytes, *conns, *conns_total, *refused, *namespaces,
            *hello_refused, *frame_errors, *frame_timeouts, *bytes_out, *bytes_in, *hugepages,
            *arena_bytes, *slabs_free, *hello_timeouts, *idle_closed;
    } m;
    uint64_t conns_total, refused, hello_refused, frame_errors, frame_timeouts, bytes_out, bytes_in;
    uint64_t hello_timeouts, idle_closed;
};

/* ---------------------------------------------------------- helpers -- */

static int parse_hostport(const char *s, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return -EINVAL;
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl + 1 > hostlen)
        return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    char *end = NULL;
    long p = strtol(colon + 1, &end, 10);
    if (!*(colon + 1) || *end || p < 0 || p > 65535)
        return -EINVAL;
    *port = (int)p;
    return 0;
}

/* --------------------------------------------------------- batching -- */

static int batch_iov(kv_conn_t *c, const uint8_t *ptr, size_t off, size_t len)
{
    if (!len)
        return 0;
    /* consecutive meta pieces merge into one buffer */
    if (!ptr && c->niov && !c->iov[c->niov - 1].ptr &&
        c->iov[c->niov - 1].off + c->iov[c->niov - 1].len == off) {
        c->iov[c->niov - 1].len += len;
        c->batch_bytes += len;
        return 0;
    }
    if (c->niov == c->iovcap) {
        size_t nc = c->iovcap ? c->iovcap * 2 : 16;
        kv_iov_t *n = brix_realloc(c->iov, nc * sizeof *n);
        if (!n)
            return -ENOMEM;
        c->iov = n;
        c->iovcap = nc;
    }
    c->iov[c->niov++] = (kv_iov_t){ ptr, off, len };
    c->batch_bytes += len;
    return 0;
}

static int batch_meta(kv_conn_t *c, const void *p, size_t n)
{
    size_t off = c->meta.len;
    if (brix_buf_append(&c->meta, p, n))
        return -ENOMEM;
    return batch_iov(c, NULL, off, n);
}

static int batch_ref(kv_conn_t *c, brix_kvs_obj_t *o)
{
    if (c->nrefs == c->refcap) {
        size_t nc = c->refcap ? c->refcap * 2 : 16;
        brix_kvs_obj_t **n = brix_realloc(c->refs, nc * sizeof *n);
        if (!n)
            return -ENOMEM;
        c->refs = n;
        c->refcap = nc;
    }
    c->refs[c->nrefs++] = o;
    return 0;
}

static int reply_hdr(kv_conn_t *c, const brixkv_hdr_t *req, uint16_t st, uint32_t count,
                     uint64_t body_len)
{
    brixkv_hdr_t h = { .magic = BRIXKV_MAGIC,
                       .op = req->op,
                       .flags = 0,
                       .status = st,
                       .id = req->id,
                       .count = count,
                       .body_len = body_len };
    return batch_meta(c, &h, sizeof h);
}

/* Where the batch stood before a reply was begun: a reply cut short by
 * running out of memory is taken out again, so the error frame that follows
 * is not sent inside it. */
typedef struct kv_mark {
    size_t meta, niov, nrefs;
    uint64_t bytes;
} kv_mark_t;

static kv_mark_t batch_mark(const kv_conn_t *c)
{
    return (kv_mark_t){ c->meta.len, c->niov, c->nrefs, c->batch_bytes };
}

static void batch_rollback(kv_conn_t *c, const kv_mark_t *m)
{
    for (size_t j = m->nrefs; j < c->nrefs; j++)
        brix_kvs_unref(c->srv->store, c->refs[j]);
    c->nrefs = m->nrefs;
    c->niov = m->niov;
    c->batch_bytes = m->bytes;
    if (c->meta.len > m->meta)
        c->meta.len = m->meta;
}

static void conn_close(kv_conn_t *c);

static void on_conn_closed(uv_handle_t *h)
{
    kv_conn_t *c = h->data;
    brix_kvp_free(&c->parser);
    brix_buf_free(&c->meta);
    brix_free(c->iov);
    brix_free(c->refs);
    brix_free(c->resv);
    brix_free(c->pst);
    brix_free(c->rbuf);
    brix_free(c);
}

static void maybe_resume(kv_conn_t *c);

static void on_write(uv_write_t *req, int status)
{
    kv_write_t *w = (kv_write_t *)req;
    kv_conn_t *c = w->c;
    brix_kvsrv_t *s = c->srv;
    for (size_t i = 0; i < w->nrefs; i++)
        brix_kvs_unref(s->store, w->refs[i]);
    c->pending -= w->bytes;
    c->writes--;
    c->last_write_ms = brix_now_ms();
    if (status == 0)
        s->bytes_out += w->bytes;
    brix_free(w->meta);
    brix_free(w->refs);
    brix_free(w);
    if (c->closing)
        return;
    if (status < 0 || (c->close_after_flush && !c->writes)) {
        conn_close(c);
        return;
    }
    maybe_resume(c);
}

static void batch_drop(kv_conn_t *c)
{
    for (size_t i = 0; i < c->nrefs; i++)
        brix_kvs_unref(c->srv->store, c->refs[i]);
    c->nrefs = 0;
    c->niov = 0;
    c->batch_bytes = 0;
    brix_buf_reset(&c->meta);
}

/* Writes the batch: one uv_write (writev) of reply heads and arena slices. */
static int batch_flush(kv_conn_t *c)
{
    if (!c->niov || c->closing)
        return 0;
    kv_write_t *w = brix_malloc(sizeof *w + c->niov * sizeof(uv_buf_t));
    if (!w) {
        batch_drop(c);
        return -ENOMEM;
    }
    w->c = c;
    w->bytes = c->batch_bytes;
    size_t mlen = 0;
    w->meta = brix_buf_detach(&c->meta, &mlen);
    for (size_t i = 0; i < c->niov; i++) {
        const kv_iov_t *v = &c->iov[i];
        w->bufs[i] = uv_buf_init(v->ptr ? (char *)v->ptr : w->meta + v->off, (unsigned)v->len);
    }
    w->refs = c->refs;
    w->nrefs = c->nrefs;
    size_t nbufs = c->niov;
    c->refs = NULL;
    c->nrefs = c->refcap = 0;
    c->niov = 0;
    c->batch_bytes = 0;
    if (!c->writes)
        c->last_write_ms = brix_now_ms();
    c->pending += w->bytes;
    c->writes++;
    int rc = uv_write(&w->req, &c->h.stream, w->bufs, (unsigned)nbufs, on_write);
    if (rc) {
        c->writes--;
        c->pending -= w->bytes;
        for (size_t i = 0; i < w->nrefs; i++)
            brix_kvs_unref(c->srv->store, w->refs[i]);
        brix_free(w->meta);
        brix_free(w->refs);
        brix_free(w);
        return rc;
    }
    return 0;
}

static void conn_close(kv_conn_t *c)
{
    if (c->closing)
        return;
    brix_kvsrv_t *s = c->srv;
    c->closing = true;
    if (c->reading)
        uv_read_stop(&c->h.stream);
    c->reading = false;
    batch_drop(c);
    brix_kvs_owner_drop(s->store, &c->owner); /* a closed connection's leases end */
    if (c->hello && c->ns >= 1 && c->ns <= s->nns)
        s->ns[c->ns - 1].conns--;
    if (brix_kvp_in_put(&c->parser)) { /* a PUT cut short frees its slots */
        for (size_t i = 0; i < c->parser.hdr.count; i++)
            brix_kvs_unreserve(s->store, &c->resv[i]);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    /* pending writes complete with ECANCELED (their refs drop) before this */
    uv_close(&c->h.handle, on_conn_closed);
}

/* Error reply (count 0, message body), then close once it is written. */
static void conn_fail(kv_conn_t *c, const brixkv_hdr_t *req, uint16_t st, const char *msg)
{
    brixkv_hdr_t h = req ? *req : (brixkv_hdr_t){ 0 };
    size_t ml = strlen(msg);
    c->srv->frame_errors++;
    BRIX_DEBUG("brixkv connection: %s (op %u), closing", msg, h.op);
    if (reply_hdr(c, &h, st, 0, ml) == 0)
        batch_meta(c, msg, ml);
    c->close_after_flush = true;
}

/* ------------------------------------------------------------- HELLO -- */

static bool str_eq(const char *a, const char *b, size_t bl)
{
    return strlen(a) == bl && !memcmp(a, b, bl);
}

static int ns_find_or_add(brix_kvsrv_t *s, const brix_kvp_hello_t *hl, uint32_t *id)
{
    for (size_t i = 0; i < s->nns; i++) {
        kv_ns_t *n = &s->ns[i];
        if (n->model && n->tp_size == hl->h.tp_size && n->tp_rank == hl->h.tp_rank &&
            n->seed == hl->h.hash_seed && str_eq(n->model, hl->model, hl->model_len) &&
            str_eq(n->dtype, hl->dtype, hl->dtype_len) &&
            str_eq(n->layout, hl->layout, hl->layout_len)) {
            *id = (uint32_t)i + 1;
            n->conns++;
            return 0;
        }
    }
    /* a new one: the table would fill up for good with names clients tried
     * once, so an entry no connection uses and nothing is stored under is
     * given to it (its id cannot alias a stored key) */
    size_t slot = s->nns;
    for (size_t i = 0; i < s->nns && slot == s->nns; i++) {
        kv_ns_t *n = &s->ns[i];
        if (!n->model || (!n->conns && brix_kvs_ns_objects(s->store, (uint32_t)i + 1) == 0))
            slot = i;
    }
    if (slot == s->nns) {
        if ((int64_t)s->nns >= s->cfg.max_namespaces)
            return -ENOSPC;
        kv_ns_t *arr = brix_realloc(s->ns, (s->nns + 1) * sizeof *arr);
        if (!arr)
            return -ENOMEM;
        s->ns = arr;
        memset(&s->ns[s->nns], 0, sizeof *arr);
    }
    kv_ns_t *n = &s->ns[slot];
    brix_free(n->model);
    brix_free(n->dtype);
    brix_free(n->layout);
    n->model = brix_strndup(hl->model, hl->model_len);
    n->dtype = brix_strndup(hl->dtype, hl->dtype_len);
    n->layout = brix_strndup(hl->layout, hl->layout_len);
    if (!n->model || !n->dtype || !n->layout) {
        brix_free(n->model);
        brix_free(n->dtype);
        brix_free(n->layout);
        n->model = n->dtype = n->layout = NULL;
        if (slot == s->nns)
            s->nns++; /* an allocated free entry */
        return -ENOMEM;
    }
    n->tp_size = hl->h.tp_size;
    n->tp_rank = hl->h.tp_rank;
    n->seed = hl->h.hash_seed;
    n->conns = 1;
    if (slot == s->nns)
        s->nns++;
    *id = (uint32_t)slot + 1;
    BRIX_INFO("namespace %u: model=%s dtype=%s layout=%s tp=%u/%u seed=%llu", *id, n->model,
              n->dtype, n->layout, n->tp_rank, n->tp_size, (unsigned long long)n->seed);
    return 0;
}

/* Sends the HELLO reply with the memfd attached to its first byte. */
static int send_with_fd(kv_conn_t *c, const uint8_t *msg, size_t len, int fd)
{
    uv_os_fd_t sock;
    if (uv_fileno(&c->h.handle, &sock))
        return -EBADF;
    struct iovec iov = { (void *)msg, len };
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(sizeof(int))];
    } cm;
    memset(&cm, 0, sizeof cm);
    struct msghdr mh = { 0 };
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cm.b;
    mh.msg_controllen = sizeof cm.b;
    struct cmsghdr *ch = CMSG_FIRSTHDR(&mh);
    ch->cmsg_level = SOL_SOCKET;
    ch->cmsg_type = SCM_RIGHTS;
    ch->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(ch), &fd, sizeof fd);
    ssize_t n;
    do
        n = sendmsg(sock, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    c->srv->bytes_out += (uint64_t)n;
    if ((size_t)n < len) /* the rest goes through libuv, after it */
        return batch_meta(c, msg + n, len - (size_t)n);
    return 0;
}

static int refuse_hello(kv_conn_t *c, const brixkv_hdr_t *h, uint16_t st, const char *who,
                        const char *msg)
{
    c->srv->hello_refused++;
    BRIX_WARN("HELLO from %s refused: %s", who, msg);
    conn_fail(c, h, st, msg);
    return 0;
}

static int op_hello(kv_conn_t *c, const brixkv_hdr_t *h, const uint8_t *body)
{
    brix_kvsrv_t *s = c->srv;
    brix_kvp_hello_t hl;
    const char *msg = NULL;
    if (brix_kvp_hello_parse(body, h->body_len, &hl, &msg)) {
        conn_fail(c, h, BRIXKV_ST_BAD_REQUEST, msg);
        return 0;
    }
    /* names go into logs and namespace ids: no control bytes (a NUL would
     * also make two namespaces compare equal) */
    const struct {
        const char *p;
        size_t n;
    } strs[] = { { hl.model, hl.model_len },
                 { hl.dtype, hl.dtype_len },
                 { hl.layout, hl.layout_len },
                 { hl.client, hl.client_len } };
    for (size_t i = 0; i < sizeof strs / sizeof *strs; i++) {
        for (size_t j = 0; j < strs[i].n; j++) {
            unsigned char ch = (unsigned char)strs[i].p[j];
            if (ch < 0x20 || ch == 0x7f) {
                conn_fail(c, h, BRIXKV_ST_BAD_REQUEST,
                          "HELLO: model, dtype, layout and client must not hold control bytes");
                return 0;
            }
        }
    }
    char who[200];
    snprintf(who, sizeof who, "'%.*s' (model %.*s)", (int)(hl.client_len > 80 ? 80 : hl.client_len),
             hl.client, (int)(hl.model_len > 80 ? 80 : hl.model_len), hl.model);
    if (c->hello) {
        conn_fail(c, h, BRIXKV_ST_BAD_REQUEST, "HELLO comes once per connection");
        return 0;
    }
    if (s->token) {
        char given[256];
        memcpy(given, hl.token, hl.token_len);
        given[hl.token_len] = '\0';
        bool ok = hl.token_len && brix_secret_equal(given, s->token);
        memset(given, 0, sizeof given);
        if (!ok)
            return refuse_hello(c, h, BRIXKV_ST_DENIED, who,
                                hl.token_len ? "wrong token (the node's --token-file)"
                                             : "this node needs a token (its --token-file)");
    }
    if (hl.h.version != BRIXKV_VERSION)
        return refuse_hello(c, h, BRIXKV_ST_BAD_REQUEST, who,
                            "protocol version not supported (this node speaks version 1)");
    if (!hl.h.seed_deterministic)
        return refuse_hello(
            c, h, BRIXKV_ST_NAMESPACE, who,
            "the client's block-hash seed is not deterministic (random per process, like an "
            "unset PYTHONHASHSEED): its keys could never match another instance's; set a fixed "
            "seed");
    if (s->have_seed && hl.h.hash_seed != s->seed) {
        char d[128];
        snprintf(d, sizeof d, "hash seed %llu differs from this node's --hash-seed %llu",
                 (unsigned long long)hl.h.hash_seed, (unsigned long long)s->seed);
        return refuse_hello(c, h, BRIXKV_ST_NAMESPACE, who, d);
    }
    if (!hl.model_len || !hl.h.tp_size || hl.h.tp_rank >= hl.h.tp_size)
        return refuse_hello(c, h, BRIXKV_ST_NAMESPACE, who,
                            "namespace needs a model and tp_rank < tp_size");
    uint32_t id = 0;
    int rc = ns_find_or_add(s, &hl, &id);
    if (rc == -ENOSPC)
        return refuse_hello(c, h, BRIXKV_ST_NAMESPACE, who,
                            "too many namespaces on this node (--max-namespaces)");
    if (rc) {
        conn_fail(c, h, BRIXKV_ST_INTERNAL, "out of memory");
        return 0;
    }
    c->hello = true;
    c->ns = id;
    /* no sealed fd (an old kernel): clients copy over the socket instead */
    bool shm = (hl.h.flags & BRIXKV_HELLO_SHM) && c->is_unix && brix_kvs_fd(s->store) >= 0;
    const char *up = s->unix_on ? s->cfg.unix_path : "";
    size_t ul = strlen(up);
    struct {
        brixkv_hdr_t h;
        brixkv_hello_reply_t r;
    } __attribute__((packed)) rep;
    memset(&rep, 0, sizeof rep);
    rep.h = (brixkv_hdr_t){ .magic = BRIXKV_MAGIC,
                            .op = h->op,
                            .status = BRIXKV_ST_OK,
                            .id = h->id,
                            .body_len = sizeof rep.r + ul };
    rep.r.ns_id = id;
    rep.r.flags = shm ? BRIXKV_HELLO_SHM : 0;
    rep.r.node_id = s->node_id;
    rep.r.arena_bytes = shm ? brix_kvs_arena_bytes(s->store) : 0;
    rep.r.max_value = brix_kvs_max_value(s->store);
    rep.r.max_batch = (uint32_t)s->cfg.max_batch;
    rep.r.lease_ms = (uint32_t)s->cfg.lease_ms;
    rep.r.unix_len = (uint16_t)ul;
    /* KiB, rounded down: what a client may pack in one request's body */
    rep.r.max_frame_kib =
        s->cfg.max_frame / 1024 > UINT32_MAX ? UINT32_MAX : (uint32_t)(s->cfg.max_frame / 1024);
    BRIX_DEBUG("HELLO from %s: namespace %u%s", who, id, shm ? ", shared memory" : "");
    if (!shm) {
        if (batch_meta(c, &rep, sizeof rep) || batch_meta(c, up, ul))
            return -1;
        return 0;
    }
    /* first request, so nothing is batched or in flight before this reply */
    if (c->niov || c->writes) {
        conn_fail(c, h, BRIXKV_ST_INTERNAL, "HELLO reply could not be sent first");
        return 0;
    }
    uint8_t buf[sizeof rep + 4096];
    memcpy(buf, &rep, sizeof rep);
    memcpy(buf + sizeof rep, up, ul);
    rc = send_with_fd(c, buf, sizeof rep + ul, brix_kvs_fd(s->store));
    if (rc) {
        BRIX_WARN("HELLO: passing the arena to %s failed: %s", who, uv_strerror(rc));
        return -1;
    }
    c->shm = true;
    return 0;
}

/* -------------------------------------------------------------- ops -- */

static int op_get(kv_conn_t *c, const brixkv_hdr_t *h, const uint8_t *body)
{
    brix_kvsrv_t *s = c->srv;
    bool shm = h->flags & BRIXKV_F_SHM;
    if (shm && !c->shm) {
        conn_fail(c, h, BRIXKV_ST_BAD_REQUEST,
                  "GET with BRIXKV_F_SHM on a connection that did not map the arena");
        return 0;
    }
    uint32_t n = h->count;
    brix_kvs_obj_t **objs = s->scratch;
    /* out of memory midway: this reply is taken out of the batch again, so
     * the error frame is not sent inside a half-made GET reply */
    kv_mark_t mark = batch_mark(c);
    brix_kvs_get(s->store, c->ns, (const uint8_t(*)[16])body, n, objs);
    uint64_t now = brix_now_ms();
    uint64_t payload = 0;
    size_t elen = (size_t)n * sizeof(brixkv_entry_t);
    /* entries are written into the meta buffer in place; the payloads
     * (TCP) are iovecs of the slots, after them */
    if (reply_hdr(c, h, BRIXKV_ST_OK, n, 0) || brix_buf_reserve(&c->meta, elen)) {
        for (uint32_t j = 0; j < n; j++)
            if (objs[j])
                brix_kvs_unref(s->store, objs[j]);
        goto oom;
    }
    size_t hoff = c->meta.len - sizeof(brixkv_hdr_t);
    size_t eoff = c->meta.len;
    memset(c->meta.data + eoff, 0, elen);
    c->meta.len += elen;
    c->meta.data[c->meta.len] = '\0';
    if (batch_iov(c, NULL, eoff, elen)) {
        for (uint32_t j = 0; j < n; j++)
            if (objs[j])
                brix_kvs_unref(s->store, objs[j]);
        goto oom;
    }
    for (uint32_t i = 0; i < n; i++) {
        brix_kvs_obj_t *o = objs[i];
        brixkv_entry_t e = { .status = BRIXKV_ST_NOT_FOUND };
        if (o) {
            e.status = BRIXKV_ST_OK;
            e.len = brix_kvs_obj_len(o);
            e.gen_off = brix_kvs_obj_gen_off(s->store, o);
            e.gen = brix_kvs_obj_gen(s->store, o);
        }
        if (o && shm) {
            e.offset = brix_kvs_obj_offset(s->store, o);
            int rc = brix_kvs_lease(s->store, &c->owner, o, now, &e.lease);
            brix_kvs_unref(s->store, o); /* the lease holds it now */
            if (rc)                      /* over --max-leases: the client misses */
                e = (brixkv_entry_t){ .status = BRIXKV_ST_BUSY };
        } else if (o) {
            bool reffed = batch_ref(c, o) == 0;
            if (!reffed || batch_iov(c, brix_kvs_obj_data(s->store, o), 0, e.len)) {
                /* o's reference is in the batch only if batch_ref took it
                 * (then it goes with the batch's below); the keys after it
                 * are still ours. Not "the last ref equals o": a key asked
                 * twice holds two. */
                for (uint32_t j = reffed ? i + 1 : i; j < n; j++)
                    if (objs[j])
                        brix_kvs_unref(s->store, objs[j]);
                goto oom;
            }
            payload += e.len;
        }
        /* memcpy: the meta buffer holds heads of any length (a HELLO's path) */
        memcpy(c->meta.data + eoff + (size_t)i * sizeof e, &e, sizeof e);
    }
    uint64_t bl = elen + payload;
    memcpy(c->meta.data + hoff + offsetof(brixkv_hdr_t, body_len), &bl, sizeof bl);
    return 0;
oom:
    batch_rollback(c, &mark);
    conn_fail(c, h, BRIXKV_ST_INTERNAL, "out of memory");
    return -1;
}

static int op_match(kv_conn_t *c, const brixkv_hdr_t *h, const uint8_t *body)
{
    size_t r = brix_kvs_match(c->srv->store, c->ns, (const uint8_t(*)[16])body, h->count);
    return reply_hdr(c, h, BRIXKV_ST_OK, (uint32_t)r, 0);
}

static int op_keys_status(kv_conn_t *c, const brixkv_hdr_t *h, const uint8_t *keys, uint64_t ttl)
{
    brix_kvsrv_t *s = c->srv;
    uint64_t now = brix_now_ms();
    if (reply_hdr(c, h, BRIXKV_ST_OK, h->count, (uint64_t)h->count * sizeof(brixkv_entry_t)))
        return -1;
    for (uint32_t i = 0; i < h->count; i++) {
        brixkv_entry_t e = { 0 };
        const uint8_t *k = keys + (size_t)i * BRIXKV_KEY_BYTES;
        e.status = h->op == BRIXKV_OP_DELETE ? brix_kvs_delete(s->store, c->ns, k, now)
                                             : brix_kvs_pin(s->store, c->ns, k, ttl, now);
        if (batch_meta(c, &e, sizeof e))
            return -1;
    }
    return 0;
}

static int op_release(kv_conn_t *c, const brixkv_hdr_t *h, const uint8_t *body)
{
    uint32_t released = 0;
    for (uint32_t i = 0; i < h->count; i++) {
        uint64_t id;
        memcpy(&id, body + (size_t)i * sizeof id, sizeof id);
        released += brix_kvs_release(c->srv->store, &c->owner, id);
    }
    if (h->flags & BRIXKV_F_NOREPLY)
        return 0;
    return reply_hdr(c, h, BRIXKV_ST_OK, released, 0);
}

static int op_stats(kv_conn_t *c, const brixkv_hdr_t *h)
{
    brix_kvsrv_t *s = c->srv;
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s->store, &st);
    brixkv_stats_wire_t w = {
        .capacity_bytes = st.capacity_bytes,
        .used_bytes = st.used_bytes,
        .payload_bytes = st.payload_bytes,
        .objects = st.objects,
        .gets = st.gets,
        .hits = st.hits,
        .misses = st.misses,
        .puts = st.puts,
        .put_exists = st.put_exists,
        .put_no_space = st.put_no_space,
        .evictions = st.evictions,
        .evicted_bytes = st.evicted_bytes,
        .leases_active = st.leases_active,
        .pins_active = st.pins_active,
        .namespaces = s->nns,
        .connections = s->nconns,
    };
    if (reply_hdr(c, h, BRIXKV_ST_OK, 0, sizeof w))
        return -1;
    return batch_meta(c, &w, sizeof w);
}

static int on_frame(void *ud, const brixkv_hdr_t *h, const uint8_t *body)
{
    kv_conn_t *c = ud;
    if (c->close_after_flush)
        return -1;
    if (h->op == BRIXKV_OP_HELLO)
        return op_hello(c, h, body) < 0 ? -1 : (c->close_after_flush ? -1 : 0);
    if (!c->hello) {
        conn_fail(c, h, BRIXKV_ST_NAMESPACE, "HELLO must be the first request");
        return -1;
    }
    int rc = 0;
    kv_mark_t mark = batch_mark(c);
    switch (h->op) {
    case BRIXKV_OP_MATCH:
        rc = op_match(c, h, body);
        break;
    case BRIXKV_OP_GET:
        rc = op_get(c, h, body);
        break;
    case BRIXKV_OP_DELETE:
        rc = op_keys_status(c, h, body, 0);
        break;
    case BRIXKV_OP_PIN: {
        brixkv_pin_t pin;
        memcpy(&pin, body, sizeof pin);
        rc = op_keys_status(c, h, body + sizeof pin, (uint64_t)pin.ttl_s * 1000);
        break;
    }
    case BRIXKV_OP_RELEASE:
        rc = op_release(c, h, body);
        break;
    case BRIXKV_OP_STATS:
        rc = op_stats(c, h);
        break;
    case BRIXKV_OP_PING:
        rc = reply_hdr(c, h, BRIXKV_ST_OK, 0, 0);
        break;
    default:
        conn_fail(c, h, BRIXKV_ST_BAD_REQUEST, "unknown op");
        return -1;
    }
    if (rc) {
        if (!c->close_after_flush) {
            batch_rollback(c, &mark);
            conn_fail(c, h, BRIXKV_ST_INTERNAL, "out of memory");
        }
        return -1;
    }
    /* a long pipeline of GETs: write what is ready rather than grow the batch */
    if (c->batch_bytes >= (4u << 20) && batch_flush(c))
        return -1;
    return c->close_after_flush ? -1 : 0;
}

static int on_put(void *ud, const brixkv_hdr_t *h, const brixkv_put_desc_t *d, uint8_t **dest)
{
    kv_conn_t *c = ud;
    brix_kvsrv_t *s = c->srv;
    if (!c->hello) {
        conn_fail(c, h, BRIXKV_ST_NAMESPACE, "HELLO must be the first request");
        return -1;
    }
    if (h->count > c->rcap) {
        brix_kvs_resv_t *r = brix_realloc(c->resv, h->count * sizeof *r);
        if (r)
            c->resv = r;
        uint16_t *p = brix_realloc(c->pst, h->count * sizeof *p);
        if (p)
            c->pst = p;
        if (!r || !p) {
            conn_fail(c, h, BRIXKV_ST_INTERNAL, "out of memory");
            return -1;
        }
        c->rcap = h->count;
    }
    (void)d;
    (void)dest;
    /* slots are reserved value by value as the bytes come (on_put_value) */
    memset(c->resv, 0, h->count * sizeof *c->resv);
    for (uint32_t i = 0; i < h->count; i++)
        c->pst[i] = BRIXKV_ST_INTERNAL;
    (void)s;
    return 0;
}

static int on_put_value(void *ud, const brixkv_hdr_t *h, uint32_t i, const brixkv_put_desc_t *d,
                        uint8_t **dest)
{
    kv_conn_t *c = ud;
    (void)h;
    c->pst[i] = brix_kvs_reserve(c->srv->store, c->ns, d->key, d->len, brix_now_ms(), &c->resv[i]);
    *dest = c->resv[i].ptr;
    return 0;
}

static int on_put_done(void *ud, const brixkv_hdr_t *h)
{
    kv_conn_t *c = ud;
    brix_kvsrv_t *s = c->srv;
    kv_mark_t mark = batch_mark(c);
    brix_kvs_commit(s->store, c->ns, c->resv, c->pst, h->count, brix_now_ms());
    if (reply_hdr(c, h, BRIXKV_ST_OK, h->count, (uint64_t)h->count * sizeof(brixkv_entry_t)))
        goto oom;
    for (uint32_t i = 0; i < h->count; i++) {
        brixkv_entry_t e = { .status = c->pst[i] };
        if (batch_meta(c, &e, sizeof e))
            goto oom;
    }
    return 0;
oom:
    batch_rollback(c, &mark);
    conn_fail(c, h, BRIXKV_ST_INTERNAL, "out of memory");
    return -1;
}

static void on_parse_error(void *ud, const brixkv_hdr_t *h, uint16_t st, const char *msg)
{
    kv_conn_t *c = ud;
    if (!c->close_after_flush)
        conn_fail(c, h, st, msg);
}

/* -------------------------------------------------------- read path -- */

static bool mid_frame(const kv_conn_t *c);

static void on_alloc(uv_handle_t *hd, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    kv_conn_t *c = hd->data;
    uint8_t *p = NULL;
    size_t len = 0;
    if (brix_kvp_direct(&c->parser, &p, &len)) { /* the rest of a value: into its slot */
        if (len > (1u << 30))
            len = 1u << 30;
        *buf = uv_buf_init((char *)p, (unsigned)len);
        return;
    }
    *buf = uv_buf_init((char *)c->rbuf, KV_READ_BUF);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    kv_conn_t *c = st->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0 || c->closing)
        return;
    c->srv->bytes_in += (uint64_t)nread;
    c->last_read_ms = brix_now_ms();
    int rc;
    if ((uint8_t *)buf->base == c->rbuf)
        rc = brix_kvp_feed(&c->parser, c->rbuf, (size_t)nread);
    else
        rc = brix_kvp_direct_done(&c->parser, (size_t)nread);
    if (c->closing)
        return;
    if (mid_frame(c)) { /* a frame begun in this read: its own deadline (on_tick) */
        if (!c->in_frame || c->frame_no != c->parser.frames) {
            c->in_frame = true;
            c->frame_no = c->parser.frames;
            c->frame_start_ms = c->last_read_ms;
        }
    } else {
        c->in_frame = false;
        c->last_req_ms = c->last_read_ms;
    }
    if (batch_flush(c)) {
        conn_close(c);
        return;
    }
    if (rc < 0 || c->close_after_flush) {
        uv_read_stop(&c->h.stream);
        c->reading = false;
        if (!c->writes)
            conn_close(c);
        return;
    }
    if (c->pending > c->srv->cfg.max_pending) {
        uv_read_stop(&c->h.stream); /* the client is not reading its replies */
        c->reading = false;
        c->paused_ms = brix_now_ms();
    }
}

static void maybe_resume(kv_conn_t *c)
{
    if (!c->reading && !c->close_after_flush && !c->closing &&
        c->pending <= c->srv->cfg.max_pending / 2) {
        if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0) {
            c->reading = true;
            if (c->in_frame) /* our pause does not count against its --min-rate */
                c->frame_start_ms += brix_now_ms() - c->paused_ms;
        }
    }
}

/* The TCP peer's address into c->ip (IPv4 as ::ffff:a.b.c.d). 0 or -1. */
static int peer_ip(kv_conn_t *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len))
        return -1;
    memset(c->ip, 0, sizeof c->ip);
    if (ss.ss_family == AF_INET) {
        c->ip[10] = c->ip[11] = 0xff;
        memcpy(c->ip + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        return 0;
    }
    if (ss.ss_family == AF_INET6) {
        memcpy(c->ip, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
        return 0;
    }
    return -1;
}

static void on_connection(uv_stream_t *l, int status)
{
    brix_kvsrv_t *s = l->data;
    if (status < 0)
        return;
    bool is_unix = l == (uv_stream_t *)&s->unix_l;
    kv_conn_t *c = brix_calloc(1, sizeof *c);
    uint8_t *rbuf = c ? brix_malloc(KV_READ_BUF) : NULL;
    if (!c || !rbuf) {
        brix_free(c);
        brix_free(rbuf);
        return; /* the peer stays in the backlog and is retried */
    }
    c->rbuf = rbuf;
    c->srv = s;
    c->is_unix = is_unix;
    if (is_unix)
        uv_pipe_init(s->loop, &c->h.pipe, 0);
    else
        uv_tcp_init(s->loop, &c->h.tcp);
    c->h.handle.data = c;
    brix_kvp_limits_t lim = { .max_batch = (uint32_t)s->cfg.max_batch,
                              .max_frame = s->cfg.max_frame,
                              .max_string = KV_MAX_STRING };
    brix_kvp_cb_t cb = { on_frame, on_put, on_put_done, on_parse_error, on_put_value };
    brix_kvp_init(&c->parser, &lim, &cb, c);
    brix_kvs_owner_init(&c->owner);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    if (uv_accept(l, &c->h.stream)) {
        conn_close(c);
        return;
    }
    if ((int64_t)s->nconns > s->cfg.max_connections) {
        s->refused++;
        BRIX_WARN("connection refused: %lld open (--max-connections)",
                  (long long)s->cfg.max_connections);
        conn_close(c);
        return;
    }
    if (!is_unix && s->cfg.max_unauth_per_ip > 0 && peer_ip(c) == 0) {
        /* one address may hold only so many connections that have not
         * said HELLO: without the token it cannot take every place */
        int64_t same = 0;
        for (kv_conn_t *o = s->conns; o; o = o->next)
            if (o != c && !o->is_unix && !o->hello && !o->closing && !memcmp(o->ip, c->ip, 16))
                same++;
        if (same >= s->cfg.max_unauth_per_ip) {
            s->refused++;
            BRIX_DEBUG("connection refused: %lld from one address without HELLO "
                       "(--max-unauth-per-ip)",
                       (long long)same);
            conn_close(c);
            return;
        }
    }
    s->conns_total++;
    c->last_read_ms = c->accepted_ms = c->last_req_ms = brix_now_ms();
    if (!is_unix)
        uv_tcp_nodelay(&c->h.tcp, 1);
    if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0)
        c->reading = true;
    else
        conn_close(c);
}

/* ------------------------------------------------------------- HTTP -- */

static void collect(brix_metrics_t *r, void *ud)
{
    (void)r;
    brix_kvsrv_t *s = ud;
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s->store, &st);
    brix_metric_set(s->m.capacity, (double)st.capacity_bytes);
    brix_metric_set(s->m.arena_bytes, (double)brix_kvs_arena_bytes(s->store));
    brix_metric_set(s->m.used, (double)st.used_bytes);
    brix_metric_set(s->m.payload, (double)st.payload_bytes);
    brix_metric_set(s->m.reserved, (double)st.reserved_bytes);
    brix_metric_set(s->m.objects, (double)st.objects);
    brix_metric_set(s->m.gets, (double)st.gets);
    brix_metric_set(s->m.hits, (double)st.hits);
    brix_metric_set(s->m.misses, (double)st.misses);
    brix_metric_set(s->m.puts, (double)st.puts);
    brix_metric_set(s->m.put_exists, (double)st.put_exists);
    brix_metric_set(s->m.put_no_space, (double)st.put_no_space);
    brix_metric_set(s->m.put_too_large, (double)st.put_too_large);
    brix_metric_set(s->m.evictions, (double)st.evictions);
    brix_metric_set(s->m.evicted_bytes, (double)st.evicted_bytes);
    brix_metric_set(s->m.leases, (double)st.leases_active);
    brix_metric_set(s->m.leases_expired, (double)st.leases_expired);
    brix_metric_set(s->m.pins, (double)st.pins_active);
    brix_metric_set(s->m.pinned_bytes, (double)st.pinned_bytes);
    brix_metric_set(s->m.slabs_free, (double)st.slabs_free);
    brix_metric_set(s->m.conns, (double)s->nconns);
    brix_metric_set(s->m.conns_total, (double)s->conns_total);
    brix_metric_set(s->m.refused, (double)s->refused);
    brix_metric_set(s->m.namespaces, (double)s->nns);
    brix_metric_set(s->m.hello_refused, (double)s->hello_refused);
    brix_metric_set(s->m.frame_errors, (double)s->frame_errors);
    brix_metric_set(s->m.frame_timeouts, (double)s->frame_timeouts);
    brix_metric_set(s->m.hello_timeouts, (double)s->hello_timeouts);
    brix_metric_set(s->m.idle_closed, (double)s->idle_closed);
    brix_metric_set(s->m.bytes_in, (double)s->bytes_in);
    brix_metric_set(s->m.bytes_out, (double)s->bytes_out);
}

static brix_metric_t *fam(brix_kvsrv_t *s, brix_metric_type_t t, const char *name, const char *help)
{
    brix_metric_family_t *f = brix_metrics_family(s->reg, t, name, help, NULL, NULL, 0);
    return f ? brix_metric_child(f, NULL) : NULL;
}

static int metrics_init(brix_kvsrv_t *s)
{
    s->reg = brix_metrics_new();
    if (!s->reg)
        return -ENOMEM;
    const brix_metric_type_t G = BRIX_METRIC_GAUGE, C = BRIX_METRIC_COUNTER;
    s->m.capacity = fam(s, G, "brix_kvcache_capacity_bytes", "Bytes of slabs in the arena.");
    s->m.arena_bytes =
        fam(s, G, "brix_kvcache_arena_bytes", "Bytes of the memfd mapping (slabs + generations).");
    s->m.used = fam(s, G, "brix_kvcache_used_bytes", "Bytes of slots holding objects.");
    s->m.payload = fam(s, G, "brix_kvcache_payload_bytes", "Value bytes of the stored objects.");
    s->m.reserved = fam(s, G, "brix_kvcache_reserved_bytes", "Bytes of slots of PUTs in flight.");
    s->m.objects = fam(s, G, "brix_kvcache_objects", "Objects stored.");
    s->m.gets = fam(s, C, "brix_kvcache_gets_total", "Keys asked for by GET.");
    s->m.hits = fam(s, C, "brix_kvcache_hits_total", "GET keys found.");
    s->m.misses = fam(s, C, "brix_kvcache_misses_total", "GET keys not found.");
    s->m.puts = fam(s, C, "brix_kvcache_puts_total", "Values stored by PUT.");
    s->m.put_exists =
        fam(s, C, "brix_kvcache_put_exists_total", "PUT keys already stored (kept as they were).");
    s->m.put_no_space =
        fam(s, C, "brix_kvcache_put_no_space_total", "PUT keys refused: nothing evictable.");
    s->m.put_too_large =
        fam(s, C, "brix_kvcache_put_too_large_total", "PUT keys refused: value over max-value.");
    s->m.evictions = fam(s, C, "brix_kvcache_evictions_total", "Objects evicted.");
    s->m.evicted_bytes =
        fam(s, C, "brix_kvcache_evicted_bytes_total", "Value bytes of the evicted objects.");
    s->m.leases = fam(s, G, "brix_kvcache_leases", "Read leases held by same-host clients.");
    s->m.leases_expired =
        fam(s, C, "brix_kvcache_leases_expired_total", "Leases that ended by expiry, unreleased.");
    s->m.pins = fam(s, G, "brix_kvcache_pins", "Pinned objects.");
    s->m.pinned_bytes = fam(s, G, "brix_kvcache_pinned_bytes", "Slot bytes of pinned objects.");
    s->m.slabs_free = fam(s, G, "brix_kvcache_slabs_free", "Slabs not assigned to a size class.");
    s->m.conns = fam(s, G, "brix_kvcache_connections", "Open brixkv connections.");
    s->m.conns_total = fam(s, C, "brix_kvcache_connections_total", "Accepted brixkv connections.");
    s->m.refused = fam(s, C, "brix_kvcache_connections_refused_total",
                       "Connections closed at accept (--max-connections).");
    s->m.namespaces = fam(s, G, "brix_kvcache_namespaces", "Namespaces known to this node.");
    s->m.hello_refused = fam(s, C, "brix_kvcache_hello_refused_total",
                             "HELLOs refused (token, hash seed, namespace).");
    s->m.frame_errors = fam(s, C, "brix_kvcache_frame_errors_total",
                            "Connections closed on a malformed or refused request.");
    s->m.frame_timeouts =
        fam(s, C, "brix_kvcache_frame_timeouts_total",
            "Connections closed stalled mid-request or not reading replies (--frame-timeout).");
    s->m.hello_timeouts = fam(s, C, "brix_kvcache_hello_timeouts_total",
                              "Connections closed for sending no HELLO in --hello-timeout.");
    s->m.idle_closed = fam(s, C, "brix_kvcache_idle_closed_total",
                           "Connections closed after --idle-timeout without a request.");
    s->m.bytes_in = fam(s, C, "brix_kvcache_received_bytes_total", "Bytes read from clients.");
    s->m.bytes_out = fam(s, C, "brix_kvcache_sent_bytes_total", "Bytes written to clients.");
    brix_metric_family_t *hf =
        brix_metrics_family(s->reg, G, "brix_kvcache_hugepages",
                            "1 for the kind of pages backing the arena (hugetlb, thp or none).",
                            (const char *const[]){ "kind", NULL }, NULL, 0);
    const char *kind[] = { brix_kvs_hugepages_str(brix_kvs_hugepages(s->store)) };
    s->m.hugepages = hf ? brix_metric_child(hf, kind) : NULL;
    brix_metric_set(s->m.hugepages, 1);
    brix_metrics_add_process(s->reg, &s->pm);
    brix_metrics_on_collect(s->reg, collect, s);
    return 0;
}

static void on_http(brix_http_req_t *req, void *ud)
{
    brix_kvsrv_t *s = ud;
    if (!strcmp(req->path, "/healthz") || !strcmp(req->path, "/readyz")) {
        brix_http_respond(req, 200, "text/plain", "ok\n", 3);
        return;
    }
    if (!strcmp(req->path, "/metrics")) {
        brix_buf_t b = BRIX_BUF_INIT;
        if (brix_metrics_write(s->reg, &b)) {
            brix_buf_free(&b);
            brix_http_respond_error(req, 500, NULL, NULL, NULL, "out of memory");
            return;
        }
        brix_http_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        brix_buf_free(&b);
        return;
    }
    brix_http_respond_error(req, 404, NULL, NULL, NULL, "no route %s (try /metrics, /healthz)",
                            req->path);
}

/* -------------------------------------------------------- lifecycle -- */

/* Inside a frame (a header begun, a body or PUT payload not complete). */
static bool mid_frame(const kv_conn_t *c)
{
    return c->parser.state != BRIX_KVP_HDR || c->parser.hgot > 0;
}

static void on_tick(uv_timer_t *t)
{
    brix_kvsrv_t *s = t->data;
    uint64_t now = brix_now_ms();
    /* a stalled PUT holds its reserved slots, a reply nobody reads holds
     * references to its objects (they cannot be evicted): both get
     * --frame-timeout */
    for (kv_conn_t *c = s->conns, *nx; c; c = nx) {
        nx = c->next;
        bool in_stall =
            c->reading && mid_frame(c) && now - c->last_read_ms > s->cfg.frame_timeout_ms;
        bool out_stall = c->writes && now - c->last_write_ms > s->cfg.frame_timeout_ms;
        /* trickling a byte per --frame-timeout is not a stall: a frame must
         * also end by an absolute deadline, --frame-timeout plus its body
         * at --min-rate */
        uint64_t body = c->parser.state == BRIX_KVP_HDR ? 0 : c->parser.hdr.body_len;
        bool too_slow =
            s->cfg.min_rate && c->reading && c->in_frame && mid_frame(c) &&
            now - c->frame_start_ms > s->cfg.frame_timeout_ms + body * 1000 / s->cfg.min_rate;
        if (in_stall || out_stall || too_slow) {
            s->frame_timeouts++;
            BRIX_DEBUG("brixkv connection %s: closed",
                       in_stall   ? "stalled mid-request (--frame-timeout)"
                       : too_slow ? "sending a request below --min-rate"
                                  : "not reading its replies (--frame-timeout)");
            conn_close(c);
            continue;
        }
        /* a connection holds a --max-connections place: one that never
         * says HELLO (no token) must not keep it */
        if (s->cfg.hello_timeout_ms && !c->hello && !c->closing &&
            now - c->accepted_ms > s->cfg.hello_timeout_ms) {
            s->hello_timeouts++;
            BRIX_DEBUG("brixkv connection sent no HELLO in %llu ms: closed",
                       (unsigned long long)s->cfg.hello_timeout_ms);
            conn_close(c);
            continue;
        }
        if (s->cfg.idle_timeout_ms && c->hello && !c->closing && !c->writes && !mid_frame(c) &&
            now - c->last_req_ms > s->cfg.idle_timeout_ms) {
            s->idle_closed++;
            BRIX_DEBUG("brixkv connection idle for %llu ms: closed",
                       (unsigned long long)s->cfg.idle_timeout_ms);
            conn_close(c);
        }
    }
    brix_kvs_tick(s->store, now);
}

static int listen_tcp(brix_kvsrv_t *s, char *err, size_t errlen)
{
    char host[256];
    int port = 0;
    if (parse_hostport(s->cfg.listen, host, sizeof host, &port)) {
        snprintf(err, errlen, "--listen %s: want HOST:PORT", s->cfg.listen);
        return -EINVAL;
    }
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss)) {
        snprintf(err, errlen, "--listen %s: not an IP address", s->cfg.listen);
        return -EINVAL;
    }
    uv_tcp_init(s->loop, &s->tcp);
    s->tcp.data = s;
    s->tcp_on = true;
    int rc = uv_tcp_bind(&s->tcp, (struct sockaddr *)&ss, 0);
    if (!rc)
        rc = uv_listen((uv_stream_t *)&s->tcp, 1024, on_connection);
    if (rc) {
        snprintf(err, errlen, "--listen %s: %s", s->cfg.listen, uv_strerror(rc));
        return rc;
    }
    int nl = sizeof ss;
    uv_tcp_getsockname(&s->tcp, (struct sockaddr *)&ss, &nl);
    s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return 0;
}

static int listen_unix(brix_kvsrv_t *s, char *err, size_t errlen)
{
    uv_pipe_init(s->loop, &s->unix_l, 0);
    s->unix_l.data = s;
    s->unix_on = true;
    /* a stale socket of an earlier run is replaced; a live one is not */
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", s->cfg.unix_path);
    bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
    if (probe >= 0)
        close(probe);
    if (live) {
        snprintf(err, errlen, "--unix %s: another process is serving on it", s->cfg.unix_path);
        s->unix_on = false;
        uv_close((uv_handle_t *)&s->unix_l, NULL);
        return -EADDRINUSE;
    }
    /* only a socket is replaced: a --unix naming a regular file (a typo, a
     * hostile symlink) must not delete it */
    struct stat lst;
    if (lstat(s->cfg.unix_path, &lst) == 0) {
        if (!S_ISSOCK(lst.st_mode)) {
            snprintf(err, errlen, "--unix %s: exists and is not a socket", s->cfg.unix_path);
            s->unix_on = false;
            uv_close((uv_handle_t *)&s->unix_l, NULL);
            return -EEXIST;
        }
        unlink(s->cfg.unix_path);
    }
    /* created 0600 at once (no window where others may connect), then 0660 */
    mode_t old_mask = umask(0177);
    int rc = uv_pipe_bind(&s->unix_l, s->cfg.unix_path);
    umask(old_mask);
    if (!rc)
        rc = uv_listen((uv_stream_t *)&s->unix_l, 1024, on_connection);
    if (rc) {
        snprintf(err, errlen, "--unix %s: %s", s->cfg.unix_path, uv_strerror(rc));
        return rc;
    }
    /* same-host clients of any user may map the arena: who may connect is
     * the socket file's permission (owner and group) */
    chmod(s->cfg.unix_path, 0660);
    return 0;
}

/* Default: half the arena for PUTs in flight, and never less than one
 * whole --max-frame (a single PUT as big as allowed must not be refused). */
static uint64_t put_reserved_cap(const brix_kvsrv_cfg_t *cfg)
{
    if (cfg->max_put_reserved)
        return cfg->max_put_reserved;
    uint64_t cap = cfg->capacity / 2;
    return cap < cfg->max_frame ? cfg->max_frame : cap;
}

int brix_kvsrv_start(uv_loop_t *loop, const brix_kvsrv_cfg_t *cfg, const char *token,
                     brix_kvsrv_t **out, char *err, size_t errlen)
{
    *out = NULL;
    brix_kvsrv_t *s = brix_calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->loop = loop;
    s->cfg = *cfg;
    s->port = -1;
    s->http_port = -1;
    s->token = token ? brix_strdup(token) : NULL;
    if (cfg->hash_seed) {
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(cfg->hash_seed, &end, 0);
        if (!*cfg->hash_seed || *end || errno) {
            snprintf(err, errlen,
                     "--hash-seed %s: not a fixed number; a random seed makes block hashes differ "
                     "between processes, so no two engines would ever share a block",
                     cfg->hash_seed);
            brix_free(s->token);
            brix_free(s);
            return -EINVAL;
        }
        s->have_seed = true;
        s->seed = v;
    }
    if (getentropy(&s->node_id, sizeof s->node_id))
        s->node_id = ((uint64_t)getpid() << 32) ^ brix_now_ns();
    brix_kvs_cfg_t sc = {
        .capacity = cfg->capacity,
        .max_value = cfg->max_value,
        .high_watermark = cfg->high_watermark,
        .low_watermark = cfg->low_watermark,
        .policy =
            cfg->eviction && !strcmp(cfg->eviction, "s3fifo") ? BRIX_KVS_S3FIFO : BRIX_KVS_LRU,
        .order = cfg->eviction_order && !strcmp(cfg->eviction_order, "request")
                     ? BRIX_KVS_ORDER_REQUEST
                     : BRIX_KVS_ORDER_PREFIX,
        .lease_ms = cfg->lease_ms,
        .max_leases_per_owner = (uint32_t)cfg->max_leases,
        .max_pin_ms = cfg->max_pin_ms,
        .max_pinned_fraction = cfg->max_pinned_fraction,
        .no_hugepages = cfg->no_hugepages,
        .max_reserved = put_reserved_cap(cfg),
        .max_namespaces = (uint32_t)cfg->max_namespaces,
    };
    int rc = brix_kvs_open(&sc, &s->store, err, errlen);
    if (rc) {
        brix_free(s->token);
        brix_free(s);
        return rc;
    }
    uint64_t one_put = brix_kvs_max_value(s->store) + sizeof(brixkv_put_desc_t);
    if (cfg->max_frame < one_put) {
        snprintf(err, errlen,
                 "--max-frame %llu is below one PUT of the largest value (%llu bytes: max value "
                 "%llu + a descriptor); raise --max-frame or lower --max-value",
                 (unsigned long long)cfg->max_frame, (unsigned long long)one_put,
                 (unsigned long long)brix_kvs_max_value(s->store));
        rc = -EINVAL;
        brix_kvs_close(s->store);
        brix_free(s->token);
        brix_free(s);
        return rc;
    }
    s->scratch = brix_calloc((size_t)cfg->max_batch, sizeof *s->scratch);
    if (!s->scratch || metrics_init(s)) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
        goto fail;
    }
    uv_timer_init(loop, &s->tick);
    s->tick_on = true;
    s->tick.data = s;
    uv_timer_start(&s->tick, on_tick, KV_TICK_MS, KV_TICK_MS);
    if (cfg->listen && (rc = listen_tcp(s, err, errlen)))
        goto fail;
    if (cfg->unix_path && *cfg->unix_path && (rc = listen_unix(s, err, errlen)))
        goto fail;
    if (cfg->http_port >= 0) {
        brix_http_limits_t lim;
        brix_http_limits_default(&lim);
        lim.max_body_bytes = 4096;
        lim.max_connections = 64;
        s->http = brix_http_server_new(loop, &lim, on_http, s);
        if (!s->http) {
            snprintf(err, errlen, "out of memory");
            rc = -ENOMEM;
            goto fail;
        }
        rc = brix_http_server_listen(s->http, cfg->http_host ? cfg->http_host : "127.0.0.1",
                                     (int)cfg->http_port, false, &s->http_port);
        if (rc) {
            snprintf(err, errlen, "--http-port %lld: %s", (long long)cfg->http_port,
                     uv_strerror(rc));
            goto fail;
        }
    }
    char classes[64];
    size_t nc = brix_kvs_nclasses(s->store);
    snprintf(classes, sizeof classes, "%zu classes %llu..%llu bytes", nc,
             (unsigned long long)brix_kvs_class_size(s->store, 0),
             (unsigned long long)brix_kvs_class_size(s->store, nc - 1));
    brix_kvs_stats_t st;
    brix_kvs_get_stats(s->store, &st);
    BRIX_INFO(
        "kvcache node %016llx: capacity %llu bytes (%llu slabs of %llu), %s, max value %llu, "
        "huge pages: %s, eviction %s order %s, tcp %s (port %d), unix %s, http %s:%d, token %s",
        (unsigned long long)s->node_id, (unsigned long long)st.capacity_bytes,
        (unsigned long long)st.slabs_total, (unsigned long long)brix_kvs_slab_bytes(s->store),
        classes, (unsigned long long)brix_kvs_max_value(s->store),
        brix_kvs_hugepages_str(brix_kvs_hugepages(s->store)), cfg->eviction, cfg->eviction_order,
        cfg->listen ? cfg->listen : "-", s->port, s->unix_on ? cfg->unix_path : "-",
        s->http ? (cfg->http_host ? cfg->http_host : "127.0.0.1") : "-", s->http_port,
        s->token ? "required" : "none");
    if (s->unix_on && brix_kvs_fd(s->store) < 0)
        BRIX_WARN("the kernel could not seal the arena's memfd (F_SEAL_FUTURE_WRITE needs Linux "
                  "5.1+): same-host clients get values over the socket, not mapped");
    *out = s;
    return 0;
fail:
    brix_kvsrv_stop(s);
    uv_run(loop, UV_RUN_DEFAULT);
    brix_kvsrv_free(s);
    return rc ? rc : -EINVAL;
}

int brix_kvsrv_port(const brix_kvsrv_t *s)
{
    return s->port;
}
int brix_kvsrv_http_port(const brix_kvsrv_t *s)
{
    return s->http_port;
}

static void on_http_closed(void *arg)
{
    (void)arg;
}

void brix_kvsrv_stop(brix_kvsrv_t *s)
{
    if (s->stopping)
        return;
    s->stopping = true;
    if (s->tcp_on)
        uv_close((uv_handle_t *)&s->tcp, NULL);
    if (s->unix_on) {
        uv_close((uv_handle_t *)&s->unix_l, NULL);
        struct stat lst; /* ours unless someone replaced it: then leave it */
        if (lstat(s->cfg.unix_path, &lst) == 0 && S_ISSOCK(lst.st_mode))
            unlink(s->cfg.unix_path);
    }
    if (s->tick_on)
        uv_close((uv_handle_t *)&s->tick, NULL);
    while (s->conns)
        conn_close(s->conns);
    if (s->http) {
        brix_http_server_close(s->http, on_http_closed, NULL);
        s->http = NULL;
    }
}

void brix_kvsrv_free(brix_kvsrv_t *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nns; i++) {
        brix_free(s->ns[i].model);
        brix_free(s->ns[i].dtype);
        brix_free(s->ns[i].layout);
    }
    brix_free(s->ns);
    brix_free(s->scratch);
    brix_metrics_free(s->reg);
    brix_kvs_close(s->store);
    if (s->token) {
        memset(s->token, 0, strlen(s->token));
        brix_free(s->token);
    }
    brix_free(s);
}
