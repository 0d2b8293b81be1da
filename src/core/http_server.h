/*
 * http_server — HTTP/1.1 server on a libuv loop.
 *
 * One brix_http_server_t per loop. Connections are keep-alive and
 * pipelining-safe: requests on one connection are answered strictly in order,
 * one at a time; bytes of later requests are buffered (bounded) and parsed only
 * when the current response is done, while reading continues so a client
 * disconnect is noticed at once and reported through req->on_abort.
 *
 * Limits (brix_http_limits_t) give 431 / 413 / 408 / 400 / 503 with an
 * OpenAI-style JSON error body, then close the connection (lingering briefly so
 * the client reads the answer).
 *
 * The handler is called once per request on the loop thread and answers with
 * brix_http_respond*() at once or later, or streams with
 * brix_http_stream_*() / brix_http_sse_*(). Ownership: the request belongs to
 * the connection; it stays valid until the response is done or on_abort has
 * returned. If a write fails, the connection is closed and on_abort runs before
 * the failing call returns (which then returns a negative errno).
 *
 * Slow peers: the head has one deadline from its first byte (not renewed by
 * each byte), the body one from the end of the head; a connection whose
 * pending output gains no accepted byte for write_timeout_ms is reset (the
 * request aborted). State that must span every server of a process — the
 * per-IP connection counts, the buffered-bytes budget and the counters of
 * these conditions — lives in a brix_http_shared_t, given to each server with
 * brix_http_server_set_shared() (a server without one uses a private one).
 */
#ifndef BRIX_CORE_HTTP_SERVER_H
#define BRIX_CORE_HTTP_SERVER_H

#include <uv.h>

#include "core/http.h"

typedef struct brix_http_server brix_http_server_t;
typedef void (*brix_http_handler_fn)(brix_http_req_t *req, void *ud);

typedef struct brix_http_server_stats {
    uint64_t connections_total;
    uint64_t connections_open;
    uint64_t requests_total;
    uint64_t requests_active;
    uint64_t parse_errors; /* 400/413/431/408 answered by the server itself */
} brix_http_server_stats_t;

/* Process-wide counters of the slow-peer and limit conditions. */
typedef struct brix_http_guard_stats {
    uint64_t conns_open;
    uint64_t buffered_bytes; /* now: input + bodies + unsent output */
    uint64_t header_timeouts, body_timeouts, idle_timeouts, write_timeouts;
    uint64_t refused_per_ip; /* closed at accept by --max-conns-per-ip */
    uint64_t refused_full;   /* 503 at accept: full and nothing idle to close */
    uint64_t evicted;        /* idle or head-dribbling connections closed to admit new ones */
    uint64_t budget_pauses;  /* connections whose reading paused over the budget */
} brix_http_guard_stats_t;

typedef struct brix_http_shared brix_http_shared_t;
brix_http_shared_t *brix_http_shared_new(void);
/* Only after every server using it is closed. */
void brix_http_shared_free(brix_http_shared_t *sh);
void brix_http_shared_stats(const brix_http_shared_t *sh, brix_http_guard_stats_t *out);

brix_http_server_t *brix_http_server_new(uv_loop_t *loop, const brix_http_limits_t *lim,
                                         brix_http_handler_fn handler, void *ud);
/*
 * Binds host:port (port 0 = any free port; the bound port is returned in
 * *bound). With reuseport, SO_REUSEPORT is set so several loops can listen on
 * one port and the kernel spreads connections among them.
 */
int brix_http_server_listen(brix_http_server_t *s, const char *host, int port, bool reuseport,
                            int *bound);
/* Stops accepting, closes idle keep-alive connections, and makes every
 * in-flight response the last on its connection. */
void brix_http_server_drain(brix_http_server_t *s);
/* Closes every connection (aborting in-flight requests) and the listener;
 * the server is freed once all handles are closed, then done_cb runs. */
void brix_http_server_close(brix_http_server_t *s, void (*done_cb)(void *), void *arg);
void brix_http_server_stats(const brix_http_server_t *s, brix_http_server_stats_t *out);
/* Shares per-IP counts, the buffered-bytes budget and counters with other
 * servers of the process. Call before listen; sh must outlive s. */
void brix_http_server_set_shared(brix_http_server_t *s, brix_http_shared_t *sh);
/* The shared state this server uses (its private one by default). */
brix_http_shared_t *brix_http_server_shared(brix_http_server_t *s);

/* ---- responses ---- */

/* Adds a response header (before the head is sent). */
int brix_http_add_header(brix_http_req_t *req, const char *name, const char *value);
/* Sends a complete response. body may be NULL when len is 0. */
int brix_http_respond(brix_http_req_t *req, int status, const char *content_type, const char *body,
                      size_t len);
/* Sends {"error":{"message","type","param","code"}}. code NULL → the status
 * number; param NULL → null. type NULL → derived from the status. */
int brix_http_respond_error(brix_http_req_t *req, int status, const char *type, const char *code,
                            const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Starts a streamed body (chunked on HTTP/1.1, close-delimited on 1.0). */
int brix_http_stream_start(brix_http_req_t *req, int status, const char *content_type);
/* Starts a streamed body of known length (no chunking); stream_end fails and
 * the connection is dropped if fewer bytes were written. */
int brix_http_stream_start_len(brix_http_req_t *req, int status, const char *content_type,
                               uint64_t length);
int brix_http_stream_write(brix_http_req_t *req, const void *data, size_t len);
/* Ends the stream; the request must not be used afterwards. */
int brix_http_stream_end(brix_http_req_t *req);
/* Starts an SSE response (text/event-stream, no-cache). */
int brix_http_sse_start(brix_http_req_t *req, int status);
/* Sends one SSE event "data: <data>\n\n" as one chunk. */
int brix_http_sse_data(brix_http_req_t *req, const char *data, size_t len);
/* Drops the connection at once (TCP reset), as a crashing server would; the
 * request is aborted (on_abort runs before this returns). For fault injection. */
void brix_http_abort(brix_http_req_t *req);
/* Bytes queued in user space for this request's connection (backpressure). */
size_t brix_http_write_queue_bytes(const brix_http_req_t *req);
/* True when a producer should stop feeding this response until on_drain:
 * more than `limit` bytes are queued, or some are and the process is over its
 * buffered-bytes budget. */
bool brix_http_write_backlogged(const brix_http_req_t *req, size_t limit);

/* Default error type for a status: invalid_request_error, authentication_error, ... */
const char *brix_http_error_type(int status);

#endif
