/*
 * HTTP/1.1 server connections: an explicit state machine per connection
 * (see brix_http_conn_state), writes that try the socket first and queue only
 * the remainder, and deferred frees in libuv close callbacks.
 */
#include "core/http_server.h"

#include "core/log.h"
#include "core/time.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BUF_SIZE 65536
#define LINGER_MS     2000

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
    int handles_open;        /* the flush check handle */
    brix_http_server_stats_t st;
    uv_check_t flush_check; /* end of loop tick: send heads still pending */
    bool flush_active;
    brix_http_conn_t *pending_heads; /* connections with head_pending */
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

/* ---------------------------------------------------------------- timer -- */

static void on_timer(uv_timer_t *t)
{
    brix_http_conn_t *c = t->data;
    switch (c->state) {
    case CONN_IDLE:
    case CONN_LINGERING:
        conn_close(c);
        break;
    case CONN_READING: {
        /* Answer 408 to a request that started and stalled. */
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

static void on_write(uv_write_t *w, int status)
{
    write_req_t *wr = (write_req_t *)w;
    brix_http_conn_t *c = wr->conn;
    c->wq_reqs--;
    c->wq_bytes -= wr->len;
    brix_free(wr);
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
    c->wq_reqs++;
    c->wq_bytes += pos;
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

static void conn_close_ex(brix_http_conn_t *c, bool reset);

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
    c->state = CONN_CLOSING;
    brix_http_server_t *s = c->srv;
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
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
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
    brix_buf_free(&c->in);
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) < 0) {
        conn_close(c);
        return;
    }
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
}

static void dispatch(brix_http_conn_t *c)
{
    brix_http_server_t *s = c->srv;
    brix_http_req_t *r = &c->req;
    c->state = CONN_HANDLING;
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
    arm_timer(c, s->lim.idle_timeout_ms);
    conn_process(c);
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
        while ((c->state == CONN_IDLE || c->state == CONN_READING) && c->in.len) {
            if (c->state == CONN_IDLE) {
                c->state = CONN_READING;
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
                arm_timer(c, s->lim.body_timeout_ms);
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
        return;
    }
    conn_process(c);
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
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
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
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
        conn_close(c);
        return;
    }
    c->reading = true;
    if (s->st.connections_open > (uint64_t)s->lim.max_connections) {
        conn_fail(c, 503, "too many connections");
        return;
    }
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
    uv_check_init(loop, &s->flush_check);
    s->flush_check.data = s;
    s->handles_open = 1;
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
    if ((rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection)))
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
        brix_free(s);
        if (cb)
            cb(arg);
    }
}

static void on_check_closed(uv_handle_t *h)
{
    brix_http_server_t *s = h->data;
    s->handles_open = 0;
    server_maybe_done(s);
}

void brix_http_server_close(brix_http_server_t *s, void (*done_cb)(void *), void *arg)
{
    s->closing = true;
    if (!uv_is_closing((uv_handle_t *)&s->flush_check))
        uv_close((uv_handle_t *)&s->flush_check, on_check_closed);
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
