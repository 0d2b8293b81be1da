/*
 * Upstream keep-alive pools. A connection is in exactly one state
 * (brix_uconn_state); idle connections sit on a LIFO list so the most
 * recently used (warmest) is reused first and the others age out. Requests
 * keep their serialized bytes so a stale-connection failure can be retried
 * once on a fresh connection.
 */
#include "core/http_client.h"

#include "core/alloc.h"
#include "core/time.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

typedef enum brix_uconn_state {
    UC_CONNECTING, /* TCP connect in progress; a request is attached */
    UC_BUSY,       /* a request is being written or its response read */
    UC_IDLE,       /* in the pool, reading only to notice the peer closing */
    UC_CLOSING,    /* uv_close issued; freed when both handles are closed */
} brix_uconn_state_t;

typedef struct uconn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_timer_t wtimer; /* write progress, armed while the request is partly unsent */
    uint64_t w_left;   /* unsent bytes when wtimer was last armed */
    bool writing;      /* a uv_write of the request is in flight */
    uv_connect_t creq;
    uv_write_t wreq;
    brix_buf_t wbuf;
    brix_upstream_t *u;
    brix_uconn_state_t state;
    int handles;
    http_parser p;
    brix_ureq_t *req;
    bool reused; /* has completed a request before */
    bool reading;
    bool in_parse;  /* inside http_parser_execute */
    brix_buf_t hdr; /* "name\0value\0" while the head arrives */
    size_t nhdr;
    int last_cb;
    uint64_t hdr_bytes;
    struct uconn *next_idle;
} uconn_t;

struct brix_ureq {
    brix_upstream_t *u;
    uconn_t *c;
    brix_ureq_cb_t cb;
    void *ud;
    brix_buf_t out; /* the serialized request */
    bool got_bytes;
    bool head_done;
    bool retried;
    bool cancelled;
    bool paused;
    uint64_t first_byte_ns;
};

struct brix_upstream {
    uv_loop_t *loop;
    struct sockaddr_storage addr;
    char hostport[80];
    brix_upstream_opts_t o;
    uconn_t *idle;
    uint32_t nopen, nidle;
    bool released;
};

static void conn_close(uconn_t *c);
static void conn_attach(uconn_t *c, brix_ureq_t *r);
static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);

const char *brix_uerr_str(brix_uerr_t e)
{
    switch (e) {
    case BRIX_UERR_CONNECT:
        return "connect failed";
    case BRIX_UERR_CONNECT_TIMEOUT:
        return "connect timed out";
    case BRIX_UERR_FIRST_BYTE_TIMEOUT:
        return "no response before the first-byte timeout";
    case BRIX_UERR_IDLE_TIMEOUT:
        return "response stalled past the idle timeout";
    case BRIX_UERR_CLOSED:
        return "connection closed before the response ended";
    case BRIX_UERR_PROTOCOL:
        return "invalid HTTP response";
    case BRIX_UERR_NOMEM:
        return "out of memory";
    case BRIX_UERR_WRITE_TIMEOUT:
        return "the upstream stopped reading the request";
    }
    return "unknown error";
}

void brix_upstream_opts_default(brix_upstream_opts_t *o)
{
    o->connect_timeout_ms = 5000;
    o->first_byte_timeout_ms = 60000;
    o->idle_timeout_ms = 60000;
    o->keepalive_ms = 60000;
    o->max_idle = 64;
    o->max_response_header_bytes = 64 * 1024;
    o->write_timeout_ms = 30000;
}

brix_upstream_t *brix_upstream_new(uv_loop_t *loop, const char *host, int port,
                                   const brix_upstream_opts_t *o)
{
    brix_upstream_t *u = brix_calloc(1, sizeof *u);
    if (!u)
        return NULL;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&u->addr) &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&u->addr)) {
        brix_free(u);
        return NULL; /* numeric addresses only: DNS never runs on a data-path loop */
    }
    u->loop = loop;
    snprintf(u->hostport, sizeof u->hostport, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    if (o)
        u->o = *o;
    else
        brix_upstream_opts_default(&u->o);
    return u;
}

static void upstream_maybe_free(brix_upstream_t *u)
{
    if (u->released && u->nopen == 0)
        brix_free(u);
}

void brix_upstream_release(brix_upstream_t *u)
{
    u->released = true;
    while (u->idle) {
        uconn_t *c = u->idle;
        u->idle = c->next_idle;
        u->nidle--;
        c->next_idle = NULL;
        conn_close(c);
    }
    upstream_maybe_free(u);
}

void brix_upstream_counts(const brix_upstream_t *u, uint32_t *open, uint32_t *idle)
{
    *open = u->nopen;
    *idle = u->nidle;
}

/* ---------------------------------------------------------- connections -- */

static void idle_remove(uconn_t *c)
{
    brix_upstream_t *u = c->u;
    for (uconn_t **pp = &u->idle; *pp; pp = &(*pp)->next_idle) {
        if (*pp == c) {
            *pp = c->next_idle;
            c->next_idle = NULL;
            u->nidle--;
            return;
        }
    }
}

static void on_conn_closed(uv_handle_t *h)
{
    uconn_t *c = h->data;
    if (--c->handles)
        return;
    brix_upstream_t *u = c->u;
    brix_buf_free(&c->wbuf);
    brix_buf_free(&c->hdr);
    brix_free(c);
    u->nopen--;
    upstream_maybe_free(u);
}

static void conn_close(uconn_t *c)
{
    if (c->state == UC_CLOSING)
        return;
    if (c->state == UC_IDLE)
        idle_remove(c);
    c->state = UC_CLOSING;
    c->req = NULL;
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_conn_closed);
    uv_close((uv_handle_t *)&c->wtimer, on_conn_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_closed);
}

static void req_free(brix_ureq_t *r)
{
    brix_buf_free(&r->out);
    brix_free(r);
}

/* Ends r with an error, or retries once when a reused connection failed
 * before any byte of the response. The connection is closed either way. */
static void req_fail(brix_ureq_t *r, brix_uerr_t err)
{
    uconn_t *c = r->c;
    bool stale = c && c->reused && !r->got_bytes && !r->retried &&
                 (err == BRIX_UERR_CLOSED || err == BRIX_UERR_CONNECT);
    if (c) {
        c->req = NULL;
        r->c = NULL;
        conn_close(c);
    }
    if (stale) {
        r->retried = true;
        uconn_t *n = brix_calloc(1, sizeof *n);
        if (n) {
            conn_attach(n, r);
            return;
        }
        err = BRIX_UERR_NOMEM;
    }
    if (r->cb.on_error)
        r->cb.on_error(r, err, r->got_bytes, r->ud);
    req_free(r);
}

static void on_timer(uv_timer_t *t)
{
    uconn_t *c = t->data;
    switch (c->state) {
    case UC_IDLE:
        conn_close(c);
        break;
    case UC_CONNECTING:
        req_fail(c->req, BRIX_UERR_CONNECT_TIMEOUT);
        break;
    case UC_BUSY:
        req_fail(c->req, c->req->got_bytes ? BRIX_UERR_IDLE_TIMEOUT : BRIX_UERR_FIRST_BYTE_TIMEOUT);
        break;
    default:
        break;
    }
}

/* The request is partly unsent and the peer took none of it since the last
 * check: it stopped reading (a hung engine). Any progress renews the wait. */
static void on_wtimer(uv_timer_t *t)
{
    uconn_t *c = t->data;
    if (c->state != UC_BUSY || !c->writing || !c->req)
        return;
    uint64_t left = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (left < c->w_left) {
        c->w_left = left;
        uv_timer_start(&c->wtimer, on_wtimer, c->u->o.write_timeout_ms, 0);
        return;
    }
    req_fail(c->req, BRIX_UERR_WRITE_TIMEOUT);
}

/* ---- response parsing ---- */

static uconn_t *PC(http_parser *p)
{
    return p->data;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    uconn_t *c = PC(p);
    if ((c->hdr_bytes += len + 4) > c->u->o.max_response_header_bytes)
        return -1;
    if (c->last_cb != 1) {
        if (c->last_cb == 2 && brix_buf_append_char(&c->hdr, '\0'))
            return -1;
        c->nhdr++;
    }
    c->last_cb = 1;
    return brix_buf_append(&c->hdr, at, len) ? -1 : 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    uconn_t *c = PC(p);
    if ((c->hdr_bytes += len) > c->u->o.max_response_header_bytes)
        return -1;
    if (c->last_cb == 1 && brix_buf_append_char(&c->hdr, '\0'))
        return -1;
    c->last_cb = 2;
    return brix_buf_append(&c->hdr, at, len) ? -1 : 0;
}

static int on_headers_complete(http_parser *p)
{
    uconn_t *c = PC(p);
    brix_ureq_t *r = c->req;
    if (c->last_cb == 1 && brix_buf_append_char(&c->hdr, '\0'))
        return -1;
    if (c->last_cb && brix_buf_append_char(&c->hdr, '\0'))
        return -1;
    brix_http_header_t hs[128];
    size_t n = 0;
    const char *s = c->hdr.data;
    for (size_t i = 0; i < c->nhdr && n < 128; i++) {
        hs[n].name = s;
        hs[n].name_len = strlen(s);
        s += hs[n].name_len + 1;
        hs[n].value = s;
        hs[n].value_len = strlen(s);
        s += hs[n].value_len + 1;
        n++;
    }
    r->head_done = true;
    if (r->cb.on_head)
        r->cb.on_head(r, p->status_code, hs, n, r->ud);
    return r->cancelled ? -1 : 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    uconn_t *c = PC(p);
    brix_ureq_t *r = c->req;
    if (r->cb.on_data)
        r->cb.on_data(r, at, len, r->ud);
    return r->cancelled ? -1 : 0;
}

static int on_message_complete(http_parser *p)
{
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings rsettings = {
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* The response ended: pool the connection (or close it) and report done. */
static void req_complete(uconn_t *c)
{
    brix_ureq_t *r = c->req;
    brix_upstream_t *u = c->u;
    /* a response that came before the whole request was sent leaves the
     * connection mid-request: never reuse it */
    bool keep =
        http_should_keep_alive(&c->p) && !u->released && u->nidle < u->o.max_idle && !c->writing;
    c->req = NULL;
    r->c = NULL;
    if (keep) {
        c->state = UC_IDLE;
        c->reused = true;
        c->next_idle = u->idle;
        u->idle = c;
        u->nidle++;
        if (!c->reading) {
            uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
            c->reading = true;
        }
        uv_timer_start(&c->timer, on_timer, u->o.keepalive_ms, 0);
    } else {
        conn_close(c);
    }
    if (r->cb.on_done)
        r->cb.on_done(r, r->ud);
    req_free(r);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    static _Thread_local char buf[65536];
    b->base = buf;
    b->len = sizeof buf;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    uconn_t *c = s->data;
    if (n == 0)
        return;
    if (c->state == UC_IDLE || c->state == UC_CLOSING) {
        /* An idle connection that speaks is closed (EOF, or bytes we never
         * asked for). */
        conn_close(c);
        return;
    }
    brix_ureq_t *r = c->req;
    if (n < 0) {
        if (r->head_done && n == UV_EOF) {
            /* a close-delimited body ends with the connection */
            c->in_parse = true;
            http_parser_execute(&c->p, &rsettings, NULL, 0);
            c->in_parse = false;
            if (r->cancelled) {
                req_free(r);
                return;
            }
            if (HTTP_PARSER_ERRNO(&c->p) == HPE_PAUSED) {
                req_complete(c);
                return;
            }
        }
        req_fail(r, BRIX_UERR_CLOSED);
        return;
    }
    if (!r->got_bytes) {
        r->got_bytes = true;
        r->first_byte_ns = brix_now_ns();
    }
    uv_timer_start(&c->timer, on_timer, c->u->o.idle_timeout_ms, 0);
    c->in_parse = true;
    size_t used = http_parser_execute(&c->p, &rsettings, b->base, (size_t)n);
    c->in_parse = false;
    if (r->cancelled) {
        req_free(r);
        return;
    }
    enum http_errno e = HTTP_PARSER_ERRNO(&c->p);
    if (e == HPE_PAUSED) {
        /* Complete. Bytes beyond the response are a protocol error: the
         * connection cannot be trusted for reuse. */
        if (used < (size_t)n)
            c->p.http_major = 0; /* forces should_keep_alive false */
        req_complete(c);
        return;
    }
    if (e != HPE_OK) {
        req_fail(r, BRIX_UERR_PROTOCOL);
        return;
    }
    (void)used;
}

static void on_written(uv_write_t *w, int status)
{
    uconn_t *c = w->data;
    c->writing = false;
    if (c->state != UC_CLOSING)
        uv_timer_stop(&c->wtimer);
    if (status < 0 && c->state == UC_BUSY && c->req)
        req_fail(c->req, BRIX_UERR_CLOSED);
}

/* The connection is usable: send r. */
static void conn_send(uconn_t *c)
{
    brix_ureq_t *r = c->req;
    c->state = UC_BUSY;
    http_parser_init(&c->p, HTTP_RESPONSE);
    c->p.data = c;
    brix_buf_reset(&c->hdr);
    c->nhdr = 0;
    c->last_cb = 0;
    c->hdr_bytes = 0;
    /* Try the socket first (the usual case: everything fits); only what
     * did not fit is copied into the connection's own buffer for uv_write,
     * since r->out must stay intact for a retry. */
    uv_buf_t b = uv_buf_init(r->out.data, (unsigned)r->out.len);
    int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    size_t done = w > 0 ? (size_t)w : 0;
    if (w < 0 && w != UV_EAGAIN) {
        req_fail(r, BRIX_UERR_CLOSED);
        return;
    }
    if (done < r->out.len) {
        brix_buf_reset(&c->wbuf);
        if (brix_buf_append(&c->wbuf, r->out.data + done, r->out.len - done)) {
            req_fail(r, BRIX_UERR_NOMEM);
            return;
        }
        b = uv_buf_init(c->wbuf.data, (unsigned)c->wbuf.len);
        c->wreq.data = c;
        if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written) < 0) {
            req_fail(r, BRIX_UERR_CLOSED);
            return;
        }
        c->writing = true;
        if (c->u->o.write_timeout_ms) {
            c->w_left = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
            uv_timer_start(&c->wtimer, on_wtimer, c->u->o.write_timeout_ms, 0);
        }
    }
    if (!c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
            req_fail(r, BRIX_UERR_CLOSED);
            return;
        }
        c->reading = true;
    }
    uv_timer_start(&c->timer, on_timer, c->u->o.first_byte_timeout_ms, 0);
}

static void on_connected(uv_connect_t *cr, int status)
{
    uconn_t *c = cr->data;
    if (c->state == UC_CLOSING)
        return;
    if (status < 0) {
        req_fail(c->req, BRIX_UERR_CONNECT);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    conn_send(c);
}

/* Opens a new connection c (zeroed) for r. */
static void conn_attach(uconn_t *c, brix_ureq_t *r)
{
    brix_upstream_t *u = r->u;
    c->u = u;
    c->req = r;
    r->c = c;
    c->state = UC_CONNECTING;
    uv_tcp_init(u->loop, &c->tcp);
    uv_timer_init(u->loop, &c->timer);
    uv_timer_init(u->loop, &c->wtimer);
    c->tcp.data = c->timer.data = c->wtimer.data = c;
    c->handles = 3;
    u->nopen++;
    c->creq.data = c;
    int rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&u->addr, on_connected);
    if (rc < 0) {
        req_fail(r, BRIX_UERR_CONNECT);
        return;
    }
    uv_timer_start(&c->timer, on_timer, u->o.connect_timeout_ms, 0);
}

brix_ureq_t *brix_ureq_start(brix_upstream_t *u, const char *method, const char *path,
                             const char *head_extra, size_t head_len, const char *body,
                             size_t body_len, const brix_ureq_cb_t *cb, void *ud)
{
    brix_ureq_t *r = brix_calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->u = u;
    r->cb = *cb;
    r->ud = ud;
    /* appends, not printf: once per proxied request */
    size_t need = strlen(method) + strlen(path) + strlen(u->hostport) + head_len + body_len + 64;
    int rc = brix_buf_reserve(&r->out, need);
    rc |= brix_buf_append_str(&r->out, method);
    rc |= brix_buf_append_char(&r->out, ' ');
    rc |= brix_buf_append_str(&r->out, path);
    rc |= brix_buf_append_str(&r->out, " HTTP/1.1\r\nhost: ");
    rc |= brix_buf_append_str(&r->out, u->hostport);
    rc |= brix_buf_append_str(&r->out, "\r\ncontent-length: ");
    rc |= brix_buf_append_u64(&r->out, body_len);
    rc |= brix_buf_append(&r->out, "\r\n", 2);
    if (head_len)
        rc |= brix_buf_append(&r->out, head_extra, head_len);
    rc |= brix_buf_append(&r->out, "\r\n", 2);
    if (body_len)
        rc |= brix_buf_append(&r->out, body, body_len);
    if (rc) {
        req_free(r);
        return NULL;
    }
    uconn_t *c = u->idle;
    if (c) {
        u->idle = c->next_idle;
        c->next_idle = NULL;
        u->nidle--;
        uv_timer_stop(&c->timer);
        c->req = r;
        r->c = c;
        conn_send(c);
        return r;
    }
    c = brix_calloc(1, sizeof *c);
    if (!c) {
        req_free(r);
        return NULL;
    }
    conn_attach(c, r);
    return r;
}

void brix_ureq_cancel(brix_ureq_t *r)
{
    if (r->cancelled)
        return;
    r->cancelled = true;
    uconn_t *c = r->c;
    if (c) {
        bool parsing = c->in_parse;
        c->req = NULL;
        r->c = NULL;
        conn_close(c);
        if (parsing)
            return; /* on_read frees r once http_parser returns */
    }
    req_free(r);
}

void brix_ureq_pause(brix_ureq_t *r, bool paused)
{
    uconn_t *c = r->c;
    if (!c || c->state != UC_BUSY || r->paused == paused)
        return;
    r->paused = paused;
    if (paused) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
        uv_timer_stop(&c->timer);
    } else {
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        c->reading = true;
        uv_timer_start(&c->timer, on_timer, c->u->o.idle_timeout_ms, 0);
    }
}

uint64_t brix_ureq_first_byte_ns(const brix_ureq_t *r)
{
    return r->first_byte_ns;
}
