/*
 * curl_uv — libcurl's multi interface driven by a libuv loop, for the control
 * plane (scraping /metrics, health checks, /v1/models, LoRA load/unload,
 * Kubernetes API, artifact download). Never used on a data-path worker loop.
 *
 * Sockets are watched with uv_poll and curl's timer with a uv_timer, as
 * curl's own multi-uv example does. Each transfer's response body is collected
 * into a brix_buf_t (bounded by max_body) and handed to the completion
 * callback with the HTTP status, or an error string. A streaming transfer
 * (brix_curl_stream) instead hands its body out as it arrives, for
 * long-lived watches.
 *
 * Callbacks never run inside libcurl's own callbacks: received stream bytes
 * are buffered there and delivered once curl has returned to us, so any
 * callback may start, cancel or close freely.
 */
#ifndef BRIX_CORE_CURL_UV_H
#define BRIX_CORE_CURL_UV_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct brix_curl brix_curl_t;

typedef struct brix_curl_result {
    long status;       /* HTTP status, 0 when the transfer failed */
    const char *error; /* NULL on success, else curl's message */
    const char *body;  /* NUL-terminated */
    size_t body_len;
    double total_s; /* transfer time */
} brix_curl_result_t;

typedef void (*brix_curl_done_fn)(const brix_curl_result_t *res, void *ud);
/* Bytes of a streamed 2xx body, in arrival order (not NUL-terminated; valid
 * during the call). */
typedef void (*brix_curl_data_fn)(const char *data, size_t len, void *ud);
typedef struct brix_curl_xfer brix_curl_xfer_t;

brix_curl_t *brix_curl_new(uv_loop_t *loop);
/* Starts a request. method "GET"/"POST"/...; body may be NULL. content_type
 * applies when a body is given. Returns 0 or -ENOMEM. The callback always
 * runs exactly once (from the loop), unless brix_curl_close runs first. */
int brix_curl_request(brix_curl_t *c, const char *method, const char *url, const char *body,
                      size_t body_len, const char *content_type, uint64_t timeout_ms,
                      size_t max_body, brix_curl_done_fn done, void *ud);
/* Starts a streaming GET: a 2xx body goes to on_data as it arrives (at most
 * max_pending bytes buffered between deliveries; more aborts the transfer
 * with an error). There is no total timeout, only connect_timeout_ms: the
 * caller watches for silence itself. A non-2xx answer is not streamed: its
 * body (bounded by max_pending) comes with done. done runs exactly once when
 * the transfer ends (the server closed the stream: status set, no error;
 * failures: error set), unless it was cancelled or c closed first. Returns
 * the transfer, or NULL on ENOMEM. */
brix_curl_xfer_t *brix_curl_stream(brix_curl_t *c, const char *url, uint64_t connect_timeout_ms,
                                   size_t max_pending, brix_curl_data_fn on_data,
                                   brix_curl_done_fn done, void *ud);
/* Ends a streaming transfer now; none of its callbacks runs afterwards. May
 * be called from any callback (its own on_data included), but not from its
 * own done, after which the transfer is gone. */
void brix_curl_cancel(brix_curl_t *c, brix_curl_xfer_t *x);
/* Sends `Authorization: Bearer token` with every later request (NULL: none). */
int brix_curl_set_bearer(brix_curl_t *c, const char *token);
/* Transfers in flight. */
size_t brix_curl_active(const brix_curl_t *c);
/* Aborts every transfer (no callbacks) and frees once handles are closed. */
void brix_curl_close(brix_curl_t *c);

#endif
