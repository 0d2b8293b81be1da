/*
 * HTTP/1.1 server connections: an explicit state machine per connection
 * (see brix_http_conn_state), writes that try the socket first and queue only
 * the remainder, and deferred frees in libuv close callbacks.
 */
#include "core/http_server.h"

#include "core/log.h"
#include "core/time.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BUF_SIZE  65536
#define LINGER_MS      2000
#define BUDGET_POLL_MS 50 /* paused readers re-check the shared budget this often */
#define IP_BUCKETS     4096

/* Which eviction list a connection is on: when the listener is full, the
 * oldest idle keep-alive connection goes first, then the oldest one still
 * sending its head (a slowloris dribbler is the oldest of those). */
enum { QUIET_NONE, QUIET_IDLE, QUIET_HEAD, QUIET_N };

typedef struct ip_ent {
    struct ip_ent *next;
    uint8_t ip[16]; /* IPv4 as ::ffff:a.b.c.d */
    uint32_t n;
} ip_ent_t;

struct brix_http_shared {
    uv_mutex_t mu; /* ips: taken once per accept and close, only with a per-IP cap */
    ip_ent_t *ips[IP_BUCKETS];
    _Atomic int64_t buffered;
    _Atomic uint64_t conns_open, header_to, body_to, idle_to, write_to, refused_ip, refused_full,
        evicted, pauses;
};

typedef enum brix_http_conn_state {
    CONN_IDLE,      /* between requests, no byte of the next one yet; idle timer armed */
    CONN_READING,   /* a request is arriving; header or body timer armed */
    CONN_HANDLING,  /* request handed to the handler, response not done; later
                       input is buffered, not parsed; no timer */
    CONN_LINGERING, /* last response written and write side shut down; input is
                       discarded until EOF or the linger timer */
    CONN_CLOSING,   /* uv_close issued; memory freed when both handles are closed */
} brix_http_conn_state_t;

typedef struct brix_http_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shut;
    brix_http_server_t *srv;
    brix_http_conn_state_t state;
    brix_http_reqparser_t rp;
    brix_http_req_t req;
    brix_buf_t in;   /* received, not yet parsed */
    brix_buf_t head; /* scratch for response heads */
    bool reading;
    bool processing, reprocess;
    bool body_phase; /* READING: headers done, body timer armed */
    bool sent_continue;
    bool head_pending; /* a streamed response's head waits to go out with its first bytes */
    struct brix_http_conn *pend_prev, *pend_next; /* server's head_pending list */
    int handles_open;
    size_t wq_bytes; /* bytes in queued uv_write requests */
    unsigned wq_reqs;
    struct brix_http_conn *prev, *next;
    uv_timer_t wtimer; /* write progress: armed while uv_write requests are queued */
    uint64_t wq_added; /* bytes ever handed to uv_write */
    uint64_t w_mark;   /* bytes written (wq_added - queued) when wtimer was armed */
    uint8_t ip[16];
    bool ip_counted;
    bool budget_paused; /* reading stopped while the process is over its budget */
    bool await_admit;   /* paused at the end of the head: its body does not fit yet */
    struct brix_http_conn *pprev, *pnext; /* server's paused list, oldest first */
    int quiet;                            /* QUIET_*: eviction list membership */
    struct brix_http_conn *qprev, *qnext;
    uint64_t counted;  /* bytes this connection adds to the shared budget */
    uint64_t reserved; /* declared body length admitted at the end of the head */
} brix_http_conn_t;

struct brix_http_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    bool listening, listener_open;
    bool draining, closing;
    brix_http_limits_t lim;
    brix_http_handler_fn handler;
    void *ud;
    brix_http_conn_t *conns; /* open connections (not yet closing) */
    size_t conns_alive;      /* connections whose memory is not yet freed */
    int handles_open;        /* the flush check and budget timer handles */
    brix_http_server_stats_t st;
    uv_check_t flush_check; /* end of loop tick: send heads still pending */
    bool flush_active;
    brix_http_conn_t *pending_heads; /* connections with head_pending */
    brix_http_shared_t *sh;
    bool own_sh;
    brix_http_conn_t *qhead[QUIET_N], *qtail[QUIET_N]; /* oldest first */
    uv_timer_t budget_timer;                           /* runs while npaused > 0 */
    size_t npaused;
    brix_http_conn_t *phead, *ptail; /* budget-paused connections, in pause order */
    /* Over the budget with no request in flight here, one connection with a
     * half-received request may still read until that request is complete,
     * so paused connections can never all wait on each other; costs at most
     * one request per server. */
    brix_http_conn_t *exempt;
    char rbuf[READ_BUF_SIZE];
    void (*done_cb)(void *);
    void *done_arg;
};

typedef struct write_req {
    uv_write_t w;
    brix_http_conn_t *conn;
    size_t len;
    char data[];
} write_req_t;

static void conn_close(brix_http_conn_t *c);
static void conn_close_ex(brix_http_conn_t *c, bool reset);
static void arm_timer(brix_http_conn_t *c, uint64_t ms);
static void conn_process(brix_http_conn_t *c);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);
static void server_maybe_done(brix_http_server_t *s);

/* ---------------------------------------------------------------- utils -- */

static _Thread_local uint64_t tl_rng;

static uint64_t rng_next(void)
{
    if (!tl_rng)
        tl_rng = brix_now_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&tl_rng;
    tl_rng ^= tl_rng >> 12;
    tl_rng ^= tl_rng << 25;
    tl_rng ^= tl_rng >> 27;
    return tl_rng * 2685821657736338717ull;
}

static void make_request_id(brix_http_req_t *req)
{
    const char *h = brix_http_req_header(req, "x-request-id");
    if (h && *h) {
        size_t j = 0;
        for (size_t i = 0; h[i] && j < sizeof req->id - 1; i++) {
            char ch = h[i];
            if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                ch == '-' || ch == '_' || ch == '.' || ch == ':')
                req->id[j++] = ch;
        }
        req->id[j] = '\0';
        if (j)
            return;
    }
    static const char hex[] = "0123456789abcdef";
    uint64_t a = rng_next(), b = rng_next();
    for (int i = 0; i < 16; i++) {
        req->id[i] = hex[(a >> (60 - 4 * i)) & 15];
        req->id[16 + i] = hex[(b >> (60 - 4 * i)) & 15];
    }
    req->id[32] = '\0';
}

static const char *http_date(void)
{
    static _Thread_local char cached[40];
    static _Thread_local int64_t cached_s = -1;
    int64_t now = brix_wall_s();
    if (now != cached_s) {
        brix_time_http_date(cached, now);
        cached_s = now;
    }
    return cached;
}

const char *brix_http_error_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "invalid_request_error";
    case 429:
        return "rate_limit_exceeded";
    case 503:
        return "service_unavailable";
    default:
        return status < 500 ? "invalid_request_error" : "internal_server_error";
    }
}

static int error_body(brix_buf_t *b, int status, const char *type, const char *code,
                      const char *param, const char *msg)
{
    int rc = brix_buf_append_str(b, "{\"error\":{\"message\":");
    rc |= brix_buf_append_json_str(b, msg, strlen(msg));
    rc |= brix_buf_append_str(b, ",\"type\":");
    type = type ? type : brix_http_error_type(status);
    rc |= brix_buf_append_json_str(b, type, strlen(type));
    rc |= brix_buf_append_str(b, ",\"param\":");
    if (param)
        rc |= brix_buf_append_json_str(b, param, strlen(param));
    else
        rc |= brix_buf_append_str(b, "null");
    rc |= brix_buf_append_str(b, ",\"code\":");
    if (code)
        rc |= brix_buf_append_json_str(b, code, strlen(code));
    else
        rc |= brix_buf_printf(b, "%d", status);
    rc |= brix_buf_append_str(b, "}}");
    return rc ? -ENOMEM : 0;
}

/* --------------------------------------------------------------- shared -- */

#define RELAXED     memory_order_relaxed
#define BUMP(sh, f) atomic_fetch_add_explicit(&(sh)->f, 1, RELAXED)

brix_http_shared_t *brix_http_shared_new(void)
{
    brix_http_shared_t *sh = brix_calloc(1, sizeof *sh);
    if (sh)
        uv_mutex_init(&sh->mu);
    return sh;
}

void brix_http_shared_free(brix_http_shared_t *sh)
{
    if (!sh)
        return;
    for (size_t i = 0; i < IP_BUCKETS; i++)
        for (ip_ent_t *e = sh->ips[i], *n; e; e = n) {
            n = e->next;
            brix_free(e);
        }
    uv_mutex_destroy(&sh->mu);
    brix_free(sh);
}

void brix_http_shared_stats(const brix_http_shared_t *csh, brix_http_guard_stats_t *o)
{
    brix_http_shared_t *sh = (brix_http_shared_t *)csh; /* atomics: loads need non-const */
    int64_t b = atomic_load_explicit(&sh->buffered, RELAXED);
    o->buffered_bytes = b > 0 ? (uint64_t)b : 0;
    o->conns_open = atomic_load_explicit(&sh->conns_open, RELAXED);
    o->header_timeouts = atomic_load_explicit(&sh->header_to, RELAXED);
    o->body_timeouts = atomic_load_explicit(&sh->body_to, RELAXED);
    o->idle_timeouts = atomic_load_explicit(&sh->idle_to, RELAXED);
    o->write_timeouts = atomic_load_explicit(&sh->write_to, RELAXED);
    o->refused_per_ip = atomic_load_explicit(&sh->refused_ip, RELAXED);
    o->refused_full = atomic_load_explicit(&sh->refused_full, RELAXED);
    o->evicted = atomic_load_explicit(&sh->evicted, RELAXED);
    o->budget_pauses = atomic_load_explicit(&sh->pauses, RELAXED);
}

static size_t ip_bucket(const uint8_t ip[16])
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ ip[i]) * 1099511628211ull;
    return (size_t)(h % IP_BUCKETS);
}

/* Counts one more connection from ip unless max are open; false when full
 * (or out of memory: refusing is the safe side). */
static bool ip_acquire(brix_http_shared_t *sh, const uint8_t ip[16], int64_t max)
{
    bool ok = false;
    uv_mutex_lock(&sh->mu);
    ip_ent_t **head = &sh->ips[ip_bucket(ip)], *e = *head;
    while (e && memcmp(e->ip, ip, 16))
        e = e->next;
    if (!e && (e = brix_calloc(1, sizeof *e))) {
        memcpy(e->ip, ip, 16);
        e->next = *head;
        *head = e;
    }
    if (e && (int64_t)e->n < max) {
        e->n++;
        ok = true;
    }
    uv_mutex_unlock(&sh->mu);
    return ok;
}

static void ip_release(brix_http_shared_t *sh, const uint8_t ip[16])
{
    uv_mutex_lock(&sh->mu);
    for (ip_ent_t **q = &sh->ips[ip_bucket(ip)]; *q; q = &(*q)->next) {
        ip_ent_t *e = *q;
        if (memcmp(e->ip, ip, 16))
            continue;
        if (--e->n == 0) {
            *q = e->next;
            brix_free(e);
        }
        break;
    }
    uv_mutex_unlock(&sh->mu);
}

static void peer_ip(brix_http_conn_t *c)
{
    struct sockaddr_storage a;
    int len = sizeof a;
    memset(c->ip, 0, sizeof c->ip);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&a, &len))
        return;
    if (a.ss_family == AF_INET) {
        c->ip[10] = c->ip[11] = 0xff;
        memcpy(c->ip + 12, &((struct sockaddr_in *)&a)->sin_addr, 4);
    } else if (a.ss_family == AF_INET6) {
        memcpy(c->ip, &((struct sockaddr_in6 *)&a)->sin6_addr, 16);
    }
}

/* ---- eviction lists ---- */

static void quiet_set(brix_http_conn_t *c, int which)
{
    brix_http_server_t *s = c->srv;
    if (c->quiet == which)
        return;
    if (c->quiet != QUIET_NONE) {
        int q = c->quiet;
        if (c->qprev)
            c->qprev->qnext = c->qnext;
        else
            s->qhead[q] = c->qnext;
        if (c->qnext)
            c->qnext->qprev = c->qprev;
        else
            s->qtail[q] = c->qprev;
        c->qprev = c->qnext = NULL;
    }
    c->quiet = which;
    if (which != QUIET_NONE) {
        c->qprev = s->qtail[which];
        c->qnext = NULL;
        if (s->qtail[which])
            s->qtail[which]->qnext = c;
        else
            s->qhead[which] = c;
        s->qtail[which] = c;
    }
}

/* ---- buffered-bytes budget ---- */

static bool over_budget(const brix_http_server_t *s, int64_t extra)
{
    return s->lim.max_buffered_bytes && atomic_load_explicit(&s->sh->buffered, RELAXED) + extra >
                                            (int64_t)s->lim.max_buffered_bytes;
}

/* Brings this connection's share of the shared budget up to date: bytes
 * received and not yet parsed, the body (or its admitted declared length),
 * a head still arriving, and output queued in user space. */
static void conn_acct(brix_http_conn_t *c)
{
    uint64_t want = 0;
    if (c->state != CONN_CLOSING) {
        uint64_t body = c->req.body.len > c->reserved ? c->req.body.len : c->reserved;
        want = c->in.len + c->wq_bytes + body + (c->rp.headers_done ? 0 : c->rp.header_bytes);
    }
    if (want != c->counted) {
        atomic_fetch_add_explicit(&c->srv->sh->buffered, (int64_t)want - (int64_t)c->counted,
                                  RELAXED);
        c->counted = want;
    }
}

static void budget_unpause(brix_http_conn_t *c);

/* Paused readers resume once the process is back under 7/8 of its budget
 * (the gap keeps them from flapping at the boundary). Polled: the bytes that
 * free the budget may be released on another worker's loop. */
static void on_budget_timer(uv_timer_t *t)
{
    brix_http_server_t *s = t->data;
    int64_t low = (int64_t)(s->lim.max_buffered_bytes / 8 * 7);
    if (s->npaused && atomic_load_explicit(&s->sh->buffered, RELAXED) > low) {
        /* requests in flight here will release bytes when they end */
        if (s->exempt || s->st.requests_active)
            return;
        for (brix_http_conn_t *c = s->phead; c; c = c->pnext) {
            if (c->state == CONN_READING) {
                s->exempt = c;
                budget_unpause(c);
                break;
            }
        }
        return;
    }
    /* Resume only as many as the room left can take one read each: resuming
     * every paused connection at once would overshoot by a read buffer per
     * connection. The rest wait for the next tick. */
    int64_t room =
        (int64_t)s->lim.max_buffered_bytes - atomic_load_explicit(&s->sh->buffered, RELAXED);
    for (brix_http_conn_t *c = s->phead, *n; c && room > 0; c = n) {
        n = c->pnext; /* oldest pause first: nobody waits behind newer arrivals */
        /* a waiting body is admitted only when its whole length fits (each
         * admission counts at once, so later ones see the room it took) */
        if (c->await_admit && over_budget(s, (int64_t)c->rp.p.content_length) &&
            atomic_load_explicit(&s->sh->buffered, RELAXED) > (int64_t)c->counted)
            continue;
        room -= c->await_admit ? (int64_t)c->rp.p.content_length : READ_BUF_SIZE;
        budget_unpause(c);
    }
    if (!s->npaused)
        uv_timer_stop(t);
}

static void budget_pause(brix_http_conn_t *c)
{
    brix_http_server_t *s = c->srv;
    if (c->budget_paused)
        return;
    c->budget_paused = true;
    BUMP(s->sh, pauses);
    c->pnext = NULL;
    c->pprev = s->ptail;
    if (s->ptail)
        s->ptail->pnext = c;
    else
        s->phead = c;
    s->ptail = c;
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    if (s->npaused++ == 0)
        uv_timer_start(&s->budget_timer, on_budget_timer, BUDGET_POLL_MS, BUDGET_POLL_MS);
}

static void budget_unpause(brix_http_conn_t *c)
{
    if (!c->budget_paused)
        return;
    brix_http_server_t *s = c->srv;
    c->budget_paused = false;
    s->npaused--;
    if (c->pprev)
        c->pprev->pnext = c->pnext;
    else
        s->phead = c->pnext;
    if (c->pnext)
        c->pnext->pprev = c->pprev;
    else
        s->ptail = c->pprev;
    c->pprev = c->pnext = NULL;
    bool admitted = c->await_admit;
    if (admitted) {
        c->await_admit = false;
        if (c->state == CONN_READING) {
            c->reserved = c->req.body.len + c->rp.p.content_length;
            conn_acct(c);
        }
    }
    if (!c->reading && c->state != CONN_CLOSING &&
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = true;
    if (admitted && c->state == CONN_READING)
        conn_process(c); /* body bytes that came with the head */
}

/* ---------------------------------------------------------------- timer -- */

static void on_timer(uv_timer_t *t)
{
    brix_http_conn_t *c = t->data;
    /* A response still being written is not idle and not yet delivered:
     * closing now would cut a slow but live reader short. The write timer
     * drops the connection if that output stops moving. */
    if ((c->state == CONN_IDLE || c->state == CONN_LINGERING) && c->wq_reqs &&
        c->srv->lim.write_timeout_ms) {
        arm_timer(c, c->state == CONN_IDLE ? c->srv->lim.idle_timeout_ms : LINGER_MS);
        return;
    }
    switch (c->state) {
    case CONN_IDLE:
        BUMP(c->srv->sh, idle_to);
        conn_close(c);
        break;
    case CONN_LINGERING:
        conn_close(c);
        break;
    case CONN_READING: {
        /* Answer 408 to a request that started and stalled. */
        if (c->body_phase)
            BUMP(c->srv->sh, body_to);
        else
            BUMP(c->srv->sh, header_to);
        static const char msg[] = "request timed out before it was received completely";
        brix_buf_t body = BRIX_BUF_INIT;
        if (error_body(&body, 408, NULL, NULL, NULL, msg) == 0) {
            c->srv->st.parse_errors++;
            brix_buf_reset(&c->head);
            brix_buf_printf(&c->head,
                            "HTTP/1.1 408 Request Timeout\r\ndate: %s\r\ncontent-type: "
                            "application/json\r\ncontent-length: %zu\r\nconnection: close\r\n\r\n",
                            http_date(), body.len);
            uv_buf_t bufs[2] = { uv_buf_init(c->head.data, (unsigned)c->head.len),
                                 uv_buf_init(body.data, (unsigned)body.len) };
            int w = uv_try_write((uv_stream_t *)&c->tcp, bufs, 2);
            (void)w; /* best effort: the client is stalled anyway */
        }
        brix_buf_free(&body);
        conn_close(c);
        break;
    }
    default:
        break;
    }
}

static void arm_timer(brix_http_conn_t *c, uint64_t ms)
{
    if (ms)
        uv_timer_start(&c->timer, on_timer, ms, 0);
    else
        uv_timer_stop(&c->timer);
}

/* ---------------------------------------------------------------- write -- */

static uint64_t bytes_written(brix_http_conn_t *c)
{
    return c->wq_added - uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
}

/* Output is queued and the peer accepted none of it for write_timeout_ms: it
 * stopped reading (or its window is shut). Any accepted byte renews the
 * deadline, so a slow but live reader is never cut. The reset aborts the
 * request, which cancels its upstream work and frees its slots. */
static void on_write_timer(uv_timer_t *t)
{
    brix_http_conn_t *c = t->data;
    if (c->state == CONN_CLOSING || !c->wq_reqs)
        return;
    uint64_t w = bytes_written(c);
    if (w > c->w_mark) {
        c->w_mark = w;
        uv_timer_start(&c->wtimer, on_write_timer, c->srv->lim.write_timeout_ms, 0);
        return;
    }
    BUMP(c->srv->sh, write_to);
    BRIX_INFO("dropping a client that read nothing for %llu ms (%zu bytes unsent)",
              (unsigned long long)c->srv->lim.write_timeout_ms, c->wq_bytes);
    conn_close_ex(c, true);
}

static void on_write(uv_write_t *w, int status)
{
    write_req_t *wr = (write_req_t *)w;
    brix_http_conn_t *c = wr->conn;
    c->wq_reqs--;
    c->wq_bytes -= wr->len;
    brix_free(wr);
    conn_acct(c);
    if (!c->wq_reqs)
        uv_timer_stop(&c->wtimer);
    if (status < 0 && status != UV_ECANCELED) {
        conn_close(c);
        return;
    }
    if (!c->wq_reqs && c->state == CONN_HANDLING && c->req.on_drain &&
        c->req.resp_state == BRIX_HTTP_RESP_STREAMING)
        c->req.on_drain(&c->req, c->req.ud);
}

static void pending_remove(brix_http_conn_t *c)
{
    if (!c->head_pending)
        return;
    c->head_pending = false;
    if (c->pend_prev)
        c->pend_prev->pend_next = c->pend_next;
    else
        c->srv->pending_heads = c->pend_next;
    if (c->pend_next)
        c->pend_next->pend_prev = c->pend_prev;
    c->pend_prev = c->pend_next = NULL;
}

static int conn_write(brix_http_conn_t *c, const uv_buf_t *bufs, unsigned n)
{
    if (c->state == CONN_CLOSING)
        return -EPIPE;
    uv_buf_t with_head[8];
    if (c->head_pending) {
        /* one write (and usually one TCP segment) for head and first bytes */
        pending_remove(c);
        with_head[0] = uv_buf_init(c->head.data, (unsigned)c->head.len);
        for (unsigned i = 0; i < n && i < 7; i++)
            with_head[i + 1] = bufs[i];
        bufs = with_head;
        n = n + 1 < 8 ? n + 1 : 8;
    }
    size_t total = 0, off = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (!c->wq_reqs) {
        int r = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
        if (r >= 0) {
            off = (size_t)r;
        } else if (r != UV_EAGAIN && r != UV_ENOSYS) {
            conn_close(c);
            return -EPIPE;
        }
    }
    if (off == total)
        return 0;
    write_req_t *wr = brix_malloc(sizeof *wr + (total - off));
    if (!wr) {
        conn_close(c);
        return -ENOMEM;
    }
    size_t pos = 0, skip = off;
    for (unsigned i = 0; i < n; i++) {
        size_t l = bufs[i].len;
        if (skip >= l) {
            skip -= l;
            continue;
        }
        memcpy(wr->data + pos, bufs[i].base + skip, l - skip);
        pos += l - skip;
        skip = 0;
    }
    wr->conn = c;
    wr->len = pos;
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)pos);
    int r = uv_write(&wr->w, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (r < 0) {
        brix_free(wr);
        conn_close(c);
        return -EPIPE;
    }
    c->wq_bytes += pos;
    c->wq_added += pos;
    if (!c->wq_reqs++ && c->srv->lim.write_timeout_ms) {
        c->w_mark = bytes_written(c);
        uv_timer_start(&c->wtimer, on_write_timer, c->srv->lim.write_timeout_ms, 0);
    }
    conn_acct(c);
    return 0;
}

/* ---------------------------------------------------------------- close -- */

static void conn_free(brix_http_conn_t *c)
{
    brix_http_server_t *s = c->srv;
    brix_http_reqparser_free(&c->rp);
    brix_arena_free(&c->req.arena);
    brix_buf_free(&c->req.body);
    brix_buf_free(&c->req.resp_headers);
    brix_buf_free(&c->in);
    brix_buf_free(&c->head);
    if (c->ip_counted)
        ip_release(s->sh, c->ip);
    brix_free(c);
    s->conns_alive--;
    server_maybe_done(s);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    brix_http_conn_t *c = h->data;
    if (--c->handles_open == 0)
        conn_free(c);
}

static void conn_close(brix_http_conn_t *c)
{
    conn_close_ex(c, false);
}

static void conn_close_ex(brix_http_conn_t *c, bool reset)
{
    if (c->state == CONN_CLOSING)
        return;
    bool aborting = c->state == CONN_HANDLING && c->req.resp_state != BRIX_HTTP_RESP_DONE;
    pending_remove(c);
    quiet_set(c, QUIET_NONE);
    if (c->srv->exempt == c)
        c->srv->exempt = NULL;
    c->state = CONN_CLOSING;
    budget_unpause(c);
    brix_http_server_t *s = c->srv;
    conn_acct(c); /* CLOSING holds nothing new; queued writes end in their callbacks */
    if (aborting) {
        s->st.requests_active--;
        if (c->req.on_abort)
            c->req.on_abort(&c->req, c->req.ud);
        c->req.on_abort = NULL;
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->st.connections_open--;
    atomic_fetch_sub_explicit(&s->sh->conns_open, 1, RELAXED);
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->wtimer, on_conn_handle_closed);
    if (!reset || uv_tcp_close_reset(&c->tcp, on_conn_handle_closed) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_shutdown(uv_shutdown_t *r, int status)
{
    brix_http_conn_t *c = r->data;
    if (status < 0 && c->state != CONN_CLOSING)
        conn_close(c);
}

/* Last response written: half-close and read until EOF (or the linger timer)
 * so the client is not reset before it reads the answer. */
static void conn_linger(brix_http_conn_t *c)
{
    if (c->state == CONN_CLOSING)
        return;
    c->state = CONN_LINGERING;
    quiet_set(c, QUIET_NONE);
    if (c->srv->exempt == c)
        c->srv->exempt = NULL;
    brix_buf_free(&c->in);
    conn_acct(c);
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
    budget_unpause(c); /* lingering input is discarded, not held */
    if (!c->reading) {
        /* Keep reading to see EOF; resumed here after backpressure pauses. */
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
            conn_close(c);
            return;
        }
        c->reading = true;
    }
    arm_timer(c, LINGER_MS);
}

/* An error answered by the server itself (before any handler saw the request). */
static void conn_fail(brix_http_conn_t *c, int status, const char *msg)
{
    brix_buf_t body = BRIX_BUF_INIT;
    c->srv->st.parse_errors++;
    if (error_body(&body, status, NULL, NULL, NULL, msg)) {
        conn_close(c);
        return;
    }
    brix_buf_reset(&c->head);
    brix_buf_printf(&c->head,
                    "HTTP/1.1 %d %s\r\ndate: %s\r\ncontent-type: application/json\r\n"
                    "content-length: %zu\r\nconnection: close\r\n\r\n",
                    status, brix_http_reason(status), http_date(), body.len);
    uv_buf_t bufs[2] = { uv_buf_init(c->head.data, (unsigned)c->head.len),
                         uv_buf_init(body.data, (unsigned)body.len) };
    int rc = conn_write(c, bufs, 2);
    brix_buf_free(&body);
    if (rc == 0)
        conn_linger(c);
}

/* ------------------------------------------------------------ requests -- */

static void req_reset(brix_http_req_t *r)
{
    brix_arena_reset(&r->arena);
    brix_buf_reset(&r->body);
    brix_buf_reset(&r->resp_headers);
    r->headers = NULL;
    r->nheaders = 0;
    r->url = r->path = r->query = NULL;
    r->id[0] = '\0';
    r->ud = NULL;
    r->on_abort = NULL;
    r->on_drain = NULL;
    r->content_length = -1;
    r->resp_state = BRIX_HTTP_RESP_NONE;
    r->status = 0;
    r->chunked = r->close_after = false;
    r->bytes_out = 0;
    r->expect_continue = false;
    if (r->conn)
        r->conn->reserved = 0;
}

static void dispatch(brix_http_conn_t *c)
{
    brix_http_server_t *s = c->srv;
    brix_http_req_t *r = &c->req;
    c->state = CONN_HANDLING;
    quiet_set(c, QUIET_NONE);
    if (s->exempt == c)
        s->exempt = NULL; /* its request is complete */
    uv_timer_stop(&c->timer);
    make_request_id(r);
    r->conn = c;
    r->resp_state = BRIX_HTTP_RESP_NONE;
    r->content_length = -1;
    r->close_after = !r->keep_alive || s->draining;
    s->st.requests_total++;
    s->st.requests_active++;
    s->handler(r, s->ud);
}

/* Called when the response is complete. */
static void finish_response(brix_http_conn_t *c)
{
    brix_http_server_t *s = c->srv;
    brix_http_req_t *r = &c->req;
    r->resp_state = BRIX_HTTP_RESP_DONE;
    s->st.requests_active--;
    r->on_abort = NULL;
    if (r->close_after || s->draining) {
        conn_linger(c);
        return;
    }
    req_reset(r);
    c->state = CONN_IDLE;
    c->body_phase = false;
    c->sent_continue = false;
    brix_http_reqparser_begin(&c->rp, r);
    quiet_set(c, QUIET_IDLE);
    arm_timer(c, s->lim.idle_timeout_ms);
    conn_acct(c);
    /* Reading stopped while pipelined input waited (per-connection cap):
     * that input is parsed now, so read again unless the budget says no. */
    if (!c->reading && !c->budget_paused &&
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = true;
    conn_process(c);
}

/* The head is in and a body of declared length is still to come. If it fits
 * in the budget, its whole length is counted now, so an admitted body never
 * pauses half-way (bodies paused half-way could hold the whole budget and
 * wait for each other). If not, the connection waits unread for room (its
 * body deadline runs) and is admitted when the budget timer resumes it.
 * Returns nonzero when the connection now waits. */
static int admit_body(brix_http_conn_t *c)
{
    brix_http_server_t *s = c->srv;
    uint64_t left = c->rp.p.content_length;
    if ((c->rp.p.flags & F_CHUNKED) || left == ULLONG_MAX || !left)
        return 0;
    if (s->lim.max_buffered_bytes && c != s->exempt && over_budget(s, (int64_t)left) &&
        atomic_load_explicit(&s->sh->buffered, RELAXED) > (int64_t)c->counted) {
        c->await_admit = true;
        budget_pause(c);
        return 1;
    }
    c->reserved = c->req.body.len + left;
    conn_acct(c);
    return 0;
}

static void conn_process(brix_http_conn_t *c)
{
    if (c->processing) {
        c->reprocess = true;
        return;
    }
    c->processing = true;
    brix_http_server_t *s = c->srv;
    do {
        c->reprocess = false;
        while ((c->state == CONN_IDLE || c->state == CONN_READING) && c->in.len &&
               !c->await_admit) {
            if (c->state == CONN_IDLE) {
                /* One deadline for the whole head, from its first byte: bytes
                 * dribbled in later do not renew it (slowloris). */
                c->state = CONN_READING;
                quiet_set(c, QUIET_HEAD);
                c->req.start_ns = brix_now_ns();
                arm_timer(c, s->lim.header_timeout_ms);
            }
            size_t used = 0;
            brix_http_parse_rc_t rc =
                brix_http_reqparser_feed(&c->rp, c->in.data, c->in.len, &used);
            brix_buf_consume(&c->in, used);
            if (rc == BRIX_HTTP_PARSE_ERROR) {
                conn_fail(c, c->rp.err_status, c->rp.err_msg ? c->rp.err_msg : "bad request");
                break;
            }
            if (c->rp.headers_done && !c->body_phase) {
                c->body_phase = true;
                quiet_set(c, QUIET_NONE);
                arm_timer(c, s->lim.body_timeout_ms);
                if (rc == BRIX_HTTP_PARSE_MORE && admit_body(c))
                    break;
                if (c->req.expect_continue && !c->sent_continue && rc == BRIX_HTTP_PARSE_MORE) {
                    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
                    uv_buf_t b = uv_buf_init((char *)cont, sizeof cont - 1);
                    c->sent_continue = true;
                    if (conn_write(c, &b, 1))
                        break;
                }
            }
            if (rc == BRIX_HTTP_PARSE_MORE)
                break;
            dispatch(c); /* may finish synchronously and loop for the next request */
        }
    } while (c->reprocess && c->state != CONN_CLOSING);
    c->processing = false;
}

/* ----------------------------------------------------------------- read -- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    brix_http_conn_t *c = h->data;
    buf->base = c->srv->rbuf;
    buf->len = sizeof c->srv->rbuf;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    brix_http_conn_t *c = st->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (c->state == CONN_LINGERING || c->state == CONN_CLOSING)
        return;
    if (brix_buf_append(&c->in, buf->base, (size_t)nread)) {
        conn_close(c);
        return;
    }
    if (c->state == CONN_HANDLING) {
        /* Pipelined bytes wait for the current response; bound them. */
        uint64_t cap = c->srv->lim.max_header_bytes + c->srv->lim.max_body_bytes;
        if (c->in.len > cap) {
            uv_read_stop(st);
            c->reading = false;
        }
        conn_acct(c);
        if (over_budget(c->srv, 0))
            budget_pause(c);
        return;
    }
    conn_process(c);
    if (c->state == CONN_CLOSING || c->state == CONN_LINGERING)
        return;
    conn_acct(c);
    /* Over the budget, a connection holding unfinished input (a head, a
     * chunked body, pipelined bytes) waits; an admitted declared-length body
     * is already counted in full, so reading it adds nothing. */
    bool adds = c->state == CONN_HANDLING  ? c->in.len > 0
                : c->state == CONN_READING ? !c->reserved
                                           : c->in.len > 0;
    if (adds && c != c->srv->exempt && over_budget(c->srv, 0))
        budget_pause(c);
}

/* The connection to close when the listener is full: the oldest idle one
 * whose last response has been fully written (a few are looked at, so a full
 * listener costs O(1) per accept), else the oldest still sending its head. */
static brix_http_conn_t *pick_victim(brix_http_server_t *s)
{
    int n = 0;
    for (brix_http_conn_t *c = s->qhead[QUIET_IDLE]; c && n < 16; c = c->qnext, n++)
        if (!c->wq_reqs)
            return c;
    return s->qhead[QUIET_HEAD];
}

static void on_connection(uv_stream_t *ls, int status)
{
    brix_http_server_t *s = ls->data;
    if (status < 0) {
        BRIX_WARN("accept failed: %s", uv_strerror(status));
        return;
    }
    brix_http_conn_t *c = brix_calloc(1, sizeof *c);
    if (!c)
        return;
    c->srv = s;
    s->conns_alive++;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    uv_timer_init(s->loop, &c->wtimer);
    c->tcp.data = c->timer.data = c->wtimer.data = c;
    c->handles_open = 3;
    brix_arena_init(&c->req.arena, 2048);
    brix_http_reqparser_init(&c->rp, &s->lim);
    brix_http_reqparser_begin(&c->rp, &c->req);
    c->state = CONN_IDLE;
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->st.connections_open++;
    s->st.connections_total++;
    atomic_fetch_add_explicit(&s->sh->conns_open, 1, RELAXED);
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    if (s->lim.max_conns_per_ip > 0) {
        /* Refused without an answer: a flood from one address costs an
         * accept and a close, never a timer or a buffer. */
        peer_ip(c);
        if (!ip_acquire(s->sh, c->ip, s->lim.max_conns_per_ip)) {
            BUMP(s->sh, refused_ip);
            conn_close(c);
            return;
        }
        c->ip_counted = true;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        conn_close(c);
        return;
    }
    c->reading = true;
    if (s->st.connections_open > (uint64_t)s->lim.max_connections) {
        /* Full: make room by closing the oldest idle keep-alive connection
         * (clients reopen those as a matter of course), else the oldest one
         * still sending its head, rather than turn a new client away. */
        brix_http_conn_t *victim = pick_victim(s);
        if (!victim) {
            BUMP(s->sh, refused_full);
            conn_fail(c, 503, "too many connections");
            return;
        }
        BUMP(s->sh, evicted);
        conn_close(victim);
    }
    quiet_set(c, QUIET_IDLE);
    arm_timer(c, s->lim.idle_timeout_ms);
}

/* --------------------------------------------------------------- server -- */

brix_http_server_t *brix_http_server_new(uv_loop_t *loop, const brix_http_limits_t *lim,
                                         brix_http_handler_fn handler, void *ud)
{
    brix_http_server_t *s = brix_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->loop = loop;
    s->lim = *lim;
    s->handler = handler;
    s->ud = ud;
    if (!(s->sh = brix_http_shared_new())) {
        brix_free(s);
        return NULL;
    }
    s->own_sh = true;
    uv_check_init(loop, &s->flush_check);
    s->flush_check.data = s;
    uv_timer_init(loop, &s->budget_timer);
    s->budget_timer.data = s;
    s->handles_open = 2;
    return s;
}

int brix_http_server_listen(brix_http_server_t *s, const char *host, int port, bool reuseport,
                            int *bound)
{
    struct sockaddr_storage ss;
    int af = AF_INET;
    if (!strcmp(host, "localhost"))
        host = "127.0.0.1";
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0) {
        if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
            return UV_EINVAL;
        af = AF_INET6;
    }
    int rc = uv_tcp_init_ex(s->loop, &s->listener, (unsigned)af);
    if (rc)
        return rc;
    s->listener.data = s;
    s->listener_open = true;
    if (reuseport) {
        uv_os_fd_t fd;
        int one = 1;
        if ((rc = uv_fileno((uv_handle_t *)&s->listener, &fd)) ||
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
            return rc ? rc : -errno;
    }
    if ((rc = uv_tcp_bind(&s->listener, (struct sockaddr *)&ss, 0)))
        return rc;
    /* a deep backlog (the kernel caps it at somaxconn): a burst of connects
     * waits in the queue instead of being dropped into SYN retries */
    if ((rc = uv_listen((uv_stream_t *)&s->listener, 4096, on_connection)))
        return rc;
    s->listening = true;
    if (bound) {
        struct sockaddr_storage a;
        int alen = sizeof a;
        uv_tcp_getsockname(&s->listener, (struct sockaddr *)&a, &alen);
        *bound = af == AF_INET ? ntohs(((struct sockaddr_in *)&a)->sin_port)
                               : ntohs(((struct sockaddr_in6 *)&a)->sin6_port);
    }
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    brix_http_server_t *s = h->data;
    s->listener_open = false;
    server_maybe_done(s);
}

static void close_listener(brix_http_server_t *s)
{
    if (s->listener_open && !uv_is_closing((uv_handle_t *)&s->listener)) {
        s->listening = false;
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    }
}

void brix_http_server_drain(brix_http_server_t *s)
{
    s->draining = true;
    close_listener(s);
    brix_http_conn_t *c = s->conns, *next;
    for (; c; c = next) {
        next = c->next;
        if (c->state == CONN_IDLE)
            conn_close(c);
        else if (c->state == CONN_HANDLING || c->state == CONN_READING)
            c->req.close_after = true;
    }
}

static void server_maybe_done(brix_http_server_t *s)
{
    if (s->closing && !s->conns_alive && !s->listener_open && !s->handles_open) {
        void (*cb)(void *) = s->done_cb;
        void *arg = s->done_arg;
        if (s->own_sh)
            brix_http_shared_free(s->sh);
        brix_free(s);
        if (cb)
            cb(arg);
    }
}

static void on_check_closed(uv_handle_t *h)
{
    brix_http_server_t *s = h->data;
    s->handles_open--;
    server_maybe_done(s);
}

void brix_http_server_close(brix_http_server_t *s, void (*done_cb)(void *), void *arg)
{
    s->closing = true;
    if (!uv_is_closing((uv_handle_t *)&s->flush_check)) {
        uv_close((uv_handle_t *)&s->flush_check, on_check_closed);
        uv_close((uv_handle_t *)&s->budget_timer, on_check_closed);
    }
    s->draining = true;
    s->done_cb = done_cb;
    s->done_arg = arg;
    close_listener(s);
    brix_http_conn_t *c = s->conns, *next;
    for (; c; c = next) {
        next = c->next;
        conn_close(c);
    }
    /* Handles close asynchronously; the last close callback frees s. When
     * nothing was open, finish now. */
    server_maybe_done(s);
}

void brix_http_server_stats(const brix_http_server_t *s, brix_http_server_stats_t *out)
{
    *out = s->st;
}

void brix_http_server_set_shared(brix_http_server_t *s, brix_http_shared_t *sh)
{
    if (!sh || sh == s->sh)
        return;
    if (s->own_sh)
        brix_http_shared_free(s->sh);
    s->sh = sh;
    s->own_sh = false;
}

brix_http_shared_t *brix_http_server_shared(brix_http_server_t *s)
{
    return s->sh;
}

/* ------------------------------------------------------------ responses -- */

int brix_http_add_header(brix_http_req_t *req, const char *name, const char *value)
{
    if (req->resp_state != BRIX_HTTP_RESP_NONE)
        return -EINVAL;
    /* Refuse header injection: no CR/LF in names or values. */
    if (strpbrk(name, "\r\n:") || strpbrk(value, "\r\n"))
        return -EINVAL;
    return brix_buf_printf(&req->resp_headers, "%s: %s\r\n", name, value);
}

/* Appends a string literal without strlen or a hand-counted length. */
#define BUF_LIT(b, s) brix_buf_append((b), (s), sizeof(s) - 1)

static void on_flush_check(uv_check_t *h)
{
    brix_http_server_t *s = h->data;
    while (s->pending_heads)
        conn_write(s->pending_heads, NULL, 0); /* sends the head alone, unlinks it */
    uv_check_stop(h);
    s->flush_active = false;
}

/* Builds the response head in c->head. Appends rather than printf: this runs
 * once per response on the hot path. A streamed response (nbody < 0) does
 * not send its head now: it goes out with the first body bytes, or at the
 * end of this loop iteration, whichever comes first. */
static int write_head(brix_http_req_t *req, int status, const char *ctype, long long clen,
                      const uv_buf_t *body, int nbody)
{
    brix_http_conn_t *c = req->conn;
    if (c->srv->draining)
        req->close_after = true;
    brix_buf_t *h = &c->head;
    brix_buf_reset(h);
    int rc = BUF_LIT(h, "HTTP/1.1 ");
    rc |= brix_buf_append_u64(h, (uint64_t)status);
    rc |= brix_buf_append_char(h, ' ');
    rc |= brix_buf_append_str(h, brix_http_reason(status));
    rc |= BUF_LIT(h, "\r\ndate: ");
    rc |= brix_buf_append_str(h, http_date());
    if (ctype) {
        rc |= BUF_LIT(h, "\r\ncontent-type: ");
        rc |= brix_buf_append_str(h, ctype);
    }
    if (clen >= 0) {
        rc |= BUF_LIT(h, "\r\ncontent-length: ");
        rc |= brix_buf_append_u64(h, (uint64_t)clen);
    } else if (req->chunked) {
        rc |= brix_buf_append_str(h, "\r\ntransfer-encoding: chunked");
    }
    rc |= BUF_LIT(h, "\r\nx-request-id: ");
    rc |= brix_buf_append_str(h, req->id);
    rc |= BUF_LIT(h, "\r\n");
    if (req->resp_headers.len)
        rc |= brix_buf_append(h, req->resp_headers.data, req->resp_headers.len);
    if (req->close_after)
        rc |= brix_buf_append_str(h, "connection: close\r\n");
    else if (req->http_major == 1 && req->http_minor == 0)
        rc |= brix_buf_append_str(h, "connection: keep-alive\r\n");
    rc |= BUF_LIT(h, "\r\n");
    if (rc)
        return -ENOMEM;
    req->status = status;
    if (nbody < 0) {
        brix_http_server_t *s = c->srv;
        c->head_pending = true;
        c->pend_prev = NULL;
        c->pend_next = s->pending_heads;
        if (s->pending_heads)
            s->pending_heads->pend_prev = c;
        s->pending_heads = c;
        if (!s->flush_active) {
            s->flush_active = true;
            uv_check_start(&s->flush_check, on_flush_check);
        }
        return 0;
    }
    uv_buf_t bufs[4];
    unsigned n = 0;
    bufs[n++] = uv_buf_init(h->data, (unsigned)h->len);
    bool head_only = req->method == HTTP_HEAD;
    for (int i = 0; i < nbody && !head_only && n < 4; i++)
        bufs[n++] = body[i];
    return conn_write(c, bufs, n);
}

int brix_http_respond(brix_http_req_t *req, int status, const char *content_type, const char *body,
                      size_t len)
{
    if (req->resp_state != BRIX_HTTP_RESP_NONE)
        return -EINVAL;
    brix_http_conn_t *c = req->conn;
    uv_buf_t b = uv_buf_init((char *)(body ? body : ""), (unsigned)len);
    /* Marked done first: a write failure closes the connection, and a request
     * that has its whole answer is not "aborted". */
    req->resp_state = BRIX_HTTP_RESP_DONE;
    int rc = write_head(req, status, content_type, (long long)len, &b, len ? 1 : 0);
    req->bytes_out += len;
    if (c->state == CONN_CLOSING) {
        c->srv->st.requests_active--;
        return rc ? rc : -EPIPE;
    }
    finish_response(c);
    return rc;
}

int brix_http_respond_error(brix_http_req_t *req, int status, const char *type, const char *code,
                            const char *param, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    brix_buf_t body = BRIX_BUF_INIT;
    int rc = error_body(&body, status, type, code, param, msg);
    if (rc == 0)
        rc = brix_http_respond(req, status, "application/json", body.data, body.len);
    brix_buf_free(&body);
    return rc;
}

int brix_http_stream_start(brix_http_req_t *req, int status, const char *content_type)
{
    if (req->resp_state != BRIX_HTTP_RESP_NONE)
        return -EINVAL;
    if (req->http_major == 1 && req->http_minor == 0)
        req->close_after = true; /* no chunked encoding in 1.0: end = close */
    else
        req->chunked = true;
    req->content_length = -1;
    req->resp_state = BRIX_HTTP_RESP_STREAMING;
    return write_head(req, status, content_type, -1, NULL, -1);
}

int brix_http_stream_start_len(brix_http_req_t *req, int status, const char *content_type,
                               uint64_t length)
{
    if (req->resp_state != BRIX_HTTP_RESP_NONE)
        return -EINVAL;
    req->resp_state = BRIX_HTTP_RESP_STREAMING;
    req->content_length = (int64_t)length;
    return write_head(req, status, content_type, (long long)length, NULL, -1);
}

int brix_http_stream_write(brix_http_req_t *req, const void *data, size_t len)
{
    if (req->resp_state != BRIX_HTTP_RESP_STREAMING)
        return -EINVAL;
    if (!len || req->method == HTTP_HEAD)
        return 0;
    req->bytes_out += len;
    if (req->content_length >= 0) {
        if ((uint64_t)req->content_length < len) {
            brix_http_abort(req); /* more than announced: the response is broken */
            return -EPIPE;
        }
        req->content_length -= (int64_t)len;
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        return conn_write(req->conn, &b, 1);
    }
    if (!req->chunked) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        return conn_write(req->conn, &b, 1);
    }
    char sz[24];
    int n = snprintf(sz, sizeof sz, "%zx\r\n", len);
    uv_buf_t b[3] = { uv_buf_init(sz, (unsigned)n), uv_buf_init((char *)data, (unsigned)len),
                      uv_buf_init("\r\n", 2) };
    return conn_write(req->conn, b, 3);
}

int brix_http_stream_end(brix_http_req_t *req)
{
    if (req->resp_state != BRIX_HTTP_RESP_STREAMING)
        return -EINVAL;
    brix_http_conn_t *c = req->conn;
    int rc = 0;
    if (req->content_length > 0 && req->method != HTTP_HEAD) {
        brix_http_abort(req); /* fewer bytes than announced */
        return -EPIPE;
    }
    req->resp_state = BRIX_HTTP_RESP_DONE;
    if (req->chunked && req->method != HTTP_HEAD) {
        uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
        rc = conn_write(c, &b, 1);
    } else if (c->head_pending) {
        rc = conn_write(c, NULL, 0);
    }
    if (c->state == CONN_CLOSING) {
        c->srv->st.requests_active--;
        return rc ? rc : -EPIPE;
    }
    finish_response(c);
    return rc;
}

int brix_http_sse_start(brix_http_req_t *req, int status)
{
    if (req->resp_state == BRIX_HTTP_RESP_NONE)
        brix_http_add_header(req, "cache-control", "no-cache");
    return brix_http_stream_start(req, status, "text/event-stream; charset=utf-8");
}

int brix_http_sse_data(brix_http_req_t *req, const char *data, size_t len)
{
    if (req->resp_state != BRIX_HTTP_RESP_STREAMING)
        return -EINVAL;
    size_t total = 6 + len + 2;
    req->bytes_out += total;
    if (!req->chunked) {
        uv_buf_t b[3] = { uv_buf_init("data: ", 6), uv_buf_init((char *)data, (unsigned)len),
                          uv_buf_init("\n\n", 2) };
        return conn_write(req->conn, b, 3);
    }
    char sz[24];
    int n = snprintf(sz, sizeof sz, "%zx\r\ndata: ", total);
    uv_buf_t b[3] = { uv_buf_init(sz, (unsigned)n), uv_buf_init((char *)data, (unsigned)len),
                      uv_buf_init("\n\n\r\n", 4) };
    return conn_write(req->conn, b, 3);
}

void brix_http_abort(brix_http_req_t *req)
{
    conn_close_ex(req->conn, true);
}

size_t brix_http_write_queue_bytes(const brix_http_req_t *req)
{
    return req->conn ? req->conn->wq_bytes : 0;
}

bool brix_http_write_backlogged(const brix_http_req_t *req, size_t limit)
{
    const brix_http_conn_t *c = req->conn;
    if (!c || !c->wq_bytes)
        return false;
    return c->wq_bytes > limit || over_budget(c->srv, 0);
}
