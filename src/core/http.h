/*
 * http — HTTP/1.1 message types and the resumable request parser.
 *
 * The parser wraps http_parser (libhttp-parser) and fills one brix_http_req_t
 * at a time, enforcing the configured header and body limits while the bytes
 * arrive. It keeps no pointers into the caller's input: URL and headers are
 * copied into the request's arena once the header block is complete, so
 * feeding byte-at-a-time gives exactly the same result as all-at-once (a unit
 * test checks this). After a complete message it stops and reports how many
 * bytes it consumed; the rest belongs to the next (pipelined) request.
 */
#ifndef BRIX_CORE_HTTP_H
#define BRIX_CORE_HTTP_H

#include <http_parser.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/alloc.h"
#include "core/buf.h"

typedef struct brix_http_header {
    const char *name; /* NUL-terminated, as received */
    const char *value;
    size_t name_len, value_len;
} brix_http_header_t;

typedef struct brix_http_req brix_http_req_t;
typedef void (*brix_http_abort_fn)(brix_http_req_t *req, void *ud);

typedef enum brix_http_resp_state {
    BRIX_HTTP_RESP_NONE = 0,  /* nothing sent yet; headers may still be added */
    BRIX_HTTP_RESP_STREAMING, /* head sent, body being streamed */
    BRIX_HTTP_RESP_DONE,      /* complete; the request object is about to be reused */
} brix_http_resp_state_t;

struct brix_http_conn;

struct brix_http_req {
    /* Request, valid until the response is done or the request is aborted. */
    enum http_method method;
    const char *method_name;
    char *url;   /* request target as sent */
    char *path;  /* target up to '?' */
    char *query; /* after '?', or "" */
    brix_http_header_t *headers;
    size_t nheaders;
    brix_buf_t body;
    unsigned short http_major, http_minor;
    bool keep_alive;      /* the client allows the connection to be reused */
    bool expect_continue; /* "Expect: 100-continue" was sent */
    char id[65];          /* x-request-id from the client (sanitised) or generated */
    uint64_t start_ns;    /* monotonic time of the request's first byte */
    brix_arena_t arena;   /* per-request memory, freed when the response ends */

    /* Owned by the handler. A handler that answers asynchronously must set
     * on_abort: it is called if the connection dies before the response is
     * done, and the request is invalid once it returns. */
    void *ud;
    brix_http_abort_fn on_abort;
    /* Optional: called when everything written so far has reached the socket
     * (to resume a paused upstream). */
    brix_http_abort_fn on_drain;

    /* Response state (private to http_server.c). */
    brix_http_resp_state_t resp_state;
    int status;
    bool chunked;
    bool close_after;
    int64_t content_length; /* streamed with a known length: bytes still owed, else -1 */
    brix_buf_t resp_headers;
    uint64_t bytes_out;
    struct brix_http_conn *conn;
};

typedef struct brix_http_limits {
    uint64_t max_header_bytes;   /* request line + headers; over → 431 */
    uint64_t max_body_bytes;     /* over → 413 */
    uint64_t header_timeout_ms;  /* first byte to end of headers; over → 408 */
    uint64_t body_timeout_ms;    /* end of headers to end of body; over → 408 */
    uint64_t idle_timeout_ms;    /* keep-alive idle; over → close */
    int64_t max_connections;     /* per listener; over → the oldest idle (or still
                                   sending its head) connection is closed, else 503 */
    uint64_t write_timeout_ms;   /* pending output with no byte accepted for this
                                   long → connection dropped, request aborted; 0 = off */
    int64_t max_conns_per_ip;    /* open connections from one address (process-wide);
                                   over → closed at once; 0 = off */
    uint64_t max_buffered_bytes; /* process-wide budget of bytes held for
                                    connections (input, bodies, pending output);
                                    over → reads pause, bodies wait; 0 = off */
} brix_http_limits_t;

/* Sensible defaults: 64 KiB headers, 32 MiB body, 30 s, 60 s, 75 s, 10000,
 * write 30 s, no per-IP cap, 1 GiB buffered. */
void brix_http_limits_default(brix_http_limits_t *l);

/*
 * The option-table entries (core/config.h) of a brix_http_limits_t member of
 * a component's config struct, so every HTTP server in brix takes the same
 * flags with the same bounds: --max-header-bytes, --max-body-bytes,
 * --header-timeout, --body-timeout, --idle-timeout, --write-timeout,
 * --max-conns-per-ip, --max-buffered-bytes, --max-connections.
 */
#define BRIX_HTTP_LIMIT_OPTIONS(type, member, max_conns_default)                                   \
    { "max-header-bytes", BRIX_OPT_SIZE, offsetof(type, member.max_header_bytes),   "64k", 1024,   \
      16777216,           NULL,          "request line + headers limit (431 above)" },             \
        { "max-body-bytes", BRIX_OPT_SIZE, offsetof(type, member.max_body_bytes), "32m", 1024,     \
          1073741824,       NULL,          "request body limit (413 above)" },                     \
        { "header-timeout",                                                                        \
          BRIX_OPT_DURATION,                                                                       \
          offsetof(type, member.header_timeout_ms),                                                \
          "30s",                                                                                   \
          1,                                                                                       \
          3600000,                                                                                 \
          NULL,                                                                                    \
          "time to receive request headers (408 after)" },                                         \
        { "body-timeout",                                                                          \
          BRIX_OPT_DURATION,                                                                       \
          offsetof(type, member.body_timeout_ms),                                                  \
          "60s",                                                                                   \
          1,                                                                                       \
          3600000,                                                                                 \
          NULL,                                                                                    \
          "time to receive the body after the headers (408 after)" },                              \
        { "idle-timeout",                                                                          \
          BRIX_OPT_DURATION,                                                                       \
          offsetof(type, member.idle_timeout_ms),                                                  \
          "75s",                                                                                   \
          1,                                                                                       \
          3600000,                                                                                 \
          NULL,                                                                                    \
          "keep-alive idle time before a client connection is closed" },                           \
        { "write-timeout",                                                                         \
          BRIX_OPT_DURATION,                                                                       \
          offsetof(type, member.write_timeout_ms),                                                 \
          "30s",                                                                                   \
          0,                                                                                       \
          3600000,                                                                                 \
          NULL,                                                                                    \
          "drop a peer that accepts none of our pending output for this long (0 = off)" },         \
        { "max-conns-per-ip",                                                                      \
          BRIX_OPT_INT,                                                                            \
          offsetof(type, member.max_conns_per_ip),                                                 \
          "0",                                                                                     \
          0,                                                                                       \
          10000000,                                                                                \
          NULL,                                                                                    \
          "open connections from one client address (0 = no cap)" },                               \
        { "max-buffered-bytes",                                                                    \
          BRIX_OPT_SIZE,                                                                           \
          offsetof(type, member.max_buffered_bytes),                                               \
          "1g",                                                                                    \
          0,                                                                                       \
          1099511627776,                                                                           \
          NULL,                                                                                    \
          "bytes held for all connections (input, bodies, unsent output); reading pauses above "   \
          "(0 = off)" },                                                                           \
    {                                                                                              \
        "max-connections", BRIX_OPT_INT, offsetof(type, member.max_connections),                   \
            max_conns_default, 1, 10000000, NULL,                                                  \
            "open connections per worker; at the cap the oldest idle one is closed (503 if none)"  \
    }

typedef enum brix_http_parse_rc {
    BRIX_HTTP_PARSE_MORE = 0, /* all input consumed, message not complete */
    BRIX_HTTP_PARSE_DONE,     /* one complete message; see *consumed */
    BRIX_HTTP_PARSE_ERROR,    /* see err_status and err_msg */
} brix_http_parse_rc_t;

typedef struct brix_http_reqparser {
    http_parser p;
    brix_http_req_t *req;
    const brix_http_limits_t *lim;
    uint64_t header_bytes;
    int last_cb;    /* 0 none, 1 field, 2 value: for split header callbacks */
    brix_buf_t url; /* URL while headers arrive */
    brix_buf_t hdr; /* "name\0value\0" pairs while headers arrive */
    size_t nhdr;
    bool started, headers_done, done;
    char line_tail[16]; /* the last bytes of the request line, for the version check */
    size_t line_len;    /* request-line bytes seen; SIZE_MAX once the line is complete */
    int err_status;     /* 400, 413, 431, 501 when rc == ERROR */
    const char *err_msg;
} brix_http_reqparser_t;

void brix_http_reqparser_init(brix_http_reqparser_t *rp, const brix_http_limits_t *lim);
/* Begins a new message that will be stored into req (whose arena and body
 * buffer must be initialised). */
void brix_http_reqparser_begin(brix_http_reqparser_t *rp, brix_http_req_t *req);
brix_http_parse_rc_t brix_http_reqparser_feed(brix_http_reqparser_t *rp, const char *data,
                                              size_t len, size_t *consumed);
/* True once the first byte of the current message has been seen. */
bool brix_http_reqparser_started(const brix_http_reqparser_t *rp);
void brix_http_reqparser_free(brix_http_reqparser_t *rp);

/* Case-insensitive header lookup; NULL when absent. */
const char *brix_http_req_header(const brix_http_req_t *req, const char *name);
/* The token of `Authorization: Bearer <token>` (scheme case-insensitive,
 * RFC 6750), or NULL when there is no such header. */
const char *brix_http_req_bearer(const brix_http_req_t *req);
/* The canonical reason phrase of a status code ("OK", "Not Found", ...). */
const char *brix_http_reason(int status);

#endif
