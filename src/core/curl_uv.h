/*
 * curl_uv — libcurl's multi interface driven by a libuv loop, for the control
 * plane (scraping /metrics, health checks, /v1/models, LoRA load/unload,
 * Kubernetes API, artifact download). Never used on a data-path worker loop.
 *
 * Sockets are watched with uv_poll and curl's timer with a uv_timer, as
 * curl's own multi-uv example does. Each transfer's response body is collected
 * into a brix_buf_t (bounded by max_body) and handed to the completion
 * callback with the HTTP status, or an error string.
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

brix_curl_t *brix_curl_new(uv_loop_t *loop);
/* Starts a request. method "GET"/"POST"/...; body may be NULL. content_type
 * applies when a body is given. Returns 0 or -ENOMEM. The callback always
 * runs exactly once (from the loop), unless brix_curl_close runs first. */
int brix_curl_request(brix_curl_t *c, const char *method, const char *url, const char *body,
                      size_t body_len, const char *content_type, uint64_t timeout_ms,
                      size_t max_body, brix_curl_done_fn done, void *ud);
/* Sends `Authorization: Bearer token` with every later request (NULL: none). */
int brix_curl_set_bearer(brix_curl_t *c, const char *token);
/* Transfers in flight. */
size_t brix_curl_active(const brix_curl_t *c);
/* Aborts every transfer (no callbacks) and frees once handles are closed. */
void brix_curl_close(brix_curl_t *c);

#endif
