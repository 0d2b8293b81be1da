/*
 * http_client — HTTP/1.1 client for the data path: per-upstream keep-alive
 * connection pools on one libuv loop.
 *
 * One brix_upstream_t per (loop, host:port). brix_ureq_start() sends a request
 * on an idle pooled connection or a new one and reports the response as it
 * arrives: the head once, then the de-chunked body piece by piece (no
 * buffering beyond what one read returned), then done or an error. A request
 * that fails on a reused connection before any response byte arrives is
 * retried once on a fresh connection (the server may have closed an idle
 * keep-alive connection just as we used it). Timeouts: connect, first byte
 * (request sent to response head), idle (between response bytes; not while
 * the caller has paused reading), write progress (a peer that stops reading
 * the request).
 *
 * Ownership: the upstream owns its connections; a request is owned by the
 * caller until on_done/on_error (after which it is freed) or until
 * brix_ureq_cancel (after which no callback runs). Everything runs on the
 * upstream's loop thread.
 */
#ifndef BRIX_CORE_HTTP_CLIENT_H
#define BRIX_CORE_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/buf.h"
#include "core/http.h"

typedef enum brix_uerr {
    BRIX_UERR_CONNECT = 1, /* could not connect (refused, unreachable) */
    BRIX_UERR_CONNECT_TIMEOUT,
    BRIX_UERR_FIRST_BYTE_TIMEOUT,
    BRIX_UERR_IDLE_TIMEOUT, /* response stalled between bytes */
    BRIX_UERR_CLOSED,       /* connection closed or reset before the response ended */
    BRIX_UERR_PROTOCOL,     /* unparsable response */
    BRIX_UERR_NOMEM,
    BRIX_UERR_WRITE_TIMEOUT, /* the peer accepted none of the request for write_timeout_ms */
} brix_uerr_t;

const char *brix_uerr_str(brix_uerr_t e);

typedef struct brix_upstream_opts {
    uint64_t connect_timeout_ms;        /* default 5000 */
    uint64_t first_byte_timeout_ms;     /* default 60000 (prefill of a long prompt) */
    uint64_t idle_timeout_ms;           /* default 60000, between body bytes */
    uint64_t keepalive_ms;              /* idle pooled connection lifetime, default 60000 */
    uint32_t max_idle;                  /* pooled idle connections kept, default 64 */
    uint64_t max_response_header_bytes; /* default 64 KiB */
    uint64_t write_timeout_ms;          /* request bytes unsent and none accepted for
                                           this long → WRITE_TIMEOUT; default 30000, 0 = off */
} brix_upstream_opts_t;

void brix_upstream_opts_default(brix_upstream_opts_t *o);

typedef struct brix_upstream brix_upstream_t;
typedef struct brix_ureq brix_ureq_t;

typedef struct brix_ureq_cb {
    /* Response head. headers are valid during the call only. */
    void (*on_head)(brix_ureq_t *r, int status, const brix_http_header_t *h, size_t nh, void *ud);
    /* A piece of the (de-chunked) response body. */
    void (*on_data)(brix_ureq_t *r, const char *data, size_t len, void *ud);
    /* The response is complete; r is freed after this returns. */
    void (*on_done)(brix_ureq_t *r, void *ud);
    /* Failure; got_bytes says whether any response byte had arrived. r is
     * freed after this returns. */
    void (*on_error)(brix_ureq_t *r, brix_uerr_t err, bool got_bytes, void *ud);
} brix_ureq_cb_t;

brix_upstream_t *brix_upstream_new(uv_loop_t *loop, const char *host, int port,
                                   const brix_upstream_opts_t *o);
/* Closes idle connections now and the others as their requests end; frees
 * the upstream when nothing is left. Requests in flight are not cancelled. */
void brix_upstream_release(brix_upstream_t *u);
/* Connections open (busy + idle) and idle. */
void brix_upstream_counts(const brix_upstream_t *u, uint32_t *open, uint32_t *idle);

/*
 * Starts a request. `head_extra` holds complete header lines ("name: v\r\n")
 * to send besides Host and Content-Length (which are added here). The body
 * is copied. Returns NULL on ENOMEM (no callback will run).
 */
brix_ureq_t *brix_ureq_start(brix_upstream_t *u, const char *method, const char *path,
                             const char *head_extra, size_t head_len, const char *body,
                             size_t body_len, const brix_ureq_cb_t *cb, void *ud);
/* Abandons the request: its connection is closed (never reused) and no
 * callback runs afterwards. Safe inside callbacks. */
void brix_ureq_cancel(brix_ureq_t *r);
/* Stops/resumes reading the response (backpressure from a slow client). */
void brix_ureq_pause(brix_ureq_t *r, bool paused);
/* Monotonic ns of the first response byte (0 if none yet). */
uint64_t brix_ureq_first_byte_ns(const brix_ureq_t *r);

#endif
