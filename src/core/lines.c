/*
 * Line splitting: find each '\n' with memchr; a line wholly inside the chunk
 * goes out as a pointer into it, a line that started in an earlier chunk is
 * completed in `part`. A trailing '\r' is stripped from every line.
 */
#include "core/lines.h"

#include <errno.h>
#include <string.h>

void brix_lines_init(brix_lines_t *l, size_t max_line)
{
    memset(l, 0, sizeof *l);
    l->max_line = max_line ? max_line : (1u << 20);
}

void brix_lines_reset(brix_lines_t *l)
{
    brix_buf_reset(&l->part);
    l->skipping = false;
}

void brix_lines_free(brix_lines_t *l)
{
    brix_buf_free(&l->part);
    l->skipping = false;
}

static int deliver(brix_lines_t *l, const char *s, size_t n, brix_line_fn fn, void *ud)
{
    if (n && s[n - 1] == '\r')
        n--;
    if (n > l->max_line) {
        l->too_long++;
        return 0;
    }
    l->lines++;
    return fn(s, n, ud);
}

int brix_lines_feed(brix_lines_t *l, const char *data, size_t len, brix_line_fn fn, void *ud)
{
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            /* the rest is the start (or more) of a line */
            size_t n = (size_t)(end - p);
            if (l->skipping)
                return 0;
            /* +1: room for a '\r' that the terminator will strip */
            if (l->part.len + n > l->max_line + 1) {
                brix_buf_reset(&l->part);
                l->skipping = true;
                l->too_long++;
                return 0;
            }
            if (brix_buf_append(&l->part, p, n)) {
                brix_buf_reset(&l->part);
                return -ENOMEM;
            }
            return 0;
        }
        int rc = 0;
        if (l->skipping) {
            l->skipping = false; /* the over-long line ends here (already counted) */
        } else if (l->part.len) {
            size_t n = (size_t)(nl - p);
            if (l->part.len + n > l->max_line + 1) {
                l->too_long++;
            } else if (brix_buf_append(&l->part, p, n)) {
                brix_buf_reset(&l->part);
                return -ENOMEM;
            } else {
                rc = deliver(l, l->part.data, l->part.len, fn, ud);
            }
            brix_buf_reset(&l->part);
        } else {
            rc = deliver(l, p, (size_t)(nl - p), fn, ud);
        }
        p = nl + 1;
        if (rc)
            return rc;
    }
    return 0;
}
