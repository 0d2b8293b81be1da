/*
 * sse — splits a text/event-stream byte stream into whole events, for a
 * relay that must forward events intact (so that a failure can always be
 * reported as a clean SSE error event after the last complete one).
 *
 * Framing follows the WHATWG event-stream grammar: a line ends with CRLF,
 * LF or CR, and an empty line ends an event, so "\n\n", "\r\n\r\n", "\r\r"
 * and any mix end one. The framer is a byte-by-byte state machine that
 * never looks ahead: when a CR ends an event, an LF right after it belongs
 * to that line ending but is delivered as the first byte of the next event
 * (the bytes are relayed in order either way, and byte-at-a-time input
 * gives exactly the events all-at-once input gives).
 *
 * Every byte is scanned once: events that complete inside a chunk are
 * delivered pointing into the chunk (no copy); only the trailing partial
 * event is copied into the framer's buffer, which is capped. An event
 * longer than the cap (its terminator included) is an error, whether it
 * arrives in one chunk or many.
 */
#ifndef BRIX_CORE_SSE_H
#define BRIX_CORE_SSE_H

#include <stddef.h>

#include "core/buf.h"

#define BRIX_SSE_DEFAULT_MAX (1u << 20)

typedef struct brix_sse {
    brix_buf_t part; /* bytes of the current partial event, all scanned */
    size_t max;      /* longest event */
    int state;       /* where the scan stands in the line grammar */
} brix_sse_t;

/* Called with each complete event, in order; the pointer is valid during
 * the call only (it points into the fed chunk, or into the framer's own
 * buffer for an event that began in an earlier chunk). Return non-zero to
 * stop: brix_sse_feed then returns that value at once without touching the
 * framer again, so the callback may free it (its owner may be gone). */
typedef int (*brix_sse_event_fn)(void *ud, const char *ev, size_t n);

/* max: longest event in bytes (0: BRIX_SSE_DEFAULT_MAX). */
void brix_sse_init(brix_sse_t *s, size_t max);
void brix_sse_free(brix_sse_t *s);

/* Feeds a chunk. Returns 0, the callback's non-zero value, -E2BIG when an
 * event is longer than max (nothing after it is delivered), or -ENOMEM. */
int brix_sse_feed(brix_sse_t *s, const char *data, size_t len, brix_sse_event_fn fn, void *ud);

/* The partial event held (bytes after the last complete event). */
static inline size_t brix_sse_pending(const brix_sse_t *s, const char **data)
{
    *data = s->part.data;
    return s->part.len;
}

#endif
