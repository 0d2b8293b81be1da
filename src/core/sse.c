/* SSE event framing; see sse.h. */
#include "core/sse.h"

#include <errno.h>

/* Where the scan stands. */
enum {
    AT_BOL,   /* at the start of a line, nothing on it yet */
    IN_LINE,  /* inside a non-empty line */
    AFTER_CR, /* a CR ended a non-empty line; an LF next completes the CRLF */
    SKIP_LF,  /* a CR ended an event; an LF next completes that CRLF (it is
                 the next event's first byte, not a blank line of its own) */
};

void brix_sse_init(brix_sse_t *s, size_t max)
{
    s->part = (brix_buf_t)BRIX_BUF_INIT;
    s->max = max ? max : BRIX_SSE_DEFAULT_MAX;
    s->state = AT_BOL;
}

void brix_sse_free(brix_sse_t *s)
{
    brix_buf_free(&s->part);
}

/* Advances the state over p[0..n); returns the length up to and including
 * the byte that ends the first event, or 0 when none ends in the span. */
static size_t scan(int *state, const char *p, size_t n)
{
    int st = *state;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c != '\n' && c != '\r') {
            st = IN_LINE;
            continue;
        }
        if (c == '\n') {
            if (st == AT_BOL) {
                *state = AT_BOL; /* LF on an empty line: the event ends */
                return i + 1;
            }
            st = AT_BOL; /* ends a line, or completes a CRLF */
            continue;
        }
        /* CR */
        if (st == IN_LINE) {
            st = AFTER_CR;
            continue;
        }
        *state = SKIP_LF; /* CR on an empty line: the event ends */
        return i + 1;
    }
    *state = st;
    return 0;
}

int brix_sse_feed(brix_sse_t *s, const char *data, size_t len, brix_sse_event_fn fn, void *ud)
{
    size_t i = 0;
    int rc;
    if (s->part.len) {
        /* the held partial event completes with the first end in this chunk */
        size_t e = scan(&s->state, data, len);
        size_t take = e ? e : len;
        if (take > s->max - s->part.len)
            return -E2BIG;
        if (brix_buf_append(&s->part, data, take))
            return -ENOMEM;
        if (!e)
            return 0;
        if ((rc = fn(ud, s->part.data, s->part.len)))
            return rc; /* s may be gone with its owner: touch nothing */
        brix_buf_reset(&s->part);
        i = e;
    }
    while (i < len) {
        size_t e = scan(&s->state, data + i, len - i);
        if (!e)
            break;
        if (e > s->max)
            return -E2BIG;
        if ((rc = fn(ud, data + i, e)))
            return rc;
        i += e;
    }
    if (i < len) {
        if (len - i > s->max)
            return -E2BIG;
        if (brix_buf_append(&s->part, data + i, len - i))
            return -ENOMEM;
    }
    return 0;
}
